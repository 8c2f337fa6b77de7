r"""Discrete causal discovery, graph side: conditional-independence tests (G², Pearson chi²),
CI pruning of a causal order, graph metrics, the Sachs data, and SCORE's Stein Hessian diagonal.
The float64 NumPy/SciPy reference (spec ``causal_discrete.md`` sec. 4-7).

Paper: Vo, Le, Zhao, Bonilla, Phung, "Ordering-based Causal Discovery via Generalized Score
Matching", arXiv 2601.16249. **No official code exists: the pruning rule, the test and alpha
below are RECONSTRUCTED** (check against the PDF: which test, which alpha, and whether the paper
prunes by CI tests, sparse multinomial regression or a BDeu/BIC local search). SCORE: Rolland et
al., "Score matching enables causal discovery of nonlinear additive noise models", arXiv
2203.04413 (comparison point; only its Stein Hessian diagonal is an op here).

Data: ``X`` (n, d) integer codes, ``cards`` (d,) with ``0 <= X[:, i] < cards[i]``; ``A[i, j] = 1``
means i -> j; orders list sources first.

Conditional-independence tests (:func:`ci_test`, :func:`ci_test_batch`)
-------------------------------------------------------------------------
Test ``X_i ⊥ X_c | X_Z`` for ``Z = cond``. Rows are grouped into strata z by the mixed-radix code
of the conditioning columns, ``z = sum_k X[:, Z_k] * prod_{l > k} K_{Z_l}`` (one stratum when
``Z`` is empty); with the contingency counts ``N_xyz`` (x = value of X_i, y = value of X_c) and
margins ``N_xz = sum_y N_xyz``, ``N_yz = sum_x N_xyz``, ``N_z = sum_xy N_xyz``::

    "g2"   (likelihood ratio)   G2   = 2 sum_z sum_{x,y: N_xyz > 0} N_xyz ln(N_xyz N_z / (N_xz N_yz))
    "chi2" (Pearson)            chi2 = sum_z sum_{x,y: E_xyz > 0} (N_xyz - E_xyz)^2 / E_xyz,
                                E_xyz = N_xz N_yz / N_z          (non-empty strata, N_z > 0)

Degrees of freedom::

    df="adjusted" (default)  dof = sum_{z: N_z > 0} (r_z - 1)(c_z - 1),
                             r_z = #{x: N_xz > 0}, c_z = #{y: N_yz > 0}   (non-empty margins)
    df="full"                dof = (K_i - 1)(K_c - 1) prod_{k in Z} K_k

``p = scipy.stats.chi2.sf(stat, dof)``; ``dof == 0`` gives ``p = 1`` (nothing to test: every
non-empty stratum has one observed value of X_i or of X_c; the statistic is then 0 too).
The "adjusted" rule discounts structural zeros; it is the rule of causal-learn's
``Chisq_or_Gsq`` (``CIT(data, "gsq")`` / ``"chisq"``), whose p-values the tests match to ~1e-14. :func:`ci_test` builds the (strata, K_i, K_c) table and
loops over strata; :func:`ci_test_batch` tests one ``i`` against every candidate c with one
stratum code and one ``bincount`` per candidate (the backend op).

Pruning (:func:`prune_ci`, RECONSTRUCTED)
-----------------------------------------
Candidate parents of j are only its predecessors ``pred(j)`` in the order (non-descendants when
the order is compatible, so under faithfulness ``pa(j)`` is the minimal separating set within
``pred(j)``). ``A_hat[k, j] = 1`` for every selected k.

* ``method="grow_shrink"`` (default). Grow: ``S = {}``; repeatedly test j against every
  ``k in pred(j) \ S`` given S and add the k with the smallest p-value while it is < alpha.
  Shrink: test every ``k in S`` given ``S \ {k}``; drop the one with the largest p-value if it
  is >= alpha, re-test the rest, repeat until all are < alpha.
* ``method="full"`` (CAM-pruning analogue): keep k iff the test of j vs k given
  ``pred(j) \ {k}`` has ``p < alpha``.

Ties (equal p-values, e.g. several underflowing to 0) go to the lowest node index.
alpha default 0.01 (spec: 0.05 is an option).

Metrics
-------
* ``order_divergence(A_true, order) = #{i -> j in A_true: pos(j) < pos(i)}``: 0 iff the order
  is compatible with the DAG, ``|E|`` for the fully reversed compatible order; a lower bound of
  SHD. Same count as dodiscover's ``toporder_divergence``.
* ``shd(A_true, A_hat, reversal_cost=1)``: per unordered pair {i, j} the edge state is one of
  none, i -> j, j -> i; a pair whose state differs costs 1, except a reversal (i -> j vs j -> i),
  which costs ``reversal_cost``. Default 1: additions + deletions + reversals, each once.
  ``reversal_cost=2`` equals ``sum |A_true - A_hat|`` (the convention of dodiscover's
  ``structure_hamming_dist(double_for_anticausal=True)`` and of cdt's ``SHD``). Both graphs
  must have no self-loops and no 2-cycles (so every pair has one of the three states); longer
  cycles are allowed in every metric, because the Sachs consensus graph of cdt has one:
  PIP2 -> PIP3 -> plcg -> PIP2, so no order has divergence 0 there (the minimum is 1).
* ``edge_precision_recall(A_true, A_hat)``: directed edges; an edge of A_hat counts as correct
  only if A_true has it with the same direction (a reversed edge is a false positive and a
  false negative). ``precision = TP / |E_hat|``, ``recall = TP / |E_true|``, and ``0/0 := 0.0``
  (scikit-learn's ``zero_division=0``): an empty prediction gives ``(0.0, 0.0)``, also when
  A_true is empty.

Sachs data (:func:`load_sachs`)
-------------------------------
The PyPI package ``cdt`` 0.6.0 ships ``cdt/data/resources/cyto_full_data.csv`` (7,466 rows,
11 proteins, header ``praf,pmek,plcg,PIP2,PIP3,p44/42,pakts473,PKA,PKC,P38,pjnk``; pooled
conditions, treated as observational as cdt does) and ``cyto_full_target.csv`` (18 directed
edges ``"Cause","Effect"``). The files are located with ``importlib.metadata`` and read with the
csv module; cdt itself is never imported (its import pulls heavy modules). Discretisation per
column: ``q = np.quantile(x, [1/B, ..., (B-1)/B])`` (NumPy's default linear interpolation),
``code = np.searchsorted(q, x, side="right")`` in {0..B-1}; with B = 3 every bin holds
2,446-2,526 rows.

SCORE's Stein Hessian diagonal (:func:`stein_hessian_diag`)
-----------------------------------------------------------
For samples ``x_1..x_n`` in R^d: ``s`` = median of the pairwise distances ``|x_a - x_b|`` over
the pairs a < b (the zero diagonal and the symmetric duplicates excluded). This differs from
dodiscover: ``SteinMixin._kernel_width`` in ``dodiscover/toporder/_base.py`` (read at commit
0868cce) takes ``np.median`` of the full flattened n x n distance matrix, the n zeros of the
diagonal included, which gives a slightly smaller s (the median shifts by about n/2 of the
n^2 sorted values; SCORE's original torch code was not re-read); to reproduce dodiscover
exactly one would use that median instead. Kernel ``K_ab = exp(-|x_a - x_b|^2 / (2 s^2)) / s``::

    gK_aj  = -sum_b (x_a - x_b)_j K_ab / s^2  = -(x_aj k_a - (K X)_aj) / s^2,  k_a = sum_b K_ab
    g2K_aj = sum_b (-1/s^2 + (x_a - x_b)_j^2 / s^4) K_ab
           = -k_a / s^2 + (x_aj^2 k_a - 2 x_aj (K X)_aj + (K X^2)_aj) / s^4
    G      = (K + eta_G I)^-1 gK                    (Stein gradient estimator of grad log p)
    H_diag = -G^2 + (K + eta_H I)^-1 g2K            (diagonal of the Hessian of log p)

both solves by Cholesky (``scipy.linalg.cho_factor``/``cho_solve``); the n x n x d difference
tensor is never formed (three matrix products instead). SCORE's leaf is ``argmin_j Var_a
H_diag[a, j]``. Inputs float32/float64; computed and returned in float64 (reference).

Every array function validates its inputs through :mod:`refimpl._validate` (same messages on
every backend) and takes NumPy arrays only.
"""

from __future__ import annotations

import csv
import importlib.metadata

import numpy as np
from scipy import linalg as sla
from scipy import stats
from scipy.spatial.distance import pdist

from refimpl import _validate as V

__all__ = [
    "ci_test", "ci_test_batch", "prune_ci", "order_divergence", "shd", "edge_precision_recall",
    "load_sachs", "stein_hessian_diag", "CI_TESTS", "CI_DF_RULES", "PRUNE_METHODS",
    "SACHS_NAMES", "SACHS_EDGES",
]

CI_TESTS = ("g2", "chi2")
CI_DF_RULES = ("adjusted", "full")
PRUNE_METHODS = ("grow_shrink", "full")

SACHS_NAMES = ("praf", "pmek", "plcg", "PIP2", "PIP3", "p44/42", "pakts473", "PKA", "PKC", "P38",
               "pjnk")
SACHS_EDGES = (  # cyto_full_target.csv of cdt 0.6.0 (Sachs et al. 2005 consensus network)
    ("PIP2", "PKC"), ("plcg", "PIP2"), ("PIP3", "plcg"), ("PIP2", "PIP3"), ("plcg", "PKC"),
    ("PKC", "pjnk"), ("PKC", "P38"), ("PKA", "P38"), ("PKC", "praf"), ("PKA", "praf"),
    ("praf", "pmek"), ("pmek", "p44/42"), ("PKC", "pmek"), ("PKA", "pakts473"),
    ("PIP3", "pakts473"), ("PKA", "pmek"), ("PKA", "p44/42"), ("PKA", "pjnk"),
)
SACHS_INSTALL = "pip install --no-deps cdt==0.6.0"


# --------------------------------------------------------------------------- CI tests


def _strata(X, cards, cond) -> tuple[np.ndarray, int]:
    """Mixed-radix stratum code of the rows over the columns ``cond`` (0 when empty) and the
    number of possible strata ``prod K_Z`` (a Python int, for ``df="full"``)."""
    z = np.zeros(X.shape[0], dtype=np.int64)
    n_strata = 1
    for k in cond:
        n_strata *= int(cards[k])
    if n_strata < 2**62:
        for k in cond:
            z = z * int(cards[k]) + X[:, k].astype(np.int64)
    else:  # the code would overflow int64: number the observed patterns instead
        z = np.unique(X[:, list(cond)], axis=0, return_inverse=True)[1].astype(np.int64).ravel()
    return z, n_strata


def _pvalue(stat: float, dof: int) -> float:
    return 1.0 if dof == 0 else float(stats.chi2.sf(stat, dof))


def _stratum_stat(N: np.ndarray, test: str) -> tuple[float, int]:
    """Statistic and adjusted dof of one non-empty stratum's (K_x, K_y) table."""
    nx, ny, nz = N.sum(1), N.sum(0), N.sum()
    E = np.outer(nx, ny) / nz
    if test == "g2":
        m = N > 0
        stat = 2.0 * float(np.sum(N[m] * np.log(N[m] * nz / np.outer(nx, ny)[m])))
    else:
        m = E > 0
        stat = float(np.sum((N[m] - E[m]) ** 2 / E[m]))
    return stat, (int(np.count_nonzero(nx)) - 1) * (int(np.count_nonzero(ny)) - 1)


def ci_test(X, cards, i, j, cond=(), test="g2", df="adjusted"):
    """Test ``X_i ⊥ X_j | X_cond`` by G² (``test="g2"``) or Pearson's chi² (``"chi2"``).

    Returns ``(stat, dof, pvalue)`` as Python ``(float, int, float)``; see the module docstring
    for the statistics and the two ``df`` rules. ``dof == 0`` gives ``pvalue = 1``."""
    X = V.host_array(X, "X")
    n, d, cards = V.discrete_data(X, cards)
    i, cand, cond = V.ci_args(d, i, j, cond, test, df, n)
    if cand.shape != (1,):
        raise ValueError(f"j must be one column index, got {np.asarray(j).tolist()!r} "
                         f"(use ci_test_batch for several)")
    j = int(cand[0])
    z, n_strata = _strata(X, cards, cond)
    zs, zinv = np.unique(z, return_inverse=True)     # non-empty strata only
    kx, ky = int(cards[i]), int(cards[j])
    T = np.zeros((zs.size, kx, ky), dtype=np.float64)
    np.add.at(T, (zinv.ravel(), X[:, i].astype(np.int64), X[:, j].astype(np.int64)), 1.0)
    stat, dof_adj = 0.0, 0
    for s in range(zs.size):
        st, dz = _stratum_stat(T[s], test)
        stat += st
        dof_adj += dz
    dof = dof_adj if df == "adjusted" else V.full_dof(kx, ky, n_strata)
    return float(stat), int(dof), _pvalue(stat, dof)


def ci_test_batch(X, cards, i, candidates, cond=(), test="g2", df="adjusted"):
    """Test ``X_i ⊥ X_c | X_cond`` for every ``c`` in ``candidates`` (int array (k,)).

    Returns ``(stat (k,) float64, dof (k,) int64, pvalue (k,) float64)``. One stratum code
    and one x code shared by all candidates; per candidate one ``bincount`` of the flat cell
    index ``(z, x, y)`` over the observed strata, then vectorised G²/chi² over all cells."""
    X = V.host_array(X, "X")
    n, d, cards = V.discrete_data(X, cards)
    i, cand, cond = V.ci_args(d, i, candidates, cond, test, df, n)
    z, n_strata = _strata(X, cards, cond)
    zinv = np.unique(z, return_inverse=True)[1].ravel().astype(np.int64)
    nz_obs = int(zinv.max()) + 1
    kx = int(cards[i])
    zx = zinv * kx + X[:, i].astype(np.int64)
    k = cand.size
    stat = np.zeros(k, dtype=np.float64)
    dof = np.zeros(k, dtype=np.int64)
    pval = np.ones(k, dtype=np.float64)
    for t, c in enumerate(cand):
        ky = int(cards[c])
        N = np.bincount(zx * ky + X[:, c].astype(np.int64),
                        minlength=nz_obs * kx * ky).astype(np.float64).reshape(nz_obs, kx, ky)
        Nxz = N.sum(2, keepdims=True)                  # (nz, kx, 1)
        Nyz = N.sum(1, keepdims=True)                  # (nz, 1, ky)
        Nz = N.sum((1, 2), keepdims=True)              # (nz, 1, 1), all > 0 (observed strata)
        E = Nxz * Nyz / Nz
        if test == "g2":
            m = N > 0
            stat[t] = 2.0 * np.sum(N[m] * np.log(N[m] * np.broadcast_to(Nz, N.shape)[m] / (Nxz * Nyz)[m]))
        else:
            m = E > 0
            stat[t] = np.sum((N[m] - E[m]) ** 2 / E[m])
        if df == "adjusted":
            r = np.count_nonzero(Nxz[:, :, 0], axis=1)
            cc = np.count_nonzero(Nyz[:, 0, :], axis=1)
            dof[t] = int(np.sum((r - 1) * (cc - 1)))
        else:
            dof[t] = V.full_dof(kx, ky, n_strata)
        pval[t] = _pvalue(float(stat[t]), int(dof[t]))
    return stat, dof, pval


# --------------------------------------------------------------------------- pruning


def _grow_shrink(X, cards, j, pred, alpha, test, df) -> list[int]:
    S: list[int] = []
    while True:                                        # grow
        rest = [k for k in pred if k not in S]
        if not rest:
            break
        _, _, p = ci_test_batch(X, cards, j, np.array(rest, dtype=np.int64), tuple(S), test, df)
        best = int(np.argmin(p))                       # first minimum = lowest index (rest sorted)
        if p[best] >= alpha:
            break
        S.append(rest[best])
    while S:                                           # shrink
        S.sort()
        p = np.array([ci_test(X, cards, j, k, tuple(m for m in S if m != k), test, df)[2]
                      for k in S])
        worst = int(np.argmax(p))                      # least significant, lowest index on ties
        if p[worst] < alpha:
            break
        S.pop(worst)
    return sorted(S)


def _full(X, cards, j, pred, alpha, test, df) -> list[int]:
    return [k for k in pred
            if ci_test(X, cards, j, k, tuple(m for m in pred if m != k), test, df)[2] < alpha]


def prune_ci(X, cards, order, alpha=0.01, test="g2", method="grow_shrink", df="adjusted"):
    """Estimate the DAG ``A_hat`` (d, d) int64 from a causal order (sources first) by
    conditional-independence tests restricted to predecessors (RECONSTRUCTED; see the module
    docstring). The result is acyclic and compatible with ``order`` by construction."""
    X = V.host_array(X, "X")
    n, d, cards = V.discrete_data(X, cards)
    order = V.graph_order(order, d)
    alpha = V.graph_alpha(alpha)
    V.choice(test, "test", CI_TESTS)
    V.choice(method, "method", PRUNE_METHODS)
    V.choice(df, "df", CI_DF_RULES)
    V.ci_args(d, 0, [], (), test, df, n)               # the common n check of the tests
    select = _grow_shrink if method == "grow_shrink" else _full
    A = np.zeros((d, d), dtype=np.int64)
    for pos in range(1, d):
        j = int(order[pos])
        pred = sorted(int(k) for k in order[:pos])
        for k in select(X, cards, j, pred, alpha, test, df):
            A[k, j] = 1
    return A


# --------------------------------------------------------------------------- metrics


def order_divergence(A_true, order):
    """``#{i -> j in A_true with j placed before i}`` (an int; 0 iff compatible). A_true may
    have cycles (the Sachs consensus graph does); then no order reaches 0."""
    A = V.graph_adjacency(V.host_array(A_true, "A_true"), "A_true")
    order = V.graph_order(order, A.shape[0])
    pos = np.empty(A.shape[0], dtype=np.int64)
    pos[order] = np.arange(A.shape[0])
    src, dst = np.nonzero(A)
    return int(np.count_nonzero(pos[dst] < pos[src]))


def shd(A_true, A_hat, reversal_cost=1):
    """Structural Hamming distance over unordered pairs; a reversed edge costs
    ``reversal_cost`` (1 default, 2 = ``sum |A_true - A_hat|``). Returns an int."""
    A = V.graph_adjacency(V.host_array(A_true, "A_true"), "A_true", no_two_cycles=True)
    B = V.graph_adjacency(V.host_array(A_hat, "A_hat"), "A_hat", d=A.shape[0], no_two_cycles=True)
    rc = V.graph_reversal_cost(reversal_cost)
    total = 0
    d = A.shape[0]
    for a in range(d):
        for b in range(a + 1, d):
            st = (int(A[a, b]), int(A[b, a]))
            sh = (int(B[a, b]), int(B[b, a]))
            if st == sh:
                continue
            total += rc if (st != (0, 0) and sh != (0, 0)) else 1
    return total


def edge_precision_recall(A_true, A_hat):
    """``(precision, recall)`` of the directed edges of A_hat; 0/0 := 0.0."""
    A = V.graph_adjacency(V.host_array(A_true, "A_true"), "A_true")
    B = V.graph_adjacency(V.host_array(A_hat, "A_hat"), "A_hat", d=A.shape[0])
    tp = int(np.count_nonzero((A == 1) & (B == 1)))
    n_hat, n_true = int(B.sum()), int(A.sum())
    return (tp / n_hat if n_hat else 0.0), (tp / n_true if n_true else 0.0)


# --------------------------------------------------------------------------- Sachs


def _cdt_file(name: str):
    try:
        dist = importlib.metadata.distribution("cdt")
    except importlib.metadata.PackageNotFoundError:
        raise ImportError(f"load_sachs needs the data files of the PyPI package cdt 0.6.0 (it is "
                          f"not imported, only its files are read): {SACHS_INSTALL}") from None
    path = dist.locate_file(f"cdt/data/resources/{name}")
    try:
        with open(path, newline="") as fh:
            return list(csv.reader(fh))
    except FileNotFoundError:
        raise ImportError(f"the installed cdt has no {name} (expected at {path}); "
                          f"{SACHS_INSTALL}") from None


def load_sachs(n_bins=3):
    """The Sachs et al. (2005) flow-cytometry data of cdt 0.6.0, discretised by per-column
    quantile bins. Returns ``(X (7466, 11) int64 codes, cards (11,) int64 = n_bins, names
    (tuple of 11 str), A_true (11, 11) int64 with the 18 consensus edges)``."""
    n_bins = V.positive_int(n_bins, "n_bins", minimum=2)
    rows = _cdt_file("cyto_full_data.csv")
    names = tuple(h.strip() for h in rows[0])
    data = np.array([[float(v) for v in r] for r in rows[1:] if r], dtype=np.float64)
    qs = np.arange(1, n_bins) / n_bins
    X = np.empty(data.shape, dtype=np.int64)
    for c in range(data.shape[1]):
        q = np.quantile(data[:, c], qs)
        X[:, c] = np.searchsorted(q, data[:, c], side="right")
    edges = _cdt_file("cyto_full_target.csv")
    index = {nm: k for k, nm in enumerate(names)}
    A = np.zeros((len(names), len(names)), dtype=np.int64)
    for cause, effect in edges[1:]:
        A[index[cause.strip()], index[effect.strip()]] = 1
    cards = np.full(len(names), n_bins, dtype=np.int64)
    return X, cards, names, A


# --------------------------------------------------------------------------- SCORE


def _cho(M: np.ndarray, eta: float, name: str):
    try:
        return sla.cho_factor(M, lower=True, check_finite=False)
    except np.linalg.LinAlgError:
        raise V.stein_not_positive_definite(name, eta) from None


def stein_hessian_diag(X, eta_G=1e-3, eta_H=1e-3):
    """SCORE's Stein estimate of the diagonal of the Hessian of ``log p`` at the samples:
    float (n, d) -> (n, d) float64. See the module docstring (kernel, bandwidth, solves)."""
    X = V.host_array(X, "X")
    n, _, eta_G, eta_H = V.stein_args(X, eta_G, eta_H)
    X = np.asarray(X, dtype=np.float64)
    s = float(np.median(pdist(X)))                     # pairs a < b
    V.stein_bandwidth(s)
    sq = np.sum(X * X, axis=1)
    D2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * (X @ X.T), 0.0)
    K = np.exp(-D2 / (2.0 * s * s)) / s
    k = K.sum(axis=1)[:, None]                         # row sums (n, 1)
    KX = K @ X
    KX2 = K @ (X * X)
    gK = -(X * k - KX) / s**2
    g2K = -k / s**2 + (X * X * k - 2.0 * X * KX + KX2) / s**4
    eye = np.eye(n)
    cG = _cho(K + eta_G * eye, eta_G, "eta_G")
    cH = cG if eta_H == eta_G else _cho(K + eta_H * eye, eta_H, "eta_H")   # one factor if equal
    G = sla.cho_solve(cG, gK, check_finite=False)
    return -G * G + sla.cho_solve(cH, g2K, check_finite=False)
