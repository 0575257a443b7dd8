// Recurrent layers: the time-loop driver (layer x direction x time), forward and BPTT.
// Shapes and cache layout: see the GENERAL NOTES in fastrnn/fastrnn.h.
//
// Per layer:  1. input projection for all T steps as ONE GEMM per direction
//                (T*B, I_l) x (I_l, G*H), written straight into the gates cache;
//             2. the recurrence: per step one small GEMM (B, H) x (H, G*H) and one fused
//                pointwise kernel; the two directions run concurrently on their own threads;
//             3. backward: the reverse loop produces dG for every step, then the weight
//                gradients and dx are single GEMMs over all steps:
//                dW_ih += dG^T X,  dW_hh += dG^T H_prev,  dX = dG W_ih.
#include <fastrnn/fastrnn.h>

#include <omp.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <new>
#include <thread>

#include "gemm.h"
#include "kernels.h"

namespace fastrnn {

int gate_count(Mode m) {
  switch (m) {
    case Mode::Lstm: return 4;
    case Mode::Gru: return 3;
    default: return 1;
  }
}
int cache_gate_count(Mode m) { return m == Mode::Gru ? 4 : gate_count(m); }

template <typename T>
Buffer<T>::Buffer(size_t n) : n_(n) {
  if (n == 0) return;
  if (n > (SIZE_MAX - 63) / sizeof(T)) throw std::bad_alloc();
  size_t bytes = (n * sizeof(T) + 63) / 64 * 64;
  void* p = std::aligned_alloc(64, bytes);
  if (!p) throw std::bad_alloc();
  ptr_.reset(static_cast<T*>(p));
}
template <typename T>
void Buffer<T>::Free::operator()(T* p) const { std::free(p); }
template class Buffer<float>;
template class Buffer<double>;

template <typename T>
size_t RecurrentCache<T>::bytes() const {
  size_t n = 0;
  for (auto* v : {&gates, &h, &c, &layer_inputs})
    for (const auto& b : *v) n += b.size() * sizeof(T);
  return n;
}
template struct RecurrentCache<float>;
template struct RecurrentCache<double>;

namespace {

// Pointwise work below this many gate elements per step runs on the calling thread: an
// OpenMP fork/join costs more than it saves.
constexpr int64_t kParallelPointwise = 32768;

template <typename Args, typename Fn>
void run_pointwise(Fn fn, const Args& a, int64_t gates_per_row, int threads) {
  const int64_t rows = a.rows;
  if (threads <= 1 || rows < 2 || rows * gates_per_row < kParallelPointwise) {
    fn(a);
    return;
  }
  const int nt = static_cast<int>(std::min<int64_t>(threads, rows));
#pragma omp parallel num_threads(nt)
  {
    const int id = omp_get_thread_num();
    const int64_t b0 = rows * id / nt, b1 = rows * (id + 1) / nt;
    Args part = a;
    part.rows = b1 - b0;
    part.advance(b0);
    fn(part);
  }
}

}  // namespace

// Row advancing for the parallel split (defined here: the structs are plain data in kernels.h).
template <typename T>
struct StepFwd : StepArgs<T> {
  void advance(int64_t b) {
    const int64_t H = this->H;
    this->gx += b * this->ldgx;
    this->gh += b * this->ldgh;
    this->h_prev += b * H;
    this->h_out += b * H;
    if (this->c_prev) { this->c_prev += b * H; this->c_out += b * H; }
    if (this->gates) this->gates += b * this->ldgates;
    this->y += b * this->ldy;
    if (this->active) this->active += b;
  }
};
template <typename T>
struct StepBwd : StepBackArgs<T> {
  void advance(int64_t b) {
    const int64_t H = this->H;
    this->gates += b * this->ldgates;
    this->h_prev += b * H;
    this->h_out += b * H;
    if (this->c_prev) { this->c_prev += b * H; this->c_out += b * H; }
    this->dh += b * H;
    if (this->dc) this->dc += b * H;
    this->dy += b * this->lddy;
    this->dgx += b * this->lddgx;
    this->dgh += b * this->lddgh;
    this->dh_prev += b * H;
    if (this->dc_prev) this->dc_prev += b * H;
    if (this->active) this->active += b;
  }
};

namespace {

// OpenBLAS runs a GEMM with M*N*K at or below this on the calling thread only.
constexpr double kBlasSingleThreadMNK = 65536.0 * 4;

// Runs fn(d, threads) for each direction. The two directions of a layer are independent:
// when each step's GEMM is small enough that the BLAS runs it on the calling thread, they run
// concurrently, each on its own OS thread (no OpenMP region is open there, so calling the
// BLAS is safe); larger steps run one direction after the other with every thread.
template <typename Fn>
void for_each_direction(int64_t D, int threads, double step_mnk, Fn fn) {
  if (D == 1) { fn(0, threads); return; }
  if (threads < 2 || step_mnk > kBlasSingleThreadMNK) { fn(0, threads); fn(1, threads); return; }
  const int t1 = threads / 2, t0 = threads - t1;
  std::exception_ptr err1, err0;
  std::thread other([&] {
    try { fn(1, t1); } catch (...) { err1 = std::current_exception(); }
  });
  try { fn(0, t0); } catch (...) { err0 = std::current_exception(); }
  other.join();
  if (err0) std::rethrow_exception(err0);
  if (err1) std::rethrow_exception(err1);
}

// active (T, B): 1 where step t is real for sequence b (t < lengths[b]); empty = all real.
std::vector<uint8_t> make_active(const RecurrentShape& s, const int64_t* lengths) {
  std::vector<uint8_t> act;
  if (!lengths) return act;
  act.resize(static_cast<size_t>(s.T * s.B));
  for (int64_t t = 0; t < s.T; ++t)
    for (int64_t b = 0; b < s.B; ++b) act[t * s.B + b] = t < lengths[b] ? 1 : 0;
  return act;
}

// Slots of the (T+1, B, H) state buffer read and written at time t (see fastrnn.h).
inline int64_t prev_slot(int64_t d, int64_t t) { return d == 0 ? t : t + 1; }
inline int64_t out_slot(int64_t d, int64_t t) { return d == 0 ? t + 1 : t; }

template <typename T>
struct Zeros {  // a shared zero vector standing in for absent biases / states
  Buffer<T> buf;
  explicit Zeros(size_t n) : buf(std::max<size_t>(n, 1)) { std::memset(buf.data(), 0, buf.size() * sizeof(T)); }
  const T* get() const { return buf.data(); }
};

}  // namespace

// ------------------------------------------------------------------------------ forward

template <typename T>
void recurrent_forward(const RecurrentForwardArgs<T>& a, RecurrentCache<T>* cache) {
  const RecurrentShape& s = a.shape;
  const int64_t T_ = s.T, B = s.B, H = s.H, L = s.L, D = s.D;
  const int G = gate_count(s.mode), Gc = cache_gate_count(s.mode);
  const int64_t GH = G * H, BH = B * H, DH = D * H;
  const bool lstm = s.mode == Mode::Lstm, train = cache != nullptr;
  const int threads = num_threads();
  const auto& kern = pointwise_kernels<T>();
  const auto fwd = kern.forward[static_cast<int>(s.mode)];

  const std::vector<uint8_t> active = make_active(s, a.lengths);
  const Zeros<T> zeros(static_cast<size_t>(std::max(GH, BH)));

  if (train) {
    cache->shape = s;
    if (a.lengths) cache->lengths.assign(a.lengths, a.lengths + B); else cache->lengths.clear();
    cache->gates.clear(); cache->h.clear(); cache->c.clear(); cache->layer_inputs.clear();
    for (int64_t k = 0; k < L * D; ++k) {
      cache->gates.emplace_back(static_cast<size_t>(T_ * B * Gc * H));
      cache->h.emplace_back(static_cast<size_t>((T_ + 1) * BH));
      if (lstm) cache->c.emplace_back(static_cast<size_t>((T_ + 1) * BH));
    }
    for (int64_t l = 0; l + 1 < L; ++l) cache->layer_inputs.emplace_back(static_cast<size_t>(T_ * B * DH));
  }
  // Inference: between-layer outputs ping-pong in two buffers; per direction an input
  // projection buffer and a two-slot state buffer (no per-step state is kept).
  Buffer<T> inter[2];
  std::vector<Buffer<T>> gx_scratch, h_scratch, c_scratch;
  if (!train) {
    if (L > 1) { inter[0] = Buffer<T>(T_ * B * DH); if (L > 2) inter[1] = Buffer<T>(T_ * B * DH); }
    for (int64_t d = 0; d < D; ++d) {
      gx_scratch.emplace_back(static_cast<size_t>(T_ * B * GH));
      h_scratch.emplace_back(static_cast<size_t>(2 * BH));
      if (lstm) c_scratch.emplace_back(static_cast<size_t>(2 * BH));
    }
  }
  std::vector<Buffer<T>> gh_scratch;
  for (int64_t d = 0; d < D; ++d) gh_scratch.emplace_back(static_cast<size_t>(BH * G));

  const T* X = a.x;  // input of the current layer, (T, B, I_l)
  for (int64_t l = 0; l < L; ++l) {
    const int64_t I_l = s.input_size(l);
    const bool last = l + 1 == L;
    T* Y = last ? a.y : (train ? cache->layer_inputs[l].data() : inter[l % 2].data());

    // 1. input projections, one GEMM per direction: gx = X w_ih^T  (T*B, G*H)
    for (int64_t d = 0; d < D; ++d) {
      const LayerWeights<T>& w = a.weights[l * D + d];
      T* gx = train ? cache->gates[l * D + d].data() : gx_scratch[d].data();
      const int64_t ldgx = train ? Gc * H : GH;
      gemm<T>(false, true, T_ * B, GH, I_l, T(1), X, I_l, w.w_ih, I_l, T(0), gx, ldgx);
    }

    // 2. the recurrence
    for_each_direction(D, threads, double(B) * GH * H, [&](int64_t d, int dthreads) {
      const int64_t k = l * D + d;
      const LayerWeights<T>& w = a.weights[k];
      T* gx = train ? cache->gates[k].data() : gx_scratch[d].data();
      const int64_t ldgx = train ? Gc * H : GH;
      T* hbuf = train ? cache->h[k].data() : h_scratch[d].data();
      T* cbuf = lstm ? (train ? cache->c[k].data() : c_scratch[d].data()) : nullptr;
      T* gh = gh_scratch[d].data();
      const int64_t first = train ? (d == 0 ? 0 : T_) : 0;
      std::memcpy(hbuf + first * BH, a.h0 ? a.h0 + k * BH : zeros.get(), BH * sizeof(T));
      if (lstm) std::memcpy(cbuf + first * BH, a.c0 ? a.c0 + k * BH : zeros.get(), BH * sizeof(T));
      int64_t last_slot = first;
      for (int64_t step = 0; step < T_; ++step) {
        const int64_t t = d == 0 ? step : T_ - 1 - step;
        const int64_t ps = train ? prev_slot(d, t) : (step & 1);
        const int64_t os = train ? out_slot(d, t) : ((step + 1) & 1);
        gemm<T>(false, true, B, GH, H, T(1), hbuf + ps * BH, H, w.w_hh, H, T(0), gh, GH);
        StepFwd<T> sa{};
        sa.rows = B; sa.H = H;
        sa.gx = gx + t * B * ldgx; sa.ldgx = ldgx;
        sa.gh = gh; sa.ldgh = GH;
        sa.b_ih = w.b_ih ? w.b_ih : zeros.get();
        sa.b_hh = w.b_hh ? w.b_hh : zeros.get();
        sa.h_prev = hbuf + ps * BH; sa.h_out = hbuf + os * BH;
        if (lstm) { sa.c_prev = cbuf + ps * BH; sa.c_out = cbuf + os * BH; }
        sa.gates = train ? gx + t * B * ldgx : nullptr; sa.ldgates = ldgx;
        sa.y = Y + t * B * DH + d * H; sa.ldy = DH;
        sa.active = active.empty() ? nullptr : active.data() + t * B;
        run_pointwise(fwd, sa, GH, dthreads);
        last_slot = os;
      }
      std::memcpy(a.hn + k * BH, hbuf + last_slot * BH, BH * sizeof(T));
      if (lstm) std::memcpy(a.cn + k * BH, cbuf + last_slot * BH, BH * sizeof(T));
    });

    // dropout between layers: the next layer sees Y * mask (in place; backward needs only
    // the masked input and the mask)
    if (!last && a.dropout_masks && a.dropout_masks[l]) {
      const T* m = a.dropout_masks[l];
      const int64_t n = T_ * B * DH;
#pragma omp parallel for num_threads(threads) if (n > (1 << 18))
      for (int64_t i = 0; i < n; ++i) Y[i] *= m[i];
    }
    X = Y;
  }
}

// ----------------------------------------------------------------------------- backward

template <typename T>
void recurrent_backward(const RecurrentCache<T>& cache, const RecurrentBackwardArgs<T>& a) {
  const RecurrentShape& s = cache.shape;
  const int64_t T_ = s.T, B = s.B, H = s.H, L = s.L, D = s.D;
  const int G = gate_count(s.mode), Gc = cache_gate_count(s.mode);
  const int64_t GH = G * H, BH = B * H, DH = D * H;
  const bool lstm = s.mode == Mode::Lstm, gru = s.mode == Mode::Gru;
  const int threads = num_threads();
  const auto bwd = pointwise_kernels<T>().backward[static_cast<int>(s.mode)];

  const std::vector<uint8_t> active = make_active(s, cache.lengths.empty() ? nullptr : cache.lengths.data());
  const Zeros<T> zeros(static_cast<size_t>(BH));

  std::vector<Buffer<T>> dg;       // per direction (T, B, G*H): gate gradients of all steps
  std::vector<Buffer<T>> carry_h, carry_c, dgh_step;
  for (int64_t d = 0; d < D; ++d) {
    dg.emplace_back(static_cast<size_t>(T_ * B * GH));
    carry_h.emplace_back(static_cast<size_t>(2 * BH));
    if (lstm) carry_c.emplace_back(static_cast<size_t>(2 * BH));
    if (gru) dgh_step.emplace_back(static_cast<size_t>(BH * G));
  }
  Buffer<T> dX_above(L > 1 ? static_cast<size_t>(T_ * B * DH) : 0);  // dL/d(input of layer l)

  const T* dY = a.dy;  // dL/d(output of layer l), (T, B, D*H)
  for (int64_t l = L - 1; l >= 0; --l) {
    const int64_t I_l = s.input_size(l);
    const T* X = l == 0 ? a.x : cache.layer_inputs[l - 1].data();

    // 1. reverse loop over time: gate gradients for every step, carries to the initial state
    for_each_direction(D, threads, double(B) * GH * H, [&](int64_t d, int dthreads) {
      const int64_t k = l * D + d;
      const LayerWeights<T>& w = a.weights[k];
      const T* gates = cache.gates[k].data();
      const T* hbuf = cache.h[k].data();
      const T* cbuf = lstm ? cache.c[k].data() : nullptr;
      T* dgd = dg[d].data();
      T* ch = carry_h[d].data();
      T* cc = lstm ? carry_c[d].data() : nullptr;
      std::memcpy(ch, a.dhn ? a.dhn + k * BH : zeros.get(), BH * sizeof(T));
      if (lstm) std::memcpy(cc, a.dcn ? a.dcn + k * BH : zeros.get(), BH * sizeof(T));
      int cur = 0;
      for (int64_t step = T_ - 1; step >= 0; --step) {
        const int64_t t = d == 0 ? step : T_ - 1 - step;
        const int64_t ps = prev_slot(d, t), os = out_slot(d, t);
        StepBwd<T> ba{};
        ba.rows = B; ba.H = H;
        ba.gates = gates + t * B * Gc * H; ba.ldgates = Gc * H;
        ba.h_prev = hbuf + ps * BH; ba.h_out = hbuf + os * BH;
        if (lstm) { ba.c_prev = cbuf + ps * BH; ba.c_out = cbuf + os * BH; }
        ba.dh = ch + cur * BH;
        if (lstm) { ba.dc = cc + cur * BH; ba.dc_prev = cc + (1 - cur) * BH; }
        ba.dy = dY + t * B * DH + d * H; ba.lddy = DH;
        ba.dgx = dgd + t * B * GH; ba.lddgx = GH;
        ba.dgh = gru ? dgh_step[d].data() : ba.dgx; ba.lddgh = GH;
        ba.dh_prev = ch + (1 - cur) * BH;
        ba.active = active.empty() ? nullptr : active.data() + t * B;
        run_pointwise(bwd, ba, GH, dthreads);
        // dh_prev += dG_h (B, G*H) @ w_hh (G*H, H)
        gemm<T>(false, false, B, H, GH, T(1), ba.dgh, GH, w.w_hh, H, T(1), ch + (1 - cur) * BH, H);
        cur = 1 - cur;
      }
      std::memcpy(a.dh0 + k * BH, ch + cur * BH, BH * sizeof(T));
      if (lstm) std::memcpy(a.dc0 + k * BH, cc + cur * BH, BH * sizeof(T));
    });

    // 2. everything that is not sequential, as GEMMs over all T*B rows
    T* dX = l == 0 ? a.dx : dX_above.data();
    for (int64_t d = 0; d < D; ++d) {
      const int64_t k = l * D + d;
      const LayerWeights<T>& w = a.weights[k];
      const LayerGrads<T>& g = a.grads[k];
      T* dgd = dg[d].data();
      // dX (T*B, I_l) (+)= dG (T*B, G*H) @ w_ih (G*H, I_l)
      gemm<T>(false, false, T_ * B, I_l, GH, T(1), dgd, GH, w.w_ih, I_l, d == 0 ? T(0) : T(1), dX, I_l);
      // dW_ih (G*H, I_l) += dG^T X
      gemm<T>(true, false, GH, I_l, T_ * B, T(1), dgd, GH, X, I_l, T(1), g.w_ih, I_l);
      if (g.b_ih) add_column_sums<T>(T_ * B, GH, dgd, GH, g.b_ih);
      if (gru) {
        // h side of the n gate: d(hn) = dnp * r (padding rows stay 0)
        const T* gates = cache.gates[k].data();
        const int64_t rows = T_ * B;
#pragma omp parallel for num_threads(threads) if (rows * H > (1 << 16))
        for (int64_t row = 0; row < rows; ++row) {
          if (!active.empty() && !active[row]) continue;
          const T* r = gates + row * Gc * H;
          T* dn = dgd + row * GH + 2 * H;
          for (int64_t j = 0; j < H; ++j) dn[j] *= r[j];
        }
      }
      // dW_hh (G*H, H) += dG_h^T H_prev, H_prev = slots 0..T-1 (forward) or 1..T (reverse)
      const T* hprev = cache.h[k].data() + (d == 0 ? 0 : BH);
      gemm<T>(true, false, GH, H, T_ * B, T(1), dgd, GH, hprev, H, T(1), g.w_hh, H);
      if (g.b_hh) add_column_sums<T>(T_ * B, GH, dgd, GH, g.b_hh);
    }

    // 3. into the layer below: through the dropout mask
    if (l > 0) {
      if (a.dropout_masks && a.dropout_masks[l - 1]) {
        const T* m = a.dropout_masks[l - 1];
        const int64_t n = T_ * B * DH;
#pragma omp parallel for num_threads(threads) if (n > (1 << 18))
        for (int64_t i = 0; i < n; ++i) dX[i] *= m[i];
      }
      dY = dX;
    }
  }
}

template void recurrent_forward<float>(const RecurrentForwardArgs<float>&, RecurrentCache<float>*);
template void recurrent_forward<double>(const RecurrentForwardArgs<double>&, RecurrentCache<double>*);
template void recurrent_backward<float>(const RecurrentCache<float>&, const RecurrentBackwardArgs<float>&);
template void recurrent_backward<double>(const RecurrentCache<double>&, const RecurrentBackwardArgs<double>&);

}  // namespace fastrnn
