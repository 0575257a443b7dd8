// Round trip of one cache line between two threads on the first two CPUs this process may
// use: the cost of the hand-offs a B=1 recurrent step or a cell step makes between its two
// threads. On a virtual machine it depends on where the host places the virtual CPUs, and it
// can change from one minute to the next (see README, "Speed").
//
//   g++ -O2 -std=c++17 -pthread bench/core_latency.cpp -o core_latency && ./core_latency
#include <pthread.h>
#include <sched.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <thread>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define RELAX() _mm_pause()  // as the library's spinning waits do
#else
#define RELAX() ((void)0)
#endif

namespace {

alignas(64) std::atomic<long> turn{0};

bool pin(int cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  return pthread_setaffinity_np(pthread_self(), sizeof(set), &set) == 0;
}

}  // namespace

int main() {
  cpu_set_t allowed;
  CPU_ZERO(&allowed);
  sched_getaffinity(0, sizeof(allowed), &allowed);
  std::vector<int> cpus;
  for (int c = 0; c < CPU_SETSIZE && cpus.size() < 2; ++c)
    if (CPU_ISSET(c, &allowed)) cpus.push_back(c);
  if (cpus.size() < 2) {
    std::printf("needs two CPUs, this process may use %zu\n", cpus.size());
    return 1;
  }
  constexpr long kChunk = 20000, kChunks = 10;
  std::thread other([&] {
    pin(cpus[1]);
    for (long i = 0; i < kChunk * kChunks; ++i) {  // answers odd turns with the next even one
      while (turn.load(std::memory_order_acquire) != 2 * i + 1) RELAX();
      turn.store(2 * i + 2, std::memory_order_release);
    }
  });
  pin(cpus[0]);
  std::vector<double> ns;
  for (long c = 0; c < kChunks; ++c) {
    const auto t0 = std::chrono::steady_clock::now();
    for (long i = c * kChunk; i < (c + 1) * kChunk; ++i) {
      turn.store(2 * i + 1, std::memory_order_release);
      while (turn.load(std::memory_order_acquire) != 2 * i + 2) RELAX();
    }
    ns.push_back(std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - t0).count() / kChunk);
  }
  other.join();
  std::sort(ns.begin(), ns.end());
  std::printf("CPUs %d and %d: cache-line round trip median %.0f ns (min %.0f, max %.0f, %ld chunks of %ld)\n",
              cpus[0], cpus[1], ns[ns.size() / 2], ns.front(), ns.back(), kChunks, kChunk);
}
