#include "gemm.h"

#include <cblas.h>

#include <mutex>
#include <string>
#include <vector>

#include <fastrnn/fastrnn.h>

namespace fastrnn {

namespace {
inline CBLAS_TRANSPOSE tr(bool t) { return t ? CblasTrans : CblasNoTrans; }

// OpenBLAS's threaded work runs on OpenMP's threads instead of its own pthread pool: one pool
// of threads for the whole library, so BLAS workers and the recurrent kernels' threads never
// spin against each other on the same cores. (We still never call the BLAS from inside one
// of our own parallel regions.) OpenBLAS hands us `numjobs` independent jobs.
void openmp_blas_backend(int /*sync*/, openblas_dojob_callback dojob, int numjobs, size_t jobdata_elsize,
                         void* jobdata, int dojob_data) {
#pragma omp parallel for num_threads(numjobs) schedule(static, 1)
  for (int i = 0; i < numjobs; ++i)
    dojob(i, static_cast<char*>(jobdata) + static_cast<size_t>(i) * jobdata_elsize, dojob_data);
}

const bool kBackendSet = (scipy_openblas_set_threads_callback_function(&openmp_blas_backend), true);
}  // namespace

template <>
void gemm<float>(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
                 int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  if (M == 0 || N == 0) return;
  if (K == 0) {  // BLAS may skip the beta scaling when K == 0; do it here
    for (int64_t i = 0; i < M; ++i)
      for (int64_t j = 0; j < N; ++j) C[i * ldc + j] = beta == 0.f ? 0.f : beta * C[i * ldc + j];
    return;
  }
  scipy_cblas_sgemm(CblasRowMajor, tr(ta), tr(tb), (blasint)M, (blasint)N, (blasint)K, alpha, A,
                    (blasint)lda, B, (blasint)ldb, beta, C, (blasint)ldc);
}

// float64 is the precision results are checked in, so its results must not depend on the
// thread count: OpenBLAS splits a threaded GEMM differently for different counts (and picks
// other edge kernels), which changes the last bits. float64 GEMMs therefore run the BLAS on
// one thread. The switch is reference-counted so that concurrent float64 calls from several
// Python threads never restore the count under one another.
class SingleThreadedBlas {
 public:
  SingleThreadedBlas() {
    std::lock_guard<std::mutex> lock(mu_);
    if (active_++ == 0 && num_threads() > 1) scipy_openblas_set_num_threads(1);
  }
  ~SingleThreadedBlas() {
    std::lock_guard<std::mutex> lock(mu_);
    if (--active_ == 0 && num_threads() > 1) scipy_openblas_set_num_threads(num_threads());
  }
 private:
  static std::mutex mu_;
  static int active_;
};
std::mutex SingleThreadedBlas::mu_;
int SingleThreadedBlas::active_ = 0;

template <>
void gemm<double>(bool ta, bool tb, int64_t M, int64_t N, int64_t K, double alpha, const double* A,
                  int64_t lda, const double* B, int64_t ldb, double beta, double* C, int64_t ldc) {
  if (M == 0 || N == 0) return;
  SingleThreadedBlas one_thread;
  if (K == 0) {
    for (int64_t i = 0; i < M; ++i)
      for (int64_t j = 0; j < N; ++j) C[i * ldc + j] = beta == 0. ? 0. : beta * C[i * ldc + j];
    return;
  }
  scipy_cblas_dgemm(CblasRowMajor, tr(ta), tr(tb), (blasint)M, (blasint)N, (blasint)K, alpha, A,
                    (blasint)lda, B, (blasint)ldb, beta, C, (blasint)ldc);
}

template <typename T>
void add_column_sums(int64_t M, int64_t N, const T* A, int64_t lda, T* y) {
  if (M == 0 || N == 0) return;
  // A^T (N, M) @ ones (M,) as a GEMV: reads A once, row-major friendly.
  std::vector<T> ones(static_cast<size_t>(M), T(1));
  if constexpr (sizeof(T) == 4)
    scipy_cblas_sgemv(CblasRowMajor, CblasTrans, (blasint)M, (blasint)N, 1.f, A, (blasint)lda,
                      ones.data(), 1, 1.f, y, 1);
  else {
    SingleThreadedBlas one_thread;
    scipy_cblas_dgemv(CblasRowMajor, CblasTrans, (blasint)M, (blasint)N, 1.0, A, (blasint)lda,
                      ones.data(), 1, 1.0, y, 1);
  }
}
template void add_column_sums<float>(int64_t, int64_t, const float*, int64_t, float*);
template void add_column_sums<double>(int64_t, int64_t, const double*, int64_t, double*);

void blas_set_threads(int n) { scipy_openblas_set_num_threads(n); }

}  // namespace fastrnn

namespace fastrnn {
std::string blas_info() {
  const char* cfg = scipy_openblas_get_config();
  return cfg ? std::string(cfg) : std::string("OpenBLAS " FASTRNN_OPENBLAS_VERSION);
}
}  // namespace fastrnn
