"""Reference tests of the DPO-family losses and logits-SAM (preference.md sec. 11, items 1-5, 7, 8):
closed-form gradients vs the logits oracle vs finite differences, chunked == dense, masks,
conventions, logits-SAM properties, the squeezing identity, argument errors, TRL as a peer."""

import inspect
import itertools
import json
import types

import numpy as np
import pytest

from finite_diff import central
from refimpl import preference as P
from refimpl._cases import preference as C

RNG = np.random.default_rng(20261122)
LOSSES = [("sigmoid", 0.0), ("sigmoid", 0.2), ("hinge", 0.0), ("ipo", 0.0)]
BETA = 0.5


def problem(B=2, T=5, d=8, V=11, loss_type="sigmoid", bias=True, seed=0):
    rng = np.random.default_rng(seed)
    H, W, b, labels, mask = C.head_inputs(rng, B, T, d, V, bias=bias)
    mask[:, 0] = False                                  # at least one masked position per row
    mask[:, 1] = True                                   # and one completion token
    labels[:, 1] = rng.integers(0, V, size=2 * B)
    labels[~mask] = -100
    ref = C._ref_logp(rng, H, W, b, labels, mask, loss_type == "ipo")
    return dict(H=H, W=W, labels=labels, mask=mask, ref_logp=ref, beta=BETA, b=b)


def away_from_hinge(kw, loss_type):
    """Shift ref_logp so that no pair sits within 0.05 of the hinge kink u = 1."""
    if loss_type != "hinge":
        return kw
    l = P.seq_logps(kw["H"], kw["W"], kw["labels"], kw["mask"], kw["b"])
    B = l.size // 2
    ref = kw["ref_logp"].copy()
    for i in range(B):
        u = BETA * ((l[i] - ref[i]) - (l[B + i] - ref[B + i]))
        if abs(u - 1) < 0.05:
            ref[i] += 0.5 / BETA
    return dict(kw, ref_logp=ref)


def logits(kw, W=None):
    Z = kw["H"] @ (kw["W"] if W is None else W).T
    return Z if kw.get("b") is None else Z + kw["b"]


# --------------------------------------------------------------------------- 1. logits gradient


@pytest.mark.parametrize("loss_type,eps", LOSSES)
def test_logits_grad_closed_form_oracle_and_finite_differences(loss_type, eps):
    kw = away_from_hinge(problem(loss_type=loss_type), loss_type)
    Z = logits(kw)
    args = (kw["labels"], kw["mask"], kw["ref_logp"], BETA)
    opts = dict(loss_type=loss_type, label_smoothing=eps)
    L, G = P.dpo_logits_grad(Z, *args, **opts)
    L2 = P.linear_dpo_loss(kw["H"], kw["W"], kw["labels"], kw["mask"], kw["ref_logp"], BETA,
                           kw["b"], **opts)
    assert L == pytest.approx(L2, rel=1e-13, abs=1e-13)
    # closed form of sec. 4 written out independently
    m = kw["mask"].astype(float)
    R, T, V = Z.shape
    B = R // 2
    y = np.where(kw["mask"], kw["labels"], 0)
    p = np.exp(Z - Z.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    tok = np.log(np.take_along_axis(p, y[..., None], -1)[..., 0]) * m
    a = 1 / m.sum(1) if loss_type == "ipo" else np.ones(R)
    l = tok.sum(1) * a
    h = (l[:B] - kw["ref_logp"][:B]) - (l[B:] - kw["ref_logp"][B:])
    u = BETA * h
    kappa = {"sigmoid": BETA * (1 / (1 + np.exp(-u)) - 1 + eps), "hinge": -BETA * (u < 1),
             "ipo": 2 * (h - 1 / (2 * BETA))}[loss_type]
    sgn = np.concatenate([np.ones(B), -np.ones(B)])
    onehot = np.eye(V)[y]
    G_cf = (sgn * np.tile(kappa, 2) / B * a)[:, None, None] * m[..., None] * (onehot - p)
    np.testing.assert_allclose(G, G_cf, rtol=0, atol=1e-14)
    # central finite differences on every logit
    f = lambda Zx: P.dpo_logits_grad(Zx, *args, **opts)[0]
    fd = np.zeros_like(Z)
    for idx in np.ndindex(Z.shape):
        E = np.zeros_like(Z)
        E[idx] = 1.0
        fd[idx] = central(f, Z, E, 1e-5)
    assert np.abs(fd - G).max() <= 1e-8


@pytest.mark.parametrize("loss_type,eps", LOSSES)
def test_dpo_loss_grad_matches_finite_differences_on_both_sides_of_the_hinge(loss_type, eps):
    # u = beta h in {-2, 0.5, 0.95, 1.05, 1.15, 3}: both sides of the hinge kink, none at it
    u = np.array([-2.0, 0.5, 0.95, 1.05, 1.15, 3.0])
    B = u.size
    rng = np.random.default_rng(23)
    ref = -10 + rng.normal(size=2 * B)
    logp = ref.copy()
    logp[:B] += u / BETA
    L, dlogp = P.dpo_loss_grad(logp, ref, BETA, loss_type=loss_type, label_smoothing=eps)
    assert L == P.dpo_loss(logp, ref, BETA, loss_type=loss_type, label_smoothing=eps)[0]
    f = lambda x: P.dpo_loss(x, ref, BETA, loss_type=loss_type, label_smoothing=eps)[0]
    fd = np.array([central(f, logp, np.eye(2 * B)[i]) for i in range(2 * B)])
    assert np.abs(fd - dlogp).max() <= 1e-8
    if loss_type == "hinge":
        np.testing.assert_array_equal(dlogp[:B] != 0, u < 1)


# --------------------------------------------------------------------------- 2. linear head


@pytest.mark.parametrize("loss_type,eps", LOSSES)
def test_linear_grad_is_the_composition_and_matches_finite_differences(loss_type, eps):
    kw = away_from_hinge(problem(loss_type=loss_type, seed=1), loss_type)
    opts = dict(loss_type=loss_type, label_smoothing=eps)
    H, W, b = kw["H"], kw["W"], kw["b"]
    args = (kw["labels"], kw["mask"], kw["ref_logp"], BETA)
    L, dH, dW, db = P.linear_dpo_loss_grad(H, W, *args, b, **opts)
    _, G = P.dpo_logits_grad(logits(kw), *args, **opts)
    d = H.shape[-1]
    np.testing.assert_allclose(dH, G @ W, atol=1e-14)
    np.testing.assert_allclose(dW, G.reshape(-1, W.shape[0]).T @ H.reshape(-1, d), atol=1e-14)
    np.testing.assert_allclose(db, G.sum((0, 1)), atol=1e-14)
    rng = np.random.default_rng(5)
    for name, x, g in (("H", H, dH), ("W", W, dW), ("b", b, db)):
        E = rng.normal(size=x.shape)

        def f(xx, name=name):
            k = {**dict(H=H, W=W, b=b), name: xx}
            return P.linear_dpo_loss(k["H"], k["W"], *args, k["b"], **opts)

        assert central(f, x, E) == pytest.approx((g * E).sum(), abs=1e-8)


def test_no_bias_gives_db_none():
    kw = problem(bias=False)
    out = P.linear_dpo_loss_grad(kw["H"], kw["W"], kw["labels"], kw["mask"], kw["ref_logp"], BETA)
    assert out[3] is None
    assert P.logits_sam_dpo_grad(kw["H"], kw["W"], kw["labels"], kw["mask"], kw["ref_logp"], BETA,
                                 0.01)["db"] is None


@pytest.mark.parametrize("loss_type,eps", LOSSES)
def test_chunked_equals_dense(loss_type, eps):
    kw = problem(B=3, T=7, d=6, V=23, loss_type=loss_type, seed=2)
    opts = dict(loss_type=loss_type, label_smoothing=eps)
    head = (kw["H"], kw["W"], kw["labels"], kw["mask"])
    args = head + (kw["ref_logp"], BETA, kw["b"])
    dense = P.linear_dpo_loss_grad(*args, **opts)
    l_dense = P.seq_logps(*head, kw["b"], average=loss_type == "ipo")
    for tc, vc in itertools.product((None, 1, 4, 7, 100), (None, 1, 5, 22, 23, 50)):
        if tc is None and vc is None:
            continue
        ch = dict(token_chunk=tc, vocab_chunk=vc)
        np.testing.assert_allclose(P.seq_logps(*head, kw["b"], average=loss_type == "ipo", **ch),
                                   l_dense, rtol=1e-12, atol=1e-12)
        got = P.linear_dpo_loss_grad(*args, **opts, **ch)
        for g, w in zip(got, dense):
            np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------- 3. masks


def test_masked_positions_change_nothing_and_get_zero_dH():
    kw = problem(B=2, T=6, d=5, V=13, seed=3)
    m = kw["mask"]
    args = lambda k: (k["H"], k["W"], k["labels"], k["mask"], k["ref_logp"], BETA, k["b"])
    L, dH, dW, db = P.linear_dpo_loss_grad(*args(kw))
    assert np.all(dH[~m] == 0.0)
    labels = kw["labels"].copy()
    labels[~m] = np.random.default_rng(0).integers(0, 13, size=(~m).sum())
    H = kw["H"].copy()
    H[~m] = np.nan                                     # never read
    for k in (dict(kw, labels=labels), dict(kw, H=H)):
        L2, dH2, dW2, db2 = P.linear_dpo_loss_grad(*args(k))
        assert L2 == L
        np.testing.assert_array_equal(dW2, dW)
        np.testing.assert_array_equal(db2, db)
        np.testing.assert_array_equal(dH2[m], dH[m])
    # the float {0, 1} mask is the same as the bool mask
    L3 = P.linear_dpo_loss(*args(dict(kw, mask=m.astype(np.float64))))
    assert L3 == L


def test_empty_completion_gives_zero_logp_and_ipo_refuses():
    kw = problem(seed=4)
    mask = kw["mask"].copy()
    mask[1] = False
    l = P.seq_logps(kw["H"], kw["W"], kw["labels"], mask, kw["b"])
    assert l[1] == 0.0
    with pytest.raises(ValueError, match="empty completion"):
        P.linear_dpo_loss(kw["H"], kw["W"], kw["labels"], mask, kw["ref_logp"], BETA, kw["b"],
                          loss_type="ipo")
    with pytest.raises(ValueError, match="empty completion"):
        P.seq_logps(kw["H"], kw["W"], kw["labels"], mask, average=True)


# --------------------------------------------------------------------------- 4. conventions


def test_swapping_halves_negates_h_and_flips_smoothing():
    rng = np.random.default_rng(6)
    B = 5
    logp, ref = -20 + 3 * rng.normal(size=2 * B), -20 + 3 * rng.normal(size=2 * B)
    swap = lambda v: np.concatenate([v[B:], v[:B]])
    for eps in (0.0, 0.1, 0.3):
        L, cr, rr = P.dpo_loss(logp, ref, BETA, label_smoothing=eps)
        Ls, crs, rrs = P.dpo_loss(swap(logp), swap(ref), BETA, label_smoothing=1 - eps)
        assert Ls == pytest.approx(L, rel=1e-13)
        np.testing.assert_allclose(crs, rr, rtol=1e-15)
        np.testing.assert_allclose(rrs, cr, rtol=1e-15)
    # h -> -h shows directly in the IPO loss: (h - 1/(2 beta))^2 -> (h + 1/(2 beta))^2
    h = (logp[:B] - ref[:B]) - (logp[B:] - ref[B:])
    Li = P.dpo_loss(swap(logp), swap(ref), BETA, loss_type="ipo")[0]
    assert Li == pytest.approx(np.mean((-h - 1 / (2 * BETA)) ** 2), rel=1e-13)


def test_rewards_and_explicit_sigmoid_value():
    logp = np.array([-10.0, -12.0, -11.0, -9.0])
    ref = np.array([-10.5, -11.0, -10.0, -10.0])
    L, cr, rr = P.dpo_loss(logp, ref, 0.1)
    np.testing.assert_allclose(cr, 0.1 * np.array([0.5, -1.0]))
    np.testing.assert_allclose(rr, 0.1 * np.array([-1.0, 1.0]))
    u = 0.1 * np.array([1.5, -2.0])
    assert L == pytest.approx(np.mean(np.log1p(np.exp(-u))), rel=1e-14)
    assert P.dpo_loss(logp, ref, 0.1, loss_type="hinge")[0] == pytest.approx(np.mean(1 - u))
    _, dlogp = P.dpo_loss_grad(logp, ref, 0.1)
    kappa = 0.1 * (1 / (1 + np.exp(-u)) - 1)
    np.testing.assert_allclose(dlogp, np.concatenate([kappa, -kappa]) / 2, rtol=1e-14)


def test_duplicating_the_batch_keeps_the_mean_and_a_duplicated_completion_doubles_l():
    kw = problem(B=2, T=6, seed=7)
    B = 2
    dup = lambda x: np.concatenate([x[:B], x[:B], x[B:], x[B:]])  # chosen first
    L = P.linear_dpo_loss(kw["H"], kw["W"], kw["labels"], kw["mask"], kw["ref_logp"], BETA, kw["b"])
    L2 = P.linear_dpo_loss(dup(kw["H"]), kw["W"], dup(kw["labels"]), dup(kw["mask"]),
                           dup(kw["ref_logp"]), BETA, kw["b"])
    assert L2 == pytest.approx(L, rel=1e-14)
    # a row made of its completion twice (prompt tokens dropped) has twice the log-prob
    l = P.seq_logps(kw["H"], kw["W"], kw["labels"], kw["mask"], kw["b"])
    m = kw["mask"]
    H2 = np.concatenate([kw["H"], kw["H"]], axis=1)
    y2 = np.concatenate([kw["labels"], kw["labels"]], axis=1)
    m2 = np.concatenate([m, m], axis=1)
    l2 = P.seq_logps(H2, kw["W"], y2, m2, kw["b"])
    np.testing.assert_allclose(l2, 2 * l, rtol=1e-14)
    # IPO averages: the token mean is unchanged
    np.testing.assert_allclose(P.seq_logps(H2, kw["W"], y2, m2, kw["b"], average=True),
                               l / m.sum(1), rtol=1e-14)


# --------------------------------------------------------------------------- 5. logits-SAM


def sam(kw, rho, **opts):
    return P.logits_sam_dpo_grad(kw["H"], kw["W"], kw["labels"], kw["mask"], kw["ref_logp"], BETA,
                                 rho, kw["b"], **opts)


@pytest.mark.parametrize("loss_type,eps", LOSSES)
def test_sam_rho_zero_is_dpo(loss_type, eps):
    kw = problem(loss_type=loss_type, seed=8)
    opts = dict(loss_type=loss_type, label_smoothing=eps)
    out = sam(kw, 0.0, **opts)
    L, dH, dW, db = P.linear_dpo_loss_grad(kw["H"], kw["W"], kw["labels"], kw["mask"],
                                           kw["ref_logp"], BETA, kw["b"], **opts)
    assert out["loss_post"] == out["loss_pre"] == L
    np.testing.assert_array_equal(out["eps_W"], 0.0)
    for k, v in (("dH", dH), ("dW", dW), ("db", db)):
        np.testing.assert_allclose(out[k], v, rtol=0, atol=1e-15)
    assert out["loss_post"] == P.logits_sam_dpo(kw["H"], kw["W"], kw["labels"], kw["mask"],
                                                kw["ref_logp"], BETA, 0.0, kw["b"], **opts)


@pytest.mark.parametrize("loss_type,eps", LOSSES)
def test_sam_step_matches_its_definition(loss_type, eps):
    """eps_W = rho g_W / ||g_W||, ||eps_W|| = rho, Z' = H (W + eps)^T + b with b unperturbed,
    dW = G'^T H, dH = G' (W + eps), db = sum G', rewards at Z'."""
    kw = problem(loss_type=loss_type, seed=9)
    opts = dict(loss_type=loss_type, label_smoothing=eps)
    args = (kw["labels"], kw["mask"], kw["ref_logp"], BETA)
    rho = 0.05
    out = sam(kw, rho, **opts)
    L0, G0 = P.dpo_logits_grad(logits(kw), *args, **opts)
    d, V = kw["H"].shape[-1], kw["W"].shape[0]
    Hf = kw["H"].reshape(-1, d)
    g_W = G0.reshape(-1, V).T @ Hf
    n = np.linalg.norm(g_W)
    assert out["loss_pre"] == pytest.approx(L0, rel=1e-13)
    assert out["grad_norm"] == pytest.approx(n, rel=1e-12)
    np.testing.assert_allclose(out["eps_W"], rho * g_W / n, rtol=1e-12, atol=1e-16)
    assert np.linalg.norm(out["eps_W"]) == pytest.approx(rho, rel=1e-12)
    W1 = kw["W"] + out["eps_W"]
    L1, G1 = P.dpo_logits_grad(logits(kw, W1), *args, **opts)   # logits() adds the same b
    assert out["loss_post"] == pytest.approx(L1, rel=1e-13)
    G1f = G1.reshape(-1, V)
    np.testing.assert_allclose(out["dW"], G1f.T @ Hf, atol=1e-14)
    np.testing.assert_allclose(out["dH"], G1 @ W1, atol=1e-14)
    np.testing.assert_allclose(out["db"], G1f.sum(0), atol=1e-14)
    lin = P.linear_dpo_loss_grad(kw["H"], W1, *args, kw["b"], **opts)
    assert lin[0] == pytest.approx(out["loss_post"], rel=1e-13)
    _, cr, rr = P.dpo_loss(P.seq_logps(kw["H"], W1, kw["labels"], kw["mask"], kw["b"],
                                       average=loss_type == "ipo"), kw["ref_logp"], BETA,
                           loss_type=loss_type, label_smoothing=eps)
    np.testing.assert_allclose(out["chosen_rewards"], cr, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(out["rejected_rewards"], rr, rtol=1e-12, atol=1e-14)


def test_sam_gram_identity_and_gram_path():
    kw = problem(seed=10)
    args = (kw["labels"], kw["mask"], kw["ref_logp"], BETA)
    rho = 0.05
    out = sam(kw, rho)
    d, V = kw["H"].shape[-1], kw["W"].shape[0]
    Hf = kw["H"].reshape(-1, d)
    _, G0 = P.dpo_logits_grad(logits(kw), *args)
    G0f = G0.reshape(-1, V)
    K = Hf @ Hf.T
    n = np.sqrt(np.sum((G0f @ G0f.T) * K))
    assert n == pytest.approx(out["grad_norm"], rel=1e-12)
    Zp = logits(kw) + (rho / n) * (K @ G0f).reshape(logits(kw).shape)
    np.testing.assert_allclose(Zp, logits(kw, kw["W"] + out["eps_W"]), rtol=0, atol=1e-12)
    for ch in ({}, dict(token_chunk=3, vocab_chunk=4)):
        g = sam(kw, rho, delta="gram", **ch)
        assert g["eps_W"] is None
        for k in ("loss_pre", "loss_post", "grad_norm", "dH", "dW", "db", "chosen_rewards",
                  "rejected_rewards"):
            np.testing.assert_allclose(g[k], out[k], rtol=1e-12, atol=1e-14, err_msg=k)


@pytest.mark.parametrize("opts", [{}, dict(adaptive=True), dict(loss_type="ipo")])
def test_sam_chunked_equals_dense(opts):
    kw = problem(B=3, T=7, d=6, V=23, seed=11, loss_type=opts.get("loss_type", "sigmoid"))
    dense = sam(kw, 0.05, **opts)
    for tc, vc in ((1, 1), (4, 5), (7, 50), (None, 22), (100, None)):
        got = sam(kw, 0.05, token_chunk=tc, vocab_chunk=vc, **opts)
        for k, v in dense.items():
            np.testing.assert_allclose(got[k], v, rtol=1e-12, atol=1e-12, err_msg=k)


def test_sam_adaptive_scales_by_abs_W():
    kw = problem(seed=12)
    rho = 0.05
    out = sam(kw, rho, adaptive=True)
    g_W = sam(kw, 1.0)["eps_W"] * sam(kw, 1.0)["grad_norm"]      # = G0^T H
    a = g_W * np.abs(kw["W"])
    np.testing.assert_allclose(out["eps_W"], rho * a / np.linalg.norm(a), rtol=1e-12, atol=1e-16)
    assert out["grad_norm"] == pytest.approx(np.linalg.norm(a), rel=1e-12)


def test_sam_gradients_are_finite_differences_of_L_post_with_eps_frozen():
    kw = problem(seed=13)
    out = sam(kw, 0.05)
    eps_W = out["eps_W"]
    args = (kw["labels"], kw["mask"], kw["ref_logp"], BETA)
    rng = np.random.default_rng(14)

    def L_post(H, W, b):
        return P.linear_dpo_loss(H, W + eps_W, *args, b)

    for name, g in (("H", out["dH"]), ("W", out["dW"]), ("b", out["db"])):
        E = rng.normal(size=g.shape)
        x = kw[name]

        def f(xx, name=name):
            k = {**dict(H=kw["H"], W=kw["W"], b=kw["b"]), name: xx}
            return L_post(k["H"], k["W"], k["b"])

        assert central(f, x, E) == pytest.approx((g * E).sum(), abs=1e-8)


def test_sam_slope_tends_to_grad_norm():
    kw = problem(seed=15)
    errs = []
    for rho in (1e-4, 1e-5):
        out = sam(kw, rho)
        slope = (out["loss_post"] - out["loss_pre"]) / rho
        errs.append(abs(slope - out["grad_norm"]) / out["grad_norm"])
    assert errs[0] < 1e-2 and errs[1] < 1e-3 and errs[1] < errs[0]


def test_sam_zero_mask_no_nan():
    kw = problem(seed=16)
    out = sam(dict(kw, mask=np.zeros_like(kw["mask"])), 0.05)
    np.testing.assert_array_equal(out["eps_W"], 0.0)
    assert out["grad_norm"] == 1e-12
    for k, v in out.items():
        assert np.all(np.isfinite(v)), k
    np.testing.assert_array_equal(out["dW"], 0.0)
    assert out["loss_post"] == out["loss_pre"]


def test_sam_bias_never_perturbed():
    kw = problem(seed=17)
    rho = 0.05
    out = sam(kw, rho)
    b2 = kw["b"] + 3.0                       # softmax is invariant to a constant shift of b
    out2 = sam(dict(kw, b=b2), rho)
    np.testing.assert_allclose(out2["eps_W"], out["eps_W"], rtol=1e-10, atol=1e-15)
    # eps depends on W's gradient only: a zero-bias run with the same W gives the same eps
    out3 = sam(dict(kw, b=np.zeros_like(kw["b"])), rho)
    W1 = kw["W"] + out3["eps_W"]
    Lb = P.linear_dpo_loss(kw["H"], W1, kw["labels"], kw["mask"], kw["ref_logp"], BETA)
    assert out3["loss_post"] == pytest.approx(Lb, rel=1e-13)
    assert set(out) == {"loss_pre", "loss_post", "grad_norm", "eps_W", "dH", "dW", "db",
                        "chosen_rewards", "rejected_rewards"}


# --------------------------------------------------------------------------- 7. squeezing


def test_squeeze_first_order_identity():
    rng = np.random.default_rng(18)
    z = rng.normal(size=30) * 2
    p = np.exp(z - z.max())
    p /= p.sum()
    k = int(np.argmin(p))
    eta = 1e-5
    pred = P.squeeze_first_order(p, k, eta)
    z2 = z - eta * (np.eye(30)[k] - p)
    exact = (z2 - np.log(np.exp(z2).sum())) - (z - np.log(np.exp(z).sum()))
    np.testing.assert_allclose(pred, exact, rtol=1e-5)
    gain = pred > 0
    gain[k] = False
    np.testing.assert_array_equal(gain, (p > (p ** 2).sum() - p[k]) & (np.arange(30) != k))
    assert gain[np.argmax(p)]


# --------------------------------------------------------------------------- errors


def test_errors_name_the_argument():
    kw = problem(seed=19)
    H, W, y, m, ref, b = kw["H"], kw["W"], kw["labels"], kw["mask"], kw["ref_logp"], kw["b"]
    with pytest.raises(ValueError, match="rho"):
        P.logits_sam_dpo(H, W, y, m, ref, BETA, -1e-3, b)
    with pytest.raises(TypeError, match="rho"):
        P.logits_sam_dpo(H, W, y, m, ref, BETA, None, b)
    with pytest.raises(ValueError, match="label_smoothing"):
        P.linear_dpo_loss(H, W, y, m, ref, BETA, b, loss_type="hinge", label_smoothing=0.1)
    with pytest.raises(ValueError, match="label_smoothing"):
        P.dpo_loss(ref, ref, BETA, loss_type="ipo", label_smoothing=0.1)
    for beta in (0.0, -1.0):
        with pytest.raises(ValueError, match="beta"):
            P.dpo_loss(ref, ref, beta)
    with pytest.raises(ValueError, match="R = 2B|even"):
        P.seq_logps(H[:3], W, y[:3], m[:3])
    with pytest.raises(ValueError, match="logp"):
        P.dpo_loss(ref[:3], ref[:3], BETA)
    bad = y.copy()
    bad[m] = W.shape[0]
    with pytest.raises(ValueError, match="labels"):
        P.seq_logps(H, W, bad, m)
    with pytest.raises(ValueError, match="loss_type"):
        P.dpo_loss(ref, ref, BETA, loss_type="kto")
    with pytest.raises(ValueError, match="delta"):
        P.logits_sam_dpo(H, W, y, m, ref, BETA, 0.1, delta="full")
    with pytest.raises(ValueError, match="W must have shape"):
        P.seq_logps(H, W[:, :3], y, m)
    with pytest.raises(ValueError, match="b must have shape"):
        P.seq_logps(H, W, y, m, b[:3])
    with pytest.raises(ValueError, match="mask must have shape"):
        P.seq_logps(H, W, y, m[:, :2])
    with pytest.raises(ValueError, match="mask"):
        P.seq_logps(H, W, y, m * 2.0)
    with pytest.raises(TypeError, match="labels"):
        P.seq_logps(H, W, y.astype(float), m)
    with pytest.raises(ValueError, match="ref_logp"):
        P.linear_dpo_loss(H, W, y, m, ref[:2], BETA)
    with pytest.raises(ValueError, match="token_chunk"):
        P.seq_logps(H, W, y, m, token_chunk=0)
    with pytest.raises(ValueError, match="gram"):
        P.logits_sam_dpo(H, W, y, m, ref, BETA, 0.1, delta="gram", adaptive=True)
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match="H"):
        P.seq_logps(torch.as_tensor(H), W, y, m)


# --------------------------------------------------------------------------- registry cases


@pytest.mark.parametrize("fn", [C.cases_seq_logps, C.cases_dpo_loss, C.cases_linear_dpo,
                                C.cases_logits_sam])
def test_cases_run_and_vjps_are_consistent(fn):
    rng = np.random.default_rng(21)
    cases = fn(rng, "tiny") + fn(rng, "small")
    labels = [c.label for c in cases]
    assert len(set(labels)) == len(labels)
    ref = {C.cases_seq_logps: P.seq_logps, C.cases_dpo_loss: P.dpo_loss,
           C.cases_linear_dpo: P.linear_dpo_loss, C.cases_logits_sam: P.logits_sam_dpo}[fn]
    vjp = {C.cases_seq_logps: C.vjp_seq_logps, C.cases_dpo_loss: C.vjp_dpo_loss,
           C.cases_linear_dpo: C.vjp_linear_dpo, C.cases_logits_sam: C.vjp_logits_sam}[fn]
    if fn is C.cases_logits_sam:  # the VJP holds eps frozen: the derivative only up to O(rho)
        cases = [c for c in cases if c.inputs()["rho"] <= 1e-3]
    for case in cases[:4]:
        kw = case.inputs()
        assert kw["mask"].dtype == bool if "mask" in kw else True
        out = ref(**kw)
        val = out[0] if isinstance(out, tuple) else out
        assert np.all(np.isfinite(val))
        cot = np.random.default_rng(0).random(np.shape(val))
        g = vjp(kw, cot)
        # directional derivative of <cot, f> along a random direction vs central differences
        for name, gv in g.items():
            x = kw[name[1:]]
            E = np.random.default_rng(1).normal(size=x.shape)

            def f(xx, name=name, kw=kw, cot=cot):
                o = ref(**{**kw, name[1:]: xx})
                return float(np.sum(cot * (o[0] if isinstance(o, tuple) else o)))

            assert central(f, x, E) == pytest.approx(float((gv * E).sum()), rel=1e-6, abs=1e-7), \
                (case.label, name)
    bench = fn(rng, "bench")
    assert {c.where for c in bench} <= {"cpu", "gpu"}


# --------------------------------------------------------------------------- 8. TRL peer


@pytest.mark.parametrize("loss_type,eps", [("sigmoid", 0.0), ("sigmoid", 0.1), ("hinge", 0.0),
                                           ("ipo", 0.0)])
def test_trl_dpo_loss_peer(loss_type, eps):
    trl = pytest.importorskip("trl")
    torch = pytest.importorskip("torch")
    if not trl.__version__.startswith("0.23"):
        pytest.skip(f"TRL peer pinned to 0.23.x (installed {trl.__version__})")
    from trl import DPOConfig, DPOTrainer

    rng = np.random.default_rng(22)
    B = 4
    logp, ref = -20 + 3 * rng.normal(size=2 * B), -20 + 3 * rng.normal(size=2 * B)
    L, cr, rr = P.dpo_loss(logp, ref, BETA, loss_type=loss_type, label_smoothing=eps)
    trainer = DPOTrainer.__new__(DPOTrainer)          # dpo_loss reads only a few attributes
    trainer.beta, trainer.loss_type, trainer.label_smoothing = BETA, [loss_type], eps
    trainer.args = DPOConfig(output_dir="/tmp/trl_peer", beta=BETA, loss_type=loss_type,
                             label_smoothing=eps, report_to=[])
    trainer.f_divergence_type, trainer.f_alpha_divergence_coef = "reverse_kl", 1.0
    trainer.reference_free, trainer.use_weighting = False, False
    trainer.accelerator = types.SimpleNamespace(device=torch.device("cpu"))
    t = lambda v: torch.as_tensor(v, dtype=torch.float64)
    extra = ({"loss_type": loss_type}
             if "loss_type" in inspect.signature(trainer.dpo_loss).parameters else {})
    losses, crt, rrt = trainer.dpo_loss(t(logp[:B]), t(logp[B:]), t(ref[:B]), t(ref[B:]), **extra)
    assert float(losses.mean()) == pytest.approx(L, rel=1e-10)
    np.testing.assert_allclose(crt.numpy(), cr, rtol=1e-10)
    np.testing.assert_allclose(rrt.numpy(), rr, rtol=1e-10)


# --------------------------------------------------------------------------- the squeezing demo


def test_squeezing_demo_shows_the_effect(tmp_path, monkeypatch):
    """A shortened run of ``refimpl demo squeezing``: plain DPO's mean chosen log-prob rises
    then ends below its start, the rejected token is pushed down, the argmax gains mass;
    logits-SAM rho = 10 ends with a higher chosen log-prob on separate contexts (beyond two
    standard errors) but not on near-identical ones; the first-order identity holds; the plot
    and the JSON are written."""
    pytest.importorskip("matplotlib")
    from refimpl.demos import squeezing as demo

    monkeypatch.setattr(demo, "SEEDS", (0, 1, 2))
    monkeypatch.setattr(demo, "STEPS", 600)
    out = demo.run(tmp_path)
    assert (tmp_path / "squeezing.png").stat().st_size > 10_000
    assert json.loads((tmp_path / "squeezing.json").read_text()) == json.loads(json.dumps(out))
    start, peak, end = out["verdicts"]["dpo_chosen_start_peak_end"]
    assert peak > start + 0.2 and end < start                    # rise, then squeezed below
    assert out["verdicts"]["squeezing"]
    assert out["first_order_identity_max_rel_err"] < 1e-4
    curves = out["curves"]["DPO"]
    assert curves["rejected_mean"][-1] < curves["rejected_mean"][0] - 5   # DPO pushes y- down
    assert curves["argmax_mass_mean"][-1] > curves["argmax_mass_mean"][0]  # mass to the argmax
    damped = out["verdicts"]["logits-SAM rho=10"]
    assert damped["baseline"] == "DPO" and damped["damps"]
    assert damped["final_chosen_minus_dpo"] > 0.3
    near = out["verdicts"]["logits-SAM rho=10, near-identical contexts"]
    assert near["baseline"] == "DPO, near-identical contexts" and not near["damps"]


def test_squeezing_demo_gradients_are_the_chain_rule():
    """The toy's (dA, dW) against central finite differences of the DPO loss in A and W, and
    logits-SAM with rho = 0 equal to plain DPO's."""
    from refimpl.demos import squeezing as demo

    toy = demo.Toy(0)
    A, W = toy.A0, toy.W0

    def loss(A, W):
        Hs = toy.hidden(A)
        return P.linear_dpo_loss(Hs[:, None], W, toy.labels, toy.mask, toy.ref_logp, 0.1)

    dA, dW = toy.dpo_grads(A, W, 0.1)
    rng = np.random.default_rng(0)
    for X, dX, which in ((A, dA, 0), (W, dW, 1)):
        D = rng.normal(size=X.shape)
        h = 1e-6
        args_p, args_m = [A, W], [A, W]
        args_p[which], args_m[which] = X + h * D, X - h * D
        fd = (loss(*args_p) - loss(*args_m)) / (2 * h)
        assert abs(fd - (dX * D).sum()) <= 1e-7 * max(1.0, abs(fd))
    sA, sW = toy.logits_sam_grads(A, W, 0.1, 0.0)
    np.testing.assert_allclose(sA, dA, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(sW, dW, rtol=1e-12, atol=1e-15)


def test_squeezing_demo_head_only_logits_sam_is_sam():
    """With the body frozen, logits-SAM's head gradient is SAM's: the plain DPO gradient at
    W + rho dW / ||dW||_F."""
    from refimpl.demos import squeezing as demo

    toy = demo.Toy(1)
    A, W, rho = toy.A0, toy.W0, 2.0
    _, dW = toy.dpo_grads(A, W, 0.1)
    _, sam_dW = toy.dpo_grads(A, W + rho * dW / np.linalg.norm(dW), 0.1)
    _, ls_dW = toy.logits_sam_grads(A, W, 0.1, rho)
    np.testing.assert_allclose(ls_dW, sam_dW, rtol=1e-12, atol=1e-15)


def test_squeezing_demo_chosen_per_margin_is_the_directional_ratio():
    """``chosen_per_margin`` at the states after 0 and 5 steps: the ratio of the directional
    derivatives of the mean chosen log-prob and of the mean margin along the probed update,
    against central differences with a different step; the state after k steps is ``train``'s
    last record."""
    from refimpl.demos import squeezing as demo

    toy = demo.Toy(2)
    for steps, probe in ((0, "dpo"), (5, "logits_sam")):
        curve, (A, W) = demo.train(toy, "logits_sam", demo.BETA, 10.0, steps, record_every=1)
        np.testing.assert_allclose(toy.record(A, W), curve[-1], rtol=0, atol=0)
        dA, dW = toy.grads(A, W, probe, demo.BETA, 10.0)
        h = 1e-6
        d = (np.array(toy.record(A - h * dA, W - h * dW))
             - np.array(toy.record(A + h * dA, W + h * dW))) / (2 * h)
        want = d[0] / d[3]
        got = demo.chosen_per_margin(toy, A, W, probe, 10.0)
        assert abs(got - want) <= 2e-3 * abs(want), (steps, probe, got, want)
