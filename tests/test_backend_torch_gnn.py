"""Torch backend of the gnn family (multilayer GNN for predictive maintenance, arXiv 2507.07298,
spec gnn_pdm.md): signatures equal to the reference's; every function against the float64
NumPy reference (:mod:`refimpl._gnn_layers`, :mod:`refimpl._gnn_heads`) on the registry's tiny
and small cases in float64 (1e-10) and float32 (the family's TOL, on the float32-rounded
inputs); the layers against PyTorch Geometric's GCNConv / GATConv / GINConv with copied weights
in float64 (outputs, attention and autograd gradients); ``torch.autograd.gradcheck`` of every
custom autograd Function and of the public layers; nothing of size E x heads x C saved for
backward; bitwise determinism of forward and backward (CPU here, CUDA under ``-m gpu``); one
host read per validated call and no other read; int32 == int64 edge_index; bad input raising the
reference's exception with the reference's message."""

import inspect
import warnings

import numpy as np
import pytest

import backends

torch = pytest.importorskip("torch")
if backends.reason("torch") is not None:
    pytest.skip(f"backend torch: {backends.reason('torch')}", allow_module_level=True)

from torch_testing import close_to, npy, raises_like_reference, saved_numels, tt, up

from backends.torch import gnn as T
from refimpl import _gnn_heads as RH
from refimpl import _gnn_layers as RL
from refimpl._cases import gnn as C

pytestmark = pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta state")

F64, F32 = torch.float64, torch.float32
TOL = {F64: (1e-10, 1e-10), F32: (1e-5, 5e-4)}     # (atol, rtol): the family's TOL
LAYERS = ("to_csr", "add_self_loops", "gcn_norm", "gcn_layer", "gcn_layer_vjp",
          "segment_softmax", "segment_softmax_vjp", "gat_layer", "gat_layer_vjp", "gin_layer",
          "gin_layer_vjp")
HEADS = ("edge_mlp_weights", "fuse", "fuse_vjp", "focal_bce", "focal_bce_grad")


assert_close = close_to(TOL)


def to_t(v, dtype=F64):
    """Case kwargs as tensors: float arrays in ``dtype``, integer/bool arrays kept, dicts of
    arrays converted, Python scalars and strings kept."""
    if isinstance(v, dict):
        return {k: to_t(x, dtype) for k, x in v.items()}
    if isinstance(v, np.ndarray):
        return tt(v, dtype)
    return v


def to_np(v):
    """The values the tensors hold, for the reference (float64; ints kept)."""
    if isinstance(v, dict):
        return {k: to_np(x) for k, x in v.items()}
    if isinstance(v, torch.Tensor):
        return up(v)
    return v


_CASES = {}


def cases(op, scale):
    """The registry's cases of ``op`` at ``scale`` (built once, fixed seed)."""
    key = (op, scale)
    if key not in _CASES:
        _CASES[key] = [c.kwargs for c in getattr(C, "cases_" + op)(np.random.default_rng(7),
                                                                       scale)]
    return _CASES[key]


def graph(N=6, E=12, seed=0, **kw):
    return C.random_graph(np.random.default_rng(seed), N, E, **kw)


# --------------------------------------------------------------------------- signatures


def test_signatures_equal_reference_and_no_atomic_paths():
    assert set(T.__all__) == set(LAYERS + HEADS + ("ATOMIC_PATHS",))
    for name in LAYERS:
        assert inspect.signature(getattr(T, name)) == inspect.signature(getattr(RL, name)), name
    for name in HEADS:
        assert inspect.signature(getattr(T, name)) == inspect.signature(getattr(RH, name)), name
    assert T.ATOMIC_PATHS == {}


# --------------------------------------------------------------------------- vs the reference


def _compare(got, want, dtype):
    if isinstance(want, dict):
        # VJPs in float32: the absolute tolerance is scaled by the output's largest entry, since
        # the accumulation error of a gradient entry follows the size of the summed terms,
        # not of the (possibly cancelled) result — e.g. gat_layer_vjp's dX on the small
        # heads-1, C-64 case has entries of size 46 and errors of 6e-5 on entries near 0.
        assert set(got) == set(want), (set(got), set(want))
        for k in want:
            assert got[k].dtype == dtype, k
            scale = max(1.0, float(np.abs(want[k]).max())) if np.size(want[k]) else 1.0
            assert_close(got[k], want[k], dtype,
                         atol=TOL[dtype][0] * (scale if dtype == F32 else 1.0))
    elif isinstance(want, tuple):
        assert len(got) == len(want)
        for g, w in zip(got, want):
            if w is not None:
                assert g.dtype == dtype
            assert_close(g, w, dtype)
    else:
        assert got.dtype == dtype
        assert_close(got, want, dtype)


LAYER_OPS = ("gcn_layer", "gcn_layer_vjp", "gat_layer", "gat_layer_vjp", "gin_layer",
             "gin_layer_vjp", "segment_softmax", "segment_softmax_vjp")
HEAD_OPS = ("edge_mlp_weights", "fuse", "fuse_vjp", "focal_bce")


@pytest.mark.parametrize("dtype", [F64, F32], ids=["f64", "f32"])
@pytest.mark.parametrize("scale", ["tiny", "small"])
@pytest.mark.parametrize("op", LAYER_OPS + HEAD_OPS)
def test_ops_vs_reference(op, scale, dtype):
    """Each registry case of the op: the torch result (input dtype) equals the reference run on
    the values the tensors hold."""
    ref = getattr(RL if op in LAYER_OPS else RH, op)
    for kw in cases(op, scale):
        kt = to_t(kw, dtype)
        _compare(getattr(T, op)(**kt), ref(**to_np(kt)), dtype)


@pytest.mark.parametrize("dtype", [F64, F32], ids=["f64", "f32"])
@pytest.mark.parametrize("scale", ["tiny", "small"])
def test_focal_grad_vs_reference(scale, dtype):
    for kw in cases("focal_bce", scale):
        kt = to_t(kw, dtype)
        loss, d = T.focal_bce_grad(**kt)
        rl, rd = RH.focal_bce_grad(**to_np(kt))
        assert loss.dim() == 0 and loss.dtype == dtype and d.dtype == dtype
        assert_close(loss, rl, dtype)
        assert_close(d, rd, dtype)


@pytest.mark.parametrize("dtype", [F64, F32], ids=["f64", "f32"])
def test_graph_utilities_vs_reference(dtype):
    """to_csr exactly; add_self_loops (both modes, float / mean fill, weights None, (E,),
    (E, D)) and gcn_norm (loops, improved, no loops, no weights) to TOL, edge lists exactly."""
    rng = np.random.default_rng(3)
    for N, E in ((6, 12), (40, 300)):
        ei = graph(N, E, seed=E)
        eit = torch.as_tensor(ei)
        for got, want in zip(T.to_csr(eit, N), RL.to_csr(ei, N)):
            assert got.dtype == torch.int64
            np.testing.assert_array_equal(npy(got), want)
        w1, w2 = rng.uniform(0.5, 1.5, E), rng.standard_normal((E, 3))
        for w in (None, w1, w2):
            for mode in ("remaining", "replace"):
                for fill in (1.0, -0.5, "mean"):
                    wt = None if w is None else tt(w, dtype)
                    gi, gw = T.add_self_loops(eit, N, wt, fill, mode)
                    ri, rw = RL.add_self_loops(ei, N, None if w is None else up(wt), fill, mode)
                    np.testing.assert_array_equal(npy(gi), ri)
                    if w is None:
                        assert gw is None and rw is None
                    else:
                        assert gw.dtype == dtype
                        assert_close(gw, rw, dtype)
        for w in (None, w1):
            for improved in (False, True):
                for add_loops in (False, True):
                    wt = None if w is None else tt(w, dtype)
                    gi, gw = T.gcn_norm(eit, N, wt, improved, add_loops)
                    ri, rw = RL.gcn_norm(ei, N, None if w is None else up(wt), improved,
                                         add_loops)
                    np.testing.assert_array_equal(npy(gi), ri)
                    assert gw.dtype == (dtype if w is not None else torch.get_default_dtype())
                    assert_close(gw, rw, dtype if w is not None else F32)


def test_empty_edge_list_vs_reference():
    """E = 0: GCN with loops (loops only) / without (b), GAT with loops (alpha = 1 on every
    loop) / without (b), GIN ((1 + eps) X through the MLP), the softmax of nothing."""
    rng = np.random.default_rng(5)
    N, F = 5, 3
    X, ei = rng.standard_normal((N, F)), np.zeros((2, 0), dtype=np.int64)
    W, b = rng.standard_normal((F, 4)), rng.standard_normal(4)
    for add_loops in (True, False):
        _compare(T.gcn_layer(tt(X), torch.as_tensor(ei), tt(W), tt(b), add_loops=add_loops),
                 RL.gcn_layer(X, ei, W, b, add_loops=add_loops), F64)
        a1, a2 = rng.standard_normal((2, 2)), rng.standard_normal((2, 2))
        got = T.gat_layer(tt(X), torch.as_tensor(ei), tt(W), tt(a1), tt(a2), tt(b),
                          add_loops=add_loops)
        _compare(got, RL.gat_layer(X, ei, W, a1, a2, b, add_loops=add_loops), F64)
    W1, b1, W2, b2 = (rng.standard_normal(s) for s in ((F, 4), (4,), (4, 2), (2,)))
    _compare(T.gin_layer(*(to_t(a) for a in (X, ei, W1, b1, W2, b2)), eps=0.3),
             RL.gin_layer(X, ei, W1, b1, W2, b2, eps=0.3), F64)
    s = T.segment_softmax(torch.zeros(0, dtype=F64), torch.zeros(0, dtype=torch.int64), 3)
    assert s.shape == (0,)


@pytest.mark.parametrize("op", ["gcn_layer_vjp", "gat_layer_vjp", "gin_layer_vjp"])
def test_int32_edge_index_equals_int64(op):
    for kw in cases(op, "tiny"):
        k64 = to_t(kw)
        k32 = dict(k64, edge_index=k64["edge_index"].to(torch.int32))
        a, b = getattr(T, op)(**k64), getattr(T, op)(**k32)
        for k in a:
            assert torch.equal(a[k], b[k]), k
    ei = torch.as_tensor(graph())
    for x, y in zip(T.to_csr(ei, 6), T.to_csr(ei.to(torch.int32), 6)):
        assert x.dtype == y.dtype == torch.int64 and torch.equal(x, y)


# --------------------------------------------------------------------------- vs PyG


def _pyg_graph(N=30, E=240, seed=11):
    rng = np.random.default_rng(seed)
    return rng, C.random_graph(rng, N, E)


@pytest.mark.parametrize("opts", [dict(), dict(improved=True), dict(add_loops=False),
                                  dict(normalize=False, add_loops=False),
                                  dict(weighted=False, bias=False)])
def test_gcn_vs_pyg_gcnconv(opts):
    """GCNConv(lin.weight = W^T, bias = b) in float64: H and the autograd gradients w.r.t.
    X, W, b and edge_weight (through PyG's gcn_norm, degrees included)."""
    pyg = pytest.importorskip("torch_geometric")
    rng, ei = _pyg_graph()
    N, F, Fo = 30, 5, 4
    weighted, bias = opts.pop("weighted", True), opts.pop("bias", True)
    improved = opts.get("improved", False)
    add_loops, normalize = opts.get("add_loops", True), opts.get("normalize", True)
    X, W, b = rng.standard_normal((N, F)), rng.standard_normal((F, Fo)), rng.standard_normal(Fo)
    w = rng.uniform(0.5, 1.5, ei.shape[1])
    G = rng.standard_normal((N, Fo))
    conv = pyg.nn.GCNConv(F, Fo, improved=improved, add_self_loops=add_loops,
                          normalize=normalize, bias=bias).double()
    with torch.no_grad():
        conv.lin.weight.copy_(tt(W).t())
        if bias:
            conv.bias.copy_(tt(b))
    Xp, wp = tt(X).requires_grad_(True), tt(w).requires_grad_(True)
    out = conv(Xp, torch.as_tensor(ei), wp if weighted else None)
    (out * tt(G)).sum().backward()
    leaves = [tt(a).requires_grad_(True) for a in (X, W, b, w)]
    H = T.gcn_layer(leaves[0], torch.as_tensor(ei), leaves[1], leaves[2] if bias else None,
                    leaves[3] if weighted else None, improved, add_loops, normalize)
    assert_close(H, npy(out))
    (H * tt(G)).sum().backward()
    assert_close(leaves[0].grad, npy(Xp.grad))
    assert_close(leaves[1].grad, npy(conv.lin.weight.grad).T)
    if bias:
        assert_close(leaves[2].grad, npy(conv.bias.grad))
    if weighted:
        want = npy(wp.grad)
        if normalize and add_loops:
            # The graph's node with a loop has it twice: the loop weight used is the LAST one
            # (PyG's forward too), so the earlier duplicate's true derivative is 0 (ours; the
            # finite differences of test_gradcheck_public_functions agree). PyG's autograd
            # routes the gradient of ``loop_attr[idx] = edge_attr[mask]`` to every duplicate.
            loops = np.flatnonzero(ei[0] == ei[1])
            assert loops.size == 2
            assert npy(leaves[3].grad)[loops[0]] == 0.0
            assert_close(want[loops[0]], want[loops[1]])
            want[loops[0]] = 0.0
        assert_close(leaves[3].grad, want)


@pytest.mark.parametrize("heads,concat,D,add_loops,fill", [
    (1, True, 0, True, "mean"), (4, True, 0, True, "mean"), (4, False, 0, True, "mean"),
    (4, True, 3, True, "mean"), (1, True, 8, True, "mean"), (4, False, 3, False, "mean"),
    (2, True, 2, True, 0.5)])
def test_gat_vs_pyg_gatconv(heads, concat, D, add_loops, fill):
    """GATConv (lin.weight = W^T, att_src/att_dst (1, H, C), lin_edge.weight = W_e^T, att_edge,
    bias, residual off) in float64: H, the attention (PyG's edges stably sorted by (dst, src)
    = our CSR order; its loops come last) and the autograd gradients of every parameter."""
    pyg = pytest.importorskip("torch_geometric")
    rng, ei = _pyg_graph(seed=heads + D)
    N, F, Cc = 30, 5, 3
    E = ei.shape[1]
    X = rng.standard_normal((N, F))
    W = rng.standard_normal((F, heads * Cc))
    a_s, a_d = rng.standard_normal((heads, Cc)), rng.standard_normal((heads, Cc))
    b = rng.standard_normal(heads * Cc if concat else Cc)
    A = rng.standard_normal((E, D)) if D else None
    W_e = rng.standard_normal((D, heads * Cc)) if D else None
    a_e = rng.standard_normal((heads, Cc)) if D else None
    G = rng.standard_normal((N, heads * Cc if concat else Cc))
    conv = pyg.nn.GATConv(F, Cc, heads=heads, concat=concat, negative_slope=0.2,
                          add_self_loops=add_loops, edge_dim=D or None, fill_value=fill,
                          bias=True, residual=False).double()
    with torch.no_grad():
        conv.lin.weight.copy_(tt(W).t())
        conv.att_src.copy_(tt(a_s).reshape(1, heads, Cc))
        conv.att_dst.copy_(tt(a_d).reshape(1, heads, Cc))
        conv.bias.copy_(tt(b))
        if D:
            conv.lin_edge.weight.copy_(tt(W_e).t())
            conv.att_edge.copy_(tt(a_e).reshape(1, heads, Cc))
    Xp = tt(X).requires_grad_(True)
    out, (ei_used, att) = conv(Xp, torch.as_tensor(ei), None if A is None else tt(A),
                               return_attention_weights=True)
    (out * tt(G)).sum().backward()
    names = ["X", "W", "a_src", "a_dst", "b"] + (["W_e", "a_e"] if D else [])
    vals = dict(X=X, W=W, a_src=a_s, a_dst=a_d, b=b, W_e=W_e, a_e=a_e)
    leaves = {k: tt(vals[k]).requires_grad_(True) for k in names}
    H, alpha = T.gat_layer(leaves["X"], torch.as_tensor(ei), leaves["W"], leaves["a_src"],
                           leaves["a_dst"], leaves["b"], None if A is None else tt(A),
                           leaves.get("W_e"), leaves.get("a_e"), 0.2, concat, add_loops, fill)
    assert_close(H, npy(out))
    eu = npy(ei_used)
    order = np.lexsort((eu[0], eu[1]))                     # stable: our CSR order
    assert_close(alpha, npy(att)[order])
    (H * tt(G)).sum().backward()
    want = {"X": npy(Xp.grad), "W": npy(conv.lin.weight.grad).T,
            "a_src": npy(conv.att_src.grad).reshape(heads, Cc),
            "a_dst": npy(conv.att_dst.grad).reshape(heads, Cc), "b": npy(conv.bias.grad)}
    if D:
        want["W_e"] = npy(conv.lin_edge.weight.grad).T
        want["a_e"] = npy(conv.att_edge.grad).reshape(heads, Cc)
    for k in names:
        assert_close(leaves[k].grad, want[k])


@pytest.mark.parametrize("eps", [0.0, 0.5, -1.0])
def test_gin_vs_pyg_ginconv(eps):
    """GINConv(Sequential(Linear, ReLU, Linear), eps, train_eps=False) in float64: H and the
    autograd gradients (input loops count as messages)."""
    pyg = pytest.importorskip("torch_geometric")
    rng, ei = _pyg_graph(seed=3)
    N, F, Hd, Fo = 30, 5, 7, 4
    X = rng.standard_normal((N, F))
    W1, b1 = rng.standard_normal((F, Hd)), rng.standard_normal(Hd)
    W2, b2 = rng.standard_normal((Hd, Fo)), rng.standard_normal(Fo)
    G = rng.standard_normal((N, Fo))
    mlp = torch.nn.Sequential(torch.nn.Linear(F, Hd), torch.nn.ReLU(), torch.nn.Linear(Hd, Fo))
    conv = pyg.nn.GINConv(mlp, eps=eps, train_eps=False).double()
    with torch.no_grad():
        mlp[0].weight.copy_(tt(W1).t())
        mlp[0].bias.copy_(tt(b1))
        mlp[2].weight.copy_(tt(W2).t())
        mlp[2].bias.copy_(tt(b2))
    Xp = tt(X).requires_grad_(True)
    out = conv(Xp, torch.as_tensor(ei))
    (out * tt(G)).sum().backward()
    leaves = [tt(a).requires_grad_(True) for a in (X, W1, b1, W2, b2)]
    H = T.gin_layer(leaves[0], torch.as_tensor(ei), *leaves[1:], eps=eps)
    assert_close(H, npy(out))
    (H * tt(G)).sum().backward()
    want = [npy(Xp.grad), npy(mlp[0].weight.grad).T, npy(mlp[0].bias.grad),
            npy(mlp[2].weight.grad).T, npy(mlp[2].bias.grad)]
    for leaf, w in zip(leaves, want):
        assert_close(leaf.grad, w)


def test_segment_softmax_vs_pyg_softmax():
    pyg = pytest.importorskip("torch_geometric")
    rng = np.random.default_rng(4)
    dst = graph(40, 500, seed=4)[1]
    s = 10 * rng.standard_normal((500, 3))
    got = T.segment_softmax(tt(s), torch.as_tensor(dst), 40)
    want = pyg.utils.softmax(tt(s), torch.as_tensor(dst), num_nodes=40)
    assert_close(got, npy(want))


# --------------------------------------------------------------------------- gradcheck


def _tiny_graph(loops=None):
    """The tiny graph (duplicate edge, isolated node, duplicated self-loop) in CSR form."""
    ei = graph()
    src, dst = (torch.as_tensor(a) for a in ei)
    n_loops = int((src == dst).sum())
    return T._build(src, dst, 6, loops, n_loops if loops else 0)


def test_gradcheck_custom_functions():
    """Every custom autograd Function against finite differences (float64)."""
    rng = np.random.default_rng(9)
    gr, take, info = _tiny_graph("remaining")
    E, N = gr.E, gr.n
    gc = torch.autograd.gradcheck
    # _Select: a permutation (given inverse) and an injective, non-surjective selection
    x = tt(rng.standard_normal((E + N, 2))).requires_grad_(True)
    assert gc(lambda v: T._select(v, take), (x,))
    perm = torch.randperm(E + N, generator=torch.Generator().manual_seed(0))
    inv = torch.sort(perm).indices
    assert gc(lambda v: T._select(v, perm, inv), (x,))
    # _SegSum, _Gather (by dst and by src: the transposed CSR)
    d = tt(rng.standard_normal((E, 3))).requires_grad_(True)
    assert gc(lambda v: T._SegSum.apply(v, gr), (d,))
    xn = tt(rng.standard_normal((N, 3))).requires_grad_(True)
    assert gc(lambda v: T._Gather.apply(v, gr, False), (xn,))
    assert gc(lambda v: T._Gather.apply(v, gr, True), (xn,))
    # _Aggregate w.r.t. the edge values and the node rows (2 heads)
    val = tt(rng.standard_normal((E, 2))).requires_grad_(True)
    Y = tt(rng.standard_normal((N, 2, 3))).requires_grad_(True)
    assert gc(lambda a, b: T._Aggregate.apply(a, b, gr), (val, Y))
    # _SegSoftmax (2 columns, an empty segment)
    s = tt(3 * rng.standard_normal((E, 2))).requires_grad_(True)
    assert gc(lambda v: T._SegSoftmax.apply(v, gr), (s,))


def test_gradcheck_public_functions():
    """The public layers and graph utilities by autograd, w.r.t. every float input (fast mode:
    a random projection of the Jacobian against finite differences; the custom Functions
    inside are checked entry by entry above)."""
    rng = np.random.default_rng(10)

    def gc(fn, inputs):
        return torch.autograd.gradcheck(fn, inputs, fast_mode=True)
    ei = torch.as_tensor(graph())
    E, N = ei.shape[1], 6
    X = tt(rng.standard_normal((N, 3))).requires_grad_(True)
    W = tt(rng.standard_normal((3, 4))).requires_grad_(True)
    b = tt(rng.standard_normal(4)).requires_grad_(True)
    w = tt(rng.uniform(0.5, 1.5, E)).requires_grad_(True)
    for add_loops in (True, False):
        assert gc(lambda *a: T.gcn_layer(a[0], ei, a[1], a[2], a[3], True, add_loops),
                  (X, W, b, w))
    assert gc(lambda v: T.gcn_norm(ei, N, v)[1], (w,))
    attr = tt(rng.standard_normal((E, 2))).requires_grad_(True)
    for mode in ("remaining", "replace"):
        assert gc(lambda v: T.add_self_loops(ei, N, v, "mean", mode)[1], (attr,))
        assert gc(lambda v: T.add_self_loops(ei, N, v, 0.5, mode)[1], (w,))
    a = [tt(rng.standard_normal((2, 2))).requires_grad_(True) for _ in range(3)]
    We = tt(rng.standard_normal((2, 4))).requires_grad_(True)
    A = tt(rng.standard_normal((E, 2)))
    assert gc(lambda *p: T.gat_layer(p[0], ei, p[1], p[2], p[3], p[4], A, p[5], p[6])[0],
              (X, W, a[0], a[1], b, We, a[2]))
    assert gc(lambda *p: T.gat_layer(p[0], ei, p[1], p[2], p[3], concat=False,
                                     add_loops=False)[1], (X, W, a[0], a[1]))
    W1, b1 = W, b
    W2 = tt(rng.standard_normal((4, 2))).requires_grad_(True)
    b2 = tt(rng.standard_normal(2)).requires_grad_(True)
    assert gc(lambda *p: T.gin_layer(p[0], ei, *p[1:], eps=0.5), (X, W1, b1, W2, b2))
    s = tt(rng.standard_normal((E, 2))).requires_grad_(True)
    assert gc(lambda v: T.segment_softmax(v, ei[1], N), (s,))


# --------------------------------------------------------------------------- memory


def test_gat_saves_no_edge_by_head_by_channel_tensor():
    """Forward with every parameter requiring grad on the small graph (heads 4, C 8, edge
    attributes D 3, loops): every tensor autograd saves has at most E' * max(heads, D) or
    N * heads * C entries — never E' * heads * C (PyG saves several)."""
    kw = to_t(cases("gat_layer", "small")[3])           # heads 4, C 8, D 3, loops, fill 0.5
    for k in ("X", "W", "a_src", "a_dst", "W_e", "a_e"):
        kw[k] = kw[k].clone().requires_grad_(True)
    (H, alpha), sizes = saved_numels(lambda: T.gat_layer(**kw))
    Ep, heads = alpha.shape
    N, HC = H.shape
    C_ = HC // heads
    D = kw["edge_attr"].shape[1]
    assert C_ > 1 and Ep * heads * C_ > max(Ep * max(heads, D), N * HC)
    assert sizes and max(sizes) <= max(Ep * max(heads, D), N * HC)
    H.sum().backward()                                   # and the backward runs


def test_gcn_and_gin_save_no_edge_by_feature_tensor():
    for op in ("gcn_layer", "gin_layer"):
        kw = to_t(cases(op, "small")[1])
        kw["X"] = kw["X"].clone().requires_grad_(True)
        H, sizes = saved_numels(lambda: getattr(T, op)(**kw))
        E = kw["edge_index"].shape[1]
        N, F = kw["X"].shape
        assert max(sizes) < E * F and max(sizes) <= max(E + N, N * max(H.shape[1], 64))


# --------------------------------------------------------------------------- determinism


def _inputs(dev, dtype, seed=0):
    """A graph with high in-degree rows (N 300, E 30,000) and every layer's inputs on ``dev``."""
    rng = np.random.default_rng(seed)
    N, E, F = 300, 30_000, 16
    mk = lambda *s: torch.as_tensor(rng.standard_normal(s), device=dev).to(dtype)  # noqa: E731
    return dict(N=N, E=E, ei=torch.as_tensor(C.random_graph(rng, N, E), device=dev),
                X=mk(N, F), w=torch.as_tensor(rng.uniform(0.5, 1.5, E), device=dev).to(dtype),
                W=mk(F, 32), a=[mk(4, 8) for _ in range(3)], We=mk(3, 32), A=mk(E, 3),
                b1=mk(32), W2=mk(32, 8), b2=mk(8), s=mk(E, 4),
                G=[mk(N, 32), mk(N, 32), mk(N, 8), mk(E, 4)])


def _compute(inp):
    """Forward and backward of GCN (weighted, loops), GAT (heads 4, edge attributes), GIN and
    the segment softmax; returns every output and gradient."""
    N, ei, G = inp["N"], inp["ei"], inp["G"]
    leaf = lambda t: t.clone().requires_grad_(True)  # noqa: E731
    X, w, W, W2, We, s = (leaf(inp[k]) for k in ("X", "w", "W", "W2", "We", "s"))
    a = [leaf(t) for t in inp["a"]]
    outs = []
    H = T.gcn_layer(X, ei, W, None, w)
    outs += [H, *torch.autograd.grad((H * G[0]).sum(), (X, W, w))]
    Hg, alpha = T.gat_layer(X, ei, W, a[0], a[1], None, inp["A"], We, a[2])
    outs += [Hg, alpha, *torch.autograd.grad((Hg * G[1]).sum(), (X, W, *a, We))]
    Hi = T.gin_layer(X, ei, W, inp["b1"], W2, inp["b2"])
    outs += [Hi, *torch.autograd.grad((Hi * G[2]).sum(), (X, W, W2))]
    al = T.segment_softmax(s, ei[1], N)
    outs += [al, *torch.autograd.grad((al * G[3]).sum(), (s,))]
    return [o.detach() for o in outs]


def _run_all(dev, dtype, seed=0):
    return _compute(_inputs(dev, dtype, seed))


def test_cpu_forward_and_backward_are_bitwise_deterministic():
    first, second = _run_all("cpu", F64), _run_all("cpu", F64)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


def test_no_atomic_fallback_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error", RL.AtomicFallbackWarning)
        _run_all("cpu", F32)


# --------------------------------------------------------------------------- host reads


class _Counter:
    def __init__(self):
        self.packed = 0
        self.inside = False
        self.other = []


@pytest.fixture
def reads(monkeypatch):
    """Counts ``read_packed`` calls of the module and every other way a tensor could reach the
    host (item, tolist, numpy, bool/int/float/index conversion) outside them while the call
    runs."""
    c = _Counter()
    real = T.read_packed

    def packed(parts):
        c.packed += 1
        c.inside = True
        try:
            return real(parts)
        finally:
            c.inside = False

    monkeypatch.setattr(T, "read_packed", packed)
    for name in ("item", "tolist", "numpy", "__bool__", "__int__", "__float__", "__index__"):
        orig = getattr(torch.Tensor, name)

        def spy(self, *a, _orig=orig, _name=name, **k):
            if not c.inside:
                c.other.append(_name)
            return _orig(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, spy)
    return c


@pytest.mark.parametrize("op", ["gcn_layer", "gcn_layer_vjp", "gat_layer", "gat_layer_vjp",
                                "gin_layer", "gin_layer_vjp", "segment_softmax",
                                "segment_softmax_vjp", "edge_mlp_weights", "focal_bce",
                                "focal_bce_grad", "fuse", "fuse_vjp"])
def test_one_host_read_per_call(op, reads):
    """Validation (and the self-loop count where loops are added) in ONE packed read; nothing
    else reads the device; fuse reads nothing."""
    base = "focal_bce" if op == "focal_bce_grad" else op
    for kw in cases(base, "tiny"):
        kt = to_t(kw)
        reads.packed, reads.other = 0, []
        out = getattr(T, op)(**kt)
        assert out is not None
        assert reads.packed == (0 if op.startswith("fuse") else 1), (op, reads.packed)
        assert reads.other == [], (op, reads.other)


def test_graph_utilities_read_once(reads):
    ei = torch.as_tensor(graph())
    w = tt(np.linspace(0.5, 1.5, 12))
    for call in (lambda: T.to_csr(ei, 6), lambda: T.add_self_loops(ei, 6, w, "mean", "replace"),
                 lambda: T.gcn_norm(ei, 6, w), lambda: T.gcn_norm(ei, 6, w, add_loops=False)):
        reads.packed, reads.other = 0, []
        call()
        assert reads.packed == 1 and reads.other == []


# --------------------------------------------------------------------------- bad input


def _bad_cases():
    """(name, reference call, torch call) triples with invalid input."""
    rng = np.random.default_rng(1)
    ei = graph()
    X, W, b = rng.standard_normal((6, 3)), rng.standard_normal((3, 4)), rng.standard_normal(4)
    w = rng.uniform(0.5, 1.5, 12)
    a = rng.standard_normal((2, 2))
    A, We = rng.standard_normal((12, 2)), rng.standard_normal((2, 4))
    W1, b1, W2, b2 = (rng.standard_normal(s) for s in ((3, 5), (5,), (5, 2), (2,)))
    big = ei.copy()
    big[1, 3] = 7
    neg = ei.copy()
    neg[0, 2] = -1
    wneg = w.copy()
    wneg[4] = -0.5
    wnan = w.copy()
    wnan[1] = np.nan
    out = []

    def add(name, fn, *args, **kw):
        out.append((name, lambda: fn(*args, **kw),
                    lambda: getattr(T, fn.__name__)(*(to_t(x) for x in args),
                                                    **{k: to_t(v) for k, v in kw.items()})))

    add("gcn float edge_index", RL.gcn_layer, X, ei.astype(np.float64), W)
    add("gcn index too large", RL.gcn_layer, X, big, W, b)
    add("gcn negative index", RL.gcn_layer, X, neg, W, b)
    add("gcn edge_index shape", RL.gcn_layer, X, ei[:1], W)
    add("gcn W mismatch", RL.gcn_layer, X, ei, rng.standard_normal((10, 4)))
    add("gcn b shape", RL.gcn_layer, X, ei, W, b[:3])
    add("gcn negative weight", RL.gcn_layer, X, ei, W, b, wneg)
    add("gcn nan weight", RL.gcn_layer, X, ei, W, b, wnan, normalize=False)
    add("gcn improved not bool", RL.gcn_layer, X, ei, W, improved=1)
    add("gcn vjp G shape", RL.gcn_layer_vjp, X, ei, W, rng.standard_normal((6, 3)))
    add("gcn_norm negative weight", RL.gcn_norm, ei, 6, wneg)
    add("to_csr n_nodes 0", RL.to_csr, ei, 0)
    add("to_csr out of range", RL.to_csr, big, 6)
    add("self loops mode", RL.add_self_loops, ei, 6, w, 1.0, "both")
    add("self loops fill", RL.add_self_loops, ei, 6, w, "median")
    add("gat edge_attr without W_e", RL.gat_layer, X, ei, W, a, a, None, A)
    add("gat W mismatch", RL.gat_layer, X, ei, rng.standard_normal((3, 6)), a, a)
    add("gat slope", RL.gat_layer, X, ei, W, a, a, negative_slope=-0.1)
    add("gat mean bias shape", RL.gat_layer, X, ei, W, a, a, b, concat=False)
    add("gat edge_attr nan", RL.gat_layer, X, ei, W, a, a, None, np.where(A > 1, np.nan, A),
        We, a)
    add("gat fill", RL.gat_layer, X, ei, W, a, a, fill="max")
    add("gin eps inf", RL.gin_layer, X, ei, W1, b1, W2, b2, np.inf)
    add("gin W2 mismatch", RL.gin_layer, X, ei, W1, b1, W1, b2)
    add("softmax dst out of range", RL.segment_softmax, w, big[1], 6)
    add("softmax dst float", RL.segment_softmax, w, big[1].astype(np.float64), 6)
    add("softmax G shape", RL.segment_softmax_vjp, w, ei[1], 6, w[:5])
    add("edge mlp nan", RH.edge_mlp_weights, np.where(A > 1, np.nan, A), W1[:2], b1, W2[:, :1],
        b2[:1])
    add("edge mlp mean only", RH.edge_mlp_weights, A, W1[:2], b1, W2[:, :1], b2[:1], A[0])
    add("edge mlp negative std", RH.edge_mlp_weights, A, W1[:2], b1, W2[:, :1], b2[:1], A[0],
        -np.abs(A[1]))
    Hs = rng.standard_normal((3, 6, 4))
    add("fuse mode", RH.fuse, Hs, "max")
    add("fuse missing params", RH.fuse, Hs, "concat")
    add("fuse W shape", RH.fuse, Hs, "semantic", {"W": rng.standard_normal((3, 2)),
                                                 "b": b[:2], "q": b[:2]})
    add("fuse_vjp G shape", RH.fuse_vjp, Hs, rng.standard_normal((6, 3)))
    p = 1 / (1 + np.exp(-rng.standard_normal(6)))
    y = np.array([0, 1, 1, 0, 1, 0])
    add("focal y not binary", RH.focal_bce, p, y * 2)
    add("focal code outputs > 1", RH.focal_bce, p + 1, y)
    add("focal alpha", RH.focal_bce, p, y, 1.5)
    add("focal nan", RH.focal_bce, np.where(p > 0.5, np.nan, p), y, variant="logits")
    add("focal grad variant", RH.focal_bce_grad, p, y, variant="probs")
    return out


@pytest.mark.parametrize("name,ref_call,torch_call", _bad_cases(),
                         ids=[c[0] for c in _bad_cases()])
def test_bad_input_raises_like_reference(name, ref_call, torch_call):
    raises_like_reference(ref_call, torch_call)


def test_numpy_input_is_refused():
    ei = graph()
    X = np.zeros((6, 3))
    with pytest.raises(TypeError, match="^X is a numpy.ndarray; the torch backend takes"):
        T.gcn_layer(X, torch.as_tensor(ei), torch.zeros(3, 2, dtype=F64))
    with pytest.raises(TypeError, match="^edge_index is a numpy.ndarray"):
        T.to_csr(ei, 6)


# --------------------------------------------------------------------------- CUDA


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("op", LAYER_OPS + HEAD_OPS)
def test_cuda_matches_reference(op):
    """The small cases on CUDA: float64 to 1e-10, float32 to the family's TOL; outputs on the
    device."""
    ref = getattr(RL if op in LAYER_OPS else RH, op)
    for dtype in (F64, F32):
        for kw in cases(op, "small"):
            kc = {k: (v.cuda() if isinstance(v, torch.Tensor) else
                      ({a: t.cuda() for a, t in v.items()} if isinstance(v, dict) else v))
                  for k, v in to_t(kw, dtype).items()}
            got = getattr(T, op)(**kc)
            first = got[next(iter(got))] if isinstance(got, dict) else (
                got[0] if isinstance(got, tuple) else got)
            assert first.device.type == "cuda"
            _compare(got, ref(**to_np(kc)), dtype)


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("dtype", [F32, F64], ids=["f32", "f64"])
def test_cuda_forward_and_backward_are_bitwise_deterministic(dtype):
    """Two runs of every layer's forward and backward on CUDA give identical bits, without
    ``torch.use_deterministic_algorithms``: no atomics on any path."""
    assert not torch.are_deterministic_algorithms_enabled()
    first, second = _run_all("cuda", dtype), _run_all("cuda", dtype)
    for a, b in zip(first, second):
        assert torch.equal(a, b)
    cpu = _run_all("cpu", dtype)
    for a, b in zip(first, cpu):
        assert_close(a, npy(b), dtype, atol=1e-9 if dtype == F64 else 1e-4,
                     rtol=1e-9 if dtype == F64 else 1e-3)


@pytest.mark.gpu
@cuda
def test_cuda_no_synchronisation_besides_the_packed_read(monkeypatch):
    """With CUDA's sync debug mode set to "error", forward and backward of every layer run:
    the only device-to-host copy is the validation's packed read."""
    real = T.read_packed

    def packed(parts):
        torch.cuda.set_sync_debug_mode("default")
        try:
            return real(parts)
        finally:
            torch.cuda.set_sync_debug_mode("error")

    monkeypatch.setattr(T, "read_packed", packed)
    inp = _inputs("cuda", F32)                       # the uploads happen before
    _compute(inp)                                    # warm-up (cuSPARSE handles, allocator)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        _compute(inp)
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.gpu
@cuda
def test_cuda_gat_peak_memory_below_pyg():
    """GAT heads 8, C 8, fp32, forward + backward: our peak memory at most half of PyG
    GATConv's (which materialises several E x heads x C message tensors), and less than one
    E x heads x C float32 tensor above the inputs."""
    pyg = pytest.importorskip("torch_geometric")
    dev = torch.device("cuda")
    g = torch.Generator(device=dev).manual_seed(0)
    N, E, F, heads, Cc = 100_000, 2_000_000, 64, 8, 8
    ei = torch.randint(0, N, (2, E), device=dev, generator=g)
    X = torch.randn(N, F, device=dev, generator=g)
    W = torch.randn(F, heads * Cc, device=dev, generator=g) / 8
    a1 = torch.randn(heads, Cc, device=dev, generator=g)
    a2 = torch.randn(heads, Cc, device=dev, generator=g)

    def peak(fn):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base

    def ours():
        leaves = [t.clone().requires_grad_(True) for t in (X, W, a1, a2)]
        H, _ = T.gat_layer(leaves[0], ei, *leaves[1:])
        H.sum().backward()

    conv = pyg.nn.GATConv(F, Cc, heads=heads, residual=False).to(dev)

    def theirs():
        Xl = X.clone().requires_grad_(True)
        conv(Xl, ei).sum().backward()

    ours()
    theirs()                                         # warm-up (cuSPARSE handles, kernels)
    p_ours, p_pyg = peak(ours), peak(theirs)
    assert p_ours * 2 <= p_pyg, (p_ours, p_pyg)
    assert p_ours < E * heads * Cc * 4 * 2, p_ours
