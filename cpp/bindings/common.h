// Shared helpers for the bindings: every array that reaches the core is checked here for
// dtype, shape and contiguity, so a bad call raises ValueError/TypeError naming the argument
// instead of crashing. The Python layer prepares arrays (dtype, C order) before calling.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <initializer_list>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace fastrnn_py {

namespace py = pybind11;

inline std::string shape_str(const std::vector<int64_t>& s) {
  std::ostringstream o;
  o << "(";
  for (size_t i = 0; i < s.size(); ++i) o << (i ? ", " : "") << s[i];
  if (s.size() == 1) o << ",";
  o << ")";
  return o.str();
}

inline std::vector<int64_t> shape_of(const py::array& a) {
  std::vector<int64_t> s(a.ndim());
  for (py::ssize_t i = 0; i < a.ndim(); ++i) s[i] = a.shape(i);
  return s;
}

// Whether `a` holds T in native byte order: the identity test first (NumPy's built-in dtypes
// are singletons, so it almost always decides), then NumPy's own ==, since an array restored
// by pickle carries an equal dtype object that is not the singleton (such arrays were refused
// with "expected float32, got float32").
template <typename T>
inline bool has_dtype(const py::array& a) {
  const py::dtype want = py::dtype::of<T>(), got = a.dtype();
  return got.is(want) || got.equal(want);
}

// The dtype ("float32"/"float64") every array of one call must share.
inline bool is_f32(const py::array& a) { return has_dtype<float>(a); }
inline bool is_f64(const py::array& a) { return has_dtype<double>(a); }

inline py::array as_array(py::handle h, const char* name) {
  if (!py::isinstance<py::array>(h)) throw py::type_error(std::string(name) + ": expected a numpy array");
  return py::reinterpret_borrow<py::array>(h);
}

// Checks dtype T, exact shape and C-contiguity; returns the data pointer.
template <typename T>
const T* checked(const py::array& a, const std::string& name, const std::vector<int64_t>& shape) {
  if (!has_dtype<T>(a))
    throw py::type_error(name + ": expected dtype " + std::string(py::str(py::dtype::of<T>())) +
                         ", got " + std::string(py::str(a.dtype())));
  if (shape_of(a) != shape)
    throw py::value_error(name + ": expected shape " + shape_str(shape) + ", got " + shape_str(shape_of(a)));
  if (!(a.flags() & py::array::c_style))
    throw py::value_error(name + ": expected a C-contiguous array");
  return static_cast<const T*>(a.data());
}

template <typename T>
T* checked_mutable(const py::array& a, const std::string& name, const std::vector<int64_t>& shape) {
  const T* p = checked<T>(a, name, shape);
  if (!a.writeable()) throw py::value_error(name + ": expected a writeable array");
  return const_cast<T*>(p);
}

// A new C-contiguous, uninitialised T array, made through NumPy's C API directly: pybind11's
// array_t constructor builds shape and stride vectors on the heap, which shows in a cell step
// of a few microseconds.
template <typename T>
py::array_t<T> new_array(const int64_t* shape, size_t nd) {
  constexpr size_t kMaxDims = 8;
  if (nd > kMaxDims) throw std::invalid_argument("new_array: too many dimensions");
  Py_intptr_t dims[kMaxDims];
  for (size_t i = 0; i < nd; ++i) dims[i] = static_cast<Py_intptr_t>(shape[i]);
  const auto& api = py::detail::npy_api::get();
  PyObject* descr = py::dtype::of<T>().release().ptr();  // NewFromDescr steals this reference
  PyObject* o = api.PyArray_NewFromDescr_(api.PyArray_Type_, descr, static_cast<int>(nd), dims, nullptr, nullptr, 0,
                                          nullptr);
  if (!o) throw py::error_already_set();
  return py::reinterpret_steal<py::array_t<T>>(o);
}

template <typename T>
py::array_t<T> new_array(std::initializer_list<int64_t> shape) { return new_array<T>(shape.begin(), shape.size()); }

template <typename T>
py::array_t<T> new_array(const std::vector<int64_t>& shape) { return new_array<T>(shape.data(), shape.size()); }

inline int64_t product(const std::vector<int64_t>& s) {
  int64_t n = 1;
  for (int64_t v : s) n *= v;
  return n;
}

}  // namespace fastrnn_py
