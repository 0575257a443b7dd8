"""fastrnn.reference.functional: the plain-NumPy functional forms (same names and signatures
as fastrnn.functional; see docs/ARCHITECTURE.md)."""

# Recurrent layers
from .recurrent import cell, cell_backward, cell_forward  # noqa: F401
from .recurrent import recurrent, recurrent_backward, recurrent_forward  # noqa: F401

# Attention (see reference/attention.py for the signatures)
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
