r"""Entropic and exact optimal transport: the float64 NumPy/SciPy reference.

Problem (POT's form; Cuturi 2013, arXiv 1306.0895). Weights ``a`` (..., n), ``b`` (..., m), each
positive and summing to 1 (``None`` = uniform), cost ``C`` (..., n, m), absolute ``eps > 0``
(exactly POT's ``reg``, not scaled by max C). Leading dims of ``C`` are independent problems;
``a``/``b`` are shared ((n,)/(m,)) or per problem (batch + (n,)/(m,))::

    OT_eps(a, b, C) = min_{P >= 0, P 1 = a, P^T 1 = b}  <P, C> + eps * sum_ij P_ij log P_ij

Potentials ``f`` (..., n), ``g`` (..., m) write the plan as ``P_ij = exp((f_i + g_j - C_ij)/eps)``.
POT's log-domain state is ``(log_u, log_v) = (f/eps, g/eps)``; its standard-domain state is
``(u, v) = (exp(f/eps), exp(g/eps))``. The KL form of GeomLoss
(``<P,C> + eps KL(P | a x b)``) equals ``OT_eps + eps (H(a) + H(b))`` with potentials
``f - eps log a``, ``g - eps log b``; the offsets cancel in the Sinkhorn divergence.

Solvers (iteration order and check cadence exactly those of POT 0.9.7
``ot.bregman.sinkhorn_log`` / ``sinkhorn_knopp``, so iteration counts agree):

* :func:`sinkhorn_log` (default) — column update, then row update, in the log domain;
* :func:`sinkhorn` — Sinkhorn–Knopp matrix scaling with POT's underflow guard;
* :func:`emd` — exact OT by linear programming (HiGHS) or, for uniform square problems,
  by the assignment problem.

Derived quantities: :func:`sinkhorn_cost` (entropic dual value or linear cost),
:func:`sinkhorn_cost_grad` (envelope gradient), :func:`sinkhorn_divergence` (debiased,
Feydy et al., arXiv 1810.08278), :func:`pairwise_cost`, :func:`emd_grad`.

Everything computes in float64 (inputs are upcast) and returns float64 NumPy arrays.
``docs/ot.md`` gives the choices (where POT and the papers differ) and the oracles.
"""

from __future__ import annotations

import warnings
from collections import namedtuple

import numpy as np
from scipy import sparse
from scipy.optimize import linear_sum_assignment, linprog
from scipy.spatial.distance import cdist
from scipy.special import logsumexp

from refimpl import _validate as V

__all__ = [
    "SinkhornResult", "EMDResult", "solver_status", "sinkhorn_log", "sinkhorn", "sinkhorn_cost",
    "sinkhorn_cost_grad", "sinkhorn_divergence", "pairwise_cost", "emd", "emd_grad",
]

SinkhornResult = namedtuple("SinkhornResult", "plan f g n_iter err converged status")
SinkhornResult.__doc__ = """Result of :func:`sinkhorn_log` / :func:`sinkhorn`.

plan       P, C's shape: ``exp((f_i + g_j - C_ij)/eps)``; row sums equal ``a`` (last update is rows)
f, g       potentials, batch + (n,) and batch + (m,)
n_iter     number of (g, f) updates the returned iterate results from (Python int);
           POT's ``log["niter"]`` is the last loop index, i.e. ``n_iter - 1`` (``n_iter`` itself
           after a standard-domain numerical error, whose update is discarded)
err        column-marginal error ``||P^T 1 - b||_2`` of the returned iterate (0-d array; the
           max over the problems of a batch)
converged  ``err < tol`` (always False for the fixed-iteration mode ``tol=0``)
status     "converged" | "max_iter" | "numerical_error" (standard domain only)
"""
EMDResult = namedtuple("EMDResult", "plan cost f g")
EMDResult.__doc__ = """Result of :func:`emd`: optimal plan (n, m), cost ``<P, C>`` (0-d) and the
centred dual potentials f (n,), g (m,) with ``<a, f> = <b, g>`` and ``<a, f> + <b, g> = cost``."""

KINDS = ("sqeuclidean", "half_sqeuclidean", "cosine")
COST_KINDS = ("entropic", "linear")
METHODS = ("log", "standard")
VARIANTS = ("entropic", "linear")
EMD_METHODS = ("auto", "linprog", "assignment")
COSINE_NORM_EPS = 1e-8


# --------------------------------------------------------------------------- helpers


def _has_nan(C) -> bool:
    return bool(np.isnan(C).any())


def _has_nonfinite(C) -> bool:
    return not bool(np.isfinite(C).all())


def _host(x, name):
    return None if x is None else V.host_array(x, name)


def _weights(w, size: int, batch: tuple[int, ...]) -> np.ndarray:
    """float64 weights broadcast to batch + (size,) (uniform when None)."""
    if w is None:
        return np.full(batch + (size,), 1.0 / size)
    return np.broadcast_to(np.asarray(w, dtype=np.float64), batch + (size,))


def _prepare(a, b, C, eps, max_iter, tol, check_every, init):
    """Validate a Sinkhorn call and return float64 (a, b, C, f0, g0) and the checked scalars."""
    C = V.host_array(C, "C")
    a, b = _host(a, "a"), _host(b, "b")
    if init is not None and isinstance(init, (tuple, list)) and len(init) == 2:
        init = (V.host_array(init[0], "init[0]"), V.host_array(init[1], "init[1]"))
    args = V.sinkhorn_args(a, b, C, eps, max_iter, tol, check_every, init, has_nan=_has_nan)
    batch, n, m = args.shape
    C64 = np.asarray(C, dtype=np.float64)
    f0 = g0 = None
    if init is not None:
        f0 = np.broadcast_to(np.asarray(init[0], dtype=np.float64), batch + (n,))
        g0 = np.broadcast_to(np.asarray(init[1], dtype=np.float64), batch + (m,))
    return _weights(a, n, batch), _weights(b, m, batch), C64, f0, g0, args


def _column_error(P: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``max over problems of ||sum_i P_ij - b_j||_2`` as a 0-d float64 array."""
    per_problem = np.linalg.norm(P.sum(axis=-2) - b, axis=-1)
    return np.asarray(np.max(per_problem), dtype=np.float64)


def solver_status(name: str, err: float, tol: float, n_iter: int, numerical_error: bool,
                  it_error=None) -> tuple[bool, str]:
    """``(converged, status)`` of a Sinkhorn run, issuing the warnings every backend issues:
    a numerical error (standard domain) always warns; not converging warns only when
    ``tol > 0`` (``tol=0`` is the fixed-iteration mode)."""
    if numerical_error:
        warnings.warn(f"{name}: numerical error at iteration {it_error} (a column of K^T u "
                      f"underflowed to 0 or a scaling became non-finite); returning the previous "
                      f"iterate. Use sinkhorn_log or a larger eps.", RuntimeWarning, stacklevel=4)
        return False, "numerical_error"
    if err < tol:
        return True, "converged"
    if tol > 0:
        warnings.warn(f"{name} did not converge in {n_iter} iterations (err={float(err):.3e}, "
                      f"tol={tol:.3e}); increase max_iter or eps", RuntimeWarning, stacklevel=4)
    return False, "max_iter"


def _finish(name, plan, f, g, n_iter, err, tol, numerical_error, it_error=None):
    converged, status = solver_status(name, float(err), tol, n_iter, numerical_error, it_error)
    return SinkhornResult(plan, f, g, int(n_iter), err, converged, status)


# --------------------------------------------------------------------------- Sinkhorn solvers


def _sinkhorn_log(a, b, C, eps, max_iter, tol, check_every, f0, name="sinkhorn_log"):
    # The state is POT's (log_u, log_v) = (f/eps, g/eps); Mr = -C/eps.
    Mr = -C / eps
    log_u = np.zeros(a.shape) if f0 is None else f0 / eps
    log_a, log_b = np.log(a), np.log(b)
    err = None
    n_iter = 0
    for it in range(max_iter):
        # g_j = eps log b_j - eps LSE_i((f_i - C_ij)/eps)   (columns first)
        log_v = log_b - logsumexp(Mr + log_u[..., :, None], axis=-2)
        # f_i = eps log a_i - eps LSE_j((g_j - C_ij)/eps)   (then rows: row sums now exact)
        log_u = log_a - logsumexp(Mr + log_v[..., None, :], axis=-1)
        n_iter = it + 1
        if it % check_every == 0:
            err = _column_error(np.exp(Mr + log_u[..., :, None] + log_v[..., None, :]), b)
            if err < tol:
                break
    plan = np.exp(Mr + log_u[..., :, None] + log_v[..., None, :])
    if (n_iter - 1) % check_every != 0:        # the returned iterate was not a check iterate
        err = _column_error(plan, b)
    return _finish(name, plan, eps * log_u, eps * log_v, n_iter, err, tol, False)


def _sinkhorn_standard(a, b, C, eps, max_iter, tol, check_every, f0, g0, name="sinkhorn"):
    K = np.exp(-C / eps)
    if f0 is None:
        u = np.full(a.shape, 1.0 / a.shape[-1])
        v = np.full(b.shape, 1.0 / b.shape[-1])
    else:
        u, v = np.exp(f0 / eps), np.exp(g0 / eps)
    err = None
    n_iter = 0
    numerical_error = False
    it_error = None
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        for it in range(max_iter):
            u_prev, v_prev = u, v
            KTu = np.einsum("...ij,...i->...j", K, u)
            v = b / KTu                                        # v = b / (K^T u)
            u = a / np.einsum("...ij,...j->...i", K, v)        # u = a / (K v)
            if (np.any(KTu == 0) or not np.all(np.isfinite(u))
                    or not np.all(np.isfinite(v))):
                # POT's guard: machine precision reached; revert to the previous iterate and stop
                u, v = u_prev, v_prev
                numerical_error, it_error = True, it
                break
            n_iter = it + 1
            if it % check_every == 0:
                err = _column_error(u[..., :, None] * K * v[..., None, :], b)
                if err < tol:
                    break
        plan = u[..., :, None] * K * v[..., None, :]
        if numerical_error or (n_iter - 1) % check_every != 0:
            err = _column_error(plan, b)
        f, g = eps * np.log(u), eps * np.log(v)
    return _finish(name, plan, f, g, n_iter, err, tol, numerical_error, it_error)


def sinkhorn_log(a, b, C, eps, max_iter=1000, tol=1e-9, check_every=10, init=None):
    r"""Log-domain Sinkhorn (the default solver), POT ``sinkhorn_log`` order and cadence.

    For ``it = 0, 1, ..., max_iter - 1``::

        g_j <- eps log b_j - eps LSE_i((f_i - C_ij) / eps)      # columns first
        f_i <- eps log a_i - eps LSE_j((g_j - C_ij) / eps)      # then rows
        if it % check_every == 0:
            err = max over problems || sum_i P_ij - b_j ||_2,  P_ij = exp((f_i + g_j - C_ij)/eps)
            stop if err < tol

    LSE is max-shifted (``scipy.special.logsumexp``); the iteration runs on
    ``(f/eps, g/eps)`` = POT's ``(log_u, log_v)``. ``init=(f0, g0)`` warm-starts
    (POT ``warmstart=(f0/eps, g0/eps)``); only ``f0`` matters because ``g`` is updated first.
    ``tol=0`` runs exactly ``max_iter`` updates without a warning (fixed-iteration mode);
    with ``tol > 0`` non-convergence warns (``RuntimeWarning``) and returns the last iterate.
    +inf costs forbid transport. Returns :class:`SinkhornResult`.
    """
    a, b, C, f0, _, args = _prepare(a, b, C, eps, max_iter, tol, check_every, init)
    return _sinkhorn_log(a, b, C, args.eps, args.max_iter, args.tol, args.check_every, f0)


def sinkhorn(a, b, C, eps, max_iter=1000, tol=1e-9, check_every=10, init=None):
    r"""Standard-domain Sinkhorn–Knopp, POT ``sinkhorn_knopp`` order, cadence and guard.

    ``K = exp(-C/eps)``, ``u = 1/n``, ``v = 1/m`` (or ``exp(f0/eps)``, ``exp(g0/eps)``), then::

        v <- b / (K^T u);   u <- a / (K v)
        if any (K^T u) == 0 or u, v not finite: revert to the previous (u, v), stop,
            warn, status = "numerical_error"
        if it % check_every == 0: err = max || (u K v)^T 1 - b ||_2, stop if err < tol

    Returns ``plan = diag(u) K diag(v)``, ``f = eps log u``, ``g = eps log v``. Never NaN: the
    guard returns the last finite iterate. Use only when ``max(C)/eps`` is moderate
    (< ~700 in float64); :func:`sinkhorn_log` has no such limit.
    """
    a, b, C, f0, g0, args = _prepare(a, b, C, eps, max_iter, tol, check_every, init)
    return _sinkhorn_standard(a, b, C, args.eps, args.max_iter, args.tol, args.check_every, f0, g0)


def _solve(method, a, b, C, eps, max_iter, tol, name):
    if method == "log":
        return _sinkhorn_log(a, b, C, eps, max_iter, tol, 10, None, name=name)
    return _sinkhorn_standard(a, b, C, eps, max_iter, tol, 10, None, None, name=name)


def _cost_value(kind, res, a, b, C):
    if kind == "entropic":
        return np.asarray(np.sum(a * res.f, axis=-1) + np.sum(b * res.g, axis=-1))
    PC = np.multiply(res.plan, C, out=np.zeros(C.shape), where=res.plan > 0)  # 0 * (+inf) -> 0
    return np.asarray(np.sum(PC, axis=(-2, -1)))


def sinkhorn_cost(a, b, C, eps, kind="entropic", method="log", max_iter=1000, tol=1e-9):
    r"""Transport cost of the Sinkhorn solution, one value per problem (0-d for one problem).

    ``kind="entropic"`` (default): the dual value ``<a, f> + <b, g>`` (what GeomLoss reports in
    POT's form). After the final row update ``sum P = 1``, so this is the dual objective of the
    iterate, and at convergence it equals ``<P, C> + eps sum P log P``.
    ``kind="linear"``: ``<P, C>`` (what POT ``sinkhorn2`` returns; no entropy term).
    ``method`` is ``"log"`` (:func:`sinkhorn_log`) or ``"standard"`` (:func:`sinkhorn`);
    convergence is checked every 10 iterations.
    """
    V.choice(kind, "kind", COST_KINDS)
    V.choice(method, "method", METHODS)
    a, b, C, _, _, args = _prepare(a, b, C, eps, max_iter, tol, 10, None)
    res = _solve(method, a, b, C, args.eps, args.max_iter, args.tol, "sinkhorn_cost")
    return _cost_value(kind, res, a, b, C)


def sinkhorn_cost_grad(a, b, C, eps, method="log", max_iter=1000, tol=1e-9):
    r"""Envelope gradient of the entropic cost ``<a, f> + <b, g>``: ``(dC, da, db)``.

    ``dOT/dC = P``, ``dOT/da = f - mean(f)``, ``dOT/db = g - mean(g)`` (unweighted means over
    the last axis: the tangent-space convention POT uses for ``emd2``; only mass-preserving
    directions of ``a``, ``b`` are meaningful). Exact at convergence; for a truncated
    iteration it is the gradient of the converged problem evaluated at the iterate.
    """
    V.choice(method, "method", METHODS)
    a, b, C, _, _, args = _prepare(a, b, C, eps, max_iter, tol, 10, None)
    res = _solve(method, a, b, C, args.eps, args.max_iter, args.tol, "sinkhorn_cost_grad")
    da = res.f - res.f.mean(axis=-1, keepdims=True)
    db = res.g - res.g.mean(axis=-1, keepdims=True)
    return res.plan, da, db


def sinkhorn_divergence(a, b, C_xy, C_xx, C_yy, eps, variant="entropic", max_iter=1000, tol=1e-9):
    r"""Debiased Sinkhorn divergence (Feydy et al., arXiv 1810.08278), one value per problem.

    ``variant="entropic"`` (default)::

        S = OT_eps(a, b, C_xy) - 0.5 OT_eps(a, a, C_xx) - 0.5 OT_eps(b, b, C_yy)

    with the entropic value ``<a, f> + <b, g>`` of :func:`sinkhorn_cost` (POT form; the KL form
    gives the same S). ``variant="linear"`` reproduces POT
    ``ot.bregman.empirical_sinkhorn_divergence``: the three terms are linear costs ``<P, C>`` and
    the result is ``max(0, S)``. All three problems use :func:`sinkhorn_log` (POT's
    ``sinkhorn2`` defaults to the standard domain; both agree at convergence).
    ``C_xx`` (..., n, n) and ``C_yy`` (..., m, m) share ``C_xy``'s batch.
    """
    V.choice(variant, "variant", VARIANTS)
    C_xy, C_xx, C_yy = (V.host_array(x, nm) for x, nm in ((C_xy, "C_xy"), (C_xx, "C_xx"),
                                                          (C_yy, "C_yy")))
    a, b = _host(a, "a"), _host(b, "b")
    args = V.sinkhorn_divergence_args(a, b, C_xy, C_xx, C_yy, eps, max_iter, tol, _has_nan)
    batch, n, m = args.shape
    a64, b64 = _weights(a, n, batch), _weights(b, m, batch)

    def value(p, q, Cs):
        Cs = np.asarray(Cs, dtype=np.float64)
        res = _sinkhorn_log(p, q, Cs, args.eps, args.max_iter, args.tol, 10, None,
                            name="sinkhorn_divergence")
        return _cost_value(variant, res, p, q, Cs)

    S = value(a64, b64, C_xy) - 0.5 * value(a64, a64, C_xx) - 0.5 * value(b64, b64, C_yy)
    if variant == "linear":
        S = np.maximum(0.0, S)
    return np.asarray(S)


# --------------------------------------------------------------------------- ground costs


def pairwise_cost(x, y, kind="sqeuclidean"):
    r"""Ground cost between point clouds: (n, d), (m, d) -> (n, m); (B, n, d), (B, m, d) -> (B, n, m).

    * ``"sqeuclidean"``: ``C_ij = ||x_i - y_j||^2`` (POT ``ot.dist`` default), formed from explicit
      differences (``scipy.spatial.distance.cdist``), no ``|x|^2 + |y|^2 - 2 x.y`` cancellation;
    * ``"half_sqeuclidean"``: ``||x_i - y_j||^2 / 2`` (GeomLoss ``p=2``);
    * ``"cosine"``: ``xh = x / max(||x||, 1e-8)``, ``C = clip(1 - xh . yh, 0, 2)`` — the same
      convention as ``refimpl.softdtw`` (reconstructed; the clip acts at rounding level only).
    """
    x, y = V.host_array(x, "x"), V.host_array(y, "y")
    shape, _ = V.ot_points(x, y)
    V.choice(kind, "kind", KINDS)
    x64 = np.asarray(x, dtype=np.float64).reshape((-1,) + x.shape[-2:])
    y64 = np.asarray(y, dtype=np.float64).reshape((-1,) + y.shape[-2:])
    if kind == "cosine":
        xh = x64 / np.maximum(np.linalg.norm(x64, axis=-1, keepdims=True), COSINE_NORM_EPS)
        yh = y64 / np.maximum(np.linalg.norm(y64, axis=-1, keepdims=True), COSINE_NORM_EPS)
        C = np.clip(1.0 - xh @ np.swapaxes(yh, -1, -2), 0.0, 2.0)
    else:
        C = np.stack([cdist(xb, yb, "sqeuclidean") for xb, yb in zip(x64, y64)]) \
            if len(x64) else np.zeros((0, shape.n, shape.m))
        if kind == "half_sqeuclidean":
            C = 0.5 * C
    return C.reshape(shape.batch + (shape.n, shape.m))


# --------------------------------------------------------------------------- exact OT


def _center_dual(f0, g0, a, b):
    """POT ``center_ot_dual``: ``f = f0 + c``, ``g = g0 - c``, ``c = (<b,g0> - <a,f0>)/(sum a + sum b)``."""
    c = (b @ g0 - a @ f0) / (a.sum() + b.sum())
    return f0 + c, g0 - c


def _emd_linprog(a, b, C):
    """``min <P, C>`` over the transport polytope with HiGHS; returns (P, f0, g0)."""
    n, m = C.shape
    # vec(P) row-major: variable k = i*m + j is P_ij; it appears in constraint i
    # (row sum: sum_j P_ij = a_i) and in constraint n + j (column sum: sum_i P_ij = b_j)
    k = np.arange(n * m)
    A_eq = sparse.csr_matrix((np.ones(2 * n * m), (np.concatenate([k // m, n + k % m]),
                                                   np.concatenate([k, k]))), shape=(n + m, n * m))
    res = linprog(C.ravel(), A_eq=A_eq, b_eq=np.concatenate([a, b]), bounds=(0, None),
                  method="highs")
    if res.status != 0:
        raise RuntimeError(f"emd: HiGHS did not solve the transport LP: {res.message}")
    P = np.maximum(res.x.reshape(n, m), 0.0)
    duals = res.eqlin.marginals                                 # d objective / d b_eq
    return P, duals[:n].copy(), duals[n:].copy()


def _assignment_duals(C, s):
    """Optimal duals for the permutation ``s`` (row k -> column s[k]) of a square problem.

    Complementary slackness fixes ``g_{s(k)} = C_{k,s(k)} - f_k``; dual feasibility
    ``f_i + g_{s(k)} <= C_{i,s(k)}`` becomes the difference constraints
    ``f_i <= f_k + W_ki`` with ``W_ki = C_{i,s(k)} - C_{k,s(k)}``, which have no negative cycle
    because ``s`` is optimal. ``f`` = shortest-path distances from a virtual source
    (Bellman–Ford, at most n sweeps of an (n, n) relaxation).
    """
    n = C.shape[0]
    matched = C[np.arange(n), s]
    W = C[:, s].T - matched[:, None]
    f = np.zeros(n)
    for _ in range(n):
        f_new = np.min(f[:, None] + W, axis=0)
        if np.array_equal(f_new, f):
            break
        f = f_new
    g = np.empty(n)
    g[s] = matched - f
    return f, g


def emd(a, b, C, method="auto"):
    r"""Exact optimal transport ``min <P, C>`` s.t. ``P >= 0, P 1 = a, P^T 1 = b`` (one problem).

    * ``"linprog"``: ``scipy.optimize.linprog(C.ravel(), A_eq, b_eq=[a; b], bounds=(0, None),
      method="highs")`` with a sparse CSR ``A_eq`` (n row-sum rows, m column-sum rows, one
      redundant); ``f0, g0`` = ``res.eqlin.marginals[:n], [n:]``.
    * ``"assignment"``: n == m and uniform weights: ``s = linear_sum_assignment(C)``,
      ``P = I[s] / n``; duals from ``s`` by shortest paths (:func:`_assignment_duals`), no LP.
    * ``"auto"``: assignment when applicable, else linprog.

    ``b`` is rescaled to ``sum a`` (as POT ``emd``) after the 1e-8 sum check. Duals are centred
    as POT ``center_ot_dual``: ``f = f0 + c``, ``g = g0 - c``,
    ``c = (<b, g0> - <a, f0>) / (sum a + sum b)`` so that ``<a, f> = <b, g>``. When the optimum is
    degenerate the duals (and, with ties, the plan) are one optimal choice among several.
    ``n*m > 2e6`` raises: use :func:`sinkhorn_log` with a small eps.
    """
    C = V.host_array(C, "C")
    a, b = _host(a, "a"), _host(b, "b")
    shape = V.emd_args(a, b, C, _has_nonfinite)
    V.choice(method, "method", EMD_METHODS)
    n, m = shape.n, shape.m
    C64 = np.asarray(C, dtype=np.float64)
    a64 = np.array(_weights(a, n, ()))
    b64 = np.array(_weights(b, m, ()))
    b64 = b64 * (a64.sum() / b64.sum())
    uniform_square = n == m and np.all(a64 == a64[0]) and np.all(b64 == b64[0])
    if method == "assignment" and not uniform_square:
        raise ValueError(f"method='assignment' needs a square problem with uniform a and b "
                         f"(got {n}x{m}); use method='linprog' or 'auto'")
    if method == "auto":
        method = "assignment" if uniform_square else "linprog"
    if method == "assignment":
        rows, s = linear_sum_assignment(C64)
        P = np.zeros((n, m))
        P[rows, s] = a64
        f0, g0 = _assignment_duals(C64, s)
    else:
        P, f0, g0 = _emd_linprog(a64, b64, C64)
    f, g = _center_dual(f0, g0, a64, b64)
    return EMDResult(P, np.asarray(np.sum(P * C64)), f, g)


def emd_grad(a, b, C, method="auto"):
    r"""Gradients of the exact cost (envelope theorem; the gradients POT attaches in ``emd2``).

    ``(dC, da, db) = (P*, f - mean f, g - mean g)`` with the centred duals of :func:`emd`.
    A subgradient when the optimal plan or duals are not unique.
    """
    res = emd(a, b, C, method=method)
    return res.plan, res.f - res.f.mean(), res.g - res.g.mean()
