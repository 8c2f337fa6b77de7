"""Reference tests of refimpl._causal_score (spec causal_discrete.md sec. 9, "Exact", "Leaf",
"Plug-in"): identities of the discrete score (E_p[s_i] = K_i, s_i >= 1, the concrete relation),
the score-matching loss against its closed-form minimum and scipy's minimiser, brute-force
counting for the plug-in score and its convergence to the exact table, the leaf statistics
against a hand-computed weighted variance and the ANM closed form (a leaf's sum is
sum_y 1/p_N(y)), exact/oracle orderings on random faithful ANMs, the Markov-blanket oracle
against the table, logistic conditionals against scikit-learn and the exact conditionals, the
samplers against joint_table and expected edge counts, and the argument errors."""

from __future__ import annotations

import inspect
import itertools

import numpy as np
import pytest

from refimpl import _causal_score as R
from refimpl._cases import causal_score as K

pytestmark = pytest.mark.filterwarnings("error::RuntimeWarning")

DIAMOND = np.zeros((4, 4), dtype=np.int64)
DIAMOND[0, 1] = DIAMOND[0, 2] = DIAMOND[1, 3] = DIAMOND[2, 3] = 1


def order_divergence(A, order):
    """#{edges i -> j with j placed before i} (spec sec. 6), written inline."""
    pos = np.empty(len(order), dtype=int)
    pos[np.asarray(order)] = np.arange(len(order))
    return int(sum(A[i, j] for i in range(len(A)) for j in range(len(A)) if pos[j] < pos[i]))


def random_table(rng, cards):
    return rng.dirichlet(np.ones(int(np.prod(cards)))).reshape(cards)


def cell_scores(P):
    """Every cell of P as a row with S_all[r, i, y] = 1 / p(y | x_-i), by explicit loops."""
    cards = P.shape
    d, Kmax = len(cards), max(cards)
    cells = np.array(list(itertools.product(*[range(k) for k in cards])), dtype=np.int64)
    S = np.full((len(cells), d, Kmax), np.nan)
    for r, x in enumerate(cells):
        for i in range(d):
            col = [P[tuple(x[:i]) + (y,) + tuple(x[i + 1:])] for y in range(cards[i])]
            S[r, i, : cards[i]] = sum(col) / np.array(col)
    return cells, S, np.array([P[tuple(x)] for x in cells])


def anm(rng, d, K, degree=2.0, n=10):
    A = R.random_dag(d, min(degree, d - 1), rng)
    X, mech = R.sample_discrete_anm(A, [K] * d, n, rng)
    return A, X, mech


# --------------------------------------------------------------------------- API


def test_signatures_follow_the_contract():
    sig = lambda f: str(inspect.signature(f).replace(return_annotation=inspect.Signature.empty))
    assert sig(R.discrete_score_exact) == "(P, kind='marginal')"
    assert sig(R.discrete_score_oracle) == "(X, A, cards, mechanisms, active=None)"
    assert sig(R.discrete_score_plugin) == "(X, cards, alpha=1.0, kind='marginal')"
    assert sig(R.discrete_score_from_conditionals) == "(Q)"
    assert sig(R.conditionals_logistic) == "(X, cards, l2=1.0)"
    assert sig(R.gsm_marginal_loss) == "(S_all, X, cards)"
    assert sig(R.leaf_statistic) == "(S_all, X, cards, criterion='invariance_sum', weights=None)"
    assert sig(R.discrete_score_order) == ("(X, cards, estimator='plugin', criterion='invariance_sum', "
                                           "alpha=1.0, P=None, A=None, mechanisms=None)")
    assert sig(R.random_dag) == "(d, expected_degree, rng, kind='er')"
    assert sig(R.sample_discrete_anm) == "(A, cards, n, rng, noise_alpha=2.0, faithful=True)"
    assert sig(R.sample_cpt_bn) == "(A, cards, n, rng, dirichlet_alpha=1.0)"
    assert sig(R.joint_table) == "(A, cards, mechanisms)"


# --------------------------------------------------------------------------- exact score


def test_exact_score_identities():
    rng = np.random.default_rng(0)
    for cards in [(2, 3, 4), (3, 3), (2, 2, 2, 5)]:
        P = random_table(rng, cards)
        S = R.discrete_score_exact(P)
        assert S.shape == (len(cards),) + cards
        for i, k in enumerate(cards):
            assert abs((P * S[i]).sum() - k) < 1e-12            # E_p[s_i] = K_i
        assert S.min() >= 1.0
        # against 1/p(x_i | x_-i) by explicit loops
        cells, S_loop, _ = cell_scores(P)
        for r, x in enumerate(cells):
            for i in range(len(cards)):
                assert np.isclose(S[i][tuple(x)], S_loop[r, i, x[i]], rtol=1e-13)
        # concrete relation: sum_{y != x_i} p(y, x_-i) / p(x) = s_i(x) - 1
        Cc = R.discrete_score_exact(P, kind="concrete")
        for x in cells:
            for i in range(len(cards)):
                other = sum(P[tuple(x[:i]) + (y,) + tuple(x[i + 1:])] for y in range(cards[i])
                            if y != x[i]) / P[tuple(x)]
                assert np.isclose(Cc[i][tuple(x)], other, rtol=1e-12)
                assert np.isclose(Cc[i][tuple(x)], S[i][tuple(x)] - 1.0, rtol=1e-12, atol=1e-12)


def test_plugin_concrete_relation_and_padding():
    rng = np.random.default_rng(1)
    X, cards = K.anm_data(rng, 300, K.MIXED)
    S = R.discrete_score_plugin(X, cards, alpha=0.7)
    Cc = R.discrete_score_plugin(X, cards, alpha=0.7, kind="concrete")
    n = len(X)
    for i, k in enumerate(cards):
        assert np.isnan(S[:, i, k:]).all() and np.isnan(Cc[:, i, k:]).all()
        assert not np.isnan(S[:, i, :k]).any()
        # the smoothed conditional sums to 1 over y
        np.testing.assert_allclose((1.0 / S[:, i, :k]).sum(1), 1.0, rtol=1e-13)
        # concrete: p(y, x_-i)/p(x) - 1, summed over y != x_i (+1 each) is s_i(x) - 1
        mask = np.arange(k)[None, :] != X[:, i:i + 1]
        lhs = ((Cc[:, i, :k] + 1.0) * mask).sum(1)
        np.testing.assert_allclose(lhs, S[np.arange(n), i, X[:, i]] - 1.0, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(Cc[np.arange(n), i, X[:, i]], 0.0, atol=1e-14)


def test_plugin_against_brute_force_counts():
    rng = np.random.default_rng(2)
    X, cards = K.anm_data(rng, 120, (2, 3, 4, 2))
    alpha = 0.5
    S = R.discrete_score_plugin(X.astype(np.int16), cards, alpha=alpha)
    for r in range(len(X)):
        for i, k in enumerate(cards):
            same = np.all(np.delete(X, i, 1) == np.delete(X[r], i), axis=1)   # rows with X[r, -i]
            for y in range(k):
                p = ((X[same, i] == y).sum() + alpha) / (same.sum() + alpha * k)
                assert np.isclose(S[r, i, y], 1.0 / p, rtol=1e-13)


def test_plugin_converges_to_exact():
    """n = 1e5, d = 4, K = 3. The spec's "mean abs error < 0.05" on the raw score does not hold
    across draws: s = 1/p(y | x_-i) reaches ~3000 for rare categories (Dirichlet(2) noise),
    where any estimate is off by hundreds (seeds 0..7: 0.09 .. 17.6). Asserted instead: the
    scale-free errors — conditionals 1/S within 0.01 and the score's relative error within
    0.05 (mean over rows, nodes and categories) — and the n^-1/2 decay."""
    for seed in range(3):
        rng = np.random.default_rng(seed)
        A = R.random_dag(4, 2.0, rng)
        X, mech = R.sample_discrete_anm(A, [3] * 4, 100_000, rng)
        P = R.joint_table(A, [3] * 4, mech)
        _, S_cells, _ = cell_scores(P)
        S_exact = S_cells[X @ np.array([27, 9, 3, 1])]          # row-major cell index
        err = []
        for n in (10_000, 100_000):
            S = R.discrete_score_plugin(X[:n], [3] * 4)
            err.append(np.abs(1 / S - 1 / S_exact[:n]).mean())
        rel = np.abs(S / S_exact - 1).mean()
        assert err[1] < 0.01 and rel < 0.05, (seed, err, rel)
        assert err[1] < 0.6 * err[0], (seed, err)            # ~ 10^-1/2 = 0.32


# --------------------------------------------------------------------------- GSM loss


def _population_J(S_cells, cells, P, cards):
    return sum(P[tuple(x)] * float(R.gsm_marginal_loss(S_cells[r:r + 1], cells[r:r + 1], cards))
               for r, x in enumerate(cells))


def test_gsm_loss_true_score_beats_perturbations():
    rng = np.random.default_rng(4)
    cards = (2, 3, 2)
    P = random_table(rng, cards)
    cells, S_true, _ = cell_scores(P)
    J_true = _population_J(S_true, cells, P, list(cards))
    # closed-form minimum: -sum_i sum_{x_-i} p(x_-i)^2 sum_y 1 / p(y, x_-i)
    J_min = 0.0
    for i in range(len(cards)):
        M = P.sum(axis=i, keepdims=True)
        J_min -= float((np.broadcast_to(M, P.shape) ** 2 / P).sum(axis=i).sum())
    assert np.isclose(J_true, J_min, rtol=1e-12)
    S_exact = R.discrete_score_exact(P)
    for _ in range(20):
        # perturb the score as a function of (i, y, x_-i), then lay it out per cell
        Sp = S_exact * np.exp(0.2 * rng.normal(size=S_exact.shape))
        S_rows = np.full_like(S_true, np.nan)
        for r, x in enumerate(cells):
            for i, k in enumerate(cards):
                for y in range(k):
                    S_rows[r, i, y] = Sp[i][tuple(x[:i]) + (y,) + tuple(x[i + 1:])]
        assert _population_J(S_rows, cells, P, list(cards)) > J_true


def test_gsm_loss_minimiser_closed_form_one_variable():
    """d = 1 (x_-i empty): J(t) = mean_r t_{x_r}^2 - 2 sum_y t_y is minimised at
    t_y = 1 / p_hat(y) (empirical frequencies) with minimum -sum_y 1 / p_hat(y)."""
    from scipy import optimize

    rng = np.random.default_rng(5)
    X = rng.choice(4, size=(500, 1), p=[0.1, 0.2, 0.3, 0.4])
    freq = np.bincount(X[:, 0], minlength=4) / 500
    t_star = 1.0 / freq
    J = lambda t: float(R.gsm_marginal_loss(np.broadcast_to(t, (500, 1, 4)).copy(), X, [4]))
    assert np.isclose(J(t_star), -t_star.sum(), rtol=1e-13)
    res = optimize.minimize(J, np.ones(4), method="BFGS", options={"gtol": 1e-10})
    np.testing.assert_allclose(res.x, t_star, rtol=1e-5)
    # the plug-in score with a vanishing pseudo-count is that minimiser
    np.testing.assert_allclose(R.discrete_score_plugin(X, [4], alpha=1e-12)[0, 0], t_star, rtol=1e-9)


def test_gsm_loss_ignores_padding():
    rng = np.random.default_rng(6)
    kw = K.score_inputs(rng, 200, K.MIXED)
    J = R.gsm_marginal_loss(**kw)
    S2 = np.where(np.isnan(kw["S_all"]), 1e6, kw["S_all"])
    assert float(R.gsm_marginal_loss(S2, kw["X"], kw["cards"])) == float(J)
    # against an explicit double loop
    S, X, c = kw["S_all"], kw["X"], kw["cards"]
    ref = np.mean([sum(S[r, i, X[r, i]] ** 2 - 2 * S[r, i, :c[i]].sum() for i in range(6))
                   for r in range(len(X))])
    assert np.isclose(float(J), ref, rtol=1e-13)


# --------------------------------------------------------------------------- leaf statistic


def _phi(S, X, cards, criterion):
    out = []
    for j, k in enumerate(cards):
        s = S[:, j, :k]
        if criterion == "invariance_sum":
            out.append(s.sum(1))
        elif criterion == "invariance_entropy":
            q = (1 / s) / (1 / s).sum(1, keepdims=True)
            out.append(np.array([-sum(v * np.log(v) for v in row) for row in q]))
        else:
            out.append(S[np.arange(len(X)), j, X[:, j]])
    return out


@pytest.mark.parametrize("criterion", K.CRITERIA)
def test_leaf_statistic_against_weighted_variance(criterion):
    rng = np.random.default_rng(7)
    kw = K.score_inputs(rng, 400, K.MIXED, alpha=0.5, weights=True)
    S, X, cards, w = kw["S_all"], kw["X"], kw["cards"], kw["weights"]
    phi = _phi(S, X, cards, criterion)
    got_w = R.leaf_statistic(S, X, cards, criterion, weights=w)
    got = R.leaf_statistic(S, X, cards, criterion)
    for j in range(len(cards)):
        assert np.isclose(got_w[j], np.cov(phi[j], aweights=w, bias=True), rtol=1e-10)
        assert np.isclose(got[j], np.var(phi[j]), rtol=1e-10)
    # integer weights == replicated rows; padding never read
    reps = rng.integers(1, 4, len(X))
    Xr, Sr = np.repeat(X, reps, 0), np.repeat(S, reps, 0)
    np.testing.assert_allclose(R.leaf_statistic(S, X, cards, criterion, weights=reps * 1.0),
                               R.leaf_statistic(Sr, Xr, cards, criterion), rtol=1e-10)
    S2 = np.where(np.isnan(S), -3.0, S)
    np.testing.assert_array_equal(R.leaf_statistic(S2, X, cards, criterion, weights=w), got_w)


def test_diamond_exact_leaf_statistics(capsys):
    rng = np.random.default_rng(8)
    _, mech = R.sample_discrete_anm(DIAMOND, [4] * 4, 10, rng)
    P = R.joint_table(DIAMOND, [4] * 4, mech)
    cells, S, w = cell_scores(P)
    stats = {c: R.leaf_statistic(S, cells, [4] * 4, c, weights=w) for c in K.CRITERIA}
    v = stats["invariance_sum"]
    assert abs(v[3]) < 1e-10 and (v[:3] > 1e-6).all(), v
    e = stats["invariance_entropy"]
    assert abs(e[3]) < 1e-10 and (e[:3] > 1e-6).all(), e
    # ANM closed form: a leaf's phi is sum_y 1 / p_N(y) in every cell
    np.testing.assert_allclose(S[:, 3, :].sum(1), (1.0 / mech[3]["noise"]).sum(), rtol=1e-12)
    with capsys.disabled():
        print("\n  diamond (K=4, Dirichlet(2), seed 8):",
              {c: np.array2string(s, precision=4) for c, s in stats.items()})


def table_scores_at(P, X):
    """S_all[r, i, y] = s_i(y, X[r, -i]) looked up in discrete_score_exact(P) (itself checked
    against explicit loops above)."""
    S = R.discrete_score_exact(P)
    out = np.full((len(X), P.ndim, max(P.shape)), np.nan)
    for i, k in enumerate(P.shape):
        for y in range(k):
            Z = X.copy()
            Z[:, i] = y
            out[:, i, y] = S[i][tuple(Z.T)]
    return out


def test_exact_and_oracle_orders_on_random_faithful_anms(capsys):
    rng = np.random.default_rng(9)
    sizes = []
    for t in range(30):
        d, Kc = int(rng.integers(4, 7)), int(rng.integers(2, 6))
        sizes.append((d, Kc))
        A, X, mech = anm(rng, d, Kc, n=300)
        P = R.joint_table(A, [Kc] * d, mech)
        crit = K.CRITERIA[t % 2]                 # both invariance criteria
        order = R.discrete_score_order(None, None, estimator="exact", criterion=crit, P=P)
        assert sorted(order.tolist()) == list(range(d))
        assert order_divergence(A, order) == 0, (t, A, order)
        # the Markov-blanket oracle equals the table oracle, also on an active subgraph
        S_or = R.discrete_score_oracle(X, A, [Kc] * d, mech)
        np.testing.assert_allclose(S_or, table_scores_at(P, X), rtol=1e-10)
        if Kc ** d <= 256:                       # and on every cell, by explicit loops
            cells, S_tab, _ = cell_scores(P)
            np.testing.assert_allclose(R.discrete_score_oracle(cells, A, [Kc] * d, mech), S_tab,
                                       rtol=1e-10)
        leaf = int(np.flatnonzero(A.sum(1) == 0)[0])
        active = [k for k in range(d) if k != leaf]
        S_or_sub = R.discrete_score_oracle(X, A, [Kc] * d, mech, active=active)
        np.testing.assert_allclose(S_or_sub, table_scores_at(P.sum(axis=leaf), X[:, active]),
                                   rtol=1e-10)
        if t < 10:
            o = R.discrete_score_order(X, [Kc] * d, estimator="oracle", A=A, mechanisms=mech)
            assert order_divergence(A, o) == 0
    with capsys.disabled():
        print(f"\n  exact orders: 30/30 with divergence 0; (d, K) drawn: {sizes}")


def test_plugin_orders_on_samples(capsys):
    divs, edges = [], []
    for seed in range(5):
        rng = np.random.default_rng(100 + seed)
        A, X, _ = anm(rng, 6, 3, n=2000)
        divs.append(order_divergence(A, R.discrete_score_order(X, [3] * 6)))
        edges.append(int(A.sum()))
    with capsys.disabled():
        print(f"\n  plug-in order divergence, n=2000 d=6 K=3 seeds 100..104: {divs} "
              f"(edges {edges})")
    assert np.mean(divs) <= 1.0, divs


# --------------------------------------------------------------------------- logistic conditionals


def test_logistic_conditionals_normalised_and_match_sklearn():
    sk = pytest.importorskip("sklearn.linear_model")
    rng = np.random.default_rng(10)
    X, cards = K.anm_data(rng, 400, (3, 4, 3))
    Q = R.conditionals_logistic(X, cards, l2=2.0)
    for i, k in enumerate(cards):
        np.testing.assert_allclose(Q[:, i, :k].sum(1), 1.0, rtol=1e-12)
        assert np.isnan(Q[:, i, k:]).all()
        F = np.hstack([np.eye(cards[c])[X[:, c]] for c in range(3) if c != i])
        m = sk.LogisticRegression(C=1 / 2.0, tol=1e-12, max_iter=10_000).fit(F, X[:, i])
        np.testing.assert_allclose(Q[:, i, :k], m.predict_proba(F), atol=1e-5)
    S = R.discrete_score_from_conditionals(Q)
    np.testing.assert_array_equal(np.isnan(S), np.isnan(Q))
    np.testing.assert_allclose(S[~np.isnan(S)], 1 / Q[~np.isnan(Q)])


def test_logistic_conditionals_approach_exact_on_a_chain():
    """On a chain 0 -> 1 -> 2 every conditional p(y | x_-i) is log-linear in one-hot x_-i, so
    the (weakly regularised) logistic model is well specified and converges to it."""
    rng = np.random.default_rng(11)
    A = np.zeros((3, 3), dtype=np.int64)
    A[0, 1] = A[1, 2] = 1
    X, mech = R.sample_discrete_anm(A, [3, 3, 3], 100_000, rng)
    P = R.joint_table(A, [3, 3, 3], mech)
    _, S_cells, _ = cell_scores(P)
    Q_exact = 1.0 / S_cells[X @ np.array([9, 3, 1])]
    Q = R.conditionals_logistic(X, [3, 3, 3])
    assert np.abs(Q - Q_exact).max() < 0.02, np.abs(Q - Q_exact).max()


# --------------------------------------------------------------------------- samplers


def _tv(X, P):
    code = np.ravel_multi_index(tuple(X.T), P.shape)
    emp = np.bincount(code, minlength=P.size) / len(X)
    return 0.5 * np.abs(emp - P.ravel()).sum()


def test_samplers_match_joint_table():
    rng = np.random.default_rng(12)
    A = np.zeros((3, 3), dtype=np.int64)
    A[0, 2] = A[1, 2] = A[0, 1] = 1
    cards = [2, 3, 3]
    for sampler in (R.sample_discrete_anm, R.sample_cpt_bn):
        X, mech = sampler(A, cards, 200_000, rng)
        P = R.joint_table(A, cards, mech)
        # joint table against the product of conditionals by explicit loops
        for x in itertools.product(*[range(k) for k in cards]):
            prod = 1.0
            for j in range(3):
                prod *= mech[j]["table"][tuple(x[p] for p in mech[j]["parents"]) + (x[j],)]
            assert np.isclose(P[x], prod, rtol=1e-13)
        assert abs(P.sum() - 1) < 1e-12
        assert _tv(X, P) < 0.02
    # ANM mechanism: table[..., y] = noise[(y - f) mod K]
    m = mech = R.sample_discrete_anm(A, cards, 5, rng)[1][2]
    for pa in itertools.product(range(2), range(3)):
        for y in range(3):
            assert m["table"][pa + (y,)] == m["noise"][(y - m["f"][pa]) % 3]


def test_random_dag_er_and_sf():
    rng = np.random.default_rng(13)
    d, deg, draws = 10, 2.0, 400
    counts, maxdeg_er, maxdeg_sf = [], [], []
    for _ in range(draws):
        for kind in ("er", "sf"):
            A = R.random_dag(d, deg, rng, kind)
            assert A.dtype == np.int64 and set(np.unique(A)) <= {0, 1}
            assert not np.diag(A).any()
            assert not np.linalg.matrix_power(A, d).any()          # nilpotent <=> acyclic
            tot = A.sum(0) + A.sum(1)
            if kind == "er":
                counts.append(A.sum())
                maxdeg_er.append(tot.max())
            else:
                assert A.sum() == d - 1                            # m = 1: a tree
                maxdeg_sf.append(tot.max())
    # E|E| = d * expected_degree / 2 = 10; sd per draw ~2.8, so the mean has sd ~0.14
    assert abs(np.mean(counts) - d * deg / 2) < 0.6, np.mean(counts)
    # heavier tail than ER at a similar edge count (preferential attachment)
    assert np.mean(maxdeg_sf) > np.mean(maxdeg_er) and np.mean(maxdeg_sf) > 2 * deg
    A = R.random_dag(30, 4.0, rng, "sf")                           # m = 2
    assert A.sum() == 1 + 2 * 28


def test_faithful_mechanisms_depend_on_every_parent():
    rng = np.random.default_rng(14)
    A = np.zeros((4, 4), dtype=np.int64)
    A[0, 3] = A[1, 3] = A[2, 3] = 1
    unfaithful = 0
    for _ in range(60):
        for faithful in (True, False):
            f = R.sample_discrete_anm(A, [2, 2, 2, 2], 2, rng, faithful=faithful)[1][3]["f"]
            deps = [any(f[tuple(np.insert(np.array(c), k, 0))] != f[tuple(np.insert(np.array(c), k, 1))]
                        for c in itertools.product(range(2), repeat=2)) for k in range(3)]
            if faithful:
                assert all(deps)
            else:
                unfaithful += not all(deps)
    assert unfaithful > 0          # the redraw matters: ~1 in 5 raw tables ignore a parent


# --------------------------------------------------------------------------- errors


def test_bad_input():
    rng = np.random.default_rng(15)
    X, cards = K.anm_data(rng, 50, (2, 3, 2))
    S = R.discrete_score_plugin(X, cards)
    with pytest.raises(TypeError, match="X must have an integer dtype.*float64"):
        R.discrete_score_plugin(X.astype(float), cards)
    with pytest.raises(TypeError, match="X must have an integer dtype.*bool"):
        R.discrete_score_plugin(X > 0, cards)
    with pytest.raises(ValueError, match=r"column 1 has the value 2 >= cards\[1\] = 2"):
        R.discrete_score_plugin(X, [2, 2, 2])
    Xn = X.copy()
    Xn[0, 2] = -1
    with pytest.raises(ValueError, match="column 2 has a negative value -1"):
        R.leaf_statistic(S, Xn, cards)
    with pytest.raises(ValueError, match="cards must be >= 2"):
        R.gsm_marginal_loss(S, np.zeros_like(X), [1, 3, 2])
    with pytest.raises(ValueError, match="cards must have length d = 3"):
        R.discrete_score_plugin(X, [2, 3])
    with pytest.raises(TypeError, match="cards must hold integers"):
        R.discrete_score_plugin(X, [2.0, 3.0, 2.0])
    with pytest.raises(ValueError, match="X must be 2-D"):
        R.discrete_score_plugin(X[:, 0], [2])
    Xc = X.copy()
    Xc[:, 1] = 1
    with pytest.raises(ValueError, match="X column 1 is constant: it carries no information; drop it"):
        R.discrete_score_order(Xc, cards)
    R.discrete_score_plugin(Xc, cards)            # allowed where the score is still defined
    with pytest.raises(ValueError, match="criterion must be one of"):
        R.leaf_statistic(S, X, cards, criterion="nogam")
    with pytest.raises(ValueError, match="kind must be one of"):
        R.discrete_score_plugin(X, cards, kind="ratio")
    with pytest.raises(ValueError, match="estimator must be one of"):
        R.discrete_score_order(X, cards, estimator="score")
    with pytest.raises(ValueError, match="kind must be one of"):
        R.random_dag(5, 2, rng, kind="ba")
    with pytest.raises(ValueError, match="alpha must be a finite number > 0"):
        R.discrete_score_plugin(X, cards, alpha=0.0)
    with pytest.raises(ValueError, match=r"S_all must have shape \(n, d, Kmax\) = \(50, 3, 3\)"):
        R.leaf_statistic(S[:, :, :2], X, cards)
    with pytest.raises(TypeError, match="S_all must have dtype"):
        R.gsm_marginal_loss(S.astype(np.float16), X, cards)
    with pytest.raises(ValueError, match="weights must be >= 0"):
        R.leaf_statistic(S, X, cards, weights=-np.ones(50))
    with pytest.raises(ValueError, match=r"weights must have shape \(50,\)"):
        R.leaf_statistic(S, X, cards, weights=np.ones(49))
    with pytest.raises(TypeError, match="weights must have the dtype of S_all"):
        R.leaf_statistic(S, X, cards, weights=np.ones(50, np.float32))
    # P not a probability table
    P = random_table(rng, (2, 3, 2))
    with pytest.raises(ValueError, match="not a probability table: its entries sum to"):
        R.discrete_score_exact(2 * P)
    P0 = P.copy()
    P0[0, 0, 0] = 0.0
    P0 /= P0.sum()
    with pytest.raises(ValueError, match="not a probability table with positive entries"):
        R.discrete_score_exact(P0)
    with pytest.raises(TypeError, match="P must have dtype"):
        R.discrete_score_exact(np.ones((2, 2), dtype=np.int64))
    with pytest.raises(ValueError, match="estimator='exact' needs the joint table P"):
        R.discrete_score_order(X, cards, estimator="exact")
    with pytest.raises(ValueError, match="estimator='oracle' needs the true graph A"):
        R.discrete_score_order(X, cards, estimator="oracle")
    # graphs and mechanisms
    cyc = np.array([[0, 1], [1, 0]])
    with pytest.raises(ValueError, match="A must be acyclic"):
        R.sample_discrete_anm(cyc, [2, 2], 10, rng)
    A, Xa, mech = anm(rng, 4, 3, n=20)
    with pytest.raises(ValueError, match="parents"):
        R.joint_table(A.T.copy(), [3] * 4, mech)
    root = int(np.flatnonzero(A.sum(0) == 0)[0])
    if A[root].any():
        with pytest.raises(ValueError, match="active must be closed under parents"):
            R.discrete_score_oracle(Xa, A, [3] * 4, mech, active=[k for k in range(4) if k != root])
    with pytest.raises(ValueError, match="expected_degree must be <= d - 1"):
        R.random_dag(4, 3.5, rng)
    with pytest.raises(ValueError, match=r"P must have shape cards = \(2, 3, 2\)"):
        R.discrete_score_order(X, cards, estimator="exact", P=random_table(rng, (2, 3, 3)))


def test_reference_refuses_foreign_arrays():
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match="numpy reference takes numpy.ndarray"):
        R.discrete_score_plugin(torch.zeros((5, 2), dtype=torch.int64), [2, 2])


def test_order_estimators_agree_on_a_diamond():
    """Exact (with or without X), oracle, plug-in and logistic orders on the diamond ANM at
    n = 5000: all compatible with the graph (the diamond has a unique compatible leaf, 3)."""
    rng = np.random.default_rng(16)
    X, mech = R.sample_discrete_anm(DIAMOND, [3] * 4, 5000, rng)
    P = R.joint_table(DIAMOND, [3] * 4, mech)
    orders = {
        "exact": R.discrete_score_order(None, None, estimator="exact", P=P),
        "exact_X": R.discrete_score_order(X, [3] * 4, estimator="exact", P=P),
        "oracle": R.discrete_score_order(X, [3] * 4, estimator="oracle", A=DIAMOND, mechanisms=mech),
        "plugin": R.discrete_score_order(X, np.array([3] * 4), estimator="plugin", alpha=0.5),
        "logistic": R.discrete_score_order(X, [3] * 4, estimator="logistic"),
    }
    for name, o in orders.items():
        assert o.dtype == np.int64 and sorted(o.tolist()) == [0, 1, 2, 3], name
    np.testing.assert_array_equal(orders["exact"], orders["exact_X"])
    for name in ("exact", "oracle", "plugin"):
        assert order_divergence(DIAMOND, orders[name]) == 0, (name, orders[name])


def test_cases_build_and_unknown_scale():
    for fn in (K.cases_discrete_score_plugin, K.cases_gsm_marginal_loss, K.cases_leaf_statistic):
        with pytest.raises(ValueError, match="unknown scale"):
            fn(np.random.default_rng(0), "huge")
        tiny = fn(np.random.default_rng(0), "tiny")
        assert 1 <= len(tiny) <= 3
        for c in tiny:
            assert c.inputs()["X"].shape[0] == 50 and len(c.inputs()["cards"]) == 3
