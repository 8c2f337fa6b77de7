"""Reference tests of Mult-VAE (arXiv 1802.05814) and the PIA anchor regulariser (arXiv
2511.06781), spec recsys_vae.md secs. 1-4 and 9: KL and NLL invariants, the beta schedule, the
explicit backward against central finite differences and against torch autograd of an
independent transcription of the official notebook's graph, CSR == dense, PIA's closed form
against Monte Carlo and its gradients (with the spread term shown necessary), initialisation
and draw statistics, the Wasserstein distance against quantile integrals, the registry cases
and argument errors."""

import functools

import numpy as np
import pytest
import scipy.sparse as sp
from scipy import integrate, stats
from scipy.special import log_softmax

import finite_diff
from refimpl import _multvae as M
from refimpl._cases import recsys_vae as C

TINY = C.MV_TINY      # (U, I, H, d)
KEYS = ("W1", "b1", "W2", "b2", "W3", "b3", "W4", "b4")


def model(seed=0, size=TINY, mode="dropout", empty_row=None, pia=False, lam_A=1.0,
          keep_prob=0.5, beta=0.3):
    kw = C._model_kw(np.random.default_rng(seed), size, mode, empty_row, keep_prob, pia, lam_A)
    kw["beta"] = beta
    kw.setdefault("mask", None)
    kw.setdefault("eps", None)
    return kw


fd_grad = functools.partial(finite_diff.fd_grad, h=1e-5)


def vg_loss(kw, **change):
    """The loss of multvae_value_and_grad with some inputs (a parameter or E) replaced."""
    kw = dict(kw)
    P = dict(kw["params"])
    for k, v in change.items():
        if k in KEYS:
            P[k] = v
        else:
            kw[k] = v
    kw["params"] = P
    return M.multvae_value_and_grad(**kw)[0]


# --------------------------------------------------------------------------- loss invariants


def test_kl_is_nonnegative_and_zero_only_at_the_prior():
    rng = np.random.default_rng(0)
    X = C.interactions(rng, 6, 10, 0.3)
    logits = rng.normal(size=(6, 10))
    for _ in range(20):
        mu, lv = rng.normal(size=(6, 4)), 2 * rng.normal(size=(6, 4))
        assert M.multvae_loss(X, logits, mu, lv, 1.0)[2] > 0
    zero = np.zeros((6, 4))
    assert M.multvae_loss(X, logits, zero, zero, 1.0)[2] == 0.0
    one = zero.copy()
    one[2, 1] = 1e-3
    assert M.multvae_loss(X, logits, one, zero, 1.0)[2] > 0          # mu != 0, logvar = 0
    assert M.multvae_loss(X, logits, zero, one, 1.0)[2] > 0          # mu = 0, logvar != 0
    # closed form of one entry: 0.5 (-lv + e^lv + mu^2 - 1) averaged over the 6 users
    mu1, lv1 = one.copy(), zero.copy()
    mu1[0, 0], lv1[0, 0] = 0.7, -0.4
    want = 0.5 * (0.4 + np.exp(-0.4) + 0.49 - 1) / 6
    assert M.multvae_loss(X, logits, mu1, lv1, 1.0)[2] == pytest.approx(want + 0.5e-6 / 6,
                                                                        rel=1e-12)


def test_nll_is_invariant_to_a_per_row_constant_and_matches_the_definition():
    rng = np.random.default_rng(1)
    X = C.interactions(rng, 5, 9, 0.4, empty_row=2)
    logits = 3 * rng.normal(size=(5, 9))
    mu, lv = rng.normal(size=(5, 2)), rng.normal(size=(5, 2))
    loss, nll, kl = M.multvae_loss(X, logits, mu, lv, 0.25)
    shifted = M.multvae_loss(X, logits + 1e3 * rng.normal(size=(5, 1)), mu, lv, 0.25)
    assert shifted[1] == pytest.approx(nll, rel=1e-12)
    # definition with an independent softmax (scipy) and the raw binary X as target
    logp = log_softmax(logits, axis=1)
    assert nll == pytest.approx(np.mean(-(X * logp).sum(1)), rel=1e-12)
    assert loss == pytest.approx(nll + 0.25 * kl, rel=1e-15)
    # the empty user contributes 0 but counts in U
    keep = [0, 1, 3, 4]
    sub = M.multvae_loss(X[keep], logits[keep], mu[keep], lv[keep], 0.0)[1]
    assert nll == pytest.approx(sub * 4 / 5, rel=1e-12)


def test_beta_schedule():
    assert M.anneal_beta(0) == 0.0
    assert M.anneal_beta(100_000) == 0.2              # 0.5 capped at 0.2
    assert M.anneal_beta(200_000) == 0.2
    assert M.anneal_beta(300_000) == 0.2
    assert M.anneal_beta(20_000) == pytest.approx(0.1)
    assert M.anneal_beta(100_000, cap=1.0) == 0.5
    assert M.anneal_beta(300_000, cap=1.0) == 1.0
    assert M.anneal_beta(250, cap=0.2, total_anneal_steps=1000) == 0.2
    assert M.anneal_beta(100, total_anneal_steps=1000) == pytest.approx(0.1)
    assert M.anneal_beta(5, total_anneal_steps=0) == 0.2   # official: no annealing -> the cap


# --------------------------------------------------------------------------- forward


def test_forward_matches_the_equations_in_every_mode():
    kw = model(3, empty_row=1)
    X, P, mask, eps = kw["X"], kw["params"], kw["mask"], kw["eps"]
    norm = np.linalg.norm(X, axis=1, keepdims=True)
    xn = np.divide(X, norm, out=np.zeros_like(X), where=norm > 0)

    def rest(h0, eps_):
        o = np.tanh(h0 @ P["W1"] + P["b1"]) @ P["W2"] + P["b2"]
        mu, lv = o[:, :3], o[:, 3:]
        z = mu if eps_ is None else mu + eps_ * np.exp(lv / 2)
        return np.tanh(z @ P["W3"] + P["b3"]) @ P["W4"] + P["b4"], mu, lv

    xm = X * mask
    nm = np.linalg.norm(xm, axis=1, keepdims=True)
    for args, h0, e in (((None, None), xn, None),
                        ((mask, eps), xn * mask / 0.5, eps),
                        ((None, eps), xn, eps),
                        ((mask, None, 0.5, "bernoulli"),
                         np.divide(xm, nm, out=np.zeros_like(xm), where=nm > 0), None)):
        got = M.multvae_forward(X, P, *args)
        for g, w in zip(got, rest(h0, e)):
            np.testing.assert_allclose(g, w, rtol=1e-13, atol=1e-14)
    # the empty user's encoder input is 0: mu = tanh(b1) W2 + b2
    _, mu, _ = M.multvae_forward(X, P)
    np.testing.assert_allclose(mu[1], (np.tanh(P["b1"]) @ P["W2"] + P["b2"])[:3], rtol=1e-14)
    # keep_prob = 1 with an all-ones mask is evaluation
    ev = M.multvae_forward(X, P)
    full = M.multvae_forward(X, P, np.ones_like(X), None, 1.0)
    for a, b in zip(ev, full):
        np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------------------- explicit backward


@pytest.mark.parametrize("mode,pia,lam_A,empty_row", [
    ("dropout", False, 0.0, 2), ("bernoulli", True, 1.5, 0), ("eval", True, 0.7, None),
    ("eps_only", False, 0.0, None)])
def test_value_and_grad_matches_central_finite_differences(mode, pia, lam_A, empty_row):
    kw = model(4, mode=mode, pia=pia, lam_A=lam_A, empty_row=empty_row)
    _, g = M.multvae_value_and_grad(**kw)
    assert set(g) == set(KEYS) | ({"E"} if pia else set())
    for k in KEYS:
        num = fd_grad(lambda x: vg_loss(kw, **{k: x}), kw["params"][k])
        np.testing.assert_allclose(g[k], num, rtol=1e-7, atol=1e-7, err_msg=k)
    if pia:
        num = fd_grad(lambda x: vg_loss(kw, E=x), kw["E"])
        np.testing.assert_allclose(g["E"], num, rtol=1e-7, atol=1e-7, err_msg="E")
        assert np.abs(g["E"]).max() > 1e-3


def test_value_and_grad_loss_is_forward_loss_plus_anchor_term():
    kw = model(5, mode="bernoulli", pia=True, lam_A=2.0, empty_row=3)
    loss, _ = M.multvae_value_and_grad(**kw)
    logits, mu, lv = M.multvae_forward(kw["X"], kw["params"], kw["mask"], kw["eps"],
                                       kw["keep_prob"], "bernoulli")
    want = M.multvae_loss(kw["X"], logits, mu, lv, kw["beta"])[0] \
        + 2.0 * M.pia_anchor_loss(mu, lv, kw["X"], kw["E"])
    assert loss == pytest.approx(want, rel=1e-14)
    kw0 = dict(kw, lam_A=0.0)
    loss0, g0 = M.multvae_value_and_grad(**kw0)
    assert np.all(g0["E"] == 0)
    assert loss0 == pytest.approx(M.multvae_loss(kw["X"], logits, mu, lv, kw["beta"])[0],
                                  rel=1e-14)


def _torch_official(torch, X, P, mask, eps, keep_prob, mode, beta, E, lam_A):
    """An independent transcription of the notebook's MultVAE graph (forward_pass + the neg-ELBO
    of build_graph) in torch, plus PIA's L_A written as mean_{i in S_u} (||mu - e_i||^2 +
    sum sigma^2) over an explicit (U, I) distance matrix (no spread decomposition)."""
    F = torch.nn.functional
    if mode == "dropout":
        h = F.normalize(X, dim=1, eps=1e-6)                  # binary rows: norm >= 1 or 0
        if mask is not None:
            h = h * mask / keep_prob
    else:
        h = F.normalize(X if mask is None else X * mask, dim=1, eps=1e-6)
    h = torch.tanh(h @ P["W1"] + P["b1"])
    h = h @ P["W2"] + P["b2"]
    d = h.shape[1] // 2
    mu_q, logvar_q = h[:, :d], h[:, d:]
    std_q = torch.exp(0.5 * logvar_q)
    KL = torch.mean(torch.sum(0.5 * (-logvar_q + torch.exp(logvar_q) + mu_q ** 2 - 1), dim=1))
    z = mu_q if eps is None else mu_q + eps * std_q
    h = torch.tanh(z @ P["W3"] + P["b3"]) @ P["W4"] + P["b4"]
    neg_ll = -torch.mean(torch.sum(F.log_softmax(h, dim=1) * X, dim=-1))
    loss = neg_ll + beta * KL
    if E is not None:
        n = X.sum(1)
        D = ((mu_q[:, None, :] - E[None, :, :]) ** 2).sum(-1)          # (U, I)
        keep = n > 0
        LA = (X * D).sum(1)[keep] / n[keep] + torch.exp(logvar_q).sum(1)[keep]
        loss = loss + lam_A * LA.mean()
    return loss, h


@pytest.mark.parametrize("mode,pia,lam_A,empty_row", [
    ("dropout", False, 0.0, 5), ("bernoulli", True, 0.5, 1), ("eval", True, 3.0, None)])
def test_value_and_grad_matches_torch_autograd_of_the_official_graph(mode, pia, lam_A,
                                                                     empty_row):
    torch = pytest.importorskip("torch")
    kw = model(6, size=C.MV_SMALL, mode=mode, pia=pia, lam_A=lam_A, empty_row=empty_row,
               beta=0.2)
    loss, g = M.multvae_value_and_grad(**kw)
    t = lambda a: None if a is None else torch.tensor(a, dtype=torch.float64)
    P = {k: t(v).requires_grad_() for k, v in kw["params"].items()}
    E = t(kw.get("E"))
    if E is not None:
        E.requires_grad_()
    tl, tlogits = _torch_official(torch, t(kw["X"]), P, t(kw["mask"]), t(kw["eps"]),
                                  kw.get("keep_prob", 0.5), kw.get("mask_mode", "dropout"),
                                  kw["beta"], E, kw.get("lam_A", 0.0))
    tl.backward()
    assert loss == pytest.approx(tl.item(), rel=1e-12)
    logits = M.multvae_forward(kw["X"], kw["params"], kw["mask"], kw["eps"],
                               kw.get("keep_prob", 0.5), kw.get("mask_mode", "dropout"))[0]
    np.testing.assert_allclose(logits, tlogits.detach().numpy(), rtol=1e-12, atol=1e-13)
    for k in KEYS:
        np.testing.assert_allclose(g[k], P[k].grad.numpy(), rtol=1e-9, atol=1e-13, err_msg=k)
    if pia:
        np.testing.assert_allclose(g["E"], E.grad.numpy(), rtol=1e-9, atol=1e-13)


def test_csr_input_equals_dense():
    kw = model(7, size=C.MV_SMALL, mode="bernoulli", pia=True, lam_A=0.5, empty_row=4)
    X = kw["X"]
    for Xs in (sp.csr_matrix(X), sp.csr_array(X)):
        for args in ((None, None), (kw["mask"], kw["eps"]),
                     (kw["mask"], kw["eps"], 0.5, "bernoulli")):
            for a, b in zip(M.multvae_forward(Xs, kw["params"], *args),
                            M.multvae_forward(X, kw["params"], *args)):
                np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-15)
        for mode in ("dropout", "bernoulli"):
            l_s, g_s = M.multvae_value_and_grad(**dict(kw, X=Xs, mask_mode=mode))
            l_d, g_d = M.multvae_value_and_grad(**dict(kw, mask_mode=mode))
            assert l_s == pytest.approx(l_d, rel=1e-13)
            for k in g_d:
                assert isinstance(g_s[k], np.ndarray)
                np.testing.assert_allclose(g_s[k], g_d[k], rtol=1e-12, atol=1e-15, err_msg=k)
        logits, mu, lv = M.multvae_forward(X, kw["params"])
        np.testing.assert_allclose(M.multvae_loss(Xs, logits, mu, lv, 0.2),
                                   M.multvae_loss(X, logits, mu, lv, 0.2), rtol=1e-13)
        np.testing.assert_allclose(M.item_centroids(Xs, kw["E"]), M.item_centroids(X, kw["E"]),
                                   rtol=1e-13, atol=1e-16)
        for red in ("mean", "sum", "none"):
            np.testing.assert_allclose(M.pia_anchor_loss(mu, lv, Xs, kw["E"], red),
                                       M.pia_anchor_loss(mu, lv, X, kw["E"], red), rtol=1e-13)
        for a, b in zip(M.pia_anchor_grad(mu, lv, Xs, kw["E"]),
                        M.pia_anchor_grad(mu, lv, X, kw["E"])):
            np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-16)


# --------------------------------------------------------------------------- PIA


def pia(seed=0, U=4, I=12, d=3, empty_row=None, shift=-0.5):
    kw = C._pia_kw(np.random.default_rng(seed), (U, I, 5, d), empty_row, shift)
    return kw["mu"], kw["logvar"], kw["X"], kw["E"]


def naive_mc_samples(z, X, E):
    """(S, U) values mean_{i in S_u} ||z_su - e_i||^2, looping over users and their items."""
    S, U, _ = z.shape
    out = np.full((S, U), np.nan)
    for u in range(U):
        items = np.flatnonzero(X[u])
        if items.size:
            out[:, u] = np.mean([((z[:, u] - E[i]) ** 2).sum(-1) for i in items], axis=0)
    return out


def test_item_centroids_are_per_user_means_and_zero_for_empty_users():
    _, _, X, E = pia(1, empty_row=2)
    got = M.item_centroids(X, E)
    for u in range(4):
        want = E[X[u] > 0].mean(0) if X[u].any() else np.zeros(3)
        np.testing.assert_allclose(got[u], want, rtol=1e-14, atol=1e-16)


def test_closed_form_equals_monte_carlo_within_four_standard_errors():
    mu, lv, X, E = pia(2, empty_row=1)
    S = 20_000
    z = mu + np.exp(lv / 2) * np.random.default_rng(11).standard_normal((S,) + mu.shape)
    samples = naive_mc_samples(z, X, E)
    closed = M.pia_anchor_loss(mu, lv, X, E, reduction="none")
    assert np.isnan(closed[1]) and np.all(np.isfinite(np.delete(closed, 1)))
    for u in (0, 2, 3):
        se = samples[:, u].std(ddof=1) / np.sqrt(S)
        assert abs(closed[u] - samples[:, u].mean()) < 4 * se, u
    m = np.nanmean(samples, axis=1)                      # the "mean" reduction per sample
    assert abs(M.pia_anchor_loss(mu, lv, X, E) - m.mean()) < 4 * m.std(ddof=1) / np.sqrt(S)
    # the z path is exactly that Monte Carlo average, for every reduction
    np.testing.assert_allclose(M.pia_anchor_loss(mu, lv, X, E, "none", z=z),
                               samples.mean(0), rtol=1e-12)
    assert M.pia_anchor_loss(mu, lv, X, E, "sum", z=z) == pytest.approx(
        np.nansum(samples.mean(0)), rel=1e-12)
    assert M.pia_anchor_loss(mu, lv, X, E, z=z) == pytest.approx(
        np.nanmean(samples.mean(0)), rel=1e-12)
    # closed form by its definition: mean_i (||mu - e_i||^2) + sum sigma^2
    for u in (0, 2, 3):
        Su = E[X[u] > 0]
        want = ((mu[u] - Su) ** 2).sum(1).mean() + np.exp(lv[u]).sum()
        assert closed[u] == pytest.approx(want, rel=1e-13)


def test_anchor_gradients_closed_forms_and_finite_differences():
    mu, lv, X, E = pia(3, empty_row=0)
    dmu, dlv, dE = M.pia_anchor_grad(mu, lv, X, E)
    n = X.sum(1)
    V = 3                                                 # users with items
    ebar = M.item_centroids(X, E)
    np.testing.assert_allclose(dmu[1:], 2 * (mu - ebar)[1:] / V, rtol=1e-13)
    np.testing.assert_allclose(dlv[1:], np.exp(lv[1:]) / V, rtol=1e-13)
    assert np.all(dmu[0] == 0) and np.all(dlv[0] == 0)
    want = np.zeros_like(E)
    for u in range(1, 4):
        for k in np.flatnonzero(X[u]):
            want[k] += (2 / n[u]) * (E[k] - mu[u]) / V
    np.testing.assert_allclose(dE, want, rtol=1e-13, atol=1e-16)
    f = M.pia_anchor_loss
    np.testing.assert_allclose(dmu, fd_grad(lambda x: f(x, lv, X, E), mu), rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(dlv, fd_grad(lambda x: f(mu, x, X, E), lv), rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(dE, fd_grad(lambda x: f(mu, lv, X, x), E), rtol=1e-7, atol=1e-9)


def test_dropping_the_spread_term_breaks_the_anchor_gradient():
    mu, lv, X, E = pia(4)
    S = 4000
    z = mu + np.exp(lv / 2) * np.random.default_rng(5).standard_normal((S,) + mu.shape)
    # the Monte Carlo objective's E-gradient (z fixed) depends on z only through its mean:
    # it is the closed form's dE evaluated at mu = mean_s z
    mc = fd_grad(lambda x: M.pia_anchor_loss(mu, lv, X, x, z=z), E)
    np.testing.assert_allclose(mc, M.pia_anchor_grad(z.mean(0), lv, X, E)[2], rtol=1e-7,
                               atol=1e-9)
    _, _, dE = M.pia_anchor_grad(mu, lv, X, E)
    full = fd_grad(lambda x: M.pia_anchor_loss(mu, lv, X, x), E)
    np.testing.assert_allclose(full, dE, rtol=1e-7, atol=1e-9)

    def no_spread(Ex):
        eb = M.item_centroids(X, Ex)
        return np.mean(((mu - eb) ** 2).sum(1) + np.exp(lv).sum(1))

    assert no_spread(E) < M.pia_anchor_loss(mu, lv, X, E)           # the spread is > 0
    wrong = fd_grad(no_spread, E)
    assert np.abs(wrong - dE).max() > 0.1 * np.abs(dE).max()       # the check fails
    assert np.abs(wrong - mc).max() > 0.1 * np.abs(mc).max()
    # ... while the encoder gradients agree with or without it
    np.testing.assert_allclose(fd_grad(lambda x: np.mean(((x - M.item_centroids(X, E)) ** 2)
                                                         .sum(1)), mu),
                               M.pia_anchor_grad(mu, lv, X, E)[0], rtol=1e-7, atol=1e-9)


def test_gaussian_w2_matches_the_quantile_integral():
    rng = np.random.default_rng(6)
    mu1, mu2 = rng.normal(size=(3, 2)), rng.normal(size=(3, 2))
    s1, s2 = rng.uniform(0.2, 2, (3, 2)), rng.uniform(0.2, 2, (3, 2))
    got = M.gaussian_w2(mu1, s1, mu2, s2)
    for u in range(3):
        # W2^2 of a product measure is the sum over coordinates of 1-D W2^2 =
        # int_0^1 (F1^-1(t) - F2^-1(t))^2 dt
        w2sq = sum(integrate.quad(lambda t: (stats.norm.ppf(t, mu1[u, k], s1[u, k])
                                             - stats.norm.ppf(t, mu2[u, k], s2[u, k])) ** 2,
                                  0, 1, limit=200)[0] for k in range(2))
        assert got[u] == pytest.approx(np.sqrt(w2sq), rel=1e-7)
    assert np.all(M.gaussian_w2(mu1, s1, mu1, s1) == 0)


# --------------------------------------------------------------------------- init and draw


def test_init_statistics():
    I, H, d = 3000, 600, 200
    P = M.multvae_init(I, np.random.default_rng(0), hidden=H, latent=d)
    shapes = dict(W1=(I, H), b1=(H,), W2=(H, 2 * d), b2=(2 * d,), W3=(d, H), b3=(H,),
                  W4=(H, I), b4=(I,))
    assert {k: v.shape for k, v in P.items()} == shapes
    for k in ("W1", "W2", "W3", "W4"):
        fi, fo = shapes[k]
        r = np.sqrt(6 / (fi + fo))
        w = P[k]
        assert np.abs(w).max() <= r and np.abs(w).max() > 0.999 * r
        assert w.var() == pytest.approx(r * r / 3, rel=0.02)        # uniform(-r, r)
        assert abs(w.mean()) < 5 * r / np.sqrt(3 * w.size)
    b = np.concatenate([P[k] for k in ("b1", "b2", "b3", "b4")])
    assert np.abs(b).max() <= 2e-3
    assert np.abs(b).max() > 1.9e-3                                  # truncated at 2 std, not 1
    a, bb = -2.0, 2.0
    assert b.std() == pytest.approx(1e-3 * stats.truncnorm.std(a, bb), rel=0.05)
    assert abs(b.mean()) < 5 * 1e-3 / np.sqrt(b.size)
    # deterministic given the generator
    again = M.multvae_init(I, np.random.default_rng(0), hidden=H, latent=d)
    assert all(np.array_equal(P[k], again[k]) for k in P)


def test_draw_statistics():
    mask, eps = M.multvae_draw(np.random.default_rng(1), 200, 300, latent=50, keep_prob=0.3)
    assert mask.shape == (200, 300) and eps.shape == (200, 50)
    assert mask.dtype == np.float64 and set(np.unique(mask)) <= {0.0, 1.0}
    assert mask.mean() == pytest.approx(0.3, abs=4 * np.sqrt(0.21 / mask.size))
    assert abs(eps.mean()) < 4 / np.sqrt(eps.size)
    assert eps.var() == pytest.approx(1.0, abs=4 * np.sqrt(2 / eps.size))
    assert np.all(M.multvae_draw(np.random.default_rng(2), 3, 4, 2, keep_prob=1.0)[0] == 1)


# --------------------------------------------------------------------------- registry cases

OPS = {"multvae_forward": M.multvae_forward, "multvae_loss": M.multvae_loss,
       "multvae_value_and_grad": M.multvae_value_and_grad,
       "pia_anchor_loss": M.pia_anchor_loss, "pia_anchor_grad": M.pia_anchor_grad}


def _flat(out):
    if isinstance(out, dict):
        return list(out.values())
    if isinstance(out, tuple):
        return [x for o in out for x in _flat(o)]
    return [out]


@pytest.mark.parametrize("name", sorted(OPS))
def test_cases_run_and_tiny_is_tiny(name):
    fn = "pia_anchor_loss" if name == "pia_anchor_grad" else name
    cases = {sc: getattr(C, "cases_" + fn)(np.random.default_rng(0), sc)
             for sc in ("tiny", "small", "bench")}
    assert 1 <= len(cases["tiny"]) <= 2
    assert {c.where for c in cases["bench"]} == {"cpu", "gpu"}
    assert all(callable(c.kwargs) for c in cases["bench"])
    assert all(c.dtypes == ("float32",) for c in cases["bench"] if c.where == "gpu")
    for scale, size in (("tiny", TINY), ("small", C.MV_SMALL)):
        for c in cases[scale]:
            kw = c.inputs()
            U, I = kw["X"].shape
            assert (U, I) == size[:2]
            assert set(np.unique(kw["X"])) <= {0.0, 1.0}
            for k, v in kw.items():
                for a in (v.values() if isinstance(v, dict) else [v]):
                    if isinstance(a, np.ndarray):
                        assert a.dtype == np.float64, k
            if "params" in kw:
                assert kw["params"]["W1"].shape == (size[1], size[2])
                assert kw["params"]["W3"].shape == (size[3], size[2])
            if "mu" in kw:
                assert kw["mu"].shape == (size[0], size[3])
            out = _flat(OPS[name](**kw))
            assert all(np.all(np.isfinite(o)) for o in out)
        labels = [c.label for c in cases[scale]]
        assert len(set(labels)) == len(labels)
    # same rng seed -> same inputs
    again = getattr(C, "cases_" + fn)(np.random.default_rng(0), "tiny")
    assert np.array_equal(again[0].inputs()["X"], cases["tiny"][0].inputs()["X"])


def test_cases_cover_the_modes():
    vg = [c.inputs() for sc in ("tiny", "small")
          for c in C.cases_multvae_value_and_grad(np.random.default_rng(0), sc)]
    assert any(k["mask"] is None and k["eps"] is None for k in vg)               # eval
    assert any(k["mask"] is not None and k.get("mask_mode", "dropout") == "dropout" for k in vg)
    assert any(k.get("mask_mode") == "bernoulli" for k in vg)
    assert any(k.get("lam_A", 0) > 0 and k.get("E") is not None for k in vg)
    assert any(not k["X"].any(axis=1).all() for k in vg)                         # empty user
    fw = [c.inputs() for c in C.cases_multvae_forward(np.random.default_rng(0), "tiny")]
    assert any(k["mask"] is None and k["eps"] is None for k in fw)
    pa = [c.inputs() for c in C.cases_pia_anchor_loss(np.random.default_rng(0), "tiny")]
    assert all("reduction" not in k for k in pa)             # shared with pia_anchor_grad
    assert any(not k["X"].any(axis=1).all() for k in pa)
    red = C.cases_pia_anchor_loss_reductions(np.random.default_rng(0), "tiny")
    assert {c.inputs()["reduction"] for c in red} == {"sum", "none"}


def test_bench_cpu_case_has_the_demo_size():
    (cpu,) = [c for c in C.cases_multvae_forward(np.random.default_rng(0), "bench")
              if c.where == "cpu"]
    kw = cpu.inputs()
    assert kw["X"].shape == (100, 1447) and kw["params"]["W2"].shape == (600, 400)


def test_vjps_and_outputs():
    rng = np.random.default_rng(9)
    for c in C.cases_multvae_loss(rng, "tiny"):
        kw = c.inputs()
        g = C.vjp_multvae_loss(kw, np.array(-1.7))
        assert set(g) == {"dlogits", "dmu", "dlogvar"}
        for name in ("logits", "mu", "logvar"):
            f = lambda x: M.multvae_loss(**dict(kw, **{name: x}))[0]
            np.testing.assert_allclose(g["d" + name], -1.7 * fd_grad(f, kw[name]), rtol=1e-7,
                                       atol=1e-9, err_msg=name)
    for c in C.cases_pia_anchor_loss(rng, "tiny"):
        kw = c.inputs()
        g = C.vjp_pia_anchor_loss(kw, np.array(2.5))
        for k, a in zip(("dmu", "dlogvar", "dE"), M.pia_anchor_grad(**kw)):
            np.testing.assert_allclose(g[k], 2.5 * a, rtol=1e-13, atol=1e-16)
    for c in C.cases_pia_anchor_loss_reductions(rng, "tiny"):
        kw = c.inputs()
        U = kw["mu"].shape[0]
        cot = np.array(0.7) if kw["reduction"] == "sum" else rng.normal(size=U)
        g = C.vjp_pia_anchor_loss(kw, cot)
        for name in ("mu", "logvar", "E"):
            f = lambda x: np.nansum(cot * M.pia_anchor_loss(**dict(kw, **{name: x})))
            np.testing.assert_allclose(g["d" + name], fd_grad(f, kw[name]), rtol=1e-7,
                                       atol=1e-9, err_msg=name)
    kw = C.cases_multvae_value_and_grad(rng, "tiny")[1].inputs()
    res = M.multvae_value_and_grad(**kw)
    out = C.outputs_value_and_grad(res, kw)
    assert list(out) == ["loss"] + ["d" + k for k in KEYS] + ["dE"]
    assert out["loss"] == res[0] and out["dW4"] is res[1]["W4"]


def test_all_public_names():
    assert set(M.__all__) == {"multvae_init", "multvae_draw", "multvae_forward", "multvae_loss",
                              "multvae_value_and_grad", "anneal_beta", "item_centroids",
                              "pia_anchor_loss", "pia_anchor_grad", "gaussian_w2"}
    assert all(callable(getattr(M, n)) for n in M.__all__)


# --------------------------------------------------------------------------- bad input


def test_bad_interactions():
    kw = model(0)
    X, P = kw["X"], kw["params"]
    bad = X.copy()
    bad[0, 0] = 2.0
    with pytest.raises(ValueError, match=r"X must be binary \(0/1 interactions\)"):
        M.multvae_forward(bad, P)
    with pytest.raises(ValueError, match=r"X must be binary"):
        M.multvae_loss(bad * 0.5, np.zeros(X.shape), np.zeros((4, 3)), np.zeros((4, 3)), 0.1)
    Xs = sp.csr_matrix(X)
    Xs.data[0] = 3.0
    with pytest.raises(ValueError, match=r"X must be binary .*stored CSR values other than 1"):
        M.multvae_forward(Xs, P)
    with pytest.raises(TypeError, match="CSR"):
        M.multvae_forward(sp.coo_matrix(X), P)
    with pytest.raises(TypeError, match="X must have dtype"):
        M.multvae_forward(X.astype(np.int64), P)
    with pytest.raises(ValueError, match="X must be 2-D"):
        M.multvae_forward(X[0], P)
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match="numpy reference"):
        M.multvae_forward(torch.tensor(X), P)


def test_bad_shapes_and_dtypes():
    kw = model(0)
    X, P = kw["X"], kw["params"]
    with pytest.raises(ValueError, match=r"params\['W4'\] must have shape \(H, I\) = \(5, 12\)"):
        M.multvae_forward(X, dict(P, W4=P["W4"][:, :11]))
    with pytest.raises(ValueError, match=r"params\['W1'\] must have shape \(I, H\) with I = 11"):
        M.multvae_forward(X[:, :11], P)
    with pytest.raises(ValueError, match=r"params\['W2'\] must have shape \(H, 2d\)"):
        M.multvae_forward(X, dict(P, W2=P["W2"][:, :5]))
    with pytest.raises(ValueError, match=r"params\['b3'\] must have shape \(H,\)"):
        M.multvae_forward(X, dict(P, b3=P["b3"][:4]))
    with pytest.raises(ValueError, match=r"params is missing 'W3'"):
        M.multvae_forward(X, {k: v for k, v in P.items() if k != "W3"})
    with pytest.raises(TypeError, match=r"params must be a dict"):
        M.multvae_forward(X, list(P.values()))
    with pytest.raises(TypeError, match=r"params\['b2'\] must have X's dtype \(float64\)"):
        M.multvae_forward(X, dict(P, b2=P["b2"].astype(np.float32)))
    with pytest.raises(ValueError, match=r"mask must have shape \(U, I\)"):
        M.multvae_forward(X, P, np.ones((4, 11)))
    with pytest.raises(ValueError, match=r"mask must hold only 0 and 1"):
        M.multvae_forward(X, P, np.full(X.shape, 0.5))
    with pytest.raises(ValueError, match=r"eps must have shape \(U, d\).*\(4, 3\)"):
        M.multvae_forward(X, P, None, np.zeros((4, 2)))
    with pytest.raises(ValueError, match=r"eps contains NaN or inf"):
        M.multvae_forward(X, P, None, np.full((4, 3), np.nan))
    with pytest.raises(ValueError, match=r"mask_mode must be one of"):
        M.multvae_forward(X, P, mask_mode="gaussian")
    logits, mu, lv = M.multvae_forward(X, P)
    with pytest.raises(ValueError, match=r"logits must have shape \(U, I\)"):
        M.multvae_loss(X, logits[:, :5], mu, lv, 0.2)
    with pytest.raises(ValueError, match=r"logvar must have shape \(U, d\)"):
        M.multvae_loss(X, logits, mu, lv[:, :2], 0.2)
    E = np.zeros((12, 3))
    with pytest.raises(ValueError, match=r"E must have shape \(I, d\)"):
        M.multvae_value_and_grad(X, P, 0.2, None, None, E=E[:, :2], lam_A=1.0)
    with pytest.raises(ValueError, match=r"E must have shape \(I, d\)"):
        M.pia_anchor_loss(mu, lv, X, E[:10])
    with pytest.raises(ValueError, match=r"z must have shape \(S, U, d\)"):
        M.pia_anchor_loss(mu, lv, X, E, z=np.zeros((5, 4, 2)))
    with pytest.raises(ValueError, match=r"reduction must be one of"):
        M.pia_anchor_loss(mu, lv, X, E, reduction="max")
    with pytest.raises(ValueError, match=r"s2 must have mu1's shape"):
        M.gaussian_w2(mu, lv, mu, lv[:3])
    with pytest.raises(ValueError, match=r"s1 must be >= 0"):
        M.gaussian_w2(mu, -np.ones_like(mu), mu, np.ones_like(mu))


@pytest.mark.parametrize("kp", [0.0, -0.1, 1.5, float("nan")])
def test_keep_prob_outside_the_unit_interval(kp):
    kw = model(0)
    with pytest.raises(ValueError, match=r"keep_prob must lie in \(0, 1\]"):
        M.multvae_forward(kw["X"], kw["params"], kw["mask"], kw["eps"], keep_prob=kp)
    with pytest.raises(ValueError, match=r"keep_prob must lie in \(0, 1\]"):
        M.multvae_draw(np.random.default_rng(0), 2, 3, 2, keep_prob=kp)


def test_bad_scalars():
    kw = model(0)
    with pytest.raises(ValueError, match=r"beta must be a finite number >= 0, got -0.1"):
        M.multvae_value_and_grad(**dict(kw, beta=-0.1))
    with pytest.raises(ValueError, match=r"beta must be a finite number >= 0"):
        M.multvae_loss(kw["X"], np.zeros((4, 12)), np.zeros((4, 3)), np.zeros((4, 3)), np.inf)
    with pytest.raises(ValueError, match=r"lam_A must be a finite number >= 0"):
        M.multvae_value_and_grad(**dict(kw, E=np.zeros((12, 3)), lam_A=-1.0))
    with pytest.raises(TypeError, match=r"beta must be a real number"):
        M.multvae_loss(kw["X"], np.zeros((4, 12)), np.zeros((4, 3)), np.zeros((4, 3)), "0.2")
    with pytest.raises(ValueError, match=r"step must be >= 0"):
        M.anneal_beta(-1)
    with pytest.raises(TypeError, match=r"step must be an int"):
        M.anneal_beta(1.5)
    with pytest.raises(TypeError, match=r"rng must be a numpy.random.Generator"):
        M.multvae_init(5, 0)
    with pytest.raises(ValueError, match=r"hidden must be >= 1"):
        M.multvae_init(5, np.random.default_rng(0), hidden=0)
    # a 0-d array beta is read once, as a number
    assert M.multvae_value_and_grad(**dict(kw, beta=np.array(0.3)))[0] == \
        M.multvae_value_and_grad(**kw)[0]


def test_all_empty_X_is_refused_by_pia():
    mu, lv, X, E = pia(0)
    Z = np.zeros_like(X)
    for red in ("mean", "sum", "none"):
        with pytest.raises(ValueError, match=r"X has no interactions"):
            M.pia_anchor_loss(mu, lv, Z, E, red)
    with pytest.raises(ValueError, match=r"X has no interactions"):
        M.pia_anchor_grad(mu, lv, Z, E)
    with pytest.raises(ValueError, match=r"X has no interactions"):
        M.pia_anchor_grad(mu, lv, sp.csr_matrix(Z), E)
    kw = model(0)
    with pytest.raises(ValueError, match=r"X has no interactions"):
        M.multvae_value_and_grad(**dict(kw, X=np.zeros((4, 12)), E=E, lam_A=1.0))
    # without PIA an all-empty batch is allowed (the nll is 0, the kl remains)
    loss, nll, kl = M.multvae_loss(Z, np.zeros((4, 12)), mu, lv, 1.0)
    assert nll == 0.0 and loss == kl > 0
    np.testing.assert_array_equal(M.item_centroids(Z, E), 0.0)
