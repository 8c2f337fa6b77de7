r"""Inf-SSM: observability-subspace distances of diagonal state space models, the float64
NumPy/SciPy reference.

Paper: Lee, Mahmoodi, Le, Harandi, "Exemplar-Free Continual Learning for State Space Models",
arXiv 2505.18604. Official code: ``isaacNingLee/Inf-SSM`` @9142b7e (on hustvl/Vim). The default
of every function is what that code computes. Documentation: ``docs/inf_ssm.md``.

Objects (spec sec. 1). A stable LTI system ``x_{t+1} = A x_t``, ``y_t = C x_t`` (spectral radius
of A < 1) has the extended observability matrix ``O = [C; CA; CA^2; ...]``. Grams::

    G11 = O1^T O1 = sum_k (A1^T)^k C1^T C1 A1^k        (Stein:  G11 = A1^T G11 A1 + C1^T C1)
    G12 = O1^T O2                                       (Stein-Sylvester: G12 = A1^T G12 A2 + C1^T C2)

For diagonal ``A1 = diag(a)``, ``A2 = diag(b)`` every entry decouples (the closed form of the
official ``vim/cl_methods/inf_ssm.py::solve_P``, there via the 2n x 2n joint system)::

    G12[i, j] = (C1^T C2)[i, j] / (1 - a_i b_j)          single output: c_i e_j / (1 - a_i b_j)

:func:`stein_gram_diag` / :func:`stein_cross_gram_diag` (O(p n^2)). Multi-output ``C`` (..., p, n)
is reconstructed (the code has p = 1). :func:`stein_cross_gram_dense` solves the general
(non-diagonal) equation four ways: the joint ``solve_discrete_lyapunov`` of blkdiag(A1, A2) (as
the code), ``solve_sylvester`` (A2 invertible), a column-major Kronecker system, a truncated
power series.

Code distance (``variant="code"``, official ``solve_distance_obs``)::

    d = 1 - tr(G12 G21) / (tr G11 tr G22) = 1 - ||G12||_F^2 / (tr G11 tr G22)
      = 1 - N / (S1 S2),   D_ij = 1 - a_i b_j,   N = sum_ij c_i^2 e_j^2 / D_ij^2,
                           S1 = sum_i c_i^2 / (1 - a_i^2),   S2 = sum_j e_j^2 / (1 - b_j^2)

computed in O(n^2) per system with no matrix product (the code forms P (2n x 2n) and a matmul,
O(n^3)). ``d`` lies in [0, 1], is symmetric, invariant to a common state permutation, to sign
flips and scaling of c; it is *not* a metric: the self-distance ``1 - ||G11||_F^2 / (tr G11)^2``
is > 0 unless G11 has rank 1 (n = 1), about 0.03-0.05 in the code's regime at n = 16. Nor is it
invariant to a change of state basis (it is not a function of the subspace alone). Conversely
the principled variants below see only the subspace, which for a diagonal system with distinct
a_i and all c_i != 0 is span{(1, a_i, a_i^2, ...)}: they do not depend on c at all (d/dc = 0).
Gradient (:func:`infssm_distance_grad`)::

    dN/dc_i = 2 c_i sum_j e_j^2 / D_ij^2        dN/da_i = 2 c_i^2 sum_j b_j e_j^2 / D_ij^3
    dS1/dc_i = 2 c_i / (1 - a_i^2)              dS1/da_i = 2 a_i c_i^2 / (1 - a_i^2)^2
    dd/dx = -( dN/dx / (S1 S2) - N dS1/dx / (S1^2 S2) )    x in {a_i, c_i}; (b, e) symmetric.

The distance is undefined (0/0 -> NaN, as in the code) when c = 0 or e = 0 entirely.

Principled variants (reconstructed options after De Cock & De Moor 2002; not used by the
code): with ``L1 L1^T = G11 + eps I``, ``L2 L2^T = G22 + eps I`` (Cholesky) and
``M = L1^-1 G12 L2^-T`` (two triangular solves), the cosines of the k = min(n1, n2) principal
angles are the singular values of M, so without any SVD::

    "projection":  k - sum cos^2 = k - ||M||_F^2
    "martin":      -sum log cos^2 = -log det(M M^T)   (M^T M if n1 > n2; Cholesky log-det;
                                                      +inf when an angle is 90 degrees)

``eps > 0`` is Tikhonov regularisation of the Grams (it changes the value). Conditioning
caveat: ``G11 = D_c K D_c`` with the Cauchy/Pick matrix ``K_ij = 1/(1 - a_i a_j)``; for
clustered a in (0, 0.46) and n = 16 cond(K) ~ 1e18, so these variants are numerical noise in
float64 at Mamba settings (the practical reason for the code's surrogate). A failed Cholesky
raises ValueError suggesting eps > 0. :func:`infssm_distance_dense` computes all three
variants from dense Grams (non-diagonal A); it and :func:`infssm_distance` share the Cholesky
code (:func:`_principled_from_grams`).

Mamba extraction (:func:`mamba_ac_from_scan`; official
``mamba-1p1p1/mamba_ssm/ops/selective_scan_interface.py::MambaInnerFnNoOutProj_state``)::

    A = -exp(A_log)                    (D, n)
    dt = softplus(delta_raw [+ dt_bias[:, None]])    (B, D, L); softplus = max(x,0) + log1p(exp(-|x|))
    Abar[b, l, :] = mean_d exp(dt[b, d, l] A[d, :])  ("mean", the code; "none" keeps d: reconstructed)
    c[b, l, :] = C[b, :, l]
    squash: a = tanh(Abar / 2) = 2 sigmoid(Abar) - 1,   c = tanh(c / 2)

rows flattened (b, l) row-major -> m = B L systems. The code omits ``dt_proj.bias`` from the
statistic (``dt_bias=None``).

Regulariser (:func:`infssm_reg_loss`, official ``vim/cl_methods/inf_ssm.py``)::

    L = lam * mean_s L_s,   L_s = mean_r d_code(a_new_r, c_new_r; a_old_r, c_old_r)   ("inf_ssm")
                            L_s = mean((a_new - a_old)^2) + mean((c_new - c_old)^2)    ("mse")

with the code's per-scan shortcut: if ``allclose(a_new, a_old)`` and ``allclose(c_new, c_old)``
(torch defaults: ``|new - old| <= 1e-8 + 1e-5 |old|``) scan s contributes an exact 0 with zero
gradient. Consequence: on the first step of each task (new model == frozen old model) the
regulariser has no gradient at all; the loss jumps to ~lam * 0.05 once the models differ.
:func:`infssm_reg_loss_grad` returns the gradient w.r.t. the new pairs only (the old model is
frozen).

Everything computes in float64 (inputs are upcast) and returns float64 NumPy arrays (0-d for
scalars). Inputs are validated by :mod:`refimpl._validate` (same messages on every backend).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import linalg as sla

from refimpl import _validate as V

__all__ = [
    "stein_gram_diag", "stein_cross_gram_diag", "stein_cross_gram_dense", "infssm_distance",
    "infssm_distance_dense", "infssm_distance_grad", "infssm_distance_vjp", "mamba_ac_from_scan",
    "mamba_ac_from_scan_vjp", "infssm_reg_loss", "infssm_reg_loss_grad",
]

DENSE_METHODS = ("lyapunov", "sylvester", "kron", "series")
SERIES_TOL = 1e-18          # truncation of the power series: (rho1 rho2)^T <= SERIES_TOL
SERIES_MAX_TERMS = 1_000_000
KRON_MAX = 4096             # n1 * n2 limit of the Kronecker system (it is (n1 n2)^2 dense)
ALLCLOSE_RTOL, ALLCLOSE_ATOL = 1e-5, 1e-8   # torch.allclose defaults (the code's shortcut)


# --------------------------------------------------------------------------- helpers


def _f64(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


def _cross_gram(a, C1, b, C2, p):
    """``(C1^T C2)_ij / (1 - a_i b_j)``, batched; ``p = 0``: vectors (outer product)."""
    D = 1.0 - a[..., :, None] * b[..., None, :]
    if p == 0:
        Q = C1[..., :, None] * C2[..., None, :]
    else:
        Q = np.einsum("...pi,...pj->...ij", C1, C2)
    return Q / D


def _gram_vjp(g, a, c, b, e):
    """Adjoint of ``G = c e^T / (1 - a b^T)`` (single output, one system pair):
    cotangent ``g`` (n1, n2) -> (da, dc, db, de)."""
    D = 1.0 - np.outer(a, b)
    gD = g / D                     # d G_ij / d(c_i e_j) = 1 / D_ij
    G = np.outer(c, e) / D
    gGD = g * G / D                # d G_ij / d D_ij = -G_ij / D_ij; d D_ij / d a_i = -b_j
    return gGD @ b, gD @ e, a @ gGD, c @ gD


# --------------------------------------------------------------------------- Grams


def stein_gram_diag(a, C):
    """Observability Gram of ``(diag(a), C)``: ``G[i, j] = (C^T C)_ij / (1 - a_i a_j)``.

    ``a`` (..., n), ``C`` (..., n) (one output: ``c_i c_j / (1 - a_i a_j)``) or (..., p, n).
    Returns (..., n, n), symmetric positive semi-definite."""
    a, C = V.host_array(a, "a"), V.host_array(C, "C")
    _, p, _ = V.diag_system(a, C, ("a", "C"))
    a, C = _f64(a), _f64(C)
    return _cross_gram(a, C, a, C, p)


def stein_cross_gram_diag(a, C1, b, C2):
    """Cross-Gram ``G12 = O1^T O2`` of two diagonal systems (the ``solve_P`` closed form).

    ``a`` (..., n1), ``C1`` (..., n1) or (..., p, n1); ``b``, ``C2`` likewise with n2.
    ``G12[i, j] = (C1^T C2)_ij / (1 - a_i b_j)``; returns (..., n1, n2)."""
    a, C1, b, C2 = (V.host_array(x, nm) for x, nm in ((a, "a"), (C1, "C1"), (b, "b"), (C2, "C2")))
    _, p, _, _ = V.cross_gram_args(a, C1, b, C2)
    return _cross_gram(_f64(a), _f64(C1), _f64(b), _f64(C2), p)


def _dense_system(A, C, nA, nC):
    A, C = V.host_array(A, nA), V.host_array(C, nC)
    V.float_array(A, nA, ndims=(2,))
    V.float_array(C, nC, ndims=(1, 2))
    if A.shape[0] != A.shape[1] or A.shape[0] < 1:
        raise ValueError(f"{nA} must be a non-empty square matrix (n, n), got {A.shape}")
    n = A.shape[0]
    C = C.reshape(1, -1) if C.ndim == 1 else C
    if C.shape[1] != n:
        raise ValueError(f"{nC} must have shape (p, {n}) ({nA} is {n} x {n}), got {C.shape}")
    A, C = _f64(A), _f64(C)
    for nm, x in ((nA, A), (nC, C)):
        if not np.all(np.isfinite(x)):
            raise ValueError(f"{nm} contains NaN or inf")
    rho = float(np.max(np.abs(np.linalg.eigvals(A))))
    if rho >= 1.0:
        raise ValueError(f"{nA} must be stable: all |eigenvalues| < 1 (spectral radius < 1, else "
                         f"the Gram series diverges), got spectral radius {rho:.17g}")
    return A, C, rho


def stein_cross_gram_dense(A1, C1, A2, C2, method="lyapunov"):
    """Dense oracle for ``G12 = A1^T G12 A2 + C1^T C2`` (any stable A1 (n1, n1), A2 (n2, n2);
    C1 (p, n1), C2 (p, n2); a 1-D C is one output). Returns (n1, n2).

    method "lyapunov": ``solve_discrete_lyapunov(blkdiag(A1, A2)^T, C^T C)``, C = [C1 C2],
    off-diagonal block (the official code's construction of P); "sylvester":
    ``solve_sylvester(A1^T, -A2^-1, -Q A2^-1)`` (Bartels-Stewart; needs invertible A2);
    "kron": ``(I - kron(A2^T, A1^T)) vec(X) = vec(Q)``, column-major vec (n1 n2 <= 4096);
    "series": ``sum_{k<T} (A1^T)^k Q A2^k``, ``T = ceil(log(1e-18) / log(rho1 rho2)) + n1 + n2``
    (the extra n1 + n2 terms cover the transient of non-normal A)."""
    A1, C1, rho1 = _dense_system(A1, C1, "A1", "C1")
    A2, C2, rho2 = _dense_system(A2, C2, "A2", "C2")
    if C1.shape[0] != C2.shape[0]:
        raise ValueError(f"C1 and C2 must have the same number of outputs p, got {C1.shape} and "
                         f"{C2.shape}")
    V.choice(method, "method", DENSE_METHODS)
    n1, n2 = A1.shape[0], A2.shape[0]
    Q = C1.T @ C2
    if method == "lyapunov":
        A = sla.block_diag(A1, A2)
        C = np.hstack([C1, C2])
        P = sla.solve_discrete_lyapunov(A.T, C.T @ C)
        return P[:n1, n1:]
    if method == "sylvester":
        s = np.linalg.svd(A2, compute_uv=False)
        if s[-1] <= 1e-12 * max(s[0], 1e-300):
            raise ValueError(f"method='sylvester' needs an invertible A2 (it solves "
                             f"A1^T X - X A2^-1 = -Q A2^-1); A2 is singular (smallest singular "
                             f"value {s[-1]:.3g}); use method='lyapunov'")
        A2inv = np.linalg.inv(A2)
        return sla.solve_sylvester(A1.T, -A2inv, -Q @ A2inv)
    if method == "kron":
        if n1 * n2 > KRON_MAX:
            raise ValueError(f"method='kron' builds a dense (n1 n2)^2 system; n1 n2 must be <= "
                             f"{KRON_MAX}, got {n1 * n2}")
        K = np.eye(n1 * n2) - np.kron(A2.T, A1.T)
        x = np.linalg.solve(K, Q.reshape(-1, order="F"))
        return x.reshape(n1, n2, order="F")
    rho = rho1 * rho2
    T = (0 if rho == 0.0 else math.ceil(math.log(SERIES_TOL) / math.log(rho))) + n1 + n2
    if T > SERIES_MAX_TERMS:
        raise ValueError(f"method='series' would need {T} terms (rho1 rho2 = {rho:.17g} is too "
                         f"close to 1); use method='lyapunov'")
    X, term = Q.copy(), Q
    for _ in range(T - 1):
        term = A1.T @ term @ A2
        X += term
    return X


# --------------------------------------------------------------------------- distances


def _code_terms(a, c, b, e):
    """``N, S1, S2, D`` of the code distance, batched, O(n1 n2) per system."""
    D = 1.0 - a[..., :, None] * b[..., None, :]
    c2, e2 = c * c, e * e
    N = np.einsum("...i,...ij,...j->...", c2, 1.0 / (D * D), e2)
    S1 = np.sum(c2 / (1.0 - a * a), axis=-1)
    S2 = np.sum(e2 / (1.0 - b * b), axis=-1)
    return N, S1, S2, D


def _code_value(a, c, b, e):
    """The code distance ``1 - N / (S1 S2)``, batched."""
    N, S1, S2, _ = _code_terms(a, c, b, e)
    return 1.0 - N / (S1 * S2)


def _cholesky(G, name, eps):
    try:
        return np.linalg.cholesky(G + eps * np.eye(G.shape[0]))
    except np.linalg.LinAlgError:
        raise V.gram_not_positive_definite(name, eps) from None


def _principled_from_grams(G11, G12, G22, variant, eps):
    """Principal-angle distance of one pair from its Grams (the single Cholesky code path).

    ``M = L1^-1 G12 L2^-T``; "projection" ``k - ||M||_F^2``, "martin" ``-log det(M M^T)``."""
    L1 = _cholesky(G11, "G11", eps)
    L2 = _cholesky(G22, "G22", eps)
    M = sla.solve_triangular(L1, G12, lower=True)             # L1^-1 G12
    M = sla.solve_triangular(L2, M.T, lower=True).T           # (L1^-1 G12) L2^-T
    k = min(M.shape)
    if variant == "projection":
        return k - float(np.sum(M * M))
    if M.shape[0] > M.shape[1]:
        M = M.T
    try:
        Lw = np.linalg.cholesky(M @ M.T)
    except np.linalg.LinAlgError:
        return math.inf        # an angle of 90 degrees (a cosine 0): -log 0
    return -2.0 * float(np.sum(np.log(np.diag(Lw))))


def _principled_batched(a, c, b, e, variant, eps):
    lead = a.shape[:-1]
    af, cf = a.reshape(-1, a.shape[-1]), c.reshape(-1, a.shape[-1])
    bf, ef = b.reshape(-1, b.shape[-1]), e.reshape(-1, b.shape[-1])
    out = np.empty(af.shape[0])
    for r in range(af.shape[0]):
        G11 = _cross_gram(af[r], cf[r], af[r], cf[r], 0)
        G22 = _cross_gram(bf[r], ef[r], bf[r], ef[r], 0)
        G12 = _cross_gram(af[r], cf[r], bf[r], ef[r], 0)
        out[r] = _principled_from_grams(G11, G12, G22, variant, eps)
    return out.reshape(lead)


def _distance_inputs(a, c, b, e, variant, eps):
    a, c, b, e = (V.host_array(x, nm) for x, nm in ((a, "a"), (c, "c"), (b, "b"), (e, "e")))
    V.infssm_args(a, c, b, e, variant, eps)
    return _f64(a), _f64(c), _f64(b), _f64(e)


def infssm_distance(a, c, b, e, variant="code", eps=0.0):
    """Distance between the observability subspaces of ``(diag(a), c)`` and ``(diag(b), e)``.

    ``a``, ``c`` (..., n1); ``b``, ``e`` (..., n2); one single-output system pair per leading
    index. "code" (default, the official ``solve_distance_obs``):
    ``1 - ||G12||_F^2 / (tr G11 tr G22)`` in O(n1 n2) (``eps`` unused); "projection" /
    "martin": principal angles via Cholesky of ``G + eps I`` (see the module docstring; a
    Python loop over the batch). Returns (...,)."""
    a, c, b, e = _distance_inputs(a, c, b, e, variant, eps)
    if variant == "code":
        return _code_value(a, c, b, e)
    return _principled_batched(a, c, b, e, variant, float(eps))


def infssm_distance_dense(A1, C1, A2, C2, variant="code", eps=0.0):
    """The three distances for general (non-diagonal) systems from dense Grams
    (:func:`stein_cross_gram_dense`, Lyapunov method): one pair, returns a 0-d array.
    "code" is ``1 - ||G12||_F^2 / (tr G11 tr G22)``; the principled variants use the same
    Cholesky code as :func:`infssm_distance`."""
    V.choice(variant, "variant", V.INFSSM_VARIANTS)
    eps = V.nonneg_float(eps, "eps")
    G11 = stein_cross_gram_dense(A1, C1, A1, C1)
    G22 = stein_cross_gram_dense(A2, C2, A2, C2)
    G12 = stein_cross_gram_dense(A1, C1, A2, C2)
    if variant == "code":
        return np.asarray(1.0 - np.sum(G12 * G12) / (np.trace(G11) * np.trace(G22)))
    return np.asarray(_principled_from_grams(G11, G12, G22, variant, eps))


def _code_grad(a, c, b, e):
    """``(d, da, dc, db, de)`` of the code distance by the explicit formulas (spec sec. 2)."""
    N, S1, S2, D = _code_terms(a, c, b, e)
    c2, e2 = c * c, e * e
    D2, D3 = D * D, D * D * D
    dN_dc = 2.0 * c * np.einsum("...ij,...j->...i", 1.0 / D2, e2)
    dN_da = 2.0 * c2 * np.einsum("...ij,...j->...i", 1.0 / D3, b * e2)
    dN_de = 2.0 * e * np.einsum("...ij,...i->...j", 1.0 / D2, c2)
    dN_db = 2.0 * e2 * np.einsum("...ij,...i->...j", 1.0 / D3, a * c2)
    dS1_dc = 2.0 * c / (1.0 - a * a)
    dS1_da = 2.0 * a * c2 / (1.0 - a * a) ** 2
    dS2_de = 2.0 * e / (1.0 - b * b)
    dS2_db = 2.0 * b * e2 / (1.0 - b * b) ** 2
    S12 = (S1 * S2)[..., None]
    r1 = (N / (S1 * S1 * S2))[..., None]       # N / (S1^2 S2)
    r2 = (N / (S1 * S2 * S2))[..., None]       # N / (S1 S2^2)
    da = -(dN_da / S12 - r1 * dS1_da)
    dc = -(dN_dc / S12 - r1 * dS1_dc)
    db = -(dN_db / S12 - r2 * dS2_db)
    de = -(dN_de / S12 - r2 * dS2_de)
    return 1.0 - N / (S1 * S2), da, dc, db, de


def infssm_distance_grad(a, c, b, e):
    """``(d, da, dc, db, de)`` of the code distance (variant "code") by the explicit O(n^2)
    gradient of the module docstring; gradients have the inputs' shapes."""
    a, c, b, e = _distance_inputs(a, c, b, e, "code", 0.0)
    return _code_grad(a, c, b, e)


def _principled_grad_grams(G11, G12, G22, variant, eps):
    """Gradient of the principled distance w.r.t. (G11, G12, G22) (matrix calculus).

    With ``Gi = Gii + eps I`` and ``X = G1^-1 G12 G2^-1``: projection
    ``d = k - tr(G1^-1 G12 G2^-1 G21)`` gives ``dG12 = -2 X``, ``dG11 = X G2 X^T``,
    ``dG22 = X^T G1 X``; martin (n1 <= n2) ``d = -log det(G12 G2^-1 G21) + log det G1`` gives,
    with ``K = G12 G2^-1 G21``, ``dG12 = -2 K^-1 G12 G2^-1``,
    ``dG22 = G2^-1 G21 K^-1 G12 G2^-1``, ``dG11 = G1^-1`` (n1 > n2: roles swapped)."""
    n1, n2 = G12.shape
    G1 = G11 + eps * np.eye(n1)
    G2 = G22 + eps * np.eye(n2)
    if variant == "projection":
        X = np.linalg.solve(G1, np.linalg.solve(G2, G12.T).T)   # G1^-1 G12 G2^-1 (G2 symmetric)
        return X @ G2 @ X.T, -2.0 * X, X.T @ G1 @ X
    if n1 > n2:
        g22, g21, g11 = _principled_grad_grams(G22, G12.T, G11, variant, eps)
        return g11, g21.T, g22
    Y = np.linalg.solve(G2, G12.T).T          # G12 G2^-1
    K = Y @ G12.T
    Z = np.linalg.solve(K, Y)                 # K^-1 G12 G2^-1
    return np.linalg.inv(G1), -2.0 * Z, Y.T @ np.linalg.solve(K, Y)


def _principled_vjp(a, c, b, e, variant, eps, cot):
    """VJP of the principled distances: Gram adjoints chained through the closed form."""
    lead = a.shape[:-1]
    n1, n2 = a.shape[-1], b.shape[-1]
    af, cf, bf, ef = a.reshape(-1, n1), c.reshape(-1, n1), b.reshape(-1, n2), e.reshape(-1, n2)
    w = np.broadcast_to(np.asarray(cot, dtype=np.float64), lead).reshape(-1)
    out = [np.zeros_like(af), np.zeros_like(cf), np.zeros_like(bf), np.zeros_like(ef)]
    for r in range(af.shape[0]):
        ar, cr, br, er = af[r], cf[r], bf[r], ef[r]
        G11 = _cross_gram(ar, cr, ar, cr, 0)
        G22 = _cross_gram(br, er, br, er, 0)
        G12 = _cross_gram(ar, cr, br, er, 0)
        g11, g12, g22 = _principled_grad_grams(G11, G12, G22, variant, eps)
        da, dc, db, de = _gram_vjp(g12, ar, cr, br, er)
        x1, y1, x2, y2 = _gram_vjp(g11, ar, cr, ar, cr)
        da, dc = da + x1 + x2, dc + y1 + y2
        x1, y1, x2, y2 = _gram_vjp(g22, br, er, br, er)
        db, de = db + x1 + x2, de + y1 + y2
        for o, v in zip(out, (da, dc, db, de)):
            o[r] = w[r] * v
    return tuple(o.reshape(lead + o.shape[-1:]) for o in out)


def infssm_distance_vjp(a, c, b, e, cot, variant="code", eps=0.0):
    """``(da, dc, db, de)`` of ``sum(cot * infssm_distance(a, c, b, e, variant, eps))``.

    "code": the explicit gradient; "projection"/"martin": Gram-level adjoints (see
    :func:`_principled_grad_grams`) chained through ``G = c e^T / (1 - a b^T)``."""
    a, c, b, e = _distance_inputs(a, c, b, e, variant, eps)
    cot = np.broadcast_to(np.asarray(cot, dtype=np.float64), a.shape[:-1])
    if variant == "code":
        _, da, dc, db, de = _code_grad(a, c, b, e)
        w = cot[..., None]
        return w * da, w * dc, w * db, w * de
    return _principled_vjp(a, c, b, e, variant, float(eps), cot)


# --------------------------------------------------------------------------- Mamba extraction


def _softplus(x):
    """``log1p(exp(x))`` without overflow: ``max(x, 0) + log1p(exp(-|x|))``."""
    return np.maximum(x, 0.0) + np.log1p(np.exp(-np.abs(x)))


def _scan_inputs(delta_raw, A_log, C, dt_bias, channel_reduce, squash):
    delta_raw, A_log, C = (V.host_array(x, nm) for x, nm in
                           ((delta_raw, "delta_raw"), (A_log, "A_log"), (C, "C")))
    if dt_bias is not None:
        dt_bias = V.host_array(dt_bias, "dt_bias")
    shape = V.mamba_scan_args(delta_raw, A_log, C, dt_bias, channel_reduce, squash)
    x = _f64(delta_raw)
    if dt_bias is not None:
        x = x + _f64(dt_bias)[:, None]
    return shape, x, _f64(A_log), _f64(C)


def mamba_ac_from_scan(delta_raw, A_log, C, dt_bias=None, channel_reduce="mean", squash=True):
    """Per-token diagonal systems ``(a, c)`` of one Mamba scan (official
    ``MambaInnerFnNoOutProj_state``).

    ``delta_raw`` (B, D, L) (pre-softplus, without ``dt_proj.bias`` in the code), ``A_log``
    (D, n), ``C`` (B, n, L), ``dt_bias`` None or (D,). "mean": ``a`` (B L, n) with
    ``Abar = mean_d exp(softplus(delta) A_d)``; "none": ``a`` (B L, D, n). ``c`` (B L, n) =
    ``C`` transposed to (B, L, n). ``squash``: ``tanh(x / 2)`` of both. Rows (b, l) row-major."""
    (B, D, L, n), x, A_log, C = _scan_inputs(delta_raw, A_log, C, dt_bias, channel_reduce, squash)
    A = -np.exp(A_log)                                   # (D, n)
    dt = _softplus(x)                                    # (B, D, L)
    if channel_reduce == "mean":
        Abar = np.empty((B, L, n))
        for bi in range(B):                              # one batch entry at a time: O(D L n) memory
            Abar[bi] = np.exp(dt[bi][:, :, None] * A[:, None, :]).mean(axis=0)
        Abar = Abar.reshape(B * L, n)
    else:
        Abar = np.exp(dt.transpose(0, 2, 1)[..., None] * A)     # (B, L, D, n)
        Abar = Abar.reshape(B * L, D, n)
    c = C.transpose(0, 2, 1).reshape(B * L, n)
    if squash:
        return np.tanh(Abar / 2.0), np.tanh(c / 2.0)
    return Abar, c.copy()


def mamba_ac_from_scan_vjp(delta_raw, A_log, C, cot_a, dt_bias=None, channel_reduce="mean",
                           squash=True):
    """VJP of the first output ``a`` of :func:`mamba_ac_from_scan`:
    ``(d delta_raw, d A_log)`` of ``sum(cot_a * a)`` (``a`` does not depend on ``C``).

    With ``E = exp(dt A)`` and ``g`` the cotangent of E (``cot_a (1 - a^2)/2`` if squashed,
    divided by D for "mean"): ``d delta_raw = sigmoid(x) sum_k g E A``,
    ``d A_log = A sum_{b,l} g E dt`` (``dA/dA_log = A``)."""
    (B, D, L, n), x, A_log, C = _scan_inputs(delta_raw, A_log, C, dt_bias, channel_reduce, squash)
    a, _ = mamba_ac_from_scan(delta_raw, A_log, C, dt_bias, channel_reduce, squash)
    A = -np.exp(A_log)
    dt = _softplus(x)
    g = np.asarray(cot_a, dtype=np.float64).reshape(a.shape)
    if squash:
        g = g * (1.0 - a * a) / 2.0
    if channel_reduce == "mean":
        gE = np.broadcast_to(g.reshape(B, 1, L, n) / D, (B, D, L, n))
    else:
        gE = g.reshape(B, L, D, n).transpose(0, 2, 1, 3)          # (B, D, L, n)
    E = np.exp(dt[..., None] * A[None, :, None, :])               # (B, D, L, n)
    gEE = gE * E
    sig = 0.5 * (1.0 + np.tanh(x / 2.0))                          # sigmoid, stable
    d_delta = sig * np.einsum("bdlk,dk->bdl", gEE, A)
    d_Alog = A * np.einsum("bdlk,bdl->dk", gEE, dt)
    return d_delta, d_Alog


# --------------------------------------------------------------------------- regulariser


def _allclose(new, old) -> bool:
    """``torch.allclose(new, old)`` with its defaults: ``|new - old| <= atol + rtol |old|``."""
    return bool(np.all(np.abs(new - old) <= ALLCLOSE_ATOL + ALLCLOSE_RTOL * np.abs(old)))


def _reg_inputs(new_pairs, old_pairs, lam, mode):
    def host(pairs, name):
        if not isinstance(pairs, (list, tuple)):
            return pairs          # the validator names the error
        return [tuple(V.host_array(x, f"{name}[{s}] {'ac'[i]}") for i, x in enumerate(p))
                if isinstance(p, (list, tuple)) and len(p) == 2 else p
                for s, p in enumerate(pairs)]

    new_pairs, old_pairs = host(new_pairs, "new_pairs"), host(old_pairs, "old_pairs")
    S = V.reg_loss_args(new_pairs, old_pairs, lam, mode)
    new = [(_f64(a), _f64(c)) for a, c in new_pairs]
    old = [(_f64(a), _f64(c)) for a, c in old_pairs]
    return S, new, old, float(lam)


def _reg_scans(new, old, mode, allclose_shortcut, grad):
    """Per scan: ``(L_s, da_s, dc_s)`` (gradients of L_s w.r.t. the new pair, or None)."""
    out = []
    for (an, cn), (ao, co) in zip(new, old):
        if allclose_shortcut and _allclose(an, ao) and _allclose(cn, co):
            out.append((0.0, np.zeros_like(an), np.zeros_like(cn)))
            continue
        m = an.shape[0]
        if mode == "inf_ssm" and grad:
            d, da, dc, _, _ = _code_grad(an, cn, ao, co)
            out.append((float(np.mean(d)), da / m, dc / m))
        elif mode == "inf_ssm":
            out.append((float(np.mean(_code_value(an, cn, ao, co))), None, None))
        else:
            L = float(np.mean((an - ao) ** 2) + np.mean((cn - co) ** 2))
            out.append((L, 2.0 * (an - ao) / an.size if grad else None,
                        2.0 * (cn - co) / cn.size if grad else None))
    return out


def infssm_reg_loss(new_pairs, old_pairs, lam, mode="inf_ssm", allclose_shortcut=True):
    """The Inf-SSM regulariser ``lam * mean_s L_s`` over scans (official
    ``vim/cl_methods/inf_ssm.py``); ``new_pairs``/``old_pairs``: sequences of ``(a, c)``, each
    (m, n), one per scan (new model, frozen old model on the same batch). Mode "inf_ssm":
    ``L_s = mean_r d_code``; "mse": ``mean((a_n - a_o)^2) + mean((c_n - c_o)^2)``. With
    ``allclose_shortcut`` a scan whose a and c are allclose contributes 0. Returns a 0-d array."""
    S, new, old, lam = _reg_inputs(new_pairs, old_pairs, lam, mode)
    scans = _reg_scans(new, old, mode, allclose_shortcut, grad=False)
    return np.asarray(lam * sum(L for L, _, _ in scans) / S)


def infssm_reg_loss_grad(new_pairs, old_pairs, lam, mode="inf_ssm", allclose_shortcut=True):
    """``(loss, da_new, dc_new)``: the loss of :func:`infssm_reg_loss` and its gradient w.r.t.
    the new pairs, stacked (S, m, n) (zero for a scan removed by the shortcut)."""
    S, new, old, lam = _reg_inputs(new_pairs, old_pairs, lam, mode)
    scans = _reg_scans(new, old, mode, allclose_shortcut, grad=True)
    loss = lam * sum(L for L, _, _ in scans) / S
    da = np.stack([g for _, g, _ in scans]) * (lam / S)
    dc = np.stack([g for _, _, g in scans]) * (lam / S)
    return np.asarray(loss), da, dc
