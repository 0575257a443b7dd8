"""Attention backed by the C++ core (mirrors fastrnn/reference/attention.py).

The same functions, arguments, returns and error messages as the NumPy reference (its module
docstring is the contract; argument checks are shared through fastrnn._checks):

    out = scaled_dot_product_attention(q, k, v, attn_mask=None, is_causal=False, scale=None)
    out, cache = scaled_dot_product_attention_forward(q, k, v, attn_mask=None, is_causal=False, scale=None)
    dq, dk, dv = scaled_dot_product_attention_backward(cache, dout)

    out, weights, cache = multi_head_attention_forward(query, key, value, num_heads, params, *, ...)
    dquery, dkey, dvalue, grads = multi_head_attention_backward(cache, dout, grads=None)
    out, weights = multi_head_attention(query, key, value, num_heads, params, *, ...)

    keys_proj = additive_attention_precompute(keys, W_k)
    context, weights, cache = additive_attention_forward(query, keys, W_q, W_k, b, v, mask=None, keys_proj=None)
    dquery, dkeys, grads = additive_attention_backward(cache, dcontext, grads=None)
    context, weights = additive_attention(query, keys, W_q, W_k, b, v, mask=None, keys_proj=None)

How the work is split (see cpp/src/attention.h):
- SDPA runs entirely in C++ (flash-attention style: blockwise online softmax, forward memory
  O(blocks) unless weights are asked for; the cache keeps out and the per-row logsumexp and
  backward recomputes the scores blockwise). q, k, v and masks are read in place as strided
  views with broadcast leading dims; gradients of broadcast operands are summed down here.
- Multi-head attention is orchestration with no per-head or per-step Python loop: the
  projections are single GEMMs on the bundled BLAS in the caller's own layout ((L*N, E) rows
  time-major, (N*L, E) batch-first), the heads are strided (N, heads, L, d) views of those
  buffers handed to the C++ SDPA core, which writes its output straight into the (L*N, E)
  buffer the out-projection GEMM reads: no transposes or head split/merge copies.
- Additive attention: the GEMMs (W_q query, W_k keys, the weight gradients) on the BLAS, the
  fused tanh / dot with v / masked softmax / context pass and its backward in C++.

Work is done in float32 or float64 (float64 stays float64; other float types run in float32).
"""
from __future__ import annotations

import numpy as np

from .. import _checks, _core

__all__ = [
    "scaled_dot_product_attention",
    "scaled_dot_product_attention_forward",
    "scaled_dot_product_attention_backward",
    "multi_head_attention",
    "multi_head_attention_forward",
    "multi_head_attention_backward",
    "additive_attention_precompute",
    "additive_attention",
    "additive_attention_forward",
    "additive_attention_backward",
]


# --------------------------------------------------------------------------- helpers

def _kernel_dtype(dt):
    """float64 (and wider) runs in float64, every other float type in float32."""
    return np.dtype(np.float64) if np.dtype(dt).itemsize >= 8 else np.dtype(np.float32)


def _as_kernel(a, dt):
    return a if a is None or a.dtype == dt or a.dtype == np.bool_ else a.astype(dt)


def _view(a):
    """`a` itself if the core can read it in place (aligned, unit stride along the last axis),
    else a C-contiguous copy."""
    if a is None:
        return None
    isz = a.itemsize
    ok = a.flags.aligned and all(s % isz == 0 for s in a.strides)
    if ok and a.ndim and a.shape[-1] > 1 and a.strides[-1] != isz:
        ok = False
    return a if ok else np.ascontiguousarray(a)


def _rows(x):
    """x (..., F) as a 2-d (rows, F) array the BLAS can read (a view when possible)."""
    r = x.reshape(-1, x.shape[-1])
    isz = r.itemsize
    if (not r.flags.aligned or (r.shape[1] > 1 and r.strides[1] != isz)
            or (r.shape[0] > 1 and r.strides[0] < r.shape[1] * isz) or r.strides[0] % isz):
        r = np.ascontiguousarray(r)
    return r


def _unbroadcast(g, shape):
    """Sum a gradient of a broadcast result back to the operand's own `shape`."""
    if g.shape == tuple(shape):
        return g
    extra = g.ndim - len(shape)
    if extra:
        g = g.sum(axis=tuple(range(extra)))
    axes = tuple(i for i, n in enumerate(shape) if n == 1 and g.shape[i] != 1)
    if axes:
        g = g.sum(axis=axes, keepdims=True)
    return g


def _cache_kind(cache):
    if isinstance(cache, dict):
        return cache.get("kind")
    kind = getattr(cache, "kind", None)
    return kind if isinstance(kind, str) else type(cache).__name__


def _check_cache(cache, cls, producer):
    if not isinstance(cache, cls):
        raise ValueError(f"cache: expected the cache returned by {producer}, got {_cache_kind(cache)!r}")


def _gemm(a, b, trans_a=False, trans_b=False, out=None, beta=0.0):
    """out = op(a) @ op(b) (+ beta * out) on the bundled BLAS (fastrnn's thread count)."""
    return _core.gemm(a, b, trans_a, trans_b, 1.0, beta, out)


def _accumulable(g, dt):
    """Whether a caller's gradient array can take the BLAS's beta = 1 accumulation directly."""
    return g.dtype == dt and g.flags.c_contiguous and g.flags.aligned and g.flags.writeable


# --------------------------------------------------------------------------- SDPA

class SdpaCache:
    """Opaque training cache of scaled_dot_product_attention_forward: the inputs (views, not
    copies), the output and the per-row logsumexp (batch..., Lq) - never the Lq x S weights."""

    __slots__ = ("q", "k", "v", "masks", "causal", "scale", "out", "lse", "shapes", "dtype", "__weakref__")
    kind = "sdpa"

    def __repr__(self):
        return f"SdpaCache(out={self.out.shape}, dtype={self.dtype}, causal={self.causal})"


def _sdpa_prepare(q, k, v, attn_mask, is_causal, scale):
    q, k, v, attn_mask, is_causal, scale, _ = _checks.check_sdpa_inputs(q, k, v, attn_mask, is_causal, scale)
    dt = _kernel_dtype(q.dtype)
    shapes = (q.shape, k.shape, v.shape)
    q, k, v, attn_mask = (_view(_as_kernel(a, dt)) for a in (q, k, v, attn_mask))
    masks = [] if attn_mask is None else [(attn_mask, True)]
    return q, k, v, masks, is_causal, scale, shapes, dt


def scaled_dot_product_attention(q, k, v, attn_mask=None, is_causal=False, scale=None):
    """Inference form: softmax(q k^T * scale + mask) v -> out (..., Lq, Ev)."""
    q, k, v, masks, causal, scale, _, _ = _sdpa_prepare(q, k, v, attn_mask, is_causal, scale)
    out, _ = _core.sdpa_forward(q, k, v, masks, causal, scale, False)
    return out


def scaled_dot_product_attention_forward(q, k, v, attn_mask=None, is_causal=False, scale=None):
    """Training form -> (out (..., Lq, Ev), cache)."""
    q, k, v, masks, causal, scale, shapes, dt = _sdpa_prepare(q, k, v, attn_mask, is_causal, scale)
    out, lse = _core.sdpa_forward(q, k, v, masks, causal, scale, True)
    cache = SdpaCache()
    cache.q, cache.k, cache.v, cache.masks, cache.causal, cache.scale = q, k, v, masks, causal, scale
    cache.out = out.copy()     # the caller owns `out` and may change it; backward needs it intact
    cache.lse, cache.shapes, cache.dtype = lse, shapes, dt
    return out, cache


def scaled_dot_product_attention_backward(cache, dout):
    """dout (..., Lq, Ev) -> (dq, dk, dv), each with its input's own (unbroadcast) shape."""
    _check_cache(cache, SdpaCache, "scaled_dot_product_attention_forward")
    dout = _view(_checks.check_grad_output("dout", dout, cache.out.shape, cache.dtype))
    grads = _core.sdpa_backward(cache.q, cache.k, cache.v, cache.masks, cache.causal, cache.scale,
                                cache.out, cache.lse, dout)
    return tuple(_unbroadcast(g, s) for g, s in zip(grads, cache.shapes))


# --------------------------------------------------------------------------- multi-head attention
# Buffers are 2-d (rows, features) in the CALLER's layout: rows = (l, n) time-major or
# (n, l) batch-first (unbatched: N = 1). _heads() gives the (N, h, T, d) view the core reads.

class MhaCache:
    """Opaque training cache of multi_head_attention_forward."""

    __slots__ = ("x", "qkv", "O", "lse", "masks", "causal", "scale", "weights", "names", "E", "h", "N", "L", "S",
                 "tm", "batched", "out_shape", "in_shapes", "dtype", "alias", "__weakref__")
    kind = "mha"

    def __repr__(self):
        return (f"MhaCache(N={self.N}, L={self.L}, S={self.S}, E={self.E}, heads={self.h}, dtype={self.dtype})")


def _heads(buf, N, T, h, tm):
    """(T*N or N*T, h*d) buffer -> (N, h, T, d) strided view."""
    d = buf.shape[1] // h
    if tm:
        return buf.reshape(T, N, h, d).transpose(1, 2, 0, 3)
    return buf.reshape(N, T, h, d).transpose(0, 2, 1, 3)


def _linear(x2, w, b):
    """x2 (R, in) @ w.T + b -> (R, out), a new C-contiguous array."""
    y = _gemm(x2, w, trans_b=True)
    if b is not None:
        y += b
    return y


def _mha_masks(a):
    """The MHA masks as core (mask, allows) pairs broadcastable to (N, h, L, S)."""
    N, h, L, S = a["N"], a["num_heads"], a["L"], a["S"]
    masks = []
    am = a["attn_mask"]
    if am is not None:                                   # (L, S) or (N*h, L, S); bool True = NOT allowed
        if am.ndim == 3:
            am = am.reshape(N, h, L, S)
        masks.append((_view(am), False))
    kpm = a["key_padding_mask"]
    if kpm is not None:                                  # (N, S); bool True = ignore that key
        masks.append((_view(kpm.reshape(N, 1, 1, S)), False))
    return masks


def _mha_run(query, key, value, num_heads, params, key_padding_mask, attn_mask, need_weights,
             average_attn_weights, is_causal, batch_first, need_cache):
    args = (query, key, value, num_heads, params, key_padding_mask, attn_mask, need_weights,
            average_attn_weights, is_causal, batch_first)
    a = _checks.check_mha_inputs(*args)
    if a["dtype"] not in _checks.FLOAT_DTYPES:
        a = _checks.check_mha_inputs(*args, dtype=_kernel_dtype(a["dtype"]))
    w_q, w_k, w_v, b_q, b_k, b_v, w_o, b_o = a["weights"]
    h, E, N, L, S = a["num_heads"], a["E"], a["N"], a["L"], a["S"]
    tm = a["batched"] and not a["batch_first"]
    # inputs in the caller's layout as 2-d rows (views of the caller's arrays when contiguous)
    xs = [_rows(x.transpose(1, 0, 2) if tm else x) for x in (a["q"], a["k"], a["v"])]
    alias = (0, 0 if key is query else 1, 0 if value is query else (1 if value is key else 2))
    projs = [None, None, None]
    for i, (x2, w, b) in enumerate(zip(xs, (w_q, w_k, w_v), (b_q, b_k, b_v))):
        projs[i] = _linear(x2, w, b)                     # (rows, E)
    Q, K, V = (_heads(P, N, T, h, tm) for P, T in zip(projs, (L, S, S)))
    masks = _mha_masks(a)
    scale = 1.0 / float(np.sqrt(E // h))
    O2 = np.empty((N * L, E), a["dtype"])                # heads merged, caller's row order
    _, lse = _core.sdpa_forward(Q, K, V, masks, a["is_causal"], scale, need_cache or a["need_weights"],
                                _heads(O2, N, L, h, tm))
    y = _linear(O2, w_o, b_o)                            # (rows, E)
    out = y.reshape(a["out_shape"])
    weights = None
    if a["need_weights"]:
        weights = _core.sdpa_weights(Q, K, masks, a["is_causal"], scale, lse, a["average_attn_weights"])
        if not a["batched"]:
            weights = weights[0]
    if not need_cache:
        return out, weights, None
    c = MhaCache()
    c.x, c.qkv, c.O, c.lse, c.masks, c.causal, c.scale = xs, projs, O2, lse, masks, a["is_causal"], scale
    c.weights, c.names, c.E, c.h, c.N, c.L, c.S = a["weights"], a["names"], E, h, N, L, S
    c.tm, c.batched, c.out_shape, c.dtype, c.alias = tm, a["batched"], out.shape, a["dtype"], alias
    c.in_shapes = tuple((x.shape[1], x.shape[0], x.shape[2]) if tm else (x.shape if a["batched"] else x.shape[1:])
                        for x in (a["q"], a["k"], a["v"]))      # the caller's shapes
    return out, weights, c


def multi_head_attention(query, key, value, num_heads, params, *, key_padding_mask=None, attn_mask=None,
                         need_weights=True, average_attn_weights=True, is_causal=False, batch_first=False):
    """Inference form -> (out, weights or None). See the module docstring."""
    out, weights, _ = _mha_run(query, key, value, num_heads, params, key_padding_mask, attn_mask,
                               need_weights, average_attn_weights, is_causal, batch_first, False)
    return out, weights


def multi_head_attention_forward(query, key, value, num_heads, params, *, key_padding_mask=None,
                                 attn_mask=None, need_weights=True, average_attn_weights=True,
                                 is_causal=False, batch_first=False):
    """Training form -> (out, weights or None, cache). See the module docstring."""
    return _mha_run(query, key, value, num_heads, params, key_padding_mask, attn_mask,
                    need_weights, average_attn_weights, is_causal, batch_first, True)


def _param_grad_targets(c, grads):
    """name -> (slices of) the arrays the parameter gradients are accumulated into.

    Returns (targets, fresh): targets maps 'w_q', ..., 'b_o' to arrays (or None without bias),
    fresh says whether they are new zero arrays (grads was None)."""
    E = c.E
    w_q, w_k, w_v, b_q, b_k, b_v, w_o, b_o = c.weights
    shapes = {"in_proj_weight": (3 * E, E), "q_proj_weight": w_q.shape, "k_proj_weight": w_k.shape,
              "v_proj_weight": w_v.shape, "in_proj_bias": (3 * E,), "out_proj.weight": w_o.shape,
              "out_proj.bias": (E,)}
    expected = {name: shapes[name] for name in c.names}
    if grads is None:
        grads = {name: np.zeros(shape, c.dtype) for name, shape in expected.items()}
    else:
        _checks.check_grads_mapping(grads, expected)
    if "in_proj_weight" in grads:
        g = grads["in_proj_weight"]
        wq, wk, wv = g[:E], g[E:2 * E], g[2 * E:]
    else:
        wq, wk, wv = grads["q_proj_weight"], grads["k_proj_weight"], grads["v_proj_weight"]
    bq = bk = bv = None
    if "in_proj_bias" in grads:
        g = grads["in_proj_bias"]
        bq, bk, bv = g[:E], g[E:2 * E], g[2 * E:]
    targets = dict(w=(wq, wk, wv, grads["out_proj.weight"]), b=(bq, bk, bv, grads.get("out_proj.bias")))
    return grads, targets


def _add_weight_grad(target, dz, x, dt):
    """target (out, in) += dz^T x  (dz (R, out), x (R, in)), straight into target when possible."""
    if _accumulable(target, dt):
        _gemm(dz, x, trans_a=True, out=target, beta=1.0)
    else:
        target += _gemm(dz, x, trans_a=True)


def multi_head_attention_backward(cache, dout, grads=None):
    """dout (out's shape) -> (dquery, dkey, dvalue, grads); grads ADDED INTO when given."""
    _check_cache(cache, MhaCache, "multi_head_attention_forward")
    c = cache
    dt = c.dtype
    dout = _checks.check_grad_output("dout", dout, c.out_shape, dt)
    grads, targets = _param_grad_targets(c, grads)
    w_q, w_k, w_v, b_q, b_k, b_v, w_o, b_o = c.weights
    gw_q, gw_k, gw_v, gw_o = targets["w"]
    gb_q, gb_k, gb_v, gb_o = targets["b"]
    dy = _rows(dout)                                     # (rows, E), caller's row order
    # forward: y = O @ w_o.T + b_o
    _add_weight_grad(gw_o, dy, c.O, dt)
    if gb_o is not None:
        gb_o += dy.sum(axis=0)
    dO = _gemm(dy, w_o)                                  # (rows, E)
    # forward: O = merge_heads(softmax(Q K^T * scale + masks) V)   (the core writes the merged layout)
    N, L, S, h, tm = c.N, c.L, c.S, c.h, c.tm
    dZ = [np.empty((N * T, c.E), dt) for T in (L, S, S)]
    _core.sdpa_backward(*(_heads(P, N, T, h, tm) for P, T in zip(c.qkv, (L, S, S))), c.masks, c.causal, c.scale,
                        _heads(c.O, N, L, h, tm), c.lse, _heads(dO, N, L, h, tm),
                        *(_heads(g, N, T, h, tm) for g, T in zip(dZ, (L, S, S))))
    # forward: Q = x_q @ w_q.T + b_q (and K, V alike)
    for dz, x, gw, gb in zip(dZ, c.x, (gw_q, gw_k, gw_v), (gb_q, gb_k, gb_v)):
        _add_weight_grad(gw, dz, x, dt)
        if gb is not None:
            gb += dz.sum(axis=0)
    # input gradients; arguments that are one array get the total (one buffer per array)
    dx = [None, None, None]
    for i, (dz, w) in enumerate(zip(dZ, (w_q, w_k, w_v))):
        j = c.alias[i]
        if dx[j] is None:
            dx[j] = _gemm(dz, w)
        else:
            _gemm(dz, w, out=dx[j], beta=1.0)
    result = []
    for i in range(3):
        d = dx[c.alias[i]].reshape(c.in_shapes[i])
        result.append(d if c.alias[i] == i else d.copy())   # the caller owns each array
    return result[0], result[1], result[2], grads


# --------------------------------------------------------------------------- additive (Bahdanau)

class AdditiveCache:
    """Opaque training cache of additive_attention_forward: the (contiguous) inputs, t =
    tanh(W_q query + W_k keys + b) (B, S, H) and the weights (B, S)."""

    __slots__ = ("query", "keys", "W_q", "W_k", "v", "t", "a", "out_shape", "dtype", "__weakref__")
    kind = "additive"

    def __repr__(self):
        return f"AdditiveCache(t={self.t.shape}, dtype={self.dtype})"


def additive_attention_precompute(keys, W_k):
    """keys (B, S, K), W_k (H, K) -> keys_proj = keys @ W_k.T (B, S, H). Once per sequence."""
    keys = _checks.as_float_array("keys", keys)
    W_k = _checks.as_float_array("W_k", W_k, ndim=2)
    if keys.ndim != 3:
        raise ValueError(f"keys: expected shape (B, S, K), got {keys.shape}")
    if W_k.shape[1] != keys.shape[2]:
        raise ValueError(f"W_k: expected shape (H, {keys.shape[2]}) (K from keys {keys.shape}), got {W_k.shape}")
    dt = _kernel_dtype(np.result_type(keys.dtype, W_k.dtype))
    keys, W_k = _as_kernel(keys, dt), np.ascontiguousarray(_as_kernel(W_k, dt))
    B, S, _ = keys.shape
    return _gemm(_rows(keys), W_k, trans_b=True).reshape(B, S, W_k.shape[0])


def _additive_run(query, keys, W_q, W_k, b, v, mask, keys_proj, need_cache):
    checked = _checks.check_additive_inputs(query, keys, W_q, W_k, b, v, mask, keys_proj)
    dt = _kernel_dtype(checked[0].dtype)
    query, keys, W_q, W_k, b, v, mask, keys_proj = (
        None if a is None else np.ascontiguousarray(_as_kernel(a, dt)) for a in checked)
    context, weights, t = _core.additive_forward(query, keys, W_q, W_k, b, v, mask, keys_proj, need_cache)
    cache = None
    if need_cache:
        cache = AdditiveCache()
        cache.query, cache.keys, cache.W_q, cache.W_k, cache.v = query, keys, W_q, W_k, v
        cache.t, cache.a, cache.out_shape, cache.dtype = t, weights, context.shape, dt
    return context, weights, cache


def additive_attention(query, keys, W_q, W_k, b, v, mask=None, keys_proj=None):
    """Inference form -> (context (B, K), weights (B, S))."""
    context, weights, _ = _additive_run(query, keys, W_q, W_k, b, v, mask, keys_proj, False)
    return context, weights


def additive_attention_forward(query, keys, W_q, W_k, b, v, mask=None, keys_proj=None):
    """Training form -> (context (B, K), weights (B, S), cache)."""
    return _additive_run(query, keys, W_q, W_k, b, v, mask, keys_proj, True)


def additive_attention_backward(cache, dcontext, grads=None):
    """dcontext (B, K) -> (dquery (B, Q), dkeys (B, S, K), grads (dW_q, dW_k, db, dv))."""
    _check_cache(cache, AdditiveCache, "additive_attention_forward")
    c = cache
    dctx = np.ascontiguousarray(_checks.check_grad_output("dcontext", dcontext, c.out_shape, c.dtype))
    H = c.W_q.shape[0]
    like = (c.W_q, c.W_k, np.empty(H, c.dtype), c.v)
    if grads is None:
        grads = tuple(np.zeros(w.shape, c.dtype) for w in like)
        targets = grads
    else:
        _checks.check_grads_tuple(grads, like)
        targets = tuple(g if _accumulable(g, c.dtype) else np.zeros(g.shape, c.dtype) for g in grads)
    dquery, dkeys = _core.additive_backward(c.query, c.keys, c.W_q, c.W_k, c.v, c.t, c.a, dctx, *targets)
    for g, t in zip(grads, targets):
        if g is not t:
            g += t
    return dquery, dkeys, grads
