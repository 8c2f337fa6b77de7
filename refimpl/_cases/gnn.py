"""Registry cases, tolerances and reference VJPs of the gnn family (spec ``gnn_pdm.md``;
multilayer GNN for predictive maintenance, arXiv 2507.07298; layers with PyG's semantics).

Graph layers (REF-L): random directed graphs from :func:`random_graph`, which always has the
tiny graph's features — an isolated node (no in- or out-edges), a duplicated non-loop edge and an
existing self-loop on one node, present TWICE with different weights (the "remaining" rule keeps
the last one in input order) — with the edges in random (not CSR) order. Edge weights ~
U(0.5, 1.5), edge attributes, features and parameters ~ N(0, 1) scaled by 1/sqrt(fan-in);
attention vectors ~ N(0, 1) (scores of order 1-10, so the softmax's max shift matters).
Scales (contract): tiny N = 6, E = 12, F = 3, heads 2, C 2 (<= 3 cases per op: the Numba
simulator runs them); small N = 347, E = 20,000, F = 12, heads in {1, 4}; bench CPU N = 1e4,
E = 1e5, F = 64 (GCN, GIN, GAT heads 1 and heads 8 x C 8) plus the OG&E-scale latency case
(N = 347, E = 24,000, F = 12 -> 64), float64; GPU (lazy builders, ``where="gpu"``, float32)
N = 1e6, E = 1e7, F = 64, GAT heads 1 (C 64) and 8 (C 8).
The ``_vjp`` ops take the cotangent ``G`` as an input: ``cases_<op>_vjp`` = the op's cases plus
G ~ N(0, 1) of the output's shape. ``vjp_<op>(kw, cot)`` are the reference VJPs the harness
compares each backend's autograd with (keys "d" + input name).

Fusion, loss and edge MLP (REF-M): see the section at the end.
Every case is deterministic given ``rng``.
"""

from __future__ import annotations

import numpy as np

from refimpl._cases import Case

PAPER = "2507.07298"   # Multilayer GNN for predictive maintenance and clustering in power grids

# dtype -> output name ("*" = default) -> (rtol, atol)
# float32 gradients: an entry near 0 can be the sum of hundreds of O(10-100) terms that cancel
# (dW1 of GIN, dX and da_dst of GAT on the 347-node cases), so its float32 error is set by the
# terms, not by the entry: measured 2.6e-5 .. 7.3e-5 on torch and the CuPy emulator, with
# float64 agreeing to 1e-13. The gradient outputs get atol 2e-4 in float32.
_GRADS = ("dX", "dW", "db", "dedge_weight", "da_src", "da_dst", "dW_e", "da_e", "dW1", "db1",
          "dW2", "db2", "dscores", "dH_stack")
TOL = {
    "float64": {"*": (1e-10, 1e-10)},
    "float32": {"*": (5e-4, 1e-5), **{g: (5e-4, 2e-4) for g in _GRADS}},
}

DTYPES = ("float32", "float64")


def _check_scale(scale):
    if scale not in ("tiny", "small", "bench"):
        raise ValueError(f"unknown scale {scale!r}; expected 'tiny', 'small' or 'bench'")


# ==================================================================== graph layers (REF-L)

TINY = dict(N=6, E=12, F=3)
SMALL = dict(N=347, E=20_000, F=12)
BENCH_CPU = dict(N=10_000, E=100_000, F=64)
BENCH_OGE = dict(N=347, E=24_000, F=12)          # one relation of the OG&E graph (latency)
BENCH_GPU = dict(N=1_000_000, E=10_000_000, F=64)


def random_graph(rng, n_nodes, n_edges, *, isolated=True, duplicate=True, self_loop=True):
    """``edge_index`` (2, n_edges) int64, edges in random order, with (each optional):

    * ``isolated``: node ``n_nodes // 2`` has no edge at all (in- or out-);
    * ``duplicate``: one non-loop edge appears twice;
    * ``self_loop``: one node has a self-loop, present twice (so a weighted graph exercises
      "the last loop in input order wins");
    * the other edges: uniform random non-loop pairs among the remaining nodes (further
      duplicates may occur by chance).
    Needs ``n_nodes >= 3`` and ``n_edges >= 4``."""
    if n_nodes < 3 or n_edges < 4:
        raise ValueError(f"random_graph needs n_nodes >= 3 and n_edges >= 4, got "
                         f"{n_nodes}, {n_edges}")
    nodes = np.arange(n_nodes, dtype=np.int64)
    others = np.delete(nodes, n_nodes // 2) if isolated else nodes
    M = others.shape[0]
    k = n_edges - int(duplicate) - 2 * int(self_loop)
    a = rng.integers(0, M, k)
    b = (a + rng.integers(1, M, k)) % M            # b != a: no loops among the random edges
    src, dst = [others[a]], [others[b]]
    if duplicate:
        src.append(others[a[:1]])
        dst.append(others[b[:1]])
    if self_loop:
        v = others[rng.integers(0, M)]
        src.append(np.array([v, v]))
        dst.append(np.array([v, v]))
    ei = np.stack([np.concatenate(src), np.concatenate(dst)])
    return ei[:, rng.permutation(ei.shape[1])]


def edge_weights(rng, n_edges):
    """Positive GCN edge weights ~ U(0.5, 1.5)."""
    return rng.uniform(0.5, 1.5, n_edges)


def _glorot(rng, fan_in, fan_out):
    return rng.standard_normal((fan_in, fan_out)) / np.sqrt(fan_in)


def _features(rng, N, F):
    return rng.standard_normal((N, F))


def _size_label(size, **extra):
    tags = "".join(f"_{k}{v}" for k, v in extra.items())
    return f"N{size['N']}_E{size['E']}_F{size['F']}{tags}"


# ---- GCN

def gcn_inputs(rng, size, F_out, *, weighted=True, bias=True, improved=False, add_loops=True,
               normalize=True):
    """``gcn_layer`` kwargs on a :func:`random_graph` of ``size``."""
    N, E, F = size["N"], size["E"], size["F"]
    kw = dict(X=_features(rng, N, F), edge_index=random_graph(rng, N, E), W=_glorot(rng, F, F_out),
              b=rng.standard_normal(F_out) if bias else None,
              edge_weight=edge_weights(rng, E) if weighted else None,
              improved=improved, add_loops=add_loops, normalize=normalize)
    return {k: v for k, v in kw.items() if v is not None}


def _gcn_case(rng, size, F_out, tag, where="any", **opts):
    label = _size_label(size, Fout=F_out) + "_" + tag
    if where == "gpu":
        return Case(label, lambda: gcn_inputs(rng, size, F_out, **opts), "gpu", ("float32",))
    if where == "cpu":
        return Case(label, lambda: gcn_inputs(rng, size, F_out, **opts), "cpu", ("float64",))
    return Case(label, gcn_inputs(rng, size, F_out, **opts))


def cases_gcn_layer(rng, scale):
    """``gcn_layer``: loops (with a node's existing duplicated loop: the last weight is kept),
    ``improved``, no loops with learned-like weights (the PdM code), ``normalize=False`` (plain
    weighted sum), with and without weights and bias."""
    _check_scale(scale)
    if scale == "tiny":
        return [_gcn_case(rng, TINY, 4, "loops_improved_weighted_bias", improved=True),
                _gcn_case(rng, TINY, 4, "unnormalized_weighted_nobias", bias=False,
                          normalize=False),
                _gcn_case(rng, TINY, 4, "noloops_weighted_bias", add_loops=False)]
    if scale == "small":
        S = SMALL
        return [_gcn_case(rng, S, 16, "loops_unweighted_bias", weighted=False),
                _gcn_case(rng, S, 16, "loops_weighted_bias"),
                _gcn_case(rng, S, 16, "loops_improved_weighted_nobias", improved=True,
                          bias=False),
                _gcn_case(rng, S, 16, "noloops_weighted_bias", add_loops=False),
                _gcn_case(rng, S, 16, "unnormalized_weighted_nobias", bias=False,
                          normalize=False)]
    return [_gcn_case(rng, BENCH_CPU, 64, "loops_unweighted_bias", "cpu", weighted=False),
            _gcn_case(rng, BENCH_OGE, 64, "noloops_weighted_bias", "cpu", add_loops=False),
            _gcn_case(rng, BENCH_GPU, 64, "loops_weighted_bias", "gpu")]


# ---- GAT

def gat_inputs(rng, size, heads, C, *, D=0, bias=True, concat=True, add_loops=True, fill="mean",
               negative_slope=0.2):
    """``gat_layer`` kwargs on a :func:`random_graph` of ``size`` (``D`` > 0: edge attributes
    (E, D) with W_e and a_e)."""
    N, E, F = size["N"], size["E"], size["F"]
    kw = dict(X=_features(rng, N, F), edge_index=random_graph(rng, N, E),
              W=_glorot(rng, F, heads * C), a_src=rng.standard_normal((heads, C)),
              a_dst=rng.standard_normal((heads, C)),
              negative_slope=negative_slope, concat=concat, add_loops=add_loops, fill=fill)
    if bias:
        kw["b"] = rng.standard_normal(heads * C if concat else C)
    if D:
        kw.update(edge_attr=rng.standard_normal((E, D)), W_e=_glorot(rng, D, heads * C),
                  a_e=rng.standard_normal((heads, C)))
    return kw


def _gat_case(rng, size, heads, C, tag, where="any", **opts):
    label = _size_label(size, h=heads, C=C) + "_" + tag
    if where == "gpu":
        return Case(label, lambda: gat_inputs(rng, size, heads, C, **opts), "gpu", ("float32",))
    if where == "cpu":
        return Case(label, lambda: gat_inputs(rng, size, heads, C, **opts), "cpu", ("float64",))
    return Case(label, gat_inputs(rng, size, heads, C, **opts))


def cases_gat_layer(rng, scale):
    """``gat_layer``: heads concatenated and averaged, edge attributes with the loops' mean (and a
    constant) fill, no loops (the existing loops then stay ordinary edges), no bias, another
    negative slope; small: heads 1 (the clustering code's spatial branch: C 64, D 8) and 4."""
    _check_scale(scale)
    if scale == "tiny":
        return [_gat_case(rng, TINY, 2, 2, "concat_edgeattr_loops_bias", D=2),
                _gat_case(rng, TINY, 2, 2, "mean_noloops_bias", concat=False, add_loops=False),
                _gat_case(rng, TINY, 2, 2, "concat_loops_nobias_slope0.1", bias=False,
                          negative_slope=0.1)]
    if scale == "small":
        S = SMALL
        return [_gat_case(rng, S, 1, 64, "concat_edgeattr8_loops_bias", D=8),
                _gat_case(rng, S, 4, 8, "concat_loops_bias"),
                _gat_case(rng, S, 4, 8, "mean_edgeattr3_noloops_bias", D=3, concat=False,
                          add_loops=False),
                _gat_case(rng, S, 4, 8, "concat_edgeattr3_fill0.5_nobias", D=3, fill=0.5,
                          bias=False)]
    return [_gat_case(rng, BENCH_CPU, 1, 64, "concat_loops_bias", "cpu"),
            _gat_case(rng, BENCH_CPU, 8, 8, "concat_loops_bias", "cpu"),
            _gat_case(rng, BENCH_OGE, 1, 64, "concat_edgeattr8_loops_bias", "cpu", D=8),
            _gat_case(rng, BENCH_GPU, 1, 64, "concat_loops_bias", "gpu"),
            _gat_case(rng, BENCH_GPU, 8, 8, "concat_loops_bias", "gpu")]


# ---- GIN

def gin_inputs(rng, size, hidden, F_out, *, eps=0.0):
    """``gin_layer`` kwargs on a :func:`random_graph` of ``size`` (biases ~ N(0, 0.5^2), so
    that some ReLU units are off)."""
    N, E, F = size["N"], size["E"], size["F"]
    return dict(X=_features(rng, N, F), edge_index=random_graph(rng, N, E),
                W1=_glorot(rng, F, hidden), b1=0.5 * rng.standard_normal(hidden),
                W2=_glorot(rng, hidden, F_out), b2=0.5 * rng.standard_normal(F_out), eps=eps)


def _gin_case(rng, size, hidden, F_out, tag, where="any", **opts):
    label = _size_label(size, hid=hidden, Fout=F_out) + "_" + tag
    if where == "gpu":
        return Case(label, lambda: gin_inputs(rng, size, hidden, F_out, **opts), "gpu",
                    ("float32",))
    if where == "cpu":
        return Case(label, lambda: gin_inputs(rng, size, hidden, F_out, **opts), "cpu",
                    ("float64",))
    return Case(label, gin_inputs(rng, size, hidden, F_out, **opts))


def cases_gin_layer(rng, scale):
    """``gin_layer``: eps = 0 (the code) and eps = 0.5; small: the code's MLP (hidden 64)."""
    _check_scale(scale)
    if scale == "tiny":
        return [_gin_case(rng, TINY, 4, 4, "eps0"),
                _gin_case(rng, TINY, 4, 4, "eps0.5", eps=0.5)]
    if scale == "small":
        return [_gin_case(rng, SMALL, 64, 64, "eps0"),
                _gin_case(rng, SMALL, 16, 8, "eps0.5", eps=0.5)]
    return [_gin_case(rng, BENCH_CPU, 64, 64, "eps0", "cpu"),
            _gin_case(rng, BENCH_OGE, 64, 64, "eps0", "cpu"),
            _gin_case(rng, BENCH_GPU, 64, 64, "eps0", "gpu")]


# ---- segment softmax

def softmax_inputs(rng, size, heads=None, spread=5.0):
    """``segment_softmax`` kwargs: ``dst`` = the destinations of a :func:`random_graph` (input
    order, unsorted; the isolated node has an empty segment), scores ~ N(0, spread^2), (E,) if
    ``heads`` is None else (E, heads)."""
    N, E = size["N"], size["E"]
    dst = random_graph(rng, N, E)[1]
    shape = (E,) if heads is None else (E, heads)
    return dict(scores=spread * rng.standard_normal(shape), dst=dst, n_nodes=N)


def _softmax_case(rng, size, heads, tag="", where="any", **opts):
    label = f"N{size['N']}_E{size['E']}_" + ("1d" if heads is None else f"h{heads}") + tag
    if where == "gpu":
        return Case(label, lambda: softmax_inputs(rng, size, heads, **opts), "gpu", ("float32",))
    if where == "cpu":
        return Case(label, lambda: softmax_inputs(rng, size, heads, **opts), "cpu",
                    ("float64",))
    return Case(label, softmax_inputs(rng, size, heads, **opts))


def cases_segment_softmax(rng, scale):
    """``segment_softmax``: 1-D and 2-D scores (the max shift matters: spread 5, one case 30)."""
    _check_scale(scale)
    if scale == "tiny":
        return [_softmax_case(rng, TINY, None), _softmax_case(rng, TINY, 2, "_spread30",
                                                              spread=30.0)]
    if scale == "small":
        return [_softmax_case(rng, SMALL, None), _softmax_case(rng, SMALL, 1),
                _softmax_case(rng, SMALL, 4, "_spread30", spread=30.0)]
    return [_softmax_case(rng, BENCH_CPU, 8, where="cpu"),
            _softmax_case(rng, BENCH_GPU, 8, where="gpu")]


# ---- VJP ops: the op's cases plus the cotangent G

def _out_shape(kw, op):
    N = kw["X"].shape[0] if "X" in kw else None
    if op == "gcn_layer":
        return (N, kw["W"].shape[1])
    if op == "gin_layer":
        return (N, kw["W2"].shape[1])
    if op == "gat_layer":
        heads, C = kw["a_src"].shape
        return (N, heads * C if kw.get("concat", True) else C)
    return kw["scores"].shape


def _with_G(rng, cases, op):
    out = []
    for case in cases:
        if callable(case.kwargs):
            def build(make=case.kwargs):
                kw = make()
                return dict(kw, G=rng.standard_normal(_out_shape(kw, op)))
            out.append(Case(case.label, build, case.where, case.dtypes))
        else:
            kw = case.kwargs
            out.append(Case(case.label, dict(kw, G=rng.standard_normal(_out_shape(kw, op))),
                            case.where, case.dtypes))
    return out


def cases_gcn_layer_vjp(rng, scale):
    return _with_G(rng, cases_gcn_layer(rng, scale), "gcn_layer")


def cases_gat_layer_vjp(rng, scale):
    return _with_G(rng, cases_gat_layer(rng, scale), "gat_layer")


def cases_gin_layer_vjp(rng, scale):
    return _with_G(rng, cases_gin_layer(rng, scale), "gin_layer")


def cases_segment_softmax_vjp(rng, scale):
    return _with_G(rng, cases_segment_softmax(rng, scale), "segment_softmax")


# ---- reference VJPs (float64 kwargs, cotangent of the first output) -> {"d" + input: grad}

def vjp_gcn_layer(kw, cot):
    """d<cot, H>/d(X, W, b, edge_weight) by :func:`refimpl._gnn_layers.gcn_layer_vjp`."""
    from refimpl._gnn_layers import gcn_layer_vjp

    return gcn_layer_vjp(G=np.asarray(cot, dtype=np.float64), **kw)


def vjp_gat_layer(kw, cot):
    """d<cot, H>/d(X, W, a_src, a_dst, b, W_e, a_e) (alpha gets no cotangent)."""
    from refimpl._gnn_layers import gat_layer_vjp

    return gat_layer_vjp(G=np.asarray(cot, dtype=np.float64), **kw)


def vjp_gin_layer(kw, cot):
    """d<cot, H>/d(X, W1, b1, W2, b2)."""
    from refimpl._gnn_layers import gin_layer_vjp

    return gin_layer_vjp(G=np.asarray(cot, dtype=np.float64), **kw)


def vjp_segment_softmax(kw, cot):
    """d<cot, alpha>/d scores."""
    from refimpl._gnn_layers import segment_softmax_vjp

    return segment_softmax_vjp(G=np.asarray(cot, dtype=np.float64), **kw)


# ==================================================================== fusion, loss, edge MLP (REF-M)
#
# REF-M appends the fuse / focal_bce / edge_mlp_weights cases below this line.
#
# Inputs (all float64; the harness casts them): relation stacks H_stack ~ N(0, 1) with R = 3
# relations (the code's spatial / temporal / causal); fusion parameters at the scale of a trained
# layer (global logits w ~ N(0, 1); concat W ~ N(0, 1/(R F)); attention W ~ N(0, 1/F),
# b ~ N(0, 0.1^2), q ~ N(0, 1), so tanh is not saturated). Focal loss: "code" outputs are
# sigmoid probabilities sigmoid(2 N(0, 1)) with a few exactly 0 and 1 (the [0, 1] ends the
# validator accepts), "logits" outputs are logits 2 N(0, 1) (one case at +-30, where 1 - p_t
# underflows); labels 0/1 mixed, as int64, float64 or bool arrays. Edge MLP: attributes with
# per-column scales (like distances next to flags), the code's hidden width 64, Kaiming-normal
# (fan-in) weights and bias 0.1; standardised cases pass the attributes' mean and unbiased std,
# with one constant column (std 0: the + 1e-8 guard).
# Scales: tiny N = 6, F = 3 (edge MLP: E = 12); small N = 347, F = 64 (edge MLP: E = 20,000);
# bench CPU N = 1e4 (E = 1e5), GPU (lazy, float32) N = 1e6 (E = 1e7). ``fuse`` and
# ``fuse_vjp`` have 4 tiny cases (one per mode; the contract's "<= 3 per op" would drop a mode —
# the sizes are trivial for the simulator).

FUSE_R = 3
HEADS_TINY = dict(N=6, F=3, E=12)
HEADS_SMALL = dict(N=347, F=64, E=20_000)
HEADS_BENCH_CPU = dict(N=10_000, F=64, E=100_000)
HEADS_BENCH_GPU = dict(N=1_000_000, F=64, E=10_000_000)
EDGE_MLP_HIDDEN = 64       # WeightedGCNConv: Linear(edge_attr_dim, 64) -> ReLU -> Linear(64, 1)


def _lazy_or_now(label, make, where, dtypes=None):
    """A Case built now (tiny/small) or on demand (bench: ``where`` "cpu"/"gpu")."""
    if where in ("cpu", "gpu"):
        return Case(label, make, where, dtypes)
    return Case(label, make(), where, dtypes)


# ---- fuse

def fuse_params(rng, mode, R, F, width):
    """Parameters of ``fuse``: width = F_out (concat) or A (semantic / node); None for the
    global mode's default (w = ones) when ``width`` is None."""
    if mode == "global":
        return None if width is None else {"w": rng.standard_normal(R)}
    if mode == "concat":
        return {"W": rng.standard_normal((R * F, width)) / np.sqrt(R * F),
                "b": rng.standard_normal(width)}
    return {"W": rng.standard_normal((F, width)) / np.sqrt(F),
            "b": 0.1 * rng.standard_normal(width), "q": rng.standard_normal(width)}


def fuse_inputs(rng, size, mode, width):
    N, F = size["N"], size["F"]
    kw = dict(H_stack=rng.standard_normal((FUSE_R, N, F)), mode=mode)
    params = fuse_params(rng, mode, FUSE_R, F, width)
    if params is not None:
        kw["params"] = params
    return kw


def _fuse_case(rng, size, mode, width, where="any"):
    tag = {"global": "w" if width is not None else "w_default", "concat": f"Fout{width}",
           "semantic": f"A{width}", "node": f"A{width}"}[mode]
    label = f"R{FUSE_R}_N{size['N']}_F{size['F']}_{mode}_{tag}"
    dtypes = ("float32",) if where == "gpu" else None
    return _lazy_or_now(label, lambda: fuse_inputs(rng, size, mode, width), where, dtypes)


def cases_fuse(rng, scale):
    """``fuse(H_stack, mode, params)``: all four modes with R = 3 (global also with params None,
    the code's w = ones)."""
    _check_scale(scale)
    if scale == "tiny":
        S = HEADS_TINY
        return [_fuse_case(rng, S, "global", None), _fuse_case(rng, S, "concat", 4),
                _fuse_case(rng, S, "semantic", 4), _fuse_case(rng, S, "node", 4)]
    if scale == "small":
        S = HEADS_SMALL
        return [_fuse_case(rng, S, "global", None), _fuse_case(rng, S, "global", 1),
                _fuse_case(rng, S, "concat", 32), _fuse_case(rng, S, "semantic", 16),
                _fuse_case(rng, S, "node", 16)]
    out = []
    for size, where in ((HEADS_BENCH_CPU, "cpu"), (HEADS_BENCH_GPU, "gpu")):
        out += [_fuse_case(rng, size, "global", 1, where),
                _fuse_case(rng, size, "concat", 32, where),
                _fuse_case(rng, size, "node", 16, where)]
    return out


def _fuse_out_shape(kw):
    params = kw.get("params")
    F_out = params["W"].shape[1] if kw.get("mode") == "concat" else kw["H_stack"].shape[2]
    return (kw["H_stack"].shape[1], F_out)


def cases_fuse_vjp(rng, scale):
    """``fuse_vjp(H_stack, G, mode, params)``: the fuse cases plus G ~ N(0, 1) of H's shape."""
    out = []
    for case in cases_fuse(rng, scale):
        if callable(case.kwargs):
            def build(make=case.kwargs):
                kw = make()
                return dict(kw, G=rng.standard_normal(_fuse_out_shape(kw)))
            out.append(Case(case.label, build, case.where, case.dtypes))
        else:
            kw = case.kwargs
            out.append(Case(case.label, dict(kw, G=rng.standard_normal(_fuse_out_shape(kw))),
                            case.where, case.dtypes))
    return out


def outputs_fuse(result, kwargs):
    """``(H, beta)`` -> {"H", "beta"}, without "beta" when it is None (concat)."""
    H, beta = result
    return {"H": H} if beta is None else {"H": H, "beta": beta}


def vjp_fuse(kw, cot):
    """d<cot, H>/d H_stack by :func:`refimpl._gnn_heads.fuse_vjp` (beta gets no cotangent; only
    H_stack is differentiated in the registry)."""
    from refimpl._gnn_heads import fuse_vjp

    g = fuse_vjp(kw["H_stack"], np.asarray(cot, dtype=np.float64), kw.get("mode", "global"),
                 kw.get("params"))
    return {"dH_stack": g["dH_stack"]}


# ---- focal_bce

def focal_inputs(rng, N, variant, *, alpha=0.75, gamma=2.0, label_dtype=np.int64, ends=False,
                 spread=2.0):
    """``focal_bce`` kwargs: labels ~ Bernoulli(0.5) (both classes present), outputs sigmoid
    probabilities ("code"; ``ends``: two exactly 0 and two exactly 1, each against both labels)
    or logits spread * N(0, 1) ("logits")."""
    y = (rng.random(N) < 0.5).astype(np.int64)
    y[:2] = (0, 1)
    z = spread * rng.standard_normal(N)
    x = 1.0 / (1.0 + np.exp(-z)) if variant == "code" else z
    if ends and N >= 6:
        x[2:6] = (0.0, 0.0, 1.0, 1.0)
        y[2:6] = (0, 1, 0, 1)
    return dict(outputs=x, y=y.astype(label_dtype), alpha=alpha, gamma=gamma, variant=variant)


def cases_focal_bce(rng, scale):
    """``focal_bce(outputs, y, alpha, gamma, variant)`` (also ``focal_bce_grad``): the code's
    form (scalar alpha on sigmoid outputs, some exactly 0 and 1) and the logits form (alpha_t),
    gamma in {0, 0.5, 2, 3}, labels int64 / float64 / bool."""
    _check_scale(scale)
    if scale == "tiny":
        N = HEADS_TINY["N"]
        return [Case("N6_code_ends", focal_inputs(rng, N, "code", ends=True)),
                Case("N6_code_g0.5_a0.6_yfloat",
                     focal_inputs(rng, N, "code", alpha=0.6, gamma=0.5, label_dtype=np.float64)),
                Case("N6_logits_a0.25", focal_inputs(rng, N, "logits", alpha=0.25))]
    if scale == "small":
        N = HEADS_SMALL["N"]
        return [Case("N347_code_ends", focal_inputs(rng, N, "code", ends=True)),
                Case("N347_code_g0.5_a0.6_ybool",
                     focal_inputs(rng, N, "code", alpha=0.6, gamma=0.5, label_dtype=bool)),
                Case("N347_logits_a0.25", focal_inputs(rng, N, "logits", alpha=0.25)),
                Case("N347_logits_g0_yfloat",
                     focal_inputs(rng, N, "logits", gamma=0.0, label_dtype=np.float64)),
                Case("N347_logits_g3_spread30",
                     focal_inputs(rng, N, "logits", alpha=0.25, gamma=3.0, spread=30.0))]
    out = []
    for size, where in ((HEADS_BENCH_CPU, "cpu"), (HEADS_BENCH_GPU, "gpu")):
        dtypes = ("float32",) if where == "gpu" else None
        N = size["N"]
        for variant in ("code", "logits"):
            out.append(Case(f"N{N}_{variant}",
                            lambda N=N, v=variant: focal_inputs(rng, N, v), where, dtypes))
    return out


def vjp_focal_bce(kw, cot):
    """d(cot * loss)/d outputs by :func:`refimpl._gnn_heads.focal_bce_grad`."""
    from refimpl._gnn_heads import focal_bce_grad

    _, d = focal_bce_grad(**kw)
    return {"doutputs": float(np.asarray(cot)) * d}


# ---- edge_mlp_weights

def edge_mlp_inputs(rng, E, D, *, standardise=False, hidden=EDGE_MLP_HIDDEN):
    """``edge_mlp_weights`` kwargs: attributes with column scales in [0.5, 20] and offsets in
    [-5, 5] (column 0 constant when standardised), Kaiming-normal (fan-in) W1, W2, biases 0.1."""
    scales, offsets = rng.uniform(0.5, 20.0, D), rng.uniform(-5.0, 5.0, D)
    attr = rng.standard_normal((E, D)) * scales + offsets
    kw = dict(edge_attr=attr, W1=rng.standard_normal((D, hidden)) * np.sqrt(2.0 / D),
              b1=np.full(hidden, 0.1), W2=rng.standard_normal((hidden, 1)) * np.sqrt(2.0 / hidden),
              b2=np.array([0.1]))
    if standardise:
        attr[:, 0] = 2.5
        kw.update(mean=attr.mean(axis=0), std=attr.std(axis=0, ddof=1))
    else:
        kw["edge_attr"] = attr / scales          # raw attributes of order 1-5: unsaturated
    return kw


def cases_edge_mlp_weights(rng, scale):
    """``edge_mlp_weights(edge_attr, W1, b1, W2, b2, mean, std)``: the code's attribute widths
    (spatial 8, temporal 2, causal 13), with and without the standardisation."""
    _check_scale(scale)
    if scale == "tiny":
        E = HEADS_TINY["E"]
        return [Case("E12_D8", edge_mlp_inputs(rng, E, 8)),
                Case("E12_D8_standardised", edge_mlp_inputs(rng, E, 8, standardise=True)),
                Case("E12_D2_standardised", edge_mlp_inputs(rng, E, 2, standardise=True))]
    if scale == "small":
        E = HEADS_SMALL["E"]
        return [Case(f"E{E}_D8", edge_mlp_inputs(rng, E, 8)),
                Case(f"E{E}_D8_standardised", edge_mlp_inputs(rng, E, 8, standardise=True)),
                Case(f"E{E}_D2_standardised", edge_mlp_inputs(rng, E, 2, standardise=True)),
                Case(f"E{E}_D13_standardised", edge_mlp_inputs(rng, E, 13, standardise=True))]
    out = []
    for size, where in ((HEADS_BENCH_CPU, "cpu"), (HEADS_BENCH_GPU, "gpu")):
        dtypes = ("float32",) if where == "gpu" else None
        E = size["E"]
        out.append(Case(f"E{E}_D8_standardised",
                        lambda E=E: edge_mlp_inputs(rng, E, 8, standardise=True), where, dtypes))
    return out
