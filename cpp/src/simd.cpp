// Run-time ISA selection: the step kernels (pointwise + packed GEMM panel) are compiled three times (kernels_isa.cpp);
// the widest level this CPU supports is picked once, on first use. FASTRNN_SIMD=avx2|baseline
// forces a lower level (for testing the other paths on a wide machine).
#include <fastrnn/fastrnn.h>

#include <cstdlib>
#include <cstring>

#include "kernels.h"

namespace fastrnn {

namespace {

enum class Level { Base, Avx2, Avx512 };

Level detect() {
  __builtin_cpu_init();
  Level best = Level::Base;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) best = Level::Avx2;
  if (best == Level::Avx2 && __builtin_cpu_supports("avx512f") &&
      __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
      __builtin_cpu_supports("avx512vl"))
    best = Level::Avx512;
  if (const char* env = std::getenv("FASTRNN_SIMD")) {
    Level want = best;
    if (!std::strcmp(env, "baseline")) want = Level::Base;
    else if (!std::strcmp(env, "avx2")) want = Level::Avx2;
    else if (!std::strcmp(env, "avx512")) want = Level::Avx512;
    if (want < best) best = want;  // never above what the CPU has
  }
  return best;
}

Level level() {
  static const Level l = detect();
  return l;
}

template <typename T>
IsaKernels<T> make() {
  IsaKernels<T> k{};
  switch (level()) {
    case Level::Avx512: avx512::fill_kernels(&k); break;
    case Level::Avx2: avx2::fill_kernels(&k); break;
    default: base::fill_kernels(&k); break;
  }
  // FASTRNN_GROUP_UPDATE=0|1 overrides the level's choice of the forward step's update per
  // group of units (recurrent.cpp, step_groups), so that either way can be tested anywhere
  if (const char* env = std::getenv("FASTRNN_GROUP_UPDATE"))
    if (env[0] == '0' || env[0] == '1') k.group_update = env[0] == '1';
  return k;
}

}  // namespace

const char* simd_level() {
  switch (level()) {
    case Level::Avx512: return "avx512";
    case Level::Avx2: return "avx2";
    default: return "baseline";
  }
}

bool step_group_update() { return isa_kernels_f32().group_update; }

const IsaKernels<float>& isa_kernels_f32() {
  static const IsaKernels<float> k = make<float>();
  return k;
}
const IsaKernels<double>& isa_kernels_f64() {
  static const IsaKernels<double> k = make<double>();
  return k;
}

}  // namespace fastrnn
