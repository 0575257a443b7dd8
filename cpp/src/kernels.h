// Pointwise recurrent-cell kernels (one time step, after the GEMMs), compiled once per ISA
// level in kernels_isa.cpp and picked at run time by simd.cpp.
//
// A step works on `rows` batch rows. Row pointers advance by their ld; state rows are (rows, H)
// contiguous. `active[b] == 0` marks a padding step: the state passes through, y is 0, and in
// backward the gate gradients are 0 and the carries pass through unchanged.
#pragma once

#include <cstdint>

namespace fastrnn {

template <typename T>
struct StepArgs {
  int64_t rows, H;
  const T* gx; int64_t ldgx;      // (rows, G*H) x @ w_ih^T for this step (no bias)
  const T* gh; int64_t ldgh;      // (rows, G*H) h_prev @ w_hh^T (no bias)
  const T* b_ih; const T* b_hh;   // (G*H,), zeros when the layer has no bias (never null)
  const T* h_prev; T* h_out;      // (rows, H)
  const T* c_prev; T* c_out;      // (rows, H), LSTM only
  T* gates; int64_t ldgates;      // training: post-activation gates (rows, Gc*H), may alias gx;
                                  // inference: null
  T* y; int64_t ldy;              // (rows, H) with ld = D*H: this direction's output columns
  const uint8_t* active;          // (rows,) or null = all active
};

template <typename T>
struct StepBackArgs {
  int64_t rows, H;
  const T* gates; int64_t ldgates;  // cached post-activation gates (rows, Gc*H)
  const T* h_prev; const T* h_out;  // (rows, H)
  const T* c_prev; const T* c_out;  // (rows, H), LSTM only
  const T* dh; const T* dc;         // (rows, H) gradient carried into h_out / c_out from step t+1
  const T* dy; int64_t lddy;        // (rows, H) with ld = D*H: dL/dy at this step
  T* dgx; int64_t lddgx;            // (rows, G*H) dL/d(pre-activation), x side (W_ih, b_ih, dx)
  T* dgh; int64_t lddgh;            // (rows, G*H) h side (W_hh, b_hh, dh_prev); GRU only differs
                                    //   (n block times r); for the others it may alias dgx
  T* dh_prev; T* dc_prev;           // (rows, H) out: the direct part; the caller adds dgh @ w_hh
  const uint8_t* active;
};

template <typename T>
struct PointwiseKernels {
  void (*forward[4])(const StepArgs<T>&);      // indexed by Mode
  void (*backward[4])(const StepBackArgs<T>&);
};

const PointwiseKernels<float>& pointwise_kernels_f32();
const PointwiseKernels<double>& pointwise_kernels_f64();

template <typename T>
inline const PointwiseKernels<T>& pointwise_kernels() {
  if constexpr (sizeof(T) == 4) return pointwise_kernels_f32();
  else return pointwise_kernels_f64();
}

// Per-ISA entry points (defined in kernels_isa.cpp, one namespace per level).
#define FASTRNN_DECLARE_ISA(ns)                              \
  namespace ns {                                             \
  void fill_kernels(PointwiseKernels<float>* k);             \
  void fill_kernels(PointwiseKernels<double>* k);            \
  }
FASTRNN_DECLARE_ISA(avx512)
FASTRNN_DECLARE_ISA(avx2)
FASTRNN_DECLARE_ISA(base)
#undef FASTRNN_DECLARE_ISA

}  // namespace fastrnn
