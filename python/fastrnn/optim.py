"""Optimizers with PyTorch's update rules, keyword names and defaults (``fastrnn.optim``).

Every optimizer works in place on a mapping of parameter arrays and takes the gradients as a
mapping with the same keys::

    opt = fr.optim.Adam(model.params, lr=1e-3)
    ...
    opt.step(model.grads)          # updates model.params[...] in place
    np.savez("ckpt.npz", **opt.state_dict())
    opt.load_state_dict(np.load("ckpt.npz"))

Semantics (each one the same as ``torch.optim`` on CPU, single-tensor implementation):

- ``params``: a mapping name (str) -> writable float ndarray (float32 or float64; any
  layout). The optimizer keeps the mapping and looks each array up again at every step, so
  a layer that swaps an array inside its ``params`` dict is still followed; the set of names
  is fixed at construction. Updates are done in the parameter's own dtype with vectorised
  in-place NumPy operations (at most one temporary of the parameter's size per parameter,
  plus one more when ``weight_decay`` (coupled) or ``maximize`` need a modified gradient).
- ``step(grads)``: ``grads`` must have exactly the parameter names; a value of ``None``
  skips that parameter for this step (PyTorch's ``p.grad is None``: no update and no state
  change, its step count does not advance). Gradients are read, never written; a gradient of
  the other float precision is converted, non-float arrays raise TypeError and shape
  mismatches ValueError (all gradients are checked before any parameter is touched).
- State is created lazily at a parameter's first step, as in PyTorch.
- Hyperparameters live in ``opt.param_groups[0]`` (one group holding every parameter), a
  dict that may be edited between steps (e.g. a learning-rate schedule:
  ``opt.param_groups[0]["lr"] = 1e-4``, or the shortcut ``opt.lr = 1e-4``). They are
  validated at construction like PyTorch (ValueError/TypeError naming the argument).
- ``state_dict()`` returns a flat dict of copies that ``np.savez`` can store without pickling:
  ``"optimizer"`` (class name), ``"hparams.<name>"`` (Python scalars; ``betas`` a float64
  array of 2) and ``"state.<param name>.<buffer>"`` (arrays in the parameter's dtype; ``step``
  an integer). ``load_state_dict`` accepts that dict or an ``np.load``-ed .npz of it, checks
  everything (class, names, shapes) before changing anything, restores the hyperparameters
  (as PyTorch does) and copies the buffers (converted to each parameter's dtype).

Not supported: PyTorch's device/implementation switches (``foreach``, ``fused``,
``capturable``, ``differentiable``), tensor-valued learning rates, several parameter groups,
closures and sparse gradients.
"""
from __future__ import annotations

import numbers
from collections.abc import Mapping

import numpy as np

from ._checks import as_float_array, check_shape

__all__ = ["Optimizer", "SGD", "Adagrad", "RMSprop", "Adam", "AdamW"]


# ----------------------------------------------------------------------------- validation
def _real(name: str, value) -> float:
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value.item()
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected a real number, got {type(value).__name__}")
    return float(value)


def _nonneg(name: str, value, what: str = "value") -> float:
    value = _real(name, value)
    if not 0.0 <= value:  # also rejects NaN, like PyTorch
        raise ValueError(f"{name}: Invalid {what}: expected >= 0, got {value}")
    return value


def _flag(name: str, value) -> bool:
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value.item()
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, numbers.Integral) and value in (0, 1):
        return bool(value)
    raise TypeError(f"{name}: expected a bool, got {value!r}")


def _betas(value) -> tuple[float, float]:
    try:
        b = [_real("betas", v) for v in np.asarray(value, dtype=object).reshape(-1)]
    except TypeError:
        raise
    except Exception as exc:
        raise TypeError(f"betas: expected a pair of floats, got {value!r}") from exc
    if len(b) != 2:
        raise ValueError(f"betas: expected a pair (beta1, beta2), got {len(b)} values")
    for i, v in enumerate(b):
        if not 0.0 <= v < 1.0:
            raise ValueError(f"betas: Invalid beta parameter at index {i}: expected 0 <= beta < 1, got {v}")
    return (b[0], b[1])


def _check_params(params) -> Mapping:
    if not isinstance(params, Mapping):
        raise TypeError(
            f"params: expected a mapping name -> ndarray (e.g. layer.params), got {type(params).__name__}"
        )
    if len(params) == 0:
        raise ValueError("params: optimizer got an empty parameter mapping")
    seen: dict[int, str] = {}
    for name, p in params.items():
        if not isinstance(name, str):
            raise TypeError(f"params: parameter names must be str, got {name!r}")
        _check_param_array(name, p)
        if id(p) in seen:
            raise ValueError(f"params: {seen[id(p)]!r} and {name!r} are the same array")
        seen[id(p)] = name
    return params


def _check_param_array(name: str, p) -> None:
    if not isinstance(p, np.ndarray):
        raise TypeError(f"params[{name!r}]: expected a float ndarray, got {type(p).__name__}")
    if p.dtype.kind != "f":
        raise TypeError(f"params[{name!r}]: expected a floating-point array, got dtype {p.dtype}")
    if not p.flags.writeable:
        raise ValueError(f"params[{name!r}]: array is read-only; the optimizer updates it in place")


def _lerp_(a: np.ndarray, b: np.ndarray, weight: float, tmp: np.ndarray) -> None:
    """a <- a + weight * (b - a), rounded like torch.lerp_ (CPU) for a scalar weight."""
    if weight < 0.5:
        np.subtract(b, a, out=tmp)
        tmp *= weight
        a += tmp
    else:
        np.subtract(b, a, out=tmp)
        tmp *= 1.0 - weight
        np.subtract(b, tmp, out=a)


# ----------------------------------------------------------------------------- base class
class Optimizer:
    """Base class: parameter bookkeeping, gradient checks, state (de)serialisation.

    Subclasses define ``_hparam_checks`` (name -> validator), ``_state_buffers`` (names of
    the per-parameter arrays) and ``_update(name, p, g, state, group)``.
    """

    _hparam_checks: dict = {}
    _state_buffers: tuple = ()
    _has_step = True

    def __init__(self, params, defaults: dict):
        self._params = _check_params(params)
        self._names = tuple(self._params.keys())
        self.defaults = dict(defaults)
        self.param_groups = [dict(defaults, params=list(self._names))]
        self.state: dict[str, dict] = {name: {} for name in self._names}

    # -- convenience
    @property
    def lr(self) -> float:
        return self.param_groups[0]["lr"]

    @lr.setter
    def lr(self, value) -> None:
        self.param_groups[0]["lr"] = _nonneg("lr", value, "learning rate")

    def __repr__(self) -> str:
        hp = ", ".join(f"{k}={v!r}" for k, v in self.param_groups[0].items() if k != "params")
        return f"{type(self).__name__}({len(self._names)} params, {hp})"

    # -- stepping
    def _param(self, name: str) -> np.ndarray:
        try:
            p = self._params[name]
        except KeyError:
            raise ValueError(f"params: parameter {name!r} has disappeared from the params mapping") from None
        _check_param_array(name, p)
        return p

    def _collect(self, grads) -> list:
        if not isinstance(grads, Mapping):
            raise TypeError(f"grads: expected a mapping name -> ndarray, got {type(grads).__name__}")
        missing = [n for n in self._names if n not in grads]
        if missing:
            raise ValueError(f"grads: missing gradients for {missing} (pass None to skip a parameter)")
        extra = [n for n in grads if n not in self.state]
        if extra:
            raise ValueError(f"grads: unknown parameter names {extra}")
        work = []
        for name in self._names:
            g = grads[name]
            if g is None:
                continue
            p = self._param(name)
            g = as_float_array(f"grads[{name!r}]", g, dtype=p.dtype)
            check_shape(f"grads[{name!r}]", g, p.shape)
            for k, v in self.state[name].items():
                if isinstance(v, np.ndarray) and v.shape != p.shape:
                    raise ValueError(
                        f"params[{name!r}]: expected shape {v.shape} (the optimizer state {k!r}), got {p.shape}"
                    )
            work.append((name, p, g))
        return work

    def step(self, grads) -> None:
        """One update of every parameter whose gradient is not None (in place)."""
        work = self._collect(grads)
        group = self.param_groups[0]
        for name, p, g in work:
            st = self.state[name]
            for k, v in st.items():
                if isinstance(v, np.ndarray) and v.dtype != p.dtype:
                    st[k] = v.astype(p.dtype)  # the parameter array was replaced by another precision
            if self._has_step:
                st["step"] = int(st.get("step", 0)) + 1
            self._update(name, p, g, st, group)

    def _check_group(self, hp: dict) -> None:
        """Constraints between hyperparameters (raise ValueError); none by default."""

    def _update(self, name, p, g, state, group):  # pragma: no cover - abstract
        raise NotImplementedError

    @staticmethod
    def _effective_grad(p: np.ndarray, g: np.ndarray, weight_decay: float, maximize: bool):
        """(g', owned): -g if maximize, + weight_decay * p (PyTorch order); owned = g' is ours."""
        if not maximize and weight_decay == 0:
            return g, False
        t = np.empty_like(p)  # explicit out=: 0-d operands would otherwise give NumPy scalars
        if maximize:
            np.negative(g, out=t)
            if weight_decay != 0:
                t += p * weight_decay
        else:
            np.multiply(p, weight_decay, out=t)
            t += g
        return t, True

    # -- checkpoints
    def state_dict(self) -> dict:
        """Flat dict of copies, storable with ``np.savez(path, **opt.state_dict())``."""
        sd: dict = {"optimizer": type(self).__name__}
        for k, v in self.param_groups[0].items():
            if k == "params":
                continue
            sd[f"hparams.{k}"] = np.array(v, dtype=np.float64) if k == "betas" else v
        for name in self._names:
            for k, v in self.state[name].items():
                sd[f"state.{name}.{k}"] = np.array(v, copy=True) if isinstance(v, np.ndarray) else int(v)
        return sd

    def load_state_dict(self, state_dict) -> None:
        """Restore hyperparameters and buffers from ``state_dict()`` output or its .npz."""
        if not isinstance(state_dict, Mapping) and not hasattr(state_dict, "files"):
            raise TypeError(f"state_dict: expected a mapping, got {type(state_dict).__name__}")
        keys = list(state_dict.files) if hasattr(state_dict, "files") else list(state_dict.keys())
        if "optimizer" not in keys:
            raise ValueError("state_dict: missing key 'optimizer' (not an optimizer state dict)")
        kind = state_dict["optimizer"]
        kind = kind.item() if isinstance(kind, np.ndarray) else kind
        if kind != type(self).__name__:
            raise ValueError(f"state_dict: saved from {kind!r}, cannot load into {type(self).__name__}")

        hp_names = [k for k in self.param_groups[0] if k != "params"]
        new_hp = {}
        for k in hp_names:
            key = f"hparams.{k}"
            if key not in keys:
                raise ValueError(f"state_dict: missing hyperparameter {key!r}")
            new_hp[k] = self._hparam_checks[k](k, state_dict[key])
        self._check_group(new_hp)
        allowed = set(self._state_buffers) | ({"step"} if self._has_step else set())
        new_state: dict[str, dict] = {name: {} for name in self._names}
        for key in keys:
            if key == "optimizer" or key.startswith("hparams."):
                if key.startswith("hparams.") and key[len("hparams."):] not in hp_names:
                    raise ValueError(f"state_dict: unknown hyperparameter {key!r}")
                continue
            if not key.startswith("state.") or key.count(".") < 2:
                raise ValueError(f"state_dict: unexpected key {key!r}")
            name, buf = key[len("state."):].rsplit(".", 1)
            if name not in new_state:
                raise ValueError(f"state_dict: {key!r} refers to unknown parameter {name!r}")
            if buf not in allowed:
                raise ValueError(f"state_dict: {key!r}: unknown buffer {buf!r} for {type(self).__name__}")
            value = state_dict[key]
            if buf == "step":
                step = np.asarray(value)
                if step.shape != () or step.dtype.kind not in "iuf" or step != np.round(step) or step < 0:
                    raise ValueError(f"state_dict: {key!r}: expected a non-negative integer, got {value!r}")
                new_state[name]["step"] = int(step)
            else:
                p = self._param(name)
                arr = as_float_array(f"state_dict[{key!r}]", value, dtype=p.dtype)
                check_shape(f"state_dict[{key!r}]", arr, p.shape)
                new_state[name][buf] = np.array(arr, dtype=p.dtype, copy=True)
        for name, st in new_state.items():
            if st and self._has_step and "step" not in st:
                raise ValueError(f"state_dict: 'state.{name}.step' is missing")
        self.param_groups[0].update(new_hp)
        self.state = new_state


# ----------------------------------------------------------------------------- optimizers
class SGD(Optimizer):
    """Stochastic gradient descent, torch.optim.SGD's rule (momentum buffer = first gradient)::

        g = grad (negated if maximize) + weight_decay * p
        buf = g at the first step, else momentum * buf + (1 - dampening) * g
        g = g + momentum * buf if nesterov else buf          (when momentum != 0)
        p -= lr * g
    """

    _hparam_checks = {
        "lr": lambda n, v: _nonneg(n, v, "learning rate"),
        "momentum": lambda n, v: _nonneg(n, v, "momentum value"),
        "dampening": _real,
        "weight_decay": lambda n, v: _nonneg(n, v, "weight_decay value"),
        "nesterov": _flag,
        "maximize": _flag,
    }
    _state_buffers = ("momentum_buffer",)
    _has_step = False

    def __init__(self, params, lr=1e-3, momentum=0, dampening=0, weight_decay=0, nesterov=False, *,
                 maximize=False):
        c = self._hparam_checks
        hp = {k: c[k](k, v) for k, v in dict(lr=lr, momentum=momentum, dampening=dampening,
                                              weight_decay=weight_decay, nesterov=nesterov,
                                              maximize=maximize).items()}
        self._check_group(hp)
        super().__init__(params, hp)

    def _check_group(self, hp: dict) -> None:
        if hp["nesterov"] and (hp["momentum"] <= 0 or hp["dampening"] != 0):
            raise ValueError("nesterov: Nesterov momentum requires a momentum and zero dampening")

    def _update(self, name, p, g, st, group):
        lr, momentum = group["lr"], group["momentum"]
        g, owned = self._effective_grad(p, g, group["weight_decay"], group["maximize"])
        if momentum != 0:
            buf = st.get("momentum_buffer")
            if buf is None:
                st["momentum_buffer"] = buf = np.array(g, dtype=p.dtype, copy=True)
            else:
                buf *= momentum
                damp = 1 - group["dampening"]
                if damp == 1:
                    buf += g
                else:
                    buf += g * damp
            if group["nesterov"]:
                if owned:
                    g += buf * momentum
                else:
                    t = np.multiply(buf, momentum, out=np.empty_like(p))
                    t += g
                    g, owned = t, True
            else:
                g, owned = buf, False
        if owned:
            g *= lr
            p -= g
        else:
            p -= g * lr


class Adagrad(Optimizer):
    """torch.optim.Adagrad's rule::

        g = grad (negated if maximize) + weight_decay * p
        clr = lr / (1 + (step - 1) * lr_decay)
        sum += g * g          (sum starts at initial_accumulator_value)
        p -= clr * g / (sqrt(sum) + eps)
    """

    _hparam_checks = {
        "lr": lambda n, v: _nonneg(n, v, "learning rate"),
        "lr_decay": lambda n, v: _nonneg(n, v, "lr_decay value"),
        "eps": lambda n, v: _nonneg(n, v, "epsilon value"),
        "weight_decay": lambda n, v: _nonneg(n, v, "weight_decay value"),
        "initial_accumulator_value": lambda n, v: _nonneg(n, v, "initial_accumulator_value value"),
        "maximize": _flag,
    }
    _state_buffers = ("sum",)

    def __init__(self, params, lr=1e-2, lr_decay=0, weight_decay=0, initial_accumulator_value=0,
                 eps=1e-10, *, maximize=False):
        c = self._hparam_checks
        hp = {k: c[k](k, v) for k, v in dict(
            lr=lr, lr_decay=lr_decay, eps=eps, weight_decay=weight_decay,
            initial_accumulator_value=initial_accumulator_value, maximize=maximize).items()}
        super().__init__(params, hp)

    def _update(self, name, p, g, st, group):
        g, _ = self._effective_grad(p, g, group["weight_decay"], group["maximize"])
        s = st.get("sum")
        if s is None:
            st["sum"] = s = np.full(p.shape, group["initial_accumulator_value"], dtype=p.dtype)
        clr = group["lr"] / (1 + (st["step"] - 1) * group["lr_decay"])
        tmp = np.multiply(g, g, out=np.empty_like(p))
        s += tmp
        np.sqrt(s, out=tmp)
        tmp += group["eps"]
        np.divide(g, tmp, out=tmp)
        tmp *= clr
        p -= tmp


class RMSprop(Optimizer):
    """torch.optim.RMSprop's rule::

        g = grad (negated if maximize) + weight_decay * p
        square_avg = alpha * square_avg + (1 - alpha) * g * g
        centered: grad_avg = lerp(grad_avg, g, 1 - alpha); avg = sqrt(square_avg - grad_avg**2) + eps
        else:     avg = sqrt(square_avg) + eps
        momentum > 0: buf = momentum * buf + g / avg; p -= lr * buf
        else:         p -= lr * g / avg

    As in PyTorch, a centered variance that rounds below zero gives NaN (no warning).
    """

    _hparam_checks = {
        "lr": lambda n, v: _nonneg(n, v, "learning rate"),
        "momentum": lambda n, v: _nonneg(n, v, "momentum value"),
        "alpha": lambda n, v: _nonneg(n, v, "alpha value"),
        "eps": lambda n, v: _nonneg(n, v, "epsilon value"),
        "centered": _flag,
        "weight_decay": lambda n, v: _nonneg(n, v, "weight_decay value"),
        "maximize": _flag,
    }
    _state_buffers = ("square_avg", "momentum_buffer", "grad_avg")

    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0, momentum=0,
                 centered=False, *, maximize=False):
        c = self._hparam_checks
        hp = {k: c[k](k, v) for k, v in dict(
            lr=lr, momentum=momentum, alpha=alpha, eps=eps, centered=centered,
            weight_decay=weight_decay, maximize=maximize).items()}
        super().__init__(params, hp)

    def _update(self, name, p, g, st, group):
        alpha, momentum, lr = group["alpha"], group["momentum"], group["lr"]
        g, _ = self._effective_grad(p, g, group["weight_decay"], group["maximize"])
        sq = st.get("square_avg")
        if sq is None:
            st["square_avg"] = sq = np.zeros_like(p)
        tmp = np.multiply(g, g, out=np.empty_like(p))
        sq *= alpha
        tmp *= 1 - alpha
        sq += tmp
        if group["centered"]:
            ga = st.get("grad_avg")
            if ga is None:
                st["grad_avg"] = ga = np.zeros_like(p)
            _lerp_(ga, g, 1 - alpha, tmp)
            np.multiply(ga, ga, out=tmp)
            np.subtract(sq, tmp, out=tmp)
            with np.errstate(invalid="ignore"):
                np.sqrt(tmp, out=tmp)
        else:
            np.sqrt(sq, out=tmp)
        tmp += group["eps"]
        np.divide(g, tmp, out=tmp)
        if momentum > 0:
            buf = st.get("momentum_buffer")
            if buf is None:
                st["momentum_buffer"] = buf = np.zeros_like(p)
            buf *= momentum
            buf += tmp
            np.multiply(buf, lr, out=tmp)
        else:
            tmp *= lr
        p -= tmp


class Adam(Optimizer):
    """torch.optim.Adam's rule (``decoupled_weight_decay=True`` is AdamW)::

        g = grad (negated if maximize)
        decoupled: p *= 1 - lr * weight_decay      else: g = g + weight_decay * p
        exp_avg = lerp(exp_avg, g, 1 - beta1); exp_avg_sq = beta2 * exp_avg_sq + (1 - beta2) * g * g
        amsgrad: max_exp_avg_sq = max(max_exp_avg_sq, exp_avg_sq), used in place of exp_avg_sq below
        p -= lr / (1 - beta1**step) * exp_avg / (sqrt(exp_avg_sq) / sqrt(1 - beta2**step) + eps)
    """

    _hparam_checks = {
        "lr": lambda n, v: _nonneg(n, v, "learning rate"),
        "betas": lambda n, v: _betas(v),
        "eps": lambda n, v: _nonneg(n, v, "epsilon value"),
        "weight_decay": lambda n, v: _nonneg(n, v, "weight_decay value"),
        "amsgrad": _flag,
        "maximize": _flag,
        "decoupled_weight_decay": _flag,
    }
    _state_buffers = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, amsgrad=False, *,
                 maximize=False, decoupled_weight_decay=False):
        c = self._hparam_checks
        hp = {k: c[k](k, v) for k, v in dict(
            lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
            maximize=maximize, decoupled_weight_decay=decoupled_weight_decay).items()}
        super().__init__(params, hp)

    def _update(self, name, p, g, st, group):
        lr, (beta1, beta2), wd = group["lr"], group["betas"], group["weight_decay"]
        step = st["step"]
        if group["decoupled_weight_decay"]:
            if wd != 0:
                p *= 1 - lr * wd
            g, _ = self._effective_grad(p, g, 0.0, group["maximize"])
        else:
            g, _ = self._effective_grad(p, g, wd, group["maximize"])
        m = st.get("exp_avg")
        if m is None:
            st["exp_avg"] = m = np.zeros_like(p)
            st["exp_avg_sq"] = np.zeros_like(p)
        v = st["exp_avg_sq"]
        tmp = np.empty_like(p)
        _lerp_(m, g, 1 - beta1, tmp)
        v *= beta2
        np.multiply(g, g, out=tmp)
        tmp *= 1 - beta2
        v += tmp
        bias_correction1 = 1 - beta1**step
        bias_correction2 = 1 - beta2**step
        step_size = lr / bias_correction1
        bias_correction2_sqrt = bias_correction2**0.5
        if group["amsgrad"]:
            vmax = st.get("max_exp_avg_sq")
            if vmax is None:
                st["max_exp_avg_sq"] = vmax = np.zeros_like(p)
            np.maximum(vmax, v, out=vmax)
            np.sqrt(vmax, out=tmp)
        else:
            np.sqrt(v, out=tmp)
        tmp /= bias_correction2_sqrt
        tmp += group["eps"]
        np.divide(m, tmp, out=tmp)
        tmp *= step_size
        p -= tmp


class AdamW(Adam):
    """torch.optim.AdamW: Adam with decoupled weight decay (default weight_decay=1e-2)."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False, *,
                 maximize=False):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                         maximize=maximize, decoupled_weight_decay=True)

    def load_state_dict(self, state_dict) -> None:
        super().load_state_dict(state_dict)
        self.param_groups[0]["decoupled_weight_decay"] = True  # as torch's AdamW.__setstate__
