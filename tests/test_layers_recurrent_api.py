"""API behaviour of the recurrent layer classes (bound to the NumPy reference backend):
parameters, gradients, state_dict, errors, input handling and edge sizes."""
import numpy as np
import pytest
from helpers import assert_close

import fastrnn.reference as R
from fastrnn.layers import recurrent as layers
from fastrnn.reference import functional as F

T, B, I, H = 5, 3, 4, 6
SEQ = [R.RNN, R.LSTM, R.GRU]
CELLS = [R.RNNCell, R.LSTMCell, R.GRUCell]
ALL = SEQ + CELLS


def is_lstm(layer):
    return layer.mode == "lstm"


def rand(*shape, seed=0, dtype=np.float64):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def seq_state(layer, B=B, seed=1):
    n = layer.num_layers * layer.num_directions
    h = rand(n, B, layer.hidden_size, seed=seed)
    return (h, rand(n, B, layer.hidden_size, seed=seed + 1)) if is_lstm(layer) else h


def cell_state(cell, B=B, seed=1):
    h = rand(B, cell.hidden_size, seed=seed)
    return (h, rand(B, cell.hidden_size, seed=seed + 1)) if is_lstm(cell) else h


def flat(state):
    return list(state) if isinstance(state, tuple) else [state]


# --- parameters -----------------------------------------------------------------------------


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("num_layers", [1, 3])
@pytest.mark.parametrize("cls", SEQ, ids=lambda c: c.__name__)
def test_params_match_torch_state_dict(torch, cls, num_layers, bidirectional, bias):
    layer = cls(I, H, num_layers=num_layers, bidirectional=bidirectional, bias=bias)
    mod = getattr(torch.nn, cls.__name__)(I, H, num_layers=num_layers, bidirectional=bidirectional, bias=bias)
    expected = [(k, tuple(v.shape)) for k, v in mod.state_dict().items()]
    assert [(k, v.shape) for k, v in layer.params.items()] == expected
    assert [(k, v.shape) for k, v in layer.grads.items()] == expected
    assert all(g.dtype == np.float32 and not g.any() for g in layer.grads.values())


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("cls", CELLS, ids=lambda c: c.__name__)
def test_cell_params_match_torch_state_dict(torch, cls, bias):
    cell = cls(I, H, bias=bias)
    mod = getattr(torch.nn, cls.__name__)(I, H, bias=bias)
    expected = [(k, tuple(v.shape)) for k, v in mod.state_dict().items()]
    assert [(k, v.shape) for k, v in cell.params.items()] == expected
    assert [(k, v.shape) for k, v in cell.grads.items()] == expected


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__name__)
def test_seeded_init(cls):
    a, b, c = cls(I, H, seed=3), cls(I, H, seed=3), cls(I, H, seed=4)
    d = cls(I, H, seed=3, dtype="float64")
    bound = 1 / np.sqrt(H)
    for k in a.params:
        assert a.params[k].dtype == np.float32 and d.params[k].dtype == np.float64
        assert np.array_equal(a.params[k], b.params[k])
        assert not np.array_equal(a.params[k], c.params[k])
        assert np.array_equal(a.params[k], d.params[k].astype(np.float32))  # one stream, rounded
        assert np.all(np.abs(d.params[k]) <= bound)
        assert np.abs(d.params[k]).max() > 0.5 * bound  # really spread over the interval


@pytest.mark.parametrize("cls", SEQ, ids=lambda c: c.__name__)
def test_grads_accumulate_and_zero_grad(cls):
    layer = cls(I, H, num_layers=2, bidirectional=True, dtype="float64", seed=0)
    grads_before = {k: id(v) for k, v in layer.grads.items()}
    y, st, cache = layer.forward(rand(T, B, I), lengths=[5, 2, 0])
    dy = rand(*y.shape, seed=9)
    layer.backward(cache, dy)
    once = {k: v.copy() for k, v in layer.grads.items()}
    assert all(np.abs(v).max() > 0 for v in once.values())
    layer.backward(cache, dy)  # the same cache twice: exactly twice the gradient
    for k, v in layer.grads.items():
        assert_close(v, 2 * once[k], 1e-14, name=k)
    assert {k: id(v) for k, v in layer.grads.items()} == grads_before  # in place
    layer.zero_grad()
    assert all(not v.any() for v in layer.grads.values())
    assert {k: id(v) for k, v in layer.grads.items()} == grads_before


@pytest.mark.parametrize("cls", CELLS, ids=lambda c: c.__name__)
def test_cell_grads_accumulate(cls):
    cell = cls(I, H, dtype="float64", seed=0)
    state, cache = cell.forward(rand(B, I), cell_state(cell))
    dnext = tuple(rand(B, H, seed=s) for s in (5, 6)) if is_lstm(cell) else rand(B, H, seed=5)
    cell.backward(cache, dnext)
    once = {k: v.copy() for k, v in cell.grads.items()}
    cell.backward(cache, dnext)
    for k, v in cell.grads.items():
        assert_close(v, 2 * once[k], 1e-14, name=k)
    cell.zero_grad()
    assert all(not v.any() for v in cell.grads.values())


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__name__)
def test_state_dict_copies_and_load(cls):
    a, b = cls(I, H, seed=1), cls(I, H, seed=2, dtype="float64")
    sd = a.state_dict()
    assert list(sd) == list(a.params)
    k0 = next(iter(sd))
    sd[k0][...] = 123.0
    assert not np.any(a.params[k0] == 123.0)
    arrays = {k: id(v) for k, v in b.params.items()}
    b.load_state_dict(a.state_dict())  # float32 -> float64, into the existing arrays
    assert {k: id(v) for k, v in b.params.items()} == arrays
    for k in a.params:
        assert b.params[k].dtype == np.float64 and np.array_equal(b.params[k], a.params[k])
    b.load_state_dict({k: v.tolist() for k, v in a.params.items()})  # any array-likes


@pytest.mark.parametrize("cls", [R.LSTM, R.GRUCell], ids=lambda c: c.__name__)
def test_load_state_dict_errors(cls):
    layer = cls(I, H, seed=0)
    before = layer.state_dict()
    good = layer.state_dict()
    k0 = next(iter(good))
    missing = dict(good)
    del missing[k0]
    with pytest.raises(ValueError, match=rf"state_dict: missing keys \['{k0}'\]"):
        layer.load_state_dict(missing)
    with pytest.raises(ValueError, match=r"unexpected keys \['extra'\]"):
        layer.load_state_dict({**good, "extra": np.zeros(3)})
    bad_shape = {**good, k0: np.zeros((1, 2))}
    with pytest.raises(ValueError, match=rf"state_dict\['{k0}'\]: expected shape .*got \(1, 2\)"):
        layer.load_state_dict(bad_shape)
    with pytest.raises(TypeError, match=rf"state_dict\['{k0}'\]"):
        layer.load_state_dict({**good, k0: good[k0].astype(np.int64)})
    with pytest.raises(TypeError, match="state_dict"):
        layer.load_state_dict([1, 2])
    for k in before:  # nothing was copied by the failed loads
        assert np.array_equal(layer.params[k], before[k])


# --- constructor ----------------------------------------------------------------------------


def test_constructor_errors():
    with pytest.raises(ValueError, match="input_size"):
        R.LSTM(0, H)
    with pytest.raises(TypeError, match="hidden_size"):
        R.GRU(I, 2.5)
    with pytest.raises(ValueError, match="num_layers"):
        R.RNN(I, H, num_layers=0)
    with pytest.raises(ValueError, match="nonlinearity"):
        R.RNN(I, H, nonlinearity="sigmoid")
    with pytest.raises(ValueError, match="nonlinearity"):
        R.RNNCell(I, H, nonlinearity="gelu")
    with pytest.raises(ValueError, match="dropout"):
        R.LSTM(I, H, num_layers=2, dropout=1.0)
    with pytest.raises(ValueError, match="dropout"):
        R.LSTM(I, H, num_layers=2, dropout=-0.1)
    with pytest.raises(TypeError, match="dtype"):
        R.GRU(I, H, dtype="int32")
    with pytest.raises(TypeError, match="functional backend"):
        layers.LSTM(I, H)  # the unbound class
    assert R.RNN(I, H, 2, "relu").mode == "rnn_relu"  # positional order as in the API
    assert R.RNNCell(I, H, True, "relu").mode == "rnn_relu"


# --- errors name the argument ---------------------------------------------------------------


@pytest.mark.parametrize("cls", SEQ, ids=lambda c: c.__name__)
def test_sequence_input_errors(cls):
    layer = cls(I, H, num_layers=2, bidirectional=True, seed=0)
    x = rand(T, B, I)
    lstm = cls is R.LSTM
    with pytest.raises(ValueError, match=r"x: expected a 3-d array, got shape \(5, 3\)"):
        layer.forward(x[:, :, 0])
    with pytest.raises(ValueError, match=r"x: expected a 3-d array"):
        layer(x[:, :, 0])
    with pytest.raises(ValueError, match=r"x: expected shape .*4\), got \(5, 3, 5\)"):
        layer.forward(rand(T, B, I + 1))
    for bad in (x.astype(np.int64), x > 0, x.astype(np.complex128), [["a"]]):
        with pytest.raises(TypeError, match="x: expected"):
            layer.forward(bad)
    h = rand(4, B, H)
    name = "state\\[0\\]" if lstm else "state"
    with pytest.raises(ValueError, match=rf"{name}: expected shape \(4, 3, 6\), got \(4, 3, 5\)"):
        layer.forward(x, (h[..., :5], h) if lstm else h[..., :5])
    with pytest.raises(ValueError, match=rf"{name}: expected shape \(4, 3, 6\), got \(2, 3, 6\)"):
        layer(x, (h[:2], h) if lstm else h[:2])
    if lstm:
        with pytest.raises(TypeError, match=r"state: expected a tuple \(h, c\)"):
            layer.forward(x, h)
        with pytest.raises(ValueError, match=r"state\[1\]: expected shape"):
            layer.forward(x, (h, h[:, :2]))
    else:
        with pytest.raises(TypeError, match="state: expected one array"):
            layer.forward(x, (h, h))
    with pytest.raises(ValueError, match=r"lengths: expected 0 <= lengths\[b\] <= T = 5, got lengths\[1\] = 6"):
        layer.forward(x, None, [5, 6, 1])
    with pytest.raises(ValueError, match=r"lengths: expected 0 <= .*got lengths\[0\] = -1"):
        layer(x, None, [-1, 2, 1])
    with pytest.raises(TypeError, match="lengths: expected integers"):
        layer.forward(x, None, [1.5, 2, 1])
    with pytest.raises(ValueError, match=r"lengths: expected shape \(3,\), got \(2,\)"):
        layer.forward(x, None, [1, 2])
    # backward: dy / dstate shapes, foreign caches
    y, st, cache = layer.forward(x)
    with pytest.raises(ValueError, match=r"dy: expected shape \(5, 3, 12\), got \(5, 3, 6\)"):
        layer.backward(cache, y[..., :6])
    with pytest.raises(TypeError, match="dy: expected"):
        layer.backward(cache, y.astype(int))
    dname = "dstate\\[0\\]" if lstm else "dstate"
    with pytest.raises(ValueError, match=rf"{dname}: expected shape \(4, 3, 6\), got \(4, 2, 6\)"):
        layer.backward(cache, y, (h[:, :2], None) if lstm else h[:, :2])
    other = cls(I, H, num_layers=2, bidirectional=True, seed=0)
    with pytest.raises(ValueError, match="cache: .*another"):
        other.backward(cache, y)
    functional_cache = F.recurrent_forward(layer.mode, x, layer._weights(layer.params), num_layers=2,
                                           bidirectional=True)[2]  # right kind, but no owner
    for bad in (None, functional_cache, object()):
        with pytest.raises(ValueError, match="cache: "):
            layer.backward(bad, y)
    cell_cache = R.GRUCell(I, H).forward(x[0])[1]
    with pytest.raises(ValueError, match="cache: "):
        layer.backward(cell_cache, y)


@pytest.mark.parametrize("cls", CELLS, ids=lambda c: c.__name__)
def test_cell_input_errors(cls):
    cell = cls(I, H, seed=0)
    lstm = cls is R.LSTMCell
    x = rand(B, I)
    with pytest.raises(ValueError, match=r"x: expected a 2-d array.*got shape \(4,\)"):
        cell(x[0])
    with pytest.raises(ValueError, match=r"x: expected shape \(3, 4\), got \(3, 3\)"):
        cell.forward(x[:, :3])
    with pytest.raises(TypeError, match="x: expected"):
        cell(x.astype(np.int32))
    h = rand(B, H)
    name = "state\\[0\\]" if lstm else "state"
    with pytest.raises(ValueError, match=rf"{name}: expected shape \(3, 6\), got \(2, 6\)"):
        cell(x, (h[:2], h) if lstm else h[:2])
    state, cache = cell.forward(x)
    dname = "dstate_next\\[0\\]" if lstm else "dstate_next"
    with pytest.raises(ValueError, match=rf"{dname}: expected shape \(3, 6\), got \(3, 5\)"):
        cell.backward(cache, (h[:, :5], h) if lstm else h[:, :5])
    with pytest.raises(ValueError, match="cache: "):
        cls(I, H).backward(cache)
    with pytest.raises(ValueError, match="cache: "):
        cell.backward(R.GRU(I, H).forward(rand(T, B, I))[2])


def test_functional_errors():
    G, rng = 4, np.random.default_rng(0)
    w = [(rng.standard_normal((G * H, I)), rng.standard_normal((G * H, H)), np.zeros(G * H), np.zeros(G * H))]
    x = rand(T, B, I)
    with pytest.raises(ValueError, match="mode: expected one of"):
        F.recurrent_forward("lstmx", x, w)
    with pytest.raises(ValueError, match=r"weights: expected 2 entries"):
        F.recurrent_forward("lstm", x, w, num_layers=2)
    with pytest.raises(ValueError, match=r"weights\[0\]\[0\] \(w_ih\): expected shape \(18, 4\), got \(24, 4\)"):
        F.recurrent_forward("gru", x, w)
    with pytest.raises(ValueError, match=r"weights\[0\]\[3\] \(b_hh\): expected an array"):
        F.recurrent_forward("lstm", x, [w[0][:3] + (None,)])
    with pytest.raises(ValueError, match=r"dropout_masks: expected 0 arrays"):
        F.recurrent_forward("lstm", x, w, dropout_masks=[np.ones((T, B, H))])
    with pytest.raises(ValueError, match="cache: expected a cache from .*recurrent_forward"):
        F.recurrent_backward(None, x)
    y, st, cache = F.recurrent_forward("lstm", x, w)
    assert F.recurrent_forward("lstm", x, w, need_cache=False)[2] is None
    with pytest.raises(ValueError, match="cache: expected a cache from .*cell_forward"):
        F.cell_backward(cache)
    bad_grads = [(np.zeros((G * H, I)), np.zeros((G * H, H)), np.zeros(G * H), np.zeros(3))]
    with pytest.raises(ValueError, match=r"grads\[0\]\[3\]: expected shape \(24,\), got \(3,\)"):
        F.recurrent_backward(cache, np.ones_like(y), grads=bad_grads)
    # grads= is added into and returned as is
    grads = [tuple(np.ones_like(a) for a in w[0])]
    _, _, fresh = F.recurrent_backward(cache, np.ones_like(y))
    dx, dstate0, out = F.recurrent_backward(cache, np.ones_like(y), grads=grads)
    assert out is grads
    for g, f in zip(grads[0], fresh[0]):
        assert_close(g, f + 1, 1e-14)
    assert isinstance(dstate0, tuple) and dstate0[0].shape == (1, B, H)  # arrays though state was None


# --- input handling -------------------------------------------------------------------------


def run_all(layer, x, state, lengths, dy, dstate):
    """Everything a layer returns for one input set: outputs of __call__, forward and backward."""
    y_call, st_call = layer(x, state, lengths)
    y, st, cache = layer.forward(x, state, lengths)
    layer.zero_grad()
    dx, dst0 = layer.backward(cache, dy, dstate)
    return [y_call, *flat(st_call), y, *flat(st), dx, *flat(dst0), *[g.copy() for g in layer.grads.values()]]


@pytest.mark.parametrize("cls", SEQ, ids=lambda c: c.__name__)
def test_readonly_noncontiguous_fortran_inputs(cls):
    layer = cls(I, H, num_layers=2, bidirectional=True, batch_first=True, dtype="float64", seed=0)
    x = rand(B, T, I)
    state = seq_state(layer)
    lengths = np.array([5, 0, 3])
    dy = rand(B, T, 2 * H, seed=3)
    dstate = seq_state(layer, seed=4)
    expected = run_all(layer, x, state, lengths, dy, dstate)

    def readonly(a):
        a = a.copy()
        a.flags.writeable = False
        return a

    variants = {
        "readonly": readonly,
        "fortran": np.asfortranarray,
        "strided": lambda a: np.repeat(a, 2, axis=-1)[..., ::2],
        "reversed": lambda a: a[::-1].copy()[::-1],
    }
    for vname, f in variants.items():
        xs, states, dys = f(x), tuple(map(f, flat(state))), f(dy)
        dstates = tuple(map(f, flat(dstate)))
        copies = [a.copy() for a in (xs, dys, *states, *dstates)]
        got = run_all(layer, xs, states if is_lstm(layer) else states[0], f(lengths), dys,
                      dstates if is_lstm(layer) else dstates[0])
        for i, (g, e) in enumerate(zip(got, expected)):
            assert_close(g, e, 1e-13, name=f"{vname} output {i}")
        for a, c in zip((xs, dys, *states, *dstates), copies):  # inputs never written
            assert np.array_equal(a, c)
    ro = readonly(x)
    y, _ = layer(ro)
    assert y.flags.writeable and not np.shares_memory(y, ro)


@pytest.mark.parametrize("cls", CELLS, ids=lambda c: c.__name__)
def test_cell_readonly_inputs_and_call(cls):
    cell = cls(I, H, dtype="float64", seed=0)
    x, state = rand(B, I), cell_state(cell)
    for a in (x, *flat(state)):
        a.flags.writeable = False
    out = cell(x, state)
    st, cache = cell.forward(x, state)
    for a, b in zip(flat(out), flat(st)):
        assert np.array_equal(a, b) and a.flags.writeable
    dx, dst = cell.backward(cache, None)  # None = zeros
    assert not dx.any() and all(not a.any() for a in flat(dst))
    zeros = cell(x, None)
    zeros2 = cell(x, tuple(np.zeros((B, H)) for _ in range(2)) if is_lstm(cell) else np.zeros((B, H)))
    for a, b in zip(flat(zeros), flat(zeros2)):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("cls", SEQ, ids=lambda c: c.__name__)
def test_dtype_conversion(cls):
    f32 = cls(I, H, num_layers=2, seed=0)
    f64 = cls(I, H, num_layers=2, seed=0, dtype=np.float64)
    x64 = rand(T, B, I)
    y_a, st_a = f32(x64)
    y_b, st_b = f32(x64.astype(np.float32))
    assert y_a.dtype == np.float32 and all(s.dtype == np.float32 for s in flat(st_a))
    assert np.array_equal(y_a, y_b)
    y, st, cache = f32.forward(x64, seq_state(f32))  # float64 state converted too
    dx, dst0 = f32.backward(cache, np.ones(y.shape), seq_state(f32, seed=7))
    assert dx.dtype == np.float32 and all(s.dtype == np.float32 for s in flat(dst0))
    y64, _ = f64(x64.astype(np.float32))  # float32 input to a float64 layer
    assert y64.dtype == np.float64
    assert_close(y_a, y64, 1e-5)
    cell = R.GRUCell(I, H)
    assert cell(x64[0]).dtype == np.float32


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.longdouble])
def test_functional_any_float_dtype(dtype):
    """The reference computes in x's float dtype, whatever it is (the kernels: float32/64 only)."""
    layer = R.LSTM(I, H, dtype="float64", seed=0)
    w = [tuple(layer.params[k] for k in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"))]
    x = rand(T, B, I)
    y_ref, _ = F.recurrent("lstm", x, w)
    y, (h, c), cache = F.recurrent_forward("lstm", x.astype(dtype), w)
    dx, _, grads = F.recurrent_backward(cache, np.ones(y.shape, dtype))
    assert y.dtype == h.dtype == dx.dtype == grads[0][0].dtype == dtype
    assert_close(y, y_ref, 1e-2 if dtype == np.float16 else 1e-5)


# --- edge sizes -----------------------------------------------------------------------------


@pytest.mark.parametrize("cls", SEQ, ids=lambda c: c.__name__)
def test_zero_steps(cls):
    """T = 0: y is (0, B, D*H), the final state is the initial state; backward passes dstate."""
    layer = cls(I, H, num_layers=2, bidirectional=True, dtype="float64", seed=0)
    state = seq_state(layer)
    y, st, cache = layer.forward(np.zeros((0, B, I)), state, np.zeros(B, int))
    assert y.shape == (0, B, 2 * H)
    for a, b in zip(flat(st), flat(state)):
        assert np.array_equal(a, b) and not np.shares_memory(a, b)
    dstate = seq_state(layer, seed=5)
    dx, dst0 = layer.backward(cache, np.zeros(y.shape), dstate)
    assert dx.shape == (0, B, I)
    for a, b in zip(flat(dst0), flat(dstate)):
        assert np.array_equal(a, b)
    assert all(not g.any() for g in layer.grads.values())
    y0, st0 = layer(np.zeros((0, B, I)))
    assert y0.shape == (0, B, 2 * H) and all(not s.any() for s in flat(st0))


@pytest.mark.parametrize("cls", SEQ, ids=lambda c: c.__name__)
def test_empty_batch(cls):
    layer = cls(I, H, num_layers=2, bidirectional=True, batch_first=True, seed=0)
    y, st, cache = layer.forward(np.zeros((0, T, I), np.float32), None, np.zeros(0, int))
    assert y.shape == (0, T, 2 * H) and all(s.shape == (4, 0, H) for s in flat(st))
    dx, dst0 = layer.backward(cache, np.zeros(y.shape))
    assert dx.shape == (0, T, I) and all(s.shape == (4, 0, H) for s in flat(dst0))
    cell = R.LSTMCell(I, H)
    h, c = cell(np.zeros((0, I)))
    assert h.shape == c.shape == (0, H)


def test_call_matches_forward_and_repr():
    layer = R.LSTM(I, H, num_layers=2, dropout=0.3, bidirectional=True, seed=0)
    x = rand(T, B, I)
    y_call, _ = layer(x)
    plain = R.LSTM(I, H, num_layers=2, bidirectional=True, seed=0)
    y, _, _ = plain.forward(x)
    assert np.array_equal(y_call, y)
    assert repr(layer) == "LSTM(4, 6, num_layers=2, dropout=0.3, bidirectional=True, dtype='float32')"
    assert repr(R.GRUCell(I, H, bias=False)) == "GRUCell(4, 6, bias=False, dtype='float32')"
