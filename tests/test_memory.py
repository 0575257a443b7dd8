"""Memory contracts, measured as peak resident memory in a fresh subprocess.

- Inference (`layer(x)`) keeps no per-step activations of the whole sequence beyond y: its
  input projection runs in chunks of at most ~8 MiB, so the peak above the resident size
  just before the call stays within |y| + 24 MiB even when the gates of the whole sequence
  would be four times |y| (LSTM).
- Training (forward + backward) of LSTM T=100 B=64 I=H=512 peaks no higher than PyTorch's.
"""
import json
import subprocess
import sys

import pytest

CHILD = r'''
import gc, json, sys
import numpy as np

def status(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(field)

backend, mode, T, B, I, H = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:7])
rng = np.random.default_rng(0)
X = rng.standard_normal((T, B, I)).astype(np.float32)
DY = rng.standard_normal((T, B, H)).astype(np.float32)
x, dy = X[:2], DY[:2]  # a 2-step warm-up call first: BLAS work buffers, lazy imports
if backend == "fastrnn":
    import fastrnn as fr
    fr.set_num_threads(2)
    layer = fr.LSTM(I, H, seed=0)
    def run():
        if mode == "inference":
            return layer(x)
        _, _, cache = layer.forward(x)
        return layer.backward(cache, dy)
else:
    import torch
    torch.set_num_threads(2)
    layer = torch.nn.LSTM(I, H)
    def run():
        xt, dyt = torch.from_numpy(x), torch.from_numpy(dy)
        xg = xt.clone().requires_grad_(True)
        y, _ = layer(xg)
        y.backward(dyt)
        return xg.grad
run()
x, dy = X, DY
gc.collect()
base = status("VmRSS")
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the high-water mark to the current resident size
out = run()
print(json.dumps({"peak": status("VmHWM") - base}))
'''


def peak_above_base(backend, mode, T, B, I, H):
    r = subprocess.run([sys.executable, "-c", CHILD, backend, mode, str(T), str(B), str(I), str(H)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])["peak"]


def _can_reset_peak():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


needs_proc = pytest.mark.skipif(not sys.platform.startswith("linux") or not _can_reset_peak(),
                                reason="needs Linux /proc/self/clear_refs to reset the peak RSS")

MiB = 2**20


@needs_proc
def test_inference_keeps_no_whole_sequence_activations():
    T, B, I, H = 2000, 16, 256, 256
    y_bytes = T * B * H * 4                  # 31.2 MiB
    gates_bytes = 4 * y_bytes                # what a whole-sequence projection would hold
    peak = peak_above_base("fastrnn", "inference", T, B, I, H)
    bound = y_bytes + 24 * MiB  # the ~8 MiB projection chunk plus allocator slack
    print(f"inference peak above base {peak / MiB:.1f} MiB; y {y_bytes / MiB:.1f} MiB, "
          f"bound {bound / MiB:.1f} MiB, whole-sequence gates would be {gates_bytes / MiB:.1f} MiB")
    assert peak <= bound


@needs_proc
def test_training_peak_memory_not_above_pytorch(torch):
    shape = (100, 64, 512, 512)
    ours = peak_above_base("fastrnn", "training", *shape)
    theirs = peak_above_base("torch", "training", *shape)
    print(f"LSTM {shape} forward+backward peak above base: fastrnn {ours / MiB:.1f} MiB, "
          f"PyTorch {theirs / MiB:.1f} MiB")
    assert ours <= theirs
