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
  const int64_t H = a.H;
  for (int64_t j = 0; j < H; ++j) {
    a.h_out[b * H + j] = a.h_prev[b * H + j];
    a.y[b * a.ldy + j] = T(0);
  }
  if (lstm)
    for (int64_t j = 0; j < H; ++j) a.c_out[b * H + j] = a.c_prev[b * H + j];
}

// Padding step in backward: no gate gradient, the carries pass through.
template <typename T>
inline void pass_back(const StepBackArgs<T>& a, int64_t b, int G, bool lstm, bool gru) {
  const int64_t H = a.H;
  for (int64_t j = 0; j < G * H; ++j) a.dgx[b * a.lddgx + j] = T(0);
  if (gru)
    for (int64_t j = 0; j < G * H; ++j) a.dgh[b * a.lddgh + j] = T(0);
  for (int64_t j = 0; j < H; ++j) a.dh_prev[b * H + j] = a.dh[b * H + j];
  if (lstm)
    for (int64_t j = 0; j < H; ++j) a.dc_prev[b * H + j] = a.dc[b * H + j];
}

// ---------------------------------------------------------------- vanilla RNN (G = 1)
// forward:  h = act(x w_ih^T + b_ih + h_prev w_hh^T + b_hh)
template <typename T, bool Relu>
void rnn_forward(const StepArgs<T>& a) {
  const int64_t H = a.H;
  for (int64_t b = 0; b < a.rows; ++b) {
    if (!row_active(a.active, b)) { pass_through(a, b, false); continue; }
    const T* gx = a.gx + b * a.ldgx;
    const T* gh = a.gh + b * a.ldgh;
    T* h = a.h_out + b * H;
    T* y = a.y + b * a.ldy;
    T* g = a.gates ? a.gates + b * a.ldgates : nullptr;
#pragma omp simd
    for (int64_t j = 0; j < H; ++j) {
      const T pre = gx[j] + a.b_ih[j] + gh[j] + a.b_hh[j];
      const T v = Relu ? relu(pre) : tanh_(pre);
      h[j] = v;
      y[j] = v;
    }
    if (g)
      for (int64_t j = 0; j < H; ++j) g[j] = h[j];
  }
}

// backward: dpre = dh_total * act'(h)   (tanh' = 1 - h^2, relu' = [h > 0])
template <typename T, bool Relu>
void rnn_backward(const StepBackArgs<T>& a) {
  const int64_t H = a.H;
  for (int64_t b = 0; b < a.rows; ++b) {
    if (!row_active(a.active, b)) { pass_back(a, b, 1, false, false); continue; }
    const T* h = a.gates + b * a.ldgates;
    const T* dh = a.dh + b * H;
    const T* dy = a.dy + b * a.lddy;
    T* dg = a.dgx + b * a.lddgx;
    T* dhp = a.dh_prev + b * H;
#pragma omp simd
    for (int64_t j = 0; j < H; ++j) {
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
  const int64_t H = a.H;
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
      for (int64_t j = 0; j < H; ++j) {
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
      for (int64_t j = 0; j < H; ++j) {
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
  const int64_t H = a.H;
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
    for (int64_t j = 0; j < H; ++j) {
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
  const int64_t H = a.H;
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
      for (int64_t j = 0; j < H; ++j) {
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
      for (int64_t j = 0; j < H; ++j) {
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
  const int64_t H = a.H;
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
    for (int64_t j = 0; j < H; ++j) {
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

template <typename T>
void fill(PointwiseKernels<T>* k) {
  k->forward[0] = rnn_forward<T, false>;
  k->forward[1] = rnn_forward<T, true>;
  k->forward[2] = lstm_forward<T>;
  k->forward[3] = gru_forward<T>;
  k->backward[0] = rnn_backward<T, false>;
  k->backward[1] = rnn_backward<T, true>;
  k->backward[2] = lstm_backward<T>;
  k->backward[3] = gru_backward<T>;
}

}  // namespace

void fill_kernels(PointwiseKernels<float>* k) { fill(k); }
void fill_kernels(PointwiseKernels<double>* k) { fill(k); }

}  // namespace FASTRNN_ISA
}  // namespace fastrnn
