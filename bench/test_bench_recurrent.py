"""Recurrent layers and cells: fastrnn vs the NumPy reference vs PyTorch, float32.

Shapes come from bench/bench_grid.json ("recurrent": [T, B, I, H], "cell_step": [B, I, H]).
One benchmark group per (cell, mode, shape), so pytest-benchmark lists the backends side by
side. The reference runs only on the two smallest recurrent shapes (it is slow).

- forward:           layer(x)                      (inference; torch under no_grad)
- forward+backward:  y, _, c = layer.forward(x); layer.backward(c, dy)
                     (torch: x requires grad, y.backward(dy): dx and all weight gradients)
- cell_step:         one call cell(x, state)        (torch under no_grad)
"""
import json
import os

import numpy as np
import pytest

import fastrnn as fr

with open(os.path.join(os.path.dirname(__file__), "bench_grid.json")) as _f:  # copy of /work/shared/bench_grid.json
    GRID = json.load(_f)
CELLS = GRID["cells"]            # rnn, gru, lstm
MODES = GRID["modes"]            # forward, forward+backward
SHAPES = [tuple(s) for s in GRID["recurrent"]]
CELL_SHAPES = [tuple(s) for s in GRID["cell_step"]]
# the two cheapest shapes by work per call, T*B*H*(I+H)
SMALL = sorted(SHAPES, key=lambda s: s[0] * s[1] * s[3] * (s[2] + s[3]))[:2]
BACKENDS = ["fastrnn", "reference", "torch"]

FR_LAYERS = {"rnn": fr.RNN, "gru": fr.GRU, "lstm": fr.LSTM}
REF_LAYERS = {"rnn": fr.reference.RNN, "gru": fr.reference.GRU, "lstm": fr.reference.LSTM}
FR_CELLS = {"rnn": fr.RNNCell, "gru": fr.GRUCell, "lstm": fr.LSTMCell}
REF_CELLS = {"rnn": fr.reference.RNNCell, "gru": fr.reference.GRUCell, "lstm": fr.reference.LSTMCell}
TORCH_NAMES = {"rnn": ("RNN", "RNNCell"), "gru": ("GRU", "GRUCell"), "lstm": ("LSTM", "LSTMCell")}


def shape_id(s):
    return "-".join(f"{k}{v}" for k, v in zip("TBIH", s))


def cell_shape_id(s):
    return "-".join(f"{k}{v}" for k, v in zip("BIH", s))


def rand(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("cell", CELLS)
def test_recurrent(benchmark, request, cell, mode, shape, backend):
    T, B, I, H = shape
    if backend == "reference" and shape not in SMALL:
        pytest.skip("the reference runs on the two smallest shapes only")
    benchmark.group = f"{cell} {mode} {shape_id(shape)}"
    benchmark.extra_info.update(cell=cell, mode=mode, shape=list(shape), backend=backend,
                                threads=fr.get_num_threads(), simd=fr.build_info()["simd"])
    x, dy = rand(T, B, I), rand(T, B, H, seed=1)

    if backend == "torch":
        torch = request.getfixturevalue("torch")
        mod = getattr(torch.nn, TORCH_NAMES[cell][0])(I, H, dtype=torch.float32)
        xt, dyt = torch.from_numpy(x), torch.from_numpy(dy)
        if mode == "forward":
            def run():
                with torch.no_grad():
                    return mod(xt)
        else:
            xg = xt.clone().requires_grad_(True)

            def run():
                y, _ = mod(xg)
                y.backward(dyt)
        benchmark(run)
        return

    layer = (FR_LAYERS if backend == "fastrnn" else REF_LAYERS)[cell](I, H, dtype="float32", seed=0)
    if mode == "forward":
        benchmark(layer, x)
    else:
        def run():
            _, _, cache = layer.forward(x)
            layer.backward(cache, dy)
        benchmark(run)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", CELL_SHAPES, ids=cell_shape_id)
@pytest.mark.parametrize("cell", CELLS)
def test_cell_step(benchmark, request, cell, shape, backend):
    B, I, H = shape
    benchmark.group = f"{cell} cell_step {cell_shape_id(shape)}"
    benchmark.extra_info.update(cell=cell, mode="cell_step", shape=list(shape), backend=backend,
                                threads=fr.get_num_threads(), simd=fr.build_info()["simd"])
    x, h, c = rand(B, I), rand(B, H, seed=1), rand(B, H, seed=2)
    state = (h, c) if cell == "lstm" else h
    if backend == "torch":
        torch = request.getfixturevalue("torch")
        mod = getattr(torch.nn, TORCH_NAMES[cell][1])(I, H, dtype=torch.float32)
        xt = torch.from_numpy(x)
        st = tuple(torch.from_numpy(s) for s in state) if cell == "lstm" else torch.from_numpy(state)

        def run():
            with torch.no_grad():
                return mod(xt, st)
        benchmark(run)
        return
    layer = (FR_CELLS if backend == "fastrnn" else REF_CELLS)[cell](I, H, dtype="float32", seed=0)
    benchmark(layer, x, state)
