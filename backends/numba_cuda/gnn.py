r"""Graph layers, relation fusion and focal loss of the multilayer GNN for predictive maintenance
(Kazim et al., arXiv 2507.07298; ``specs/gnn_pdm.md``) with Numba-CUDA kernels.

Same functions, signatures and results as :mod:`refimpl._gnn_layers` and
:mod:`refimpl._gnn_heads` (the float64 reference; layer semantics are PyG's ``GCNConv``,
``GATConv``, ``GINConv`` and ``utils.softmax``, arXiv 1609.02907 / 1710.10903 / 1810.00826; focal
loss arXiv 1708.02002); see the package docstring for array kinds and the stream. Float inputs
are float32 or float64, one dtype per call, and the results have that dtype (``gcn_norm``
without ``edge_weight`` has no float input and returns float64, as the reference). Integer
outputs are int64; ``edge_index`` / ``dst`` may have any integer dtype (widened once to int64
on the device by the ``cd_cast_*`` kernels when not int64). ``focal_bce`` returns a 0-d device
array. No bfloat16 / float16 (labels ``y`` of those dtypes raise TypeError: a backend limit).

Graph structure (``_Graph``; all on the device, no atomics)
    CSR order = edges stably sorted by (dst, src): keys ``dst N + src`` (``gnn_keys``) sorted by
    the stable LSD radix sort of the causal-discovery family
    (:func:`.causal_discrete.radix_sort`: ``cd_sort_hist`` / ``cd_scan`` / ``cd_sort_scatter``,
    8-bit digits, ``ceil(bits(N^2 - 1) / 8)`` passes; stable, so duplicate edges keep their
    input order); ``gnn_split`` recovers (src, dst); ``ptr`` by one binary search per node over
    the sorted destinations (``gnn_lower_bound``: the exclusive cumulative in-degrees without a
    histogram). Self-loops ("remaining" for GCN, "replace" for GAT): the N loop keys are
    appended to the input keys BEFORE the sort, so a node's input loops land, in input order,
    right before its appended loop; ``gnn_loop_keep`` + ``cd_scan`` (exclusive) +
    ``gnn_loop_compact`` drop the input loops and record each edge's ``origin`` (its input
    position; for a loop -1, or with "remaining" the position of the node's LAST input loop —
    PyG's assignment order). Edge values follow through ``gnn_gather_rows`` (fill value where
    origin is -1) and ``gnn_loop_mean`` (fill="mean": one thread per (node, column) averages the
    node's incoming non-loop values in CSR order, 0 if none). The transposed CSR (sorted by src,
    for every backward w.r.t. sources) is built once per call the same way: keys = CSR sources,
    a stable sort carrying the CSR positions (``tedge``), ``tptr`` by binary search,
    ``tidx = dst[tedge]`` (``gnn_gather_i``). Nothing is cached between calls.

Kernels (``gnn_*`` in :mod:`._kernels`; every matmul is the tiled ``pref_gemm`` of the
preference family)
    * segment sums: ``gnn_spmm``, one thread per (row, feature) looping over the row's edges in
      CSR order (coalesced over features; no warp intrinsics, so the simulator runs it):
      ``out[r, f] = scale sum_row w[q, f // C] X[idx, f % X.shape[1]] + selfc X[r, .] + b[f]``.
      GCN: ``H = M (X W) + b`` with ``M[dst, src] = norm``; GIN: ``agg = (1 + eps) X + A X``;
      backward: the same kernel on the transposed CSR (``dXW = M^T G``, ``dagg``-> dX with the
      self term, GAT's ``dXp = sum alpha Gh``) reading the CSR-ordered weights through
      ``tedge``.
    * GCN: ``gnn_deg`` (``deg_i = sum_row w``, ``dinv = deg^-1/2`` with inf -> 0),
      ``gnn_gcn_norm`` (``norm = dinv_src w dinv_dst``); VJP: ``dnorm_q = <G_dst, (XW)_src>``
      (``gnn_edge_dot``), ``gdeg_k = -1/2 dinv_k^3 [sum_{src=k} dnorm w dinv_dst + sum_{dst=k}
      dnorm dinv_src w]`` (``gnn_gcn_gdeg``: transposed CSR, then CSR), ``dw = dnorm dinv_src
      dinv_dst + gdeg_dst`` (``gnn_gcn_gw``), scattered to the input edges through ``origin``
      (``gnn_scatter_origin``: a removed duplicate loop gets 0).
    * GAT: ``Xp = X W``; ``s_src``, ``s_dst`` (``gnn_head_dot``); with edge attributes A (E', D)
      the (D, heads) matrix ``v[d, h] = sum_c W_e[d, hC + c] a_e[h, c]`` (``gnn_head_dot``) and
      ``s_edge = A v`` (pref_gemm) — never ``A W_e`` (E', heads C); ``gnn_gat_scores`` the
      LeakyReLU scores (E', heads); ``gnn_seg_softmax`` one thread per (row, head): online max /
      sum-exp over the row, then ``alpha = exp(s - m) / (sum + 1e-16)`` (E', heads), kept for
      the backward; ``gnn_gat_agg`` one thread per (row, output column): ``sum_row alpha
      Xp[src]`` (head mean for concat=False) + b — no E x heads x C message tensor anywhere.
      VJP: ``dalpha`` (``gnn_gat_dalpha``), ``gnn_seg_softmax_bwd`` per (row, head):
      ``dz = alpha (dalpha - sum_row alpha dalpha)`` times the LeakyReLU derivative (1 where
      the score > 0, else slope — equal to z > 0 for slope >= 0), ``ds_src`` / ``ds_dst``
      (``gnn_seg_sum`` on the transposed CSR / the CSR), ``dXp`` (``gnn_spmm`` transposed +
      ``gnn_gat_dxp_add``), ``dW = X^T dXp``, ``dX = dXp W^T``; ``da_src[h, c] = sum_n
      ds_src[n, h] Xp[n, hC + c]`` and ``da_dst``, ``M = A^T dz`` (D, heads) by split column
      reductions; ``dW_e = M a_e``, ``da_e = sum_d M W_e`` (``gnn_gat_edge_grads``).
    * GIN: ``Z = agg W1 + b1``, ``gnn_relu`` in place, ``H = R W2 + b2``; VJP ``dZ = (G W2^T)
      [R > 0]`` (``gnn_relu_bwd``), ``dagg = dZ W1^T``, ``dX = (1 + eps) dagg + A^T dagg``.
    * segment softmax (any edge order): destinations sorted by the same radix sort (the input
      positions carried), ``gnn_seg_softmax`` / ``gnn_seg_softmax_bwd`` write back at the input
      positions.
    * reductions over a long axis (``db``, ``da_*``, ``A^T dz``, ``dq``, ``dbeta``, the loss
      mean): ``gnn_colsum_part`` (fixed row chunks, one thread per (column, chunk)) and
      ``gnn_colsum_finish`` (chunk order) — deterministic for given shapes.
    * edge MLP: ``gnn_standardize``, pref_gemm + b1, ``gnn_edge_mlp_out`` (ReLU, the (Hd, 1)
      product, sigmoid, + 1e-8 fused, one thread per edge).
    * fusion: global ``gnn_softmax_vec`` + ``gnn_wsum``; concat R pref_gemm calls accumulating
      ``H_r W[rF:(r+1)F]``; semantic / node: R pref_gemm calls into the stacked (R N, A)
      pre-activations, ``gnn_att_scores`` (tanh in place + q), the mean over nodes by
      ``gnn_colsum_*`` / ``gnn_row_softmax``; VJP ``gnn_fuse_dh``, ``gnn_rowdot``,
      ``gnn_softmax_vec_bwd`` / ``gnn_row_softmax_bwd``, ``gnn_bcast``, ``gnn_att_bwd`` and
      pref_gemm for dW and ``dH_r += P_r W^T``.
    * focal loss: ``gnn_focal`` (terms and gradient per node, module docstring of
      :mod:`refimpl._gnn_heads`), the mean by ``gnn_colsum_*``.

Determinism: no atomics anywhere (``ATOMIC_PATHS`` is empty): every sum has a fixed order for a
given graph and shapes, so two runs are bitwise identical. Summation orders differ from the
reference's (scipy / ``np.add.at`` / BLAS): results agree to rounding (registry tolerances).
Load balance: one thread per (row, feature) walks the whole row — a hub node with a very large
in-degree serialises its row (no row splitting here; correctness is unaffected).

Host reads (each documented; counted by tests/test_backend_numba_gnn.py):

1. validation, ONE read per call: the validators' ``stats`` (layers: index min / max,
   non-finite counts and the min of the edge weights) or ``flags`` (heads: finite / >= 0 /
   binary / in [0, 1]) are computed on the device (``gnn_istats`` / ``gnn_fstats`` and their
   ``_finish`` kernels, block partials, no atomics) into one packed int64 buffer (float stats
   through a float view of it) and read with one copy. The number of input self-loops — which
   sets the size E' = E - loops + N of the edge list when loops are added (``add_self_loops``,
   ``gcn_norm`` / ``gcn_layer`` with loops, ``gat_layer`` with loops) — comes with the same
   read (``gnn_istats`` counts ``src == dst``). Arrays with no entries need no device work:
   a call whose requested arrays are all empty does no read at all.
2. ``fuse`` / ``fuse_vjp`` have no value checks and no host read.
"""

from __future__ import annotations

import numpy as np

from refimpl import _validate as V

from . import _kernels as K
from .causal_discrete import radix_sort
from .preference import _gemm

__all__ = [
    "ATOMIC_PATHS", "to_csr", "add_self_loops", "gcn_norm", "gcn_layer", "gcn_layer_vjp",
    "segment_softmax", "segment_softmax_vjp", "gat_layer", "gat_layer_vjp", "gin_layer",
    "gin_layer_vjp", "edge_mlp_weights", "fuse", "fuse_vjp", "focal_bce", "focal_bce_grad",
]

#: Paths of this backend that use atomics or a non-deterministic library call: none.
ATOMIC_PATHS: dict[str, str] = {}

IDT = "float64"          # the kernel variant launched for integer-only work
ROW_THREADS = 256        # threads per block of the one-thread-per-(row, feature) kernels

_CASTS = {"int8": "cd_cast_i8", "int16": "cd_cast_i16", "int32": "cd_cast_i32",
          "uint8": "cd_cast_u8", "uint16": "cd_cast_u16", "uint32": "cd_cast_u32",
          "uint64": "cd_cast_u64"}
_LABEL_CASTS = {"bool": "rv_cast_bool", "int8": "rv_cast_i8", "int16": "rv_cast_i16",
                "int32": "rv_cast_i32", "int64": "rv_cast_i64", "uint8": "rv_cast_u8",
                "uint16": "rv_cast_u16", "uint32": "rv_cast_u32", "uint64": "rv_cast_u64"}


# --------------------------------------------------------------------------- launch helpers


def _rows(dt: str, name: str, nrows: int, ncols: int, *args) -> None:
    """A one-thread-per-(row, column) kernel: threadIdx.x over the columns (coalesced),
    threadIdx.y over rows, row blocks on grid x (no 65535 limit on rows)."""
    if nrows <= 0 or ncols <= 0:
        return
    tx = K.threads(ncols, 64)
    if K.simulator():
        ty = max(1, min(int(nrows), K.SIM_MAX_THREADS // tx))
    else:
        ty = max(1, ROW_THREADS // tx)
    K.launch(name, dt, (K.ceil_div(nrows, ty), K.ceil_div(ncols, tx)), (tx, ty), 0, *args)


def _mm(dt: str, A, B, C, *, ta: int = 0, tb: int = 0, beta: float = 0.0, bias=None) -> None:
    """``C = op(A) op(B) (+ beta C) (+ bias)`` with pref_gemm; C's rows are split into slices
    of at most 65535 tiles (the grid-y limit of pref_gemm), e.g. the E x hidden edge MLP."""
    M = int(C.shape[0])
    step = 65535 * K.tile(dt)
    if M <= step or ta:
        _gemm(dt, A, B, C, ta=ta, tb=tb, beta=beta, bias=bias)
        return
    for r0 in range(0, M, step):
        r1 = min(M, r0 + step)
        _gemm(dt, A[r0:r1], B, C[r0:r1], tb=tb, beta=beta, bias=bias)


def _colsum(dt: str, A, out, *, mode: int = 0, B=None, C: int = 1, K2: int = 1,
            scale: float = 1.0) -> None:
    """Deterministic column reductions over A's rows into the 1-D ``out`` (gnn_colsum_part
    over fixed row chunks, then gnn_colsum_finish in chunk order): mode 0 ``sum_j A[j, k]``,
    mode 1 ``sum_j A[j, k] B[j, k // C]``, mode 2 ``sum_j A[j, k // K2] B[j, k % K2]``."""
    J = int(A.shape[0])
    kout = int(out.shape[0])
    if kout == 0:
        return
    if K.simulator():
        nsplit = max(1, min(2, K.ceil_div(J, 4)))
    else:
        nsplit = max(1, min(K.GNN_MAX_SPLITS, K.ceil_div(J, K.GNN_SPLIT_ROWS)))
    part = K.empty((nsplit, kout), dt)
    nt = K.threads(kout, K.EW_BLOCK)
    K.launch("gnn_colsum_part", dt, (K.ceil_div(kout, nt), nsplit), (nt,), 0, A,
             K.dummy(2, dt) if B is None else B, part, int(mode), int(C), int(K2))
    K.launch_per_item("gnn_colsum_finish", dt, kout, part, out, K.scalar(dt, scale))


def _col2(x):
    """A (n, 1) view of a 1-D device array (2-D arrays are returned unchanged)."""
    if len(x.shape) == 2:
        return x
    n = int(x.shape[0])
    if K.simulator():
        return x.reshape((n, 1)) if x.is_c_contiguous() else x[:, None]
    st = int(x.strides[0]) or int(x.dtype.itemsize)
    return K._view(x, (n, 1), (st, st))


def _row2(x):
    """A (1, n) view of a 1-D device array."""
    n = int(x.shape[0])
    if K.simulator():
        return x.reshape((1, n)) if x.is_c_contiguous() else x[None]
    st = int(x.strides[0]) or int(x.dtype.itemsize)
    return K._view(x, (1, n), (st * max(n, 1), st))


def _t2(x):
    """The transposed VIEW of a 2-D device array (numba's ``DeviceNDArray.T`` copies through a
    transpose kernel, which would lose writes into it)."""
    if K.simulator():
        return x.T
    st0, st1 = (int(v) for v in x.strides)
    return K._view(x, (int(x.shape[1]), int(x.shape[0])), (st1, st0))


def _dev(x):
    return None if x is None else K.device(K.unmeta(x))


def _meta(x):
    return None if x is None else K.meta(x)


def _bits(x: int) -> int:
    return max(int(x), 0).bit_length()


# --------------------------------------------------------------------------- value checks


class _Stats:
    """The validators' value-check hooks with ONE host read.

    ``stats(requests)`` (layers: "min" / "max" / "nonfinite") and ``flags(checks)`` (heads:
    "finite" / "nonneg" / "binary" / "unit") compute, for every distinct array, its statistics
    on the device into one packed int64 buffer — index arrays: (min, max, self-loop count) by
    ``gnn_istats``; float arrays: (non-finite, not >= 0, not 0/1, not in [0, 1]) counts and the
    (min, max) of the finite entries by ``gnn_fstats``, the floats through a float view of the
    same buffer — and read it with one copy. Integer index arrays are widened to int64 once
    (``cd_cast_*``, cached for the caller: :meth:`int64`); non-float labels are converted to
    ``label_dtype`` once (``rv_cast_*``). :meth:`loops` gives an index pair's self-loop count
    from the same read."""

    def __init__(self, label_dtype: str = "float64"):
        self.label_dtype = label_dtype
        self._int = {}
        self._flt = {}
        self._vals = {}
        self._keep = []                 # the device arrays behind the cached ids stay alive
        self._label_ids = ()

    # -- device conversions
    def int64(self, x):
        """``x`` (an integer index array, 1-D or (2, E)) as an int64 device array (cached)."""
        key = id(K.unmeta(x))
        got = self._int.get(key)
        if got is not None:
            return got
        a = _dev(x)
        self._keep.append(a)
        dt = V.dtype_name(a)
        if dt == "int64":
            out = a
        else:
            if dt not in _CASTS:
                raise TypeError(f"index arrays must have an integer dtype, got {dt}")
            two = a if len(a.shape) == 2 else _row2(a)
            out = K.empty(tuple(int(s) for s in two.shape), np.int64)
            K.launch_grid_stride(_CASTS[dt], IDT, int(out.shape[0]) * int(out.shape[1]), two, out)
            if len(a.shape) == 1:
                out = out[0]
        self._int[key] = out
        return out

    def floats(self, x):
        """``x`` as a 2-D float device view (labels of a bool / integer / other float dtype
        converted to ``label_dtype`` once; cached)."""
        key = id(K.unmeta(x))
        got = self._flt.get(key)
        if got is not None:
            return got
        a = _dev(x)
        self._keep.append(a)
        dt = V.dtype_name(a)
        if dt in ("float32", "float64") and (dt == self.label_dtype or key not in self._label_ids):
            out = a
        elif dt in ("float32", "float64") or dt in _LABEL_CASTS:
            out = K.empty((1, int(a.shape[0])), self.label_dtype)
            name = "rv_cast_f" if dt in ("float32", "float64") else _LABEL_CASTS[dt]
            K.launch_grid_stride(name, self.label_dtype, int(a.shape[0]), _row2(a), out)
            out = out[0]
        else:
            raise TypeError(f"labels of dtype {dt} are not supported by the numba_cuda backend "
                            f"(no kernels for them); pass bool, integer, float32 or float64 "
                            f"labels")
        self._flt[key] = out
        return out

    def mark_labels(self, *xs) -> None:
        """Declare label arrays (converted to ``label_dtype`` whatever their float dtype)."""
        self._label_ids = tuple(id(K.unmeta(x)) for x in xs if x is not None)

    # -- the one read
    def _collect(self, arrays) -> None:
        todo = []
        for x in arrays:
            key = id(K.unmeta(x))
            if key in self._vals or any(key == k for k, _ in todo):
                continue
            todo.append((key, x))
        if not todo:
            return
        nslots, plan = 0, []
        for key, x in todo:
            is_int = V.dtype_name(x) in V.GNN_INT_DTYPES and key not in self._label_ids
            size = int(np.prod([int(s) for s in x.shape]))
            plan.append((key, x, is_int, size, nslots))
            nslots += 3 if is_int else 6
        live = [p for p in plan if p[3] > 0]
        host = None
        if live:
            buf = K.empty((nslots,), np.int64)
            views = {}
            for key, x, is_int, size, off in live:
                if is_int:
                    a = self.int64(x)
                    src, dst = (a[0], a[1]) if len(a.shape) == 2 else (a, a)
                    n = int(src.shape[0])
                    nt, nb = self._geometry(n)
                    part = K.empty((nb, 3), np.int64)
                    K.launch("gnn_istats", IDT, (nb,), (nt,), 0, src, dst, part)
                    K.launch_per_item("gnn_istats_finish", IDT, 1, part, buf, np.int64(off))
                else:
                    a = self.floats(x)
                    a2 = _col2(a) if len(a.shape) == 1 else a
                    dt = V.dtype_name(a2)
                    if dt not in views:
                        views[dt] = buf.view(np.dtype(dt))
                    ratio = 8 // np.dtype(dt).itemsize
                    nt, nb = self._geometry(size)
                    ipart = K.empty((nb, 4), np.int64)
                    fpart = K.empty((nb, 2), dt)
                    K.launch("gnn_fstats", dt, (nb,), (nt,), 0, a2, ipart, fpart)
                    K.launch_per_item("gnn_fstats_finish", dt, 1, ipart, fpart, buf, views[dt],
                           np.int64(off), np.int64((off + 4) * ratio))
            host = buf.copy_to_host()                      # THE one host read of the call
        for key, x, is_int, size, off in plan:
            if is_int:
                if size == 0:
                    self._vals[key] = dict(min=np.inf, max=-np.inf, loops=0)
                else:
                    self._vals[key] = dict(min=float(host[off]), max=float(host[off + 1]),
                                           loops=int(host[off + 2]))
            else:
                if size == 0:
                    self._vals[key] = dict(nonfinite=0, neg=0, nonbinary=0, nonunit=0,
                                           min=np.inf, max=-np.inf)
                else:
                    dt = V.dtype_name(self.floats(x))
                    ratio = 8 // np.dtype(dt).itemsize
                    fl = host.view(np.dtype(dt))
                    self._vals[key] = dict(
                        nonfinite=int(host[off]), neg=int(host[off + 1]),
                        nonbinary=int(host[off + 2]), nonunit=int(host[off + 3]),
                        min=float(fl[(off + 4) * ratio]), max=float(fl[(off + 4) * ratio + 1]))

    @staticmethod
    def _geometry(n: int) -> tuple[int, int]:
        nt = K.pow2_floor(K.threads(n, K.GNN_RED))
        nb = max(1, min(K.ceil_div(n, nt), 2 if K.simulator() else K.GNN_STAT_BLOCKS))
        return nt, nb

    def stats(self, requests):
        self._collect([x for _, x in requests])
        out = []
        for kind, x in requests:
            v = self._vals[id(K.unmeta(x))]
            out.append(float(v["nonfinite"]) if kind == "nonfinite" else float(v[kind]))
        return tuple(out)

    def flags(self, checks):
        self._collect([x for _, x in checks])
        key = {"finite": "nonfinite", "nonneg": "neg", "binary": "nonbinary", "unit": "nonunit"}
        return tuple(self._vals[id(K.unmeta(x))][key[kind]] == 0 for kind, x in checks)

    def loops(self, x) -> int:
        """Self-loop count of the (2, E) index array ``x`` (from the validation read)."""
        key = id(K.unmeta(x))
        if key not in self._vals:
            self._collect([x])
        return int(self._vals[key]["loops"])


# --------------------------------------------------------------------------- graph structure


class _Graph:
    """The edge list a call uses, on the device, in CSR order (module docstring).

    ``ei`` (2, E') int64 (row 0 = srcs, row 1 = dsts), ``ptr`` (N + 1,), ``origin`` (E',) (input
    position of each edge's value; -1 for a filled loop), ``Ep`` = E'. ``loops``: None (the
    input edges), "remaining" or "replace" (``nloops`` = number of input self-loops, from the
    validation read)."""

    def __init__(self, ei64, N: int, E: int, loops=None, nloops: int = 0):
        self.N = N
        src, dst = ei64[0], ei64[1]
        total = E + (N if loops else 0)
        keys = K.empty((total,), np.int64)
        perm = K.empty((total,), np.int64)
        K.launch_grid_stride("gnn_keys", IDT, total, src, dst, np.int64(N), np.int64(E), np.int64(0), keys, perm)
        keys, perm = radix_sort(keys, perm, _bits(N * N - 1))
        if loops is None:
            self.Ep = E
            self.ei = K.empty((2, E), np.int64)
            K.launch_grid_stride("gnn_split", IDT, E, keys, np.int64(N), self.ei[0], self.ei[1])
            self.origin = perm
        else:
            self.Ep = E - int(nloops) + N
            self.ei = K.empty((2, self.Ep), np.int64)
            pos = K.empty((total,), np.int64)
            K.launch_grid_stride("gnn_loop_keep", IDT, total, keys, perm, np.int64(N), np.int64(E), pos)
            K.launch("cd_scan", IDT, (1,), (K.threads(total, K.CD_RED),), 0, pos, pos, 0)
            self.origin = K.empty((self.Ep,), np.int64)
            K.launch_grid_stride("gnn_loop_compact", IDT, total, keys, perm, pos, np.int64(N), np.int64(E),
                np.int64(loops == "remaining"), self.ei[0], self.ei[1], self.origin)
        self.srcs, self.dsts = self.ei[0], self.ei[1]
        self.ptr = K.empty((N + 1,), np.int64)
        K.launch_grid_stride("gnn_lower_bound", IDT, N + 1, self.dsts, self.ptr)
        self._t = None

    def transpose(self):
        """``(tptr, tedge, tidx)``: the CSR sorted by source (stable in CSR position; built once
        per call): row j = the edges with src j, ``tedge`` their CSR positions, ``tidx`` their
        destinations."""
        if self._t is None:
            N, Ep = self.N, self.Ep
            keys = K.empty((Ep,), np.int64)
            perm = K.empty((Ep,), np.int64)
            K.launch_grid_stride("gnn_keys", IDT, Ep, self.srcs, self.srcs, np.int64(N), np.int64(Ep),
                np.int64(1), keys, perm)
            keys, tedge = radix_sort(keys, perm, _bits(N - 1))
            tptr = K.empty((N + 1,), np.int64)
            K.launch_grid_stride("gnn_lower_bound", IDT, N + 1, keys, tptr)
            tidx = K.empty((Ep,), np.int64)
            K.launch_grid_stride("gnn_gather_i", IDT, Ep, tedge, self.dsts, tidx)
            self._t = (tptr, tedge, tidx)
        return self._t

    def values(self, dt: str, V2, fill, mean: bool):
        """The values (E, D) of the input edges carried to the edges used (E', D): gathered
        through ``origin``, ``fill`` where origin is -1, or the loop mean with ``mean``."""
        D = int(V2.shape[1])
        out = K.empty((self.Ep, D), dt)
        K.launch_grid_stride("gnn_gather_rows", dt, self.Ep * D, V2, self.origin,
            K.scalar(dt, 0.0 if mean else fill), out)
        if mean:
            _rows(dt, "gnn_loop_mean", self.N, D, self.ptr, self.srcs, self.origin, V2, out)
        return out


_ID: list = []


def _IDUMMY():
    """A 1-element int64 array standing in for an unused index argument (never read)."""
    if not _ID:
        _ID.append(K.empty((1,), np.int64))
    return _ID[0]


def _spmm(dt, ptr, idx, X, out, *, w=None, wperm=None, bias=None, selfc=0.0, scale=1.0, C=1):
    _rows(dt, "gnn_spmm", int(out.shape[0]), int(out.shape[1]), ptr, idx,
          K.dummy(2, dt) if w is None else w, _IDUMMY() if wperm is None else wperm, X,
          K.dummy(1, dt) if bias is None else bias, out, K.scalar(dt, selfc), K.scalar(dt, scale),
          int(C), int(w is not None), int(wperm is not None), int(bias is not None))


# --------------------------------------------------------------------------- structure ops


def _edges(edge_index, n_nodes, check, *args, **kw):
    """Common start of the structure ops: native check, validation (one read), int64 edges."""
    K.native(edge_index=edge_index)
    st = _Stats()
    res = check(_meta(edge_index), n_nodes, *args, stats=st.stats, **kw)
    return st, res


def to_csr(edge_index, n_nodes):
    """CSR view of a graph: the edges stably sorted by (dst, src) (module docstring).

    Returns ``(ptr (N+1,), src_sorted (E,), perm (E,))`` int64 device arrays. One host read (the
    validation)."""
    st, (N, E) = _edges(edge_index, n_nodes, V.gnn_to_csr_args)
    g = _Graph(st.int64(edge_index), N, E)
    like = edge_index
    return K.wrap(g.ptr, like), K.wrap(g.srcs, like), K.wrap(g.origin, like)


def add_self_loops(edge_index, n_nodes, edge_weight=None, fill=1.0, mode="remaining"):
    """Self-loops as PyG ("remaining": a node's existing loop weight — the last one in input
    order — is kept, the others filled; "replace": every input loop dropped, all filled;
    ``fill="mean"``: the node's mean incoming non-loop value, 0 if none). ``edge_weight`` None,
    (E,) or (E, D) of either float dtype. Returns ``(edge_index (2, E') int64, edge_weight or
    None)`` in CSR order. One host read (validation + the loop count)."""
    K.native(edge_index=edge_index, edge_weight=edge_weight)
    st = _Stats()
    N, E, fill, mode = V.gnn_self_loops_args(_meta(edge_index), n_nodes, _meta(edge_weight),
                                             fill, mode, stats=st.stats)
    g = _Graph(st.int64(edge_index), N, E, loops=mode, nloops=st.loops(edge_index))
    w_out = None
    if edge_weight is not None:
        w = K.device(edge_weight)
        dt = V.dtype_name(w)
        out = g.values(dt, _col2(w), fill, fill == "mean")
        w_out = K.wrap(out if len(w.shape) == 2 else out.reshape((g.Ep,)), edge_weight)
    return K.wrap(g.ei, edge_index), w_out


def _gcn_weights(dt, g: _Graph, ew, E: int, improved: bool, loops: bool):
    """The weights of the GCN edges used (E', 1) — the input weights carried through
    ``origin``, the filled loops 1 (2 if improved) — or None when they are all ones."""
    fill = 2.0 if improved else 1.0
    if ew is None:
        if not (loops and improved):
            return None
        ones = K.empty((max(E, 1), 1), dt)          # the implicit unit weights of the input
        K.fill(ones, 1.0)
        return g.values(dt, ones, fill, False)
    return g.values(dt, _col2(K.device(ew)), fill, False)


def _gcn_norm_dev(dt, g: _Graph, w, normalize: bool):
    """``(dinv or None, norm (E',))`` of the GCN edges used."""
    has_w = int(w is not None)
    w2 = w if w is not None else K.dummy(2, dt)
    dinv = None
    if normalize:
        dinv = K.empty((g.N,), dt)
        K.launch_grid_stride("gnn_deg", dt, g.N, g.ptr, w2, has_w, dinv)
    norm = K.empty((g.Ep,), dt)
    K.launch_grid_stride("gnn_gcn_norm", dt, g.Ep, g.srcs, g.dsts, w2, has_w,
        dinv if dinv is not None else K.dummy(1, dt), int(normalize), norm)
    return dinv, norm


def gcn_norm(edge_index, n_nodes, edge_weight=None, improved=False, add_loops=True):
    """GCN's symmetric normalisation (PyG ``gcn_norm``): "remaining" self-loops with fill 1 (2 if
    ``improved``) when ``add_loops``, ``deg_i = sum_{dst=i} w``, ``w <- deg_src^-1/2 w
    deg_dst^-1/2`` (0 for zero degree). Returns ``(edge_index (2, E') int64, w (E',))`` in CSR
    order; w has edge_weight's dtype (float64 without edge_weight). One host read."""
    K.native(edge_index=edge_index, edge_weight=edge_weight)
    st = _Stats()
    N, E = V.gnn_norm_args(_meta(edge_index), n_nodes, _meta(edge_weight), improved, add_loops,
                           stats=st.stats)
    dt = "float64" if edge_weight is None else V.dtype_name(edge_weight)
    loops = bool(add_loops)
    g = _Graph(st.int64(edge_index), N, E, loops="remaining" if loops else None,
               nloops=st.loops(edge_index) if loops else 0)
    w = _gcn_weights(dt, g, edge_weight, E, bool(improved), loops)
    _, norm = _gcn_norm_dev(dt, g, w, True)
    return K.wrap(g.ei, edge_index), K.wrap(norm, edge_index)


# --------------------------------------------------------------------------- GCN


class _Gcn:
    """A validated GCN call on the device: the edges used, their weights and norm, X W."""

    def __init__(self, X, edge_index, W, b, edge_weight, improved, add_loops, normalize, G=None):
        K.native(X=X, edge_index=edge_index, W=W, G=G, b=b, edge_weight=edge_weight)
        st = _Stats()
        sh = V.gcn_layer_args(_meta(X), _meta(edge_index), _meta(W), _meta(b),
                              _meta(edge_weight), improved, add_loops, normalize, _meta(G),
                              stats=st.stats)
        self.sh, dt = sh, sh.dtype
        self.normalize = bool(normalize)
        loops = self.normalize and bool(add_loops)
        self.g = _Graph(st.int64(edge_index), sh.N, sh.E, loops="remaining" if loops else None,
                        nloops=st.loops(edge_index) if loops else 0)
        self.X, self.W, self.b, self.G = (_dev(a) for a in (X, W, b, G))
        self.w = _gcn_weights(dt, self.g, edge_weight, sh.E, bool(improved), loops)
        self.dinv, self.norm = _gcn_norm_dev(dt, self.g, self.w, self.normalize)
        self.XW = K.empty((sh.N, sh.F_out), dt)
        _mm(dt, self.X, self.W, self.XW)


def gcn_layer(X, edge_index, W, b=None, edge_weight=None, improved=False, add_loops=True,
              normalize=True):
    """PyG ``GCNConv`` forward ``H = M (X W) + b``, ``M[dst, src] = norm`` (module docstring:
    pref_gemm, then ``gnn_spmm`` over the CSR). Returns H (N, F_out). One host read."""
    c = _Gcn(X, edge_index, W, b, edge_weight, improved, add_loops, normalize)
    sh, g = c.sh, c.g
    H = K.empty((sh.N, sh.F_out), sh.dtype)
    _spmm(sh.dtype, g.ptr, g.srcs, c.XW, H, w=_col2(c.norm), bias=c.b, C=sh.F_out)
    return K.wrap(H, X)


def gcn_layer_vjp(X, edge_index, W, G, b=None, edge_weight=None, improved=False, add_loops=True,
                  normalize=True):
    """VJP of :func:`gcn_layer`: ``{"dX", "dW"}`` plus ``"db"`` (b given) and
    ``"dedge_weight"`` (E,) (edge_weight given; through the norm AND the degrees). ``dXW = M^T
    G`` on the transposed CSR; module docstring. One host read."""
    c = _Gcn(X, edge_index, W, b, edge_weight, improved, add_loops, normalize, G)
    sh, g, dt = c.sh, c.g, c.sh.dtype
    tptr, tedge, tidx = g.transpose()
    dXW = K.empty((sh.N, sh.F_out), dt)
    _spmm(dt, tptr, tidx, c.G, dXW, w=_col2(c.norm), wperm=tedge, C=sh.F_out)
    dX = K.empty((sh.N, sh.F), dt)
    _mm(dt, dXW, c.W, dX, tb=1)
    dW = K.empty((sh.F, sh.F_out), dt)
    _mm(dt, c.X, dXW, dW, ta=1)
    out = {"dX": dX, "dW": dW}
    if b is not None:
        db = K.empty((sh.F_out,), dt)
        _colsum(dt, c.G, db)
        out["db"] = db
    if edge_weight is not None:
        dnorm = K.empty((g.Ep,), dt)
        K.launch_grid_stride("gnn_edge_dot", dt, g.Ep, g.srcs, g.dsts, c.G, c.XW, dnorm)
        gdeg = c.dinv
        if c.normalize:
            gdeg = K.empty((sh.N,), dt)
            K.launch_grid_stride("gnn_gcn_gdeg", dt, sh.N, g.ptr, g.srcs, tptr, tedge, g.dsts,
                c.w if c.w is not None else K.dummy(2, dt), int(c.w is not None), c.dinv,
                dnorm, gdeg)
        gw = K.empty((g.Ep,), dt)
        K.launch_grid_stride("gnn_gcn_gw", dt, g.Ep, g.srcs, g.dsts, dnorm,
            c.dinv if c.dinv is not None else K.dummy(1, dt),
            gdeg if gdeg is not None else K.dummy(1, dt), int(c.normalize), gw)
        dew = K.zeros((sh.E,), dt)
        K.launch_grid_stride("gnn_scatter_origin", dt, g.Ep, g.origin, gw, dew)
        out["dedge_weight"] = dew
    return {k: K.wrap(v, X) for k, v in out.items()}


# --------------------------------------------------------------------------- segment softmax


class _Seg:
    """A validated segment-softmax call: destinations sorted on the device (input positions
    carried), ``ptr`` by binary search."""

    def __init__(self, scores, dst, n_nodes, G=None):
        K.native(scores=scores, dst=dst, G=G)
        st = _Stats()
        N, E, dt = V.segment_softmax_args(_meta(scores), _meta(dst), n_nodes, _meta(G),
                                          stats=st.stats)
        self.N, self.E, self.dt = N, E, dt
        d64 = st.int64(dst)
        keys = K.empty((E,), np.int64)
        perm = K.empty((E,), np.int64)
        K.launch_grid_stride("gnn_keys", IDT, E, d64, d64, np.int64(N), np.int64(E), np.int64(1), keys, perm)
        keys, self.perm = radix_sort(keys, perm, _bits(N - 1))
        self.ptr = K.empty((N + 1,), np.int64)
        K.launch_grid_stride("gnn_lower_bound", IDT, N + 1, keys, self.ptr)
        self.S = _col2(K.device(scores))
        self.G = None if G is None else _col2(K.device(G))
        self.one_d = len(scores.shape) == 1


def segment_softmax(scores, dst, n_nodes):
    """PyG ``utils.softmax`` per destination and head: ``exp(s - max) / (sum exp(s - max) +
    1e-16)``, input order kept (``gnn_seg_softmax``). One host read."""
    s = _Seg(scores, dst, n_nodes)
    H = int(s.S.shape[1])
    alpha = K.empty((s.E, H), s.dt)
    K.launch_grid_stride("gnn_seg_softmax", s.dt, s.N * H, s.ptr, s.perm, 1, s.S, alpha)
    return K.wrap(alpha.reshape((s.E,)) if s.one_d else alpha, scores)


def segment_softmax_vjp(scores, dst, n_nodes, G):
    """``{"dscores": alpha (G - sum_row alpha G)}`` (alpha recomputed; ``gnn_seg_softmax_bwd``).
    One host read."""
    s = _Seg(scores, dst, n_nodes, G)
    H = int(s.S.shape[1])
    ds = K.empty((s.E, H), s.dt)
    K.launch_grid_stride("gnn_seg_softmax_bwd", s.dt, s.N * H, s.ptr, s.perm, 1, s.S, 0, s.G, K.dummy(2, s.dt),
        K.scalar(s.dt, 0.0), 0, ds)
    return {"dscores": K.wrap(ds.reshape((s.E,)) if s.one_d else ds, scores)}


# --------------------------------------------------------------------------- GAT


class _Gat:
    """A validated GAT forward on the device (module docstring)."""

    def __init__(self, X, edge_index, W, a_src, a_dst, b, edge_attr, W_e, a_e, negative_slope,
                 concat, add_loops, fill, G=None):
        K.native(X=X, edge_index=edge_index, W=W, a_src=a_src, a_dst=a_dst, G=G, b=b,
                 edge_attr=edge_attr, W_e=W_e, a_e=a_e)
        st = _Stats()
        sh = V.gat_layer_args(_meta(X), _meta(edge_index), _meta(W), _meta(a_src), _meta(a_dst),
                              _meta(b), _meta(edge_attr), _meta(W_e), _meta(a_e),
                              negative_slope, concat, add_loops, fill, _meta(G), stats=st.stats)
        self.sh, dt = sh, sh.dtype
        N, H, C = sh.N, sh.heads, sh.C
        self.concat = bool(concat)
        self.slope = K.scalar(dt, float(negative_slope))
        fill = V.gnn_fill(fill)
        loops = bool(add_loops)
        g = self.g = _Graph(st.int64(edge_index), N, sh.E, loops="replace" if loops else None,
                            nloops=st.loops(edge_index) if loops else 0)
        self.X, self.W, self.a_src, self.a_dst, self.b, self.G = (
            _dev(a) for a in (X, W, a_src, a_dst, b, G))
        self.Xp = K.empty((N, H * C), dt)
        _mm(dt, self.X, self.W, self.Xp)
        ssrc, sdst = K.empty((N, H), dt), K.empty((N, H), dt)
        K.launch_grid_stride("gnn_head_dot", dt, N * H, self.Xp, self.a_src, ssrc)
        K.launch_grid_stride("gnn_head_dot", dt, N * H, self.Xp, self.a_dst, sdst)
        self.A = sedge = None
        if edge_attr is not None:
            self.W_e, self.a_e = _dev(W_e), _dev(a_e)
            self.A = g.values(dt, K.device(edge_attr), 0.0 if fill == "mean" else fill,
                              loops and fill == "mean")
            v = K.empty((sh.D, H), dt)
            K.launch_grid_stride("gnn_head_dot", dt, sh.D * H, self.W_e, self.a_e, v)
            sedge = K.empty((g.Ep, H), dt)
            _mm(dt, self.A, v, sedge)
        self.raw = K.empty((g.Ep, H), dt)
        K.launch_grid_stride("gnn_gat_scores", dt, g.Ep * H, g.srcs, g.dsts, ssrc, sdst,
            K.dummy(2, dt) if sedge is None else sedge, int(sedge is not None), self.slope,
            self.raw)
        self.alpha = K.empty((g.Ep, H), dt)
        K.launch_grid_stride("gnn_seg_softmax", dt, N * H, g.ptr, _IDUMMY(), 0, self.raw, self.alpha)
        self.inv_h = K.scalar(dt, 1.0 / H)


def gat_layer(X, edge_index, W, a_src, a_dst, b=None, edge_attr=None, W_e=None, a_e=None,
              negative_slope=0.2, concat=True, add_loops=True, fill="mean"):
    """PyG ``GATConv`` forward (v1, module docstring): returns ``(H, alpha)``, H (N, heads*C) or
    (N, C) (head mean), alpha (E', heads) in CSR order of the edges used. One host read."""
    c = _Gat(X, edge_index, W, a_src, a_dst, b, edge_attr, W_e, a_e, negative_slope, concat,
             add_loops, fill)
    sh, g, dt = c.sh, c.g, c.sh.dtype
    H = K.empty((sh.N, sh.F_out), dt)
    _rows(dt, "gnn_gat_agg", sh.N, sh.F_out, g.ptr, g.srcs, c.alpha, c.Xp,
          K.dummy(1, dt) if c.b is None else c.b, int(c.b is not None), int(c.concat), c.inv_h,
          H)
    return K.wrap(H, X), K.wrap(c.alpha, X)


def gat_layer_vjp(X, edge_index, W, a_src, a_dst, G, b=None, edge_attr=None, W_e=None, a_e=None,
                  negative_slope=0.2, concat=True, add_loops=True, fill="mean"):
    """VJP of H of :func:`gat_layer`: ``{"dX", "dW", "da_src", "da_dst"}`` plus ``"db"`` and
    ``"da_e", "dW_e"`` (module docstring). One host read."""
    c = _Gat(X, edge_index, W, a_src, a_dst, b, edge_attr, W_e, a_e, negative_slope, concat,
             add_loops, fill, G)
    sh, g, dt = c.sh, c.g, c.sh.dtype
    N, H, C = sh.N, sh.heads, sh.C
    dz = K.empty((g.Ep, H), dt)
    K.launch_grid_stride("gnn_gat_dalpha", dt, g.Ep * H, g.srcs, g.dsts, c.Xp, c.G, int(c.concat), c.inv_h, dz)
    K.launch_grid_stride("gnn_seg_softmax_bwd", dt, N * H, g.ptr, _IDUMMY(), 0, c.alpha, 1, dz, c.raw, c.slope,
        1, dz)
    tptr, tedge, tidx = g.transpose()
    ds_src, ds_dst = K.empty((N, H), dt), K.empty((N, H), dt)
    K.launch_grid_stride("gnn_seg_sum", dt, N * H, tptr, tedge, 1, dz, ds_src)
    K.launch_grid_stride("gnn_seg_sum", dt, N * H, g.ptr, _IDUMMY(), 0, dz, ds_dst)
    dXp = K.empty((N, H * C), dt)
    _spmm(dt, tptr, tidx, c.G, dXp, w=c.alpha, wperm=tedge, scale=1.0 if c.concat else 1.0 / H,
          C=C)
    K.launch_grid_stride("gnn_gat_dxp_add", dt, N * H * C, dXp, ds_src, ds_dst, c.a_src, c.a_dst)
    dX = K.empty((N, sh.F), dt)
    _mm(dt, dXp, c.W, dX, tb=1)
    dW = K.empty((sh.F, H * C), dt)
    _mm(dt, c.X, dXp, dW, ta=1)
    da_src, da_dst = K.empty((H, C), dt), K.empty((H, C), dt)
    _colsum(dt, c.Xp, da_src.reshape((H * C,)), mode=1, B=ds_src, C=C)
    _colsum(dt, c.Xp, da_dst.reshape((H * C,)), mode=1, B=ds_dst, C=C)
    out = {"dX": dX, "dW": dW, "da_src": da_src, "da_dst": da_dst}
    if b is not None:
        db = K.empty((sh.F_out,), dt)
        _colsum(dt, c.G, db)
        out["db"] = db
    if c.A is not None:
        M = K.empty((sh.D, H), dt)
        _colsum(dt, c.A, M.reshape((sh.D * H,)), mode=2, B=dz, K2=H)
        dW_e, da_e = K.empty((sh.D, H * C), dt), K.empty((H, C), dt)
        K.launch_grid_stride("gnn_gat_edge_grads", dt, sh.D * H * C + H * C, M, c.W_e, c.a_e, dW_e, da_e)
        out["da_e"] = da_e
        out["dW_e"] = dW_e
    return {k: K.wrap(v, X) for k, v in out.items()}


# --------------------------------------------------------------------------- GIN


class _Gin:
    """A validated GIN forward on the device: agg, R = relu(agg W1 + b1), H."""

    def __init__(self, X, edge_index, W1, b1, W2, b2, eps, G=None):
        K.native(X=X, edge_index=edge_index, W1=W1, b1=b1, W2=W2, b2=b2, G=G)
        st = _Stats()
        sh = V.gin_layer_args(_meta(X), _meta(edge_index), _meta(W1), _meta(b1), _meta(W2),
                              _meta(b2), eps, _meta(G), stats=st.stats)
        self.sh, dt = sh, sh.dtype
        self.selfc = 1.0 + float(eps)
        g = self.g = _Graph(st.int64(edge_index), sh.N, sh.E)
        self.X, self.W1, self.b1, self.W2, self.b2, self.G = (
            _dev(a) for a in (X, W1, b1, W2, b2, G))
        self.agg = K.empty((sh.N, sh.F), dt)
        _spmm(dt, g.ptr, g.srcs, self.X, self.agg, selfc=self.selfc)
        self.R = K.empty((sh.N, sh.hidden), dt)
        _mm(dt, self.agg, self.W1, self.R, bias=self.b1)
        K.launch_grid_stride("gnn_relu", dt, sh.N * sh.hidden, self.R)


def gin_layer(X, edge_index, W1, b1, W2, b2, eps=0.0):
    """PyG ``GINConv`` with the code's MLP: ``H = relu(((1 + eps) X + A X) W1 + b1) W2 + b2``
    (input self-loops count as messages). One host read."""
    c = _Gin(X, edge_index, W1, b1, W2, b2, eps)
    sh = c.sh
    H = K.empty((sh.N, sh.F_out), sh.dtype)
    _mm(sh.dtype, c.R, c.W2, H, bias=c.b2)
    return K.wrap(H, X)


def gin_layer_vjp(X, edge_index, W1, b1, W2, b2, G, eps=0.0):
    """VJP of :func:`gin_layer`: ``{"dX", "dW1", "db1", "dW2", "db2"}`` (module docstring;
    ``dX = (1 + eps) dagg + A^T dagg`` on the transposed CSR). One host read."""
    c = _Gin(X, edge_index, W1, b1, W2, b2, eps, G)
    sh, g, dt = c.sh, c.g, c.sh.dtype
    db2 = K.empty((sh.F_out,), dt)
    _colsum(dt, c.G, db2)
    dW2 = K.empty((sh.hidden, sh.F_out), dt)
    _mm(dt, c.R, c.G, dW2, ta=1)
    dZ = K.empty((sh.N, sh.hidden), dt)
    _mm(dt, c.G, c.W2, dZ, tb=1)
    K.launch_grid_stride("gnn_relu_bwd", dt, sh.N * sh.hidden, dZ, c.R)
    db1 = K.empty((sh.hidden,), dt)
    _colsum(dt, dZ, db1)
    dW1 = K.empty((sh.F, sh.hidden), dt)
    _mm(dt, c.agg, dZ, dW1, ta=1)
    dagg = K.empty((sh.N, sh.F), dt)
    _mm(dt, dZ, c.W1, dagg, tb=1)
    tptr, _, tidx = g.transpose()
    dX = K.empty((sh.N, sh.F), dt)
    _spmm(dt, tptr, tidx, dagg, dX, selfc=c.selfc)
    out = {"dX": dX, "dW1": dW1, "db1": db1, "dW2": dW2, "db2": db2}
    return {k: K.wrap(v, X) for k, v in out.items()}


# --------------------------------------------------------------------------- edge MLP


def edge_mlp_weights(edge_attr, W1, b1, W2, b2, mean=None, std=None):
    """``WeightedGCNConv``'s edge weights ``sigmoid(relu(z W1 + b1) W2 + b2) + 1e-8`` (E,), z =
    ``(edge_attr - mean) / (std + 1e-8)`` when mean/std are given (``gnn_standardize``,
    pref_gemm + b1, ``gnn_edge_mlp_out``). One host read (the value checks)."""
    K.native(edge_attr=edge_attr, W1=W1, b1=b1, W2=W2, b2=b2, mean=mean, std=std)
    st = _Stats()
    E, D, Hd = V.edge_mlp_args(_meta(edge_attr), _meta(W1), _meta(b1), _meta(W2), _meta(b2),
                               _meta(mean), _meta(std), flags=st.flags)
    dt = V.dtype_name(edge_attr)
    Z = ea = K.device(edge_attr)
    if mean is not None:
        Z = K.empty((E, D), dt)
        K.launch_grid_stride("gnn_standardize", dt, E * D, ea, _dev(mean), _dev(std), Z)
    Z1 = K.empty((E, Hd), dt)
    _mm(dt, Z, _dev(W1), Z1, bias=_dev(b1))
    out = K.empty((E,), dt)
    K.launch_grid_stride("gnn_edge_mlp_out", dt, E, Z1, _dev(W2), _dev(b2), out)
    return K.wrap(out, edge_attr)


# --------------------------------------------------------------------------- fusion


def _fuse_start(H_stack, mode, params, G=None):
    K.native(H_stack=H_stack, G=G)
    mp = params
    if isinstance(params, dict):
        K.native(**{f"params['{k}']": v for k, v in params.items()})
        mp = {k: _meta(v) for k, v in params.items()}
    sh = V.fuse_args(_meta(H_stack), mode, mp, _meta(G))
    P = None if params is None else {k: _dev(v) for k, v in params.items()}
    return sh, K.device(H_stack), P


def _beta_global(dt, R, P):
    w = P["w"] if P is not None else None
    if w is None:
        w = K.empty((R,), dt)
        K.fill(w, 1.0)                                    # the code's init: w = ones
    beta = K.empty((R,), dt)
    K.launch_per_item("gnn_softmax_vec", dt, 1, w, beta)
    return beta


def _attention(dt, sh, Hs, P):
    """Stacked ``u = tanh(H_r W + b)`` (R N, A) and the scores ``S[r N + i] = q . u``."""
    R, N, A = sh.R, sh.N, sh.A
    T = K.empty((R * N, A), dt)
    for r in range(R):
        _mm(dt, Hs[r], P["W"], T[r * N:(r + 1) * N], bias=P["b"])
    S = K.empty((R * N,), dt)
    K.launch_grid_stride("gnn_att_scores", dt, R * N, T, P["q"], S)
    return T, S


def _fuse_forward(dt, sh, Hs, P):
    """``(H, beta, beta as 2-D for gnn_wsum / gnn_fuse_dh, per_node, T)``."""
    R, N, F = sh.R, sh.N, sh.F
    if sh.mode == "concat":
        H = K.empty((N, sh.F_out), dt)
        for r in range(R):
            _mm(dt, Hs[r], P["W"][r * F:(r + 1) * F], H, beta=0.0 if r == 0 else 1.0,
                bias=P["b"] if r == 0 else None)
        return H, None, None, 0, None
    T = None
    if sh.mode == "global":
        beta = _beta_global(dt, R, P)
        b2, per_node = beta.reshape((1, R)), 0
    else:
        T, S = _attention(dt, sh, Hs, P)
        ST = _t2(S.reshape((R, N)))                          # (N, R) view
        if sh.mode == "semantic":
            s = K.empty((R,), dt)
            _colsum(dt, ST, s, scale=1.0 / N)
            beta = K.empty((R,), dt)
            K.launch_per_item("gnn_softmax_vec", dt, 1, s, beta)
            b2, per_node = beta.reshape((1, R)), 0
        else:
            beta = K.empty((N, R), dt)
            K.launch_grid_stride("gnn_row_softmax", dt, N, ST, beta)
            b2, per_node = beta, 1
    H = K.empty((N, F), dt)
    K.launch_grid_stride("gnn_wsum", dt, N * F, Hs, b2, per_node, H)
    return H, beta, b2, per_node, T


def fuse(H_stack, mode="global", params=None):
    """Relation fusion (module docstring of :mod:`refimpl._gnn_heads`): ``(H, beta)`` with beta
    (R,) for global / semantic, (N, R) for node, None for concat. No host read."""
    sh, Hs, P = _fuse_start(H_stack, mode, params)
    H, beta, _, _, _ = _fuse_forward(V.dtype_name(H_stack), sh, Hs, P)
    return K.wrap(H, H_stack), (None if beta is None else K.wrap(beta, H_stack))


def fuse_vjp(H_stack, G, mode="global", params=None):
    """Gradient of ``<G, H>``: ``{"dH_stack", "d<key>" for each key of params}`` (global with
    params None: dH_stack only). No host read."""
    sh, Hs, P = _fuse_start(H_stack, mode, params, G)
    dt = V.dtype_name(H_stack)
    R, N, F = sh.R, sh.N, sh.F
    Gd = K.device(G)
    dHs = K.empty((R, N, F), dt)
    if sh.mode == "concat":
        W = P["W"]
        dW = K.empty((R * F, sh.F_out), dt)
        for r in range(R):
            _mm(dt, Gd, W[r * F:(r + 1) * F], dHs[r], tb=1)
            _mm(dt, Hs[r], Gd, dW[r * F:(r + 1) * F], ta=1)
        db = K.empty((sh.F_out,), dt)
        _colsum(dt, Gd, db)
        out = {"dH_stack": dHs, "dW": dW, "db": db}
        return {k: K.wrap(v, H_stack) for k, v in out.items()}
    _, beta, b2, per_node, T = _fuse_forward(dt, sh, Hs, P)
    K.launch_grid_stride("gnn_fuse_dh", dt, R * N * F, b2, per_node, Gd, dHs)
    if sh.mode == "global" and P is None:
        return {"dH_stack": K.wrap(dHs, H_stack)}
    Pd = K.empty((N, R), dt)
    K.launch_grid_stride("gnn_rowdot", dt, N * R, Hs, Gd, Pd)
    if sh.mode in ("global", "semantic"):
        dbeta = K.empty((R,), dt)
        _colsum(dt, Pd, dbeta)
        ds = K.empty((R,), dt)
        K.launch_per_item("gnn_softmax_vec_bwd", dt, 1, beta, dbeta, ds)
        if sh.mode == "global":
            return {"dH_stack": K.wrap(dHs, H_stack), "dw": K.wrap(ds, H_stack)}
        dS = K.empty((R, N), dt)
        K.launch_grid_stride("gnn_bcast", dt, R * N, ds, K.scalar(dt, 1.0 / N), dS)
    else:
        dS = K.empty((R, N), dt)
        K.launch_grid_stride("gnn_row_softmax_bwd", dt, N, beta, Pd, _t2(dS))
    A = sh.A
    dSf = dS.reshape((R * N,))
    dq = K.empty((A,), dt)
    _colsum(dt, T, dq, mode=1, B=_col2(dSf), C=A)
    K.launch_grid_stride("gnn_att_bwd", dt, R * N * A, T, dSf, P["q"])        # T <- dZ
    db = K.empty((A,), dt)
    _colsum(dt, T, db)
    dW = K.empty((F, A), dt)
    for r in range(R):
        Tr = T[r * N:(r + 1) * N]
        _mm(dt, Hs[r], Tr, dW, ta=1, beta=0.0 if r == 0 else 1.0)
        _mm(dt, Tr, P["W"], dHs[r], tb=1, beta=1.0)
    out = {"dH_stack": dHs, "dW": dW, "db": db, "dq": dq}
    return {k: K.wrap(v, H_stack) for k, v in out.items()}


# --------------------------------------------------------------------------- focal loss


def _focal(outputs, y, alpha, gamma, variant, grad: bool):
    K.native(outputs=outputs, y=y)
    dt = V.dtype_name(outputs) if V.dtype_name(outputs) in ("float32", "float64") else "float64"
    st = _Stats(label_dtype=dt)
    st.mark_labels(y)
    N, alpha, gamma, variant = V.focal_args(_meta(outputs), _meta(y), alpha, gamma, variant,
                                            flags=st.flags)
    z = K.device(outputs)
    yt = st.floats(y)
    terms = K.empty((N,), dt)
    g = K.empty((N,), dt) if grad else K.dummy(1, dt)
    K.launch_grid_stride("gnn_focal", dt, N, z, yt, K.scalar(dt, alpha), K.scalar(dt, gamma),
        0 if variant == "code" else 1, int(grad), K.scalar(dt, 1.0 / N), terms, g)
    loss = K.empty((1,), dt)
    _colsum(dt, _col2(terms), loss, scale=1.0 / N)
    loss = K.wrap(loss.reshape(()), outputs)
    return (loss, K.wrap(g, outputs)) if grad else loss


def focal_bce(outputs, y, alpha=0.75, gamma=2.0, variant="code"):
    """The focal loss as a 0-d device array (module docstring of :mod:`refimpl._gnn_heads`:
    "code" = the notebook's BCE-with-logits on sigmoid outputs with a scalar alpha; "logits" =
    alpha_t on logits). One host read (the value checks)."""
    return _focal(outputs, y, alpha, gamma, variant, False)


def focal_bce_grad(outputs, y, alpha=0.75, gamma=2.0, variant="code"):
    """``(loss, doutputs)``: :func:`focal_bce` and its gradient (N,) (``gnn_focal``). One host
    read."""
    return _focal(outputs, y, alpha, gamma, variant, True)
