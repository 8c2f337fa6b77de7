"""Reference Soft-DTW tests (softdtw.md sec. 12): closed forms, path enumeration, bounds,
invariants, finite differences and peer libraries."""

import math

import numpy as np
import pytest

from finite_diff import fd_grad
from refimpl import softdtw as sd

RNG = np.random.default_rng(20261122)


def softmin(values, g):
    values = np.asarray(values, dtype=float)
    return -g * np.log(np.exp(-values / g).sum())


def points(n, d=3, rng=RNG):
    return rng.normal(size=(n, d))


# --------------------------------------------------------------------------- closed forms


@pytest.mark.parametrize("shape", [(1, 5), (6, 1), (1, 1)])
def test_single_row_or_column_is_the_sum(shape):
    C = RNG.random(shape)
    v, E = sd.soft_dtw_grad(C, 0.7)
    assert v == pytest.approx(C.sum(), rel=1e-14)
    np.testing.assert_allclose(E, np.ones(shape), atol=1e-15)


def test_two_by_two_closed_form():
    C = RNG.random((2, 2))
    g = 0.3
    v, E = sd.soft_dtw_grad(C, g)
    assert v == pytest.approx(C[0, 0] + C[1, 1] + softmin([0.0, C[0, 1], C[1, 0]], g), rel=1e-14)
    z = 1 + np.exp(-C[0, 1] / g) + np.exp(-C[1, 0] / g)
    np.testing.assert_allclose(E, [[1, np.exp(-C[0, 1] / g) / z], [np.exp(-C[1, 0] / g) / z, 1]],
                               atol=1e-14)


def test_zero_band_on_square_is_the_trace():
    C = RNG.random((7, 7))
    v, E = sd.soft_dtw_grad(C, 0.05, bandwidth=0)
    assert v == pytest.approx(np.trace(C), rel=1e-14)
    np.testing.assert_array_equal(E, np.eye(7))


def test_delannoy_counts_paths():
    for n, m in [(3, 4), (1, 1), (4, 4), (2, 6)]:
        assert len(list(sd._paths(n, m, None))) == round(math.exp(sd.log_delannoy(n - 1, m - 1)))
    assert round(math.exp(sd.log_delannoy(2, 3))) == 25


# --------------------------------------------------------------------------- path enumeration


@pytest.mark.parametrize("n", [1, 2, 3, 4])
@pytest.mark.parametrize("m", [1, 2, 3, 4])
@pytest.mark.parametrize("bandwidth", [None, 0, 1])
def test_recursion_equals_path_enumeration(n, m, bandwidth):
    C = RNG.random((n, m)) * 3
    v, E = sd.soft_dtw_grad(C, 0.4, bandwidth=bandwidth)
    vb, Eb = sd.soft_dtw_bruteforce(C, 0.4, bandwidth=bandwidth)
    assert abs(v - vb) <= 1e-12
    np.testing.assert_allclose(E, Eb, atol=1e-12)


def test_paper_abc_backward_agrees_with_normalised_weights():
    """The paper's E recursion with a = exp((R[i+1,j] - R[i,j] - C[i+1,j]) / g) etc."""
    C = RNG.random((5, 7))
    g = 0.5
    R = np.array(sd._forward(C, g, None))
    n, m = C.shape
    Rp = np.full((n + 2, m + 2), -np.inf)
    Rp[1:n + 1, 1:m + 1] = R[1:, 1:]
    Rp[n + 1, m + 1] = R[n, m]
    Cp = np.zeros((n + 2, m + 2))
    Cp[1:n + 1, 1:m + 1] = C
    E = np.zeros((n + 2, m + 2))
    E[n + 1, m + 1] = 1.0
    for i in range(n, 0, -1):
        for j in range(m, 0, -1):
            a = np.exp((Rp[i + 1, j] - Rp[i, j] - Cp[i + 1, j]) / g)
            b = np.exp((Rp[i, j + 1] - Rp[i, j] - Cp[i, j + 1]) / g)
            c = np.exp((Rp[i + 1, j + 1] - Rp[i, j] - Cp[i + 1, j + 1]) / g)
            E[i, j] = a * E[i + 1, j] + b * E[i, j + 1] + c * E[i + 1, j + 1]
    np.testing.assert_allclose(sd.soft_dtw_grad(C, g)[1], E[1:n + 1, 1:m + 1], atol=1e-10)


# --------------------------------------------------------------------------- bounds and invariants


@pytest.mark.parametrize("g", [1.0, 0.1, 1e-2, 1e-3])
@pytest.mark.parametrize("bandwidth", [None, 2])
def test_gamma_to_zero_bound(g, bandwidth):
    for n, m in [(9, 9), (8, 13)]:
        C = RNG.random((n, m))
        hard = sd.dtw(C, bandwidth=bandwidth)
        soft = sd.soft_dtw(C, g, bandwidth=bandwidth)
        assert hard - g * sd.log_delannoy(n - 1, m - 1) - 1e-12 <= soft <= hard + 1e-12


def test_symmetry_scaling_and_monotonicity():
    C = RNG.random((6, 9))
    v, E = sd.soft_dtw_grad(C, 0.3)
    vt, Et = sd.soft_dtw_grad(C.T, 0.3)
    assert v == pytest.approx(vt, rel=1e-13)
    np.testing.assert_allclose(Et, E.T, atol=1e-13)
    assert sd.soft_dtw(C, 0.3) == pytest.approx(0.3 * sd.soft_dtw(C / 0.3, 1.0), rel=1e-13)
    gammas = [0.01, 0.1, 0.5, 1.0, 3.0]
    values = [float(sd.soft_dtw(C, g)) for g in gammas]
    assert all(a >= b for a, b in zip(values, values[1:]))
    bumped = C.copy()
    bumped[2, 3] += 0.5
    assert sd.soft_dtw(bumped, 0.3) >= v


def test_alignment_matrix_properties():
    for n, m in [(7, 7), (5, 11), (12, 4)]:
        E = sd.soft_dtw_grad(RNG.random((n, m)), 0.2)[1]
        assert E.min() >= 0 and E.max() <= 1 + 1e-12
        assert E[0, 0] == pytest.approx(1) and E[-1, -1] == pytest.approx(1)
        assert (E.sum(0) >= 1 - 1e-12).all() and (E.sum(1) >= 1 - 1e-12).all()
        assert max(n, m) - 1e-12 <= E.sum() <= n + m - 1 + 1e-12


def test_infinite_costs_forbid_cells_and_dead_ends_give_inf():
    C = RNG.random((4, 4))
    C[1, 1] = np.inf
    v, E = sd.soft_dtw_grad(C, 0.5)
    assert np.isfinite(v) and E[1, 1] == 0
    C[:, 2] = np.inf  # every path must cross column 2
    v, E = sd.soft_dtw_grad(C, 0.5)
    assert v == np.inf and not E.any()


def test_nan_inside_the_valid_block_propagates():
    C = RNG.random((4, 5))
    C[2, 2] = np.nan
    assert np.isnan(sd.soft_dtw(C, 0.5))


def test_small_gamma_float64_is_stable():
    C = RNG.random((30, 30)) * 10
    v, E = sd.soft_dtw_grad(C, 1e-4)
    assert np.isfinite(v) and np.isfinite(E).all()
    assert abs(v - sd.dtw(C)) <= 1e-4 * sd.log_delannoy(29, 29) + 1e-12


# --------------------------------------------------------------------------- finite differences


def test_value_gradient_by_finite_differences_batched_ragged_banded():
    C = RNG.random((2, 6, 5))
    kw = dict(len_x=np.array([6, 4]), len_y=np.array([5, 3]), bandwidth=1)
    E = sd.soft_dtw_grad(C, 0.3, **kw)[1]
    fd = fd_grad(lambda c: sd.soft_dtw(c, 0.3, **kw).sum(), C)
    np.testing.assert_allclose(E, fd, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("kind", ["sqeuclidean", "cosine"])
@pytest.mark.parametrize("extras", [{}, {"bandwidth": 1}, {"penalty": True}])
def test_divergence_gradient_by_finite_differences(kind, extras):
    B, N, M, d = 2, 5, 4, 3
    X, Y = RNG.normal(size=(B, N, d)), RNG.normal(size=(B, M, d))
    kw = dict(kind=kind, len_x=np.array([5, 3]), len_y=np.array([4, 2]),
              bandwidth=extras.get("bandwidth"))
    if extras.get("penalty"):
        kw["penalty"] = RNG.random((B, N, M))
    v, dX, dY = sd.soft_dtw_divergence_grad(X, Y, 0.5, **kw)
    np.testing.assert_allclose(v, sd.soft_dtw_divergence(X, Y, 0.5, **kw), rtol=1e-14)
    fX = fd_grad(lambda x: sd.soft_dtw_divergence(x, Y, 0.5, **kw).sum(), X)
    fY = fd_grad(lambda y: sd.soft_dtw_divergence(X, y, 0.5, **kw).sum(), Y)
    np.testing.assert_allclose(dX, fX, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(dY, fY, rtol=1e-6, atol=1e-8)
    assert not dX[1, 3:].any() and not dY[1, 2:].any()  # padded rows: zero gradient


@pytest.mark.parametrize("kind", ["sqeuclidean", "cosine"])
def test_cost_vjp_by_finite_differences(kind):
    X, Y = RNG.normal(size=(2, 4, 3)), RNG.normal(size=(2, 5, 3))
    G = RNG.random((2, 4, 5))
    dX, dY = sd.sdtw_cost_vjp(X, Y, G, kind=kind)
    np.testing.assert_allclose(dX, fd_grad(lambda x: (sd.sdtw_cost(x, Y, kind=kind) * G).sum(), X),
                               rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(dY, fd_grad(lambda y: (sd.sdtw_cost(X, y, kind=kind) * G).sum(), Y),
                               rtol=1e-6, atol=1e-8)


def test_cosine_cost_closed_form_and_self_cost():
    X = RNG.normal(size=(6, 4))
    C = sd.sdtw_cost(X, X, kind="cosine")
    norms = np.linalg.norm(X, axis=1)
    np.testing.assert_allclose(C, 1 - (X @ X.T) / np.outer(norms, norms), atol=1e-14)
    assert (C >= 0).all() and np.all(np.diag(C) <= 1e-15)  # 0 up to rounding of xh.xh
    Z = np.zeros((2, 4))  # zero vectors: cost 1 (floor on the norm), finite gradient
    assert np.allclose(sd.sdtw_cost(Z, X[:3], kind="cosine"), 1.0)
    assert np.isfinite(sd.sdtw_cost_vjp(Z, X[:3], np.ones((2, 3)), kind="cosine")[0]).all()


# --------------------------------------------------------------------------- divergence


@pytest.mark.parametrize("kind", ["sqeuclidean", "cosine"])
def test_divergence_properties(kind):
    for _ in range(200 if kind == "sqeuclidean" else 100):
        n, m = RNG.integers(1, 7, size=2)
        X, Y = points(n), points(m)
        g = float(RNG.choice([0.1, 1.0, 10.0]))
        D = sd.soft_dtw_divergence(X, Y, g, kind=kind)
        assert D >= -1e-12
        assert D == pytest.approx(sd.soft_dtw_divergence(Y, X, g, kind=kind), abs=1e-12)
    X, Y = points(6), points(8)
    assert abs(sd.soft_dtw_divergence(X, X, 0.5, kind=kind)) <= 1e-12
    P = RNG.random((6, 8))
    assert sd.soft_dtw_divergence(X, Y, 0.5, kind=kind, penalty=P) >= sd.soft_dtw_divergence(X, Y, 0.5, kind=kind)


def test_divergence_zero_length_pairs():
    X, Y = RNG.normal(size=(3, 4, 2)), RNG.normal(size=(3, 5, 2))
    v, dX, dY = sd.soft_dtw_divergence_grad(X, Y, 1.0, len_x=np.array([0, 4, 2]),
                                            len_y=np.array([5, 0, 3]))
    assert v[0] == 0 and v[1] == 0 and v[2] != 0
    assert not dX[:2].any() and not dY[:2].any()


def test_raw_soft_dtw_can_be_negative_divergence_cannot():
    X = points(10)
    assert sd.soft_dtw(sd.sdtw_cost(X, X), 10.0) < 0
    assert sd.soft_dtw_divergence(X, X, 10.0) == pytest.approx(0, abs=1e-12)


# --------------------------------------------------------------------------- batching


def test_batch_equals_per_pair_loop_and_nan_padding_does_not_leak():
    B, N, M = 3, 7, 6
    C = RNG.random((B, N, M))
    lx, ly = np.array([7, 3, 1]), np.array([2, 6, 4])
    for b in range(B):
        C[b, lx[b]:] = np.nan
        C[b, :, ly[b]:] = np.nan
    v, E = sd.soft_dtw_grad(C, 0.2, len_x=lx, len_y=ly, bandwidth=1)
    for b in range(B):
        vb, Eb = sd.soft_dtw_grad(C[b, :lx[b], :ly[b]], 0.2, bandwidth=1)
        assert v[b] == vb
        np.testing.assert_array_equal(E[b, :lx[b], :ly[b]], Eb)
        assert not E[b, lx[b]:].any() and not E[b, :, ly[b]:].any()


def test_divergence_batch_equals_per_pair_loop():
    X, Y = RNG.normal(size=(3, 6, 2)), RNG.normal(size=(3, 5, 2))
    lx, ly = np.array([6, 2, 4]), np.array([1, 5, 3])
    X[1, 2:] = np.nan
    Y[0, 1:] = np.nan
    v, dX, dY = sd.soft_dtw_divergence_grad(X, Y, 0.5, len_x=lx, len_y=ly, kind="cosine")
    for b in range(3):
        vb, dxb, dyb = sd.soft_dtw_divergence_grad(X[b, :lx[b]], Y[b, :ly[b]], 0.5, kind="cosine")
        assert v[b] == pytest.approx(vb, rel=1e-14)
        np.testing.assert_allclose(dX[b, :lx[b]], dxb, atol=1e-14)
        np.testing.assert_allclose(dY[b, :ly[b]], dyb, atol=1e-14)
    assert np.isfinite(dX).all() and np.isfinite(dY).all()


# --------------------------------------------------------------------------- peer libraries


def test_tslearn_soft_dtw_and_alignment():
    metrics = pytest.importorskip("tslearn.metrics", reason="tslearn is a test-only oracle")
    for n, m, g in [(12, 12, 1.0), (9, 15, 0.1), (20, 7, 0.01)]:
        x, y = points(n), points(m)
        C = sd.sdtw_cost(x, y)
        v, E = sd.soft_dtw_grad(C, g)
        assert abs(metrics.soft_dtw(x, y, gamma=g) - v) <= 1e-10 * max(1, abs(v))
        A, value = metrics.soft_dtw_alignment(x, y, gamma=g)  # returns (E, value)
        assert A.shape == (n, m) and np.ndim(value) == 0
        assert abs(value - v) <= 1e-10 * max(1, abs(v))
        np.testing.assert_allclose(E, A, atol=1e-10)


def test_tslearn_normalized_soft_dtw_is_the_divergence():
    metrics = pytest.importorskip("tslearn.metrics", reason="tslearn is a test-only oracle")
    X = RNG.normal(size=(4, 10, 2))
    D = metrics.cdist_soft_dtw_normalized(X, gamma=0.5)
    for i in range(4):
        for j in range(4):
            assert D[i, j] == pytest.approx(sd.soft_dtw_divergence(X[i], X[j], 0.5), abs=1e-9)


@pytest.mark.parametrize("n,m", [(10, 10), (8, 13), (13, 8)])
@pytest.mark.parametrize("r", [None, 0, 2])
def test_tslearn_band_and_hard_dtw(n, m, r):
    metrics = pytest.importorskip("tslearn.metrics", reason="tslearn is a test-only oracle")
    allowed = np.array([[sd.in_band(i, j, n, m, r) for j in range(m)] for i in range(n)])
    if r is not None:
        np.testing.assert_array_equal(metrics.sakoe_chiba_mask(n, m, radius=r) == True, allowed)  # noqa: E712
    x, y = points(n), points(m)
    kw = {} if r is None else dict(global_constraint="sakoe_chiba", sakoe_chiba_radius=r)
    assert sd.dtw(sd.sdtw_cost(x, y), bandwidth=r) == pytest.approx(metrics.dtw(x, y, **kw) ** 2, rel=1e-12)


def test_pysdtw_cpu_value_and_gradient():
    pysdtw = pytest.importorskip("pysdtw", reason="pysdtw is an optional test-only oracle")
    torch = pytest.importorskip("torch")
    x, y = RNG.normal(size=(2, 9, 3)), RNG.normal(size=(2, 9, 3))
    fun = pysdtw.SoftDTW(gamma=0.5, use_cuda=False)
    xt = torch.tensor(x, requires_grad=True)
    out = fun(xt, torch.tensor(y))
    out.sum().backward()
    C = sd.sdtw_cost(x, y)
    v, E = sd.soft_dtw_grad(C, 0.5)
    # pysdtw's CPU path computes in float32 internally whatever the input dtype: rtol 1e-5
    np.testing.assert_allclose(out.detach().numpy(), v, rtol=1e-5)
    np.testing.assert_allclose(xt.grad.numpy(), sd.sdtw_cost_vjp(x, y, E)[0], rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("call,needle", [
    (lambda: sd.soft_dtw(np.ones((3, 3)), 0.0), "gamma"),
    (lambda: sd.soft_dtw(np.ones((3, 3)), -1.0), "gamma"),
    (lambda: sd.soft_dtw(np.ones((3, 3)), float("nan")), "gamma"),
    (lambda: sd.soft_dtw(np.ones((3, 3)), "1"), "gamma"),
    (lambda: sd.soft_dtw(np.ones(3), 1.0), "C"),
    (lambda: sd.soft_dtw(np.ones((3, 3), dtype=np.int64), 1.0), "C"),
    (lambda: sd.soft_dtw(np.ones((2, 3, 3)), 1.0, len_x=np.array([4, 1])), "len_x"),
    (lambda: sd.soft_dtw(np.ones((2, 3, 3)), 1.0, len_y=np.array([0, 1])), "len_y"),
    (lambda: sd.soft_dtw(np.ones((2, 3, 3)), 1.0, len_x=np.array([1.0, 2.0])), "len_x"),
    (lambda: sd.soft_dtw(np.ones((2, 3, 3)), 1.0, len_x=np.array([1, 2, 3])), "len_x"),
    (lambda: sd.soft_dtw(np.ones((3, 3)), 1.0, len_x=np.array([3])), "len_x"),
    (lambda: sd.soft_dtw(np.ones((3, 3)), 1.0, bandwidth=-1), "bandwidth"),
    (lambda: sd.soft_dtw(np.ones((3, 3)), 1.0, bandwidth=1.5), "bandwidth"),
    (lambda: sd.sdtw_cost(np.ones((3, 2)), np.ones((3, 4))), "d"),
    (lambda: sd.sdtw_cost(np.ones((3, 2)), np.ones((2, 3, 2))), "dimensions"),
    (lambda: sd.sdtw_cost(np.ones((3, 2)), np.ones((3, 2)), kind="l1"), "kind"),
    (lambda: sd.sdtw_cost_vjp(np.ones((3, 2)), np.ones((4, 2)), np.ones((4, 3))), "G"),
    (lambda: sd.soft_dtw_divergence(np.ones((3, 2)), np.ones((4, 2)), 1.0, penalty=np.ones((4, 3))), "penalty"),
    (lambda: sd.soft_dtw_bruteforce(np.ones((7, 3)), 1.0), "C"),
])
def test_bad_input_is_refused_with_the_argument_named(call, needle):
    with pytest.raises((ValueError, TypeError), match=needle):
        call()


def test_integer_costs_and_other_backends_arrays_are_refused():
    with pytest.raises(TypeError, match="C must have dtype float32 or float64, got int16"):
        sd.soft_dtw(np.ones((3, 3), dtype=np.int16), 1.0)
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match="C is a torch.Tensor.*numpy reference"):
        sd.soft_dtw(torch.ones(3, 3, dtype=torch.float64), 1.0)


# --------------------------------------------------------------------------- demo


def test_demo_reproduces_the_papers_claims(tmp_path):
    pytest.importorskip("matplotlib")
    from refimpl.demos import softdtw as demo

    head = demo.run(tmp_path)["headline"]
    assert (tmp_path / "softdtw.png").stat().st_size > 10_000
    mass = head["off_path_mass_by_gamma"]
    assert mass[1.0] > mass[0.1] > mass[0.01]  # E sharpens onto the DTW path as gamma falls
    assert head["sdtw_bound_max_violation"] <= 1e-9
    assert head["divergence_at_shift_0"] == 0.0 and head["min_divergence"] >= -1e-12
    assert head["raw_sdtw_at_shift_0"] < 0 and head["banded_value_finite"]
