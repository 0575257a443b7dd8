// Activations and their derivatives from OUTPUTS (sigmoid' = s(1-s), tanh' = 1-t^2).
// float: a branch-free exp (Cephes polynomial, ~1 ulp on the reduced range) that compilers
// vectorize inside `#pragma omp simd` loops; double: the C library (full precision, the tight
// float64 tests compare against NumPy). Everything has internal linkage: this header is
// included by the per-ISA translation units, which must not share symbols.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace fastrnn {
namespace {

inline float exp_approx(float x) {
  // NaN passes through the clamps unchanged, makes p NaN, and p * scale stays NaN whatever
  // the scale.
  float xc = x < -87.0f ? -87.0f : x;
  xc = xc > 88.0f ? 88.0f : xc;
  const float n = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round(x/ln2)
  const float r = xc - n * 0.693359375f - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  // 2^n from the bits of n + 1.5 * 2^23, whose low mantissa bits hold n: an integer add
  // rather than a float -> int conversion and a NaN select (LSTM step, 32 rows x 128 units:
  // 60 -> 53 cycles per vector; the same results, bit for bit)
  const float nb = n + 12582912.0f;
  uint32_t bits;  // unsigned: NaN's bits may wrap, and p is NaN then anyway
  std::memcpy(&bits, &nb, sizeof(bits));
  bits = (bits - 0x4B400000u + 127u) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

// exp_approx on a GCC vector of floats (16, 32 or 64 bytes), lane for lane the same result,
// bit for bit: the same steps in the same order, with the ISA's own instructions where
// `#pragma omp simd` over the scalar one gave a long sequence. The scalar function in such a
// loop became compare-and-blend clamps and integer ops for 2^n; written with min/max and
// vscalefps, an LSTM step's gates took 1.58 -> 1.05 ns per unit and row (32 rows x 128 units,
// AVX-512, one core). NaN passes the clamps: the x operand comes second, which min/max return
// when either is NaN.
template <typename VF>
inline VF exp_approx_vec(VF x) {
  static_assert(sizeof(x[0]) == sizeof(float), "exp_approx_vec takes vectors of float");
  // round(x / ln 2) as x * log2(e) + 1.5 * 2^23 - 1.5 * 2^23, its product unrounded (one FMA)
  constexpr float kLog2e = 1.44269504088896341f, kRound = 12582912.0f;
  constexpr float kLn2Hi = 0.693359375f, kLn2Lo = -2.12194440e-4f;
  constexpr float kP[6] = {1.9875691500e-4f, 1.3981999507e-3f, 8.3334519073e-3f,
                           4.1665795894e-2f, 1.6666665459e-1f, 5.0000001201e-1f};
#if defined(__AVX512F__)
  if constexpr (sizeof(VF) == 64) {
    // the zero-masked forms with every lane set: the plain ones pass an undefined vector that
    // GCC 12 warns about (-Wmaybe-uninitialized)
    constexpr __mmask16 all = 0xFFFF;
    const __m512 xc = _mm512_maskz_min_ps(all, _mm512_set1_ps(88.0f),
                                          _mm512_maskz_max_ps(all, _mm512_set1_ps(-87.0f), (__m512)x));
    const __m512 n = _mm512_sub_ps(_mm512_fmadd_ps(xc, _mm512_set1_ps(kLog2e), _mm512_set1_ps(kRound)),
                                   _mm512_set1_ps(kRound));
    const __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(kLn2Lo), _mm512_fnmadd_ps(n, _mm512_set1_ps(kLn2Hi), xc));
    __m512 p = _mm512_set1_ps(kP[0]);
    for (int i = 1; i < 6; ++i) p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kP[i]));
    p = _mm512_add_ps(_mm512_fmadd_ps(_mm512_mul_ps(p, r), r, r), _mm512_set1_ps(1.0f));
    return (VF)_mm512_maskz_scalef_ps(all, p, n);
  }
#endif
#if defined(__AVX2__)
  if constexpr (sizeof(VF) == 32) {
    const __m256 xc = _mm256_min_ps(_mm256_set1_ps(88.0f), _mm256_max_ps(_mm256_set1_ps(-87.0f), (__m256)x));
    const __m256 n = _mm256_sub_ps(_mm256_fmadd_ps(xc, _mm256_set1_ps(kLog2e), _mm256_set1_ps(kRound)),
                                   _mm256_set1_ps(kRound));
    const __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(kLn2Lo), _mm256_fnmadd_ps(n, _mm256_set1_ps(kLn2Hi), xc));
    __m256 p = _mm256_set1_ps(kP[0]);
    for (int i = 1; i < 6; ++i) p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kP[i]));
    p = _mm256_add_ps(_mm256_fmadd_ps(_mm256_mul_ps(p, r), r, r), _mm256_set1_ps(1.0f));
    // 2^n from n's integer (NaN's is garbage, and p is NaN then anyway)
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return (VF)_mm256_mul_ps(p, _mm256_castsi256_ps(e));
  }
#endif
  {
    typedef uint32_t VU __attribute__((vector_size(sizeof(VF))));
    const VF lo = VF{} - 87.0f, hi = VF{} + 88.0f, round = VF{} + kRound;
    VF xc = x < lo ? lo : x;
    xc = xc > hi ? hi : xc;
    const VF n = (xc * kLog2e + round) - round;
    const VF r = xc - n * kLn2Hi - n * kLn2Lo;
    VF p = VF{} + kP[0];
    for (int i = 1; i < 6; ++i) p = p * r + kP[i];
    p = p * r * r + r + 1.0f;
    const VU e = ((VU)(n + round) - 0x4B400000u + 127u) << 23;  // as in exp_approx
    return p * (VF)e;
  }
}

inline float sigmoid(float x) { return 1.0f / (1.0f + exp_approx(-x)); }
inline float tanh_(float x) { return 2.0f / (1.0f + exp_approx(-2.0f * x)) - 1.0f; }
inline double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }
inline double tanh_(double x) { return std::tanh(x); }
// the same on GCC vectors of floats (the float forms above, lane by lane, bit for bit)
template <typename VF, typename = decltype(VF{}[0])>
inline VF sigmoid(VF x) { return 1.0f / (1.0f + exp_approx_vec(-x)); }
template <typename VF, typename = decltype(VF{}[0])>
inline VF tanh_(VF x) { return 2.0f / (1.0f + exp_approx_vec(-2.0f * x)) - 1.0f; }

inline float relu(float x) { return x > 0.0f ? x : (x != x ? x : 0.0f); }
inline double relu(double x) { return x > 0.0 ? x : (x != x ? x : 0.0); }
template <typename VF, typename = decltype(VF{}[0])>
inline VF relu(VF x) { return x > VF{} ? x : (x != x ? x : VF{}); }

}  // namespace
}  // namespace fastrnn
