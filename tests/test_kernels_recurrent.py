"""C++ recurrent kernels (fastrnn.LSTM etc., fastrnn.functional) against the NumPy oracle
(fastrnn.reference): outputs, final states, dx, d(initial state) and every parameter gradient.

float64 kernels are compared with the float64 reference at rtol 1e-10; float32 kernels with a
float64 reference run on the same (float32-rounded) weights and inputs at rtol 1e-4. Both
layers share their parameters through load_state_dict, so the comparisons isolate the numerics.

Also: thread-count determinism, concurrent calls from Python threads, dropout masks, the cells
and every SIMD level (FASTRNN_SIMD, one subprocess per level).
"""
import os
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest
from helpers import assert_close

import fastrnn as fr

MODES = ["rnn_tanh", "rnn_relu", "lstm", "gru"]
RTOL = {"float64": 1e-10, "float32": 1e-4}


# ------------------------------------------------------------------------------------ helpers


def make_pair(mode, I, H, *, num_layers=1, bidirectional=False, batch_first=False, bias=True,
              dtype="float64", dropout=0.0, seed=0):
    """(kernel layer in `dtype`, float64 reference layer with the kernel's exact parameters)."""
    kw = dict(num_layers=num_layers, bias=bias, batch_first=batch_first, dropout=dropout,
              bidirectional=bidirectional, seed=seed)
    if mode.startswith("rnn"):
        kw["nonlinearity"] = mode[4:]
        kern, ref = fr.RNN(I, H, dtype=dtype, **kw), fr.reference.RNN(I, H, dtype="float64", **kw)
    elif mode == "lstm":
        kern, ref = fr.LSTM(I, H, dtype=dtype, **kw), fr.reference.LSTM(I, H, dtype="float64", **kw)
    else:
        kern, ref = fr.GRU(I, H, dtype=dtype, **kw), fr.reference.GRU(I, H, dtype="float64", **kw)
    ref.load_state_dict(kern.state_dict())  # float32 params convert exactly to float64
    return kern, ref


def make_cell_pair(mode, I, H, *, bias=True, dtype="float64", seed=0):
    kw = dict(bias=bias, seed=seed)
    if mode.startswith("rnn"):
        kw["nonlinearity"] = mode[4:]
        kern, ref = fr.RNNCell(I, H, dtype=dtype, **kw), fr.reference.RNNCell(I, H, dtype="float64", **kw)
    elif mode == "lstm":
        kern, ref = fr.LSTMCell(I, H, dtype=dtype, **kw), fr.reference.LSTMCell(I, H, dtype="float64", **kw)
    else:
        kern, ref = fr.GRUCell(I, H, dtype=dtype, **kw), fr.reference.GRUCell(I, H, dtype="float64", **kw)
    ref.load_state_dict(kern.state_dict())
    return kern, ref


def lengths_for(rng, T, B):
    """Random lengths in [0, T] that include 0 and T whenever B allows (B = 1: T)."""
    if B == 1:
        return np.array([T])
    lengths = rng.integers(0, T + 1, B)
    lengths[0], lengths[-1] = 0, T
    if B > 2:
        lengths[1] = max(T - 1, 0)
    return rng.permutation(lengths)


def make_inputs(mode, T, B, I, H, L, D, batch_first, dtype, with_lengths, seed=0):
    """x, state, lengths, dy, dstate in `dtype` (random initial state and output gradients)."""
    rng = np.random.default_rng(seed)

    def rand(*shape, scale=1.0):
        return (scale * rng.standard_normal(shape)).astype(dtype)

    x = rand(*((B, T, I) if batch_first else (T, B, I)))
    S = (L * D, B, H)
    state = (rand(*S, scale=0.5), rand(*S, scale=0.5)) if mode == "lstm" else rand(*S, scale=0.5)
    dy = rand(*((B, T, D * H) if batch_first else (T, B, D * H)))
    dstate = (rand(*S), rand(*S)) if mode == "lstm" else rand(*S)
    lengths = lengths_for(rng, T, B) if with_lengths else None
    return x, state, lengths, dy, dstate


def flat(name, state):
    if isinstance(state, tuple):
        return {f"{name}[{i}]": s for i, s in enumerate(state)}
    return {name: state}


def run_layer(layer, x, state, lengths, dy, dstate):
    """Every result of inference, training forward and backward, by name."""
    y_call, s_call = layer(x, state, lengths)
    y, s, cache = layer.forward(x, state, lengths)
    dx, ds0 = layer.backward(cache, dy, dstate)
    out = {"y": y, "y (__call__)": y_call, "dx": dx}
    out.update(flat("state_n", s))
    out.update(flat("state_n (__call__)", s_call))
    out.update(flat("dstate0", ds0))
    out.update({f"grads[{k!r}]": g.copy() for k, g in layer.grads.items()})
    return out


def compare(got, want, rtol, tag, dtype=None):
    assert set(got) == set(want)
    worst = 0.0
    for name in want:
        if dtype is not None:
            assert got[name].dtype == np.dtype(dtype), f"{tag} {name}: dtype {got[name].dtype}, expected {dtype}"
        err = assert_close(got[name], want[name], rtol, name=f"{tag} {name}")
        worst = max(worst, err / max(float(np.max(np.abs(want[name]), initial=0.0)), 1e-3))
    return worst


def run_case(mode, T, B, I, H, *, num_layers=1, bidirectional=False, batch_first=False,
             with_lengths=False, dtype="float64", bias=True, seed=0):
    """Kernel and reference results of one configuration: (got, want)."""
    kern, ref = make_pair(mode, I, H, num_layers=num_layers, bidirectional=bidirectional,
                          batch_first=batch_first, bias=bias, dtype=dtype, seed=seed)
    D = 2 if bidirectional else 1
    args = make_inputs(mode, T, B, I, H, num_layers, D, batch_first, dtype, with_lengths, seed=seed + 1)
    return run_layer(kern, *args), run_layer(ref, *args)


def check_case(mode, T, B, I, H, dtype="float64", **kw):
    got, want = run_case(mode, T, B, I, H, dtype=dtype, **kw)
    tag = f"{mode} T={T} B={B} I={I} H={H} {kw} {dtype}:"
    return compare(got, want, RTOL[dtype], tag, dtype=dtype)


@pytest.fixture
def threads():
    """Set the thread count for one test; the previous count is restored afterwards."""
    old = fr.get_num_threads()
    yield fr.set_num_threads
    fr.set_num_threads(old)


@pytest.fixture(autouse=True)
def at_least_two_threads():
    """The threaded paths (directions on separate threads, unit blocks split) need >= 2 threads."""
    old = fr.get_num_threads()
    if old < 2:
        fr.set_num_threads(2)
    yield
    fr.set_num_threads(old)


# ------------------------------------------------------------------ the configuration matrix


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("with_lengths", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["tmajor", "bfirst"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("num_layers", [1, 2, 3], ids=lambda n: f"L{n}")
@pytest.mark.parametrize("mode", MODES)
def test_matrix(mode, num_layers, bidirectional, batch_first, with_lengths, dtype):
    """Full cross product on a small problem (H, I not multiples of 8, I != H)."""
    check_case(mode, 5, 4, 7, 13, dtype=dtype, num_layers=num_layers, bidirectional=bidirectional,
               batch_first=batch_first, with_lengths=with_lengths)


SIZES = [  # T, B, I, H
    (1, 1, 7, 13),     # one step, one sequence
    (1, 6, 7, 13),
    (9, 1, 7, 13),
    (4, 3, 13, 7),     # I > H
    (3, 2, 16, 32),    # whole vectors, no tails
    (2, 3, 1, 1),      # scalar features
    (20, 17, 33, 47),  # moderately large
    (1, 40, 9, 70),    # one step, yet big enough for a threaded time loop
]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("with_lengths", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("size", SIZES, ids=lambda s: "T{}B{}I{}H{}".format(*s))
@pytest.mark.parametrize("mode", MODES)
def test_sizes(mode, size, with_lengths, dtype):
    """Edge and moderately large sizes, 2 bidirectional layers (>= 2 threads)."""
    check_case(mode, *size, dtype=dtype, num_layers=2, bidirectional=True, with_lengths=with_lengths,
               batch_first=size[0] % 2 == 0)


@pytest.mark.parametrize("batch", range(1, 12))
@pytest.mark.parametrize("mode", ["lstm", "gru"])
def test_batch_row_blocks(mode, batch):
    """Every split of a batch into the step product's row blocks (8, 4 and the k-split 3/2/1
    remainders), forward and backward, with a hidden size that leaves a partial panel."""
    check_case(mode, 4, batch, 5, 37, dtype="float64", num_layers=1, bidirectional=False, with_lengths=False,
               batch_first=False)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("mode", MODES)
def test_no_bias(mode, dtype):
    check_case(mode, 6, 5, 7, 13, dtype=dtype, num_layers=2, bidirectional=True, with_lengths=True,
               bias=False)


# The time loop runs in one persistent OpenMP team once T*B*G*H*H*D >= 2^17 multiply-adds
# (below: the calling thread alone). Threads own ranges of hidden units cut on whole SIMD
# vectors (avx512: 16 float / 8 double; avx2: 8 / 4; baseline: 4 / 2), packed in panels of two
# vectors; with two directions and >= 2 threads the team is split between the directions,
# otherwise every thread takes a share of every direction. H = 70 is a tail at every level:
# some thread gets a last panel one vector wide, and a pointwise pass whose partial last
# vector runs as a whole one.
# (The per-step GEMM / pointwise thresholds of earlier kernel versions, B*G*H >= 32768 and
# B*G*H*H <= 262144, are covered by the same cases.)
THREADED = (6, 9, 20, 70)  # T, B, I, H: >= 2^17 MACs even for one rnn direction


@pytest.mark.parametrize("nthreads", [2, 3, 4])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("mode", MODES)
def test_threaded_time_loop(mode, bidirectional, dtype, nthreads, threads):
    """Unit blocks shared by 2-4 threads in one direction, or split between two directions
    with 1-2 threads each (odd counts give the directions unequal teams)."""
    T, B, I, H = THREADED
    assert T * B * H * H >= 2 ** 17
    threads(nthreads)
    check_case(mode, T, B, I, H, dtype=dtype, num_layers=2, bidirectional=bidirectional, with_lengths=True,
               batch_first=nthreads == 3)


LARGE = {  # mode: (T, B, I, H): large B*G*H per step (many panels per thread, B % 4 tails),
    #              GRU also T*B*H > 65536 (the parallel loop of its n-gate backward)
    "lstm": (3, 64, 24, 160),
    "gru": (3, 129, 20, 176),
    "rnn_tanh": (3, 258, 9, 130),
    "rnn_relu": (3, 258, 9, 130),
}


# With AVX-512 a forward step updates its units one panel's group at a time, right after their
# products, while a packed panel (H x two vectors) and a block of rows of h fit about an L1
# cache; with larger panels, and at the levels below AVX-512, it runs all of its products first
# and then one update (recurrent.cpp, step_groups; FASTRNN_GROUP_UPDATE=0|1 overrides the
# level's choice). H = 200 takes the first way where groups are on, H = 650 the second.
@pytest.mark.parametrize("hidden", [200, 650])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("mode", MODES)
def test_step_update_grouping(mode, dtype, hidden, threads):
    threads(2)
    check_case(mode, 3, 5, 9, hidden, dtype=dtype, num_layers=1, bidirectional=False, with_lengths=True)


GROUPING_SCRIPT = r"""
import sys, numpy as np, fastrnn as fr
fr.set_num_threads(2)
out = {}
for mode, cls in (("rnn_tanh", fr.RNN), ("rnn_relu", fr.RNN), ("lstm", fr.LSTM), ("gru", fr.GRU)):
    for dtype in ("float32", "float64"):
        for H in (24, 200):
            kw = {"nonlinearity": mode[4:]} if cls is fr.RNN else {}
            layer = cls(9, H, dtype=dtype, seed=1, **kw)
            rng = np.random.default_rng(2)
            x = rng.standard_normal((4, 13, 9)).astype(dtype)
            lengths = np.array([4, 1, 2, 4, 0, 3, 4, 4, 1, 2, 3, 4, 4])
            y, state = layer(x, lengths=lengths)
            y_train, state_train, _ = layer.forward(x, lengths=lengths)
            tag = f"{mode}-{dtype}-{H}"
            out[tag + "-y"], out[tag + "-y-train"] = y, y_train
            for i, s in enumerate(state if isinstance(state, tuple) else (state,)):
                out[f"{tag}-state{i}"] = s
out["group_update"] = np.array(fr.build_info()["step_group_update"])
np.savez(sys.argv[1], **out)
"""


def test_step_update_grouping_changes_no_result(tmp_path):
    """The forward step's update per group of units and once per step give the same bits, at any
    SIMD level: each panel's sums are its own and the update is per unit."""
    runs = {}
    for flag in ("0", "1"):
        path = tmp_path / f"groups{flag}.npz"
        env = dict(os.environ, FASTRNN_GROUP_UPDATE=flag)
        proc = subprocess.run([sys.executable, "-c", GROUPING_SCRIPT, str(path)], env=env, capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        runs[flag] = dict(np.load(path))
        assert runs[flag].pop("group_update") == (flag == "1"), "FASTRNN_GROUP_UPDATE was not applied"
    bad = [f"{k}: max abs difference {np.max(np.abs(v - runs['1'][k])):.3e}"
           for k, v in runs["0"].items() if not np.array_equal(v, runs["1"][k])]
    print(f"{len(runs['0'])} arrays compared")
    assert not bad, "update per group vs once per step: " + ", ".join(bad)


# The few units past the last whole vector of H (H % lanes <= lanes / 8, while B times them
# <= 64) take dot products over their rows of w_hh instead of a packed panel, and the threads
# split the whole vectors without them (recurrent.cpp, dense_tail). H = 129 and 65 take that
# way for float32 at AVX-512 and AVX2 and float64 at AVX-512, H = 130 for float32 at AVX-512;
# B = 65 at H = 129 and H = 131, 132 take panels; T = 9 splits the LSTM and GRU steps between
# two threads.
@pytest.mark.parametrize("size", [(9, 1, 11, 129), (9, 3, 11, 65), (9, 2, 11, 130), (9, 4, 11, 131),
                                  (9, 1, 11, 132), (3, 65, 11, 129)], ids=lambda s: "T{}B{}I{}H{}".format(*s))
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("mode", MODES)
def test_dense_tail_units(mode, dtype, size, threads):
    threads(2)
    check_case(mode, *size, dtype=dtype, num_layers=2, bidirectional=False, with_lengths=size[1] > 1)


# Two threads sharing one direction with unequal vectors of units, far enough apart (H = 264:
# 9 + 8 vectors for float32 on AVX-512, 17 + 16 for float64 on AVX-512 and float32 on AVX2;
# H = 333: 11 + 10 for float32 on AVX-512; the other splits are even): the lighter
# thread projects the rows of the later steps for the other's units as well as its own, while
# it waits at the barrier (recurrent.cpp, the balance). B = 64 brings RNN (one gate) past the
# threshold; I = 5 hands the heavier thread's whole projection but its first steps' rows over.
@pytest.mark.parametrize("size", [(9, 24, 13, 264), (9, 64, 5, 264), (4, 17, 65, 333)],
                         ids=lambda s: "T{}B{}I{}H{}".format(*s))
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("mode", MODES)
def test_projection_balance(mode, dtype, size, threads):
    threads(2)
    check_case(mode, *size, dtype=dtype, num_layers=2, bidirectional=False, with_lengths=True)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("mode", MODES)
def test_large_step(mode, dtype, threads):
    T, B, I, H = LARGE[mode]
    threads(2)
    check_case(mode, T, B, I, H, dtype=dtype, num_layers=2, bidirectional=True, with_lengths=True)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_large_batch_small_hidden(dtype, threads):
    """B*G*H = 32768 with H = 8: a single unit block per direction, 4 threads requested."""
    T, B, I, H = 3, 1024, 5, 8
    threads(4)
    check_case("lstm", T, B, I, H, dtype=dtype, num_layers=2, bidirectional=True, with_lengths=True)


# The input projection runs in row blocks of ~128 KiB of x (24 rows at I = 600 in float64):
# inside the time loop's team (H = 70, every thread has units) or, for a loop too small to
# split (H = 13: B*G*H*H < 2^13 per step), as blocks shared by all threads before it.
@pytest.mark.parametrize("size", [(40, 8, 600, 13), (12, 8, 600, 70)],
                         ids=["blocks-before-loop", "blocks-in-loop"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("mode", ["lstm", "gru"])
def test_input_projection_row_blocks(mode, dtype, size, threads):
    threads(2)
    check_case(mode, *size, dtype=dtype, num_layers=1, bidirectional=size[3] == 70, with_lengths=True)


def test_grads_accumulate():
    """backward ADDS into layer.grads (the kernel's GEMMs run with beta = 1)."""
    kern, ref = make_pair("gru", 7, 13, num_layers=2, bidirectional=True)
    args = make_inputs("gru", 5, 4, 7, 13, 2, 2, False, "float64", True, seed=3)
    for layer in (kern, ref):
        for _ in range(2):
            _, _, cache = layer.forward(*args[:3])
            layer.backward(cache, *args[3:])
    for k in ref.grads:
        assert_close(kern.grads[k], ref.grads[k], 1e-10, name=f"twice-accumulated grads[{k!r}]")
    kern.zero_grad()
    assert not any(g.any() for g in kern.grads.values())
    _, _, cache = kern.forward(*args[:3])
    kern.backward(cache, *args[3:])
    for k in ref.grads:
        assert_close(2 * kern.grads[k], ref.grads[k], 1e-10, name=f"grads[{k!r}] after zero_grad")


# ---------------------------------------------------------------------------------- dropout


def functional_weights(layer):
    return layer._weights(layer.params)


DROPOUT_CASES = [(mode, 3, (5, 4, 7, 13)) for mode in MODES] + [("gru", 2, (2, 1040, 9, 64))]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("mode, L, size", DROPOUT_CASES, ids=lambda v: str(v).replace(" ", ""))
def test_functional_dropout_masks(mode, L, size, dtype):
    """Explicit dropout masks: fr.functional == fr.reference.functional, forward and backward.
    The large case pushes the mask multiply (T*B*D*H > 2^18) into its OpenMP loop."""
    T, B, I, H = size
    D, p = 2, 0.35
    assert B < 1000 or T * B * D * H > 2 ** 18
    kern, _ = make_pair(mode, I, H, num_layers=L, bidirectional=True, dtype=dtype)
    w32 = functional_weights(kern)
    w64 = [tuple(None if a is None else a.astype(np.float64) for a in e) for e in w32]
    x, state, lengths, dy, dstate = make_inputs(mode, T, B, I, H, L, D, False, dtype, True, seed=5)
    rng = np.random.default_rng(9)
    masks = [((rng.random((T, B, D * H)) >= p) / (1 - p)).astype(dtype) for _ in range(L - 1)]
    kw = dict(num_layers=L, bidirectional=True, dropout_masks=masks)
    y, s, cache = fr.functional.recurrent_forward(mode, x, w32, state, lengths, **kw)
    dx, ds0, grads = fr.functional.recurrent_backward(cache, dy, dstate)
    up = (lambda a: a.astype(np.float64))
    st64 = tuple(map(up, state)) if mode == "lstm" else up(state)
    ds64 = tuple(map(up, dstate)) if mode == "lstm" else up(dstate)
    kw64 = dict(kw, dropout_masks=[up(m) for m in masks])
    ry, rs, rcache = fr.reference.functional.recurrent_forward(mode, up(x), w64, st64, lengths, **kw64)
    rdx, rds0, rgrads = fr.reference.functional.recurrent_backward(rcache, up(dy), ds64)
    got = {"y": y, "dx": dx, **flat("state_n", s), **flat("dstate0", ds0)}
    want = {"y": ry, "dx": rdx, **flat("state_n", rs), **flat("dstate0", rds0)}
    for k, (g, r) in enumerate(zip(grads, rgrads)):
        for j, name in enumerate(("dw_ih", "dw_hh", "db_ih", "db_hh")):
            got[f"grads[{k}] {name}"], want[f"grads[{k}] {name}"] = g[j], r[j]
    compare(got, want, RTOL[dtype], f"dropout {mode} {size} {dtype}:", dtype=dtype)
    # the masks were applied: without them the output differs
    y0, _, _ = fr.functional.recurrent_forward(mode, x, w32, state, lengths, num_layers=L, bidirectional=True)
    assert not np.allclose(y0, y)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("mode", MODES)
def test_layer_dropout_same_seed_same_masks(mode, dtype):
    """Layers of both backends built with one seed draw the same masks (two calls in a row)."""
    T, B, I, H, L = 6, 5, 7, 13, 3
    kern, ref = make_pair(mode, I, H, num_layers=L, bidirectional=True, dtype=dtype, dropout=0.4, seed=11)
    fresh = make_pair(mode, I, H, num_layers=L, bidirectional=True, dtype="float64", dropout=0.4, seed=11)[1]
    for k in ref.params:  # one seed: the same initial parameters (rounded to the layer's dtype)
        assert np.array_equal(fresh.params[k].astype(dtype), kern.params[k])
    for call in range(2):
        x, state, lengths, dy, dstate = make_inputs(mode, T, B, I, H, L, 2, False, dtype, True, seed=20 + call)
        y, s, cache = kern.forward(x, state, lengths)
        ry, rs, rcache = ref.forward(x, state, lengths)
        dx, ds0 = kern.backward(cache, dy, dstate)
        rdx, rds0 = ref.backward(rcache, dy, dstate)
        got = {"y": y, "dx": dx, **flat("state_n", s), **flat("dstate0", ds0)}
        want = {"y": ry, "dx": rdx, **flat("state_n", rs), **flat("dstate0", rds0)}
        got.update({f"grads[{k!r}]": kern.grads[k] for k in kern.grads})
        want.update({f"grads[{k!r}]": ref.grads[k] for k in ref.grads})
        compare(got, want, RTOL[dtype], f"layer dropout {mode} call {call} {dtype}:", dtype=dtype)
        y_call, _ = kern(x, state, lengths)  # no dropout at inference: differs from forward
        assert not np.allclose(y_call, y)


# ------------------------------------------------------------------------------------ cells


# B, I, H. From 32 KiB of weights a step at B <= 16 is split by hidden units between the
# caller and a helper thread (LSTM and GRU from (16, 33, 47), every mode from (3, 100, 120)),
# with halves of unequal size.
# At B=1 the products of K = 64, 128 and 256 take specialised code: (1, 128, 128), (1, 64, 256).
CELL_SIZES = [(1, 7, 13), (6, 7, 13), (16, 33, 47), (17, 33, 47), (40, 16, 32),
              (3, 100, 120), (1, 128, 128), (1, 64, 256), (1, 40, 300),
              (2, 20, 600)]  # the last: zeros on the heap


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("size", CELL_SIZES, ids=lambda s: "B{}I{}H{}".format(*s))
@pytest.mark.parametrize("mode", MODES)
def test_cells(mode, size, bias, dtype):
    """Batches up to 16 take the cell's own small GEMM, larger ones the BLAS."""
    B, I, H = size
    kern, ref = make_cell_pair(mode, I, H, bias=bias, dtype=dtype, seed=2)
    rng = np.random.default_rng(4)

    def rand(*shape):
        return rng.standard_normal(shape).astype(dtype)

    lstm = mode == "lstm"
    state = (rand(B, H), rand(B, H)) if lstm else rand(B, H)
    xs = [rand(B, I) for _ in range(3)]
    dnext = (rand(B, H), rand(B, H)) if lstm else rand(B, H)
    results = []
    for cell in (kern, ref):
        out = {}
        out.update(flat("call(x, None)", cell(xs[0])))
        out.update(flat("call(x, state)", cell(xs[0], state)))
        if lstm:
            out.update(flat("call(x, (h, None))", cell(xs[0], (state[0], None))))
            out.update(flat("call(x, (None, c))", cell(xs[0], (None, state[1]))))
        # three training steps, then backward through them in reverse
        s, caches = state, []
        for t, x in enumerate(xs):
            s, c = cell.forward(x, s)
            caches.append(c)
            out.update(flat(f"forward step {t}", s))
        d = dnext
        for t in reversed(range(3)):
            dx, d = cell.backward(caches[t], d)
            out[f"dx step {t}"] = dx
            out.update(flat(f"dstate step {t}", d))
        out.update({f"grads[{k!r}]": g.copy() for k, g in cell.grads.items()})
        # forward with state None, backward with dstate None (LSTM: a partial tuple)
        _, c = cell.forward(xs[1])
        dx, d = cell.backward(c, (dnext[0], None) if lstm else None)
        out["dx (zero state)"] = dx
        out.update(flat("dstate (zero state)", d))
        results.append(out)
    compare(results[0], results[1], RTOL[dtype], f"{mode} cell {size} bias={bias} {dtype}:", dtype=dtype)


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("mode", MODES)
def test_cell_call_in_c_matches_shared_call(mode, bias):
    """The kernel-bound cells' __call__ is the shared Python __call__ rewritten in C: same
    results for every way of passing x and the state, replaced parameter arrays are used,
    and the same errors."""
    from fastrnn.layers import recurrent as shared
    cell = make_cell_pair(mode, 20, 33, bias=bias, dtype="float32", seed=3)[0]
    python_call = getattr(shared, type(cell).__name__).__call__
    assert type(cell).__call__ is not python_call
    rng = np.random.default_rng(6)
    x = rng.standard_normal((2, 20))  # float64 into a float32 cell: converted
    h = rng.standard_normal((2, 33)).astype(np.float32)
    state = (h, h * 2) if mode == "lstm" else h
    calls = [((x,), {}), ((x, state), {}), ((x.tolist(), state), {}), ((), dict(x=x, state=state)),
             ((np.asfortranarray(x.astype(np.float32)),), dict(state=None))]  # not C-contiguous
    for args, kw in calls:
        for a, b in zip(_outputs(cell(*args, **kw)), _outputs(python_call(cell, *args, **kw))):
            assert a.dtype == np.float32 and np.array_equal(a, b), (args, kw)
    cell.params["weight_hh"] = cell.params["weight_hh"] * 0.5  # a new array in the table
    for a, b in zip(_outputs(cell(x, state)), _outputs(python_call(cell, x, state))):
        assert np.array_equal(a, b)
    for bad in ((x.astype(int), state), (x[0], state)):
        with pytest.raises((TypeError, ValueError), match="^x: "):
            cell(*bad)
    with pytest.raises(TypeError, match="at most 2 arguments"):  # x, state
        cell(x, state, None)
    with pytest.raises(TypeError, match="'x'"):
        cell(state=state)
    with pytest.raises(TypeError, match="multiple values for argument 'x'"):
        cell(x, x=x)
    with pytest.raises(TypeError, match="unexpected keyword argument 'h'"):
        cell(x, h=state)
    # the C function is the class's call slot, and a user's subclass inherits it
    assert type(cell).__call__ is fr._core.CellCall.__call__
    kw = dict(nonlinearity=mode[4:]) if mode.startswith("rnn") else {}
    sub = type("Sub", (type(cell),), {})(20, 33, bias=bias, dtype="float32", **kw)
    sub.load_state_dict(cell.state_dict())
    for a, b in zip(_outputs(sub(x, state)), _outputs(python_call(cell, x, state))):
        assert np.array_equal(a, b)
    with pytest.raises(TypeError, match="cannot create"):
        fr._core.CellCall()


def _cell_calls(cell, xs, states):
    return [cell(x, s) for x, s in zip(xs, states)]


@pytest.mark.parametrize("mode", MODES)
def test_cells_from_many_threads(mode):
    """Python threads calling split cell steps at once (the helper thread serves one call at a
    time; the others run both halves themselves) get exactly the results of serial calls. At
    B=4, I=H=256 the steps are big enough to run with the GIL released."""
    rng = np.random.default_rng(5)
    cells = [make_cell_pair(mode, 256, 256, dtype="float32", seed=s)[0] for s in range(4)]
    lstm = mode == "lstm"
    work = []
    for cell in cells:
        xs = [rng.standard_normal((4, 256)).astype(np.float32) for _ in range(200)]
        hs = [rng.standard_normal((4, 256)).astype(np.float32) for _ in range(200)]
        work.append((cell, xs, [(h, h * 0.5) for h in hs] if lstm else hs))
    serial = [_cell_calls(*w) for w in work]
    got = [None] * len(work)

    def run(i):
        got[i] = _cell_calls(*work[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(work))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, (a, b) in enumerate(zip(serial, got)):
        for k, (ra, rb) in enumerate(zip(a, b)):
            for j, (u, v) in enumerate(zip(_outputs(ra), _outputs(rb))):
                assert np.array_equal(u, v), (f"{mode} thread {i} call {k} output {j}: worst difference "
                                              f"{np.max(np.abs(u - v)):.3g}")


def _outputs(r):
    return r if isinstance(r, tuple) else (r,)


CELL_FORK_SCRIPT = r"""
import os, sys
import numpy as np
import fastrnn as fr
cell = fr.LSTMCell(128, 128, seed=1)
x = np.random.default_rng(0).standard_normal((1, 128)).astype(np.float32)
want = cell(x)  # the parent's helper thread is running from here on
for _ in range(100):
    cell(x)
pid = os.fork()
if pid == 0:
    got = [cell(x) for _ in range(100)]
    os._exit(0 if all(np.array_equal(g[0], want[0]) and np.array_equal(g[1], want[1]) for g in got) else 3)
_, status = os.waitpid(pid, 0)
print("child exit", os.waitstatus_to_exitcode(status))
"""


def test_cell_after_fork():
    """A forked child (no helper thread of its own) runs split cell steps correctly."""
    proc = subprocess.run([sys.executable, "-c", CELL_FORK_SCRIPT], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "child exit 0", proc.stdout + proc.stderr


# ------------------------------------------------------------------------ threads and SIMD


def _functional_run(mode, w, x, state, lengths, dy, dstate, L=2, bidirectional=True):
    """Forward + backward + inference through fr.functional: [(name, array), ...]."""
    kw = dict(num_layers=L, bidirectional=bidirectional)
    y, s, cache = fr.functional.recurrent_forward(mode, x, w, state, lengths, **kw)
    dx, ds0, grads = fr.functional.recurrent_backward(cache, dy, dstate)
    yc, sc = fr.functional.recurrent(mode, x, w, state, lengths, **kw)
    out = {"y": y, "dx": dx, "y (recurrent)": yc}
    out.update(flat("state_n", s))
    out.update(flat("dstate0", ds0))
    out.update(flat("state_n (recurrent)", sc))
    for k, entry in enumerate(grads):
        for name, g in zip(("dw_ih", "dw_hh", "db_ih", "db_hh"), entry):
            out[f"grads[{k}] {name}"] = g
    return list(out.items())


THREAD_CASES = {  # mode, T, B, I, H, bidirectional
    "small": ("lstm", 7, 5, 7, 13, True),                 # one thread runs the time loop
    "gru-small": ("gru", 7, 5, 7, 13, True),
    "threaded": ("lstm", *THREADED, True),                # a team per direction
    "gru-threaded": ("gru", *THREADED, True),
    "threaded-uni": ("lstm", *THREADED, False),           # threads share one direction's units
    "gru-threaded-uni": ("gru", *THREADED, False),
    "parallel": ("lstm", 3, 64, 24, 160, True),           # many unit blocks per thread
    "gru-parallel": ("gru", 3, 128, 20, 176, True),
    "lstm-parallel-short": ("lstm", 2, 64, 16, 128, False),
    "projection-blocks": ("lstm", 40, 8, 600, 13, False),  # 1 thread: in the loop; 2: before it
    # B = 1 on 2 threads: the projection runs in row groups while a thread waits at the barrier;
    # T = 233 at I = 77: two of the projection's row blocks (208 rows in float64), the second
    # ending in a block of 9 rows
    "lazy-projection": ("lstm", 233, 1, 77, 129, False),
    "gru-lazy-projection": ("gru", 19, 1, 30, 64, False),  # last group: 11 rows in one block
    # the units past the last whole vector as dot products with the last thread (dense_tail)
    "gru-dense-tail": ("gru", 9, 3, 11, 65, False),
    "rnn-dense-tail": ("rnn_tanh", 9, 2, 11, 129, False),
    # two threads with 17 and 16 vectors of units (float64): the lighter one projects rows of
    # the later steps for both (the balance of recurrent_forward)
    "balance": ("lstm", 9, 24, 13, 264, False),
    "gru-balance": ("gru", 9, 24, 13, 264, False),
    # the backward's dX in row groups, some taken by the lighter thread while it waits at a
    # step's barrier (17 + 16 vectors), the rest after the loop; I = 65 and 66 leave one and
    # two columns past the last whole vector, taken as dot products (recurrent_backward)
    # two threads share each step's products, panel by panel (recurrent_forward, `share`);
    # H = 200 leaves the first thread a last panel one vector wide
    "shared-products": ("lstm", 5, 16, 20, 256, False),
    "gru-shared-products": ("gru", 5, 24, 20, 200, False),
    "dx-pieces": ("lstm", 9, 17, 65, 264, False),
    "rnn-dx-pieces": ("rnn_tanh", 7, 19, 66, 264, False),
}


@pytest.mark.parametrize("case", list(THREAD_CASES))
def test_thread_count_does_not_change_results(case, threads):
    mode, T, B, I, H, bi = THREAD_CASES[case]
    kern, _ = make_pair(mode, I, H, num_layers=2, bidirectional=bi, seed=1)
    args = make_inputs(mode, T, B, I, H, 2, 1 + bi, False, "float64", True, seed=2)
    results = {}
    for n in (1, 2):
        threads(n)
        assert fr.get_num_threads() == n and fr.build_info()["num_threads"] == n
        results[n] = _functional_run(mode, functional_weights(kern), *args, bidirectional=bi)
    for n in (2,):
        bad = [f"{name} (max abs difference {np.max(np.abs(a - b)):.3e})"
               for (name, a), (_, b) in zip(results[1], results[n]) if not np.array_equal(a, b)]
        assert not bad, f"{case}: float64 results with {n} threads differ from 1 thread: " + ", ".join(bad)


@pytest.mark.parametrize("case", ["small", "gru-small", "threaded", "gru-threaded-uni", "lstm-parallel-short"])
def test_concurrent_python_threads(case):
    """4 Python threads calling the kernels at once (GIL released) = the same calls in series."""
    mode, T, B, I, H, bi = THREAD_CASES[case]
    kern, _ = make_pair(mode, I, H, num_layers=2, bidirectional=bi, seed=1)
    w = functional_weights(kern)  # shared, read-only
    inputs = [make_inputs(mode, T, B, I, H, 2, 1 + bi, False, "float64", True, seed=10 + i) for i in range(4)]
    serial = [_functional_run(mode, w, *args, bidirectional=bi) for args in inputs]
    reps = 2 if "parallel" in case or "threaded" in case else 6
    barrier = threading.Barrier(4)
    results, errors = {}, []

    def work(i):
        try:
            barrier.wait()
            results[i] = [_functional_run(mode, w, *inputs[i], bidirectional=bi) for _ in range(reps)]
        except BaseException as exc:  # reported below
            errors.append((i, exc))

    workers = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    assert not errors, errors
    for i in range(4):
        for r, run in enumerate(results[i]):
            for (name, a), (_, b) in zip(run, serial[i]):
                assert np.array_equal(a, b), (f"{case}: thread {i} repetition {r} {name} differs from "
                                              f"the serial call: max abs difference {np.max(np.abs(a - b)):.3e}")
    for i in range(4):  # the threads' inputs differ, so must their results
        assert i == 0 or not np.array_equal(serial[0][0][1], serial[i][0][1])


SIMD_SCRIPT = textwrap.dedent(r"""
    import sys
    sys.path.insert(0, sys.argv[1])
    import numpy as np
    import fastrnn as fr
    from test_kernels_recurrent import THREADED, check_case, test_cells
    print(fr.build_info()["simd"])
    fr.set_num_threads(2)
    worst = {}
    for mode in ("lstm", "gru", "rnn_tanh", "rnn_relu"):
        for dtype in ("float32", "float64"):
            for size, bi in (((6, 5, 7, 13), True), ((4, 3, 33, 47), True), ((1, 1, 16, 32), True),
                             (THREADED, False), (THREADED, True)):
                err = check_case(mode, *size, dtype=dtype, num_layers=2, bidirectional=bi, with_lengths=True)
                worst[dtype] = max(worst.get(dtype, 0.0), err)
            for size in ((3, 33, 47), (17, 33, 47), (1, 40, 300), (1, 64, 256)):
                test_cells(mode, size, True, dtype)
    print(worst)
""")

LEVELS = ["baseline", "avx2", "avx512"]


def native_simd_level():
    env = {k: v for k, v in os.environ.items() if k != "FASTRNN_SIMD"}
    if "FASTRNN_SIMD" not in os.environ:
        return fr.build_info()["simd"]
    out = subprocess.run([sys.executable, "-c", "import fastrnn; print(fastrnn.build_info()['simd'])"],
                         env=env, capture_output=True, text=True, check=True)
    return out.stdout.strip()


@pytest.mark.parametrize("level", ["avx2", "baseline"])
def test_forced_simd_level(level):
    """FASTRNN_SIMD forces a lower ISA level; its kernels match the reference too."""
    native = native_simd_level()
    assert native in LEVELS
    expected = LEVELS[min(LEVELS.index(level), LEVELS.index(native))]
    env = dict(os.environ, FASTRNN_SIMD=level)
    here = os.path.dirname(os.path.abspath(__file__))
    proc = subprocess.run([sys.executable, "-c", SIMD_SCRIPT, here], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, f"FASTRNN_SIMD={level}:\n{proc.stdout}\n{proc.stderr}"
    lines = proc.stdout.split("\n")
    assert lines[0] == expected, f"FASTRNN_SIMD={level}: build_info()['simd'] = {lines[0]!r}, expected {expected!r}"


# Unit 20 of H = 21 is left over after the whole vectors of float32 units at every SIMD width
# (4, 8 or 16 floats), so the training forward computes it unit by unit (activations.h's scalar
# functions in a `#pragma omp simd` loop) while unit 4 runs in a vector (the vector functions);
# inference moves the leftover into a vector. Given unit 4's weights and biases in every gate,
# unit 20 must come out with exactly unit 4's bits, in both passes.
VECTOR_TAIL_SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    import fastrnn as fr
    H, I, T, B = 21, 6, 9, 3
    bad = []
    for mode in ("rnn_tanh", "rnn_relu", "lstm", "gru"):
        kw = dict(nonlinearity=mode[4:]) if mode.startswith("rnn") else {}
        cls = fr.RNN if mode.startswith("rnn") else (fr.LSTM if mode == "lstm" else fr.GRU)
        layer = cls(I, H, dtype="float32", seed=3, **kw)
        G = {"lstm": 4, "gru": 3}.get(mode, 1)
        for p in layer.params.values():
            p *= 6  # larger weights: the gates saturate as well as pass their linear range
            for g in range(G):
                p[g * H + 20] = p[g * H + 4]
        x = np.random.default_rng(5).standard_normal((T, B, I)).astype(np.float32)
        w = layer._weights(layer.params)
        y_train = fr.functional.recurrent_forward(mode, x, w)[0]
        y_infer = fr.functional.recurrent(mode, x, w)[0]
        for name, y in (("training", y_train), ("inference", y_infer)):
            if not np.array_equal(y[..., 20], y[..., 4]):
                d = np.abs(y[..., 20] - y[..., 4])
                bad.append(f"{mode} {name}: unit 20 differs from unit 4 by up to {d.max():.3e} "
                           f"at (t, b) = {np.unravel_index(d.argmax(), d.shape)}")
        if not np.array_equal(y_train, y_infer):
            d = np.abs(y_train - y_infer)
            bad.append(f"{mode}: training and inference differ by up to {d.max():.3e} "
                       f"at (t, b, unit) = {np.unravel_index(d.argmax(), d.shape)}")
        assert np.abs(y_train).max() > 0.5, mode  # not a trivially zero output
    print(fr.build_info()["simd"])
    print("\\n".join(bad))
    sys.exit(1 if bad else 0)
""")


@pytest.mark.parametrize("level", ["native", "avx2", "baseline"])
def test_vector_and_unit_activations_agree(level):
    env = dict(os.environ)
    if level != "native":
        env["FASTRNN_SIMD"] = level
    proc = subprocess.run([sys.executable, "-c", VECTOR_TAIL_SCRIPT], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, f"{level}:\n{proc.stdout}\n{proc.stderr}"


def test_thread_limit_smaller_than_team_gives_same_result(tmp_path):
    """Under OMP_THREAD_LIMIT=1 a 2-thread plan must fall back to one thread, not skip slices."""
    code = (
        "import numpy as np, fastrnn as fr\n"
        "fr.set_num_threads(2)\n"
        "m = fr.LSTM(64, 256, seed=0, dtype='float64')\n"
        "x = np.random.default_rng(1).standard_normal((30, 4, 64))\n"
        "y, _ = m(x)\n"
        f"np.save({str(tmp_path / 'y.npy')!r}, y)\n"
        "cell = fr.LSTMCell(128, 128, seed=0, dtype='float64')\n"  # big enough for the 2-thread cell
        "h, c = cell(x[0, :, :64].repeat(2, axis=1), (np.ones((4, 128)), np.ones((4, 128))))\n"
        f"np.save({str(tmp_path / 'h.npy')!r}, h)\n"
    )
    env = dict(os.environ, OMP_THREAD_LIMIT="1")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    m = fr.LSTM(64, 256, seed=0, dtype="float64")
    x = np.random.default_rng(1).standard_normal((30, 4, 64))
    want, _ = m(x)
    got = np.load(tmp_path / "y.npy")
    err = np.abs(got - want).max()
    print(f"OMP_THREAD_LIMIT=1 vs default threads: max abs difference {err:.3e}")
    assert err == 0.0
    cell = fr.LSTMCell(128, 128, seed=0, dtype="float64")
    want_h, _ = cell(x[0, :, :64].repeat(2, axis=1), (np.ones((4, 128)), np.ones((4, 128))))
    err = np.abs(np.load(tmp_path / "h.npy") - want_h).max()
    print(f"cell step, OMP_THREAD_LIMIT=1 vs default threads: max abs difference {err:.3e}")
    assert err == 0.0
