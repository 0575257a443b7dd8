"""fastrnn.optim and fastrnn.clip: trajectories vs torch.optim, checkpoints, clipping, errors."""
import itertools
import math

import numpy as np
import pytest

from fastrnn import optim
from fastrnn.clip import clip_grad_norm, clip_grad_value, get_total_norm
from helpers import assert_close

STEPS = 20
SHAPES = {"layer.weight": (4, 3), "layer.bias": (4,), "scale": ()}
SKIP = {"layer.bias": (3, 7)}  # steps (0-based) at which this parameter has no gradient


def _problem(dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    params = {k: np.array(rng.standard_normal(s), dtype=dtype) for k, s in SHAPES.items()}
    coef = {k: (rng.uniform(0.5, 3.0, s), rng.standard_normal(s)) for k, s in SHAPES.items()}
    return params, coef


def _grads(params, coef, step):
    """Gradient of sum(a/2 p^2 + c p + 0.1 cos(3p)): nonlinear, so trajectories must agree."""
    out = {}
    for k, p in params.items():
        if step in SKIP.get(k, ()):
            out[k] = None
            continue
        a, c = coef[k]
        p64 = np.asarray(p, dtype=np.float64)
        out[k] = np.array(a * p64 + c - 0.3 * np.sin(3 * p64), dtype=p.dtype)
    return out


def _run_pair(torch, ours_cls, torch_cls, kwargs, dtype=np.float64, steps=STEPS, lr_change=None):
    """Run fastrnn and torch side by side; yield (step, name, ours, theirs) after every step."""
    params, coef = _problem(dtype)
    tparams = {k: torch.tensor(v.copy(), requires_grad=True) for k, v in params.items()}
    opt = ours_cls(params, **kwargs)
    topt = torch_cls(list(tparams.values()), **kwargs)
    names = list(params)
    for step in range(steps):
        if lr_change is not None and step == lr_change[0]:
            opt.param_groups[0]["lr"] = lr_change[1]
            topt.param_groups[0]["lr"] = lr_change[1]
        grads = _grads(params, coef, step)
        tgrads = _grads({k: v.detach().numpy() for k, v in tparams.items()}, coef, step)
        for k in names:
            tparams[k].grad = None if tgrads[k] is None else torch.from_numpy(tgrads[k])
        opt.step(grads)
        topt.step()
        for k in names:
            yield step, k, params[k], tparams[k].detach().numpy()
    for k in names:
        assert params[k].dtype == dtype


def _check_trajectory(torch, ours_cls, torch_cls, kwargs, dtype=np.float64, rtol=1e-10, **kw):
    for step, k, a, e in _run_pair(torch, ours_cls, torch_cls, kwargs, dtype=dtype, **kw):
        assert_close(a, e, rtol, name=f"{ours_cls.__name__}{kwargs} step {step} {k}")


def _combos(**options):
    keys = list(options)
    for values in itertools.product(*options.values()):
        yield dict(zip(keys, values))


SGD_CASES = [
    c for c in _combos(lr=[0.05], momentum=[0.0, 0.9], dampening=[0.0, 0.3], nesterov=[False, True],
                       weight_decay=[0.0, 0.05], maximize=[False, True])
    if not (c["nesterov"] and (c["momentum"] == 0 or c["dampening"] != 0))
    and not (c["momentum"] == 0 and c["dampening"] != 0)
]
ADAGRAD_CASES = list(_combos(lr=[0.1], lr_decay=[0.0, 0.1], weight_decay=[0.0, 0.05],
                             initial_accumulator_value=[0.0, 0.5], maximize=[False, True]))
RMSPROP_CASES = list(_combos(lr=[0.01], alpha=[0.9], centered=[False, True], momentum=[0.0, 0.8],
                             weight_decay=[0.0, 0.05], maximize=[False, True]))
ADAM_CASES = list(_combos(lr=[0.05], betas=[(0.9, 0.999), (0.5, 0.9)], amsgrad=[False, True],
                          weight_decay=[0.0, 0.05], maximize=[False, True]))


@pytest.mark.parametrize("kwargs", SGD_CASES, ids=str)
def test_sgd_matches_torch(torch, kwargs):
    _check_trajectory(torch, optim.SGD, torch.optim.SGD, kwargs)


@pytest.mark.parametrize("kwargs", ADAGRAD_CASES, ids=str)
def test_adagrad_matches_torch(torch, kwargs):
    _check_trajectory(torch, optim.Adagrad, torch.optim.Adagrad, kwargs)


@pytest.mark.parametrize("kwargs", RMSPROP_CASES, ids=str)
def test_rmsprop_matches_torch(torch, kwargs):
    _check_trajectory(torch, optim.RMSprop, torch.optim.RMSprop, kwargs)


@pytest.mark.parametrize("kwargs", ADAM_CASES, ids=str)
def test_adam_matches_torch(torch, kwargs):
    _check_trajectory(torch, optim.Adam, torch.optim.Adam, kwargs)


@pytest.mark.parametrize("kwargs", ADAM_CASES, ids=str)
def test_adamw_matches_torch(torch, kwargs):
    _check_trajectory(torch, optim.AdamW, torch.optim.AdamW, kwargs)


def test_adam_decoupled_flag_and_defaults_match_torch(torch):
    _check_trajectory(torch, optim.Adam, torch.optim.Adam,
                      dict(lr=0.05, weight_decay=0.1, decoupled_weight_decay=True))
    _check_trajectory(torch, optim.AdamW, torch.optim.AdamW, dict(lr=0.05))  # default weight_decay 1e-2
    _check_trajectory(torch, optim.Adam, torch.optim.Adam, dict(eps=1e-3))  # default lr 1e-3


@pytest.mark.parametrize("name", ["SGD", "Adagrad", "RMSprop", "Adam", "AdamW"])
def test_defaults_match_torch(torch, name):
    params, _ = _problem()
    ours = getattr(optim, name)(params)
    theirs = getattr(torch.optim, name)([torch.zeros(2, requires_grad=True)])
    for k, v in ours.param_groups[0].items():
        if k != "params":
            assert theirs.param_groups[0][k] == v, (name, k)
    # and default trajectories (SGD with its default lr, ...)
    kwargs = {} if name != "SGD" else {"momentum": 0.5}
    _check_trajectory(torch, getattr(optim, name), getattr(torch.optim, name), kwargs)


@pytest.mark.parametrize("cls, kwargs", [
    ("SGD", dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.05)),
    ("Adagrad", dict(lr=0.1, lr_decay=0.05, weight_decay=0.05)),
    ("RMSprop", dict(lr=0.01, centered=True, momentum=0.5, weight_decay=0.05)),
    ("Adam", dict(lr=0.05, amsgrad=True, weight_decay=0.05)),
    ("AdamW", dict(lr=0.05, amsgrad=True)),
])
def test_float32_matches_torch(torch, cls, kwargs):
    _check_trajectory(torch, getattr(optim, cls), getattr(torch.optim, cls), kwargs,
                      dtype=np.float32, rtol=2e-5)


@pytest.mark.parametrize("cls", ["SGD", "RMSprop", "Adam"])
def test_lr_change_between_steps_matches_torch(torch, cls):
    kwargs = dict(lr=0.05, momentum=0.9) if cls in ("SGD", "RMSprop") else dict(lr=0.05)
    _check_trajectory(torch, getattr(optim, cls), getattr(torch.optim, cls), kwargs, lr_change=(10, 0.01))


def test_lr_property():
    params, _ = _problem()
    opt = optim.SGD(params, lr=0.1)
    opt.lr = 0.5
    assert opt.param_groups[0]["lr"] == 0.5 and opt.lr == 0.5
    with pytest.raises(ValueError, match="lr"):
        opt.lr = -1.0


# ----------------------------------------------------------------------------- checkpoints
FULL_STATE = [
    ("SGD", dict(lr=0.05, momentum=0.9, dampening=0.1, weight_decay=0.01)),
    ("Adagrad", dict(lr=0.1, lr_decay=0.1, initial_accumulator_value=0.2)),
    ("RMSprop", dict(lr=0.01, centered=True, momentum=0.5)),
    ("Adam", dict(lr=0.05, amsgrad=True, weight_decay=0.01)),
    ("AdamW", dict(lr=0.05, betas=(0.8, 0.99))),
]


@pytest.mark.parametrize("cls, kwargs", FULL_STATE)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_state_dict_npz_roundtrip_resumes_exactly(tmp_path, cls, kwargs, dtype):
    Opt = getattr(optim, cls)
    params, coef = _problem(dtype)
    ref = {k: v.copy() for k, v in params.items()}
    opt_ref = Opt(ref, **kwargs)
    for step in range(STEPS):
        opt_ref.step(_grads(ref, coef, step))

    opt = Opt(params, **kwargs)
    for step in range(10):
        opt.step(_grads(params, coef, step))
    path = tmp_path / "opt.npz"
    np.savez(path, **opt.state_dict())
    np.savez(tmp_path / "params.npz", **params)

    loaded = dict(np.load(tmp_path / "params.npz"))
    other = {k: v.copy() for k, v in params.items()}  # any arrays of the right shapes
    opt2 = Opt(other, lr=123.0)  # hyperparameters come back from the checkpoint
    for k in other:
        other[k][...] = loaded[k]
    with np.load(path) as sd:  # allow_pickle=False: the state dict is flat arrays/scalars
        opt2.load_state_dict(sd)
    assert opt2.param_groups[0] == opt.param_groups[0]
    for step in range(10, STEPS):
        opt2.step(_grads(other, coef, step))
    for k in params:
        assert other[k].dtype == dtype
        assert_close(other[k], ref[k], 0.0, name=f"resumed {k}")


def test_load_state_dict_checks_hyperparameter_constraints():
    params, _ = _problem()
    sd = optim.SGD(params, lr=0.1, momentum=0.9, nesterov=True).state_dict()
    sd["hparams.momentum"] = 0.0
    opt = optim.SGD(params, lr=0.1)
    with pytest.raises(ValueError, match="nesterov"):
        opt.load_state_dict(sd)
    assert opt.param_groups[0]["nesterov"] is False


def test_state_dict_holds_copies_and_plain_values():
    params, coef = _problem()
    opt = optim.Adam(params, lr=0.1, amsgrad=True)
    opt.step(_grads(params, coef, 0))
    sd = opt.state_dict()
    assert sd["optimizer"] == "Adam" and sd["hparams.lr"] == 0.1 and sd["state.layer.weight.step"] == 1
    assert sd["hparams.betas"].tolist() == [0.9, 0.999]
    assert set(k for k in sd if k.startswith("state.layer.weight.")) == {
        "state.layer.weight.step", "state.layer.weight.exp_avg", "state.layer.weight.exp_avg_sq",
        "state.layer.weight.max_exp_avg_sq"}
    before = opt.state["layer.weight"]["exp_avg"].copy()
    sd["state.layer.weight.exp_avg"][...] = 1e9
    assert_close(opt.state["layer.weight"]["exp_avg"], before, 0.0)


@pytest.mark.parametrize("mutate, match", [
    (lambda sd: sd.update(optimizer="SGD"), "SGD"),
    (lambda sd: sd.pop("hparams.eps"), "hparams.eps"),
    (lambda sd: sd.update({"hparams.foo": 1.0}), "hparams.foo"),
    (lambda sd: sd.update({"state.nope.exp_avg": np.zeros(3)}), "nope"),
    (lambda sd: sd.update({"state.scale.momentum_buffer": np.zeros(())}), "momentum_buffer"),
    (lambda sd: sd.update({"state.layer.bias.exp_avg": np.zeros(5)}), r"\(4,\)"),
    (lambda sd: sd.update({"state.layer.bias.exp_avg": np.zeros(4, dtype=int)}), "floating"),
    (lambda sd: sd.update({"hparams.betas": np.array([0.9, 1.5])}), "beta"),
    (lambda sd: sd.pop("state.scale.step"), "step"),
    (lambda sd: sd.update({"state.scale.step": -1}), "step"),
])
def test_load_state_dict_rejects_bad_input_and_changes_nothing(mutate, match):
    params, coef = _problem()
    opt = optim.Adam(params, lr=0.1)
    opt.step(_grads(params, coef, 0))
    sd = opt.state_dict()
    before = opt.state_dict()
    mutate(sd)
    with pytest.raises((ValueError, TypeError), match=match):
        opt.load_state_dict(sd)
    after = opt.state_dict()
    assert after.keys() == before.keys()
    for k in before:
        if isinstance(before[k], np.ndarray):
            assert_close(after[k], before[k], 0.0, name=k)
        else:
            assert after[k] == before[k]


# ----------------------------------------------------------------------------- behaviour / errors
def test_none_grad_skips_parameter_and_grads_are_never_written():
    params, coef = _problem()
    opt = optim.RMSprop(params, momentum=0.5, centered=True, weight_decay=0.1, maximize=True)
    grads = _grads(params, coef, 1)
    for g in grads.values():
        g.flags.writeable = False  # read-only gradients are fine: never written
    saved = {k: g.copy() for k, g in grads.items()}
    bias = params["layer.bias"].copy()
    grads["layer.bias"] = None
    opt.step(grads)
    assert opt.state["layer.bias"] == {}
    assert_close(params["layer.bias"], bias, 0.0)
    for k, g in grads.items():
        if g is not None:
            assert_close(g, saved[k], 0.0)


def test_float32_params_stay_float32_and_accept_float64_grads():
    params, coef = _problem(np.float32)
    opt = optim.Adam(params, lr=0.01, amsgrad=True)
    grads = {k: np.asarray(g, dtype=np.float64) for k, g in _grads(params, coef, 0).items()}
    opt.step(grads)
    for k, p in params.items():
        assert p.dtype == np.float32
        assert all(v.dtype == np.float32 for v in opt.state[k].values() if isinstance(v, np.ndarray))


def test_noncontiguous_params_updated_in_place(torch):
    base = np.random.default_rng(1).standard_normal((6, 8))
    params = {"w": base[::2, 1::2], "f": np.asfortranarray(base[:4, :3]).copy(order="F")}
    tparams = {k: torch.tensor(np.ascontiguousarray(v), requires_grad=True) for k, v in params.items()}
    opt = optim.Adam(params, lr=0.1)
    topt = torch.optim.Adam(list(tparams.values()), lr=0.1)
    for _ in range(5):
        grads = {k: np.cos(v) for k, v in params.items()}
        for k, t in tparams.items():
            t.grad = torch.cos(t.detach())
        opt.step(grads)
        topt.step()
    for k in params:
        assert_close(params[k], tparams[k].detach().numpy(), 1e-10, name=k)
    assert params["w"].base is base  # still the same view


def test_step_checks_everything_before_updating():
    params, coef = _problem()
    before = {k: v.copy() for k, v in params.items()}
    opt = optim.SGD(params, lr=0.1)
    grads = _grads(params, coef, 0)
    bad = dict(grads, scale=np.zeros(3))
    with pytest.raises(ValueError, match=r"grads\['scale'\].*\(\).*\(3,\)"):
        opt.step(bad)
    for k in params:
        assert_close(params[k], before[k], 0.0)
    with pytest.raises(ValueError, match="missing"):
        opt.step({k: v for k, v in grads.items() if k != "scale"})
    with pytest.raises(ValueError, match="unknown"):
        opt.step(dict(grads, extra=np.zeros(1)))
    with pytest.raises(TypeError, match=r"grads\['layer.bias'\]"):
        opt.step(dict(grads, **{"layer.bias": np.zeros(4, dtype=np.int64)}))
    with pytest.raises(TypeError, match="grads"):
        opt.step([g for g in grads.values()])


@pytest.mark.parametrize("params, exc, match", [
    ([np.zeros(3)], TypeError, "mapping"),
    ({}, ValueError, "empty"),
    ({"a": [1.0, 2.0]}, TypeError, r"params\['a'\]"),
    ({"a": np.zeros(3, dtype=np.int32)}, TypeError, r"params\['a'\]"),
    ({1: np.zeros(3)}, TypeError, "str"),
])
def test_bad_params(params, exc, match):
    with pytest.raises(exc, match=match):
        optim.SGD(params, lr=0.1)


def test_read_only_and_duplicate_params():
    a = np.zeros(3)
    a.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        optim.Adam({"a": a})
    b = np.zeros(3)
    with pytest.raises(ValueError, match="same array"):
        optim.Adam({"a": b, "b": b})


INVALID = [
    ("SGD", dict(lr=-0.1)), ("SGD", dict(momentum=-0.5)), ("SGD", dict(weight_decay=-1.0)),
    ("SGD", dict(nesterov=True)), ("SGD", dict(momentum=0.9, dampening=0.1, nesterov=True)),
    ("Adagrad", dict(lr=-1.0)), ("Adagrad", dict(lr_decay=-1.0)), ("Adagrad", dict(eps=-1.0)),
    ("Adagrad", dict(initial_accumulator_value=-0.1)), ("Adagrad", dict(weight_decay=-0.1)),
    ("RMSprop", dict(lr=-1.0)), ("RMSprop", dict(alpha=-0.1)), ("RMSprop", dict(eps=-1.0)),
    ("RMSprop", dict(momentum=-1.0)), ("RMSprop", dict(weight_decay=-1.0)),
    ("Adam", dict(lr=-1.0)), ("Adam", dict(eps=-1.0)), ("Adam", dict(betas=(1.0, 0.999))),
    ("Adam", dict(betas=(0.9, -0.1))), ("Adam", dict(weight_decay=-1.0)),
    ("AdamW", dict(betas=(0.9, 1.0))), ("AdamW", dict(weight_decay=-0.01)),
]


@pytest.mark.parametrize("cls, kwargs", INVALID, ids=str)
def test_invalid_hyperparameters_raise_like_torch(torch, cls, kwargs):
    with pytest.raises(ValueError):
        getattr(torch.optim, cls)([torch.zeros(2, requires_grad=True)], **kwargs)
    with pytest.raises(ValueError, match=next(iter(kwargs)) if "nesterov" not in kwargs else "nesterov"):
        getattr(optim, cls)({"a": np.zeros(2)}, **kwargs)


def test_nan_hyperparameters_rejected():
    # stricter than torch.optim.SGD (whose `lr < 0` check lets NaN through)
    for cls in ("SGD", "Adagrad", "RMSprop", "Adam", "AdamW"):
        with pytest.raises(ValueError, match="lr"):
            getattr(optim, cls)({"a": np.zeros(2)}, lr=float("nan"))


def test_hyperparameter_types():
    with pytest.raises(TypeError, match="lr"):
        optim.SGD({"a": np.zeros(2)}, lr="0.1")
    with pytest.raises(TypeError, match="amsgrad"):
        optim.Adam({"a": np.zeros(2)}, amsgrad="yes")
    with pytest.raises(ValueError, match="betas"):
        optim.Adam({"a": np.zeros(2)}, betas=(0.9,))


# ----------------------------------------------------------------------------- clipping
def _grad_set(dtype=np.float64, seed=0, scale=1.0):
    rng = np.random.default_rng(seed)
    return {"a": (scale * rng.standard_normal((5, 4))).astype(dtype),
            "b": (scale * rng.standard_normal(7)).astype(dtype),
            "c": np.asarray(scale * 0.5, dtype=dtype),
            "skip": None}


def _torch_clip(torch, grads, max_norm, norm_type):
    ps = []
    for g in grads.values():
        if g is not None:
            p = torch.zeros(g.shape, dtype=torch.float64 if g.dtype == np.float64 else torch.float32,
                            requires_grad=True)
            p.grad = torch.tensor(g.copy())
            ps.append(p)
    total = torch.nn.utils.clip_grad_norm_(ps, max_norm, norm_type=norm_type)
    return float(total), [p.grad.numpy() for p in ps]


@pytest.mark.parametrize("norm_type", [2.0, 1.0, 3.0, math.inf, "inf"])
@pytest.mark.parametrize("max_norm", [0.5, 3.0, 1e3])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_clip_grad_norm_matches_torch(torch, norm_type, max_norm, dtype):
    grads = _grad_set(dtype)
    t_total, t_grads = _torch_clip(torch, grads, max_norm, float(norm_type))
    total = clip_grad_norm(grads, max_norm, norm_type=norm_type)
    assert isinstance(total, float)
    rtol = 1e-12 if dtype == np.float64 else 2e-6
    assert_close(total, t_total, rtol, name="total norm")
    for g, tg in zip([g for g in grads.values() if g is not None], t_grads):
        assert g.dtype == dtype
        assert_close(g, tg, rtol, name="clipped grad")


def test_clip_grad_norm_eps_and_no_op():
    grads = _grad_set()
    total = get_total_norm(grads)
    expected = {k: v * (total / (total + 1e-6)) for k, v in grads.items() if v is not None}
    assert clip_grad_norm(grads, total) == total  # max_norm == norm: torch's eps still scales
    for k, v in expected.items():
        assert_close(grads[k], v, 1e-15, name=k)
    grads = _grad_set()
    copy = {k: v.copy() for k, v in grads.items() if v is not None}
    clip_grad_norm(grads, 2 * total)  # below the threshold: untouched
    for k, v in copy.items():
        assert_close(grads[k], v, 0.0, name=k)
    # the global norm (over all arrays together) is what is clipped
    clip_grad_norm(grads, 1.0)
    assert_close(get_total_norm(grads), 1.0 / (1.0 + 1e-6 / total), 1e-12)
    assert_close(np.sqrt(sum(np.sum(v**2) for v in grads.values() if v is not None)), 1.0, 1e-6)


def test_clip_grad_norm_containers_and_empty():
    a = np.full(4, 3.0)
    assert clip_grad_norm(a, 1.0) == 6.0  # single array
    assert_close(a, np.full(4, 3.0 / (6.0 + 1e-6)), 1e-15)
    arrays = [np.full(2, 3.0), np.full(2, 4.0)]
    assert_close(clip_grad_norm(arrays, 1.0), math.sqrt(50.0), 1e-15)
    assert_close(arrays[1], np.full(2, 4.0 / (math.sqrt(50.0) + 1e-6)), 1e-15)
    assert clip_grad_norm({}, 1.0) == 0.0
    assert clip_grad_norm({"a": None}, 1.0) == 0.0


def test_clip_grad_norm_nonfinite(torch):
    grads = _grad_set()
    grads["b"][2] = np.inf
    t_total, t_grads = _torch_clip(torch, grads, 1.0, 2.0)
    total = clip_grad_norm(grads, 1.0)  # no warning, scaled like torch (by 0 -> NaN where inf)
    assert total == t_total == math.inf
    for g, tg in zip([g for g in grads.values() if g is not None], t_grads):
        assert_close(g, tg, 0.0)
    grads = _grad_set()
    grads["a"][0, 0] = np.nan
    before = {k: v.copy() for k, v in grads.items() if v is not None}
    with pytest.raises(RuntimeError, match="non-finite"):
        clip_grad_norm(grads, 1.0, error_if_nonfinite=True)
    for k, v in before.items():
        assert_close(grads[k], v, 0.0)
    assert math.isnan(clip_grad_norm(grads, 1.0))
    assert all(np.isnan(v).all() for v in grads.values() if v is not None)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_clip_grad_value_matches_torch(torch, dtype):
    grads = _grad_set(dtype, scale=2.0)
    grads["b"][0] = np.nan
    ts = [torch.tensor(g.copy()) for g in grads.values() if g is not None]
    ps = []
    for t in ts:
        p = torch.zeros(t.shape, dtype=t.dtype, requires_grad=True)
        p.grad = t
        ps.append(p)
    torch.nn.utils.clip_grad_value_(ps, 0.7)
    assert clip_grad_value(grads, 0.7) is None
    for g, p in zip([g for g in grads.values() if g is not None], ps):
        assert g.dtype == dtype
        assert_close(g, p.grad.numpy(), 0.0)


def test_clip_errors():
    ro = np.ones(3)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        clip_grad_norm({"x": ro}, 1.0)
    with pytest.raises(ValueError, match="read-only"):
        clip_grad_value([ro], 1.0)
    with pytest.raises(TypeError, match=r"grads\['x'\]"):
        clip_grad_norm({"x": np.ones(3, dtype=int)}, 1.0)
    with pytest.raises(ValueError, match="max_norm"):
        clip_grad_norm({"x": np.ones(3)}, -1.0)
    with pytest.raises(TypeError, match="max_norm"):
        clip_grad_norm({"x": np.ones(3)}, "1")
    with pytest.raises(ValueError, match="norm_type"):
        clip_grad_norm({"x": np.ones(3)}, 1.0, norm_type=0)
    with pytest.raises(ValueError, match="clip_value"):
        clip_grad_value({"x": np.ones(3)}, -0.5)
    with pytest.raises(TypeError, match="grads"):
        clip_grad_norm(5, 1.0)
