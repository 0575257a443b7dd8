// fastrnn C++ core: recurrent layers (RNN/LSTM/GRU) forward + BPTT, and attention.
// This library knows nothing about Python; cpp/bindings/ converts and checks arrays.
//
// GENERAL NOTES
// - Dimension letters: T time, B batch, I input features, H hidden, L layers,
//   D directions (1 or 2), G gates (RNN 1, GRU 3, LSTM 4).
// - All arrays are dense row-major ("C order"); "(T, B, H)" means index [t][b][h].
// - Sequences are time-major: x (T, B, I), y (T, B, D*H). Direction d of layer l writes
//   y[:, :, d*H:(d+1)*H]. States h0/hn/c0/cn are (L*D, B, H), entry l*D + d.
// - Weights follow PyTorch: w_ih (G*H, I_l), w_hh (G*H, H), b_ih/b_hh (G*H,) and are applied
//   as x @ w_ih^T. Gate order: LSTM i, f, g, o; GRU r, z, n with the reset applied after the
//   matmul: n = tanh(W_in x + b_in + r * (W_hn h + b_hn)), h' = (1 - z) * n + z * h.
// - lengths (B,): steps t >= lengths[b] are padding: y = 0 there and the state passes
//   through untouched. The reverse direction therefore starts at t = lengths[b] - 1.
// - Training cache per (layer, direction):
//     gates (T, B, Gc*H)  post-activation gates, indexed by TIME t. Gc = G, except GRU: 4
//                         (r, z, n, and hn = W_hn h + b_hn, needed for dr).
//     h     (T+1, B, H)   states. Forward direction: slot 0 = h0, step t reads slot t and
//                         writes slot t+1. Reverse: slot T = h0, step t reads t+1, writes t.
//                         So for both, the GEMM over all steps dW_hh += dG^T H_prev uses a
//                         contiguous block (slots 0..T-1 forward, 1..T reverse).
//     c     (T+1, B, H)   LSTM cell states, same slots.
//   Derivatives come from outputs (sigmoid' = s(1-s), tanh' = 1-t^2): no pre-activations kept.
// - Gradients are ACCUMULATED into dw_ih, dw_hh, db_ih, db_hh (+=); the caller zeroes them.
// - BLAS is only ever called outside OpenMP parallel regions.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace fastrnn {

// ---- threads (cpp/src/threads.cpp) -------------------------------------------------------
int num_threads();             // the one count for OpenMP regions and the bundled BLAS
void set_num_threads(int n);   // n >= 1
int default_num_threads();     // OMP_NUM_THREADS if set, else CPUs this process may use

// ---- build / runtime info ------------------------------------------------------------------
const char* simd_level();      // "avx512", "avx2" or "baseline": picked once at run time
bool step_group_update();      // forward steps update per group of units (recurrent.cpp)
std::string blas_info();       // OpenBLAS version and config string
bool openmp_enabled();

// ---- recurrent layers (cpp/src/recurrent.cpp) ----------------------------------------------
enum class Mode { RnnTanh = 0, RnnRelu = 1, Lstm = 2, Gru = 3 };
int gate_count(Mode m);        // G
int cache_gate_count(Mode m);  // Gc

struct RecurrentShape {
  Mode mode;
  int64_t T, B, I, H, L, D;    // I = input features of layer 0
  int64_t input_size(int64_t layer) const { return layer == 0 ? I : D * H; }
};

template <typename T>
struct LayerWeights {          // one (layer, direction); biases may be null (bias=False)
  const T* w_ih;               // (G*H, I_l)
  const T* w_hh;               // (G*H, H)
  const T* b_ih;               // (G*H,)
  const T* b_hh;               // (G*H,)
};

template <typename T>
struct LayerGrads {            // accumulated into; biases null when there are none
  T* w_ih; T* w_hh; T* b_ih; T* b_hh;
};

// 64-byte aligned, uninitialised buffer. From 64 KiB up, released buffers are kept for reuse
// by later calls; from 8 MiB (training caches, backward's gate gradients) they are also 2 MiB
// aligned and offered to transparent huge pages (cpp/src/buffer.cpp).
template <typename T>
class Buffer {
 public:
  Buffer() = default;
  explicit Buffer(size_t n);
  T* data() { return ptr_.get(); }
  const T* data() const { return ptr_.get(); }
  size_t size() const { return n_; }
 private:
  struct Free {
    size_t bytes = 0;  // capacity of the block (large blocks go back to the cache)
    void operator()(T* p) const;
  };
  std::unique_ptr<T, Free> ptr_;
  size_t n_ = 0;
};

// The cache of released large buffers (cpp/src/buffer.cpp).
struct BufferCacheStats {
  size_t cached_bytes;   // held for reuse, not in use
  size_t live_bytes;     // large buffers in use
  size_t peak_bytes;     // most large-buffer bytes in use at once; the cache stays within it
  size_t reused;         // large-buffer requests served from the cache
  size_t allocated;      // large-buffer requests that allocated fresh memory
  bool enabled;
};
BufferCacheStats buffer_cache_stats();
size_t buffer_cache_release();      // frees every cached block; returns the bytes freed
void buffer_cache_enable(bool on);  // off: release now and free large buffers when released

// Everything forward keeps for backward, owned here (inputs and weights are not copied: the
// caller keeps them alive and passes them again to backward).
template <typename T>
struct RecurrentCache {
  RecurrentShape shape;
  std::vector<int64_t> lengths;          // (B,) or empty = all T
  std::vector<Buffer<T>> gates;          // L*D x (T, B, Gc*H)
  std::vector<Buffer<T>> h;              // L*D x (T+1, B, H)
  std::vector<Buffer<T>> c;              // L*D x (T+1, B, H), LSTM only
  std::vector<Buffer<T>> layer_inputs;   // L-1 x (T, B, D*H): input of layer l >= 1 (after dropout)
  size_t bytes() const;
};

template <typename T>
struct RecurrentForwardArgs {
  RecurrentShape shape;
  const T* x;                      // (T, B, I)
  const LayerWeights<T>* weights;  // L*D entries
  const T* h0;                     // (L*D, B, H) or null = zeros
  const T* c0;                     // (L*D, B, H) or null = zeros (LSTM)
  const int64_t* lengths;          // (B,) or null = all T
  const T* const* dropout_masks;   // L-1 pointers to (T, B, D*H), or null
  T* y;                            // (T, B, D*H) out
  T* hn;                           // (L*D, B, H) out
  T* cn;                           // (L*D, B, H) out (LSTM)
};

// Inference when cache == nullptr (keeps only what the next step needs); training otherwise
// (the cache is allocated inside).
template <typename T>
void recurrent_forward(const RecurrentForwardArgs<T>& a, RecurrentCache<T>* cache);

template <typename T>
struct RecurrentBackwardArgs {
  const T* x;                      // (T, B, I), the same input given to forward
  const LayerWeights<T>* weights;  // L*D, the same weights
  const T* const* dropout_masks;   // the same masks, or null
  const T* dy;                     // (T, B, D*H)
  const T* dhn;                    // (L*D, B, H) or null = zeros
  const T* dcn;                    // (L*D, B, H) or null (LSTM)
  T* dx;                           // (T, B, I) out
  T* dh0;                          // (L*D, B, H) out
  T* dc0;                          // (L*D, B, H) out (LSTM)
  const LayerGrads<T>* grads;      // L*D entries, accumulated into
};

template <typename T>
void recurrent_backward(const RecurrentCache<T>& cache, const RecurrentBackwardArgs<T>& a);

// One time step of a cell, inference: x (B, I), h/c (B, H) (null = zeros) -> h_out, c_out
// (B, H). The same pointwise kernels as the sequence path, with the two products done by the
// BLAS on the calling thread's behalf (small: the BLAS keeps them single-threaded).
template <typename T>
void cell_step(Mode mode, int64_t B, int64_t I, int64_t H, const T* x, const T* h, const T* c,
               const LayerWeights<T>& w, T* h_out, T* c_out);

// ---- attention (cpp/src/attention.cpp) -----------------------------------------------------
// Declared in attention.h (kept separate: its own notes and shapes).

}  // namespace fastrnn
