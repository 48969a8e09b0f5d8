// The LSTM's CPU time loops in C++: the reference backend's LSTM loops (with resets,
// zoneout, recurrent dropout or peepholes) step by step, with the same arithmetic, inputs
// and saved tensors, but one ATen GEMM and one pass of plain C++ over the step's rows per
// step instead of a dozen dispatched torch ops. Built at first use by
// fastrnn/backends/cpu_loops.py, which documents the interface.
//
// State model (fastrnn/backends/base.py): one state buffer of B rows; step t reads and
// rewrites rows [0, sizes[t]); the rows of a step are xg rows [offsets[t], offsets[t] + sizes[t]).

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

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

// The cell of one row: activates the gates in place, writes the new c and h.
template <typename T, bool PEEP>
void cell_forward(T* __restrict__ gi, T* __restrict__ gf, T* __restrict__ gg, T* __restrict__ go,
                  const T* __restrict__ cp, T* __restrict__ cn, T* __restrict__ hn, const T* __restrict__ w_ci,
                  const T* __restrict__ w_cf, const T* __restrict__ w_co, int64_t H) {
  for (int64_t j = 0; j < H; ++j) {
    T c = cp[j];
    T i = sig(PEEP ? gi[j] + w_ci[j] * c : gi[j]);
    T f = sig(PEEP ? gf[j] + w_cf[j] * c : gf[j]);
    T g = th(gg[j]);
    T c_new = f * c + i * g;
    T o = sig(PEEP ? go[j] + w_co[j] * c_new : go[j]);
    gi[j] = i;
    gf[j] = f;
    gg[j] = g;
    go[j] = o;
    cn[j] = c_new;
    hn[j] = o * th(c_new);
  }
}

// Zoneout's blend of one row: `mask ? prev : new` in training, `new + p (prev - new)` in eval.
template <typename T>
void blend(T* __restrict__ out, const T* __restrict__ prev, const T* __restrict__ fresh, const bool* __restrict__ mask,
           T p, int64_t H) {
  if (mask != nullptr) {
    for (int64_t j = 0; j < H; ++j) out[j] = mask[j] ? prev[j] : fresh[j];
  } else {
    for (int64_t j = 0; j < H; ++j) out[j] = fresh[j] + p * (prev[j] - fresh[j]);
  }
}

// The gradient of a zoned-out state split into the cell's part and the entering state's part.
template <typename T>
void split(T* __restrict__ cell, T* __restrict__ kept, const T* __restrict__ grad, const bool* __restrict__ mask, T p,
           int64_t H) {
  if (mask != nullptr) {
    for (int64_t j = 0; j < H; ++j) {
      cell[j] = mask[j] ? T(0) : grad[j];
      kept[j] = mask[j] ? grad[j] : T(0);
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
// row takes them), added to each output row.
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

// Rows per thread of a step's cell pass: about 10 ns an element (five exponentials), so
// two threads pay for themselves from a few thousand elements on.
int64_t grain(int64_t H) { return std::max<int64_t>(1, 4096 / std::max<int64_t>(H, 1)); }

template <typename T, bool PEEP>
std::vector<at::Tensor> forward_loop(at::Tensor xg, const at::Tensor& w_hh, const at::Tensor& h0, const at::Tensor& c0,
                                     at::IntArrayRef order, at::IntArrayRef offsets, at::IntArrayRef sizes,
                                     const Extras<T>& e, bool save) {
  const int64_t N = xg.size(0), H = c0.size(1), B = c0.size(0);
  at::Tensor y = at::empty({N, H}, xg.options());
  at::Tensor c_seq = at::empty({N, H}, xg.options());
  at::Tensor cell_c = at::empty({(save && e.zoned_c) ? N : 0, H}, xg.options());
  at::Tensor h_state = h0.clone(), c_state = c0.clone();
  at::Tensor h_cell = at::empty({B, H}, xg.options()), c_cell = at::empty({B, H}, xg.options());
  at::Tensor scaled = e.rscale != nullptr ? at::empty({B, H}, xg.options()) : at::Tensor();
  at::Tensor w_t = w_hh.t().contiguous();  // the per-step GEMMs run faster on this layout
  T* X = xg.data_ptr<T>();
  T* Y = y.data_ptr<T>();
  T* C = c_seq.data_ptr<T>();
  T* CC = cell_c.numel() > 0 ? cell_c.data_ptr<T>() : nullptr;
  T* HS = h_state.data_ptr<T>();
  T* CS = c_state.data_ptr<T>();
  T* HN = h_cell.data_ptr<T>();
  T* CN = c_cell.data_ptr<T>();
  T* SC = scaled.defined() ? scaled.data_ptr<T>() : nullptr;
  const T* W_T = w_t.data_ptr<T>();
  const int64_t G = 4 * H;
  for (int64_t t : order) {
    const int64_t lo = offsets[t], bs = sizes[t];
    bool all_cut = e.resets != nullptr;
    if (e.resets != nullptr) {
      for (int64_t b = 0; b < bs; ++b) {
        if (e.resets[lo + b]) {
          std::fill(HS + b * H, HS + (b + 1) * H, T(0));
          std::fill(CS + b * H, CS + (b + 1) * H, T(0));
        } else {
          all_cut = false;
        }
      }
    }
    if (!all_cut) {  // (every row reset: h = 0 adds nothing)
      at::Tensor h_in = h_state.narrow(0, 0, bs);
      if (SC != nullptr) {
        for (int64_t k = 0; k < bs * H; ++k) SC[k] = HS[k] * e.rscale[k];
        h_in = scaled.narrow(0, 0, bs);
      }
      if (bs * G * H <= kSmallGemm) {
        small_gemm(X + lo * G, SC != nullptr ? SC : HS, W_T, bs, H, G);
      } else {
        at::Tensor rows = xg.narrow(0, lo, bs);
        rows.addmm_(h_in, w_t);
      }
    }
    at::parallel_for(0, bs, grain(H), [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t r = lo + b;
        T* g = X + r * G;
        T* cp = CS + b * H;
        T* hp = HS + b * H;
        T* cn = e.zoned_c ? (CC != nullptr ? CC + r * H : CN + b * H) : C + r * H;
        T* hn = e.zoned_h ? HN + b * H : Y + r * H;
        cell_forward<T, PEEP>(g, g + H, g + 2 * H, g + 3 * H, cp, cn, hn, e.w_ci, e.w_cf, e.w_co, H);
        if (e.zoned_c) blend(C + r * H, cp, cn, e.mask_c ? e.mask_c + r * H : nullptr, e.p_c, H);
        if (e.zoned_h) blend(Y + r * H, hp, hn, e.mask_h ? e.mask_h + r * H : nullptr, e.p_h, H);
        std::memcpy(cp, C + r * H, H * sizeof(T));
        std::memcpy(hp, Y + r * H, H * sizeof(T));
      }
    });
  }
  return {y, h_state, c_state, c_seq, cell_c};
}

template <typename T, bool PEEP>
void cell_backward(const T* __restrict__ i_, const T* __restrict__ f_, const T* __restrict__ g_,
                   const T* __restrict__ o_, const T* __restrict__ cp, const T* __restrict__ cn,
                   const T* __restrict__ dh_new, const T* __restrict__ dc_new, T* __restrict__ di,
                   T* __restrict__ df, T* __restrict__ dg, T* __restrict__ d_o, T* __restrict__ dc_prev,
                   const T* __restrict__ w_ci, const T* __restrict__ w_cf, const T* __restrict__ w_co, int64_t H) {
  for (int64_t j = 0; j < H; ++j) {
    T i = i_[j], f = f_[j], g = g_[j], o = o_[j];
    T tc = th(cn[j]);
    T o_fac = tc * o * (T(1) - o);
    T via_h = o * (T(1) - tc * tc);
    if (PEEP) via_h += w_co[j] * o_fac;
    T dc = dc_new[j] + dh_new[j] * via_h;
    T d_i = dc * g * i * (T(1) - i);
    T d_f = dc * cp[j] * f * (T(1) - f);
    di[j] = d_i;
    df[j] = d_f;
    dg[j] = dc * i * (T(1) - g * g);
    d_o[j] = dh_new[j] * o_fac;
    T carry = dc * f;
    if (PEEP) carry += w_ci[j] * d_i + w_cf[j] * d_f;
    dc_prev[j] = carry;
  }
}

template <typename T, bool PEEP>
std::vector<at::Tensor> backward_loop(const at::Tensor& gates, const at::Tensor& c_seq, const at::Tensor& cell_c,
                                      const at::Tensor& c0, const at::Tensor& w_hh, const at::Tensor& dy,
                                      const at::Tensor& dh_n, const at::Tensor& dc_n, at::IntArrayRef order,
                                      at::IntArrayRef offsets, at::IntArrayRef sizes, const Extras<T>& e) {
  const int64_t N = gates.size(0), H = c0.size(1), B = c0.size(0), G = 4 * H;
  at::Tensor dgates = at::empty({N, G}, gates.options());
  at::Tensor dh = dh_n.clone(), dc = dc_n.clone();
  at::Tensor dh_cell = at::empty({B, H}, gates.options()), dc_cell = at::empty({B, H}, gates.options());
  at::Tensor keep_h = at::empty({B, H}, gates.options()), keep_c = at::empty({B, H}, gates.options());
  at::Tensor zero = at::zeros({H}, gates.options());
  at::Tensor through = at::empty({B, H}, gates.options());
  at::Tensor dparams = at::zeros({PEEP ? 3 : 0, H}, gates.options());
  const T* GA = gates.data_ptr<T>();
  const T* C = c_seq.data_ptr<T>();
  const T* CC = cell_c.defined() ? cell_c.data_ptr<T>() : C;
  const T* C0 = c0.data_ptr<T>();
  const T* DY = dy.data_ptr<T>();
  const T* Z = zero.data_ptr<T>();
  T* DG = dgates.data_ptr<T>();
  T* DH = dh.data_ptr<T>();
  T* DC = dc.data_ptr<T>();
  T* DHC = dh_cell.data_ptr<T>();
  T* DCC = dc_cell.data_ptr<T>();
  T* KH = keep_h.data_ptr<T>();
  T* KC = keep_c.data_ptr<T>();
  T* TH = through.data_ptr<T>();
  T* DP = PEEP ? dparams.data_ptr<T>() : nullptr;
  const T* W = w_hh.data_ptr<T>();
  const int64_t steps = static_cast<int64_t>(order.size());
  for (int64_t k = steps - 1; k >= 0; --k) {
    const int64_t t = order[k], lo = offsets[t], bs = sizes[t];
    const int64_t prev_lo = k > 0 ? offsets[order[k - 1]] : 0, prev_bs = k > 0 ? sizes[order[k - 1]] : 0;
    for (int64_t b = 0; b < bs; ++b) {
      const int64_t r = lo + b;
      T* dh_t = DH + b * H;
      const T* dyr = DY + r * H;
      for (int64_t j = 0; j < H; ++j) dh_t[j] += dyr[j];
      const T* dh_new = dh_t;
      const T* dc_new = DC + b * H;
      if (e.zoned_h) {
        split(DHC + b * H, KH + b * H, dh_t, e.mask_h ? e.mask_h + r * H : nullptr, e.p_h, H);
        dh_new = DHC + b * H;
      }
      if (e.zoned_c) {
        split(DCC + b * H, KC + b * H, DC + b * H, e.mask_c ? e.mask_c + r * H : nullptr, e.p_c, H);
        dc_new = DCC + b * H;
      }
      const bool cut = e.resets != nullptr && e.resets[r];
      const T* cp = cut ? Z : (b < prev_bs ? C + (prev_lo + b) * H : C0 + b * H);
      const T* g = GA + r * G;
      T* d = DG + r * G;
      cell_backward<T, PEEP>(g, g + H, g + 2 * H, g + 3 * H, cp, CC + r * H, dh_new, dc_new, d, d + H, d + 2 * H,
                             d + 3 * H, TH + b * H, e.w_ci, e.w_cf, e.w_co, H);
      T* dcr = DC + b * H;
      const T* th_r = TH + b * H;
      if (e.zoned_c) {
        const T* kc = KC + b * H;
        for (int64_t j = 0; j < H; ++j) dcr[j] = th_r[j] + kc[j];
      } else {
        std::memcpy(dcr, th_r, H * sizeof(T));
      }
      if (PEEP) {
        const T* cn = CC + r * H;
        for (int64_t j = 0; j < H; ++j) {
          DP[j] += d[j] * cp[j];
          DP[H + j] += d[H + j] * cp[j];
          DP[2 * H + j] += d[3 * H + j] * cn[j];
        }
      }
    }
    // The gradient reaching h_prev: (dgates @ W_hh) * scale + the part zoneout kept.
    if (bs * G * H <= kSmallGemm) {
      std::fill(DH, DH + bs * H, T(0));
      small_gemm(DH, DG + lo * G, W, bs, G, H);
    } else {
      at::Tensor dh_rows = dh.narrow(0, 0, bs);
      at::mm_out(dh_rows, dgates.narrow(0, lo, bs), w_hh);
    }
    for (int64_t b = 0; b < bs; ++b) {
      T* dh_t = DH + b * H;
      if (e.rscale != nullptr) {
        const T* s = e.rscale + b * H;
        for (int64_t j = 0; j < H; ++j) dh_t[j] *= s[j];
      }
      if (e.zoned_h) {
        const T* kh = KH + b * H;
        for (int64_t j = 0; j < H; ++j) dh_t[j] += kh[j];
      }
      if (e.resets != nullptr && e.resets[lo + b]) {  // no gradient crosses a reset
        std::fill(dh_t, dh_t + H, T(0));
        std::fill(DC + b * H, DC + (b + 1) * H, T(0));
      }
    }
  }
  return {dgates, dh, dc, dparams};
}

void check(const at::Tensor& t, const char* what) {
  TORCH_CHECK(t.device().is_cpu() && t.is_contiguous(), "fastrnn cpu loops: ", what, " must be a contiguous CPU tensor");
}

std::vector<at::Tensor> lstm_forward(at::Tensor xg, const at::Tensor& w_hh, const at::Tensor& h0, const at::Tensor& c0,
                                     at::IntArrayRef order, at::IntArrayRef offsets, at::IntArrayRef sizes,
                                     const c10::optional<at::Tensor>& params, const c10::optional<at::Tensor>& resets,
                                     const c10::optional<at::Tensor>& mask_h, double p_h,
                                     const c10::optional<at::Tensor>& mask_c, double p_c,
                                     const c10::optional<at::Tensor>& rscale, bool save) {
  check(xg, "xg");
  check(h0, "h0");
  check(c0, "c0");
  return AT_DISPATCH_FLOATING_TYPES(xg.scalar_type(), "fastrnn_lstm_forward", [&] {
    auto e = extras_of<scalar_t>(params, resets, mask_h, p_h, mask_c, p_c, rscale);
    if (params.has_value()) return forward_loop<scalar_t, true>(xg, w_hh, h0, c0, order, offsets, sizes, e, save);
    return forward_loop<scalar_t, false>(xg, w_hh, h0, c0, order, offsets, sizes, e, save);
  });
}

std::vector<at::Tensor> lstm_backward(const at::Tensor& gates, const at::Tensor& c_seq,
                                      const c10::optional<at::Tensor>& cell_c, const at::Tensor& c0,
                                      const at::Tensor& w_hh, const at::Tensor& dy, const at::Tensor& dh_n,
                                      const at::Tensor& dc_n, at::IntArrayRef order, at::IntArrayRef offsets,
                                      at::IntArrayRef sizes, const c10::optional<at::Tensor>& params,
                                      const c10::optional<at::Tensor>& resets, const c10::optional<at::Tensor>& mask_h,
                                      double p_h, const c10::optional<at::Tensor>& mask_c, double p_c,
                                      const c10::optional<at::Tensor>& rscale) {
  check(gates, "gates");
  check(c_seq, "c");
  check(dy, "dy");
  at::Tensor kept = cell_c.has_value() ? *cell_c : at::Tensor();
  return AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "fastrnn_lstm_backward", [&] {
    auto e = extras_of<scalar_t>(params, resets, mask_h, p_h, mask_c, p_c, rscale);
    if (params.has_value())
      return backward_loop<scalar_t, true>(gates, c_seq, kept, c0, w_hh, dy, dh_n, dc_n, order, offsets, sizes, e);
    return backward_loop<scalar_t, false>(gates, c_seq, kept, c0, w_hh, dy, dh_n, dc_n, order, offsets, sizes, e);
  });
}

}  // namespace

TORCH_LIBRARY(fastrnn_cpu_loops, m) {
  m.def(
      "lstm_forward(Tensor(a!) xg, Tensor w_hh, Tensor h0, Tensor c0, int[] order, int[] offsets, int[] sizes, "
      "Tensor? params, Tensor? resets, Tensor? mask_h, float p_h, Tensor? mask_c, float p_c, Tensor? rscale, "
      "bool save) -> Tensor[]");
  m.def(
      "lstm_backward(Tensor gates, Tensor c_seq, Tensor? cell_c, Tensor c0, Tensor w_hh, Tensor dy, Tensor dh_n, "
      "Tensor dc_n, int[] order, int[] offsets, int[] sizes, Tensor? params, Tensor? resets, Tensor? mask_h, "
      "float p_h, Tensor? mask_c, float p_c, Tensor? rscale) -> Tensor[]");
}

TORCH_LIBRARY_IMPL(fastrnn_cpu_loops, CPU, m) {
  m.impl("lstm_forward", &lstm_forward);
  m.impl("lstm_backward", &lstm_backward);
}
