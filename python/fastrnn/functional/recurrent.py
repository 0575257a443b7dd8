"""Recurrent layers backed by the C++ core (mirrors fastrnn/reference/recurrent.py).

Same functions, arguments and returns as the NumPy reference (docs/ARCHITECTURE.md):

    y, state_n, cache = recurrent_forward(mode, x, weights, state=None, lengths=None, *,
                                          num_layers=1, bidirectional=False, batch_first=False,
                                          dropout_masks=None, need_cache=True)
    dx, dstate0, grads = recurrent_backward(cache, dy, dstate=None, grads=None)
    y, state_n = recurrent(mode, x, weights, state=None, lengths=None, *, num_layers=1,
                           bidirectional=False, batch_first=False)
    h_next = cell(mode, x, state, w_ih, w_hh, b_ih=None, b_hh=None)
    state_next, cache = cell_forward(mode, x, state, w_ih, w_hh, b_ih=None, b_hh=None)
    dx, dstate, grads = cell_backward(cache, dstate_next=None, grads=None)

Work is done in float32 or float64 (x's precision; other float types are converted to the
nearest of the two). The whole loop over layers, directions and time runs in C++ with the GIL
released. A cell step is the T = 1 case of the same core.
"""
from __future__ import annotations

import numpy as np

from .. import _core
from .._checks import (
    as_float_array,
    as_float_state,
    check_grads_like,
    check_mode,
    check_shape,
    prepare_recurrent,
    prepare_recurrent_grad_state,
)

MODES = {"rnn_tanh": 0, "rnn_relu": 1, "lstm": 2, "gru": 3}


def _kernel_dtype(x):
    """float64 stays float64; every other float type runs in float32."""
    dt = getattr(x, "dtype", None)
    if dt is not None and dt.kind == "f":
        return np.dtype(np.float64) if dt.itemsize >= 8 else np.dtype(np.float32)
    return None  # as_float_array raises the TypeError


def _c(a):
    return None if a is None else np.ascontiguousarray(a)


class RecurrentCache:
    """Opaque training cache: the C++ workspace plus the (contiguous) inputs it was run on."""

    __slots__ = ("mode", "core", "x", "weights", "dropout_masks", "batch_first", "lstm", "L", "D",
                 "T", "B", "I", "H", "dtype", "has_bias", "owner", "__weakref__")

    def __repr__(self):
        return (f"RecurrentCache(mode={self.mode!r}, T={self.T}, B={self.B}, I={self.I}, H={self.H}, "
                f"L={self.L}, D={self.D}, dtype={self.dtype}, nbytes={self.core.nbytes})")


def _make_cache(mode, core, x, weights, masks, batch_first, lstm, L, D, T, B, I, H, dtype, has_bias):
    cache = RecurrentCache()
    cache.mode, cache.core, cache.x, cache.weights, cache.dropout_masks = mode, core, x, weights, masks
    cache.batch_first, cache.lstm, cache.L, cache.D = batch_first, lstm, L, D
    cache.T, cache.B, cache.I, cache.H, cache.dtype, cache.has_bias = T, B, I, H, dtype, has_bias
    cache.owner = None
    return cache


# The common call (time-major float32/float64 x in C order, no lengths, no dropout) goes
# straight to the binding, which checks every array it is given (dtype, shape, C order) before
# any work and raises TypeError/ValueError naming it. When it refuses, the call is made again
# through the full Python checks, so the caller gets their message (and their conversions:
# other float types, non-contiguous arrays, weights of another precision). The checks cost
# ~6 us a forward and ~7 us a backward: through fastrnn.LSTM, medians of 15 alternations,
# forward / forward+backward at T=100, B=1, I=H=128 158 -> 152 / 416 -> 400 us, and at T=37,
# B=1, I=77, H=129 77 -> 71 / 190 -> 177 us.
_NATIVE = (np.dtype(np.float32), np.dtype(np.float64))


def _direct_forward(mode, x, weights, state, num_layers, bidirectional, need_cache):
    """(y, state_n, cache) from the binding alone, or None: take the checked path."""
    if (type(x) is not np.ndarray or x.ndim != 3 or x.dtype not in _NATIVE or not x.flags.c_contiguous
            or type(mode) is not str or type(num_layers) is not int or num_layers < 1):
        return None
    m = MODES.get(mode)
    if m is None:
        return None
    if type(weights) not in (list, tuple) or any(type(e) not in (tuple, list) for e in weights):
        return None  # (the binding takes any sequence: object arrays too, which the checks refuse)
    lstm, D = m == 2, 2 if bidirectional else 1
    if state is None:
        h0 = c0 = None
    elif not lstm:
        h0, c0 = state, None
    elif type(state) is tuple and len(state) == 2:
        h0, c0 = state
    else:
        return None
    try:
        H = int(weights[0][1].shape[1])
    except (LookupError, AttributeError, TypeError):
        return None
    try:
        y, h_n, c_n, core = _core.recurrent_forward(m, x, weights, h0, c0, None, None, num_layers, D, H,
                                                    bool(need_cache))
    except (TypeError, ValueError):
        return None
    state_n = (h_n, c_n) if lstm else h_n
    if not need_cache:
        return y, state_n, None
    T, B, I = x.shape
    kept = [tuple(entry) for entry in weights]
    return y, state_n, _make_cache(mode, core, x, kept, None, False, lstm, num_layers, D, T, B, I, H, x.dtype,
                                   kept[0][2] is not None)


def recurrent_forward(mode, x, weights, state=None, lengths=None, *, num_layers=1, bidirectional=False,
                      batch_first=False, dropout_masks=None, need_cache=True):
    """Multi-layer (bi)directional RNN/LSTM/GRU over a sequence; see the module docstring."""
    if lengths is None and dropout_masks is None and not batch_first:
        out = _direct_forward(mode, x, weights, state, num_layers, bidirectional, need_cache)
        if out is not None:
            return out
    a = prepare_recurrent(mode, x, weights, state, lengths, num_layers, bidirectional, batch_first,
                          dropout_masks, dtype=_kernel_dtype(x))
    xt = np.ascontiguousarray(a.x)
    weights = [tuple(_c(w) for w in entry) for entry in a.weights]
    masks = None if a.dropout_masks is None else [_c(m) for m in a.dropout_masks]
    y, h_n, c_n, core = _core.recurrent_forward(
        MODES[mode], xt, weights, _c(a.h0), _c(a.c0), a.lengths, masks, a.L, a.D, a.H, bool(need_cache))
    if batch_first:
        y = np.ascontiguousarray(y.transpose(1, 0, 2))
    state_n = (h_n, c_n) if a.lstm else h_n
    if not need_cache:
        return y, state_n, None
    return y, state_n, _make_cache(mode, core, xt, weights, masks, bool(batch_first), a.lstm, a.L, a.D, a.T, a.B,
                                   a.I, a.H, a.dtype, a.has_bias)


def _zero_grads(cache):
    """New gradient arrays in the layout of cache.weights (None where a bias is None)."""
    return [tuple(None if w is None else np.zeros(w.shape, cache.dtype) for w in entry) for entry in cache.weights]


def _direct_backward(cache, dy, grads):
    """(dx, dstate0, grads) from the binding alone, or None: take the checked path.

    The binding checks grads as it checks weights (dtype, shape, C order, writeable), all before
    it adds anything. Without biases it ignores grads' bias entries, which the checked path
    insists are None, so those calls take that path.
    """
    dtype = cache.dtype
    if not cache.has_bias or cache.batch_first or type(dy) is not np.ndarray or dy.dtype != dtype \
            or not dy.flags.c_contiguous:
        return None
    if grads is not None and (type(grads) not in (list, tuple) or any(type(e) not in (tuple, list) for e in grads)):
        return None
    g = grads if grads is not None else _zero_grads(cache)
    try:
        dx, dh0, dc0 = _core.recurrent_backward(cache.core, cache.x, cache.weights, cache.dropout_masks, dy, None,
                                                None, g)
    except (TypeError, ValueError):
        return None
    return dx, ((dh0, dc0) if cache.lstm else dh0), g


def recurrent_backward(cache, dy, dstate=None, grads=None):
    """BPTT through a `recurrent_forward` cache; accumulates into `grads` when given."""
    if not isinstance(cache, RecurrentCache):
        raise ValueError(f"cache: expected a cache from fastrnn.functional.recurrent_forward"
                         f"(need_cache=True), got {type(cache).__name__}")
    T, B, H, D, dtype = cache.T, cache.B, cache.H, cache.D, cache.dtype
    if dstate is None:
        out = _direct_backward(cache, dy, grads)
        if out is not None:
            return out
    dy = as_float_array("dy", dy, dtype)
    check_shape("dy", dy, (B, T, D * H) if cache.batch_first else (T, B, D * H))
    if cache.batch_first:
        dy = dy.transpose(1, 0, 2)
    dh_n, dc_n = prepare_recurrent_grad_state("dstate", dstate, cache.lstm, (cache.L * D, B, H), dtype)
    if grads is None:
        grads = _zero_grads(cache)
    else:
        check_grads_like("grads", grads, cache.weights)
        for k, entry in enumerate(grads):
            for j, g in enumerate(entry):
                if g is not None and (g.dtype != dtype or not g.flags.c_contiguous):
                    raise ValueError(f"grads[{k}][{j}]: expected a C-contiguous {dtype} array to accumulate into, "
                                     f"got {g.dtype}{'' if g.flags.c_contiguous else ' (non-contiguous)'}")
    dx, dh0, dc0 = _core.recurrent_backward(cache.core, cache.x, cache.weights, cache.dropout_masks,
                                            np.ascontiguousarray(dy), _c(dh_n), _c(dc_n), grads)
    if cache.batch_first:
        dx = np.ascontiguousarray(dx.transpose(1, 0, 2))
    return dx, ((dh0, dc0) if cache.lstm else dh0), grads


def recurrent(mode, x, weights, state=None, lengths=None, *, num_layers=1, bidirectional=False, batch_first=False):
    """Inference: no cache, no dropout, no per-step activations kept. Returns (y, state_n)."""
    y, state_n, _ = recurrent_forward(mode, x, weights, state, lengths, num_layers=num_layers,
                                      bidirectional=bidirectional, batch_first=batch_first, need_cache=False)
    return y, state_n


# ----------------------------------------------------------------------------- single-step cells

class CellCache:
    """Opaque cache of one `cell_forward` step (a T = 1 sequence cache)."""

    __slots__ = ("seq", "mode", "B", "I", "H", "dtype", "has_bias", "owner", "__weakref__")


def _cell_state_to_seq(mode, state, dtype):
    lstm = mode == "lstm"
    state = as_float_state("state", state, lstm, dtype=dtype)
    if state is None:
        return None
    if lstm:
        h, c = state
        return (None if h is None else _expand("state[0]", h), None if c is None else _expand("state[1]", c))
    return _expand("state", state)


def _expand(name, s):
    if s.ndim != 2:
        raise ValueError(f"{name}: expected a 2-d array (B, H), got shape {s.shape}")
    return s[None]


def _cell_weights(mode, w_ih, w_hh, b_ih, b_hh):
    check_mode(mode)
    if (b_ih is None) != (b_hh is None):
        raise ValueError("b_ih: expected b_ih and b_hh both arrays or both None")
    return [(w_ih, w_hh, b_ih, b_hh)]


def cell_forward(mode, x, state, w_ih, w_hh, b_ih=None, b_hh=None):
    """One step with a cache for `cell_backward`: x (B, I), state h or (h, c) (B, H)."""
    check_mode(mode)
    x = as_float_array("x", x, _kernel_dtype(x))
    if x.ndim != 2:
        raise ValueError(f"x: expected a 2-d array (B, I), got shape {x.shape}")
    seq_state = _cell_state_to_seq(mode, state, x.dtype)
    y, state_n, seq = recurrent_forward(mode, x[None], _cell_weights(mode, w_ih, w_hh, b_ih, b_hh), seq_state)
    cache = CellCache()
    cache.seq, cache.mode, cache.B, cache.I, cache.H = seq, mode, seq.B, seq.I, seq.H
    cache.dtype, cache.has_bias, cache.owner = seq.dtype, seq.has_bias, None
    if mode == "lstm":
        return (state_n[0][0], state_n[1][0]), cache
    return state_n[0], cache


# One inference step, the hot call of hand-written loops: a C builtin that checks and (only
# when needed) converts every operand to x's precision, with the state given as None, h, or
# (h, c) for LSTM. Signature: cell(mode, x, state, w_ih, w_hh, b_ih=None, b_hh=None) ->
# h_next, or (h_next, c_next) for LSTM.
cell = _core.cell


def cell_backward(cache, dstate_next=None, grads=None):
    """Backward of one `cell_forward` step; accumulates into `grads` (dw_ih, dw_hh, db_ih, db_hh)."""
    if not isinstance(cache, CellCache):
        raise ValueError(f"cache: expected a cache from fastrnn.functional.cell_forward, got {type(cache).__name__}")
    lstm = cache.mode == "lstm"
    dh, dc = prepare_recurrent_grad_state("dstate_next", dstate_next, lstm, (cache.B, cache.H), cache.dtype)
    dstate = (None if dh is None else dh[None], None if dc is None else dc[None]) if lstm else (
        None if dh is None else dh[None])
    seq_grads = None if grads is None else [tuple(grads)]
    if grads is not None and (not isinstance(grads, (tuple, list)) or len(grads) != 4):
        raise ValueError("grads: expected a tuple (dw_ih, dw_hh, db_ih, db_hh)")
    dx, dstate0, out = recurrent_backward(cache.seq, np.zeros((1, cache.B, cache.H), cache.dtype), dstate, seq_grads)
    if lstm:
        return dx[0], (dstate0[0][0], dstate0[1][0]), out[0]
    return dx[0], dstate0[0], out[0]
