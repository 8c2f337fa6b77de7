r"""Entropic and exact optimal transport on CuPy arrays (ot.md sec. 2-7).

Same functions, signatures and results as :mod:`refimpl.ot` (POT's iteration order, check
cadence, iteration counts, status and warnings); inputs are ``cupy.ndarray``, computed on the
current device in the input's dtype. Leading dims of ``C`` are independent problems.

:func:`sinkhorn_log` (the default solver) keeps only the scaled potentials
``(u, v) = (f/eps, g/eps)`` (POT's ``(log_u, log_v)``) and runs one fused kernel per
half-iteration, an online (running max, running sum) log-sum-exp that never writes
``(f - C)/eps``::

    column pass  v_j = log b_j - LSE_i(u_i - C_ij/eps)   threads = columns (coalesced rows),
                                                         rows split over blockDim.y and merged
    row pass     u_i = log a_i - LSE_j(v_j - C_ij/eps)   one warp per row, shuffle merge

with problems on ``blockIdx.y``. Every ``check_every`` iterations the column pass runs once
more in its error mode (``||P^T 1 - b||_2`` per problem, max over problems) and one 0-d value
is read on the host; nothing else synchronises. Extra device memory: the plan (C's size, the
output) and O(n + m) vectors per problem; ``C`` is never copied when it is C-contiguous.

:func:`sinkhorn` (standard domain, Sinkhorn–Knopp) uses CuPy array ops and cuBLAS on
``K = exp(-C/eps)``; POT's numerical-error guard (revert to the previous iterate when a
column of ``K^T u`` is 0 or a scaling is not finite) is evaluated on the device every
iteration and read at the check cadence, so it adds no per-iteration host synchronisation
while returning exactly the iterate, count and status of the reference.

:func:`emd` / :func:`emd_grad` are an explicit **host solve**: the inputs are copied to the
host, :func:`refimpl.ot.emd` (HiGHS / assignment) solves the LP, and the results come back as
CuPy arrays of the input's dtype. There is no GPU exact-OT kernel (ot.md sec. 6).
"""

from __future__ import annotations

from typing import NamedTuple

import cupy
import numpy as np

from backends.cupy import _kernels
from backends.cupy import native as _native
from refimpl import _validate as V
from refimpl import ot as _ref
from refimpl.ot import EMDResult, SinkhornResult, solver_status

__all__ = [
    "SinkhornResult", "EMDResult", "sinkhorn_log", "sinkhorn", "sinkhorn_cost",
    "sinkhorn_cost_grad", "sinkhorn_divergence", "pairwise_cost", "emd", "emd_grad",
]

KINDS = ("sqeuclidean", "half_sqeuclidean", "cosine")
COST_KINDS = ("entropic", "linear")
METHODS = ("log", "standard")
VARIANTS = ("entropic", "linear")
COSINE_NORM_EPS = 1e-8

COL_ROWS = 8            # blockDim.y of the column pass (row groups merged in shared memory)
ROW_WARPS = 8           # warps (rows) per block of the row pass
_THREADS = 256
_MAX_GRID_Y = 65535



def _has_nan(C) -> bool:
    """One reduction kernel, no temporary of C's size (keeps sinkhorn_log's peak memory)."""
    flag = cupy.zeros(1, dtype=np.int32)
    if C.size:
        Cc = cupy.ascontiguousarray(C)
        blocks = max(1, min(-(-Cc.size // _THREADS), 4096))
        _kernels.launch(_kernels.kernel_name("any_nan", Cc.dtype), (blocks,), (_THREADS,),
                        (Cc.reshape(-1), np.int64(Cc.size), flag))
    return bool(int(flag[0]))


def _has_nonfinite(C) -> bool:
    return not bool(cupy.isfinite(C).all())


# --------------------------------------------------------------------------- problem setup


class _Problem(NamedTuple):
    """A validated Sinkhorn call, flattened to ``Bt`` problems of size n x m."""

    C: object               # (Bt, n, m) C-contiguous, dtype T
    a: object               # weights broadcast to (Bt, n), dtype T (a view)
    b: object               # (Bt, m)
    aw: object              # a as the kernels read it: (n,) shared by all problems or (Bt, n)
    bw: object              # (m,) or (Bt, m)
    loga: object            # log aw
    logb: object            # log bw
    batch: tuple
    n: int
    m: int
    eps: float
    max_iter: int
    tol: float
    check_every: int


def _weights(w, size: int, Bt: int, dtype):
    """``(broadcast (Bt, size) view, kernel vector)``; the kernel vector is (size,) when one
    vector serves every problem (uniform when ``w`` is None) and (Bt, size) otherwise."""
    if w is None:
        wk = cupy.full(size, 1.0 / size, dtype=dtype)
    elif w.ndim == 1:
        wk = cupy.ascontiguousarray(w)
    else:
        wk = cupy.ascontiguousarray(w).reshape(Bt, size)
    return cupy.broadcast_to(wk, (Bt, size)), wk


def _build(a, b, C, args) -> _Problem:
    batch, n, m = args.shape
    Bt = int(np.prod(batch)) if batch else 1
    C3 = cupy.ascontiguousarray(C).reshape(Bt, n, m)
    a2, aw = _weights(a, n, Bt, C.dtype)
    b2, bw = _weights(b, m, Bt, C.dtype)
    return _Problem(C3, a2, b2, aw, bw, cupy.log(aw), cupy.log(bw), batch, n, m, args.eps,
                    args.max_iter, args.tol, args.check_every)


def _stride(w) -> np.int64:
    """Batch stride of a weight vector: 0 when shared by every problem."""
    return np.int64(0 if w.ndim == 1 else w.shape[-1])


def _init_u(P: _Problem, init):
    if init is None:
        return cupy.zeros((P.C.shape[0], P.n), dtype=P.C.dtype)
    f0 = cupy.broadcast_to(init[0].astype(P.C.dtype, copy=False), P.batch + (P.n,))
    return cupy.ascontiguousarray((f0 / P.eps).reshape(-1, P.n)).astype(P.C.dtype, copy=False)


# --------------------------------------------------------------------------- log domain


class _LogKernels:
    """Launchers of the fused log-domain passes for one problem set."""

    def __init__(self, P: _Problem):
        self.P = P
        dt = P.C.dtype
        self.T = dt.type
        self.inv_eps = dt.type(1.0 / P.eps)
        self.Bt = P.C.shape[0]
        self.gy = max(1, min(self.Bt, _MAX_GRID_Y))
        self.col = _kernels.kernel_name("sk_col", dt)
        self.row = _kernels.kernel_name("sk_row", dt)
        self.plan_k = _kernels.kernel_name("sk_plan", dt)
        self.lin_k = _kernels.kernel_name("sk_linear", dt)
        self.err2 = cupy.zeros(self.Bt, dtype=np.float64)

    def _col(self, u, v, mode: int) -> None:
        P = self.P
        _kernels.launch(self.col, (-(-P.m // 32), self.gy), (32, COL_ROWS),
                        (P.C, u, v, P.logb, _stride(P.logb), P.bw, _stride(P.bw),
                         self.inv_eps, np.int32(P.n), np.int32(P.m), np.int32(self.Bt),
                         np.int32(mode), self.err2))

    def update_v(self, u, v) -> None:
        self._col(u, v, 0)

    def update_u(self, u, v) -> None:
        P = self.P
        _kernels.launch(self.row, (-(-P.n // ROW_WARPS), self.gy), (32 * ROW_WARPS,),
                        (P.C, u, v, P.loga, _stride(P.loga), self.inv_eps, np.int32(P.n),
                         np.int32(P.m), np.int32(self.Bt)))

    def error(self, u, v):
        """0-d float64 device array: max over problems of ``||P^T 1 - b||_2``."""
        self.err2.fill(0)
        self._col(u, v, 1)
        return cupy.sqrt(self.err2.max())

    def plan(self, u, v):
        P = self.P
        out = cupy.empty_like(P.C)
        _kernels.launch(self.plan_k, (-(-P.m // _THREADS), max(1, min(self.Bt * P.n, _MAX_GRID_Y))),
                        (_THREADS,), (P.C, u, v, out, self.inv_eps, np.int32(P.n), np.int32(P.m),
                                      np.int64(self.Bt)))
        return out

    def linear_cost(self, u, v):
        """``<P, C>`` per problem (float64, (Bt,)) without forming P."""
        P = self.P
        out = cupy.zeros(self.Bt, dtype=np.float64)
        _kernels.launch(self.lin_k, (-(-P.n // ROW_WARPS), self.gy), (32 * ROW_WARPS,),
                        (P.C, u, v, self.inv_eps, np.int32(P.n), np.int32(P.m),
                         np.int32(self.Bt), out))
        return out


class _Solution(NamedTuple):
    plan: object            # (Bt, n, m) or None when not asked for
    u: object               # f / eps, (Bt, n)
    v: object               # g / eps, (Bt, m)
    n_iter: int
    err: float              # host float64 (the decision value)
    numerical_error: bool
    it_error: int | None
    extra: object           # _LogKernels (for the linear cost) or K (standard domain)


def _solve_log(P: _Problem, u, need_plan: bool) -> _Solution:
    """POT ``sinkhorn_log`` order and cadence (refimpl.ot._sinkhorn_log), on the device."""
    ks = _LogKernels(P)
    v = cupy.empty((ks.Bt, P.m), dtype=P.C.dtype)
    err = None
    n_iter = 0
    for it in range(P.max_iter):
        ks.update_v(u, v)               # g first (columns)
        ks.update_u(u, v)               # then f (rows): row sums now exact
        n_iter = it + 1
        if it % P.check_every == 0:
            err = float(ks.error(u, v))     # the one host read of this check
            if err < P.tol:
                break
    if (n_iter - 1) % P.check_every != 0:   # the returned iterate was not a check iterate
        err = float(ks.error(u, v))
    plan = ks.plan(u, v) if need_plan else None
    return _Solution(plan, u, v, n_iter, err, False, None, ks)


# --------------------------------------------------------------------------- standard domain


def _solve_standard(P: _Problem, init, need_plan: bool) -> _Solution:
    """Sinkhorn–Knopp (refimpl.ot._sinkhorn_standard) with POT's guard evaluated on the device:
    once an iteration is bad, the state stays frozen at the previous iterate; the flag is read
    at the check cadence (and after the last iteration), so the returned iterate, ``n_iter``
    and status equal the reference's, which stops at the bad iteration itself."""
    dt = P.C.dtype
    Bt = P.C.shape[0]
    K = -P.C
    K /= dt.type(P.eps)
    cupy.exp(K, out=K)                              # K = exp(-C/eps)
    if init is None:
        u = cupy.full((Bt, P.n), 1.0 / P.n, dtype=dt)
        v = cupy.full((Bt, P.m), 1.0 / P.m, dtype=dt)
    else:
        u = cupy.exp(cupy.broadcast_to(init[0].astype(dt, copy=False), P.batch + (P.n,))
                     .reshape(Bt, P.n) / dt.type(P.eps))
        v = cupy.exp(cupy.broadcast_to(init[1].astype(dt, copy=False), P.batch + (P.m,))
                     .reshape(Bt, P.m) / dt.type(P.eps))

    def column_error(u, v):
        colsum = v * cupy.matmul(u[:, None, :], K)[:, 0, :]          # (u K v)^T 1
        return float(cupy.sqrt(((colsum - P.b) ** 2).sum(axis=-1)).max())

    stopped = cupy.zeros((), dtype=bool)
    it_err = cupy.zeros((), dtype=np.int64)
    err = None
    n_iter = 0
    numerical_error, it_error = False, None
    for it in range(P.max_iter):
        KTu = cupy.matmul(u[:, None, :], K)[:, 0, :]                   # K^T u
        v_new = P.b / KTu
        u_new = P.a / cupy.matmul(K, v_new[:, :, None])[:, :, 0]       # a / (K v)
        bad = (KTu == 0).any() | ~cupy.isfinite(u_new).all() | ~cupy.isfinite(v_new).all()
        it_err = cupy.where(bad & ~stopped, it, it_err)
        stopped = stopped | bad
        u = cupy.where(stopped, u, u_new)
        v = cupy.where(stopped, v, v_new)
        check = it % P.check_every == 0
        if (check or it == P.max_iter - 1) and bool(stopped):
            numerical_error, it_error = True, int(it_err)
            n_iter = it_error
            break
        n_iter = it + 1
        if check:
            err = column_error(u, v)
            if err < P.tol:
                break
    if numerical_error or (n_iter - 1) % P.check_every != 0:
        err = column_error(u, v)
    plan = u[:, :, None] * K * v[:, None, :] if need_plan else None
    # u, v as the potentials' exponentials; f = eps log u, g = eps log v
    return _Solution(plan, cupy.log(u), cupy.log(v), n_iter, err, numerical_error, it_error, K)


# --------------------------------------------------------------------------- results


def _finish(name: str, P: _Problem, sol: _Solution, plan) -> SinkhornResult:
    """Status, warnings (shared with the reference) and the result tuple."""
    dt = P.C.dtype
    err = sol.err
    converged, status = solver_status(name, err, P.tol, sol.n_iter, sol.numerical_error,
                                      sol.it_error)
    f = (P.eps * sol.u).astype(dt, copy=False).reshape(P.batch + (P.n,))
    g = (P.eps * sol.v).astype(dt, copy=False).reshape(P.batch + (P.m,))
    plan = None if plan is None else plan.reshape(P.batch + (P.n, P.m))
    return SinkhornResult(plan, f, g, int(sol.n_iter), cupy.asarray(err, dtype=dt), converged,
                          status)


def _validated(a, b, C, eps, max_iter, tol, check_every, init) -> _Problem:
    _native(a=a, b=b, C=C)
    if isinstance(init, (tuple, list)) and len(init) == 2:
        _native(**{"init[0]": init[0], "init[1]": init[1]})
    args = V.sinkhorn_args(a, b, C, eps, max_iter, tol, check_every, init, has_nan=_has_nan,
                           to_numpy=cupy.asnumpy)
    return _build(a, b, C, args)


def sinkhorn_log(a, b, C, eps, max_iter=1000, tol=1e-9, check_every=10, init=None):
    r"""Log-domain Sinkhorn, POT ``sinkhorn_log`` order and cadence (see :mod:`refimpl.ot`).

    For ``it = 0, 1, ...``: ``g <- eps log b - eps LSE_i((f_i - C_ij)/eps)`` (one fused column
    kernel), ``f <- eps log a - eps LSE_j((g_j - C_ij)/eps)`` (one fused row kernel); every
    ``check_every`` iterations ``err = max ||P^T 1 - b||_2`` (one more column pass, one 0-d
    host read) and stop if ``err < tol``. ``init=(f0, g0)`` warm-starts (only f0 matters).
    ``tol=0`` runs exactly ``max_iter`` updates without a warning. Returns
    :class:`SinkhornResult` (``err`` a 0-d CuPy array of C's dtype)."""
    P = _validated(a, b, C, eps, max_iter, tol, check_every, init)
    sol = _solve_log(P, _init_u(P, init), need_plan=True)
    return _finish("sinkhorn_log", P, sol, sol.plan)


def sinkhorn(a, b, C, eps, max_iter=1000, tol=1e-9, check_every=10, init=None):
    r"""Standard-domain Sinkhorn–Knopp, POT ``sinkhorn_knopp`` order, cadence and guard.

    ``K = exp(-C/eps)``; ``v <- b / (K^T u)``, ``u <- a / (K v)`` (batched cuBLAS GEMVs); if a
    column of ``K^T u`` is 0 or a scaling is not finite, the previous iterate is returned with
    ``status="numerical_error"`` and a warning (never NaN). Use only when ``max(C)/eps`` is
    moderate (< ~700 in float64, < ~80 in float32); :func:`sinkhorn_log` has no such limit."""
    P = _validated(a, b, C, eps, max_iter, tol, check_every, init)
    sol = _solve_standard(P, init, need_plan=True)
    return _finish("sinkhorn", P, sol, sol.plan)


def _solve(method: str, P: _Problem, name: str, need_plan: bool):
    P = P._replace(check_every=10)
    if method == "log":
        sol = _solve_log(P, _init_u(P, None), need_plan)
    else:
        sol = _solve_standard(P, None, need_plan)
    return _finish(name, P, sol, sol.plan), sol


def _cost_value(kind: str, res: SinkhornResult, sol: _Solution, P: _Problem):
    """Entropic ``<a, f> + <b, g>`` or linear ``<P, C>`` per problem, shape ``P.batch``
    (C's dtype for the entropic value and the standard domain, float64 from the fused kernel)."""
    if kind == "entropic":
        f = res.f.reshape(-1, P.n)
        g = res.g.reshape(-1, P.m)
        val = (P.a * f).sum(axis=-1) + (P.b * g).sum(axis=-1)
    elif isinstance(sol.extra, _LogKernels):
        val = sol.extra.linear_cost(sol.u, sol.v)
    else:
        plan = res.plan.reshape(-1, P.n, P.m)
        val = cupy.where(plan > 0, plan * P.C, 0.0).sum(axis=(-2, -1))
    return val.reshape(P.batch)


def sinkhorn_cost(a, b, C, eps, kind="entropic", method="log", max_iter=1000, tol=1e-9):
    r"""Transport cost of the Sinkhorn solution, one value per problem (0-d for one problem).

    ``kind="entropic"``: the dual value ``<a, f> + <b, g>``; ``kind="linear"``: ``<P, C>``
    (POT ``sinkhorn2``; in the log domain a fused reduction, P never formed). ``method`` is
    ``"log"`` or ``"standard"``; convergence is checked every 10 iterations."""
    V.choice(kind, "kind", COST_KINDS)
    V.choice(method, "method", METHODS)
    P = _validated(a, b, C, eps, max_iter, tol, 10, None)
    need_plan = method == "standard" and kind == "linear"
    res, sol = _solve(method, P, "sinkhorn_cost", need_plan)
    return _cost_value(kind, res, sol, P).astype(C.dtype, copy=False)


def sinkhorn_cost_grad(a, b, C, eps, method="log", max_iter=1000, tol=1e-9):
    r"""Envelope gradient of the entropic cost: ``(dC, da, db) = (P, f - mean f, g - mean g)``
    (unweighted means over the last axis; exact at convergence)."""
    V.choice(method, "method", METHODS)
    P = _validated(a, b, C, eps, max_iter, tol, 10, None)
    res, _ = _solve(method, P, "sinkhorn_cost_grad", need_plan=True)
    da = res.f - res.f.mean(axis=-1, keepdims=True)
    db = res.g - res.g.mean(axis=-1, keepdims=True)
    return res.plan, da, db


def sinkhorn_divergence(a, b, C_xy, C_xx, C_yy, eps, variant="entropic", max_iter=1000, tol=1e-9):
    r"""Debiased Sinkhorn divergence, one value per problem (see :mod:`refimpl.ot`):
    ``S = OT(a, b, C_xy) - OT(a, a, C_xx)/2 - OT(b, b, C_yy)/2`` with the entropic value, or with
    linear costs and ``max(0, S)`` for ``variant="linear"`` (POT
    ``empirical_sinkhorn_divergence``). All three problems use :func:`sinkhorn_log`."""
    V.choice(variant, "variant", VARIANTS)
    _native(a=a, b=b, C_xy=C_xy, C_xx=C_xx, C_yy=C_yy)
    args = V.sinkhorn_divergence_args(a, b, C_xy, C_xx, C_yy, eps, max_iter, tol, _has_nan,
                                      to_numpy=cupy.asnumpy)
    batch, n, m = args.shape

    def value(p, q, Cs, size_p, size_q):
        sub = args._replace(shape=V.OTShape(batch, size_p, size_q))
        P = _build(p, q, Cs, sub)
        res, sol = _solve("log", P, "sinkhorn_divergence", need_plan=False)
        return _cost_value(variant, res, sol, P).astype(np.float64)

    S = value(a, b, C_xy, n, m) - 0.5 * value(a, a, C_xx, n, n) - 0.5 * value(b, b, C_yy, m, m)
    if variant == "linear":
        S = cupy.maximum(0.0, S)
    return S.astype(C_xy.dtype, copy=False)


# --------------------------------------------------------------------------- ground costs


def pairwise_cost(x, y, kind="sqeuclidean"):
    r"""Ground cost between point clouds: (n, d), (m, d) -> (n, m); (B, n, d), (B, m, d) -> (B, n, m).

    ``"sqeuclidean"``: ``max(|x|^2 + |y|^2 - 2 x.y, 0)`` (one GEMM and a fused epilogue; the
    reference forms explicit differences, the difference is cancellation at ~1e-7 |x|^2 in
    float32); ``"half_sqeuclidean"``: half of it; ``"cosine"``: ``clip(1 - xh.yh, 0, 2)``,
    ``xh = x / max(|x|, 1e-8)``."""
    _native(x=x, y=y)
    shape, _ = V.ot_points(x, y)
    V.choice(kind, "kind", KINDS)
    nbatch = shape.batch[0] if shape.batch else 1
    n, m = shape.n, shape.m
    dt = x.dtype
    if kind == "cosine":
        xh = x / cupy.maximum(cupy.sqrt((x * x).sum(axis=-1, keepdims=True)), COSINE_NORM_EPS)
        yh = y / cupy.maximum(cupy.sqrt((y * y).sum(axis=-1, keepdims=True)), COSINE_NORM_EPS)
        C = cupy.matmul(xh, yh.swapaxes(-1, -2))
        name = _kernels.kernel_name("cost_cos", dt)
        args = (C, np.int32(n), np.int32(m), np.int64(nbatch), np.int32(1))
    else:
        C = cupy.matmul(x, y.swapaxes(-1, -2))
        name = _kernels.kernel_name("cost_sq", dt)
        scale = 0.5 if kind == "half_sqeuclidean" else 1.0
        args = (C, cupy.ascontiguousarray((x * x).sum(axis=-1)),
                cupy.ascontiguousarray((y * y).sum(axis=-1)), np.int32(n), np.int32(m),
                np.int64(nbatch), dt.type(scale))
    if C.size:
        _kernels.launch(name, (-(-m // _THREADS), max(1, min(nbatch * n, _MAX_GRID_Y))),
                        (_THREADS,), args)
    return C


# --------------------------------------------------------------------------- exact OT (host)


def _to_host(x):
    return None if x is None else cupy.asnumpy(x)


def emd(a, b, C, method="auto"):
    r"""Exact OT ``min <P, C>`` over the transport polytope — an explicit **host solve**.

    The inputs are validated on the device, copied to the host and solved by
    :func:`refimpl.ot.emd` (HiGHS linear program, or the assignment problem for uniform square
    problems; float64); plan, cost and centred duals come back as CuPy arrays of C's dtype.
    There is no GPU exact-OT kernel (ot.md sec. 6); the registry flags this op
    ``host_solver=True``."""
    _native(a=a, b=b, C=C)
    V.emd_args(a, b, C, _has_nonfinite, to_numpy=cupy.asnumpy)
    res = _ref.emd(_to_host(a), _to_host(b), cupy.asnumpy(C), method=method)
    return EMDResult(*(cupy.asarray(np.asarray(r), dtype=C.dtype) for r in res))


def emd_grad(a, b, C, method="auto"):
    r"""Gradients of the exact cost, ``(P*, f - mean f, g - mean g)`` — a host solve like
    :func:`emd` (the gradients POT attaches in ``emd2``)."""
    res = emd(a, b, C, method=method)
    return res.plan, res.f - res.f.mean(), res.g - res.g.mean()

