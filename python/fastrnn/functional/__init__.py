"""fastrnn.functional: the array-level forms the layers are built on, backed by the C++ core.

Weights are passed explicitly and training forms return a cache for the matching backward.
fastrnn.reference.functional has the same names and signatures in plain NumPy.
See docs/ARCHITECTURE.md for the contracts.
"""

# Recurrent layers (cpp/src/recurrent.cpp)
from .recurrent import cell, cell_backward, cell_forward  # noqa: F401
from .recurrent import recurrent, recurrent_backward, recurrent_forward  # noqa: F401
