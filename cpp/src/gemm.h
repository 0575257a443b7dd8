// The one GEMM entry point: row-major C (M, N) = alpha * op(A) (M, K) * op(B) (K, N) + beta * C,
// backed by the bundled OpenBLAS. Never call from inside an OpenMP parallel region.
#pragma once

#include <cstdint>

namespace fastrnn {

// Largest dimension the 32-bit-index BLAS accepts; bindings reject larger problems up front.
constexpr int64_t kMaxBlasDim = 2147483647;

template <typename T>
void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, T alpha, const T* A,
          int64_t lda, const T* B, int64_t ldb, T beta, T* C, int64_t ldc);

// y (N,) += sum over the M rows of A (M, N) with leading dimension lda (column sums).
template <typename T>
void add_column_sums(int64_t M, int64_t N, const T* A, int64_t lda, T* y);

void blas_set_threads(int n);

}  // namespace fastrnn
