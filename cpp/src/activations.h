// Activations and their derivatives from OUTPUTS (sigmoid' = s(1-s), tanh' = 1-t^2).
// float: a branch-free exp (Cephes polynomial, ~1 ulp on the reduced range) that compilers
// vectorize inside `#pragma omp simd` loops; double: the C library (full precision, the tight
// float64 tests compare against NumPy). Everything has internal linkage: this header is
// included by the per-ISA translation units, which must not share symbols.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

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

inline float sigmoid(float x) { return 1.0f / (1.0f + exp_approx(-x)); }
inline float tanh_(float x) { return 2.0f / (1.0f + exp_approx(-2.0f * x)) - 1.0f; }
inline double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }
inline double tanh_(double x) { return std::tanh(x); }

template <typename T> inline T relu(T x) { return x > T(0) ? x : (x != x ? x : T(0)); }

}  // namespace
}  // namespace fastrnn
