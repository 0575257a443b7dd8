"""Memory contracts, measured as peak resident memory in a fresh subprocess (bench/memory.py).

- Inference (`layer(x)`) keeps no per-step activations of the whole sequence beyond y: its
  input projection runs in chunks of at most ~8 MiB, so the peak above the resident size
  just before the call stays within |y| + 24 MiB even when the gates of the whole sequence
  would be four times |y| (LSTM).
- Training (forward + backward) of LSTM T=100 B=64 I=H=512 peaks no higher than PyTorch's.
"""
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "bench"))
from memory import measure  # noqa: E402


def _can_reset_peak():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


needs_proc = pytest.mark.skipif(not sys.platform.startswith("linux") or not _can_reset_peak(),
                                reason="needs Linux /proc/self/clear_refs to reset the peak RSS")


@needs_proc
def test_inference_keeps_no_whole_sequence_activations():
    T, B, I, H = 2000, 16, 256, 256
    y_mib = T * B * H * 4 / 2**20            # 31.2 MiB
    peak = measure("fastrnn", "lstm", "inference", (T, B, I, H), 2)["first"]
    bound = y_mib + 24  # the ~8 MiB projection chunk plus allocator slack
    print(f"inference peak above base {peak:.1f} MiB; y {y_mib:.1f} MiB, bound {bound:.1f} MiB, "
          f"whole-sequence gates would be {4 * y_mib:.1f} MiB")
    assert peak <= bound


@needs_proc
def test_training_peak_memory_not_above_pytorch(torch):
    shape = (100, 64, 512, 512)
    ours = measure("fastrnn", "lstm", "training", shape, 2)["first"]
    theirs = measure("torch", "lstm", "training", shape, 2)["first"]
    print(f"LSTM {shape} forward+backward peak above base: fastrnn {ours:.1f} MiB, PyTorch {theirs:.1f} MiB")
    assert ours <= theirs
