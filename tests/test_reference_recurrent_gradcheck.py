"""The NumPy reference's BPTT checked against float64 central finite differences.

Every entry of every gradient (x, h0, c0, each weight and bias) is compared, for each mode x
{1, 2 layers} x {uni, bi} x {lengths None, with a 0 and a full length} x {batch_first}, plus
bias=False, fixed dropout masks and the single-step cells. The loss is a random projection of
all outputs, sum(y * Wy) + sum(h_n * Wh) (+ sum(c_n * Wc)), so every output matters.
"""
import itertools

import numpy as np
import pytest
from helpers import assert_close, relative_error

from fastrnn.reference import functional as F
from fastrnn.reference import recurrent as rec

MODES = ["rnn_tanh", "rnn_relu", "lstm", "gru"]
GATES = {"rnn_tanh": 1, "rnn_relu": 1, "lstm": 4, "gru": 3}
T, B, I, H = 4, 3, 3, 3
LENGTHS = np.array([T, 0, 2])  # full, empty, partial
EPS = 1e-6          # central-difference step: truncation ~EPS^2, rounding ~1e-16 / EPS
RTOL = 1e-6         # max |analytic - numeric| / max |numeric|, per gradient array
RELU_MARGIN = 1e-3  # |pre-activation| kept away from the relu kink

WORST = {}  # family -> worst relative error seen (printed with -s)


@pytest.fixture(scope="module", autouse=True)
def _report_worst():
    yield
    for family, err in sorted(WORST.items()):
        print(f"\n[gradcheck] worst relative error {family}: {err:.2e}")


def check(family, name, analytic, numeric):
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


def relu_margin(run):
    """Smallest |pre-activation| seen by the rnn_relu pointwise kernel while run() executes."""
    seen = [np.inf]
    forward, backward = rec.POINTWISE["rnn_relu"]

    def recording(gx, gh, h_prev, c_prev):
        seen[0] = min(seen[0], float(np.min(np.abs(gx + gh), initial=np.inf)))
        return forward(gx, gh, h_prev, c_prev)

    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(rec.POINTWISE, "rnn_relu", (recording, backward))
        run()
    return seen[0]


def make_weights(rng, mode, L, D, bias=True, scale=0.6):
    G = GATES[mode]
    weights = []
    for l in range(L):
        in_l = I if l == 0 else D * H
        for _ in range(D):
            b = (lambda: rng.uniform(-scale, scale, G * H)) if bias else (lambda: None)
            w_ih, w_hh = rng.uniform(-scale, scale, (G * H, in_l)), rng.uniform(-scale, scale, (G * H, H))
            weights.append((w_ih, w_hh, b(), b()))
    return weights


def recurrent_gradcheck(family, mode, L, bidirectional, lengths, batch_first, bias=True, dropout=False, seed=0):
    D = 2 if bidirectional else 1
    lstm = mode == "lstm"
    for attempt in itertools.count(seed * 100):  # nudge (re-draw) until no relu kink is near
        rng = np.random.default_rng(attempt)
        weights = make_weights(rng, mode, L, D, bias)
        x = rng.standard_normal((B, T, I) if batch_first else (T, B, I))
        h0 = rng.standard_normal((L * D, B, H)) * 0.5
        c0 = rng.standard_normal((L * D, B, H)) * 0.5 if lstm else None
        masks = None
        if dropout and L > 1:
            masks = [(rng.random((T, B, D * H)) >= 0.3) / 0.7 for _ in range(L - 1)]
        Wy = rng.standard_normal((B, T, D * H) if batch_first else (T, B, D * H))
        Wh = rng.standard_normal((L * D, B, H))
        Wc = rng.standard_normal((L * D, B, H)) if lstm else None

        def run(need_cache=False):
            return F.recurrent_forward(mode, x, weights, (h0, c0) if lstm else h0, lengths, num_layers=L,
                                       bidirectional=bidirectional, batch_first=batch_first,
                                       dropout_masks=masks, need_cache=need_cache)

        if mode != "rnn_relu" or relu_margin(run) > RELU_MARGIN:
            break

    def loss():
        y, state, _ = run()
        h_n, c_n = state if lstm else (state, None)
        return np.sum(y * Wy) + np.sum(h_n * Wh) + (np.sum(c_n * Wc) if lstm else 0.0)

    _, _, cache = run(need_cache=True)
    dx, dstate0, grads = F.recurrent_backward(cache, Wy, (Wh, Wc) if lstm else Wh)
    dh0, dc0 = dstate0 if lstm else (dstate0, None)

    check(family, "dx", dx, numeric_grad(loss, x))
    check(family, "dh0", dh0, numeric_grad(loss, h0))
    if lstm:
        check(family, "dc0", dc0, numeric_grad(loss, c0))
    for k, (w, g) in enumerate(zip(weights, grads)):
        for j, name in enumerate(("dw_ih", "dw_hh", "db_ih", "db_hh")):
            if w[j] is None:
                assert g[j] is None, f"{name}[{k}] should be None without biases"
            else:
                check(family, f"{name}[{k}]", g[j], numeric_grad(loss, w[j]))
    if lengths is not None:  # the empty sequence (b = 1): no gradient into x, h0 passes through
        dx_tm = dx.transpose(1, 0, 2) if batch_first else dx
        assert np.all(dx_tm[:, 1] == 0)
        assert np.array_equal(dh0[:, 1], Wh[:, 1])


@pytest.mark.parametrize("batch_first", [False, True], ids=["tmajor", "bfirst"])
@pytest.mark.parametrize("lengths", [None, LENGTHS], ids=["full", "lengths"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("num_layers", [1, 2], ids=["L1", "L2"])
@pytest.mark.parametrize("mode", MODES)
def test_recurrent_gradcheck(mode, num_layers, bidirectional, lengths, batch_first):
    recurrent_gradcheck(mode, mode, num_layers, bidirectional, lengths, batch_first)


@pytest.mark.parametrize("mode", MODES)
def test_recurrent_gradcheck_no_bias(mode):
    recurrent_gradcheck(f"{mode} no-bias", mode, 2, True, LENGTHS, False, bias=False, seed=1)


@pytest.mark.parametrize("mode", MODES)
def test_recurrent_gradcheck_dropout_masks(mode):
    recurrent_gradcheck(f"{mode} dropout", mode, 2, True, LENGTHS, True, dropout=True, seed=2)


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("mode", MODES)
def test_cell_gradcheck(mode, bias):
    lstm = mode == "lstm"
    G = GATES[mode]
    for attempt in itertools.count():
        rng = np.random.default_rng(attempt)
        w_ih, w_hh = rng.uniform(-0.6, 0.6, (G * H, I)), rng.uniform(-0.6, 0.6, (G * H, H))
        b_ih, b_hh = (rng.uniform(-0.6, 0.6, G * H), rng.uniform(-0.6, 0.6, G * H)) if bias else (None, None)
        x, h, c = rng.standard_normal((B, I)), rng.standard_normal((B, H)), rng.standard_normal((B, H))
        Wh, Wc = rng.standard_normal((B, H)), rng.standard_normal((B, H))

        def run():
            return F.cell(mode, x, (h, c) if lstm else h, w_ih, w_hh, b_ih, b_hh)

        if mode != "rnn_relu" or relu_margin(run) > RELU_MARGIN:
            break

    def loss():
        out = run()
        return np.sum(out[0] * Wh) + np.sum(out[1] * Wc) if lstm else np.sum(out * Wh)

    _, cache = F.cell_forward(mode, x, (h, c) if lstm else h, w_ih, w_hh, b_ih, b_hh)
    dx, dstate, grads = F.cell_backward(cache, (Wh, Wc) if lstm else Wh)
    family = f"cell {mode}"
    check(family, "dx", dx, numeric_grad(loss, x))
    check(family, "dh", dstate[0] if lstm else dstate, numeric_grad(loss, h))
    if lstm:
        check(family, "dc", dstate[1], numeric_grad(loss, c))
    for name, g, w in zip(("dw_ih", "dw_hh", "db_ih", "db_hh"), grads, (w_ih, w_hh, b_ih, b_hh)):
        if w is None:
            assert g is None
        else:
            check(family, name, g, numeric_grad(loss, w))
