"""Registry cases of the graph side of the discrete-score causal-discovery family (spec
``causal_discrete.md`` sec. 4 and 7): the batched CI test ``ci_test_batch`` and SCORE's
``stein_hessian_diag``.

Integer data come from a seeded NumPy Generator, two kinds: independent uniform codes
(``uniform_codes``; every test is under its null) and a dependent chain
``X_0 ~ U{0..K_0-1}``, ``X_j = (X_{j-1} + N_j) mod K_j`` with ``N_j`` categorical
(``chain_codes``; strong dependence between neighbours, conditional independence of
non-neighbours given the one in between). Stein inputs: a Gaussian sample and a nonlinear
additive-noise chain ``X_j = sin(X_{j-1}) + 0.5 N(0, 1)`` (``anm_continuous``).

Scales: "tiny" (Numba's CUDA simulator: three cases at most), "small" (unit-test sizes:
mixed cards, both tests, both df rules, |cond| 0..2; non-default Stein etas), "bench" (asv:
CPU ci_test_batch n = 5000, d = 20, 17 candidates (= d - 1 - |cond|), |cond| = 2; GPU n = 1e5,
d = 100, 97 candidates; Stein CPU n = 1000, d = 10 fp64, GPU n = 4096, d = 20 fp32).
"""

from __future__ import annotations

import numpy as np

from refimpl._cases import Case
from refimpl._cases.causal_score import PAPER, TOL  # noqa: F401  (one family: shared values)

SCORE_PAPER = "2203.04413"  # Rolland et al., SCORE (Stein Hessian diagonal)

# TOL (fp64 1e-10/1e-10, fp32 5e-4/1e-5) serves ci_test_batch; integer outputs (dof) compare
# exactly.


# stein_hessian_diag: the solves with K + eta I have condition number ~ lambda_max(K) / eta
# ~ n / (s eta) (1e5..1e6 at n = 500, eta = 1e-3), so two correct float64 algorithms
# (Cholesky vs LU, expanded vs difference-tensor sums) differ by ~7e-10 on values ~80, and a
# float32 computation by up to ~0.3 (measured, simulating float32 with NumPy/SciPy). Hence a
# looser float64 tolerance, and float32 only on the well-conditioned cases (tiny n or
# eta >= 1e-2; there float32 stays within ~2e-3 + 1e-2 |H|): the n = 500, eta = 1e-3 cases are
# float64-only.
TOL_STEIN = {
    "float64": {"*": (1e-8, 1e-8)},
    "float32": {"*": (1e-2, 1e-2)},
}


def _check_scale(scale):
    if scale not in ("tiny", "small", "bench"):
        raise ValueError(f"unknown scale {scale!r}; expected 'tiny', 'small' or 'bench'")


# --------------------------------------------------------------------------- input builders


def uniform_codes(rng, n, cards):
    """Independent uniform codes, (n, d) int64."""
    cards = np.asarray(cards, dtype=np.int64)
    return (rng.random((n, cards.size)) * cards).astype(np.int64)


def chain_codes(rng, n, cards, noise=0.3):
    """``X_0`` uniform, ``X_j = (X_{j-1} + N_j) mod K_j``, ``P(N_j = 0) = 1 - noise``, the rest
    spread uniformly over 1..K_j-1. (n, d) int64."""
    cards = np.asarray(cards, dtype=np.int64)
    X = np.empty((n, cards.size), dtype=np.int64)
    X[:, 0] = rng.integers(0, cards[0], n)
    for j in range(1, cards.size):
        k = int(cards[j])
        flip = rng.random(n) < noise
        N = np.where(flip, rng.integers(1, k, n), 0)
        X[:, j] = (X[:, j - 1] + N) % k
    return X


def _ci(X, cards, i, candidates, cond=(), test="g2", df="adjusted"):
    return dict(X=X, cards=np.asarray(cards, dtype=np.int64), i=int(i),
                candidates=np.asarray(candidates, dtype=np.int64), cond=tuple(int(c) for c in cond),
                test=test, df=df)


def anm_continuous(rng, n, d):
    """Nonlinear additive-noise chain ``X_0 ~ N(0, 1)``, ``X_j = sin(X_{j-1}) + 0.5 N(0, 1)``."""
    X = np.empty((n, d))
    X[:, 0] = rng.normal(size=n)
    for j in range(1, d):
        X[:, j] = np.sin(X[:, j - 1]) + 0.5 * rng.normal(size=n)
    return X


# --------------------------------------------------------------------------- ci_test_batch


def cases_ci_test_batch(rng, scale):
    """Cases of ``ci_test_batch(X, cards, i, candidates, cond, test, df)`` (integer X; outputs
    stat, dof, pvalue)."""
    _check_scale(scale)
    if scale == "tiny":
        c3 = [2, 2, 2]
        return [
            Case("n50_d3_K2_g2_uncond", _ci(chain_codes(rng, 50, c3), c3, 0, [1, 2])),
            Case("n50_d3_K2_chi2_cond1", _ci(uniform_codes(rng, 50, c3), c3, 2, [0], (1,), "chi2")),
            Case("n50_d3_K2_g2_cond1_full", _ci(chain_codes(rng, 50, c3), c3, 1, [2], (0,), "g2",
                                                "full")),
        ]
    if scale == "small":
        k3 = [3] * 6
        mixed = [2, 3, 4, 5, 3, 2]
        out = []
        for label, X, cards in (("K3_chain", chain_codes(rng, 2000, k3), k3),
                                ("mixed_uniform", uniform_codes(rng, 2000, mixed), mixed),
                                ("mixed_chain", chain_codes(rng, 2000, mixed), mixed)):
            for test in ("g2", "chi2"):
                for df in ("adjusted", "full"):
                    tag = f"n2000_d6_{label}_{test}_{df}"
                    out.append(Case(f"{tag}_cond0", _ci(X, cards, 0, [1, 2, 3, 4, 5], (), test, df)))
                    out.append(Case(f"{tag}_cond1", _ci(X, cards, 2, [0, 4, 5], (1,), test, df)))
                    out.append(Case(f"{tag}_cond2", _ci(X, cards, 5, [0, 1, 2], (3, 4), test, df)))
        # sparse strata (|cond| = 3 with K = 5..4: many empty cells, adjusted != full)
        X = chain_codes(rng, 300, mixed)
        out.append(Case("n300_d6_mixed_sparse_cond3", _ci(X, mixed, 0, [4, 5], (1, 2, 3))))
        return out

    def bench(n, d, k=3):
        cards = [k] * d
        X = chain_codes(rng, n, cards)
        return _ci(X, cards, 0, list(range(3, d)), (1, 2))

    return [
        Case("n5000_d20_k17_cond2", lambda: bench(5000, 20), where="cpu"),
        Case("n100000_d100_k97_cond2", lambda: bench(100_000, 100), where="gpu"),
    ]


# --------------------------------------------------------------------------- stein_hessian_diag


def cases_stein_hessian_diag(rng, scale):
    """Cases of ``stein_hessian_diag(X, eta_G, eta_H)`` (float X (n, d); output H)."""
    _check_scale(scale)
    if scale == "tiny":
        return [
            Case("n30_d3_gauss", dict(X=rng.normal(size=(30, 3)), eta_G=1e-3, eta_H=1e-3)),
            Case("n30_d3_anm_eta1e-2", dict(X=anm_continuous(rng, 30, 3), eta_G=1e-2, eta_H=1e-1)),
        ]
    if scale == "small":
        f64 = ("float64",)
        return [
            Case("n500_d6_gauss", dict(X=rng.normal(size=(500, 6)), eta_G=1e-3, eta_H=1e-3),
                 dtypes=f64),
            Case("n500_d6_anm", dict(X=anm_continuous(rng, 500, 6), eta_G=1e-3, eta_H=1e-3),
                 dtypes=f64),
            Case("n500_d6_anm_eta_G1e-2_eta_H1e-1", dict(X=anm_continuous(rng, 500, 6), eta_G=1e-2,
                                                         eta_H=1e-1)),
            Case("n500_d6_gauss_eta1e-1", dict(X=rng.normal(size=(500, 6)), eta_G=1e-1,
                                               eta_H=1e-1)),
            Case("n200_d1_gauss_eta1e-1", dict(X=rng.normal(size=(200, 1)), eta_G=1e-1, eta_H=1e-1)),
        ]
    return [
        Case("n1000_d10", lambda: dict(X=anm_continuous(rng, 1000, 10), eta_G=1e-3, eta_H=1e-3),
             where="cpu"),
        Case("n4096_d20", lambda: dict(X=anm_continuous(rng, 4096, 20), eta_G=1e-3, eta_H=1e-3),
             where="gpu", dtypes=("float32",)),
    ]
