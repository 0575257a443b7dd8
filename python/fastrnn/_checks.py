"""Argument validation shared by the kernel and the reference backends.

Every failure raises ValueError or TypeError whose message starts with the argument's
name and, for shapes, gives the expected and the actual shape.
"""
from __future__ import annotations

import numbers
import operator

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def resolve_dtype(dtype, name: str = "dtype") -> np.dtype:
    """'float32' | 'float64' | np.float32 | np.float64 -> np.dtype; anything else: TypeError."""
    try:
        dt = np.dtype(dtype)
    except TypeError as exc:
        raise TypeError(f"{name}: expected 'float32' or 'float64', got {dtype!r}") from exc
    if dt not in FLOAT_DTYPES:
        raise TypeError(f"{name}: expected 'float32' or 'float64', got {dt}")
    return dt


def is_float_kind(a) -> bool:
    return isinstance(a, np.ndarray) and a.dtype.kind == "f"


def as_float_array(name: str, a, dtype=None, ndim=None) -> np.ndarray:
    """Return `a` as a float ndarray (converted to `dtype` when given).

    Accepts array-likes of real floating type; ints, bools, complex and objects raise
    TypeError (PyTorch does not promote them silently either). No copy is made when `a` is
    already an ndarray of the right dtype (callers must not write to the result).
    """
    if isinstance(a, np.ndarray):
        arr = a
    else:
        try:
            arr = np.asarray(a)
        except Exception as exc:  # ragged lists and the like
            raise TypeError(f"{name}: expected a float array, got {type(a).__name__}") from exc
    if arr.dtype.kind != "f":
        raise TypeError(f"{name}: expected a floating-point array, got dtype {arr.dtype}")
    if dtype is not None and arr.dtype != dtype:
        arr = arr.astype(dtype)
    if ndim is not None and arr.ndim != ndim:
        raise ValueError(f"{name}: expected a {ndim}-d array, got shape {arr.shape}")
    return arr


def check_shape(name: str, a: np.ndarray, expected: tuple) -> None:
    """Shape equality; `None` in `expected` matches any size."""
    ok = a.ndim == len(expected) and all(e is None or e == s for e, s in zip(expected, a.shape))
    if not ok:
        shown = "(" + ", ".join("*" if e is None else str(e) for e in expected) + (",)" if len(expected) == 1 else ")")
        raise ValueError(f"{name}: expected shape {shown}, got {a.shape}")


def check_positive_int(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected an integer, got {type(value).__name__}")
    value = operator.index(value)
    if value < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {value}")
    return value


def check_probability(name: str, value) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected a number in [0, 1), got {type(value).__name__}")
    value = float(value)
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name}: expected a number in [0, 1), got {value}")
    return value


# Largest parameter set a layer may allocate: beyond this a size is a mistake, not a model.
MAX_PARAM_BYTES = 1 << 40


def check_param_sizes(shapes: dict, dtype, what: str) -> None:
    """ValueError naming the sizes (`what`) when the parameters would not fit in memory or
    overflow an index, instead of NumPy's anonymous error deep in the allocation."""
    total = 0
    for shape in shapes.values():
        n = 1
        for v in shape:
            n *= int(v)
        total += n
    nbytes = total * np.dtype(dtype).itemsize
    if nbytes > MAX_PARAM_BYTES:
        raise ValueError(f"{what}: the parameters would take {nbytes:.3e} bytes "
                         f"(more than {MAX_PARAM_BYTES:.0e}); check the sizes")


def check_lengths(lengths, batch: int, steps: int, name: str = "lengths") -> np.ndarray | None:
    """Validate packed-sequence lengths: integers (B,), 0 <= lengths[b] <= T -> int64 array."""
    if lengths is None:
        return None
    arr = np.asarray(lengths)
    if arr.dtype.kind not in "iu":
        if arr.dtype.kind == "f" and arr.size and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
            arr = arr.astype(np.int64)
        else:
            raise TypeError(f"{name}: expected integers, got dtype {arr.dtype}")
    if arr.shape != (batch,):
        raise ValueError(f"{name}: expected shape ({batch},), got {arr.shape}")
    arr = arr.astype(np.int64)
    if arr.size and (arr.min() < 0 or arr.max() > steps):
        bad = int(np.flatnonzero((arr < 0) | (arr > steps))[0])
        raise ValueError(f"{name}: expected 0 <= lengths[b] <= T = {steps}, got lengths[{bad}] = {arr[bad]}")
    return arr


# --- recurrent layers (shared by fastrnn.functional and fastrnn.reference.functional) --------

RECURRENT_GATES = {"rnn_tanh": 1, "rnn_relu": 1, "lstm": 4, "gru": 3}  # mode -> G


def check_choice(name: str, value, choices) -> str:
    """`value` must be one of the strings `choices`."""
    if not isinstance(value, str) or value not in choices:
        shown = ", ".join(repr(c) for c in choices)
        raise ValueError(f"{name}: expected one of {shown}, got {value!r}")
    return value


def check_mode(mode, name: str = "mode") -> int:
    """Recurrent mode -> gate count G."""
    return RECURRENT_GATES[check_choice(name, mode, tuple(RECURRENT_GATES))]


def as_float_state(name: str, state, pair: bool, dtype=None):
    """None | h | (h, c) (when `pair`, LSTM) -> the same structure of float arrays.

    For a pair, either component may be None (= zeros). Shapes are not checked here.
    """
    if state is None:
        return None
    if pair:
        if not isinstance(state, (tuple, list)) or len(state) != 2:
            raise TypeError(f"{name}: expected a tuple (h, c), got {type(state).__name__}")
        h, c = state
        if type(h) is np.ndarray and type(c) is np.ndarray and dtype is not None and h.dtype == dtype \
                and c.dtype == dtype:
            return h, c  # what the conversions below return, without building their names (0.9 -> 0.2 us)
        return tuple(
            None if s is None else as_float_array(f"{name}[{i}]", s, dtype) for i, s in enumerate(state)
        )
    if isinstance(state, tuple) and len(state) == 2 and all(isinstance(s, np.ndarray) for s in state):
        raise TypeError(f"{name}: expected one array h, got a tuple of two arrays (an LSTM state?)")
    return as_float_array(name, state, dtype)


_WEIGHT_NAMES = ("w_ih", "w_hh", "b_ih", "b_hh")


def _checked_weight(a, dtype, shape: tuple, name: str, k: int, j: int) -> np.ndarray:
    """weights[k][j] as a `dtype` array of `shape`; the argument's name is only built on the
    slow path (a sequence call checks 4 arrays per layer and direction every time)."""
    if type(a) is np.ndarray and a.dtype == dtype and a.shape == shape:
        return a
    label = f"{name}[{k}][{j}] ({_WEIGHT_NAMES[j]})"
    arr = as_float_array(label, a, dtype, ndim=len(shape))
    check_shape(label, arr, shape)
    return arr


def check_recurrent_weights(weights, gates: int, num_layers: int, num_directions: int,
                            dtype=None, name: str = "weights"):
    """Validate L*D tuples (w_ih, w_hh, b_ih, b_hh) -> (list of tuples, I, H, has_bias).

    w_ih (G*H, I_l) with I_0 = I (taken from weights[0]: check x against it) and I_l = D*H
    above; w_hh (G*H, H); biases (G*H,) or all None. Arrays are converted to `dtype` (when None:
    the first w_hh's float dtype); no copy when they already have it.
    """
    count = num_layers * num_directions
    if isinstance(weights, (str, bytes, np.ndarray)) or not hasattr(weights, "__len__"):
        raise TypeError(f"{name}: expected a sequence of {count} tuples (w_ih, w_hh, b_ih, b_hh), "
                        f"got {type(weights).__name__}")
    if len(weights) != count:
        raise ValueError(f"{name}: expected {count} entries (num_layers * num_directions), got {len(weights)}")
    out = []
    hidden = has_bias = input_size = None
    for k, entry in enumerate(weights):
        if not isinstance(entry, (tuple, list)) or len(entry) != 4:
            raise ValueError(f"{name}[{k}]: expected a tuple (w_ih, w_hh, b_ih, b_hh)")
        if hidden is None:
            w_hh = as_float_array(f"{name}[{k}][1] (w_hh)", entry[1], dtype, ndim=2)
            w_ih = as_float_array(f"{name}[{k}][0] (w_ih)", entry[0], dtype, ndim=2)
            hidden, input_size = w_hh.shape[1], w_ih.shape[1]
            has_bias = entry[2] is not None
            dtype = w_hh.dtype if dtype is None else dtype
        layer = k // num_directions
        in_l = input_size if layer == 0 else num_directions * hidden
        GH = gates * hidden
        arrays = [_checked_weight(entry[0], dtype, (GH, in_l), name, k, 0),
                  _checked_weight(entry[1], dtype, (GH, hidden), name, k, 1)]
        for j in (2, 3):
            if (entry[j] is not None) != has_bias:
                raise ValueError(f"{name}[{k}][{j}] ({_WEIGHT_NAMES[j]}): expected {'an array' if has_bias else 'None'} "
                                 f"(all biases must be given, or all None)")
            arrays.append(_checked_weight(entry[j], dtype, (GH,), name, k, j) if has_bias else None)
        out.append(tuple(arrays))
    return out, input_size, hidden, has_bias


def check_grads_like(name: str, grads, like):
    """`grads`: a sequence of tuples with the shapes of the tuples in `like` (None where None)."""
    if isinstance(grads, (str, bytes, np.ndarray)) or not hasattr(grads, "__len__"):
        raise TypeError(f"{name}: expected a sequence of {len(like)} tuples, got {type(grads).__name__}")
    if len(grads) != len(like):
        raise ValueError(f"{name}: expected {len(like)} entries, got {len(grads)}")
    for k, (g, w) in enumerate(zip(grads, like)):
        if not isinstance(g, (tuple, list)) or len(g) != len(w):
            raise ValueError(f"{name}[{k}]: expected a tuple of {len(w)} arrays")
        for j, (gj, wj) in enumerate(zip(g, w)):
            if wj is None:
                if gj is not None:
                    raise ValueError(f"{name}[{k}][{j}]: expected None (no bias), got {type(gj).__name__}")
                continue
            if not isinstance(gj, np.ndarray) or gj.dtype.kind != "f":
                raise TypeError(f"{name}[{k}][{j}]: expected a float ndarray to accumulate into, "
                                f"got {type(gj).__name__}")
            check_shape(f"{name}[{k}][{j}]", gj, wj.shape)
            if not gj.flags.writeable:
                raise ValueError(f"{name}[{k}][{j}]: array is read-only")


# --- attention (shared by fastrnn.functional and fastrnn.reference.functional) --------------
# Only validation and shape bookkeeping here; all numerics live in the backends.

MHA_PARAM_ORDER = ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight",
                   "in_proj_bias", "out_proj.weight", "out_proj.bias")  # PyTorch's state_dict order


def check_flag(name: str, value) -> bool:
    """A Python or NumPy bool (no truthy ints, None or arrays: they are usually mistakes)."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name}: expected True or False, got {type(value).__name__}")
    return bool(value)


def check_scale(name: str, scale):
    """None or a finite real number -> None | float."""
    if scale is None:
        return None
    if isinstance(scale, (bool, np.bool_)) or not isinstance(scale, numbers.Real):
        raise TypeError(f"{name}: expected a float or None, got {type(scale).__name__}")
    scale = float(scale)
    if not np.isfinite(scale):
        raise ValueError(f"{name}: expected a finite number, got {scale}")
    return scale


def as_mask(name: str, mask, dtype=None, allow_float: bool = True):
    """None | bool array | float array (converted to `dtype` when given).

    Float masks are added to the scores: they may hold -inf (= masked) but not NaN or +inf.
    Integer masks raise TypeError (0/1 ints are ambiguous between the two conventions).
    """
    if mask is None:
        return None
    try:
        arr = mask if isinstance(mask, np.ndarray) else np.asarray(mask)
    except Exception as exc:
        raise TypeError(f"{name}: expected a bool or float array, got {type(mask).__name__}") from exc
    if arr.dtype == np.bool_:
        return arr
    if arr.dtype.kind != "f" or not allow_float:
        kinds = "a bool or floating-point" if allow_float else "a bool"
        raise TypeError(f"{name}: expected {kinds} mask, got dtype {arr.dtype}")
    if dtype is not None and arr.dtype != dtype:
        arr = arr.astype(dtype)
    if arr.size and (np.isnan(arr).any() or np.isposinf(arr).any()):
        raise ValueError(f"{name}: a float mask may hold -inf (masked) but not NaN or +inf")
    return arr


def _common_float_dtype(arrays, dtype=None):
    if dtype is not None:
        return np.dtype(dtype)
    return np.result_type(*[a.dtype for a in arrays if a is not None])


def check_sdpa_inputs(q, k, v, attn_mask=None, is_causal=False, scale=None, dtype=None):
    """Validate scaled_dot_product_attention arguments.

    q (..., Lq, E), k (..., S, E), v (..., S, Ev); the leading dims broadcast (NumPy rules);
    attn_mask bool/float broadcastable to (..., Lq, S) without growing it.
    Returns (q, k, v, attn_mask, is_causal, scale, batch_shape): arrays of one float dtype
    (`dtype`, else the promoted dtype of q, k, v), scale resolved (None -> 1/sqrt(E)).
    """
    q = as_float_array("q", q)
    k = as_float_array("k", k)
    v = as_float_array("v", v)
    for name, a, what in (("q", q, "(..., Lq, E)"), ("k", k, "(..., S, E)"), ("v", v, "(..., S, Ev)")):
        if a.ndim < 2:
            raise ValueError(f"{name}: expected shape {what} (at least 2 dims), got {a.shape}")
    dt = _common_float_dtype((q, k, v), dtype)
    q, k, v = (a if a.dtype == dt else a.astype(dt) for a in (q, k, v))
    if k.shape[-1] != q.shape[-1]:
        raise ValueError(f"k: expected shape (..., S, {q.shape[-1]}) (E from q {q.shape}), got {k.shape}")
    if v.shape[-2] != k.shape[-2]:
        raise ValueError(f"v: expected shape (..., {k.shape[-2]}, Ev) (S from k {k.shape}), got {v.shape}")
    try:
        batch = np.broadcast_shapes(q.shape[:-2], k.shape[:-2])
    except ValueError:
        raise ValueError(f"k: leading dims of {k.shape} do not broadcast with q's {q.shape}") from None
    try:
        batch = np.broadcast_shapes(batch, v.shape[:-2])
    except ValueError:
        raise ValueError(f"v: leading dims of {v.shape} do not broadcast with q's {q.shape} "
                         f"and k's {k.shape}") from None
    is_causal = check_flag("is_causal", is_causal)
    scale = check_scale("scale", scale)
    if scale is None:
        scale = 1.0 / float(np.sqrt(q.shape[-1])) if q.shape[-1] else 1.0
    score_shape = tuple(batch) + (q.shape[-2], k.shape[-2])
    attn_mask = as_mask("attn_mask", attn_mask, dt)
    if attn_mask is not None:
        try:
            ok = np.broadcast_shapes(attn_mask.shape, score_shape) == score_shape
        except ValueError:
            ok = False
        if not ok:
            raise ValueError(f"attn_mask: expected a shape broadcastable to {score_shape} "
                             f"(..., Lq, S), got {attn_mask.shape}")
    return q, k, v, attn_mask, is_causal, scale, tuple(batch)


def mha_param_shapes(embed_dim: int, kdim: int, vdim: int, bias: bool, packed: bool) -> dict:
    """name -> shape of nn.MultiheadAttention's parameters, in PyTorch's state_dict order.

    `packed` (PyTorch: kdim == vdim == embed_dim): one in_proj_weight (3E, E); otherwise
    q_proj_weight (E, E), k_proj_weight (E, kdim), v_proj_weight (E, vdim).
    """
    E = embed_dim
    shapes = {}
    if packed:
        shapes["in_proj_weight"] = (3 * E, E)
    else:
        shapes["q_proj_weight"] = (E, E)
        shapes["k_proj_weight"] = (E, kdim)
        shapes["v_proj_weight"] = (E, vdim)
    if bias:
        shapes["in_proj_bias"] = (3 * E,)
    shapes["out_proj.weight"] = (E, E)
    if bias:
        shapes["out_proj.bias"] = (E,)
    return shapes


def check_mha_params(params, kdim: int, vdim: int, dtype=None, name: str = "params"):
    """Validate a MultiheadAttention parameter mapping (PyTorch names).

    Either `in_proj_weight` (3E, E) (then kdim == vdim == E) or all of `q_proj_weight` (E, E),
    `k_proj_weight` (E, kdim), `v_proj_weight` (E, vdim); `out_proj.weight` (E, E);
    `in_proj_bias` (3E,) and `out_proj.bias` (E,) are optional (absent or None = no bias).
    Returns (weights, E, names): weights = (w_q, w_k, w_v, b_q, b_k, b_v, w_o, b_o) with the
    in_proj pieces as row views of the packed arrays; names = the keys present, state_dict order.
    """
    from collections.abc import Mapping
    if not isinstance(params, Mapping):
        raise TypeError(f"{name}: expected a mapping of parameter names to arrays, got {type(params).__name__}")
    present = {key for key, val in params.items() if val is not None}
    unknown = sorted(str(key) for key in present if key not in MHA_PARAM_ORDER)
    if unknown:
        raise ValueError(f"{name}: unexpected key {unknown[0]!r}; expected names among {MHA_PARAM_ORDER}")
    if "out_proj.weight" not in present:
        raise ValueError(f"{name}: missing key 'out_proj.weight'")
    arrs = {key: as_float_array(f"{name}['{key}']", params[key]) for key in MHA_PARAM_ORDER if key in present}
    dt = _common_float_dtype(arrs.values(), dtype)
    arrs = {key: (a if a.dtype == dt else a.astype(dt)) for key, a in arrs.items()}
    wo = arrs["out_proj.weight"]
    if wo.ndim != 2 or wo.shape[0] != wo.shape[1]:
        raise ValueError(f"{name}['out_proj.weight']: expected shape (E, E), got {wo.shape}")
    E = wo.shape[0]
    separate = [key for key in ("q_proj_weight", "k_proj_weight", "v_proj_weight") if key in present]
    packed = "in_proj_weight" in present
    if packed and separate:
        raise ValueError(f"{name}: give either 'in_proj_weight' or q/k/v_proj_weight, not both "
                         f"(got {separate[0]!r} too)")
    if not packed and len(separate) != 3:
        missing = [key for key in ("q_proj_weight", "k_proj_weight", "v_proj_weight") if key not in present]
        raise ValueError(f"{name}: missing key 'in_proj_weight' (or {missing[0]!r} for separate projections)")
    if packed and (kdim != E or vdim != E):
        which, dim = ("key", kdim) if kdim != E else ("value", vdim)
        raise ValueError(f"{which}: expected last dim {E} (embed_dim; params hold a packed in_proj_weight, "
                         f"use q/k/v_proj_weight for kdim/vdim != embed_dim), got {dim}")
    has_in_bias = "in_proj_bias" in present
    expected = mha_param_shapes(E, kdim, vdim, True, packed)
    for key, a in arrs.items():
        if a.shape != expected[key]:
            if key == "k_proj_weight" and a.ndim == 2 and a.shape[0] == E:
                raise ValueError(f"key: expected last dim kdim = {a.shape[1]} (from {name}['k_proj_weight'] "
                                 f"{a.shape}), got {kdim}")
            if key == "v_proj_weight" and a.ndim == 2 and a.shape[0] == E:
                raise ValueError(f"value: expected last dim vdim = {a.shape[1]} (from {name}['v_proj_weight'] "
                                 f"{a.shape}), got {vdim}")
            raise ValueError(f"{name}['{key}']: expected shape {expected[key]}, got {a.shape}")
    if packed:
        w = arrs["in_proj_weight"]
        w_q, w_k, w_v = w[:E], w[E:2 * E], w[2 * E:]
    else:
        w_q, w_k, w_v = arrs["q_proj_weight"], arrs["k_proj_weight"], arrs["v_proj_weight"]
    if has_in_bias:
        b = arrs["in_proj_bias"]
        b_q, b_k, b_v = b[:E], b[E:2 * E], b[2 * E:]
    else:
        b_q = b_k = b_v = None
    weights = (w_q, w_k, w_v, b_q, b_k, b_v, wo, arrs.get("out_proj.bias"))
    names = tuple(key for key in MHA_PARAM_ORDER if key in present)
    return weights, E, names


def check_mha_inputs(query, key, value, num_heads, params, key_padding_mask=None, attn_mask=None,
                     need_weights=True, average_attn_weights=True, is_causal=False,
                     batch_first=False, dtype=None):
    """Validate multi_head_attention_forward arguments (PyTorch nn.MultiheadAttention semantics).

    Batched: query (L, N, E), key (S, N, kdim), value (S, N, vdim) ((N, L, E) ... when
    batch_first); unbatched: query (L, E), key (S, kdim), value (S, vdim) (batch_first ignored).
    key_padding_mask (N, S) / (S,), bool (True = ignore) or float (added);
    attn_mask (L, S) or (N*num_heads, L, S) / (num_heads, L, S), bool (True = NOT allowed) or float.
    is_causal is PyTorch's hint and needs attn_mask.
    Returns a dict: q, k, v in batch-first layout (N, L, E) / (N, S, kdim) / (N, S, vdim)
    (views, N = 1 when unbatched), weights (see check_mha_params), names, dims, masks and flags.
    """
    query = as_float_array("query", query)
    key = as_float_array("key", key)
    value = as_float_array("value", value)
    need_weights = check_flag("need_weights", need_weights)
    average_attn_weights = check_flag("average_attn_weights", average_attn_weights)
    is_causal = check_flag("is_causal", is_causal)
    batch_first = check_flag("batch_first", batch_first)
    if query.ndim not in (2, 3):
        raise ValueError(f"query: expected a 3-d (batched) or 2-d (unbatched) array, got shape {query.shape}")
    batched = query.ndim == 3
    for name, a in (("key", key), ("value", value)):
        if a.ndim != query.ndim:
            raise ValueError(f"{name}: expected a {query.ndim}-d array like query {query.shape} "
                             f"({'batched' if batched else 'unbatched'}), got shape {a.shape}")
    weights, E, names = check_mha_params(params, key.shape[-1], value.shape[-1], dtype)
    dt = _common_float_dtype((query, key, value, weights[0]), dtype)
    query, key, value = (a if a.dtype == dt else a.astype(dt) for a in (query, key, value))
    if weights[0].dtype != dt:  # check_mha_params gave all parameters one dtype
        weights = tuple(None if w is None else w.astype(dt) for w in weights)
    num_heads = check_positive_int("num_heads", num_heads)
    if E % num_heads:
        raise ValueError(f"num_heads: embed_dim {E} is not divisible by num_heads {num_heads}")
    if batched:
        if batch_first:
            q, k, v = query, key, value
            qdesc, kdesc = "(N, L, E)", "(N, S, kdim)"
        else:
            q, k, v = (a.transpose(1, 0, 2) for a in (query, key, value))
            qdesc, kdesc = "(L, N, E)", "(S, N, kdim)"
    else:
        q, k, v = query[None], key[None], value[None]
        qdesc, kdesc = "(L, E)", "(S, kdim)"
    N, L = q.shape[0], q.shape[1]
    S = k.shape[1]
    if q.shape[2] != E:
        raise ValueError(f"query: expected shape {qdesc} with E = {E} (embed_dim from params), got {query.shape}")
    if k.shape[0] != N:
        raise ValueError(f"key: expected batch size N = {N} (from query {query.shape}), layout {kdesc}, "
                         f"got {key.shape}")
    if v.shape[:2] != k.shape[:2]:
        if not batched:
            exp = (S, "vdim")
        else:
            exp = (N, S, "vdim") if batch_first else (S, N, "vdim")
        raise ValueError(f"value: expected shape {exp} (S and N from key {key.shape}), got {value.shape}")
    kpm = as_mask("key_padding_mask", key_padding_mask, dt)
    if kpm is not None:
        exp = (N, S) if batched else (S,)
        if kpm.shape != exp:
            raise ValueError(f"key_padding_mask: expected shape {exp} ({'(N, S)' if batched else '(S,)'}), "
                             f"got {kpm.shape}")
        if not batched:
            kpm = kpm[None]
    am = as_mask("attn_mask", attn_mask, dt)
    if am is not None:
        three = (N * num_heads, L, S) if batched else (num_heads, L, S)
        if am.shape != (L, S) and am.shape != three:
            lead = "N*num_heads" if batched else "num_heads"
            raise ValueError(f"attn_mask: expected shape {(L, S)} (L, S) or {three} ({lead}, L, S), got {am.shape}")
    if is_causal and am is None:
        raise ValueError("attn_mask: is_causal=True is only a hint in nn.MultiheadAttention and needs "
                         "attn_mask (the causal mask) as in PyTorch; pass attn_mask too")
    return dict(q=q, k=k, v=v, weights=weights, names=names, E=E, num_heads=num_heads,
                N=N, L=L, S=S, kdim=k.shape[2], vdim=v.shape[2], batched=batched,
                batch_first=batch_first, key_padding_mask=kpm, attn_mask=am,
                need_weights=need_weights, average_attn_weights=average_attn_weights,
                is_causal=is_causal, dtype=dt,
                out_shape=query.shape)


def check_grad_output(name: str, d, shape, dtype) -> np.ndarray:
    """An output gradient (dout, dcontext): float array of the output's `shape`, as `dtype`."""
    d = as_float_array(name, d, dtype)
    if d.shape != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)} (the output's), got {d.shape}")
    return d


def check_grads_mapping(grads, expected: dict, name: str = "grads") -> None:
    """`grads` (dict name -> writable float array) with exactly the keys/shapes of `expected`."""
    if not isinstance(grads, dict):
        raise TypeError(f"{name}: expected a dict of arrays to accumulate into, got {type(grads).__name__}")
    missing = [key for key in expected if grads.get(key) is None]
    extra = [key for key in grads if key not in expected and grads[key] is not None]
    if missing or extra:
        what = f"missing key {missing[0]!r}" if missing else f"unexpected key {extra[0]!r}"
        raise ValueError(f"{name}: {what}; expected keys {tuple(expected)}")
    for key, shape in expected.items():
        g = grads[key]
        if not isinstance(g, np.ndarray) or g.dtype.kind != "f":
            raise TypeError(f"{name}['{key}']: expected a float ndarray to accumulate into, got {type(g).__name__}")
        check_shape(f"{name}['{key}']", g, shape)
        if not g.flags.writeable:
            raise ValueError(f"{name}['{key}']: array is read-only")


def check_grads_tuple(grads, like, name: str = "grads") -> None:
    """`grads`: a tuple/list of writable float arrays shaped like the arrays in `like`."""
    if not isinstance(grads, (tuple, list)) or len(grads) != len(like):
        raise TypeError(f"{name}: expected a tuple of {len(like)} arrays (dW_q, dW_k, db, dv)")
    for j, (g, w) in enumerate(zip(grads, like)):
        if not isinstance(g, np.ndarray) or g.dtype.kind != "f":
            raise TypeError(f"{name}[{j}]: expected a float ndarray to accumulate into, got {type(g).__name__}")
        check_shape(f"{name}[{j}]", g, w.shape)
        if not g.flags.writeable:
            raise ValueError(f"{name}[{j}]: array is read-only")


def check_additive_inputs(query, keys, W_q, W_k, b, v, mask=None, keys_proj=None, dtype=None):
    """Validate additive (Bahdanau) attention arguments.

    query (B, Q), keys (B, S, K), W_q (H, Q), W_k (H, K), b (H,), v (H,), mask (B, S) bool
    (True = attend) or None, keys_proj (B, S, H) or None (then computed).
    Returns the arrays converted to one float dtype (`dtype`, else the promoted one).
    """
    query = as_float_array("query", query)
    keys = as_float_array("keys", keys)
    W_q = as_float_array("W_q", W_q, ndim=2)
    W_k = as_float_array("W_k", W_k, ndim=2)
    b = as_float_array("b", b, ndim=1)
    v = as_float_array("v", v, ndim=1)
    if keys_proj is not None:
        keys_proj = as_float_array("keys_proj", keys_proj)
    dt = _common_float_dtype((query, keys, W_q, W_k, b, v, keys_proj), dtype)
    query, keys, W_q, W_k, b, v = (a if a.dtype == dt else a.astype(dt) for a in (query, keys, W_q, W_k, b, v))
    if keys_proj is not None and keys_proj.dtype != dt:
        keys_proj = keys_proj.astype(dt)
    if query.ndim != 2:
        raise ValueError(f"query: expected shape (B, Q), got {query.shape}")
    if keys.ndim != 3:
        raise ValueError(f"keys: expected shape (B, S, K), got {keys.shape}")
    B, Q = query.shape
    S, K = keys.shape[1], keys.shape[2]
    H = W_q.shape[0]
    if keys.shape[0] != B:
        raise ValueError(f"keys: expected shape ({B}, S, K) (B from query {query.shape}), got {keys.shape}")
    check_shape("W_q", W_q, (H, Q))
    check_shape("W_k", W_k, (H, K))
    check_shape("b", b, (H,))
    check_shape("v", v, (H,))
    mask = as_mask("mask", mask, allow_float=False)
    if mask is not None:
        check_shape("mask", mask, (B, S))
    if keys_proj is not None:
        check_shape("keys_proj", keys_proj, (B, S, H))
    return query, keys, W_q, W_k, b, v, mask, keys_proj


class RecurrentArgs:
    """Validated arguments of a recurrent call (see prepare_recurrent)."""

    __slots__ = ("G", "lstm", "L", "D", "I", "H", "T", "B", "has_bias", "x", "weights", "h0", "c0",
                 "lengths", "dropout_masks", "dtype")


def prepare_recurrent(mode, x, weights, state, lengths, num_layers, bidirectional, batch_first,
                      dropout_masks=None, dtype=None) -> RecurrentArgs:
    """Validate a recurrent_forward call; shared by the kernel and the reference backends.

    Returns RecurrentArgs with x as a time-major (T, B, I) VIEW (no copy), weights converted to
    x's dtype (or `dtype`), h0/c0 (L*D, B, H) arrays or None (= zeros), lengths int64 (B,) or
    None, and the dropout masks (L-1 arrays (T, B, D*H)) or None.
    """
    a = RecurrentArgs()
    a.G = check_mode(mode)
    a.lstm = mode == "lstm"
    x = as_float_array("x", x, dtype)
    if x.ndim != 3:
        raise ValueError(f"x: expected a 3-d array ({'B, T' if batch_first else 'T, B'}, I), got shape {x.shape}")
    a.dtype = x.dtype
    a.L = check_positive_int("num_layers", num_layers)
    a.D = 2 if bidirectional else 1
    a.weights, a.I, a.H, a.has_bias = check_recurrent_weights(weights, a.G, a.L, a.D, dtype=x.dtype)
    check_shape("x", x, (None, None, a.I))
    a.x = x.transpose(1, 0, 2) if batch_first else x
    a.T, a.B = a.x.shape[0], a.x.shape[1]
    a.lengths = check_lengths(lengths, a.B, a.T)
    state = as_float_state("state", state, a.lstm, dtype=x.dtype)
    h0, c0 = state if a.lstm and state is not None else (state, None)
    expect = (a.L * a.D, a.B, a.H)
    if h0 is not None:
        check_shape("state[0]" if a.lstm else "state", h0, expect)
    if c0 is not None:
        check_shape("state[1]", c0, expect)
    a.h0, a.c0 = h0, c0
    if dropout_masks is not None:
        if isinstance(dropout_masks, np.ndarray) or len(dropout_masks) != a.L - 1:
            got = "an array" if isinstance(dropout_masks, np.ndarray) else f"{len(dropout_masks)}"
            raise ValueError(f"dropout_masks: expected {a.L - 1} arrays (num_layers - 1), got {got}")
        dropout_masks = [as_float_array(f"dropout_masks[{l}]", m, x.dtype) for l, m in enumerate(dropout_masks)]
        for l, m in enumerate(dropout_masks):
            check_shape(f"dropout_masks[{l}]", m, (a.T, a.B, a.D * a.H))
    a.dropout_masks = dropout_masks
    return a


def prepare_recurrent_grad_state(name: str, dstate, lstm: bool, shape: tuple, dtype):
    """dstate for backward: None | dh | (dh, dc) -> (dh or None, dc or None), shapes checked."""
    dstate = as_float_state(name, dstate, lstm, dtype=dtype)
    dh, dc = dstate if lstm and dstate is not None else (dstate, None)
    if dh is not None:
        check_shape(f"{name}[0]" if lstm else name, dh, shape)
    if dc is not None:
        check_shape(f"{name}[1]", dc, shape)
    return dh, dc
