r"""Soft-DTW and the Soft-DTW divergence on torch tensors (softdtw.md sec. 9, 10).

Same functions, signatures and results as :mod:`refimpl.softdtw`; inputs are torch tensors on
any device, computed in their dtype (float32 or float64), with the float64 per-diagonal
offsets of softdtw.md sec. 8.3. The math, 1-based DP indices::

    softmin_g(a_1..a_k) = r - g log sum_k exp(-(a_k - r)/g),  r = min_k a_k  (+inf if r = +inf)
    R[0,0] = 0,  R[i,0] = R[0,j] = +inf,
    R[i,j] = C[i,j] + softmin_g(R[i-1,j-1], R[i-1,j], R[i,j-1]),   sdtw_g(C) = R[n,m]

    E[n,m] = 1,  E[k] = sum over successors s of k of pi_s(k) E[s],
    pi_s(k) = exp(-(R[k] - r_s)/g) / sum_{k' in P(s)} exp(-(R[k'] - r_s)/g),  r_s = min_{P(s)} R

``E = d sdtw_g / dC`` is the expected alignment; P(s) are the three predecessors of s. The
weights ``pi_s`` are the *normalised* softmin weights, recomputed in the backward from the
stored R (never ``exp(R[s]-R[k]-C[s])``, nor ``exp(-(R[k] - softmin)/g)``, which loses
``ulp(|R|)/g`` of relative accuracy per weight in float32).

Layout (ours). The cells with equal ``p = i + j`` (an anti-diagonal) are independent, so one
step of the loop computes a whole diagonal of every pair of the batch at once. Tables are
stored diagonal-major, ``T[b, p, i] = T_b[i, p - i]``, so the three predecessors of diagonal p
are plain slices of diagonals p-1 and p-2 (``(i-1, j)`` -> ``[p-1, i-1]``, ``(i, j-1)`` ->
``[p-1, i]``, ``(i-1, j-1)`` -> ``[p-2, i-1]``). The problem is transposed when ``N > M``
(``sdtw(C^T) = sdtw(C)``, ``E(C^T) = E(C)^T``) so the diagonal width is ``min(N, M)``.
The costs are gathered once into that layout with ``+inf`` wherever a cell is outside the
pair's valid block ``[:len_x[b], :len_y[b]]`` or outside the band, which is how padding is never
read and forbidden cells act as ``R = +inf`` (and so get ``E = 0``).

Offsets (softdtw.md sec. 8.3). The stored table is ``Rt[p] = R[p] - o_p`` with one float64
offset per pair and diagonal, ``o_p = o_{p-1} + d_p`` and ``d_p`` the smallest finite stored
value of diagonal p-1 (0 if there is none), known before diagonal p starts. Predecessors enter
diagonal p shifted by ``o_{p-1} - o_p = -d_p`` and ``o_{p-2} - o_p = -(d_p + d_{p-1})`` (float64,
cast once); the value is ``o_{n+m} + Rt[n, m]`` in float64, cast to the input dtype.

The divergence runs its three DPs (XY, XX, YY) of all pairs as one batch of 3B jobs.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from backends.torch import native as _native
from backends.torch import to_numpy
from refimpl import _validate as V

__all__ = [
    "soft_dtw", "soft_dtw_grad", "sdtw_cost", "sdtw_cost_vjp", "soft_dtw_divergence",
    "soft_dtw_divergence_grad",
]

COS_EPS = 1e-8  # norm floor of the cosine cost (the reference's; torch cosine_similarity's eps)
_INF = math.inf
# Below this many cells per anti-diagonal step (summed over the batch), intra-op threading of
# the small per-step CPU ops costs more than it gains (ATen's own grain size is 32768; MKL's
# vectorised exp/log thread from ~512 elements, and waking the thread team each step dominates).
_SERIAL_CPU_CELLS = 32768



# --------------------------------------------------------------------------- the DP


class _Grid(NamedTuple):
    """Geometry of one batched DP. ``n``, ``m``, ``N``, ``M`` are in the oriented frame
    (rows = the shorter padded side); ``N0``, ``M0`` are the caller's padded sizes."""

    n: np.ndarray          # (B,) host int64, rows of each pair's valid block (oriented)
    m: np.ndarray          # (B,) columns (oriented)
    N: int
    M: int
    N0: int
    M0: int
    transposed: bool
    bandwidth: int | None
    gamma: float


def _grid(N0: int, M0: int, len_x: np.ndarray, len_y: np.ndarray, bandwidth, gamma) -> _Grid:
    if N0 > M0:
        return _Grid(len_y, len_x, M0, N0, N0, M0, True, bandwidth, gamma)
    return _Grid(len_x, len_y, N0, M0, N0, M0, False, bandwidth, gamma)


def _host_index(v: np.ndarray, device) -> torch.Tensor:
    return torch.as_tensor(np.ascontiguousarray(v, dtype=np.int64), device=device)


def _diagonal_costs(C3: torch.Tensor, grid: _Grid) -> torch.Tensor:
    """``Cd[b, p, i] = C_b[i, p - i]`` (1-based, oriented), shape (B, N+M+1, N+2); ``+inf``
    outside the grid, outside pair b's valid block and outside the widened band (sec. 7:
    ``-r - max(n-m, 0) <= j - i <= r + max(m-n, 0)``, i.e. tslearn's ``sakoe_chiba_mask``)."""
    B, dev = C3.shape[0], C3.device
    p = torch.arange(grid.N + grid.M + 1, device=dev).view(-1, 1)
    i = torch.arange(grid.N + 2, device=dev).view(1, -1)
    j = p - i
    n = _host_index(grid.n, dev).view(-1, 1, 1)
    m = _host_index(grid.m, dev).view(-1, 1, 1)
    valid = (i >= 1) & (j >= 1) & (i <= n) & (j <= m)
    if grid.bandwidth is not None:
        r = grid.bandwidth
        lag = j - i
        valid &= (lag >= -r - (n - m).clamp(min=0)) & (lag <= r + (m - n).clamp(min=0))
    row, col = (j - 1, i - 1) if grid.transposed else (i - 1, j - 1)
    flat = row.clamp(0, grid.N0 - 1) * grid.M0 + col.clamp(0, grid.M0 - 1)
    return torch.where(valid, C3.reshape(B, -1)[:, flat], _INF)


@contextmanager
def _serial_cpu_steps(x: torch.Tensor, cells_per_step: int):
    """Run a wavefront loop with one intra-op CPU thread when its steps are small.

    The loop issues ~20 tiny ops per anti-diagonal; on the CPU, letting each of them wake a
    thread team makes the loop several times slower (and erratic on a loaded machine). The
    previous thread count is restored on exit; CUDA tensors and large steps are unaffected."""
    threads = torch.get_num_threads()
    if x.device.type != "cpu" or threads == 1 or cells_per_step >= _SERIAL_CPU_CELLS:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _softmin(preds: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-shifted ``softmin_g`` over dim 0: ``r - g log sum_k exp(-(a_k - r)/g)``.

    ``r`` is clamped to the largest finite float, so an all-``+inf`` column gives
    ``exp(-inf) = 0`` terms and the result ``+inf`` (never ``inf - inf``); NaN propagates."""
    r = preds.amin(dim=0).clamp_(max=torch.finfo(preds.dtype).max)
    terms = torch.sub(preds, r).mul_(-1.0 / gamma).exp_()
    return torch.sub(r, terms.sum(dim=0).log_(), alpha=gamma)


def _pred_weights(preds: torch.Tensor, gamma: float) -> torch.Tensor:
    """Normalised softmin weights ``pi_s(k) = exp(-(a_k - r)/g) / sum_k' exp(-(a_k' - r)/g)``
    of the predecessors ``a_k`` (dim 0) of each successor s, ``r = min_k a_k``.

    Only differences ``a_k - r`` are exponentiated (small and exact near the path), so each
    weight has a relative error of a few ulps; computing ``exp(-(a_k - softmin)/g)`` instead
    would cost ``ulp(|a_k|)/g``. A successor whose predecessors are all ``+inf`` gets NaN
    weights; its predecessors are then ``+inf`` cells, which the caller sets to 0."""
    r = preds.amin(dim=0).clamp_(max=torch.finfo(preds.dtype).max)
    terms = torch.sub(preds, r).mul_(-1.0 / gamma).exp_()
    return terms.div_(terms.sum(dim=0))


def _span(p: int, grid: _Grid) -> tuple[int, int]:
    """First and last row i of anti-diagonal p inside the (oriented) padded grid."""
    return max(1, p - grid.M), min(grid.N, p - 1)


def _shifts(d: torch.Tensor, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Per diagonal q: ``o_{q-1} - o_q = -d_q`` and ``o_{q-2} - o_q = -(d_q + d_{q-1})``,
    computed in float64 and cast once to the storage dtype. Shapes (B, P+1)."""
    sh1 = (-d).to(dtype)
    sh2 = torch.cat((-d[:, :1], -(d[:, 1:] + d[:, :-1])), dim=1).to(dtype)
    return sh1, sh2


def _ends(grid: _Grid, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(batch index, diagonal, row) of each pair's end cell ``(n, m)``."""
    return (torch.arange(len(grid.n), device=device), _host_index(grid.n + grid.m, device),
            _host_index(grid.n, device))


def _forward(Cd: torch.Tensor, grid: _Grid):
    """Forward wavefront. Returns ``(Rt, d, value, unreachable)``: the stored table (Cd's
    layout and dtype), the float64 offset increments ``d`` (B, P+1), the value in the input
    dtype, and whether ``R[n, m] = +inf`` (no finite path)."""
    B, P = Cd.shape[0], grid.N + grid.M
    Rt = torch.full_like(Cd, _INF)
    Rt[:, 0, 0] = 0.0
    d = torch.zeros((B, P + 1), dtype=torch.float64, device=Cd.device)
    with _serial_cpu_steps(Cd, B * grid.N):
        _forward_steps(Cd, Rt, d, grid)
    b, pe, ie = _ends(grid, Cd.device)
    end = Rt[b, pe, ie]
    value = (d.cumsum(dim=1)[b, pe] + end.to(torch.float64)).to(Cd.dtype)
    return Rt, d, value, end == _INF


def _forward_steps(Cd: torch.Tensor, Rt: torch.Tensor, d: torch.Tensor, grid: _Grid) -> None:
    """Fill ``Rt`` and ``d`` diagonal by diagonal, p = 2..N+M (in place)."""
    g, dtype = grid.gamma, Cd.dtype
    for p in range(2, grid.N + grid.M + 1):
        lo, hi = _span(p, grid)
        prev = Rt[:, p - 1, lo - 1:hi + 1]           # rows lo-1..hi of diagonal p-1
        d[:, p] = torch.nan_to_num(prev.amin(dim=1), nan=0.0, posinf=0.0)
        prev = prev - d[:, p].to(dtype).unsqueeze(1)             # o_{p-1} - o_p = -d_p
        s2 = torch.add(d[:, p], d[:, p - 1]).neg_().to(dtype).unsqueeze(1)
        preds = torch.stack((Rt[:, p - 2, lo - 1:hi] + s2,   # (i-1, j-1)
                             prev[:, :-1],                     # (i-1, j)
                             prev[:, 1:]))                     # (i, j-1)
        Rt[:, p, lo:hi + 1] = _softmin(preds, g).add_(Cd[:, p, lo:hi + 1])


def _backward(Rt: torch.Tensor, d: torch.Tensor, grid: _Grid, seed: torch.Tensor) -> torch.Tensor:
    """Reverse wavefront: E in the diagonal layout (B, P+3, N+2), with ``E[n, m] = seed``.

    For cell (i, j) on diagonal p and its successors s1 = (i+1, j), s2 = (i, j+1) on p+1 and
    s3 = (i+1, j+1) on p+2: ``E[i,j] = sum_s pi_s((i,j)) E[s]`` with the normalised weights
    of :func:`_pred_weights`, recomputed from the stored table with the forward's shifts (each
    successor's three predecessors brought into its frame). Cells with ``R = +inf``
    (forbidden, padding, unreachable) get exactly 0."""
    B, P = Rt.shape[0], grid.N + grid.M
    sh1, sh2 = _shifts(d, Rt.dtype)
    E = Rt.new_zeros((B, P + 3, Rt.shape[2]))
    b, pe, ie = _ends(grid, Rt.device)
    E[b, pe, ie] = seed.to(Rt.dtype)
    with _serial_cpu_steps(Rt, B * grid.N):
        _backward_steps(Rt, E, sh1, sh2, grid)
    return E


def _backward_steps(Rt, E, sh1, sh2, grid: _Grid) -> None:
    """Accumulate E diagonal by diagonal, p = N+M-1..2 (in place; diagonal N+M holds only
    end cells, whose E is their seed).

    Step p computes the weights of the successors on diagonal p+1 (rows lo..hi+1; slot 0, 1,
    2 = predecessor (i-1, j-1), (i-1, j), (i, j-1) of the successor) and keeps their slot 0,
    which step p-1 needs for its diagonal successors s3."""
    g, P = grid.gamma, grid.N + grid.M
    diag_w, diag_lo = None, 0    # slot-0 weights of diagonal p+2, first row diag_lo
    for p in range(P - 1, 1, -1):
        lo, hi = _span(p, grid)
        cur = Rt[:, p, lo - 1:hi + 2] + sh1[:, p + 1].unsqueeze(1)      # in the frame of p+1
        diag = Rt[:, p - 1, lo - 1:hi + 1] + sh2[:, p + 1].unsqueeze(1)
        w = _pred_weights(torch.stack((diag, cur[:, :-1], cur[:, 1:])), g)
        e = (w[1, :, 1:] * E[:, p + 1, lo + 1:hi + 2]                   # s1 = (i+1, j)
             + w[2, :, :-1] * E[:, p + 1, lo:hi + 1])                   # s2 = (i, j+1)
        if p + 2 <= P:
            e += diag_w[:, lo + 1 - diag_lo:hi + 2 - diag_lo] * E[:, p + 2, lo + 1:hi + 2]  # s3
        E[:, p, lo:hi + 1] += torch.where(Rt[:, p, lo:hi + 1] == _INF, 0.0, e)
        diag_w, diag_lo = w[0], lo


def _undiagonal(Ed: torch.Tensor, grid: _Grid) -> torch.Tensor:
    """E (B, N0, M0) in the caller's orientation from the diagonal layout."""
    dev = Ed.device
    i = torch.arange(1, grid.N + 1, device=dev).view(-1, 1)
    j = torch.arange(1, grid.M + 1, device=dev).view(1, -1)
    E = Ed.reshape(Ed.shape[0], -1)[:, (i + j) * Ed.shape[2] + i]
    return E.transpose(1, 2).contiguous() if grid.transposed else E


def _soft_dtw_grad_batched(C3: torch.Tensor, grid: _Grid):
    """(value (B,), E (B, N0, M0)) without autograd."""
    Rt, d, value, unreachable = _forward(_diagonal_costs(C3, grid), grid)
    seed = (~unreachable).to(C3.dtype)
    return value, _undiagonal(_backward(Rt, d, grid, seed), grid)


class _SoftDTW(torch.autograd.Function):
    """``value = sdtw_g(C)`` per pair; backward ``dC = grad_value * E`` (the seed of the
    reverse wavefront is ``grad_value``, so no extra pass over E)."""

    @staticmethod
    def forward(ctx, C3, grid):
        Rt, d, value, unreachable = _forward(_diagonal_costs(C3, grid), grid)
        ctx.grid = grid
        ctx.save_for_backward(Rt, d, unreachable)
        return value

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_value):
        Rt, d, unreachable = ctx.saved_tensors
        seed = torch.where(unreachable, 0.0, grad_value)
        return _undiagonal(_backward(Rt, d, ctx.grid, seed), ctx.grid), None


def _prepare(C, gamma, len_x, len_y, bandwidth):
    _native(C=C, len_x=len_x, len_y=len_y)
    args = V.soft_dtw_args(C, gamma, len_x, len_y, bandwidth, to_numpy=to_numpy)
    C3 = C if args.shape.batched else C.unsqueeze(0)
    grid = _grid(args.shape.N, args.shape.M, args.len_x, args.len_y, args.bandwidth, args.gamma)
    return C3, grid, args.shape.batched


def soft_dtw(C, gamma, *, len_x=None, len_y=None, bandwidth=None):
    """Soft-DTW value ``R[n, m]`` of a cost matrix (n, m) (0-d result) or of each pair of a
    batch (B, N, M) (result (B,)), in C's dtype and on C's device.

    Differentiable by autograd w.r.t. C: the backward is the normalised-weight recursion
    (the E of :func:`soft_dtw_grad`, scaled by the incoming gradient). ``len_x``/``len_y``
    are integer tensors (B,) (None = full); ``bandwidth`` the widened Sakoe-Chiba radius."""
    C3, grid, batched = _prepare(C, gamma, len_x, len_y, bandwidth)
    value = _SoftDTW.apply(C3, grid)
    return value if batched else value[0]


def soft_dtw_grad(C, gamma, *, len_x=None, len_y=None, bandwidth=None):
    """``(value, E)`` with ``E = d value / dC`` (C's shape; exactly 0 outside each pair's
    valid block, outside the band, and everywhere when no finite path exists). Not itself
    differentiable (use :func:`soft_dtw` with autograd)."""
    C3, grid, batched = _prepare(C, gamma, len_x, len_y, bandwidth)
    with torch.no_grad():
        value, E = _soft_dtw_grad_batched(C3.detach(), grid)
    return (value, E) if batched else (value[0], E[0])


# --------------------------------------------------------------------------- costs


def _unit(X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x / max(|x|, eps), max(|x|, eps))`` row-wise."""
    norm = torch.linalg.vector_norm(X, dim=-1, keepdim=True).clamp_min(COS_EPS)
    return X / norm, norm


def _cost(X: torch.Tensor, Y: torch.Tensor, kind: str) -> torch.Tensor:
    """Costs by GEMM. sqeuclidean: ``max(|x|^2 + |y|^2 - 2 x.y, 0)``;
    cosine: ``clip(1 - xh.yh, 0, 2)``."""
    if kind == "sqeuclidean":
        xx = (X * X).sum(-1).unsqueeze(-1)
        yy = (Y * Y).sum(-1).unsqueeze(-2)
        return (xx + yy - 2.0 * (X @ Y.transpose(-1, -2))).clamp_min(0.0)
    xh, yh = _unit(X)[0], _unit(Y)[0]
    return (1.0 - xh @ yh.transpose(-1, -2)).clamp(0.0, 2.0)


def _unit_vjp(xh: torch.Tensor, norm: torch.Tensor, dxh: torch.Tensor) -> torch.Tensor:
    """Pull ``dxh`` back through ``xh = x / max(|x|, eps)``: the tangent projection over |x|
    where the norm exceeds eps, ``dxh / eps`` where the floor is active."""
    tangent = dxh - (xh * dxh).sum(-1, keepdim=True) * xh
    return torch.where(norm > COS_EPS, tangent, dxh) / norm


def _cost_vjp(X: torch.Tensor, Y: torch.Tensor, G: torch.Tensor, kind: str):
    """sqeuclidean: ``dX = 2 (diag(G 1) X - G Y)``, ``dY = 2 (diag(G^T 1) Y - G^T X)``.
    cosine: ``K = G * 1[0 <= 1 - xh.yh <= 2]``, ``dXh = -K Yh``, ``dYh = -K^T Xh``, each
    pulled back through the normalisation (:func:`_unit_vjp`)."""
    Gt = G.transpose(-1, -2)
    if kind == "sqeuclidean":
        dX = 2.0 * (G.sum(-1).unsqueeze(-1) * X - G @ Y)
        dY = 2.0 * (Gt.sum(-1).unsqueeze(-1) * Y - Gt @ X)
        return dX, dY
    (xh, nx), (yh, ny) = _unit(X), _unit(Y)
    raw = 1.0 - xh @ yh.transpose(-1, -2)
    K = G * ((raw >= 0.0) & (raw <= 2.0))
    return _unit_vjp(xh, nx, -(K @ yh)), _unit_vjp(yh, ny, -(K.transpose(-1, -2) @ xh))


class _Cost(torch.autograd.Function):
    """``C = sdtw_cost(X, Y)`` whose backward is exactly :func:`sdtw_cost_vjp` (the clamp of
    the GEMM form only absorbs rounding and is not differentiated)."""

    @staticmethod
    def forward(ctx, X, Y, kind):
        ctx.kind = kind
        ctx.save_for_backward(X, Y)
        return _cost(X, Y, kind)

    @staticmethod
    @once_differentiable
    def backward(ctx, G):
        X, Y = ctx.saved_tensors
        dX, dY = _cost_vjp(X, Y, G, ctx.kind)
        return dX, dY, None


def sdtw_cost(X, Y, *, kind="sqeuclidean"):
    """Pairwise cost: (n,d),(m,d) -> (n,m), or (B,N,d),(B,M,d) -> (B,N,M), by GEMM.

    ``kind="sqeuclidean"``: ``C_ij = max(|x_i|^2 + |y_j|^2 - 2 x_i.y_j, 0)``;
    ``kind="cosine"``: ``C_ij = clip(1 - xh_i.yh_j, 0, 2)``, ``xh = x / max(|x|, 1e-8)``.
    Differentiable by autograd with the gradient of :func:`sdtw_cost_vjp`."""
    _native(X=X, Y=Y)
    V.sdtw_points(X, Y)
    return _Cost.apply(X, Y, V.cost_kind(kind))


def sdtw_cost_vjp(X, Y, G, *, kind="sqeuclidean"):
    """``(dX, dY) = (sum_ij G_ij dC_ij/dX, sum_ij G_ij dC_ij/dY)`` for ``C = sdtw_cost(X, Y)``
    (formulas in :func:`_cost_vjp`); two GEMMs per output."""
    _native(X=X, Y=Y, G=G)
    shape, _ = V.sdtw_points(X, Y)
    kind = V.cost_kind(kind)
    V.cotangent(G, "G", ((shape.B,) if shape.batched else ()) + (shape.N, shape.M), X)
    return _cost_vjp(X, Y, G, kind)


# --------------------------------------------------------------------------- divergence


def _pad_square(C: torch.Tensor, L: int) -> torch.Tensor:
    """Zero-pad the last two dims to L x L (the padding is outside every valid block)."""
    return F.pad(C, (0, L - C.shape[2], 0, L - C.shape[1]))


def _divergence(X, Y, gamma, kind, len_x, len_y, penalty, bandwidth, explicit: bool):
    """Shared body of the divergence and its gradient.

    ``D = sdtw(C_xy + P) - sdtw(C_xx)/2 - sdtw(C_yy)/2`` per pair. Rows beyond each pair's
    length are zeroed before any GEMM (NaN padding cannot reach a product), the penalty is
    zeroed outside the valid block, pairs with a zero length are dropped (value 0, zero
    gradient), and the 3 DPs of the remaining pairs run as one batch of jobs.
    ``explicit=False`` builds the value from autograd Functions; ``explicit=True`` returns
    ``(value, dX, dY)`` from the explicit E and cost VJPs, without autograd."""
    _native(X=X, Y=Y, len_x=len_x, len_y=len_y, penalty=penalty)
    args = V.divergence_args(X, Y, gamma, kind, len_x, len_y, penalty, bandwidth,
                             to_numpy=to_numpy)
    batched, dev = args.shape.batched, X.device
    X3 = X if batched else X.unsqueeze(0)
    Y3 = Y if batched else Y.unsqueeze(0)
    P3 = penalty if (penalty is None or batched) else penalty.unsqueeze(0)
    B, N, M = args.shape.B, args.shape.N, args.shape.M
    active = np.flatnonzero((args.len_x > 0) & (args.len_y > 0))
    lx, ly = args.len_x[active], args.len_y[active]
    if len(active) < B:
        sel = _host_index(active, dev)
        X3, Y3 = X3[sel], Y3[sel]
        P3 = None if P3 is None else P3[sel]
    Bs = len(active)

    def unbatch(value, dX3, dY3):
        """Back to all B pairs (zeros for the dropped ones) and to the caller's ndim."""
        if Bs < B:
            sel = _host_index(active, dev)
            value = value.new_zeros(B).index_put((sel,), value)
            if dX3 is not None:
                dX3 = dX3.new_zeros((B, N, X.shape[-1])).index_put((sel,), dX3)
                dY3 = dY3.new_zeros((B, M, Y.shape[-1])).index_put((sel,), dY3)
        if not batched:
            value = value[0]
            dX3 = None if dX3 is None else dX3[0]
            dY3 = None if dY3 is None else dY3[0]
        return value, dX3, dY3

    if Bs == 0:  # every pair has a zero length: value 0, zero gradients
        value, dX, dY = unbatch(X3.new_zeros(0), X3.new_zeros((0, N, X.shape[-1])),
                                Y3.new_zeros((0, M, Y.shape[-1])))
        if explicit:
            return value, dX, dY
        # keep the (zero) dependence on X and Y so that autograd still reaches them
        return value + X.reshape(-1)[:0].sum() + Y.reshape(-1)[:0].sum()

    row_x = torch.arange(N, device=dev) < _host_index(lx, dev).view(-1, 1)   # (Bs, N)
    row_y = torch.arange(M, device=dev) < _host_index(ly, dev).view(-1, 1)   # (Bs, M)
    Xm = torch.where(row_x.unsqueeze(-1), X3, 0.0)
    Ym = torch.where(row_y.unsqueeze(-1), Y3, 0.0)
    cost = (lambda u, v: _cost(u, v, args.kind)) if explicit else (
        lambda u, v: _Cost.apply(u, v, args.kind))
    C_xy, C_xx, C_yy = cost(Xm, Ym), cost(Xm, Xm), cost(Ym, Ym)
    if P3 is not None:
        block = row_x.unsqueeze(-1) & row_y.unsqueeze(-2)
        C_xy = C_xy + torch.where(block, P3, 0.0)
    L = max(N, M)
    jobs = torch.cat((_pad_square(C_xy, L), _pad_square(C_xx, L), _pad_square(C_yy, L)))
    grid = _grid(L, L, np.concatenate((lx, lx, ly)), np.concatenate((ly, lx, ly)),
                 args.bandwidth, args.gamma)
    if not explicit:
        values = _SoftDTW.apply(jobs, grid)
        value = values[:Bs] - 0.5 * values[Bs:2 * Bs] - 0.5 * values[2 * Bs:]
        return unbatch(value, None, None)[0]

    values, E = _soft_dtw_grad_batched(jobs, grid)
    value = values[:Bs] - 0.5 * values[Bs:2 * Bs] - 0.5 * values[2 * Bs:]
    E_xy, E_xx, E_yy = E[:Bs, :N, :M], E[Bs:2 * Bs, :N, :N], E[2 * Bs:, :M, :M]
    dX_xy, dY_xy = _cost_vjp(Xm, Ym, E_xy, args.kind)
    dX_a, dX_b = _cost_vjp(Xm, Xm, E_xx, args.kind)      # X enters rows and columns of C_xx
    dY_a, dY_b = _cost_vjp(Ym, Ym, E_yy, args.kind)
    dX = torch.where(row_x.unsqueeze(-1), dX_xy - 0.5 * (dX_a + dX_b), 0.0)
    dY = torch.where(row_y.unsqueeze(-1), dY_xy - 0.5 * (dY_a + dY_b), 0.0)
    return unbatch(value, dX, dY)


def soft_dtw_divergence(X, Y, gamma, *, kind="sqeuclidean", len_x=None, len_y=None,
                        penalty=None, bandwidth=None):
    """Soft-DTW divergence ``sdtw(C_xy + P) - sdtw(C_xx)/2 - sdtw(C_yy)/2`` per pair.

    X (n,d) / Y (m,d) (0-d result), or batches (B,N,d) / (B,M,d) (result (B,)) with per-pair
    integer lengths (0 allowed: that pair's value is 0). Differentiable by autograd w.r.t.
    X and Y (and ``penalty``), with the gradients of :func:`soft_dtw_divergence_grad`."""
    return _divergence(X, Y, gamma, kind, len_x, len_y, penalty, bandwidth, explicit=False)


def soft_dtw_divergence_grad(X, Y, gamma, *, kind="sqeuclidean", len_x=None, len_y=None,
                             penalty=None, bandwidth=None):
    """``(value, dX, dY)``: ``dX = vjp_X(C_xy, E_xy) - (both slots of vjp(C_xx, E_xx))/2``,
    likewise for Y; padded rows and zero-length pairs get zero gradient."""
    with torch.no_grad():
        return _divergence(X, Y, gamma, kind, len_x, len_y, penalty, bandwidth, explicit=True)
