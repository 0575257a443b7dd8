"""Linear, Embedding, Dropout (fastrnn.layers.basic): vs PyTorch, finite differences, contract."""
import math

import numpy as np
import pytest

from fastrnn.layers.basic import (Dropout, Embedding, Linear, dropout_backward, dropout_forward,
                                  embedding_backward, embedding_forward, linear, linear_backward,
                                  linear_forward)
from helpers import assert_close


def _rand(shape, seed=0, dtype=np.float64):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def _torch_sd(module):
    return {k: v.detach().numpy() for k, v in module.state_dict().items()}


# ----------------------------------------------------------------------------- Linear
@pytest.mark.parametrize("lead", [(), (3,), (4, 3), (2, 3, 2)])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_matches_torch(torch, lead, bias):
    tl = torch.nn.Linear(5, 4, bias=bias, dtype=torch.float64)
    layer = Linear(5, 4, bias=bias, dtype="float64", seed=0)
    layer.load_state_dict(_torch_sd(tl))
    x = _rand(lead + (5,), seed=1)
    dy = _rand(lead + (4,), seed=2)
    xt = torch.tensor(x, requires_grad=True)
    yt = tl(xt)
    yt.backward(torch.tensor(dy))
    assert_close(layer(x), yt.detach().numpy(), 1e-13, name="__call__")
    y, cache = layer.forward(x)
    assert_close(y, yt.detach().numpy(), 1e-13, name="forward")
    dx = layer.backward(cache, dy)
    assert_close(dx, xt.grad.numpy(), 1e-13, name="dx")
    assert_close(layer.grads["weight"], tl.weight.grad.numpy(), 1e-13, name="dweight")
    if bias:
        assert_close(layer.grads["bias"], tl.bias.grad.numpy(), 1e-13, name="dbias")
    else:
        assert set(layer.params) == {"weight"} == set(layer.grads)


def test_linear_float32_vs_torch_float64(torch):
    layer = Linear(6, 3, seed=1)
    assert layer.params["weight"].dtype == np.float32
    tl = torch.nn.Linear(6, 3, dtype=torch.float64)
    tl.load_state_dict({k: torch.tensor(v.astype(np.float64)) for k, v in layer.state_dict().items()})
    x = _rand((7, 2, 6), seed=3)  # float64 input is converted
    dy = _rand((7, 2, 3), seed=4)
    y, cache = layer.forward(x)
    dx = layer.backward(cache, dy)
    assert y.dtype == dx.dtype == np.float32
    xt = torch.tensor(x, requires_grad=True)
    tl(xt).backward(torch.tensor(dy))
    assert_close(y, tl(xt).detach().numpy(), 1e-6, name="y")
    assert_close(dx, xt.grad.numpy(), 1e-6, name="dx")
    assert_close(layer.grads["weight"], tl.weight.grad.numpy(), 1e-6, name="dweight")


def test_linear_finite_differences():
    layer = Linear(4, 3, dtype="float64", seed=2)
    x = _rand((3, 2, 4), seed=5)
    wsum = _rand((3, 2, 3), seed=6)  # loss = sum(y * wsum)
    y, cache = layer.forward(x)
    dx = layer.backward(cache, wsum)
    h = 1e-6

    def num_grad(arr, f):
        g = np.zeros_like(arr)
        for i in np.ndindex(arr.shape):
            old = arr[i]
            arr[i] = old + h
            fp = f()
            arr[i] = old - h
            fm = f()
            arr[i] = old
            g[i] = (fp - fm) / (2 * h)
        return g

    loss = lambda: float(np.sum(layer(x) * wsum))  # noqa: E731
    assert_close(dx, num_grad(x, loss), 1e-8, name="dx")
    for k in ("weight", "bias"):
        assert_close(layer.grads[k], num_grad(layer.params[k], loss), 1e-8, name=k)


def test_linear_init_seed_and_bounds(torch):
    a, b = Linear(50, 40, seed=3), Linear(50, 40, seed=3)
    assert_close(a.params["weight"], b.params["weight"], 0.0)
    assert not np.array_equal(a.params["weight"], Linear(50, 40, seed=4).params["weight"])
    bound = 1 / math.sqrt(50)
    for k in ("weight", "bias"):
        v = a.params[k]
        assert np.abs(v).max() <= bound and np.abs(v).max() > 0.9 * bound
    # the same bound as torch's default init
    tl = torch.nn.Linear(50, 40)
    assert np.abs(tl.weight.detach().numpy()).max() <= bound
    assert_close(a.params["weight"].std(), bound / math.sqrt(3), 0.05)
    f64 = Linear(50, 40, dtype="float64", seed=3)  # same stream in both precisions
    assert_close(f64.params["weight"], a.params["weight"], 1e-7)


def test_linear_grads_accumulate_and_zero_grad():
    layer = Linear(3, 2, seed=0)
    x, dy = _rand((4, 3)), _rand((4, 2), seed=1)
    _, c = layer.forward(x)
    layer.backward(c, dy)
    once = {k: v.copy() for k, v in layer.grads.items()}
    layer.backward(c, dy)
    for k in once:
        assert_close(layer.grads[k], 2 * once[k], 1e-6, name=k)
    layer.zero_grad()
    assert all(np.all(g == 0) for g in layer.grads.values())


def test_linear_inputs_never_written_and_cache_is_private():
    layer = Linear(4, 3, dtype="float64", seed=0)
    base = _rand((5, 8))
    views = {"strided": base[:, ::2], "fortran": np.asfortranarray(base[:, :4]), "contig": base[:, :4].copy()}
    dy = _rand((5, 3), seed=1)
    for name, x in views.items():
        ref = np.ascontiguousarray(x).copy()
        ro = x.view()
        ro.flags.writeable = False
        layer.zero_grad()
        y, cache = layer.forward(ro)
        x_before = x.copy()
        if x.flags.writeable:
            x[...] = 1e6  # caller reuses its buffer between forward and backward
        dx = layer.backward(cache, dy)
        assert_close(layer.grads["weight"], dy.T @ ref, 1e-13, name=name)
        assert_close(y, ref @ layer.params["weight"].T + layer.params["bias"], 1e-13, name=name)
        assert dx.shape == x.shape
        if x.flags.writeable:
            x[...] = x_before
    dy_ro = dy.copy()
    dy_ro.flags.writeable = False
    _, cache = layer.forward(views["contig"])
    layer.backward(cache, dy_ro)


def test_linear_errors():
    layer = Linear(4, 3, seed=0)
    with pytest.raises(ValueError, match=r"x: expected shape \(\.\.\., 4\), got \(2, 5\)"):
        layer(np.zeros((2, 5)))
    with pytest.raises(TypeError, match="x"):
        layer.forward(np.zeros((2, 4), dtype=np.int64))
    with pytest.raises(TypeError, match="x"):
        layer(np.zeros((2, 4), dtype=complex))
    y, cache = layer.forward(np.zeros((2, 4)))
    with pytest.raises(ValueError, match=r"dout: expected shape \(2, 3\), got \(2, 4\)"):
        layer.backward(cache, np.zeros((2, 4)))
    with pytest.raises(ValueError, match="cache"):
        Linear(4, 3, seed=0).backward(cache, y)
    with pytest.raises(ValueError, match="cache"):
        layer.backward(Dropout(0.5).forward(np.zeros((2, 3)))[1], y)
    with pytest.raises(ValueError, match="in_features"):
        Linear(0, 3)
    with pytest.raises(TypeError, match="out_features"):
        Linear(3, 2.5)
    with pytest.raises(TypeError, match="dtype"):
        Linear(3, 2, dtype="int32")
    with pytest.raises(TypeError, match="seed"):
        Linear(3, 2, seed=1.5)


def test_state_dict_roundtrip_npz_in_place(tmp_path):
    layer = Linear(4, 3, seed=0)
    emb = Embedding(6, 2, seed=1)
    for mod in (layer, emb):
        path = tmp_path / f"{type(mod).__name__}.npz"
        np.savez(path, **mod.state_dict())
        other = type(mod)(*((4, 3) if mod is layer else (6, 2)), seed=9)
        arrays = {k: v for k, v in other.params.items()}
        with np.load(path) as sd:
            other.load_state_dict(sd)
        for k in mod.params:
            assert other.params[k] is arrays[k]  # copied into the same arrays (optimizers keep them)
            assert_close(other.params[k], mod.params[k], 0.0)
    sd = layer.state_dict()
    sd["weight"][...] = 7.0  # copies
    assert not np.all(layer.params["weight"] == 7.0)
    with pytest.raises(ValueError, match="missing keys"):
        layer.load_state_dict({"weight": sd["weight"]})
    with pytest.raises(ValueError, match="unexpected keys"):
        layer.load_state_dict(dict(sd, extra=np.zeros(1)))
    with pytest.raises(ValueError, match=r"state_dict\['bias'\]: expected shape \(3,\), got \(4,\)"):
        layer.load_state_dict(dict(sd, bias=np.zeros(4)))
    before = layer.state_dict()
    with pytest.raises(TypeError, match="bias"):
        layer.load_state_dict(dict(sd, bias=np.zeros(3, dtype=int)))
    assert_close(layer.params["weight"], before["weight"], 0.0)  # nothing changed


# ----------------------------------------------------------------------------- Embedding
@pytest.mark.parametrize("padding_idx", [None, 2, -1])
@pytest.mark.parametrize("scale_grad_by_freq", [False, True])
def test_embedding_matches_torch(torch, padding_idx, scale_grad_by_freq):
    te = torch.nn.Embedding(9, 4, padding_idx=padding_idx, scale_grad_by_freq=scale_grad_by_freq,
                            dtype=torch.float64)
    emb = Embedding(9, 4, padding_idx=padding_idx, scale_grad_by_freq=scale_grad_by_freq,
                    dtype="float64", seed=0)
    emb.load_state_dict(_torch_sd(te))
    idx = np.array([[1, 2, 2], [8, 1, 2], [0, 2, 1], [1, 1, 1]])  # repeats accumulate
    dout = _rand(idx.shape + (4,), seed=1)
    out_t = te(torch.tensor(idx))
    out_t.backward(torch.tensor(dout))
    assert_close(emb(idx), out_t.detach().numpy(), 0.0)
    out, cache = emb.forward(idx)
    assert_close(out, out_t.detach().numpy(), 0.0)
    assert emb.backward(cache, dout) is None
    assert_close(emb.grads["weight"], te.weight.grad.numpy(), 1e-14, name="dweight")


def test_embedding_init_padding_and_dtypes(torch):
    emb = Embedding(300, 50, padding_idx=-2, seed=0)
    assert emb.padding_idx == 298 and emb.params["weight"].dtype == np.float32
    w = emb.params["weight"]
    assert np.all(w[298] == 0)
    assert_close(w.mean(), 0.0, 1.0, atol=0.01)  # N(0, 1) like torch
    assert_close(w.std(), 1.0, 0.02)
    idx = np.array([298, 5, 298], dtype=np.int32)
    out, cache = emb.forward(idx)
    assert out.dtype == np.float32 and out.shape == (3, 50)
    emb.backward(cache, np.ones((3, 50)))
    assert np.all(emb.grads["weight"][298] == 0) and np.all(emb.grads["weight"][5] == 1)
    assert emb(np.int64(5)).shape == (50,)  # 0-d indices
    assert emb(np.zeros((2, 0), dtype=np.uint8)).shape == (2, 0, 50)
    a, b = Embedding(10, 3, seed=5), Embedding(10, 3, seed=5)
    assert_close(a.params["weight"], b.params["weight"], 0.0)


def test_embedding_indices_validated_and_private():
    emb = Embedding(5, 2, seed=0)
    with pytest.raises(TypeError, match="indices"):
        emb(np.array([0.0, 1.0]))
    with pytest.raises(TypeError, match="indices"):
        emb(np.array([True, False]))
    with pytest.raises(ValueError, match=r"indices: expected values in \[0, 5\), got 5 at \(1, 0\)"):
        emb.forward(np.array([[0, 1], [5, 2]]))
    with pytest.raises(ValueError, match="indices"):
        emb(np.array([-1]))
    idx = np.array([0, 1, 1])
    idx_ro = idx.view()
    idx_ro.flags.writeable = False
    out, cache = emb.forward(idx_ro)
    idx[...] = 4  # the cache keeps its own copy
    emb.backward(cache, np.ones((3, 2)))
    assert_close(emb.grads["weight"][:, 0], np.array([1.0, 2.0, 0.0, 0.0, 0.0]), 0.0)
    with pytest.raises(ValueError, match=r"dout: expected shape \(3, 2\)"):
        emb.backward(cache, np.ones((3, 3)))
    with pytest.raises(ValueError, match="padding_idx"):
        Embedding(5, 2, padding_idx=5)
    with pytest.raises(ValueError, match="padding_idx"):
        Embedding(5, 2, padding_idx=-6)
    with pytest.raises(ValueError, match="cache"):
        Embedding(5, 2).backward(cache, np.ones((3, 2)))


# ----------------------------------------------------------------------------- Dropout
def test_dropout_mask_statistics_and_backward():
    p = 0.3
    d = Dropout(p, seed=0)
    x = _rand((200, 300), seed=1).astype(np.float32)
    out, cache = d.forward(x)
    assert out.dtype == np.float32
    mask = cache.mask
    assert mask.dtype == bool and mask.shape == x.shape
    assert abs(mask.mean() - (1 - p)) < 0.01
    assert_close(out, np.where(mask, x / (1 - p), 0.0), 1e-7)
    dout = _rand((200, 300), seed=2)
    dx = d.backward(cache, dout)
    assert dx.dtype == np.float32
    assert_close(dx, np.where(mask, dout / (1 - p), 0.0), 1e-7)
    # new masks each call, reproducible from the seed
    _, c2 = d.forward(x)
    assert not np.array_equal(c2.mask, mask)
    _, c3 = Dropout(p, seed=0).forward(x)
    assert np.array_equal(c3.mask, mask)


def test_dropout_call_is_identity_copy_and_edge_p():
    x = _rand((4, 5))
    d = Dropout(0.5, seed=0)
    y = d(x)
    assert_close(y, x, 0.0)
    assert not np.shares_memory(y, x)
    d0 = Dropout(0.0)
    out, cache = d0.forward(x)
    assert_close(out, x, 0.0)
    assert not np.shares_memory(out, x)
    assert_close(d0.backward(cache, 2 * x), 2 * x, 0.0)
    out, cache = Dropout(1.0, seed=0).forward(x)  # torch: p=1 gives zeros
    assert np.all(out == 0)
    d1 = Dropout(1.0, seed=0)
    _, c1 = d1.forward(x)
    assert np.all(d1.backward(c1, x) == 0)
    assert Dropout(0.2).params == {} and Dropout(0.2).state_dict() == {}
    Dropout(0.2).zero_grad()


def test_dropout_errors_and_functional():
    with pytest.raises(ValueError, match="p"):
        Dropout(1.5)
    with pytest.raises(ValueError, match="p"):
        Dropout(-0.1)
    with pytest.raises(TypeError, match="p"):
        Dropout("0.5")
    d = Dropout(0.5, seed=0)
    with pytest.raises(TypeError, match="x"):
        d.forward(np.zeros(3, dtype=int))
    _, cache = d.forward(np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"dout: expected shape \(2, 3\)"):
        d.backward(cache, np.zeros((3, 2)))
    with pytest.raises(ValueError, match="cache"):
        Dropout(0.5).backward(cache, np.zeros((2, 3)))
    out, c = dropout_forward(np.ones((3, 4)), 0.25, np.random.default_rng(0))
    assert_close(dropout_backward(c, np.ones((3, 4))), out, 0.0)


def test_functional_forms_match_layers():
    layer = Linear(3, 2, dtype="float64", seed=0)
    x, dy = _rand((4, 3)), _rand((4, 2), seed=1)
    w, b = layer.params["weight"], layer.params["bias"]
    assert_close(linear(x, w, b), layer(x), 0.0)
    y, c = linear_forward(x, w, b)
    dx, (dw, db) = linear_backward(c, dy)
    _, lc = layer.forward(x)
    assert_close(dx, layer.backward(lc, dy), 0.0)
    assert_close(dw, layer.grads["weight"], 0.0)
    assert_close(db, layer.grads["bias"], 0.0)
    emb = Embedding(6, 2, padding_idx=0, dtype="float64", seed=0)
    idx = np.array([[0, 3], [3, 5]])
    out, c = embedding_forward(idx, emb.params["weight"], padding_idx=0)
    gw = embedding_backward(c, np.ones((2, 2, 2)))
    _, ec = emb.forward(idx)
    emb.backward(ec, np.ones((2, 2, 2)))
    assert_close(gw, emb.grads["weight"], 0.0)
