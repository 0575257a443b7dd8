// Binding of the attention core: convert -> check -> release the GIL -> call -> wrap.
// One entry point per operation that switches on dtype (float32 / float64).
//
// SDPA arrays are taken as NumPy VIEWS (any strides, unit stride along the last axis): the
// binding turns the broadcast leading dims into per-batch element offsets, so broadcast
// operands and heads split out of a projection are read in place (see cpp/src/attention.h).
// Outputs are allocated here, C-contiguous, unless the caller passes views to write into
// (the MHA path does, to get heads merged into its (L, N, E) layout without a copy).
// A gradient whose operand is broadcast comes back at the full broadcast batch shape; the
// Python layer sums it down (python/fastrnn/functional/attention.py).
#include <fastrnn/fastrnn.h>

#include <climits>
#include <cmath>
#include <cstring>

#include "../src/attention.h"
#include "../src/gemm.h"
#include "common.h"

namespace fastrnn_py {

namespace {

namespace attn = fastrnn::attn;

// An ndarray seen as a batch of (rows, cols) matrices: shape/strides in elements.
struct View {
  py::array arr;
  std::string name;
  const void* data = nullptr;
  std::vector<int64_t> shape, strides;
  int64_t nlead() const { return static_cast<int64_t>(shape.size()) - 2; }
  int64_t rows() const { return shape[shape.size() - 2]; }
  int64_t cols() const { return shape.back(); }
  int64_t row_stride() const { return rows() > 1 ? strides[strides.size() - 2] : cols(); }
};

template <typename T>
View float_view(const py::object& obj, const std::string& name, int64_t min_ndim = 2) {
  View v;
  v.arr = as_array(obj, name.c_str());
  v.name = name;
  if (!has_dtype<T>(v.arr))
    throw py::type_error(name + ": expected dtype " + std::string(py::str(py::dtype::of<T>())) + ", got " +
                         std::string(py::str(v.arr.dtype())));
  if (v.arr.ndim() < min_ndim)
    throw py::value_error(name + ": expected at least " + std::to_string(min_ndim) + " dims, got shape " +
                          shape_str(shape_of(v.arr)));
  v.data = v.arr.data();
  v.shape = shape_of(v.arr);
  for (py::ssize_t i = 0; i < v.arr.ndim(); ++i) {
    const py::ssize_t s = v.arr.strides(i);
    if (s % static_cast<py::ssize_t>(sizeof(T)))
      throw py::value_error(name + ": strides must be multiples of the item size");
    v.strides.push_back(s / static_cast<py::ssize_t>(sizeof(T)));
  }
  if (product(v.shape) == 0) {  // nothing is read: NumPy's strides of empty arrays are arbitrary
    int64_t st = 1;
    for (size_t d = v.shape.size(); d-- > 0;) { v.strides[d] = st; st *= std::max<int64_t>(v.shape[d], 1); }
  }
  if (v.cols() > 1 && v.strides.back() != 1)
    throw py::value_error(name + ": expected unit stride along the last axis");
  return v;
}

// Broadcast of the leading dims of `views` (NumPy rules).
std::vector<int64_t> broadcast_lead(const std::vector<const View*>& views) {
  int64_t nd = 0;
  for (auto* v : views) nd = std::max(nd, v->nlead());
  std::vector<int64_t> batch(static_cast<size_t>(nd), 1);
  for (auto* v : views) {
    const int64_t shift = nd - v->nlead();
    for (int64_t d = 0; d < v->nlead(); ++d) {
      const int64_t n = v->shape[d];
      int64_t& b = batch[shift + d];
      if (n == b || n == 1) continue;
      if (b == 1) { b = n; continue; }
      throw py::value_error(v->name + ": leading dims " + shape_str(shape_of(v->arr)) +
                            " do not broadcast with the other operands'");
    }
  }
  return batch;
}

// Element offsets of every flat batch index for an array whose dims `first..first+nlead-1`
// broadcast (aligned right) against `batch`.
std::vector<int64_t> batch_offsets(const std::vector<int64_t>& shape, const std::vector<int64_t>& strides,
                                   int64_t nlead, const std::vector<int64_t>& batch, const std::string& name) {
  const int64_t nd = static_cast<int64_t>(batch.size());
  if (nlead > nd) throw py::value_error(name + ": more leading dims than the broadcast batch shape");
  std::vector<int64_t> st(static_cast<size_t>(nd), 0);
  for (int64_t d = 0; d < nlead; ++d) {
    const int64_t bd = nd - nlead + d;
    if (shape[d] == batch[bd]) st[bd] = batch[bd] > 1 ? strides[d] : 0;
    else if (shape[d] == 1) st[bd] = 0;
    else
      throw py::value_error(name + ": shape " + shape_str(shape) + " does not broadcast to the batch shape " +
                            shape_str(batch));
  }
  const int64_t n = product(batch);
  std::vector<int64_t> off(static_cast<size_t>(std::max<int64_t>(n, 1)), 0);
  std::vector<int64_t> idx(static_cast<size_t>(nd), 0);
  int64_t cur = 0;
  for (int64_t b = 0; b < n; ++b) {
    off[b] = cur;
    for (int64_t d = nd - 1; d >= 0; --d) {  // odometer increment
      if (++idx[d] < batch[d]) { cur += st[d]; break; }
      cur -= st[d] * (batch[d] - 1);
      idx[d] = 0;
    }
  }
  return off;
}

std::vector<int64_t> with_tail(std::vector<int64_t> s, std::initializer_list<int64_t> tail) {
  s.insert(s.end(), tail.begin(), tail.end());
  return s;
}

void check_size(const std::vector<int64_t>& shape, const std::string& name) {
  long double n = 1;
  for (int64_t d : shape) n *= static_cast<long double>(d);
  if (n * 8 > static_cast<long double>(INT64_MAX / 4))
    throw py::value_error(name + ": problem too large (" + shape_str(shape) + ")");
}

template <typename T>
struct Batched {  // a View plus its offsets
  View v;
  std::vector<int64_t> off;
  attn::MatBatch<T> mat() const { return {static_cast<const T*>(v.data), off.data(), v.row_stride()}; }
  attn::MutMatBatch<T> mut() const {
    return {const_cast<T*>(static_cast<const T*>(v.data)), off.data(), v.row_stride()};
  }
};

template <typename T>
Batched<T> batched(View v, const std::vector<int64_t>& batch) {
  Batched<T> b;
  b.off = batch_offsets(v.shape, v.strides, v.nlead(), batch, v.name);
  b.v = std::move(v);
  return b;
}

// An output: allocated here (C-contiguous batch + (rows, cols)) or the caller's view of that shape.
template <typename T>
Batched<T> output(const py::object& given, const std::string& name, const std::vector<int64_t>& batch, int64_t rows,
                  int64_t cols) {
  const auto shape = with_tail(batch, {rows, cols});
  if (given.is_none()) {
    check_size(shape, name);
    return batched<T>(float_view<T>(new_array<T>(shape), name), batch);
  }
  View v = float_view<T>(given, name);
  if (v.shape != shape)
    throw py::value_error(name + ": expected shape " + shape_str(shape) + ", got " + shape_str(v.shape));
  if (!v.arr.writeable()) throw py::value_error(name + ": expected a writeable array");
  for (size_t d = 0; d + 1 < v.shape.size(); ++d)
    if (v.shape[d] > 1 && v.strides[d] == 0) throw py::value_error(name + ": expected a non-overlapping view");
  return batched<T>(std::move(v), batch);
}

// Masks: a list of up to two (mask, allows) pairs; mask bool or float (T), broadcastable to
// batch + (Lq, S).
struct MaskHold {
  py::array arr;
  std::vector<int64_t> off;
};

template <typename T>
void get_masks(const py::sequence& masks, const std::vector<int64_t>& batch, int64_t Lq, int64_t S,
               std::vector<MaskHold>& hold, attn::SdpaProblem<T>& p) {
  if (py::len(masks) > 2) throw py::value_error("masks: at most two masks");
  hold.resize(py::len(masks));
  for (size_t i = 0; i < py::len(masks); ++i) {
    py::tuple t = py::reinterpret_borrow<py::tuple>(masks[i]);
    if (py::len(t) != 2) throw py::value_error("masks: expected (mask, allows) pairs");
    const std::string name = i == 0 ? "attn_mask" : "key_padding_mask";
    py::array m = as_array(t[0], name.c_str());
    const bool allows = t[1].cast<bool>();
    const bool is_bool = has_dtype<bool>(m);
    if (!is_bool && !has_dtype<T>(m))
      throw py::type_error(name + ": expected a bool or " + std::string(py::str(py::dtype::of<T>())) + " mask, got " +
                           std::string(py::str(m.dtype())));
    const int64_t isz = is_bool ? 1 : static_cast<int64_t>(sizeof(T));
    std::vector<int64_t> shape = shape_of(m), strides;
    for (py::ssize_t d = 0; d < m.ndim(); ++d) {
      if (m.strides(d) % isz) throw py::value_error(name + ": strides must be multiples of the item size");
      strides.push_back(m.strides(d) / isz);
    }
    // pad to >= 2 dims (a (S,) mask is (1, S))
    while (shape.size() < 2) { shape.insert(shape.begin(), 1); strides.insert(strides.begin(), 0); }
    const int64_t r = shape[shape.size() - 2], c = shape.back();
    if ((r != Lq && r != 1) || (c != S && c != 1))
      throw py::value_error(name + ": expected a shape broadcastable to " + shape_str(with_tail(batch, {Lq, S})) +
                            ", got " + shape_str(shape_of(m)));
    auto& h = hold[i];
    h.arr = m;
    h.off = batch_offsets(shape, strides, static_cast<int64_t>(shape.size()) - 2, batch, name);
    attn::MaskBatch<T>& mb = p.mask[i];
    if (is_bool) mb.flag = static_cast<const uint8_t*>(m.data());
    else mb.add = static_cast<const T*>(m.data());
    mb.flag_allows = allows;
    mb.off = h.off.data();
    mb.ld_row = r == 1 ? 0 : strides[strides.size() - 2];
    mb.ld_col = c == 1 ? 0 : strides.back();
  }
}

// q, k, v (views), masks, flags -> the problem (offsets held in `keep`).
template <typename T>
struct SdpaSetup {
  Batched<T> q, k, v;
  std::vector<int64_t> batch;
  std::vector<MaskHold> masks;
  attn::SdpaProblem<T> p;
};

template <typename T>
void setup(SdpaSetup<T>& s, const py::object& q, const py::object& k, const py::object& v, const py::sequence& masks,
           bool causal, double scale) {
  View qv = float_view<T>(q, "q"), kv = float_view<T>(k, "k");
  View vv = v.is_none() ? kv : float_view<T>(v, "v");  // weights: no v
  if (kv.cols() != qv.cols())
    throw py::value_error("k: expected shape (..., S, " + std::to_string(qv.cols()) + "), got " + shape_str(kv.shape));
  if (vv.rows() != kv.rows())
    throw py::value_error("v: expected shape (..., " + std::to_string(kv.rows()) + ", Ev), got " + shape_str(vv.shape));
  if (!std::isfinite(scale)) throw py::value_error("scale: expected a finite number");
  s.batch = broadcast_lead({&qv, &kv, &vv});
  check_size(with_tail(s.batch, {qv.rows(), kv.rows()}), "q");
  s.q = batched<T>(std::move(qv), s.batch);
  s.k = batched<T>(std::move(kv), s.batch);
  s.v = batched<T>(std::move(vv), s.batch);
  auto& p = s.p;
  p.nbatch = product(s.batch);
  p.Lq = s.q.v.rows();
  p.S = s.k.v.rows();
  p.E = s.q.v.cols();
  p.Ev = s.v.v.cols();
  p.scale = static_cast<T>(scale);
  p.causal = causal;
  p.q = s.q.mat();
  p.k = s.k.mat();
  p.v = s.v.mat();
  p.threads = fastrnn::num_threads();
  get_masks<T>(masks, s.batch, p.Lq, p.S, s.masks, p);
}

template <typename T>
py::tuple sdpa_forward_impl(const py::object& q, const py::object& k, const py::object& v, const py::sequence& masks,
                            bool causal, double scale, bool need_lse, const py::object& out) {
  SdpaSetup<T> s;
  setup<T>(s, q, k, v, masks, causal, scale);
  const auto& p = s.p;
  Batched<T> o = output<T>(out, "out", s.batch, p.Lq, p.Ev);
  py::object lse_obj = py::none();
  T* lse = nullptr;
  if (need_lse) {
    auto a = new_array<T>(with_tail(s.batch, {p.Lq}));
    lse = a.mutable_data();
    lse_obj = a;
  }
  {
    py::gil_scoped_release nogil;
    attn::sdpa_forward<T>(p, o.mut(), lse);
  }
  return py::make_tuple(o.v.arr, lse_obj);
}

template <typename T>
py::tuple sdpa_backward_impl(const py::object& q, const py::object& k, const py::object& v, const py::sequence& masks,
                             bool causal, double scale, const py::object& out, const py::object& lse,
                             const py::object& dout, const py::object& dq, const py::object& dk,
                             const py::object& dv) {
  SdpaSetup<T> s;
  setup<T>(s, q, k, v, masks, causal, scale);
  const auto& p = s.p;
  const auto oshape = with_tail(s.batch, {p.Lq, p.Ev});
  Batched<T> o = batched<T>(float_view<T>(out, "out"), s.batch);
  Batched<T> g = batched<T>(float_view<T>(dout, "dout"), s.batch);
  if (o.v.shape != oshape) throw py::value_error("out: expected shape " + shape_str(oshape) + ", got " + shape_str(o.v.shape));
  if (g.v.shape != oshape) throw py::value_error("dout: expected shape " + shape_str(oshape) + ", got " + shape_str(g.v.shape));
  const T* lse_p = checked<T>(as_array(lse, "lse"), "lse", with_tail(s.batch, {p.Lq}));
  Batched<T> gq = output<T>(dq, "dq", s.batch, p.Lq, p.E);
  Batched<T> gk = output<T>(dk, "dk", s.batch, p.S, p.E);
  Batched<T> gv = output<T>(dv, "dv", s.batch, p.S, p.Ev);
  {
    py::gil_scoped_release nogil;
    attn::sdpa_backward<T>(p, o.mat(), lse_p, g.mat(), gq.mut(), gk.mut(), gv.mut());
  }
  return py::make_tuple(gq.v.arr, gk.v.arr, gv.v.arr);
}

template <typename T>
py::array sdpa_weights_impl(const py::object& q, const py::object& k, const py::sequence& masks, bool causal,
                            double scale, const py::object& lse, bool average_last) {
  SdpaSetup<T> s;
  setup<T>(s, q, k, py::none(), masks, causal, scale);
  const auto& p = s.p;
  const T* lse_p = checked<T>(as_array(lse, "lse"), "lse", with_tail(s.batch, {p.Lq}));
  std::vector<int64_t> wb = s.batch;
  int64_t group = 1;
  if (average_last) {
    if (wb.empty()) throw py::value_error("average_attn_weights: needs a heads dim");
    group = wb.back();
    wb.pop_back();
  }
  const auto wshape = with_tail(wb, {p.Lq, p.S});
  check_size(wshape, "weights");
  auto w = new_array<T>(wshape);
  T* wp = w.mutable_data();
  {
    py::gil_scoped_release nogil;
    std::memset(wp, 0, sizeof(T) * static_cast<size_t>(product(wshape)));
    if (group > 0) attn::sdpa_weights<T>(p, lse_p, wp, group);
  }
  return w;
}

// ---- additive

template <typename T>
attn::AdditiveArgs<T> additive_args(const py::array& query, const py::array& keys, const py::array& W_q,
                                    const py::array& W_k, const py::array& v, const py::object& b,
                                    const py::object& mask, const py::object& keys_proj, py::array& mask_keep,
                                    py::array& kp_keep) {
  if (query.ndim() != 2) throw py::value_error("query: expected shape (B, Q), got " + shape_str(shape_of(query)));
  if (keys.ndim() != 3) throw py::value_error("keys: expected shape (B, S, K), got " + shape_str(shape_of(keys)));
  if (W_q.ndim() != 2) throw py::value_error("W_q: expected shape (H, Q), got " + shape_str(shape_of(W_q)));
  attn::AdditiveArgs<T> a;
  a.B = query.shape(0);
  a.Q = query.shape(1);
  a.S = keys.shape(1);
  a.K = keys.shape(2);
  a.H = W_q.shape(0);
  check_size({a.B, a.S, std::max(a.H, a.K)}, "keys");
  a.query = checked<T>(query, "query", {a.B, a.Q});
  a.keys = checked<T>(keys, "keys", {a.B, a.S, a.K});
  a.W_q = checked<T>(W_q, "W_q", {a.H, a.Q});
  a.W_k = checked<T>(W_k, "W_k", {a.H, a.K});
  a.v = checked<T>(v, "v", {a.H});
  if (!b.is_none()) a.b = checked<T>(as_array(b, "b"), "b", {a.H});
  if (!mask.is_none()) {
    mask_keep = as_array(mask, "mask");
    a.mask = reinterpret_cast<const uint8_t*>(checked<bool>(mask_keep, "mask", {a.B, a.S}));
  }
  if (!keys_proj.is_none()) {
    kp_keep = as_array(keys_proj, "keys_proj");
    a.keys_proj = checked<T>(kp_keep, "keys_proj", {a.B, a.S, a.H});
  }
  a.threads = fastrnn::num_threads();
  return a;
}

template <typename T>
py::tuple additive_forward_impl(const py::array& query, const py::array& keys, const py::array& W_q,
                                const py::array& W_k, const py::array& b, const py::array& v, const py::object& mask,
                                const py::object& keys_proj, bool need_t) {
  py::array mk, kp;
  auto a = additive_args<T>(query, keys, W_q, W_k, v, b, mask, keys_proj, mk, kp);
  auto ctx = new_array<T>({a.B, a.K});
  auto w = new_array<T>({a.B, a.S});
  py::object t_obj = py::none();
  T* t = nullptr;
  if (need_t) {
    auto ta = new_array<T>({a.B, a.S, a.H});
    t = ta.mutable_data();
    t_obj = ta;
  }
  T* cp = ctx.mutable_data();
  T* wp = w.mutable_data();
  {
    py::gil_scoped_release nogil;
    attn::additive_forward<T>(a, cp, wp, t);
  }
  return py::make_tuple(ctx, w, t_obj);
}

template <typename T>
py::tuple additive_backward_impl(const py::array& query, const py::array& keys, const py::array& W_q,
                                 const py::array& W_k, const py::array& v, const py::array& t,
                                 const py::array& weights, const py::array& dcontext, const py::array& dW_q,
                                 const py::array& dW_k, const py::array& db, const py::array& dv) {
  py::array mk, kp;
  auto a = additive_args<T>(query, keys, W_q, W_k, v, py::none(), py::none(), py::none(), mk, kp);
  const T* tp = checked<T>(t, "t", {a.B, a.S, a.H});
  const T* wp = checked<T>(weights, "weights", {a.B, a.S});
  const T* gp = checked<T>(dcontext, "dcontext", {a.B, a.K});
  T* gWq = checked_mutable<T>(dW_q, "grads[0] (dW_q)", {a.H, a.Q});
  T* gWk = checked_mutable<T>(dW_k, "grads[1] (dW_k)", {a.H, a.K});
  T* gb = checked_mutable<T>(db, "grads[2] (db)", {a.H});
  T* gv = checked_mutable<T>(dv, "grads[3] (dv)", {a.H});
  auto dquery = new_array<T>({a.B, a.Q});
  auto dkeys = new_array<T>({a.B, a.S, a.K});
  T* dqp = dquery.mutable_data();
  T* dkp = dkeys.mutable_data();
  {
    py::gil_scoped_release nogil;
    attn::additive_backward<T>(a, tp, wp, gp, dqp, dkp, gWq, gWk, gb, gv);
  }
  return py::make_tuple(dquery, dkeys);
}

// ---- gemm: out = alpha * op(a) op(b) + beta * out, 2-d views with unit column stride.

template <typename T>
py::array gemm_impl(const py::object& a, const py::object& b, bool ta, bool tb, double alpha, double beta,
                    const py::object& out) {
  View av = float_view<T>(a, "a"), bv = float_view<T>(b, "b");
  if (av.shape.size() != 2 || bv.shape.size() != 2) throw py::value_error("a, b: expected 2-d arrays");
  const int64_t M = ta ? av.cols() : av.rows(), K = ta ? av.rows() : av.cols();
  const int64_t Kb = tb ? bv.cols() : bv.rows(), N = tb ? bv.rows() : bv.cols();
  if (K != Kb) throw py::value_error("b: inner dimensions differ: " + shape_str(av.shape) + " x " + shape_str(bv.shape));
  for (int64_t d : {M, N, K})
    if (d > fastrnn::kMaxBlasDim) throw py::value_error("a: dimension too large for the BLAS");
  View cv;
  if (out.is_none()) {
    if (beta != 0.0) throw py::value_error("out: beta != 0 needs an output to accumulate into");
    cv = float_view<T>(new_array<T>({M, N}), "out");
  } else {
    cv = float_view<T>(out, "out");
    if (cv.shape != std::vector<int64_t>{M, N})
      throw py::value_error("out: expected shape " + shape_str({M, N}) + ", got " + shape_str(cv.shape));
    if (!cv.arr.writeable()) throw py::value_error("out: expected a writeable array");
  }
  auto ld = [](const View& v) {
    const int64_t ld = v.rows() > 1 ? v.strides[0] : std::max<int64_t>(v.cols(), 1);
    if (ld < std::max<int64_t>(v.cols(), 1) || ld > fastrnn::kMaxBlasDim)
      throw py::value_error(v.name + ": rows must not overlap (row stride >= columns)");
    return ld;
  };
  const int64_t lda = ld(av), ldb = ld(bv), ldc = ld(cv);
  const T* pa = static_cast<const T*>(av.data);
  const T* pb = static_cast<const T*>(bv.data);
  T* pc = const_cast<T*>(static_cast<const T*>(cv.data));
  {
    py::gil_scoped_release nogil;
    fastrnn::gemm<T>(ta, tb, M, N, K, static_cast<T>(alpha), pa, lda, pb, ldb, static_cast<T>(beta), pc, ldc);
  }
  return cv.arr;
}

bool f64_of(const py::object& o, const char* name) {
  py::array a = as_array(o, name);
  if (is_f64(a)) return true;
  if (is_f32(a)) return false;
  throw py::type_error(std::string(name) + ": expected float32 or float64, got " + std::string(py::str(a.dtype())));
}

}  // namespace

void bind_attention(py::module_& m) {
  m.def(
      "sdpa_forward",
      [](py::object q, py::object k, py::object v, py::sequence masks, bool causal, double scale, bool need_lse,
         py::object out) {
        if (f64_of(q, "q")) return sdpa_forward_impl<double>(q, k, v, masks, causal, scale, need_lse, out);
        return sdpa_forward_impl<float>(q, k, v, masks, causal, scale, need_lse, out);
      },
      py::arg("q"), py::arg("k"), py::arg("v"), py::arg("masks"), py::arg("causal"), py::arg("scale"),
      py::arg("need_lse"), py::arg("out") = py::none(),
      "Scaled dot-product attention forward on strided views with broadcast leading dims.\n"
      "masks: list of up to two (mask, allows) pairs (bool: nonzero = may attend iff allows; float: added).\n"
      "Returns (out (batch..., Lq, Ev), lse (batch..., Lq) or None).");
  m.def(
      "sdpa_backward",
      [](py::object q, py::object k, py::object v, py::sequence masks, bool causal, double scale, py::object out,
         py::object lse, py::object dout, py::object dq, py::object dk, py::object dv) {
        if (f64_of(q, "q")) return sdpa_backward_impl<double>(q, k, v, masks, causal, scale, out, lse, dout, dq, dk, dv);
        return sdpa_backward_impl<float>(q, k, v, masks, causal, scale, out, lse, dout, dq, dk, dv);
      },
      py::arg("q"), py::arg("k"), py::arg("v"), py::arg("masks"), py::arg("causal"), py::arg("scale"), py::arg("out"),
      py::arg("lse"), py::arg("dout"), py::arg("dq") = py::none(), py::arg("dk") = py::none(),
      py::arg("dv") = py::none(),
      "SDPA backward from forward's out and lse. Returns (dq, dk, dv) at the broadcast batch shape.");
  m.def(
      "sdpa_weights",
      [](py::object q, py::object k, py::sequence masks, bool causal, double scale, py::object lse, bool average_last) {
        if (f64_of(q, "q")) return sdpa_weights_impl<double>(q, k, masks, causal, scale, lse, average_last);
        return sdpa_weights_impl<float>(q, k, masks, causal, scale, lse, average_last);
      },
      py::arg("q"), py::arg("k"), py::arg("masks"), py::arg("causal"), py::arg("scale"), py::arg("lse"),
      py::arg("average_last"),
      "Attention weights (batch..., Lq, S) from forward's lse; average_last averages the last batch dim.");
  m.def(
      "additive_forward",
      [](py::array query, py::array keys, py::array W_q, py::array W_k, py::array b, py::array v, py::object mask,
         py::object keys_proj, bool need_t) {
        if (f64_of(query, "query"))
          return additive_forward_impl<double>(query, keys, W_q, W_k, b, v, mask, keys_proj, need_t);
        return additive_forward_impl<float>(query, keys, W_q, W_k, b, v, mask, keys_proj, need_t);
      },
      py::arg("query"), py::arg("keys"), py::arg("W_q"), py::arg("W_k"), py::arg("b"), py::arg("v"), py::arg("mask"),
      py::arg("keys_proj"), py::arg("need_t"),
      "Additive attention forward (C-contiguous inputs). Returns (context, weights, t or None).");
  m.def(
      "additive_backward",
      [](py::array query, py::array keys, py::array W_q, py::array W_k, py::array v, py::array t, py::array weights,
         py::array dcontext, py::array dW_q, py::array dW_k, py::array db, py::array dv) {
        if (f64_of(query, "query"))
          return additive_backward_impl<double>(query, keys, W_q, W_k, v, t, weights, dcontext, dW_q, dW_k, db, dv);
        return additive_backward_impl<float>(query, keys, W_q, W_k, v, t, weights, dcontext, dW_q, dW_k, db, dv);
      },
      py::arg("query"), py::arg("keys"), py::arg("W_q"), py::arg("W_k"), py::arg("v"), py::arg("t"),
      py::arg("weights"), py::arg("dcontext"), py::arg("dW_q"), py::arg("dW_k"), py::arg("db"), py::arg("dv"),
      "Additive attention backward: returns (dquery, dkeys); adds into dW_q, dW_k, db, dv.");
  m.def(
      "gemm",
      [](py::object a, py::object b, bool trans_a, bool trans_b, double alpha, double beta, py::object out) {
        if (f64_of(a, "a")) return gemm_impl<double>(a, b, trans_a, trans_b, alpha, beta, out);
        return gemm_impl<float>(a, b, trans_a, trans_b, alpha, beta, out);
      },
      py::arg("a"), py::arg("b"), py::arg("trans_a") = false, py::arg("trans_b") = false, py::arg("alpha") = 1.0,
      py::arg("beta") = 0.0, py::arg("out") = py::none(),
      "out = alpha * op(a) @ op(b) + beta * out with the bundled BLAS (2-d views, unit column stride).");
}

}  // namespace fastrnn_py
