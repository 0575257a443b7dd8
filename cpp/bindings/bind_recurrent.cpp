// Binding of the recurrent core: convert -> check -> release the GIL -> call -> wrap.
// One entry point per operation that switches on dtype (float32 / float64).
#include <fastrnn/fastrnn.h>

#include <climits>
#include <memory>

#include "../src/gemm.h"
#include "common.h"

namespace fastrnn_py {

using fastrnn::Mode;
using fastrnn::RecurrentShape;

// The training cache handed to Python: opaque, owns the C++ workspace.
struct RecurrentCacheHandle {
  RecurrentShape shape{};
  bool has_bias = true;
  bool f64 = false;
  std::unique_ptr<fastrnn::RecurrentCache<float>> c32;
  std::unique_ptr<fastrnn::RecurrentCache<double>> c64;
  size_t nbytes() const { return f64 ? c64->bytes() : c32->bytes(); }
};

namespace {

Mode to_mode(int m) {
  if (m < 0 || m > 3) throw py::value_error("mode: expected 0..3 (rnn_tanh, rnn_relu, lstm, gru), got " + std::to_string(m));
  return static_cast<Mode>(m);
}

// Rejects problems whose buffers would overflow 64-bit sizes or the 32-bit BLAS indices.
void check_sizes(const RecurrentShape& s) {
  const int G = fastrnn::cache_gate_count(s.mode);
  const long double TB = (long double)s.T * s.B;
  const long double biggest = TB * std::max<long double>((long double)G * s.H, std::max<long double>(s.I, s.D * s.H));
  if (TB > INT_MAX || (long double)G * s.H > INT_MAX || s.I > INT_MAX || biggest * 8 > (long double)(INT64_MAX / 4))
    throw py::value_error("x: problem too large (T*B = " + std::to_string(s.T) + "*" + std::to_string(s.B) +
                          ", H = " + std::to_string(s.H) + ", I = " + std::to_string(s.I) +
                          "): buffers would exceed the supported index range");
}

std::string wname(const RecurrentShape& s, int64_t k, const char* what) {
  const int64_t l = k / s.D, d = k % s.D;
  return std::string("weights[") + std::to_string(k) + "] (" + what + "_l" + std::to_string(l) + (d ? "_reverse" : "") + ")";
}

// weights: sequence of L*D tuples (w_ih, w_hh, b_ih, b_hh); biases None together or arrays.
template <typename T>
std::vector<fastrnn::LayerWeights<T>> get_weights(const py::sequence& weights, const RecurrentShape& s, bool& has_bias) {
  const int64_t n = s.L * s.D, GH = fastrnn::gate_count(s.mode) * s.H;
  if ((int64_t)py::len(weights) != n)
    throw py::value_error("weights: expected " + std::to_string(n) + " (layer, direction) entries, got " + std::to_string(py::len(weights)));
  std::vector<fastrnn::LayerWeights<T>> out(n);
  for (int64_t k = 0; k < n; ++k) {
    py::sequence t = py::reinterpret_borrow<py::sequence>(weights[k]);
    if (py::len(t) != 4) throw py::value_error("weights[" + std::to_string(k) + "]: expected (w_ih, w_hh, b_ih, b_hh)");
    const int64_t I_l = s.input_size(k / s.D);
    out[k].w_ih = checked<T>(as_array(t[0], "w_ih"), wname(s, k, "weight_ih"), {GH, I_l});
    out[k].w_hh = checked<T>(as_array(t[1], "w_hh"), wname(s, k, "weight_hh"), {GH, s.H});
    const bool b0 = !t[2].is_none(), b1 = !t[3].is_none();
    if (b0 != b1) throw py::value_error(wname(s, k, "bias") + ": b_ih and b_hh must both be arrays or both None");
    if (k == 0) has_bias = b0;
    else if (has_bias != b0) throw py::value_error(wname(s, k, "bias") + ": every layer must have biases, or none");
    if (b0) {
      out[k].b_ih = checked<T>(as_array(t[2], "b_ih"), wname(s, k, "bias_ih"), {GH});
      out[k].b_hh = checked<T>(as_array(t[3], "b_hh"), wname(s, k, "bias_hh"), {GH});
    }
  }
  return out;
}

template <typename T>
std::vector<const T*> get_masks(const py::object& masks, const RecurrentShape& s, std::vector<py::array>& keep) {
  std::vector<const T*> out;
  if (masks.is_none()) return out;
  py::sequence seq = py::reinterpret_borrow<py::sequence>(masks);
  if ((int64_t)py::len(seq) != s.L - 1)
    throw py::value_error("dropout_masks: expected " + std::to_string(s.L - 1) + " masks, got " + std::to_string(py::len(seq)));
  for (int64_t l = 0; l + 1 < s.L; ++l) {
    py::array m = as_array(seq[l], "dropout_masks");
    keep.push_back(m);
    out.push_back(checked<T>(m, "dropout_masks[" + std::to_string(l) + "]", {s.T, s.B, s.D * s.H}));
  }
  return out;
}

const int64_t* get_lengths(const py::object& lengths, const RecurrentShape& s, py::array& keep) {
  if (lengths.is_none()) return nullptr;
  keep = as_array(lengths, "lengths");
  const int64_t* p = checked<int64_t>(keep, "lengths", {s.B});
  for (int64_t b = 0; b < s.B; ++b)
    if (p[b] < 0 || p[b] > s.T)
      throw py::value_error("lengths: expected 0 <= lengths[b] <= T = " + std::to_string(s.T) + ", got lengths[" +
                            std::to_string(b) + "] = " + std::to_string(p[b]));
  return p;
}

template <typename T>
py::tuple forward_impl(const RecurrentShape& s, const py::array& x, const py::sequence& weights, const py::object& h0,
                       const py::object& c0, const py::object& lengths, const py::object& masks, bool need_cache) {
  const bool lstm = s.mode == Mode::Lstm;
  const std::vector<int64_t> state_shape{s.L * s.D, s.B, s.H};
  fastrnn::RecurrentForwardArgs<T> a{};
  a.shape = s;
  a.x = checked<T>(x, "x", {s.T, s.B, s.I});
  bool has_bias = true;
  auto w = get_weights<T>(weights, s, has_bias);
  a.weights = w.data();
  py::array h0a, c0a, lena;
  if (!h0.is_none()) { h0a = as_array(h0, "h0"); a.h0 = checked<T>(h0a, "h0", state_shape); }
  if (!c0.is_none()) {
    if (!lstm) throw py::value_error("c0: only an LSTM has a cell state");
    c0a = as_array(c0, "c0");
    a.c0 = checked<T>(c0a, "c0", state_shape);
  }
  a.lengths = get_lengths(lengths, s, lena);
  std::vector<py::array> keep;
  auto m = get_masks<T>(masks, s, keep);
  a.dropout_masks = m.empty() ? nullptr : m.data();

  auto y = new_array<T>({s.T, s.B, s.D * s.H});
  auto hn = new_array<T>(state_shape);
  py::object cn = py::none();
  a.y = y.mutable_data();
  a.hn = hn.mutable_data();
  if (lstm) {
    auto cna = new_array<T>(state_shape);
    a.cn = cna.mutable_data();
    cn = cna;
  }
  std::unique_ptr<fastrnn::RecurrentCache<T>> cache;
  if (need_cache) cache = std::make_unique<fastrnn::RecurrentCache<T>>();
  {
    py::gil_scoped_release nogil;
    fastrnn::recurrent_forward<T>(a, cache.get());
  }
  py::object handle = py::none();
  if (need_cache) {
    auto hc = std::make_unique<RecurrentCacheHandle>();
    hc->shape = s;
    hc->has_bias = has_bias;
    if constexpr (sizeof(T) == 8) { hc->f64 = true; hc->c64 = std::move(cache); }
    else { hc->c32 = std::move(cache); }
    handle = py::cast(std::move(hc));
  }
  return py::make_tuple(y, hn, cn, handle);
}

template <typename T>
py::tuple backward_impl(const fastrnn::RecurrentCache<T>& cache, const RecurrentShape& s, bool cache_has_bias,
                        const py::array& x, const py::sequence& weights, const py::object& masks, const py::array& dy,
                        const py::object& dhn, const py::object& dcn, const py::sequence& grads) {
  const bool lstm = s.mode == Mode::Lstm;
  const std::vector<int64_t> state_shape{s.L * s.D, s.B, s.H};
  const int64_t GH = fastrnn::gate_count(s.mode) * s.H;
  fastrnn::RecurrentBackwardArgs<T> a{};
  a.x = checked<T>(x, "x", {s.T, s.B, s.I});
  bool has_bias = true;
  auto w = get_weights<T>(weights, s, has_bias);
  if (has_bias != cache_has_bias) throw py::value_error("weights: bias presence differs from the forward call");
  a.weights = w.data();
  std::vector<py::array> keep;
  auto m = get_masks<T>(masks, s, keep);
  a.dropout_masks = m.empty() ? nullptr : m.data();
  a.dy = checked<T>(dy, "dy", {s.T, s.B, s.D * s.H});
  py::array dhna, dcna;
  if (!dhn.is_none()) { dhna = as_array(dhn, "dh_n"); a.dhn = checked<T>(dhna, "dh_n", state_shape); }
  if (!dcn.is_none()) {
    if (!lstm) throw py::value_error("dc_n: only an LSTM has a cell state");
    dcna = as_array(dcn, "dc_n");
    a.dcn = checked<T>(dcna, "dc_n", state_shape);
  }
  if ((int64_t)py::len(grads) != s.L * s.D)
    throw py::value_error("grads: expected " + std::to_string(s.L * s.D) + " entries, got " + std::to_string(py::len(grads)));
  std::vector<fastrnn::LayerGrads<T>> g(s.L * s.D);
  for (int64_t k = 0; k < s.L * s.D; ++k) {
    py::sequence t = py::reinterpret_borrow<py::sequence>(grads[k]);
    if (py::len(t) != 4) throw py::value_error("grads[" + std::to_string(k) + "]: expected (dw_ih, dw_hh, db_ih, db_hh)");
    g[k].w_ih = checked_mutable<T>(as_array(t[0], "grads"), wname(s, k, "grad weight_ih"), {GH, s.input_size(k / s.D)});
    g[k].w_hh = checked_mutable<T>(as_array(t[1], "grads"), wname(s, k, "grad weight_hh"), {GH, s.H});
    if (has_bias) {
      g[k].b_ih = checked_mutable<T>(as_array(t[2], "grads"), wname(s, k, "grad bias_ih"), {GH});
      g[k].b_hh = checked_mutable<T>(as_array(t[3], "grads"), wname(s, k, "grad bias_hh"), {GH});
    }
  }
  a.grads = g.data();
  auto dx = new_array<T>({s.T, s.B, s.I});
  auto dh0 = new_array<T>(state_shape);
  py::object dc0 = py::none();
  a.dx = dx.mutable_data();
  a.dh0 = dh0.mutable_data();
  if (lstm) {
    auto d = new_array<T>(state_shape);
    a.dc0 = d.mutable_data();
    dc0 = d;
  }
  {
    py::gil_scoped_release nogil;
    fastrnn::recurrent_backward<T>(cache, a);
  }
  return py::make_tuple(dx, dh0, dc0);
}

// An array-like argument of a cell call as a floating-point ndarray (lists and scalars are
// converted; integer, bool, complex and object data are a TypeError, as in the reference).
py::array cell_float_array(py::handle h, const char* name) {
  // (no default-constructed py::array here: pybind11 allocates an empty float64 array for it)
  auto as_float = [name](py::array a) {
    if (a.dtype().kind() != 'f')
      throw py::type_error(std::string(name) + ": expected a floating-point array, got dtype " +
                           std::string(py::str(a.dtype())));
    return a;
  };
  if (py::isinstance<py::array>(h)) return as_float(py::reinterpret_borrow<py::array>(h));
  const auto& api = py::detail::npy_api::get();
  PyObject* o = api.PyArray_FromAny_(h.ptr(), nullptr, 0, 0, 0, nullptr);
  if (!o) {
    PyErr_Clear();
    throw py::type_error(std::string(name) + ": expected a float array, got " + Py_TYPE(h.ptr())->tp_name);
  }
  return as_float(py::reinterpret_steal<py::array>(o));
}

// An array argument of a cell call as T, C-contiguous: converted (copied) only when it is a
// float array of the other precision or byte order, or not contiguous. (The type number alone
// does not tell the byte order: big-endian weights were read as native ones.) The common case
// (already T, contiguous, right shape) allocates nothing: a cell step is a few microseconds,
// so the checks are identity and integer tests, and messages are built only on failure.
template <typename T>
py::array cell_operand(py::handle h, const char* name, std::initializer_list<int64_t> shape) {
  py::array a = cell_float_array(h, name);
  if (!has_dtype<T>(a) || !(a.flags() & py::array::c_style))
    a = py::array_t<T, py::array::c_style | py::array::forcecast>::ensure(a);
  bool ok = a.ndim() == static_cast<py::ssize_t>(shape.size());
  py::ssize_t i = 0;
  for (int64_t s : shape) ok = ok && a.shape(i++) == s;
  if (!ok) checked<T>(a, name, std::vector<int64_t>(shape));  // raises with the full message
  return a;
}

// Cell steps of fewer multiply-adds than this (B=1: an LSTM up to about I=H=180, a few
// microseconds) keep the GIL.
constexpr long double kCellKeepGilMacs = 1 << 18;

template <typename T>
py::object cell_impl(Mode mode, const py::array& x, py::handle h, py::handle c, py::handle w_ih, py::handle w_hh,
                     py::handle b_ih, py::handle b_hh) {
  if (x.ndim() != 2) throw py::value_error("x: expected a 2-d array (B, I), got " + shape_str(shape_of(x)));
  const int64_t B = x.shape(0), I = x.shape(1);
  py::array whh = cell_float_array(w_hh, "w_hh");
  if (whh.ndim() != 2) throw py::value_error("w_hh: expected a 2-d array (G*H, H), got " + shape_str(shape_of(whh)));
  const int64_t H = whh.shape(1), GH = fastrnn::gate_count(mode) * H;
  if (H < 1) throw py::value_error("w_hh: expected hidden size >= 1");
  if ((long double)B * GH > INT_MAX || (long double)GH * std::max(I, H) > INT_MAX)
    throw py::value_error("x: problem too large for the supported index range");
  const bool lstm = mode == Mode::Lstm;
  py::array xa = cell_operand<T>(x, "x", {B, I});
  py::array wih = cell_operand<T>(w_ih, "w_ih", {GH, I});
  whh = cell_operand<T>(whh, "w_hh", {GH, H});
  if (b_ih.is_none() != b_hh.is_none()) throw py::value_error("b_ih: expected b_ih and b_hh both arrays or both None");
  // The optional operands are held as py::object: a default-constructed py::array allocates.
  py::object bih, bhh, ha, ca, c_out;
  fastrnn::LayerWeights<T> w{static_cast<const T*>(wih.data()), static_cast<const T*>(whh.data()), nullptr, nullptr};
  auto keep = [](py::object& holder, py::array a) {
    holder = a;
    return static_cast<const T*>(a.data());
  };
  if (!b_ih.is_none()) {
    w.b_ih = keep(bih, cell_operand<T>(b_ih, "b_ih", {GH}));
    w.b_hh = keep(bhh, cell_operand<T>(b_hh, "b_hh", {GH}));
  }
  const T* hp = h.is_none() ? nullptr : keep(ha, cell_operand<T>(h, lstm ? "state[0]" : "state", {B, H}));
  const T* cp = c.is_none() ? nullptr : keep(ca, cell_operand<T>(c, "state[1]", {B, H}));
  auto h_out = new_array<T>({B, H});
  T* hop = h_out.mutable_data();
  T* cop = nullptr;
  if (lstm) {
    auto co = new_array<T>({B, H});
    cop = co.mutable_data();
    c_out = std::move(co);
  }
  const T* xp = static_cast<const T*>(xa.data());
  // Like NumPy, the GIL is released only for work that takes long enough for another thread
  // to use it: handing it over and back costs 0.06 us, 2% of a step at B=1, H=128.
  if ((long double)B * GH * (I + H) < kCellKeepGilMacs) {
    fastrnn::cell_step<T>(mode, B, I, H, xp, hp, cp, w, hop, cop);
  } else {
    py::gil_scoped_release nogil;
    fastrnn::cell_step<T>(mode, B, I, H, xp, hp, cp, w, hop, cop);
  }
  if (lstm) return py::make_tuple(h_out, c_out);
  return h_out;
}

// fastrnn.functional.cell: the hot call of hand-written loops. A plain CPython builtin
// (METH_FASTCALL) rather than a pybind11 function: pybind11's dispatcher (argument vectors,
// overload resolution) and a Python wrapper cost about as much as the step itself at
// B = 1, H = 128. Arguments: mode, x, state, w_ih, w_hh, b_ih=None, b_hh=None.
constexpr const char* kCellArgs[] = {"mode", "x", "state", "w_ih", "w_hh", "b_ih", "b_hh"};
constexpr Py_ssize_t kCellNargs = 7;

Mode cell_mode(PyObject* o) {
  static constexpr const char* names[] = {"rnn_tanh", "rnn_relu", "lstm", "gru"};  // in Mode order
  if (PyUnicode_Check(o))
    for (int m = 0; m < 4; ++m)
      if (PyUnicode_CompareWithASCIIString(o, names[m]) == 0) return static_cast<Mode>(m);
  throw py::value_error("mode: expected one of 'rnn_tanh', 'rnn_relu', 'lstm', 'gru', got " +
                        std::string(py::repr(o)));
}

// x as float32 or float64: float64 stays, other float types run in float32 (float16) or
// float64 (long double), as in the layers.
py::array cell_x(PyObject* o) {
  py::array x = cell_float_array(o, "x");
  const int num = x.dtype().num();
  if (num == py::detail::npy_format_descriptor<float>::value || num == py::detail::npy_format_descriptor<double>::value)
    return x;
  if (x.itemsize() >= 8) return py::array_t<double, py::array::forcecast>::ensure(x);
  return py::array_t<float, py::array::forcecast>::ensure(x);
}

py::object cell_call(PyObject* const* a) {
  const Mode mode = cell_mode(a[0]);
  py::array x = cell_x(a[1]);
  PyObject* state = a[2];
  py::handle h = Py_None, c = Py_None;
  if (mode == Mode::Lstm) {
    if (state != Py_None) {
      if (!(PyTuple_Check(state) || PyList_Check(state)) || PySequence_Fast_GET_SIZE(state) != 2)
        throw py::type_error(std::string("state: expected a tuple (h, c), got ") + Py_TYPE(state)->tp_name);
      // borrowed: cell_impl takes its own references before the GIL is released
      h = PySequence_Fast_GET_ITEM(state, 0);
      c = PySequence_Fast_GET_ITEM(state, 1);
    }
  } else if (PyTuple_Check(state) || PyList_Check(state)) {
    throw py::type_error(std::string("state: expected one array h, got a ") + Py_TYPE(state)->tp_name +
                         " (an LSTM state?)");
  } else {
    h = state;
  }
  if (x.dtype().num() == py::detail::npy_format_descriptor<float>::value)
    return cell_impl<float>(mode, x, h, c, a[3], a[4], a[5], a[6]);
  return cell_impl<double>(mode, x, h, c, a[3], a[4], a[5], a[6]);
}

// Positional and keyword arguments of a METH_FASTCALL | METH_KEYWORDS builtin into out[0..n),
// by name; out holds the defaults on entry (nullptr: required). False with a TypeError set.
bool parse_fastcall(const char* fn, const char* const* names, Py_ssize_t n, PyObject* const* args, Py_ssize_t nargs,
                    PyObject* kwnames, PyObject** out) {
  const Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
  if (nargs > n) {
    PyErr_Format(PyExc_TypeError, "%s() takes at most %zd arguments (%zd given)", fn, n, nargs + nkw);
    return false;
  }
  for (Py_ssize_t i = 0; i < nargs; ++i) out[i] = args[i];
  for (Py_ssize_t k = 0; k < nkw; ++k) {
    PyObject* key = PyTuple_GET_ITEM(kwnames, k);
    Py_ssize_t i = 0;
    while (i < n && PyUnicode_CompareWithASCIIString(key, names[i]) != 0) ++i;
    if (i == n) {
      PyErr_Format(PyExc_TypeError, "%s() got an unexpected keyword argument '%U'", fn, key);
      return false;
    }
    if (i < nargs) {
      PyErr_Format(PyExc_TypeError, "%s() got multiple values for argument '%s'", fn, names[i]);
      return false;
    }
    out[i] = args[nargs + k];
  }
  for (Py_ssize_t i = 0; i < n; ++i)
    if (!out[i]) {
      PyErr_Format(PyExc_TypeError, "%s() missing required argument '%s'", fn, names[i]);
      return false;
    }
  return true;
}

// Runs f() -> py::object and returns a new reference, or nullptr with the C++ exception
// translated to a Python one, as pybind11's dispatcher would.
template <typename F>
PyObject* guarded(F&& f) {
  try {
    return f().release().ptr();
  } catch (py::error_already_set& e) {
    e.restore();
  } catch (py::builtin_exception& e) {
    e.set_error();
  } catch (const std::bad_alloc&) {
    PyErr_NoMemory();
  } catch (const std::exception& e) {
    PyErr_SetString(PyExc_RuntimeError, e.what());
  }
  return nullptr;
}

PyObject* cell_fastcall(PyObject*, PyObject* const* args, Py_ssize_t nargs, PyObject* kwnames) {
  PyObject* a[kCellNargs] = {nullptr, nullptr, nullptr, nullptr, nullptr, Py_None, Py_None};
  if (!parse_fastcall("cell", kCellArgs, kCellNargs, args, nargs, kwnames, a)) return nullptr;
  return guarded([&] { return cell_call(a); });
}

PyMethodDef cell_method_def = {
    "cell", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&cell_fastcall)), METH_FASTCALL | METH_KEYWORDS,
    "cell(mode, x, state, w_ih, w_hh, b_ih=None, b_hh=None)\n--\n\n"
    "One inference step of a cell: h_next, or (h_next, c_next) for mode 'lstm'.\n\n"
    "x (B, I); state None (zeros), h (B, H), or (h, c) for 'lstm'; w_ih (G*H, I), w_hh (G*H, H),\n"
    "b_ih and b_hh (G*H,) or both None. Work is done in x's precision (float64, else float32);\n"
    "other operands are converted to it when needed."};

// The __call__ of the kernel-bound cell classes (fastrnn.RNNCell, GRUCell, LSTMCell): the
// shared Python __call__ of python/fastrnn/layers/recurrent.py, in C. A Python method frame
// costs 0.25 us, a tenth of a GRU step at B=1, H=128. Reads self.mode, self.dtype and
// self.params (so replaced parameter arrays are seen); x that is not an ndarray of the
// cell's dtype goes through fastrnn._checks.as_float_array, as in the Python version.
struct CellAttrs {
  py::object mode, dtype, params, weight_ih, weight_hh, bias_ih, bias_hh, as_float_array;
};

const CellAttrs& cell_attrs() {
  // once per process, safe against the GIL being released inside the import
  PYBIND11_CONSTINIT static py::gil_safe_call_once_and_store<CellAttrs> storage;
  return storage
      .call_once_and_store_result([] {
        auto intern = [](const char* s) { return py::reinterpret_steal<py::object>(PyUnicode_InternFromString(s)); };
        CellAttrs a;
        a.mode = intern("mode");
        a.dtype = intern("dtype");
        a.params = intern("params");
        a.weight_ih = intern("weight_ih");
        a.weight_hh = intern("weight_hh");
        a.bias_ih = intern("bias_ih");
        a.bias_hh = intern("bias_hh");
        a.as_float_array = py::module_::import("fastrnn._checks").attr("as_float_array");
        return a;
      })
      .get_stored();
}

py::object cell_layer_call(PyObject* self, PyObject* x_in, PyObject* state) {
  const CellAttrs& at = cell_attrs();
  py::object mode = py::reinterpret_steal<py::object>(PyObject_GetAttr(self, at.mode.ptr()));
  if (!mode) throw py::error_already_set();
  py::object dtype = py::reinterpret_steal<py::object>(PyObject_GetAttr(self, at.dtype.ptr()));
  if (!dtype) throw py::error_already_set();
  py::object params = py::reinterpret_steal<py::object>(PyObject_GetAttr(self, at.params.ptr()));
  if (!params) throw py::error_already_set();
  py::object x = py::reinterpret_borrow<py::object>(x_in);
  const auto& api = py::detail::npy_api::get();
  if (Py_TYPE(x_in) != api.PyArray_Type_ || py::detail::array_proxy(x_in)->descr != dtype.ptr())
    x = at.as_float_array("x", x, dtype);
  auto param = [&](const py::object& key, bool required) -> py::object {
    PyObject* v = PyObject_GetItem(params.ptr(), key.ptr());
    if (v) return py::reinterpret_steal<py::object>(v);
    if (required || !PyErr_ExceptionMatches(PyExc_KeyError)) throw py::error_already_set();
    PyErr_Clear();
    return py::none();
  };
  py::object w_ih = param(at.weight_ih, true), w_hh = param(at.weight_hh, true);
  py::object b_ih = param(at.bias_ih, false), b_hh = param(at.bias_hh, false);
  PyObject* a[kCellNargs] = {mode.ptr(), x.ptr(), state, w_ih.ptr(), w_hh.ptr(), b_ih.ptr(), b_hh.ptr()};
  return cell_call(a);
}

// tp_call of fastrnn._core.CellCall, the base that gives the kernel-bound cell classes this
// __call__ as their type slot. Set as a Python class attribute instead (an instancemethod),
// the same function cost 0.04-0.11 us more per step, spent in CPython's generic __call__ slot
// (a method lookup, a bound-method object; RNNCell, B=1, H=16: 0.42-0.47 -> 0.36-0.38 us).
PyObject* cell_layer_tp_call(PyObject* self, PyObject* args, PyObject* kwargs) {
  static constexpr const char* names[] = {"x", "state"};
  PyObject* a[2] = {nullptr, Py_None};
  const Py_ssize_t nargs = PyTuple_GET_SIZE(args);
  PyObject* const* argv = &PyTuple_GET_ITEM(args, 0);
  if (!kwargs || PyDict_GET_SIZE(kwargs) == 0) {
    if (!parse_fastcall("__call__", names, 2, argv, nargs, nullptr, a)) return nullptr;
  } else {
    // keywords: the positional items, then the keyword values, named by a tuple of the keys
    std::vector<PyObject*> all(argv, argv + nargs);
    PyObject* kwnames = PyTuple_New(PyDict_GET_SIZE(kwargs));
    if (!kwnames) return nullptr;
    Py_ssize_t pos = 0, k = 0;
    PyObject *key, *value;
    while (PyDict_Next(kwargs, &pos, &key, &value)) {
      Py_INCREF(key);
      PyTuple_SET_ITEM(kwnames, k++, key);
      all.push_back(value);
    }
    const bool ok = parse_fastcall("__call__", names, 2, all.data(), nargs, kwnames, a);
    Py_DECREF(kwnames);
    if (!ok) return nullptr;
  }
  return guarded([&] { return cell_layer_call(self, a[0], a[1]); });
}

}  // namespace

void bind_recurrent(py::module_& m) {
  PyObject* cell = PyCFunction_NewEx(&cell_method_def, nullptr, m.attr("__name__").ptr());
  if (!cell) throw py::error_already_set();
  m.add_object("cell", py::reinterpret_steal<py::object>(cell));
  // A base class with no data of its own: fastrnn/__init__.py lists it after the shared cell
  // class and sets `__call__ = CellCall.__call__`, which makes this function the class's call
  // slot.
  static PyType_Slot cell_call_slots[] = {
      {Py_tp_call, reinterpret_cast<void*>(&cell_layer_tp_call)},
      {Py_tp_doc, const_cast<char*>("Base of the kernel-bound cells: __call__(self, x, state=None) in C.\n\n"
                                    "h_next, or (h_next, c_next) for LSTMCell: one inference step. x (B, I) is\n"
                                    "converted to the cell's dtype; state None (zeros), h (B, H), or (h, c) for\n"
                                    "LSTMCell.")},
      {0, nullptr}};
  unsigned int flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE;
#ifdef Py_TPFLAGS_DISALLOW_INSTANTIATION  // Python >= 3.10
  flags |= Py_TPFLAGS_DISALLOW_INSTANTIATION;
#endif
  static PyType_Spec cell_call_spec = {"fastrnn._core.CellCall", static_cast<int>(sizeof(PyObject)), 0, flags,
                                       cell_call_slots};
  PyObject* cell_call_type = PyType_FromSpec(&cell_call_spec);
  if (!cell_call_type) throw py::error_already_set();
#ifndef Py_TPFLAGS_DISALLOW_INSTANTIATION
  // what the flag does: CellCall() itself is refused; subclasses take object's __new__
  reinterpret_cast<PyTypeObject*>(cell_call_type)->tp_new = nullptr;
#endif
  m.add_object("CellCall", py::reinterpret_steal<py::object>(cell_call_type));

  py::class_<RecurrentCacheHandle>(m, "RecurrentCache", "Opaque training cache of a recurrent forward pass.")
      .def_property_readonly("mode", [](const RecurrentCacheHandle& c) { return static_cast<int>(c.shape.mode); })
      .def_property_readonly("shape", [](const RecurrentCacheHandle& c) {
        return py::make_tuple(c.shape.T, c.shape.B, c.shape.I, c.shape.H, c.shape.L, c.shape.D);
      })
      .def_property_readonly("dtype", [](const RecurrentCacheHandle& c) { return c.f64 ? "float64" : "float32"; })
      .def_property_readonly("has_bias", [](const RecurrentCacheHandle& c) { return c.has_bias; })
      .def_property_readonly("nbytes", &RecurrentCacheHandle::nbytes);

  m.def(
      "recurrent_forward",
      [](int mode, py::array x, py::sequence weights, py::object h0, py::object c0, py::object lengths,
         py::object masks, int64_t num_layers, int64_t num_directions, int64_t hidden_size, bool need_cache) {
        if (x.ndim() != 3) throw py::value_error("x: expected a 3-d array (T, B, I), got " + shape_str(shape_of(x)));
        if (num_layers < 1) throw py::value_error("num_layers: expected >= 1");
        if (num_directions != 1 && num_directions != 2) throw py::value_error("num_directions: expected 1 or 2");
        if (hidden_size < 1) throw py::value_error("hidden_size: expected >= 1");
        RecurrentShape s{to_mode(mode), x.shape(0), x.shape(1), x.shape(2), hidden_size, num_layers, num_directions};
        check_sizes(s);
        if (is_f32(x)) return forward_impl<float>(s, x, weights, h0, c0, lengths, masks, need_cache);
        if (is_f64(x)) return forward_impl<double>(s, x, weights, h0, c0, lengths, masks, need_cache);
        throw py::type_error("x: expected float32 or float64, got " + std::string(py::str(x.dtype())));
      },
      py::arg("mode"), py::arg("x"), py::arg("weights"), py::arg("h0"), py::arg("c0"), py::arg("lengths"),
      py::arg("dropout_masks"), py::arg("num_layers"), py::arg("num_directions"), py::arg("hidden_size"),
      py::arg("need_cache"),
      "Time-major multi-layer recurrent forward. Returns (y, h_n, c_n or None, cache or None).");

  m.def(
      "recurrent_backward",
      [](RecurrentCacheHandle& c, py::array x, py::sequence weights, py::object masks, py::array dy, py::object dhn,
         py::object dcn, py::sequence grads) {
        if (c.f64) return backward_impl<double>(*c.c64, c.shape, c.has_bias, x, weights, masks, dy, dhn, dcn, grads);
        return backward_impl<float>(*c.c32, c.shape, c.has_bias, x, weights, masks, dy, dhn, dcn, grads);
      },
      py::arg("cache"), py::arg("x"), py::arg("weights"), py::arg("dropout_masks"), py::arg("dy"), py::arg("dh_n"),
      py::arg("dc_n"), py::arg("grads"),
      "BPTT through a cached forward. Accumulates into grads; returns (dx, dh0, dc0 or None).");
}

}  // namespace fastrnn_py
