"""Demos of the safety_ensembles family, shortened runs: their files, and their claims
recomputed from the recorded series."""

import json

import numpy as np
import pytest

from finite_diff import fd_grad

# ------------------------------------------------------------------ antibody (DEMO-A)
ANTIBODY_SHORT = {"PRE_STEPS": 100, "ALIGN_STEPS": 80, "FT_STEPS": 60}


@pytest.fixture(scope="module")
def antibody_result(tmp_path_factory):
    pytest.importorskip("matplotlib", reason="the demo draws with matplotlib "
                                             "(pip install refimpl[demo])")
    from demo_run import shortened_run

    from refimpl.demos import antibody as demo

    return shortened_run(demo, ANTIBODY_SHORT, ("experiment",),
                         tmp_path_factory.mktemp("antibody"))


def test_antibody_demo_files_verdicts_and_series(antibody_result):
    from refimpl.demos import antibody as demo

    out, summary, captured = antibody_result
    assert (out / "antibody.png").stat().st_size > 20_000
    saved = json.loads((out / "antibody.json").read_text())
    assert saved == json.loads(json.dumps(summary))
    setup = saved["setup"]
    assert setup["align"]["steps"] == ANTIBODY_SHORT["ALIGN_STEPS"]
    assert setup["finetune"]["steps"] == ANTIBODY_SHORT["FT_STEPS"]
    assert "no paper number claimed" in saved["note"]

    # stage 1: the EMA recursion of lam_t from the recorded raw values, raw = eta - cos
    al = saved["align"]
    raw, lam = np.array(al["lam_raw"]), np.array(al["lam"])
    assert raw.size == lam.size == ANTIBODY_SHORT["ALIGN_STEPS"]
    m, eta = setup["align"]["momentum"], setup["align"]["eta"]
    ema = [raw[0]]
    for r in raw[1:]:
        ema.append(m * ema[-1] + (1 - m) * r)
    assert np.allclose(lam, ema, rtol=1e-12, atol=0)
    nn = np.array(al["norm_g_s"]) * np.array(al["norm_d"])
    assert np.allclose(raw, eta - np.array(al["cos_gs_d"]) * nn / (nn + 1e-8), rtol=1e-12,
                       atol=1e-12)                 # the cosine form with the code's 1e-8
    assert np.all((raw >= eta - 1 - 1e-12) & (raw <= eta + 1 + 1e-12))
    # alignment did raise the refusal on held-out harmful prompts
    assert al["eval"][-1]["logp_refuse_harmful"] > al["eval"][0]["logp_refuse_harmful"] + 0.5
    assert saved["aligned"] == al["eval"][-1]

    # stage-2 start: the weights are the per-batch softmax of (nll_r - nll_c) / tau
    st = saved["stage2_start"]
    batch, w = np.array(st["batch"]), np.array(st["w"])
    c, r, harm = np.array(st["nll_c"]), np.array(st["nll_r"]), np.array(st["is_harmful"])
    tau = setup["finetune"]["tau"]
    assert len(np.unique(batch)) == setup["finetune"]["n"] // setup["batch"]
    for k in np.unique(batch):
        s = (r[batch == k] - c[batch == k]) / tau
        e = np.exp(s - s.max())
        assert np.allclose(w[batch == k], e / e.sum(), rtol=1e-10, atol=1e-15)
    assert harm.any() and (~harm).any()
    mh, mb = w[harm].mean(), w[~harm].mean()
    assert st["mean_w_harmful"] == pytest.approx(mh, rel=1e-12)
    assert st["mean_w_benign"] == pytest.approx(mb, rel=1e-12)

    # stage 2: the final values are the last evaluations; plain weights are uniform
    ft = saved["finetune"]
    for name in ("plain", "antibody", "benign_only"):
        assert saved["final"][name] == ft[name]["eval"][-1]
        assert ft[name]["eval"][0] == saved["aligned"]
    assert all(x in (None, 1.0) for x in ft["plain"]["w_harmful"] + ft["plain"]["w_benign"])
    wh = [x for x in ft["antibody"]["w_harmful"] if x is not None]
    wb = [x for x in ft["antibody"]["w_benign"] if x is not None]
    assert np.mean(wh) < np.mean(wb)

    # the verdicts, recomputed, and the spec's pass criteria
    lp_plain = ft["plain"]["eval"][-1]["logp_refuse_harmful"]
    lp_anti = ft["antibody"]["eval"][-1]["logp_refuse_harmful"]
    v = saved["verdicts"]
    assert v["harmful_weight_below_half_benign"] == bool(mh < 0.5 * mb)
    assert v["weighted_keeps_more_refusal"] == bool(lp_anti > lp_plain)
    assert v["pass"] == (v["harmful_weight_below_half_benign"] and v["weighted_keeps_more_refusal"])
    assert mh < 0.5 * mb and lp_anti > lp_plain
    assert v["pass"] is True and saved["headline"]["pass"] is True
    # the recorded experiment is the one drawn and saved
    assert captured["experiment"]["start"]["w"] == st["w"]
    assert demo.verdicts_of(st, lp_plain, lp_anti) == v
    flipped = {**st, "mean_w_harmful": mb, "mean_w_benign": mh}
    assert demo.verdicts_of(flipped, lp_anti, lp_plain) == {
        "harmful_weight_below_half_benign": False, "weighted_keeps_more_refusal": False,
        "pass": False}


def test_antibody_demo_cli_prints_the_headline(antibody_result, tmp_path, monkeypatch, capsys):
    """``refimpl demo antibody`` runs the module and prints its headline (the experiment is
    the fixture's, replayed)."""
    from refimpl import cli
    from refimpl.demos import antibody as demo

    assert "antibody" in cli.DEMOS
    _, _, captured = antibody_result
    monkeypatch.setattr(demo, "experiment", lambda: captured["experiment"])
    for k, val in ANTIBODY_SHORT.items():
        monkeypatch.setattr(demo, k, val)
    assert cli.main(["demo", "antibody", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"wrote {tmp_path / 'antibody.png'}" in out
    saved = json.loads((tmp_path / "antibody.json").read_text())
    printed = json.loads(out[out.index("{"):])
    assert all(printed[k] == val for k, val in saved["headline"].items())
    assert printed["pass"] is True


def test_antibody_demo_gradient_matches_finite_differences():
    """The demo's loss and gradient (refimpl's head gradient, the body's chained by hand) on a
    tiny model against a loss written out here and its central differences (float64)."""
    from refimpl.demos import antibody as demo

    rng = np.random.default_rng(7)
    shp = demo.shapes(d_h=3, v_words=5, v_out=4)
    P = sum(int(np.prod(s)) for _, s in shp)
    theta = rng.normal(size=P)
    X = rng.uniform(0, 1, size=(6, 5))
    y = rng.integers(0, 4, size=6)
    w = rng.dirichlet(np.ones(6))

    def loss_here(th, w):
        E = th[:15].reshape(5, 3)
        cb = th[15:18]
        W = th[18:30].reshape(4, 3)
        b = th[30:34]
        Z = np.tanh(X @ E + cb) @ W.T + b
        ce = np.log(np.exp(Z).sum(1)) - Z[np.arange(6), y]
        return (w * ce).sum() / max(w.sum(), 1.0)

    assert P == 34
    for ww in (w, np.ones(6)):
        loss, g = demo.loss_grad(theta, X, y, ww, shp)
        assert loss == pytest.approx(loss_here(theta, ww), rel=1e-12)
        h = 1e-6
        fd = np.array([(loss_here(theta + h * e, ww) - loss_here(theta - h * e, ww)) / (2 * h)
                       for e in np.eye(P)])
        assert np.allclose(g, fd, rtol=1e-6, atol=1e-9), np.abs(g - fd).max()
    # the plain HF mean (w = 1) is the mean CE; the views' token means are the per-sample CE
    assert demo.loss_grad(theta, X, y, np.ones(6), shp)[0] == pytest.approx(
        np.mean([loss_here(theta, np.eye(6)[i]) for i in range(6)]), rel=1e-12)
    nll = demo.view_nll(theta, X, y, shp)
    assert np.allclose(nll, [loss_here(theta, np.eye(6)[i]) for i in range(6)], rtol=1e-12)


# ------------------------------------------------------------------ ibdr (DEMO-B)
# ``refimpl demo ibdr``: a shortened run, its files, and its claims recomputed
# here: the verdict from the saved cosine curves, the final cosine and ECE by hand from a
# re-trained run, lam replayed from the saved distances and LRs with the B.3 formula written
# out, and the heads' gradient chain (dlogits -> head weights) against finite differences.

IBDR_SHORT = {"EPOCHS": 6, "N_PER_CLASS": 60, "N_TEST_PER_CLASS": 60, "GRID": 40}


def _ibdr_cos_by_hand(F, y):
    K, n, _ = F.shape
    P = np.exp(F - F.max(2, keepdims=True))
    P /= P.sum(2, keepdims=True)
    tot, cnt = 0.0, 0
    for i in range(K):
        for j in range(i + 1, K):
            for b in range(n):
                qi, qj = np.delete(P[i, b], y[b]), np.delete(P[j, b], y[b])
                tot += qi @ qj / (np.linalg.norm(qi) * np.linalg.norm(qj))
                cnt += 1
    return tot / cnt


def _ibdr_ece_by_hand(probs, y, bins):
    n, ece = len(y), 0.0
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        sel = [i for i in range(n) if lo < probs[i].max() <= hi or (b == 0 and probs[i].max() == 0)]
        if sel:
            conf = np.mean([probs[i].max() for i in sel])
            acc = np.mean([probs[i].argmax() == y[i] for i in sel])
            ece += len(sel) / n * abs(acc - conf)
    return ece


def test_ibdr_demo_shortened_run(tmp_path, capsys):
    pytest.importorskip("matplotlib", reason="the demo draws with matplotlib "
                                             "(pip install refimpl[demo])")
    from demo_run import shortened_run

    from refimpl import cli
    from refimpl.demos import ibdr as demo

    out, summary, _ = shortened_run(demo, IBDR_SHORT, (), tmp_path / "ibdr")
    assert (out / "ibdr.png").stat().st_size > 20_000
    assert json.loads((out / "ibdr.json").read_text()) == json.loads(json.dumps(summary))
    lo, hi = f"alpha_div={min(demo.ALPHAS):g}", f"alpha_div={max(demo.ALPHAS):g}"
    curves, final = summary["curves"], summary["final"]
    # the verdict, recomputed from the saved per-epoch series
    for name, c in curves.items():
        assert c["epoch"] == list(range(IBDR_SHORT["EPOCHS"] + 1))
        for k in ("cos", "acc", "ece", "nll"):
            assert final[name][k] == c[k][-1]
    verdict = curves[hi]["cos"][-1] < curves[lo]["cos"][-1]
    assert summary["verdicts"]["pass"] is verdict is summary["pass"] is summary["headline"]["pass"]
    assert verdict, (curves[hi]["cos"][-1], curves[lo]["cos"][-1])
    # ECE from the saved reliability bins; every test point in a bin
    n_test = demo.C * IBDR_SHORT["N_TEST_PER_CLASS"]
    for name, r in summary["reliability"].items():
        assert sum(r["count"]) == n_test and len(r["count"]) == demo.ECE_BINS
        ece = sum(k / n_test * abs(a - c) for k, a, c in zip(r["count"], r["accuracy"],
                                                             r["confidence"]) if k)
        assert r["ece"] == pytest.approx(ece, abs=1e-12) and final[name]["ece"] == r["ece"]
    # lam replayed from the saved distances and LRs (spec B.3 step 4 written out)
    for a in demo.ALPHAS:
        c = curves[f"alpha_div={a:g}"]
        steps = IBDR_SHORT["EPOCHS"] * int(np.ceil(demo.C * IBDR_SHORT["N_PER_CLASS"] / demo.BATCH))
        assert len(c["lam"]) == len(c["d_raw"]) == len(c["lr"]) == steps
        assert max(c["lr"]) == pytest.approx(demo.LR) and min(c["lr"]) > 0
        lam = 3.0
        for d, lr in zip(c["d_raw"], c["lr"]):
            dt = float(np.exp(max(0.0, d - 0.03) / 0.01)) * d
            lam = min(max(lam - lr * (0.03 - dt), 0.5), 5.0)
        assert c["lam"][-1] == pytest.approx(lam, abs=1e-12)
        assert final[f"alpha_div={a:g}"]["lam_min"] == min(c["lam"]) >= 0.5
    # re-train the strongest-diversity run: same curves (seeded), cosine and ECE by hand
    with pytest.MonkeyPatch.context() as mp:
        for k, v in IBDR_SHORT.items():
            mp.setattr(demo, k, v)
        prob = demo.make_problem(demo.SEED)
        r = demo.train(prob, max(demo.ALPHAS), demo.batches(len(prob["ytr"]), demo.SEED))
        assert r["history"]["cos"] == curves[hi]["cos"] and r["lam"] == curves[hi]["lam"]
        F = demo.logits_of(r["theta"], prob["Zte"])
        assert _ibdr_cos_by_hand(F, prob["yte"]) == pytest.approx(final[hi]["cos"], rel=1e-10)
        Fb = F.mean(0)
        probs = np.exp(Fb - Fb.max(1, keepdims=True))
        probs /= probs.sum(1, keepdims=True)
        assert _ibdr_ece_by_hand(probs, prob["yte"], 15) == pytest.approx(final[hi]["ece"],
                                                                           abs=1e-12)
        assert np.mean(probs.argmax(1) == prob["yte"]) == final[hi]["acc"]
        # the CLI prints the headline with the verdict
        assert cli.main(["demo", "ibdr", "--out", str(tmp_path / "cli")]) == 0
    printed = capsys.readouterr().out
    assert json.loads(printed[printed.index("{"):])["pass"] is True


def test_ibdr_demo_head_gradient_matches_finite_differences():
    """``loss_and_grad``'s chain ``dW_k = dF_k^T Z`` (through ``ibdr_loss_grad``) against
    central differences of its own loss, on tiny instances: K = 3, C = 4 (full-rank Gram,
    h = 1e-6, rtol 1e-6) and the demo's K = 4, C = 3, where the K x K Gram of qh (C - 1 = 2
    dimensions) has rank 2 and the loss carries the rounding of logdet's two jitter-sized
    eigenvalues (~1e-10), so h = 1e-4 and a 1e-6 absolute tolerance (a wrong chain is off by
    ~0.1)."""
    from refimpl.demos import ibdr as demo

    rng = np.random.default_rng(7)
    for K, C, h, rtol, atol in ((3, 4, 1e-6, 1e-6, 1e-9), (4, 3, 1e-4, 1e-4, 1e-6)):
        theta = rng.normal(size=(K, C, 5))
        Z = rng.normal(size=(6, 5))
        y = rng.permutation(np.arange(6) % C)
        for alpha in (0.0, 0.15):
            _, g, Fbar = demo.loss_and_grad(theta, Z, y, alpha)
            assert np.allclose(Fbar, np.einsum("kcd,bd->bc", theta, Z) / K, rtol=1e-13)
            fd = fd_grad(lambda t: demo.loss_and_grad(t, Z, y, alpha)[0], theta, h)
            assert np.allclose(g, fd, rtol=rtol, atol=atol), (K, C, alpha, np.abs(g - fd).max())
            assert np.abs(g).max() > 1e-2
