"""Reference tests of refimpl.inf_ssm (spec inf_ssm.md sec. 7): SciPy's Lyapunov/Sylvester
solvers, Kronecker systems and power series as oracles for the Grams, the official code's
2n x 2n construction for the code distance, QR+SVD principal angles for the principled
variants, explicit loops for the Mamba extraction, central finite differences for every
gradient, invariants, and the argument errors."""

from __future__ import annotations

import inspect
import math

import numpy as np
import pytest
from scipy import linalg as sla

from refimpl import inf_ssm as R
from refimpl._cases import inf_ssm as K
from finite_diff import fd_grad

pytestmark = pytest.mark.filterwarnings("error::RuntimeWarning")


def _rel(x, y):
    return float(np.max(np.abs(np.asarray(x) - np.asarray(y))) / np.max(np.abs(y)))


def _code_system(rng, lead, n):
    return K.code_a(rng, lead + (n,)), K.code_c(rng, lead + (n,))


def _fd(f, args, k, h=1e-6):
    """Central differences of the scalar ``f(*args)`` w.r.t. ``args[k]``."""
    return fd_grad(lambda x: f(*args[:k], x, *args[k + 1:]), args[k], h)


# --------------------------------------------------------------------------- API


def test_signatures_follow_the_contract():
    sig = lambda f: str(inspect.signature(f))
    assert sig(R.stein_gram_diag) == "(a, C)"
    assert sig(R.stein_cross_gram_diag) == "(a, C1, b, C2)"
    assert sig(R.stein_cross_gram_dense) == "(A1, C1, A2, C2, method='lyapunov')"
    assert sig(R.infssm_distance) == "(a, c, b, e, variant='code', eps=0.0)"
    assert sig(R.infssm_distance_grad) == "(a, c, b, e)"
    assert sig(R.mamba_ac_from_scan) == ("(delta_raw, A_log, C, dt_bias=None, channel_reduce='mean', "
                                         "squash=True)")
    assert sig(R.infssm_reg_loss) == "(new_pairs, old_pairs, lam, mode='inf_ssm', allclose_shortcut=True)"
    assert sig(R.infssm_reg_loss_grad) == sig(R.infssm_reg_loss)


# --------------------------------------------------------------------------- Grams


@pytest.mark.parametrize("p", [0, 3])
@pytest.mark.parametrize("n1,n2", [(5, 5), (6, 4)])
def test_cross_gram_closed_form_equals_dense_solvers(p, n1, n2):
    rng = np.random.default_rng(10 + p + n2)
    for _ in range(3):
        a, b = rng.uniform(-0.95, 0.95, n1), rng.uniform(-0.95, 0.95, n2)
        C1 = rng.uniform(-1, 1, (p, n1) if p else n1)
        C2 = rng.uniform(-1, 1, (p, n2) if p else n2)
        G = R.stein_cross_gram_diag(a, C1, b, C2)
        assert G.shape == (n1, n2)
        for method in R.DENSE_METHODS:
            X = R.stein_cross_gram_dense(np.diag(a), C1, np.diag(b), C2, method=method)
            assert _rel(G, X) <= 1e-12, method


def test_cross_gram_batched_equals_per_system():
    rng = np.random.default_rng(1)
    a, b = rng.uniform(-0.9, 0.9, (2, 3, 4)), rng.uniform(-0.9, 0.9, (2, 3, 5))
    C1, C2 = rng.normal(size=(2, 3, 2, 4)), rng.normal(size=(2, 3, 2, 5))
    G = R.stein_cross_gram_diag(a, C1, b, C2)
    assert G.shape == (2, 3, 4, 5)
    for i, j in np.ndindex(2, 3):
        X = sla.solve_discrete_lyapunov(sla.block_diag(np.diag(a[i, j]), np.diag(b[i, j])).T,
                                        np.hstack([C1[i, j], C2[i, j]]).T @ np.hstack([C1[i, j], C2[i, j]]))
        assert _rel(G[i, j], X[:4, 4:]) <= 1e-12


def test_gram_is_self_cross_gram_symmetric_psd():
    rng = np.random.default_rng(2)
    for C_shape in [(7, 6), (7, 2, 6)]:
        a, C = rng.uniform(-0.95, 0.95, (7, 6)), rng.uniform(-1, 1, C_shape)
        G = R.stein_gram_diag(a, C)
        np.testing.assert_array_equal(G, R.stein_cross_gram_diag(a, C, a, C))
        np.testing.assert_array_equal(G, np.swapaxes(G, -1, -2))
        w = np.linalg.eigvalsh(G)
        assert np.all(w >= -1e-12 * w.max(axis=-1, keepdims=True))
        # Stein equation G = diag(a) G diag(a) + C^T C
        CtC = np.einsum("...i,...j->...ij", C, C) if C.ndim == 2 else np.einsum("...pi,...pj->...ij", C, C)
        assert _rel(a[:, :, None] * G * a[:, None, :] + CtC, G) <= 1e-13


def test_dense_methods_agree_for_non_diagonal_A():
    rng = np.random.default_rng(3)
    for n1, n2, p in [(4, 4, 1), (5, 3, 2)]:
        A1, A2 = rng.normal(size=(n1, n1)), rng.normal(size=(n2, n2))
        A1 *= 0.8 / np.max(np.abs(np.linalg.eigvals(A1)))
        A2 *= 0.7 / np.max(np.abs(np.linalg.eigvals(A2)))
        C1, C2 = rng.normal(size=(p, n1)), rng.normal(size=(p, n2))
        X = R.stein_cross_gram_dense(A1, C1, A2, C2, "lyapunov")
        assert _rel(A1.T @ X @ A2 + C1.T @ C2, X) <= 1e-12       # the Stein-Sylvester equation
        for method in ("sylvester", "kron", "series"):
            assert _rel(R.stein_cross_gram_dense(A1, C1, A2, C2, method), X) <= 1e-10, method


# --------------------------------------------------------------------------- code distance


def _code_construction(a, c, b, e):
    """The official ``solve_distance_obs``: joint 2n x 2n P by a dense Lyapunov solve, then
    ``1 - tr(G12 G21) / (tr G11 tr G22)`` with a matrix product."""
    n1 = a.size
    Cj = np.concatenate([c, e])[None, :]
    P = sla.solve_discrete_lyapunov(np.diag(np.concatenate([a, b])).T, Cj.T @ Cj)
    G11, G12, G21, G22 = P[:n1, :n1], P[:n1, n1:], P[n1:, :n1], P[n1:, n1:]
    return 1.0 - np.trace(G12 @ G21) / (np.trace(G11) * np.trace(G22))


def test_code_distance_equals_the_codes_construction():
    rng = np.random.default_rng(4)
    for n1, n2, afn in [(16, 16, K.code_a), (16, 8, K.code_a), (6, 6, K.wide_a)]:
        a, c = afn(rng, (20, n1)), K.code_c(rng, (20, n1))
        b, e = afn(rng, (20, n2)), K.code_c(rng, (20, n2))
        d = R.infssm_distance(a, c, b, e)
        want = np.array([_code_construction(a[r], c[r], b[r], e[r]) for r in range(20)])
        assert np.max(np.abs(d - want)) <= 1e-14     # d in [0, 1]: absolute = relative to 1


def test_code_distance_range_symmetry_invariances():
    rng = np.random.default_rng(5)
    for afn in (K.code_a, K.wide_a):
        a, c = afn(rng, (50, 8)), K.code_c(rng, (50, 8))
        b, e = afn(rng, (50, 8)), K.code_c(rng, (50, 8))
        d = R.infssm_distance(a, c, b, e)
        assert np.all((d >= 0) & (d <= 1))
        np.testing.assert_allclose(R.infssm_distance(b, e, a, c), d, rtol=0, atol=1e-15)
        perm = rng.permutation(8)
        np.testing.assert_allclose(R.infssm_distance(a[:, perm], c[:, perm], b, e), d, atol=1e-15)
        np.testing.assert_allclose(R.infssm_distance(a, c, b[:, perm[::-1]], e[:, perm[::-1]]), d,
                                   atol=1e-15)
        flips = rng.choice([-1.0, 1.0], c.shape)
        np.testing.assert_allclose(R.infssm_distance(a, flips * c, b, e), d, atol=1e-15)
        np.testing.assert_allclose(R.infssm_distance(a, 3.7 * c, b, 0.2 * e), d, atol=1e-14)
    # batched == per row, leading shape kept
    d2 = R.infssm_distance(a.reshape(5, 10, 8), c.reshape(5, 10, 8), b.reshape(5, 10, 8),
                           e.reshape(5, 10, 8))
    np.testing.assert_array_equal(d2, d.reshape(5, 10))


def test_self_distance_is_not_zero():
    rng = np.random.default_rng(6)
    a, c = _code_system(rng, (400,), 16)
    d = R.infssm_distance(a, c, a, c)
    G = R.stein_gram_diag(a, c)
    want = 1.0 - np.sum(G * G, axis=(-2, -1)) / np.trace(G, axis1=-2, axis2=-1) ** 2
    np.testing.assert_allclose(d, want, rtol=0, atol=1e-14)
    assert np.all(d > 1e-4)                              # not a metric
    assert 0.025 < d.mean() < 0.055                      # spec: ~0.03-0.05 in the code regime
    # zero exactly when G11 has rank one: n = 1, a single non-zero c_i, or all a_i equal
    assert R.infssm_distance(a[:, :1], c[:, :1], a[:, :1], c[:, :1]) == pytest.approx(0, abs=1e-15)
    c1 = np.zeros(16)
    c1[3] = 0.7
    assert abs(float(R.infssm_distance(a[0], c1, a[0], c1))) <= 1e-15
    a_eq = np.full(16, 0.3)
    assert abs(float(R.infssm_distance(a_eq, c[0], a_eq, c[0]))) <= 1e-15



def test_code_distance_is_a_weighted_mean_of_squared_pseudo_hyperbolic_distances():
    """The cancellation-free form the backends evaluate: (1 - a^2)(1 - b^2) = (1 - ab)^2 -
    (a - b)^2 turns S1 S2 - N into sum_ij w_ij rho_ij^2, w_ij = c_i^2 e_j^2 / ((1 - a_i^2)
    (1 - b_j^2)), rho_ij = (a_i - b_j) / (1 - a_i b_j); so d = sum w rho^2 / sum w, a weighted
    mean of numbers in [0, 1) (hence d in [0, 1]; 0 iff the poles carrying weight coincide)."""
    rng = np.random.default_rng(41)
    for afn in (K.code_a, K.wide_a):
        a, c = afn(rng, (30, 12)), K.code_c(rng, (30, 12))
        b, e = afn(rng, (30, 7)), K.code_c(rng, (30, 7))
        w = (c**2 / (1 - a**2))[:, :, None] * (e**2 / (1 - b**2))[:, None, :]
        rho = (a[:, :, None] - b[:, None, :]) / (1 - a[:, :, None] * b[:, None, :])
        want = np.sum(w * rho**2, axis=(1, 2)) / np.sum(w, axis=(1, 2))
        np.testing.assert_allclose(R.infssm_distance(a, c, b, e), want, rtol=1e-13, atol=1e-15)
        assert np.all(np.abs(rho) < 1)

def test_code_grad_matches_finite_differences():
    rng = np.random.default_rng(7)
    for n1, n2, afn in [(6, 6, K.code_a), (5, 3, K.wide_a)]:
        a, c = afn(rng, (4, n1)), K.code_c(rng, (4, n1))
        b, e = afn(rng, (4, n2)), K.code_c(rng, (4, n2))
        out = R.infssm_distance_grad(a, c, b, e)
        np.testing.assert_array_equal(out[0], R.infssm_distance(a, c, b, e))
        f = lambda *x: float(np.sum(R.infssm_distance(*x)))
        for k in range(4):
            assert out[k + 1].shape == (a, c, b, e)[k].shape
            assert np.max(np.abs(_fd(f, [a, c, b, e], k) - out[k + 1])) <= 1e-8, k


@pytest.mark.parametrize("variant,n1,n2,eps", [("code", 5, 4, 0.0), ("projection", 4, 4, 0.0),
                                               ("projection", 4, 3, 1e-3), ("martin", 4, 4, 0.0),
                                               ("martin", 3, 4, 0.0), ("martin", 4, 3, 1e-3)])
def test_vjp_matches_finite_differences(variant, n1, n2, eps):
    rng = np.random.default_rng(8)
    if variant == "code":
        kw = dict(a=K.code_a(rng, (3, n1)), c=K.code_c(rng, (3, n1)), b=K.code_a(rng, (3, n2)),
                  e=K.code_c(rng, (3, n2)), variant=variant, eps=eps)
    else:
        kw = K._principled(rng, (3,), n1, n2, variant, eps)
    cot = rng.random(3)
    g = K.vjp_infssm_distance(kw, cot)
    f = lambda a, c, b, e: float(np.sum(cot * R.infssm_distance(a, c, b, e, variant, eps)))
    args = [kw[k] for k in "acbe"]
    for k, name in enumerate("acbe"):
        fd = _fd(f, args, k)
        assert np.max(np.abs(fd - g["d" + name])) <= 1e-8 * max(1.0, np.max(np.abs(fd))), name


# --------------------------------------------------------------------------- principled variants


def _angles_by_qr_svd(a, c, b, e, T=200):
    """cos of the principal angles between the column spans of truncated O1, O2 (T rows)."""
    k = np.arange(T)[:, None]
    O1, O2 = c * a ** k, e * b ** k
    Q1, _ = np.linalg.qr(O1)
    Q2, _ = np.linalg.qr(O2)
    return np.linalg.svd(Q1.T @ Q2, compute_uv=False)


@pytest.mark.parametrize("n1,n2", [(3, 3), (3, 2)])
def test_principled_variants_equal_qr_svd_angles(n1, n2):
    rng = np.random.default_rng(9)
    a, c = K.separated_system(rng, (5,), n1)
    b, e = K.separated_system(rng, (5,), n2)
    proj = R.infssm_distance(a, c, b, e, variant="projection")
    mart = R.infssm_distance(a, c, b, e, variant="martin")
    for r in range(5):
        s = _angles_by_qr_svd(a[r], c[r], b[r], e[r])
        assert abs(proj[r] - (min(n1, n2) - np.sum(s ** 2))) <= 1e-10
        assert abs(mart[r] - (-np.sum(np.log(s ** 2)))) <= 1e-10
    # the principled variants only see the subspace: rescaling the states (a diagonal change of
    # basis, c -> c S) changes nothing (the code variant does change)
    S = rng.uniform(0.5, 2.0, c.shape)
    np.testing.assert_allclose(R.infssm_distance(a, c * S, b, e, "projection"), proj, atol=1e-12)
    np.testing.assert_allclose(R.infssm_distance(a, c * S, b, e, "martin"), mart, atol=1e-12)
    assert np.max(np.abs(R.infssm_distance(a, c * S, b, e) - R.infssm_distance(a, c, b, e))) > 1e-3


def test_principled_eps_is_tikhonov_and_cholesky_failure_is_explained():
    rng = np.random.default_rng(10)
    a, c = K.separated_system(rng, (), 4)
    b, e = K.separated_system(rng, (), 4)
    d0 = float(R.infssm_distance(a, c, b, e, "projection"))
    n = 4
    G11, G22, G12 = (R.stein_gram_diag(a, c), R.stein_gram_diag(b, e),
                     R.stein_cross_gram_diag(a, c, b, e))
    eps = 1e-2
    X = np.linalg.solve(G11 + eps * np.eye(n), G12) @ np.linalg.solve(G22 + eps * np.eye(n), G12.T)
    assert float(R.infssm_distance(a, c, b, e, "projection", eps)) == pytest.approx(
        n - np.trace(X), abs=1e-12)
    assert float(R.infssm_distance(a, c, b, e, "projection", eps)) > d0
    # clustered a at n = 16 (the code regime): the Gram is numerically singular
    a16, c16 = _code_system(np.random.default_rng(0), (), 16)
    with pytest.raises(ValueError, match="not numerically positive definite.*eps > 0"):
        R.infssm_distance(a16, c16, a16, c16, "projection")


def test_similarity_invariance_dense_path():
    rng = np.random.default_rng(11)
    a, c = K.separated_system(rng, (), 4)
    b, e = K.separated_system(rng, (), 4)
    Q1, _ = np.linalg.qr(rng.normal(size=(4, 4)))
    Q2, _ = np.linalg.qr(rng.normal(size=(4, 4)))
    T = Q1 @ np.diag([0.5, 0.8, 1.3, 2.0]) @ Q2            # non-diagonal, cond(T) = 4
    A1t, C1t = np.linalg.solve(T, np.diag(a) @ T), (c[None, :] @ T)
    for variant in ("projection", "martin"):
        # the same subspace: distance 0 to itself in another basis
        assert abs(float(R.infssm_distance_dense(A1t, C1t, np.diag(a), c, variant))) < 1e-10
        # and the distance to another system equals the diagonal closed form
        assert abs(float(R.infssm_distance_dense(A1t, C1t, np.diag(b), e, variant))
                   - float(R.infssm_distance(a, c, b, e, variant))) < 1e-10
    # the dense path reproduces the code distance for diagonal systems ...
    assert abs(float(R.infssm_distance_dense(np.diag(a), c, np.diag(b), e))
               - float(R.infssm_distance(a, c, b, e))) < 1e-14
    # ... but the code distance is NOT a function of the subspace (basis dependent)
    d_same = float(R.infssm_distance_dense(A1t, C1t, np.diag(a), c, "code"))
    assert abs(d_same - float(R.infssm_distance(a, c, a, c))) > 1e-3


# --------------------------------------------------------------------------- dense oracle


def test_dense_oracle_errors():
    A, C = np.diag([0.5, 0.2]), np.ones((1, 2))
    with pytest.raises(ValueError, match="A1 must be stable.*spectral radius 1.2"):
        R.stein_cross_gram_dense(np.diag([1.2, 0.1]), C, A, C)
    with pytest.raises(ValueError, match="A2 must be a non-empty square"):
        R.stein_cross_gram_dense(A, C, np.ones((2, 3)) * 0.1, C)
    with pytest.raises(ValueError, match=r"C1 must have shape \(p, 2\)"):
        R.stein_cross_gram_dense(A, np.ones((1, 3)), A, C)
    with pytest.raises(ValueError, match="same number of outputs"):
        R.stein_cross_gram_dense(A, np.ones((2, 2)), A, C)
    with pytest.raises(ValueError, match="sylvester' needs an invertible A2"):
        R.stein_cross_gram_dense(A, C, np.diag([0.5, 0.0]), C, method="sylvester")
    with pytest.raises(ValueError, match="method must be one of"):
        R.stein_cross_gram_dense(A, C, A, C, method="bartels")
    with pytest.raises(ValueError, match="A1 contains NaN or inf"):
        R.stein_cross_gram_dense(np.diag([np.nan, 0.1]), C, A, C)
    # singular A2 is fine for the other methods
    X = R.stein_cross_gram_dense(A, C, np.diag([0.5, 0.0]), C)
    np.testing.assert_allclose(X, R.stein_cross_gram_diag(np.diag(A), C[0], np.array([0.5, 0.0]), C[0]),
                               rtol=1e-13)


# --------------------------------------------------------------------------- Mamba extraction


def _softplus_naive(x):
    return math.log1p(math.exp(x))


def _mamba_loop(delta_raw, A_log, C, dt_bias, channel_reduce, squash):
    B, D, L = delta_raw.shape
    n = A_log.shape[1]
    rows_a, rows_c = [], []
    for b in range(B):
        for l in range(L):
            per_d = np.zeros((D, n))
            for d in range(D):
                x = delta_raw[b, d, l] + (0.0 if dt_bias is None else dt_bias[d])
                dt = _softplus_naive(x)
                for k in range(n):
                    per_d[d, k] = math.exp(dt * -math.exp(A_log[d, k]))
            abar = per_d.mean(axis=0) if channel_reduce == "mean" else per_d
            cc = C[b, :, l].copy()
            if squash:
                abar = 2.0 / (1.0 + np.exp(-abar)) - 1.0      # 2 sigmoid - 1 (the code's form)
                cc = 2.0 / (1.0 + np.exp(-cc)) - 1.0
            rows_a.append(abar)
            rows_c.append(cc)
    return np.array(rows_a), np.array(rows_c)


OPTIONS = [(r, s, bias) for r in ("mean", "none") for s in (True, False) for bias in (False, True)]


@pytest.mark.parametrize("reduce,squash,bias", OPTIONS)
def test_mamba_equals_explicit_loop(reduce, squash, bias):
    kw = K.scan_inputs(np.random.default_rng(12), 2, 3, 4, 5, dt_bias=bias)
    a, c = R.mamba_ac_from_scan(**kw, channel_reduce=reduce, squash=squash)
    wa, wc = _mamba_loop(kw["delta_raw"], kw["A_log"], kw["C"], kw["dt_bias"], reduce, squash)
    assert a.shape == ((8, 5) if reduce == "mean" else (8, 3, 5)) and c.shape == (8, 5)
    np.testing.assert_allclose(a, wa, rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(c, wc, rtol=1e-14, atol=1e-15)
    if squash and reduce == "mean":
        assert np.all((a > 0) & (a < np.tanh(0.5)))       # spec: (0, 0.4621)


def test_mamba_softplus_is_stable():
    kw = K.scan_inputs(np.random.default_rng(13), 1, 2, 3, 4)
    kw["delta_raw"][0, :, 0] = 800.0
    kw["delta_raw"][0, :, 1] = -800.0
    a, _ = R.mamba_ac_from_scan(**kw, squash=False)
    assert np.all(np.isfinite(a))
    np.testing.assert_allclose(a[0], np.mean(np.exp(800.0 * -np.exp(kw["A_log"])), axis=0), rtol=1e-14)
    np.testing.assert_allclose(a[1], 1.0, rtol=0, atol=1e-300)   # dt = exp(-800) ~ 0: Abar = 1


@pytest.mark.parametrize("reduce,squash,bias", OPTIONS)
def test_mamba_vjp_matches_finite_differences(reduce, squash, bias):
    rng = np.random.default_rng(14)
    kw = dict(K.scan_inputs(rng, 2, 3, 2, 4, dt_bias=bias), channel_reduce=reduce, squash=squash)
    a, _ = R.mamba_ac_from_scan(**kw)
    cot = rng.random(a.shape)
    g = K.vjp_mamba_ac_from_scan(kw, cot)
    assert set(g) == {"ddelta_raw", "dA_log", "dC"}
    np.testing.assert_array_equal(g["dC"], 0.0)
    opts = {k: kw[k] for k in ("dt_bias", "channel_reduce", "squash")}
    f = lambda x, A_log: float(np.sum(cot * R.mamba_ac_from_scan(x, A_log, kw["C"], **opts)[0]))
    args = [kw["delta_raw"], kw["A_log"]]
    for k, name in enumerate(("ddelta_raw", "dA_log")):
        assert np.max(np.abs(_fd(f, args, k) - g[name])) <= 1e-8, name


def test_mamba_vjp_matches_hand_written_mean_backward():
    """The official class differentiates ``Abar = mean_d exp(dt A_d)`` by hand:
    ``dAbar[b,l,k]/d delta_raw[b,d,l] = exp(dt A[d,k]) A[d,k] sigmoid(delta_raw) / D`` and
    ``dAbar[b,l,k]/d A_log[d,k] = exp(dt A[d,k]) dt A[d,k] / D`` (dt_bias None, no squash):
    build the Jacobians entry by entry and contract them with the cotangent."""
    rng = np.random.default_rng(15)
    kw = K.scan_inputs(rng, 2, 3, 4, 5)
    B, D, L = kw["delta_raw"].shape
    n = kw["A_log"].shape[1]
    cot = rng.random((B * L, n))
    g = K.vjp_mamba_ac_from_scan(dict(kw, channel_reduce="mean", squash=False), cot)
    want_delta, want_Alog = np.zeros((B, D, L)), np.zeros((D, n))
    for b, d, l, k in np.ndindex(B, D, L, n):
        x = kw["delta_raw"][b, d, l]
        dt, sig = math.log1p(math.exp(x)), 1.0 / (1.0 + math.exp(-x))
        A = -math.exp(kw["A_log"][d, k])
        E = math.exp(dt * A)
        row = b * L + l
        want_delta[b, d, l] += cot[row, k] * E * A * sig / D
        want_Alog[d, k] += cot[row, k] * E * dt * A / D
    np.testing.assert_allclose(g["ddelta_raw"], want_delta, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(g["dA_log"], want_Alog, rtol=1e-12, atol=1e-15)


# --------------------------------------------------------------------------- regulariser


def test_reg_loss_is_mean_of_mean_distances():
    rng = np.random.default_rng(16)
    new, old = K.reg_pairs(rng, 3, 20, 6)
    lam = 2.5e5
    want = lam * np.mean([np.mean(R.infssm_distance(an, cn, ao, co))
                          for (an, cn), (ao, co) in zip(new, old)])
    assert float(R.infssm_reg_loss(new, old, lam)) == pytest.approx(want, rel=1e-14)
    loss = R.infssm_reg_loss(tuple(new), tuple(old), lam)
    assert isinstance(loss, np.ndarray) and loss.shape == ()
    mse = np.mean([np.mean((an - ao) ** 2) + np.mean((cn - co) ** 2)
                   for (an, cn), (ao, co) in zip(new, old)])
    assert float(R.infssm_reg_loss(new, old, 3.0, mode="mse")) == pytest.approx(3.0 * mse, rel=1e-14)


@pytest.mark.parametrize("mode", ["inf_ssm", "mse"])
def test_reg_shortcut_gives_exact_zero_and_no_gradient(mode):
    rng = np.random.default_rng(17)
    new, old = K.reg_pairs(rng, 3, 10, 4, identical=(0, 1, 2))
    loss, da, dc = R.infssm_reg_loss_grad(new, old, 1e6, mode=mode)
    assert float(loss) == 0.0 and float(R.infssm_reg_loss(new, old, 1e6, mode=mode)) == 0.0
    assert da.shape == dc.shape == (3, 10, 4)
    assert not da.any() and not dc.any()
    # without the shortcut an identical scan still costs its self-distance in "inf_ssm" mode
    # (the distance is not a metric) and 0 in "mse" mode
    off = float(R.infssm_reg_loss(new, old, 1.0, mode=mode, allclose_shortcut=False))
    want = np.mean([np.mean(R.infssm_distance(a, c, a, c)) for a, c in old]) if mode == "inf_ssm" else 0.0
    assert off == pytest.approx(want, rel=1e-14, abs=0)
    if mode == "inf_ssm":
        assert off > 0.01


def test_reg_shortcut_is_per_scan_and_uses_torch_allclose_rule():
    rng = np.random.default_rng(18)
    new, old = K.reg_pairs(rng, 3, 10, 4, identical=(1,))
    a_old, c_old = old[1]
    tol = 1e-8 + 1e-5 * np.abs(a_old)
    new[1] = (a_old + 0.9 * tol, c_old)                      # still allclose: contributes 0
    loss, da, dc = R.infssm_reg_loss_grad(new, old, 2.0)
    others = [np.mean(R.infssm_distance(*new[s], *old[s])) for s in (0, 2)]
    assert float(loss) == pytest.approx(2.0 * sum(others) / 3, rel=1e-14)
    assert not da[1].any() and not dc[1].any() and da[0].any()
    bumped = a_old.copy()
    bumped[0, 0] += 1.5 * tol[0, 0]                          # one entry out: the scan counts
    new[1] = (bumped, c_old)
    assert float(R.infssm_reg_loss(new, old, 2.0)) > float(loss)


@pytest.mark.parametrize("mode,shortcut", [("inf_ssm", True), ("inf_ssm", False), ("mse", True)])
def test_reg_grad_matches_finite_differences(mode, shortcut):
    rng = np.random.default_rng(19)
    new, old = K.reg_pairs(rng, 2, 3, 4, identical=() if shortcut else (1,))
    lam = 7.0
    loss, da, dc = R.infssm_reg_loss_grad(new, old, lam, mode=mode, allclose_shortcut=shortcut)
    assert float(loss) == float(R.infssm_reg_loss(new, old, lam, mode, shortcut))
    A = np.stack([a for a, _ in new])
    Cn = np.stack([c for _, c in new])
    f = lambda A, Cn: float(R.infssm_reg_loss(list(zip(A, Cn)), old, lam, mode, shortcut))
    assert np.max(np.abs(_fd(f, [A, Cn], 0) - da)) <= 1e-8
    assert np.max(np.abs(_fd(f, [A, Cn], 1) - dc)) <= 1e-8


# --------------------------------------------------------------------------- cases module


def test_cases_module_contract():
    assert K.PAPER == "2505.18604"
    assert K.TOL["float64"]["*"] == (1e-10, 1e-10) and K.TOL["float32"]["*"] == (5e-4, 1e-5)
    fns = [K.cases_stein_gram_diag, K.cases_stein_cross_gram_diag, K.cases_infssm_distance,
           K.cases_infssm_distance_grad, K.cases_mamba_ac_from_scan, K.cases_infssm_reg_loss]
    for fn in fns:
        with pytest.raises(ValueError, match="unknown scale"):
            fn(np.random.default_rng(0), "huge")
        tiny = fn(np.random.default_rng(0), "tiny")
        assert 1 <= len(tiny) <= 3
        again = fn(np.random.default_rng(0), "tiny")
        for c1, c2 in zip(tiny, again):                     # deterministic given rng
            for k, v in c1.inputs().items():
                if isinstance(v, np.ndarray):
                    np.testing.assert_array_equal(v, c2.inputs()[k])
        for c in fn(np.random.default_rng(0), "bench"):
            assert c.where in ("cpu", "gpu") and callable(c.kwargs)
    for c in K.cases_infssm_distance_grad(np.random.default_rng(0), "small"):
        assert set(c.inputs()) == {"a", "c", "b", "e"}
    small = K.cases_infssm_distance(np.random.default_rng(0), "small")
    assert {c.inputs()["variant"] for c in small} == {"code", "projection", "martin"}
    assert any(c.inputs()["eps"] > 0 for c in small)


# --------------------------------------------------------------------------- bad input


def _ok(n=4, m=3):
    rng = np.random.default_rng(20)
    return K.code_a(rng, (m, n)), K.code_c(rng, (m, n)), K.code_a(rng, (m, n)), K.code_c(rng, (m, n))


def test_errors_distance_and_grams():
    a, c, b, e = _ok()
    bad = a.copy()
    bad[1, 2] = 1.0
    with pytest.raises(ValueError, match=r"a must be stable: \|a\| < 1.*max \|a\| = 1"):
        R.infssm_distance(bad, c, b, e)
    with pytest.raises(ValueError, match=r"b must be stable: \|b\| < 1"):
        R.infssm_distance_grad(a, c, -bad, e)
    with pytest.raises(ValueError, match="a contains NaN or inf"):
        R.infssm_distance(np.where(bad == 1.0, np.nan, a), c, b, e)
    with pytest.raises(ValueError, match="e contains NaN or inf"):
        R.infssm_distance(a, c, b, np.where(bad == 1.0, np.inf, e))
    with pytest.raises(ValueError, match=r"c must have shape \(3, 4\) to match a"):
        R.infssm_distance(a, c[:, :3], b, e)
    with pytest.raises(ValueError, match="a and b must have the same leading shape"):
        R.infssm_distance(a, c, b[:2], e[:2])
    with pytest.raises(TypeError, match="a must have dtype float32 or float64, got int64"):
        R.infssm_distance(np.zeros((3, 4), dtype=np.int64), c, b, e)
    with pytest.raises(TypeError, match="b must have the dtype of a"):
        R.infssm_distance(a, c, b.astype(np.float32), e.astype(np.float32))
    with pytest.raises(ValueError, match="variant must be one of 'code', 'projection', 'martin'"):
        R.infssm_distance(a, c, b, e, variant="binet")
    with pytest.raises(ValueError, match="eps must be >= 0"):
        R.infssm_distance(a, c, b, e, variant="projection", eps=-1e-3)
    with pytest.raises(ValueError, match="eps must be finite"):
        R.infssm_distance(a, c, b, e, eps=math.inf)
    with pytest.raises(ValueError, match=r"a must have shape \(\.\.\., n\) with n >= 1"):
        R.infssm_distance(np.zeros((3, 0)), np.zeros((3, 0)), b, e)
    with pytest.raises(ValueError, match=r"C must have shape \(3, 4\) or \(3, 'p', 4\)"):
        R.stein_gram_diag(a, np.zeros((3, 2, 5)))
    with pytest.raises(ValueError, match="C1 and C2 must have the same number of outputs"):
        R.stein_cross_gram_diag(a, np.zeros((3, 2, 4)), b, e)
    with pytest.raises(ValueError, match=r"a must be stable"):
        R.stein_cross_gram_diag(bad, c, b, e)

    class Foreign:  # an array of another backend (has __dlpack__): refused, not copied
        shape, dtype = (3, 4), np.dtype("float64")

        def __dlpack__(self):
            raise AssertionError

    with pytest.raises(TypeError, match="the numpy reference takes numpy.ndarray"):
        R.infssm_distance(Foreign(), c, b, e)
    # float32 inputs are accepted and computed in float64
    d32 = R.infssm_distance(*(x.astype(np.float32) for x in (a, c, b, e)))
    assert d32.dtype == np.float64


def test_errors_mamba():
    kw = K.scan_inputs(np.random.default_rng(21), 2, 3, 4, 5)
    with pytest.raises(ValueError, match="delta_raw must be 3-D"):
        R.mamba_ac_from_scan(kw["delta_raw"][0], kw["A_log"], kw["C"])
    with pytest.raises(ValueError, match=r"A_log must have shape \(D, n\) = \(3, n\)"):
        R.mamba_ac_from_scan(kw["delta_raw"], kw["A_log"][:2], kw["C"])
    with pytest.raises(ValueError, match=r"C must have shape \(B, n, L\) = \(2, 5, 4\)"):
        R.mamba_ac_from_scan(kw["delta_raw"], kw["A_log"], kw["C"].transpose(0, 2, 1))
    with pytest.raises(ValueError, match=r"dt_bias must have shape \(3,\)"):
        R.mamba_ac_from_scan(**dict(kw, dt_bias=np.zeros(4)))
    with pytest.raises(ValueError, match="channel_reduce must be one of 'mean', 'none'"):
        R.mamba_ac_from_scan(**kw, channel_reduce="sum")
    with pytest.raises(TypeError, match="squash must be a bool"):
        R.mamba_ac_from_scan(**kw, squash="yes")
    with pytest.raises(TypeError, match="C must have the dtype of delta_raw"):
        R.mamba_ac_from_scan(kw["delta_raw"], kw["A_log"], kw["C"].astype(np.float32))
    with pytest.raises(TypeError, match="A_log must have dtype float32 or float64"):
        R.mamba_ac_from_scan(kw["delta_raw"], kw["A_log"].astype(int), kw["C"])
    bad = kw["delta_raw"].copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="delta_raw contains NaN or inf"):
        R.mamba_ac_from_scan(bad, kw["A_log"], kw["C"])


def test_errors_reg_loss():
    rng = np.random.default_rng(22)
    new, old = K.reg_pairs(rng, 2, 5, 4)
    with pytest.raises(ValueError, match="new_pairs must not be empty"):
        R.infssm_reg_loss([], [], 1.0)
    with pytest.raises(TypeError, match="old_pairs must be a list or tuple"):
        R.infssm_reg_loss(new, old[0][0], 1.0)
    with pytest.raises(ValueError, match="same number of scans, got 2 and 1"):
        R.infssm_reg_loss(new, old[:1], 1.0)
    with pytest.raises(TypeError, match=r"new_pairs\[1\] must be a pair \(a, c\)"):
        R.infssm_reg_loss([new[0], new[1][0]], old, 1.0)
    with pytest.raises(ValueError, match=r"old_pairs\[1\] a must have shape \(5, 4\)"):
        R.infssm_reg_loss_grad(new, [old[0], (old[1][0][:3], old[1][1][:3])], 1.0)
    with pytest.raises(ValueError, match=r"new_pairs\[0\] c must have shape \(5, 4\)"):
        R.infssm_reg_loss(((new[0][0], new[0][1][:, :3]), new[1]), old, 1.0)
    a_bad = new[1][0].copy()
    a_bad[0, 0] = -1.5
    with pytest.raises(ValueError, match=r"new_pairs\[1\] a must be stable"):
        R.infssm_reg_loss([new[0], (a_bad, new[1][1])], old, 1.0)
    with pytest.raises(ValueError, match="lam must be >= 0"):
        R.infssm_reg_loss(new, old, -1.0)
    with pytest.raises(ValueError, match="lam must be finite"):
        R.infssm_reg_loss(new, old, math.inf)
    with pytest.raises(ValueError, match="mode must be one of 'inf_ssm', 'mse'"):
        R.infssm_reg_loss(new, old, 1.0, mode="l2")
    with pytest.raises(TypeError, match=r"old_pairs\[0\] a must have the dtype of new_pairs\[0\] a"):
        R.infssm_reg_loss(new, [tuple(x.astype(np.float32) for x in old[0]), old[1]], 1.0)
