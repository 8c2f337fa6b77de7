"""Reference tests of the recommender evaluation side (refimpl._recsys_eval; Mult-VAE arXiv
1802.05814, official notebook dawenl/vae_cf VAE_ML20M_WWW2018.ipynb @ad103c5).

Oracles: a transcription of the notebook's NDCG_binary_at_k_batch / Recall_at_k_batch
(np.argpartition in place of bottleneck's, on tie-free scores: exact equality), hand-computed
values, invariants (perfect ranking, k >= I, dense = CSR), a pandas transcription of the
notebook's data-preparation cells (pandas is a test-only dependency), and the counts of spec
sec. 7 on the MovieLens-100k file shipped in the RecBole 1.2.1 wheel.
"""

from __future__ import annotations

import importlib.metadata
import math

import numpy as np
import pytest
import scipy.sparse as sp

from refimpl import _recsys_eval as ev
from refimpl._cases import recsys_vae as cases
from refimpl._recsys_eval import (
    load_ml100k,
    mean_and_sem,
    ndcg_at_k,
    popularity_scores,
    recall_at_k,
    split_strong_generalization,
)

# --------------------------------------------------------------------------- notebook transcription


def nb_ndcg(X_pred, heldout_batch, k=100):
    """NDCG_binary_at_k_batch of the notebook (np.argpartition for bn.argpartition)."""
    batch_users = X_pred.shape[0]
    idx_topk_part = np.argpartition(-X_pred, k, axis=1)
    topk_part = X_pred[np.arange(batch_users)[:, np.newaxis], idx_topk_part[:, :k]]
    idx_part = np.argsort(-topk_part, axis=1)
    idx_topk = idx_topk_part[np.arange(batch_users)[:, np.newaxis], idx_part]
    tp = 1. / np.log2(np.arange(2, k + 2))
    DCG = (heldout_batch[np.arange(batch_users)[:, np.newaxis], idx_topk].toarray() * tp).sum(axis=1)
    IDCG = np.array([(tp[:min(n, k)]).sum() for n in heldout_batch.getnnz(axis=1)])
    return DCG / IDCG


def nb_recall(X_pred, heldout_batch, k=100):
    """Recall_at_k_batch of the notebook (np.argpartition for bn.argpartition)."""
    batch_users = X_pred.shape[0]
    idx = np.argpartition(-X_pred, k, axis=1)
    X_pred_binary = np.zeros_like(X_pred, dtype=bool)
    X_pred_binary[np.arange(batch_users)[:, np.newaxis], idx[:, :k]] = True
    X_true_binary = (heldout_batch > 0).toarray()
    tmp = (np.logical_and(X_true_binary, X_pred_binary).sum(axis=1)).astype(np.float32)
    recall = tmp / np.minimum(k, X_true_binary.sum(axis=1))
    return recall


def nb_eval(scores, fold, held, k):
    """The notebook's evaluation step: X_pred[X.nonzero()] = -inf, then the two functions."""
    X_pred = scores.astype(np.float64).copy()
    X_pred[np.asarray(fold).nonzero()] = -np.inf
    held = sp.csr_matrix(np.asarray(held, dtype=np.float64))
    with np.errstate(invalid="ignore", divide="ignore"):
        return nb_recall(X_pred, held, k), nb_ndcg(X_pred, held, k)


def same(a, b):
    return np.array_equal(np.asarray(a), np.asarray(b), equal_nan=True)


@pytest.mark.parametrize("k", [1, 5, 20, 100, 499])
def test_metrics_equal_notebook_transcription(k):
    kw = cases.metric_inputs(np.random.default_rng(k), 64, 500, k)
    want_r, want_n = nb_eval(kw["scores"], kw["X_fold"], kw["X_heldout"], k)
    assert same(recall_at_k(**kw), want_r)
    assert same(ndcg_at_k(**kw), want_n)
    assert np.isnan(want_n[0]) and np.isnan(want_r[0])           # user 0 has |T| = 0


def test_metrics_equal_notebook_across_blocks(monkeypatch):
    """The per-block loop (users in blocks) does not change a bit."""
    kw = cases.metric_inputs(np.random.default_rng(3), 1000, 1682, 100)
    want_r, want_n = nb_eval(kw["scores"], kw["X_fold"], kw["X_heldout"], 100)
    monkeypatch.setattr(ev, "_BLOCK", 97)
    assert same(recall_at_k(**kw), want_r)
    assert same(ndcg_at_k(**kw), want_n)


def test_hand_computed_values():
    scores = np.array([[0.9, 0.1, 0.8, 0.7, 0.3, 0.2]])
    fold = np.array([[0, 0, 1, 0, 0, 0]])           # item 2 removed: ranking 0, 3, 4, 5, 1
    held = np.array([[1, 0, 0, 0, 1, 1]])           # targets at ranks 1, 3, 4
    assert recall_at_k(scores, fold, held, 2)[0] == 1 / 2
    assert recall_at_k(scores, fold, held, 3)[0] == 2 / 3
    dcg = 1 + 1 / math.log2(4)
    idcg = 1 + 1 / math.log2(3) + 1 / math.log2(4)
    assert ndcg_at_k(scores, fold, held, 3)[0] == pytest.approx(dcg / idcg, rel=1e-15)
    # k = 5 > |T|: denominators use |T| = 3
    assert recall_at_k(scores, fold, held, 5)[0] == 1.0
    assert ndcg_at_k(scores, fold, held, 5)[0] == pytest.approx(
        (1 + 1 / math.log2(4) + 1 / math.log2(5)) / idcg, rel=1e-15)


def test_perfect_ranking_gives_one():
    rng = np.random.default_rng(1)
    kw = cases.metric_inputs(rng, 40, 300, 20)
    held = kw["X_heldout"] > 0
    held[5, :] = False
    held[5, np.flatnonzero(kw["X_fold"][5] == 0)[:60]] = True   # |T| = 60 > k
    kw["X_heldout"] = held.astype(np.float64)
    kw["scores"] = held * 100.0 + rng.random(held.shape)        # every target above every other
    valid = held.any(axis=1)
    for k in (1, 20, 100):
        kw["k"] = k
        r, n = recall_at_k(**kw), ndcg_at_k(**kw)
        assert np.all(r[valid] == 1.0) and np.allclose(n[valid], 1.0, rtol=0, atol=1e-15)
        assert np.all(np.isnan(r[~valid])) and np.all(np.isnan(n[~valid]))


def test_empty_targets_nan_and_excluded_from_mean():
    kw = cases.metric_inputs(np.random.default_rng(2), 30, 200, 10)
    for f in (recall_at_k, ndcg_at_k):
        v = f(**kw)
        assert np.isnan(v[0]) and not np.isnan(v[1:]).any()
        mean, sem, n = mean_and_sem(v)
        assert n == 29
        assert mean == pytest.approx(v[1:].mean(), rel=1e-15)
        assert sem == pytest.approx(v[1:].std() / math.sqrt(29), rel=1e-15)
    assert all(math.isnan(x) for x in mean_and_sem(np.full(3, np.nan))[:2])


def test_shorter_list_and_k_beyond_items():
    """Fewer than k candidates: the list is shorter; any k >= I gives the k = I values;
    a -inf score is not ranked, exactly like a fold-in item."""
    kw = cases.metric_inputs(np.random.default_rng(4), 6, 12, 5)
    base = {f: f(**{**kw, "k": 12}) for f in (recall_at_k, ndcg_at_k)}
    for k in (13, 20, 1000):
        for f in (recall_at_k, ndcg_at_k):
            assert same(f(**{**kw, "k": k}), base[f])
    # user 1 keeps 2 candidates (< k = 5) with 1 target: recall 1, NDCG from its rank
    s = kw["scores"][1].copy()
    s[kw["X_fold"][1] > 0] = -np.inf
    rank = int(np.sum(s > s[kw["X_heldout"][1] > 0][0])) + 1
    assert recall_at_k(**kw)[1] == 1.0
    assert ndcg_at_k(**kw)[1] == pytest.approx(1 / math.log2(rank + 1), rel=1e-15)
    # -inf scores == fold-in
    scores = kw["scores"].copy()
    free = np.flatnonzero((kw["X_fold"][3] == 0) & (kw["X_heldout"][3] == 0))[:3]
    scores[3, free] = -np.inf
    fold = kw["X_fold"].copy()
    fold[3, free] = 1.0
    for f in (recall_at_k, ndcg_at_k):
        assert same(f(scores, kw["X_fold"], kw["X_heldout"], 5), f(kw["scores"], fold, kw["X_heldout"], 5))


def test_ties_broken_by_lower_index():
    scores = np.zeros((1, 8))
    fold = np.zeros((1, 8)); fold[0, 0] = 1
    held = np.zeros((1, 8)); held[0, [3, 7]] = 1
    # equal scores: the ranking is 1, 2, 3, 4, 5, 6, 7 -> targets at ranks 3 and 7
    assert recall_at_k(scores, fold, held, 3)[0] == 1 / 2
    assert ndcg_at_k(scores, fold, held, 7)[0] == pytest.approx(
        (1 / 2 + 1 / 3) / (1 + 1 / math.log2(3)), rel=1e-15)


def test_dense_csr_dtypes_agree():
    kw = cases.metric_inputs(np.random.default_rng(5), 50, 120, 10)
    f, h = kw["X_fold"], kw["X_heldout"]
    variants = [(sp.csr_matrix(f), sp.csr_matrix(h)), (f > 0, h > 0),
                (f.astype(np.uint8), sp.csr_array(h.astype(np.int32))), (f.astype(np.float32), h)]
    s32 = kw["scores"].astype(np.float32)              # exact in float32 by construction
    for fn in (recall_at_k, ndcg_at_k):
        want = fn(**kw)
        assert want.dtype == np.float64 and want.shape == (50,)
        for fv, hv in variants:
            assert same(fn(kw["scores"], fv, hv, 10), want)
        assert same(fn(s32, f, h, 10), want)


def test_popularity_scores():
    rng = np.random.default_rng(6)
    X = (rng.random((30, 17)) < 0.2).astype(np.float64)
    P = popularity_scores(X, 7)
    assert P.shape == (7, 17) and P.dtype == np.float64
    want = np.array([sum(X[u, i] for u in range(30)) for i in range(17)])
    assert np.all(P == want[None, :])
    assert np.array_equal(popularity_scores(sp.csr_matrix(X), 7), P)
    assert np.array_equal(popularity_scores(X > 0, 7), P)


# --------------------------------------------------------------------------- bad input


def _kw():
    return cases.metric_inputs(np.random.default_rng(7), 5, 12, 3)


@pytest.mark.parametrize("fn", [recall_at_k, ndcg_at_k])
def test_metric_errors(fn):
    kw = _kw()
    bad = dict(kw, X_fold=kw["X_fold"] * 2)
    with pytest.raises(ValueError, match=r"X_fold must be binary \(0/1 interactions\)"):
        fn(**bad)
    h = kw["X_heldout"].copy(); h[1, np.flatnonzero(h[1])[0]] = 0.5
    with pytest.raises(ValueError, match=r"X_heldout must be binary"):
        fn(**dict(kw, X_heldout=h))
    with pytest.raises(ValueError, match=r"X_heldout must be binary"):
        fn(**dict(kw, X_heldout=sp.csr_matrix(h)))
    for k, err in ((0, ValueError), (-2, ValueError), (1.5, TypeError), (True, TypeError)):
        with pytest.raises(err, match=r"k must be an int >= 1"):
            fn(**dict(kw, k=k))
    with pytest.raises(ValueError, match=r"X_fold must have the shape of scores \(U, I\) = \(5, 12\), got \(5, 11\)"):
        fn(**dict(kw, X_fold=kw["X_fold"][:, :11]))
    with pytest.raises(ValueError, match=r"X_heldout must have the shape of scores"):
        fn(**dict(kw, X_heldout=kw["X_heldout"][:4]))
    with pytest.raises(ValueError, match=r"scores must be 2-D"):
        fn(**dict(kw, scores=kw["scores"][0]))
    with pytest.raises(TypeError, match=r"scores must have dtype float32 or float64"):
        fn(**dict(kw, scores=kw["scores"].astype(np.int64)))
    for v in (np.nan, np.inf):
        s = kw["scores"].copy(); s[2, 3] = v
        with pytest.raises(ValueError, match=r"scores contains NaN or \+inf"):
            fn(**dict(kw, scores=s))
    f = kw["X_fold"].copy(); f[1, np.flatnonzero(kw["X_heldout"][1])[0]] = 1
    with pytest.raises(ValueError, match=r"X_fold and X_heldout overlap in 1 \(user, item\) pairs"):
        fn(**dict(kw, X_fold=f))
    with pytest.raises(TypeError, match=r"X_fold must be a dense array or a CSR matrix, got coo_matrix"):
        fn(**dict(kw, X_fold=sp.coo_matrix(kw["X_fold"])))
    with pytest.raises(TypeError, match=r"X_heldout must have a numeric or bool dtype"):
        fn(**dict(kw, X_heldout=kw["X_heldout"].astype(complex)))
    with pytest.raises(ValueError, match=r"scores must have at least one user and one item"):
        fn(np.zeros((0, 4)), np.zeros((0, 4)), np.zeros((0, 4)), 1)


def test_popularity_errors():
    X = np.eye(3)
    with pytest.raises(ValueError, match=r"X_train has no interactions"):
        popularity_scores(np.zeros((3, 4)), 2)
    with pytest.raises(ValueError, match=r"X_train must be binary"):
        popularity_scores(2 * X, 2)
    with pytest.raises(ValueError, match=r"n_users must be an int >= 1, got 0"):
        popularity_scores(X, 0)
    with pytest.raises(TypeError, match=r"n_users must be an int >= 1, got float"):
        popularity_scores(X, 2.0)
    with pytest.raises(ValueError, match=r"X_train must be 2-D"):
        popularity_scores(np.ones(3), 2)


# --------------------------------------------------------------------------- split


def nb_split(users, items, ratings, n_heldout, seed=98765, test_prop=0.2):
    """The notebook's data-preparation cells (pandas < 1.1 semantics of get_count: a Series
    indexed by id). Returns the pieces the notebook writes to disk, as Python objects."""
    pd = pytest.importorskip("pandas")
    raw_data = pd.DataFrame({"userId": users, "movieId": items, "rating": ratings})
    raw_data = raw_data[raw_data["rating"] > 3.5]

    def get_count(tp, id):
        return tp[[id]].groupby(id).size()

    usercount = get_count(raw_data, "userId")
    raw_data = raw_data[raw_data["userId"].isin(usercount.index[usercount >= 5])]
    user_activity = get_count(raw_data, "userId")
    unique_uid = user_activity.index
    state = np.random.get_state()
    try:
        np.random.seed(seed)
        idx_perm = np.random.permutation(unique_uid.size)
        unique_uid = unique_uid[idx_perm]
        n_users = unique_uid.size
        tr_users = unique_uid[:(n_users - n_heldout * 2)]
        vd_users = unique_uid[(n_users - n_heldout * 2): (n_users - n_heldout)]
        te_users = unique_uid[(n_users - n_heldout):]
        train_plays = raw_data.loc[raw_data["userId"].isin(tr_users)]
        unique_sid = pd.unique(train_plays["movieId"])

        def split_train_test_proportion(data, test_prop=0.2):
            data_grouped_by_user = data.groupby("userId")
            tr_list, te_list = [], []
            np.random.seed(seed)
            for i, (_, group) in enumerate(data_grouped_by_user):
                n_items_u = len(group)
                if n_items_u >= 5:
                    idx = np.zeros(n_items_u, dtype="bool")
                    idx[np.random.choice(n_items_u, size=int(test_prop * n_items_u),
                                         replace=False).astype("int64")] = True
                    tr_list.append(group[np.logical_not(idx)])
                    te_list.append(group[idx])
                else:
                    tr_list.append(group)
            return pd.concat(tr_list), pd.concat(te_list)

        out = {}
        for name, part in (("vad", vd_users), ("test", te_users)):
            plays = raw_data.loc[raw_data["userId"].isin(part)]
            plays = plays.loc[plays["movieId"].isin(unique_sid)]
            tr, te = split_train_test_proportion(plays, test_prop)
            out[name] = ({u: set(g["movieId"]) for u, g in tr.groupby("userId")},
                         {u: set(g["movieId"]) for u, g in te.groupby("userId")})
    finally:
        np.random.set_state(state)
    show2id = {sid: i for i, sid in enumerate(unique_sid)}
    train = sp.csr_matrix((np.ones(len(train_plays)),
                           ([{u: r for r, u in enumerate(tr_users)}[u] for u in train_plays["userId"]],
                            [show2id[s] for s in train_plays["movieId"]])),
                          shape=(len(tr_users), len(unique_sid)))
    return dict(tr_users=np.asarray(tr_users), vd_users=np.asarray(vd_users),
                te_users=np.asarray(te_users), unique_sid=np.asarray(unique_sid), train=train, **out)


def synthetic_ratings(rng, n_users=160, n_items=80):
    """A ratings table in random row order: users rate 3-44 of the items (half-star ratings;
    some have < 5 positives and are dropped); users >= 130 rate 3 shared items and 6 items
    nobody else rates (rating 5), so a held-out one of them keeps < 5 items after the
    restriction to the training vocabulary."""
    rows = []
    for u in rng.permutation(n_users):
        if u >= 130:
            rows += [(1000 + 7 * u, 50 + 3 * i, rng.choice(np.arange(2, 11)) / 2)
                     for i in rng.choice(n_items, size=3, replace=False)]
            rows += [(1000 + 7 * u, 10_000 + 10 * u + j, 5.0) for j in range(6)]
            continue
        n = int(rng.integers(3, 45))
        for i in rng.choice(n_items, size=n, replace=False):
            rows.append((1000 + 7 * u, 50 + 3 * i, rng.choice(np.arange(1, 11)) / 2))
    rows = [rows[j] for j in rng.permutation(len(rows))]
    users, items, ratings = (np.array(c) for c in zip(*rows))
    return users.astype(np.int64), items.astype(np.int64), ratings


def _sets(fold, held, row_users, item_ids):
    out_f, out_h = {}, {}
    for r, u in enumerate(row_users):
        f = set(item_ids[fold[r].indices]); h = set(item_ids[held[r].indices])
        if f:
            out_f[u] = f
        if h:
            out_h[u] = h
    return out_f, out_h


@pytest.mark.parametrize("seed,n_heldout", [(98765, 20), (3, 30)])
def test_split_reproduces_notebook(seed, n_heldout):
    users, items, ratings = synthetic_ratings(np.random.default_rng(seed))
    want = nb_split(users, items, ratings, n_heldout, seed=seed)
    got = split_strong_generalization(users, items, ratings, n_heldout, seed=seed)
    assert np.array_equal(got.train_users, want["tr_users"])
    assert np.array_equal(got.vad_users, want["vd_users"])
    assert np.array_equal(got.test_users, want["te_users"])
    assert np.array_equal(got.item_ids, want["unique_sid"])
    assert (got.train != want["train"]).nnz == 0 and got.train.shape == want["train"].shape
    for name, fold, held, part in (("vad", got.vad_fold, got.vad_heldout, got.vad_users),
                                   ("test", got.test_fold, got.test_heldout, got.test_users)):
        f, h = _sets(fold, held, part, got.item_ids)
        assert f == want[name][0] and h == want[name][1]
        assert fold.shape == held.shape == (n_heldout, got.item_ids.size)
        assert fold.multiply(held).nnz == 0
    # invariants: every matrix is 0/1 CSR; |T| = int(0.2 n) for n >= 5, else 0
    for X in got[:5]:
        assert isinstance(X, sp.csr_matrix) and X.dtype == np.float64 and np.all(X.data == 1)
    n_all = []
    for fold, held in ((got.vad_fold, got.vad_heldout), (got.test_fold, got.test_heldout)):
        n = np.diff(fold.indptr) + np.diff(held.indptr)
        assert np.array_equal(np.diff(held.indptr), np.where(n >= 5, (0.2 * n).astype(int), 0))
        n_all.append(n)
    n_all = np.concatenate(n_all)
    assert (n_all < 5).any() and (n_all >= 5).any()      # both branches of step 4 are exercised


def test_split_errors():
    users, items, ratings = synthetic_ratings(np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"n_heldout = 80 leaves no training user"):
        split_strong_generalization(users, items, ratings, 80)
    with pytest.raises(ValueError, match=r"duplicate \(user, item\) pairs"):
        split_strong_generalization(np.r_[users, users[:1]], np.r_[items, items[:1]],
                                    np.r_[ratings, 4.0], 10)
    with pytest.raises(ValueError, match=r"items must have the length of users"):
        split_strong_generalization(users, items[:-1], ratings, 10)
    with pytest.raises(TypeError, match=r"users must be an integer id array"):
        split_strong_generalization(users.astype(float), items, ratings, 10)
    with pytest.raises(ValueError, match=r"test_prop must lie in \(0, 1\)"):
        split_strong_generalization(users, items, ratings, 10, test_prop=1.0)
    with pytest.raises(ValueError, match=r"n_heldout must be >= 1"):
        split_strong_generalization(users, items, ratings, 0)
    with pytest.raises(ValueError, match=r"ratings contains NaN"):
        split_strong_generalization(users, items, np.where(ratings > 4, np.nan, ratings), 10)


# --------------------------------------------------------------------------- MovieLens-100k


def _recbole_or_skip():
    try:
        importlib.metadata.distribution("recbole")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip(f"recbole is not installed ({ev.RECBOLE_INSTALL}); expected the data file "
                    f"<site-packages>/{ev.ML100K_INTER}")


def test_load_ml100k_counts():
    _recbole_or_skip()
    path = ev._ml100k_path()
    if not path.is_file():
        pytest.skip(f"{ev.ML100K_INTER} not found at {path}")
    with open(path, encoding="utf-8") as fh:
        assert fh.readline().rstrip("\n").split("\t") == list(ev.ML100K_HEADER)
        assert sum(1 for _ in fh) == 100_000
    assert path.stat().st_size == 1_979_230
    users, items, ratings, stamps = load_ml100k()
    assert users.shape == items.shape == ratings.shape == stamps.shape == (100_000,)
    assert users.dtype == items.dtype == stamps.dtype == np.int64 and ratings.dtype == np.float64
    assert np.unique(users).size == 943 and np.unique(items).size == 1682
    assert set(np.unique(ratings)) == {1.0, 2.0, 3.0, 4.0, 5.0}
    assert (users[0], items[0], ratings[0], stamps[0]) == (196, 242, 3.0, 881250949)
    # spec sec. 7 after step 1 of sec. 5
    pos = ratings > 3.5
    assert pos.sum() == 55_375
    uq, cnt = np.unique(users[pos], return_counts=True)
    keep = np.isin(users, uq[cnt >= 5]) & pos
    assert (cnt >= 5).sum() == 938 and keep.sum() == 55_361 and np.unique(items[keep]).size == 1447
    s = split_strong_generalization(users, items, ratings, 100)
    assert s.train.shape[0] == 738 and s.vad_fold.shape[0] == s.test_fold.shape[0] == 100
    assert s.train.nnz + sum(X.nnz for X in s[1:5]) <= 55_361


def test_load_ml100k_missing_recbole(monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(ModuleNotFoundError, match=r"pip install --no-deps recbole==1\.2\.1") as e:
        load_ml100k()
    assert ev.ML100K_INTER in str(e.value)


# --------------------------------------------------------------------------- registry cases


def test_metric_cases_shape_and_invariants():
    rng = np.random.default_rng(0)
    for scale in ("tiny", "small", "bench"):
        for case in cases.cases_recall_at_k(rng, scale):
            if case.where == "gpu":
                assert case.dtypes == ("float32",) and callable(case.kwargs)
                continue
            kw = case.inputs()
            s, f, h, k = kw["scores"], kw["X_fold"], kw["X_heldout"], kw["k"]
            assert scale != "tiny" or s.shape == (4, 12)
            # tie-free and exact in float32 (the finite scores of every row are distinct)
            assert np.array_equal(s.astype(np.float32).astype(np.float64), s)
            for row in s:
                fin = row[np.isfinite(row)]
                assert np.unique(fin).size == fin.size
            assert not np.any((f > 0) & (h > 0))
            assert not h[0].any()                                         # |T| = 0
            if k >= 2:
                assert (s.shape[1] - (f > 0).sum(axis=1) < k).any()      # fewer than k candidates
    assert any(c.inputs()["k"] > c.inputs()["scores"].shape[1] for c in cases.cases_ndcg_at_k(rng, "tiny"))
    assert cases.TOL_METRICS["float64"]["recall"] == (0.0, 0.0)
