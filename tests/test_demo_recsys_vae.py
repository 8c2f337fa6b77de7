"""``refimpl demo recsys-vae`` (spec recsys_vae.md, "Demo"), shortened: its files and JSON
structure, and its numbers recomputed here — the standard errors from the recorded per-user
and per-seed values, the popularity baseline from item counts taken here and a hand-written
ranking, the best-validation checkpoint by re-training up to the recorded best epoch, the
verdict from the recorded means, the verdict logic on constructed inputs, and the demo's Adam
against its closed form."""

import importlib.metadata
import json
import math

import numpy as np
import pytest

# small model, few epochs, two seeds, two lam_A: the real data and split are kept
SHORT = {"EPOCHS": 3, "SEEDS": (0, 1), "HIDDEN": 24, "LATENT": 6, "LAMBDAS": (0.1, 10.0)}


def _have_recbole() -> bool:
    try:
        importlib.metadata.distribution("recbole")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    pytest.importorskip("matplotlib", reason="the demo draws with matplotlib "
                                             "(pip install refimpl[demo])")
    if not _have_recbole():
        pytest.skip("ML-100k comes from the recbole wheel: pip install --no-deps recbole==1.2.1 "
                    "(expected recbole/dataset_example/ml-100k/ml-100k.inter)")
    from demo_run import shortened_run

    from refimpl.demos import recsys_vae as demo

    return shortened_run(demo, SHORT, ("load_split",), tmp_path_factory.mktemp("recsys_vae"))


def _se_by_hand(values):
    """``(mean, std_ddof0 / sqrt(n))`` over the non-None entries, written out."""
    v = [x for x in values if x is not None]
    n = len(v)
    m = sum(v) / n
    return m, math.sqrt(sum((x - m) ** 2 for x in v) / n) / math.sqrt(n)


def _ranked(scores_row, fold_row):
    """Item indices by descending score, fold-in items removed, ties to the lower index."""
    cand = [i for i in range(len(scores_row)) if not fold_row[i]]
    return sorted(cand, key=lambda i: (-scores_row[i], i))


def test_files_and_structure(result):
    from refimpl.demos import recsys_vae as demo

    out, summary, captured = result
    assert (out / "recsys_vae.png").stat().st_size > 20_000
    saved = json.loads((out / "recsys_vae.json").read_text())
    assert saved == json.loads(json.dumps(summary))
    setup = saved["setup"]
    split = captured["load_split"]
    n_train, n_items = split.train.shape
    assert setup["n_train_users"] == n_train == 738           # spec: 738 training users
    assert setup["n_items"] == n_items
    assert setup["n_vad_users"] == setup["n_test_users"] == 100
    assert setup["epochs"] == SHORT["EPOCHS"] and setup["epochs_reduced"] is True
    assert setup["seeds"] == list(SHORT["SEEDS"]) and setup["lambdas"] == list(SHORT["LAMBDAS"])
    assert setup["total_anneal_steps"] == 1000 and setup["batch"] == 100
    names = ["popularity", "Mult-VAE", "Mult-VAE bernoulli"] + [
        f"PIA lam_A={lam:g}" for lam in SHORT["LAMBDAS"]]
    assert list(saved["methods"]) == names
    updates = SHORT["EPOCHS"] * math.ceil(n_train / setup["batch"])
    for name in names[1:]:
        r = saved["methods"][name]
        assert [p["seed"] for p in r["per_seed"]] == list(SHORT["SEEDS"])
        for p in r["per_seed"]:
            curve = p["val_ndcg100"]
            assert len(curve) == len(p["train_loss"]) == SHORT["EPOCHS"]
            assert p["updates"] == updates
            assert p["best_val_ndcg100"] == max(curve)
            assert p["best_epoch"] == int(np.argmax(curve)) + 1     # first maximum, 1-based
            assert all(0 < v < 1 for v in curve)
        c = np.array([p["val_ndcg100"] for p in r["per_seed"]])
        assert np.allclose(r["val_ndcg100_mean"], c.mean(0), rtol=1e-14)
        assert np.allclose(r["val_ndcg100_std"], c.std(0), rtol=1e-12, atol=1e-15)
    assert saved["pass"] is saved["verdict"]["pass"] is saved["headline"]["pass"]
    assert set(saved["methods"]["PIA lam_A=0.1"]) >= {"lam_A", "mask_mode", "test"}
    assert saved["methods"]["Mult-VAE"]["mask_mode"] == "dropout"
    assert saved["methods"]["Mult-VAE bernoulli"]["mask_mode"] == "bernoulli"
    assert saved["methods"]["Mult-VAE bernoulli"]["lam_A"] == 0.0
    assert demo.METRICS == (("recall@20", 20), ("recall@50", 50), ("ndcg@100", 100))


def test_standard_errors_from_recorded_values(result):
    """Per seed: mean and ``std / sqrt(n)`` of the recorded per-user values; across seeds: the
    mean of the per-seed means, ``std(ddof=1) / sqrt(n_seeds)`` and the per-user SE of the
    seed-averaged values — all recomputed by hand."""
    _, summary, _ = result
    n_seeds = len(SHORT["SEEDS"])
    for name, r in summary["methods"].items():
        for metric in ("recall@20", "recall@50", "ndcg@100"):
            means = []
            for p in r["per_seed"]:
                users = p["test_per_user"][metric]
                assert len(users) == summary["setup"]["n_test_users"]
                m, se = _se_by_hand(users)
                assert p["test"][metric] == pytest.approx(m, rel=1e-12)
                assert p["test_se_users"][metric] == pytest.approx(se, rel=1e-9)
                means.append(m)
            mm = sum(means) / n_seeds
            se_seeds = math.sqrt(sum((x - mm) ** 2 for x in means) / (n_seeds - 1) / n_seeds)
            assert r["test"]["mean"][metric] == pytest.approx(mm, rel=1e-12)
            assert r["test"]["se_seeds"][metric] == pytest.approx(se_seeds, rel=1e-9, abs=1e-15)
            avg = [None if p0 is None else sum(p["test_per_user"][metric][i]
                                               for p in r["per_seed"]) / n_seeds
                   for i, p0 in enumerate(r["per_seed"][0]["test_per_user"][metric])]
            assert r["test_users_seed_mean"][metric] == pytest.approx(avg, rel=1e-12)
            m_avg, se_users = _se_by_hand(avg)
            assert m_avg == pytest.approx(mm, rel=1e-12)          # same users in every seed
            assert r["test"]["se_users"][metric] == pytest.approx(se_users, rel=1e-9)
            assert r["test"]["n_users"][metric] == sum(v is not None for v in avg)
        if name == "popularity":                                  # seed-independent
            assert r["test"]["se_seeds"]["ndcg@100"] == 0.0


def test_popularity_baseline_recomputed(result):
    """Item counts of the training users taken here; the reference metric functions and a
    hand-written NDCG@100 / Recall@20 (stable descending order, fold-in removed) agree with
    the recorded per-user values."""
    from refimpl.demos import recsys_vae as demo

    _, summary, captured = result
    split = captured["load_split"]
    train = split.train.tocsr()
    counts = np.bincount(train.indices, minlength=train.shape[1]).astype(float)
    assert np.array_equal(counts, np.asarray(train.sum(0)).ravel())   # binary CSR
    fold = np.asarray(split.test_fold.toarray()) > 0
    held = np.asarray(split.test_heldout.toarray()) > 0
    scores = np.broadcast_to(counts, fold.shape)
    rec = summary["methods"]["popularity"]["per_seed"][0]["test_per_user"]
    assert np.array_equal(demo.popularity_scores(split.train, fold.shape[0]), scores)
    for metric, fn, k in (("recall@20", demo.recall_at_k, 20), ("recall@50", demo.recall_at_k, 50),
                          ("ndcg@100", demo.ndcg_at_k, 100)):
        got = np.asarray(fn(scores, fold.astype(float), held.astype(float), k))
        assert np.array_equal(np.isnan(got), [v is None for v in rec[metric]])
        assert np.allclose(got[~np.isnan(got)], [v for v in rec[metric] if v is not None],
                           rtol=0, atol=1e-15)
    for u in range(fold.shape[0]):
        T = set(np.flatnonzero(held[u]))
        if not T:
            assert rec["ndcg@100"][u] is None
            continue
        order = _ranked(scores[u], fold[u])
        dcg = sum(1 / math.log2(r + 2) for r, i in enumerate(order[:100]) if i in T)
        idcg = sum(1 / math.log2(r + 2) for r in range(min(100, len(T))))
        assert rec["ndcg@100"][u] == pytest.approx(dcg / idcg, rel=1e-12)
        hits = sum(i in T for i in order[:20])
        assert rec["recall@20"][u] == pytest.approx(hits / min(20, len(T)), rel=1e-12)


def test_checkpoint_is_the_best_validation_epoch(result):
    """Re-train Mult-VAE and the strongest PIA for seed 0 for exactly the recorded best epoch:
    the validation curve is the recorded prefix (seeded, deterministic) and the final model's
    test metrics, computed here, are the recorded ones."""
    from refimpl.demos import recsys_vae as demo

    _, summary, captured = result
    split = captured["load_split"]
    fold = split.test_fold.toarray().astype(float)
    held = split.test_heldout.toarray().astype(float)
    with pytest.MonkeyPatch.context() as mp:
        for k, v in SHORT.items():
            mp.setattr(demo, k, v)
        for m in (demo.methods()[0], demo.methods()[-1]):
            rec = summary["methods"][m["name"]]["per_seed"][0]
            mp.setattr(demo, "EPOCHS", rec["best_epoch"])
            r = demo.train(split, m, 0)
            assert r["val_ndcg100"] == rec["val_ndcg100"][:rec["best_epoch"]]
            logits = demo.multvae_forward(fold, r["params"])[0]
            nd = demo.ndcg_at_k(logits, fold, held, 100)
            assert np.allclose(nd[~np.isnan(nd)],
                               [v for v in rec["test_per_user"]["ndcg@100"] if v is not None],
                               rtol=1e-12, atol=0)


def test_verdict_recomputed_from_recorded_means(result):
    _, summary, _ = result
    v, R = summary["verdict"], summary["methods"]
    mv, pop = R["Mult-VAE"]["test"], R["popularity"]["test"]
    se = mv["se_users"]["ndcg@100"]
    margin = mv["mean"]["ndcg@100"] - pop["mean"]["ndcg@100"]
    assert v["mult_vae_minus_popularity"] == pytest.approx(margin, rel=1e-12)
    assert v["mult_vae_beats_popularity"] == (margin > 0)
    assert v["margin_in_se"] == pytest.approx(margin / se, rel=1e-12)
    for lam in SHORT["LAMBDAS"]:
        d = R[f"PIA lam_A={lam:g}"]["test"]["mean"]["ndcg@100"] - mv["mean"]["ndcg@100"]
        p = v["pia"][f"{lam:g}"]
        assert p["minus_mult_vae"] == pytest.approx(d, rel=1e-12, abs=1e-15)
        assert p["within_one_se"] == (abs(d) <= se)
        assert p["status"] == ("within one standard error" if abs(d) <= se else
                               "better by more than one standard error" if d > 0 else
                               "worse by more than one standard error")
    best = max(SHORT["LAMBDAS"], key=lambda lam: np.mean(
        [p["best_val_ndcg100"] for p in R[f"PIA lam_A={lam:g}"]["per_seed"]]))
    assert v["lam_A_selected_on_validation"] == best
    assert v["pia_does_not_hurt"] == (v["pia"][f"{best:g}"]["minus_mult_vae"] >= -se)
    assert v["pass"] == (v["mult_vae_beats_popularity"] and v["pia_does_not_hurt"])


def _fake(mean, se, best_val=None, users=None):
    t = {"mean": {"ndcg@100": mean}, "se_users": {"ndcg@100": se},
         "se_seeds": {"ndcg@100": se / 2}}
    return {"test": t, "best_val_ndcg100_mean": best_val,
            "test_users_seed_mean": {"ndcg@100": users if users is not None else [mean] * 4}}


def test_verdict_logic_on_constructed_results():
    """Each branch: Mult-VAE above / below popularity; PIA better, within, worse by more than
    one SE; the lam_A chosen by validation (not by test) decides ``pia_does_not_hurt``."""
    from refimpl.demos.recsys_vae import verdict_of

    # dyadic numbers: every difference and ratio below is exact in binary floating point
    users_mv = [0.375, 0.5, 0.625, 0.5]                  # mean 0.5
    res = {"popularity": _fake(0.375, 0.0, users=[0.3125, 0.375, 0.5, 0.3125]),
           "Mult-VAE": _fake(0.5, 0.0625, users=users_mv),
           "PIA lam_A=0.1": _fake(0.53125, 0.0625, best_val=0.5),
           "PIA lam_A=1": _fake(0.625, 0.0625, best_val=0.375),
           "PIA lam_A=10": _fake(0.25, 0.0625, best_val=0.25)}
    v = verdict_of(res, lambdas=(0.1, 1, 10))
    assert v["mult_vae_beats_popularity"] is True
    assert v["margin_in_se"] == 2.0
    # paired SE: per-user differences 1/16, 1/8, 1/8, 3/16 -> std (1/16) / sqrt(2), / sqrt(4)
    assert v["margin_in_paired_se"] == pytest.approx(4 * math.sqrt(2), rel=1e-12)
    assert v["pia"]["0.1"]["status"] == "within one standard error"
    assert v["pia"]["0.1"]["within_one_se"] is True
    assert v["pia"]["1"]["status"] == "better by more than one standard error"
    assert v["pia"]["10"]["status"] == "worse by more than one standard error"
    assert v["pia"]["10"]["diff_in_se"] == -4.0
    assert v["lam_A_selected_on_validation"] == 0.1       # best validation, not best test (1)
    assert v["pia_does_not_hurt"] is True and v["pass"] is True
    # validation picks the lam_A that is worse on test -> PIA hurts -> no pass
    res["PIA lam_A=10"]["best_val_ndcg100_mean"] = 0.875
    v = verdict_of(res, lambdas=(0.1, 1, 10))
    assert v["lam_A_selected_on_validation"] == 10
    assert v["pia_does_not_hurt"] is False and v["pass"] is False
    # exactly one SE below counts as within (<=), and Mult-VAE below popularity fails
    res["PIA lam_A=10"] = _fake(0.4375, 0.0625, best_val=0.875)
    res["popularity"] = _fake(0.5625, 0.0)
    v = verdict_of(res, lambdas=(0.1, 1, 10))
    assert v["pia"]["10"]["status"] == "within one standard error"
    assert v["pia"]["10"]["diff_in_se"] == -1.0
    assert v["pia_does_not_hurt"] is True
    assert v["mult_vae_beats_popularity"] is False and v["pass"] is False
    assert v["mult_vae_minus_popularity"] == -0.0625


def test_adam_matches_closed_form():
    """TensorFlow's Adam: the first step is ``-lr g / (|g| + eps / sqrt(1 - b2))`` exactly
    (m = (1-b1) g, v = (1-b2) g^2, lr_1 = lr sqrt(1-b2) / (1-b1)); the second step from the
    recursions written out with scalars."""
    from refimpl.demos.recsys_vae import Adam

    rng = np.random.default_rng(3)
    p0 = {"a": rng.normal(size=(3, 4)), "b": rng.normal(size=5)}
    g1 = {k: rng.normal(size=v.shape) * 10.0 ** rng.integers(-9, 2, size=v.shape)
          for k, v in p0.items()}
    g2 = {k: rng.normal(size=v.shape) for k, v in p0.items()}
    lr, b1, b2, eps = 1e-3, 0.9, 0.999, 1e-8
    p = {k: v.copy() for k, v in p0.items()}
    opt = Adam(p, lr=lr)
    opt.step(p, g1)
    for k, val in p.items():
        step1 = -lr * g1[k] / (np.abs(g1[k]) + eps / math.sqrt(1 - b2))
        assert np.allclose(val - p0[k], step1, rtol=1e-9, atol=1e-18)
    opt.step(p, g2)
    for k, val in p.items():
        for idx in np.ndindex(val.shape):
            x, a, b = p0[k][idx], g1[k][idx], g2[k][idx]
            m = v = 0.0
            for t, g in ((1, a), (2, b)):
                m = b1 * m + (1 - b1) * g
                v = b2 * v + (1 - b2) * g * g
                x -= lr * math.sqrt(1 - b2 ** t) / (1 - b1 ** t) * m / (math.sqrt(v) + eps)
            assert val[idx] == pytest.approx(x, rel=1e-12, abs=1e-15)


def test_cli_prints_the_headline(result, tmp_path, monkeypatch, capsys):
    """``refimpl demo recsys-vae`` dispatches to this module and prints its headline (the
    run itself is the fixture's, replayed)."""
    from refimpl import cli
    from refimpl.demos import recsys_vae as demo

    assert "recsys-vae" in cli.DEMOS
    _, summary, _ = result
    monkeypatch.setattr(demo, "run", lambda out: summary)
    assert cli.main(["demo", "recsys-vae", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"wrote {tmp_path / 'recsys_vae.png'}" in out
    printed = json.loads(out[out.index("{"):])
    assert all(printed[k] == v for k, v in summary["headline"].items())
    assert printed["pass"] is summary["pass"]
