"""fastrnn.losses: values and gradients vs PyTorch and vs float64 finite differences."""
import numpy as np
import pytest

from fastrnn import losses
from helpers import assert_close

C = 7


def _logits(shape, seed=0, scale=2.0, dtype=np.float64):
    return (scale * np.random.default_rng(seed).standard_normal(shape)).astype(dtype)


def _targets(shape, seed=1, n_ignore=0, ignore_index=-100):
    rng = np.random.default_rng(seed)
    t = rng.integers(0, C, shape)
    if n_ignore:
        flat = t.reshape(-1)
        flat[rng.choice(flat.size, n_ignore, replace=False)] = ignore_index
    return t


def _torch_ce(torch, x, t, **kw):
    xt = torch.tensor(x.astype(np.float64), requires_grad=True)
    tt = torch.tensor(t.astype(np.int64))
    loss = torch.nn.functional.cross_entropy(xt.reshape(-1, x.shape[-1]), tt.reshape(-1), **kw)
    loss.sum().backward()
    red = kw.get("reduction", "mean")
    value = loss.detach().numpy().reshape(t.shape) if red == "none" else float(loss.detach())
    return value, xt.grad.numpy()


def _fd(f, x, h=1e-6):
    """Central differences of the scalar f at every element of x (float64)."""
    g = np.zeros_like(x)
    flat, gf = x.reshape(-1), g.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + h
        fp = f(x)
        flat[i] = old - h
        fm = f(x)
        flat[i] = old
        gf[i] = (fp - fm) / (2 * h)
    return g


# ----------------------------------------------------------------------------- cross_entropy
@pytest.mark.parametrize("shape", [(6,), (5, 3), (4, 3, 2)])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1, 1.0])
@pytest.mark.parametrize("n_ignore", [0, 3])
def test_cross_entropy_matches_torch(torch, shape, reduction, label_smoothing, n_ignore):
    x = _logits(shape + (C,))
    t = _targets(shape, n_ignore=n_ignore)
    loss, dx = losses.cross_entropy(x, t, reduction=reduction, label_smoothing=label_smoothing)
    t_loss, t_dx = _torch_ce(torch, x, t, reduction=reduction, label_smoothing=label_smoothing)
    assert_close(loss, t_loss, 1e-12, name="loss")
    assert_close(dx, t_dx, 1e-12, name="dlogits")
    assert dx.shape == x.shape and dx.dtype == x.dtype
    if reduction != "none":
        assert isinstance(loss, float)


@pytest.mark.parametrize("ignore_index", [-100, 0, 3, -1])
def test_cross_entropy_ignore_index_matches_torch(torch, ignore_index):
    x = _logits((10, C), seed=3)
    t = _targets((10,), seed=4, n_ignore=4, ignore_index=ignore_index)
    loss, dx = losses.cross_entropy(x, t, ignore_index=ignore_index, label_smoothing=0.2)
    t_loss, t_dx = _torch_ce(torch, x, t, ignore_index=ignore_index, label_smoothing=0.2)
    assert_close(loss, t_loss, 1e-12, name="loss")
    assert_close(dx, t_dx, 1e-12, name="dlogits")


def test_cross_entropy_float32_matches_torch(torch):
    x = _logits((6, 4, C), dtype=np.float32)
    t = _targets((6, 4), n_ignore=5)
    loss, dx = losses.cross_entropy(x, t, label_smoothing=0.1)
    assert dx.dtype == np.float32
    t_loss, t_dx = _torch_ce(torch, x, t, label_smoothing=0.1)
    assert_close(loss, t_loss, 1e-6, name="loss")
    assert_close(dx, t_dx, 1e-6, name="dlogits")


@pytest.mark.parametrize("label_smoothing", [0.0, 0.3])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_cross_entropy_finite_differences(label_smoothing, reduction):
    x = _logits((4, 3, 5), seed=5)
    t = np.random.default_rng(6).integers(0, 5, (4, 3))
    t[0, 0] = -100
    lengths = np.array([4, 2, 3])
    mask = np.ones((4, 3), dtype=bool)
    mask[1, 0] = False

    def f(z):
        return losses.cross_entropy(z, t, mask=mask, lengths=lengths, label_smoothing=label_smoothing,
                                    reduction=reduction)[0]

    _, dx = losses.cross_entropy(x, t, mask=mask, lengths=lengths, label_smoothing=label_smoothing,
                                 reduction=reduction)
    assert_close(dx, _fd(f, x.copy()), 1e-7, name="dlogits vs finite differences")
    # reduction="none": the gradient is that of the sum of the per-element losses
    _, dnone = losses.cross_entropy(x, t, mask=mask, lengths=lengths, label_smoothing=label_smoothing,
                                    reduction="none")
    _, dsum = losses.cross_entropy(x, t, mask=mask, lengths=lengths, label_smoothing=label_smoothing,
                                   reduction="sum")
    assert_close(dnone, dsum, 0.0)


@pytest.mark.parametrize("batch_first", [False, True])
def test_cross_entropy_lengths_and_mask_equal_ignore_index(torch, batch_first):
    T, B = 6, 4
    x = _logits((T, B, C), seed=7)
    t = _targets((T, B), seed=8)
    lengths = np.array([6, 0, 3, 5])
    valid = np.arange(T)[:, None] < lengths[None, :]
    mask = np.random.default_rng(9).random((T, B)) > 0.3
    t_ign = np.where(valid & mask, t, -100)
    x[~valid] = np.nan  # padding may hold anything: it must not leak
    xs, ts, ms = (x, t, mask) if not batch_first else (x.transpose(1, 0, 2), t.T, mask.T)
    loss, dx = losses.cross_entropy(xs, ts, mask=ms, lengths=lengths, batch_first=batch_first,
                                    label_smoothing=0.1)
    if batch_first:
        dx = dx.transpose(1, 0, 2)
    t_loss, t_dx = _torch_ce(torch, np.nan_to_num(x), t_ign, label_smoothing=0.1)
    assert_close(loss, t_loss, 1e-12, name="loss")
    assert_close(dx, t_dx, 1e-12, name="dlogits")
    assert np.all(dx[~(valid & mask)] == 0)
    # per-element losses under "none": 0 where invalid
    per, _ = losses.cross_entropy(xs, ts, mask=ms, lengths=lengths, batch_first=batch_first,
                                  reduction="none")
    per = per.T if batch_first else per
    assert np.all(per[~(valid & mask)] == 0) and np.all(per[valid & mask] > 0)


def test_cross_entropy_mean_is_over_valid_elements():
    x = _logits((5, 2, C), seed=10)
    t = _targets((5, 2), seed=11)
    lengths = np.array([5, 2])
    per, _ = losses.cross_entropy(x, t, lengths=lengths, reduction="none")
    loss, _ = losses.cross_entropy(x, t, lengths=lengths)
    assert_close(loss, per.sum() / 7, 1e-14)
    total, _ = losses.cross_entropy(x, t, lengths=lengths, reduction="sum")
    assert_close(total, per.sum(), 1e-14)


def test_cross_entropy_large_logits_stable(torch):
    x32 = _logits((8, C), seed=12, scale=1e4, dtype=np.float32)
    x32[0, 3] = 3e38  # near float32 max
    x32[1] = -3e38
    x32[1, 2] = 0.0
    t = _targets((8,), seed=13)
    t[0], t[1] = 5, 2
    for x in (x32, x32.astype(np.float64)):
        loss, dx = losses.cross_entropy(x, t, label_smoothing=0.1)  # no overflow warnings (errors here)
        assert np.isfinite(loss) and np.all(np.isfinite(dx))
        t_loss, t_dx = _torch_ce(torch, x, t, label_smoothing=0.1)
        assert_close(loss, t_loss, 1e-6, name=f"loss {x.dtype}")
        assert_close(dx, t_dx, 1e-6, name=f"dlogits {x.dtype}")


def test_cross_entropy_minus_inf_logits_match_torch(torch):
    x = _logits((4, C), seed=14)
    x[:, 0] = -np.inf  # a class that is never allowed
    t = np.array([1, 2, 3, 4])
    loss, dx = losses.cross_entropy(x, t)
    t_loss, t_dx = _torch_ce(torch, x, t)
    assert_close(loss, t_loss, 1e-12)
    assert_close(dx, t_dx, 1e-12)


def test_cross_entropy_nothing_valid_gives_zero():
    x = _logits((3, 2, C))
    t = np.full((3, 2), -100)
    loss, dx = losses.cross_entropy(x, t)  # torch returns NaN here; we return 0
    assert loss == 0.0 and np.all(dx == 0)
    loss, dx = losses.cross_entropy(x, _targets((3, 2)), lengths=np.zeros(2, dtype=int))
    assert loss == 0.0 and np.all(dx == 0)
    loss, dx = losses.cross_entropy(np.zeros((0, C)), np.zeros(0, dtype=int))
    assert loss == 0.0 and dx.shape == (0, C)


def test_cross_entropy_does_not_write_inputs_and_accepts_views():
    base = _logits((4, 6, C), seed=15)
    x = base[:, ::2]  # non-contiguous
    x_f = np.asfortranarray(x)
    t = _targets((4, 3), seed=16)
    ref_loss, ref_dx = losses.cross_entropy(np.ascontiguousarray(x), t)
    for xin in (x, x_f):
        before = xin.copy()
        ro = xin.view()
        ro.flags.writeable = False
        loss, dx = losses.cross_entropy(ro, t)
        assert_close(xin, before, 0.0)
        assert_close(loss, ref_loss, 1e-15)
        assert_close(dx, ref_dx, 1e-15)
        assert not np.shares_memory(dx, xin)


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(targets=np.zeros((4, 3))), TypeError, "targets"),
    (dict(targets=np.zeros((4, 3), dtype=bool)), TypeError, "targets"),
    (dict(targets=np.zeros((3, 4), dtype=int)), ValueError, r"targets: expected shape \(4, 3\)"),
    (dict(targets=np.full((4, 3), C)), ValueError, r"targets.*\[0, 7\).*7 at \(0, 0\)"),
    (dict(targets=np.full((4, 3), -1)), ValueError, "targets"),
    (dict(logits=np.zeros((4, 3, C), dtype=int)), TypeError, "logits"),
    (dict(label_smoothing=1.5), ValueError, "label_smoothing"),
    (dict(label_smoothing=-0.1), ValueError, "label_smoothing"),
    (dict(reduction="avg"), ValueError, "reduction"),
    (dict(ignore_index=1.5), TypeError, "ignore_index"),
    (dict(lengths=np.array([1, 2, 5])), ValueError, "lengths"),
    (dict(lengths=np.array([1, 2])), ValueError, "lengths"),
    (dict(lengths=np.array([1.5, 2, 3])), TypeError, "lengths"),
    (dict(mask=np.ones((4, 2), dtype=bool)), ValueError, "mask"),
    (dict(mask=np.ones((4, 3, C), dtype=bool)), ValueError, "mask"),
    (dict(mask=np.full((4, 3), 0.5)), TypeError, "mask"),
])
def test_cross_entropy_errors(kwargs, exc, match):
    args = dict(logits=_logits((4, 3, C)), targets=_targets((4, 3)))
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        losses.cross_entropy(**args)


def test_cross_entropy_masked_targets_are_not_checked():
    x = _logits((3, 2, C))
    t = _targets((3, 2))
    t[2, 1] = 99  # padding garbage
    loss, dx = losses.cross_entropy(x, t, lengths=np.array([3, 2]))
    ref, dref = losses.cross_entropy(x, np.where(t == 99, -100, t))
    assert_close(loss, ref, 1e-15)
    assert_close(dx, dref, 1e-15)


# ----------------------------------------------------------------------------- mse
def _torch_mse(torch, p, y, reduction="mean"):
    pt = torch.tensor(p.astype(np.float64), requires_grad=True)
    loss = torch.nn.functional.mse_loss(pt, torch.tensor(y.astype(np.float64)), reduction=reduction)
    loss.sum().backward()
    value = loss.detach().numpy() if reduction == "none" else float(loss.detach())
    return value, pt.grad.numpy()


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("shape", [(5,), (4, 3), (4, 3, 2)])
def test_mse_matches_torch(torch, reduction, shape):
    p, y = _logits(shape, seed=20), _logits(shape, seed=21)
    loss, dp = losses.mse(p, y, reduction=reduction)
    t_loss, t_dp = _torch_mse(torch, p, y, reduction)
    assert_close(loss, t_loss, 1e-12, name="loss")
    assert_close(dp, t_dp, 1e-12, name="dpred")


@pytest.mark.parametrize("batch_first", [False, True])
def test_mse_mask_lengths_match_torch_on_valid_entries(torch, batch_first):
    T, B, F = 5, 3, 4
    p, y = _logits((T, B, F), seed=22), _logits((T, B, F), seed=23)
    lengths = np.array([5, 2, 0])
    mask = np.random.default_rng(24).random((T, B)) > 0.25
    valid = (np.arange(T)[:, None] < lengths[None, :]) & mask
    p[~valid] = np.inf  # padding must not leak
    ps, ys, ms = (p, y, mask) if not batch_first else (p.transpose(1, 0, 2), y.transpose(1, 0, 2), mask.T)
    loss, dp = losses.mse(ps, ys, mask=ms, lengths=lengths, batch_first=batch_first)
    if batch_first:
        dp = dp.transpose(1, 0, 2)
    t_loss, t_dp = _torch_mse(torch, p[valid], y[valid])  # (n_valid, F): mean over valid entries
    assert_close(loss, t_loss, 1e-12, name="loss")
    assert_close(dp[valid], t_dp, 1e-12, name="dpred")
    assert np.all(dp[~valid] == 0)


def test_mse_finite_differences_and_float32():
    p, y = _logits((3, 2, 3), seed=25), _logits((3, 2, 3), seed=26)
    mask = np.array([[1, 1], [1, 0], [0, 1]], dtype=bool)

    def f(z):
        return losses.mse(z, y, mask=mask)[0]

    _, dp = losses.mse(p, y, mask=mask)
    assert_close(dp, _fd(f, p.copy()), 1e-7, name="dpred vs finite differences")
    loss32, dp32 = losses.mse(p.astype(np.float32), y, mask=mask)  # target converted to pred's dtype
    assert dp32.dtype == np.float32
    assert_close(loss32, f(p), 1e-6)
    assert_close(dp32, dp, 1e-6)


def test_mse_edge_cases_and_errors():
    p = _logits((3, 2))
    loss, dp = losses.mse(p, p.copy(), mask=np.zeros((3, 2), dtype=bool))
    assert loss == 0.0 and np.all(dp == 0)
    with pytest.raises(ValueError, match="target"):
        losses.mse(p, np.zeros((2, 3)))
    with pytest.raises(TypeError, match="pred"):
        losses.mse(np.zeros((3, 2), dtype=int), p)
    with pytest.raises(TypeError, match="target"):
        losses.mse(p, np.zeros((3, 2), dtype=complex))
    with pytest.raises(ValueError, match="lengths"):
        losses.mse(np.zeros(3), np.zeros(3), lengths=np.array([1]))
    with pytest.raises(ValueError, match="reduction"):
        losses.mse(p, p, reduction="max")
    ro = p.copy()
    ro.flags.writeable = False
    losses.mse(ro, ro)  # read-only inputs are fine (never written)
