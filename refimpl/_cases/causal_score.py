"""Registry cases and tolerances of the discrete-score ops of the causal-discovery family
(spec causal_discrete.md sec. 8-9): ``discrete_score_plugin``, ``gsm_marginal_loss``,
``leaf_statistic``.

Data: a cyclic discrete ANM (:func:`refimpl._causal_score.sample_discrete_anm`, faithful,
Dirichlet(2) noise) on an ER DAG of expected degree 2 (:func:`random_dag`), both seeded by the
case ``rng``. ``X`` is an integer array (int64, one case int32 / uint8: backends must accept any
integer dtype; the harness keeps integer dtypes), ``cards`` a Python list of ints (stays on the
host). The ``S_all`` inputs of ``leaf_statistic`` / ``gsm_marginal_loss`` are the reference
plug-in score of that data (float64, NaN-padded beyond K_i; the harness casts them to float32
for float32 runs), ``weights`` (when given) ``U(0.5, 1.5)`` per row.

Scales: "tiny" n = 50, d = 3, K = 2 (Numba simulator: at most three cases per op); "small"
n = 2000, d = 6, K = 3 plus mixed cards (2, 3, 4, 3, 2, 5) (NaN padding), alpha 1 and 0.5, the
concrete kind, every leaf criterion, weights given and None; "bench" CPU n = 2000, d = 10,
K = 3 and GPU n = 1,000,000, d = 20, K = 3 (built lazily). Every case is deterministic given
``rng``.
"""

from __future__ import annotations

import numpy as np

from refimpl._cases import Case

PAPER = "2601.16249"   # Vo et al., Ordering-based Causal Discovery via Generalized Score Matching

# dtype -> output name ("*" = default) -> (rtol, atol)
TOL = {
    "float64": {"*": (1e-10, 1e-10)},
    "float32": {"*": (5e-4, 1e-5)},
}

MIXED = (2, 3, 4, 3, 2, 5)
CRITERIA = ("invariance_sum", "invariance_entropy", "var_score")


def _check_scale(scale):
    if scale not in ("tiny", "small", "bench"):
        raise ValueError(f"unknown scale {scale!r}; expected 'tiny', 'small' or 'bench'")


# --------------------------------------------------------------------------- input builders


def anm_data(rng, n, cards, degree=2.0, dtype=np.int64):
    """``(X (n, d) of ``dtype``, cards list)``: a faithful cyclic ANM on an ER DAG."""
    from refimpl._causal_score import random_dag, sample_discrete_anm

    cards = [int(k) for k in cards]
    d = len(cards)
    A = random_dag(d, min(degree, d - 1), rng, kind="er")
    X, _ = sample_discrete_anm(A, cards, n, rng)
    return X.astype(dtype), cards


def score_inputs(rng, n, cards, alpha=1.0, weights=False, dtype=np.int64):
    """``dict(S_all, X, cards[, weights])`` with S_all the reference plug-in score of X."""
    from refimpl._causal_score import discrete_score_plugin

    X, cards = anm_data(rng, n, cards, dtype=dtype)
    kw = dict(S_all=discrete_score_plugin(X, cards, alpha=alpha), X=X, cards=cards)
    if weights:
        kw["weights"] = rng.uniform(0.5, 1.5, n)
    return kw


# --------------------------------------------------------------------------- cases


def cases_discrete_score_plugin(rng, scale):
    """Cases of ``discrete_score_plugin(X, cards, alpha, kind)``."""
    _check_scale(scale)

    def case(n, cards, alpha=1.0, kind="marginal", dtype=np.int64):
        X, c = anm_data(rng, n, cards, dtype=dtype)
        return dict(X=X, cards=c, alpha=alpha, kind=kind)

    if scale == "tiny":
        return [
            Case("n50_d3_K2", case(50, (2, 2, 2))),
            Case("n50_d3_K2_alpha0.5_concrete", case(50, (2, 2, 2), 0.5, "concrete")),
        ]
    if scale == "small":
        return [
            Case("n2000_d6_K3", case(2000, (3,) * 6)),
            Case("n2000_d6_K3_alpha0.5", case(2000, (3,) * 6, 0.5)),
            Case("n2000_d6_mixed", case(2000, MIXED)),
            Case("n2000_d6_mixed_alpha0.5_int32", case(2000, MIXED, 0.5, dtype=np.int32)),
            Case("n2000_d6_mixed_concrete_uint8", case(2000, MIXED, 1.0, "concrete", np.uint8)),
        ]
    return [
        Case("n2000_d10_K3", lambda: case(2000, (3,) * 10), where="cpu"),
        Case("n1000000_d20_K3", lambda: case(1_000_000, (3,) * 20), where="gpu"),
    ]


def cases_gsm_marginal_loss(rng, scale):
    """Cases of ``gsm_marginal_loss(S_all, X, cards)``."""
    _check_scale(scale)
    if scale == "tiny":
        return [
            Case("n50_d3_K2", score_inputs(rng, 50, (2, 2, 2))),
            Case("n50_d3_K23_alpha0.5", score_inputs(rng, 50, (2, 3, 2), alpha=0.5)),
        ]
    if scale == "small":
        return [
            Case("n2000_d6_K3", score_inputs(rng, 2000, (3,) * 6)),
            Case("n2000_d6_mixed", score_inputs(rng, 2000, MIXED)),
            Case("n2000_d6_mixed_alpha0.5_int32", score_inputs(rng, 2000, MIXED, 0.5,
                                                               dtype=np.int32)),
        ]
    return [
        Case("n2000_d10_K3", lambda: score_inputs(rng, 2000, (3,) * 10), where="cpu"),
        Case("n1000000_d20_K3", lambda: score_inputs(rng, 1_000_000, (3,) * 20), where="gpu"),
    ]


def cases_leaf_statistic(rng, scale):
    """Cases of ``leaf_statistic(S_all, X, cards, criterion, weights)``: every criterion,
    weights None and given, uniform and mixed cards."""
    _check_scale(scale)

    def case(n, cards, criterion, alpha=1.0, weights=False, dtype=np.int64):
        kw = score_inputs(rng, n, cards, alpha, weights, dtype)
        kw["criterion"] = criterion
        kw.setdefault("weights", None)
        return kw

    if scale == "tiny":
        return [
            Case("n50_d3_K2_sum", case(50, (2, 2, 2), "invariance_sum")),
            Case("n50_d3_K23_entropy_weights", case(50, (2, 3, 2), "invariance_entropy",
                                                    weights=True)),
            Case("n50_d3_K2_var_score", case(50, (2, 2, 2), "var_score")),
        ]
    if scale == "small":
        out = []
        for crit in CRITERIA:
            out.append(Case(f"n2000_d6_K3_{crit}", case(2000, (3,) * 6, crit)))
            out.append(Case(f"n2000_d6_mixed_{crit}_weights", case(2000, MIXED, crit, 0.5, True)))
        out.append(Case("n2000_d6_mixed_invariance_sum_int32",
                        case(2000, MIXED, "invariance_sum", dtype=np.int32)))
        return out
    return [
        Case("n2000_d10_K3", lambda: case(2000, (3,) * 10, "invariance_sum"), where="cpu"),
        Case("n1000000_d20_K3", lambda: case(1_000_000, (3,) * 20, "invariance_sum"),
             where="gpu"),
    ]
