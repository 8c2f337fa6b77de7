r"""Graph layers of the multilayer-GNN family — the float64 reference (spec ``gnn_pdm.md``
secs. 2, 6, 8, 9).

Paper: Kazim, Pirim, Le, Le, Yadav, "Multilayer GNN for Predictive Maintenance and Clustering in
Power Grids", arXiv 2507.07298. Official code: ``CEL-lab/Multilayer_GNN`` @6910437
(``Code/Predictive_Maintenance.ipynb``, ``Code/Substation_Clustering.ipynb``), which builds its
models from PyTorch Geometric's ``GCNConv``, ``GATConv`` and ``GINConv``. The layer definitions
are therefore PyG's (**lib**: ``pyg-team/pytorch_geometric``,
``torch_geometric/nn/conv/{gcn_conv,gat_conv,gin_conv}.py``,
``torch_geometric/utils/{loop,_softmax}.py``, release 2.8.1); the way the code calls them
(no loops and learned weights in the classifier's GCN, ``edge_dim=8`` in the encoder's GAT,
``eps = 0`` in GIN) is **official code**; the CSR layout, the explicit vector-Jacobian products
and the validation are **ours** (the PyG layers are differentiated by autograd).

Conventions (PyG's). Messages flow from ``src = edge_index[0]`` (j) to ``dst = edge_index[1]``
(i); ``N = X.shape[0]``. "CSR order" is the stable sort of the edges by (dst, src)
(``np.lexsort((src, dst))``; duplicate edges keep their input order); ``ptr`` is the exclusive
cumulative sum of the in-degrees. Every function that returns edges or per-edge values returns
them in the CSR order of the edge list it actually used (after loops were added / removed).

Self-loops (``add_self_loops``)::

    "remaining" (GCN, PyG add_remaining_self_loops): every loop edge (i, i) of the input is
        removed and one loop per node is appended; its weight is the weight of the node's
        existing loop — the LAST one in input order when a node has several (PyG assigns
        ``loop_attr[edge_index[0][loops]] = edge_attr[loops]`` in input order) — or ``fill``
        (GCN: 1, or 2 if ``improved``) when the node had none.
    "replace" (GAT, PyG remove_self_loops + add_self_loops): every input loop is removed, one
        loop per node is appended with attribute ``fill``; ``fill="mean"``: the mean of the
        node's incoming (non-loop) attributes, 0 if it has none (PyG scatter-mean).

GCN (``gcn_norm``, ``gcn_layer``; Kipf & Welling arXiv 1609.02907 as implemented by GCNConv)::

    edges (after "remaining" loops if add_loops), w_e = edge_weight_e (1 if None)
    deg_i  = sum_{e: dst_e = i} w_e                           (target side, loops included)
    dis_i  = deg_i^(-1/2), and 0 where deg_i = 0                (PyG: pow(-0.5), inf -> 0)
    norm_e = dis_{src_e} w_e dis_{dst_e}
    H_i    = sum_{e: dst_e = i} norm_e (X W)_{src_e} + b        (transform, then propagate)
    normalize=False: H_i = sum_{e: dst_e = i} w_e (X W)_{src_e} + b, no loops and no
        normalisation (``add_loops`` and ``improved`` are then ignored; PyG's GCNConv refuses
        add_self_loops=True with normalize=False).
    improved: added loops get weight 2 with or without ``edge_weight`` (A + 2I; PyG's docs
        and its SparseTensor path). PyG 2.8.1's edge_index path creates the unit weights
        only after ``add_remaining_self_loops``, so there ``improved`` has no effect when
        edge_weight is None — a PyG quirk we do not follow (tests document it).

Segment softmax (``segment_softmax``, PyG ``utils.softmax`` with an index)::

    m_{i,h}     = max_{e: dst_e = i} s_{e,h}                     (per destination AND per head)
    alpha_{e,h} = exp(s_{e,h} - m_{dst_e,h}) / (sum_{f: dst_f = dst_e} exp(s_{f,h} - m_{dst_e,h})
                                                + 1e-16)
    (input order kept; the max is a constant shift for the backward, as PyG's detached max.)

GAT v1 (``gat_layer``; Velickovic et al. arXiv 1710.10903 as implemented by GATConv, with
``residual=False``, attention dropout 0)::

    Xp = X W viewed (N, heads, C)                          W (F, heads*C), shared by src and dst
    s_src[n,h] = sum_c Xp[n,h,c] a_src[h,c],   s_dst[n,h] = sum_c Xp[n,h,c] a_dst[h,c]
    edges: "replace" loops if add_loops (edge_attr of a loop: fill, default the mean)
    s_edge[e,h] = sum_c (A W_e)[e,h,c] a_e[h,c]             (only with edge_attr A (E', D))
    z[e,h] = s_src[src_e,h] + s_dst[dst_e,h] + s_edge[e,h]
    score  = LeakyReLU(z) = z if z > 0 else negative_slope z
    alpha  = segment_softmax(score, dst)                     (E', heads), returned in CSR order
    out[i,h,:] = sum_{e: dst_e = i} alpha[e,h] Xp[src_e,h,:]
    H = out viewed (N, heads*C) if concat else mean_h out[:,h,:]  (N, C);  then + b

GIN (``gin_layer``; Xu et al. arXiv 1810.00826 as implemented by GINConv, sum aggregation,
``train_eps=False``)::

    agg = (1 + eps) X + A X,  (A X)_i = sum_{e: dst_e = i} X_{src_e}   (input loops count too)
    H   = relu(agg W1 + b1) W2 + b2                              (the code's MLP; eps = 0)

Vector-Jacobian products (written from the math; G = dL/dH):

* GCN: with M the (N, N) matrix of norm (``M[dst_e, src_e] += norm_e``)::

      dXW = M^T G,  dX = dXW W^T,  dW = X^T dXW,  db = sum_i G_i
      dnorm_e = <G_{dst_e}, (X W)_{src_e}>
      dw_e = dnorm_e dis_src dis_dst + ddeg_{dst_e}          (w_e enters deg_{dst_e})
      ddeg_k = -1/2 dis_k^3 sum_e dnorm_e norm_e / dis_k ([src_e = k] + [dst_e = k])
             = -1/2 dis_k^3 [sum_{src_e = k} dnorm_e w_e dis_{dst_e}
                             + sum_{dst_e = k} dnorm_e dis_{src_e} w_e]     (0 where deg_k = 0)
      dedge_weight: each input edge receives the dw of the edge it became (a removed duplicate
      loop receives 0; a filled loop has no input weight). normalize=False: dw_e = dnorm_e.
      At deg_k = 0 (all weights into k are 0) the clamp dis_k = 0 is held constant, so those
      weights get 0 (the one-sided derivative is infinite; torch autograd through PyG gives
      NaN there, 0 * inf in the backward of pow(-0.5)).
* segment softmax: ``ds = alpha (G - sum_{row} alpha G)`` per (dst, head).
* GAT: ``Gh`` = G viewed (N, heads, C) (concat) or G / heads broadcast to every head (mean)::

      dalpha[e,h] = <Gh[dst_e,h], Xp[src_e,h]>,   dXp[src_e,h] += alpha[e,h] Gh[dst_e,h]
      dscore = alpha (dalpha - sum_row alpha dalpha),  dz = dscore (1 if z > 0 else slope)
      ds_src[n,h] = sum_{src_e = n} dz[e,h],  ds_dst[n,h] = sum_{dst_e = n} dz[e,h]
      dXp[n,h,c] += ds_src[n,h] a_src[h,c] + ds_dst[n,h] a_dst[h,c]
      da_src[h,c] = sum_n ds_src[n,h] Xp[n,h,c]   (da_dst likewise)
      da_e[h,c] = sum_e dz[e,h] (A W_e)[e,h,c],   dW_e = A^T (dz[:,:,None] a_e)   (A: the
      attributes of the edges used, loop rows — the means — included; A itself is not
      differentiated)
      dW = X^T dXp,  dX = dXp W^T,  db = sum_i G_i
* GIN: ``Z = agg W1 + b1``, ``R = relu(Z)``::

      dW2 = R^T G, db2 = sum G, dZ = (G W2^T) [Z > 0], dW1 = agg^T dZ, db1 = sum dZ,
      dagg = dZ W1^T, dX = (1 + eps) dagg + A^T dagg

The derivative conventions at the kinks are torch's (LeakyReLU and ReLU use the negative-side
slope at 0). Everything computes in float64 (inputs are upcast); arrays come back float64,
integer outputs int64. Segment sums are ``scipy.sparse`` CSR products or ``np.add.at`` /
``np.bincount``: the reference is the definition, not a fast path (the backends fix the
summation order; see ``backends/*/gnn.py`` and :class:`AtomicFallbackWarning`).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from refimpl import _validate as V

__all__ = [
    "AtomicFallbackWarning", "to_csr", "add_self_loops", "gcn_norm", "gcn_layer",
    "gcn_layer_vjp", "segment_softmax", "segment_softmax_vjp", "gat_layer", "gat_layer_vjp",
    "gin_layer", "gin_layer_vjp",
]

_SOFTMAX_EPS = 1e-16     # PyG utils.softmax: out_sum = segment_sum(exp) + 1e-16


class AtomicFallbackWarning(UserWarning):
    """A backend path of the gnn family that uses atomics or a non-deterministic library call
    (e.g. torch ``index_add_`` on CUDA), so its floating-point summation order — and hence its
    low bits — may change from run to run. Each backend warns once per (op, path) and lists
    such paths in its ``ATOMIC_PATHS`` constant; the reference never warns."""


# --------------------------------------------------------------------------- helpers


def _ints(edge_index):
    """(src, dst) as int64 host arrays (already validated)."""
    ei = np.asarray(V.host_array(edge_index, "edge_index"), dtype=np.int64)
    return ei[0].copy(), ei[1].copy()


def _f64(x, name):
    return None if x is None else np.asarray(V.host_array(x, name), dtype=np.float64)


def _csr_perm(src, dst):
    """CSR order: stable sort by (dst, src)."""
    return np.lexsort((src, dst))


def _ptr(dst_sorted, n):
    """Exclusive cumulative sum of the in-degrees (dst already sorted)."""
    ptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(dst_sorted, minlength=n), out=ptr[1:])
    return ptr


def _segment_matrix(values, src, dst, n):
    """The (n, n) CSR matrix M with M[dst_e, src_e] += values_e (edges in CSR order):
    ``M @ Y`` is the segment sum ``sum_{e: dst_e = i} values_e Y_{src_e}``."""
    return sp.csr_matrix((values, src, _ptr(dst, n)), shape=(n, n))


def _with_loops(src, dst, n, w, fill, mode):
    """Self-loop handling of ``add_self_loops`` (see the module docstring), then CSR order.

    ``w`` None, (E,) or (E, D) float64. Returns ``(src, dst, w, origin)`` in CSR order, where
    ``origin[e]`` is the input position the edge's value was taken from (-1 for a loop whose
    value is ``fill`` or the mean)."""
    is_loop = src == dst
    keep = np.flatnonzero(~is_loop)
    loops = np.flatnonzero(is_loop)
    nodes = np.arange(n, dtype=np.int64)
    loop_origin = np.full(n, -1, dtype=np.int64)
    if mode == "remaining":
        np.maximum.at(loop_origin, src[loops], loops)   # the LAST loop of each node
    w_out = None
    if w is not None:
        if fill == "mean":
            total = np.zeros((n,) + w.shape[1:])
            np.add.at(total, dst[keep], w[keep])
            count = np.bincount(dst[keep], minlength=n).astype(np.float64)
            loop_w = total / np.maximum(count, 1.0).reshape((n,) + (1,) * (w.ndim - 1))
        else:
            loop_w = np.full((n,) + w.shape[1:], float(fill))
        has = loop_origin >= 0
        loop_w[has] = w[loop_origin[has]]
        w_out = np.concatenate([w[keep], loop_w], axis=0)
    s = np.concatenate([src[keep], nodes])
    d = np.concatenate([dst[keep], nodes])
    origin = np.concatenate([keep, loop_origin])
    perm = _csr_perm(s, d)
    return s[perm], d[perm], (None if w_out is None else w_out[perm]), origin[perm]


def _sorted_edges(src, dst, w):
    """The input edges in CSR order: ``(src, dst, w, origin)`` (origin = the CSR permutation)."""
    perm = _csr_perm(src, dst)
    return src[perm], dst[perm], (None if w is None else w[perm]), perm


def _gcn_edges(src, dst, n, w, improved, add_loops, normalize):
    """The GCN edge list used: ``(src, dst, w (ones if None), origin)`` in CSR order."""
    if w is None:
        w = np.ones(src.shape[0])
    if normalize and add_loops:
        return _with_loops(src, dst, n, w, 2.0 if improved else 1.0, "remaining")
    return _sorted_edges(src, dst, w)


def _inv_sqrt_deg(dst, w, n):
    """``dis = deg^-1/2`` with 0 where deg = 0 (PyG's inf -> 0)."""
    deg = np.bincount(dst, weights=w, minlength=n)
    dis = np.zeros(n)
    pos = deg > 0
    dis[pos] = 1.0 / np.sqrt(deg[pos])
    return dis


def _softmax(scores, dst, n):
    """Segment softmax over ``dst`` (any edge order), per column of 2-D scores."""
    m = np.full((n,) + scores.shape[1:], -np.inf)
    np.maximum.at(m, dst, scores)
    ex = np.exp(scores - m[dst])
    den = np.zeros((n,) + scores.shape[1:])
    np.add.at(den, dst, ex)
    return ex / (den + _SOFTMAX_EPS)[dst]


def _softmax_backward(alpha, G, dst, n):
    """``alpha (G - sum_row alpha G)`` per (dst, column)."""
    row = np.zeros((n,) + alpha.shape[1:])
    np.add.at(row, dst, alpha * G)
    return alpha * (G - row[dst])


def _leaky(z, slope):
    return np.where(z > 0, z, slope * z)


# --------------------------------------------------------------------------- structure


def to_csr(edge_index, n_nodes):
    """CSR view of a graph: the edges stably sorted by (dst, src).

    Returns ``(ptr (N+1,), src_sorted (E,), perm (E,))``, all int64: ``ptr`` the exclusive
    cumulative sum of the in-degrees (row i = destination i holds positions
    ``ptr[i]:ptr[i+1]``), ``src_sorted = edge_index[0][perm]``, ``perm`` maps a CSR position to
    the input position (``edge_weight[perm]`` reorders per-edge values). Duplicate edges keep
    their input order (``np.lexsort`` is stable)."""
    N, _ = V.gnn_to_csr_args(V.host_array(edge_index, "edge_index"), n_nodes)
    src, dst = _ints(edge_index)
    perm = _csr_perm(src, dst).astype(np.int64)
    return _ptr(dst[perm], N), src[perm], perm


def add_self_loops(edge_index, n_nodes, edge_weight=None, fill=1.0, mode="remaining"):
    """Self-loops as PyG: ``mode="remaining"`` (GCN, ``add_remaining_self_loops``) keeps the
    weight of a node's existing loop (the last one in input order) and fills the others;
    ``mode="replace"`` (GAT, ``remove_self_loops`` + ``add_self_loops``) drops every existing
    loop and fills all. ``fill``: a number, or ``"mean"`` = the mean of the node's incoming
    non-loop values (0 if none). ``edge_weight`` may be (E,) weights or (E, D) attributes.

    Returns ``(edge_index (2, E') int64, edge_weight (E',) / (E', D) float64 or None)`` in CSR
    order; E' = (number of non-loop input edges) + N."""
    ei = V.host_array(edge_index, "edge_index")
    w = None if edge_weight is None else V.host_array(edge_weight, "edge_weight")
    N, _, fill, mode = V.gnn_self_loops_args(ei, n_nodes, w, fill, mode)
    src, dst = _ints(ei)
    s, d, w_out, _ = _with_loops(src, dst, N, _f64(w, "edge_weight"), fill, mode)
    return np.stack([s, d]), w_out


def gcn_norm(edge_index, n_nodes, edge_weight=None, improved=False, add_loops=True):
    """GCN's symmetric normalisation (PyG ``gcn_norm``): "remaining" self-loops with fill 1
    (2 if ``improved``) when ``add_loops``, ``deg_i = sum_{dst=i} w``, and
    ``w_e <- deg_src^-1/2 w_e deg_dst^-1/2`` (inf -> 0 for zero degree).

    Returns ``(edge_index (2, E') int64, w (E',) float64)`` in CSR order of the edges used."""
    ei = V.host_array(edge_index, "edge_index")
    w = None if edge_weight is None else V.host_array(edge_weight, "edge_weight")
    N, _ = V.gnn_norm_args(ei, n_nodes, w, improved, add_loops)
    src, dst = _ints(ei)
    s, d, w1, _ = _gcn_edges(src, dst, N, _f64(w, "edge_weight"), improved, add_loops, True)
    dis = _inv_sqrt_deg(d, w1, N)
    return np.stack([s, d]), dis[s] * w1 * dis[d]


# --------------------------------------------------------------------------- GCN


def _gcn_prepare(X, edge_index, W, b, edge_weight, improved, add_loops, normalize, G=None):
    X, W, b, ew, G = (V.host_array(a, n) if a is not None else None
                      for a, n in ((X, "X"), (W, "W"), (b, "b"), (edge_weight, "edge_weight"),
                                   (G, "G")))
    shape = V.gcn_layer_args(X, V.host_array(edge_index, "edge_index"), W, b, ew, improved,
                             add_loops, normalize, G)
    src, dst = _ints(edge_index)
    s, d, w, origin = _gcn_edges(src, dst, shape.N, _f64(ew, "edge_weight"), improved, add_loops,
                                 normalize)
    if normalize:
        dis = _inv_sqrt_deg(d, w, shape.N)
        norm = dis[s] * w * dis[d]
    else:
        dis, norm = None, w
    return shape, (_f64(X, "X"), _f64(W, "W"), _f64(b, "b"), _f64(G, "G")), (s, d, w, origin,
                                                                               dis, norm)


def gcn_layer(X, edge_index, W, b=None, edge_weight=None, improved=False, add_loops=True,
              normalize=True):
    """PyG ``GCNConv`` forward: ``H = M (X W) + b`` with ``M[dst, src] = norm_e`` (see the module
    docstring: "remaining" self-loops when ``add_loops``, symmetric degree normalisation; with
    ``normalize=False`` the plain weighted sum, no loops). X (N, F), W (F, F_out), b (F_out,),
    edge_weight (E,) >= 0 when normalising. Returns H (N, F_out) float64."""
    shape, (X, W, b, _), (s, d, _, _, _, norm) = _gcn_prepare(
        X, edge_index, W, b, edge_weight, improved, add_loops, normalize)
    H = _segment_matrix(norm, s, d, shape.N) @ (X @ W)
    return H if b is None else H + b


def gcn_layer_vjp(X, edge_index, W, G, b=None, edge_weight=None, improved=False, add_loops=True,
                  normalize=True):
    """Vector-Jacobian product of :func:`gcn_layer` for the cotangent ``G`` (N, F_out).

    Returns ``{"dX", "dW"}`` plus ``"db"`` when ``b`` is given and ``"dedge_weight"`` (E,) when
    ``edge_weight`` is given — the latter through the normalisation AND the degrees (a weight
    enters ``deg`` of its destination); formulas in the module docstring."""
    shape, (X, W, b, G), (s, d, w, origin, dis, norm) = _gcn_prepare(
        X, edge_index, W, b, edge_weight, improved, add_loops, normalize, G)
    M = _segment_matrix(norm, s, d, shape.N)
    XW = X @ W
    dXW = M.T @ G
    out = {"dX": dXW @ W.T, "dW": X.T @ dXW}
    if b is not None:
        out["db"] = G.sum(axis=0)
    if edge_weight is not None:
        dnorm = np.einsum("ef,ef->e", G[d], XW[s])
        if normalize:
            dw = dnorm * dis[s] * dis[d]
            ddis = (np.bincount(s, weights=dnorm * w * dis[d], minlength=shape.N)
                    + np.bincount(d, weights=dnorm * dis[s] * w, minlength=shape.N))
            ddeg = -0.5 * dis ** 3 * ddis
            dw = dw + ddeg[d]
        else:
            dw = dnorm
        dew = np.zeros(shape.E)
        got = origin >= 0
        np.add.at(dew, origin[got], dw[got])
        out["dedge_weight"] = dew
    return out


# --------------------------------------------------------------------------- segment softmax


def segment_softmax(scores, dst, n_nodes):
    """Softmax of ``scores`` (E,) or (E, H) over the edges sharing a destination, per head (PyG
    ``utils.softmax``): ``exp(s - max_seg) / (sum_seg exp(s - max_seg) + 1e-16)``. Edges stay
    in input order (no sort). Returns alpha of the scores' shape, float64."""
    scores = V.host_array(scores, "scores")
    dst = V.host_array(dst, "dst")
    N, _, _ = V.segment_softmax_args(scores, dst, n_nodes)
    return _softmax(np.asarray(scores, dtype=np.float64), np.asarray(dst, dtype=np.int64), N)


def segment_softmax_vjp(scores, dst, n_nodes, G):
    """VJP of :func:`segment_softmax`: ``{"dscores": alpha (G - sum_row alpha G)}``."""
    scores, dst, G = (V.host_array(a, n) for a, n in ((scores, "scores"), (dst, "dst"), (G, "G")))
    N, _, _ = V.segment_softmax_args(scores, dst, n_nodes, G)
    d = np.asarray(dst, dtype=np.int64)
    alpha = _softmax(np.asarray(scores, dtype=np.float64), d, N)
    return {"dscores": _softmax_backward(alpha, np.asarray(G, dtype=np.float64), d, N)}


# --------------------------------------------------------------------------- GAT


def _gat_forward(X, edge_index, W, a_src, a_dst, b, edge_attr, W_e, a_e, negative_slope, concat,
                 add_loops, fill, G=None):
    """Validated forward; returns the intermediates the VJP needs."""
    arrays = dict(X=X, W=W, a_src=a_src, a_dst=a_dst, b=b, edge_attr=edge_attr, W_e=W_e,
                  a_e=a_e, G=G)
    arrays = {k: (None if v is None else V.host_array(v, k)) for k, v in arrays.items()}
    shape = V.gat_layer_args(arrays["X"], V.host_array(edge_index, "edge_index"), arrays["W"],
                             arrays["a_src"], arrays["a_dst"], arrays["b"], arrays["edge_attr"],
                             arrays["W_e"], arrays["a_e"], negative_slope, concat, add_loops,
                             fill, arrays["G"])
    f = {k: _f64(v, k) for k, v in arrays.items()}
    N, heads, C = shape.N, shape.heads, shape.C
    src, dst = _ints(edge_index)
    if add_loops:
        s, d, A, _ = _with_loops(src, dst, N, f["edge_attr"], V.gnn_fill(fill), "replace")
    else:
        s, d, A, _ = _sorted_edges(src, dst, f["edge_attr"])
    Xp = (f["X"] @ f["W"]).reshape(N, heads, C)
    z = (Xp * f["a_src"]).sum(-1)[s] + (Xp * f["a_dst"]).sum(-1)[d]
    Ep = None
    if A is not None:
        Ep = (A @ f["W_e"]).reshape(-1, heads, C)
        z = z + (Ep * f["a_e"]).sum(-1)
    slope = float(negative_slope)
    alpha = _softmax(_leaky(z, slope), d, N)
    out = np.stack([_segment_matrix(alpha[:, h], s, d, N) @ Xp[:, h, :] for h in range(heads)],
                   axis=1)
    H = out.reshape(N, heads * C) if concat else out.mean(axis=1)
    if f["b"] is not None:
        H = H + f["b"]
    return shape, f, (s, d, A, Xp, Ep, z, alpha), H


def gat_layer(X, edge_index, W, a_src, a_dst, b=None, edge_attr=None, W_e=None, a_e=None,
              negative_slope=0.2, concat=True, add_loops=True, fill="mean"):
    """PyG ``GATConv`` forward (v1, ``residual=False``, no attention dropout): equations in the
    module docstring. W (F, heads*C); a_src, a_dst, a_e (heads, C); W_e (D, heads*C) with
    edge_attr (E, D); b (heads*C,) if concat else (C,). Self-loops ("replace") when
    ``add_loops``, the loops' edge attribute = ``fill`` (default: the mean of the node's
    incoming attributes).

    Returns ``(H, alpha)``: H (N, heads*C) if concat else (N, C); alpha (E', heads) in CSR order
    of the edges used (loops included)."""
    _, _, inter, H = _gat_forward(X, edge_index, W, a_src, a_dst, b, edge_attr, W_e, a_e,
                                  negative_slope, concat, add_loops, fill)
    return H, inter[-1]


def gat_layer_vjp(X, edge_index, W, a_src, a_dst, G, b=None, edge_attr=None, W_e=None, a_e=None,
                  negative_slope=0.2, concat=True, add_loops=True, fill="mean"):
    """VJP of H of :func:`gat_layer` for the cotangent ``G`` (H's shape; alpha gets none).

    Returns ``{"dX", "dW", "da_src", "da_dst"}`` plus ``"db"`` when ``b`` is given and
    ``"dW_e", "da_e"`` when ``edge_attr`` is given (the loops' mean attributes included as
    rows of A; edge_attr itself is not differentiated). Formulas in the module docstring."""
    shape, f, (s, d, A, Xp, Ep, z, alpha), _ = _gat_forward(
        X, edge_index, W, a_src, a_dst, b, edge_attr, W_e, a_e, negative_slope, concat,
        add_loops, fill, G)
    N, heads, C = shape.N, shape.heads, shape.C
    G = f["G"]
    if concat:
        Gh = G.reshape(N, heads, C)
    else:
        Gh = np.broadcast_to(G[:, None, :] / heads, (N, heads, C))
    dalpha = np.einsum("ehc,ehc->eh", Gh[d], Xp[s])
    dXp = np.stack([_segment_matrix(alpha[:, h], s, d, N).T @ Gh[:, h, :] for h in range(heads)],
                   axis=1)
    dscore = _softmax_backward(alpha, dalpha, d, N)
    dz = dscore * np.where(z > 0, 1.0, float(negative_slope))
    ds_src = np.zeros((N, heads))
    ds_dst = np.zeros((N, heads))
    np.add.at(ds_src, s, dz)
    np.add.at(ds_dst, d, dz)
    dXp = dXp + ds_src[:, :, None] * f["a_src"] + ds_dst[:, :, None] * f["a_dst"]
    Xp2 = dXp.reshape(N, heads * C)
    out = {"dX": Xp2 @ f["W"].T, "dW": f["X"].T @ Xp2,
           "da_src": np.einsum("nh,nhc->hc", ds_src, Xp),
           "da_dst": np.einsum("nh,nhc->hc", ds_dst, Xp)}
    if f["b"] is not None:
        out["db"] = G.sum(axis=0)
    if A is not None:
        out["da_e"] = np.einsum("eh,ehc->hc", dz, Ep)
        out["dW_e"] = A.T @ (dz[:, :, None] * f["a_e"]).reshape(-1, heads * C)
    return out


# --------------------------------------------------------------------------- GIN


def _gin_forward(X, edge_index, W1, b1, W2, b2, eps, G=None):
    arrays = dict(X=X, W1=W1, b1=b1, W2=W2, b2=b2, G=G)
    arrays = {k: (None if v is None else V.host_array(v, k)) for k, v in arrays.items()}
    shape = V.gin_layer_args(arrays["X"], V.host_array(edge_index, "edge_index"), arrays["W1"],
                             arrays["b1"], arrays["W2"], arrays["b2"], eps, arrays["G"])
    f = {k: _f64(v, k) for k, v in arrays.items()}
    src, dst = _ints(edge_index)
    s, d, _, _ = _sorted_edges(src, dst, None)
    A = _segment_matrix(np.ones(shape.E), s, d, shape.N)
    agg = (1.0 + float(eps)) * f["X"] + A @ f["X"]
    Z = agg @ f["W1"] + f["b1"]
    R = np.maximum(Z, 0.0)
    return f, A, agg, Z, R, R @ f["W2"] + f["b2"]


def gin_layer(X, edge_index, W1, b1, W2, b2, eps=0.0):
    """PyG ``GINConv`` forward with the code's MLP: ``H = relu(((1 + eps) X + A X) W1 + b1) W2 +
    b2``, ``(A X)_i = sum_{dst=i} X_src`` (input self-loops count as messages). W1 (F, hidden),
    W2 (hidden, F_out). Returns H (N, F_out) float64."""
    return _gin_forward(X, edge_index, W1, b1, W2, b2, eps)[-1]


def gin_layer_vjp(X, edge_index, W1, b1, W2, b2, G, eps=0.0):
    """VJP of :func:`gin_layer`: ``{"dX", "dW1", "db1", "dW2", "db2"}`` (module docstring)."""
    f, A, agg, Z, R, _ = _gin_forward(X, edge_index, W1, b1, W2, b2, eps, G)
    G = f["G"]
    dZ = (G @ f["W2"].T) * (Z > 0)
    dagg = dZ @ f["W1"].T
    return {"dX": (1.0 + float(eps)) * dagg + A.T @ dagg, "dW1": agg.T @ dZ,
            "db1": dZ.sum(axis=0), "dW2": R.T @ G, "db2": G.sum(axis=0)}
