"""fastrnn.reference: the plain-NumPy oracle, mirroring fastrnn (same classes, functions,
arguments and returns), any float dtype, one obvious loop over time.

The classes are the shared layer classes (fastrnn.layers) bound to the NumPy functional forms.
"""
from . import functional

__all__ = ["functional"]

# Recurrent layers
from ..layers import recurrent as _recurrent_layers  # noqa: E402


class RNN(_recurrent_layers.RNN):
    _F = functional


class LSTM(_recurrent_layers.LSTM):
    _F = functional


class GRU(_recurrent_layers.GRU):
    _F = functional


class RNNCell(_recurrent_layers.RNNCell):
    _F = functional


class LSTMCell(_recurrent_layers.LSTMCell):
    _F = functional


class GRUCell(_recurrent_layers.GRUCell):
    _F = functional


__all__ += ["RNN", "LSTM", "GRU", "RNNCell", "LSTMCell", "GRUCell"]

# Attention layers
from ..layers import attention as _attention_layers  # noqa: E402


class MultiheadAttention(_attention_layers.MultiheadAttention):
    _F = functional


class AdditiveAttention(_attention_layers.AdditiveAttention):
    _F = functional


__all__ += ["MultiheadAttention", "AdditiveAttention"]
