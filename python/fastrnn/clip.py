"""Gradient clipping, in place, like torch.nn.utils.clip_grad_norm_ / clip_grad_value_.

``grads`` is a mapping name -> ndarray (e.g. ``layer.grads``; ``None`` values are skipped,
like parameters without ``.grad``), a single ndarray, or an iterable of ndarrays. The arrays
are modified in place, so they must be writable float arrays (TypeError / ValueError
otherwise, checked before anything is modified).
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Mapping

import numpy as np

__all__ = ["clip_grad_norm", "clip_grad_value", "get_total_norm"]

_CHUNK = 1 << 20  # elements converted to float64 at a time when summing


def _grad_list(grads, name: str = "grads") -> list[np.ndarray]:
    if isinstance(grads, np.ndarray):
        items = [("", grads)]
    elif isinstance(grads, Mapping):
        items = [(f"[{k!r}]", v) for k, v in grads.items()]
    else:
        try:
            items = [(f"[{i}]", v) for i, v in enumerate(grads)]
        except TypeError:
            raise TypeError(
                f"{name}: expected a mapping of arrays, an ndarray or an iterable of ndarrays, "
                f"got {type(grads).__name__}"
            ) from None
    out = []
    for key, g in items:
        if g is None:
            continue
        if not isinstance(g, np.ndarray):
            raise TypeError(f"{name}{key}: expected a float ndarray, got {type(g).__name__}")
        if g.dtype.kind != "f":
            raise TypeError(f"{name}{key}: expected a floating-point array, got dtype {g.dtype}")
        if not g.flags.writeable:
            raise ValueError(f"{name}{key}: array is read-only; gradients are clipped in place")
        out.append(g)
    return out


def _norm_type(norm_type) -> float:
    if isinstance(norm_type, str):
        if norm_type.lower() != "inf":
            raise ValueError(f"norm_type: expected a positive number or 'inf', got {norm_type!r}")
        return math.inf
    if isinstance(norm_type, (bool, np.bool_)) or not isinstance(norm_type, numbers.Real):
        raise TypeError(f"norm_type: expected a positive number or 'inf', got {type(norm_type).__name__}")
    p = float(norm_type)
    if not p > 0:
        raise ValueError(f"norm_type: expected a positive number or 'inf', got {norm_type!r}")
    return p


def _array_norm(g: np.ndarray, p: float) -> float:
    """p-norm of one array, accumulated in float64 (chunked: no full-size float64 copy)."""
    flat = g.reshape(-1)
    if flat.size == 0:
        return 0.0
    if p == math.inf:
        return float(np.max(np.abs(flat)))
    total = 0.0
    for start in range(0, flat.size, _CHUNK):
        c = flat[start:start + _CHUNK].astype(np.float64)
        if p == 2.0:
            total += float(np.dot(c, c))
        elif p == 1.0:
            total += float(np.sum(np.abs(c)))
        else:
            total += float(np.sum(np.abs(c) ** p))
    return total ** (1.0 / p) if p != 1.0 else total


def get_total_norm(grads, norm_type=2.0, error_if_nonfinite: bool = False) -> float:
    """Norm of all arrays of ``grads`` taken together, as torch.nn.utils.get_total_norm.

    Computed in float64 and returned as a Python float (0.0 when there are no arrays).
    ``error_if_nonfinite=True`` raises RuntimeError (as PyTorch) on a NaN/inf norm.
    """
    arrays = _grad_list(grads)
    p = _norm_type(norm_type)
    norms = [_array_norm(g, p) for g in arrays]
    if not norms:
        return 0.0
    if p == math.inf:
        total = max(norms) if not any(math.isnan(n) for n in norms) else math.nan
    else:
        total = _array_norm(np.asarray(norms, dtype=np.float64), p)
    if error_if_nonfinite and not math.isfinite(total):
        raise RuntimeError(
            f"The total norm of order {p} for gradients is non-finite, so it cannot be clipped. "
            "To scale the gradients by the non-finite norm anyway, set error_if_nonfinite=False"
        )
    return total


def clip_grad_norm(grads, max_norm, norm_type=2.0, error_if_nonfinite: bool = False) -> float:
    """Scale all gradients in place so that their joint norm is at most ``max_norm``.

    Exactly torch.nn.utils.clip_grad_norm_'s rule: with ``total = get_total_norm(grads)``,
    every array is multiplied by ``min(max_norm / (total + 1e-6), 1)`` (in its own dtype; a
    factor of 1 leaves the arrays untouched). Returns ``total`` (the norm before clipping) as
    a Python float. As in PyTorch a non-finite total norm scales the gradients by 0 (NaN
    stays NaN) unless ``error_if_nonfinite=True`` (RuntimeError, nothing modified).
    """
    if isinstance(max_norm, (bool, np.bool_)) or not isinstance(max_norm, numbers.Real):
        raise TypeError(f"max_norm: expected a number, got {type(max_norm).__name__}")
    max_norm = float(max_norm)
    if math.isnan(max_norm) or max_norm < 0:
        raise ValueError(f"max_norm: expected a non-negative number, got {max_norm}")
    arrays = _grad_list(grads)
    total = get_total_norm(arrays, norm_type, error_if_nonfinite)
    if not arrays:
        return total
    coef = min(max_norm / (total + 1e-6), 1.0) if not math.isnan(total) else math.nan
    if coef != 1.0:
        with np.errstate(invalid="ignore"):
            for g in arrays:
                g *= coef
    return total


def clip_grad_value(grads, clip_value) -> None:
    """Clamp every gradient element to [-clip_value, clip_value] in place (NaN stays NaN).

    As torch.nn.utils.clip_grad_value_; ``clip_value`` must be >= 0 (ValueError).
    """
    if isinstance(clip_value, (bool, np.bool_)) or not isinstance(clip_value, numbers.Real):
        raise TypeError(f"clip_value: expected a number, got {type(clip_value).__name__}")
    clip_value = float(clip_value)
    if not clip_value >= 0:
        raise ValueError(f"clip_value: expected a non-negative number, got {clip_value}")
    for g in _grad_list(grads):
        np.clip(g, -clip_value, clip_value, out=g)
