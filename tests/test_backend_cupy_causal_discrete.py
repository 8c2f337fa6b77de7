"""CuPy backend of the discrete-score causal-discovery family (``backends/cupy/causal_discrete.py``,
causal_discrete.md sec. 1, 2, 4, 7, 8) on the CPU emulator of ``tests/cuda_emulator.py``: the
real CUDA sources of the ``causal_discrete`` kernel module compiled with g++, the backend's glue
running on NumPy in place of CuPy (SciPy in place of ``cupyx.scipy``).

* the kernels alone, against explicit NumPy counting written here (``np.unique`` /
  contingency tables per stratum): ``cd_keys`` (digit x_i moved to the last place, packing),
  ``cd_plugin`` (packed keys and the argsort/permutation path; mixed cards with NaN padding,
  segments spanning several blocks, grid-stride over more positions than threads),
  ``cd_row_phi`` (all four modes, float32 and float64, padding filled with NaN to prove it is
  never read), ``cd_ci_keys`` + ``cd_ci_stat`` (G² and chi², candidates of different cards,
  one stratum spanning every block, empty cells);
* every ``tiny`` registry case of the five ops and a subset of ``small`` through
  ``refimpl._harness.check_case`` (registry tolerances);
* the paths the registry does not reach: prod K >= 2^62 (dense-rank chain), the argsort path
  (prod K n >= 2^63), CI strata beyond n and beyond 2^62, several CI chunks, no candidates,
  zero adjusted dof (p = 1), one row, one column, constant columns; the Stein Hessian of a
  Gaussian sample against its closed form -1/sigma^2;
* one device->host read per discrete call (two for ``stein_hessian_diag``: the (finite, s)
  pair and the Cholesky status), the bandwidth equals ``np.median(pdist)`` for both parities;
* bad inputs raise the reference's exception and message; other array kinds are a TypeError;
  signatures equal the reference's; the module compiles with NVRTC for sm_90 and its PTX has
  no atomic instruction.
"""

from __future__ import annotations

import inspect
import math

import numpy as np
import pytest

import cuda_emulator
from cuda_emulator import bk, cp  # noqa: F401 (GPU fixtures)
from refimpl import _causal_graph as RG
from refimpl import _causal_score as RS
from refimpl import causal_discrete as ref
from refimpl import _harness as Hn
from refimpl import _ops
from refimpl._cases import causal_score as CS

K = cuda_emulator.K
FUNCS = ("discrete_score_plugin", "gsm_marginal_loss", "leaf_statistic", "ci_test_batch",
         "stein_hessian_diag")
TEMPLATES = ("cd_keys", "cd_plugin", "cd_row_phi", "cd_ci_keys", "cd_ci_stat")
# integer-only inputs (plugin, CI): float64 outputs, registered for float64 only
RUNS = [(name, dt) for name in FUNCS for dt in ("float64", "float32")
        if dt == "float64" or name not in ("discrete_score_plugin", "ci_test_batch")]


def _op(name):
    return _ops.get(name)


# =========================================================================== fixtures


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    return cuda_emulator.build_module(tmp_path_factory, "causal_discrete")


@pytest.fixture
def emu(emulator, monkeypatch):
    """``backends.cupy`` with NumPy for CuPy; 32 threads per block and at most 3 blocks (few
    emulated threads; grid-stride loops); one read counter on ``asnumpy``."""
    ns = cuda_emulator.patch_backend(monkeypatch, emulator)
    monkeypatch.setattr(ns.cd, "THREADS", 32)
    monkeypatch.setattr(ns.cd, "GRID_CAP", 3)
    return ns


def _launch(emulator, template, dtype, args, tpb=32, blocks=3):
    emulator.launch(K.kernel_name(template, dtype), (blocks,), (tpb,), args)


# =========================================================================== structure (CPU)


def test_signatures_and_exports_match_the_reference():
    pytest.importorskip("cupy", reason="cupy is not installed")
    import backends.cupy as bk
    from backends.cupy import causal_discrete as C

    for name in FUNCS:
        # parameters: names, order, kinds, defaults (the reference annotates its returns)
        assert (inspect.signature(getattr(C, name)).parameters
                == inspect.signature(getattr(ref, name)).parameters), name
        assert getattr(bk, name) is getattr(C, name) and name in bk.__all__
    assert set(C.__all__) == set(FUNCS)
    for name in ("discrete_score_exact", "prune_ci", "ci_test", "discrete_score_order"):
        assert not hasattr(bk, name)                     # reference only


def test_compile_test_covers_the_causal_kernels():
    """``test_every_kernel_source_compiles_to_ptx_for_sm90`` iterates ``K.kernel_sources()``:
    the new module and both instantiations of its five kernels are among them."""
    src = {s.module: s for s in K.kernel_sources()}
    assert "causal_discrete" in K.MODULES and "causal_discrete" in src
    want = {f"{t}_{sfx}" for t in TEMPLATES for sfx in ("f32", "f64")}
    assert set(src["causal_discrete"].names) == want
    for name in want:
        assert f'extern "C" __global__ void {name}(' in src["causal_discrete"].source


def test_causal_module_compiles_with_nvrtc_and_has_no_atomics():
    """The module alone through NVRTC for compute_90 (the shared compile test's helper); the
    counting is sort-based: no atomic or reduction instruction anywhere in the PTX."""
    import test_backend_cupy as T

    nvrtc = T._nvrtc()
    ks = {s.module: s for s in K.kernel_sources()}["causal_discrete"]
    options = tuple(ks.options) + tuple(K.CUPY_IMPLICIT_OPTIONS) + ("-arch=compute_90",)
    ok, log, ptx = T._compile_ptx(nvrtc, ks.source, ks.module, options)
    assert ok, log
    assert ".target sm_90" in ptx
    for name in ks.names:
        assert f".entry {name}(" in ptx
    assert "atom." not in ptx and "red." not in ptx


# ==================================================================== kernels alone (emulated)


def _strides(cards):
    return [math.prod(cards[k + 1:]) for k in range(len(cards))]


def _np_plugin_node(X, cards, i, alpha, concrete):
    """Explicit counting for node i (independent of the reference): groups by ``np.unique``
    of the rows of X without column i, counts by a loop over categories."""
    n, K = X.shape[0], cards[i]
    _, grp = np.unique(np.delete(X, i, axis=1), axis=0, return_inverse=True)
    grp = grp.ravel()
    out = np.empty((n, K))
    for y in range(K):
        Ny = np.array([np.sum((grp == grp[r]) & (X[:, i] == y)) for r in range(n)])
        Nt = np.array([np.sum(grp == grp[r]) for r in range(n)])
        out[:, y] = (Nt + alpha * K) / (Ny + alpha)
    if concrete:
        obs = out[np.arange(n), X[:, i]]
        out = obs[:, None] / out - 1.0
    return out


def test_emulated_keys_kernel_moves_the_digit_and_packs(emulator):
    rng = np.random.default_rng(1)
    cards = [3, 2, 5, 4]
    X = np.stack([rng.integers(0, k, 100) for k in cards], axis=1).astype(np.int64)
    st = _strides(cards)
    code = np.ascontiguousarray(X @ np.array(st, dtype=np.int64))
    for i in range(4):
        others = [k for k in range(4) if k != i]
        want = np.zeros(100, dtype=np.int64)
        for k in others + [i]:
            want = want * cards[k] + X[:, k]                 # x_-i digits, then x_i last
        for packn in (0, 100):
            out = np.full(100, -1, dtype=np.int64)
            _launch(emulator, "cd_keys", "float64",
                    (code, np.int64(100), np.int64(st[i]), np.int32(cards[i]), np.int64(packn),
                     out))
            np.testing.assert_array_equal(out, want * packn + np.arange(100) if packn else want)


@pytest.mark.parametrize("packed", [True, False])
@pytest.mark.parametrize("concrete", [0, 1])
def test_emulated_plugin_kernel_counts_segments(emulator, packed, concrete):
    """n = 230 rows on 2 blocks of 32 threads (grid-stride: 4 rounds); cards (2, 3, 4) with
    Kmax = 4 (NaN padding), few patterns so that segments hold ~20-40 rows and span blocks."""
    rng = np.random.default_rng(2 + concrete)
    cards = [2, 3, 4]
    n, Kmax, d = 230, 4, 3
    X = np.stack([rng.integers(0, k, n) for k in cards], axis=1).astype(np.int64)
    code = X @ np.array(_strides(cards), dtype=np.int64)
    alpha = 0.7
    for i in range(d):
        Ki = cards[i]
        keys = np.empty(n, dtype=np.int64)
        _launch(emulator, "cd_keys", "float64", (code, np.int64(n), np.int64(_strides(cards)[i]),
                                                 np.int32(Ki), np.int64(n if packed else 0), keys))
        S = np.full((n, d, Kmax), 7.0)
        if packed:
            sk, perm = np.sort(keys), np.zeros(1, dtype=np.int64)
        else:
            perm = np.argsort(keys, kind="stable").astype(np.int64)
            sk = np.ascontiguousarray(keys[perm])
        _launch(emulator, "cd_plugin", "float64",
                (sk, perm, np.int64(n), np.int64(n if packed else 0), np.int32(Ki), np.int32(Kmax),
                 np.int32(d), np.int32(i), np.float64(alpha), np.int32(concrete), S), blocks=2)
        np.testing.assert_allclose(S[:, i, :Ki], _np_plugin_node(X, cards, i, alpha, concrete),
                                   rtol=1e-14, atol=1e-14)
        assert np.isnan(S[:, i, Ki:]).all()
        assert (np.delete(S, i, axis=1) == 7.0).all()      # other nodes untouched


def _np_phi(S, X, cards, mode):
    n, d, _ = S.shape
    out = np.empty((n, d))
    for r in range(n):
        for i in range(d):
            s = S[r, i, :cards[i]]
            if mode == 0:
                out[r, i] = s.sum()
            elif mode == 1:
                q = (1 / s) / (1 / s).sum()
                out[r, i] = -(q * np.log(q)).sum()
            elif mode == 2:
                out[r, i] = S[r, i, X[r, i]]
            else:
                out[r, i] = S[r, i, X[r, i]] ** 2 - 2 * s.sum()
    return out


@pytest.mark.parametrize("dtype,tol", [("float64", 1e-13), ("float32", 2e-6)])
@pytest.mark.parametrize("mode", [0, 1, 2, 3])
def test_emulated_row_phi_kernel(emulator, dtype, tol, mode):
    """n = 41, d = 3 (123 elements on 2 blocks of 32: grid-stride); the padding y >= K_i holds
    NaN, so reading it would show."""
    rng = np.random.default_rng(10 + mode)
    cards = np.array([2, 4, 3], dtype=np.int64)
    n, d, Kmax = 41, 3, 4
    S = rng.uniform(1.0, 6.0, (n, d, Kmax))
    for i in range(d):
        S[:, i, cards[i]:] = np.nan
    X = np.stack([rng.integers(0, k, n) for k in cards], axis=1).astype(np.int64)
    S = S.astype(dtype)
    out = np.full((n, d), np.nan, dtype)
    _launch(emulator, "cd_row_phi", dtype, (S, X, cards, np.int64(n), np.int32(d), np.int32(Kmax),
                                            np.int32(mode), out), blocks=2)
    want = _np_phi(S.astype(np.float64), X, cards, mode)
    np.testing.assert_allclose(out, want, rtol=tol, atol=tol)


def _np_ci(X, cards, i, c, cond, chi2):
    """Explicit per-stratum contingency tables: ``(stat, adjusted dof)``."""
    z = np.zeros(X.shape[0], dtype=np.int64)
    for q in cond:
        z = z * cards[q] + X[:, q]
    stat, dof = 0.0, 0
    for zv in np.unique(z):
        rows = z == zv
        T = np.zeros((cards[i], cards[c]))
        np.add.at(T, (X[rows, i], X[rows, c]), 1.0)
        nx, ny, nz = T.sum(1), T.sum(0), T.sum()
        for x in range(cards[i]):
            for y in range(cards[c]):
                E = nx[x] * ny[y] / nz
                if chi2 and E > 0:
                    stat += (T[x, y] - E) ** 2 / E
                elif not chi2 and T[x, y] > 0:
                    stat += 2 * T[x, y] * math.log(T[x, y] * nz / (nx[x] * ny[y]))
        dof += (np.count_nonzero(nx) - 1) * (np.count_nonzero(ny) - 1)
    return stat, dof


@pytest.mark.parametrize("chi2", [0, 1])
@pytest.mark.parametrize("cond", [(), (1,), (1, 4)])
def test_emulated_ci_kernels_match_contingency_tables(emulator, chi2, cond):
    """n = 90 rows, candidates with cards 5, 2, 3 (KY = 5 > K_c: unused cells), X_0 with 4
    categories of which category 3 is rare (empty cells, N = 0 with E > 0 for chi2); with
    cond = () the single stratum of each candidate spans all 3 blocks of 32."""
    rng = np.random.default_rng(20 + chi2)
    cards = np.array([4, 3, 5, 2, 3], dtype=np.int64)
    n = 90
    X = np.stack([rng.integers(0, k, n) for k in cards], axis=1).astype(np.int64)
    X[:, 0] = np.where(rng.random(n) < 0.05, 3, X[:, 0] % 3)
    X[:, 3] = np.where(X[:, 0] == 2, 1, X[:, 3])          # some dependence
    cand = np.array([c for c in (2, 3, 4, 1) if c not in cond], dtype=np.int64)
    i, kx, kc = 0, 4, cand.size
    z = np.zeros(n, dtype=np.int64)
    NZ = 1
    for q in cond:
        z = z * cards[q] + X[:, q]
        NZ *= int(cards[q])
    zx = z * kx + X[:, i]
    KY = int(cards[cand].max())
    keys = np.empty(kc * n, dtype=np.int64)
    _launch(emulator, "cd_ci_keys", "float64",
            (zx, X, cand, np.int64(n), np.int32(5), np.int32(kc), np.int64(NZ * kx), np.int32(KY),
             keys))
    want_keys = ((np.arange(kc)[:, None] * NZ * kx + zx[None, :]) * KY + X[:, cand].T).ravel()
    np.testing.assert_array_equal(keys, want_keys)
    sk = np.sort(keys)
    st = np.full(kc * n, np.nan)
    dz = np.full(kc * n, -99, dtype=np.int64)
    _launch(emulator, "cd_ci_stat", "float64",
            (sk, np.int64(kc * n), np.int64(n), np.int32(kx), np.int32(KY),
             np.ascontiguousarray(cards[cand]), np.int32(chi2), st, dz))
    for t, c in enumerate(cand):
        ws, wd = _np_ci(X, cards, i, int(c), cond, chi2)
        np.testing.assert_allclose(st[t * n:(t + 1) * n].sum(), ws, rtol=1e-12, atol=1e-12)
        assert dz[t * n:(t + 1) * n].sum() == wd
    assert not np.isnan(st).any() and (dz != -99).all()


# =================================================================== registry cases (emulated)


def _check(emu, op, dtype, cases):
    rows = [row for case in cases for row in Hn.check_case(op, emu.bk, dtype, case)]
    bad = [r for r in rows if not r.ok]
    assert rows and not bad, "\n".join(
        f"{r.case} {r.output}: max abs {r.max_abs:.3g} rel {r.max_rel:.3g} "
        f"tol {op.tolerance(dtype, r.output)} {r.note}" for r in bad)
    return rows


_LAUNCHES = {"discrete_score_plugin": "cd_plugin", "gsm_marginal_loss": "cd_row_phi",
             "leaf_statistic": "cd_row_phi", "ci_test_batch": "cd_ci_stat"}


@pytest.mark.parametrize("name,dtype", RUNS)
def test_emulated_registry_tiny_cases(emu, name, dtype):
    """Every ``tiny`` registry case of the op that runs in ``dtype``, within the registry
    tolerances (the emulated kernels did the work where the op has one)."""
    op = _op(name)
    assert dtype in op.dtypes
    cases = [c for c in Hn.cases(op, "tiny") if c.runs_in(dtype)]
    _check(emu, op, dtype, cases)
    if name in _LAUNCHES:
        assert K.kernel_name(_LAUNCHES[name], "float64" if name in ("discrete_score_plugin",
                                                                    "ci_test_batch") else dtype) \
            in {c[0] for c in emu.calls}


def _small_subset(op):
    cases = Hn.cases(op, "small")
    pick = {
        "discrete_score_plugin": ("n2000_d6_K3", "n2000_d6_mixed_concrete_uint8"),
        "gsm_marginal_loss": ("n2000_d6_mixed_alpha0.5_int32",),
        "leaf_statistic": ("n2000_d6_mixed_invariance_entropy_weights",
                           "n2000_d6_mixed_var_score_weights", "n2000_d6_K3_invariance_sum"),
        "ci_test_batch": ("n2000_d6_mixed_chain_g2_adjusted_cond2",
                          "n2000_d6_mixed_uniform_chi2_full_cond1", "n300_d6_mixed_sparse_cond3"),
        "stein_hessian_diag": ("n500_d6_anm_eta_G1e-2_eta_H1e-1", "n200_d1_gauss_eta1e-1"),
    }[op.name]
    out = [c for c in cases if c.label in pick]
    assert len(out) == len(pick), [c.label for c in cases]
    return out


@pytest.mark.parametrize("name,dtype", RUNS)
def test_emulated_registry_small_cases(emu, name, dtype):
    op = _op(name)
    assert dtype in op.dtypes
    cases = [c for c in _small_subset(op) if c.runs_in(dtype)]
    assert cases
    _check(emu, op, dtype, cases)


# =========================================================================== paths and reads


def test_emulated_plugin_large_code_paths(emu):
    """prod K >= 2^62 (64 binary columns: the dense-rank chain, as the reference's unique rows)
    and prod K < 2^62 but prod K n >= 2^63 (61 binary columns, n = 40: argsort + gather)."""
    rng = np.random.default_rng(30)
    for d, n in ((64, 40), (61, 40)):
        X = rng.integers(0, 2, (n, d))
        X[:, 5] = X[:, 7]                                  # some shared patterns
        X[::2, 10:] = 0
        cards = [2] * d
        emu.calls.clear()
        got = emu.cd.discrete_score_plugin(X, cards, 1.0, "concrete")
        np.testing.assert_allclose(got, RS.discrete_score_plugin(X, cards, 1.0, "concrete"),
                                   rtol=1e-13, atol=1e-13)
        assert {c[0] for c in emu.calls} == ({"cd_plugin_f64"} if d == 64
                                             else {"cd_keys_f64", "cd_plugin_f64"})


@pytest.mark.parametrize("n,cards", [(1, (3, 2)), (37, (4,)), (25, (2, 5, 3)), (6, (2, 2))])
def test_emulated_edge_shapes_equal_the_reference(emu, n, cards):
    """One row; one column (a single x_-i segment of every row); constant columns; every
    row its own pattern."""
    rng = np.random.default_rng(n)
    X = np.stack([rng.integers(0, k, n) for k in cards], axis=1)
    if n == 25:
        X[:, 0] = 1
    cards = list(cards)
    S = emu.cd.discrete_score_plugin(X, cards, 0.3)
    want = RS.discrete_score_plugin(X, cards, 0.3)
    np.testing.assert_allclose(S, want, rtol=1e-14, atol=1e-14)
    for crit in ("invariance_sum", "invariance_entropy", "var_score"):
        np.testing.assert_allclose(emu.cd.leaf_statistic(want, X, cards, crit),
                                   RS.leaf_statistic(want, X, cards, crit), rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(emu.cd.gsm_marginal_loss(want, X, cards),
                               RS.gsm_marginal_loss(want, X, cards), rtol=1e-13)
    if len(cards) > 1 and n >= 2:
        for test in ("g2", "chi2"):
            got = emu.cd.ci_test_batch(X, cards, 0, [1], (), test)
            w = RG.ci_test_batch(X, cards, 0, [1], (), test)
            for g, ww in zip(got, w):
                np.testing.assert_allclose(g, ww, rtol=1e-12, atol=1e-13)


def test_emulated_ci_dense_strata_and_chunks(emu, monkeypatch):
    """Strata beyond n (prod K_Z = 5^6 > n: dense rank), beyond 2^62 (28 columns of 5: the
    chain), several chunks of candidates (CI_CHUNK_KEYS = 2 n), and no candidates."""
    rng = np.random.default_rng(31)
    n = 120
    cards = np.array([3] * 6 + [5] * 28, dtype=np.int64)
    X = np.stack([rng.integers(0, k, n) for k in cards], axis=1)
    X[:, 1] = (X[:, 0] + (rng.random(n) < 0.2)) % 3
    monkeypatch.setattr(emu.cd, "CI_CHUNK_KEYS", 2 * n)
    for cond, test, df in (((6, 7, 8, 9, 10, 11), "g2", "adjusted"),
                           (tuple(range(6, 34)), "chi2", "adjusted"),
                           ((3,), "chi2", "full")):
        cand = np.array([1, 2, 4, 5, 12 if 12 not in cond else 2][:4], dtype=np.int64)
        emu.calls.clear()
        got = emu.cd.ci_test_batch(X, cards, 0, cand, cond, test, df)
        want = RG.ci_test_batch(X, cards, 0, cand, cond, test, df)
        assert [c[0] for c in emu.calls].count("cd_ci_stat_f64") == 2      # 4 candidates / 2
        np.testing.assert_allclose(got[0], want[0], rtol=1e-11, atol=1e-11)
        np.testing.assert_array_equal(got[1], want[1])
        assert got[1].dtype == np.int64 and got[0].dtype == got[2].dtype == np.float64
        np.testing.assert_allclose(got[2], want[2], rtol=1e-11, atol=1e-14)
    got = emu.cd.ci_test_batch(X, cards, 0, np.zeros(0, dtype=np.int64), (1,))
    want = RG.ci_test_batch(X, cards, 0, np.zeros(0, dtype=np.int64), (1,))
    for g, w in zip(got, want):
        assert g.shape == (0,) and g.dtype == w.dtype


def test_emulated_ci_pvalue_is_one_at_zero_dof(emu):
    """X_c constant within every stratum: adjusted dof 0 -> p = 1 and stat 0 (full dof > 0,
    p = Q(dof / 2, 0) = 1 as well)."""
    rng = np.random.default_rng(32)
    X = rng.integers(0, 3, (60, 3))
    X[:, 2] = X[:, 1]
    for df in ("adjusted", "full"):
        stat, dof, p = emu.cd.ci_test_batch(X, [3, 3, 3], 0, [2], (1,), "g2", df)
        w = RG.ci_test_batch(X, [3, 3, 3], 0, [2], (1,), "g2", df)
        assert dof[0] == w[1][0] and stat[0] == 0.0 and p[0] == w[2][0]
        assert p[0] == 1.0 if df == "adjusted" else dof[0] > 0


def test_emulated_one_read_per_discrete_call(emu):
    """cards and candidates as (emulated) device arrays: each discrete op reads the host
    values it needs in ONE transfer (2 d column extremes + d cards + k candidates [+ 3 weight
    statistics])."""
    rng = np.random.default_rng(33)
    X, cards = CS.anm_data(rng, 80, (2, 3, 4))
    c = np.array(cards, dtype=np.int64)
    S = RS.discrete_score_plugin(X, cards)
    w = rng.uniform(0.5, 1.5, 80)
    calls = [(lambda: emu.cd.discrete_score_plugin(X, c), (9,)),
             (lambda: emu.cd.gsm_marginal_loss(S, X, cards), (6,)),
             (lambda: emu.cd.leaf_statistic(S, X, c, "var_score", w), (12,)),
             (lambda: emu.cd.ci_test_batch(X, c, 0, np.array([1, 2]), (), "chi2"), (11,))]
    for call, shape in calls:
        emu.reads.clear()
        call()
        assert emu.reads == [shape]


@pytest.mark.parametrize("n", [9, 10, 12])
def test_emulated_stein_bandwidth_and_reads(emu, monkeypatch, n):
    """The bandwidth is the median of the n(n-1)/2 pair distances (``np.median(pdist)``, odd
    and even pair counts, a duplicated row), from one read of (finite, s); each Cholesky
    adds one status read (none here: SciPy stands in and raises by itself)."""
    from scipy.spatial.distance import pdist

    rng = np.random.default_rng(n)
    X = rng.normal(size=(n, 2))
    X[3] = X[1]
    seen = []
    real = emu.cd.V.stein_bandwidth
    monkeypatch.setattr(emu.cd.V, "stein_bandwidth", lambda s: seen.append(s) or real(s))
    emu.reads.clear()
    H = emu.cd.stein_hessian_diag(X, 1e-2, 1e-1)
    assert emu.reads == [(2,)]
    np.testing.assert_allclose(seen[0], np.median(pdist(X)), rtol=1e-14)
    np.testing.assert_allclose(H, RG.stein_hessian_diag(X, 1e-2, 1e-1), rtol=1e-9, atol=1e-9)


def test_stein_gaussian_hessian_is_minus_inverse_variance(emu):
    """Independent of the reference: for X ~ N(0, diag(sigma^2)) the Hessian diagonal of
    log p is -1/sigma_j^2; the median over rows is within 20% (spec sec. 9, n = 2000 there;
    n = 800 here)."""
    rng = np.random.default_rng(40)
    sig = np.array([0.7, 1.0, 1.4])
    X = rng.normal(size=(800, 3)) * sig
    H = emu.cd.stein_hessian_diag(X, 1e-3, 1e-3)
    med = np.median(H, axis=0)
    np.testing.assert_allclose(med, -1 / sig ** 2, rtol=0.2)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_emulated_output_kinds_and_dtypes(emu, dtype):
    rng = np.random.default_rng(41)
    X, cards = CS.anm_data(rng, 30, (2, 3), dtype=np.int32)
    S = emu.cd.discrete_score_plugin(X, cards)
    assert S.dtype == np.float64 and S.shape == (30, 2, 3)
    S = S.astype(dtype)
    J = emu.cd.gsm_marginal_loss(S, X, cards)
    assert J.shape == () and J.dtype == dtype
    st = emu.cd.leaf_statistic(S, X, cards, weights=np.ones(30, dtype))
    assert st.shape == (2,) and st.dtype == dtype
    H = emu.cd.stein_hessian_diag(rng.normal(size=(12, 2)).astype(dtype))
    assert H.shape == (12, 2) and H.dtype == dtype


# =========================================================================== errors


def _bad_calls():
    rng = np.random.default_rng(50)
    X, cards = CS.anm_data(rng, 20, (2, 3, 2))
    S = RS.discrete_score_plugin(X, cards)
    Xhi = X.copy()
    Xhi[4, 1] = 3
    Xneg = X.copy()
    Xneg[2, 2] = -1
    w = np.ones(20)
    wn = w.copy()
    wn[3] = np.nan
    Xs = rng.normal(size=(8, 2))
    Xs_nan = Xs.copy()
    Xs_nan[1, 1] = np.nan
    same = np.ones((8, 2))
    dup = np.repeat(rng.normal(size=(2, 2)), 4, axis=0)
    big = np.array([2, 2, 2**21, 2**21, 2**21], dtype=np.int64)     # prod K_Z = 2^63
    Xbig = rng.integers(0, 2, (10, 5))
    return [
        ("X float", "discrete_score_plugin", dict(X=X.astype(float), cards=cards)),
        ("X bool", "discrete_score_plugin", dict(X=X.astype(bool), cards=cards)),
        ("X 1-D", "discrete_score_plugin", dict(X=X[:, 0], cards=cards[:1])),
        ("X empty", "discrete_score_plugin", dict(X=X[:0], cards=cards)),
        ("cards length", "discrete_score_plugin", dict(X=X, cards=cards[:2])),
        ("cards < 2", "discrete_score_plugin", dict(X=X, cards=[2, 1, 2])),
        ("cards float", "discrete_score_plugin", dict(X=X, cards=[2.0, 3.0, 2.0])),
        ("value >= card", "discrete_score_plugin", dict(X=Xhi, cards=cards)),
        ("negative value", "discrete_score_plugin", dict(X=Xneg, cards=cards)),
        ("alpha", "discrete_score_plugin", dict(X=X, cards=cards, alpha=0.0)),
        ("kind", "discrete_score_plugin", dict(X=X, cards=cards, kind="exact")),
        ("S shape", "gsm_marginal_loss", dict(S_all=S[:, :2], X=X, cards=cards)),
        ("S int", "gsm_marginal_loss", dict(S_all=np.ones((20, 3, 3), int), X=X, cards=cards)),
        ("leaf cards", "leaf_statistic", dict(S_all=S, X=Xhi, cards=cards)),
        ("criterion", "leaf_statistic", dict(S_all=S, X=X, cards=cards, criterion="nogam")),
        ("weights nan", "leaf_statistic", dict(S_all=S, X=X, cards=cards, weights=wn)),
        ("weights neg", "leaf_statistic", dict(S_all=S, X=X, cards=cards, weights=w - 2)),
        ("weights zero", "leaf_statistic", dict(S_all=S, X=X, cards=cards, weights=0 * w)),
        ("weights shape", "leaf_statistic", dict(S_all=S, X=X, cards=cards, weights=w[:5])),
        ("weights dtype", "leaf_statistic", dict(S_all=S, X=X, cards=cards,
                                                 weights=w.astype(np.float32))),
        ("ci i in cand", "ci_test_batch", dict(X=X, cards=cards, i=0, candidates=[0, 1])),
        ("ci overlap", "ci_test_batch", dict(X=X, cards=cards, i=0, candidates=[1, 2], cond=(2,))),
        ("ci index", "ci_test_batch", dict(X=X, cards=cards, i=0, candidates=[3])),
        ("ci repeat", "ci_test_batch", dict(X=X, cards=cards, i=0, candidates=[1, 1])),
        ("ci test", "ci_test_batch", dict(X=X, cards=cards, i=0, candidates=[1], test="z")),
        ("ci df", "ci_test_batch", dict(X=X, cards=cards, i=0, candidates=[1], df="half")),
        ("ci n", "ci_test_batch", dict(X=X[:1], cards=cards, i=0, candidates=[1])),
        ("ci i type", "ci_test_batch", dict(X=X, cards=cards, i=0.0, candidates=[1])),
        ("ci full overflow", "ci_test_batch", dict(X=Xbig, cards=big, i=0, candidates=[1],
                                                   cond=(2, 3, 4), df="full")),
        ("stein int", "stein_hessian_diag", dict(X=X)),
        ("stein n", "stein_hessian_diag", dict(X=Xs[:1])),
        ("stein eta", "stein_hessian_diag", dict(X=Xs, eta_G=0.0)),
        ("stein nan", "stein_hessian_diag", dict(X=Xs_nan)),
        ("stein bandwidth", "stein_hessian_diag", dict(X=same)),
        ("stein not PD G", "stein_hessian_diag", dict(X=dup, eta_G=1e-300)),
        ("stein not PD H", "stein_hessian_diag", dict(X=dup, eta_G=1e-3, eta_H=1e-300)),
    ]


@pytest.mark.parametrize("what,name,kw", _bad_calls(), ids=[c[0] for c in _bad_calls()])
def test_emulated_bad_inputs_raise_like_the_reference(emu, what, name, kw):
    with pytest.raises(Exception) as want:
        getattr(ref, name)(**kw)
    with pytest.raises(type(want.value)) as got:
        getattr(emu.cd, name)(**kw)
    assert str(got.value) == str(want.value), what


class _Foreign:
    """An array of another kind (it has a shape and ``__array__``)."""

    shape = (3,)

    def __array__(self, dtype=None, copy=None):
        return np.array([2, 2, 2])


def test_emulated_other_array_kinds_are_refused(emu):
    """Under the emulator NumPy arrays are the native kind: lists for arrays, or foreign
    array objects for cards / candidates, are a TypeError naming the argument."""
    rng = np.random.default_rng(51)
    X, cards = CS.anm_data(rng, 10, (2, 2, 2))
    S = RS.discrete_score_plugin(X, cards)
    with pytest.raises(TypeError, match="X is a builtins.list; the cupy backend"):
        emu.cd.discrete_score_plugin(X.tolist(), cards)
    with pytest.raises(TypeError, match="S_all is a builtins.list"):
        emu.cd.gsm_marginal_loss(S.tolist(), X, cards)
    with pytest.raises(TypeError, match="weights is a builtins.list"):
        emu.cd.leaf_statistic(S, X, cards, weights=[1.0] * 10)
    with pytest.raises(TypeError, match="cards is a .*_Foreign; the cupy backend"):
        emu.cd.discrete_score_plugin(X, _Foreign())
    with pytest.raises(TypeError, match="candidates is a .*_Foreign"):
        emu.cd.ci_test_batch(X, cards, 0, _Foreign())
    with pytest.raises(TypeError, match="X is a builtins.list"):
        emu.cd.stein_hessian_diag(rng.normal(size=(4, 2)).tolist())


def test_numpy_inputs_refused_by_the_real_backend():
    """The real module (CuPy imported, no device touched): NumPy arrays are refused before
    any device work, naming the first foreign argument."""
    pytest.importorskip("cupy", reason="cupy is not installed")
    from backends.cupy import causal_discrete as C

    X = np.zeros((4, 2), dtype=np.int64)
    S = np.ones((4, 2, 2))
    with pytest.raises(TypeError, match="X is a numpy.ndarray; the cupy backend"):
        C.discrete_score_plugin(X, [2, 2])
    with pytest.raises(TypeError, match="X is a numpy.ndarray"):
        C.ci_test_batch(X, [2, 2], 0, [1])
    with pytest.raises(TypeError, match="X is a numpy.ndarray"):
        C.leaf_statistic(S, X, [2, 2])
    with pytest.raises(TypeError, match="X is a numpy.ndarray"):
        C.stein_hessian_diag(np.ones((4, 2)))


# =========================================================================== GPU


@pytest.mark.gpu
@pytest.mark.parametrize("name,dtype", RUNS)
def test_gpu_registry_small_cases(bk, name, dtype):
    op = _op(name)
    rows = [r for c in Hn.cases(op, "small") if c.runs_in(dtype)
            for r in Hn.check_case(op, bk, dtype, c)]
    bad = [r for r in rows if not r.ok]
    assert rows and not bad, "\n".join(f"{r.case} {r.output}: {r.max_abs:.3g} {r.note}"
                                       for r in bad)


@pytest.mark.gpu
def test_gpu_plugin_large_rows_match_the_reference_on_a_sample(cp, bk):
    """n = 200,000, d = 12, K = 3 (packed keys-only sorts): every output row equals the
    reference's on a random sample of rows; leaf statistic and GSM loss agree too."""
    from backends.cupy import causal_discrete as C

    rng = np.random.default_rng(0)
    X, cards = CS.anm_data(rng, 200_000, (3,) * 12)
    Xd = cp.asarray(X)
    S = C.discrete_score_plugin(Xd, cards)
    want = RS.discrete_score_plugin(X, cards)
    idx = rng.choice(X.shape[0], 2000, replace=False)
    np.testing.assert_allclose(cp.asnumpy(S)[idx], want[idx], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(cp.asnumpy(C.leaf_statistic(S, Xd, cards)),
                               RS.leaf_statistic(want, X, cards), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(float(C.gsm_marginal_loss(S, Xd, cards)),
                               float(RS.gsm_marginal_loss(want, X, cards)), rtol=1e-10)


@pytest.mark.gpu
def test_gpu_stein_failed_cholesky_raises(cp, bk):
    """cuSOLVER's status is read (``cupyx.errstate(linalg="raise")``): a singular K + eta I
    raises the reference's ValueError."""
    from backends.cupy import causal_discrete as C

    rng = np.random.default_rng(1)
    X = np.repeat(rng.normal(size=(2, 2)), 4, axis=0)
    with pytest.raises(ValueError, match="K \\+ eta_G I is not numerically positive definite"):
        C.stein_hessian_diag(cp.asarray(X), eta_G=1e-300)
