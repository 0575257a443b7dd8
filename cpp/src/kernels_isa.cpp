// Pointwise cell kernels, compiled once per ISA level (FASTRNN_ISA = avx512 | avx2 | base,
// see CMakeLists.txt) into namespace fastrnn::FASTRNN_ISA. Each kernel is one fused pass over
// a step's gates: no temporaries. Shapes: kernels.h. Forward and backward of each cell sit
// side by side; backward comments quote the forward line they invert.
#include <algorithm>
#include <type_traits>
#include <utility>

#include "activations.h"
#include "kernels.h"

#ifndef FASTRNN_ISA
#error "FASTRNN_ISA must name the ISA level"
#endif

namespace fastrnn {
namespace FASTRNN_ISA {
namespace {

// The vector width of this ISA level, and kMR, the rows per block of the panel kernel (below).
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

inline bool row_active(const uint8_t* active, int64_t b) { return !active || active[b]; }

// The pointwise kernels' loop bodies are generic lambdas body(V{}, j) over V, one unit (T) or
// one vector of units (Vec<float>::type) from unit j; ld / st read and write a V at p.
template <typename V, typename T>
inline V ld(const T* p) {
  if constexpr (std::is_same<V, T>::value) return *p;
  else { V v; __builtin_memcpy(&v, p, sizeof v); return v; }
}
template <typename V, typename T>
inline void st(T* p, V v) {
  if constexpr (std::is_same<V, T>::value) *p = v;
  else __builtin_memcpy(p, &v, sizeof v);
}

// body over units [0, n): float in whole vectors, with the vector activations of
// activations.h; the rest, and double, unit by unit in a `#pragma omp simd` loop (the same
// results for float, bit for bit).
template <typename T, typename Body>
inline void over_units(int64_t n, Body body) {
  int64_t j0 = 0;
  if constexpr (std::is_same<T, float>::value)
    for (constexpr int64_t W = Vec<T>::lanes; j0 + W <= n; j0 += W) body(typename Vec<T>::type{}, j0);
#pragma omp simd
  for (int64_t j = j0; j < n; ++j) body(T{}, j);
}

// A pass over n units that is not a whole number of vectors leaves n % lanes units to the
// scalar remainder loop of its `#pragma omp simd` loop, where 13 units of H = 333 cost as much
// as 5 vectors. When at least one vector fits, such a pass runs as two: the whole vectors,
// then the last vector once more from n - lanes, its pointers shifted. Only for passes whose
// outputs alias none of their inputs, so that a unit computed twice is written with the same
// value twice. Returns false (nothing done) when the pass has no tail to move.
template <typename T, typename Args>
inline bool run_tail_as_vector(const Args& a, void (*pass)(const Args&), Args (*shifted)(const Args&, int64_t)) {
  constexpr int64_t W = Vec<T>::lanes;
  if (a.n % W == 0 || a.n < W) return false;
  Args whole = a;
  whole.n = a.n - a.n % W;
  pass(whole);
  Args last = shifted(a, a.n - W);
  last.n = W;
  pass(last);
  return true;
}

// The arguments of a step for units [j, n) of the original ones.
template <typename T>
StepArgs<T> shifted(const StepArgs<T>& a, int64_t j) {
  StepArgs<T> s = a;
  s.gx += j; s.gh += j; s.b_ih += j; s.b_hh += j; s.h_prev += j; s.h_out += j; s.y += j;
  if (s.c_prev) { s.c_prev += j; s.c_out += j; }
  if (s.gates) s.gates += j;
  return s;
}
template <typename T>
StepBackArgs<T> shifted(const StepBackArgs<T>& a, int64_t j) {
  StepBackArgs<T> s = a;
  s.gates += j; s.h_prev += j; s.h_out += j; s.dh += j; s.dy += j; s.dgx += j; s.dgh += j; s.dh_prev += j;
  if (s.c_prev) { s.c_prev += j; s.c_out += j; s.dc += j; s.dc_prev += j; }
  return s;
}

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
  if (!a.gates && run_tail_as_vector<T>(a, rnn_forward<T, Relu>, shifted<T>)) return;
  const int64_t H = a.H, n = a.n;
  for (int64_t b = 0; b < a.rows; ++b) {
    if (!row_active(a.active, b)) { pass_through(a, b, false); continue; }
    const T* gx = a.gx + b * a.ldgx;
    const T* gh = a.gh + b * a.ldgh;
    T* h = a.h_out + b * H;
    T* y = a.y + b * a.ldy;
    T* g = a.gates ? a.gates + b * a.ldgates : nullptr;
    over_units<T>(n, [&](auto v, int64_t j) {
      using V = decltype(v);
      const V pre = ld<V>(gx + j) + ld<V>(a.b_ih + j) + ld<V>(gh + j) + ld<V>(a.b_hh + j);
      const V act = Relu ? relu(pre) : tanh_(pre);
      st(h + j, act);
      st(y + j, act);
    });
    if (g)
      for (int64_t j = 0; j < n; ++j) g[j] = h[j];
  }
}

// backward: dpre = dh_total * act'(h)   (tanh' = 1 - h^2, relu' = [h > 0])
template <typename T, bool Relu>
void rnn_backward(const StepBackArgs<T>& a) {
  if (run_tail_as_vector<T>(a, rnn_backward<T, Relu>, shifted<T>)) return;
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
  if (!a.gates && run_tail_as_vector<T>(a, lstm_forward<T>, shifted<T>)) return;  // training: gates alias gx
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
    // Two passes: the gates and c, then h = o tanh(c). In one pass each vector was a chain of
    // two dependent exps (its gates', then tanh(c)'s), too long for the out-of-order window
    // to overlap with the next vector: 17 rows x 160 units 4.4 -> 3.7 us, 1 x 64 110 -> 92 ns.
    // o waits for the second pass in the gates cache (training) or in h (inference).
    T* o;
    // gx + b_ih + gh + b_hh of gate k's units at j
    const auto pre = [&](auto v, int64_t k) {
      using V = decltype(v);
      return ld<V>(gx + k) + ld<V>(bi + k) + ld<V>(gh + k) + ld<V>(bh + k);
    };
    if (a.gates) {
      T* g = a.gates + b * a.ldgates;
      o = g + 3 * H;
      over_units<T>(n, [&](auto v, int64_t j) {
        using V = decltype(v);
        const V ig = sigmoid(pre(v, j)), fg = sigmoid(pre(v, H + j));
        const V gg = tanh_(pre(v, 2 * H + j)), og = sigmoid(pre(v, 3 * H + j));
        st(g + j, ig); st(g + H + j, fg); st(g + 2 * H + j, gg); st(g + 3 * H + j, og);
        st(c + j, fg * ld<V>(cp + j) + ig * gg);
      });
    } else {
      o = h;
      over_units<T>(n, [&](auto v, int64_t j) {
        using V = decltype(v);
        const V ig = sigmoid(pre(v, j)), fg = sigmoid(pre(v, H + j));
        const V gg = tanh_(pre(v, 2 * H + j)), og = sigmoid(pre(v, 3 * H + j));
        st(c + j, fg * ld<V>(cp + j) + ig * gg);
        st(o + j, og);
      });
    }
    over_units<T>(n, [&](auto v, int64_t j) {
      using V = decltype(v);
      const V hn = ld<V>(o + j) * tanh_(ld<V>(c + j));
      st(h + j, hn); st(y + j, hn);
    });
  }
}

// backward: with dh = carry + dy, tc = tanh(c):
//   h = o tc            -> do = dh tc,  dc += dh o (1 - tc^2)
//   c = f c_prev + i g  -> di = dc g, df = dc c_prev, dg = dc i, dc_prev = dc f
template <typename T>
void lstm_backward(const StepBackArgs<T>& a) {
  if (run_tail_as_vector<T>(a, lstm_backward<T>, shifted<T>)) return;
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
    over_units<T>(n, [&](auto v, int64_t j) {
      using V = decltype(v);
      const V ig = ld<V>(g + j), fg = ld<V>(g + H + j), gg = ld<V>(g + 2 * H + j), og = ld<V>(g + 3 * H + j);
      const V tc = tanh_(ld<V>(c + j));
      const V dht = ld<V>(dh + j) + ld<V>(dy + j);
      const V dct = ld<V>(dc + j) + dht * og * (T(1) - tc * tc);
      st(dg + j, dct * gg * ig * (T(1) - ig));
      st(dg + H + j, dct * ld<V>(cp + j) * fg * (T(1) - fg));
      st(dg + 2 * H + j, dct * ig * (T(1) - gg * gg));
      st(dg + 3 * H + j, dht * tc * og * (T(1) - og));
      st(dcp + j, dct * fg);
      st(dhp + j, V{});
    });
  }
}

// ---------------------------------------------------------------- GRU (G = 3: r, z, n)
// forward:  r = s(.), z = s(.), hn = h_prev w_hn^T + b_hn, n = tanh(x w_in^T + b_in + r hn),
//           h = (1 - z) n + z h_prev.   Cached gates: r, z, n, hn (Gc = 4).
template <typename T>
void gru_forward(const StepArgs<T>& a) {
  if (!a.gates && run_tail_as_vector<T>(a, gru_forward<T>, shifted<T>)) return;
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
    // the step's r, z, n, hn and new h for the units at j (V: see over_units)
    const auto step = [&](auto v, int64_t j) {
      using V = decltype(v);
      struct { V r, z, n, hn, h; } o;
      o.r = sigmoid(ld<V>(gx + j) + ld<V>(bi + j) + ld<V>(gh + j) + ld<V>(bh + j));
      o.z = sigmoid(ld<V>(gx + H + j) + ld<V>(bi + H + j) + ld<V>(gh + H + j) + ld<V>(bh + H + j));
      o.hn = ld<V>(gh + 2 * H + j) + ld<V>(bh + 2 * H + j);
      o.n = tanh_(ld<V>(gx + 2 * H + j) + ld<V>(bi + 2 * H + j) + o.r * o.hn);
      // (1 - z) n + z h_prev with one product: two would leave GCC a choice of which to fuse
      // into an FMA, and it chose differently for the vector and the unit-by-unit pass
      o.h = o.n + o.z * (ld<V>(hp + j) - o.n);
      return o;
    };
    if (g) {
      over_units<T>(n, [&](auto v, int64_t j) {
        const auto o = step(v, j);
        st(g + j, o.r); st(g + H + j, o.z); st(g + 2 * H + j, o.n); st(g + 3 * H + j, o.hn);
        st(h + j, o.h); st(y + j, o.h);
      });
    } else {
      over_units<T>(n, [&](auto v, int64_t j) {
        const auto o = step(v, j);
        st(h + j, o.h); st(y + j, o.h);
      });
    }
  }
}

// backward: with dh = carry + dy:
//   h = (1 - z) n + z h_prev  -> dn = dh (1 - z), dz = dh (h_prev - n), dh_prev = dh z
//   n = tanh(xn + r hn)       -> dnp = dn (1 - n^2) (x side),  dr = dnp hn,  d(hn) = dnp r (h side)
template <typename T>
void gru_backward(const StepBackArgs<T>& a) {
  if (run_tail_as_vector<T>(a, gru_backward<T>, shifted<T>)) return;
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
// All lanes = s. (Written as V{} + s, GCC keeps the add of +0, which it may not drop because
// of signed zeros: an FP add and a register broadcast per use instead of one broadcast load.)
template <typename T, size_t... L>
inline typename Vec<T>::type splat_impl(T s, std::index_sequence<L...>) {
  return typename Vec<T>::type{((void)L, s)...};
}
template <typename T>
inline typename Vec<T>::type splat(T s) {
  return splat_impl<T>(s, std::make_index_sequence<Vec<T>::lanes>{});
}

template <typename T>
inline typename Vec<T>::type load(const T* p) {
  typename Vec<T>::type v;
  __builtin_memcpy(&v, p, sizeof(v));
  return v;
}

// Whole vectors are stored as vectors; only a partial one goes through a buffer (a plain
// element loop became a memmove call per row and panel: 8-14% of an LSTM at T=7, B=5, H=13).
template <typename T, int NV>
inline void store_row(T* c, const typename Vec<T>::type* acc, int64_t ncols, bool accumulate) {
  using V = typename Vec<T>::type;
  constexpr int W = Vec<T>::lanes;
  int v = 0;
  for (; v < NV && (v + 1) * W <= ncols; ++v) {
    const V r = accumulate ? load(c + v * W) + acc[v] : acc[v];
    __builtin_memcpy(c + v * W, &r, sizeof(V));
  }
  if (v == NV || v * W == ncols) return;
  alignas(64) T tmp[W];
  __builtin_memcpy(tmp, &acc[v], sizeof(V));
  T* cv = c + v * W;
  const int rest = static_cast<int>(ncols - v * W);
  if (accumulate) {
    for (int i = 0; i < rest; ++i) cv[i] += tmp[i];
    return;
  }
  // rest < W elements in pieces of W/2, W/4, ..., 1 (a copy loop would become a memmove call)
  int i = 0;
#pragma GCC unroll 8
  for (int piece = W / 2; piece >= 1; piece /= 2)
    if (rest & piece) { __builtin_memcpy(cv + i, tmp + i, piece * sizeof(T)); i += piece; }
}

// MR rows of A against NV vectors of the panel (NV = 1 when the panel's columns fit one
// vector: a thread's last, narrow panel costs half), k split over U accumulator sets that are
// summed at the end. Every FMA of an accumulator waits for its previous one (4 cycles here,
// with two FMA pipes), so at least 8 independent accumulators must be in flight:
// MR rows x 2 vectors x U. A block of 8 rows needs U = 1; the few rows left over at small
// batch (M = 1..7) split k instead of running one long dependency chain (at M = 3, K = 200
// the old per-row chains ran at a third of the rate).
template <typename T, int MR, int U, int NV>
__attribute__((always_inline)) inline void panel_rows(int64_t i0, int64_t K, const T* A, int64_t lda, const T* Bp, T* C, int64_t ldc,
                       int64_t ncols, bool accumulate) {
  using V = typename Vec<T>::type;
  constexpr int W = Vec<T>::lanes;
  V acc[U][MR][NV];
  for (int u = 0; u < U; ++u)
    for (int r = 0; r < MR; ++r)
      for (int v = 0; v < NV; ++v) acc[u][r][v] = V{};
  const T* a = A + i0 * lda;
  int64_t k = 0;
  for (; k + U <= K; k += U)
#pragma GCC unroll 8
    for (int u = 0; u < U; ++u) {
      V b[NV];
      for (int v = 0; v < NV; ++v) {
        b[v] = load(Bp + (k + u) * 2 * W + v * W);
        if constexpr (MR > 1) asm("" : "+v"(b[v]));  // load once for all rows, not per FMA
      }
#pragma GCC unroll 16  // every row (up to 11): a loop left rolled keeps acc on the stack
      for (int r = 0; r < MR; ++r) {
        const V av = splat(a[r * lda + k + u]);
        for (int v = 0; v < NV; ++v) acc[u][r][v] += av * b[v];
      }
    }
  for (; k < K; ++k)
    for (int r = 0; r < MR; ++r) {
      const V av = splat(a[r * lda + k]);
      for (int v = 0; v < NV; ++v) acc[0][r][v] += av * load(Bp + k * 2 * W + v * W);
    }
  for (int u = 1; u < U; ++u)
    for (int r = 0; r < MR; ++r)
      for (int v = 0; v < NV; ++v) acc[0][r][v] += acc[u][r][v];
  for (int r = 0; r < MR; ++r) store_row<T, NV>(C + (i0 + r) * ldc, acc[0][r], ncols, accumulate);
}

// The k split (U) depends on the row count only, never on NV: a unit's sum is added in the
// same order whichever panel width it falls in, so results do not depend on how the units are
// cut between threads (a one-vector panel at MR = 1 runs 4 chains rather than 8).
//
// With 32 registers (kMR = 8) the rows past the whole blocks of 8 take one more pass over the
// panel, not two: 4..7 of them run as one block, and 1..3 join the last block of 8 (9..11
// rows, at most 22 accumulators). Each pass streams the whole panel, and a pass over 1..3 rows
// runs at ~2/3 of the rate of a block (B = 17 at H = 333: 8 + 8 + 1 rows -> 8 + 9).
// So the blocks are kPanelRowGroup (8) rows from the top, and then the last 8..15 rows blocked
// on their own (8, 9..11 as one block, or 8 + 4..7), which the lazy input projection of
// recurrent.cpp relies on to sum in the same order.
static_assert(kPanelRowGroup == 8 && kPanelRowGroup % kMR == 0, "row groups of recurrent.cpp");
template <typename T, int NV>
void panel_nv(int64_t M, int64_t K, const T* A, int64_t lda, const T* Bp, T* C, int64_t ldc, int64_t ncols,
              bool accumulate) {
  int64_t i = 0;
  if constexpr (kMR == 8) {
    const int64_t rest = M % 8, blocks = M / 8 - (M > 8 && rest < 4 && rest > 0 ? 1 : 0);
    for (; i < blocks * 8; i += 8) panel_rows<T, 8, 1, NV>(i, K, A, lda, Bp, C, ldc, ncols, accumulate);
    switch (M - i) {
      case 11: panel_rows<T, 11, 1, NV>(i, K, A, lda, Bp, C, ldc, ncols, accumulate); return;
      case 10: panel_rows<T, 10, 1, NV>(i, K, A, lda, Bp, C, ldc, ncols, accumulate); return;
      case 9: panel_rows<T, 9, 1, NV>(i, K, A, lda, Bp, C, ldc, ncols, accumulate); return;
      case 7: panel_rows<T, 7, 1, NV>(i, K, A, lda, Bp, C, ldc, ncols, accumulate); return;
      case 6: panel_rows<T, 6, 1, NV>(i, K, A, lda, Bp, C, ldc, ncols, accumulate); return;
      case 5: panel_rows<T, 5, 1, NV>(i, K, A, lda, Bp, C, ldc, ncols, accumulate); return;
      case 4: panel_rows<T, 4, 2, NV>(i, K, A, lda, Bp, C, ldc, ncols, accumulate); return;
      default: break;
    }
  } else {
    for (; i + kMR <= M; i += kMR) panel_rows<T, kMR, 1, NV>(i, K, A, lda, Bp, C, ldc, ncols, accumulate);
  }
  switch (M - i) {
    case 3: panel_rows<T, 3, 2, NV>(i, K, A, lda, Bp, C, ldc, ncols, accumulate); break;
    case 2: panel_rows<T, 2, 3, NV>(i, K, A, lda, Bp, C, ldc, ncols, accumulate); break;
    case 1: panel_rows<T, 1, 4, NV>(i, K, A, lda, Bp, C, ldc, ncols, accumulate); break;
    default: break;
  }
}

template <typename T>
void panel(int64_t M, int64_t K, const T* A, int64_t lda, const T* Bp, T* C, int64_t ldc, int64_t ncols,
           bool accumulate) {
  if (ncols <= Vec<T>::lanes) panel_nv<T, 1>(M, K, A, lda, Bp, C, ldc, ncols, accumulate);
  else panel_nv<T, 2>(M, K, A, lda, Bp, C, ldc, ncols, accumulate);
}

// A single row against n panels in one call (kernels.h). At B = 1 a step's product is a pure
// stream of its panels from L2, and a call per panel (8 KiB at K = 128 on AVX2) stalled that
// stream at every call: one thread's 128 KiB took 1.93-2.11 us panel by panel and 1.66-1.69
// us in one loop (AVX2, Zen 3, hot L2). The row's k split is panel_nv's for M = 1 (U = 4).
template <typename T>
void row_panels(int64_t K, const T* a, const T* Bp, int64_t n, const int64_t* off, const int64_t* cols,
                bool reverse, T* C) {
  const int64_t size = K * 2 * Vec<T>::lanes;
  for (int64_t j = 0; j < n; ++j) {
    const int64_t i = reverse ? n - 1 - j : j;
    if (cols[i] <= Vec<T>::lanes) panel_rows<T, 1, 4, 1>(0, K, a, K, Bp + i * size, C + off[i], 0, cols[i], false);
    else panel_rows<T, 1, 4, 2>(0, K, a, K, Bp + i * size, C + off[i], 0, cols[i], false);
  }
}

// C (M, N) = A (M, K) @ W^T with W (N, K) row-major, unpacked: dot products over k for the
// small products of a single cell step, where packing W (or the BLAS, which packs it per call)
// costs more than the product. A group of `lanes` rows of W is multiplied with each row of A
// (the group, 8 KiB at K = 128, stays in L1 while A's rows pass): one accumulator vector per
// row, `lanes` independent FMA chains, then a shuffle tree folds the accumulators into one
// vector of `lanes` dot products (lanes - 1 adds instead of lanes^2 scalar ones).
template <typename T>
struct IVec {
  using I = std::conditional_t<sizeof(T) == 4, int32_t, int64_t>;
  typedef I type __attribute__((vector_size(kVecBytes)));
};

// Lane L of fold<S>(a, b), where a and b hold rows in blocks of 2S partial sums each: in each
// block of 2S output lanes, the first S are a's block folded in half, the last S are b's.
template <int W, int S, bool Hi>
constexpr int fold_lane(int L) {
  const int base = L / (2 * S) * (2 * S), j = L % (2 * S);
  if (j < S) return Hi ? base + S + j : base + j;
  return Hi ? W + base + j : W + base + j - S;
}

template <typename T, int S, bool Hi, size_t... L>
constexpr typename IVec<T>::type fold_mask(std::index_sequence<L...>) {
  return typename IVec<T>::type{fold_lane<Vec<T>::lanes, S, Hi>(static_cast<int>(L))...};
}

template <typename T, int S>
inline typename Vec<T>::type fold(typename Vec<T>::type a, typename Vec<T>::type b) {
  constexpr auto lanes = std::make_index_sequence<Vec<T>::lanes>{};
  constexpr typename IVec<T>::type lo = fold_mask<T, S, false>(lanes), hi = fold_mask<T, S, true>(lanes);
  return __builtin_shuffle(a, b, lo) + __builtin_shuffle(a, b, hi);
}

// Folds acc[0..lanes) into acc[0] level by level, S = lanes/2, lanes/4, ..., 1.
template <typename T, int S>
inline void fold_tree(typename Vec<T>::type* acc) {
  constexpr int n = 2 * S;  // vectors at this level, each with blocks of 2S partials per row
  for (int i = 0; i < n / 2; ++i) acc[i] = fold<T, S>(acc[2 * i], acc[2 * i + 1]);
  if constexpr (S > 1) fold_tree<T, S / 2>(acc);
}

// The tree leaves lane L holding the row whose index is L with its bits reversed; feeding the
// accumulators in bit-reversed row order puts row L in lane L.
constexpr int bit_reverse(int v, int bits) {
  int r = 0;
  for (int i = 0; i < bits; ++i) r |= ((v >> i) & 1) << (bits - 1 - i);
  return r;
}

constexpr int log2_int(int v) { return v <= 1 ? 0 : 1 + log2_int(v / 2); }

template <typename T>
inline T hsum(const typename Vec<T>::type& v) {
  constexpr int W = Vec<T>::lanes;
  alignas(64) T t[W];
  __builtin_memcpy(t, &v, sizeof(v));
  T s = T(0);
  for (int i = 0; i < W; ++i) s += t[i];
  return s;
}

// NC dot products of one row a (K) with rows w[c] (K) at once: NC independent FMA chains.
// Each sum runs over k in vector lanes, then across the lanes, then over the last K % lanes
// terms, an order fixed by K alone (not by NC or by which rows run together).
template <typename T, int NC>
inline void dots(int64_t K, const T* a, const T* const* w, T* out) {
  using V = typename Vec<T>::type;
  constexpr int W = Vec<T>::lanes;
  const int64_t K0 = K / W * W;
  V acc[NC];
  for (int c = 0; c < NC; ++c) acc[c] = V{};
  for (int64_t k = 0; k < K0; k += W) {
    const V av = load(a + k);
    for (int c = 0; c < NC; ++c) acc[c] += av * load(w[c] + k);
  }
  for (int c = 0; c < NC; ++c) {
    T s = hsum<T>(acc[c]);
    for (int64_t k = K0; k < K; ++k) s += a[k] * w[c][k];
    out[c] = s;
  }
}

// kM, kK > 0 fix M and K at compile time (see gemm_nt_small below).
template <typename T, int64_t kM, int64_t kK>
void gemm_nt_small_impl(int64_t M_, int64_t N, int64_t K_, const T* A, int64_t lda, const T* Wt, int64_t ldw, T* C,
                        int64_t ldc) {
  const int64_t M = kM > 0 ? kM : M_, K = kK > 0 ? kK : K_;
  using V = typename Vec<T>::type;
  constexpr int W = Vec<T>::lanes;
  constexpr int bits = log2_int(W);
  // vectors of a row of A held in registers per pass over the group (AVX2 has 16 registers)
  constexpr int KV = kVecBytes == 32 ? 4 : 8;
  // Software prefetch this far ahead of each row chunk, never past the start of W's last row
  // (the rows after it may belong to another thread's slice). The hardware prefetcher alone
  // leaves the loop at 120 GB/s from L2; with it 149 GB/s, where a plain read-only stream
  // reaches 175 (1 thread, M = 1, N = 512, K = 128; 256 to 2048 bytes ahead all gain).
  constexpr int64_t kPrefetchBytes = 2048;
  const char* const pf_last = reinterpret_cast<const char*>(Wt + (N - 1) * ldw);
  const int64_t K0 = K / W * W;
  int64_t n = 0;
  for (; n + W <= N; n += W) {
    const T* wg = Wt + n * ldw;  // the group: rows n .. n + lanes of W
    for (int64_t m = 0; m < M; ++m) {
      const T* a = A + m * lda;
      // W's rows in order, so it streams through memory (16 interleaved row streams defeat the
      // L1 prefetcher); each row's dot product is its own pair of chains for out-of-order
      // execution. The row of A sits in registers, so every FMA loads only W (with A loaded
      // per FMA too the loads bound the loop: 61 vs 115 GB/s at M = 1, N = 1024, K = 128).
      V acc[W];
#pragma GCC unroll 16
      for (int r = 0; r < W; ++r) acc[r] = V{};
      int64_t k0 = 0;
      for (; k0 + KV * W <= K0; k0 += KV * W) {
        V xr[KV];
        for (int v = 0; v < KV; ++v) xr[v] = load(a + k0 + v * W);
#pragma GCC unroll 16
        for (int r = 0; r < W; ++r) {
          const T* w = wg + r * ldw + k0;
          const char* pf = std::min(reinterpret_cast<const char*>(w) + kPrefetchBytes, pf_last);
          for (int b = 0; b < KV * kVecBytes; b += 64) __builtin_prefetch(pf + b);
          V s0 = load(w) * xr[0], s1 = load(w + W) * xr[1];
          for (int v = 2; v < KV; v += 2) {
            s0 += load(w + v * W) * xr[v];
            s1 += load(w + (v + 1) * W) * xr[v + 1];
          }
          acc[bit_reverse(r, bits)] += s0 + s1;  // the fold below puts row r in lane r
        }
      }
      if (k0 < K0) {
#pragma GCC unroll 16
        for (int r = 0; r < W; ++r) {
          const T* w = wg + r * ldw;
          V s = V{};
          for (int64_t k = k0; k < K0; k += W) s += load(a + k) * load(w + k);
          acc[bit_reverse(r, bits)] += s;
        }
      }
      fold_tree<T, W / 2>(acc);
      T* c = C + m * ldc + n;
      __builtin_memcpy(c, &acc[0], sizeof(V));
      for (int64_t k = K0; k < K; ++k)
        for (int r = 0; r < W; ++r) c[r] += a[k] * wg[r * ldw + k];
    }
  }
  for (; n < N; ++n)
    for (int64_t m = 0; m < M; ++m) {
      const T* wr = Wt + n * ldw;
      dots<T, 1>(K, A + m * lda, &wr, C + m * ldc + n);
    }
}

// A single row of A (B = 1: a cell step or a sequence of one, the latency-bound case) with
// K of one to a few register chunks of A is the common case; with M and K known the compiler
// unrolls the k-loop and keeps the accumulators in registers. Measured for one thread's half
// of an LSTM step at H = 128 (8 products of 64 x 128 with M = 1, hot L2): 2.1 us generic,
// 1.9 with M fixed, 1.63 with M and K fixed.
template <typename T>
void gemm_nt_small(int64_t M, int64_t N, int64_t K, const T* A, int64_t lda, const T* Wt, int64_t ldw, T* C,
                   int64_t ldc) {
  if (M == 1) {
    switch (K) {
      case 64: return gemm_nt_small_impl<T, 1, 64>(M, N, K, A, lda, Wt, ldw, C, ldc);
      case 128: return gemm_nt_small_impl<T, 1, 128>(M, N, K, A, lda, Wt, ldw, C, ldc);
      case 256: return gemm_nt_small_impl<T, 1, 256>(M, N, K, A, lda, Wt, ldw, C, ldc);
      default: return gemm_nt_small_impl<T, 1, 0>(M, N, K, A, lda, Wt, ldw, C, ldc);
    }
  }
  gemm_nt_small_impl<T, 0, 0>(M, N, K, A, lda, Wt, ldw, C, ldc);
}

// C[m*ldc + g*gsc + j*jsc] = A[m] . W[g*gsw + j*ldw] for rows m < M, g < G, j < R, all G*R
// rows of W four at a time, each a single chain with its own sum across lanes (the order of
// dots, fixed by K alone). Used for the units past a thread's last whole vector of w_hh
// (recurrent.cpp, dense_tail: one call rather than one gemm_nt_small call per gate, LSTM
// 37x1x77x129 forward 0.983 of the time), and with the operands swapped for the columns of
// dX past its last whole vector (A: those columns of w_ih, W: rows of dG, jsc: dX's row
// stride), since a[k] w[k] = w[k] a[k].
template <typename T>
void dense_dots(int64_t M, int64_t G, int64_t R, int64_t K, const T* A, int64_t lda, const T* W, int64_t ldw,
                int64_t gsw, T* C, int64_t ldc, int64_t gsc, int64_t jsc) {
  const int64_t N = G * R;
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n0 = 0; n0 < N; n0 += 4) {
      const T* w[4];
      T out[4];
      const int nc = static_cast<int>(std::min<int64_t>(4, N - n0));
      for (int c = 0; c < nc; ++c) w[c] = W + (n0 + c) / R * gsw + (n0 + c) % R * ldw;
      switch (nc) {
        case 4: dots<T, 4>(K, A + m * lda, w, out); break;
        case 3: dots<T, 3>(K, A + m * lda, w, out); break;
        case 2: dots<T, 2>(K, A + m * lda, w, out); break;
        default: dots<T, 1>(K, A + m * lda, w, out); break;
      }
      for (int c = 0; c < nc; ++c) C[m * ldc + (n0 + c) / R * gsc + (n0 + c) % R * jsc] = out[c];
    }
}

// One packed panel: out (K, nr) with out[k*nr + i] = W[i*ldw + k] for the first `rows` rows
// of W (rows <= nr), zero past them. A transpose, so it runs on lanes x lanes blocks held in
// registers: log2(lanes) stages of two-source shuffles, lane L of the pair (r, r+b) taking
// a[L] / b[L-b] (lo) or a[L+b] / b[L] (hi) by bit b of L. About 6x faster than the scalar copy.
template <typename T, int B, bool Hi, size_t... L>
constexpr typename IVec<T>::type transpose_mask(std::index_sequence<L...>) {
  constexpr int W = Vec<T>::lanes;
  return typename IVec<T>::type{static_cast<typename IVec<T>::I>(
      (static_cast<int>(L) & B) ? (Hi ? W + static_cast<int>(L) : W + static_cast<int>(L) - B)
                                : (Hi ? static_cast<int>(L) + B : static_cast<int>(L)))...};
}

template <typename T, int B>
inline void transpose_stage(typename Vec<T>::type* v) {
  constexpr int W = Vec<T>::lanes;
  constexpr auto lanes = std::make_index_sequence<W>{};
  constexpr typename IVec<T>::type lo = transpose_mask<T, B, false>(lanes), hi = transpose_mask<T, B, true>(lanes);
  for (int r = 0; r < W; ++r)
    if ((r & B) == 0) {
      const auto a = v[r], b = v[r + B];
      v[r] = __builtin_shuffle(a, b, lo);
      v[r + B] = __builtin_shuffle(a, b, hi);
    }
  if constexpr (2 * B < W) transpose_stage<T, 2 * B>(v);
}

// One block of W x W (W = lanes of a vector), transposed into a panel: out[(k0 + c) * nr + i0 +
// r] = Wr[(i0 + r) * ldw + k0 + c] for r < nrow, and 0 for rows nrow..W-1 (zero padding).
template <typename T>
inline void pack_block(const T* Wr, int64_t ldw, int64_t i0, int nrow, int64_t k0, int64_t nr, T* out) {
  using V = typename Vec<T>::type;
  constexpr int W = Vec<T>::lanes;
  V v[W];
  for (int r = 0; r < W; ++r) v[r] = r < nrow ? load(Wr + (i0 + r) * ldw + k0) : V{};
  transpose_stage<T, 1>(v);
  for (int c = 0; c < W; ++c) __builtin_memcpy(out + (k0 + c) * nr + i0, &v[c], sizeof(V));
}

// A panel of nr columns from `rows` rows of the weights Wr (rows <= nr; the rest are zeros), in
// blocks of W rows: whole W x W blocks transposed in registers (a block of fewer rows too, with
// zero vectors for the missing ones), the last K % W columns element by element. The partial
// blocks of a panel narrower than nr went element by element too, and took as long as all the
// whole blocks: one thread's w_hh of an LSTM at H = 129, units 0..80 (AVX-512, float), 6.6 us
// that way and 4.4 us now.
template <typename T>
void pack_panel(const T* Wr, int64_t ldw, int64_t rows, int64_t K, int64_t nr, T* out) {
  using V = typename Vec<T>::type;
  constexpr int W = Vec<T>::lanes;
  for (int64_t i0 = 0; i0 < nr; i0 += W) {
    const int nrow = static_cast<int>(std::min<int64_t>(std::max<int64_t>(rows - i0, 0), W));
    if (nrow == 0) {
      const V zero{};
      for (int64_t k = 0; k < K; ++k) __builtin_memcpy(out + k * nr + i0, &zero, sizeof(V));
      continue;
    }
    int64_t k0 = 0;
    if (nrow == W)
      for (; k0 + W <= K; k0 += W) pack_block<T>(Wr, ldw, i0, W, k0, nr, out);  // (nrow a constant here)
    else
      for (; k0 + W <= K; k0 += W) pack_block<T>(Wr, ldw, i0, nrow, k0, nr, out);
    for (; k0 < K; ++k0)
      for (int r = 0; r < W; ++r) out[k0 * nr + i0 + r] = r < nrow ? Wr[(i0 + r) * ldw + k0] : T(0);
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
  k->group_update = kVecBytes == 64;  // measured to pay with AVX-512 only (recurrent.cpp)
  k->panel = panel<T>;
  k->row_panels = row_panels<T>;
  k->gemm_nt_small = gemm_nt_small<T>;
  k->dense_dots = dense_dots<T>;
  k->pack_panel = pack_panel<T>;
}

}  // namespace

void fill_kernels(IsaKernels<float>* k) { fill(k); }
void fill_kernels(IsaKernels<double>* k) { fill(k); }

}  // namespace FASTRNN_ISA
}  // namespace fastrnn
