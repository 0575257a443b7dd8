#!/usr/bin/env python
"""Independent timing check: fastrnn against PyTorch at the same thread count.

Written only from the public API contract and the problem grid
(bench/bench_grid.json, or --grid FILE); it does not use
fastrnn's own benchmark code, so it can serve as an outside check of the speed
claims.

Run:

    python bench/independent_timing.py [--threads 2] [--json out.json]
    python bench/independent_timing.py --quick            # smoke run, a few seconds
    python bench/independent_timing.py --only recurrent   # or --only cell
    python bench/independent_timing.py --budget 3         # seconds per row

What is timed
-------------
* Recurrent layers (fr.RNN(tanh) / fr.GRU / fr.LSTM vs torch.nn.RNN / GRU / LSTM),
  one layer, unidirectional, float32, time-major x of shape (T, B, I):
    - "forward":          fastrnn ``layer(x, state)`` vs torch ``mod(x, state)``
                          under ``torch.no_grad()``.
    - "forward+backward": fastrnn ``layer.forward`` + ``layer.backward(cache, dy)``
                          (which returns dx and dstate0 and adds parameter grads)
                          vs torch forward + ``y.backward(dy)`` with
                          requires_grad on the parameters, x and the initial state,
                          so both compute the same gradients. dy is a fixed random
                          array. Neither side zeroes its gradients between calls
                          (both accumulate).
  Shapes: every [T, B, I, H] in the grid's "recurrent" list, plus held-out odd
  shapes that are not in the grid (HELD_OUT below).
* Single cell steps called from Python (fr.RNNCell/GRUCell/LSTMCell vs
  torch.nn.RNNCell/GRUCell/LSTMCell under no_grad): one call ``cell(x, state)``
  with x (B, I), at B=1, I=H=128 and at the grid's "cell_step" [B, I, H] shapes.

The torch modules get the fastrnn layer's weights copied in, and before timing
the outputs (and for forward+backward: dx, dstate0 and all parameter gradients)
are compared; a relative error (||a - b|| / ||b||) above --rtol aborts the run.

Measurement discipline
----------------------
Both libraries use the same thread count (torch.set_num_threads(n) and
fr.set_num_threads(n)). Per row: warm-up, then a calibration of how many calls
make one sample last >= max(20 ms, budget / (2 * samples)); then samples are taken
ALTERNATELY (fastrnn, torch, fastrnn, torch, ...), at least --samples (default 7)
of each, with the garbage collector off during the sampling (one gc.collect()
before it). Reported are MEDIAN
per-call times and the ratio torch_median / fastrnn_median.

Targets (PASS/FAIL per row)
---------------------------
* LSTM, forward and forward+backward: >= 3x at B=1, >= 1.5x for 2 <= B <= 32,
  >= 1.0x for B > 32.
* GRU and RNN, both modes: >= 5x at B=1, >= 2x otherwise.
* Cell steps at B=1, I=H=128: fastrnn per-call time <= 3 us (absolute).
* Other cell-step shapes: reported only ("-").
* The ceiling clause: a recurrent row that misses its ratio still passes ("PASS*") when
  fastrnn is no slower than PyTorch and reaches >= 90% (forward) / >= 85%
  (forward+backward) of this run's SGEMM rate. fastrnn's GFLOP/s count
  2*T*B*(I+H)*G*H per forward (G = 4 LSTM, 3 GRU, 1 RNN) and 3x that per
  forward+backward. The SGEMM rate is the median of 2048^3 float32 products timed through
  NumPy's matmul (NumPy's wheels ship OpenBLAS, the BLAS that fastrnn bundles) at the
  start, before every recurrent row and at the end; a row's verdict uses the median of
  the whole run, so it is final only in the summary (the rows show the rate so far).
  NumPy's BLAS runs at its own thread count (all CPUs unless OPENBLAS_NUM_THREADS says
  otherwise): with --threads below that, set OPENBLAS_NUM_THREADS to match.

Exit status: 0 if all rows with a target pass, 1 if any row fails, 2 if the
two libraries disagree numerically (or torch/fastrnn is missing).
"""

import argparse
import gc
import json
import math
import os
import platform
import statistics
import sys
import time

import numpy as np

try:
    import torch
except ImportError:  # pragma: no cover - depends on the environment
    sys.exit("independent_timing.py needs PyTorch (pip install torch); it is not importable here.")

try:
    import fastrnn as fr
except ImportError:  # pragma: no cover
    sys.exit("independent_timing.py needs fastrnn installed (import fastrnn failed).")


HERE = os.path.dirname(os.path.abspath(__file__))
GRID_CANDIDATES = [os.path.join(HERE, "bench_grid.json")]

# Odd shapes that are NOT in the grid, [T, B, I, H]: catch tuning to the grid only.
HELD_OUT = [
    [37, 1, 77, 129],
    [23, 3, 100, 200],
    [41, 17, 65, 333],
    [19, 48, 300, 500],
    [13, 100, 700, 700],
]
CELL_TARGET_SHAPE = [1, 128, 128]  # [B, I, H] with an absolute target
CELL_TARGET_SECONDS = 3e-6

QUICK_RECURRENT = [[100, 1, 128, 128], [23, 3, 100, 200]]
QUICK_CELL = [CELL_TARGET_SHAPE]

MIN_SAMPLE_SECONDS = 0.020

# The ceiling clause: fractions of the SGEMM rate, and that rate's problem size.
CEILING_FRACTION = {"forward": 0.90, "forward+backward": 0.85}
SGEMM_N = 2048
# NumPy's OpenBLAS threads spin for ~0.1 s after a threaded call and would steal the cores
# of whatever is timed next.
BLAS_SETTLE_S = 0.3
GATES = {"rnn": 1, "gru": 3, "lstm": 4}

FR_LAYERS = {"rnn": fr.RNN, "gru": fr.GRU, "lstm": fr.LSTM}
FR_CELLS = {"rnn": fr.RNNCell, "gru": fr.GRUCell, "lstm": fr.LSTMCell}
TORCH_LAYERS = {"rnn": torch.nn.RNN, "gru": torch.nn.GRU, "lstm": torch.nn.LSTM}
TORCH_CELLS = {"rnn": torch.nn.RNNCell, "gru": torch.nn.GRUCell, "lstm": torch.nn.LSTMCell}


# --------------------------------------------------------------------------- targets

def recurrent_target(cell, batch):
    """Minimum speed-up torch_time / fastrnn_time for a recurrent row."""
    if cell == "lstm":
        if batch == 1:
            return 3.0
        return 1.5 if batch <= 32 else 1.0
    return 5.0 if batch == 1 else 2.0


def recurrent_flops(cell, mode, shape):
    T, B, I, H = shape
    fwd = 2.0 * T * B * (I + H) * GATES[cell] * H
    return fwd if mode == "forward" else 3.0 * fwd


def verdict(row, sgemm):
    """PASS / PASS* (the ceiling clause) / FAIL of a recurrent row against an SGEMM rate."""
    if row["ratio"] >= row["target_ratio"]:
        return "PASS"
    if row["ratio"] >= 1.0 and row["gflops"] / sgemm >= CEILING_FRACTION[row["mode"]]:
        return "PASS*"
    return "FAIL"


class SgemmRate:
    """The machine's SGEMM GFLOP/s through NumPy's BLAS, sampled throughout the run."""

    def __init__(self, n=SGEMM_N):
        rng = np.random.default_rng(7)
        self.a = rng.standard_normal((n, n)).astype(np.float32)
        self.b = rng.standard_normal((n, n)).astype(np.float32)
        self.flops = 2.0 * n ** 3
        self.samples = []
        self.a @ self.b  # warm-up: threads started, pages touched

    def sample(self, runs=3):
        ts = []
        for _ in range(runs):
            t0 = time.perf_counter()
            self.a @ self.b
            ts.append(time.perf_counter() - t0)
        self.samples.append(self.flops / statistics.median(ts) / 1e9)
        time.sleep(BLAS_SETTLE_S)

    def median(self):
        return statistics.median(self.samples)


# --------------------------------------------------------------------------- helpers

def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load_grid(path):
    paths = [path] if path else GRID_CANDIDATES
    for p in paths:
        if os.path.exists(p):
            with open(p) as f:
                return json.load(f), p
    sys.exit("bench_grid.json not found (tried: %s); pass --grid PATH" % ", ".join(paths))


def rel_err(a, b):
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        return float("inf")
    denom = np.linalg.norm(b)
    return float(np.linalg.norm(a - b) / (denom if denom > 0 else 1.0))


def check_close(what, pairs, rtol):
    """pairs: list of (name, fastrnn_array, torch_array). Abort loudly on mismatch."""
    worst = 0.0
    for name, a, b in pairs:
        e = rel_err(a, b)
        worst = max(worst, e)
        if not e <= rtol:
            print("\nNUMERICAL MISMATCH in %s: %s relative error %.3e > %.1e "
                  "(fastrnn shape %s, torch shape %s)" % (what, name, e, rtol,
                                                           np.shape(a), np.shape(b)),
                  file=sys.stderr)
            sys.exit(2)
    return worst


def tnp(t):
    return t.detach().cpu().numpy()


def time_pair(fn_fast, fn_torch, budget, min_samples):
    """Alternately sample fn_fast and fn_torch; return (fast_median, torch_median, n_samples)
    as seconds per call."""
    # Warm-up (also first estimate of the cost of one call).
    for fn in (fn_fast, fn_torch, fn_fast, fn_torch):
        fn()

    sample_target = max(MIN_SAMPLE_SECONDS, budget / (2.0 * min_samples))

    def calls_per_sample(fn):
        n = 1
        while True:
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            dt = time.perf_counter() - t0
            if dt >= sample_target / 4 or n >= 1 << 24:
                per_call = dt / n
                return max(1, int(math.ceil(sample_target / per_call)))
            n *= 4 if dt < sample_target / 40 else 2

    n_fast = calls_per_sample(fn_fast)
    n_torch = calls_per_sample(fn_torch)

    def sample(fn, n):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        return (time.perf_counter() - t0) / n

    # One full collection per row (it costs ~0.1 s with torch loaded), then the
    # collector stays off for the whole alternating sequence.
    fast, slow = [], []
    gc.collect()
    gc.disable()
    try:
        start = time.perf_counter()
        while len(fast) < min_samples or (time.perf_counter() - start) < budget:
            fast.append(sample(fn_fast, n_fast))
            slow.append(sample(fn_torch, n_torch))
            if len(fast) >= 10 * min_samples:
                break
    finally:
        gc.enable()
    return statistics.median(fast), statistics.median(slow), len(fast)


# --------------------------------------------------------------------------- recurrent rows

def make_recurrent(cell, shape, seed=0):
    T, B, I, H = shape
    kw = {"nonlinearity": "tanh"} if cell == "rnn" else {}
    layer = FR_LAYERS[cell](I, H, dtype="float32", seed=seed, **kw)
    mod = TORCH_LAYERS[cell](I, H, **kw)
    mod.load_state_dict({k: torch.from_numpy(np.array(v, dtype=np.float32))
                         for k, v in layer.params.items()})
    mod.float()
    return layer, mod


def recurrent_row(cell, mode, shape, args):
    T, B, I, H = shape
    rng = np.random.default_rng(1234)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    dy = rng.standard_normal((T, B, H)).astype(np.float32)
    h0 = np.zeros((1, B, H), np.float32)
    layer, mod = make_recurrent(cell, shape)
    is_lstm = cell == "lstm"
    fr_state = (h0, h0.copy()) if is_lstm else h0

    xt = torch.from_numpy(x)
    dyt = torch.from_numpy(dy)

    if mode == "forward":
        t_state = (torch.from_numpy(h0), torch.from_numpy(h0.copy())) if is_lstm else torch.from_numpy(h0)

        def run_fast():
            return layer(x, fr_state)

        def run_torch():
            with torch.no_grad():
                return mod(xt, t_state)

        y, st = run_fast()
        yt, stt = run_torch()
        pairs = [("y", y, tnp(yt))]
        if is_lstm:
            pairs += [("h_n", st[0], tnp(stt[0])), ("c_n", st[1], tnp(stt[1]))]
        else:
            pairs += [("h_n", st, tnp(stt))]
        err = check_close("%s %s %s" % (cell, mode, shape), pairs, args.rtol)
    else:
        xg = xt.clone().requires_grad_(True)
        if is_lstm:
            t_state = (torch.zeros(1, B, H, requires_grad=True),
                       torch.zeros(1, B, H, requires_grad=True))
        else:
            t_state = torch.zeros(1, B, H, requires_grad=True)

        def run_fast():
            y, st, cache = layer.forward(x, fr_state)
            return layer.backward(cache, dy)

        def run_torch():
            y, _ = mod(xg, t_state)
            y.backward(dyt)

        # One clean step on each side for the correctness check.
        layer.zero_grad()
        mod.zero_grad()
        dx, dst0 = run_fast()
        run_torch()
        pairs = [("dx", dx, tnp(xg.grad))]
        if is_lstm:
            pairs += [("dh0", dst0[0], tnp(t_state[0].grad)), ("dc0", dst0[1], tnp(t_state[1].grad))]
        else:
            pairs += [("dh0", dst0, tnp(t_state.grad))]
        tparams = dict(mod.named_parameters())
        for name, g in layer.grads.items():
            pairs.append(("grad " + name, g, tnp(tparams[name].grad)))
        # also the forward output of the training path
        y_fast = layer.forward(x, fr_state)[0]
        with torch.no_grad():
            y_torch = mod(xt, tuple(s.detach() for s in t_state) if is_lstm else t_state.detach())[0]
        pairs.append(("y (training forward)", y_fast, tnp(y_torch)))
        err = check_close("%s %s %s" % (cell, mode, shape), pairs, args.rtol)

    f_med, t_med, n = time_pair(run_fast, run_torch, args.budget, args.samples)
    target = recurrent_target(cell, B)
    return {
        "kind": "recurrent", "shape": list(shape), "shape_desc": "T=%d B=%d I=%d H=%d" % tuple(shape),
        "cell": cell, "mode": mode, "fastrnn_s": f_med, "torch_s": t_med, "ratio": t_med / f_med,
        "samples": n, "max_rel_err": err, "gflops": recurrent_flops(cell, mode, shape) / f_med / 1e9,
        "target": ">=%gx" % target, "target_ratio": target,
    }


# --------------------------------------------------------------------------- cell-step rows

def cell_row(cell, shape, args):
    B, I, H = shape
    kw = {"nonlinearity": "tanh"} if cell == "rnn" else {}
    fcell = FR_CELLS[cell](I, H, dtype="float32", seed=0, **kw)
    tcell = TORCH_CELLS[cell](I, H, **kw)
    tcell.load_state_dict({k: torch.from_numpy(np.array(v, dtype=np.float32))
                           for k, v in fcell.params.items()})
    rng = np.random.default_rng(99)
    x = rng.standard_normal((B, I)).astype(np.float32)
    h = (0.5 * rng.standard_normal((B, H))).astype(np.float32)
    c = (0.5 * rng.standard_normal((B, H))).astype(np.float32)
    is_lstm = cell == "lstm"
    f_state = (h, c) if is_lstm else h
    xt = torch.from_numpy(x)
    t_state = (torch.from_numpy(h), torch.from_numpy(c)) if is_lstm else torch.from_numpy(h)

    def run_fast():
        return fcell(x, f_state)

    def run_torch():
        with torch.no_grad():
            return tcell(xt, t_state)

    out_f, out_t = run_fast(), run_torch()
    if is_lstm:
        pairs = [("h", out_f[0], tnp(out_t[0])), ("c", out_f[1], tnp(out_t[1]))]
    else:
        pairs = [("h", out_f, tnp(out_t))]
    err = check_close("%s cell step %s" % (cell, shape), pairs, args.rtol)

    f_med, t_med, n = time_pair(run_fast, run_torch, args.budget, args.samples)
    if list(shape) == CELL_TARGET_SHAPE:
        target = "<=%gus" % (CELL_TARGET_SECONDS * 1e6)
        status = "PASS" if f_med <= CELL_TARGET_SECONDS else "FAIL"
    else:
        target, status = "-", "info"
    return {
        "kind": "cell_step", "shape": list(shape), "shape_desc": "B=%d I=%d H=%d" % tuple(shape),
        "cell": cell, "mode": "cell step", "fastrnn_s": f_med, "torch_s": t_med,
        "ratio": t_med / f_med, "samples": n, "max_rel_err": err,
        "target": target, "status": status,
    }


# --------------------------------------------------------------------------- output

def fmt_time(s):
    if s < 1e-3:
        return "%.2f us" % (s * 1e6)
    if s < 1.0:
        return "%.3f ms" % (s * 1e3)
    return "%.3f s" % s


COLUMNS = [("shape", 24), ("cell", 5), ("mode", 17), ("fastrnn", 11), ("torch", 11),
           ("ratio", 8), ("% gemm", 7), ("target", 8), ("result", 6)]


def print_header():
    line = "  ".join(name.ljust(w) for name, w in COLUMNS)
    print(line)
    print("-" * len(line))


def print_row(r):
    pct = "%.0f%%" % (100 * r["gflops"] / r["sgemm_so_far"]) if "gflops" in r else "-"
    cells = [r["shape_desc"], r["cell"], r["mode"], fmt_time(r["fastrnn_s"]),
             fmt_time(r["torch_s"]), "%.2fx" % r["ratio"], pct, r["target"], r["status"]]
    print("  ".join(str(v).ljust(w) for v, (_, w) in zip(cells, COLUMNS)), flush=True)


# --------------------------------------------------------------------------- main

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2, help="threads for BOTH libraries (default 2)")
    p.add_argument("--budget", type=float, default=None,
                   help="seconds of timed samples per row (default 1.5; 0.15 with --quick)")
    p.add_argument("--samples", type=int, default=7, help="minimum samples per library per row (>= 7)")
    p.add_argument("--rtol", type=float, default=1e-4,
                   help="max relative error ||a-b||/||b|| between fastrnn and torch (default 1e-4)")
    p.add_argument("--only", choices=["recurrent", "cell"], help="run only one part")
    p.add_argument("--cells", default="rnn,gru,lstm", help="comma list of rnn,gru,lstm")
    p.add_argument("--modes", default="forward,forward+backward",
                   help="comma list of forward,forward+backward (recurrent rows)")
    p.add_argument("--no-held-out", action="store_true", help="grid shapes only")
    p.add_argument("--quick", action="store_true", help="small subset, tiny budget (smoke run)")
    p.add_argument("--grid", default=None, help="path to bench_grid.json")
    p.add_argument("--json", default=None, metavar="FILE", help="write rows and metadata as JSON")
    args = p.parse_args(argv)

    args.samples = max(7, args.samples)
    if args.budget is None:
        args.budget = 0.15 if args.quick else 1.5
    cells = [c.strip() for c in args.cells.split(",") if c.strip()]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    for c in cells:
        if c not in FR_LAYERS:
            p.error("unknown cell %r" % c)
    for m in modes:
        if m not in ("forward", "forward+backward"):
            p.error("unknown mode %r" % m)

    grid, grid_path = load_grid(args.grid)
    if args.quick:
        recurrent_shapes = QUICK_RECURRENT
        cell_shapes = QUICK_CELL
    else:
        recurrent_shapes = [list(s) for s in grid["recurrent"]]
        if not args.no_held_out:
            recurrent_shapes += [s for s in HELD_OUT if s not in recurrent_shapes]
        cell_shapes = [CELL_TARGET_SHAPE] + [list(s) for s in grid.get("cell_step", [])
                                             if list(s) != CELL_TARGET_SHAPE]

    torch.set_num_threads(args.threads)
    fr.set_num_threads(args.threads)
    torch.manual_seed(0)

    info = {
        "threads": args.threads,
        "torch_threads": torch.get_num_threads(),
        "fastrnn_threads": fr.get_num_threads(),
        "cpu": cpu_model(),
        "torch_version": torch.__version__,
        "fastrnn_version": getattr(fr, "__version__", None) or fr.build_info().get("version"),
        "fastrnn_build": {k: v for k, v in fr.build_info().items()},
        "python": platform.python_version(),
        "budget_s_per_row": args.budget,
        "min_samples": args.samples,
        "rtol": args.rtol,
        "grid": grid_path,
        "quick": args.quick,
    }
    print("fastrnn independent timing (fastrnn vs PyTorch, float32)")
    print("threads: %d (torch reports %d, fastrnn reports %d)" % (
        args.threads, info["torch_threads"], info["fastrnn_threads"]))
    print("CPU: %s" % info["cpu"])
    bi = info["fastrnn_build"]
    print("torch %s | fastrnn %s (blas=%s, simd=%s, openmp=%s) | python %s" % (
        info["torch_version"], info["fastrnn_version"], bi.get("blas"), bi.get("simd"),
        bi.get("openmp"), info["python"]))
    print("budget %.2f s/row, >= %d alternating samples per library, medians per call, "
          "ratio = torch / fastrnn, correctness rtol %.0e%s" % (
              args.budget, args.samples, args.rtol, " [QUICK]" if args.quick else ""))
    print()
    print_header()

    rows = []
    t_start = time.perf_counter()
    if args.only in (None, "recurrent"):
        sgemm = SgemmRate()
        sgemm.sample()
        for shape in recurrent_shapes:
            for cell in cells:
                for mode in modes:
                    sgemm.sample()
                    r = recurrent_row(cell, mode, shape, args)
                    r["held_out"] = shape not in [list(s) for s in grid["recurrent"]]
                    r["sgemm_so_far"] = sgemm.median()
                    r["status"] = verdict(r, r["sgemm_so_far"])
                    rows.append(r)
                    print_row(r)
        sgemm.sample()
        # the verdicts against the rate of the whole run
        rate = sgemm.median()
        info["sgemm_gflops"] = {"median": rate, "min": min(sgemm.samples), "max": max(sgemm.samples),
                                "samples": sgemm.samples, "n": SGEMM_N, "via": "numpy.matmul"}
        print()
        print("SGEMM %d^3 float32 through NumPy's BLAS (OPENBLAS_NUM_THREADS=%s): median %.0f "
              "GFLOP/s of %d samples (min %.0f, max %.0f)" % (
                  SGEMM_N, os.environ.get("OPENBLAS_NUM_THREADS", "unset"), rate, len(sgemm.samples),
                  min(sgemm.samples), max(sgemm.samples)))
        for r in rows:
            status = verdict(r, rate)
            r["pct_gemm"] = r["gflops"] / rate
            if status != r["status"]:
                print("  against the run's median: %s %s %s now %s (%.0f%% of SGEMM)" % (
                    r["cell"], r["mode"], r["shape_desc"], status, 100 * r["pct_gemm"]))
            r["status"] = status
    if args.only in (None, "cell"):
        for shape in cell_shapes:
            for cell in cells:
                r = cell_row(cell, shape, args)
                rows.append(r)
                print_row(r)

    n_pass = sum(r["status"] in ("PASS", "PASS*") for r in rows)
    n_ceiling = sum(r["status"] == "PASS*" for r in rows)
    n_fail = sum(r["status"] == "FAIL" for r in rows)
    n_info = sum(r["status"] == "info" for r in rows)
    print()
    print("summary: %d rows, %d PASS (%d of them by the ceiling clause, PASS*), %d FAIL, "
          "%d report-only (%.1f s wall)" % (len(rows), n_pass, n_ceiling, n_fail, n_info,
                                            time.perf_counter() - t_start))
    for r in rows:
        if r["status"] == "FAIL":
            pct = " %.0f%% of SGEMM" % (100 * r["pct_gemm"]) if "pct_gemm" in r else ""
            print("  FAIL: %s %s %s ratio %.2fx fastrnn %s%s (target %s)" % (
                r["cell"], r["mode"], r["shape_desc"], r["ratio"], fmt_time(r["fastrnn_s"]),
                pct, r["target"]))

    if args.json:
        with open(args.json, "w") as f:
            json.dump({"info": info, "rows": rows}, f, indent=2)
        print("wrote %s" % args.json)
    return 1 if n_fail else 0


if __name__ == "__main__":
    sys.exit(main())
