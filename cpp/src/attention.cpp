// Attention: dispatch to the per-ISA kernels (attention_isa.cpp) and the additive-attention
// GEMMs, which run here on the calling thread, outside any OpenMP region. Notes: attention.h.
#include "attention.h"

#include <fastrnn/fastrnn.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "gemm.h"

namespace fastrnn {
namespace attn {

namespace {

enum class Isa { Base, Avx2, Avx512 };

Isa isa() {
  static const Isa level = [] {
    const char* s = simd_level();  // picked once at run time (simd.cpp)
    if (!std::strcmp(s, "avx512")) return Isa::Avx512;
    if (!std::strcmp(s, "avx2")) return Isa::Avx2;
    return Isa::Base;
  }();
  return level;
}

#define FASTRNN_ATTN_DISPATCH(call)      \
  switch (isa()) {                       \
    case Isa::Avx512: avx512::call; break; \
    case Isa::Avx2: avx2::call; break;     \
    default: base::call; break;            \
  }

}  // namespace

template <typename T>
void sdpa_forward(const SdpaProblem<T>& p, const MutMatBatch<T>& out, T* lse) {
  FASTRNN_ATTN_DISPATCH(sdpa_forward(p, out, lse))
}

template <typename T>
void sdpa_backward(const SdpaProblem<T>& p, const MatBatch<T>& out, const T* lse, const MatBatch<T>& dout,
                   const MutMatBatch<T>& dq, const MutMatBatch<T>& dk, const MutMatBatch<T>& dv) {
  FASTRNN_ATTN_DISPATCH(sdpa_backward(p, out, lse, dout, dq, dk, dv))
}

template <typename T>
void sdpa_weights(const SdpaProblem<T>& p, const T* lse, T* weights, int64_t group) {
  FASTRNN_ATTN_DISPATCH(sdpa_weights(p, lse, weights, group))
}

// ---- additive -------------------------------------------------------------------------------

template <typename T>
void additive_forward(const AdditiveArgs<T>& a, T* context, T* weights, T* t) {
  const int64_t B = a.B, S = a.S, Q = a.Q, K = a.K, H = a.H;
  // qpb = query W_q^T + b  (B, H)
  std::vector<T> qpb(static_cast<size_t>(std::max<int64_t>(B * H, 1)));
  gemm<T>(false, true, B, H, Q, T(1), a.query, Q, a.W_q, Q, T(0), qpb.data(), H);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h) qpb[b * H + h] += a.b[h];
  // keys_proj = keys W_k^T  (B*S, H), unless precomputed
  std::vector<T> kpbuf;
  const T* kp = a.keys_proj;
  if (!kp) {
    kpbuf.resize(static_cast<size_t>(std::max<int64_t>(B * S * H, 1)));
    gemm<T>(false, true, B * S, H, K, T(1), a.keys, K, a.W_k, K, T(0), kpbuf.data(), H);
    kp = kpbuf.data();
  }
  AdditiveFusedArgs<T> f{B, S, K, H, qpb.data(), kp, a.v, a.mask, a.keys, t, weights, context, a.threads};
  FASTRNN_ATTN_DISPATCH(additive_fused_forward(f))
}

template <typename T>
void additive_backward(const AdditiveArgs<T>& a, const T* t, const T* weights, const T* dcontext, T* dquery,
                       T* dkeys, T* dW_q, T* dW_k, T* db, T* dv) {
  const int64_t B = a.B, S = a.S, Q = a.Q, K = a.K, H = a.H;
  std::vector<T> dpre(static_cast<size_t>(std::max<int64_t>(B * S * H, 1)));
  std::vector<T> dv_part(static_cast<size_t>(std::max<int64_t>(B * H, 1)));
  std::vector<T> dqp(static_cast<size_t>(std::max<int64_t>(B * H, 1)));
  AdditiveFusedBackArgs<T> f{B, S, K, H, t, weights, a.keys, a.v, dcontext, dkeys, dpre.data(), dv_part.data(),
                             dqp.data(), a.threads};
  FASTRNN_ATTN_DISPATCH(additive_fused_backward(f))
  // dv, db: the per-row parts summed in a fixed order (the same for every thread count)
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h) {
      dv[h] += dv_part[b * H + h];
      db[h] += dqp[b * H + h];
    }
  // forward: qp = query W_q^T  ->  dW_q += dqp^T query, dquery = dqp W_q
  gemm<T>(true, false, H, Q, B, T(1), dqp.data(), H, a.query, Q, T(1), dW_q, Q);
  gemm<T>(false, false, B, Q, H, T(1), dqp.data(), H, a.W_q, Q, T(0), dquery, Q);
  // forward: keys_proj = keys W_k^T  ->  dW_k += dpre^T keys, dkeys += dpre W_k
  gemm<T>(true, false, H, K, B * S, T(1), dpre.data(), H, a.keys, K, T(1), dW_k, K);
  gemm<T>(false, false, B * S, K, H, T(1), dpre.data(), H, a.W_k, K, T(1), dkeys, K);
}

#define FASTRNN_ATTN_INSTANTIATE(T)                                                                       \
  template void sdpa_forward<T>(const SdpaProblem<T>&, const MutMatBatch<T>&, T*);                        \
  template void sdpa_backward<T>(const SdpaProblem<T>&, const MatBatch<T>&, const T*, const MatBatch<T>&, \
                                 const MutMatBatch<T>&, const MutMatBatch<T>&, const MutMatBatch<T>&);    \
  template void sdpa_weights<T>(const SdpaProblem<T>&, const T*, T*, int64_t);                            \
  template void additive_forward<T>(const AdditiveArgs<T>&, T*, T*, T*);                                  \
  template void additive_backward<T>(const AdditiveArgs<T>&, const T*, const T*, const T*, T*, T*, T*, T*,  \
                                     T*, T*);
FASTRNN_ATTN_INSTANTIATE(float)
FASTRNN_ATTN_INSTANTIATE(double)
#undef FASTRNN_ATTN_INSTANTIATE

}  // namespace attn
}  // namespace fastrnn
