// Pointwise recurrent-cell kernels (one time step, after the GEMMs), compiled once per ISA
// level in kernels_isa.cpp and picked at run time by simd.cpp.
//
// A step works on `rows` batch rows and on `n` hidden units starting where the pointers point
// (a thread's slice of [0, H)); gate g of a unit is at offset g*H from the row pointer, and
// state rows are H apart. Row pointers advance by their ld. `active[b] == 0` marks a padding step: the state passes through, y is 0, and in
// backward the gate gradients are 0 and the carries pass through unchanged.
#pragma once

#include <cstdint>

namespace fastrnn {

template <typename T>
struct StepArgs {
  int64_t rows, n, H;
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
  int64_t rows, n, H;
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

// The recurrent product of one step runs in our own register-blocked kernel on a packed copy
// of w_hh (no BLAS call inside the time loop, so it can run inside the persistent OpenMP
// region). A packed panel is (K, nr): nr consecutive output columns, K-major, zero-padded.
//   panel(M, K, A, lda, Bp, C, ldc, ncols, accumulate):
//     C[:M, :ncols] (+)= A (M, K) @ Bp (K, nr)[:, :ncols]
// A panel with ncols <= nr / 2 reads and multiplies only its first vector: it costs half.
// Its rows are blocked in groups of kPanelRowGroup (below).
template <typename T>
struct IsaKernels {
  void (*forward[4])(const StepArgs<T>&);      // indexed by Mode
  void (*backward[4])(const StepBackArgs<T>&);
  int nr;                                      // panel width: two SIMD vectors
  bool group_update;                           // forward steps may update per group of units
                                               //   (recurrent.cpp, step_groups)
  void (*panel)(int64_t M, int64_t K, const T* A, int64_t lda, const T* Bp, T* C, int64_t ldc,
                int64_t ncols, bool accumulate);
  // One row of A against a run of n packed panels (the product of a B = 1 step):
  //   C[off[i] + j] = a (K) . Bp_i[:, j] for j < cols[i], Bp_i = Bp + i*K*nr,
  // panel by panel from the first, or from the last when reverse. Each panel's sums are
  // those of panel() with M = 1, bit for bit.
  void (*row_panels)(int64_t K, const T* a, const T* Bp, int64_t n, const int64_t* off, const int64_t* cols,
                     bool reverse, T* C);
  // One panel of nr output columns: out (K, nr), out[k*nr + i] = W[i*ldw + k] for i < rows
  // (rows <= nr), 0 for the padding rows
  void (*pack_panel)(const T* W, int64_t ldw, int64_t rows, int64_t K, int64_t nr, T* out);
  // C (M, N) = A (M, K) @ W^T, W (N, K) row-major and unpacked: small products (cell steps)
  void (*gemm_nt_small)(int64_t M, int64_t N, int64_t K, const T* A, int64_t lda, const T* W,
                        int64_t ldw, T* C, int64_t ldc);
  // C[m*ldc + g*gsc + j*jsc] = A (M, K)[m] . W[g*gsw + j*ldw] (K) for g < G, j < R (G*R dot
  // products per row of A; a few rows of W each from G blocks, e.g. one unit of every gate)
  void (*dense_dots)(int64_t M, int64_t G, int64_t R, int64_t K, const T* A, int64_t lda, const T* W,
                     int64_t ldw, int64_t gsw, T* C, int64_t ldc, int64_t gsc, int64_t jsc);
};

// The panel kernel blocks rows from the top in groups of this many (a multiple of every ISA
// level's row block), and treats the last 8..15 rows of a call as one group. A call on a
// group therefore sums each row in the same order as a call on the rows around it: the lazy
// input projection of recurrent.cpp relies on it.
constexpr int64_t kPanelRowGroup = 8;

const IsaKernels<float>& isa_kernels_f32();
const IsaKernels<double>& isa_kernels_f64();

template <typename T>
inline const IsaKernels<T>& isa_kernels() {
  if constexpr (sizeof(T) == 4) return isa_kernels_f32();
  else return isa_kernels_f64();
}

// Per-ISA entry points (defined in kernels_isa.cpp, one namespace per level).
#define FASTRNN_DECLARE_ISA(ns)                              \
  namespace ns {                                             \
  void fill_kernels(IsaKernels<float>* k);                   \
  void fill_kernels(IsaKernels<double>* k);                  \
  }
FASTRNN_DECLARE_ISA(avx512)
FASTRNN_DECLARE_ISA(avx2)
FASTRNN_DECLARE_ISA(base)
#undef FASTRNN_DECLARE_ISA

}  // namespace fastrnn
