"""Plain-NumPy reference of the recurrent layers: the oracle for cpp/src/recurrent.*.

Dimension letters: T time, B batch, I input features, H hidden, L layers, D directions,
G gates (rnn 1, gru 3, lstm 4). Everything runs in the dtype of `x` (any float dtype);
weights and states of another float dtype are converted.

Modes: "rnn_tanh", "rnn_relu", "lstm", "gru", with PyTorch's equations and gate order:
    rnn   h' = act(W_ih x + b_ih + W_hh h + b_hh)
    lstm  i, f, g, o = sig, sig, tanh, sig of (W_ih x + b_ih + W_hh h + b_hh)
          c' = f * c + i * g,  h' = o * tanh(c')
    gru   r, z = sig(W_ir x + b_ir + W_hr h + b_hr), sig(W_iz x + b_iz + W_hz h + b_hz)
          n = tanh(W_in x + b_in + r * (W_hn h + b_hn)),  h' = (1 - z) * n + z * h

The training cache mirrors the C++ workspace (cpp/include/fastrnn/fastrnn.h), per
(layer, direction):
    gates (T, B, Gc*H)  post-activation gates indexed by TIME t; Gc = G except GRU: 4
                        (r, z, n, hn = W_hn h + b_hn). For rnn the "gate" is h' itself.
    h     (T+1, B, H)   states. Forward: slot 0 = h0, step t reads slot t, writes t+1.
                        Reverse: slot T = h0, step t reads slot t+1, writes t.
    c     (T+1, B, H)   LSTM cell states, same slots.
Derivatives come from the cached outputs; no pre-activation is kept.

lengths (B,): steps t >= lengths[b] are padding: y = 0 there and the state passes through
untouched (PyTorch packed sequences). The reverse direction thus starts at t = lengths[b] - 1;
lengths[b] == 0 gives y = 0 and h_n = h0. T = 0 is allowed: y is (0, B, D*H), h_n = h0.

The cache keeps references (not copies) to x, the weights and the dropout masks: do not
modify them between forward and backward.
"""
from __future__ import annotations

import numpy as np

from .._checks import (
    as_float_array,
    as_float_state,
    check_grads_like,
    check_mode,
    check_shape,
    prepare_recurrent,
    prepare_recurrent_grad_state,
)

# ============================================================================================
# Pointwise cell kernels: one forward/backward pair per mode (mirrors the C++ pointwise
# kernels). All arrays are (B, .) for one time step.
#   forward(gx, gh, h_prev, c_prev) -> (h, c, gates)
#       gx = x @ W_ih^T + b_ih (B, G*H), gh = h_prev @ W_hh^T + b_hh (B, G*H); c None unless LSTM
#   backward(dh, dc, gates, h_prev, c_prev, c) -> (dgx, dgh, dh_prev, dc_prev)
#       dgx, dgh (B, G*H): gradients of gx and gh; dh_prev: the part of dL/dh_prev that does not
#       go through W_hh (None if there is none); dc_prev (LSTM, else None)
# ============================================================================================


def _sigmoid(a):
    e = np.exp(-np.abs(a))  # never overflows
    return np.where(a >= 0, 1 / (1 + e), e / (1 + e))


def rnn_tanh_forward(gx, gh, h_prev, c_prev):
    h = np.tanh(gx + gh)
    return h, None, h


def rnn_tanh_backward(dh, dc, gates, h_prev, c_prev, c):
    # forward: h = tanh(a), a = gx + gh  (gates = h)
    da = dh * (1 - gates * gates)
    return da, da, None, None


def rnn_relu_forward(gx, gh, h_prev, c_prev):
    h = np.maximum(gx + gh, 0)
    return h, None, h


def rnn_relu_backward(dh, dc, gates, h_prev, c_prev, c):
    # forward: h = max(a, 0), a = gx + gh  (gates = h; a > 0 <=> h > 0)
    da = np.where(gates > 0, dh, 0)
    return da, da, None, None


def lstm_forward(gx, gh, h_prev, c_prev):
    H = h_prev.shape[1]
    a = gx + gh                                   # (B, 4H): i, f, g, o
    s = _sigmoid(a)                               # (the g quarter of it is not used)
    i, f, o = s[:, 0 * H:1 * H], s[:, 1 * H:2 * H], s[:, 3 * H:4 * H]
    g = np.tanh(a[:, 2 * H:3 * H])
    c = f * c_prev + i * g
    h = o * np.tanh(c)
    return h, c, np.concatenate([i, f, g, o], axis=1)


def lstm_backward(dh, dc, gates, h_prev, c_prev, c):
    i, f, g, o = np.split(gates, 4, axis=1)
    tc = np.tanh(c)
    # forward: h = o * tanh(c)
    do = dh * tc
    dc = dc + dh * o * (1 - tc * tc)
    # forward: c = f * c_prev + i * g
    di, df, dg, dc_prev = dc * g, dc * c_prev, dc * i, dc * f
    # forward: i, f, o = sigmoid(a_*), g = tanh(a_g)
    da = np.concatenate([di * i * (1 - i), df * f * (1 - f), dg * (1 - g * g), do * o * (1 - o)], axis=1)
    return da, da, None, dc_prev


def gru_forward(gx, gh, h_prev, c_prev):
    H = h_prev.shape[1]
    rz = _sigmoid(gx[:, :2 * H] + gh[:, :2 * H])
    r, z = rz[:, :H], rz[:, H:]
    hn = gh[:, 2 * H:3 * H]                       # W_hn h + b_hn
    n = np.tanh(gx[:, 2 * H:3 * H] + r * hn)
    h = (1 - z) * n + z * h_prev
    return h, None, np.concatenate([r, z, n, hn], axis=1)


def gru_backward(dh, dc, gates, h_prev, c_prev, c):
    r, z, n, hn = np.split(gates, 4, axis=1)
    # forward: h = (1 - z) * n + z * h_prev
    dn = dh * (1 - z)
    dz = dh * (h_prev - n)
    dh_prev = dh * z
    # forward: n = tanh(gx_n + r * hn)
    dan = dn * (1 - n * n)
    dr = dan * hn
    # forward: r, z = sigmoid(gx_r + gh_r), sigmoid(gx_z + gh_z)
    dar = dr * r * (1 - r)
    daz = dz * z * (1 - z)
    dgx = np.concatenate([dar, daz, dan], axis=1)
    dgh = np.concatenate([dar, daz, dan * r], axis=1)
    return dgx, dgh, dh_prev, None


CACHE_GATES = {"rnn_tanh": 1, "rnn_relu": 1, "lstm": 4, "gru": 4}  # Gc: gates kept per step

POINTWISE = {  # mode -> (forward, backward)
    "rnn_tanh": (rnn_tanh_forward, rnn_tanh_backward),
    "rnn_relu": (rnn_relu_forward, rnn_relu_backward),
    "lstm": (lstm_forward, lstm_backward),
    "gru": (gru_forward, gru_backward),
}


# ============================================================================================
# Caches (opaque to callers; attributes are documented for the tests and for debugging)
# ============================================================================================


class RecurrentCache:
    """What `recurrent_forward` keeps for `recurrent_backward`.

    Attributes: mode, lstm, L, D, T, B, I, H, batch_first, dtype, has_bias, lengths (int64 (B,) or
    None), valid ((T, B, 1) bool or None), weights (L*D tuples), dropout_masks (L-1 arrays or
    None), inputs (L arrays (T, B, I_l), time-major; inputs[0] is a view of x), h, c, gates (L*D
    arrays each, see the module docstring; c entries are None unless LSTM).
    """

    def __init__(self, **fields):
        self.__dict__.update(fields)

    def __repr__(self):
        return (f"RecurrentCache(mode={self.mode!r}, T={self.T}, B={self.B}, I={self.I}, H={self.H}, "
                f"L={self.L}, D={self.D}, dtype={self.dtype})")


class CellCache:
    """What `cell_forward` keeps for `cell_backward`.

    Attributes: mode, lstm, B, I, H, dtype, has_bias, x (B, I), h (B, H), c and c_next (LSTM,
    else None), gates (B, Gc*H), w_ih, w_hh.
    """

    def __init__(self, **fields):
        self.__dict__.update(fields)

    def __repr__(self):
        return f"CellCache(mode={self.mode!r}, B={self.B}, I={self.I}, H={self.H}, dtype={self.dtype})"


# ============================================================================================
# One (layer, direction) over the whole sequence: forward and backward side by side
# ============================================================================================


def _direction_forward(mode, x, w_ih, w_hh, b_ih, b_hh, h0, c0, valid, reverse):
    """x (T, B, I) time-major; h0, c0 (B, H); valid None or bool (T, B, 1).

    Returns out (T, B, H) (0 at padding), h (T+1, B, H), c (T+1, B, H) or None, gates (T, B, Gc*H).
    """
    pointwise_forward = POINTWISE[mode][0]
    T, B, _ = x.shape
    H = w_hh.shape[1]
    gx = x @ w_ih.T                               # (T, B, G*H): one GEMM for all steps
    if b_ih is not None:
        gx = gx + b_ih
    h = np.empty((T + 1, B, H), x.dtype)
    c = np.empty((T + 1, B, H), x.dtype) if mode == "lstm" else None
    gates = np.empty((T, B, CACHE_GATES[mode] * H), x.dtype)
    out = np.zeros((T, B, H), x.dtype)
    first = T if reverse else 0                   # the slot of the initial state
    h[first] = h0
    if c is not None:
        c[first] = c0
    for t in (reversed(range(T)) if reverse else range(T)):
        src, dst = (t + 1, t) if reverse else (t, t + 1)
        gh = h[src] @ w_hh.T                      # (B, G*H)
        if b_hh is not None:
            gh = gh + b_hh
        h_t, c_t, gates[t] = pointwise_forward(gx[t], gh, h[src], None if c is None else c[src])
        if valid is not None:                     # padding: the state passes through untouched
            h_t = np.where(valid[t], h_t, h[src])
            if c is not None:
                c_t = np.where(valid[t], c_t, c[src])
        h[dst] = h_t
        if c is not None:
            c[dst] = c_t
        out[t] = h_t if valid is None else np.where(valid[t], h_t, 0)
    return out, h, c, gates


def _direction_backward(mode, x, w_ih, w_hh, b_ih, b_hh, h, c, gates, valid, reverse,
                        dout, dh_n, dc_n, dx, grads):
    """Backward of `_direction_forward`.

    dout (T, B, H) gradient of out; dh_n, dc_n (B, H) gradient of the final state.
    Adds into dx (T, B, I) and grads (dw_ih, dw_hh, db_ih, db_hh); returns (dh0, dc0).
    """
    pointwise_backward = POINTWISE[mode][1]
    T, B, _ = x.shape
    GH = w_hh.shape[0]
    dgx = np.zeros((T, B, GH), x.dtype)           # d(x W_ih^T + b_ih), by time
    dgh = np.zeros((T, B, GH), x.dtype)           # d(h_prev W_hh^T + b_hh), by time
    dh = dh_n
    dc = dc_n
    for t in (range(T) if reverse else reversed(range(T))):
        src, dst = (t + 1, t) if reverse else (t, t + 1)
        # forward: out[t] = h[dst] (0 at padding), and h[dst] also feeds the next step
        dh_t = dh + (dout[t] if valid is None else np.where(valid[t], dout[t], 0))
        dgx_t, dgh_t, dh_prev, dc_prev = pointwise_backward(
            dh_t, dc, gates[t], h[src], None if c is None else c[src], None if c is None else c[dst])
        # forward: gh = h[src] W_hh^T + b_hh
        dh_prev = dgh_t @ w_hh if dh_prev is None else dh_prev + dgh_t @ w_hh
        if valid is not None:                     # padding: h[dst] = h[src], no gate involved
            dgx_t = np.where(valid[t], dgx_t, 0)
            dgh_t = np.where(valid[t], dgh_t, 0)
            dh_prev = np.where(valid[t], dh_prev, dh_t)
            if c is not None:
                dc_prev = np.where(valid[t], dc_prev, dc)
        dgx[t] = dgx_t
        dgh[t] = dgh_t
        dh, dc = dh_prev, dc_prev
    # the GEMMs over all steps (forward: gx = x W_ih^T + b_ih, gh = h_prev W_hh^T + b_hh)
    h_prev = h[1:] if reverse else h[:T]          # (T, B, H): the state each step read
    dw_ih, dw_hh, db_ih, db_hh = grads
    dw_ih += dgx.reshape(T * B, GH).T @ x.reshape(T * B, x.shape[2])
    dw_hh += dgh.reshape(T * B, GH).T @ h_prev.reshape(T * B, h_prev.shape[2])
    if db_ih is not None:
        db_ih += dgx.sum(axis=(0, 1))
        db_hh += dgh.sum(axis=(0, 1))
    dx += dgx @ w_ih
    return dh, dc


# ============================================================================================
# Multi-layer, bidirectional sequences: the functional contract
# ============================================================================================


def recurrent_forward(mode, x, weights, state=None, lengths=None, *, num_layers=1,
                      bidirectional=False, batch_first=False, dropout_masks=None, need_cache=True):
    """Run a (multi-layer, maybe bidirectional) RNN/LSTM/GRU over a sequence.

    mode: "rnn_tanh" | "rnn_relu" | "lstm" | "gru" (G = 1, 1, 4, 3)
    x: (T, B, I), or (B, T, I) when batch_first
    weights: L*D tuples (w_ih (G*H, I_l), w_hh (G*H, H), b_ih (G*H,), b_hh (G*H,)), entry l*D + d;
        I_0 = I, I_l = D*H above; biases both None for bias=False
    state: h0 (L*D, B, H), or (h0, c0) for LSTM (either may be None); None = zeros
    lengths: None or integers (B,), 0 <= lengths[b] <= T (packed-sequence semantics)
    dropout_masks: None or L-1 arrays (T, B, D*H) time-major, already scaled by 1/(1-p)
    Returns y (layout of x, (.., .., D*H)), state_n (structure of state, always arrays) and the
    cache (None when need_cache is False).
    """
    a = prepare_recurrent(mode, x, weights, state, lengths, num_layers, bidirectional, batch_first,
                          dropout_masks)
    T, B, H, L, D, dtype, lstm = a.T, a.B, a.H, a.L, a.D, a.dtype, a.lstm
    valid = None if a.lengths is None else (np.arange(T)[:, None] < a.lengths[None, :])[:, :, None]  # (T, B, 1)
    h0 = np.zeros((L * D, B, H), dtype) if a.h0 is None else a.h0
    c0 = np.zeros((L * D, B, H), dtype) if lstm and a.c0 is None else a.c0

    inputs, hs, cs, gates = [], [], [], []
    h_n = np.empty((L * D, B, H), dtype)
    c_n = np.empty((L * D, B, H), dtype) if lstm else None
    layer_in = a.x                                # (T, B, I_l) time-major
    for l in range(L):
        if l > 0 and a.dropout_masks is not None:
            layer_in = layer_in * a.dropout_masks[l - 1]
        inputs.append(layer_in)
        y_l = np.empty((T, B, D * H), dtype)
        for d in range(D):
            k = l * D + d
            out, h, c, g = _direction_forward(mode, layer_in, *a.weights[k], h0[k], None if c0 is None else c0[k],
                                              valid, reverse=d == 1)
            y_l[:, :, d * H:(d + 1) * H] = out
            h_n[k] = h[0 if d == 1 else T]
            if lstm:
                c_n[k] = c[0 if d == 1 else T]
            hs.append(h)
            cs.append(c)
            gates.append(g)
        layer_in = y_l
    y = np.ascontiguousarray(layer_in.transpose(1, 0, 2)) if batch_first else layer_in
    state_n = (h_n, c_n) if lstm else h_n
    if not need_cache:
        return y, state_n, None
    cache = RecurrentCache(
        mode=mode, lstm=lstm, L=L, D=D, T=T, B=B, I=a.I, H=H, batch_first=bool(batch_first), dtype=dtype,
        has_bias=a.has_bias, lengths=a.lengths, valid=valid, weights=a.weights, dropout_masks=a.dropout_masks,
        inputs=inputs, h=hs, c=cs, gates=gates)
    return y, state_n, cache


def recurrent_backward(cache, dy, dstate=None, grads=None):
    """BPTT through a `recurrent_forward` cache.

    dy: y's shape and layout; dstate: dh_n (L*D, B, H), or (dh_n, dc_n) for LSTM (either may be
    None); None = zeros. grads: None or L*D tuples (dw_ih, dw_hh, db_ih, db_hh) to ADD into
    (db None without biases).
    Returns dx (x's shape and layout), dstate0 (structure of the state, always arrays), grads.
    """
    if not isinstance(cache, RecurrentCache):
        raise ValueError(f"cache: expected a cache from fastrnn.reference.functional.recurrent_forward"
                         f"(need_cache=True), got {type(cache).__name__}")
    mode, T, B, H, L, D, dtype, lstm = cache.mode, cache.T, cache.B, cache.H, cache.L, cache.D, cache.dtype, cache.lstm
    dy = as_float_array("dy", dy, dtype)
    check_shape("dy", dy, (B, T, D * H) if cache.batch_first else (T, B, D * H))
    dy = dy.transpose(1, 0, 2) if cache.batch_first else dy   # (T, B, D*H) view
    dh_n, dc_n = prepare_recurrent_grad_state("dstate", dstate, lstm, (L * D, B, H), dtype)
    dh_n = np.zeros((L * D, B, H), dtype) if dh_n is None else dh_n
    dc_n = np.zeros((L * D, B, H), dtype) if lstm and dc_n is None else dc_n
    if grads is None:
        grads = [tuple(None if w is None else np.zeros(w.shape, dtype) for w in entry) for entry in cache.weights]
    else:
        check_grads_like("grads", grads, cache.weights)

    dh0 = np.empty((L * D, B, H), dtype)
    dc0 = np.empty((L * D, B, H), dtype) if lstm else None
    dlayer_out = dy                               # gradient of the output of layer l (T, B, D*H)
    for l in reversed(range(L)):
        x_l = cache.inputs[l]
        dx_l = np.zeros(x_l.shape, dtype)
        for d in range(D):
            k = l * D + d
            dh0[k], dc = _direction_backward(
                mode, x_l, *cache.weights[k], cache.h[k], cache.c[k], cache.gates[k], cache.valid, d == 1,
                dlayer_out[:, :, d * H:(d + 1) * H], dh_n[k], None if dc_n is None else dc_n[k], dx_l, grads[k])
            if lstm:
                dc0[k] = dc
        # forward: inputs[l] = out_{l-1} * dropout_masks[l-1]
        if l > 0 and cache.dropout_masks is not None:
            dx_l = dx_l * cache.dropout_masks[l - 1]
        dlayer_out = dx_l
    dx = np.ascontiguousarray(dlayer_out.transpose(1, 0, 2)) if cache.batch_first else dlayer_out
    return dx, ((dh0, dc0) if lstm else dh0), grads


def recurrent(mode, x, weights, state=None, lengths=None, *, num_layers=1, bidirectional=False,
              batch_first=False):
    """Inference: `recurrent_forward` without a cache or dropout. Returns (y, state_n)."""
    y, state_n, _ = recurrent_forward(mode, x, weights, state, lengths, num_layers=num_layers,
                                      bidirectional=bidirectional, batch_first=batch_first, need_cache=False)
    return y, state_n


# ============================================================================================
# Single-step cells
# ============================================================================================


def _cell_args(mode, x, state, w_ih, w_hh, b_ih, b_hh):
    G = check_mode(mode)
    lstm = mode == "lstm"
    x = as_float_array("x", x)
    if x.ndim != 2:
        raise ValueError(f"x: expected a 2-d array (B, I), got shape {x.shape}")
    w_hh = as_float_array("w_hh", w_hh, x.dtype, ndim=2)
    H = w_hh.shape[1]
    check_shape("w_hh", w_hh, (G * H, H))
    w_ih = as_float_array("w_ih", w_ih, x.dtype, ndim=2)
    check_shape("w_ih", w_ih, (G * H, w_ih.shape[1]))
    check_shape("x", x, (x.shape[0], w_ih.shape[1]))
    B = x.shape[0]
    if (b_ih is None) != (b_hh is None):
        raise ValueError("b_ih: expected b_ih and b_hh both arrays or both None")
    if b_ih is not None:
        b_ih = as_float_array("b_ih", b_ih, x.dtype, ndim=1)
        check_shape("b_ih", b_ih, (G * H,))
        b_hh = as_float_array("b_hh", b_hh, x.dtype, ndim=1)
        check_shape("b_hh", b_hh, (G * H,))
    state = as_float_state("state", state, lstm, dtype=x.dtype)
    h, c = state if lstm and state is not None else (state, None)
    h = np.zeros((B, H), x.dtype) if h is None else h
    check_shape("state[0]" if lstm else "state", h, (B, H))
    if lstm:
        c = np.zeros((B, H), x.dtype) if c is None else c
        check_shape("state[1]", c, (B, H))
    return x, h, c, w_ih, w_hh, b_ih, b_hh


def _cell_step(mode, x, h, c, w_ih, w_hh, b_ih, b_hh):
    gx = x @ w_ih.T                               # (B, G*H)
    gh = h @ w_hh.T                               # (B, G*H)
    if b_ih is not None:
        gx = gx + b_ih
        gh = gh + b_hh
    return POINTWISE[mode][0](gx, gh, h, c)


def cell(mode, x, state, w_ih, w_hh, b_ih=None, b_hh=None):
    """One step. x (B, I); state h (B, H) or (h, c) for LSTM, None = zeros.

    Returns h_next, or (h_next, c_next) for LSTM.
    """
    x, h, c, w_ih, w_hh, b_ih, b_hh = _cell_args(mode, x, state, w_ih, w_hh, b_ih, b_hh)
    h_next, c_next, _ = _cell_step(mode, x, h, c, w_ih, w_hh, b_ih, b_hh)
    return (h_next, c_next) if mode == "lstm" else h_next


def cell_forward(mode, x, state, w_ih, w_hh, b_ih=None, b_hh=None):
    """`cell` that also returns a cache for `cell_backward`: (state_next, cache)."""
    x, h, c, w_ih, w_hh, b_ih, b_hh = _cell_args(mode, x, state, w_ih, w_hh, b_ih, b_hh)
    h_next, c_next, gates = _cell_step(mode, x, h, c, w_ih, w_hh, b_ih, b_hh)
    cache = CellCache(mode=mode, lstm=mode == "lstm", B=x.shape[0], I=x.shape[1], H=h.shape[1], dtype=x.dtype,
                      has_bias=b_ih is not None, x=x, h=h, c=c, c_next=c_next, gates=gates, w_ih=w_ih, w_hh=w_hh)
    return ((h_next, c_next) if mode == "lstm" else h_next), cache


def cell_backward(cache, dstate_next=None, grads=None):
    """Backward of one `cell_forward` step.

    dstate_next: dh (B, H) or (dh, dc) for LSTM (either may be None); None = zeros.
    grads: None or a tuple (dw_ih, dw_hh, db_ih, db_hh) to ADD into (db None without biases).
    Returns dx (B, I), dstate (structure of the state, arrays), grads.
    """
    if not isinstance(cache, CellCache):
        raise ValueError(f"cache: expected a cache from fastrnn.reference.functional.cell_forward, "
                         f"got {type(cache).__name__}")
    mode, B, H, dtype, lstm = cache.mode, cache.B, cache.H, cache.dtype, cache.lstm
    dh, dc = prepare_recurrent_grad_state("dstate_next", dstate_next, lstm, (B, H), dtype)
    dh = np.zeros((B, H), dtype) if dh is None else dh
    dc = np.zeros((B, H), dtype) if lstm and dc is None else dc
    like = (cache.w_ih, cache.w_hh) + ((cache.w_ih[:, 0], cache.w_ih[:, 0]) if cache.has_bias else (None, None))
    if grads is None:
        grads = tuple(None if w is None else np.zeros(w.shape, dtype) for w in like)
    else:
        check_grads_like("grads", [grads], [like])
    dgx, dgh, dh_prev, dc_prev = POINTWISE[mode][1](dh, dc, cache.gates, cache.h, cache.c, cache.c_next)
    # forward: gx = x W_ih^T + b_ih, gh = h W_hh^T + b_hh
    dw_ih, dw_hh, db_ih, db_hh = grads
    dw_ih += dgx.T @ cache.x
    dw_hh += dgh.T @ cache.h
    if db_ih is not None:
        db_ih += dgx.sum(axis=0)
        db_hh += dgh.sum(axis=0)
    dx = dgx @ cache.w_ih
    dh_prev = dgh @ cache.w_hh if dh_prev is None else dh_prev + dgh @ cache.w_hh
    return dx, ((dh_prev, dc_prev) if lstm else dh_prev), grads
