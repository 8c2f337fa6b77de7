r"""Multilayer-GNN layers and heads (arXiv 2507.07298) on CuPy arrays, without atomics.

Same functions, signatures, defaults and validation messages as :mod:`refimpl._gnn_layers`
(REF-L) and :mod:`refimpl._gnn_heads` (REF-M) minus the reference-only metrics (spec
``gnn_pdm.md`` secs. 2-4, 6, 8). Inputs are ``cupy.ndarray`` (other array kinds are refused
with a ``TypeError``); float inputs are float32 or float64 and results keep that dtype (the
loss is a 0-d array); integer outputs are int64. ``gcn_norm`` without ``edge_weight`` has no
float input and returns float64 weights, as the reference.

Math as implemented (the reference's docstrings give the full derivations):

- CSR order = the stable sort of the edges by (dst, src): ``cupy.argsort(dst * N + src,
  kind="stable")`` (duplicates keep their input order), ``ptr = searchsorted(dst_sorted,
  0..N)``. The transposed CSR (sorted by (src, dst)) is a stable argsort of the CSR-ordered
  sources, built once per call for the backward passes (not cached across calls).
- Self-loops: loop edges get the sort key ``N^2 + node`` (after every real key) and one new
  loop per node (key ``node (N + 1)``) is appended; ONE stable sort then yields the new edge
  list (the first ``E' = E - loops + N`` entries) and, in its tail, the removed loops grouped
  by node in input order, so "the LAST loop in input order" of a node is a searchsorted.
  ``fill="mean"``: the segment sum of the node's incoming non-loop values / their count
  (0 if none).
- GCN: ``deg_i = sum_{dst=i} w`` (segment sum), ``dis = deg^-1/2`` (0 where deg = 0),
  ``norm_e = dis_src w_e dis_dst``, ``H = M (X W) + b``; ``normalize=False``: ``norm = w``, no
  loops. VJP: ``dXW = M^T G`` (transposed segment sum), ``dX = dXW W^T``, ``dW = X^T dXW``,
  ``dnorm_e = <G_dst, (XW)_src>`` (per-edge dot kernel), ``dw_e = dnorm_e dis_src dis_dst +
  ddeg_dst``, ``ddeg_k = -1/2 dis_k^3 [sum_{src=k} dnorm w dis_dst + sum_{dst=k} dnorm w
  dis_src]``; each input edge receives the dw of the edge it became (a removed duplicate loop 0).
- GAT: ``Xp = X W`` (N, heads, C), ``s_src/s_dst = sum_c Xp a_src/a_dst``; with edge
  attributes A (E', D) the edge term is ``s_edge = A V``, ``V[d, h] = sum_c W_e[d, hC + c]
  a_e[h, c]`` (D, heads) — equal to ``sum_c (A W_e) a_e`` without the E' x heads x C product;
  the fused kernel ``gnn_gat_fwd`` (one warp per (row, head)) computes the LeakyReLU scores,
  their online max / sum-exp, ``alpha = exp(score - max) / (sum + 1e-16)`` (stored (E', heads))
  and ``out[i, h] = sum_e alpha Xp[src, h]``; concat -> (N, heads C), else the head mean; + b.
  VJP: ``gnn_gat_bwd`` (per (row, head)): ``dalpha = <Gh_dst, Xp_src>``, the softmax backward
  ``t = alpha (dalpha - sum_row alpha dalpha)``, the LeakyReLU derivative (1 if z > 0 else
  slope) -> ``dz = t LeakyReLU'`` (E', heads) and ``ds_dst = sum_row dz``, evaluated as
  ``sum_row t (LeakyReLU' - 1)``: the two differ by ``sum_row t = sa 1e-16 / (S + 1e-16)``
  (S >= 1 the row's sum-exp; below 1e-16 |sa|), but the direct sum cancels to rounding noise
  when the row's scores are positive (float32 da_dst then misses the registry tolerance at the
  small size); ``ds_src`` and ``dXp += sum_{src} alpha Gh_dst`` by segment sums over the
  transposed CSR; ``dXp += ds_src a_src + ds_dst a_dst``,
  ``dW = X^T dXp``, ``dX = dXp W^T``, ``da_src = sum_n ds_src Xp`` (likewise da_dst),
  ``dV = A^T dz`` (D, heads), ``dW_e[d, hC + c] = dV[d, h] a_e[h, c]``, ``da_e[h, c] = sum_d
  W_e[d, hC + c] dV[d, h]``.
- GIN: ``agg = (1 + eps) X + A X`` (segment sum), ``H = relu(agg W1 + b1) W2 + b2``; VJP
  ``dX = (1 + eps) dagg + A^T dagg`` (transposed segment sum).
- segment_softmax: the stable sort of ``dst``; ``gnn_softmax_fwd`` / ``_bwd`` read and write the
  entries in input order through the sort permutation.
- heads (REF-M): ``edge_mlp_weights``, ``fuse`` / ``fuse_vjp`` and ``focal_bce`` /
  ``focal_bce_grad`` are CuPy array expressions of the reference's formulas (GEMMs by cuBLAS).

Kernels (``_kernels.py``, module ``gnn``), spec sec. 6:

- ``gnn_seg_sum``: one warp per segment, lanes over features, the segment's CSR positions in
  increasing order; a row with more than :data:`CHUNK` positions is split into chunks (chunk 0
  writes the output row, chunk k a partial row) and ``gnn_seg_combine`` adds the partials in
  the order k = 1, 2, ... — every sum has a fixed order, so results are bitwise reproducible.
  Used for the GCN / GIN aggregation, the degrees, the loop means and (on the transposed CSR)
  every backward w.r.t. sources.
- ``gnn_edge_dot`` (GCN's ``dnorm``), ``gnn_gat_fwd``, ``gnn_gat_bwd``, ``gnn_softmax_fwd``,
  ``gnn_softmax_bwd``: one warp per (row[, head]); warp reductions are xor butterflies of
  commutative operations (every lane gets the same bits).
- No atomics anywhere (:data:`ATOMIC_PATHS` is empty); the GEMMs are CuPy matmuls (cuBLAS, a
  fixed reduction order for a given device and shape) and the remaining reductions are CuPy
  ``sum`` / ``einsum`` over dense axes (tree reductions in a fixed order). GAT's hub rows are not
  chunked (one warp walks the whole row: deterministic, only slower on power-law graphs).

Host reads (device-to-host copies; nothing else synchronises): every function with value checks
does ONE read — the validators' ``stats`` / ``flags`` hook computes every check on the device
and reads them stacked; the functions that may add self-loops (``add_self_loops``,
``gcn_norm``, ``gcn_layer(_vjp)``, ``gat_layer(_vjp)``) stack the number of existing loops,
which sizes the new edge list E' = E - loops + N, into that same read. ``fuse`` / ``fuse_vjp``
have no value checks and read nothing. Every other size (N, E, F, heads) comes from array metadata.
"""

from __future__ import annotations

import numpy as np

import cupy

from backends.cupy import _kernels
from backends.cupy import native as _native
from refimpl import _validate as V

__all__ = [
    "to_csr", "add_self_loops", "gcn_norm", "gcn_layer", "gcn_layer_vjp", "segment_softmax",
    "segment_softmax_vjp", "gat_layer", "gat_layer_vjp", "gin_layer", "gin_layer_vjp",
    "edge_mlp_weights", "fuse", "fuse_vjp", "focal_bce", "focal_bce_grad", "ATOMIC_PATHS",
]

# Paths that use atomics or a non-deterministic library call: none (spec sec. 6).
ATOMIC_PATHS: dict[str, str] = {}

SEG_THREADS = 256        # threads per block of the warp-per-row kernels (8 warps; multiple of 32)
GRID_CAP = 65535         # at most this many blocks (warps then grid-stride over their units)
CHUNK = 1024             # CSR positions per segment of gnn_seg_sum; longer rows are split
SOFTMAX_EPS = 1e-16      # PyG utils.softmax (the "+ 1e-16" written in the gnn kernels)
STD_EPS = 1e-8           # WeightedGCNConv: std + 1e-8
WEIGHT_EPS = 1e-8        # WeightedGCNConv: sigmoid(...) + 1e-8

_I64 = np.int64


def _launch(template, grid, block, args, dtype):
    _kernels.launch(_kernels.kernel_name(template, dtype), grid, block, args)


def _grid(units: int) -> tuple[int]:
    wpb = SEG_THREADS // 32
    return (max(1, min(-(-units // wpb), GRID_CAP)),)


def _c(x):
    return cupy.ascontiguousarray(x)


def _arrays(**kw):
    """The mixed-kind check on the array arguments that are given."""
    _native(**{k: v for k, v in kw.items() if v is not None})


# --------------------------------------------------------------------------- one host read


class _Stats:
    """The layers' validators' ``stats`` hook (:data:`refimpl._validate.GNN_STAT_KINDS`): each
    requested min / max / NaN-count on the device, plus the number of self-loops of
    ``loops_of`` (an edge_index) when given, stacked and read in ONE host read."""

    def __init__(self, loops_of=None):
        self.loops_of = loops_of
        self.n_loops = None

    def __call__(self, requests):
        vals = []
        for kind, x in requests:
            if kind not in V.GNN_STAT_KINDS:
                raise ValueError(f"unknown stat kind {kind!r}; expected one of "
                                 f"{V.GNN_STAT_KINDS}")
            if x.size == 0:
                vals.append(cupy.full((), {"min": np.inf, "max": -np.inf, "nonfinite": 0.0}[kind]))
            elif kind == "min":
                vals.append(x.min())
            elif kind == "max":
                vals.append(x.max())
            else:
                vals.append((~cupy.isfinite(x)).sum())
        if self.loops_of is not None:
            ei = self.loops_of
            vals.append((ei[0] == ei[1]).sum())
        if not vals:
            return ()
        packed = cupy.stack([cupy.asarray(v).astype(np.float64).reshape(()) for v in vals])
        host = np.asarray(cupy.asnumpy(packed))                   # the one host read
        if self.loops_of is not None:
            self.n_loops = int(host[-1])
            host = host[:-1]
        return tuple(float(v) for v in host)

    def loops(self) -> int:
        """The number of existing self-loops (read with the validation stats)."""
        if self.n_loops is None:      # the validator asked for no stats (it always does)
            self(())
        return self.n_loops


def _flags(checks) -> tuple[bool, ...]:
    """The heads' validators' ``flags`` hook (:data:`refimpl._validate.GNN_HEAD_FLAG_KINDS`):
    every flag on the device, ONE host read for all."""
    vals = []
    for kind, x in checks:
        if kind == "finite":
            v = cupy.isfinite(x).all()
        elif kind == "nonneg":
            v = (x >= 0).all()
        elif kind == "binary":
            v = ((x == 0) | (x == 1)).all()
        elif kind == "unit":
            v = ((x >= 0) & (x <= 1)).all()
        else:
            raise ValueError(f"unknown flag kind {kind!r}; expected one of "
                             f"{V.GNN_HEAD_FLAG_KINDS}")
        vals.append(cupy.asarray(v).reshape(1))
    return tuple(bool(b) for b in np.asarray(cupy.asnumpy(cupy.concatenate(vals))))


# --------------------------------------------------------------------------- graph structure


def _dummy(dtype):
    return cupy.zeros(1, dtype=dtype)


class _Graph:
    """An edge list in CSR order (``src``, ``dst`` int64 (E',), ``ptr`` (N + 1,)) and, built on
    first use, its transposed CSR: ``tptr`` (N + 1,), ``tdst`` (the destinations in transposed
    order) and ``teid`` (transposed position -> CSR position)."""

    def __init__(self, src, dst, N: int):
        self.src, self.dst, self.N = _c(src), _c(dst), N
        self.E = int(src.shape[0])
        self.ptr = _c(cupy.searchsorted(self.dst, cupy.arange(N + 1, dtype=_I64),
                                        side="left").astype(_I64))
        self._t = None

    def transposed(self):
        if self._t is None:
            # CSR order is sorted by (dst, src): a stable sort by src alone gives (src, dst)
            teid = _c(cupy.argsort(self.src, kind="stable").astype(_I64))
            ssorted = self.src[teid]
            tptr = cupy.searchsorted(ssorted, cupy.arange(self.N + 1, dtype=_I64), side="left")
            self._t = (_c(tptr.astype(_I64)), _c(self.dst[teid]), teid)
        return self._t


def _edges(edge_index):
    ei = edge_index.astype(_I64, copy=False)
    return _c(ei[0]), _c(ei[1])


def _sorted_graph(src, dst, N):
    """The input edges in CSR order: ``(graph, origin)``, origin = CSR position -> input
    position (the permutation of ``to_csr``)."""
    order = _c(cupy.argsort(dst * N + src, kind="stable").astype(_I64))
    return _Graph(src[order], dst[order], N), order


def _seg_sum(ptr, X, n_rows, n_pos, *, col=None, eid=None, w=None, heads=1):
    """``out[r, f] = sum_{p in row r} wt(p, f) X[g(p), f]`` by ``gnn_seg_sum`` (+ the chunk
    combine); ``X`` (rows, F) with F = heads * C, ``w`` (E', heads) per-head weights indexed by
    the edge id ``e(p) = eid[p]`` (or p), ``g(p) = col[p]`` (or e(p)). ``n_pos`` = the number of
    CSR positions (ptr[-1], known on the host)."""
    X = _c(X)
    dt = X.dtype
    F = int(X.shape[1])
    C = F // heads if heads else F
    chunk = int(CHUNK)
    n_extra = n_pos // chunk                 # >= sum_r (ceil(deg_r / chunk) - 1)
    out = cupy.empty((n_rows, F), dtype=dt)
    if n_extra > 0:
        deg = ptr[1:] - ptr[:-1]
        extra = cupy.maximum((deg - 1) // chunk, 0)
        extra_ptr = cupy.zeros(n_rows + 1, dtype=_I64)
        extra_ptr[1:] = cupy.cumsum(extra)
        part = cupy.empty((n_extra, F), dtype=dt)
    else:
        extra_ptr, part = _dummy(_I64), _dummy(dt)
    ci = _dummy(_I64) if col is None else _c(col)
    ei = _dummy(_I64) if eid is None else _c(eid)
    wt = _dummy(dt) if w is None else _c(w)
    _launch("gnn_seg_sum", _grid(n_rows + n_extra), (SEG_THREADS,),
            (ptr, ci, np.int32(col is not None), ei, np.int32(eid is not None), wt,
             np.int32(w is not None), np.int32(heads), np.int32(C), X, np.int64(n_rows),
             np.int64(n_extra), np.int64(chunk), extra_ptr, out, part), dt)
    if n_extra > 0:
        _launch("gnn_seg_combine", _grid(n_rows), (SEG_THREADS,),
                (extra_ptr, np.int64(n_rows), np.int64(F), part, out), dt)
    return out


def _row_sums(g: _Graph, vals):
    """``sum_{p in row i} vals[p]`` (vals (E',) or (E', K) in CSR order) per destination."""
    v2 = vals.reshape(g.E, -1)
    out = _seg_sum(g.ptr, v2, g.N, g.E)
    return out.reshape((g.N,) + vals.shape[1:])


def _src_sums(g: _Graph, vals):
    """``sum_{e: src_e = n} vals[e]`` (vals in CSR order) per source, over the transposed CSR."""
    tptr, _, teid = g.transposed()
    v2 = vals.reshape(g.E, -1)
    out = _seg_sum(tptr, v2, g.N, g.E, eid=teid)
    return out.reshape((g.N,) + vals.shape[1:])


def _loop_graph(src, dst, N, n_loops, w, fill, mode):
    """Self-loops ("remaining" / "replace", see the module docstring) in ONE stable sort.
    Returns ``(graph, w' or None, origin)``: origin = CSR position -> input position, -1 for a
    loop whose value is ``fill`` / the mean."""
    E = int(src.shape[0])
    Ep = E - n_loops + N
    nodes = cupy.arange(N, dtype=_I64)
    is_loop = src == dst
    keys = cupy.concatenate([cupy.where(is_loop, N * N + dst, dst * N + src), nodes * (N + 1)])
    order = cupy.argsort(keys, kind="stable").astype(_I64)
    main = _c(order[:Ep])
    g = _Graph(cupy.concatenate([src, nodes])[main], cupy.concatenate([dst, nodes])[main], N)
    loop_origin = cupy.full(N, -1, dtype=_I64)
    if mode == "remaining" and n_loops > 0:
        tail = order[Ep:]                                      # removed loops, by node, input order
        tail_keys = keys[tail]
        pos = cupy.searchsorted(tail_keys, N * N + nodes, side="right") - 1
        posc = cupy.maximum(pos, 0)
        has = (pos >= 0) & (tail_keys[posc] == N * N + nodes)
        loop_origin = cupy.where(has, tail[posc], -1)
    origin = cupy.concatenate([cupy.arange(E, dtype=_I64), loop_origin])[main]
    w_out = None
    if w is not None:
        dt = w.dtype
        W2 = w.reshape(E, -1)
        Dw = int(W2.shape[1])
        if fill == "mean":
            ext = cupy.concatenate([W2, cupy.zeros((N, Dw), dtype=dt)])   # loops gather 0
            total = _seg_sum(g.ptr, ext, N, g.E, col=main)
            count = (g.ptr[1:] - g.ptr[:-1] - 1).astype(dt)               # one loop per row
            loop_w = total / cupy.maximum(count, dt.type(1))[:, None]
        else:
            loop_w = cupy.full((N, Dw), fill, dtype=dt)
        if mode == "remaining" and n_loops > 0:
            loop_w = cupy.where((loop_origin >= 0)[:, None],
                                W2[cupy.maximum(loop_origin, 0)], loop_w)
        w_out = _c(cupy.concatenate([W2, loop_w])[main]).reshape((Ep,) + w.shape[1:])
    return g, w_out, origin


# --------------------------------------------------------------------------- structure API


def to_csr(edge_index, n_nodes):
    """``(ptr (N+1,), src_sorted (E,), perm (E,))`` int64: the edges stably sorted by (dst, src)
    (``argsort(dst * N + src, kind="stable")``), ``ptr = searchsorted(dst_sorted, 0..N)``.
    One host read (the index range check)."""
    _arrays(edge_index=edge_index)
    N, _ = V.gnn_to_csr_args(edge_index, n_nodes, stats=_Stats())
    src, dst = _edges(edge_index)
    g, perm = _sorted_graph(src, dst, N)
    return g.ptr, g.src, perm


def add_self_loops(edge_index, n_nodes, edge_weight=None, fill=1.0, mode="remaining"):
    """PyG's self-loop rules (module docstring) on the device: ``(edge_index (2, E') int64,
    edge_weight (E',) / (E', D) or None)`` in CSR order, E' = non-loop edges + N. One host read
    (the range check and the number of existing loops, which sizes E')."""
    _arrays(edge_index=edge_index, edge_weight=edge_weight)
    st = _Stats(loops_of=edge_index)
    N, _, fill, mode = V.gnn_self_loops_args(edge_index, n_nodes, edge_weight, fill, mode,
                                             stats=st)
    src, dst = _edges(edge_index)
    g, w, _ = _loop_graph(src, dst, N, st.loops(), edge_weight, fill, mode)
    return cupy.stack([g.src, g.dst]), w


class _Gcn:
    """The GCN edge list used, its weights and normalisation (module docstring)."""

    def __init__(self, edge_index, N, ew, improved, add_loops, normalize, n_loops, dt):
        src, dst = _edges(edge_index)
        E = int(src.shape[0])
        w = ew if ew is not None else cupy.ones(E, dtype=dt)
        if normalize and add_loops:
            g, w1, origin = _loop_graph(src, dst, N, n_loops, w, 2.0 if improved else 1.0,
                                        "remaining")
        else:
            g, origin = _sorted_graph(src, dst, N)
            w1 = w[origin]
        self.g, self.w, self.origin, self.E_in = g, _c(w1), origin, E
        if normalize:
            deg = _row_sums(g, self.w)
            pos = deg > 0
            self.dis = cupy.where(pos, dt.type(1) / cupy.sqrt(cupy.where(pos, deg, dt.type(1))),
                                  dt.type(0))
            self.norm = _c(self.dis[g.src] * self.w * self.dis[g.dst])
        else:
            self.dis, self.norm = None, self.w


def gcn_norm(edge_index, n_nodes, edge_weight=None, improved=False, add_loops=True):
    """``(edge_index (2, E') int64, w (E',))`` in CSR order: "remaining" loops (fill 1, 2 if
    improved) when ``add_loops``, ``w <- deg_src^-1/2 w deg_dst^-1/2`` (0 for zero degree);
    ``w`` has edge_weight's dtype (float64 without edge_weight). One host read."""
    _arrays(edge_index=edge_index, edge_weight=edge_weight)
    st = _Stats(loops_of=edge_index)
    N, _ = V.gnn_norm_args(edge_index, n_nodes, edge_weight, improved, add_loops, stats=st)
    dt = np.dtype(edge_weight.dtype) if edge_weight is not None else np.dtype(np.float64)
    gc = _Gcn(edge_index, N, edge_weight, bool(improved), bool(add_loops), True, st.loops(), dt)
    return cupy.stack([gc.g.src, gc.g.dst]), gc.norm


def _gcn_setup(X, edge_index, W, b, edge_weight, improved, add_loops, normalize, G=None):
    _arrays(X=X, edge_index=edge_index, W=W, b=b, edge_weight=edge_weight, G=G)
    st = _Stats(loops_of=edge_index)
    shape = V.gcn_layer_args(X, edge_index, W, b, edge_weight, improved, add_loops, normalize,
                             G, stats=st)
    dt = np.dtype(shape.dtype)
    gc = _Gcn(edge_index, shape.N, edge_weight, bool(improved), bool(add_loops),
              bool(normalize), st.loops(), dt)
    return shape, gc


def gcn_layer(X, edge_index, W, b=None, edge_weight=None, improved=False, add_loops=True,
              normalize=True):
    """PyG ``GCNConv``: ``H = M (X W) + b``, the aggregation by the segment-sum kernel (one warp
    per destination row, fixed order). One host read."""
    _, gc = _gcn_setup(X, edge_index, W, b, edge_weight, improved, add_loops, normalize)
    g = gc.g
    H = _seg_sum(g.ptr, X @ W, g.N, g.E, col=g.src, w=gc.norm)
    return H if b is None else H + b


def gcn_layer_vjp(X, edge_index, W, G, b=None, edge_weight=None, improved=False, add_loops=True,
                  normalize=True):
    """VJP of :func:`gcn_layer`: ``{"dX", "dW"}`` (+ ``"db"``, + ``"dedge_weight"`` (E,) through
    the normalisation and the degrees); ``M^T G`` over the transposed CSR. One host read."""
    shape, gc = _gcn_setup(X, edge_index, W, b, edge_weight, improved, add_loops, normalize, G)
    g = gc.g
    dt = np.dtype(shape.dtype)
    T = dt.type
    tptr, tdst, teid = g.transposed()
    dXW = _seg_sum(tptr, G, g.N, g.E, col=tdst, eid=teid, w=gc.norm)
    out = {"dX": dXW @ W.T, "dW": X.T @ dXW}
    if b is not None:
        out["db"] = G.sum(axis=0)
    if edge_weight is not None:
        XW = _c(X @ W)
        dnorm = cupy.empty((g.E, 1), dtype=dt)
        _launch("gnn_edge_dot", _grid(g.N), (SEG_THREADS,),
                (g.ptr, g.src, np.int64(g.N), np.int32(1), np.int32(shape.F_out), _c(G), XW,
                 dnorm), dt)
        dnorm = dnorm[:, 0]
        if normalize:
            dis, w = gc.dis, gc.w
            q = dnorm * w
            ddis = _src_sums(g, q * dis[g.dst]) + _row_sums(g, q * dis[g.src])
            ddeg = T(-0.5) * dis * dis * dis * ddis
            dw = dnorm * dis[g.src] * dis[g.dst] + ddeg[g.dst]
        else:
            dw = dnorm
        # each input edge receives the dw of the edge it became (origin is injective on the
        # edges that have one; fill loops (-1) land in a discarded slot)
        E = gc.E_in
        dew = cupy.zeros(E + 1, dtype=dt)
        dew[cupy.where(gc.origin >= 0, gc.origin, E)] = dw
        out["dedge_weight"] = dew[:E]
    return out


# --------------------------------------------------------------------------- segment softmax


def _softmax_setup(scores, dst, n_nodes, G=None):
    _arrays(scores=scores, dst=dst, G=G)
    N, _, dt = V.segment_softmax_args(scores, dst, n_nodes, G, stats=_Stats())
    d = dst.astype(_I64, copy=False)
    perm = _c(cupy.argsort(d, kind="stable").astype(_I64))
    ptr = _c(cupy.searchsorted(d[perm], cupy.arange(N + 1, dtype=_I64), side="left").astype(_I64))
    H = 1 if scores.ndim == 1 else int(scores.shape[1])
    return N, np.dtype(dt), perm, ptr, H


def _softmax_fwd(scores, N, dt, perm, ptr, H):
    alpha = cupy.empty(scores.shape, dtype=dt)
    _launch("gnn_softmax_fwd", _grid(N * H), (SEG_THREADS,),
            (ptr, perm, np.int64(N), np.int32(H), _c(scores), alpha), dt)
    return alpha


def segment_softmax(scores, dst, n_nodes):
    """Per-(destination, head) softmax with PyG's ``+ 1e-16``, input order kept: a stable sort
    of ``dst`` and ``gnn_softmax_fwd`` (online max / sum-exp per (row, head)). One host read."""
    N, dt, perm, ptr, H = _softmax_setup(scores, dst, n_nodes)
    return _softmax_fwd(scores, N, dt, perm, ptr, H)


def segment_softmax_vjp(scores, dst, n_nodes, G):
    """``{"dscores": alpha (G - sum_row alpha G)}`` (``gnn_softmax_bwd``). One host read."""
    N, dt, perm, ptr, H = _softmax_setup(scores, dst, n_nodes, G)
    alpha = _softmax_fwd(scores, N, dt, perm, ptr, H)
    ds = cupy.empty(scores.shape, dtype=dt)
    _launch("gnn_softmax_bwd", _grid(N * H), (SEG_THREADS,),
            (ptr, perm, np.int64(N), np.int32(H), alpha, _c(G), ds), dt)
    return {"dscores": ds}


# --------------------------------------------------------------------------- GAT


def _lanes_per_group(C: int) -> int:
    """The power of two >= min(C, 32): lanes per edge group in gnn_gat_fwd's aggregation."""
    cp = 1
    while cp < min(C, 32):
        cp *= 2
    return cp


class _Gat:
    """Validated GAT forward state (module docstring)."""

    def __init__(self, X, edge_index, W, a_src, a_dst, b, edge_attr, W_e, a_e, negative_slope,
                 concat, add_loops, fill, G=None):
        _arrays(X=X, edge_index=edge_index, W=W, a_src=a_src, a_dst=a_dst, b=b,
                edge_attr=edge_attr, W_e=W_e, a_e=a_e, G=G)
        st = _Stats(loops_of=edge_index)
        shape = V.gat_layer_args(X, edge_index, W, a_src, a_dst, b, edge_attr, W_e, a_e,
                                 negative_slope, concat, add_loops, fill, G, stats=st)
        self.shape = shape
        dt = self.dt = np.dtype(shape.dtype)
        N, H, C = shape.N, shape.heads, shape.C
        src, dst = _edges(edge_index)
        if add_loops:
            g, A, _ = _loop_graph(src, dst, N, st.loops(), edge_attr, V.gnn_fill(fill),
                                  "replace")
        else:
            g, order = _sorted_graph(src, dst, N)
            A = None if edge_attr is None else _c(edge_attr[order])
        self.g, self.A = g, A
        self.slope = dt.type(float(negative_slope))
        self.Xp = _c(X @ W)                                       # (N, H C)
        Xp3 = self.Xp.reshape(N, H, C)
        self.s_src = _c((Xp3 * a_src).sum(axis=-1))               # (N, H)
        self.s_dst = _c((Xp3 * a_dst).sum(axis=-1))
        if A is not None:
            self.Vh = (W_e.reshape(shape.D, H, C) * a_e).sum(axis=-1)    # (D, H)
            self.s_edge = _c(A @ self.Vh)                                # (E', H)
        else:
            self.Vh, self.s_edge = None, _dummy(dt)
        self.alpha = cupy.empty((g.E, H), dtype=dt)
        out = cupy.empty((N, H, C), dtype=dt)
        _launch("gnn_gat_fwd", _grid(N * H), (SEG_THREADS,),
                (g.ptr, g.src, np.int64(N), np.int32(H), np.int32(C), self.s_src, self.s_dst,
                 self.s_edge, np.int32(A is not None), self.slope, self.Xp,
                 np.int32(_lanes_per_group(C)), self.alpha, out), dt)
        Hout = out.reshape(N, H * C) if concat else out.mean(axis=1)
        self.H = Hout if b is None else Hout + b


def gat_layer(X, edge_index, W, a_src, a_dst, b=None, edge_attr=None, W_e=None, a_e=None,
              negative_slope=0.2, concat=True, add_loops=True, fill="mean"):
    """PyG ``GATConv`` (v1): ``(H, alpha)``, alpha (E', heads) in CSR order of the edges used;
    one fused kernel per (row, head) — no E' x heads x C tensor. One host read."""
    st = _Gat(X, edge_index, W, a_src, a_dst, b, edge_attr, W_e, a_e, negative_slope, concat,
              add_loops, fill)
    return st.H, st.alpha


def gat_layer_vjp(X, edge_index, W, a_src, a_dst, G, b=None, edge_attr=None, W_e=None, a_e=None,
                  negative_slope=0.2, concat=True, add_loops=True, fill="mean"):
    """VJP of H of :func:`gat_layer`: ``{"dX", "dW", "da_src", "da_dst"}`` (+ ``"db"``, +
    ``"dW_e", "da_e"`` with edge_attr). Attention backward by ``gnn_gat_bwd``, the source sums
    over the transposed CSR. One host read."""
    st = _Gat(X, edge_index, W, a_src, a_dst, b, edge_attr, W_e, a_e, negative_slope, concat,
              add_loops, fill, G)
    shape, g, dt = st.shape, st.g, st.dt
    N, H, C = shape.N, shape.heads, shape.C
    if concat:
        Gh = _c(G).reshape(N, H, C)
    else:
        Gh = _c(cupy.broadcast_to(G[:, None, :] / dt.type(H), (N, H, C)))
    dz = cupy.empty((g.E, H), dtype=dt)
    ds_dst = cupy.empty((N, H), dtype=dt)
    _launch("gnn_gat_bwd", _grid(N * H), (SEG_THREADS,),
            (g.ptr, g.src, np.int64(N), np.int32(H), np.int32(C), st.s_src, st.s_dst,
             st.s_edge, np.int32(st.A is not None), st.slope, st.Xp, st.alpha, Gh, dz, ds_dst),
            dt)
    tptr, tdst, teid = g.transposed()
    ds_src = _seg_sum(tptr, dz, N, g.E, eid=teid)                          # (N, H)
    dXp = _seg_sum(tptr, Gh.reshape(N, H * C), N, g.E, col=tdst, eid=teid, w=st.alpha,
                   heads=H).reshape(N, H, C)
    dXp = dXp + ds_src[:, :, None] * a_src + ds_dst[:, :, None] * a_dst
    Xp3 = st.Xp.reshape(N, H, C)
    dXp2 = dXp.reshape(N, H * C)
    out = {"dX": dXp2 @ W.T, "dW": X.T @ dXp2,
           "da_src": (ds_src[:, :, None] * Xp3).sum(axis=0),
           "da_dst": (ds_dst[:, :, None] * Xp3).sum(axis=0)}
    if b is not None:
        out["db"] = G.sum(axis=0)
    if st.A is not None:
        dV = st.A.T @ dz                                                   # (D, H)
        D = shape.D
        out["dW_e"] = (dV[:, :, None] * a_e).reshape(D, H * C)
        out["da_e"] = (W_e.reshape(D, H, C) * dV[:, :, None]).sum(axis=0)
    return out


# --------------------------------------------------------------------------- GIN


def _gin_forward(X, edge_index, W1, b1, W2, b2, eps, G=None):
    _arrays(X=X, edge_index=edge_index, W1=W1, b1=b1, W2=W2, b2=b2, G=G)
    shape = V.gin_layer_args(X, edge_index, W1, b1, W2, b2, eps, G, stats=_Stats())
    dt = np.dtype(shape.dtype)
    src, dst = _edges(edge_index)
    g, _ = _sorted_graph(src, dst, shape.N)
    agg = dt.type(1.0 + float(eps)) * X + _seg_sum(g.ptr, X, g.N, g.E, col=g.src)
    Z = agg @ W1 + b1
    R = cupy.maximum(Z, dt.type(0))
    return dt, g, agg, Z, R, R @ W2 + b2


def gin_layer(X, edge_index, W1, b1, W2, b2, eps=0.0):
    """PyG ``GINConv`` with the code's MLP: ``relu(((1 + eps) X + A X) W1 + b1) W2 + b2``, the sum
    by the segment-sum kernel. One host read."""
    return _gin_forward(X, edge_index, W1, b1, W2, b2, eps)[-1]


def gin_layer_vjp(X, edge_index, W1, b1, W2, b2, G, eps=0.0):
    """VJP of :func:`gin_layer`: ``{"dX", "dW1", "db1", "dW2", "db2"}``; ``A^T dagg`` over the
    transposed CSR. One host read."""
    dt, g, agg, Z, R, _ = _gin_forward(X, edge_index, W1, b1, W2, b2, eps, G)
    dZ = (G @ W2.T) * (Z > 0)
    dagg = _c(dZ @ W1.T)
    tptr, tdst, teid = g.transposed()
    dX = dt.type(1.0 + float(eps)) * dagg + _seg_sum(tptr, dagg, g.N, g.E, col=tdst, eid=teid)
    return {"dX": dX, "dW1": agg.T @ dZ, "db1": dZ.sum(axis=0), "dW2": R.T @ G,
            "db2": G.sum(axis=0)}


# --------------------------------------------------------------------------- heads (REF-M)


def _sigmoid(x):
    """``1 / (1 + exp(-x))`` without overflow: ``e = exp(-|x|)``, ``1 / (1 + e)`` for x >= 0,
    ``e / (1 + e)`` otherwise."""
    e = cupy.exp(-cupy.abs(x))
    return cupy.where(x >= 0, 1 / (1 + e), e / (1 + e))


def edge_mlp_weights(edge_attr, W1, b1, W2, b2, mean=None, std=None):
    """``sigmoid(relu(z W1 + b1) W2 + b2) + 1e-8`` (E,), ``z = (edge_attr - mean) / (std +
    1e-8)`` when mean/std are given. One host read (validation flags)."""
    _arrays(edge_attr=edge_attr, W1=W1, b1=b1, W2=W2, b2=b2, mean=mean, std=std)
    V.edge_mlp_args(edge_attr, W1, b1, W2, b2, mean, std, flags=_flags)
    T = np.dtype(edge_attr.dtype).type
    z = edge_attr
    if mean is not None:
        z = (edge_attr - mean) / (std + T(STD_EPS))
    h = cupy.maximum(z @ W1 + b1, T(0))
    return _sigmoid(h @ W2[:, 0] + b2[0]) + T(WEIGHT_EPS)


def _softmax_vec(s, axis=-1):
    e = cupy.exp(s - s.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _softmax_back(beta, dbeta, axis=-1):
    return beta * (dbeta - (beta * dbeta).sum(axis=axis, keepdims=True))


def _fuse_check(H_stack, mode, params, G=None):
    arrays = dict(H_stack=H_stack, G=G)
    if isinstance(params, dict):
        arrays.update({f"params['{k}']": v for k, v in params.items()})
    _arrays(**arrays)
    return V.fuse_args(H_stack, mode, params, G)


def _fuse_parts(Hs, mode, P):
    R, N, F = (int(s) for s in Hs.shape)
    if mode == "global":
        w = cupy.ones(R, dtype=Hs.dtype) if P is None else P["w"]
        beta = _softmax_vec(w)
        return cupy.tensordot(beta, Hs, axes=1), beta, None
    if mode == "concat":
        Hc = Hs.transpose(1, 0, 2).reshape(N, R * F)
        return Hc @ P["W"] + P["b"], None, None
    u = cupy.tanh(Hs @ P["W"] + P["b"])                       # (R, N, A)
    e = u @ P["q"]                                            # (R, N)
    if mode == "semantic":
        beta = _softmax_vec(e.mean(axis=1))
        return cupy.tensordot(beta, Hs, axes=1), beta, u
    beta = _softmax_vec(e.T, axis=1)                          # (N, R)
    return cupy.einsum("nr,rnf->nf", beta, Hs), beta, u


def fuse(H_stack, mode="global", params=None):
    """Relation fusion ``(H, beta)`` (global / concat / semantic / node, the reference's
    formulas as CuPy expressions). No host read (no value checks)."""
    _fuse_check(H_stack, mode, params)
    H, beta, _ = _fuse_parts(H_stack, mode, params)
    return H, beta


def fuse_vjp(H_stack, G, mode="global", params=None):
    """Gradient of ``<G, H>``: ``{"dH_stack", "d<key>" per params key}`` (the reference's
    formulas). No host read."""
    _fuse_check(H_stack, mode, params, G)
    Hs, P = H_stack, params
    T = np.dtype(Hs.dtype).type
    R, N, F = (int(s) for s in Hs.shape)
    _, beta, u = _fuse_parts(Hs, mode, P)
    if mode == "concat":
        Hc = Hs.transpose(1, 0, 2).reshape(N, R * F)
        dHc = G @ P["W"].T
        return {"dH_stack": _c(dHc.reshape(N, R, F).transpose(1, 0, 2)), "dW": Hc.T @ G,
                "db": G.sum(axis=0)}
    if mode in ("global", "semantic"):
        dH = beta[:, None, None] * G[None]
        ds = _softmax_back(beta, cupy.einsum("rnf,nf->r", Hs, G))
        if mode == "global":
            return {"dH_stack": dH} if P is None else {"dH_stack": dH, "dw": ds}
        dq = (ds[:, None] * u.mean(axis=1)).sum(axis=0)
        Pr = (ds[:, None, None] / T(N)) * P["q"] * (T(1) - u * u)
    else:
        dH = beta.T[:, :, None] * G[None]
        de = _softmax_back(beta, cupy.einsum("rnf,nf->nr", Hs, G), axis=1)
        dq = cupy.einsum("nr,rna->a", de, u)
        Pr = de.T[:, :, None] * P["q"] * (T(1) - u * u)
    dW = cupy.einsum("rnf,rna->fa", Hs, Pr)
    db = Pr.sum(axis=(0, 1))
    dH = dH + Pr @ P["W"].T
    return {"dH_stack": dH, "dW": dW, "db": db, "dq": dq}


def _focal(outputs, y, alpha, gamma, variant, grad):
    _arrays(outputs=outputs, y=y)
    N, alpha, gamma, variant = V.focal_args(outputs, y, alpha, gamma, variant, flags=_flags)
    dt = np.dtype(outputs.dtype)
    T = dt.type
    x = outputs
    t = y.astype(dt)
    a = T(alpha) if variant == "code" else T(alpha) * t + T(1 - alpha) * (T(1) - t)
    bce = cupy.maximum(x, T(0)) - x * t + cupy.log1p(cupy.exp(-cupy.abs(x)))
    q = -cupy.expm1(-bce)                                        # 1 - p_t
    loss = cupy.asarray((a * q ** T(gamma) * bce).mean(), dtype=dt).reshape(())   # 0-d
    if not grad:
        return loss
    pos = q > 0
    qg1 = cupy.where(pos, q, T(1)) ** T(gamma - 1.0)
    dfocal = q ** T(gamma) + cupy.where(pos, T(gamma) * qg1 * cupy.exp(-bce) * bce, T(0))
    return loss, ((a / T(N)) * dfocal * (_sigmoid(x) - t)).astype(dt, copy=False)


def focal_bce(outputs, y, alpha=0.75, gamma=2.0, variant="code"):
    """The focal loss as a 0-d array (``variant="code"``: BCE-with-logits of the sigmoid outputs,
    scalar alpha; ``"logits"``: alpha_t on logits, arXiv 1708.02002). One host read (flags)."""
    return _focal(outputs, y, alpha, gamma, variant, grad=False)


def focal_bce_grad(outputs, y, alpha=0.75, gamma=2.0, variant="code"):
    """``(loss (0-d), doutputs (N,))``. One host read (flags)."""
    return _focal(outputs, y, alpha, gamma, variant, grad=True)
