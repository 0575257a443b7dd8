// Attention kernels compiled once per ISA level (FASTRNN_ISA = avx512 | avx2 | base; see
// CMakeLists.txt) into namespace fastrnn::FASTRNN_ISA. Notes and shapes: attention.h.
//
// Everything here runs inside OpenMP regions and therefore never calls the BLAS: the block
// products use one register-blocked micro-kernel written with GCC vector extensions (the
// vector width follows the ISA flags of this translation unit):
//     C (M x N) = alpha * A (M x K) B (K x N)      or      C += A B
// A is read element by element through (row, column) strides, so A^T costs nothing; B and C
// are padded scratch panels (rows of a multiple of the vector width), so every load is whole.
//
// Tiles: BQ query rows x BK keys. A tile's scores are q_i k_j^T (BQ x BK); keys are packed
// per block as K^T (E x BKP) for the scores, K (BK x Ep) for dQ and V^T (Ev x BKP) for dP.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <cstdlib>
#include <limits>
#include <new>
#include <vector>

#include "activations.h"
#include "attention.h"

#ifndef FASTRNN_ISA
#error "FASTRNN_ISA must name the ISA level"
#endif

#if defined(__AVX512F__)
#define FR_VBYTES 64
#define FR_MR 6
#define FR_NV 4
#elif defined(__AVX2__)
#define FR_VBYTES 32
#define FR_MR 6
#define FR_NV 2
#else
#define FR_VBYTES 16
#define FR_MR 6
#define FR_NV 2
#endif

namespace fastrnn {
namespace FASTRNN_ISA {
namespace {

using attn::MaskBatch;
using attn::MatBatch;
using attn::MutMatBatch;
using attn::SdpaProblem;

// ------------------------------------------------------------------------------ vectors

template <typename T> struct VecOf;
template <> struct VecOf<float> {
  typedef float type __attribute__((vector_size(FR_VBYTES)));
};
template <> struct VecOf<double> {
  typedef double type __attribute__((vector_size(FR_VBYTES)));
};
template <typename T> using V = typename VecOf<T>::type;
template <typename T> constexpr int64_t W = FR_VBYTES / sizeof(T);

template <typename T> inline V<T> vload(const T* p) { V<T> v; std::memcpy(&v, p, sizeof v); return v; }
template <typename T> inline void vstore(T* p, V<T> v) { std::memcpy(p, &v, sizeof v); }
template <typename T> inline V<T> splat(T x) { return V<T>{} + x; }
template <typename T> inline V<T> vmax(V<T> a, V<T> b) { return a > b ? a : b; }
template <typename T> inline T hsum(V<T> v) {
  T s = T(0);
  for (int64_t i = 0; i < W<T>; ++i) s += v[i];
  return s;
}

inline int64_t round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

constexpr float kInfF = std::numeric_limits<float>::infinity();

// exp for float vectors: activations.h's exp_approx_vec (Cephes polynomial, ~1 ulp) with exact
// 0 below the normal range (so masked scores, -inf, give exactly 0). NaN stays NaN.
inline V<float> vexp(V<float> x) { return x < splat(-87.0f) ? V<float>{} : exp_approx_vec(x); }

// s[c] = exp(s[c] - shift) for c < n (n a multiple of W); returns the sum.
inline float exp_shift_sum(float* s, float shift, int64_t n) {
  V<float> acc{};
  const V<float> sh = splat(shift);
  for (int64_t c = 0; c < n; c += W<float>) {
    const V<float> e = vexp(vload(s + c) - sh);
    vstore(s + c, e);
    acc += e;
  }
  return hsum<float>(acc);
}
// double: the C library's exp (the float64 results are compared with NumPy to 1e-10).
inline double exp_shift_sum(double* s, double shift, int64_t n) {
  double acc = 0.0;
  for (int64_t c = 0; c < n; ++c) {
    const double e = std::exp(s[c] - shift);
    s[c] = e;
    acc += e;
  }
  return acc;
}

// ------------------------------------------------------------------------------ micro-kernel

// C rows m < MR, columns NV*W: ACC ? C += A B : C = alpha * A B, over k < K.
// A(m, k) = A[m*sam + k*sak].
template <typename T, bool ACC, int MR, int NV>
void ukernel(int64_t K, const T* __restrict A, int64_t sam, int64_t sak, const T* __restrict B, int64_t ldb,
             T* __restrict C, int64_t ldc, T alpha) {
  V<T> c[MR][NV];
#pragma GCC unroll 8
  for (int m = 0; m < MR; ++m)
#pragma GCC unroll 8
    for (int n = 0; n < NV; ++n) c[m][n] = ACC ? vload(C + m * ldc + n * W<T>) : V<T>{};
  for (int64_t k = 0; k < K; ++k) {
    V<T> b[NV];
#pragma GCC unroll 8
    for (int n = 0; n < NV; ++n) b[n] = vload(B + k * ldb + n * W<T>);
    const T* a = A + k * sak;
#pragma GCC unroll 8
    for (int m = 0; m < MR; ++m) {
      const V<T> av = splat(a[m * sam]);
#pragma GCC unroll 8
      for (int n = 0; n < NV; ++n) c[m][n] += av * b[n];
    }
  }
#pragma GCC unroll 8
  for (int m = 0; m < MR; ++m)
#pragma GCC unroll 8
    for (int n = 0; n < NV; ++n) vstore(C + m * ldc + n * W<T>, ACC ? c[m][n] : c[m][n] * alpha);
}

template <typename T, bool ACC, int NV>
inline void ukernel_rows(int mr, int64_t K, const T* A, int64_t sam, int64_t sak, const T* B, int64_t ldb, T* C,
                         int64_t ldc, T alpha) {
  switch (mr) {
    case 1: ukernel<T, ACC, 1, NV>(K, A, sam, sak, B, ldb, C, ldc, alpha); break;
    case 2: ukernel<T, ACC, 2, NV>(K, A, sam, sak, B, ldb, C, ldc, alpha); break;
    case 3: ukernel<T, ACC, 3, NV>(K, A, sam, sak, B, ldb, C, ldc, alpha); break;
    case 4: ukernel<T, ACC, 4, NV>(K, A, sam, sak, B, ldb, C, ldc, alpha); break;
    case 5: ukernel<T, ACC, 5, NV>(K, A, sam, sak, B, ldb, C, ldc, alpha); break;
    default: ukernel<T, ACC, FR_MR, NV>(K, A, sam, sak, B, ldb, C, ldc, alpha); break;
  }
}
static_assert(FR_MR == 6, "ukernel_rows handles up to 6 rows");

// C (M x N, N padded to whole vectors in B and C) = alpha * A B, or C += A B.
template <typename T, bool ACC>
void tile_gemm(int64_t M, int64_t N, int64_t K, const T* A, int64_t sam, int64_t sak, const T* B, int64_t ldb,
               T* C, int64_t ldc, T alpha = T(1)) {
  const int64_t nvec = (N + W<T> - 1) / W<T>;
  for (int64_t n0 = 0; n0 < nvec; n0 += FR_NV) {
    const int nv = static_cast<int>(std::min<int64_t>(FR_NV, nvec - n0));
    const T* Bn = B + n0 * W<T>;
    T* Cn = C + n0 * W<T>;
    for (int64_t m0 = 0; m0 < M; m0 += FR_MR) {
      const int mr = static_cast<int>(std::min<int64_t>(FR_MR, M - m0));
      const T* Am = A + m0 * sam;
      T* Cm = Cn + m0 * ldc;
      switch (nv) {
#if FR_NV >= 4
        case 4: ukernel_rows<T, ACC, 4>(mr, K, Am, sam, sak, Bn, ldb, Cm, ldc, alpha); break;
        case 3: ukernel_rows<T, ACC, 3>(mr, K, Am, sam, sak, Bn, ldb, Cm, ldc, alpha); break;
#endif
        case 2: ukernel_rows<T, ACC, 2>(mr, K, Am, sam, sak, Bn, ldb, Cm, ldc, alpha); break;
        default: ukernel_rows<T, ACC, 1>(mr, K, Am, sam, sak, Bn, ldb, Cm, ldc, alpha); break;
      }
    }
  }
}

// ------------------------------------------------------------------------------ packing

// dst (cols x ldd) = src (rows x cols, row stride ld)^T; columns rows..ldd-1 of dst zeroed.
template <typename T>
void pack_transposed(const T* src, int64_t ld, int64_t rows, int64_t cols, T* dst, int64_t ldd) {
  constexpr int64_t kb = 8;
  for (int64_t e0 = 0; e0 < cols; e0 += kb) {
    const int64_t e1 = std::min(cols, e0 + kb);
    for (int64_t r = 0; r < rows; ++r) {
      const T* s = src + r * ld;
      for (int64_t e = e0; e < e1; ++e) dst[e * ldd + r] = s[e];
    }
  }
  if (rows < ldd)
    for (int64_t e = 0; e < cols; ++e) std::fill(dst + e * ldd + rows, dst + (e + 1) * ldd, T(0));
}

// dst (rows x ldd) = src (rows x cols, row stride ld), columns cols..ldd-1 zeroed.
template <typename T>
void pack_rows(const T* src, int64_t ld, int64_t rows, int64_t cols, T* dst, int64_t ldd) {
  for (int64_t r = 0; r < rows; ++r) {
    std::memcpy(dst + r * ldd, src + r * ld, sizeof(T) * static_cast<size_t>(cols));
    std::fill(dst + r * ldd + cols, dst + (r + 1) * ldd, T(0));
  }
}

// ------------------------------------------------------------------------------ masks

// Scores row s[0..nc) of query row i, keys j0..j0+nc-1 of batch b: add / apply the masks and
// causal; s[nc..ncp) = -inf (padding).
template <typename T>
inline void mask_row(const SdpaProblem<T>& p, int64_t b, int64_t i, int64_t j0, int64_t nc, int64_t ncp, T* s) {
  const T ninf = -std::numeric_limits<T>::infinity();
  for (int mi = 0; mi < 2; ++mi) {
    const MaskBatch<T>& m = p.mask[mi];
    if (m.add) {
      const T* mp = m.add + m.off[b] + i * m.ld_row + j0 * m.ld_col;
      if (m.ld_col == 1) {
#pragma omp simd
        for (int64_t c = 0; c < nc; ++c) s[c] += mp[c];
      } else {
        for (int64_t c = 0; c < nc; ++c) s[c] += mp[c * m.ld_col];
      }
    } else if (m.flag) {
      const uint8_t* mp = m.flag + m.off[b] + i * m.ld_row + j0 * m.ld_col;
      const bool allows = m.flag_allows;
      for (int64_t c = 0; c < nc; ++c)
        if ((mp[c * m.ld_col] != 0) != allows) s[c] = ninf;
    }
  }
  if (p.causal)
    for (int64_t c = std::max<int64_t>(i - j0 + 1, 0); c < nc; ++c) s[c] = ninf;
  for (int64_t c = nc; c < ncp; ++c) s[c] = ninf;
}

// Whether a tile needs mask_row: masks, padding columns, or causal with some key j > some row i.
template <typename T>
inline bool needs_mask(const SdpaProblem<T>& p, int64_t i0, int64_t j0, int64_t nc, int64_t ncp) {
  return p.mask[0].present() || p.mask[1].present() || nc < ncp || (p.causal && j0 + nc - 1 > i0);
}

// ------------------------------------------------------------------------------ sizes

constexpr int64_t BQ = 64;       // query rows per tile
constexpr int64_t BK = 64;       // keys per tile
constexpr int64_t QCHUNK = 256;  // query rows per task (forward, backward dQ sweep)
constexpr int64_t KCHUNK = 256;  // keys per task (backward dK/dV sweep)

template <typename T>
struct Dims {
  int64_t E, Ev, Ep, Evp, BKP;
  explicit Dims(const SdpaProblem<T>& p)
      : E(p.E), Ev(p.Ev), Ep(round_up(std::max<int64_t>(p.E, 1), W<T>)),
        Evp(round_up(std::max<int64_t>(p.Ev, 1), W<T>)), BKP(round_up(BK, W<T>)) {}
};

// Key block j0..j0+nc-1 of batch b, packed for the backward / weights tiles.
template <typename T>
struct KeyBlock {
  T* Kt;   // (E, BKP)   scores
  T* Kr;   // (BK, Ep)   backward dQ
  T* Vt;   // (Ev, BKP)  backward dP
};

// Per-thread scratch: `threads` regions of `per` elements, each 64-byte aligned. Allocated on the
// calling thread before a parallel region (an allocation failure is a std::bad_alloc there).
template <typename T>
class Scratch {
 public:
  Scratch(int64_t per, int threads) : per_(round_up(std::max<int64_t>(per, 1), 64 / sizeof(T))) {
    const size_t bytes = sizeof(T) * static_cast<size_t>(per_) * static_cast<size_t>(threads);
    ptr_ = static_cast<T*>(std::aligned_alloc(64, (bytes + 63) / 64 * 64));
    if (!ptr_) throw std::bad_alloc();
  }
  ~Scratch() { std::free(ptr_); }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  T* thread(int id) const { return ptr_ + per_ * id; }
 private:
  int64_t per_;
  T* ptr_ = nullptr;
};

inline int team_size(int threads, int64_t tasks) {
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(threads, tasks)));
}

// Below this much work (~30 us on one core) a call runs on the calling thread: an OpenMP
// fork/join costs more than it saves (e.g. one decoder step attending over its memory).
constexpr double kMinParallelFlops = 4e6;

template <typename T>
int sdpa_team(const SdpaProblem<T>& p, int64_t tasks, double passes) {
  const double flops = 2.0 * passes * static_cast<double>(p.nbatch) * static_cast<double>(p.Lq) *
                       static_cast<double>(p.S) * static_cast<double>(p.E + p.Ev) * (p.causal ? 0.5 : 1.0);
  return flops < kMinParallelFlops ? 1 : team_size(p.threads, tasks);
}

// ------------------------------------------------------------------------------ forward
// Scores are computed TRANSPOSED, S^T = K_j Q_i^T (keys x queries): Q^T is packed once per
// task and K, V are read in place, and the online softmax runs down the columns (one query per
// lane), so the running max / sum are whole-vector operations with no horizontal reductions.

// v - m, exp'ed lane by lane (float: the vector exp; double: the C library's).
inline V<float> exp_diff(V<float> x, V<float> m) { return vexp(x - m); }
inline V<double> exp_diff(V<double> x, V<double> m) {
  V<double> r;
  for (int64_t i = 0; i < W<double>; ++i) r[i] = std::exp(x[i] - m[i]);
  return r;
}

// Masks and causal on a transposed tile: st (nc keys x ld) columns r < nr are query rows i0 + r.
template <typename T>
void mask_tile_t(const SdpaProblem<T>& p, int64_t b, int64_t i0, int64_t nr, int64_t j0, int64_t nc, T* st,
                 int64_t ld) {
  const T ninf = -std::numeric_limits<T>::infinity();
  for (int mi = 0; mi < 2; ++mi) {
    const MaskBatch<T>& m = p.mask[mi];
    if (!m.present()) continue;
    for (int64_t c = 0; c < nc; ++c) {
      T* row = st + c * ld;
      const int64_t base = m.off[b] + i0 * m.ld_row + (j0 + c) * m.ld_col;
      if (m.add) {
        const T* mp = m.add + base;
        for (int64_t r = 0; r < nr; ++r) row[r] += mp[r * m.ld_row];
      } else {
        const uint8_t* mp = m.flag + base;
        const bool allows = m.flag_allows;
        for (int64_t r = 0; r < nr; ++r)
          if ((mp[r * m.ld_row] != 0) != allows) row[r] = ninf;
      }
    }
  }
  if (p.causal && j0 + nc - 1 > i0)  // key j0 + c is masked for rows i0 + r < j0 + c
    for (int64_t c = 0; c < nc; ++c) {
      T* row = st + c * ld;
      const int64_t upto = std::min(nr, j0 + c - i0);
      for (int64_t r = 0; r < upto; ++r) row[r] = ninf;
    }
}

template <typename T>
void forward_impl(const SdpaProblem<T>& p, const MutMatBatch<T>& out, T* lse) {
  const Dims<T> d(p);
  const int64_t Lq = p.Lq, S = p.S, E = p.E, Ev = p.Ev, Evp = d.Evp;
  const int64_t nchunks = (Lq + QCHUNK - 1) / QCHUNK;
  const int64_t tasks = p.nbatch * nchunks;
  if (tasks == 0) return;
  const int nt = sdpa_team(p, tasks, 1.0);
  const bool v_direct = Ev % W<T> == 0;  // whole vectors per V row: read V in place
  const int64_t QCP = QCHUNK + 64 / static_cast<int64_t>(sizeof(T));  // Q^T row stride: off powers of two
  // per-thread scratch: Q^T (E, QCP), O acc (QCHUNK, Evp), m, l, alpha (QCHUNK), S^T (BK, BQ), V (BK, Evp)
  const int64_t per = std::max<int64_t>(E, 1) * QCP + QCHUNK * Evp + 3 * QCHUNK + BK * BQ + (v_direct ? 0 : BK * Evp);
  Scratch<T> scratch(per, nt);
  const T ninf = -std::numeric_limits<T>::infinity();

#pragma omp parallel num_threads(nt)
  {
    T* QT = scratch.thread(omp_get_thread_num());
    T* O = QT + std::max<int64_t>(E, 1) * QCP;
    T* mrow = O + QCHUNK * Evp;
    T* lrow = mrow + QCHUNK;
    T* arow = lrow + QCHUNK;
    T* ST = arow + QCHUNK;
    T* Vp = ST + BK * BQ;
#pragma omp for schedule(dynamic, 1) nowait  // the region's closing barrier suffices
    for (int64_t task = 0; task < tasks; ++task) {
      const int64_t b = task / nchunks;
      const int64_t R0 = (task % nchunks) * QCHUNK, R1 = std::min(Lq, R0 + QCHUNK);
      const T* k = p.k.at(b);
      const T* v = p.v.at(b);
      pack_transposed(p.q.at(b) + R0 * p.q.ld, p.q.ld, R1 - R0, E, QT, QCP);
      std::fill(O, O + (R1 - R0) * Evp, T(0));
      std::fill(mrow, mrow + QCHUNK, ninf);
      std::fill(lrow, lrow + QCHUNK, T(0));
      const int64_t kend = p.causal ? std::min(S, R1) : S;
      for (int64_t j0 = 0; j0 < kend; j0 += BK) {
        const int64_t nc = std::min(BK, S - j0);
        const T* vb = v + j0 * p.v.ld;
        int64_t ldvb = p.v.ld;
        if (!v_direct) {
          pack_rows(vb, p.v.ld, nc, Ev, Vp, Evp);
          vb = Vp;
          ldvb = Evp;
        }
        for (int64_t i0 = R0; i0 < R1; i0 += BQ) {
          const int64_t nr = std::min(BQ, R1 - i0);
          if (p.causal && j0 > i0 + nr - 1) continue;  // every key after every row
          const int64_t c0 = i0 - R0;                    // this block's first column in Q^T, m, l
          // S^T (nc x nr) = scale * K_j Q_i^T
          tile_gemm<T, false>(nc, nr, E, k + j0 * p.k.ld, p.k.ld, 1, QT + c0, QCP, ST, BQ, p.scale);
          mask_tile_t(p, b, i0, nr, j0, nc, ST, BQ);
          // online softmax down the columns (one query per lane)
          const int64_t ncv = round_up(nr, W<T>);
          for (int64_t r = 0; r < ncv; r += W<T>) {
            V<T> mx = splat(ninf);
            for (int64_t c = 0; c < nc; ++c) mx = vmax<T>(mx, vload(ST + c * BQ + r));
            const V<T> m_old = vload(mrow + c0 + r);
            const V<T> m_new = vmax<T>(m_old, mx);
            const V<T> m_use = m_new == splat(ninf) ? V<T>{} : m_new;  // nothing to attend to yet: p = 0
            V<T> sum{};
            for (int64_t c = 0; c < nc; ++c) {
              const V<T> e = exp_diff(vload(ST + c * BQ + r), m_use);
              vstore(ST + c * BQ + r, e);
              sum += e;
            }
            const V<T> alpha = exp_diff(m_old, m_use);  // 0 when m_old = -inf
            vstore(lrow + c0 + r, vload(lrow + c0 + r) * alpha + sum);
            vstore(mrow + c0 + r, m_new);
            vstore(arow + r, alpha);
          }
          for (int64_t r = 0; r < nr; ++r) {  // rescale the rows whose max moved
            const T alpha = arow[r];
            if (alpha == T(1)) continue;
            T* o = O + (c0 + r) * Evp;
            const V<T> av = splat(alpha);
            for (int64_t c = 0; c < Evp; c += W<T>) vstore(o + c, vload(o + c) * av);
          }
          // O_i += P V_j, P = (S^T)^T read through strides
          tile_gemm<T, true>(nr, Ev, nc, ST, 1, BQ, vb, ldvb, O + c0 * Evp, Evp);
        }
      }
      T* o_b = out.at(b);
      for (int64_t r = R0; r < R1; ++r) {
        const T l = lrow[r - R0];
        T* dst = o_b + r * out.ld;
        const T* src = O + (r - R0) * Evp;
        if (l > T(0)) {
          const T inv = T(1) / l;
          for (int64_t c = 0; c < Ev; ++c) dst[c] = src[c] * inv;
          if (lse) lse[b * Lq + r] = mrow[r - R0] + std::log(l);
        } else {  // fully masked row (or S == 0): 0 output, lse = +inf
          for (int64_t c = 0; c < Ev; ++c) dst[c] = T(0);
          if (lse) lse[b * Lq + r] = std::numeric_limits<T>::infinity();
        }
      }
    }
  }
}

// ------------------------------------------------------------------------------ probabilities

// P (nr x BKP) of tile (b, rows i0.., keys j0..j0+nc-1) from the logsumexp: scores, masks,
// exp(s - lse); masked entries, padding and fully masked rows (lse = +inf) give 0.
template <typename T>
void probs_tile(const SdpaProblem<T>& p, const Dims<T>& d, int64_t b, int64_t i0, int64_t nr, int64_t j0,
                int64_t nc, const T* Kt, const T* lse_b, T* P) {
  const int64_t BKP = d.BKP;
  tile_gemm<T, false>(nr, nc, p.E, p.q.at(b) + i0 * p.q.ld, p.q.ld, 1, Kt, BKP, P, BKP, p.scale);
  const bool masked = needs_mask(p, i0, j0, nc, BKP);
  for (int64_t r = 0; r < nr; ++r) {
    T* s = P + r * BKP;
    const T l = lse_b[i0 + r];
    if (l == std::numeric_limits<T>::infinity()) {
      std::fill(s, s + BKP, T(0));
      continue;
    }
    if (masked) mask_row(p, b, i0 + r, j0, nc, BKP, s);
    exp_shift_sum(s, l, BKP);
  }
}

// ------------------------------------------------------------------------------ backward

template <typename T>
struct BackCtx {
  const SdpaProblem<T>& p;
  const Dims<T>& d;
  const MatBatch<T>& out;
  const T* lse;
  const MatBatch<T>& dout;
};

// D[r] = dout[r] . out[r] for rows r0..r1-1 of batch b (into D[0..]).
template <typename T>
void row_dots(const BackCtx<T>& c, int64_t b, int64_t r0, int64_t r1, T* D) {
  const T* o = c.out.at(b);
  const T* g = c.dout.at(b);
  for (int64_t r = r0; r < r1; ++r) {
    const T* orow = o + r * c.out.ld;
    const T* grow = g + r * c.dout.ld;
    T s = T(0);
    for (int64_t e = 0; e < c.p.Ev; ++e) s += orow[e] * grow[e];
    D[r - r0] = s;
  }
}

// One (query block, key block) tile of backward. Qp/dOp: padded Q and dO rows of this query
// block; dQacc: its dQ accumulator rows (or null); dKacc/dVacc: the key block's (or null).
template <typename T>
void back_tile(const BackCtx<T>& c, int64_t b, int64_t i0, int64_t nr, int64_t j0, int64_t nc, const KeyBlock<T>& kb,
               const T* D, const T* Qp, const T* dOp, T* P, T* dS, T* dQacc, T* dKacc, T* dVacc) {
  const SdpaProblem<T>& p = c.p;
  const int64_t BKP = c.d.BKP, Ep = c.d.Ep, Evp = c.d.Evp;
  probs_tile(p, c.d, b, i0, nr, j0, nc, kb.Kt, c.lse + b * p.Lq, P);
  // forward: out = P V  ->  dV += P^T dO, dP = dO V^T
  if (dVacc) tile_gemm<T, true>(nc, p.Ev, nr, P, 1, BKP, dOp, Evp, dVacc, Evp);
  tile_gemm<T, false>(nr, nc, p.Ev, c.dout.at(b) + i0 * c.dout.ld, c.dout.ld, 1, kb.Vt, BKP, dS, BKP);
  // forward: P = softmax(scores)  ->  dS = P * (dP - rowsum(dO * O))
  const int64_t ncv = round_up(nc, W<T>);  // dS columns >= nc are never read
  for (int64_t r = 0; r < nr; ++r) {
    T* ds = dS + r * BKP;
    const T* pr = P + r * BKP;
    const V<T> dr = splat(D[r]);
    for (int64_t j = 0; j < ncv; j += W<T>) vstore(ds + j, vload(pr + j) * (vload(ds + j) - dr));
  }
  // forward: scores = Q K^T * scale  ->  dQ += dS K, dK += dS^T Q   (scale applied at the end)
  if (dQacc) tile_gemm<T, true>(nr, p.E, nc, dS, BKP, 1, kb.Kr, Ep, dQacc, Ep);
  if (dKacc) tile_gemm<T, true>(nc, p.E, nr, dS, 1, BKP, Qp, Ep, dKacc, Ep);
}

template <typename T>
void write_scaled(const T* src, int64_t lds, int64_t rows, int64_t cols, T scale, T* dst, int64_t ldd) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t e = 0; e < cols; ++e) dst[r * ldd + e] = src[r * lds + e] * scale;
}

template <typename T>
void backward_impl(const SdpaProblem<T>& p, const MatBatch<T>& out, const T* lse, const MatBatch<T>& dout,
                   const MutMatBatch<T>& dq, const MutMatBatch<T>& dk, const MutMatBatch<T>& dv) {
  const Dims<T> d(p);
  const BackCtx<T> c{p, d, out, lse, dout};
  const int64_t Lq = p.Lq, S = p.S, E = p.E, Ev = p.Ev, Ep = d.Ep, Evp = d.Evp, BKP = d.BKP;
  const int64_t E1 = std::max<int64_t>(E, 1), Ev1 = std::max<int64_t>(Ev, 1);
  if (p.nbatch == 0) return;
  // Zero-size corners: nothing to accumulate, gradients are 0.
  if (Lq == 0 || S == 0) {
    for (int64_t b = 0; b < p.nbatch; ++b) {
      for (int64_t r = 0; r < Lq; ++r) std::fill(dq.at(b) + r * dq.ld, dq.at(b) + r * dq.ld + E, T(0));
      for (int64_t r = 0; r < S; ++r) {
        std::fill(dk.at(b) + r * dk.ld, dk.at(b) + r * dk.ld + E, T(0));
        std::fill(dv.at(b) + r * dv.ld, dv.at(b) + r * dv.ld + Ev, T(0));
      }
    }
    return;
  }
  const int64_t most_tasks = p.nbatch * ((std::max(Lq, S) + QCHUNK - 1) / QCHUNK);
  const int threads = sdpa_team(p, most_tasks, 2.5) > 1 ? p.threads : 1;  // 1: tiny problem
  const bool one_sweep = threads == 1 || (p.nbatch >= threads && (p.nbatch % threads == 0 || p.nbatch >= 4 * threads));
  // key-block packing and tile scratch, common to every mode
  const int64_t per_key = E1 * BKP + BK * Ep + Ev1 * BKP + 2 * BQ * BKP;

  auto key_block = [&](T* base) {
    KeyBlock<T> kb;
    kb.Kt = base;
    kb.Kr = kb.Kt + E1 * BKP;
    kb.Vt = kb.Kr + BK * Ep;
    return kb;
  };
  auto pack_keys = [&](const KeyBlock<T>& kb, int64_t b, int64_t j0, int64_t nc) {
    const T* k = p.k.at(b) + j0 * p.k.ld;
    pack_transposed(k, p.k.ld, nc, E, kb.Kt, BKP);
    pack_rows(k, p.k.ld, nc, E, kb.Kr, Ep);
    pack_transposed(p.v.at(b) + j0 * p.v.ld, p.v.ld, nc, Ev, kb.Vt, BKP);
  };
  // dK / dV of key block j0 for batch b over all its query blocks; also dQ when dQacc is given
  // (dQacc, Qp, dOp, D: whole-batch arrays, rows 0..Lq-1).
  auto key_sweep = [&](const KeyBlock<T>& kb, T* P, T* dS, T* dKacc, T* dVacc, int64_t b, int64_t j0,
                       const T* Qp, const T* dOp, const T* D, T* dQacc) {
    const int64_t nc = std::min(BK, S - j0);
    pack_keys(kb, b, j0, nc);
    std::fill(dKacc, dKacc + BK * Ep, T(0));
    std::fill(dVacc, dVacc + BK * Evp, T(0));
    const int64_t istart = p.causal ? std::min(Lq, j0 / BQ * BQ) : 0;
    for (int64_t i0 = istart; i0 < Lq; i0 += BQ) {
      const int64_t nr = std::min(BQ, Lq - i0);
      if (p.causal && j0 > i0 + nr - 1) continue;
      back_tile<T>(c, b, i0, nr, j0, nc, kb, D + i0, Qp + i0 * Ep, dOp + i0 * Evp, P, dS,
                dQacc ? dQacc + i0 * Ep : nullptr, dKacc, dVacc);
    }
    write_scaled(dKacc, Ep, nc, E, p.scale, dk.at(b) + j0 * dk.ld, dk.ld);
    write_scaled(dVacc, Evp, nc, Ev, T(1), dv.at(b) + j0 * dv.ld, dv.ld);
  };
  auto pack_batch_rows = [&](int64_t b, T* Qp, T* dOp, T* D) {
    pack_rows(p.q.at(b), p.q.ld, Lq, E, Qp, Ep);
    pack_rows(dout.at(b), dout.ld, Lq, Ev, dOp, Evp);
    row_dots(c, b, 0, Lq, D);
  };

  if (one_sweep) {
    const int nt = team_size(threads, p.nbatch);
    const int64_t per = per_key + BK * Ep + BK * Evp + Lq * (Ep + Evp + 1 + Ep) + 16;
    Scratch<T> scratch(per, nt);
#pragma omp parallel num_threads(nt)
    {
      T* base = scratch.thread(omp_get_thread_num());
      const KeyBlock<T> kb = key_block(base);
      T* P = kb.Vt + Ev1 * BKP;
      T* dS = P + BQ * BKP;
      T* dKacc = dS + BQ * BKP;
      T* dVacc = dKacc + BK * Ep;
      T* Qp = dVacc + BK * Evp;
      T* dOp = Qp + Lq * Ep;
      T* dQacc = dOp + Lq * Evp;
      T* D = dQacc + Lq * Ep;
#pragma omp for schedule(dynamic, 1) nowait  // the region's closing barrier suffices
      for (int64_t b = 0; b < p.nbatch; ++b) {
        pack_batch_rows(b, Qp, dOp, D);
        std::fill(dQacc, dQacc + Lq * Ep, T(0));
        for (int64_t j0 = 0; j0 < S; j0 += BK) key_sweep(kb, P, dS, dKacc, dVacc, b, j0, Qp, dOp, D, dQacc);
        write_scaled(dQacc, Ep, Lq, E, p.scale, dq.at(b), dq.ld);
      }
    }
    return;
  }

  // Two sweeps. 1) dK, dV: tasks (b, key chunk).
  {
    const int64_t kchunks = (S + KCHUNK - 1) / KCHUNK;
    const int64_t tasks = p.nbatch * kchunks;
    const int nt = team_size(threads, tasks);
    const int64_t per = per_key + BK * Ep + BK * Evp + Lq * (Ep + Evp + 1) + 16;
    Scratch<T> scratch(per, nt);
#pragma omp parallel num_threads(nt)
    {
      T* base = scratch.thread(omp_get_thread_num());
      const KeyBlock<T> kb = key_block(base);
      T* P = kb.Vt + Ev1 * BKP;
      T* dS = P + BQ * BKP;
      T* dKacc = dS + BQ * BKP;
      T* dVacc = dKacc + BK * Ep;
      T* Qp = dVacc + BK * Evp;
      T* dOp = Qp + Lq * Ep;
      T* D = dOp + Lq * Evp;
      int64_t packed_b = -1;
#pragma omp for schedule(dynamic, 1) nowait  // the region's closing barrier suffices
      for (int64_t task = 0; task < tasks; ++task) {
        const int64_t b = task / kchunks;
        const int64_t J0 = (task % kchunks) * KCHUNK, J1 = std::min(S, J0 + KCHUNK);
        if (b != packed_b) {
          pack_batch_rows(b, Qp, dOp, D);
          packed_b = b;
        }
        for (int64_t j0 = J0; j0 < J1; j0 += BK) key_sweep(kb, P, dS, dKacc, dVacc, b, j0, Qp, dOp, D, nullptr);
      }
    }
  }
  // 2) dQ: tasks (b, query chunk); the same tiles, in the same key order.
  {
    const int64_t qchunks = (Lq + QCHUNK - 1) / QCHUNK;
    const int64_t tasks = p.nbatch * qchunks;
    const int nt = team_size(threads, tasks);
    const int64_t per = per_key + QCHUNK * (Ep + 1) + 16;
    Scratch<T> scratch(per, nt);
#pragma omp parallel num_threads(nt)
    {
      T* base = scratch.thread(omp_get_thread_num());
      const KeyBlock<T> kb = key_block(base);
      T* P = kb.Vt + Ev1 * BKP;
      T* dS = P + BQ * BKP;
      T* dQacc = dS + BQ * BKP;
      T* D = dQacc + QCHUNK * Ep;
#pragma omp for schedule(dynamic, 1) nowait  // the region's closing barrier suffices
      for (int64_t task = 0; task < tasks; ++task) {
        const int64_t b = task / qchunks;
        const int64_t R0 = (task % qchunks) * QCHUNK, R1 = std::min(Lq, R0 + QCHUNK);
        row_dots(c, b, R0, R1, D);
        std::fill(dQacc, dQacc + (R1 - R0) * Ep, T(0));
        const int64_t kend = p.causal ? std::min(S, R1) : S;
        for (int64_t j0 = 0; j0 < kend; j0 += BK) {
          const int64_t nc = std::min(BK, S - j0);
          pack_keys(kb, b, j0, nc);
          for (int64_t i0 = R0; i0 < R1; i0 += BQ) {
            const int64_t nr = std::min(BQ, R1 - i0);
            if (p.causal && j0 > i0 + nr - 1) continue;
            back_tile<T>(c, b, i0, nr, j0, nc, kb, D + (i0 - R0), nullptr, nullptr, P, dS, dQacc + (i0 - R0) * Ep,
                      nullptr, nullptr);
          }
        }
        write_scaled(dQacc, Ep, R1 - R0, E, p.scale, dq.at(b) + R0 * dq.ld, dq.ld);
      }
    }
  }
}

// ------------------------------------------------------------------------------ weights

template <typename T>
void weights_impl(const SdpaProblem<T>& p, const T* lse, T* weights, int64_t group) {
  const Dims<T> d(p);
  const int64_t Lq = p.Lq, S = p.S, E = p.E, BKP = d.BKP;
  const int64_t nout = group > 0 ? p.nbatch / group : 0;
  const int64_t nchunks = (Lq + QCHUNK - 1) / QCHUNK;
  const int64_t tasks = nout * nchunks;
  if (tasks == 0 || S == 0) return;  // weights were zero-initialised by the caller
  const int nt = sdpa_team(p, tasks, 0.5);
  const int64_t per = std::max<int64_t>(E, 1) * BKP + BQ * BKP + 16;
  Scratch<T> scratch(per, nt);
  const T inv_group = T(1) / T(group);
#pragma omp parallel num_threads(nt)
  {
    T* Kt = scratch.thread(omp_get_thread_num());
    T* P = Kt + std::max<int64_t>(E, 1) * BKP;
#pragma omp for schedule(dynamic, 1) nowait  // the region's closing barrier suffices
    for (int64_t task = 0; task < tasks; ++task) {
      const int64_t n = task / nchunks;
      const int64_t R0 = (task % nchunks) * QCHUNK, R1 = std::min(Lq, R0 + QCHUNK);
      T* w = weights + n * Lq * S;
      for (int64_t g = 0; g < group; ++g) {
        const int64_t b = n * group + g;
        const int64_t kend = p.causal ? std::min(S, R1) : S;
        for (int64_t j0 = 0; j0 < kend; j0 += BK) {
          const int64_t nc = std::min(BK, S - j0);
          pack_transposed(p.k.at(b) + j0 * p.k.ld, p.k.ld, nc, E, Kt, BKP);
          for (int64_t i0 = R0; i0 < R1; i0 += BQ) {
            const int64_t nr = std::min(BQ, R1 - i0);
            if (p.causal && j0 > i0 + nr - 1) continue;
            probs_tile(p, d, b, i0, nr, j0, nc, Kt, lse + b * Lq, P);
            for (int64_t r = 0; r < nr; ++r) {
              T* dst = w + (i0 + r) * S + j0;
              const T* src = P + r * BKP;
              if (group == 1) {
                std::memcpy(dst, src, sizeof(T) * static_cast<size_t>(nc));
              } else {
                for (int64_t j = 0; j < nc; ++j) dst[j] += src[j];
              }
            }
          }
        }
      }
      if (group > 1)
        for (int64_t r = R0; r < R1; ++r)
          for (int64_t j = 0; j < S; ++j) w[r * S + j] *= inv_group;
    }
  }
}

// ------------------------------------------------------------------------------ additive

template <typename T> inline T tanh_val(T x) { return tanh_(x); }

template <typename T>
void additive_forward_impl(const attn::AdditiveFusedArgs<T>& a) {
  const int64_t B = a.B, S = a.S, K = a.K, H = a.H;
  if (B == 0) return;
  const double flops = static_cast<double>(B) * static_cast<double>(S) * static_cast<double>(20 * H + 2 * K);
  const int nt = flops < kMinParallelFlops ? 1 : team_size(a.threads, B);
  Scratch<T> scratch((H + S + 1), nt);
  const T ninf = -std::numeric_limits<T>::infinity();
#pragma omp parallel num_threads(nt)
  {
    T* tbuf = scratch.thread(omp_get_thread_num());
    T* sc = tbuf + H;
#pragma omp for schedule(dynamic, 1) nowait  // the region's closing barrier suffices
    for (int64_t b = 0; b < B; ++b) {
      const T* qpb = a.qpb + b * H;
      const uint8_t* mk = a.mask ? a.mask + b * S : nullptr;
      T mx = ninf;
      for (int64_t s = 0; s < S; ++s) {
        if (mk && !mk[s]) {  // masked: its t is not needed (its weight and gradient are 0)
          sc[s] = ninf;
          if (a.t) std::fill(a.t + (b * S + s) * H, a.t + (b * S + s + 1) * H, T(0));
          continue;
        }
        const T* kp = a.kp + (b * S + s) * H;
        T* t = a.t ? a.t + (b * S + s) * H : tbuf;
#pragma omp simd
        for (int64_t h = 0; h < H; ++h) t[h] = tanh_val(kp[h] + qpb[h]);
        T dot = T(0);
#pragma omp simd reduction(+ : dot)
        for (int64_t h = 0; h < H; ++h) dot += t[h] * a.v[h];
        sc[s] = dot;
        mx = dot > mx ? dot : mx;
      }
      T* w = a.weights + b * S;
      T* ctx = a.context + b * K;
      std::fill(ctx, ctx + K, T(0));
      if (mx == ninf) {  // nothing to attend to
        std::fill(w, w + S, T(0));
        continue;
      }
      T z = T(0);
      for (int64_t s = 0; s < S; ++s) {
        const T e = sc[s] == ninf ? T(0) : std::exp(sc[s] - mx);
        w[s] = e;
        z += e;
      }
      for (int64_t s = 0; s < S; ++s) w[s] = w[s] / z;
      for (int64_t s = 0; s < S; ++s) {
        const T ws = w[s];
        if (ws == T(0)) continue;
        const T* key = a.keys + (b * S + s) * K;
#pragma omp simd
        for (int64_t kk = 0; kk < K; ++kk) ctx[kk] += ws * key[kk];
      }
    }
  }
}

template <typename T>
void additive_backward_impl(const attn::AdditiveFusedBackArgs<T>& a) {
  const int64_t B = a.B, S = a.S, K = a.K, H = a.H;
  if (B == 0) return;
  const double flops = static_cast<double>(B) * static_cast<double>(S) * static_cast<double>(6 * H + 4 * K);
  const int nt = flops < kMinParallelFlops ? 1 : team_size(a.threads, B);
  Scratch<T> scratch((S + 1), nt);
#pragma omp parallel num_threads(nt)
  {
    T* ds = scratch.thread(omp_get_thread_num());
#pragma omp for schedule(dynamic, 1) nowait  // the region's closing barrier suffices
    for (int64_t b = 0; b < B; ++b) {
      const T* w = a.weights + b * S;
      const T* g = a.dcontext + b * K;
      // forward: context = sum_s w_s keys_s  ->  dw_s = keys_s . dcontext, dkeys_s = w_s dcontext
      T wdw = T(0);
      for (int64_t s = 0; s < S; ++s) {
        const T* key = a.keys + (b * S + s) * K;
        T* dkey = a.dkeys + (b * S + s) * K;
        const T ws = w[s];
        T dw = T(0);
#pragma omp simd reduction(+ : dw)
        for (int64_t kk = 0; kk < K; ++kk) {
          dw += key[kk] * g[kk];
          dkey[kk] = ws * g[kk];
        }
        ds[s] = dw;
        wdw += ws * dw;
      }
      // forward: w = softmax(scores)  ->  dscore_s = w_s (dw_s - sum w dw)  (0 where masked)
      for (int64_t s = 0; s < S; ++s) ds[s] = w[s] * (ds[s] - wdw);
      // forward: score_s = t_s . v, t = tanh(pre)  ->  dv += dscore_s t_s, dpre = dscore_s v (1 - t^2)
      T* dvp = a.dv_part + b * H;
      T* dqp = a.dqp + b * H;
      std::fill(dvp, dvp + H, T(0));
      std::fill(dqp, dqp + H, T(0));
      for (int64_t s = 0; s < S; ++s) {
        const T* t = a.t + (b * S + s) * H;
        T* dp = a.dpre + (b * S + s) * H;
        const T d = ds[s];
#pragma omp simd
        for (int64_t h = 0; h < H; ++h) {
          const T th = t[h];
          const T dpre = d * a.v[h] * (T(1) - th * th);
          dp[h] = dpre;
          dvp[h] += d * th;
          dqp[h] += dpre;
        }
      }
    }
  }
}

}  // namespace

void sdpa_forward(const SdpaProblem<float>& p, const MutMatBatch<float>& out, float* lse) { forward_impl(p, out, lse); }
void sdpa_forward(const SdpaProblem<double>& p, const MutMatBatch<double>& out, double* lse) { forward_impl(p, out, lse); }
void sdpa_backward(const SdpaProblem<float>& p, const MatBatch<float>& out, const float* lse,
                   const MatBatch<float>& dout, const MutMatBatch<float>& dq, const MutMatBatch<float>& dk,
                   const MutMatBatch<float>& dv) {
  backward_impl(p, out, lse, dout, dq, dk, dv);
}
void sdpa_backward(const SdpaProblem<double>& p, const MatBatch<double>& out, const double* lse,
                   const MatBatch<double>& dout, const MutMatBatch<double>& dq, const MutMatBatch<double>& dk,
                   const MutMatBatch<double>& dv) {
  backward_impl(p, out, lse, dout, dq, dk, dv);
}
void sdpa_weights(const SdpaProblem<float>& p, const float* lse, float* w, int64_t group) { weights_impl(p, lse, w, group); }
void sdpa_weights(const SdpaProblem<double>& p, const double* lse, double* w, int64_t group) { weights_impl(p, lse, w, group); }
void additive_fused_forward(const attn::AdditiveFusedArgs<float>& a) { additive_forward_impl(a); }
void additive_fused_forward(const attn::AdditiveFusedArgs<double>& a) { additive_forward_impl(a); }
void additive_fused_backward(const attn::AdditiveFusedBackArgs<float>& a) { additive_backward_impl(a); }
void additive_fused_backward(const attn::AdditiveFusedBackArgs<double>& a) { additive_backward_impl(a); }

}  // namespace FASTRNN_ISA
}  // namespace fastrnn
