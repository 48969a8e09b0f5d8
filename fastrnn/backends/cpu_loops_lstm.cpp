// The LSTM's CPU time loops in C++ (with resets, zoneout, recurrent dropout or
// peepholes): the reference backend's Python loops step by step, with the same arithmetic,
// inputs and saved tensors, one GEMM and one pass over the step's rows per step.

#include "cpu_loops.h"

namespace fastrnn_cpu {
namespace {

// The cell of one row: activates the gates in place, writes the new c and h.
template <typename T, bool PEEP>
void cell_forward(T* __restrict__ gi, T* __restrict__ gf, T* __restrict__ gg, T* __restrict__ go,
                  const T* __restrict__ cp, T* __restrict__ cn, T* __restrict__ hn, const T* __restrict__ w_ci,
                  const T* __restrict__ w_cf, const T* __restrict__ w_co, T* __restrict__ tanh_out, int64_t H) {
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
    T tc = th(c_new);
    if (tanh_out != nullptr) tanh_out[j] = tc;
    hn[j] = o * tc;
  }
}

template <typename T, bool PEEP>
std::vector<at::Tensor> forward_loop(at::Tensor xg, const at::Tensor& w_hh, const at::Tensor& h0, const at::Tensor& c0,
                                     at::IntArrayRef order, at::IntArrayRef offsets, at::IntArrayRef sizes,
                                     const Extras<T>& e, bool save, bool keep_tanh) {
  const int64_t N = xg.size(0), H = c0.size(1), B = c0.size(0);
  at::Tensor y = at::empty({N, H}, xg.options());
  at::Tensor c_seq = at::empty({N, H}, xg.options());
  at::Tensor cell_c = at::empty({(save && e.zoned_c) ? N : 0, H}, xg.options());
  at::Tensor tanh_c = at::empty({(save && keep_tanh) ? N : 0, H}, xg.options());
  at::Tensor h_state = copy_of(h0), c_state = copy_of(c0);
  at::Tensor h_cell = at::empty({B, H}, xg.options()), c_cell = at::empty({B, H}, xg.options());
  at::Tensor scaled = e.rscale != nullptr ? at::empty({B, H}, xg.options()) : at::Tensor();
  const StepRhs<T> w_t = StepRhs<T>::transpose_of(w_hh, B);
  T* X = xg.data_ptr<T>();
  T* Y = y.data_ptr<T>();
  T* C = c_seq.data_ptr<T>();
  T* CC = cell_c.numel() > 0 ? cell_c.data_ptr<T>() : nullptr;
  T* TC = tanh_c.numel() > 0 ? tanh_c.data_ptr<T>() : nullptr;
  T* HS = h_state.data_ptr<T>();
  T* CS = c_state.data_ptr<T>();
  T* HN = h_cell.data_ptr<T>();
  T* CN = c_cell.data_ptr<T>();
  const int64_t G = 4 * H;
  row_parts<T>(sizes, B, H, G, 16).forward(order, offsets, sizes, [&](int64_t, int64_t r0, int64_t lo, int64_t n) {
    if (!reset_rows(e.resets, lo + r0, n, H, HS + r0 * H, CS + r0 * H)) {  // (every row reset: h = 0 adds nothing)
      recurrent_gemm<T>(xg, lo, h_state, scaled, e.rscale, w_t, n, r0);
    }
    at::parallel_for(r0, r0 + n, grain(H), [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t r = lo + b;
        T* g = X + r * G;
        T* cp = CS + b * H;
        T* hp = HS + b * H;
        T* cn = e.zoned_c ? (CC != nullptr ? CC + r * H : CN + b * H) : C + r * H;
        T* hn = e.zoned_h ? HN + b * H : Y + r * H;
        cell_forward<T, PEEP>(g, g + H, g + 2 * H, g + 3 * H, cp, cn, hn, e.w_ci, e.w_cf, e.w_co,
                              TC != nullptr ? TC + r * H : nullptr, H);
        if (e.zoned_c) blend(C + r * H, cp, cn, e.mask_c ? e.mask_c + r * H : nullptr, e.p_c, H);
        if (e.zoned_h) blend(Y + r * H, hp, hn, e.mask_h ? e.mask_h + r * H : nullptr, e.p_h, H);
        std::memcpy(cp, C + r * H, H * sizeof(T));
        std::memcpy(hp, Y + r * H, H * sizeof(T));
      }
    });
  });
  return {y, h_state, c_state, c_seq, cell_c, tanh_c};
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
  at::Tensor dh = copy_of(dh_n), dc = copy_of(dc_n);
  at::Tensor dh_cell = at::empty({B, H}, gates.options()), dc_cell = at::empty({B, H}, gates.options());
  at::Tensor keep_h = at::empty({B, H}, gates.options()), keep_c = at::empty({B, H}, gates.options());
  at::Tensor zero = at::zeros({H}, gates.options());
  at::Tensor through = at::empty({B, H}, gates.options());
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
  const StepRhs<T> w_rhs(w_hh, B);
  const RowParts parts = row_parts<T>(sizes, B, H, G, 16);
  // the peephole gradients: one sum per part (its rows in order), then the parts in order
  at::Tensor part_dparams = at::zeros({parts.count(), PEEP ? 3 : 0, H}, gates.options());
  T* const PART_DP = PEEP ? part_dparams.data_ptr<T>() : nullptr;
  parts.backward(order, offsets, sizes, [&](int64_t part, int64_t r0, const BackStep& step, int64_t n) {
    T* DP = PEEP ? PART_DP + part * 3 * H : nullptr;
    const int64_t lo = step.lo, prev_lo = step.prev_lo, prev_bs = step.prev_bs;
    at::parallel_for(r0, r0 + n, grain(H), [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t r = lo + b;
        const T* dh_new = new_value_grad(DH + b * H, DY + r * H, e.zoned_h, e.mask_h ? e.mask_h + r * H : nullptr,
                                         e.p_h, DHC + b * H, KH + b * H, H);
        const T* dc_new = new_value_grad<T>(DC + b * H, nullptr, e.zoned_c, e.mask_c ? e.mask_c + r * H : nullptr,
                                            e.p_c, DCC + b * H, KC + b * H, H);
        const T* cp = entering_row(C, C0, Z, e.resets != nullptr && e.resets[r], b, prev_lo, prev_bs, H);
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
      }
    });
    if (PEEP) {  // (after the parallel rows: one sum per unit, in row order)
      for (int64_t b = r0; b < r0 + n; ++b) {
        const int64_t r = lo + b;
        const T* cp = entering_row(C, C0, Z, e.resets != nullptr && e.resets[r], b, prev_lo, prev_bs, H);
        const T* cn = CC + r * H;
        const T* d = DG + r * G;
        for (int64_t j = 0; j < H; ++j) {
          DP[j] += d[j] * cp[j];
          DP[H + j] += d[H + j] * cp[j];
          DP[2 * H + j] += d[3 * H + j] * cn[j];
        }
      }
    }
    // The gradient reaching h_prev: (dgates @ W_hh) * scale + the part zoneout kept.
    recurrent_dh<T>(dh, dgates, lo, w_rhs, n, r0, e.rscale, nullptr, e.zoned_h ? KH : nullptr, e.resets, DC);
  });
  at::Tensor dparams = PEEP ? part_dparams.sum(0) : at::zeros({0, H}, gates.options());
  return {dgates, dh, dc, dparams};
}

std::vector<at::Tensor> lstm_forward(at::Tensor xg, const at::Tensor& w_hh, const at::Tensor& h0, const at::Tensor& c0,
                                     at::IntArrayRef order, at::IntArrayRef offsets, at::IntArrayRef sizes,
                                     const c10::optional<at::Tensor>& params, const c10::optional<at::Tensor>& resets,
                                     const c10::optional<at::Tensor>& mask_h, double p_h,
                                     const c10::optional<at::Tensor>& mask_c, double p_c,
                                     const c10::optional<at::Tensor>& rscale, bool save, bool keep_tanh) {
  check(xg, "xg");
  check(h0, "h0");
  check(c0, "c0");
  return AT_DISPATCH_FLOATING_TYPES(xg.scalar_type(), "fastrnn_lstm_forward", [&] {
    auto e = extras_of<scalar_t>(params, resets, mask_h, p_h, mask_c, p_c, rscale);
    if (params.has_value())
      return forward_loop<scalar_t, true>(xg, w_hh, h0, c0, order, offsets, sizes, e, save, keep_tanh);
    return forward_loop<scalar_t, false>(xg, w_hh, h0, c0, order, offsets, sizes, e, save, keep_tanh);
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

void bind_lstm(pybind11::module_& m) {
  m.def("lstm_forward", &lstm_forward, nogil);
  m.def("lstm_backward", &lstm_backward, nogil);
  // The per-step GEMMs' route (StepRhs): whether MKL's packed interface is there, and a
  // switch (returns the previous setting) for the tests that compare the routes.
  m.def("packed_gemm_available", [] { return packed_gemm_available(); });
  m.def("set_packed_gemm", [](bool enabled) { return packed_gemm_enabled().exchange(enabled); });
  // The work below which a call's rows stay in one part (RowParts); returns the previous
  // setting (the tests set 1 to split their small layers).
  m.def("set_min_part_work", [](int64_t work) { return min_part_work().exchange(work); });
}
}  // namespace fastrnn_cpu
