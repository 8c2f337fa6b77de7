"""``refimpl demo clip-uda-ot`` (spec clip_uda_ot.md, "Demo"; CRPL, arXiv 2506.11493), shortened:
its files and JSON structure; the synthetic domains against their definition (orthogonal
rotations turning every vector by exactly theta_d, offsets of the chosen norm); the zero-shot
and oracle accuracies recomputed by hand; a re-trained CRPL run reproducing the recorded curve,
with its final L_W recomputed by POT's exact ``ot.emd2``; the curve statistics from the recorded
per-seed values; the verdict logic on constructed inputs; the demo's Adam against its closed
form; the CLI."""

import json
import math

import numpy as np
import pytest

# 2 seeds, 20 steps, 9 images per class and domain (target = 90 = 3 batches); the rest as the demo
SHORT = {"SEEDS": (0, 1), "STEPS": 20, "EVAL_EVERY": 10, "AVG_FROM": 10, "N_PER_CLASS": 9}


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    pytest.importorskip("matplotlib", reason="the demo draws with matplotlib "
                                             "(pip install refimpl[demo])")
    from demo_run import shortened_run

    from refimpl.demos import clip_uda_ot as demo

    return shortened_run(demo, SHORT, ("make_data",), tmp_path_factory.mktemp("clip_uda_ot"))


def test_files_and_structure(result):
    from refimpl.demos import clip_uda_ot as demo

    out, summary, _ = result
    assert (out / "clip_uda_ot.png").stat().st_size > 20_000
    saved = json.loads((out / "clip_uda_ot.json").read_text())
    assert saved == json.loads(json.dumps(summary))
    st = saved["setup"]
    assert (st["K"], st["D"], st["n_sources"], st["batch"]) == (10, 64, 2, 30)
    assert st["optimizer"]["lr"] == 5e-3 and st["scale"] == 100.0 and st["gamma"] == 10.0
    assert st["lam_W"] == st["lam_T"] == 0.5 and st["threshold"] == 0.4
    assert st["seeds"] == [0, 1] and st["steps"] == 20
    assert st["eval_steps"] == [0, 10, 20]
    assert st["n_target"] == 90 and st["n_target"] % st["batch"] == 0    # "code" == "exact"
    assert list(saved["variants"]) == ["zero-shot", "SPL", "CRPL", "CLIP-PL + L_W"]
    assert saved["variants"]["SPL"]["config"] == {"target": "reference", "use_ot": False}
    assert saved["variants"]["CLIP-PL + L_W"]["config"] == {"target": "clip", "use_ot": True}
    for v, r in saved["variants"].items():
        assert [p["seed"] for p in r["per_seed"]] == [0, 1]
        c = np.array([p["acc_curve"] for p in r["per_seed"]])
        assert c.shape == (2, 3) and np.all((0 <= c) & (c <= 1))
        assert np.allclose(r["acc_mean"], c.mean(0), rtol=1e-14)
        assert np.allclose(r["acc_std"], c.std(0), rtol=1e-12, atol=1e-15)
        assert r["final_acc_mean"] == pytest.approx(c[:, -1].mean(), rel=1e-14)
        for p in r["per_seed"]:
            assert p["acc"] == p["acc_curve"][-1]
            # an optimal vertex of the 90 x 10 transport polytope: <= N + K - 1 non-zeros, and
            # every image (row mass 1/N) has at least one
            assert 90 <= p["plan_nnz"] <= p["plan_vertex_bound"] == 99 and p["plan_size"] == 900
            assert 0 <= p["L_W"] <= 2                                    # cost 1 - cos in [0, 2]
            if v == "zero-shot":
                assert len(set(p["acc_curve"])) == 1 and p["final_L_src"] is None
            else:
                assert p["final_L_src"] > 0 and "reference_label_acc" in p
        zero = [p["acc_curve"][0] for p in r["per_seed"]]                # all start at T_base
        assert zero == [p["acc"] for p in saved["variants"]["zero-shot"]["per_seed"]]
    assert saved["pass"] is saved["verdict"]["pass"] is saved["headline"]["pass"]
    assert demo.VARIANTS["CRPL"] == {"target": "reference", "use_ot": True}


def test_synthetic_domains_match_their_definition(result):
    """``R_d`` orthogonal with ``cos(x, R_d x) = cos theta_d`` for ANY x, offsets of norm
    OFFSET[d], unit T_base and z, ``z = u / ||u||``, balanced classes; zero-shot and the
    class-mean oracle recomputed by hand for the captured (last) seed."""
    from refimpl.demos import clip_uda_ot as demo

    _, summary, captured = result
    data = captured["make_data"]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 64))
    for R, th, off in zip(data["R"], demo.THETA_DEG, data["o"]):
        assert np.allclose(R @ R.T, np.eye(64), atol=1e-12)
        c = np.sum((x @ R.T) * x, 1) / np.sum(x * x, 1)
        assert np.allclose(c, math.cos(math.radians(th)), atol=1e-12)
    assert np.allclose(np.linalg.norm(data["o"], axis=1), demo.OFFSET, rtol=1e-12)
    assert max(demo.THETA_DEG) == demo.THETA_DEG[-1]                      # target rotated most
    for a in ("T_base", "z_src", "z_tgt", "mu"):
        assert np.allclose(np.linalg.norm(data[a], axis=1), 1, atol=1e-12)
    assert np.allclose(data["z_tgt"] * np.linalg.norm(data["u_tgt"], axis=1)[:, None],
                       data["u_tgt"], atol=1e-12)
    assert np.array_equal(np.bincount(data["y_tgt"]), [9] * 10)
    assert np.array_equal(np.bincount(data["dom_src"]), [90, 90])
    seed = summary["setup"]["seeds"][-1]
    # the same seed regenerates the same data
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(demo, "N_PER_CLASS", SHORT["N_PER_CLASS"])
        again = demo.make_data(seed)
    assert all(np.array_equal(again[k], data[k]) for k in data)
    z, y = data["z_tgt"], data["y_tgt"]
    zs = sum(int(np.argmax([z[i] @ t for t in data["T_base"]]) == y[i]) for i in range(len(y))) / len(y)
    rec = summary["variants"]["zero-shot"]["per_seed"][-1]
    assert rec["acc"] == pytest.approx(zs, rel=1e-14)
    cent = np.stack([z[y == k].sum(0) for k in range(10)])
    cent /= np.linalg.norm(cent, axis=1, keepdims=True)
    oracle = np.mean(np.argmax(z @ cent.T, 1) == y)
    assert summary["setting_per_seed"][-1]["oracle_acc"] == pytest.approx(oracle, rel=1e-14)
    assert summary["setting_per_seed"][-1]["mean_cos_mu_R_mu"] == pytest.approx(
        [math.cos(math.radians(t)) for t in demo.THETA_DEG], rel=1e-12)


def test_batches_are_domain_balanced(result):
    from refimpl.demos import clip_uda_ot as demo

    sched = demo.batch_schedule(0, 90, 90, 5)
    for src, tgt in sched:
        assert len(src) == len(tgt) == 30
        assert len(set(src[:15])) == 15 and all(0 <= i < 90 for i in src[:15])
        assert len(set(src[15:])) == 15 and all(90 <= i < 180 for i in src[15:])
        assert len(set(tgt)) == 30


def test_crpl_run_reproduced_and_L_W_by_pot(result):
    """Re-train CRPL for the captured seed: the same curve (seeded, deterministic); the final
    full-target L_W recomputed by POT's exact ``ot.emd2`` on ``C = 1 - z T_T^T`` with uniform
    marginals, and the P*-weighted centroids as weighted means (column mass 1/K)."""
    ot = pytest.importorskip("ot")
    from refimpl.demos import clip_uda_ot as demo

    _, summary, captured = result
    data = captured["make_data"]
    seed = summary["setup"]["seeds"][-1]
    with pytest.MonkeyPatch.context() as mp:
        for k, v in SHORT.items():
            mp.setattr(demo, k, v)
        r = demo.train(data, "CRPL", seed)
    rec = summary["variants"]["CRPL"]["per_seed"][-1]
    assert r["acc"] == rec["acc_curve"]
    assert r["loss"]["L_src"][-1] == rec["final_L_src"]
    T = r["T_T"]
    assert np.allclose(np.linalg.norm(T, axis=1), 1, atol=1e-12)          # re-normalised
    z = data["z_tgt"]
    n = len(z)
    C = 1.0 - z @ T.T
    L_pot = ot.emd2(np.full(n, 1 / n), np.full(10, 0.1), C, numItermax=500000)
    assert rec["L_W"] == pytest.approx(float(L_pot), abs=1e-10)
    P = ot.emd(np.full(n, 1 / n), np.full(10, 0.1), C, numItermax=500000)
    cent = 10 * P.T @ z
    for k in range(10):
        w = P[:, k] / P[:, k].sum()
        assert np.allclose(cent[k], w @ z, atol=1e-12)
    # moving each t_T,k to its normalised P*-weighted centroid does not increase L_W
    T2 = cent / np.linalg.norm(cent, axis=1, keepdims=True)
    assert ot.emd2(np.full(n, 1 / n), np.full(10, 0.1), 1.0 - z @ T2.T) <= L_pot + 1e-12
    # the loss parts recorded per step: L = L_src + 0.5 L_W + 0.5 L_T
    L, parts = np.array(r["loss"]["L"]), {k: np.array(r["loss"][k]) for k in ("L_src", "L_W", "L_T")}
    assert np.allclose(L, parts["L_src"] + 0.5 * parts["L_W"] + 0.5 * parts["L_T"], rtol=1e-12)
    assert np.all(parts["L_W"] > 0)


def test_verdict_logic_on_constructed_results():
    from refimpl.demos.clip_uda_ot import verdict_of

    acc = {"zero-shot": [0.5, 0.75, 0.625], "SPL": [0.625, 0.75, 0.75],
           "CRPL": [0.75, 0.875, 0.75], "CLIP-PL + L_W": [0.25, 1.0, 0.5]}
    v = verdict_of(acc)
    assert v["pass"] is True and v["crpl_above_zero_shot_every_seed"] is True
    assert v["crpl_minus_zero_shot_per_seed"] == [0.25, 0.125, 0.125]
    assert v["spl_above_zero_shot_every_seed"] is False                   # tie on seed 1
    assert v["crpl_minus_spl_mean"] == pytest.approx(0.25 / 3, rel=1e-15)
    assert v["crpl_above_spl_seeds"] == 2
    assert v["clip_pl_lw_below_zero_shot_seeds"] == 2
    assert v["clip_pl_lw_minus_zero_shot_mean"] == pytest.approx(-0.125 / 3, rel=1e-15)
    acc["CRPL"][1] = 0.75                                                 # a tie is not "above"
    v = verdict_of(acc)
    assert v["pass"] is False and v["crpl_minus_zero_shot_per_seed"][1] == 0.0


def test_adam_matches_closed_form():
    """torch's Adam: first step ``-lr g / (|g| + eps)`` (bias-corrected m = g, v = g^2); the
    second step from the recursions written out with scalars."""
    from refimpl.demos.clip_uda_ot import Adam

    rng = np.random.default_rng(3)
    p0 = {"a": rng.normal(size=(3, 4))}
    g1 = {"a": rng.normal(size=(3, 4)) * 10.0 ** rng.integers(-9, 2, size=(3, 4))}
    g2 = {"a": rng.normal(size=(3, 4))}
    lr, b1, b2, eps = 5e-3, 0.9, 0.999, 1e-8
    p = {"a": p0["a"].copy()}
    opt = Adam(p)
    opt.step(p, g1)
    assert np.allclose(p["a"] - p0["a"], -lr * g1["a"] / (np.abs(g1["a"]) + eps),
                       rtol=1e-9, atol=1e-18)
    opt.step(p, g2)
    for idx in np.ndindex(3, 4):
        x, m, v = p0["a"][idx], 0.0, 0.0
        for t, g in ((1, g1["a"][idx]), (2, g2["a"][idx])):
            m = b1 * m + (1 - b1) * g
            v = b2 * v + (1 - b2) * g * g
            x -= lr * (m / (1 - b1 ** t)) / (math.sqrt(v / (1 - b2 ** t)) + eps)
        assert p["a"][idx] == pytest.approx(x, rel=1e-12, abs=1e-15)


def test_cli_prints_the_headline(result, tmp_path, monkeypatch, capsys):
    from refimpl import cli
    from refimpl.demos import clip_uda_ot as demo

    assert "clip-uda-ot" in cli.DEMOS
    _, summary, _ = result
    monkeypatch.setattr(demo, "run", lambda out: summary)
    assert cli.main(["demo", "clip-uda-ot", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"wrote {tmp_path / 'clip_uda_ot.png'}" in out
    printed = json.loads(out[out.index("{"):])
    assert all(printed[k] == v for k, v in summary["headline"].items())
    assert printed["pass"] is summary["pass"]
