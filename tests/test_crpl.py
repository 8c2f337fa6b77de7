"""Reference tests of refimpl._crpl (CRPL, arXiv 2506.11493; spec clip_uda_ot.md sec. 6):
the reference prediction against a loop-by-loop NumPy transcription of the authors' script block
(running means, expanded distance, softmax over sources, the n_pseudo 2 -> 3 switch at the step
where the last centroid appears), the exact OT loss against POT (``ot.emd2``, value and torch
autograd through it) and finite differences, the soft-CE gradient, the objective's parts and
its explicit gradient (finite differences; an independent torch autograd transcription), the
centroid reading of L_W, the evaluation's undercount, the centroids against direct means, the
argument errors and the registry cases."""

from __future__ import annotations

import inspect
import math

import numpy as np
import pytest
from scipy.special import logsumexp, softmax

import refimpl.crpl as crpl_pub
from refimpl import _crpl as R
from refimpl._cases import crpl as CC
from finite_diff import fd_grad

pytestmark = pytest.mark.filterwarnings("error::RuntimeWarning")


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _world(seed=0, K=3, D=5, S=2):
    return CC.World(np.random.default_rng(seed), K, D, S)


def _close(a, b, rtol=1e-6, atol=0.0):
    err = float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
    assert err <= atol + rtol * float(np.max(np.abs(b))), (err, float(np.max(np.abs(b))))


# --------------------------------------------------------------------------- the public module


def test_public_module_reexports_the_api():
    assert set(R.__all__) == {
        "update_class_centroids", "crpl_reference_probs", "soft_cross_entropy",
        "soft_cross_entropy_grad", "ot_cluster_loss", "crpl_target_loss", "crpl_loss",
        "crpl_loss_grad", "clip_pseudo_labels", "target_accuracy"}
    for name in R.__all__:
        assert getattr(crpl_pub, name) is getattr(R, name)
    sig = inspect.signature(R.crpl_loss)
    assert list(sig.parameters) == ["z_src", "y_src", "dom_src", "z_tgt", "T_S", "T_Si", "T_T",
                                    "p", "scale", "lam_W", "lam_T", "use_ot"]
    assert inspect.signature(R.crpl_loss_grad) == sig
    assert "2506.11493" in R.__doc__


# --------------------------------------------------------------------------- script transcription


class ScriptBlock:
    """A loop-by-loop transcription of the authors' script block (spec sec. 2), independent of
    the module: per-(domain, class) running means with their counts, the expanded squared
    distance, softmax over sources of -w_scale * distance, and the n_pseudo switch."""

    def __init__(self, S, K, D, w_scale=10.0, logit_scale=100.0):
        self.S, self.K, self.w_scale, self.logit_scale = S, K, w_scale, logit_scale
        self.mean = [[np.zeros(D) for _ in range(K)] for _ in range(S)]
        self.count = [[0 for _ in range(K)] for _ in range(S)]

    def update(self, feats, labels, domains):
        for i in range(self.S):
            for k in range(self.K):
                sel = [b for b in range(len(labels)) if domains[b] == i and labels[b] == k]
                if not sel:
                    continue
                s = np.zeros_like(self.mean[i][k])
                for b in sel:
                    s = s + feats[b]
                n_old = self.count[i][k]
                self.mean[i][k] = (self.mean[i][k] * n_old + s) / (n_old + len(sel))
                self.count[i][k] = n_old + len(sel)

    def pseudo(self, z, u, T_base, T_S, T_Si):
        B = z.shape[0]
        ready = all(self.count[i][k] > 0 for i in range(self.S) for k in range(self.K))
        n_pseudo = 3 if ready else 2
        p = np.zeros((B, self.K))
        for b in range(B):
            logit = np.zeros(self.K)
            for k in range(self.K):
                acc = float(z[b] @ T_base[k]) + float(z[b] @ T_S[k])
                if ready:
                    dist = [float(u[b] @ u[b]) + float(self.mean[i][k] @ self.mean[i][k])
                            - 2.0 * float(u[b] @ self.mean[i][k]) for i in range(self.S)]
                    e = [math.exp(-self.w_scale * d + self.w_scale * min(dist)) for d in dist]
                    w = [x / sum(e) for x in e]
                    acc += sum(w[i] * float(z[b] @ T_Si[i, k]) for i in range(self.S))
                logit[k] = self.logit_scale * acc / n_pseudo
            e = np.exp(logit - logit.max())
            p[b] = e / e.sum()
        return p, n_pseudo

    def counts(self):
        return np.array(self.count, dtype=np.float64)

    def means(self):
        return np.array(self.mean)


def test_reference_probs_match_the_script_block_through_the_switch():
    """A sequence of steps in which the last (i, k) centroid first appears at step 3: before
    it n_pseudo = 2 (the third term dropped), from that step on 3; the module's running
    centroids and p equal the transcription at every step."""
    S, K, D, B = 2, 3, 5, 4
    w = _world(1, K, D, S)
    block = ScriptBlock(S, K, D)
    means, counts = np.zeros((S, K, D)), np.zeros((S, K))
    switches = []
    for step in range(5):
        u_s, _, y, dom = w.source_batch(8)
        if step < 3:                      # (1, 2) unseen until step 3
            y[(dom == 1) & (y == 2)] = 0
        else:
            y[np.flatnonzero(dom == 1)[0]] = 2
        block.update(u_s, y, dom)
        means, counts = R.update_class_centroids(means, counts, u_s, y, dom)
        np.testing.assert_allclose(means, block.means(), rtol=1e-13, atol=1e-14)
        np.testing.assert_array_equal(counts, block.counts())
        u, z, _ = w.images(B, S)
        want, n_pseudo = block.pseudo(z, u, w.T_base, w.T_S, w.T_Si)
        got = R.crpl_reference_probs(z, u, w.T_base, w.T_S, w.T_Si, means, counts)
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-14)
        switches.append(n_pseudo)
    assert switches == [2, 2, 2, 3, 3]


def test_reference_probs_three_terms_differ_from_two():
    """The third term matters (the switch is observable) and source-combined mode ignores it."""
    w = _world(2)
    means, counts = w.full_centroids(2, 8)
    u, z, _ = w.images(4, w.S)
    p3 = R.crpl_reference_probs(z, u, w.T_base, w.T_S, w.T_Si, means, counts)
    p2 = R.crpl_reference_probs(z, u, w.T_base, w.T_S)
    assert np.max(np.abs(p3 - p2)) > 1e-3
    l2 = (z @ w.T_base.T + z @ w.T_S.T) / 2
    np.testing.assert_allclose(p2, softmax(100.0 * l2, axis=1), rtol=1e-12, atol=1e-15)
    counts_missing = counts.copy()
    counts_missing[0, 1] = 0.0
    np.testing.assert_allclose(
        R.crpl_reference_probs(z, u, w.T_base, w.T_S, w.T_Si, means, counts_missing), p2,
        rtol=1e-12, atol=1e-15)


def test_expanded_distance_is_kept_even_when_negative():
    """A centroid equal to u_b: the expanded distance is ~0 (possibly slightly < 0) and the
    weights are computed from it as is (w -> that source for large gamma)."""
    w = _world(3)
    means, counts = w.full_centroids(2, 8)
    u, z, _ = w.images(4, w.S)
    means = means.copy()
    means[1, :, :] = u[0]                                  # domain 1 sits on image 0
    p = R.crpl_reference_probs(z, u, w.T_base, w.T_S, w.T_Si, means, counts, gamma=1e4)
    l = (z[0] @ w.T_base.T + z[0] @ w.T_S.T + z[0] @ w.T_Si[1].T) / 3
    np.testing.assert_allclose(p[0], softmax(100.0 * l), rtol=1e-9, atol=1e-15)


def test_paper_variant_is_text_embedding_averaging():
    """variant="paper": p_b = softmax(scale z_b t_b^T), t_bk = 0.5 t_base,k + 0.5 sum_i w t_Si,k
    (not renormalised), w the code's softmax over sources of -gamma D."""
    w = _world(4, K=4, D=6, S=3)
    means, counts = w.full_centroids(2, 12)
    u, z, _ = w.images(5, w.S)
    got = R.crpl_reference_probs(z, u, w.T_base, w.T_S, w.T_Si, means, counts, gamma=2.0,
                                 scale=50.0, variant="paper")
    for b in range(5):
        d = np.array([[np.sum((u[b] - means[i, k]) ** 2) for k in range(4)] for i in range(3)])
        wt = softmax(-2.0 * d, axis=0)                     # (S, K)
        t = 0.5 * w.T_base + 0.5 * np.einsum("ik,ikd->kd", wt, w.T_Si)
        np.testing.assert_allclose(got[b], softmax(50.0 * t @ z[b]), rtol=1e-9, atol=1e-15)


# --------------------------------------------------------------------------- centroids


def test_update_class_centroids_equals_the_direct_mean():
    w = _world(5, K=4, D=6, S=3)
    means, counts = np.zeros((3, 4, 6)), np.zeros((3, 4))
    seen_u, seen_y, seen_d = [], [], []
    for _ in range(4):
        u, _, y, dom = w.source_batch(10)
        means_in, counts_in = means, counts
        keep_m, keep_c = means.copy(), counts.copy()
        means, counts = R.update_class_centroids(means_in, counts_in, u, y, dom)
        np.testing.assert_array_equal(means_in, keep_m)     # inputs untouched
        np.testing.assert_array_equal(counts_in, keep_c)
        seen_u.append(u), seen_y.append(y), seen_d.append(dom)
        U, Y, Dm = np.concatenate(seen_u), np.concatenate(seen_y), np.concatenate(seen_d)
        for i in range(3):
            for k in range(4):
                sel = (Dm == i) & (Y == k)
                assert counts[i, k] == sel.sum()
                if sel.any():
                    np.testing.assert_allclose(means[i, k], U[sel].mean(axis=0), rtol=1e-12,
                                               atol=1e-14)
                else:
                    assert np.all(means[i, k] == 0.0)
    m0, c0 = means.copy(), counts.copy()
    R.update_class_centroids(means, counts, u, y, dom)
    np.testing.assert_array_equal(means, m0)
    np.testing.assert_array_equal(counts, c0)


# --------------------------------------------------------------------------- soft CE


def test_soft_cross_entropy_closed_form_and_one_hot():
    rng = np.random.default_rng(6)
    logits = rng.normal(0, 3, (7, 5))
    p = softmax(rng.normal(0, 2, (7, 5)), axis=1)
    want = -np.mean(np.sum(p * (logits - logsumexp(logits, axis=1, keepdims=True)), axis=1))
    assert abs(R.soft_cross_entropy(logits, p) - want) <= 1e-13
    y = rng.integers(0, 5, 7)
    ce = -np.mean(logits[np.arange(7), y] - logsumexp(logits, axis=1))
    assert abs(R.soft_cross_entropy(logits, np.eye(5)[y]) - ce) <= 1e-13


@pytest.mark.parametrize("normalised", [True, False])
def test_soft_cross_entropy_grad_finite_differences(normalised):
    rng = np.random.default_rng(7)
    logits = rng.normal(0, 3, (6, 4))
    p = softmax(rng.normal(0, 2, (6, 4)), axis=1)
    if not normalised:
        p = p * rng.uniform(0.5, 2.0, (6, 1))             # the general form: rowsum(p) != 1
    g = R.soft_cross_entropy_grad(logits, p)
    _close(g, fd_grad(lambda L: R.soft_cross_entropy(L, p), logits), rtol=1e-7)
    if normalised:
        np.testing.assert_allclose(g, (softmax(logits, axis=1) - p) / 6, rtol=1e-12, atol=1e-15)


# --------------------------------------------------------------------------- exact OT


def _ot_inputs(seed, B, K, D):
    rng = np.random.default_rng(seed)
    return _unit(rng.normal(size=(B, D))), _unit(rng.normal(size=(K, D)))


@pytest.mark.parametrize("B, K, D", [(4, 3, 5), (30, 12, 16), (30, 65, 32), (10, 10, 8)])
def test_ot_cluster_loss_matches_pot(B, K, D):
    ot = pytest.importorskip("ot")
    Z, T = _ot_inputs(B * K, B, K, D)
    L_W, P, dT, dZ = R.ot_cluster_loss(Z, T)
    C = 1.0 - Z @ T.T
    a, b = np.full(B, 1.0 / B), np.full(K, 1.0 / K)
    assert abs(L_W - float(ot.emd2(a, b, C, numItermax=500000))) <= 1e-10
    np.testing.assert_allclose(P, ot.emd(a, b, C, numItermax=500000), atol=1e-10)  # tie-free
    np.testing.assert_allclose(P.sum(axis=1), a, atol=1e-12)
    np.testing.assert_allclose(P.sum(axis=0), b, atol=1e-12)
    assert np.all(P >= -1e-15)
    assert np.count_nonzero(P > 1e-12) <= B + K - 1               # a vertex
    np.testing.assert_allclose(dT, -P.T @ Z, atol=1e-15)
    np.testing.assert_allclose(dZ, -P @ T, atol=1e-15)


def test_ot_cluster_grads_match_torch_autograd_through_pot():
    torch = pytest.importorskip("torch")
    ot = pytest.importorskip("ot")
    Z, T = _ot_inputs(11, 8, 5, 6)
    Zt = torch.tensor(Z, dtype=torch.float64, requires_grad=True)
    Tt = torch.tensor(T, dtype=torch.float64, requires_grad=True)
    a = torch.full((8,), 1.0 / 8, dtype=torch.float64)
    b = torch.full((5,), 1.0 / 5, dtype=torch.float64)
    loss = ot.emd2(a, b, 1.0 - Zt @ Tt.T, numItermax=500000)
    loss.backward()
    L_W, _, dT, dZ = R.ot_cluster_loss(Z, T)
    assert abs(L_W - loss.item()) <= 1e-10
    np.testing.assert_allclose(dT, Tt.grad.numpy(), atol=1e-10)
    np.testing.assert_allclose(dZ, Zt.grad.numpy(), atol=1e-10)


def test_ot_cluster_grad_finite_differences_in_T_and_Z():
    Z, T = _ot_inputs(12, 6, 4, 5)
    _, _, dT, dZ = R.ot_cluster_loss(Z, T)
    _close(dT, fd_grad(lambda X: R.ot_cluster_loss(Z, X)[0], T), rtol=1e-6)
    _close(dZ, fd_grad(lambda X: R.ot_cluster_loss(X, T)[0], Z), rtol=1e-6)


@pytest.mark.parametrize("seed", range(4))
def test_moving_text_to_plan_centroids_does_not_increase_L_W(seed):
    """Lemma 1's reading: t_T,k <- normalise(sum_b P*_bk z_b) cannot increase L_W (it minimises
    <P*, C(T)> over unit t_k, and L_W(T') <= <P*, C(T')>)."""
    w = _world(20 + seed, K=6, D=8, S=1)
    _, Z, _ = w.images(30, 1)
    T = w.T_T
    L0, P, _, _ = R.ot_cluster_loss(Z, T)
    T1 = _unit(P.T @ Z)
    L1 = R.ot_cluster_loss(Z, T1)[0]
    assert L1 <= L0 + 1e-12
    assert float(np.sum(P * (1.0 - Z @ T1.T))) <= float(np.sum(P * (1.0 - Z @ T.T))) + 1e-12


# --------------------------------------------------------------------------- target loss


def _ce(logits, y):
    return float(-np.mean(logits[np.arange(len(y)), y] - logsumexp(logits, axis=1)))


def test_target_loss_spl_and_baseline_branches():
    w = _world(30, K=4, D=6, S=1)
    u, z, _ = w.images(6, 1)
    p = R.crpl_reference_probs(z, u, w.T_base, w.T_S)
    cos = z @ w.T_T.T
    hard = np.argmax(cos, axis=1)
    sce = R.soft_cross_entropy(100.0 * cos, p)
    L, h = R.crpl_target_loss(z, w.T_T, p)
    assert h.dtype == np.int64 and np.array_equal(h, hard)
    assert abs(L - 0.5 * (sce + _ce(100.0 * cos, hard))) <= 1e-12
    assert abs(R.crpl_target_loss(z, w.T_T, p, use_ot=False)[0] - sce) <= 1e-12
    # baseline: unscaled CE over labelled rows
    lab = np.array([0, -1, 2, 3, -1, 1], dtype=np.int64)
    keep = lab >= 0
    base = _ce(cos[keep], lab[keep])
    assert abs(R.crpl_target_loss(z, w.T_T, lab, use_ot=False)[0] - base) <= 1e-12
    assert abs(R.crpl_target_loss(z, w.T_T, lab)[0]
               - 0.5 * (base + _ce(100.0 * cos, hard))) <= 1e-12
    none = np.full(6, -1, dtype=np.int64)
    assert R.crpl_target_loss(z, w.T_T, none, use_ot=False)[0] == 0.0
    assert abs(R.crpl_target_loss(z, w.T_T, none)[0] - 0.5 * _ce(100.0 * cos, hard)) <= 1e-12


def test_hard_labels_take_the_first_index_on_ties():
    z = np.array([[1.0, 0.0], [0.0, 1.0]])
    T = _unit(np.array([[1.0, 1.0], [1.0, 1.0], [0.0, 1.0]]))
    _, h = R.crpl_target_loss(z, T, np.full((2, 3), 1.0 / 3))
    assert h.tolist() == [0, 2]


def test_clip_pseudo_labels_threshold():
    w = _world(31, K=4, D=6, S=1)
    _, z, _ = w.images(20, 1)
    P = softmax(100.0 * z @ w.T_base.T, axis=1)
    lab = R.clip_pseudo_labels(z, w.T_base)
    want = np.where(P.max(axis=1) > 0.4, P.argmax(axis=1), -1)
    assert lab.dtype == np.int64 and np.array_equal(lab, want)
    assert np.all(R.clip_pseudo_labels(z, w.T_base, threshold=1.0) == -1)
    assert np.all(R.clip_pseudo_labels(z, w.T_base, threshold=0.0) >= 0)


# --------------------------------------------------------------------------- objective


def _loss_kw(seed, combined=False, baseline=False, **kw):
    w = _world(seed, K=3, D=5, S=2)
    return CC._loss_kw(w, 8, 4, combined=combined, baseline=baseline, **kw)


@pytest.mark.parametrize("combined", [False, True])
def test_crpl_loss_parts_and_weights(combined):
    kw = _loss_kw(40, combined=combined)
    L, parts = R.crpl_loss(**kw)
    assert set(parts) == {"L_src", "L_W", "L_T"}
    assert abs(L - (parts["L_src"] + 0.5 * parts["L_W"] + 0.5 * parts["L_T"])) <= 1e-12
    zs, y = kw["z_src"], kw["y_src"]
    L_src = _ce(100.0 * zs @ kw["T_S"].T, y)
    if not combined:
        dom = kw["dom_src"]
        L_src += np.mean([_ce(100.0 * zs[dom == i] @ kw["T_Si"][i].T, y[dom == i])
                          for i in range(2)])
    assert abs(parts["L_src"] - L_src) <= 1e-11
    assert parts["L_W"] == R.ot_cluster_loss(kw["z_tgt"], kw["T_T"])[0]
    assert parts["L_T"] == R.crpl_target_loss(kw["z_tgt"], kw["T_T"], kw["p"])[0]
    L2, _ = R.crpl_loss(**dict(kw, lam_W=2.0, lam_T=0.1))
    assert abs(L2 - (parts["L_src"] + 2.0 * parts["L_W"] + 0.1 * parts["L_T"])) <= 1e-12
    # OT off: no L_W, no hard CE (n_target = 1: L_T is the SCE alone)
    L3, parts3 = R.crpl_loss(**dict(kw, use_ot=False))
    assert parts3["L_W"] == 0.0 and parts3["L_src"] == parts["L_src"]
    sce = R.soft_cross_entropy(100.0 * kw["z_tgt"] @ kw["T_T"].T, kw["p"])
    assert abs(parts3["L_T"] - sce) <= 1e-12
    assert abs(L3 - (parts["L_src"] + 0.5 * sce)) <= 1e-12


CASES = [dict(), dict(combined=True), dict(use_ot=False), dict(baseline=True),
         dict(baseline=True, use_ot=False, combined=True), dict(lam_W=1.0, lam_T=0.25, scale=30.0)]


@pytest.mark.parametrize("extra", CASES)
def test_crpl_loss_grad_finite_differences(extra):
    kw = _loss_kw(50, **extra)
    L, parts, grads = R.crpl_loss_grad(**kw)
    assert (L, parts) == R.crpl_loss(**kw)
    names = ["T_S", "T_T"] + ([] if kw["T_Si"] is None else ["T_Si"])
    assert set(grads) == {"d" + n for n in names}
    for name in names:
        fd = fd_grad(lambda X, name=name: R.crpl_loss(**dict(kw, **{name: X}))[0], kw[name])
        _close(grads["d" + name], fd, rtol=2e-6)


def _torch_loss(torch, kw):
    """An independent torch transcription of the script's objective (float64); L_W by POT's
    emd2 (which attaches the envelope gradient)."""
    import ot

    F = torch.nn.functional
    s, lam_W, lam_T = kw.get("scale", 100.0), kw.get("lam_W", 0.5), kw.get("lam_T", 0.5)
    use_ot = kw.get("use_ot", True)
    t = {k: torch.tensor(kw[k], dtype=torch.float64, requires_grad=True)
         for k in ("T_S", "T_Si", "T_T") if kw[k] is not None}
    zs = torch.tensor(kw["z_src"])
    zt = torch.tensor(kw["z_tgt"])
    y = torch.tensor(kw["y_src"])
    loss = F.cross_entropy(s * zs @ t["T_S"].T, y)
    if "T_Si" in t:
        dom = torch.tensor(kw["dom_src"])
        S = t["T_Si"].shape[0]
        for i in range(S):
            loss = loss + F.cross_entropy(s * zs[dom == i] @ t["T_Si"][i].T, y[dom == i]) / S
    cos = zt @ t["T_T"].T
    if kw["p"].dtype.kind == "i":
        lab = torch.tensor(kw["p"])
        keep = lab >= 0
        l_t = F.cross_entropy(cos[keep], lab[keep]) if bool(keep.any()) else cos.sum() * 0.0
    else:
        l_t = F.cross_entropy(s * cos, torch.tensor(kw["p"]))          # soft targets
    if use_ot:
        l_t = (l_t + F.cross_entropy(s * cos, cos.argmax(dim=1))) / 2
        B, K = cos.shape
        a = torch.full((B,), 1.0 / B, dtype=torch.float64)
        b = torch.full((K,), 1.0 / K, dtype=torch.float64)
        loss = loss + lam_W * ot.emd2(a, b, 1.0 - cos, numItermax=500000)
    loss = loss + lam_T * l_t
    loss.backward()
    return loss.item(), {"d" + k: v.grad.numpy() for k, v in t.items()}


@pytest.mark.parametrize("extra", CASES[:4])
def test_crpl_loss_grad_matches_torch_autograd_oracle(extra):
    torch = pytest.importorskip("torch")
    pytest.importorskip("ot")
    w = CC.World(np.random.default_rng(60), 65, 256, 3)
    kw = CC._loss_kw(w, 90, 30, **extra)
    L, _, grads = R.crpl_loss_grad(**kw)
    L_t, g_t = _torch_loss(torch, kw)
    assert abs(L - L_t) <= 1e-10 * max(1.0, abs(L_t))
    assert set(grads) == set(g_t)
    for k in grads:
        np.testing.assert_allclose(grads[k], g_t[k], rtol=1e-8, atol=1e-12)


def test_vjps_are_the_explicit_gradients():
    kw = _loss_kw(70)
    cot = np.asarray(0.7)
    g = R.crpl_loss_grad(**kw)[2]
    v = CC.vjp_crpl_loss(kw, cot)
    assert set(v) == {"dT_S", "dT_Si", "dT_T"}
    for k in v:
        np.testing.assert_allclose(v[k], 0.7 * g[k], rtol=1e-15)
    kw_c = _loss_kw(70, combined=True)
    assert set(CC.vjp_crpl_loss(kw_c, cot)) == {"dT_S", "dT_T"}
    # target loss: d(cot L_T)/dT_T by finite differences
    tk = dict(z=kw["z_tgt"], T_T=kw["T_T"], p=kw["p"])
    fd = fd_grad(lambda X: R.crpl_target_loss(**dict(tk, T_T=X))[0], kw["T_T"])
    _close(CC.vjp_crpl_target_loss(tk, cot)["dT_T"], 0.7 * fd, rtol=2e-6)
    lk = dict(logits=np.random.default_rng(1).normal(size=(4, 3)), p=np.full((4, 3), 1 / 3))
    np.testing.assert_allclose(CC.vjp_soft_cross_entropy(lk, cot)["dlogits"],
                               0.7 * R.soft_cross_entropy_grad(**lk), rtol=1e-15)


# --------------------------------------------------------------------------- evaluation


def test_target_accuracy_code_undercount_on_31_samples():
    w = _world(80, K=4, D=6, S=1)
    _, z, y = w.images(31, 1)
    correct = int(np.sum(np.argmax(z @ w.T_T.T, axis=1) == y))
    assert correct > 0
    assert R.target_accuracy(z, w.T_T, y) == correct / 60          # 2 batches x 30
    assert R.target_accuracy(z, w.T_T, y, variant="exact") == correct / 31
    assert R.target_accuracy(z[:30], w.T_T, y[:30]) == R.target_accuracy(
        z[:30], w.T_T, y[:30], variant="exact")
    # a list of prompts is averaged (plain mean, not renormalised), = the (M, K, D) stack
    Ts = [w.text() for _ in range(3)]
    Tbar = (Ts[0] + Ts[1] + Ts[2]) / 3
    c2 = int(np.sum(np.argmax(z @ Tbar.T, axis=1) == y))
    assert R.target_accuracy(z, Ts, y, variant="exact") == c2 / 31
    assert R.target_accuracy(z, np.stack(Ts), y, batch_size=8) == c2 / 32


# --------------------------------------------------------------------------- argument errors


def test_bad_inputs_get_the_documented_errors():
    kw = _loss_kw(90)
    zt = kw["z_tgt"]
    bad = zt.copy()
    bad[1] *= 1.3
    with pytest.raises(ValueError, match=r"z_tgt must have unit-norm rows \(\|norm - 1\| <= "
                                         r"1e-4\); max deviation 0\.3$"):
        R.crpl_loss(**dict(kw, z_tgt=bad))
    with pytest.raises(ValueError, match=r"Z must have unit-norm rows"):
        R.ot_cluster_loss(bad, kw["T_T"])
    with pytest.raises(ValueError, match=r"T must have unit-norm rows"):
        R.ot_cluster_loss(zt, 2.0 * kw["T_T"])
    with pytest.raises(ValueError, match="empty batch"):
        R.ot_cluster_loss(zt[:0], kw["T_T"])
    with pytest.raises(ValueError, match="empty batch"):
        R.crpl_target_loss(zt[:0], kw["T_T"], kw["p"][:0])
    with pytest.raises(ValueError, match=r"T_T has K = 2 classes but T_S has K = 3"):
        R.crpl_loss(**dict(kw, T_T=kw["T_T"][:2], p=kw["p"][:, :2]))
    with pytest.raises(ValueError, match=r"T_S has K = 2 classes but T_base has K = 3"):
        R.crpl_reference_probs(zt, zt, kw["T_T"], kw["T_S"][:2])
    with pytest.raises(ValueError, match=r"y_src must hold class indices in \[0, 3\)"):
        R.crpl_loss(**dict(kw, y_src=kw["y_src"] + 3))
    with pytest.raises(ValueError, match=r"dom_src must hold source-domain indices in \[0, 2\)"):
        R.crpl_loss(**dict(kw, dom_src=kw["dom_src"] - 1))
    with pytest.raises(ValueError, match="every source domain must appear"):
        R.crpl_loss(**dict(kw, dom_src=np.zeros_like(kw["dom_src"])))
    with pytest.raises(ValueError, match="dom_src .* is required"):
        R.crpl_loss(**dict(kw, dom_src=None))
    with pytest.raises(ValueError, match=r"p must hold pseudo-labels .* in \[-1, 3\)"):
        R.crpl_target_loss(zt, kw["T_T"], np.array([0, 1, -2, 2]))
    with pytest.raises(TypeError, match="p must be soft targets"):
        R.crpl_target_loss(zt, kw["T_T"], kw["p"].astype(np.float16))
    with pytest.raises(ValueError, match="scale must be a finite number > 0"):
        R.crpl_loss(**dict(kw, scale=0.0))
    with pytest.raises(ValueError, match="lam_W must be >= 0"):
        R.crpl_loss(**dict(kw, lam_W=-1.0))
    with pytest.raises(TypeError, match="use_ot must be a bool"):
        R.crpl_loss(**dict(kw, use_ot=1))
    with pytest.raises(TypeError, match="T_S must have the dtype of z_src"):
        R.crpl_loss(**dict(kw, T_S=kw["T_S"].astype(np.float32)))
    with pytest.raises(TypeError, match="numpy reference takes numpy.ndarray"):
        torch = pytest.importorskip("torch")
        R.ot_cluster_loss(torch.tensor(zt), kw["T_T"])


def test_bad_inputs_of_probs_centroids_and_accuracy():
    w = _world(91)
    means, counts = w.full_centroids(1, 8)
    u, z, y = w.images(4, w.S)
    args = (z, u, w.T_base, w.T_S, w.T_Si, means, counts)
    with pytest.raises(ValueError, match="gamma must be a finite number > 0"):
        R.crpl_reference_probs(*args, gamma=-1.0)
    with pytest.raises(ValueError, match="variant must be one of 'code', 'paper'"):
        R.crpl_reference_probs(*args, variant="pdf")
    with pytest.raises(ValueError, match="centroids .* are required in multi-source mode"):
        R.crpl_reference_probs(z, u, w.T_base, w.T_S, w.T_Si)
    with pytest.raises(ValueError, match="used only in multi-source mode"):
        R.crpl_reference_probs(z, u, w.T_base, w.T_S, None, means, counts)
    with pytest.raises(ValueError, match=r"T_Si must have unit-norm rows"):
        R.crpl_reference_probs(z, u, w.T_base, w.T_S, 0.5 * w.T_Si, means, counts)
    with pytest.raises(ValueError, match="counts must be >= 0"):
        R.crpl_reference_probs(z, u, w.T_base, w.T_S, w.T_Si, means, -counts)
    bad_u = u.copy()
    bad_u[0, 0] = np.nan
    with pytest.raises(ValueError, match="u contains NaN or inf"):
        R.crpl_reference_probs(z, bad_u, *args[2:])
    with pytest.raises(ValueError, match=r"labels must hold class indices in \[0, 3\)"):
        R.update_class_centroids(means, counts, u, y + 3, np.zeros(4, dtype=np.int64))
    with pytest.raises(ValueError, match=r"domains must hold source-domain indices in \[0, 2\)"):
        R.update_class_centroids(means, counts, u, y, np.full(4, 2, dtype=np.int64))
    with pytest.raises(ValueError, match="feats has an empty batch"):
        R.update_class_centroids(means, counts, u[:0], y[:0], y[:0])
    with pytest.raises(TypeError, match="labels must be an integer array"):
        R.update_class_centroids(means, counts, u, y.astype(float), y)
    with pytest.raises(ValueError, match=r"labels must hold class indices in \[0, 3\)"):
        R.target_accuracy(z, w.T_T, y - 1)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        R.target_accuracy(z, w.T_T, y, batch_size=0)
    with pytest.raises(ValueError, match="variant must be one of 'code', 'exact'"):
        R.target_accuracy(z, w.T_T, y, variant="paper")
    with pytest.raises(ValueError,
                       match=r"T_list\[1\] has K = 2 classes but T_list\[0\] has K = 3"):
        R.target_accuracy(z, [w.T_T, w.T_T[:2]], y)
    with pytest.raises(ValueError, match="p must have the shape of logits"):
        R.soft_cross_entropy(z, z[:, :2])
    with pytest.raises(ValueError, match=r"threshold must be in \[0, 1\]"):
        R.clip_pseudo_labels(z, w.T_base, threshold=1.5)


# --------------------------------------------------------------------------- registry cases


OPS = ["update_class_centroids", "crpl_reference_probs", "soft_cross_entropy",
       "soft_cross_entropy_grad", "ot_cluster_loss", "crpl_target_loss", "crpl_loss",
       "crpl_loss_grad", "target_accuracy"]


@pytest.mark.parametrize("op", OPS)
def test_cases_run_and_are_well_formed(op):
    cases_fn = getattr(CC, f"cases_{op}")
    ref = getattr(R, op)
    for scale in ("tiny", "small"):
        cases = cases_fn(np.random.default_rng(0), scale)
        if scale == "tiny":
            assert 1 <= len(cases) <= 3
        labels = [c.label for c in cases]
        assert len(set(labels)) == len(labels)
        for c in cases:
            kw = c.inputs()
            for k, v in kw.items():
                if isinstance(v, np.ndarray) and v.dtype.kind == "i":
                    assert v.dtype == np.int64, k
            out = ref(**kw)
            flat = out if isinstance(out, tuple) else (out,)
            for o in flat:
                vals = o.values() if isinstance(o, dict) else [o]
                assert all(np.all(np.isfinite(v)) for v in vals)
            if scale == "tiny":
                kw32 = {k: (v.astype(np.float32) if isinstance(v, np.ndarray)
                            and v.dtype == np.float64 else
                            [x.astype(np.float32) for x in v] if isinstance(v, list) else v)
                        for k, v in kw.items()}
                ref(**kw32)                       # float32-cast inputs stay valid
    bench = cases_fn(np.random.default_rng(0), "bench")
    assert bench and all(callable(c.kwargs) for c in bench)
    assert all(c.dtypes == ("float32",) for c in bench if c.where == "gpu")
    ref(**bench[0].inputs())
    with pytest.raises(ValueError, match="unknown scale"):
        cases_fn(np.random.default_rng(0), "huge")


def test_cases_cover_the_variants():
    rng = np.random.default_rng(0)
    probs = {c.label: c.inputs() for c in CC.cases_crpl_reference_probs(rng, "small")}
    full = [kw for kw in probs.values() if kw.get("counts") is not None and
            bool((kw["counts"] > 0).all())]
    missing = [kw for kw in probs.values() if kw.get("counts") is not None and
               not bool((kw["counts"] > 0).all())]
    assert full and missing and any(kw.get("T_Si") is None for kw in probs.values())
    assert {kw.get("variant", "code") for kw in probs.values()} == {"code", "paper"}
    tiny = [c.inputs() for c in CC.cases_crpl_reference_probs(rng, "tiny")]
    assert [kw["z"].shape for kw in tiny] == [(4, 5)] * 3
    loss = [c.inputs() for c in CC.cases_crpl_loss(rng, "small")]
    assert {kw.get("use_ot", True) for kw in loss} == {True, False}
    assert any(kw["p"].dtype.kind == "i" and (kw["p"] == -1).any() for kw in loss)
    assert any(kw["T_Si"] is None for kw in loss)
    assert {kw["z_tgt"].shape for kw in loss} == {(30, 1024)}
    assert {kw["T_Si"].shape for kw in loss if kw["T_Si"] is not None} == {(3, 65, 1024)}
    up = {c.label: c.inputs() for c in CC.cases_update_class_centroids(rng, "tiny")}
    last = next(kw for lab, kw in up.items() if "last_centroid" in lab)
    assert (last["counts"] == 0).any()
    assert (R.update_class_centroids(**last)[1] > 0).all()          # the step fills the last
