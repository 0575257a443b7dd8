// fastrnn._core: the compiled extension. Each area binds itself in its own file.
#include <fastrnn/fastrnn.h>

#include "common.h"
#include "../src/gemm.h"

namespace fastrnn_py {
void bind_recurrent(py::module_& m);
void bind_attention(py::module_& m);
}  // namespace fastrnn_py

PYBIND11_MODULE(_core, m) {
  namespace py = pybind11;
  m.doc() = "fastrnn C++ core (OpenMP + bundled OpenBLAS)";
  m.def("set_num_threads", [](int n) {
    if (n < 1) throw py::value_error("n: expected a thread count >= 1, got " + std::to_string(n));
    fastrnn::set_num_threads(n);
  }, py::arg("n"));
  m.def("get_num_threads", &fastrnn::num_threads);
  m.def("default_num_threads", &fastrnn::default_num_threads);
  m.def("build_info", [] {
    py::dict d;
    d["version"] = FASTRNN_VERSION;
    d["openmp"] = fastrnn::openmp_enabled();
    d["blas"] = "openblas";
    d["blas_version"] = fastrnn::blas_info();
    d["simd"] = fastrnn::simd_level();
    d["step_group_update"] = fastrnn::step_group_update();
    d["num_threads"] = fastrnn::num_threads();
    d["compiler"] = __VERSION__;
    return d;
  });
  // The cache of released large kernel buffers (cpp/src/buffer.cpp).
  m.def("buffer_cache_stats", [] {
    const fastrnn::BufferCacheStats st = fastrnn::buffer_cache_stats();
    py::dict d;
    d["cached_bytes"] = st.cached_bytes;
    d["in_use_bytes"] = st.live_bytes;
    d["peak_bytes"] = st.peak_bytes;
    d["reused"] = st.reused;
    d["allocated"] = st.allocated;
    d["enabled"] = st.enabled;
    return d;
  });
  m.def("buffer_cache_release", [] {
    py::gil_scoped_release nogil;
    return fastrnn::buffer_cache_release();
  });
  m.def("buffer_cache_enable", [](bool on) {
    py::gil_scoped_release nogil;
    fastrnn::buffer_cache_enable(on);
  }, py::arg("on"));
  // C = A @ B with the bundled BLAS (float32/float64, C-contiguous 2-d): `fastrnn bench` uses it
  // to measure this machine's GEMM rate, the ceiling the recurrent kernels are compared with.
  m.def("blas_matmul", [](py::array a, py::array b) -> py::array {
    if (a.ndim() != 2 || b.ndim() != 2 || a.shape(1) != b.shape(0))
      throw py::value_error("a, b: expected 2-d arrays (M, K) and (K, N)");
    const int64_t M = a.shape(0), K = a.shape(1), N = b.shape(1);
    auto run = [&](auto tag) -> py::array {
      using T = decltype(tag);
      const T* pa = fastrnn_py::checked<T>(a, "a", {M, K});
      const T* pb = fastrnn_py::checked<T>(b, "b", {K, N});
      auto c = fastrnn_py::new_array<T>({M, N});
      T* pc = c.mutable_data();
      py::gil_scoped_release nogil;
      fastrnn::gemm<T>(false, false, M, N, K, T(1), pa, K, pb, N, T(0), pc, N);
      return c;
    };
    if (fastrnn_py::is_f32(a)) return run(float{});
    if (fastrnn_py::is_f64(a)) return run(double{});
    throw py::type_error("a: expected float32 or float64");
  }, py::arg("a"), py::arg("b"));
  fastrnn_py::bind_recurrent(m);
  fastrnn_py::bind_attention(m);
}
