"""Training checkpoints as one .npz file (no pickling: every entry is a plain array or string).

Keys:
    params/<name>     the model's parameters (``model.params``)
    optim/<key>       the optimizer's flat ``state_dict()`` (fastrnn.optim)
    step              the number of optimizer steps done (int64)
    rng               JSON of the trainer's ``np.random.Generator`` bit_generator state
    rngs              JSON {name: bit_generator state} of the model's own generators (dropout)
    config            JSON of everything needed to rebuild the model and continue training
    extra/<name>      any other arrays (e.g. the recurrent state carried across BPTT chunks)

``save_checkpoint`` writes to a temporary file next to ``path`` and renames it, so a run killed
while saving leaves the previous checkpoint intact. Restoring all of the above makes a resumed
run bit-identical to an uninterrupted one.
"""
from __future__ import annotations

import json
import os

import numpy as np

__all__ = ["save_checkpoint", "load_checkpoint", "load_params", "Checkpoint", "restore_rng"]


class Checkpoint:
    """What ``load_checkpoint`` returns: params, optim, step, rng, rngs, config, extra."""

    def __init__(self, params, optim, step, rng, rngs, config, extra):
        self.params, self.optim, self.step = params, optim, step
        self.rng, self.rngs, self.config, self.extra = rng, rngs, config, extra

    def __repr__(self):
        return f"Checkpoint(step={self.step}, {len(self.params)} params, config={self.config})"


def _rng_state(gen: np.random.Generator) -> dict:
    return gen.bit_generator.state


def restore_rng(gen: np.random.Generator, state: dict) -> None:
    """Set ``gen`` to a saved bit_generator state (same bit generator type)."""
    kind = state.get("bit_generator")
    if kind != type(gen.bit_generator).__name__:
        raise ValueError(f"rng: checkpoint has a {kind} generator, this one is {type(gen.bit_generator).__name__}")
    gen.bit_generator.state = state


def save_checkpoint(path, *, params, optimizer, step, rng, config, rngs=None, extra=None) -> None:
    arrays = {f"params/{k}": np.asarray(v) for k, v in params.items()}
    for k, v in optimizer.state_dict().items():
        if v is None:
            raise ValueError(f"optimizer state {k!r} is None; cannot be stored without pickling")
        arrays[f"optim/{k}"] = np.asarray(v)
    arrays["step"] = np.int64(step)
    arrays["rng"] = np.array(json.dumps(_rng_state(rng)))
    arrays["rngs"] = np.array(json.dumps({k: _rng_state(g) for k, g in (rngs or {}).items()}))
    arrays["config"] = np.array(json.dumps(config))
    for k, v in (extra or {}).items():
        arrays[f"extra/{k}"] = np.asarray(v)
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load_checkpoint(path) -> Checkpoint:
    """Read a checkpoint written by ``save_checkpoint`` (arrays are loaded into memory)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint: no such file {path!r}")
    with np.load(path, allow_pickle=False) as z:
        files = set(z.files)
        needed = {"step", "rng", "rngs", "config"}
        if not needed <= files:
            raise ValueError(f"checkpoint: {path!r} is not a fastrnn training checkpoint "
                             f"(missing {sorted(needed - files)})")
        params, optim, extra = {}, {}, {}
        for k in z.files:
            if k.startswith("params/"):
                params[k[len("params/"):]] = z[k]
            elif k.startswith("optim/"):
                v = z[k]
                optim[k[len("optim/"):]] = v.item() if v.dtype.kind == "U" else v
            elif k.startswith("extra/"):
                extra[k[len("extra/"):]] = z[k]
        return Checkpoint(params=params, optim=optim, step=int(z["step"]), rng=json.loads(str(z["rng"])),
                          rngs=json.loads(str(z["rngs"])), config=json.loads(str(z["config"])), extra=extra)


def load_params(model, params: dict) -> None:
    """Copy saved parameters into ``model.params`` in place (names and shapes must match)."""
    missing = sorted(set(model.params) - set(params))
    unexpected = sorted(set(params) - set(model.params))
    if missing or unexpected:
        raise ValueError(f"checkpoint: parameters do not match the model: missing {missing}, "
                         f"unexpected {unexpected}")
    for k, p in model.params.items():
        v = params[k]
        if v.shape != p.shape:
            raise ValueError(f"checkpoint: params/{k}: expected shape {p.shape}, got {v.shape}")
        p[...] = v
