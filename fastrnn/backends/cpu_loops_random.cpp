// Bernoulli masks for the regularisers on the CPU: a counter-based draw (each element's bits
// a hash of its index and a seed), so that a mask is a single vectorised pass; torch's CPU
// generator draws one element at a time (about 7 ns each here), which cost more than the
// whole recurrence of a small layer. The seed is one 64-bit draw of torch's default CPU
// generator (as torch's own CPU kernels draw), so torch.manual_seed reproduces the masks.

#include <ATen/CPUGeneratorImpl.h>
#include <torch/csrc/autograd/functions/utils.h>

#include <mutex>

#include "cpu_loops.h"

namespace fastrnn_cpu {
namespace {

// A 32-bit integer hash with good avalanche (the "lowbias32" finaliser, C. Wellons).
inline uint32_t mix32(uint32_t x) {
  x ^= x >> 16;
  x *= 0x7feb352dU;
  x ^= x >> 15;
  x *= 0x846ca68bU;
  x ^= x >> 16;
  return x;
}

// The keys and threshold of one draw: element i is "below" when bits(i) < threshold, bits(i)
// uniform on 32 bits (P = threshold / 2^32).
struct Draw {
  uint32_t key_lo, key_hi;
  uint64_t threshold;  // 2^32 for p = 1

  Draw(uint64_t seed, double p) {
    TORCH_CHECK(p >= 0.0 && p <= 1.0, "fastrnn: a mask probability must be in [0, 1], got ", p);
    threshold = static_cast<uint64_t>(p * 4294967296.0);
    key_lo = mix32(static_cast<uint32_t>(seed) ^ 0x9e3779b9U);
    key_hi = mix32(static_cast<uint32_t>(seed >> 32) ^ 0x85ebca6bU);
  }

  // emit(i, below) for i in [begin, end). 32-bit arithmetic in the inner loop (it
  // vectorises); the index's high word is constant over each span of 2^32 elements.
  template <typename Emit>
  void each(int64_t begin, int64_t end, Emit emit) const {
    if (threshold >= (uint64_t(1) << 32)) {  // p = 1: every element is below
      for (int64_t i = begin; i < end; ++i) emit(i, true);
      return;
    }
    const uint32_t t = static_cast<uint32_t>(threshold);
    int64_t i = begin;
    while (i < end) {
      const uint64_t n = static_cast<uint64_t>(i);
      const uint32_t hi = mix32(static_cast<uint32_t>(n >> 32) ^ key_hi);
      const int64_t span_end = std::min<int64_t>(end, static_cast<int64_t>(((n >> 32) + 1) << 32));
      const uint32_t lo0 = static_cast<uint32_t>(n);
      const int64_t len = span_end - i;
      for (int64_t j = 0; j < len; ++j) emit(i + j, mix32(mix32((lo0 + static_cast<uint32_t>(j)) ^ key_lo) ^ hi) < t);
      i = span_end;
    }
  }

  // each() over [0, n), split over the threads above 2^16 elements.
  template <typename Emit>
  void all(int64_t n, Emit emit) const {
    at::parallel_for(0, n, 1 << 16, [&](int64_t b, int64_t e) { each(b, e, emit); });
  }
};

uint64_t draw_seed() {
  at::CPUGeneratorImpl* gen = at::get_generator_or_default<at::CPUGeneratorImpl>(
      std::nullopt, at::detail::getDefaultCPUGenerator());
  std::lock_guard<std::mutex> lock(gen->mutex_);
  return gen->random64();
}

// A (rows, cols) bool mask seeded by one draw of torch's generator: mask[i] = (element i is
// below p) != invert.
at::Tensor bernoulli_mask(int64_t rows, int64_t cols, double p, bool invert) {
  at::Tensor mask = at::empty({rows, cols}, at::TensorOptions().dtype(at::kBool));
  uint8_t* __restrict__ out = reinterpret_cast<uint8_t*>(mask.data_ptr<bool>());
  const uint8_t flip = invert ? 1 : 0;
  Draw(draw_seed(), p).all(rows * cols, [=](int64_t i, bool below) { out[i] = static_cast<uint8_t>(below) ^ flip; });
  return mask;
}

// Zoneout's masks of h and c, each drawn as bernoulli_mask draws it, h first (an empty
// tensor where the probability is 0, with nothing drawn).
std::vector<at::Tensor> zoneout_masks(int64_t rows, int64_t cols, double p_h, double p_c) {
  std::vector<at::Tensor> out;
  for (double p : {p_h, p_c})
    out.push_back(p > 0 ? bernoulli_mask(rows, cols, p, false) : at::empty({0}, at::TensorOptions().dtype(at::kBool)));
  return out;
}

// What a bool keep mask (a Bernoulli(1 - p) draw of `seed`) cast to `dtype` and multiplied
// by the Python float 1 / (1 - p) gives: the scale where kept, 0 elsewhere; times `w` when
// given (w * that scale, element by element, in one pass with the draw). float32 for the
// 16-bit dtypes, then converted (their w * scale goes through ATen's multiply).
template <typename T>
at::Tensor scaled_keep(int64_t rows, int64_t cols, uint64_t seed, double p, const T* __restrict__ w,
                       at::ScalarType dtype) {
  TORCH_CHECK(p < 1.0, "fastrnn: a dropout probability must be below 1, got ", p);
  at::Tensor out = at::empty({rows, cols}, at::TensorOptions().dtype(dtype));
  T* __restrict__ o = out.data_ptr<T>();
  const T scale = static_cast<T>(1.0 / (1.0 - p));
  const Draw draw(seed, p);
  if (w == nullptr)
    draw.all(rows * cols, [=](int64_t i, bool below) { o[i] = below ? T(0) : scale; });
  else
    draw.all(rows * cols, [=](int64_t i, bool below) { o[i] = w[i] * (below ? T(0) : scale); });
  return out;
}

at::Tensor seeded_keep_scale(int64_t rows, int64_t cols, uint64_t seed, double p, at::ScalarType dtype) {
  TORCH_CHECK(at::isFloatingType(dtype), "fastrnn: keep_scale needs a floating dtype, got ", dtype);
  if (dtype == at::kDouble) return scaled_keep<double>(rows, cols, seed, p, nullptr, dtype);
  at::Tensor out = scaled_keep<float>(rows, cols, seed, p, nullptr, at::kFloat);
  return dtype == at::kFloat ? out : out.to(dtype);
}

at::Tensor keep_scale(int64_t rows, int64_t cols, double p, at::ScalarType dtype) {
  return seeded_keep_scale(rows, cols, draw_seed(), p, dtype);
}

// w * keep_scale(seed), a 2-D w.
at::Tensor seeded_drop_connect(const at::Tensor& w, uint64_t seed, double p) {
  const int64_t rows = w.size(0), cols = w.size(1);
  const at::ScalarType dtype = w.scalar_type();
  if (dtype != at::kFloat && dtype != at::kDouble) return w * seeded_keep_scale(rows, cols, seed, p, dtype);
  const at::Tensor wc = w.contiguous();
  return AT_DISPATCH_FLOATING_TYPES(dtype, "fastrnn_drop_connect", [&] {
    return scaled_keep<scalar_t>(rows, cols, seed, p, wc.data_ptr<scalar_t>(), dtype);
  });
}

// DropConnect's autograd node: it keeps the mask's seed, not the mask, and redraws it; the
// gradient is a differentiable multiply where the incoming one has history (create_graph),
// so double backward stays exact.
struct DropConnectBackward : public torch::autograd::Node {
  DropConnectBackward(uint64_t seed, double p) : seed(seed), p(p) {}

  torch::autograd::variable_list apply(torch::autograd::variable_list&& grads) override {
    const at::Tensor& g = grads[0];
    if (!g.defined() || !should_compute_output(0)) return {at::Tensor()};
    if (!g.requires_grad()) {
      at::AutoDispatchBelowADInplaceOrView below;
      return {seeded_drop_connect(g, seed, p)};
    }
    return {g * seeded_keep_scale(g.size(0), g.size(1), seed, p, g.scalar_type())};
  }

  std::string name() const override { return "fastrnn::DropConnectBackward"; }

  uint64_t seed;
  double p;
};

// w * keep_scale(seed) for a fresh seed, in one pass, as one autograd node (with a
// forward-mode tangent, as ATen's multiply).
at::Tensor drop_connect(const at::Tensor& w, double p) {
  TORCH_CHECK(w.dim() == 2 && w.device().is_cpu(), "fastrnn: drop_connect takes a 2-D CPU weight, got ", w.sizes(),
              " on ", w.device());
  TORCH_CHECK(at::isFloatingType(w.scalar_type()), "fastrnn: drop_connect needs a floating weight, got ",
              w.scalar_type());
  const uint64_t seed = draw_seed();
  if (torch::autograd::isFwGradDefined(w))  // forward-mode AD: ATen's multiply carries the tangent
    return w * seeded_keep_scale(w.size(0), w.size(1), seed, p, w.scalar_type());
  at::Tensor out;
  {
    at::AutoDispatchBelowADInplaceOrView below;
    out = seeded_drop_connect(w, seed, p);
  }
  if (torch::autograd::compute_requires_grad(w)) {
    auto node = c10::make_intrusive<DropConnectBackward>(seed, p);
    node->set_next_edges(torch::autograd::collect_next_edges(w));
    torch::autograd::set_history(out, node);
  }
  return out;
}

}  // namespace

void bind_random(pybind11::module_& m) {
  m.def("bernoulli_mask", &bernoulli_mask, nogil);
  m.def("zoneout_masks", &zoneout_masks, nogil);
  m.def("keep_scale", &keep_scale, nogil);
  m.def("drop_connect", &drop_connect, nogil);
}
}  // namespace fastrnn_cpu

// The extension is a Python module of these functions, called directly (torch.ops' schema-
// driven call cost several microseconds more per call, a tenth of a small layer's).
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  fastrnn_cpu::bind_lstm(m);
  fastrnn_cpu::bind_gru_rnn(m);
  fastrnn_cpu::bind_norm(m);
  fastrnn_cpu::bind_random(m);
}
