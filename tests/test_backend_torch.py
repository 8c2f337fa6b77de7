"""Torch-specific tests of the torch backend: what the generic registry cross-check does not
cover — autograd (gradcheck, autograd == explicit gradients), the float32 accuracy guard of
softdtw.md sec. 12 item 9, peer oracles on torch tensors (tslearn, POT), padding and +inf
handling, refusal of mixed backends, the Sinkhorn guard and envelope gradient, the import
contract, and (``gpu`` marker) that CUDA inputs stay on the device."""

import math
import os
import subprocess
import sys

import numpy as np
import pytest

import backends
from refimpl._cases.softdtw import pad_nan as _pad_nan_inplace

torch = pytest.importorskip("torch")
if backends.reason("torch") is not None:
    pytest.skip(f"backend torch: {backends.reason('torch')}", allow_module_level=True)

import backends.torch as bt  # noqa: E402
from refimpl import ot as rot  # noqa: E402
from refimpl import softdtw as sd  # noqa: E402

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def rng_for(seed):
    return np.random.default_rng(20261122 + seed)


def T(a, dtype=torch.float64, requires_grad=False):
    """A CPU tensor of ``a`` (NumPy or list)."""
    return torch.tensor(np.asarray(a), dtype=dtype, requires_grad=requires_grad)


def L(v):
    return torch.tensor(np.asarray(v), dtype=torch.int64)


def pad_nan(A, lengths, axis):
    """A copy of ``A`` with NaN beyond ``lengths[b]`` along ``axis`` (the registry's padding)."""
    return _pad_nan_inplace(A.copy(), lengths, axis)


def ragged_points(rng, B, N, M, d, low=1):
    """NaN-padded sequences (B, N, d), (B, M, d) and their lengths."""
    X, Y = rng.normal(size=(B, N, d)) / np.sqrt(d), rng.normal(size=(B, M, d)) / np.sqrt(d)
    lx, ly = rng.integers(low, N + 1, B), rng.integers(low, M + 1, B)
    return pad_nan(X, lx, 1), pad_nan(Y, ly, 1), lx, ly


def sq_costs(rng, B, N, M, d=4, scale=1.0):
    X, Y = rng.normal(size=(B, N, d)) / np.sqrt(d), rng.normal(size=(B, M, d)) / np.sqrt(d)
    return scale * ((X[:, :, None, :] - Y[:, None, :, :]) ** 2).sum(-1)


# --------------------------------------------------------------------------- gradcheck


@pytest.mark.parametrize("bandwidth", [None, 1])
def test_gradcheck_soft_dtw_ragged_nan_padded(bandwidth):
    rng = rng_for(1)
    lx, ly = np.array([6, 3, 4]), np.array([5, 5, 2])
    C = pad_nan(pad_nan(rng.random((3, 6, 5)), lx, 1), ly, 2)
    # finite differences through the NaN padding give 0, which the analytic E must match
    assert torch.autograd.gradcheck(
        lambda c: bt.soft_dtw(c, 0.3, len_x=L(lx), len_y=L(ly), bandwidth=bandwidth),
        (T(C, requires_grad=True),))


@pytest.mark.parametrize("shape,gamma", [((7, 4), 0.05), ((3, 8), 1.0)])
def test_gradcheck_soft_dtw_2d(shape, gamma):
    C = T(rng_for(2).random(shape), requires_grad=True)
    assert torch.autograd.gradcheck(lambda c: bt.soft_dtw(c, gamma), (C,))


@pytest.mark.parametrize("kind", ["sqeuclidean", "cosine"])
@pytest.mark.parametrize("config", ["ragged_penalty", "ragged_band", "unbatched_unequal",
                                    "zero_length_pair"])
def test_gradcheck_divergence(kind, config):
    rng = rng_for(3)
    kw = dict(kind=kind)
    if config == "unbatched_unequal":
        X, Y = rng.normal(size=(6, 3)), rng.normal(size=(4, 3))
    else:
        X, Y, lx, ly = ragged_points(rng, 3, 6, 5, 3)
        if config == "zero_length_pair":
            lx[1] = 0
            X = pad_nan(X, lx, 1)
        kw.update(len_x=L(lx), len_y=L(ly))
        if config == "ragged_penalty":
            kw["penalty"] = T(pad_nan(pad_nan(0.2 * rng.random((3, 6, 5)), lx, 1), ly, 2))
        if config == "ragged_band":
            kw["bandwidth"] = 1
    assert torch.autograd.gradcheck(
        lambda x, y: bt.soft_dtw_divergence(x, y, 0.5, **kw),
        (T(X, requires_grad=True), T(Y, requires_grad=True)))


@pytest.mark.parametrize("kind", ["sqeuclidean", "cosine"])
@pytest.mark.parametrize("batched", [False, True])
def test_gradcheck_sdtw_cost(kind, batched):
    rng = rng_for(4)
    shape_x, shape_y = ((2, 5, 3), (2, 4, 3)) if batched else ((5, 3), (4, 3))
    assert torch.autograd.gradcheck(
        lambda x, y: bt.sdtw_cost(x, y, kind=kind),
        (T(rng.normal(size=shape_x), requires_grad=True),
         T(rng.normal(size=shape_y), requires_grad=True)))


# --------------------------------------------------------------------------- autograd == explicit


@pytest.mark.parametrize("dtype,rtol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_autograd_soft_dtw_equals_explicit_E(dtype, rtol):
    rng = rng_for(5)
    lx, ly = np.array([9, 4, 12]), np.array([12, 10, 3])
    C = T(pad_nan(pad_nan(sq_costs(rng, 3, 12, 12), lx, 1), ly, 2), dtype, requires_grad=True)
    cot = T(rng.random(3), dtype)
    kw = dict(len_x=L(lx), len_y=L(ly), bandwidth=2)
    (bt.soft_dtw(C, 0.1, **kw) * cot).sum().backward()
    value, E = bt.soft_dtw_grad(C.detach(), 0.1, **kw)
    assert not value.requires_grad and not E.requires_grad
    torch.testing.assert_close(C.grad, cot[:, None, None] * E, rtol=rtol, atol=rtol * 1e-2)


@pytest.mark.parametrize("kind", ["sqeuclidean", "cosine"])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 2e-5)])
def test_autograd_divergence_equals_explicit_grad(kind, dtype, tol):
    rng = rng_for(6)
    X, Y, lx, ly = ragged_points(rng, 4, 10, 8, 5, low=0)
    P = pad_nan(pad_nan(0.1 * rng.random((4, 10, 8)), lx, 1), ly, 2)
    kw = dict(kind=kind, len_x=L(lx), len_y=L(ly), penalty=T(P, dtype), bandwidth=3)
    x, y = T(X, dtype, requires_grad=True), T(Y, dtype, requires_grad=True)
    cot = T(rng.random(4), dtype)
    value = bt.soft_dtw_divergence(x, y, 0.2, **kw)
    (value * cot).sum().backward()
    v2, dX, dY = bt.soft_dtw_divergence_grad(x.detach(), y.detach(), 0.2, **kw)
    torch.testing.assert_close(value.detach(), v2, rtol=tol, atol=tol)
    torch.testing.assert_close(x.grad, cot[:, None, None] * dX, rtol=tol, atol=tol)
    torch.testing.assert_close(y.grad, cot[:, None, None] * dY, rtol=tol, atol=tol)


def test_sdtw_cost_autograd_equals_vjp():
    rng = rng_for(7)
    for kind in ("sqeuclidean", "cosine"):
        x, y = T(rng.normal(size=(3, 7, 4)), requires_grad=True), T(rng.normal(size=(3, 5, 4)),
                                                                      requires_grad=True)
        G = T(rng.random((3, 7, 5)))
        (bt.sdtw_cost(x, y, kind=kind) * G).sum().backward()
        dX, dY = bt.sdtw_cost_vjp(x.detach(), y.detach(), G, kind=kind)
        torch.testing.assert_close(x.grad, dX, rtol=0, atol=0)
        torch.testing.assert_close(y.grad, dY, rtol=0, atol=0)


# --------------------------------------------------------------------------- float32 accuracy


@pytest.mark.parametrize("gamma", [0.1, 0.01])
@pytest.mark.parametrize("n,m,scale", [(256, 256, 1.0), (256, 180, 10.0)])
def test_float32_accuracy_guard(gamma, n, m, scale):
    """softdtw.md sec. 12 item 9 (torch-CPU size): max|E32 - E64| <= 1e-4, value rtol <= 1e-6,
    float64 run on the same float32-rounded costs. Scale 10 needs the diagonal offsets."""
    C32 = T(sq_costs(rng_for(8), 2, n, m, d=8, scale=scale), torch.float32)
    v32, E32 = bt.soft_dtw_grad(C32, gamma)
    v64, E64 = bt.soft_dtw_grad(C32.double(), gamma)
    assert v32.dtype == E32.dtype == torch.float32
    assert (E32.double() - E64).abs().max().item() <= 1e-4
    assert ((v32.double() - v64).abs() / v64.abs()).max().item() <= 1e-6


def test_float64_torch_matches_reference_loops_at_256():
    C = sq_costs(rng_for(9), 1, 256, 256, d=8)[0]
    v, E = sd.soft_dtw_grad(C, 0.1)
    vt, Et = bt.soft_dtw_grad(T(C), 0.1)
    assert abs(vt.item() - v) <= 1e-10 * abs(v)
    assert np.abs(Et.numpy() - E).max() <= 1e-9


# --------------------------------------------------------------------------- peer oracles


@pytest.mark.parametrize("n,m,gamma,r", [(12, 12, 1.0, None), (9, 15, 0.1, None),
                                         (20, 7, 0.01, None), (11, 16, 0.1, 2), (16, 11, 0.3, 0)])
def test_tslearn_value_and_alignment(n, m, gamma, r):
    metrics = pytest.importorskip("tslearn.metrics", reason="tslearn is a test-only oracle")
    rng = rng_for(10)
    x, y = rng.normal(size=(n, 3)), rng.normal(size=(m, 3))
    band = {} if r is None else dict(global_constraint="sakoe_chiba", sakoe_chiba_radius=r)
    A, value = metrics.soft_dtw_alignment(x, y, gamma=gamma, **band)  # (E, value)
    v, E = bt.soft_dtw_grad(bt.sdtw_cost(T(x), T(y)), gamma, bandwidth=r)
    assert abs(v.item() - value) <= 1e-10 * max(1.0, abs(value))
    np.testing.assert_allclose(E.numpy(), A, atol=1e-10)


def test_small_gamma_float64_matches_reference():
    C = sq_costs(rng_for(11), 1, 30, 22)[0]
    for gamma in (1e-3, 1e-4):
        v, E = sd.soft_dtw_grad(C, gamma)
        vt, Et = bt.soft_dtw_grad(T(C), gamma)
        assert abs(vt.item() - v) <= 1e-10 * abs(v)
        np.testing.assert_allclose(Et.numpy(), E, atol=1e-9)


@pytest.mark.parametrize("method", ["sinkhorn_log", "sinkhorn"])
def test_sinkhorn_matches_pot_on_torch_tensors(method):
    ot = pytest.importorskip("ot", reason="POT is a test-only oracle")
    rng = rng_for(12)
    n, m, eps = 40, 30, 0.05
    a, b = rng.random(n) + 0.2, rng.random(m) + 0.2
    a, b = T(a / a.sum()), T(b / b.sum())
    x, y = rng.normal(size=(n, 2)), rng.normal(loc=0.5, size=(m, 2))
    C = T(((x[:, None] - y[None]) ** 2).sum(-1) / 10.0)
    plan, log = ot.sinkhorn(a, b, C, reg=eps, method=method, numItermax=1000, stopThr=1e-9,
                            log=True)
    fn = bt.sinkhorn_log if method == "sinkhorn_log" else bt.sinkhorn
    res = fn(a, b, C, eps)
    assert res.converged and res.status == "converged"
    assert res.n_iter == log["niter"] + 1          # POT's niter is the last loop index
    assert isinstance(res.n_iter, int) and res.err.ndim == 0
    torch.testing.assert_close(res.plan, plan, rtol=0, atol=1e-12)
    f_pot = eps * (log["log_u"] if method == "sinkhorn_log" else torch.log(log["u"]))
    torch.testing.assert_close(res.f, f_pot, rtol=0, atol=1e-10)


def test_sinkhorn_cost_autodiff_at_convergence_is_the_envelope_gradient():
    rng = rng_for(13)
    n, m, eps = 15, 12, 0.1
    a, b = rng.random(n) + 0.2, rng.random(m) + 0.2
    a_t, b_t = T(a / a.sum(), requires_grad=True), T(b / b.sum(), requires_grad=True)
    C = T(rng.random((n, m)), requires_grad=True)
    bt.sinkhorn_cost(a_t, b_t, C, eps, tol=1e-13, max_iter=5000).backward()
    dC, da, db = bt.sinkhorn_cost_grad(a_t.detach(), b_t.detach(), C.detach(), eps, tol=1e-13,
                                       max_iter=5000)
    torch.testing.assert_close(C.grad, dC, rtol=0, atol=1e-9)
    # autodiff of <a,f> + <b,g> w.r.t. unconstrained weights differs by a constant vector
    torch.testing.assert_close(a_t.grad - a_t.grad.mean(), da, rtol=0, atol=1e-8)
    torch.testing.assert_close(b_t.grad - b_t.grad.mean(), db, rtol=0, atol=1e-8)


def test_standard_sinkhorn_guard_matches_reference_without_per_iteration_reads():
    """A column of K underflows: the deferred device flag must stop at the same iterate as the
    reference's per-iteration check, return no NaN, and keep autograd finite."""
    rng = rng_for(14)
    eps = 0.01
    C = rng.random((6, 5))
    C[:, 0] = 800 * eps + rng.random(6)
    with pytest.warns(RuntimeWarning, match="numerical error"):
        ref = rot.sinkhorn(None, None, C, eps)
    Ct = T(C, requires_grad=True)
    with pytest.warns(RuntimeWarning, match="numerical error"):
        res = bt.sinkhorn(None, None, Ct.detach(), eps)
    assert res.status == ref.status == "numerical_error" and res.n_iter == ref.n_iter
    assert torch.isfinite(res.plan).all()
    np.testing.assert_allclose(res.plan.numpy(), ref.plan, atol=1e-12)
    with pytest.warns(RuntimeWarning, match="numerical error"):
        value = bt.sinkhorn_cost(None, None, Ct, eps, kind="linear", method="standard")
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(Ct.grad).all()


# ------------------------------------------------------------------- padding, +inf, empty pairs


def test_nan_padding_never_leaks():
    rng = rng_for(15)
    X, Y, lx, ly = ragged_points(rng, 4, 9, 7, 3)
    P = pad_nan(pad_nan(0.1 * rng.random((4, 9, 7)), lx, 1), ly, 2)
    kw = dict(len_x=L(lx), len_y=L(ly), bandwidth=2)
    # soft_dtw on NaN-padded costs equals the same costs padded with huge values
    C = pad_nan(pad_nan(sq_costs(rng, 4, 9, 7), lx, 1), ly, 2)
    v, E = bt.soft_dtw_grad(T(C), 0.1, **kw)
    v2, E2 = bt.soft_dtw_grad(T(np.nan_to_num(C, nan=1e30)), 0.1, **kw)
    assert torch.isfinite(v).all() and torch.isfinite(E).all()
    assert torch.equal(v, v2) and torch.equal(E, E2)
    for b in range(4):
        assert (E[b, lx[b]:] == 0).all() and (E[b, :, ly[b]:] == 0).all()
    # divergence: value and gradients equal the per-pair computation on sliced inputs
    for kind in ("sqeuclidean", "cosine"):
        value, dX, dY = bt.soft_dtw_divergence_grad(T(X), T(Y), 0.3, kind=kind, penalty=T(P), **kw)
        x, y = T(X, requires_grad=True), T(Y, requires_grad=True)
        bt.soft_dtw_divergence(x, y, 0.3, kind=kind, penalty=T(P), **kw).sum().backward()
        for grad in (dX, dY, x.grad, y.grad):
            assert torch.isfinite(grad).all()
        for b in range(4):
            assert (dX[b, lx[b]:] == 0).all() and (dY[b, ly[b]:] == 0).all()
            vb, dxb, dyb = bt.soft_dtw_divergence_grad(
                T(X[b, :lx[b]]), T(Y[b, :ly[b]]), 0.3, kind=kind,
                penalty=T(P[b, :lx[b], :ly[b]]), bandwidth=2)
            assert abs(value[b].item() - vb.item()) <= 1e-12 * max(1.0, abs(vb.item()))
            torch.testing.assert_close(dX[b, :lx[b]], dxb, rtol=1e-10, atol=1e-12)
            torch.testing.assert_close(dY[b, :ly[b]], dyb, rtol=1e-10, atol=1e-12)


def test_inf_costs_and_unreachable_end():
    rng = rng_for(16)
    C = rng.random((2, 6, 6))
    C[0, 2, :] = np.inf              # pair 0: every path crosses row 2 -> value +inf, E = 0
    C[1, 2, 1:4] = np.inf            # pair 1: some cells forbidden, paths remain
    v, E = bt.soft_dtw_grad(T(C), 0.1)
    assert v[0].item() == math.inf and (E[0] == 0).all()
    v_ref, E_ref = sd.soft_dtw_grad(C[1], 0.1)
    assert abs(v[1].item() - v_ref) <= 1e-12 * abs(v_ref)
    np.testing.assert_allclose(E[1].numpy(), E_ref, atol=1e-12)
    assert (E[1, 2, 1:4] == 0).all()
    c = T(C, requires_grad=True)
    bt.soft_dtw(c, 0.1)[1].backward()
    assert torch.isfinite(c.grad).all() and (c.grad[0] == 0).all()


def test_zero_length_pairs_in_divergence():
    rng = rng_for(17)
    X, Y, lx, ly = ragged_points(rng, 3, 5, 4, 2)
    lx[0], ly[2] = 0, 0
    X, Y = pad_nan(X, lx, 1), pad_nan(Y, ly, 1)
    kw = dict(len_x=L(lx), len_y=L(ly))
    value, dX, dY = bt.soft_dtw_divergence_grad(T(X), T(Y), 0.5, **kw)
    assert value[0].item() == 0 and value[2].item() == 0 and value[1].item() != 0
    assert (dX[0] == 0).all() and (dY[0] == 0).all() and (dX[2] == 0).all() and (dY[2] == 0).all()
    # every pair empty: zeros, still reachable by autograd
    empty = L([0, 0, 0])
    x = T(X, requires_grad=True)
    v = bt.soft_dtw_divergence(x, T(Y), 0.5, len_x=empty, len_y=L(ly))
    v.sum().backward()
    assert (v == 0).all() and (x.grad == 0).all()


def test_divergence_of_a_sequence_with_itself_is_zero():
    X = T(rng_for(18).normal(size=(3, 11, 4)))
    for kind in ("sqeuclidean", "cosine"):
        value, dX, dY = bt.soft_dtw_divergence_grad(X, X, 0.1, kind=kind)
        assert value.abs().max().item() <= 1e-12
        torch.testing.assert_close(dX, -dY, rtol=0, atol=1e-12)


# --------------------------------------------------------------------------- validation, protocol


@pytest.mark.parametrize("name,call", [
    ("C", lambda: bt.soft_dtw(np.ones((3, 3)), 1.0)),
    ("len_x", lambda: bt.soft_dtw_grad(torch.ones(2, 3, 3), 1.0, len_x=np.array([3, 2]))),
    ("Y", lambda: bt.soft_dtw_divergence(torch.ones(4, 2), np.ones((3, 2)), 1.0)),
    ("penalty", lambda: bt.soft_dtw_divergence_grad(torch.ones(4, 2), torch.ones(3, 2), 1.0,
                                                    penalty=np.zeros((4, 3)))),
    ("G", lambda: bt.sdtw_cost_vjp(torch.ones(4, 2), torch.ones(3, 2), np.ones((4, 3)))),
    ("a", lambda: bt.sinkhorn_log(np.full(3, 1 / 3), None, torch.ones(3, 4), 0.1)),
    ("C_yy", lambda: bt.sinkhorn_divergence(None, None, torch.ones(3, 4), torch.ones(3, 3),
                                            np.ones((4, 4)), 0.1)),
    ("y", lambda: bt.pairwise_cost(torch.ones(3, 2), np.ones((4, 2)))),
    ("C", lambda: bt.emd(None, None, np.ones((3, 3)))),
])
def test_mixed_backends_are_refused(name, call):
    with pytest.raises(TypeError, match=rf"^{name} is a numpy\.ndarray.*torch"):
        call()


def test_validation_messages_are_the_reference_ones():
    for ref_call, torch_call in [
        (lambda: sd.soft_dtw(np.ones((2, 3, 3)), 1.0, len_x=np.array([4, 1])),
         lambda: bt.soft_dtw(torch.ones(2, 3, 3), 1.0, len_x=L([4, 1]))),
        (lambda: sd.soft_dtw(np.ones((3, 3)), 0.0), lambda: bt.soft_dtw(torch.ones(3, 3), 0.0)),
        (lambda: rot.sinkhorn_log(np.array([0.5, 0.6]), None, np.ones((2, 2)), 0.1),
         lambda: bt.sinkhorn_log(T([0.5, 0.6]), None, T(np.ones((2, 2))), 0.1)),
    ]:
        with pytest.raises((ValueError, TypeError)) as ref_err:
            ref_call()
        with pytest.raises(type(ref_err.value)) as err:
            torch_call()
        assert str(err.value) == str(ref_err.value)


def test_import_does_not_initialise_cuda_and_device_override(monkeypatch):
    code = ("import torch, backends.torch as bt; "
            "assert not torch.cuda.is_initialized(); print(bt.NAME, bt.DTYPES)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert out.returncode == 0, out.stderr
    monkeypatch.setenv("REFIMPL_TORCH_DEVICE", "cpu")
    x = bt.asarray(np.arange(3, dtype=np.float32))
    assert x.device.type == "cpu" and x.dtype == torch.float32
    assert bt.asarray(np.float64(2.0)).shape == ()          # 0-d stays 0-d
    assert bt.peak_memory() is None and "cpu" in bt.describe()


def test_cpu_thread_count_is_restored():
    """The CPU wavefront runs its small per-diagonal ops on one intra-op thread; the caller's
    setting must be back afterwards, also after an autograd backward."""
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        C = T(sq_costs(rng_for(20), 4, 16, 16), requires_grad=True)
        bt.soft_dtw(C, 0.1).sum().backward()
        bt.soft_dtw_grad(C.detach(), 0.1)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


# --------------------------------------------------------------------------- CUDA


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_inputs_stay_on_device(dtype):
    rng = rng_for(19)
    dev = torch.device("cuda")
    X, Y, lx, ly = ragged_points(rng, 3, 20, 16, 4)
    Xc, Yc = T(X, dtype).to(dev).requires_grad_(), T(Y, dtype).to(dev)
    kw = dict(len_x=L(lx).to(dev), len_y=L(ly).to(dev), bandwidth=4)
    value = bt.soft_dtw_divergence(Xc, Yc, 0.1, kind="cosine", **kw)
    value.sum().backward()
    v, dX, dY = bt.soft_dtw_divergence_grad(Xc.detach(), Yc, 0.1, kind="cosine", **kw)
    for t in (value, Xc.grad, v, dX, dY):
        assert t.device.type == "cuda" and t.dtype == dtype
    v_cpu, dX_cpu, _ = bt.soft_dtw_divergence_grad(T(X, dtype), T(Y, dtype), 0.1, kind="cosine",
                                                   len_x=L(lx), len_y=L(ly), bandwidth=4)
    tol = 1e-10 if dtype == torch.float64 else 1e-4
    torch.testing.assert_close(v.cpu(), v_cpu, rtol=tol, atol=tol)
    torch.testing.assert_close(dX.cpu(), dX_cpu, rtol=tol, atol=tol)
    C = T(sq_costs(rng, 2, 12, 9), dtype).to(dev)
    val, E = bt.soft_dtw_grad(C, 0.1)
    assert E.device.type == "cuda" and E.dtype == dtype
    res = bt.sinkhorn_log(None, None, C, 0.5, max_iter=50, tol=0.0)
    assert res.plan.device.type == "cuda" and res.err.device.type == "cuda"
    emd = bt.emd(None, None, C[0])
    assert emd.plan.device.type == "cuda" and emd.plan.dtype == dtype

