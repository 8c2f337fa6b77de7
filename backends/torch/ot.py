r"""Entropic and exact optimal transport on torch tensors (ot.md sec. 2-7).

Same functions, signatures and results as :mod:`refimpl.ot` (``SinkhornResult`` and
``EMDResult`` are the reference's namedtuples); inputs are torch tensors on any device,
computed in C's dtype on C's device. Leading dims of C are a batch of independent problems.

Log-domain Sinkhorn (the default solver), POT ``sinkhorn_log`` order and cadence::

    for it = 0, 1, ..., max_iter - 1:
        g_j <- eps log b_j - eps LSE_i((f_i - C_ij)/eps)        # columns first
        f_i <- eps log a_i - eps LSE_j((g_j - C_ij)/eps)        # then rows
        if it % check_every == 0: err = max over problems ||sum_i P_ij - b_j||_2, stop if < tol

with ``P_ij = exp((f_i + g_j - C_ij)/eps)``. The state is ``(f/eps, g/eps)`` only
(``torch.logsumexp``, max-shifted); neither ``K = exp(-C/eps)`` nor ``C/eps`` is stored. A
convergence check is one 0-d device-to-host read every ``check_every`` iterations; ``tol=0``
(fixed iteration count) reads nothing inside the loop.

Standard-domain Sinkhorn-Knopp keeps POT's underflow guard (revert to the previous iterate
and stop) without a read per iteration: the failure flag is accumulated on the device, the
last good iterate is kept with ``torch.where``, and the flag is read with the convergence
check (every iteration only while autograd records a graph, so that no non-finite value
ever enters it).

Gradients: :func:`sinkhorn_cost` is differentiable by autograd through the unrolled
iterations (the exact gradient of the truncated iteration, memory O(iterations));
:func:`sinkhorn_cost_grad` returns the envelope gradients ``(P, f - mean f, g - mean g)``.

Exact OT (:func:`emd`, :func:`emd_grad`) has no device algorithm: it is an explicit host
solve — the inputs are copied to the host, :func:`refimpl.ot.emd` solves the LP in float64,
and the results are returned as tensors of C's dtype on C's device (``host_solver=True`` in
the registry).
"""

from __future__ import annotations


import torch

from backends.torch import native as _native
from backends.torch import to_numpy
from refimpl import _validate as V
from refimpl import ot as _ref
from refimpl.ot import EMDResult, SinkhornResult, solver_status

__all__ = [
    "SinkhornResult", "EMDResult", "sinkhorn_log", "sinkhorn", "sinkhorn_cost",
    "sinkhorn_cost_grad", "sinkhorn_divergence", "pairwise_cost", "emd", "emd_grad",
]

COSINE_NORM_EPS = _ref.COSINE_NORM_EPS



def _has_nan(C) -> bool:
    return bool(torch.isnan(C).any())


def _has_nonfinite(C) -> bool:
    return not bool(torch.isfinite(C).all())


def _weights(w, size: int, batch: tuple[int, ...], C: torch.Tensor) -> torch.Tensor:
    """Weights broadcast to batch + (size,) in C's dtype (uniform when None)."""
    if w is None:
        return torch.full(batch + (size,), 1.0 / size, dtype=C.dtype, device=C.device)
    return w.to(C.dtype).expand(batch + (size,))


def _prepare(a, b, C, eps, max_iter, tol, check_every, init):
    """Validate a Sinkhorn call; return (a, b, f0, g0) broadcast to the batch, and the args."""
    _native(a=a, b=b, C=C)
    if isinstance(init, (tuple, list)) and len(init) == 2:
        _native(**{"init[0]": init[0], "init[1]": init[1]})
    args = V.sinkhorn_args(a, b, C, eps, max_iter, tol, check_every, init, has_nan=_has_nan,
                           to_numpy=to_numpy)
    batch, n, m = args.shape
    f0 = g0 = None
    if init is not None:
        f0 = init[0].to(C.dtype).expand(batch + (n,))
        g0 = init[1].to(C.dtype).expand(batch + (m,))
    return _weights(a, n, batch, C), _weights(b, m, batch, C), f0, g0, args


def _column_error(P: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``max over problems of ||sum_i P_ij - b_j||_2`` as a 0-d tensor (no host read)."""
    return torch.linalg.vector_norm(P.sum(dim=-2) - b, dim=-1).amax()


def _finish(name, plan, f, g, n_iter, err, tol, numerical_error, it_error=None):
    """The reference's status and warnings (one 0-d read of ``err``)."""
    converged, status = solver_status(name, float(err.detach()), tol, n_iter, numerical_error,
                                      it_error)
    return SinkhornResult(plan, f, g, int(n_iter), err, converged, status)


# --------------------------------------------------------------------------- Sinkhorn solvers


def _log_plan(log_u: torch.Tensor, log_v: torch.Tensor, C: torch.Tensor, eps: float):
    """``log P_ij = log_u_i + log_v_j - C_ij/eps`` in one fused op (C/eps is never stored)."""
    return torch.sub(log_u.unsqueeze(-1) + log_v.unsqueeze(-2), C, alpha=1.0 / eps)


def _sinkhorn_log(a, b, C, eps, max_iter, tol, check_every, f0, name="sinkhorn_log"):
    """Log-domain iterations on POT's state ``(log_u, log_v) = (f/eps, g/eps)``; each
    half-iteration is one fused ``log_w - C/eps`` and one ``logsumexp``. Differentiable by
    autograd (every step is a torch op)."""
    log_u = torch.zeros_like(a) if f0 is None else f0 / eps
    log_a, log_b = torch.log(a), torch.log(b)
    n_iter = 0
    for it in range(max_iter):
        # g_j = eps log b_j - eps LSE_i((f_i - C_ij)/eps): columns first
        log_v = log_b - torch.logsumexp(torch.sub(log_u.unsqueeze(-1), C, alpha=1.0 / eps), dim=-2)
        # f_i = eps log a_i - eps LSE_j((g_j - C_ij)/eps): then rows
        log_u = log_a - torch.logsumexp(torch.sub(log_v.unsqueeze(-2), C, alpha=1.0 / eps), dim=-1)
        n_iter = it + 1
        if tol > 0 and it % check_every == 0:
            err = _column_error(torch.exp(_log_plan(log_u, log_v, C, eps)), b)
            if err.item() < tol:   # the one host read of a check
                break
    plan = torch.exp(_log_plan(log_u, log_v, C, eps))
    return _finish(name, plan, eps * log_u, eps * log_v, n_iter, _column_error(plan, b), tol,
                   False)


def _sinkhorn_standard(a, b, C, eps, max_iter, tol, check_every, f0, g0, name="sinkhorn"):
    """Sinkhorn-Knopp ``v <- b / (K^T u)``, ``u <- a / (K v)`` with POT's guard: if any
    ``K^T u == 0`` or u, v is not finite, the previous iterate is returned (status
    ``numerical_error``). The guard's flag lives on the device and is read at the checks."""
    K = torch.exp(-C / eps)
    if f0 is None:
        u = torch.full_like(a, 1.0 / a.shape[-1])
        v = torch.full_like(b, 1.0 / b.shape[-1])
    else:
        u, v = torch.exp(f0 / eps), torch.exp(g0 / eps)
    recording = torch.is_grad_enabled() and any(t.requires_grad for t in (a, b, C))
    failed = torch.zeros((), dtype=torch.bool, device=C.device)
    n_good = torch.zeros((), dtype=torch.int64, device=C.device)   # updates kept so far
    for it in range(max_iter):
        KTu = (u.unsqueeze(-2) @ K).squeeze(-2)
        v_new = b / KTu
        u_new = a / (K @ v_new.unsqueeze(-1)).squeeze(-1)
        failed = failed | (KTu == 0).any() | ~torch.isfinite(u_new).all() \
            | ~torch.isfinite(v_new).all()
        if recording and bool(failed):     # stop before a non-finite value enters the graph
            break
        u, v = torch.where(failed, u, u_new), torch.where(failed, v, v_new)
        n_good = torch.where(failed, n_good, it + 1)
        if it % check_every == 0:
            err = _column_error(u.unsqueeze(-1) * K * v.unsqueeze(-2), b) if tol > 0 \
                else torch.zeros((), dtype=C.dtype, device=C.device)
            flag = torch.where(failed, -1.0, err).item()   # one read: -1 = numerical error
            if flag < 0 or flag < tol:
                break
    n_iter, numerical_error = int(n_good), bool(failed)
    plan = u.unsqueeze(-1) * K * v.unsqueeze(-2)
    return _finish(name, plan, eps * torch.log(u), eps * torch.log(v), n_iter,
                   _column_error(plan, b), tol, numerical_error, n_iter)


def sinkhorn_log(a, b, C, eps, max_iter=1000, tol=1e-9, check_every=10, init=None):
    r"""Log-domain Sinkhorn (module docstring); returns :class:`SinkhornResult`
    ``(plan, f, g, n_iter, err, converged, status)`` with tensors on C's device, ``n_iter`` a
    Python int and ``err`` a 0-d tensor. ``init=(f0, g0)`` warm-starts (only f0 matters);
    ``tol=0`` runs exactly ``max_iter`` updates; non-convergence with ``tol > 0`` warns."""
    a, b, f0, _, args = _prepare(a, b, C, eps, max_iter, tol, check_every, init)
    return _sinkhorn_log(a, b, C, args.eps, args.max_iter, args.tol, args.check_every, f0)


def sinkhorn(a, b, C, eps, max_iter=1000, tol=1e-9, check_every=10, init=None):
    r"""Standard-domain Sinkhorn-Knopp, ``K = exp(-C/eps)``, ``u = 1/n``, ``v = 1/m`` (or
    ``exp(f0/eps)``, ``exp(g0/eps)``); returns ``plan = diag(u) K diag(v)``, ``f = eps log u``,
    ``g = eps log v``. Never NaN: the guard returns the last finite iterate
    (``status="numerical_error"``). Use only when ``max(C)/eps`` is moderate."""
    a, b, f0, g0, args = _prepare(a, b, C, eps, max_iter, tol, check_every, init)
    return _sinkhorn_standard(a, b, C, args.eps, args.max_iter, args.tol, args.check_every,
                              f0, g0)


def _solve(method, a, b, C, eps, max_iter, tol, name):
    if method == "log":
        return _sinkhorn_log(a, b, C, eps, max_iter, tol, 10, None, name=name)
    return _sinkhorn_standard(a, b, C, eps, max_iter, tol, 10, None, None, name=name)


def _cost_value(kind, res, a, b, C):
    """Entropic: ``<a, f> + <b, g>``; linear: ``<P, C>`` with ``0 * (+inf cost) = 0``."""
    if kind == "entropic":
        return (a * res.f).sum(dim=-1) + (b * res.g).sum(dim=-1)
    return (res.plan * torch.where(res.plan > 0, C, 0.0)).sum(dim=(-2, -1))


def sinkhorn_cost(a, b, C, eps, kind="entropic", method="log", max_iter=1000, tol=1e-9):
    r"""Transport cost of the Sinkhorn solution per problem (0-d for one problem).

    ``kind="entropic"``: ``<a, f> + <b, g>``; ``kind="linear"``: ``<P, C>``. ``method`` is
    ``"log"`` or ``"standard"``; checks every 10 iterations. Differentiable by autograd
    w.r.t. a, b and C through the unrolled iterations (exact for the truncated iteration;
    at convergence it equals the envelope gradient of :func:`sinkhorn_cost_grad`)."""
    V.choice(kind, "kind", _ref.COST_KINDS)
    V.choice(method, "method", _ref.METHODS)
    a_, b_, _, _, args = _prepare(a, b, C, eps, max_iter, tol, 10, None)
    res = _solve(method, a_, b_, C, args.eps, args.max_iter, args.tol, "sinkhorn_cost")
    return _cost_value(kind, res, a_, b_, C)


def sinkhorn_cost_grad(a, b, C, eps, method="log", max_iter=1000, tol=1e-9):
    r"""Envelope gradient of the entropic cost: ``(dC, da, db) = (P, f - mean f, g - mean g)``
    (unweighted means over the last axis). No autograd graph is built."""
    V.choice(method, "method", _ref.METHODS)
    with torch.no_grad():
        a_, b_, _, _, args = _prepare(a, b, C, eps, max_iter, tol, 10, None)
        res = _solve(method, a_, b_, C, args.eps, args.max_iter, args.tol, "sinkhorn_cost_grad")
        da = res.f - res.f.mean(dim=-1, keepdim=True)
        db = res.g - res.g.mean(dim=-1, keepdim=True)
    return res.plan, da, db


def sinkhorn_divergence(a, b, C_xy, C_xx, C_yy, eps, variant="entropic", max_iter=1000, tol=1e-9):
    r"""Debiased Sinkhorn divergence per problem (Feydy et al., arXiv 1810.08278)::

        S = OT_eps(a, b, C_xy) - 0.5 OT_eps(a, a, C_xx) - 0.5 OT_eps(b, b, C_yy)

    with the entropic value (``variant="entropic"``), or POT
    ``empirical_sinkhorn_divergence``'s ``max(0, S)`` of linear costs (``variant="linear"``).
    All three problems use the log-domain solver; differentiable by unrolling."""
    V.choice(variant, "variant", _ref.VARIANTS)
    _native(a=a, b=b, C_xy=C_xy, C_xx=C_xx, C_yy=C_yy)
    args = V.sinkhorn_divergence_args(a, b, C_xy, C_xx, C_yy, eps, max_iter, tol, _has_nan,
                                      to_numpy=to_numpy)
    batch, n, m = args.shape
    a_, b_ = _weights(a, n, batch, C_xy), _weights(b, m, batch, C_xy)

    def value(p, q, Cs):
        res = _sinkhorn_log(p, q, Cs, args.eps, args.max_iter, args.tol, 10, None,
                            name="sinkhorn_divergence")
        return _cost_value(variant, res, p, q, Cs)

    S = value(a_, b_, C_xy) - 0.5 * value(a_, a_, C_xx) - 0.5 * value(b_, b_, C_yy)
    return S.clamp_min(0.0) if variant == "linear" else S


# --------------------------------------------------------------------------- ground costs


def pairwise_cost(x, y, kind="sqeuclidean"):
    r"""Ground cost: (n, d), (m, d) -> (n, m); (B, n, d), (B, m, d) -> (B, n, m), by GEMM.

    ``"sqeuclidean"``: ``max(|x_i|^2 + |y_j|^2 - 2 x_i.y_j, 0)``; ``"half_sqeuclidean"``: half
    of it; ``"cosine"``: ``clip(1 - xh.yh, 0, 2)``, ``xh = x / max(|x|, 1e-8)``. Plain torch
    ops, differentiable by autograd."""
    _native(x=x, y=y)
    V.ot_points(x, y)
    V.choice(kind, "kind", _ref.KINDS)
    if kind == "cosine":
        xh = x / torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp_min(COSINE_NORM_EPS)
        yh = y / torch.linalg.vector_norm(y, dim=-1, keepdim=True).clamp_min(COSINE_NORM_EPS)
        return (1.0 - xh @ yh.transpose(-1, -2)).clamp(0.0, 2.0)
    C = ((x * x).sum(-1).unsqueeze(-1) + (y * y).sum(-1).unsqueeze(-2)
         - 2.0 * (x @ y.transpose(-1, -2))).clamp_min(0.0)
    return 0.5 * C if kind == "half_sqeuclidean" else C


# --------------------------------------------------------------------------- exact OT


def _host_emd(a, b, C, method):
    """Validate, then solve on the host with :func:`refimpl.ot.emd` (float64 LP/assignment)."""
    _native(a=a, b=b, C=C)
    V.emd_args(a, b, C, _has_nonfinite, to_numpy=to_numpy)
    V.choice(method, "method", _ref.EMD_METHODS)
    host = [None if w is None else to_numpy(w) for w in (a, b)]
    return _ref.emd(host[0], host[1], to_numpy(C), method=method)


def _to_caller(x, C: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(x, dtype=C.dtype, device=C.device)


def emd(a, b, C, method="auto"):
    r"""Exact OT ``min <P, C>`` over the transport polytope (one problem) — an explicit host
    solve: inputs are copied to the host and :func:`refimpl.ot.emd` runs there (HiGHS LP, or
    the assignment problem for uniform square problems); returns :class:`EMDResult`
    ``(plan, cost, f, g)`` with centred duals, as tensors of C's dtype on C's device."""
    res = _host_emd(a, b, C, method)
    return EMDResult(*(_to_caller(x, C) for x in res))


def emd_grad(a, b, C, method="auto"):
    r"""``(dC, da, db) = (P*, f - mean f, g - mean g)`` of the exact cost (the gradients POT
    attaches in ``emd2``) — an explicit host solve like :func:`emd`."""
    res = _host_emd(a, b, C, method)
    return (_to_caller(res.plan, C), _to_caller(res.f - res.f.mean(), C),
            _to_caller(res.g - res.g.mean(), C))
