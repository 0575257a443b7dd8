"""Attention: fastrnn vs the NumPy reference vs PyTorch, float32.

Shapes come from bench/bench_grid.json ("attention": [B, heads, L, E, causal], E = head dim).
One benchmark group per (op, mode, shape), so pytest-benchmark lists the backends side by
side. The reference runs only on the smallest shape (it materializes L x S and is slow).

- sdpa forward:            F.scaled_dot_product_attention(q, k, v, is_causal)   (torch under no_grad)
- sdpa forward+backward:   out, c = F.scaled_dot_product_attention_forward(...);
                           F.scaled_dot_product_attention_backward(c, dout)
                           (torch: q, k, v require grad, out.backward(dout))
- mha forward / forward+backward: self-attention, embed_dim = heads * E, batch_first,
  need_weights=False (PyTorch's fused path); causal shapes pass the causal attn_mask with
  is_causal=True to both libraries. forward+backward includes every parameter gradient.

Run:  python -m pytest bench/test_bench_attention.py --benchmark-min-rounds=5
      fastrnn bench --only sdpa      (the same SDPA shapes, alternating in one process)
"""
import json
import os

import numpy as np
import pytest

import fastrnn as fr

with open(os.path.join(os.path.dirname(__file__), "bench_grid.json")) as _f:  # copy of /work/shared/bench_grid.json
    GRID = json.load(_f)
MODES = GRID["modes"]            # forward, forward+backward
SHAPES = [tuple(s) for s in GRID["attention"]]
SMALL = min(SHAPES, key=lambda s: s[0] * s[1] * s[2] * s[2] * s[3])
BACKENDS = ["fastrnn", "reference", "torch"]


def shape_id(s):
    B, heads, L, E, causal = s
    return f"B{B}-h{heads}-L{L}-E{E}" + ("-causal" if causal else "")


def rand(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _info(benchmark, op, mode, shape, backend):
    benchmark.group = f"{op} {mode} {shape_id(shape)}"
    benchmark.extra_info.update(op=op, mode=mode, shape=list(shape), backend=backend,
                                threads=fr.get_num_threads(), simd=fr.build_info()["simd"])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
@pytest.mark.parametrize("mode", MODES)
def test_sdpa(benchmark, request, mode, shape, backend):
    B, heads, L, E, causal = shape
    if backend == "reference" and shape != SMALL:
        pytest.skip("the reference runs on the smallest shape only")
    _info(benchmark, "sdpa", mode, shape, backend)
    q, k, v, dout = (rand(B, heads, L, E, seed=i) for i in range(4))

    if backend == "torch":
        torch = request.getfixturevalue("torch")
        TF = torch.nn.functional
        qt, kt, vt, dt = (torch.from_numpy(a) for a in (q, k, v, dout))
        if mode == "forward":
            def run():
                with torch.no_grad():
                    return TF.scaled_dot_product_attention(qt, kt, vt, is_causal=causal)
        else:
            qg, kg, vg = (a.clone().requires_grad_(True) for a in (qt, kt, vt))

            def run():
                out = TF.scaled_dot_product_attention(qg, kg, vg, is_causal=causal)
                out.backward(dt)
        benchmark(run)
        return

    F = fr.functional if backend == "fastrnn" else fr.reference.functional
    if mode == "forward":
        benchmark(F.scaled_dot_product_attention, q, k, v, is_causal=causal)
    else:
        def run():
            _, cache = F.scaled_dot_product_attention_forward(q, k, v, is_causal=causal)
            F.scaled_dot_product_attention_backward(cache, dout)
        benchmark(run)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
@pytest.mark.parametrize("mode", MODES)
def test_mha(benchmark, request, mode, shape, backend):
    B, heads, L, E, causal = shape
    if backend == "reference" and shape != SMALL:
        pytest.skip("the reference runs on the smallest shape only")
    _info(benchmark, "mha", mode, shape, backend)
    D = heads * E
    x, dy = rand(B, L, D), rand(B, L, D, seed=1)
    mask = np.triu(np.ones((L, L), bool), 1) if causal else None

    if backend == "torch":
        torch = request.getfixturevalue("torch")
        mod = torch.nn.MultiheadAttention(D, heads, batch_first=True, dtype=torch.float32)
        xt, dyt = torch.from_numpy(x), torch.from_numpy(dy)
        tmask = None if mask is None else torch.from_numpy(mask)
        kw = dict(attn_mask=tmask, is_causal=causal, need_weights=False)
        if mode == "forward":
            mod.eval()

            def run():
                with torch.no_grad():
                    return mod(xt, xt, xt, **kw)
        else:
            xg = xt.clone().requires_grad_(True)

            def run():
                out, _ = mod(xg, xg, xg, **kw)
                out.backward(dyt)
        benchmark(run)
        return

    cls = fr.MultiheadAttention if backend == "fastrnn" else fr.reference.MultiheadAttention
    mha = cls(D, heads, batch_first=True, dtype="float32", seed=0)
    kw = dict(attn_mask=mask, is_causal=causal, need_weights=False)
    if mode == "forward":
        benchmark(mha, x, x, x, **kw)
    else:
        def run():
            out, _, cache = mha.forward(x, x, x, **kw)
            mha.backward(cache, dy)
        benchmark(run)
