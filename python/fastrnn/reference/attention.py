"""Attention in plain NumPy: the oracle for cpp/src/attention.* (any float dtype).

The C++ backend (python/fastrnn/functional/attention.py) implements the SAME functions with
the SAME signatures, returns and errors; the layer classes in fastrnn/layers/attention.py are
written once against either module. Argument checks are shared: fastrnn._checks
(check_sdpa_inputs, check_mha_inputs, check_additive_inputs).

Scaled dot-product attention (PyTorch's F.scaled_dot_product_attention)::

    out = scaled_dot_product_attention(q, k, v, attn_mask=None, is_causal=False, scale=None)
    out, cache = scaled_dot_product_attention_forward(q, k, v, attn_mask=None, is_causal=False, scale=None)
    dq, dk, dv = scaled_dot_product_attention_backward(cache, dout)

    q (..., Lq, E), k (..., S, E), v (..., S, Ev) -> out (..., Lq, Ev), where ... is the
    broadcast of the three leading shapes (NumPy rules). dq, dk, dv have q's, k's, v's own
    shapes (gradients summed over broadcast dims). attn_mask: bool (True = may attend) or
    float (added to the scores; -inf = masked), broadcastable to (..., Lq, S) without growing
    it. is_causal masks j > i (top-left aligned when Lq != S, as PyTorch); it may be combined
    with attn_mask (both apply; PyTorch raises instead). scale None = 1/sqrt(E).

Multi-head attention (PyTorch's nn.MultiheadAttention semantics)::

    out, weights, cache = multi_head_attention_forward(
        query, key, value, num_heads, params, *, key_padding_mask=None, attn_mask=None,
        need_weights=True, average_attn_weights=True, is_causal=False, batch_first=False)
    dquery, dkey, dvalue, grads = multi_head_attention_backward(cache, dout, grads=None)
    out, weights = multi_head_attention(query, key, value, num_heads, params, *, ...same keywords...)

    params: mapping with PyTorch's state_dict names: 'in_proj_weight' (3E, E) or all of
      'q_proj_weight' (E, E), 'k_proj_weight' (E, kdim), 'v_proj_weight' (E, vdim);
      'out_proj.weight' (E, E); optional 'in_proj_bias' (3E,), 'out_proj.bias' (E,)
      (absent or None = no bias). E = embed_dim, head dim d = E // num_heads.
    query (L, N, E), key (S, N, kdim), value (S, N, vdim); batch_first: (N, L, E), ...;
      unbatched: (L, E), (S, kdim), (S, vdim) (batch_first ignored).
    out: query's layout with E features. weights (None unless need_weights): (N, L, S)
      averaged over heads, or (N, num_heads, L, S) when average_attn_weights=False
      (unbatched: (L, S) / (num_heads, L, S)).
    key_padding_mask (N, S) / (S,): bool True = IGNORE that key, or float (added).
    attn_mask (L, S) or (N*num_heads, L, S) / (num_heads, L, S): bool True = NOT allowed
      (PyTorch's MHA convention, the opposite of the SDPA one), or float (added).
    is_causal: PyTorch's hint: needs attn_mask (ValueError otherwise, PyTorch raises too);
      the causal mask (j > i) is applied together with attn_mask, so a correct hint gives
      exactly PyTorch's result.
    grads: None (new dict) or a dict with exactly params' keys; ADDED INTO in place, returned.
      Keys and order follow params (state_dict order).
    When arguments are the same array object (query is key, key is value, ...), each of
    their gradients is the TOTAL gradient with respect to that array (PyTorch's x.grad):
    use one of them, do not add them up again.

Additive (Bahdanau) attention, one decoder step::

    keys_proj = additive_attention_precompute(keys, W_k)       # (B, S, K) -> (B, S, H)
    context, weights, cache = additive_attention_forward(query, keys, W_q, W_k, b, v,
                                                         mask=None, keys_proj=None)
    dquery, dkeys, grads = additive_attention_backward(cache, dcontext, grads=None)
    context, weights = additive_attention(query, keys, W_q, W_k, b, v, mask=None, keys_proj=None)

    query (B, Q), keys (B, S, K), W_q (H, Q), W_k (H, K), b (H,), v (H,);
    score_s = v . tanh(W_q query + W_k keys_s + b); weights = softmax over S of the scores
    where mask (B, S) bool is True (True = attend); context = sum_s weights_s keys_s (B, K).
    keys_proj: keys @ W_k.T computed once per sequence by additive_attention_precompute and
      passed at every decoder step (it must equal that; gradients assume it, and still flow
      to W_k and keys through it). grads: (dW_q, dW_k, db, dv), ADDED INTO in place when given.

Everywhere: a query row with nothing to attend to (all masked, or S == 0) gets weights 0,
output 0 and gradient 0, never NaN. Inputs are never written to; results are new arrays.
Caches are opaque (dicts here) and checked by kind; dout/dcontext shapes are checked.
"""
from __future__ import annotations

import numpy as np

from .. import _checks

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

def _t(a):
    """Transpose the last two axes (a view)."""
    return np.swapaxes(a, -1, -2)


def _unbroadcast(g, shape):
    """Sum a gradient of a broadcast result back to the operand's own `shape`."""
    extra = g.ndim - len(shape)
    if extra:
        g = g.sum(axis=tuple(range(extra)))
    axes = tuple(i for i, n in enumerate(shape) if n == 1 and g.shape[i] != 1)
    if axes:
        g = g.sum(axis=axes, keepdims=True)
    return g


def _bool_to_additive(allowed, dtype):
    """bool mask (True = allowed) -> float mask: 0 where allowed, -inf where not."""
    return np.where(allowed, np.zeros((), dtype), np.array(-np.inf, dtype))


def _causal_additive(Lq, S, dtype):
    """(Lq, S): -inf where j > i (top-left aligned, as PyTorch), 0 elsewhere."""
    return _bool_to_additive(np.tri(Lq, S, dtype=bool), dtype)


def _masked_softmax(scores):
    """Softmax over the last axis; rows that are all -inf (or empty) give all zeros."""
    m = scores.max(axis=-1, keepdims=True, initial=-np.inf)     # (..., 1)
    m = np.where(m == -np.inf, 0.0, m).astype(scores.dtype)     # no (-inf) - (-inf) = NaN
    e = np.exp(scores - m)                                      # masked entries: exp(-inf) = 0
    z = e.sum(axis=-1, keepdims=True)
    return e / np.where(z > 0, z, 1).astype(scores.dtype)


def _softmax_backward(p, dp):
    """Given p = softmax(s) and dL/dp, return dL/ds = p * (dp - sum(p * dp)) (0 where p is 0)."""
    return p * (dp - (p * dp).sum(axis=-1, keepdims=True))


def _check_cache(cache, kind, producer):
    if not isinstance(cache, dict) or cache.get("kind") != kind:
        got = cache.get("kind") if isinstance(cache, dict) else type(cache).__name__
        raise ValueError(f"cache: expected the cache returned by {producer}, got {got!r}")


# shared with the C++ backend (python/fastrnn/functional/attention.py): one set of messages
_as_grad_output = _checks.check_grad_output
_check_grads_mapping = _checks.check_grads_mapping
_check_grads_tuple = _checks.check_grads_tuple


# --------------------------------------------------------------------------- SDPA core
# Shapes: q (..., Lq, E), k (..., S, E), v (..., S, Ev), mask_add (..., Lq, S) or None
# (float: 0 = keep, -inf = masked, anything else added to the score).

def _sdpa_core_forward(q, k, v, mask_add, scale):
    scores = (q @ _t(k)) * scale                     # (..., Lq, S)
    if mask_add is not None:
        scores = scores + mask_add
    p = _masked_softmax(scores)                      # (..., Lq, S), fully masked rows: 0
    out = p @ v                                      # (..., Lq, Ev)
    return out, p


def _sdpa_core_backward(q, k, v, p, scale, dout):
    # forward: out = p @ v
    dv = _t(p) @ dout                                # (..., S, Ev)
    dp = dout @ _t(v)                                # (..., Lq, S)
    # forward: p = softmax(scores)
    ds = _softmax_backward(p, dp)                    # (..., Lq, S)
    # forward: scores = (q @ k^T) * scale + mask
    dq = (ds @ k) * scale                            # (..., Lq, E)
    dk = (_t(ds) @ q) * scale                        # (..., S, E)
    return dq, dk, dv                                # all at the broadcast leading shape


def _sdpa_mask(attn_mask, is_causal, Lq, S, dtype):
    """Public SDPA masks -> one additive float mask (broadcastable to (..., Lq, S)) or None."""
    mask_add = None
    if attn_mask is not None:
        mask_add = _bool_to_additive(attn_mask, dtype) if attn_mask.dtype == np.bool_ else attn_mask
    if is_causal:
        causal = _causal_additive(Lq, S, dtype)
        mask_add = causal if mask_add is None else mask_add + causal
    return mask_add


# --------------------------------------------------------------------------- SDPA

def scaled_dot_product_attention(q, k, v, attn_mask=None, is_causal=False, scale=None):
    """Inference form: softmax(q k^T * scale + mask) v -> out (..., Lq, Ev)."""
    q, k, v, attn_mask, is_causal, scale, _ = _checks.check_sdpa_inputs(q, k, v, attn_mask, is_causal, scale)
    mask_add = _sdpa_mask(attn_mask, is_causal, q.shape[-2], k.shape[-2], q.dtype)
    out, _ = _sdpa_core_forward(q, k, v, mask_add, scale)
    return out


def scaled_dot_product_attention_forward(q, k, v, attn_mask=None, is_causal=False, scale=None):
    """Training form -> (out (..., Lq, Ev), cache)."""
    q, k, v, attn_mask, is_causal, scale, _ = _checks.check_sdpa_inputs(q, k, v, attn_mask, is_causal, scale)
    mask_add = _sdpa_mask(attn_mask, is_causal, q.shape[-2], k.shape[-2], q.dtype)
    out, p = _sdpa_core_forward(q, k, v, mask_add, scale)
    cache = dict(kind="sdpa", q=q, k=k, v=v, p=p, scale=scale, out_shape=out.shape)
    return out, cache


def scaled_dot_product_attention_backward(cache, dout):
    """dout (..., Lq, Ev) -> (dq, dk, dv), each with its input's own (unbroadcast) shape."""
    _check_cache(cache, "sdpa", "scaled_dot_product_attention_forward")
    q, k, v, p = cache["q"], cache["k"], cache["v"], cache["p"]
    dout = _as_grad_output("dout", dout, cache["out_shape"], q.dtype)
    dq, dk, dv = _sdpa_core_backward(q, k, v, p, cache["scale"], dout)
    return _unbroadcast(dq, q.shape), _unbroadcast(dk, k.shape), _unbroadcast(dv, v.shape)


# --------------------------------------------------------------------------- multi-head attention
# Inside, everything is batch-first and split into heads:
#   x_q (N, L, E), x_k (N, S, kdim), x_v (N, S, vdim)         inputs
#   Q (N, h, L, d), K (N, h, S, d), V (N, h, S, d)             projected, d = E // h
#   P (N, h, L, S)                                             attention weights
#   O (N, L, E)                                                heads concatenated, before out_proj

def _split_heads(x, h):
    """(N, T, E) -> (N, h, T, d)."""
    N, T, E = x.shape
    return x.reshape(N, T, h, E // h).transpose(0, 2, 1, 3)


def _merge_heads(x):
    """(N, h, T, d) -> (N, T, h*d)."""
    N, h, T, d = x.shape
    return x.transpose(0, 2, 1, 3).reshape(N, T, h * d)


def _linear(x, w, b):
    """x (..., in) @ w.T (out, in) + b (out,) -> (..., out)."""
    y = x @ w.T
    return y if b is None else y + b


def _mha_mask(a):
    """MHA masks -> one additive float mask broadcastable to (N, h, L, S), or None."""
    N, h, L, S, dt = a["N"], a["num_heads"], a["L"], a["S"], a["dtype"]
    mask_add = None
    am = a["attn_mask"]
    if am is not None:                                   # (L, S) or (N*h, L, S); bool True = NOT allowed
        am = _bool_to_additive(~am, dt) if am.dtype == np.bool_ else am
        mask_add = am.reshape(N, h, L, S) if am.ndim == 3 else am
    kpm = a["key_padding_mask"]
    if kpm is not None:                                  # (N, S); bool True = ignore
        kpm = _bool_to_additive(~kpm, dt) if kpm.dtype == np.bool_ else kpm
        kpm = kpm.reshape(N, 1, 1, S)
        mask_add = kpm if mask_add is None else mask_add + kpm
    if a["is_causal"]:                                   # PyTorch's hint (attn_mask is given): apply it too
        mask_add = mask_add + _causal_additive(L, S, dt)
    return mask_add


def _mha_run(query, key, value, num_heads, params, key_padding_mask, attn_mask, need_weights,
             average_attn_weights, is_causal, batch_first, need_cache):
    a = _checks.check_mha_inputs(query, key, value, num_heads, params, key_padding_mask, attn_mask,
                                 need_weights, average_attn_weights, is_causal, batch_first)
    w_q, w_k, w_v, b_q, b_k, b_v, w_o, b_o = a["weights"]
    h = a["num_heads"]
    x_q, x_k, x_v = a["q"], a["k"], a["v"]               # (N, L, E), (N, S, kdim), (N, S, vdim)
    Q = _split_heads(_linear(x_q, w_q, b_q), h)          # (N, h, L, d)
    K = _split_heads(_linear(x_k, w_k, b_k), h)          # (N, h, S, d)
    V = _split_heads(_linear(x_v, w_v, b_v), h)          # (N, h, S, d)
    scale = 1.0 / float(np.sqrt(a["E"] // h))
    Oh, P = _sdpa_core_forward(Q, K, V, _mha_mask(a), scale)   # (N, h, L, d), (N, h, L, S)
    O = _merge_heads(Oh)                                 # (N, L, E)
    y = _linear(O, w_o, b_o)                             # (N, L, E)
    out = _from_batch_first(y, a)
    weights = None
    if a["need_weights"]:
        weights = P.mean(axis=1) if a["average_attn_weights"] else P.copy()   # (N, L, S) / (N, h, L, S)
        if not a["batched"]:
            weights = weights[0]
    if not need_cache:
        return out, weights, None
    # which arguments are the same array: their gradients are summed (see module docstring)
    alias = (0, 0 if key is query else 1, 0 if value is query else (1 if value is key else 2))
    cache = dict(kind="mha", x_q=x_q, x_k=x_k, x_v=x_v, Q=Q, K=K, V=V, P=P, O=O, scale=scale,
                 weights=a["weights"], names=a["names"], E=a["E"], h=h, batched=a["batched"],
                 batch_first=a["batch_first"], out_shape=out.shape, dtype=a["dtype"],
                 alias=alias)
    return out, weights, cache


def _from_batch_first(x, a):
    """(N, T, F) -> the caller's layout: (T, N, F) time-major, (N, T, F) batch_first, (T, F) unbatched."""
    if not a["batched"]:
        return x[0]
    return x if a["batch_first"] else np.ascontiguousarray(x.transpose(1, 0, 2))


def _to_batch_first(x, batched, batch_first):
    if not batched:
        return x[None]
    return x if batch_first else x.transpose(1, 0, 2)


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


def multi_head_attention_backward(cache, dout, grads=None):
    """dout (out's shape) -> (dquery, dkey, dvalue, grads); grads ADDED INTO when given."""
    _check_cache(cache, "mha", "multi_head_attention_forward")
    dt = cache["dtype"]
    h = cache["h"]
    w_q, w_k, w_v, b_q, b_k, b_v, w_o, b_o = cache["weights"]
    x_q, x_k, x_v = cache["x_q"], cache["x_k"], cache["x_v"]
    dout = _as_grad_output("dout", dout, cache["out_shape"], dt)
    dy = _to_batch_first(dout, cache["batched"], cache["batch_first"])   # (N, L, E)

    # forward: y = O @ w_o.T + b_o
    dw_o = np.einsum("nle,nlf->ef", dy, cache["O"])                       # (E, E)
    db_o = dy.sum(axis=(0, 1)) if b_o is not None else None               # (E,)
    dO = dy @ w_o                                                         # (N, L, E)
    # forward: O = merge_heads(softmax(Q K^T * scale + mask) V)
    dQ, dK, dV = _sdpa_core_backward(cache["Q"], cache["K"], cache["V"], cache["P"], cache["scale"],
                                     _split_heads(dO, h))
    dQ, dK, dV = _merge_heads(dQ), _merge_heads(dK), _merge_heads(dV)     # (N, L, E), (N, S, E), (N, S, E)
    # forward: Q = x_q @ w_q.T + b_q (and K, V alike)
    dw = [np.einsum("nte,ntf->ef", dZ, x) for dZ, x in ((dQ, x_q), (dK, x_k), (dV, x_v))]
    db = [dZ.sum(axis=(0, 1)) for dZ in (dQ, dK, dV)] if b_q is not None else None
    dx = [dQ @ w_q, dK @ w_k, dV @ w_v]                                   # batch-first inputs' grads

    new = {}
    names = cache["names"]
    if "in_proj_weight" in names:
        new["in_proj_weight"] = np.concatenate(dw, axis=0)                # (3E, E)
    else:
        new["q_proj_weight"], new["k_proj_weight"], new["v_proj_weight"] = dw
    if "in_proj_bias" in names:
        new["in_proj_bias"] = np.concatenate(db, axis=0)                  # (3E,)
    new["out_proj.weight"] = dw_o
    if "out_proj.bias" in names:
        new["out_proj.bias"] = db_o
    new = {key: new[key] for key in names}
    if grads is None:
        grads = new
    else:
        _check_grads_mapping(grads, {key: g.shape for key, g in new.items()})
        for key, g in new.items():
            grads[key] += g

    # back to each argument's own layout; arguments that are one array get the total
    dx = [_from_batch_first(d, cache) for d in dx]
    alias = cache["alias"]
    result = []
    for i in range(3):
        group = [dx[j] for j in range(3) if alias[j] == alias[i]]
        result.append(group[0] if len(group) == 1 else sum(group[1:], group[0].copy()))
    return result[0], result[1], result[2], grads


# --------------------------------------------------------------------------- additive (Bahdanau)
# Shapes: query (B, Q), keys (B, S, K), W_q (H, Q), W_k (H, K), b (H,), v (H,), mask (B, S).

def additive_attention_precompute(keys, W_k):
    """keys (B, S, K), W_k (H, K) -> keys_proj = keys @ W_k.T (B, S, H). Once per sequence."""
    keys = _checks.as_float_array("keys", keys)
    W_k = _checks.as_float_array("W_k", W_k, ndim=2)
    if keys.ndim != 3:
        raise ValueError(f"keys: expected shape (B, S, K), got {keys.shape}")
    if W_k.shape[1] != keys.shape[2]:
        raise ValueError(f"W_k: expected shape (H, {keys.shape[2]}) (K from keys {keys.shape}), got {W_k.shape}")
    return keys @ W_k.T


def _additive_run(query, keys, W_q, W_k, b, v, mask, keys_proj, need_cache):
    query, keys, W_q, W_k, b, v, mask, keys_proj = _checks.check_additive_inputs(
        query, keys, W_q, W_k, b, v, mask, keys_proj)
    if keys_proj is None:
        keys_proj = keys @ W_k.T                                 # (B, S, H)
    t = np.tanh(keys_proj + (query @ W_q.T)[:, None, :] + b)     # (B, S, H)
    scores = t @ v                                               # (B, S)
    if mask is not None:
        scores = np.where(mask, scores, -np.inf)
    a = _masked_softmax(scores)                                  # (B, S); fully masked rows: 0
    context = (a[:, None, :] @ keys)[:, 0, :]                    # (B, K)
    cache = None
    if need_cache:
        cache = dict(kind="additive", query=query, keys=keys, W_q=W_q, W_k=W_k, b=b, v=v, t=t, a=a,
                     out_shape=context.shape)
    return context, a, cache


def additive_attention(query, keys, W_q, W_k, b, v, mask=None, keys_proj=None):
    """Inference form -> (context (B, K), weights (B, S))."""
    context, a, _ = _additive_run(query, keys, W_q, W_k, b, v, mask, keys_proj, False)
    return context, a


def additive_attention_forward(query, keys, W_q, W_k, b, v, mask=None, keys_proj=None):
    """Training form -> (context (B, K), weights (B, S), cache)."""
    return _additive_run(query, keys, W_q, W_k, b, v, mask, keys_proj, True)


def additive_attention_backward(cache, dcontext, grads=None):
    """dcontext (B, K) -> (dquery (B, Q), dkeys (B, S, K), grads (dW_q, dW_k, db, dv))."""
    _check_cache(cache, "additive", "additive_attention_forward")
    query, keys, W_q, W_k, v, t, a = (cache[n] for n in ("query", "keys", "W_q", "W_k", "v", "t", "a"))
    dctx = _as_grad_output("dcontext", dcontext, cache["out_shape"], query.dtype)
    # forward: context = sum_s a_s keys_s
    da = (keys @ dctx[:, :, None])[:, :, 0]                      # (B, S)
    dkeys = a[:, :, None] * dctx[:, None, :]                     # (B, S, K)
    # forward: a = softmax(scores) over unmasked s
    dscores = _softmax_backward(a, da)                           # (B, S); 0 where masked
    # forward: scores = t @ v
    dv = np.einsum("bs,bsh->h", dscores, t)                      # (H,)
    dt = dscores[:, :, None] * v                                 # (B, S, H)
    # forward: t = tanh(keys_proj + query @ W_q.T + b)
    dpre = dt * (1.0 - t * t)                                    # (B, S, H)
    db = dpre.sum(axis=(0, 1))                                   # (H,)
    dqp = dpre.sum(axis=1)                                       # (B, H)
    dW_q = dqp.T @ query                                         # (H, Q)
    dquery = dqp @ W_q                                           # (B, Q)
    # forward: keys_proj = keys @ W_k.T
    dW_k = np.einsum("bsh,bsk->hk", dpre, keys)                  # (H, K)
    dkeys = dkeys + dpre @ W_k                                   # (B, S, K)
    new = (dW_q, dW_k, db, dv)
    if grads is None:
        grads = new
    else:
        _check_grads_tuple(grads, new)
        for g, d in zip(grads, new):
            g += d
    return dquery, dkeys, grads
