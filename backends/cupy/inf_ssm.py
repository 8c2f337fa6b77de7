r"""Inf-SSM observability-subspace distances on CuPy arrays (inf_ssm.md sec. 2-4, 6).

Same functions, signatures and results as :mod:`refimpl.inf_ssm` for the registry ops:
``stein_gram_diag``, ``stein_cross_gram_diag``, ``infssm_distance``, ``infssm_distance_grad``,
``mamba_ac_from_scan``, ``infssm_reg_loss``, ``infssm_reg_loss_grad``. Not offered here (reference
only): ``stein_cross_gram_dense``, ``infssm_distance_dense`` and the VJP helpers. Inputs are
``cupy.ndarray`` (other kinds are a ``TypeError`` naming the argument), float32 or float64, one
dtype per call; results are CuPy arrays of that dtype (0-d for the loss) on the current device
and stream. Non-contiguous inputs are copied to contiguous ones first.

Structure:

- ``stein_gram_diag`` / ``stein_cross_gram_diag``: CuPy elementwise, ``Q / (1 - a_i b_j)`` with
  ``Q`` the outer product ``c_i e_j`` (vector C) or ``C1^T C2`` for multi-output C (one batched
  matmul, cuBLAS). The result (..., n1, n2) is the only large allocation (plus ``Q``).
- ``infssm_distance`` (variant "code", the default) and ``infssm_distance_grad``: the fused kernel
  ``iss_code_dist`` (``_kernels.py``, module ``inf_ssm``): ONE THREAD PER SYSTEM PAIR, blocks of
  ``SYSTEMS_PER_BLOCK`` systems grid-striding over chunks (at most ``GRID_CAP`` blocks, so 1.2 M
  systems are one launch). Formulas: the spec's ``d = 1 - N / (S1 S2)`` (``N = sum_ij c_i^2
  e_j^2 / D_ij^2``, ``D_ij = 1 - a_i b_j``, ``S1 = sum_i c_i^2 / (1 - a_i^2)``, ``S2`` likewise)
  is evaluated without its cancellation, as the torch backend does: by the exact identity
  ``(1 - a^2)(1 - b^2) = (1 - ab)^2 - (a - b)^2``, ``S1 S2 - N = sum_ij w_ij rho_ij^2``, so::

      d = sum_ij w_ij rho_ij^2 / W,   w_ij = u_i v_j,   u_i = c_i^2 / (1 - a_i^2),
      v_j = e_j^2 / (1 - b_j^2),      W = S1 S2 = (sum_i u_i)(sum_j v_j),
      rho_ij = (a_i - b_j) / D_ij,    r_ij = rho_ij^2 - d
      dd/dc_i = 2 c_i / ((1 - a_i^2) W) sum_j v_j r_ij
      dd/da_i = 2 u_i / W [ a_i / (1 - a_i^2) sum_j v_j r_ij + sum_j e_j^2 (a_i - b_j) / D_ij^3 ]
      dd/de_j = 2 e_j / ((1 - b_j^2) W) sum_i u_i r_ij
      dd/db_j = 2 v_j / W [ b_j / (1 - b_j^2) sum_i u_i r_ij - sum_i c_i^2 (a_i - b_j) / D_ij^3 ]

  Why: in the code's regime d ~ 0.03, so ``1 - N / (S1 S2)`` loses ~5 bits in float32 and its
  gradient is a difference of O(1) terms (``R_i - (N / S1) / (1 - a_i^2)``); in float32 that
  gave 1.65x the registry's float32 tolerance on ``S4_m256_n16_infssm_shortcut`` of
  ``infssm_reg_loss_grad`` (lam = 2.5e5), which is why the gradient used to be computed in
  float64. In the form above every term of d is >= 0 and ``r_ij`` is one fma per (i, j), so
  nothing cancels. Precision per dtype: the distance AND the gradient are computed entirely in
  the input dtype (float32 arithmetic for float32, no float64 instruction in that
  instantiation; float64 for float64), with fast float32 reciprocals (``__fdividef``, 2 ulp).
  Measured on the CPU emulator of the real source (float32, max error as a fraction of the
  registry tolerance): 0.10 on that regulariser case (0.20 with every reciprocal perturbed by
  up to +-2 ulp, the bound of the fast reciprocal that the emulator computes exactly), <= 0.02
  on the ``infssm_distance_grad`` small cases, <= 7e-4 on the ``infssm_distance`` code cases
  (was 0.02 with the spec's form). Loops: pass A forms ``sum u``, ``sum v`` from the
  diagonal terms, then ``sum_ij u_i v_j rho_ij^2`` with i in register tiles of 4 (``v_j``
  recomputed per tile: O(1) memory). Coalescing: the rows of a block's systems are contiguous
  (n values per system), so a thread-per-system read would be strided by n; the block instead
  copies its chunk of a, c, b, e into shared memory with coalesced loads (rows padded to an odd
  stride: conflict-free per-thread reads), and writes the gradients back through shared memory
  with coalesced stores. The gradient is fused with the forward: after d, W the same thread
  recomputes every ``D_ij`` (nothing O(n1 n2) is stored) and forms the per-i sums in registers
  and the per-j sums ``sum_i u_i r_ij``, ``sum_i c_i^2 (a_i - b_j) / D_ij^3`` in shared memory.
  Memory: the outputs only (O(m) for the distance; no (m, n1, n2) tensor). Shared memory per
  block: ``SYSTEMS_PER_BLOCK (2 ld1 + 2 ld2 [+ 2 n2 with the gradient]) itemsize`` bytes
  (ld = n | 1; 25 KB at n = 16, float32, with the gradient); when a block's rows do not fit
  even at 32 systems (n in the hundreds) the kernel reads and writes global memory directly
  (strided, same arithmetic; the per-j sums then take 2 m n2 values of scratch in the dtype).
  ptxas (sm_90): 96 registers (float32) / 126 (float64), no spills.
- ``infssm_distance`` variants "projection" / "martin": a library path, not a fused kernel:
  the closed-form Grams (m, n, n) in CuPy elementwise ops, batched Cholesky of ``G + eps I``
  (cuSOLVER ``potrfBatched``, as ``cupy.linalg.cholesky`` calls it, keeping its per-matrix
  status), ``M = L1^-1 G12 L2^-T`` by two batched solves (``cupy.linalg.solve``), then
  ``k - ||M||_F^2`` or ``-log det(M M^T)`` (``M^T M`` when n1 > n2) from a third batched Cholesky
  (+inf for a matrix whose Cholesky fails: a 90-degree angle, as the reference). A failed Cholesky
  of ``G11 + eps I`` / ``G22 + eps I`` raises the reference's ValueError, naming the Gram of the
  first failing row (G11 before G22 within a row).
- ``mamba_ac_from_scan``: "mean" is one kernel, ``iss_mamba_mean``: threads over rows (b, l)
  (consecutive l: coalesced reads of ``delta_raw[b, d, :]`` and ``C[b, j, :]``) times
  ``SCAN_GROUPS`` channel groups; each thread sums ``exp(softplus(x) A[d, j])`` over its channels
  for up to 16 states in registers, the groups meet in shared memory; ``A = -exp(A_log)`` (D, n) is
  computed once in CuPy. Nothing of size B D L n is formed (a plain expression would materialise
  (B, D, L, n): 1.2 GB at the GPU bench size in float32). "none" is CuPy elementwise: its output
  (B L, D, n) is that size by definition; it is built in place (one product, then exp and tanh
  with ``out=``), plus the (B, D, L) softplus.
- ``infssm_reg_loss`` / ``_grad``: the S scans are stacked into (S, m, n) arrays (one copy each of
  a/c new/old) and the code distance of all S m rows is ONE launch of ``iss_code_dist`` (with the
  gradient: ``need_grad = 2``, da/dc only, db/de never written); per-scan means; the ``allclose`` shortcut flags
  (``|new - old| <= 1e-8 + 1e-5 |old|`` for a and c) are computed on the device and applied with
  ``where(flag, 0, L_s)`` (and zero gradient rows) — no host synchronisation per scan. "mse" is
  CuPy elementwise on the stacks.

Host reads (documented; nothing else synchronises): the value checks of
``refimpl/_validate.py`` need ``(all finite, max |x|)`` per input array; this module computes
``max |x|`` of every input array on the device (finite iff the max is finite: NaN and inf
propagate) and reads them in ONE device->host transfer per call (a few scalars; per scan for
the regulariser when its pairs are well formed, else one read per array). The principled
variants read one more scalar: the Cholesky status of ``G11 + eps I`` / ``G22 + eps I``.
``cupy.linalg`` is used with CuPy's default ``linalg='ignore'`` error state (no hidden reads).

Kernels (``_kernels.py``, module ``inf_ssm``): ``iss_code_dist`` with ``SYSTEMS_PER_BLOCK``
threads per block (halved while the staged rows exceed the device's shared memory), at most
``GRID_CAP`` blocks; ``iss_mamba_mean`` with blocks (``SCAN_ROWS``, ``SCAN_GROUPS``) and
``ISS_JT * SCAN_ROWS * SCAN_GROUPS`` values of dynamic shared memory.
"""

from __future__ import annotations

import math

import cupy
import numpy as np

from backends.cupy import _kernels
from backends.cupy import native as _native
from refimpl import _validate as V

__all__ = [
    "stein_gram_diag", "stein_cross_gram_diag", "infssm_distance", "infssm_distance_grad",
    "mamba_ac_from_scan", "infssm_reg_loss", "infssm_reg_loss_grad",
]

SYSTEMS_PER_BLOCK = 64   # threads (= systems) per block of iss_code_dist (a multiple of 32)
GRID_CAP = 8192          # at most this many blocks; blocks grid-stride over further chunks
SCAN_ROWS = 32           # blockDim.x of iss_mamba_mean: rows (b, l)
SCAN_GROUPS = 8          # blockDim.y of iss_mamba_mean: channel groups
ISS_JT = 16              # states per register chunk of iss_mamba_mean (#define in the kernel)
ISS_TILE = 4             # i-tile of iss_code_dist (#define in the kernel; documentation)
ALLCLOSE_RTOL, ALLCLOSE_ATOL = 1e-5, 1e-8   # torch.allclose defaults (the code's shortcut)


# --------------------------------------------------------------------------- helpers


def _host_stats(x) -> tuple[bool, float]:
    ax = abs(x)
    return bool((ax < math.inf).all()), float(ax.max())


def _stats(*arrays):
    """The validators' ``stats``: ``max |x|`` of every non-empty float CuPy array in ``arrays``,
    computed on the device and read in one transfer; finite iff the max is (NaN/inf
    propagate through max). Arrays not prepared here fall back to a per-array read."""
    xs = [x for x in arrays if isinstance(x, cupy.ndarray) and x.dtype.kind == "f" and x.size]
    table = {}
    if xs:
        host = cupy.asnumpy(cupy.stack([abs(x).max().astype(np.float64) for x in xs]))
        table = {id(x): float(v) for x, v in zip(xs, host)}

    def stats(x):
        v = table.get(id(x))
        if v is None:
            return _host_stats(x)
        return math.isfinite(v), v

    return stats


def _rows(x, n: int):
    return cupy.ascontiguousarray(x).reshape(-1, n)


def _code_kernel(a, c, b, e, need_grad: int):
    """``iss_code_dist`` on (m, n1) / (m, n2) arrays: ``d`` (m,) and, with ``need_grad`` 1,
    ``(da, dc, db, de)``; with 2, ``(da, dc)``."""
    dt = a.dtype
    m, n1 = a.shape
    n2 = b.shape[1]
    d = cupy.empty(m, dtype=dt)
    if m == 0:
        grads = [cupy.empty((0, n1), dtype=dt)] * 2 + [cupy.empty((0, n2), dtype=dt)] * 2
        return (d, *grads[:{0: 0, 1: 4, 2: 2}[need_grad]])
    if need_grad:
        da, dc = cupy.empty((m, n1), dtype=dt), cupy.empty((m, n1), dtype=dt)
    name = _kernels.kernel_name("iss_code_dist", dt)
    per = (2 * (n1 | 1) + 2 * (n2 | 1) + (2 * n2 if need_grad else 0)) * dt.itemsize
    limit = _kernels.dynamic_smem_limit(name)
    tpb = SYSTEMS_PER_BLOCK
    while tpb > 32 and tpb * per > limit:
        tpb //= 2
    staged = tpb * per <= limit
    smem = tpb * per if staged else 0
    dummy = cupy.empty(1, dtype=dt)
    if need_grad == 1:
        db, de = cupy.empty((m, n2), dtype=dt), cupy.empty((m, n2), dtype=dt)
    else:
        db = de = dummy
    if not need_grad:
        da = dc = dummy
    # unstaged gradient: the per-j sums P, Q in global memory (2 m n2 values of the dtype)
    pu = cupy.empty(2 * m * n2 if need_grad and not staged else 1, dtype=dt)
    if staged:
        _kernels.reserve_dynamic_smem(name, smem)
    blocks = max(1, min(-(-m // tpb), GRID_CAP))
    _kernels.launch(name, (blocks,), (tpb,),
                    (a, c, b, e, np.int64(m), np.int32(n1), np.int32(n2), np.int32(staged),
                     np.int32(need_grad), d, da, dc, db, de, pu), smem)
    if need_grad == 1:
        return d, da, dc, db, de
    if need_grad == 2:
        return d, da, dc
    return (d,)


# --------------------------------------------------------------------------- Grams


def _cross_gram(a, C1, b, C2, p):
    """``(C1^T C2)_ij / (1 - a_i b_j)`` batched (``p = 0``: outer product of vectors)."""
    Dm = 1.0 - a[..., :, None] * b[..., None, :]
    if p == 0:
        Q = C1[..., :, None] * C2[..., None, :]
    else:
        Q = cupy.matmul(cupy.swapaxes(C1, -1, -2), C2)
    Q /= Dm
    return Q


def stein_gram_diag(a, C):
    """Observability Gram of ``(diag(a), C)``: ``G[i, j] = (C^T C)_ij / (1 - a_i a_j)``;
    ``a`` (..., n), ``C`` (..., n) or (..., p, n) -> (..., n, n)."""
    _native(a=a, C=C)
    _, p, _ = V.diag_system(a, C, ("a", "C"), stats=_stats(a, C))
    return _cross_gram(a, C, a, C, p)


def stein_cross_gram_diag(a, C1, b, C2):
    """Cross-Gram ``G12[i, j] = (C1^T C2)_ij / (1 - a_i b_j)``: ``a`` (..., n1), ``C1`` (..., n1)
    or (..., p, n1); ``b``, ``C2`` likewise -> (..., n1, n2)."""
    _native(a=a, C1=C1, b=b, C2=C2)
    _, p, _, _ = V.cross_gram_args(a, C1, b, C2, stats=_stats(a, C1, b, C2))
    return _cross_gram(a, C1, b, C2, p)


# --------------------------------------------------------------------------- distances


def _cholesky_info(G):
    """Batched Cholesky ``L L^T = G`` of (m, n, n) symmetric matrices and a device bool (m,):
    True where the factorisation failed (cuSOLVER ``potrfBatched`` info != 0, a non-positive
    pivot, exactly LAPACK's criterion). The same call as ``cupy.linalg.cholesky`` (row-major
    upper = column-major lower), keeping the per-matrix status that cupy drops."""
    from cupy._core import _mat_ptrs
    from cupy.cuda import device
    from cupy_backends.cuda.libs import cublas, cusolver

    m, n = G.shape[0], G.shape[-1]
    if m == 0:
        return cupy.empty_like(G), cupy.zeros(0, dtype=np.bool_)
    potrf = cusolver.spotrfBatched if G.dtype == np.float32 else cusolver.dpotrfBatched
    x = cupy.array(G, order="C", copy=True)
    info = cupy.empty(m, dtype=np.int32)
    potrf(device.get_cusolver_handle(), cublas.CUBLAS_FILL_MODE_UPPER, n, _mat_ptrs(x).data.ptr,
          n, info.data.ptr, m)
    return cupy.tril(x), info != 0


def _principled(a, c, b, e, variant, eps):
    """"projection" / "martin" of (m, n1), (m, n2) rows: batched Cholesky and solves."""
    dt = a.dtype
    m, n1 = a.shape
    n2 = b.shape[1]
    if m == 0:
        return cupy.empty(0, dtype=dt)
    G11 = _cross_gram(a, c, a, c, 0)
    G22 = _cross_gram(b, e, b, e, 0)
    G12 = _cross_gram(a, c, b, e, 0)
    if eps:
        G11 += eps * cupy.eye(n1, dtype=dt)
        G22 += eps * cupy.eye(n2, dtype=dt)
    L1, f1 = _cholesky_info(G11)
    L2, f2 = _cholesky_info(G22)
    bad = f1 | f2
    r = cupy.argmax(bad)                                   # first failing row (0 if none)
    code = int(cupy.where(bad[r], cupy.where(f1[r], 1, 2), 0))     # host read: one scalar
    if code:
        raise V.gram_not_positive_definite("G11" if code == 1 else "G22", eps)
    X = cupy.linalg.solve(L1, G12)                                    # L1^-1 G12
    M = cupy.swapaxes(cupy.linalg.solve(L2, cupy.ascontiguousarray(cupy.swapaxes(X, 1, 2))), 1, 2)
    k = min(n1, n2)
    if variant == "projection":
        return (k - (M * M).sum(axis=(1, 2))).astype(dt, copy=False)
    W = cupy.matmul(M, cupy.swapaxes(M, 1, 2)) if n1 <= n2 else cupy.matmul(cupy.swapaxes(M, 1, 2), M)
    Lw, fw = _cholesky_info(cupy.ascontiguousarray(W))
    diag = cupy.diagonal(Lw, axis1=1, axis2=2)
    val = -2.0 * cupy.log(cupy.where(fw[:, None], 1.0, diag)).sum(axis=1)
    return cupy.where(fw, math.inf, val).astype(dt, copy=False)


def _distance_rows(a, c, b, e, variant, eps):
    _native(a=a, c=c, b=b, e=e)
    lead, n1, n2 = V.infssm_args(a, c, b, e, variant, eps, stats=_stats(a, c, b, e))
    return lead, _rows(a, n1), _rows(c, n1), _rows(b, n2), _rows(e, n2)


def infssm_distance(a, c, b, e, variant="code", eps=0.0):
    """Distance between the observability subspaces of ``(diag(a), c)`` and ``(diag(b), e)``:
    ``a``, ``c`` (..., n1), ``b``, ``e`` (..., n2) -> (...,). "code": the fused kernel;
    "projection" / "martin": batched Cholesky (see the module docstring)."""
    lead, a2, c2, b2, e2 = _distance_rows(a, c, b, e, variant, eps)
    if variant == "code":
        (d,) = _code_kernel(a2, c2, b2, e2, 0)
    else:
        d = _principled(a2, c2, b2, e2, variant, float(eps))
    return d.reshape(lead)


def infssm_distance_grad(a, c, b, e):
    """``(d, da, dc, db, de)`` of the code distance: one fused forward+backward launch."""
    lead, a2, c2, b2, e2 = _distance_rows(a, c, b, e, "code", 0.0)
    d, da, dc, db, de = _code_kernel(a2, c2, b2, e2, 1)
    return (d.reshape(lead), da.reshape(tuple(a.shape)), dc.reshape(tuple(c.shape)),
            db.reshape(tuple(b.shape)), de.reshape(tuple(e.shape)))


# --------------------------------------------------------------------------- Mamba extraction


def _softplus(x):
    return cupy.maximum(x, 0.0) + cupy.log1p(cupy.exp(-cupy.abs(x)))


def mamba_ac_from_scan(delta_raw, A_log, C, dt_bias=None, channel_reduce="mean", squash=True):
    """Per-token diagonal systems ``(a, c)`` of one Mamba scan: ``delta_raw`` (B, D, L),
    ``A_log`` (D, n), ``C`` (B, n, L), ``dt_bias`` None or (D,). "mean": ``a`` (B L, n) (kernel
    ``iss_mamba_mean``); "none": ``a`` (B L, D, n); ``c`` (B L, n); ``squash``: ``tanh(x / 2)``."""
    _native(delta_raw=delta_raw, A_log=A_log, C=C, dt_bias=dt_bias)
    B, D, L, n = V.mamba_scan_args(delta_raw, A_log, C, dt_bias, channel_reduce, squash,
                                   stats=_stats(delta_raw, A_log, C, dt_bias))
    dt = delta_raw.dtype
    A = cupy.ascontiguousarray(-cupy.exp(A_log))                       # (D, n)
    rows = B * L
    if channel_reduce == "mean":
        a_out = cupy.empty((rows, n), dtype=dt)
        c_out = cupy.empty((rows, n), dtype=dt)
        if rows:
            x = cupy.ascontiguousarray(delta_raw)
            Cc = cupy.ascontiguousarray(C)
            bias = cupy.ascontiguousarray(dt_bias) if dt_bias is not None else cupy.zeros(1, dt)
            name = _kernels.kernel_name("iss_mamba_mean", dt)
            smem = ISS_JT * SCAN_ROWS * SCAN_GROUPS * dt.itemsize
            _kernels.reserve_dynamic_smem(name, smem)
            blocks = max(1, min(-(-rows // SCAN_ROWS), GRID_CAP))
            _kernels.launch(name, (blocks,), (SCAN_ROWS, SCAN_GROUPS),
                            (x, A, Cc, bias, np.int32(dt_bias is not None), np.int64(B),
                             np.int32(D), np.int32(L), np.int32(n), np.int32(bool(squash)),
                             a_out, c_out), smem)
        return a_out, c_out
    x = delta_raw if dt_bias is None else delta_raw + dt_bias[:, None]
    sp = _softplus(x)                                                  # (B, D, L)
    E = cupy.swapaxes(sp, 1, 2)[..., None] * A                         # (B, L, D, n), new
    cupy.exp(E, out=E)
    c = cupy.ascontiguousarray(cupy.swapaxes(C, 1, 2)).reshape(rows, n)
    if squash:
        E *= 0.5
        cupy.tanh(E, out=E)
        c = cupy.tanh(c * 0.5)
    return E.reshape(rows, D, n), c


# --------------------------------------------------------------------------- regulariser


def _pair_arrays(pairs, name):
    """The arrays of the well-formed (a, c) pairs, named as the reference names them."""
    out = {}
    if isinstance(pairs, (list, tuple)):
        for s, p in enumerate(pairs):
            if isinstance(p, (list, tuple)) and len(p) == 2:
                out[f"{name}[{s}] a"], out[f"{name}[{s}] c"] = p
    return out


def _stacks(new_pairs, old_pairs):
    """``(a_new, c_new, a_old, c_old)`` stacked (S, m, n) when every array is a non-empty float
    CuPy array of one shape and dtype (else None: the validator reports what is wrong)."""
    try:
        groups = [[p[k] for p in pairs] for pairs in (new_pairs, old_pairs) for k in (0, 1)]
    except (TypeError, IndexError, KeyError):
        return None
    flat = [x for g in groups for x in g]
    if not flat or not all(isinstance(x, cupy.ndarray) for x in flat):
        return None
    x0 = flat[0]
    if (x0.dtype.kind != "f" or len(x0.shape) != 2 or x0.size == 0
            or any(x.shape != x0.shape or x.dtype != x0.dtype for x in flat)
            or len(groups[0]) != len(groups[2])):
        return None
    return [cupy.stack(g) for g in groups]


def _scan_stats(stacks, new_pairs, old_pairs):
    """The validators' ``stats`` for every array of the pairs from the four (S, m, n) stacks:
    per-scan ``max |x|`` on the device, ONE device->host read of the (4, S) maxima."""
    S = stacks[0].shape[0]
    mx = cupy.asnumpy(cupy.stack([abs(X).reshape(S, -1).max(axis=1).astype(np.float64)
                                  for X in stacks]))
    table = {}
    for k, (pairs, j) in enumerate(((new_pairs, 0), (new_pairs, 1), (old_pairs, 0),
                                    (old_pairs, 1))):
        for s in range(S):
            table[id(pairs[s][j])] = float(mx[k, s])

    def stats(x):
        v = table.get(id(x))
        return _host_stats(x) if v is None else (math.isfinite(v), v)

    return stats


def _reg(new_pairs, old_pairs, lam, mode, allclose_shortcut, grad):
    _native(**_pair_arrays(new_pairs, "new_pairs"), **_pair_arrays(old_pairs, "old_pairs"))
    stacks = _stacks(new_pairs, old_pairs)
    stats = None if stacks is None else _scan_stats(stacks, new_pairs, old_pairs)
    S = V.reg_loss_args(new_pairs, old_pairs, lam, mode, stats=stats)
    lam = float(lam)
    an, cn, ao, co = stacks if stacks is not None else [
        cupy.stack([p[k] for p in pairs]) for pairs in (new_pairs, old_pairs) for k in (0, 1)]
    dt = an.dtype
    _, m, n = an.shape
    if mode == "inf_ssm":
        res = _code_kernel(an.reshape(S * m, n), cn.reshape(S * m, n), ao.reshape(S * m, n),
                           co.reshape(S * m, n), 2 if grad else 0)
        Ls = res[0].reshape(S, m).mean(axis=1)
        if grad:
            scale = lam / (S * m)
            da, dc = res[1].reshape(S, m, n) * scale, res[2].reshape(S, m, n) * scale
    else:
        dA, dC = an - ao, cn - co
        Ls = (dA * dA).mean(axis=(1, 2)) + (dC * dC).mean(axis=(1, 2))
        if grad:
            scale = 2.0 * lam / (S * m * n)
            da, dc = dA * scale, dC * scale
    if allclose_shortcut:
        flag = (_allclose_scans(an, ao) & _allclose_scans(cn, co))      # (S,) on the device
        Ls = cupy.where(flag, 0.0, Ls).astype(dt, copy=False)
        if grad:
            da = cupy.where(flag[:, None, None], 0.0, da).astype(dt, copy=False)
            dc = cupy.where(flag[:, None, None], 0.0, dc).astype(dt, copy=False)
    loss = cupy.asarray(Ls.sum() * (lam / S)).astype(dt, copy=False).reshape(())
    return (loss, da, dc) if grad else loss


def _allclose_scans(new, old):
    """Per scan ``all(|new - old| <= atol + rtol |old|)`` (torch.allclose defaults), (S,) bool."""
    ok = cupy.abs(new - old) <= ALLCLOSE_ATOL + ALLCLOSE_RTOL * cupy.abs(old)
    return ok.reshape(ok.shape[0], -1).all(axis=1)


def infssm_reg_loss(new_pairs, old_pairs, lam, mode="inf_ssm", allclose_shortcut=True):
    """``lam * mean_s L_s`` over scans (one (a, c) pair (m, n) per scan, new and frozen old);
    mode "inf_ssm" (mean code distance, one kernel launch for all scans) or "mse"; with
    ``allclose_shortcut`` an allclose scan contributes 0. Returns a 0-d array."""
    return _reg(new_pairs, old_pairs, lam, mode, bool(allclose_shortcut), grad=False)


def infssm_reg_loss_grad(new_pairs, old_pairs, lam, mode="inf_ssm", allclose_shortcut=True):
    """``(loss, da_new, dc_new)``: gradients w.r.t. the new pairs, stacked (S, m, n), zero for
    a scan removed by the shortcut."""
    return _reg(new_pairs, old_pairs, lam, mode, bool(allclose_shortcut), grad=True)
