"""Torch backend of the preference family (preference.md sec. 7, 8, 11): the fused chunked
head (:class:`_TokenLogp`), the DPO formula, logits-SAM, checked against an independent dense
float64 oracle written here (log_softmax + gather + masked sum + the sec. 3 formula, autograd),
``torch.autograd.gradcheck``, and, when it exists, the NumPy reference
:mod:`refimpl.preference`."""

import importlib.util

import numpy as np
import pytest

import backends

torch = pytest.importorskip("torch")
if backends.reason("torch") is not None:
    pytest.skip(f"backend torch: {backends.reason('torch')}", allow_module_level=True)

import torch.nn.functional as F

from torch_testing import saved_numels
from backends.torch import preference as P

HAVE_REF = importlib.util.find_spec("refimpl.preference") is not None
needs_ref = pytest.mark.skipif(not HAVE_REF, reason="refimpl.preference not written yet")

F64 = torch.float64
LOSSES = [("sigmoid", 0.0), ("sigmoid", 0.1), ("hinge", 0.0), ("ipo", 0.0)]


def make_case(B=2, T=5, d=8, V=11, seed=0, dtype=F64, prompt=2, scale=1.0):
    """Chosen-first rows, a prompt prefix and right padding masked out (labels -100 there)."""
    g = torch.Generator().manual_seed(seed)
    R = 2 * B
    H = (scale * torch.randn(R, T, d, generator=g, dtype=F64)).to(dtype)
    W = (scale * torch.randn(V, d, generator=g, dtype=F64)).to(dtype)
    b = torch.randn(V, generator=g, dtype=F64).to(dtype)
    labels = torch.randint(0, V, (R, T), generator=g)
    mask = torch.zeros(R, T, dtype=torch.bool)
    for r in range(R):
        end = T - (r % 3)                       # right padding of 0..2 tokens
        mask[r, min(prompt, end - 1):end] = True
    labels[~mask] = -100
    ref = torch.randn(R, generator=g, dtype=F64) - 5.0
    return H, W, b, labels, mask, ref


def dense_loss(H, W, b, labels, mask, ref, beta, loss_type="sigmoid", ls=0.0, eps=None):
    """Independent oracle: the full logits, log_softmax, gather, masked sum, sec. 3."""
    We = W if eps is None else W + eps
    Z = H @ We.T + (0 if b is None else b)
    y = torch.where(mask, labels, 0)
    lp = torch.log_softmax(Z, dim=-1).gather(-1, y.unsqueeze(-1)).squeeze(-1) * mask
    logp = lp.sum(1)
    if loss_type == "ipo":
        logp = logp / mask.sum(1)
    B = H.shape[0] // 2
    h = (logp[:B] - ref[:B]) - (logp[B:] - ref[B:])
    u = beta * h
    if loss_type == "sigmoid":
        losses = -(1 - ls) * F.logsigmoid(u) - ls * F.logsigmoid(-u)
    elif loss_type == "hinge":
        losses = torch.relu(1 - u)
    else:
        losses = (h - 1 / (2 * beta)) ** 2
    return losses.mean()


def dense_grads(H, W, b, labels, mask, ref, beta, loss_type="sigmoid", ls=0.0, eps=None):
    leaves = [x.detach().clone().requires_grad_(True) for x in (H, W, b)]
    L = dense_loss(*leaves, labels, mask, ref, beta, loss_type, ls, eps)
    return (L.detach(), *torch.autograd.grad(L, leaves))


def assert_close(a, b, tol):
    assert a.shape == b.shape
    err = float((a.double() - b.double()).abs().max()) if a.numel() else 0.0
    assert err <= tol, f"max abs error {err:.3e} > {tol:.1e}"


# --------------------------------------------------------------------------- oracle agreement


@pytest.mark.parametrize("loss_type,ls", LOSSES)
@pytest.mark.parametrize("chunks", [(None, None), (7, 5), (3, 4)])
def test_linear_dpo_loss_grad_vs_dense_oracle(loss_type, ls, chunks):
    H, W, b, labels, mask, ref = make_case(B=3, T=6, d=8, V=13, seed=1)
    beta = 0.3
    want = dense_grads(H, W, b, labels, mask, ref, beta, loss_type, ls)
    got = P.linear_dpo_loss_grad(H, W, labels, mask, ref, beta, b, loss_type=loss_type,
                                 label_smoothing=ls, token_chunk=chunks[0],
                                 vocab_chunk=chunks[1])
    for g, w in zip(got, want):
        assert_close(g, w, 1e-12)
    loss = P.linear_dpo_loss(H, W, labels, mask, ref, beta, b, loss_type=loss_type,
                             label_smoothing=ls, token_chunk=chunks[0], vocab_chunk=chunks[1])
    assert_close(loss, want[0], 1e-13)


def test_no_bias_and_seq_logps():
    H, W, b, labels, mask, ref = make_case(seed=2)
    L, dH, dW, db = P.linear_dpo_loss_grad(H, W, labels, mask, ref, 0.5, token_chunk=4,
                                           vocab_chunk=3)
    assert db is None
    zero = torch.zeros_like(b)
    want = dense_grads(H, W, zero, labels, mask, ref, 0.5)
    for g, w in zip((L, dH, dW), want[:3]):
        assert_close(g, w, 1e-12)
    Z = H @ W.T + b
    y = torch.where(mask, labels, 0)
    lp = (torch.log_softmax(Z, -1).gather(-1, y[..., None])[..., 0] * mask).sum(1)
    for avg in (False, True):
        got = P.seq_logps(H, W, labels, mask, b, average=avg, token_chunk=3, vocab_chunk=4)
        assert_close(got, lp / mask.sum(1) if avg else lp, 1e-12)


@pytest.mark.parametrize("loss_type,ls", LOSSES)
def test_dpo_loss_and_grad(loss_type, ls):
    g = torch.Generator().manual_seed(3)
    logp = torch.randn(6, generator=g, dtype=F64) * 3
    ref = torch.randn(6, generator=g, dtype=F64) * 3
    beta = 0.7
    loss, cr, rr = P.dpo_loss(logp, ref, beta, loss_type=loss_type, label_smoothing=ls)
    assert_close(cr, beta * (logp[:3] - ref[:3]), 1e-15)
    assert_close(rr, beta * (logp[3:] - ref[3:]), 1e-15)
    L2, dlogp = P.dpo_loss_grad(logp, ref, beta, loss_type=loss_type, label_smoothing=ls)
    assert_close(L2, loss, 0)
    # closed form kappa of sec. 3
    h = (logp[:3] - ref[:3]) - (logp[3:] - ref[3:])
    u = beta * h
    kappa = {"sigmoid": beta * (torch.sigmoid(u) - 1 + ls),
             "hinge": -beta * (u < 1).to(F64),
             "ipo": 2 * (h - 1 / (2 * beta))}[loss_type]
    assert_close(dlogp, torch.cat([kappa / 3, -kappa / 3]), 1e-14)


def test_gradcheck_linear_dpo_loss():
    H, W, b, labels, mask, ref = make_case(B=2, T=4, d=3, V=7, seed=4)
    for lt, ls in LOSSES:
        def fn(H, W, b, lt=lt, ls=ls):
            return P.linear_dpo_loss(H, W, labels, mask, ref, 0.5, b, loss_type=lt,
                                     label_smoothing=ls, token_chunk=5, vocab_chunk=3)
        assert torch.autograd.gradcheck(fn, [x.clone().requires_grad_(True) for x in (H, W, b)])


def test_chunked_equals_unchunked():
    H, W, b, labels, mask, ref = make_case(B=3, T=47 // 3, d=31, V=123, seed=5, prompt=3)
    base = P.linear_dpo_loss_grad(H, W, labels, mask, ref, 0.1, b)
    for tc, vc in [(7, 50), (1, 1), (None, 50), (7, None), (1000, 1000)]:
        got = P.linear_dpo_loss_grad(H, W, labels, mask, ref, 0.1, b, token_chunk=tc,
                                     vocab_chunk=vc)
        for g, w in zip(got, base):
            assert_close(g, w, 1e-12)
    s0 = P.logits_sam_dpo_grad(H, W, labels, mask, ref, 0.1, 0.05, b)
    s1 = P.logits_sam_dpo_grad(H, W, labels, mask, ref, 0.1, 0.05, b, token_chunk=7,
                               vocab_chunk=50)
    for k, v in s0.items():
        assert_close(s1[k], v, 1e-12)


def test_conventions_swap_and_duplicate():
    """Sec. 11 item 4: swapping halves maps h -> -h (sigmoid: eps -> 1 - eps); duplicating the
    batch leaves L unchanged; duplicating a completion doubles l."""
    H, W, b, labels, mask, ref = make_case(seed=19)
    B = H.shape[0] // 2
    swap = torch.cat([torch.arange(B, 2 * B), torch.arange(B)])
    for ls in (0.0, 0.1):
        a = P.linear_dpo_loss(H, W, labels, mask, ref, 0.5, b, label_smoothing=ls,
                              token_chunk=3, vocab_chunk=4)
        s_ = P.linear_dpo_loss(H[swap], W, labels[swap], mask[swap], ref[swap], 0.5, b,
                               label_smoothing=1 - ls, token_chunk=3, vocab_chunk=4)
        assert_close(a, s_, 1e-13)
    dup = torch.cat([torch.arange(B), torch.arange(B), torch.arange(B, 2 * B),
                     torch.arange(B, 2 * B)])
    assert_close(P.linear_dpo_loss(H[dup], W, labels[dup], mask[dup], ref[dup], 0.5, b),
          P.linear_dpo_loss(H, W, labels, mask, ref, 0.5, b), 1e-13)
    l1 = P.seq_logps(H, W, labels, mask, b)
    l2 = P.seq_logps(torch.cat([H, H], 1), W, torch.cat([labels, labels], 1),
                     torch.cat([mask, mask], 1), b, token_chunk=5, vocab_chunk=3)
    assert_close(l2, 2 * l1, 1e-12)


# --------------------------------------------------------------------------- masks


def test_masked_positions_change_nothing():
    H, W, b, labels, mask, ref = make_case(B=2, T=7, d=6, V=9, seed=6, prompt=3)
    base = P.linear_dpo_loss_grad(H, W, labels, mask, ref, 0.4, b, token_chunk=4, vocab_chunk=5)
    g = torch.Generator().manual_seed(7)
    H2 = H.clone()
    H2[~mask] = torch.randn(int((~mask).sum()), H.shape[-1], generator=g, dtype=F64) * 10
    for lab in (labels, torch.where(mask, labels, torch.randint(0, 9, labels.shape, generator=g))):
        got = P.linear_dpo_loss_grad(H2, W, lab, mask, ref, 0.4, b, token_chunk=4, vocab_chunk=5)
        assert float(got[0]) == float(base[0])
        for x, y in zip(got[1:], base[1:]):
            assert_close(x, y, 1e-14)
    assert bool((base[1][~mask] == 0).all())                          # dH exactly 0
    assert bool((base[1][mask] != 0).any())
    s = P.logits_sam_dpo_grad(H2, W, labels, mask.to(torch.int64), ref, 0.4, 0.01, b)
    assert bool((s["dH"][~mask] == 0).all())


def test_empty_rows_and_all_zero_mask():
    H, W, b, labels, mask, ref = make_case(seed=8)
    mask[1] = False
    lp = P.seq_logps(H, W, labels, mask, b, token_chunk=2, vocab_chunk=3)
    assert float(lp[1]) == 0.0
    with pytest.raises(ValueError, match="rows"):
        P.linear_dpo_loss(H, W, labels, mask, ref, 0.5, b, loss_type="ipo")
    zero = torch.zeros_like(mask)
    out = P.logits_sam_dpo_grad(H, W, labels, zero, ref, 0.5, 0.05, b)
    assert float(out["eps_W"].abs().max()) == 0.0
    assert all(bool(torch.isfinite(v).all()) for v in out.values() if v is not None)
    assert float(out["loss_post"]) == float(out["loss_pre"])


def test_validation_messages():
    H, W, _, labels, mask, ref = make_case(seed=9)
    with pytest.raises(TypeError, match="torch backend"):
        P.linear_dpo_loss(H.numpy(), W, labels, mask, ref, 0.5)
    with pytest.raises(ValueError, match="beta"):
        P.linear_dpo_loss(H, W, labels, mask, ref, 0.0)
    with pytest.raises(ValueError, match="loss_type"):
        P.linear_dpo_loss(H, W, labels, mask, ref, 0.5, loss_type="kto")
    with pytest.raises(ValueError, match="label_smoothing"):
        P.linear_dpo_loss(H, W, labels, mask, ref, 0.5, loss_type="hinge", label_smoothing=0.1)
    with pytest.raises(ValueError, match="labels"):
        bad = labels.clone()
        bad[mask] = 11
        P.linear_dpo_loss(H, W, bad, mask, ref, 0.5)
    with pytest.raises(ValueError, match="R = 2B|even"):
        P.linear_dpo_loss(H[:3], W, labels[:3], mask[:3], ref[:3], 0.5)
    with pytest.raises(ValueError, match="rho"):
        P.logits_sam_dpo(H, W, labels, mask, ref, 0.5, -1e-3)
    with pytest.raises(ValueError, match="delta"):
        P.logits_sam_dpo(H, W, labels, mask, ref, 0.5, 1e-3, delta="x")
    with pytest.raises(TypeError, match="W"):
        P.linear_dpo_loss(H, W.float(), labels, mask, ref, 0.5)
    with pytest.raises(TypeError, match="torch backend"):
        P.linear_dpo_loss(H, W, labels.numpy(), mask, ref, 0.5)
    with pytest.raises(ValueError, match="mask"):
        P.linear_dpo_loss(H, W, labels, mask.to(torch.int64) * 2, ref, 0.5)


def test_label_and_mask_dtypes():
    H, W, b, labels, mask, ref = make_case(seed=18)
    base = P.linear_dpo_loss_grad(H, W, labels, mask, ref, 0.5, b, token_chunk=3, vocab_chunk=4)
    for lab, m in ((labels.to(torch.int32), mask), (labels, mask.to(torch.float64)),
                   (labels, mask.to(torch.int64))):
        got = P.linear_dpo_loss_grad(H, W, lab, m, ref, 0.5, b, token_chunk=3, vocab_chunk=4)
        for g, w in zip(got, base):
            assert_close(g, w, 0.0)


# --------------------------------------------------------------------------- logits-SAM


def _frozen_eps(H, W, b, labels, mask, ref, beta, rho, lt="sigmoid", ls=0.0):
    """eps_W of sec. 5 from the dense oracle: rho G0^T H / ||G0^T H||."""
    Hl = H.detach().clone().requires_grad_(True)
    Wl = W.detach().clone().requires_grad_(True)
    L = dense_loss(Hl, Wl, b, labels, mask, ref, beta, lt, ls)
    (gW,) = torch.autograd.grad(L, Wl)
    return rho * gW / gW.norm().clamp(min=1e-12), gW.norm()


@pytest.mark.parametrize("loss_type,ls", LOSSES)
def test_logits_sam_vs_dense_oracle(loss_type, ls):
    H, W, b, labels, mask, ref = make_case(B=2, T=6, d=5, V=9, seed=10)
    beta, rho = 0.5, 0.05
    eps, n = _frozen_eps(H, W, b, labels, mask, ref, beta, rho, loss_type, ls)
    L_pre = dense_loss(H, W, b, labels, mask, ref, beta, loss_type, ls)
    L_post, dH, dW, db = dense_grads(H, W, b, labels, mask, ref, beta, loss_type, ls, eps=eps)
    out = P.logits_sam_dpo_grad(H, W, labels, mask, ref, beta, rho, b, loss_type=loss_type,
                                label_smoothing=ls, token_chunk=4, vocab_chunk=4)
    assert_close(out["loss_pre"], L_pre, 1e-13)
    assert_close(out["loss_post"], L_post, 1e-13)
    assert_close(out["grad_norm"], n, 1e-13)
    assert_close(out["eps_W"], eps, 1e-13)
    assert_close(out["dH"], dH, 1e-12)
    assert_close(out["dW"], dW, 1e-12)
    assert_close(out["db"], db, 1e-12)
    assert abs(float(out["eps_W"].norm()) - rho) < 1e-14
    # autograd of logits_sam_dpo (eps frozen) gives the same gradients
    leaves = [x.clone().requires_grad_(True) for x in (H, W, b)]
    Lp = P.logits_sam_dpo(*leaves[:2], labels, mask, ref, beta, rho, leaves[2],
                          loss_type=loss_type, label_smoothing=ls, token_chunk=4, vocab_chunk=4)
    for g, w in zip(torch.autograd.grad(Lp, leaves), (dH, dW, db)):
        assert_close(g, w, 1e-12)
    gram = P.logits_sam_dpo_grad(H, W, labels, mask, ref, beta, rho, b, loss_type=loss_type,
                                 label_smoothing=ls, delta="gram")
    assert gram["eps_W"] is None                      # gram never forms V x d
    for k in ("loss_pre", "loss_post", "grad_norm", "dH", "dW", "db"):
        assert_close(gram[k], out[k], 1e-12)
    gram_c = P.logits_sam_dpo_grad(H, W, labels, mask, ref, beta, rho, b, loss_type=loss_type,
                                   label_smoothing=ls, delta="gram", token_chunk=5,
                                   vocab_chunk=4)
    for k in ("loss_post", "grad_norm", "dH", "dW", "db"):
        assert_close(gram_c[k], out[k], 1e-12)
    leaves = [x.clone().requires_grad_(True) for x in (H, W, b)]
    Lg = P.logits_sam_dpo(*leaves[:2], labels, mask, ref, beta, rho, leaves[2],
                          loss_type=loss_type, label_smoothing=ls, delta="gram", token_chunk=5,
                          vocab_chunk=4)
    for g, w in zip(torch.autograd.grad(Lg, leaves), (dH, dW, db)):
        assert_close(g, w, 1e-12)


def test_gradcheck_logits_sam_dpo_eps_frozen(monkeypatch):
    H, W, b, labels, mask, ref = make_case(B=2, T=4, d=3, V=7, seed=11)
    beta, rho = 0.5, 0.3
    out = P.logits_sam_dpo_grad(H, W, labels, mask, ref, beta, rho, b)
    frozen = (out["loss_pre"], out["grad_norm"], P._Shift(out["eps_W"], W.dtype))
    monkeypatch.setattr(P, "_perturbation", lambda *a, **k: frozen)
    def fn(H, W, b):
        return P.logits_sam_dpo(H, W, labels, mask, ref, beta, rho, b, token_chunk=3,
                                vocab_chunk=2)

    leaves = [x.clone().requires_grad_(True) for x in (H, W, b)]
    assert torch.autograd.gradcheck(fn, leaves)
    for g, k in zip(torch.autograd.grad(fn(*leaves), leaves), ("dH", "dW", "db")):
        assert_close(g, out[k], 1e-12)


def test_rho_zero_is_linear_dpo():
    H, W, b, labels, mask, ref = make_case(seed=12)
    for lt, ls in LOSSES:
        out = P.logits_sam_dpo_grad(H, W, labels, mask, ref, 0.2, 0.0, b, loss_type=lt,
                                    label_smoothing=ls, token_chunk=3, vocab_chunk=4)
        L, dH, dW, db = P.linear_dpo_loss_grad(H, W, labels, mask, ref, 0.2, b, loss_type=lt,
                                               label_smoothing=ls)
        assert float(out["loss_post"]) == float(out["loss_pre"])
        assert_close(out["loss_post"], L, 1e-14)
        for k, w in (("dH", dH), ("dW", dW), ("db", db)):
            assert_close(out[k], w, 1e-13)


def test_sam_slope_bias_unperturbed_and_adaptive():
    H, W, b, labels, mask, ref = make_case(seed=13)
    for rho in (1e-4, 1e-5):
        out = P.logits_sam_dpo_grad(H, W, labels, mask, ref, 0.5, rho, b)
        slope = float(out["loss_post"] - out["loss_pre"]) / rho
        assert abs(slope - float(out["grad_norm"])) <= 10 * rho * float(out["grad_norm"]) + 1e-6
    # b never perturbed: bias gradient of L_post equals the oracle's with b unchanged
    eps, _ = _frozen_eps(H, W, b, labels, mask, ref, 0.5, 0.05)
    out = P.logits_sam_dpo_grad(H, W, labels, mask, ref, 0.5, 0.05, b)
    assert_close(out["db"], dense_grads(H, W, b, labels, mask, ref, 0.5, eps=eps)[3], 1e-12)
    # adaptive: g_W * |W| then the same normalisation
    Wl = W.clone().requires_grad_(True)
    (gW,) = torch.autograd.grad(dense_loss(H, Wl, b, labels, mask, ref, 0.5), Wl)
    ga = gW * W.abs()
    ad = P.logits_sam_dpo_grad(H, W, labels, mask, ref, 0.5, 0.05, b, adaptive=True,
                               token_chunk=3, vocab_chunk=5)
    assert_close(ad["eps_W"], 0.05 * ga / ga.norm(), 1e-14)
    assert_close(ad["grad_norm"], ga.norm(), 1e-13)


def test_bf16_vs_float64_upcast():
    """Sec. 11 item 6: loss_post - loss_pre of bf16 inputs agrees with float64 on the same
    (upcast) values to 20% where rho ||g_W|| >= 1e-3 (a bf16 ``W + eps`` would give ~0)."""
    H, W, b, labels, mask, ref = make_case(B=4, T=16, d=32, V=257, seed=14, prompt=4)
    Hb, Wb, bb = (x.to(torch.bfloat16) for x in (H, W, b))
    H64, W64, b64 = (x.to(F64) for x in (Hb, Wb, bb))
    beta, rho = 0.1, 1e-3
    ref64 = ref
    o64 = P.logits_sam_dpo_grad(H64, W64, labels, mask, ref64, beta, rho, b64)
    o16 = P.logits_sam_dpo_grad(Hb, Wb, labels, mask, ref64.float(), beta, rho, bb,
                                token_chunk=7, vocab_chunk=50)
    d64 = float(o64["loss_post"] - o64["loss_pre"])
    d16 = float(o16["loss_post"] - o16["loss_pre"])
    assert rho * float(o64["grad_norm"]) >= 1e-3
    assert abs(d16 - d64) <= 0.2 * abs(d64), (d16, d64)
    assert o16["dH"].dtype == torch.bfloat16 and o16["dW"].dtype == torch.bfloat16
    assert o16["eps_W"].dtype == torch.float32
    # the case is meaningful: rounding W + eps to bf16 would drop most of the perturbation
    lost = (Wb + o16["eps_W"].to(torch.bfloat16)) == Wb
    assert float(lost.float().mean()) > 0.5
    assert_close(o16["dW"].double(), o64["dW"], 5e-1)
    assert_close(o16["dH"].double(), o64["dH"], 5e-2 + 5e-1 * float(o64["dH"].abs().max()))
    L16 = P.linear_dpo_loss_grad(Hb, Wb, labels, mask, ref64.float(), beta,
                                                   bb, token_chunk=7, vocab_chunk=50)[0]
    L64 = P.linear_dpo_loss(H64, W64, labels, mask, ref64, beta, b64)
    assert_close(L16.double(), L64, 1e-4)


# --------------------------------------------------------------------------- memory



def test_no_n_by_v_tensor_saved_when_chunked():
    H, W, b, labels, mask, ref = make_case(B=2, T=16, d=4, V=300, seed=15, prompt=0)
    leaves = [x.clone().requires_grad_(True) for x in (H, W, b)]
    n = int(mask.sum())
    NV = n * W.shape[0]
    assert n * H.shape[-1] < NV and W.numel() < NV
    _, dense_sizes = saved_numels(lambda: dense_loss(*leaves, labels, mask, ref, 0.5))
    assert max(dense_sizes) >= NV            # the hook sees the dense path's logits
    for fn in (lambda: P.linear_dpo_loss(*leaves[:2], labels, mask, ref, 0.5, leaves[2],
                                         token_chunk=8, vocab_chunk=64),
               lambda: P.logits_sam_dpo(*leaves[:2], labels, mask, ref, 0.5, 0.01, leaves[2],
                                        token_chunk=8, vocab_chunk=64)):
        L, sizes = saved_numels(fn)
        assert sizes and max(sizes) < NV, max(sizes)
        L.backward()


# --------------------------------------------------------------------------- reference


@needs_ref
@pytest.mark.parametrize("loss_type,ls", LOSSES)
def test_against_numpy_reference(loss_type, ls):
    from refimpl import preference as ref_mod

    H, W, b, labels, mask, ref = make_case(B=3, T=7, d=6, V=19, seed=16)
    np_args = [x.numpy() for x in (H, W, labels, mask, ref)]
    beta = 0.3
    kw = {"loss_type": loss_type, "label_smoothing": ls}
    want = ref_mod.linear_dpo_loss_grad(*np_args, beta, b.numpy(), **kw)
    got = P.linear_dpo_loss_grad(H, W, labels, mask, ref, beta, b, token_chunk=4,
                                 vocab_chunk=6, **kw)
    for g, w in zip(got, want):
        assert_close(g, torch.as_tensor(np.asarray(w)), 1e-10)
    avg = loss_type == "ipo"
    assert_close(P.seq_logps(H, W, labels, mask, b, average=avg),
          torch.as_tensor(ref_mod.seq_logps(np_args[0], np_args[1], np_args[2], np_args[3],
                                            b.numpy(), average=avg)), 1e-10)
    for rho, extra in ((0.0, {}), (1e-3, {}), (0.05, {}), (0.05, {"delta": "gram"}),
                       (0.05, {"adaptive": True})):
        for bias in (b, None):
            w = ref_mod.logits_sam_dpo_grad(*np_args, beta, rho,
                                            None if bias is None else bias.numpy(), **kw,
                                            **extra)
            for chunks in ((None, None), (4, 6)):
                g = P.logits_sam_dpo_grad(H, W, labels, mask, ref, beta, rho, bias,
                                          token_chunk=chunks[0], vocab_chunk=chunks[1], **kw,
                                          **extra)
                assert set(g) == set(w)
                for k, v in w.items():
                    if v is None:
                        assert g[k] is None, k
                    else:
                        assert_close(g[k], torch.as_tensor(np.asarray(v)), 1e-10)
            lp = P.logits_sam_dpo(H, W, labels, mask, ref, beta, rho, bias, **kw, **extra)
            assert_close(lp, torch.as_tensor(np.asarray(w["loss_post"])), 1e-10)
    lp = torch.randn(6, dtype=F64)
    rl = torch.randn(6, dtype=F64)
    for g, w in zip(P.dpo_loss(lp, rl, beta, **kw), ref_mod.dpo_loss(lp.numpy(), rl.numpy(),
                                                                    beta, **kw)):
        assert_close(g, torch.as_tensor(np.asarray(w)), 1e-12)


@needs_ref
def test_float32_and_bf16_against_numpy_reference():
    from refimpl import preference as ref_mod

    H, W, b, labels, mask, ref = make_case(B=4, T=16, d=32, V=257, seed=17, prompt=4)
    for dtype, atol, rtol in ((torch.float32, 1e-5, 5e-4), (torch.bfloat16, 5e-2, 5e-1)):
        Hx, Wx, bx = (x.to(dtype) for x in (H, W, b))
        up = [x.to(F64).numpy() for x in (Hx, Wx)]
        w = ref_mod.logits_sam_dpo_grad(up[0], up[1], labels.numpy(), mask.numpy(), ref.numpy(),
                                        0.1, 1e-3, bx.to(F64).numpy())
        g = P.logits_sam_dpo_grad(Hx, Wx, labels, mask, ref.to(dtype), 0.1, 1e-3, bx,
                                  token_chunk=7, vocab_chunk=50)
        for k in ("loss_pre", "loss_post", "dH", "db"):
            want = torch.as_tensor(np.asarray(w[k]))
            tol = atol + rtol * float(want.abs().max())
            assert_close(g[k].double(), want, tol)
        assert_close(g["dW"].double(), torch.as_tensor(w["dW"]), 5e-1 if dtype == torch.bfloat16 else
              atol + rtol * float(np.abs(w["dW"]).max()))


# --------------------------------------------------------------------------- peer: Liger-Kernel


@pytest.mark.parametrize("seed", [0, 1])
def test_liger_fused_linear_dpo_peer(seed):
    """Liger-Kernel's ``LigerFusedLinearDPOLoss`` (preference.md sec. 11.8; its chunked-loss
    path is plain torch, so it runs on the CPU with ``compiled=False``): NLL term off, sums of
    token log-probs, the reference model given as hidden states and a head; our ``ref_logp``
    is ``seq_logps`` of that reference head. Loss, dH, dW on float64 inputs (Liger computes the
    log-softmax in float32: ``logits.float()``, hence 1e-6); logits-SAM with rho = 0 too."""
    liger = pytest.importorskip("liger_kernel.chunked_loss",
                                reason="liger-kernel is not installed (pip install liger-kernel)")
    H, W, _, labels, mask, _ = make_case(B=3, T=7, d=8, V=13, seed=seed)
    g = torch.Generator().manual_seed(seed + 10)
    H_ref = torch.randn(H.shape, generator=g, dtype=F64)
    W_ref = torch.randn(W.shape, generator=g, dtype=F64)
    beta = 0.3
    fn = liger.LigerFusedLinearDPOLoss(beta=beta, compute_nll_loss=False, compiled=False,
                                       use_ref_model=True, average_log_prob=False)
    Hl, Wl = H.clone().requires_grad_(True), W.clone().requires_grad_(True)
    out = fn(Wl, Hl, labels, None, H_ref, W_ref, None)
    loss = out[0] if isinstance(out, tuple) else out
    dH, dW = torch.autograd.grad(loss, [Hl, Wl])

    ref = P.seq_logps(H_ref, W_ref, labels, mask)
    L, oH, oW, ob = P.linear_dpo_loss_grad(H, W, labels, mask, ref, beta)
    assert ob is None
    tol = 1e-6 * max(1.0, float(dW.abs().max()), float(dH.abs().max()))
    assert abs(float(L) - float(loss)) <= 1e-6 * max(1.0, abs(float(loss)))
    assert_close(oH, dH, tol)
    assert_close(oW, dW, tol)
    s = P.logits_sam_dpo_grad(H, W, labels, mask, ref, beta, 0.0)
    assert abs(float(s["loss_post"]) - float(loss)) <= 1e-6 * max(1.0, abs(float(loss)))
    assert_close(s["dW"], dW, tol)
    assert_close(s["dH"], dH, tol)


# --------------------------------------------------------------------------- the bf16 GEMM path


def test_bf16_heads_feed_bf16_operands_to_every_gemm(monkeypatch):
    """With a bf16 head every GEMM of the fused sweeps (linear DPO and logits-SAM, weight
    perturbation) takes bf16 operands — the tensor-core path of :func:`P._mm` on CUDA — and
    the perturbation survives: ``Z' - Z0`` through ``s E`` equals ``H eps^T`` in float64 to
    the precision of E (2^-9), although ``W + eps`` rounded to bf16 would lose it."""
    H, W, b, labels, mask, ref = make_case(B=2, T=6, d=16, V=40, seed=21)
    Hb, Wb, bb = (x.to(torch.bfloat16) for x in (H, W, b))
    seen = []
    real = P._mm

    def spy(a, c):
        seen.append((a.dtype, c.dtype))
        return real(a, c)

    monkeypatch.setattr(P, "_mm", spy)
    P.linear_dpo_loss_grad(Hb, Wb, labels, mask, ref.float(), 0.5, bb, token_chunk=5,
                           vocab_chunk=16)
    out = P.logits_sam_dpo_grad(Hb, Wb, labels, mask, ref.float(), 0.5, 1e-3, bb,
                                token_chunk=5, vocab_chunk=16)
    assert seen and all(d == (torch.bfloat16, torch.bfloat16) for d in seen), set(seen)
    # 3 vocab x 3 token blocks (13 tokens), GEMMs per block pair: DPO 1 forward + 3 backward;
    # SAM A 1, B 2 (Z, g_W), A' 2 (Z, s H E^T), B' 5 (Z and s H E^T, dH and s G E, dW)
    assert len(seen) == 3 * 3 * (4 + 10)

    shift = P._Shift(out["eps_W"], torch.bfloat16)
    Hc = Hb[mask].double()
    exact = Hc @ out["eps_W"].double().T
    split = shift.s.double() * (Hc @ shift.E.double().T)
    assert float((split - exact).abs().max()) <= 2.0 ** -8 * float(exact.abs().max())
    assert float((((Wb + out["eps_W"].to(torch.bfloat16)) == Wb).float()).mean()) > 0.5


@pytest.mark.gpu
def test_gpu_bf16_gemm_matches_the_cpu_emulation():
    """On CUDA ``_mm`` dispatches bf16 operands to ``torch.mm(..., out_dtype=torch.float32)``;
    it must equal the CPU path's upcast product up to fp32 summation order, and a bf16 fused
    step on the GPU must match the same step on the CPU."""
    if not torch.cuda.is_available():
        pytest.skip("torch sees no CUDA device")
    g = torch.Generator().manual_seed(0)
    a = torch.randn(257, 129, generator=g).bfloat16()
    c = torch.randn(129, 65, generator=g).bfloat16()
    got = P._mm(a.cuda(), c.cuda()).cpu()
    assert got.dtype == torch.float32
    assert_close(got, P._mm(a, c), 1e-4)
    H, W, b, labels, mask, ref = make_case(B=4, T=16, d=64, V=300, seed=5)
    args = [x.to(torch.bfloat16) for x in (H, W)] + [labels, mask, ref.float(), 0.1, 1e-3]
    cpu = P.logits_sam_dpo_grad(*args, token_chunk=24, vocab_chunk=64)
    gpu = P.logits_sam_dpo_grad(*[x.cuda() if isinstance(x, torch.Tensor) else x for x in args],
                                token_chunk=24, vocab_chunk=64)
    for k in ("loss_pre", "loss_post", "grad_norm"):
        assert_close(gpu[k].cpu(), cpu[k], 1e-4 * max(1.0, float(cpu[k].abs())))
    for k in ("dH", "dW"):
        assert_close(gpu[k].cpu().double(), cpu[k].double(), 2e-2 * float(cpu[k].abs().max()))
