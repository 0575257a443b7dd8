// Attention kernels (scaled dot-product, additive): see attention.h.
#include <fastrnn/fastrnn.h>
