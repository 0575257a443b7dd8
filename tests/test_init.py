"""fastrnn.init: PyTorch's distributions, gains and fans; in place; reproducible from rng."""
import math

import numpy as np
import pytest

from fastrnn import init
from helpers import assert_close


@pytest.mark.parametrize("nonlinearity, param", [
    ("linear", None), ("conv2d", None), ("sigmoid", None), ("tanh", None), ("relu", None),
    ("leaky_relu", None), ("leaky_relu", 0.2), ("leaky_relu", math.sqrt(5)), ("selu", None),
])
def test_calculate_gain_matches_torch(torch, nonlinearity, param):
    assert_close(init.calculate_gain(nonlinearity, param), torch.nn.init.calculate_gain(nonlinearity, param),
                 1e-15)


@pytest.mark.parametrize("shape", [(4, 3), (12, 4), (5, 3, 2), (6, 2, 3, 3)])
def test_fans_match_torch(torch, shape):
    expected = torch.nn.init._calculate_fan_in_and_fan_out(torch.empty(shape))
    assert init.fan_in_and_fan_out(shape) == tuple(expected)
    assert init.fan_in_and_fan_out(np.empty(shape)) == tuple(expected)


def _stats_check(a, bound=None, std=None):
    if bound is not None:
        assert np.abs(a).max() <= bound * (1 + 1e-6)
        assert np.abs(a).max() > 0.95 * bound
    if std is not None:
        assert_close(a.std(), std, 0.03, name="std")
    assert_close(a.mean(), 0.0, 1.0, atol=0.05 * (std or bound))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_distributions_follow_torch_formulas(torch, dtype):
    shape = (400, 250)
    fan_in, fan_out = 250, 400
    a = np.empty(shape, dtype=dtype)
    b = init.xavier_uniform_(a, gain=2.0, rng=0)
    assert b is a and a.dtype == dtype
    bound = 2.0 * math.sqrt(6 / (fan_in + fan_out))
    _stats_check(a, bound=bound, std=bound / math.sqrt(3))
    t = torch.nn.init.xavier_uniform_(torch.empty(shape), gain=2.0)  # the same range as torch
    assert np.abs(t.numpy()).max() <= bound * (1 + 1e-6)

    init.xavier_normal_(a, gain=0.5, rng=1)
    _stats_check(a, std=0.5 * math.sqrt(2 / (fan_in + fan_out)))
    init.kaiming_uniform_(a, a=math.sqrt(5), rng=2)  # nn.Linear's default: U(-1/sqrt(in), 1/sqrt(in))
    _stats_check(a, bound=1 / math.sqrt(fan_in))
    init.kaiming_uniform_(a, mode="fan_out", nonlinearity="relu", rng=3)
    _stats_check(a, bound=math.sqrt(2) * math.sqrt(3 / fan_out))
    init.kaiming_normal_(a, nonlinearity="relu", rng=4)
    _stats_check(a, std=math.sqrt(2) / math.sqrt(fan_in))
    init.uniform_(a, -0.25, 0.25, rng=5)
    _stats_check(a, bound=0.25)
    init.normal_(a, 0.0, 0.1, rng=6)
    _stats_check(a, std=0.1)
    init.normal_(a, 3.0, 0.1, rng=6)
    assert_close(a.mean(), 3.0, 0.01)
    assert np.all(init.constant_(a, 0.5) == 0.5) and np.all(init.zeros_(a) == 0) and np.all(init.ones_(a) == 1)


@pytest.mark.parametrize("shape", [(3, 5), (5, 3), (4, 4), (6, 2, 3), (12, 4)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_orthogonal(shape, dtype):
    a = init.orthogonal_(np.empty(shape, dtype=dtype), gain=1.5, rng=0)
    m = a.reshape(shape[0], -1).astype(np.float64) / 1.5
    rows, cols = m.shape
    gram = m @ m.T if rows <= cols else m.T @ m
    assert_close(gram, np.eye(min(rows, cols)), 1e-6 if dtype == np.float32 else 1e-13)


def test_eye_matches_torch_and_identity_blocks(torch):
    for shape in [(3, 3), (3, 5), (5, 3)]:
        assert_close(init.eye_(np.full(shape, 7.0)), torch.nn.init.eye_(torch.empty(shape)).numpy(), 0.0)
    h = 4
    w = init.identity_(np.full((h, h), 3.0, dtype=np.float32))  # IRNN recurrent weight
    assert_close(w, np.eye(h), 0.0)
    w = init.identity_(np.empty((3 * h, h)), gain=0.5)  # stacked gates: one identity each
    assert_close(w, 0.5 * np.vstack([np.eye(h)] * 3), 0.0)
    base = np.zeros((2 * h, 2 * h))
    init.identity_(base[:, ::2])  # a non-contiguous view is filled in place
    assert_close(base[:, ::2], np.vstack([np.eye(h)] * 2), 0.0)
    assert np.all(base[:, 1::2] == 0)


def test_rng_reproducibility():
    a = init.xavier_uniform_(np.empty((5, 4)), rng=7)
    b = init.xavier_uniform_(np.empty((5, 4)), rng=7)
    assert_close(a, b, 0.0)
    c = init.xavier_uniform_(np.empty((5, 4), dtype=np.float32), rng=7)  # same stream in float32
    assert_close(c, a, 1e-7)
    g = np.random.default_rng(7)
    d = init.xavier_uniform_(np.empty((5, 4)), rng=g)  # a Generator is used and advanced
    assert_close(d, a, 0.0)
    e = init.xavier_uniform_(np.empty((5, 4)), rng=g)
    assert not np.array_equal(d, e)
    f = init.orthogonal_(np.empty((4, 4)), rng=np.random.SeedSequence(1))
    assert_close(f, init.orthogonal_(np.empty((4, 4)), rng=np.random.SeedSequence(1)), 0.0)


def test_errors():
    with pytest.raises(TypeError, match="array"):
        init.uniform_([0.0, 1.0])
    with pytest.raises(TypeError, match="array"):
        init.normal_(np.zeros(3, dtype=int))
    ro = np.zeros((3, 3))
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        init.orthogonal_(ro)
    with pytest.raises(ValueError, match="array"):
        init.xavier_uniform_(np.zeros(5))
    with pytest.raises(ValueError, match="array"):
        init.orthogonal_(np.zeros(5))
    with pytest.raises(ValueError, match="array"):
        init.identity_(np.zeros((5, 3)))
    with pytest.raises(ValueError, match="array"):
        init.eye_(np.zeros((2, 2, 2)))
    with pytest.raises(ValueError, match="mode"):
        init.kaiming_uniform_(np.zeros((3, 3)), mode="fan_avg")
    with pytest.raises(ValueError, match="nonlinearity"):
        init.kaiming_normal_(np.zeros((3, 3)), nonlinearity="swish")
    with pytest.raises(TypeError, match="rng"):
        init.uniform_(np.zeros(3), rng="seed")
    with pytest.raises(TypeError, match="rng"):
        init.uniform_(np.zeros(3), rng=True)
    with pytest.raises(ValueError, match="std"):
        init.normal_(np.zeros(3), std=-1.0)
    with pytest.raises(ValueError, match="b"):
        init.uniform_(np.zeros(3), 1.0, 0.0)
    assert init.orthogonal_(np.zeros((0, 3))).shape == (0, 3)  # empty: no-op
