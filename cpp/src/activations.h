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

// The steps of exp that need no bit tricks, for a float or a GCC vector of floats (the scalar
// and the vector exp below share them, so they stay the same steps in the same order):
// n = round(xc / ln 2) for the clamped argument xc, and exp(xc - n ln 2) ~= p(r).
template <typename F>
inline F exp_reduce(F xc, F round, F& r) {
  const F n = (xc * 1.44269504088896341f + round) - round;
  r = xc - n * 0.693359375f - n * -2.12194440e-4f;
  return n;
}
template <typename F>
inline F exp_poly(F r) {
  F p = F{} + 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  return p * r * r + r + 1.0f;
}

inline float exp_approx(float x) {
  // NaN passes through the clamps unchanged, makes p NaN, and p * scale stays NaN whatever
  // the scale.
  float xc = x < -87.0f ? -87.0f : x;
  xc = xc > 88.0f ? 88.0f : xc;
  float r;
  const float n = exp_reduce(xc, 12582912.0f, r);
  const float p = exp_poly(r);
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
// bit for bit: the same steps in the same order (GCC fuses the same multiply-adds into FMAs).
// Only the clamp and the scaling by 2^n use the ISA's own instructions, where `#pragma omp
// simd` over the scalar function gave compare-and-blend clamps and integer ops for 2^n: with
// min/max and vscalefps an LSTM step's gates took 1.58 -> 1.05 ns per unit and row (32 rows x
// 128 units, AVX-512, one core); on AVX2, min/max made exp 2.72 -> 2.22 ns per vector.
template <typename VF>
inline VF clamp_exp_arg(VF x) {  // to [-87, 88]; NaN passes: min/max return their second operand then
#if defined(__AVX512F__)
  // the zero-masked forms with every lane set: the plain ones pass an undefined vector that
  // GCC 12 warns about (-Wmaybe-uninitialized)
  if constexpr (sizeof(VF) == 64)
    return (VF)_mm512_maskz_min_ps(0xFFFF, _mm512_set1_ps(88.0f),
                                   _mm512_maskz_max_ps(0xFFFF, _mm512_set1_ps(-87.0f), (__m512)x));
#endif
#if defined(__AVX2__)
  if constexpr (sizeof(VF) == 32)
    return (VF)_mm256_min_ps(_mm256_set1_ps(88.0f), _mm256_max_ps(_mm256_set1_ps(-87.0f), (__m256)x));
#endif
  const VF lo = VF{} - 87.0f, hi = VF{} + 88.0f;
  const VF xc = x < lo ? lo : x;
  return xc > hi ? hi : xc;
}

// p * 2^n for whole n in [-126, 127] (round = 1.5 * 2^23, exp_approx's rounding constant)
template <typename VF>
inline VF scale_by_pow2(VF p, VF n, VF round) {
#if defined(__AVX512F__)
  if constexpr (sizeof(VF) == 64) return (VF)_mm512_maskz_scalef_ps(0xFFFF, (__m512)p, (__m512)n);
#endif
  // n + 1.5 * 2^23 holds n in its low mantissa bits, as in exp_approx (NaN's are garbage, and
  // p is NaN then anyway)
  typedef uint32_t VU __attribute__((vector_size(sizeof(VF))));
  const VU e = ((VU)(n + round) - 0x4B400000u + 127u) << 23;
  return p * (VF)e;
}

template <typename VF>
inline VF exp_approx_vec(VF x) {
  static_assert(sizeof(x[0]) == sizeof(float), "exp_approx_vec takes vectors of float");
  const VF round = VF{} + 12582912.0f;
  VF r;
  const VF n = exp_reduce(clamp_exp_arg(x), round, r);
  return scale_by_pow2(exp_poly(r), n, round);
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
