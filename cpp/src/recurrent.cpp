// Recurrent layers: the time-loop driver (layer x direction x time), forward and BPTT.
// Shapes and cache layout: see the GENERAL NOTES in fastrnn/fastrnn.h.
//
// Per layer:  1. input projection for all T steps, (T*B, I_l) x (I_l, G*H), written straight
//                into the gates cache: at the start of the time loop's region, each thread for
//                its own units' gate columns, with the panel kernel on packed w_ih (no BLAS);
//             2. the recurrence in the same persistent OpenMP region: per step each thread
//                multiplies h by its packed slice of w_hh (own SIMD kernel, no BLAS) and runs
//                the fused pointwise cell update of its units; one barrier per step where
//                a direction is split between threads; the two directions run on separate
//                threads;
//             3. backward: the reverse loop produces dG for every step, then the weight
//                gradients are single GEMMs over all steps: dW_ih += dG^T X,
//                dW_hh += dG^T H_prev; dX = dG W_ih runs in the panel kernel in row groups,
//                partly in the loop's region while a thread waits at a barrier (one
//                direction; otherwise a GEMM too).
#include <fastrnn/fastrnn.h>

#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <new>
#include <stdexcept>

#include "barrier.h"
#include "gemm.h"
#include "kernels.h"
#include "pair.h"

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
size_t RecurrentCache<T>::bytes() const {
  size_t n = 0;
  for (auto* v : {&gates, &h, &c, &layer_inputs})
    for (const auto& b : *v) n += b.size() * sizeof(T);
  return n;
}
template struct RecurrentCache<float>;
template struct RecurrentCache<double>;

namespace {

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

// ---- the persistent time loop -------------------------------------------------------------
// Each thread owns a range of hidden units of one direction, with all G gate rows of w_hh for
// them, for the whole sequence: its slice of w_hh stays in its own cache, the cell update of
// its units needs nothing from other threads, and one barrier per step publishes the new h
// (none where no direction has more than one thread).
// No BLAS call happens inside. Ranges are cut on whole SIMD vectors (nr / 2 units), not whole
// panels, so an odd H splits evenly: H = 333 on two threads is 176 + 157 units, 5.5 + 5
// panels of 32 (a last panel of one vector costs half), where cutting on panels gave 5 + 6.
struct Slice {
  int64_t d, u0, u1;  // direction d, hidden units [u0, u1)
  int64_t p0;         // its first panel in the direction's packed buffer
  int64_t dense = 0;  // its last `dense` units take their w_hh products as dot products (dense_tail)
  // packed as panels of nr units from u0; the last one may be narrower (w_ih, and the backward)
  int64_t panels(int64_t nr) const { return (u1 - u0 + nr - 1) / nr; }
  int64_t cols(int64_t p, int64_t nr) const { return std::min(nr, u1 - u0 - p * nr); }
  // the forward's packed w_hh: the same panels without the dense units
  int64_t hh_panels(int64_t nr) const { return (u1 - dense - u0 + nr - 1) / nr; }
  int64_t hh_cols(int64_t p, int64_t nr) const { return std::min(nr, u1 - dense - u0 - p * nr); }
};

// A few units past H's last whole SIMD vector (H = 129: 8 vectors of 16 and 1 unit) cost a
// whole vector's panel of w_hh in every step (4 x 129 x 64 bytes from L2 for one unit of an
// LSTM), and as one more vector in the split between threads they made it 5 + 4 vectors.
// Instead, those units take their products as dot products over their own rows of w_hh
// (dense_dots) and the split is of the whole vectors alone (4 + 4, and the unit with the
// last thread). Only for up to an eighth of a vector, and while B * those units stay small:
// each dot product is one FMA chain and a sum across lanes. Paired medians against panels
// (2 threads, LSTM forward, T = 50, I = 64): H = 129 0.938-0.949 for B = 4 to 32, 0.945 at
// 64, 0.997 at 128; H = 130 0.978 / 0.989 / 1.000 at B = 1 / 8 / 32; H = 131 1.003 at B = 1;
// H = 132 1.044 / 1.110 at B = 1 / 8. The rule depends on the shape alone, never on the
// thread count.
constexpr int64_t kDenseTailDots = 64;  // B * units, per gate
inline int64_t dense_tail(int64_t H, int64_t B, int64_t nr) {
  const int64_t vl = nr / 2, r = H % vl;
  return H > vl && 8 * r <= vl && B * r <= kDenseTailDots ? r : 0;
}

// The groups of units a forward step updates one after the other, each right after its
// products: one packed panel each, except that a last panel narrower than a SIMD vector joins
// the one before it (alone, the pointwise pass would run it unit by unit; with more than a
// vector of units it runs the tail as one more vector). Group q is panel q; the last group
// runs on to the slice's last unit, with the dense units' dot products (dense_tail).
//
// Only while a panel and a block of rows of h_prev (K = H) fit in kGroupUpdateBytes, about an
// L1 data cache. With larger panels the update per group was slower than one update after all
// of a step's products (paired, 2 threads, LSTM forward: H = 256 0.95-0.98 for B = 32 and 64;
// H = 512 1.026-1.046 for B = 16, 32 and 64; H = 500, B = 48 1.016), so there a step is one
// group.
//
// At B = 1 a step is one group too: its product is a stream of the slice's panels from L2,
// which runs fastest as one row_panels call (kernels.h), and a pointwise call per group cost
// more than the L1 it saved (LSTM, 64 units at B = 1: 267 ns in one call, 4 x 99 ns in four).
// Paired medians against groups of one panel (AVX2, Zen 3, 15-31 alternations of two builds):
// LSTM 100x1x128x128 forward 0.898 on two threads and 0.886 on one, forward+backward 0.900;
// GRU forward 0.905.
//
// The gains above were measured with AVX-512 (Zen 5, 48 KiB L1). With AVX2 on a Zen 3 core (32
// KiB L1) the update per group lost at every shape tried, small panels too, so the ISA levels
// below AVX-512 update once per step (IsaKernels::group_update). Paired medians, one update per
// step against groups (2 threads, 11-15 alternations of two builds): LSTM forward 50x32x256x256
// 0.957, 41x17x65x333 0.909, 50x32x128x128 0.898, 50x8x192x192 0.979; GRU forward
// 50x32x256x256 0.925, 50x64x128x128 0.845.
constexpr int64_t kGroupUpdateBytes = int64_t(40) << 10;
inline int64_t step_groups(const Slice& sl, int64_t B, int64_t K, int64_t nr, size_t elem, bool group_update) {
  const int64_t np = sl.hh_panels(nr);
  if (!group_update || B == 1 || K * (nr + kPanelRowGroup) * int64_t(elem) > kGroupUpdateBytes) return 1;
  return np >= 2 && sl.hh_cols(np - 1, nr) < nr / 2 ? np - 1 : np;
}

// Vectors of nr / 2 units covering H units: the grain of the split between threads.
inline int64_t unit_vectors(int64_t H, int64_t nr) { return (H + nr / 2 - 1) / (nr / 2); }

struct Plan {
  std::vector<std::vector<Slice>> of_thread;
  int64_t panels = 0;  // packed panels per direction (the most that any direction holds)
  // Some direction is split between threads, so its steps need the barrier. Otherwise (one
  // thread per direction: a bidirectional layer on two threads) the threads share nothing
  // within the loop and run without it.
  bool shared = false;
};

// Which slices each of nt threads owns. Two directions and >= 2 threads: the team is split
// between the directions (they are independent); otherwise every thread takes a share of
// every direction. The forward and the backward of a shape have the same plan (so the same
// scratch size); the backward takes the dense units in its panels like the others.
Plan plan_threads(int64_t D, int64_t H, int64_t B, int64_t nr, int nt) {
  const int64_t vl = nr / 2, dense = dense_tail(H, B, nr), NV = unit_vectors(H - dense, nr);
  Plan plan;
  plan.of_thread.resize(nt);
  std::vector<int64_t> used(D, 0);
  // part p of `parts` starts at vector ceil(NV p / parts): when the vectors do not divide
  // evenly, the last part (whose last vector is the partial one, run by the pointwise pass a
  // second time) is the one with fewer. The last part also takes the dense units.
  auto cut = [&](int64_t part, int64_t parts) {
    return part == parts ? H : std::min(H, (NV * part + parts - 1) / parts * vl);
  };
  auto add = [&](int t, int64_t d, int64_t part, int64_t parts) {
    const Slice sl{d, cut(part, parts), cut(part + 1, parts), used[d], part + 1 == parts ? dense : 0};
    used[d] += sl.panels(nr);
    plan.of_thread[t].push_back(sl);
  };
  if (D == 2 && nt >= 2) {
    const int n0 = (nt + 1) / 2, n1 = nt - n0;
    for (int t = 0; t < n0; ++t) add(t, 0, t, n0);
    for (int t = 0; t < n1; ++t) add(n0 + t, 1, t, n1);
  } else {
    for (int t = 0; t < nt; ++t)
      for (int64_t d = 0; d < D; ++d) add(t, d, t, nt);
  }
  plan.panels = *std::max_element(used.begin(), used.end());
  std::vector<int> owners(D, 0);
  for (const auto& own : plan.of_thread)
    for (const Slice& sl : own)
      if (sl.u0 < sl.u1) plan.shared |= ++owners[sl.d] > 1;
  return plan;
}

// Forward packing of w (G*H, K), w_hh (K = H) or w_ih (K = I): panel p of a slice = output
// columns g*H + u0 + p*nr .. +nr of a @ w^T, the G gates' panels of the same units next to
// each other (a step runs them one group of units at a time, so it reads the buffer in order):
//   Wp[(((p0 + p)*G + g)*K + k)*nr + i] = w[g*H + u0 + p*nr + i][k]   (0 past u1)
// Each thread of the time loop packs its own slices at the start of the loop, so the work is
// split and the packed slice is written straight into the cache of the core that reads it
// (w_ih too, unless the projection runs before the loop's region).
inline int64_t forward_panel(int64_t G, int64_t g, const Slice& sl, int64_t p) { return (sl.p0 + p) * G + g; }

template <typename T>
void pack_forward(const T* w, int64_t K, int64_t G, int64_t H, int64_t nr, const Slice& sl, bool hh, T* out) {
  const auto& kern = isa_kernels<T>();
  for (int64_t p = 0; p < (hh ? sl.hh_panels(nr) : sl.panels(nr)); ++p)
    for (int64_t g = 0; g < G; ++g)
      kern.pack_panel(w + (g * H + sl.u0 + p * nr) * K, K, hh ? sl.hh_cols(p, nr) : sl.cols(p, nr), K, nr,
                      out + forward_panel(G, g, sl, p) * K * nr);
}

// The input projection gx = X w_ih^T runs in row blocks of about 128 KiB of X, each block
// against all of a slice's packed panels (pack_forward) while it is in L2. Every column's sum
// runs in an order fixed by the block alone, never by the slice or the thread that computes it,
// so the result does not depend on the thread count.
inline int64_t projection_block_rows(int64_t K, size_t elem) {
  return std::max<int64_t>(8, (int64_t(128) << 10) / std::max<int64_t>(1, K * int64_t(elem)) / 8 * 8);
}

// C[r0:r0+rows, columns of panel p of gate g of sl] = A[r0:r0+rows] (rows, K) @ those rows of w^T
template <typename T>
void project_panel(int64_t r0, int64_t rows, int64_t K, const T* A, const T* Wp, int64_t G, int64_t g, int64_t p,
                   int64_t H, int64_t nr, const Slice& sl, T* C, int64_t ldc) {
  isa_kernels<T>().panel(rows, K, A + r0 * K, K, Wp + forward_panel(G, g, sl, p) * K * nr,
                         C + r0 * ldc + g * H + sl.u0 + p * nr, ldc, sl.cols(p, nr), false);
}

// C[r0:r0+rows, g*H + units of sl] = A[r0:r0+rows] (rows, K) @ w[g*H + units]^T for every gate g
template <typename T>
void project_rows(int64_t r0, int64_t rows, int64_t K, const T* A, const T* Wp, int64_t G, int64_t H, int64_t nr,
                  const Slice& sl, T* C, int64_t ldc) {
  for (int64_t p = 0; p < sl.panels(nr); ++p)
    for (int64_t g = 0; g < G; ++g) project_panel(r0, rows, K, A, Wp, G, g, p, H, nr, sl, C, ldc);
}

// Backward packing: panel p of a slice = units u0 + p*nr .. +nr of dG @ w_hh, K = G*H:
//   Wt[((p0 + p)*GH + n)*nr + i] = w_hh[n][u0 + p*nr + i]   (0 past u1)
// Each row of a panel is a contiguous piece of a w_hh row, so this is a row copy (an element
// loop with the padding test ran at 8 GB/s: 32 us of a 45 us LSTM backward at T=1, B=1,
// H=128).
template <typename T>
void pack_backward(const T* w_hh, int64_t GH, int64_t H, int64_t nr, const Slice& sl, T* out) {
  for (int64_t p = 0; p < sl.panels(nr); ++p) {
    T* q = out + (sl.p0 + p) * GH * nr;
    const int64_t c0 = sl.u0 + p * nr, cols = sl.cols(p, nr);
    for (int64_t n = 0; n < GH; ++n) {
      std::memcpy(q + n * nr, w_hh + n * H + c0, cols * sizeof(T));
      for (int64_t i = cols; i < nr; ++i) q[n * nr + i] = T(0);
    }
  }
}

// dX = dG @ w_ih (recurrent_backward): its columns [0, I0) in packed panels of nr, K = G*H,
//   Wx[(p*GH + n)*nr + i] = w_ih[n][p*nr + i]   (0 past I0),
// and the few past I0 (dx_dot_cols) as dot products with w_ih's columns, packed as rows after
// the panels: Wx[P*GH*nr + j*GH + n] = w_ih[n][I0 + j].
// A last vector of a handful of columns costs a whole vector in the panel kernel (I = 65:
// 65 columns at the cost of 80); as dot products (four FMA chains, two loads per FMA) each
// column takes a sixteenth of a vector's multiply-adds at about half the rate.
constexpr int64_t kDxDotCols = 4;
inline int64_t dx_dot_cols(int64_t I, int64_t nr) {
  const int64_t r = I % (nr / 2);
  return r <= kDxDotCols ? r : 0;
}

template <typename T>
void pack_dx(const T* w_ih, int64_t GH, int64_t I, int64_t nr, int64_t p, T* out) {
  const int64_t I0 = I - dx_dot_cols(I, nr), P = (I0 + nr - 1) / nr;
  if (p == P) {  // the dot-product columns
    T* q = out + P * GH * nr;
    for (int64_t n = 0; n < GH; ++n)
      for (int64_t j = 0; j < I - I0; ++j) q[j * GH + n] = w_ih[n * I + I0 + j];
    return;
  }
  T* q = out + p * GH * nr;
  const int64_t c0 = p * nr, cols = std::min(nr, I0 - c0);
  for (int64_t n = 0; n < GH; ++n) {
    std::memcpy(q + n * nr, w_ih + n * I + c0, cols * sizeof(T));
    for (int64_t i = cols; i < nr; ++i) q[n * nr + i] = T(0);
  }
}

// One direction's scratch for a forward or a backward pass, one block of the same size for
// both: a training step's backward then reuses the block its forward released (the buffer
// cache matches blocks by size; with the forward's and the backward's scratch in blocks of
// different sizes, its peak rule had the backward's fresh dG evict a block that only the
// forward could use, and every later call allocated afresh). Below the cache's size bound,
// malloc handed such buffers back to the system after each call and the next call faulted
// them in again (LSTM forward+backward at T=37, B=1, I=77, H=129: 120 000 page faults per
// 400 calls, a third of the time).
//   packed:  the forward's panels of w_hh (K = H), then of w_ih (K = the widest layer input);
//            the backward packs only w_hh, in its own layout of the same G*P*H*nr
//   step:    forward: gh (B, G*H); backward: carry_h (2, B, H), carry_c (2, B, H) LSTM,
//            dgh (2, B, G*H) GRU
template <typename T>
struct DirectionScratch {
  static int64_t round16(int64_t n) { return (n + 15) / 16 * 16; }  // 64-byte aligned parts
  static int64_t packed_elems(int64_t G, int64_t P, int64_t nr, const RecurrentShape& s) {
    return G * P * nr * (s.H + std::max(s.I, s.L > 1 ? s.D * s.H : int64_t(0)));
  }
  DirectionScratch(int64_t G, int64_t P, int64_t nr, const RecurrentShape& s)
      : bh16(round16(s.B * s.H)), n_packed(packed_elems(G, P, nr, s)) {
    const int64_t fwd = round16(s.B * G * s.H);
    const int64_t bwd = 4 * bh16 + (s.mode == Mode::Gru ? 2 * round16(s.B * G * s.H) : 0);
    buf = Buffer<T>(static_cast<size_t>(n_packed + std::max(fwd, bwd)));
  }
  T* packed() { return buf.data(); }
  T* packed_ih(int64_t G, int64_t P, int64_t nr, int64_t H) { return buf.data() + G * P * H * nr; }
  T* gh() { return buf.data() + n_packed; }
  T* carry_h() { return buf.data() + n_packed; }
  T* carry_c() { return buf.data() + n_packed + 2 * bh16; }
  T* dgh() { return buf.data() + n_packed + 4 * bh16; }
  const int64_t bh16, n_packed;
  Buffer<T> buf;
};

// Threads for a layer's time loop. Splitting a step's units between threads costs one
// barrier per step (~0.2 us here by profile, with StepBarrier); it pays from about 2^13
// multiply-adds per step (measured at B=1, T=1000, 2 threads: RNN H=128 0.35 vs 0.49 ms,
// LSTM H=128 1.4 vs 2.8 ms; RNN H=64, 2^12, is 1.8x slower split). Tiny loops run on one
// thread; never more threads than vectors of units.
constexpr double kSplitMacs = double(1 << 13);
// The balance of the input projection between two threads with unequal shares of units
// (recurrent_forward) pays from about this many multiply-adds of difference per step. LSTM
// 41x17x65x333 (2^18.5), paired medians against no balance: forward 0.94-0.98 with the two
// CPUs close and 0.97-1.01 with them far apart, training forward 0.97-1.00, forward+backward
// 0.99. With much less, the lighter thread's wait is mostly the barrier's latency, and the
// other thread then fetches the rows projected for it from the other core: LSTM 23x3x100x200
// (2^15.2) 0.94-0.96 close, but 1.15-1.17 far apart.
constexpr double kBalanceMacs = double(1 << 17);
// Two threads that share one direction's steps share each step's products too, from this many
// multiply-adds per thread and step (`share` in recurrent_forward and recurrent_backward): on a
// shared host one core can run the same panels 30-40% slower than the other for a whole call
// (time stamps, LSTM 50x32x256x256 and 13x100x700x700: one thread's products took 1.4x the
// other's, which then waited at every barrier for a fifth to a quarter of the call).
constexpr double kShareMacs = double(1 << 20);

// The claims of shared products: per step parity and slice, the panels taken and the panels
// done, each on a cache line of its own.
class SharedPanels {
 public:
  // panel(o, p) for every panel p < n[o] of both threads' slices o, this thread's (tid) first and
  // then whatever of the other's is left; returns once every panel of its own slice is done, by
  // either thread. Called by both threads once per step, between the step's barriers.
  template <typename Panel>
  void run(int tid, int64_t step, const int64_t (&n)[2], Panel panel) {
    const int par = static_cast<int>(step & 1);
    for (int o : {tid, 1 - tid})
      for (int64_t p; (p = taken_[par][o].v.fetch_add(1, std::memory_order_relaxed)) < n[o];) {
        panel(o, p);
        done_[par][o].v.fetch_add(1, std::memory_order_release);
      }
    spin_until([&] { return done_[par][tid].v.load(std::memory_order_acquire) == n[tid]; });
    if (tid == 0)  // the other parity's last step is behind both threads (its barrier has passed)
      for (int o = 0; o < 2; ++o) {
        taken_[1 - par][o].v.store(0, std::memory_order_relaxed);
        done_[1 - par][o].v.store(0, std::memory_order_relaxed);
      }
  }

 private:
  struct alignas(64) Counter { std::atomic<int64_t> v{0}; };
  Counter taken_[2][2], done_[2][2];
};
// dX of a backward pass runs in the panel kernel (recurrent_backward) while a panel of w_ih,
// G*H rows of nr columns, is at most this.
constexpr int64_t kDxPanelBytes = int64_t(256) << 10;
int loop_threads(int threads, int64_t T, int64_t B, int64_t GH, int64_t H, int64_t D, int64_t nr) {
  const double step_macs = double(B) * GH * H;
  // inside another parallel region (nesting off) or under a thread limit a team would be
  // smaller than the plan, which gives each thread its own slices
  if (omp_in_parallel()) return 1;
  threads = std::min(threads, omp_get_thread_limit());
  if (threads <= 1 || double(T) * step_macs * D < double(1 << 17)) return 1;
  if (step_macs < kSplitMacs) return static_cast<int>(std::min<int64_t>(threads, D));
  return static_cast<int>(std::min<int64_t>(threads, D * unit_vectors(H - dense_tail(H, B, nr), nr)));
}

// body(tid, barrier) on nt threads (nt from loop_threads), or on the calling thread alone (no
// region) when nt == 1. The plan gives every thread its own slices, so a team smaller than nt
// (which loop_threads rules out) is an error rather than a silently incomplete step.
template <typename Body>
void persistent(int nt, Body body) {
  StepBarrier barrier(nt);
  if (nt <= 1) { body(0, barrier); return; }
  std::atomic<bool> short_team{false};
#pragma omp parallel num_threads(nt)
  {
    if (omp_get_num_threads() != nt) short_team.store(true, std::memory_order_relaxed);
    else body(omp_get_thread_num(), barrier);
  }
  if (short_team.load()) throw std::runtime_error("OpenMP started fewer threads than the recurrent loop needs");
}

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
  const auto& kern = isa_kernels<T>();
  const auto fwd = kern.forward[static_cast<int>(s.mode)];
  const int64_t ldgx = train ? Gc * H : GH;  // row stride of the input projection / gates
  // steps per chunk of the input projection: all of them in training (they are the gates
  // cache); in inference as many as fit ~8 MiB per direction (at least 4)
  const int64_t Tc = train ? std::max<int64_t>(T_, 1)
                           : std::min<int64_t>(std::max<int64_t>(T_, 1),
                                               std::max<int64_t>(4, (int64_t(8) << 20) / std::max<int64_t>(1, B * GH * int64_t(sizeof(T)))));

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
      gx_scratch.emplace_back(static_cast<size_t>(Tc * B * GH));
      h_scratch.emplace_back(static_cast<size_t>(2 * BH));
      if (lstm) c_scratch.emplace_back(static_cast<size_t>(2 * BH));
    }
  }
  // the same split of the units for every layer (it depends on nothing that differs)
  const int64_t nr = kern.nr;
  const int nt = loop_threads(threads, T_, B, GH, H, D, nr);
  const Plan plan = plan_threads(D, H, B, nr, nt);
  const int64_t P = plan.panels;
  // The input projection runs in our own kernel on a packed w_ih (no BLAS call in the forward
  // pass): inside the time loop's region, each thread for its own units, when that region has
  // every thread; otherwise (a loop too small to split over all of them) all threads take
  // blocks of rows before the region.
  const bool project_inside = nt >= threads;
  // At B = 1 a step is too short for its threads to arrive at the barrier together, and each
  // thread waits there for part of every step. There it runs its own units' input projection,
  // piece by piece, a little ahead of the steps that read it, rather than all of it before
  // the first step (one direction split between threads; see the time loop below). Only while
  // a piece is short next to a step (I <= 2H): a long piece started just before the barrier
  // opens makes its thread late for the next step (2 threads, LSTM 100x1, I x H = 2048 x 128:
  // 696 -> 736 us; 1024 x 256: 927 -> 971 us; 512 x 128 unchanged; 256 x 128: 190 -> 186 us).
  const bool lazy_batch = project_inside && D == 1 && B == 1 && nt > 1;
  std::vector<Slice> all_slices;
  for (const auto& own : plan.of_thread) all_slices.insert(all_slices.end(), own.begin(), own.end());
  std::vector<DirectionScratch<T>> scratch;
  std::vector<T*> packed, packed_ih, gh_scratch;
  for (int64_t d = 0; d < D; ++d) {
    scratch.emplace_back(G, P, nr, s);
    packed.push_back(scratch.back().packed());
    packed_ih.push_back(scratch.back().packed_ih(G, P, nr, H));
    gh_scratch.push_back(scratch.back().gh());
  }

  const T* X = a.x;  // input of the current layer, (T, B, I_l)
  for (int64_t l = 0; l < L; ++l) {
    const int64_t I_l = s.input_size(l);
    const bool lazy_projection = lazy_batch && I_l <= 2 * H;
    const bool last = l + 1 == L;
    T* Y = last ? a.y : (train ? cache->layer_inputs[l].data() : inter[l % 2].data());

    // The layer runs in one persistent region per chunk of steps. Training: one chunk of all T
    // steps, the input projection going straight into the gates cache. Inference: chunks of Tc
    // steps whose projection fits a small scratch buffer, so no per-step activations of the
    // whole sequence are held besides y.
    for (int64_t d = 0; d < D; ++d) {
      const int64_t k = l * D + d;
      T* hbuf = train ? cache->h[k].data() : h_scratch[d].data();
      const int64_t first = train ? (d == 0 ? 0 : T_) : 0;
      std::memcpy(hbuf + first * BH, a.h0 ? a.h0 + k * BH : zeros.get(), BH * sizeof(T));
      if (lstm) {
        T* cbuf = train ? cache->c[k].data() : c_scratch[d].data();
        std::memcpy(cbuf + first * BH, a.c0 ? a.c0 + k * BH : zeros.get(), BH * sizeof(T));
      }
    }
    for (int64_t s0 = 0; s0 < T_; s0 += Tc) {
      const int64_t s1 = std::min(T_, s0 + Tc);  // processing steps [s0, s1)
      // Direction d processes times [t_lo, t_lo + s1 - s0) (the reverse one from the end).
      auto t_lo = [&](int64_t d) { return d == 0 ? s0 : T_ - s1; };
      auto gx_of = [&](int64_t d) {
        return train ? cache->gates[l * D + d].data() + t_lo(d) * B * ldgx : gx_scratch[d].data();
      };
      const int64_t M = (s1 - s0) * B, R = projection_block_rows(I_l, sizeof(T));
      auto project = [&](const Slice& sl, int64_t r0, int64_t rows) {
        if (sl.u0 < sl.u1)
          project_rows(r0, rows, I_l, X + t_lo(sl.d) * B * I_l, packed_ih[sl.d], G, H, nr, sl, gx_of(sl.d),
                       ldgx);
      };
      if (!project_inside) {
        const int64_t blocks = (M + R - 1) / R, n_sl = static_cast<int64_t>(all_slices.size());
        auto pack_ih = [&](int64_t i) {
          const Slice& sl = all_slices[i];
          pack_forward(a.weights[l * D + sl.d].w_ih, I_l, G, H, nr, sl, false, packed_ih[sl.d]);
        };
        auto project_block = [&](int64_t j) {
          project(all_slices[j % n_sl], j / n_sl * R, std::min(R, M - j / n_sl * R));
        };
        if (double(M) * GH * I_l * D >= double(1 << 17)) {
#pragma omp parallel num_threads(threads)
          {
            if (s0 == 0) {
#pragma omp for
              for (int64_t i = 0; i < n_sl; ++i) pack_ih(i);
            }
#pragma omp for
            for (int64_t j = 0; j < blocks * n_sl; ++j) project_block(j);
          }
        } else {
          for (int64_t i = 0; s0 == 0 && i < n_sl; ++i) pack_ih(i);
          for (int64_t j = 0; j < blocks * n_sl; ++j) project_block(j);
        }
      }
      // The lazy projection's row groups (see below): 8 rows each, the last one 8..15 rows.
      constexpr int64_t RG = kPanelRowGroup;
      static_assert(RG == 8, "projection_block_rows gives multiples of 8 rows");
      const int64_t tail0 = (M - 1) / R * R, tail = M - tail0;
      const int64_t last_group = (tail0 + RG * std::max<int64_t>(0, tail / RG - 1)) / RG;
      // Balance: two threads share one direction and one of them has more vectors of units
      // (H = 333: 11 + 10), so the other waits at every barrier. There the lighter thread
      // projects rows of the later steps for both threads' units: each thread projects rows
      // [0, balance_cut) of its own units before the first step, and the lighter one the
      // rest, lazily. The cuts even out the threads' whole work, steps and projection (per
      // row, a vector of units costs H multiply-adds per gate in the step and I in the
      // projection), and the work before the first step.
      bool balance = false;
      int balance_light = 0;
      int64_t balance_cut[2] = {M, M};
      if (project_inside && !lazy_projection && D == 1 && nt == 2 && plan.shared) {
        const Slice& p0 = plan.of_thread[0][0];
        const Slice& p1 = plan.of_thread[1][0];
        const int64_t v0 = unit_vectors(p0.u1 - p0.u0 - p0.dense, nr), v1 = unit_vectors(p1.u1 - p1.u0 - p1.dense, nr);
        if (double(std::abs(v0 - v1)) * double(nr / 2 * G * B * H) >= kBalanceMacs) {
          const int heavy = v0 > v1 ? 0 : 1;
          const double vh = double(std::max(v0, v1)), vl = double(std::min(v0, v1));
          // the heavier thread's share of its own projection
          const double f = (vh + vl - double(H) * (vh - vl) / double(I_l)) / (2 * vh);
          const int64_t lo = std::min(M, (2 * B + RG - 1) / RG * RG), hi = last_group * RG;
          auto cut = [&](double frac) {
            return std::clamp<int64_t>(static_cast<int64_t>(frac * double(M) / RG) * RG, lo, hi);
          };
          balance_light = 1 - heavy;
          balance_cut[heavy] = cut(f);
          balance_cut[balance_light] = std::clamp<int64_t>(static_cast<int64_t>(f * vh / vl * double(M) / RG) * RG,
                                                           0, hi);
          balance = lo < hi;
          if (!balance) balance_cut[0] = balance_cut[1] = M;
        }
      }
      // Shared products: two threads on one direction, each step's products done one panel
      // of units (all G gates) at a time, each thread first taking its own slice's panels in
      // order and then the other slice's that are left (a counter per slice and step parity).
      // A thread runs its slice's cell update once every panel of it is done, so the update
      // stays one pass per slice and every unit's sums and update are the same whoever
      // multiplies it. The input projection before the first step is shared the same way, by
      // row blocks. Not with the lazy or balanced projection, nor with the update per group.
      const bool share = nt == 2 && D == 1 && plan.shared && B > 1 && !lazy_projection && !balance &&
                         double(B) * GH * H / 2 >= kShareMacs &&
                         step_groups(plan.of_thread[0][0], B, H, nr, sizeof(T), kern.group_update) == 1 &&
                         step_groups(plan.of_thread[1][0], B, H, nr, sizeof(T), kern.group_update) == 1;
      SharedPanels shared_steps;
      std::atomic<int64_t> projected[2] = {0, 0};  // [slice]: row blocks of the projection claimed
      persistent(nt, [&](int tid, StepBarrier& barrier) {
        if (s0 == 0)
          for (const Slice& sl : plan.of_thread[tid]) {
            const LayerWeights<T>& w = a.weights[l * D + sl.d];
            pack_forward(w.w_hh, H, G, H, nr, sl, true, packed[sl.d]);
            if (project_inside) pack_forward(w.w_ih, I_l, G, H, nr, sl, false, packed_ih[sl.d]);
          }
        // 1. input projection of the chunk, gx = X w_ih^T ((s1 - s0) * B, G*H), each thread
        //    for the gate columns of its own units: the only ones its steps read, so no barrier
        //    stands between this and the first step. All of it here, or the rows before the
        //    thread's lazy cut (below) here and the rest lazily.
        //    The lazy part runs in groups of rows, each group in pieces of one packed panel;
        //    the groups in step order, pieces while the thread waits at the barrier, and a
        //    group a step needs that is not done yet in full before the step. The groups are
        //    the panel kernel's own row blocks in the whole-chunk projection (kernels.h,
        //    kPanelRowGroup): 8 rows from the top of each R-row block, and its last 8 to 15 rows
        //    as one group (which the kernel blocks as 8, as 9..11 at once, or as 8 + 4..7). So
        //    every sum runs in the same order as in the whole-chunk projection and results do
        //    not depend on the thread count or on who projects a row.
        auto first_step = [&](int64_t group) { return s0 + group * RG / B; };  // the first step reading it
        struct Lazy {  // groups [next, end) of sl's gate columns, and the pieces done of group next
          const Slice* sl = nullptr;
          int64_t next = 0, end = 0, piece = 0;
          bool pending() const { return next < end; }
        };
        Lazy own, help;  // this thread's own units, and (balance) the heavier thread's
        if (project_inside) {
          const Slice& sl = plan.of_thread[tid][0];
          const int64_t cut = lazy_projection ? 0 : balance ? balance_cut[tid] : M;  // a multiple of RG
          if (share) {  // the row blocks of both slices, this thread's own first (see `share`)
            barrier.wait();  // (the other slice's packed w_ih)
            for (int o : {tid, 1 - tid})
              for (int64_t b; (b = projected[o].fetch_add(1, std::memory_order_relaxed)) * R < M;)
                project(plan.of_thread[o][0], b * R, std::min(R, M - b * R));
          } else {
            for (const Slice& o : plan.of_thread[tid])
              for (int64_t r0 = 0; r0 < cut; r0 += R) project(o, r0, std::min(R, cut - r0));
          }
          const bool helped = balance && tid != balance_light;  // its rows past the cut: the light thread's
          if (cut < M && sl.u0 < sl.u1 && !helped) own = Lazy{&sl, cut / RG, last_group + 1, 0};
          if (balance && tid == balance_light)
            help = Lazy{&plan.of_thread[1 - tid][0], balance_cut[1 - tid] / RG, last_group + 1, 0};
        }
        // shared products read the other slice's packed w_hh and projection too
        if (share) barrier.wait();
        auto run_piece = [&](Lazy& z) {
          const int64_t r0 = RG * z.next, rows = (z.next < last_group ? r0 + RG : M) - r0;
          project_panel(r0, rows, I_l, X + t_lo(0) * B * I_l, packed_ih[0], G, z.piece % G, z.piece / G, H, nr,
                        *z.sl, gx_of(0), ldgx);
          if (++z.piece == G * z.sl->panels(nr)) { z.piece = 0; ++z.next; }
        };
        // B = 1: each slice's step product is one row_panels call over its packed w_hh, panel
        // m = p*G + g writing gh columns g*H + u0 + p*nr (forward_panel's order)
        std::vector<std::vector<int64_t>> row_off, row_cols;
        if (B == 1)
          for (const Slice& sl : plan.of_thread[tid]) {
            row_off.emplace_back();
            row_cols.emplace_back();
            for (int64_t m = 0; m < sl.hh_panels(nr) * G; ++m) {
              row_off.back().push_back(m % G * H + sl.u0 + m / G * nr);
              row_cols.back().push_back(sl.hh_cols(m / G, nr));
            }
          }
        // groups [0, n) hold every row of steps s0 .. step
        auto groups_through = [&](int64_t step) { return std::min(((step - s0 + 1) * B - 1) / RG, last_group) + 1; };
        // 2. the recurrence over the chunk, one barrier per step
        for (int64_t step = s0; step < s1; ++step) {
          while (own.pending() && own.next < groups_through(step)) run_piece(own);
          for (size_t si = 0; si < plan.of_thread[tid].size(); ++si) {
            const Slice& sl = plan.of_thread[tid][si];
            if (sl.u0 == sl.u1) continue;
            const int64_t d = sl.d, k = l * D + d;
            const LayerWeights<T>& w = a.weights[k];
            const int64_t t = d == 0 ? step : T_ - 1 - step;
            const int64_t ps = train ? prev_slot(d, t) : (step & 1);
            const int64_t os = train ? out_slot(d, t) : ((step + 1) & 1);
            T* gx = gx_of(d) + (t - t_lo(d)) * B * ldgx;
            T* hbuf = train ? cache->h[k].data() : h_scratch[d].data();
            T* cbuf = lstm ? (train ? cache->c[k].data() : c_scratch[d].data()) : nullptr;
            T* gh = gh_scratch[d];
            // Per group of units (see step_groups): gh[:, g*H + units] = h_prev @ w_hh[g*H +
            // units]^T for every gate g, then the cell update of those units while their gates
            // are still in L1. Odd steps walk the groups and the panels backwards: the first
            // panels a step reads are the last the step before read (each panel's sums are its
            // own and the update is per unit, so neither order changes a result).
            const int64_t np = sl.hh_panels(nr), n_groups = step_groups(sl, B, H, nr, sizeof(T), kern.group_update);
            StepArgs<T> sa{};
            sa.rows = B; sa.H = H;
            sa.ldgx = ldgx; sa.ldgh = GH; sa.ldgates = ldgx; sa.ldy = DH;
            sa.active = active.empty() ? nullptr : active.data() + t * B;
            for (int64_t j = 0; j < n_groups; ++j) {
              const int64_t q = (step & 1) ? n_groups - 1 - j : j;
              const int64_t p0 = q, p1 = q + 1 < n_groups ? q + 1 : np;  // panels [p0, p1)
              const int64_t n_panels = (p1 - p0) * G;  // in the order they are packed
              if (B == 1) {  // (one group: p0 = 0, p1 = np)
                kern.row_panels(H, hbuf + ps * BH, packed[d] + forward_panel(G, 0, sl, 0) * H * nr, n_panels,
                                row_off[si].data(), row_cols[si].data(), step & 1, gh);
              } else if (share) {  // (one group; one slice per thread)
                const int64_t n[2] = {plan.of_thread[0][0].hh_panels(nr), plan.of_thread[1][0].hh_panels(nr)};
                shared_steps.run(tid, step, n, [&](int o, int64_t q) {
                  const Slice& os = plan.of_thread[o][0];
                  for (int64_t g = 0; g < G; ++g)
                    kern.panel(B, H, hbuf + ps * BH, H, packed[d] + forward_panel(G, g, os, q) * H * nr,
                               gh + g * H + os.u0 + q * nr, GH, os.hh_cols(q, nr), false);
                });
              } else {
                for (int64_t i = 0; i < n_panels; ++i) {
                  const int64_t m = (step & 1) ? n_panels - 1 - i : i, p = p0 + m / G, g = m % G;
                  kern.panel(B, H, hbuf + ps * BH, H, packed[d] + forward_panel(G, g, sl, p) * H * nr,
                             gh + g * H + sl.u0 + p * nr, GH, sl.hh_cols(p, nr), false);
                }
              }
              const bool final_group = q + 1 == n_groups;  // (the slice's last units)
              if (final_group && sl.dense) {  // gh[:, g*H + e0 + j] = h_prev @ w_hh[g*H + e0 + j] for every g
                const int64_t e0 = sl.u1 - sl.dense;
                kern.dense_dots(B, G, sl.dense, H, hbuf + ps * BH, H, w.w_hh + e0 * H, H, H * H, gh + e0, GH, H, 1);
              }
              const int64_t u0 = sl.u0 + p0 * nr, u1 = final_group ? sl.u1 : std::min(sl.u1, sl.u0 + p1 * nr);
              sa.n = u1 - u0;
              sa.gx = gx + u0; sa.gh = gh + u0;
              sa.b_ih = (w.b_ih ? w.b_ih : zeros.get()) + u0;
              sa.b_hh = (w.b_hh ? w.b_hh : zeros.get()) + u0;
              sa.h_prev = hbuf + ps * BH + u0; sa.h_out = hbuf + os * BH + u0;
              if (lstm) { sa.c_prev = cbuf + ps * BH + u0; sa.c_out = cbuf + os * BH + u0; }
              sa.gates = train ? gx + u0 : nullptr;
              sa.y = Y + t * B * DH + d * H + u0;
              fwd(sa);
            }
          }
          if (plan.shared) {
            // The heavier thread reads the rows of step + 1 after this barrier: done before
            // arriving, they are visible to it then. Its packed w_ih is read only after the
            // first barrier of the chunk (it packs it before arriving there).
            const bool may_help = help.pending() && step > s0;
            while (may_help && step + 1 < s1 && help.next < groups_through(step + 1)) run_piece(help);
            const StepBarrier::Ticket ticket = barrier.arrive();
            while (!barrier.passed(ticket)) {
              const bool h = may_help && help.pending(), o = own.pending();
              if (!h && !o) break;
              // the group due first: the helper's before the barrier ahead of its step
              run_piece(h && (!o || first_step(help.next) - 1 <= first_step(own.next)) ? help : own);
            }
            barrier.wait(ticket);
          }
        }
      });
    }
    for (int64_t d = 0; d < D; ++d) {
      const int64_t k = l * D + d;
      const int64_t last_slot = train ? (d == 0 ? T_ : 0) : (T_ & 1);
      const T* hbuf = train ? cache->h[k].data() : h_scratch[d].data();
      std::memcpy(a.hn + k * BH, hbuf + last_slot * BH, BH * sizeof(T));
      if (lstm) {
        const T* cbuf = train ? cache->c[k].data() : c_scratch[d].data();
        std::memcpy(a.cn + k * BH, cbuf + last_slot * BH, BH * sizeof(T));
      }
    }

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
  const auto& kern = isa_kernels<T>();
  const auto bwd = kern.backward[static_cast<int>(s.mode)];

  const std::vector<uint8_t> active = make_active(s, cache.lengths.empty() ? nullptr : cache.lengths.data());
  const Zeros<T> zeros(static_cast<size_t>(std::max(GH, BH)));  // the forward's size: one cached block

  std::vector<Buffer<T>> dg;       // per direction (T, B, G*H): gate gradients of all steps
  std::vector<DirectionScratch<T>> scratch;
  std::vector<T*> carry_h, carry_c, dgh_step, packed;
  const int64_t nr = kern.nr;
  const int nt = loop_threads(threads, T_, B, GH, H, D, nr);
  const Plan plan = plan_threads(D, H, B, nr, nt);
  for (int64_t d = 0; d < D; ++d) {
    dg.emplace_back(static_cast<size_t>(T_ * B * GH));
    scratch.emplace_back(G, plan.panels, nr, s);
    carry_h.push_back(scratch.back().carry_h());
    carry_c.push_back(scratch.back().carry_c());
    dgh_step.push_back(scratch.back().dgh());
    packed.push_back(scratch.back().packed());
  }
  Buffer<T> dX_above(L > 1 ? static_cast<size_t>(T_ * B * DH) : 0);  // dL/d(input of layer l)
  // dX = dG w_ih in our kernels rather than the BLAS (one direction, w_ih's panels short
  // enough): see the time loop below. w_ih packed per layer (pack_dx): at most I_l + nr
  // columns of G*H.
  const bool own_dx = D == 1 && GH * nr * int64_t(sizeof(T)) <= kDxPanelBytes;
  int64_t max_in = 0;
  for (int64_t l = 0; l < L; ++l) max_in = std::max(max_in, s.input_size(l));
  Buffer<T> dx_packed(own_dx ? static_cast<size_t>((max_in + nr) * GH) : 0);

  const T* dY = a.dy;  // dL/d(output of layer l), (T, B, D*H)
  for (int64_t l = L - 1; l >= 0; --l) {
    const int64_t I_l = s.input_size(l);
    const T* X = l == 0 ? a.x : cache.layer_inputs[l - 1].data();

    // 1. reverse loop over time in one persistent region: per step each thread runs the
    //    pointwise backward of its units (-> dG rows), a barrier, then adds dG @ w_hh for its
    //    units into dh_prev. dG_h of GRU (which is not stored per step) ping-pongs between two
    //    buffers, so a thread running ahead never overwrites what a slower one still reads.
    for (int64_t d = 0; d < D; ++d) {
      const int64_t k = l * D + d;
      std::memcpy(carry_h[d], a.dhn ? a.dhn + k * BH : zeros.get(), BH * sizeof(T));
      if (lstm) std::memcpy(carry_c[d], a.dcn ? a.dcn + k * BH : zeros.get(), BH * sizeof(T));
    }
    // dX (T*B, I_l) = dG (T*B, G*H) @ w_ih (G*H, I_l), when own_dx: in pieces of one row group
    // (kPanelRowGroup rows, the last one 8..15: the panel kernel's own blocks of a whole-matrix
    // call, so every sum runs in the same order whoever computes it and results do not depend
    // on the thread count) times one packed panel of nr input columns, taken from the last
    // rows up. A thread that waits at a step's barrier (the one with fewer vectors of units:
    // H = 333 on two threads is 11 + 10) computes the pieces whose rows all have their dG;
    // the rest are split between the threads after the loop.
    T* dX = l == 0 ? a.dx : dX_above.data();
    const int64_t M = T_ * B, RG = kPanelRowGroup;
    const int64_t dx_last = std::max<int64_t>(0, M / RG - 1);  // groups [0, dx_last]
    // pieces of a group: dx_panels panels, then the dot-product columns if any
    const int64_t dx_dots = dx_dot_cols(I_l, nr), dx_I0 = I_l - dx_dots, dx_panels = (dx_I0 + nr - 1) / nr;
    const int64_t dx_np = own_dx && M > 0 ? dx_panels + (dx_dots > 0) : 0, dx_pieces = (dx_last + 1) * dx_np;
    std::atomic<int64_t> dx_next{0};
    auto dx_piece = [&](int64_t n) {
      const int64_t j = dx_last - n / dx_np, p = n % dx_np, r0 = j * RG, rows = (j == dx_last ? M : r0 + RG) - r0;
      const T* Wx = dx_packed.data() + p * GH * nr;
      if (p == dx_panels)  // dX[r0 + j, dx_I0 + m] = w_ih[:, dx_I0 + m] . dG[r0 + j]
        kern.dense_dots(dx_dots, 1, rows, GH, Wx, GH, dg[0].data() + r0 * GH, GH, 0, dX + r0 * I_l + dx_I0, 1, 0, I_l);
      else kern.panel(rows, GH, dg[0].data() + r0 * GH, GH, Wx, dX + r0 * I_l + p * nr, I_l, std::min(nr, dx_I0 - p * nr), false);
    };
    // the next piece, if the steps from `done` on (all that its rows need) have their dG; -1 if not
    auto dx_claim = [&](int64_t done) {
      int64_t n = dx_next.load(std::memory_order_relaxed);
      while (n < dx_pieces && (dx_last - n / dx_np) * RG >= done * B)
        if (dx_next.compare_exchange_weak(n, n + 1, std::memory_order_relaxed)) return n;
      return int64_t(-1);
    };
    // Two threads on one direction share each step's products dh_prev += dG_h @ w_hh panel by
    // panel, as in recurrent_forward (`share`): the other slice's packed panels are read only
    // after the first step's barrier.
    const bool share = nt == 2 && D == 1 && plan.shared && B > 1 && double(B) * GH * H / 2 >= kShareMacs;
    SharedPanels shared_steps;
    persistent(nt, [&](int tid, StepBarrier& barrier) {
      for (const Slice& sl : plan.of_thread[tid])
        pack_backward(a.weights[l * D + sl.d].w_hh, GH, H, nr, sl, packed[sl.d]);
      // read only after the first step's barrier
      for (int64_t p = tid; p < dx_np; p += nt) pack_dx(a.weights[l].w_ih, GH, I_l, nr, p, dx_packed.data());
      for (int64_t step = T_ - 1; step >= 0; --step) {
        const int cur = static_cast<int>((T_ - 1 - step) & 1);
        for (const Slice& sl : plan.of_thread[tid]) {
          if (sl.u0 == sl.u1) continue;
          const int64_t d = sl.d, k = l * D + d;
          const int64_t t = d == 0 ? step : T_ - 1 - step;
          const int64_t ps = prev_slot(d, t), os = out_slot(d, t);
          const T* hbuf = cache.h[k].data();
          const T* cbuf = lstm ? cache.c[k].data() : nullptr;
          T* ch = carry_h[d];
          T* cc = lstm ? carry_c[d] : nullptr;
          const int64_t u0 = sl.u0, u1 = sl.u1;
          StepBackArgs<T> ba{};
          ba.rows = B; ba.n = u1 - u0; ba.H = H;
          ba.gates = cache.gates[k].data() + t * B * Gc * H + u0; ba.ldgates = Gc * H;
          ba.h_prev = hbuf + ps * BH + u0; ba.h_out = hbuf + os * BH + u0;
          if (lstm) { ba.c_prev = cbuf + ps * BH + u0; ba.c_out = cbuf + os * BH + u0; }
          ba.dh = ch + cur * BH + u0;
          if (lstm) { ba.dc = cc + cur * BH + u0; ba.dc_prev = cc + (1 - cur) * BH + u0; }
          ba.dy = dY + t * B * DH + d * H + u0; ba.lddy = DH;
          ba.dgx = dg[d].data() + t * B * GH + u0; ba.lddgx = GH;
          ba.dgh = gru ? dgh_step[d] + (step & 1) * BH * G + u0 : ba.dgx; ba.lddgh = GH;
          ba.dh_prev = ch + (1 - cur) * BH + u0;
          ba.active = active.empty() ? nullptr : active.data() + t * B;
          bwd(ba);
        }
        if (plan.shared) {
          const StepBarrier::Ticket ticket = barrier.arrive();
          // the steps after this one have their dG (the barrier before this step's passed)
          for (int64_t n; !barrier.passed(ticket) && (n = dx_claim(step + 1)) >= 0;) dx_piece(n);
          barrier.wait(ticket);
        }
        if (share) {  // (one direction, one slice per thread); the next step's cell backward
                      // reads this thread's units of dh_prev
          const T* dgh = gru ? dgh_step[0] + (step & 1) * BH * G : dg[0].data() + step * B * GH;
          T* dh_prev = carry_h[0] + (1 - cur) * BH;
          const int64_t n[2] = {plan.of_thread[0][0].panels(nr), plan.of_thread[1][0].panels(nr)};
          shared_steps.run(tid, step, n, [&](int o, int64_t p) {
            const Slice& os = plan.of_thread[o][0];
            kern.panel(B, GH, dgh, GH, packed[0] + (os.p0 + p) * GH * nr, dh_prev + os.u0 + p * nr, H, os.cols(p, nr),
                       true);
          });
          continue;
        }
        for (const Slice& sl : plan.of_thread[tid]) {
          const int64_t d = sl.d;
          const int64_t t = d == 0 ? step : T_ - 1 - step;
          const T* dgh = gru ? dgh_step[d] + (step & 1) * BH * G : dg[d].data() + t * B * GH;
          T* dh_prev = carry_h[d] + (1 - cur) * BH;
          // dh_prev[:, units] += dG_h (B, G*H) @ w_hh[:, units]
          for (int64_t p = 0; p < sl.panels(nr); ++p)
            kern.panel(B, GH, dgh, GH, packed[d] + (sl.p0 + p) * GH * nr, dh_prev + sl.u0 + p * nr, H,
                       sl.cols(p, nr), true);
        }
      }
    });
    // the pieces of dX that no thread took while it waited
    const int64_t dx_done = dx_next.load(), dx_left = dx_pieces - dx_done;
#pragma omp parallel for num_threads(threads) schedule(static) if (double(dx_left) / std::max<int64_t>(dx_pieces, 1) * double(M) * GH * I_l >= double(1 << 17))
    for (int64_t n = dx_done; n < dx_pieces; ++n) dx_piece(n);
    for (int64_t d = 0; d < D; ++d) {
      const int64_t k = l * D + d;
      const int fin = static_cast<int>(T_ & 1);
      std::memcpy(a.dh0 + k * BH, carry_h[d] + fin * BH, BH * sizeof(T));
      if (lstm) std::memcpy(a.dc0 + k * BH, carry_c[d] + fin * BH, BH * sizeof(T));
    }

    // 2. everything that is not sequential, as GEMMs over all T*B rows
    for (int64_t d = 0; d < D; ++d) {
      const int64_t k = l * D + d;
      const LayerWeights<T>& w = a.weights[k];
      const LayerGrads<T>& g = a.grads[k];
      T* dgd = dg[d].data();
      // dX (T*B, I_l) (+)= dG (T*B, G*H) @ w_ih (G*H, I_l)
      if (!own_dx) gemm<T>(false, false, T_ * B, I_l, GH, T(1), dgd, GH, w.w_ih, I_l, d == 0 ? T(0) : T(1), dX, I_l);
      // dW_ih (G*H, I_l) += dG^T X
      gemm<T>(true, false, GH, I_l, T_ * B, T(1), dgd, GH, X, I_l, T(1), g.w_ih, I_l);
      // db_ih (G*H,) += column sums of dG. Outside GRU the gates take b_ih and b_hh in the
      // same sum, so db_hh gets the same sums here: one pass over dG rather than two.
      const bool shared_db = !gru && g.b_ih && g.b_hh;
      Buffer<T> db(shared_db ? static_cast<size_t>(GH) : 0);
      if (shared_db) {
        std::fill_n(db.data(), GH, T(0));
        add_column_sums<T>(T_ * B, GH, dgd, GH, db.data());
        for (int64_t j = 0; j < GH; ++j) {
          g.b_ih[j] += db.data()[j];
          g.b_hh[j] += db.data()[j];
        }
      } else if (g.b_ih) {
        add_column_sums<T>(T_ * B, GH, dgd, GH, g.b_ih);
      }
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
      if (g.b_hh && !shared_db) add_column_sums<T>(T_ * B, GH, dgd, GH, g.b_hh);
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

// ---------------------------------------------------------------------------- cell step

// Up to this batch a cell step's products run in gemm_nt_small (W rows reused from L1 across
// the batch, no BLAS threads to wake); above it the BLAS's packed GEMM wins.
constexpr int64_t kSmallCellBatch = 16;

// At small batch a step is bound by reading W from L2 (LSTM I=H=128: 512 KiB). From
// kSplitCellBytes of weights the step runs on two threads, each owning half of the hidden
// units: its rows of w_ih and w_hh (which stay in its core's L2 across calls), its gate
// columns and its part of the pointwise pass, so no gate values cross between cores. Measured
// at B=1, I=H=128 through the binding (best of repeated runs), one thread -> split by matrix
// (one thread x w_ih^T, the other h w_hh^T, the gates read back across cores) -> split by
// hidden units: GRU 4.2 -> 3.4 -> 3.3 us, LSTM 5.6 -> 4.2 -> 3.9 us. The second thread is
// run_pair's helper rather than an OpenMP team, whose fork and join cost 0.5 us here: in a
// C++ loop (medians, alternating builds) GRU 2.4-3.0 -> 2.0-2.3 us, LSTM 3.1-3.8 -> 2.7-3.2 us.
// With that cheaper handoff the split pays from 32 KiB: RNN H=128 1.1-1.25 -> 0.9-1.05 us,
// GRU H=64 1.5 -> 1.2 us, LSTM H=64 2.0 -> 1.55 us (RNN H=48, 18 KiB, is slower split).
// The helper gets its operands by value in one copy (pair.h); when it followed references
// into this frame, it started ~0.15 us later: C++ loop, B=1, I=H=128, medians of 9
// alternations, RNN 0.80 -> 0.76 us, GRU 1.88 -> 1.72 us, LSTM 2.41 -> 2.33 us.
constexpr int64_t kSplitCellBytes = int64_t(32) << 10;
// A thread's slice of hidden units starts on a multiple of this (whole vectors of gates).
constexpr int64_t kCellSliceAlign = 16;
// Scratch up to this many elements lives on the stack of the thread that uses it: one step at
// B = 1 needs a few KiB, and a heap allocation per call is measurable at that size. (Gate
// scratch on the calling thread's stack but written by the other thread made the split step
// slower than one thread from Python, LSTM 4.4 -> 6.4 us: those lines are hot in the caller's
// core between calls.)
constexpr int64_t kCellStackScratch = 4096;
constexpr int64_t kCellStackZeros = 2048;

template <typename T>
void cell_step(Mode mode, int64_t B, int64_t I, int64_t H, const T* x, const T* h, const T* c,
               const LayerWeights<T>& w, T* h_out, T* c_out) {
  const int G = gate_count(mode);
  const int64_t GH = G * H;
  const bool lstm = mode == Mode::Lstm;
  // zeros stand in for a missing bias, h or c
  const bool need_zeros = !w.b_ih || !h || (lstm && !c);
  const int64_t nz = need_zeros ? std::max(GH, B * H) : 0;
  alignas(64) T zeros_stack[kCellStackZeros];
  Buffer<T> zeros_heap(nz > kCellStackZeros ? static_cast<size_t>(nz) : 0);
  T* zeros = nz > kCellStackZeros ? zeros_heap.data() : zeros_stack;
  if (need_zeros) std::memset(zeros, 0, sizeof(T) * nz);
  // Up to kSmallCellBatch the products run in our unpacked kernel, one gate block of rows at a
  // time; above it in the BLAS's packed GEMM (whole matrices, before the pointwise pass).
  const bool small = B <= kSmallCellBatch;
  // gx (B, GH) | gh (B, GH): on the heap (shared by the threads) when too big for a stack or
  // written by the BLAS before the pointwise pass
  const int64_t n_gates = 2 * B * GH;
  const bool gates_on_heap = !small || n_gates > kCellStackScratch;
  Buffer<T> gates_heap(gates_on_heap ? static_cast<size_t>(n_gates) : 0);
  const IsaKernels<T>* kern = &isa_kernels<T>();
  T* const gates_shared = gates_heap.data();
  if (!small) {
    T *gx = gates_shared, *gh = gx + B * GH;
    gemm<T>(false, true, B, GH, I, T(1), x, I, w.w_ih, I, T(0), gx, GH);
    if (!h) std::memset(gh, 0, sizeof(T) * B * GH);
    else gemm<T>(false, true, B, GH, H, T(1), h, H, w.w_hh, H, T(0), gh, GH);
  }
  // Hidden units [u0, u1): their gate columns of gx and gh, then their part of the step.
  // Operands by value: run_pair hands this to the helper thread as a copy (see pair.h).
  auto units = [=](int64_t u0, int64_t u1) {
    const int64_t n = u1 - u0;
    if (n <= 0) return;
    alignas(64) T gates_stack[kCellStackScratch];
    T* gx = gates_on_heap ? gates_shared : gates_stack;
    T* gh = gx + B * GH;
    if (small) {
      // Every other call on a thread walks the products backwards, so the first one it reads
      // is the last one the call before read, still in L1 (each product is its own; the
      // order changes no result).
      thread_local bool backwards = false;
      backwards = !backwards;
      for (int j = 0; j < 2 * G; ++j) {
        const int q = backwards ? 2 * G - 1 - j : j, g = q / 2;
        const int64_t r0 = g * H + u0;  // first row of this gate block in w_ih / w_hh
        if (q % 2 == 0) kern->gemm_nt_small(B, n, I, x, I, w.w_ih + r0 * I, I, gx + r0, GH);
        else if (h) kern->gemm_nt_small(B, n, H, h, H, w.w_hh + r0 * H, H, gh + r0, GH);
        else for (int64_t b = 0; b < B; ++b) std::memset(gh + b * GH + r0, 0, sizeof(T) * n);
      }
    }
    StepArgs<T> sa{};
    sa.rows = B; sa.n = n; sa.H = H;
    sa.gx = gx + u0; sa.ldgx = GH; sa.gh = gh + u0; sa.ldgh = GH;
    sa.b_ih = (w.b_ih ? w.b_ih : zeros) + u0;
    sa.b_hh = (w.b_hh ? w.b_hh : zeros) + u0;
    sa.h_prev = (h ? h : zeros) + u0; sa.h_out = h_out + u0;
    if (lstm) { sa.c_prev = (c ? c : zeros) + u0; sa.c_out = c_out + u0; }
    sa.y = h_out + u0; sa.ldy = H;  // y is h itself (written twice, same values)
    kern->forward[static_cast<int>(mode)](sa);
  };
  const int64_t half = (H / 2 + kCellSliceAlign / 2) / kCellSliceAlign * kCellSliceAlign;
  const bool split = small && h && (I + H) * GH * int64_t(sizeof(T)) >= kSplitCellBytes && half > 0 && half < H &&
                     num_threads() >= 2 && !omp_in_parallel();
  if (split) {
    run_pair([=](int i) { i == 0 ? units(0, half) : units(half, H); });
  } else {
    units(0, H);
  }
}

template void cell_step<float>(Mode, int64_t, int64_t, int64_t, const float*, const float*, const float*,
                               const LayerWeights<float>&, float*, float*);
template void cell_step<double>(Mode, int64_t, int64_t, int64_t, const double*, const double*, const double*,
                                const LayerWeights<double>&, double*, double*);

template void recurrent_forward<float>(const RecurrentForwardArgs<float>&, RecurrentCache<float>*);
template void recurrent_forward<double>(const RecurrentForwardArgs<double>&, RecurrentCache<double>*);
template void recurrent_backward<float>(const RecurrentCache<float>&, const RecurrentBackwardArgs<float>&);
template void recurrent_backward<double>(const RecurrentCache<double>&, const RecurrentBackwardArgs<double>&);

}  // namespace fastrnn
