r"""Graph layers and heads of the multilayer GNN for predictive maintenance (gnn_pdm.md) on torch
tensors.

Same functions, signatures, messages and results as the reference (:mod:`refimpl._gnn_layers`,
:mod:`refimpl._gnn_heads`). Paper: Kazim et al., "Multilayer GNN for Predictive Maintenance and
Clustering in Power Grids", arXiv 2507.07298; official code ``CEL-lab/Multilayer_GNN``
@6910437; the layers have PyG's semantics (``torch_geometric/nn/conv/{gcn_conv,gat_conv,
gin_conv}.py``, ``torch_geometric/utils/{loop,_softmax}.py``); the focal loss's alpha_t form of
``variant="logits"`` is Lin et al., arXiv 1708.02002. Inputs are torch tensors on any device;
results are tensors of the input's float dtype (float32 or float64) on its device, integer
outputs int64, the focal loss a 0-d tensor. ``edge_index`` may be int64 or int32 (any integer
dtype). Messages flow ``edge_index[0]`` (source j) -> ``edge_index[1]`` (destination i).

Equations as implemented
------------------------
CSR order: the edges stably sorted by (dst, src) — ``torch.sort(dst * N + src, stable=True)``
on the device; duplicates keep their input order. ``ptr = searchsorted(dst_sorted,
arange(N + 1))`` (the exclusive cumsum of the in-degrees, without a scatter).

Self-loops (a single stable sort of the E + N keys of ``[input edges | one new loop per
node]``; existing loops get the key ``N*N + node`` so they sort after every kept edge, grouped
by node in input order, and are cut off; the number L of existing loops is read on the host in
the call's one packed read, see below):

- ``"remaining"`` (GCN, PyG ``add_remaining_self_loops``): every existing loop is removed, one
  loop per node is appended with the weight of the node's LAST existing loop in input order
  (PyG's assignment order on the CPU) or ``fill`` (1, 2 when ``improved``); ``fill="mean"``:
  the mean of the node's incoming non-loop attributes, 0 if none (PyG's mean runs over all
  incoming rows, but it only reaches nodes without an existing loop: the same number).
- ``"replace"`` (GAT, PyG ``remove_self_loops`` + ``add_self_loops``): existing loops removed,
  one loop per node added with attribute ``fill`` or, for ``"mean"``, the mean of the node's
  incoming non-loop attributes (0 if none).

GCN (``normalize=True``): ``deg_i = sum_{e: dst=i} w_e`` (loops included), ``dinv = deg^-1/2``
with ``inf -> 0``, ``norm_e = dinv[src] w_e dinv[dst]``,
``H_i = sum_{e: dst=i} norm_e (X W)[src_e] + b``; ``normalize=False``: ``norm_e = w_e`` and no
loops (``add_loops`` ignored, as in PyG). Differentiable w.r.t. the edge weights including
deg's dependence on them.

Segment softmax: ``alpha_e = exp(s_e - max_seg) / (sum_seg exp(s - max_seg) + 1e-16)`` per
destination and head; the max is taken without gradient (shift invariance); backward
``ds_e = alpha_e (dalpha_e - sum_seg alpha dalpha)``.

GAT v1: ``Xp = X W`` viewed (N, heads, C); ``s_src = sum_c Xp a_src``, ``s_dst = sum_c Xp
a_dst`` (N, heads); with edge attributes ``s_edge = edge_attr M``, ``M = sum_c W_e.view(D,
heads, C) a_e`` (D, heads) — the same number as ``sum_c (edge_attr W_e) a_e`` without the
E x heads x C product; ``alpha = softmax_dst(LeakyReLU(s_src[src] + s_dst[dst] + s_edge))``;
``out_{i,h} = sum_{e: dst=i} alpha_{e,h} Xp_{src,h}``; heads concatenated or averaged; ``+ b``.

GIN: ``H = relu(((1 + eps) X + sum_{e: dst=i} X_src) W1 + b1) W2 + b2`` (loops in the input
counted as given).

Heads: ``edge_mlp_weights``: ``z = (edge_attr - mean) / (std + 1e-8)``,
``w = sigmoid(relu(z W1 + b1) W2 + b2) + 1e-8``; ``fuse``: global ``beta = softmax(w)``,
``H = sum_r beta_r H_r``; concat ``H = [H_1|...|H_R] W + b``; semantic ``s_r = mean_i q.tanh(W
h_i^r + b)``, ``beta = softmax_r(s)``; node ``beta_ir = softmax_r(q.tanh(W h_i^r + b))``;
``focal_bce``: ``BCE = BCE_with_logits(outputs, y)``, ``p_t = exp(-BCE)``, ``loss =
mean(a (1 - p_t)^gamma BCE)`` with ``a = alpha`` ("code": outputs are the model's sigmoid
probabilities, the notebook's double sigmoid) or ``a = alpha y + (1 - alpha)(1 - y)``
("logits"). These are plain torch expressions (autograd).

Kernels: determinism and memory (spec sec. 6)
---------------------------------------------
No atomics in any forward or backward; ``ATOMIC_PATHS`` is empty.

- Sums over a destination's edges are CSR sparse-dense products ``torch.sparse_csr_tensor(ptr,
  src, values) @ Y`` (2-D Y; on CUDA cuSPARSE SpMM ``CUSPARSE_SPMM_CSR_ALG2``, documented
  bit-wise deterministic; on the CPU a row loop) or ``torch.segment_reduce(..., offsets=ptr)``
  on CSR-ordered rows (one thread per output row, a fixed order; cub's segmented reduce for one
  column; ``unsafe=True``: our offsets are valid by construction, and the safe mode would read
  the lengths' min and sum on the host); gathers are ``index_select`` inside custom
  ``autograd.Function`` s.
- Every backward is explicit (custom Functions :class:`_Aggregate`, :class:`_Gather`,
  :class:`_SegSum`, :class:`_SegSoftmax`, :class:`_Select`): the gradient w.r.t. sources uses
  the transposed CSR (edges stably sorted by (src, dst), built once per call, lazily, on first
  use by a backward); gathers' backwards are segment sums, segment sums' backwards are gathers,
  a permutation's backward is the inverse permutation (found by a sort). No ``index_add_`` /
  ``scatter_add_`` / ``index_put_`` anywhere, so nothing is listed in ``ATOMIC_PATHS``.
- The gradient of the aggregation w.r.t. its edge values (``dval_e = <G[dst_e], Y[src_e]>``,
  an SDDMM): on the CPU ``torch.sparse.sampled_addmm`` on the CSR pattern; on CUDA a chunked
  gather-product (at most ``_CHUNK`` elements of workspace at a time, fixed order).
- GAT: scores and alpha are (E', heads); the aggregation runs one CSR product per head with
  alpha[:, h] as the sparse values; what autograd saves is alpha and the scores (E', heads),
  the CSR-ordered edge attributes (E', D) when given, and Xp (N, heads*C) — never an
  E x heads x C tensor (``tests`` check the saved numels). Measured on the CPU (N 5e4,
  E 5e5, heads 8, C 8, fp32, forward + backward, warm): peak RSS growth 144 MB against 634 MB
  for PyG ``GATConv`` (one E x heads x C fp32 tensor is 122 MB).
- The CSR is built per call (no cache across calls).

The ``_vjp`` / ``_grad`` functions are autograd of the same forward (``autograd_vjp``), i.e.
exactly the backward used in training. With the remaining rule, a node's earlier duplicate
loops get gradient 0 (their true derivative: only the last loop's weight is used; autograd
through PyG's ``loop_attr[idx] = w`` gives them the last loop's gradient too).

Host reads (documented)
-----------------------
Validation uses the reference's validators (:mod:`refimpl._validate`, sections "gnn: layers"
and "gnn: fusion, loss, metrics"); their value checks (index min/max, non-finite counts,
minimum weight; the heads' finite / non-negative / 0-1 / [0, 1] flags) are computed on the
device and read with ONE device-to-host copy per call (``read_packed``). The layers that add
or remove self-loops (``add_self_loops``, ``gcn_norm`` with ``add_loops``, ``gcn_layer`` with
``normalize`` and ``add_loops``, ``gat_layer`` with ``add_loops``) need the number of existing
loops to size their edge list: it travels in that same read. ``fuse`` / ``fuse_vjp`` read
nothing. Nothing else reads the device.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as Fn
from torch.autograd.function import once_differentiable

from backends.torch import autograd_vjp, read_packed, sparse_csr
from backends.torch import native as _native
from refimpl import _validate as V

__all__ = [
    "ATOMIC_PATHS",
    "to_csr",
    "add_self_loops",
    "gcn_norm",
    "gcn_layer",
    "gcn_layer_vjp",
    "segment_softmax",
    "segment_softmax_vjp",
    "gat_layer",
    "gat_layer_vjp",
    "gin_layer",
    "gin_layer_vjp",
    "edge_mlp_weights",
    "fuse",
    "fuse_vjp",
    "focal_bce",
    "focal_bce_grad",
]

#: Paths that use atomics or a non-deterministic library call (op -> path). None: every
#: forward and backward of this module is a fixed-order CSR reduction or a gather.
ATOMIC_PATHS: dict[str, str] = {}

I64 = torch.int64
SOFTMAX_EPS = 1e-16        # PyG softmax's denominator guard
EDGE_MLP_EPS = 1e-8        # the code's sigmoid(...) + 1e-8 and std + 1e-8
_CHUNK = 1 << 22           # elements of the SDDMM workspace (rows x features) at a time


# --------------------------------------------------------------------------- host reads


def _stat(kind, x):
    """One validator statistic (``V.GNN_STAT_KINDS``) as a 1-element device tensor."""
    x = x.detach()
    if kind == "nonfinite":
        if not x.is_floating_point():
            return torch.zeros(1, dtype=I64, device=x.device)
        return (~torch.isfinite(x)).sum().reshape(1)
    if kind in ("min", "max"):
        if x.numel() == 0:
            v = math.inf if kind == "min" else -math.inf
            return torch.full((1,), v, dtype=torch.float64, device=x.device)
        return (x.min() if kind == "min" else x.max()).reshape(1)
    raise ValueError(f"unknown stat kind {kind!r}; expected one of {V.GNN_STAT_KINDS}")


class _Stats:
    """The layer validators' ``stats`` hook: every requested statistic computed on the device,
    plus the ``extra`` values of the call (e.g. the number of existing self-loops, computed by
    ``extra()`` once the metadata checks passed), read with ONE host copy."""

    def __init__(self, extra=None):
        self.extra = extra
        self.values = None

    def __call__(self, requests):
        parts = [_stat(k, x) for k, x in requests]
        extra = list(self.extra()) if self.extra is not None else []
        vals = read_packed(parts + extra)
        self.values = [int(v[0]) for v in vals[len(parts):]]
        return tuple(float(v[0]) for v in vals[:len(parts)])

    def extras(self):
        if self.values is None:     # the validator had no value check (never for the layers)
            self.values = ([int(v[0]) for v in read_packed(list(self.extra()))]
                           if self.extra is not None else [])
        return self.values


def _flag(kind, x):
    x = x.detach()
    if kind == "finite":
        return torch.isfinite(x).all() if x.is_floating_point() else torch.ones(
            (), dtype=torch.bool, device=x.device)
    if kind == "nonneg":
        return (x >= 0).all()
    if kind == "binary":
        return ((x == 0) | (x == 1)).all()
    if kind == "unit":
        return ((x >= 0) & (x <= 1)).all()
    raise ValueError(f"unknown flag kind {kind!r}; expected one of {V.GNN_HEAD_FLAG_KINDS}")


def _flags(checks):
    """The head validators' ``flags`` hook: every flag on the device, ONE host read."""
    if not checks:
        return ()
    dev = checks[0][1].device
    fl = torch.stack([_flag(kind, x).to(dev) for kind, x in checks])
    return tuple(bool(v) for v in read_packed([fl])[0])


def _loop_count(edge_index):
    """The number of existing self-loops (a 1-element device tensor, read with the stats)."""
    return lambda: [(edge_index[0] == edge_index[1]).sum().reshape(1)]


def _true(v) -> bool:
    """A flag that the validators accept as True (Python or NumPy bool)."""
    return isinstance(v, (bool, np.bool_)) and bool(v)


def _i64(edge_index):
    ei = edge_index.detach()
    return ei[0].to(I64), ei[1].to(I64)


# --------------------------------------------------------------------------- graph structure


def _arange(n, device):
    return torch.arange(n, dtype=I64, device=device)


def _csr_mm(ptr, col, val, Y, n_rows):
    """``A @ Y`` with ``A = csr(ptr, col, val)`` (n_rows, Y.shape[0]); Y 2-D, row-major."""
    A = sparse_csr(ptr, col, val.contiguous(), (n_rows, Y.shape[0]))
    return A @ Y.contiguous()


def _seg_sum(data, ptr):
    """``out[i] = sum_{k in [ptr[i], ptr[i+1])} data[k]`` (a fixed-order segment reduction)."""
    if data.shape[0] == 0:
        return data.new_zeros((ptr.shape[0] - 1,) + tuple(data.shape[1:]))
    return torch.segment_reduce(data, "sum", offsets=ptr, axis=0, unsafe=True)


def _inverse(idx, n):
    """For an injective ``idx`` into ``range(n)``: ``inv`` (n,) with ``inv[idx[k]] = k`` and -1
    where no k points (by a sort and a binary search: no scatter)."""
    s, p = torch.sort(idx, stable=True)
    ar = _arange(n, idx.device)
    if s.numel() == 0:
        return torch.full((n,), -1, dtype=I64, device=idx.device)
    loc = torch.searchsorted(s, ar)
    locc = loc.clamp(max=s.numel() - 1)
    found = (loc < s.numel()) & (s.index_select(0, locc) == ar)
    return torch.where(found, p.index_select(0, locc), torch.full_like(ar, -1))


class _Graph:
    """An edge list in CSR order on the device: ``src``, ``dst`` (E,), ``ptr`` (N+1,); the
    transposed CSR (sorted by (src, dst)) is built on first use and kept for the call."""

    def __init__(self, src, dst, ptr, n):
        self.src, self.dst, self.ptr, self.n = src, dst, ptr, n
        self._t = None

    @property
    def E(self):
        return int(self.src.shape[0])

    def transposed(self):
        """``(permT, ptrT, dstT)``: the CSR positions in (src, dst) order, the source
        pointers, and the destinations in that order (the columns of A^T)."""
        if self._t is None:
            n = self.n
            permT = torch.sort(self.src * n + self.dst, stable=True).indices
            srcT = self.src.index_select(0, permT)
            ptrT = torch.searchsorted(srcT, _arange(n + 1, srcT.device))
            self._t = (permT, ptrT, self.dst.index_select(0, permT))
        return self._t


def _build(src, dst, n, loops=None, n_loops=0):
    """``(graph, take, info)``: the CSR graph of the edges used and ``take`` (E',): for each CSR
    position, the row of ``[input edges (E) | appended loops (N)]`` whose weight/attribute it
    carries; with loops ``info`` holds ``kept`` (the rows of the used edges before the
    remaining rule's substitution).

    ``loops`` None: the input edges; "remaining" / "replace": existing loops removed, one per
    node appended (``n_loops`` = the host count of existing loops); for "remaining" the
    appended loop of a node that had loops takes the row of its last loop in input order."""
    dev = src.device
    E = int(src.shape[0])
    if loops is None:
        order = torch.sort(dst * n + src, stable=True).indices
        s, d = src.index_select(0, order), dst.index_select(0, order)
        ptr = torch.searchsorted(d, _arange(n + 1, dev))
        return _Graph(s, d, ptr, n), order, None
    ar = _arange(n, dev)
    all_src, all_dst = torch.cat((src, ar)), torch.cat((dst, ar))
    is_old_loop = torch.cat((src == dst, torch.zeros(n, dtype=torch.bool, device=dev)))
    key = torch.where(is_old_loop, n * n + all_src, all_dst * n + all_src)
    skey, order = torch.sort(key, stable=True)
    E2 = E - n_loops + n
    kept = order[:E2]
    s, d = all_src.index_select(0, kept), all_dst.index_select(0, kept)
    ptr = torch.searchsorted(d, _arange(n + 1, dev))
    take = kept
    if loops == "remaining" and n_loops > 0:
        tail = skey[E2:]                                   # the removed loops: n*n + node
        q = torch.searchsorted(tail, n * n + ar, right=True) - 1
        qc = q.clamp(min=0)
        has = (q >= 0) & (tail.index_select(0, qc) == n * n + ar)
        last = order[E2:].index_select(0, qc)              # input row of the last loop
        repl = torch.where(has, last, E + ar)              # per node: its loop's row
        take = torch.where(kept >= E, repl.index_select(0, (kept - E).clamp(min=0)), kept)
    return _Graph(s, d, ptr, n), take, {"kept": kept}


# --------------------------------------------------------------------------- autograd Functions


class _Select(torch.autograd.Function):
    """``x[idx]`` for an injective ``idx`` (a permutation or a selection of rows); backward
    ``dx[j] = g[inv[j]]`` (0 where no row took j) — a gather, no scatter."""

    @staticmethod
    def forward(ctx, x, idx, inv=None):
        ctx.idx, ctx.inv, ctx.n = idx, inv, x.shape[0]
        return x.index_select(0, idx)

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        inv = ctx.inv if ctx.inv is not None else _inverse(ctx.idx, ctx.n)
        out = g.index_select(0, inv.clamp(min=0))
        mask = (inv >= 0).reshape((-1,) + (1,) * (g.dim() - 1))
        return torch.where(mask, out, torch.zeros((), dtype=g.dtype, device=g.device)), None, \
            None


def _select(x, idx, inv=None):
    return _Select.apply(x, idx, inv)


class _SegSum(torch.autograd.Function):
    """``out[i] = sum_{e: dst_e = i} data[e]`` for CSR-ordered rows (segment_reduce over ptr);
    backward ``ddata = g[dst]``."""

    @staticmethod
    def forward(ctx, data, graph):
        ctx.graph = graph
        return _seg_sum(data, graph.ptr)

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        return g.index_select(0, ctx.graph.dst), None


class _Gather(torch.autograd.Function):
    """``x[dst]`` (``by_src=False``) or ``x[src]`` (True) in CSR order; backward: the segment
    sum of g over the CSR (dst) or over the transposed CSR (src)."""

    @staticmethod
    def forward(ctx, x, graph, by_src):
        ctx.graph, ctx.by_src = graph, by_src
        return x.index_select(0, graph.src if by_src else graph.dst)

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        gr = ctx.graph
        if not ctx.by_src:
            return _seg_sum(g, gr.ptr), None, None
        permT, ptrT, _ = gr.transposed()
        return _seg_sum(g.index_select(0, permT), ptrT), None, None


def _sddmm(G, Y, graph):
    """``out[e, h] = <G[dst_e, h, :], Y[src_e, h, :]>`` (E, heads) in CSR order.

    CPU: ``torch.sparse.sampled_addmm`` per head (one dot product per stored entry, no E x C
    workspace). CUDA: gather-products chunked over edges (at most ``_CHUNK`` elements of
    workspace; a fixed reduction per entry, no atomics, no host synchronisation)."""
    E = graph.E
    heads, C = int(G.shape[1]), int(G.shape[2])
    if E == 0:
        return G.new_zeros((0, heads))
    if G.device.type == "cpu":
        pattern = sparse_csr(graph.ptr, graph.src, G.new_zeros(E), (graph.n, graph.n))
        cols = [torch.sparse.sampled_addmm(pattern, G[:, h, :].contiguous(),
                                           Y[:, h, :].t(), beta=0.0).values()
                for h in range(heads)]
        return torch.stack(cols, 1)
    out = G.new_empty((E, heads))
    step = max(1, _CHUNK // max(1, heads * C))
    for a in range(0, E, step):
        b = min(E, a + step)
        gd = G.index_select(0, graph.dst[a:b])
        ys = Y.index_select(0, graph.src[a:b])
        out[a:b] = (gd * ys).sum(-1)
    return out


class _Aggregate(torch.autograd.Function):
    """``out[i, h, :] = sum_{e: dst_e = i} val[e, h] Y[src_e, h, :]`` — one CSR product per
    head with ``val[:, h]`` as the sparse values. Saves ``val`` (E, heads) and ``Y``
    (N, heads, C). Backward: ``dY[:, h] = A_h^T g[:, h]`` on the transposed CSR, ``dval`` by
    the chunked SDDMM (only when ``val`` needs a gradient)."""

    @staticmethod
    def forward(ctx, val, Y, graph):
        ctx.graph = graph
        ctx.save_for_backward(val, Y)
        N, heads, C = (int(s) for s in Y.shape)
        outs = [_csr_mm(graph.ptr, graph.src, val[:, h], Y[:, h, :], N) for h in range(heads)]
        return torch.stack(outs, 1) if heads > 1 else outs[0].unsqueeze(1)

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        val, Y = ctx.saved_tensors
        gr = ctx.graph
        heads = int(Y.shape[1])
        dval = dY = None
        if ctx.needs_input_grad[1]:
            permT, ptrT, dstT = gr.transposed()
            valT = val.index_select(0, permT)
            outs = [_csr_mm(ptrT, dstT, valT[:, h], g[:, h, :], gr.n) for h in range(heads)]
            dY = torch.stack(outs, 1) if heads > 1 else outs[0].unsqueeze(1)
        if ctx.needs_input_grad[0]:
            dval = _sddmm(g, Y, gr)
        return dval, dY, None


class _SegSoftmax(torch.autograd.Function):
    """Per destination (and column) softmax of CSR-ordered scores (E, K):
    ``alpha = exp(s - max_seg) / (sum_seg exp(s - max_seg) + 1e-16)``; saves alpha only;
    backward ``ds = alpha (g - sum_seg alpha g)``."""

    @staticmethod
    def forward(ctx, s, graph):
        ctx.graph = graph
        if s.shape[0] == 0:
            ctx.save_for_backward(s)
            return s.clone()
        m = torch.segment_reduce(s, "max", offsets=graph.ptr, axis=0, unsafe=True)
        ex = (s - m.index_select(0, graph.dst)).exp_()
        den = _seg_sum(ex, graph.ptr) + SOFTMAX_EPS
        alpha = ex.div_(den.index_select(0, graph.dst))             # in place: no 2nd E x K
        ctx.save_for_backward(alpha)
        return alpha

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        (alpha,) = ctx.saved_tensors
        gr = ctx.graph
        if alpha.shape[0] == 0:
            return g.clone(), None
        ag = alpha * g
        row = _seg_sum(ag, gr.ptr).index_select(0, gr.dst)
        return ag.addcmul_(alpha, row, value=-1.0), None


# --------------------------------------------------------------------------- layer math


def _loop_values(x, graph, take, info, fill):
    """``x`` (E,) or (E, D) in the order of the used edges (appended loops included): the
    rows picked by ``take`` from ``[x | loop rows]`` (differentiable w.r.t. x); loop rows =
    ``fill``, or for "mean" the mean of the node's incoming non-loop rows, 0 if none (with the
    remaining rule only nodes without an existing loop use it, so PyG's mean over all incoming
    rows is the same number)."""
    n = graph.n
    tail_shape = (n,) + tuple(x.shape[1:])
    if fill != "mean":
        loop_rows = torch.full(tail_shape, float(fill), dtype=x.dtype, device=x.device)
        return _select(torch.cat((x, loop_rows)), take)
    # segment sums of the used non-loop edges (the appended loops read zero rows)
    part = _select(torch.cat((x, x.new_zeros(tail_shape))), info["kept"])
    sums = _SegSum.apply(part, graph)
    cnt = (graph.ptr[1:] - graph.ptr[:-1] - 1).to(x.dtype)       # minus the appended loop
    cnt = cnt.clamp(min=1.0).reshape((-1,) + (1,) * (x.dim() - 1))
    return _select(torch.cat((x, sums / cnt)), take)


def _gcn_graph(src, dst, n, ew, improved, add_loops, n_loops, dtype):
    """(graph, w) with w (E',) in CSR order of the used edges (loops by the remaining rule)."""
    E = int(src.shape[0])
    w_in = ew if ew is not None else torch.ones(E, dtype=dtype, device=src.device)
    if add_loops:
        graph, take, info = _build(src, dst, n, "remaining", n_loops)
        fill = 2.0 if improved else 1.0
        return graph, _loop_values(w_in, graph, take, info, fill)
    graph, take, _ = _build(src, dst, n)
    return graph, _select(w_in, take)


def _gcn_norm_values(graph, w):
    """``dinv[src] w dinv[dst]`` with ``dinv = deg^-1/2`` (inf -> 0), deg over destinations."""
    deg = _SegSum.apply(w, graph)
    pos = deg > 0
    dinv = torch.where(pos, torch.where(pos, deg, torch.ones_like(deg)).pow(-0.5),
                       torch.zeros_like(deg))
    return _Gather.apply(dinv, graph, True) * w * _Gather.apply(dinv, graph, False)


def _gcn(X, edge_index, W, b, ew, improved, add_loops, normalize, n_loops):
    N = int(X.shape[0])
    src, dst = _i64(edge_index)
    if normalize:
        graph, w = _gcn_graph(src, dst, N, ew, improved, add_loops, n_loops, X.dtype)
        val = _gcn_norm_values(graph, w)
    else:
        graph, take, _ = _build(src, dst, N)
        val = (_select(ew, take) if ew is not None
               else torch.ones(graph.E, dtype=X.dtype, device=X.device))
    XW = X @ W
    H = _Aggregate.apply(val.unsqueeze(1), XW.unsqueeze(1), graph).squeeze(1)
    return H + b if b is not None else H


def _gat(X, edge_index, W, a_src, a_dst, b, edge_attr, W_e, a_e, slope, concat, add_loops,
         fill, n_loops):
    N = int(X.shape[0])
    heads, C = (int(s) for s in a_src.shape)
    src, dst = _i64(edge_index)
    Xp = (X @ W).reshape(N, heads, C)
    s_src = (Xp * a_src).sum(-1)
    s_dst = (Xp * a_dst).sum(-1)
    if add_loops:
        graph, take, info = _build(src, dst, N, "replace", n_loops)
    else:
        graph, take, info = _build(src, dst, N)
    s = _Gather.apply(s_src, graph, True) + _Gather.apply(s_dst, graph, False)
    if edge_attr is not None:
        D = int(edge_attr.shape[1])
        M = (W_e.reshape(D, heads, C) * a_e).sum(-1)             # (D, heads)
        attr = (_loop_values(edge_attr, graph, take, info, fill) if add_loops
                else _select(edge_attr, take))
        s = s + attr @ M
    if graph.E > 0:
        alpha = _SegSoftmax.apply(Fn.leaky_relu(s, slope), graph)
    else:
        alpha = s                                                 # PyG: nothing to normalise
    out = _Aggregate.apply(alpha, Xp, graph)                      # (N, heads, C)
    out = out.reshape(N, heads * C) if concat else out.mean(1)
    if b is not None:
        out = out + b
    return out, alpha


def _gin(X, edge_index, W1, b1, W2, b2, eps):
    N = int(X.shape[0])
    src, dst = _i64(edge_index)
    graph, _, _ = _build(src, dst, N)
    ones = torch.ones((graph.E, 1), dtype=X.dtype, device=X.device)
    agg = _Aggregate.apply(ones, X.unsqueeze(1), graph).squeeze(1)
    z = (1.0 + eps) * X + agg
    return torch.relu(z @ W1 + b1) @ W2 + b2


def _vjp(fn, kwargs, wrt, G):
    """Autograd's VJP of ``fn(**kwargs)`` (first output) keyed ``"d" + name``."""
    grads = autograd_vjp(fn, kwargs, wrt, G)
    return {"d" + k: v for k, v in grads.items()}


# --------------------------------------------------------------------------- graph utilities


def to_csr(edge_index, n_nodes):
    """``(ptr (N+1,), src_sorted (E,), perm (E,))`` int64: the edges stably sorted by
    (dst, src) on the device; ``perm`` maps CSR positions to input positions."""
    _native(edge_index=edge_index)
    N, _ = V.gnn_to_csr_args(edge_index, n_nodes, stats=_Stats())
    src, dst = _i64(edge_index)
    graph, order, _ = _build(src, dst, N)
    return graph.ptr, graph.src, order


def add_self_loops(edge_index, n_nodes, edge_weight=None, fill=1.0, mode="remaining"):
    """``(edge_index (2, E'), edge_weight (E',) / (E', D) or None)`` in CSR order of the edges
    used: mode "remaining" (GCN) or "replace" (GAT), see the module docstring. ``edge_weight``
    keeps its dtype and is differentiable (autograd)."""
    _native(edge_index=edge_index, edge_weight=edge_weight)
    st = _Stats(_loop_count(edge_index))
    N, _, fill, mode = V.gnn_self_loops_args(edge_index, n_nodes, edge_weight, fill, mode,
                                             stats=st)
    (n_loops,) = st.extras()
    src, dst = _i64(edge_index)
    graph, take, info = _build(src, dst, N, mode, n_loops)
    ei = torch.stack((graph.src, graph.dst))
    if edge_weight is None:
        return ei, None
    return ei, _loop_values(edge_weight, graph, take, info, fill)


def gcn_norm(edge_index, n_nodes, edge_weight=None, improved=False, add_loops=True):
    """``(edge_index (2, E'), w (E',))`` in CSR order: ``w = deg^-1/2[src] w deg^-1/2[dst]``
    (inf -> 0) after the remaining-rule loops (fill 1, 2 if improved) when ``add_loops``.
    ``w`` has edge_weight's dtype, or torch's default float dtype without edge_weight.
    Differentiable w.r.t. edge_weight (autograd, deg included)."""
    _native(edge_index=edge_index, edge_weight=edge_weight)
    st = _Stats(_loop_count(edge_index) if _true(add_loops) else None)
    N, _ = V.gnn_norm_args(edge_index, n_nodes, edge_weight, improved, add_loops, stats=st)
    n_loops = st.extras()[0] if add_loops else 0
    src, dst = _i64(edge_index)
    dtype = edge_weight.dtype if edge_weight is not None else torch.get_default_dtype()
    graph, w = _gcn_graph(src, dst, N, edge_weight, bool(improved), bool(add_loops), n_loops,
                          dtype)
    return torch.stack((graph.src, graph.dst)), _gcn_norm_values(graph, w)


# --------------------------------------------------------------------------- GCN


def _gcn_args(X, edge_index, W, b, edge_weight, improved, add_loops, normalize, G=None):
    _native(X=X, edge_index=edge_index, W=W, b=b, edge_weight=edge_weight, G=G)
    loops = _true(normalize) and _true(add_loops)
    st = _Stats(_loop_count(edge_index) if loops else None)
    V.gcn_layer_args(X, edge_index, W, b, edge_weight, improved, add_loops, normalize, G=G,
                     stats=st)
    return st.extras()[0] if loops else 0


def gcn_layer(X, edge_index, W, b=None, edge_weight=None, improved=False, add_loops=True,
              normalize=True):
    """PyG ``GCNConv``: ``H = propagate(X W) + b`` (N, F_out), see the module docstring.
    Differentiable (autograd through the custom Functions) w.r.t. X, W, b, edge_weight."""
    n_loops = _gcn_args(X, edge_index, W, b, edge_weight, improved, add_loops, normalize)
    return _gcn(X, edge_index, W, b, edge_weight, bool(improved), bool(add_loops),
                bool(normalize), n_loops)


def gcn_layer_vjp(X, edge_index, W, G, b=None, edge_weight=None, improved=False,
                  add_loops=True, normalize=True):
    """``{"dX", "dW", ("db"), ("dedge_weight")}``: the VJP of :func:`gcn_layer` with cotangent
    ``G`` (N, F_out), by autograd (the same backward as training)."""
    n_loops = _gcn_args(X, edge_index, W, b, edge_weight, improved, add_loops, normalize, G=G)
    kw = {"X": X, "W": W, "b": b, "edge_weight": edge_weight}
    wrt = [k for k in ("X", "W", "b", "edge_weight") if kw[k] is not None]
    fn = lambda X, W, b, edge_weight: _gcn(X, edge_index, W, b, edge_weight, bool(improved),  # noqa: E731
                                           bool(add_loops), bool(normalize), n_loops)
    return _vjp(fn, kw, wrt, G)


# --------------------------------------------------------------------------- segment softmax


def _softmax_input_order(scores, dst, N):
    src0 = torch.zeros_like(dst)
    d = dst.detach().to(I64)
    order = torch.sort(d, stable=True).indices
    ds = d.index_select(0, order)
    graph = _Graph(src0, ds, torch.searchsorted(ds, _arange(N + 1, ds.device)), N)
    inv = torch.sort(order, stable=True).indices                 # the inverse permutation
    alpha = _SegSoftmax.apply(_select(scores, order, inv), graph)
    return _select(alpha, inv, order)


def segment_softmax(scores, dst, n_nodes):
    """``alpha`` of the scores' shape (E,) or (E, H), in input order: per destination (and
    column) ``exp(s - max) / (sum exp(s - max) + 1e-16)``. Differentiable w.r.t. scores."""
    _native(scores=scores, dst=dst)
    N, _, _ = V.segment_softmax_args(scores, dst, n_nodes, stats=_Stats())
    return _softmax_input_order(scores, dst, N)


def segment_softmax_vjp(scores, dst, n_nodes, G):
    """``{"dscores"}``: ``ds = alpha (G - sum_seg alpha G)`` (the custom backward)."""
    _native(scores=scores, dst=dst, G=G)
    N, _, _ = V.segment_softmax_args(scores, dst, n_nodes, G=G, stats=_Stats())
    return _vjp(lambda scores: _softmax_input_order(scores, dst, N), {"scores": scores},
                ["scores"], G)


# --------------------------------------------------------------------------- GAT


def _gat_args(X, edge_index, W, a_src, a_dst, b, edge_attr, W_e, a_e, negative_slope, concat,
              add_loops, fill, G=None):
    _native(X=X, edge_index=edge_index, W=W, a_src=a_src, a_dst=a_dst, b=b,
            edge_attr=edge_attr, W_e=W_e, a_e=a_e, G=G)
    loops = _true(add_loops)
    st = _Stats(_loop_count(edge_index) if loops else None)
    V.gat_layer_args(X, edge_index, W, a_src, a_dst, b, edge_attr, W_e, a_e, negative_slope,
                     concat, add_loops, fill, G=G, stats=st)
    return st.extras()[0] if loops else 0


def gat_layer(X, edge_index, W, a_src, a_dst, b=None, edge_attr=None, W_e=None, a_e=None,
              negative_slope=0.2, concat=True, add_loops=True, fill="mean"):
    """PyG ``GATConv`` (v1): ``(H (N, heads*C) or (N, C), alpha (E', heads))``, alpha in CSR
    order of the edges used (loops by the replace rule when ``add_loops``). Differentiable
    w.r.t. X, W, a_src, a_dst, b, W_e, a_e; no E x heads x C tensor is formed or saved."""
    n_loops = _gat_args(X, edge_index, W, a_src, a_dst, b, edge_attr, W_e, a_e, negative_slope,
                        concat, add_loops, fill)
    return _gat(X, edge_index, W, a_src, a_dst, b, edge_attr, W_e, a_e, float(negative_slope),
                bool(concat), bool(add_loops), V.gnn_fill(fill), n_loops)


def gat_layer_vjp(X, edge_index, W, a_src, a_dst, G, b=None, edge_attr=None, W_e=None,
                  a_e=None, negative_slope=0.2, concat=True, add_loops=True, fill="mean"):
    """``{"dX", "dW", "da_src", "da_dst", ("db"), ("dW_e", "da_e")}``: the VJP of H (not alpha)
    with cotangent ``G``, by autograd."""
    n_loops = _gat_args(X, edge_index, W, a_src, a_dst, b, edge_attr, W_e, a_e, negative_slope,
                        concat, add_loops, fill, G=G)
    kw = {"X": X, "W": W, "a_src": a_src, "a_dst": a_dst, "b": b, "W_e": W_e, "a_e": a_e}
    wrt = [k for k in ("X", "W", "a_src", "a_dst", "b", "W_e", "a_e") if kw[k] is not None]
    fl = V.gnn_fill(fill)

    def fn(X, W, a_src, a_dst, b, W_e, a_e):
        return _gat(X, edge_index, W, a_src, a_dst, b, edge_attr, W_e, a_e,
                    float(negative_slope), bool(concat), bool(add_loops), fl, n_loops)

    return _vjp(fn, kw, wrt, G)


# --------------------------------------------------------------------------- GIN


def _gin_args(X, edge_index, W1, b1, W2, b2, eps, G=None):
    _native(X=X, edge_index=edge_index, W1=W1, b1=b1, W2=W2, b2=b2, G=G)
    V.gin_layer_args(X, edge_index, W1, b1, W2, b2, eps, G=G, stats=_Stats())
    return V.gnn_eps(eps)


def gin_layer(X, edge_index, W1, b1, W2, b2, eps=0.0):
    """PyG ``GINConv`` with the code's MLP: ``relu(((1 + eps) X + sum_{dst=i} X_src) W1 + b1)
    W2 + b2`` (N, F_out). Differentiable w.r.t. X, W1, b1, W2, b2."""
    eps = _gin_args(X, edge_index, W1, b1, W2, b2, eps)
    return _gin(X, edge_index, W1, b1, W2, b2, eps)


def gin_layer_vjp(X, edge_index, W1, b1, W2, b2, G, eps=0.0):
    """``{"dX", "dW1", "db1", "dW2", "db2"}``: the VJP of :func:`gin_layer`, by autograd."""
    eps = _gin_args(X, edge_index, W1, b1, W2, b2, eps, G=G)
    kw = {"X": X, "W1": W1, "b1": b1, "W2": W2, "b2": b2}
    return _vjp(lambda X, W1, b1, W2, b2: _gin(X, edge_index, W1, b1, W2, b2, eps), kw,
                list(kw), G)


# --------------------------------------------------------------------------- heads


def edge_mlp_weights(edge_attr, W1, b1, W2, b2, mean=None, std=None):
    """The code's edge MLP: ``sigmoid(relu(z W1 + b1) W2 + b2) + 1e-8`` (E,), ``z =
    (edge_attr - mean) / (std + 1e-8)`` when mean/std are given (else edge_attr).
    Differentiable by autograd."""
    _native(edge_attr=edge_attr, W1=W1, b1=b1, W2=W2, b2=b2, mean=mean, std=std)
    V.edge_mlp_args(edge_attr, W1, b1, W2, b2, mean, std, flags=_flags)
    z = edge_attr if mean is None else (edge_attr - mean) / (std + EDGE_MLP_EPS)
    h = torch.relu(z @ W1 + b1)
    return torch.sigmoid((h @ W2 + b2)[:, 0]) + EDGE_MLP_EPS


def _fuse(H_stack, mode, params):
    R, N, F = (int(s) for s in H_stack.shape)
    if mode == "global":
        w = (params["w"] if params is not None
             else torch.ones(R, dtype=H_stack.dtype, device=H_stack.device))
        beta = torch.softmax(w, 0)
        return (beta[:, None, None] * H_stack).sum(0), beta
    if mode == "concat":
        Hc = H_stack.permute(1, 0, 2).reshape(N, R * F)
        return Hc @ params["W"] + params["b"], None
    T = torch.tanh(H_stack @ params["W"] + params["b"])           # (R, N, A)
    s = T @ params["q"]                                           # (R, N)
    if mode == "semantic":
        beta = torch.softmax(s.mean(1), 0)                        # (R,)
        return (beta[:, None, None] * H_stack).sum(0), beta
    beta = torch.softmax(s.t(), 1)                                # (N, R)
    return (beta.t()[:, :, None] * H_stack).sum(0), beta


def fuse(H_stack, mode="global", params=None):
    """``(H (N, F_out), beta)``: relation fusion, see the module docstring (beta (R,) for
    global / semantic, (N, R) for node, None for concat). No host read; autograd."""
    _native(H_stack=H_stack)
    if isinstance(params, dict):
        _native(**{f"params['{k}']": v for k, v in params.items()})
    V.fuse_args(H_stack, mode, params)
    return _fuse(H_stack, mode, params)


def fuse_vjp(H_stack, G, mode="global", params=None):
    """``{"dH_stack", "d<key>" for each params key}``: the VJP of fuse's H, by autograd."""
    _native(H_stack=H_stack, G=G)
    if isinstance(params, dict):
        _native(**{f"params['{k}']": v for k, v in params.items()})
    V.fuse_args(H_stack, mode, params, G=G)
    keys = list(params) if params is not None else []
    kw = {"H_stack": H_stack, **{k: params[k] for k in keys}}

    def fn(H_stack, **p):
        return _fuse(H_stack, mode, p if params is not None else None)

    return _vjp(fn, kw, ["H_stack", *keys], G)


def _focal(outputs, y, alpha, gamma, variant):
    """``mean(a (1 - p_t)^gamma BCE)``: BCE by ``binary_cross_entropy_with_logits`` (its
    backward is exactly ``sigmoid(x) - y``), ``1 - p_t = -expm1(-BCE)``; the power is taken
    where ``1 - p_t > 0`` only (0 there otherwise, 1 for gamma = 0), so its derivative at
    ``1 - p_t = 0`` is the limit 0, as the reference's closed form (no 0 * inf)."""
    yf = y.to(outputs.dtype)
    bce = Fn.binary_cross_entropy_with_logits(outputs, yf, reduction="none")
    q = -torch.expm1(-bce)                                        # 1 - p_t
    pos = q > 0
    qg = torch.where(pos, torch.where(pos, q, torch.ones_like(q)) ** gamma,
                     torch.full_like(q, 1.0 if gamma == 0 else 0.0))
    a = alpha if variant == "code" else alpha * yf + (1.0 - alpha) * (1.0 - yf)
    return (a * qg * bce).mean()


def focal_bce(outputs, y, alpha=0.75, gamma=2.0, variant="code"):
    """The focal loss (0-d tensor of outputs' dtype): ``mean(a (1 - p_t)^gamma BCE)``,
    ``BCE = BCE_with_logits(outputs, y)``, ``p_t = exp(-BCE)``; ``a = alpha`` ("code":
    outputs are probabilities, the notebook's double sigmoid) or ``alpha y + (1 - alpha)
    (1 - y)`` ("logits", arXiv 1708.02002). Differentiable w.r.t. outputs."""
    _native(outputs=outputs, y=y)
    _, alpha, gamma, variant = V.focal_args(outputs, y, alpha, gamma, variant, flags=_flags)
    return _focal(outputs, y, alpha, gamma, variant)


def focal_bce_grad(outputs, y, alpha=0.75, gamma=2.0, variant="code"):
    """``(loss 0-d, doutputs (N,))`` by autograd of :func:`focal_bce`."""
    _native(outputs=outputs, y=y)
    _, alpha, gamma, variant = V.focal_args(outputs, y, alpha, gamma, variant, flags=_flags)
    leaf = outputs.detach().requires_grad_(True)
    with torch.enable_grad():
        loss = _focal(leaf, y, alpha, gamma, variant)
        (g,) = torch.autograd.grad(loss, (leaf,))
    return loss.detach(), g
