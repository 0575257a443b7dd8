"""Weight initialisers, in place on NumPy arrays (``fastrnn.init``), after torch.nn.init.

Every function takes a writable float ndarray, fills it in place and returns it (names end
in ``_`` as in PyTorch). Random ones take ``rng``: None (fresh OS entropy), an int seed, a
``np.random.SeedSequence`` or a ``np.random.Generator`` (used and advanced as is). Values are
drawn in float64 and rounded into the array's dtype, so one seed gives the same numbers
(up to rounding) for float32 and float64 arrays. The distributions, bounds, gains and fan
computations are PyTorch's; the random streams are NumPy's, so values differ from torch's.

Fans (as torch): for an array of shape (out, in, *k), fan_in = in * prod(k) and
fan_out = out * prod(k); arrays with fewer than 2 dims raise ValueError.

A recurrent weight (G*H, H) is treated like PyTorch treats it: fan_in = H, fan_out = G*H. For
an IRNN (Le et al., 2015: ReLU RNN, identity recurrent weight, zero biases, small Gaussian
input weights)::

    rnn = fr.RNN(I, H, nonlinearity="relu")
    for name, w in rnn.params.items():
        if name.startswith("weight_hh"): fr.init.identity_(w)
        elif name.startswith("bias"):    fr.init.zeros_(w)
        else:                            fr.init.normal_(w, 0.0, 1e-3, rng=0)
"""
from __future__ import annotations

import math
import numbers

import numpy as np

__all__ = [
    "calculate_gain", "fan_in_and_fan_out", "uniform_", "normal_", "constant_", "zeros_", "ones_",
    "xavier_uniform_", "xavier_normal_", "kaiming_uniform_", "kaiming_normal_", "orthogonal_",
    "eye_", "identity_",
]


def _target(array, name: str = "array") -> np.ndarray:
    if not isinstance(array, np.ndarray):
        raise TypeError(f"{name}: expected a float ndarray (filled in place), got {type(array).__name__}")
    if array.dtype.kind != "f":
        raise TypeError(f"{name}: expected a floating-point array, got dtype {array.dtype}")
    if not array.flags.writeable:
        raise ValueError(f"{name}: array is read-only; initialisers fill it in place")
    return array


def _generator(rng) -> np.random.Generator:
    if isinstance(rng, (bool, np.bool_)):
        raise TypeError(f"rng: expected None, an int seed or a np.random.Generator, got {rng!r}")
    try:
        return np.random.default_rng(rng)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"rng: expected None, an int seed or a np.random.Generator, got {rng!r}") from exc


def _number(name: str, value) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected a number, got {type(value).__name__}")
    value = float(value)
    if math.isnan(value):
        raise ValueError(f"{name}: expected a number, got nan")
    return value


def calculate_gain(nonlinearity: str, param=None) -> float:
    """torch.nn.init.calculate_gain: the recommended gain for a nonlinearity."""
    linear = ("linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d",
              "conv_transpose3d", "sigmoid")
    if nonlinearity in linear:
        return 1.0
    if nonlinearity == "tanh":
        return 5.0 / 3
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        if param is None:
            slope = 0.01
        else:
            slope = _number("param", param)
        return math.sqrt(2.0 / (1 + slope**2))
    if nonlinearity == "selu":
        return 3.0 / 4
    raise ValueError(f"nonlinearity: unsupported nonlinearity {nonlinearity!r}")


def fan_in_and_fan_out(shape) -> tuple[int, int]:
    """(fan_in, fan_out) of an array or shape, as torch.nn.init._calculate_fan_in_and_fan_out."""
    shape = tuple(shape.shape) if isinstance(shape, np.ndarray) else tuple(int(s) for s in shape)
    if len(shape) < 2:
        raise ValueError(f"array: fan in and fan out need at least 2 dims, got shape {shape}")
    receptive = math.prod(shape[2:])
    return shape[1] * receptive, shape[0] * receptive


def _fan(array: np.ndarray, mode: str) -> int:
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"mode: expected 'fan_in' or 'fan_out', got {mode!r}")
    fan_in, fan_out = fan_in_and_fan_out(array)
    return fan_in if mode == "fan_in" else fan_out


def uniform_(array, a=0.0, b=1.0, *, rng=None) -> np.ndarray:
    """Fill with U(a, b)."""
    array = _target(array)
    a, b = _number("a", a), _number("b", b)
    if a > b:
        raise ValueError(f"b: expected a <= b, got a={a}, b={b}")
    array[...] = _generator(rng).uniform(a, b, size=array.shape)
    return array


def normal_(array, mean=0.0, std=1.0, *, rng=None) -> np.ndarray:
    """Fill with N(mean, std**2)."""
    array = _target(array)
    mean, std = _number("mean", mean), _number("std", std)
    if std < 0:
        raise ValueError(f"std: expected >= 0, got {std}")
    array[...] = _generator(rng).normal(mean, std, size=array.shape)
    return array


def constant_(array, val) -> np.ndarray:
    """Fill with ``val``."""
    array = _target(array)
    array[...] = _number("val", val)
    return array


def zeros_(array) -> np.ndarray:
    return constant_(array, 0.0)


def ones_(array) -> np.ndarray:
    return constant_(array, 1.0)


def xavier_uniform_(array, gain=1.0, *, rng=None) -> np.ndarray:
    """Glorot uniform: U(-a, a), a = gain * sqrt(6 / (fan_in + fan_out))."""
    array = _target(array)
    gain = _number("gain", gain)
    fan_in, fan_out = fan_in_and_fan_out(array)
    bound = gain * math.sqrt(6.0 / (fan_in + fan_out)) if fan_in + fan_out else 0.0
    return uniform_(array, -bound, bound, rng=rng)


def xavier_normal_(array, gain=1.0, *, rng=None) -> np.ndarray:
    """Glorot normal: N(0, std**2), std = gain * sqrt(2 / (fan_in + fan_out))."""
    array = _target(array)
    gain = _number("gain", gain)
    fan_in, fan_out = fan_in_and_fan_out(array)
    std = gain * math.sqrt(2.0 / (fan_in + fan_out)) if fan_in + fan_out else 0.0
    return normal_(array, 0.0, std, rng=rng)


def kaiming_uniform_(array, a=0.0, mode="fan_in", nonlinearity="leaky_relu", *, rng=None) -> np.ndarray:
    """He uniform: U(-bound, bound), bound = gain * sqrt(3 / fan), gain = calculate_gain(nonlinearity, a).

    ``kaiming_uniform_(w, a=math.sqrt(5))`` is PyTorch's nn.Linear default, U(-1/sqrt(in), 1/sqrt(in)).
    """
    array = _target(array)
    fan = _fan(array, mode)
    gain = calculate_gain(nonlinearity, a)
    bound = gain * math.sqrt(3.0 / fan) if fan else 0.0
    return uniform_(array, -bound, bound, rng=rng)


def kaiming_normal_(array, a=0.0, mode="fan_in", nonlinearity="leaky_relu", *, rng=None) -> np.ndarray:
    """He normal: N(0, std**2), std = gain / sqrt(fan)."""
    array = _target(array)
    fan = _fan(array, mode)
    gain = calculate_gain(nonlinearity, a)
    std = gain / math.sqrt(fan) if fan else 0.0
    return normal_(array, 0.0, std, rng=rng)


def orthogonal_(array, gain=1.0, *, rng=None) -> np.ndarray:
    """(Semi-)orthogonal matrix times ``gain``, PyTorch's algorithm (QR of a Gaussian matrix
    with the signs of R's diagonal folded into Q). The array is viewed as (shape[0], rest);
    rows are orthonormal when rows <= cols, columns otherwise."""
    array = _target(array)
    gain = _number("gain", gain)
    if array.ndim < 2:
        raise ValueError(f"array: orthogonal_ needs at least 2 dims, got shape {array.shape}")
    if array.size == 0:
        return array
    rows = array.shape[0]
    cols = array.size // rows
    flat = _generator(rng).standard_normal((rows, cols))
    if rows < cols:
        flat = flat.T
    q, r = np.linalg.qr(flat)
    d = np.sign(np.diagonal(r))
    d[d == 0] = 1.0
    q *= d
    if rows < cols:
        q = q.T
    array[...] = (gain * q).reshape(array.shape)
    return array


def eye_(array) -> np.ndarray:
    """torch.nn.init.eye_: a 2-D array gets ones on its main diagonal, zeros elsewhere."""
    array = _target(array)
    if array.ndim != 2:
        raise ValueError(f"array: eye_ needs a 2-d array, got shape {array.shape}")
    array[...] = 0
    np.fill_diagonal(array, 1)
    return array


def identity_(array, gain=1.0) -> np.ndarray:
    """IRNN recurrent weight: gain * identity in every (H, H) block of a (k*H, H) array.

    For a ReLU RNN's ``weight_hh`` (H, H) this is gain * I; stacked gate weights (G*H, H)
    get an identity per gate. Other shapes raise ValueError.
    """
    array = _target(array)
    gain = _number("gain", gain)
    if array.ndim != 2 or array.shape[1] == 0 or array.shape[0] % array.shape[1]:
        raise ValueError(f"array: identity_ expects shape (k*H, H), got {array.shape}")
    h = array.shape[1]
    array[...] = 0
    for k in range(array.shape[0] // h):  # one fill per gate block
        np.fill_diagonal(array[k * h:(k + 1) * h], gain)
    return array
