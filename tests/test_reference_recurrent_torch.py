"""Parity of the NumPy reference with PyTorch (float64 autograd).

Outputs, final states and ALL gradients (input, h0, c0, every parameter) must agree to 1e-9
max abs error, for RNN (tanh, relu), LSTM, GRU and their cells, including packed sequences
(pack_padded_sequence(enforce_sorted=False) vs `lengths`), batch_first, bidirectional and
2-3 layers. PyTorch cannot take a length-0 sequence: that case is checked against the API
semantics (y = 0, h_n = h0, no gradient into x, dh0 = dh_n) plus torch on the other entries.
Dropout: reproducibility, no dropout in __call__, and the reference's masks replayed through a
stack of single-layer torch modules.
"""
import numpy as np
import pytest
from helpers import assert_close

import fastrnn.reference as R

ATOL = 1e-9
FAMILY = ""
T, B, I, H = 5, 4, 3, 4
CLASSES = {  # mode -> (reference class, torch class name, extra kwargs)
    "rnn_tanh": (R.RNN, "RNN", {"nonlinearity": "tanh"}),
    "rnn_relu": (R.RNN, "RNN", {"nonlinearity": "relu"}),
    "lstm": (R.LSTM, "LSTM", {}),
    "gru": (R.GRU, "GRU", {}),
}
CELLS = {
    "rnn_tanh": (R.RNNCell, "RNNCell", {"nonlinearity": "tanh"}),
    "rnn_relu": (R.RNNCell, "RNNCell", {"nonlinearity": "relu"}),
    "lstm": (R.LSTMCell, "LSTMCell", {}),
    "gru": (R.GRUCell, "GRUCell", {}),
}
CONFIGS = [  # (num_layers, bidirectional, batch_first, bias)
    (1, False, False, True),
    (2, True, False, True),
    (3, True, True, True),
    (2, False, True, False),
]


WORST = {}  # test family -> worst max abs error seen (printed with -s)


@pytest.fixture(scope="module", autouse=True)
def _report_worst():
    yield
    for family, err in sorted(WORST.items()):
        print(f"\n[torch parity] worst max abs error {family}: {err:.2e}")


@pytest.fixture(autouse=True)
def _family(request):
    global FAMILY
    FAMILY = request.node.originalname


def close(name, actual, expected):
    err = assert_close(actual, expected, 0.0, name=name, atol=ATOL)
    WORST[FAMILY] = max(WORST.get(FAMILY, 0.0), err)


def to_torch_state_dict(torch, params):
    return {k: torch.from_numpy(v.copy()) for k, v in params.items()}


def pair(torch, mode, seed=0, **overrides):
    """A float64 reference layer and a torch module holding the same weights."""
    cls, tname, extra = CLASSES[mode]
    kw = dict(num_layers=1, bias=True, batch_first=False, bidirectional=False)
    kw.update(overrides)
    ref = cls(I, H, **kw, **extra, dtype="float64", seed=seed)
    mod = getattr(torch.nn, tname)(I, H, **kw, **extra, dtype=torch.float64)
    mod.load_state_dict(to_torch_state_dict(torch, ref.params))
    return ref, mod


def torch_run(torch, mod, x, state, lengths, batch_first):
    """Torch forward (packed when lengths given); returns y (zero-padded) and the final state."""
    if lengths is None:
        return mod(x, state)
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, torch.as_tensor(lengths), batch_first=batch_first,
                                                     enforce_sorted=False)
    out, st = mod(packed, state)
    steps = x.shape[1 if batch_first else 0]
    y, _ = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=batch_first, total_length=steps)
    return y, st


def compare_sequence(torch, mode, num_layers, bidirectional, batch_first, bias, lengths, seed=0):
    lstm = mode == "lstm"
    D = 2 if bidirectional else 1
    ref, mod = pair(torch, mode, seed, num_layers=num_layers, bidirectional=bidirectional,
                    batch_first=batch_first, bias=bias)
    rng = np.random.default_rng(seed + 1)
    x = rng.standard_normal((B, T, I) if batch_first else (T, B, I))
    h0 = rng.standard_normal((num_layers * D, B, H))
    c0 = rng.standard_normal((num_layers * D, B, H))
    state = (h0, c0) if lstm else h0

    y, st, cache = ref.forward(x, state, lengths)
    dy = rng.standard_normal(y.shape)
    dh_n = rng.standard_normal(h0.shape)
    dc_n = rng.standard_normal(c0.shape)
    dx, dst0 = ref.backward(cache, dy, (dh_n, dc_n) if lstm else dh_n)

    xt = torch.tensor(x, requires_grad=True)
    h0t = torch.tensor(h0, requires_grad=True)
    c0t = torch.tensor(c0, requires_grad=True)
    yt, stt = torch_run(torch, mod, xt, (h0t, c0t) if lstm else h0t, lengths, batch_first)
    hnt, cnt = stt if lstm else (stt, None)
    loss = (yt * torch.from_numpy(dy)).sum() + (hnt * torch.from_numpy(dh_n)).sum()
    if lstm:
        loss = loss + (cnt * torch.from_numpy(dc_n)).sum()
    loss.backward()

    close("y", y, yt.detach().numpy())
    close("h_n", st[0] if lstm else st, hnt.detach().numpy())
    close("dx", dx, xt.grad.numpy())
    close("dh0", dst0[0] if lstm else dst0, h0t.grad.numpy())
    if lstm:
        close("c_n", st[1], cnt.detach().numpy())
        close("dc0", dst0[1], c0t.grad.numpy())
    named = dict(mod.named_parameters())
    assert set(named) == set(ref.grads)
    for name, p in named.items():
        close(f"grads[{name!r}]", ref.grads[name], p.grad.numpy())
    return ref


def config_id(c):
    return f"L{c[0]}-{'bi' if c[1] else 'uni'}-{'bf' if c[2] else 'tm'}-{'bias' if c[3] else 'nobias'}"


@pytest.mark.parametrize("packed", [False, True], ids=["full", "packed"])
@pytest.mark.parametrize("config", CONFIGS, ids=config_id)
@pytest.mark.parametrize("mode", list(CLASSES))
def test_sequence_parity(torch, mode, config, packed):
    lengths = np.array([T, 2, 1, 4]) if packed else None  # unsorted, one full
    compare_sequence(torch, mode, *config, lengths)


@pytest.mark.parametrize("mode", list(CLASSES))
def test_zero_length_entry(torch, mode):
    """lengths[b] == 0: y = 0, h_n = h0, dx = 0, dh0 = dh_n; the other entries match torch."""
    lstm = mode == "lstm"
    L, D = 2, 2
    ref, mod = pair(torch, mode, num_layers=L, bidirectional=True)
    rng = np.random.default_rng(7)
    lengths = np.array([T, 0, 3, 1])
    keep = [0, 2, 3]
    x = rng.standard_normal((T, B, I))
    h0, c0 = rng.standard_normal((L * D, B, H)), rng.standard_normal((L * D, B, H))
    y, st, cache = ref.forward(x, (h0, c0) if lstm else h0, lengths)
    dy, dh_n, dc_n = rng.standard_normal(y.shape), rng.standard_normal(h0.shape), rng.standard_normal(c0.shape)
    dx, dst0 = ref.backward(cache, dy, (dh_n, dc_n) if lstm else dh_n)
    (h_n, c_n), (dh0, dc0) = (st, dst0) if lstm else ((st, None), (dst0, None))

    assert np.all(y[:, 1] == 0) and np.all(dx[:, 1] == 0)
    assert np.array_equal(h_n[:, 1], h0[:, 1]) and np.array_equal(dh0[:, 1], dh_n[:, 1])
    if lstm:
        assert np.array_equal(c_n[:, 1], c0[:, 1]) and np.array_equal(dc0[:, 1], dc_n[:, 1])

    xt = torch.tensor(x[:, keep], requires_grad=True)
    h0t = torch.tensor(h0[:, keep], requires_grad=True)
    c0t = torch.tensor(c0[:, keep], requires_grad=True)
    yt, stt = torch_run(torch, mod, xt, (h0t, c0t) if lstm else h0t, lengths[keep], False)
    hnt, cnt = stt if lstm else (stt, None)
    loss = (yt * torch.from_numpy(dy[:, keep])).sum() + (hnt * torch.from_numpy(dh_n[:, keep])).sum()
    if lstm:
        loss = loss + (cnt * torch.from_numpy(dc_n[:, keep])).sum()
    loss.backward()
    close("y", y[:, keep], yt.detach().numpy())
    close("h_n", h_n[:, keep], hnt.detach().numpy())
    close("dx", dx[:, keep], xt.grad.numpy())
    close("dh0", dh0[:, keep], h0t.grad.numpy())
    if lstm:
        close("c_n", c_n[:, keep], cnt.detach().numpy())
        close("dc0", dc0[:, keep], c0t.grad.numpy())
    for name, p in mod.named_parameters():  # the empty entry adds nothing to the weights
        close(f"grads[{name!r}]", ref.grads[name], p.grad.numpy())


@pytest.mark.parametrize("mode", list(CLASSES))
def test_load_torch_state_dict(torch, mode):
    """A torch-initialised module's state_dict (tensors or numpy) loads and gives torch's outputs."""
    cls, tname, extra = CLASSES[mode]
    torch.manual_seed(0)
    mod = getattr(torch.nn, tname)(I, H, num_layers=2, bidirectional=True, **extra, dtype=torch.float64)
    x = np.random.default_rng(3).standard_normal((T, B, I))
    with torch.no_grad():
        yt, _ = mod(torch.from_numpy(x))
    for sd in ({k: v.detach().numpy() for k, v in mod.state_dict().items()}, mod.state_dict()):
        ref = cls(I, H, num_layers=2, bidirectional=True, **extra, dtype="float64", seed=1)
        ref.load_state_dict(sd)
        for k, v in mod.state_dict().items():
            assert np.array_equal(ref.params[k], v.numpy())
        y, _ = ref(x)
        close("y", y, yt.numpy())


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("mode", list(CELLS))
def test_cell_parity(torch, mode, bias):
    """A 3-step loop of cell.forward/backward (grads accumulate) vs torch's cell, all gradients."""
    lstm = mode == "lstm"
    cls, tname, extra = CELLS[mode]
    ref = cls(I, H, bias=bias, **extra, dtype="float64", seed=4)
    mod = getattr(torch.nn, tname)(I, H, bias=bias, **extra, dtype=torch.float64)
    mod.load_state_dict(to_torch_state_dict(torch, ref.params))
    rng = np.random.default_rng(5)
    steps = 3
    xs = rng.standard_normal((steps, B, I))
    h0, c0 = rng.standard_normal((B, H)), rng.standard_normal((B, H))
    dhs, dcs = rng.standard_normal((steps, B, H)), rng.standard_normal((steps, B, H))

    state, caches, outs = ((h0, c0) if lstm else h0), [], []
    for t in range(steps):
        state, cache = ref.forward(xs[t], state)
        caches.append(cache)
        outs.append(state)
    dxs = [None] * steps
    dstate = (np.zeros((B, H)), np.zeros((B, H))) if lstm else np.zeros((B, H))
    for t in reversed(range(steps)):  # loss = sum_t <h_t, dhs[t]> (+ <c_t, dcs[t]>)
        dnext = (dstate[0] + dhs[t], dstate[1] + dcs[t]) if lstm else dstate + dhs[t]
        dxs[t], dstate = ref.backward(caches[t], dnext)

    xt = torch.tensor(xs, requires_grad=True)
    h0t, c0t = torch.tensor(h0, requires_grad=True), torch.tensor(c0, requires_grad=True)
    st, loss = ((h0t, c0t) if lstm else h0t), 0
    for t in range(steps):
        st = mod(xt[t], st)
        hs = st[0] if lstm else st
        loss = loss + (hs * torch.from_numpy(dhs[t])).sum()
        if lstm:
            loss = loss + (st[1] * torch.from_numpy(dcs[t])).sum()
        close(f"h[{t}]", outs[t][0] if lstm else outs[t], hs.detach().numpy())
        if lstm:
            close(f"c[{t}]", outs[t][1], st[1].detach().numpy())
    loss.backward()
    close("dx", np.stack(dxs), xt.grad.numpy())
    close("dh0", dstate[0] if lstm else dstate, h0t.grad.numpy())
    if lstm:
        close("dc0", dstate[1], c0t.grad.numpy())
    for name, p in mod.named_parameters():
        close(f"grads[{name!r}]", ref.grads[name], p.grad.numpy())
    # __call__ gives forward's state
    h1 = ref(xs[0], (h0, c0) if lstm else h0)
    close("__call__", h1[0] if lstm else h1, outs[0][0] if lstm else outs[0])


# --- dropout --------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", list(CLASSES))
def test_dropout_reproducible_and_not_in_call(mode):
    cls, _, extra = CLASSES[mode]
    x = np.random.default_rng(0).standard_normal((T, B, I))
    make = lambda seed, p: cls(I, H, num_layers=3, dropout=p, bidirectional=True, **extra, dtype="float64", seed=seed)
    a, b, c, plain = make(11, 0.5), make(11, 0.5), make(12, 0.5), make(11, 0.0)
    ya, _, ca = a.forward(x)
    yb, _, cb = b.forward(x)
    yc, _, _ = c.forward(x)
    assert np.array_equal(ya, yb)
    masks_a, masks_b = ca.inner.dropout_masks, cb.inner.dropout_masks
    assert len(masks_a) == 2 and all(np.array_equal(m, n) for m, n in zip(masks_a, masks_b))
    for m in masks_a:  # keep-mask / (1 - p) in the layer's dtype, (T, B, D*H) time-major
        assert m.shape == (T, B, 2 * H) and m.dtype == np.float64
        assert set(np.unique(m)) == {0.0, 2.0}
    assert not np.array_equal(ya, yc)  # another seed draws other masks (weights differ too)
    # successive forwards draw fresh masks
    ya2, _, ca2 = a.forward(x)
    assert not np.array_equal(ca2.inner.dropout_masks[0], masks_a[0])
    # __call__ never applies dropout: same as the dropout=0 layer with the same weights
    y_call, st_call = a(x)
    y_plain, st_plain, cache_plain = plain.forward(x)
    assert cache_plain.inner.dropout_masks is None
    assert np.array_equal(y_call, y_plain)
    assert not np.allclose(ya, y_plain)
    # one layer: nothing to drop between layers
    single = cls(I, H, dropout=0.5, **extra, dtype="float64", seed=1)
    assert single.forward(x)[2].inner.dropout_masks is None


@pytest.mark.parametrize("mode", list(CLASSES))
def test_dropout_masks_vs_torch_layer_stack(torch, mode):
    """The reference's masks, replayed between single-layer torch modules: same y and gradients."""
    lstm = mode == "lstm"
    cls, tname, extra = CLASSES[mode]
    L = 3
    ref = cls(I, H, num_layers=L, dropout=0.4, bidirectional=True, batch_first=True, **extra,
              dtype="float64", seed=21)
    rng = np.random.default_rng(22)
    x = rng.standard_normal((B, T, I))
    lengths = np.array([T, 3, 1, 2])
    y, st, cache = ref.forward(x, None, lengths)
    dy = rng.standard_normal(y.shape)
    dh_n = rng.standard_normal((L * 2, B, H))
    dx, dst0 = ref.backward(cache, dy, (dh_n, None) if lstm else dh_n)
    masks = cache.inner.dropout_masks

    xt = torch.tensor(x, requires_grad=True)
    inp, finals, mods = xt, [], []
    for l in range(L):
        mod = getattr(torch.nn, tname)(I if l == 0 else 2 * H, H, bidirectional=True, batch_first=True, **extra,
                                       dtype=torch.float64)
        mod.load_state_dict({k.replace(f"_l{l}", "_l0"): torch.from_numpy(v.copy())
                             for k, v in ref.params.items() if f"_l{l}" in k})
        mods.append(mod)
        out, stt = torch_run(torch, mod, inp, None, lengths, True)
        finals.append(stt[0] if lstm else stt)
        inp = out * torch.from_numpy(masks[l].transpose(1, 0, 2)) if l < L - 1 else out
    hnt = torch.cat(finals)
    (inp * torch.from_numpy(dy)).sum().add((hnt * torch.from_numpy(dh_n)).sum()).backward()
    close("y", y, inp.detach().numpy())
    close("h_n", st[0] if lstm else st, hnt.detach().numpy())
    close("dx", dx, xt.grad.numpy())
    for l, mod in enumerate(mods):
        for name, p in mod.named_parameters():
            close(name, ref.grads[name.replace("_l0", f"_l{l}")], p.grad.numpy())
