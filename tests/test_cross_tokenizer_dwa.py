"""Reference tests of DWA-KD (cross_tokenizer.md Acceptance items 1-6): per-token divergences
(zeros, skew limits, closed-form gradients vs central finite differences), the token weights and
their documented 1e-9 quirk, the soft gate, cross-model attention (normalisation, masking, and
finite differences vs a plain torch autograd implementation), the soft band, the DWA Soft-DTW loss
(vs ``soft_dtw_divergence`` per pair, position rules, empty pairs, finite differences, the gamma
schedule), the whole loss vs an independent loop implementation, the registry cases, and the
argument errors."""

import math

import numpy as np
import pytest

from refimpl import _dwa_kd as D
from refimpl._cases import dwa_kd as C
from refimpl.softdtw import soft_dtw_divergence
from finite_diff import fd_grad

KINDS = C.KINDS
TINY = C.TINY  # (B, N', M', d_s, d_t, V_S, V_T)


def rng(seed=0):
    return np.random.default_rng(seed)


# --------------------------------------------------------------------------- 1. kd_divergence


@pytest.mark.parametrize("kind", ["forward_kl", "reverse_kl", "skewed_forward_kl",
                                  "skewed_reverse_kl", "js"])
def test_kd_divergence_zero_on_equal_logits(kind):
    z = 3.0 * rng(1).normal(size=(2, 6, 11))
    div = D.kd_divergence(z, z.copy(), kind=kind, tau=2.0)
    assert div.shape == (2, 6)
    # js carries 1e-9 terms inside the logs: |js| <= ~1e-9 per token, not exactly 0
    assert np.abs(div).max() < (1e-8 if kind == "js" else 1e-14)


def test_kd_divergence_adaptive_zero_on_equal_logits():
    z = rng(2).normal(size=(4, 11))
    assert np.abs(D.kd_divergence(z, z, kind="adaptive_kl", adaptive_alpha=0.5)).max() < 1e-14


def test_skew_zero_gives_plain_kl():
    z_s, z_t = C._logit_pair(rng(3), (3, 7, 13))
    for skewed, plain in (("skewed_reverse_kl", "reverse_kl"), ("skewed_forward_kl", "forward_kl")):
        for tau in (1.0, 2.0):
            a = D.kd_divergence_grad(z_s, z_t, kind=skewed, skew=0.0, tau=tau)
            b = D.kd_divergence_grad(z_s, z_t, kind=plain, tau=tau)
            np.testing.assert_allclose(a[0], b[0], rtol=1e-12, atol=1e-14)
            np.testing.assert_allclose(a[1], b[1], rtol=1e-10, atol=1e-13)


def test_kd_divergence_closed_forms_and_temperatures():
    """Per-token values against explicit formulas, including tea_temp and the tau scaling."""
    z_s, z_t = C._logit_pair(rng(4), (5, 9))
    tau, tt, l = 2.0, 1.5, 0.1
    p = np.exp(z_s / tau) / np.exp(z_s / tau).sum(-1, keepdims=True)
    q = np.exp(z_t / tau / tt) / np.exp(z_t / tau / tt).sum(-1, keepdims=True)
    want = {
        "forward_kl": (q * np.log(q / p)).sum(-1),
        "reverse_kl": (p * np.log(p / q)).sum(-1),
        "skewed_forward_kl": (q * np.log(q / (l * q + (1 - l) * p))).sum(-1),
        "skewed_reverse_kl": (p * np.log(p / ((1 - l) * q + l * p))).sum(-1),
    }
    for kind, w in want.items():
        got = D.kd_divergence(z_s, z_t, kind=kind, tau=tau, tea_temp=tt, use_tea_temp=True, skew=l)
        np.testing.assert_allclose(got, w, rtol=1e-12)
    # tea_temp is ignored unless use_tea_temp
    a = D.kd_divergence(z_s, z_t, kind="reverse_kl", tea_temp=3.0)
    b = D.kd_divergence(z_s, z_t, kind="reverse_kl")
    np.testing.assert_array_equal(a, b)


def test_adaptive_kl_weights():
    """alpha = 0: no tail, so the adaptive KL is the forward KL; otherwise a convex mix."""
    z_s, z_t = C._logit_pair(rng(5), (6, 11))
    fkl = D.kd_divergence(z_s, z_t, kind="forward_kl")
    rkl = D.kd_divergence(z_s, z_t, kind="reverse_kl")
    np.testing.assert_allclose(D.kd_divergence(z_s, z_t, kind="adaptive_kl", adaptive_alpha=0.0),
                               fkl, rtol=1e-13)
    mid = D.kd_divergence(z_s, z_t, kind="adaptive_kl", adaptive_alpha=0.5)
    assert np.all(mid >= np.minimum(fkl, rkl) - 1e-14) and np.all(mid <= np.maximum(fkl, rkl) + 1e-14)


def test_infinite_entries_contribute_zero():
    """The code masks the (..., V) terms of infinite logits before the sum (per entry)."""
    z_s, z_t = C._logit_pair(rng(6), (3, 8))
    z_s[:, 2] = -np.inf
    got = D.kd_divergence(z_s, z_t, kind="forward_kl", tau=1.0)
    p = np.exp(z_s - z_s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    q = np.exp(z_t - z_t.max(-1, keepdims=True))
    q /= q.sum(-1, keepdims=True)
    keep = np.arange(8) != 2
    want = (q[:, keep] * np.log(q[:, keep] / p[:, keep])).sum(-1)
    np.testing.assert_allclose(got, want, rtol=1e-12)
    for kind in ("reverse_kl", "skewed_reverse_kl", "js"):
        assert np.all(np.isfinite(D.kd_divergence(z_s, z_t, kind=kind)))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("tau", [1.0, 2.0])
def test_kd_divergence_grad_vs_finite_differences(kind, tau):
    z_s, z_t = C._logit_pair(rng(7), (2, 3, 11))
    kw = dict(kind=kind, tau=tau, adaptive_alpha=0.4 if kind == "adaptive_kl" else None)
    cot = rng(8).normal(size=(2, 3))
    div, dz = D.kd_divergence_grad(z_s, z_t, **kw)
    np.testing.assert_array_equal(div, D.kd_divergence(z_s, z_t, **kw))
    if kind == "adaptive_kl":
        # the code detaches g_head, g_tail: differentiate with the weights frozen at z_s
        p = np.exp(z_s / tau) / np.exp(z_s / tau).sum(-1, keepdims=True)
        q = np.exp(z_t / tau) / np.exp(z_t / tau).sum(-1, keepdims=True)
        wh, wt = D._adaptive_weights(p, q, 0.4)

        def f(z):
            fk = D.kd_divergence(z, z_t, kind="forward_kl", tau=tau)
            rk = D.kd_divergence(z, z_t, kind="reverse_kl", tau=tau)
            return float((cot * (wh * fk + wt * rk)).sum())
    else:
        def f(z):
            return float((cot * D.kd_divergence(z, z_t, **kw)).sum())
    np.testing.assert_allclose(cot[..., None] * dz, fd_grad(f, z_s), rtol=1e-6, atol=1e-9)


# --------------------------------------------------------------------------- 2. weights, gate


def test_entropy_weights_mean_one_per_row():
    z = 3.0 * rng(9).normal(size=(4, 12, 17))
    mask = C.token_mask(rng(10), 4, 12)
    mask[3] = False
    w = D.entropy_weights(z, mask)
    assert np.all(w[~mask] == 0.0) and np.all(w[mask] > 0)
    for b in range(3):
        assert abs(w[b][mask[b]].mean() - 1.0) < 1e-6
    assert np.all(w[3] == 0)


def test_certainty_weights_uniform_quirk():
    """Uniform teacher logits give c ~ 5e-9 (the 1e-9 terms), so an all-uniform row still
    normalises to w ~ 0.96 each (V = 13, 5 positions); a confident position takes ~5."""
    V = 13
    H = -math.log(1.0 / V + 1e-9)              # -sum_v (1/V) log(1/V + 1e-9)
    c = 1.0 - H / (math.log(V) + 1e-9)
    assert 4e-9 < c < 7e-9
    z = np.zeros((2, 5, V))
    z[1, 0, 3] = 50.0
    mask = np.ones((2, 5), dtype=bool)
    w = D.certainty_weights(z, mask)
    np.testing.assert_allclose(w[0], 5 * c / (5 * c + 1e-9), rtol=1e-6)
    assert np.all(np.abs(w[0] - 0.96) < 0.01)
    assert abs(w[1, 0] - 5.0) < 1e-6
    assert np.all(w[1, 1:] < 1e-7)
    mask[0, 2] = False
    assert D.certainty_weights(z, mask)[0, 2] == 0.0


def test_kd_gate_warmup():
    z = 2.0 * rng(11).normal(size=(2, 6, 11))
    mask = C.token_mask(rng(12), 2, 6)
    p = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
    maxp = p.max(-1) * mask
    np.testing.assert_allclose(D.kd_gate(z, mask, 0), maxp / 300, rtol=1e-14)
    np.testing.assert_allclose(D.kd_gate(z, mask, 149), maxp / 2, rtol=1e-14)
    for step in (299, 300, 10_000):
        np.testing.assert_allclose(D.kd_gate(z, mask, step), maxp, rtol=1e-14)
    np.testing.assert_allclose(D.kd_gate(z, mask, 0, warmup=0), maxp, rtol=1e-14)


# --------------------------------------------------------------------------- 3. cma_align


def tiny_problem(seed=0, prompt=True, sizes=TINY):
    """A tiny DWA-KD batch: ids, labels (-100 on prompt/padding), embeddings, projectors."""
    B, N, M, d_s, d_t, V_S, V_T = sizes
    r = rng(seed)
    mu = C.token_mask(r, B, N, prompt=prompt)
    nu = C.token_mask(r, B, M, prompt=prompt)
    E_S, E_T = r.normal(size=(V_S, d_s)), r.normal(size=(V_T, d_t))
    ids_s, ids_t = r.integers(0, V_S, (B, N)), r.integers(0, V_T, (B, M))
    ys = np.where(mu, r.integers(0, V_S, (B, N)), -100)
    yt = np.where(nu, r.integers(0, V_T, (B, M)), -100)
    ys0, yt0 = np.where(mu, ys, 0), np.where(nu, yt, 0)

    def lin(d_in, d_out):
        return (r.normal(size=(d_out, d_in)) / math.sqrt(d_in), 0.1 * r.normal(size=d_out))

    proj = {"query": lin(2 * d_s, 2 * d_t), "t2s": lin(d_t, d_s), "s2t": lin(d_s, d_t),
            "dtw_embed_t2s": lin(d_t, d_s)}
    W_s, W_t = r.normal(size=(V_S, d_s)), r.normal(size=(V_T, d_t))
    H_s, H_t = r.normal(size=(B, N, d_s)), r.normal(size=(B, M, d_t))
    return dict(z_s=H_s @ W_s.T + r.normal(size=(B, N, V_S)), z_t=2.0 * H_t @ W_t.T,
                labels_s=ys, labels_t=yt, H_s=H_s, H_t=H_t,
                e_s_in=E_S[np.where(mu, ids_s, 0)], e_s_tgt=E_S[ys0],
                e_t_in=E_T[np.where(nu, ids_t, 0)], e_t_tgt=E_T[yt0],
                proj=proj, W_s=W_s, W_t=W_t), mu, nu


def cma_kwargs(p, mu, nu):
    return dict(e_s_in=p["e_s_in"], e_s_tgt=p["e_s_tgt"], e_t_in=p["e_t_in"], e_t_tgt=p["e_t_tgt"],
                H_s=p["H_s"], H_t=p["H_t"], mask_s=mu, mask_t=nu, proj=p["proj"], W_s=p["W_s"],
                W_t=p["W_t"])


def test_cma_rows_sum_to_one_and_masked_keys():
    p, mu, nu = tiny_problem(1)
    out = D.cma_align(**cma_kwargs(p, mu, nu))
    B, N, M = 2, TINY[1], TINY[2]
    assert out["A_t2s"].shape == (B, N, M) and out["A_s2t"].shape == (B, M, N)
    assert out["z_t2s"].shape == (B, N, TINY[5]) and out["z_s2t"].shape == (B, M, TINY[6])
    np.testing.assert_allclose(out["A_t2s"].sum(-1), 1.0, atol=1e-14)
    np.testing.assert_allclose(out["A_s2t"].sum(-1), 1.0, atol=1e-14)
    for b in range(B):
        assert out["A_t2s"][b][np.ix_(mu[b], ~nu[b])].max(initial=0.0) < 1e-30
        assert out["A_s2t"][b][np.ix_(nu[b], ~mu[b])].max(initial=0.0) < 1e-30


def torch_cma(t, p, mu, nu, params):
    """DSKD cross-model attention written directly in torch (float64)."""
    T = lambda x: t.as_tensor(np.asarray(x, dtype=np.float64))
    (Wq, bq), (Wt2s, bt2s), (Ws2t, bs2t) = params
    s_idx = t.cat([T(p["e_s_in"]), T(p["e_s_tgt"])], -1)
    t_idx = t.cat([T(p["e_t_in"]), T(p["e_t_tgt"])], -1)
    H_s, H_t, e_t_tgt = T(p["H_s"]), T(p["H_t"]), T(p["e_t_tgt"])
    q = t.nn.functional.linear(s_idx, Wq, bq)
    k = t_idx / t_idx.std()
    v_t2s = t.nn.functional.linear(H_t / H_t.std() + e_t_tgt / e_t_tgt.std(), Wt2s, bt2s)
    v_s2t = t.nn.functional.linear(H_s, Ws2t, bs2t)
    a = q.matmul(k.transpose(-1, -2)) / math.sqrt(2 * H_t.shape[-1])
    amask = T(mu).unsqueeze(-1) * T(nu).unsqueeze(1)
    a = a + (1.0 - amask) * (-100000)
    A_t2s = t.softmax(a, -1)
    A_s2t = t.softmax(a.transpose(-1, -2), -1)
    return dict(A_t2s=A_t2s, A_s2t=A_s2t, z_t2s=A_t2s.matmul(v_t2s).matmul(T(p["W_s"]).T),
                z_s2t=A_s2t.matmul(v_s2t).matmul(T(p["W_t"]).T))


def test_cma_align_finite_differences_match_torch_autograd():
    torch = pytest.importorskip("torch")
    p, mu, nu = tiny_problem(2)
    keys = ("query", "t2s", "s2t")
    params = [tuple(torch.tensor(np.asarray(x), dtype=torch.float64, requires_grad=True)
                    for x in p["proj"][k]) for k in keys]
    out_t = torch_cma(torch, p, mu, nu, params)
    ref = D.cma_align(**cma_kwargs(p, mu, nu))
    for name in ref:
        np.testing.assert_allclose(out_t[name].detach().numpy(), ref[name], rtol=1e-11, atol=1e-13)
    r = rng(3)
    cots = {name: r.normal(size=ref[name].shape) for name in ref}
    scalar = sum((out_t[n] * torch.as_tensor(cots[n])).sum() for n in ref)
    scalar.backward()

    def f_of(k, slot):
        def f(x):
            proj = dict(p["proj"])
            pair = list(proj[k])
            pair[slot] = x
            proj[k] = tuple(pair)
            out = D.cma_align(**dict(cma_kwargs(p, mu, nu), proj=proj))
            return float(sum((out[n] * cots[n]).sum() for n in out))
        return f

    for k, pair in zip(keys, params):
        for slot in (0, 1):
            # h 1e-4: the -1e5 mask offset costs ~1e-11 of absolute precision in a_ij
            fd = fd_grad(f_of(k, slot), np.asarray(p["proj"][k][slot], dtype=np.float64),
                         h=1e-4)
            np.testing.assert_allclose(pair[slot].grad.numpy(), fd, rtol=1e-6, atol=1e-6,
                                       err_msg=f"proj[{k!r}][{slot}]")


# --------------------------------------------------------------------------- 4. band penalty


def band_loop(A, alpha, w0, kappa, rho):
    """The band by explicit loops (returns P and the centres)."""
    n, m = A.shape
    P, centres = np.zeros((n, m)), np.zeros(n)
    for i in range(n):
        s = sum(A[i]) + 1e-9
        Ab = [(A[i, j] + 1e-9) / s for j in range(m)]
        h = -sum(a * math.log(a) for a in Ab)
        c = alpha * sum(j * Ab[j] for j in range(m)) + (1 - alpha) * i * m / n
        centres[i] = c
        for j in range(m):
            P[i, j] = rho if abs(j - c) > w0 + kappa * h else 0.0
    return P, centres


def test_cma_band_penalty_properties():
    for case in C.cases_cma_band_penalty(rng(4), "small"):
        kw = case.inputs()
        A = kw["A"]
        args = {k: kw[k] for k in ("alpha", "w0", "kappa", "rho")}
        P = D.cma_band_penalty(A, **args)
        want, centres = band_loop(A, **args)
        np.testing.assert_array_equal(P, want)
        assert set(np.unique(P)) <= {0.0, args["rho"]}
        cols = np.clip(np.rint(centres), 0, A.shape[1] - 1).astype(int)
        assert np.all(P[np.arange(A.shape[0]), cols] == 0.0)  # w0 >= 0.5 in these cases
        assert np.all(D.cma_band_penalty(A, **dict(args, rho=0.0)) == 0.0)
        assert np.all(D.cma_band_penalty(A, **dict(args, w0=float(A.shape[1]))) == 0.0)
    assert np.any(P > 0)  # the last case bites


# --------------------------------------------------------------------------- 5. dwa_dtw_loss


def per_pair_reference(kw):
    """Sum over pairs of soft_dtw_divergence(kind="cosine", penalty=P_b) on gathered blocks."""
    X, Y, ms, mt, A = kw["X"], kw["Y"], kw["mask_s"], kw["mask_t"], kw.get("A")
    band = dict(alpha=kw.get("alpha", 0.7), w0=kw.get("w0", 5.0), kappa=kw.get("kappa", 2.0),
                rho=kw.get("rho", 1.0))
    total = 0.0
    for b in range(X.shape[0]):
        if kw.get("positions", "mask") == "mask":
            si, tj = np.flatnonzero(ms[b]), np.flatnonzero(mt[b])
        else:
            si, tj = np.arange(ms[b].sum()), np.arange(mt[b].sum())
        if si.size == 0 or tj.size == 0:
            continue
        use_band = kw.get("band", True) and A is not None and band["w0"] > 0
        P = band_loop(A[b][np.ix_(si, tj)], **band)[0] if use_band else None
        total += float(soft_dtw_divergence(X[b, si], Y[b, tj], kw["gamma"], kind="cosine",
                                           penalty=P))
    return total


def test_dwa_dtw_loss_equals_per_pair_divergences():
    for case in C.cases_dwa_dtw_loss(rng(5), "small") + C.cases_dwa_dtw_loss(rng(6), "tiny"):
        kw = case.inputs()
        got = D.dwa_dtw_loss(**kw)
        assert got.shape == ()
        np.testing.assert_allclose(got, per_pair_reference(kw), rtol=1e-12, err_msg=case.label)
        v, dX, dY = D.dwa_dtw_loss_grad(**kw)
        assert v == got
        if kw.get("positions", "mask") == "mask":
            assert np.all(dX[~kw["mask_s"]] == 0) and np.all(dY[~kw["mask_t"]] == 0)


def test_dwa_dtw_band_changes_value():
    kw = C.cases_dwa_dtw_loss(rng(7), "tiny")[0].inputs()
    with_band = float(D.dwa_dtw_loss(**kw))
    without = float(D.dwa_dtw_loss(**dict(kw, band=False)))
    assert with_band > without >= -1e-12  # P >= 0 raises the cross term; D_0 >= 0


def test_prefix_equals_mask_without_prompt():
    kw = C._dtw_inputs(rng(8), 3, 7, 6, 4, "mask", (0.5, 0.5), prompt=False)
    a = D.dwa_dtw_loss_grad(**kw, gamma=0.5, positions="mask", w0=0.5, kappa=0.5)
    b = D.dwa_dtw_loss_grad(**kw, gamma=0.5, positions="prefix", w0=0.5, kappa=0.5)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    # with a prompt they differ
    kw = C._dtw_inputs(rng(9), 3, 7, 6, 4, "mask", (0.5, 0.5))
    kw["mask_s"][:, 0], kw["mask_s"][:, 1] = False, True
    assert D.dwa_dtw_loss(**kw, gamma=0.5, positions="mask") != \
        D.dwa_dtw_loss(**kw, gamma=0.5, positions="prefix")


def test_empty_pairs_and_unread_positions():
    kw = C._dtw_inputs(rng(10), 2, 6, 5, 4, "mask", (5.0, 2.0))
    empty = dict(kw, mask_s=np.zeros_like(kw["mask_s"]))
    v, dX, dY = D.dwa_dtw_loss_grad(**empty, gamma=1.0)
    assert float(v) == 0.0 and not dX.any() and not dY.any()
    one = dict(kw, mask_t=kw["mask_t"].copy())
    one["mask_t"][1] = False                      # pair 1 empty: only pair 0 counts
    only0 = {k: (v[:1] if isinstance(v, np.ndarray) else v) for k, v in kw.items()}
    np.testing.assert_allclose(D.dwa_dtw_loss(**one, gamma=1.0),
                               D.dwa_dtw_loss(**only0, gamma=1.0), rtol=1e-14)
    # positions="mask" never reads the other positions of X, Y
    X, Y = kw["X"].copy(), kw["Y"].copy()
    X[~kw["mask_s"]], Y[~kw["mask_t"]] = np.nan, np.nan
    np.testing.assert_array_equal(D.dwa_dtw_loss(**dict(kw, X=X, Y=Y), gamma=1.0),
                                  D.dwa_dtw_loss(**kw, gamma=1.0))


@pytest.mark.parametrize("positions", ["mask", "prefix"])
def test_dwa_dtw_loss_grad_vs_finite_differences(positions):
    kw = dict(C._dtw_inputs(rng(11), 2, 6, 5, 4, positions, (0.5, 0.5)), gamma=0.7,
              positions=positions, w0=0.5, kappa=0.5, rho=1.5)
    _, dX, dY = D.dwa_dtw_loss_grad(**kw)
    fX = fd_grad(lambda x: float(D.dwa_dtw_loss(**dict(kw, X=x))), kw["X"])
    fY = fd_grad(lambda y: float(D.dwa_dtw_loss(**dict(kw, Y=y))), kw["Y"])
    np.testing.assert_allclose(dX, fX, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(dY, fY, rtol=1e-6, atol=1e-8)


def test_dwa_gamma_schedule():
    g0, g1 = 2.0, 0.8
    assert D.dwa_gamma(0) == pytest.approx(g0 + (g1 - g0) / 3570, rel=1e-15)
    assert D.dwa_gamma(3569) == pytest.approx(g1, rel=1e-15)
    assert D.dwa_gamma(3570) == D.dwa_gamma(10**6) == pytest.approx(g1, rel=1e-15)
    assert D.dwa_gamma(1784) == pytest.approx((g0 + g1) / 2, rel=1e-15)
    assert D.dwa_gamma(50, gamma0=1.0, steps=0) == 1.0


# --------------------------------------------------------------------------- 6. dwa_kd_loss


def softmax_list(z):
    m = max(z)
    e = [math.exp(v - m) for v in z]
    s = sum(e)
    return [v / s for v in e]


def std_all(x):
    flat = np.asarray(x, dtype=np.float64).ravel().tolist()
    mean = sum(flat) / len(flat)
    return math.sqrt(sum((v - mean) ** 2 for v in flat) / (len(flat) - 1))


def entropy_list(p):
    return -sum(v * math.log(v + 1e-9) for v in p)


def loop_dwa_kd_loss(p, step, variant, positions, rates=(0.5, 0.5, 0.2), tau=2.0, skew=0.1):
    """DWA-KD (sec. 2, 4-6) written token by token, independent of refimpl._dwa_kd."""
    z_s, z_t, ys, yt = p["z_s"], p["z_t"], p["labels_s"], p["labels_t"]
    B, N, V_S = z_s.shape
    M, V_T = z_t.shape[1:]
    d_t = p["H_t"].shape[-1]
    mu, nu = ys != -100, yt != -100
    (Wq, bq), (Wt2s, bt2s), (Ws2t, bs2t) = (p["proj"][k] for k in ("query", "t2s", "s2t"))
    We, be = p["proj"]["dtw_embed_t2s"]
    s_k = std_all(np.concatenate([p["e_t_in"], p["e_t_tgt"]], -1))
    s_H, s_E = std_all(p["H_t"]), std_all(p["e_t_tgt"])
    ce = t2s_ce = t2s_kd = s2t_kd = dtw = 0.0
    for b in range(B):
        q = [Wq @ np.concatenate([p["e_s_in"][b, i], p["e_s_tgt"][b, i]]) + bq for i in range(N)]
        k = [np.concatenate([p["e_t_in"][b, j], p["e_t_tgt"][b, j]]) / s_k for j in range(M)]
        v_t2s = [Wt2s @ (p["H_t"][b, j] / s_H + p["e_t_tgt"][b, j] / s_E) + bt2s for j in range(M)]
        v_s2t = [Ws2t @ p["H_s"][b, i] + bs2t for i in range(N)]
        a = [[float(q[i] @ k[j]) / math.sqrt(2 * d_t) - 1e5 * (1 - mu[b, i] * nu[b, j])
              for j in range(M)] for i in range(N)]
        A_t2s = [softmax_list(a[i]) for i in range(N)]
        A_s2t = [softmax_list([a[i][j] for i in range(N)]) for j in range(M)]
        # weights
        Hs = [entropy_list(softmax_list(z_s[b, i])) for i in range(N)]
        n_row = max(int(mu[b].sum()), 1)
        ssum = sum(Hs[i] for i in range(N) if mu[b, i]) + 1e-9
        cert = [min(max(1 - entropy_list(softmax_list(z_t[b, j])) / (math.log(V_T) + 1e-9), 0), 1)
                for j in range(M)]
        m_row = max(int(nu[b].sum()), 1)
        csum = sum(cert[j] for j in range(M) if nu[b, j]) + 1e-9
        for i in range(N):
            if not mu[b, i]:
                continue
            y = ys[b, i]
            zt2s = W_dot(p["W_s"], sum(A_t2s[i][j] * v_t2s[j] for j in range(M)))
            ce -= math.log(softmax_list(z_s[b, i])[y])
            pt = softmax_list(zt2s)
            t2s_ce -= math.log(pt[y])
            ps = softmax_list([v / tau for v in z_s[b, i]])
            qs = softmax_list([v / tau for v in zt2s])
            div = sum(ps[v] * (math.log(ps[v]) - math.log((1 - skew) * qs[v] + skew * ps[v]))
                      for v in range(V_S))
            if variant == "dwa":
                gate = max(pt) * min(1.0, (step + 1) / 300)
                t2s_kd += (n_row * Hs[i] / ssum) * gate * div
            elif int(np.argmax(zt2s)) == y:
                t2s_kd += div
        for j in range(M):
            if not nu[b, j]:
                continue
            zs2t = W_dot(p["W_t"], sum(A_s2t[j][i] * v_s2t[i] for i in range(N)))
            qt = softmax_list([v / tau for v in z_t[b, j]])
            ps = softmax_list([v / tau for v in zs2t])
            kl = sum(qt[v] * (math.log(qt[v]) - math.log(ps[v])) for v in range(V_T))
            s2t_kd += (m_row * cert[j] / csum if variant == "dwa" else 1.0) * kl
        # sequence level
        gamma = 2.0 + (0.8 - 2.0) * min(1.0, (step + 1) / 3570)
        if positions == "mask":
            si, tj = [i for i in range(N) if mu[b, i]], [j for j in range(M) if nu[b, j]]
        else:
            si, tj = list(range(int(mu[b].sum()))), list(range(int(nu[b].sum())))
        if si and tj:
            Ab = np.array([[A_t2s[i][j] for j in tj] for i in si])
            P = band_loop(Ab, 0.7, 5.0, 2.0, 1.0)[0]
            for X, Y in ((p["e_s_tgt"][b], [We @ p["e_t_tgt"][b, j] + be for j in range(M)]),
                         (p["H_s"][b], [Wt2s @ p["H_t"][b, j] + bt2s for j in range(M)])):
                x = np.array([X[i] for i in si])
                y = np.array([Y[j] for j in tj])
                dtw += float(soft_dtw_divergence(x, y, gamma, kind="cosine", penalty=P))
    kd = t2s_ce + t2s_kd + s2t_kd
    n_tok = int(mu.sum())
    loss = (rates[0] * ce + rates[1] * kd + rates[2] * dtw) / n_tok
    return loss, dict(ce=ce, t2s_ce=t2s_ce, t2s_kd=t2s_kd, s2t_kd=s2t_kd, kd=kd, dtw=dtw)


def W_dot(W, h):
    return [float(W[v] @ h) for v in range(W.shape[0])]


LONGER = (2, 16, 18, 4, 6, 11, 13)  # long enough for the default band (w0 = 5) to bite


@pytest.mark.parametrize("variant,positions,step,seed,sizes", [
    ("dwa", "mask", 0, 0, TINY), ("dwa", "prefix", 450, 1, TINY), ("dskd", "mask", 7, 2, TINY),
    ("dwa", "mask", 5000, 3, LONGER)])
def test_dwa_kd_loss_matches_loop_implementation(variant, positions, step, seed, sizes):
    p, mu, nu = tiny_problem(seed, sizes=sizes)
    if variant == "dskd":  # make some t2s predictions hit the label so the hard mask matters
        cma = D.cma_align(**cma_kwargs(p, mu, nu))
        hit = cma["z_t2s"].argmax(-1)
        p["labels_s"] = np.where(mu, np.where(np.arange(sizes[1]) % 2 == 0, hit,
                                              p["labels_s"]), -100)
    if sizes == LONGER:  # sharper attention (larger queries): the band is active here
        Wq, bq = p["proj"]["query"]
        p["proj"]["query"] = (8.0 * Wq, bq)
        A = D.cma_align(**cma_kwargs(p, mu, nu))["A_t2s"]
        assert any(D.cma_band_penalty(A[b][np.ix_(mu[b], nu[b])]).any() for b in range(2))
    loss, parts = D.dwa_kd_loss(**p, step=step, variant=variant, positions=positions)
    want, wparts = loop_dwa_kd_loss(p, step, variant, positions)
    np.testing.assert_allclose(loss, want, rtol=1e-10)
    for k, v in wparts.items():
        np.testing.assert_allclose(parts[k], v, rtol=1e-10, atol=1e-12, err_msg=k)
    assert parts["dtw"] == pytest.approx(parts["dtw_emb"] + parts["dtw_hid"], rel=1e-14)
    assert parts["gamma"] == D.dwa_gamma(step) and parts["n_tok"] == (p["labels_s"] != -100).sum()
    if variant == "dskd":
        assert parts["t2s_kd"] > 0


def test_dwa_kd_loss_rates():
    p, _, _ = tiny_problem(3)
    _, parts = D.dwa_kd_loss(**p, step=10)
    loss, parts0 = D.dwa_kd_loss(**p, step=10, rates=(1.0, 0.0, 0.0))
    assert parts0["dtw"] == 0.0
    np.testing.assert_allclose(loss, parts["ce"] / parts["n_tok"], rtol=1e-14)


# --------------------------------------------------------------------------- registry cases


OPS = {"kd_divergence": (C.cases_kd_divergence, C.vjp_kd_divergence, D.kd_divergence_grad),
       "entropy_weights": (C.cases_entropy_weights, None, None),
       "certainty_weights": (C.cases_certainty_weights, None, None),
       "kd_gate": (C.cases_kd_gate, None, None),
       "cma_band_penalty": (C.cases_cma_band_penalty, None, None),
       "dwa_dtw_loss": (C.cases_dwa_dtw_loss, C.vjp_dwa_dtw_loss, D.dwa_dtw_loss_grad)}


@pytest.mark.parametrize("name", list(OPS))
@pytest.mark.parametrize("scale", ["tiny", "small"])
def test_registry_cases_run(name, scale):
    cases, vjp, grad = OPS[name]
    for case in cases(rng(12), scale):
        kw = case.inputs()
        out = np.asarray(getattr(D, name)(**kw))
        assert np.all(np.isfinite(out)), case.label
        if grad is not None:
            g = grad(**kw)
            np.testing.assert_array_equal(g[0], out)
            cot = np.ones(out.shape)
            for key, val in vjp(kw, cot).items():
                np.testing.assert_array_equal(val, g[1] if key in ("dz_s", "dX") else g[2])
    bench = cases(rng(12), "bench")
    assert {c.where for c in bench} == {"cpu", "gpu"} and all(callable(c.kwargs) for c in bench)


def test_registry_band_margin():
    """Cases keep the band away from its thresholds (float32 cannot flip a penalty entry)."""
    for case in C.cases_dwa_dtw_loss(rng(13), "small"):
        kw = case.inputs()
        for b, (si, tj) in enumerate(C._blocks(kw["mask_s"], kw["mask_t"],
                                               kw.get("positions", "mask"))):
            if si.size and tj.size:
                A32 = kw["A"].astype(np.float32).astype(np.float64)[b][np.ix_(si, tj)]
                P64 = D.cma_band_penalty(kw["A"][b][np.ix_(si, tj)], w0=kw["w0"],
                                         kappa=kw["kappa"])
                np.testing.assert_array_equal(D.cma_band_penalty(A32, w0=kw["w0"],
                                                                 kappa=kw["kappa"]), P64)


# --------------------------------------------------------------------------- errors


def test_bad_inputs():
    z = rng(14).normal(size=(2, 3, 5))
    mask = np.ones((2, 3), dtype=bool)
    with pytest.raises(ValueError, match="kind must be one of"):
        D.kd_divergence(z, z, kind="kl")
    with pytest.raises(ValueError, match="tau must be a finite number > 0"):
        D.kd_divergence(z, z, tau=0.0)
    with pytest.raises(ValueError, match="needs adaptive_alpha"):
        D.kd_divergence(z, z, kind="adaptive_kl")
    with pytest.raises(ValueError, match="z_t must have z_s's shape"):
        D.kd_divergence(z, z[..., :4])
    with pytest.raises(ValueError, match="skew must lie in"):
        D.kd_divergence(z, z, skew=1.5)
    with pytest.raises(TypeError, match="dtype"):
        D.kd_divergence(z.astype(np.int64), z.astype(np.int64))
    with pytest.raises(ValueError, match="mask must hold only 0 and 1"):
        D.entropy_weights(z, np.full((2, 3), 0.5))
    with pytest.raises(ValueError, match=r"mask must have shape \(2, 3\)"):
        D.certainty_weights(z, np.ones((2, 4), dtype=bool))
    with pytest.raises(ValueError, match="z_t2s must be 3-D"):
        D.kd_gate(z[0], mask[0], 0)
    with pytest.raises(ValueError, match="step must be >= 0"):
        D.kd_gate(z, mask, -1)
    with pytest.raises(ValueError, match="alpha .* must lie in"):
        D.cma_band_penalty(np.ones((3, 3)), alpha=1.5)
    with pytest.raises(ValueError, match="attention weights"):
        D.cma_band_penalty(-np.ones((3, 3)))
    with pytest.raises(ValueError, match="gamma0 must be a finite number > 0"):
        D.dwa_gamma(0, gamma0=0.0)
    kw = dict(C._dtw_inputs(rng(15), 2, 6, 5, 4, "mask", (5.0, 2.0)), gamma=1.0)
    with pytest.raises(ValueError, match="positions must be one of"):
        D.dwa_dtw_loss(**kw, positions="first")
    with pytest.raises(ValueError, match="gamma must be a finite number > 0"):
        D.dwa_dtw_loss(**dict(kw, gamma=0.0))
    with pytest.raises(ValueError, match=r"A must have shape \(2, 6, 5\)"):
        D.dwa_dtw_loss(**dict(kw, A=kw["A"][:, :, :4]))
    with pytest.raises(ValueError, match="mask_t must have shape"):
        D.dwa_dtw_loss(**dict(kw, mask_t=kw["mask_t"][:, :4]))
    with pytest.raises(ValueError, match="same feature size"):
        D.dwa_dtw_loss(**dict(kw, Y=kw["Y"][..., :3]))
    with pytest.raises(ValueError, match="must be batched"):
        D.dwa_dtw_loss(**dict(kw, X=kw["X"][0], Y=kw["Y"][0]))
    p, mu, nu = tiny_problem(4)
    bad = dict(p["proj"])
    del bad["t2s"]
    with pytest.raises(ValueError, match="holding 't2s'"):
        D.cma_align(**dict(cma_kwargs(p, mu, nu), proj=bad))
    bad = dict(p["proj"], query=(p["proj"]["query"][0].T, p["proj"]["query"][1]))
    with pytest.raises(ValueError, match=r"proj\['query'\] weight must have shape"):
        D.cma_align(**dict(cma_kwargs(p, mu, nu), proj=bad))
    with pytest.raises(ValueError, match="e_t_tgt must have shape"):
        D.cma_align(**dict(cma_kwargs(p, mu, nu), e_t_tgt=p["e_t_tgt"][:, :3]))
    labels = p["labels_s"].copy()
    labels[labels != -100] = 99
    with pytest.raises(ValueError, match=r"labels_s must be -100 \(ignored\) or lie in"):
        D.dwa_kd_loss(**dict(p, labels_s=labels), step=0)
    with pytest.raises(ValueError, match="variant must be one of"):
        D.dwa_kd_loss(**p, step=0, variant="ulD")
    with pytest.raises(ValueError, match="no adaptive_alpha"):
        D.dwa_kd_loss(**p, step=0, kind="adaptive_kl")
    with pytest.raises(TypeError, match="rates must be a triple"):
        D.dwa_kd_loss(**p, step=0, rates=(0.5, 0.5))


def test_torch_tensors_refused():
    torch = pytest.importorskip("torch")
    z = torch.zeros(2, 3, 5, dtype=torch.float64)
    with pytest.raises(TypeError, match="numpy reference"):
        D.kd_divergence(z, z)
