"""Entropic and exact optimal transport with Numba-CUDA kernels (``ot.md`` sec. 6, 7).

Same functions, signatures and results as :mod:`refimpl.ot`, on CUDA arrays (see the package
docstring for array kinds and the stream). Leading dims of ``C`` are a batch of independent
problems (viewed as one (B, n, m) batch without a copy); ``a``/``b`` are shared ((n,)/(m,)) or
per problem.

Sinkhorn, log domain (:func:`sinkhorn_log`): the state is POT's ``(log_u, log_v) =
(f/eps, g/eps)``; each iteration is two fused kernels computing an online (running max,
running sum) LSE of ``log_u_i - C_ij/eps`` without writing that matrix:

* column update ``ot_col_lse``: one thread per column looping over rows (coalesced across
  the threads of a warp); when there are too few column blocks to fill the GPU the rows are
  split and a small ``ot_col_lse_finish`` kernel merges the partial (max, sum) pairs;
* row update ``ot_row_lse``: one warp per row (``lanes`` threads striding over columns,
  reduced through shared memory);
* batched problems on the last grid axis.

The convergence check (every ``check_every`` iterations, exactly POT's cadence) computes the
column sums of the plan and ``max_b ||P_b^T 1 - b_b||_2`` on the device and reads one small
status array; with ``tol=0`` (fixed iterations) the loop makes no host read at all.

Standard domain (:func:`sinkhorn`): the same structure with ``K_ij = exp(-C_ij/eps)``
recomputed in the kernels (K is never stored). POT's guard (any ``K^T u == 0`` or a
non-finite u, v) is a device flag: the kernel that detects it records the iteration, every
later update kernel becomes a no-op, and the double-buffered previous iterate is returned,
with ``status="numerical_error"`` — the same result as POT's revert-and-stop.

Exact OT (:func:`emd`, :func:`emd_grad`) has no GPU kernel: it is an explicit **host solve**
(:func:`refimpl.ot.emd` on host copies of the inputs, in float64), with the results copied
back to the device in the input's dtype.
"""

from __future__ import annotations

import math

import numpy as np

from refimpl import _validate as V
from refimpl import ot as _ref
from refimpl.ot import EMDResult, SinkhornResult, solver_status  # noqa: F401 (re-exported)

from . import _kernels as K

_LOG, _STD = 0, 1


# --------------------------------------------------------------------------- helpers



def _has_nan(C) -> bool:
    """Device NaN test of a cost array (one reduction kernel, one 8-byte read)."""
    C = K.unmeta(C)
    C3 = K.flatten_batch(K.device(C), 2)
    total = int(np.prod(C3.shape))
    if total == 0:
        return False
    flag = K.upload(np.zeros(1, dtype=np.int64))
    nt = K.threads(total, 256)
    K.launch("any_nan", V.dtype_name(C), (min(-(-total // nt), 4096),), (nt,), 0, C3, flag)
    return bool(flag.copy_to_host()[0])


def _weights(w, size: int, dtype: str):
    """Weights as a (1 or B, size) device array; uniform ``1/size`` when None."""
    if w is None:
        arr = K.empty((1, size), dtype)
        K.fill(arr, 1.0 / size)
        return arr
    return K.flatten_batch(K.device(w), 1)


def _sm_count() -> int:
    if "sm" not in _GEOMETRY:
        from numba import cuda

        _GEOMETRY["sm"] = int(cuda.get_current_device().MULTIPROCESSOR_COUNT)
    return _GEOMETRY["sm"]


_GEOMETRY: dict = {}


class _Geometry:
    """Launch geometry of the Sinkhorn kernels for a (B, n, m) batch."""

    def __init__(self, B: int, n: int, m: int):
        self.col_threads = K.threads(m, K.OT_COL_BLOCK)
        self.col_blocks = -(-m // self.col_threads)
        if K.OT_COL_SPLIT is not None:
            split = int(K.OT_COL_SPLIT)
        elif K.simulator():
            split = 1
        else:  # enough blocks for ~2 per SM, never fewer than OT_MIN_SPLIT_ROWS rows per split
            split = -(-2 * _sm_count() // (self.col_blocks * B))
            split = min(split, -(-n // K.OT_MIN_SPLIT_ROWS))
        split = max(1, min(split, n))
        self.rows_per = -(-n // split)
        self.split = -(-n // self.rows_per)
        if K.simulator():
            self.lanes = min(2, K.pow2_floor(m))
            self.rows = max(1, min(n, K.SIM_MAX_THREADS // self.lanes))
        else:
            self.lanes = min(K.OT_ROW_LANES, 1 << max(0, (m - 1).bit_length()))
            self.rows = max(1, (K.OT_ROW_LANES * K.OT_ROW_ROWS) // self.lanes)
        self.row_blocks = -(-n // self.rows)
        self.red_threads = K.pow2_floor(K.threads(max(n, m), K.RED_BLOCK))


class _Problem:
    """Device views of one validated Sinkhorn call."""

    def __init__(self, a, b, C, eps: float, dtype: str, batch: tuple, n: int, m: int):
        self.C3 = K.flatten_batch(K.device(C), 2)
        self.B = int(self.C3.shape[0])
        self.n, self.m = n, m
        self.batch = batch
        self.dtype = dtype
        self.eps = eps
        self.aw = _weights(a, n, dtype)
        self.bw = _weights(b, m, dtype)
        self.geo = _Geometry(self.B, n, m)
        self.inv_eps = self.scalar(1.0 / eps)

    def scalar(self, x: float):
        return np.dtype(self.dtype).type(x)

    def launch(self, name, grid, block, *args, shared=0):
        K.launch(name, self.dtype, grid, block, shared, *args)


class _State:
    """Result of a solver run: the returned iterate ``(s0, s1)`` (log_u, log_v or u, v)."""

    def __init__(self, domain, s0, s1, n_iter, err_dev, err_host, numerical_error, it_error):
        self.domain, self.s0, self.s1 = domain, s0, s1
        self.n_iter, self.err_dev, self.err_host = n_iter, err_dev, err_host
        self.numerical_error, self.it_error = numerical_error, it_error


def _column_error(p: _Problem, s0, s1, domain: int, part, stat, errout) -> None:
    """``stat[0] = errout[0] = max_b ||P_b^T 1 - b_b||_2`` of the iterate (s0, s1), on device."""
    g = p.geo
    if p.B == 0 or p.n == 0 or p.m == 0:
        K.fill(errout, 0.0)
        return
    p.launch("ot_colsum", (g.col_blocks, g.split, p.B), (g.col_threads,),
             p.C3, s0, s1, part, p.inv_eps, g.rows_per, domain)
    p.launch("ot_err", (1,), (g.red_threads,), part, p.bw, stat, errout)


def _read(stat) -> np.ndarray:
    return stat.copy_to_host()


def _solve_log(p: _Problem, max_iter: int, tol: float, check_every: int, f0) -> _State:
    g, B, n, m = p.geo, p.B, p.n, p.m
    lu, lv = K.empty((B, n), p.dtype), K.empty((B, m), p.dtype)
    if f0 is None:
        K.fill(lu, 0.0)
    elif B and n:
        nt = K.threads(n, 256)
        p.launch("ot_prep", (-(-n // nt), B), (nt,), K.flatten_batch(K.device(f0), 1), lu,
                 p.scalar(p.eps), 0)
    split = g.split > 1
    pm = K.empty((B, g.split, m), p.dtype) if split else K.dummy(3, p.dtype)
    ps = K.empty((B, g.split, m), p.dtype) if split else K.dummy(3, p.dtype)
    part = K.empty((B, g.split, m), p.dtype)
    stat = K.zeros((2,), "float64")
    errout = K.empty((1,), p.dtype)
    fin_threads = K.threads(m, 256)
    n_iter, err_host, checked = 0, None, False
    work = B > 0 and n > 0 and m > 0
    for it in range(max_iter):
        if work:
            p.launch("ot_col_lse", (g.col_blocks, g.split, B), (g.col_threads,),
                     p.C3, lu, p.bw, lv, pm, ps, p.inv_eps, g.rows_per, g.split)
            if split:
                p.launch("ot_col_lse_finish", (-(-m // fin_threads), B), (fin_threads,),
                         pm, ps, p.bw, lv, g.split)
            p.launch("ot_row_lse", (g.row_blocks, B), (g.lanes, g.rows),
                     p.C3, lv, p.aw, lu, p.inv_eps)
        n_iter = it + 1
        checked = False
        if tol > 0 and it % check_every == 0:
            _column_error(p, lu, lv, _LOG, part, stat, errout)
            err_host = float(_read(stat)[0])
            checked = True
            if err_host < tol:
                break
    if not checked:  # the error of the returned iterate (the reference recomputes it too)
        _column_error(p, lu, lv, _LOG, part, stat, errout)
        err_host = float(_read(stat)[0]) if tol > 0 else None
    return _State(_LOG, lu, lv, n_iter, errout, err_host, False, None)


def _solve_standard(p: _Problem, max_iter: int, tol: float, check_every: int, f0, g0) -> _State:
    g, B, n, m = p.geo, p.B, p.n, p.m
    ub, vb = K.empty((2, B, n), p.dtype), K.empty((2, B, m), p.dtype)
    u, v = (ub[0], ub[1]), (vb[0], vb[1])
    if f0 is None:
        K.fill(ub, 1.0 / n)
        K.fill(vb, 1.0 / m)
    elif B:
        for src, dst, size in ((f0, u[0], n), (g0, v[0], m)):
            nt = K.threads(size, 256)
            p.launch("ot_prep", (-(-size // nt), B), (nt,), K.flatten_batch(K.device(src), 1),
                     dst, p.scalar(p.eps), 1)
    split = g.split > 1
    part = K.empty((B, g.split, m), p.dtype)
    stat = K.zeros((2,), "float64")
    errout = K.empty((1,), p.dtype)
    fin_threads = K.threads(m, 256)
    n_iter, err_host, checked = 0, None, False
    status = None
    work = B > 0 and n > 0 and m > 0
    for it in range(max_iter):
        cur, nxt = it % 2, (it + 1) % 2
        it1 = float(it + 1)
        if work:
            p.launch("ot_col_ktu", (g.col_blocks, g.split, B), (g.col_threads,),
                     p.C3, u[cur], p.bw, v[nxt], part, p.inv_eps, g.rows_per, g.split, stat, it1)
            if split:
                p.launch("ot_col_ktu_finish", (-(-m // fin_threads), B), (fin_threads,),
                         part, p.bw, v[nxt], g.split, stat, it1)
            p.launch("ot_row_kv", (g.row_blocks, B), (g.lanes, g.rows),
                     p.C3, v[nxt], p.aw, u[nxt], p.inv_eps, stat, it1)
        n_iter = it + 1
        checked = False
        if tol > 0 and it % check_every == 0:
            _column_error(p, u[nxt], v[nxt], _STD, part, stat, errout)
            status = _read(stat)
            err_host = float(status[0])
            checked = True
            if status[1] != 0 or err_host < tol:
                break
    if not checked:
        status = _read(stat)  # the numerical-error flag (one read)
    numerical_error = bool(status is not None and status[1] != 0)
    it_error = None
    if numerical_error:
        it_error = int(status[1]) - 1
        n_iter = it_error          # the failed update is discarded: the previous iterate
        checked = False
    s0, s1 = u[n_iter % 2], v[n_iter % 2]
    if not checked:
        _column_error(p, s0, s1, _STD, part, stat, errout)
        err_host = float(_read(stat)[0]) if (tol > 0 or numerical_error) else None
    return _State(_STD, s0, s1, n_iter, errout, err_host, numerical_error, it_error)


def _finish(name: str, p: _Problem, st: _State, tol: float, want_plan: bool = True):
    """Warnings, status and the device outputs (plan, f, g, err) of a solver run."""
    err = math.inf if st.err_host is None else st.err_host  # not read when tol = 0
    converged, status = solver_status(name, err, tol, st.n_iter, st.numerical_error, st.it_error)
    B, n, m = p.B, p.n, p.m
    f, g = K.empty((B, n), p.dtype), K.empty((B, m), p.dtype)
    for src, dst, size in ((st.s0, f, n), (st.s1, g, m)):
        if B and size:
            nt = K.threads(size, 256)
            p.launch("ot_potential", (-(-size // nt), B), (nt,), src, dst, p.scalar(p.eps),
                     st.domain)
    plan = _plan(p, st) if want_plan else None
    return plan, f, g, converged, status


def _plan(p: _Problem, st: _State):
    P = K.empty((p.B, p.n, p.m), p.dtype)
    if p.B and p.n and p.m:
        g = p.geo
        p.launch("ot_plan", (g.col_blocks, min(p.n, 65535), p.B), (g.col_threads,),
                 p.C3, st.s0, st.s1, P, p.inv_eps, st.domain)
    return P


def _shape_out(x, p: _Problem, tail: tuple, like):
    return K.wrap(x.reshape(p.batch + tail), like)


def _prepare(a, b, C, eps, max_iter, tol, check_every, init):
    K.native(a=a, b=b, C=C)
    if isinstance(init, (tuple, list)) and len(init) == 2:
        K.native(**{"init[0]": init[0], "init[1]": init[1]})
    init_m = tuple(K.meta(v) for v in init) if isinstance(init, (tuple, list)) else init
    args = V.sinkhorn_args(K.meta(a), K.meta(b), K.meta(C), eps, max_iter, tol, check_every,
                           init_m, has_nan=_has_nan, to_numpy=K.to_numpy)
    if init is not None:
        V.same_dtype("C", C, "init[0]", init[0])
        V.same_dtype("C", C, "init[1]", init[1])
    batch, n, m = args.shape
    p = _Problem(a, b, C, args.eps, V.dtype_name(C), batch, n, m)
    return p, args


def _solve(p: _Problem, method: str, max_iter: int, tol: float, check_every: int, init=None):
    f0 = g0 = None
    if init is not None:
        f0, g0 = init
    if method == "log":
        return _solve_log(p, max_iter, tol, check_every, f0)
    return _solve_standard(p, max_iter, tol, check_every, f0, g0)


def _result(name, p, st, tol, like) -> SinkhornResult:
    plan, f, g, converged, status = _finish(name, p, st, tol)
    return SinkhornResult(_shape_out(plan, p, (p.n, p.m), like), _shape_out(f, p, (p.n,), like),
                          _shape_out(g, p, (p.m,), like), int(st.n_iter),
                          K.wrap(st.err_dev.reshape(()), like), bool(converged), status)


# --------------------------------------------------------------------------- Sinkhorn


def sinkhorn_log(a, b, C, eps, max_iter=1000, tol=1e-9, check_every=10, init=None):
    r"""Log-domain Sinkhorn with POT ``sinkhorn_log``'s order and check cadence.

    ``g_j <- eps log b_j - eps LSE_i((f_i - C_ij)/eps)`` then
    ``f_i <- eps log a_i - eps LSE_j((g_j - C_ij)/eps)``, two fused kernels per iteration;
    every ``check_every`` iterations (``it % check_every == 0``) the column error is computed
    on the device and one status array is read (no reads with ``tol=0``). Returns
    :class:`refimpl.ot.SinkhornResult` with device arrays (``err`` 0-d, ``n_iter`` an int)."""
    p, args = _prepare(a, b, C, eps, max_iter, tol, check_every, init)
    st = _solve(p, "log", args.max_iter, args.tol, args.check_every, init)
    return _result("sinkhorn_log", p, st, args.tol, C)


def sinkhorn(a, b, C, eps, max_iter=1000, tol=1e-9, check_every=10, init=None):
    r"""Standard-domain Sinkhorn–Knopp with POT ``sinkhorn_knopp``'s order, cadence and guard.

    ``v <- b / (K^T u)``, ``u <- a / (K v)`` with ``K = exp(-C/eps)`` recomputed in the
    kernels; a zero in ``K^T u`` or a non-finite scaling stops at the previous iterate with
    ``status="numerical_error"`` (device flag, read at the next check or at the end)."""
    p, args = _prepare(a, b, C, eps, max_iter, tol, check_every, init)
    st = _solve(p, "standard", args.max_iter, args.tol, args.check_every, init)
    return _result("sinkhorn", p, st, args.tol, C)


def _value(p: _Problem, st: _State, kind: str, name: str, tol: float):
    """Per-problem entropic dual value ``<a,f> + <b,g>`` or linear cost ``<P, C>``, (B,)."""
    plan, f, g, _, _ = _finish(name, p, st, tol, want_plan=(kind == "linear"))
    out = K.zeros((p.B,), p.dtype)
    if p.B == 0:
        return out
    nt = p.geo.red_threads
    if kind == "entropic":
        p.launch("ot_dual_value", (p.B,), (nt,), p.aw, f, p.bw, g, out)
    elif p.n and p.m:
        blocks = max(1, min(-(-p.n * p.m // (nt * 8)), 1024))
        p.launch("ot_linear_value", (blocks, p.B), (nt,), p.C3, plan, out)
    return out


def sinkhorn_cost(a, b, C, eps, kind="entropic", method="log", max_iter=1000, tol=1e-9):
    r"""Transport cost of the Sinkhorn solution, one value per problem (0-d for one problem):
    ``kind="entropic"`` the dual value ``<a, f> + <b, g>``, ``kind="linear"`` ``<P, C>``
    (``0 * inf`` counted as 0); ``method`` ``"log"`` or ``"standard"``, checks every 10."""
    V.choice(kind, "kind", _ref.COST_KINDS)
    V.choice(method, "method", _ref.METHODS)
    p, args = _prepare(a, b, C, eps, max_iter, tol, 10, None)
    st = _solve(p, method, args.max_iter, args.tol, 10)
    return K.wrap(_value(p, st, kind, "sinkhorn_cost", args.tol).reshape(p.batch), C)


def sinkhorn_cost_grad(a, b, C, eps, method="log", max_iter=1000, tol=1e-9):
    r"""Envelope gradient of the entropic cost: ``(dC, da, db) = (P, f - mean f, g - mean g)``."""
    V.choice(method, "method", _ref.METHODS)
    p, args = _prepare(a, b, C, eps, max_iter, tol, 10, None)
    st = _solve(p, method, args.max_iter, args.tol, 10)
    plan, f, g, _, _ = _finish("sinkhorn_cost_grad", p, st, args.tol)
    da, db = K.empty((p.B, p.n), p.dtype), K.empty((p.B, p.m), p.dtype)
    if p.B:
        nt = p.geo.red_threads
        p.launch("ot_center", (p.B,), (nt,), f, da)
        p.launch("ot_center", (p.B,), (nt,), g, db)
    return (_shape_out(plan, p, (p.n, p.m), C), _shape_out(da, p, (p.n,), C),
            _shape_out(db, p, (p.m,), C))


def sinkhorn_divergence(a, b, C_xy, C_xx, C_yy, eps, variant="entropic", max_iter=1000, tol=1e-9):
    r"""Debiased Sinkhorn divergence
    ``S = OT(a, b, C_xy) - OT(a, a, C_xx)/2 - OT(b, b, C_yy)/2`` per problem, each term solved by
    :func:`sinkhorn_log`; ``variant="entropic"`` uses the dual values, ``"linear"`` the linear
    costs and returns ``max(0, S)`` (POT ``empirical_sinkhorn_divergence``)."""
    V.choice(variant, "variant", _ref.VARIANTS)
    K.native(a=a, b=b, C_xy=C_xy, C_xx=C_xx, C_yy=C_yy)
    args = V.sinkhorn_divergence_args(*(K.meta(x) for x in (a, b, C_xy, C_xx, C_yy)), eps,
                                      max_iter, tol, _has_nan, to_numpy=K.to_numpy)
    batch, n, m = args.shape
    dtype = V.dtype_name(C_xy)
    values = []
    for wa, wb, Cs, na, nb in ((a, b, C_xy, n, m), (a, a, C_xx, n, n), (b, b, C_yy, m, m)):
        p = _Problem(wa, wb, Cs, args.eps, dtype, batch, na, nb)
        st = _solve_log(p, args.max_iter, args.tol, 10, None)
        values.append(_value(p, st, variant, "sinkhorn_divergence", args.tol))
    out = K.empty((values[0].shape[0],), dtype)
    nb_ = int(out.shape[0])
    if nb_:
        nt = K.threads(nb_, 256)
        K.launch("ot_div_combine", dtype, (-(-nb_ // nt),), (nt,), 0, values[0], values[1],
                 values[2], out, 1 if variant == "linear" else 0)
    return K.wrap(out.reshape(batch), C_xy)


# --------------------------------------------------------------------------- ground costs


_PAIR_MODES = {"sqeuclidean": 0, "cosine": 1, "half_sqeuclidean": 3}


def pairwise_cost(x, y, kind="sqeuclidean"):
    r"""Ground cost (n, d), (m, d) -> (n, m); (B, n, d), (B, m, d) -> (B, n, m):
    ``"sqeuclidean"`` ``|x_i - y_j|^2`` (explicit differences, tiled kernel), ``"half_sqeuclidean"``
    half of it, ``"cosine"`` ``clip(1 - xh . yh, 0, 2)`` with ``xh = x / max(|x|, 1e-8)``."""
    from .softdtw import _full_lengths, _norms, _pair

    K.native(x=x, y=y)
    shape, _ = V.ot_points(K.meta(x), K.meta(y))
    V.choice(kind, "kind", _ref.KINDS)
    dtype = V.dtype_name(x)
    X3, Y3 = K.lift3(K.device(x)), K.lift3(K.device(y))
    B = int(X3.shape[0])
    lx, ly = _full_lengths(B, shape.n), _full_lengths(B, shape.m)
    nx = ny = None
    if kind == "cosine":
        nx, ny = _norms(X3, lx, dtype), _norms(Y3, ly, dtype)
    out = _pair(X3, Y3, K.empty((B, shape.n, shape.m), dtype), nx, ny, lx, ly, _PAIR_MODES[kind])
    return K.wrap(out.reshape(shape.batch + (shape.n, shape.m)), x)


# --------------------------------------------------------------------------- exact OT (host)


def _host_inputs(a, b, C):
    """Validate sizes on the device arrays, then copy a, b, C to the host (explicitly)."""
    K.native(a=a, b=b, C=C)
    V.emd_size(V.ot_cost(K.meta(C)))
    return tuple(None if x is None else K.to_numpy(x) for x in (a, b, C))


def _to_device(x, dtype: str, like):
    return K.wrap(K.upload(np.asarray(x, dtype=dtype)), like)


def emd(a, b, C, method="auto"):
    r"""Exact OT by an explicit **host solve**: :func:`refimpl.ot.emd` (HiGHS LP, or the
    assignment problem for uniform square problems) on host copies of ``a``, ``b``, ``C``;
    ``EMDResult(plan, cost, f, g)`` copied back to the device in C's dtype. There is no GPU
    exact-OT kernel (the same choice POT makes); ``n*m > 2e6`` raises."""
    ah, bh, Ch = _host_inputs(a, b, C)
    res = _ref.emd(ah, bh, Ch, method=method)
    dtype = V.dtype_name(C)
    return EMDResult(*(_to_device(x, dtype, C) for x in res))


def emd_grad(a, b, C, method="auto"):
    r"""``(dC, da, db) = (P*, f - mean f, g - mean g)`` of the exact cost, by the host solve of
    :func:`emd` (explicit device-to-host and host-to-device copies)."""
    ah, bh, Ch = _host_inputs(a, b, C)
    grads = _ref.emd_grad(ah, bh, Ch, method=method)
    dtype = V.dtype_name(C)
    return tuple(_to_device(x, dtype, C) for x in grads)
