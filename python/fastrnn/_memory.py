"""The cache of large kernel buffers (training caches, backward's gate gradients, scratch).

Buffers of 64 KiB and more are not returned to the operating system when a call ends: the next
call of the same shape reuses them instead of faulting fresh memory in. The cache never makes
the process hold more than the most such memory it has had in use at once (see
cpp/src/buffer.cpp). Turn it off with FASTRNN_BUFFER_CACHE=0 in the environment or
``set_buffer_cache(False)``; ``empty_cache()`` hands the cached memory back.
"""
from __future__ import annotations

from . import _core


def empty_cache() -> int:
    """Free every cached buffer that is not in use; returns the number of bytes freed."""
    return int(_core.buffer_cache_release())


def memory_stats() -> dict:
    """Counters of the cache of large kernel buffers.

    cached_bytes (held for reuse), in_use_bytes, peak_bytes (most in use at once; the cache
    never holds more than this minus what is in use), reused and allocated (requests served
    from the cache / with fresh memory, since the process started), enabled.
    """
    return dict(_core.buffer_cache_stats())


def set_buffer_cache(enabled: bool) -> None:
    """Turn the buffer cache on or off (off also empties it)."""
    if not isinstance(enabled, bool):
        raise TypeError(f"enabled: expected a bool, got {type(enabled).__name__}")
    _core.buffer_cache_enable(enabled)
