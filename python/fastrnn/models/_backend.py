"""Which layer classes a model is built from: the C++ kernels or the NumPy reference.

``layer_classes("fastrnn")`` gives fastrnn.LSTM, fastrnn.GRU, ... (C++); ``"reference"`` gives
fastrnn.reference.LSTM, ... (plain NumPy, any float dtype: used by the gradient checks). The
import is done on call, so fastrnn/__init__.py may import fastrnn.models without a cycle.
Where the kernel package does not (yet) export a class (AdditiveAttention), the reference
class is used: same constructor, same params and numerics.
"""
from __future__ import annotations

from types import SimpleNamespace

BACKENDS = ("fastrnn", "reference")
_NAMES = ("RNN", "LSTM", "GRU", "RNNCell", "LSTMCell", "GRUCell", "AdditiveAttention")


def layer_classes(backend: str = "fastrnn") -> SimpleNamespace:
    import fastrnn

    if backend == "fastrnn":
        mods = (fastrnn, fastrnn.reference)
    elif backend == "reference":
        mods = (fastrnn.reference,)
    else:
        raise ValueError(f"backend: expected one of {BACKENDS}, got {backend!r}")
    found = {}
    for name in _NAMES:
        for mod in mods:
            cls = getattr(mod, name, None)
            if cls is not None:
                found[name] = cls
                break
    return SimpleNamespace(**found)


def child_seeds(seed, n: int) -> list:
    """n independent integer seeds derived from one seed (None = fresh entropy)."""
    import numpy as np

    ss = np.random.SeedSequence(seed)
    return [int(c.generate_state(1, dtype=np.uint32)[0]) for c in ss.spawn(n)]
