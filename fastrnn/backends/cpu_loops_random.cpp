// Bernoulli masks for the regularisers on the CPU: a counter-based draw (each element's bits
// a hash of its index and a seed), so that a mask is a single vectorised pass; torch's CPU
// generator draws one element at a time (about 7 ns each here), which cost more than the
// whole recurrence of a small layer. The seed is one 64-bit draw of torch's default CPU
// generator (as torch's own CPU kernels draw), so torch.manual_seed reproduces the masks.

#include <ATen/CPUGeneratorImpl.h>

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

// mask[i] = (bits(i) < threshold) != invert, bits(i) uniform on 32 bits: P(bits < t) = t / 2^32.
// 32-bit arithmetic in the inner loop (it vectorises 8 wide); the index's high word is
// constant over each span of 2^32 elements.
void fill(uint8_t* __restrict__ out, int64_t begin, int64_t end, uint32_t key_lo, uint32_t key_hi, uint64_t threshold,
          bool invert) {
  if (threshold >= (uint64_t(1) << 32)) {  // p = 1
    std::fill(out + begin, out + end, static_cast<uint8_t>(!invert));
    return;
  }
  const uint32_t t = static_cast<uint32_t>(threshold);
  const uint8_t flip = invert ? 1 : 0;
  int64_t i = begin;
  while (i < end) {
    const uint64_t n = static_cast<uint64_t>(i);
    const uint32_t hi = mix32(static_cast<uint32_t>(n >> 32) ^ key_hi);
    const int64_t span_end = std::min<int64_t>(end, static_cast<int64_t>(((n >> 32) + 1) << 32));
    const uint32_t lo0 = static_cast<uint32_t>(n);
    const int64_t len = span_end - i;
    uint8_t* o = out + i;
    for (int64_t j = 0; j < len; ++j) {
      const uint32_t bits = mix32(mix32((lo0 + static_cast<uint32_t>(j)) ^ key_lo) ^ hi);
      o[j] = static_cast<uint8_t>(bits < t) ^ flip;
    }
    i = span_end;
  }
}

uint64_t draw_seed() {
  at::CPUGeneratorImpl* gen = at::get_generator_or_default<at::CPUGeneratorImpl>(
      std::nullopt, at::detail::getDefaultCPUGenerator());
  std::lock_guard<std::mutex> lock(gen->mutex_);
  return gen->random64();
}

// The (rows, cols) draw into bytes: out[i] = (element i is below p) != invert.
void draw(uint8_t* out, int64_t rows, int64_t cols, double p, bool invert) {
  TORCH_CHECK(p >= 0.0 && p <= 1.0, "fastrnn: a mask probability must be in [0, 1], got ", p);
  const uint64_t threshold = static_cast<uint64_t>(p * 4294967296.0);
  const uint64_t s = draw_seed();
  const uint32_t key_lo = mix32(static_cast<uint32_t>(s) ^ 0x9e3779b9U);
  const uint32_t key_hi = mix32(static_cast<uint32_t>(s >> 32) ^ 0x85ebca6bU);
  at::parallel_for(0, rows * cols, 1 << 16,
                   [&](int64_t b, int64_t e) { fill(out, b, e, key_lo, key_hi, threshold, invert); });
}

at::Tensor bernoulli_mask(int64_t rows, int64_t cols, double p, bool invert) {
  at::Tensor mask = at::empty({rows, cols}, at::TensorOptions().dtype(at::kBool));
  draw(reinterpret_cast<uint8_t*>(mask.data_ptr<bool>()), rows, cols, p, invert);
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

template <typename T>
void scale_bytes(const uint8_t* keep, T* out, int64_t n, T scale) {
  for (int64_t i = 0; i < n; ++i) out[i] = keep[i] ? scale : T(0);
}

// The kept entries' scale 1 / (1 - p) where a Bernoulli(1 - p) draw keeps, 0 elsewhere, in
// `dtype` (float32 for the other floating dtypes, then converted: what a bool mask cast to
// the dtype and multiplied by the Python float 1 / (1 - p) gives).
at::Tensor keep_scale(int64_t rows, int64_t cols, double p, at::ScalarType dtype) {
  TORCH_CHECK(p < 1.0, "fastrnn: a dropout probability must be below 1, got ", p);
  TORCH_CHECK(at::isFloatingType(dtype), "fastrnn: keep_scale needs a floating dtype, got ", dtype);
  std::vector<uint8_t> keep(static_cast<size_t>(rows * cols));
  draw(keep.data(), rows, cols, p, true);
  const double scale = 1.0 / (1.0 - p);
  const int64_t n = rows * cols;
  if (dtype == at::kDouble) {
    at::Tensor out = at::empty({rows, cols}, at::TensorOptions().dtype(at::kDouble));
    scale_bytes(keep.data(), out.data_ptr<double>(), n, scale);
    return out;
  }
  at::Tensor out = at::empty({rows, cols}, at::TensorOptions().dtype(at::kFloat));
  scale_bytes(keep.data(), out.data_ptr<float>(), n, static_cast<float>(scale));
  return dtype == at::kFloat ? out : out.to(dtype);
}

}  // namespace
}  // namespace fastrnn_cpu

// (no tensor argument to dispatch on: one kernel for every dispatch key)
TORCH_LIBRARY_FRAGMENT(fastrnn_cpu_loops, m) {
  m.def("bernoulli_mask(int rows, int cols, float p, bool invert) -> Tensor", &fastrnn_cpu::bernoulli_mask);
  m.def("zoneout_masks(int rows, int cols, float p_h, float p_c) -> Tensor[]", &fastrnn_cpu::zoneout_masks);
  m.def("keep_scale(int rows, int cols, float p, ScalarType dtype) -> Tensor", &fastrnn_cpu::keep_scale);
}
