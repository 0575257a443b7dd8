"""Recurrent layer classes (RNN, LSTM, GRU and their single-step cells), written once.

A class owns parameters, gradients, its RNG and state_dict; all numerics are in its functional
backend, the class attribute `_F` (a module with recurrent_forward, recurrent_backward,
recurrent, cell, cell_forward, cell_backward; see docs/ARCHITECTURE.md). fastrnn.LSTM binds
fastrnn.functional, fastrnn.reference.LSTM the NumPy reference:

    class LSTM(fastrnn.layers.recurrent.LSTM):
        _F = fastrnn.reference.functional

Parameters are NumPy arrays in `layer.params` under PyTorch's state_dict names; `backward`
ADDS into the arrays of `layer.grads` in place (zero_grad() clears them).

Caches returned by `forward` are LayerCache objects (one type for all layers): `.owner` (the
layer that ran forward) and `.inner` (the functional backend's cache). `backward` rejects any
other cache with ValueError("cache: ...").

Edge sizes: T = 0 gives y of shape (0, B, D*H) and the final state equal to the initial state
(backward: dx of shape (0, B, I), dstate0 = dstate); B = 0 gives empty outputs.
"""
from __future__ import annotations

import math

import numpy as np

from ._params import LayerCache, Parametrized
from .._checks import (
    check_param_sizes,
    RECURRENT_GATES,
    as_float_array,
    as_float_state,
    check_choice,
    check_positive_int,
    check_probability,
    resolve_dtype,
)

__all__ = ["RNN", "LSTM", "GRU", "RNNCell", "LSTMCell", "GRUCell", "LayerCache"]

class _Parametrized(Parametrized):
    """Parameters, gradients and state_dict shared by the sequence layers and the cells."""

    _F = None  # the functional backend, set by the bound subclasses

    def _init_params(self, shapes, hidden_size, dtype, seed):
        if self._F is None:
            raise TypeError(f"{type(self).__name__} has no functional backend: use fastrnn.{type(self).__name__} "
                            f"or fastrnn.reference.{type(self).__name__}")
        self.dtype = resolve_dtype(dtype)
        check_param_sizes(shapes, self.dtype, f"input_size={self.input_size}, hidden_size={hidden_size}")
        self._rng = np.random.default_rng(seed)   # init, then dropout masks
        bound = 1.0 / math.sqrt(hidden_size)
        self.params = {name: self._rng.uniform(-bound, bound, shape).astype(self.dtype)
                       for name, shape in shapes.items()}
        self.grads = {name: np.zeros_like(p) for name, p in self.params.items()}


# ============================================================================================
# Sequence layers
# ============================================================================================


class _Recurrent(_Parametrized):
    """Multi-layer, maybe bidirectional RNN/LSTM/GRU over whole sequences."""

    def __init__(self, mode, input_size, hidden_size, num_layers, bias, batch_first, dropout,
                 bidirectional, dtype, seed):
        self.mode = mode
        self.input_size = check_positive_int("input_size", input_size)
        self.hidden_size = check_positive_int("hidden_size", hidden_size)
        self.num_layers = check_positive_int("num_layers", num_layers)
        self.bias = bool(bias)
        self.batch_first = bool(batch_first)
        self.dropout = check_probability("dropout", dropout)
        self.bidirectional = bool(bidirectional)
        self.num_directions = 2 if self.bidirectional else 1
        G, H, D = RECURRENT_GATES[mode], self.hidden_size, self.num_directions
        # the size check before building per-layer tables: num_layers itself may be absurd
        per_layer_rest = {"rest": (self.num_layers - 1, D * G * H, D * H + H + 2)}
        check_param_sizes({"first": (D * G * H, self.input_size + H + 2), **per_layer_rest},
                          resolve_dtype(dtype), f"num_layers={self.num_layers}, input_size={self.input_size}, "
                          f"hidden_size={H}")
        shapes, self._keys = {}, []
        for l in range(self.num_layers):
            in_l = self.input_size if l == 0 else D * H
            for d in range(D):
                sfx = f"_l{l}" + ("_reverse" if d == 1 else "")
                names = [f"weight_ih{sfx}", f"weight_hh{sfx}"]
                if self.bias:
                    names += [f"bias_ih{sfx}", f"bias_hh{sfx}"]
                shapes.update(zip(names, [(G * H, in_l), (G * H, H), (G * H,), (G * H,)]))
                self._keys.append(tuple(names) + (() if self.bias else (None, None)))
        self._init_params(shapes, H, dtype, seed)

    def __repr__(self):
        extra = "".join(f", {k}={v!r}" for k, v, default in (
            ("num_layers", self.num_layers, 1), ("bias", self.bias, True), ("batch_first", self.batch_first, False),
            ("dropout", self.dropout, 0.0), ("bidirectional", self.bidirectional, False)) if v != default)
        return f"{type(self).__name__}({self.input_size}, {self.hidden_size}{extra}, dtype={self.dtype.name!r})"

    def _weights(self, table):
        # (keys a, b, c, d: w_ih, w_hh, b_ih, b_hh; c and d None without biases)
        return [(table[a], table[b], table[c], table[d]) if c is not None else (table[a], table[b], None, None)
                for a, b, c, d in self._keys]

    def _dropout_masks(self, x):
        """L-1 keep-masks / (1 - p), (T, B, D*H) time-major, in the layer's dtype; None if no dropout."""
        if self.dropout == 0.0 or self.num_layers == 1:
            return None
        T, B = (x.shape[1], x.shape[0]) if self.batch_first else x.shape[:2]
        shape = (T, B, self.num_directions * self.hidden_size)
        scale = self.dtype.type(1.0 / (1.0 - self.dropout))
        return [(self._rng.random(shape) >= self.dropout).astype(self.dtype) * scale
                for _ in range(self.num_layers - 1)]

    def __call__(self, x, state=None, lengths=None):
        """Inference (no cache, no dropout): (y, state_n)."""
        x = as_float_array("x", x, self.dtype)
        state = as_float_state("state", state, self.mode == "lstm", self.dtype)
        return self._F.recurrent(self.mode, x, self._weights(self.params), state, lengths,
                                 num_layers=self.num_layers, bidirectional=self.bidirectional,
                                 batch_first=self.batch_first)

    def forward(self, x, state=None, lengths=None):
        """Training forward (dropout between layers when dropout > 0): (y, state_n, cache)."""
        x = as_float_array("x", x, self.dtype, ndim=3)
        state = as_float_state("state", state, self.mode == "lstm", self.dtype)
        y, state_n, cache = self._F.recurrent_forward(
            self.mode, x, self._weights(self.params), state, lengths, num_layers=self.num_layers,
            bidirectional=self.bidirectional, batch_first=self.batch_first,
            dropout_masks=self._dropout_masks(x), need_cache=True)
        return y, state_n, LayerCache(self, cache)

    def backward(self, cache, dy, dstate=None):
        """BPTT; ADDS the parameter gradients into self.grads. Returns (dx, dstate0)."""
        inner = self._unwrap(cache)
        dy = as_float_array("dy", dy, self.dtype)
        dstate = as_float_state("dstate", dstate, self.mode == "lstm", self.dtype)
        dx, dstate0, _ = self._F.recurrent_backward(inner, dy, dstate, grads=self._weights(self.grads))
        return dx, dstate0


class RNN(_Recurrent):
    """Elman RNN: h' = act(W_ih x + b_ih + W_hh h + b_hh), act = tanh or relu."""

    def __init__(self, input_size, hidden_size, num_layers=1, nonlinearity="tanh", bias=True,
                 batch_first=False, dropout=0.0, bidirectional=False, dtype="float32", seed=None):
        self.nonlinearity = check_choice("nonlinearity", nonlinearity, ("tanh", "relu"))
        super().__init__("rnn_" + nonlinearity, input_size, hidden_size, num_layers, bias, batch_first,
                         dropout, bidirectional, dtype, seed)


class LSTM(_Recurrent):
    """LSTM with PyTorch's gate order i, f, g, o; state (h, c)."""

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, dtype="float32", seed=None):
        super().__init__("lstm", input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, dtype, seed)


class GRU(_Recurrent):
    """GRU with PyTorch's gate order r, z, n (reset applied after the matmul)."""

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, dtype="float32", seed=None):
        super().__init__("gru", input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, dtype, seed)


# ============================================================================================
# Single-step cells
# ============================================================================================


class _Cell(_Parametrized):
    """One time step: x_t (B, I), state h (B, H) or (h, c) for LSTM (None = zeros)."""

    def __init__(self, mode, input_size, hidden_size, bias, dtype, seed):
        self.mode = mode
        self.input_size = check_positive_int("input_size", input_size)
        self.hidden_size = check_positive_int("hidden_size", hidden_size)
        self.bias = bool(bias)
        G, H = RECURRENT_GATES[mode], self.hidden_size
        shapes = {"weight_ih": (G * H, self.input_size), "weight_hh": (G * H, H)}
        if self.bias:
            shapes.update(bias_ih=(G * H,), bias_hh=(G * H,))
        self._init_params(shapes, H, dtype, seed)

    def __repr__(self):
        extra = "" if self.bias else ", bias=False"
        return f"{type(self).__name__}({self.input_size}, {self.hidden_size}{extra}, dtype={self.dtype.name!r})"

    def _weights(self, table):
        return (table["weight_ih"], table["weight_hh"], table.get("bias_ih"), table.get("bias_hh"))

    def __call__(self, x, state=None):
        """h_next, or (h_next, c_next) for LSTMCell.

        The hot path of hand-written loops: x is converted to the cell's dtype here; the
        functional backend validates the state and converts it to x's dtype.
        """
        # (dtypes of native float arrays are singletons: `is` is the cheap test, and a miss only
        # takes the converting path, which returns x itself when it already fits)
        if type(x) is not np.ndarray or x.dtype is not self.dtype:
            x = as_float_array("x", x, self.dtype)
        p = self.params
        return self._F.cell(self.mode, x, state, p["weight_ih"], p["weight_hh"], p.get("bias_ih"), p.get("bias_hh"))

    def forward(self, x, state=None):
        """Training step: (state_next, cache)."""
        x = as_float_array("x", x, self.dtype)
        state = as_float_state("state", state, self.mode == "lstm", self.dtype)
        state_next, cache = self._F.cell_forward(self.mode, x, state, *self._weights(self.params))
        return state_next, LayerCache(self, cache)

    def backward(self, cache, dstate_next=None):
        """ADDS the parameter gradients into self.grads. Returns (dx, dstate)."""
        inner = self._unwrap(cache)
        dstate_next = as_float_state("dstate_next", dstate_next, self.mode == "lstm", self.dtype)
        dx, dstate, _ = self._F.cell_backward(inner, dstate_next, grads=self._weights(self.grads))
        return dx, dstate


class RNNCell(_Cell):
    def __init__(self, input_size, hidden_size, bias=True, nonlinearity="tanh", dtype="float32", seed=None):
        self.nonlinearity = check_choice("nonlinearity", nonlinearity, ("tanh", "relu"))
        super().__init__("rnn_" + nonlinearity, input_size, hidden_size, bias, dtype, seed)


class LSTMCell(_Cell):
    def __init__(self, input_size, hidden_size, bias=True, dtype="float32", seed=None):
        super().__init__("lstm", input_size, hidden_size, bias, dtype, seed)


class GRUCell(_Cell):
    def __init__(self, input_size, hidden_size, bias=True, dtype="float32", seed=None):
        super().__init__("gru", input_size, hidden_size, bias, dtype, seed)
