// One thread count for every OpenMP region and for the bundled BLAS.
#include <fastrnn/fastrnn.h>

#include <omp.h>
#include <sched.h>

#include <atomic>
#include <cstdlib>

#include "gemm.h"

namespace fastrnn {

namespace {
std::atomic<int> g_threads{0};
}

int default_num_threads() {
  if (const char* env = std::getenv("OMP_NUM_THREADS")) {
    int n = std::atoi(env);  // "4" or "4,2": the first level
    if (n >= 1) return n;
  }
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) == 0) {
    int n = CPU_COUNT(&set);
    if (n >= 1) return n;
  }
  return omp_get_num_procs() > 0 ? omp_get_num_procs() : 1;
}

int num_threads() {
  int n = g_threads.load(std::memory_order_relaxed);
  if (n == 0) {
    n = default_num_threads();
    set_num_threads(n);
  }
  return n;
}

void set_num_threads(int n) {
  if (n < 1) n = 1;
  g_threads.store(n, std::memory_order_relaxed);
  blas_set_threads(n);
}

bool openmp_enabled() {
#ifdef _OPENMP
  return true;
#else
  return false;
#endif
}

}  // namespace fastrnn
