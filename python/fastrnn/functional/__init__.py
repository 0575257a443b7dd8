"""fastrnn.functional: the array-level forms the layers are built on, backed by the C++ core.

Weights are passed explicitly and training forms return a cache for the matching backward.
fastrnn.reference.functional has the same names and signatures in plain NumPy.
See docs/ARCHITECTURE.md for the contracts.
"""

# Recurrent layers (cpp/src/recurrent.cpp)
from .recurrent import cell, cell_backward, cell_forward  # noqa: F401
from .recurrent import recurrent, recurrent_backward, recurrent_forward  # noqa: F401

# Attention (cpp/src/attention.*; see functional/attention.py)
from .attention import (  # noqa: F401, E402
    additive_attention,
    additive_attention_backward,
    additive_attention_forward,
    additive_attention_precompute,
    multi_head_attention,
    multi_head_attention_backward,
    multi_head_attention_forward,
    scaled_dot_product_attention,
    scaled_dot_product_attention_backward,
    scaled_dot_product_attention_forward,
)
