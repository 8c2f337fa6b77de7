r"""Ordering-based causal discovery with the discrete score: scores, the generalized
score-matching loss, leaf statistics, the ordering loop, samplers — the float64 NumPy/SciPy
reference.

Paper: Vo, Le, Zhao, Bonilla, Phung, "Ordering-based Causal Discovery via Generalized Score
Matching", arXiv 2601.16249. **No official code exists**: everything below the discrete score
itself is RECONSTRUCTED from the paper's summary (spec ``causal_discrete.md``); each such choice
says what to check against the PDF. The discrete score through the marginalisation operator
is Lyu, "Interpretation and generalization of score matching", UAI 2009 (standard).

Data: ``X`` (n, d) integer codes, ``cards`` (d,) with ``X[:, i] in {0..K_i-1}``; per-category
arrays are (n, d, Kmax), ``Kmax = max(cards)``, NaN beyond ``K_i``. ``A[i, j] = 1`` means
i -> j. Orders list sources first.

Discrete score (Lyu 2009). Marginalisation operator on coordinate i and the score::

    (M_i p)(x) = sum_y p(y, x_-i) = p(x_-i)
    s_i(x)     = (M_i p)(x) / p(x) = 1 / p(x_i | x_-i)  >= 1           (needs p > 0)
    E_p[s_i(X)] = sum_{x_-i} p(x_-i) sum_y 1 = K_i                      (the mean has no signal)
    concrete score (Meng et al. 2022):  sum_{y != x_i} p(y, x_-i) / p(x) = s_i(x) - 1

``S_all[r, i, y] = s_i(y, X[r, -i]) = 1 / p(y | X[r, -i])`` for every category y < K_i;
``kind="concrete"`` returns ``p(y, x_-i) / p(x) - 1 = s_i(x) / s_i(y, x_-i) - 1`` instead.

Estimators (all return S_all):

* exact, :func:`discrete_score_exact`: joint table P (shape cards):
  ``S[i] = P.sum(i, keepdims=True) / P`` (returned as (d, *cards); S[i][x] = s_i(x)).
* oracle, :func:`discrete_score_oracle` (known network, any d), the Markov-blanket formula::

      p(y | x_-j)  ∝  p(y | pa_j) * prod_{c in ch(j)} p(x_c | pa_c with x_j = y)

  from the sampler's conditional tables; on an ``active`` subset closed under parents (the
  removed nodes are leaves of the whole graph, nobody's parents) it is applied on the induced
  subgraph: the marginal of the active nodes is the network restricted to them.
* plug-in, :func:`discrete_score_plugin`, with Dirichlet pseudo-count alpha (default 1)::

      p_hat(y | x_-i) = (N(y, x_-i) + alpha) / (N(x_-i) + alpha K_i),   s = 1 / p_hat

  counts over the rows of X. Per node i: the x_-i pattern of each row is its mixed-radix code
  with column i's stride removed, ``key_r = sum_{k != i} X[r, k] stride_k``
  (``stride_k = prod_{l > k} K_l``; rows of X[:, -i] via ``np.unique(axis=0)`` once
  prod K >= 2^62); ``np.unique(key, return_inverse=True)`` groups the rows and ``np.bincount``
  counts N(y, group). O(n d) per node plus the sort. Useless once most x_-i patterns are unique
  (n << prod K): every singleton pattern gets the same smoothed table.
* from conditionals, :func:`discrete_score_from_conditionals`: any model q(y | x_-i) -> 1/q.
  :func:`conditionals_logistic` fits, per node, a multinomial logistic regression of x_i on the
  one-hot encoding of x_-i (RECONSTRUCTED; the paper probably trains a neural score model)::

      min_{W, b}  sum_r -log softmax(F_r W + b)[x_ri] + (l2 / 2) ||W||_F^2     (b unpenalised)

  (sklearn's ``LogisticRegression(C=1/l2)`` objective), L-BFGS-B with the analytic gradient
  ``dW = F^T (Q - Y) + l2 W``, ``db = sum_r (Q - Y)_r``, from zeros, one fit per node;
  identical rows of X are merged (count-weighted terms: the same objective).

Generalized score-matching loss (Lyu's Fisher divergence with the self-adjoint M_i, expanded
so that p is not needed)::

    J(S) = mean_r sum_i [ S[r, i, X_ri]^2 - 2 sum_{y < K_i} S[r, i, y] ]      (+ const)

because ``E_p[s^p_i s^q_i] = sum_x p(x_-i) s^q_i(x) = E_p[sum_y s^q_i(y, X_-i)]``. For fixed
x_-i the minimiser over free values t_y of ``sum_y p(y, x_-i) t_y^2 - 2 p(x_-i) sum_y t_y`` is
``t_y = p(x_-i) / p(y, x_-i) = 1 / p(y | x_-i)`` with minimum ``-p(x_-i) sum_y t_y``: any
consistent conditional model yields the score (:func:`gsm_marginal_loss`).

Leaf statistics (:func:`leaf_statistic`; RECONSTRUCTED — the paper's exact statistic was not
available). Model class: cyclic discrete additive noise ``X_j = (f_j(pa_j) + N_j) mod K_j``,
N_j independent of pa_j (Peters et al. 2010). For a leaf j, ``p(x_j | x_-j) = p_N(x_j - f_j)``,
so ``(s_j(y, x_-j))_y`` is a cyclic shift of ``1 / p_N`` for every x_-j and any
permutation-invariant functional of it is constant; a non-leaf's conditional also involves its
children's mechanisms and varies. With row weights w (normalised; uniform by default) and the
population variance ``Var_w[phi] = sum_r w_r (phi_r - sum_r' w_r' phi_r')^2`` (ddof 0)::

    "invariance_sum" (default): phi_j(r) = sum_{y < K_j} S[r, j, y]
    "invariance_entropy":       phi_j(r) = -sum_y q_y log q_y,  q_y = (1/S[r,j,y]) / sum_y' (1/S[r,j,y'])
    "var_score" (Scoresort analogue): phi_j(r) = S[r, j, X_rj]  (no guarantee)
    stat_j = Var_w[phi_j];   leaf = argmin_j stat_j   (ties: lowest index)

NaN-padded entries (y >= K_j) are never read. Check against the PDF: the statistic, whether a
variance or another dispersion is used, and the model class for which it is claimed. (NoGAM's
CV criterion is not implemented.)

Ordering loop (:func:`discrete_score_order`; reconstructed, as SCORE): ::

    active = [0..d-1]; order = []
    while len(active) > 1:
        S = score on X[:, active]   (exact: P marginalised over the removed leaves, every cell a
                                     row with weight P(cell); oracle: the active subgraph)
        leaf = active[argmin leaf_statistic(S, X[:, active], cards[active])]
        order.append(leaf); active.remove(leaf)
    order.append(active[0]); reverse                                  (sources first)

Removing a leaf leaves a valid Bayesian network over the rest.

Samplers (reconstructed settings). :func:`random_dag`: ``"er"`` — a random permutation of the
labels, each pair (perm[a], perm[b]), a < b, gets the edge perm[a] -> perm[b] with probability
``p = expected_degree / (d - 1)`` (so E[in + out degree] = expected_degree, E|E| = d p (d-1)/2);
``"sf"`` — Barabási–Albert preferential attachment: nodes arrive in turn, node t attaches to
``min(m, t)`` distinct earlier nodes drawn with probability proportional to their current
degree (uniform while all are 0), ``m = max(1, round(expected_degree / 2))``, edges oriented
from the older to the newer node, then a random relabelling. :func:`sample_discrete_anm`:
``f_j`` a uniform lookup table cards[pa_j] -> {0..K_j-1}, redrawn (faithfulness redraw, at most
``MAX_REDRAWS`` times) until it depends on every parent, i.e. for every parent axis some slice
is not constant; ``N_j ~ Categorical(Dirichlet(noise_alpha 1))``; ``X_j = (f_j + N_j) mod K_j``.
:func:`sample_cpt_bn`: every parent configuration gets a ``Dirichlet(dirichlet_alpha 1)`` row.
Both draw all mechanisms first (topological order), then the rows by ancestral sampling
(ANM: ``rng.choice`` of the noise; CPT: inverse CDF of ``rng.random``). :func:`joint_table`
multiplies the conditional tables into P (shape cards).

``mechanisms`` (one dict per node j): ``"parents"`` (tuple of ints, increasing), ``"table"``
(the conditional ``p(x_j | pa_j)``, shape ``cards[parents] + (K_j,)``, rows sum to 1),
``"kind"`` ("anm" or "cpt"); ANM also ``"f"`` (int64 array of shape cards[parents], values in
0..K_j-1; 0-d for a root) and ``"noise"`` (K_j probabilities), with
``table[..., y] = noise[(y - f) mod K_j]``; CPT also ``"cpt"`` (the same array as "table").

Everything computes in float64 and returns NumPy arrays (float64; orders and graphs int64).
Inputs are validated by :mod:`refimpl._validate` (the op messages are shared with backends).
"""

from __future__ import annotations

import math
import numbers

import numpy as np
from scipy import optimize

from refimpl import _validate as V

__all__ = [
    "discrete_score_exact", "discrete_score_oracle", "discrete_score_plugin",
    "discrete_score_from_conditionals", "conditionals_logistic", "gsm_marginal_loss",
    "leaf_statistic", "discrete_score_order", "random_dag", "sample_discrete_anm",
    "sample_cpt_bn", "joint_table",
]

SCORE_KINDS = ("marginal", "concrete")
ESTIMATORS = ("plugin", "exact", "oracle", "logistic")
DAG_KINDS = ("er", "sf")
MAX_TABLE = 1 << 24          # largest joint table (cells) for the exact score / joint_table
MAX_REDRAWS = 10_000         # faithfulness redraws of one mechanism before giving up
PROB_TOL = 1e-8              # |sum P - 1| allowed for a probability table
_CODE_LIMIT = 1 << 62        # mixed-radix row codes are used while prod(cards) < this


# --------------------------------------------------------------------------- helpers


def _rng(rng) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, numbers.Integral) and not isinstance(rng, bool):
        return np.random.default_rng(int(rng))
    raise TypeError(f"rng must be a numpy.random.Generator or an int seed, got {type(rng).__name__}")


def _data(X, cards, allow_constant=True):
    X = V.host_array(X, "X")
    n, d, c = V.discrete_data(X, cards, allow_constant=allow_constant)
    return X.astype(np.int64, copy=False), n, d, c


def _pattern_groups(X: np.ndarray, cards: np.ndarray, i: int) -> tuple[np.ndarray, int]:
    """Group the rows by their x_-i pattern: ``(inverse (n,), number of groups)``."""
    if math.prod(int(k) for k in cards) < _CODE_LIMIT:
        strides = np.ones(len(cards), dtype=np.int64)
        for k in range(len(cards) - 2, -1, -1):
            strides[k] = strides[k + 1] * cards[k + 1]
        strides[i] = 0                                   # column i's stride removed
        key = X @ strides
        uniq, inv = np.unique(key, return_inverse=True)
    else:
        uniq, inv = np.unique(np.delete(X, i, axis=1), axis=0, return_inverse=True)
    return inv.reshape(-1), len(uniq)


def _adjacency(A, d: int | None = None, name: str = "A") -> np.ndarray:
    """A DAG adjacency (d, d) of 0/1 integers (bool accepted), zero diagonal, acyclic."""
    A = np.asarray(A)
    if A.dtype.kind not in "biu":
        raise TypeError(f"{name} must be a 0/1 integer adjacency matrix, got dtype {A.dtype}")
    if A.ndim != 2 or A.shape[0] != A.shape[1] or (d is not None and A.shape[0] != d):
        want = f"({d}, {d})" if d is not None else "(d, d)"
        raise ValueError(f"{name} must have shape {want}, got {A.shape}")
    A = A.astype(np.int64)
    if ((A != 0) & (A != 1)).any():
        raise ValueError(f"{name} must hold only 0 and 1 (A[i, j] = 1 means i -> j)")
    _topological_order(A, name)
    return A


def _topological_order(A: np.ndarray, name: str = "A") -> list[int]:
    d = A.shape[0]
    indeg = A.sum(0).astype(np.int64).copy()
    ready = sorted(np.flatnonzero(indeg == 0).tolist())
    order = []
    while ready:
        j = ready.pop(0)
        order.append(j)
        for c in np.flatnonzero(A[j]).tolist():
            indeg[c] -= 1
            if indeg[c] == 0:
                ready.append(c)
        ready.sort()
    if len(order) != d:
        raise ValueError(f"{name} must be acyclic (a DAG), it has a directed cycle")
    return order


def _mechanisms(A: np.ndarray, cards: np.ndarray, mechanisms) -> list[dict]:
    d = A.shape[0]
    if not isinstance(mechanisms, (list, tuple)) or len(mechanisms) != d:
        raise ValueError(f"mechanisms must be a list of {d} dicts (one per node), got "
                         f"{type(mechanisms).__name__}"
                         + (f" of length {len(mechanisms)}" if hasattr(mechanisms, '__len__') else ""))
    for j, m in enumerate(mechanisms):
        if not isinstance(m, dict) or "parents" not in m or "table" not in m:
            raise ValueError(f"mechanisms[{j}] must be a dict with 'parents' and 'table'")
        pa = tuple(np.flatnonzero(A[:, j]).tolist())
        if tuple(int(p) for p in m["parents"]) != pa:
            raise ValueError(f"mechanisms[{j}]['parents'] = {tuple(m['parents'])} differs from the "
                             f"parents of node {j} in A, {pa}")
        want = tuple(int(cards[p]) for p in pa) + (int(cards[j]),)
        if np.shape(m["table"]) != want:
            raise ValueError(f"mechanisms[{j}]['table'] must have shape cards[parents] + (K_j,) = "
                             f"{want}, got {np.shape(m['table'])}")
    return list(mechanisms)


def _nan_pad(blocks: list[np.ndarray], n: int, Kmax: int) -> np.ndarray:
    out = np.full((n, len(blocks), Kmax), np.nan)
    for i, b in enumerate(blocks):
        out[:, i, : b.shape[1]] = b
    return out


def _concrete(S: np.ndarray, X: np.ndarray, cards: np.ndarray) -> np.ndarray:
    """``p(y, x_-i) / p(x) - 1 = s_i(x) / s_i(y, x_-i) - 1`` from the marginal S_all."""
    n = X.shape[0]
    out = np.full_like(S, np.nan)
    for i, K in enumerate(cards):
        s_obs = S[np.arange(n), i, X[:, i]]
        out[:, i, :K] = s_obs[:, None] / S[:, i, :K] - 1.0
    return out


# --------------------------------------------------------------------------- scores


def _prob_table(P, name: str = "P") -> np.ndarray:
    V.float_array(P, name)
    P = np.asarray(P, dtype=np.float64)
    if P.ndim < 1:
        raise ValueError(f"{name} must have one axis per variable (shape cards), got a scalar")
    if min(P.shape) < 2:
        raise ValueError(f"{name} must have every axis of length >= 2 (shape cards, cards >= 2), "
                         f"got shape {P.shape}")
    if P.size > MAX_TABLE:
        raise ValueError(f"{name} has {P.size} cells; the exact score is limited to "
                         f"{MAX_TABLE} (use the oracle or the plug-in score)")
    if not np.isfinite(P).all():
        raise ValueError(f"{name} contains NaN or inf")
    if (P <= 0).any():
        raise ValueError(f"{name} is not a probability table with positive entries: the score "
                         f"1/p(x_i | x_-i) needs p > 0 everywhere (min {P.min()})")
    if abs(P.sum() - 1.0) > PROB_TOL:
        raise ValueError(f"{name} is not a probability table: its entries sum to {P.sum():.17g}, "
                         f"not 1")
    return P


def discrete_score_exact(P, kind="marginal"):
    """Exact discrete score from a joint table ``P`` (shape cards, positive, sums to 1):
    ``S[i][x] = P.sum(i, keepdims=True)[x] / P[x] = s_i(x)``. ``kind="concrete"`` returns
    ``(P.sum(i) - P) / P = sum_{y != x_i} p(y, x_-i) / p(x)`` (Meng et al.'s concrete score
    summed over the other categories; equals ``s_i(x) - 1``). Returns (d, *cards) float64."""
    P = _prob_table(P)
    V.choice(kind, "kind", SCORE_KINDS)
    marg = [np.broadcast_to(P.sum(axis=i, keepdims=True), P.shape) for i in range(P.ndim)]
    if kind == "concrete":
        return np.stack([(m - P) / P for m in marg])
    return np.stack([m / P for m in marg])


def _exact_rows(P: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every cell of P as a row: ``(X_cells (N, d), S_all (N, d, Kmax), weights P (N,))``."""
    cards = np.array(P.shape, dtype=np.int64)
    d, Kmax = P.ndim, int(cards.max())
    S = discrete_score_exact(P)
    cells = np.indices(P.shape).reshape(d, -1).T
    blocks = []
    for i in range(d):
        b = np.empty((cells.shape[0], cards[i]))
        for y in range(cards[i]):
            idx = cells.copy()
            idx[:, i] = y
            b[:, y] = S[i][tuple(idx.T)]
        blocks.append(b)
    return cells, _nan_pad(blocks, cells.shape[0], Kmax), P.reshape(-1)


def discrete_score_plugin(X, cards, alpha=1.0, kind="marginal"):
    """Plug-in discrete score with Dirichlet pseudo-count ``alpha`` > 0 (module docstring):
    ``S[r, i, y] = (N(x_-i) + alpha K_i) / (N(y, x_-i) + alpha)`` at ``x_-i = X[r, -i]``.
    Returns (n, d, Kmax) float64, NaN beyond K_i."""
    X, n, d, cards = _data(X, cards)
    alpha = V.positive_float(alpha, "alpha")
    V.choice(kind, "kind", SCORE_KINDS)
    S = np.full((n, d, int(cards.max())), np.nan)
    for i in range(d):
        K = int(cards[i])
        group, G = _pattern_groups(X, cards, i)          # x_-i pattern of every row
        N = np.bincount(group * K + X[:, i], minlength=G * K).reshape(G, K)   # N(y, x_-i)
        p_hat = (N + alpha) / (N.sum(1, keepdims=True) + alpha * K)
        S[:, i, :K] = 1.0 / p_hat[group]
    return _concrete(S, X, cards) if kind == "concrete" else S


def discrete_score_from_conditionals(Q):
    """``1 / Q`` for conditionals ``Q[r, i, y] = q(y | X[r, -i])`` (n, d, Kmax), NaN kept.
    Non-NaN entries must lie in (0, 1]."""
    V.float_array(Q, "Q", ndims=(3,))
    Q = np.asarray(Q, dtype=np.float64)
    ok = ~np.isnan(Q)
    if ((Q[ok] <= 0) | (Q[ok] > 1 + 1e-12)).any():
        raise ValueError("Q must hold conditional probabilities in (0, 1] (NaN for padding)")
    with np.errstate(divide="ignore", invalid="ignore"):
        return 1.0 / Q


def discrete_score_oracle(X, A, cards, mechanisms, active=None):
    """Markov-blanket oracle ``S[r, k, y] = 1 / p(y | X[r, active - j])`` for ``j = active[k]``
    from the network's conditional tables (module docstring). ``active``: increasing node
    indices closed under parents (default all). Returns (n, len(active), max cards[active])."""
    X, n, d, cards = _data(X, cards)
    A = _adjacency(A, d)
    mech = _mechanisms(A, cards, mechanisms)
    if active is None:
        active = list(range(d))
    active = [int(a) for a in np.asarray(active).reshape(-1).tolist()]
    if active != sorted(set(active)) or not active or active[0] < 0 or active[-1] >= d:
        raise ValueError(f"active must be increasing distinct node indices in [0, {d}), got {active}")
    aset = set(active)
    for j in active:
        missing = [p for p in np.flatnonzero(A[:, j]).tolist() if p not in aset]
        if missing:
            raise ValueError(f"active must be closed under parents: node {j} is active but its "
                             f"parents {missing} are not (only leaves may be removed)")
    Kmax = int(cards[active].max())

    def cond(c, xc, override=None):
        """``p(x_c | pa_c)`` per row; ``override = (j, y)`` sets x_j = y among the parents."""
        idx = [np.full(n, override[1]) if (override and p == override[0]) else X[:, p]
               for p in mech[c]["parents"]]
        return np.asarray(mech[c]["table"], dtype=np.float64)[tuple(idx) + (xc,)]

    blocks = []
    with np.errstate(divide="ignore"):
        for j in active:
            K = int(cards[j])
            children = [c for c in np.flatnonzero(A[j]).tolist() if c in aset]
            logp = np.empty((n, K))
            for y in range(K):
                lp = np.log(cond(j, np.full(n, y)))
                for c in children:
                    lp = lp + np.log(cond(c, X[:, c], (j, y)))
                logp[:, y] = lp
            logp -= logp.max(1, keepdims=True)
            q = np.exp(logp)
            q /= q.sum(1, keepdims=True)
            blocks.append(1.0 / q)
    return _nan_pad(blocks, n, Kmax)


def _softmax(Z):
    Z = Z - Z.max(1, keepdims=True)
    E = np.exp(Z)
    return E / E.sum(1, keepdims=True)


def _one_hot(X: np.ndarray, cards: np.ndarray, cols) -> np.ndarray:
    n = X.shape[0]
    F = np.zeros((n, int(sum(int(cards[k]) for k in cols))))
    off = 0
    for k in cols:
        F[np.arange(n), off + X[:, k]] = 1.0
        off += int(cards[k])
    return F


def conditionals_logistic(X, cards, l2=1.0):
    """Per-node multinomial logistic regression of x_i on one-hot x_-i (module docstring;
    RECONSTRUCTED): ``Q[r, i, y] = q(y | X[r, -i])`` (n, d, Kmax) float64, NaN beyond K_i."""
    X, n, d, cards = _data(X, cards)
    l2 = V.nonneg_float(l2, "l2")
    # identical rows contribute identical terms: fit on the distinct rows, weighted by counts
    U, inv, cnt = np.unique(X, axis=0, return_inverse=True, return_counts=True)
    inv, cnt = inv.reshape(-1), cnt.astype(np.float64)[:, None]
    m = U.shape[0]
    blocks = []
    for i in range(d):
        K = int(cards[i])
        F = _one_hot(U, cards, [k for k in range(d) if k != i])
        F = np.hstack([F, np.ones((m, 1))])               # last row of W: the intercept b
        Y = np.zeros((m, K))
        Y[np.arange(m), U[:, i]] = 1.0
        pen = np.ones((F.shape[1], 1))
        pen[-1] = 0.0                                     # intercept unpenalised

        def fun(w, F=F, Y=Y, pen=pen, K=K):
            W = w.reshape(F.shape[1], K)
            Z = F @ W
            Z = Z - Z.max(1, keepdims=True)
            lse = np.log(np.exp(Z).sum(1, keepdims=True))
            nll = float(-(cnt * Y * (Z - lse)).sum())
            G = F.T @ (cnt * (np.exp(Z - lse) - Y)) + l2 * pen * W
            val = nll + 0.5 * l2 * float((pen * W * W).sum())
            return val / n, G.reshape(-1) / n            # scaled by 1/n for conditioning

        res = optimize.minimize(fun, np.zeros(F.shape[1] * K), jac=True, method="L-BFGS-B",
                                options={"maxiter": 5000, "gtol": 1e-10, "ftol": 1e-15})
        blocks.append(_softmax(F @ res.x.reshape(F.shape[1], K))[inv])
    return _nan_pad(blocks, n, int(cards.max()))


# --------------------------------------------------------------------------- loss and leaf statistic


def gsm_marginal_loss(S_all, X, cards):
    """``J = mean_r sum_i [S[r, i, X_ri]^2 - 2 sum_{y < K_i} S[r, i, y]]`` (module docstring);
    0-d float64. Entries beyond K_i are not read."""
    X = V.host_array(X, "X")
    S_all = V.host_array(S_all, "S_all")
    n, d, cards = V.discrete_data(X, cards)
    V.score_array(S_all, n, d, int(cards.max()))
    S = S_all.astype(np.float64)
    X = X.astype(np.int64)
    total = np.zeros(n)
    for i in range(d):
        s_obs = S[np.arange(n), i, X[:, i]]
        total += s_obs ** 2 - 2.0 * S[:, i, : cards[i]].sum(1)
    return np.asarray(total.mean())


def _weighted_var(phi: np.ndarray, w: np.ndarray) -> float:
    m = float((w * phi).sum())
    return float((w * (phi - m) ** 2).sum())


def leaf_statistic(S_all, X, cards, criterion="invariance_sum", weights=None):
    """Per-node leaf statistic ``stat_j = Var_w[phi_j]`` (population variance, weights
    normalised; module docstring for the three ``criterion`` values). Leaf = argmin.
    Returns (d,) float64."""
    X = V.host_array(X, "X")
    S_all = V.host_array(S_all, "S_all")
    n, d, cards = V.discrete_data(X, cards)
    V.score_array(S_all, n, d, int(cards.max()))
    V.leaf_criterion(criterion)
    if weights is not None:
        weights = V.host_array(weights, "weights")
    V.row_weights(weights, n, S_all)
    w = np.full(n, 1.0 / n) if weights is None else weights.astype(np.float64) / weights.sum(
        dtype=np.float64)
    S = S_all.astype(np.float64)
    X = X.astype(np.int64)
    stat = np.empty(d)
    for j in range(d):
        s = S[:, j, : cards[j]]                           # padding never read
        if criterion == "invariance_sum":
            phi = s.sum(1)
        elif criterion == "invariance_entropy":
            q = 1.0 / s
            q = q / q.sum(1, keepdims=True)
            phi = -(q * np.log(q)).sum(1)
        else:                                             # "var_score"
            phi = S[np.arange(n), j, X[:, j]]
        stat[j] = _weighted_var(phi, w)
    return stat


# --------------------------------------------------------------------------- ordering


def discrete_score_order(X, cards, estimator="plugin", criterion="invariance_sum", alpha=1.0,
                         P=None, A=None, mechanisms=None):
    """Causal order (sources first, int64 (d,)) by repeated leaf removal (module docstring).

    ``estimator``: "plugin" (alpha), "logistic" (:func:`conditionals_logistic`), "exact"
    (needs the joint table ``P``; ``X`` may be None, then ``cards = P.shape``; the statistic is
    taken over all cells with weights P marginalised over the removed leaves), "oracle" (needs
    ``A`` and ``mechanisms``: the Markov-blanket score on the active subgraph, evaluated on the
    rows of X). Data-driven estimators refuse constant columns."""
    V.choice(estimator, "estimator", ESTIMATORS)
    V.leaf_criterion(criterion)
    if estimator == "exact":
        if P is None:
            raise ValueError("estimator='exact' needs the joint table P (shape cards)")
        Pt = _prob_table(P)
        if X is not None:
            _, _, d, cards = _data(X, cards)
            if tuple(cards.tolist()) != Pt.shape:
                raise ValueError(f"P must have shape cards = {tuple(cards.tolist())}, got {Pt.shape}")
        d = Pt.ndim
    else:
        X, _, d, cards = _data(X, cards, allow_constant=(estimator == "oracle"))
        if estimator == "plugin":
            alpha = V.positive_float(alpha, "alpha")
        if estimator == "oracle":
            if A is None or mechanisms is None:
                raise ValueError("estimator='oracle' needs the true graph A and its mechanisms")
            A = _adjacency(A, d)
            _mechanisms(A, cards, mechanisms)

    def stat_of(active):
        if estimator == "exact":
            removed = tuple(k for k in range(d) if k not in active)
            Pa = Pt.sum(axis=removed) if removed else Pt
            Xa, S, w = _exact_rows(Pa)
            return leaf_statistic(S, Xa, np.array(Pa.shape), criterion, weights=w)
        Xa, ca = X[:, active], cards[active]
        if estimator == "plugin":
            S = discrete_score_plugin(Xa, ca, alpha)
        elif estimator == "logistic":
            S = discrete_score_from_conditionals(conditionals_logistic(Xa, ca))
        else:
            S = discrete_score_oracle(X, A, cards, mechanisms, active=active)
        return leaf_statistic(S, Xa, ca, criterion)

    return order_by_leaf_removal(d, stat_of)


def order_by_leaf_removal(d, stat_of):
    """The ordering loop (module docstring): ``stat_of(active)`` gives the leaf statistic of
    the nodes in ``active`` (a list, increasing); the argmin (ties: lowest index) is removed
    and placed last; returns the order sources first (int64 (d,)). Any backend's
    ``discrete_score_plugin`` and ``leaf_statistic`` can supply ``stat_of`` (the asv ordering
    benchmark does); one statistic per step is read on the host."""
    active, order = list(range(int(d))), []
    while len(active) > 1:
        stat = np.asarray(stat_of(list(active)), dtype=np.float64)
        leaf = active[int(np.argmin(stat))]
        order.append(leaf)
        active.remove(leaf)
    order.append(active[0])
    return np.array(order[::-1], dtype=np.int64)


# --------------------------------------------------------------------------- samplers


def random_dag(d, expected_degree, rng, kind="er"):
    """Random DAG adjacency (d, d) int64 (module docstring): ``"er"`` edge probability
    ``expected_degree / (d - 1)`` over the pairs of a random permutation; ``"sf"``
    Barabási–Albert attachment with ``m = max(1, round(expected_degree / 2))``, relabelled."""
    d = V.positive_int(d, "d")
    deg = V.nonneg_float(expected_degree, "expected_degree")
    if d > 1 and deg > d - 1:
        raise ValueError(f"expected_degree must be <= d - 1 = {d - 1} (a complete DAG), got {deg}")
    V.choice(kind, "kind", DAG_KINDS)
    rng = _rng(rng)
    A = np.zeros((d, d), dtype=np.int64)
    if d == 1:
        return A
    if kind == "er":
        p = deg / (d - 1)
        perm = rng.permutation(d)
        coin = rng.random((d, d)) < p
        for a in range(d):
            for b in range(a + 1, d):
                if coin[a, b]:
                    A[perm[a], perm[b]] = 1
        return A
    m = max(1, round(deg / 2))
    degree = np.zeros(d)
    for t in range(1, d):
        w = degree[:t]
        prob = w / w.sum() if w.sum() > 0 else np.full(t, 1.0 / t)
        targets = rng.choice(t, size=min(m, t), replace=False, p=prob)
        for s in targets:
            A[s, t] = 1
            degree[s] += 1
        degree[t] += len(targets)
    perm = rng.permutation(d)
    B = np.zeros_like(A)
    B[np.ix_(perm, perm)] = A                             # node k becomes perm[k]
    return B


def _ancestral(A, cards, n, rng, draw_table, sample_node):
    order = _topological_order(A)
    mech = [None] * len(cards)
    for j in order:
        pa = tuple(np.flatnonzero(A[:, j]).tolist())
        mech[j] = draw_table(j, pa)
    X = np.zeros((n, len(cards)), dtype=np.int64)
    for j in order:
        X[:, j] = sample_node(j, mech[j], X)
    return X, mech


def _depends_on_every_parent(f: np.ndarray) -> bool:
    return all((f != f.take([0], axis=k)).any() for k in range(f.ndim))


def _sampler_args(A, cards, n):
    cards_arr = np.asarray(cards)
    d = int(cards_arr.shape[0]) if cards_arr.ndim == 1 else -1
    A = _adjacency(A)
    if cards_arr.ndim != 1 or cards_arr.dtype.kind not in "iu" or d != A.shape[0]:
        raise ValueError(f"cards must be a 1-D integer sequence of length d = {A.shape[0]}, got "
                         f"{cards_arr.tolist()!r}")
    if (cards_arr < 2).any():
        raise ValueError(f"cards must be >= 2, got {cards_arr.tolist()}")
    n = V.positive_int(n, "n")
    return A, cards_arr.astype(np.int64), n


def sample_discrete_anm(A, cards, n, rng, noise_alpha=2.0, faithful=True):
    """Cyclic discrete ANM ``X_j = (f_j(pa_j) + N_j) mod K_j`` (module docstring).
    Returns ``(X (n, d) int64, mechanisms)``."""
    A, cards, n = _sampler_args(A, cards, n)
    noise_alpha = V.positive_float(noise_alpha, "noise_alpha")
    rng = _rng(rng)

    def draw(j, pa):
        K, shape = int(cards[j]), tuple(int(cards[p]) for p in pa)
        for _ in range(MAX_REDRAWS):
            f = rng.integers(0, K, size=shape, dtype=np.int64)
            if not faithful or _depends_on_every_parent(f):
                break
        else:
            raise RuntimeError(f"no mechanism of node {j} depending on every parent in "
                               f"{MAX_REDRAWS} draws")
        noise = rng.dirichlet(np.full(K, noise_alpha))
        table = noise[(np.arange(K) - f[..., None]) % K]
        return {"kind": "anm", "parents": pa, "f": f, "noise": noise, "table": table}

    def sample(j, m, X):
        K = int(cards[j])
        fval = m["f"][tuple(X[:, p] for p in m["parents"])]
        return (fval + rng.choice(K, size=X.shape[0], p=m["noise"])) % K

    return _ancestral(A, cards, n, rng, draw, sample)


def sample_cpt_bn(A, cards, n, rng, dirichlet_alpha=1.0):
    """Bayesian network with random CPTs: every parent configuration of node j gets a
    ``Dirichlet(dirichlet_alpha 1_{K_j})`` row. Returns ``(X (n, d) int64, mechanisms)``."""
    A, cards, n = _sampler_args(A, cards, n)
    dirichlet_alpha = V.positive_float(dirichlet_alpha, "dirichlet_alpha")
    rng = _rng(rng)

    def draw(j, pa):
        K, shape = int(cards[j]), tuple(int(cards[p]) for p in pa)
        cpt = rng.dirichlet(np.full(K, dirichlet_alpha), size=shape).reshape(shape + (K,))
        return {"kind": "cpt", "parents": pa, "cpt": cpt, "table": cpt}

    def sample(j, m, X):
        rows = m["table"][tuple(X[:, p] for p in m["parents"])]
        rows = np.broadcast_to(rows, (X.shape[0], int(cards[j])))   # (n, K_j), also for roots
        u = rng.random(X.shape[0])
        return np.minimum((u[:, None] >= np.cumsum(rows, 1)).sum(1), int(cards[j]) - 1)

    return _ancestral(A, cards, n, rng, draw, sample)


def joint_table(A, cards, mechanisms):
    """``P[x] = prod_j table_j[x_pa_j, x_j]``, shape tuple(cards) (at most MAX_TABLE cells)."""
    A, cards, _ = _sampler_args(A, cards, 1)
    mech = _mechanisms(A, cards, mechanisms)
    d = len(cards)
    if math.prod(cards.tolist()) > MAX_TABLE:
        raise ValueError(f"the joint table would have {math.prod(cards.tolist())} cells; the limit "
                         f"is {MAX_TABLE}")
    P = np.ones(tuple(cards.tolist()))
    for j in range(d):
        axes = list(mech[j]["parents"]) + [j]
        t = np.asarray(mech[j]["table"], dtype=np.float64)
        perm = np.argsort(axes)
        t = t.transpose(perm)                             # axes in increasing node order
        shape = [1] * d
        for ax in sorted(axes):
            shape[ax] = int(cards[ax])
        P = P * t.reshape(shape)
    return P
