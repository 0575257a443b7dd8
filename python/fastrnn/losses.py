"""Sequence losses that return their gradient (``fastrnn.losses``).

Both functions return ``(loss, grad)``: ``grad`` is the gradient of the returned loss with
respect to the first argument, a fresh array of its shape and dtype (float32/float64 kept;
other float types are computed in float64).

Which elements count ("valid" elements)
---------------------------------------
An element is valid when all of these hold:

- ``mask`` is None or True there. ``mask`` is a bool array (0/1 integers are accepted) whose
  shape is a leading part of the element shape (e.g. (T, B) for targets (T, B) or for
  predictions (T, B, F)) or broadcastable to it; missing trailing axes are appended.
- ``lengths`` is None or the element's time index is < ``lengths[b]``: with ``lengths`` the
  first two axes are time and batch, (T, B, ...), or (B, T, ...) with ``batch_first=True``;
  ``lengths`` is integers (B,) with 0 <= lengths[b] <= T (the same semantics as the layers).
- (cross_entropy only) the target is not ``ignore_index``.

Invalid elements contribute nothing to the loss and get exactly 0 gradient, whatever their
values (NaN/inf in padding is harmless); their targets are not checked.

Reductions
----------
- ``"mean"`` (default): the sum over valid elements divided by their number (for ``mse`` an
  "element" is a single scalar, so a valid step with F features counts F times, which equals
  ``torch.nn.functional.mse_loss(..., reduction="mean")`` over the valid entries). This is
  PyTorch's mean for cross_entropy with ``ignore_index``. When nothing is valid the loss is
  0.0 and the gradient 0 (PyTorch returns NaN there; we never do).
- ``"sum"``: the sum over valid elements.
- ``"none"``: the per-element losses (an array of the element shape, 0 where invalid); the
  gradient returned is then that of their sum (each element's loss depends only on its own
  row of logits / its own prediction).

Scalar losses are Python floats, accumulated in float64.
"""
from __future__ import annotations

import numbers

import numpy as np

from ._checks import FLOAT_DTYPES, as_float_array, check_lengths

__all__ = ["cross_entropy", "mse"]

_REDUCTIONS = ("mean", "sum", "none")


def _check_reduction(reduction) -> str:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction: expected one of {_REDUCTIONS}, got {reduction!r}")
    return reduction


def _compute_dtype(arr: np.ndarray) -> np.ndarray:
    return arr if arr.dtype in FLOAT_DTYPES else arr.astype(np.float64)


def _valid_mask(shape: tuple, mask, lengths, batch_first: bool, what: str) -> np.ndarray | None:
    """Bool array of `shape` (True = counts) from mask and lengths; None when all count."""
    valid = None
    if mask is not None:
        m = np.asarray(mask)
        if m.dtype != np.bool_:
            if m.dtype.kind not in "iuf" or not np.all((m == 0) | (m == 1)):
                raise TypeError(f"mask: expected a bool array (or 0/1 values), got dtype {m.dtype}")
            m = m != 0
        if m.ndim > len(shape):
            raise ValueError(f"mask: expected at most {len(shape)} dims ({what} shape {shape}), got shape {m.shape}")
        m = m.reshape(m.shape + (1,) * (len(shape) - m.ndim))
        try:
            valid = np.broadcast_to(m, shape)
        except ValueError:
            raise ValueError(
                f"mask: expected a shape broadcastable to {shape} (leading axes of {what}), got {np.shape(mask)}"
            ) from None
    if lengths is not None:
        if len(shape) < 2:
            raise ValueError(
                f"lengths: {what} must have at least 2 axes (time and batch) when lengths is given, got shape {shape}"
            )
        t_ax, b_ax = (1, 0) if batch_first else (0, 1)
        steps, batch = shape[t_ax], shape[b_ax]
        lens = check_lengths(lengths, batch, steps)
        tb = np.arange(steps)[:, None] < lens[None, :]  # (T, B)
        if batch_first:
            tb = tb.T
        tb = np.broadcast_to(tb.reshape(tb.shape + (1,) * (len(shape) - 2)), shape)
        valid = tb if valid is None else (valid & tb)
    return valid


def cross_entropy(logits, targets, mask=None, lengths=None, *, ignore_index: int = -100,
                  label_smoothing: float = 0.0, reduction: str = "mean", batch_first: bool = False):
    """Softmax cross-entropy over the last axis: ``(loss, dlogits)``.

    logits  (..., C) float, class scores (class axis LAST, unlike torch's (N, C, d1, ...)).
    targets (...)    integer class indices in [0, C), or ``ignore_index``.
    mask, lengths, batch_first: which elements count (module docstring).
    ignore_index: targets equal to it are invalid (torch's default -100).
    label_smoothing: eps in [0, 1]; the target distribution is (1 - eps) * one_hot + eps / C,
        so per element  loss = (1 - eps) * (-log p[target]) + eps * mean_c(-log p[c])
        exactly as torch.nn.functional.cross_entropy.
    reduction: "mean" (over valid elements), "sum" or "none".

    Computed with a fused, max-shifted log-softmax: finite logits of any magnitude give a
    finite loss and gradient. dlogits = scale * (softmax - q), 0 for invalid elements, with
    scale = 1 / n_valid for "mean" and 1 otherwise. A valid element whose target has
    probability 0 (a -inf logit) gives an infinite loss, as in PyTorch.
    """
    x = as_float_array("logits", logits)
    if x.ndim < 1:
        raise ValueError(f"logits: expected shape (..., C), got {x.shape}")
    x = _compute_dtype(x)
    n_classes = x.shape[-1]
    if n_classes < 1:
        raise ValueError(f"logits: expected at least 1 class on the last axis, got shape {x.shape}")
    t = np.asarray(targets)
    if t.dtype.kind not in "iu":
        raise TypeError(f"targets: expected integer class indices, got dtype {t.dtype}")
    if t.shape != x.shape[:-1]:
        raise ValueError(f"targets: expected shape {x.shape[:-1]} (logits shape without C), got {t.shape}")
    if isinstance(ignore_index, (bool, np.bool_)) or not isinstance(ignore_index, numbers.Integral):
        raise TypeError(f"ignore_index: expected an integer, got {type(ignore_index).__name__}")
    ignore_index = int(ignore_index)
    if isinstance(label_smoothing, (bool, np.bool_)) or not isinstance(label_smoothing, numbers.Real):
        raise TypeError(f"label_smoothing: expected a number in [0, 1], got {type(label_smoothing).__name__}")
    eps = float(label_smoothing)
    if not 0.0 <= eps <= 1.0:
        raise ValueError(f"label_smoothing: expected a number in [0, 1], got {eps}")
    reduction = _check_reduction(reduction)

    valid = _valid_mask(t.shape, mask, lengths, batch_first, "targets")
    not_ignored = t != ignore_index
    valid = not_ignored if valid is None else (valid & not_ignored)
    flat_valid = valid.reshape(-1)
    t_flat = t.reshape(-1)
    rows = np.flatnonzero(flat_valid)
    n_valid = rows.size
    tv = t_flat[rows].astype(np.intp)
    bad = (tv < 0) | (tv >= n_classes)
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        where = np.unravel_index(int(rows[k]), t.shape)
        raise ValueError(
            f"targets: expected class indices in [0, {n_classes}) or ignore_index={ignore_index}, "
            f"got {int(tv[k])} at {tuple(int(i) for i in where)}"
        )

    x2 = x.reshape(-1, n_classes)
    all_valid = n_valid == x2.shape[0]
    # work buffer: the valid rows, shifted by their max (becomes the gradient in place)
    ar = np.arange(n_valid)
    # degenerate rows (+inf, or all -inf) give NaN like PyTorch, without warnings
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        if all_valid:
            z = np.subtract(x2, x2.max(axis=1, keepdims=True)) if n_valid else np.empty_like(x2)
        else:
            z = x2[rows]
            if n_valid:
                z -= z.max(axis=1, keepdims=True)
        z_t = z[ar, tv].astype(np.float64)  # shifted target logit
        z_sum = z.sum(axis=1, dtype=np.float64) if eps else None
        np.exp(z, out=z)
        s = z.sum(axis=1, keepdims=True)  # >= 1 for finite rows
        lse = np.log(s[:, 0].astype(np.float64))
        per = lse - z_t  # -log p[target]
        if eps:
            # mean_c(-log p[c]) = lse - mean_c(z)
            per *= 1.0 - eps
            per += eps * (lse - z_sum / n_classes)
        # gradient: softmax - q
        z /= s
        if eps:
            z -= eps / n_classes
        z[ar, tv] -= 1.0 - eps

    if reduction == "mean":
        scale = 1.0 / n_valid if n_valid else 0.0
        loss = float(per.sum()) / n_valid if n_valid else 0.0
        if scale != 1.0:
            z *= scale
    elif reduction == "sum":
        loss = float(per.sum())
    else:
        loss = np.zeros(t.shape, dtype=x.dtype)
        loss.reshape(-1)[rows] = per
    if all_valid:
        dlogits = z.reshape(x.shape)
    else:
        dlogits = np.zeros(x2.shape, dtype=x.dtype)
        dlogits[rows] = z
        dlogits = dlogits.reshape(x.shape)
    return loss, dlogits


def mse(pred, target, mask=None, lengths=None, *, reduction: str = "mean", batch_first: bool = False):
    """Mean squared error ``(loss, dpred)`` over valid elements.

    pred, target: float arrays of one shape, e.g. (T, B, F); target is converted to pred's
    dtype. ``mask`` may cover only the leading axes (e.g. (T, B)); ``lengths`` masks steps
    t >= lengths[b] of a (T, B, ...) array ((B, T, ...) with ``batch_first``).
    "mean": sum over valid entries of (pred - target)**2 divided by the number of valid
    entries (each valid (t, b) step counts F times), i.e. torch's mse_loss mean over them.
    dpred = 2 * (pred - target) * scale on valid entries, 0 elsewhere.
    """
    p = _compute_dtype(as_float_array("pred", pred))
    tg = as_float_array("target", target, dtype=p.dtype)
    if tg.shape != p.shape:
        raise ValueError(f"target: expected shape {p.shape} (pred's shape), got {tg.shape}")
    reduction = _check_reduction(reduction)
    valid = _valid_mask(p.shape, mask, lengths, batch_first, "pred")

    diff = np.subtract(p, tg)
    if valid is not None:
        np.copyto(diff, 0, where=~valid)
        n_valid = int(np.count_nonzero(valid))
    else:
        n_valid = diff.size
    if reduction == "none":
        loss = np.square(diff)
    else:
        loss = float(np.sum(np.square(diff), dtype=np.float64))
    scale = 2.0
    if reduction == "mean":
        if n_valid:
            loss /= n_valid
            scale = 2.0 / n_valid
        else:
            loss, scale = 0.0, 0.0
    diff *= scale
    return loss, diff
