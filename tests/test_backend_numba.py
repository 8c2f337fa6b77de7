"""Numba-CUDA backend tests beyond the generic registry cross-check.

(a) CPU, always (CI has no GPU): every kernel, for every signature the backend launches
    (float32 and float64), compiles to PTX for cc 9.0 with ``numba.cuda.compile_ptx`` — in a
    background subprocess without ``NUMBA_ENABLE_CUDASIM`` (tests/ptx_background.py, started
    when collection ends) — and float32 kernels do no float64
    arithmetic except the Soft-DTW diagonal offsets (a stray Python float literal would
    silently make a float32 kernel compute in float64).
(b) simulator (``NUMBA_ENABLE_CUDASIM=1``, tiny sizes): what the registry's tiny cases miss —
    lengths larger than the block (4 threads, lengths 9-11), the band, NaN padding, zero-length
    divergence pairs, +inf/NaN costs, the global-scratch path, Sinkhorn row splits,
    convergence cadence, the standard-domain guard, and that every launch's argument types
    are exactly the signatures (a) compiles.
(c) ``gpu`` marker, real device: reference/tslearn agreement, length 8192, the float32
    accuracy guard at n = m = 1024, Sinkhorn at 2048^2 and batched, CuPy/torch inputs.
"""

import warnings

import numpy as np
import pytest

import backends
from refimpl._cases.softdtw import pad_nan as _pad_nan_inplace

pytest.importorskip("numba")
from backends.numba_cuda import _kernels as K  # noqa: E402
from refimpl import ot as rot  # noqa: E402
from refimpl import softdtw as sd  # noqa: E402

from numba_sim import assert_launches_conform, GPU_REASON, ON_GPU, nb, rng_for, sim_only  # noqa: E402,F401
from numba_sim import to_dev as _d  # noqa: E402
from numba_sim import to_host as _h  # noqa: E402
import ptx_background  # noqa: E402


def pad_nan(A, lengths, axis):
    """A copy of ``A`` with NaN beyond ``lengths[b]`` along ``axis`` (the registry's padding)."""
    return _pad_nan_inplace(A.copy(), lengths, axis)


# --------------------------------------------------------------------------- (a) PTX for cc 9.0

@pytest.fixture(scope="module")
def ptx_results():
    return ptx_background.results()


# --------------------------------------------------------------------------- (b) simulator


@sim_only
@pytest.mark.parametrize("path", ["shared", "global"])
def test_sim_soft_dtw_strides_band_padding(nb, monkeypatch, path):
    monkeypatch.setattr(K, "SDTW_BLOCK", 4)
    if path == "global":
        monkeypatch.setattr(K, "SHARED_BYTES", 0)
    assert K.threads(11, K.SDTW_BLOCK) == 4  # diagonals of up to 10 cells: each thread strides
    rng = rng_for(1)
    lx, ly = np.array([11, 9, 4]), np.array([10, 10, 9])
    C = pad_nan(pad_nan(rng.random((3, 11, 10)), lx, 1), ly, 2)
    for bw in (None, 0, 2):
        for g in (0.1, 1.0):
            v0, E0 = sd.soft_dtw_grad(C, g, len_x=lx, len_y=ly, bandwidth=bw)
            v, E = nb.soft_dtw_grad(_d(nb, C), g, len_x=_d(nb, lx), len_y=_d(nb, ly), bandwidth=bw)
            np.testing.assert_allclose(_h(nb, v), v0, rtol=1e-12)
            np.testing.assert_allclose(_h(nb, E), E0, rtol=0, atol=1e-12)
    v, E = nb.soft_dtw_grad(_d(nb, C, "float32"), 0.1, len_x=_d(nb, lx), len_y=_d(nb, ly),
                            bandwidth=2)
    v0, E0 = sd.soft_dtw_grad(C.astype(np.float32).astype(np.float64), 0.1, len_x=lx, len_y=ly,
                              bandwidth=2)
    assert v.dtype == np.float32 and E.dtype == np.float32
    np.testing.assert_allclose(_h(nb, v), v0, rtol=1e-5)
    np.testing.assert_allclose(_h(nb, E), E0, atol=1e-5)


@sim_only
def test_sim_soft_dtw_2d_band_unequal_lengths(nb, monkeypatch):
    monkeypatch.setattr(K, "SDTW_BLOCK", 4)
    C = rng_for(2).random((9, 4))
    for bw in (0, 1):  # the widened band keeps the end cell reachable although |n - m| > bw
        v0, E0 = sd.soft_dtw_grad(C, 0.2, bandwidth=bw)
        v, E = nb.soft_dtw_grad(_d(nb, C), 0.2, bandwidth=bw)
        value = _h(nb, v)
        assert np.shape(value) == () and np.isfinite(value)
        np.testing.assert_allclose(value, v0, rtol=1e-12)
        np.testing.assert_allclose(_h(nb, E), E0, atol=1e-12)


@sim_only
def test_sim_inf_and_nan_costs(nb):
    rng = rng_for(3)
    C = rng.random((4, 5))
    C[1, :] = np.inf  # every path crosses row 1: no finite path
    v, E = nb.soft_dtw_grad(_d(nb, C), 0.5)
    assert _h(nb, v) == np.inf and np.all(_h(nb, E) == 0.0)
    C = rng.random((4, 5))
    C[1, 1] = C[2, 3] = np.inf
    v0, E0 = sd.soft_dtw_grad(C, 0.5)
    v, E = nb.soft_dtw_grad(_d(nb, C), 0.5)
    np.testing.assert_allclose(_h(nb, v), v0, rtol=1e-12)
    np.testing.assert_allclose(_h(nb, E), E0, atol=1e-12)
    assert _h(nb, E)[1, 1] == 0.0
    C = rng.random((4, 5))
    C[2, 2] = np.nan  # NaN inside the valid block propagates, like the reference
    v0, E0 = sd.soft_dtw_grad(C, 0.5)
    v, E = nb.soft_dtw_grad(_d(nb, C), 0.5)
    assert np.isnan(_h(nb, v)) and np.isnan(v0)
    np.testing.assert_array_equal(np.isnan(_h(nb, E)), np.isnan(E0))


@sim_only
@pytest.mark.parametrize("kind", ["sqeuclidean", "cosine"])
def test_sim_divergence_ragged_nan_padding_zero_lengths(nb, monkeypatch, kind):
    monkeypatch.setattr(K, "SDTW_BLOCK", 4)
    rng = rng_for(4)
    lx, ly = np.array([0, 6, 3, 5]), np.array([4, 0, 7, 6])
    X = pad_nan(rng.normal(size=(4, 6, 2)), lx, 1)
    Y = pad_nan(rng.normal(size=(4, 7, 2)), ly, 1)
    P = pad_nan(pad_nan(0.1 * rng.random((4, 6, 7)), lx, 1), ly, 2)
    v0, dX0, dY0 = sd.soft_dtw_divergence_grad(X, Y, 0.3, kind=kind, len_x=lx, len_y=ly,
                                               penalty=P, bandwidth=1)
    v, dX, dY = nb.soft_dtw_divergence_grad(_d(nb, X), _d(nb, Y), 0.3, kind=kind,
                                            len_x=_d(nb, lx), len_y=_d(nb, ly),
                                            penalty=_d(nb, P), bandwidth=1)
    v, dX, dY = _h(nb, v), _h(nb, dX), _h(nb, dY)
    assert np.all(np.isfinite(v)) and np.all(np.isfinite(dX)) and np.all(np.isfinite(dY))
    np.testing.assert_allclose(v, v0, rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(dX, dX0, atol=1e-11)
    np.testing.assert_allclose(dY, dY0, atol=1e-11)
    assert v[0] == 0.0 and v[1] == 0.0  # zero-length pairs: value 0, zero gradients
    assert not dX[:2].any() and not dY[:2].any()
    assert not dX[2, 3:].any() and not dY[3, 6:].any()  # padded rows
    v1 = nb.soft_dtw_divergence(_d(nb, X), _d(nb, Y), 0.3, kind=kind, len_x=_d(nb, lx),
                                len_y=_d(nb, ly), penalty=_d(nb, P), bandwidth=1)
    np.testing.assert_array_equal(_h(nb, v1), v)
    with pytest.raises(TypeError, match="len_x is a numpy.ndarray"):  # host lengths: refused
        nb.soft_dtw_divergence(_d(nb, X), _d(nb, Y), 0.3, kind=kind, len_x=lx, len_y=ly)


@sim_only
@pytest.mark.parametrize("kind", ["sqeuclidean", "cosine"])
def test_sim_divergence_of_identical_sequences_is_exactly_zero(nb, kind):
    X = rng_for(5).normal(size=(2, 6, 3))
    v = nb.soft_dtw_divergence(_d(nb, X), _d(nb, X), 0.1, kind=kind)
    assert np.all(_h(nb, v) == 0.0)


@sim_only
@pytest.mark.parametrize("split", [None, 2])
def test_sim_sinkhorn_row_splits_cadence_and_batch_dims(nb, monkeypatch, split):
    monkeypatch.setattr(K, "OT_COL_SPLIT", split)
    rng = rng_for(6)
    C = rng.random((2, 1, 5, 4))  # two batch dims, viewed as one batch of 2 without a copy
    a = rng.random(5) + 0.2
    a /= a.sum()
    for solve, ref in ((nb.sinkhorn_log, rot.sinkhorn_log), (nb.sinkhorn, rot.sinkhorn)):
        r0 = ref(a, None, C, 0.5, max_iter=200, tol=1e-5, check_every=3)
        assert 3 < r0.n_iter < 200
        r = solve(_d(nb, a), None, _d(nb, C), 0.5, max_iter=200, tol=1e-5, check_every=3)
        assert (r.n_iter, r.converged, r.status) == (r0.n_iter, r0.converged, r0.status)
        assert isinstance(r.n_iter, int) and np.shape(_h(nb, r.err)) == ()
        np.testing.assert_allclose(_h(nb, r.err), r0.err, rtol=1e-6)
        for got, want in ((r.plan, r0.plan), (r.f, r0.f), (r.g, r0.g)):
            assert np.shape(_h(nb, got)) == np.shape(want)
            np.testing.assert_allclose(_h(nb, got), want, atol=1e-12)


def _late_numerical_error_cost():
    """A cost on which POT's guard fires after a few successful standard-domain updates."""
    rng = np.random.default_rng(5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for _ in range(5000):
            C = rng.random((4, 5)) * 50
            C[:, 0] += rng.uniform(680, 740)
            r0 = rot.sinkhorn(None, None, C, 1.0, max_iter=50, tol=1e-12, check_every=4)
            if r0.status == "numerical_error" and r0.n_iter >= 2:
                return C
    raise AssertionError("no test cost found")


@sim_only
@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # simulated b / 0
@pytest.mark.parametrize("tol,check_every", [(1e-12, 4), (0.0, 4), (1e-12, 1)])
def test_sim_sinkhorn_guard_returns_the_previous_iterate(nb, tol, check_every):
    C = _late_numerical_error_cost()
    with pytest.warns(RuntimeWarning, match="numerical error"):
        r0 = rot.sinkhorn(None, None, C, 1.0, max_iter=50, tol=tol, check_every=check_every)
    with pytest.warns(RuntimeWarning, match="numerical error"):
        r = nb.sinkhorn(None, None, _d(nb, C), 1.0, max_iter=50, tol=tol, check_every=check_every)
    assert (r.status, r.n_iter, r.converged) == ("numerical_error", r0.n_iter, False)
    for got, want in ((r.plan, r0.plan), (r.f, r0.f), (r.g, r0.g), (r.err, r0.err)):
        got = _h(nb, got)
        assert np.all(np.isfinite(got))
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)


@sim_only
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_sim_every_launch_matches_a_compiled_signature(nb, monkeypatch, dtype):

    monkeypatch.setattr(K, "RECORD", [])
    monkeypatch.setattr(K, "OT_COL_SPLIT", 2)
    rng = rng_for(7)
    d = lambda a: _d(nb, a, dtype)  # noqa: E731
    C = rng.random((2, 4, 3))
    lx, ly = np.array([4, 2]), np.array([3, 2])
    X, Y = rng.normal(size=(2, 4, 2)), rng.normal(size=(2, 3, 2))
    nb.soft_dtw_grad(d(C[0]), 0.5)
    nb.soft_dtw(d(C), 0.5, len_x=d(lx), len_y=d(ly), bandwidth=1)
    nb.sdtw_cost(d(X[0]), d(Y[0]), kind="cosine")
    nb.sdtw_cost_vjp(d(X), d(Y), d(C), kind="cosine")
    nb.sdtw_cost_vjp(d(X), d(Y), d(C))
    for kind in ("sqeuclidean", "cosine"):
        nb.soft_dtw_divergence_grad(d(X), d(Y), 0.5, kind=kind, len_x=d(lx), len_y=d(ly),
                                    penalty=d(C))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        w = rng.random(4) + 0.5
        w /= w.sum()
        nb.sinkhorn_log(d(w), None, d(C), 0.5, max_iter=1, tol=1e-3, check_every=1,
                        init=(d(rng.normal(size=4)), d(np.zeros(3))))
        nb.sinkhorn(None, None, d(C), 0.5, max_iter=1, tol=0.0,
                    init=(d(rng.normal(size=4)), d(rng.normal(size=3))))
        nb.sinkhorn_cost(None, None, d(C), 0.5, kind="linear", method="standard", max_iter=1)
        nb.sinkhorn_cost(None, None, d(C), 0.5, max_iter=1)
        nb.sinkhorn_cost_grad(None, None, d(C), 0.5, max_iter=1)
        Cxx, Cyy = rng.random((2, 4, 4)), rng.random((2, 3, 3))
        nb.sinkhorn_divergence(None, None, d(C), d(Cxx), d(Cyy), 0.5, variant="linear", max_iter=1)
    nb.pairwise_cost(d(X), d(Y), kind="half_sqeuclidean")
    assert K.RECORD, "nothing was launched"
    assert_launches_conform(K.RECORD)
    # the preference family's pref_* kernels, the cross-tokenizer family's ct_* kernels,
    # the Inf-SSM family's iss_* kernels and the causal-discovery cd_* kernels have their own
    # launch checks in tests/test_backend_numba_preference.py,
    # tests/test_backend_numba_cross_tokenizer.py, tests/test_backend_numba_inf_ssm.py and
    # tests/test_backend_numba_causal_discrete.py; the safety_ensembles se_* kernels in
    # tests/test_backend_numba_safety_ensembles.py; the bf16_* casts in tests/test_bf16.py
    listed = {name for name in K._SIGNATURES
              if not name.startswith(("pref_", "ct_", "iss_", "cd_", "se_", "rv_", "gnn_",
                                      "crpl_", "bf16_"))}
    assert {name for name, _, _ in K.RECORD} == listed, "a listed kernel never ran"


@sim_only
def test_sim_refuses_host_and_foreign_arrays(nb):
    C = np.ones((3, 3))
    with pytest.raises(TypeError, match="C is a numpy.ndarray; the numba_cuda backend"):
        nb.soft_dtw(C, 1.0)
    with pytest.raises(TypeError, match="Y is a numpy.ndarray"):
        nb.soft_dtw_divergence(_d(nb, C), C, 1.0)
    with pytest.raises(TypeError, match="C must have dtype float32 or float64"):
        nb.soft_dtw(nb.asarray(np.ones((3, 3), np.float16)), 1.0)
    with pytest.raises(ValueError, match="gamma"):
        nb.soft_dtw(_d(nb, C), 0.0)
    with pytest.raises(ValueError, match="C contains NaN"):
        nb.sinkhorn_log(None, None, _d(nb, np.full((2, 2), np.nan)), 0.1)
    with pytest.raises(TypeError, match="init"):
        nb.sinkhorn_log(None, None, _d(nb, C), 0.1,
                        init=(_d(nb, np.zeros(3), "float32"), _d(nb, np.zeros(3), "float32")))
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match="C is a torch.Tensor"):
        nb.soft_dtw(torch.ones(3, 3, dtype=torch.float64), 1.0)


@sim_only
def test_sim_peak_memory_counts_the_workspace(nb):
    C = _d(nb, rng_for(8).random((2, 6, 7)))
    nb.reset_peak_memory()
    v, E = nb.soft_dtw_grad(C, 0.3)
    # at least E plus Rt (2 * 6 * 7 words) and the offsets (2 * 12 float64)
    assert nb.peak_memory() >= E.nbytes + 2 * 6 * 7 * 8 + 2 * 12 * 8
    assert "simulator" in nb.describe().lower()


@sim_only
def test_sim_emd_is_a_host_solve_returning_device_arrays(nb):
    rng = rng_for(9)
    a, b, C = rng.random(5) + 0.3, rng.random(6) + 0.3, rng.random((5, 6))
    a, b = a / a.sum(), b / b.sum()
    res0 = rot.emd(a, b, C)
    res = nb.emd(_d(nb, a), _d(nb, b), _d(nb, C))
    assert all(nb.is_native(x) for x in res) and np.shape(_h(nb, res.cost)) == ()
    for got, want in zip(res, res0):
        np.testing.assert_allclose(_h(nb, got), want, atol=1e-12)


# --------------------------------------------------------------------------- (c) real GPU


def np_soft_dtw_grad(C, gamma):
    """Float64 NumPy Soft-DTW vectorised over anti-diagonals (value, E): an oracle fast enough
    for n = m = 8192 (the reference's per-cell Python loop is not)."""
    n, m = C.shape
    R = np.full((n + 2, m + 2), np.inf)
    R[0, 0] = 0.0
    for p in range(2, n + m + 1):
        i = np.arange(max(1, p - m), min(n, p - 1) + 1)
        j = p - i
        prev = np.stack([R[i - 1, j - 1], R[i - 1, j], R[i, j - 1]])
        r = prev.min(0)
        R[i, j] = C[i - 1, j - 1] + r - gamma * np.log(np.exp(-(prev - r) / gamma).sum(0))
    E = np.zeros((n + 2, m + 2))
    E[n, m] = 1.0
    for p in range(n + m - 1, 1, -1):
        i = np.arange(max(1, p - m), min(n, p - 1) + 1)
        j = p - i
        e = np.zeros(len(i))
        for di, dj, k in ((1, 0, 1), (0, 1, 2), (1, 1, 0)):  # successor, its predecessor slot
            si, sj = i + di, j + dj
            ok = (si <= n) & (sj <= m)
            si, sj = si[ok], sj[ok]
            prev = np.stack([R[si - 1, sj - 1], R[si - 1, sj], R[si, sj - 1]])
            w = np.exp(-(prev - prev.min(0)) / gamma)
            e[ok] += w[k] / w.sum(0) * E[si, sj]
        E[i, j] = e
    return R[n, m], E[1:n + 1, 1:m + 1]


def test_numpy_oracle_matches_the_reference():
    rng = rng_for(10)
    for shape, g in (((7, 9), 0.1), ((12, 5), 1.0), ((1, 4), 0.3), ((20, 20), 0.01)):
        C = rng.random(shape)
        v, E = np_soft_dtw_grad(C, g)
        v0, E0 = sd.soft_dtw_grad(C, g)
        assert v == pytest.approx(float(v0), rel=1e-13)
        np.testing.assert_allclose(E, E0, atol=1e-13)


@pytest.fixture(scope="module")
def gpu_nb():
    if not ON_GPU:
        pytest.skip(GPU_REASON)
    return backends.get("numba_cuda")


def _sq_cost(x, y):
    return ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)


@pytest.mark.gpu
@pytest.mark.skipif(not ON_GPU, reason=GPU_REASON)
def test_gpu_reference_and_tslearn_agreement(gpu_nb):
    tm = pytest.importorskip("tslearn.metrics")
    bk = gpu_nb
    rng = rng_for(11)
    B, N, M, d = 4, 40, 33, 3
    lx, ly = np.array([40, 17, 33, 25]), np.array([33, 30, 9, 21])
    X = pad_nan(rng.normal(size=(B, N, d)), lx, 1)
    Y = pad_nan(rng.normal(size=(B, M, d)), ly, 1)
    C = np.stack([_sq_cost(X[b], Y[b]) for b in range(B)])  # NaN beyond the lengths
    for g in (0.1, 1.0):
        v, E = bk.soft_dtw_grad(bk.asarray(C), g, len_x=bk.asarray(lx), len_y=bk.asarray(ly))
        v0, E0 = sd.soft_dtw_grad(C, g, len_x=lx, len_y=ly)
        np.testing.assert_allclose(_h(bk, v), v0, rtol=1e-10)
        np.testing.assert_allclose(_h(bk, E), E0, atol=1e-10)
        div = _h(bk, bk.soft_dtw_divergence(bk.asarray(X), bk.asarray(Y), g, len_x=lx, len_y=ly))
        for b in range(B):
            x, y = X[b, :lx[b]], Y[b, :ly[b]]
            A, val = tm.soft_dtw_alignment(x, y, gamma=g)  # (alignment, value)
            assert _h(bk, v)[b] == pytest.approx(val, rel=1e-8)
            np.testing.assert_allclose(_h(bk, E)[b, :lx[b], :ly[b]], A, atol=1e-8)
            norm = tm.cdist_soft_dtw_normalized([x], [y], gamma=g)[0, 0]
            assert div[b] == pytest.approx(norm, rel=1e-8, abs=1e-8)


@pytest.mark.gpu
@pytest.mark.skipif(not ON_GPU, reason=GPU_REASON)
def test_gpu_length_8192_has_no_cap(gpu_nb):
    bk = gpu_nb
    n = 8192
    rng = rng_for(12)
    C = 0.1 * rng.random((n, n))
    g = 0.1
    v0, E0 = np_soft_dtw_grad(C, g)
    # float32: E error grows with the number of diagonals (16383 here); the 1e-4 guard of
    # softdtw.md is for n = m = 1024 (next test), 1e-3 is its length-scaled counterpart
    for dtype, vtol, etol in (("float64", 1e-10, 1e-9), ("float32", 1e-6, 1e-3)):
        v, E = bk.soft_dtw_grad(bk.asarray(C.astype(dtype)[None]), g)
        v, E = _h(bk, v)[0], _h(bk, E)[0]
        assert v == pytest.approx(v0, rel=vtol), dtype
        err = np.abs(E - E0).max()
        assert err <= etol, f"{dtype}: max |E - E_oracle| = {err:.3e}"
        assert E[0, 0] == pytest.approx(1.0, abs=etol) and E[-1, -1] == pytest.approx(1.0, abs=etol)


@pytest.mark.gpu
@pytest.mark.skipif(not ON_GPU, reason=GPU_REASON)
@pytest.mark.parametrize("gamma", [0.1, 0.01])
def test_gpu_float32_accuracy_guard_1024(gpu_nb, gamma):
    """softdtw.md sec. 12 item 9: squared-Euclidean costs of 8-d Gaussian data / 8, n = m = 1024:
    ``max |E32 - E64| <= 1e-4`` and value rtol <= 1e-6; E64 checked against the oracle."""
    bk = gpu_nb
    rng = rng_for(13)
    x, y = rng.normal(size=(1024, 8)), rng.normal(size=(1024, 8))
    C = _sq_cost(x, y) / 8.0
    v64, E64 = bk.soft_dtw_grad(bk.asarray(C), gamma)
    v32, E32 = bk.soft_dtw_grad(bk.asarray(C.astype(np.float32)), gamma)
    v64, E64, v32, E32 = (_h(bk, t) for t in (v64, E64, v32, E32))
    vo, Eo = np_soft_dtw_grad(C, gamma)
    assert float(v64) == pytest.approx(vo, rel=1e-11)
    assert np.abs(E64 - Eo).max() <= 1e-9
    err = np.abs(E32 - E64).max()
    assert err <= 1e-4, f"max |E32 - E64| = {err:.3e}"
    assert float(v32) == pytest.approx(float(v64), rel=1e-6)


@pytest.mark.gpu
@pytest.mark.skipif(not ON_GPU, reason=GPU_REASON)
def test_gpu_global_scratch_path_is_bitwise_the_shared_path(gpu_nb, monkeypatch):
    bk = gpu_nb
    C = bk.asarray(rng_for(14).random((6, 300, 257)).astype(np.float32))
    v1, E1 = (_h(bk, t) for t in bk.soft_dtw_grad(C, 0.1, bandwidth=40))
    monkeypatch.setattr(K, "SHARED_BYTES", 0)
    v2, E2 = (_h(bk, t) for t in bk.soft_dtw_grad(C, 0.1, bandwidth=40))
    np.testing.assert_array_equal(v1, v2)
    np.testing.assert_array_equal(E1, E2)


@pytest.mark.gpu
@pytest.mark.skipif(not ON_GPU, reason=GPU_REASON)
@pytest.mark.parametrize("kind", ["sqeuclidean", "cosine"])
def test_gpu_batched_divergence_equals_per_pair_calls(gpu_nb, kind):
    """Jobs of different lengths (reordered largest-first) in one launch give the per-pair
    results."""
    bk = gpu_nb
    rng = rng_for(15)
    B, N, M, d = 12, 300, 280, 16
    lx, ly = rng.integers(0, N + 1, B), rng.integers(16, M + 1, B)
    lx[0] = 0
    X = pad_nan(rng.normal(size=(B, N, d)) / 4, lx, 1)
    Y = pad_nan(rng.normal(size=(B, M, d)) / 4, ly, 1)
    P = pad_nan(pad_nan(0.1 * rng.random((B, N, M)), lx, 1), ly, 2)
    v, dX, dY = (_h(bk, t) for t in bk.soft_dtw_divergence_grad(
        bk.asarray(X), bk.asarray(Y), 0.1, kind=kind, len_x=lx, len_y=ly, penalty=bk.asarray(P),
        bandwidth=50))
    for b in range(B):
        if lx[b] == 0:
            assert v[b] == 0.0 and not dX[b].any() and not dY[b].any()
            continue
        x, y, p = X[b, :lx[b]], Y[b, :ly[b]], P[b, :lx[b], :ly[b]]
        vb, dxb, dyb = (_h(bk, t) for t in bk.soft_dtw_divergence_grad(
            bk.asarray(x), bk.asarray(y), 0.1, kind=kind, penalty=bk.asarray(p), bandwidth=50))
        assert v[b] == pytest.approx(float(vb), rel=1e-12, abs=1e-12)
        np.testing.assert_allclose(dX[b, :lx[b]], dxb, atol=1e-11)
        np.testing.assert_allclose(dY[b, :ly[b]], dyb, atol=1e-11)
        assert not dX[b, lx[b]:].any() and not dY[b, ly[b]:].any()


def _cloud_cost(rng, batch, n, m):
    x = rng.normal(size=batch + (n, 2))
    y = rng.normal(loc=0.5, size=batch + (m, 2))
    C = (x * x).sum(-1)[..., :, None] + (y * y).sum(-1)[..., None, :]
    C = np.maximum(C - 2 * x @ np.swapaxes(y, -1, -2), 0.0)
    return C / C.max(axis=(-2, -1), keepdims=True)


@pytest.mark.gpu
@pytest.mark.skipif(not ON_GPU, reason=GPU_REASON)
@pytest.mark.parametrize("batch,n,m", [((), 2048, 2048), ((64,), 512, 512), ((), 3000, 37)])
def test_gpu_sinkhorn_log_vs_reference(gpu_nb, batch, n, m):
    bk = gpu_nb
    rng = rng_for(16)
    C = _cloud_cost(rng, batch, n, m)
    a = rng.random(batch + (n,)) + 0.2
    a /= a.sum(-1, keepdims=True)
    eps = 0.05
    r0 = rot.sinkhorn_log(a, None, C, eps, max_iter=50, tol=0.0)
    for dtype, tol_p, tol_f in (("float64", 1e-9, 1e-9), ("float32", 2e-3, 2e-3)):
        r = bk.sinkhorn_log(bk.asarray(a.astype(dtype)), None, bk.asarray(C.astype(dtype)), eps,
                            max_iter=50, tol=0.0)
        assert r.n_iter == 50 and r.status == "max_iter"
        np.testing.assert_allclose(_h(bk, r.plan) * n * m, r0.plan * n * m, rtol=tol_p, atol=tol_p)
        np.testing.assert_allclose(_h(bk, r.f) / eps, r0.f / eps, atol=tol_f)
        np.testing.assert_allclose(_h(bk, r.g) / eps, r0.g / eps, atol=tol_f)
    # convergence mode: one small read per check, converged iterate within tol
    r = bk.sinkhorn_log(bk.asarray(a), None, bk.asarray(C), eps, max_iter=5000, tol=1e-8)
    assert r.converged and r.status == "converged" and float(_h(bk, r.err)) < 1e-8
    assert (r.n_iter - 1) % 10 == 0


@pytest.mark.gpu
@pytest.mark.skipif(not ON_GPU, reason=GPU_REASON)
def test_gpu_cupy_and_torch_inputs_come_back_as_their_kind(gpu_nb):
    bk = gpu_nb
    C = rng_for(17).random((3, 20, 30))
    v_ref, E_ref = (_h(bk, t) for t in bk.soft_dtw_grad(bk.asarray(C), 0.2))
    ran = False
    try:
        import cupy
    except ImportError:
        cupy = None
    if cupy is not None and cupy.is_available():
        v, E = bk.soft_dtw_grad(cupy.asarray(C), 0.2)
        assert isinstance(v, cupy.ndarray) and isinstance(E, cupy.ndarray)
        np.testing.assert_array_equal(cupy.asnumpy(E), E_ref)
        np.testing.assert_array_equal(cupy.asnumpy(v), v_ref)
        ran = True
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None and torch.cuda.is_available():
        Ct = torch.as_tensor(C, device="cuda")
        v, E = bk.soft_dtw_grad(Ct.transpose(1, 2).contiguous().transpose(1, 2), 0.2)  # strided
        assert isinstance(E, torch.Tensor) and E.is_cuda
        np.testing.assert_array_equal(E.cpu().numpy(), E_ref)
        np.testing.assert_array_equal(v.cpu().numpy(), v_ref)
        ran = True
    if not ran:
        pytest.skip("neither CuPy nor torch with CUDA is installed")


# --------------------------------------------------------------------------- (a) PTX results
# (at the end of the module: the background compile overlaps the simulator tests above)

KERNEL_IDS = [f"{name}[{dtype}]" for dtype in K.DTYPES for name in K._SIGNATURES]


def test_kernel_listing_covers_every_kernel_and_dtype():
    listed = [name for name, _, _ in K.specs()]
    assert listed == KERNEL_IDS
    for name, fn, sigs in K.specs():
        base, dtype = name.rstrip("]").split("[")
        assert callable(fn) and sigs == (K.signature(base, dtype),)
        assert sigs[0].startswith("void(") and "{" not in sigs[0]
        # the dtype is substituted wherever the template has a float placeholder (the integer
        # kernels of the causal family, e.g. key packing, have none)
        assert dtype in sigs[0] or "{T}" not in K._SIGNATURES[base]


@pytest.mark.parametrize("kernel", KERNEL_IDS)
def test_kernel_compiles_to_ptx_for_sm90(ptx_results, kernel):
    res = ptx_results[kernel]
    assert res["ok"], f"{kernel} {res['signatures']} does not compile:\n{res['error']}"


@pytest.mark.parametrize("kernel", [k for k in KERNEL_IDS if k.endswith("[float32]")])
def test_float32_kernels_do_no_float64_arithmetic(ptx_results, kernel):
    res = ptx_results[kernel]
    if not res["ok"]:
        pytest.fail(f"{kernel} does not compile")
    base = kernel.split("[")[0]
    if base in K.FP64_BY_DESIGN:
        # the float64 diagonal offsets: a handful of adds/subs per diagonal. An accidental
        # float64 exp or log (inlined libdevice, dozens of DFMAs each) would exceed this.
        assert res["f64_arith"] <= 30, f"{kernel}: {res['f64_arith']} float64 instructions"
    else:
        assert res["f64_arith"] == 0, (f"{kernel} has {res['f64_arith']} float64 arithmetic "
                                       f"instructions (a float literal promoted float32 math?)")


def test_simulator_shared_arrays_are_shared_by_all_threads_of_a_block():
    """numba-cuda's simulator allocates a static shared array with an unlocked check-then-insert;
    threads racing on the first call got private buffers (random wrong reductions under load).
    The backend serialises that allocation: every thread must get the same buffer."""
    import sys
    import threading

    pytest.importorskip("numba.cuda.simulator.kernelapi")
    from numba import float64 as nb_float64
    from numba.cuda.simulator import kernelapi

    from backends.numba_cuda import _kernels as K

    K._serialise_simulator_shared_arrays()

    def trial():
        shared = kernelapi.FakeCUDAShared(0)
        start, got = threading.Barrier(32), []

        def thread():
            start.wait()
            got.append(shared.array(16, nb_float64))  # one source line, like a kernel's
            got.append(shared.array(8, nb_float64))   # a second line: a different array

        threads = [threading.Thread(target=thread) for _ in range(32)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        first = {id(a) for a in got if a.shape == (16,)}
        second = {id(a) for a in got if a.shape == (8,)}
        return len(first) == 1 and len(second) == 1 and first != second

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # unpatched, about 1 trial in 7 gave private buffers here
    try:
        assert all(trial() for _ in range(20))
    finally:
        sys.setswitchinterval(old)
