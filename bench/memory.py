"""Peak resident memory of one training step and of inference, fastrnn against PyTorch.

Each measurement runs in a fresh subprocess: build the layer and inputs, make one 2-step call
(BLAS work buffers, lazy imports), reset the kernel's high-water mark (/proc/self/clear_refs), run the step and report VmHWM minus the resident size
just before; then drop the results and do it again. The first full-size call counts
everything it allocates; the second shows steady state, where memory the allocator
kept from the first call is reused and so not counted again. Same thread count for both.

    python bench/memory.py                    # LSTM T=100 B=64 I=H=512, 2 threads
    python bench/memory.py --shape 50x128x1024x1024 --cell gru --threads 1
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys

CHILD = r'''
import gc, json, sys
import numpy as np

def rss_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(field)

def reset_peak():
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")

backend, cell, mode, T, B, I, H, threads = sys.argv[1:9]
T, B, I, H, threads = int(T), int(B), int(I), int(H), int(threads)
rng = np.random.default_rng(0)
X = rng.standard_normal((T, B, I)).astype(np.float32)
DY = rng.standard_normal((T, B, H)).astype(np.float32)
x, dy = X[:2], DY[:2]  # a 2-step warm-up call first: BLAS work buffers, lazy imports
if backend == "fastrnn":
    import fastrnn as fr
    fr.set_num_threads(threads)
    layer = {"rnn": fr.RNN, "gru": fr.GRU, "lstm": fr.LSTM}[cell](I, H, seed=0)
    def step():
        if mode == "inference":
            return layer(x)
        y, state, cache = layer.forward(x)
        return layer.backward(cache, dy)
else:
    import torch
    torch.set_num_threads(threads)
    layer = {"rnn": torch.nn.RNN, "gru": torch.nn.GRU, "lstm": torch.nn.LSTM}[cell](I, H)
    def step():
        xt, dyt = torch.from_numpy(x), torch.from_numpy(dy)
        if mode == "inference":
            with torch.no_grad():
                return layer(xt)
        xg = xt.clone().requires_grad_(True)
        y, _ = layer(xg)
        y.backward(dyt)
        return xg.grad
step()
x, dy = X, DY
res = {}
for run in ("first", "second"):
    gc.collect()
    base = rss_kib("VmRSS")
    reset_peak()
    out = step()
    res[run] = (rss_kib("VmHWM") - base) / 1024
    del out
print(json.dumps(res))
'''


def measure(backend, cell, mode, shape, threads):
    """{"first": MiB, "second": MiB}: peak resident memory above the size before each call."""
    T, B, I, H = shape
    r = subprocess.run([sys.executable, "-c", CHILD, backend, cell, mode, str(T), str(B), str(I), str(H), str(threads)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{backend} {mode} failed:\n{r.stderr}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", default="100x64x512x512", help="TxBxIxH")
    p.add_argument("--cell", default="lstm", choices=["rnn", "gru", "lstm"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=3, help="subprocesses per row; the median is shown")
    args = p.parse_args(argv)
    shape = [int(v) for v in args.shape.split("x")]
    T, B, I, H = shape
    backends = ["fastrnn", "torch"]
    if importlib.util.find_spec("torch") is None:
        print("PyTorch not installed: fastrnn only")
        backends = ["fastrnn"]
    y_mib = T * B * H * 4 / 2**20
    print(f"{args.cell.upper()} T={T} B={B} I={I} H={H} float32, {args.threads} threads; y is {y_mib:.1f} MiB")
    print("peak resident memory above the size just before the call, MiB (median of runs):")
    print(f"{'mode':<12}{'backend':<10}{'first call':>12}{'second call':>13}")
    for mode in ("training", "inference"):
        for backend in backends:
            runs = [measure(backend, args.cell, mode, shape, args.threads) for _ in range(args.repeat)]
            med = {k: sorted(r[k] for r in runs)[len(runs) // 2] for k in ("first", "second")}
            print(f"{mode:<12}{backend:<10}{med['first']:>12.1f}{med['second']:>13.1f}")


if __name__ == "__main__":
    main()
