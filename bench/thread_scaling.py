"""Speedup of 2 threads over 1 (or N over 1) for fastrnn's recurrent layers, measured in one
process with the two thread counts alternating, medians of per-call times.

    python bench/thread_scaling.py                               # the large grid shapes
    python bench/thread_scaling.py --shapes 100x64x512x512 --threads 2 --budget 3
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import fastrnn as fr


def make_call(cell, mode, shape):
    T, B, I, H = shape
    rng = np.random.default_rng(0)
    layer = {"rnn": fr.RNN, "gru": fr.GRU, "lstm": fr.LSTM}[cell](I, H, seed=0)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    dy = rng.standard_normal((T, B, H)).astype(np.float32)
    if mode == "forward":
        return lambda: layer(x)

    def fb():
        _, _, cache = layer.forward(x)
        layer.backward(cache, dy)
    return fb


def sample(fn, threads, reps):
    fr.set_num_threads(threads)
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", default="100x64x512x512,50x128x1024x1024", help="TxBxIxH, comma-separated")
    p.add_argument("--cells", default="rnn,gru,lstm")
    p.add_argument("--threads", type=int, default=2, help="compared against 1")
    p.add_argument("--budget", type=float, default=2.0, help="seconds per row")
    args = p.parse_args(argv)
    n = args.threads
    print(f"fastrnn {fr.__version__}, {fr.build_info()['simd']}, float32; 1 vs {n} threads alternating, medians")
    print(f"{'cell':<6}{'mode':<18}{'shape':<18}{'1 thread':>12}{f'{n} threads':>12}{'speedup':>9}")
    for s in args.shapes.split(","):
        shape = [int(v) for v in s.split("x")]
        for cell in args.cells.split(","):
            for mode in ("forward", "forward+backward"):
                fn = make_call(cell, mode, shape)
                one = sample(fn, 1, 1)  # warm-up, and the size of a sample
                reps = max(1, int(0.05 / one))
                t1, tn = [], []
                deadline = time.perf_counter() + args.budget
                while len(t1) < 5 or time.perf_counter() < deadline:
                    t1.append(sample(fn, 1, reps))
                    tn.append(sample(fn, n, reps))
                m1, mn = statistics.median(t1), statistics.median(tn)
                print(f"{cell:<6}{mode:<18}{s:<18}{m1 * 1e3:>10.2f}ms{mn * 1e3:>10.2f}ms{m1 / mn:>8.2f}x")


if __name__ == "__main__":
    main()
