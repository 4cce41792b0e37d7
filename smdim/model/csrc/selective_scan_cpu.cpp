// Fused CPU selective scan (Mamba's SSM recurrence), forward and backward: the CPU counterpart of
// mamba_ssm's selective_scan CUDA kernel. Built on first use by smdim/model/scan_cpu.py.
//
//   dt_l = softplus(delta_l + delta_bias)   (or delta_l + delta_bias)
//   h_l  = exp(dt_l A) * h_{l-1} + dt_l u_l B_l          per channel d, state width N
//   h_{-1} = h0 (an optional initial state; zero without one)
// optionally in segments: the recurrence restarts every `seg` positions, from that segment's h0.
//   out_l = (<C_l, h_l> + D u_l) * silu(z_l)
//
// One pass over L per (batch, channel) with the N-wide state in vector registers: N is split into
// NV packs of 32 bytes (GCC vector extensions: AVX registers when built with -mavx2, pairs of SSE
// registers otherwise), so exp(dt A) and the update run 8 floats at a time without relying on the
// auto-vectoriser. The backward recomputes one channel's decays and states into a per-thread
// scratch of (L + 1) x N (cache-resident), then runs the recurrence in reverse: nothing of size
// (L, D, N) is ever allocated. Work is split over batch x channels with at::parallel_for
// (OpenMP, honours torch.set_num_threads). The last states are differentiable: the backward takes
// their gradient (dlast) and returns the initial states' (dh0), so scans can be chained, as block
// diffusion's block-causal Mamba does with one segment per block (smdim/model/block_mamba.py):
// many short scans in one long row, without a short row's fixed costs. The caller pads N to a multiple of 8 with A = B = C = 0
// (those states stay 0 and get zero gradients).
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <optional>
#include <vector>

namespace {

// One register's worth of floats: 8 with AVX (-mavx2 builds), 4 with the SSE2 baseline (wider
// generic vectors would be split and partly scalarised there). float64 (the tests) always uses 4.
#ifdef __AVX__
constexpr int kFloatBytes = 32;
#else
constexpr int kFloatBytes = 16;
#endif
template <typename T>
struct Pack;
template <>
struct Pack<float> {
  typedef float V __attribute__((vector_size(kFloatBytes)));
  static constexpr int W = kFloatBytes / 4;
};
template <>
struct Pack<double> {
  typedef double V __attribute__((vector_size(32)));
  static constexpr int W = 4;
};
typedef int32_t v8i __attribute__((vector_size(kFloatBytes)));  // float lanes as int32

template <typename V>
static inline __attribute__((always_inline)) V load(const void* p) {
  V v;
  std::memcpy(&v, p, sizeof(V));
  return v;
}
template <typename V>
static inline __attribute__((always_inline)) void store(void* p, V v) {
  std::memcpy(p, &v, sizeof(V));
}
template <typename V>
static inline __attribute__((always_inline)) auto hsum(V v) {
  auto s = v[0];
  for (int i = 1; i < int(sizeof(V) / sizeof(s)); ++i) s += v[i];
  return s;
}

// Cephes expf on a pack: x = k ln2 + r with |r| <= ln2 / 2, exp(r) by a degree-5 polynomial, 2^k
// put into the exponent bits. Max error ~1 ulp in the normal range (no -ffast-math needed, which
// would also loosen every other operation here); exactly 0 below -87.3, as std::exp rounds there.
static inline __attribute__((always_inline)) Pack<float>::V exp_pack(Pack<float>::V x) {
  typedef Pack<float>::V V;
  const V lo = V{} - 87.3365447504f, hi = V{} + 88.3762626647949f;
  V xc = x < lo ? lo : x;
  xc = xc > hi ? hi : xc;
  const float shift = 12582912.0f;  // 1.5 * 2^23: adding it rounds to the nearest integer
  V k = (xc * 1.44269504088896341f + shift) - shift;
  V r = xc - k * 0.693359375f;
  r = r - k * -2.12194440e-4f;
  V p = V{} + 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * (r * r) + r + 1.0f;
  v8i bits = reinterpret_cast<v8i&>(p) + (__builtin_convertvector(k, v8i) << 23);
  V e = reinterpret_cast<V&>(bits);
  e = x < lo ? V{} : e;
  e = x > hi ? V{} + INFINITY : e;
  return x != x ? x : e;  // NaN stays NaN (the clamps above would hide it)
}
// Cephes logf on a pack (x > 0, finite): x = m 2^e with m in [sqrt(1/2), sqrt(2)), log(m) by a
// degree-8 polynomial; ~1 ulp.
static inline __attribute__((always_inline)) Pack<float>::V log_pack(Pack<float>::V x) {
  typedef Pack<float>::V V;
  v8i xi = reinterpret_cast<v8i&>(x);
  v8i e = ((xi >> 23) & 0xff) - 126;
  xi = (xi & 0x807fffff) | 0x3f000000;  // m in [0.5, 1)
  V m = reinterpret_cast<V&>(xi);
  V fe = __builtin_convertvector(e, V);
  const auto small = m < 0.707106781186547524f;
  fe = small ? fe - 1.0f : fe;
  m = small ? m + m - 1.0f : m - 1.0f;
  const V z = m * m;
  V y = V{} + 7.0376836292e-2f;
  y = y * m - 1.1514610310e-1f;
  y = y * m + 1.1676998740e-1f;
  y = y * m - 1.2420140846e-1f;
  y = y * m + 1.4249322787e-1f;
  y = y * m - 1.6668057665e-1f;
  y = y * m + 2.0000714765e-1f;
  y = y * m - 2.4999993993e-1f;
  y = y * m + 3.3333331174e-1f;
  y = y * m * z;
  y += fe * -2.12194440e-4f;
  y += z * -0.5f;
  return m + y + fe * 0.693359375f;
}

// torch.nn.functional.softplus (beta 1, threshold 20): log1p(exp(x)), with log1p(t) as
// log(1 + t) * t / ((1 + t) - 1), which cancels the rounding of 1 + t (Goldberg).
static inline __attribute__((always_inline)) Pack<float>::V softplus_pack(Pack<float>::V x) {
  typedef Pack<float>::V V;
  const V t = exp_pack(x), v = t + 1.0f, w = v - 1.0f;
  V r = log_pack(v) * (t / w);
  r = w == 0.0f ? t : r;
  return (x > 20.0f) | (x != x) ? x : r;  // past the threshold, and NaN, pass through
}

// float64 (the tests' dtype): libm per lane, exact to rounding.
static inline Pack<double>::V exp_pack(Pack<double>::V x) {
  Pack<double>::V e;
  for (int i = 0; i < 4; ++i) e[i] = std::exp(x[i]);
  return e;
}
static inline Pack<double>::V softplus_pack(Pack<double>::V x) {
  Pack<double>::V r;
  for (int i = 0; i < 4; ++i) r[i] = x[i] > 20.0 ? x[i] : std::log1p(std::exp(x[i]));
  return r;
}

template <typename V>
static inline __attribute__((always_inline)) V sigmoid_pack(V x) {
  return 1.0 / (exp_pack(-x) + 1.0);
}

// out[l] = f(in[l] + add) for l < L, a pack at a time (the tail through a zero-padded pack).
template <typename T, typename F>
static inline void map_row(int64_t L, const T* __restrict in, T add, T* __restrict out, F f) {
  typedef typename Pack<T>::V V;
  constexpr int W = Pack<T>::W;
  int64_t l = 0;
  for (; l + W <= L; l += W) store(out + l, f(load<V>(in + l) + add));
  if (l < L) {
    T buf[W] = {};
    std::memcpy(buf, in + l, (L - l) * sizeof(T));
    const V r = f(load<V>(buf) + add);
    std::memcpy(out + l, &r, (L - l) * sizeof(T));
  }
}

template <typename T>
struct Inputs {
  const T *u, *delta, *A, *B, *C, *D, *z, *bias;  // D, z, bias: nullptr when absent
  const T* h0;  // (batch, dim, nseg, N) initial states; nullptr = zero
  int64_t seg, nseg;  // the scan restarts every seg positions: nseg = ceil(L / seg) segments
  int64_t batch, dim, L, N;
  bool softplus;
};

// dt for one row (L,), into dts.
template <typename T>
static inline void row_dt(const Inputs<T>& p, const T* __restrict dl, T bias, T* __restrict dts) {
  typedef typename Pack<T>::V V;
  if (p.softplus)
    map_row(p.L, dl, bias, dts, [](V x) { return softplus_pack(x); });
  else
    map_row(p.L, dl, bias, dts, [](V x) { return x; });
}

// The segmented recurrence of one (b, d) row, shared by the forward and the backward's pass 1 (which
// must recompute exactly the forward's states). dts: (L,) dt of the row. Forward (!Keep): ys (L,)
// gets <C_l, h_l> + D u_l and last (the row's (nseg, N)) each segment's last state. Backward (Keep):
// ys gets <C_l, h_l>, as (L, N) the decays and row l + 1 of hs (L + 1, N) the state h_l.
template <typename T, int NV, bool Keep>
static inline void scan_row(const Inputs<T>& p, int64_t b, int64_t d, const T* __restrict dts,
                            T* __restrict ys, T* __restrict last, T* __restrict as,
                            T* __restrict hs) {
  typedef typename Pack<T>::V V;
  constexpr int W = Pack<T>::W;
  const int64_t N = NV * W, L = p.L;
  const int64_t srow = (b * p.dim + d) * p.nseg * N;  // this row's (nseg, N) states
  const T* __restrict u = p.u + (b * p.dim + d) * L;
  const T* __restrict Bm = p.B + b * L * N;  // (L, N)
  const T* __restrict Cm = p.C + b * L * N;  // (L, N)
  const T Dd = p.D ? p.D[d] : T(0);
  V A[NV], h[NV];
  for (int j = 0; j < NV; ++j) A[j] = load<V>(p.A + d * N + j * W);
  for (int64_t s = 0; s < p.nseg; ++s) {
    for (int j = 0; j < NV; ++j) h[j] = p.h0 ? load<V>(p.h0 + srow + s * N + j * W) : V{};
    for (int64_t l = s * p.seg, l1 = std::min(L, l + p.seg); l < l1; ++l) {
      const T dt = dts[l], x = dt * u[l];
      V y = V{};
      for (int j = 0; j < NV; ++j) {
        const V a = exp_pack(A[j] * dt);
        h[j] = a * h[j] + load<V>(Bm + l * N + j * W) * x;
        if constexpr (Keep) {
          store(as + l * N + j * W, a);
          store(hs + (l + 1) * N + j * W, h[j]);
        }
        y += h[j] * load<V>(Cm + l * N + j * W);
      }
      if constexpr (Keep)
        ys[l] = hsum(y);
      else
        ys[l] = hsum(y) + Dd * u[l];
    }
    if constexpr (!Keep)
      for (int j = 0; j < NV; ++j) store(last + srow + s * N + j * W, h[j]);
  }
}

// Forward of one (b, d) row: out (L,) and each segment's last state (nseg, N). dts: (L,) scratch.
template <typename T, int NV>
void forward_row(const Inputs<T>& p, int64_t b, int64_t d, T* __restrict out, T* __restrict last,
                 T* __restrict dts) {
  typedef typename Pack<T>::V V;
  const int64_t L = p.L, row = (b * p.dim + d) * L;
  row_dt(p, p.delta + row, p.bias ? p.bias[d] : T(0), dts);
  scan_row<T, NV, false>(p, b, d, dts, out + row, last, nullptr, nullptr);
  if (p.z) {  // out *= silu(z), via dts (free now) for the silu values
    map_row(L, p.z + row, T(0), dts, [](V zv) { return zv * sigmoid_pack(zv); });
    for (int64_t l = 0; l < L; ++l) out[row + l] *= dts[l];
  }
}

// Backward of one (b, d) row. dB_acc, dC_acc: (L, N) sums over this task's channels.
// hs: (L + 1, N) scratch, row l + 1 = h_l; as: (L, N) decays; ys, dts: (L,) scratch.
// dlast: (batch, dim, nseg, N) gradient of the segments' last states or nullptr; dh0: the same
// shape, written when not nullptr.
template <typename T, int NV>
void backward_row(const Inputs<T>& p, int64_t b, int64_t d, const T* __restrict dout,
                  T* __restrict du, T* __restrict ddelta, T* __restrict dz, T* __restrict dA_part,
                  T* __restrict dD_part, T* __restrict dB_acc, T* __restrict dC_acc,
                  const T* __restrict dlast, T* __restrict dh0,
                  T* __restrict hs, T* __restrict as, T* __restrict ys, T* __restrict dts,
                  T* __restrict sz, T* __restrict sd) {
  typedef typename Pack<T>::V V;
  constexpr int W = Pack<T>::W;
  const int64_t N = NV * W, L = p.L, row = (b * p.dim + d) * L;
  const int64_t srow = (b * p.dim + d) * p.nseg * N;  // this row's (nseg, N) of h0, dlast, dh0
  const T* __restrict u = p.u + row;
  const T* __restrict Bm = p.B + b * L * N;
  const T* __restrict Cm = p.C + b * L * N;
  const T bias = p.bias ? p.bias[d] : T(0), Dd = p.D ? p.D[d] : T(0);
  row_dt(p, p.delta + row, bias, dts);
  if (p.z) map_row(L, p.z + row, T(0), sz, [](V zv) { return sigmoid_pack(zv); });
  if (p.softplus)  // softplus'(x) = sigmoid(x), 1 past the threshold
    map_row(L, p.delta + row, bias, sd, [](V x) { return x > 20.0 ? V{} + 1.0 : sigmoid_pack(x); });
  V A[NV];
  for (int j = 0; j < NV; ++j) A[j] = load<V>(p.A + d * N + j * W);
  // Pass 1: recompute decays and states (scan_row, the forward's own arithmetic).
  scan_row<T, NV, true>(p, b, d, dts, ys, nullptr, as, hs);
  // Pass 2: g = dLoss/dh_l runs backwards, g_l = dy_l C_l + a_{l+1} g_{l+1} inside a segment;
  // a segment's last state starts g at dlast, and its first position's a_l g_l is dh0.
  V g[NV], dA[NV];
  for (int j = 0; j < NV; ++j) dA[j] = V{};
  T dD = T(0);
  for (int64_t s = p.nseg - 1; s >= 0; --s) {
    const int64_t l0 = s * p.seg;
    // h_{l0-1}: the segment's initial state (nullptr = zero)
    const T* __restrict first = p.h0 ? p.h0 + srow + s * N : nullptr;
    for (int j = 0; j < NV; ++j) g[j] = dlast ? load<V>(dlast + srow + s * N + j * W) : V{};
    for (int64_t l = std::min(L, l0 + p.seg) - 1; l >= l0; --l) {
      const T dt = dts[l], ul = u[l];
      T dy = dout[row + l];
      if (p.z) {
        const T zl = p.z[row + l], sg = sz[l];
        dz[row + l] = dy * (ys[l] + Dd * ul) * sg * (T(1) + zl * (T(1) - sg));
        dy *= zl * sg;
      }
      dD += dy * ul;
      const T x = dt * ul;
      const T* __restrict prev = l > l0 ? hs + l * N : first;  // h_{l-1}
      V sBg = V{}, ddt = V{};
      for (int j = 0; j < NV; ++j) {
        const int64_t o = l * N + j * W;
        const V gn = g[j] + load<V>(Cm + o) * dy;
        store(dC_acc + o, load<V>(dC_acc + o) + load<V>(hs + o + N) * dy);
        store(dB_acc + o, load<V>(dB_acc + o) + gn * x);
        sBg += gn * load<V>(Bm + o);
        const V a = load<V>(as + o);
        const V dlog = gn * (prev ? load<V>(prev + j * W) : V{}) * a;  // d loss / d (dt_l A_n)
        ddt += dlog * A[j];
        dA[j] += dlog * dt;
        g[j] = gn * a;
      }
      const T sB = hsum(sBg);
      du[row + l] = dy * Dd + sB * dt;
      T ddt_l = hsum(ddt) + sB * ul;
      ddelta[row + l] = p.softplus ? ddt_l * sd[l] : ddt_l;
    }
    if (dh0)  // g is now dLoss/dh_{l0-1}, the segment's initial state
      for (int j = 0; j < NV; ++j) store(dh0 + srow + s * N + j * W, g[j]);
  }
  for (int j = 0; j < NV; ++j) store(dA_part + (b * p.dim + d) * N + j * W, dA[j]);
  dD_part[b * p.dim + d] = dD;
}

template <typename T>
Inputs<T> make_inputs(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A,
                      const at::Tensor& B, const at::Tensor& C,
                      const std::optional<at::Tensor>& D, const std::optional<at::Tensor>& z,
                      const std::optional<at::Tensor>& bias,
                      const std::optional<at::Tensor>& h0, bool softplus, int64_t seg) {
  Inputs<T> p;
  p.u = u.data_ptr<T>();
  p.delta = delta.data_ptr<T>();
  p.A = A.data_ptr<T>();
  p.B = B.data_ptr<T>();
  p.C = C.data_ptr<T>();
  p.D = D ? D->data_ptr<T>() : nullptr;
  p.z = z ? z->data_ptr<T>() : nullptr;
  p.bias = bias ? bias->data_ptr<T>() : nullptr;
  p.h0 = h0 ? h0->data_ptr<T>() : nullptr;
  p.batch = u.size(0);
  p.dim = u.size(1);
  p.L = u.size(2);
  p.N = A.size(1);
  p.softplus = softplus;
  p.seg = seg;
  p.nseg = (p.L + seg - 1) / seg;
  return p;
}

constexpr int64_t kMaxState = 64;  // N up to 64 (8 packs of floats); mamba uses 16

void check(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& B,
           const at::Tensor& C, const std::optional<at::Tensor>& D,
           const std::optional<at::Tensor>& z, const std::optional<at::Tensor>& bias,
           const std::optional<at::Tensor>& h0, int64_t seg) {
  const auto batch = u.size(0), dim = u.size(1), L = u.size(2), N = A.size(1);
  TORCH_CHECK(seg >= 1 && L >= 1, "selective_scan_cpu: segment ", seg, " and L ", L, " must be >= 1");
  const int64_t nseg = (L + seg - 1) / seg;
  TORCH_CHECK(N % 8 == 0 && N <= kMaxState, "selective_scan_cpu: d_state ", N,
              " must be a multiple of 8 (pad it) and at most ", kMaxState);
  auto same = [&](const at::Tensor& t, at::IntArrayRef shape, const char* name) {
    TORCH_CHECK(t.device().is_cpu() && t.is_contiguous() && t.scalar_type() == u.scalar_type(),
                "selective_scan_cpu: ", name, " must be a contiguous CPU tensor of u's dtype");
    TORCH_CHECK(t.sizes() == shape, "selective_scan_cpu: ", name, " has shape ", t.sizes(),
                ", expected ", shape);
  };
  same(u, {batch, dim, L}, "u (B, D, L)");
  same(delta, {batch, dim, L}, "delta (B, D, L)");
  same(A, {dim, N}, "A (D, N)");
  same(B, {batch, L, N}, "B (B, L, N)");
  same(C, {batch, L, N}, "C (B, L, N)");
  if (D) same(*D, {dim}, "D (D,)");
  if (z) same(*z, {batch, dim, L}, "z (B, D, L)");
  if (bias) same(*bias, {dim}, "delta_bias (D,)");
  if (h0) same(*h0, {batch, dim, nseg, N}, "initial_state (B, D, nseg, N)");
}

// Calls f(std::integral_constant<int, NV>) for the pack count of N (N / W, 1..16).
template <typename T, typename F>
void with_packs(int64_t N, F&& f) {
  switch (N / Pack<T>::W) {
    case 1: return f(std::integral_constant<int, 1>{});
    case 2: return f(std::integral_constant<int, 2>{});
    case 4: return f(std::integral_constant<int, 4>{});
    case 6: return f(std::integral_constant<int, 6>{});
    case 8: return f(std::integral_constant<int, 8>{});
    case 10: return f(std::integral_constant<int, 10>{});
    case 12: return f(std::integral_constant<int, 12>{});
    case 14: return f(std::integral_constant<int, 14>{});
    case 16: return f(std::integral_constant<int, 16>{});
    case 3: return f(std::integral_constant<int, 3>{});
    case 5: return f(std::integral_constant<int, 5>{});
    case 7: return f(std::integral_constant<int, 7>{});
    default: TORCH_CHECK(false, "selective_scan_cpu: unsupported d_state ", N);
  }
}

// Rows per task so that one task holds ~64k state updates (small inputs stay on one thread).
int64_t grain_rows(int64_t L, int64_t N) {
  return std::max<int64_t>(1, 65536 / std::max<int64_t>(1, L * N));
}

}  // namespace

// u, delta, z: (B, D, L); A: (D, N); B, C: (B, L, N) (time-major state inputs); D, delta_bias: (D,);
// h0: (B, D, nseg, N), nseg = ceil(L / seg). Returns {out (B, D, L), last states (B, D, nseg, N)}.
std::vector<at::Tensor> scan_fwd(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A,
                                 const at::Tensor& B, const at::Tensor& C,
                                 const std::optional<at::Tensor>& D,
                                 const std::optional<at::Tensor>& z,
                                 const std::optional<at::Tensor>& bias,
                                 const std::optional<at::Tensor>& h0, bool softplus, int64_t seg) {
  check(u, delta, A, B, C, D, z, bias, h0, seg);
  auto out = at::empty_like(u);
  const int64_t nseg = (u.size(2) + seg - 1) / seg;
  auto last = at::empty({u.size(0), u.size(1), nseg, A.size(1)}, u.options());
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "selective_scan_cpu_fwd", [&] {
    const auto p = make_inputs<scalar_t>(u, delta, A, B, C, D, z, bias, h0, softplus, seg);
    scalar_t* o = out.data_ptr<scalar_t>();
    scalar_t* s = last.data_ptr<scalar_t>();
    with_packs<scalar_t>(p.N, [&](auto nv) {
      at::parallel_for(0, p.batch * p.dim, grain_rows(p.L, p.N), [&](int64_t begin, int64_t end) {
        std::vector<scalar_t> dts(p.L);
        for (int64_t i = begin; i < end; ++i)
          forward_row<scalar_t, decltype(nv)::value>(p, i / p.dim, i % p.dim, o, s, dts.data());
      });
    });
  });
  return {out, last};
}

// Same inputs plus dout (B, D, L) and dlast (B, D, nseg, N) (absent = zero). Returns {du, ddelta, dA,
// dB (B, L, N), dC (B, L, N), dD, dz, ddelta_bias, dh0}; the last four are undefined tensors
// (None) when D, z, delta_bias, h0 are absent.
std::vector<at::Tensor> scan_bwd(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A,
                                 const at::Tensor& B, const at::Tensor& C,
                                 const std::optional<at::Tensor>& D,
                                 const std::optional<at::Tensor>& z,
                                 const std::optional<at::Tensor>& bias,
                                 const std::optional<at::Tensor>& h0, bool softplus, int64_t seg,
                                 const at::Tensor& dout, const std::optional<at::Tensor>& dlast) {
  check(u, delta, A, B, C, D, z, bias, h0, seg);
  const int64_t nseg = (u.size(2) + seg - 1) / seg;
  TORCH_CHECK(dout.is_contiguous() && dout.sizes() == u.sizes() &&
                  dout.scalar_type() == u.scalar_type(),
              "selective_scan_cpu: dout must be contiguous, shaped and typed like u");
  TORCH_CHECK(!dlast || (dlast->is_contiguous() && dlast->scalar_type() == u.scalar_type() &&
                         dlast->sizes() == at::IntArrayRef({u.size(0), u.size(1), nseg, A.size(1)})),
              "selective_scan_cpu: dlast must be contiguous, (B, D, nseg, N) and typed like u");
  const int64_t batch = u.size(0), dim = u.size(1), L = u.size(2), N = A.size(1);
  // Tasks are (batch row, group of channels); each group sums its channels' dB, dC into its own
  // slice, so no two threads write the same memory. Groups only where the batch cannot be split
  // evenly over the threads.
  const int64_t threads = at::get_num_threads();
  const int64_t groups = (batch % threads == 0) ? 1 : std::min<int64_t>(dim, threads);
  auto du = at::empty_like(u), ddelta = at::empty_like(u);
  auto dz = z ? at::empty_like(u) : at::Tensor();
  auto dA_part = at::empty({batch, dim, N}, u.options());
  auto dD_part = at::empty({batch, dim}, u.options());
  auto dB_part = at::zeros({batch, groups, L, N}, u.options());
  auto dC_part = at::zeros({batch, groups, L, N}, u.options());
  auto dh0 = h0 ? at::empty({batch, dim, nseg, N}, u.options()) : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "selective_scan_cpu_bwd", [&] {
    const auto p = make_inputs<scalar_t>(u, delta, A, B, C, D, z, bias, h0, softplus, seg);
    const scalar_t* go = dout.data_ptr<scalar_t>();
    scalar_t *pdu = du.data_ptr<scalar_t>(), *pdd = ddelta.data_ptr<scalar_t>();
    scalar_t* pdz = z ? dz.data_ptr<scalar_t>() : nullptr;
    scalar_t *pdA = dA_part.data_ptr<scalar_t>(), *pdD = dD_part.data_ptr<scalar_t>();
    scalar_t *pdB = dB_part.data_ptr<scalar_t>(), *pdC = dC_part.data_ptr<scalar_t>();
    const scalar_t* pdl = dlast ? dlast->data_ptr<scalar_t>() : nullptr;
    scalar_t* pdh0 = h0 ? dh0.data_ptr<scalar_t>() : nullptr;
    with_packs<scalar_t>(N, [&](auto nv) {
      at::parallel_for(0, batch * groups, 1, [&](int64_t begin, int64_t end) {
        std::vector<scalar_t> hs((L + 1) * N), as(L * N), ys(L), dts(L), sz(L), sd(L);
        for (int64_t task = begin; task < end; ++task) {
          const int64_t b = task / groups, grp = task % groups;
          const int64_t d0 = grp * dim / groups, d1 = (grp + 1) * dim / groups;
          for (int64_t d = d0; d < d1; ++d)
            backward_row<scalar_t, decltype(nv)::value>(
                p, b, d, go, pdu, pdd, pdz, pdA, pdD, pdB + task * L * N, pdC + task * L * N,
                pdl, pdh0, hs.data(), as.data(), ys.data(), dts.data(), sz.data(), sd.data());
        }
      });
    });
  });
  auto dB = groups == 1 ? dB_part.squeeze(1) : dB_part.sum(1);
  auto dC = groups == 1 ? dC_part.squeeze(1) : dC_part.sum(1);
  auto dD = D ? dD_part.sum(0) : at::Tensor();
  // A named vector, not sum({0, 2}): with torch 2.11's headers the braced list is ambiguous
  // (seen on a GPU machine's g++); the same reduction, so the same bits as before.
  const std::vector<int64_t> batch_and_length{0, 2};
  auto dbias = bias ? ddelta.sum(batch_and_length) : at::Tensor();
  return {du, ddelta, dA_part.sum(0), dB, dC, dD, dz, dbias, dh0};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("fwd", &scan_fwd, "fused selective scan forward (CPU)");
  m.def("bwd", &scan_bwd, "fused selective scan backward (CPU), states recomputed");
}
