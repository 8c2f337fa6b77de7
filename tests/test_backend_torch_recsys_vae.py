"""Torch backend of the recsys_vae family (Mult-VAE arXiv 1802.05814 + PIA arXiv 2511.06781,
spec recsys_vae.md): signatures equal to the reference's; every function against the float64
NumPy reference (:mod:`refimpl._multvae`, :mod:`refimpl._recsys_eval`) in float64 (1e-10) and
float32 (atol 1e-5 / rtol 5e-4); ``torch.autograd.gradcheck`` of the fused nll Function;
autograd of ``multvae_value_and_grad`` against the reference's explicit backward; sparse CSR X
== dense X; the saved tensors of the fused loss (no second U x I tensor, no softmax); metrics
against a transcription of the notebook's ``Recall_at_k_batch`` / ``NDCG_binary_at_k_batch``
(tie-free scores) and against the reference on heavily tied scores (lower index first); one
host read per validated call; bad input raising the reference's exception and message."""

import inspect

import numpy as np
import pytest

import backends

torch = pytest.importorskip("torch")
if backends.reason("torch") is not None:
    pytest.skip(f"backend torch: {backends.reason('torch')}", allow_module_level=True)

import scipy.sparse as sp
from torch_testing import close_to, npy, raises_like_reference, saved_numels, tt, up

from backends.torch import recsys_vae as S
from refimpl import _multvae as RM
from refimpl import _recsys_eval as RE

pytestmark = pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta state")

F64, F32, BF16 = torch.float64, torch.float32, torch.bfloat16
TOL = {F64: (1e-10, 1e-10), F32: (1e-5, 5e-4)}     # (atol, rtol)
KEYS = ("W1", "b1", "W2", "b2", "W3", "b3", "W4", "b4")
PUBLIC = ("multvae_forward", "multvae_loss", "multvae_value_and_grad", "anneal_beta",
          "item_centroids", "pia_anchor_loss", "pia_anchor_grad", "gaussian_w2")
METRICS = ("recall_at_k", "ndcg_at_k")


def csr(X, dtype=F64):
    return tt(X, dtype).to_sparse_csr()


assert_close = close_to(TOL)


def model_case(U=6, I=12, H=5, d=3, seed=0, empty_row=True, scale=1.0):
    """X binary with one empty user (``empty_row``), params (reference init, biases and
    weights perturbed so that nothing is near 0), mask, eps."""
    rng = np.random.default_rng(seed)
    X = (rng.random((U, I)) < 0.35).astype(np.float64)
    X[0, :3] = 1.0                                   # every case has interactions
    if empty_row:
        X[U // 2] = 0.0
    P = RM.multvae_init(I, rng, hidden=H, latent=d)
    P = {k: scale * (v + 0.3 * rng.normal(size=v.shape)) for k, v in P.items()}
    mask, eps = RM.multvae_draw(rng, U, I, latent=d, keep_prob=0.5)
    E = 0.5 * rng.normal(size=(I, d))
    return X, P, mask, eps, E


def tparams(P, dtype=F64):
    return {k: tt(v, dtype) for k, v in P.items()}


def uparams(P):
    return {k: up(v) for k, v in P.items()}


# --------------------------------------------------------------------------- signatures


def test_signatures_equal_reference():
    assert set(S.__all__) == set(PUBLIC + METRICS)
    for name in PUBLIC:
        assert inspect.signature(getattr(S, name)) == inspect.signature(getattr(RM, name)), name
    for name in METRICS:
        assert inspect.signature(getattr(S, name)) == inspect.signature(getattr(RE, name)), name


# --------------------------------------------------------------------------- forward and loss


MODES = [(None, None, "dropout"), ("m", None, "dropout"), (None, "e", "dropout"),
         ("m", "e", "dropout"), ("m", "e", "bernoulli"), (None, None, "bernoulli")]


@pytest.mark.parametrize("dtype", [F64, F32])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("sparse", [False, True])
def test_forward_and_loss_vs_reference(dtype, mode, sparse):
    X, P, mask, eps, _ = model_case(seed=1)
    m = mask if mode[0] else None
    e = eps if mode[1] else None
    Xt = csr(X, dtype) if sparse else tt(X, dtype)
    Pt = tparams(P, dtype)
    mt = None if m is None else tt(m, dtype)
    et = None if e is None else tt(e, dtype)
    got = S.multvae_forward(Xt, Pt, mt, et, 0.7, mode[2])
    want = RM.multvae_forward(X, uparams(Pt), m, None if et is None else up(et), 0.7, mode[2])
    for g, w in zip(got, want):
        assert g.dtype == dtype and g.layout == torch.strided
        assert_close(g, w, dtype)
    logits, mu, logvar = got
    loss = S.multvae_loss(Xt, logits, mu, logvar, 0.3)
    want = RM.multvae_loss(X, up(logits), up(mu), up(logvar), 0.3)
    for g, w in zip(loss, want):
        assert g.dim() == 0 and g.dtype == dtype
        assert_close(g, w, dtype)


@pytest.mark.parametrize("dtype", [F64, F32])
@pytest.mark.parametrize("sparse", [False, True])
def test_loss_autograd_vs_reference_vjp(dtype, sparse):
    """Autograd through the fused nll (custom backward) and the KL equals the closed form of
    spec sec. 2: dlogits = (softmax n_u - X) / U, dmu = beta mu / U,
    dlogvar = beta (exp(logvar) - 1) / (2 U)."""
    X, *_ = model_case(U=7, I=13, seed=2)
    rng = np.random.default_rng(3)
    lg, mu, lv = rng.normal(size=(7, 13)) * 3, rng.normal(size=(7, 3)), rng.normal(size=(7, 3))
    leaves = [tt(x, dtype).requires_grad_(True) for x in (lg, mu, lv)]
    beta, U = 0.4, 7
    loss, _, _ = S.multvae_loss(csr(X, dtype) if sparse else tt(X, dtype), *leaves, beta)
    loss.backward()
    lgu = up(leaves[0])
    sm = np.exp(lgu - lgu.max(1, keepdims=True))
    sm /= sm.sum(1, keepdims=True)
    assert_close(leaves[0].grad, (sm * X.sum(1)[:, None] - X) / U, dtype)
    assert_close(leaves[1].grad, beta * up(leaves[1]) / U, dtype)
    assert_close(leaves[2].grad, beta * (np.exp(up(leaves[2])) - 1) / (2 * U), dtype)


@pytest.mark.parametrize("sparse", [False, True])
def test_gradcheck_fused_nll(sparse):
    X, *_ = model_case(U=5, I=9, seed=4)
    inter = S._Inter(csr(X) if sparse else tt(X))
    lg = tt(np.random.default_rng(5).normal(size=(5, 9)) * 2).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda q: S._nll(q, inter), (lg,))
    mu = tt(np.random.default_rng(6).normal(size=(5, 2))).requires_grad_(True)
    lv = tt(np.random.default_rng(7).normal(size=(5, 2))).requires_grad_(True)
    Xt = csr(X) if sparse else tt(X)
    assert torch.autograd.gradcheck(lambda a, b, c: S.multvae_loss(Xt, a, b, c, 0.7)[0],
                                    (lg, mu, lv))


def test_loss_saves_no_second_u_by_i_tensor():
    """The fused nll saves the logits once (and the caller's X itself for dense X; the CSR
    triplet otherwise): no softmax, no log_softmax, no copy of X."""
    X, *_ = model_case(U=7, I=13, seed=8)
    UI = X.size
    lg = tt(np.random.default_rng(9).normal(size=X.shape)).requires_grad_(True)
    mu = tt(np.ones((7, 3))).requires_grad_(True)
    lv = tt(np.zeros((7, 3))).requires_grad_(True)
    Xt = tt(X)
    ptrs = []

    def pack(t):
        ptrs.append((t.numel(), t.data_ptr() if t.layout == torch.strided else None))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = S.multvae_loss(Xt, lg, mu, lv, 0.2)[0]
    big = [p for n, p in ptrs if n == UI]
    assert sorted(big) == sorted([lg.data_ptr(), Xt.data_ptr()])   # the logits and X itself
    loss.backward()
    L, sizes = saved_numels(lambda: S.multvae_loss(csr(X), lg, mu, lv, 0.2)[0])
    assert sizes.count(UI) == 1 and sorted(sizes)[-2] <= int(X.sum())  # CSR: logits + triplet
    # the whole objective (forward with mask and eps + loss): h0 (the first layer's input,
    # needed for dW1 = h0^T da1), the logits and X — nothing else of size U x I (the mask and
    # the normalisation carry no gradient, so autograd keeps nothing of theirs)
    _, P, mask, eps, _ = model_case(U=7, I=13, H=5, d=3, seed=8)
    leaves = {k: v.requires_grad_(True) for k, v in tparams(P).items()}

    def objective():
        lg2, mu2, lv2 = S.multvae_forward(Xt, leaves, tt(mask), tt(eps), 0.5, "dropout")
        return S.multvae_loss(Xt, lg2, mu2, lv2, 0.2)[0]

    L, sizes = saved_numels(objective)
    assert sizes.count(UI) == 3
    L.backward()


def test_kl_and_nll_invariants():
    """kl >= 0 and == 0 at mu = 0, logvar = 0; nll invariant to a per-row logit shift."""
    X, *_ = model_case(seed=10)
    rng = np.random.default_rng(11)
    lg = tt(rng.normal(size=X.shape))
    z = torch.zeros(X.shape[0], 3, dtype=F64)
    _, nll, kl = S.multvae_loss(tt(X), lg, z, z, 1.0)
    assert float(kl) == 0.0
    _, nll2, kl2 = S.multvae_loss(tt(X), lg + tt(rng.normal(size=(X.shape[0], 1)) * 50),
                                  tt(rng.normal(size=(X.shape[0], 3))), z + 0.3, 1.0)
    assert float(kl2) > 0.0
    assert abs(float(nll2) - float(nll)) < 1e-12 * abs(float(nll))


# --------------------------------------------------------------------------- value_and_grad


VAG = [("dropout", False, 0.0), ("dropout", True, 0.0), ("bernoulli", True, 0.0),
       ("bernoulli", True, 1.3), ("dropout", True, 0.5)]


@pytest.mark.parametrize("dtype", [F64, F32])
@pytest.mark.parametrize("mode,with_E,lam_A", VAG)
def test_value_and_grad_vs_reference(dtype, mode, with_E, lam_A):
    X, P, mask, eps, E = model_case(U=8, I=15, H=6, d=3, seed=12)
    Pt = tparams(P, dtype)
    mt, et = tt(mask, dtype), tt(eps, dtype)
    Et = tt(E, dtype) if with_E else None
    args = (0.35, mt, et, 0.6, mode)
    want_loss, want = RM.multvae_value_and_grad(
        X, uparams(Pt), 0.35, up(mt), up(et), 0.6, mode, E=None if Et is None else up(Et),
        lam_A=lam_A)
    for Xt in (tt(X, dtype), csr(X, dtype)):
        loss, grads = S.multvae_value_and_grad(Xt, Pt, *args, E=Et, lam_A=lam_A)
        assert loss.dim() == 0 and loss.dtype == dtype and not loss.requires_grad
        assert set(grads) == set(want) == set(KEYS) | ({"E"} if with_E else set())
        assert_close(loss, want_loss, dtype)
        for k in want:
            assert grads[k].dtype == dtype and grads[k].shape == Pt.get(k, Et).shape
            assert_close(grads[k], want[k], dtype, atol=TOL[dtype][0] * 10)
    for v in Pt.values():                       # inputs untouched, no graph attached
        assert not v.requires_grad and v.grad is None


def test_value_and_grad_is_autograd_of_forward_and_losses():
    """The backend's own composition: value_and_grad == autograd of multvae_forward +
    multvae_loss + lam_A * pia_anchor_loss (unmasked X for the anchor sets)."""
    X, P, mask, eps, E = model_case(U=6, I=11, seed=13)
    leaves = {k: v.requires_grad_(True) for k, v in tparams(P).items()}
    Et = tt(E).requires_grad_(True)
    Xt, mt, et = tt(X), tt(mask), tt(eps)
    logits, mu, logvar = S.multvae_forward(Xt, leaves, mt, et, 0.5, "bernoulli")
    L = S.multvae_loss(Xt, logits, mu, logvar, 0.2)[0] + 0.7 * S.pia_anchor_loss(mu, logvar,
                                                                                  Xt, Et)
    L.backward()
    loss, grads = S.multvae_value_and_grad(Xt, tparams(P), 0.2, mt, et, 0.5, "bernoulli",
                                           E=tt(E), lam_A=0.7)
    assert_close(loss, float(L.detach()), atol=1e-13, rtol=1e-13)
    for k, v in leaves.items():
        assert_close(grads[k], npy(v.grad), atol=1e-13, rtol=1e-12)
    assert_close(grads["E"], npy(Et.grad), atol=1e-13, rtol=1e-12)


def test_value_and_grad_central_differences():
    """Independent of the reference: dW4 and dE by central differences (fp64)."""
    X, P, mask, eps, E = model_case(U=5, I=9, H=4, d=2, seed=14)
    Pt, Et = tparams(P), tt(E)
    f = lambda Q, EE: float(S.multvae_value_and_grad(tt(X), Q, 0.3, tt(mask), tt(eps), 0.5,
                                                     "dropout", E=EE, lam_A=0.8)[0])
    _, grads = S.multvae_value_and_grad(tt(X), Pt, 0.3, tt(mask), tt(eps), 0.5, "dropout",
                                        E=Et, lam_A=0.8)
    h = 1e-6
    for key in ("W1", "b2", "W4", "E"):
        base = Et if key == "E" else Pt[key]
        for idx in [(0,) * base.dim(), tuple(s - 1 for s in base.shape)]:
            plus, minus = base.clone(), base.clone()
            plus[idx] += h
            minus[idx] -= h
            if key == "E":
                fd = (f(Pt, plus) - f(Pt, minus)) / (2 * h)
            else:
                fd = (f({**Pt, key: plus}, Et) - f({**Pt, key: minus}, Et)) / (2 * h)
            assert abs(float(grads[key][idx]) - fd) < 1e-7, (key, idx)


def test_value_and_grad_bf16_autocast():
    """bf16 autocast (CPU here): GEMMs in bf16, the fused nll reduced in float32; the loss and
    gradients within bf16 accuracy of the float64 reference."""
    X, P, mask, eps, E = model_case(U=16, I=40, H=8, d=4, seed=15, scale=0.5)
    Pt = tparams(P, F32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, grads = S.multvae_value_and_grad(tt(X, F32), Pt, 0.2, tt(mask, F32),
                                               tt(eps, F32), 0.5, "dropout", E=tt(E, F32),
                                               lam_A=0.5)
    want_loss, want = RM.multvae_value_and_grad(X, uparams(Pt), 0.2, mask, up(tt(eps, F32)),
                                                0.5, "dropout", E=up(tt(E, F32)), lam_A=0.5)
    assert loss.dtype == F32
    assert abs(float(loss) - want_loss) < 2e-2 * abs(want_loss)
    for k in want:
        assert grads[k].dtype == F32
        g, w = npy(grads[k]).astype(np.float64), want[k]
        assert np.linalg.norm(g - w) <= 5e-2 * np.linalg.norm(w) + 1e-6, k


# --------------------------------------------------------------------------- PIA and helpers


@pytest.mark.parametrize("dtype", [F64, F32])
@pytest.mark.parametrize("sparse", [False, True])
def test_pia_vs_reference(dtype, sparse):
    X, _, _, _, E = model_case(U=7, I=11, d=3, seed=16)
    rng = np.random.default_rng(17)
    mu, lv = rng.normal(size=(7, 3)), 0.5 * rng.normal(size=(7, 3))
    z = rng.normal(size=(4, 7, 3))
    Xt = csr(X, dtype) if sparse else tt(X, dtype)
    mut, lvt, Et, zt = (tt(x, dtype) for x in (mu, lv, E, z))
    H = [up(x) for x in (mut, lvt, Et, zt)]
    for red in ("mean", "sum", "none"):
        for zz, zr in ((None, None), (zt, H[3])):
            got = S.pia_anchor_loss(mut, lvt, Xt, Et, red, zz)
            want = RM.pia_anchor_loss(H[0], H[1], X, H[2], red, zr)
            assert got.dtype == dtype
            assert_close(got, want, dtype)
            if red == "none":
                assert np.isnan(npy(got)[X.sum(1) == 0]).all()
    got = S.pia_anchor_grad(mut, lvt, Xt, Et)
    want = RM.pia_anchor_grad(H[0], H[1], X, H[2])
    for g, w in zip(got, want):
        assert g.dtype == dtype
        assert_close(g, w, dtype)
    c = S.item_centroids(Xt, Et)
    assert c.dtype == dtype
    assert_close(c, RM.item_centroids(X, H[2]), dtype)


def test_pia_closed_form_gradients():
    """Independent of the reference: dmu = 2 (mu - ebar) / n_valid, dlogvar = exp(logvar) /
    n_valid (0 for empty users), dE_k = sum_u (2 / n_u)(e_k - mu_u) 1[k in S_u] / n_valid."""
    X, _, _, _, E = model_case(U=6, I=10, d=2, seed=18)
    rng = np.random.default_rng(19)
    mu, lv = rng.normal(size=(6, 2)), rng.normal(size=(6, 2))
    n = X.sum(1)
    valid = n > 0
    nv = valid.sum()
    ebar = np.where(valid[:, None], X @ E / np.maximum(n, 1)[:, None], 0)
    dmu, dlv, dE = S.pia_anchor_grad(tt(mu), tt(lv), tt(X), tt(E))
    assert_close(dmu, np.where(valid[:, None], 2 * (mu - ebar), 0) / nv)
    assert_close(dlv, np.where(valid[:, None], np.exp(lv), 0) / nv)
    want = np.zeros_like(E)
    for u in np.flatnonzero(valid):
        for k in np.flatnonzero(X[u]):
            want[k] += 2.0 / n[u] * (E[k] - mu[u]) / nv
    assert_close(dE, want)


def test_pia_monte_carlo_matches_closed_form():
    """With z = mu + sigma eps (S samples) the Monte Carlo estimate is within 4 standard
    errors of the closed form (both from the backend)."""
    X, _, _, _, E = model_case(U=5, I=10, d=3, seed=20)
    g = torch.Generator().manual_seed(21)
    mu = torch.randn(5, 3, generator=g, dtype=F64)
    lv = 0.4 * torch.randn(5, 3, generator=g, dtype=F64)
    S_ = 20_000
    z = mu + torch.exp(0.5 * lv) * torch.randn(S_, 5, 3, generator=g, dtype=F64)
    closed = S.pia_anchor_loss(mu, lv, tt(X), tt(E), "none")
    per_sample = torch.stack([S.pia_anchor_loss(mu, lv, tt(X), tt(E), "none", z[s:s + 1])
                              for s in range(0, S_, 400)])                  # a spread estimate
    mc = S.pia_anchor_loss(mu, lv, tt(X), tt(E), "none", z)
    sd = per_sample.std(0) / np.sqrt(S_)
    ok = X.sum(1) > 0
    assert bool(((mc - closed).abs()[ok] <= 4 * sd[ok]).all())


def test_gaussian_w2_and_anneal_beta():
    rng = np.random.default_rng(22)
    m1, m2 = rng.normal(size=(5, 4)), rng.normal(size=(5, 4))
    s1, s2 = np.exp(rng.normal(size=(5, 4))), np.exp(rng.normal(size=(5, 4)))
    for dtype in (F64, F32):
        got = S.gaussian_w2(*(tt(x, dtype) for x in (m1, s1, m2, s2)))
        assert got.dtype == dtype
        assert_close(got, RM.gaussian_w2(m1, s1, m2, s2), dtype)
    same = S.gaussian_w2(tt(m1), tt(s1), tt(m2), tt(s1))          # equal scales: ||mu1 - mu2||
    assert_close(same, np.linalg.norm(m1 - m2, axis=1), atol=1e-14, rtol=1e-14)
    for t, b in ((0, 0.0), (100_000, 0.2), (200_000, 0.2), (300_000, 0.2), (10_000, 0.05)):
        assert S.anneal_beta(t) == RM.anneal_beta(t) == pytest.approx(b, abs=1e-15)


# --------------------------------------------------------------------------- metrics


def notebook_metrics(scores, fold, heldout, k):
    """Transcription of the notebook's ``Recall_at_k_batch`` and ``NDCG_binary_at_k_batch``
    (fold-in set to -inf first; np.argpartition in place of bottleneck's; valid for k < I
    and tie-free scores)."""
    X_pred = np.where(fold > 0, -np.inf, scores)
    n = X_pred.shape[0]
    rows = np.arange(n)[:, None]
    idx = np.argpartition(-X_pred, k, axis=1)
    pred = np.zeros_like(X_pred, dtype=bool)
    pred[rows, idx[:, :k]] = True
    true = heldout > 0
    with np.errstate(invalid="ignore"):          # |T| = 0: 0 / 0 (NaN, excluded)
        recall = np.logical_and(true, pred).sum(axis=1).astype(np.float32) / np.minimum(
            k, true.sum(axis=1))
    topk_part = X_pred[rows, idx[:, :k]]
    idx_topk = idx[rows, np.argsort(-topk_part, axis=1)]
    tp = 1.0 / np.log2(np.arange(2, k + 2))
    dcg = (heldout[rows, idx_topk] * tp).sum(axis=1)
    idcg = np.array([tp[:min(c, k)].sum() for c in true.sum(axis=1)])
    with np.errstate(invalid="ignore"):
        return recall, dcg / idcg


def metric_case(U=40, I=60, seed=23):
    """Tie-free float32-exact scores (a permutation of integers / 64), fold-in and heldout
    disjoint, users 0-1 with |T| = 0, user 2 with at most 10 candidates left."""
    rng = np.random.default_rng(seed)
    scores = (rng.permutation(U * I).reshape(U, I) - U * I / 2) / 64.0
    r = rng.random((U, I))
    fold = (r < 0.3).astype(np.float64)
    held = ((r >= 0.3) & (r < 0.45)).astype(np.float64)
    held[:2] = 0
    c = I - 10                                   # user 2: I - c + ... candidates left
    fold[2, :c] = 1
    held[2, :c] = 0
    fold[2, I - 5] = 0
    held[2, I - 5] = 1
    return scores, fold, held


@pytest.mark.parametrize("k", [1, 5, 20, 59])
def test_metrics_vs_notebook_transcription(k):
    scores, fold, held = metric_case()
    rec_nb, ndcg_nb = notebook_metrics(scores, fold, held, k)
    for dtype in (F64, F32):
        rec = S.recall_at_k(tt(scores, dtype), tt(fold), tt(held), k)
        nd = S.ndcg_at_k(tt(scores, dtype), tt(fold), tt(held), k)
        assert rec.dtype == dtype and nd.dtype == dtype
        valid = held.sum(1) > 0
        assert np.isnan(npy(rec)[~valid]).all() and np.isnan(npy(nd)[~valid]).all()
        np.testing.assert_array_equal(npy(rec)[valid], rec_nb[valid].astype(npy(rec).dtype))
        tol = 0 if dtype == F64 else 1e-7
        np.testing.assert_allclose(npy(nd)[valid], ndcg_nb[valid], rtol=tol, atol=1e-15)


@pytest.mark.parametrize("dtype", [F64, F32])
@pytest.mark.parametrize("k", [1, 3, 7, 30, 100])
def test_metrics_vs_reference_with_ties_and_csr(dtype, k):
    """Scores with many ties (small integers): the ranking breaks them by the lower index,
    exactly as the reference's stable argsort; CSR fold / heldout equal dense; k > I."""
    rng = np.random.default_rng(24)
    U, I = 30, 25
    scores = rng.integers(0, 4, (U, I)).astype(np.float64)
    scores[5] = 1.0                                              # one row all tied
    r = rng.random((U, I))
    fold = (r < 0.3).astype(np.float64)
    held = ((r >= 0.3) & (r < 0.6)).astype(np.float64)
    held[0] = 0
    fold[1, :] = 1
    held[1, :] = 0                                               # no candidate at all
    fold[2, :22] = 1                                             # fewer than k candidates
    held[2, :22] = 0
    fold[2, 23] = 0
    held[2, 23] = 1
    for fn in METRICS:
        want = getattr(RE, fn)(scores, fold, held, k)
        for f, h in ((tt(fold), tt(held)), (csr(fold), csr(held)),
                     (tt(fold.astype(bool)), tt(held.astype(np.int64)))):
            got = getattr(S, fn)(tt(scores, dtype), f, h, k)
            assert got.dtype == dtype
            np.testing.assert_allclose(npy(got), want, rtol=1e-15 if dtype == F64 else 1e-7,
                                       atol=0, equal_nan=True)


def test_metrics_perfect_ranking_is_one():
    scores, fold, held = metric_case(seed=25)
    perfect = np.where(held > 0, 100.0 + scores, scores)
    for fn in METRICS:
        got = npy(getattr(S, fn)(tt(perfect), tt(fold), tt(held), 10))
        valid = held.sum(1) > 0
        np.testing.assert_allclose(got[valid], 1.0, rtol=0, atol=4e-16)   # DCG, IDCG: 2 sums


# --------------------------------------------------------------------------- host reads


def test_one_host_read_per_call(monkeypatch):
    calls = []
    real = S.read_packed
    monkeypatch.setattr(S, "read_packed", lambda parts: calls.append(1) or real(parts))
    X, P, mask, eps, E = model_case(seed=26)
    Pt, Xt = tparams(P), tt(X)
    lg, mu, lv = S.multvae_forward(Xt, Pt, tt(mask), tt(eps))
    scores, fold, held = metric_case(seed=27)
    for call in (lambda: S.multvae_forward(Xt, Pt, tt(mask), tt(eps)),
                 lambda: S.multvae_forward(csr(X), Pt),
                 lambda: S.multvae_loss(Xt, lg, mu, lv, 0.2),
                 lambda: S.multvae_value_and_grad(Xt, Pt, 0.2, tt(mask), tt(eps), E=tt(E),
                                                  lam_A=0.1),
                 lambda: S.item_centroids(Xt, tt(E)),
                 lambda: S.pia_anchor_loss(mu, lv, Xt, tt(E)),
                 lambda: S.pia_anchor_grad(mu, lv, Xt, tt(E)),
                 lambda: S.gaussian_w2(mu, lv.exp(), lv, mu.exp()),
                 lambda: S.recall_at_k(tt(scores), tt(fold), tt(held), 5),
                 lambda: S.ndcg_at_k(tt(scores), csr(fold), csr(held), 5)):
        calls.clear()
        call()
        assert len(calls) == 1


# --------------------------------------------------------------------------- bad input


def test_bad_input_raises_like_reference():
    X, P, mask, eps, E = model_case(seed=28)
    U, I = X.shape
    Xbad = X.copy()
    Xbad[1, 1] = 2.0
    Pbad = {**P, "W4": P["W4"][:, :-1]}
    Pmiss = {k: v for k, v in P.items() if k != "b3"}
    lg = np.zeros((U, I))
    mu, lv = np.zeros((U, 3)), np.zeros((U, 3))
    scores, fold, held = metric_case(U=4, I=9, seed=29)
    cases = [
        (RM, "multvae_forward", (Xbad, P), {}),
        (RM, "multvae_forward", (X, Pbad), {}),
        (RM, "multvae_forward", (X, Pmiss), {}),
        (RM, "multvae_forward", (X, P, mask * 3), {}),
        (RM, "multvae_forward", (X, P, mask[:-1]), {}),
        (RM, "multvae_forward", (X, P, None, eps[:, :2]), {}),
        (RM, "multvae_forward", (X, P, None, np.where(eps > 1, np.nan, eps)), {}),
        (RM, "multvae_forward", (X, P), {"keep_prob": 0.0}),
        (RM, "multvae_forward", (X, P), {"mask_mode": "drop"}),
        (RM, "multvae_loss", (X, lg, mu, lv, -0.1), {}),
        (RM, "multvae_loss", (X, lg[:, :-1], mu, lv, 0.1), {}),
        (RM, "multvae_loss", (Xbad, lg, mu, lv, 0.1), {}),
        (RM, "multvae_loss", (X, lg, mu, lv[:, :2], 0.1), {}),
        (RM, "multvae_value_and_grad", (X, P, 0.2, mask, eps), {"lam_A": -1.0}),
        (RM, "multvae_value_and_grad", (X, P, np.inf, mask, eps), {}),
        (RM, "multvae_value_and_grad", (X, P, 0.2, mask, eps), {"E": E[:-1]}),
        (RM, "multvae_value_and_grad", (0 * X, P, 0.2, mask, eps), {"E": E}),
        (RM, "pia_anchor_loss", (mu, lv, 0 * X, E), {}),
        (RM, "pia_anchor_loss", (mu, lv, X, E), {"reduction": "avg"}),
        (RM, "pia_anchor_loss", (mu, lv, X, E), {"z": np.zeros((2, U, 2))}),
        (RM, "pia_anchor_grad", (mu, lv, Xbad, E), {}),
        (RM, "item_centroids", (X, E[:, :0]), {}),
        (RM, "gaussian_w2", (mu, -np.ones_like(mu), mu, mu), {}),
        (RM, "gaussian_w2", (mu, mu, mu[:-1], mu), {}),
        (RE, "recall_at_k", (scores, fold, held, 0), {}),
        (RE, "recall_at_k", (scores, fold, held, 2.0), {}),
        (RE, "ndcg_at_k", (scores, fold[:-1], held, 3), {}),
        (RE, "ndcg_at_k", (scores, fold, 2 * held, 3), {}),
        (RE, "ndcg_at_k", (np.where(scores > 0, np.nan, scores), fold, held, 3), {}),
    ]

    def conv(x):
        if isinstance(x, dict):
            return {k: tt(v) for k, v in x.items()}
        return tt(x) if isinstance(x, np.ndarray) else x

    for mod, name, args, kw in cases:
        raises_like_reference(
            lambda m=mod, n=name, a=args, k=kw: getattr(m, n)(*a, **k),
            lambda n=name, a=args, k=kw: getattr(S, n)(*map(conv, a),
                                                       **{q: conv(v) for q, v in k.items()}))
    # CSR X with a stored value other than 1, dtype mismatch, foreign arrays
    Xs = sp.csr_matrix(X)
    Xs.data[0] = 2.0
    raises_like_reference(lambda: RM.multvae_forward(Xs, P),
                          lambda: S.multvae_forward(csr(Xs.toarray()),
                                                    tparams(P)))
    raises_like_reference(lambda: RM.multvae_forward(X.astype(np.float32), P),
                          lambda: S.multvae_forward(tt(X, F32), tparams(P)))
    with pytest.raises(TypeError, match="torch backend"):
        S.multvae_forward(X, tparams(P))
    with pytest.raises(TypeError, match="torch backend"):
        S.recall_at_k(tt(scores), fold, tt(held), 3)
