"""Torch backend of the cross-tokenizer family (cross_tokenizer.md sec. 3-11): DWA-KD
(divergences, weights, gate, CMA, band, Soft-DTW loss, whole loss), CTPD (span sums, span
weights, teacher-anchored DPO) and TIS-DPO.

Checked against independent oracles written here (dense torch formulas with autograd, a
per-pair loop over the torch Soft-DTW divergence, ``torch.autograd.gradcheck`` in float64) and,
when it exists, the NumPy reference (:mod:`refimpl.cross_tokenizer`, else its two modules
``refimpl._dwa_kd`` / ``refimpl._ctpd``) on the spec's ``tiny`` case
(B, N', M', d_s, d_t, V_S, V_T) = (2, 6, 5, 4, 6, 11, 13) in float64 (1e-10) and float32
(atol 1e-5, rtol 5e-4); bf16 against float64 on the upcast inputs for ``kd_divergence`` and
``tis_dpo_loss`` (atol 5e-2, rtol 5e-1); bad input gives the reference's errors."""

import importlib
import importlib.util
import math

import numpy as np
import pytest

import backends

torch = pytest.importorskip("torch")
if backends.reason("torch") is not None:
    pytest.skip(f"backend torch: {backends.reason('torch')}", allow_module_level=True)

import torch.nn.functional as F

from backends.torch import cross_tokenizer as X
from backends.torch.softdtw import soft_dtw_divergence


def _load_ref():
    """``(dwa_kd module, ctpd module)`` of the reference, or (None, None)."""
    if importlib.util.find_spec("refimpl.cross_tokenizer") is not None:
        m = importlib.import_module("refimpl.cross_tokenizer")
        return m, m
    mods = []
    for name in ("refimpl._dwa_kd", "refimpl._ctpd"):
        mods.append(importlib.import_module(name)
                    if importlib.util.find_spec(name) is not None else None)
    return tuple(mods)


RD, RC = _load_ref()
needs_dwa = pytest.mark.skipif(RD is None, reason="DWA-KD reference not written yet")
needs_ctpd = pytest.mark.skipif(RC is None, reason="CTPD reference not written yet")

F64, F32, BF16 = torch.float64, torch.float32, torch.bfloat16
KINDS = ["forward_kl", "reverse_kl", "skewed_forward_kl", "skewed_reverse_kl", "js",
         "adaptive_kl"]
TOL = {F64: (1e-10, 1e-10), F32: (1e-5, 5e-4)}
TINY = dict(B=2, N=6, M=5, ds=4, dt=6, VS=11, VT=13)


def npy(x):
    if isinstance(x, torch.Tensor):
        x = x.detach()
        return (x.float() if x.dtype == BF16 else x).cpu().numpy()
    return np.asarray(x)


def assert_close(got, want, atol, rtol=0.0):
    got, want = np.asarray(npy(got), dtype=np.float64), np.asarray(npy(want), dtype=np.float64)
    assert got.shape == want.shape, (got.shape, want.shape)
    np.testing.assert_allclose(got, want, atol=atol, rtol=rtol)


def gen(seed):
    return torch.Generator().manual_seed(seed)


def randn(g, *shape, scale=1.0):
    return scale * torch.randn(*shape, generator=g, dtype=F64)


def tiny_case(seed=0, dtype=F64, prompt=(1, 1)):
    """The spec's tiny case with a prompt prefix (labels -100) and right padding."""
    g = gen(seed)
    B, N, M, ds, dt, VS, VT = (TINY[k] for k in ("B", "N", "M", "ds", "dt", "VS", "VT"))
    ls = torch.randint(0, VS, (B, N), generator=g)
    lt = torch.randint(0, VT, (B, M), generator=g)
    ls[:, :prompt[0]] = -100
    lt[:, :prompt[1]] = -100
    ls[1, N - 1:] = -100                  # right padding of row 1
    lt[1, M - 1:] = -100
    c = dict(
        z_s=randn(g, B, N, VS, scale=2.0), z_t=randn(g, B, M, VT, scale=2.0),
        labels_s=ls, labels_t=lt,
        H_s=randn(g, B, N, ds), H_t=randn(g, B, M, dt),
        e_s_in=randn(g, B, N, ds), e_s_tgt=randn(g, B, N, ds),
        e_t_in=randn(g, B, M, dt), e_t_tgt=randn(g, B, M, dt),
        proj={"query": (randn(g, 2 * dt, 2 * ds, scale=0.5), randn(g, 2 * dt, scale=0.1)),
              "t2s": (randn(g, ds, dt, scale=0.5), randn(g, ds, scale=0.1)),
              "s2t": (randn(g, dt, ds, scale=0.5), randn(g, dt, scale=0.1)),
              "dtw_embed_t2s": (randn(g, ds, dt, scale=0.5), randn(g, ds, scale=0.1))},
        W_s=randn(g, VS, ds), W_t=randn(g, VT, dt))
    return cast(c, dtype)


def cast(c, dtype):
    out = {}
    for k, v in c.items():
        if k == "proj":
            out[k] = {n: (w.to(dtype), b.to(dtype)) for n, (w, b) in v.items()}
        elif isinstance(v, torch.Tensor) and v.is_floating_point():
            out[k] = v.to(dtype)
        else:
            out[k] = v
    return out


def to_ref(c):
    out = {}
    for k, v in c.items():
        if k == "proj":
            out[k] = {n: (npy(w), npy(b)) for n, (w, b) in v.items()}
        else:
            out[k] = npy(v) if isinstance(v, torch.Tensor) else v
    return out


CMA_KEYS = ("e_s_in", "e_s_tgt", "e_t_in", "e_t_tgt", "H_s", "H_t")


def cma_args(c):
    ms, mt = c["labels_s"] != -100, c["labels_t"] != -100
    return [c[k] for k in CMA_KEYS] + [ms, mt, c["proj"], c["W_s"], c["W_t"]]


# --------------------------------------------------------------------------- kd_divergence


def dense_div(zs, zt, kind, tau, ttau, skew=0.1, alpha=None):
    """Independent oracle: the sec. 3 formulas in plain torch (autograd gives the gradient)."""
    ls, lq = torch.log_softmax(zs / tau, -1), torch.log_softmax(zt / ttau, -1)
    p, q = ls.exp(), lq.exp()
    fkl, rkl = (q * (lq - ls)).sum(-1), (p * (ls - lq)).sum(-1)
    if kind == "forward_kl":
        return fkl
    if kind == "reverse_kl":
        return rkl
    if kind == "skewed_forward_kl":
        return (q * (lq - torch.log(skew * q + (1 - skew) * p))).sum(-1)
    if kind == "skewed_reverse_kl":
        return (p * (ls - torch.log((1 - skew) * q + skew * p))).sum(-1)
    if kind == "js":
        e = 1e-9
        m = (p + q) / 2
        return 0.5 * ((q * (torch.log(q + e) - torch.log(m + e))).sum(-1)
                      + (p * (torch.log(p + e) - torch.log(m + e))).sum(-1))
    with torch.no_grad():                                   # adaptive: detached weights
        qs, idx = torch.sort(q, -1)
        gap = (qs - p.gather(-1, idx)).abs()
        tail = torch.cumsum(qs, -1) <= alpha
        gh, gt = (gap * ~tail).sum(-1), (gap * tail).sum(-1)
        den = (gh + gt).clamp_min(1e-9)
    return gh / den * fkl + gt / den * rkl


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("tau", [1.0, 2.0])
def test_kd_divergence_vs_dense_oracle_and_gradcheck(kind, tau):
    g = gen(1)
    zs, zt = randn(g, 3, 4, 9, scale=2.0), randn(g, 3, 4, 9, scale=2.0)
    opts = dict(kind=kind, tau=tau, tea_temp=1.5, use_tea_temp=True, skew=0.2,
                adaptive_alpha=0.4 if kind == "adaptive_kl" else None)
    leaf = zs.clone().requires_grad_(True)
    want = dense_div(leaf, zt, kind, tau, tau * 1.5, 0.2, 0.4)
    (dwant,) = torch.autograd.grad(want.sum(), leaf)
    div, dz = X.kd_divergence_grad(zs, zt, **opts)
    assert div.shape == (3, 4) and div.dtype == F64
    assert_close(div, want, 1e-12)
    assert_close(dz, dwant, 1e-12)
    got = X.kd_divergence(leaf, zt, **opts)                    # autograd through _KDDiv
    (dgot,) = torch.autograd.grad(got, leaf, grad_outputs=torch.ones_like(got))
    assert_close(got, want, 1e-12)
    assert_close(dgot, dwant, 1e-12)
    if kind == "adaptive_kl":      # detached weights: not the full derivative, by definition
        return
    small = randn(g, 2, 5).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda z: X.kd_divergence(z, randn(gen(2), 2, 5), **opts),
                                    (small,))


def test_kd_divergence_identities():
    g = gen(3)
    z = randn(g, 4, 7, scale=3.0)
    for kind in ("forward_kl", "reverse_kl", "skewed_forward_kl", "skewed_reverse_kl"):
        assert_close(X.kd_divergence(z, z, kind=kind), np.zeros(4), 1e-14)
    assert float(X.kd_divergence(z, z, kind="js").abs().max()) < 1e-8
    zt = randn(g, 4, 7)
    assert_close(X.kd_divergence(z, zt, kind="skewed_reverse_kl", skew=0.0),
                 X.kd_divergence(z, zt, kind="reverse_kl"), 1e-13)
    assert_close(X.kd_divergence(z, zt, kind="skewed_forward_kl", skew=0.0),
                 X.kd_divergence(z, zt, kind="forward_kl"), 1e-13)


def test_kd_divergence_blocks(monkeypatch):
    """Row blocks (``_BLOCK``) change nothing: the same values and gradients block by block."""
    g = gen(4)
    zs, zt = randn(g, 5, 3, 6), randn(g, 5, 3, 6)
    full = X.kd_divergence_grad(zs, zt, kind="skewed_reverse_kl")
    monkeypatch.setattr(X, "_BLOCK", 12)                    # 2 rows per block
    blk = X.kd_divergence_grad(zs, zt, kind="skewed_reverse_kl")
    for a, b in zip(full, blk):
        assert_close(a, b, 1e-15)


@needs_dwa
@pytest.mark.parametrize("dtype", [F64, F32])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("tau", [1.0, 2.0])
def test_kd_divergence_vs_reference(dtype, kind, tau):
    c = tiny_case(5, dtype)
    zs, zt = c["z_s"], c["z_t"][:, :, :11].contiguous()
    zt = torch.cat([zt, c["z_t"][:, :1, :11]], dim=1)      # (2, 6, 11), like z_s
    opts = dict(kind=kind, tau=tau, use_tea_temp=True, tea_temp=1.3, skew=0.1,
                adaptive_alpha=0.5 if kind == "adaptive_kl" else None)
    div, dz = X.kd_divergence_grad(zs, zt, **opts)
    rdiv, rdz = RD.kd_divergence_grad(npy(zs), npy(zt), **opts)
    atol, rtol = TOL[dtype]
    assert div.dtype == dtype and dz.dtype == dtype
    assert_close(div, rdiv, atol, rtol)
    assert_close(dz, rdz, atol, rtol)
    assert_close(X.kd_divergence(zs, zt, **opts), RD.kd_divergence(npy(zs), npy(zt), **opts),
                 atol, rtol)


@needs_dwa
def test_kd_divergence_infinite_entries_vs_reference():
    """An infinite logit entry contributes 0 (forward_kl: student entries; others: either)."""
    g = gen(6)
    zs, zt = randn(g, 3, 8), randn(g, 3, 8)
    zs[0, 2] = -math.inf
    zt[1, 5] = -math.inf
    for kind in KINDS[:-1]:
        got = X.kd_divergence(zs, zt, kind=kind)
        want = RD.kd_divergence(npy(zs), npy(zt), kind=kind)
        np.testing.assert_array_equal(np.isnan(npy(got)), np.isnan(want))
        ok = ~np.isnan(want)
        assert_close(npy(got)[ok], want[ok], 1e-12)


@needs_dwa
@pytest.mark.parametrize("kind", KINDS)
def test_kd_divergence_bf16(kind):
    g = gen(7)
    zs = randn(g, 2, 6, 11, scale=2.0).to(BF16)
    zt = randn(g, 2, 6, 11, scale=2.0).to(BF16)
    opts = dict(kind=kind, adaptive_alpha=0.5 if kind == "adaptive_kl" else None)
    div, dz = X.kd_divergence_grad(zs, zt, **opts)
    assert div.dtype == F32 and dz.dtype == BF16
    rdiv, rdz = RD.kd_divergence_grad(npy(zs), npy(zt), **opts)
    assert_close(div, rdiv, 5e-2, 5e-1)
    assert_close(dz, rdz, 5e-2, 5e-1)
    leaf = zs.clone().requires_grad_(True)
    out = X.kd_divergence(leaf, zt, **opts)
    (d,) = torch.autograd.grad(out.sum(), leaf)
    assert d.dtype == BF16
    assert_close(d, dz, 0)


# --------------------------------------------------------------------------- weights and gate


@needs_dwa
@pytest.mark.parametrize("dtype", [F64, F32])
def test_weights_and_gate_vs_reference(dtype):
    c = tiny_case(8, dtype)
    ms, mt = c["labels_s"] != -100, c["labels_t"] != -100
    atol, rtol = TOL[dtype]
    w_s = X.entropy_weights(c["z_s"], ms)
    assert_close(w_s, RD.entropy_weights(npy(c["z_s"]), npy(ms)), atol, rtol)
    assert_close(X.certainty_weights(c["z_t"], mt.to(torch.int64)),
                 RD.certainty_weights(npy(c["z_t"]), npy(mt)), atol, rtol)
    for step, warm in ((0, 300), (150, 300), (299, 300), (5, 0)):
        assert_close(X.kd_gate(c["z_s"], ms, step, warmup=warm),
                     RD.kd_gate(npy(c["z_s"]), npy(ms), step, warmup=warm), atol, rtol)


def test_weights_properties():
    c = tiny_case(9)
    ms = c["labels_s"] != -100
    w = X.entropy_weights(c["z_s"], ms)
    for b in range(2):
        assert abs(float(w[b][ms[b]].mean()) - 1) < 1e-6
    assert float(w[~ms].abs().max()) == 0.0
    # documented quirk: uniform teacher rows give c ~ 5e-9, so w_t ~ 0.96 each (V = 13, 5 pos.)
    zt = torch.zeros(1, 5, 13, dtype=F64)
    wt = X.certainty_weights(zt, torch.ones(1, 5, dtype=torch.bool))
    assert_close(wt, np.full((1, 5), 0.96), 0.01)
    zt[0, 2, 4] = 50.0                                      # one confident position
    wt = X.certainty_weights(zt, torch.ones(1, 5, dtype=torch.bool))
    assert abs(float(wt[0, 2]) - 5) < 1e-6 and float(wt[0, [0, 1, 3, 4]].max()) < 1e-7
    pmax = torch.softmax(c["z_s"], -1).amax(-1) * ms
    assert_close(X.kd_gate(c["z_s"], ms, 0), pmax / 300, 1e-15)
    assert_close(X.kd_gate(c["z_s"], ms, 299), pmax, 1e-15)
    assert_close(X.kd_gate(c["z_s"], ms, 10_000), pmax, 1e-15)


# --------------------------------------------------------------------------- CMA


def dense_cma(e_s_in, e_s_tgt, e_t_in, e_t_tgt, H_s, H_t, ms, mt, proj, W_s, W_t):
    """Independent oracle (sec. 2, written from the official code's lines)."""
    s_idx, t_idx = torch.cat([e_s_in, e_s_tgt], -1), torch.cat([e_t_in, e_t_tgt], -1)
    q = F.linear(s_idx, *proj["query"])
    k = t_idx / t_idx.std()
    v_t2s = F.linear(H_t / H_t.std() + e_t_tgt / e_t_tgt.std(), *proj["t2s"])
    v_s2t = F.linear(H_s, *proj["s2t"])
    a = q.matmul(k.transpose(-1, -2)) / math.sqrt(2 * H_t.shape[-1])
    amask = ms.to(a.dtype).unsqueeze(-1) * mt.to(a.dtype).unsqueeze(1)
    a = a + (1.0 - amask) * -100000
    t2s = torch.softmax(a, -1)
    s2t = torch.softmax(a.transpose(-1, -2), -1)
    return dict(A_t2s=t2s, A_s2t=s2t, z_t2s=t2s.matmul(v_t2s).matmul(W_s.T),
                z_s2t=s2t.matmul(v_s2t).matmul(W_t.T))


def test_cma_align_oracle_properties_and_gradcheck():
    c = tiny_case(10)
    args = cma_args(c)
    got, want = X.cma_align(*args), dense_cma(*args)
    for k in want:    # the oracle rounds a - 1e5 in rows without a valid pair (~1e-11)
        assert_close(got[k], want[k], 1e-10)
    assert_close(got["A_t2s"].sum(-1), np.ones((2, 6)), 1e-12)
    assert_close(got["A_s2t"].sum(-1), np.ones((2, 5)), 1e-12)
    ms, mt = args[6], args[7]
    masked_keys = got["A_t2s"][ms.unsqueeze(-1) & ~mt.unsqueeze(1)]
    assert float(masked_keys.max()) < 1e-30

    def fn(wq, wt2s, bs2t, H_s):
        proj = dict(c["proj"], query=(wq, c["proj"]["query"][1]),
                    t2s=(wt2s, c["proj"]["t2s"][1]), s2t=(c["proj"]["s2t"][0], bs2t))
        a = list(args)
        a[4], a[8] = H_s, proj
        out = X.cma_align(*a)
        return out["z_t2s"], out["z_s2t"]

    leaves = (c["proj"]["query"][0], c["proj"]["t2s"][0], c["proj"]["s2t"][1], c["H_s"])
    assert torch.autograd.gradcheck(fn, tuple(x.clone().requires_grad_(True) for x in leaves))


@needs_dwa
@pytest.mark.parametrize("dtype", [F64, F32])
def test_cma_align_vs_reference(dtype):
    c = tiny_case(11, dtype)
    got = X.cma_align(*cma_args(c))
    r = to_ref(c)
    want = RD.cma_align(*[r[k] for k in CMA_KEYS], r["labels_s"] != -100,
                        r["labels_t"] != -100, r["proj"], r["W_s"], r["W_t"])
    atol, rtol = TOL[dtype]
    for k in want:
        assert got[k].dtype == dtype
        assert_close(got[k], want[k], atol, rtol)


# --------------------------------------------------------------------------- band, gamma, DTW


def test_cma_band_penalty_properties():
    g = gen(12)
    A = torch.softmax(randn(g, 7, 9, scale=3.0), -1)
    assert float(X.cma_band_penalty(A, rho=0.0).abs().max()) == 0.0
    assert float(X.cma_band_penalty(A, w0=9.0).abs().max()) == 0.0
    P = X.cma_band_penalty(A, w0=0.5, kappa=0.1, rho=2.5)
    assert set(np.unique(npy(P))) <= {0.0, 2.5} and float(P.max()) == 2.5
    Ab = (A + 1e-9) / (A.sum(-1, keepdim=True) + 1e-9)
    centre = 0.7 * (Ab * torch.arange(9, dtype=F64)).sum(-1) + 0.3 * torch.arange(7) * 9 / 7
    cols = centre.round().long().clamp(0, 8)
    assert float(P[torch.arange(7), cols].max()) == 0.0      # centre column inside the band


@needs_dwa
@pytest.mark.parametrize("dtype", [F64, F32])
def test_cma_band_penalty_vs_reference(dtype):
    g = gen(13)
    A = torch.softmax(randn(g, 3, 6, 8, scale=2.0), -1).to(dtype)
    for kw in ({}, dict(w0=1.0, kappa=0.5, alpha=0.3, rho=0.7), dict(w0=0.0, kappa=0.2)):
        got = X.cma_band_penalty(A, **kw)
        assert got.dtype == dtype and got.shape == (3, 6, 8)
        atol = 0 if dtype == F64 else 1e-7                   # rho rounded to float32
        assert_close(got, RD.cma_band_penalty(npy(A), **kw), atol)
        assert_close(X.cma_band_penalty(A[1], **kw), RD.cma_band_penalty(npy(A[1]), **kw), atol)


def test_dwa_gamma():
    assert X.dwa_gamma(0) == pytest.approx(2.0 + (0.8 - 2.0) / 3570, abs=1e-15)
    assert X.dwa_gamma(3569) == pytest.approx(0.8, abs=1e-15)
    assert X.dwa_gamma(10 ** 6) == pytest.approx(0.8, abs=1e-15)
    assert X.dwa_gamma(7, steps=0) == 2.0
    if RD is not None:
        for s in (0, 11, 3569, 5000):
            assert X.dwa_gamma(s, gamma0=1.5) == RD.dwa_gamma(s, gamma0=1.5)


def dtw_case(seed, dtype=F64, prompt=True):
    g = gen(seed)
    Xs, Ys = randn(g, 3, 6, 4).to(dtype), randn(g, 3, 5, 4).to(dtype)
    ms = torch.ones(3, 6, dtype=torch.bool)
    mt = torch.ones(3, 5, dtype=torch.bool)
    if prompt:
        ms[:, :2] = False
        mt[:, :1] = False
    ms[1, 5] = False                       # padding
    mt[2, :] = False                       # an empty teacher row: pair skipped
    A = torch.softmax(randn(g, 3, 6, 5, scale=2.0), -1).to(dtype)
    return Xs, Ys, ms, mt, A


def loop_dtw(Xs, Ys, ms, mt, gamma, A, positions, band_kw):
    """Independent oracle: per pair, gather positions, band via cma_band_penalty, then the
    torch Soft-DTW divergence (kind="cosine", penalty=P)."""
    total = Xs.new_zeros(())
    for b in range(Xs.shape[0]):
        if positions == "mask":
            si, tj = torch.nonzero(ms[b]).squeeze(1), torch.nonzero(mt[b]).squeeze(1)
        else:
            si, tj = torch.arange(int(ms[b].sum())), torch.arange(int(mt[b].sum()))
        if len(si) == 0 or len(tj) == 0:
            continue
        P = None
        if A is not None and band_kw is not None:
            P = X.cma_band_penalty(A[b][si][:, tj], **band_kw)
        total = total + soft_dtw_divergence(Xs[b, si], Ys[b, tj], 0.7, kind="cosine",
                                            penalty=P)
    return total


@pytest.mark.parametrize("positions", ["mask", "prefix"])
@pytest.mark.parametrize("band", [None, dict(w0=1.0, kappa=0.5), dict(w0=0.5, kappa=0.1, rho=3)])
def test_dwa_dtw_loss_vs_loop_oracle(positions, band):
    Xs, Ys, ms, mt, A = dtw_case(14)
    kw = band or {}
    got = X.dwa_dtw_loss(Xs, Ys, ms, mt, 0.7, A if band else None, positions=positions, **kw)
    want = loop_dtw(Xs, Ys, ms, mt, 0.7, A, positions, band)
    assert_close(got, want, 1e-12)
    xl, yl = Xs.clone().requires_grad_(True), Ys.clone().requires_grad_(True)
    w = loop_dtw(xl, yl, ms, mt, 0.7, A, positions, band)
    dxw, dyw = torch.autograd.grad(w, (xl, yl))
    v, dX, dY = X.dwa_dtw_loss_grad(Xs, Ys, ms, mt, 0.7, A if band else None,
                                    positions=positions, **kw)
    assert_close(v, want, 1e-12)
    assert_close(dX, dxw, 1e-12)
    assert_close(dY, dyw, 1e-12)


def test_dwa_dtw_loss_cases_and_gradcheck():
    Xs, Ys, ms, mt, A = dtw_case(15, prompt=False)
    assert_close(X.dwa_dtw_loss(Xs, Ys, ms, mt, 0.5, A, positions="mask"),
                 X.dwa_dtw_loss(Xs, Ys, ms, mt, 0.5, A, positions="prefix"), 1e-13)
    none = torch.zeros_like(ms)
    v, dX, dY = X.dwa_dtw_loss_grad(Xs, Ys, none, mt, 0.5, A)
    assert float(v) == 0.0 and float(dX.abs().max()) == 0 and float(dY.abs().max()) == 0
    assert X.dwa_dtw_loss(Xs, Ys, none, mt, 0.5, A).shape == ()
    Xs, Ys, ms, mt, A = dtw_case(16)
    assert torch.autograd.gradcheck(
        lambda x, y: X.dwa_dtw_loss(x, y, ms, mt, 0.6, A, w0=1.0, kappa=0.3),
        (Xs.clone().requires_grad_(True), Ys.clone().requires_grad_(True)))


@needs_dwa
@pytest.mark.parametrize("dtype", [F64, F32])
@pytest.mark.parametrize("positions", ["mask", "prefix"])
def test_dwa_dtw_loss_vs_reference(dtype, positions):
    Xs, Ys, ms, mt, A = dtw_case(17, dtype)
    atol, rtol = TOL[dtype]
    for Ab, kw in ((None, {}), (A, dict(w0=1.0, kappa=0.5)), (A, {})):
        got = X.dwa_dtw_loss_grad(Xs, Ys, ms, mt, 0.8, Ab, positions=positions, **kw)
        want = RD.dwa_dtw_loss_grad(npy(Xs), npy(Ys), npy(ms), npy(mt), 0.8,
                                    None if Ab is None else npy(Ab), positions=positions, **kw)
        for a, b in zip(got, want):
            assert a.dtype == dtype
            assert_close(a, b, atol, rtol)


# --------------------------------------------------------------------------- dwa_kd_loss


def loop_dwa_kd(c, step, rates, tau, kind, variant, positions, gamma0):
    """Independent oracle: sec. 4-6 written directly (dense oracles above, per-pair DTW loop)."""
    ms, mt = c["labels_s"] != -100, c["labels_t"] != -100
    ys = torch.where(ms, c["labels_s"], 0)
    det = {k: c[k].detach() for k in ("e_s_in", "e_s_tgt", "e_t_in", "e_t_tgt", "W_s", "W_t",
                                      "H_t")}
    cma = dense_cma(det["e_s_in"], det["e_s_tgt"], det["e_t_in"], det["e_t_tgt"], c["H_s"],
                    det["H_t"], ms, mt, c["proj"], det["W_s"], det["W_t"])
    nll = lambda z: -(torch.log_softmax(z, -1).gather(-1, ys[..., None])[..., 0] * ms).sum()
    ce, t2s_ce = nll(c["z_s"]), nll(cma["z_t2s"])
    div = dense_div(c["z_s"], cma["z_t2s"].detach(), kind, tau, tau)
    s2t = dense_div(cma["z_s2t"], c["z_t"].detach(), "forward_kl", tau, tau)
    if variant == "dwa":
        p = torch.softmax(c["z_s"].detach(), -1)
        H = -(p * torch.log(p + 1e-9)).sum(-1) * ms
        w_s = ms.sum(-1, keepdim=True).clamp_min(1) * H / (H.sum(-1, keepdim=True) + 1e-9)
        gate = torch.softmax(cma["z_t2s"].detach(), -1).amax(-1) * min(1, (step + 1) / 300) * ms
        pt = torch.softmax(c["z_t"].detach(), -1)
        Ht = -(pt * torch.log(pt + 1e-9)).sum(-1)
        cc = (1 - Ht / (math.log(pt.shape[-1]) + 1e-9)).clamp(0, 1) * mt
        w_t = mt.sum(-1, keepdim=True).clamp_min(1) * cc / (cc.sum(-1, keepdim=True) + 1e-9)
        kd = t2s_ce + (w_s * gate * div).sum() + (w_t * mt * s2t).sum()
    else:
        hit = (cma["z_t2s"].argmax(-1) == ys) & ms
        kd = t2s_ce + (hit * div).sum() + (mt * s2t).sum()
    gamma = gamma0 + (0.8 - gamma0) * min(1, (step + 1) / 3570)
    A = cma["A_t2s"].detach()
    y_emb = F.linear(det["e_t_tgt"], *c["proj"]["dtw_embed_t2s"])
    y_hid = F.linear(det["H_t"], *c["proj"]["t2s"])
    dtw = 0.0
    for Xs, Ys in ((c["e_s_tgt"], y_emb), (c["H_s"], y_hid)):
        for b in range(Xs.shape[0]):
            si = torch.nonzero(ms[b]).squeeze(1) if positions == "mask" else torch.arange(
                int(ms[b].sum()))
            tj = torch.nonzero(mt[b]).squeeze(1) if positions == "mask" else torch.arange(
                int(mt[b].sum()))
            P = X.cma_band_penalty(A[b][si][:, tj])
            dtw = dtw + soft_dtw_divergence(Xs[b, si], Ys[b, tj], gamma, kind="cosine",
                                            penalty=P)
    return (rates[0] * ce + rates[1] * kd + rates[2] * dtw) / ms.sum()


DIFF_KEYS = ("z_s", "H_s", "e_s_tgt")


@pytest.mark.parametrize("variant,kind,positions", [("dwa", "skewed_reverse_kl", "mask"),
                                                    ("dskd", "forward_kl", "prefix"),
                                                    ("dwa", "js", "prefix")])
def test_dwa_kd_loss_vs_loop_oracle(variant, kind, positions):
    c = tiny_case(18)
    leaves = {k: c[k].clone().requires_grad_(True) for k in DIFF_KEYS}
    wq = c["proj"]["query"][0].clone().requires_grad_(True)
    c1 = dict(c, **leaves, proj=dict(c["proj"], query=(wq, c["proj"]["query"][1])))
    opts = dict(rates=(0.5, 0.5, 0.2), tau=2.0, kind=kind, variant=variant,
                positions=positions, gamma0=2.0)
    loss, parts = X.dwa_kd_loss(**c1, step=40, **opts)
    want = loop_dwa_kd(c1, 40, opts["rates"], 2.0, kind, variant, positions, 2.0)
    assert_close(loss, want, 1e-12)
    g1 = torch.autograd.grad(loss, [*leaves.values(), wq])
    g2 = torch.autograd.grad(want, [*leaves.values(), wq])
    for a, b in zip(g1, g2):
        assert_close(a, b, 1e-11)
    assert parts["gamma"] == X.dwa_gamma(40)
    assert parts["n_tok"] == float((c["labels_s"] != -100).sum())


@needs_dwa
@pytest.mark.parametrize("dtype", [F64, F32])
@pytest.mark.parametrize("variant,positions", [("dwa", "mask"), ("dskd", "prefix")])
def test_dwa_kd_loss_vs_reference(dtype, variant, positions):
    c = tiny_case(19, dtype)
    loss, parts = X.dwa_kd_loss(**c, step=120, variant=variant, positions=positions)
    rl, rparts = RD.dwa_kd_loss(**to_ref(c), step=120, variant=variant, positions=positions)
    atol, rtol = TOL[dtype]
    assert loss.dtype == dtype
    assert_close(loss, rl, atol, rtol)
    assert set(parts) == set(rparts)
    for k in rparts:
        assert_close(parts[k], rparts[k], atol * 10, rtol)


@needs_dwa
@pytest.mark.parametrize("variant", ["dwa", "dskd"])
def test_dwa_kd_loss_autograd_vs_reference_finite_differences(variant):
    """Directional derivatives of the reference loss (central differences, tiny, fp64) match
    torch autograd w.r.t. the inputs whose every path is differentiated in the code: H_s, the
    s2t projector, the DTW embedding projector, and (hard mask of ``dskd``: piecewise
    constant) z_s. Inputs reaching a stop-gradient (z_s through the dwa weights; the query and
    t2s projectors through the gate and ``sg z_t2s``; embeddings entering CMA) are covered by
    the loop-oracle test, which applies the same stop-gradients."""
    c = tiny_case(20)
    names = ["H_s", ("s2t", 0), ("s2t", 1), ("dtw_embed_t2s", 0), ("dtw_embed_t2s", 1)]
    if variant == "dskd":
        names.append("z_s")

    def get(cc, n):
        return cc["proj"][n[0]][n[1]] if isinstance(n, tuple) else cc[n]

    def with_leaves(cc, vals):
        out = dict(cc, proj={k: list(v) for k, v in cc["proj"].items()})
        for n, v in zip(names, vals):
            if isinstance(n, tuple):
                out["proj"][n[0]][n[1]] = v
            else:
                out[n] = v
        out["proj"] = {k: tuple(v) for k, v in out["proj"].items()}
        return out

    leaves = [get(c, n).clone().requires_grad_(True) for n in names]
    loss, _ = X.dwa_kd_loss(**with_leaves(c, leaves), step=50, variant=variant)
    grads = torch.autograd.grad(loss, leaves)
    g = gen(21)
    dirs = [randn(g, *x.shape) for x in leaves]
    h = 1e-6
    f = [float(RD.dwa_kd_loss(**to_ref(with_leaves(c, [x + s * h * d for x, d in
                                                       zip(leaves, dirs)])),
                              step=50, variant=variant)[0]) for s in (1, -1)]
    fd = (f[0] - f[1]) / (2 * h)
    ad = sum(float((gr * d).sum()) for gr, d in zip(grads, dirs))
    assert abs(fd - ad) <= 1e-6 * max(1.0, abs(ad)), (fd, ad)


# --------------------------------------------------------------------------- spans


def span_case(seed, dtype=F64):
    g = gen(seed)
    x = randn(g, 4, 9).to(dtype)
    seg = torch.tensor([[0, 0, 1, 2, 2, 2, -1, -1, -1],
                        [0, 1, 1, 1, 3, 3, 3, 3, -1],
                        [0, 0, 0, 0, 0, 1, 1, 2, -1],
                        [-1, 0, 1, 2, 3, 3, 3, 3, 3]])
    return x, seg


def test_span_sum_oracle_and_autograd():
    x, seg = span_case(22)
    want = torch.zeros(4, 5, dtype=F64)
    cnt = torch.zeros(4, 5, dtype=F64)
    for r in range(4):
        for k in range(9):
            if seg[r, k] >= 0:
                want[r, seg[r, k]] += x[r, k]
                cnt[r, seg[r, k]] += 1
    assert_close(X.span_sum(x, seg, 5), want, 1e-14)
    assert_close(X.span_sum(x, seg, 5).sum(-1), (x * (seg >= 0)).sum(-1), 1e-13)
    assert_close(X.span_sum(x, seg, 5, reduce="mean"),
                 torch.where(cnt > 0, want / cnt.clamp_min(1), 0.0), 1e-14)
    assert_close(X.span_sum(x, seg, 5, reduce="padded_mean"), want / cnt.max(), 1e-14)
    shared = X.span_sum(x, seg[0], 5)
    assert_close(shared, X.span_sum(x, seg[0].expand(4, 9).contiguous(), 5), 0)
    leaf = x.clone().requires_grad_(True)
    cot = randn(gen(23), 4, 5)
    (d,) = torch.autograd.grad(X.span_sum(leaf, seg, 5), leaf, grad_outputs=cot)
    assert_close(d, torch.where(seg >= 0, cot.gather(1, seg.clamp_min(0)), 0.0), 0)
    x3 = x.view(2, 2, 9)
    assert X.span_sum(x3, seg.view(2, 2, 9), 5).shape == (2, 2, 5)


@needs_ctpd
@pytest.mark.parametrize("dtype", [F64, F32])
@pytest.mark.parametrize("reduce", ["sum", "mean", "padded_mean"])
def test_span_sum_vs_reference(dtype, reduce):
    x, seg = span_case(24, dtype)
    atol, rtol = TOL[dtype]
    got = X.span_sum(x, seg, 6, reduce=reduce)
    assert got.dtype == dtype
    assert_close(got, RC.span_sum(npy(x), npy(seg), 6, reduce=reduce), atol, rtol)
    assert_close(X.span_sum(x, seg[1], 6, reduce=reduce),
                 RC.span_sum(npy(x), npy(seg[1]), 6, reduce=reduce), atol, rtol)


@needs_ctpd
@pytest.mark.parametrize("dtype", [F64, F32])
def test_span_weights_vs_reference(dtype):
    g = gen(25)
    lp, ln = randn(g, 4, 7, scale=1.5).to(dtype), randn(g, 4, 7, scale=1.5).to(dtype)
    mu = torch.tensor([[1.0], [1.0], [-1.0], [-1.0]], dtype=dtype)
    for m, kw in ((mu, {}), (1, {}), (-1, dict(k=2.0, lo=-1.0, hi=0.5)), (mu, dict(decimals=None))):
        got = X.span_weights(lp, ln, m, **kw)
        want = RC.span_weights(npy(lp), npy(ln), npy(m) if isinstance(m, torch.Tensor) else m,
                               **kw)
        assert got.dtype == dtype
        assert_close(got, want, 1e-12 if dtype == F64 else 1e-6)
    w = X.span_weights(lp.double(), ln.double(), 1)
    assert float(w.min()) >= 0.6 and float(w.max()) <= 4.49
    # half to even at 2 decimals: exp(x) = 1.125 and 1.135 exactly representable? use k
    half = X.span_weights(torch.zeros(3, dtype=F64), torch.zeros(3, dtype=F64), 1,
                          k=0.125, decimals=2)
    assert_close(half, np.full(3, 0.12), 0)                # 0.125 -> 0.12 (half to even)


def test_ctpd_loss_oracle_and_identities():
    g = gen(26)
    ellS, ellT = randn(g, 6, 5, scale=3.0), randn(g, 6, 5, scale=3.0)
    w = torch.rand(6, 5, generator=g, dtype=F64) * 2
    beta = 0.3
    D = (w * (ellS - ellT)).sum(-1)
    want = F.softplus(-beta * (D[:3] - D[3:])).mean()
    loss, rw, rl = X.ctpd_loss(ellS, ellT, w, beta)
    assert_close(loss, want, 1e-14)
    assert_close(rw, beta * D[:3], 1e-14)
    assert_close(rl, beta * D[3:], 1e-14)
    assert_close(X.ctpd_loss(ellS, ellS, w)[0], math.log(2), 1e-15)
    leaf = ellS.clone().requires_grad_(True)
    (d,) = torch.autograd.grad(X.ctpd_loss(leaf, ellT, w, beta)[0], leaf)
    L2, d2 = X.ctpd_loss_grad(ellS, ellT, w, beta)
    assert_close(L2, want, 1e-14)
    assert_close(d2, d, 1e-15)
    kap = -beta * torch.sigmoid(-beta * (D[:3] - D[3:])) / 3
    assert_close(d2, torch.cat([w[:3] * kap[:, None], -w[3:] * kap[:, None]]), 1e-14)
    # one span per response, w = 1 -> DPO with the teacher's sequence log-probs as reference
    from backends.torch.preference import dpo_loss
    one = X.ctpd_loss(ellS[:, :1], ellT[:, :1], torch.ones(6, 1, dtype=F64), beta)
    ref = dpo_loss(ellS[:, 0], ellT[:, 0], beta)
    for a, b in zip(one, ref):
        assert_close(a, b, 1e-15)
    assert torch.autograd.gradcheck(lambda s: X.ctpd_loss(s, ellT, w, beta)[0],
                                    (ellS.clone().requires_grad_(True),))


@needs_ctpd
@pytest.mark.parametrize("dtype", [F64, F32])
def test_ctpd_loss_vs_reference(dtype):
    g = gen(27)
    ellS, ellT = randn(g, 4, 6, scale=3.0).to(dtype), randn(g, 4, 6, scale=3.0).to(dtype)
    w = (torch.rand(4, 6, generator=g, dtype=F64) * 2).to(dtype)
    w[1, 4:] = 0
    atol, rtol = TOL[dtype]
    got, want = X.ctpd_loss(ellS, ellT, w, 0.2), RC.ctpd_loss(npy(ellS), npy(ellT), npy(w), 0.2)
    for a, b in zip(got, want):
        assert a.dtype == dtype
        assert_close(a, b, atol, rtol)
    got, want = X.ctpd_loss_grad(ellS, ellT, w), RC.ctpd_loss_grad(npy(ellS), npy(ellT), npy(w))
    for a, b in zip(got, want):
        assert_close(a, b, atol, rtol)


# --------------------------------------------------------------------------- TIS-DPO


def tis_case(seed, R=4, T=6, Vn=13, dtype=F64):
    g = gen(seed)
    z, zr = randn(g, R, T, Vn, scale=2.0), randn(g, R, T, Vn, scale=2.0)
    labels = torch.randint(0, Vn, (R, T), generator=g)
    mask = torch.ones(R, T, dtype=torch.bool)
    mask[:, :min(2, T - 1)] = False
    mask[1, T - 1] = False
    labels[~mask] = -100
    w = torch.rand(R, T, generator=g, dtype=F64) * 2
    return z.to(dtype), zr.to(dtype), labels, mask, w.to(dtype)


def dense_tis(z, zr, labels, mask, w, beta, alpha, token_level):
    lp, lq = torch.log_softmax(z, -1), torch.log_softmax(zr, -1)
    y = torch.where(mask, labels, 0)[..., None]
    om = w * mask
    u = (om * (lp.gather(-1, y) - lq.gather(-1, y))[..., 0]).sum(-1)
    K = (om * (lp.exp() * (lp - lq)).sum(-1)).sum(-1)
    B = z.shape[0] // 2
    if token_level:
        h = (u[:B] - u[B:]) - alpha * (K[:B] - K[B:])
        r = beta * (u - K)
    else:
        h = u[:B] - u[B:]
        r = beta * u
    return -F.logsigmoid(beta * h).mean(), r[:B], r[B:]


@pytest.mark.parametrize("token_level", [True, False])
def test_tis_dpo_loss_oracle_and_gradcheck(token_level, monkeypatch):
    z, zr, labels, mask, w = tis_case(28)
    leaf = z.clone().requires_grad_(True)
    want = dense_tis(leaf, zr, labels, mask, w, 0.4, 0.7, token_level)
    (dw,) = torch.autograd.grad(want[0], leaf)
    got = X.tis_dpo_loss(z, zr, labels, mask, w, 0.4, alpha=0.7, token_level=token_level)
    for a, b in zip(got, want):
        assert_close(a, b, 1e-13)
    monkeypatch.setattr(X, "_BLOCK", 26)                    # 2 rows per block
    L, dz = X.tis_dpo_loss_grad(z, zr, labels, mask, w, 0.4, alpha=0.7, token_level=token_level)
    assert_close(L, want[0], 1e-13)
    assert_close(dz, dw, 1e-13)
    small = tis_case(29, R=2, T=3, Vn=5)
    assert torch.autograd.gradcheck(
        lambda zz: X.tis_dpo_loss(zz, *small[1:], 0.5, token_level=token_level)[0],
        (small[0].clone().requires_grad_(True),))


def test_tis_dpo_identities():
    z, zr, labels, mask, w = tis_case(30)
    loss, rw, rl = X.tis_dpo_loss(z, z, labels, mask, w, 0.3)
    assert_close(loss, math.log(2), 1e-14)
    assert float(rw.abs().max()) < 1e-14 and float(rl.abs().max()) < 1e-14
    from backends.torch.preference import dpo_loss
    lp = lambda zz: (torch.log_softmax(zz, -1).gather(-1, torch.where(mask, labels, 0)[..., None])
                     [..., 0] * mask).sum(-1)
    got = X.tis_dpo_loss(z, zr, labels, mask, torch.ones_like(w), 0.3, token_level=False)
    want = dpo_loss(lp(z), lp(zr), 0.3)
    for a, b in zip(got, want):
        assert_close(a, b, 1e-13)


@needs_ctpd
@pytest.mark.parametrize("dtype", [F64, F32])
@pytest.mark.parametrize("token_level", [True, False])
def test_tis_dpo_loss_vs_reference(dtype, token_level):
    z, zr, labels, mask, w = tis_case(31, dtype=dtype)
    atol, rtol = TOL[dtype]
    args = (labels, mask, w, 0.25)
    got = X.tis_dpo_loss(z, zr, *args, alpha=0.6, token_level=token_level)
    want = RC.tis_dpo_loss(npy(z), npy(zr), *[npy(a) for a in args[:3]], 0.25, alpha=0.6,
                           token_level=token_level)
    for a, b in zip(got, want):
        assert a.dtype == dtype
        assert_close(a, b, atol, rtol)
    got = X.tis_dpo_loss_grad(z, zr, *args, alpha=0.6, token_level=token_level)
    want = RC.tis_dpo_loss_grad(npy(z), npy(zr), *[npy(a) for a in args[:3]], 0.25, alpha=0.6,
                                token_level=token_level)
    assert got[1].dtype == dtype
    for a, b in zip(got, want):
        assert_close(a, b, atol, rtol)


@needs_ctpd
def test_tis_dpo_loss_bf16():
    z, zr, labels, mask, w = tis_case(32)
    zb, zrb, wb = z.to(BF16), zr.to(BF16), w.to(BF16)
    got = X.tis_dpo_loss(zb, zrb, labels, mask, wb, 0.5)
    assert got[0].dtype == F32
    want = RC.tis_dpo_loss(npy(zb), npy(zrb), npy(labels), npy(mask), npy(wb), 0.5)
    for a, b in zip(got, want):
        assert_close(a, b, 5e-2, 5e-1)
    L, dz = X.tis_dpo_loss_grad(zb, zrb, labels, mask, wb, 0.5)
    assert dz.dtype == BF16
    _, rdz = RC.tis_dpo_loss_grad(npy(zb), npy(zrb), npy(labels), npy(mask), npy(wb), 0.5)
    assert_close(dz, rdz, 5e-2, 5e-1)


# --------------------------------------------------------------------------- errors


def _err(fn):
    try:
        fn()
    except (TypeError, ValueError) as e:
        return type(e), str(e)
    raise AssertionError("no error raised")


def _bad_calls():
    """(torch call, reference call) pairs that must fail with the same error."""
    c = tiny_case(33)
    r = to_ref(c)
    zs, zt = c["z_s"], c["z_s"].clone()
    ms = c["labels_s"] != -100
    Xs, Ys, dm_s, dm_t, A = dtw_case(34)
    x, seg = span_case(35)
    z, zr, labels, mask, w = tis_case(36)
    n = npy
    out = []
    if RD is not None:
        out += [
            (lambda: X.kd_divergence(zs, zt, kind="bogus"),
             lambda: RD.kd_divergence(n(zs), n(zt), kind="bogus")),
            (lambda: X.kd_divergence(zs, zt, kind="adaptive_kl"),
             lambda: RD.kd_divergence(n(zs), n(zt), kind="adaptive_kl")),
            (lambda: X.kd_divergence(zs, zt[..., :5], tau=2.0),
             lambda: RD.kd_divergence(n(zs), n(zt)[..., :5])),
            (lambda: X.kd_divergence(zs, zt, tau=-1.0),
             lambda: RD.kd_divergence(n(zs), n(zt), tau=-1.0)),
            (lambda: X.entropy_weights(zs, ms[:, :3]),
             lambda: RD.entropy_weights(n(zs), n(ms)[:, :3])),
            (lambda: X.kd_gate(zs, ms, -1), lambda: RD.kd_gate(n(zs), n(ms), -1)),
            (lambda: X.certainty_weights(zs, ms.to(F64) * 2),
             lambda: RD.certainty_weights(n(zs), n(ms).astype(float) * 2)),
            (lambda: X.cma_band_penalty(A[0], alpha=2.0),
             lambda: RD.cma_band_penalty(n(A[0]), alpha=2.0)),
            (lambda: X.cma_band_penalty(-A[0]), lambda: RD.cma_band_penalty(-n(A[0]))),
            (lambda: X.dwa_dtw_loss(Xs, Ys, dm_s, dm_t, 0.5, A, positions="all"),
             lambda: RD.dwa_dtw_loss(n(Xs), n(Ys), n(dm_s), n(dm_t), 0.5, n(A),
                                     positions="all")),
            (lambda: X.dwa_dtw_loss(Xs, Ys, dm_s, dm_t, 0.0),
             lambda: RD.dwa_dtw_loss(n(Xs), n(Ys), n(dm_s), n(dm_t), 0.0)),
            (lambda: X.dwa_dtw_loss(Xs, Ys, dm_s, dm_t, 0.5, A[:, :2]),
             lambda: RD.dwa_dtw_loss(n(Xs), n(Ys), n(dm_s), n(dm_t), 0.5, n(A)[:, :2])),
            (lambda: X.cma_align(*cma_args(dict(c, proj={"query": c["proj"]["query"]}))),
             lambda: RD.cma_align(*[r[k] for k in CMA_KEYS], r["labels_s"] != -100,
                                  r["labels_t"] != -100, {"query": r["proj"]["query"]},
                                  r["W_s"], r["W_t"])),
            (lambda: X.dwa_kd_loss(**c, step=0, variant="x"),
             lambda: RD.dwa_kd_loss(**r, step=0, variant="x")),
            (lambda: X.dwa_kd_loss(**dict(c, labels_s=c["labels_s"] + 50), step=0),
             lambda: RD.dwa_kd_loss(**dict(r, labels_s=r["labels_s"] + 50), step=0)),
            (lambda: X.dwa_kd_loss(**c, step=0, rates=(1, 2)),
             lambda: RD.dwa_kd_loss(**r, step=0, rates=(1, 2))),
        ]
    if RC is not None:
        out += [
            (lambda: X.span_sum(x, seg, 3), lambda: RC.span_sum(n(x), n(seg), 3)),
            (lambda: X.span_sum(x, seg[:, :4], 6), lambda: RC.span_sum(n(x), n(seg)[:, :4], 6)),
            (lambda: X.span_sum(x, seg, 6, reduce="max"),
             lambda: RC.span_sum(n(x), n(seg), 6, reduce="max")),
            (lambda: X.span_weights(x, x[:2], 1), lambda: RC.span_weights(n(x), n(x)[:2], 1)),
            (lambda: X.span_weights(x, x, 1, lo=2.0),
             lambda: RC.span_weights(n(x), n(x), 1, lo=2.0)),
            (lambda: X.ctpd_loss(x[:3], x[:3], x[:3]), lambda: RC.ctpd_loss(n(x)[:3], n(x)[:3],
                                                                            n(x)[:3])),
            (lambda: X.ctpd_loss(x, x, x.float()), lambda: RC.ctpd_loss(n(x), n(x),
                                                                        n(x).astype(np.float32))),
            (lambda: X.ctpd_loss(x, x, x, -0.1), lambda: RC.ctpd_loss(n(x), n(x), n(x), -0.1)),
            (lambda: X.tis_dpo_loss(z, zr, labels + 40, mask, w, 0.1),
             lambda: RC.tis_dpo_loss(n(z), n(zr), n(labels) + 40, n(mask), n(w), 0.1)),
            (lambda: X.tis_dpo_loss(z, zr[:2], labels, mask, w, 0.1),
             lambda: RC.tis_dpo_loss(n(z), n(zr)[:2], n(labels), n(mask), n(w), 0.1)),
            (lambda: X.tis_dpo_loss(z, zr, labels, mask, w, 0.1, alpha=-1.0),
             lambda: RC.tis_dpo_loss(n(z), n(zr), n(labels), n(mask), n(w), 0.1, alpha=-1.0)),
        ]
    return out


@pytest.mark.skipif(RD is None and RC is None, reason="reference not written yet")
def test_bad_input_gives_the_reference_errors():
    calls = _bad_calls()
    assert calls
    for mine, ref in calls:
        assert _err(mine) == _err(ref)


def test_mixed_backends_refused():
    c = tiny_case(37)
    with pytest.raises(TypeError, match="torch backend takes torch.Tensor"):
        X.kd_divergence(npy(c["z_s"]), c["z_s"])
    with pytest.raises(TypeError, match="torch backend takes torch.Tensor"):
        X.span_sum(c["z_s"][..., 0], np.zeros(6, dtype=np.int64), 2)
    with pytest.raises(TypeError, match="torch backend takes torch.Tensor"):
        X.cma_align(*[npy(x) if i == 0 else x for i, x in enumerate(cma_args(c))])


# --------------------------------------------------------------------------- memory, device


def test_autograd_saves_no_vocabulary_sized_tensor():
    """``kd_divergence`` and ``tis_dpo_loss`` keep nothing of size N x V for the backward
    beyond their own inputs (saved-tensor hooks see every tensor autograd stores)."""
    g = gen(38)
    zs, zt = randn(g, 4, 5, 50).requires_grad_(True), randn(g, 4, 5, 50)
    z, zr, labels, mask, w = tis_case(39, Vn=50)
    z.requires_grad_(True)
    for fn, inputs in ((lambda: X.kd_divergence(zs, zt, kind="js").sum(), (zs, zt)),
                       (lambda: X.tis_dpo_loss(z, zr, labels, mask, w, 0.1)[0], (z, zr))):
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t,
                                                      lambda t: t):
            out = fn()
        ptrs = {x.data_ptr() for x in inputs}
        big = [tuple(t.shape) for t in saved if t.numel() >= 50 and t.data_ptr() not in ptrs]
        assert saved and not big, big
        out.backward()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu():
    """Every op on CUDA equals the CPU result (float64, tiny case)."""
    dev = torch.device("cuda")

    def on(x):
        if isinstance(x, dict):
            return {k: on(v) for k, v in x.items()}
        if isinstance(x, tuple):
            return tuple(on(v) for v in x)
        return x.to(dev) if isinstance(x, torch.Tensor) else x

    def same(a, b):
        if isinstance(a, dict):
            for k in a:
                same(a[k], b[k])
        elif isinstance(a, (tuple, list)):
            for u, v in zip(a, b):
                same(u, v)
        else:
            assert_close(a, b, 1e-10)

    c = tiny_case(40)
    Xs, Ys, ms, mt, A = dtw_case(41)
    x, seg = span_case(42)
    z, zr, labels, mask, w = tis_case(43)
    calls = [
        (X.kd_divergence_grad, (c["z_s"], c["z_s"].flip(0)), dict(kind="skewed_reverse_kl")),
        (X.entropy_weights, (c["z_s"], c["labels_s"] != -100), {}),
        (X.certainty_weights, (c["z_t"], c["labels_t"] != -100), {}),
        (X.kd_gate, (c["z_s"], c["labels_s"] != -100, 3), {}),
        (X.cma_align, tuple(cma_args(c)), {}),
        (X.cma_band_penalty, (A,), dict(w0=1.0)),
        (X.dwa_dtw_loss_grad, (Xs, Ys, ms, mt, 0.7, A), dict(w0=1.0)),
        (X.dwa_kd_loss, (), dict(c, step=7)),
        (X.span_sum, (x, seg, 5), dict(reduce="mean")),
        (X.span_weights, (x, x.flip(0), 1), {}),
        (X.ctpd_loss_grad, (x, x.flip(0), x.abs()), {}),
        (X.tis_dpo_loss_grad, (z, zr, labels, mask, w, 0.2), {}),
    ]
    for fn, args, kw in calls:
        same(fn(*on(args), **on(kw)), fn(*args, **kw))
