"""The C++ attention kernels (fastrnn.functional, fr.MultiheadAttention, fr.AdditiveAttention)
against the NumPy reference and PyTorch.

- SDPA: outputs and dq, dk, dv vs the reference (float64: <= 1e-10 relative to the largest
  entry; float32: <= 1e-4 (out) / 3e-4 (grads) of the float64 reference) over masks (none,
  causal, bool, float, key padding, fully masked rows, causal + mask), odd sizes (Lq != S,
  Ev != E, E = 13, lengths not multiples of the 64-row/key blocks), broadcast leading dims
  and strided / transposed views; vs PyTorch (float64, <= 1e-9).
- MHA and additive attention: every output, weight and gradient vs the reference and torch.
- 1 vs 2 threads: bitwise identical float64 results.
- Memory: SDPA forward at L = 4096 (one head, E = 64) stays far below Lq x S.
- The reference suites test_layers_attention_api.py and test_reference_attention_torch.py
  are re-run with the kernel backend (see the bottom of this file).
"""
import importlib.util
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from helpers import assert_close, relative_error

import fastrnn as fr
from fastrnn import functional as F
from fastrnn.reference import functional as RF

RTOL64 = 1e-10
RTOL_TORCH = 1e-9
RTOL32_OUT, RTOL32_GRAD = 1e-4, 3e-4
WORST = {}


@pytest.fixture(scope="module", autouse=True)
def _report_worst():
    yield
    for family, err in sorted(WORST.items()):
        print(f"\n[kernel attention] worst relative error {family}: {err:.2e}")


def check(family, name, actual, expected, rtol):
    WORST[family] = max(WORST.get(family, 0.0), relative_error(actual, expected))
    assert_close(actual, expected, rtol, name=f"{family} {name}")


@pytest.fixture
def threads():
    """Restore the thread count after a test that changes it."""
    n = fr.get_num_threads()
    yield n
    fr.set_num_threads(n)


# ----------------------------------------------------------------------------- SDPA cases

SDPA_CASES = {
    # name: (q shape, k shape, v shape, mask spec, is_causal, scale)
    "small": ((2, 3, 4, 8), (2, 3, 6, 8), (2, 3, 6, 5), None, False, None),
    "blocks_square": ((2, 2, 130, 16), (2, 2, 130, 16), (2, 2, 130, 16), None, False, None),
    "odd_e13_ev9": ((3, 70, 13), (3, 129, 13), (3, 129, 9), None, False, None),
    "lq_gt_s": ((2, 300, 24), (2, 65, 24), (2, 65, 40), None, False, 0.3),
    "long_keys": ((1, 1, 5, 64), (1, 1, 600, 64), (1, 1, 600, 64), None, False, None),
    "causal_square": ((2, 2, 257, 32), (2, 2, 257, 32), (2, 2, 257, 20), None, True, None),
    "causal_lq_lt_s": ((2, 70, 16), (2, 200, 16), (2, 200, 16), None, True, None),
    "causal_lq_gt_s": ((2, 200, 16), (2, 70, 16), (2, 70, 7), None, True, None),
    "bool_2d": ((2, 3, 90, 32), (2, 3, 100, 32), (2, 3, 100, 32), ("bool", (90, 100)), False, None),
    "bool_4d": ((2, 3, 9, 8), (2, 3, 70, 8), (2, 3, 70, 8), ("bool", (2, 3, 9, 70)), False, None),
    "key_padding": ((2, 3, 80, 16), (2, 3, 150, 16), (2, 3, 150, 16), ("padding", (2, 1, 1, 150)), False, None),
    "float": ((2, 3, 66, 16), (2, 3, 77, 16), (2, 3, 77, 12), ("float", (2, 1, 66, 77)), False, None),
    "float_neg_inf": ((2, 3, 40, 8), (2, 3, 130, 8), (2, 3, 130, 8), ("float_inf", (40, 130)), False, None),
    "row_broadcast_mask": ((2, 70, 8), (2, 90, 8), (2, 90, 8), ("bool", (2, 1, 90)), False, None),
    "fully_masked_rows": ((2, 2, 100, 16), (2, 2, 70, 16), (2, 2, 70, 16), ("dead_rows", (2, 1, 100, 70)), False,
                          None),
    "causal_and_bool": ((2, 2, 130, 16), (2, 2, 130, 16), (2, 2, 130, 16), ("bool", (130, 130)), True, None),
    "broadcast": ((2, 1, 70, 8), (1, 3, 90, 8), (3, 90, 5), None, False, None),
    "broadcast_3way": ((70, 8), (2, 90, 8), (3, 1, 90, 5), ("bool", (3, 1, 70, 90)), True, None),
    "unbatched": ((67, 13), (80, 13), (80, 6), None, False, 1.5),
    "empty_keys": ((2, 5, 4), (2, 0, 4), (2, 0, 3), None, False, None),
}


def make_mask(spec, rng, dtype=np.float64):
    if spec is None:
        return None
    kind, shape = spec
    if kind == "bool":
        m = rng.random(shape) < 0.7
        m[..., 0] = True
        return m
    if kind == "padding":
        m = np.ones(shape, bool)
        m[0, ..., 100:] = False
        m[1, ..., 37:] = False
        return m
    if kind == "float":
        return rng.standard_normal(shape).astype(dtype)
    if kind == "float_inf":
        m = rng.standard_normal(shape)
        m[rng.random(shape) < 0.3] = -np.inf
        m[:, 0] = 0.0
        return m.astype(dtype)
    if kind == "dead_rows":
        m = rng.random(shape) < 0.6
        m[..., 0] = True
        m[0, :, 3] = False
        m[1, :, 64:70] = False                          # dead rows across a block boundary
        m[:, :, -1] = False
        return m
    raise AssertionError(kind)


def sdpa_problem(case, dtype=np.float64):
    qs, ks, vs, mspec, causal, scale = SDPA_CASES[case]
    rng = np.random.default_rng(list(SDPA_CASES).index(case))
    q, k, v = (rng.standard_normal(s) for s in (qs, ks, vs))
    mask = make_mask(mspec, rng)
    return q, k, v, mask, causal, scale, rng


def run_sdpa(FF, q, k, v, mask, causal, scale, dout):
    out, cache = FF.scaled_dot_product_attention_forward(q, k, v, attn_mask=mask, is_causal=causal, scale=scale)
    return (out,) + tuple(FF.scaled_dot_product_attention_backward(cache, dout))


@pytest.mark.parametrize("case", list(SDPA_CASES))
def test_sdpa_float64_matches_reference(case):
    q, k, v, mask, causal, scale, rng = sdpa_problem(case)
    ref = RF.scaled_dot_product_attention(q, k, v, mask, causal, scale)
    dout = rng.standard_normal(ref.shape)
    expected = run_sdpa(RF, q, k, v, mask, causal, scale, dout)
    got = run_sdpa(F, q, k, v, mask, causal, scale, dout)
    for name, a, e in zip(("out", "dq", "dk", "dv"), got, expected):
        assert a.dtype == np.float64 and a.shape == e.shape
        assert np.all(np.isfinite(a))
        check("sdpa float64 vs reference", f"{case} {name}", a, e, RTOL64)
    # the inference form gives the same numbers
    assert np.array_equal(F.scaled_dot_product_attention(q, k, v, mask, causal, scale), got[0])
    if mask is not None and mask.dtype == bool and case == "fully_masked_rows":
        dead = ~np.broadcast_to(mask, got[0].shape[:-1] + (k.shape[-2],)).any(axis=-1)
        assert np.all(got[0][dead] == 0) and np.all(got[1][dead] == 0)


@pytest.mark.parametrize("case", list(SDPA_CASES))
def test_sdpa_float32_close_to_float64(case):
    q, k, v, mask, causal, scale, rng = sdpa_problem(case)
    ref = RF.scaled_dot_product_attention(q, k, v, mask, causal, scale)
    dout = rng.standard_normal(ref.shape)
    expected = run_sdpa(RF, q, k, v, mask, causal, scale, dout)
    f32 = [a.astype(np.float32) for a in (q, k, v, dout)]
    m32 = mask if mask is None or mask.dtype == bool else mask.astype(np.float32)
    got = run_sdpa(F, f32[0], f32[1], f32[2], m32, causal, scale, f32[3])
    for name, a, e in zip(("out", "dq", "dk", "dv"), got, expected):
        assert a.dtype == np.float32
        check("sdpa float32 vs float64", f"{case} {name}", a, e, RTOL32_OUT if name == "out" else RTOL32_GRAD)


TORCH_CASES = [c for c in SDPA_CASES if c not in ("causal_and_bool", "broadcast_3way", "fully_masked_rows",
                                                  "empty_keys")]


@pytest.mark.parametrize("case", TORCH_CASES)
def test_sdpa_matches_torch(torch, case):
    q, k, v, mask, causal, scale, rng = sdpa_problem(case)
    out = F.scaled_dot_product_attention(q, k, v, mask, causal, scale)
    dout = rng.standard_normal(out.shape)
    got = run_sdpa(F, q, k, v, mask, causal, scale, dout)
    tq, tk, tv = (torch.tensor(a, requires_grad=True) for a in (q, k, v))
    tmask = None if mask is None else torch.tensor(mask)
    tout = torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, attn_mask=tmask, is_causal=causal,
                                                            scale=scale)
    tout.backward(torch.tensor(dout))
    for name, a, t in zip(("out", "dq", "dk", "dv"), got, (tout, tq.grad, tk.grad, tv.grad)):
        check("sdpa vs torch", f"{case} {name}", a, t.detach().numpy(), RTOL_TORCH)


def test_sdpa_fully_masked_rows_zero_and_torch_on_live_rows(torch):
    """Dead rows: out 0, dq 0, nothing flows to dk/dv from them; live rows match torch."""
    q, k, v, mask, causal, scale, rng = sdpa_problem("fully_masked_rows")
    out, cache = F.scaled_dot_product_attention_forward(q, k, v, attn_mask=mask)
    dout = rng.standard_normal(out.shape)
    dq, dk, dv = F.scaled_dot_product_attention_backward(cache, dout)
    for a in (out, dq, dk, dv):
        assert np.all(np.isfinite(a))
    allowed = np.broadcast_to(mask, out.shape[:-1] + (k.shape[-2],))
    dead = ~allowed.any(axis=-1)
    assert dead.sum() >= 6
    assert np.all(out[dead] == 0) and np.all(dq[dead] == 0)
    dout0 = np.where(dead[..., None], 0.0, dout)
    for a, b in zip((dq, dk, dv), F.scaled_dot_product_attention_backward(cache, dout0)):
        assert np.array_equal(a, b)
    for b in range(q.shape[0]):
        for h in range(q.shape[1]):
            live = ~dead[b, h]
            tq, tk, tv = (torch.tensor(a, requires_grad=True) for a in (q[b, h, live], k[b, h], v[b, h]))
            tout = torch.nn.functional.scaled_dot_product_attention(tq, tk, tv,
                                                                    attn_mask=torch.tensor(allowed[b, h][live]))
            tout.backward(torch.tensor(dout[b, h, live]))
            check("sdpa vs torch", "dead rows out", out[b, h, live], tout.detach().numpy(), RTOL_TORCH)
            check("sdpa vs torch", "dead rows dq", dq[b, h, live], tq.grad.numpy(), RTOL_TORCH)
            check("sdpa vs torch", "dead rows dk", dk[b, h], tk.grad.numpy(), RTOL_TORCH)
            check("sdpa vs torch", "dead rows dv", dv[b, h], tv.grad.numpy(), RTOL_TORCH)


def test_sdpa_views_are_read_in_place_and_untouched():
    """Strided, transposed, Fortran and broadcast (stride-0) views give the contiguous results."""
    rng = np.random.default_rng(40)
    q = rng.standard_normal((3, 2, 70, 16))
    k = rng.standard_normal((3, 2, 90, 16))
    v = rng.standard_normal((3, 2, 90, 12))
    dout = rng.standard_normal((3, 2, 70, 12))
    base = run_sdpa(F, q, k, v, None, True, None, dout)
    big = np.zeros((3, 2, 70, 48))
    big[..., 5:21] = q                                    # row stride 48, offset columns
    qs = big[..., 5:21]
    kt = np.ascontiguousarray(k.transpose(1, 0, 2, 3)).transpose(1, 0, 2, 3)   # permuted leading dims
    vf = np.asfortranarray(v)                             # last axis not unit stride: copied
    dos = np.ascontiguousarray(dout[:, :, ::-1])[:, :, ::-1]                    # negative row stride
    for a in (qs, kt, vf, dos):
        a.setflags(write=False)
    got = run_sdpa(F, qs, kt, vf, None, True, None, dos)
    for a, b in zip(got, base):
        assert np.array_equal(a, b)
    # k broadcast over the heads with a stride-0 view == the same k given once per head
    k1 = rng.standard_normal((3, 1, 90, 16))
    kb = np.broadcast_to(k1, (3, 2, 90, 16))
    ga = run_sdpa(F, q, k1, v, None, False, None, dout)
    gb = run_sdpa(F, q, kb, v, None, False, None, dout)
    assert np.array_equal(ga[0], gb[0]) and np.array_equal(ga[1], gb[1])
    assert ga[2].shape == (3, 1, 90, 16)
    assert_close(ga[2], gb[2].sum(axis=1, keepdims=True), 1e-14)


def test_sdpa_dtype_rules():
    rng = np.random.default_rng(41)
    q = rng.standard_normal((2, 5, 4))
    assert F.scaled_dot_product_attention(q.astype(np.float16), q, q).dtype == np.float64
    out16 = F.scaled_dot_product_attention(*(q.astype(np.float16),) * 3)
    assert out16.dtype == np.float32                      # float16 runs in float32
    assert_close(out16, RF.scaled_dot_product_attention(*(q.astype(np.float16),) * 3), 1e-2)
    out, cache = F.scaled_dot_product_attention_forward(q.astype(np.float32), q.astype(np.float32),
                                                        q.astype(np.float32))
    dq, _, _ = F.scaled_dot_product_attention_backward(cache, np.ones(out.shape))   # float64 dout converted
    assert dq.dtype == np.float32


# ----------------------------------------------------------------------------- errors

def test_sdpa_errors_name_the_argument():
    rng = np.random.default_rng(42)
    q, k, v = rng.standard_normal((2, 3, 5, 4)), rng.standard_normal((2, 3, 6, 4)), rng.standard_normal((2, 3, 6, 7))
    cases = [
        (dict(q=q.astype(np.int64), k=k, v=v), TypeError, "^q: "),
        (dict(q=q[0, 0, 0], k=k, v=v), ValueError, r"^q: expected shape \(\.\.\., Lq, E\)"),
        (dict(q=q, k=k[..., :3], v=v), ValueError, r"^k: expected shape \(\.\.\., S, 4\)"),
        (dict(q=q, k=k, v=v[..., :5, :]), ValueError, r"^v: expected shape \(\.\.\., 6, Ev\)"),
        (dict(q=q, k=k[:, :2], v=v[:, :2]), ValueError, "^k: leading dims"),
        (dict(q=q, k=k, v=v, attn_mask=np.ones((3, 6), bool)), ValueError, "^attn_mask: expected a shape"),
        (dict(q=q, k=k, v=v, attn_mask=np.ones((5, 6), np.int8)), TypeError, "^attn_mask"),
        (dict(q=q, k=k, v=v, attn_mask=np.full((5, 6), np.nan)), ValueError, "^attn_mask"),
        (dict(q=q, k=k, v=v, scale=np.inf), ValueError, "^scale"),
        (dict(q=q, k=k, v=v, is_causal="yes"), TypeError, "^is_causal"),
    ]
    for kwargs, exc, msg in cases:
        with pytest.raises(exc, match=msg):
            F.scaled_dot_product_attention(**kwargs)
        with pytest.raises(exc, match=msg):
            F.scaled_dot_product_attention_forward(**kwargs)
    out, cache = F.scaled_dot_product_attention_forward(q, k, v)
    with pytest.raises(ValueError, match=r"^dout: expected shape \(2, 3, 5, 7\)"):
        F.scaled_dot_product_attention_backward(cache, out[..., :6])
    with pytest.raises(TypeError, match="^dout"):
        F.scaled_dot_product_attention_backward(cache, out.astype(int))
    with pytest.raises(ValueError, match="^cache: expected the cache returned by scaled_dot_product_attention_forward"):
        F.scaled_dot_product_attention_backward({"kind": "sdpa"}, out)
    _, rcache = RF.scaled_dot_product_attention_forward(q, k, v)   # a reference cache is not a kernel cache
    with pytest.raises(ValueError, match="^cache"):
        F.scaled_dot_product_attention_backward(rcache, out)


def test_core_rejects_bad_arrays():
    """The binding checks what reaches the core (never a crash)."""
    core = fr._core
    q = np.zeros((2, 5, 4), np.float32)
    with pytest.raises(TypeError, match="^k: expected dtype float32"):
        core.sdpa_forward(q, q.astype(np.float64), q, [], False, 0.5, False)
    with pytest.raises(ValueError, match="^k: expected shape"):
        core.sdpa_forward(q, q[..., :3], q, [], False, 0.5, False)
    with pytest.raises(ValueError, match="^v: leading dims"):
        core.sdpa_forward(q, q, np.zeros((3, 5, 4), np.float32), [], False, 0.5, False)
    with pytest.raises(ValueError, match="^q: expected unit stride"):
        core.sdpa_forward(np.zeros((2, 5, 8), np.float32)[..., ::2], q, q, [], False, 0.5, False)
    with pytest.raises(ValueError, match="^attn_mask: expected a shape broadcastable"):
        core.sdpa_forward(q, q, q, [(np.ones((4, 5), bool), True)], False, 0.5, False)
    with pytest.raises(TypeError, match="^attn_mask"):
        core.sdpa_forward(q, q, q, [(np.ones((5, 5), np.int32), True)], False, 0.5, False)
    with pytest.raises(ValueError, match="^out: expected shape"):
        core.sdpa_forward(q, q, q, [], False, 0.5, False, np.zeros((2, 5, 3), np.float32))
    out, lse = core.sdpa_forward(q, q, q, [], False, 0.5, True)
    with pytest.raises(ValueError, match="^lse: expected shape"):
        core.sdpa_backward(q, q, q, [], False, 0.5, out, lse[:, :4], out)
    with pytest.raises(ValueError, match="^dout: expected shape"):
        core.sdpa_backward(q, q, q, [], False, 0.5, out, lse, out[:, :4])
    with pytest.raises(ValueError, match="^b: inner dimensions"):
        core.gemm(np.zeros((3, 4)), np.zeros((5, 6)))
    with pytest.raises(TypeError, match="^a: expected float32 or float64"):
        core.gemm(np.zeros((3, 4), int), np.zeros((4, 6)))


# ----------------------------------------------------------------------------- threads

def test_one_and_two_threads_identical_float64(threads):
    """Every attention result is bitwise the same for 1 and 2 threads (float64). nbatch = 1
    and 3 exercise the two-sweep backward at 2 threads against the one-sweep at 1 thread."""
    rng = np.random.default_rng(43)
    # (sizes above the ~4 MFLOP under which a call stays on the calling thread)
    problems = [
        ((1, 700, 24), (1, 500, 24), (1, 500, 16), True),
        ((3, 140, 16), (3, 260, 16), (3, 260, 16), False),
        ((4, 2, 300, 8), (4, 2, 300, 8), (4, 2, 300, 8), True),
    ]
    x = rng.standard_normal((200, 3, 32))
    mem_k, mem_v = rng.standard_normal((250, 3, 12)), rng.standard_normal((250, 3, 20))
    kpm = np.arange(250)[None].repeat(3, 0) > 230
    query, keys = rng.standard_normal((64, 6)), rng.standard_normal((64, 200, 5))
    results = {}
    for n in (1, 2):
        fr.set_num_threads(n)
        res = []
        for qs, ks, vs, causal in problems:
            r = np.random.default_rng(1)
            q, k, v = (r.standard_normal(s) for s in (qs, ks, vs))
            dout = r.standard_normal(qs[:-1] + (vs[-1],))
            res += run_sdpa(F, q, k, v, None, causal, None, dout)
        mha = fr.MultiheadAttention(32, 4, kdim=12, vdim=20, dtype="float64", seed=3)
        out, w, cache = mha.forward(x, mem_k, mem_v, key_padding_mask=kpm)
        res += [out, w, *mha.backward(cache, np.ones_like(out)), *mha.grads.values()]
        att = fr.AdditiveAttention(6, 5, 64, dtype="float64", seed=4)
        ctx, aw, ac = att.forward(query, keys)
        res += [ctx, aw, *att.backward(ac, np.ones_like(ctx)), *att.grads.values()]
        results[n] = res
    assert len(results[1]) == len(results[2])
    for i, (a, b) in enumerate(zip(results[1], results[2])):
        assert np.array_equal(a, b), f"result {i} differs between 1 and 2 threads"


# ----------------------------------------------------------------------------- memory

MEMORY_SCRIPT = textwrap.dedent("""
    import resource
    import numpy as np
    import fastrnn as fr

    def peak():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def current():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize()

    L, E = 4096, 64
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((1, L, E)).astype(np.float32) for _ in range(3))
    F = fr.functional
    F.scaled_dot_product_attention(q[:, :64], k[:, :64], v[:, :64], is_causal=True)  # warm up
    # hold memory up to the high-water mark (ru_maxrss only rises above it), so the growth
    # of the peak below is what the calls add
    pad = np.ones(max(peak() - current(), 0) // 8 + 1)
    base = peak()
    out = F.scaled_dot_product_attention(q, k, v)
    out_c = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    fwd = peak() - base
    o, cache = F.scaled_dot_product_attention_forward(q, k, v, is_causal=True)
    grads = F.scaled_dot_product_attention_backward(cache, np.ones_like(o))
    train = peak() - base
    ok = all(np.isfinite(a).all() for a in (out, out_c, o, *grads))
    del o, cache, grads, pad
    pad = np.ones(max(peak() - current(), 0) // 8 + 1)
    base_ref = peak()
    fr.reference.functional.scaled_dot_product_attention(q, k, v)        # materializes L x S scores
    ref = peak() - base_ref
    print(fwd, train, ref, ok)
""")


def test_sdpa_forward_memory_is_not_quadratic():
    """L = 4096, one head, E = 64, float32, no weights: the L x S scores would be 64 MiB.
    Peak RSS growth (ru_maxrss in a fresh process; tracemalloc cannot see C++ allocations) of
    two inference calls must stay far below that; training forward + backward (dq, dk, dv
    outputs included) too. The NumPy reference in the same process shows the measurement
    does see an L x S temporary."""
    res = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "2"})
    assert res.returncode == 0, res.stderr
    fwd, train, ref, finite = res.stdout.split()
    fwd, train, ref = int(fwd), int(train), int(ref)
    print(f"\n[kernel attention] L=4096 E=64 float32 peak RSS growth: forward {fwd / 2**20:.1f} MiB, "
          f"forward+backward {train / 2**20:.1f} MiB (NumPy reference forward: {ref / 2**20:.1f} MiB)")
    assert finite == "True"
    assert ref >= 64 * 2**20                   # the measurement sees quadratic memory
    assert fwd < 16 * 2**20                    # inputs are 3 MiB, the two outputs 2 MiB
    assert train < 32 * 2**20


ISA_SCRIPT = textwrap.dedent("""
    import numpy as np
    import fastrnn as fr
    from fastrnn.reference import functional as RF
    rng = np.random.default_rng(0)
    worst = {}
    for qs, ks, vs, causal in [((2, 70, 13), (2, 90, 13), (2, 90, 9), True), ((1, 2, 130, 16), (1, 2, 65, 16),
                                                                            (1, 2, 65, 16), False)]:
        q, k, v = (rng.standard_normal(s) for s in (qs, ks, vs))
        mask = rng.random((qs[-2], ks[-2])) < 0.8
        dout = rng.standard_normal(qs[:-1] + (vs[-1],))
        o, c = RF.scaled_dot_product_attention_forward(q, k, v, mask, causal)
        ref = (o,) + RF.scaled_dot_product_attention_backward(c, dout)
        for dt in (np.float64, np.float32):
            cast = [a.astype(dt) for a in (q, k, v, dout)]
            o, c = fr.functional.scaled_dot_product_attention_forward(*cast[:3], mask, causal)
            got = (o,) + fr.functional.scaled_dot_product_attention_backward(c, cast[3])
            err = max(np.abs(a - b).max() / np.abs(b).max() for a, b in zip(got, ref))
            worst[dt.__name__] = max(worst.get(dt.__name__, 0.0), float(err))
    print(fr.build_info()["simd"], worst["float64"], worst["float32"])
""")


@pytest.mark.parametrize("level", ["avx2", "baseline"])
def test_lower_isa_levels(level):
    """The per-ISA kernels picked at run time: force a lower level (FASTRNN_SIMD) and check it."""
    res = subprocess.run([sys.executable, "-c", ISA_SCRIPT], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "FASTRNN_SIMD": level})
    assert res.returncode == 0, res.stderr
    got_level, err64, err32 = res.stdout.split()
    if got_level != level:
        pytest.skip(f"this CPU cannot run the {level} kernels (picked {got_level})")
    assert float(err64) <= RTOL64 and float(err32) <= RTOL32_GRAD


# ----------------------------------------------------------------------------- MHA

MHA_CASES = {
    # name: (constructor kwargs, (query, key, value) shapes (time-major unless batch_first), forward kwargs,
    #        alias: "self" | "kv" | None)
    "self_packed": (dict(), ((70, 3, 32), None, None), dict(), "self"),
    "self_causal_bf": (dict(batch_first=True), ((3, 130, 32), None, None),
                       dict(attn_mask=np.triu(np.ones((130, 130), bool), 1), is_causal=True), "self"),
    "cross_kdim_vdim": (dict(kdim=12, vdim=20), ((65, 2, 32), (90, 2, 12), (90, 2, 20)),
                        dict(key_padding_mask="bool"), None),
    "float_masks_kv": (dict(), ((40, 3, 32), (70, 3, 32), None), dict(key_padding_mask="float", attn_mask="float3"),
                       "kv"),
    "no_bias_bool3d": (dict(bias=False), ((33, 2, 32), (45, 2, 32), (45, 2, 32)), dict(attn_mask="bool3"), None),
    "per_head_weights": (dict(batch_first=True), ((2, 50, 32), (2, 66, 32), (2, 66, 32)),
                         dict(average_attn_weights=False, attn_mask="float2"), None),
    "no_weights": (dict(kdim=8, vdim=8), ((20, 4, 32), (30, 4, 8), (30, 4, 8)), dict(need_weights=False), None),
    "unbatched": (dict(kdim=5, vdim=7), ((27, 32), (31, 5), (31, 7)), dict(key_padding_mask="bool"), None),
    "dead_row": (dict(), ((20, 2, 32), (25, 2, 32), (25, 2, 32)), dict(attn_mask="dead"), None),
}


def mha_problem(case, dtype="float64"):
    ctor, shapes, fkw, alias = MHA_CASES[case]
    rng = np.random.default_rng(100 + list(MHA_CASES).index(case))
    heads = 4
    m = fr.MultiheadAttention(32, heads, dtype=dtype, seed=7, **ctor)
    r = fr.reference.MultiheadAttention(32, heads, dtype="float64", **ctor)
    for p in m.params.values():
        if p.ndim == 1:
            p[...] = rng.standard_normal(p.shape)
    r.load_state_dict(m.state_dict())
    q = rng.standard_normal(shapes[0])
    if alias == "self":
        k = v = q
    else:
        k = rng.standard_normal(shapes[1])
        v = k if alias == "kv" else rng.standard_normal(shapes[2])
    batched = q.ndim == 3
    bf = ctor.get("batch_first", False)
    N = (q.shape[0] if bf else q.shape[1]) if batched else 1
    L = q.shape[1 if bf else 0] if batched else q.shape[0]
    S = k.shape[1 if bf else 0] if batched else k.shape[0]
    kw = dict(fkw)
    if kw.get("key_padding_mask") == "bool":
        kpm = rng.random((N, S)) < 0.3
        kpm[:, 0] = False
        kw["key_padding_mask"] = kpm if batched else kpm[0]
    elif kw.get("key_padding_mask") == "float":
        kpm = rng.standard_normal((N, S))
        kpm[0, 1] = -np.inf
        kw["key_padding_mask"] = kpm
    am = kw.get("attn_mask")
    if isinstance(am, str):
        if am == "float3":
            am = rng.standard_normal((N * heads, L, S))
            am[1, 2, 3] = -np.inf
        elif am == "float2":
            am = rng.standard_normal((L, S))
        elif am == "bool3":
            am = rng.random((N * heads, L, S)) < 0.3
            am[..., 1] = False
        elif am == "dead":
            am = np.zeros((L, S), bool)
            am[3] = True                                      # row 3 attends to nothing
        kw["attn_mask"] = am
    return m, r, (q, k, v), kw, rng


def run_mha(layer, args, kw, dout):
    out, w, cache = layer.forward(*args, **kw)
    grads = layer.backward(cache, dout)
    return out, w, grads, dict(layer.grads)


@pytest.mark.parametrize("case", list(MHA_CASES))
def test_mha_float64_matches_reference(case):
    m, r, args, kw, rng = mha_problem(case)
    ref_out, _ = r(*args, **kw)
    dout = rng.standard_normal(ref_out.shape)
    got = run_mha(m, args, kw, dout)
    exp = run_mha(r, args, kw, dout)
    check("mha float64 vs reference", f"{case} out", got[0], exp[0], RTOL64)
    if exp[1] is None:
        assert got[1] is None
    else:
        check("mha float64 vs reference", f"{case} weights", got[1], exp[1], RTOL64)
    for name, a, e in zip(("dquery", "dkey", "dvalue"), got[2], exp[2]):
        assert a.shape == e.shape
        check("mha float64 vs reference", f"{case} {name}", a, e, RTOL64)
    assert list(got[3]) == list(exp[3])
    for name in exp[3]:
        check("mha float64 vs reference", f"{case} d{name}", got[3][name], exp[3][name], RTOL64)
    # the inference form gives the same numbers
    out2, w2 = m(*args, **kw)
    assert np.array_equal(out2, got[0]) and (w2 is None or np.array_equal(w2, got[1]))


@pytest.mark.parametrize("case", ["self_packed", "cross_kdim_vdim", "float_masks_kv", "per_head_weights", "dead_row"])
def test_mha_float32_close_to_float64(case):
    m, r, args, kw, rng = mha_problem(case, dtype="float32")
    ref_out, _ = r(*args, **kw)
    dout = rng.standard_normal(ref_out.shape)
    args32 = [a.astype(np.float32) for a in args]
    if args[1] is args[0]:
        args32[1] = args32[0]
    if args[2] is args[0]:
        args32[2] = args32[0]
    elif args[2] is args[1]:
        args32[2] = args32[1]
    got = run_mha(m, args32, kw, dout.astype(np.float32))
    exp = run_mha(r, args, kw, dout)
    check("mha float32 vs float64", f"{case} out", got[0], exp[0], RTOL32_OUT)
    if exp[1] is not None:
        check("mha float32 vs float64", f"{case} weights", got[1], exp[1], RTOL32_OUT)
    for name, a, e in zip(("dquery", "dkey", "dvalue"), got[2], exp[2]):
        assert a.dtype == np.float32
        check("mha float32 vs float64", f"{case} {name}", a, e, RTOL32_GRAD)
    for name in exp[3]:
        check("mha float32 vs float64", f"{case} d{name}", got[3][name], exp[3][name], RTOL32_GRAD)


def test_mha_larger_matches_torch(torch):
    """E = 64, 4 heads, L = S = 150 (crosses the 64-blocks), causal hint, batch_first, key padding."""
    rng = np.random.default_rng(60)
    torch.manual_seed(0)
    tm = torch.nn.MultiheadAttention(64, 4, batch_first=True, dtype=torch.float64)
    with torch.no_grad():
        tm.in_proj_bias.normal_()
        tm.out_proj.bias.normal_()
    m = fr.MultiheadAttention(64, 4, batch_first=True, dtype="float64")
    m.load_state_dict(tm.state_dict())
    x = rng.standard_normal((2, 150, 64))
    causal = np.triu(np.ones((150, 150), bool), 1)
    kpm = np.zeros((2, 150), bool)
    kpm[1, 140:] = True
    out, w, cache = m.forward(x, x, x, attn_mask=causal, is_causal=True, key_padding_mask=kpm)
    dout = rng.standard_normal(out.shape)
    dx, _, _ = m.backward(cache, dout)
    tx = torch.tensor(x, requires_grad=True)
    tout, tw = tm(tx, tx, tx, attn_mask=torch.tensor(causal), is_causal=True, key_padding_mask=torch.tensor(kpm))
    tout.backward(torch.tensor(dout))
    check("mha vs torch", "out", out, tout.detach().numpy(), RTOL_TORCH)
    check("mha vs torch", "weights", w, tw.detach().numpy(), RTOL_TORCH)
    check("mha vs torch", "dx", dx, tx.grad.numpy(), RTOL_TORCH)
    for name, p in tm.named_parameters():
        check("mha vs torch", f"d{name}", m.grads[name], p.grad.numpy(), RTOL_TORCH)


# ----------------------------------------------------------------------------- additive

@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("precomputed", [False, True])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_additive_matches_reference(masked, precomputed, dtype):
    rng = np.random.default_rng(70)
    B, S, Q, K, H = 5, 37, 6, 9, 20
    att = fr.AdditiveAttention(Q, K, H, dtype=dtype, seed=2)
    ref = fr.reference.AdditiveAttention(Q, K, H, dtype="float64")
    ref.load_state_dict(att.state_dict())
    query, keys = rng.standard_normal((B, Q)), rng.standard_normal((B, S, K))
    mask = None
    if masked:
        mask = rng.random((B, S)) < 0.6
        mask[:, 1] = True
        mask[3] = False                                     # a row with nothing to attend to
    kp = att.precompute(keys) if precomputed else None
    kp_ref = ref.precompute(keys) if precomputed else None
    if precomputed and dtype == "float64":
        check("additive float64 vs reference", "keys_proj", kp, kp_ref, RTOL64)
    ctx, w, cache = att.forward(query, keys, mask=mask, keys_proj=kp)
    rctx, rw, rcache = ref.forward(query, keys, mask=mask, keys_proj=kp_ref)
    dctx = rng.standard_normal(ctx.shape)
    dq, dk = att.backward(cache, dctx)
    rdq, rdk = ref.backward(rcache, dctx)
    family, rtol, rtol_g = (("additive float64 vs reference", RTOL64, RTOL64) if dtype == "float64"
                            else ("additive float32 vs float64", RTOL32_OUT, RTOL32_GRAD))
    check(family, "context", ctx, rctx, rtol)
    check(family, "weights", w, rw, rtol)
    check(family, "dquery", dq, rdq, rtol_g)
    check(family, "dkeys", dk, rdk, rtol_g)
    for name in ref.grads:
        check(family, f"d{name}", att.grads[name], ref.grads[name], rtol_g)
    if masked:
        assert np.all(w[3] == 0) and np.all(ctx[3] == 0) and np.all(dq[3] == 0)
    # inference form
    ctx2, w2 = att(query, keys, mask=mask, keys_proj=kp)
    assert np.array_equal(ctx2, ctx) and np.array_equal(w2, w)


def test_additive_functional_grads_and_errors():
    rng = np.random.default_rng(71)
    att = fr.AdditiveAttention(4, 3, 6, dtype="float64", seed=0)
    W_q, W_k, b, v = (att.params[n] for n in ("W_q", "W_k", "b", "v"))
    query, keys = rng.standard_normal((2, 4)), rng.standard_normal((2, 5, 3))
    ctx, w, cache = F.additive_attention_forward(query, keys, W_q, W_k, b, v)
    dctx = rng.standard_normal(ctx.shape)
    dq, dk, fresh = F.additive_attention_backward(cache, dctx)
    # accumulate into given arrays: contiguous ones in place, float32 / strided ones too
    target = [np.ones_like(fresh[0]), np.ones(fresh[1].shape, np.float32),
              np.ones((12,))[::2], np.ones_like(fresh[3])]
    _, _, returned = F.additive_attention_backward(cache, dctx, target)
    assert returned is target
    for g, f in zip(target, fresh):
        assert_close(g, f + 1.0, 1e-6)
    with pytest.raises(TypeError, match="^grads"):
        F.additive_attention_backward(cache, dctx, fresh[:3])
    with pytest.raises(ValueError, match=r"^dcontext: expected shape \(2, 3\)"):
        F.additive_attention_backward(cache, dctx[:, :2])
    with pytest.raises(ValueError, match="^cache: expected the cache returned by additive_attention_forward"):
        F.additive_attention_backward(cache_of_sdpa(), dctx)
    with pytest.raises(ValueError, match=r"^keys_proj: expected shape \(2, 5, 6\)"):
        F.additive_attention(query, keys, W_q, W_k, b, v, keys_proj=np.zeros((2, 5, 5)))
    with pytest.raises(TypeError, match="^mask: expected a bool mask"):
        F.additive_attention(query, keys, W_q, W_k, b, v, mask=np.ones((2, 5)))


def cache_of_sdpa():
    q = np.zeros((2, 3, 4))
    return F.scaled_dot_product_attention_forward(q, q, q)[1]


def test_exports():
    assert fr.MultiheadAttention._F is F and fr.AdditiveAttention._F is F
    for name in RF.__dict__:
        if name.startswith(("scaled_dot", "multi_head", "additive")):
            assert callable(getattr(F, name)), name
    assert "MultiheadAttention" in fr.__all__ and "AdditiveAttention" in fr.__all__


# ----------------------------------------------------------------------------- reference suites, kernel backend
# Every test of these modules runs again with R = fastrnn and F = fastrnn.functional (their
# module globals), except those about the reference itself or its cache internals.

_SKIP = {
    "test_reference_any_float_dtype",           # the reference keeps float16; kernels run it in float32
    "test_reference_exports",                   # about fastrnn.reference (test_exports covers the kernels)
    "test_sdpa_fully_masked_rows_are_zero",     # reads the reference cache's "p" (covered above)
}


def _rerun_with_kernels(filename, prefix):
    spec = importlib.util.spec_from_file_location(f"_kernel_{prefix}", os.path.join(os.path.dirname(__file__),
                                                                                     filename))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.R, mod.F = fr, F
    for name, obj in vars(mod).items():
        if name.startswith("test_") and callable(obj) and name not in _SKIP:
            globals()[f"test_{prefix}_{name[5:]}"] = obj


_rerun_with_kernels("test_layers_attention_api.py", "api")
_rerun_with_kernels("test_reference_attention_torch.py", "torch_suite")
