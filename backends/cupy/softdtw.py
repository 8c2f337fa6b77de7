r"""Soft-DTW and the Soft-DTW divergence on CuPy arrays (softdtw.md sec. 9, 10).

Same functions, signatures and results as :mod:`refimpl.softdtw`; inputs are ``cupy.ndarray``
(lengths too), computed on the current device in the input's dtype (float32 or float64), with
float64 per-diagonal offsets (sec. 8.3) and normalised backward weights (sec. 3, 8.2). The
recursion, 1-based::

    R[0,0] = 0,  R[i,0] = R[0,j] = +inf,
    R[i,j] = C[i,j] + softmin_g(R[i-1,j-1], R[i-1,j], R[i,j-1]),   sdtw_g(C) = R[n,m]
    E[n,m] = 1,  E[k] = sum over successors t of k of pi_t(k) E[t]  (normalised weights)

Kernels (``_kernels.py``): a *job* is one DP; one thread block per job walks the
anti-diagonals q = i + j with its threads striding over the cells of the diagonal (no length
cap). The three live diagonals sit in dynamic shared memory (3 x min(n, m) words, opted in
above 48 KB) or, beyond the per-block limit, in a global scratch ring with the same code.
The forward stores ``Rt = R - o_q`` once per cell in a compact diagonal-major table (exactly
n*m words per job) and the float64 offsets (n+m+1 per job); the backward walks the
diagonals in reverse, rebuilding each weight from the stored Rt of the three predecessors of
a successor (no C read), and writes E into a pre-zeroed array laid out like C.
Per-pair lengths and the widened Sakoe-Chiba band (sec. 7) are applied in the kernels:
cells outside a pair's valid block or band are never read, so NaN padding cannot leak.
The divergence runs the XY, XX and YY DPs of all pairs as one launch of 3B jobs; costs come
from cuBLAS GEMMs (``cupy.matmul``) plus a fused epilogue, never a B x N x M x d broadcast,
with padded rows of X and Y set to 0 first.
"""

from __future__ import annotations

import cupy
import numpy as np

from backends.cupy import _kernels
from backends.cupy import native as _native
from refimpl import _validate as V

__all__ = [
    "soft_dtw", "soft_dtw_grad", "sdtw_cost", "sdtw_cost_vjp", "soft_dtw_divergence",
    "soft_dtw_divergence_grad",
]

COS_EPS = 1e-8        # norm floor of the cosine cost (the reference's)
THREADS = 256         # threads per block of the DP kernels (at most; fewer for short diagonals)
_EPILOGUE_THREADS = 256
_MAX_GRID_Y = 65535



# --------------------------------------------------------------------------- the DP


def job_table(c_off, ld, n, m) -> tuple[np.ndarray, int, int]:
    """Host job table (J, 6) int64 ``[c_off, ld, n, m, rt_off, o_off]`` of the DP kernels, and
    the total words of the Rt tables (sum n*m) and of the offsets (sum n+m+1).

    ``c_off``: element offset of the job's ``C[0, 0]`` in the flat cost buffer (E uses the
    same offsets in its own buffer); ``ld`` the row stride; ``n``, ``m`` >= 1 the sizes."""
    c_off, ld, n, m = np.broadcast_arrays(*(np.atleast_1d(np.asarray(v, dtype=np.int64))
                                            for v in (c_off, ld, n, m)))
    rt_size, off_size = n * m, n + m + 1
    rt_off = np.cumsum(rt_size) - rt_size          # exclusive prefix sums
    o_off = np.cumsum(off_size) - off_size
    jobs = np.ascontiguousarray(np.stack([c_off, ld, n, m, rt_off, o_off], axis=1), dtype=np.int64)
    return jobs.reshape(-1, _kernels.JOB_FIELDS), int(rt_size.sum()), int(off_size.sum())


def _band(bandwidth, longest: int) -> int:
    """Kernel band radius: -1 for none; a radius >= the longest side is no band at all (and is
    clipped so the kernel's int arithmetic cannot overflow)."""
    return -1 if bandwidth is None else int(min(bandwidth, max(longest, 1)))


def _threads(ring: int) -> int:
    return int(min(THREADS, max(32, -(-ring // 32) * 32)))


def run_dp(Cflat, jobs: np.ndarray, rt_words: int, off_words: int, gamma: float, band: int,
           need_grad: bool, force_scratch: bool = False):
    """Run the forward (and backward) wavefront of every job on the flat cost buffer ``Cflat``.

    Returns ``(values, E)``: the float64 values (J,) on the device and, when ``need_grad``,
    E as a buffer laid out like ``Cflat`` (zero outside every job's in-band valid block).
    ``force_scratch`` keeps the live diagonals in global memory even when shared memory
    would fit (the large-size fallback; tests use it to cover that path)."""
    dtype = Cflat.dtype
    J = int(jobs.shape[0])
    values = cupy.empty(J, dtype=np.float64)
    E = cupy.zeros_like(Cflat) if need_grad else None
    if J == 0:
        return values, E
    ring = int(np.minimum(jobs[:, 2], jobs[:, 3]).max())
    threads = _threads(ring)
    smem = 3 * ring * dtype.itemsize
    fwd, bwd = _kernels.kernel_name("sdtw_fwd", dtype), _kernels.kernel_name("sdtw_bwd", dtype)
    use_scratch = force_scratch or smem > min(_kernels.dynamic_smem_limit(fwd),
                                               _kernels.dynamic_smem_limit(bwd))
    if use_scratch:
        scratch, shared = cupy.empty(J * 3 * ring, dtype=dtype), 0
    else:
        scratch, shared = cupy.empty(1, dtype=dtype), smem
        _kernels.reserve_dynamic_smem(fwd, smem)
        if need_grad:
            _kernels.reserve_dynamic_smem(bwd, smem)
    jobs_d = cupy.asarray(jobs)
    T = dtype.type
    if need_grad:
        rt = cupy.empty(max(rt_words, 1), dtype=dtype)
        offs = cupy.empty(max(off_words, 1), dtype=np.float64)
    else:
        rt, offs = cupy.empty(1, dtype=dtype), cupy.empty(1, dtype=np.float64)
    _kernels.launch(fwd, (J,), (threads,),
                    (Cflat, jobs_d, np.int32(J), np.int32(band), T(gamma), np.int32(need_grad),
                     rt, offs, values, np.int32(use_scratch), scratch, np.int32(ring)),
                    shared_mem=shared)
    if need_grad:
        _kernels.launch(bwd, (J,), (threads,),
                        (rt, offs, jobs_d, np.int32(J), np.int32(band), T(gamma), values, E,
                         np.int32(use_scratch), scratch, np.int32(ring)),
                        shared_mem=shared)
    return values, E


def _dp_batch(C, gamma, len_x, len_y, bandwidth, need_grad):
    _native(C=C, len_x=len_x, len_y=len_y)
    args = V.soft_dtw_args(C, gamma, len_x, len_y, bandwidth, to_numpy=cupy.asnumpy)
    N, M = args.shape.N, args.shape.M
    Cflat = cupy.ascontiguousarray(C).reshape(-1)
    lx, ly = args.len_x, args.len_y
    live = (lx > 0) & (ly > 0)
    idx = np.flatnonzero(live)
    jobs, rt_words, off_words = job_table(idx * N * M, M, lx[idx], ly[idx])
    vals, E = run_dp(Cflat, jobs, rt_words, off_words, args.gamma,
                     _band(args.bandwidth, max(N, M)), need_grad)
    if live.all():
        values = vals
    else:  # an empty table (n or m = 0, reachable only with N or M = 0): R[n, m] of its borders
        values = cupy.asarray(np.where((lx == 0) & (ly == 0), 0.0, np.inf))
        values[cupy.asarray(idx)] = vals
    values = values.astype(C.dtype, copy=False)
    if not args.shape.batched:
        values = values.reshape(())
    return values, (None if E is None else E.reshape(C.shape))


def soft_dtw(C, gamma, *, len_x=None, len_y=None, bandwidth=None):
    """Soft-DTW value ``R[n, m]`` of ``C`` (n, m) or of each pair of a batch (B, N, M).

    Returns a 0-d array or shape (B,), in C's dtype. ``len_x``/``len_y``: (B,) integer
    ``cupy.ndarray`` of per-pair lengths (None = full); ``bandwidth``: the widened
    Sakoe-Chiba radius (None = no band). One forward launch, no Rt stored."""
    return _dp_batch(C, gamma, len_x, len_y, bandwidth, need_grad=False)[0]


def soft_dtw_grad(C, gamma, *, len_x=None, len_y=None, bandwidth=None):
    """``(value, E)``: the Soft-DTW value and ``E = d value / dC`` (C's shape and dtype,
    exactly 0 outside each pair's valid block and band; all NaN on a pair whose value is NaN)."""
    return _dp_batch(C, gamma, len_x, len_y, bandwidth, need_grad=True)


# --------------------------------------------------------------------------- costs


def _grid2d(rows: int, m: int) -> tuple[int, int]:
    return (-(-m // _EPILOGUE_THREADS), max(1, min(rows, _MAX_GRID_Y)))


def _sq_norms(X):
    return cupy.ascontiguousarray((X * X).sum(axis=-1))


def _unit(X):
    """``(x / max(|x|, eps), max(|x|, eps))`` row-wise (the reference's cosine convention)."""
    norm = cupy.maximum(cupy.sqrt((X * X).sum(axis=-1, keepdims=True)), COS_EPS)
    return X / norm, norm


def _cost(X, Y, kind: str, out=None, unit=None):
    """``sdtw_cost`` of validated 2-D or 3-D inputs into ``out`` (a contiguous array of the
    cost's shape) or a new array. ``unit``: precomputed ``(_unit(X)[0], _unit(Y)[0])``."""
    n, m = X.shape[-2], Y.shape[-2]
    nbatch = X.shape[0] if X.ndim == 3 else 1
    if kind == "sqeuclidean":
        C = cupy.matmul(X, Y.swapaxes(-1, -2), out=out)
        name = _kernels.kernel_name("cost_sq", C.dtype)
        args = (C, _sq_norms(X), _sq_norms(Y), np.int32(n), np.int32(m), np.int64(nbatch),
                C.dtype.type(1.0))
    else:
        xh, yh = unit if unit is not None else (_unit(X)[0], _unit(Y)[0])
        C = cupy.matmul(xh, yh.swapaxes(-1, -2), out=out)
        name = _kernels.kernel_name("cost_cos", C.dtype)
        args = (C, np.int32(n), np.int32(m), np.int64(nbatch), np.int32(1))
    if C.size:
        _kernels.launch(name, _grid2d(nbatch * n, m), (_EPILOGUE_THREADS,), args)
    return C


def sdtw_cost(X, Y, *, kind="sqeuclidean"):
    """Pairwise cost for Soft-DTW: (n,d),(m,d) -> (n,m), or (B,N,d),(B,M,d) -> (B,N,M).

    ``"sqeuclidean"``: ``max(|x|^2 + |y|^2 - 2 x.y, 0)`` (one GEMM and a fused epilogue; the
    cancellation error is ~1e-7 |x|^2 in float32, within the spec's tolerance).
    ``"cosine"``: ``clip(1 - xh.yh, 0, 2)`` with ``xh = x / max(|x|, 1e-8)``."""
    _native(X=X, Y=Y)
    V.sdtw_points(X, Y)
    return _cost(X, Y, V.cost_kind(kind))


def _vjp_left(X, Z, G, kind: str, unit=None):
    """``d/dX sum_ij G_ij cost(X, Z)_ij`` (the left slot of the cost's VJP)."""
    if kind == "sqeuclidean":
        return 2.0 * (G.sum(axis=-1)[..., None] * X - cupy.matmul(G, Z))
    (xh, nx), (zh, _) = unit
    raw = 1.0 - cupy.matmul(xh, zh.swapaxes(-1, -2))
    K = cupy.where((raw >= 0.0) & (raw <= 2.0), G, 0.0).astype(G.dtype, copy=False)
    dxh = -cupy.matmul(K, zh)
    tangent = dxh - (xh * dxh).sum(axis=-1, keepdims=True) * xh
    return cupy.where(nx > COS_EPS, tangent, dxh) / nx


def sdtw_cost_vjp(X, Y, G, *, kind="sqeuclidean"):
    """``(dX, dY) = (sum_ij G_ij dC_ij/dX, sum_ij G_ij dC_ij/dY)`` for ``C = sdtw_cost(X, Y)``.

    sqeuclidean: ``dX = 2 (diag(G 1) X - G Y)``, ``dY = 2 (diag(G^T 1) Y - G^T X)`` (GEMMs).
    cosine: ``K = G * 1[0 <= 1 - xh.yh <= 2]``, ``dXh = -K Yh``,
    ``dX_i = (dXh_i - (xh_i . dXh_i) xh_i) / |x_i|`` (``dXh_i / 1e-8`` where the norm floor is
    active); symmetric for Y with ``K^T Xh``."""
    _native(X=X, Y=Y, G=G)
    shape, _ = V.sdtw_points(X, Y)
    kind = V.cost_kind(kind)
    V.cotangent(G, "G", ((shape.B,) if shape.batched else ()) + (shape.N, shape.M), X)
    Gt = G.swapaxes(-1, -2)
    if kind == "sqeuclidean":
        return _vjp_left(X, Y, G, kind), _vjp_left(Y, X, Gt, kind)
    ux, uy = _unit(X), _unit(Y)
    return _vjp_left(X, Y, G, kind, (ux, uy)), _vjp_left(Y, X, Gt, kind, (uy, ux))


# --------------------------------------------------------------------------- divergence


def _mask_rows(X3, lengths: np.ndarray):
    """Rows at or beyond each pair's length set to 0 (a NaN there would reach the GEMMs)."""
    if (lengths == X3.shape[1]).all():
        return X3
    keep = cupy.arange(X3.shape[1])[None, :, None] < cupy.asarray(lengths)[:, None, None]
    return cupy.where(keep, X3, 0.0).astype(X3.dtype, copy=False)


def _divergence(X, Y, gamma, kind, len_x, len_y, penalty, bandwidth, need_grad):
    _native(X=X, Y=Y, len_x=len_x, len_y=len_y, penalty=penalty)
    args = V.divergence_args(X, Y, gamma, kind, len_x, len_y, penalty, bandwidth,
                             to_numpy=cupy.asnumpy)
    B, N, M, d = args.shape.B, args.shape.N, args.shape.M, args.d
    dtype = X.dtype
    lx, ly = args.len_x, args.len_y
    Xm = _mask_rows(X.reshape(B, N, d), lx)
    Ym = _mask_rows(Y.reshape(B, M, d), ly)
    ux = uy = None
    if args.kind == "cosine":
        ux, uy = _unit(Xm), _unit(Ym)

    # One flat buffer holding C_xy (B,N,M), C_xx (B,N,N), C_yy (B,M,M); E uses its layout.
    sxy, sxx, syy = B * N * M, B * N * N, B * M * M
    buf = cupy.empty(sxy + sxx + syy, dtype=dtype)
    views = (buf[:sxy].reshape(B, N, M), buf[sxy:sxy + sxx].reshape(B, N, N),
             buf[sxy + sxx:].reshape(B, M, M))
    pairs = ((Xm, Ym, ux, uy), (Xm, Xm, ux, ux), (Ym, Ym, uy, uy))
    for (P_, Q_, up, uq), out in zip(pairs, views):
        if out.size:
            _cost(P_, Q_, args.kind, out=out,
                  unit=None if up is None else (up[0], uq[0]))
    if penalty is not None and sxy:
        cxy = views[0]
        cxy += penalty.reshape(B, N, M)

    live = np.flatnonzero((lx > 0) & (ly > 0))
    A = live.size
    jobs, rt_words, off_words = job_table(
        np.concatenate([live * N * M, sxy + live * N * N, sxy + sxx + live * M * M]),
        np.repeat(np.array([M, N, M], dtype=np.int64), A),
        np.concatenate([lx[live], lx[live], ly[live]]),
        np.concatenate([ly[live], lx[live], ly[live]]))
    vals, Ebuf = run_dp(buf, jobs, rt_words, off_words, args.gamma,
                        _band(args.bandwidth, max(N, M)), need_grad)
    value = cupy.zeros(B, dtype=np.float64)
    if A:
        value[cupy.asarray(live)] = vals[:A] - 0.5 * vals[A:2 * A] - 0.5 * vals[2 * A:]
    value = value.astype(dtype, copy=False)
    if not args.shape.batched:
        value = value.reshape(())
    if not need_grad:
        return value, None, None

    Exy, Exx, Eyy = (Ebuf[:sxy].reshape(B, N, M), Ebuf[sxy:sxy + sxx].reshape(B, N, N),
                     Ebuf[sxy + sxx:].reshape(B, M, M))
    # Self terms: X enters both slots of cost(X, X); the sum of the two slot VJPs with G is the
    # left-slot VJP with G + G^T (both VJPs are linear in G).
    dX = (_vjp_left(Xm, Ym, Exy, args.kind, (ux, uy))
          - 0.5 * _vjp_left(Xm, Xm, Exx + Exx.swapaxes(-1, -2), args.kind, (ux, ux)))
    dY = (_vjp_left(Ym, Xm, Exy.swapaxes(-1, -2), args.kind, (uy, ux))
          - 0.5 * _vjp_left(Ym, Ym, Eyy + Eyy.swapaxes(-1, -2), args.kind, (uy, uy)))
    return value, dX.astype(dtype, copy=False).reshape(X.shape), \
        dY.astype(dtype, copy=False).reshape(Y.shape)


def soft_dtw_divergence(X, Y, gamma, *, kind="sqeuclidean", len_x=None, len_y=None,
                        penalty=None, bandwidth=None):
    """Soft-DTW divergence ``sdtw(C_xy + P) - sdtw(C_xx)/2 - sdtw(C_yy)/2`` per pair.

    X (n,d) / Y (m,d), or batches (B,N,d) / (B,M,d) with per-pair lengths (``cupy.ndarray``;
    0 allowed: that pair's value is 0). ``penalty`` has the cross cost's shape; the band
    applies to all three DPs with each one's own lengths. The 3B DPs run in one launch."""
    return _divergence(X, Y, gamma, kind, len_x, len_y, penalty, bandwidth, need_grad=False)[0]


def soft_dtw_divergence_grad(X, Y, gamma, *, kind="sqeuclidean", len_x=None, len_y=None,
                             penalty=None, bandwidth=None):
    """``(value, dX, dY)``: ``dX = vjp_X(C_xy, E_xy) - (both slots of vjp(C_xx, E_xx))/2``,
    likewise for Y; padded rows and zero-length pairs get zero gradient."""
    return _divergence(X, Y, gamma, kind, len_x, len_y, penalty, bandwidth, need_grad=True)
