"""Comparison helpers: every check asserts, and a failure reports the worst element."""
from __future__ import annotations

import numpy as np


def worst_difference(actual, expected):
    """(max abs difference, index of it, max |expected|) for two arrays of one shape."""
    a = np.asarray(actual, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    assert a.shape == e.shape, f"shape {a.shape} != expected {e.shape}"
    if a.size == 0:
        return 0.0, (), 0.0
    diff = np.abs(a - e)
    # NaN anywhere is the worst possible difference
    diff = np.where(np.isnan(a) != np.isnan(e), np.inf, np.nan_to_num(diff, nan=0.0))
    idx = np.unravel_index(int(np.argmax(diff)), diff.shape)
    return float(diff[idx]), tuple(int(i) for i in idx), float(np.max(np.abs(np.nan_to_num(e))))


def assert_close(actual, expected, rtol, name="value", atol=None):
    """Assert max|a - e| <= rtol * max(max|e|, 1e-3) (+ atol); report the worst element.

    The error is scaled by the size of the expected array as a whole, so tiny entries
    (gradients that are nearly zero) do not make an elementwise relative test meaningless.
    """
    err, idx, scale = worst_difference(actual, expected)
    bound = rtol * max(scale, 1e-3) + (atol or 0.0)
    a = np.asarray(actual)
    e = np.asarray(expected)
    detail = ""
    if a.size:
        detail = f" at {idx}: actual {a[idx]!r}, expected {e[idx]!r}"
    assert err <= bound, (
        f"{name}: max abs difference {err:.3e} > bound {bound:.3e} "
        f"(rtol {rtol:g}, max|expected| {scale:.3e}){detail}"
    )
    return err


def relative_error(actual, expected):
    """max|a - e| / max(max|e|, 1e-12), for reporting."""
    err, _, scale = worst_difference(actual, expected)
    return err / max(scale, 1e-12)
