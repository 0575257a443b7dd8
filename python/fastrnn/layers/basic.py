"""Embedding, Linear and Dropout: the same forward/backward pattern as the recurrent layers.

Each class owns ``params`` and ``grads`` (PyTorch names: ``weight``, ``bias``), and has
``__call__`` (inference, keeps nothing), ``forward(...) -> (out, cache)``,
``backward(cache, dout) -> dinput`` (ADDS into ``grads``; Embedding returns None),
``zero_grad()``, ``state_dict()`` (copies) and ``load_state_dict(mapping)`` (strict names,
shapes checked, values copied INTO the existing arrays so an optimizer holding them stays
valid). The numerics are the array-level functions below (``linear_forward`` ...), which
the classes wrap; they are plain NumPy (no kernel) and serve both backends.

Caches hold private copies of what backward needs (the input of Linear, the indices of
Embedding, the mask of Dropout), so the caller may reuse its input buffers; Linear's cache
refers to the weight array itself, so run backward before the optimizer step as usual.
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from ._params import Parametrized
from .._checks import as_float_array, check_positive_int, resolve_dtype
from .. import init as _init

__all__ = [
    "Embedding", "Linear", "Dropout",
    "linear", "linear_forward", "linear_backward",
    "embedding", "embedding_forward", "embedding_backward",
    "dropout_forward", "dropout_backward",
]


class _Cache:
    """Opaque record of a forward pass (``kind`` names the function that made it)."""

    __slots__ = ("kind", "owner", "data")

    def __init__(self, kind: str, data: dict, owner=None):
        self.kind, self.data, self.owner = kind, data, owner

    def __getattr__(self, name):  # read access to the recorded arrays, e.g. cache.mask
        try:
            return object.__getattribute__(self, "data")[name]
        except KeyError:
            raise AttributeError(name) from None


def _check_cache(cache, kind: str, owner=None) -> dict:
    if not isinstance(cache, _Cache) or cache.kind != kind:
        got = cache.kind if isinstance(cache, _Cache) else type(cache).__name__
        raise ValueError(f"cache: expected a cache from {kind}_forward, got {got}")
    if owner is not None and cache.owner is not owner:
        raise ValueError(f"cache: expected a cache from this {type(owner).__name__}'s forward, "
                         "got one from another layer")
    return cache.data


def _private(arr: np.ndarray, source) -> np.ndarray:
    """`arr`, copied when it may share memory with the caller's `source`."""
    if isinstance(source, np.ndarray) and np.may_share_memory(arr, source):
        return arr.copy()
    return arr


def _seed_rng(seed) -> np.random.Generator:
    if seed is not None and (isinstance(seed, (bool, np.bool_)) or not isinstance(seed, numbers.Integral)):
        raise TypeError(f"seed: expected None or an integer, got {type(seed).__name__}")
    if seed is not None and seed < 0:
        raise ValueError(f"seed: expected a non-negative integer, got {seed}")
    return np.random.default_rng(seed)


# ============================================================================ shared
class _Module(Parametrized):
    """The shared Parametrized base (params, grads, zero_grad, state_dict, load_state_dict)."""


# ============================================================================ Linear
def _linear_args(x, weight, bias):
    w = as_float_array("weight", weight, ndim=2)
    x = as_float_array("x", x, dtype=w.dtype)
    if x.ndim < 1 or x.shape[-1] != w.shape[1]:
        raise ValueError(f"x: expected shape (..., {w.shape[1]}), got {x.shape}")
    if bias is not None:
        bias = as_float_array("bias", bias, dtype=w.dtype)
        if bias.shape != (w.shape[0],):
            raise ValueError(f"bias: expected shape ({w.shape[0]},), got {bias.shape}")
    return x, w, bias


def _linear_2d(x2, w, b):
    y2 = x2 @ w.T
    if b is not None:
        y2 += b
    return y2


def linear(x, weight, bias=None) -> np.ndarray:
    """y = x @ weight.T + bias over the last axis of x (..., in) -> (..., out)."""
    x, w, b = _linear_args(x, weight, bias)
    y2 = _linear_2d(x.reshape(-1, w.shape[1]), w, b)
    return y2.reshape(x.shape[:-1] + (w.shape[0],))


def linear_forward(x, weight, bias=None):
    """(y, cache) of ``linear``; the cache keeps a private copy of x and refers to weight."""
    x_in = x
    x, w, b = _linear_args(x, weight, bias)
    x2 = _private(x.reshape(-1, w.shape[1]), x_in)
    y2 = _linear_2d(x2, w, b)
    cache = _Cache("linear", {"x2": x2, "x_shape": x.shape, "weight": w, "has_bias": b is not None})
    return y2.reshape(x.shape[:-1] + (w.shape[0],)), cache


def linear_backward(cache, dy, grads=None):
    """(dx, (dweight, dbias)); ``grads = (dweight, dbias)`` arrays are ADDED INTO in place
    and returned (dbias None without bias); otherwise new arrays."""
    c = _check_cache(cache, "linear")
    return _linear_backward(c, dy, grads)


def _linear_backward(c, dy, grads):
    w, x2 = c["weight"], c["x2"]
    out_shape = c["x_shape"][:-1] + (w.shape[0],)
    dy = as_float_array("dout", dy, dtype=w.dtype)
    if dy.shape != out_shape:
        raise ValueError(f"dout: expected shape {out_shape}, got {dy.shape}")
    dy2 = dy.reshape(-1, w.shape[0])
    dw = dy2.T @ x2
    db = dy2.sum(axis=0) if c["has_bias"] else None
    if grads is not None:
        gw, gb = grads
        gw += dw
        if db is not None:
            gb += db
        dw, db = gw, gb
    dx = (dy2 @ w).reshape(c["x_shape"])
    return dx, (dw, db)


class Linear(_Module):
    """y = x @ weight.T + bias applied to the last axis: (T, B, in) -> (T, B, out), any leading dims.

    ``Linear(in_features, out_features, bias=True, dtype="float32", seed=None)``; params
    ``weight`` (out, in) and ``bias`` (out,) (absent when bias=False), initialised like
    PyTorch: U(-1/sqrt(in), 1/sqrt(in)) for both, reproducible with ``seed``.
    """

    def __init__(self, in_features, out_features, bias=True, dtype="float32", seed=None):
        self.in_features = check_positive_int("in_features", in_features)
        self.out_features = check_positive_int("out_features", out_features)
        if not isinstance(bias, (bool, np.bool_)):
            raise TypeError(f"bias: expected a bool, got {type(bias).__name__}")
        self.dtype = resolve_dtype(dtype)
        rng = _seed_rng(seed)
        w = np.empty((self.out_features, self.in_features), dtype=self.dtype)
        _init.kaiming_uniform_(w, a=math.sqrt(5), rng=rng)  # = U(-1/sqrt(in), 1/sqrt(in))
        self.params = {"weight": w}
        if bias:
            bound = 1.0 / math.sqrt(self.in_features)
            self.params["bias"] = _init.uniform_(np.empty(self.out_features, dtype=self.dtype),
                                                 -bound, bound, rng=rng)
        self.grads = {k: np.zeros_like(v) for k, v in self.params.items()}

    @property
    def bias(self) -> bool:
        return "bias" in self.params

    def __repr__(self):
        return (f"Linear(in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias}, dtype={self.dtype.name})")

    def __call__(self, x):
        """Inference: y (..., out)."""
        return linear(self._x(x), self.params["weight"], self.params.get("bias"))

    def forward(self, x):
        """Training forward: (y, cache)."""
        y, cache = linear_forward(self._x(x), self.params["weight"], self.params.get("bias"))
        cache.owner = self
        return y, cache

    def backward(self, cache, dout):
        """dx (x's shape); adds dweight, dbias into ``self.grads``."""
        c = _check_cache(cache, "linear", self)
        g = self.grads
        dx, _ = _linear_backward(c, dout, (g["weight"], g.get("bias")))
        return dx

    def _x(self, x):
        x = as_float_array("x", x, dtype=self.dtype)
        if x.ndim < 1 or x.shape[-1] != self.in_features:
            raise ValueError(f"x: expected shape (..., {self.in_features}), got {x.shape}")
        return x


# ============================================================================ Embedding
def _indices(indices, num_embeddings: int) -> np.ndarray:
    idx = np.asarray(indices)
    if idx.dtype.kind not in "iu":
        raise TypeError(f"indices: expected an integer array, got dtype {idx.dtype}")
    if idx.size:
        lo, hi = idx.min(), idx.max()
        if lo < 0 or hi >= num_embeddings:
            bad = np.argwhere((idx < 0) | (idx >= num_embeddings))[0]
            raise ValueError(
                f"indices: expected values in [0, {num_embeddings}), got {idx[tuple(bad)]} at {tuple(int(i) for i in bad)}"
            )
    return idx


def embedding(indices, weight) -> np.ndarray:
    """weight[indices]: indices (...) ints in [0, num) -> (..., D)."""
    w = as_float_array("weight", weight, ndim=2)
    idx = _indices(indices, w.shape[0])
    return np.take(w, idx, axis=0)


def embedding_forward(indices, weight, padding_idx=None, scale_grad_by_freq=False):
    """(out, cache) of ``embedding``; the cache keeps a private copy of the indices."""
    w = as_float_array("weight", weight, ndim=2)
    idx = _indices(indices, w.shape[0])
    out = np.take(w, idx, axis=0)
    data = {"indices": np.array(idx, dtype=np.intp, copy=True), "num": w.shape[0], "dim": w.shape[1],
            "dtype": w.dtype, "padding_idx": padding_idx, "scale_grad_by_freq": bool(scale_grad_by_freq)}
    return out, _Cache("embedding", data)


def embedding_backward(cache, dout, grad_weight=None) -> np.ndarray:
    """Gradient of the weight by index accumulation (repeated indices add up; the row
    ``padding_idx`` gets nothing; with ``scale_grad_by_freq`` each contribution is divided by
    its index's count in the batch, as PyTorch). Added into ``grad_weight`` when given."""
    c = _check_cache(cache, "embedding")
    return _embedding_backward(c, dout, grad_weight)


def _embedding_backward(c, dout, grad_weight):
    idx, num, dim = c["indices"], c["num"], c["dim"]
    dout = as_float_array("dout", dout, dtype=c["dtype"])
    if dout.shape != idx.shape + (dim,):
        raise ValueError(f"dout: expected shape {idx.shape + (dim,)}, got {dout.shape}")
    if grad_weight is None:
        grad_weight = np.zeros((num, dim), dtype=c["dtype"])
    flat = idx.reshape(-1)
    d2 = dout.reshape(-1, dim)
    if c["scale_grad_by_freq"]:
        counts = np.bincount(flat, minlength=num)
        d2 = d2 / counts[flat][:, None].astype(d2.dtype)
    if c["padding_idx"] is not None:
        keep = flat != c["padding_idx"]
        if not keep.all():
            flat, d2 = flat[keep], d2[keep]
    np.add.at(grad_weight, flat, d2)
    return grad_weight


class Embedding(_Module):
    """Lookup table: integer indices (...) -> vectors (..., embedding_dim).

    ``Embedding(num_embeddings, embedding_dim, padding_idx=None, *, scale_grad_by_freq=False,
    dtype="float32", seed=None)``; param ``weight`` (num_embeddings, embedding_dim) ~ N(0, 1)
    as PyTorch, with row ``padding_idx`` (negative counts from the end) zeroed and never
    receiving gradient. Indices must be integers in [0, num_embeddings) (TypeError/ValueError).
    """

    def __init__(self, num_embeddings, embedding_dim, padding_idx=None, *, scale_grad_by_freq=False,
                 dtype="float32", seed=None):
        self.num_embeddings = check_positive_int("num_embeddings", num_embeddings)
        self.embedding_dim = check_positive_int("embedding_dim", embedding_dim)
        if padding_idx is not None:
            if isinstance(padding_idx, (bool, np.bool_)) or not isinstance(padding_idx, numbers.Integral):
                raise TypeError(f"padding_idx: expected None or an integer, got {type(padding_idx).__name__}")
            padding_idx = int(padding_idx)
            if not -self.num_embeddings <= padding_idx < self.num_embeddings:
                raise ValueError(f"padding_idx: expected a value in [-{self.num_embeddings}, "
                                 f"{self.num_embeddings}), got {padding_idx}")
            if padding_idx < 0:
                padding_idx += self.num_embeddings
        self.padding_idx = padding_idx
        if not isinstance(scale_grad_by_freq, (bool, np.bool_)):
            raise TypeError(f"scale_grad_by_freq: expected a bool, got {type(scale_grad_by_freq).__name__}")
        self.scale_grad_by_freq = bool(scale_grad_by_freq)
        self.dtype = resolve_dtype(dtype)
        w = _init.normal_(np.empty((self.num_embeddings, self.embedding_dim), dtype=self.dtype),
                          rng=_seed_rng(seed))
        if padding_idx is not None:
            w[padding_idx] = 0
        self.params = {"weight": w}
        self.grads = {"weight": np.zeros_like(w)}

    def __repr__(self):
        pad = f", padding_idx={self.padding_idx}" if self.padding_idx is not None else ""
        return f"Embedding({self.num_embeddings}, {self.embedding_dim}{pad}, dtype={self.dtype.name})"

    def __call__(self, indices):
        """Inference: (..., embedding_dim)."""
        return embedding(indices, self.params["weight"])

    def forward(self, indices):
        """Training forward: (out, cache)."""
        out, cache = embedding_forward(indices, self.params["weight"], self.padding_idx,
                                       self.scale_grad_by_freq)
        cache.owner = self
        return out, cache

    def backward(self, cache, dout):
        """Adds the weight gradient into ``self.grads['weight']``; returns None (no input gradient)."""
        c = _check_cache(cache, "embedding", self)
        _embedding_backward(c, dout, self.grads["weight"])
        return None


# ============================================================================ Dropout
def _check_p(p) -> float:
    if isinstance(p, (bool, np.bool_)) or not isinstance(p, numbers.Real):
        raise TypeError(f"p: expected a number in [0, 1], got {type(p).__name__}")
    p = float(p)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p: expected a number in [0, 1], got {p}")
    return p


def dropout_forward(x, p, rng):
    """(out, cache): out = x * mask / (1 - p) with mask ~ Bernoulli(1 - p) drawn from ``rng``
    (a np.random.Generator); p = 1 gives zeros (as PyTorch), p = 0 a copy. The cache keeps
    the bool ``mask`` (True = kept) and ``scale`` = 1 / (1 - p) (0 when p = 1)."""
    p = _check_p(p)
    x = as_float_array("x", x)
    scale = 0.0 if p == 1.0 else 1.0 / (1.0 - p)
    if p == 0.0:
        mask = np.ones(x.shape, dtype=bool)
        out = np.array(x, copy=True)
    else:
        mask = rng.random(x.shape, dtype=np.float32) >= p if p < 1.0 else np.zeros(x.shape, dtype=bool)
        out = np.zeros_like(x)
        np.multiply(x, scale, out=out, where=mask)
    return out, _Cache("dropout", {"mask": mask, "scale": scale, "dtype": x.dtype})


def dropout_backward(cache, dout) -> np.ndarray:
    """dx = dout * mask * scale."""
    return _dropout_backward(_check_cache(cache, "dropout"), dout)


def _dropout_backward(c, dout):
    mask = c["mask"]
    dout = as_float_array("dout", dout, dtype=c["dtype"])
    if dout.shape != mask.shape:
        raise ValueError(f"dout: expected shape {mask.shape}, got {dout.shape}")
    dx = np.zeros_like(dout)
    np.multiply(dout, c["scale"], out=dx, where=mask)
    return dx


class Dropout(_Module):
    """``Dropout(p=0.5, seed=None)``: zeroes elements with probability p in ``forward`` and
    scales the others by 1/(1-p); ``__call__`` (inference) is the identity (returns a copy).
    The masks come from the layer's own generator, reproducible with ``seed``. Keeps the
    input's float dtype. No parameters (``params`` and ``grads`` are empty dicts)."""

    def __init__(self, p=0.5, seed=None):
        self.p = _check_p(p)
        self._rng = _seed_rng(seed)
        self.params: dict = {}
        self.grads: dict = {}

    def __repr__(self):
        return f"Dropout(p={self.p})"

    def __call__(self, x):
        return np.array(as_float_array("x", x), copy=True)

    def forward(self, x):
        """Training forward: (out, cache); the cache holds the mask."""
        out, cache = dropout_forward(x, self.p, self._rng)
        cache.owner = self
        return out, cache

    def backward(self, cache, dout):
        """dx = dout * mask / (1 - p)."""
        return _dropout_backward(_check_cache(cache, "dropout", self), dout)
