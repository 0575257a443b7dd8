// The helper thread of run_pair (pair.h).
//
// Protocol (one job at a time, `busy_` serialises callers):
//   caller: part_, job_ <- job (a copy); done_ <- 0; claim_ <- 0 (release); ++posted_; wake
//           if asleep; part(0); then CAS claim_ 0 -> 2 (caller takes part 1) or wait for done_.
//   helper: on a new posted_ value (or any spin), CAS claim_ 0 -> 1 (acquire: sees part_,
//           job_); part(1); done_ <- 1 (release).
// claim_ stays non-zero between jobs, so a helper that wakes late cannot claim a finished job,
// and a successful claim always reads the current job. The helper spins for kSpin after its
// last job (a hand-written loop calls again within microseconds), then sleeps on a condition
// variable.
#include "pair.h"

#include <pthread.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <thread>

#include "barrier.h"  // FASTRNN_PAUSE, spin_until

namespace fastrnn {

namespace {

constexpr auto kSpin = std::chrono::microseconds(200);

class PairHelper {
 public:
  void run(void (*part)(const void*, int), const void* job, size_t bytes) {
    // a job too big for the helper's copy, or another caller has the helper: both parts here
    if (bytes > kPairJobBytes || busy_.exchange(true, std::memory_order_acquire)) {
      part(job, 0);
      part(job, 1);
      return;
    }
    start_once();
    part_ = part;
    std::memcpy(job_, job, bytes);
    done_.store(0, std::memory_order_relaxed);
    claim_.store(0, std::memory_order_release);
    // seq_cst pairs with the helper's store of sleeping_ and its reload of posted_: one of the
    // two threads sees the other's write, so a wake-up is never lost. Only the first call to
    // find the helper asleep wakes it: until a woken helper gets a core again (which can take
    // long on a busy machine) every later call would pay the system call again (an RNN step
    // measured 15 us instead of 2 that way, right after the BLAS had run).
    // sleeping_ lives in the caller's line (the helper writes it only when it goes to sleep),
    // so the check costs no transfer while the helper spins.
    posted_.fetch_add(1, std::memory_order_seq_cst);
    if (sleeping_.load(std::memory_order_seq_cst) && sleeping_.exchange(false, std::memory_order_seq_cst)) {
      std::lock_guard<std::mutex> lock(mutex_);
      cv_.notify_one();
    }
    part(job, 0);
    int expected = 0;
    if (claim_.compare_exchange_strong(expected, 2, std::memory_order_acq_rel)) {
      part(job, 1);
    } else {
      spin_until([&] { return done_.load(std::memory_order_acquire) != 0; });
    }
    busy_.store(false, std::memory_order_release);
  }

 private:
  void start_once() {
    std::call_once(started_, [this] { std::thread([this] { loop(); }).detach(); });
  }

  void loop() {
    uint64_t seen = posted_.load(std::memory_order_acquire);
    for (;;) {
      auto until = std::chrono::steady_clock::now() + kSpin;
      uint32_t spins = 0;
      while (posted_.load(std::memory_order_acquire) == seen) {
        FASTRNN_PAUSE();
        if (++spins % 64 == 0 && std::chrono::steady_clock::now() > until) {
          std::unique_lock<std::mutex> lock(mutex_);
          sleeping_.store(true, std::memory_order_seq_cst);
          cv_.wait(lock, [&] { return posted_.load(std::memory_order_seq_cst) != seen; });
          sleeping_.store(false, std::memory_order_relaxed);  // woken, or never slept
          break;
        }
      }
      seen = posted_.load(std::memory_order_acquire);
      int expected = 0;
      if (claim_.compare_exchange_strong(expected, 1, std::memory_order_acq_rel)) {
        part_(job_, 1);
        done_.store(1, std::memory_order_release);
      }
    }
  }

  std::once_flag started_;
  std::mutex mutex_;
  std::condition_variable cv_;
  alignas(64) std::atomic<bool> busy_{false};
  std::atomic<bool> sleeping_{false};
  // What the helper reads on a new job sits in lines of its own, written only by the caller
  // before posting: the flags and part_ in one, the job in the next (read in parallel).
  alignas(64) std::atomic<uint64_t> posted_{0};
  std::atomic<int> claim_{1};
  std::atomic<int> done_{0};
  void (*part_)(const void*, int) = nullptr;
  alignas(64) unsigned char job_[kPairJobBytes];
};

// Never destroyed: the detached thread outlives main. A forked child has no helper thread
// and may have inherited a held lock, so it starts over with a fresh one.
std::atomic<PairHelper*> g_helper{nullptr};

PairHelper& helper() {
  static const bool once = [] {
    g_helper.store(new PairHelper, std::memory_order_release);
    pthread_atfork(nullptr, nullptr, [] { g_helper.store(new PairHelper, std::memory_order_relaxed); });
    return true;
  }();
  (void)once;
  return *g_helper.load(std::memory_order_acquire);
}

}  // namespace

void run_pair(void (*part)(const void*, int), const void* job, size_t bytes) { helper().run(part, job, bytes); }

}  // namespace fastrnn
