// Shared by the C++ CPU loops (cpu_loops_lstm.cpp, cpu_loops_gru_rnn.cpp): the float
// math, the extras a call may have, zoneout's blend and split, the small GEMM.
// Built at first use by fastrnn/backends/cpu_loops.py, which documents the interface.
//
// State model (fastrnn/backends/base.py): one state buffer of B rows; step t reads and
// rewrites rows [0, sizes[t]); the rows of a step are xg rows [offsets[t], offsets[t] + sizes[t]).

#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>
#include <torch/python.h>

#include <algorithm>
#include <atomic>
#include <limits>
#include <type_traits>
#include <utility>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace fastrnn_cpu {

// exp for float as a range reduction and a degree-6 polynomial (the Cephes expf
// coefficients, about 1 ulp), written so that the compiler vectorises the loops it sits
// in; the clamp keeps 2^n a normal float.
inline float exp_f(float x) {
  x = x < -87.3f ? -87.3f : (x > 88.3f ? 88.3f : x);
  float n = __builtin_floorf(x * 1.44269504088896341f + 0.5f);
  float r = x - n * 0.693359375f + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.f;
  int32_t bits = ((int32_t)n + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

inline float sigmoid_f(float x) { return 1.f / (1.f + exp_f(-x)); }

// tanh: an odd polynomial near 0 (Cephes tanhf), 1 - 2 / (exp(2|x|) + 1) elsewhere.
inline float tanh_f(float x) {
  float ax = x < 0.f ? -x : x;
  float z = x * x;
  float near0 = x + x * z *
      ((((-5.70498872745e-3f * z + 2.06390887954e-2f) * z - 5.37397155531e-2f) * z + 1.33314422036e-1f) * z -
       3.33332819422e-1f);
  float far = 1.f - 2.f / (exp_f(2.f * ax) + 1.f);
  far = x < 0.f ? -far : far;
  return ax < 0.625f ? near0 : far;
}

// double keeps libm's functions: fp64 is what gradcheck runs.
inline float sig(float x) { return sigmoid_f(x); }
inline float th(float x) { return tanh_f(x); }
inline double sig(double x) { return 1.0 / (1.0 + std::exp(-x)); }
inline double th(double x) { return std::tanh(x); }

// What a call has besides the LSTM's own inputs; a null pointer is "not given".
template <typename T>
struct Extras {
  const T* w_ci = nullptr;  // peepholes (H each)
  const T* w_cf = nullptr;
  const T* w_co = nullptr;
  const bool* resets = nullptr;  // (N,) the state entering the row's step is zero
  const bool* mask_h = nullptr;  // (N, H) zoneout masks (training)
  const bool* mask_c = nullptr;
  T p_h = 0, p_c = 0;             // zoneout probabilities (eval, without masks)
  bool zoned_h = false, zoned_c = false;
  const T* rscale = nullptr;      // (B, H) recurrent-dropout scale
};

template <typename T>
Extras<T> extras_of(const c10::optional<at::Tensor>& params, const c10::optional<at::Tensor>& resets,
                    const c10::optional<at::Tensor>& mask_h, double p_h, const c10::optional<at::Tensor>& mask_c,
                    double p_c, const c10::optional<at::Tensor>& rscale) {
  Extras<T> e;
  if (params.has_value()) {
    const T* p = params->data_ptr<T>();
    int64_t H = params->size(1);
    e.w_ci = p;
    e.w_cf = p + H;
    e.w_co = p + 2 * H;
  }
  if (resets.has_value()) e.resets = resets->data_ptr<bool>();
  if (mask_h.has_value()) e.mask_h = mask_h->data_ptr<bool>();
  if (mask_c.has_value()) e.mask_c = mask_c->data_ptr<bool>();
  e.p_h = static_cast<T>(p_h);
  e.p_c = static_cast<T>(p_c);
  e.zoned_h = e.mask_h != nullptr || p_h > 0;
  e.zoned_c = e.mask_c != nullptr || p_c > 0;
  if (rscale.has_value()) e.rscale = rscale->data_ptr<T>();
  return e;
}

// Zoneout's blend of one row: `mask ? prev : new` in training, `new + p (prev - new)` in eval.
template <typename T>
void blend(T* __restrict__ out, const T* __restrict__ prev, const T* __restrict__ fresh, const bool* __restrict__ mask,
           T p, int64_t H) {
  if (mask != nullptr) {
    const uint8_t* m = reinterpret_cast<const uint8_t*>(mask);  // (as bytes: the loop vectorises)
    for (int64_t j = 0; j < H; ++j) out[j] = m[j] ? prev[j] : fresh[j];
  } else {
    for (int64_t j = 0; j < H; ++j) out[j] = fresh[j] + p * (prev[j] - fresh[j]);
  }
}

// The gradient of a zoned-out state split into the cell's part and the entering state's part.
template <typename T>
void split(T* __restrict__ cell, T* __restrict__ kept, const T* __restrict__ grad, const bool* __restrict__ mask, T p,
           int64_t H) {
  if (mask != nullptr) {
    const uint8_t* m = reinterpret_cast<const uint8_t*>(mask);
    for (int64_t j = 0; j < H; ++j) {
      const T g = grad[j];
      const bool keep = m[j] != 0;
      cell[j] = keep ? T(0) : g;
      kept[j] = keep ? g : T(0);
    }
  } else {
    for (int64_t j = 0; j < H; ++j) {
      cell[j] = grad[j] * (T(1) - p);
      kept[j] = grad[j] * p;
    }
  }
}

// Small products in plain loops: ATen's GEMM costs a few microseconds to dispatch and to
// wake its threads, more than the whole product at B = 1, H = 128. Above this many
// multiply-adds per step ATen's (threaded, blocked) GEMM runs instead.
constexpr int64_t kSmallGemm = 1 << 17;

// out (rows, n) += a (rows, k) @ b (k, n), all row-major and contiguous, in an axpy form
// the compiler vectorises: four rows of b at a time (which stay in L1 while every output
// row takes them), added to each output row. Double (what gradcheck runs); float has the
// register-tiled overload below.
template <typename T>
void small_gemm(T* __restrict__ out, const T* __restrict__ a, const T* __restrict__ b, int64_t rows, int64_t k,
                int64_t n) {
  int64_t q = 0;
  for (; q + 4 <= k; q += 4) {
    const T* b0 = b + q * n;
    const T* b1 = b0 + n;
    const T* b2 = b1 + n;
    const T* b3 = b2 + n;
    for (int64_t i = 0; i < rows; ++i) {
      const T* ai = a + i * k + q;
      const T a0 = ai[0], a1 = ai[1], a2 = ai[2], a3 = ai[3];
      T* o = out + i * n;
      for (int64_t j = 0; j < n; ++j) o[j] += a0 * b0[j] + a1 * b1[j] + a2 * b2[j] + a3 * b3[j];
    }
  }
  for (; q < k; ++q) {
    const T* bq = b + q * n;
    for (int64_t i = 0; i < rows; ++i) {
      const T aq = a[i * k + q];
      T* o = out + i * n;
      for (int64_t j = 0; j < n; ++j) o[j] += aq * bq[j];
    }
  }
}

// The float product in registers: a tile of R output rows by V vectors of 16 columns is
// accumulated over the whole of k and stored once (the axpy form above loads and stores
// every output row once per four rows of b, which bounds it by loads). GCC's vector
// extensions: one AVX-512 register per vector where the build has them, two AVX2 ones
// otherwise. R * V accumulators and V rows of b stay in the 32 vector registers.
typedef float vec16 __attribute__((vector_size(64)));
typedef float vec16u __attribute__((vector_size(64), aligned(4)));  // (unaligned loads and stores)

template <int R, int V>
inline void gemm_tile(float* __restrict__ out, const float* __restrict__ a, const float* __restrict__ b, int64_t k,
                      int64_t n) {
  // Fewer than four rows: two banks of accumulators (even and odd q), so that enough
  // independent FMA chains are in flight to hide the FMA's latency.
  constexpr int S = R < 4 ? 2 : 1;
  vec16 acc[S][R][V];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int v = 0; v < V; ++v) {
      acc[0][r][v] = *reinterpret_cast<const vec16u*>(out + r * n + 16 * v);
      if constexpr (S == 2) acc[S - 1][r][v] = vec16{};
    }
  int64_t q = 0;
  for (; q + S <= k; q += S) {
#pragma GCC unroll 2
    for (int s = 0; s < S; ++s) {
      vec16 bv[V];
#pragma GCC unroll 8
      for (int v = 0; v < V; ++v) bv[v] = *reinterpret_cast<const vec16u*>(b + (q + s) * n + 16 * v);
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        const float x = a[r * k + q + s];
#pragma GCC unroll 8
        for (int v = 0; v < V; ++v) acc[s][r][v] += x * bv[v];
      }
    }
  }
  for (; q < k; ++q) {
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const float x = a[r * k + q];
#pragma GCC unroll 8
      for (int v = 0; v < V; ++v) acc[0][r][v] += x * *reinterpret_cast<const vec16u*>(b + q * n + 16 * v);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int v = 0; v < V; ++v) {
      vec16 sum = acc[0][r][v];
      if constexpr (S == 2) sum += acc[S - 1][r][v];
      *reinterpret_cast<vec16u*>(out + r * n + 16 * v) = sum;
    }
}

// Columns [j, j + 16 * V) of every output row, four rows at a time (then two, then one).
template <int V>
inline void gemm_columns(float* out, const float* a, const float* b, int64_t rows, int64_t k, int64_t n, int64_t j) {
  int64_t i = 0;
  for (; i + 4 <= rows; i += 4) gemm_tile<4, V>(out + i * n + j, a + i * k, b + j, k, n);
  for (; i + 2 <= rows; i += 2) gemm_tile<2, V>(out + i * n + j, a + i * k, b + j, k, n);
  for (; i < rows; ++i) gemm_tile<1, V>(out + i * n + j, a + i * k, b + j, k, n);
}

// out (rows, n) += a (rows, k) @ b (k, n) for float: column tiles of 64, then 16, then the
// axpy form for the last n % 16 columns.
inline void small_gemm(float* __restrict__ out, const float* __restrict__ a, const float* __restrict__ b, int64_t rows,
                       int64_t k, int64_t n) {
  int64_t j = 0;
  if (rows == 1) {  // (one row: wider tiles, half as many passes over k; 10 % less time at k = 128, n = 512)
    for (; j + 128 <= n; j += 128) gemm_tile<1, 8>(out + j, a, b + j, k, n);
  }
  for (; j + 64 <= n; j += 64) gemm_columns<4>(out, a, b, rows, k, n, j);
  for (; j + 16 <= n; j += 16) gemm_columns<1>(out, a, b, rows, k, n, j);
  if (j == n) return;
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t q = 0; q < k; ++q) {
      const float aq = a[i * k + q];
      for (int64_t c = j; c < n; ++c) out[i * n + c] += aq * b[q * n + c];
    }
}

// Rows per thread of a step's cell pass: about 10 ns an element (five exponentials), so
// two threads pay for themselves from a few thousand elements on.
inline int64_t grain(int64_t H) { return std::max<int64_t>(1, 4096 / std::max<int64_t>(H, 1)); }

// A backward step: its rows [lo, lo + bs) and those of the step before it in the forward's
// order ([prev_lo, prev_lo + prev_bs); none before the first step).
struct BackStep {
  int64_t lo, bs, prev_lo, prev_bs;
};

inline BackStep back_step(at::IntArrayRef order, at::IntArrayRef offsets, at::IntArrayRef sizes, int64_t k) {
  const int64_t t = order[k];
  if (k == 0) return {offsets[t], sizes[t], 0, 0};
  return {offsets[t], sizes[t], offsets[order[k - 1]], sizes[order[k - 1]]};
}

// A call's batch rows split into contiguous parts, one per thread, each running the whole
// time loop for its rows: a row's state depends only on its own earlier rows (W_hh is read,
// never written), so the parts never wait for each other, where a split of each step (the
// step's GEMM on two threads, then its cell pass) forks and joins at every step. The parts
// take about equal work: a row's work is its number of steps (packed rows are shorter) times
// `row_step_work`. Below about min_part_work() multiply-adds a part (2^20, a few hundred
// microseconds), one part: the caller's thread, whose library GEMMs may then use the threads
// themselves. (A setting, so that the tests can split their small layers.) One part too where
// W_hh passes kSplitWeightBytes: each part would stream all of it through its core at every
// step, where MKL's threads each take a share of its columns (measured here at H = 512, 4 MB:
// 1-4 % slower split; at H = 64 split 14 % faster).
constexpr int64_t kSplitWeightBytes = int64_t(1) << 20;

inline std::atomic<int64_t>& min_part_work() {
  static std::atomic<int64_t> work{int64_t(1) << 20};
  return work;
}

struct RowParts {
  std::vector<int64_t> bounds;  // part p: rows [bounds[p], bounds[p + 1])

  RowParts(at::IntArrayRef sizes, int64_t B, int64_t row_step_work, int64_t weight_bytes) : bounds{0} {
    // steps of row b = the number of steps with more than b rows
    std::vector<int64_t> longer(B + 1, 0);
    for (int64_t s : sizes) longer[std::min<int64_t>(s, B)] += 1;
    std::vector<int64_t> steps_of(B);
    int64_t running = 0, total = 0;
    for (int64_t b = B - 1; b >= 0; --b) {
      running += longer[b + 1];
      steps_of[b] = running;
      total += running;
    }
    const int64_t work = total * std::max<int64_t>(row_step_work, 1);
    const int64_t min_work = min_part_work().load();
    const bool streams = weight_bytes > kSplitWeightBytes && min_work > 1;  // (the tests' 1 splits every layer)
    const int64_t by_work = streams ? 1 : work / std::max<int64_t>(min_work, 1);
    const int64_t parts = std::max<int64_t>(1, std::min<int64_t>({int64_t(at::get_num_threads()), B, by_work}));
    int64_t acc = 0, p = 1;
    for (int64_t b = 0; b < B && p < parts; ++b) {
      acc += steps_of[b];
      if (acc * parts >= total * p) {  // (part p ends after the row that reaches p/parts of the work)
        bounds.push_back(b + 1);
        ++p;
      }
    }
    if (bounds.back() != B) bounds.push_back(B);
  }

  int64_t count() const { return static_cast<int64_t>(bounds.size()) - 1; }

  // f(part, first row, end row) for every part, the parts on as many threads.
  template <typename F>
  void run(F&& f) const {
    if (count() == 1) {
      f(int64_t(0), bounds[0], bounds[1]);
      return;
    }
    // The caller's thread-local state (grad mode off, ...) in every part: a part may call
    // ATen's GEMM on tensors that require grad, and OpenMP's threads do not inherit it.
    const at::ThreadLocalState state;
    at::parallel_for(0, count(), 1, [&](int64_t p0, int64_t p1) {
      at::ThreadLocalStateGuard guard(state);
      for (int64_t p = p0; p < p1; ++p) f(p, bounds[p], bounds[p + 1]);
    });
  }
  // f(part, r0, lo, n) for each forward step in `order` at which the part [r0, r1) owns rows:
  // the step's rows start at xg row lo, the part's are [lo + r0, lo + r0 + n).
  template <typename F>
  void forward(at::IntArrayRef order, at::IntArrayRef offsets, at::IntArrayRef sizes, F&& f) const {
    run([&](int64_t part, int64_t r0, int64_t r1) {
      for (int64_t t : order) {
        const int64_t n = std::min(sizes[t], r1) - r0;
        if (n > 0) f(part, r0, offsets[t], n);
      }
    });
  }

  // f(part, r0, step, n) for each backward step (the forward's last first) at which the part
  // [r0, r1) owns rows [r0, r0 + n).
  template <typename F>
  void backward(at::IntArrayRef order, at::IntArrayRef offsets, at::IntArrayRef sizes, F&& f) const {
    run([&](int64_t part, int64_t r0, int64_t r1) {
      for (int64_t k = static_cast<int64_t>(order.size()) - 1; k >= 0; --k) {
        const BackStep step = back_step(order, offsets, sizes, k);
        const int64_t n = std::min(step.bs, r1) - r0;
        if (n > 0) f(part, r0, step, n);
      }
    });
  }
};

// The parts of a loop whose step multiplies its rows by W_hh^T (k, n) in T and then spends
// about `cell` operations per output column of each row.
template <typename T>
RowParts row_parts(at::IntArrayRef sizes, int64_t B, int64_t k, int64_t n, int64_t cell) {
  return RowParts(sizes, B, (k + cell) * n, k * n * static_cast<int64_t>(sizeof(T)));
}

}  // namespace fastrnn_cpu

// MKL's packed-GEMM interface (float), exported by torch's CPU library where torch is built
// with MKL. Weak: the extension also loads without them, and ATen's GEMM runs instead.
extern "C" {
size_t cblas_sgemm_pack_get_size(int identifier, int m, int n, int k) __attribute__((weak));
void cblas_sgemm_pack(int layout, int identifier, int trans, int m, int n, int k, float alpha, const float* src,
                      int ld, float* dest) __attribute__((weak));
void cblas_sgemm_compute(int layout, int transa, int transb, int m, int n, int k, const float* a, int lda,
                         const float* b, int ldb, float beta, float* c, int ldc) __attribute__((weak));
}

namespace fastrnn_cpu {

// Whether the per-step GEMMs may use MKL's packed interface (a switch for the tests, which
// compare the two routes).
inline std::atomic<bool>& packed_gemm_enabled() {
  static std::atomic<bool> enabled{true};
  return enabled;
}

inline bool packed_gemm_available() {
  return cblas_sgemm_pack_get_size != nullptr && cblas_sgemm_pack != nullptr && cblas_sgemm_compute != nullptr;
}

// ``w^T`` of a contiguous 2-D tensor (StepRhs checks it), as a new contiguous tensor: each
// column of 16 rows of w written as one contiguous 64-byte run of the result. (Square tiles
// thrashed L1 here: their 32 output rows lie 2^k floats apart, in one or two cache sets;
// 306 us for a 512 x 128 W_hh, 15 us this way.)
template <typename T>
at::Tensor transposed(const at::Tensor& w) {
  const int64_t rows = w.size(0), cols = w.size(1);
  at::Tensor out = at::empty({cols, rows}, w.options());
  const T* src = w.data_ptr<T>();
  T* dst = out.data_ptr<T>();
  constexpr int64_t block = 16;
  int64_t r0 = 0;
  for (; r0 + block <= rows; r0 += block)
    for (int64_t c = 0; c < cols; ++c) {
      T* d = dst + c * rows + r0;
      const T* s = src + r0 * cols + c;
      for (int64_t r = 0; r < block; ++r) d[r] = s[r * cols];
    }
  for (; r0 < rows; ++r0)
    for (int64_t c = 0; c < cols; ++c) dst[c * rows + r0] = src[r0 * cols + c];
  return out;
}

// The right-hand side b (k, n) of a call's per-step GEMMs out (rows, n) (+)= in (rows, k) @ b.
// Where the steps' products go to a library GEMM (above kSmallGemm) and MKL's packed
// interface is there (float), b is packed once per call into MKL's internal layout: sgemm
// would repack it at every step (10-20 % of a step's GEMM at B = 32, H = 256 here). The
// packing does not depend on the number of rows.
template <typename T>
struct StepRhs {
  at::Tensor b;  // contiguous, except a view of w^T where only the packed product reads it
  int64_t k, n;
  at::Tensor packed;  // (float) MKL's packed b, or undefined

  // b itself, contiguous.
  StepRhs(at::Tensor b_, int64_t max_rows) : b(std::move(b_)), k(b.size(0)), n(b.size(1)) {
    pack(b.data_ptr<T>(), false, max_rows);
  }

  // b = w^T of a contiguous w (n, k): packed straight from w where every step's product is
  // the packed one (k * n over kSmallGemm), else a transposed copy, the layout the small
  // products and ATen's GEMM run faster on. (The copy of a 4 MB W_hh took about 3 ms here:
  // its rows are 2^k floats apart.)
  static StepRhs transpose_of(const at::Tensor& w, int64_t max_rows) { return StepRhs(w, max_rows, 0); }

  const T* data() const { return b.data_ptr<T>(); }

  // out = in @ b + beta * out through the packed b; false where b is not packed.
  bool packed_product(T* out, const T* in, int64_t rows, float beta) const {
    if constexpr (std::is_same_v<T, float>) {
      if (packed.defined()) {
        cblas_sgemm_compute(101, 111, 151 /* packed */, int(rows), int(n), int(k), in, int(k),
                            packed.data_ptr<float>(), int(n), beta, out, int(n));
        return true;
      }
    }
    return false;
  }

 private:
  StepRhs(const at::Tensor& w, int64_t max_rows, int) : b(w.t()), k(w.size(1)), n(w.size(0)) {
    TORCH_CHECK(w.dim() == 2 && w.is_contiguous(), "fastrnn cpu loops: W_hh must be a contiguous matrix");
    pack(w.data_ptr<T>(), true, max_rows);
    if (!packed.defined() || k * n <= kSmallGemm) b = transposed<T>(w);
  }

  // Packs b from src: b itself (k, n), or with `trans` its transpose (n, k), both row-major.
  void pack(const T* src, bool trans, int64_t max_rows) {
    if constexpr (std::is_same_v<T, float>) {
      const int64_t limit = std::numeric_limits<int>::max();
      if (max_rows * k * n > kSmallGemm && packed_gemm_enabled().load() && packed_gemm_available() &&
          max_rows <= limit && k <= limit && n <= limit) {
        const size_t bytes = cblas_sgemm_pack_get_size(162 /* B */, int(max_rows), int(n), int(k));
        packed = at::empty({static_cast<int64_t>(bytes / sizeof(float)) + 1}, b.options());
        cblas_sgemm_pack(101 /* row-major */, 162, trans ? 112 /* transposed */ : 111 /* not */, int(max_rows),
                         int(n), int(k), 1.0f, src, trans ? int(k) : int(n), packed.data_ptr<float>());
      }
    }
  }
};

// out (rows, n) += in (rows, k) @ b: the plain loops for small products, else the packed
// product, else `aten` (ATen's GEMM on tensor views of the same memory, made only when it runs).
template <typename T, typename Aten>
void gemm_acc(T* out, const T* in, const StepRhs<T>& b, int64_t rows, Aten&& aten) {
  if (rows * b.k * b.n <= kSmallGemm) {
    small_gemm(out, in, b.data(), rows, b.k, b.n);
  } else if (!b.packed_product(out, in, rows, 1.0f)) {
    aten();
  }
}

// out (rows, n) = in (rows, k) @ b, likewise.
template <typename T, typename Aten>
void gemm_set(T* out, const T* in, const StepRhs<T>& b, int64_t rows, Aten&& aten) {
  if (rows * b.k * b.n <= kSmallGemm) {
    std::fill(out, out + rows * b.n, T(0));
    small_gemm(out, in, b.data(), rows, b.k, b.n);
  } else if (!b.packed_product(out, in, rows, 0.0f)) {
    aten();
  }
}

// Zeroes, in each state buffer given, the rows a reset marks at the step of rows
// [lo, lo + bs); true when every row was reset.
template <typename T>
bool reset_rows(const bool* resets, int64_t lo, int64_t bs, int64_t H, T* state, T* other = nullptr) {
  if (resets == nullptr) return false;
  bool all = true;
  for (int64_t b = 0; b < bs; ++b) {
    if (resets[lo + b]) {
      std::fill(state + b * H, state + (b + 1) * H, T(0));
      if (other != nullptr) std::fill(other + b * H, other + (b + 1) * H, T(0));
    } else {
      all = false;
    }
  }
  return all;
}

// The GEMM's input of a step: the state, or the state times the recurrent-dropout scale.
template <typename T>
const T* gemm_input(const T* state, const T* rscale, T* scaled, int64_t n) {
  if (rscale == nullptr) return state;
  for (int64_t k = 0; k < n; ++k) scaled[k] = state[k] * rscale[k];
  return scaled;
}

// out rows [row0 + b0, row0 + b0 + bs) += (the state's rows [b0, b0 + bs), times the
// recurrent-dropout scale when there is one, into `scaled`) @ w_t, w_t = W_hh^T (H, G).
template <typename T>
void recurrent_gemm(const at::Tensor& out, int64_t row0, const at::Tensor& h_state, const at::Tensor& scaled,
                    const T* rscale, const StepRhs<T>& w_t, int64_t bs, int64_t b0 = 0) {
  const int64_t H = h_state.size(1), G = out.size(1);
  T* sc = rscale != nullptr ? scaled.data_ptr<T>() + b0 * H : nullptr;
  const T* rs = rscale != nullptr ? rscale + b0 * H : nullptr;
  const T* in = gemm_input<T>(h_state.data_ptr<T>() + b0 * H, rs, sc, bs * H);
  gemm_acc(out.data_ptr<T>() + (row0 + b0) * G, in, w_t, bs, [&] {
    out.narrow(0, row0 + b0, bs).addmm_((sc != nullptr ? scaled : h_state).narrow(0, b0, bs), w_t.b);
  });
}

// The state that entered row b of a step, for the backward: zero after a reset, else the
// previous step's row (its rows [prev_lo, prev_lo + prev_bs) of `seq`) or the initial state.
template <typename T>
const T* entering_row(const T* seq, const T* init, const T* zero, bool cut, int64_t b, int64_t prev_lo,
                      int64_t prev_bs, int64_t H) {
  if (cut) return zero;
  return b < prev_bs ? seq + (prev_lo + b) * H : init + b * H;
}

// After the backward GEMM wrote dh_prev rows: times the recurrent-dropout scale, plus the
// parts that bypass W_hh, zero where a reset cut the sequence.
template <typename T>
void finish_dh(T* dh, const T* rscale, const T* direct, const T* keep, const bool* resets, int64_t lo, int64_t bs,
               int64_t H, T* dc) {
  for (int64_t b = 0; b < bs; ++b) {
    T* d = dh + b * H;
    if (rscale != nullptr) {
      const T* s = rscale + b * H;
      for (int64_t j = 0; j < H; ++j) d[j] *= s[j];
    }
    if (direct != nullptr) {
      const T* a = direct + b * H;
      for (int64_t j = 0; j < H; ++j) d[j] += a[j];
    }
    if (keep != nullptr) {
      const T* a = keep + b * H;
      for (int64_t j = 0; j < H; ++j) d[j] += a[j];
    }
    if (resets != nullptr && resets[lo + b]) {  // no gradient crosses a reset
      std::fill(d, d + H, T(0));
      if (dc != nullptr) std::fill(dc + b * H, dc + (b + 1) * H, T(0));
    }
  }
}

// The end of a backward step for the state's rows [b0, b0 + bs) (the step's rows from row lo
// of `grad`), the backward's twin of recurrent_gemm: dh rows = grad rows @ W_hh (w_rhs holds
// W_hh), then finish_dh on them. rscale, direct, keep and dc are state-sized (B, H) buffers
// or null.
template <typename T>
void recurrent_dh(const at::Tensor& dh, const at::Tensor& grad, int64_t lo, const StepRhs<T>& w_rhs, int64_t bs,
                  int64_t b0, const T* rscale, const T* direct, const T* keep, const bool* resets, T* dc = nullptr) {
  const int64_t H = dh.size(1), G = grad.size(1);
  T* DH = dh.data_ptr<T>() + b0 * H;
  gemm_set(DH, grad.data_ptr<T>() + (lo + b0) * G, w_rhs, bs, [&] {
    at::Tensor rows = dh.narrow(0, b0, bs);
    at::mm_out(rows, grad.narrow(0, lo + b0, bs), w_rhs.b);
  });
  const auto at_b0 = [&](auto* p) { return p == nullptr ? p : p + b0 * H; };
  finish_dh<T>(DH, at_b0(rscale), at_b0(direct), at_b0(keep), resets, lo + b0, bs, H, at_b0(dc));
}

template <typename T>
void add_into(T* __restrict__ out, const T* __restrict__ a, int64_t D) {
  for (int64_t j = 0; j < D; ++j) out[j] += a[j];
}

// The gradient of a state row's new value: `grad` (the state's whole gradient, `dy` added
// into it first when given), or with zoneout its cell part (into `cell`, the kept part into
// `kept`).
template <typename T>
const T* new_value_grad(T* grad, const T* dy, bool zoned, const bool* mask, T p, T* cell, T* kept, int64_t H) {
  if (dy != nullptr) add_into(grad, dy, H);
  if (!zoned) return grad;
  split(cell, kept, grad, mask, p, H);
  return cell;
}

// A copy of a contiguous tensor, made with one memcpy (a dispatched clone costs a few
// microseconds, as much as a whole step at small sizes).
inline at::Tensor copy_of(const at::Tensor& t) {
  TORCH_CHECK(t.is_contiguous(), "fastrnn cpu loops: a state must be contiguous");
  at::Tensor out = at::empty(t.sizes(), t.options());
  std::memcpy(out.data_ptr(), t.data_ptr(), t.numel() * t.element_size());
  return out;
}

inline void check(const at::Tensor& t, const char* what) {
  TORCH_CHECK(t.device().is_cpu() && t.is_contiguous(), "fastrnn cpu loops: ", what, " must be a contiguous CPU tensor");
}

// Each source file's functions of the extension's Python module (made in cpu_loops_random.cpp),
// bound with `nogil`: a call releases the GIL while it runs (other Python threads go on, as
// they do during torch's own ops).
inline constexpr pybind11::call_guard<pybind11::gil_scoped_release> nogil{};
void bind_lstm(pybind11::module_& m);
void bind_gru_rnn(pybind11::module_& m);
void bind_norm(pybind11::module_& m);
void bind_random(pybind11::module_& m);

}  // namespace fastrnn_cpu
