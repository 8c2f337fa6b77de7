"""Soft-DTW and the Soft-DTW divergence with Numba-CUDA kernels (``softdtw.md`` sec. 9, 10).

Same functions, signatures and results as :mod:`refimpl.softdtw`; inputs are CUDA arrays
(Numba device arrays, CuPy arrays, CUDA torch tensors — any ``__cuda_array_interface__``
object), outputs are Numba device arrays, or CuPy arrays / torch tensors when the leading
input was one (zero-copy views of the Numba result). Per-pair lengths ``len_x``/``len_y`` may
be device or host integer arrays; they are read on the host once (B integers) to build the job
table, which is copied to the device asynchronously. Everything runs on the legacy default
stream.

Layout of one call (see :mod:`backends.numba_cuda._kernels` for the kernels):

* ``soft_dtw``/``soft_dtw_grad``: one DP *job* per pair. ``sdtw_forward`` (one block per job,
  threads striding over each anti-diagonal) stores ``Rt = R - o_d`` compacted diagonal-major
  plus one float64 offset per diagonal; ``sdtw_backward`` rebuilds the normalised softmin
  weights from Rt and writes E into a zeroed (B, N, M) output.
* ``soft_dtw_divergence``/``_grad``: the three cost matrices are formed by a tiled kernel
  (never a B x N x M x d intermediate), then the XY, XX and YY DPs of all pairs run as 3B
  jobs of ONE forward launch (and one backward launch); gradients are tiled VJP kernels
  reading E, with zero rows for padding.

Memory per call: C (or the three costs), Rt (``sum n*m`` words of the input dtype), the
offsets (``sum (n+m-1)`` float64), E for the gradient, and a live-diagonal scratch only when
the diagonals do not fit in 48 KB of shared memory.
"""

from __future__ import annotations

import numpy as np

from refimpl import _validate as V

from . import _kernels as K

_KIND_XY, _KIND_XX, _KIND_YY = 0, 1, 2


# --------------------------------------------------------------------------- helpers


def _host_ints(v):
    """Lengths (a native device array, checked by ``_native``) copied to the host: B integers."""
    return K.to_numpy(K.unmeta(v))


def _job_table(b, kind, n, m, bandwidth):
    """The (J, 8) int64 job table ``[b, kind, n, m, lo, hi, r_off, o_off]``, largest first.

    ``lo <= j - i <= hi`` is the widened Sakoe-Chiba band of each job's own lengths (no band:
    ``lo = -n``, ``hi = m``); ``r_off``/``o_off`` locate its Rt cells and diagonal offsets."""
    b, kind, n, m = (np.asarray(x, dtype=np.int64) for x in (b, kind, n, m))
    if bandwidth is None:
        lo, hi = -n, m.copy()
    else:
        lo = -bandwidth - np.maximum(0, n - m)
        hi = bandwidth + np.maximum(0, m - n)
    order = np.argsort(-(n * m), kind="stable")  # long jobs first: better load balance
    b, kind, n, m, lo, hi = (x[order] for x in (b, kind, n, m, lo, hi))
    cells, diags = n * m, n + m - 1
    r_off = np.concatenate([[0], np.cumsum(cells)[:-1]]).astype(np.int64)
    o_off = np.concatenate([[0], np.cumsum(diags)[:-1]]).astype(np.int64)
    table = np.ascontiguousarray(np.stack([b, kind, n, m, lo, hi, r_off, o_off], axis=1),
                                 dtype=np.int64)
    return table, int(cells.sum()), int(diags.sum()), int(np.minimum(n, m).max())


def _dp(costs, b, kind, n, m, bandwidth, nbatch: int, gamma: float, dtype: str, E=None):
    """Run the forward DP of every job (and the backward into ``E = (E0, E1, E2)`` if given).

    Returns the job values as a (3 * nbatch,) float64 device array indexed ``kind*B + b``
    (zero where no job ran)."""
    vals = K.zeros((3 * nbatch,), "float64")
    if len(b) == 0:
        return vals
    table, ncells, ndiags, wmax = _job_table(b, kind, n, m, bandwidth)
    njobs = table.shape[0]
    jobs = K.upload(table)
    Rt = K.empty((ncells,), dtype)
    offs = K.empty((ndiags,), "float64")
    item = np.dtype(dtype).itemsize
    nt = K.threads(wmax, K.SDTW_BLOCK)
    g = K.scalar(dtype, gamma)
    C0, C1, C2 = costs

    def live_for(words_per_job):
        nbytes = words_per_job * wmax * item
        if nbytes <= K.SHARED_BYTES:
            return 1, K.dummy(1, dtype), nbytes
        return 0, K.empty((njobs * words_per_job * wmax,), dtype), 0

    use_shared, live, shmem = live_for(3)
    K.launch("sdtw_forward", dtype, (njobs,), (nt,), shmem,
             C0, C1, C2, jobs, Rt, offs, vals, live, g, wmax, use_shared, nbatch)
    if E is not None:
        use_shared, live, shmem = live_for(7)
        K.launch("sdtw_backward", dtype, (njobs,), (nt,), shmem,
                 E[0], E[1], E[2], jobs, Rt, offs, vals, live, g, wmax, use_shared, nbatch)
    return vals


def _combine(vals, nbatch: int, dtype: str, weights=(1.0, 0.0, 0.0)):
    out = K.empty((nbatch,), dtype)
    if nbatch:
        nt = K.threads(nbatch, 256)
        K.launch("sdtw_combine", dtype, (-(-nbatch // nt),), (nt,), 0, vals, out,
                 float(weights[0]), float(weights[1]), float(weights[2]), nbatch)
    return out


def _value_out(value, batched: bool, like):
    return K.wrap(value if batched else value.reshape(()), like)


# --------------------------------------------------------------------------- Soft-DTW


def _soft_dtw(C, gamma, len_x, len_y, bandwidth, need_grad):
    K.native(C=C, len_x=len_x, len_y=len_y)
    args = V.soft_dtw_args(K.meta(C), gamma, len_x, len_y, bandwidth, to_numpy=_host_ints)
    dtype = V.dtype_name(C)
    B, N, M = args.shape.B, args.shape.N, args.shape.M
    C3 = K.lift3(K.device(C))
    E = K.zeros((B, N, M), dtype) if need_grad else None
    vals = _dp((C3, C3, C3), np.arange(B), np.zeros(B), args.len_x, args.len_y, args.bandwidth,
               B, args.gamma, dtype, None if E is None else (E, E, E))
    value = _value_out(_combine(vals, B, dtype), args.shape.batched, C)
    if not need_grad:
        return value
    return value, K.wrap(E if args.shape.batched else E.reshape((N, M)), C)


def soft_dtw(C, gamma, *, len_x=None, len_y=None, bandwidth=None):
    """Soft-DTW value ``R[n, m]`` of a cost matrix (n, m) or each pair of a batch (B, N, M).

    One block per pair; returns a 0-d array or shape (B,) in C's dtype (the value is
    assembled in float64 from the per-diagonal offsets and cast once)."""
    return _soft_dtw(C, gamma, len_x, len_y, bandwidth, need_grad=False)


def soft_dtw_grad(C, gamma, *, len_x=None, len_y=None, bandwidth=None):
    """``(value, E)`` with ``E = d value / dC`` (C's shape; exactly 0 outside each pair's
    valid block and outside the band; NaN over the block of a pair whose value is NaN)."""
    return _soft_dtw(C, gamma, len_x, len_y, bandwidth, need_grad=True)


# --------------------------------------------------------------------------- costs


def _norms(X3, lens, dtype):
    B, N = int(X3.shape[0]), int(X3.shape[1])
    nrm = K.empty((B, N), dtype)
    if B and N:
        nt = K.threads(N, 128)
        K.launch("row_norms", dtype, (-(-N // nt), B), (nt,), 0, X3, nrm, lens)
    return nrm


def _pair(X3, Y3, out, nx, ny, lenx, leny, mode: int, P3=None, G3=None):
    """Launch the tiled pairwise kernel writing ``out`` (B, N, M)."""
    dtype = np.dtype(out.dtype).name
    B, N, M = (int(s) for s in out.shape)
    if not (B and N and M):
        return out
    ts = K.tile(dtype)
    K.launch("pair_cost", dtype, (-(-M // ts), -(-N // ts), B), (ts, ts), 0,
             X3, Y3, K.dummy(3, dtype) if G3 is None else G3,
             K.dummy(3, dtype) if P3 is None else P3,
             K.dummy(2, dtype) if nx is None else nx, K.dummy(2, dtype) if ny is None else ny,
             out, lenx, leny, mode, 0 if P3 is None else 1)
    return out


def _vjp(G3, A3, B3, nb, out, lena, lenb, trans: int, mode: int, coef: float, accumulate: int):
    """Launch the tiled VJP kernel (see ``vjp_gemm``) into ``out`` (B, NA, d)."""
    dtype = np.dtype(out.dtype).name
    B, NA, d = (int(s) for s in out.shape)
    if not (B and NA and d):
        return out
    ts = K.tile(dtype)
    K.launch("vjp_gemm", dtype, (-(-d // ts), -(-NA // ts), B), (ts, ts), 0,
             G3, A3, B3, K.dummy(2, dtype) if nb is None else nb, out, lena, lenb,
             trans, mode, K.scalar(dtype, coef), accumulate)
    return out


def _cos_epilogue(X3, nrm, out, lens):
    dtype = np.dtype(out.dtype).name
    B, N, d = (int(s) for s in out.shape)
    if not (B and N and d):
        return out
    lanes = K.pow2_floor(K.threads(d, 32)) if K.simulator() else 32
    rows = max(1, (K.SIM_MAX_THREADS if K.simulator() else 256) // lanes)
    K.launch("cos_epilogue", dtype, (-(-N // rows), B), (lanes, rows), 0, X3, nrm, out, lens)
    return out


def _full_lengths(B: int, n: int):
    return K.upload(np.full(B, n, dtype=np.int64))


def sdtw_cost(X, Y, *, kind="sqeuclidean"):
    """Pairwise cost for Soft-DTW: (n,d),(m,d) -> (n,m) or (B,N,d),(B,M,d) -> (B,N,M).

    ``"sqeuclidean"``: ``|x_i - y_j|^2`` from explicit differences (tiled, no GEMM identity);
    ``"cosine"``: ``clip(1 - xh_i . yh_j, 0, 2)``, ``xh = x / max(|x|, 1e-8)``."""
    K.native(X=X, Y=Y)
    shape, _ = V.sdtw_points(K.meta(X), K.meta(Y))
    kind = V.cost_kind(kind)
    dtype = V.dtype_name(X)
    X3, Y3 = K.lift3(K.device(X)), K.lift3(K.device(Y))
    B, N, M = shape.B, shape.N, shape.M
    lx, ly = _full_lengths(B, N), _full_lengths(B, M)
    nx = ny = None
    if kind == "cosine":
        nx, ny = _norms(X3, lx, dtype), _norms(Y3, ly, dtype)
    out = _pair(X3, Y3, K.empty((B, N, M), dtype), nx, ny, lx, ly, 1 if kind == "cosine" else 0)
    return K.wrap(out if shape.batched else out.reshape((N, M)), X)


def sdtw_cost_vjp(X, Y, G, *, kind="sqeuclidean"):
    """``(dX, dY)`` for ``C = sdtw_cost(X, Y, kind=kind)`` and cotangent G (C's shape).

    sqeuclidean: ``dX = 2 (diag(G 1) X - G Y)``, ``dY = 2 (diag(G^T 1) Y - G^T X)``;
    cosine: ``K = G * 1[0 <= 1 - xh.yh <= 2]`` (a mask kernel into a new array, G is not
    modified), ``dXh = -K Yh``, then the projection through ``xh = x / max(|x|, 1e-8)``."""
    K.native(X=X, Y=Y, G=G)
    shape, d = V.sdtw_points(K.meta(X), K.meta(Y))
    kind = V.cost_kind(kind)
    V.cotangent(K.meta(G), "G", ((shape.B,) if shape.batched else ()) + (shape.N, shape.M),
                K.meta(X))
    dtype = V.dtype_name(X)
    X3, Y3, G3 = (K.lift3(K.device(a)) for a in (X, Y, G))
    B, N, M = shape.B, shape.N, shape.M
    lx, ly = _full_lengths(B, N), _full_lengths(B, M)
    dX, dY = K.empty((B, N, d), dtype), K.empty((B, M, d), dtype)
    if kind == "sqeuclidean":
        _vjp(G3, X3, Y3, None, dX, lx, ly, 0, 0, 1.0, 0)
        _vjp(G3, Y3, X3, None, dY, ly, lx, 1, 0, 1.0, 0)
    else:
        nx, ny = _norms(X3, lx, dtype), _norms(Y3, ly, dtype)
        Km = _pair(X3, Y3, K.empty((B, N, M), dtype), nx, ny, lx, ly, 2, G3=G3)
        _cos_epilogue(X3, nx, _vjp(Km, X3, Y3, ny, dX, lx, ly, 0, 1, 1.0, 0), lx)
        _cos_epilogue(Y3, ny, _vjp(Km, Y3, X3, nx, dY, ly, lx, 1, 1, 1.0, 0), ly)
    if not shape.batched:
        dX, dY = dX.reshape((N, d)), dY.reshape((M, d))
    return K.wrap(dX, X), K.wrap(dY, X)


# --------------------------------------------------------------------------- divergence


def _divergence(X, Y, gamma, kind, len_x, len_y, penalty, bandwidth, need_grad):
    K.native(X=X, Y=Y, penalty=penalty, len_x=len_x, len_y=len_y)
    args = V.divergence_args(K.meta(X), K.meta(Y), gamma, kind, len_x, len_y, K.meta(penalty),
                             bandwidth, to_numpy=_host_ints)
    dtype = V.dtype_name(X)
    B, N, M, d = args.shape.B, args.shape.N, args.shape.M, args.d
    X3, Y3 = K.lift3(K.device(X)), K.lift3(K.device(Y))
    P3 = K.lift3(K.device(penalty))
    # a pair with a zero length contributes 0 and zero gradients: it gets no jobs and its
    # effective lengths are 0, so every kernel skips its rows
    active = (args.len_x > 0) & (args.len_y > 0)
    lx_h = np.where(active, args.len_x, 0).astype(np.int64)
    ly_h = np.where(active, args.len_y, 0).astype(np.int64)
    lx, ly = K.upload(lx_h), K.upload(ly_h)
    cosine = args.kind == "cosine"
    mode = 1 if cosine else 0
    nx = ny = None
    if cosine:
        nx, ny = _norms(X3, lx, dtype), _norms(Y3, ly, dtype)
    Cxy = _pair(X3, Y3, K.empty((B, N, M), dtype), nx, ny, lx, ly, mode, P3=P3)
    Cxx = _pair(X3, X3, K.empty((B, N, N), dtype), nx, nx, lx, lx, mode)
    Cyy = _pair(Y3, Y3, K.empty((B, M, M), dtype), ny, ny, ly, ly, mode)
    pb = np.flatnonzero(active)
    jb = np.concatenate([pb, pb, pb])
    jk = np.repeat([_KIND_XY, _KIND_XX, _KIND_YY], len(pb))
    jn = np.concatenate([lx_h[pb], lx_h[pb], ly_h[pb]])
    jm = np.concatenate([ly_h[pb], lx_h[pb], ly_h[pb]])
    E = None
    if need_grad:
        E = (K.zeros((B, N, M), dtype), K.zeros((B, N, N), dtype), K.zeros((B, M, M), dtype))
    vals = _dp((Cxy, Cxx, Cyy), jb, jk, jn, jm, args.bandwidth, B, args.gamma, dtype, E)
    value = _value_out(_combine(vals, B, dtype, (1.0, -0.5, -0.5)), args.shape.batched, X)
    if not need_grad:
        return value
    Exy, Exx, Eyy = E
    dX, dY = K.empty((B, N, d), dtype), K.empty((B, M, d), dtype)
    if cosine:  # K = E * mask, in place (each element read and written by one thread)
        _pair(X3, Y3, Exy, nx, ny, lx, ly, 2, G3=Exy)
        _pair(X3, X3, Exx, nx, nx, lx, lx, 2, G3=Exx)
        _pair(Y3, Y3, Eyy, ny, ny, ly, ly, 2, G3=Eyy)
    # dX = vjp_X(C_xy, E_xy) - (vjp_X(C_xx, E_xx) + vjp_Y(C_xx, E_xx)) / 2, likewise dY
    _vjp(Exy, X3, Y3, ny, dX, lx, ly, 0, mode, 1.0, 0)
    _vjp(Exx, X3, X3, nx, dX, lx, lx, 0, mode, -0.5, 1)
    _vjp(Exx, X3, X3, nx, dX, lx, lx, 1, mode, -0.5, 1)
    _vjp(Exy, Y3, X3, nx, dY, ly, lx, 1, mode, 1.0, 0)
    _vjp(Eyy, Y3, Y3, ny, dY, ly, ly, 0, mode, -0.5, 1)
    _vjp(Eyy, Y3, Y3, ny, dY, ly, ly, 1, mode, -0.5, 1)
    if cosine:
        _cos_epilogue(X3, nx, dX, lx)
        _cos_epilogue(Y3, ny, dY, ly)
    if not args.shape.batched:
        dX, dY = dX.reshape((N, d)), dY.reshape((M, d))
    return value, K.wrap(dX, X), K.wrap(dY, X)


def soft_dtw_divergence(X, Y, gamma, *, kind="sqeuclidean", len_x=None, len_y=None,
                        penalty=None, bandwidth=None):
    """Soft-DTW divergence ``sdtw(C_xy + P) - sdtw(C_xx)/2 - sdtw(C_yy)/2`` per pair.

    The XY, XX and YY DPs of all B pairs run as 3B jobs of one launch; a pair with a zero
    length has value 0. ``penalty`` (the cross cost's shape) is added to C_xy only."""
    return _divergence(X, Y, gamma, kind, len_x, len_y, penalty, bandwidth, need_grad=False)


def soft_dtw_divergence_grad(X, Y, gamma, *, kind="sqeuclidean", len_x=None, len_y=None,
                             penalty=None, bandwidth=None):
    """``(value, dX, dY)``; padded rows and zero-length pairs get zero gradient."""
    return _divergence(X, Y, gamma, kind, len_x, len_y, penalty, bandwidth, need_grad=True)
