"""Attention layers written once, bound to a functional backend by the class attribute `_F`.

`_F` is a module providing the functions documented in fastrnn/reference/attention.py
(fastrnn.functional for the C++ kernels, fastrnn.reference.functional for NumPy). The classes
own parameters, gradients, the RNG and the state_dict; every number is computed by `_F`.

    mha = MultiheadAttention(embed_dim, num_heads, bias=True, kdim=None, vdim=None,
                             batch_first=False, dtype="float32", seed=None)
    out, weights = mha(query, key, value, key_padding_mask=None, attn_mask=None,
                       need_weights=True, average_attn_weights=True, is_causal=False)
    out, weights, cache = mha.forward(...same arguments...)
    dquery, dkey, dvalue = mha.backward(cache, dout)          # adds into mha.grads

    att = AdditiveAttention(query_size, key_size, hidden_size, dtype="float32", seed=None)
    keys_proj = att.precompute(keys)                          # optional, once per sequence
    context, weights = att(query, keys, mask=None, keys_proj=None)
    context, weights, cache = att.forward(query, keys, mask=None, keys_proj=None)
    dquery, dkeys = att.backward(cache, dcontext)             # adds into att.grads

Masks follow PyTorch's nn.MultiheadAttention: key_padding_mask True = ignore that key,
bool attn_mask True = NOT allowed; float masks are added. is_causal is PyTorch's hint and
needs attn_mask. AdditiveAttention's mask is bool, True = attend. When query is key (is
value), the returned gradients are each the total gradient for that one array.
"""
from __future__ import annotations

import numpy as np

from .. import _checks
from ._params import LayerCache, Parametrized  # one cache type, one params base for all layers

__all__ = ["MultiheadAttention", "AdditiveAttention"]


def _check_backend(layer):
    if layer._F is None:
        name = type(layer).__name__
        raise TypeError(f"{name} has no functional backend: use fastrnn.{name} or fastrnn.reference.{name}")


class _ParamsMixin(Parametrized):
    """Parameters over `self._shapes` (the shared Parametrized base) plus their gradients."""

    def _init_grads(self):
        self.grads = {name: np.zeros_like(p) for name, p in self.params.items()}


def _uniform(rng, bound, shape, dtype):
    return rng.uniform(-bound, bound, size=shape).astype(dtype)


class MultiheadAttention(_ParamsMixin):
    """PyTorch's nn.MultiheadAttention (no dropout, add_bias_kv or add_zero_attn)."""

    _F = None  # functional backend module, set by the concrete subclass

    def __init__(self, embed_dim, num_heads, bias=True, kdim=None, vdim=None, batch_first=False,
                 dtype="float32", seed=None):
        _check_backend(self)
        self.embed_dim = _checks.check_positive_int("embed_dim", embed_dim)
        self.num_heads = _checks.check_positive_int("num_heads", num_heads)
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim: must be divisible by num_heads = {self.num_heads}, got {self.embed_dim}")
        self.head_dim = self.embed_dim // self.num_heads
        self.kdim = self.embed_dim if kdim is None else _checks.check_positive_int("kdim", kdim)
        self.vdim = self.embed_dim if vdim is None else _checks.check_positive_int("vdim", vdim)
        self.bias = _checks.check_flag("bias", bias)
        self.batch_first = _checks.check_flag("batch_first", batch_first)
        self.dtype = _checks.resolve_dtype(dtype)
        self._qkv_same_embed_dim = self.kdim == self.embed_dim and self.vdim == self.embed_dim
        shapes = _checks.mha_param_shapes(self.embed_dim, self.kdim, self.vdim, self.bias,
                                          packed=self._qkv_same_embed_dim)
        self.reset_parameters(seed, shapes)
        self._init_grads()

    def reset_parameters(self, seed=None, shapes=None):
        """PyTorch's init: xavier_uniform in_proj (or each of q/k/v_proj_weight), zero biases,
        out_proj.weight U(-1/sqrt(E), 1/sqrt(E)) (nn.Linear's default). Drawn in state_dict order."""
        if shapes is None:
            shapes = {name: p.shape for name, p in self.params.items()}
        rng = np.random.default_rng(seed)
        params = {}
        for name, shape in shapes.items():
            if name.endswith("bias"):
                params[name] = np.zeros(shape, self.dtype)
            elif name == "out_proj.weight":
                params[name] = _uniform(rng, 1.0 / np.sqrt(shape[1]), shape, self.dtype)
            else:  # xavier_uniform: U(-a, a), a = sqrt(6 / (fan_in + fan_out))
                params[name] = _uniform(rng, np.sqrt(6.0 / (shape[0] + shape[1])), shape, self.dtype)
        if getattr(self, "params", None) is None:
            self.params = params
        else:
            for name, p in params.items():
                self.params[name][...] = p

    def __repr__(self):
        extra = "" if self._qkv_same_embed_dim else f", kdim={self.kdim}, vdim={self.vdim}"
        return (f"{type(self).__name__}({self.embed_dim}, {self.num_heads}, bias={self.bias}{extra}, "
                f"batch_first={self.batch_first}, dtype={self.dtype.name!r})")

    def _inputs(self, query, key, value):
        """Convert to the layer's dtype, keeping `query is key is value` identities."""
        q = _checks.as_float_array("query", query, self.dtype)
        k = q if key is query else _checks.as_float_array("key", key, self.dtype)
        if value is query:
            v = q
        elif value is key:
            v = k
        else:
            v = _checks.as_float_array("value", value, self.dtype)
        return q, k, v

    def _kwargs(self, key_padding_mask, attn_mask, need_weights, average_attn_weights, is_causal):
        return dict(key_padding_mask=key_padding_mask, attn_mask=attn_mask, need_weights=need_weights,
                    average_attn_weights=average_attn_weights, is_causal=is_causal,
                    batch_first=self.batch_first)

    def __call__(self, query, key, value, key_padding_mask=None, attn_mask=None, need_weights=True,
                 average_attn_weights=True, is_causal=False):
        """Inference -> (out, weights or None)."""
        q, k, v = self._inputs(query, key, value)
        return self._F.multi_head_attention(
            q, k, v, self.num_heads, self.params,
            **self._kwargs(key_padding_mask, attn_mask, need_weights, average_attn_weights, is_causal))

    def forward(self, query, key, value, key_padding_mask=None, attn_mask=None, need_weights=True,
                average_attn_weights=True, is_causal=False):
        """Training -> (out, weights or None, cache)."""
        q, k, v = self._inputs(query, key, value)
        out, weights, cache = self._F.multi_head_attention_forward(
            q, k, v, self.num_heads, self.params,
            **self._kwargs(key_padding_mask, attn_mask, need_weights, average_attn_weights, is_causal))
        return out, weights, LayerCache(self, cache)

    def backward(self, cache, dout):
        """dout (out's shape) -> (dquery, dkey, dvalue); parameter gradients are ADDED to self.grads."""
        inner = self._unwrap(cache)
        dout = _checks.as_float_array("dout", dout, self.dtype)
        dq, dk, dv, _ = self._F.multi_head_attention_backward(inner, dout, self.grads)
        return dq, dk, dv


class AdditiveAttention(_ParamsMixin):
    """Bahdanau attention: score_s = v . tanh(W_q query + W_k keys_s + b), softmax over S.

    Params W_q (H, Q), W_k (H, K), b (H,), v (H,), initialised like nn.Linear layers:
    W_q, b ~ U(+-1/sqrt(Q)) (the query Linear with its bias), W_k ~ U(+-1/sqrt(K)),
    v ~ U(+-1/sqrt(H)) (a Linear(H, 1) without bias). Drawn in that order from `seed`.
    """

    _F = None  # functional backend module, set by the concrete subclass

    def __init__(self, query_size, key_size, hidden_size, dtype="float32", seed=None):
        _check_backend(self)
        self.query_size = _checks.check_positive_int("query_size", query_size)
        self.key_size = _checks.check_positive_int("key_size", key_size)
        self.hidden_size = _checks.check_positive_int("hidden_size", hidden_size)
        self.dtype = _checks.resolve_dtype(dtype)
        self.params = None
        self.reset_parameters(seed)
        self._init_grads()

    def reset_parameters(self, seed=None):
        Q, K, H = self.query_size, self.key_size, self.hidden_size
        rng = np.random.default_rng(seed)
        params = {
            "W_q": _uniform(rng, 1.0 / np.sqrt(Q), (H, Q), self.dtype),
            "W_k": _uniform(rng, 1.0 / np.sqrt(K), (H, K), self.dtype),
            "b": _uniform(rng, 1.0 / np.sqrt(Q), (H,), self.dtype),
            "v": _uniform(rng, 1.0 / np.sqrt(H), (H,), self.dtype),
        }
        if self.params is None:
            self.params = params
        else:
            for name, p in params.items():
                self.params[name][...] = p

    def __repr__(self):
        return (f"{type(self).__name__}({self.query_size}, {self.key_size}, {self.hidden_size}, "
                f"dtype={self.dtype.name!r})")

    def _weights(self):
        p = self.params
        return p["W_q"], p["W_k"], p["b"], p["v"]

    def precompute(self, keys):
        """keys (B, S, K) -> keys_proj (B, S, H): pass it as keys_proj at every decoder step."""
        keys = _checks.as_float_array("keys", keys, self.dtype)
        return self._F.additive_attention_precompute(keys, self.params["W_k"])

    def _inputs(self, query, keys, keys_proj):
        query = _checks.as_float_array("query", query, self.dtype)
        keys = _checks.as_float_array("keys", keys, self.dtype)
        if keys_proj is not None:
            keys_proj = _checks.as_float_array("keys_proj", keys_proj, self.dtype)
        return query, keys, keys_proj

    def __call__(self, query, keys, mask=None, keys_proj=None):
        """Inference -> (context (B, K), weights (B, S))."""
        query, keys, keys_proj = self._inputs(query, keys, keys_proj)
        return self._F.additive_attention(query, keys, *self._weights(), mask=mask, keys_proj=keys_proj)

    def forward(self, query, keys, mask=None, keys_proj=None):
        """Training -> (context, weights, cache)."""
        query, keys, keys_proj = self._inputs(query, keys, keys_proj)
        context, weights, cache = self._F.additive_attention_forward(
            query, keys, *self._weights(), mask=mask, keys_proj=keys_proj)
        return context, weights, LayerCache(self, cache)

    def backward(self, cache, dcontext):
        """dcontext (B, K) -> (dquery, dkeys); parameter gradients are ADDED to self.grads."""
        inner = self._unwrap(cache)
        dcontext = _checks.as_float_array("dcontext", dcontext, self.dtype)
        g = self.grads
        dquery, dkeys, _ = self._F.additive_attention_backward(inner, dcontext, (g["W_q"], g["W_k"], g["b"], g["v"]))
        return dquery, dkeys
