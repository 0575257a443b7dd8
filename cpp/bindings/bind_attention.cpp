// Binding of the attention core (filled in with the attention kernels).
#include "common.h"

namespace fastrnn_py {
void bind_attention(py::module_& m) { (void)m; }
}  // namespace fastrnn_py
