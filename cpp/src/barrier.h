// The barrier of the persistent time loops: one per step, so its latency is paid T times.
// This one is one shared counter and a generation word; replacing libgomp's barrier with it
// cut a 2-thread LSTM step (B=1, H=128) from 1.58 to 1.41 us here. Waiters spin with a pause
// hint and, after a while, yield the CPU, so a team larger than the free cores (an
// oversubscribed machine) still makes progress.
#pragma once

#include <sched.h>

#include <atomic>
#include <cstdint>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define FASTRNN_PAUSE() _mm_pause()
#else
#define FASTRNN_PAUSE() ((void)0)
#endif

namespace fastrnn {

// Waits until done() holds: a pause hint per try, then, after a few microseconds of that,
// the CPU is yielded on every try, so a waiter never starves the thread it waits for.
template <typename Done>
inline void spin_until(Done done) {
  constexpr uint32_t kSpinsBeforeYield = 4096;  // a few microseconds of pause
  for (uint32_t spins = 0; !done(); ++spins) {
    if (spins < kSpinsBeforeYield) FASTRNN_PAUSE();
    else sched_yield();
  }
}

class StepBarrier {
 public:
  explicit StepBarrier(int n) : n_(n) {}
  StepBarrier(const StepBarrier&) = delete;
  StepBarrier& operator=(const StepBarrier&) = delete;

  // Every write a thread made before wait() is visible to every thread after it: the
  // arrivals form one release sequence on count_, and the last arrival publishes it through
  // gen_ (release) to the waiters (acquire).
  void wait() { wait(arrive()); }

  // The same in two halves, for a thread with other work to do while the others arrive:
  // arrive(), then work that touches nothing the others write before this barrier or read
  // after it, checking passed() between pieces, then wait().
  struct Ticket {
    uint32_t gen;
    bool last;  // the last arrival: the barrier is already passed
  };
  Ticket arrive() {
    if (n_ <= 1) return {0, true};
    const uint32_t gen = gen_.load(std::memory_order_acquire);
    if (count_.fetch_add(1, std::memory_order_acq_rel) == n_ - 1) {
      count_.store(0, std::memory_order_relaxed);
      gen_.store(gen + 1, std::memory_order_release);
      return {gen, true};
    }
    return {gen, false};
  }
  bool passed(const Ticket& t) const { return t.last || gen_.load(std::memory_order_acquire) != t.gen; }
  void wait(const Ticket& t) const {
    if (!t.last) spin_until([&] { return gen_.load(std::memory_order_acquire) != t.gen; });
  }

 private:
  const int n_;
  alignas(64) std::atomic<int> count_{0};
  alignas(64) std::atomic<uint32_t> gen_{0};
};

}  // namespace fastrnn
