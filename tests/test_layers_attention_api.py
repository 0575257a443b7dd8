"""The attention layer classes' contract (run on the NumPy backend, fastrnn.reference).

Parameter names/shapes/init as PyTorch, load_state_dict from torch, gradient accumulation,
aliased query/key/value, argument errors that name the argument, read-only and
non-contiguous inputs, float32 layers against the float64 reference.
"""
import numpy as np
import pytest
from helpers import assert_close

import fastrnn.reference as R
from fastrnn.reference import functional as F

E, HEADS, L, S, N = 8, 2, 4, 5, 3


def torch_state(torch, **kwargs):
    torch.manual_seed(0)
    m = torch.nn.MultiheadAttention(E, HEADS, dtype=torch.float64, **kwargs)
    return m, {k: v.detach().numpy() for k, v in m.state_dict().items()}


# ----------------------------------------------------------------------------- parameters

@pytest.mark.parametrize("kwargs", [{}, dict(bias=False), dict(kdim=3, vdim=6), dict(kdim=3, bias=False),
                                    dict(batch_first=True)])
def test_mha_params_match_torch_state_dict(torch, kwargs):
    tm, sd = torch_state(torch, **kwargs)
    mha = R.MultiheadAttention(E, HEADS, seed=0, **kwargs)
    assert list(mha.params) == list(sd)
    assert list(mha.grads) == list(sd)
    for name, a in sd.items():
        assert mha.params[name].shape == a.shape and mha.grads[name].shape == a.shape
        assert mha.params[name].dtype == np.float32
    assert ("in_proj_weight" in mha.params) == ("kdim" not in kwargs)


def test_mha_init_like_torch():
    mha = R.MultiheadAttention(E, HEADS, kdim=3, seed=1)
    assert np.all(mha.params["in_proj_bias"] == 0) and np.all(mha.params["out_proj.bias"] == 0)
    for name, fan_in in (("q_proj_weight", E), ("k_proj_weight", 3), ("v_proj_weight", E)):
        bound = np.sqrt(6.0 / (E + fan_in))                      # xavier_uniform
        w = mha.params[name]
        assert np.abs(w).max() <= bound and np.abs(w).max() > 0.8 * bound
    assert np.abs(mha.params["out_proj.weight"]).max() <= 1 / np.sqrt(E)   # nn.Linear default
    packed = R.MultiheadAttention(E, HEADS, seed=1).params["in_proj_weight"]
    assert np.abs(packed).max() <= np.sqrt(6.0 / (E + 3 * E))   # xavier over the whole (3E, E)
    # reproducible with seed, different without
    again = R.MultiheadAttention(E, HEADS, kdim=3, seed=1)
    for name in mha.params:
        assert np.array_equal(mha.params[name], again.params[name])
    other = R.MultiheadAttention(E, HEADS, kdim=3, seed=2)
    assert not np.array_equal(mha.params["q_proj_weight"], other.params["q_proj_weight"])
    att = R.AdditiveAttention(4, 3, 6, seed=1)
    assert [(n, p.shape) for n, p in att.params.items()] == [("W_q", (6, 4)), ("W_k", (6, 3)), ("b", (6,)),
                                                             ("v", (6,))]
    assert np.abs(att.params["W_k"]).max() <= 1 / np.sqrt(3) and np.abs(att.params["v"]).max() <= 1 / np.sqrt(6)
    assert np.array_equal(att.params["W_q"], R.AdditiveAttention(4, 3, 6, seed=1).params["W_q"])


def test_mha_load_state_dict_from_torch_and_state_dict_copies(torch, tmp_path):
    tm, sd = torch_state(torch, kdim=3, vdim=6)
    mha = R.MultiheadAttention(E, HEADS, kdim=3, vdim=6, dtype="float64", seed=5)
    held = mha.params["q_proj_weight"]                 # optimizers keep references
    mha.load_state_dict(sd)
    assert mha.params["q_proj_weight"] is held
    for name, a in sd.items():
        assert np.array_equal(mha.params[name], a)
    # torch tensors directly work too
    mha2 = R.MultiheadAttention(E, HEADS, kdim=3, vdim=6, dtype="float32")
    mha2.load_state_dict(tm.state_dict())
    assert_close(mha2.params["k_proj_weight"], sd["k_proj_weight"], 1e-7)
    # state_dict returns copies
    out = mha.state_dict()
    out["out_proj.weight"][...] = 0
    assert not np.all(mha.params["out_proj.weight"] == 0)
    # round trip through np.savez / np.load ("out_proj.weight" has a dot: fine for npz)
    np.savez(tmp_path / "mha.npz", **mha.state_dict())
    mha3 = R.MultiheadAttention(E, HEADS, kdim=3, vdim=6, dtype="float64")
    with np.load(tmp_path / "mha.npz") as npz:
        mha3.load_state_dict(npz)
    for name, a in sd.items():
        assert np.array_equal(mha3.params[name], a)
    # and it computes what torch computes
    rng = np.random.default_rng(0)
    q = rng.standard_normal((L, N, E))
    k, v = rng.standard_normal((S, N, 3)), rng.standard_normal((S, N, 6))
    tout, tw = tm(*(torch.tensor(a) for a in (q, k, v)))
    out, w = mha(q, k, v)
    assert_close(out, tout.detach().numpy(), 1e-12)
    assert_close(w, tw.detach().numpy(), 1e-12)


def test_load_state_dict_errors():
    mha = R.MultiheadAttention(E, HEADS)
    sd = mha.state_dict()
    before = mha.state_dict()
    bad = dict(sd)
    del bad["in_proj_bias"]
    with pytest.raises(ValueError, match=r"state_dict: missing keys \['in_proj_bias'\]"):
        mha.load_state_dict(bad)
    with pytest.raises(ValueError, match=r"unexpected keys \['q_proj_weight'\]"):
        mha.load_state_dict({**sd, "q_proj_weight": np.zeros((E, E))})
    wrong = {**sd, "out_proj.weight": np.zeros((E, E + 1)), "in_proj_weight": np.ones((3 * E, E))}
    with pytest.raises(ValueError, match=r"state_dict\['out_proj.weight'\]: expected shape \(8, 8\), got \(8, 9\)"):
        mha.load_state_dict(wrong)
    with pytest.raises(TypeError, match=r"state_dict\['out_proj.bias'\]"):
        mha.load_state_dict({**sd, "out_proj.bias": np.zeros(E, dtype=np.int64)})
    with pytest.raises(TypeError, match="state_dict"):
        mha.load_state_dict([1, 2])
    for name in sd:  # nothing was changed by the failed loads
        assert np.array_equal(mha.params[name], before[name])
    att = R.AdditiveAttention(4, 3, 6)
    with pytest.raises(ValueError, match=r"state_dict\['W_k'\]: expected shape \(6, 3\)"):
        att.load_state_dict({**att.state_dict(), "W_k": np.zeros((6, 4))})


# ----------------------------------------------------------------------------- gradients

def test_grads_accumulate_and_zero_grad():
    rng = np.random.default_rng(1)
    mha = R.MultiheadAttention(E, HEADS, dtype="float64", seed=0)
    x = rng.standard_normal((L, N, E))
    out, _, cache = mha.forward(x, x, x)
    dout = rng.standard_normal(out.shape)
    first = mha.backward(cache, dout)
    once = {k: g.copy() for k, g in mha.grads.items()}
    assert all(np.any(g != 0) for g in once.values())
    second = mha.backward(cache, dout)            # a cache may be used again
    for k, g in mha.grads.items():
        assert_close(g, 2 * once[k], 1e-14, name=k)
    for a, b in zip(first, second):
        assert np.array_equal(a, b)
    mha.zero_grad()
    assert all(np.all(g == 0) for g in mha.grads.values())

    att = R.AdditiveAttention(4, 3, 6, dtype="float64", seed=0)
    query, keys = rng.standard_normal((2, 4)), rng.standard_normal((2, 5, 3))
    _, _, c = att.forward(query, keys)
    att.backward(c, np.ones((2, 3)))
    once = {k: g.copy() for k, g in att.grads.items()}
    att.backward(c, np.ones((2, 3)))
    for k, g in att.grads.items():
        assert_close(g, 2 * once[k], 1e-14, name=k)
    att.zero_grad()
    assert all(np.all(g == 0) for g in att.grads.values())


def test_functional_grads_accumulate_into_given_dict():
    rng = np.random.default_rng(2)
    mha = R.MultiheadAttention(E, HEADS, kdim=3, vdim=6, dtype="float64", seed=0)
    q, k, v = rng.standard_normal((L, N, E)), rng.standard_normal((S, N, 3)), rng.standard_normal((S, N, 6))
    out, _, cache = F.multi_head_attention_forward(q, k, v, HEADS, mha.params)
    dout = rng.standard_normal(out.shape)
    *_, fresh = F.multi_head_attention_backward(cache, dout)
    target = {n: np.full_like(g, 1.0) for n, g in fresh.items()}
    *_, returned = F.multi_head_attention_backward(cache, dout, target)
    assert returned is target
    for n in fresh:
        assert_close(target[n], fresh[n] + 1.0, 1e-14, name=n)
    with pytest.raises(ValueError, match="grads: missing key 'out_proj.bias'"):
        F.multi_head_attention_backward(cache, dout, {n: g for n, g in fresh.items() if n != "out_proj.bias"})
    with pytest.raises(ValueError, match=r"grads\['in_proj_bias'\]: expected shape"):
        F.multi_head_attention_backward(cache, dout, {**fresh, "in_proj_bias": np.zeros(3)})


@pytest.mark.parametrize("batch_first", [False, True])
def test_query_is_key_is_value_sums_gradients(batch_first):
    rng = np.random.default_rng(3)
    mha = R.MultiheadAttention(E, HEADS, batch_first=batch_first, dtype="float64", seed=0)
    x = rng.standard_normal((N, L, E) if batch_first else (L, N, E))
    am = np.triu(np.ones((L, L), bool), 1)
    out, _, cache = mha.forward(x, x, x, attn_mask=am)
    dout = rng.standard_normal(out.shape)
    dq, dk, dv = mha.backward(cache, dout)
    g_alias = {n: g.copy() for n, g in mha.grads.items()}
    mha.zero_grad()
    out2, _, cache2 = mha.forward(x, x.copy(), x.copy(), attn_mask=am)   # three different arrays
    sq, sk, sv = mha.backward(cache2, dout)
    assert np.array_equal(out, out2)
    assert_close(dq, sq + sk + sv, 1e-13, name="total gradient")
    assert np.array_equal(dq, dk) and np.array_equal(dq, dv)
    assert dq is not dk and dk is not dv                                  # the caller owns each
    for n, g in mha.grads.items():
        assert_close(g_alias[n], g, 1e-14, name=n)
    # key is value (cross-attention memory) but query differs
    mha.zero_grad()
    mem = rng.standard_normal((N, S, E) if batch_first else (S, N, E))
    out3, _, cache3 = mha.forward(x, mem, mem)
    _, dk3, dv3 = mha.backward(cache3, dout)
    _, _, cache4 = mha.forward(x, mem, mem.copy())
    _, sk4, sv4 = mha.backward(cache4, dout)
    assert_close(dk3, sk4 + sv4, 1e-13, name="key is value")
    assert np.array_equal(dk3, dv3)


def test_query_is_key_survives_dtype_conversion():
    """A float64 array given to a float32 layer is converted once: still one array."""
    rng = np.random.default_rng(4)
    mha = R.MultiheadAttention(E, HEADS, seed=0)
    x = rng.standard_normal((L, N, E))                      # float64 into a float32 layer
    out, _, cache = mha.forward(x, x, x)
    dq, dk, dv = mha.backward(cache, np.ones_like(out))
    assert dq.dtype == np.float32 and np.array_equal(dq, dk)
    x32 = x.astype(np.float32)
    _, _, c2 = mha.forward(x32, x32.copy(), x32.copy())
    assert_close(dq, sum(mha.backward(c2, np.ones_like(out))), 1e-5)


def test_unbatched_equals_batched_with_one_entry():
    rng = np.random.default_rng(5)
    mha = R.MultiheadAttention(E, HEADS, kdim=3, vdim=6, dtype="float64", seed=0)
    q, k, v = rng.standard_normal((L, E)), rng.standard_normal((S, 3)), rng.standard_normal((S, 6))
    kpm = np.array([False, True, False, False, False])
    out, w, cache = mha.forward(q, k, v, key_padding_mask=kpm, average_attn_weights=False)
    dout = rng.standard_normal(out.shape)
    dq, dk, dv = mha.backward(cache, dout)
    g1 = {n: g.copy() for n, g in mha.grads.items()}
    mha.zero_grad()
    out_b, w_b, cache_b = mha.forward(q[:, None], k[:, None], v[:, None], key_padding_mask=kpm[None],
                                      average_attn_weights=False)
    grads_b = mha.backward(cache_b, dout[:, None])
    assert out.shape == (L, E) and w.shape == (HEADS, L, S)
    assert np.array_equal(out, out_b[:, 0]) and np.array_equal(w, w_b[0])
    for a, b in zip((dq, dk, dv), grads_b):
        assert np.array_equal(a, b[:, 0])
    for n, g in mha.grads.items():
        assert np.array_equal(g, g1[n])


def test_additive_precompute_over_decoder_steps():
    """keys_proj computed once and reused at each step gives the same numbers; gradients of
    all steps add up in att.grads and in the per-step dkeys."""
    rng = np.random.default_rng(6)
    att = R.AdditiveAttention(4, 3, 6, dtype="float64", seed=0)
    keys = rng.standard_normal((2, 5, 3))
    mask = np.array([[True] * 5, [True, True, False, False, False]])
    kp = att.precompute(keys)
    assert kp.shape == (2, 5, 6)
    assert np.array_equal(kp, F.additive_attention_precompute(keys, att.params["W_k"]))
    total = np.zeros_like(keys)
    for step in range(3):
        query = rng.standard_normal((2, 4))
        ctx, w, cache = att.forward(query, keys, mask=mask, keys_proj=kp)
        ctx2, w2 = att(query, keys, mask=mask)
        assert_close(ctx, ctx2, 1e-14)
        assert_close(w, w2, 1e-14)
        assert np.all(w[1, 2:] == 0) and np.allclose(w.sum(axis=1), 1)
        dquery, dkeys = att.backward(cache, rng.standard_normal(ctx.shape))
        assert dquery.shape == (2, 4) and dkeys.shape == (2, 5, 3)
        total += dkeys
    assert np.all(np.isfinite(total))


# ----------------------------------------------------------------------------- errors

def _mha_inputs(rng, kdim=E, vdim=E):
    return rng.standard_normal((L, N, E)), rng.standard_normal((S, N, kdim)), rng.standard_normal((S, N, vdim))


def test_mha_constructor_errors():
    with pytest.raises(ValueError, match="embed_dim.*divisible by num_heads"):
        R.MultiheadAttention(10, 3)
    with pytest.raises(ValueError, match="num_heads"):
        R.MultiheadAttention(8, 0)
    with pytest.raises(TypeError, match="embed_dim"):
        R.MultiheadAttention(8.0, 2)
    with pytest.raises(TypeError, match="kdim"):
        R.MultiheadAttention(8, 2, kdim="3")
    with pytest.raises(TypeError, match="dtype"):
        R.MultiheadAttention(8, 2, dtype="int32")
    with pytest.raises(TypeError, match="batch_first"):
        R.MultiheadAttention(8, 2, batch_first="yes")
    with pytest.raises(ValueError, match="hidden_size"):
        R.AdditiveAttention(3, 4, 0)


MHA_ERRORS = [
    # (description, mutate(q, k, v, kwargs) -> (q, k, v, kwargs), exception, message regex)
    ("int query", lambda q, k, v, kw: (q.astype(int), k, v, kw), TypeError, "^query: .*dtype int"),
    ("complex key", lambda q, k, v, kw: (q, k.astype(complex), v, kw), TypeError, "^key: "),
    ("query E", lambda q, k, v, kw: (q[..., :6], k, v, kw), ValueError, r"^query: expected shape \(L, N, E\) with E = 8"),
    ("query rank", lambda q, k, v, kw: (q[0, 0], k, v, kw), ValueError, "^query: expected a 3-d"),
    ("key rank", lambda q, k, v, kw: (q, k[:, 0], v, kw), ValueError, "^key: expected a 3-d"),
    ("key kdim", lambda q, k, v, kw: (q, k[..., :5], v[..., :5], kw), ValueError, "^key: expected last dim 8"),
    ("key batch", lambda q, k, v, kw: (q, k[:, :2], v[:, :2], kw), ValueError, "^key: expected batch size N = 3"),
    ("value S", lambda q, k, v, kw: (q, k, v[:4], kw), ValueError, r"^value: expected shape \(5, 3, 'vdim'\)"),
    ("kpm shape", lambda q, k, v, kw: (q, k, v, dict(key_padding_mask=np.zeros((N, S + 1), bool))), ValueError,
     r"^key_padding_mask: expected shape \(3, 5\)"),
    ("kpm int", lambda q, k, v, kw: (q, k, v, dict(key_padding_mask=np.zeros((N, S), int))), TypeError,
     "^key_padding_mask: expected a bool or floating-point mask"),
    ("mask shape", lambda q, k, v, kw: (q, k, v, dict(attn_mask=np.zeros((S, L), bool))), ValueError,
     r"^attn_mask: expected shape \(4, 5\) \(L, S\) or \(6, 4, 5\)"),
    ("mask nan", lambda q, k, v, kw: (q, k, v, dict(attn_mask=np.full((L, S), np.nan))), ValueError,
     "^attn_mask: a float mask may hold -inf"),
    ("causal without mask", lambda q, k, v, kw: (q, k, v, dict(is_causal=True)), ValueError,
     "^attn_mask: is_causal=True is only a hint"),
    ("need_weights", lambda q, k, v, kw: (q, k, v, dict(need_weights=None)), TypeError, "^need_weights"),
    ("average flag", lambda q, k, v, kw: (q, k, v, dict(average_attn_weights=1)), TypeError,
     "^average_attn_weights"),
]


@pytest.mark.parametrize("desc,mutate,exc,msg", MHA_ERRORS, ids=[e[0] for e in MHA_ERRORS])
def test_mha_input_errors_name_the_argument(desc, mutate, exc, msg):
    rng = np.random.default_rng(7)
    mha = R.MultiheadAttention(E, HEADS, dtype="float64")
    q, k, v, kw = mutate(*_mha_inputs(rng), {})
    with pytest.raises(exc, match=msg):
        mha(q, k, v, **kw)
    with pytest.raises(exc, match=msg):
        mha.forward(q, k, v, **kw)


def test_mha_backward_and_functional_errors():
    rng = np.random.default_rng(8)
    mha = R.MultiheadAttention(E, HEADS, dtype="float64")
    other = R.MultiheadAttention(E, HEADS, dtype="float64")
    q, k, v = _mha_inputs(rng)
    out, _, cache = mha.forward(q, k, v)
    with pytest.raises(ValueError, match=r"^dout: expected shape \(4, 3, 8\)"):
        mha.backward(cache, np.ones((L, N, E + 1)))
    with pytest.raises(TypeError, match="^dout"):
        mha.backward(cache, np.ones(out.shape, dtype=int))
    with pytest.raises(ValueError, match="^cache: .*another"):
        other.backward(cache, np.ones_like(out))
    with pytest.raises(ValueError, match="^cache"):
        mha.backward({"kind": "sdpa"}, np.ones_like(out))
    _, sdpa_cache = F.scaled_dot_product_attention_forward(q, q, q)
    with pytest.raises(ValueError, match="^cache: expected the cache returned by multi_head_attention_forward"):
        F.multi_head_attention_backward(sdpa_cache, out)
    params = mha.params
    with pytest.raises(ValueError, match="^num_heads: embed_dim 8 is not divisible by num_heads 3"):
        F.multi_head_attention(q, k, v, 3, params)
    with pytest.raises(ValueError, match="^params: unexpected key 'bias_k'"):
        F.multi_head_attention(q, k, v, 2, {**params, "bias_k": np.zeros(E)})
    with pytest.raises(ValueError, match="^params: missing key 'out_proj.weight'"):
        F.multi_head_attention(q, k, v, 2, {n: p for n, p in params.items() if n != "out_proj.weight"})
    with pytest.raises(ValueError, match=r"^params\['in_proj_bias'\]: expected shape \(24,\)"):
        F.multi_head_attention(q, k, v, 2, {**params, "in_proj_bias": np.zeros(E)})
    with pytest.raises(TypeError, match="^params"):
        F.multi_head_attention(q, k, v, 2, [params["in_proj_weight"]])


SDPA_ERRORS = [
    (lambda q, k, v: dict(q=q.astype(np.int32), k=k, v=v), TypeError, "^q: "),
    (lambda q, k, v: dict(q=q, k=k.astype(bool), v=v), TypeError, "^k: "),
    (lambda q, k, v: dict(q=q[0, 0, 0], k=k, v=v), ValueError, r"^q: expected shape \(\.\.\., Lq, E\)"),
    (lambda q, k, v: dict(q=q, k=k[..., :3], v=v), ValueError, r"^k: expected shape \(\.\.\., S, 4\)"),
    (lambda q, k, v: dict(q=q, k=k, v=v[..., :5, :]), ValueError, r"^v: expected shape \(\.\.\., 6, Ev\)"),
    (lambda q, k, v: dict(q=q, k=k[:, :2], v=v[:, :2]), ValueError, "^k: leading dims"),
    (lambda q, k, v: dict(q=q, k=k, v=v[:, :2]), ValueError, "^v: leading dims"),
    (lambda q, k, v: dict(q=q, k=k, v=v, attn_mask=np.ones((3, 6), bool)), ValueError,
     r"^attn_mask: expected a shape broadcastable to \(2, 3, 5, 6\)"),
    (lambda q, k, v: dict(q=q, k=k, v=v, attn_mask=np.ones((4, 2, 3, 5, 6), bool)), ValueError, "^attn_mask"),
    (lambda q, k, v: dict(q=q, k=k, v=v, attn_mask=np.ones((5, 6), np.int8)), TypeError, "^attn_mask"),
    (lambda q, k, v: dict(q=q, k=k, v=v, attn_mask=np.full((5, 6), np.inf)), ValueError, "^attn_mask"),
    (lambda q, k, v: dict(q=q, k=k, v=v, scale="0.5"), TypeError, "^scale"),
    (lambda q, k, v: dict(q=q, k=k, v=v, scale=np.nan), ValueError, "^scale"),
    (lambda q, k, v: dict(q=q, k=k, v=v, is_causal=1), TypeError, "^is_causal"),
]


@pytest.mark.parametrize("case", range(len(SDPA_ERRORS)))
def test_sdpa_errors_name_the_argument(case):
    mutate, exc, msg = SDPA_ERRORS[case]
    rng = np.random.default_rng(9)
    kwargs = mutate(rng.standard_normal((2, 3, 5, 4)), rng.standard_normal((2, 3, 6, 4)),
                    rng.standard_normal((2, 3, 6, 7)))
    with pytest.raises(exc, match=msg):
        F.scaled_dot_product_attention(**kwargs)
    with pytest.raises(exc, match=msg):
        F.scaled_dot_product_attention_forward(**kwargs)


def test_sdpa_backward_errors():
    rng = np.random.default_rng(10)
    q = rng.standard_normal((2, 5, 4))
    out, cache = F.scaled_dot_product_attention_forward(q, q, q)
    with pytest.raises(ValueError, match=r"^dout: expected shape \(2, 5, 4\)"):
        F.scaled_dot_product_attention_backward(cache, out[:, :4])
    with pytest.raises(ValueError, match="^cache"):
        F.scaled_dot_product_attention_backward(None, out)


def test_additive_errors_name_the_argument():
    rng = np.random.default_rng(11)
    att = R.AdditiveAttention(4, 3, 6, dtype="float64")
    query, keys = rng.standard_normal((2, 4)), rng.standard_normal((2, 5, 3))
    cases = [
        (dict(query=query.astype(int), keys=keys), TypeError, "^query"),
        (dict(query=query[:, :3], keys=keys), ValueError, r"^W_q: expected shape \(6, 3\)"),
        (dict(query=query[0], keys=keys), ValueError, r"^query: expected shape \(B, Q\)"),
        (dict(query=query, keys=keys[:1]), ValueError, r"^keys: expected shape \(2, S, K\)"),
        (dict(query=query, keys=keys[..., :2]), ValueError, r"^W_k: expected shape \(6, 2\)"),
        (dict(query=query, keys=keys, mask=np.ones((2, 4), bool)), ValueError, r"^mask: expected shape \(2, 5\)"),
        (dict(query=query, keys=keys, mask=np.ones((2, 5))), TypeError, "^mask: expected a bool mask"),
        (dict(query=query, keys=keys, keys_proj=np.ones((2, 5, 5))), ValueError,
         r"^keys_proj: expected shape \(2, 5, 6\)"),
    ]
    for kwargs, exc, msg in cases:
        with pytest.raises(exc, match=msg):
            att(**kwargs)
        with pytest.raises(exc, match=msg):
            att.forward(**kwargs)
    ctx, _, cache = att.forward(query, keys)
    with pytest.raises(ValueError, match=r"^dcontext: expected shape \(2, 3\)"):
        att.backward(cache, np.ones((2, 4)))
    with pytest.raises(ValueError, match="^cache"):
        R.AdditiveAttention(4, 3, 6).backward(cache, ctx)
    with pytest.raises(ValueError, match=r"^W_k: expected shape \(H, 3\)"):
        F.additive_attention_precompute(keys, np.ones((6, 4)))
    with pytest.raises(TypeError, match=r"^grads"):
        F.additive_attention_backward(cache.inner, ctx, grads=[np.zeros((6, 4))])


# ----------------------------------------------------------------------------- memory layout

def _weird(a, kind):
    """The same values as `a`, read-only and laid out as `kind`."""
    if kind == "fortran":
        b = np.asfortranarray(a)
    elif kind == "strided":
        big = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), a.dtype)
        big[..., ::2] = a
        b = big[..., ::2]
    else:  # "transposed" view of a transposed copy
        b = np.ascontiguousarray(np.swapaxes(a, 0, -1)).swapaxes(0, -1)
    assert np.array_equal(a, b)
    b.setflags(write=False)
    return b


@pytest.mark.parametrize("kind", ["fortran", "strided", "transposed"])
def test_readonly_noncontiguous_inputs_accepted_and_untouched(kind):
    rng = np.random.default_rng(12)
    mha = R.MultiheadAttention(E, HEADS, kdim=3, vdim=6, dtype="float64", seed=0)
    q, k, v = rng.standard_normal((L, N, E)), rng.standard_normal((S, N, 3)), rng.standard_normal((S, N, 6))
    kpm = np.zeros((N, S), bool)
    kpm[0, 1] = True
    am = rng.standard_normal((L, S))
    ref_out, ref_w, ref_cache = mha.forward(q, k, v, key_padding_mask=kpm, attn_mask=am)
    dout = rng.standard_normal(ref_out.shape)
    ref_grads = mha.backward(ref_cache, dout)
    args = [_weird(a, kind) for a in (q, k, v, am, dout)]
    copies = [a.copy() for a in args]
    kpm_w = _weird(kpm, kind)
    out, w, cache = mha.forward(args[0], args[1], args[2], key_padding_mask=kpm_w, attn_mask=args[3])
    grads = mha.backward(cache, args[4])
    assert np.array_equal(out, ref_out) and np.array_equal(w, ref_w)
    for a, b in zip(grads, ref_grads):
        assert_close(a, b, 1e-14)
    for a, c in zip(args, copies):
        assert np.array_equal(a, c)
    # SDPA and additive too
    q4 = _weird(rng.standard_normal((2, 5, 4)), kind)
    k4 = _weird(rng.standard_normal((2, 6, 4)), kind)
    v4 = _weird(rng.standard_normal((2, 6, 3)), kind)
    saved = [a.copy() for a in (q4, k4, v4)]
    o, c = F.scaled_dot_product_attention_forward(q4, k4, v4, is_causal=True)
    o_ref, c_ref = F.scaled_dot_product_attention_forward(*saved, is_causal=True)
    assert_close(o, o_ref, 1e-14)
    for a, b in zip(F.scaled_dot_product_attention_backward(c, _weird(o, kind)),
                    F.scaled_dot_product_attention_backward(c_ref, o_ref)):
        assert_close(a, b, 1e-14)
    for a, s in zip((q4, k4, v4), saved):
        assert np.array_equal(a, s)
    att = R.AdditiveAttention(4, 3, 6, dtype="float64", seed=0)
    query, keys = _weird(rng.standard_normal((2, 4)), kind), _weird(rng.standard_normal((2, 5, 3)), kind)
    saved = (query.copy(), keys.copy())
    ctx, _, cache = att.forward(query, keys, mask=_weird(np.ones((2, 5), bool), kind))
    att.backward(cache, _weird(np.ones_like(ctx), kind))
    assert_close(ctx, att(*saved)[0], 1e-14)
    assert np.array_equal(query, saved[0]) and np.array_equal(keys, saved[1])


def test_results_are_fresh_arrays():
    rng = np.random.default_rng(13)
    mha = R.MultiheadAttention(E, HEADS, batch_first=True, dtype="float64", seed=0)
    x = rng.standard_normal((N, L, E))
    out, w = mha(x, x, x, need_weights=True, average_attn_weights=False)
    assert out.flags.writeable and w.flags.writeable
    assert not np.shares_memory(out, x)


# ----------------------------------------------------------------------------- dtypes

@pytest.mark.parametrize("batch_first", [False, True])
def test_float32_layer_matches_float64_reference(batch_first):
    rng = np.random.default_rng(14)
    m32 = R.MultiheadAttention(E, HEADS, kdim=3, vdim=6, batch_first=batch_first, dtype="float32", seed=0)
    m64 = R.MultiheadAttention(E, HEADS, kdim=3, vdim=6, batch_first=batch_first, dtype="float64")
    m64.load_state_dict(m32.state_dict())
    for p in m32.params.values():                        # random biases
        if p.ndim == 1:
            p[...] = rng.standard_normal(p.shape)
    m64.load_state_dict(m32.state_dict())
    shape_q = (N, L, E) if batch_first else (L, N, E)
    shape_k = (N, S, 3) if batch_first else (S, N, 3)
    shape_v = (N, S, 6) if batch_first else (S, N, 6)
    q, k, v = (rng.standard_normal(s).astype(np.float32) for s in (shape_q, shape_k, shape_v))
    kpm = np.zeros((N, S), bool)
    kpm[2, 3:] = True
    am = np.triu(np.ones((L, S), bool), 2)
    kw = dict(key_padding_mask=kpm, attn_mask=am)
    o32, w32, c32 = m32.forward(q, k, v, **kw)
    o64, w64, c64 = m64.forward(q.astype(np.float64), k.astype(np.float64), v.astype(np.float64), **kw)
    assert o32.dtype == np.float32 and w32.dtype == np.float32
    assert_close(o32, o64, 1e-4, name="out")
    assert_close(w32, w64, 1e-4, name="weights")
    dout = rng.standard_normal(o32.shape)
    for name, a, b in zip(("dquery", "dkey", "dvalue"), m32.backward(c32, dout.astype(np.float32)),
                          m64.backward(c64, dout)):
        assert a.dtype == np.float32
        assert_close(a, b, 1e-4, name=name)
    for name in m32.grads:
        assert m32.grads[name].dtype == np.float32
        assert_close(m32.grads[name], m64.grads[name], 1e-4, name=name)

    a32 = R.AdditiveAttention(4, 3, 6, dtype="float32", seed=0)
    a64 = R.AdditiveAttention(4, 3, 6, dtype="float64")
    a64.load_state_dict(a32.state_dict())
    query, keys = rng.standard_normal((2, 4)), rng.standard_normal((2, 5, 3))   # float64 into float32: converted
    mask = np.array([[True, True, False, True, True], [True] * 5])
    c32_, wa32, ca32 = a32.forward(query, keys, mask=mask)
    c64_, wa64, ca64 = a64.forward(query, keys, mask=mask)
    assert c32_.dtype == np.float32
    assert_close(c32_, c64_, 1e-4)
    assert_close(wa32, wa64, 1e-4)
    dctx = rng.standard_normal(c32_.shape)
    for a, b in zip(a32.backward(ca32, dctx), a64.backward(ca64, dctx)):
        assert a.dtype == np.float32
        assert_close(a, b, 1e-4)
    for name in a32.grads:
        assert_close(a32.grads[name], a64.grads[name], 1e-4, name=name)


def test_reference_any_float_dtype():
    """The functional reference keeps float16 (and promotes mixed float inputs)."""
    rng = np.random.default_rng(15)
    q = rng.standard_normal((2, 3, 4)).astype(np.float16)
    out = F.scaled_dot_product_attention(q, q, q)
    assert out.dtype == np.float16
    assert_close(out, F.scaled_dot_product_attention(*(q.astype(np.float64),) * 3), 1e-2)
    mixed = F.scaled_dot_product_attention(q.astype(np.float32), q.astype(np.float64), q.astype(np.float32))
    assert mixed.dtype == np.float64


def test_reference_exports():
    import fastrnn.reference
    import fastrnn.reference.functional as RF
    assert fastrnn.reference.MultiheadAttention._F is RF
    assert fastrnn.reference.AdditiveAttention._F is RF
    for name in ("scaled_dot_product_attention", "scaled_dot_product_attention_forward",
                 "scaled_dot_product_attention_backward", "multi_head_attention", "multi_head_attention_forward",
                 "multi_head_attention_backward", "additive_attention_precompute", "additive_attention",
                 "additive_attention_forward", "additive_attention_backward"):
        assert callable(getattr(RF, name)), name
    from fastrnn.layers.attention import MultiheadAttention
    with pytest.raises(TypeError, match="no functional backend"):
        MultiheadAttention(E, HEADS)
