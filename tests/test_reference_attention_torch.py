"""The NumPy attention reference against PyTorch (float64, CPU autograd).

- F.scaled_dot_product_attention: every mask kind, broadcast leading dims, Lq != S, Ev != E,
  scale, is_causal (top-left aligned when Lq != S, as PyTorch): output and dq, dk, dv.
- nn.MultiheadAttention: self (query is key is value), cross with kdim/vdim, bias=False, key
  padding, causal hint + batch_first, need_weights=False, average_attn_weights=False,
  unbatched: output, weights, dquery, dkey, dvalue and every parameter gradient.
- AdditiveAttention: the formula, written directly in torch autograd.
- Fully masked query rows: our contract is 0 output and 0 gradient; torch is compared on the
  rows it defines.
All comparisons: float64, max error <= 1e-9 relative to the largest expected entry.
"""
import numpy as np
import pytest
from helpers import assert_close, relative_error

import fastrnn.reference as R
from fastrnn.reference import functional as F

RTOL = 1e-9
WORST = {}


@pytest.fixture(scope="module", autouse=True)
def _report_worst():
    yield
    for family, err in sorted(WORST.items()):
        print(f"\n[torch parity] worst relative error {family}: {err:.2e}")


def check(family, name, actual, expected):
    WORST[family] = max(WORST.get(family, 0.0), relative_error(actual, expected))
    assert_close(actual, expected, RTOL, name=f"{family} {name}")


def tensors(torch, *arrays):
    return [torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in arrays]


# ----------------------------------------------------------------------------- SDPA

SDPA_CASES = {
    # name: (q shape, k shape, v shape, mask kind, is_causal, scale)
    "plain": ((2, 3, 4, 8), (2, 3, 6, 8), (2, 3, 6, 5), None, False, None),
    "broadcast": ((2, 1, 4, 8), (1, 3, 6, 8), (3, 6, 5), None, False, None),
    "broadcast_3way": ((4, 8), (2, 6, 8), (3, 1, 6, 5), None, False, None),
    "bool_2d": ((2, 3, 4, 8), (2, 3, 6, 8), (2, 3, 6, 5), ("bool", (4, 6)), False, None),
    "bool_4d": ((2, 3, 4, 8), (2, 3, 6, 8), (2, 3, 6, 5), ("bool", (2, 3, 4, 6)), False, None),
    "key_padding": ((2, 3, 4, 8), (2, 3, 6, 8), (2, 3, 6, 5), ("padding", (2, 1, 1, 6)), False, None),
    "float": ((2, 3, 4, 8), (2, 3, 6, 8), (2, 3, 6, 5), ("float", (2, 1, 4, 6)), False, None),
    "float_neg_inf": ((2, 3, 4, 8), (2, 3, 6, 8), (2, 3, 6, 5), ("float_inf", (4, 6)), False, None),
    "causal_square": ((2, 5, 8), (2, 5, 8), (2, 5, 3), None, True, None),
    "causal_lq_lt_s": ((2, 4, 8), (2, 7, 8), (2, 7, 3), None, True, None),
    "causal_lq_gt_s": ((2, 7, 8), (2, 4, 8), (2, 4, 3), None, True, None),
    "scale": ((2, 3, 4, 8), (2, 3, 6, 8), (2, 3, 6, 5), ("bool", (4, 6)), False, 0.37),
    "unbatched": ((4, 8), (6, 8), (6, 5), None, False, 1.5),
}


def make_sdpa_mask(spec, rng):
    if spec is None:
        return None
    kind, shape = spec
    if kind == "bool":
        m = rng.random(shape) < 0.7
        m[..., 0] = True
        return m
    if kind == "padding":
        m = np.ones(shape, bool)
        m[0, ..., 4:] = False
        m[1, ..., 5:] = False
        return m
    if kind == "float":
        return rng.standard_normal(shape)
    if kind == "float_inf":
        m = rng.standard_normal(shape)
        m[rng.random(shape) < 0.3] = -np.inf
        m[:, 0] = 0.0
        return m
    raise AssertionError(kind)


@pytest.mark.parametrize("case", list(SDPA_CASES))
def test_sdpa_matches_torch(torch, case):
    qs, ks, vs, mspec, causal, scale = SDPA_CASES[case]
    rng = np.random.default_rng(list(SDPA_CASES).index(case))
    q, k, v = rng.standard_normal(qs), rng.standard_normal(ks), rng.standard_normal(vs)
    mask = make_sdpa_mask(mspec, rng)
    out, cache = F.scaled_dot_product_attention_forward(q, k, v, attn_mask=mask, is_causal=causal, scale=scale)
    dout = rng.standard_normal(out.shape)
    dq, dk, dv = F.scaled_dot_product_attention_backward(cache, dout)

    tq, tk, tv = tensors(torch, q, k, v)
    tmask = None if mask is None else torch.tensor(mask)
    tout = torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, attn_mask=tmask, is_causal=causal,
                                                            scale=scale)
    tout.backward(torch.tensor(dout))
    check("sdpa", f"{case} out", out, tout.detach().numpy())
    check("sdpa", f"{case} dq", dq, tq.grad.numpy())
    check("sdpa", f"{case} dk", dk, tk.grad.numpy())
    check("sdpa", f"{case} dv", dv, tv.grad.numpy())
    # the inference form gives the same numbers
    assert np.array_equal(F.scaled_dot_product_attention(q, k, v, mask, causal, scale), out)


def test_sdpa_causal_and_mask_combine(torch):
    """is_causal together with attn_mask (PyTorch refuses) = both masks applied."""
    rng = np.random.default_rng(11)
    q, k, v = rng.standard_normal((2, 5, 4)), rng.standard_normal((2, 6, 4)), rng.standard_normal((2, 6, 3))
    mask = rng.random((5, 6)) < 0.8
    mask[:, 0] = True
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=True)
    both = mask & np.tri(5, 6, dtype=bool)
    tout = torch.nn.functional.scaled_dot_product_attention(*map(torch.tensor, (q, k, v)),
                                                            attn_mask=torch.tensor(both))
    check("sdpa", "causal+mask out", out, tout.numpy())


@pytest.mark.parametrize("float_mask", [False, True])
def test_sdpa_fully_masked_rows_are_zero(torch, float_mask):
    """A row with nothing to attend to: output 0, no gradient to q, k, v from it, no NaN.
    The other rows match torch; dk, dv match torch run without the dead rows."""
    rng = np.random.default_rng(12)
    B, Lq, S, E, Ev = 2, 5, 4, 3, 2
    q, k, v = rng.standard_normal((B, Lq, E)), rng.standard_normal((B, S, E)), rng.standard_normal((B, S, Ev))
    allowed = rng.random((B, Lq, S)) < 0.7
    allowed[..., 0] = True
    allowed[0, 1] = False
    allowed[1, 3] = False
    allowed[1, 4] = False
    mask = np.where(allowed, 0.0, -np.inf) if float_mask else allowed
    out, cache = F.scaled_dot_product_attention_forward(q, k, v, attn_mask=mask)
    dout = rng.standard_normal(out.shape)
    dq, dk, dv = F.scaled_dot_product_attention_backward(cache, dout)
    for a in (out, dq, dk, dv):
        assert np.all(np.isfinite(a))
    dead = ~allowed.any(axis=-1)  # (B, Lq)
    assert np.all(out[dead] == 0) and np.all(dq[dead] == 0)
    assert np.all(cache["p"][dead] == 0)
    # dead rows contribute nothing: zeroing their dout changes no gradient
    dout0 = np.where(dead[..., None], 0.0, dout)
    for a, b in zip((dq, dk, dv), F.scaled_dot_product_attention_backward(cache, dout0)):
        assert np.array_equal(a, b)
    # torch on the live rows (a live-rows-only problem per batch entry)
    for b in range(B):
        live = ~dead[b]
        tq, tk, tv = tensors(torch, q[b, live], k[b], v[b])
        tm = torch.tensor(mask[b][live])
        tout = torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, attn_mask=tm)
        tout.backward(torch.tensor(dout[b, live]))
        check("sdpa", "fully-masked live out", out[b, live], tout.detach().numpy())
        check("sdpa", "fully-masked live dq", dq[b, live], tq.grad.numpy())
        check("sdpa", "fully-masked dk", dk[b], tk.grad.numpy())
        check("sdpa", "fully-masked dv", dv[b], tv.grad.numpy())


# ----------------------------------------------------------------------------- MHA

def torch_mha(torch, embed_dim, num_heads, bias=True, kdim=None, vdim=None, batch_first=False, seed=0):
    torch.manual_seed(seed)
    m = torch.nn.MultiheadAttention(embed_dim, num_heads, bias=bias, kdim=kdim, vdim=vdim,
                                    batch_first=batch_first, dtype=torch.float64)
    if bias:  # PyTorch initialises biases to 0: make them random so their gradients matter
        with torch.no_grad():
            m.in_proj_bias.normal_()
            m.out_proj.bias.normal_()
    return m


def np_state(torch_module):
    return {k: v.detach().numpy().copy() for k, v in torch_module.state_dict().items()}


def run_mha_pair(torch, tm, args, kwargs, self_attention=False, key_is_value=False, seed=0):
    """Run torch module `tm` and a float64 fr.reference.MultiheadAttention loaded from it."""
    mha = R.MultiheadAttention(tm.embed_dim, tm.num_heads, bias=tm.in_proj_bias is not None,
                               kdim=tm.kdim, vdim=tm.vdim, batch_first=tm.batch_first, dtype="float64")
    mha.load_state_dict(np_state(tm))
    query, key, value = args
    if self_attention:
        key = value = query
    elif key_is_value:
        value = key
    out, weights, cache = mha.forward(query, key, value, **kwargs)
    rng = np.random.default_rng(seed + 100)
    dout = rng.standard_normal(out.shape)
    dq, dk, dv = mha.backward(cache, dout)

    tq = torch.tensor(query, requires_grad=True)
    tk = tq if self_attention else torch.tensor(key, requires_grad=True)
    tv = tq if self_attention else (tk if key_is_value else torch.tensor(value, requires_grad=True))
    tkw = {n: (torch.tensor(a) if isinstance(a, np.ndarray) else a) for n, a in kwargs.items()}
    tout, tweights = tm(tq, tk, tv, **tkw)
    tout.backward(torch.tensor(dout))
    return (out, weights, dq, dk, dv, mha.grads), (tout, tweights, tq, tk, tv, tm)


def compare_mha(family, ours, theirs):
    out, weights, dq, dk, dv, grads = ours
    tout, tweights, tq, tk, tv, tm = theirs
    check(family, "out", out, tout.detach().numpy())
    if tweights is None:
        assert weights is None
    else:
        check(family, "weights", weights, tweights.detach().numpy())
    check(family, "dquery", dq, tq.grad.numpy())
    check(family, "dkey", dk, tk.grad.numpy())
    check(family, "dvalue", dv, tv.grad.numpy())
    tparams = dict(tm.named_parameters())
    assert list(grads) == list(tm.state_dict())
    for name, g in grads.items():
        check(family, f"d{name}", g, tparams[name].grad.numpy())


E_, H_, L_, S_, N_ = 8, 2, 5, 6, 3


def test_mha_self_attention_matches_torch(torch):
    """Packed in_proj, biases, time-major, one array as query, key and value."""
    rng = np.random.default_rng(20)
    tm = torch_mha(torch, E_, H_)
    x = rng.standard_normal((L_, N_, E_))
    ours, theirs = run_mha_pair(torch, tm, (x, None, None), {}, self_attention=True)
    compare_mha("mha self", ours, theirs)
    assert np.array_equal(ours[2], ours[3]) and np.array_equal(ours[2], ours[4])


def test_mha_cross_kdim_vdim_key_padding_matches_torch(torch):
    """Separate q/k/v_proj_weight, bool key_padding_mask and bool attn_mask (True = ignore)."""
    rng = np.random.default_rng(21)
    tm = torch_mha(torch, E_, H_, kdim=3, vdim=5)
    args = (rng.standard_normal((L_, N_, E_)), rng.standard_normal((S_, N_, 3)), rng.standard_normal((S_, N_, 5)))
    kpm = np.zeros((N_, S_), bool)
    kpm[0, 4:] = True
    kpm[2, 1] = True
    am = rng.random((L_, S_)) < 0.3
    am[:, 0] = False
    ours, theirs = run_mha_pair(torch, tm, args, dict(key_padding_mask=kpm, attn_mask=am))
    compare_mha("mha cross", ours, theirs)


def test_mha_float_masks_matches_torch(torch):
    """Float key_padding_mask and float 3-D (N*heads, L, S) attn_mask, key is value."""
    rng = np.random.default_rng(22)
    tm = torch_mha(torch, E_, H_)
    args = (rng.standard_normal((L_, N_, E_)), rng.standard_normal((S_, N_, E_)), None)
    kpm = rng.standard_normal((N_, S_))
    kpm[1, 2] = -np.inf
    am = rng.standard_normal((N_ * H_, L_, S_))
    am[3, 1, 1] = -np.inf
    ours, theirs = run_mha_pair(torch, tm, args, dict(key_padding_mask=kpm, attn_mask=am), key_is_value=True)
    compare_mha("mha float masks", ours, theirs)
    assert np.array_equal(ours[3], ours[4])


def test_mha_no_bias_3d_bool_mask_matches_torch(torch):
    rng = np.random.default_rng(23)
    tm = torch_mha(torch, E_, H_, bias=False)
    args = tuple(rng.standard_normal(s) for s in ((L_, N_, E_), (S_, N_, E_), (S_, N_, E_)))
    am = rng.random((N_ * H_, L_, S_)) < 0.3
    am[..., 2] = False
    ours, theirs = run_mha_pair(torch, tm, args, dict(attn_mask=am))
    assert sorted(ours[5]) == ["in_proj_weight", "out_proj.weight"]
    compare_mha("mha no bias", ours, theirs)


@pytest.mark.parametrize("need_weights", [True, False])
@pytest.mark.parametrize("with_padding", [False, True])
def test_mha_causal_batch_first_matches_torch(torch, need_weights, with_padding):
    """PyTorch's is_causal hint with its causal attn_mask; PyTorch takes different internal
    paths for need_weights / key padding, we always apply the mask (same numbers)."""
    rng = np.random.default_rng(24)
    tm = torch_mha(torch, E_, H_, batch_first=True)
    x = rng.standard_normal((N_, L_, E_))
    causal = np.triu(np.ones((L_, L_), bool), 1)
    kwargs = dict(attn_mask=causal, is_causal=True, need_weights=need_weights)
    if with_padding:
        kpm = np.zeros((N_, L_), bool)
        kpm[1, 3:] = True
        kwargs["key_padding_mask"] = kpm
    ours, theirs = run_mha_pair(torch, tm, (x, None, None), kwargs, self_attention=True)
    compare_mha("mha causal batch_first", ours, theirs)
    if not need_weights:
        assert ours[1] is None


def test_mha_need_weights_false_matches_torch(torch):
    rng = np.random.default_rng(25)
    tm = torch_mha(torch, E_, 4, kdim=6, vdim=6)
    args = (rng.standard_normal((L_, N_, E_)), rng.standard_normal((S_, N_, 6)), rng.standard_normal((S_, N_, 6)))
    kpm = np.zeros((N_, S_), bool)
    kpm[:, -1] = True
    ours, theirs = run_mha_pair(torch, tm, args, dict(key_padding_mask=kpm, need_weights=False))
    assert ours[1] is None
    compare_mha("mha need_weights=False", ours, theirs)


def test_mha_per_head_weights_matches_torch(torch):
    rng = np.random.default_rng(26)
    tm = torch_mha(torch, E_, 4, batch_first=True)
    args = tuple(rng.standard_normal(s) for s in ((N_, L_, E_), (N_, S_, E_), (N_, S_, E_)))
    am = rng.standard_normal((L_, S_))
    ours, theirs = run_mha_pair(torch, tm, args, dict(attn_mask=am, average_attn_weights=False))
    assert ours[1].shape == (N_, 4, L_, S_)
    compare_mha("mha per-head weights", ours, theirs)


@pytest.mark.parametrize("average", [True, False])
def test_mha_unbatched_matches_torch(torch, average):
    rng = np.random.default_rng(27)
    tm = torch_mha(torch, E_, H_, kdim=3, vdim=4)
    args = (rng.standard_normal((L_, E_)), rng.standard_normal((S_, 3)), rng.standard_normal((S_, 4)))
    kpm = np.zeros(S_)
    kpm[2] = -np.inf
    am = rng.standard_normal((H_, L_, S_))
    ours, theirs = run_mha_pair(torch, tm, args, dict(key_padding_mask=kpm, attn_mask=am,
                                                      average_attn_weights=average))
    assert ours[0].shape == (L_, E_)
    assert ours[1].shape == ((L_, S_) if average else (H_, L_, S_))
    compare_mha("mha unbatched", ours, theirs)


@pytest.mark.filterwarnings("ignore:Support for mismatched key_padding_mask and attn_mask:UserWarning")
def test_mha_mixed_mask_types_matches_torch(torch):
    """bool key_padding_mask with a float attn_mask: PyTorch warns (deprecated) but supports it."""
    rng = np.random.default_rng(28)
    tm = torch_mha(torch, E_, H_)
    args = tuple(rng.standard_normal(s) for s in ((L_, N_, E_), (S_, N_, E_), (S_, N_, E_)))
    kpm = np.zeros((N_, S_), bool)
    kpm[0, :2] = True
    ours, theirs = run_mha_pair(torch, tm, args, dict(key_padding_mask=kpm, attn_mask=rng.standard_normal((L_, S_))))
    compare_mha("mha mixed masks", ours, theirs)


def test_mha_fully_masked_rows(torch):
    """A query row that may attend to nothing: attention output 0 (so out = out_proj.bias),
    weights 0, no gradient from it, never NaN. Compared with torch on the live rows only."""
    rng = np.random.default_rng(29)
    tm = torch_mha(torch, E_, H_, kdim=3, vdim=5)
    query = rng.standard_normal((L_, N_, E_))
    key, value = rng.standard_normal((S_, N_, 3)), rng.standard_normal((S_, N_, 5))
    am = np.zeros((L_, S_), bool)
    am[2, :] = True                      # row 2 is dead in every batch entry and head
    mha = R.MultiheadAttention(E_, H_, kdim=3, vdim=5, dtype="float64")
    mha.load_state_dict(np_state(tm))
    out, weights, cache = mha.forward(query, key, value, attn_mask=am)
    dout = rng.standard_normal(out.shape)
    dq, dk, dv = mha.backward(cache, dout)
    for a in (out, weights, dq, dk, dv, *mha.grads.values()):
        assert np.all(np.isfinite(a))
    b_o = mha.params["out_proj.bias"]
    assert np.array_equal(out[2], np.broadcast_to(b_o, (N_, E_)))
    assert np.all(weights[:, 2] == 0) and np.all(dq[2] == 0)
    # torch without the dead row gives the same everything, except out_proj.bias also
    # collects the dead row's dout (out = b_o there)
    live = np.array([i for i in range(L_) if i != 2])
    tq, tk, tv = tensors(torch, query[live], key, value)
    tout, tw = tm(tq, tk, tv, attn_mask=torch.tensor(am[live]))
    tout.backward(torch.tensor(dout[live]))
    check("mha fully masked", "out", out[live], tout.detach().numpy())
    check("mha fully masked", "weights", weights[:, live], tw.detach().numpy())
    check("mha fully masked", "dquery", dq[live], tq.grad.numpy())
    check("mha fully masked", "dkey", dk, tk.grad.numpy())
    check("mha fully masked", "dvalue", dv, tv.grad.numpy())
    for name, p in tm.named_parameters():
        expected = p.grad.numpy() + (dout[2].sum(axis=0) if name == "out_proj.bias" else 0)
        check("mha fully masked", f"d{name}", mha.grads[name], expected)


# ----------------------------------------------------------------------------- additive

@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("precomputed", [False, True])
def test_additive_matches_torch_formula(torch, masked, precomputed):
    """score_s = v . tanh(W_q q + W_k k_s + b), masked softmax, context = sum_s a_s k_s."""
    rng = np.random.default_rng(30)
    B, S, Q, K, H = 3, 7, 5, 4, 6
    att = R.AdditiveAttention(Q, K, H, dtype="float64", seed=3)
    query, keys = rng.standard_normal((B, Q)), rng.standard_normal((B, S, K))
    mask = None
    if masked:
        mask = rng.random((B, S)) < 0.6
        mask[:, 1] = True
    kp = att.precompute(keys) if precomputed else None
    context, weights, cache = att.forward(query, keys, mask=mask, keys_proj=kp)
    dctx = rng.standard_normal(context.shape)
    dquery, dkeys = att.backward(cache, dctx)

    p = {n: torch.tensor(a, requires_grad=True) for n, a in att.params.items()}
    tq, tk = tensors(torch, query, keys)
    scores = torch.tanh(tk @ p["W_k"].T + (tq @ p["W_q"].T)[:, None, :] + p["b"]) @ p["v"]
    if mask is not None:
        scores = scores.masked_fill(~torch.tensor(mask), float("-inf"))
    a = torch.softmax(scores, dim=-1)
    tctx = (a[:, :, None] * tk).sum(dim=1)
    tctx.backward(torch.tensor(dctx))
    check("additive", "context", context, tctx.detach().numpy())
    check("additive", "weights", weights, a.detach().numpy())
    check("additive", "dquery", dquery, tq.grad.numpy())
    check("additive", "dkeys", dkeys, tk.grad.numpy())
    for name in ("W_q", "W_k", "b", "v"):
        check("additive", f"d{name}", att.grads[name], p[name].grad.numpy())
