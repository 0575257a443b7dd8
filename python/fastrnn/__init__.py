"""fastrnn: fast recurrent cells (RNN, LSTM, GRU) and attention for NumPy code.

The hot loops run in C++ with OpenMP and a bundled OpenBLAS; every result is checked against
the plain-NumPy oracle in `fastrnn.reference`, which has the same classes and functions.
"""
import os as _os

from ._version import __version__

# The bundled OpenBLAS reads two variables when it loads (just below):
# - OPENBLAS_THREAD_TIMEOUT: idle worker threads stop spinning after ~2^4 cycles instead of the
#   default 2^28, so they do not steal cores from the OpenMP threads of the recurrent kernels;
# - OPENBLAS_CORETYPE: a machine-wide setting aimed at NumPy's OpenBLAS (some images force
#   "Haswell", halving SGEMM speed on AVX-512 CPUs). fastrnn's private copy detects the CPU
#   itself; FASTRNN_OPENBLAS_CORETYPE forces a core type for it.
# Both are restored right after the load: NumPy's BLAS and the caller's settings are untouched.
_saved = {k: _os.environ.get(k) for k in ("OPENBLAS_THREAD_TIMEOUT", "OPENBLAS_CORETYPE")}
_os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")
if _os.environ.get("FASTRNN_OPENBLAS_CORETYPE"):
    _os.environ["OPENBLAS_CORETYPE"] = _os.environ["FASTRNN_OPENBLAS_CORETYPE"]
else:
    _os.environ.pop("OPENBLAS_CORETYPE", None)
try:
    from . import _core
finally:
    for _k, _v in _saved.items():
        if _v is None:
            _os.environ.pop(_k, None)
        else:
            _os.environ[_k] = _v

from . import functional, init, losses, models, optim, reference  # noqa: E402
from ._memory import empty_cache, memory_stats, set_buffer_cache  # noqa: E402
from ._threads import build_info, get_num_threads, set_num_threads  # noqa: E402
from .clip import clip_grad_norm, clip_grad_value  # noqa: E402
from .layers import recurrent as _recurrent_layers  # noqa: E402
from .layers.basic import Dropout, Embedding, Linear  # noqa: E402

__all__ = [
    "__version__", "functional", "reference", "optim", "losses", "init", "models",
    "build_info", "get_num_threads", "set_num_threads", "clip_grad_norm", "clip_grad_value",
    "empty_cache", "memory_stats", "set_buffer_cache",
    "RNN", "LSTM", "GRU", "RNNCell", "LSTMCell", "GRUCell", "Embedding", "Linear", "Dropout",
]


# Recurrent layers: the shared classes bound to the C++ backend
class RNN(_recurrent_layers.RNN):
    _F = functional


class LSTM(_recurrent_layers.LSTM):
    _F = functional


class GRU(_recurrent_layers.GRU):
    _F = functional


class RNNCell(_recurrent_layers.RNNCell, _core.CellCall):
    _F = functional
    __call__ = _core.CellCall.__call__  # the shared __call__, in C, as the type's call slot


class LSTMCell(_recurrent_layers.LSTMCell, _core.CellCall):
    _F = functional
    __call__ = _core.CellCall.__call__  # the shared __call__, in C, as the type's call slot


class GRUCell(_recurrent_layers.GRUCell, _core.CellCall):
    _F = functional
    __call__ = _core.CellCall.__call__  # the shared __call__, in C, as the type's call slot


# Attention layers: the shared classes bound to the C++ backend
from .layers import attention as _attention_layers  # noqa: E402


class MultiheadAttention(_attention_layers.MultiheadAttention):
    _F = functional


class AdditiveAttention(_attention_layers.AdditiveAttention):
    _F = functional


__all__ += ["MultiheadAttention", "AdditiveAttention"]
