"""CuPy backend of the gnn family (``backends/cupy/gnn.py``; multilayer GNN for predictive
maintenance, arXiv 2507.07298, PyG layer semantics) on the CPU emulator of
``tests/cuda_emulator.py``: the real CUDA sources of the ``gnn`` kernel module compiled with g++,
the backend's glue running on NumPy in place of CuPy.

* every ``tiny`` registry case of the layer ops and their VJPs (``refimpl/_cases/gnn.py``) and of
  the heads (fuse, focal loss, edge MLP) against the float64 reference
  (``refimpl/_gnn_layers.py``, ``refimpl/_gnn_heads.py``), float32 and float64, at the registry
  tolerances; ``to_csr`` / ``add_self_loops`` / ``gcn_norm`` over every mode and fill;
* hub rows: with the chunk size patched to 4, a graph with a hub destination and a hub source
  (degrees 5-10 chunks) — every layer and VJP against the reference, the combine pass launched,
  and the chunked segment sum bit-identical to a Python transcription of its fixed order
  (chunk partials in CSR order, then added in chunk order);
* determinism: two runs bitwise equal, and — since every sum's order depends on the CSR order
  and the chunk size only — bitwise equal across launch shapes (warps per block, grid cap);
* invariants: alpha sums to 1 per (destination, head); ATOMIC_PATHS is empty and the PTX of
  the module has no atomic / reduction instruction;
* one device->host read per validated call (``ns.reads``), none for ``fuse``; bad inputs raise
  the reference's exception and message; other array kinds are a TypeError;
* ``gpu`` tests (real device): the small cases against the reference and bitwise determinism of
  every forward and backward at N = 1e5, E = 1e6, plus GAT's memory bound (no E x heads x C).
"""

from __future__ import annotations

import inspect
import re

import numpy as np
import pytest

import cuda_emulator
from cuda_emulator import bk, cp  # noqa: F401 (GPU fixtures)
from refimpl import _gnn_heads as RH
from refimpl import _gnn_layers as RL
from refimpl._cases import gnn as C

K = cuda_emulator.K
FUNCS = ("to_csr", "add_self_loops", "gcn_norm", "gcn_layer", "gcn_layer_vjp",
         "segment_softmax", "segment_softmax_vjp", "gat_layer", "gat_layer_vjp", "gin_layer",
         "gin_layer_vjp", "edge_mlp_weights", "fuse", "fuse_vjp", "focal_bce", "focal_bce_grad")
TEMPLATES = ("gnn_seg_sum", "gnn_seg_combine", "gnn_edge_dot", "gnn_gat_fwd", "gnn_gat_bwd",
             "gnn_softmax_fwd", "gnn_softmax_bwd")
LAYER_OPS = ("gcn_layer", "gat_layer", "gin_layer", "segment_softmax")
HEAD_CASES = {"fuse": C.cases_fuse, "fuse_vjp": C.cases_fuse_vjp,
              "focal_bce": C.cases_focal_bce, "focal_bce_grad": C.cases_focal_bce,
              "edge_mlp_weights": C.cases_edge_mlp_weights}


def _ref(name):
    return getattr(RL, name, None) or getattr(RH, name)


# =========================================================================== fixtures


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    return cuda_emulator.build_module(tmp_path_factory, "gnn")


@pytest.fixture
def emu(emulator, monkeypatch):
    """``backends.cupy`` with NumPy for CuPy; 64 threads (2 warps) per block, at most 3 blocks
    (warps grid-stride over their rows); one read counter on ``asnumpy``."""
    ns = cuda_emulator.patch_backend(monkeypatch, emulator)
    monkeypatch.setattr(ns.gnn, "SEG_THREADS", 64)
    monkeypatch.setattr(ns.gnn, "GRID_CAP", 3)
    return ns


# =========================================================================== helpers


_cast = cuda_emulator.cast_floats


def _flat(res, prefix=""):
    """A result (array, tuple, dict, None, float) as {name: array or None}."""
    if isinstance(res, dict):
        out = {}
        for k, v in res.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    if isinstance(res, tuple):
        out = {}
        for i, v in enumerate(res):
            out.update(_flat(v, f"{prefix}{i}."))
        return out
    return {prefix.rstrip(".") or "0": None if res is None else np.asarray(res)}


def _assert_close(got, want, dt, what="", tol=None, scaled=False):
    """``got`` (backend, dtype ``dt``) vs ``want`` (float64 reference) at the registry tolerance;
    ``scaled``: the absolute tolerance times max(1, max |want|) per output (float32 at the small
    and GPU sizes, where sums of hundreds of O(10-100) terms that cancel to ~0 carry rounding
    noise above the unscaled 1e-5 — e.g. an entry of GIN's dW2 = R^T G near 0 among entries
    of size 100)."""
    rtol, atol = tol or C.TOL[dt]["*"]
    g, w = _flat(got), _flat(want)
    assert set(g) == set(w), (what, sorted(g), sorted(w))
    for key in w:
        if w[key] is None:
            assert g[key] is None, (what, key)
            continue
        assert g[key].shape == w[key].shape, (what, key, g[key].shape, w[key].shape)
        if g[key].dtype.kind == "f":
            assert g[key].dtype == np.dtype(dt), (what, key, g[key].dtype)
        at = atol * max(1.0, float(np.abs(w[key]).max(initial=0.0))) if scaled else atol
        np.testing.assert_allclose(g[key].astype(np.float64), w[key], rtol=rtol, atol=at,
                                   err_msg=f"{what} {key}")


def _bitwise(a, b, what=""):
    fa, fb = _flat(a), _flat(b)
    assert set(fa) == set(fb)
    for k in fa:
        if fa[k] is None:
            assert fb[k] is None
            continue
        assert fa[k].dtype == fb[k].dtype and fa[k].shape == fb[k].shape, (what, k)
        assert fa[k].tobytes() == fb[k].tobytes(), f"{what} {k} differs bitwise"


def _run(ns, name, kw, dt, reads=1):
    """Backend call on ``kw`` cast to ``dt`` vs the reference on the same (cast) values."""
    low = _cast(kw, dt)
    want = _ref(name)(**_cast(low, "float64"))
    ns.reads.clear()
    got = getattr(ns.gnn, name)(**low)
    assert len(ns.reads) == reads, (name, ns.reads)
    return got, want


def hub_graph(rng, N=12, hub_in=37, hub_out=23, extra=30):
    """``edge_index`` with a hub destination (node 0, in-degree ``hub_in``, duplicates and a
    doubled self-loop among them), a hub source (node 1, out-degree ``hub_out``), an isolated
    node (N - 1) and ``extra`` random edges; random input order."""
    others = np.arange(1, N - 1)
    src = [rng.choice(others, hub_in - 2), [0, 0]]          # two loops on the hub
    dst = [np.zeros(hub_in - 2, np.int64), [0, 0]]
    src.append(np.ones(hub_out, np.int64))
    dst.append(rng.choice(np.arange(2, N - 1), hub_out))
    a = rng.integers(1, N - 1, extra)
    b = (a - 1 + rng.integers(1, N - 2, extra)) % (N - 2) + 1   # b != a, both in [1, N - 2]
    src.append(a)
    dst.append(b)
    ei = np.stack([np.concatenate(src), np.concatenate(dst)]).astype(np.int64)
    return ei[:, rng.permutation(ei.shape[1])]


# =========================================================================== structure


def test_signatures_match_the_reference():
    from backends.cupy import gnn as B

    for name in FUNCS:
        assert inspect.signature(getattr(B, name)) == inspect.signature(_ref(name)), name
    assert set(B.__all__) == set(FUNCS) | {"ATOMIC_PATHS"}
    assert B.ATOMIC_PATHS == {}


def test_module_is_registered_with_its_kernels():
    assert "gnn" in K.MODULES
    names = {k.name for k in K.KERNELS.values() if k.module == "gnn"}
    assert names == {f"{t}_{s}" for t in TEMPLATES for s in ("f32", "f64")}
    src = K.module_source("gnn")
    assert not re.search(r"\batomic[A-Z]\w*\s*\(", src)     # no atomicAdd / atomicCAS / ...


def test_gnn_module_compiles_with_nvrtc_and_has_no_atomics():
    """The module through NVRTC for compute_90 (skips without NVRTC): every instantiation is a
    PTX entry and the PTX holds no atomic (``atom.``) or reduction (``red.``) instruction."""
    import test_backend_cupy as T

    nvrtc = T._nvrtc()
    ks = {s.module: s for s in K.kernel_sources()}["gnn"]
    options = tuple(ks.options) + tuple(K.CUPY_IMPLICIT_OPTIONS) + ("-arch=compute_90",)
    ok, log, ptx = T._compile_ptx(nvrtc, ks.source, ks.module, options)
    assert ok, log
    for name in ks.names:
        assert f".entry {name}(" in ptx
    assert not re.search(r"^\s*(atom|red)\.", ptx, flags=re.MULTILINE)


# =========================================================================== registry cases


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("op", LAYER_OPS)
def test_emulated_tiny_layer_cases_match_the_reference(emu, op, dtype):
    """Every tiny case of the op and of its VJP (cotangent G in the case), one host read each."""
    fwd = getattr(C, f"cases_{op}")(np.random.default_rng(0), "tiny")
    bwd = getattr(C, f"cases_{op}_vjp")(np.random.default_rng(1), "tiny")
    assert fwd and bwd
    for name, cases in ((op, fwd), (op + "_vjp", bwd)):
        for case in cases:
            got, want = _run(emu, name, case.kwargs, dtype)
            _assert_close(got, want, dtype, f"{name} {case.label}")
    launched = {c[0] for c in emu.calls}
    kern = {"gcn_layer": "gnn_seg_sum", "gin_layer": "gnn_seg_sum", "gat_layer": "gnn_gat_fwd",
            "segment_softmax": "gnn_softmax_fwd"}[op]
    assert K.kernel_name(kern, dtype) in launched


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", sorted(HEAD_CASES))
def test_emulated_tiny_head_cases_match_the_reference(emu, name, dtype):
    """fuse (4 modes; no host read), focal loss (both variants, ends 0/1, label dtypes), edge MLP
    (standardised, constant column): the reference's values at the registry tolerance."""
    cases = HEAD_CASES[name](np.random.default_rng(2), "tiny")
    assert cases
    reads = 0 if name.startswith("fuse") else 1
    for case in cases:
        got, want = _run(emu, name, case.kwargs, dtype, reads)
        if name.startswith("focal"):
            loss = got if name == "focal_bce" else got[0]
            assert isinstance(loss, np.ndarray) and loss.shape == ()   # a 0-d array
        _assert_close(got, want, dtype, f"{name} {case.label}")


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_emulated_structure_ops_equal_the_reference(emu, dtype):
    """to_csr exactly; add_self_loops for both modes x fill {1, "mean", 0.5} x weights {None,
    (E,), (E, D)} (int32 edge_index too); gcn_norm for improved x add_loops x weights."""
    rng = np.random.default_rng(3)
    N = 7
    ei = C.random_graph(rng, N, 16)
    w, A = C.edge_weights(rng, 16), rng.standard_normal((16, 3))
    emu.reads.clear()
    got = emu.gnn.to_csr(ei, N)
    assert len(emu.reads) == 1
    for g, r in zip(got, RL.to_csr(ei, N)):
        assert g.dtype == np.int64
        np.testing.assert_array_equal(g, r)
    for mode in ("remaining", "replace"):
        for fill in (1.0, "mean", 0.5):
            for ww in (None, w, A):
                for e in (ei, ei.astype(np.int32)):
                    (gi, gw), (ri, rw) = _run(emu, "add_self_loops",
                                              dict(edge_index=e, n_nodes=N, edge_weight=ww,
                                                   fill=fill, mode=mode), dtype)
                    assert gi.dtype == np.int64
                    np.testing.assert_array_equal(gi, ri)
                    _assert_close(gw, rw, dtype, f"add_self_loops {mode} {fill}")
    for improved in (False, True):
        for add_loops in (False, True):
            for ww in (None, w):
                (gi, gw), (ri, rw) = _run(emu, "gcn_norm",
                                          dict(edge_index=ei, n_nodes=N, edge_weight=ww,
                                               improved=improved, add_loops=add_loops), dtype)
                np.testing.assert_array_equal(gi, ri)
                _assert_close(gw, rw, dtype if ww is not None else "float64", "gcn_norm")


# =========================================================================== hub rows (chunks)


def _hub_kwargs(rng, ei, N, F=5):
    E = ei.shape[1]
    X = rng.standard_normal((N, F))
    gcn = dict(X=X, edge_index=ei, W=rng.standard_normal((F, 4)) / 2, b=rng.standard_normal(4),
               edge_weight=C.edge_weights(rng, E))
    gat = dict(X=X, edge_index=ei, W=rng.standard_normal((F, 6)) / 2,
               a_src=rng.standard_normal((2, 3)), a_dst=rng.standard_normal((2, 3)),
               b=rng.standard_normal(6), edge_attr=rng.standard_normal((E, 2)),
               W_e=rng.standard_normal((2, 6)), a_e=rng.standard_normal((2, 3)))
    gin = dict(X=X, edge_index=ei, W1=rng.standard_normal((F, 6)) / 2,
               b1=0.5 * rng.standard_normal(6), W2=rng.standard_normal((6, 3)),
               b2=rng.standard_normal(3), eps=0.25)
    return {"gcn_layer": gcn, "gat_layer": gat, "gin_layer": gin,
            "segment_softmax": dict(scores=3 * rng.standard_normal((E, 2)), dst=ei[1],
                                    n_nodes=N)}


def _out_shape(name, kw, N):
    if name == "gcn_layer":
        return (N, kw["W"].shape[1])
    if name == "gin_layer":
        return (N, kw["W2"].shape[1])
    if name == "gat_layer":
        return (N, kw["W"].shape[1])
    return kw["scores"].shape


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_emulated_hub_rows_are_chunked_and_match_the_reference(emu, monkeypatch, dtype):
    """CHUNK = 4: node 0 (in-degree 37 + loop) and node 1 (out-degree 23, the transposed CSR of
    every backward) span several chunks; forward and VJP of every layer vs the reference."""
    monkeypatch.setattr(emu.gnn, "CHUNK", 4)
    rng = np.random.default_rng(4)
    N = 12
    ei = hub_graph(rng, N)
    for name, kw in _hub_kwargs(rng, ei, N).items():
        got, want = _run(emu, name, kw, dtype)
        _assert_close(got, want, dtype, f"hub {name}")
        G = rng.standard_normal(_out_shape(name, kw, N))
        got, want = _run(emu, name + "_vjp", dict(kw, G=G), dtype)
        _assert_close(got, want, dtype, f"hub {name}_vjp")
    assert K.kernel_name("gnn_seg_combine", dtype) in {c[0] for c in emu.calls}


def _transcribed_chunked_sum(ptr, col, w, X, chunk):
    """gnn_seg_sum's order in Python float64: per row, chunk partials summed position by
    position (CSR order), then chunk 0 + chunk 1 + ... left to right."""
    N, F = ptr.shape[0] - 1, X.shape[1]
    out = np.zeros((N, F))
    for r in range(N):
        for f in range(F):
            parts = []
            for p0 in range(ptr[r], max(ptr[r + 1], ptr[r] + 1), chunk):
                acc = 0.0
                for p in range(p0, min(p0 + chunk, ptr[r + 1])):
                    acc += w[p] * X[col[p], f]
                parts.append(acc)
            tot = parts[0]
            for v in parts[1:]:
                tot += v
            out[r, f] = tot
    return out


@pytest.mark.parametrize("chunk", [3, 1024])
def test_emulated_segment_sum_has_the_documented_fixed_order(emu, monkeypatch, chunk):
    """The aggregation of a hub graph equals, BIT FOR BIT, the transcription of its order (so
    the order is fixed by the CSR and the chunk size alone)."""
    monkeypatch.setattr(emu.gnn, "CHUNK", chunk)
    rng = np.random.default_rng(5)
    N = 12
    ei = hub_graph(rng, N)
    g, _ = emu.gnn._sorted_graph(ei[0].copy(), ei[1].copy(), N)
    X = rng.standard_normal((N, 37))                       # F > 32: lanes loop over features
    w = rng.standard_normal(g.E)
    got = emu.gnn._seg_sum(g.ptr, X, N, g.E, col=g.src, w=w)
    want = _transcribed_chunked_sum(g.ptr, g.src, w, X, chunk)
    assert got.tobytes() == want.tobytes()
    direct = np.stack([np.bincount(g.dst, weights=w * X[g.src, f], minlength=N)
                       for f in range(37)], axis=1)
    np.testing.assert_allclose(got, direct, rtol=1e-12, atol=1e-12)


# =========================================================================== determinism


def _all_layer_calls(rng, N=12):
    ei = hub_graph(rng, N)
    kws = _hub_kwargs(rng, ei, N)
    calls = []
    for name, kw in kws.items():
        calls.append((name, kw))
        calls.append((name + "_vjp", dict(kw, G=rng.standard_normal(_out_shape(name, kw, N)))))
    calls.append(("gat_layer", dict(kws["gat_layer"], edge_attr=None, W_e=None, a_e=None,
                                    concat=False, b=None, add_loops=False)))
    return calls


def test_emulated_outputs_are_bitwise_reproducible_and_launch_shape_invariant(emu, monkeypatch):
    """Two runs are bitwise equal; so are runs with 1 warp per block / 4 warps per block and a
    grid cap of 1 / 1000 (the summation orders depend on the CSR order and CHUNK only)."""
    monkeypatch.setattr(emu.gnn, "CHUNK", 4)
    calls = _all_layer_calls(np.random.default_rng(6))
    first = [getattr(emu.gnn, n)(**kw) for n, kw in calls]
    for threads, cap in ((64, 3), (32, 1), (128, 1000)):
        monkeypatch.setattr(emu.gnn, "SEG_THREADS", threads)
        monkeypatch.setattr(emu.gnn, "GRID_CAP", cap)
        for (n, kw), ref in zip(calls, first):
            _bitwise(getattr(emu.gnn, n)(**kw), ref, f"{n} threads={threads} cap={cap}")


# =========================================================================== invariants


def test_emulated_attention_sums_to_one_per_destination_and_head(emu):
    rng = np.random.default_rng(7)
    N = 12
    ei = hub_graph(rng, N)
    kw = _hub_kwargs(rng, ei, N)["gat_layer"]
    _, alpha = emu.gnn.gat_layer(**kw)
    dst = emu.gnn.add_self_loops(ei, N, None, 1.0, "replace")[0][1]
    sums = np.stack([np.bincount(dst, weights=alpha[:, h], minlength=N) for h in range(2)], 1)
    np.testing.assert_allclose(sums, 1.0, rtol=0, atol=1e-12)   # every node has its loop
    # without loops the isolated node (N - 1) has an empty segment: out = b only
    H, a2 = emu.gnn.gat_layer(**dict(kw, add_loops=False))
    np.testing.assert_array_equal(H[N - 1], kw["b"])
    assert a2.shape == (ei.shape[1], 2)
    s = np.abs(3 * rng.standard_normal((ei.shape[1], 3)))
    al = emu.gnn.segment_softmax(s, ei[1], N)
    seg = np.stack([np.bincount(ei[1], weights=al[:, h], minlength=N) for h in range(3)], 1)
    has = np.bincount(ei[1], minlength=N) > 0
    np.testing.assert_allclose(seg[has], 1.0, atol=1e-12)
    assert (seg[~has] == 0).all()


def test_emulated_gcn_identity_weight_averages_a_regular_neighbourhood(emu):
    """Spec sec. 9: W = I on a k-regular graph with loops -> the mean of the closed
    neighbourhood (here a directed ring with k = 2 in-neighbours, degree 3 with the loop)."""
    N, F = 9, 4
    i = np.arange(N)
    ei = np.stack([np.concatenate([(i + 1) % N, (i + 2) % N]), np.concatenate([i, i])])
    X = np.random.default_rng(8).standard_normal((N, F))
    H = emu.gnn.gcn_layer(X, ei, np.eye(F))
    np.testing.assert_allclose(H, (X + X[(i + 1) % N] + X[(i + 2) % N]) / 3, rtol=1e-13)


# =========================================================================== bad input


def _msg(fn, *a, **kw):
    with pytest.raises((ValueError, TypeError)) as e:
        fn(*a, **kw)
    return type(e.value), str(e.value)


def test_emulated_bad_inputs_raise_the_reference_messages(emu):
    rng = np.random.default_rng(9)
    N = 6
    ei = C.random_graph(rng, N, 12)
    X = rng.standard_normal((N, 3))
    W = rng.standard_normal((3, 4))
    w = C.edge_weights(rng, 12)
    out = ei.copy()
    out[1, 3] = 7
    neg = ei.copy()
    neg[0, 0] = -1
    gat = dict(X=X, edge_index=ei, W=rng.standard_normal((3, 4)), a_src=np.ones((2, 2)),
               a_dst=np.ones((2, 2)))
    gin = (X, ei, W, np.zeros(4), np.ones((4, 2)), np.zeros(2))
    p = np.full(N, 0.5)
    y = np.array([0, 1, 1, 0, 1, 0])
    attr = rng.standard_normal((12, 2))
    mlp = (attr, np.ones((2, 4)), np.zeros(4), np.ones((4, 1)), np.zeros(1))
    nan_w = w.copy()
    nan_w[2] = np.nan
    calls = [
        ("to_csr", (ei.astype(np.float64), N), {}), ("to_csr", (out, N), {}),
        ("to_csr", (neg, N), {}), ("to_csr", (ei, 0), {}), ("to_csr", (ei[:1], N), {}),
        ("add_self_loops", (ei, N, w, "median"), {}), ("add_self_loops", (ei, N, w, 1.0, "x"), {}),
        ("add_self_loops", (ei, N, w[:5]), {}),
        ("gcn_norm", (ei, N, -w), {}), ("gcn_norm", (ei, N, None, 1), {}),
        ("gcn_layer", (X, ei, W[:2]), {}), ("gcn_layer", (X, ei, W), dict(edge_weight=-w)),
        ("gcn_layer", (X, ei, W), dict(edge_weight=nan_w)),
        ("gcn_layer", (X, ei, W), dict(b=np.zeros(3))),
        ("gcn_layer", (X, out, W), {}), ("gcn_layer", (X.astype(np.float32), ei, W), {}),
        ("gcn_layer_vjp", (X, ei, W, np.zeros((N, 3))), {}),
        ("gat_layer", (), dict(gat, edge_attr=attr)),
        ("gat_layer", (), dict(gat, negative_slope=-1.0)),
        ("gat_layer", (), dict(gat, edge_attr=np.full((12, 2), np.nan), W_e=np.ones((2, 4)),
                               a_e=np.ones((2, 2)))),
        ("gat_layer", (), dict(gat, W=np.ones((3, 5)))), ("gat_layer", (), dict(gat, fill="x")),
        ("gat_layer_vjp", (), dict(gat, G=np.zeros((N, 2)))),
        ("gin_layer", gin + (np.inf,), {}), ("gin_layer", (X, out) + gin[2:], {}),
        ("gin_layer_vjp", gin + (np.zeros((N, 3)),), {}),
        ("segment_softmax", (np.zeros(12), ei[1] + 1, N), {}),
        ("segment_softmax", (np.zeros(12), ei[1].astype(float), N), {}),
        ("segment_softmax_vjp", (np.zeros(12), ei[1], N, np.zeros(11)), {}),
        ("edge_mlp_weights", mlp, dict(mean=np.zeros(2), std=-np.ones(2))),
        ("edge_mlp_weights", (np.full((12, 2), np.inf),) + mlp[1:], {}),
        ("edge_mlp_weights", mlp, dict(mean=np.zeros(2))),
        ("focal_bce", (p + 1, y), {}), ("focal_bce", (p, 2 * y), {}),
        ("focal_bce", (p, y, 2.0), {}), ("focal_bce_grad", (p, y, 0.5, -1.0), {}),
        ("focal_bce", (p, y), dict(variant="x")),
        ("fuse", (np.zeros((3, N, 2)), "concat", None), {}),
        ("fuse", (np.zeros((3, N, 2)), "global", {"w": np.zeros(2)}), {}),
        ("fuse_vjp", (np.zeros((3, N, 2)), np.zeros((N, 3))), {}),
    ]
    for name, args, kw in calls:
        want = _msg(_ref(name), *args, **kw)
        assert _msg(getattr(emu.gnn, name), *args, **kw) == want, name


def test_emulated_other_array_kinds_are_refused(emu):
    rng = np.random.default_rng(10)
    ei = C.random_graph(rng, 6, 12)
    X = rng.standard_normal((6, 3))
    with pytest.raises(TypeError, match="mixed backends are refused"):
        emu.gnn.gcn_layer(X, ei, [[1.0] * 4] * 3)
    with pytest.raises(TypeError, match="mixed backends are refused"):
        emu.gnn.to_csr(ei.tolist(), 6)


# =========================================================================== GPU


def _dev(cp, kw):
    return {k: (cp.asarray(v) if isinstance(v, np.ndarray) else
                {a: cp.asarray(b) for a, b in v.items()} if isinstance(v, dict) else v)
            for k, v in kw.items()}


def _host(cp, res):
    """A backend result (CuPy arrays in tuples / dicts) on the host, flattened like _flat."""
    if isinstance(res, dict):
        return _flat({k: _host(cp, v) for k, v in res.items()})
    if isinstance(res, tuple):
        return _flat(tuple(_host(cp, v) for v in res))
    return None if res is None else cp.asnumpy(res)


@pytest.mark.gpu
@pytest.mark.parametrize("op", LAYER_OPS + tuple(HEAD_CASES))
def test_gpu_small_cases_match_the_reference(cp, op):
    from backends.cupy import gnn as B

    rng = np.random.default_rng(11)
    if op in HEAD_CASES:
        pairs = [(op, HEAD_CASES[op](rng, "small"))]
    else:
        pairs = [(op, getattr(C, f"cases_{op}")(rng, "small")),
                 (op + "_vjp", getattr(C, f"cases_{op}_vjp")(rng, "small"))]
    for name, cases in pairs:
        for case in cases:
            for dt in ("float32", "float64"):
                low = _cast(case.inputs(), dt)
                want = _ref(name)(**_cast(low, "float64"))
                got = _host(cp, getattr(B, name)(**_dev(cp, low)))
                _assert_close(got, want, dt, f"{name} {case.label}", scaled=dt == "float32")


def _big_calls(rng, N=100_000, E=1_000_000, F=64):
    ei = C.random_graph(rng, N, E)
    X = rng.standard_normal((N, F)).astype(np.float32)

    def m(*s):
        return (rng.standard_normal(s) / np.sqrt(s[0])).astype(np.float32)

    gcn = dict(X=X, edge_index=ei, W=m(F, 64), b=m(64),
               edge_weight=C.edge_weights(rng, E).astype(np.float32))
    gat8 = dict(X=X, edge_index=ei, W=m(F, 64), a_src=m(8, 8), a_dst=m(8, 8), b=m(64))
    gat1 = dict(X=X, edge_index=ei, W=m(F, 64), a_src=m(1, 64), a_dst=m(1, 64),
                edge_attr=m(E, 8), W_e=m(8, 64), a_e=m(1, 64))
    gin = dict(X=X, edge_index=ei, W1=m(F, 64), b1=m(64), W2=m(64, 64), b2=m(64))
    G = m(N, 64)
    return [("gcn_layer", gcn), ("gcn_layer_vjp", dict(gcn, G=G)), ("gat_layer", gat8),
            ("gat_layer_vjp", dict(gat8, G=G)), ("gat_layer", gat1),
            ("gat_layer_vjp", dict(gat1, G=G)), ("gin_layer", gin),
            ("gin_layer_vjp", dict(gin, G=G)),
            ("segment_softmax_vjp", dict(scores=m(E, 8), dst=ei[1], n_nodes=N, G=m(E, 8)))]


@pytest.mark.gpu
def test_gpu_forward_and_backward_are_bitwise_deterministic_at_1e5_nodes_1e6_edges(cp):
    """Spec sec. 9: two runs of every layer and VJP (float32, N = 1e5, E = 1e6) are bitwise
    equal; GCN also against the reference (float32 tolerance)."""
    from backends.cupy import gnn as B

    for name, kw in _big_calls(np.random.default_rng(12)):
        dev = _dev(cp, kw)
        a = _flat(_host(cp, getattr(B, name)(**dev)))
        b = _flat(_host(cp, getattr(B, name)(**dev)))
        for k in a:
            assert a[k].tobytes() == b[k].tobytes(), f"{name} {k} differs between runs"
        if name.startswith("gcn"):
            want = _ref(name)(**_cast(kw, "float64"))
            _assert_close(a, want, "float32", name, scaled=True)


@pytest.mark.gpu
def test_gpu_gat_never_allocates_an_edge_by_head_by_channel_tensor(cp, bk):
    """GAT forward + backward with heads 8 x C 32 on E = 1e6 edges: the memory pool grows by less
    than ONE E x heads x C float32 tensor (1 GB) beyond the inputs."""
    from backends.cupy import gnn as B

    rng = np.random.default_rng(13)
    N, E, F, H, Cc = 20_000, 1_000_000, 64, 8, 32
    kw = dict(X=rng.standard_normal((N, F)).astype(np.float32),
              edge_index=C.random_graph(rng, N, E),
              W=(rng.standard_normal((F, H * Cc)) / 8).astype(np.float32),
              a_src=rng.standard_normal((H, Cc)).astype(np.float32),
              a_dst=rng.standard_normal((H, Cc)).astype(np.float32),
              G=rng.standard_normal((N, H * Cc)).astype(np.float32))
    dev = _dev(cp, kw)
    bk.synchronize()
    bk.reset_peak_memory()
    base = bk.peak_memory()
    B.gat_layer_vjp(**dev)
    bk.synchronize()
    assert bk.peak_memory() - base < E * H * Cc * 4
