// Attention kernels: scaled dot-product attention (SDPA, flash-attention style) and additive
// (Bahdanau) attention. The C++ core knows nothing of Python; cpp/bindings/bind_attention.cpp
// converts arrays and computes the broadcast offsets described below.
//
// NOTES
// - SDPA: out = softmax(q k^T * scale + masks) v per batch entry b, with
//     q (Lq, E), k (S, E), v (S, Ev), out (Lq, Ev).
//   "Batch" is the broadcast of the leading dims, flattened to nbatch entries. Every matrix
//   operand is a MatBatch: matrix b starts at data + off[b] (elements; offsets may repeat when
//   an operand is broadcast), rows are `ld` elements apart, columns are contiguous. So views
//   (broadcast leading dims, heads split out of a (L, N, E) projection, ...) are read in place.
// - Masks: up to two, each a float mask (added to the scores; -inf = masked) or a bool mask
//   (uint8; `flag_allows` says whether a nonzero byte means "may attend" (SDPA's convention) or
//   "may not" (nn.MultiheadAttention's)). Element (b, i, j) is at off[b] + i*ld_row + j*ld_col
//   (ld_row / ld_col are 0 when broadcast). `causal` masks j > i (top-left aligned).
// - A query row with nothing to attend to gets output 0, lse = +inf, and gradient 0.
// - Forward streams over key blocks with an online softmax (running max m and sum l per row):
//   memory is O(block) per thread, never Lq x S. It returns the per-row logsumexp
//   lse = m + log(l) (nbatch, Lq), which is all backward needs besides out:
//   backward recomputes P = exp(q k^T * scale + masks - lse) blockwise (FlashAttention-2):
//     dV += P^T dO,  dP = dO V^T,  dS = P * (dP - rowsum(dO * O)),
//     dQ += dS K * scale,  dK += dS^T Q * scale.
// - Forward computes its score tiles transposed, S^T = K_j Q_i^T (Q^T packed once per chunk,
//   K and V read in place), so the online softmax runs down columns, one query per SIMD lane.
// - Work split (OpenMP, `threads`; problems under ~4 MFLOP run on the calling thread): forward
//   over (batch, 256-row query chunks); backward either
//   one task per batch entry (dQ, dK, dV in one sweep) or, when there are fewer batch entries
//   than threads, two sweeps: (batch, key chunk) -> dK, dV and (batch, query chunk) -> dQ.
//   Both compute every (query block, key block) tile with the same code in the same order,
//   so results do not depend on the thread count. No BLAS inside: the tiles use the
//   register-blocked SIMD micro-kernels of attention_isa.cpp (compiled per ISA level).
// - Gradient outputs dq/dk/dv: the core writes matrix b to off[b] and never accumulates
//   across b, so every b must have its own slice (the binding hands out full-batch scratch for
//   a broadcast operand and reduces afterwards).
// - Additive: score_s = v . tanh(W_q query + W_k keys_s + b); weights = softmax over the
//   unmasked s; context = sum_s weights_s keys_s. Shapes: query (B, Q), keys (B, S, K),
//   W_q (H, Q), W_k (H, K), b (H,), v (H,), mask (B, S) uint8 (nonzero = attend) or null,
//   keys_proj (B, S, H) = keys W_k^T or null (then computed). All C-contiguous.
//   The projections are GEMMs on the calling thread; the fused tanh / dot / softmax / context
//   pass is parallel over B. Training keeps t = tanh(...) (B, S, H) for backward.
#pragma once

#include <cstdint>

namespace fastrnn {
namespace attn {

template <typename T>
struct MatBatch {               // read-only batch of row-major matrices
  const T* data = nullptr;
  const int64_t* off = nullptr;  // (nbatch,) element offsets
  int64_t ld = 0;                // row stride (elements)
  const T* at(int64_t b) const { return data + off[b]; }
};

template <typename T>
struct MutMatBatch {            // written batch of matrices (distinct slices per b)
  T* data = nullptr;
  const int64_t* off = nullptr;
  int64_t ld = 0;
  T* at(int64_t b) const { return data + off[b]; }
};

template <typename T>
struct MaskBatch {
  const T* add = nullptr;         // float mask, or
  const uint8_t* flag = nullptr;  // bool mask
  bool flag_allows = true;        // bool: nonzero = may attend (true) / may not (false)
  const int64_t* off = nullptr;   // (nbatch,)
  int64_t ld_row = 0, ld_col = 0;
  bool present() const { return add != nullptr || flag != nullptr; }
};

template <typename T>
struct SdpaProblem {
  int64_t nbatch = 0, Lq = 0, S = 0, E = 0, Ev = 0;
  T scale = T(1);
  bool causal = false;
  MatBatch<T> q, k, v;            // (Lq, E), (S, E), (S, Ev)
  MaskBatch<T> mask[2];
  int threads = 1;
};

// out (Lq, Ev) per b; lse (nbatch, Lq) contiguous, or null (inference).
template <typename T>
void sdpa_forward(const SdpaProblem<T>& p, const MutMatBatch<T>& out, T* lse);

// out / lse: what forward returned; dout (Lq, Ev) per b. dq (Lq, E), dk (S, E), dv (S, Ev) per b
// are overwritten (not accumulated).
template <typename T>
void sdpa_backward(const SdpaProblem<T>& p, const MatBatch<T>& out, const T* lse, const MatBatch<T>& dout,
                   const MutMatBatch<T>& dq, const MutMatBatch<T>& dk, const MutMatBatch<T>& dv);

// The attention weights P (Lq x S per b) from forward's lse, written to weights
// (nbatch / group, Lq, S) contiguous: group = 1 keeps every b; group = g averages the g
// consecutive batch entries (the heads of one sample) into one.
template <typename T>
void sdpa_weights(const SdpaProblem<T>& p, const T* lse, T* weights, int64_t group);

template <typename T>
struct AdditiveArgs {
  int64_t B = 0, S = 0, Q = 0, K = 0, H = 0;
  const T* query = nullptr;       // (B, Q)
  const T* keys = nullptr;        // (B, S, K)
  const T* W_q = nullptr;         // (H, Q)
  const T* W_k = nullptr;         // (H, K)
  const T* b = nullptr;           // (H,)
  const T* v = nullptr;           // (H,)
  const uint8_t* mask = nullptr;  // (B, S) or null
  const T* keys_proj = nullptr;   // (B, S, H) or null
  int threads = 1;
};

// context (B, K), weights (B, S); t (B, S, H) = tanh(...) kept for backward, or null.
template <typename T>
void additive_forward(const AdditiveArgs<T>& a, T* context, T* weights, T* t);

// t, weights from forward; dcontext (B, K). dquery (B, Q) and dkeys (B, S, K) are written;
// dW_q (H, Q), dW_k (H, K), db (H,), dv (H,) are ADDED INTO.
template <typename T>
void additive_backward(const AdditiveArgs<T>& a, const T* t, const T* weights, const T* dcontext, T* dquery,
                       T* dkeys, T* dW_q, T* dW_k, T* db, T* dv);

// ---- per-ISA kernels (attention_isa.cpp, compiled once per level) --------------------------
// The SDPA drivers above live there entirely (their OpenMP regions call only the micro-kernels);
// additive attention has its fused pointwise passes there, the GEMMs in attention.cpp.
template <typename T>
struct AdditiveFusedArgs {
  int64_t B, S, K, H;
  const T* qpb;                   // (B, H) = query W_q^T + b
  const T* kp;                    // (B, S, H) = keys W_k^T
  const T* v;                     // (H,)
  const uint8_t* mask;            // (B, S) or null
  const T* keys;                  // (B, S, K)
  T* t;                           // (B, S, H) out, or null
  T* weights;                     // (B, S) out
  T* context;                     // (B, K) out
  int threads;
};

template <typename T>
struct AdditiveFusedBackArgs {
  int64_t B, S, K, H;
  const T* t;                     // (B, S, H)
  const T* weights;               // (B, S)
  const T* keys;                  // (B, S, K)
  const T* v;                     // (H,)
  const T* dcontext;              // (B, K)
  T* dkeys;                       // (B, S, K) out: the direct part weights_s * dcontext
  T* dpre;                        // (B, S, H) out: d(score pre-activation)
  T* dv_part;                     // (B, H) out: per-b contribution to dv
  T* dqp;                         // (B, H) out: sum_s dpre (per-b contribution to db, and dquery's)
  int threads;
};

#define FASTRNN_DECLARE_ATTN_ISA(ns)                                                                  \
  namespace ns {                                                                                     \
  void sdpa_forward(const attn::SdpaProblem<float>&, const attn::MutMatBatch<float>&, float*);         \
  void sdpa_forward(const attn::SdpaProblem<double>&, const attn::MutMatBatch<double>&, double*);      \
  void sdpa_backward(const attn::SdpaProblem<float>&, const attn::MatBatch<float>&, const float*,      \
                     const attn::MatBatch<float>&, const attn::MutMatBatch<float>&,                    \
                     const attn::MutMatBatch<float>&, const attn::MutMatBatch<float>&);                \
  void sdpa_backward(const attn::SdpaProblem<double>&, const attn::MatBatch<double>&, const double*,   \
                     const attn::MatBatch<double>&, const attn::MutMatBatch<double>&,                  \
                     const attn::MutMatBatch<double>&, const attn::MutMatBatch<double>&);              \
  void sdpa_weights(const attn::SdpaProblem<float>&, const float*, float*, int64_t);                   \
  void sdpa_weights(const attn::SdpaProblem<double>&, const double*, double*, int64_t);                \
  void additive_fused_forward(const attn::AdditiveFusedArgs<float>&);                                 \
  void additive_fused_forward(const attn::AdditiveFusedArgs<double>&);                                \
  void additive_fused_backward(const attn::AdditiveFusedBackArgs<float>&);                            \
  void additive_fused_backward(const attn::AdditiveFusedBackArgs<double>&);                           \
  }

}  // namespace attn

FASTRNN_DECLARE_ATTN_ISA(avx512)
FASTRNN_DECLARE_ATTN_ISA(avx2)
FASTRNN_DECLARE_ATTN_ISA(base)

}  // namespace fastrnn
