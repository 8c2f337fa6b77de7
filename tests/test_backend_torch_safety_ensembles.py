"""Torch backend of the safety_ensembles family (Antibody + IBDR, safety_ensembles.md):
signatures equal to the reference's, every function against the float64 NumPy reference
(:mod:`refimpl.safety_ensembles`) in float64 (1e-10) and float32 (atol 1e-5 / rtol 5e-4),
bfloat16 for the weighted token CE (contract tolerance), ``torch.autograd.gradcheck`` of the
custom Functions (weighted CE through preference's ``_TokenLogp``, ``_IbdrLoss``,
``_DppLogdet``), chunked == dense, the saved tensors of the autograd graph (no N x V tensor on
the chunked path), one host read per call, and bad input raising the reference's exception
with the reference's message."""

import inspect

import numpy as np
import pytest

import backends

torch = pytest.importorskip("torch")
if backends.reason("torch") is not None:
    pytest.skip(f"backend torch: {backends.reason('torch')}", allow_module_level=True)

from torch_testing import close_to, npy, raises_like_reference, saved_numels, tt, up
from backends.torch import safety_ensembles as S
from refimpl import safety_ensembles as R

F64, F32, BF16 = torch.float64, torch.float32, torch.bfloat16
TOL = {F64: (1e-10, 1e-10), F32: (1e-5, 5e-4), BF16: (5e-2, 5e-1)}     # (atol, rtol)


assert_close = close_to(TOL)


def head_case(B=3, T=5, d=8, V=11, seed=0, prompt=2, empty_row=True):
    """H, W, b, labels (-100 on a prompt prefix and right padding; one row without completion
    tokens when ``empty_row``), w from antibody_weights of random nll."""
    rng = np.random.default_rng(seed)
    H = rng.normal(size=(B, T, d))
    W = rng.normal(size=(V, d)) / np.sqrt(d) * 2
    b = rng.normal(size=V)
    labels = rng.integers(0, V, (B, T))
    labels[:, :prompt] = -100
    for r in range(B):
        pad = r % 3
        if pad:
            labels[r, T - pad:] = -100
    if B >= 3:
        labels[1, prompt + 1:] = -100            # a row with one completion token (N = 1)
    if empty_row:
        labels[B - 1] = -100
    w = R.antibody_weights(rng.normal(size=B), rng.normal(size=B))
    return H, W, b, labels, w


def ibdr_case(K=4, B=6, C=9, seed=0):
    rng = np.random.default_rng(seed)
    F = rng.normal(0, 3, (1, B, C)) + rng.normal(0, 1, (K, B, C))
    return F, rng.integers(0, C, B)


def softmax(F):
    e = np.exp(F - F.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


# --------------------------------------------------------------------------- signatures


def test_signatures_equal_reference():
    assert set(S.__all__) == set(R.__all__)
    for name in R.__all__:
        assert inspect.signature(getattr(S, name)) == inspect.signature(getattr(R, name)), name


# --------------------------------------------------------------------------- Part A


@pytest.mark.parametrize("eta", [0.5, 5.0])
@pytest.mark.parametrize("dtype", [F64, F32])
def test_flat_vector_ops_vs_reference(dtype, eta):
    rng = np.random.default_rng(1)
    P = 1000
    gs, gh, gp, gr, th = (rng.normal(size=P) for _ in range(5))
    gp = gh - 0.3 * rng.normal(size=P) - 0.2 * gs           # d correlated with g_s
    T = [tt(x, dtype) for x in (gs, gh, gp, gr, th)]
    H = [up(x) for x in T]                                     # the values torch holds
    out = S.harmful_perturb(T[4], T[1], 0.3, eps=1e-6)
    assert out.dtype == dtype
    assert_close(out, R.harmful_perturb(H[4], H[1], 0.3, eps=1e-6), dtype)
    for variant in ("cosine", "kkt"):
        for lam in (None, 1.7, torch.tensor(2.5, dtype=dtype)):
            lam_ref = None if lam is None else float(lam)
            got = S.antibody_lambda(T[0], T[1] - T[2], lam, eta=eta, momentum=0.9,
                                    variant=variant)
            want = R.antibody_lambda(H[0], up(T[1] - T[2]), lam_ref, eta=eta, momentum=0.9,
                                     variant=variant)
            for g, w in zip(got, want):
                assert g.dim() == 0 and g.dtype == dtype
                assert_close(g, w, dtype)
            got = S.antibody_align_direction(*T[:4], lam, eta=eta, momentum=0.9, lam2=0.1,
                                             variant=variant)
            want = R.antibody_align_direction(*H[:4], lam_ref, eta=eta, momentum=0.9,
                                              lam2=0.1, variant=variant)
            assert got[0].dtype == dtype and got[1].dim() == 0
            for g, w in zip(got, want):
                assert_close(g, w, dtype)
    # eta = 0.5 makes the clamp act in some combination: check it does somewhere
    raw = [float(S.antibody_lambda(T[0], s * (T[1] - T[2]), eta=0.5)[1]) for s in (1, -1)]
    assert min(raw) == 0.0 and max(raw) > 0.0
    w = S.antibody_weights(T[0][:7], T[3][:7], tau=0.7)
    assert w.dtype == dtype
    assert_close(w, R.antibody_weights(H[0][:7], H[3][:7], tau=0.7), dtype)


def test_booster_special_case_and_lam_ema_tensor():
    rng = np.random.default_rng(2)
    gs, gh, gp, gr = (tt(rng.normal(size=50)) for _ in range(4))
    g, new, _ = S.antibody_align_direction(gs, gh, gp, gr, torch.tensor(0.8, dtype=F64),
                                             momentum=1.0, lam2=0.0)
    assert float(new) == 0.8
    assert_close(g, npy(gs + 0.8 * (gh - gp)), atol=1e-14, rtol=0)


@pytest.mark.parametrize("dtype", [F64, F32, BF16])
@pytest.mark.parametrize("chunks", [(None, None), (4, 3)])
def test_token_mean_nll_vs_reference(dtype, chunks):
    H, W, b, labels, _ = head_case(seed=3)
    Ht, Wt, bt = (tt(x, dtype) for x in (H, W, b))
    nll, n = S.token_mean_nll(Ht, Wt, tt(labels), bt, token_chunk=chunks[0],
                              vocab_chunk=chunks[1])
    want_nll, want_n = R.token_mean_nll(up(Ht), up(Wt), labels, up(bt))
    assert n.dtype == torch.int64 and np.array_equal(npy(n), want_n)
    assert nll.dtype == (F32 if dtype == BF16 else dtype)     # accumulation dtype (as preference)
    assert float(nll[-1]) == 0.0 and want_n[-1] == 0            # empty row: 0 / max(0, 1)
    # bf16: the GEMM operands are exact bf16 values and accumulate in fp32 -> fp32 tolerance
    assert_close(nll, want_nll, F32 if dtype == BF16 else dtype)


@pytest.mark.parametrize("dtype", [F64, F32])
@pytest.mark.parametrize("variant", ["code", "paper"])
@pytest.mark.parametrize("bias", [True, False])
def test_weighted_token_ce_vs_reference(dtype, variant, bias):
    H, W, b, labels, w = head_case(B=4, T=16, d=32, V=257, seed=4, prompt=4)
    Ht, Wt, wt = tt(H, dtype), tt(W, dtype), tt(w, dtype)
    bt = tt(b, dtype) if bias else None
    want = R.weighted_token_ce_grad(up(Ht), up(Wt), labels, up(wt),
                                    up(bt) if bias else None, variant=variant)
    for chunks in ((None, None), (7, 50)):
        got = S.weighted_token_ce_grad(Ht, Wt, tt(labels), wt, bt, variant=variant,
                                       token_chunk=chunks[0], vocab_chunk=chunks[1])
        assert got[0].dim() == 0 and got[0].dtype == dtype
        assert got[1].dtype == dtype and got[2].dtype == dtype
        assert (got[3] is None) == (not bias)
        for g, x in zip(got, want):
            assert_close(g, x, dtype)
        loss = S.weighted_token_ce(Ht, Wt, tt(labels), wt, bt, variant=variant,
                                   token_chunk=chunks[0], vocab_chunk=chunks[1])
        assert_close(loss, want[0], dtype)
    assert bool((got[1][tt(labels) == -100] == 0).all())         # ignored positions: dH = 0


def test_weighted_ce_equal_weights_is_token_mean_and_ignore_positions_inert():
    """Acceptance A.1: w = 1/B gives the HF token mean (built-in oracle); values at ignored
    positions (H rows, labels) change nothing."""
    H, W, b, labels, _ = head_case(B=3, T=7, d=6, V=13, seed=5, empty_row=False)
    Ht, Wt, bt, lt = tt(H), tt(W), tt(b), tt(labels)
    w = torch.full((3,), 1 / 3, dtype=F64)
    m = lt != -100
    Z = Ht @ Wt.T + bt
    ce = -torch.log_softmax(Z, -1).gather(-1, torch.where(m, lt, 0)[..., None])[..., 0]
    hf = (ce * m).sum() / m.sum()
    assert_close(S.weighted_token_ce(Ht, Wt, lt, w, bt, token_chunk=5, vocab_chunk=4), npy(hf),
                 atol=1e-14, rtol=1e-14)
    base = S.weighted_token_ce_grad(Ht, Wt, lt, w, bt, token_chunk=5, vocab_chunk=4)
    H2 = Ht.clone()
    H2[~m] = 100.0
    for lab in (lt, torch.where(m, lt, -7)):
        got = S.weighted_token_ce_grad(H2, Wt, lab, w, bt, ignore_index=-100 if lab is lt else -7,
                                       token_chunk=5, vocab_chunk=4)
        for g, x in zip(got, base):
            assert_close(g, npy(x), atol=1e-14, rtol=0)


def test_chunked_equals_dense():
    H, W, b, labels, w = head_case(B=3, T=15, d=31, V=123, seed=6, prompt=3)
    args = [tt(x) for x in (H, W, labels, w, b)]
    for variant in ("code", "paper"):
        base = S.weighted_token_ce_grad(*args, variant=variant)
        for tc, vc in [(7, 50), (1, 1), (None, 50), (7, None), (1000, 1000)]:
            got = S.weighted_token_ce_grad(*args, variant=variant, token_chunk=tc,
                                           vocab_chunk=vc)
            for g, x in zip(got, base):
                assert_close(g, npy(x), atol=1e-12, rtol=0)
    nll0 = S.token_mean_nll(*args[:3], args[4])[0]
    assert_close(S.token_mean_nll(*args[:3], args[4], token_chunk=2, vocab_chunk=9)[0],
                 npy(nll0), atol=1e-12, rtol=0)


def test_gradcheck_weighted_token_ce():
    H, W, b, labels, w = head_case(B=3, T=4, d=3, V=7, seed=7)
    for variant in ("code", "paper"):
        def fn(H, W, b, variant=variant):
            return S.weighted_token_ce(H, W, tt(labels), tt(w), b, variant=variant,
                                       token_chunk=3, vocab_chunk=2)
        assert torch.autograd.gradcheck(fn, [tt(x).requires_grad_(True) for x in (H, W, b)])


def test_no_n_by_v_tensor_saved_when_chunked():
    H, W, b, labels, w = head_case(B=2, T=16, d=4, V=300, seed=8, prompt=0, empty_row=False)
    leaves = [tt(x).requires_grad_(True) for x in (H, W, b)]
    n = int((labels != -100).sum())
    NV = n * W.shape[0]
    assert n * H.shape[-1] < NV and W.size < NV

    def dense():                               # plain autograd over the full logits saves N x V
        Z = leaves[0] @ leaves[1].T + leaves[2]
        return torch.log_softmax(Z, -1).sum()

    _, sizes = saved_numels(dense)
    assert max(sizes) >= NV
    L, sizes = saved_numels(lambda: S.weighted_token_ce(leaves[0], leaves[1], tt(labels),
                                                         tt(w), leaves[2], token_chunk=8,
                                                         vocab_chunk=64))
    assert sizes and max(sizes) < NV, max(sizes)
    L.backward()
    assert leaves[1].grad is not None and bool(torch.isfinite(leaves[1].grad).all())


def test_bf16_weighted_ce_within_contract_tolerance():
    H, W, b, labels, w = head_case(B=4, T=16, d=32, V=257, seed=9, prompt=4)
    Hb, Wb, bb, wb = (tt(x, BF16) for x in (H, W, b, w))
    want = R.weighted_token_ce_grad(up(Hb), up(Wb), labels, up(wb), up(bb))
    got = S.weighted_token_ce_grad(Hb, Wb, tt(labels), wb, bb, token_chunk=7, vocab_chunk=50)
    assert got[0].dtype == F32 and all(g.dtype == BF16 for g in got[1:])
    for g, x in zip(got, want):
        assert_close(g, x, BF16)
    # measured: much tighter than the contract's bf16 tolerance (loss: fp32 accumulation)
    assert_close(got[0], want[0], F32)
    assert_close(got[2], want[2], atol=2e-3, rtol=2e-2)


# --------------------------------------------------------------------------- Part B


@pytest.mark.parametrize("dtype", [F64, F32])
def test_ibdr_ops_vs_reference(dtype):
    F, y = ibdr_case(seed=10)
    Ft, yt = tt(F, dtype), tt(y)
    Pt = torch.softmax(Ft, -1)
    LD = S.dpp_logdet_diversity(Pt, yt)
    assert LD.dim() == 0 and LD.dtype == dtype
    assert_close(LD, R.dpp_logdet_diversity(up(Pt), y), dtype)
    for variant in ("code", "paper"):
        for alpha in (0.0, 0.02, 3.0):
            want = R.ibdr_loss_grad(up(Ft), y, alpha_div=alpha, variant=variant)
            got = S.ibdr_loss_grad(Ft, yt, alpha_div=alpha, variant=variant)
            assert got[0].dtype == dtype and got[1].dtype == dtype and got[0].dim() == 0
            assert_close(got[0], want[0], dtype)
            assert_close(got[1], want[1], dtype)
            assert_close(S.ibdr_loss(Ft, yt, alpha_div=alpha, variant=variant), want[0], dtype)
    # alpha_div = 0 needs only K >= 1, C >= 2
    assert_close(S.ibdr_loss(Ft[:1, :, :2], yt % 2, alpha_div=0.0),
                 R.ibdr_loss(up(Ft[:1, :, :2]), y % 2, alpha_div=0.0), dtype)
    th, g = np.random.default_rng(11).normal(size=(2, 500))
    tht, gt = tt(th, dtype), tt(g, dtype)
    for lam, clip in ((0.7, 0.12), (torch.tensor(2.0, dtype=dtype), 1e3)):
        out = S.dro_ascent(tht, gt, lam, clip=clip)
        assert out.dtype == dtype
        assert_close(out, R.dro_ascent(up(tht), up(gt), float(lam), clip=clip), dtype)
    d = S.prediction_distance(Ft[0], Ft[1])
    assert d.dim() == 0 and d.dtype == dtype
    assert_close(d, R.prediction_distance(up(Ft[0]), up(Ft[1])), dtype)
    for dist in (0.01, 0.05, torch.tensor(0.2, dtype=dtype), 1e3):
        for variant in ("code", "paper"):
            got = S.ibdr_dual_update(3.0, dist, 0.2, variant=variant)
            assert type(got) is float
            assert got == R.ibdr_dual_update(3.0, float(dist), 0.2, variant=variant)


def test_dpp_closed_forms():
    """IBDR acceptance 1: orthonormal qh gives K log(1 + j); identical particles give
    log(K + j) + (K - 1) log j (checks the float64 Gram from float32 inputs too)."""
    j = 1e-7
    P = torch.zeros(3, 1, 4, dtype=F64)
    for k in range(3):
        P[k, 0, k + 1] = 1.0                 # class 0 true; wrong-class one-hots orthonormal
    assert abs(float(S.dpp_logdet_diversity(P, torch.tensor([0]))) - 3 * np.log1p(j)) < 1e-15
    Pi = torch.softmax(torch.tensor([[0.3, -1.0, 2.0, 0.5]]), -1).expand(4, 1, 4).contiguous()
    want = np.log(4 + j) + 3 * np.log(j)
    for dt in (F64, F32):
        got = float(S.dpp_logdet_diversity(Pi.to(dt), torch.tensor([2])))
        assert abs(got - want) < (1e-9 if dt == F64 else 2e-5 * abs(want)), (dt, got, want)


def test_dpp_normalize_clamp_branch():
    """A wrong-class vector with ||Q|| < 1e-12 (F.normalize's eps): qh = Q / 1e-12 and the
    gradient has no projection term, as the reference."""
    F, y = ibdr_case(K=3, B=2, C=5, seed=20)
    P = softmax(F)
    P[0, 0] = 0.0
    wrong = [j for j in range(5) if j != y[0]]
    P[0, 0, wrong[0]], P[0, 0, wrong[1]] = 3e-13, 4e-13
    P[0, 0, y[0]] = 1.0 - 7e-13
    x = tt(P).requires_grad_(True)
    LD = S.dpp_logdet_diversity(x, tt(y))
    (g,) = torch.autograd.grad(LD, x)
    assert_close(LD, R.dpp_logdet_diversity(P, y))
    from refimpl._ibdr import _dpp_logdet_vjp

    want = _dpp_logdet_vjp(P, y, 1.0)
    assert np.abs(want).max() > 1e10                       # the 1 / 1e-12 branch is exercised
    assert_close(g, want, atol=0, rtol=1e-10)


def test_gradcheck_ibdr_loss_and_dpp():
    F, y = ibdr_case(K=3, B=2, C=5, seed=12)
    yt = tt(y)
    for variant in ("code", "paper"):
        for alpha in (0.0, 0.5):
            assert torch.autograd.gradcheck(
                lambda x, v=variant, a=alpha: S.ibdr_loss(x, yt, alpha_div=a, variant=v),
                [tt(F).requires_grad_(True)])
    assert torch.autograd.gradcheck(lambda p: S.dpp_logdet_diversity(p, yt),
                                    [tt(softmax(F)).requires_grad_(True)])
    # autograd of ibdr_loss == ibdr_loss_grad (the same closed form)
    x = tt(F).requires_grad_(True)
    (g,) = torch.autograd.grad(S.ibdr_loss(x, yt, alpha_div=0.5), x)
    assert torch.equal(g, S.ibdr_loss_grad(tt(F), yt, alpha_div=0.5)[1])


def test_ibdr_saves_one_tensor():
    F, y = ibdr_case(seed=13)
    x = tt(F).requires_grad_(True)
    L, sizes = saved_numels(lambda: S.ibdr_loss(x, tt(y)))
    assert sizes == [x.numel()]
    L.backward()


# --------------------------------------------------------------------------- host reads


def test_one_host_read_per_call(monkeypatch):
    calls = []
    real = S.read_packed
    monkeypatch.setattr(S, "read_packed", lambda parts: calls.append(1) or real(parts))
    rng = np.random.default_rng(14)
    v = [tt(rng.normal(size=20)) for _ in range(4)]
    H, W, b, labels, w = head_case(seed=15)
    F, y = ibdr_case(seed=16)
    for call in (lambda: S.harmful_perturb(v[0], v[1]),
                 lambda: S.antibody_lambda(v[0], v[1], torch.tensor(1.0, dtype=F64)),
                 lambda: S.antibody_align_direction(*v, torch.tensor(1.0, dtype=F64)),
                 lambda: S.antibody_weights(v[0], v[1]),
                 lambda: S.token_mean_nll(tt(H), tt(W), tt(labels), tt(b)),
                 lambda: S.weighted_token_ce(tt(H), tt(W), tt(labels), tt(w), tt(b)),
                 lambda: S.ibdr_loss(tt(F), tt(y), alpha_div=0.0),
                 lambda: S.dro_ascent(v[0], v[1], torch.tensor(0.5, dtype=F64)),
                 lambda: S.prediction_distance(tt(F[0]), tt(F[1]))):
        calls.clear()
        call()
        assert len(calls) == 1


# --------------------------------------------------------------------------- bad input


def test_bad_input_raises_like_reference():
    rng = np.random.default_rng(17)
    g = rng.normal(size=6)
    bad = g.copy()
    bad[2] = np.nan
    H, W, _, labels, w = head_case(seed=18)
    F, y = ibdr_case(K=2, B=3, C=5, seed=19)
    P = softmax(F)
    cases = [
        ("harmful_perturb", (g, bad), {}),
        ("harmful_perturb", (g, g[:5]), {}),
        ("harmful_perturb", (g, g), {"eps": 0.0}),
        ("antibody_lambda", (g, g), {"momentum": 1.5}),
        ("antibody_lambda", (g, g), {"variant": "cosin"}),
        ("antibody_lambda", (g, g, -1.0), {}),
        ("antibody_lambda", (g, g, np.array(np.inf)), {}),
        ("antibody_align_direction", (g, g, g, bad), {}),
        ("antibody_align_direction", (g, g, g, g), {"lam2": -1.0}),
        ("antibody_weights", (g, g), {"tau": 0.0}),
        ("antibody_weights", (g, bad), {}),
        ("antibody_weights", (g[:0], g[:0]), {}),
        ("token_mean_nll", (H, W, np.where(labels == -100, -5, labels)), {}),
        ("token_mean_nll", (H, W, labels.astype(np.float64)), {}),
        ("token_mean_nll", (H[:0], W, labels[:0]), {}),
        ("token_mean_nll", (H, W, labels), {"ignore_index": 1.5}),
        ("token_mean_nll", (H, W, labels), {"token_chunk": 0}),
        ("weighted_token_ce", (H, W, labels, -w), {}),
        ("weighted_token_ce", (H, W, labels, np.where(w > 0, np.inf, w)), {}),
        ("weighted_token_ce", (H, W, labels, w[:2]), {}),
        ("weighted_token_ce", (H, W, labels, w), {"variant": "papers"}),
        ("weighted_token_ce_grad", (H, W[:, :3], labels, w), {}),
        ("dpp_logdet_diversity", (P[:1], y), {}),
        ("dpp_logdet_diversity", (P[..., :2], y % 2), {}),
        ("dpp_logdet_diversity", (-P, y), {}),
        ("dpp_logdet_diversity", (P, y + 5), {}),
        ("dpp_logdet_diversity", (P, y), {"jitter": 0.0}),
        ("dpp_logdet_diversity", (np.broadcast_to(P[:1], P.shape).copy(), y),
         {"jitter": 1e-30}),                                  # Cholesky fails: not PD
        ("ibdr_loss", (F[:1], y), {}),
        ("ibdr_loss", (np.where(F > 0, np.nan, F), y), {}),
        ("ibdr_loss", (F, y.astype(np.float64)), {}),
        ("ibdr_loss_grad", (F, y), {"variant": "fisher"}),
        ("ibdr_loss_grad", (F, y), {"alpha_div": -1.0}),
        ("dro_ascent", (g, g, 0.0), {}),
        ("dro_ascent", (g, bad, 1.0), {}),
        ("dro_ascent", (g, g, np.array(-1.0)), {}),
        ("dro_ascent", (g, g, 1.0), {"clip": 0.0}),
        ("prediction_distance", (F[0], F[1, :, :4]), {}),
        ("prediction_distance", (F[0], np.where(F[1] > 0, np.inf, F[1])), {}),
        ("ibdr_dual_update", (3.0, -0.1, 0.1), {}),
        ("ibdr_dual_update", (3.0, 0.1, 0.1), {"variant": "fisher"}),
        ("ibdr_dual_update", (3.0, 0.1, 0.1), {"lo": 6.0}),
        ("ibdr_dual_update", (-1.0, np.array(0.1), 0.1), {"variant": "paper"}),
    ]
    def conv(x):
        return tt(x) if isinstance(x, np.ndarray) else x

    for name, args, kw in cases:
        raises_like_reference(lambda n=name, a=args, k=kw: getattr(R, n)(*a, **k),
                              lambda n=name, a=args, k=kw: getattr(S, n)(*map(conv, a), **k))
    # dtype mismatch and foreign arrays
    raises_like_reference(lambda: R.harmful_perturb(g, g.astype(np.float32)),
                          lambda: S.harmful_perturb(tt(g), tt(g, F32)))
    with pytest.raises(TypeError, match="torch backend"):
        S.harmful_perturb(tt(g), g)
    with pytest.raises(TypeError, match="torch backend"):
        S.weighted_token_ce(tt(H), tt(W), labels, tt(w))


# --------------------------------------------------------------------------- GPU (bench size)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_bench_sizes():
    """The spec's GPU bench sizes: weighted CE (16, 256, 4096, 32000) bf16 chunked with a
    bounded workspace, checked against the fp32 head on the same bf16 values (loss 1e-3 rel);
    antibody_align_direction at P = 25,165,824 fp32; ibdr_loss_grad (4, 8192, 397) vs CPU fp64."""
    dev = torch.device("cuda")
    g = torch.Generator(device=dev).manual_seed(0)
    B, T, d, V = 16, 256, 4096, 32000
    H = torch.randn(B, T, d, generator=g, device=dev).to(BF16)
    W = (torch.randn(V, d, generator=g, device=dev) / 64).to(BF16)
    labels = torch.randint(0, V, (B, T), generator=g, device=dev)
    labels[:, :32] = -100
    w = torch.softmax(torch.randn(B, generator=g, device=dev), 0).to(BF16)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    L, dH, dW, _ = S.weighted_token_ce_grad(H, W, labels, w, token_chunk=1024, vocab_chunk=8192)
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - base
    assert extra <= 0.25e9 + dH.numel() * 2 + dW.numel() * 2 + B * T * d * 4, extra
    L32 = S.weighted_token_ce(H.float(), W.float(), labels, w.float(), token_chunk=1024,
                              vocab_chunk=8192)
    assert abs(float(L) - float(L32)) <= 1e-3 * abs(float(L32))
    P = 25_165_824
    vs = [torch.randn(P, generator=g, device=dev) for _ in range(4)]
    got = S.antibody_align_direction(*vs)
    want = S.antibody_align_direction(*(v.double() for v in vs))
    for a, b_ in zip(got, want):
        assert_close(a, npy(b_), F32, atol=1e-5, rtol=1e-4)
    F = torch.randn(4, 8192, 397, generator=g, device=dev, dtype=F64) * 3
    y = torch.randint(0, 397, (8192,), generator=g, device=dev)
    out = S.ibdr_loss_grad(F.float(), y)
    ref = S.ibdr_loss_grad(F.cpu(), y.cpu())
    assert_close(out[0], npy(ref[0]), F32)
    assert_close(out[1], npy(ref[1]), F32)
