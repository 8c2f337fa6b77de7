r"""Soft-DTW and the Soft-DTW divergence — the float64 reference.

Papers: Cuturi & Blondel, "Soft-DTW: a Differentiable Loss Function for Time-Series"
(ICML 2017, arXiv 1703.01541); Blondel, Mensch & Vert, "Differentiable Divergences Between
Time Series" (AISTATS 2021, arXiv 2010.08354).

Equations as implemented (1-based DP indices, 0-based arrays)::

    softmin_g(a_1..a_k) = r - g log sum_k exp(-(a_k - r)/g),  r = min_k a_k  (+inf if r = +inf)
    R[0,0] = 0,  R[i,0] = R[0,j] = +inf,
    R[i,j] = C[i,j] + softmin_g(R[i-1,j-1], R[i-1,j], R[i,j-1]),   sdtw_g(C) = R[n,m]

Gradient ``E = d sdtw / dC`` (the expected alignment under p(A) ~ exp(-<A,C>/g)), by the
backward recursion with *normalised* predecessor weights: for each cell s with predecessors
P(s) = {(i-1,j-1), (i-1,j), (i,j-1)}, ``pi_s(k) = exp(-(R[k]-r_s)/g) / sum_{k'} exp(-(R[k']-r_s)/g)``;
``E[n,m] = 1`` and, in reverse order, each cell pushes ``pi_s(k) E[s]`` to its predecessors k.
(This equals the paper's ``a, b, c`` form because ``R[s] - C[s]`` is the softmin of P(s),
but never exponentiates differences of large numbers.)

Divergence: ``D_g(X,Y) = sdtw_g(C_xy + P) - sdtw_g(C_xx)/2 - sdtw_g(C_yy)/2`` with an optional
non-negative penalty P on the cross term only (how DWA-KD adds its soft band).

Conventions (ours): per-pair lengths ``len_x``, ``len_y`` on padded (B, N, M) batches — padding
is never read; a Sakoe-Chiba band ``bandwidth=r`` widened by |n - m| exactly like tslearn's
``sakoe_chiba_mask`` so the end cell is always reachable. Cells outside the band act as
``R = +inf`` and get ``E = 0``. ``+inf`` costs are allowed; if no finite path remains the value
is ``+inf`` and ``E = 0``. NaN inside a valid block propagates (it is never masked).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import gammaln, logsumexp

from refimpl import _validate as V

__all__ = [
    "soft_dtw", "soft_dtw_grad", "sdtw_cost", "sdtw_cost_vjp", "soft_dtw_divergence",
    "soft_dtw_divergence_grad", "dtw", "soft_dtw_bruteforce", "log_delannoy", "in_band",
]

COS_EPS = 1e-8  # norm floor of the cosine cost (reconstructed: torch cosine_similarity's eps)
INF = math.inf


# --------------------------------------------------------------------------- the recursion


def in_band(i: int, j: int, n: int, m: int, bandwidth: int | None) -> bool:
    """Whether 0-based cell (i, j) of an n x m problem lies in the widened Sakoe-Chiba band.

    ``-r <= j - i <= (m - n) + r`` when n <= m, ``-r <= i - j <= (n - m) + r`` when n > m
    (tslearn ``sakoe_chiba_mask(n, m, radius=r)``); always True when ``bandwidth`` is None."""
    if bandwidth is None:
        return True
    if n <= m:
        return -bandwidth <= j - i <= (m - n) + bandwidth
    return -bandwidth <= i - j <= (n - m) + bandwidth


def _softmin(values, gamma: float) -> float:
    r = min(values)
    if r == INF:
        return INF
    return r - gamma * math.log(sum(math.exp(-(v - r) / gamma) for v in values))


def _hardmin(values, gamma: float) -> float:
    return min(values)


def _forward(C: np.ndarray, gamma: float, bandwidth, smin=_softmin) -> list[list[float]]:
    """The DP table R (n+1 x m+1, as nested lists) of one pair."""
    n, m = C.shape
    c = C.tolist()
    R = [[INF] * (m + 1) for _ in range(n + 1)]
    R[0][0] = 0.0
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            if in_band(i - 1, j - 1, n, m, bandwidth):
                R[i][j] = c[i - 1][j - 1] + smin((R[i - 1][j - 1], R[i - 1][j], R[i][j - 1]), gamma)
    return R


def _backward(R: list[list[float]], gamma: float) -> np.ndarray:
    """Expected alignment E (n x m) from the table R by the normalised-weight recursion."""
    n, m = len(R) - 1, len(R[0]) - 1
    E = [[0.0] * (m + 1) for _ in range(n + 1)]
    if not math.isfinite(R[n][m]):  # +inf: no finite path, E = 0; NaN propagates
        return np.full((n, m), R[n][m] if math.isnan(R[n][m]) else 0.0)
    E[n][m] = 1.0
    for i in range(n, 0, -1):
        for j in range(m, 0, -1):
            e = E[i][j]
            if e == 0.0:
                continue
            preds = ((i - 1, j - 1), (i - 1, j), (i, j - 1))
            vals = [R[p][q] for p, q in preds]
            r = min(vals)
            w = [math.exp(-(v - r) / gamma) for v in vals]
            z = sum(w)
            for (p, q), wk in zip(preds, w):
                E[p][q] += e * wk / z
    return np.array([row[1:] for row in E[1:]])


def _pairs(C: np.ndarray, len_x: np.ndarray, len_y: np.ndarray):
    """Valid blocks ``C[b, :len_x[b], :len_y[b]]`` of a (B, N, M) float64 batch."""
    for b in range(C.shape[0]):
        yield b, C[b, : len_x[b], : len_y[b]]


def _batch(C) -> np.ndarray:
    return C.astype(np.float64).reshape((-1,) + C.shape[-2:])


def _unbatch(values: list[float], batched: bool) -> np.ndarray:
    out = np.asarray(values, dtype=np.float64)
    return out if batched else out.reshape(())


# --------------------------------------------------------------------------- public ops


def soft_dtw(C, gamma, *, len_x=None, len_y=None, bandwidth=None):
    """Soft-DTW value ``R[n, m]`` of a cost matrix (n, m) or of each pair of a batch (B, N, M).

    Returns a 0-d array, or shape (B,). ``gamma > 0``; ``len_x``/``len_y`` (B,) per-pair
    lengths (None = full); ``bandwidth`` the widened Sakoe-Chiba radius (None = no band)."""
    C = V.host_array(C, "C")
    args = V.soft_dtw_args(C, gamma, len_x, len_y, bandwidth)
    values = [_forward(c, args.gamma, args.bandwidth)[-1][-1]
              for _, c in _pairs(_batch(C), args.len_x, args.len_y)]
    return _unbatch(values, args.shape.batched)


def soft_dtw_grad(C, gamma, *, len_x=None, len_y=None, bandwidth=None):
    """``(value, E)``: the Soft-DTW value and ``E = d value / dC`` (same shape as C, exactly
    0 outside each pair's valid block and outside the band)."""
    C = V.host_array(C, "C")
    args = V.soft_dtw_args(C, gamma, len_x, len_y, bandwidth)
    C3 = _batch(C)
    E = np.zeros_like(C3)
    values = []
    for b, c in _pairs(C3, args.len_x, args.len_y):
        R = _forward(c, args.gamma, args.bandwidth)
        values.append(R[-1][-1])
        E[b, : c.shape[0], : c.shape[1]] = _backward(R, args.gamma)
    return _unbatch(values, args.shape.batched), E.reshape(C.shape)


def dtw(C, *, len_x=None, len_y=None, bandwidth=None):
    """Hard DTW (the gamma -> 0 limit): the same recursion with ``min`` instead of softmin."""
    C = V.host_array(C, "C")
    args = V.soft_dtw_args(C, 1.0, len_x, len_y, bandwidth)
    values = [_forward(c, 1.0, args.bandwidth, smin=_hardmin)[-1][-1]
              for _, c in _pairs(_batch(C), args.len_x, args.len_y)]
    return _unbatch(values, args.shape.batched)


def _sqeuclidean(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return ((x[..., :, None, :] - y[..., None, :, :]) ** 2).sum(-1)


def _unit(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(x / max(|x|, eps), max(|x|, eps))`` row-wise."""
    norm = np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), COS_EPS)
    return x / norm, norm


def sdtw_cost(X, Y, *, kind="sqeuclidean"):
    """Pairwise cost for Soft-DTW: (n,d),(m,d) -> (n,m), or (B,N,d),(B,M,d) -> (B,N,M).

    ``kind="sqeuclidean"``: ``C_ij = |x_i - y_j|^2`` (explicit differences).
    ``kind="cosine"``: ``C_ij = clip(1 - xh_i . yh_j, 0, 2)``, ``xh = x / max(|x|, 1e-8)``."""
    X, Y = V.host_array(X, "X"), V.host_array(Y, "Y")
    V.sdtw_points(X, Y)
    kind = V.cost_kind(kind)
    X, Y = X.astype(np.float64), Y.astype(np.float64)
    if kind == "sqeuclidean":
        return _sqeuclidean(X, Y)
    xh, yh = _unit(X)[0], _unit(Y)[0]
    return np.clip(1.0 - np.einsum("...id,...jd->...ij", xh, yh), 0.0, 2.0)


def sdtw_cost_vjp(X, Y, G, *, kind="sqeuclidean"):
    """``(dX, dY) = (sum_ij G_ij dC_ij/dX, sum_ij G_ij dC_ij/dY)`` for ``C = sdtw_cost(X, Y)``.

    sqeuclidean: ``dX = 2 (diag(G 1) X - G Y)``, ``dY = 2 (diag(G^T 1) Y - G^T X)``.
    cosine: ``K = G * 1[0 <= 1 - xh.yh <= 2]``, ``dXh = -K Yh``,
    ``dX_i = (dXh_i - (xh_i . dXh_i) xh_i) / |x_i|`` (and ``dXh_i / 1e-8`` where the norm
    floor is active, the exact derivative of the clamp); symmetric for Y with ``K^T Xh``."""
    X, Y, G = V.host_array(X, "X"), V.host_array(Y, "Y"), V.host_array(G, "G")
    shape, _ = V.sdtw_points(X, Y)
    kind = V.cost_kind(kind)
    V.cotangent(G, "G", ((shape.B,) if shape.batched else ()) + (shape.N, shape.M), X)
    X, Y, G = X.astype(np.float64), Y.astype(np.float64), G.astype(np.float64)
    Gt = np.swapaxes(G, -1, -2)
    if kind == "sqeuclidean":
        dX = 2.0 * (G.sum(-1)[..., None] * X - G @ Y)
        dY = 2.0 * (Gt.sum(-1)[..., None] * Y - Gt @ X)
        return dX, dY
    (xh, nx), (yh, ny) = _unit(X), _unit(Y)
    raw = 1.0 - xh @ np.swapaxes(yh, -1, -2)
    K = G * ((raw >= 0.0) & (raw <= 2.0))
    return (_unit_vjp(xh, nx, -K @ yh),
            _unit_vjp(yh, ny, -np.swapaxes(K, -1, -2) @ xh))


def _unit_vjp(xh: np.ndarray, norm: np.ndarray, dxh: np.ndarray) -> np.ndarray:
    """Pull ``dxh`` back through ``xh = x / max(|x|, eps)``."""
    tangent = dxh - (xh * dxh).sum(-1, keepdims=True) * xh
    return np.where(norm > COS_EPS, tangent, dxh) / norm


def _divergence_pair(x, y, P, gamma, kind, bandwidth, need_grad):
    """Value (and dx, dy) of the divergence for one pair of valid, unpadded sequences."""
    if x.shape[0] == 0 or y.shape[0] == 0:
        return 0.0, np.zeros_like(x), np.zeros_like(y)
    value, dx, dy = 0.0, np.zeros_like(x), np.zeros_like(y)
    # (left, right, weight, penalty, where the left-slot and right-slot gradients go)
    terms = ((x, y, 1.0, P, (dx, dy)), (x, x, -0.5, None, (dx, dx)), (y, y, -0.5, None, (dy, dy)))
    for u, v, weight, pen, (to_u, to_v) in terms:
        C = sdtw_cost(u, v, kind=kind) + (0.0 if pen is None else pen)
        R = _forward(C, gamma, bandwidth)
        value += weight * R[-1][-1]
        if need_grad:
            du, dv = sdtw_cost_vjp(u, v, _backward(R, gamma), kind=kind)
            to_u += weight * du
            to_v += weight * dv
    return value, dx, dy


def _divergence(X, Y, gamma, kind, len_x, len_y, penalty, bandwidth, need_grad):
    X, Y = V.host_array(X, "X"), V.host_array(Y, "Y")
    P = None if penalty is None else V.host_array(penalty, "penalty")
    args = V.divergence_args(X, Y, gamma, kind, len_x, len_y, P, bandwidth)
    X3 = X.astype(np.float64).reshape((-1,) + X.shape[-2:])
    Y3 = Y.astype(np.float64).reshape((-1,) + Y.shape[-2:])
    P3 = None if P is None else P.astype(np.float64).reshape((-1,) + P.shape[-2:])
    dX, dY = np.zeros_like(X3), np.zeros_like(Y3)
    values = []
    for b in range(X3.shape[0]):
        lx, ly = args.len_x[b], args.len_y[b]
        pen = None if P3 is None else P3[b, :lx, :ly]
        v, dx, dy = _divergence_pair(X3[b, :lx], Y3[b, :ly], pen, args.gamma, args.kind,
                                     args.bandwidth, need_grad)
        values.append(v)
        dX[b, :lx], dY[b, :ly] = dx, dy
    return _unbatch(values, args.shape.batched), dX.reshape(X.shape), dY.reshape(Y.shape)


def soft_dtw_divergence(X, Y, gamma, *, kind="sqeuclidean", len_x=None, len_y=None,
                        penalty=None, bandwidth=None):
    """Soft-DTW divergence ``sdtw(C_xy + P) - sdtw(C_xx)/2 - sdtw(C_yy)/2`` per pair.

    X (n,d) / Y (m,d), or batches (B,N,d) / (B,M,d) with per-pair lengths (0 allowed: that
    pair's value is 0). ``penalty`` has the cross cost's shape; the band applies to all three
    DPs with each one's own lengths."""
    return _divergence(X, Y, gamma, kind, len_x, len_y, penalty, bandwidth, need_grad=False)[0]


def soft_dtw_divergence_grad(X, Y, gamma, *, kind="sqeuclidean", len_x=None, len_y=None,
                             penalty=None, bandwidth=None):
    """``(value, dX, dY)``: ``dX = vjp_X(C_xy, E_xy) - (both slots of vjp(C_xx, E_xx))/2``,
    likewise for Y; padded rows get zero gradient."""
    return _divergence(X, Y, gamma, kind, len_x, len_y, penalty, bandwidth, need_grad=True)


# --------------------------------------------------------------------------- oracles


def log_delannoy(a: int, b: int) -> float:
    """``log Del(a, b) = log sum_k binom(a,k) binom(b,k) 2^k``: the log-number of monotone
    alignments of an (a+1) x (b+1) grid."""
    k = np.arange(min(a, b) + 1)
    terms = (gammaln(a + 1) - gammaln(k + 1) - gammaln(a - k + 1)
             + gammaln(b + 1) - gammaln(k + 1) - gammaln(b - k + 1) + k * math.log(2.0))
    return float(logsumexp(terms))


def _paths(n: int, m: int, bandwidth):
    """All monotone alignment paths of an n x m grid inside the band, as lists of cells."""
    def extend(path):
        i, j = path[-1]
        if (i, j) == (n - 1, m - 1):
            yield path
            return
        for di, dj in ((1, 1), (1, 0), (0, 1)):
            p, q = i + di, j + dj
            if p < n and q < m and in_band(p, q, n, m, bandwidth):
                yield from extend(path + [(p, q)])
    yield from extend([(0, 0)])


def soft_dtw_bruteforce(C, gamma, *, bandwidth=None):
    """``(value, E)`` by enumerating every alignment A: ``value = -g log sum_A exp(-<A,C>/g)``,
    ``E = sum_A p(A) A``. For n, m <= 6 only (an oracle for the recursions)."""
    C = V.host_array(C, "C")
    shape = V.sdtw_cost_matrix(C)
    gamma, bandwidth = V.sdtw_gamma(gamma), V.sdtw_bandwidth(bandwidth)
    if shape.batched or shape.N > 6 or shape.M > 6:
        raise ValueError(f"C must be 2-D with n, m <= 6 for path enumeration, got {C.shape}")
    C = C.astype(np.float64)
    paths = list(_paths(shape.N, shape.M, bandwidth))
    costs = np.array([sum(C[i, j] for i, j in p) for p in paths])
    value = -gamma * logsumexp(-costs / gamma)
    weights = np.exp(-(costs - value) / gamma)
    E = np.zeros_like(C)
    for w, p in zip(weights, paths):
        for i, j in p:
            E[i, j] += w
    return np.asarray(value), E

