"""Reference tests of Antibody (safety_ensembles.md Part A, acceptance 1-5): sample weights and
the HF token mean, the weighted token CE and its gradient (finite differences, chunked ==
dense, ignored positions, paper variant, all-ignored batch), lambda and its EMA, the Booster
special case, the harmful perturbation, an independent torch transcription of the official
code as an oracle, the registry cases, and argument errors."""

import numpy as np
import pytest
from scipy.special import log_softmax

from finite_diff import central, fd_grad
from refimpl import _antibody as A
from refimpl._cases import safety_ensembles as C

IGN = -100


def head(B=3, T=6, d=5, V=7, bias=True, seed=0, empty_row=None):
    rng = np.random.default_rng(seed)
    H, W, b, labels = C.token_inputs(rng, B, T, d, V, bias=bias, empty_row=empty_row)
    labels[:, 0] = IGN                                  # >= 1 ignored position per row
    for r in range(B):
        if r != empty_row:
            labels[r, 1] = rng.integers(0, V)           # >= 1 completion token per row
    w = C._ab_w(rng, B)
    return dict(H=H, W=W, labels=labels, b=b), w


def dense_ce(H, W, labels, b=None, ignore_index=IGN):
    """Dense per-token CE (B, T) (0 at ignored positions) and the mask, with scipy."""
    Z = H @ W.T + (0 if b is None else b)
    m = labels != ignore_index
    y = np.where(m, labels, 0)
    ce = -np.take_along_axis(log_softmax(Z, axis=-1), y[..., None], axis=-1)[..., 0]
    return ce * m, m


# --------------------------------------------------------------------------- 1. weights


def test_equal_scores_give_uniform_weights_and_the_hf_token_mean():
    kw, _ = head(B=4, seed=1)
    B = 4
    rng = np.random.default_rng(3)
    c = rng.uniform(1, 3, B)
    w_eq = A.antibody_weights(c, c.copy())
    np.testing.assert_array_equal(w_eq, np.full(B, 1 / B))
    w_big = A.antibody_weights(c, rng.uniform(1, 3, B), tau=1e12)
    np.testing.assert_allclose(w_big, 1 / B, rtol=1e-12, atol=0)
    ce, m = dense_ce(**kw)
    hf = ce.sum() / m.sum()                              # HF's default causal-LM loss
    assert m.sum() / B >= 1                              # the clamp max(., 1) does not act
    for w in (w_eq, np.ones(B), np.full(B, 7.0)):
        assert A.weighted_token_ce(w=w, **kw) == pytest.approx(hf, rel=1e-14, abs=0)


def test_weights_sum_to_one_shift_invariant_and_monotone():
    rng = np.random.default_rng(5)
    c, r = rng.uniform(0, 4, 9), rng.uniform(0, 4, 9)
    for tau in (0.1, 1.0, 3.0):
        w = A.antibody_weights(c, r, tau=tau)
        assert w.sum() == pytest.approx(1.0, abs=1e-15) and np.all(w > 0)
        np.testing.assert_allclose(A.antibody_weights(c + 2.5, r + 7.0, tau=tau), w, rtol=1e-12)
        s = r - c
        order = np.argsort(s)
        assert np.all(np.diff(w[order]) > 0)             # strictly monotone in s_i
        np.testing.assert_allclose(w, np.exp(s / tau) / np.exp(s / tau).sum(), rtol=1e-12)
    # large logits: no overflow
    w = A.antibody_weights(np.array([0.0, 0.0]), np.array([1000.0, 999.0]), tau=1.0)
    np.testing.assert_allclose(w, [1 / (1 + np.e ** -1), 1 / (1 + np.e)], rtol=1e-12)


# --------------------------------------------------------------------------- token mean NLL


def test_token_mean_nll_matches_dense_and_safe_count():
    kw, _ = head(B=4, seed=2, empty_row=2)
    ce, m = dense_ce(**kw)
    nll, n = A.token_mean_nll(**kw)
    assert n.dtype == np.int64
    np.testing.assert_array_equal(n, m.sum(1))
    assert n[2] == 0 and nll[2] == 0.0
    np.testing.assert_allclose(nll, ce.sum(1) / np.maximum(m.sum(1), 1), rtol=1e-13)
    nll_c, _ = A.token_mean_nll(**kw, token_chunk=2, vocab_chunk=3)
    np.testing.assert_allclose(nll_c, nll, rtol=1e-13)


# --------------------------------------------------------------------------- 2. weighted CE


@pytest.mark.parametrize("variant", ["code", "paper"])
@pytest.mark.parametrize("bias", [True, False])
def test_weighted_ce_grad_matches_finite_differences(variant, bias):
    kw, w = head(bias=bias, seed=4 + bias)
    w = w * 3.0                                          # sum w N well above the clamp
    loss, dH, dW, db = A.weighted_token_ce_grad(w=w, variant=variant, **kw)
    assert loss == A.weighted_token_ce(w=w, variant=variant, **kw)

    def f(name):
        return lambda x: A.weighted_token_ce(w=w, variant=variant, **dict(kw, **{name: x}))

    np.testing.assert_allclose(dH, fd_grad(f("H"), kw["H"]), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(dW, fd_grad(f("W"), kw["W"]), rtol=1e-6, atol=1e-9)
    if bias:
        np.testing.assert_allclose(db, fd_grad(f("b"), kw["b"]), rtol=1e-6, atol=1e-9)
    else:
        assert db is None


def test_weighted_ce_code_value_and_clamp():
    kw, w = head(seed=6, empty_row=1)
    ce, m = dense_ce(**kw)
    S, N = ce.sum(1), m.sum(1)
    for scale in (3.0, 1e-3):                            # denominator above / below 1
        ws = w * scale
        want = (ws @ S) / max(ws @ N, 1.0)
        assert A.weighted_token_ce(w=ws, **kw) == pytest.approx(want, rel=1e-13)
    assert (1e-3 * w) @ N < 1                            # the clamp acted in the second
    want_p = w @ (S / np.maximum(N, 1))
    assert A.weighted_token_ce(w=w, variant="paper", **kw) == pytest.approx(want_p, rel=1e-13)


@pytest.mark.parametrize("variant", ["code", "paper"])
@pytest.mark.parametrize("chunks", [(1, 1), (2, 3), (4, 7), (100, 2)])
def test_chunked_equals_dense(variant, chunks):
    kw, w = head(seed=7)
    dense = A.weighted_token_ce_grad(w=w, variant=variant, **kw)
    ch = A.weighted_token_ce_grad(w=w, variant=variant, token_chunk=chunks[0],
                                  vocab_chunk=chunks[1], **kw)
    assert ch[0] == pytest.approx(dense[0], rel=1e-13)
    for a, b in zip(ch[1:], dense[1:]):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


def test_ignored_positions_have_no_effect():
    kw, w = head(seed=8)
    ign = kw["labels"] == IGN
    assert ign.any()
    loss, dH, dW, db = A.weighted_token_ce_grad(w=w, **kw)
    assert np.all(dH[ign] == 0) and np.any(dH[~ign] != 0)
    H2 = kw["H"].copy()
    H2[ign] = 1e3 * np.random.default_rng(0).normal(size=H2[ign].shape)
    got = A.weighted_token_ce_grad(w=w, **dict(kw, H=H2))
    assert got[0] == loss
    np.testing.assert_array_equal(got[2], dW)
    np.testing.assert_array_equal(got[3], db)
    # another ignore_index marks the same positions: identical results
    lab = np.where(ign, 12345, kw["labels"])
    got = A.weighted_token_ce_grad(w=w, **dict(kw, labels=lab), ignore_index=12345)
    assert got[0] == loss
    np.testing.assert_array_equal(got[1], dH)
    # and a completion token, when ignored, changes the loss
    lab = kw["labels"].copy()
    r, t = np.argwhere(~ign)[0]
    lab[r, t] = IGN
    assert A.weighted_token_ce(w=w, **dict(kw, labels=lab)) != loss


@pytest.mark.parametrize("variant", ["code", "paper"])
def test_all_ignored_batch_gives_zero_loss_and_gradients(variant):
    kw, w = head(seed=9)
    kw["labels"] = np.full_like(kw["labels"], IGN)
    loss, dH, dW, db = A.weighted_token_ce_grad(w=w, variant=variant, **kw)
    assert loss == 0.0
    assert not dH.any() and not dW.any() and not db.any()
    assert dH.shape == kw["H"].shape and dW.shape == kw["W"].shape
    nll, n = A.token_mean_nll(**kw)
    assert not nll.any() and not n.any()


def test_paper_variant_reduces_to_code_with_equal_lengths_and_unit_total():
    """With every N_i = N and sum_i w_i = 1: code = sum w S / N = paper (a real distinction
    otherwise)."""
    rng = np.random.default_rng(10)
    B, T, d, V = 3, 4, 5, 6
    H, W = rng.normal(size=(B, T, d)), rng.normal(size=(V, d))
    labels = rng.integers(0, V, (B, T))
    labels[:, 0] = IGN
    w = A.antibody_weights(rng.normal(size=B), rng.normal(size=B))
    a = A.weighted_token_ce(H, W, labels, w)
    p = A.weighted_token_ce(H, W, labels, w, variant="paper")
    assert a == pytest.approx(p, rel=1e-13)
    labels[0, 1] = IGN                                   # unequal lengths: they differ
    assert A.weighted_token_ce(H, W, labels, w) != pytest.approx(
        A.weighted_token_ce(H, W, labels, w, variant="paper"), rel=1e-6)


# --------------------------------------------------------------------------- 3. lambda


def test_lambda_parallel_antiparallel_orthogonal():
    rng = np.random.default_rng(11)
    d = 1e3 * rng.normal(size=20)                        # norms >> the 1e-8 epsilon
    o = rng.normal(size=20)
    o = 1e3 * (o - (o @ d) / (d @ d) * d)
    for eta in (5.0, 2.0):
        assert A.antibody_lambda(3.0 * d, d, eta=eta)[1] == pytest.approx(eta - 1, abs=1e-12)
        assert A.antibody_lambda(-0.5 * d, d, eta=eta)[1] == pytest.approx(eta + 1, abs=1e-12)
        assert A.antibody_lambda(o, d, eta=eta)[1] == pytest.approx(eta, abs=1e-12)
    # clamp: eta < cos
    assert A.antibody_lambda(d, d, eta=0.5) == (0.0, 0.0)
    # the epsilon of the code: g_s = 0 gives eta exactly
    assert A.antibody_lambda(np.zeros(20), d) == (5.0, 5.0)


def test_lambda_kkt_closed_form_and_cosine_closed_form():
    rng = np.random.default_rng(12)
    gs, d = rng.normal(size=50), 0.3 * rng.normal(size=50)
    want = max(5.0 - (gs @ d) / (d @ d + 1e-8), 0.0)
    assert A.antibody_lambda(gs, d, variant="kkt")[1] == pytest.approx(want, rel=1e-14)
    assert A.antibody_lambda(8 * d, d, variant="kkt")[1] == 0.0       # 5 - 8 < 0: clamped
    want = 5.0 - (gs @ d) / (np.linalg.norm(d) * np.linalg.norm(gs) + 1e-8)
    assert A.antibody_lambda(gs, d)[1] == pytest.approx(want, rel=1e-14)


def test_lambda_ema_initialises_then_updates():
    rng = np.random.default_rng(13)
    gs1, d1, gs2, d2 = (rng.normal(size=30) for _ in range(4))
    new1, raw1 = A.antibody_lambda(gs1, d1, None, momentum=0.9)
    assert new1 == raw1
    new2, raw2 = A.antibody_lambda(gs2, d2, new1, momentum=0.9)
    assert raw2 == A.antibody_lambda(gs2, d2)[1]
    assert new2 == pytest.approx(0.9 * new1 + 0.1 * raw2, rel=1e-15)
    assert A.antibody_lambda(gs2, d2, 1.5, momentum=0.0)[0] == raw2
    assert A.antibody_lambda(gs2, d2, np.array(1.5), momentum=0.5)[0] == pytest.approx(
        0.5 * 1.5 + 0.5 * raw2, rel=1e-15)


def test_align_direction_is_the_code_step():
    rng = np.random.default_rng(14)
    gs, gh, gp, gr = (rng.normal(size=40) for _ in range(4))
    for variant in ("cosine", "kkt"):
        g, new, raw = A.antibody_align_direction(gs, gh, gp, gr, 4.0, momentum=0.7, lam2=0.2,
                                                 variant=variant)
        want_new, want_raw = A.antibody_lambda(gs, gh - gp, 4.0, momentum=0.7, variant=variant)
        assert (new, raw) == (want_new, want_raw)
        np.testing.assert_allclose(g, gs + new * (gh - gp) + 0.2 * gr, rtol=1e-14)


# --------------------------------------------------------------------------- 4. Booster


def test_booster_special_case():
    rng = np.random.default_rng(15)
    gs, gh, gp, gr = (rng.normal(size=25) for _ in range(4))
    for lam in (0.0, 1.0, 3.7):
        g, new, raw = A.antibody_align_direction(gs, gh, gp, gr, lam, momentum=1.0, lam2=0.0)
        assert new == lam and raw != lam
        np.testing.assert_allclose(g, gs + lam * (gh - gp), rtol=1e-15, atol=1e-15)


# --------------------------------------------------------------------------- 5. perturbation


def test_harmful_perturb_step_length_and_zero_gradient():
    rng = np.random.default_rng(16)
    theta = rng.normal(size=100)
    for scale in (1.0, 1e-6, 1e-9):
        g = scale * rng.normal(size=100)
        n = np.linalg.norm(g)
        for alpha in (0.1, 2.0):
            tp = A.harmful_perturb(theta, g, alpha)
            assert np.linalg.norm(tp - theta) == pytest.approx(alpha * n / (n + 1e-7), rel=1e-12)
            cos = (theta - tp) @ g / (np.linalg.norm(theta - tp) * n)
            assert cos == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_array_equal(A.harmful_perturb(theta, np.zeros(100)), theta)
    g = rng.normal(size=100)
    np.testing.assert_allclose(A.harmful_perturb(theta, g, 0.1, eps=1.0),
                               theta - 0.1 * g / (np.linalg.norm(g) + 1.0), rtol=1e-14)


# --------------------------------------------------------------------------- torch oracle


def test_torch_transcription_of_the_official_code():
    """The official code's ``_sequence_nll`` (unshifted logits of length T+1, shift inside),
    the ``training_step`` token-average scores and softmax weights, and
    ``compute_weighted_loss_and_gradient`` with autograd, in CPU float64 torch."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(17)
    B, T, d, V = 5, 7, 6, 9
    tau = 0.7

    def batch(empty_row):
        H, W, b, labels = C.token_inputs(rng, B, T, d, V, empty_row=empty_row)
        return H, labels

    W = rng.normal(size=(V, d)) / np.sqrt(d)
    b = 0.1 * rng.normal(size=V)
    Hc, lc = batch(3)                                    # compliance view (row 3: no tokens)
    Hr, lr = batch(None)                                 # refusal view

    def code_seq_nll(H, labels):
        # model inputs of length T+1: hidden state at position T is never used, labels[:, 0]
        # is the first input token (never a target); the code shifts both.
        Hf = torch.tensor(np.concatenate([H, rng.normal(size=(B, 1, d))], axis=1))
        lf = torch.tensor(np.concatenate([rng.integers(0, V, (B, 1)), labels], axis=1))
        logits = Hf @ torch.tensor(W).T + torch.tensor(b)
        shift_logits, shift_labels = logits[..., :-1, :], lf[..., 1:]
        ce = F.cross_entropy(shift_logits.reshape(-1, V), shift_labels.reshape(-1),
                             reduction="none", ignore_index=-100).view(shift_labels.size())
        mask = shift_labels.ne(-100)
        return (ce * mask).sum(dim=1), mask.sum(dim=1)

    cs, cn = code_seq_nll(Hc, lc)
    rs, rn = code_seq_nll(Hr, lr)
    c_avg, r_avg = cs / cn.clamp(min=1), rs / rn.clamp(min=1)
    w_code = torch.softmax((r_avg - c_avg) / tau, dim=0)

    nll_c, n_c = A.token_mean_nll(Hc, W, lc, b)
    nll_r, _ = A.token_mean_nll(Hr, W, lr, b)
    np.testing.assert_allclose(nll_c, c_avg.numpy(), rtol=1e-13)
    np.testing.assert_array_equal(n_c, cn.numpy())
    w = A.antibody_weights(nll_c, nll_r, tau=tau)
    np.testing.assert_allclose(w, w_code.numpy(), rtol=1e-12)

    for scale in (1.0, 1e-3):                            # clamp inactive / active
        Ht = torch.tensor(Hc, requires_grad=True)
        Wt = torch.tensor(W, requires_grad=True)
        bt = torch.tensor(b, requires_grad=True)
        logits = Ht @ Wt.T + bt
        lt = torch.tensor(lc)
        ce = F.cross_entropy(logits.reshape(-1, V), lt.reshape(-1), reduction="none",
                             ignore_index=-100).view(lt.size())
        tm = lt.ne(-100).double()
        wt = (scale * w_code).detach().view(-1, 1)
        loss = (ce * tm * wt).sum() / (tm * wt).sum().clamp(min=1.0)
        loss.backward()
        got = A.weighted_token_ce_grad(Hc, W, lc, scale * w, b, token_chunk=4, vocab_chunk=4)
        assert got[0] == pytest.approx(loss.item(), rel=1e-12)
        np.testing.assert_allclose(got[1], Ht.grad.numpy(), rtol=1e-10, atol=1e-13)
        np.testing.assert_allclose(got[2], Wt.grad.numpy(), rtol=1e-10, atol=1e-13)
        np.testing.assert_allclose(got[3], bt.grad.numpy(), rtol=1e-10, atol=1e-13)


# --------------------------------------------------------------------------- registry cases

OPS = {
    "harmful_perturb": A.harmful_perturb, "antibody_lambda": A.antibody_lambda,
    "antibody_align_direction": A.antibody_align_direction,
    "antibody_weights": A.antibody_weights, "token_mean_nll": A.token_mean_nll,
    "weighted_token_ce": A.weighted_token_ce,
}


@pytest.mark.parametrize("name", sorted(OPS))
def test_cases_run_finite_and_tiny_is_small(name):
    cases = {sc: getattr(C, "cases_" + name)(np.random.default_rng(0), sc)
             for sc in ("tiny", "small", "bench")}
    assert 1 <= len(cases["tiny"]) <= 2                  # Numba simulator in CI
    assert all(callable(c.kwargs) for c in cases["bench"] if c.where == "gpu")
    for c in cases["tiny"] + cases["small"]:
        kw = c.inputs()
        for k, v in kw.items():
            if k == "labels":
                assert v.dtype == np.int64
            elif isinstance(v, np.ndarray):
                assert v.dtype == np.float64
        out = OPS[name](**kw)
        for o in (out if isinstance(out, tuple) else (out,)):
            assert np.all(np.isfinite(o))
    labels = [c.label for c in cases["tiny"] + cases["small"]]
    assert len(set(labels)) == len(labels)


def test_vjp_weighted_token_ce_is_the_scaled_gradient():
    for c in C.cases_weighted_token_ce(np.random.default_rng(1), "small"):
        kw = c.inputs()
        out = C.vjp_weighted_token_ce(kw, np.array(-2.5))
        _, dH, dW, db = A.weighted_token_ce_grad(**kw)
        assert set(out) == ({"dH", "dW", "db"} if "b" in kw else {"dH", "dW"})
        np.testing.assert_allclose(out["dH"], -2.5 * dH)
        np.testing.assert_allclose(out["dW"], -2.5 * dW)
        # directional derivative of the loss along a random W direction
        E = np.random.default_rng(2).normal(size=kw["W"].shape)
        f = lambda x: A.weighted_token_ce(**dict(kw, W=x))
        assert np.sum(out["dW"] * E) == pytest.approx(-2.5 * central(f, kw["W"], E), rel=1e-6)


def test_all_public_names():
    assert set(A.__all__) == set(OPS) | {"weighted_token_ce_grad"}
    assert all(callable(getattr(A, n)) for n in A.__all__)


# --------------------------------------------------------------------------- bad input


def raises(exc, match, f, *a, **k):
    with pytest.raises(exc, match=match):
        f(*a, **k)


def test_bad_flat_vectors():
    v = np.ones(4)
    bad = v.copy()
    bad[2] = np.nan
    raises(ValueError, "g_h has non-finite entries", A.harmful_perturb, v, bad)
    inf = v.copy()
    inf[0] = np.inf
    raises(ValueError, "d has non-finite entries", A.antibody_lambda, v, inf)
    raises(ValueError, "g_s has non-finite entries", A.antibody_lambda, bad, v)
    for i, name in enumerate(("g_s", "g_h", "g_p", "g_r")):
        args = [v, v, v, v]
        args[i] = bad
        raises(ValueError, f"{name} has non-finite entries", A.antibody_align_direction, *args)
    raises(ValueError, "g_p must have the shape of g_s", A.antibody_align_direction,
           v, v, np.ones(5), v)
    raises(TypeError, "g_r must have the dtype of g_s", A.antibody_align_direction,
           v, v, v, v.astype(np.float32))
    raises(ValueError, "P >= 1", A.harmful_perturb, np.ones(0), np.ones(0))
    raises(ValueError, "1-D", A.harmful_perturb, np.ones((2, 2)), np.ones((2, 2)))
    raises(TypeError, "dtype", A.harmful_perturb, np.ones(3, int), np.ones(3, int))
    # theta itself is not a gradient: NaN there is the caller's business, passed through
    assert np.isnan(A.harmful_perturb(bad, v)[2])


def test_bad_scalars():
    v, w = np.ones(4), np.arange(4.0)
    raises(ValueError, "alpha must be >= 0", A.harmful_perturb, v, w, -0.1)
    raises(ValueError, "eps must be a finite number > 0", A.harmful_perturb, v, w, eps=0.0)
    for m in (-0.1, 1.5, np.nan):
        raises(ValueError, "momentum", A.antibody_lambda, v, w, momentum=m)
    raises(ValueError, "momentum must lie in", A.antibody_align_direction, v, v, w, v,
           momentum=1.01)
    raises(ValueError, "eta must be >= 0", A.antibody_lambda, v, w, eta=-1.0)
    raises(ValueError, "eta must be finite", A.antibody_lambda, v, w, eta=np.inf)
    raises(ValueError, "lam2 must be >= 0", A.antibody_align_direction, v, v, w, v, lam2=-0.1)
    raises(ValueError, "lam_ema must be a finite number >= 0", A.antibody_lambda, v, w, -1.0)
    raises(ValueError, "lam_ema must be a finite number >= 0", A.antibody_lambda, v, w, np.nan)
    raises(TypeError, "lam_ema must be a real number", A.antibody_lambda, v, w, "1")
    for variant in ("cos", "KKT", "code"):
        raises(ValueError, "variant must be one of 'cosine', 'kkt'", A.antibody_lambda, v, w,
               variant=variant)
        raises(ValueError, "variant must be one of 'cosine', 'kkt'",
               A.antibody_align_direction, v, v, w, v, variant=variant)


def test_bad_weights_inputs():
    c = np.ones(3)
    for tau in (0.0, -1.0, np.inf):
        raises(ValueError, "tau must be a finite number > 0", A.antibody_weights, c, c, tau=tau)
    raises(ValueError, "empty batch", A.antibody_weights, np.ones(0), np.ones(0))
    raises(ValueError, "nll_r must have the shape of nll_c", A.antibody_weights, c, np.ones(4))
    raises(ValueError, "nll_c contains NaN or inf", A.antibody_weights, np.array([1, np.nan, 2.]),
           c)
    raises(ValueError, "nll_r contains NaN or inf", A.antibody_weights, c,
           np.array([1, np.inf, 2.]))


def test_bad_head_inputs():
    kw, w = head(seed=20)
    B, T = kw["labels"].shape
    V = kw["W"].shape[0]
    lab = kw["labels"].copy()
    lab[0, 2] = V
    raises(ValueError, rf"labels must lie in \[0, {V}\) or equal ignore_index = -100",
           A.weighted_token_ce, **dict(kw, labels=lab), w=w)
    lab[0, 2] = -1
    raises(ValueError, "ignore_index = -100, got other values in \\[-1,", A.token_mean_nll,
           **dict(kw, labels=lab))
    raises(ValueError, "ignore_index = -1", A.token_mean_nll, **kw, ignore_index=-1)
    raises(TypeError, "labels must be an integer array", A.token_mean_nll,
           **dict(kw, labels=kw["labels"].astype(float)))
    raises(ValueError, r"labels must have shape \(3, 6\)", A.token_mean_nll,
           **dict(kw, labels=kw["labels"][:, :-1]))
    raises(TypeError, "ignore_index must be an int", A.token_mean_nll, **kw, ignore_index=-100.0)
    # empty batch: the preference head's error
    e = dict(H=np.ones((0, T, 5)), W=kw["W"], labels=np.ones((0, T), np.int64))
    raises(ValueError, "empty batch", A.weighted_token_ce, **e, w=np.ones(0))
    raises(ValueError, "empty batch", A.token_mean_nll, **e)
    # w
    raises(ValueError, r"w must have shape \(3,\)", A.weighted_token_ce, **kw, w=np.ones(4))
    raises(ValueError, "w must be >= 0", A.weighted_token_ce, **kw, w=np.array([0.5, -0.1, 0.6]))
    raises(ValueError, "w contains NaN or inf", A.weighted_token_ce_grad, **kw,
           w=np.array([0.5, np.nan, 0.6]))
    raises(TypeError, "w must have the dtype of H", A.weighted_token_ce, **kw,
           w=w.astype(np.float32))
    raises(ValueError, "variant must be one of 'code', 'paper'", A.weighted_token_ce, **kw, w=w,
           variant="cosine")
    raises(ValueError, "token_chunk must be >= 1", A.weighted_token_ce, **kw, w=w, token_chunk=0)
    raises(ValueError, r"b must have shape \(7,\)", A.weighted_token_ce,
           **dict(kw, b=np.ones(3)), w=w)
    raises(TypeError, "numpy reference", A.token_mean_nll, **dict(kw, H=_FakeTorch()))


class _FakeTorch:
    __module__ = "torch"
    shape, dtype = (3, 6, 5), "float64"
