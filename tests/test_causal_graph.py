"""Reference tests of refimpl._causal_graph (spec causal_discrete.md sec. 4-7, 9): SciPy's
``chi2_contingency`` (unconditional tables and per stratum) and causal-learn's ``CIT`` (test-only)
as oracles of the CI tests, the per-candidate test as the oracle of the batched one, recovery
of known ANM graphs by pruning, hand-made graphs for the metrics, the files of cdt 0.6.0 for
Sachs, the Gaussian closed form and a difference-tensor implementation for the Stein Hessian
diagonal, and the argument errors."""

from __future__ import annotations

import importlib.metadata
import inspect
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from scipy import stats

from refimpl import _causal_graph as R
from refimpl import _validate as V
from refimpl._cases import causal_graph as K

pytestmark = pytest.mark.filterwarnings("error::RuntimeWarning")


def _table(x, y, kx, ky):
    T = np.zeros((kx, ky))
    np.add.at(T, (x, y), 1.0)
    return T


def _scipy_stratum(T, test):
    """(stat, dof) of one stratum's table by SciPy, empty rows/columns removed (SciPy refuses
    zero expected counts); a table with one row or column contributes (0, 0)."""
    T = T[T.sum(1) > 0][:, T.sum(0) > 0]
    if T.shape[0] < 2 or T.shape[1] < 2:
        return 0.0, 0
    lam = "log-likelihood" if test == "g2" else None
    res = stats.chi2_contingency(T, correction=False, lambda_=lam)
    return float(res[0]), int(res[2])


def _has_cdt() -> bool:
    try:
        importlib.metadata.distribution("cdt")
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


# --------------------------------------------------------------------------- API


def test_signatures_follow_the_contract():
    sig = lambda f: str(inspect.signature(f))
    assert sig(R.ci_test) == "(X, cards, i, j, cond=(), test='g2', df='adjusted')"
    assert sig(R.ci_test_batch) == "(X, cards, i, candidates, cond=(), test='g2', df='adjusted')"
    assert sig(R.prune_ci) == ("(X, cards, order, alpha=0.01, test='g2', method='grow_shrink', "
                               "df='adjusted')")
    assert sig(R.order_divergence) == "(A_true, order)"
    assert sig(R.shd) == "(A_true, A_hat, reversal_cost=1)"
    assert sig(R.edge_precision_recall) == "(A_true, A_hat)"
    assert sig(R.load_sachs) == "(n_bins=3)"
    assert sig(R.stein_hessian_diag) == "(X, eta_G=0.001, eta_H=0.001)"


# --------------------------------------------------------------------------- CI tests


@pytest.mark.parametrize("test", ["g2", "chi2"])
def test_unconditional_matches_scipy_chi2_contingency(test):
    rng = np.random.default_rng(0)
    for kx, ky, dep in ((2, 2, False), (3, 4, True), (5, 3, True), (4, 4, False)):
        n = 800
        X = np.empty((n, 2), dtype=np.int64)
        X[:, 0] = rng.integers(0, kx, n)
        X[:, 1] = (X[:, 0] + rng.integers(0, 2, n)) % ky if dep else rng.integers(0, ky, n)
        T = _table(X[:, 0], X[:, 1], kx, ky)
        assert (T.sum(0) > 0).all() and (T.sum(1) > 0).all()      # no empty margins
        lam = "log-likelihood" if test == "g2" else None
        s_stat, s_p, s_dof, _ = stats.chi2_contingency(T, correction=False, lambda_=lam)
        for df in ("adjusted", "full"):
            stat, dof, p = R.ci_test(X, [kx, ky], 0, 1, test=test, df=df)
            assert dof == s_dof == (kx - 1) * (ky - 1)
            assert stat == pytest.approx(s_stat, rel=1e-12, abs=1e-12)
            assert p == pytest.approx(s_p, rel=1e-10, abs=1e-300)


@pytest.mark.parametrize("test", ["g2", "chi2"])
def test_conditional_is_the_sum_over_strata(test):
    """Sparse strata (n = 150, |cond| = 2 with 3 x 4 strata): empty rows/columns and strata;
    the statistic and the adjusted dof are sums of per-stratum SciPy values, the full dof is
    (K_x - 1)(K_y - 1) prod K_Z, p = chi2.sf."""
    cards = [4, 3, 3, 4]
    for seed in range(3):
        X = K.chain_codes(np.random.default_rng(seed), 150, cards, noise=0.5)
        i, j, cond = 1, 3, (0, 2)
        s_stat, s_dof = 0.0, 0
        for a in range(cards[0]):
            for b in range(cards[2]):
                rows = (X[:, 0] == a) & (X[:, 2] == b)
                if rows.any():
                    st, dz = _scipy_stratum(_table(X[rows, i], X[rows, j], cards[i], cards[j]), test)
                    s_stat += st
                    s_dof += dz
        stat, dof, p = R.ci_test(X, cards, i, j, cond, test=test, df="adjusted")
        assert dof == s_dof
        assert stat == pytest.approx(s_stat, rel=1e-12)
        assert p == pytest.approx(stats.chi2.sf(s_stat, s_dof), rel=1e-10)
        stat_f, dof_f, p_f = R.ci_test(X, cards, i, j, cond, test=test, df="full")
        assert dof_f == (cards[i] - 1) * (cards[j] - 1) * cards[0] * cards[2] > dof
        assert stat_f == stat
        assert p_f == pytest.approx(stats.chi2.sf(s_stat, dof_f), rel=1e-10)


@pytest.mark.parametrize("method", ["gsq", "chisq"])
def test_pvalues_match_causal_learn(method):
    """causal-learn's ``Chisq_or_Gsq`` sums (r_z - 1)(c_z - 1) over the non-empty strata with
    r/c its non-empty margins, i.e. our ``df="adjusted"``, and gives p = 1 when that is 0; it
    re-codes each column to its observed levels, which does not change any count."""
    cl = pytest.importorskip("causallearn.utils.cit", reason="causal-learn is a test-only oracle "
                                                            "(pip install causal-learn)")
    test = "g2" if method == "gsq" else "chi2"
    cards = [2, 3, 4, 3, 2, 3]
    worst = 0.0
    for seed, n in ((0, 300), (1, 2000)):
        X = K.chain_codes(np.random.default_rng(seed), n, cards, noise=0.4)
        cit = cl.CIT(X.astype(np.float64), method)
        for i, j, cond in ((0, 1, ()), (0, 2, ()), (0, 2, (1,)), (1, 3, (2,)), (0, 5, (2, 3)),
                           (5, 1, (0, 2, 3)), (4, 0, (1, 2, 3, 5))):
            p_cl = float(cit(i, j, list(cond)))
            p = R.ci_test(X, cards, i, j, cond, test=test, df="adjusted")[2]
            assert p == pytest.approx(p_cl, rel=1e-9, abs=1e-14), (seed, i, j, cond)
            worst = max(worst, abs(p - p_cl))
    assert worst < 1e-9


def test_batch_equals_per_candidate_tests():
    rng = np.random.default_rng(0)
    cases = K.cases_ci_test_batch(rng, "tiny") + K.cases_ci_test_batch(rng, "small")
    for case in cases:
        kw = case.inputs()
        stat, dof, p = R.ci_test_batch(**kw)
        assert stat.dtype == np.float64 and dof.dtype == np.int64 and p.dtype == np.float64
        assert stat.shape == dof.shape == p.shape == (kw["candidates"].size,)
        for t, c in enumerate(kw["candidates"]):
            s1, d1, p1 = R.ci_test(kw["X"], kw["cards"], kw["i"], int(c), kw["cond"], kw["test"],
                                   kw["df"])
            assert d1 == dof[t], case.label
            assert stat[t] == pytest.approx(s1, rel=1e-12, abs=1e-12), case.label
            assert p[t] == pytest.approx(p1, rel=1e-12, abs=1e-300), case.label


def test_zero_dof_gives_p_one():
    """X_0 is a function of the conditioning column: each stratum has one x value, so the
    adjusted dof is 0 and p = 1 (stat 0), while the full rule still counts its cells."""
    rng = np.random.default_rng(3)
    n = 500
    X = np.empty((n, 3), dtype=np.int64)
    X[:, 2] = rng.integers(0, 3, n)
    X[:, 0] = X[:, 2] % 2
    X[:, 1] = rng.integers(0, 3, n)
    for test in ("g2", "chi2"):
        assert R.ci_test(X, [2, 3, 3], 0, 1, (2,), test) == (0.0, 0, 1.0)
        stat, dof, p = R.ci_test_batch(X, [2, 3, 3], 0, [1], (2,), test)
        assert stat[0] == 0.0 and dof[0] == 0 and p[0] == 1.0
        stat, dof, p = R.ci_test(X, [2, 3, 3], 0, 1, (2,), test, df="full")
        assert dof == 1 * 2 * 3 and stat == 0.0 and p == 1.0   # chi2.sf(0, 6) = 1
    # a constant column: dof 0 in either rule's adjusted form, p = 1
    Xc = X.copy()
    Xc[:, 0] = 1
    assert R.ci_test(Xc, [2, 3, 3], 0, 1) == (0.0, 0, 1.0)


def test_independent_data_give_uniform_pvalues_and_dependence_is_detected():
    """Under the null (independent uniform codes) G² p-values are roughly uniform; a chain
    X_0 -> X_1 -> X_2 has X_0 ⊥ X_2 | X_1 only."""
    rng = np.random.default_rng(4)
    ps = [R.ci_test(K.uniform_codes(rng, 1000, [3, 3, 3]), [3, 3, 3], 0, 1, (2,))[2]
          for _ in range(200)]
    assert 0.05 < np.mean(np.array(ps) < 0.1) < 0.16
    assert stats.kstest(ps, "uniform").pvalue > 1e-3
    X = K.chain_codes(rng, 3000, [3, 3, 3])
    assert R.ci_test(X, [3, 3, 3], 0, 2)[2] < 1e-10
    assert R.ci_test(X, [3, 3, 3], 0, 2, (1,))[2] > 1e-3


# --------------------------------------------------------------------------- pruning


def _topo(A):
    d = A.shape[0]
    indeg, alive, order = A.sum(0).copy(), set(range(d)), []
    while alive:
        k = min(v for v in alive if indeg[v] == 0)
        order.append(k)
        alive.remove(k)
        indeg = indeg - A[k]
    return order


def test_pruning_recovers_faithful_anms_with_the_true_order():
    S = pytest.importorskip("refimpl._causal_score", reason="the samplers of the score module")
    shds = []
    for seed in range(10):
        rng = np.random.default_rng(seed)
        A = S.random_dag(6, 2, rng)
        X, _ = S.sample_discrete_anm(A, [3] * 6, 20000, rng)
        order = _topo(A)
        A_hat = R.prune_ci(X, [3] * 6, order)
        assert A_hat.dtype == np.int64 and A_hat.shape == (6, 6)
        assert R.order_divergence(A_hat, order) == 0        # compatible with the order
        shds.append(R.shd(A, A_hat))
    assert sum(s == 0 for s in shds) >= 7, shds


def test_pruning_full_method_and_ties():
    rng = np.random.default_rng(5)
    n = 4000
    X = np.empty((n, 3), dtype=np.int64)
    X[:, 0] = rng.integers(0, 3, n)
    X[:, 1] = X[:, 0]                                       # an exact copy: tied p-values
    X[:, 2] = (X[:, 0] + (rng.random(n) < 0.2)) % 3
    for method in ("grow_shrink", "full"):
        A_hat = R.prune_ci(X, [3, 3, 3], [0, 1, 2], method=method)
        assert A_hat[0, 1] == 1 and A_hat[:, 0].sum() == 0
        if method == "grow_shrink":
            # grow picks the lowest index of the tie (0), then 1 | 0 has dof 0 (p = 1)
            assert A_hat[0, 2] == 1 and A_hat[1, 2] == 0
        else:
            # each copy given the other has dof 0: both are dropped
            assert A_hat[0, 2] == 0 and A_hat[1, 2] == 0
    # chain: "full" and "grow_shrink" agree (seed 0: the null p-values are 0.20 and 0.25;
    # with other seeds a 1% false positive happens, e.g. p = 0.0055 at seed 2)
    X = K.chain_codes(np.random.default_rng(0), 5000, [3, 3, 3, 3])
    want = np.diag(np.ones(3, dtype=np.int64), 1)
    for method in ("grow_shrink", "full"):
        for test in ("g2", "chi2"):
            assert np.array_equal(R.prune_ci(X, [3] * 4, [0, 1, 2, 3], 0.01, test, method), want)


# --------------------------------------------------------------------------- metrics


def _graph(d, edges):
    A = np.zeros((d, d), dtype=np.int64)
    for a, b in edges:
        A[a, b] = 1
    return A


def test_order_divergence_hand_cases():
    A = _graph(4, [(0, 1), (1, 2), (0, 2), (2, 3)])
    assert R.order_divergence(A, [0, 1, 2, 3]) == 0
    assert R.order_divergence(A, [3, 2, 1, 0]) == 4          # |E| for the reversed order
    assert R.order_divergence(A, [1, 0, 2, 3]) == 1
    assert R.order_divergence(A, [0, 2, 1, 3]) == 1
    assert R.order_divergence(A, [3, 0, 1, 2]) == 1
    # dodiscover's definition: for each node in order, count its true parents placed after it
    rng = np.random.default_rng(0)
    for _ in range(20):
        perm = rng.permutation(6)
        B = np.triu((rng.random((6, 6)) < 0.4).astype(np.int64), 1)[np.ix_(perm, perm)]
        order = rng.permutation(6)
        want = sum(int(B[order[k + 1:], order[k]].sum()) for k in range(6))
        assert R.order_divergence(B, order) == want


def test_shd_hand_cases_and_both_conventions():
    A = _graph(3, [(0, 1), (1, 2)])
    assert R.shd(A, A) == 0
    B = _graph(3, [(1, 0), (0, 2)])   # reversal of 0->1, addition 0->2, deletion 1->2
    assert R.shd(A, B) == 3
    assert R.shd(A, B, reversal_cost=2) == 4 == int(np.abs(A - B).sum())
    assert R.shd(A, A.T) == 2 and R.shd(A, A.T, 2) == 4
    assert R.shd(A, np.zeros_like(A)) == 2
    rng = np.random.default_rng(1)
    for _ in range(30):
        P = [np.triu((rng.random((7, 7)) < 0.35).astype(np.int64), 1)[np.ix_(p, p)]
             for p in (rng.permutation(7), rng.permutation(7))]
        assert R.shd(P[0], P[1], 2) == int(np.abs(P[0] - P[1]).sum())
        skel = lambda M: (M + M.T) > 0
        n_rev = int(np.sum((P[0] == 1) & (P[1].T == 1)))
        assert R.shd(P[0], P[1]) == int(np.triu(skel(P[0]) != skel(P[1])).sum()) + n_rev


def test_edge_precision_recall_hand_cases():
    A = _graph(3, [(0, 1), (1, 2)])
    B = _graph(3, [(0, 1), (2, 1), (0, 2)])   # one correct, one reversed (wrong), one extra
    assert R.edge_precision_recall(A, B) == pytest.approx((1 / 3, 1 / 2))
    assert R.edge_precision_recall(A, A) == (1.0, 1.0)
    assert R.edge_precision_recall(A, A.T) == (0.0, 0.0)
    assert R.edge_precision_recall(A, np.zeros_like(A)) == (0.0, 0.0)   # empty prediction
    assert R.edge_precision_recall(np.zeros_like(A), np.zeros_like(A)) == (0.0, 0.0)
    assert R.edge_precision_recall(np.zeros_like(A), A) == (0.0, 0.0)


# --------------------------------------------------------------------------- Sachs


@pytest.mark.skipif(not _has_cdt(), reason="Sachs data need the PyPI package cdt: "
                                           "pip install --no-deps cdt==0.6.0")
def test_load_sachs_in_a_fresh_interpreter():
    code = textwrap.dedent("""
        import sys
        import numpy as np
        from refimpl._causal_graph import load_sachs, order_divergence
        X, cards, names, A = load_sachs()
        assert "cdt" not in sys.modules, "cdt was imported"
        assert X.shape == (7466, 11) and X.dtype == np.int64
        assert cards.tolist() == [3] * 11
        assert names[5] == "p44/42" and len(names) == 11
        assert int(A.sum()) == 18
        i = {n: k for k, n in enumerate(names)}
        assert A[i["PIP2"], i["PKC"]] == 1 and A[i["PKA"], i["pjnk"]] == 1
        counts = np.array([np.bincount(X[:, c], minlength=3) for c in range(11)])
        assert counts.min() >= 2446 and counts.max() <= 2526, counts
        # the 3-cycle PIP2 -> PIP3 -> plcg -> PIP2: no order is compatible
        assert A[i["PIP2"], i["PIP3"]] and A[i["PIP3"], i["plcg"]] and A[i["plcg"], i["PIP2"]]
        print(counts.min(), counts.max())
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         check=False)
    assert out.returncode == 0, out.stderr
    lo, hi = map(int, out.stdout.split())
    assert (lo, hi) == (2446, 2526)


@pytest.mark.skipif(not _has_cdt(), reason="Sachs data need the PyPI package cdt: "
                                           "pip install --no-deps cdt==0.6.0")
def test_load_sachs_quantile_bins_match_numpy():
    path = importlib.metadata.distribution("cdt").locate_file(
        "cdt/data/resources/cyto_full_data.csv")
    raw = np.genfromtxt(path, delimiter=",", skip_header=1)
    for n_bins in (2, 3, 5):
        X, cards, _, _ = R.load_sachs(n_bins)
        assert cards.tolist() == [n_bins] * 11
        for c in (0, 5, 10):
            # independent form: count of quantile cut points <= x
            q = np.quantile(raw[:, c], np.arange(1, n_bins) / n_bins)
            assert np.array_equal(X[:, c], (raw[:, c][:, None] >= q[None, :]).sum(1))


def test_load_sachs_without_cdt_names_the_install(monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(ImportError, match=r"pip install --no-deps cdt==0\.6\.0"):
        R.load_sachs()


# --------------------------------------------------------------------------- Stein Hessian


def _stein_direct(X, eta_G, eta_H):
    """SCORE's formulas with the n x n x d difference tensor, explicit pair loop for the
    bandwidth and LU solves."""
    n = X.shape[0]
    s = np.median([np.linalg.norm(X[a] - X[b]) for a in range(n) for b in range(a + 1, n)])
    Dif = X[:, None, :] - X[None, :, :]
    Kmat = np.exp(-(Dif ** 2).sum(2) / (2 * s * s)) / s
    gK = -np.einsum("abj,ab->aj", Dif, Kmat) / s ** 2
    g2K = np.einsum("abj,ab->aj", -1 / s ** 2 + Dif ** 2 / s ** 4, Kmat)
    G = np.linalg.solve(Kmat + eta_G * np.eye(n), gK)
    return -G ** 2 + np.linalg.solve(Kmat + eta_H * np.eye(n), g2K)


def test_stein_matches_the_difference_tensor_form():
    rng = np.random.default_rng(0)
    for X, eG, eH in ((rng.normal(size=(30, 3)), 1e-3, 1e-3),
                      (K.anm_continuous(rng, 40, 4), 1e-2, 1e-1),
                      (rng.normal(size=(25, 1)), 1e-3, 1e-2)):
        H = R.stein_hessian_diag(X, eG, eH)
        assert H.dtype == np.float64 and H.shape == X.shape
        np.testing.assert_allclose(H, _stein_direct(X, eG, eH), rtol=1e-10, atol=1e-10)
    X32 = rng.normal(size=(30, 2)).astype(np.float32)
    H = R.stein_hessian_diag(X32)
    assert H.dtype == np.float64
    np.testing.assert_allclose(H, _stein_direct(X32.astype(np.float64), 1e-3, 1e-3), rtol=1e-10,
                               atol=1e-10)


def test_stein_gaussian_hessian_diagonal():
    """For N(0, diag(sigma^2)) the Hessian diagonal of log p is -1/sigma_j^2 everywhere."""
    rng = np.random.default_rng(0)
    sig = np.array([0.7, 1.0, 1.4])
    X = rng.normal(size=(2000, 3)) * sig
    H = R.stein_hessian_diag(X)
    ratio = np.median(H, axis=0) * sig ** 2
    assert np.all(np.abs(ratio + 1.0) < 0.2), ratio
    # SCORE's leaf rule on a linear Gaussian is uninformative, but H is translation invariant
    np.testing.assert_allclose(R.stein_hessian_diag(X[:300] + 5.0), R.stein_hessian_diag(X[:300]),
                               rtol=1e-6, atol=1e-6)


# --------------------------------------------------------------------------- bad input


def test_bad_input():
    X = K.chain_codes(np.random.default_rng(0), 50, [2, 3, 2])
    cards = [2, 3, 2]
    with pytest.raises(TypeError, match="X must have an integer dtype.*float64"):
        R.ci_test(X.astype(float), cards, 0, 1)
    with pytest.raises(TypeError, match="got bool"):
        R.ci_test_batch(X.astype(bool), cards, 0, [1])
    with pytest.raises(ValueError, match=r"column 1 has the value 2 >= cards\[1\] = 2"):
        R.ci_test(X, [2, 2, 2], 0, 1)
    with pytest.raises(ValueError, match="i = 0 must not be among candidates or cond"):
        R.ci_test(X, cards, 0, 1, cond=(0,))
    with pytest.raises(ValueError, match="candidates and cond must be disjoint"):
        R.ci_test_batch(X, cards, 0, [1, 2], cond=(2,))
    with pytest.raises(ValueError, match=r"column index in \[0, 3\), got 3"):
        R.ci_test_batch(X, cards, 0, [3])
    with pytest.raises(ValueError, match=r"column index in \[0, 3\), got -1"):
        R.ci_test(X, cards, -1, 1)
    with pytest.raises(ValueError, match="test must be one of"):
        R.ci_test(X, cards, 0, 1, test="fisherz")
    with pytest.raises(ValueError, match="df must be one of"):
        R.ci_test_batch(X, cards, 0, [1], df="exact")
    with pytest.raises(ValueError, match="at least 2 rows"):
        R.ci_test(X[:1], cards, 0, 1)
    with pytest.raises(ValueError, match="one column index"):
        R.ci_test(X, cards, 0, [1, 2])
    with pytest.raises(ValueError, match="method must be one of"):
        R.prune_ci(X, cards, [0, 1, 2], method="pc")
    for alpha in (0.0, 1.0, 1.5, -0.1):
        with pytest.raises(ValueError, match=r"alpha must be in \(0, 1\)"):
            R.prune_ci(X, cards, [0, 1, 2], alpha=alpha)
    with pytest.raises(ValueError, match="order must be a permutation of 0..2"):
        R.prune_ci(X, cards, [0, 1, 1])
    with pytest.raises(ValueError, match="order must be a permutation of 0..2"):
        R.order_divergence(_graph(3, [(0, 1)]), [0, 1])
    with pytest.raises(TypeError, match="order must be a 1-D sequence of int"):
        R.order_divergence(_graph(3, [(0, 1)]), [0.0, 1.0, 2.0])
    with pytest.raises(ValueError, match="acyclic"):
        V.graph_adjacency(_graph(3, [(0, 1), (1, 2), (2, 0)]), "A", acyclic=True)
    V.graph_adjacency(_graph(3, [(0, 1), (1, 2), (0, 2)]), "A", acyclic=True)
    with pytest.raises(ValueError, match="2-cycle"):
        R.shd(_graph(3, [(0, 1)]), _graph(3, [(0, 1), (1, 0)]))
    with pytest.raises(ValueError, match="self-loops"):
        R.edge_precision_recall(np.eye(3, dtype=int), _graph(3, []))
    with pytest.raises(ValueError, match="only 0 and 1"):
        R.shd(2 * _graph(3, [(0, 1)]), _graph(3, []))
    with pytest.raises(ValueError, match=r"A_hat must have shape \(3, 3\)"):
        R.shd(_graph(3, []), _graph(4, []))
    with pytest.raises(ValueError, match="reversal_cost must be 1"):
        R.shd(_graph(3, []), _graph(3, []), reversal_cost=3)
    with pytest.raises(ValueError, match="n_bins must be >= 2"):
        R.load_sachs(1)
    Z = np.random.default_rng(0).normal(size=(10, 2))
    with pytest.raises(TypeError, match="X must have dtype float32 or float64, got int64"):
        R.stein_hessian_diag(X)
    with pytest.raises(ValueError, match="at least 2 rows"):
        R.stein_hessian_diag(Z[:1])
    with pytest.raises(ValueError, match="eta_G must be a finite number > 0"):
        R.stein_hessian_diag(Z, eta_G=0.0)
    with pytest.raises(ValueError, match="NaN or inf"):
        R.stein_hessian_diag(np.where(Z > 1, np.nan, Z))
    with pytest.raises(ValueError, match="median pairwise distance"):
        R.stein_hessian_diag(np.zeros((5, 2)))
