// The GRU's and the plain RNN's CPU time loops in C++ (with resets, zoneout or recurrent
// dropout): the reference backend's Python loops step by step, with the same arithmetic,
// inputs and saved tensors, one GEMM and one pass over the step's rows per step.

#include "cpu_loops.h"

namespace fastrnn_cpu {
namespace {

// GRU, one row: r, z = sigmoid(x + W_h h + b_h), n = tanh(x_n + r * hn), hn = (W_hn h + b_hn),
// h' = (h - n) * z + n. The gates overwrite x in place; hn is kept for the backward.
template <typename T>
void gru_cell(T* __restrict__ xr, T* __restrict__ xz, T* __restrict__ xn, const T* __restrict__ hg,
              T* __restrict__ hn_out, const T* __restrict__ hp, T* __restrict__ h_new, int64_t H) {
  for (int64_t j = 0; j < H; ++j) {
    T r = sig(xr[j] + hg[j]);
    T z = sig(xz[j] + hg[H + j]);
    T hn = hg[2 * H + j];
    T n = th(xn[j] + r * hn);
    xr[j] = r;
    xz[j] = z;
    xn[j] = n;
    hn_out[j] = hn;
    h_new[j] = (hp[j] - n) * z + n;
  }
}

template <typename T>
std::vector<at::Tensor> gru_forward_loop(at::Tensor xg, const at::Tensor& w_hh, const c10::optional<at::Tensor>& b_hh,
                                         const at::Tensor& h0, at::IntArrayRef order, at::IntArrayRef offsets,
                                         at::IntArrayRef sizes, const Extras<T>& e) {
  const int64_t N = xg.size(0), H = h0.size(1), B = h0.size(0), G = 3 * H;
  at::Tensor y = at::empty({N, H}, xg.options());
  at::Tensor hn_seq = at::empty({N, H}, xg.options());
  at::Tensor h_state = copy_of(h0);
  at::Tensor h_cell = at::empty({B, H}, xg.options());
  at::Tensor hg = at::empty({B, G}, xg.options());
  at::Tensor scaled = e.rscale != nullptr ? at::empty({B, H}, xg.options()) : at::Tensor();
  const StepRhs<T> w_t = StepRhs<T>::transpose_of(w_hh, B);
  T* X = xg.data_ptr<T>();
  T* Y = y.data_ptr<T>();
  T* HNS = hn_seq.data_ptr<T>();
  T* HS = h_state.data_ptr<T>();
  T* HC = h_cell.data_ptr<T>();
  T* HG = hg.data_ptr<T>();
  const T* BH = b_hh.has_value() ? b_hh->data_ptr<T>() : nullptr;
  row_parts<T>(sizes, B, H, G, 16).forward(order, offsets, sizes, [&](int64_t, int64_t r0, int64_t lo, int64_t n) {
    const bool all_cut = reset_rows(e.resets, lo + r0, n, H, HS + r0 * H);
    for (int64_t b = r0; b < r0 + n; ++b) {  // hg = b_hh (+ h @ W_hh^T below)
      if (BH != nullptr) {
        std::memcpy(HG + b * G, BH, G * sizeof(T));
      } else {
        std::fill(HG + b * G, HG + (b + 1) * G, T(0));
      }
    }
    if (!all_cut) recurrent_gemm<T>(hg, 0, h_state, scaled, e.rscale, w_t, n, r0);
    at::parallel_for(r0, r0 + n, grain(H), [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t r = lo + b;
        T* x = X + r * G;
        T* hp = HS + b * H;
        T* hn = e.zoned_h ? HC + b * H : Y + r * H;
        gru_cell<T>(x, x + H, x + 2 * H, HG + b * G, HNS + r * H, hp, hn, H);
        if (e.zoned_h) blend(Y + r * H, hp, hn, e.mask_h ? e.mask_h + r * H : nullptr, e.p_h, H);
        std::memcpy(hp, Y + r * H, H * sizeof(T));
      }
    });
  });
  return {y, h_state, hn_seq};
}

// GRU backward, one row, from d (the gradient of the cell's new h): the gate gradients
// (dxg: r, z, n before their activations; dhg: what reaches W_hh h + b_hh) and the direct
// part d * z of the gradient reaching h_prev.
template <typename T>
void gru_cell_backward(const T* __restrict__ r_, const T* __restrict__ z_, const T* __restrict__ n_,
                       const T* __restrict__ hn_, const T* __restrict__ hp, const T* __restrict__ d,
                       T* __restrict__ dxg, T* __restrict__ dhg, T* __restrict__ direct, int64_t H) {
  for (int64_t j = 0; j < H; ++j) {
    T r = r_[j], z = z_[j], n = n_[j];
    T dn = d[j] * (T(1) - z) * (T(1) - n * n);
    T dz = d[j] * z * (T(1) - z) * (hp[j] - n);
    T dr = dn * hn_[j] * r * (T(1) - r);
    dxg[j] = dr;
    dxg[H + j] = dz;
    dxg[2 * H + j] = dn;
    dhg[j] = dr;
    dhg[H + j] = dz;
    dhg[2 * H + j] = dn * r;
    direct[j] = d[j] * z;
  }
}

template <typename T>
std::vector<at::Tensor> gru_backward_loop(const at::Tensor& gates, const at::Tensor& hn_seq, const at::Tensor& h0,
                                          const at::Tensor& w_hh, const at::Tensor& y, const at::Tensor& dy,
                                          const at::Tensor& dh_n, at::IntArrayRef order, at::IntArrayRef offsets,
                                          at::IntArrayRef sizes, const Extras<T>& e) {
  const int64_t N = gates.size(0), H = h0.size(1), B = h0.size(0), G = 3 * H;
  at::Tensor dxg = at::empty({N, G}, gates.options());
  at::Tensor dhg = at::empty({N, G}, gates.options());
  at::Tensor dh = copy_of(dh_n);
  at::Tensor d_cell = at::empty({B, H}, gates.options()), keep = at::empty({B, H}, gates.options());
  at::Tensor direct = at::empty({B, H}, gates.options());
  at::Tensor zero = at::zeros({H}, gates.options());
  const T* GA = gates.data_ptr<T>();
  const T* HNS = hn_seq.data_ptr<T>();
  const T* H0 = h0.data_ptr<T>();
  const T* Y = y.data_ptr<T>();
  const T* DY = dy.data_ptr<T>();
  const T* Z = zero.data_ptr<T>();
  const StepRhs<T> w_rhs(w_hh, B);
  T* DX = dxg.data_ptr<T>();
  T* DHG = dhg.data_ptr<T>();
  T* DH = dh.data_ptr<T>();
  T* DCL = d_cell.data_ptr<T>();
  T* KP = keep.data_ptr<T>();
  T* DIR = direct.data_ptr<T>();
  const RowParts parts = row_parts<T>(sizes, B, H, G, 16);
  parts.backward(order, offsets, sizes, [&](int64_t, int64_t r0, const BackStep& step, int64_t n) {
    const int64_t lo = step.lo, prev_lo = step.prev_lo, prev_bs = step.prev_bs;
    at::parallel_for(r0, r0 + n, grain(H), [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t r = lo + b;
        const T* d = new_value_grad(DH + b * H, DY + r * H, e.zoned_h, e.mask_h ? e.mask_h + r * H : nullptr, e.p_h,
                                    DCL + b * H, KP + b * H, H);
        const T* hp = entering_row(Y, H0, Z, e.resets != nullptr && e.resets[r], b, prev_lo, prev_bs, H);
        const T* g = GA + r * G;
        gru_cell_backward<T>(g, g + H, g + 2 * H, HNS + r * H, hp, d, DX + r * G, DHG + r * G, DIR + b * H, H);
      }
    });
    recurrent_dh<T>(dh, dhg, lo, w_rhs, n, r0, e.rscale, DIR, e.zoned_h ? KP : nullptr, e.resets);
  });
  return {dxg, dhg, dh};
}

// Plain RNN: h' = act(x + W_hh h), act = tanh or relu (torch's threshold: 0 where x <= 0,
// so NaN passes).
template <typename T, bool TANH>
void rnn_cell(T* __restrict__ x, int64_t H) {
  for (int64_t j = 0; j < H; ++j) x[j] = TANH ? th(x[j]) : (x[j] <= T(0) ? T(0) : x[j]);
}

template <typename T, bool TANH>
std::vector<at::Tensor> rnn_forward_loop(at::Tensor xg, const at::Tensor& w_hh, const at::Tensor& h0,
                                         at::IntArrayRef order, at::IntArrayRef offsets, at::IntArrayRef sizes,
                                         const Extras<T>& e) {
  // The cell's own new h overwrites the step's input projection; with zoneout of h the output
  // is a second buffer (and the input projection, then the cell's h, is what backward reads).
  const int64_t N = xg.size(0), H = h0.size(1), B = h0.size(0);
  at::Tensor y = e.zoned_h ? at::empty({N, H}, xg.options()) : xg;
  at::Tensor h_state = copy_of(h0);
  at::Tensor scaled = e.rscale != nullptr ? at::empty({B, H}, xg.options()) : at::Tensor();
  const StepRhs<T> w_t = StepRhs<T>::transpose_of(w_hh, B);
  T* X = xg.data_ptr<T>();
  T* Y = y.data_ptr<T>();
  T* HS = h_state.data_ptr<T>();
  row_parts<T>(sizes, B, H, H, 16).forward(order, offsets, sizes, [&](int64_t, int64_t r0, int64_t lo, int64_t n) {
    if (!reset_rows(e.resets, lo + r0, n, H, HS + r0 * H)) {
      recurrent_gemm<T>(xg, lo, h_state, scaled, e.rscale, w_t, n, r0);
    }
    at::parallel_for(r0, r0 + n, grain(H), [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t r = lo + b;
        T* hp = HS + b * H;
        rnn_cell<T, TANH>(X + r * H, H);
        if (e.zoned_h) blend(Y + r * H, hp, X + r * H, e.mask_h ? e.mask_h + r * H : nullptr, e.p_h, H);
        std::memcpy(hp, Y + r * H, H * sizeof(T));
      }
    });
  });
  return {y, h_state};
}

// d pre-activation = d * act'(h): 1 - h^2 for tanh; relu: 0 where h <= 0 (torch's threshold_backward).
template <typename T, bool TANH>
void rnn_cell_backward(T* __restrict__ dx, const T* __restrict__ d, const T* __restrict__ h, int64_t H) {
  for (int64_t j = 0; j < H; ++j) dx[j] = TANH ? d[j] * (T(1) - h[j] * h[j]) : (h[j] <= T(0) ? T(0) : d[j]);
}

template <typename T, bool TANH>
std::vector<at::Tensor> rnn_backward_loop(const at::Tensor& h_new, const at::Tensor& w_hh, const at::Tensor& dy,
                                          const at::Tensor& dh_n, at::IntArrayRef order, at::IntArrayRef offsets,
                                          at::IntArrayRef sizes, const Extras<T>& e) {
  const int64_t N = h_new.size(0), H = h_new.size(1), B = dh_n.size(0);
  at::Tensor dxg = at::empty({N, H}, h_new.options());
  at::Tensor dh = copy_of(dh_n);
  at::Tensor d_cell = at::empty({B, H}, h_new.options()), keep = at::empty({B, H}, h_new.options());
  const T* HN = h_new.data_ptr<T>();
  const T* DY = dy.data_ptr<T>();
  const StepRhs<T> w_rhs(w_hh, B);
  T* DX = dxg.data_ptr<T>();
  T* DH = dh.data_ptr<T>();
  T* DCL = d_cell.data_ptr<T>();
  T* KP = keep.data_ptr<T>();
  const RowParts parts = row_parts<T>(sizes, B, H, H, 16);
  parts.backward(order, offsets, sizes, [&](int64_t, int64_t r0, const BackStep& step, int64_t n) {
    const int64_t lo = step.lo;
    at::parallel_for(r0, r0 + n, grain(H), [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t r = lo + b;
        const T* d = new_value_grad(DH + b * H, DY + r * H, e.zoned_h, e.mask_h ? e.mask_h + r * H : nullptr, e.p_h,
                                    DCL + b * H, KP + b * H, H);
        rnn_cell_backward<T, TANH>(DX + r * H, d, HN + r * H, H);
      }
    });
    recurrent_dh<T>(dh, dxg, lo, w_rhs, n, r0, e.rscale, nullptr, e.zoned_h ? KP : nullptr, e.resets);
  });
  return {dxg, dh};
}

template <typename T>
Extras<T> h_extras(const c10::optional<at::Tensor>& resets, const c10::optional<at::Tensor>& mask_h, double p_h,
                   const c10::optional<at::Tensor>& rscale) {
  return extras_of<T>(c10::nullopt, resets, mask_h, p_h, c10::nullopt, 0.0, rscale);
}

std::vector<at::Tensor> gru_forward(at::Tensor xg, const at::Tensor& w_hh, const c10::optional<at::Tensor>& b_hh,
                                    const at::Tensor& h0, at::IntArrayRef order, at::IntArrayRef offsets,
                                    at::IntArrayRef sizes, const c10::optional<at::Tensor>& resets,
                                    const c10::optional<at::Tensor>& mask_h, double p_h,
                                    const c10::optional<at::Tensor>& rscale) {
  check(xg, "xg");
  check(h0, "h0");
  return AT_DISPATCH_FLOATING_TYPES(xg.scalar_type(), "fastrnn_gru_forward", [&] {
    return gru_forward_loop<scalar_t>(xg, w_hh, b_hh, h0, order, offsets, sizes,
                                      h_extras<scalar_t>(resets, mask_h, p_h, rscale));
  });
}

std::vector<at::Tensor> gru_backward(const at::Tensor& gates, const at::Tensor& hn_seq, const at::Tensor& h0,
                                     const at::Tensor& w_hh, const at::Tensor& y, const at::Tensor& dy,
                                     const at::Tensor& dh_n, at::IntArrayRef order, at::IntArrayRef offsets,
                                     at::IntArrayRef sizes, const c10::optional<at::Tensor>& resets,
                                     const c10::optional<at::Tensor>& mask_h, double p_h,
                                     const c10::optional<at::Tensor>& rscale) {
  check(gates, "gates");
  check(y, "y");
  check(dy, "dy");
  return AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "fastrnn_gru_backward", [&] {
    return gru_backward_loop<scalar_t>(gates, hn_seq, h0, w_hh, y, dy, dh_n, order, offsets, sizes,
                                       h_extras<scalar_t>(resets, mask_h, p_h, rscale));
  });
}

std::vector<at::Tensor> rnn_forward(at::Tensor xg, const at::Tensor& w_hh, const at::Tensor& h0, bool tanh,
                                    at::IntArrayRef order, at::IntArrayRef offsets, at::IntArrayRef sizes,
                                    const c10::optional<at::Tensor>& resets, const c10::optional<at::Tensor>& mask_h,
                                    double p_h, const c10::optional<at::Tensor>& rscale) {
  check(xg, "xg");
  check(h0, "h0");
  return AT_DISPATCH_FLOATING_TYPES(xg.scalar_type(), "fastrnn_rnn_forward", [&] {
    auto e = h_extras<scalar_t>(resets, mask_h, p_h, rscale);
    if (tanh) return rnn_forward_loop<scalar_t, true>(xg, w_hh, h0, order, offsets, sizes, e);
    return rnn_forward_loop<scalar_t, false>(xg, w_hh, h0, order, offsets, sizes, e);
  });
}

std::vector<at::Tensor> rnn_backward(const at::Tensor& h_new, const at::Tensor& w_hh, bool tanh, const at::Tensor& dy,
                                     const at::Tensor& dh_n, at::IntArrayRef order, at::IntArrayRef offsets,
                                     at::IntArrayRef sizes, const c10::optional<at::Tensor>& resets,
                                     const c10::optional<at::Tensor>& mask_h, double p_h,
                                     const c10::optional<at::Tensor>& rscale) {
  check(h_new, "h");
  check(dy, "dy");
  return AT_DISPATCH_FLOATING_TYPES(h_new.scalar_type(), "fastrnn_rnn_backward", [&] {
    auto e = h_extras<scalar_t>(resets, mask_h, p_h, rscale);
    if (tanh) return rnn_backward_loop<scalar_t, true>(h_new, w_hh, dy, dh_n, order, offsets, sizes, e);
    return rnn_backward_loop<scalar_t, false>(h_new, w_hh, dy, dh_n, order, offsets, sizes, e);
  });
}

}  // namespace

void bind_gru_rnn(pybind11::module_& m) {
  m.def("gru_forward", &gru_forward, nogil);
  m.def("gru_backward", &gru_backward, nogil);
  m.def("rnn_forward", &rnn_forward, nogil);
  m.def("rnn_backward", &rnn_backward, nogil);
}
}  // namespace fastrnn_cpu
