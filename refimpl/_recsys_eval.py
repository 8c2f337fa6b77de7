r"""Evaluation side of the recommender family: ranking metrics, the popularity baseline, the
strong-generalisation split and the bundled MovieLens-100k data — the float64 NumPy reference
(re-exported by :mod:`refimpl.recsys_vae`).

Paper: Liang, Krishnan, Hoffman, Jebara, "Variational Autoencoders for Collaborative
Filtering", WWW 2018, arXiv 1802.05814. Official code: ``dawenl/vae_cf``,
``VAE_ML20M_WWW2018.ipynb @ad103c5`` — the functions ``NDCG_binary_at_k_batch`` and
``Recall_at_k_batch`` and the data-preparation cells (``filter_triplets``,
``split_train_test_proportion``, ``numerize``, ``load_train_data``, ``load_tr_te_data``).
Spec: ``specs/recsys_vae.md`` secs. 5-7.

Metrics (:func:`recall_at_k`, :func:`ndcg_at_k`; official code formulas). For user u with
scores s_u (I,), fold-in set F_u = {i : X_fold[u, i] = 1} and targets T_u = {i : X_heldout[u, i]
= 1}::

    s'_ui   = -inf if i in F_u else s_ui                 (the notebook: X_pred[X.nonzero()] = -inf)
    rank    = items sorted by s' descending, ties by the lower item index
              (a stable argsort of -s'); items with s' = -inf are not ranked, so the list
              pi_u = (pi_u(1), ..., pi_u(m)) has m = min(k, #finite scores) <= k entries
    hit_r   = 1[pi_u(r) in T_u]
    Recall@k = sum_r hit_r / min(k, |T_u|)
    DCG@k    = sum_{r=1..m} hit_r / log2(r + 1)
    IDCG@k   = sum_{r=1..min(k, |T_u|)} 1 / log2(r + 1)
    NDCG@k   = DCG@k / IDCG@k
    |T_u| = 0: 0 / 0, the user is excluded: the per-user value is NaN (use
    :func:`mean_and_sem`, which averages over the other users).

The notebook selects the top k with ``bottleneck.argpartition`` (arbitrary order among ties, and
it needs k < I); the reference's stable sort defines the tie order and allows any k >= 1. On
tie-free scores with k < I and F, T disjoint the two agree bit for bit: DCG is the same
``(hits * tp).sum(axis=1)`` over a (U, k) array, ``tp = 1 / log2(arange(2, k + 2))``, and IDCG
the same ``tp[:min(n, k)].sum()`` (tests/test_recsys_eval.py checks this against a
transcription). Items scored -inf by the caller are treated like fold-in items (not ranked);
NaN or +inf scores are refused, and so is an item that is both fold-in and target (it could
never be retrieved). Reported summary (notebook): mean and ``std / sqrt(n)`` (population std)
over the users with |T| > 0 (:func:`mean_and_sem`).

Popularity baseline (:func:`popularity_scores`): ``pop_i = sum_{u in train} X_train[u, i]``,
broadcast to every evaluated user; ranked by the same metrics (fold-in items excluded).

Strong generalisation (:func:`split_strong_generalization`, official code, spec sec. 5)::

    1. keep ratings > min_rating (3.5); keep users with >= min_items (5) of them
       (filter_triplets with min_sc = 0: no item filter)
    2. unique users in ascending id order (pandas groupby order), permuted by
       np.random.seed(seed); np.random.permutation(n_users); the last 2 n_heldout are held out:
       the first n_heldout of them validation, the last n_heldout test
    3. item vocabulary = items of the training users' rows in order of first appearance
       (pd.unique); held-out users' rows are restricted to it
    4. per held-out part, seed reset (np.random.seed(seed)), users in ascending id order, each
       user's rows in table order: if n >= 5, np.random.choice(n, size=int(test_prop * n),
       replace=False) picks the targets, the rest is fold-in; else all rows are fold-in
       (the threshold 5 is the notebook's literal, not min_items)

The legacy global RNG is reproduced with ``np.random.RandomState(seed)`` (identical streams;
the global state is not touched). Row order: training users in permutation order (the
notebook's ``profile2id``), validation and test users in permutation order, every held-out
user one row (the notebook's ``load_tr_te_data`` spans the uid range of the users that still
have rows, so the two differ only when the first or last held-out user lost all items to the
vocabulary restriction — then the notebook drops that row). The notebook's ``get_count`` uses
``groupby(..., as_index=False).size()``, which returns a Series only in pandas < 1.1; the
procedure above is that version's.

Data (:func:`load_ml100k`, spec sec. 7): RecBole 1.2.1 ships MovieLens-100k as
``recbole/dataset_example/ml-100k/ml-100k.inter`` (tab-separated, header ``user_id:token
item_id:token rating:float timestamp:float``, 100,000 rows, 943 users, 1,682 items). The file is
located through the installed distribution's metadata (``recbole`` is never imported) and parsed
with NumPy. After step 1: 55,375 ratings > 3.5, 938 users with >= 5 of them, 55,361
interactions over 1,447 items.
"""

from __future__ import annotations

import importlib.metadata
import math
from pathlib import Path
from typing import NamedTuple

import numpy as np
import scipy.sparse as sp

from refimpl import _validate as V

__all__ = [
    "ML100K_INTER",
    "RECBOLE_INSTALL",
    "StrongGeneralizationSplit",
    "load_ml100k",
    "mean_and_sem",
    "ndcg_at_k",
    "popularity_scores",
    "recall_at_k",
    "split_strong_generalization",
]

ML100K_INTER = "recbole/dataset_example/ml-100k/ml-100k.inter"
ML100K_HEADER = ("user_id:token", "item_id:token", "rating:float", "timestamp:float")
RECBOLE_INSTALL = "pip install --no-deps recbole==1.2.1"

_BLOCK = 512  # users per block of the metric loop (bounds the (block, I) sort's memory)


# --------------------------------------------------------------------------- metrics


def _host_interactions(X, name: str):
    """The reference takes NumPy arrays or scipy CSR matrices (no silent device copies)."""
    return X if sp.issparse(X) else V.host_array(X, name)


def _metric_args(scores, X_fold, X_heldout, k):
    scores = V.host_array(scores, "scores")
    X_fold = _host_interactions(X_fold, "X_fold")
    X_heldout = _host_interactions(X_heldout, "X_heldout")
    _, _, k = V.rv_metric_args(scores, X_fold, X_heldout, k)
    return scores, X_fold, X_heldout, k


def _dense_bool(X, rows: slice) -> np.ndarray:
    """Rows of a dense or CSR 0/1 matrix as a dense bool array (values already validated)."""
    block = X[rows]
    if sp.issparse(block):
        block = block.toarray()
    return np.asarray(block) != 0


def _ranked_hits(scores, X_fold, X_heldout, k: int):
    """Per block of users: (rows, hits (b, m) float64 in rank order, |T| (b,)), m = min(k, I)."""
    U, I = scores.shape
    m = min(k, I)
    for start in range(0, U, _BLOCK):
        rows = slice(start, min(start + _BLOCK, U))
        fold, held = _dense_bool(X_fold, rows), _dense_bool(X_heldout, rows)
        s = np.where(fold, -np.inf, np.asarray(scores[rows], dtype=np.float64))
        order = np.argsort(-s, axis=1, kind="stable")[:, :m]       # descending, lower index first
        ranked = np.take_along_axis(s, order, axis=1)
        hits = np.take_along_axis(held, order, axis=1) & np.isfinite(ranked)
        yield rows, hits.astype(np.float64), held.sum(axis=1)


def recall_at_k(scores, X_fold, X_heldout, k):
    """Recall@k per user: ``|top-k ∩ T| / min(k, |T|)``, NaN where |T| = 0 (module docstring).

    ``scores`` (U, I) float32/float64 (no NaN or +inf; -inf = not ranked); ``X_fold``,
    ``X_heldout`` (U, I) 0/1, dense (any numeric dtype or bool) or ``scipy.sparse`` CSR,
    disjoint; ``k`` an int >= 1 (k > I allowed: the list is then shorter). Returns (U,) float64.
    """
    scores, X_fold, X_heldout, k = _metric_args(scores, X_fold, X_heldout, k)
    out = np.empty(scores.shape[0])
    for rows, hits, n_t in _ranked_hits(scores, X_fold, X_heldout, k):
        with np.errstate(invalid="ignore", divide="ignore"):
            out[rows] = np.where(n_t > 0, hits.sum(axis=1) / np.minimum(k, n_t), np.nan)
    return out


def _ideal_dcg(m: int) -> np.ndarray:
    """``idcg[j] = sum_{r=1..j} 1 / log2(r + 1)`` for j = 0..m (the notebook's tp[:j].sum())."""
    tp = 1.0 / np.log2(np.arange(2, m + 2))
    return np.array([tp[:j].sum() for j in range(m + 1)])


def ndcg_at_k(scores, X_fold, X_heldout, k):
    """NDCG@k per user (binary relevance, log2 discount), NaN where |T| = 0.

    ``DCG = sum_{r<=k} 1[pi(r) in T] / log2(r + 1)``, ``IDCG = sum_{r<=min(k,|T|)} 1/log2(r + 1)``;
    arguments as :func:`recall_at_k`. Returns (U,) float64."""
    scores, X_fold, X_heldout, k = _metric_args(scores, X_fold, X_heldout, k)
    out = np.empty(scores.shape[0])
    m = min(k, scores.shape[1])
    tp = 1.0 / np.log2(np.arange(2, m + 2))      # discount of ranks 1..m
    idcg = _ideal_dcg(m)
    for rows, hits, n_t in _ranked_hits(scores, X_fold, X_heldout, k):
        dcg = (hits * tp).sum(axis=1)
        ideal = idcg[np.minimum(n_t, m)]
        with np.errstate(invalid="ignore", divide="ignore"):
            out[rows] = np.where(n_t > 0, dcg / ideal, np.nan)
    return out


def mean_and_sem(values) -> tuple[float, float, int]:
    """``(mean, std / sqrt(n), n)`` over the finite entries of a per-user metric (users with
    |T| = 0 carry NaN and are left out); ``std`` is the population std (``np.std``, ddof 0), as
    the notebook reports. NaN, NaN, 0 if no user is valid."""
    v = np.asarray(V.host_array(values, "values"), dtype=np.float64).ravel()
    v = v[~np.isnan(v)]
    if v.size == 0:
        return math.nan, math.nan, 0
    return float(v.mean()), float(v.std() / np.sqrt(v.size)), int(v.size)


# --------------------------------------------------------------------------- popularity


def popularity_scores(X_train, n_users):
    """The popularity baseline: ``pop_i = sum_u X_train[u, i]`` (interaction counts of the
    training users) broadcast to (n_users, I), float64. ``X_train`` 0/1 dense or CSR with at
    least one interaction; ``n_users`` an int >= 1 (the users to score)."""
    X_train = _host_interactions(X_train, "X_train")
    n_users, _ = V.rv_popularity_args(X_train, n_users)
    counts = np.asarray(X_train.sum(axis=0), dtype=np.float64).reshape(-1)
    return np.tile(counts, (n_users, 1))


# --------------------------------------------------------------------------- strong generalisation


class StrongGeneralizationSplit(NamedTuple):
    """Output of :func:`split_strong_generalization`. Matrices are ``scipy.sparse.csr_matrix``
    float64 with stored values 1 and I = ``len(item_ids)`` columns (column j is item
    ``item_ids[j]``); row r of ``train`` is user ``train_users[r]``, row r of ``vad_fold`` /
    ``vad_heldout`` is ``vad_users[r]``, of ``test_fold`` / ``test_heldout`` ``test_users[r]``.
    Ids are the input's own user/item ids."""

    train: sp.csr_matrix
    vad_fold: sp.csr_matrix
    vad_heldout: sp.csr_matrix
    test_fold: sp.csr_matrix
    test_heldout: sp.csr_matrix
    item_ids: np.ndarray
    train_users: np.ndarray
    vad_users: np.ndarray
    test_users: np.ndarray


def _csr(rows: np.ndarray, cols: np.ndarray, shape: tuple[int, int]) -> sp.csr_matrix:
    X = sp.csr_matrix((np.ones(rows.size), (rows, cols)), shape=shape, dtype=np.float64)
    X.sort_indices()
    return X


def _fold_heldout(part_users, users, cols, n_items: int, test_prop: float, seed: int):
    """Step 4 for one held-out part: (fold, heldout) CSR with one row per user of
    ``part_users`` (permutation order); ``users``/``cols`` are that part's rows in table order."""
    rng = np.random.RandomState(seed)                    # np.random.seed(98765) in the notebook
    row_of = {u: r for r, u in enumerate(part_users)}
    fold, held = ([], []), ([], [])
    order = np.argsort(users, kind="stable")             # groupby('userId'): ascending ids,
    bounds = np.flatnonzero(np.diff(users[order])) + 1   # each user's rows in table order
    for grp in (np.split(order, bounds) if order.size else []):
        n = grp.size
        target = np.zeros(n, dtype=bool)
        if n >= 5:
            target[rng.choice(n, size=int(test_prop * n), replace=False).astype(np.int64)] = True
        r = row_of[users[grp[0]]]
        for (rows, cs), sel in ((fold, ~target), (held, target)):
            rows.append(np.full(int(sel.sum()), r, dtype=np.int64))
            cs.append(cols[grp[sel]])
    shape = (len(part_users), n_items)
    return tuple(_csr(np.concatenate(rows or [np.zeros(0, np.int64)]),
                      np.concatenate(cs or [np.zeros(0, np.int64)]), shape)
                 for rows, cs in (fold, held))


def split_strong_generalization(users, items, ratings, n_heldout, test_prop=0.2, seed=98765,
                                min_rating=3.5, min_items=5):
    """The Mult-VAE strong-generalisation split (official notebook, module docstring).

    ``users``, ``items``: 1-D integer id arrays, ``ratings`` a 1-D real array, one row per
    (user, item) pair (duplicates are refused: the notebook would count them twice);
    ``n_heldout`` (>= 1) users each for validation and test; ``test_prop`` in (0, 1);
    ``seed`` an int; rows with ``rating > min_rating`` are positives; users need
    ``>= min_items`` positives. Returns a :class:`StrongGeneralizationSplit`."""
    users, items, ratings, n_heldout, test_prop, seed, min_rating, min_items = V.rv_split_args(
        users, items, ratings, n_heldout, test_prop, seed, min_rating, min_items)
    # 1. binarise, then the user filter
    pos = ratings > min_rating
    u, it = users[pos], items[pos]
    uniq, counts = np.unique(u, return_counts=True)      # ascending ids (groupby order)
    keep_users = uniq[counts >= min_items]
    keep = np.isin(u, keep_users)
    u, it = u[keep], it[keep]
    n_users = keep_users.size
    if n_users <= 2 * n_heldout:
        raise ValueError(f"n_heldout = {n_heldout} leaves no training user: {n_users} users have "
                         f">= {min_items} ratings > {min_rating}, 2 * n_heldout + 1 are needed")
    # 2. permute users; the last 2 n_heldout are validation then test
    perm_users = keep_users[np.random.RandomState(seed).permutation(n_users)]
    n_tr = n_users - 2 * n_heldout
    tr_users = perm_users[:n_tr]
    vd_users = perm_users[n_tr:n_users - n_heldout]
    te_users = perm_users[n_users - n_heldout:]
    # 3. item vocabulary from the training users' rows, in order of first appearance
    in_tr = np.isin(u, tr_users)
    vocab, first = np.unique(it[in_tr], return_index=True)
    item_ids = vocab[np.argsort(first, kind="stable")]
    col_of = {v: j for j, v in enumerate(item_ids)}
    I = item_ids.size
    row_tr = {v: r for r, v in enumerate(tr_users)}
    train = _csr(np.array([row_tr[x] for x in u[in_tr]], dtype=np.int64),
                 np.array([col_of[x] for x in it[in_tr]], dtype=np.int64), (n_tr, I))
    known = np.isin(it, item_ids)
    parts: list = []
    for part_users in (vd_users, te_users):
        sel = np.isin(u, part_users) & known
        cols = np.array([col_of[x] for x in it[sel]], dtype=np.int64)
        parts += _fold_heldout(part_users, u[sel], cols, I, test_prop, seed)
    return StrongGeneralizationSplit(train, *parts, item_ids, tr_users, vd_users, te_users)


# --------------------------------------------------------------------------- MovieLens-100k


def _ml100k_path() -> Path:
    try:
        dist = importlib.metadata.distribution("recbole")
    except importlib.metadata.PackageNotFoundError:
        raise ModuleNotFoundError(
            f"load_ml100k reads MovieLens-100k from the RecBole wheel, which is not installed: "
            f"run `{RECBOLE_INSTALL}` (only its data file {ML100K_INTER} is read; recbole is "
            f"never imported)") from None
    path = Path(dist.locate_file(ML100K_INTER))
    if not path.is_file():
        raise FileNotFoundError(
            f"recbole {dist.version} is installed but {ML100K_INTER} is not at {path} (the wheel "
            f"layout changed?); `{RECBOLE_INSTALL}` ships it")
    return path


def load_ml100k():
    """MovieLens-100k from the RecBole 1.2.1 wheel: ``(users, items, ratings, timestamps)``,
    100,000 rows in file order — users, items, timestamps int64, ratings float64 (1..5).

    Raises ``ModuleNotFoundError`` naming ``pip install --no-deps recbole==1.2.1`` and the
    expected path if RecBole is absent, ``FileNotFoundError`` if the file moved and
    ``ValueError`` if its header is not the expected one."""
    path = _ml100k_path()
    with open(path, encoding="utf-8") as fh:
        header = tuple(fh.readline().rstrip("\r\n").split("\t"))
        if header != ML100K_HEADER:
            raise ValueError(f"{path}: expected the header {ML100K_HEADER}, got {header}")
        table = np.loadtxt(fh, delimiter="\t", dtype=np.float64, ndmin=2)
    if table.shape[1] != 4:
        raise ValueError(f"{path}: expected 4 tab-separated columns, got {table.shape[1]}")
    users, items, ratings, stamps = table.T
    as_int = [c.astype(np.int64) for c in (users, items, stamps)]
    if any(not np.array_equal(a, c) for a, c in zip(as_int, (users, items, stamps))):
        raise ValueError(f"{path}: user ids, item ids and timestamps must be integers")
    return as_int[0], as_int[1], np.ascontiguousarray(ratings), as_int[2]
