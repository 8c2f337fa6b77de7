r"""Inf-SSM observability-subspace regulariser on torch tensors (inf_ssm.md sec. 1-4).

Same functions, signatures and results as :mod:`refimpl.inf_ssm` (sec. 6; except
``stein_cross_gram_dense``, a reference-only oracle). Paper: Lee et al., "Exemplar-Free
Continual Learning for State Space Models", arXiv 2505.18604; official code
``isaacNingLee/Inf-SSM`` (``vim/cl_methods/inf_ssm.py``). Inputs are torch tensors on any
device, float32 or float64 (one dtype per call); results are in that dtype on that device.
Leading dims are batches of independent systems, so the 48 scans of a Vim step go through
one call with leading dims ``(S, m)``.

Structure:

- Gram matrices (``stein_gram_diag``, ``stein_cross_gram_diag``): the diagonal closed form
  ``G12[i, j] = (C1^T C2)[i, j] / (1 - a_i b_j)`` (vectors: ``c_i e_j / (1 - a_i b_j)``),
  broadcast over the leading dims; plain torch ops, differentiable by autograd.
- ``infssm_distance(variant="code")`` is one custom ``torch.autograd.Function``
  (:class:`_CodeDistance`) over the flattened systems. The value is the sec. 2 quantity
  ``d = 1 - N / (S1 S2)`` (``N = sum_ij c_i^2 e_j^2 / D_ij^2``, ``D_ij = 1 - a_i b_j``,
  ``S1 = sum_i c_i^2 / (1 - a_i^2)``, ``S2`` likewise), evaluated without its cancellation:
  by ``(1 - a^2)(1 - b^2) = (1 - ab)^2 - (a - b)^2``, ``S1 S2 - N = sum_ij w_ij rho_ij^2``, so::

      d = sum_ij w_ij rho_ij^2 / W,   w_ij = u_i v_j,   u_i = c_i^2 / (1 - a_i^2),
      v_j = e_j^2 / (1 - b_j^2),      W = S1 S2 = sum_ij w_ij,   rho_ij = (a_i - b_j) / D_ij

  (a weighted mean of squared pseudo-hyperbolic distances between the poles: every term is
  >= 0). Why: in the code's regime d ~ 0.03, and ``1 - N / (S1 S2)`` in float32 loses ~5 bits
  (relative error ~1e-5 on d, and its gradient is a difference of O(1) terms); this form has
  ~4e-7 on d and ~1e-6 on the gradient (tests), and the same value in float64 (1e-16). Its
  explicit gradient (the sec. 2 gradient rewritten the same way; ``r_ij = rho_ij^2 - d``)::

      dd/dc_i = 2 c_i / ((1 - a_i^2) W) sum_j v_j r_ij
      dd/da_i = 2 u_i / W [ a_i / (1 - a_i^2) sum_j v_j r_ij + sum_j e_j^2 (a_i - b_j) / D_ij^3 ]
      dd/de_j = 2 e_j / ((1 - b_j^2) W) sum_i u_i r_ij
      dd/db_j = 2 v_j / W [ b_j / (1 - b_j^2) sum_i u_i r_ij - sum_i c_i^2 (a_i - b_j) / D_ij^3 ]

  The forward (:func:`_code_forward`) sweeps the systems in chunks of
  ``max(1, _CHUNK_ELEMS // (n1 n2))`` systems (``_CHUNK_ELEMS = 2**24``: 65536 systems at
  n = 16, i.e. 64 MiB per fp32 chunk tensor; two alive at once): per chunk ``rho^2`` and the
  batched mat-vec ``sum_i u_i (rho^2 v)_i``; ``u``, ``v``, ``W`` need only O(m n). It saves for
  backward only ``a, c, b, e`` (views of the inputs) and the per-system scalars ``d, W``:
  nothing with n1 n2 entries per system. The backward (:func:`_code_vjp`) recomputes
  ``1 / D_ij`` and ``rho_ij`` per chunk (three chunk tensors alive at once) and forms the four
  batched mat-vecs above. Peak extra memory: O(chunk n1 n2) plus O(m (n1 + n2)), whatever m
  is; the official construction (``_code_path_distance``) materialises (m, 2n, 2n). The
  Function is once-differentiable (``once_differentiable``: a second derivative raises).
  ``infssm_distance_grad`` and ``infssm_reg_loss_grad`` call the same two helpers (one
  implementation of each formula).
- ``variant="projection" | "martin"`` (principled, De Cock & De Moor 2002): plain torch,
  differentiable by autograd: ``L1 L1^T = G11 + eps I``, ``L2 L2^T = G22 + eps I`` by batched
  ``torch.linalg.cholesky_ex``, ``M = L1^-1 G12 L2^-T`` by two ``solve_triangular``; projection
  ``k - ||M||_F^2``, martin ``-log det(M M^T)`` (``M^T M`` if n1 > n2) from a third Cholesky
  factor, ``k = min(n1, n2)``. As the reference: a system whose ``G + eps I`` is not
  numerically positive definite raises its ValueError (suggesting ``eps > 0``); martin gives
  +inf where ``M M^T`` is singular (an angle of 90 degrees). The factorisations run without
  error checks; their flags are reduced on the device and read once (one 0-d host read).
- ``mamba_ac_from_scan``: ``dt = softplus(delta_raw [+ dt_bias])`` as ``-logsigmoid(-x)``
  (``max(x, 0) + log1p(exp(-|x|))``, with the exact sigmoid derivative), ``A = -exp(A_log)``.
  ``channel_reduce="mean"`` goes through :class:`_ChannelMeanExp`, a custom Function that
  sweeps the channels in blocks of ``max(1, _CHUNK_ELEMS // (B L n))`` and saves only
  ``(dt, A)``; its backward recomputes ``exp(dt A)`` per block (as the official
  ``MambaInnerFnNoOutProj_state`` has its own backward for this mean). Why: the plain
  expression ``exp(dt[..., None] * A).mean(1)`` would keep a (B, D, L, n) tensor for backward
  (1.2 GiB fp32 at the Vim-small size B = 128, D = 768, L = 197, n = 16) and allocate
  another in the forward; the Function keeps O(B D L + D n) and one block (64 MiB fp32).
  Once-differentiable. ``channel_reduce="none"`` returns the (B L, D, n) tensor itself, so it
  is plain torch. Squash (``tanh(x / 2)``), the transpose of C and the row flattening are
  plain torch ops.
- ``infssm_reg_loss``: the S scans are stacked to (S, m, n) and go through one call of
  :class:`_CodeDistance` (mode "inf_ssm") or one MSE expression; the allclose shortcut is a
  device flag per scan (``|new - old| <= 1e-8 + 1e-5 |old|`` everywhere, in a AND c) and the
  loss is ``lam * mean_s where(flag_s, 0, L_s)``: no host read, and the constant 0 sends an
  exact zero gradient into the scan. The old pairs are detached (the old model is frozen:
  gradients w.r.t. the new pairs only, as ``infssm_reg_loss_grad``). ``infssm_reg_loss_grad``
  uses :func:`_code_vjp` with the cotangent ``lam / (S m)`` (0 on shortcut scans).

Host reads (documented): argument validation (``refimpl/_validate.py``) needs, per array,
whether it is finite and ``max |x|`` (``|a| < 1``). These are computed on the device for all
array arguments of a call at once and read with ONE device-to-host copy per call
(:func:`_stats`; 2 floats per array) — also for the reg loss with its 4 S arrays. The
principled variants read one 0-d flag (did every Gram factorise?). Nothing else is read: the
chunk loops, the allclose shortcut and the code variant never synchronise.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from backends.torch import native as _native
from refimpl import _validate as V

__all__ = [
    "stein_gram_diag", "stein_cross_gram_diag", "infssm_distance", "infssm_distance_grad",
    "mamba_ac_from_scan", "infssm_reg_loss", "infssm_reg_loss_grad",
]

_CHUNK_ELEMS = 1 << 24    # elements of one (chunk, n1, n2) / (B, D_block, L, n) temporary
_ALLCLOSE_RTOL = 1e-5     # torch.allclose defaults, as the official shortcut
_ALLCLOSE_ATOL = 1e-8


def _stats(*tensors):
    """A ``stats`` callable for the validators: ``(all finite, max |x|)`` of every non-empty
    floating tensor among ``tensors``, computed on the device and read in one host copy.
    Unknown arrays (or tensors on several devices) fall back to the default per-array read."""
    ts = [t for t in tensors
          if isinstance(t, torch.Tensor) and t.is_floating_point() and t.numel() > 0]
    if not ts or len({t.device for t in ts}) != 1:
        return None
    with torch.no_grad():
        rows = [torch.stack((torch.isfinite(t).all().to(torch.float64),
                             t.abs().amax().to(torch.float64))) for t in ts]
        vals = torch.stack(rows).tolist()                    # the one device-to-host read
    table = {id(t): (bool(f), float(mx)) for t, (f, mx) in zip(ts, vals)}

    def stats(x):
        hit = table.get(id(x))
        return hit if hit is not None and any(x is t for t in ts) else V._default_stats(x)

    return stats


def _chunks(rows: int, width: int):
    step = max(1, _CHUNK_ELEMS // max(width, 1))
    return [(i, min(i + step, rows)) for i in range(0, rows, step)]


# --------------------------------------------------------------------------- Gram matrices


def _inv_denominator(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``1 / (1 - a_i b_j)`` (..., n1, n2), formed in place in one tensor."""
    return (a.unsqueeze(-1) * b.unsqueeze(-2)).neg_().add_(1.0).reciprocal_()


def _cross_gram(a, C1, b, C2, p: int) -> torch.Tensor:
    """``(C1^T C2)[i, j] / (1 - a_i b_j)``; vectors (p = 0): ``c_i e_j / (1 - a_i b_j)``.
    Differentiable (the quotient is not formed in place)."""
    Q = C1.unsqueeze(-1) * C2.unsqueeze(-2) if p == 0 else C1.transpose(-1, -2) @ C2
    return Q / (1.0 - a.unsqueeze(-1) * b.unsqueeze(-2))


def stein_gram_diag(a, C):
    r"""Observability Gram ``G = sum_k (A^T)^k C^T C A^k`` of ``A = diag(a)`` in closed form:
    ``G[i, j] = (C^T C)[i, j] / (1 - a_i a_j)``. a (..., n); C (..., n) (one output) or
    (..., p, n) -> (..., n, n). Differentiable by autograd."""
    _native(a=a, C=C)
    _, p, _ = V.diag_system(a, C, ("a", "C"), True, _stats(a, C))
    return _cross_gram(a, C, a, C, p)


def stein_cross_gram_diag(a, C1, b, C2):
    r"""Cross-Gram ``G12 = O1^T O2``: ``G12[i, j] = (C1^T C2)[i, j] / (1 - a_i b_j)``
    (vectors: ``c_i e_j / (1 - a_i b_j)``). a (..., n1), b (..., n2) -> (..., n1, n2).
    Differentiable by autograd."""
    _native(a=a, C1=C1, b=b, C2=C2)
    _, p, _, _ = V.cross_gram_args(a, C1, b, C2, _stats(a, C1, b, C2))
    return _cross_gram(a, C1, b, C2, p)


# --------------------------------------------------------------------------- code distance


def _pole_distance(a, b):
    """``rho_ij = (a_i - b_j) / (1 - a_i b_j)`` (..., n1, n2): two passes, two chunk tensors."""
    one = torch.ones((), dtype=a.dtype, device=a.device)
    den = torch.addcmul(one, a.unsqueeze(-1), b.unsqueeze(-2), value=-1.0)   # 1 - a_i b_j
    return (a.unsqueeze(-1) - b.unsqueeze(-2)).div_(den)


def _code_forward(a, c, b, e):
    """``(d, W)`` of (m, n1), (m, n1), (m, n2), (m, n2) systems, chunked over m:
    ``d = sum_ij w_ij rho_ij^2 / W``, ``W = S1 S2`` (module docstring)."""
    m, n1 = a.shape
    n2 = b.shape[-1]
    u = c * c / (1.0 - a * a)                      # c_i^2 / (1 - a_i^2); S1 = sum_i u_i
    v = e * e / (1.0 - b * b)
    W = u.sum(-1) * v.sum(-1)
    P = torch.empty_like(W)
    for r0, r1 in _chunks(m, n1 * n2):
        rho2 = _pole_distance(a[r0:r1], b[r0:r1]).square_()
        P[r0:r1] = ((rho2 @ v[r0:r1].unsqueeze(-1)).squeeze(-1) * u[r0:r1]).sum(-1)
    return P / W, W


def _code_vjp(a, c, b, e, d, W, g, need=(True, True, True, True)):
    """Gradients ``(da, dc, db, de)`` of ``sum(g * d)`` (module docstring); ``rho_ij`` and
    ``1 / (1 - a_i b_j)`` recomputed per chunk. ``need`` selects the outputs (None for the
    others)."""
    m, n1 = a.shape
    n2 = b.shape[-1]
    ia, ib = 1.0 / (1.0 - a * a), 1.0 / (1.0 - b * b)
    c2, e2 = c * c, e * e
    u, v = c2 * ia, e2 * ib
    need_a, need_c, need_b, need_e = need
    v1 = torch.empty_like(a) if (need_a or need_c) else None   # sum_j v_j (rho_ij^2 - d)
    v2 = torch.empty_like(b) if (need_b or need_e) else None   # sum_i u_i (rho_ij^2 - d)
    t1 = torch.empty_like(a) if need_a else None               # sum_j e_j^2 rho_ij / D_ij^2
    t2 = torch.empty_like(b) if need_b else None               # sum_i c_i^2 rho_ij / D_ij^2
    dd = d.unsqueeze(-1).unsqueeze(-1)
    for r0, r1 in _chunks(m, n1 * n2):
        R = _inv_denominator(a[r0:r1], b[r0:r1])                       # 1 / D_ij
        rho = (a[r0:r1].unsqueeze(-1) - b[r0:r1].unsqueeze(-2)).mul_(R)
        r = rho.square().sub_(dd[r0:r1])                                # rho^2 - d
        if v1 is not None:
            v1[r0:r1] = (r @ v[r0:r1].unsqueeze(-1)).squeeze(-1)
        if v2 is not None:
            v2[r0:r1] = (u[r0:r1].unsqueeze(-2) @ r).squeeze(-2)
        del r
        if need_a or need_b:
            q = rho.mul_(R).mul_(R)                                     # (a_i - b_j) / D_ij^3
            if need_a:
                t1[r0:r1] = (q @ e2[r0:r1].unsqueeze(-1)).squeeze(-1)
            if need_b:
                t2[r0:r1] = (c2[r0:r1].unsqueeze(-2) @ q).squeeze(-2)
        del R, rho
    s = (2.0 * g / W).unsqueeze(-1)
    da = s * u * (a * ia * v1 + t1) if need_a else None
    dc = s * c * ia * v1 if need_c else None
    db = s * v * (b * ib * v2 - t2) if need_b else None
    de = s * e * ib * v2 if need_e else None
    return da, dc, db, de


class _CodeDistance(torch.autograd.Function):
    """``d_code`` of (m, n1)/(m, n2) systems -> (m,); saves ``a, c, b, e, d, W`` only."""

    @staticmethod
    def forward(ctx, a, c, b, e):
        d, W = _code_forward(a, c, b, e)
        ctx.save_for_backward(a, c, b, e, d, W)
        return d

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        a, c, b, e, d, W = ctx.saved_tensors
        return _code_vjp(a, c, b, e, d, W, g, tuple(ctx.needs_input_grad[:4]))


def _flat(x, n):
    return x.reshape(-1, n)


def _code_distance(a, c, b, e):
    """Validated inputs (..., n1)/(..., n2) -> (...,) through :class:`_CodeDistance`."""
    lead, n1, n2 = a.shape[:-1], a.shape[-1], b.shape[-1]
    d = _CodeDistance.apply(_flat(a, n1), _flat(c, n1), _flat(b, n2), _flat(e, n2))
    return d.reshape(lead)


def _code_path_distance(a, c, b, e):
    r"""The OFFICIAL code's construction of ``d_code`` (``solve_P`` + ``solve_distance_obs``
    of ``isaacNingLee/Inf-SSM``), transcribed here in plain torch as the anchor of sec. 7:
    the joint system ``lam = [a, b]``, ``w = [c, e]`` gets its full 2n x 2n Lyapunov solution
    ``P = w w^T / (1 - lam lam^T)`` per system, then
    ``d = 1 - tr(P12 @ P21) / (tr P11 * tr P22)`` with a matrix product. O(n^3) time and
    (..., 2n, 2n) memory per system; no validation, no allclose shortcut (private: used by
    the asv peer benchmark and the tests)."""
    n1 = a.shape[-1]
    lam = torch.cat((a, b), dim=-1)
    w = torch.cat((c, e), dim=-1)
    P = (w.unsqueeze(-1) * w.unsqueeze(-2)) / (1.0 - lam.unsqueeze(-1) * lam.unsqueeze(-2))
    P11, P12 = P[..., :n1, :n1], P[..., :n1, n1:]
    P21, P22 = P[..., n1:, :n1], P[..., n1:, n1:]
    tr = lambda X: torch.diagonal(X, dim1=-2, dim2=-1).sum(-1)
    return 1.0 - tr(P12 @ P21) / (tr(P11) * tr(P22))


# --------------------------------------------------------------------------- principled


def _chol(G: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cholesky factor without the error check (no host read): ``(L, ok)``, ``ok`` False
    for a matrix that is not numerically positive definite."""
    L, info = torch.linalg.cholesky_ex(G)
    return L, info == 0


def _principled_distance(a, c, b, e, variant: str, eps: float):
    n1, n2 = a.shape[-1], b.shape[-1]
    G11 = _cross_gram(a, c, a, c, 0)
    G22 = _cross_gram(b, e, b, e, 0)
    G12 = _cross_gram(a, c, b, e, 0)
    if eps > 0:
        G11 = G11 + eps * torch.eye(n1, dtype=a.dtype, device=a.device)
        G22 = G22 + eps * torch.eye(n2, dtype=a.dtype, device=a.device)
    L1, ok1 = _chol(G11)
    L2, ok2 = _chol(G22)
    _gram_failure(ok1, ok2, eps)
    X = torch.linalg.solve_triangular(L1, G12, upper=False)                   # L1^-1 G12
    Mt = torch.linalg.solve_triangular(L2, X.transpose(-1, -2), upper=False)  # (L1^-1 G12 L2^-T)^T
    k = min(n1, n2)
    if variant == "projection":
        return k - (Mt * Mt).sum((-2, -1))
    # martin: -log det(M M^T) (n1 <= n2) or -log det(M^T M), by Cholesky; +inf where M is
    # rank deficient (an angle of 90 degrees: -log 0), as the reference
    K = Mt.transpose(-1, -2) @ Mt if n1 <= n2 else Mt @ Mt.transpose(-1, -2)
    L3, ok3 = _chol(K)
    d = -2.0 * torch.log(torch.diagonal(L3, dim1=-2, dim2=-1)).sum(-1)
    return torch.where(ok3, d, torch.full_like(d, float("inf")))


def _gram_failure(ok1, ok2, eps: float) -> None:
    """The reference's ValueError when some ``G11 + eps I`` or ``G22 + eps I`` is not
    numerically positive definite (named after the first failing system, G11 before G22).
    One 0-d device-to-host read (0: all factorisations succeeded)."""
    ok1, ok2 = ok1.reshape(-1), ok2.reshape(-1)
    fail = ~(ok1 & ok2)
    if fail.numel() == 0:
        return
    first = torch.argmax(fail.to(torch.int8))
    code = torch.where(fail.any(), torch.where(ok1[first], 2, 1), 0).item()   # the one read
    if code:
        name = "G11" if code == 1 else "G22"
        raise V.gram_not_positive_definite(name, eps)


# --------------------------------------------------------------------------- public distance


def _infssm_checked(a, c, b, e, variant, eps):
    _native(a=a, c=c, b=b, e=e)
    V.infssm_args(a, c, b, e, variant, eps, _stats(a, c, b, e))
    return float(eps)


def infssm_distance(a, c, b, e, variant="code", eps=0.0):
    r"""Distance between single-output diagonal systems (a, c) (..., n1) and (b, e) (..., n2),
    one per leading index -> (...,).

    ``variant="code"`` (default, official code): ``d = 1 - ||G12||_F^2 / (tr G11 tr G22)`` in
    O(n1 n2) per system by :class:`_CodeDistance` (cancellation-free form and its explicit
    gradient, module docstring; chunked; saves only O(m (n1 + n2)); once-differentiable). ``"projection"``: ``k - ||M||_F^2``;
    ``"martin"``: ``-log det(M M^T)``, ``M = L1^-1 G12 L2^-T`` from Cholesky factors of
    ``G + eps I`` (plain torch, autograd; ValueError as the reference when a Gram is not
    numerically positive definite; martin +inf at a 90 degree angle)."""
    eps = _infssm_checked(a, c, b, e, variant, eps)
    if variant == "code":
        return _code_distance(a, c, b, e)
    return _principled_distance(a, c, b, e, variant, eps)


def infssm_distance_grad(a, c, b, e):
    r"""``(d, da, dc, db, de)`` of ``variant="code"``: the distance and the gradients of each
    system's ``d`` w.r.t. its own inputs (the sec. 2 formulas, the same helpers as the
    autograd Function's forward and backward). No autograd graph is built."""
    _infssm_checked(a, c, b, e, "code", 0.0)
    n1, n2 = a.shape[-1], b.shape[-1]
    with torch.no_grad():
        fa, fc, fb, fe = (_flat(x.detach(), n) for x, n in ((a, n1), (c, n1), (b, n2), (e, n2)))
        d, W = _code_forward(fa, fc, fb, fe)
        da, dc, db, de = _code_vjp(fa, fc, fb, fe, d, W, torch.ones_like(d))
    lead = a.shape[:-1]
    return (d.reshape(lead), da.reshape(a.shape), dc.reshape(c.shape), db.reshape(b.shape),
            de.reshape(e.shape))


# --------------------------------------------------------------------------- Mamba extraction


def _exp_block(dt, A, d0, d1):
    """``exp(dt[b, d, l] A[d, :])`` for channels d0:d1 -> (B, d1 - d0, L, n)."""
    return torch.exp(dt[:, d0:d1, :, None] * A[None, d0:d1, None, :])


class _ChannelMeanExp(torch.autograd.Function):
    """``Abar[b, l, :] = mean_d exp(dt[b, d, l] A[d, :])`` (B, L, n), channel blocks of
    ``_CHUNK_ELEMS // (B L n)``; saves ``(dt, A)``, recomputes the exponentials in backward."""

    @staticmethod
    def forward(ctx, dt, A):
        B, D, L = dt.shape
        n = A.shape[-1]
        acc = torch.zeros((B, L, n), dtype=dt.dtype, device=dt.device)
        for d0, d1 in _chunks(D, B * L * n):
            acc += _exp_block(dt, A, d0, d1).sum(1)
        ctx.save_for_backward(dt, A)
        return acc / D

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        dt, A = ctx.saved_tensors
        B, D, L = dt.shape
        n = A.shape[-1]
        need_dt, need_A = ctx.needs_input_grad[:2]
        ddt = torch.empty_like(dt) if need_dt else None
        dA = torch.empty_like(A) if need_A else None
        gD = (g / D).unsqueeze(1)                                     # (B, 1, L, n)
        for d0, d1 in _chunks(D, B * L * n):
            GE = _exp_block(dt, A, d0, d1).mul_(gD)                  # g/D * exp(dt A)
            if need_dt:     # d/d dt[b,d,l] = sum_n g exp(dt A) A[d, n] / D
                ddt[:, d0:d1] = (GE @ A[d0:d1, :, None]).squeeze(-1)
            if need_A:      # d/d A[d,n] = sum_{b,l} g exp(dt A) dt[b,d,l] / D
                dA[d0:d1] = torch.einsum("bdln,bdl->dn", GE, dt[:, d0:d1])
        return ddt, dA


def mamba_ac_from_scan(delta_raw, A_log, C, dt_bias=None, channel_reduce="mean", squash=True):
    r"""Per-token diagonal systems ``(a, c)`` of one Mamba scan (sec. 3, official code).

    ``A = -exp(A_log)``; ``dt = softplus(delta_raw [+ dt_bias[:, None]])``;
    ``channel_reduce="mean"``: ``a[(b, l), :] = mean_d exp(dt[b, d, l] A[d, :])`` (B L, n);
    ``"none"``: ``a[(b, l), d, :] = exp(dt[b, d, l] A[d, :])`` (B L, D, n);
    ``c[(b, l), :] = C[b, :, l]`` (B L, n, shared by the channels); ``squash``: ``a = tanh(a/2)``,
    ``c = tanh(c/2)``. Rows are (b, l) row-major. Differentiable by autograd w.r.t.
    ``delta_raw``, ``A_log``, ``C`` and ``dt_bias`` ("mean": through :class:`_ChannelMeanExp`,
    once-differentiable, O(B D L) saved)."""
    _native(delta_raw=delta_raw, A_log=A_log, C=C, dt_bias=dt_bias)
    B, D, L, n = V.mamba_scan_args(delta_raw, A_log, C, dt_bias, channel_reduce, squash,
                                   _stats(delta_raw, A_log, C, dt_bias))
    x = delta_raw if dt_bias is None else delta_raw + dt_bias[:, None]
    dt = -F.logsigmoid(-x)                      # softplus = max(x, 0) + log1p(exp(-|x|))
    A = -torch.exp(A_log)
    if channel_reduce == "mean":
        a = _ChannelMeanExp.apply(dt, A).reshape(B * L, n)
    else:
        a = torch.exp(dt.transpose(1, 2).unsqueeze(-1) * A).reshape(B * L, D, n)
    c = C.transpose(1, 2).reshape(B * L, n)
    if squash:
        a, c = torch.tanh(0.5 * a), torch.tanh(0.5 * c)
    return a, c


# --------------------------------------------------------------------------- regulariser


def _reg_prepare(new_pairs, old_pairs, lam, mode):
    """Validate; return ``(lam, An, Cn, Ao, Co)``: the pairs stacked to (S, m, n), the old
    ones detached (frozen old model)."""
    for name, pairs in (("new_pairs", new_pairs), ("old_pairs", old_pairs)):
        for s, pair in enumerate(pairs if isinstance(pairs, (list, tuple)) else ()):
            if isinstance(pair, (list, tuple)) and len(pair) == 2:
                _native(**{f"{name}[{s}] a": pair[0], f"{name}[{s}] c": pair[1]})
    flat = [x for pairs in (new_pairs, old_pairs) if isinstance(pairs, (list, tuple))
            for pair in pairs if isinstance(pair, (list, tuple)) for x in pair]
    V.reg_loss_args(new_pairs, old_pairs, lam, mode, _stats(*flat))
    An = torch.stack([p[0] for p in new_pairs])
    Cn = torch.stack([p[1] for p in new_pairs])
    Ao = torch.stack([p[0].detach() for p in old_pairs])
    Co = torch.stack([p[1].detach() for p in old_pairs])
    return float(lam), An, Cn, Ao, Co


def _close(x, ref):
    """Per scan: ``|x - ref| <= atol + rtol |ref|`` everywhere (torch.allclose, on the device)."""
    with torch.no_grad():
        ok = torch.isclose(x, ref, rtol=_ALLCLOSE_RTOL, atol=_ALLCLOSE_ATOL)
        return ok.flatten(1).all(1)


def infssm_reg_loss(new_pairs, old_pairs, lam, mode="inf_ssm", allclose_shortcut=True):
    r"""``lam * mean_s L_s`` over scans s (sec. 4), a 0-d tensor: ``L_s = mean_r d_code`` of
    row r's new vs old system (mode "inf_ssm") or ``mean((a_new - a_old)^2) +
    mean((c_new - c_old)^2)`` (mode "mse"). With ``allclose_shortcut`` a scan whose a and c
    are both allclose (rtol 1e-5, atol 1e-8) contributes exactly 0 and no gradient (a device
    flag and ``torch.where``: no host read). Differentiable w.r.t. the new pairs; the old
    pairs are detached (frozen old model)."""
    lam, An, Cn, Ao, Co = _reg_prepare(new_pairs, old_pairs, lam, mode)
    if mode == "inf_ssm":
        Ls = _code_distance(An, Cn, Ao, Co).mean(-1)
    else:
        Ls = ((An - Ao) ** 2).mean((-2, -1)) + ((Cn - Co) ** 2).mean((-2, -1))
    if allclose_shortcut:
        skip = _close(An, Ao) & _close(Cn, Co)
        Ls = torch.where(skip, torch.zeros_like(Ls), Ls)
    return lam * Ls.mean()


def infssm_reg_loss_grad(new_pairs, old_pairs, lam, mode="inf_ssm", allclose_shortcut=True):
    r"""``(loss, da_new, dc_new)``: the loss of :func:`infssm_reg_loss` and its gradients
    w.r.t. the new pairs, stacked (S, m, n); shortcut scans get exact zeros. Explicit
    formulas (mode "inf_ssm": :func:`_code_vjp` with the cotangent ``lam / (S m)``; "mse":
    ``2 lam (x_new - x_old) / (S m n)``); no autograd graph is built."""
    with torch.no_grad():
        lam, An, Cn, Ao, Co = _reg_prepare(new_pairs, old_pairs, lam, mode)
        An, Cn = An.detach(), Cn.detach()
        S, m, n = An.shape
        if allclose_shortcut:
            keep = ~(_close(An, Ao) & _close(Cn, Co))
        else:
            keep = torch.ones(S, dtype=torch.bool, device=An.device)
        w = keep.to(An.dtype)                                         # (S,) 1 or 0
        if mode == "inf_ssm":
            fa, fc, fb, fe = (x.reshape(S * m, n) for x in (An, Cn, Ao, Co))
            d, W = _code_forward(fa, fc, fb, fe)
            Ls = d.reshape(S, m).mean(-1)
            g = (w * (lam / (S * m))).repeat_interleave(m)            # (S m,)
            da, dc, _, _ = _code_vjp(fa, fc, fb, fe, d, W, g, (True, True, False, False))
            da, dc = da.reshape(S, m, n), dc.reshape(S, m, n)
        else:
            Ls = ((An - Ao) ** 2).mean((-2, -1)) + ((Cn - Co) ** 2).mean((-2, -1))
            scale = (w * (2.0 * lam / (S * m * n)))[:, None, None]
            da, dc = scale * (An - Ao), scale * (Cn - Co)
        Ls = torch.where(keep, Ls, torch.zeros_like(Ls)) if allclose_shortcut else Ls
        return lam * Ls.mean(), da, dc
