"""Reference tests of the gnn family's graph layers (arXiv 2507.07298; spec gnn_pdm.md secs. 2,
6, 8, 9): every layer against PyTorch Geometric's GCNConv / GATConv / GINConv with copied
weights in float64, PyG's loop / normalisation / softmax utilities as oracles of ours, the
explicit VJPs against central finite differences and against torch autograd through PyG, the
properties of sec. 9 (softmax rows sum to 1, permutation equivariance, the closed-neighbourhood
average, GIN with eps = -1, isolated nodes), the CSR conversion, argument errors, and the
registry cases."""

import functools

import numpy as np
import pytest

import finite_diff
from refimpl import _gnn_layers as L
from refimpl import _validate as V
from refimpl._cases import gnn as C

fd_grad = functools.partial(finite_diff.fd_grad, h=1e-6)

TINY = C.TINY


def tiny_graph(seed=0, N=6, E=12):
    """The registry's tiny graph: isolated node N // 2, a duplicated edge, a loop present twice."""
    return C.random_graph(np.random.default_rng(seed), N, E)


def _std(ei):
    """Our CSR order of an edge list (stable sort by (dst, src))."""
    return np.lexsort((ei[0], ei[1]))


# --------------------------------------------------------------------------- PyG helpers


def _pyg():
    return pytest.importorskip("torch_geometric")


def _t(a, grad=False):
    import torch

    if a is None:
        return None
    t = torch.tensor(np.asarray(a))
    if grad:
        t.requires_grad_(True)
    return t


def pyg_gcn(kw):
    """A float64 GCNConv with kw's weights (lin.weight = W^T)."""
    _pyg()
    import torch
    from torch_geometric.nn import GCNConv

    F, F_out = kw["W"].shape
    normalize = kw.get("normalize", True)
    conv = GCNConv(F, F_out, improved=kw.get("improved", False),
                   add_self_loops=kw.get("add_loops", True) and normalize, normalize=normalize,
                   bias=kw.get("b") is not None).double()
    with torch.no_grad():
        conv.lin.weight.copy_(torch.tensor(kw["W"].T))
        if kw.get("b") is not None:
            conv.bias.copy_(torch.tensor(kw["b"]))
    return conv


def pyg_gat(kw):
    """A float64 GATConv (residual off) with kw's weights: lin.weight = W^T, att_src/att_dst
    (1, heads, C), lin_edge.weight = W_e^T, att_edge, bias."""
    _pyg()
    import torch
    from torch_geometric.nn import GATConv

    heads, Cc = kw["a_src"].shape
    F = kw["W"].shape[0]
    D = None if kw.get("edge_attr") is None else kw["edge_attr"].shape[1]
    fill = kw.get("fill", "mean")
    conv = GATConv(F, Cc, heads=heads, concat=kw.get("concat", True),
                   negative_slope=kw.get("negative_slope", 0.2),
                   add_self_loops=kw.get("add_loops", True), edge_dim=D, fill_value=fill,
                   bias=kw.get("b") is not None, residual=False).double()
    with torch.no_grad():
        conv.lin.weight.copy_(torch.tensor(kw["W"].T))
        conv.att_src.copy_(torch.tensor(kw["a_src"][None]))
        conv.att_dst.copy_(torch.tensor(kw["a_dst"][None]))
        if D is not None:
            conv.lin_edge.weight.copy_(torch.tensor(kw["W_e"].T))
            conv.att_edge.copy_(torch.tensor(kw["a_e"][None]))
        if kw.get("b") is not None:
            conv.bias.copy_(torch.tensor(kw["b"]))
    return conv


def pyg_gin(kw):
    _pyg()
    import torch
    from torch_geometric.nn import GINConv

    F, hidden = kw["W1"].shape
    F_out = kw["W2"].shape[1]
    mlp = torch.nn.Sequential(torch.nn.Linear(F, hidden), torch.nn.ReLU(),
                              torch.nn.Linear(hidden, F_out)).double()
    conv = GINConv(mlp, eps=kw.get("eps", 0.0), train_eps=False).double()
    with torch.no_grad():                 # after GINConv(...), whose reset re-draws the MLP
        mlp[0].weight.copy_(torch.tensor(kw["W1"].T))
        mlp[0].bias.copy_(torch.tensor(kw["b1"]))
        mlp[2].weight.copy_(torch.tensor(kw["W2"].T))
        mlp[2].bias.copy_(torch.tensor(kw["b2"]))
    return conv


def gcn_kw(seed=0, **opts):
    return C.gcn_inputs(np.random.default_rng(seed), TINY, 4, **opts)


def gat_kw(seed=0, heads=2, Cc=2, **opts):
    return C.gat_inputs(np.random.default_rng(seed), TINY, heads, Cc, **opts)


def gin_kw(seed=0, **opts):
    return C.gin_inputs(np.random.default_rng(seed), TINY, 5, 4, **opts)


GCN_OPTS = [dict(), dict(weighted=False), dict(improved=True), dict(add_loops=False),
            dict(normalize=False, bias=False), dict(normalize=False, weighted=False),
            dict(add_loops=False, bias=False, weighted=False)]


# --------------------------------------------------------------------------- vs PyG layers


@pytest.mark.parametrize("opts", GCN_OPTS, ids=lambda o: "-".join(f"{k}{v}" for k, v in o.items())
                         or "default")
@pytest.mark.parametrize("size", ["tiny", "small"])
def test_gcn_layer_matches_pyg(opts, size):
    if size == "tiny":
        kw = gcn_kw(1, **opts)
    else:
        kw = C.gcn_inputs(np.random.default_rng(2), C.SMALL, 8, **opts)
    conv = pyg_gcn(kw)
    w = kw.get("edge_weight")
    if w is None and kw["improved"]:          # PyG ignores improved without weights (below)
        w = np.ones(kw["edge_index"].shape[1])
    want = conv(_t(kw["X"]), _t(kw["edge_index"]), _t(w)).detach().numpy()
    np.testing.assert_allclose(L.gcn_layer(**kw), want, rtol=1e-10, atol=1e-10)


GAT_OPTS = [dict(heads=1, Cc=3), dict(heads=4, Cc=2), dict(heads=4, Cc=2, concat=False),
            dict(heads=4, Cc=2, D=3), dict(heads=4, Cc=2, D=3, concat=False, add_loops=False),
            dict(heads=1, Cc=3, D=2, fill=0.5), dict(heads=2, Cc=2, add_loops=False, bias=False),
            dict(heads=2, Cc=3, negative_slope=0.05, D=1)]


@pytest.mark.parametrize("opts", GAT_OPTS, ids=lambda o: "-".join(f"{k}{v}" for k, v in o.items()))
def test_gat_layer_matches_pyg(opts):
    kw = gat_kw(3, **opts)
    conv = pyg_gat(kw)
    out, (ei, alpha) = conv(_t(kw["X"]), _t(kw["edge_index"]), _t(kw.get("edge_attr")),
                            return_attention_weights=True)
    H, a = L.gat_layer(**kw)
    np.testing.assert_allclose(H, out.detach().numpy(), rtol=1e-10, atol=1e-10)
    ei = ei.numpy()
    p = _std(ei)                   # PyG: non-loop edges in input order, then its loops
    np.testing.assert_allclose(a, alpha.detach().numpy()[p], rtol=1e-10, atol=1e-12)
    assert a.shape == (ei.shape[1], kw["a_src"].shape[0])


def test_gat_layer_matches_pyg_small():
    kw = C.gat_inputs(np.random.default_rng(4), C.SMALL, 4, 8, D=8)
    out, (ei, alpha) = pyg_gat(kw)(_t(kw["X"]), _t(kw["edge_index"]), _t(kw["edge_attr"]),
                                   return_attention_weights=True)
    H, a = L.gat_layer(**kw)
    np.testing.assert_allclose(H, out.detach().numpy(), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(a, alpha.detach().numpy()[_std(ei.numpy())], rtol=1e-10,
                               atol=1e-12)


@pytest.mark.parametrize("eps", [0.0, 0.5, -1.0])
def test_gin_layer_matches_pyg(eps):
    kw = gin_kw(5, eps=eps)
    want = pyg_gin(kw)(_t(kw["X"]), _t(kw["edge_index"])).detach().numpy()
    np.testing.assert_allclose(L.gin_layer(**kw), want, rtol=1e-10, atol=1e-10)


# --------------------------------------------------------------------------- vs PyG utilities


@pytest.mark.parametrize("attr_dim", [None, 1, 3])
@pytest.mark.parametrize("fill", [1.0, 2.5, "mean"])
def test_add_self_loops_remaining_matches_pyg(attr_dim, fill):
    _pyg()
    from torch_geometric.utils import add_remaining_self_loops

    rng = np.random.default_rng(6)
    ei = tiny_graph(6)
    w = None
    if attr_dim is not None:
        w = rng.standard_normal(12) if attr_dim == 1 else rng.standard_normal((12, attr_dim))
    ei2, w2 = add_remaining_self_loops(_t(ei), _t(w), fill_value=fill, num_nodes=6)
    p = _std(ei2.numpy())
    got_ei, got_w = L.add_self_loops(ei, 6, w, fill=fill, mode="remaining")
    np.testing.assert_array_equal(got_ei, ei2.numpy()[:, p])
    assert got_ei.dtype == np.int64
    if w is None:
        assert got_w is None
    else:
        np.testing.assert_allclose(got_w, w2.numpy()[p], rtol=0, atol=1e-15)


def test_add_self_loops_remaining_keeps_the_last_loop():
    ei = np.array([[0, 2, 1, 2, 0], [1, 2, 0, 2, 2]])
    w = np.array([1.0, 7.0, 2.0, 9.0, 3.0])          # node 2 has loops 7 then 9
    got_ei, got_w = L.add_self_loops(ei, 4, w, fill=0.5)
    loops = got_ei[0] == got_ei[1]
    np.testing.assert_array_equal(got_ei[:, loops], [[0, 1, 2, 3], [0, 1, 2, 3]])
    np.testing.assert_array_equal(got_w[loops], [0.5, 0.5, 9.0, 0.5])
    assert loops.sum() == 4 and got_ei.shape[1] == 3 + 4


@pytest.mark.parametrize("fill", [0.25, "mean"])
@pytest.mark.parametrize("attr_dim", [None, 1, 2])
def test_add_self_loops_replace_matches_pyg(fill, attr_dim):
    _pyg()
    from torch_geometric.utils import add_self_loops, remove_self_loops

    rng = np.random.default_rng(7)
    ei = tiny_graph(7)
    w = None
    if attr_dim is not None:
        w = rng.standard_normal(12) if attr_dim == 1 else rng.standard_normal((12, attr_dim))
    e1, w1 = remove_self_loops(_t(ei), _t(w))
    e2, w2 = add_self_loops(e1, w1, fill_value=fill, num_nodes=6)
    p = _std(e2.numpy())
    got_ei, got_w = L.add_self_loops(ei, 6, w, fill=fill, mode="replace")
    np.testing.assert_array_equal(got_ei, e2.numpy()[:, p])
    if w is not None:
        np.testing.assert_allclose(got_w, w2.numpy()[p], rtol=0, atol=1e-15)
        iso = 3                                          # no incoming edge: mean fill gives 0
        if fill == "mean":
            assert np.all(got_w[(got_ei[0] == iso) & (got_ei[1] == iso)] == 0)


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("improved", [False, True])
@pytest.mark.parametrize("add_loops", [False, True])
def test_gcn_norm_matches_pyg(weighted, improved, add_loops):
    """Unweighted graphs are given to PyG with explicit unit weights: see the next test."""
    _pyg()
    import torch
    from torch_geometric.nn.conv.gcn_conv import gcn_norm

    ei = tiny_graph(8)
    w = C.edge_weights(np.random.default_rng(8), 12) if weighted else None
    pw = np.ones(12) if w is None else w
    e2, w2 = gcn_norm(_t(ei), _t(pw), 6, improved, add_loops, dtype=torch.float64)
    p = _std(e2.numpy())
    got_ei, got_w = L.gcn_norm(ei, 6, w, improved=improved, add_loops=add_loops)
    np.testing.assert_array_equal(got_ei, e2.numpy()[:, p])
    np.testing.assert_allclose(got_w, w2.numpy()[p], rtol=1e-12, atol=1e-15)


def test_pyg_ignores_improved_without_edge_weights():
    """Documents a PyG 2.8.1 quirk we do not follow: in the edge_index path of ``gcn_norm`` the
    unit weights are created AFTER ``add_remaining_self_loops``, which therefore ignores its
    fill value, so GCNConv(improved=True) without edge weights equals improved=False (the
    SparseTensor path, the docs and the spec use fill 2: we do)."""
    _pyg()
    import torch
    from torch_geometric.nn.conv.gcn_conv import gcn_norm

    ei = tiny_graph(9)
    e2, w2 = gcn_norm(_t(ei), None, 6, True, True, dtype=torch.float64)
    p = _std(e2.numpy())
    np.testing.assert_allclose(L.gcn_norm(ei, 6, improved=False)[1], w2.numpy()[p], rtol=1e-12)
    _, ours = L.gcn_norm(ei, 6, improved=True)
    _, ours_ones = L.gcn_norm(ei, 6, np.ones(12), improved=True)
    np.testing.assert_array_equal(ours, ours_ones)
    assert not np.allclose(ours, w2.numpy()[p])


@pytest.mark.parametrize("heads", [None, 1, 3])
def test_segment_softmax_matches_pyg(heads):
    _pyg()
    from torch_geometric.utils import softmax

    kw = C.softmax_inputs(np.random.default_rng(9), dict(N=7, E=40), heads, spread=20.0)
    want = softmax(_t(kw["scores"]), _t(kw["dst"]), num_nodes=7).numpy()
    got = L.segment_softmax(**kw)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)
    assert got.shape == kw["scores"].shape


# --------------------------------------------------------------------------- VJPs: finite differences


def _check_fd(fwd, vjp, kw, G, wrt, rtol=1e-6, atol=1e-8):
    """Every d<G, fwd(kw)>/d kw[name] of ``vjp`` against central differences."""
    got = vjp(G=G, **kw)
    for name in wrt:
        def f(x, name=name):
            return float(np.sum(G * fwd(**dict(kw, **{name: x}))))
        np.testing.assert_allclose(got["d" + name], fd_grad(f, kw[name]), rtol=rtol, atol=atol,
                                   err_msg=name)
    return got


@pytest.mark.parametrize("opts", GCN_OPTS + [dict(improved=True, bias=False)],
                         ids=lambda o: "-".join(f"{k}{v}" for k, v in o.items()) or "default")
def test_gcn_layer_vjp_finite_differences(opts):
    kw = gcn_kw(10, **opts)
    G = np.random.default_rng(11).standard_normal((6, 4))
    wrt = [k for k in ("X", "W", "b", "edge_weight") if k in kw]
    got = _check_fd(L.gcn_layer, L.gcn_layer_vjp, kw, G, wrt)
    assert set(got) == {"d" + k for k in wrt}


def _dup_loop_zero_degree_graph():
    """Node 2 has two loops (weights 0.9, then 1.7: the last one is kept); node 4's only
    incoming edge (3 -> 4) has weight 0, so without added loops deg_4 = 0."""
    ei = np.array([[0, 1, 2, 2, 1, 3, 0, 3, 2], [1, 2, 2, 0, 1, 1, 3, 4, 2]])
    w = np.array([0.7, 1.3, 0.9, 1.1, 0.6, 0.8, 1.2, 0.0, 1.7])
    rng = np.random.default_rng(12)
    kw = dict(X=rng.standard_normal((5, 3)), edge_index=ei, W=rng.standard_normal((3, 2)),
              edge_weight=w)
    return kw, rng.standard_normal((5, 2))


@pytest.mark.parametrize("add_loops", [True, False])
def test_gcn_edge_weight_vjp_duplicate_loop_and_zero_degree(add_loops):
    """Finite differences over the positive weights. With loops, the earlier of node 2's two
    loops is overwritten: derivative 0. Without loops, the weight-0 edge into the zero-degree
    node 4 gets 0: our convention for the inf -> 0 clamp (dis_4 = 0 held constant; the
    one-sided derivative of dis_3 w w^-1/2 at w = 0 is infinite, and torch autograd through
    PyG gives NaN there); every other entry equals PyG's autograd."""
    kw, G = _dup_loop_zero_degree_graph()
    kw["add_loops"] = add_loops
    got = L.gcn_layer_vjp(G=G, **kw)["dedge_weight"]
    pos = kw["edge_weight"] > 0

    def f(v):
        w = kw["edge_weight"].copy()
        w[pos] = v
        return float(np.sum(G * L.gcn_layer(**dict(kw, edge_weight=w))))

    np.testing.assert_allclose(got[pos], fd_grad(f, kw["edge_weight"][pos]), rtol=1e-6,
                               atol=1e-8)
    if add_loops:
        assert got[2] == 0.0 and got[8] != 0.0
        # deg_4 = 1 (its loop): a finite derivative at w = 0, checked one-sidedly
        def g(t):
            w = kw["edge_weight"].copy()
            w[7] = t
            return float(np.sum(G * L.gcn_layer(**dict(kw, edge_weight=w))))

        np.testing.assert_allclose(got[7], (g(1e-7) - g(0.0)) / 1e-7, rtol=1e-5)
    else:
        assert got[7] == 0.0
        _pyg()
        conv = pyg_gcn(kw)
        w = _t(kw["edge_weight"], True)
        (conv(_t(kw["X"]), _t(kw["edge_index"]), w) * _t(G)).sum().backward()
        pg = w.grad.numpy()
        assert np.isnan(pg[7])          # PyG's autograd: 0 * inf from pow(-0.5) at deg = 0
        np.testing.assert_allclose(got[pos], pg[pos], rtol=1e-10, atol=1e-12)


GAT_VJP_OPTS = [dict(D=2), dict(concat=False, D=2), dict(add_loops=False, D=3),
                dict(concat=False, add_loops=False, bias=False), dict(fill=0.5, D=1),
                dict(heads=1, Cc=3, negative_slope=0.0)]


@pytest.mark.parametrize("opts", GAT_VJP_OPTS,
                         ids=lambda o: "-".join(f"{k}{v}" for k, v in o.items()))
def test_gat_layer_vjp_finite_differences(opts):
    kw = gat_kw(13, **opts)
    H, _ = L.gat_layer(**kw)
    G = np.random.default_rng(14).standard_normal(H.shape)
    wrt = [k for k in ("X", "W", "a_src", "a_dst", "b", "W_e", "a_e") if k in kw]
    got = _check_fd(lambda **k: L.gat_layer(**k)[0], L.gat_layer_vjp, kw, G, wrt)
    assert set(got) == {"d" + k for k in wrt}


@pytest.mark.parametrize("eps", [0.0, 0.5, -1.0])
def test_gin_layer_vjp_finite_differences(eps):
    kw = gin_kw(15, eps=eps)
    G = np.random.default_rng(16).standard_normal((6, 4))
    got = _check_fd(L.gin_layer, L.gin_layer_vjp, kw, G, ["X", "W1", "b1", "W2", "b2"])
    assert set(got) == {"dX", "dW1", "db1", "dW2", "db2"}


@pytest.mark.parametrize("heads", [None, 2])
def test_segment_softmax_vjp_finite_differences(heads):
    kw = C.softmax_inputs(np.random.default_rng(17), TINY, heads, spread=3.0)
    G = np.random.default_rng(18).standard_normal(kw["scores"].shape)
    _check_fd(L.segment_softmax, L.segment_softmax_vjp, kw, G, ["scores"])


# --------------------------------------------------------------------------- VJPs: torch autograd through PyG


def _no_duplicate_loops(ei):
    """Drop the first copy of a repeated loop: torch's index_put autograd (PyG's loop-weight
    assignment) sends the gradient to overwritten values too, which the true derivative (finite
    differences above) does not."""
    loops = np.flatnonzero(ei[0] == ei[1])
    drop = [e for e in loops if any((ei[0, f] == ei[0, e]) for f in loops if f > e)]
    return np.delete(ei, drop, axis=1), drop


@pytest.mark.parametrize("opts", GCN_OPTS, ids=lambda o: "-".join(f"{k}{v}" for k, v in o.items())
                         or "default")
def test_gcn_layer_vjp_matches_torch_autograd(opts):
    kw = gcn_kw(19, **opts)
    ei, drop = _no_duplicate_loops(kw["edge_index"])
    kw["edge_index"] = ei
    if "edge_weight" in kw:
        kw["edge_weight"] = np.delete(kw["edge_weight"], drop)
    G = np.random.default_rng(20).standard_normal((6, 4))
    conv = pyg_gcn(kw)
    x, w = _t(kw["X"], True), _t(kw.get("edge_weight"), "edge_weight" in kw)
    (conv(x, _t(ei), w) * _t(G)).sum().backward()
    got = L.gcn_layer_vjp(G=G, **kw)
    np.testing.assert_allclose(got["dX"], x.grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(got["dW"], conv.lin.weight.grad.numpy().T, rtol=1e-10, atol=1e-12)
    if "b" in kw:
        np.testing.assert_allclose(got["db"], conv.bias.grad.numpy(), rtol=1e-10, atol=1e-12)
    if "edge_weight" in kw:
        np.testing.assert_allclose(got["dedge_weight"], w.grad.numpy(), rtol=1e-10, atol=1e-12)


def test_torch_autograd_credits_overwritten_loops():
    """Documents why the comparison above drops duplicate loops: through PyG, the overwritten
    loop weight receives a gradient; the true derivative (ours, finite differences) is 0."""
    _pyg()
    kw = gcn_kw(21)
    ei = kw["edge_index"]
    loops = np.flatnonzero(ei[0] == ei[1])
    assert loops.size == 2
    G = np.random.default_rng(22).standard_normal((6, 4))
    conv = pyg_gcn(kw)
    w = _t(kw["edge_weight"], True)
    (conv(_t(kw["X"]), _t(ei), w) * _t(G)).sum().backward()
    ours = L.gcn_layer_vjp(G=G, **kw)["dedge_weight"]
    assert ours[loops[0]] == 0.0 and w.grad.numpy()[loops[0]] != 0.0
    np.testing.assert_allclose(ours[loops[1]], w.grad.numpy()[loops[1]], rtol=1e-10)


@pytest.mark.parametrize("opts", GAT_OPTS, ids=lambda o: "-".join(f"{k}{v}" for k, v in o.items()))
def test_gat_layer_vjp_matches_torch_autograd(opts):
    kw = gat_kw(23, **opts)
    conv = pyg_gat(kw)
    x = _t(kw["X"], True)
    out = conv(x, _t(kw["edge_index"]), _t(kw.get("edge_attr")))
    G = np.random.default_rng(24).standard_normal(tuple(out.shape))
    (out * _t(G)).sum().backward()
    got = L.gat_layer_vjp(G=G, **kw)
    tol = dict(rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(got["dX"], x.grad.numpy(), **tol)
    np.testing.assert_allclose(got["dW"], conv.lin.weight.grad.numpy().T, **tol)
    np.testing.assert_allclose(got["da_src"], conv.att_src.grad.numpy()[0], **tol)
    np.testing.assert_allclose(got["da_dst"], conv.att_dst.grad.numpy()[0], **tol)
    if "b" in kw:
        np.testing.assert_allclose(got["db"], conv.bias.grad.numpy(), **tol)
    if "edge_attr" in kw:
        np.testing.assert_allclose(got["dW_e"], conv.lin_edge.weight.grad.numpy().T, **tol)
        np.testing.assert_allclose(got["da_e"], conv.att_edge.grad.numpy()[0], **tol)


@pytest.mark.parametrize("eps", [0.0, 0.5])
def test_gin_layer_vjp_matches_torch_autograd(eps):
    kw = gin_kw(25, eps=eps)
    conv = pyg_gin(kw)
    x = _t(kw["X"], True)
    G = np.random.default_rng(26).standard_normal((6, 4))
    (conv(x, _t(kw["edge_index"])) * _t(G)).sum().backward()
    got = L.gin_layer_vjp(G=G, **kw)
    mlp = conv.nn
    for name, want in (("dX", x.grad), ("dW1", mlp[0].weight.grad.T), ("db1", mlp[0].bias.grad),
                       ("dW2", mlp[2].weight.grad.T), ("db2", mlp[2].bias.grad)):
        np.testing.assert_allclose(got[name], want.numpy(), rtol=1e-10, atol=1e-12, err_msg=name)


def test_segment_softmax_vjp_matches_torch_autograd():
    _pyg()
    from torch_geometric.utils import softmax

    kw = C.softmax_inputs(np.random.default_rng(27), dict(N=9, E=50), 3)
    G = np.random.default_rng(28).standard_normal(kw["scores"].shape)
    s = _t(kw["scores"], True)
    (softmax(s, _t(kw["dst"]), num_nodes=9) * _t(G)).sum().backward()
    np.testing.assert_allclose(L.segment_softmax_vjp(G=G, **kw)["dscores"], s.grad.numpy(),
                               rtol=1e-10, atol=1e-13)


# --------------------------------------------------------------------------- properties (sec. 9)


def test_gat_alpha_sums_to_one_per_destination_and_head():
    kw = C.gat_inputs(np.random.default_rng(29), dict(N=40, E=300, F=5), 3, 2, D=2,
                      add_loops=False)
    _, alpha = L.gat_layer(**kw)
    ei = kw["edge_index"][:, _std(kw["edge_index"])]
    sums = np.zeros((40, 3))
    np.add.at(sums, ei[1], alpha)
    has = np.bincount(ei[1], minlength=40) > 0
    np.testing.assert_allclose(sums[has], 1.0, rtol=0, atol=1e-14)
    assert np.all(sums[~has] == 0) and (~has).any()      # the isolated node: no segment
    a = L.segment_softmax(**C.softmax_inputs(np.random.default_rng(30), dict(N=40, E=300), 4))
    assert np.all(a >= 0) and np.all(a <= 1)


def _relabel(kw, rng, N):
    """Nodes relabelled by a random permutation pi (new id of old node i = pi[i]), edges (and
    their per-edge values) shuffled. Returns (new kw, pi, edge order)."""
    pi = rng.permutation(N)
    ei = kw["edge_index"]
    order = rng.permutation(ei.shape[1])
    # keep the input order of each node's repeated loops: "remaining" keeps the LAST loop's
    # weight, which is an input-order rule, not a graph property
    at = np.flatnonzero(ei[0, order] == ei[1, order])
    order[at] = np.sort(order[at])
    new = dict(kw)
    new["edge_index"] = pi[kw["edge_index"][:, order]]
    X = np.empty_like(kw["X"])
    X[pi] = kw["X"]
    new["X"] = X
    for k in ("edge_weight", "edge_attr"):
        if k in kw:
            new[k] = kw[k][order]
    return new, pi, order


@pytest.mark.parametrize("layer", ["gcn", "gcn_noloops", "gat", "gat_mean", "gin"])
def test_layers_are_permutation_equivariant(layer):
    rng = np.random.default_rng(31)
    size = dict(N=15, E=60, F=4)
    if layer.startswith("gcn"):
        kw = C.gcn_inputs(rng, size, 3, add_loops=layer == "gcn")
        fwd, vjp = L.gcn_layer, L.gcn_layer_vjp
    elif layer.startswith("gat"):
        kw = C.gat_inputs(rng, size, 2, 3, D=2, concat=layer == "gat")
        fwd, vjp = (lambda **k: L.gat_layer(**k)[0]), L.gat_layer_vjp
    else:
        kw = C.gin_inputs(rng, size, 6, 3, eps=0.3)
        fwd, vjp = L.gin_layer, L.gin_layer_vjp
    new, pi, order = _relabel(kw, rng, 15)
    H, H2 = fwd(**kw), fwd(**new)
    np.testing.assert_allclose(H2[pi], H, rtol=1e-12, atol=1e-13)
    G = rng.standard_normal(H.shape)
    G2 = np.empty_like(G)
    G2[pi] = G
    g, g2 = vjp(G=G, **kw), vjp(G=G2, **new)
    np.testing.assert_allclose(g2["dX"][pi], g["dX"], rtol=1e-10, atol=1e-12)
    for k in g:
        if k == "dedge_weight":
            np.testing.assert_allclose(g2[k], g[k][order], rtol=1e-10, atol=1e-12)
        elif k != "dX":
            np.testing.assert_allclose(g2[k], g[k], rtol=1e-10, atol=1e-12)


def test_gat_alpha_is_permutation_equivariant_without_loops():
    rng = np.random.default_rng(32)
    kw = C.gat_inputs(rng, dict(N=12, E=50, F=3), 2, 2, D=2, add_loops=False)
    new, _, order = _relabel(kw, rng, 12)
    _, a = L.gat_layer(**kw)
    _, a2 = L.gat_layer(**new)
    _, _, perm = L.to_csr(kw["edge_index"], 12)
    _, _, perm2 = L.to_csr(new["edge_index"], 12)
    by_input = np.empty_like(a)
    by_input[perm] = a                                   # alpha per input edge
    by_input2 = np.empty_like(a2)
    by_input2[perm2] = a2
    np.testing.assert_allclose(by_input2, by_input[order], rtol=1e-12, atol=1e-14)


def test_gcn_identity_on_regular_graph_averages_closed_neighbourhood():
    N, offsets = 9, (1, 2, -1, -3)                      # every node: in-degree 4, out-degree 4
    src = np.concatenate([np.arange(N)] * len(offsets))
    dst = np.concatenate([(np.arange(N) + o) % N for o in offsets])
    X = np.random.default_rng(33).standard_normal((N, N))
    H = L.gcn_layer(X, np.stack([src, dst]), np.eye(N))
    want = np.array([(X[i] + sum(X[(i - o) % N] for o in offsets)) / 5.0 for i in range(N)])
    np.testing.assert_allclose(H, want, rtol=1e-13, atol=1e-14)


def test_gin_eps_minus_one_ignores_the_node_itself():
    kw = C.gin_inputs(np.random.default_rng(34), dict(N=10, E=30, F=3), 5, 2, eps=-1.0)
    ei = kw["edge_index"]
    A = np.zeros((10, 10))
    np.add.at(A, (ei[1], ei[0]), 1.0)                    # dense adjacency: A[dst, src] counts
    relu = np.maximum((A @ kw["X"]) @ kw["W1"] + kw["b1"], 0.0)
    np.testing.assert_allclose(L.gin_layer(**kw), relu @ kw["W2"] + kw["b2"], rtol=1e-12,
                               atol=1e-13)
    i = int(np.flatnonzero(A.diagonal() == 0)[0])        # a node without a self-loop
    X2 = kw["X"].copy()
    X2[i] += 10.0
    np.testing.assert_array_equal(L.gin_layer(**dict(kw, X=X2))[i], L.gin_layer(**kw)[i])


def test_isolated_node_under_gat_with_loops_attends_only_to_itself():
    kw = gat_kw(35, heads=2, Cc=3, D=2)
    iso = TINY["N"] // 2
    H, alpha = L.gat_layer(**kw)
    ei, _ = L.add_self_loops(kw["edge_index"], 6, mode="replace")
    rows = np.flatnonzero(ei[1] == iso)
    assert rows.size == 1 and ei[0, rows[0]] == iso
    np.testing.assert_array_equal(alpha[rows[0]], 1.0)
    np.testing.assert_allclose(H[iso], kw["X"][iso] @ kw["W"] + kw["b"], rtol=1e-13, atol=1e-14)


def test_gcn_without_loops_gives_bias_for_in_degree_zero_nodes():
    kw = gcn_kw(36, add_loops=False)
    H = L.gcn_layer(**kw)
    no_in = np.bincount(kw["edge_index"][1], minlength=6) == 0
    assert no_in[TINY["N"] // 2]
    np.testing.assert_array_equal(H[no_in], np.broadcast_to(kw["b"], H[no_in].shape))
    Hu = L.gcn_layer(**dict(kw, normalize=False))
    np.testing.assert_array_equal(Hu[no_in], np.broadcast_to(kw["b"], Hu[no_in].shape))


def test_gcn_unnormalized_is_the_dense_weighted_sum():
    kw = gcn_kw(37, normalize=False)
    ei, w = kw["edge_index"], kw["edge_weight"]
    A = np.zeros((6, 6))
    np.add.at(A, (ei[1], ei[0]), w)                      # loops count once each, no added loops
    np.testing.assert_allclose(L.gcn_layer(**kw), A @ kw["X"] @ kw["W"] + kw["b"], rtol=1e-13,
                               atol=1e-14)
    neg = dict(kw, edge_weight=w - 1.0)                  # negative weights fine without normalising
    assert np.isfinite(L.gcn_layer(**neg)).all()


# --------------------------------------------------------------------------- to_csr


@pytest.mark.parametrize("dtype", [np.int64, np.int32])
def test_to_csr(dtype):
    ei = C.random_graph(np.random.default_rng(38), 11, 40).astype(dtype)
    ptr, src, perm = L.to_csr(ei, 11)
    assert ptr.dtype == src.dtype == perm.dtype == np.int64
    np.testing.assert_array_equal(ptr, np.concatenate([[0], np.cumsum(np.bincount(ei[1],
                                                                                minlength=11))]))
    want = [e for _, _, e in sorted((int(ei[1, e]), int(ei[0, e]), e) for e in range(40))]
    np.testing.assert_array_equal(perm, want)           # stable: duplicates keep input order
    np.testing.assert_array_equal(src, ei[0, perm])
    for i in range(11):
        assert np.all(ei[1, perm[ptr[i]:ptr[i + 1]]] == i)
    assert ptr[11 // 2 + 1] == ptr[11 // 2]              # the isolated node: an empty row


def test_to_csr_empty_and_edge_cases():
    ptr, src, perm = L.to_csr(np.zeros((2, 0), dtype=np.int64), 3)
    np.testing.assert_array_equal(ptr, [0, 0, 0, 0])
    assert src.shape == perm.shape == (0,)
    X = np.random.default_rng(39).standard_normal((3, 2))
    H = L.gcn_layer(X, np.zeros((2, 0), dtype=np.int64), np.eye(2))
    np.testing.assert_allclose(H, X)                      # only the loops: deg 1, norm 1
    H, alpha = L.gat_layer(X, np.zeros((2, 0), dtype=np.int64), np.eye(2), np.ones((1, 2)),
                           np.ones((1, 2)))
    np.testing.assert_allclose(H, X)
    np.testing.assert_array_equal(alpha, np.ones((3, 1)))
    assert L.segment_softmax(np.zeros(0), np.zeros(0, dtype=np.int64), 2).shape == (0,)


# --------------------------------------------------------------------------- argument errors


def test_edge_index_errors():
    kw = gcn_kw(40)
    bad = kw["edge_index"].copy()
    bad[1, 3] = 7
    with pytest.raises(ValueError, match=r"edge_index has node indices outside \[0, 6\): max 7"):
        L.gcn_layer(**dict(kw, edge_index=bad))
    bad[1, 3] = -1
    with pytest.raises(ValueError, match=r"outside \[0, 6\): min -1"):
        L.gat_layer(**dict(gat_kw(40), edge_index=bad))
    with pytest.raises(TypeError, match="edge_index must be an integer array, got float64"):
        L.gin_layer(**dict(gin_kw(40), edge_index=kw["edge_index"].astype(float)))
    with pytest.raises(ValueError, match=r"edge_index must have shape \(2, E\)"):
        L.to_csr(np.zeros((3, 4), dtype=np.int64), 5)
    with pytest.raises(ValueError, match="n_nodes must be >= 1"):
        L.to_csr(np.zeros((2, 0), dtype=np.int64), 0)
    with pytest.raises(TypeError, match="n_nodes must be an int"):
        L.add_self_loops(kw["edge_index"], 6.0)
    with pytest.raises(ValueError, match="dst has node indices outside"):
        L.segment_softmax(np.zeros(3), np.array([0, 1, 5]), 5)
    with pytest.raises(ValueError, match=r"dst must have shape \(E,\) = \(3,\)"):
        L.segment_softmax(np.zeros(3), np.array([0, 1]), 5)


def test_reference_refuses_torch_tensors():
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match="numpy reference takes numpy.ndarray"):
        L.to_csr(torch.zeros((2, 1), dtype=torch.int64), 2)
    kw = gcn_kw(40)
    with pytest.raises(TypeError, match="X is a torch.Tensor"):
        L.gcn_layer(**dict(kw, X=torch.tensor(kw["X"])))


def test_gcn_argument_errors():
    kw = gcn_kw(41)
    w = kw["edge_weight"].copy()
    w[2] = -0.5
    with pytest.raises(ValueError, match="edge_weight must be non-negative for GCN "
                                         "normalisation; min -0.5"):
        L.gcn_layer(**dict(kw, edge_weight=w))
    with pytest.raises(ValueError, match="non-negative"):
        L.gcn_norm(kw["edge_index"], 6, w)
    L.gcn_layer(**dict(kw, edge_weight=w, normalize=False))          # allowed
    w[2] = np.nan
    with pytest.raises(ValueError, match="edge_weight contains NaN or inf"):
        L.gcn_layer(**dict(kw, edge_weight=w, normalize=False))
    with pytest.raises(ValueError, match=r"W must have shape \(F, F_out\) .*F = X.shape\[1\] = 3, "
                                         r"got \(2, 4\)"):
        L.gcn_layer(**dict(kw, W=np.ones((2, 4))))
    with pytest.raises(ValueError, match=r"b must have shape \(F_out,\)"):
        L.gcn_layer(**dict(kw, b=np.ones(3)))
    with pytest.raises(ValueError, match=r"edge_weight must have shape \(E,\)"):
        L.gcn_layer(**dict(kw, edge_weight=np.ones(5)))
    with pytest.raises(TypeError, match=r"W must have X's dtype \(float64\), got float32"):
        L.gcn_layer(**dict(kw, W=kw["W"].astype(np.float32)))
    with pytest.raises(TypeError, match="improved must be a bool"):
        L.gcn_layer(**dict(kw, improved=1))
    with pytest.raises(ValueError, match=r"G must have shape \(N, F_out\)"):
        L.gcn_layer_vjp(G=np.ones((6, 3)), **kw)
    with pytest.raises(TypeError, match="X must have dtype float32 or float64"):
        L.gcn_layer(**dict(kw, X=kw["X"].astype(int)))


def test_gat_argument_errors():
    kw = gat_kw(42, D=2)
    for drop in (("W_e", "a_e"), ("edge_attr",), ("a_e",)):
        with pytest.raises(ValueError, match="given without"):
            L.gat_layer(**{k: v for k, v in kw.items() if k not in drop})
    with pytest.raises(ValueError, match=r"W must have shape \(F, heads\*C\)"):
        L.gat_layer(**dict(kw, W=np.ones((3, 5))))
    with pytest.raises(ValueError, match=r"b must have shape \(C,\)"):
        L.gat_layer(**dict(kw, concat=False))
    with pytest.raises(ValueError, match=r"W_e must have shape \(D, heads\*C\)"):
        L.gat_layer(**dict(kw, W_e=np.ones((3, 4))))
    with pytest.raises(ValueError, match=r"edge_attr must have shape \(E, D\)"):
        L.gat_layer(**dict(kw, edge_attr=np.ones((11, 2))))
    with pytest.raises(ValueError, match="negative_slope must be a finite number >= 0"):
        L.gat_layer(**dict(kw, negative_slope=-0.1))
    with pytest.raises(ValueError, match="fill must be a real number or 'mean'"):
        L.gat_layer(**dict(kw, fill="add"))
    attr = kw["edge_attr"].copy()
    attr[0, 0] = np.inf
    with pytest.raises(ValueError, match="edge_attr contains NaN or inf"):
        L.gat_layer(**dict(kw, edge_attr=attr))
    with pytest.raises(ValueError, match="mode must be one of"):
        L.add_self_loops(kw["edge_index"], 6, mode="all")


def test_gin_argument_errors():
    kw = gin_kw(43)
    with pytest.raises(ValueError, match=r"W2 must have shape \(hidden, F_out\)"):
        L.gin_layer(**dict(kw, W2=np.ones((4, 4))))
    with pytest.raises(ValueError, match="eps must be finite"):
        L.gin_layer(**dict(kw, eps=float("nan")))
    with pytest.raises(TypeError, match="b1 must be an array"):
        L.gin_layer(**dict(kw, b1=None))


def test_value_checks_use_one_stats_call():
    """The validators' value checks reach the array data through ONE ``stats`` call (a GPU
    backend's single host read), for every op."""
    calls = []

    def stats(requests):
        calls.append(len(requests))
        return V._gnn_default_stats(requests)

    kw = gcn_kw(44)
    V.gcn_layer_args(kw["X"], kw["edge_index"], kw["W"], kw["b"], kw["edge_weight"], False, True,
                     True, stats=stats)
    g = gat_kw(44, D=2)
    V.gat_layer_args(g["X"], g["edge_index"], g["W"], g["a_src"], g["a_dst"], g["b"],
                     g["edge_attr"], g["W_e"], g["a_e"], 0.2, True, True, "mean", stats=stats)
    n = gin_kw(44)
    V.gin_layer_args(n["X"], n["edge_index"], n["W1"], n["b1"], n["W2"], n["b2"], 0.0,
                     stats=stats)
    V.segment_softmax_args(np.zeros(12), kw["edge_index"][1], 6, stats=stats)
    V.gnn_to_csr_args(kw["edge_index"], 6, stats=stats)
    V.gnn_norm_args(kw["edge_index"], 6, kw["edge_weight"], False, True, stats=stats)
    V.gnn_self_loops_args(kw["edge_index"], 6, None, "mean", "replace", stats=stats)
    assert calls == [4, 3, 2, 2, 2, 4, 2]


# --------------------------------------------------------------------------- registry cases

OPS = ("gcn_layer", "gat_layer", "gin_layer", "segment_softmax")
WRT = {"gcn_layer": ("X", "W", "b", "edge_weight"),
       "gat_layer": ("X", "W", "a_src", "a_dst", "b", "W_e", "a_e"),
       "gin_layer": ("X", "W1", "b1", "W2", "b2"), "segment_softmax": ("scores",)}


@pytest.mark.parametrize("op", OPS)
def test_registry_cases_run_at_every_scale(op):
    for scale in ("tiny", "small", "bench"):
        for suffix in ("", "_vjp"):
            cases = getattr(C, f"cases_{op}{suffix}")(np.random.default_rng(0), scale)
            assert cases and len({c.label for c in cases}) == len(cases)
            if scale == "tiny":
                assert len(cases) <= 3
            for case in cases:
                if case.where == "gpu":                  # large: never built here
                    assert callable(case.kwargs) and case.dtypes == ("float32",)
                    continue
                if scale == "bench":
                    assert callable(case.kwargs) and case.where == "cpu"
                kw = case.inputs()
                ei = kw.get("edge_index")
                if scale == "tiny":
                    n = kw.get("n_nodes") or kw["X"].shape[0]
                    E = (ei.shape[1] if ei is not None else kw["dst"].shape[0])
                    assert (n, E) == (6, 12)
                    if "X" in kw:
                        assert kw["X"].shape == (6, 3)
                if scale == "bench":
                    continue
                out = getattr(L, op + suffix)(**kw)
                if suffix:
                    assert set(out) == {"d" + k for k in WRT[op] if kw.get(k) is not None}
                    ref = getattr(C, "vjp_" + op)({k: v for k, v in kw.items() if k != "G"},
                                                  kw["G"])
                    for k in out:
                        np.testing.assert_array_equal(ref[k], out[k])


def test_random_graph_has_the_tiny_features():
    for seed in range(5):
        ei = tiny_graph(seed)
        assert ei.shape == (2, 12) and ei.dtype == np.int64
        iso = 3
        assert not np.any(ei == iso)                        # isolated node
        loops = ei[:, ei[0] == ei[1]]
        assert loops.shape[1] == 2 and loops[0, 0] == loops[0, 1]   # one node, loop twice
        pairs = [tuple(p) for p in ei[:, ei[0] != ei[1]].T]
        assert len(set(pairs)) < len(pairs)                  # a duplicated edge
        assert not np.array_equal(ei, ei[:, _std(ei)])       # not already in CSR order


def test_registry_cases_are_deterministic_and_cover_the_options():
    a = C.cases_gat_layer(np.random.default_rng(0), "tiny")
    b = C.cases_gat_layer(np.random.default_rng(0), "tiny")
    for x, y in zip(a, b):
        for k, v in x.inputs().items():
            assert np.array_equal(v, y.inputs()[k]) if isinstance(v, np.ndarray) else v == y.inputs()[k]
    gat = [c.inputs() for sc in ("tiny", "small") for c in C.cases_gat_layer(
        np.random.default_rng(0), sc)]
    assert {kw["concat"] for kw in gat} == {True, False}
    assert {kw["add_loops"] for kw in gat} == {True, False}
    assert any("edge_attr" in kw for kw in gat) and any(kw["fill"] == 0.5 for kw in gat)
    assert {kw["a_src"].shape[0] for kw in gat} >= {1, 2, 4}
    gcn = [c.inputs() for sc in ("tiny", "small") for c in C.cases_gcn_layer(
        np.random.default_rng(0), sc)]
    assert any(kw["improved"] for kw in gcn) and any(not kw["normalize"] for kw in gcn)
    assert any(not kw["add_loops"] and kw["normalize"] for kw in gcn)
    assert any("b" not in kw for kw in gcn) and any("edge_weight" not in kw for kw in gcn)
    gin = [c.inputs()["eps"] for c in C.cases_gin_layer(np.random.default_rng(0), "tiny")]
    assert set(gin) == {0.0, 0.5}
    sm = [c.inputs()["scores"].ndim for c in C.cases_segment_softmax(np.random.default_rng(0),
                                                                     "tiny")]
    assert set(sm) == {1, 2}
    assert C.PAPER == "2507.07298" and set(C.DTYPES) == {"float32", "float64"}
    with pytest.raises(ValueError, match="unknown scale"):
        C.cases_gcn_layer(np.random.default_rng(0), "huge")
