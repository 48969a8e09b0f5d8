// The LayerNorm-LSTM's and LayerNorm-GRU's CPU time loops in C++ (with or without resets):
// the reference backend's Python loops (fastrnn/backends/reference_norm.py) step by step,
// with the same equations, inputs and saved tensors, one GEMM and one pass over the step's
// rows per step. The backward sums the LayerNorm gains' and biases' gradients over the rows.
// And the input projection's LayerNorm in place, for inference.
//
// A row-wise LayerNorm y = x_hat * w + b, x_hat = (x - mean) * rstd over D features, has the
// backward dx = rstd * (w dy - mean(w dy) - x_hat * mean(w dy x_hat)).

#include "cpu_loops.h"

namespace fastrnn_cpu {
namespace {

// Sums of one row in 16 partial sums (vector lanes the compiler keeps in registers), then
// added in double.
template <typename T, typename F>
double row_sum(int64_t D, F&& term) {
  T acc[16] = {};
  int64_t j = 0;
  for (; j + 16 <= D; j += 16) {
    for (int u = 0; u < 16; ++u) acc[u] += term(j + u);
  }
  double s = 0;
  for (int u = 0; u < 16; ++u) s += acc[u];
  for (; j < D; ++j) s += term(j);
  return s;
}

// mean and 1 / sqrt(var + eps) of one row (biased variance, two passes).
template <typename T>
void row_stats(const T* x, int64_t D, double eps, T& mean, T& rstd) {
  const T m = static_cast<T>(row_sum<T>(D, [&](int64_t j) { return x[j]; }) / D);
  const double v = row_sum<T>(D, [&](int64_t j) {
    const T d = x[j] - m;
    return d * d;
  });
  mean = m;
  rstd = static_cast<T>(1.0 / std::sqrt(v / D + eps));
}

// x_hat of a row into `hat`, from its statistics.
template <typename T>
void normalise(const T* __restrict__ x, T* __restrict__ hat, T mean, T rstd, int64_t D) {
  for (int64_t j = 0; j < D; ++j) hat[j] = (x[j] - mean) * rstd;
}

// dx = rstd * (wd - mean(wd) - hat * mean(wd * hat)), wd = w * dy given, written over wd.
template <typename T>
void norm_backward(T* __restrict__ wd, const T* __restrict__ hat, T rstd, int64_t D) {
  const double m0 = row_sum<T>(D, [&](int64_t j) { return wd[j]; });
  const double m1 = row_sum<T>(D, [&](int64_t j) { return wd[j] * hat[j]; });
  const T a = static_cast<T>(m0 / D), b = static_cast<T>(m1 / D);
  for (int64_t j = 0; j < D; ++j) wd[j] = rstd * (wd[j] - a - hat[j] * b);
}

// The per-row passes below take each row block as its own restrict pointer, so that the
// compiler vectorises them.

// x += LN(r) (= (r - mean) * rstd * w + b).
template <typename T>
void add_norm(T* __restrict__ x, const T* __restrict__ r, const T* __restrict__ w, const T* __restrict__ b, T mean,
              T rstd, int64_t D) {
  for (int64_t j = 0; j < D; ++j) x[j] += (r[j] - mean) * rstd * w[j] + b[j];
}

template <typename T>
void lstm_gates(T* __restrict__ gi, T* __restrict__ gf, T* __restrict__ gg, T* __restrict__ go,
                const T* __restrict__ cp, T* __restrict__ cn, int64_t H) {
  for (int64_t j = 0; j < H; ++j) {
    const T i = sig(gi[j]), f = sig(gf[j]), g = th(gg[j]), o = sig(go[j]);
    gi[j] = i;
    gf[j] = f;
    gg[j] = g;
    go[j] = o;
    cn[j] = f * cp[j] + i * g;
  }
}

// h = o * tanh(LN(c)).
template <typename T>
void lstm_out(T* __restrict__ h, const T* __restrict__ o, const T* __restrict__ c, const T* __restrict__ w,
              const T* __restrict__ b, T mean, T rstd, int64_t H) {
  for (int64_t j = 0; j < H; ++j) h[j] = o[j] * th((c[j] - mean) * rstd * w[j] + b[j]);
}

// The gradient reaching LN(c)'s output (dn), and w_c * dn.
template <typename T>
void lstm_dn(T* __restrict__ dn, T* __restrict__ wdn, const T* __restrict__ dh, const T* __restrict__ o,
             const T* __restrict__ ch, const T* __restrict__ w, const T* __restrict__ b, int64_t H) {
  for (int64_t j = 0; j < H; ++j) {
    const T tcn = th(ch[j] * w[j] + b[j]);
    dn[j] = dh[j] * o[j] * (T(1) - tcn * tcn);
    wdn[j] = w[j] * dn[j];
  }
}

// The gates' gradients (before their activations) and dc_prev, over dc, from dc + dc_ln.
template <typename T>
void lstm_gate_grads(T* __restrict__ di, T* __restrict__ df, T* __restrict__ dg, T* __restrict__ d_o,
                     T* __restrict__ dc, const T* __restrict__ dc_ln, const T* __restrict__ i_,
                     const T* __restrict__ f_, const T* __restrict__ g_, const T* __restrict__ o_,
                     const T* __restrict__ cp, const T* __restrict__ dh, const T* __restrict__ ch,
                     const T* __restrict__ w, const T* __restrict__ b, int64_t H) {
  for (int64_t j = 0; j < H; ++j) {
    const T i = i_[j], f = f_[j], g = g_[j], o = o_[j];
    const T dct = dc[j] + dc_ln[j];
    const T tcn = th(ch[j] * w[j] + b[j]);
    di[j] = dct * g * i * (T(1) - i);
    df[j] = dct * cp[j] * f * (T(1) - f);
    dg[j] = dct * i * (T(1) - g * g);
    d_o[j] = dh[j] * tcn * o * (T(1) - o);
    dc[j] = dct * f;
  }
}

template <typename T>
void mul_into(T* __restrict__ out, const T* __restrict__ a, const T* __restrict__ b, int64_t D) {
  for (int64_t j = 0; j < D; ++j) out[j] = a[j] * b[j];
}

// One LayerNorm-GRU row: LN(r) per block, the gates over x, h' = n + z (h - n).
template <typename T>
void gru_row(T* __restrict__ xr, T* __restrict__ xz, T* __restrict__ xn, const T* __restrict__ rr,
             const T* __restrict__ rz, const T* __restrict__ rn, const T* __restrict__ wr, const T* __restrict__ wz,
             const T* __restrict__ wn, const T* __restrict__ br, const T* __restrict__ bz, const T* __restrict__ bn,
             T mean, T rstd, const T* __restrict__ hp, T* __restrict__ h, int64_t H) {
  for (int64_t j = 0; j < H; ++j) {
    const T rg = sig(xr[j] + (rr[j] - mean) * rstd * wr[j] + br[j]);
    const T z = sig(xz[j] + (rz[j] - mean) * rstd * wz[j] + bz[j]);
    const T n = th(xn[j] + rg * ((rn[j] - mean) * rstd * wn[j] + bn[j]));
    xr[j] = rg;
    xz[j] = z;
    xn[j] = n;
    h[j] = n + z * (hp[j] - n);
  }
}

// One LayerNorm-GRU row's gradients: dxg (r, z, n), w_r * (the gradient of LN(r)'s output)
// into dr, and the direct part dh * z of dh_prev.
template <typename T>
void gru_grads(T* __restrict__ dxr, T* __restrict__ dxz, T* __restrict__ dxn, T* __restrict__ drr,
               T* __restrict__ drz, T* __restrict__ drn, T* __restrict__ direct, const T* __restrict__ rg_,
               const T* __restrict__ z_, const T* __restrict__ n_, const T* __restrict__ hat_n,
               const T* __restrict__ wr, const T* __restrict__ wz, const T* __restrict__ wn, const T* __restrict__ bn,
               const T* __restrict__ dh, const T* __restrict__ hp, int64_t H) {
  for (int64_t j = 0; j < H; ++j) {
    const T rg = rg_[j], z = z_[j], n = n_[j];
    const T ln_n = hat_n[j] * wn[j] + bn[j];
    const T dn = dh[j] * (T(1) - z) * (T(1) - n * n);
    const T dz = dh[j] * (hp[j] - n) * z * (T(1) - z);
    const T drg = dn * ln_n * rg * (T(1) - rg);
    dxr[j] = drg;
    dxz[j] = dz;
    dxn[j] = dn;
    drr[j] = wr[j] * drg;
    drz[j] = wz[j] * dz;
    drn[j] = wn[j] * dn * rg;
    direct[j] = dh[j] * z;
  }
}

// The start of a step for the state's rows [b0, b0 + bs) (the step's rows from xg row lo):
// the resets zero those rows of the states (c too where given), then the recurrent
// pre-activation r = b_hh + h @ W_hh^T goes into r_seq rows [r_lo + b0, r_lo + b0 + bs).
// Returns r_lo: the step's own rows (lo) when r_seq keeps every step for the backward, else 0
// (r_seq is one state-sized buffer).
template <typename T>
int64_t recurrent(const at::Tensor& r_seq, bool save, int64_t lo, const T* BH, const at::Tensor& h_state,
                  const StepRhs<T>& w_t, int64_t bs, int64_t b0, const bool* resets, T* HS, T* CS = nullptr) {
  const int64_t H = h_state.size(1), G = r_seq.size(1), r_lo = save ? lo : 0;
  const bool all_cut = reset_rows(resets, lo + b0, bs, H, HS + b0 * H, CS != nullptr ? CS + b0 * H : nullptr);
  T* R = r_seq.data_ptr<T>() + (r_lo + b0) * G;
  for (int64_t b = 0; b < bs; ++b) {
    if (BH != nullptr) {
      std::memcpy(R + b * G, BH, G * sizeof(T));
    } else {
      std::fill(R + b * G, R + (b + 1) * G, T(0));
    }
  }
  if (!all_cut) recurrent_gemm<T>(r_seq, r_lo, h_state, at::Tensor(), nullptr, w_t, bs, b0);  // (all reset: h = 0)
  return r_lo;
}

// The LayerNorm gains' and biases' gradients, summed over the rows: one double sum per part
// (its rows in the loop's order), the parts then added in part order. acc: (parts, 2 * width).
inline at::Tensor param_sums(const at::Tensor& acc, int64_t width, const at::Tensor& like) {
  return acc.sum(0).view({2, width}).to(like.scalar_type());
}

// acc[j] += hat[j] * d[j] and acc[width + j] += d[j], j < width (the gain's and the bias's
// rows of one LayerNorm), in double.
template <typename T>
inline void add_param_grads(double* __restrict__ acc, const T* __restrict__ hat, const T* __restrict__ d,
                            int64_t width) {
  for (int64_t j = 0; j < width; ++j) {
    acc[j] += static_cast<double>(hat[j]) * static_cast<double>(d[j]);
    acc[width + j] += static_cast<double>(d[j]);
  }
}

template <typename T>
std::vector<at::Tensor> ln_lstm_forward_loop(at::Tensor xg, const at::Tensor& w_hh,
                                             const c10::optional<at::Tensor>& b_hh, const at::Tensor& h0,
                                             const at::Tensor& c0, const at::Tensor& params, at::IntArrayRef order,
                                             at::IntArrayRef offsets, at::IntArrayRef sizes, const bool* resets,
                                             double eps, bool save) {
  const int64_t N = xg.size(0), H = c0.size(1), B = c0.size(0), G = 4 * H;
  at::Tensor y = at::empty({N, H}, xg.options());
  at::Tensor c_seq = at::empty({N, H}, xg.options());
  at::Tensor r_seq = at::empty({save ? N : B, G}, xg.options());
  at::Tensor h_state = copy_of(h0), c_state = copy_of(c0);
  const StepRhs<T> w_t = StepRhs<T>::transpose_of(w_hh, B);
  T* X = xg.data_ptr<T>();
  T* Y = y.data_ptr<T>();
  T* C = c_seq.data_ptr<T>();
  T* RS = r_seq.data_ptr<T>();
  T* HS = h_state.data_ptr<T>();
  T* CS = c_state.data_ptr<T>();
  const T* P = params.data_ptr<T>();
  const T *w_r = P, *b_r = P + G, *w_c = P + 2 * G, *b_c = P + 2 * G + H;
  const T* BH = b_hh.has_value() ? b_hh->data_ptr<T>() : nullptr;
  row_parts<T>(sizes, B, H, G, 32).forward(order, offsets, sizes, [&](int64_t, int64_t r0, int64_t lo, int64_t n) {
    const int64_t r_lo = recurrent<T>(r_seq, save, lo, BH, h_state, w_t, n, r0, resets, HS, CS);
    at::parallel_for(r0, r0 + n, grain(G), [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t r = lo + b;
        T* x = X + r * G;
        const T* rr = RS + (r_lo + b) * G;
        T mean, rstd;
        row_stats(rr, G, eps, mean, rstd);
        add_norm(x, rr, w_r, b_r, mean, rstd, G);
        T* cn = C + r * H;
        lstm_gates(x, x + H, x + 2 * H, x + 3 * H, CS + b * H, cn, H);
        T mc, rc;
        row_stats(cn, H, eps, mc, rc);
        T* h = Y + r * H;
        lstm_out(h, x + 3 * H, cn, w_c, b_c, mc, rc, H);
        std::memcpy(CS + b * H, cn, H * sizeof(T));
        std::memcpy(HS + b * H, h, H * sizeof(T));
      }
    });
  });
  return {y, h_state, c_state, c_seq, r_seq};
}

template <typename T>
std::vector<at::Tensor> ln_lstm_backward_loop(const at::Tensor& gates, const at::Tensor& r_seq,
                                              const at::Tensor& c_seq, const at::Tensor& c0, const at::Tensor& w_hh,
                                              const at::Tensor& dy, const at::Tensor& dh_n, const at::Tensor& dc_n,
                                              const at::Tensor& params, at::IntArrayRef order,
                                              at::IntArrayRef offsets, at::IntArrayRef sizes, const bool* resets,
                                              double eps) {
  const int64_t N = gates.size(0), H = c0.size(1), B = c0.size(0), G = 4 * H;
  at::Tensor dgates = at::empty({N, G}, gates.options());
  at::Tensor dr = at::empty({N, G}, gates.options());
  at::Tensor dn_rows = at::empty({B, H}, gates.options());  // the gradient at LN(c)'s output
  at::Tensor dh = copy_of(dh_n), dc = copy_of(dc_n);
  at::Tensor c_hat = at::empty({B, H}, gates.options()), r_hat = at::empty({B, G}, gates.options());
  at::Tensor w_dn = at::empty({B, H}, gates.options());
  at::Tensor zero = at::zeros({H}, gates.options());
  const T* GA = gates.data_ptr<T>();
  const T* RS = r_seq.data_ptr<T>();
  const T* C = c_seq.data_ptr<T>();
  const T* C0 = c0.data_ptr<T>();
  const T* DY = dy.data_ptr<T>();
  const T* Z = zero.data_ptr<T>();
  const StepRhs<T> w_rhs(w_hh, B);
  const T* P = params.data_ptr<T>();
  const T *w_r = P, *w_c = P + 2 * G, *b_c = P + 2 * G + H;
  T* DG = dgates.data_ptr<T>();
  T* DR = dr.data_ptr<T>();
  T* DN = dn_rows.data_ptr<T>();
  T* DH = dh.data_ptr<T>();
  T* DC = dc.data_ptr<T>();
  T* CH = c_hat.data_ptr<T>();
  T* RH = r_hat.data_ptr<T>();
  T* WD = w_dn.data_ptr<T>();
  const RowParts parts = row_parts<T>(sizes, B, H, G, 32);
  // per part: LN(r)'s gain and bias sums (2G), then LN(c)'s (2H)
  at::Tensor acc_r = at::zeros({parts.count(), 2 * G}, gates.options().dtype(at::kDouble));
  at::Tensor acc_c = at::zeros({parts.count(), 2 * H}, gates.options().dtype(at::kDouble));
  double* const ACC_R = acc_r.data_ptr<double>();
  double* const ACC_C = acc_c.data_ptr<double>();
  parts.backward(order, offsets, sizes, [&](int64_t part, int64_t r0, const BackStep& step, int64_t n) {
    double* AR = ACC_R + part * 2 * G;
    double* AC = ACC_C + part * 2 * H;
    const int64_t lo = step.lo, prev_lo = step.prev_lo, prev_bs = step.prev_bs;
    at::parallel_for(r0, r0 + n, grain(G), [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t r = lo + b;
        T* dhr = DH + b * H;
        T* dcr = DC + b * H;
        add_into(dhr, DY + r * H, H);
        const T* g = GA + r * G;
        // h = o * tanh(LN(c)): the gradient reaching LN(c)'s output, then c's.
        const T* cn = C + r * H;
        T mc, rc;
        row_stats(cn, H, eps, mc, rc);
        T* ch = CH + b * H;
        normalise(cn, ch, mc, rc, H);
        T* wdn = WD + b * H;
        lstm_dn(DN + b * H, wdn, dhr, g + 3 * H, ch, w_c, b_c, H);
        norm_backward(wdn, ch, rc, H);
        const T* cp = entering_row(C, C0, Z, resets != nullptr && resets[r], b, prev_lo, prev_bs, H);
        T* d = DG + r * G;
        lstm_gate_grads(d, d + H, d + 2 * H, d + 3 * H, dcr, wdn, g, g + H, g + 2 * H, g + 3 * H, cp, dhr, ch, w_c,
                        b_c, H);
        // The gates' gradient through LN(r) to r.
        const T* rr = RS + r * G;
        T mr, rstd;
        row_stats(rr, G, eps, mr, rstd);
        T* rh = RH + b * G;
        normalise(rr, rh, mr, rstd, G);
        T* drr = DR + r * G;
        mul_into(drr, w_r, d, G);
        norm_backward(drr, rh, rstd, G);
      }
    });
    for (int64_t b = r0; b < r0 + n; ++b) {  // (after the parallel rows: the parameters' sums, in row order)
      add_param_grads(AR, RH + b * G, DG + (lo + b) * G, G);
      add_param_grads(AC, CH + b * H, DN + b * H, H);
    }
    recurrent_dh<T>(dh, dr, lo, w_rhs, n, r0, nullptr, nullptr, nullptr, resets, DC);
  });
  // (rows as params: LN(r)'s gains, its biases, LN(c)'s gain, its bias)
  at::Tensor dparams = at::cat({param_sums(acc_r, G, gates).view({8, H}), param_sums(acc_c, H, gates)});
  return {dgates, dr, dh, dc, dparams};
}

template <typename T>
std::vector<at::Tensor> ln_gru_forward_loop(at::Tensor xg, const at::Tensor& w_hh, const c10::optional<at::Tensor>& b_hh,
                                            const at::Tensor& h0, const at::Tensor& params, at::IntArrayRef order,
                                            at::IntArrayRef offsets, at::IntArrayRef sizes, const bool* resets,
                                            double eps, bool save) {
  const int64_t N = xg.size(0), H = h0.size(1), B = h0.size(0), G = 3 * H;
  at::Tensor y = at::empty({N, H}, xg.options());
  at::Tensor r_seq = at::empty({save ? N : B, G}, xg.options());
  at::Tensor h_state = copy_of(h0);
  const StepRhs<T> w_t = StepRhs<T>::transpose_of(w_hh, B);
  T* X = xg.data_ptr<T>();
  T* Y = y.data_ptr<T>();
  T* RS = r_seq.data_ptr<T>();
  T* HS = h_state.data_ptr<T>();
  const T* P = params.data_ptr<T>();
  const T *w_r = P, *b_r = P + G;
  const T* BH = b_hh.has_value() ? b_hh->data_ptr<T>() : nullptr;
  row_parts<T>(sizes, B, H, G, 32).forward(order, offsets, sizes, [&](int64_t, int64_t r0, int64_t lo, int64_t n) {
    const int64_t r_lo = recurrent<T>(r_seq, save, lo, BH, h_state, w_t, n, r0, resets, HS);
    at::parallel_for(r0, r0 + n, grain(G), [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t r = lo + b;
        T* x = X + r * G;
        const T* rr = RS + (r_lo + b) * G;
        T mean, rstd;
        row_stats(rr, G, eps, mean, rstd);
        T* h = Y + r * H;
        gru_row(x, x + H, x + 2 * H, rr, rr + H, rr + 2 * H, w_r, w_r + H, w_r + 2 * H, b_r, b_r + H, b_r + 2 * H,
                mean, rstd, HS + b * H, h, H);
        std::memcpy(HS + b * H, h, H * sizeof(T));
      }
    });
  });
  return {y, h_state, r_seq};
}

template <typename T>
std::vector<at::Tensor> ln_gru_backward_loop(const at::Tensor& gates, const at::Tensor& r_seq, const at::Tensor& h0,
                                             const at::Tensor& w_hh, const at::Tensor& y, const at::Tensor& dy,
                                             const at::Tensor& dh_n, const at::Tensor& params, at::IntArrayRef order,
                                             at::IntArrayRef offsets, at::IntArrayRef sizes, const bool* resets,
                                             double eps) {
  const int64_t N = gates.size(0), H = h0.size(1), B = h0.size(0), G = 3 * H;
  at::Tensor dxg = at::empty({N, G}, gates.options());
  at::Tensor dr = at::empty({N, G}, gates.options());
  at::Tensor dh = copy_of(dh_n);
  at::Tensor direct = at::empty({B, H}, gates.options());
  at::Tensor r_hat = at::empty({B, G}, gates.options());
  at::Tensor zero = at::zeros({H}, gates.options());
  const T* GA = gates.data_ptr<T>();
  const T* RS = r_seq.data_ptr<T>();
  const T* H0 = h0.data_ptr<T>();
  const T* Y = y.data_ptr<T>();
  const T* DY = dy.data_ptr<T>();
  const T* Z = zero.data_ptr<T>();
  const StepRhs<T> w_rhs(w_hh, B);
  const T* P = params.data_ptr<T>();
  const T *w_r = P, *b_r = P + G;
  T* DX = dxg.data_ptr<T>();
  T* DR = dr.data_ptr<T>();
  T* DH = dh.data_ptr<T>();
  T* DIR = direct.data_ptr<T>();
  T* RH = r_hat.data_ptr<T>();
  at::Tensor d_out = at::empty({B, G}, gates.options());  // the gradient at LN(r)'s output
  T* DO = d_out.data_ptr<T>();
  const RowParts parts = row_parts<T>(sizes, B, H, G, 32);
  at::Tensor acc_r = at::zeros({parts.count(), 2 * G}, gates.options().dtype(at::kDouble));
  double* const ACC_R = acc_r.data_ptr<double>();
  parts.backward(order, offsets, sizes, [&](int64_t part, int64_t r0, const BackStep& step, int64_t n) {
    double* AR = ACC_R + part * 2 * G;
    const int64_t lo = step.lo, prev_lo = step.prev_lo, prev_bs = step.prev_bs;
    at::parallel_for(r0, r0 + n, grain(G), [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t r = lo + b;
        T* dhr = DH + b * H;
        add_into(dhr, DY + r * H, H);
        const T* hp = entering_row(Y, H0, Z, resets != nullptr && resets[r], b, prev_lo, prev_bs, H);
        const T* rr = RS + r * G;
        T mr, rstd;
        row_stats(rr, G, eps, mr, rstd);
        T* rh = RH + b * G;
        normalise(rr, rh, mr, rstd, G);
        const T* g = GA + r * G;
        T* dx = DX + r * G;
        T* drr = DR + r * G;
        gru_grads(dx, dx + H, dx + 2 * H, drr, drr + H, drr + 2 * H, DIR + b * H, g, g + H, g + 2 * H, rh + 2 * H,
                  w_r, w_r + H, w_r + 2 * H, b_r + 2 * H, dhr, hp, H);
        norm_backward(drr, rh, rstd, G);
      }
    });
    for (int64_t b = r0; b < r0 + n; ++b) {  // (after the parallel rows: the parameters' sums, in row order)
      // LN(r)'s output enters r and z as they are and n times the reset gate
      const T* dx = DX + (lo + b) * G;
      const T* rg = GA + (lo + b) * G;
      T* d = DO + b * G;
      std::memcpy(d, dx, 2 * H * sizeof(T));
      for (int64_t j = 0; j < H; ++j) d[2 * H + j] = dx[2 * H + j] * rg[j];
      add_param_grads(AR, RH + b * G, d, G);
    }
    recurrent_dh<T>(dh, dr, lo, w_rhs, n, r0, nullptr, DIR, nullptr, resets);
  });
  at::Tensor dparams = param_sums(acc_r, G, gates).view({6, H});  // (LN(r)'s gains, then its biases)
  return {dxg, dr, dh, dparams};
}

// x (rows, D) = LN(x + pre_bias) * w + b, row by row in place: the input
// projection's LayerNorm without autograd, in the pass that adds the projection's bias (the
// out-of-place form writes two fresh (rows, D) tensors and copies the bias into a third).
template <typename T>
void layer_norm_rows_loop(at::Tensor& x, const T* pre, const T* w, const T* b, double eps) {
  const int64_t rows = x.size(0), D = x.size(1);
  T* X = x.data_ptr<T>();
  at::parallel_for(0, rows, grain(D), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      T* row = X + r * D;
      if (pre != nullptr) add_into(row, pre, D);
      T mean, rstd;
      row_stats(row, D, eps, mean, rstd);
      for (int64_t j = 0; j < D; ++j) row[j] = (row[j] - mean) * rstd * w[j] + b[j];
    }
  });
}

void layer_norm_rows_(at::Tensor x, const c10::optional<at::Tensor>& pre_bias, const at::Tensor& weight,
                      const at::Tensor& bias, double eps) {
  check(x, "x");
  TORCH_CHECK(x.dim() == 2, "fastrnn cpu loops: layer_norm_rows_ takes (rows, features)");
  const int64_t D = x.size(1);
  for (const at::Tensor* t : {&weight, &bias, pre_bias ? &*pre_bias : nullptr}) {
    if (t == nullptr) continue;
    check(*t, "a LayerNorm vector");
    TORCH_CHECK(t->numel() == D && t->scalar_type() == x.scalar_type(),
                "fastrnn cpu loops: layer_norm_rows_'s vectors need x's features and dtype");
  }
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fastrnn_layer_norm_rows", [&] {
    layer_norm_rows_loop<scalar_t>(x, pre_bias ? pre_bias->data_ptr<scalar_t>() : nullptr, weight.data_ptr<scalar_t>(),
                                   bias.data_ptr<scalar_t>(), eps);
  });
}

const bool* resets_of(const c10::optional<at::Tensor>& resets) {
  return resets.has_value() ? resets->data_ptr<bool>() : nullptr;
}

std::vector<at::Tensor> ln_lstm_forward(at::Tensor xg, const at::Tensor& w_hh, const c10::optional<at::Tensor>& b_hh,
                                        const at::Tensor& h0, const at::Tensor& c0, const at::Tensor& params,
                                        at::IntArrayRef order, at::IntArrayRef offsets, at::IntArrayRef sizes,
                                        const c10::optional<at::Tensor>& resets, double eps, bool save) {
  check(xg, "xg");
  check(params, "params");
  return AT_DISPATCH_FLOATING_TYPES(xg.scalar_type(), "fastrnn_ln_lstm_forward", [&] {
    return ln_lstm_forward_loop<scalar_t>(xg, w_hh, b_hh, h0, c0, params, order, offsets, sizes, resets_of(resets),
                                          eps, save);
  });
}

std::vector<at::Tensor> ln_lstm_backward(const at::Tensor& gates, const at::Tensor& r_seq, const at::Tensor& c_seq,
                                         const at::Tensor& c0, const at::Tensor& w_hh, const at::Tensor& dy,
                                         const at::Tensor& dh_n, const at::Tensor& dc_n, const at::Tensor& params,
                                         at::IntArrayRef order, at::IntArrayRef offsets, at::IntArrayRef sizes,
                                         const c10::optional<at::Tensor>& resets, double eps) {
  check(gates, "gates");
  check(dy, "dy");
  return AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "fastrnn_ln_lstm_backward", [&] {
    return ln_lstm_backward_loop<scalar_t>(gates, r_seq, c_seq, c0, w_hh, dy, dh_n, dc_n, params, order, offsets,
                                           sizes, resets_of(resets), eps);
  });
}

std::vector<at::Tensor> ln_gru_forward(at::Tensor xg, const at::Tensor& w_hh, const c10::optional<at::Tensor>& b_hh,
                                       const at::Tensor& h0, const at::Tensor& params, at::IntArrayRef order,
                                       at::IntArrayRef offsets, at::IntArrayRef sizes,
                                       const c10::optional<at::Tensor>& resets, double eps, bool save) {
  check(xg, "xg");
  check(params, "params");
  return AT_DISPATCH_FLOATING_TYPES(xg.scalar_type(), "fastrnn_ln_gru_forward", [&] {
    return ln_gru_forward_loop<scalar_t>(xg, w_hh, b_hh, h0, params, order, offsets, sizes, resets_of(resets), eps,
                                         save);
  });
}

std::vector<at::Tensor> ln_gru_backward(const at::Tensor& gates, const at::Tensor& r_seq, const at::Tensor& h0,
                                        const at::Tensor& w_hh, const at::Tensor& y, const at::Tensor& dy,
                                        const at::Tensor& dh_n, const at::Tensor& params, at::IntArrayRef order,
                                        at::IntArrayRef offsets, at::IntArrayRef sizes,
                                        const c10::optional<at::Tensor>& resets, double eps) {
  check(gates, "gates");
  check(dy, "dy");
  return AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "fastrnn_ln_gru_backward", [&] {
    return ln_gru_backward_loop<scalar_t>(gates, r_seq, h0, w_hh, y, dy, dh_n, params, order, offsets, sizes,
                                          resets_of(resets), eps);
  });
}

}  // namespace

void bind_norm(pybind11::module_& m) {
  m.def("ln_lstm_forward", &ln_lstm_forward, nogil);
  m.def("ln_lstm_backward", &ln_lstm_backward, nogil);
  m.def("ln_gru_forward", &ln_gru_forward, nogil);
  m.def("ln_gru_backward", &ln_gru_backward, nogil);
  m.def("layer_norm_rows_", &layer_norm_rows_, nogil);
}
}  // namespace fastrnn_cpu
