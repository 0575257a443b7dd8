"""The one thread count shared by every kernel and the bundled BLAS."""
from __future__ import annotations

import numbers

from . import _core
from ._version import __version__


def set_num_threads(n: int) -> None:
    """Use `n` threads in every fastrnn kernel and in the bundled OpenBLAS."""
    if isinstance(n, bool) or not isinstance(n, numbers.Integral):
        raise TypeError(f"n: expected an integer thread count, got {type(n).__name__}")
    if n < 1:
        raise ValueError(f"n: expected a thread count >= 1, got {n}")
    _core.set_num_threads(int(n))


def get_num_threads() -> int:
    """The thread count (default: OMP_NUM_THREADS if set, else the CPUs this process may use)."""
    return _core.get_num_threads()


def build_info() -> dict:
    """version, openmp, blas, blas_version, simd (ISA level picked at run time), step_group_update
    (the forward step's cell update per group of units, see docs/ARCHITECTURE.md), num_threads,
    compiler."""
    info = dict(_core.build_info())
    info["version"] = __version__
    return info
