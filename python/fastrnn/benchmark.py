"""`fastrnn bench`: fastrnn against the NumPy reference and PyTorch, in one process.

fastrnn and PyTorch run the same problem alternately (A, B, A, B, ...) at the same thread
count, and medians are reported, because shared machines are noisy; the NumPy reference is
timed after them (NumPy's BLAS threads keep spinning after a call and would slow the next one). Rates are given in
GFLOP/s and as a fraction of the GEMM rate the bundled BLAS reaches on this machine in the
same run (SGEMM 2048^3 for float32, the median of products timed at the start and between
the shapes), the practical ceiling of these kernels.

FLOPs of one recurrent layer: 2*T*B*(I+H)*G*H forward, 3x that forward+backward.
"""
from __future__ import annotations

import json
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from importlib import resources

import numpy as np

from . import _core
from ._threads import build_info, get_num_threads, set_num_threads

GATES = {"rnn": 1, "gru": 3, "lstm": 4}


def default_grid() -> dict:
    return json.loads(resources.files("fastrnn").joinpath("bench_grid.json").read_text())


@dataclass
class Row:
    kind: str                # "recurrent", "cell_step", "sdpa", "gemm"
    cell: str
    mode: str                # "forward" | "forward+backward"
    shape: list
    dtype: str
    threads: int
    seconds: dict = field(default_factory=dict)   # backend -> median seconds
    runs: dict = field(default_factory=dict)      # backend -> number of timed runs
    flops: float = 0.0

    def gflops(self, backend):
        s = self.seconds.get(backend)
        return self.flops / s / 1e9 if s and self.flops else None


def _try_torch():
    try:
        import torch
    except ImportError:
        return None
    return torch


def _pause(seconds):
    """Wait without sleeping: an idle core can be handed to other work by the machine (a
    virtual CPU is descheduled when its guest idles) and comes back with cold caches."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


# A warm-up round (one call of each backend) longer than this is followed by a single timed
# round. On a 2-core AMD EPYC with AVX2 (Zen 3), whose SGEMM runs at 100-160 GFLOP/s, the grid
# took 110 s with two timed rounds everywhere, 31 s of it in the two forward+backward rows at
# 50x128x1024x1024 (a round of 4.4 and 5.5 s); one round there keeps it near 100 s.
LONG_ROUND_S = 3.0


def _alternate(fns: dict, min_runs: int, budget: float, settle: float = 0.0,
               warm_up_s: float | None = None) -> tuple[dict, dict]:
    """Time each callable alternately; one warm-up each, then rounds until `min_runs` rounds
    are done and the time budget is spent (or 50 rounds). Rows whose warm-up round alone takes
    over half a second get two timed rounds, and over LONG_ROUND_S one, so that the whole grid
    stays within two minutes on a slower machine too. `settle` seconds of sleep (untimed)
    precede each timed call. `warm_up_s`: the warm-up round already ran and took this long.
    Returns (medians, run counts)."""
    if warm_up_s is None:
        t0 = time.perf_counter()
        for fn in fns.values():
            fn()
        warm_up_s = time.perf_counter() - t0
    if warm_up_s > 0.5:
        min_runs, budget = (1 if warm_up_s > LONG_ROUND_S else 2), 0.0
    times = {k: [] for k in fns}
    start = time.perf_counter()
    rounds = 0
    while rounds < min_runs or (time.perf_counter() - start < budget and rounds < 50):
        for k, fn in fns.items():
            if settle:
                _pause(settle)
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
        rounds += 1
    return {k: statistics.median(v) for k, v in times.items()}, {k: len(v) for k, v in times.items()}


# NumPy's OpenBLAS keeps its worker threads spinning for 2^28 cycles (about 0.1 s) after each
# threaded call (fastrnn sets a short timeout for its own copy only). Measured: an RNN forward
# at 100x1x128x128 took 116-163 us per call right after a NumPy matmul and 56-67 us after a
# 0.3 s pause. Sleeping this long after the reference lets those threads go idle.
NUMPY_BLAS_SETTLE_S = 0.3


def _timed(fns: dict, min_runs: int, budget: float, time_fn=None) -> tuple[dict, dict]:
    """fastrnn and PyTorch alternate; the NumPy reference is timed after them, on its own, and
    followed by a pause: NumPy's OpenBLAS leaves its worker threads spinning for a while after
    each call, which would steal a core from whichever backend runs next (in the next row)."""
    time_fn = time_fn or _alternate
    ref = {k: fns.pop(k) for k in list(fns) if k == "reference"}
    med, runs = time_fn(fns, min_runs, budget)
    if ref:  # (the reference is the slow baseline: half the budget is plenty)
        m2, r2 = time_fn(ref, min_runs, budget / 2)
        med.update(m2)
        runs.update(r2)
        time.sleep(NUMPY_BLAS_SETTLE_S)
    return med, runs


class GemmRate:
    """GFLOP/s of the bundled BLAS on an n^3 GEMM, sampled during the run: `sample(runs)` times
    `runs` products. On a shared machine the rate moves with the neighbours' load (a 2-core Zen 3
    read 88 to 180 GFLOP/s within one run), so the ceiling is the median of samples taken
    between the rows, not one reading at the start."""

    def __init__(self, dtype: str, n: int = 2048):
        rng = np.random.default_rng(0)
        self.a = rng.standard_normal((n, n)).astype(dtype)
        self.b = rng.standard_normal((n, n)).astype(dtype)
        self.flops = 2.0 * n ** 3
        self.samples: list[float] = []
        _core.blas_matmul(self.a, self.b)

    def sample(self, runs: int = 2) -> None:
        for _ in range(runs):
            t0 = time.perf_counter()
            _core.blas_matmul(self.a, self.b)
            self.samples.append(self.flops / (time.perf_counter() - t0) / 1e9)

    def median(self) -> float:
        return statistics.median(self.samples)


# ------------------------------------------------------------------------- problem builders

def _recurrent_fns(cell, shape, dtype, mode, backends, torch):
    import fastrnn as fr
    T, B, I, H = shape
    cls = {"rnn": "RNN", "gru": "GRU", "lstm": "LSTM"}[cell]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, B, I)).astype(dtype)
    fns = {}
    layers = {}
    for name in backends:
        if name == "torch":
            continue
        mod = fr if name == "fastrnn" else fr.reference
        layer = getattr(mod, cls)(I, H, dtype=dtype, seed=0)
        layers[name] = layer
        if mode == "forward":
            fns[name] = (lambda layer=layer: layer(x))
        else:
            dy = np.ones((T, B, H), dtype)

            def fb(layer=layer, dy=dy):
                y, _, cache = layer.forward(x)
                layer.backward(cache, dy)
            fns[name] = fb
    if "torch" in backends and torch is not None:
        tdtype = torch.float32 if dtype == "float32" else torch.float64
        tl = getattr(torch.nn, cls)(I, H).to(tdtype)
        xt = torch.from_numpy(x)
        if mode == "forward":
            def tf():
                with torch.no_grad():
                    tl(xt)
            fns["torch"] = tf
        else:
            xg = xt.clone().requires_grad_(True)

            def tfb():
                y, _ = tl(xg)
                y.backward(torch.ones_like(y))
            fns["torch"] = tfb
    return fns


def _cell_fns(cell, shape, dtype, backends, torch):
    import fastrnn as fr
    B, I, H = shape
    cls = {"rnn": "RNNCell", "gru": "GRUCell", "lstm": "LSTMCell"}[cell]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((B, I)).astype(dtype)
    h = rng.standard_normal((B, H)).astype(dtype)
    state = (h, h.copy()) if cell == "lstm" else h
    fns = {}
    for name in backends:
        if name == "torch":
            continue
        mod = fr if name == "fastrnn" else fr.reference
        c = getattr(mod, cls)(I, H, dtype=dtype, seed=0)
        fns[name] = (lambda c=c: c(x, state))
    if "torch" in backends and torch is not None:
        tdtype = torch.float32 if dtype == "float32" else torch.float64
        tc = getattr(torch.nn, cls)(I, H).to(tdtype)
        xt, ht = torch.from_numpy(x), torch.from_numpy(h)
        tstate = (ht, ht.clone()) if cell == "lstm" else ht

        def tf():
            with torch.no_grad():
                tc(xt, tstate)
        fns["torch"] = tf
    return fns


# Calls shorter than SHORT_CALL_S (cell steps, B=1 sequences, small attention) are timed in
# batches lasting about BATCH_S (a loop of calls, as users write them), each after a pause of
# SETTLE_S. One call at a time, right after the other library's call, measures a cold call:
# the thread pools have gone to sleep and the caches hold the other library's data. Measured
# at 100x1x128x128, one call at a time / batches: RNN forward+backward 393 / 192 us, forward
# 96 / 76 us, LSTM forward 217 / 214 us (PyTorch 4.9 / 5.4 ms, 0.85 / 1.0 ms, 0.50 / 0.63 ms).
# The pause: PyTorch's OpenMP threads spin for a few milliseconds after its calls and take the
# core of fastrnn's helper thread, and NumPy's BLAS threads do the same. Measured, LSTM I=H=128
# cell steps in blocks of 3000 calls right after 300 PyTorch steps: 5.0 us per call with no
# pause, 5.5 after 1 ms, 3.6 after 5 ms, 3.4 after 20 ms, 3.3 after 50 ms (3.4 with no PyTorch
# calls at all, in the same minutes). With batches of 200 calls and no pause it read 4-28 us.
SHORT_CALL_S = 0.002
BATCH_S = 0.01
SETTLE_S = 0.02


def _time_batched(fns, min_runs, budget):
    """Per-call time of short calls: batches of calls (~BATCH_S each; one call when a call is
    longer), alternating, median per call, for at least 7 rounds and half the budget. Rows where
    every backend's call takes SHORT_CALL_S or more are timed one call at a time (_alternate)."""
    first = {}
    for k, fn in fns.items():  # the warm-up round, timed
        t0 = time.perf_counter()
        fn()
        first[k] = time.perf_counter() - t0
    # (a first call also allocates and faults in its buffers: a long one may still be short
    # later, so only rows far above the threshold skip the calibration below)
    if min(first.values()) >= 10 * SHORT_CALL_S:
        return _alternate(fns, min_runs, budget, warm_up_s=sum(first.values()))
    # calls per batch from the faster of two calibrations, each after a pause and one untimed
    # call: right after the other library's calls one estimate read an LSTM step at 217 us
    # rather than 3, and gave batches of 46 calls (0.1 ms) that timed at 12 us per call; and the
    # first call after a pause wakes sleeping threads (0.1-0.5 ms for a PyTorch GRU step, and
    # milliseconds on a busy machine: batches of 2 calls then timed at 1-3 ms per call)
    per_call = {}
    for k, fn in fns.items():
        per_call[k] = math.inf
        for _ in range(2):
            _pause(SETTLE_S)
            fn()
            n, t0 = 0, time.perf_counter()
            while n == 0 or time.perf_counter() - t0 < SHORT_CALL_S:
                fn()
                n += 1
            per_call[k] = min(per_call[k], (time.perf_counter() - t0) / n)
    if min(per_call.values()) >= SHORT_CALL_S:
        return _alternate(fns, min_runs, budget, warm_up_s=sum(first.values()))
    batch = {k: max(1, math.ceil(BATCH_S / max(t, 1e-9))) for k, t in per_call.items()}
    looped = {k: (lambda fn=fn, n=batch[k]: [fn() for _ in range(n)]) for k, fn in fns.items()}
    # at least seven batches each, more only for a budget above the default: a round of
    # batches costs ~60 ms with its pauses, and the grid must stay well within two minutes
    med, runs = _alternate(looped, min_runs=7, budget=budget / 2, settle=SETTLE_S)
    return {k: v / batch[k] for k, v in med.items()}, {k: runs[k] * batch[k] for k in runs}


def _sdpa_fns(shape, dtype, mode, backends, torch):
    import fastrnn as fr
    B, heads, L, E, causal = shape
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((B, heads, L, E)).astype(dtype) for _ in range(3))
    fns = {}
    for name in backends:
        if name == "torch":
            continue
        F = fr.functional if name == "fastrnn" else fr.reference.functional
        if not hasattr(F, "scaled_dot_product_attention"):
            continue
        if mode == "forward":
            fns[name] = (lambda F=F: F.scaled_dot_product_attention(q, k, v, is_causal=causal))
        else:
            dout = np.ones((B, heads, L, E), dtype)

            def fb(F=F):
                _, cache = F.scaled_dot_product_attention_forward(q, k, v, is_causal=causal)
                F.scaled_dot_product_attention_backward(cache, dout)
            fns[name] = fb
    if "torch" in backends and torch is not None:
        import torch.nn.functional as TF
        qt, kt, vt = (torch.from_numpy(a) for a in (q, k, v))
        if mode == "forward":
            def tf():
                with torch.no_grad():
                    TF.scaled_dot_product_attention(qt, kt, vt, is_causal=causal)
            fns["torch"] = tf
        else:
            qg, kg, vg = (a.clone().requires_grad_(True) for a in (qt, kt, vt))

            def tfb():
                out = TF.scaled_dot_product_attention(qg, kg, vg, is_causal=causal)
                out.backward(torch.ones_like(out))
            fns["torch"] = tfb
    return fns


def _sdpa_flops(shape, mode):
    B, heads, L, E, causal = shape
    f = 4.0 * B * heads * L * L * E * (0.5 if causal else 1.0)
    return f if mode == "forward" else 3.5 * f


# ------------------------------------------------------------------------------- the runner

def run(cells=None, shapes=None, threads=None, dtype="float32", modes=None, include_reference=True,
        include_torch=True, budget=1.0, progress=True, sections=("recurrent", "cell_step", "sdpa")) -> dict:
    """Run the benchmark grid; returns {"machine": ..., "gemm_gflops": ..., "rows": [...]}."""
    grid = default_grid()
    cells = cells or grid["cells"]
    modes = modes or grid["modes"]
    if threads is not None:
        set_num_threads(threads)
    threads = get_num_threads()
    torch = _try_torch() if include_torch else None
    if torch is not None:
        torch.set_num_threads(threads)
    backends = ["fastrnn"] + (["torch"] if torch is not None else []) + (["reference"] if include_reference else [])
    rec_shapes = shapes or grid["recurrent"]

    plan = []
    if "recurrent" in sections:
        plan += [("recurrent", c, m, s) for s in rec_shapes for c in cells for m in modes]
    if "cell_step" in sections:
        plan += [("cell_step", c, "forward", s) for s in grid["cell_step"] for c in cells]
    if "sdpa" in sections:
        plan += [("sdpa", "sdpa", m, s) for s in grid["attention"] for m in modes]

    bar = _progress(len(plan) + 1, progress)
    bar.set_description("gemm 2048^3")
    gemm = GemmRate(dtype)
    gemm.sample(3)
    bar.update(1)
    rows = []
    last_group = None
    for kind, cell, mode, shape in plan:
        if (kind, shape) != last_group and last_group is not None:
            gemm.sample(2)  # a few products between shapes (about 0.1 s each)
        last_group = (kind, shape)
        bar.set_description(f"{kind} {cell} {mode} {shape}")
        # the reference is plain NumPy: only where one call stays well under a second
        use = [b for b in backends if b != "reference" or _reference_ok(kind, shape)]
        if kind == "recurrent":
            fns = _recurrent_fns(cell, shape, dtype, mode, use, torch)
            T, B, I, H = shape
            flops = 2.0 * T * B * (I + H) * GATES[cell] * H * (1 if mode == "forward" else 3)
            med, runs = _timed(fns, 3, budget, time_fn=_time_batched)
        elif kind == "cell_step":
            fns = _cell_fns(cell, shape, dtype, use, torch)
            B, I, H = shape
            flops = 2.0 * B * (I + H) * GATES[cell] * H
            med, runs = _timed(fns, 5, budget / 2, time_fn=_time_batched)
        else:
            fns = _sdpa_fns(shape, dtype, mode, use, torch)
            if "fastrnn" not in fns:
                bar.update(1)
                continue
            flops = _sdpa_flops(shape, mode)
            med, runs = _timed(fns, 3, budget, time_fn=_time_batched)
        rows.append(Row(kind, cell, mode, list(shape), dtype, threads, med, runs, flops))
        bar.update(1)
    bar.close()
    return {
        "machine": machine_info(),
        "build": build_info(),
        "torch": None if torch is None else torch.__version__,
        "threads": threads,
        "dtype": dtype,
        "gemm_gflops": gemm.median(),
        "gemm_samples": [round(v, 1) for v in gemm.samples],
        "rows": [asdict(r) for r in rows],
    }


def _reference_ok(kind, shape):
    if kind == "recurrent":
        T, B, I, H = shape
        return T * B * (I + H) * H <= 100 * 32 * 512 * 256
    if kind == "sdpa":
        B, heads, L, E, _ = shape
        return B * heads * L * L <= 8 * 8 * 512 * 512
    return True


def machine_info() -> dict:
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"cpu": cpu, "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "python": platform.python_version(), "numpy": np.__version__, "platform": platform.platform()}


class _NoBar:
    def __init__(self, total, enabled):
        self.total, self.n, self.enabled, self.desc = total, 0, enabled, ""

    def set_description(self, d):
        self.desc = d
        if self.enabled:
            print(f"\r[{self.n}/{self.total}] {d[:70]:<70}", end="", file=sys.stderr, flush=True)

    def update(self, k):
        self.n += k

    def close(self):
        if self.enabled:
            print("\r" + " " * 80 + "\r", end="", file=sys.stderr, flush=True)


def _progress(total, enabled):
    if enabled:
        try:
            from tqdm import tqdm
            return tqdm(total=total, file=sys.stderr, leave=False, dynamic_ncols=True)
        except ImportError:
            pass
    return _NoBar(total, enabled and sys.stderr.isatty())


# ----------------------------------------------------------------------------------- output

def _fmt_time(s):
    if s is None:
        return "-"
    if s < 1e-3:
        return f"{s * 1e6:.1f} us"
    if s < 1:
        return f"{s * 1e3:.2f} ms"
    return f"{s:.2f} s"


def _gemm_spread(result: dict) -> str:
    v = result.get("gemm_samples") or []
    return f", median of {len(v)} samples through the run (min {min(v):.0f}, max {max(v):.0f})" if len(v) > 1 else ""


def format_table(result: dict) -> str:
    rows = result["rows"]
    gemm = result["gemm_gflops"]
    has_torch = result["torch"] is not None
    m = result["machine"]
    out = [f"fastrnn {result['build']['version']} | {m['cpu']} | {result['threads']} threads | "
           f"simd {result['build']['simd']} | {result['dtype']}",
           f"BLAS GEMM 2048^3 ({result['dtype']}): {gemm:.1f} GFLOP/s (the ceiling below: '% gemm')"
           + _gemm_spread(result),
           "PyTorch " + (result["torch"] if has_torch else "not installed (pip install torch==2.13.0 to compare)"),
           ""]
    head = ["what", "mode", "shape", "fastrnn", "GFLOP/s", "% gemm"]
    if has_torch:
        head += ["torch", "vs torch"]
    head += ["reference", "vs ref"]
    table = [head]
    for r in rows:
        s = r["seconds"]
        f = s.get("fastrnn")
        gf = r["flops"] / f / 1e9 if f and r["flops"] else None
        line = [r["cell"] if r["kind"] != "cell_step" else f"{r['cell']} step", r["mode"],
                "x".join(str(v) for v in r["shape"]), _fmt_time(f),
                "-" if gf is None else f"{gf:.1f}", "-" if gf is None else f"{100 * gf / gemm:.0f}%"]
        if has_torch:
            t = s.get("torch")
            line += [_fmt_time(t), "-" if not (t and f) else f"{t / f:.2f}x"]
        ref = s.get("reference")
        line += [_fmt_time(ref), "-" if not (ref and f) else f"{ref / f:.1f}x"]
        table.append(line)
    widths = [max(len(str(row[i])) for row in table) for i in range(len(head))]
    for i, row in enumerate(table):
        out.append("  ".join(str(v).rjust(w) if j >= 3 else str(v).ljust(w) for j, (v, w) in enumerate(zip(row, widths))))
        if i == 0:
            out.append("  ".join("-" * w for w in widths))
    out.append("")
    out.append("Shapes: recurrent T x B x I x H (one layer), cell step B x I x H, sdpa B x heads x L x E x causal. "
               "Medians of alternating runs (one timed run after a warm-up where a round takes seconds); "
               "'vs' = their time / fastrnn's time.")
    return "\n".join(out)


def format_markdown(result: dict) -> str:
    """The table as Markdown (what the README shows), with the machine and versions."""
    m, b = result["machine"], result["build"]
    has_torch = result["torch"] is not None
    lines = [f"Measured with `fastrnn bench` on {m['cpu']} ({m['cpus_usable']} CPUs usable), "
             f"{result['threads']} threads, {result['dtype']}; fastrnn {b['version']} (SIMD {b['simd']}, "
             f"{b['blas_version'].split(' DYNAMIC')[0]}), PyTorch {result['torch'] or 'not installed'}, "
             f"NumPy {m['numpy']}, Python {m['python']}. Bundled BLAS SGEMM 2048^3: "
             f"{result['gemm_gflops']:.0f} GFLOP/s{_gemm_spread(result)}.", ""]
    head = "| what | mode | shape | fastrnn | GFLOP/s |" + (" PyTorch | speedup |" if has_torch else "") + " NumPy reference | speedup |"
    lines += [head, "|" + "---|" * (head.count("|") - 1)]
    for r in result["rows"]:
        s = r["seconds"]
        f = s.get("fastrnn")
        gf = r["flops"] / f / 1e9 if f and r["flops"] else None
        what = r["cell"] if r["kind"] != "cell_step" else f"{r['cell']} cell step"
        row = f"| {what} | {r['mode']} | {'x'.join(str(v) for v in r['shape'])} | {_fmt_time(f)} | " \
              f"{'-' if gf is None else f'{gf:.0f}'} |"
        if has_torch:
            t = s.get("torch")
            row += f" {_fmt_time(t)} | {'-' if not (t and f) else f'{t / f:.2f}x'} |"
        ref = s.get("reference")
        row += f" {_fmt_time(ref)} | {'-' if not (ref and f) else f'{ref / f:.1f}x'} |"
        lines.append(row)
    return "\n".join(lines) + "\n"


def plot(result: dict, path: str) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise SystemExit("--plot needs matplotlib: pip install 'fastrnn[plot]'") from exc
    rows = [r for r in result["rows"] if "torch" in r["seconds"] or "reference" in r["seconds"]]
    labels = [f"{r['cell']} {'step' if r['kind'] == 'cell_step' else 'fwd' if r['mode'] == 'forward' else 'f+b'}"
              f"\n{'x'.join(map(str, r['shape']))}" for r in rows]
    vs_torch = [r["seconds"].get("torch", np.nan) / r["seconds"]["fastrnn"] for r in rows]
    fig, ax = plt.subplots(figsize=(max(8, 0.55 * len(rows)), 5))
    xs = np.arange(len(rows))
    bars = ax.bar(xs, vs_torch, color=["tab:green" if v >= 1 else "tab:red" for v in vs_torch])
    ax.set_yscale("log")
    # labels 1x, 2x, 3x, 5x, 10x, ... rather than 10^0 and 2 x 10^0
    ax.yaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{v:g}x"))
    ax.yaxis.set_minor_formatter(plt.FuncFormatter(
        lambda v, _: f"{v:g}x" if v > 0 and round(v / 10 ** np.floor(np.log10(v)), 6) in (2, 3, 5) else ""))
    ax.bar_label(bars, labels=[f"{v:.2f}x" for v in vs_torch], fontsize=6, padding=1)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xticks(xs)
    ax.set_xticklabels(labels, rotation=90, fontsize=7)
    ax.set_ylabel("speedup over PyTorch (x, log scale; > 1 = fastrnn faster)")
    ax.set_title(f"fastrnn vs PyTorch {result['torch']} - {result['machine']['cpu']}, {result['threads']} threads, "
                 f"{result['dtype']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
