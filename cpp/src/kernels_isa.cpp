// Pointwise cell kernels, compiled once per ISA level (FASTRNN_ISA = avx512 | avx2 | base,
// see CMakeLists.txt) into namespace fastrnn::FASTRNN_ISA. Each kernel is one fused pass over
// a step's gates: no temporaries. Shapes: kernels.h. Forward and backward of each cell sit
// side by side; backward comments quote the forward line they invert.
#include "activations.h"
#include "kernels.h"

#ifndef FASTRNN_ISA
#error "FASTRNN_ISA must name the ISA level"
#endif

namespace fastrnn {
namespace FASTRNN_ISA {
namespace {

inline bool row_active(const uint8_t* active, int64_t b) { return !active || active[b]; }

// Padding step: the state passes through and the output is 0.
template <typename T>
inline void pass_through(const StepArgs<T>& a, int64_t b, bool lstm) {
  const int64_t H = a.H, n = a.n;
  for (int64_t j = 0; j < n; ++j) {
    a.h_out[b * H + j] = a.h_prev[b * H + j];
    a.y[b * a.ldy + j] = T(0);
  }
  if (lstm)
    for (int64_t j = 0; j < n; ++j) a.c_out[b * H + j] = a.c_prev[b * H + j];
}

// Padding step in backward: no gate gradient, the carries pass through.
template <typename T>
inline void pass_back(const StepBackArgs<T>& a, int64_t b, int G, bool lstm, bool gru) {
  const int64_t H = a.H, n = a.n;
  for (int g = 0; g < G; ++g)
    for (int64_t j = 0; j < n; ++j) {
      a.dgx[b * a.lddgx + g * H + j] = T(0);
      if (gru) a.dgh[b * a.lddgh + g * H + j] = T(0);
    }
  for (int64_t j = 0; j < n; ++j) a.dh_prev[b * H + j] = a.dh[b * H + j];
  if (lstm)
    for (int64_t j = 0; j < n; ++j) a.dc_prev[b * H + j] = a.dc[b * H + j];
}

// ---------------------------------------------------------------- vanilla RNN (G = 1)
// forward:  h = act(x w_ih^T + b_ih + h_prev w_hh^T + b_hh)
template <typename T, bool Relu>
void rnn_forward(const StepArgs<T>& a) {
  const int64_t H = a.H, n = a.n;
  for (int64_t b = 0; b < a.rows; ++b) {
    if (!row_active(a.active, b)) { pass_through(a, b, false); continue; }
    const T* gx = a.gx + b * a.ldgx;
    const T* gh = a.gh + b * a.ldgh;
    T* h = a.h_out + b * H;
    T* y = a.y + b * a.ldy;
    T* g = a.gates ? a.gates + b * a.ldgates : nullptr;
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) {
      const T pre = gx[j] + a.b_ih[j] + gh[j] + a.b_hh[j];
      const T v = Relu ? relu(pre) : tanh_(pre);
      h[j] = v;
      y[j] = v;
    }
    if (g)
      for (int64_t j = 0; j < n; ++j) g[j] = h[j];
  }
}

// backward: dpre = dh_total * act'(h)   (tanh' = 1 - h^2, relu' = [h > 0])
template <typename T, bool Relu>
void rnn_backward(const StepBackArgs<T>& a) {
  const int64_t H = a.H, n = a.n;
  for (int64_t b = 0; b < a.rows; ++b) {
    if (!row_active(a.active, b)) { pass_back(a, b, 1, false, false); continue; }
    const T* h = a.gates + b * a.ldgates;
    const T* dh = a.dh + b * H;
    const T* dy = a.dy + b * a.lddy;
    T* dg = a.dgx + b * a.lddgx;
    T* dhp = a.dh_prev + b * H;
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) {
      const T d = dh[j] + dy[j];
      dg[j] = Relu ? (h[j] > T(0) ? d : T(0)) : d * (T(1) - h[j] * h[j]);
      dhp[j] = T(0);
    }
  }
}

// ---------------------------------------------------------------- LSTM (G = 4: i, f, g, o)
// forward:  i = s(.), f = s(.), g = tanh(.), o = s(.);  c = f c_prev + i g;  h = o tanh(c)
template <typename T>
void lstm_forward(const StepArgs<T>& a) {
  const int64_t H = a.H, n = a.n;
  const T *bi = a.b_ih, *bh = a.b_hh;
  for (int64_t b = 0; b < a.rows; ++b) {
    if (!row_active(a.active, b)) { pass_through(a, b, true); continue; }
    const T* gx = a.gx + b * a.ldgx;
    const T* gh = a.gh + b * a.ldgh;
    const T* cp = a.c_prev + b * H;
    T* c = a.c_out + b * H;
    T* h = a.h_out + b * H;
    T* y = a.y + b * a.ldy;
    if (a.gates) {
      T* g = a.gates + b * a.ldgates;
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) {
        const T ig = sigmoid(gx[j] + bi[j] + gh[j] + bh[j]);
        const T fg = sigmoid(gx[H + j] + bi[H + j] + gh[H + j] + bh[H + j]);
        const T gg = tanh_(gx[2 * H + j] + bi[2 * H + j] + gh[2 * H + j] + bh[2 * H + j]);
        const T og = sigmoid(gx[3 * H + j] + bi[3 * H + j] + gh[3 * H + j] + bh[3 * H + j]);
        const T cn = fg * cp[j] + ig * gg;
        const T hn = og * tanh_(cn);
        g[j] = ig; g[H + j] = fg; g[2 * H + j] = gg; g[3 * H + j] = og;
        c[j] = cn; h[j] = hn; y[j] = hn;
      }
    } else {
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) {
        const T ig = sigmoid(gx[j] + bi[j] + gh[j] + bh[j]);
        const T fg = sigmoid(gx[H + j] + bi[H + j] + gh[H + j] + bh[H + j]);
        const T gg = tanh_(gx[2 * H + j] + bi[2 * H + j] + gh[2 * H + j] + bh[2 * H + j]);
        const T og = sigmoid(gx[3 * H + j] + bi[3 * H + j] + gh[3 * H + j] + bh[3 * H + j]);
        const T cn = fg * cp[j] + ig * gg;
        const T hn = og * tanh_(cn);
        c[j] = cn; h[j] = hn; y[j] = hn;
      }
    }
  }
}

// backward: with dh = carry + dy, tc = tanh(c):
//   h = o tc            -> do = dh tc,  dc += dh o (1 - tc^2)
//   c = f c_prev + i g  -> di = dc g, df = dc c_prev, dg = dc i, dc_prev = dc f
template <typename T>
void lstm_backward(const StepBackArgs<T>& a) {
  const int64_t H = a.H, n = a.n;
  for (int64_t b = 0; b < a.rows; ++b) {
    if (!row_active(a.active, b)) { pass_back(a, b, 4, true, false); continue; }
    const T* g = a.gates + b * a.ldgates;
    const T* cp = a.c_prev + b * H;
    const T* c = a.c_out + b * H;
    const T* dh = a.dh + b * H;
    const T* dc = a.dc + b * H;
    const T* dy = a.dy + b * a.lddy;
    T* dg = a.dgx + b * a.lddgx;
    T* dhp = a.dh_prev + b * H;
    T* dcp = a.dc_prev + b * H;
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) {
      const T ig = g[j], fg = g[H + j], gg = g[2 * H + j], og = g[3 * H + j];
      const T tc = tanh_(c[j]);
      const T dht = dh[j] + dy[j];
      const T dct = dc[j] + dht * og * (T(1) - tc * tc);
      dg[j] = dct * gg * ig * (T(1) - ig);
      dg[H + j] = dct * cp[j] * fg * (T(1) - fg);
      dg[2 * H + j] = dct * ig * (T(1) - gg * gg);
      dg[3 * H + j] = dht * tc * og * (T(1) - og);
      dcp[j] = dct * fg;
      dhp[j] = T(0);
    }
  }
}

// ---------------------------------------------------------------- GRU (G = 3: r, z, n)
// forward:  r = s(.), z = s(.), hn = h_prev w_hn^T + b_hn, n = tanh(x w_in^T + b_in + r hn),
//           h = (1 - z) n + z h_prev.   Cached gates: r, z, n, hn (Gc = 4).
template <typename T>
void gru_forward(const StepArgs<T>& a) {
  const int64_t H = a.H, n = a.n;
  const T *bi = a.b_ih, *bh = a.b_hh;
  for (int64_t b = 0; b < a.rows; ++b) {
    if (!row_active(a.active, b)) { pass_through(a, b, false); continue; }
    const T* gx = a.gx + b * a.ldgx;
    const T* gh = a.gh + b * a.ldgh;
    const T* hp = a.h_prev + b * H;
    T* h = a.h_out + b * H;
    T* y = a.y + b * a.ldy;
    T* g = a.gates ? a.gates + b * a.ldgates : nullptr;
    if (g) {
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) {
        const T r = sigmoid(gx[j] + bi[j] + gh[j] + bh[j]);
        const T z = sigmoid(gx[H + j] + bi[H + j] + gh[H + j] + bh[H + j]);
        const T hn = gh[2 * H + j] + bh[2 * H + j];
        const T n = tanh_(gx[2 * H + j] + bi[2 * H + j] + r * hn);
        const T hv = (T(1) - z) * n + z * hp[j];
        g[j] = r; g[H + j] = z; g[2 * H + j] = n; g[3 * H + j] = hn;
        h[j] = hv; y[j] = hv;
      }
    } else {
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) {
        const T r = sigmoid(gx[j] + bi[j] + gh[j] + bh[j]);
        const T z = sigmoid(gx[H + j] + bi[H + j] + gh[H + j] + bh[H + j]);
        const T hn = gh[2 * H + j] + bh[2 * H + j];
        const T n = tanh_(gx[2 * H + j] + bi[2 * H + j] + r * hn);
        const T hv = (T(1) - z) * n + z * hp[j];
        h[j] = hv; y[j] = hv;
      }
    }
  }
}

// backward: with dh = carry + dy:
//   h = (1 - z) n + z h_prev  -> dn = dh (1 - z), dz = dh (h_prev - n), dh_prev = dh z
//   n = tanh(xn + r hn)       -> dnp = dn (1 - n^2) (x side),  dr = dnp hn,  d(hn) = dnp r (h side)
template <typename T>
void gru_backward(const StepBackArgs<T>& a) {
  const int64_t H = a.H, n = a.n;
  for (int64_t b = 0; b < a.rows; ++b) {
    if (!row_active(a.active, b)) { pass_back(a, b, 3, false, true); continue; }
    const T* g = a.gates + b * a.ldgates;
    const T* hp = a.h_prev + b * H;
    const T* dh = a.dh + b * H;
    const T* dy = a.dy + b * a.lddy;
    T* dgx = a.dgx + b * a.lddgx;
    T* dgh = a.dgh + b * a.lddgh;
    T* dhp = a.dh_prev + b * H;
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) {
      const T r = g[j], z = g[H + j], n = g[2 * H + j], hn = g[3 * H + j];
      const T dht = dh[j] + dy[j];
      const T dnp = dht * (T(1) - z) * (T(1) - n * n);
      const T drp = dnp * hn * r * (T(1) - r);
      const T dzp = dht * (hp[j] - n) * z * (T(1) - z);
      dgx[j] = drp; dgx[H + j] = dzp; dgx[2 * H + j] = dnp;
      dgh[j] = drp; dgh[H + j] = dzp; dgh[2 * H + j] = dnp * r;
      dhp[j] = dht * z;
    }
  }
}

// ---------------------------------------------------------------- packed GEMM panel
// C[:M, :ncols] (+)= A (M, K) @ Bp (K, NR): the recurrent product of one step for one panel of
// NR output columns. Register blocking: MR rows of A x two vectors of B; per k, two vector loads
// and MR broadcasts feed 2*MR FMAs. Bp is the packed, zero-padded w_hh panel (see recurrent.cpp).
#if defined(__AVX512F__)
constexpr int kVecBytes = 64;
constexpr int kMR = 8;  // 16 of the 32 zmm registers accumulate: two FMA pipes stay busy
#elif defined(__AVX2__)
constexpr int kVecBytes = 32;
constexpr int kMR = 4;  // 8 of 16 ymm accumulate, the rest hold B and broadcasts
#else
constexpr int kVecBytes = 16;
constexpr int kMR = 4;
#endif

template <typename T>
struct Vec {
  typedef T type __attribute__((vector_size(kVecBytes)));
  static constexpr int lanes = kVecBytes / sizeof(T);
};

template <typename T>
inline typename Vec<T>::type load(const T* p) {
  typename Vec<T>::type v;
  __builtin_memcpy(&v, p, sizeof(v));
  return v;
}

template <typename T>
inline void store_row(T* c, const typename Vec<T>::type* acc, int64_t ncols, bool accumulate) {
  constexpr int W = Vec<T>::lanes;
  alignas(64) T tmp[2 * W];
  __builtin_memcpy(tmp, &acc[0], sizeof(acc[0]));
  __builtin_memcpy(tmp + W, &acc[1], sizeof(acc[1]));
  if (accumulate)
    for (int64_t i = 0; i < ncols; ++i) c[i] += tmp[i];
  else
    for (int64_t i = 0; i < ncols; ++i) c[i] = tmp[i];
}

template <typename T, int MR>
inline void panel_rows(int64_t i0, int64_t K, const T* A, int64_t lda, const T* Bp, T* C, int64_t ldc,
                       int64_t ncols, bool accumulate) {
  using V = typename Vec<T>::type;
  constexpr int W = Vec<T>::lanes;
  V acc[MR][2];
  for (int r = 0; r < MR; ++r) acc[r][0] = acc[r][1] = V{};
  const T* a = A + i0 * lda;
  for (int64_t k = 0; k < K; ++k) {
    const V b0 = load(Bp + k * 2 * W), b1 = load(Bp + k * 2 * W + W);
    for (int r = 0; r < MR; ++r) {
      const V av = V{} + a[r * lda + k];
      acc[r][0] += av * b0;
      acc[r][1] += av * b1;
    }
  }
  for (int r = 0; r < MR; ++r) store_row<T>(C + (i0 + r) * ldc, acc[r], ncols, accumulate);
}

// One row (M = 1, the matrix-vector product of batch-1 steps): with a single accumulator per
// vector every FMA waits for the previous one (a K-long dependency chain), so k is split over
// four accumulator pairs that are summed at the end.
template <typename T>
inline void panel_row1(int64_t i0, int64_t K, const T* A, const T* Bp, T* C, int64_t ldc, int64_t ncols,
                       bool accumulate) {
  using V = typename Vec<T>::type;
  constexpr int W = Vec<T>::lanes;
  V acc[4][2];
  for (int r = 0; r < 4; ++r) acc[r][0] = acc[r][1] = V{};
  const T* a = A;
  int64_t k = 0;
  for (; k + 4 <= K; k += 4)
    for (int u = 0; u < 4; ++u) {
      const V av = V{} + a[k + u];
      acc[u][0] += av * load(Bp + (k + u) * 2 * W);
      acc[u][1] += av * load(Bp + (k + u) * 2 * W + W);
    }
  for (; k < K; ++k) {
    const V av = V{} + a[k];
    acc[0][0] += av * load(Bp + k * 2 * W);
    acc[0][1] += av * load(Bp + k * 2 * W + W);
  }
  V sum[2] = {(acc[0][0] + acc[1][0]) + (acc[2][0] + acc[3][0]), (acc[0][1] + acc[1][1]) + (acc[2][1] + acc[3][1])};
  store_row<T>(C + i0 * ldc, sum, ncols, accumulate);
}

template <typename T>
void panel(int64_t M, int64_t K, const T* A, int64_t lda, const T* Bp, T* C, int64_t ldc, int64_t ncols,
           bool accumulate) {
  if (M == 1) {
    panel_row1<T>(0, K, A, Bp, C, ldc, ncols, accumulate);
    return;
  }
  int64_t i = 0;
  if constexpr (kMR == 8)
    for (; i + 8 <= M; i += 8) panel_rows<T, 8>(i, K, A, lda, Bp, C, ldc, ncols, accumulate);
  for (; i + 4 <= M; i += 4) panel_rows<T, 4>(i, K, A, lda, Bp, C, ldc, ncols, accumulate);
  for (; i + 2 <= M; i += 2) panel_rows<T, 2>(i, K, A, lda, Bp, C, ldc, ncols, accumulate);
  for (; i < M; ++i) panel_rows<T, 1>(i, K, A, lda, Bp, C, ldc, ncols, accumulate);
}

// C (M, N) = A (M, K) @ W^T with W (N, K) row-major, unpacked: dot products over k, four
// rows of W at a time so they stay in L1 while every row of A passes. For the small products
// of a single cell step, where packing W (or the BLAS, which packs it per call) costs more
// than the product.
template <typename T>
inline T hsum(const typename Vec<T>::type& v) {
  constexpr int W = Vec<T>::lanes;
  alignas(64) T t[W];
  __builtin_memcpy(t, &v, sizeof(v));
  T s = T(0);
  for (int i = 0; i < W; ++i) s += t[i];
  return s;
}

template <typename T>
void gemm_nt_small(int64_t M, int64_t N, int64_t K, const T* A, int64_t lda, const T* Wt, int64_t ldw, T* C,
                   int64_t ldc) {
  using V = typename Vec<T>::type;
  constexpr int W = Vec<T>::lanes;
  const int64_t K0 = K / W * W;
  int64_t n = 0;
  for (; n + 4 <= N; n += 4) {
    const T* w0 = Wt + n * ldw;
    for (int64_t m = 0; m < M; ++m) {
      const T* a = A + m * lda;
      V acc0 = V{}, acc1 = V{}, acc2 = V{}, acc3 = V{};
      for (int64_t k = 0; k < K0; k += W) {
        const V av = load(a + k);
        acc0 += av * load(w0 + k);
        acc1 += av * load(w0 + ldw + k);
        acc2 += av * load(w0 + 2 * ldw + k);
        acc3 += av * load(w0 + 3 * ldw + k);
      }
      T s0 = hsum<T>(acc0), s1 = hsum<T>(acc1), s2 = hsum<T>(acc2), s3 = hsum<T>(acc3);
      for (int64_t k = K0; k < K; ++k) {
        s0 += a[k] * w0[k];
        s1 += a[k] * w0[ldw + k];
        s2 += a[k] * w0[2 * ldw + k];
        s3 += a[k] * w0[3 * ldw + k];
      }
      T* c = C + m * ldc + n;
      c[0] = s0; c[1] = s1; c[2] = s2; c[3] = s3;
    }
  }
  for (; n < N; ++n)
    for (int64_t m = 0; m < M; ++m) {
      const T* a = A + m * lda;
      const T* w = Wt + n * ldw;
      V acc = V{};
      for (int64_t k = 0; k < K0; k += W) acc += load(a + k) * load(w + k);
      T s0 = hsum<T>(acc);
      for (int64_t k = K0; k < K; ++k) s0 += a[k] * w[k];
      C[m * ldc + n] = s0;
    }
}

template <typename T>
void fill(IsaKernels<T>* k) {
  k->forward[0] = rnn_forward<T, false>;
  k->forward[1] = rnn_forward<T, true>;
  k->forward[2] = lstm_forward<T>;
  k->forward[3] = gru_forward<T>;
  k->backward[0] = rnn_backward<T, false>;
  k->backward[1] = rnn_backward<T, true>;
  k->backward[2] = lstm_backward<T>;
  k->backward[3] = gru_backward<T>;
  k->nr = 2 * Vec<T>::lanes;
  k->panel = panel<T>;
  k->gemm_nt_small = gemm_nt_small<T>;
}

}  // namespace

void fill_kernels(IsaKernels<float>* k) { fill(k); }
void fill_kernels(IsaKernels<double>* k) { fill(k); }

}  // namespace FASTRNN_ISA
}  // namespace fastrnn
