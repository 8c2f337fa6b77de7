"""``refimpl demo cross-tokenizer``: a shortened run, its files, and its claims checked against
computations made here (overlap mass from E and the offsets, spans from common token ends,
the DWA-KD parts' arithmetic, the CTPD chain rule against finite differences)."""

import itertools
import json

import numpy as np
import pytest

pytest.importorskip("tokenizers", reason="the demo trains BPE tokenizers with `tokenizers` "
                                         "(pip install refimpl[demo])")
pytest.importorskip("matplotlib",
                    reason="the demo draws with matplotlib (pip install refimpl[demo])")

from refimpl.demos import cross_tokenizer as demo

STEPS = 200


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    out = tmp_path_factory.mktemp("cross_tokenizer")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(demo, "STEPS", STEPS)
        summary = demo.run(out)
    return out, summary


def common_ends(off_a, off_b, n):
    """Span boundaries computed here: 0, n and every end shared by both tokenisations."""
    return sorted({0, n} | ({int(b) for _, b in off_a} & {int(b) for _, b in off_b}))


def test_files_and_verdicts(result):
    out, summary = result
    assert (out / "cross_tokenizer.png").stat().st_size > 20_000
    assert json.loads((out / "cross_tokenizer.json").read_text()) == json.loads(json.dumps(summary))
    v = summary["verdicts"]
    assert v["pass"], v
    for key in ("soft_dtw_mass_on_overlapping_pairs_ge_85pct", "ctpd_loss_decreases",
                "ctpd_eval_accuracy_increases", "spans_tile_every_text", "every_token_in_a_span",
                "official_equals_ends_on_contiguous_offsets", "whitespace_official_collapses",
                "whitespace_ends_keeps_every_word_boundary", "dwa_kd_finite"):
        assert v[key] is True, key
    assert summary["headline"]["pass"] is True
    assert summary["setup"]["vocab"] == {"student": demo.VOCAB_STUDENT,
                                         "teacher": demo.VOCAB_TEACHER,
                                         "whitespace": demo.VOCAB_WHITESPACE}


def test_data_is_generated_offline_and_held_out():
    corpus, chosen, rejected = demo.make_data()
    assert len(corpus) > 0.99 * demo.N_CORPUS and len(chosen) == demo.PAIRS + demo.EVAL_PAIRS
    assert not (set(chosen) | {demo.SHOWN}) & set(corpus)
    assert all(text.isascii() for text in corpus + chosen + rejected)
    for c, r in zip(chosen, rejected):
        assert c != r and sorted(c[:-1].split()) == sorted(r[:-1].split())
    assert demo.make_data() == (corpus, chosen, rejected)                 # fixed seed


def test_shown_sentence_spans(result):
    """The spans are the common-end partition computed here; they tile the text; each token
    lies inside its span and every span is exactly covered by its tokens under both
    tokenisations."""
    _, summary = result
    shown = summary["shown"]
    n = len(shown["text"])
    off_s, off_t = np.array(shown["student_offsets"]), np.array(shown["teacher_offsets"])
    spans = np.array(shown["spans"])
    for off in (off_s, off_t):                    # byte-level BPE: contiguous offsets over [0, n)
        assert off[0, 0] == 0 and off[-1, 1] == n and np.all(off[1:, 0] == off[:-1, 1])
    bounds = common_ends(off_s, off_t, n)
    assert spans.tolist() == [list(p) for p in itertools.pairwise(bounds)]
    for off, seg in ((off_s, shown["seg_s"]), (off_t, shown["seg_t"])):
        seg = np.asarray(seg)
        assert np.all(np.diff(seg) >= 0) and set(seg.tolist()) == set(range(len(spans)))
        for r, (a, b) in enumerate(spans):
            members = off[seg == r]
            assert members[0, 0] == a and members[-1, 1] == b
    assert len(spans) < min(len(off_s), len(off_t)) + 1


def test_whitespace_collapse_and_repair(result):
    """Gapped Whitespace offsets: the official rule loses the word boundaries, ``"ends"`` with
    normalised offsets gives the common-end partition of the gap-closed offsets."""
    _, summary = result
    shown = summary["shown"]
    text, n = shown["text"], len(shown["text"])
    off_w, off_t = np.array(shown["whitespace_offsets"]), np.array(shown["teacher_offsets"])
    assert np.any(off_w[1:, 0] > off_w[:-1, 1])                          # gaps at the spaces
    closed = off_w.copy()
    closed[1:, 0] = off_w[:-1, 1]
    bounds = common_ends(closed, off_t, n)
    ends = np.array(shown["whitespace_ends_spans"])
    assert ends.tolist() == [list(p) for p in itertools.pairwise(bounds)]
    spaces = [i for i, c in enumerate(text) if c == " "]
    assert set(spaces) <= set(bounds)                                     # every word boundary
    official = np.array(shown["whitespace_official_spans"])
    assert len(official) < len(spaces) + 1                                # fewer spans than words
    assert not set(spaces) <= set(official.ravel().tolist())


def test_soft_dtw_mass_on_overlapping_pairs(result):
    """The overlap share recomputed from E and the offsets (character sets per token)."""
    _, summary = result
    shown, sd = summary["shown"], summary["soft_dtw"]
    E = np.array(sd["E"])
    chars_s = [set(range(a, b)) for a, b in shown["student_offsets"]]
    chars_t = [set(range(a, b)) for a, b in shown["teacher_offsets"]]
    overlap = np.array([[bool(cs & ct) for ct in chars_t] for cs in chars_s])
    assert E.shape == overlap.shape
    assert np.array_equal(overlap, np.array(sd["overlap"]))
    assert np.all(E >= -1e-12) and E[0, 0] == pytest.approx(1.0) and E[-1, -1] == pytest.approx(1.0)
    mass = float((E * overlap).sum() / E.sum())
    assert mass == pytest.approx(sd["overlap_mass"], rel=1e-12)
    assert mass >= demo.OVERLAP_PASS
    masses = np.array(sd["eval_overlap_masses"])
    assert masses.mean() == pytest.approx(summary["verdicts"]["overlap_mass_eval_mean"])
    P = np.array(sd["band_penalty"])
    assert set(np.unique(P).tolist()) <= {0.0, 1.0}
    assert float((E * (P == 0)).sum() / E.sum()) == pytest.approx(sd["band_mass"], rel=1e-12)


def test_ctpd_curves(result):
    _, summary = result
    c = summary["curves"]["ctpd"]
    assert c["step"][0] == 0 and c["step"][-1] == STEPS
    assert c["loss"][-1] < c["loss"][0] and c["eval_loss"][-1] < c["eval_loss"][0]
    assert c["eval_reward_accuracy"][-1] > c["eval_reward_accuracy"][0]
    assert summary["verdicts"]["ctpd_eval_reward_accuracy_start_end"] == [
        c["eval_reward_accuracy"][0], c["eval_reward_accuracy"][-1]]
    d = summary["curves"]["dpo"]
    assert d["loss"][0] == pytest.approx(np.log(2), rel=1e-12)           # policy = reference
    assert d["eval_reward_accuracy"][0] == 0.0                            # all rewards tie at 0
    w = summary["span_weights_pair0"]
    assert all(0.61 <= x <= 4.49 for x in w["chosen"])              # k exp(+clip(., -.5, 1.5))
    assert all(0.22 <= x <= 1.65 for x in w["rejected"])                  # k exp(-clip(.))


def test_ctpd_gradient_is_the_chain_rule():
    """The demo's CTPD (and DPO) gradient w.r.t. the bigram logits against central finite
    differences of the loss, on a small pair set."""
    ct = demo.api()
    corpus, chosen, rejected = demo.make_data()
    tok = demo.train_tokenizers(corpus)
    s = demo.ctpd_setup(tok, chosen, rejected, corpus, ct)
    Z0 = s["models"]["student"]
    assert np.allclose(np.exp(Z0).sum(axis=1), 1.0)                      # bigram rows normalised
    rng = np.random.default_rng(0)
    Z = Z0 + 0.3 * rng.normal(size=Z0.shape)
    ps = s["train"]
    ref = ps["bs"].token_logps(Z0).sum(axis=1)
    for method in ("ctpd", "dpo"):
        _, _, d_lp = demo.objective(method, Z, ps, ref, ct)
        G = ps["bs"].logits_grad(Z, d_lp)
        D = rng.normal(size=Z.shape)
        h = 1e-6
        fd = (demo.objective(method, Z + h * D, ps, ref, ct, need_grad=False)[0]
              - demo.objective(method, Z - h * D, ps, ref, ct, need_grad=False)[0]) / (2 * h)
        assert abs(fd - (G * D).sum()) <= 1e-6 * max(1.0, abs(fd)), method


def test_dwa_kd_parts(result):
    """The reported DWA-KD parts recombine into the loss (rates 0.5, 0.5, 0.2 over n_tok); the
    gate warm-up scales the t2s KD term by exactly 300 between steps 0 and 300; the DSKD
    variant and the positions rule change only their own terms."""
    _, summary = result
    dwa = summary["dwa_kd"]
    for key in ("dwa_step0", "dwa_step300", "dwa_step300_positions_prefix", "dskd_step300"):
        p = dwa[key]
        assert all(np.isfinite(x) for x in p.values())
        assert p["kd"] == pytest.approx(p["t2s_ce"] + p["t2s_kd"] + p["s2t_kd"], rel=1e-12)
        assert p["dtw"] == pytest.approx(p["dtw_emb"] + p["dtw_hid"], rel=1e-12)
        assert p["loss"] == pytest.approx((0.5 * p["ce"] + 0.5 * p["kd"] + 0.2 * p["dtw"])
                                          / p["n_tok"], rel=1e-12)
        assert p["n_tok"] == dwa["setup"]["student_targets"]
    s0, s300 = dwa["dwa_step0"], dwa["dwa_step300"]
    assert s300["t2s_kd"] == pytest.approx(300 * s0["t2s_kd"], rel=1e-10)
    assert s300["ce"] == s0["ce"] and s300["s2t_kd"] == s0["s2t_kd"]
    assert s300["gamma"] < s0["gamma"]
    prefix = dwa["dwa_step300_positions_prefix"]
    assert prefix["kd"] == s300["kd"] and prefix["dtw"] != s300["dtw"]   # there is a prompt
    dskd = dwa["dskd_step300"]
    assert dskd["ce"] == s300["ce"] and dskd["dtw"] == s300["dtw"]


def test_cli_maps_the_hyphenated_name_and_prints_the_headline(tmp_path, monkeypatch, capsys):
    """``refimpl demo cross-tokenizer`` runs ``refimpl.demos.cross_tokenizer``, writes
    ``cross_tokenizer.{png,json}`` and prints the JSON's headline values."""
    from refimpl import cli

    monkeypatch.setattr(demo, "STEPS", 20)
    assert cli.main(["demo", "cross-tokenizer", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"wrote {tmp_path / 'cross_tokenizer.png'}" in out
    saved = json.loads((tmp_path / "cross_tokenizer.json").read_text())
    printed = json.loads(out[out.index("{"):])
    assert saved["headline"] and all(printed[k] == v for k, v in saved["headline"].items())
    assert printed["pass"] == saved["verdicts"]["pass"]
