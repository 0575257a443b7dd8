// Scratch and cache buffers of the recurrent kernels.
//
// Large buffers (the gates/state caches of training, backward's dG) are fresh memory on every
// call. Faulting them in 4 KiB pages, each zeroed by the kernel, took about a tenth of an LSTM
// forward+backward at T=100, B=64, I=H=512. From kHugeBytes up, buffers are aligned to 2 MiB
// and offered to transparent huge pages (MADV_HUGEPAGE takes effect where THP is in "madvise"
// mode, the common default): 512 times fewer faults, and the zeroing runs in 2 MiB strides.
// Measured there, 2 threads: 283 -> 240 ms; 1 thread: 485 -> 420 ms. At most 2 MiB of address
// space is added per buffer, and pages are still backed only when touched.
//
// Released buffers from kCacheBytes up are kept for the next call (BlockCache below). On a
// virtual machine that reports freed memory to its host (virtio-balloon free page reporting,
// as here), memory given back to the kernel is handed back to the host a moment later, and
// the next call faults it in again from the host, which costs far more than a guest page
// fault. Measured at
// LSTM T=50 B=128 I=H=1024, forward+backward, 2 threads, alternating with PyTorch as a
// comparison does: without the cache, half of the calls took 1.2-1.3 s instead of 0.8 s
// (forward 270 -> 400-520 ms, backward 555 -> 850 ms) with the same number of page faults in
// the guest; alone, where memory is reused before it is reported, 0.8 s.
#include <fastrnn/fastrnn.h>

#include <sys/mman.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <iterator>
#include <map>
#include <mutex>
#include <new>
#include <vector>

namespace fastrnn {

namespace {
constexpr size_t kHugePage = size_t(2) << 20;
constexpr size_t kHugeBytes = size_t(8) << 20;
// From here up, buffers go through the cache. Below kHugeBytes they are whole 4 KiB pages:
// the inference input-projection scratch (a few MiB) was faulted in afresh on every call,
// inside the BLAS's zeroing of it (LSTM T=41 B=17 I=65 H=333 forward: 6.5% of the time in
// sgemm_beta). Smaller buffers fared no better: from glibc's mmap threshold (128 KiB until a
// freed mapped block raises it) malloc maps them afresh, and heap memory above its trim
// threshold goes back to the system on free; LSTM forward+backward at T=100, B=1, H=128 took
// 168 000 page faults per 200 calls, about a third of the time. The kernels request each
// call's buffers in the same sizes every call (recurrent.cpp: DirectionScratch), so that the
// cache hands every request the block an earlier call released.
constexpr size_t kCacheBytes = size_t(64) << 10;
constexpr size_t kPage = 4096;

// Capacity of the block for a request of `bytes` (>= kCacheBytes).
size_t block_bytes(size_t bytes) {
  const size_t unit = bytes >= kHugeBytes ? kHugePage : kPage;
  return (bytes + unit - 1) / unit * unit;
}

void* allocate_large(size_t bytes) {
  const bool huge = bytes >= kHugeBytes;
  void* p = std::aligned_alloc(huge ? kHugePage : kPage, bytes);
  if (!p) throw std::bad_alloc();
#ifdef MADV_HUGEPAGE
  if (huge) madvise(p, bytes, MADV_HUGEPAGE);  // advice only: on failure, 4 KiB pages
#endif
  return p;
}

// Released large blocks, reused by later requests of the same or a somewhat smaller size.
// The cache never makes the process hold more than the most large-buffer memory it has had
// in use at once: before a request that no cached block fits is allocated, cached blocks are
// freed until in-use + cached + request fits within that peak. So the first call of a new
// shape peaks exactly as without the cache, and repeated calls of one shape reuse their
// blocks. If the allocation still fails, the whole cache is freed and it is tried once more.
// FASTRNN_BUFFER_CACHE=0 in the environment turns it off; fastrnn.empty_cache() empties it.
class BlockCache {
 public:
  static BlockCache& get() {
    static BlockCache* cache = new BlockCache;  // never destroyed: blocks may be released late
    return *cache;
  }

  // A block of at least `bytes` (from block_bytes); its capacity is returned in *cap.
  void* take(size_t bytes, size_t* cap) {
    std::vector<std::pair<size_t, void*>> evicted;
    {
      std::lock_guard<std::mutex> lock(mu_);
      // best fit, at most twice the request. Reuse never adds to in-use + cached (the
      // block moves from one to the other), so only fresh allocations can raise the peak.
      auto it = blocks_.lower_bound(bytes);
      if (it != blocks_.end() && it->first - bytes <= bytes) {
        *cap = it->first;
        void* p = it->second;
        cached_ -= it->first;
        blocks_.erase(it);
        live_ += *cap;
        ++reused_;
        return p;
      }
      while (!blocks_.empty() && live_ + cached_ + bytes > peak_) {
        auto last = std::prev(blocks_.end());  // the largest first: fewest frees
        evicted.push_back(*last);
        cached_ -= last->first;
        blocks_.erase(last);
      }
      live_ += bytes;  // counted before the allocation so that concurrent callers see it
      peak_ = std::max(peak_, live_);
      ++allocated_;
    }
    for (auto& e : evicted) std::free(e.second);
    try {
      void* p;
      try {
        p = allocate_large(bytes);
      } catch (const std::bad_alloc&) {
        release();  // memory held for reuse must not make a request fail
        p = allocate_large(bytes);
      }
      *cap = bytes;
      return p;
    } catch (...) {
      std::lock_guard<std::mutex> lock(mu_);
      live_ -= bytes;
      --allocated_;
      throw;
    }
  }

  void give(void* p, size_t cap) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      live_ -= cap;
      if (enabled_) {
        blocks_.emplace(cap, p);
        cached_ += cap;
        return;
      }
    }
    std::free(p);
  }

  size_t release() {
    std::multimap<size_t, void*> out;
    size_t bytes;
    {
      std::lock_guard<std::mutex> lock(mu_);
      out.swap(blocks_);
      bytes = cached_;
      cached_ = 0;
    }
    for (auto& e : out) std::free(e.second);
    return bytes;
  }

  void enable(bool on) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      enabled_ = on;
    }
    if (!on) release();
  }

  BufferCacheStats stats() {
    std::lock_guard<std::mutex> lock(mu_);
    return BufferCacheStats{cached_, live_, peak_, reused_, allocated_, enabled_};
  }

 private:
  BlockCache() {
    const char* env = std::getenv("FASTRNN_BUFFER_CACHE");
    enabled_ = !(env && env[0] == '0' && env[1] == '\0');
  }
  std::mutex mu_;
  std::multimap<size_t, void*> blocks_;  // capacity -> block
  size_t cached_ = 0, live_ = 0, peak_ = 0, reused_ = 0, allocated_ = 0;
  bool enabled_ = true;
};
}  // namespace

BufferCacheStats buffer_cache_stats() { return BlockCache::get().stats(); }
size_t buffer_cache_release() { return BlockCache::get().release(); }
void buffer_cache_enable(bool on) { BlockCache::get().enable(on); }

template <typename T>
Buffer<T>::Buffer(size_t n) : n_(n) {
  if (n == 0) return;
  if (n > (SIZE_MAX - kHugePage) / sizeof(T)) throw std::bad_alloc();
  if (n * sizeof(T) >= kCacheBytes) {
    const size_t bytes = block_bytes(n * sizeof(T));
    size_t cap = 0;
    void* p = BlockCache::get().take(bytes, &cap);
    ptr_ = std::unique_ptr<T, Free>(static_cast<T*>(p), Free{cap});
    return;
  }
  const size_t bytes = (n * sizeof(T) + 63) / 64 * 64;
  void* p = std::aligned_alloc(64, bytes);
  if (!p) throw std::bad_alloc();
  ptr_.reset(static_cast<T*>(p));
}

template <typename T>
void Buffer<T>::Free::operator()(T* p) const {
  if (bytes) BlockCache::get().give(p, bytes);
  else std::free(p);
}

template class Buffer<float>;
template class Buffer<double>;

}  // namespace fastrnn
