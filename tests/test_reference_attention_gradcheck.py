"""The NumPy attention reference checked against float64 central finite differences.

Every entry of every gradient is compared: q, k, v of scaled dot-product attention (with
broadcast leading dims); query, key, value and every parameter of multi-head attention; query,
keys and every parameter of additive attention. Masks: none, causal, bool, float, key padding
and a fully masked query row (whose output and gradient must be exactly 0). The loss is a
random projection of the output, sum(out * R), so every output entry matters.
"""
import numpy as np
import pytest
from helpers import assert_close, relative_error

from fastrnn.reference import functional as F

EPS = 1e-6   # central-difference step: truncation ~EPS^2, rounding ~1e-16 / EPS
RTOL = 1e-6  # max |analytic - numeric| / max |numeric|, per gradient array

WORST = {}  # family -> worst relative error seen (printed with -s)


@pytest.fixture(scope="module", autouse=True)
def _report_worst():
    yield
    for family, err in sorted(WORST.items()):
        print(f"\n[gradcheck] worst relative error {family}: {err:.2e}")


def check(family, name, analytic, numeric):
    assert np.all(np.isfinite(analytic)), f"{family} {name}: non-finite analytic gradient"
    WORST[family] = max(WORST.get(family, 0.0), relative_error(analytic, numeric))
    assert_close(analytic, numeric, RTOL, name=f"{family} {name}")


def numeric_grad(loss, arr):
    """Central differences of the scalar loss() w.r.t. every entry of arr (perturbed in place)."""
    grad = np.zeros_like(arr)
    for idx in np.ndindex(arr.shape):
        orig = arr[idx]
        arr[idx] = orig + EPS
        up = loss()
        arr[idx] = orig - EPS
        down = loss()
        arr[idx] = orig
        grad[idx] = (up - down) / (2 * EPS)
    return grad


# ----------------------------------------------------------------------------- SDPA
# q (2, 1, Lq, E), k (1, 2, S, E), v (2, S, Ev): leading dims broadcast to (2, 2).
LQ, S, E, EV = 3, 5, 4, 3


def sdpa_mask(kind, rng, lq=LQ, s=S):
    """-> (attn_mask, is_causal, fully masked (batch..., row) index or None)."""
    if kind == "none":
        return None, False, None
    if kind == "causal":
        return None, True, None
    if kind == "bool":
        m = rng.random((2, 2, lq, s)) < 0.7
        m[..., 0] = True  # no fully masked row here
        return m, False, None
    if kind == "float":
        m = rng.standard_normal((lq, s))
        m[0, 2] = m[1, 4] = -np.inf
        return m, False, None
    if kind == "key_padding":  # (B, 1, 1, S) bool, True = attend
        m = np.ones((2, 1, 1, s), bool)
        m[0, ..., 3:] = False
        return m, False, None
    if kind == "bool+causal":
        m = rng.random((lq, s)) < 0.8
        m[:, 0] = True
        return m, True, None
    if kind == "fully_masked_row":
        m = rng.random((2, 2, lq, s)) < 0.7
        m[..., 0] = True
        m[1, 0, 1, :] = False
        return m, False, (1, 0, 1)
    if kind == "fully_masked_float":
        m = np.zeros((2, 1, lq, s))
        m[0, 0, 2, :] = -np.inf
        return m, False, (0, 0, 2)
    raise AssertionError(kind)


SDPA_MASKS = ["none", "causal", "bool", "float", "key_padding", "bool+causal", "fully_masked_row",
              "fully_masked_float"]


@pytest.mark.parametrize("kind", SDPA_MASKS)
@pytest.mark.parametrize("lq", [LQ, 6])  # Lq < S and Lq > S (causal alignment)
def test_sdpa_gradcheck(kind, lq):
    rng = np.random.default_rng(1)
    q = rng.standard_normal((2, 1, lq, E))
    k = rng.standard_normal((1, 2, S, E))
    v = rng.standard_normal((2, S, EV))
    mask, causal, dead = sdpa_mask(kind, rng, lq)
    scale = 0.7 if kind == "float" else None
    out, cache = F.scaled_dot_product_attention_forward(q, k, v, mask, causal, scale)
    R = rng.standard_normal(out.shape)
    dq, dk, dv = F.scaled_dot_product_attention_backward(cache, R)
    assert (dq.shape, dk.shape, dv.shape) == (q.shape, k.shape, v.shape)

    def loss():
        return float(np.sum(F.scaled_dot_product_attention(q, k, v, mask, causal, scale) * R))

    for name, arr, g in (("q", q, dq), ("k", k, dk), ("v", v, dv)):
        check("sdpa", f"{kind} d{name}", g, numeric_grad(loss, arr))
    if dead is not None:
        assert np.all(out[dead] == 0)


# ----------------------------------------------------------------------------- MHA
# E = 4, 2 heads (d = 2), L = 3, S = 4 (cross) / 3 (self), N = 2.
EMB, HEADS, L, N = 4, 2, 3, 2


def mha_params(rng, kdim=EMB, vdim=EMB, bias=True):
    p = {}
    if kdim == EMB and vdim == EMB:
        p["in_proj_weight"] = rng.standard_normal((3 * EMB, EMB)) * 0.5
    else:
        p["q_proj_weight"] = rng.standard_normal((EMB, EMB)) * 0.5
        p["k_proj_weight"] = rng.standard_normal((EMB, kdim)) * 0.5
        p["v_proj_weight"] = rng.standard_normal((EMB, vdim)) * 0.5
    if bias:
        p["in_proj_bias"] = rng.standard_normal(3 * EMB) * 0.5
    p["out_proj.weight"] = rng.standard_normal((EMB, EMB)) * 0.5
    if bias:
        p["out_proj.bias"] = rng.standard_normal(EMB) * 0.5
    return p


def mha_masks(kind, rng, s, batched=True):
    """-> dict of mask keywords for multi_head_attention_*, and the dead (n, l) row or None."""
    n = N if batched else 1
    if kind == "none":
        return {}, None
    if kind == "causal":  # PyTorch's hint: the causal mask plus is_causal=True
        return dict(attn_mask=np.triu(np.ones((L, s), bool), 1), is_causal=True), None
    if kind == "bool":  # True = NOT allowed
        m = rng.random((L, s)) < 0.3
        m[:, 0] = False
        return dict(attn_mask=m), None
    if kind == "float3d":
        m = rng.standard_normal((n * HEADS, L, s))
        m[1, 0, 1] = -np.inf
        return dict(attn_mask=m), None
    if kind == "key_padding":  # True = ignore
        kpm = np.zeros((n, s), bool)
        kpm[-1, s - 2:] = True
        return dict(key_padding_mask=kpm if batched else kpm[0]), None
    if kind == "fully_masked_row":  # query row 1 of every batch entry may attend to nothing
        m = np.zeros((L, s), bool)
        m[1, :] = True
        kpm = np.zeros((n, s), bool)
        kpm[0, 0] = True
        return dict(attn_mask=m, key_padding_mask=kpm if batched else kpm[0]), 1
    raise AssertionError(kind)


MHA_MASKS = ["none", "causal", "bool", "float3d", "key_padding", "fully_masked_row"]


def run_mha_gradcheck(family, query, key, value, params, masks, options, dead_row=None):
    out, weights, cache = F.multi_head_attention_forward(query, key, value, HEADS, params, **masks, **options)
    rng = np.random.default_rng(7)
    R = rng.standard_normal(out.shape)
    dq, dk, dv, grads = F.multi_head_attention_backward(cache, R)
    assert list(grads) == list(params)

    def loss():
        o, _ = F.multi_head_attention(query, key, value, HEADS, params, **masks, **options)
        return float(np.sum(o * R))

    if key is query and value is query:  # self-attention on one array: every gradient is the total
        check(family, "d(query is key is value)", dq, numeric_grad(loss, query))
        assert np.array_equal(dq, dk) and np.array_equal(dq, dv)
    else:
        for name, arr, g in (("query", query, dq), ("key", key, dk), ("value", value, dv)):
            check(family, f"d{name}", g, numeric_grad(loss, arr))
    for name, p in params.items():
        check(family, f"d{name}", grads[name], numeric_grad(loss, p))
    if dead_row is not None:  # 0 attention output: out = out_proj.bias, no gradient to the query row
        def row(a):  # query row `dead_row` of an array in query's layout
            return a[:, dead_row] if (a.ndim == 3 and options.get("batch_first")) else a[dead_row]

        assert np.array_equal(row(out), np.broadcast_to(params.get("out_proj.bias", np.zeros(EMB)), row(out).shape))
        if weights is not None:
            assert np.all(weights[..., dead_row, :] == 0)
        if key is not query:
            assert np.all(row(dq) == 0)


@pytest.mark.parametrize("kind", MHA_MASKS)
def test_mha_self_attention_gradcheck(kind):
    """Packed in_proj, biases, time-major, query is key is value."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((L, N, EMB))
    params = mha_params(rng)
    masks, dead = mha_masks(kind, rng, L)
    run_mha_gradcheck("mha self", x, x, x, params, masks, {}, dead)


@pytest.mark.parametrize("kind", MHA_MASKS)
def test_mha_cross_attention_gradcheck(kind):
    """kdim/vdim != embed_dim (separate projections), no bias, batch_first, per-head weights."""
    rng = np.random.default_rng(3)
    s, kdim, vdim = 4, 3, 5
    query = rng.standard_normal((N, L, EMB))
    key = rng.standard_normal((N, s, kdim))
    value = rng.standard_normal((N, s, vdim))
    params = mha_params(rng, kdim, vdim, bias=False)
    masks, dead = mha_masks(kind, rng, s)
    run_mha_gradcheck("mha cross", query, key, value, params, masks,
                      dict(batch_first=True, average_attn_weights=False), dead)


@pytest.mark.parametrize("kind", ["none", "causal", "float3d", "key_padding", "fully_masked_row"])
def test_mha_unbatched_key_is_value_gradcheck(kind):
    """Unbatched (L, E) query, (S, E) memory used as both key and value, need_weights=False."""
    rng = np.random.default_rng(4)
    s = 3 if kind == "causal" else 4
    query = rng.standard_normal((L, EMB))
    memory = rng.standard_normal((s, EMB))
    params = mha_params(rng)
    masks, dead = mha_masks(kind, rng, s, batched=False)
    out, _, cache = F.multi_head_attention_forward(query, memory, memory, HEADS, params,
                                                   need_weights=False, **masks)
    R = np.random.default_rng(5).standard_normal(out.shape)
    dq, dk, dv, grads = F.multi_head_attention_backward(cache, R)

    def loss():
        o, w = F.multi_head_attention(query, memory, memory, HEADS, params, need_weights=False, **masks)
        assert w is None
        return float(np.sum(o * R))

    check("mha unbatched", "dquery", dq, numeric_grad(loss, query))
    check("mha unbatched", "d(key is value)", dk, numeric_grad(loss, memory))
    assert np.array_equal(dk, dv)
    for name, p in params.items():
        check("mha unbatched", f"d{name}", grads[name], numeric_grad(loss, p))
    if dead is not None:
        assert np.all(dq[dead] == 0)


# ----------------------------------------------------------------------------- additive
B, SA, QS, KS, HID = 3, 5, 4, 3, 6


def additive_mask(kind, rng):
    if kind == "none":
        return None
    if kind == "bool":
        m = rng.random((B, SA)) < 0.6
        m[:, 2] = True
        return m
    if kind == "key_padding":  # lengths 5, 3, 1
        return np.arange(SA)[None, :] < np.array([5, 3, 1])[:, None]
    if kind == "fully_masked_row":
        m = rng.random((B, SA)) < 0.6
        m[:, 0] = True
        m[1] = False
        return m
    raise AssertionError(kind)


@pytest.mark.parametrize("precomputed", [False, True])
@pytest.mark.parametrize("kind", ["none", "bool", "key_padding", "fully_masked_row"])
def test_additive_gradcheck(kind, precomputed):
    rng = np.random.default_rng(6)
    query = rng.standard_normal((B, QS))
    keys = rng.standard_normal((B, SA, KS))
    W_q = rng.standard_normal((HID, QS)) * 0.5
    W_k = rng.standard_normal((HID, KS)) * 0.5
    b = rng.standard_normal(HID) * 0.5
    v = rng.standard_normal(HID)
    mask = additive_mask(kind, rng)

    def run(forward):
        kp = F.additive_attention_precompute(keys, W_k) if precomputed else None
        return forward(query, keys, W_q, W_k, b, v, mask=mask, keys_proj=kp)

    context, weights, cache = run(F.additive_attention_forward)
    R = rng.standard_normal(context.shape)
    dquery, dkeys, grads = F.additive_attention_backward(cache, R)

    def loss():
        return float(np.sum(run(F.additive_attention)[0] * R))

    family = "additive"
    check(family, "dquery", dquery, numeric_grad(loss, query))
    check(family, "dkeys", dkeys, numeric_grad(loss, keys))
    for name, p, g in zip(("W_q", "W_k", "b", "v"), (W_q, W_k, b, v), grads):
        check(family, f"d{name}", g, numeric_grad(loss, p))
    if kind == "fully_masked_row":
        assert np.all(context[1] == 0) and np.all(weights[1] == 0)
        assert np.all(dquery[1] == 0) and np.all(dkeys[1] == 0)
    if mask is not None:
        assert np.all(weights[~mask] == 0)
