"""Reference tests of refimpl._ibdr (IBDR, arXiv 2506.07247; spec safety_ensembles.md Part B):
closed forms of the K x K log-determinant (K = 2, orthonormal maximum, identical particles),
central finite differences of every gradient (code and paper variants), the alpha_div = 0
reduction to the cross-entropy of the averaged logits, an independent torch (CPU, float64)
autograd transcription of the official code's loss as an oracle, the first-order accuracy of the
ascent on a quadratic, the K = 1 SAM special case, the dual update, the registry cases, and the
argument errors."""

from __future__ import annotations

import inspect
import math

import numpy as np
import pytest
from scipy.special import logsumexp

from refimpl import _ibdr as R
from refimpl._cases import safety_ensembles as K

pytestmark = pytest.mark.filterwarnings("error::RuntimeWarning")

J = 1e-7


def _softmax(F):
    z = np.exp(F - F.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def _inputs(rng, Kp, B, C, shared=3.0, spread=1.0):
    return K.ibdr_logits(rng, Kp, B, C, shared, spread), K.ibdr_labels(rng, B, C)


def _qh_loop(P, y):
    """Normalised wrong-class vectors by explicit loops (independent of the module)."""
    Kp, B, C = P.shape
    out = np.zeros((Kp, B, C - 1))
    for k in range(Kp):
        for b in range(B):
            q = np.array([P[k, b, c] for c in range(C) if c != y[b]])
            out[k, b] = q / max(np.linalg.norm(q), 1e-12)
    return out


def _fd(f, x, h=1e-6, relative=False):
    """Central differences; with ``relative`` the step of entry i is h * x_i (x > 0)."""
    g = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        hi = h * x[idx] if relative else h
        p, m = x.copy(), x.copy()
        p[idx] += hi
        m[idx] -= hi
        g[idx] = (f(p) - f(m)) / (2 * hi)
    return g


def _close_fd(g, fd, rtol=1e-6):
    err = float(np.max(np.abs(g - fd)))
    assert err <= rtol * float(np.max(np.abs(fd))), (err, float(np.max(np.abs(fd))))


# --------------------------------------------------------------------------- API


def test_signatures_follow_the_contract():
    sig = lambda f: str(inspect.signature(f))
    assert sig(R.dpp_logdet_diversity) == "(probs, y, *, jitter=1e-07)"
    assert sig(R.ibdr_loss) == "(logits, y, *, alpha_div=0.02, jitter=1e-07, variant='code')"
    assert sig(R.ibdr_loss_grad) == sig(R.ibdr_loss)
    assert sig(R.dro_ascent) == "(theta, g, lam, *, clip=0.12)"
    assert sig(R.prediction_distance) == "(logits_bar_new, logits_bar_old)"
    assert sig(R.ibdr_dual_update) == ("(lam, distance, lr, *, bound=0.03, temp=0.01, lo=0.5, "
                                       "hi=5.0, variant='code')")
    assert R.__all__ == ["dpp_logdet_diversity", "ibdr_loss", "ibdr_loss_grad", "dro_ascent",
                         "prediction_distance", "ibdr_dual_update"]


def test_return_kinds():
    rng = np.random.default_rng(0)
    F, y = _inputs(rng, 3, 4, 6)
    assert type(R.dpp_logdet_diversity(_softmax(F), y)) is float
    assert type(R.ibdr_loss(F.astype(np.float32), y)) is float
    loss, dF = R.ibdr_loss_grad(F.astype(np.float32), y)
    assert type(loss) is float and dF.dtype == np.float64 and dF.shape == F.shape
    th = R.dro_ascent(np.zeros(5, np.float32), np.ones(5, np.float32), 2.0)
    assert th.dtype == np.float64 and th.shape == (5,)
    assert type(R.prediction_distance(F[0], F[1])) is float
    assert type(R.ibdr_dual_update(3.0, np.asarray(0.01), 0.1)) is float


# --------------------------------------------------------------------------- acceptance 1: log-det


@pytest.mark.parametrize("jitter", [1e-7, 1e-3])
def test_k2_closed_form(jitter):
    rng = np.random.default_rng(1)
    F, y = _inputs(rng, 2, 7, 5)
    P = _softmax(F)
    qh = _qh_loop(P, y)
    c = (qh[0] * qh[1]).sum(-1)
    want = np.mean(np.log((1 + jitter) ** 2 - c ** 2))
    assert R.dpp_logdet_diversity(P, y, jitter=jitter) == pytest.approx(want, rel=1e-12, abs=1e-12)


def test_orthonormal_is_the_maximum():
    Kp, C, B, j = 4, 7, 3, 1e-7
    P = np.zeros((Kp, B, C))
    y = np.array([0, 6, 2])
    for b in range(B):
        wrong = [c for c in range(C) if c != y[b]]
        for k in range(Kp):
            P[k, b, wrong[k]] = 0.7
            P[k, b, y[b]] = 0.3                    # the true class is dropped: qh_k = e_k
    ld = R.dpp_logdet_diversity(P, y, jitter=j)
    assert ld == pytest.approx(Kp * math.log1p(j), rel=1e-12)
    rng = np.random.default_rng(2)
    for _ in range(50):                            # Hadamard: no Gram beats the identity
        F, yy = _inputs(rng, Kp, B, C, shared=rng.uniform(0, 4), spread=rng.uniform(0.1, 5))
        assert R.dpp_logdet_diversity(_softmax(F), yy, jitter=j) < ld


@pytest.mark.parametrize("Kp", [2, 4, 8])
def test_identical_particles(Kp):
    rng = np.random.default_rng(3)
    F, y = _inputs(rng, 1, 5, 9)
    P = np.repeat(_softmax(F), Kp, axis=0)
    want = math.log(Kp + J) + (Kp - 1) * math.log(J)
    # the Gram's entries are 1 up to rounding (~1e-16), relative to the jitter eigenvalues 1e-7
    assert R.dpp_logdet_diversity(P, y) == pytest.approx(want, rel=1e-9)


def test_dpp_matches_slogdet_and_ignores_true_class():
    rng = np.random.default_rng(4)
    F, y = _inputs(rng, 4, 6, 8)
    P = _softmax(F)
    qh = _qh_loop(P, y)
    want = np.mean([np.linalg.slogdet(qh[:, b] @ qh[:, b].T + J * np.eye(4))[1] for b in range(6)])
    assert R.dpp_logdet_diversity(P, y) == pytest.approx(want, rel=1e-10)
    P2 = P.copy()
    P2[:, np.arange(6), y] = rng.random((4, 6))     # the true class does not enter LD
    assert R.dpp_logdet_diversity(P2, y) == pytest.approx(R.dpp_logdet_diversity(P, y), rel=1e-13)
    # scale invariance of each Q_kb (normalisation)
    assert R.dpp_logdet_diversity(3.7 * P, y) == pytest.approx(R.dpp_logdet_diversity(P, y),
                                                              rel=1e-12)


# --------------------------------------------------------------------------- acceptance 2: gradients


@pytest.mark.parametrize("variant", ["code", "paper"])
@pytest.mark.parametrize("alpha", [0.0, 0.02, 3.0])
def test_loss_grad_finite_differences(variant, alpha):
    rng = np.random.default_rng(5)
    F, y = _inputs(rng, 3, 4, 6, shared=2.0)
    loss, dF = R.ibdr_loss_grad(F, y, alpha_div=alpha, variant=variant)
    assert loss == R.ibdr_loss(F, y, alpha_div=alpha, variant=variant)
    fd = _fd(lambda x: R.ibdr_loss(x, y, alpha_div=alpha, variant=variant), F)
    _close_fd(dF, fd)


def test_dpp_vjp_finite_differences():
    # moderate probabilities (all ~0.05-0.5): plain central differences with h = 1e-6
    rng = np.random.default_rng(6)
    for Kp, B, C in [(2, 3, 5), (4, 3, 5), (3, 2, 7)]:
        P = _softmax(K.ibdr_logits(rng, Kp, B, C, shared=0.5, spread=0.5))
        y = K.ibdr_labels(rng, B, C)
        cot = 0.7
        g = K.vjp_dpp_logdet(dict(probs=P, y=y), np.asarray(cot))["dprobs"]
        fd = _fd(lambda p, y=y, cot=cot: cot * R.dpp_logdet_diversity(p, y), P)
        _close_fd(g, fd)
        assert np.all(g[:, np.arange(B), y] == 0)
    # the registry's tiny cases (probabilities down to ~1e-6, where LD's curvature grows like
    # 1/||Q||^3): directional differences along relative perturbations P (1 + t v)
    for c in K.cases_dpp_logdet_diversity(rng, "tiny"):
        kw = c.inputs()
        g = K.vjp_dpp_logdet(kw, np.asarray(1.0))["dprobs"]
        for _ in range(3):
            v = rng.normal(size=kw["probs"].shape)
            f = lambda t, P=kw["probs"], y=kw["y"], v=v: R.dpp_logdet_diversity(P * (1 + t * v), y)
            t = 1e-6
            fd = (f(t) - f(-t)) / (2 * t)
            assert fd == pytest.approx(float((g * kw["probs"] * v).sum()), rel=1e-6, abs=1e-9)


def test_alpha0_is_ce_of_averaged_logits():
    rng = np.random.default_rng(7)
    F, y = _inputs(rng, 4, 9, 11)
    Fbar = F.mean(0)
    want = np.mean(logsumexp(Fbar, axis=-1) - Fbar[np.arange(9), y])
    loss, dF = R.ibdr_loss_grad(F, y, alpha_div=0.0)
    assert loss == pytest.approx(want, rel=1e-13)
    onehot = np.eye(11)[y]
    np.testing.assert_allclose(dF, np.broadcast_to((_softmax(Fbar) - onehot) / (4 * 9), F.shape),
                               rtol=1e-12, atol=1e-15)
    # the paper variant: mean of the per-particle CEs (differs from the CE of the mean)
    want_p = np.mean([np.mean(logsumexp(F[k], -1) - F[k, np.arange(9), y]) for k in range(4)])
    assert R.ibdr_loss(F, y, alpha_div=0.0, variant="paper") == pytest.approx(want_p, rel=1e-13)
    assert abs(want_p - want) > 1e-3
    # with the diversity term: loss = CE - alpha LD exactly
    ld = R.dpp_logdet_diversity(_softmax(F), y)
    assert R.ibdr_loss(F, y, alpha_div=0.5) == pytest.approx(want - 0.5 * ld, rel=1e-13)


# --------------------------------------------------------------------------- torch oracle


def _torch_code_loss(torch, logits_list, y, alpha_div, jitter=1e-7, variant="code"):
    """A transcription of the official code's "dro" loss: ``ClassificationModel.shared_step``
    (src/model.py @58efd5f) with ``log_det`` (src/utils.py @9026ccc) — the per-row loop, the mask
    ``~y_onehot.bool()``, division by ``torch.norm`` and ``torch.logdet`` — and timm's
    ``SoftTargetCrossEntropy`` on one-hot targets. ``variant="paper"`` swaps in the paper form
    (mean of per-particle CEs, ``torch.det``)."""
    import torch.nn.functional as Fn

    K = len(logits_list)
    y_true = Fn.one_hot(y, logits_list[0].shape[-1]).to(logits_list[0].dtype)

    def soft_target_ce(x):
        return torch.sum(-y_true * Fn.log_softmax(x, dim=-1), dim=-1).mean()

    if variant == "code":
        pred_ = 0
        for j in range(K):
            pred_ = pred_ + logits_list[j]
        ce = soft_target_ce(pred_ / max(1, K))
    else:
        ce = torch.stack([soft_target_ce(x) for x in logits_list]).mean()
    if alpha_div == 0:
        return ce
    pred = [Fn.softmax(x, dim=-1) for x in logits_list]
    mask_non_y_true = ~y_true.bool()
    vals = []
    for b in range(pred[0].shape[0]):
        masked = torch.stack([pred[i][b][mask_non_y_true[b]] for i in range(K)])
        norm_preds = masked / torch.norm(masked, dim=1, keepdim=True)
        M = norm_preds @ norm_preds.t() + jitter * torch.eye(K, dtype=masked.dtype)
        vals.append(torch.logdet(M) if variant == "code" else torch.det(M))
    div_loss = -torch.stack(vals).mean()
    return ce + alpha_div * div_loss


@pytest.mark.parametrize("variant", ["code", "paper"])
@pytest.mark.parametrize("alpha", [0.0, 0.02, 3.0])
@pytest.mark.parametrize("shape", [(2, 3, 5), (4, 24, 100)])
def test_torch_autograd_oracle(variant, alpha, shape):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(8)
    F, y = _inputs(rng, *shape)
    xs = [torch.tensor(F[k], dtype=torch.float64, requires_grad=True) for k in range(shape[0])]
    loss_t = _torch_code_loss(torch, xs, torch.tensor(y), alpha, variant=variant)
    loss_t.backward()
    grad_t = np.stack([x.grad.numpy() for x in xs])
    loss, dF = R.ibdr_loss_grad(F, y, alpha_div=alpha, variant=variant)
    assert loss == pytest.approx(loss_t.item(), rel=1e-10, abs=1e-12)
    np.testing.assert_allclose(dF, grad_t, rtol=1e-8, atol=1e-10 * np.abs(grad_t).max())


# --------------------------------------------------------------------------- acceptance 3, 4: ascent


def test_quadratic_ascent_is_first_order():
    rng = np.random.default_rng(9)
    n = 6
    Qm, _ = np.linalg.qr(rng.normal(size=(n, n)))
    A = Qm @ np.diag(rng.uniform(-1.0, 1.0, n)) @ Qm.T
    theta = rng.normal(size=n)
    g = A @ theta
    gaps = []
    for lam in (4.0, 8.0, 16.0, 32.0):
        exact = 2 * lam * np.linalg.solve(2 * lam * np.eye(n) - A, theta)
        # sanity: exact is the stationary point of L(t) - lam ||t - theta||^2
        assert np.allclose(A @ exact - 2 * lam * (exact - theta), 0, atol=1e-10)
        gaps.append(np.linalg.norm(R.dro_ascent(theta, g, lam, clip=1e9) - exact))
    ratios = np.array(gaps[:-1]) / np.array(gaps[1:])
    assert np.all((ratios > 3.5) & (ratios < 4.6)), ratios


def test_clip_factor():
    rng = np.random.default_rng(10)
    theta, g = rng.normal(size=50), rng.normal(size=50)
    n = np.linalg.norm(g)
    for clip in (0.12, 0.5 * n, 2 * n):
        got = R.dro_ascent(theta, g, 3.0, clip=clip)
        want = theta + g * min(1.0, clip / (n + 1e-6)) / 6.0
        np.testing.assert_allclose(got, want, rtol=1e-15, atol=1e-15)
    np.testing.assert_array_equal(R.dro_ascent(theta, np.zeros(50), 3.0), theta)
    # lam as a 0-d array
    np.testing.assert_array_equal(R.dro_ascent(theta, g, np.asarray(3.0)), R.dro_ascent(theta, g, 3.0))


@pytest.mark.parametrize("clip", [1e9, 0.05])
def test_k1_is_an_unnormalised_sam_step(clip):
    """K = 1, alpha_div = 0: a linear softmax classifier logits = X W; the step is SAM's
    theta + rho g/||g|| with radius rho = ||g_c|| / (2 lam)."""
    rng = np.random.default_rng(11)
    B, d, C, lam = 8, 5, 4, 3.0
    X, y = rng.normal(size=(B, d)), rng.integers(0, C, B)
    W = rng.normal(size=(d, C))

    def loss_grad(Wf):
        loss, dF = R.ibdr_loss_grad((X @ Wf.reshape(d, C))[None], y, alpha_div=0.0)
        return loss, (X.T @ dF[0]).ravel()

    theta = W.ravel()
    _, g = loss_grad(theta)
    fd = _fd(lambda w: loss_grad(w)[0], theta)      # the chain through the head is right
    _close_fd(g, fd)
    n = np.linalg.norm(g)
    rho = min(n, clip * n / (n + 1e-6)) / (2 * lam)
    sam = theta + rho * g / n
    np.testing.assert_allclose(R.dro_ascent(theta, g, lam, clip=clip), sam, rtol=1e-14, atol=1e-15)
    assert np.linalg.norm(R.dro_ascent(theta, g, lam, clip=clip) - theta) == pytest.approx(rho, rel=1e-12)
    if clip == 1e9:
        assert rho == pytest.approx(n / (2 * lam), rel=1e-14)


# --------------------------------------------------------------------------- acceptance 5: dual


def test_prediction_distance():
    rng = np.random.default_rng(12)
    a, b = rng.normal(size=(7, 5)), rng.normal(size=(7, 5))
    want = np.mean([np.linalg.norm(_softmax(a[i]) - _softmax(b[i])) for i in range(7)])
    assert R.prediction_distance(a, b) == pytest.approx(want, rel=1e-13)
    assert R.prediction_distance(a, a) == 0.0
    assert R.prediction_distance(a, a + 5.0) == pytest.approx(0.0, abs=1e-15)  # shift invariant
    assert R.prediction_distance(a, b) == pytest.approx(R.prediction_distance(b, a), rel=1e-15)


def test_dual_update_below_and_above_bound():
    lr, bound = 0.2, 0.03
    for lam, d in [(3.0, 0.01), (3.0, 0.03), (1.0, 0.0)]:      # below: no barrier
        assert R.ibdr_dual_update(lam, d, lr) == pytest.approx(lam - lr * (bound - d), rel=1e-15)
    for lam, d in [(3.0, 0.035), (2.0, 0.04), (1.0, 0.06)]:    # above: exponential barrier
        dt = math.exp((d - bound) / 0.01) * d
        got = R.ibdr_dual_update(lam, np.asarray(d), lr)
        assert got == pytest.approx(lam - lr * (bound - dt), rel=1e-15)
        assert got > lam - lr * (bound - d)                    # the barrier pushes lam up
    assert R.ibdr_dual_update(0.5, 0.0, 0.25) == 0.5              # lo clip
    assert R.ibdr_dual_update(4.99, 0.05, 0.25) == 5.0            # hi clip
    assert R.ibdr_dual_update(1.0, 9.0, 0.1) == 5.0               # exp overflows -> hi
    assert R.ibdr_dual_update(1.0, 9.0, 0.0) == 1.0               # lr = 0: no step (not NaN)
    # paper: projected gradient step on lam >= 0, no clip to [lo, hi]
    assert R.ibdr_dual_update(1.0, 0.01, 0.2, variant="paper") == pytest.approx(1.0 - 0.2 * 0.02)
    assert R.ibdr_dual_update(0.001, 0.0, 0.2, variant="paper") == 0.0
    assert R.ibdr_dual_update(9.0, 2.0, 1.0, variant="paper") == pytest.approx(9.0 + 1.97)


def test_dual_update_always_within_bounds():
    rng = np.random.default_rng(13)
    for _ in range(2000):
        lam = float(rng.uniform(-10, 20))
        d = float(rng.choice([rng.uniform(0, 0.06), rng.uniform(0, 2), rng.uniform(0, 50)]))
        lr = float(rng.choice([0.0, rng.uniform(0, 1), rng.uniform(0, 100)]))
        out = R.ibdr_dual_update(lam, d, lr)
        assert 0.5 <= out <= 5.0 and math.isfinite(out)


# --------------------------------------------------------------------------- registry cases


OPS = ["dpp_logdet_diversity", "ibdr_loss", "dro_ascent", "prediction_distance", "ibdr_dual_update"]


@pytest.mark.parametrize("op", OPS)
def test_cases_run_and_are_well_formed(op):
    cases_fn = getattr(K, f"cases_{op}")
    ref = getattr(R, op)
    for scale in ("tiny", "small"):
        cases = cases_fn(np.random.default_rng(0), scale)
        if scale == "tiny":
            assert 1 <= len(cases) <= 2
        labels = [c.label for c in cases]
        assert len(set(labels)) == len(labels)
        for c in cases:
            kw = c.inputs()
            if "y" in kw:
                assert kw["y"].dtype == np.int64
            out = ref(**kw)
            assert np.all(np.isfinite(out))
            kw32 = {k: (v.astype(np.float32) if isinstance(v, np.ndarray) and v.dtype == np.float64
                        else v) for k, v in kw.items()}
            ref(**kw32)                        # float32-cast inputs stay valid
    bench = cases_fn(np.random.default_rng(0), "bench")
    assert all(callable(c.kwargs) for c in bench if c.where == "gpu")
    with pytest.raises(ValueError, match="unknown scale"):
        cases_fn(np.random.default_rng(0), "huge")


def test_loss_cases_cover_the_variants():
    cases = K.cases_ibdr_loss(np.random.default_rng(0), "small")
    kws = [c.inputs() for c in cases]
    assert {kw.get("variant", "code") for kw in kws} == {"code", "paper"}
    assert {0.0, 3.0} <= {kw.get("alpha_div", 0.02) for kw in kws}
    tiny = K.cases_ibdr_loss(np.random.default_rng(0), "tiny")
    assert sorted(c.inputs()["logits"].shape for c in tiny) == [(2, 3, 5), (4, 3, 7)]
    bench = {c.where: c.inputs()["logits"].shape for c in K.cases_ibdr_loss(np.random.default_rng(0), "bench")
             if c.where == "cpu"}
    assert bench == {"cpu": (4, 24, 100)}


def test_dual_cases_cover_both_sides_and_clips():
    cases = K.cases_ibdr_dual_update(np.random.default_rng(0), "small")
    seen = set()
    for c in cases:
        kw = c.inputs()
        assert type(kw["lam"]) is float and type(kw["lr"]) is float
        assert isinstance(kw["distance"], np.ndarray) and kw["distance"].shape == ()
        out = R.ibdr_dual_update(**kw)
        if kw.get("variant", "code") == "code":
            d = float(kw["distance"])
            seen.add("above" if d > 0.03 else "below")
            if out == 0.5:
                seen.add("lo")
            if out == 5.0:
                seen.add("hi")
    assert seen == {"above", "below", "lo", "hi"}


def test_vjps_match_the_gradient_and_the_harness_keys():
    rng = np.random.default_rng(14)
    for c in K.cases_ibdr_loss(rng, "tiny"):
        kw = c.inputs()
        g = K.vjp_ibdr_loss(kw, np.asarray(0.3))
        assert set(g) == {"dlogits"}                 # the harness prefixes "d" to the input name
        np.testing.assert_allclose(g["dlogits"], 0.3 * R.ibdr_loss_grad(**kw)[1], rtol=1e-15)
    for c in K.cases_dpp_logdet_diversity(rng, "tiny"):
        assert set(K.vjp_dpp_logdet(c.inputs(), np.asarray(1.0))) == {"dprobs"}


# --------------------------------------------------------------------------- bad input


def _bad(match, f, *a, exc=ValueError, **kw):
    with pytest.raises(exc, match=match):
        f(*a, **kw)


def test_bad_particles_and_labels():
    rng = np.random.default_rng(15)
    F, y = _inputs(rng, 3, 4, 5)
    P = _softmax(F)
    _bad(r"K >= 2 particles are needed for the diversity term \(alpha_div != 0\), got K = 1",
         R.ibdr_loss, F[:1], y)
    _bad(r"K >= 2 particles are needed for the diversity term, got K = 1",
         R.dpp_logdet_diversity, P[:1], y)
    R.ibdr_loss(F[:1], y, alpha_div=0.0)                       # fine without the diversity term
    _bad("every qh is the scalar 1 and LD is constant", R.ibdr_loss, F[..., :2], y % 2)
    _bad("every qh is the scalar 1 and LD is constant", R.dpp_logdet_diversity, P[..., :2], y % 2)
    R.ibdr_loss(F[..., :2], y % 2, alpha_div=0.0)
    _bad("C >= 2 classes", R.ibdr_loss, F[..., :1], y * 0, alpha_div=0.0)
    _bad(r"y must hold class indices in \[0, C\) = \[0, 5\), got values in \[0, 5\]",
         R.ibdr_loss, F, np.array([0, 1, 2, 5]))
    _bad(r"got values in \[-1, ", R.dpp_logdet_diversity, P, np.array([-1, 1, 2, 3]))
    _bad("y must be an integer array", R.ibdr_loss, F, y.astype(np.float64), exc=TypeError)
    _bad(r"y must have shape \(B,\) = \(4,\)", R.ibdr_loss, F, y[:3])
    _bad("logits contains NaN or inf", R.ibdr_loss, np.where(F > 2, np.inf, F), y)
    Fn = F.copy(); Fn[1, 2, 3] = np.nan
    _bad("logits contains NaN or inf", R.ibdr_loss_grad, Fn, y)
    _bad("probs must be >= 0", R.dpp_logdet_diversity, P - 0.5, y)
    _bad("empty batch", R.ibdr_loss, F[:, :0], y[:0])
    _bad("empty batch", R.dpp_logdet_diversity, P[:, :0], y[:0])
    _bad("jitter must be a finite number > 0", R.ibdr_loss, F, y, jitter=0.0)
    _bad("jitter must be a finite number > 0", R.dpp_logdet_diversity, P, y, jitter=-1e-7)
    _bad("alpha_div must be >= 0", R.ibdr_loss, F, y, alpha_div=-0.1)
    _bad("alpha_div must be finite", R.ibdr_loss, F, y, alpha_div=math.inf)
    _bad("variant must be one of 'code', 'paper'", R.ibdr_loss, F, y, variant="Paper")
    _bad("logits must be 3-D", R.ibdr_loss, F[0], y)
    _bad("logits must have dtype", R.ibdr_loss, F.astype(np.int64), y, exc=TypeError)
    torch = pytest.importorskip("torch")
    _bad("numpy reference takes numpy.ndarray", R.ibdr_loss, torch.tensor(F), y, exc=TypeError)


def test_bad_ascent_and_distance():
    th, g = np.zeros(4), np.ones(4)
    for lam in (0.0, -1.0, np.asarray(0.0)):
        _bad("lam must be > 0", R.dro_ascent, th, g, lam)
    _bad("lam must be finite", R.dro_ascent, th, g, math.nan)
    _bad("lam must be a number or a 0-d array", R.dro_ascent, th, g, np.ones(2))
    for clip in (0.0, -0.1):
        _bad("clip must be a finite number > 0", R.dro_ascent, th, g, 3.0, clip=clip)
    _bad("g has non-finite entries", R.dro_ascent, th, np.array([1.0, np.nan, 0, 0]), 3.0)
    _bad("g must have the shape of theta", R.dro_ascent, th, np.ones(3), 3.0)
    _bad("g must have the dtype of theta", R.dro_ascent, th, g.astype(np.float32), 3.0, exc=TypeError)
    _bad("theta must be 1-D", R.dro_ascent, th.reshape(2, 2), g.reshape(2, 2), 3.0)
    _bad("theta must have P >= 1", R.dro_ascent, th[:0], g[:0], 3.0)
    a = np.zeros((3, 4))
    _bad("logits_bar_old contains NaN or inf", R.prediction_distance, a, a + np.inf)
    _bad("logits_bar_new contains NaN or inf", R.prediction_distance, a * np.nan, a)
    _bad("logits_bar_old must have the shape", R.prediction_distance, a, a[:2])
    _bad("empty batch", R.prediction_distance, a[:0], a[:0])
    _bad("C >= 2 classes", R.prediction_distance, a[:, :1], a[:, :1])


def test_bad_dual_update():
    _bad("variant='fisher' is not implemented", R.ibdr_dual_update, 3.0, 0.01, 0.1, variant="fisher")
    _bad("variant must be one of", R.ibdr_dual_update, 3.0, 0.01, 0.1, variant="euclid")
    _bad("lam must be >= 0 for variant='paper'", R.ibdr_dual_update, -1.0, 0.01, 0.1, variant="paper")
    assert R.ibdr_dual_update(-1.0, 0.01, 0.1) == 0.5              # code: any finite lam
    _bad("lam must be finite", R.ibdr_dual_update, math.inf, 0.01, 0.1)
    _bad("distance must be >= 0", R.ibdr_dual_update, 3.0, -0.01, 0.1)
    _bad("distance must be finite", R.ibdr_dual_update, 3.0, np.asarray(np.nan), 0.1)
    _bad("lr must be >= 0", R.ibdr_dual_update, 3.0, 0.01, -0.1)
    _bad("bound must be >= 0", R.ibdr_dual_update, 3.0, 0.01, 0.1, bound=-1.0)
    _bad("temp must be a finite number > 0", R.ibdr_dual_update, 3.0, 0.01, 0.1, temp=0.0)
    _bad("lo must be <= hi", R.ibdr_dual_update, 3.0, 0.01, 0.1, lo=2.0, hi=1.0)
    _bad("lo must be >= 0", R.ibdr_dual_update, 3.0, 0.01, 0.1, lo=-1.0)
    _bad("distance must be a real number", R.ibdr_dual_update, 3.0, "0.1", 0.1, exc=TypeError)


def test_singular_gram_is_reported():
    # identical particles with qh = (0.6, 0.8, 0, 0): the Gram is exactly all-ones, so with a
    # jitter below the rounding of 1 the Cholesky pivot is exactly 0
    P = np.tile(np.array([0.5, 0.6, 0.8, 0.0, 0.0]), (3, 2, 1))
    y = np.array([0, 0])
    assert R.dpp_logdet_diversity(P, y) == pytest.approx(math.log(3 + J) + 2 * math.log(J), rel=1e-9)
    _bad(r"M_b = Qh_b Qh_b\^T \+ jitter I is not numerically positive definite \(jitter = 1e-30\)",
         R.dpp_logdet_diversity, P, y, jitter=1e-30)
    # equal logits: uniform P, qh = (0.5, 0.5, 0.5, 0.5) in every particle, again an all-ones Gram
    _bad("not numerically positive definite", R.ibdr_loss, np.zeros((3, 2, 5)), y, jitter=1e-30)
