r"""CUDA C sources of the CuPy backend, their launch signatures, and a lazy kernel cache.

Every kernel is a C++ template written once (``template <typename T>``, accumulation in
``T``; the Soft-DTW diagonal offsets are always ``double``) and exported as two
``extern "C"`` instantiations, ``<name>_f32`` and ``<name>_f64``, generated here from one
signature table (:data:`TEMPLATES`). That table is also what :func:`launch` checks the
arguments of every launch against (CuPy passes raw bytes to a kernel, so an ``int64`` where
the kernel expects ``int`` would silently corrupt the parameter block), and what the CPU
tests use to compile every source with NVRTC.

Nothing is compiled, loaded or allocated at import: :func:`function` builds the
``cupy.RawModule`` of a family on first use and caches it (CuPy also caches the cubin on
disk). Public helpers:

``kernel_sources()``  one :class:`KernelSource` per module: name, full source, NVRTC options,
                      the exported kernel names (for the compile test)
``function(name)``    the cached ``cupy.RawKernel`` of an exported kernel
``launch(...)``       check the arguments against the signature, then launch
``dynamic_smem_limit(kernel)``  how much dynamic shared memory one block of it may use
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# CuPy adds ``-arch=sm_XX`` for the current device and ``-ftz=true`` itself.
OPTIONS = ("--std=c++17",)
CUPY_IMPLICIT_OPTIONS = ("-ftz=true",)

DTYPES = {"float32": ("float", "f32"), "float64": ("double", "f64")}

# Fields of one Soft-DTW job (int64 each): element offset of the job's C[0, 0] (also of
# E[0, 0]), the row stride of C and E, rows n, columns m, element offset of its Rt table,
# element offset of its offsets. Must match RI_JOB_FIELDS below.
JOB_FIELDS = 6

# ----------------------------------------------------------------------------- sources

_COMMON = r"""
// ---------------------------------------------------------------- common helpers
template <typename T> struct RiNum;
template <> struct RiNum<float> {
  static __device__ __forceinline__ float inf() { return __int_as_float(0x7f800000); }
  static __device__ __forceinline__ float qnan() { return __int_as_float(0x7fc00000); }
  static __device__ __forceinline__ float ex(float x) { return expf(x); }
  static __device__ __forceinline__ float lg(float x) { return logf(x); }
};
template <> struct RiNum<double> {
  static __device__ __forceinline__ double inf() { return __longlong_as_double(0x7ff0000000000000LL); }
  static __device__ __forceinline__ double qnan() { return __longlong_as_double(0x7ff8000000000000LL); }
  static __device__ __forceinline__ double ex(double x) { return exp(x); }
  static __device__ __forceinline__ double lg(double x) { return log(x); }
};

__device__ __forceinline__ int ri_imin(int a, int b) { return a < b ? a : b; }
__device__ __forceinline__ int ri_imax(int a, int b) { return a > b ? a : b; }

// finite: false for +-inf and NaN
template <typename T>
__device__ __forceinline__ bool ri_finite(T v) { return v < RiNum<T>::inf() && -v < RiNum<T>::inf(); }

// The block's dynamic shared memory (declared as double for 8-byte alignment).
__device__ __forceinline__ double* ri_dynamic_smem() {
  extern __shared__ double ri_dyn_smem[];
  return ri_dyn_smem;
}
"""

_SOFTDTW = r"""
// ---------------------------------------------------------------- Soft-DTW (softdtw.md sec. 10)
//
// One block per job (one DP). A job is n x m cells of C (row stride ld). The kernel works in
// the oriented frame (s, l): s runs along the shorter side S = min(n, m), l along the longer
// side L = max(n, m); (s, l) = (i, j) when n <= m and (j, i) otherwise, so a diagonal
// q = s + l = i + j has at most S cells and the three live diagonals need 3 S words.
// sdtw(C^T) = sdtw(C) and the widened band (sec. 7) is symmetric under the swap: in the
// oriented frame a cell is allowed iff -r <= l - s <= (L - S) + r.
//
// Rt is stored once per cell in a compact diagonal-major table: diagonal q occupies
// len(q) = min(q + 1, S, S + L - 1 - q) consecutive words starting at diag_start(q), and cell
// (s, q - s) sits at diag_start(q) + s - max(0, q - (L - 1)). Diagonal writes are coalesced and
// the table has exactly n * m words (cells outside the band are never written nor read).
// Offsets: offs[p] for p = q + 2 (1-based diagonal index p = i + j), offs[0] = offs[1] = 0;
// the stored value of a cell is Rt = R - offs[q + 2].

#define RI_JOB_FIELDS 6

struct RiGeom {
  int S, L, r;          // short side, long side, band radius (< 0: no band)
  long long cs, cl;     // element strides of s and l in C and E
  __device__ __forceinline__ RiGeom(long long n, long long m, long long ld, int band) {
    if (n <= m) { S = (int)n; L = (int)m; cs = ld; cl = 1; }
    else        { S = (int)m; L = (int)n; cs = 1;  cl = ld; }
    r = band;
  }
  __device__ __forceinline__ bool valid(int s, int l) const {
    if (s < 0 || l < 0 || s >= S || l >= L) return false;
    if (r < 0) return true;
    const int d = l - s;
    return d >= -r && d <= (L - S) + r;
  }
  __device__ __forceinline__ int grid_lo(int q) const { return ri_imax(0, q - (L - 1)); }
  // first and last s of diagonal q inside the grid and the band (lo > hi: empty diagonal)
  __device__ __forceinline__ int lo(int q) const {
    int a = grid_lo(q);
    if (r >= 0) a = ri_imax(a, (q - (L - S) - r + 1) >> 1);   // ceil((q - (L-S) - r) / 2)
    return a;
  }
  __device__ __forceinline__ int hi(int q) const {
    int b = ri_imin(S - 1, q);
    if (r >= 0) b = ri_imin(b, (q + r) >> 1);                   // floor((q + r) / 2)
    return b;
  }
  __device__ __forceinline__ long long diag_start(int q) const {
    const long long s = S, l = L, qq = q;
    if (qq <= s) return qq * (qq + 1) / 2;
    if (qq <= l - 1) return s * (s + 1) / 2 + (qq - s) * s;
    const long long t = s + l - 1 - qq;
    return s * l - t * (t + 1) / 2;
  }
  // index of cell (s, q - s) in the job's Rt table is base(q) + s
  __device__ __forceinline__ long long base(int q) const { return diag_start(q) - grid_lo(q); }
  __device__ __forceinline__ long long at(int s, int l) const {
    return (long long)s * cs + (long long)l * cl;
  }
};

// softmin_g(a, b, c) = r - g log sum exp(-(x - r)/g), r = min; +inf if every entry is +inf;
// NaN propagates.
template <typename T>
__device__ __forceinline__ T ri_softmin3(T a, T b, T c, T gamma, T ginv) {
  T r = a < b ? a : b;
  r = r < c ? r : c;
  if (!(r < RiNum<T>::inf())) return a + b + c;
  const T z = RiNum<T>::ex((r - a) * ginv) + RiNum<T>::ex((r - b) * ginv) + RiNum<T>::ex((r - c) * ginv);
  return r - gamma * RiNum<T>::lg(z);
}

// Normalised softmin weight of predecessor K among (u0, u1, u2) (sec. 3); 0 if all are +inf.
template <int K, typename T>
__device__ __forceinline__ T ri_weight(T u0, T u1, T u2, T ginv) {
  T r = u0 < u1 ? u0 : u1;
  r = r < u2 ? r : u2;
  if (!(r < RiNum<T>::inf())) return (T)0;
  const T w0 = RiNum<T>::ex((r - u0) * ginv);
  const T w1 = RiNum<T>::ex((r - u1) * ginv);
  const T w2 = RiNum<T>::ex((r - u2) * ginv);
  const T wk = K == 0 ? w0 : (K == 1 ? w1 : w2);
  return wk / (w0 + w1 + w2);
}

// Forward wavefront. Live diagonals q, q-1, q-2 rotate through three slots of `ring` words:
// in dynamic shared memory, or (use_scratch) in global scratch + job * 3 * ring (same code).
// store != 0: write Rt (compact table) and the offsets for the backward.
template <typename T>
__device__ __forceinline__ void sdtw_fwd(const T* __restrict__ C, const long long* __restrict__ jobs,
                                         int njobs, int band, T gamma, int store,
                                         T* __restrict__ rt, double* __restrict__ offs,
                                         double* __restrict__ values, int use_scratch, T* scratch,
                                         int ring) {
  const int job = blockIdx.x;
  if (job >= njobs) return;
  const long long* jb = jobs + (long long)job * RI_JOB_FIELDS;
  const RiGeom g(jb[2], jb[3], jb[1], band);
  const T* __restrict__ c = C + jb[0];
  T* ringbuf = use_scratch ? scratch + (long long)job * 3 * ring
                           : reinterpret_cast<T*>(ri_dynamic_smem());
  __shared__ double s_off[2];
  const T inf = RiNum<T>::inf();
  const T ginv = (T)1 / gamma;
  const int nd = g.S + g.L - 1;
  const long long den = 2LL * (g.S + g.L);
  double o1 = 0.0, o2 = 0.0;            // offsets of diagonals q-1 and q-2 (virtual ones: 0)
  if (store && threadIdx.x == 0) { offs[jb[5]] = 0.0; offs[jb[5] + 1] = 0.0; }
  int k0 = 0, k1 = 2, k2 = 1;           // ring slots of diagonals q, q-1, q-2
  for (int q = 0; q < nd; ++q) {
    const double oq = (q == 0) ? 0.0 : s_off[q & 1];
    const T d1 = (T)(o1 - oq), d2 = (T)(o2 - oq);   // frame shifts, float64 then cast once
    T* cur = ringbuf + k0 * ring;
    const T* pr1 = ringbuf + k1 * ring;
    const T* pr2 = ringbuf + k2 * ring;
    const int lo = g.lo(q), hi = g.hi(q);
    // The offset of diagonal q+1 is the absolute R of the cell of diagonal q nearest the
    // scaled main diagonal (s ~ q S / (S + L)); if it is not finite, the offset is kept.
    int star = -1;
    if (lo <= hi) {
      const long long t = (2LL * q * g.S + (g.S + g.L)) / den;
      star = (int)(t < lo ? lo : (t > hi ? hi : t));
    } else if (threadIdx.x == 0) {
      s_off[(q + 1) & 1] = oq;        // empty diagonal (band r = 0 on odd q): keep the offset
    }
    const long long rbase = store ? jb[4] + g.base(q) : 0;
    for (int s = lo + (int)threadIdx.x; s <= hi; s += (int)blockDim.x) {
      const int l = q - s;
      const T a = (s == 0 && l == 0) ? (T)(-oq)                       // R[0, 0] = 0
                  : (g.valid(s - 1, l - 1) ? pr2[s - 1] + d2 : inf);
      const T b = g.valid(s - 1, l) ? pr1[s - 1] + d1 : inf;
      const T cc = g.valid(s, l - 1) ? pr1[s] + d1 : inf;
      const T v = c[g.at(s, l)] + ri_softmin3(a, b, cc, gamma, ginv);
      cur[s] = v;
      if (store) rt[rbase + s] = v;
      if (s == star) s_off[(q + 1) & 1] = ri_finite(v) ? oq + (double)v : oq;
      if (q == nd - 1) values[job] = oq + (double)v;   // the end cell is alone on its diagonal
    }
    if (store && threadIdx.x == 0) offs[jb[5] + q + 2] = oq;
    __syncthreads();
    o2 = o1;
    o1 = oq;
    const int kt = k2; k2 = k1; k1 = k0; k0 = kt;   // slots of q+1, q, q-1
  }
}

// Backward (reverse wavefront, sec. 3 and 8.2): E of a cell = sum over its valid successors t
// of pi_t(cell) E[t], the normalised weights rebuilt from the stored Rt of t's three
// predecessors (diagonals q-1, q, q+1, shifted into the frame of diagonal q); no C read.
// Live E diagonals q, q+1, q+2 rotate through the ring like the forward. E (pre-zeroed, the
// layout of C) receives every in-band cell of the valid block.
template <typename T>
__device__ __forceinline__ void sdtw_bwd(const T* __restrict__ rt, const double* __restrict__ offs,
                                         const long long* __restrict__ jobs, int njobs, int band,
                                         T gamma, const double* __restrict__ values,
                                         T* __restrict__ E, int use_scratch, T* scratch, int ring) {
  const int job = blockIdx.x;
  if (job >= njobs) return;
  const long long* jb = jobs + (long long)job * RI_JOB_FIELDS;
  const RiGeom g(jb[2], jb[3], jb[1], band);
  T* __restrict__ e = E + jb[0];
  const T* __restrict__ r = rt + jb[4];
  const double* __restrict__ o = offs + jb[5];
  const double val = values[job];
  if (val != val) {                     // NaN value: the whole valid block is NaN (reference)
    const long long n = jb[2], m = jb[3], ld = jb[1];
    for (long long k = threadIdx.x; k < n * m; k += blockDim.x) e[(k / m) * ld + k % m] = RiNum<T>::qnan();
    return;
  }
  if (!(val < RiNum<double>::inf())) return;   // +inf: no finite path, E stays 0
  T* ringbuf = use_scratch ? scratch + (long long)job * 3 * ring
                           : reinterpret_cast<T*>(ri_dynamic_smem());
  const T inf = RiNum<T>::inf();
  const T ginv = (T)1 / gamma;
  const int nd = g.S + g.L - 1;
  int k0 = (nd - 1) % 3, k1 = nd % 3, k2 = (nd + 1) % 3;   // ring slots of q, q+1, q+2
  for (int q = nd - 1; q >= 0; --q) {
    const double oq = o[q + 2];
    const T e1 = q >= 1 ? (T)(o[q + 1] - oq) : (T)0;       // frame shift of diagonal q-1
    const T e2 = q + 1 < nd ? (T)(o[q + 3] - oq) : (T)0;   // frame shift of diagonal q+1
    const long long bq = g.base(q);
    const long long bm = q >= 1 ? g.base(q - 1) : 0;
    const long long bp = q + 1 < nd ? g.base(q + 1) : 0;
    T* cur = ringbuf + k0 * ring;
    const T* nx1 = ringbuf + k1 * ring;
    const T* nx2 = ringbuf + k2 * ring;
    const int lo = g.lo(q), hi = g.hi(q);
    for (int s = lo + (int)threadIdx.x; s <= hi; s += (int)blockDim.x) {
      const int l = q - s;
      T acc;
      if (q == nd - 1) {
        acc = (T)1;                                      // E[n, m] = 1
      } else {
        const T x = r[bq + s];
        acc = (T)0;
        if (g.valid(s + 1, l)) {        // successor (s+1, l); its predecessors (s, l-1), (s, l), (s+1, l-1)
          const T et = nx1[s + 1];
          if (et != (T)0) {
            const T u0 = g.valid(s, l - 1) ? r[bm + s] + e1 : inf;
            const T u2 = g.valid(s + 1, l - 1) ? r[bq + s + 1] : inf;
            acc += et * ri_weight<1>(u0, x, u2, ginv);
          }
        }
        if (g.valid(s, l + 1)) {        // successor (s, l+1); its predecessors (s-1, l), (s, l), (s-1, l+1)
          const T et = nx1[s];
          if (et != (T)0) {
            const T u0 = g.valid(s - 1, l) ? r[bm + s - 1] + e1 : inf;
            const T u2 = g.valid(s - 1, l + 1) ? r[bq + s - 1] : inf;
            acc += et * ri_weight<1>(u0, x, u2, ginv);
          }
        }
        if (g.valid(s + 1, l + 1)) {    // successor (s+1, l+1); its predecessors (s, l), (s, l+1), (s+1, l)
          const T et = nx2[s + 1];
          if (et != (T)0) {
            const T u1 = g.valid(s, l + 1) ? r[bp + s] + e2 : inf;
            const T u2 = g.valid(s + 1, l) ? r[bp + s + 1] + e2 : inf;
            acc += et * ri_weight<0>(x, u1, u2, ginv);
          }
        }
      }
      cur[s] = acc;
      e[g.at(s, l)] = acc;
    }
    __syncthreads();
    const int kt = k2; k2 = k1; k1 = k0; k0 = kt;   // slots of q-1, q, q+1
  }
}
"""

_COSTS = r"""
// ---------------------------------------------------------------- cost epilogues (after a GEMM)
// c holds the (nbatch, n, m) products x_i . y_j (contiguous). Rows r = b * n + i are walked
// by blockIdx.y (grid-stride), columns by blockIdx.x * blockDim.x + threadIdx.x.

// c <- scale * max(xx_i + yy_j - 2 c, 0), NaN kept (squared Euclidean through a GEMM)
template <typename T>
__device__ __forceinline__ void cost_sq(T* __restrict__ c, const T* __restrict__ xx,
                                        const T* __restrict__ yy, int n, int m, long long nbatch,
                                        T scale) {
  const int j = blockIdx.x * blockDim.x + threadIdx.x;
  if (j >= m) return;
  for (long long row = blockIdx.y; row < nbatch * n; row += gridDim.y) {
    const long long b = row / n;
    const long long k = row * m + j;
    const T t = xx[row] + yy[b * m + j] - (T)2 * c[k];
    c[k] = scale * ((t > (T)0 || t != t) ? t : (T)0);
  }
}

// c <- 1 - c, clipped to [0, 2] when clip != 0, NaN kept (cosine cost of unit vectors)
template <typename T>
__device__ __forceinline__ void cost_cos(T* __restrict__ c, int n, int m, long long nbatch, int clip) {
  const int j = blockIdx.x * blockDim.x + threadIdx.x;
  if (j >= m) return;
  for (long long row = blockIdx.y; row < nbatch * n; row += gridDim.y) {
    const long long k = row * m + j;
    T t = (T)1 - c[k];
    if (clip) t = t < (T)0 ? (T)0 : (t > (T)2 ? (T)2 : t);
    c[k] = t;
  }
}
"""

_OT = r"""
// ---------------------------------------------------------------- log-domain Sinkhorn (ot.md sec. 2, 6)
// State (u, v) = (f / eps, g / eps) = POT's (log_u, log_v); C is (nbatch, n, m) contiguous.
// Online log-sum-exp: (mx, s) stands for log(s) + mx; x = -inf terms are skipped.

template <typename T>
__device__ __forceinline__ void ri_lse_push(T& mx, T& s, T x) {
  if (x > mx) { s = s * RiNum<T>::ex(mx - x) + (T)1; mx = x; }
  else if (mx > -RiNum<T>::inf()) s += RiNum<T>::ex(x - mx);
}

template <typename T>
__device__ __forceinline__ void ri_lse_merge(T& mx, T& s, T mx2, T s2) {
  if (mx2 > mx) { s = s * RiNum<T>::ex(mx - mx2) + s2; mx = mx2; }
  else if (mx2 > -RiNum<T>::inf()) s += s2 * RiNum<T>::ex(mx2 - mx);
}

// Column pass: lse_j = LSE_i(u_i - C_ij / eps) for every column j of every problem.
// blockDim = (32, R): threadIdx.x is the column (a warp reads 32 consecutive words of a row),
// threadIdx.y strides over the rows; the R partial (max, sum) pairs merge in shared memory.
// mode 0: v_j = log b_j - lse_j (the g update).
// mode 1: err2[b] += (exp(v_j + lse_j) - b_j)^2, the column-marginal error of the current
//         (u, v) (P^T 1 = exp(v_j) sum_i exp(u_i - C_ij/eps)); err2 is pre-zeroed, float64.
// logb / bw have a batch stride of 0 (shared weights) or m.
template <typename T>
__device__ __forceinline__ void sk_col(const T* __restrict__ C, const T* __restrict__ u,
                                       T* __restrict__ v, const T* __restrict__ logb,
                                       long long logb_stride, const T* __restrict__ bw,
                                       long long bw_stride, T inv_eps, int n, int m, int nbatch,
                                       int mode, double* __restrict__ err2) {
  __shared__ T s_mx[32 * 32];
  __shared__ T s_s[32 * 32];
  const int tx = threadIdx.x, ty = threadIdx.y, R = blockDim.y;
  const int j = blockIdx.x * 32 + tx;
  for (long long bz = blockIdx.y; bz < nbatch; bz += gridDim.y) {
    const T* __restrict__ cb = C + bz * n * (long long)m;
    const T* __restrict__ ub = u + bz * n;
    T mx = -RiNum<T>::inf(), s = (T)0;
    if (j < m) {
#pragma unroll 4
      for (int i = ty; i < n; i += R) ri_lse_push(mx, s, ub[i] - cb[(long long)i * m + j] * inv_eps);
    }
    s_mx[ty * 32 + tx] = mx;
    s_s[ty * 32 + tx] = s;
    __syncthreads();
    if (ty == 0 && j < m) {
      for (int k = 1; k < R; ++k) ri_lse_merge(mx, s, s_mx[k * 32 + tx], s_s[k * 32 + tx]);
      const T lse = mx + RiNum<T>::lg(s);
      if (mode == 0) {
        v[bz * m + j] = logb[bz * logb_stride + j] - lse;
      } else {
        const double d = (double)(RiNum<T>::ex(v[bz * m + j] + lse) - bw[bz * bw_stride + j]);
        atomicAdd(err2 + bz, d * d);
      }
    }
    __syncthreads();
  }
}

// Row pass (the f update): u_i = log a_i - LSE_j(v_j - C_ij / eps), one warp per row (lanes
// read consecutive words), (max, sum) merged by xor shuffles. blockDim.x is a multiple of 32.
template <typename T>
__device__ __forceinline__ void sk_row(const T* __restrict__ C, T* __restrict__ u,
                                       const T* __restrict__ v, const T* __restrict__ loga,
                                       long long loga_stride, T inv_eps, int n, int m, int nbatch) {
  const int lane = threadIdx.x & 31;
  const int i = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
  if (i >= n) return;                   // the whole warp leaves together
  for (long long bz = blockIdx.y; bz < nbatch; bz += gridDim.y) {
    const T* __restrict__ crow = C + (bz * n + i) * (long long)m;
    const T* __restrict__ vb = v + bz * m;
    T mx = -RiNum<T>::inf(), s = (T)0;
#pragma unroll 4
    for (int j = lane; j < m; j += 32) ri_lse_push(mx, s, vb[j] - crow[j] * inv_eps);
    for (int off = 16; off > 0; off >>= 1) {
      const T mx2 = __shfl_xor_sync(0xffffffffu, mx, off);
      const T s2 = __shfl_xor_sync(0xffffffffu, s, off);
      ri_lse_merge(mx, s, mx2, s2);
    }
    if (lane == 0) u[bz * n + i] = loga[bz * loga_stride + i] - (mx + RiNum<T>::lg(s));
  }
}

// Linear cost <P, C> per problem without forming P: one warp per row sums
// P_ij C_ij over P_ij > 0 (so a +inf cost, where P = 0, adds 0), then out[b] += row sum
// (float64 atomics; out pre-zeroed).
template <typename T>
__device__ __forceinline__ void sk_linear(const T* __restrict__ C, const T* __restrict__ u,
                                          const T* __restrict__ v, T inv_eps, int n, int m,
                                          int nbatch, double* __restrict__ out) {
  const int lane = threadIdx.x & 31;
  const int i = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
  if (i >= n) return;
  for (long long bz = blockIdx.y; bz < nbatch; bz += gridDim.y) {
    const T* __restrict__ crow = C + (bz * n + i) * (long long)m;
    const T* __restrict__ vb = v + bz * m;
    const T ui = u[bz * n + i];
    T acc = (T)0;
    for (int j = lane; j < m; j += 32) {
      const T c = crow[j];
      const T p = RiNum<T>::ex(ui + vb[j] - c * inv_eps);
      if (p > (T)0) acc += p * c;
    }
    for (int off = 16; off > 0; off >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, off);
    if (lane == 0) atomicAdd(out + bz, (double)acc);
  }
}

// flag <- 1 if any x[k] is NaN (a validation reduction that allocates nothing of x's size)
template <typename T>
__device__ __forceinline__ void any_nan(const T* __restrict__ x, long long size, int* __restrict__ flag) {
  const long long stride = (long long)gridDim.x * blockDim.x;
  for (long long k = (long long)blockIdx.x * blockDim.x + threadIdx.x; k < size; k += stride) {
    if (x[k] != x[k]) { *flag = 1; return; }
  }
}

// Plan: P_ij = exp(u_i + v_j - C_ij / eps); rows by blockIdx.y (grid-stride), columns by x.
template <typename T>
__device__ __forceinline__ void sk_plan(const T* __restrict__ C, const T* __restrict__ u,
                                        const T* __restrict__ v, T* __restrict__ P, T inv_eps,
                                        int n, int m, long long nbatch) {
  const int j = blockIdx.x * blockDim.x + threadIdx.x;
  if (j >= m) return;
  for (long long row = blockIdx.y; row < nbatch * n; row += gridDim.y) {
    const long long k = row * m + j;
    P[k] = RiNum<T>::ex(u[row] + v[(row / n) * m + j] - C[k] * inv_eps);
  }
}
"""


_PREFERENCE = r"""
// ---------------------------------------------------------------- preference (preference.md sec. 2, 6)
// Blocks of logits Z (rows x vb, row stride ld) of the compacted completion tokens, vocab
// columns j0 .. j0 + vb - 1. One warp per row (lanes read consecutive words of the row), warps
// grid-stride over the rows. y holds each row's target token (int64, in [0, V)).

template <typename T>
__device__ __forceinline__ void pf_lse_push(T& mx, T& s, T x) {
  if (x > mx) { s = s * RiNum<T>::ex(mx - x) + (T)1; mx = x; }
  else if (mx > -RiNum<T>::inf()) s += RiNum<T>::ex(x - mx);
  else s += (x == x) ? (T)0 : x;      // NaN into an empty state propagates
}

template <typename T>
__device__ __forceinline__ void pf_lse_merge(T& mx, T& s, T mx2, T s2) {
  if (mx2 > mx) { s = s * RiNum<T>::ex(mx - mx2) + s2; mx = mx2; }
  else if (mx2 > -RiNum<T>::inf()) s += s2 * RiNum<T>::ex(mx2 - mx);
  else s += (s2 == s2) ? (T)0 : s2;
}

// Online log-sum-exp update fused with the target-logit gather, for one block:
// (mx, s) stands for log(s) + mx per row (running over the vocab blocks seen so far; start
// at (-inf, 0)); zy[r] = Z[r, y_r - j0] when the target lies in this block.
template <typename T>
__device__ __forceinline__ void pref_lse_block(const T* __restrict__ Z, long long ld, int rows,
                                               int vb, const long long* __restrict__ y,
                                               long long j0, T* __restrict__ mx,
                                               T* __restrict__ s, T* __restrict__ zy) {
  const int lane = threadIdx.x & 31;
  const int wpb = blockDim.x >> 5;
  for (long long r = (long long)blockIdx.x * wpb + (threadIdx.x >> 5); r < rows;
       r += (long long)gridDim.x * wpb) {          // warp-uniform: the whole warp iterates
    const T* __restrict__ zr = Z + r * ld;
    T m = -RiNum<T>::inf(), a = (T)0;
#pragma unroll 4
    for (int k = lane; k < vb; k += 32) pf_lse_push(m, a, zr[k]);
    for (int off = 16; off > 0; off >>= 1) {
      const T m2 = __shfl_xor_sync(0xffffffffu, m, off);
      const T a2 = __shfl_xor_sync(0xffffffffu, a, off);
      pf_lse_merge(m, a, m2, a2);
    }
    if (lane == 0) {
      T M = mx[r], S = s[r];
      pf_lse_merge(M, S, m, a);
      mx[r] = M;
      s[r] = S;
      const long long t = y[r] - j0;
      if (t >= 0 && t < vb) zy[r] = zr[t];
    }
  }
}

// Logit-gradient block in place: G[r, k] <- c_r (onehot(y_r - j0)[k] - exp(G[r, k] - lse_r)),
// G holding the recomputed logits on entry.
template <typename T>
__device__ __forceinline__ void pref_grad_block(T* __restrict__ G, long long ld, int rows, int vb,
                                                const long long* __restrict__ y, long long j0,
                                                const T* __restrict__ lse,
                                                const T* __restrict__ c) {
  const int lane = threadIdx.x & 31;
  const int wpb = blockDim.x >> 5;
  for (long long r = (long long)blockIdx.x * wpb + (threadIdx.x >> 5); r < rows;
       r += (long long)gridDim.x * wpb) {
    T* __restrict__ gr = G + r * ld;
    const T l = lse[r], cr = c[r];
    const long long t = y[r] - j0;
#pragma unroll 4
    for (int k = lane; k < vb; k += 32) {
      const T onehot = (k == t) ? (T)1 : (T)0;
      gr[k] = cr * (onehot - RiNum<T>::ex(gr[k] - l));
    }
  }
}
"""

_CROSS_TOKENIZER = r"""
// ---------------------------------------------------------------- cross-tokenizer (cross_tokenizer.md sec. 3, 4, 8, 10)
// Row kernels: one block per row of a (rows, V) logit array (blocks grid-stride over the
// rows; the row loop is block-uniform, so __syncthreads inside it is safe). blockDim.x is a
// multiple of 32. Softmaxes by an online max/sum over the row (the scipy rule at the edges:
// a +inf logit gives lse = +inf, an all -inf row gives lse = -inf, so log p = z - lse is
// -inf / NaN exactly where the reference's log_softmax is).

template <typename T>
__device__ __forceinline__ void ct_lse_push(T& mx, T& s, T x) {
  if (x > mx) { s = s * RiNum<T>::ex(mx - x) + (T)1; mx = x; }
  else if (mx > -RiNum<T>::inf()) s += RiNum<T>::ex(x - mx);
  else s += (x == x) ? (T)0 : x;      // NaN into an empty state propagates
}

template <typename T>
__device__ __forceinline__ void ct_lse_merge(T& mx, T& s, T mx2, T s2) {
  if (mx2 > mx) { s = s * RiNum<T>::ex(mx - mx2) + s2; mx = mx2; }
  else if (mx2 > -RiNum<T>::inf()) s += s2 * RiNum<T>::ex(mx2 - mx);
  else s += (s2 == s2) ? (T)0 : s2;
}

// log-sum-exp of a finished (mx, s) state: +inf if the max is +inf (the sum is then inf or NaN)
template <typename T>
__device__ __forceinline__ T ct_lse(T mx, T s) {
  return (mx == RiNum<T>::inf()) ? mx : mx + RiNum<T>::lg(s);
}

// Sum of v over the block; every thread gets the same value (same order of the warp partials).
// red: a __shared__ array of 32 words.
template <typename T>
__device__ __forceinline__ T ct_block_sum(T v, T* red) {
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
  __syncthreads();                      // earlier readers of red are done
  if (lane == 0) red[w] = v;
  __syncthreads();
  T r = (T)0;
  for (int k = 0; k < nw; ++k) r += red[k];
  return r;
}

// Block merge of online log-sum-exp states; every thread gets the merged state.
template <typename T>
__device__ __forceinline__ void ct_block_lse(T& mx, T& s, T* rm, T* rs) {
  for (int off = 16; off > 0; off >>= 1) {
    const T m2 = __shfl_xor_sync(0xffffffffu, mx, off);
    const T s2 = __shfl_xor_sync(0xffffffffu, s, off);
    ct_lse_merge(mx, s, m2, s2);
  }
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
  __syncthreads();
  if (lane == 0) { rm[w] = mx; rs[w] = s; }
  __syncthreads();
  T M = -RiNum<T>::inf(), S = (T)0;
  for (int k = 0; k < nw; ++k) ct_lse_merge(M, S, rm[k], rs[k]);
  mx = M;
  s = S;
}

template <typename T>
__device__ __forceinline__ bool ct_isinf(T v) { return v == RiNum<T>::inf() || v == -RiNum<T>::inf(); }

// g = df/dp of the kinds with a softmax chain (reverse_kl = 1, skewed_forward_kl = 2,
// skewed_reverse_kl = 3, js = 4); the reference's _dfdp.
template <typename T>
__device__ __forceinline__ T ct_dfdp(int kind, T p, T lp, T q, T lq, T l) {
  if (kind == 1) return lp - lq + (T)1;
  if (kind == 2) { const T ms = l * q + ((T)1 - l) * p; return -((T)1 - l) * q / ms; }
  if (kind == 3) {
    const T ms = ((T)1 - l) * q + l * p;
    return lp + (T)1 - RiNum<T>::lg(ms) - l * p / ms;
  }
  const T e = (T)1e-9, m = (p + q) / (T)2;
  return (T)0.5 * (RiNum<T>::lg(p + e) + p / (p + e) - RiNum<T>::lg(m + e)
                   - (p + q) / ((T)2 * (m + e)));
}

// Per-row KD divergence (sec. 3) and, with need_grad, dz = p (g - <p, g>) / tau.
// kind: 0 forward_kl, 1 reverse_kl, 2 skewed_forward_kl, 3 skewed_reverse_kl, 4 js,
// 5 adaptive_kl (wh, wt: the detached per-row weights of the fkl / rkl parts; else unread).
// p = softmax(zs / tau), q = softmax(zt / tau / tea) (tea = 1 without use_tea_temp).
// A vocabulary entry whose logit is infinite contributes 0 to the divergence (zs for
// forward_kl and the fkl part, zs or zt for the others); the gradient is the reference's
// closed form (defined for finite logits). dz is unread without need_grad.
template <typename T>
__device__ __forceinline__ void ct_kd_rows(const T* __restrict__ zs, const T* __restrict__ zt,
                                           long long rows, int V, int kind, T tau, T tea, T skew,
                                           const T* __restrict__ wh, const T* __restrict__ wt,
                                           int need_grad, T* __restrict__ div, T* __restrict__ dz) {
  __shared__ T red[32];
  __shared__ T redm[32];
  const T inf = RiNum<T>::inf();
  const T l = skew;
  for (long long r = blockIdx.x; r < rows; r += gridDim.x) {
    const T* __restrict__ a = zs + r * (long long)V;
    const T* __restrict__ b = zt + r * (long long)V;
    T ms = -inf, ss = (T)0, mt = -inf, st = (T)0;
    for (int v = threadIdx.x; v < V; v += blockDim.x) {
      ct_lse_push(ms, ss, a[v] / tau);
      ct_lse_push(mt, st, b[v] / tau / tea);
    }
    ct_block_lse(ms, ss, redm, red);
    ct_block_lse(mt, st, redm, red);
    const T ls = ct_lse(ms, ss), lt = ct_lse(mt, st);
    T acc = (T)0, acc2 = (T)0, spg = (T)0;   // main sum, rkl sum (adaptive), sum p g
    for (int v = threadIdx.x; v < V; v += blockDim.x) {
      const T lp = a[v] / tau - ls, lq = b[v] / tau / tea - lt;
      const T p = RiNum<T>::ex(lp), q = RiNum<T>::ex(lq);
      const bool inf_s = ct_isinf(a[v]);
      const bool both = inf_s || ct_isinf(b[v]);
      if (kind == 0 || kind == 5) { if (!inf_s) acc += q * (lq - lp); }
      if (kind == 1 || kind == 5) {
        if (!both) { if (kind == 1) acc += p * (lp - lq); else acc2 += p * (lp - lq); }
      } else if (kind == 2) {
        if (!both) acc += q * (lq - RiNum<T>::lg(l * q + ((T)1 - l) * p));
      } else if (kind == 3) {
        if (!both) acc += p * (lp - RiNum<T>::lg(((T)1 - l) * q + l * p));
      } else if (kind == 4) {
        const T e = (T)1e-9, lm = RiNum<T>::lg((p + q) / (T)2 + e);
        if (!both) acc += (T)0.5 * (q * (RiNum<T>::lg(q + e) - lm) + p * (RiNum<T>::lg(p + e) - lm));
      }
      if (need_grad && kind != 0) spg += p * ct_dfdp(kind == 5 ? 1 : kind, p, lp, q, lq, l);
    }
    acc = ct_block_sum(acc, red);
    if (kind == 5) acc2 = ct_block_sum(acc2, red);
    if (need_grad && kind != 0) spg = ct_block_sum(spg, red);
    const T h = kind == 5 ? wh[r] : (T)0, t = kind == 5 ? wt[r] : (T)0;
    if (threadIdx.x == 0) div[r] = kind == 5 ? h * acc + t * acc2 : acc;
    if (need_grad) {
      T* __restrict__ d = dz + r * (long long)V;
      for (int v = threadIdx.x; v < V; v += blockDim.x) {
        const T lp = a[v] / tau - ls, lq = b[v] / tau / tea - lt;
        const T p = RiNum<T>::ex(lp), q = RiNum<T>::ex(lq);
        T g;
        if (kind == 0) g = (p - q) / tau;
        else if (kind == 5) g = h * ((p - q) / tau) + t * (p * (ct_dfdp(1, p, lp, q, lq, l) - spg) / tau);
        else g = p * (ct_dfdp(kind, p, lp, q, lq, l) - spg) / tau;
        d[v] = g;
      }
    }
  }
}

// Per-row statistic of p = softmax(z) (sec. 4): mode 0 the entropy -sum p log(p + 1e-9),
// mode 1 the largest probability max_v p_v = exp(max z - lse).
template <typename T>
__device__ __forceinline__ void ct_row_stat(const T* __restrict__ z, long long rows, int V,
                                            int mode, T* __restrict__ out) {
  __shared__ T red[32];
  __shared__ T redm[32];
  const T inf = RiNum<T>::inf();
  for (long long r = blockIdx.x; r < rows; r += gridDim.x) {
    const T* __restrict__ a = z + r * (long long)V;
    T mx = -inf, s = (T)0;
    for (int v = threadIdx.x; v < V; v += blockDim.x) ct_lse_push(mx, s, a[v]);
    ct_block_lse(mx, s, redm, red);
    const T lse = ct_lse(mx, s);
    if (mode == 1) {
      if (threadIdx.x == 0) out[r] = RiNum<T>::ex(mx - lse);
      continue;
    }
    T acc = (T)0;
    for (int v = threadIdx.x; v < V; v += blockDim.x) {
      const T p = RiNum<T>::ex(a[v] - lse);
      acc += p * RiNum<T>::lg(p + (T)1e-9);
    }
    acc = ct_block_sum(acc, red);
    if (threadIdx.x == 0) out[r] = -acc;
  }
}

// TIS-DPO per token (sec. 10): p = softmax(z), q = softmax(zr); writes
// a = log p(y) - log q(y), K = sum_v p (log p - log q), and both log-sum-exps.
template <typename T>
__device__ __forceinline__ void ct_tis_fwd(const T* __restrict__ z, const T* __restrict__ zr,
                                           const long long* __restrict__ y, long long rows, int V,
                                           T* __restrict__ a_out, T* __restrict__ k_out,
                                           T* __restrict__ lsep, T* __restrict__ lseq) {
  __shared__ T red[32];
  __shared__ T redm[32];
  const T inf = RiNum<T>::inf();
  for (long long r = blockIdx.x; r < rows; r += gridDim.x) {
    const T* __restrict__ a = z + r * (long long)V;
    const T* __restrict__ b = zr + r * (long long)V;
    T mp = -inf, sp = (T)0, mq = -inf, sq = (T)0;
    for (int v = threadIdx.x; v < V; v += blockDim.x) {
      ct_lse_push(mp, sp, a[v]);
      ct_lse_push(mq, sq, b[v]);
    }
    ct_block_lse(mp, sp, redm, red);
    ct_block_lse(mq, sq, redm, red);
    const T lp0 = ct_lse(mp, sp), lq0 = ct_lse(mq, sq);
    T acc = (T)0;
    for (int v = threadIdx.x; v < V; v += blockDim.x) {
      const T lp = a[v] - lp0, lq = b[v] - lq0;
      acc += RiNum<T>::ex(lp) * (lp - lq);
    }
    acc = ct_block_sum(acc, red);
    if (threadIdx.x == 0) {
      const long long t = y[r];
      a_out[r] = (a[t] - lp0) - (b[t] - lq0);
      k_out[r] = acc;
      lsep[r] = lp0;
      lseq[r] = lq0;
    }
  }
}

// TIS-DPO gradient per token: dz = c [(e_y - p) - alpha p (log p - log q - K)]
// (c = g_row omega m per token; the outputs of ct_tis_fwd supply lse and K).
template <typename T>
__device__ __forceinline__ void ct_tis_grad(const T* __restrict__ z, const T* __restrict__ zr,
                                            const long long* __restrict__ y, long long rows, int V,
                                            const T* __restrict__ lsep, const T* __restrict__ lseq,
                                            const T* __restrict__ K, const T* __restrict__ c,
                                            T alpha, T* __restrict__ dz) {
  for (long long r = blockIdx.x; r < rows; r += gridDim.x) {
    const T* __restrict__ a = z + r * (long long)V;
    const T* __restrict__ b = zr + r * (long long)V;
    T* __restrict__ d = dz + r * (long long)V;
    const T lp0 = lsep[r], lq0 = lseq[r], k = K[r], cr = c[r];
    const long long t = y[r];
    for (int v = threadIdx.x; v < V; v += blockDim.x) {
      const T lp = a[v] - lp0, lq = b[v] - lq0;
      const T p = RiNum<T>::ex(lp);
      const T onehot = (v == t) ? (T)1 : (T)0;
      d[v] = cr * ((onehot - p) - alpha * (p * (lp - lq - k)));
    }
  }
}

// Segment sum (sec. 8): out[row, seg] += x[row, k] over seg >= 0 (float64 atomics, out and
// cnt pre-zeroed; cnt counts the tokens when need_cnt). seg is (rows, K), or (K,) when
// shared != 0. Threads grid-stride over the rows * K tokens.
template <typename T>
__device__ __forceinline__ void ct_span_sum(const T* __restrict__ x, const long long* __restrict__ seg,
                                            long long rows, int K, int R, int shared,
                                            int need_cnt, double* __restrict__ out,
                                            double* __restrict__ cnt) {
  const long long total = rows * (long long)K;
  const long long stride = (long long)gridDim.x * blockDim.x;
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += stride) {
    const long long row = i / K;
    const long long s = seg[shared ? i % K : i];
    if (s < 0) continue;
    atomicAdd(out + row * R + s, (double)x[i]);
    if (need_cnt) atomicAdd(cnt + row * R + s, 1.0);
  }
}
"""

_INF_SSM = r"""
// ---------------------------------------------------------------- Inf-SSM (inf_ssm.md sec. 2, 3)
// Variant "code" distance of single-output diagonal systems (a, c) (n1 states) and (b, e)
// (n2 states), one THREAD per system pair, O(n1 n2) work and O(1) extra memory per system.
// Spec sec. 2: d = 1 - N / (S1 S2), N = sum_ij c_i^2 e_j^2 / D_ij^2, D_ij = 1 - a_i b_j,
// S1 = sum_i c_i^2 / (1 - a_i^2), S2 likewise. That form cancels (d ~ 0.03 in the code's
// regime: float32 loses ~5 bits on d, and its gradient is a difference of O(1) terms), so the
// kernel evaluates the same quantity without cancellation: by the identity
// (1 - a^2)(1 - b^2) = (1 - ab)^2 - (a - b)^2, S1 S2 - N = sum_ij w_ij rho_ij^2, hence
//   d = sum_ij u_i v_j rho_ij^2 / W,   u_i = c_i^2 / (1 - a_i^2),  v_j = e_j^2 / (1 - b_j^2),
//   W = S1 S2 = (sum_i u_i)(sum_j v_j),  rho_ij = (a_i - b_j) / D_ij
// (a weighted mean of squared pseudo-hyperbolic distances: every term >= 0), and with
// r_ij = rho_ij^2 - d (one fma) the gradient
//   dd/dc_i = 2 c_i / ((1 - a_i^2) W) sum_j v_j r_ij
//   dd/da_i = 2 u_i / W [ a_i / (1 - a_i^2) sum_j v_j r_ij + sum_j e_j^2 (a_i - b_j) / D_ij^3 ]
//   dd/de_j = 2 e_j / ((1 - b_j^2) W) sum_i u_i r_ij
//   dd/db_j = 2 v_j / W [ b_j / (1 - b_j^2) sum_i u_i r_ij - sum_i c_i^2 (a_i - b_j) / D_ij^3 ]
// (the torch backend's formulas). Everything is computed in the input type T, for the
// distance and for the gradient: no term cancels, so float32 arithmetic meets the float32
// tolerance. Reciprocals: float __fdividef(1, x) (div.approx, 2 ulp; every denominator is in
// (0, 2]), double 1.0 / x.
//
// Blocks take chunks of blockDim.x consecutive systems (grid-stride over chunks; the chunk
// loop is block-uniform, so __syncthreads inside it is safe). staged = 1: the chunk's rows of
// a, c, b, e are contiguous in global memory (n values per system), so the block copies them
// into shared memory with coalesced loads, row t at t * ld (ld = n | 1, odd: the per-thread
// reads of the (i, j) loop hit distinct banks); with need_grad the gradients are written in
// place over the staged rows and copied out with coalesced stores, and the per-j sums of the
// backward live in shared memory too (type T, j-major, stride blockDim.x: conflict-free).
// staged = 0 (rows too large for shared memory): each thread reads and writes its rows in
// global memory directly; the per-j sums go to pu (2 m n2 values of T: P then Q).
// need_grad: 0 the distance only; 1 also da, dc, db, de; 2 also da, dc (db, de not written).
//
// Pass A (forward): sum u, sum v from the diagonal terms, then sum_ij u_i v_j rho_ij^2 with i
// in register tiles of ISS_TILE (one read of b_j, e_j and one v_j serve ISS_TILE
// reciprocals). Pass B (need_grad) recomputes every D_ij (nothing O(n1 n2) is stored) and
// forms, per tile of i,
//   R_i = sum_j v_j r_ij,  T_i = sum_j e_j^2 rho_ij / D_ij^2          (registers)
//   P_j += sum_i u_i r_ij, Q_j += sum_i c_i^2 rho_ij / D_ij^2         (accumulators),
// then the four formulas above.

#define ISS_TILE 4

template <typename T> struct IssNum;
template <> struct IssNum<float> {
  static __device__ __forceinline__ float ex(float x) { return expf(x); }
  static __device__ __forceinline__ float lg1p(float x) { return log1pf(x); }
  static __device__ __forceinline__ float th(float x) { return tanhf(x); }
  static __device__ __forceinline__ float rcp(float x) { return __fdividef(1.0f, x); }
};
template <> struct IssNum<double> {
  static __device__ __forceinline__ double ex(double x) { return exp(x); }
  static __device__ __forceinline__ double lg1p(double x) { return log1p(x); }
  static __device__ __forceinline__ double th(double x) { return tanh(x); }
  static __device__ __forceinline__ double rcp(double x) { return 1.0 / x; }
};

// Inputs ra, rc (n1), rb, re (n2); outputs wa, wc, wb, we (may alias the inputs: every entry
// is read before it is overwritten); accumulators P, Q with stride ps.
template <typename T, bool GRAD>
__device__ __forceinline__ T iss_code_one(const T* ra, const T* rc, int n1, const T* rb,
                                          const T* re, int n2, T* wa, T* wc, T* wb, T* we,
                                          T* P, T* Q, int ps, bool grad_b) {
  typedef IssNum<T> F;
  T Su = (T)0, Sv = (T)0, num = (T)0;
  for (int i = 0; i < n1; ++i) {
    const T ai = ra[i], ci = rc[i];
    Su += ci * ci * F::rcp(fma(-ai, ai, (T)1));
  }
  for (int j = 0; j < n2; ++j) {
    const T bj = rb[j], ej = re[j];
    Sv += ej * ej * F::rcp(fma(-bj, bj, (T)1));
  }
  for (int i0 = 0; i0 < n1; i0 += ISS_TILE) {
    T a[ISS_TILE], u[ISS_TILE], R[ISS_TILE];
#pragma unroll
    for (int k = 0; k < ISS_TILE; ++k) {
      const bool in = i0 + k < n1;          // padding: a = c = 0, u = 0 adds 0
      a[k] = in ? ra[i0 + k] : (T)0;
      const T ck = in ? rc[i0 + k] : (T)0;
      u[k] = ck * ck * F::rcp(fma(-a[k], a[k], (T)1));
      R[k] = (T)0;
    }
    for (int j = 0; j < n2; ++j) {
      const T bj = rb[j], ej = re[j], vj = ej * ej * F::rcp(fma(-bj, bj, (T)1));
#pragma unroll
      for (int k = 0; k < ISS_TILE; ++k) {
        const T rho = (a[k] - bj) * F::rcp(fma(-a[k], bj, (T)1));
        R[k] = fma(vj, rho * rho, R[k]);
      }
    }
#pragma unroll
    for (int k = 0; k < ISS_TILE; ++k) num = fma(u[k], R[k], num);
  }
  const T W = Su * Sv;
  const T dist = num / W;
  if (!GRAD) return dist;

  const T two_w = (T)2 / W;
  for (int j = 0; j < n2; ++j) { P[j * ps] = (T)0; Q[j * ps] = (T)0; }
  for (int i0 = 0; i0 < n1; i0 += ISS_TILE) {
    T a[ISS_TILE], c[ISS_TILE], c2[ISS_TILE], s[ISS_TILE], u[ISS_TILE], R[ISS_TILE], Ti[ISS_TILE];
#pragma unroll
    for (int k = 0; k < ISS_TILE; ++k) {
      const bool in = i0 + k < n1;
      a[k] = in ? ra[i0 + k] : (T)0;
      c[k] = in ? rc[i0 + k] : (T)0;
      c2[k] = c[k] * c[k];
      s[k] = F::rcp(fma(-a[k], a[k], (T)1));       // 1 / (1 - a_i^2)
      u[k] = c2[k] * s[k];
      R[k] = (T)0;
      Ti[k] = (T)0;
    }
    for (int j = 0; j < n2; ++j) {
      const T bj = rb[j], ej = re[j], e2 = ej * ej, vj = e2 * F::rcp(fma(-bj, bj, (T)1));
      T p = (T)0, q = (T)0;
#pragma unroll
      for (int k = 0; k < ISS_TILE; ++k) {
        const T inv = F::rcp(fma(-a[k], bj, (T)1));
        const T rho = (a[k] - bj) * inv;
        const T r = fma(rho, rho, -dist);           // rho_ij^2 - d
        const T t = rho * (inv * inv);              // (a_i - b_j) / D_ij^3
        R[k] = fma(vj, r, R[k]);
        Ti[k] = fma(e2, t, Ti[k]);
        p = fma(u[k], r, p);
        q = fma(c2[k], t, q);
      }
      P[j * ps] += p;
      Q[j * ps] += q;
    }
#pragma unroll
    for (int k = 0; k < ISS_TILE; ++k) {
      if (i0 + k < n1) {
        wc[i0 + k] = two_w * c[k] * s[k] * R[k];
        wa[i0 + k] = two_w * u[k] * fma(a[k] * s[k], R[k], Ti[k]);
      }
    }
  }
  if (grad_b) {
    for (int j = 0; j < n2; ++j) {
      const T bj = rb[j], ej = re[j], Pj = P[j * ps], Qj = Q[j * ps];
      const T sb = F::rcp(fma(-bj, bj, (T)1)), vj = ej * ej * sb;
      we[j] = two_w * ej * sb * Pj;
      wb[j] = two_w * vj * fma(bj * sb, Pj, -Qj);
    }
  }
  return dist;
}

// Copy the chunk's rows (cnt systems of n values, contiguous from src) to shared memory
// rows of stride ld (coalesced global loads), or back (coalesced global stores).
template <typename T>
__device__ __forceinline__ void iss_stage_in(const T* __restrict__ src, T* dst, int cnt, int n, int ld) {
  for (int k = threadIdx.x; k < cnt * n; k += blockDim.x) {
    const int s = k / n;
    dst[s * ld + (k - s * n)] = src[k];
  }
}
template <typename T>
__device__ __forceinline__ void iss_stage_out(const T* src, T* __restrict__ dst, int cnt, int n, int ld) {
  for (int k = threadIdx.x; k < cnt * n; k += blockDim.x) {
    const int s = k / n;
    dst[k] = src[s * ld + (k - s * n)];
  }
}

template <typename T, bool GRAD>
__device__ __forceinline__ void iss_code_run(const T* __restrict__ a, const T* __restrict__ c,
                                             const T* __restrict__ b, const T* __restrict__ e,
                                             long long m, int n1, int n2, int staged, int grad_b,
                                             T* d, T* da, T* dc, T* db, T* de, T* pu) {
  const int tpb = blockDim.x, t = threadIdx.x;
  const int ld1 = n1 | 1, ld2 = n2 | 1;
  T* sa = (T*)ri_dynamic_smem();   // tpb rows of ld1
  T* sc = sa + tpb * ld1;
  T* sb = sc + tpb * ld1;          // tpb rows of ld2
  T* se = sb + tpb * ld2;
  T* sP = se + tpb * ld2;          // n2 x tpb (j-major), GRAD only
  T* sQ = sP + tpb * n2;
  for (long long base = (long long)blockIdx.x * tpb; base < m; base += (long long)gridDim.x * tpb) {
    const int cnt = (int)(m - base < (long long)tpb ? m - base : (long long)tpb);
    const long long s = base + t;
    if (staged) {
      iss_stage_in(a + base * n1, sa, cnt, n1, ld1);
      iss_stage_in(c + base * n1, sc, cnt, n1, ld1);
      iss_stage_in(b + base * n2, sb, cnt, n2, ld2);
      iss_stage_in(e + base * n2, se, cnt, n2, ld2);
      __syncthreads();
      if (t < cnt) {
        T* ra = sa + t * ld1; T* rc = sc + t * ld1; T* rb = sb + t * ld2; T* re = se + t * ld2;
        d[s] = iss_code_one<T, GRAD>(ra, rc, n1, rb, re, n2, ra, rc, rb, re, sP + t, sQ + t, tpb,
                                     grad_b != 0);
      }
      __syncthreads();
      if (GRAD) {
        iss_stage_out(sa, da + base * n1, cnt, n1, ld1);
        iss_stage_out(sc, dc + base * n1, cnt, n1, ld1);
        if (grad_b) {
          iss_stage_out(sb, db + base * n2, cnt, n2, ld2);
          iss_stage_out(se, de + base * n2, cnt, n2, ld2);
        }
        __syncthreads();
      }
    } else if (t < cnt) {
      const long long o1 = s * n1, o2 = s * n2;
      d[s] = iss_code_one<T, GRAD>(a + o1, c + o1, n1, b + o2, e + o2, n2, da + o1, dc + o1,
                                   db + o2, de + o2, pu + o2, pu + m * n2 + o2, 1, grad_b != 0);
    }
  }
}

template <typename T>
__device__ __forceinline__ void iss_code_dist(const T* __restrict__ a, const T* __restrict__ c,
                                              const T* __restrict__ b, const T* __restrict__ e,
                                              long long m, int n1, int n2, int staged,
                                              int need_grad, T* d, T* da, T* dc, T* db, T* de,
                                              T* pu) {
  if (need_grad)
    iss_code_run<T, true>(a, c, b, e, m, n1, n2, staged, need_grad == 1, d, da, dc, db, de, pu);
  else
    iss_code_run<T, false>(a, c, b, e, m, n1, n2, staged, 0, d, da, dc, db, de, pu);
}

// Mamba scan statistics, channel_reduce = "mean" (spec sec. 3): for every row r = (b, l) and
// state j, Abar = mean_d exp(dt[b,d,l] A[d,j]), dt = softplus(delta_raw[b,d,l] + bias[d])
// (softplus(x) = max(x, 0) + log1p(exp(-|x|))), A = -exp(A_log) given; a = tanh(Abar / 2)
// with squash, else Abar; c[r, j] = tanh(C[b,j,l] / 2) (or C). Block (bx, by): threadIdx.x
// runs over rows (consecutive l: coalesced loads of delta_raw[b, d, :] and C[b, j, :]),
// threadIdx.y splits the channels d (d = ty, ty + by, ...); per state chunk of ISS_JT the
// partial sums of the by channel groups meet in shared memory (ISS_JT * bx * by values),
// summed in a fixed order. A[d, j] is the same for a warp (broadcast loads). Nothing of size
// B D L n is formed.
#define ISS_JT 16

template <typename T>
__device__ __forceinline__ T iss_softplus(T x) {
  const T ax = x < (T)0 ? -x : x;
  return (x > (T)0 ? x : (T)0) + IssNum<T>::lg1p(IssNum<T>::ex(-ax));
}

template <typename T>
__device__ __forceinline__ void iss_mamba_mean(const T* __restrict__ x, const T* __restrict__ A,
                                               const T* __restrict__ C, const T* __restrict__ bias,
                                               int has_bias, long long B, int D, int L, int n,
                                               int squash, T* __restrict__ a_out,
                                               T* __restrict__ c_out) {
  T* red = (T*)ri_dynamic_smem();            // ISS_JT x by x bx
  const int bx = blockDim.x, by = blockDim.y, tx = threadIdx.x, ty = threadIdx.y;
  const long long rows = B * (long long)L;
  for (long long r0 = (long long)blockIdx.x * bx; r0 < rows; r0 += (long long)gridDim.x * bx) {
    const long long r = r0 + tx;
    const bool live = r < rows;
    const long long bb = live ? r / L : 0;
    const int l = live ? (int)(r - bb * L) : 0;
    const T* xr = x + bb * D * (long long)L + l;
    for (int j0 = 0; j0 < n; j0 += ISS_JT) {
      T acc[ISS_JT];
#pragma unroll
      for (int k = 0; k < ISS_JT; ++k) acc[k] = (T)0;
      if (live) {
        for (int dd = ty; dd < D; dd += by) {
          T v = xr[(long long)dd * L];
          if (has_bias) v += bias[dd];
          const T dt = iss_softplus(v);
          const T* Ad = A + (long long)dd * n + j0;
#pragma unroll
          for (int k = 0; k < ISS_JT; ++k)
            if (j0 + k < n) acc[k] += IssNum<T>::ex(dt * Ad[k]);
        }
      }
#pragma unroll
      for (int k = 0; k < ISS_JT; ++k) red[(k * by + ty) * bx + tx] = acc[k];
      __syncthreads();
      for (int k = ty; k < ISS_JT; k += by) {
        if (live && j0 + k < n) {
          T s = (T)0;
          for (int y = 0; y < by; ++y) s += red[(k * by + y) * bx + tx];
          const T v = s / (T)D;
          a_out[r * n + j0 + k] = squash ? IssNum<T>::th(v * (T)0.5) : v;
        }
      }
      __syncthreads();
    }
    if (live) {
      for (int j = ty; j < n; j += by) {
        const T v = C[(bb * n + j) * (long long)L + l];
        c_out[r * n + j] = squash ? IssNum<T>::th(v * (T)0.5) : v;
      }
    }
  }
}
"""

_CAUSAL_DISCRETE = r"""
// ---------------------------------------------------------------- causal discrete (causal_discrete.md sec. 1, 2, 4, 8)
// Counting by sorting: the glue sorts int64 keys (cupy.sort / cupy.argsort, CUB radix sort);
// these kernels read the SORTED keys and find every count they need by lower bounds in that
// array (galloping from the thread's own position, then a binary search). No atomics, no
// shared-memory tables, no per-thread arrays: any number of categories, segments of any
// length (a segment may span any number of blocks; every thread reads global memory).
//
// cd_lower_bound(a, lo, hi, v): first p in [lo, hi) with a[p] >= v, hi if none (a ascending).
// cd_gallop(a, n, t, v): first p in [0, n] with a[p] >= v, searched outwards from t with
// steps 1, 2, 4, ... then a binary search: O(log |p - t|) reads, all near t (a singleton
// segment costs one read per bound).

__device__ __forceinline__ long long cd_lower_bound(const long long* __restrict__ a, long long lo,
                                                     long long hi, long long v) {
  while (lo < hi) {
    const long long mid = lo + ((hi - lo) >> 1);
    if (a[mid] < v) lo = mid + 1; else hi = mid;
  }
  return lo;
}

__device__ __forceinline__ long long cd_gallop(const long long* __restrict__ a, long long n,
                                               long long t, long long v) {
  if (v <= a[t]) {                       // answer in [0, t]; invariant a[hi] >= v
    long long hi = t, step = 1, lo = t - 1;
    while (lo >= 0 && a[lo] >= v) { hi = lo; step <<= 1; lo = t - step; }
    if (lo < -1) lo = -1;
    return cd_lower_bound(a, lo + 1, hi, v);
  }
  long long lo = t, step = 1, hi = t + 1; // answer in (t, n]; invariant a[lo] < v
  while (hi < n && a[hi] < v) { lo = hi; step <<= 1; hi = t + step; }
  if (hi > n) hi = n;
  return cd_lower_bound(a, lo + 1, hi, v);
}

// Plug-in keys of node i from the mixed-radix row codes (code < prod K < 2^62,
// code = sum_k X[r, k] stride_k, stride_k = prod_{l > k} K_l): digit x_i = (code / stride) % K
// is removed and appended as the least significant digit,
//   key2 = (hi * stride + lo) * K + x_i,   hi = code / (stride K),  lo = code % stride,
// so key2 < prod K, rows with equal x_-i are consecutive after sorting and ordered by x_i
// inside their segment. packn > 0: key2 * packn + r (the row index rides along: one keys-only
// sort; the glue checks prod K * n < 2^63).
template <typename T>
__device__ __forceinline__ void cd_keys(const long long* __restrict__ code, long long n,
                                        long long stride, int K, long long packn,
                                        long long* __restrict__ out) {
  const long long step = (long long)gridDim.x * blockDim.x;
  for (long long r = (long long)blockIdx.x * blockDim.x + threadIdx.x; r < n; r += step) {
    const long long c = code[r];
    const long long q = c / stride;
    const long long hi = q / K;
    const long long xi = q - hi * K;
    const long long key = ((hi * stride + (c - q * stride)) * K) + xi;
    out[r] = packn ? key * packn + r : key;
  }
}

// Plug-in score of node `col` (spec sec. 1): one thread per SORTED position t (grid-stride).
// sk: the n sorted keys key2 = g K + x (packed with the row when packn > 0, else perm[t] is the
// row). The thread's segment (rows with the same x_-i pattern g) is [lb(g K), lb(g K + K)) and
// the count of category y in it is lb(g K + y + 1) - lb(g K + y) (K + 1 lower bounds, galloping
// from t). It writes the whole row S[row, col, :]:
//   p_hat = (N(y, x_-i) + alpha) / (N(x_-i) + alpha K),  S = 1 / p_hat   (y < K)
//   concrete: S_obs / S - 1  (S_obs at y = x_i),  NaN for K <= y < Kmax.
// Same operations in the same order as the reference (p_hat then its reciprocal).
template <typename T>
__device__ __forceinline__ void cd_plugin(const long long* __restrict__ sk,
                                          const long long* __restrict__ perm, long long n,
                                          long long packn, int K, int Kmax, int d, int col,
                                          T alpha, int concrete, T* __restrict__ S) {
  const long long scale = packn ? packn : 1;
  const long long step = (long long)gridDim.x * blockDim.x;
  for (long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x; t < n; t += step) {
    const long long v = sk[t];
    const long long key = packn ? v / packn : v;
    const long long row = packn ? v - key * packn : perm[t];
    const long long g = key / K;
    const int x = (int)(key - g * K);
    const long long base = g * K;
    const long long lo = cd_gallop(sk, n, t, base * scale);
    const long long hi = cd_gallop(sk, n, t, (base + K) * scale);
    const T tot = (T)(hi - lo) + alpha * (T)K;
    T s_obs = (T)0;
    if (concrete) {
      const long long a = cd_gallop(sk, n, t, (base + x) * scale);
      const long long b = cd_gallop(sk, n, t, (base + x + 1) * scale);
      s_obs = (T)1 / (((T)(b - a) + alpha) / tot);
    }
    T* out = S + (row * d + col) * (long long)Kmax;
    long long prev = lo;
    for (int y = 0; y < K; ++y) {
      const long long nxt = (y + 1 == K) ? hi : cd_gallop(sk, n, t, (base + y + 1) * scale);
      const T s = (T)1 / (((T)(nxt - prev) + alpha) / tot);
      out[y] = concrete ? s_obs / s - (T)1 : s;
      prev = nxt;
    }
    for (int y = K; y < Kmax; ++y) out[y] = RiNum<T>::qnan();
  }
}

// Per (row, node) quantity of the leaf statistic / GSM loss (spec sec. 1, 2), one thread per
// element e = r d + i of the (n, d) output (grid-stride; a warp reads 32 consecutive rows of
// Kmax values: coalesced). Only S[r, i, :K_i] is read (padding never).
//   mode 0 invariance_sum:     sum_{y < K_i} S
//   mode 1 invariance_entropy: -sum_y q_y log q_y,  q_y = (1 / S_y) / sum_y' (1 / S_y')
//   mode 2 var_score:          S[r, i, X[r, i]]
//   mode 3 GSM term:           S[r, i, X_ri]^2 - 2 sum_{y < K_i} S[r, i, y]
// X: int64 (n, d) codes (modes 2, 3 only); cards: int64 (d,).
template <typename T>
__device__ __forceinline__ void cd_row_phi(const T* __restrict__ S, const long long* __restrict__ X,
                                           const long long* __restrict__ cards, long long n, int d,
                                           int Kmax, int mode, T* __restrict__ out) {
  const long long total = n * d;
  const long long step = (long long)gridDim.x * blockDim.x;
  for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < total; e += step) {
    const int i = (int)(e % d);
    const int K = (int)cards[i];
    const T* s = S + e * (long long)Kmax;
    T phi = (T)0;
    if (mode == 1) {
      T qs = (T)0;
      for (int y = 0; y < K; ++y) qs += (T)1 / s[y];
      for (int y = 0; y < K; ++y) {
        const T q = ((T)1 / s[y]) / qs;
        phi -= q * RiNum<T>::lg(q);
      }
    } else if (mode == 2) {
      phi = s[X[e]];
    } else {
      for (int y = 0; y < K; ++y) phi += s[y];
      if (mode == 3) {
        const T so = s[X[e]];
        phi = so * so - (T)2 * phi;
      }
    }
    out[e] = phi;
  }
}

// Keys of the batched CI test (spec sec. 4): for candidate c (local index in the chunk) and
// row r, key = (c ZX + zx[r]) KY + X[r, cand[c]] with zx = z K_x + x_i (< ZX = NZ K_x, NZ the
// strata bound) and KY >= every candidate's card. Sorted, the keys of candidate c fill
// positions [c n, (c + 1) n), grouped by stratum, then x, then y.
template <typename T>
__device__ __forceinline__ void cd_ci_keys(const long long* __restrict__ zx,
                                           const long long* __restrict__ X,
                                           const long long* __restrict__ cand, long long n, int d,
                                           int kc, long long ZX, int KY,
                                           long long* __restrict__ out) {
  const long long total = n * kc;
  const long long step = (long long)gridDim.x * blockDim.x;
  for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < total; e += step) {
    const long long c = e / n;
    const long long r = e - c * n;
    out[e] = (c * ZX + zx[r]) * KY + X[r * d + cand[c]];
  }
}

// G2 / Pearson chi2 of the sorted CI keys: one thread per sorted position t; the thread at the
// FIRST position of a (candidate, stratum) segment (previous key in another segment) does the
// whole stratum; every other thread writes zeros. With cell = K_x KY and the segment [s0, s1)
// (s1 by galloping), lb(x, y) = lower bound of seg cell + x KY + y inside the segment and
//   N_xy = lb(x, y + 1) - lb(x, y),  N_xz = lb(x + 1, 0) - lb(x, 0),  N_yz = sum_x N_xy,
//   N_z = s1 - s0  (all exact integers in double),
//   g2:   2 sum_{N_xy > 0} N_xy log(N_xy N_z / (N_xz N_yz))
//   chi2: sum_{E > 0} (N_xy - E)^2 / E,  E = N_xz N_yz / N_z   (cells with N_xy = 0 included)
//   dof:  (r_z - 1)(c_z - 1), r_z / c_z the non-empty row / column margins.
// The counts are recomputed by binary searches (O(K_x K_y log |segment|) per stratum) instead
// of being stored: no limit on the cards. The candidate of position t is t / n (each candidate
// owns exactly n sorted positions); ky holds its card. Outputs per position (double, int64),
// summed per candidate by the glue.
template <typename T>
__device__ __forceinline__ void cd_ci_stat(const long long* __restrict__ sk, long long m,
                                           long long n, int Kx, int KY,
                                           const long long* __restrict__ ky, int chi2,
                                           double* __restrict__ stat, long long* __restrict__ dof) {
  const long long cell = (long long)Kx * KY;
  const long long step = (long long)gridDim.x * blockDim.x;
  for (long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x; t < m; t += step) {
    const long long seg = sk[t] / cell;
    if (t > 0 && sk[t - 1] / cell == seg) { stat[t] = 0.0; dof[t] = 0; continue; }
    const long long base = seg * cell;
    const long long s0 = t;
    const long long s1 = cd_gallop(sk, m, t, base + cell);
    const int Ky = (int)ky[t / n];
    const double Nz = (double)(s1 - s0);
    int rz = 0;
    for (int x = 0; x < Kx; ++x) {
      const long long a = cd_lower_bound(sk, s0, s1, base + (long long)x * KY);
      const long long b = cd_lower_bound(sk, s0, s1, base + (long long)(x + 1) * KY);
      rz += b > a;
    }
    double st = 0.0;
    int cz = 0;
    for (int y = 0; y < Ky; ++y) {
      long long nyz = 0;
      for (int x = 0; x < Kx; ++x) {
        const long long k0 = base + (long long)x * KY + y;
        nyz += cd_lower_bound(sk, s0, s1, k0 + 1) - cd_lower_bound(sk, s0, s1, k0);
      }
      if (nyz == 0) continue;            // every N_xy and E of this column is 0
      ++cz;
      const double Nyz = (double)nyz;
      for (int x = 0; x < Kx; ++x) {
        const long long k0 = base + (long long)x * KY;
        const double Nxz = (double)(cd_lower_bound(sk, s0, s1, k0 + KY) - cd_lower_bound(sk, s0, s1, k0));
        const double N = (double)(cd_lower_bound(sk, s0, s1, k0 + y + 1) - cd_lower_bound(sk, s0, s1, k0 + y));
        if (chi2) {
          const double E = Nxz * Nyz / Nz;
          if (E > 0.0) { const double r = N - E; st += r * r / E; }
        } else if (N > 0.0) {
          st += N * log(N * Nz / (Nxz * Nyz));
        }
      }
    }
    stat[t] = chi2 ? st : 2.0 * st;
    dof[t] = (long long)(rz - 1) * (long long)(cz - 1);
  }
}
"""

_SAFETY = r"""
// ---------------------------------------------------------------- safety ensembles (safety_ensembles.md A.2, B.2)
// Antibody's flat-vector passes and IBDR's fused per-row loss + gradient. Flat vectors:
// one reduction pass (se_flat_partial: per-block partials; se_flat_finish: one block folds
// them in a fixed order and derives the step's scalar ON THE DEVICE), then one elementwise
// pass reading that scalar from device memory (se_align_apply, se_axpy_apply).
// Sums accumulate in T (float32 for float32 input); IBDR's K x K Gram, its Cholesky, logdet
// and inverse are float64 in every instantiation.

#define SE_KMAX 8                          // particles supported by the fused IBDR kernel
#define SE_NG (SE_KMAX * (SE_KMAX + 1) / 2) // packed upper triangle of the Gram
#define SE_MAXW 8                          // warps per block (blocks of <= 256 threads)
#define SE_NPART 7                         // values per block partial of se_flat_partial

// Block-wide reduction of N values per thread, in place (op 0: sum, 1: max); every thread
// gets the results. Same order for every thread (warp shuffles, then warps 0, 1, ...).
// red: __shared__ U[SE_MAXW * N]; blockDim.x a multiple of 32, at most 32 * SE_MAXW.
template <typename U, int N>
__device__ __forceinline__ void se_block_reduce(U (&v)[N], int op, U* red) {
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
#pragma unroll
  for (int i = 0; i < N; ++i) {
    for (int off = 16; off > 0; off >>= 1) {
      const U o = __shfl_xor_sync(0xffffffffu, v[i], off);
      v[i] = op ? (o > v[i] ? o : v[i]) : v[i] + o;
    }
  }
  __syncthreads();                        // earlier readers of red are done
  if (lane == 0) {
#pragma unroll
    for (int i = 0; i < N; ++i) red[w * N + i] = v[i];
  }
  __syncthreads();
#pragma unroll
  for (int i = 0; i < N; ++i) {
    U r = red[i];
    for (int k = 1; k < nw; ++k) {
      const U o = red[k * N + i];
      r = op ? (o > r ? o : r) : r + o;
    }
    v[i] = r;
  }
}

// Pass 1 of the flat-vector ops, one partial row of SE_NPART values per block:
//   [0] <x, d>   [1] ||d||^2   [2] ||x||^2   [3..6] non-finite counts of x, y, z, r
// mode 0 (align direction): x = g_s, d = y - z formed on the fly (y = g_h, z = g_p), r = g_r
//        only checked (its finiteness folded into this pass: no extra read of g_r);
// mode 1 (lambda): x = g_s, d = y (z, r unread);
// mode 2 (norm): ||x||^2 only (y, z, r unread).
// Threads grid-stride over the P entries; sums in T.
template <typename T>
__device__ __forceinline__ void se_flat_partial(const T* __restrict__ x, const T* __restrict__ y,
                                                const T* __restrict__ z, const T* __restrict__ r,
                                                long long P, int mode, T* __restrict__ part) {
  __shared__ T red[SE_MAXW * SE_NPART];
  T v[SE_NPART];
#pragma unroll
  for (int i = 0; i < SE_NPART; ++i) v[i] = (T)0;
  const long long stride = (long long)gridDim.x * blockDim.x;
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < P; i += stride) {
    const T a = x[i];
    v[2] += a * a;
    if (!ri_finite(a)) v[3] += (T)1;
    if (mode != 2) {
      const T b = y[i];
      if (!ri_finite(b)) v[4] += (T)1;
      T d = b;
      if (mode == 0) {
        const T c = z[i], e = r[i];
        if (!ri_finite(c)) v[5] += (T)1;
        if (!ri_finite(e)) v[6] += (T)1;
        d = b - c;
      }
      v[0] += a * d;
      v[1] += d * d;
    }
  }
  se_block_reduce<T, SE_NPART>(v, 0, red);
  if (threadIdx.x == 0) {
#pragma unroll
    for (int i = 0; i < SE_NPART; ++i) part[(long long)blockIdx.x * SE_NPART + i] = v[i];
  }
}

// Pass 1, second half: ONE block folds the nparts partial rows (fixed order) and derives the
// step scalar on the device. out (8 values):
//   [0] the scalar of pass 2: lam_new (modes 0, 1), the axpy coefficient (modes 2, 3)
//   [1] lam_raw (modes 0, 1)     [2..5] non-finite counts of x, y, z, r     [6] ||x||^2
//   [7] <x, d>
// mode 0/1: kkt = 0: lam_raw = max(eta - <x,d> / (||d|| ||x|| + 1e-8), 0)
//           kkt = 1: lam_raw = max(eta - <x,d> / (||d||^2 + 1e-8), 0)
//           has_ema 0: lam_new = lam_raw; 1: m ema_val + (1 - m) lam_raw; 2: the same with
//           the EMA read from ema_ptr[0] (a 0-d device array: no host round trip)
// mode 2 (harmful_perturb): coef = a / (||x|| + e)                   (a = -alpha, e = eps)
// mode 3 (dro_ascent):      coef = min(1, a / (||x|| + e)) * f       (a = clip, e = 1e-6,
//                                                                     f = 1 / (2 lam))
template <typename T>
__device__ __forceinline__ void se_flat_finish(const T* __restrict__ part, int nparts, int mode,
                                               int kkt, T eta, T momentum, int has_ema, T ema_val,
                                               const T* __restrict__ ema_ptr, T a, T e, T f,
                                               T* __restrict__ out) {
  __shared__ T red[SE_MAXW * SE_NPART];
  T v[SE_NPART];
#pragma unroll
  for (int i = 0; i < SE_NPART; ++i) v[i] = (T)0;
  for (int p = threadIdx.x; p < nparts; p += blockDim.x) {
#pragma unroll
    for (int i = 0; i < SE_NPART; ++i) v[i] += part[(long long)p * SE_NPART + i];
  }
  se_block_reduce<T, SE_NPART>(v, 0, red);
  if (threadIdx.x == 0) {
    const T dot = v[0], dd = v[1], ss = v[2];
    T s0 = (T)0, raw = (T)0;
    if (mode <= 1) {
      const T den = kkt ? dd + (T)1e-8 : sqrt(dd) * sqrt(ss) + (T)1e-8;
      raw = eta - dot / den;
      raw = raw > (T)0 ? raw : (raw == raw ? (T)0 : raw);
      if (has_ema == 0) s0 = raw;
      else {
        const T m = momentum;
        const T prev = has_ema == 1 ? ema_val : ema_ptr[0];
        s0 = m * prev + ((T)1 - m) * raw;
      }
    } else if (mode == 2) {
      s0 = a / (sqrt(ss) + e);
    } else {
      T fac = a / (sqrt(ss) + e);
      fac = fac < (T)1 ? fac : (T)1;
      s0 = fac * f;
    }
    out[0] = s0;
    out[1] = raw;
    out[2] = v[3];
    out[3] = v[4];
    out[4] = v[5];
    out[5] = v[6];
    out[6] = ss;
    out[7] = dot;
  }
}

// Pass 2 of antibody_align_direction: g = g_s + lam (g_h - g_p) + lam2 g_r, lam = coef[0]
// (written by se_flat_finish on the device). Threads grid-stride over P.
template <typename T>
__device__ __forceinline__ void se_align_apply(const T* __restrict__ gs, const T* __restrict__ gh,
                                               const T* __restrict__ gp, const T* __restrict__ gr,
                                               const T* __restrict__ coef, T lam2, long long P,
                                               T* __restrict__ g) {
  const T lam = coef[0];
  const long long stride = (long long)gridDim.x * blockDim.x;
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < P; i += stride)
    g[i] = gs[i] + lam * (gh[i] - gp[i]) + lam2 * gr[i];
}

// Pass 2 of harmful_perturb / dro_ascent: out = x + coef[0] g.
template <typename T>
__device__ __forceinline__ void se_axpy_apply(const T* __restrict__ x, const T* __restrict__ g,
                                              const T* __restrict__ coef, long long P,
                                              T* __restrict__ out) {
  const T c = coef[0];
  const long long stride = (long long)gridDim.x * blockDim.x;
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < P; i += stride)
    out[i] = x[i] + c * g[i];
}

// IBDR, one block per row b (blocks grid-stride over the B rows). X (K, B, C): logits
// (mode 0: code, 1: paper) or probabilities (mode 2: dpp_logdet_diversity, P = X, no softmax).
// Per row:
//   A) block max of every particle's logits and of Fbar = (1/K) sum_k F_k, min of X, and the
//      count of non-finite entries;   B) block sums of exp -> lse_k, lse(Fbar);
//   CE_b = lse(Fbar) - Fbar_y (code) or (1/K) sum_k (lse_k - F_ky) (paper);
//   C) (diversity) S_ij = sum_{c != y} P_ic P_jc in float64 (packed upper triangle), then
//      thread 0: nn_k = max(||Q_k||, 1e-12), G = S / (nn nn^T), M = G + jitter I, Cholesky,
//      logdet, M^{-1} (float64, shared memory); w = 1 (code/dpp) or det M (paper);
//      pr_k = <qh_k, g_k> = 2 w (M^{-1} G)_kk, proj_k = pr_k where ||Q_k|| >= 1e-12 else 0
//      (F.normalize's clamp), r_k = <P_k, gP_k> = pr_k - proj_k G_kk (P_kc = nn_k qh_kc);
//   D) (need_grad) per class: g_kc = 2 w sum_j Minv_kj qh_jc,
//      gQ_kc = (g_kc - proj_k qh_kc) / nn_k (0 at c = y), and
//      dX_kc = dCE_kc - (alpha / B) P_kc (gQ_kc - r_k),
//      dCE_kc = (softmax(Fbar)_c - [c = y]) / (K B) (code) or (P_kc - [c = y]) / (K B) (paper).
// rowout (B, 5) float64: CE_b, logdet M_b (code, dpp) or det M_b (paper) (0 without the
// diversity term), non-finite count, min of X over the row, 1 if the Cholesky failed.
// A label outside [0, C) is read as "no class removed" (validation raises afterwards; no
// out-of-bounds access). K <= SE_KMAX (the host refuses more).
template <typename T>
__device__ __forceinline__ void se_ibdr_rows(const T* __restrict__ X, const long long* __restrict__ y,
                                             int K, long long B, int C, int mode, int diversity,
                                             double alpha, double jitter, int need_grad,
                                             double* __restrict__ rowout, T* __restrict__ dX) {
  __shared__ T redT[SE_MAXW * (SE_KMAX + 3)];
  __shared__ double redD[SE_MAXW * SE_NG];
  __shared__ double sInv[SE_KMAX * SE_KMAX];
  __shared__ double sAux[4 * SE_KMAX + 2];          // nn, proj, r, big; coefg, unused
  const T inf = RiNum<T>::inf();
  const long long BC = B * (long long)C;
  const T invK = (T)1 / (T)K;
  const bool probs = mode == 2;
  for (long long b = blockIdx.x; b < B; b += gridDim.x) {
    const long long y0 = y[b];
    const int yb = (y0 >= 0 && y0 < (long long)C) ? (int)y0 : -1;
    const T* __restrict__ Xb = X + b * (long long)C;
    // ---- A) maxima (slots 0..K-1 particles, SE_KMAX Fbar), -min, non-finite flag
    T va[SE_KMAX + 3];
#pragma unroll
    for (int k = 0; k < SE_KMAX + 2; ++k) va[k] = -inf;
    va[SE_KMAX + 2] = (T)0;
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
      T fb = (T)0;
#pragma unroll
      for (int k = 0; k < SE_KMAX; ++k) {
        if (k < K) {
          const T x = Xb[k * BC + c];
          va[k] = x > va[k] ? x : va[k];
          va[SE_KMAX + 1] = -x > va[SE_KMAX + 1] ? -x : va[SE_KMAX + 1];
          if (!ri_finite(x)) va[SE_KMAX + 2] = (T)1;
          fb += x;
        }
      }
      fb *= invK;
      va[SE_KMAX] = fb > va[SE_KMAX] ? fb : va[SE_KMAX];
    }
    se_block_reduce<T, SE_KMAX + 3>(va, 1, redT);
    // ---- B) sums of exp (logits only)
    T lse[SE_KMAX + 1];
#pragma unroll
    for (int k = 0; k <= SE_KMAX; ++k) lse[k] = (T)0;
    if (!probs) {
      T vs[SE_KMAX + 1];
#pragma unroll
      for (int k = 0; k <= SE_KMAX; ++k) vs[k] = (T)0;
      for (int c = threadIdx.x; c < C; c += blockDim.x) {
        T fb = (T)0;
#pragma unroll
        for (int k = 0; k < SE_KMAX; ++k) {
          if (k < K) {
            const T x = Xb[k * BC + c];
            vs[k] += RiNum<T>::ex(x - va[k]);
            fb += x;
          }
        }
        fb *= invK;
        vs[SE_KMAX] += RiNum<T>::ex(fb - va[SE_KMAX]);
      }
      se_block_reduce<T, SE_KMAX + 1>(vs, 0, redT);
#pragma unroll
      for (int k = 0; k <= SE_KMAX; ++k) lse[k] = va[k] + RiNum<T>::lg(vs[k]);
    }
    // ---- C) the Gram in float64, Cholesky, logdet, inverse
    double logdet = 0.0, fail = 0.0, wdet = 0.0;
    if (diversity) {
      double g[SE_NG];
#pragma unroll
      for (int i = 0; i < SE_NG; ++i) g[i] = 0.0;
      for (int c = threadIdx.x; c < C; c += blockDim.x) {
        if (c == yb) continue;
        double p[SE_KMAX];
#pragma unroll
        for (int k = 0; k < SE_KMAX; ++k) {
          p[k] = 0.0;
          if (k < K) {
            const T x = Xb[k * BC + c];
            p[k] = probs ? (double)x : (double)RiNum<T>::ex(x - lse[k]);
          }
        }
#pragma unroll
        for (int j = 0; j < SE_KMAX; ++j) {
#pragma unroll
          for (int i = 0; i <= j; ++i) g[j * (j + 1) / 2 + i] += p[i] * p[j];
        }
      }
      se_block_reduce<double, SE_NG>(g, 0, redD);
      if (threadIdx.x == 0) {
        double nn[SE_KMAX], Gm[SE_KMAX * SE_KMAX], L[SE_KMAX * SE_KMAX], Li[SE_KMAX * SE_KMAX];
        for (int k = 0; k < K; ++k) {
          const double n = sqrt(g[k * (k + 1) / 2 + k]);
          sAux[3 * SE_KMAX + k] = (n >= 1e-12) ? 1.0 : 0.0;
          nn[k] = n >= 1e-12 ? n : 1e-12;
        }
        for (int j = 0; j < K; ++j)
          for (int i = 0; i <= j; ++i) {
            const double v = g[j * (j + 1) / 2 + i] / (nn[i] * nn[j]);
            Gm[i * SE_KMAX + j] = v;
            Gm[j * SE_KMAX + i] = v;
          }
        for (int j = 0; j < K; ++j) {               // Cholesky of M = G + jitter I
          double s = Gm[j * SE_KMAX + j] + jitter;
          for (int k = 0; k < j; ++k) s -= L[j * SE_KMAX + k] * L[j * SE_KMAX + k];
          if (!(s > 0.0)) { fail = 1.0; s = 1.0; }
          const double ljj = sqrt(s);
          L[j * SE_KMAX + j] = ljj;
          logdet += log(s);
          for (int i = j + 1; i < K; ++i) {
            double t = Gm[i * SE_KMAX + j];
            for (int k = 0; k < j; ++k) t -= L[i * SE_KMAX + k] * L[j * SE_KMAX + k];
            L[i * SE_KMAX + j] = t / ljj;
          }
        }
        for (int col = 0; col < K; ++col)           // L^{-1} (lower), column by column
          for (int i = 0; i < K; ++i) {
            if (i < col) { Li[i * SE_KMAX + col] = 0.0; continue; }
            double t = (i == col) ? 1.0 : 0.0;
            for (int k = col; k < i; ++k) t -= L[i * SE_KMAX + k] * Li[k * SE_KMAX + col];
            Li[i * SE_KMAX + col] = t / L[i * SE_KMAX + i];
          }
        for (int i = 0; i < K; ++i)                 // M^{-1} = L^{-T} L^{-1}
          for (int j = 0; j < K; ++j) {
            double t = 0.0;
            for (int k = (i > j ? i : j); k < K; ++k) t += Li[k * SE_KMAX + i] * Li[k * SE_KMAX + j];
            sInv[i * SE_KMAX + j] = t;
          }
        wdet = mode == 1 ? exp(logdet) : 1.0;
        const double coefg = 2.0 * wdet;
        for (int k = 0; k < K; ++k) {
          double t = 0.0;
          for (int j = 0; j < K; ++j) t += sInv[k * SE_KMAX + j] * Gm[j * SE_KMAX + k];
          const double pr = coefg * t;
          const double proj = sAux[3 * SE_KMAX + k] > 0.0 ? pr : 0.0;
          sAux[k] = nn[k];
          sAux[SE_KMAX + k] = proj;
          sAux[2 * SE_KMAX + k] = pr - proj * Gm[k * SE_KMAX + k];
        }
        sAux[4 * SE_KMAX] = coefg;
      }
      __syncthreads();
    }
    // ---- per-row results
    if (threadIdx.x == 0) {
      double ce = 0.0;
      if (!probs && yb >= 0) {
        if (mode == 0) {
          T fy = (T)0;
          for (int k = 0; k < K; ++k) fy += Xb[k * BC + yb];
          ce = (double)(lse[SE_KMAX] - fy * invK);
        } else {
          T acc = (T)0;
          for (int k = 0; k < K; ++k) acc += lse[k] - Xb[k * BC + yb];
          ce = (double)(acc * invK);
        }
      }
      double* o = rowout + b * 5;
      o[0] = ce;
      o[1] = diversity ? (mode == 1 ? wdet : logdet) : 0.0;
      o[2] = (double)va[SE_KMAX + 2];
      o[3] = -(double)va[SE_KMAX + 1];
      o[4] = fail;
    }
    // ---- D) the gradient
    if (need_grad && !probs) {
      const T inv_kb = (T)1 / ((T)K * (T)B);
      const double aB = alpha / (double)B;
      for (int c = threadIdx.x; c < C; c += blockDim.x) {
        T pk[SE_KMAX];
        double q[SE_KMAX];
        T fb = (T)0;
#pragma unroll
        for (int k = 0; k < SE_KMAX; ++k) {
          pk[k] = (T)0;
          q[k] = 0.0;
          if (k < K) {
            const T x = Xb[k * BC + c];
            fb += x;
            pk[k] = RiNum<T>::ex(x - lse[k]);
            if (diversity) q[k] = (double)pk[k] / sAux[k];
          }
        }
        fb *= invK;
        const T onehot = (c == yb) ? (T)1 : (T)0;
        const T pbar = mode == 0 ? RiNum<T>::ex(fb - lse[SE_KMAX]) : (T)0;
#pragma unroll
        for (int k = 0; k < SE_KMAX; ++k) {
          if (k < K) {
            const T dce = ((mode == 0 ? pbar : pk[k]) - onehot) * inv_kb;
            T out = dce;
            if (diversity) {
              double gk = 0.0;
#pragma unroll
              for (int j = 0; j < SE_KMAX; ++j)
                if (j < K) gk += sInv[k * SE_KMAX + j] * q[j];
              gk *= sAux[4 * SE_KMAX];
              const double gq = (c == yb) ? 0.0 : (gk - sAux[SE_KMAX + k] * q[k]) / sAux[k];
              const double dv = (double)pk[k] * (gq - sAux[2 * SE_KMAX + k]);
              out = (T)((double)dce - aB * dv);
            }
            dX[k * BC + b * (long long)C + c] = out;
          }
        }
      }
    }
    __syncthreads();                                // shared state is reused by the next row
  }
}

// prediction_distance: one warp per row (rows grid-stride). d[r] = ||softmax(a_r) -
// softmax(b_r)||_2 in T; bad[2 r], bad[2 r + 1]: 1 if a_r / b_r has a non-finite entry.
template <typename T>
__device__ __forceinline__ T se_warp_sum(T v) {
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

template <typename T>
__device__ __forceinline__ T se_warp_max(T v) {
  for (int off = 16; off > 0; off >>= 1) {
    const T o = __shfl_xor_sync(0xffffffffu, v, off);
    v = o > v ? o : v;
  }
  return v;
}

template <typename T>
__device__ __forceinline__ void se_pred_dist(const T* __restrict__ a, const T* __restrict__ b,
                                             long long rows, int C, T* __restrict__ d,
                                             T* __restrict__ bad) {
  const int lane = threadIdx.x & 31;
  const int wpb = blockDim.x >> 5;
  const T inf = RiNum<T>::inf();
  for (long long r = (long long)blockIdx.x * wpb + (threadIdx.x >> 5); r < rows;
       r += (long long)gridDim.x * wpb) {          // warp-uniform
    const T* __restrict__ ar = a + r * (long long)C;
    const T* __restrict__ br = b + r * (long long)C;
    T ma = -inf, mb = -inf, fa = (T)0, fbad = (T)0;
    for (int c = lane; c < C; c += 32) {
      const T u = ar[c], v = br[c];
      ma = u > ma ? u : ma;
      mb = v > mb ? v : mb;
      if (!ri_finite(u)) fa = (T)1;
      if (!ri_finite(v)) fbad = (T)1;
    }
    ma = se_warp_max(ma);
    mb = se_warp_max(mb);
    fa = se_warp_max(fa);
    fbad = se_warp_max(fbad);
    T sa = (T)0, sb = (T)0;
    for (int c = lane; c < C; c += 32) {
      sa += RiNum<T>::ex(ar[c] - ma);
      sb += RiNum<T>::ex(br[c] - mb);
    }
    sa = se_warp_sum(sa);
    sb = se_warp_sum(sb);
    const T la = ma + RiNum<T>::lg(sa), lb = mb + RiNum<T>::lg(sb);
    T acc = (T)0;
    for (int c = lane; c < C; c += 32) {
      const T t = RiNum<T>::ex(ar[c] - la) - RiNum<T>::ex(br[c] - lb);
      acc += t * t;
    }
    acc = se_warp_sum(acc);
    if (lane == 0) {
      d[r] = sqrt(acc);
      bad[2 * r] = fa;
      bad[2 * r + 1] = fbad;
    }
  }
}
"""

_RECSYS = r"""
// ---------------------------------------------------------------- recsys_vae (recsys_vae.md secs. 2, 6)
// Mult-VAE's multinomial likelihood, one block per user row u (blocks grid-stride over rows):
//   pass 1 (ONE sweep of the row): online max / sum-exp of the logits (running (m, s), rescaled
//          when the max grows), the X-weighted logit sum sx_u = sum_i X_ui z_ui and n_u =
//          sum_i X_ui; block merge of (m, s) pairs; lse_u = m + log s,
//          nll_u = n_u lse_u - sx_u  (= -sum_i X_ui log_softmax(z)_ui);
//   pass 2 (need_grad): dlogits_ui = (exp(z_ui - lse_u) n_u - X_ui) * invU.
// X dense (csr = 0: X (U, I) row-major) or CSR (csr = 1: indptr (U + 1), indices, data; the
// X-weighted sum and the "- X" of pass 2 walk the row's stored entries only).
// rowout (U, 2): nll_u, n_u. Accumulation in T.

#define RV_MAXW 32                          // warps per block (blocks of <= 1024 threads)

template <typename T>
__device__ __forceinline__ void rv_merge(T& m, T& s, T m2, T s2) {
  if (!(m2 > -RiNum<T>::inf())) return;     // (m2, s2) is empty
  if (!(m > -RiNum<T>::inf())) { m = m2; s = s2; return; }
  if (m2 > m) { s = s * RiNum<T>::ex(m - m2) + s2; m = m2; }
  else s = s + s2 * RiNum<T>::ex(m2 - m);
}

// Block reduction of (m, s, sx, n): merge the (m, s) pairs, sum sx and n; every thread gets
// the result (same order for all). red: __shared__ T[4 * RV_MAXW].
template <typename T>
__device__ __forceinline__ void rv_block_lse(T& m, T& s, T& sx, T& n, T* red) {
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
  for (int off = 16; off > 0; off >>= 1) {
    const T m2 = __shfl_xor_sync(0xffffffffu, m, off);
    const T s2 = __shfl_xor_sync(0xffffffffu, s, off);
    const T x2 = __shfl_xor_sync(0xffffffffu, sx, off);
    const T n2 = __shfl_xor_sync(0xffffffffu, n, off);
    rv_merge(m, s, m2, s2);
    sx += x2;
    n += n2;
  }
  __syncthreads();                          // earlier readers of red are done
  if (lane == 0) { red[4 * w] = m; red[4 * w + 1] = s; red[4 * w + 2] = sx; red[4 * w + 3] = n; }
  __syncthreads();
  m = red[0]; s = red[1]; sx = red[2]; n = red[3];
  for (int k = 1; k < nw; ++k) {
    rv_merge(m, s, red[4 * k], red[4 * k + 1]);
    sx += red[4 * k + 2];
    n += red[4 * k + 3];
  }
}

template <typename T>
__device__ __forceinline__ void rv_nll_rows(const T* __restrict__ Z, const T* __restrict__ X,
                                            const int* __restrict__ indptr,
                                            const int* __restrict__ indices,
                                            const T* __restrict__ data, int csr, long long U,
                                            int I, T invU, int need_grad, T* __restrict__ rowout,
                                            T* __restrict__ dZ) {
  __shared__ T red[4 * RV_MAXW];
  const T inf = RiNum<T>::inf();
  for (long long u = blockIdx.x; u < U; u += gridDim.x) {
    const T* __restrict__ z = Z + u * (long long)I;
    T m = -inf, s = (T)0, sx = (T)0, n = (T)0;
    if (!csr) {
      const T* __restrict__ x = X + u * (long long)I;
      for (int c = threadIdx.x; c < I; c += blockDim.x) {
        const T v = z[c], xv = x[c];
        if (v > m) { s = s * RiNum<T>::ex(m - v) + (T)1; m = v; }
        else s += RiNum<T>::ex(v - m);
        sx += xv * v;
        n += xv;
      }
    } else {
      for (int c = threadIdx.x; c < I; c += blockDim.x) {
        const T v = z[c];
        if (v > m) { s = s * RiNum<T>::ex(m - v) + (T)1; m = v; }
        else s += RiNum<T>::ex(v - m);
      }
      for (int p = indptr[u] + (int)threadIdx.x; p < indptr[u + 1]; p += blockDim.x) {
        const T xv = data[p];
        sx += xv * z[indices[p]];
        n += xv;
      }
    }
    rv_block_lse(m, s, sx, n, red);
    const T lse = m + RiNum<T>::lg(s);
    if (threadIdx.x == 0) {
      rowout[2 * u] = n * lse - sx;
      rowout[2 * u + 1] = n;
    }
    if (need_grad) {
      T* __restrict__ d = dZ + u * (long long)I;
      if (!csr) {
        const T* __restrict__ x = X + u * (long long)I;
        for (int c = threadIdx.x; c < I; c += blockDim.x)
          d[c] = (RiNum<T>::ex(z[c] - lse) * n - x[c]) * invU;
      } else {
        for (int c = threadIdx.x; c < I; c += blockDim.x)
          d[c] = RiNum<T>::ex(z[c] - lse) * n * invU;
        __syncthreads();                    // the dense writes land before the corrections
        for (int p = indptr[u] + (int)threadIdx.x; p < indptr[u + 1]; p += blockDim.x)
          d[indices[p]] -= data[p] * invU;  // column indices of a row are distinct
      }
    }
    __syncthreads();                        // red is reused by the next row
  }
}

// NumPy's pairwise summation (numpy/_core/src/umath/loops_utils.h.src, pairwise_sum: < 8
// terms sequential, <= 128 terms eight accumulators then the rest, beyond: split at half
// rounded down to a multiple of 8) of a[0..n), in double: the metrics' DCG sums are then
// bit-identical to the float64 reference's ``.sum(axis=1)`` of the same row.
__device__ double rv_pairwise(const double* a, long long n) {
  if (n < 8) {
    double r = 0.0;
    for (long long i = 0; i < n; ++i) r += a[i];
    return r;
  }
  if (n <= 128) {
    double r[8];
    for (int j = 0; j < 8; ++j) r[j] = a[j];
    long long i = 8;
    for (; i < n - (n % 8); i += 8)
      for (int j = 0; j < 8; ++j) r[j] += a[i + j];
    double res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
    for (; i < n; ++i) res += a[i];
    return res;
  }
  long long n2 = n / 2;
  n2 -= n2 % 8;
  return rv_pairwise(a, n2) + rv_pairwise(a + n2, n - n2);
}

// NDCG of one row per thread: G (rows, n) float64 holds the gains 1[item_r in T] / log2(r + 2)
// of the ranked list; out[r] = (T)(pairwise(G_r) / idcg[r]), NaN where idcg[r] = 0 (|T| = 0).
template <typename T>
__device__ __forceinline__ void rv_ndcg_rows(const double* __restrict__ G, long long rows,
                                             long long n, const double* __restrict__ idcg,
                                             T* __restrict__ out) {
  const long long stride = (long long)gridDim.x * blockDim.x;
  for (long long r = (long long)blockIdx.x * blockDim.x + threadIdx.x; r < rows; r += stride) {
    const double den = idcg[r];
    out[r] = den > 0.0 ? (T)(rv_pairwise(G + r * n, n) / den) : RiNum<T>::qnan();
  }
}
"""

_GNN = r"""
// ---------------------------------------------------------------- gnn (gnn_pdm.md sec. 6)
// Message passing over a CSR graph (edges stably sorted by (dst, src); ptr (n_rows + 1)) with
// NO atomics: every output element is written by exactly one lane, which visits the row's
// positions in increasing CSR order, so each sum has a fixed order and the results are
// bitwise reproducible. Warp reductions (the softmax max / sum-exp and the row sums of the
// softmax backward) are xor butterflies: fp addition and the (max, sum-exp) merge below are
// commutative, so every lane holds the same bits. Blocks are multiples of 32 threads; warps
// grid-stride over their units. Backward passes w.r.t. the sources run the same kernels on the
// transposed CSR (edges sorted by (src, dst)), whose positions map to CSR positions via eid.

#define GNN_FULL 0xffffffffu

// first k in [0, n) with a[k] > x (a non-decreasing), n if none
__device__ __forceinline__ long long gnn_upper(const long long* __restrict__ a, long long n,
                                               long long x) {
  long long lo = 0, hi = n;
  while (lo < hi) {
    const long long mid = (lo + hi) >> 1;
    if (a[mid] <= x) lo = mid + 1; else hi = mid;
  }
  return lo;
}

template <typename T>
__device__ __forceinline__ T gnn_leaky(T x, T slope) { return x > (T)0 ? x : x * slope; }

// merge a (max, sum-exp) pair into (m, s); commutative (the butterfly gives all lanes one value)
template <typename T>
__device__ __forceinline__ void gnn_merge(T& m, T& s, T m2, T s2) {
  if (!(m2 > -RiNum<T>::inf())) return;
  if (!(m > -RiNum<T>::inf())) { m = m2; s = s2; return; }
  if (m2 > m) { s = s * RiNum<T>::ex(m - m2) + s2; m = m2; }
  else s = s + s2 * RiNum<T>::ex(m2 - m);
}

template <typename T>
__device__ __forceinline__ void gnn_warp_lse(T& m, T& s) {
  for (int off = 16; off > 0; off >>= 1) {
    const T m2 = __shfl_xor_sync(GNN_FULL, m, off);
    const T s2 = __shfl_xor_sync(GNN_FULL, s, off);
    gnn_merge(m, s, m2, s2);
  }
}

template <typename T>
__device__ __forceinline__ T gnn_warp_sum(T v) {
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(GNN_FULL, v, off);
  return v;
}

// online (max, sum-exp) update with one value
template <typename T>
__device__ __forceinline__ void gnn_online(T& m, T& s, T v) {
  if (v > m) { s = s * RiNum<T>::ex(m - v) + (T)1; m = v; }
  else s += RiNum<T>::ex(v - m);
}

// ---- segment sum: one warp per segment, lanes over features f = lane, lane + 32, ... < F:
//   out[r, f] = sum_{p in seg, increasing} wt(p, f) X[g(p), f],  F = H * C,
//   e(p) = has_eid ? eid[p] : p,  g(p) = has_col ? col[p] : e(p),
//   wt(p, f) = has_w ? w[e(p) * H + f / C] : 1   (per-head weights, e.g. GAT's alpha (E, H)).
// Segments: s < n_rows is chunk 0 of row s = its first `chunk` positions, written to out[s];
// s = n_rows + x (x < n_extra, a host bound) is chunk k = 1 + x - extra_ptr[r] of the row r with
// extra_ptr[r] <= x < extra_ptr[r + 1] (extra_ptr = exclusive cumsum over rows of
// ceil(deg / chunk) - 1, at least 0), written to part[extra_ptr[r] + k - 1]; gnn_seg_combine then
// folds a hub row's partials into out[r] in the order k = 1, 2, ... (a fixed order again).
template <typename T>
__device__ __forceinline__ void gnn_seg_sum(const long long* __restrict__ ptr,
                                            const long long* __restrict__ col, int has_col,
                                            const long long* __restrict__ eid, int has_eid,
                                            const T* __restrict__ w, int has_w, int H, int C,
                                            const T* __restrict__ X, long long n_rows,
                                            long long n_extra, long long chunk,
                                            const long long* __restrict__ extra_ptr,
                                            T* __restrict__ out, T* __restrict__ part) {
  const int lane = threadIdx.x & 31;
  const long long wpb = blockDim.x >> 5;
  const long long F = (long long)H * C;
  const long long total = n_rows + n_extra;
  for (long long s = (long long)blockIdx.x * wpb + (threadIdx.x >> 5); s < total;
       s += (long long)gridDim.x * wpb) {
    long long r, k;
    if (s < n_rows) {
      r = s;
      k = 0;
    } else {
      const long long x = s - n_rows;
      if (x >= extra_ptr[n_rows]) break;        // every later segment of this warp is empty too
      r = gnn_upper(extra_ptr, n_rows + 1, x) - 1;
      k = 1 + x - extra_ptr[r];
    }
    const long long p0 = ptr[r] + k * chunk;
    const long long pe = ptr[r + 1];
    const long long p1 = p0 + chunk < pe ? p0 + chunk : pe;
    T* __restrict__ dst = k == 0 ? out + r * F : part + (extra_ptr[r] + k - 1) * F;
    for (long long f = lane; f < F; f += 32) {
      const long long hd = f / C;
      T acc = (T)0;
      for (long long p = p0; p < p1; ++p) {
        const long long e = has_eid ? eid[p] : p;
        const long long g = has_col ? col[p] : e;
        const T v = X[g * F + f];
        acc += has_w ? w[e * H + hd] * v : v;
      }
      dst[f] = acc;
    }
  }
}

// out[r, :] += part[extra_ptr[r]], part[extra_ptr[r] + 1], ... (in that order); rows without
// extra chunks are left alone. One warp per row, lanes over features.
template <typename T>
__device__ __forceinline__ void gnn_seg_combine(const long long* __restrict__ extra_ptr,
                                                long long n_rows, long long F,
                                                const T* __restrict__ part,
                                                T* __restrict__ out) {
  const int lane = threadIdx.x & 31;
  const long long wpb = blockDim.x >> 5;
  for (long long r = (long long)blockIdx.x * wpb + (threadIdx.x >> 5); r < n_rows;
       r += (long long)gridDim.x * wpb) {
    const long long a = extra_ptr[r], b = extra_ptr[r + 1];
    if (a == b) continue;
    for (long long f = lane; f < F; f += 32) {
      T acc = out[r * F + f];
      for (long long q = a; q < b; ++q) acc += part[q * F + f];
      out[r * F + f] = acc;
    }
  }
}

// ---- per-edge dot products: out[p, h] = sum_c A[r, h, c] B[col[p], h, c] for the positions p
// of row r (c increasing). One warp per row, lanes over the row's positions.
template <typename T>
__device__ __forceinline__ void gnn_edge_dot(const long long* __restrict__ ptr,
                                             const long long* __restrict__ col, long long n_rows,
                                             int H, int C, const T* __restrict__ A,
                                             const T* __restrict__ B, T* __restrict__ out) {
  const int lane = threadIdx.x & 31;
  const long long wpb = blockDim.x >> 5;
  const long long F = (long long)H * C;
  for (long long r = (long long)blockIdx.x * wpb + (threadIdx.x >> 5); r < n_rows;
       r += (long long)gridDim.x * wpb) {
    const T* __restrict__ a = A + r * F;
    for (long long p = ptr[r] + lane; p < ptr[r + 1]; p += 32) {
      const T* __restrict__ b = B + col[p] * F;
      for (int h = 0; h < H; ++h) {
        T acc = (T)0;
        for (int c = 0; c < C; ++c) acc += a[h * C + c] * b[h * C + c];
        out[p * H + h] = acc;
      }
    }
  }
}

// ---- GAT forward, one warp per (row r, head h) (unit u = r H + h), never an E x H x C tensor:
//   score_p = LeakyReLU(s_src[col[p], h] + s_dst[r, h] + (has_edge ? s_edge[p, h] : 0))
//   pass 1 (lanes over p): online max m / sum-exp S, butterfly merge;
//   pass 2: alpha[p, h] = exp(score_p - m) / (S + 1e-16);
//   pass 3: out[r, h, c] = sum_p alpha_p Xp[col[p], h, c]; lanes = ng groups of cp lanes
//           (cp a power of two >= min(C, 32), ng = 32 / cp), lane g cp + c takes the positions
//           p0 + g, p0 + g + ng, ... of feature c (c0 + c for C > 32), the groups are folded by a
//           butterfly; alpha_p is recomputed there from the scores (same expression as pass 2).
template <typename T>
__device__ __forceinline__ T gnn_gat_score(const long long* __restrict__ col,
                                           const T* __restrict__ s_src, T sd,
                                           const T* __restrict__ s_edge, int has_edge, T slope,
                                           int H, int h, long long p) {
  T v = s_src[col[p] * H + h] + sd;
  if (has_edge) v += s_edge[p * H + h];
  return gnn_leaky(v, slope);
}

template <typename T>
__device__ __forceinline__ void gnn_gat_fwd(const long long* __restrict__ ptr,
                                            const long long* __restrict__ col, long long n_rows,
                                            int H, int C, const T* __restrict__ s_src,
                                            const T* __restrict__ s_dst,
                                            const T* __restrict__ s_edge, int has_edge, T slope,
                                            const T* __restrict__ Xp, int cp,
                                            T* __restrict__ alpha, T* __restrict__ out) {
  const int lane = threadIdx.x & 31;
  const long long wpb = blockDim.x >> 5;
  const long long units = n_rows * H;
  const int ng = 32 / cp, g = lane / cp, cl = lane % cp;
  for (long long u = (long long)blockIdx.x * wpb + (threadIdx.x >> 5); u < units;
       u += (long long)gridDim.x * wpb) {
    const long long r = u / H;
    const int h = (int)(u % H);
    const long long p0 = ptr[r], p1 = ptr[r + 1];
    const T sd = s_dst[u];
    T m = -RiNum<T>::inf(), s = (T)0;
    for (long long p = p0 + lane; p < p1; p += 32)
      gnn_online(m, s, gnn_gat_score(col, s_src, sd, s_edge, has_edge, slope, H, h, p));
    gnn_warp_lse(m, s);
    const T den = s + (T)1e-16;
    for (long long p = p0 + lane; p < p1; p += 32)
      alpha[p * H + h] =
          RiNum<T>::ex(gnn_gat_score(col, s_src, sd, s_edge, has_edge, slope, H, h, p) - m) / den;
    for (int c0 = 0; c0 < C; c0 += cp) {
      const int c = c0 + cl;
      T acc = (T)0;
      if (c < C) {
        for (long long p = p0 + g; p < p1; p += ng) {
          const T a = RiNum<T>::ex(gnn_gat_score(col, s_src, sd, s_edge, has_edge, slope, H, h, p)
                                   - m) / den;
          acc += a * Xp[(col[p] * H + h) * C + c];
        }
      }
      for (int off = cp; off < 32; off <<= 1) acc += __shfl_xor_sync(GNN_FULL, acc, off);
      if (g == 0 && c < C) out[u * C + c] = acc;
    }
  }
}

// ---- GAT backward of the attention, one warp per (row r, head h), lanes over the row's p:
//   dalpha_p = sum_c G[r, h, c] Xp[col[p], h, c];  sa = sum_p alpha_p dalpha_p (butterfly);
//   de[p, h] = t_p LeakyReLU'(raw_p), t_p = alpha_p (dalpha_p - sa), LeakyReLU' = 1 if raw_p > 0
//   else slope (raw_p the pre-activation score); ds_dst[r, h] = sum_p de[p, h], evaluated as
//   sum_p t_p (LeakyReLU'(raw_p) - 1) (butterfly): sum_p t_p = sa (1 - sum_p alpha_p) =
//   sa 1e-16 / (S + 1e-16) with S >= 1 is dropped (< 1e-16 |sa|), because summing it cancels
//   to rounding noise (~eps |sa|) whenever the row's scores are positive. de holds dalpha
//   between the two passes (each lane rereads only what it wrote).
template <typename T>
__device__ __forceinline__ void gnn_gat_bwd(const long long* __restrict__ ptr,
                                            const long long* __restrict__ col, long long n_rows,
                                            int H, int C, const T* __restrict__ s_src,
                                            const T* __restrict__ s_dst,
                                            const T* __restrict__ s_edge, int has_edge, T slope,
                                            const T* __restrict__ Xp,
                                            const T* __restrict__ alpha,
                                            const T* __restrict__ G, T* __restrict__ de,
                                            T* __restrict__ ds_dst) {
  const int lane = threadIdx.x & 31;
  const long long wpb = blockDim.x >> 5;
  const long long units = n_rows * H;
  for (long long u = (long long)blockIdx.x * wpb + (threadIdx.x >> 5); u < units;
       u += (long long)gridDim.x * wpb) {
    const long long r = u / H;
    const int h = (int)(u % H);
    const long long p0 = ptr[r], p1 = ptr[r + 1];
    const T* __restrict__ gr = G + u * C;
    T sa = (T)0;
    for (long long p = p0 + lane; p < p1; p += 32) {
      const T* __restrict__ xs = Xp + (col[p] * H + h) * C;
      T d = (T)0;
      for (int c = 0; c < C; ++c) d += gr[c] * xs[c];
      de[p * H + h] = d;
      sa += alpha[p * H + h] * d;
    }
    sa = gnn_warp_sum(sa);
    const T sd = s_dst[u];
    T acc = (T)0;
    for (long long p = p0 + lane; p < p1; p += 32) {
      T raw = s_src[col[p] * H + h] + sd;
      if (has_edge) raw += s_edge[p * H + h];
      const T t = alpha[p * H + h] * (de[p * H + h] - sa);
      const T lk = raw > (T)0 ? (T)1 : slope;
      de[p * H + h] = t * lk;
      acc += t * (lk - (T)1);
    }
    acc = gnn_warp_sum(acc);
    if (lane == 0) ds_dst[u] = acc;
  }
}

// ---- segment softmax in input order: row r's entries are q = perm[p], p in [ptr[r], ptr[r+1])
// (perm: the stable sort by dst); one warp per (row, head):
//   alpha[q, h] = exp(x[q, h] - m) / (sum exp(x - m) + 1e-16), m the row's max (online pass).
template <typename T>
__device__ __forceinline__ void gnn_softmax_fwd(const long long* __restrict__ ptr,
                                                const long long* __restrict__ perm,
                                                long long n_rows, int H,
                                                const T* __restrict__ x, T* __restrict__ alpha) {
  const int lane = threadIdx.x & 31;
  const long long wpb = blockDim.x >> 5;
  const long long units = n_rows * H;
  for (long long u = (long long)blockIdx.x * wpb + (threadIdx.x >> 5); u < units;
       u += (long long)gridDim.x * wpb) {
    const long long r = u / H;
    const int h = (int)(u % H);
    const long long p0 = ptr[r], p1 = ptr[r + 1];
    T m = -RiNum<T>::inf(), s = (T)0;
    for (long long p = p0 + lane; p < p1; p += 32) gnn_online(m, s, x[perm[p] * H + h]);
    gnn_warp_lse(m, s);
    const T den = s + (T)1e-16;
    for (long long p = p0 + lane; p < p1; p += 32) {
      const long long q = perm[p] * H + h;
      alpha[q] = RiNum<T>::ex(x[q] - m) / den;
    }
  }
}

// ds[q, h] = alpha[q, h] (g[q, h] - sum_row alpha g) (input order via perm, as above)
template <typename T>
__device__ __forceinline__ void gnn_softmax_bwd(const long long* __restrict__ ptr,
                                                const long long* __restrict__ perm,
                                                long long n_rows, int H,
                                                const T* __restrict__ alpha,
                                                const T* __restrict__ gr, T* __restrict__ ds) {
  const int lane = threadIdx.x & 31;
  const long long wpb = blockDim.x >> 5;
  const long long units = n_rows * H;
  for (long long u = (long long)blockIdx.x * wpb + (threadIdx.x >> 5); u < units;
       u += (long long)gridDim.x * wpb) {
    const long long r = u / H;
    const int h = (int)(u % H);
    const long long p0 = ptr[r], p1 = ptr[r + 1];
    T sa = (T)0;
    for (long long p = p0 + lane; p < p1; p += 32) {
      const long long q = perm[p] * H + h;
      sa += alpha[q] * gr[q];
    }
    sa = gnn_warp_sum(sa);
    for (long long p = p0 + lane; p < p1; p += 32) {
      const long long q = perm[p] * H + h;
      ds[q] = alpha[q] * (gr[q] - sa);
    }
  }
}
"""

_CRPL = r"""
// ---------------------------------------------------------------- crpl (clip_uda_ot.md secs. 2-4)
// CRPL (arXiv 2506.11493). ONE WARP PER ROW b (warps grid-stride over rows; blocks are
// multiples of 32 threads and every lane of a warp runs the same row loop, so the xor
// butterflies below always see full warps); lane j visits the classes k = j, j + 32, ... in
// increasing order. The (max, sum-exp) merge, the sums and the (value, first index) argmax
// merge are commutative, so every lane ends with the same bits. Accumulation in T.

#define CRPL_FULL 0xffffffffu

template <typename T>
__device__ __forceinline__ void crpl_merge(T& m, T& s, T m2, T s2) {
  if (!(m2 > -RiNum<T>::inf())) return;
  if (!(m > -RiNum<T>::inf())) { m = m2; s = s2; return; }
  if (m2 > m) { s = s * RiNum<T>::ex(m - m2) + s2; m = m2; }
  else s = s + s2 * RiNum<T>::ex(m2 - m);
}

template <typename T>
__device__ __forceinline__ void crpl_online(T& m, T& s, T v) {
  if (v > m) { s = s * RiNum<T>::ex(m - v) + (T)1; m = v; }
  else s += RiNum<T>::ex(v - m);
}

template <typename T>
__device__ __forceinline__ T crpl_warp_lse(T m, T s) {
  for (int off = 16; off > 0; off >>= 1) {
    const T m2 = __shfl_xor_sync(CRPL_FULL, m, off);
    const T s2 = __shfl_xor_sync(CRPL_FULL, s, off);
    crpl_merge(m, s, m2, s2);
  }
  return m + RiNum<T>::lg(s);
}

template <typename T>
__device__ __forceinline__ T crpl_warp_sum(T v) {
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(CRPL_FULL, v, off);
  return v;
}

// Reference probabilities (spec sec. 2). G (B, (2 + S) K) = z [T_base; T_S; T_Si]^T (cosines);
// UC (B, S K) = u c^T; uu (B,) = ||u_b||^2; cc (S K,) = ||c_ik||^2; counts (S, K).
// full = S > 0 and every counts[i, k] > 0 (decided on the device by each warp: no host read).
//   D_i = uu_b + cc_ik - 2 uc_bik,  a_i = -gamma D_i,  w_i = exp(a_i - max a) / sum exp(. - max a)
//   full:     l_bk = (cb1 G_base + cs1 G_S + ci1 sum_i w_i G_Si) / div1
//   not full: l_bk = (cb0 G_base + cs0 G_S) / div0
//   P_bk = softmax_k(scale l_b)  (P holds scale * l between the two sweeps).
template <typename T>
__device__ __forceinline__ void crpl_probs_rows(const T* __restrict__ G, const T* __restrict__ UC,
                                                const T* __restrict__ uu, const T* __restrict__ cc,
                                                const T* __restrict__ counts, long long B, int K,
                                                int S, T gamma, T scale, T cb1, T cs1, T ci1,
                                                T div1, T cb0, T cs0, T div0, T* __restrict__ P) {
  const int lane = threadIdx.x & 31;
  const long long warp = ((long long)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
  const long long nwarp = ((long long)gridDim.x * blockDim.x) >> 5;
  const T inf = RiNum<T>::inf();
  int bad = S > 0 ? 0 : 1;
  for (int j = lane; j < S * K; j += 32)
    if (!(counts[j] > (T)0)) bad = 1;
  for (int off = 16; off > 0; off >>= 1) bad |= __shfl_xor_sync(CRPL_FULL, bad, off);
  const bool full = bad == 0;
  const long long ldg = (long long)(2 + S) * K;
  for (long long b = warp; b < B; b += nwarp) {
    const T* __restrict__ g = G + b * ldg;
    const T* __restrict__ uc = UC + b * (long long)S * K;
    T* __restrict__ p = P + b * (long long)K;
    T m = -inf, s = (T)0;
    for (int k = lane; k < K; k += 32) {
      T l;
      if (full) {
        T am = -inf;
        for (int i = 0; i < S; ++i) {
          const T a = -gamma * (uu[b] + cc[i * K + k] - (T)2 * uc[i * K + k]);
          am = a > am ? a : am;
        }
        T ws = (T)0, wg = (T)0;
        for (int i = 0; i < S; ++i) {
          const T a = -gamma * (uu[b] + cc[i * K + k] - (T)2 * uc[i * K + k]);
          const T e = RiNum<T>::ex(a - am);
          ws += e;
          wg += e * g[(long long)(2 + i) * K + k];
        }
        l = (cb1 * g[k] + cs1 * g[K + k] + ci1 * (wg / ws)) / div1;
      } else {
        l = (cb0 * g[k] + cs0 * g[K + k]) / div0;
      }
      const T x = scale * l;
      p[k] = x;
      crpl_online(m, s, x);
    }
    const T lse = crpl_warp_lse(m, s);
    for (int k = lane; k < K; k += 32) p[k] = RiNum<T>::ex(p[k] - lse);
  }
}

// Cross-entropy rows (spec sec. 4). G (B, K) cosines (logits with sa = 1); per row b:
//   xa = sa g, lse_a = logsumexp_k xa;  term_a = sum_k P_bk (lse_a - xa_k)    (has_p: soft CE)
//                                        = lse_a - xa_{y_b} if y_b >= 0, else 0 (has_y: CE)
//                                        = 0                                (neither)
//   lab_b = argmax_k g_bk (first index on ties);
//   hard:  xh = sh g, lse_h = logsumexp_k xh, term_h = lse_h - xh_{lab_b}; else term_h = 0.
//   sp = sum_k P_bk (has_p), else 1.
// rowout (B, 5): term_a, term_h, lse_a, lse_h, sp.
template <typename T>
__device__ __forceinline__ void crpl_ce_rows(const T* __restrict__ G, long long B, int K,
                                             const T* __restrict__ P, int has_p,
                                             const long long* __restrict__ y, int has_y, T sa,
                                             int hard, T sh, T* __restrict__ rowout,
                                             long long* __restrict__ lab) {
  const int lane = threadIdx.x & 31;
  const long long warp = ((long long)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
  const long long nwarp = ((long long)gridDim.x * blockDim.x) >> 5;
  const T inf = RiNum<T>::inf();
  for (long long b = warp; b < B; b += nwarp) {
    const T* __restrict__ g = G + b * (long long)K;
    T ma = -inf, ssa = (T)0, mh = -inf, ssh = (T)0, bv = -inf;
    int bi = K;
    for (int k = lane; k < K; k += 32) {
      const T v = g[k];
      crpl_online(ma, ssa, sa * v);
      if (hard) crpl_online(mh, ssh, sh * v);
      if (bi == K || v > bv) { bv = v; bi = k; }
    }
    const T lse_a = crpl_warp_lse(ma, ssa);
    const T lse_h = hard ? crpl_warp_lse(mh, ssh) : (T)0;
    for (int off = 16; off > 0; off >>= 1) {
      const T v2 = __shfl_xor_sync(CRPL_FULL, bv, off);
      const int i2 = __shfl_xor_sync(CRPL_FULL, bi, off);
      if (i2 < K && (bi == K || v2 > bv || (v2 == bv && i2 < bi))) { bv = v2; bi = i2; }
    }
    T ta = (T)0, sp = (T)1;
    if (has_p) {
      const T* __restrict__ p = P + b * (long long)K;
      T ps = (T)0;
      for (int k = lane; k < K; k += 32) {
        ta += p[k] * (lse_a - sa * g[k]);
        ps += p[k];
      }
      ta = crpl_warp_sum(ta);
      sp = crpl_warp_sum(ps);
    } else if (has_y) {
      const long long yb = y[b];
      ta = yb >= 0 ? lse_a - sa * g[yb] : (T)0;
    }
    if (lane == 0) {
      rowout[5 * b] = ta;
      rowout[5 * b + 1] = hard ? lse_h - sh * g[bi] : (T)0;
      rowout[5 * b + 2] = lse_a;
      rowout[5 * b + 3] = lse_h;
      rowout[5 * b + 4] = sp;
      lab[b] = (long long)bi;
    }
  }
}

// Gradient of  mult * sum_b (coef_b0 term_a,b + coef_b1 term_h,b)  w.r.t. G (rowout and lab from
// crpl_ce_rows on the same inputs; coef (B, 2) on the device, 0 for rows that do not count):
//   dG_bk = mult [coef_b0 sa (exp(xa_k - lse_a) sp_b - tgt_bk)
//                 + coef_b1 sh (exp(xh_k - lse_h) - [k = lab_b])]
//   tgt = P_bk (has_p; sp_b = sum_k P_bk: the exact derivative of the soft CE, the
//         reference's softmax * rowsum(p) - p), [k = y_b] (has_y), 0 (neither).
template <typename T>
__device__ __forceinline__ void crpl_ce_grad(const T* __restrict__ G, long long B, int K,
                                             const T* __restrict__ P, int has_p,
                                             const long long* __restrict__ y, int has_y, T sa,
                                             int hard, T sh, const T* __restrict__ rowout,
                                             const long long* __restrict__ lab,
                                             const T* __restrict__ coef, T mult,
                                             T* __restrict__ dG) {
  const int lane = threadIdx.x & 31;
  const long long warp = ((long long)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
  const long long nwarp = ((long long)gridDim.x * blockDim.x) >> 5;
  for (long long b = warp; b < B; b += nwarp) {
    const T* __restrict__ g = G + b * (long long)K;
    T* __restrict__ d = dG + b * (long long)K;
    const T ca = mult * coef[2 * b], ch = mult * coef[2 * b + 1];
    const T la = rowout[5 * b + 2], lh = rowout[5 * b + 3], sp = rowout[5 * b + 4];
    const long long yb = has_y ? y[b] : -1;
    const long long ab = lab[b];
    for (int k = lane; k < K; k += 32) {
      const T v = g[k];
      const T ta = has_p ? P[b * (long long)K + k] : (k == yb ? (T)1 : (T)0);
      T r = ca * sa * (RiNum<T>::ex(sa * v - la) * sp - ta);
      if (hard) r += ch * sh * (RiNum<T>::ex(sh * v - lh) - (k == ab ? (T)1 : (T)0));
      d[k] = r;
    }
  }
}
"""

@dataclass(frozen=True)
class Template:
    """One kernel template: the module it lives in, its name and its parameters as
    ``(C type with T, name)``; ``T`` becomes ``float`` / ``double`` per instantiation."""

    module: str
    name: str
    params: tuple[tuple[str, str], ...]


TEMPLATES = (
    Template("softdtw", "sdtw_fwd", (
        ("const T*", "C"), ("const long long*", "jobs"), ("int", "njobs"), ("int", "band"),
        ("T", "gamma"), ("int", "store"), ("T*", "rt"), ("double*", "offs"), ("double*", "values"),
        ("int", "use_scratch"), ("T*", "scratch"), ("int", "ring"))),
    Template("softdtw", "sdtw_bwd", (
        ("const T*", "rt"), ("const double*", "offs"), ("const long long*", "jobs"),
        ("int", "njobs"), ("int", "band"), ("T", "gamma"), ("const double*", "values"),
        ("T*", "E"), ("int", "use_scratch"), ("T*", "scratch"), ("int", "ring"))),
    Template("costs", "cost_sq", (
        ("T*", "c"), ("const T*", "xx"), ("const T*", "yy"), ("int", "n"), ("int", "m"),
        ("long long", "nbatch"), ("T", "scale"))),
    Template("costs", "cost_cos", (
        ("T*", "c"), ("int", "n"), ("int", "m"), ("long long", "nbatch"), ("int", "clip"))),
    Template("ot", "sk_col", (
        ("const T*", "C"), ("const T*", "u"), ("T*", "v"), ("const T*", "logb"),
        ("long long", "logb_stride"), ("const T*", "bw"), ("long long", "bw_stride"),
        ("T", "inv_eps"), ("int", "n"), ("int", "m"), ("int", "nbatch"), ("int", "mode"),
        ("double*", "err2"))),
    Template("ot", "sk_row", (
        ("const T*", "C"), ("T*", "u"), ("const T*", "v"), ("const T*", "loga"),
        ("long long", "loga_stride"), ("T", "inv_eps"), ("int", "n"), ("int", "m"),
        ("int", "nbatch"))),
    Template("ot", "sk_linear", (
        ("const T*", "C"), ("const T*", "u"), ("const T*", "v"), ("T", "inv_eps"), ("int", "n"),
        ("int", "m"), ("int", "nbatch"), ("double*", "out"))),
    Template("ot", "any_nan", (("const T*", "x"), ("long long", "size"), ("int*", "flag"))),
    Template("ot", "sk_plan", (
        ("const T*", "C"), ("const T*", "u"), ("const T*", "v"), ("T*", "P"), ("T", "inv_eps"),
        ("int", "n"), ("int", "m"), ("long long", "nbatch"))),
    Template("preference", "pref_lse_block", (
        ("const T*", "Z"), ("long long", "ld"), ("int", "rows"), ("int", "vb"),
        ("const long long*", "y"), ("long long", "j0"), ("T*", "mx"), ("T*", "s"), ("T*", "zy"))),
    Template("preference", "pref_grad_block", (
        ("T*", "G"), ("long long", "ld"), ("int", "rows"), ("int", "vb"),
        ("const long long*", "y"), ("long long", "j0"), ("const T*", "lse"), ("const T*", "c"))),
    Template("cross_tokenizer", "ct_kd_rows", (
        ("const T*", "zs"), ("const T*", "zt"), ("long long", "rows"), ("int", "V"),
        ("int", "kind"), ("T", "tau"), ("T", "tea"), ("T", "skew"), ("const T*", "wh"),
        ("const T*", "wt"), ("int", "need_grad"), ("T*", "div"), ("T*", "dz"))),
    Template("cross_tokenizer", "ct_row_stat", (
        ("const T*", "z"), ("long long", "rows"), ("int", "V"), ("int", "mode"), ("T*", "out"))),
    Template("cross_tokenizer", "ct_tis_fwd", (
        ("const T*", "z"), ("const T*", "zr"), ("const long long*", "y"), ("long long", "rows"),
        ("int", "V"), ("T*", "a_out"), ("T*", "k_out"), ("T*", "lsep"), ("T*", "lseq"))),
    Template("cross_tokenizer", "ct_tis_grad", (
        ("const T*", "z"), ("const T*", "zr"), ("const long long*", "y"), ("long long", "rows"),
        ("int", "V"), ("const T*", "lsep"), ("const T*", "lseq"), ("const T*", "K"),
        ("const T*", "c"), ("T", "alpha"), ("T*", "dz"))),
    Template("cross_tokenizer", "ct_span_sum", (
        ("const T*", "x"), ("const long long*", "seg"), ("long long", "rows"), ("int", "K"),
        ("int", "R"), ("int", "shared"), ("int", "need_cnt"), ("double*", "out"),
        ("double*", "cnt"))),
    Template("inf_ssm", "iss_code_dist", (
        ("const T*", "a"), ("const T*", "c"), ("const T*", "b"), ("const T*", "e"),
        ("long long", "m"), ("int", "n1"), ("int", "n2"), ("int", "staged"), ("int", "need_grad"),
        ("T*", "d"), ("T*", "da"), ("T*", "dc"), ("T*", "db"), ("T*", "de"), ("T*", "pu"))),
    Template("inf_ssm", "iss_mamba_mean", (
        ("const T*", "x"), ("const T*", "A"), ("const T*", "C"), ("const T*", "bias"),
        ("int", "has_bias"), ("long long", "B"), ("int", "D"), ("int", "L"), ("int", "n"),
        ("int", "squash"), ("T*", "a_out"), ("T*", "c_out"))),
    Template("causal_discrete", "cd_keys", (
        ("const long long*", "code"), ("long long", "n"), ("long long", "stride"), ("int", "K"),
        ("long long", "packn"), ("long long*", "out"))),
    Template("causal_discrete", "cd_plugin", (
        ("const long long*", "sk"), ("const long long*", "perm"), ("long long", "n"),
        ("long long", "packn"), ("int", "K"), ("int", "Kmax"), ("int", "d"), ("int", "col"),
        ("T", "alpha"), ("int", "concrete"), ("T*", "S"))),
    Template("causal_discrete", "cd_row_phi", (
        ("const T*", "S"), ("const long long*", "X"), ("const long long*", "cards"),
        ("long long", "n"), ("int", "d"), ("int", "Kmax"), ("int", "mode"), ("T*", "out"))),
    Template("causal_discrete", "cd_ci_keys", (
        ("const long long*", "zx"), ("const long long*", "X"), ("const long long*", "cand"),
        ("long long", "n"), ("int", "d"), ("int", "kc"), ("long long", "ZX"), ("int", "KY"),
        ("long long*", "out"))),
    Template("causal_discrete", "cd_ci_stat", (
        ("const long long*", "sk"), ("long long", "m"), ("long long", "n"), ("int", "Kx"),
        ("int", "KY"), ("const long long*", "ky"), ("int", "chi2"), ("double*", "stat"),
        ("long long*", "dof"))),
    Template("safety", "se_flat_partial", (
        ("const T*", "x"), ("const T*", "y"), ("const T*", "z"), ("const T*", "r"),
        ("long long", "P"), ("int", "mode"), ("T*", "part"))),
    Template("safety", "se_flat_finish", (
        ("const T*", "part"), ("int", "nparts"), ("int", "mode"), ("int", "kkt"), ("T", "eta"),
        ("T", "momentum"), ("int", "has_ema"), ("T", "ema_val"), ("const T*", "ema_ptr"),
        ("T", "a"), ("T", "e"), ("T", "f"), ("T*", "out"))),
    Template("safety", "se_align_apply", (
        ("const T*", "gs"), ("const T*", "gh"), ("const T*", "gp"), ("const T*", "gr"),
        ("const T*", "coef"), ("T", "lam2"), ("long long", "P"), ("T*", "g"))),
    Template("safety", "se_axpy_apply", (
        ("const T*", "x"), ("const T*", "g"), ("const T*", "coef"), ("long long", "P"),
        ("T*", "out"))),
    Template("safety", "se_ibdr_rows", (
        ("const T*", "X"), ("const long long*", "y"), ("int", "K"), ("long long", "B"),
        ("int", "C"), ("int", "mode"), ("int", "diversity"), ("double", "alpha"),
        ("double", "jitter"), ("int", "need_grad"), ("double*", "rowout"), ("T*", "dX"))),
    Template("safety", "se_pred_dist", (
        ("const T*", "a"), ("const T*", "b"), ("long long", "rows"), ("int", "C"), ("T*", "d"),
        ("T*", "bad"))),
    Template("recsys_vae", "rv_nll_rows", (
        ("const T*", "Z"), ("const T*", "X"), ("const int*", "indptr"), ("const int*", "indices"),
        ("const T*", "data"), ("int", "csr"), ("long long", "U"), ("int", "I"), ("T", "invU"),
        ("int", "need_grad"), ("T*", "rowout"), ("T*", "dZ"))),
    Template("recsys_vae", "rv_ndcg_rows", (
        ("const double*", "G"), ("long long", "rows"), ("long long", "n"),
        ("const double*", "idcg"), ("T*", "out"))),
    Template("gnn", "gnn_seg_sum", (
        ("const long long*", "ptr"), ("const long long*", "col"), ("int", "has_col"),
        ("const long long*", "eid"), ("int", "has_eid"), ("const T*", "w"), ("int", "has_w"),
        ("int", "H"), ("int", "C"), ("const T*", "X"), ("long long", "n_rows"),
        ("long long", "n_extra"), ("long long", "chunk"), ("const long long*", "extra_ptr"),
        ("T*", "out"), ("T*", "part"))),
    Template("gnn", "gnn_seg_combine", (
        ("const long long*", "extra_ptr"), ("long long", "n_rows"), ("long long", "F"),
        ("const T*", "part"), ("T*", "out"))),
    Template("gnn", "gnn_edge_dot", (
        ("const long long*", "ptr"), ("const long long*", "col"), ("long long", "n_rows"),
        ("int", "H"), ("int", "C"), ("const T*", "A"), ("const T*", "B"), ("T*", "out"))),
    Template("gnn", "gnn_gat_fwd", (
        ("const long long*", "ptr"), ("const long long*", "col"), ("long long", "n_rows"),
        ("int", "H"), ("int", "C"), ("const T*", "s_src"), ("const T*", "s_dst"),
        ("const T*", "s_edge"), ("int", "has_edge"), ("T", "slope"), ("const T*", "Xp"),
        ("int", "cp"), ("T*", "alpha"), ("T*", "out"))),
    Template("gnn", "gnn_gat_bwd", (
        ("const long long*", "ptr"), ("const long long*", "col"), ("long long", "n_rows"),
        ("int", "H"), ("int", "C"), ("const T*", "s_src"), ("const T*", "s_dst"),
        ("const T*", "s_edge"), ("int", "has_edge"), ("T", "slope"), ("const T*", "Xp"),
        ("const T*", "alpha"), ("const T*", "G"), ("T*", "de"), ("T*", "ds_dst"))),
    Template("gnn", "gnn_softmax_fwd", (
        ("const long long*", "ptr"), ("const long long*", "perm"), ("long long", "n_rows"),
        ("int", "H"), ("const T*", "x"), ("T*", "alpha"))),
    Template("gnn", "gnn_softmax_bwd", (
        ("const long long*", "ptr"), ("const long long*", "perm"), ("long long", "n_rows"),
        ("int", "H"), ("const T*", "alpha"), ("const T*", "gr"), ("T*", "ds"))),
    Template("crpl", "crpl_probs_rows", (
        ("const T*", "G"), ("const T*", "UC"), ("const T*", "uu"), ("const T*", "cc"),
        ("const T*", "counts"), ("long long", "B"), ("int", "K"), ("int", "S"), ("T", "gamma"),
        ("T", "scale"), ("T", "cb1"), ("T", "cs1"), ("T", "ci1"), ("T", "div1"), ("T", "cb0"),
        ("T", "cs0"), ("T", "div0"), ("T*", "P"))),
    Template("crpl", "crpl_ce_rows", (
        ("const T*", "G"), ("long long", "B"), ("int", "K"), ("const T*", "P"), ("int", "has_p"),
        ("const long long*", "y"), ("int", "has_y"), ("T", "sa"), ("int", "hard"), ("T", "sh"),
        ("T*", "rowout"), ("long long*", "lab"))),
    Template("crpl", "crpl_ce_grad", (
        ("const T*", "G"), ("long long", "B"), ("int", "K"), ("const T*", "P"), ("int", "has_p"),
        ("const long long*", "y"), ("int", "has_y"), ("T", "sa"), ("int", "hard"), ("T", "sh"),
        ("const T*", "rowout"), ("const long long*", "lab"), ("const T*", "coef"), ("T", "mult"),
        ("T*", "dG"))),
)

_BODIES = {"softdtw": _SOFTDTW, "costs": _COSTS, "ot": _OT, "preference": _PREFERENCE,
           "cross_tokenizer": _CROSS_TOKENIZER, "inf_ssm": _INF_SSM,
           "causal_discrete": _CAUSAL_DISCRETE, "safety": _SAFETY, "recsys_vae": _RECSYS,
           "gnn": _GNN, "crpl": _CRPL}
MODULES = tuple(_BODIES)


@dataclass(frozen=True)
class Kernel:
    """One exported kernel: ``<template>_<f32|f64>`` with its concrete parameters."""

    name: str
    module: str
    dtype: str
    params: tuple[tuple[str, str], ...]


def _instantiate(t: Template, dtype: str) -> Kernel:
    ctype, suffix = DTYPES[dtype]
    params = tuple((" ".join(ctype if w == "T" else w for w in _split_type(ty)).replace(" *", "*"), nm)
                   for ty, nm in t.params)
    return Kernel(f"{t.name}_{suffix}", t.module, dtype, params)


def _split_type(ty: str) -> list[str]:
    """``"const T*"`` -> ``["const", "T", "*"]`` (so ``T`` is replaced as a whole word)."""
    return ty.replace("*", " * ").split()


KERNELS: dict[str, Kernel] = {k.name: k for k in (_instantiate(t, dt) for t in TEMPLATES
                                                  for dt in DTYPES)}


def kernel_name(template: str, dtype) -> str:
    """``kernel_name("sdtw_fwd", "float32") == "sdtw_fwd_f32"``."""
    return f"{template}_{DTYPES[np.dtype(dtype).name][1]}"


def _wrapper(k: Kernel, template: str) -> str:
    ctype = DTYPES[k.dtype][0]
    decl = ", ".join(f"{ty} {nm}" for ty, nm in k.params)
    call = ", ".join(nm for _, nm in k.params)
    return (f'extern "C" __global__ void {k.name}({decl}) {{\n'
            f"  {template}<{ctype}>({call});\n}}\n")


def module_source(module: str) -> str:
    """The full CUDA C++ source of one module: helpers, templates, ``extern "C"`` exports."""
    if module not in _BODIES:
        raise ValueError(f"unknown kernel module {module!r}; expected one of {MODULES}")
    wrappers = "".join(_wrapper(KERNELS[f"{t.name}_{DTYPES[dt][1]}"], t.name)
                       for t in TEMPLATES if t.module == module for dt in DTYPES)
    banner = "\n// " + "-" * 64 + " exports\n"
    return _COMMON + _BODIES[module] + banner + wrappers


@dataclass(frozen=True)
class KernelSource:
    module: str
    source: str
    options: tuple[str, ...]
    names: tuple[str, ...]


def kernel_sources() -> list[KernelSource]:
    """Every module this backend compiles: its source, the NVRTC options CuPy is given (CuPy
    adds ``-arch`` and :data:`CUPY_IMPLICIT_OPTIONS`) and the exported kernel names."""
    return [KernelSource(mod, module_source(mod), OPTIONS,
                         tuple(k.name for k in KERNELS.values() if k.module == mod))
            for mod in MODULES]


# ----------------------------------------------------------------------------- runtime

_MODULE_CACHE: dict[tuple[int, str], object] = {}
_FUNCTION_CACHE: dict[tuple[int, str], object] = {}


def function(name: str):
    """The ``cupy.RawKernel`` of exported kernel ``name``, compiled on first use (per device)."""
    import cupy

    dev = cupy.cuda.runtime.getDevice()
    key = (dev, name)
    fn = _FUNCTION_CACHE.get(key)
    if fn is None:
        k = KERNELS[name]
        mod = _MODULE_CACHE.get((dev, k.module))
        if mod is None:
            mod = cupy.RawModule(code=module_source(k.module), options=OPTIONS)
            _MODULE_CACHE[(dev, k.module)] = mod
        fn = mod.get_function(name)
        _FUNCTION_CACHE[key] = fn
    return fn


_SCALARS = {"int": np.int32, "long long": np.int64, "float": np.float32, "double": np.float64}
_POINTEES = {"int": np.int32, "long long": np.int64, "float": np.float32, "double": np.float64}


def check_args(name: str, args: tuple, array_type) -> None:
    """Refuse a launch whose arguments do not match the kernel's C signature exactly:
    pointers need C-contiguous arrays of the pointee's dtype, scalars the NumPy scalar type of
    the C type (``np.int32`` for ``int``, ...). A mismatch is a bug in this backend."""
    k = KERNELS[name]
    if len(args) != len(k.params):
        raise TypeError(f"{name}: {len(args)} arguments for {len(k.params)} parameters")
    for (ty, pname), a in zip(k.params, args):
        if ty.endswith("*"):
            pointee = ty[:-1].replace("const", "").strip()
            if not isinstance(a, array_type):
                raise TypeError(f"{name}: parameter {pname} ({ty}) got {type(a).__name__}")
            if a.dtype != np.dtype(_POINTEES[pointee]) or not a.flags.c_contiguous:
                raise TypeError(f"{name}: parameter {pname} ({ty}) got a "
                                f"{'' if a.flags.c_contiguous else 'non-contiguous '}{a.dtype} array")
        else:
            if type(a) is not _SCALARS[ty]:
                raise TypeError(f"{name}: parameter {pname} ({ty}) got {type(a).__name__}, "
                                f"expected numpy.{_SCALARS[ty].__name__}")


def launch(name: str, grid: tuple, block: tuple, args: tuple, shared_mem: int = 0) -> None:
    """Check ``args`` against the signature of ``name`` and launch it on the current stream."""
    import cupy

    check_args(name, args, cupy.ndarray)
    function(name)(grid, block, args, shared_mem=int(shared_mem))


def dynamic_smem_limit(name: str) -> int:
    """Bytes of dynamic shared memory one block of kernel ``name`` may use on this device
    (the opt-in per-block limit minus the kernel's static shared memory)."""
    import cupy

    rt = cupy.cuda.runtime
    optin = rt.deviceGetAttribute(rt.cudaDevAttrMaxSharedMemoryPerBlockOptin, rt.getDevice())
    return int(optin) - int(function(name).shared_size_bytes)


def reserve_dynamic_smem(name: str, nbytes: int) -> None:
    """Opt kernel ``name`` in to ``nbytes`` of dynamic shared memory (needed above 48 KB)."""
    fn = function(name)
    if nbytes > 48 * 1024 and fn.max_dynamic_shared_size_bytes < nbytes:
        fn.max_dynamic_shared_size_bytes = int(nbytes)
