"""What every layer class shares: parameters and gradients by PyTorch name, state_dict, and the
cache wrapper that ties a forward pass to the layer that made it."""
from __future__ import annotations

import numpy as np

from .._checks import as_float_array, check_shape


class LayerCache:
    """The cache of one layer `forward` call: `owner` (the layer) and `inner` (the backend's cache)."""

    __slots__ = ("owner", "inner")

    def __init__(self, owner, inner):
        self.owner = owner
        self.inner = inner

    def __repr__(self):
        return f"LayerCache(owner={type(self.owner).__name__}, inner={self.inner!r})"


class Parametrized:
    """`params` and `grads`: dicts name -> array (PyTorch's names and shapes). Gradients are
    accumulated by `backward`; `zero_grad` is the only thing that clears them."""

    params: dict
    grads: dict

    def zero_grad(self):
        """Set every gradient to 0, in place."""
        for g in self.grads.values():
            g[...] = 0

    def state_dict(self):
        """name -> copy of the parameter array."""
        return {name: p.copy() for name, p in self.params.items()}

    def load_state_dict(self, state_dict):
        """Copy parameters in place from a mapping of the same names to array-likes: a PyTorch
        `state_dict()` (tensors, or after `.detach().numpy()`), an `np.load`ed .npz, a dict.

        Missing or unexpected names, wrong shapes and non-float values raise before anything
        changes; values are converted to the layer's dtype. The arrays in `params` stay the same
        objects, so optimizers holding them keep working.
        """
        if not hasattr(state_dict, "keys") or not hasattr(state_dict, "__getitem__"):
            raise TypeError(f"state_dict: expected a mapping of names to arrays, got {type(state_dict).__name__}")
        keys = list(state_dict.keys())
        missing = [k for k in self.params if k not in keys]
        unexpected = [str(k) for k in keys if k not in self.params]
        if missing or unexpected:
            raise ValueError(f"state_dict: missing keys {missing}, unexpected keys {unexpected}")
        new = {}
        for name, p in self.params.items():
            value = state_dict[name]
            if not isinstance(value, np.ndarray) and hasattr(value, "detach"):  # a torch tensor
                value = value.detach().cpu().numpy()
            arr = as_float_array(f"state_dict[{name!r}]", value, p.dtype)
            check_shape(f"state_dict[{name!r}]", arr, p.shape)
            new[name] = arr
        for name, arr in new.items():
            self.params[name][...] = arr

    def _unwrap(self, cache):
        """The backend cache inside a LayerCache made by THIS layer's forward."""
        if not isinstance(cache, LayerCache):
            raise ValueError(f"cache: expected the cache of this {type(self).__name__}'s forward, "
                             f"got {type(cache).__name__}")
        if cache.owner is not self:
            raise ValueError(f"cache: expected the cache of this {type(self).__name__}'s forward, "
                             f"got one of another {type(cache.owner).__name__}")
        return cache.inner
