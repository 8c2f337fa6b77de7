"""Torch backend of the Inf-SSM family (inf_ssm.md sec. 1-4, 6-7): Gram closed forms, the code
and principled distances, the explicit gradient, the Mamba (a, c) extraction and the
regulariser with its allclose shortcut.

Oracles: the float64 NumPy reference :mod:`refimpl.inf_ssm` (1e-12 in float64 where the
conditioning allows; float32 to the registry tolerance atol 1e-5 / rtol 5e-4), its explicit
gradients/VJPs, ``torch.autograd.gradcheck`` (central finite differences, float64), the
official code's construction transcribed in plain torch (``_code_path_distance``), per-scan
calls for the batched (S, m) layout, one-chunk runs for the chunked sweeps, and the saved
tensors of the autograd graph (nothing with n1 n2 entries per system is kept)."""

import re

import numpy as np
import pytest

import backends

torch = pytest.importorskip("torch")
if backends.reason("torch") is not None:
    pytest.skip(f"backend torch: {backends.reason('torch')}", allow_module_level=True)

from torch_testing import close_to, saved_numels
from backends.torch import inf_ssm as T
from refimpl import inf_ssm as R

F64, F32 = torch.float64, torch.float32
TOL = {F64: (1e-12, 1e-12), F32: (1e-5, 5e-4)}     # (atol, rtol)
VARIANTS = ("code", "projection", "martin")
SEP = np.array([-0.8, -0.2, 0.3, 0.7])             # separated spectrum (sec. 2 caveat)


def npy(x):
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def tt(x, dtype=F64):
    return torch.as_tensor(np.asarray(x, dtype=np.float64)).to(dtype)


assert_close = close_to(TOL)


def code_regime(rng, lead, n):
    """(a, c) as in the code: a = tanh(U(0, 1)/2) in (0, 0.46), c ~ U(-1, 1)."""
    return np.tanh(rng.uniform(0, 1, lead + (n,)) / 2), rng.uniform(-1, 1, lead + (n,))


def wide(rng, lead, n):
    return rng.uniform(-0.95, 0.95, lead + (n,)), rng.uniform(-1, 1, lead + (n,))


def separated(rng, lead, n):
    """Well-conditioned principled case: a near SEP[:n] (n <= 4), |c| in (0.5, 1)."""
    a = SEP[:n] + rng.uniform(-0.05, 0.05, lead + (n,))
    c = rng.uniform(0.5, 1.0, lead + (n,)) * rng.choice([-1.0, 1.0], lead + (n,))
    return a, c


def distance_case(seed, lead=(5,), n1=4, n2=4, kind="code"):
    rng = np.random.default_rng(seed)
    gen = {"code": code_regime, "wide": wide, "separated": separated}[kind]
    a, c = gen(rng, lead, n1)
    b, e = gen(rng, lead, n2)
    return a, c, b, e


# --------------------------------------------------------------------------- Gram matrices


@pytest.mark.parametrize("dtype", [F64, F32])
@pytest.mark.parametrize("p", [0, 2])
def test_grams_match_reference(dtype, p):
    rng = np.random.default_rng(1)
    lead, n1, n2 = (2, 3), 4, 3
    a, b = rng.uniform(-0.95, 0.95, lead + (n1,)), rng.uniform(-0.95, 0.95, lead + (n2,))
    C1 = rng.normal(size=lead + ((p,) if p else ()) + (n1,))
    C2 = rng.normal(size=lead + ((p,) if p else ()) + (n2,))
    G = T.stein_gram_diag(tt(a, dtype), tt(C1, dtype))
    G12 = T.stein_cross_gram_diag(tt(a, dtype), tt(C1, dtype), tt(b, dtype), tt(C2, dtype))
    assert G.dtype == dtype and G12.dtype == dtype
    assert_close(G, R.stein_gram_diag(a, C1), dtype)
    assert_close(G12, R.stein_cross_gram_diag(a, C1, b, C2), dtype)


def test_cross_gram_solves_stein_sylvester():
    """G12 = diag(a) G12 diag(b) + C1^T C2 (the defining equation), independent of the
    reference."""
    rng = np.random.default_rng(2)
    a, b = tt(rng.uniform(-0.95, 0.95, 4)), tt(rng.uniform(-0.95, 0.95, 3))
    C1, C2 = tt(rng.normal(size=(2, 4))), tt(rng.normal(size=(2, 3)))
    G = T.stein_cross_gram_diag(a, C1, b, C2)
    assert_close(G, torch.diag(a) @ G @ torch.diag(b) + C1.T @ C2, atol=1e-13, rtol=1e-13)


# --------------------------------------------------------------------------- distances


def _dist_kind(variant):
    return "code" if variant == "code" else "separated"


@pytest.mark.parametrize("dtype", [F64, F32])
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("shape", [((6,), 4, 4), ((2, 3), 4, 3), ((), 3, 4)])
def test_distance_matches_reference(dtype, variant, shape):
    lead, n1, n2 = shape
    a, c, b, e = distance_case(3, lead, n1, n2, _dist_kind(variant))
    d = T.infssm_distance(*(tt(x, dtype) for x in (a, c, b, e)), variant=variant)
    assert d.dtype == dtype and tuple(d.shape) == lead
    assert_close(d, R.infssm_distance(a, c, b, e, variant=variant), dtype)


@pytest.mark.parametrize("variant", ["projection", "martin"])
def test_principled_eps(variant):
    a, c, b, e = distance_case(4, (3,), 4, 4, "separated")
    d = T.infssm_distance(tt(a), tt(c), tt(b), tt(e), variant=variant, eps=1e-3)
    assert_close(d, R.infssm_distance(a, c, b, e, variant=variant, eps=1e-3))


@pytest.mark.parametrize("kind", ["code", "wide"])
def test_distance_grad_matches_reference(kind):
    a, c, b, e = distance_case(5, (2, 4), 4, 3, kind)
    got = T.infssm_distance_grad(tt(a), tt(c), tt(b), tt(e))
    want = R.infssm_distance_grad(a, c, b, e)
    assert len(got) == 5
    for g, w in zip(got, want):
        assert_close(g, w)
    got32 = T.infssm_distance_grad(*(tt(x, F32) for x in (a, c, b, e)))
    for g, w in zip(got32, want):
        assert g.dtype == F32
        assert_close(g, w, F32)


@pytest.mark.parametrize("kind", ["code", "wide"])
def test_autograd_equals_reference_grad(kind):
    """Autograd through the custom Function (its backward) == the reference's explicit grad."""
    a, c, b, e = distance_case(6, (7,), 4, 4, kind)
    leaves = [tt(x).requires_grad_(True) for x in (a, c, b, e)]
    T.infssm_distance(*leaves).sum().backward()
    _, *want = R.infssm_distance_grad(a, c, b, e)
    for x, w in zip(leaves, want):
        assert_close(x.grad, w)


@pytest.mark.parametrize("variant", ["projection", "martin"])
@pytest.mark.parametrize("n1,n2", [(3, 3), (3, 2)])
def test_principled_autograd_equals_reference_vjp(variant, n1, n2):
    a, c, b, e = distance_case(7, (3,), n1, n2, "separated")
    cot = np.array([0.5, -1.0, 2.0])
    leaves = [tt(x).requires_grad_(True) for x in (a, c, b, e)]
    d = T.infssm_distance(*leaves, variant=variant)
    (d * tt(cot)).sum().backward()
    want = R.infssm_distance_vjp(a, c, b, e, cot, variant=variant)
    for x, w in zip(leaves, want):
        assert_close(x.grad, w, atol=1e-11, rtol=1e-11)


@pytest.mark.parametrize("variant,n1,n2,kind", [
    ("code", 4, 4, "code"), ("code", 3, 2, "wide"), ("projection", 3, 3, "separated"),
    ("projection", 2, 3, "separated"), ("martin", 3, 3, "separated"),
    ("martin", 3, 2, "separated")])
def test_distance_gradcheck(variant, n1, n2, kind):
    a, c, b, e = distance_case(8, (3,), n1, n2, kind)
    leaves = [tt(x).requires_grad_(True) for x in (a, c, b, e)]
    assert torch.autograd.gradcheck(
        lambda *xs: T.infssm_distance(*xs, variant=variant), leaves, eps=1e-6, atol=1e-7)


def test_float32_code_distance_has_no_cancellation():
    """float32 at the code's regime (d ~ 0.03, n = 16) against the float64 reference on the
    same (rounded) inputs: d to 2e-6 relative and each system's gradient to 5e-6 of its
    largest entry. The official construction ``1 - tr(G12 G21) / (tr G11 tr G22)`` in float32
    loses ~5 bits here (~1e-5 relative): the cancellation-free form is >= 5x better."""
    a, c, b, e = (x.astype(np.float32).astype(np.float64)
                  for x in distance_case(40, (2048,), 16, 16))
    ref = R.infssm_distance_grad(a, c, b, e)
    ins = [tt(x, F32) for x in (a, c, b, e)]
    got = T.infssm_distance_grad(*ins)
    rel_d = np.max(np.abs(npy(got[0]) - ref[0]) / ref[0])
    assert rel_d <= 2e-6
    for g, r in zip(got[1:], ref[1:]):
        assert np.max(np.abs(npy(g) - r) / np.abs(r).max(-1, keepdims=True)) <= 5e-6
    rel_code = np.max(np.abs(npy(T._code_path_distance(*ins)) - ref[0]) / ref[0])
    assert rel_code >= 5 * rel_d


def test_code_variant_is_once_differentiable():
    a, c, b, e = (tt(x).requires_grad_(True) for x in distance_case(9, (2,), 3, 3))
    (ga,) = torch.autograd.grad(T.infssm_distance(a, c, b, e).sum(), [a], create_graph=True)
    with pytest.raises(RuntimeError):
        torch.autograd.grad(ga.sum(), [a])


def test_code_path_equals_closed_form():
    """The official construction (2n x 2n P, matmul, traces) == the O(n^2) formula (sec. 7)."""
    for kind, n1, n2 in (("code", 16, 16), ("wide", 4, 4), ("wide", 5, 3)):
        a, c, b, e = (tt(x) for x in distance_case(10, (4, 50), n1, n2, kind))
        assert_close(T._code_path_distance(a, c, b, e), T.infssm_distance(a, c, b, e),
                     atol=1e-12, rtol=1e-12)


def test_distance_invariances():
    """Symmetry, common state permutation, sign flips and scaling of c (spec sec. 2 facts);
    range [0, 1]."""
    a, c, b, e = (tt(x) for x in distance_case(11, (20,), 6, 6))
    d = T.infssm_distance(a, c, b, e)
    assert bool(((d >= 0) & (d <= 1)).all())
    assert_close(T.infssm_distance(b, e, a, c), d, atol=1e-14, rtol=1e-13)
    perm = torch.randperm(6, generator=torch.Generator().manual_seed(0))
    assert_close(T.infssm_distance(a[:, perm], c[:, perm], b, e), d, atol=1e-14, rtol=1e-13)
    sign = torch.tensor([1.0, -1, 1, -1, -1, 1], dtype=F64)
    assert_close(T.infssm_distance(a, -3.0 * sign * c, b, e), d, atol=1e-14, rtol=1e-13)


def test_batched_scans_equal_per_scan_calls():
    """Leading dims (S, m) (the 48 scans of a Vim step in one call) == one call per scan,
    values and autograd gradients."""
    a, c, b, e = distance_case(12, (4, 9), 5, 5)
    leaves = [tt(x).requires_grad_(True) for x in (a, c, b, e)]
    d = T.infssm_distance(*leaves)
    w = tt(np.random.default_rng(0).normal(size=(4, 9)))
    grads = torch.autograd.grad((d * w).sum(), leaves)
    for s in range(4):
        ls = [tt(x[s]).requires_grad_(True) for x in (a, c, b, e)]
        ds = T.infssm_distance(*ls)
        assert_close(d[s], ds, atol=0, rtol=1e-15)
        gs = torch.autograd.grad((ds * w[s]).sum(), ls)
        for g, h in zip(grads, gs):
            assert_close(g[s], h, atol=1e-15, rtol=1e-14)


@pytest.mark.parametrize("chunk_systems", [1, 3])
def test_chunked_sweep_equals_one_chunk(monkeypatch, chunk_systems):
    a, c, b, e = distance_case(13, (2, 5), 4, 3, "wide")
    leaves = [tt(x).requires_grad_(True) for x in (a, c, b, e)]
    d_one = T.infssm_distance(*leaves)
    g_one = torch.autograd.grad(d_one.sum(), leaves)
    full_one = T.infssm_distance_grad(*(x.detach() for x in leaves))
    monkeypatch.setattr(T, "_CHUNK_ELEMS", chunk_systems * 4 * 3)
    assert len(T._chunks(10, 12)) == -(-10 // chunk_systems)        # several chunks really
    d = T.infssm_distance(*leaves)
    assert_close(d, d_one, atol=0, rtol=1e-15)
    for g, h in zip(torch.autograd.grad(d.sum(), leaves), g_one):
        assert_close(g, h, atol=1e-15, rtol=1e-14)
    for g, h in zip(T.infssm_distance_grad(*(x.detach() for x in leaves)), full_one):
        assert_close(g, h, atol=1e-15, rtol=1e-14)



def test_code_function_saves_nothing_quadratic():
    """The code variant keeps a, c, b, e and two per-system scalars: O(m (n1 + n2)), no
    tensor with n1 n2 entries per system (the (m, 2n, 2n) P of the code is never kept)."""
    m, n1, n2 = 64, 8, 8
    leaves = [tt(x).requires_grad_(True) for x in distance_case(14, (m,), n1, n2)]
    d, sizes = saved_numels(lambda: T.infssm_distance(*leaves))
    assert sum(sizes) <= m * (2 * n1 + 2 * n2 + 2)
    assert max(sizes) < m * n1 * n2
    saved = d.grad_fn.saved_tensors if hasattr(d.grad_fn, "saved_tensors") else ()
    assert all(t.numel() <= m * max(n1, n2) for t in saved)
    # the official construction keeps (m, 2n, 2n) tensors: the contrast the spec measures
    _, sizes = saved_numels(lambda: T._code_path_distance(*leaves))
    assert max(sizes) >= m * (n1 + n2) ** 2 // 4


def test_distance_dtype_and_empty_batch():
    a, c, b, e = distance_case(15, (0,), 3, 3)
    for dtype in (F32, F64):
        d = T.infssm_distance(*(tt(x, dtype) for x in (a, c, b, e)))
        assert d.dtype == dtype and tuple(d.shape) == (0,)


# --------------------------------------------------------------------------- Mamba extraction


def scan_case(seed, B=2, D=5, L=3, n=4):
    rng = np.random.default_rng(seed)
    return {"delta_raw": rng.normal(size=(B, D, L)) * 2.0, "A_log": rng.normal(size=(D, n)) * 0.5,
            "C": rng.normal(size=(B, n, L)), "dt_bias": rng.normal(size=D)}


SCAN_OPTS = [(cr, sq, bias) for cr in ("mean", "none") for sq in (True, False)
             for bias in (False, True)]


@pytest.mark.parametrize("dtype", [F64, F32])
@pytest.mark.parametrize("cr,sq,bias", SCAN_OPTS)
def test_mamba_matches_reference(dtype, cr, sq, bias):
    k = scan_case(16)
    db = k["dt_bias"] if bias else None
    a, c = T.mamba_ac_from_scan(tt(k["delta_raw"], dtype), tt(k["A_log"], dtype),
                                tt(k["C"], dtype), None if db is None else tt(db, dtype), cr, sq)
    ra, rc = R.mamba_ac_from_scan(k["delta_raw"], k["A_log"], k["C"], db, cr, sq)
    assert a.dtype == dtype and c.dtype == dtype
    assert_close(a, ra, dtype)
    assert_close(c, rc, dtype)


def test_mamba_equals_explicit_loop():
    """Independent of the reference: a loop over (b, l, d) of the sec. 3 formulas."""
    k = scan_case(17, B=2, D=3, L=2, n=3)
    a, _ = T.mamba_ac_from_scan(tt(k["delta_raw"]), tt(k["A_log"]), tt(k["C"]), squash=False)
    A = -np.exp(k["A_log"])
    want = np.zeros((2 * 2, 3))
    for b_ in range(2):
        for l_ in range(2):
            for d_ in range(3):
                dt = np.log1p(np.exp(k["delta_raw"][b_, d_, l_]))
                want[b_ * 2 + l_] += np.exp(dt * A[d_]) / 3
    assert_close(a, want, atol=1e-14, rtol=1e-14)


@pytest.mark.parametrize("cr,sq,bias", SCAN_OPTS)
def test_mamba_gradcheck(cr, sq, bias):
    """Both outputs, w.r.t. delta_raw, A_log, C (and dt_bias)."""
    k = scan_case(18, B=2, D=3, L=2, n=2)
    leaves = [tt(k[n]).requires_grad_(True) for n in ("delta_raw", "A_log", "C")]
    if bias:
        leaves.append(tt(k["dt_bias"]).requires_grad_(True))

    def f(dr, Al, C, db=None):
        return T.mamba_ac_from_scan(dr, Al, C, db, cr, sq)

    assert torch.autograd.gradcheck(f, leaves, eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("cr,sq,bias", SCAN_OPTS)
def test_mamba_autograd_equals_reference_vjp(cr, sq, bias):
    k = scan_case(19)
    db = k["dt_bias"] if bias else None
    dr, Al = tt(k["delta_raw"]).requires_grad_(True), tt(k["A_log"]).requires_grad_(True)
    a, _ = T.mamba_ac_from_scan(dr, Al, tt(k["C"]), None if db is None else tt(db), cr, sq)
    cot = np.random.default_rng(1).normal(size=tuple(a.shape))
    (a * tt(cot)).sum().backward()
    want = R.mamba_ac_from_scan_vjp(k["delta_raw"], k["A_log"], k["C"], cot, db, cr, sq)
    assert_close(dr.grad, want[0])
    assert_close(Al.grad, want[1])


def test_mamba_channel_blocks_and_saved(monkeypatch):
    """The channel-mean Function: blocks of one channel == one block (values and gradients),
    and nothing of size B D L n is saved for backward."""
    k = scan_case(20, B=2, D=6, L=3, n=4)
    B, D, L, n = 2, 6, 3, 4

    def run():
        leaves = [tt(k[x]).requires_grad_(True) for x in ("delta_raw", "A_log", "C")]
        (a, c), sizes = saved_numels(lambda: T.mamba_ac_from_scan(*leaves))
        grads = torch.autograd.grad((a * a).sum() + c.sum(), leaves)
        return a, grads, sizes

    a1, g1, sizes = run()
    assert max(sizes) < B * D * L * n and max(sizes) <= B * D * L
    monkeypatch.setattr(T, "_CHUNK_ELEMS", B * L * n)        # one channel per block
    assert len(T._chunks(D, B * L * n)) == D
    a2, g2, _ = run()
    assert_close(a2, a1, atol=1e-15, rtol=1e-14)
    for x, y in zip(g2, g1):
        assert_close(x, y, atol=1e-15, rtol=1e-14)


# --------------------------------------------------------------------------- regulariser


def reg_case(seed, S=3, m=6, n=4, same=(1,)):
    """New/old pairs; scans in ``same`` have identical new and old pairs."""
    rng = np.random.default_rng(seed)
    new = [code_regime(rng, (m,), n) for _ in range(S)]
    old = []
    for s, (a, c) in enumerate(new):
        if s in same:
            old.append((a.copy(), c.copy()))
        else:
            old.append((np.clip(a + 0.05 * rng.normal(size=a.shape), -0.9, 0.9),
                        c + 0.1 * rng.normal(size=c.shape)))
    return new, old


def tpairs(pairs, dtype=F64, grad=False):
    return [tuple(tt(x, dtype).requires_grad_(grad) for x in p) for p in pairs]


@pytest.mark.parametrize("dtype", [F64, F32])
@pytest.mark.parametrize("mode", ["inf_ssm", "mse"])
@pytest.mark.parametrize("shortcut", [True, False])
def test_reg_loss_matches_reference(dtype, mode, shortcut):
    new, old = reg_case(21)
    got = T.infssm_reg_loss(tpairs(new, dtype), tpairs(old, dtype), 3.0, mode, shortcut)
    assert got.dtype == dtype and got.ndim == 0
    assert_close(got, R.infssm_reg_loss(new, old, 3.0, mode, shortcut), dtype)
    gl, gda, gdc = T.infssm_reg_loss_grad(tpairs(new, dtype), tpairs(old, dtype), 3.0, mode,
                                          shortcut)
    rl, rda, rdc = R.infssm_reg_loss_grad(new, old, 3.0, mode, shortcut)
    assert gda.dtype == dtype and tuple(gda.shape) == (3, 6, 4)
    for g, w in ((gl, rl), (gda, rda), (gdc, rdc)):
        assert_close(g, w, dtype)


@pytest.mark.parametrize("mode", ["inf_ssm", "mse"])
@pytest.mark.parametrize("shortcut", [True, False])
def test_reg_loss_autograd_equals_grad(mode, shortcut):
    new, old = reg_case(22)
    tn = tpairs(new, grad=True)
    loss = T.infssm_reg_loss(tn, tpairs(old, grad=True), 2.0, mode, shortcut)
    leaves = [x for p in tn for x in p]
    grads = torch.autograd.grad(loss, leaves)
    _, rda, rdc = R.infssm_reg_loss_grad(new, old, 2.0, mode, shortcut)
    for s in range(3):
        assert_close(grads[2 * s], rda[s])
        assert_close(grads[2 * s + 1], rdc[s])


@pytest.mark.parametrize("mode", ["inf_ssm", "mse"])
def test_reg_loss_gradcheck(mode):
    new, old = reg_case(23, S=2, m=3, n=3, same=())
    old_t = tpairs(old)
    leaves = [x for p in tpairs(new, grad=True) for x in p]

    def f(*xs):
        return T.infssm_reg_loss([(xs[0], xs[1]), (xs[2], xs[3])], old_t, 1.5, mode)

    assert torch.autograd.gradcheck(f, leaves, eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("mode", ["inf_ssm", "mse"])
def test_shortcut_exact_zero_and_zero_gradient(mode):
    """Identical new and old: exactly 0 loss, zero gradient (autograd and explicit); the old
    pairs are frozen (no gradient)."""
    new, _ = reg_case(24, same=())
    tn, to = tpairs(new, grad=True), tpairs(new, grad=True)
    loss = T.infssm_reg_loss(tn, to, 1e6, mode)
    assert float(loss.detach()) == 0.0
    leaves = [x for p in tn for x in p]
    grads = torch.autograd.grad(loss, leaves + [x for p in to for x in p], allow_unused=True)
    for g in grads:
        assert g is None or bool((g == 0).all())
    gl, gda, gdc = T.infssm_reg_loss_grad(tn, to, 1e6, mode)
    assert float(gl) == 0.0 and bool((gda == 0).all()) and bool((gdc == 0).all())
    # one identical scan among others: its gradient is exactly zero, the others are not
    new, old = reg_case(25, same=(1,))
    tn = tpairs(new, grad=True)
    loss = T.infssm_reg_loss(tn, tpairs(old), 1.0, mode)
    g = torch.autograd.grad(loss, [x for p in tn for x in p])
    assert bool((g[2] == 0).all()) and bool((g[3] == 0).all())
    assert float(g[0].abs().max()) > 0 and float(g[4].abs().max()) > 0
    # allclose within tolerance (not bit-identical) also triggers it
    near = [(a * (1 + 1e-7), c) for a, c in new]
    assert float(T.infssm_reg_loss(tpairs(near), tpairs(new), 1.0, mode)) == 0.0
    assert float(T.infssm_reg_loss(tpairs(near), tpairs(new), 1.0, mode,
                                   allclose_shortcut=False)) > 0.0


# --------------------------------------------------------------------------- validation


def _bad_cases():
    a, c, b, e = distance_case(27, (3,), 4, 4)
    unstable = a.copy()
    unstable[1, 2] = 1.0
    nan_c = c.copy()
    nan_c[0, 0] = np.nan
    dup = np.tile(np.array([0.3, 0.3, 0.5, 0.6]), (3, 1))     # repeated pole: G11 singular
    k = scan_case(28)
    new, old = reg_case(29)
    return [
        ("infssm_distance", (unstable, c, b, e), {}),
        ("infssm_distance", (a, nan_c, b, e), {}),
        ("infssm_distance", (a, c, b[:2], e[:2]), {}),
        ("infssm_distance", (a, c[:, :3], b, e), {}),
        ("infssm_distance", (a, c, b, e), {"variant": "svd"}),
        ("infssm_distance", (a, c, b, e), {"eps": -1.0}),
        ("infssm_distance", (dup, c, b, e), {"variant": "projection"}),
        ("infssm_distance", (a, c, dup, e), {"variant": "martin"}),
        ("infssm_distance_grad", (a, c, -unstable, e), {}),
        ("stein_gram_diag", (a, c[..., None, :3]), {}),
        ("stein_cross_gram_diag", (a, c, b, e[:, None, :]), {}),
        ("mamba_ac_from_scan", (k["delta_raw"], k["A_log"], k["C"][:, :2]), {}),
        ("mamba_ac_from_scan", (k["delta_raw"], k["A_log"], k["C"]), {"channel_reduce": "max"}),
        ("mamba_ac_from_scan", (k["delta_raw"], k["A_log"], k["C"], k["dt_bias"][:2]), {}),
        ("infssm_reg_loss", (new, old[:2], 1.0), {}),
        ("infssm_reg_loss", (new, old, -1.0), {}),
        ("infssm_reg_loss", (new, [(p[0], p[1][:, :3]) for p in old], 1.0), {}),
        ("infssm_reg_loss_grad", (new, old, 1.0), {"mode": "l2"}),
        ("infssm_reg_loss", ([(1.5 * new[0][0] + 0.9, new[0][1])] + new[1:], old, 1.0), {}),
    ]


def _to_torch(x):
    if isinstance(x, np.ndarray):
        return tt(x)
    if isinstance(x, list):
        return [tuple(tt(y) for y in p) for p in x]
    return x


@pytest.mark.parametrize("op,args,kw", _bad_cases(), ids=lambda v: v if isinstance(v, str) else "")
def test_bad_input_same_message_as_reference(op, args, kw):
    with pytest.raises((TypeError, ValueError)) as ref:
        getattr(R, op)(*args, **kw)
    with pytest.raises(ref.type, match=re.escape(str(ref.value))):
        getattr(T, op)(*(_to_torch(x) for x in args), **kw)


def test_dtype_mismatch_same_message():
    a, c, b, e = distance_case(30, (2,), 3, 3)
    with pytest.raises(TypeError) as ref:
        R.infssm_distance(a, c.astype(np.float32), b, e)
    with pytest.raises(TypeError, match=re.escape(str(ref.value))):
        T.infssm_distance(tt(a), tt(c, F32), tt(b), tt(e))


def test_foreign_arrays_refused():
    a, c, b, e = distance_case(31, (2,), 3, 3)
    with pytest.raises(TypeError, match="numpy.ndarray"):
        T.infssm_distance(tt(a), c, tt(b), tt(e))
    with pytest.raises(TypeError, match="numpy.ndarray"):
        T.stein_gram_diag(a, tt(c))
    k = scan_case(32)
    with pytest.raises(TypeError, match="numpy.ndarray"):
        T.mamba_ac_from_scan(tt(k["delta_raw"]), tt(k["A_log"]), k["C"])
    new, old = reg_case(33)
    with pytest.raises(TypeError, match="numpy.ndarray"):
        T.infssm_reg_loss(tpairs(new), [(tt(old[0][0]), old[0][1])] + tpairs(old[1:]), 1.0)


def test_stats_read_once_per_call(monkeypatch):
    """Validation's finite/max checks are batched into one device-to-host read per call."""
    calls = []
    real = torch.Tensor.tolist

    def counting(self):
        calls.append(tuple(self.shape))
        return real(self)

    monkeypatch.setattr(torch.Tensor, "tolist", counting)
    new, old = reg_case(34, S=4)
    T.infssm_reg_loss(tpairs(new), tpairs(old), 1.0)
    assert calls == [(16, 2)]


# --------------------------------------------------------------------------- CUDA


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu():
    dev = torch.device("cuda")
    a, c, b, e = distance_case(35, (3, 40), 16, 16)
    for dtype in (F32, F64):
        cpu = [tt(x, dtype).requires_grad_(True) for x in (a, c, b, e)]
        gpu = [tt(x, dtype).to(dev).requires_grad_(True) for x in (a, c, b, e)]
        d_cpu, d_gpu = T.infssm_distance(*cpu), T.infssm_distance(*gpu)
        assert d_gpu.device.type == "cuda" and d_gpu.dtype == dtype
        assert_close(d_gpu, d_cpu, dtype)
        for x, y in zip(torch.autograd.grad(d_gpu.sum(), gpu),
                        torch.autograd.grad(d_cpu.sum(), cpu)):
            assert x.device.type == "cuda"
            assert_close(x, y, dtype)
    k = scan_case(36)
    a_g, c_g = T.mamba_ac_from_scan(*(tt(k[x]).to(dev) for x in ("delta_raw", "A_log", "C")))
    a_c, c_c = T.mamba_ac_from_scan(*(tt(k[x]) for x in ("delta_raw", "A_log", "C")))
    assert a_g.device.type == "cuda"
    assert_close(a_g, a_c)
    assert_close(c_g, c_c)
    new, old = reg_case(37)
    loss = T.infssm_reg_loss([tuple(x.to(dev) for x in p) for p in tpairs(new)],
                             [tuple(x.to(dev) for x in p) for p in tpairs(old)], 1.0)
    assert loss.device.type == "cuda"
    assert_close(loss, R.infssm_reg_loss(new, old, 1.0))
