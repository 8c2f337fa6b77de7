"""Numba-CUDA gnn (multilayer GNN for predictive maintenance, arXiv 2507.07298) beyond the registry.

(a) CPU: public signatures equal the reference's (refimpl._gnn_layers / _gnn_heads, minus the
    reference-only metrics); every ``gnn_*`` kernel is in the signature table that
    tests/test_backend_numba.py compiles to PTX (cc 9.0) and none is float64 by design;
    ``ATOMIC_PATHS`` is empty and no kernel source uses ``cuda.atomic``.
(b) simulator (tiny sizes): every function vs the float64 reference on the registry's tiny cases
    in float32/float64; the graph-structure ops (``to_csr``, ``add_self_loops`` both modes and
    fills, ``gcn_norm``) exactly equal to the reference for int64 / int32 / uint8 edge_index,
    a multi-block graph with a hub node, an empty and a one-node graph; segment softmax with
    +-inf / NaN scores like the reference; two runs bitwise equal; bad input raises the
    reference's errors; one host read per call (none for ``fuse``); every launch matches a
    compiled signature and every gnn_* kernel runs.
(c) ``gpu``: N = 1e5, E = 1e6 against the reference, and the registry's GPU size (N = 1e6,
    E = 1e7, fp32) bitwise deterministic in forward and backward.
"""

import inspect
import re

import numpy as np
import pytest

from refimpl import _gnn_heads as RH
from refimpl import _gnn_layers as RL
from refimpl import _harness as H
from refimpl._cases import gnn as CG

pytest.importorskip("numba")
from backends.numba_cuda import _kernels as K  # noqa: E402
from backends.numba_cuda import gnn as S  # noqa: E402

from numba_sim import assert_launches_conform, count_host_reads  # noqa: E402
from numba_sim import GPU_REASON, ON_GPU, nb, sim_only  # noqa: E402,F401
from numba_sim import raises_like_reference  # noqa: E402
from numba_sim import rng_for as _rng  # noqa: E402

KERNELS = [n for n in K._SIGNATURES if n.startswith("gnn_")]
# the simulator evaluates kernels on NumPy scalars, which warn on inf - inf (the +-inf / NaN
# tests expect NaN there, as on a GPU)
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
TOL = {"float64": dict(rtol=1e-10, atol=1e-10), "float32": dict(rtol=5e-4, atol=1e-5)}
REF_ONLY = {"AtomicFallbackWarning", "binary_f1", "silhouette_score_np", "davies_bouldin_np"}
LAYER_OPS = ("gcn_layer", "gcn_layer_vjp", "gat_layer", "gat_layer_vjp", "gin_layer",
             "gin_layer_vjp", "segment_softmax", "segment_softmax_vjp")
HEAD_OPS = ("fuse", "fuse_vjp", "focal_bce", "focal_bce_grad", "edge_mlp_weights")


def _ref(op):
    return getattr(RL, op, None) or getattr(RH, op)


def _d(bk, a, dt="float64"):
    a = np.asarray(a)
    return bk.asarray(a.astype(dt) if a.dtype.kind == "f" else a)


def _h(bk, x):
    return np.asarray(bk.to_numpy(x), dtype=np.float64)


def _cast(kw, dt):
    """What the backend sees of the float64 case inputs (the reference gets the same values)."""
    return {k: H.rounded(v, dt) for k, v in kw.items()}


def _dev(bk, kw, dt):
    def one(v):
        if isinstance(v, np.ndarray):
            return _d(bk, v, dt)
        if isinstance(v, dict):
            return {k: one(x) for k, x in v.items()}
        return v
    return {k: one(v) for k, v in kw.items()}


def _compare(bk, got, ref, dt, name):
    """Nested results (dicts, tuples, arrays, None, floats) to the registry tolerance."""
    if isinstance(ref, dict):
        assert list(got) == list(ref), (name, list(got), list(ref))
        for k in ref:
            _compare(bk, got[k], ref[k], dt, f"{name}.{k}")
    elif isinstance(ref, tuple):
        assert isinstance(got, tuple) and len(got) == len(ref), name
        for i, (g, r) in enumerate(zip(got, ref)):
            _compare(bk, g, r, dt, f"{name}[{i}]")
    elif ref is None:
        assert got is None, name
    else:
        r = np.asarray(ref, dtype=np.float64)
        assert got.dtype == np.dtype(dt) and tuple(got.shape) == r.shape, name
        np.testing.assert_allclose(_h(bk, got), r, err_msg=name, **TOL[dt])


def _tiny_cases(op, seed):
    base = op.replace("_grad", "")
    fn = getattr(CG, f"cases_{op}", None) or getattr(CG, f"cases_{base}")
    return fn(_rng(seed), "tiny")


def _ints(bk, a):
    return np.asarray(bk.to_numpy(a))


# --------------------------------------------------------------------------- (a) CPU


def test_public_functions_have_the_reference_signatures():
    funcs = [n for n in S.__all__ if n != "ATOMIC_PATHS"]
    for name in funcs:
        assert inspect.signature(getattr(S, name)) == inspect.signature(_ref(name)), name
    assert set(funcs) == (set(RL.__all__) | set(RH.__all__)) - REF_ONLY


def test_gnn_kernels_are_listed_none_float64_by_design_and_no_atomics():
    built = {n for n in K.functions("float64") if n.startswith("gnn_")}
    assert built == set(KERNELS) and len(KERNELS) >= 40
    ids = {name for name, _, _ in K.specs()}
    assert all(f"{n}[{dt}]" in ids for n in KERNELS for dt in K.DTYPES)
    assert not {n for n in K.FP64_BY_DESIGN if n.startswith("gnn_")}
    assert S.ATOMIC_PATHS == {}
    funcs = K.functions("float32")
    for n in KERNELS:
        assert "cuda.atomic" not in inspect.getsource(funcs[n]), n


# --------------------------------------------------------------------------- (b) simulator


@sim_only
@pytest.mark.parametrize("dt", ["float64", "float32"])
@pytest.mark.parametrize("op", LAYER_OPS + HEAD_OPS)
def test_sim_registry_tiny_cases_match_the_reference(nb, op, dt):
    for case in _tiny_cases(op, 1):
        kw = case.kwargs
        _compare(nb, getattr(S, op)(**_dev(nb, kw, dt)), _ref(op)(**_cast(kw, dt)), dt,
                 f"{op}/{case.label}")


def _graph(seed, N=9, E=40, hub=True):
    """A random multigraph (duplicates, repeated loops, an isolated node) with a hub node 0 that
    receives a third of the edges."""
    rng = _rng(seed)
    ei = CG.random_graph(rng, N, E)
    if hub:
        ei[1, : E // 3] = 0
        ei[0, : E // 3] = np.where(ei[0, : E // 3] == N // 2, 1, ei[0, : E // 3])
    ei[:, [3, 7]] = [[2, 2], [2, 2]]                         # two more loops of node 2
    return ei, rng


@sim_only
@pytest.mark.parametrize("idx", ["int64", "int32", "uint8"])
def test_sim_structure_ops_equal_the_reference(nb, idx):
    ei, rng = _graph(2)
    N, E = 9, ei.shape[1]
    dei = nb.asarray(ei.astype(idx))
    for g, r in zip(S.to_csr(dei, N), RL.to_csr(ei, N)):
        assert g.dtype == np.int64
        np.testing.assert_array_equal(_ints(nb, g), r)
    w1, w2 = rng.uniform(0.5, 1.5, E), rng.standard_normal((E, 3))
    grid = [(w, mode, fill, "float64") for w in (None, w1, w2) for mode in ("remaining", "replace")
            for fill in (1.0, "mean", -0.5)]
    grid += [(w1, "remaining", "mean", "float32"), (w2, "replace", "mean", "float32")]
    if idx != "int64":                  # the widening is shared: a few combinations suffice
        grid = [(w2, "remaining", "mean", "float32"), (w1, "replace", -0.5, "float64")]
    for w, mode, fill, dt in grid:
        wd = None if w is None else _d(nb, w, dt)
        ge, gw = S.add_self_loops(dei, N, wd, fill, mode)
        re_, rw = RL.add_self_loops(ei, N, None if w is None else w.astype(dt).astype(np.float64),
                                    fill, mode)
        np.testing.assert_array_equal(_ints(nb, ge), re_)
        if w is None:
            assert gw is None
        else:
            assert gw.dtype == np.dtype(dt) and gw.shape == rw.shape
            np.testing.assert_allclose(_h(nb, gw), rw, **TOL[dt])
    for w in (None, w1):
        for improved in (False, True):
            for loops in (True, False):
                wd = None if w is None else _d(nb, w)
                ge, gw = S.gcn_norm(dei, N, wd, improved, loops)
                re_, rw = RL.gcn_norm(ei, N, w, improved, loops)
                np.testing.assert_array_equal(_ints(nb, ge), re_)
                assert gw.dtype == np.float64
                np.testing.assert_allclose(_h(nb, gw), rw, rtol=1e-12, atol=1e-14)


@sim_only
def test_sim_layers_on_a_hub_graph_match_the_reference(nb):
    """More edges than threads per block and a hub row: rows of very different degrees, the
    transposed CSR, the loops of a node present three times."""
    ei, rng = _graph(3)
    N, E, F = 9, ei.shape[1], 3
    X, G4 = rng.standard_normal((N, F)), rng.standard_normal((N, 4))
    W, b, w = rng.standard_normal((F, 4)), rng.standard_normal(4), rng.uniform(0.5, 1.5, E)
    d = lambda a: _d(nb, a)  # noqa: E731
    for args in ((W, None, w, True, True, True), (W, b, w, False, False, True),
                 (W, b, None, True, True, True)):
        kw = dict(zip(("W", "b", "edge_weight", "improved", "add_loops", "normalize"), args))
        _compare(nb, S.gcn_layer_vjp(d(X), d(ei), G=d(G4), **{k: (d(v) if isinstance(
            v, np.ndarray) else v) for k, v in kw.items()}),
            RL.gcn_layer_vjp(X, ei, G=G4, **kw), "float64", "gcn_vjp")
    a_src, a_dst, a_e = (rng.standard_normal((2, 2)) for _ in range(3))
    Wg, We = rng.standard_normal((F, 4)), rng.standard_normal((3, 4))
    A = rng.standard_normal((E, 3))
    for concat, loops, fill in ((True, True, "mean"), (False, True, 0.3), (True, False, "mean")):
        kw = dict(b=None, edge_attr=A, W_e=We, a_e=a_e, negative_slope=0.1, concat=concat,
                  add_loops=loops, fill=fill)
        G = G4 if concat else G4[:, :2]
        dkw = {k: (d(v) if isinstance(v, np.ndarray) else v) for k, v in kw.items()}
        _compare(nb, S.gat_layer(d(X), d(ei), d(Wg), d(a_src), d(a_dst), **dkw),
                 RL.gat_layer(X, ei, Wg, a_src, a_dst, **kw), "float64", "gat")
        _compare(nb, S.gat_layer_vjp(d(X), d(ei), d(Wg), d(a_src), d(a_dst), d(G), **dkw),
                 RL.gat_layer_vjp(X, ei, Wg, a_src, a_dst, G, **kw), "float64", "gat_vjp")
    W1, b1, W2, b2 = (rng.standard_normal(s) for s in ((F, 5), (5,), (5, 4), (4,)))
    _compare(nb, S.gin_layer_vjp(d(X), d(ei), d(W1), d(b1), d(W2), d(b2), d(G4), eps=-1.0),
             RL.gin_layer_vjp(X, ei, W1, b1, W2, b2, G4, eps=-1.0), "float64", "gin_vjp")


@sim_only
def test_sim_empty_and_single_node_graphs(nb):
    rng = _rng(4)
    e0 = np.zeros((2, 0), np.int64)
    for g, r in zip(S.to_csr(nb.asarray(e0), 3), RL.to_csr(e0, 3)):
        np.testing.assert_array_equal(_ints(nb, g), r)
    X, W = rng.standard_normal((3, 2)), rng.standard_normal((2, 2))
    for loops in (True, False):   # no edges: loops only, or H = b
        _compare(nb, S.gcn_layer(_d(nb, X), nb.asarray(e0), _d(nb, W), _d(nb, W[0]),
                                 add_loops=loops),
                 RL.gcn_layer(X, e0, W, W[0], add_loops=loops), "float64", "gcn_empty")
    e1 = np.array([[0, 0], [0, 0]])                            # one node, a doubled loop
    X1 = rng.standard_normal((1, 2))
    a = rng.standard_normal((1, 2))
    _compare(nb, S.gat_layer(_d(nb, X1), nb.asarray(e1), _d(nb, W), _d(nb, a), _d(nb, a)),
             RL.gat_layer(X1, e1, W, a, a), "float64", "gat_one_node")


@sim_only
def test_sim_gat_never_allocates_an_edge_by_heads_by_channels_tensor(nb, monkeypatch):
    """Forward and backward with edge attributes: no device array of E' x heads x C entries
    (heads 3, C 5 and the graph's sizes are chosen so that no other array has that size)."""
    ei, rng = _graph(9, N=7, E=16, hub=False)
    Ep = 16 - int((ei[0] == ei[1]).sum()) + 7
    heads, C, F, D = 3, 5, 2, 2
    sizes = []
    empty = K.empty
    monkeypatch.setattr(K, "empty", lambda shape, dtype: sizes.append(
        int(np.prod(shape))) or empty(shape, dtype))
    d = lambda a: _d(nb, a)  # noqa: E731
    X, W, G = (rng.standard_normal(s) for s in ((7, F), (F, heads * C), (7, heads * C)))
    a_s, a_d, a_e = (rng.standard_normal((heads, C)) for _ in range(3))
    A, We = rng.standard_normal((16, D)), rng.standard_normal((D, heads * C))
    got = S.gat_layer_vjp(d(X), d(ei), d(W), d(a_s), d(a_d), d(G), edge_attr=d(A), W_e=d(We),
                          a_e=d(a_e))
    S.gat_layer(d(X), d(ei), d(W), d(a_s), d(a_d), edge_attr=d(A), W_e=d(We), a_e=d(a_e))
    assert sizes and Ep * heads * C not in sizes and max(sizes) < Ep * heads * C
    ref = RL.gat_layer_vjp(X, ei, W, a_s, a_d, G, edge_attr=A, W_e=We, a_e=a_e)
    _compare(nb, got, ref, "float64", "gat_vjp_h3")


@sim_only
def test_sim_segment_softmax_special_values_follow_the_reference(nb):
    dst = np.array([0, 0, 0, 1, 1, 2, 2, 3, 3, 3])
    s = np.array([[1.0, -np.inf], [np.inf, -np.inf], [0.5, 2.0], [-np.inf, 1.0], [-np.inf, np.nan],
                  [np.inf, np.inf], [3.0, -1.0], [0.0, -np.inf], [2.0, 1.0], [-1.0, 0.5]])
    got = _h(nb, S.segment_softmax(_d(nb, s), nb.asarray(dst), 5))
    with np.errstate(invalid="ignore"):
        ref = RL.segment_softmax(s, dst, 5)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(ref))
    ok = ~np.isnan(ref)
    np.testing.assert_allclose(got[ok], ref[ok], rtol=1e-12, atol=1e-15)


@sim_only
def test_sim_two_runs_are_bitwise_equal(nb):
    ei, rng = _graph(5)
    N, E, F = 9, ei.shape[1], 3
    d = lambda a: _d(nb, a, "float32")  # noqa: E731
    X, W, G = rng.standard_normal((N, F)), rng.standard_normal((F, 4)), rng.standard_normal((N, 4))
    a = rng.standard_normal((2, 2))
    w = rng.uniform(0.5, 1.5, E)
    runs = []
    for _ in range(2):
        out = S.gcn_layer_vjp(d(X), d(ei), d(W), d(G), edge_weight=d(w))
        out.update({f"gat_{k}": v for k, v in S.gat_layer_vjp(d(X), d(ei), d(W), d(a), d(a),
                                                               d(G)).items()})
        out["H"], out["alpha"] = S.gat_layer(d(X), d(ei), d(W), d(a), d(a))
        runs.append({k: np.asarray(nb.to_numpy(v)) for k, v in out.items()})
    for k in runs[0]:
        np.testing.assert_array_equal(runs[0][k], runs[1][k], err_msg=k)


@sim_only
def test_sim_bad_input_raises_the_reference_errors(nb):
    rng = _rng(6)
    kw = CG.gcn_inputs(rng, CG.TINY, 4)
    X, ei, W, w = kw["X"], kw["edge_index"], kw["W"], kw["edge_weight"]
    d = lambda a: _d(nb, a)  # noqa: E731
    bad = ei.copy()
    bad[1, 4] = 7
    raises_like_reference(lambda: RL.gcn_layer(X, bad, W), lambda: S.gcn_layer(d(X), d(bad), d(W)))
    neg = ei.copy()
    neg[0, 2] = -1
    raises_like_reference(lambda: RL.to_csr(neg, 6), lambda: S.to_csr(d(neg), 6))
    raises_like_reference(lambda: RL.to_csr(ei.astype(float), 6),
                          lambda: S.to_csr(d(ei.astype(float)), 6))
    raises_like_reference(lambda: RL.gcn_layer(X, ei, W[:2]), lambda: S.gcn_layer(d(X), d(ei),
                                                                                   d(W[:2])))
    wn = -w
    raises_like_reference(lambda: RL.gcn_layer(X, ei, W, edge_weight=wn),
                          lambda: S.gcn_layer(d(X), d(ei), d(W), edge_weight=d(wn)))
    wnan = w.copy()
    wnan[0] = np.nan
    raises_like_reference(lambda: RL.gcn_norm(ei, 6, wnan), lambda: S.gcn_norm(d(ei), 6, d(wnan)))
    g = CG.gat_inputs(rng, CG.TINY, 2, 2, D=2)
    ea = g["edge_attr"].copy()
    ea[1, 1] = np.inf
    args = (g["X"], ei, g["W"], g["a_src"], g["a_dst"])
    raises_like_reference(lambda: RL.gat_layer(*args, edge_attr=ea, W_e=g["W_e"], a_e=g["a_e"]),
                          lambda: S.gat_layer(*map(d, args), edge_attr=d(ea), W_e=d(g["W_e"]),
                                              a_e=d(g["a_e"])))
    raises_like_reference(lambda: RL.gat_layer(*args, edge_attr=ea),
                          lambda: S.gat_layer(*map(d, args), edge_attr=d(ea)))
    raises_like_reference(lambda: RL.segment_softmax(X[:, 0], ei[1], 2),
                          lambda: S.segment_softmax(d(X[:, 0]), d(ei[1]), 2))
    raises_like_reference(lambda: RL.gin_layer(X, ei, W, W[0], W.T, X[0], eps=np.inf),
                          lambda: S.gin_layer(d(X), d(ei), d(W), d(W[0]), d(W.T), d(X[0]),
                                              eps=np.inf))
    f = CG.focal_inputs(rng, 6, "code")
    yb = f["y"].copy()
    yb[0] = 2
    raises_like_reference(lambda: RH.focal_bce(f["outputs"], yb),
                          lambda: S.focal_bce(d(f["outputs"]), d(yb)))
    raises_like_reference(lambda: RH.focal_bce(f["outputs"] + 1.0, f["y"]),
                          lambda: S.focal_bce(d(f["outputs"] + 1.0), d(f["y"])))
    m = CG.edge_mlp_inputs(rng, 12, 3, standardise=True)
    sd = -m["std"]
    raises_like_reference(
        lambda: RH.edge_mlp_weights(m["edge_attr"], m["W1"], m["b1"], m["W2"], m["b2"],
                                    m["mean"], sd),
        lambda: S.edge_mlp_weights(*(d(m[k]) for k in ("edge_attr", "W1", "b1", "W2", "b2",
                                                       "mean")), d(sd)))
    Hs = rng.standard_normal((3, 4, 2))
    raises_like_reference(lambda: RH.fuse(Hs, "semantic"), lambda: S.fuse(d(Hs), "semantic"))
    with pytest.raises(TypeError, match="numpy.ndarray; the numba_cuda backend"):
        S.gcn_layer(X, d(ei), d(W))                           # host arrays are refused
    with pytest.raises(TypeError, match=re.escape("labels of dtype float16")):
        S.focal_bce(d(f["outputs"]), nb.asarray(f["y"].astype(np.float16)))


@sim_only
def test_sim_one_host_read_per_call(nb, monkeypatch):
    ei, rng = _graph(7)
    N, E = 9, ei.shape[1]
    d = lambda a: _d(nb, a)  # noqa: E731
    X, W, G = (d(rng.standard_normal(s)) for s in ((N, 3), (3, 4), (N, 4)))
    a = d(rng.standard_normal((2, 2)))
    w, A = d(rng.uniform(0.5, 1.5, E)), d(rng.standard_normal((E, 2)))
    We = d(rng.standard_normal((2, 4)))
    f = CG.focal_inputs(rng, 6, "code")
    m = CG.edge_mlp_inputs(rng, 12, 3, standardise=True)
    Hs, Gf = d(rng.standard_normal((3, N, 4))), d(rng.standard_normal((N, 4)))
    e = nb.asarray(ei.astype(np.int32))
    calls = [
        lambda: S.to_csr(e, N),
        lambda: S.add_self_loops(e, N, A, "mean", "replace"),
        lambda: S.gcn_norm(e, N, w),
        lambda: S.gcn_layer_vjp(X, e, W, G, edge_weight=w),
        lambda: S.segment_softmax_vjp(A, e[1], N, A),
        lambda: S.gat_layer_vjp(X, e, W, a, a, G, edge_attr=A, W_e=We, a_e=a),
        lambda: S.gin_layer_vjp(X, e, W, W[0], d(np.eye(4)), W[0], G),
        lambda: S.focal_bce_grad(d(f["outputs"]), nb.asarray(f["y"])),
        lambda: S.edge_mlp_weights(*(d(m[k]) for k in ("edge_attr", "W1", "b1", "W2", "b2",
                                                       "mean", "std"))),
    ]
    for call in calls:
        reads = count_host_reads(monkeypatch)
        call()
        assert len(reads) == 1, reads
        monkeypatch.undo()
    reads = count_host_reads(monkeypatch)
    S.fuse_vjp(Hs, Gf, "node", {k: d(v) for k, v in CG.fuse_params(rng, "node", 3, 4, 2).items()})
    S.to_csr(nb.asarray(np.zeros((2, 0), np.int64)), 3)      # nothing to check on the device
    assert reads == []


@sim_only
@pytest.mark.parametrize("dt", ["float32", "float64"])
def test_sim_every_launch_matches_a_compiled_signature(nb, monkeypatch, dt):

    monkeypatch.setattr(K, "RECORD", [])
    ei, rng = _graph(8, N=7, E=16, hub=False)
    N, E = 7, ei.shape[1]
    d = lambda a: _d(nb, a, dt)  # noqa: E731
    X, W, G = (d(rng.standard_normal(s)) for s in ((N, 3), (3, 4), (N, 4)))
    a = d(rng.standard_normal((2, 2)))
    w, A = d(rng.uniform(0.5, 1.5, E)), d(rng.standard_normal((E, 2)))
    We = d(rng.standard_normal((2, 4)))
    e32 = nb.asarray(ei.astype(np.int32))
    S.to_csr(e32, N)
    S.add_self_loops(d(ei), N, A, "mean", "remaining")
    S.gcn_norm(d(ei), N, None, True)
    S.gcn_layer_vjp(X, e32, W, G, d(rng.standard_normal(4)), w)
    S.segment_softmax_vjp(A, d(ei[1]), N, A)
    S.gat_layer_vjp(X, d(ei), W, a, a, G[:, :2], d(np.ones(2)), A, We, a, concat=False)
    S.gat_layer(X, d(ei), W, a, a, d(np.ones(2)), A, We, a, concat=False, fill=0.5)
    S.gin_layer_vjp(X, d(ei), W, W[0], d(np.eye(4)), W[0], G, eps=0.5)
    f = CG.focal_inputs(rng, 6, "logits")
    S.focal_bce_grad(d(f["outputs"]), nb.asarray(f["y"].astype(bool)), variant="logits")
    m = CG.edge_mlp_inputs(rng, 12, 3, standardise=True)
    S.edge_mlp_weights(*(d(m[k]) for k in ("edge_attr", "W1", "b1", "W2", "b2", "mean", "std")))
    Hs, Gf = d(rng.standard_normal((3, N, 4))), d(rng.standard_normal((N, 4)))
    for mode, width in (("global", 1), ("concat", 3), ("semantic", 2), ("node", 2)):
        P = {k: d(v) for k, v in CG.fuse_params(rng, mode, 3, 4, width).items()}
        S.fuse_vjp(Hs, Gf if mode != "concat" else d(rng.standard_normal((N, 3))), mode, P)
    ran = {rec[0] for rec in K.RECORD if rec[0].startswith("gnn_")}
    assert_launches_conform(K.RECORD)
    assert ran == set(KERNELS), f"gnn_* kernels that never ran: {set(KERNELS) - ran}"
    funcs = K.functions(dt)                   # the reused cd_* / pref_* / rv_* kernels too
    atomic = {n for n, _, _ in K.RECORD if "cuda.atomic" in inspect.getsource(funcs[n])}
    assert not atomic, f"kernels with atomics launched: {atomic}"


# --------------------------------------------------------------------------- (c) real device


def _gpu_graph(rng, N, E):
    ei = np.stack([rng.integers(0, N, E), rng.integers(0, N, E)])
    ei[1, : E // 100] = 0                                     # a hub with E / 100 in-edges
    return ei


@pytest.mark.gpu
@pytest.mark.skipif(not ON_GPU, reason=GPU_REASON)
def test_gpu_layers_match_the_reference_at_1e5_nodes():
    import backends

    bk = backends.get("numba_cuda")
    rng = _rng(20)
    N, E, F = 100_000, 1_000_000, 16
    ei = _gpu_graph(rng, N, E)
    X, G = rng.standard_normal((N, F)), rng.standard_normal((N, F))
    W, w = rng.standard_normal((F, F)) / 4, rng.uniform(0.5, 1.5, E)
    a = rng.standard_normal((4, 4))
    d = lambda v: _d(bk, v)  # noqa: E731
    _compare(bk, S.gcn_layer_vjp(d(X), d(ei), d(W), d(G), edge_weight=d(w)),
             RL.gcn_layer_vjp(X, ei, W, G, edge_weight=w), "float64", "gcn")
    _compare(bk, S.gat_layer(d(X), d(ei), d(W), d(a), d(a)), RL.gat_layer(X, ei, W, a, a),
             "float64", "gat")
    _compare(bk, S.gat_layer_vjp(d(X), d(ei), d(W), d(a), d(a), d(G)),
             RL.gat_layer_vjp(X, ei, W, a, a, G), "float64", "gat_vjp")
    _compare(bk, S.gin_layer_vjp(d(X), d(ei), d(W), d(W[0]), d(W), d(W[1]), d(G)),
             RL.gin_layer_vjp(X, ei, W, W[0], W, W[1], G), "float64", "gin_vjp")


@pytest.mark.gpu
@pytest.mark.skipif(not ON_GPU, reason=GPU_REASON)
@pytest.mark.parametrize("heads,C", [(1, 64), (8, 8)])
def test_gpu_registry_size_is_bitwise_deterministic(heads, C):
    import backends

    bk = backends.get("numba_cuda")
    rng = _rng(21)
    N, E, F = 1_000_000, 10_000_000, 64
    ei = bk.asarray(_gpu_graph(rng, N, E))
    d = lambda v: _d(bk, v, "float32")  # noqa: E731
    X, G = d(rng.standard_normal((N, F))), d(rng.standard_normal((N, heads * C)))
    W = d(rng.standard_normal((F, heads * C)) / 8)
    a1, a2 = d(rng.standard_normal((heads, C))), d(rng.standard_normal((heads, C)))
    runs = []
    for _ in range(2):
        out = dict(S.gat_layer_vjp(X, ei, W, a1, a2, G))
        out["H"], out["alpha"] = S.gat_layer(X, ei, W, a1, a2)
        if heads == 1:
            out.update({f"gcn_{k}": v for k, v in S.gcn_layer_vjp(X, ei, W, G).items()})
            out["gcn_H"] = S.gcn_layer(X, ei, W)
        runs.append({k: bk.to_numpy(v) for k, v in out.items()})
    for k in runs[0]:
        assert np.isfinite(runs[0][k]).all(), k
        np.testing.assert_array_equal(runs[0][k], runs[1][k], err_msg=k)
