"""Bad input to the C++-backed layers (fastrnn.LSTM etc.) and to fastrnn.functional.

Every bad call raises ValueError/TypeError whose message names the argument; sizes that would
overflow raise ValueError/MemoryError; nothing crashes. Non-contiguous, Fortran-ordered and
read-only inputs are accepted, give the results of contiguous ones and are never written to.
NaN propagates; empty batches and empty sequences behave like the reference.
"""
import importlib
import pickle

import numpy as np
import pytest
from helpers import assert_close, worst_difference

import fastrnn as fr

F = fr.functional
RF = fr.reference.functional
MODES = ["rnn_tanh", "rnn_relu", "lstm", "gru"]
T, B, I, H, L = 5, 3, 7, 13, 2
G = {"rnn_tanh": 1, "rnn_relu": 1, "lstm": 4, "gru": 3}


def layer_for(mode, backend=fr, **kw):
    kw.setdefault("num_layers", L)
    kw.setdefault("bidirectional", True)
    kw.setdefault("dtype", "float64")
    kw.setdefault("seed", 0)
    if mode.startswith("rnn"):
        return backend.RNN(I, H, nonlinearity=mode[4:], **kw)
    return {"lstm": backend.LSTM, "gru": backend.GRU}[mode](I, H, **kw)


def cell_for(mode, backend=fr, **kw):
    kw.setdefault("dtype", "float64")
    kw.setdefault("seed", 0)
    if mode.startswith("rnn"):
        return backend.RNNCell(I, H, nonlinearity=mode[4:], **kw)
    return {"lstm": backend.LSTMCell, "gru": backend.GRUCell}[mode](I, H, **kw)


def rand(*shape, seed=0, dtype=np.float64):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def state_of(mode, shape, seed=1, dtype=np.float64):
    h = rand(*shape, seed=seed, dtype=dtype)
    return (h, rand(*shape, seed=seed + 1, dtype=dtype)) if mode == "lstm" else h


def raises(exc_types, name, fn, *args, **kwargs):
    """fn(*args) must raise one of exc_types with `name` in the message."""
    with pytest.raises(exc_types) as info:
        fn(*args, **kwargs)
    assert name in str(info.value), f"message does not name {name!r}: {info.value!r}"
    return info.value


def flat(state):
    return list(state) if isinstance(state, tuple) else [state]


# ------------------------------------------------------------------------- layers: bad input


def bad_forward_calls(mode):
    """(description, expected exception, name in message, x, state, lengths)."""
    lstm = mode == "lstm"
    S = (L * 2, B, H)
    x = rand(T, B, I)
    st = state_of(mode, S)

    def with_h(h):
        return (h, st[1]) if lstm else h

    cases = [
        ("x 2-d", ValueError, "x", x[0], None, None),
        ("x 4-d", ValueError, "x", x[None], None, None),
        ("x wrong I", ValueError, "x", rand(T, B, I + 1), None, None),
        ("x int", TypeError, "x", np.ones((T, B, I), np.int64), None, None),
        ("x bool", TypeError, "x", np.ones((T, B, I), bool), None, None),
        ("x complex", TypeError, "x", x.astype(np.complex128), None, None),
        ("x object", TypeError, "x", x.astype(object), None, None),
        ("x ragged list", TypeError, "x", [[1.0, 2.0], [3.0]], None, None),
        ("state 2-d", ValueError, "state", x, with_h(rand(B, H)), None),
        ("state wrong L*D", ValueError, "state", x, with_h(rand(L * 2 + 1, B, H)), None),
        ("state wrong H", ValueError, "state", x, with_h(rand(L * 2, B, H + 1)), None),
        ("state batch mismatch", ValueError, "state", x, with_h(rand(L * 2, B + 1, H)), None),
        ("state int", TypeError, "state", x, with_h(np.ones(S, np.int32)), None),
        ("lengths > T", ValueError, "lengths", x, None, np.array([T, T + 1, 1])),
        ("lengths negative", ValueError, "lengths", x, None, np.array([T, -1, 1])),
        ("lengths wrong shape", ValueError, "lengths", x, None, np.array([T, 1])),
        ("lengths 2-d", ValueError, "lengths", x, None, np.array([[T], [1], [2]])),
        ("lengths fraction", TypeError, "lengths", x, None, np.array([T, 1.5, 2.0])),
        ("lengths complex", TypeError, "lengths", x, None, np.array([T, 1, 2], np.complex64)),
        ("lengths bool", TypeError, "lengths", x, None, np.array([True, False, True])),
        ("lengths str", TypeError, "lengths", x, None, np.array(["5", "1", "2"])),
    ]
    if lstm:
        cases += [
            ("c0 wrong shape", ValueError, "state", x, (st[0], rand(L * 2, B, H + 2)), None),
            ("c0 batch mismatch", ValueError, "state", x, (st[0], rand(L * 2, B - 1, H)), None),
            ("LSTM state not a tuple", TypeError, "state", x, st[0], None),
            ("LSTM state tuple of 3", TypeError, "state", x, (st[0], st[1], st[1]), None),
        ]
    else:
        cases += [("(h, c) for a non-LSTM", TypeError, "state", x, (st, st), None)]
    return cases


def case_ids(cases):
    return [c[0] for c in cases]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("mode", MODES)
def test_layer_forward_errors(mode, dtype):
    layer = layer_for(mode, dtype=dtype)
    for desc, exc, name, x, state, lengths in bad_forward_calls(mode):
        for call in (layer.__call__, layer.forward):
            try:
                raises(exc, name, call, x, state, lengths)
            except AssertionError as err:
                raise AssertionError(f"{mode} {call.__name__}: {desc}: {err}") from None


@pytest.mark.parametrize("mode", MODES)
def test_layer_backward_errors(mode):
    layer = layer_for(mode)
    lstm = mode == "lstm"
    S = (L * 2, B, H)
    x = rand(T, B, I)
    _, _, cache = layer.forward(x, None, np.array([T, 0, 2]))
    dy = rand(T, B, 2 * H)
    ds = state_of(mode, S)

    def with_h(h):
        return (h, ds[1]) if lstm else h

    cases = [
        ("dy 2-d", ValueError, "dy", dy[0], None),
        ("dy wrong D*H", ValueError, "dy", rand(T, B, H), None),
        ("dy batch mismatch", ValueError, "dy", rand(T, B + 1, 2 * H), None),
        ("dy wrong T", ValueError, "dy", rand(T + 1, B, 2 * H), None),
        ("dy batch_first layout", ValueError, "dy", rand(B, T, 2 * H), None),
        ("dy int", TypeError, "dy", np.ones((T, B, 2 * H), np.int64), None),
        ("dy complex", TypeError, "dy", dy.astype(np.complex64), None),
        ("dstate 2-d", ValueError, "dstate", dy, with_h(rand(B, H))),
        ("dstate batch mismatch", ValueError, "dstate", dy, with_h(rand(L * 2, B + 1, H))),
        ("dstate wrong H", ValueError, "dstate", dy, with_h(rand(L * 2, B, H - 1))),
        ("dstate bool", TypeError, "dstate", dy, with_h(np.zeros(S, bool))),
    ]
    if lstm:
        cases += [("dc_n wrong shape", ValueError, "dstate", dy, (ds[0], rand(L * 2, B, 1))),
                  ("dstate not a tuple", TypeError, "dstate", dy, ds[0])]
    for desc, exc, name, d_y, d_state in cases:
        try:
            raises(exc, name, layer.backward, cache, d_y, d_state)
        except AssertionError as err:
            raise AssertionError(f"{mode} backward: {desc}: {err}") from None
    # the failed calls left the cache usable
    dx, _ = layer.backward(cache, dy, ds)
    assert dx.shape == x.shape and np.isfinite(dx).all()


@pytest.mark.parametrize("mode", MODES)
def test_layer_foreign_cache(mode):
    layer, twin = layer_for(mode), layer_for(mode)
    other = layer_for("gru" if mode == "lstm" else "lstm")
    ref_layer = layer_for(mode, backend=fr.reference)
    x, dy = rand(T, B, I), rand(T, B, 2 * H)
    _, _, own = layer.forward(x)
    for desc, cache in [("same-class twin", twin.forward(x)[2]), ("other class", other.forward(x)[2]),
                        ("reference layer", ref_layer.forward(x)[2]), ("inner cache", own.inner),
                        ("None", None), ("a tuple", (1, 2))]:
        try:
            raises(ValueError, "cache", layer.backward, cache, dy)
        except AssertionError as err:
            raise AssertionError(f"{mode}: cache from {desc}: {err}") from None
    layer.backward(own, dy)  # still fine


@pytest.mark.parametrize("mode", MODES)
def test_cell_errors(mode):
    cell = cell_for(mode)
    lstm = mode == "lstm"
    x = rand(B, I)
    st = state_of(mode, (B, H))

    def with_h(h):
        return (h, st[1]) if lstm else h

    cases = [
        ("x 1-d", ValueError, "x", x[0], st),
        ("x 3-d", ValueError, "x", x[None], st),
        ("x wrong I", ValueError, "x", rand(B, I + 2), st),
        ("x int", TypeError, "x", np.ones((B, I), int), st),
        ("x complex", TypeError, "x", x.astype(complex), st),
        ("state 3-d", ValueError, "state", x, with_h(rand(1, B, H))),
        ("state batch mismatch", ValueError, "state", x, with_h(rand(B + 1, H))),
        ("state wrong H", ValueError, "state", x, with_h(rand(B, H + 1))),
        ("state int", TypeError, "state", x, with_h(np.ones((B, H), int))),
    ]
    if lstm:
        cases += [("c wrong shape", ValueError, "state", x, (st[0], rand(B, H + 1))),
                  ("state not a tuple", TypeError, "state", x, st[0])]
    for desc, exc, name, xx, ss in cases:
        for call in (cell.__call__, cell.forward):
            try:
                raises(exc, name, call, xx, ss)
            except AssertionError as err:
                raise AssertionError(f"{mode} cell {call.__name__}: {desc}: {err}") from None
    _, cache = cell.forward(x, st)
    for desc, exc, d in [("dstate_next wrong shape", ValueError, with_h(rand(B, H + 1))),
                         ("dstate_next batch mismatch", ValueError, with_h(rand(B + 2, H))),
                         ("dstate_next int", TypeError, with_h(np.ones((B, H), int)))]:
        try:
            raises(exc, "dstate_next", cell.backward, cache, d)
        except AssertionError as err:
            raise AssertionError(f"{mode} cell backward: {desc}: {err}") from None
    twin = cell_for(mode)
    _, foreign = twin.forward(x, st)
    raises(ValueError, "cache", cell.backward, foreign, st)
    raises(ValueError, "cache", cell.backward, cache.inner, st)
    cell.backward(cache, st)


# --------------------------------------------------------------------- functional: bad input


def weights_of(mode, num_layers=L, bidirectional=True, bias=True, dtype="float64"):
    layer = layer_for(mode, num_layers=num_layers, bidirectional=bidirectional, bias=bias, dtype=dtype)
    return layer._weights(layer.params)


@pytest.mark.parametrize("mode", MODES)
def test_functional_forward_errors(mode):
    w = weights_of(mode)
    kw = dict(num_layers=L, bidirectional=True)
    x = rand(T, B, I)
    GH = G[mode] * H

    def replace(k, j, value):
        out = [list(e) for e in w]
        out[k][j] = value
        return [tuple(e) for e in out]

    cases = [
        ("mode unknown", ValueError, "mode", dict(mode="rnn")),
        ("mode None", ValueError, "mode", dict(mode=None)),
        ("x 2-d", ValueError, "x", dict(x=x[0])),
        ("x wrong I", ValueError, "x", dict(x=rand(T, B, I + 1))),
        ("x int", TypeError, "x", dict(x=np.ones((T, B, I), np.int32))),
        ("x bool", TypeError, "x", dict(x=np.ones((T, B, I), bool))),
        ("x complex", TypeError, "x", dict(x=x.astype(np.complex128))),
        ("x object", TypeError, "x", dict(x=x.astype(object))),
        ("weights too few", ValueError, "weights", dict(weights=w[:-1])),
        ("weights too many", ValueError, "weights", dict(weights=w + w[:1])),
        ("weights for 1 layer", ValueError, "weights", dict(weights=weights_of(mode, num_layers=1))),
        ("weights unidirectional", ValueError, "weights", dict(weights=weights_of(mode, bidirectional=False))),
        ("weights an array", TypeError, "weights", dict(weights=w[0][0])),
        ("weights None", TypeError, "weights", dict(weights=None)),
        ("weights entry of 3", ValueError, "weights", dict(weights=[e[:3] for e in w])),
        ("w_ih wrong gates", ValueError, "weights", dict(weights=replace(0, 0, rand(GH + H, I)))),
        ("w_ih wrong I", ValueError, "weights", dict(weights=replace(0, 0, rand(GH, I + 1)))),
        ("w_ih of layer 1 wrong", ValueError, "weights", dict(weights=replace(2, 0, rand(GH, H)))),
        ("w_ih 1-d", ValueError, "weights", dict(weights=replace(0, 0, rand(GH * I)))),
        ("w_hh wrong shape", ValueError, "weights", dict(weights=replace(1, 1, rand(GH, H + 1)))),
        ("w_hh of reverse wrong H", ValueError, "weights", dict(weights=replace(3, 1, rand(GH - G[mode], H - 1)))),
        ("b_ih wrong length", ValueError, "weights", dict(weights=replace(0, 2, rand(GH + 1)))),
        ("b_hh 2-d", ValueError, "weights", dict(weights=replace(1, 3, rand(GH, 1)))),
        ("b_hh None alone", ValueError, "weights", dict(weights=replace(0, 3, None))),
        ("bias in one layer only", ValueError, "weights",
         dict(weights=[w[0], w[1]] + [(e[0], e[1], None, None) for e in w[2:]])),
        ("w_hh int", TypeError, "weights", dict(weights=replace(0, 1, np.ones((GH, H), int)))),
        ("state wrong shape", ValueError, "state",
         dict(state=state_of(mode, (L * 2, B, H + 1)))),
        ("state batch mismatch", ValueError, "state", dict(state=state_of(mode, (L * 2, B + 1, H)))),
        ("lengths > T", ValueError, "lengths", dict(lengths=[1, T + 1, 0])),
        ("lengths negative", ValueError, "lengths", dict(lengths=[1, -3, 0])),
        ("lengths wrong shape", ValueError, "lengths", dict(lengths=[1, 2, 3, 4])),
        ("lengths fraction", TypeError, "lengths", dict(lengths=[1, 2.5, 3])),
        ("lengths NaN", TypeError, "lengths", dict(lengths=[1, np.nan, 3])),
        ("lengths complex", TypeError, "lengths", dict(lengths=np.array([1, 2, 3], complex))),
        ("dropout_masks count", ValueError, "dropout_masks", dict(dropout_masks=[])),
        ("dropout_masks an array", ValueError, "dropout_masks", dict(dropout_masks=np.ones((1, T, B, 2 * H)))),
        ("dropout_masks shape", ValueError, "dropout_masks", dict(dropout_masks=[np.ones((T, B, H))])),
        ("dropout_masks batch-first", ValueError, "dropout_masks", dict(dropout_masks=[np.ones((B, T, 2 * H))])),
        ("dropout_masks int", TypeError, "dropout_masks", dict(dropout_masks=[np.ones((T, B, 2 * H), int)])),
        ("num_layers 0", ValueError, "num_layers", dict(num_layers=0)),
        ("num_layers float", TypeError, "num_layers", dict(num_layers=2.0)),
    ]
    if mode == "lstm":
        cases += [("state not a tuple", TypeError, "state", dict(state=rand(L * 2, B, H))),
                  ("c0 wrong shape", ValueError, "state", dict(state=(rand(L * 2, B, H), rand(L * 2, B, 1))))]
    else:
        cases += [("(h, c) for a non-LSTM", TypeError, "state", dict(state=(rand(L * 2, B, H),) * 2))]
    for desc, exc, name, change in cases:
        args = dict(mode=mode, x=x, weights=w, state=None, lengths=None, **kw)
        args.update(change)
        for fn in (F.recurrent_forward, F.recurrent):
            a = dict(args)
            if fn is F.recurrent:
                if "dropout_masks" in a:
                    continue
            try:
                raises(exc, name, fn, a.pop("mode"), a.pop("x"), a.pop("weights"), **a)
            except AssertionError as err:
                raise AssertionError(f"{mode} {fn.__name__}: {desc}: {err}") from None


@pytest.mark.parametrize("mode", MODES)
def test_functional_backward_errors(mode):
    w = weights_of(mode)
    kw = dict(num_layers=L, bidirectional=True)
    x, dy = rand(T, B, I), rand(T, B, 2 * H)
    S = (L * 2, B, H)
    lstm = mode == "lstm"
    _, _, cache = F.recurrent_forward(mode, x, w, None, [T, 1, 0], **kw)
    _, _, ref_cache = RF.recurrent_forward(mode, x, w, None, [T, 1, 0], **kw)
    _, cell_cache = F.cell_forward(mode, rand(B, I), None, *w[0])
    grads = [tuple(np.zeros_like(a) for a in e) for e in w]
    ds = state_of(mode, S)
    cases = [
        ("reference cache", ValueError, "cache", dict(cache=ref_cache)),
        ("cell cache", ValueError, "cache", dict(cache=cell_cache)),
        ("None cache", ValueError, "cache", dict(cache=None)),
        ("C++ handle", ValueError, "cache", dict(cache=cache.core)),
        ("dy wrong shape", ValueError, "dy", dict(dy=rand(T, B, H))),
        ("dy batch mismatch", ValueError, "dy", dict(dy=rand(T, B - 1, 2 * H))),
        ("dy 2-d", ValueError, "dy", dict(dy=dy[0])),
        ("dy int", TypeError, "dy", dict(dy=np.zeros((T, B, 2 * H), int))),
        ("dstate wrong shape", ValueError, "dstate",
         dict(dstate=(rand(*S[:2], H + 1), ds[1]) if lstm else rand(*S[:2], H + 1))),
        ("dstate batch mismatch", ValueError, "dstate",
         dict(dstate=(rand(S[0], B + 1, H), ds[1]) if lstm else rand(S[0], B + 1, H))),
        ("grads too few", ValueError, "grads", dict(grads=grads[:-1])),
        ("grads wrong shape", ValueError, "grads",
         dict(grads=[(np.zeros((1, 1)),) + g[1:] for g in grads])),
        ("grads wrong dtype", ValueError, "grads",
         dict(grads=[tuple(a.astype(np.float32) for a in g) for g in grads])),
        ("grads int", TypeError, "grads", dict(grads=[tuple(a.astype(int) for a in g) for g in grads])),
        ("grads non-contiguous", ValueError, "grads",
         dict(grads=[(np.zeros(g[0].shape[::-1]).T,) + g[1:] for g in grads])),
        ("grads read-only", ValueError, "grads",
         dict(grads=[tuple(np.broadcast_to(np.zeros(1), a.shape) for a in g) for g in grads])),
    ]
    if lstm:
        cases += [("dc_n wrong shape", ValueError, "dstate", dict(dstate=(ds[0], rand(L * 2, B, 2)))),
                  ("dstate not a tuple", TypeError, "dstate", dict(dstate=ds[0]))]
    for desc, exc, name, change in cases:
        args = dict(cache=cache, dy=dy, dstate=None, grads=None)
        args.update(change)
        try:
            raises(exc, name, F.recurrent_backward, **args)
        except AssertionError as err:
            raise AssertionError(f"{mode} recurrent_backward: {desc}: {err}") from None
    assert all(not a.any() for g in grads for a in g)  # failed calls accumulated nothing
    # the kernel cache is not accepted by the reference either
    raises(ValueError, "cache", RF.recurrent_backward, cache, dy)
    F.recurrent_backward(cache, dy, ds, grads)  # the cache still works


@pytest.mark.parametrize("mode", MODES)
def test_functional_cell_errors(mode):
    w_ih, w_hh, b_ih, b_hh = weights_of(mode, num_layers=1, bidirectional=False)[0]
    x = rand(B, I)
    st = state_of(mode, (B, H))
    for fn in (F.cell, F.cell_forward):
        raises(ValueError, "x", fn, mode, x[None], st, w_ih, w_hh, b_ih, b_hh)
        raises(TypeError, "x", fn, mode, x.astype(int), st, w_ih, w_hh, b_ih, b_hh)
        raises(ValueError, "state", fn, mode, x, state_of(mode, (B + 1, H)), w_ih, w_hh, b_ih, b_hh)
        raises(ValueError, "mode", fn, "lstm2", x, None, w_ih, w_hh, b_ih, b_hh)
        raises(ValueError, "w_hh", fn, mode, x, st, w_ih, w_hh[:-1], b_ih, b_hh)
        raises(ValueError, "w_ih", fn, mode, x, st, w_ih[:-1], w_hh, b_ih, b_hh)
        raises(ValueError, "b_", fn, mode, x, st, w_ih, w_hh, b_ih, None)
    _, cache = F.cell_forward(mode, x, st, w_ih, w_hh, b_ih, b_hh)
    _, ref_cache = RF.cell_forward(mode, x, st, w_ih, w_hh, b_ih, b_hh)
    _, _, seq_cache = F.recurrent_forward(mode, x[None], [(w_ih, w_hh, b_ih, b_hh)])
    raises(ValueError, "cache", F.cell_backward, ref_cache, st)
    raises(ValueError, "cache", F.cell_backward, seq_cache, st)
    raises(ValueError, "cache", RF.cell_backward, cache, st)
    raises(ValueError, "dstate_next", F.cell_backward, cache, state_of(mode, (B, H + 1)))
    raises(ValueError, "grads", F.cell_backward, cache, st, (np.zeros_like(w_ih),))
    F.cell_backward(cache, st)


def test_functional_cell_arguments():
    """fr.functional.cell is a C builtin: keywords, defaults, array-likes and argument errors
    behave as for the reference's Python function."""
    w_ih, w_hh, b_ih, b_hh = weights_of("lstm", num_layers=1, bidirectional=False)[0]
    x, (h, c) = rand(B, I), state_of("lstm", (B, H))
    want = RF.cell("lstm", x, (h, c), w_ih, w_hh, b_ih, b_hh)
    for got in (F.cell("lstm", x, (h, c), w_ih, w_hh, b_ih, b_hh),
                F.cell(mode="lstm", x=x, state=[h, c], w_ih=w_ih, w_hh=w_hh, b_ih=b_ih, b_hh=b_hh),
                F.cell("lstm", x.tolist(), (h.tolist(), c), w_ih.tolist(), w_hh, b_ih=b_ih, b_hh=b_hh)):
        for a, b in zip(got, want):
            assert_close(a, b, 1e-12, 1e-12)
    no_bias = F.cell("lstm", x, (h, c), w_ih, w_hh)
    for a, b in zip(no_bias, RF.cell("lstm", x, (h, c), w_ih, w_hh)):
        assert_close(a, b, 1e-12, 1e-12)
    # float16 runs in float32, float32 stays float32
    assert F.cell("lstm", x.astype(np.float16), None, w_ih, w_hh)[0].dtype == np.float32
    assert F.cell("lstm", x.astype(np.float32), None, w_ih, w_hh)[0].dtype == np.float32
    raises(TypeError, "'w_hh'", F.cell, "lstm", x, None, w_ih)
    raises(TypeError, "'bias'", F.cell, "lstm", x, None, w_ih, w_hh, bias=b_ih)
    raises(TypeError, "'x'", F.cell, "lstm", x, None, w_ih, w_hh, x=x)
    raises(TypeError, "at most 7", F.cell, "lstm", x, None, w_ih, w_hh, b_ih, b_hh, None)
    raises(TypeError, "state", F.cell, "lstm", x, h, w_ih, w_hh, b_ih, b_hh)
    raises(TypeError, "state", F.cell, "lstm", x, (h, c, c), w_ih, w_hh, b_ih, b_hh)
    raises(TypeError, "state", F.cell, "gru", x, (h, c), *weights_of("gru", num_layers=1, bidirectional=False)[0])
    raises(TypeError, "state[0]", F.cell, "lstm", x, (h.astype(int), c), w_ih, w_hh, b_ih, b_hh)
    raises(TypeError, "state[1]", F.cell, "lstm", x, (h, [[1, "a"]]), w_ih, w_hh, b_ih, b_hh)
    raises(TypeError, "w_ih", F.cell, "lstm", x, None, object(), w_hh)
    raises(ValueError, "mode", F.cell, 2, x, None, w_ih, w_hh)


@pytest.mark.parametrize("fn", ["cell", "cell_forward"])
def test_functional_cell_checks_mode_first(fn):
    """An unknown mode is reported as such whatever the state looks like (as the reference does)."""
    w_ih, w_hh, b_ih, b_hh = weights_of("lstm", num_layers=1, bidirectional=False)[0]
    for backend in (RF, F):
        raises(ValueError, "mode", getattr(backend, fn), "lstm2", rand(B, I), state_of("lstm", (B, H)),
               w_ih, w_hh, b_ih, b_hh)


# ------------------------------------------------------------------------------ huge sizes

HUGE_SIZES = [dict(hidden_size=2 ** 46), dict(hidden_size=2 ** 62), dict(hidden_size=2 ** 70),
              dict(input_size=2 ** 62)]


@pytest.mark.parametrize("kw", HUGE_SIZES, ids=lambda k: "{}=2^{}".format(*next(iter(
    (n, v.bit_length() - 1) for n, v in k.items()))))
def test_huge_constructor(kw):
    """Parameters of > 2^63 bytes (or beyond any address space) for every layer and cell class:
    ValueError or MemoryError, a ValueError naming the argument. (These sizes fail before
    touching any memory.)"""
    name = next(iter(kw))
    problems = []
    for cls in (fr.RNN, fr.LSTM, fr.GRU, fr.RNNCell, fr.LSTMCell, fr.GRUCell):
        args = dict(input_size=3, hidden_size=4)
        args.update(kw)
        try:
            cls(args["input_size"], args["hidden_size"])
        except MemoryError:
            continue
        except ValueError as exc:
            if name not in str(exc):
                problems.append(f"{cls.__name__}: ValueError does not name {name!r}: {exc!r}")
        except Exception as exc:  # noqa: BLE001 - any other type is the failure being reported
            problems.append(f"{cls.__name__}: {type(exc).__name__} instead of ValueError/MemoryError: {exc!r}")
        else:
            problems.append(f"{cls.__name__}: no error")
    assert not problems, f"{kw}:\n" + "\n".join(problems)


HUGE_LAYERS_SCRIPT = r"""
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))  # a runaway constructor cannot take the machine
import fastrnn as fr
try:
    getattr(fr, sys.argv[1])(3, 4, num_layers=2 ** 62)
except (ValueError, MemoryError) as exc:
    print(type(exc).__name__, exc)
"""


@pytest.mark.parametrize("cls", ["LSTM"])  # one class: the constructor is shared
def test_huge_num_layers(cls):
    """num_layers = 2^62 is refused up front (ValueError/MemoryError within seconds), not by
    building parameter tables until memory runs out. Run in a subprocess with a 3 GiB address
    space limit and a 10 s timeout."""
    import subprocess
    import sys
    try:
        proc = subprocess.run([sys.executable, "-c", HUGE_LAYERS_SCRIPT, cls], capture_output=True, text=True,
                              timeout=10)
    except subprocess.TimeoutExpired:
        pytest.fail(f"fr.{cls}(3, 4, num_layers=2**62) did not raise within 10 s (it builds the parameter "
                    f"tables of 2^62 layers before any size check)")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(("ValueError", "MemoryError")), proc.stdout
    if proc.stdout.startswith("ValueError"):
        assert "num_layers" in proc.stdout, f"message does not name 'num_layers': {proc.stdout}"


@pytest.mark.parametrize("fn", ["recurrent", "recurrent_forward"])
@pytest.mark.parametrize("shape", [(2 ** 16, 2 ** 16, 0), (1, 2 ** 31, 0), (2 ** 31, 1, 0)])
def test_huge_steps_times_batch(shape, fn):
    """T*B > 2^31 - 1 (the BLAS row count) with zero-size x: ValueError naming x, no allocation."""
    x = np.empty(shape, np.float32)
    w = [(np.zeros((4, 0), np.float32), np.zeros((4, 1), np.float32), None, None)]
    raises(ValueError, "x", getattr(F, fn), "lstm", x, w)


def test_huge_cell_batch():
    x = np.empty((2 ** 31, 0), np.float64)
    raises(ValueError, "x", F.cell, "gru", x, None, np.zeros((3, 0)), np.zeros((3, 1)))


@pytest.mark.parametrize("mode, hidden", [("lstm", 2 ** 23), ("gru", 716_000_000)],
                         ids=["lstm-1PiB-weights", "gru-GH>2^31"])
def test_huge_weights_views(mode, hidden):
    """Zero-stride weight views of a size no process can hold (gru: G*H > 2^31 - 1 BLAS dims)."""
    g = G[mode]
    w = [(np.broadcast_to(np.float32(0), (g * hidden, 3)), np.broadcast_to(np.float32(0), (g * hidden, hidden)),
          None, None)]
    x = np.zeros((2, 2, 3), np.float32)
    for fn in (F.recurrent, F.recurrent_forward):
        with pytest.raises((ValueError, MemoryError)):
            fn(mode, x, w)


@pytest.mark.parametrize("mode", ["lstm", "gru"])
def test_huge_input_view(mode):
    """A zero-stride x of 2^48 rows through the layer: ValueError/MemoryError, never a crash."""
    layer = layer_for(mode, num_layers=1, bidirectional=False, dtype="float32")
    x = np.broadcast_to(np.float32(0), (2 ** 24, 2 ** 24, I))
    for call in (layer.__call__, layer.forward):
        with pytest.raises((ValueError, MemoryError)):
            call(x)


# ------------------------------------------------------------- layouts, read-only, no writes


def layouts(a, kind):
    """`a` with the same values in another memory layout."""
    if kind == "contiguous":
        return a
    if kind == "strided":  # every other element of a bigger array, like x[::2]
        big = np.zeros((a.shape[0] * 2,) + a.shape[1:], a.dtype)
        big[::2] = a
        return big[::2]
    if kind == "fortran":
        return np.asfortranarray(a)
    if kind == "readonly":
        b = a.copy()
        b.flags.writeable = False
        return b
    raise AssertionError(kind)


def map_state(state, fn):
    return None if state is None else (tuple(fn(s) for s in state) if isinstance(state, tuple) else fn(state))


KINDS = ["strided", "fortran", "readonly"]


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("mode", MODES)
def test_layer_layouts(mode, kind, batch_first):
    layer = layer_for(mode, batch_first=batch_first)
    S = (L * 2, B, H)
    x = rand(*((B, T, I) if batch_first else (T, B, I)))
    dy = rand(*((B, T, 2 * H) if batch_first else (T, B, 2 * H)), seed=3)
    state, dstate = state_of(mode, S, seed=5), state_of(mode, S, seed=7)
    lengths = np.array([T, 0, 3])
    results = []
    for k in ("contiguous", kind):
        args = [layouts(x, k), map_state(state, lambda s: layouts(s, k)), layouts(lengths, k)]
        d_args = [layouts(dy, k), map_state(dstate, lambda s: layouts(s, k))]
        saved = [a.copy() for a in [args[0], args[2], d_args[0]] + flat(args[1]) + flat(d_args[1])]
        layer.zero_grad()
        y_call, s_call = layer(*args)
        y, s, cache = layer.forward(*args)
        dx, ds0 = layer.backward(cache, *d_args)
        after = [args[0], args[2], d_args[0]] + flat(args[1]) + flat(d_args[1])
        for i, (a, b) in enumerate(zip(saved, after)):
            assert np.array_equal(a, b), f"{mode} {kind}: input #{i} was written to"
        assert y.flags.c_contiguous and y.flags.writeable and dx.flags.writeable
        results.append([y_call, y, dx] + flat(s_call) + flat(s) + flat(ds0) + [g.copy() for g in layer.grads.values()])
    for i, (a, b) in enumerate(zip(*results)):
        assert np.array_equal(a, b), f"{mode} {kind}: result #{i} differs from the contiguous run"


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("mode", MODES)
def test_functional_layouts(mode, kind):
    """Non-contiguous / Fortran / read-only x, weights, state, lengths, masks, dy and dstate."""
    w = weights_of(mode)
    S = (L * 2, B, H)
    x, dy = rand(T, B, I), rand(T, B, 2 * H, seed=3)
    state, dstate = state_of(mode, S, seed=5), state_of(mode, S, seed=7)
    lengths = np.array([2, T, 0])
    masks = [(rand(T, B, 2 * H, seed=9) > 0) * 2.0]
    results = []
    for k in ("contiguous", kind):
        lay = (lambda a: layouts(a, k))
        wk = [tuple(lay(a) for a in e) for e in w]
        args = dict(x=lay(x), state=map_state(state, lay), lengths=lay(lengths), masks=[lay(m) for m in masks],
                    dy=lay(dy), dstate=map_state(dstate, lay))
        inputs = [a for e in wk for a in e] + [args["x"], args["lengths"], args["dy"]] + args["masks"] \
            + flat(args["state"]) + flat(args["dstate"])
        saved = [a.copy() for a in inputs]
        kw = dict(num_layers=L, bidirectional=True)
        y, s, cache = F.recurrent_forward(mode, args["x"], wk, args["state"], args["lengths"],
                                          dropout_masks=args["masks"], **kw)
        dx, ds0, grads = F.recurrent_backward(cache, args["dy"], args["dstate"])
        yc, sc = F.recurrent(mode, args["x"], wk, args["state"], args["lengths"], **kw)
        for i, (a, b) in enumerate(zip(saved, inputs)):
            assert np.array_equal(a, b), f"{mode} {kind}: input #{i} was written to"
        results.append([y, dx, yc] + flat(s) + flat(ds0) + flat(sc) + [g for e in grads for g in e])
    for i, (a, b) in enumerate(zip(*results)):
        assert np.array_equal(a, b), f"{mode} {kind}: result #{i} differs from the contiguous run"


def _worst(a, b):
    """Where two arrays of one shape differ most, for messages."""
    err, idx, _ = worst_difference(a, b)
    return f"worst difference {err:.3e} at {idx}"


def _functional_run(mode, x, w, state, dy, grads):
    kw = dict(num_layers=L, bidirectional=True)
    y, s, cache = F.recurrent_forward(mode, x, w, state, **kw)
    dx, ds0, grads = F.recurrent_backward(cache, dy, None, grads)
    yc, sc = F.recurrent(mode, x, w, state, **kw)
    return [y, dx, yc] + flat(s) + flat(ds0) + flat(sc) + [g for e in grads for g in e]


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("mode", MODES)
def test_direct_calls(mode, dtype, bias, monkeypatch):
    """The common call skips the Python checks and goes straight to the binding: the same
    results, bit for bit, as the checked path; and what the binding refuses (here weights of
    the other precision) still runs through the checked path's conversions. (Refused grads
    and their messages: test_functional_backward_errors, whose calls go this way first.)"""
    FR = importlib.import_module("fastrnn.functional.recurrent")  # the module (the package exports a function of that name)
    w = [tuple(None if a is None else a.astype(dtype) for a in e) for e in weights_of(mode, bias=bias)]
    x, dy = rand(T, B, I, dtype=dtype), rand(T, B, 2 * H, seed=3, dtype=dtype)
    for state in (None, state_of(mode, (L * 2, B, H), seed=5, dtype=dtype)):
        zeros = [tuple(None if a is None else np.zeros_like(a) for a in e) for e in w]

        def fresh():
            return [tuple(None if a is None else a.copy() for a in e) for e in zeros]
        with monkeypatch.context() as m:  # the direct path alone: the checks would raise
            def no_checks(*args, **kwargs):
                raise AssertionError("the checked path ran")
            m.setattr(FR, "prepare_recurrent", no_checks)
            if bias:  # (without biases the backward takes the checked path)
                m.setattr(FR, "as_float_array", no_checks)
            direct = _functional_run(mode, x, w, state, dy, fresh())
            direct_new_grads = _functional_run(mode, x, w, state, dy, None)
        with monkeypatch.context() as m:  # the checked path alone
            m.setattr(FR, "_direct_forward", lambda *args: None)
            m.setattr(FR, "_direct_backward", lambda *args: None)
            checked = _functional_run(mode, x, w, state, dy, fresh())
        for run in (direct_new_grads, checked):
            for i, (a, b) in enumerate(zip(direct, run)):
                if a is None or b is None:
                    assert a is None and b is None, f"{mode}: result #{i} is None on one path only"
                    continue
                assert a.dtype == dtype and b.dtype == dtype, f"{mode}: result #{i}: dtypes {a.dtype}, {b.dtype}"
                assert np.array_equal(a, b), f"{mode}: result #{i} differs between paths ({_worst(a, b)})"
    other = np.float32 if dtype == np.float64 else np.float64

    def convert(weights, to):
        return [tuple(None if a is None else a.astype(to) for a in e) for e in weights]
    w_other = convert(w, other)
    y, s = F.recurrent(mode, x, w_other, num_layers=L, bidirectional=True)
    y_ref, s_ref = F.recurrent(mode, x, convert(w_other, dtype), num_layers=L, bidirectional=True)
    assert y.dtype == dtype and np.array_equal(y, y_ref)
    # containers the checks refuse (object arrays) are refused on the direct path too
    boxed = np.empty((len(w), 4), object)
    boxed[:] = [list(e) for e in w]
    raises(TypeError, "weights", F.recurrent, mode, x, boxed, num_layers=L, bidirectional=True)
    raises(ValueError, "weights", F.recurrent, mode, x, list(boxed), num_layers=L, bidirectional=True)


def _results(out):
    return [a for o in (out if isinstance(out, tuple) else (out,)) for a in flat(o)]


@pytest.mark.parametrize("mode", MODES)
def test_equal_dtypes_and_byte_order(mode):
    """An array restored by pickle carries a dtype equal to NumPy's float64 but not the same
    object: accepted everywhere (it was refused as "expected float64, got float64"). Big-endian
    arrays are converted, never read as native ones (a cell step read big-endian weights as
    native and returned NaN)."""
    def unpickled(a):
        return pickle.loads(pickle.dumps(a))

    def big_endian(a):
        return a.astype(a.dtype.newbyteorder(">"))

    w = weights_of(mode)
    x, dy = rand(T, B, I), rand(T, B, 2 * H, seed=3)
    kw = dict(num_layers=L, bidirectional=True)
    cell = cell_for(mode)
    xc, p = rand(B, I, seed=4), cell.params
    q = rand(2, 3, 5, 4, seed=6)
    def sequence_results(x, w, dy):
        y, s, cache = F.recurrent_forward(mode, x, w, **kw)
        dx, ds0, grads = F.recurrent_backward(cache, dy)
        return [y, *flat(s), dx, *flat(ds0), *(g for e in grads for g in e)]

    expected = [*sequence_results(x, w, dy),
                *_results(F.cell(mode, xc, None, p["weight_ih"], p["weight_hh"], p["bias_ih"], p["bias_hh"])),
                *_results(F.scaled_dot_product_attention(q, q, q))]
    for conv in (unpickled, big_endian):
        got = [*sequence_results(conv(x), [tuple(conv(a) for a in e) for e in w], conv(dy)),
               *_results(F.cell(mode, conv(xc), None, *(conv(p[k]) for k in ("weight_ih", "weight_hh", "bias_ih",
                                                                            "bias_hh")))),
               *_results(F.scaled_dot_product_attention(conv(q), conv(q), conv(q)))]
        assert len(got) == len(expected)
        for i, (a, b) in enumerate(zip(expected, got)):
            assert np.array_equal(a, b), f"{mode} {conv.__name__}: result #{i} differs ({_worst(a, b)})"


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("mode", MODES)
def test_cell_layouts(mode, kind):
    cell = cell_for(mode)
    x, state, dnext = rand(B, I), state_of(mode, (B, H), seed=4), state_of(mode, (B, H), seed=8)
    results = []
    for k in ("contiguous", kind):
        lay = (lambda a: layouts(a, k))
        args = [lay(x), map_state(state, lay), map_state(dnext, lay)]
        inputs = [args[0]] + flat(args[1]) + flat(args[2])
        saved = [a.copy() for a in inputs]
        cell.zero_grad()
        h_call = cell(args[0], args[1])
        s, cache = cell.forward(args[0], args[1])
        dx, ds = cell.backward(cache, args[2])
        for i, (a, b) in enumerate(zip(saved, inputs)):
            assert np.array_equal(a, b), f"{mode} cell {kind}: input #{i} was written to"
        results.append(flat(h_call) + flat(s) + [dx] + flat(ds) + [g.copy() for g in cell.grads.values()])
    for i, (a, b) in enumerate(zip(*results)):
        assert np.array_equal(a, b), f"{mode} cell {kind}: result #{i} differs from the contiguous run"


@pytest.mark.parametrize("mode", MODES)
def test_results_are_fresh_arrays(mode):
    """Results never alias the inputs or each other (the caller owns them)."""
    layer = layer_for(mode)
    x, state = rand(T, B, I), state_of(mode, (L * 2, B, H))
    y, s, cache = layer.forward(x, state)
    dx, ds0 = layer.backward(cache, rand(T, B, 2 * H))
    outs = [y, dx] + flat(s) + flat(ds0)
    inputs = [x] + flat(state) + list(layer.params.values()) + list(layer.grads.values())
    for i, o in enumerate(outs):
        assert o.flags.writeable and o.flags.c_contiguous
        assert not any(np.shares_memory(o, a) for a in inputs), f"result #{i} shares memory with an input"
        assert not any(np.shares_memory(o, p) for j, p in enumerate(outs) if j != i), f"result #{i} aliases another"
    y2, _ = layer(x, state)
    y2[...] = 0  # writing to one result does not change the next call's
    y3, _ = layer(x, state)
    assert np.array_equal(y3, y)


# ---------------------------------------------------------------------------- NaN and empty


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("mode", MODES)
def test_nan_propagates(mode, dtype):
    """NaN in x (sequence 0) and h0 (sequence 2) gives NaN exactly where the reference has it."""
    kern = layer_for(mode, dtype=dtype)
    ref = layer_for(mode, backend=fr.reference)
    ref.load_state_dict(kern.state_dict())
    x = rand(T, B, I, dtype=dtype)
    x[1, 0, 3] = np.nan
    state = state_of(mode, (L * 2, B, H), dtype=dtype)
    flat(state)[0][0, 2, 5] = np.nan
    dy = rand(T, B, 2 * H, seed=2, dtype=dtype)
    outs = []
    for layer in (kern, ref):
        y_call, s_call = layer(x, state)
        y, s, cache = layer.forward(x, state)
        dx, ds0 = layer.backward(cache, dy)
        outs.append([y_call, y, dx] + flat(s_call) + flat(s) + flat(ds0) + list(layer.grads.values()))
    for i, (a, b) in enumerate(zip(*outs)):
        assert_close(a, b, 1e-10 if dtype == "float64" else 1e-4, name=f"{mode} NaN run, result #{i}")
    y = outs[0][1]
    assert np.isnan(y[1:, 0, :H]).all() and np.isnan(y[:2, 0, H:]).all()  # both directions saw it
    assert np.isnan(y[:, 2]).all()          # NaN initial state of layer 0, forward direction
    assert np.isfinite(y[:, 1]).all()       # sequence 1 is untouched


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", [(0, B), (T, 0), (0, 0)], ids=["T0", "B0", "T0B0"])
@pytest.mark.parametrize("batch_first", [False, True])
def test_empty(mode, shape, batch_first):
    Tn, Bn = shape
    kern = layer_for(mode, batch_first=batch_first)
    ref = layer_for(mode, backend=fr.reference, batch_first=batch_first)
    ref.load_state_dict(kern.state_dict())
    x = rand(*((Bn, Tn, I) if batch_first else (Tn, Bn, I)))
    dy = rand(*((Bn, Tn, 2 * H) if batch_first else (Tn, Bn, 2 * H)))
    state, dstate = state_of(mode, (L * 2, Bn, H)), state_of(mode, (L * 2, Bn, H), seed=4)
    lengths = np.zeros(Bn, np.int64)
    outs = []
    for layer in (kern, ref):
        res = []
        for st, ln in ((None, None), (state, None), (state, lengths)):
            y_call, s_call = layer(x, st, ln)
            y, s, cache = layer.forward(x, st, ln)
            dx, ds0 = layer.backward(cache, dy, dstate)
            res += [y_call, y, dx] + flat(s_call) + flat(s) + flat(ds0)
        outs.append(res + [g.copy() for g in layer.grads.values()])
    for i, (a, b) in enumerate(zip(*outs)):
        assert a.shape == b.shape, f"{mode} {shape}: result #{i} shape {a.shape}, reference {b.shape}"
        assert a.dtype == np.float64
        assert_close(a, b, 1e-12, name=f"{mode} {shape} result #{i}")
    if Tn == 0:  # the final state is the initial state, the state gradient passes through
        y, s, cache = kern.forward(x, state)
        assert all(np.array_equal(a, b) for a, b in zip(flat(s), flat(state)))
        _, ds0 = kern.backward(cache, dy, dstate)
        assert all(np.array_equal(a, b) for a, b in zip(flat(ds0), flat(dstate)))


@pytest.mark.parametrize("mode", MODES)
def test_empty_cell_batch(mode):
    kern, ref = cell_for(mode), cell_for(mode, backend=fr.reference)
    ref.load_state_dict(kern.state_dict())
    x = np.zeros((0, I))
    for cell in (kern, ref):
        s, cache = cell.forward(x)
        dx, ds = cell.backward(cache, None)
        assert dx.shape == (0, I) and all(a.shape == (0, H) for a in flat(s) + flat(ds))
        assert all(not g.any() for g in cell.grads.values())
