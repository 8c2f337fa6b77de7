"""The Numba-CUDA kernels of the ``numba_cuda`` backend, in one place, plus the host-side
helpers that allocate device arrays and launch them.

Nothing is compiled or allocated at import. Each kernel is a plain Python function built by a
per-dtype factory (:func:`_build`), so that float constants have the kernel's dtype (a bare
Python float literal would silently promote float32 arithmetic to float64). A kernel is
compiled on first use by :func:`kernel` for exactly one signature per dtype; :func:`specs`
lists every ``(name, python function, signatures)`` the backend launches, which the CPU test
compiles to PTX for ``cc=(9, 0)`` without a GPU.

Soft-DTW (``softdtw.md`` sec. 10)
    *job* = one DP (pair b, matrix kind 0 = XY / 1 = XX / 2 = YY). One block per job; the
    block's threads stride over the cells of the current anti-diagonal (no length cap).
    The three live diagonals of the forward (and the seven contribution buffers of the
    backward) live in dynamic shared memory when they fit under :data:`SHARED_BYTES`, else
    in a global scratch array with the same code path. Rt = R - o_d is stored once per cell,
    diagonal-major and compacted (diagonal d of an n x m job starts at ``dstart(d, n, m)``), with
    one float64 offset o_d per diagonal (``softdtw.md`` sec. 8.3). The backward is the reverse
    wavefront with normalised softmin weights rebuilt from the stored Rt (no C read): each
    cell, once its E is known, computes its three predecessor weights once (2 exps + 1 exp(0))
    and leaves ``weight * E`` in shared memory for the predecessors to gather.

Entropic OT (``ot.md`` sec. 6)
    One fused online-LSE kernel per half-iteration: the column update is one thread per
    column looping over (a split of) the rows, the row update is ``lanes`` threads per row
    (one warp on a GPU) reduced through shared memory; problems of a batch map to the last
    grid axis. No (f - C)/eps matrix is ever written.

Preference family (``preference.md`` sec. 8; ``pref_*`` kernels, correctness first)
    ``pref_gemm`` is one tiled shared-memory GEMM ``C = alpha op(A) op(B + B2) + beta C (+ bias)``
    (TILE x TILE threads per output tile, transpose flags, optional second B operand for the
    SAM head ``W_b + eps_b`` and optional column bias for ``+ b_b``): every matmul of the
    family (logit blocks, ``dH += G W``, ``dW += G^T H``, the Gram path's ``H H^T``,
    ``G0 G0^T``, ``K G0``, ``M H``). ``pref_lse_update`` is the online-LSE row kernel of one
    logit block fused with the target-logit gather (lanes per row, reduced through shared
    memory); ``pref_grad_block`` turns a recomputed logit block into
    ``G_b = c (onehot(y - j0) - exp(Z_b - lse))`` in place; ``pref_dpo`` is the DPO formula on
    the (R,) log-probs and its mean (one block). The rest are small gathers, scatters,
    segment sums, column sums, a Frobenius dot (atomic per block) and the SAM rescale.

Cross-tokenizer family (``cross_tokenizer.md`` secs. 3-5, 8-10; ``ct_*`` kernels, correctness
first): ``ct_kd`` is one block per logit row (online LSE of both softmaxes through
``lse_push``/``lse_merge``, the divergence terms, ``<p, g>`` and ``dz``; adaptive_kl finds the
end of the sorted-cumsum tail bit by bit, ``akl_cut``); ``ct_rowstat``/``ct_rownorm`` the DWA-KD
token weights and gate; ``ct_band`` the soft band (one block per row); ``ct_gather_rows``,
``ct_gather_block``, ``ct_scatter_rows`` and ``ct_sum`` wrap the Soft-DTW divergence of
``dwa_dtw_loss``; ``ct_span_sum`` (atomics), ``ct_span_scale``, ``ct_span_weights`` the CTPD
spans; ``ct_ctpd_rows``/``ct_row_scale`` and ``ct_tis_tok``/``ct_tis_rows``/``ct_tis_grad``
feed ``pref_dpo`` (the one DPO formula) and spread its gradient.

Inf-SSM family (``inf_ssm.md`` secs. 2-4, 6; ``iss_*`` kernels, details in the docstring of
:mod:`backends.numba_cuda.inf_ssm`): ``iss_code``/``iss_code_grad`` are the fused code distance
and its gradient, one thread per system (grid-stride), in the cancellation-free form, with
``u_i``, ``v_j`` cached for i, j < :data:`ISS_NCACHE`; ``iss_principled`` the projection/Martin
variants by per-thread Cholesky in local arrays (n1, n2 <= :data:`ISS_NMAX`); ``iss_gram`` the
(cross-)Grams; ``iss_mamba`` the Mamba (a, c) extraction; ``iss_copy``, ``iss_scan_stats``,
``iss_scan_sum``, ``iss_reg_scale``, ``iss_reg_loss``, ``iss_mse_grad`` the regulariser with
its allclose shortcut on the device; ``iss_stats`` the validators' (non-finite, max |x|).

Discrete-score causal discovery (``causal_discrete.md`` secs. 1, 2, 4, 7; ``cd_*`` kernels,
correctness first, details in the docstring of :mod:`backends.numba_cuda.causal_discrete`):
a stable LSD radix sort of non-negative int64 keys (8-bit digits, :data:`CD_TILE` keys per
block: ``cd_sort_hist``, the one-block ``cd_scan``, ``cd_sort_scatter``) groups rows by
mixed-radix column codes (``cd_group_key``, ``cd_seg_flags``); ``cd_seg_count``/
``cd_plugin_write`` the plug-in score; ``cd_gsm_rows``/``cd_sum_scale`` and
``cd_leaf_pass``/``cd_leaf_finish`` the loss and the leaf statistics (``block_sum``);
``cd_rank_rows``/``cd_ci_count``/``cd_ci_stat`` the batched G2/chi2 tests with a float64
regularised upper incomplete gamma device function (``cd_gammaincc`` exposes it);
``cd_pair_dist``/``cd_median`` (bandwidth by the same sort), ``cd_stein_kernel``,
``cd_stein_rhs``, ``cd_add_diag``, the unblocked Cholesky ``cd_chol_col``/``cd_chol_update``
(2 n launches), ``cd_trsm`` and ``cd_stein_combine`` SCORE's Stein diagonal; ``cd_cast_*``,
``cd_colrange``, ``cd_fstats`` the integer widening and the validators' value checks. The
integer-only ops launch the float64 variants only.

Recommender VAEs (``recsys_vae.md``; ``rv_*`` kernels, details in the docstring of
:mod:`backends.numba_cuda.recsys_vae`): Mult-VAE's row kernels around ``pref_gemm``
(``rv_rowprep``/``rv_csr_prep`` input normalisation and masking, ``rv_spmm``/``rv_spmm_t``
CSR products, ``rv_tanh``/``rv_tanh_bwd``, ``rv_latent``/``rv_latent_bwd``, the fused
``rv_nll_rows`` nll + dlogits, ``rv_kl_rows``, ``rv_loss_finish``), PIA (``rv_eaug``,
``rv_pia_rows``, ``rv_reduce``, ``rv_pia_grad_rows``, ``rv_pia_de``, ``rv_centroid``),
``rv_w2``, the metrics' per-row shared-memory top-k ``rv_topk`` (k <= :data:`RV_KMAX`;
float64 assembly of the value by design) with ``rv_metric_stats``, ``rv_densify``,
``rv_cast_*``, and the validators' ``rv_flags``.

Graph networks (``gnn_pdm.md`` sec. 6; ``gnn_*`` kernels, details in the docstring of
:mod:`backends.numba_cuda.gnn`; NO atomics): the CSR build around the ``cd_*`` radix sort
(``gnn_keys``, ``gnn_split``, ``gnn_lower_bound`` — ptr by binary search —, ``gnn_gather_i``,
the self-loop compaction ``gnn_loop_keep``/``gnn_loop_compact`` with ``cd_scan``,
``gnn_gather_rows``, ``gnn_loop_mean``); ``gnn_spmm`` the one segment sum (one thread per
(row, feature) walking the row's edges in CSR order) for GCN/GIN/GAT forward and, on the
transposed CSR, backward; GCN ``gnn_deg``/``gnn_gcn_norm``/``gnn_edge_dot``/``gnn_gcn_gdeg``/
``gnn_gcn_gw``/``gnn_scatter_origin``; GAT ``gnn_head_dot``, ``gnn_gat_scores``, the per
(row, head) online-max/sum-exp ``gnn_seg_softmax``/``gnn_seg_softmax_bwd``, ``gnn_gat_agg``
(never an E x heads x C tensor), ``gnn_gat_dalpha``, ``gnn_seg_sum``, ``gnn_gat_dxp_add``,
``gnn_gat_edge_grads``; split column reductions ``gnn_colsum_part``/``gnn_colsum_finish``;
GIN ``gnn_relu``/``gnn_relu_bwd``; the edge MLP ``gnn_standardize``/``gnn_edge_mlp_out``;
fusion ``gnn_softmax_vec(_bwd)``, ``gnn_wsum``, ``gnn_fuse_dh``, ``gnn_rowdot``,
``gnn_att_scores``, ``gnn_row_softmax(_bwd)``, ``gnn_bcast``, ``gnn_att_bwd``; ``gnn_focal``;
the validators' ``gnn_istats``/``gnn_fstats`` and their ``_finish`` (block partials).

Launches go to the CUDA *legacy default stream* (``cuda.default_stream()``), always.
"""

from __future__ import annotations

import math
import os
import sys
import weakref

import numpy as np
from numba import cuda, float32, float64, int64, uint16, uint32  # noqa: F401 (kernel types)

from refimpl import _validate

# --------------------------------------------------------------------------- tunables

SDTW_BLOCK = 256          # threads per Soft-DTW job (strided over each diagonal)
SHARED_BYTES = 48 * 1024  # dynamic shared memory a DP block may use before the global fallback
TILE = 4 if os.environ.get("NUMBA_ENABLE_CUDASIM", "0") == "1" else 16
#                         ^ tile edge of the pairwise-cost and VJP kernels (TILE x TILE threads;
#                           small in the simulator, where every thread is a Python thread)
OT_COL_BLOCK = 256        # threads (columns) per block of the Sinkhorn column kernels
OT_ROW_LANES = 32         # threads per row of the Sinkhorn row kernels (a warp)
OT_ROW_ROWS = 8           # rows per block of the Sinkhorn row kernels
OT_COL_SPLIT = None       # force the number of row splits of the column kernels (None = auto)
OT_MIN_SPLIT_ROWS = 64    # never split the rows of a column update finer than this
RED_BLOCK = 256           # threads of the reduction kernels
FILL_BLOCK = 256
PREF_LANES = 32           # threads per row of the online-LSE kernel (a warp)
PREF_ROW_THREADS = 256    # threads per block of the online-LSE kernel (lanes x rows)
SIM_MAX_THREADS = 8       # in the simulator each CUDA thread is a Python thread: keep blocks small

COS_EPS = 1e-8            # norm floor of the cosine costs (refimpl.softdtw.COS_EPS, refimpl.ot)
ISS_NMAX = 16             # largest n1, n2 of the Inf-SSM principled variants (per-thread local
#                           arrays of a compile-time size; inf_ssm.py refuses larger n)
ISS_NCACHE = 32           # u_i, v_j cached per thread in the iss_code kernels (recomputed beyond)
ISS_RED = 256             # threads (and shared words) of the iss_* block reductions
ISS_ALLCLOSE_RTOL, ISS_ALLCLOSE_ATOL = 1e-5, 1e-8   # torch.allclose defaults (refimpl.inf_ssm)
CD_RADIX_BITS = 8         # bits per pass of the cd_* LSD radix sort (CD_RADIX buckets)
CD_RADIX = 1 << CD_RADIX_BITS
CD_TILE = 32 if os.environ.get("NUMBA_ENABLE_CUDASIM", "0") == "1" else 1024
#                         ^ keys per block of the radix-sort histogram/scatter kernels
CD_RED = 1024             # shared words of the cd_* block reductions and of cd_scan
CD_ITMAX = 100000         # iteration cap of the incomplete-gamma series / continued fraction
SE_RED = 256              # threads (and shared words) of the se_* block reductions
SE_KMAX = 8               # largest K of the fused IBDR kernel (local/shared arrays of this size)
SE_NORMALIZE_EPS = 1e-12  # F.normalize's eps (refimpl._ibdr.NORMALIZE_EPS)
SE_COS_EPS = 1e-8         # the 1e-8 of Antibody's lambda denominators
SE_CLIP_EPS = 1e-6        # clip_grad_norm_'s 1e-6 (refimpl._ibdr.CLIP_EPS)
RV_RED = 256              # threads (and shared words) of the rv_* block reductions / row kernels
RV_KMAX = 128             # largest k of rv_topk (the selected indices live in shared memory)
RV_NORM_EPS = 1e-12       # tf.nn.l2_normalize's epsilon (Mult-VAE input normalisation)
GNN_RED = 256             # threads (and shared words) of the gnn_* validation-stats blocks
GNN_STAT_BLOCKS = 64      # most blocks of a gnn_* stats sweep (partials combined in block order)
GNN_SPLIT_ROWS = 256      # rows per chunk of the gnn_* split column reductions
GNN_MAX_SPLITS = 1024     # most chunks of one split column reduction
GNN_SOFTMAX_EPS = 1e-16   # PyG utils.softmax: the sum of exps + 1e-16
GNN_EPS8 = 1e-8           # edge MLP: std + 1e-8 and sigmoid(.) + 1e-8 (WeightedGCNConv)

#: Set to a list to record ``(name, dtype, argument numba types)`` of every launch (tests).
RECORD: list | None = None


def simulator() -> bool:
    return os.environ.get("NUMBA_ENABLE_CUDASIM", "0") == "1"


# --------------------------------------------------------------------------- signatures

# "{T}" is the float type of the kernel's dtype. Arrays the caller passes in use the "A"
# layout ([:, :]) so any strides are accepted; arrays this backend allocates are C-contiguous.
_SIGNATURES = {
    "fill1d": "void({T}[::1], {T})",
    # bfloat16 <-> float32 by their bits (the same kernel in both dtypes' sets; backends._bf16)
    "bf16_up": "void(uint16[::1], uint32[::1])",
    "bf16_down": "void(uint32[::1], uint16[::1])",
    "sdtw_forward": "void({T}[:, :, :], {T}[:, :, :], {T}[:, :, :], int64[:, ::1], {T}[::1], "
                    "float64[::1], float64[::1], {T}[::1], {T}, int64, int64, int64)",
    "sdtw_backward": "void({T}[:, :, ::1], {T}[:, :, ::1], {T}[:, :, ::1], int64[:, ::1], "
                     "{T}[::1], float64[::1], float64[::1], {T}[::1], {T}, int64, int64, int64)",
    "sdtw_combine": "void(float64[::1], {T}[::1], float64, float64, float64, int64)",
    "row_norms": "void({T}[:, :, :], {T}[:, ::1], int64[::1])",
    "pair_cost": "void({T}[:, :, :], {T}[:, :, :], {T}[:, :, :], {T}[:, :, :], {T}[:, ::1], "
                 "{T}[:, ::1], {T}[:, :, ::1], int64[::1], int64[::1], int64, int64)",
    "vjp_gemm": "void({T}[:, :, :], {T}[:, :, :], {T}[:, :, :], {T}[:, ::1], {T}[:, :, ::1], "
                "int64[::1], int64[::1], int64, int64, {T}, int64)",
    "cos_epilogue": "void({T}[:, :, :], {T}[:, ::1], {T}[:, :, ::1], int64[::1])",
    "any_nan": "void({T}[:, :, :], int64[::1])",
    "ot_prep": "void({T}[:, :], {T}[:, ::1], {T}, int64)",
    "ot_col_lse": "void({T}[:, :, :], {T}[:, ::1], {T}[:, :], {T}[:, ::1], {T}[:, :, ::1], "
                  "{T}[:, :, ::1], {T}, int64, int64)",
    "ot_col_lse_finish": "void({T}[:, :, ::1], {T}[:, :, ::1], {T}[:, :], {T}[:, ::1], int64)",
    "ot_row_lse": "void({T}[:, :, :], {T}[:, ::1], {T}[:, :], {T}[:, ::1], {T})",
    "ot_col_ktu": "void({T}[:, :, :], {T}[:, ::1], {T}[:, :], {T}[:, ::1], {T}[:, :, ::1], {T}, "
                  "int64, int64, float64[::1], float64)",
    "ot_col_ktu_finish": "void({T}[:, :, ::1], {T}[:, :], {T}[:, ::1], int64, float64[::1], "
                         "float64)",
    "ot_row_kv": "void({T}[:, :, :], {T}[:, ::1], {T}[:, :], {T}[:, ::1], {T}, float64[::1], "
                 "float64)",
    "ot_colsum": "void({T}[:, :, :], {T}[:, ::1], {T}[:, ::1], {T}[:, :, ::1], {T}, int64, int64)",
    "ot_err": "void({T}[:, :, ::1], {T}[:, :], float64[::1], {T}[::1])",
    "ot_plan": "void({T}[:, :, :], {T}[:, ::1], {T}[:, ::1], {T}[:, :, ::1], {T}, int64)",
    "ot_potential": "void({T}[:, ::1], {T}[:, ::1], {T}, int64)",
    "ot_dual_value": "void({T}[:, :], {T}[:, ::1], {T}[:, :], {T}[:, ::1], {T}[::1])",
    "ot_linear_value": "void({T}[:, :, :], {T}[:, :, ::1], {T}[::1])",
    "ot_center": "void({T}[:, ::1], {T}[:, ::1])",
    "ot_div_combine": "void({T}[::1], {T}[::1], {T}[::1], {T}[::1], int64)",
    # preference family ({U} is the other float dtype: pref_cast converts ref_logp)
    "pref_gemm": "void({T}[:, :], {T}[:, :], {T}[:, :], {T}[:, :], {T}[:], {T}, {T}, int64, "
                 "int64, int64, int64)",
    "pref_gather": "void({T}[:, :, :], int64[::1], {T}[:, ::1])",
    "pref_scatter": "void({T}[:, :], int64[::1], {T}[:, :, ::1])",
    "pref_lse_update": "void({T}[:, :], int64[::1], int64, {T}[::1], {T}[::1], {T}[::1])",
    "pref_lse_finish": "void({T}[::1], {T}[::1], {T}[::1], {T}[::1], {T}[::1])",
    "pref_grad_block": "void({T}[:, :], int64[::1], int64, {T}[::1], {T}[::1])",
    "pref_colsum": "void({T}[:, :], {T}[::1])",
    "pref_seq_sum": "void({T}[::1], int64[::1], {T}[::1], int64)",
    "pref_token_coef": "void({T}[::1], int64[::1], {T}[::1], int64)",
    "pref_dpo": "void({T}[:], {T}[:], {T}[::1], {T}[::1], {T}[::1], {T}[::1], {T}, {T}, int64)",
    "pref_frob_dot": "void({T}[:, :], {T}[:, :], {T}[::1])",
    "pref_sam_scale": "void({T}[::1], {T}[::1], {T}[::1], {T}[::1], {T}, {T})",
    "pref_absmul": "void({T}[:, :], {T}[:, :])",
    "pref_cast": "void({U}[:], {T}[::1])",
    # cross-tokenizer family (ct_*; backends/numba_cuda/cross_tokenizer.py)
    "ct_kd": "void({T}[:, :], {T}[:, :], {T}[::1], {T}[:, ::1], {T}, {T}, {T}, {T}, int64, int64)",
    "ct_rowstat": "void({T}[:, :, :], {T}[:, ::1], {T}[:, ::1], {T}, int64)",
    "ct_rownorm": "void({T}[:, ::1], {T}[:, ::1], {T}[:, ::1])",
    "ct_band": "void({T}[:, :, :], int64[::1], int64[::1], {T}[:, :, ::1], {T}, {T}, {T}, {T})",
    "ct_gather_rows": "void({T}[:, :, :], int64[:, ::1], int64[::1], {T}[:, :, ::1])",
    "ct_gather_block": "void({T}[:, :, :], int64[:, ::1], int64[:, ::1], int64[::1], int64[::1], "
                       "{T}[:, :, ::1])",
    "ct_scatter_rows": "void({T}[:, :, :], int64[:, ::1], int64[::1], {T}[:, :, ::1])",
    "ct_sum": "void({T}[:], {T}[::1])",
    "ct_span_sum": "void({T}[:, :], int64[:, ::1], {T}[:, ::1], {T}[:, ::1], int64)",
    "ct_span_scale": "void({T}[:, ::1], {T}[:, ::1], {T}, int64)",
    "ct_span_weights": "void({T}[:, :], {T}[:, :], {T}[:, ::1], {T}[:, ::1], {T}, {T}, {T}, {T}, "
                       "int64)",
    "ct_ctpd_rows": "void({T}[:, :], {T}[:, :], {T}[:, :], {T}[::1], {T}[::1])",
    "ct_row_scale": "void({T}[::1], {T}[:, :], {T}[:, ::1])",
    "ct_tis_tok": "void({T}[:, :, :], {T}[:, :, :], int64[:, ::1], {T}[:, :], {T}[:, ::1], "
                  "{T}[:, ::1], {T}[:, ::1], {T}[:, ::1], {T}[:, :, ::1])",
    "ct_tis_rows": "void({T}[:, ::1], {T}[:, ::1], {T}[:, ::1], {T}[::1], {T}[::1], {T}, {T}, "
                   "int64)",
    "ct_tis_grad": "void({T}[:, :, :], {T}[:, :, :], int64[:, ::1], {T}[:, ::1], {T}[:, :, ::1], "
                   "{T}[:, ::1], {T}[::1], {T}[:, :, ::1], {T})",
    # Inf-SSM family (iss_*; backends/numba_cuda/inf_ssm.py)
    "iss_stats": "void({T}[:, :], {T}[::1])",
    "iss_gram": "void({T}[:, :], {T}[:, :, :], {T}[:, :], {T}[:, :, :], {T}[:, :, ::1])",
    "iss_code": "void({T}[:, :], {T}[:, :], {T}[:, :], {T}[:, :], {T}[::1])",
    "iss_code_grad": "void({T}[:, :], {T}[:, :], {T}[:, :], {T}[:, :], {T}[::1], {T}[:, ::1], "
                     "{T}[:, ::1], {T}[:, ::1], {T}[:, ::1], {T}[::1], int64, int64)",
    "iss_principled": "void({T}[:, :], {T}[:, :], {T}[:, :], {T}[:, :], {T}[::1], int64[::1], "
                      "{T}, int64)",
    "iss_mamba": "void({T}[:, :, :], {T}[:, :], {T}[:, :, :], {T}[:], {T}[:, :, ::1], "
                 "{T}[:, ::1], int64, int64, int64)",
    "iss_copy": "void({T}[:, :], {T}[:, ::1], int64)",
    "iss_scan_stats": "void({T}[:, ::1], {T}[:, ::1], {T}[:, ::1])",
    "iss_scan_sum": "void({T}[:, ::1], {T}[::1])",
    "iss_reg_scale": "void({T}[:, ::1], {T}[:, ::1], {T}[::1], {T}, int64)",
    "iss_reg_loss": "void({T}[:, ::1], {T}[:, ::1], {T}[::1], {T}[::1], {T}, {T}, {T}, int64, "
                    "int64)",
    "iss_mse_grad": "void({T}[:, ::1], {T}[:, ::1], {T}[::1], {T}[:, ::1], int64)",
    # discrete-score causal discovery (cd_*; backends/numba_cuda/causal_discrete.py). The
    # integer-only ops (plug-in score, CI tests) launch only the float64 variants; X is int64
    # (other integer dtypes are widened once by cd_cast_*).
    "cd_cast_i8": "void(int8[:, :], int64[:, ::1])",
    "cd_cast_i16": "void(int16[:, :], int64[:, ::1])",
    "cd_cast_i32": "void(int32[:, :], int64[:, ::1])",
    "cd_cast_u8": "void(uint8[:, :], int64[:, ::1])",
    "cd_cast_u16": "void(uint16[:, :], int64[:, ::1])",
    "cd_cast_u32": "void(uint32[:, :], int64[:, ::1])",
    "cd_cast_u64": "void(uint64[:, :], int64[:, ::1])",
    "cd_colrange": "void(int64[:, :], int64[:, ::1])",
    "cd_fill_i64": "void(int64[::1], int64)",
    "cd_iota": "void(int64[::1])",
    "cd_scan": "void(int64[::1], int64[::1], int64)",
    "cd_sort_hist": "void(int64[::1], int64[::1], int64)",
    "cd_sort_scatter": "void(int64[::1], int64[::1], int64[::1], int64[::1], int64[::1], int64)",
    "cd_group_key": "void(int64[:, :], int64[::1], int64[::1], int64[::1], int64[::1])",
    "cd_seg_flags": "void(int64[:, :], int64[::1], int64[::1], int64[::1])",
    "cd_seg_count": "void(int64[:, :], int64[::1], int64[::1], int64, int64[:, ::1], "
                    "int64[::1])",
    "cd_plugin_write": "void(int64[:, :], int64[:, ::1], int64[::1], int64, int64, {T}, int64, "
                       "{T}[:, :, ::1])",
    "cd_gsm_rows": "void({T}[:, :, :], int64[:, :], int64[::1], {T}[::1])",
    "cd_sum_scale": "void({T}[::1], {T}[::1], {T})",
    "cd_fstats": "void({T}[:, :], {T}[::1])",
    "cd_leaf_pass": "void({T}[:, :, :], int64[:, :], int64[::1], {T}[:, :], int64, int64, "
                    "int64, {T}[:, ::1], {T}[:, :, ::1])",
    "cd_leaf_finish": "void({T}[:, :, ::1], {T}[:, ::1], {T}[::1], int64)",
    "cd_rank_rows": "void(int64[::1], int64[::1], int64[::1])",
    "cd_ci_count": "void(int64[:, :], int64[::1], int64, int64[::1], int64, int64, int64, "
                   "int64[::1])",
    "cd_ci_stat": "void(int64[::1], int64[::1], int64[::1], int64, int64, int64, int64, int64, "
                  "{T}[::1], int64[::1], {T}[::1])",
    "cd_gammaincc": "void({T}[::1], {T}[::1], {T}[::1])",
    "cd_pair_dist": "void({T}[:, :], {T}[:, ::1])",
    "cd_median": "void({T}[:, ::1], {T}[::1])",
    "cd_stein_kernel": "void({T}[:, :], {T}[::1], {T}[:, ::1])",
    "cd_stein_rhs": "void({T}[:, ::1], {T}[:, :], {T}[::1], {T}[:, ::1], {T}[:, ::1])",
    "cd_add_diag": "void({T}[:, ::1], {T}[:, ::1], {T})",
    "cd_chol_col": "void({T}[:, ::1], int64, {T}[::1], int64)",
    "cd_chol_update": "void({T}[:, ::1], int64)",
    "cd_trsm": "void({T}[:, ::1], {T}[:, ::1], int64)",
    "cd_stein_combine": "void({T}[:, ::1], {T}[:, ::1], {T}[:, ::1])",
    # safety ensembles (se_*; backends/numba_cuda/safety_ensembles.py): Antibody's flat-vector
    # passes (partial sums / final scalar / elementwise) and IBDR's fused loss + gradient
    "se_vec_partial": "void({T}[:], {T}[:], {T}[:], {T}[:], {T}[:, ::1], int64, int64, int64)",
    "se_vec_final": "void({T}[:, ::1], {T}[:], {T}[::1], {T}, {T}, {T}, int64, int64)",
    "se_vec_apply": "void({T}[:], {T}[:], {T}[:], {T}[:], {T}[::1], {T}[::1], {T}, int64)",
    "se_ibdr_fwd": "void({T}[:, :, :], int64[:], {T}[:, ::1], float64[:, ::1], {T}[:, ::1], "
                   "int64, int64)",
    "se_ibdr_chol": "void(float64[:, ::1], float64[:, ::1], {T}[:, ::1], float64, int64, int64)",
    "se_ibdr_inv": "void(float64[:, ::1], int64)",
    "se_ibdr_coef": "void(float64[:, ::1], float64[:, ::1], {T}[:, ::1], {T}[:, ::1], float64, "
                    "{T}, int64, int64)",
    "se_ibdr_grad": "void({T}[:, :, :], int64[:], {T}[:, ::1], {T}[:, ::1], {T}[:, ::1], "
                    "{T}[:, :, ::1], int64, int64)",
    "se_pred_dist": "void({T}[:, :], {T}[:, :], {T}[:, ::1])",
    "se_finish": "void({T}[:, ::1], {T}[::1], {T})",
    "se_weights": "void({T}[:], {T}[:], {T}[::1], {T}[::1], {T})",
    "se_nll": "void({T}[::1], int64[::1], {T}[::1])",
    "se_wce_coef": "void({T}[:], int64[::1], {T}[::1], {T}[::1], int64)",
    "se_dot": "void({T}[::1], {T}[::1], {T}[::1])",
    # recsys VAE (rv_*)
    "rv_rowprep": "void({T}[:, :], {T}[:, :], {T}[:, ::1], {T}[::1], {T}, int64, int64)",
    "rv_csr_prep": "void({T}[:], int32[:], int32[:], {T}[:, :], {T}[::1], {T}[::1], {T}, int64, "
                   "int64)",
    "rv_spmm": "void({T}[:], int32[:], int32[:], {T}[:, :], {T}[:], {T}[:, ::1], int64)",
    "rv_spmm_t": "void({T}[:], int32[:], int32[:], {T}[:, :], {T}[:, ::1])",
    "rv_tanh": "void({T}[:, ::1])",
    "rv_tanh_bwd": "void({T}[:, ::1], {T}[:, ::1])",
    "rv_latent": "void({T}[:, ::1], {T}[:, :], {T}[:, ::1], {T}[:, ::1], {T}[:, ::1], int64)",
    "rv_nll_rows": "void({T}[:, :], {T}[:, :], {T}[:], int32[:], int32[:], {T}[::1], "
                   "{T}[:, ::1], {T}, int64, int64)",
    "rv_kl_rows": "void({T}[:, :], {T}[:, :], {T}[::1])",
    "rv_loss_finish": "void({T}[::1], {T}[::1], {T}[::1], {T}[::1], {T}, {T}, int64)",
    "rv_latent_bwd": "void({T}[:, ::1], {T}[:, ::1], {T}[:, ::1], {T}[:, :], {T}[:, ::1], "
                     "{T}[:, ::1], {T}[:, ::1], {T}, {T}, int64, int64)",
    "rv_eaug": "void({T}[:, :], {T}[:, ::1])",
    "rv_centroid": "void({T}[:, ::1], {T}[:, ::1])",
    "rv_pia_rows": "void({T}[:, :], {T}[:, :], {T}[:, ::1], {T}[:, :, :], {T}[::1], int64)",
    "rv_reduce": "void({T}[::1], {T}[:, ::1], {T}[::1])",
    "rv_pia_grad_rows": "void({T}[:, :], {T}[:, :], {T}[:, ::1], {T}[::1], {T}[:, ::1], "
                        "{T}[:, ::1], {T}[:, ::1], {T})",
    "rv_pia_de": "void({T}[:, :], {T}[:, ::1], {T}[::1], {T}[:, ::1], {T})",
    "rv_w2": "void({T}[:, :], {T}[:, :], {T}[:, :], {T}[:, :], {T}[::1])",
    "rv_densify": "void({T}[:], int32[:], int32[:], {T}[:, ::1])",
    "rv_metric_stats": "void({T}[:, :], {T}[:, :], {T}[:, :], {T}[::1])",
    "rv_topk": "void({T}[:, :], {T}[:, :], {T}[:, :], float64[::1], float64[::1], {T}[::1], "
               "int64, int64)",
    "rv_cast_bool": "void(boolean[:, :], {T}[:, ::1])",
    "rv_cast_i8": "void(int8[:, :], {T}[:, ::1])",
    "rv_cast_i16": "void(int16[:, :], {T}[:, ::1])",
    "rv_cast_i32": "void(int32[:, :], {T}[:, ::1])",
    "rv_cast_i64": "void(int64[:, :], {T}[:, ::1])",
    "rv_cast_u8": "void(uint8[:, :], {T}[:, ::1])",
    "rv_cast_u16": "void(uint16[:, :], {T}[:, ::1])",
    "rv_cast_u32": "void(uint32[:, :], {T}[:, ::1])",
    "rv_cast_u64": "void(uint64[:, :], {T}[:, ::1])",
    "rv_cast_f": "void({U}[:, :], {T}[:, ::1])",
    "rv_idx32": "void(int64[:], int32[::1])",
    "rv_flags": "void({T}[:, :, :], {T}[::1], int64, int64)",
    # graph networks (gnn_*; backends/numba_cuda/gnn.py). Index arrays are int64.
    "gnn_istats": "void(int64[:], int64[:], int64[:, ::1])",
    "gnn_istats_finish": "void(int64[:, ::1], int64[::1], int64)",
    "gnn_fstats": "void({T}[:, :], int64[:, ::1], {T}[:, ::1])",
    "gnn_fstats_finish": "void(int64[:, ::1], {T}[:, ::1], int64[::1], {T}[::1], int64, int64)",
    "gnn_keys": "void(int64[:], int64[:], int64, int64, int64, int64[::1], int64[::1])",
    "gnn_split": "void(int64[::1], int64, int64[::1], int64[::1])",
    "gnn_lower_bound": "void(int64[::1], int64[::1])",
    "gnn_gather_i": "void(int64[::1], int64[::1], int64[::1])",
    "gnn_loop_keep": "void(int64[::1], int64[::1], int64, int64, int64[::1])",
    "gnn_loop_compact": "void(int64[::1], int64[::1], int64[::1], int64, int64, int64, "
                        "int64[::1], int64[::1], int64[::1])",
    "gnn_gather_rows": "void({T}[:, :], int64[::1], {T}, {T}[:, ::1])",
    "gnn_loop_mean": "void(int64[::1], int64[::1], int64[::1], {T}[:, :], {T}[:, ::1])",
    "gnn_deg": "void(int64[::1], {T}[:, :], int64, {T}[::1])",
    "gnn_gcn_norm": "void(int64[::1], int64[::1], {T}[:, :], int64, {T}[::1], int64, {T}[::1])",
    "gnn_spmm": "void(int64[::1], int64[::1], {T}[:, :], int64[::1], {T}[:, :], {T}[:], "
                "{T}[:, ::1], {T}, {T}, int64, int64, int64, int64)",
    "gnn_edge_dot": "void(int64[::1], int64[::1], {T}[:, :], {T}[:, :], {T}[::1])",
    "gnn_gcn_gdeg": "void(int64[::1], int64[::1], int64[::1], int64[::1], int64[::1], "
                    "{T}[:, :], int64, {T}[::1], {T}[::1], {T}[::1])",
    "gnn_gcn_gw": "void(int64[::1], int64[::1], {T}[::1], {T}[::1], {T}[::1], int64, {T}[::1])",
    "gnn_scatter_origin": "void(int64[::1], {T}[::1], {T}[::1])",
    "gnn_head_dot": "void({T}[:, :], {T}[:, :], {T}[:, ::1])",
    "gnn_gat_scores": "void(int64[::1], int64[::1], {T}[:, ::1], {T}[:, ::1], {T}[:, :], int64, "
                      "{T}, {T}[:, ::1])",
    "gnn_seg_softmax": "void(int64[::1], int64[::1], int64, {T}[:, :], {T}[:, ::1])",
    "gnn_seg_softmax_bwd": "void(int64[::1], int64[::1], int64, {T}[:, :], int64, {T}[:, :], "
                           "{T}[:, :], {T}, int64, {T}[:, ::1])",
    "gnn_gat_agg": "void(int64[::1], int64[::1], {T}[:, ::1], {T}[:, ::1], {T}[:], int64, int64, "
                   "{T}, {T}[:, ::1])",
    "gnn_gat_dalpha": "void(int64[::1], int64[::1], {T}[:, ::1], {T}[:, :], int64, {T}, "
                      "{T}[:, ::1])",
    "gnn_seg_sum": "void(int64[::1], int64[::1], int64, {T}[:, ::1], {T}[:, ::1])",
    "gnn_gat_dxp_add": "void({T}[:, ::1], {T}[:, ::1], {T}[:, ::1], {T}[:, :], {T}[:, :])",
    "gnn_gat_edge_grads": "void({T}[:, ::1], {T}[:, :], {T}[:, :], {T}[:, ::1], {T}[:, ::1])",
    "gnn_colsum_part": "void({T}[:, :], {T}[:, :], {T}[:, ::1], int64, int64, int64)",
    "gnn_colsum_finish": "void({T}[:, ::1], {T}[:], {T})",
    "gnn_relu": "void({T}[:, ::1])",
    "gnn_relu_bwd": "void({T}[:, ::1], {T}[:, ::1])",
    "gnn_standardize": "void({T}[:, :], {T}[:], {T}[:], {T}[:, ::1])",
    "gnn_edge_mlp_out": "void({T}[:, ::1], {T}[:, :], {T}[:], {T}[::1])",
    "gnn_softmax_vec": "void({T}[:], {T}[::1])",
    "gnn_softmax_vec_bwd": "void({T}[::1], {T}[::1], {T}[::1])",
    "gnn_wsum": "void({T}[:, :, :], {T}[:, :], int64, {T}[:, ::1])",
    "gnn_fuse_dh": "void({T}[:, :], int64, {T}[:, :], {T}[:, :, ::1])",
    "gnn_rowdot": "void({T}[:, :, :], {T}[:, :], {T}[:, ::1])",
    "gnn_att_scores": "void({T}[:, ::1], {T}[:], {T}[::1])",
    "gnn_row_softmax": "void({T}[:, :], {T}[:, ::1])",
    "gnn_row_softmax_bwd": "void({T}[:, ::1], {T}[:, ::1], {T}[:, :])",
    "gnn_bcast": "void({T}[::1], {T}, {T}[:, ::1])",
    "gnn_att_bwd": "void({T}[:, ::1], {T}[::1], {T}[:])",
    "gnn_focal": "void({T}[:], {T}[:], {T}, {T}, int64, int64, {T}, {T}[::1], {T}[::1])",
    # crpl (issue 10, arXiv 2506.11493): see backends/numba_cuda/crpl.py
    "crpl_centroids": "void({T}[:, :, :], {T}[:, :], {T}[:, :], int64[::1], int64[::1], "
                      "{T}[:, :, ::1], {T}[:, ::1])",
    "crpl_stack": "void({T}[:, :, :], {T}[:, ::1], int64)",
    "crpl_sqnorm": "void({T}[:, :], {T}[::1])",
    "crpl_irange": "void(int64[::1], float64[::1], int64)",
    "crpl_dcount": "void(int64[::1], float64[::1], int64, int64)",
    "crpl_frows": "void({T}[:, :], {T}[:, ::1])",
    "crpl_fpack": "void({T}[:, ::1], float64[::1], int64)",
    "crpl_probs": "void({T}[:, ::1], {T}[:, ::1], {T}[::1], {T}[::1], {T}[:, :], int64, int64, "
                  "int64, int64, {T}, {T}, {T}[:, ::1])",
    "crpl_sce_rows": "void({T}[:, :], {T}[:, :], {T}[::1], {T}[:, ::1], int64)",
    "crpl_tgt_rows": "void({T}[:, ::1], {T}[:, :], int64[::1], int64, {T}, int64, {T}[:, ::1], "
                     "int64[::1], {T}[:, ::1], int64)",
    "crpl_src_rows": "void({T}[:, ::1], int64[::1], int64[::1], int64, int64, int64, {T}, "
                     "{T}[:, ::1], {T}[:, ::1], int64)",
    "crpl_mean": "void({T}[::1], {T}[::1], int64)",
    "crpl_tgt_finish": "void({T}[:, ::1], int64[::1], int64, int64, {T}[::1], int64)",
    "crpl_src_finish": "void({T}[:, ::1], int64[::1], int64, int64, {T}[::1], int64)",
    "crpl_total": "void({T}[::1], {T}[:], int64, {T}, {T})",
    "crpl_argmax": "void({T}[:, ::1], {T}, {T}, int64, int64[::1])",
    "crpl_acc": "void(int64[::1], int64[::1], {T}, {T}[::1])",
    "crpl_accum": "void({T}[:, :], {T}[:, ::1], int64, {T})",
}

DTYPES = ("float32", "float64")

#: Kernels whose float32 variants do float64 arithmetic on purpose (the per-diagonal offsets
#: of softdtw.md sec. 8.3 and the float64 assembly of the value); all others stay in float32.
FP64_BY_DESIGN = frozenset({"sdtw_forward", "sdtw_backward", "sdtw_combine", "se_ibdr_fwd",
                            "se_ibdr_chol", "se_ibdr_inv", "se_ibdr_coef",
                            "rv_topk"})


_OTHER = {"float32": "float64", "float64": "float32"}


def signature(name: str, dtype: str) -> str:
    """The one signature of ``name[dtype]``: ``{T}`` is ``dtype``, ``{U}`` the other float
    dtype (only ``pref_cast`` and ``rv_cast_f`` read one)."""
    return _SIGNATURES[name].format(T=dtype, U=_OTHER[dtype])


_FUNCS: dict[str, dict] = {}
_COMPILED: dict[tuple[str, str], object] = {}


def functions(dtype: str) -> dict:
    """``{kernel name: python function}`` of one dtype (built once, not compiled)."""
    if dtype not in _FUNCS:
        _FUNCS[dtype] = _build(dtype)
    return _FUNCS[dtype]


def specs() -> list[tuple[str, object, tuple[str, ...]]]:
    """Every kernel the backend launches: ``(name[dtype], python function, (signature,))``."""
    out = []
    for dtype in DTYPES:
        funcs = functions(dtype)
        for name in _SIGNATURES:
            out.append((f"{name}[{dtype}]", funcs[name], (signature(name, dtype),)))
    return out


def _serialise_simulator_shared_arrays() -> None:
    """Make the CUDA simulator's static ``cuda.shared.array`` allocation thread-safe.

    numba-cuda's simulator (checked in 0.30.4, ``FakeCUDAShared.array``) allocates a block's
    static shared array the first time a source line asks for it, with an unlocked
    look-up-then-insert. When the interpreter switches threads in between, two simulated threads
    of one block each get their own ``np.empty`` buffer, stop sharing memory, and a reduction
    reads uninitialised values: random wrong results under load (seen here as shifted Sinkhorn
    potentials, about 1 run in 10 on a busy 2-core machine). Real GPUs are unaffected. This
    replacement keys allocations by the caller's (file, line) as the simulator does, under a
    lock; dynamic shared memory (``shape == 0``) is left to the simulator."""
    import threading

    from numba.core import types
    from numba.cuda.simulator import kernelapi
    from numba.np import numpy_support

    cls = kernelapi.FakeCUDAShared
    if getattr(cls, "_refimpl_serialised", False):
        return
    dynamic, lock = cls.array, threading.Lock()

    def array(self, shape, dtype, alignment=None):
        if shape == 0 or alignment is not None:
            return dynamic(self, shape, dtype, alignment)
        caller = sys._getframe(1)
        key = (caller.f_code.co_filename, caller.f_lineno)
        with lock:
            buf = self._allocations.get(key)
            if buf is None:
                if isinstance(dtype, types.Type):
                    dtype = numpy_support.as_dtype(dtype)
                buf = self._allocations[key] = np.empty(shape, dtype)
        return buf

    cls.array = array
    cls._refimpl_serialised = True


def _tune_simulator() -> None:
    """Simulator only: make its barriers cheap and its shared arrays safe.

    The simulator runs every CUDA thread of a block as a Python thread, and each
    ``syncthreads`` waits for all of them; with CPython's default 5 ms switch interval a
    barrier-heavy kernel spends most of its time waiting for the next switch. A 0.1 ms interval
    makes the preference and Soft-DTW kernels 3-7x faster (the registry's tiny preference check
    from 350 s to about 50 s on a 2-core machine). This changes a process-wide setting, which is
    why it happens only when the simulator compiles a kernel of this backend."""
    sys.setswitchinterval(min(sys.getswitchinterval(), 1e-4))
    _serialise_simulator_shared_arrays()


def kernel(name: str, dtype: str):
    """The compiled kernel ``name`` for ``dtype`` (compiled on first use, then cached)."""
    key = (name, dtype)
    k = _COMPILED.get(key)
    if k is None:
        if simulator():
            _tune_simulator()
        k = cuda.jit(signature(name, dtype))(functions(dtype)[name])
        _COMPILED[key] = k
    return k


def stream():
    """The one stream every launch and copy of this backend uses: the legacy default stream."""
    return cuda.default_stream()


def launch(name: str, dtype: str, grid, block, shared: int, *args) -> None:
    """Launch ``name[dtype]`` on :func:`stream` with ``shared`` bytes of dynamic shared memory."""
    if RECORD is not None:
        from numba import typeof

        RECORD.append((name, dtype, tuple(typeof(a) for a in args)))
    kernel(name, dtype)[grid, block, stream(), shared](*args)


def threads(work: int, cap: int) -> int:
    """Threads for ``work`` independent items: a multiple of 32 up to ``cap`` on a GPU; in the
    simulator at most :data:`SIM_MAX_THREADS` (each simulated thread is a Python thread)."""
    work = max(int(work), 1)
    if simulator():
        return max(1, min(cap, work, SIM_MAX_THREADS))
    return max(32, min(cap, -(-work // 32) * 32))


EW_BLOCK = 256   # threads per block of the element-wise and one-thread-per-item launches
EW_GRID = 4096   # most blocks of a grid-stride launch


def ceil_div(a: int, b: int) -> int:
    return -(-int(a) // int(b))


def scalar(dtype: str, x):
    """``x`` as a NumPy scalar of ``dtype`` (a kernel argument of the compiled signature)."""
    return np.dtype(dtype).type(x)


def launch_grid_stride(name: str, dtype: str, total: int, *args) -> None:
    """Launch a grid-stride kernel over ``total`` items: at most :data:`EW_GRID` blocks (2 in
    the simulator) of up to :data:`EW_BLOCK` threads. Nothing is launched for no items."""
    if total <= 0:
        return
    nt = threads(total, EW_BLOCK)
    launch(name, dtype, (max(1, min(ceil_div(total, nt), 2 if simulator() else EW_GRID)),),
           (nt,), 0, *args)


def launch_per_item(name: str, dtype: str, total: int, *args) -> None:
    """Launch one thread per item (``total`` threads, rounded up to whole blocks)."""
    if total <= 0:
        return
    nt = threads(total, EW_BLOCK)
    launch(name, dtype, (ceil_div(total, nt),), (nt,), 0, *args)


def pow2_floor(x: int) -> int:
    return 1 << (max(int(x), 1).bit_length() - 1)


# --------------------------------------------------------------------------- device memory

_LIVE = [0]
_PEAK = [0]


def _released(nbytes: int) -> None:
    _LIVE[0] -= nbytes


def _track(arr):
    nbytes = int(arr.nbytes)
    _LIVE[0] += nbytes
    _PEAK[0] = max(_PEAK[0], _LIVE[0])
    weakref.finalize(arr, _released, nbytes)
    return arr


def reset_peak() -> None:
    _PEAK[0] = _LIVE[0]


def peak() -> int:
    return int(_PEAK[0])


def empty(shape, dtype):
    """An uninitialised device array allocated (and tracked) by this backend.

    Arrays are not bound to a stream object (``stream=0``), so their
    ``__cuda_array_interface__`` exports ``"stream": None`` (a bound default-stream object
    would export the disallowed value 0); all work on them is on :func:`stream`."""
    return _track(cuda.device_array(tuple(int(s) for s in shape), dtype=np.dtype(dtype)))


def upload(host: np.ndarray):
    """A host array copied to a new device array, asynchronously on :func:`stream` (pageable
    memory is staged before the call returns, so the host buffer may be freed at once)."""
    host = np.asarray(host)
    if not host.flags.c_contiguous:
        host = host.copy(order="C")
    arr = empty(host.shape, host.dtype)
    if host.size:
        arr.copy_to_device(host, stream=stream())
    return arr


def fill(arr, value) -> None:
    """Set every element of a C-contiguous float32/float64 device array to ``value``."""
    flat = arr.reshape(-1)
    size = int(flat.shape[0])
    if size == 0:
        return
    dtype = np.dtype(arr.dtype).name
    nt = threads(size, FILL_BLOCK)
    launch("fill1d", dtype, (ceil_div(size, nt),), (nt,), 0, flat, scalar(dtype, value))


def zeros(shape, dtype):
    arr = empty(shape, dtype)
    fill(arr, 0.0)
    return arr


_DUMMIES: dict = {}


def dummy(ndim: int, dtype: str):
    """A 1-element array standing in for an unused kernel argument of that type."""
    key = (ndim, dtype)
    if key not in _DUMMIES:
        _DUMMIES[key] = zeros((1,) * ndim, dtype)
    return _DUMMIES[key]


def tile(dtype: str) -> int:
    """The tile edge the pairwise/VJP kernels of ``dtype`` were built with."""
    return functions(dtype)["__tile__"]


# --------------------------------------------------------------------------- array kinds

KIND = ("CUDA arrays (__cuda_array_interface__: Numba device arrays, CuPy arrays, CUDA torch "
        "tensors)")


def native(**arrays) -> None:
    """Refuse arrays of another kind with a ``TypeError`` naming the argument (no silent copies)."""
    _validate.native("numba_cuda", is_native, KIND, **arrays)


def is_native(x) -> bool:
    """Numba device arrays and any ``__cuda_array_interface__`` object (CuPy arrays, CUDA torch
    tensors); in the simulator, the simulator's device arrays."""
    if simulator():
        return bool(getattr(x, "__cuda_ndarray__", False))
    try:
        return hasattr(x, "__cuda_array_interface__")
    except Exception:  # objects whose interface property raises for other reasons
        return False


def device(x):
    """A Numba device-array view of a native array (zero-copy).

    Numba arrays are returned as they are. Other ``__cuda_array_interface__`` objects are
    wrapped; their producer stream is synchronised only when it is neither the legacy nor the
    per-thread default stream (kernels here run on the legacy default stream, which is
    already ordered after work on those two)."""
    if x is None or simulator() or getattr(x, "__cuda_ndarray__", False):
        return x
    desc = x.__cuda_array_interface__
    return cuda.as_cuda_array(x, sync=desc.get("stream") not in (None, 1, 2))


def wrap(arr, like):
    """Return ``arr`` (a Numba device array) as the array kind of ``like``, zero-copy:
    CuPy arrays through ``cupy.asarray``, torch tensors through ``torch.as_tensor``."""
    if arr is None or simulator():
        return arr
    mod = type(like).__module__.split(".")[0]
    if mod == "cupy":
        import cupy

        return cupy.asarray(arr)
    if mod == "torch":
        import torch

        return torch.as_tensor(arr, device=like.device)
    return arr


class _SimMeta:
    """Shape/dtype stand-in for a simulator array in argument validation: the simulator's
    ``FakeShape`` refuses negative indices, which the shared validators use."""

    __slots__ = ("arr", "shape", "dtype")

    def __init__(self, arr):
        self.arr = arr
        self.shape = tuple(int(s) for s in arr.shape)
        self.dtype = arr.dtype


def meta(x):
    """What to hand to :mod:`refimpl._validate`: the array itself (a proxy in the simulator)."""
    if simulator() and getattr(x, "__cuda_ndarray__", False):
        return _SimMeta(x)
    return x


def unmeta(x):
    return x.arr if isinstance(x, _SimMeta) else x


def to_numpy(x) -> np.ndarray:
    """Device-to-host copy of a native array; NumPy arrays and lists pass through."""
    x = unmeta(x)
    if x is None:
        return None
    if simulator():
        return x.copy_to_host() if getattr(x, "__cuda_ndarray__", False) else np.asarray(x)
    if getattr(x, "__cuda_ndarray__", False):
        return x.copy_to_host()
    if is_native(x):
        return cuda.as_cuda_array(x, sync=True).copy_to_host()
    return np.asarray(x)


# --------------------------------------------------------------------------- bfloat16


def is_bf16(x) -> bool:
    """Whether ``x`` is a native bfloat16 array (``ml_dtypes.bfloat16``; backends._bf16)."""
    return x is not None and is_native(x) and str(getattr(x, "dtype", "")) == "bfloat16"


def _bits(x, what: str):
    """The flat bit view (``uint16``/``uint32``) of a C-contiguous device array."""
    x = device(x)
    if not x.is_c_contiguous():
        raise ValueError(f"bfloat16 {what} arrays must be C-contiguous on this backend")
    return x.reshape(-1).view(np.uint16 if str(x.dtype) == "bfloat16" else np.uint32)


def bf16_to_float32(x):
    """A float32 device copy of a bfloat16 array (exact), returned as the input's kind."""
    out = empty(x.shape, "float32")
    launch_grid_stride("bf16_up", "float32", out.size, _bits(x, "input"), _bits(out, "output"))
    return wrap(out, x)


def float32_to_bf16(x):
    """A bfloat16 device copy of a float32 array (round to nearest even), as the input's kind."""
    from ml_dtypes import bfloat16

    out = empty(x.shape, bfloat16)
    launch_grid_stride("bf16_down", "float32", out.size, _bits(x, "float32"), _bits(out, "output"))
    return wrap(out, x)


def lift3(x):
    """A (1, n, m) view of a 2-D device array; 3-D arrays are returned unchanged."""
    if x is None or len(x.shape) == 3:
        return x
    if simulator():
        return x[None]
    from numba.cuda.cudadrv.devicearray import DeviceNDArray

    lead = int(x.shape[0]) * int(x.strides[0]) or int(x.dtype.itemsize)
    return DeviceNDArray(shape=(1,) + tuple(x.shape), strides=(lead,) + tuple(x.strides),
                         dtype=x.dtype, stream=x.stream, gpu_data=x.gpu_data)


def flatten_batch(x, core: int):
    """View an array with any number of leading batch dims as (B, *last ``core`` dims).

    Works without a copy when the batch dims are mergeable (always for contiguous arrays);
    otherwise raises ValueError asking for a contiguous array."""
    shape = tuple(int(s) for s in x.shape)
    nb = len(shape) - core
    if nb == 1:
        return x
    if nb == 0:
        if core == 2:
            return lift3(x)
        if simulator():
            return x.reshape((1,) + shape)
        return _view(x, (1,) + shape, (int(x.dtype.itemsize),) + tuple(x.strides))
    batch = int(np.prod(shape[:nb]))
    strides = tuple(int(s) for s in x.strides)
    for k in range(nb - 1):
        if shape[k] > 1 and strides[k] != strides[k + 1] * shape[k + 1]:
            raise ValueError(f"an array of shape {shape} with non-mergeable batch strides "
                             f"{strides} cannot be viewed as one batch; pass a contiguous array")
    new_shape = (batch,) + shape[nb:]
    if simulator():
        return x.reshape(new_shape)
    lead = strides[nb - 1] if nb > 0 else int(x.dtype.itemsize)
    return _view(x, new_shape, (lead,) + strides[nb:])


def _view(x, shape, strides):
    from numba.cuda.cudadrv.devicearray import DeviceNDArray

    return DeviceNDArray(shape=shape, strides=strides, dtype=x.dtype, stream=x.stream,
                         gpu_data=x.gpu_data)


# --------------------------------------------------------------------------- kernels


def _build(dtype: str) -> dict:
    """The kernels of one dtype as plain Python functions (compiled later by :func:`kernel`)."""
    DT = np.float32 if dtype == "float32" else np.float64
    NB = float32 if dtype == "float32" else float64
    INF = DT(np.inf)
    NINF = DT(-np.inf)
    NAN = DT(np.nan)
    ZERO = DT(0.0)
    ONE = DT(1.0)
    TWO = DT(2.0)
    EPS = DT(COS_EPS)
    TS = TILE
    TSP = TS + 1
    MAXT = 1024  # static shared arrays of the reduction kernels hold one word per thread

    # ------------------------------------------------------------------ device helpers

    @cuda.jit(device=True, inline="always")
    def lse_push(m, sm, x):
        """Fold ``x`` into a running ``(max, sum of exp(. - max))`` pair (-inf adds nothing)."""
        if x > m:
            return x, sm * math.exp(m - x) + ONE
        if x != NINF:
            return m, sm + math.exp(x - m)
        return m, sm

    @cuda.jit(device=True, inline="always")
    def lse_merge(rm, rs, t, lane, nl):
        """Merge the (max, sum) pairs the ``nl`` lanes of a row left in shared ``rm``/``rs``
        (slot ``t``; a power-of-two ``nl``) into the slot of lane 0. Every thread of the
        block must call it (it synchronises)."""
        cuda.syncthreads()
        off = nl // 2
        while off > 0:
            if lane < off:
                m1 = rm[t]
                m2 = rm[t + off]
                mm = max(m1, m2)
                sv = ZERO
                if mm != NINF:
                    sv = rs[t] * math.exp(m1 - mm) + rs[t + off] * math.exp(m2 - mm)
                rm[t] = mm
                rs[t] = sv
            cuda.syncthreads()
            off //= 2

    @cuda.jit(device=True, inline="always")
    def dstart(d, n, m):
        """Offset of anti-diagonal d in the compacted diagonal-major storage of an n x m DP."""
        w = min(n, m)
        v = max(n, m)
        if d <= w:
            return d * (d + 1) // 2
        if d <= v:
            return w * (w + 1) // 2 + (d - w) * w
        k = n + m - 1 - d
        return n * m - k * (k + 1) // 2

    @cuda.jit(device=True, inline="always")
    def softmin3(a, b, c, inv_g, g):
        """``-g log(e^{-a/g} + e^{-b/g} + e^{-c/g})``, min-shifted; +inf if all are +inf."""
        r = a
        if b < r:
            r = b
        if c < r:
            r = c
        if r == INF:
            return a + b + c  # +inf, or NaN when one of them is NaN
        s = math.exp((r - a) * inv_g) + math.exp((r - b) * inv_g) + math.exp((r - c) * inv_g)
        return r - g * math.log(s)

    @cuda.jit(device=True, inline="always")
    def cost_at(C0, C1, C2, kind, b, i, j):
        if kind == 0:
            return C0[b, i, j]
        if kind == 1:
            return C1[b, i, j]
        return C2[b, i, j]

    @cuda.jit(device=True, inline="always")
    def store_e(E0, E1, E2, kind, b, i, j, e):
        if kind == 0:
            E0[b, i, j] = e
        elif kind == 1:
            E1[b, i, j] = e
        else:
            E2[b, i, j] = e

    @cuda.jit(device=True, inline="always")
    def band_range(d, n, m, lo, hi):
        """First and last row i of anti-diagonal d inside the grid and the band lo <= j-i <= hi."""
        i_a = max(0, d - m + 1)
        i_b = min(d, n - 1)
        # lo <= d - 2i <= hi  <=>  ceil((d - hi) / 2) <= i <= floor((d - lo) / 2); d - lo >= 0
        x = d - hi
        if x > 0:
            i_a = max(i_a, (x + 1) // 2)
        i_b = min(i_b, (d - lo) // 2)
        return i_a, i_b

    @cuda.jit(device=True, inline="always")
    def sdtw_forward_job(buf, base, slot, C0, C1, C2, Rt, offs, vals, gamma, nbatch,
                         b, kind, n, m, lo, hi, r_off, o_off):
        tid = cuda.threadIdx.x
        nt = cuda.blockDim.x
        inv_g = ONE / gamma
        last = n + m - 2
        o0 = 0.0  # float64 offsets o_d, o_{d-1}, o_{d-2} (every thread keeps the same copy)
        o1 = 0.0
        o2 = 0.0
        if tid == 0:
            offs[o_off] = 0.0
        for d in range(last + 1):
            s1 = DT(o1 - o0)
            s2 = DT(o2 - o0)
            ilo = max(0, d - m + 1)
            ilo1 = max(0, d - m)
            ilo2 = max(0, d - m - 1)
            cur = base + (d % 3) * slot
            prv = base + ((d + 2) % 3) * slot
            pp = base + ((d + 1) % 3) * slot
            st = r_off + dstart(d, n, m) - ilo
            i_a, i_b = band_range(d, n, m, lo, hi)
            i = i_a + tid
            while i <= i_b:
                j = d - i
                c = cost_at(C0, C1, C2, kind, b, i, j)
                if d == 0:
                    r = c
                else:
                    up = INF
                    left = INF
                    diag = INF
                    if i >= 1 and j - i + 1 <= hi:
                        up = buf[prv + i - 1 - ilo1] + s1
                    if j >= 1 and j - i - 1 >= lo:
                        left = buf[prv + i - ilo1] + s1
                    if i >= 1 and j >= 1:
                        diag = buf[pp + i - 1 - ilo2] + s2
                    r = c + softmin3(diag, up, left, inv_g, gamma)
                buf[cur + i - ilo] = r
                Rt[st + i] = r
                i += nt
            cuda.syncthreads()
            if d < last:
                # o_{d+1}: absolute R of the cell of diagonal d nearest the scaled main diagonal
                k = (2 * d * (n - 1) + last) // (2 * last)
                k = min(max(k, i_a), i_b)
                v = buf[cur + k - ilo]
                on = o0
                if math.isfinite(v):
                    on = o0 + np.float64(v)
                o2 = o1
                o1 = o0
                o0 = on
                if tid == 0:
                    offs[o_off + d + 1] = on
        if tid == 0:
            v = buf[base + (last % 3) * slot]  # cell (n-1, m-1): first cell of the last diagonal
            vals[kind * nbatch + b] = o0 + np.float64(v)

    @cuda.jit(device=True, inline="always")
    def sdtw_backward_job(buf, base, slot, E0, E1, E2, Rt, offs, vals, gamma, nbatch,
                          b, kind, n, m, lo, hi, r_off, o_off):
        tid = cuda.threadIdx.x
        nt = cuda.blockDim.x
        inv_g = ONE / gamma
        last = n + m - 2
        value = vals[kind * nbatch + b]
        if math.isnan(value):  # NaN inside the valid block propagates to all of E (reference)
            t = tid
            while t < n * m:
                store_e(E0, E1, E2, kind, b, t // m, t % m, NAN)
                t += nt
            return
        if math.isinf(value):  # no finite path: E = 0 (the output is pre-zeroed)
            return
        for d in range(last, -1, -1):
            ilo = max(0, d - m + 1)
            ilo_n1 = max(0, d - m + 2)
            ilo_n2 = max(0, d - m + 3)
            aw = base + (d % 2) * slot
            ar = base + ((d + 1) % 2) * slot
            bw = base + (2 + d % 2) * slot
            br = base + (2 + (d + 1) % 2) * slot
            cw = base + (4 + d % 3) * slot
            cr = base + (4 + (d + 2) % 3) * slot
            st1 = 0
            st2 = 0
            shift = ZERO
            if d >= 1:
                st1 = r_off + dstart(d - 1, n, m) - max(0, d - m)
            if d >= 2:
                st2 = r_off + dstart(d - 2, n, m) - max(0, d - m - 1)
                shift = DT(offs[o_off + d - 2] - offs[o_off + d - 1])
            i_a, i_b = band_range(d, n, m, lo, hi)
            i = i_a + tid
            while i <= i_b:
                j = d - i
                if d == last:
                    e = ONE
                else:
                    e = ZERO
                    if i + 1 < n and j - i - 1 >= lo:      # successor (i+1, j): its "up" weight
                        e += buf[ar + i + 1 - ilo_n1]
                    if j + 1 < m and j - i + 1 <= hi:      # successor (i, j+1): its "left" weight
                        e += buf[br + i - ilo_n1]
                    if i + 1 < n and j + 1 < m:            # successor (i+1, j+1): its "diag" weight
                        e += buf[cr + i + 1 - ilo_n2]
                store_e(E0, E1, E2, kind, b, i, j, e)
                if d >= 1:
                    ca = ZERO
                    cb = ZERO
                    cc = ZERO
                    if e != ZERO:
                        vu = INF
                        vl = INF
                        vd = INF
                        if i >= 1 and j - i + 1 <= hi:
                            vu = Rt[st1 + i - 1]
                        if j >= 1 and j - i - 1 >= lo:
                            vl = Rt[st1 + i]
                        if i >= 1 and j >= 1:
                            vd = Rt[st2 + i - 1] + shift
                        r = vu
                        if vl < r:
                            r = vl
                        if vd < r:
                            r = vd
                        if r != INF:
                            wu = math.exp((r - vu) * inv_g)
                            wl = math.exp((r - vl) * inv_g)
                            wd = math.exp((r - vd) * inv_g)
                            q = e / (wu + wl + wd)
                            ca = wu * q
                            cb = wl * q
                            cc = wd * q
                    buf[aw + i - ilo] = ca
                    buf[bw + i - ilo] = cb
                    buf[cw + i - ilo] = cc
                i += nt
            cuda.syncthreads()

    # ------------------------------------------------------------------ Soft-DTW kernels

    def fill1d(out, value):
        i = cuda.grid(1)
        if i < out.shape[0]:
            out[i] = value

    def bf16_up(src, dst):
        """float32 bits of bfloat16 bits: the 16 bits moved up (exact)."""
        i = cuda.grid(1)
        while i < src.shape[0]:
            dst[i] = uint32(src[i]) << uint32(16)
            i += cuda.gridsize(1)

    def bf16_down(src, dst):
        """bfloat16 bits of float32 bits, rounded to nearest even (overflow to +-inf; a NaN
        stays a quiet NaN)."""
        i = cuda.grid(1)
        while i < src.shape[0]:
            b = src[i]
            if (b & uint32(0x7FFFFFFF)) > uint32(0x7F800000):
                dst[i] = uint16((b >> uint32(16)) | uint32(0x40))
            else:
                dst[i] = uint16((b + uint32(0x7FFF) + ((b >> uint32(16)) & uint32(1)))
                                >> uint32(16))
            i += cuda.gridsize(1)

    def sdtw_forward(C0, C1, C2, jobs, Rt, offs, vals, live, gamma, slot, use_shared, nbatch):
        job = cuda.blockIdx.x
        sh = cuda.shared.array(0, dtype=NB)
        if use_shared != 0:
            sdtw_forward_job(sh, 0, slot, C0, C1, C2, Rt, offs, vals, gamma, nbatch,
                             jobs[job, 0], jobs[job, 1], jobs[job, 2], jobs[job, 3],
                             jobs[job, 4], jobs[job, 5], jobs[job, 6], jobs[job, 7])
        else:
            sdtw_forward_job(live, job * 3 * slot, slot, C0, C1, C2, Rt, offs, vals, gamma, nbatch,
                             jobs[job, 0], jobs[job, 1], jobs[job, 2], jobs[job, 3],
                             jobs[job, 4], jobs[job, 5], jobs[job, 6], jobs[job, 7])

    def sdtw_backward(E0, E1, E2, jobs, Rt, offs, vals, live, gamma, slot, use_shared, nbatch):
        job = cuda.blockIdx.x
        sh = cuda.shared.array(0, dtype=NB)
        if use_shared != 0:
            sdtw_backward_job(sh, 0, slot, E0, E1, E2, Rt, offs, vals, gamma, nbatch,
                              jobs[job, 0], jobs[job, 1], jobs[job, 2], jobs[job, 3],
                              jobs[job, 4], jobs[job, 5], jobs[job, 6], jobs[job, 7])
        else:
            sdtw_backward_job(live, job * 7 * slot, slot, E0, E1, E2, Rt, offs, vals, gamma,
                              nbatch, jobs[job, 0], jobs[job, 1], jobs[job, 2], jobs[job, 3],
                              jobs[job, 4], jobs[job, 5], jobs[job, 6], jobs[job, 7])

    def sdtw_combine(vals, out, w0, w1, w2, nbatch):
        """``out[b] = w0 v[0, b] + w1 v[1, b] + w2 v[2, b]`` in float64, zero weights skipped."""
        b = cuda.grid(1)
        if b < nbatch:
            acc = 0.0
            if w0 != 0.0:
                acc += w0 * vals[b]
            if w1 != 0.0:
                acc += w1 * vals[nbatch + b]
            if w2 != 0.0:
                acc += w2 * vals[2 * nbatch + b]
            out[b] = DT(acc)

    # ------------------------------------------------------------------ costs and VJPs

    def row_norms(X, nrm, lens):
        """``nrm[b, i] = max(|x_i|, 1e-8)`` for valid rows, 1 for padded rows (never read)."""
        i = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
        b = cuda.blockIdx.y
        if i < X.shape[1]:
            if i < lens[b]:
                s = ZERO
                for k in range(X.shape[2]):
                    x = X[b, i, k]
                    s += x * x
                nrm[b, i] = max(math.sqrt(s), EPS)
            else:
                nrm[b, i] = ONE

    def pair_cost(X, Y, G, P, nx, ny, out, lenx, leny, mode, has_p):
        """Tiled pairwise kernel, ``out`` (B, N, M) from X (B, N, d), Y (B, M, d).

        mode 0: |x - y|^2; 1: clip(1 - xh.yh, 0, 2); 2: G * 1[0 <= 1 - xh.yh <= 2] (the cosine
        VJP mask; may run in place, out is G); 3: |x - y|^2 / 2. ``+ P`` when has_p. Only
        rows < lenx[b] and columns < leny[b] are read; other cells are written as 0."""
        xs = cuda.shared.array((TS, TSP), dtype=NB)
        ys = cuda.shared.array((TS, TSP), dtype=NB)
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        b = cuda.blockIdx.z
        i0 = cuda.blockIdx.y * TS
        j0 = cuda.blockIdx.x * TS
        i = i0 + ty
        j = j0 + tx
        nvx = lenx[b]
        nvy = leny[b]
        d = X.shape[2]
        acc = ZERO
        if i0 < nvx and j0 < nvy:  # uniform over the block
            for k0 in range(0, d, TS):
                k = k0 + tx
                r = i0 + ty
                xv = ZERO
                if r < nvx and k < d:
                    xv = X[b, r, k]
                    if mode == 1 or mode == 2:
                        xv = xv / nx[b, r]
                xs[ty, tx] = xv
                r = j0 + ty
                yv = ZERO
                if r < nvy and k < d:
                    yv = Y[b, r, k]
                    if mode == 1 or mode == 2:
                        yv = yv / ny[b, r]
                ys[ty, tx] = yv
                cuda.syncthreads()
                kmax = min(TS, d - k0)
                if mode == 1 or mode == 2:
                    for kk in range(kmax):
                        acc += xs[ty, kk] * ys[tx, kk]
                else:
                    for kk in range(kmax):
                        df = xs[ty, kk] - ys[tx, kk]
                        acc += df * df
                cuda.syncthreads()
        if i < out.shape[1] and j < out.shape[2]:
            c = ZERO
            if i < nvx and j < nvy:
                if mode == 0:
                    c = acc
                elif mode == 3:
                    c = acc / TWO
                elif mode == 1:
                    c = min(max(ONE - acc, ZERO), TWO)
                else:
                    raw = ONE - acc
                    if raw >= ZERO and raw <= TWO:
                        c = G[b, i, j]
                if has_p != 0:
                    c += P[b, i, j]
            out[b, i, j] = c

    def vjp_gemm(G, A, Bm, nb, out, lena, lenb, trans, mode, coef, accumulate):
        """``out (+)= coef * v`` with, for rows i < lena[b] (else v = 0) and Gt = G or G^T:
        mode 0: ``v_i = 2 (sum_j Gt_ij A_i - sum_j Gt_ij Bm_j)``;
        mode 1: ``v_i = -sum_j Gt_ij Bm_j / nb_j`` (the cosine dXh); j runs over j < lenb[b]."""
        gs = cuda.shared.array((TS, TSP), dtype=NB)
        bs = cuda.shared.array((TS, TSP), dtype=NB)
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        b = cuda.blockIdx.z
        k0 = cuda.blockIdx.x * TS
        i0 = cuda.blockIdx.y * TS
        i = i0 + ty
        k = k0 + tx
        na = lena[b]
        nbv = lenb[b]
        d = A.shape[2]
        acc = ZERO
        rs = ZERO
        if i0 < na:  # uniform over the block
            for j0 in range(0, nbv, TS):
                if trans == 0:
                    r = i0 + ty
                    c = j0 + tx
                    gv = ZERO
                    if r < na and c < nbv:
                        gv = G[b, r, c]
                    gs[ty, tx] = gv
                else:  # Gt[r, c] = G[b, c, r], read along r (coalesced) and stored transposed
                    r = i0 + tx
                    c = j0 + ty
                    gv = ZERO
                    if r < na and c < nbv:
                        gv = G[b, c, r]
                    gs[tx, ty] = gv
                r = j0 + ty
                bv = ZERO
                if r < nbv and k < d:
                    bv = Bm[b, r, k]
                    if mode == 1:
                        bv = bv / nb[b, r]
                bs[ty, tx] = bv
                cuda.syncthreads()
                for jj in range(min(TS, nbv - j0)):
                    g = gs[ty, jj]
                    acc += g * bs[jj, tx]
                    rs += g
                cuda.syncthreads()
        if i < out.shape[1] and k < d:
            v = ZERO
            if i < na:
                if mode == 0:
                    v = TWO * (rs * A[b, i, k] - acc)
                else:
                    v = -acc
            v = coef * v
            if accumulate != 0:
                v += out[b, i, k]
            out[b, i, k] = v

    def cos_epilogue(X, nrm, out, lens):
        """In place: ``out_i = (dxh_i - (xh_i . dxh_i) xh_i) / |x_i|`` (``dxh_i / 1e-8`` where the
        norm floor is active); padded rows 0. Block (lanes, rows): lanes share one row."""
        red = cuda.shared.array(MAXT, dtype=NB)
        lane = cuda.threadIdx.x
        nl = cuda.blockDim.x
        t = cuda.threadIdx.y * nl + lane
        i = cuda.blockIdx.x * cuda.blockDim.y + cuda.threadIdx.y
        b = cuda.blockIdx.y
        d = X.shape[2]
        valid = i < X.shape[1] and i < lens[b]
        dot = ZERO
        if valid:
            nv = nrm[b, i]
            for k in range(lane, d, nl):
                dot += (X[b, i, k] / nv) * out[b, i, k]
        red[t] = dot
        cuda.syncthreads()
        off = nl // 2
        while off > 0:
            if lane < off:
                red[t] += red[t + off]
            cuda.syncthreads()
            off //= 2
        if i < X.shape[1]:
            if valid:
                nv = nrm[b, i]
                dot = red[t - lane]
                for k in range(lane, d, nl):
                    g = out[b, i, k]
                    if nv > EPS:
                        g = g - dot * (X[b, i, k] / nv)
                    out[b, i, k] = g / nv
            else:
                for k in range(lane, d, nl):
                    out[b, i, k] = ZERO

    def any_nan(C, flag):
        """``flag[0] = 1`` if C (B, n, m) holds a NaN (grid-stride over all elements)."""
        total = C.shape[0] * C.shape[1] * C.shape[2]
        nm = C.shape[1] * C.shape[2]
        t = cuda.grid(1)
        step = cuda.gridsize(1)
        while t < total:
            b = t // nm
            r = t - b * nm
            i = r // C.shape[2]
            j = r - i * C.shape[2]
            x = C[b, i, j]
            if x != x:
                flag[0] = 1
            t += step

    # ------------------------------------------------------------------ Sinkhorn kernels

    def ot_prep(src, dst, eps, mode):
        """dst (B, n) from src (1 or B, n): mode 0 ``src/eps`` (log_u = f0/eps), mode 1
        ``exp(src/eps)`` (u = exp(f0/eps))."""
        i = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
        b = cuda.blockIdx.y
        if i < dst.shape[1]:
            bs = b if src.shape[0] > 1 else 0
            x = src[bs, i] / eps
            if mode == 1:
                x = math.exp(x)
            dst[b, i] = x

    def ot_col_lse(C, lu, bw, lv, pm, ps, inv_eps, rows_per, nsplit):
        """Column half-step, online LSE over rows s*rows_per ... of ``lu_i - C_ij/eps``.

        nsplit == 1: ``lv_j = log b_j - LSE`` directly; else partial (max, sum) per split."""
        j = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
        s = cuda.blockIdx.y
        b = cuda.blockIdx.z
        if j >= C.shape[2]:
            return
        i1 = min(C.shape[1], (s + 1) * rows_per)
        mx = NINF
        sm = ZERO
        for i in range(s * rows_per, i1):
            mx, sm = lse_push(mx, sm, lu[b, i] - C[b, i, j] * inv_eps)
        if nsplit == 1:
            lse = NINF
            if mx != NINF:
                lse = mx + math.log(sm)
            lv[b, j] = math.log(bw[b if bw.shape[0] > 1 else 0, j]) - lse
        else:
            pm[b, s, j] = mx
            ps[b, s, j] = sm

    def ot_col_lse_finish(pm, ps, bw, lv, nsplit):
        j = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
        b = cuda.blockIdx.y
        if j >= lv.shape[1]:
            return
        mx = NINF
        for s in range(nsplit):
            mx = max(mx, pm[b, s, j])
        lse = NINF
        if mx != NINF:
            sm = ZERO
            for s in range(nsplit):
                x = pm[b, s, j]
                if x != NINF:
                    sm += ps[b, s, j] * math.exp(x - mx)
            lse = mx + math.log(sm)
        lv[b, j] = math.log(bw[b if bw.shape[0] > 1 else 0, j]) - lse

    def ot_row_lse(C, lv, aw, lu, inv_eps):
        """Row half-step ``lu_i = log a_i - LSE_j(lv_j - C_ij/eps)``; block (lanes, rows)."""
        rm = cuda.shared.array(MAXT, dtype=NB)
        rsum = cuda.shared.array(MAXT, dtype=NB)
        lane = cuda.threadIdx.x
        nl = cuda.blockDim.x
        t = cuda.threadIdx.y * nl + lane
        i = cuda.blockIdx.x * cuda.blockDim.y + cuda.threadIdx.y
        b = cuda.blockIdx.y
        mx = NINF
        sm = ZERO
        if i < C.shape[1]:
            for j in range(lane, C.shape[2], nl):
                mx, sm = lse_push(mx, sm, lv[b, j] - C[b, i, j] * inv_eps)
        rm[t] = mx
        rsum[t] = sm
        lse_merge(rm, rsum, t, lane, nl)
        if lane == 0 and i < C.shape[1]:
            lse = NINF
            if rm[t] != NINF:
                lse = rm[t] + math.log(rsum[t])
            lu[b, i] = math.log(aw[b if aw.shape[0] > 1 else 0, i]) - lse

    def ot_col_ktu(C, u, bw, v, part, inv_eps, rows_per, nsplit, stat, it1):
        """Standard-domain column half-step ``v_j = b_j / sum_i K_ij u_i``, K = exp(-C/eps).
        Skips when an earlier step flagged a numerical error (stat[1] != 0); flags
        ``stat[1] = it1`` when ``K^T u`` has a zero or v is not finite."""
        if stat[1] != 0.0:
            return
        j = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
        s = cuda.blockIdx.y
        b = cuda.blockIdx.z
        if j >= C.shape[2]:
            return
        i1 = min(C.shape[1], (s + 1) * rows_per)
        acc = ZERO
        for i in range(s * rows_per, i1):
            acc += math.exp(-(C[b, i, j] * inv_eps)) * u[b, i]
        if nsplit == 1:
            vj = bw[b if bw.shape[0] > 1 else 0, j] / acc
            if acc == ZERO or not math.isfinite(vj):
                stat[1] = it1
            v[b, j] = vj
        else:
            part[b, s, j] = acc

    def ot_col_ktu_finish(part, bw, v, nsplit, stat, it1):
        if stat[1] != 0.0:
            return
        j = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
        b = cuda.blockIdx.y
        if j >= v.shape[1]:
            return
        acc = ZERO
        for s in range(nsplit):
            acc += part[b, s, j]
        vj = bw[b if bw.shape[0] > 1 else 0, j] / acc
        if acc == ZERO or not math.isfinite(vj):
            stat[1] = it1
        v[b, j] = vj

    def ot_row_kv(C, v, aw, u, inv_eps, stat, it1):
        """Standard-domain row half-step ``u_i = a_i / sum_j K_ij v_j``; flags non-finite u."""
        red = cuda.shared.array(MAXT, dtype=NB)
        skip = cuda.shared.array(1, dtype=int64)
        lane = cuda.threadIdx.x
        nl = cuda.blockDim.x
        t = cuda.threadIdx.y * nl + lane
        if t == 0:
            skip[0] = 1 if stat[1] != 0.0 else 0
        cuda.syncthreads()
        if skip[0] != 0:  # uniform over the block (read once, broadcast)
            return
        i = cuda.blockIdx.x * cuda.blockDim.y + cuda.threadIdx.y
        b = cuda.blockIdx.y
        acc = ZERO
        if i < C.shape[1]:
            for j in range(lane, C.shape[2], nl):
                acc += math.exp(-(C[b, i, j] * inv_eps)) * v[b, j]
        red[t] = acc
        cuda.syncthreads()
        off = nl // 2
        while off > 0:
            if lane < off:
                red[t] += red[t + off]
            cuda.syncthreads()
            off //= 2
        if lane == 0 and i < C.shape[1]:
            ui = aw[b if aw.shape[0] > 1 else 0, i] / red[t]
            if not math.isfinite(ui):
                stat[1] = it1
            u[b, i] = ui

    def ot_colsum(C, s0, s1, part, inv_eps, rows_per, domain):
        """Partial column sums of the plan over a row split: domain 0 (log)
        ``exp(-C/eps + lu_i + lv_j)``, domain 1 (standard) ``u_i K_ij v_j``."""
        j = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
        s = cuda.blockIdx.y
        b = cuda.blockIdx.z
        if j >= C.shape[2]:
            return
        i1 = min(C.shape[1], (s + 1) * rows_per)
        acc = ZERO
        y = s1[b, j]
        if domain == 0:
            for i in range(s * rows_per, i1):
                acc += math.exp((s0[b, i] - C[b, i, j] * inv_eps) + y)
        else:
            for i in range(s * rows_per, i1):
                acc += (s0[b, i] * math.exp(-(C[b, i, j] * inv_eps))) * y
        part[b, s, j] = acc

    def ot_err(part, bw, stat, errout):
        """One block: ``max_b ||sum_s part[b, s, :] - b||_2`` -> stat[0] (float64) and errout[0]."""
        red = cuda.shared.array(MAXT, dtype=NB)
        t = cuda.threadIdx.x
        nt = cuda.blockDim.x
        best = ZERO
        for b in range(part.shape[0]):
            acc = ZERO
            for j in range(t, part.shape[2], nt):
                cs = ZERO
                for s in range(part.shape[1]):
                    cs += part[b, s, j]
                dl = cs - bw[b if bw.shape[0] > 1 else 0, j]
                acc += dl * dl
            red[t] = acc
            cuda.syncthreads()
            off = nt // 2
            while off > 0:
                if t < off:
                    red[t] += red[t + off]
                cuda.syncthreads()
                off //= 2
            e = math.sqrt(red[0])
            if not (e <= best):  # also propagates NaN, like numpy's max
                best = e
            cuda.syncthreads()
        if t == 0:
            stat[0] = np.float64(best)
            errout[0] = best

    def ot_plan(C, s0, s1, P, inv_eps, domain):
        """The plan: domain 0 ``exp(-C/eps + lu_i + lv_j)``, domain 1 ``u_i K_ij v_j``."""
        j = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
        b = cuda.blockIdx.z
        if j < C.shape[2]:
            y = s1[b, j]
            for i in range(cuda.blockIdx.y, C.shape[1], cuda.gridDim.y):
                if domain == 0:
                    P[b, i, j] = math.exp((s0[b, i] - C[b, i, j] * inv_eps) + y)
                else:
                    P[b, i, j] = (s0[b, i] * math.exp(-(C[b, i, j] * inv_eps))) * y

    def ot_potential(src, dst, eps, domain):
        """Potentials from the state: domain 0 ``eps * log_u``, domain 1 ``eps * log(u)``."""
        i = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
        b = cuda.blockIdx.y
        if i < dst.shape[1]:
            x = src[b, i]
            if domain == 1:
                x = math.log(x)
            dst[b, i] = eps * x

    def ot_dual_value(aw, f, bw, g, out):
        """One block per problem: ``<a, f> + <b, g>``."""
        red = cuda.shared.array(MAXT, dtype=NB)
        t = cuda.threadIdx.x
        nt = cuda.blockDim.x
        b = cuda.blockIdx.x
        ba = b if aw.shape[0] > 1 else 0
        bb = b if bw.shape[0] > 1 else 0
        sa = ZERO
        for i in range(t, f.shape[1], nt):
            sa += aw[ba, i] * f[b, i]
        red[t] = sa
        cuda.syncthreads()
        off = nt // 2
        while off > 0:
            if t < off:
                red[t] += red[t + off]
            cuda.syncthreads()
            off //= 2
        sa = red[0]
        cuda.syncthreads()
        sb = ZERO
        for j in range(t, g.shape[1], nt):
            sb += bw[bb, j] * g[b, j]
        red[t] = sb
        cuda.syncthreads()
        off = nt // 2
        while off > 0:
            if t < off:
                red[t] += red[t + off]
            cuda.syncthreads()
            off //= 2
        if t == 0:
            out[b] = sa + red[0]

    def ot_linear_value(C, P, out):
        """``out[b] += sum_ij where(P > 0, P C, 0)`` over a chunk of rows (atomic per block)."""
        red = cuda.shared.array(MAXT, dtype=NB)
        t = cuda.threadIdx.x
        nt = cuda.blockDim.x
        b = cuda.blockIdx.y
        m = C.shape[2]
        total = C.shape[1] * m
        acc = ZERO
        e = cuda.blockIdx.x * nt + t
        while e < total:
            i = e // m
            j = e - i * m
            p = P[b, i, j]
            if p > ZERO:
                acc += p * C[b, i, j]
            e += cuda.gridDim.x * nt
        red[t] = acc
        cuda.syncthreads()
        off = nt // 2
        while off > 0:
            if t < off:
                red[t] += red[t + off]
            cuda.syncthreads()
            off //= 2
        if t == 0:
            cuda.atomic.add(out, b, red[0])

    def ot_center(x, out):
        """One block per problem: ``out = x - mean(x)`` along the last axis."""
        red = cuda.shared.array(MAXT, dtype=NB)
        t = cuda.threadIdx.x
        nt = cuda.blockDim.x
        b = cuda.blockIdx.x
        n = x.shape[1]
        s = ZERO
        for i in range(t, n, nt):
            s += x[b, i]
        red[t] = s
        cuda.syncthreads()
        off = nt // 2
        while off > 0:
            if t < off:
                red[t] += red[t + off]
            cuda.syncthreads()
            off //= 2
        mean = red[0] / DT(n)
        for i in range(t, n, nt):
            out[b, i] = x[b, i] - mean

    def ot_div_combine(v1, v2, v3, out, clamp):
        """``out = v1 - v2/2 - v3/2`` (and ``max(0, .)`` when clamp)."""
        b = cuda.grid(1)
        if b < out.shape[0]:
            s = v1[b] - v2[b] / TWO - v3[b] / TWO
            if clamp != 0 and s < ZERO:
                s = ZERO
            out[b] = s

    # ------------------------------------------------------------------ preference family

    def pref_gemm(A, Bm, B2, C, bias, alpha, beta, ta, tb, has_b2, has_bias):
        """Tiled ``C = alpha op(A) op(Bm + B2) + beta C (+ bias[j])`` (TS x TS threads per tile).

        ``op(A)`` is A (M, K) or A^T (ta = 1, A (K, M)); ``op(B)`` is Bm (K, N) or Bm^T
        (tb = 1, Bm (N, K)); ``B2`` (Bm's shape) is added to every loaded B tile when has_b2
        (the SAM head ``W_b + eps_b``); C is not read when beta == 0. Transposed operands are
        read along their contiguous axis and stored transposed in shared memory."""
        As = cuda.shared.array((TS, TSP), dtype=NB)
        Bs = cuda.shared.array((TS, TSP), dtype=NB)
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        i0 = cuda.blockIdx.y * TS
        j0 = cuda.blockIdx.x * TS
        i = i0 + ty
        j = j0 + tx
        M = C.shape[0]
        N = C.shape[1]
        Kd = A.shape[0] if ta != 0 else A.shape[1]
        acc = ZERO
        for k0 in range(0, Kd, TS):
            if ta == 0:
                r = i0 + ty
                k = k0 + tx
                v = ZERO
                if r < M and k < Kd:
                    v = A[r, k]
                As[ty, tx] = v
            else:
                r = i0 + tx
                k = k0 + ty
                v = ZERO
                if r < M and k < Kd:
                    v = A[k, r]
                As[tx, ty] = v
            if tb == 0:
                k = k0 + ty
                c = j0 + tx
                v = ZERO
                if k < Kd and c < N:
                    v = Bm[k, c]
                    if has_b2 != 0:
                        v += B2[k, c]
                Bs[ty, tx] = v
            else:
                k = k0 + tx
                c = j0 + ty
                v = ZERO
                if k < Kd and c < N:
                    v = Bm[c, k]
                    if has_b2 != 0:
                        v += B2[c, k]
                Bs[tx, ty] = v
            cuda.syncthreads()
            for kk in range(min(TS, Kd - k0)):
                acc += As[ty, kk] * Bs[kk, tx]
            cuda.syncthreads()
        if i < M and j < N:
            v = alpha * acc
            if beta != ZERO:
                v += beta * C[i, j]
            if has_bias != 0:
                v += bias[j]
            C[i, j] = v

    def pref_gather(H, idx, Hc):
        """Compaction: ``Hc[k] = H[idx_k // T, idx_k % T]`` (the tokens with mask = 1)."""
        c = cuda.blockIdx.y * cuda.blockDim.x + cuda.threadIdx.x
        k = cuda.blockIdx.x * cuda.blockDim.y + cuda.threadIdx.y
        if k < Hc.shape[0] and c < Hc.shape[1]:
            p = idx[k]
            r = p // H.shape[1]
            Hc[k, c] = H[r, p - r * H.shape[1], c]

    def pref_scatter(Gc, idx, out):
        """Inverse of pref_gather: ``out[idx_k // T, idx_k % T] = Gc[k]`` (other rows untouched)."""
        c = cuda.blockIdx.y * cuda.blockDim.x + cuda.threadIdx.x
        k = cuda.blockIdx.x * cuda.blockDim.y + cuda.threadIdx.y
        if k < Gc.shape[0] and c < Gc.shape[1]:
            p = idx[k]
            r = p // out.shape[1]
            out[r, p - r * out.shape[1], c] = Gc[k, c]

    def pref_lse_update(Z, y, j0, mx, s, zy):
        """Online LSE of one logit block (rows of Z; vocab columns j0 ...), fused with the
        target-logit gather: per row, ``mx' = max(mx, max Z)``,
        ``s = s e^{mx - mx'} + sum e^{Z - mx'}``, ``zy = Z[y - j0]`` when y is in the block.
        Block (lanes, rows): the lanes of a row stride over its columns, then merge their
        (max, sum) pairs through shared memory."""
        rm = cuda.shared.array(MAXT, dtype=NB)
        rs = cuda.shared.array(MAXT, dtype=NB)
        lane = cuda.threadIdx.x
        nl = cuda.blockDim.x
        t = cuda.threadIdx.y * nl + lane
        i = cuda.blockIdx.x * cuda.blockDim.y + cuda.threadIdx.y
        m = NINF
        sm = ZERO
        if i < Z.shape[0]:
            col = y[i] - j0
            for j in range(lane, Z.shape[1], nl):
                x = Z[i, j]
                if j == col:
                    zy[i] = x
                m, sm = lse_push(m, sm, x)
        rm[t] = m
        rs[t] = sm
        lse_merge(rm, rs, t, lane, nl)
        if lane == 0 and i < Z.shape[0]:
            m_old = mx[i]
            mn = max(m_old, rm[t])
            if mn != NINF:
                s[i] = s[i] * math.exp(m_old - mn) + rs[t] * math.exp(rm[t] - mn)
                mx[i] = mn

    def pref_lse_finish(mx, s, zy, lse, tok):
        """``lse = mx + log s`` and the token log-prob ``tok = z_y - lse``."""
        k = cuda.grid(1)
        if k < lse.shape[0]:
            v = mx[k] + math.log(s[k])
            lse[k] = v
            tok[k] = zy[k] - v

    def pref_grad_block(Z, y, j0, lse, c):
        """In place: ``Z <- c_i (onehot(y_i - j0) - exp(Z - lse_i))`` (the logit gradient)."""
        j = cuda.blockIdx.y * cuda.blockDim.x + cuda.threadIdx.x
        i = cuda.blockIdx.x * cuda.blockDim.y + cuda.threadIdx.y
        if i < Z.shape[0] and j < Z.shape[1]:
            g = -math.exp(Z[i, j] - lse[i])
            if y[i] - j0 == j:
                g += ONE
            Z[i, j] = c[i] * g

    def pref_colsum(G, out):
        """``out[j] += sum_i G[i, j]`` (db of one vocab block), one thread per column."""
        j = cuda.grid(1)
        if j < G.shape[1]:
            acc = ZERO
            for i in range(G.shape[0]):
                acc += G[i, j]
            out[j] += acc

    def pref_seq_sum(tok, starts, out, average):
        """Per-row segment sums of the compacted token log-probs, one block per row (tokens of
        row r are ``starts[r]:starts[r + 1]``; shared-memory tree, blockDim a power of 2);
        divided by the count n_r when average."""
        red = cuda.shared.array(MAXT, dtype=NB)
        t = cuda.threadIdx.x
        nt = cuda.blockDim.x
        r = cuda.blockIdx.x
        k0 = starts[r]
        k1 = starts[r + 1]
        acc = ZERO
        for k in range(k0 + t, k1, nt):
            acc += tok[k]
        red[t] = acc
        cuda.syncthreads()
        off = nt // 2
        while off > 0:
            if t < off:
                red[t] += red[t + off]
            cuda.syncthreads()
            off //= 2
        if t == 0:
            v = red[0]
            if average != 0:
                v = v / DT(k1 - k0)
            out[r] = v

    def pref_token_coef(dlogp, starts, c, average):
        """Per-token coefficient ``c_k = dL/dl_r a_r`` of the row r holding token k
        (a_r = 1, or 1/n_r when average); one block per row, threads over its tokens."""
        r = cuda.blockIdx.x
        k0 = starts[r]
        k1 = starts[r + 1]
        v = dlogp[r]
        if average != 0:
            v = v * (ONE / DT(k1 - k0))
        for k in range(k0 + cuda.threadIdx.x, k1, cuda.blockDim.x):
            c[k] = v

    def pref_dpo(logp, ref, loss, cr, rr, dlogp, beta, ls, loss_type):
        """The DPO losses from (R,) log-probs, one block. Mirrors ``refimpl.preference._dpo``
        (the formula's single source; keep the two identical): h = (l_c - ref_c) - (l_r - ref_r),
        u = beta h; sigmoid (0): loss = (1-ls) softplus(-u) + ls softplus(u),
        kappa = beta (sig(u) - 1 + ls) with sig(u) = exp(-softplus(-u)); hinge (1):
        max(0, 1 - u), kappa = -beta 1[u < 1]; ipo (2): (h - 1/(2 beta))^2,
        kappa = 2 (h - 1/(2 beta)). Writes rewards beta (l - ref), ``dlogp = (+kappa, -kappa)/B``
        and ``loss[0]`` = the mean over pairs (shared-memory tree; blockDim a power of 2)."""
        red = cuda.shared.array(MAXT, dtype=NB)
        t = cuda.threadIdx.x
        nt = cuda.blockDim.x
        B = logp.shape[0] // 2
        Bf = DT(B)
        acc = ZERO
        for i in range(t, B, nt):
            dc = logp[i] - ref[i]
            dr = logp[B + i] - ref[B + i]
            h = dc - dr
            u = beta * h
            if loss_type == 0:
                tail = math.log1p(math.exp(-abs(u)))     # logaddexp(0, +-u) = max(0, +-u) + tail
                sp_neg = max(-u, ZERO) + tail
                sp_pos = max(u, ZERO) + tail
                li = (ONE - ls) * sp_neg + ls * sp_pos
                kappa = beta * (math.exp(-sp_neg) - ONE + ls)
            elif loss_type == 1:
                li = max(ZERO, ONE - u)
                kappa = ZERO
                if u < ONE:
                    kappa = -beta
            else:
                q = h - ONE / (TWO * beta)
                li = q * q
                kappa = TWO * q
            cr[i] = beta * dc
            rr[i] = beta * dr
            dlogp[i] = kappa / Bf
            dlogp[B + i] = -kappa / Bf
            acc += li
        red[t] = acc
        cuda.syncthreads()
        off = nt // 2
        while off > 0:
            if t < off:
                red[t] += red[t + off]
            cuda.syncthreads()
            off //= 2
        if t == 0:
            loss[0] = red[0] / Bf

    def pref_frob_dot(A, Bm, out):
        """``out[0] += sum_ij A_ij Bm_ij`` (grid-stride, shared-memory tree, one atomic per
        block; blockDim a power of 2). ``A is Bm`` gives the squared Frobenius norm."""
        red = cuda.shared.array(MAXT, dtype=NB)
        t = cuda.threadIdx.x
        nt = cuda.blockDim.x
        ncol = A.shape[1]
        total = A.shape[0] * ncol
        acc = ZERO
        e = cuda.blockIdx.x * nt + t
        while e < total:
            i = e // ncol
            j = e - i * ncol
            acc += A[i, j] * Bm[i, j]
            e += cuda.gridDim.x * nt
        red[t] = acc
        cuda.syncthreads()
        off = nt // 2
        while off > 0:
            if t < off:
                red[t] += red[t + off]
            cuda.syncthreads()
            off //= 2
        if t == 0:
            cuda.atomic.add(out, 0, red[0])

    def pref_sam_scale(x, out, ss, nrm, rho, norm_eps):
        """``n = max(sqrt(max(ss[0], 0)), norm_eps)``, ``out = (rho / n) x`` (may be in place),
        ``nrm[0] = n`` — the SAM normalisation without a host read."""
        k = cuda.grid(1)
        nv = max(math.sqrt(max(ss[0], ZERO)), norm_eps)
        if k == 0:
            nrm[0] = nv
        if k < x.shape[0]:
            out[k] = (rho / nv) * x[k]

    def pref_absmul(G, W):
        """In place ``G *= |W|`` (adaptive logits-SAM)."""
        j = cuda.blockIdx.y * cuda.blockDim.x + cuda.threadIdx.x
        i = cuda.blockIdx.x * cuda.blockDim.y + cuda.threadIdx.y
        if i < G.shape[0] and j < G.shape[1]:
            G[i, j] = G[i, j] * abs(W[i, j])

    def pref_cast(src, dst):
        """``dst = src`` converted to this kernel's dtype (``ref_logp`` of the other dtype)."""
        k = cuda.grid(1)
        if k < dst.shape[0]:
            dst[k] = DT(src[k])

    # ------------------------------------------------------------------ cross-tokenizer (ct_*)

    EPS9 = DT(1e-9)            # refimpl._dwa_kd ENT_EPS = JS_EPS = ADAPTIVE_EPS
    HALF = DT(0.5)
    RINT_MAGIC = DT(2.0 ** 23) if dtype == "float32" else DT(2.0 ** 52)

    @cuda.jit(device=True, inline="always")
    def block_sum(red, t, nt, v):
        """Sum of ``v`` over the ``nt`` threads of a block (a power of 2), returned to every
        thread; ``red`` is free again on return. Every thread must call it."""
        red[t] = v
        cuda.syncthreads()
        off = nt // 2
        while off > 0:
            if t < off:
                red[t] += red[t + off]
            cuda.syncthreads()
            off //= 2
        s = red[0]
        cuda.syncthreads()
        return s

    @cuda.jit(device=True, inline="always")
    def block_lse(rm, rs, t, nt, m, sm):
        """Merge every thread's online ``(max, sum)`` pair; returns ``(max, log sum, sum)`` to
        every thread (``(-inf, -inf, 0)`` for an all -inf row), so that ``log softmax(x) =
        (x - max) - log sum`` as scipy forms it. Every thread must call it."""
        rm[t] = m
        rs[t] = sm
        lse_merge(rm, rs, t, t, nt)
        mx = rm[0]
        s = rs[0]
        cuda.syncthreads()
        ls = NINF
        if s > ZERO:
            ls = math.log(s)
        return mx, ls, s

    @cuda.jit(device=True, inline="always")
    def kd_term(kind, p, lp, q, lq, l):
        """Per-entry term of divergence ``kind`` 0-4 (refimpl._dwa_kd._div_terms)."""
        if kind == 0:
            return q * (lq - lp)
        if kind == 1:
            return p * (lp - lq)
        if kind == 2:
            return q * (lq - math.log(l * q + (ONE - l) * p))
        if kind == 3:
            return p * (lp - math.log((ONE - l) * q + l * p))
        m = (p + q) / TWO
        lm = math.log(m + EPS9)
        return HALF * (q * (math.log(q + EPS9) - lm) + p * (math.log(p + EPS9) - lm))

    @cuda.jit(device=True, inline="always")
    def kd_g(kind, p, lp, q, lq, l):
        """``g = df/dp`` of kinds 1-4 (refimpl._dwa_kd._dfdp)."""
        if kind == 1:
            return lp - lq + ONE
        if kind == 2:
            ms = l * q + (ONE - l) * p
            return -(ONE - l) * q / ms
        if kind == 3:
            ms = (ONE - l) * q + l * p
            return lp + ONE - math.log(ms) - l * p / ms
        m = (p + q) / TWO
        return HALF * (math.log(p + EPS9) + p / (p + EPS9) - math.log(m + EPS9)
                       - (p + q) / (TWO * (m + EPS9)))

    KEY_LOW = 29 if dtype == "float32" else 0   # q_key's fraction bits a float32 never sets
    KEY_SCALE = DT(2.0 ** (53 - KEY_LOW))        # frexp's fraction times this is an integer

    @cuda.jit(device=True, inline="always")
    def q_key(q):
        """An int64 that orders as the probability ``q >= 0`` does: 0 for q = 0, else the
        IEEE-754 layout of q (biased exponent above the 52-bit fraction) rebuilt from
        ``frexp`` (subnormals normalised), the same for float32 and float64 q."""
        if q == ZERO:
            return int64(0)
        m, e = math.frexp(q)
        return ((int64(e) + int64(1075)) * int64(4503599627370496)
                + ((int64(m * KEY_SCALE) << KEY_LOW) - int64(4503599627370496)))

    @cuda.jit(device=True, inline="always")
    def akl_mass(zt, i, nv, tau, tt, mxt, lst, ka, kb, red, t, nt):
        """Block-wide ``sum q_w`` over the entries w of row i with ``(q_key(q_w), w) <=
        (ka, kb)``; every thread must call it."""
        s = ZERO
        for w in range(t, nv, nt):
            qw = math.exp((zt[i, w] / tau / tt - mxt) - lst)
            kw = q_key(qw)
            if kw < ka or (kw == ka and w <= kb):
                s += qw
        return block_sum(red, t, nt, s)

    @cuda.jit(device=True, inline="always")
    def akl_cut(zt, i, nv, tau, tt, mxt, lst, alpha, red, t, nt):
        """The adaptive-KL tail of row i: the largest ``(key, index)`` (lexicographic, the
        order of a stable ascending sort of q) whose mass ``akl_mass`` is <= alpha, built bit
        by bit (the key bits that can be set, 63 in float64 and 34 in float32, then the index
        bits: a fixed number of passes over the row instead of a sort), or
        (-1, -1) when not even the first entry fits. The mass is summed in index order, not
        in sorted order: an entry within rounding of alpha may fall on the other side than in
        the reference. Every thread must call it."""
        ka = int64(0)
        kb = int64(0)
        if akl_mass(zt, i, nv, tau, tt, mxt, lst, ka, kb, red, t, nt) > alpha:
            return int64(-1), int64(-1)
        bit = int64(62)
        while bit >= KEY_LOW:
            ya = ka | (int64(1) << bit)
            if akl_mass(zt, i, nv, tau, tt, mxt, lst, ya, int64(0), red, t, nt) <= alpha:
                ka = ya
            bit -= 1
        bit = int64(0)
        while (int64(1) << (bit + 1)) <= nv - 1:
            bit += 1
        while bit >= 0:
            yb = kb | (int64(1) << bit)
            if akl_mass(zt, i, nv, tau, tt, mxt, lst, ka, yb, red, t, nt) <= alpha:
                kb = yb
            bit -= 1
        return ka, kb

    def ct_kd(zs, zt, div, dz, tau, tt, skew, alpha, kind, need_grad):
        """Per-row KD divergence (and its gradient w.r.t. z_s), one block per row of (rows, V):
        ``p = softmax(z_s / tau)``, ``q = softmax(z_t / tau / tt)`` from online (max, sum)
        pairs; kind 0 fkl, 1 rkl, 2 skewed fkl, 3 skewed rkl, 4 js, 5 adaptive. An entry whose
        scaled logit is infinite adds 0 (student's for fkl, either for the others). Adaptive:
        the tail (stable-ascending-sort cumsum of q <= alpha) is every entry up to the cut of
        :func:`akl_cut` in (q, index) order. Gradient (``need_grad``):
        ``dz = p (g - <p, g>) / tau``, fkl ``(p - q) / tau``."""
        rm = cuda.shared.array(MAXT, dtype=NB)
        rs = cuda.shared.array(MAXT, dtype=NB)
        red = cuda.shared.array(MAXT, dtype=NB)
        t = cuda.threadIdx.x
        nt = cuda.blockDim.x
        i = cuda.blockIdx.x
        nv = zs.shape[1]
        m1 = NINF
        s1 = ZERO
        m2 = NINF
        s2 = ZERO
        for v in range(t, nv, nt):
            m1, s1 = lse_push(m1, s1, zs[i, v] / tau)
            m2, s2 = lse_push(m2, s2, zt[i, v] / tau / tt)
        mxs, lss, _ = block_lse(rm, rs, t, nt, m1, s1)
        mxt, lst, _ = block_lse(rm, rs, t, nt, m2, s2)
        wh = ZERO
        wt = ZERO
        if kind == 5:
            ka, kb = akl_cut(zt, i, nv, tau, tt, mxt, lst, alpha, red, t, nt)
            gh = ZERO
            gl = ZERO
            for v in range(t, nv, nt):
                qv = math.exp((zt[i, v] / tau / tt - mxt) - lst)
                pv = math.exp((zs[i, v] / tau - mxs) - lss)
                kv = q_key(qv)
                if kv < ka or (kv == ka and v <= kb):
                    gl += abs(qv - pv)
                else:
                    gh += abs(qv - pv)
            gh = block_sum(red, t, nt, gh)
            gl = block_sum(red, t, nt, gl)
            den = max(gh + gl, EPS9)
            wh = gh / den
            wt = gl / den
        acc = ZERO
        acc2 = ZERO
        pgs = ZERO
        for v in range(t, nv, nt):
            xs = zs[i, v] / tau
            xt = zt[i, v] / tau / tt
            lp = (xs - mxs) - lss
            lq = (xt - mxt) - lst
            p = math.exp(lp)
            q = math.exp(lq)
            inf_s = math.isinf(xs)
            both = inf_s or math.isinf(xt)
            if kind == 0:
                if not inf_s:
                    acc += kd_term(0, p, lp, q, lq, skew)
            elif kind == 5:
                if not inf_s:
                    acc += kd_term(0, p, lp, q, lq, skew)
                if not both:
                    acc2 += kd_term(1, p, lp, q, lq, skew)
                if need_grad != 0:
                    pgs += p * kd_g(1, p, lp, q, lq, skew)
            else:
                if not both:
                    acc += kd_term(kind, p, lp, q, lq, skew)
                if need_grad != 0:
                    pgs += p * kd_g(kind, p, lp, q, lq, skew)
        acc = block_sum(red, t, nt, acc)
        if kind == 5:
            acc2 = block_sum(red, t, nt, acc2)
        if t == 0:
            if kind == 5:
                div[i] = wh * acc + wt * acc2
            else:
                div[i] = acc
        if need_grad != 0:
            sg = block_sum(red, t, nt, pgs)
            for v in range(t, nv, nt):
                lp = (zs[i, v] / tau - mxs) - lss
                lq = (zt[i, v] / tau / tt - mxt) - lst
                p = math.exp(lp)
                q = math.exp(lq)
                if kind == 0:
                    d = (p - q) / tau
                elif kind == 5:
                    d = (wh * ((p - q) / tau)
                         + wt * (p * (kd_g(1, p, lp, q, lq, skew) - sg) / tau))
                else:
                    d = p * (kd_g(kind, p, lp, q, lq, skew) - sg) / tau
                dz[i, v] = d

    def ct_rowstat(z, mu, out, c1, mode):
        """Per position (n, b) of logits (B, N, V), one block: softmax at tau = 1, then
        mode 0 entropy ``-sum p log(p + 1e-9)``; 1 certainty ``clip(1 - H / c1, 0, 1)``
        (c1 = log V + 1e-9); 2 gate ``max p * c1 * mu`` (c1 = the warm-up ramp)."""
        rm = cuda.shared.array(MAXT, dtype=NB)
        rs = cuda.shared.array(MAXT, dtype=NB)
        red = cuda.shared.array(MAXT, dtype=NB)
        t = cuda.threadIdx.x
        nt = cuda.blockDim.x
        n = cuda.blockIdx.x
        b = cuda.blockIdx.y
        nv = z.shape[2]
        m1 = NINF
        s1 = ZERO
        for v in range(t, nv, nt):
            m1, s1 = lse_push(m1, s1, z[b, n, v])
        mx, _, sm = block_lse(rm, rs, t, nt, m1, s1)
        if mode == 2:
            if t == 0:
                out[b, n] = (ONE / sm) * c1 * mu[b, n]
            return
        h = ZERO
        for v in range(t, nv, nt):
            p = math.exp(z[b, n, v] - mx) / sm
            h += p * math.log(p + EPS9)
        h = -block_sum(red, t, nt, h)
        if t == 0:
            if mode == 0:
                out[b, n] = h
            else:
                out[b, n] = min(max(ONE - h / c1, ZERO), ONE)

    def ct_rownorm(stat, mu, out):
        """``out = n_row w / (sum w + 1e-9)``, ``w = stat mu``, ``n_row = max(sum mu, 1)``;
        one block per row b."""
        red = cuda.shared.array(MAXT, dtype=NB)
        t = cuda.threadIdx.x
        nt = cuda.blockDim.x
        b = cuda.blockIdx.x
        nn = stat.shape[1]
        sw = ZERO
        sc = ZERO
        for n in range(t, nn, nt):
            sw += stat[b, n] * mu[b, n]
            sc += mu[b, n]
        sw = block_sum(red, t, nt, sw)
        sc = block_sum(red, t, nt, sc)
        f = max(sc, ONE) / (sw + EPS9)
        for n in range(t, nn, nt):
            out[b, n] = stat[b, n] * mu[b, n] * f

    def ct_band(A, ln, lm, P, alpha, w0, kappa, rho):
        """Soft band of block b, row i (one block each): ``Ab = (A + 1e-9) / (sum_j A + 1e-9)``
        over j < m_b, ``h = -sum Ab log Ab``, ``c = alpha sum j Ab + (1 - alpha) i m / n``,
        ``P = rho 1[|j - c| > w0 + kappa h]``; 0 outside the (n_b, m_b) block."""
        red = cuda.shared.array(MAXT, dtype=NB)
        t = cuda.threadIdx.x
        nt = cuda.blockDim.x
        i = cuda.blockIdx.x
        b = cuda.blockIdx.y
        n = ln[b]
        m = lm[b]
        mm = P.shape[2]
        if i >= n:
            for j in range(t, mm, nt):
                P[b, i, j] = ZERO
            return
        s = ZERO
        for j in range(t, m, nt):
            s += A[b, i, j]
        den = block_sum(red, t, nt, s) + EPS9
        h = ZERO
        cj = ZERO
        for j in range(t, m, nt):
            ab = (A[b, i, j] + EPS9) / den
            h += ab * math.log(ab)
            cj += ab * DT(j)
        h = -block_sum(red, t, nt, h)
        cj = block_sum(red, t, nt, cj)
        centre = alpha * cj + (ONE - alpha) * DT(i) * (DT(m) / DT(n))
        width = w0 + kappa * h
        for j in range(t, mm, nt):
            v = ZERO
            if j < m and abs(DT(j) - centre) > width:
                v = rho
            P[b, i, j] = v

    def ct_gather_rows(X, idx, lens, out):
        """``out[b, k] = X[b, idx[b, k]]`` for k < lens[b], else 0; block (k, b), threads over d."""
        k = cuda.blockIdx.x
        b = cuda.blockIdx.y
        for c in range(cuda.threadIdx.x, out.shape[2], cuda.blockDim.x):
            v = ZERO
            if k < lens[b]:
                v = X[b, idx[b, k], c]
            out[b, k, c] = v

    def ct_gather_block(A, ix, jx, ln, lm, out):
        """``out[b, i, j] = A[b, ix[b, i], jx[b, j]]`` inside the (ln[b], lm[b]) block, else 0."""
        i = cuda.blockIdx.x
        b = cuda.blockIdx.y
        for j in range(cuda.threadIdx.x, out.shape[2], cuda.blockDim.x):
            v = ZERO
            if i < ln[b] and j < lm[b]:
                v = A[b, ix[b, i], jx[b, j]]
            out[b, i, j] = v

    def ct_scatter_rows(G, idx, lens, out):
        """Inverse of ct_gather_rows: ``out[b, idx[b, k]] = G[b, k]`` for k < lens[b]."""
        k = cuda.blockIdx.x
        b = cuda.blockIdx.y
        if k < lens[b]:
            r = idx[b, k]
            for c in range(cuda.threadIdx.x, out.shape[2], cuda.blockDim.x):
                out[b, r, c] = G[b, k, c]

    def ct_sum(x, out):
        """``out[0] = sum x`` (one block, shared-memory tree; blockDim a power of 2)."""
        red = cuda.shared.array(MAXT, dtype=NB)
        t = cuda.threadIdx.x
        nt = cuda.blockDim.x
        acc = ZERO
        for k in range(t, x.shape[0], nt):
            acc += x[k]
        acc = block_sum(red, t, nt, acc)
        if t == 0:
            out[0] = acc

    def ct_span_sum(x, seg, out, cnt, need_cnt):
        """Segment sums by atomics: ``out[r, seg[r, k]] += x[r, k]`` (and ``cnt += 1``), seg -1
        skipped; a (1, K) seg is shared by every row. 2-D grid: rows on x, token blocks on y."""
        k = cuda.blockIdx.y * cuda.blockDim.x + cuda.threadIdx.x
        r = cuda.blockIdx.x
        if k >= x.shape[1]:
            return
        rs_ = r if seg.shape[0] > 1 else 0
        s = seg[rs_, k]
        if s >= 0:
            cuda.atomic.add(out, (r, s), x[r, k])
            if need_cnt != 0:
                cuda.atomic.add(cnt, (r, s), ONE)

    def ct_span_scale(out, cnt, inv_width, mode):
        """In place: mode 1 ``out / count`` (0 for an empty span), mode 2 ``out * inv_width``."""
        j = cuda.blockIdx.y * cuda.blockDim.x + cuda.threadIdx.x
        r = cuda.blockIdx.x
        if j >= out.shape[1]:
            return
        if mode == 1:
            c = cnt[r, j]
            f = ZERO
            if c > ZERO:
                f = ONE / c
            out[r, j] = out[r, j] * f
        else:
            out[r, j] = out[r, j] * inv_width

    def ct_span_weights(pos, neg, mu, out, k, lo, hi, scale, rnd):
        """``w = k exp(mu clip(pos - neg, lo, hi))``; with rnd, ``rint(w scale) / scale``
        (round half to even, as numpy.round); ``mu`` (rows or 1, cols or 1) broadcasts."""
        j = cuda.blockIdx.y * cuda.blockDim.x + cuda.threadIdx.x
        r = cuda.blockIdx.x
        if j >= out.shape[1]:
            return
        d = min(max(pos[r, j] - neg[r, j], lo), hi)
        m = mu[r if mu.shape[0] > 1 else 0, j if mu.shape[1] > 1 else 0]
        w = k * math.exp(m * d)
        if rnd != 0:
            y = w * scale
            ay = abs(y)
            if ay < RINT_MAGIC:      # ties to even by the FPU's rounding of ay + 2^(p-1)
                ry = (ay + RINT_MAGIC) - RINT_MAGIC
                if y < ZERO:
                    ry = -ry
                y = ry
            w = y / scale
        out[r, j] = w

    def ct_ctpd_rows(ellS, ellT, w, logp, ref):
        """``logp_i = sum_r w ellS``, ``ref_i = sum_r w ellT`` (one block per row)."""
        red = cuda.shared.array(MAXT, dtype=NB)
        t = cuda.threadIdx.x
        nt = cuda.blockDim.x
        i = cuda.blockIdx.x
        a = ZERO
        c = ZERO
        for r in range(t, ellS.shape[1], nt):
            a += w[i, r] * ellS[i, r]
            c += w[i, r] * ellT[i, r]
        a = block_sum(red, t, nt, a)
        c = block_sum(red, t, nt, c)
        if t == 0:
            logp[i] = a
            ref[i] = c

    def ct_row_scale(dl, w, out):
        """``out[i, r] = dl[i] w[i, r]`` (the CTPD gradient)."""
        j = cuda.blockIdx.y * cuda.blockDim.x + cuda.threadIdx.x
        i = cuda.blockIdx.x
        if j < out.shape[1]:
            out[i, j] = dl[i] * w[i, j]

    def ct_tis_tok(z, zr, y, wts, m, a, kt, om, st):
        """Per token (t, r), one block: ``om = weights m``; where m = 1, ``a = log p(y) -
        log q(y)``, ``kt = sum p (log p - log q)`` and the softmax statistics
        ``st = (max_p, log sum_p, max_q, log sum_q)`` for the gradient (0 where m = 0)."""
        rm = cuda.shared.array(MAXT, dtype=NB)
        rs = cuda.shared.array(MAXT, dtype=NB)
        red = cuda.shared.array(MAXT, dtype=NB)
        t = cuda.threadIdx.x
        nt = cuda.blockDim.x
        tk = cuda.blockIdx.x
        r = cuda.blockIdx.y
        nv = z.shape[2]
        if m[r, tk] == ZERO:        # uniform over the block
            if t == 0:
                om[r, tk] = wts[r, tk] * m[r, tk]
                a[r, tk] = ZERO
                kt[r, tk] = ZERO
                for c in range(4):
                    st[r, tk, c] = ZERO
            return
        m1 = NINF
        s1 = ZERO
        m2 = NINF
        s2 = ZERO
        for v in range(t, nv, nt):
            m1, s1 = lse_push(m1, s1, z[r, tk, v])
            m2, s2 = lse_push(m2, s2, zr[r, tk, v])
        mxp, lsp, _ = block_lse(rm, rs, t, nt, m1, s1)
        mxq, lsq, _ = block_lse(rm, rs, t, nt, m2, s2)
        acc = ZERO
        for v in range(t, nv, nt):
            lp = (z[r, tk, v] - mxp) - lsp
            lq = (zr[r, tk, v] - mxq) - lsq
            acc += math.exp(lp) * (lp - lq)
        acc = block_sum(red, t, nt, acc)
        if t == 0:
            yv = y[r, tk]
            a[r, tk] = ((z[r, tk, yv] - mxp) - lsp) - ((zr[r, tk, yv] - mxq) - lsq)
            kt[r, tk] = acc
            om[r, tk] = wts[r, tk] * m[r, tk]
            st[r, tk, 0] = mxp
            st[r, tk, 1] = lsp
            st[r, tk, 2] = mxq
            st[r, tk, 3] = lsq

    def ct_tis_rows(a, kt, om, logp, rew, aeff, beta, token_level):
        """Per row (one block): ``u = sum om a``, ``Kr = sum om kt``; ``logp = u - aeff Kr``
        (the DPO input), rewards ``beta (u - Kr)`` (token_level) or ``beta u``."""
        red = cuda.shared.array(MAXT, dtype=NB)
        t = cuda.threadIdx.x
        nt = cuda.blockDim.x
        r = cuda.blockIdx.x
        u = ZERO
        kr = ZERO
        for k in range(t, a.shape[1], nt):
            u += om[r, k] * a[r, k]
            kr += om[r, k] * kt[r, k]
        u = block_sum(red, t, nt, u)
        kr = block_sum(red, t, nt, kr)
        if t == 0:
            logp[r] = u - aeff * kr
            if token_level != 0:
                rew[r] = beta * (u - kr)
            else:
                rew[r] = beta * u

    def ct_tis_grad(z, zr, y, om, st, kt, dlogp, dz, aeff):
        """``dz = (g_r om) [(e_y - p) - aeff p (log p - log q - kt)]`` per token (t, r), one
        block, threads over the vocabulary; 0 where om = 0."""
        tk = cuda.blockIdx.x
        r = cuda.blockIdx.y
        nv = z.shape[2]
        c = dlogp[r] * om[r, tk]
        if om[r, tk] == ZERO:
            for v in range(cuda.threadIdx.x, nv, cuda.blockDim.x):
                dz[r, tk, v] = ZERO
            return
        mxp = st[r, tk, 0]
        lsp = st[r, tk, 1]
        mxq = st[r, tk, 2]
        lsq = st[r, tk, 3]
        k = kt[r, tk]
        yv = y[r, tk]
        for v in range(cuda.threadIdx.x, nv, cuda.blockDim.x):
            lp = (z[r, tk, v] - mxp) - lsp
            lq = (zr[r, tk, v] - mxq) - lsq
            p = math.exp(lp)
            e = ZERO
            if v == yv:
                e = ONE
            dz[r, tk, v] = c * ((e - p) - aeff * (p * (lp - lq - k)))

    # ------------------------------------------------------------------ Inf-SSM (iss_*)
    # backends/numba_cuda/inf_ssm.py (its module docstring: the kernels' work split and the
    # code distance's cancellation-free form); iss_scan_stats/iss_scan_sum reduce by block_sum.

    AC_RTOL = DT(ISS_ALLCLOSE_RTOL)
    AC_ATOL = DT(ISS_ALLCLOSE_ATOL)

    @cuda.jit(device=True, inline="always")
    def chol(A, n):
        """In-place lower Cholesky of the leading n x n block of ``A`` (lower triangle read);
        False at a pivot that is not > 0 (or NaN), as LAPACK ``potrf``."""
        for j in range(n):
            s = A[j, j]
            for k in range(j):
                s -= A[j, k] * A[j, k]
            if not (s > ZERO):
                return False
            ljj = math.sqrt(s)
            A[j, j] = ljj
            for i in range(j + 1, n):
                t = A[i, j]
                for k in range(j):
                    t -= A[i, k] * A[j, k]
                A[i, j] = t / ljj
        return True

    @cuda.jit(device=True, inline="always")
    def gram_lower(A, x, y, s, n, eps):
        """Lower triangle of ``G = y y^T / (1 - x x^T) + eps I`` of system s into A."""
        for i in range(n):
            xi = x[s, i]
            yi = y[s, i]
            for k in range(i + 1):
                A[i, k] = (yi * y[s, k]) / (ONE - xi * x[s, k])
            A[i, i] += eps

    def iss_stats(X, out):
        """``out[0] = max(out[0], any non-finite)``, ``out[1] = max(out[1], max finite |x|)``."""
        rf = cuda.shared.array(ISS_RED, NB)
        rm = cuda.shared.array(ISS_RED, NB)
        t = cuda.threadIdx.x
        nt = cuda.blockDim.x
        cols = X.shape[1]
        total = X.shape[0] * cols
        bad = ZERO
        mx = ZERO
        i = cuda.blockIdx.x * nt + t
        stride = nt * cuda.gridDim.x
        while i < total:
            v = abs(X[i // cols, i % cols])
            if v < INF:
                if v > mx:
                    mx = v
            else:
                bad = ONE
            i += stride
        rf[t] = bad
        rm[t] = mx
        cuda.syncthreads()
        off = nt // 2
        while off > 0:
            if t < off:
                if rf[t + off] > rf[t]:
                    rf[t] = rf[t + off]
                if rm[t + off] > rm[t]:
                    rm[t] = rm[t + off]
            cuda.syncthreads()
            off //= 2
        if t == 0:
            cuda.atomic.max(out, 0, rf[0])
            cuda.atomic.max(out, 1, rm[0])

    def iss_gram(a, C1, b, C2, G):
        """``G[s, i, j] = sum_k C1[s,k,i] C2[s,k,j] / (1 - a_si b_sj)``, one thread per entry."""
        n1 = a.shape[1]
        n2 = b.shape[1]
        p = C1.shape[1]
        total = a.shape[0] * n1 * n2
        idx = cuda.grid(1)
        stride = cuda.gridsize(1)
        while idx < total:
            j = idx % n2
            r = idx // n2
            i = r % n1
            s = r // n1
            q = ZERO
            for k in range(p):
                q += C1[s, k, i] * C2[s, k, j]
            G[s, i, j] = q / (ONE - a[s, i] * b[s, j])
            idx += stride

    @cuda.jit(device=True, inline="always")
    def stein_weight(x, y, s, k):
        """``y_k^2 / (1 - x_k^2)`` of system s: ``u_i`` (x, y = a, c) or ``v_j`` (b, e)."""
        xk = x[s, k]
        yk = y[s, k]
        return (yk * yk) / (ONE - xk * xk)

    @cuda.jit(device=True, inline="always")
    def stein_pole_sums(xi, y, ey, wl, s, n):
        """One pole ``xi`` against the n poles ``y`` of system s (weights ``w_k`` of ``(y, ey)``,
        cached in ``wl`` below ISS_NCACHE): ``(sum_k w_k rho_k^2, sum_k ey_k^2 rho_k / D_k^2)``
        with ``D_k = 1 - xi y_k``, ``rho_k = (xi - y_k) / D_k``. Rows (xi = a_i against b) and
        columns (xi = b_j against a, where rho changes sign) of the gradient use it alike."""
        p = ZERO
        t = ZERO
        for k in range(n):
            yk = y[s, k]
            ek = ey[s, k]
            inv = ONE / (ONE - xi * yk)
            rho = (xi - yk) * inv
            wk = wl[k] if k < ISS_NCACHE else stein_weight(y, ey, s, k)
            p += wk * (rho * rho)
            t += (ek * ek) * (rho * inv * inv)
        return p, t

    def iss_code(a, c, b, e, d):
        """The fused code distance, one thread per system (grid-stride), cancellation-free:
        ``d = sum_i u_i p_i / (U V)``, ``p_i = sum_j v_j rho_ij^2`` (inf_ssm.py's docstring)."""
        vl = cuda.local.array(ISS_NCACHE, NB)     # v_j, j < ISS_NCACHE (recomputed beyond)
        M = a.shape[0]
        n1 = a.shape[1]
        n2 = b.shape[1]
        s = cuda.grid(1)
        stride = cuda.gridsize(1)
        while s < M:
            V = ZERO
            for j in range(n2):
                vj = stein_weight(b, e, s, j)
                if j < ISS_NCACHE:
                    vl[j] = vj
                V += vj
            U = ZERO
            P = ZERO
            for i in range(n1):
                ai = a[s, i]
                p = ZERO
                for j in range(n2):
                    bj = b[s, j]
                    rho = (ai - bj) / (ONE - ai * bj)
                    vj = vl[j] if j < ISS_NCACHE else stein_weight(b, e, s, j)
                    p += vj * (rho * rho)
                ui = stein_weight(a, c, s, i)
                U += ui
                P += ui * p
            d[s] = P / (U * V)
            s += stride

    def iss_code_grad(a, c, b, e, d, da, dc, db, de, scale, rows_per, want_b):
        """Code distance and its gradient, one thread per system (grid-stride), in the
        cancellation-free form (inf_ssm.py's docstring); gradients of system s scaled by
        ``scale[s // rows_per]``; db, de only with ``want_b``."""
        ul = cuda.local.array(ISS_NCACHE, NB)     # u_i, i < ISS_NCACHE (recomputed beyond)
        vl = cuda.local.array(ISS_NCACHE, NB)     # v_j, j < ISS_NCACHE
        M = a.shape[0]
        n1 = a.shape[1]
        n2 = b.shape[1]
        s = cuda.grid(1)
        stride = cuda.gridsize(1)
        while s < M:
            g = scale[s // rows_per]
            V = ZERO
            for j in range(n2):
                vj = stein_weight(b, e, s, j)
                if j < ISS_NCACHE:
                    vl[j] = vj
                V += vj
            U = ZERO
            P = ZERO
            for i in range(n1):                       # pass 1: d, row sums (parked)
                # sum_j v_j rho_ij^2 and sum_j e_j^2 (a_i - b_j) / D_ij^3
                p, t = stein_pole_sums(a[s, i], b, e, vl, s, n2)
                ui = stein_weight(a, c, s, i)
                if i < ISS_NCACHE:
                    ul[i] = ui
                U += ui
                P += ui * p
                dc[s, i] = p
                da[s, i] = t
            W = U * V
            dist = P / W
            d[s] = dist
            if g == ZERO:                             # a shortcut scan: exact zeros
                for i in range(n1):
                    da[s, i] = ZERO
                    dc[s, i] = ZERO
                if want_b != 0:
                    for j in range(n2):
                        db[s, j] = ZERO
                        de[s, j] = ZERO
                s += stride
                continue
            f = g * (TWO / W)                         # 2 g / W
            dV = dist * V
            for i in range(n1):
                ai = a[s, i]
                ci = c[s, i]
                ia = ONE / (ONE - ai * ai)
                x = dc[s, i] - dV                     # sum_j v_j (rho_ij^2 - d)
                dc[s, i] = f * (ci * ia * x)
                da[s, i] = f * ((ci * ci * ia) * (ai * ia * x + da[s, i]))
            if want_b != 0:                           # pass 2: column sums, db, de
                dU = dist * U
                for j in range(n2):
                    bj = b[s, j]
                    ej = e[s, j]
                    # sum_i u_i rho_ij^2 and sum_i c_i^2 (b_j - a_i) / D_ij^3
                    q, t = stein_pole_sums(bj, a, c, ul, s, n1)
                    ib = ONE / (ONE - bj * bj)
                    y = q - dU                        # sum_i u_i (rho_ij^2 - d)
                    de[s, j] = f * (ej * ib * y)
                    db[s, j] = f * ((ej * ej * ib) * (bj * ib * y + t))
            s += stride

    def iss_principled(a, c, b, e, d, fail, eps, variant):
        """Projection (variant 0) / Martin (1) distance by per-thread Cholesky (n <= ISS_NMAX)."""
        L1 = cuda.local.array((ISS_NMAX, ISS_NMAX), NB)
        L2 = cuda.local.array((ISS_NMAX, ISS_NMAX), NB)
        Z = cuda.local.array((ISS_NMAX, ISS_NMAX), NB)
        M = a.shape[0]
        n1 = a.shape[1]
        n2 = b.shape[1]
        s = cuda.grid(1)
        stride = cuda.gridsize(1)
        while s < M:
            gram_lower(L1, a, c, s, n1, eps)
            if not chol(L1, n1):
                cuda.atomic.min(fail, 0, 2 * s)
                d[s] = NAN
                s += stride
                continue
            gram_lower(L2, b, e, s, n2, eps)
            if not chol(L2, n2):
                cuda.atomic.min(fail, 0, 2 * s + 1)
                d[s] = NAN
                s += stride
                continue
            for i in range(n1):                       # Z = G12
                ai = a[s, i]
                ci = c[s, i]
                for j in range(n2):
                    Z[i, j] = (ci * e[s, j]) / (ONE - ai * b[s, j])
            for j in range(n2):                       # Z <- L1^-1 Z (columns)
                for i in range(n1):
                    t = Z[i, j]
                    for k in range(i):
                        t -= L1[i, k] * Z[k, j]
                    Z[i, j] = t / L1[i, i]
            for i in range(n1):                       # Z <- Z L2^-T (rows)
                for j in range(n2):
                    t = Z[i, j]
                    for k in range(j):
                        t -= L2[j, k] * Z[i, k]
                    Z[i, j] = t / L2[j, j]
            if variant == 0:
                fro = ZERO
                for i in range(n1):
                    for j in range(n2):
                        fro += Z[i, j] * Z[i, j]
                kk = n1 if n1 < n2 else n2
                d[s] = DT(kk) - fro
            else:
                if n1 <= n2:                          # W = Z Z^T (n1 x n1) into L1
                    kk = n1
                    for i in range(n1):
                        for k in range(i + 1):
                            t = ZERO
                            for j in range(n2):
                                t += Z[i, j] * Z[k, j]
                            L1[i, k] = t
                else:                                 # W = Z^T Z (n2 x n2) into L1
                    kk = n2
                    for j in range(n2):
                        for l2 in range(j + 1):
                            t = ZERO
                            for i in range(n1):
                                t += Z[i, j] * Z[i, l2]
                            L1[j, l2] = t
                if chol(L1, kk):
                    ld = ZERO
                    for i in range(kk):
                        ld += math.log(L1[i, i])
                    d[s] = -TWO * ld
                else:
                    d[s] = INF                        # a cosine 0: -log 0
            s += stride

    def iss_mamba(delta, A_log, Cm, bias, a_out, c_out, has_bias, none_mode, squash):
        """One thread per (b, l, j) looping over the channels d (grid-stride)."""
        B = delta.shape[0]
        D = delta.shape[1]
        L = delta.shape[2]
        n = A_log.shape[1]
        total = B * L * n
        idx = cuda.grid(1)
        stride = cuda.gridsize(1)
        while idx < total:
            j = idx % n
            bl = idx // n
            l = bl % L
            bi = bl // L
            acc = ZERO
            for dd in range(D):
                x = delta[bi, dd, l]
                if has_bias != 0:
                    x += bias[dd]
                ax = abs(x)
                dt = (x if x > ZERO else ZERO) + math.log1p(math.exp(-ax))
                v = math.exp(dt * -math.exp(A_log[dd, j]))
                if none_mode != 0:
                    if squash != 0:
                        v = math.tanh(v / TWO)
                    a_out[bl, dd, j] = v
                else:
                    acc += v
            if none_mode == 0:
                v = acc / DT(D)
                if squash != 0:
                    v = math.tanh(v / TWO)
                a_out[bl, 0, j] = v
            cv = Cm[bi, j, l]
            if squash != 0:
                cv = math.tanh(cv / TWO)
            c_out[bl, j] = cv
            idx += stride

    def iss_copy(src, dst, off):
        """``dst[off + r, k] = src[r, k]`` (grid-stride)."""
        n = src.shape[1]
        total = src.shape[0] * n
        idx = cuda.grid(1)
        stride = cuda.gridsize(1)
        while idx < total:
            r = idx // n
            dst[off + r, idx % n] = src[r, idx % n]
            idx += stride

    def iss_scan_stats(Xn, Xo, out):
        """One block per scan s: ``out[s] = (sum (new - old)^2, count of not-allclose)``."""
        red = cuda.shared.array(ISS_RED, NB)
        s = cuda.blockIdx.x
        t = cuda.threadIdx.x
        nt = cuda.blockDim.x
        Kn = Xn.shape[1]
        sq = ZERO
        bad = ZERO
        k = t
        while k < Kn:
            y = Xo[s, k]
            df = Xn[s, k] - y
            sq += df * df
            if not (abs(df) <= AC_ATOL + AC_RTOL * abs(y)):
                bad += ONE
            k += nt
        sq = block_sum(red, t, nt, sq)
        bad = block_sum(red, t, nt, bad)
        if t == 0:
            out[s, 0] = sq
            out[s, 1] = bad

    def iss_scan_sum(X, out):
        """One block per row s: ``out[s] = sum_k X[s, k]``."""
        red = cuda.shared.array(ISS_RED, NB)
        s = cuda.blockIdx.x
        t = cuda.threadIdx.x
        nt = cuda.blockDim.x
        acc = ZERO
        k = t
        while k < X.shape[1]:
            acc += X[s, k]
            k += nt
        acc = block_sum(red, t, nt, acc)
        if t == 0:
            out[s] = acc

    def iss_reg_scale(sa, sc, scale, coef, shortcut):
        """``scale[s] = 0`` for a shortcut scan (a and c allclose), else ``coef``."""
        s = cuda.grid(1)
        if s < scale.shape[0]:
            flag = shortcut != 0 and sa[s, 1] == ZERO and sc[s, 1] == ZERO
            scale[s] = ZERO if flag else coef

    def iss_reg_loss(sa, sc, dsum, loss, lam, cnt, nscan, mode, shortcut):
        """One thread: ``loss = lam * sum_s where(allclose_s, 0, L_s) / S``; mode 0 (inf_ssm)
        ``L_s = dsum_s / m``, mode 1 (mse) ``L_s = sa_s / (m n) + sc_s / (m n)``."""
        if cuda.grid(1) == 0:
            tot = ZERO
            for s in range(sa.shape[0]):
                flag = shortcut != 0 and sa[s, 1] == ZERO and sc[s, 1] == ZERO
                if not flag:
                    if mode == 0:
                        tot += dsum[s] / cnt
                    else:
                        tot += sa[s, 0] / cnt + sc[s, 0] / cnt
            loss[0] = lam * tot / nscan

    def iss_mse_grad(Xn, Xo, scale, out, rows_per):
        """``out[r, k] = scale[r // rows_per] * 2 (new - old)`` (exact 0 where the scale is 0)."""
        n = Xn.shape[1]
        total = Xn.shape[0] * n
        idx = cuda.grid(1)
        stride = cuda.gridsize(1)
        while idx < total:
            r = idx // n
            k = idx % n
            g = scale[r // rows_per]
            if g == ZERO:
                out[r, k] = ZERO
            else:
                out[r, k] = g * (TWO * (Xn[r, k] - Xo[r, k]))
            idx += stride

    # ------------------------------------------------------------------ causal discovery (cd_*)
    # backends/numba_cuda/causal_discrete.py (its module docstring: the radix sort, the
    # grouping, the CI statistics and the Stein solves). block_sum is the ct_* helper above.

    RADIX = CD_RADIX
    RMASK = CD_RADIX - 1
    CTILE = CD_TILE
    CRED = CD_RED
    I64MAX = np.int64(np.iinfo(np.int64).max)
    I64MIN = np.int64(np.iinfo(np.int64).min)
    GEPS = DT(np.finfo(DT).eps)
    FPMIN = DT(np.finfo(DT).tiny / np.finfo(DT).eps)
    ITMAX = CD_ITMAX

    @cuda.jit(device=True, inline="always")
    def block_sum_i(red, t, nt, v):
        """``block_sum`` for int64 values (``red`` an int64 shared array)."""
        red[t] = v
        cuda.syncthreads()
        off = nt // 2
        while off > 0:
            if t < off:
                red[t] += red[t + off]
            cuda.syncthreads()
            off //= 2
        s = red[0]
        cuda.syncthreads()
        return s

    @cuda.jit(device=True, inline="always")
    def gammaincc(a, x):
        """Regularised upper incomplete gamma ``Q(a, x)``, a > 0 (Numerical Recipes sec. 6.2
        scheme, written here): the series of ``P`` for x < a + 1 (``Q = 1 - P``), else the
        Lentz continued fraction of ``Q``; ``Q(a, x <= 0) = 1``."""
        if not (x > ZERO):
            return ONE
        pre = math.exp(-x + a * math.log(x) - math.lgamma(a))
        if x < a + ONE:
            ap = a
            dl = ONE / a
            s = dl
            for _ in range(ITMAX):
                ap += ONE
                dl *= x / ap
                s += dl
                if abs(dl) < abs(s) * GEPS:
                    break
            return ONE - s * pre
        b = x + ONE - a
        c = ONE / FPMIN
        dd = ONE / b
        h = dd
        for k in range(1, ITMAX):
            fk = NB(k)
            an = -fk * (fk - a)
            b += TWO
            dd = an * dd + b
            if abs(dd) < FPMIN:
                dd = FPMIN
            c = b + an / c
            if abs(c) < FPMIN:
                c = FPMIN
            dd = ONE / dd
            de = dd * c
            h *= de
            if abs(de - ONE) < GEPS:
                break
        return pre * h

    def _cd_cast(src, dst):
        """``dst = int64(src)`` (grid-stride; X of another integer dtype widened once)."""
        d = src.shape[1]
        total = src.shape[0] * d
        idx = cuda.grid(1)
        stride = cuda.gridsize(1)
        while idx < total:
            r = idx // d
            dst[r, idx % d] = src[r, idx % d]
            idx += stride

    def cd_colrange(X, out):
        """``out[0, c] = min_r X[r, c]``, ``out[1, c] = max_r X[r, c]``; grid (row blocks,
        d): a block reduction per (block, column), one atomic min/max each (out preset to
        (+max, -max) by the host)."""
        rmin = cuda.shared.array(CRED, int64)
        rmax = cuda.shared.array(CRED, int64)
        c = cuda.blockIdx.y
        t = cuda.threadIdx.x
        nt = cuda.blockDim.x
        lo = I64MAX
        hi = I64MIN
        r = cuda.blockIdx.x * nt + t
        while r < X.shape[0]:
            v = X[r, c]
            if v < lo:
                lo = v
            if v > hi:
                hi = v
            r += nt * cuda.gridDim.x
        rmin[t] = lo
        rmax[t] = hi
        cuda.syncthreads()
        off = nt // 2
        while off > 0:
            if t < off:
                if rmin[t + off] < rmin[t]:
                    rmin[t] = rmin[t + off]
                if rmax[t + off] > rmax[t]:
                    rmax[t] = rmax[t + off]
            cuda.syncthreads()
            off //= 2
        if t == 0:
            cuda.atomic.min(out, (0, c), rmin[0])
            cuda.atomic.max(out, (1, c), rmax[0])

    def cd_fill_i64(out, value):
        idx = cuda.grid(1)
        stride = cuda.gridsize(1)
        while idx < out.shape[0]:
            out[idx] = value
            idx += stride

    def cd_iota(out):
        idx = cuda.grid(1)
        stride = cuda.gridsize(1)
        while idx < out.shape[0]:
            out[idx] = idx
            idx += stride

    def cd_scan(x, out, inclusive):
        """Prefix sum of ``x`` into ``out`` (may alias ``x``) by ONE block: each thread scans a
        contiguous chunk, thread 0 scans the chunk totals (<= CD_RED) sequentially."""
        tot = cuda.shared.array(CRED, int64)
        t = cuda.threadIdx.x
        nt = cuda.blockDim.x
        m = x.shape[0]
        chunk = (m + nt - 1) // nt
        lo = t * chunk
        hi = min(lo + chunk, m)
        acc = int64(0)
        for e in range(lo, hi):
            acc += x[e]
        tot[t] = acc
        cuda.syncthreads()
        if t == 0:
            run = int64(0)
            for k in range(nt):
                v = tot[k]
                tot[k] = run
                run += v
        cuda.syncthreads()
        run = tot[t]
        for e in range(lo, hi):
            v = x[e]
            if inclusive != 0:
                run += v
                out[e] = run
            else:
                out[e] = run
                run += v

    @cuda.jit(device=True, inline="always")
    def cd_tile_digits(keys, dig, shift):
        """Block b's tile of CD_TILE keys: their radix digits ``(key >> shift) & RMASK`` into
        the shared ``dig``; returns ``(base, count)`` of the tile (after a barrier)."""
        base = cuda.blockIdx.x * CTILE
        cnt = min(CTILE, keys.shape[0] - base)
        e = cuda.threadIdx.x
        while e < cnt:
            dig[e] = (keys[base + e] >> shift) & RMASK
            e += cuda.blockDim.x
        cuda.syncthreads()
        return base, cnt

    def cd_sort_hist(keys, hist, shift):
        """One radix pass, step 1: block b counts the digits ``(key >> shift) & RMASK`` of its
        tile of CD_TILE keys; ``hist[digit * nblocks + b]`` (digit-major, so that one
        exclusive scan gives every (digit, block) its output offset)."""
        dig = cuda.shared.array(CTILE, int64)
        b = cuda.blockIdx.x
        nb = cuda.gridDim.x
        t = cuda.threadIdx.x
        nt = cuda.blockDim.x
        base, cnt = cd_tile_digits(keys, dig, shift)
        r = t
        while r < RADIX:
            c = int64(0)
            for k in range(cnt):
                if dig[k] == r:
                    c += 1
            hist[r * nb + b] = c
            r += nt

    def cd_sort_scatter(keys, perm, offs, keys_out, perm_out, shift):
        """One radix pass, step 3 (after ``cd_scan`` of the histogram): thread r of block b
        owns digit r and walks the tile IN ORDER, writing its keys (and their permutation
        entries) from offset ``offs[r * nblocks + b]`` on: a stable scatter."""
        dig = cuda.shared.array(CTILE, int64)
        b = cuda.blockIdx.x
        nb = cuda.gridDim.x
        t = cuda.threadIdx.x
        nt = cuda.blockDim.x
        base, cnt = cd_tile_digits(keys, dig, shift)
        r = t
        while r < RADIX:
            pos = offs[r * nb + b]
            for k in range(cnt):
                if dig[k] == r:
                    keys_out[pos] = keys[base + k]
                    perm_out[pos] = perm[base + k]
                    pos += 1
            r += nt

    def cd_group_key(X, cols, strides, perm, keys):
        """``keys[j] = sum_k X[perm[j], cols[k]] * strides[k]`` (mixed-radix code of a column
        group, rows in the current sort order)."""
        idx = cuda.grid(1)
        stride = cuda.gridsize(1)
        while idx < keys.shape[0]:
            r = perm[idx]
            key = int64(0)
            for k in range(cols.shape[0]):
                key += X[r, cols[k]] * strides[k]
            keys[idx] = key
            idx += stride

    def cd_seg_flags(X, cols, perm, flags):
        """``flags[j] = 1`` where sorted row j starts a new pattern over ``cols`` (j = 0 or a
        column of ``cols`` differs from sorted row j - 1), else 0: exact, no codes needed."""
        idx = cuda.grid(1)
        stride = cuda.gridsize(1)
        while idx < flags.shape[0]:
            f = int64(0)
            if idx == 0:
                f = 1
            else:
                r = perm[idx]
                q = perm[idx - 1]
                for k in range(cols.shape[0]):
                    if X[r, cols[k]] != X[q, cols[k]]:
                        f = 1
                        break
            flags[idx] = f
            idx += stride

    def cd_seg_count(X, perm, incl, col, cnt, rowseg):
        """Segment g = incl[j] - 1 of sorted row j: ``cnt[g, X[row, col]] += 1`` (atomic) and
        ``rowseg[row] = g``."""
        idx = cuda.grid(1)
        stride = cuda.gridsize(1)
        while idx < perm.shape[0]:
            r = perm[idx]
            g = incl[idx] - 1
            cuda.atomic.add(cnt, (g, X[r, col]), 1)
            rowseg[r] = g
            idx += stride

    def cd_plugin_write(X, cnt, rowseg, i, Ki, alpha, kind, S):
        """``S[r, i, y] = 1 / ((N(y, x_-i) + alpha) / (N(x_-i) + alpha K_i))`` for y < K_i, NaN
        beyond; kind 1 (concrete): ``s_i(x_r) / s_i(y, x_-i) - 1`` (the reference's forms)."""
        Kmax = S.shape[2]
        total = S.shape[0] * Kmax
        idx = cuda.grid(1)
        stride = cuda.gridsize(1)
        while idx < total:
            r = idx // Kmax
            y = idx % Kmax
            if y >= Ki:
                S[r, i, y] = NAN
            else:
                g = rowseg[r]
                tot = int64(0)
                for k in range(Ki):
                    tot += cnt[g, k]
                den = NB(tot) + alpha * NB(Ki)
                sy = ONE / ((NB(cnt[g, y]) + alpha) / den)
                if kind == 0:
                    S[r, i, y] = sy
                else:
                    so = ONE / ((NB(cnt[g, X[r, i]]) + alpha) / den)
                    S[r, i, y] = so / sy - ONE
            idx += stride

    def cd_gsm_rows(S, X, cards, part):
        """``part[b] = sum_{rows r of block b} sum_i [S[r,i,X_ri]^2 - 2 sum_{y<K_i} S[r,i,y]]``
        (grid-stride rows, block_sum)."""
        red = cuda.shared.array(CRED, NB)
        t = cuda.threadIdx.x
        nt = cuda.blockDim.x
        acc = ZERO
        r = cuda.blockIdx.x * nt + t
        while r < S.shape[0]:
            for i in range(S.shape[1]):
                so = S[r, i, X[r, i]]
                sm = ZERO
                for y in range(cards[i]):
                    sm += S[r, i, y]
                acc += so * so - TWO * sm
            r += nt * cuda.gridDim.x
        acc = block_sum(red, t, nt, acc)
        if t == 0:
            part[cuda.blockIdx.x] = acc

    def cd_sum_scale(part, out, scale):
        """One block: ``out[0] = scale * sum(part)``."""
        red = cuda.shared.array(CRED, NB)
        t = cuda.threadIdx.x
        nt = cuda.blockDim.x
        acc = ZERO
        k = t
        while k < part.shape[0]:
            acc += part[k]
            k += nt
        acc = block_sum(red, t, nt, acc)
        if t == 0:
            out[0] = scale * acc

    def cd_fstats(X, out):
        """The validators' value checks: ``out[0] = max(out[0], any non-finite)``,
        ``out[1] = min(out[1], min x)``, ``out[2] += sum x`` (out preset to (0, inf, 0))."""
        red = cuda.shared.array(CRED, NB)
        t = cuda.threadIdx.x
        nt = cuda.blockDim.x
        cols = X.shape[1]
        total = X.shape[0] * cols
        bad = ZERO
        mn = INF
        sm = ZERO
        i = cuda.blockIdx.x * nt + t
        while i < total:
            v = X[i // cols, i % cols]
            if abs(v) < INF:
                if v < mn:
                    mn = v
                sm += v
            else:
                bad = ONE
            i += nt * cuda.gridDim.x
        sm = block_sum(red, t, nt, sm)
        bad = block_sum(red, t, nt, bad)
        red[t] = mn
        cuda.syncthreads()
        off = nt // 2
        while off > 0:
            if t < off:
                if red[t + off] < red[t]:
                    red[t] = red[t + off]
            cuda.syncthreads()
            off //= 2
        if t == 0:
            cuda.atomic.max(out, 0, bad)
            cuda.atomic.min(out, 1, red[0])
            cuda.atomic.add(out, 2, sm)

    @cuda.jit(device=True, inline="always")
    def leaf_phi(S, X, cards, r, j, crit):
        """phi_j(r): 0 invariance_sum, 1 invariance_entropy, 2 var_score."""
        K = cards[j]
        if crit == 0:
            v = ZERO
            for y in range(K):
                v += S[r, j, y]
            return v
        if crit == 1:
            qs = ZERO
            for y in range(K):
                qs += ONE / S[r, j, y]
            v = ZERO
            for y in range(K):
                q = (ONE / S[r, j, y]) / qs
                v -= q * math.log(q)
            return v
        return S[r, j, X[r, j]]

    def cd_leaf_pass(S, X, cards, w, has_w, crit, npass, st, part):
        """Grid (row blocks, d). Pass 0: ``part[j, b] = (sum w phi_j, sum w)`` over the block's
        rows; pass 1: ``part[j, b, 0] = sum w (phi_j - st[j, 0])^2`` (st[j, 0] the mean)."""
        red = cuda.shared.array(CRED, NB)
        j = cuda.blockIdx.y
        t = cuda.threadIdx.x
        nt = cuda.blockDim.x
        a0 = ZERO
        a1 = ZERO
        mean = st[j, 0] if npass == 1 else ZERO
        r = cuda.blockIdx.x * nt + t
        while r < S.shape[0]:
            wr = w[r, 0] if has_w != 0 else ONE
            phi = leaf_phi(S, X, cards, r, j, crit)
            if npass == 0:
                a0 += wr * phi
                a1 += wr
            else:
                dv = phi - mean
                a0 += wr * (dv * dv)
            r += nt * cuda.gridDim.x
        a0 = block_sum(red, t, nt, a0)
        a1 = block_sum(red, t, nt, a1)
        if t == 0:
            part[j, cuda.blockIdx.x, 0] = a0
            part[j, cuda.blockIdx.x, 1] = a1

    def cd_leaf_finish(part, st, out, npass):
        """One block per node j: pass 0 ``st[j] = (sum w phi / sum w, sum w)``; pass 1
        ``out[j] = sum w (phi - mean)^2 / sum w``."""
        red = cuda.shared.array(CRED, NB)
        j = cuda.blockIdx.x
        t = cuda.threadIdx.x
        nt = cuda.blockDim.x
        a0 = ZERO
        a1 = ZERO
        k = t
        while k < part.shape[1]:
            a0 += part[j, k, 0]
            a1 += part[j, k, 1]
            k += nt
        a0 = block_sum(red, t, nt, a0)
        a1 = block_sum(red, t, nt, a1)
        if t == 0:
            if npass == 0:
                st[j, 0] = a0 / a1
                st[j, 1] = a1
            else:
                out[j] = a0 / st[j, 1]

    def cd_rank_rows(perm, incl, out):
        """``out[perm[j]] = incl[j] - 1`` (dense stratum index of every row)."""
        idx = cuda.grid(1)
        stride = cuda.gridsize(1)
        while idx < perm.shape[0]:
            out[perm[idx]] = incl[idx] - 1
            idx += stride

    def cd_ci_count(X, zrow, i, cand, nz, kx, ky, cnt):
        """``cnt[t, z, x, y] += 1`` (flat, atomic) for every (candidate t, row r) with
        z = zrow[r], x = X[r, i], y = X[r, cand[t]]."""
        n = X.shape[0]
        total = cand.shape[0] * n
        idx = cuda.grid(1)
        stride = cuda.gridsize(1)
        while idx < total:
            tt = idx // n
            r = idx % n
            f = ((tt * nz + zrow[r]) * kx + X[r, i]) * ky + X[r, cand[tt]]
            cuda.atomic.add(cnt, f, 1)
            idx += stride

    def cd_ci_stat(cnt, cand, cards, nz, kx, ky, test, full_strata, stat, dof, pval):
        """One block per candidate t: threads stride over the strata z of its (nz, kx, ky)
        table; G2 (test 0) or Pearson chi2 (1) summed over cells with N > 0 (E > 0), adjusted
        dof ``sum_{N_z > 0} (r_z - 1)(c_z - 1)`` (or ``(kx-1)(K_c-1) full_strata`` when
        full_strata > 0); p = Q(dof / 2, stat / 2), 1 at dof = 0."""
        red = cuda.shared.array(CRED, NB)
        redi = cuda.shared.array(CRED, int64)
        tt = cuda.blockIdx.x
        t = cuda.threadIdx.x
        nt = cuda.blockDim.x
        kc = cards[cand[tt]]
        base = tt * nz * kx * ky
        acc = ZERO
        dacc = int64(0)
        z = t
        while z < nz:
            zb = base + z * kx * ky
            Nz = int64(0)
            for x in range(kx):
                for y in range(kc):
                    Nz += cnt[zb + x * ky + y]
            if Nz > 0:
                fz = NB(Nz)
                rz = int64(0)
                cz = int64(0)
                for x in range(kx):
                    nx = int64(0)
                    for y in range(kc):
                        nx += cnt[zb + x * ky + y]
                    if nx > 0:
                        rz += 1
                for y in range(kc):
                    ny = int64(0)
                    for x in range(kx):
                        ny += cnt[zb + x * ky + y]
                    if ny > 0:
                        cz += 1
                dacc += (rz - 1) * (cz - 1)
                for x in range(kx):
                    nx = int64(0)
                    for y in range(kc):
                        nx += cnt[zb + x * ky + y]
                    for y in range(kc):
                        ny = int64(0)
                        for xx in range(kx):
                            ny += cnt[zb + xx * ky + y]
                        N = NB(cnt[zb + x * ky + y])
                        mxy = NB(nx) * NB(ny)
                        if test == 0:
                            if N > ZERO:
                                acc += N * math.log(N * fz / mxy)
                        else:
                            E = mxy / fz
                            if E > ZERO:
                                dv = N - E
                                acc += dv * dv / E
            z += nt
        acc = block_sum(red, t, nt, acc)
        dacc = block_sum_i(redi, t, nt, dacc)
        if t == 0:
            s = TWO * acc if test == 0 else acc
            df = dacc
            if full_strata > 0:
                df = (kx - 1) * (kc - 1) * full_strata
            stat[tt] = s
            dof[tt] = df
            if df == 0:
                pval[tt] = ONE
            else:
                pval[tt] = gammaincc(NB(df) / TWO, s / TWO)

    def cd_gammaincc(a, x, out):
        """``out = Q(a, x)`` elementwise (the device function of cd_ci_stat; tests)."""
        idx = cuda.grid(1)
        stride = cuda.gridsize(1)
        while idx < out.shape[0]:
            out[idx] = gammaincc(a[idx], x[idx])
            idx += stride

    def cd_pair_dist(X, out):
        """``out[p, 0] = |x_a - x_b|`` for the pair a < b at ``p = a n - a (a + 1) / 2 + b -
        a - 1`` (scipy pdist's order); ``out[p, 1:] = 0`` (the float32 path views (m, 2)
        float32 as m int64 sort keys)."""
        n = X.shape[0]
        d = X.shape[1]
        W = out.shape[1]
        total = n * n
        idx = cuda.grid(1)
        stride = cuda.gridsize(1)
        while idx < total:
            a = idx // n
            b = idx % n
            if b > a:
                p = a * n - (a * (a + 1)) // 2 + b - a - 1
                acc = ZERO
                for k in range(d):
                    df = X[a, k] - X[b, k]
                    acc += df * df
                out[p, 0] = math.sqrt(acc)
                for k in range(1, W):
                    out[p, k] = ZERO
            idx += stride

    def cd_median(D, status):
        """One thread: ``status[0] = median`` of the sorted distances ``D[:, 0]`` (mean of the
        two middle values for an even count, as NumPy)."""
        if cuda.grid(1) == 0:
            m = D.shape[0]
            if m % 2 == 1:
                status[0] = D[m // 2, 0]
            else:
                status[0] = (D[m // 2 - 1, 0] + D[m // 2, 0]) / TWO

    def cd_stein_kernel(X, status, Km):
        """``Km[a, b] = exp(-|x_a - x_b|^2 / (2 s^2)) / s``, s = status[0]."""
        n = X.shape[0]
        d = X.shape[1]
        s = status[0]
        c = ONE / (TWO * s * s)
        total = n * n
        idx = cuda.grid(1)
        stride = cuda.gridsize(1)
        while idx < total:
            a = idx // n
            b = idx % n
            acc = ZERO
            for k in range(d):
                df = X[a, k] - X[b, k]
                acc += df * df
            Km[a, b] = math.exp(-acc * c) / s
            idx += stride

    def cd_stein_rhs(Km, X, status, gK, g2K):
        """Thread per (a, j), a loop over b (the n x n x d tensor is never stored):
        ``gK = -sum_b (x_aj - x_bj) K_ab / s^2``,
        ``g2K = sum_b (-1/s^2 + (x_aj - x_bj)^2 / s^4) K_ab`` (the direct, cancellation-free
        form of the reference's expansion)."""
        n = X.shape[0]
        d = X.shape[1]
        s = status[0]
        s2 = s * s
        total = n * d
        idx = cuda.grid(1)
        stride = cuda.gridsize(1)
        while idx < total:
            a = idx // d
            j = idx % d
            xa = X[a, j]
            k1 = ZERO
            g1 = ZERO
            g2 = ZERO
            for b in range(n):
                kab = Km[a, b]
                df = xa - X[b, j]
                k1 += kab
                g1 += df * kab
                g2 += (df * df) * kab
            gK[a, j] = -g1 / s2
            g2K[a, j] = -k1 / s2 + g2 / (s2 * s2)
            idx += stride

    def cd_add_diag(src, dst, eta):
        """``dst = src + eta I`` (lower triangle and diagonal; the factorisation reads no
        more)."""
        n = src.shape[0]
        total = n * n
        idx = cuda.grid(1)
        stride = cuda.gridsize(1)
        while idx < total:
            a = idx // n
            b = idx % n
            if b <= a:
                v = src[a, b]
                if a == b:
                    v += eta
                dst[a, b] = v
            idx += stride

    def cd_chol_col(A, k, status, slot):
        """Right-looking Cholesky, column k, step 1: ``A[i, k] /= sqrt(A[k, k])`` for i > k;
        a pivot that is not > 0 sets ``status[slot] = 1`` (A[k, k] itself is replaced by its
        square root in cd_chol_update, so no thread reads a half-updated pivot)."""
        n = A.shape[0]
        piv = A[k, k]
        idx = cuda.grid(1)
        if idx == 0 and not (piv > ZERO):
            status[slot] = ONE
        ljj = math.sqrt(piv) if piv > ZERO else NAN
        i = k + 1 + idx
        stride = cuda.gridsize(1)
        while i < n:
            A[i, k] = A[i, k] / ljj
            i += stride

    def cd_chol_update(A, k):
        """Step 2: rank-1 update of the trailing lower triangle ``A[i, j] -= A[i, k] A[j, k]``,
        k < j <= i, and ``A[k, k] = sqrt(A[k, k])``."""
        n = A.shape[0]
        m = n - k - 1
        idx = cuda.grid(1)
        if idx == 0:
            piv = A[k, k]
            A[k, k] = math.sqrt(piv) if piv > ZERO else NAN
        stride = cuda.gridsize(1)
        total = m * m
        while idx < total:
            i = k + 1 + idx // m
            j = k + 1 + idx % m
            if j <= i:
                A[i, j] -= A[i, k] * A[j, k]
            idx += stride

    def cd_trsm(L, B, trans):
        """One block per column c of B (in place): trans 0 solves ``L y = b`` (forward),
        trans 1 ``L^T x = y`` (backward); one step per row with a barrier."""
        n = L.shape[0]
        c = cuda.blockIdx.x
        t = cuda.threadIdx.x
        nt = cuda.blockDim.x
        for step in range(n):
            k = step if trans == 0 else n - 1 - step
            if t == 0:
                B[k, c] = B[k, c] / L[k, k]
            cuda.syncthreads()
            yk = B[k, c]
            if trans == 0:
                i = k + 1 + t
                while i < n:
                    B[i, c] -= L[i, k] * yk
                    i += nt
            else:
                i = t
                while i < k:
                    B[i, c] -= L[k, i] * yk
                    i += nt
            cuda.syncthreads()

    def cd_stein_combine(G, Hs, out):
        """``out = -G^2 + Hs``."""
        d = G.shape[1]
        total = G.shape[0] * d
        idx = cuda.grid(1)
        stride = cuda.gridsize(1)
        while idx < total:
            a = idx // d
            j = idx % d
            g = G[a, j]
            out[a, j] = -(g * g) + Hs[a, j]
            idx += stride

    # ------------------------------------------------------------------ safety ensembles (se_*)
    # Antibody (flat-vector passes) and IBDR (fused loss + gradient), see
    # backends/numba_cuda/safety_ensembles.py. Flat-vector sums accumulate in the input dtype;
    # the IBDR K x K Gram, Cholesky, log-determinant and inverse are float64 (SE_KMAX <= 8).
    SEB = SE_RED               # static shared words of the se_* block reductions
    SEK = SE_KMAX
    SEK1 = SE_KMAX + 1
    SEKK = SE_KMAX * SE_KMAX
    F64_0 = float64(0.0)
    NRM_EPS = float64(SE_NORMALIZE_EPS)
    COS_FLOOR = DT(SE_COS_EPS)              # 1e-8 of the lambda denominators
    CLIP_FLOOR = DT(SE_CLIP_EPS)            # 1e-6 of the clip factor

    @cuda.jit(device=True, inline="always")
    def se_tree(buf, t, nt, op):
        """Tree-reduce ``buf[0:nt]`` (nt a power of 2) into ``buf[0]``: op 0 sum, 1 max, 2 min.
        Every thread of the block calls it (it synchronises before and after each level)."""
        cuda.syncthreads()
        off = nt // 2
        while off > 0:
            if t < off:
                a = buf[t]
                b = buf[t + off]
                if op == 0:
                    buf[t] = a + b
                elif op == 1:
                    if b > a or b != b:
                        buf[t] = b
                else:
                    if b < a or b != b:
                        buf[t] = b
            cuda.syncthreads()
            off //= 2

    @cuda.jit(device=True, inline="always")
    def se_tree_part(sh, t, nt):
        """Tree-reduce the (7, nt) partials of the flat-vector passes into column 0: rows 0-2
        (the sums) added, rows 3-6 (the non-finite flags) maxed. Every thread of the block calls
        it (it synchronises before and after each level)."""
        cuda.syncthreads()
        off = nt // 2
        while off > 0:
            if t < off:
                for q in range(3):
                    sh[q, t] += sh[q, t + off]
                for q in range(3, 7):
                    if sh[q, t + off] > sh[q, t]:
                        sh[q, t] = sh[q, t + off]
            cuda.syncthreads()
            off //= 2

    def se_vec_partial(a, b, c, r, part, has_b, has_c, has_r):
        """Pass 1 of the flat-vector ops, grid-stride with one row of partial sums per block:
        ``part[blk] = (<a, d>, ||d||^2, ||a||^2, nonfinite a, b, c, r)`` with ``d = b - c``
        formed on the fly (``c`` absent: d = b; ``b`` absent: only ||a||^2). Input dtype."""
        sh = cuda.shared.array((7, SEB), NB)
        t = cuda.threadIdx.x
        nt = cuda.blockDim.x
        n = a.shape[0]
        dot = ZERO
        dd = ZERO
        ss = ZERO
        fa = ZERO
        fb = ZERO
        fc = ZERO
        fr = ZERO
        i = cuda.blockIdx.x * nt + t
        stride = nt * cuda.gridDim.x
        while i < n:
            av = a[i]
            if not (abs(av) < INF):
                fa = ONE
            ss += av * av
            if has_b:
                bv = b[i]
                if not (abs(bv) < INF):
                    fb = ONE
                if has_c:
                    cv = c[i]
                    if not (abs(cv) < INF):
                        fc = ONE
                    bv = bv - cv
                dot += av * bv
                dd += bv * bv
            if has_r:
                if not (abs(r[i]) < INF):
                    fr = ONE
            i += stride
        sh[0, t] = dot
        sh[1, t] = dd
        sh[2, t] = ss
        sh[3, t] = fa
        sh[4, t] = fb
        sh[5, t] = fc
        sh[6, t] = fr
        se_tree_part(sh, t, nt)
        if t == 0:
            for q in range(7):
                part[cuda.blockIdx.x, q] = sh[q, 0]

    def se_vec_final(part, ema, out, s1, s2, s3, mode, ema_dev):
        """One block: reduce the partial rows of :func:`se_vec_partial` and compute the scalar
        of the op on the device. ``out``: 0 lam_new, 1 lam_raw, 2 the scale pass 2 reads,
        3-6 the non-finite flags (a, b, c, r), 7 lam_ema / lam read from ``ema`` (the one
        host read validates it), 8 <a, d>, 9 ||d||^2, 10 ||a||^2.
        mode 0/1 (cosine/kkt lambda): s1 eta, s2 momentum, s3 lam_ema (ema_dev: ema[0];
        s3 < 0: no EMA); 2 (harmful perturb): scale = -s1 / (||a|| + s2);
        3 (dro ascent): scale = min(1, s1 / (||a|| + 1e-6)) / (2 lam), lam = s2 (or ema[0])."""
        sh = cuda.shared.array((7, SEB), NB)
        t = cuda.threadIdx.x
        nt = cuda.blockDim.x
        rows = part.shape[0]
        for q in range(7):
            sh[q, t] = ZERO
        i = t
        while i < rows:
            for q in range(3):
                sh[q, t] += part[i, q]
            for q in range(3, 7):
                if part[i, q] > sh[q, t]:
                    sh[q, t] = part[i, q]
            i += nt
        se_tree_part(sh, t, nt)
        if t == 0:
            dot = sh[0, 0]
            dd = sh[1, 0]
            ss = sh[2, 0]
            ev = s3
            if ema_dev:
                ev = ema[0]
            lam_new = ZERO
            lam_raw = ZERO
            scale = ZERO
            if mode <= 1:
                if mode == 0:
                    den = math.sqrt(dd) * math.sqrt(ss) + COS_FLOOR
                else:
                    den = dd + COS_FLOOR
                lam_raw = s1 - dot / den
                if not (lam_raw > ZERO):
                    lam_raw = ZERO
                lam_new = lam_raw
                if ema_dev or s3 >= ZERO:
                    lam_new = s2 * ev + (ONE - s2) * lam_raw
                scale = lam_new
            elif mode == 2:
                scale = -s1 / (math.sqrt(ss) + s2)
            else:
                lam = s2
                if ema_dev:
                    lam = ev
                f = s1 / (math.sqrt(ss) + CLIP_FLOOR)
                if f > ONE:
                    f = ONE
                scale = f / (TWO * lam)
            out[0] = lam_new
            out[1] = lam_raw
            out[2] = scale
            for q in range(4):
                out[3 + q] = sh[3 + q, 0]
            out[7] = ev
            out[8] = dot
            out[9] = dd
            out[10] = ss

    def se_vec_apply(a, b, c, r, info, res, lam2, mode):
        """Pass 2, grid-stride, the scale read on the device (``info[2]``): mode 0
        ``res = a + s (b - c) + lam2 r`` (the alignment direction), mode 1 ``res = a + s b``."""
        s = info[2]
        i = cuda.grid(1)
        stride = cuda.gridsize(1)
        n = res.shape[0]
        while i < n:
            if mode == 0:
                res[i] = a[i] + s * (b[i] - c[i]) + lam2 * r[i]
            else:
                res[i] = a[i] + s * b[i]
            i += stride

    def se_ibdr_fwd(X, y, lse, Gm, terms, mode, has_div):
        """IBDR pass 1, one block per batch row b (``X`` (K, B, C), K <= SE_KMAX): mode 0
        logits with the code's loss, 1 logits with the paper's, 2 probabilities (diversity
        only). Per-particle online LSE (and of Fbar = mean_k F_k) -> ``lse[b]``, finiteness,
        min X, the CE term, and (``has_div``) the Gram of the wrong-class vectors Q_k (y_b
        removed) accumulated in float64 -> ``Gm[b]`` (K x K, row-major). ``terms[b]``: 0 CE_b,
        1 log det_b (det_b, paper; set by se_ibdr_chol), 2 non-finite, 3 Cholesky failed,
        4 min X, 5-6 y_b (for min / max)."""
        b = cuda.blockIdx.x
        t = cuda.threadIdx.x
        nt = cuda.blockDim.x
        Kp = X.shape[0]
        C = X.shape[2]
        rm = cuda.shared.array(SEB, NB)
        rs = cuda.shared.array(SEB, NB)
        rd = cuda.shared.array(SEB, float64)
        m = cuda.local.array(SEK1, NB)
        s = cuda.local.array(SEK1, NB)
        pk = cuda.local.array(SEK, NB)
        yb = y[b]
        logits = mode != 2
        nsl = Kp
        if mode == 0:
            nsl = Kp + 1
        elif mode == 2:
            nsl = 0                     # probabilities: no softmax
        invK = ONE / DT(Kp)
        for k in range(nsl):
            m[k] = NINF
            s[k] = ZERO
        bad = ZERO
        mn = INF
        c = t
        while c < C:
            fb = ZERO
            for k in range(Kp):
                x = X[k, b, c]
                if not (abs(x) < INF):
                    bad = ONE
                if x < mn:
                    mn = x
                fb += x
                if logits:
                    m[k], s[k] = lse_push(m[k], s[k], x)
            if mode == 0:
                m[Kp], s[Kp] = lse_push(m[Kp], s[Kp], fb * invK)
            c += nt
        for k in range(nsl):
            rm[t] = m[k]
            rs[t] = s[k]
            lse_merge(rm, rs, t, t, nt)
            if t == 0:
                lse[b, k] = NINF
                if rs[0] > ZERO:
                    lse[b, k] = rm[0] + math.log(rs[0])
            cuda.syncthreads()
        rm[t] = bad
        rs[t] = mn
        se_tree(rm, t, nt, 1)
        se_tree(rs, t, nt, 2)
        if t == 0:
            terms[b, 0] = ZERO
            terms[b, 1] = ZERO
            terms[b, 2] = rm[0]
            terms[b, 3] = ZERO
            terms[b, 4] = rs[0]
            terms[b, 5] = DT(yb)
            terms[b, 6] = DT(yb)
        if yb < 0 or yb >= C:
            return                      # uniform over the block; the host raises
        if t == 0 and logits:
            ce = ZERO
            if mode == 0:
                fy = ZERO
                for k in range(Kp):
                    fy += X[k, b, yb]
                ce = lse[b, Kp] - fy * invK
            else:
                for k in range(Kp):
                    ce += lse[b, k] - X[k, b, yb]
                ce = ce * invK
            terms[b, 0] = ce
        if not has_div:
            return
        cuda.syncthreads()
        acc = cuda.local.array(SEKK, float64)
        for q in range(Kp * Kp):
            acc[q] = F64_0
        c = t
        while c < C:
            if c != yb:
                for k in range(Kp):
                    if logits:
                        pk[k] = math.exp(X[k, b, c] - lse[b, k])
                    else:
                        pk[k] = X[k, b, c]
                for k in range(Kp):
                    pv = float64(pk[k])
                    for j in range(k + 1):
                        acc[k * Kp + j] += pv * float64(pk[j])
            c += nt
        for k in range(Kp):
            for j in range(k + 1):
                rd[t] = acc[k * Kp + j]
                se_tree(rd, t, nt, 0)
                if t == 0:
                    Gm[b, k * Kp + j] = rd[0]
                    Gm[b, j * Kp + k] = rd[0]

    def se_ibdr_chol(Gm, nrm, terms, jitter, Kp, mode):
        """IBDR pass 2, float64, one thread per row b (grid-stride): ``nrm[b, k] =
        max(||Q_k||, 1e-12)`` (negated when ||Q_k|| < 1e-12: F.normalize's clamp, no
        projection), ``M = Gm / (n n^T) + jitter I`` and its Cholesky factor in place of
        ``Gm[b]`` (lower), ``terms[b, 1]`` = log det M (float32 kernels: a float32 log of each
        float64 pivot) or det M (paper, mode 1; also kept in ``nrm[b, K]``), ``terms[b, 3]``
        = 1 when a pivot is not positive."""
        b = cuda.grid(1)
        stride = cuda.gridsize(1)
        while b < Gm.shape[0]:
            for k in range(Kp):
                nv = math.sqrt(Gm[b, k * Kp + k])
                if nv >= NRM_EPS:
                    nrm[b, k] = nv
                else:
                    nrm[b, k] = -NRM_EPS
            fail = False
            ld = ZERO
            det = float64(1.0)
            for j in range(Kp):
                for k in range(j, Kp):
                    v = Gm[b, k * Kp + j] / abs(nrm[b, k] * nrm[b, j])
                    for i in range(j):
                        v -= Gm[b, k * Kp + i] * Gm[b, j * Kp + i]
                    if k == j:
                        v += jitter
                        if not (v > F64_0):
                            fail = True
                            v = float64(1.0)
                        det *= v
                        ld += math.log(DT(v))
                        Gm[b, j * Kp + j] = math.sqrt(v)
                    else:
                        Gm[b, k * Kp + j] = v / Gm[b, j * Kp + j]
            nrm[b, Kp] = det
            if mode == 1:
                terms[b, 1] = DT(det)
            else:
                terms[b, 1] = ld
            if fail:
                terms[b, 3] = ONE
            b += stride

    def se_ibdr_inv(Gm, Kp):
        """IBDR pass 3, float64, one thread per row b (grid-stride): ``M^-1 = L^-T L^-1`` from
        the Cholesky factor ``L`` in ``Gm[b]``, written over it (full, symmetric)."""
        Linv = cuda.local.array(SEKK, float64)
        b = cuda.grid(1)
        stride = cuda.gridsize(1)
        while b < Gm.shape[0]:
            for j in range(Kp):
                Linv[j * Kp + j] = float64(1.0) / Gm[b, j * Kp + j]
                for k in range(j + 1, Kp):
                    v = F64_0
                    for i in range(j, k):
                        v -= Gm[b, k * Kp + i] * Linv[i * Kp + j]
                    Linv[k * Kp + j] = v / Gm[b, k * Kp + k]
            for k in range(Kp):
                for j in range(Kp):
                    mv = F64_0
                    for i in range(max(k, j), Kp):
                        mv += Linv[i * Kp + k] * Linv[i * Kp + j]
                    Gm[b, k * Kp + j] = mv
            b += stride

    def se_ibdr_coef(Gm, nrm, Cg, sk, jitter, alpha, Kp, mode):
        """IBDR pass 4, one thread per row b (grid-stride): from ``M^-1`` (``Gm[b]``) the
        gradient coefficients with w = -2 alpha / B (x det M, paper), in the input dtype
        except ``e_k = 1 - jitter Minv_kk`` (float64: it cancels; = (M^-1 Qh Qh^T)_kk):
        ``Cg[b, k, j] = w Minv_kj / (n_k n_j) - [projected k] [k = j] w e_k / n_k^2`` so that
        ``g_Q_k = sum_j Cg_kj Q_j``, and ``sk[b, k] = <Q_k, g_Q_k>``: 0 when projected (g_Q is
        orthogonal to Q_k), ``w e_k`` under the clamp."""
        b = cuda.grid(1)
        stride = cuda.gridsize(1)
        w0 = -alpha * TWO / DT(Gm.shape[0])
        while b < Gm.shape[0]:
            w = w0
            if mode == 1:
                w = w0 * DT(nrm[b, Kp])
            for k in range(Kp):
                nrm[b, Kp + 1 + k] = float64(1.0) - jitter * Gm[b, k * Kp + k]
            for q in range(Kp * Kp):
                k = q // Kp
                j = q - k * Kp
                nk = DT(nrm[b, k])
                cv = w * DT(Gm[b, q]) / abs(nk * DT(nrm[b, j]))
                if k == j:
                    dk = w * DT(nrm[b, Kp + 1 + k])
                    if nk > ZERO:
                        cv -= dk / (nk * nk)
                        sk[b, k] = ZERO
                    else:
                        sk[b, k] = dk
                Cg[b, q] = cv
            b += stride

    def se_ibdr_grad(X, y, lse, Cg, sk, dX, mode, has_div):
        """IBDR pass 4, one block per row b: ``dX[k, b, c] = dCE/dF_kc + P_kc (g_P_kc - s_k)``
        with ``g_P_kc = sum_j Cg_kj P_jc`` off the true class (0 at y_b); dCE/dF_k =
        ``(softmax(Fbar) - e_y) / (K B)`` (code) or ``(softmax(F_k) - e_y) / (K B)`` (paper)."""
        b = cuda.blockIdx.x
        t = cuda.threadIdx.x
        nt = cuda.blockDim.x
        Kp = X.shape[0]
        Bn = X.shape[1]
        C = X.shape[2]
        pk = cuda.local.array(SEK, NB)
        yb = y[b]
        invK = ONE / DT(Kp)
        scale = ONE / DT(Kp * Bn)
        c = t
        while c < C:
            for k in range(Kp):
                pk[k] = math.exp(X[k, b, c] - lse[b, k])
            oh = ZERO
            if c == yb:
                oh = ONE
            sbar = ZERO
            if mode == 0:
                fb = ZERO
                for k in range(Kp):
                    fb += X[k, b, c]
                sbar = math.exp(fb * invK - lse[b, Kp])
            for k in range(Kp):
                if mode == 0:
                    g = (sbar - oh) * scale
                else:
                    g = (pk[k] - oh) * scale
                if has_div:
                    gq = ZERO
                    if c != yb:
                        for j in range(Kp):
                            gq += Cg[b, k * Kp + j] * pk[j]
                    g += pk[k] * (gq - sk[b, k])
                dX[k, b, c] = g
            c += nt

    def se_pred_dist(new, old, terms):
        """One block per row b: ``terms[b] = (||softmax(new_b) - softmax(old_b)||_2, 0,
        non-finite new, non-finite old, 0, 0, 0)``."""
        b = cuda.blockIdx.x
        t = cuda.threadIdx.x
        nt = cuda.blockDim.x
        C = new.shape[1]
        rm = cuda.shared.array(SEB, NB)
        rs = cuda.shared.array(SEB, NB)
        lse = cuda.shared.array(2, NB)
        m0 = NINF
        s0 = ZERO
        m1 = NINF
        s1 = ZERO
        bn = ZERO
        bo = ZERO
        c = t
        while c < C:
            xn = new[b, c]
            xo = old[b, c]
            if not (abs(xn) < INF):
                bn = ONE
            if not (abs(xo) < INF):
                bo = ONE
            m0, s0 = lse_push(m0, s0, xn)
            m1, s1 = lse_push(m1, s1, xo)
            c += nt
        rm[t] = m0
        rs[t] = s0
        lse_merge(rm, rs, t, t, nt)
        if t == 0:
            lse[0] = rm[0] + math.log(rs[0])
        cuda.syncthreads()
        rm[t] = m1
        rs[t] = s1
        lse_merge(rm, rs, t, t, nt)
        if t == 0:
            lse[1] = rm[0] + math.log(rs[0])
        cuda.syncthreads()
        rm[t] = bn
        rs[t] = bo
        se_tree(rm, t, nt, 1)
        se_tree(rs, t, nt, 1)
        if t == 0:
            terms[b, 1] = ZERO
            terms[b, 2] = rm[0]
            terms[b, 3] = rs[0]
            for q in range(4, 7):
                terms[b, q] = ZERO
        cuda.syncthreads()
        acc = ZERO
        c = t
        while c < C:
            dv = math.exp(new[b, c] - lse[0]) - math.exp(old[b, c] - lse[1])
            acc += dv * dv
            c += nt
        rm[t] = acc
        se_tree(rm, t, nt, 0)
        if t == 0:
            terms[b, 0] = math.sqrt(rm[0])

    def se_weights(nc, nr, w, info, inv_tau):
        """One block: ``w = softmax((nr - nc) inv_tau)`` over the batch; ``info = (non-finite
        nc, non-finite nr)``."""
        rm = cuda.shared.array(SEB, NB)
        rs = cuda.shared.array(SEB, NB)
        t = cuda.threadIdx.x
        nt = cuda.blockDim.x
        n = w.shape[0]
        bc = ZERO
        br = ZERO
        mx = NINF
        sm = ZERO
        i = t
        while i < n:
            if not (abs(nc[i]) < INF):
                bc = ONE
            if not (abs(nr[i]) < INF):
                br = ONE
            mx, sm = lse_push(mx, sm, (nr[i] - nc[i]) * inv_tau)
            i += nt
        rm[t] = mx
        rs[t] = sm
        lse_merge(rm, rs, t, t, nt)
        mx = rm[0]
        sm = rs[0]
        cuda.syncthreads()
        i = t
        while i < n:
            w[i] = math.exp((nr[i] - nc[i]) * inv_tau - mx) / sm
            i += nt
        rm[t] = bc
        rs[t] = br
        se_tree(rm, t, nt, 1)
        se_tree(rs, t, nt, 1)
        if t == 0:
            info[0] = rm[0]
            info[1] = rs[0]

    def se_nll(sums, counts, out):
        """``out = -sums / max(counts, 1)`` (token-mean NLL per row), grid-stride."""
        i = cuda.grid(1)
        while i < out.shape[0]:
            cnt = counts[i]
            if cnt < 1:
                cnt = 1
            out[i] = -sums[i] / DT(cnt)
            i += cuda.gridsize(1)

    def se_wce_coef(w, counts, dlogp, info, variant):
        """One block: ``dlogp_r = -w_r / max(sum_i w_i N_i, 1)`` (code, variant 0) or
        ``-w_r / max(N_r, 1)`` (paper); ``info = (non-finite w, min w)``."""
        rm = cuda.shared.array(SEB, NB)
        rs = cuda.shared.array(SEB, NB)
        t = cuda.threadIdx.x
        nt = cuda.blockDim.x
        n = w.shape[0]
        acc = ZERO
        bad = ZERO
        mn = INF
        i = t
        while i < n:
            v = w[i]
            if not (abs(v) < INF):
                bad = ONE
            if v < mn or v != v:
                mn = v
            acc += v * DT(counts[i])
            i += nt
        rm[t] = acc
        se_tree(rm, t, nt, 0)
        tot = rm[0]
        if tot < ONE:
            tot = ONE
        cuda.syncthreads()
        i = t
        while i < n:
            if variant == 0:
                dlogp[i] = -w[i] / tot
            else:
                cnt = counts[i]
                if cnt < 1:
                    cnt = 1
                dlogp[i] = -w[i] / DT(cnt)
            i += nt
        rm[t] = bad
        rs[t] = mn
        se_tree(rm, t, nt, 1)
        se_tree(rs, t, nt, 2)
        if t == 0:
            info[0] = rm[0]
            info[1] = rs[0]

    def se_dot(a, b, out):
        """One block: ``out[0] = <a, b>``."""
        rm = cuda.shared.array(SEB, NB)
        t = cuda.threadIdx.x
        nt = cuda.blockDim.x
        acc = ZERO
        i = t
        while i < a.shape[0]:
            acc += a[i] * b[i]
            i += nt
        rm[t] = acc
        se_tree(rm, t, nt, 0)
        if t == 0:
            out[0] = rm[0]

    def se_finish(terms, out, alpha):
        """One block over the B rows of ``terms``: ``out = (mean t0 - alpha mean t1, mean t1,
        max t2, max t3, min t4, min t5, max t6)``."""
        sh = cuda.shared.array((7, SEB), NB)
        t = cuda.threadIdx.x
        nt = cuda.blockDim.x
        rows = terms.shape[0]
        sh[0, t] = ZERO
        sh[1, t] = ZERO
        sh[2, t] = ZERO
        sh[3, t] = ZERO
        sh[4, t] = INF
        sh[5, t] = INF
        sh[6, t] = NINF
        i = t
        while i < rows:
            sh[0, t] += terms[i, 0]
            sh[1, t] += terms[i, 1]
            for q in (2, 3, 6):
                v = terms[i, q]
                if v > sh[q, t] or v != v:
                    sh[q, t] = v
            for q in (4, 5):
                v = terms[i, q]
                if v < sh[q, t] or v != v:
                    sh[q, t] = v
            i += nt
        cuda.syncthreads()
        off = nt // 2
        while off > 0:
            if t < off:
                sh[0, t] += sh[0, t + off]
                sh[1, t] += sh[1, t + off]
                for q in (2, 3, 6):
                    v = sh[q, t + off]
                    if v > sh[q, t] or v != v:
                        sh[q, t] = v
                for q in (4, 5):
                    v = sh[q, t + off]
                    if v < sh[q, t] or v != v:
                        sh[q, t] = v
            cuda.syncthreads()
            off //= 2
        if t == 0:
            inv = ONE / DT(rows)
            m1 = sh[1, 0] * inv
            out[0] = sh[0, 0] * inv - alpha * m1
            out[1] = m1
            for q in range(2, 7):
                out[q] = sh[q, 0]

    # ------------------------------------------------------------------ recsys VAE (rv_*)
    # Mult-VAE (arXiv 1802.05814) and the PIA anchor regulariser (arXiv 2511.06781), see
    # backends/numba_cuda/recsys_vae.py. Every matmul is pref_gemm (dense) or rv_spmm /
    # rv_spmm_t (CSR); the kernels here are the row-wise pieces. All arithmetic in the input
    # dtype (no float64 in the float32 variants).
    RVB = RV_RED               # static shared words of the rv_* block reductions
    RVK = RV_KMAX              # largest k of rv_topk (the selected list lives in shared memory)
    RV_EPS = DT(RV_NORM_EPS)   # tf.nn.l2_normalize's epsilon on the squared norm
    HALF = DT(0.5)

    @cuda.jit(device=True, inline="always")
    def rv_before(v1, i1, v2, i2):
        """Whether (v1, i1) ranks before (v2, i2): higher score, ties by lower index; an index
        of -1 is "no candidate" and ranks last."""
        if i1 < 0:
            return False
        if i2 < 0:
            return True
        return v1 > v2 or (v1 == v2 and i1 < i2)

    def rv_rowprep(X, mask, h0, nrow, keep_prob, mode, has_mask):
        """One block per row u of a dense X: ``n_u = sum_i X_ui`` and the first-layer input
        ``h0``: dropout (mode 0) ``h0 = X / ||X_u|| * mask / keep_prob``; bernoulli (mode 1)
        ``h0 = (X * mask) / ||X_u * mask_u||``; no mask ``h0 = X / ||X_u||``; the norm is
        ``sqrt(max(sum x^2, 1e-12))`` (l2_normalize)."""
        r1 = cuda.shared.array(RVB, dtype=NB)
        r2 = cuda.shared.array(RVB, dtype=NB)
        t = cuda.threadIdx.x
        nt = cuda.blockDim.x
        u = cuda.blockIdx.x
        I = X.shape[1]
        ss = ZERO
        n = ZERO
        for i in range(t, I, nt):
            x = X[u, i]
            n += x
            if mode == 1 and has_mask != 0:
                x = x * mask[u, i]
            ss += x * x
        r1[t] = ss
        r2[t] = n
        se_tree(r1, t, nt, 0)
        se_tree(r2, t, nt, 0)
        s = ONE / math.sqrt(max(r1[0], RV_EPS))
        if t == 0:
            nrow[u] = r2[0]
        if has_mask != 0 and mode == 0:
            s = s / keep_prob
        for i in range(t, I, nt):
            x = X[u, i] * s
            if has_mask != 0:
                x = x * mask[u, i]
            h0[u, i] = x

    def rv_csr_prep(data, indices, indptr, mask, vals, nrow, keep_prob, mode, has_mask):
        """rv_rowprep for a CSR X, one thread per row: the stored values of h0 (``vals``, X's
        sparsity pattern) and ``n_u`` (the sum of the row's stored values)."""
        u = cuda.grid(1)
        if u < nrow.shape[0]:
            p0 = indptr[u]
            p1 = indptr[u + 1]
            ss = ZERO
            n = ZERO
            for p in range(p0, p1):
                x = data[p]
                n += x
                if mode == 1 and has_mask != 0:
                    x = x * mask[u, indices[p]]
                ss += x * x
            s = ONE / math.sqrt(max(ss, RV_EPS))
            if has_mask != 0 and mode == 0:
                s = s / keep_prob
            for p in range(p0, p1):
                x = data[p] * s
                if has_mask != 0:
                    x = x * mask[u, indices[p]]
                vals[p] = x
            nrow[u] = n

    def rv_spmm(vals, indices, indptr, B, bias, C, has_bias):
        """``C = S B (+ bias)`` for a CSR S with values ``vals``: thread (u, j) sums row u's
        stored entries (grid x over columns j, grid y over rows u)."""
        j = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
        u = cuda.blockIdx.y
        if u < C.shape[0] and j < C.shape[1]:
            acc = ZERO
            for p in range(indptr[u], indptr[u + 1]):
                acc += vals[p] * B[indices[p], j]
            if has_bias != 0:
                acc += bias[j]
            C[u, j] = acc

    def rv_spmm_t(vals, indices, indptr, B, C):
        """``C += S^T B`` for a CSR S (U, I) and B (U, N): thread (u, j) adds
        ``vals_p B[u, j]`` to ``C[indices_p, j]`` with atomics (C zeroed by the caller)."""
        j = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
        u = cuda.blockIdx.y
        if u < B.shape[0] and j < C.shape[1]:
            b = B[u, j]
            for p in range(indptr[u], indptr[u + 1]):
                cuda.atomic.add(C, (indices[p], j), vals[p] * b)

    def rv_tanh(A):
        """``A = tanh(A)`` in place (grid-stride over a C-contiguous 2-D array)."""
        n = A.shape[1]
        total = A.shape[0] * n
        idx = cuda.grid(1)
        while idx < total:
            r = idx // n
            c = idx - r * n
            A[r, c] = math.tanh(A[r, c])
            idx += cuda.gridsize(1)

    def rv_tanh_bwd(G, H):
        """``G *= 1 - H^2`` in place (the tanh derivative from the stored activation)."""
        n = G.shape[1]
        total = G.shape[0] * n
        idx = cuda.grid(1)
        while idx < total:
            r = idx // n
            c = idx - r * n
            h = H[r, c]
            G[r, c] = G[r, c] * (ONE - h * h)
            idx += cuda.gridsize(1)

    def rv_latent(o2, eps, mu, lv, z, has_eps):
        """Split ``o2 = [mu, logvar]`` and ``z = mu + eps exp(logvar / 2)`` (z = mu without eps);
        thread (u, k) over (U, d)."""
        d = mu.shape[1]
        total = mu.shape[0] * d
        idx = cuda.grid(1)
        while idx < total:
            u = idx // d
            k = idx - u * d
            m = o2[u, k]
            v = o2[u, d + k]
            mu[u, k] = m
            lv[u, k] = v
            if has_eps != 0:
                m = m + eps[u, k] * math.exp(v * HALF)
            z[u, k] = m
            idx += cuda.gridsize(1)

    def rv_nll_rows(logits, X, xdat, xidx, xptr, rows, dlog, inv_u, is_csr, want_grad):
        """One block per row u: online log-sum-exp of the logits fused with the X-weighted sum
        ``sx = sum_i X_ui z_ui`` and ``n_u``; ``rows[u] = -(sx - n_u lse)`` (the row's
        ``-sum_i X_ui log_softmax(z)_ui``); with want_grad a second sweep writes
        ``dlogits = (softmax(z) n_u - X) * inv_u``. X dense, or CSR (xdat, xidx, xptr)."""
        rm = cuda.shared.array(RVB, dtype=NB)
        rs = cuda.shared.array(RVB, dtype=NB)
        rx = cuda.shared.array(RVB, dtype=NB)
        rn = cuda.shared.array(RVB, dtype=NB)
        t = cuda.threadIdx.x
        nt = cuda.blockDim.x
        u = cuda.blockIdx.x
        I = logits.shape[1]
        m = NINF
        s = ZERO
        sx = ZERO
        n = ZERO
        for i in range(t, I, nt):
            zv = logits[u, i]
            m, s = lse_push(m, s, zv)
            if is_csr == 0:
                x = X[u, i]
                if x != ZERO:
                    sx += x * zv
                    n += x
        if is_csr != 0:
            for p in range(xptr[u] + t, xptr[u + 1], nt):
                x = xdat[p]
                if x != ZERO:
                    sx += x * logits[u, xidx[p]]
                    n += x
        rm[t] = m
        rs[t] = s
        rx[t] = sx
        rn[t] = n
        lse_merge(rm, rs, t, t, nt)
        se_tree(rx, t, nt, 0)
        se_tree(rn, t, nt, 0)
        lse = rm[0] + math.log(rs[0])
        n = rn[0]
        if t == 0:
            rows[u] = -(rx[0] - n * lse)
        if want_grad != 0:
            for i in range(t, I, nt):
                g = math.exp(logits[u, i] - lse) * n
                if is_csr == 0:
                    g -= X[u, i]
                dlog[u, i] = g * inv_u
            if is_csr != 0:
                cuda.syncthreads()
                for p in range(xptr[u] + t, xptr[u + 1], nt):
                    j = xidx[p]
                    dlog[u, j] = dlog[u, j] - xdat[p] * inv_u

    def rv_kl_rows(mu, lv, rows):
        """``rows[u] = 0.5 sum_k (-logvar + exp(logvar) + mu^2 - 1)`` (one thread per row)."""
        u = cuda.grid(1)
        if u < rows.shape[0]:
            acc = ZERO
            for k in range(mu.shape[1]):
                v = lv[u, k]
                m = mu[u, k]
                acc += -v + math.exp(v) + m * m - ONE
            rows[u] = HALF * acc

    def rv_loss_finish(nll_rows, kl_rows, extra, out, beta, lam, has_extra):
        """One block: ``out = (nll + beta kl [+ lam extra[2]], nll, kl)`` with nll, kl the means
        of the row terms (extra: the PIA mean of rv_reduce)."""
        r1 = cuda.shared.array(RVB, dtype=NB)
        r2 = cuda.shared.array(RVB, dtype=NB)
        t = cuda.threadIdx.x
        nt = cuda.blockDim.x
        U = nll_rows.shape[0]
        a = ZERO
        b = ZERO
        for u in range(t, U, nt):
            a += nll_rows[u]
            b += kl_rows[u]
        r1[t] = a
        r2[t] = b
        se_tree(r1, t, nt, 0)
        se_tree(r2, t, nt, 0)
        if t == 0:
            nll = r1[0] / DT(U)
            kl = r2[0] / DT(U)
            loss = nll + beta * kl
            if has_extra != 0:
                loss += lam * extra[2]
            out[0] = loss
            out[1] = nll
            out[2] = kl

    def rv_latent_bwd(dz, mu, lv, eps, pmu, plv, do2, beta, inv_u, has_eps, has_pia):
        """``do2 = [dmu, dlogvar]``: ``dmu = dz + beta mu / U (+ pmu)``, ``dlogvar =
        dz eps sigma / 2 + beta (exp(logvar) - 1) / (2U) (+ plv)``; without eps z = mu, so
        dz goes to dmu only. Thread (u, k) over (U, d)."""
        d = mu.shape[1]
        total = mu.shape[0] * d
        idx = cuda.grid(1)
        while idx < total:
            u = idx // d
            k = idx - u * d
            g = dz[u, k]
            v = lv[u, k]
            ev = math.exp(v)
            a = beta * mu[u, k] * inv_u
            b = beta * (ev - ONE) * inv_u * HALF
            if has_eps != 0:
                b += g * eps[u, k] * math.exp(v * HALF) * HALF
            a += g
            if has_pia != 0:
                a += pmu[u, k]
                b += plv[u, k]
            do2[u, k] = a
            do2[u, d + k] = b
            idx += cuda.gridsize(1)

    def rv_eaug(E, Ea):
        """``Ea[i] = [E_i, ||E_i||^2, 1]`` (I, d + 2): X @ Ea gives X E, X rownorm2(E), n_u."""
        i = cuda.grid(1)
        if i < E.shape[0]:
            d = E.shape[1]
            acc = ZERO
            for k in range(d):
                e = E[i, k]
                Ea[i, k] = e
                acc += e * e
            Ea[i, d] = acc
            Ea[i, d + 1] = ONE

    def rv_centroid(ax, cen):
        """``cen[u] = (X E)_u / n_u`` from ``ax = X @ [E, rn2, 1]``; 0 where n_u = 0."""
        d = cen.shape[1]
        total = cen.shape[0] * d
        idx = cuda.grid(1)
        while idx < total:
            u = idx // d
            k = idx - u * d
            n = ax[u, d + 1]
            v = ZERO
            if n > ZERO:
                v = ax[u, k] / n
            cen[u, k] = v
            idx += cuda.gridsize(1)

    def rv_pia_rows(mu, lv, ax, z, rows, has_z):
        """Per user u (one thread): ``ebar = (X E)_u / n_u``, ``spread = (X rn2)_u / n_u -
        ||ebar||^2``; closed form ``||mu - ebar||^2 + sum exp(logvar) + spread``, or with z
        (S, U, d) the Monte Carlo ``mean_s ||z_su - ebar||^2 + spread`` (= mean_s mean_{i in
        S_u} ||z_su - e_i||^2); NaN where n_u = 0."""
        u = cuda.grid(1)
        if u < rows.shape[0]:
            d = mu.shape[1]
            n = ax[u, d + 1]
            if n > ZERO:
                inv = ONE / n
                eb2 = ZERO
                acc = ZERO
                for k in range(d):
                    e = ax[u, k] * inv
                    eb2 += e * e
                    if has_z == 0:
                        q = mu[u, k] - e
                        acc += q * q + math.exp(lv[u, k])
                if has_z != 0:
                    S = z.shape[0]
                    for s in range(S):
                        for k in range(d):
                            q = z[s, u, k] - ax[u, k] * inv
                            acc += q * q
                    acc = acc / DT(S)
                rows[u] = acc + ax[u, d] * inv - eb2
            else:
                rows[u] = NAN

    def rv_reduce(rows, ax, out):
        """One block: ``out = (sum, count, sum / count)`` over the users with n_u > 0 (n_u in
        ax's last column); ``sum / count`` is NaN when no user has items."""
        r1 = cuda.shared.array(RVB, dtype=NB)
        r2 = cuda.shared.array(RVB, dtype=NB)
        t = cuda.threadIdx.x
        nt = cuda.blockDim.x
        c = ax.shape[1] - 1
        a = ZERO
        b = ZERO
        for u in range(t, rows.shape[0], nt):
            if ax[u, c] > ZERO:
                a += rows[u]
                b += ONE
        r1[t] = a
        r2[t] = b
        se_tree(r1, t, nt, 0)
        se_tree(r2, t, nt, 0)
        if t == 0:
            out[0] = r1[0]
            out[1] = r2[0]
            out[2] = r1[0] / r2[0] if r2[0] > ZERO else NAN

    def rv_pia_grad_rows(mu, lv, ax, red, dmu, dlv, waug, scale):
        """Gradient of ``scale * mean_{u: n_u > 0} L_A(u)`` in (mu, logvar), with Nv = red[1]:
        ``dmu = scale 2 (mu - ebar) / Nv``, ``dlogvar = scale exp(logvar) / Nv`` (0 for empty
        users), and ``waug[u] = [mu_u / n_u, 1 / n_u]`` (0 for empty users) for the E-gradient.
        Thread (u, k) over (U, d)."""
        d = mu.shape[1]
        total = mu.shape[0] * d
        c = scale / red[1]
        idx = cuda.grid(1)
        while idx < total:
            u = idx // d
            k = idx - u * d
            n = ax[u, d + 1]
            a = ZERO
            b = ZERO
            w = ZERO
            if n > ZERO:
                m = mu[u, k]
                a = c * TWO * (m - ax[u, k] / n)
                b = c * math.exp(lv[u, k])
                w = m / n
                if k == 0:
                    waug[u, d] = ONE / n
            elif k == 0:
                waug[u, d] = ZERO
            dmu[u, k] = a
            dlv[u, k] = b
            waug[u, k] = w
            idx += cuda.gridsize(1)

    def rv_pia_de(E, G, red, dE, scale):
        """``dE_k = scale (2 / Nv) (e_k c_k - g_k)`` with ``G = X^T waug`` = [g, c]
        (``g_k = sum_u X_uk mu_u / n_u``, ``c_k = sum_u X_uk / n_u``): the sum over users of
        ``(2 / n_u)(e_k - mu_u)`` for k in S_u. Thread (k, j) over (I, d)."""
        d = E.shape[1]
        total = E.shape[0] * d
        c = scale * TWO / red[1]
        idx = cuda.grid(1)
        while idx < total:
            k = idx // d
            j = idx - k * d
            dE[k, j] = c * (E[k, j] * G[k, d] - G[k, j])
            idx += cuda.gridsize(1)

    def rv_w2(mu1, s1, mu2, s2, out):
        """``out[u] = sqrt(||mu1_u - mu2_u||^2 + ||s1_u - s2_u||^2)`` (one thread per row)."""
        u = cuda.grid(1)
        if u < out.shape[0]:
            acc = ZERO
            for k in range(mu1.shape[1]):
                a = mu1[u, k] - mu2[u, k]
                b = s1[u, k] - s2[u, k]
                acc += a * a + b * b
            out[u] = math.sqrt(acc)

    def rv_densify(data, indices, indptr, out):
        """``out[u, indices_p] = data_p`` over row u's stored entries (one thread per row; out
        zeroed by the caller): a CSR metric input expanded to the scores' dtype."""
        u = cuda.grid(1)
        if u < out.shape[0]:
            for p in range(indptr[u], indptr[u + 1]):
                out[u, indices[p]] = data[p]

    def rv_metric_stats(scores, fold, held, out):
        """The metric validator's value checks (grid-stride, atomics into out, zeroed by the
        caller): out[0] = 1 if a score is NaN or +inf, out[1] / out[2] = 1 if X_fold / X_heldout
        hold a value outside {0, 1}, out[3] += #(u, i) with both nonzero."""
        n = scores.shape[1]
        total = scores.shape[0] * n
        idx = cuda.grid(1)
        a = ZERO
        b = ZERO
        c = ZERO
        ov = ZERO
        while idx < total:
            r = idx // n
            j = idx - r * n
            v = scores[r, j]
            if v != v or v == INF:
                a = ONE
            f = fold[r, j]
            h = held[r, j]
            if f != ZERO and f != ONE:
                b = ONE
            if h != ZERO and h != ONE:
                c = ONE
            if f != ZERO and h != ZERO:
                ov += ONE
            idx += cuda.gridsize(1)
        if a != ZERO:
            cuda.atomic.max(out, 0, ONE)
        if b != ZERO:
            cuda.atomic.max(out, 1, ONE)
        if c != ZERO:
            cuda.atomic.max(out, 2, ONE)
        if ov != ZERO:
            cuda.atomic.add(out, 3, ov)

    @cuda.jit(device=True, inline="always")
    def rv_seqsum(a, n):
        """``sum a[0:n]`` in float64, in order (the float32 kernels: the result is rounded to
        float32 once, so the summation order does not show; keeps their float64 code small)."""
        res = F64_0
        for i in range(n):
            res += a[i]
        return res

    @cuda.jit(device=True, inline="always")
    def rv_pairwise64(a, n):
        """NumPy's pairwise sum of ``a[0:n]`` (float64, n <= 128: the unrolled-by-8 block of
        ``pairwise_sum``), so that DCG is bit-equal to the reference's ``.sum(axis=1)``."""
        if n < 8:
            res = F64_0
            for i in range(n):
                res += a[i]
            return res
        r0 = a[0]
        r1 = a[1]
        r2 = a[2]
        r3 = a[3]
        r4 = a[4]
        r5 = a[5]
        r6 = a[6]
        r7 = a[7]
        i = 8
        while i < n - (n % 8):
            r0 += a[i]
            r1 += a[i + 1]
            r2 += a[i + 2]
            r3 += a[i + 3]
            r4 += a[i + 4]
            r5 += a[i + 5]
            r6 += a[i + 6]
            r7 += a[i + 7]
            i += 8
        res = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
        while i < n:
            res += a[i]
            i += 1
        return res

    rv_pairwise = rv_pairwise64 if dtype == "float64" else rv_seqsum

    def rv_topk(scores, fold, held, tp, idcg, out, k, mode):
        """Recall@k (mode 0) or NDCG@k (mode 1) of one row per block.

        Selection: the items ranked by (score descending, index ascending), fold-in items
        (``fold != 0``) and ``-inf`` scores excluded; k rounds (k <= RV_KMAX), each a block
        arg-max over the threads' current candidates; only the thread that owned the winner
        rescans its items (strided by blockDim) for its next candidate, so a row is read about
        ``1 + k / blockDim`` times. The selected indices live in shared memory. Then, with
        ``|T| = #{i: held_ui != 0}`` and m = min(k, |T|): ``recall = hits / m``, ``ndcg = sum_r
        hit_r tp[r] / idcg[m]`` (``tp[r] = 1 / log2(r + 2)`` and ``idcg[j] = sum_{r<j} tp[r]``
        are the reference's tables, uploaded float64; DCG in NumPy's pairwise order in the float64
        kernel, in order in the float32 one). The value is assembled in float64 and rounded once
        to the output dtype (a few float64 instructions in the float32 kernel, by design); NaN
        where |T| = 0."""
        sv = cuda.shared.array(RVB, dtype=NB)
        si = cuda.shared.array(RVB, dtype=int64)
        sel = cuda.shared.array(RVK, dtype=int64)
        t = cuda.threadIdx.x
        nt = cuda.blockDim.x
        u = cuda.blockIdx.x
        I = scores.shape[1]
        cnt = ZERO
        for i in range(t, I, nt):
            if held[u, i] != ZERO:
                cnt += ONE
        sv[t] = cnt
        se_tree(sv, t, nt, 0)
        nT = int64(sv[0])
        cuda.syncthreads()
        bv = NINF
        bi = int64(-1)
        for i in range(t, I, nt):
            v = scores[u, i]
            if v > NINF and fold[u, i] == ZERO:
                if rv_before(v, i, bv, bi):
                    bv = v
                    bi = i
        nsel = 0
        for r in range(k):
            sv[t] = bv
            si[t] = bi
            cuda.syncthreads()
            off = nt // 2
            while off > 0:
                if t < off:
                    if rv_before(sv[t + off], si[t + off], sv[t], si[t]):
                        sv[t] = sv[t + off]
                        si[t] = si[t + off]
                cuda.syncthreads()
                off //= 2
            wi = si[0]
            wv = sv[0]
            cuda.syncthreads()
            if wi < 0:
                break
            if t == 0:
                sel[r] = wi
            nsel += 1
            if wi % nt == t:
                bv = NINF
                bi = int64(-1)
                for i in range(t, I, nt):
                    v = scores[u, i]
                    if v > NINF and fold[u, i] == ZERO:
                        if (v < wv or (v == wv and i > wi)) and rv_before(v, i, bv, bi):
                            bv = v
                            bi = i
        if t == 0:
            if nT == 0:
                out[u] = NAN
            else:
                m = min(k, nT)
                acc = cuda.local.array(RVK, dtype=float64)
                hits = 0
                for r in range(nsel):
                    if held[u, sel[r]] != ZERO:
                        hits += 1
                        acc[r] = tp[r]
                    else:
                        acc[r] = F64_0
                ncol = min(k, I)                 # the reference's (U, min(k, I)) hit matrix
                for r in range(nsel, ncol):
                    acc[r] = F64_0
                if mode == 0:
                    out[u] = DT(float64(hits) / float64(m))
                else:
                    out[u] = DT(rv_pairwise(acc, ncol) / idcg[m])

    def _rv_cast(src, dst):
        """``dst = src`` converted to this kernel's float dtype (grid-stride, 2-D)."""
        n = dst.shape[1]
        total = dst.shape[0] * n
        idx = cuda.grid(1)
        while idx < total:
            r = idx // n
            c = idx - r * n
            dst[r, c] = DT(src[r, c])
            idx += cuda.gridsize(1)

    def rv_idx32(src, dst):
        """``dst = int32(src)``: int64 CSR index arrays narrowed once (indices < 2^31)."""
        i = cuda.grid(1)
        if i < dst.shape[0]:
            dst[i] = src[i]

    def rv_flags(A, out, slot, kind):
        """One value check of the Mult-VAE validators (``flags`` hook) over a 3-D view
        (grid-stride, atomics into ``out[slot]``, zeroed by the caller): kind 0 "binary" /
        1 "ones" / 2 "finite" / 3 "nonneg" set out[slot] = 1 on a violating entry; kind 4
        "nonzero" sets it to 1 on a nonzero entry."""
        n1 = A.shape[1]
        n2 = A.shape[2]
        total = A.shape[0] * n1 * n2
        idx = cuda.grid(1)
        hit = ZERO
        while idx < total:
            q = idx // n2
            c = idx - q * n2
            b = q // n1
            r = q - b * n1
            v = A[b, r, c]
            if kind == 0:
                bad = v != ZERO and v != ONE
            elif kind == 1:
                bad = v != ONE
            elif kind == 2:
                bad = not (v - v == ZERO)
            elif kind == 3:
                bad = not (v >= ZERO)
            else:
                bad = v != ZERO
            if bad:
                hit = ONE
            idx += cuda.gridsize(1)
        if hit != ZERO:
            cuda.atomic.max(out, slot, ONE)

    # ------------------------------------------------------------------ graph networks (gnn_*)
    # The layers, fusion and focal loss of the multilayer GNN (arXiv 2507.07298), see
    # backends/numba_cuda/gnn.py. NO atomics: every segment reduction is one thread walking a
    # CSR row (destination-sorted, or the transposed source-sorted CSR) in its fixed order, and
    # every reduction over a long axis is split into fixed row chunks whose partials one thread
    # adds in chunk order. Integer-only kernels have no float arithmetic (the module launches
    # their float64 variant). All float arithmetic in the input dtype.
    GNR = GNN_RED                                  # threads / shared words of the stats kernels
    GI64MAX = np.int64(np.iinfo(np.int64).max)
    GI64MIN = np.int64(np.iinfo(np.int64).min)
    G_SM_EPS = DT(GNN_SOFTMAX_EPS)                 # PyG softmax: sum of exps + 1e-16
    G_EPS8 = DT(GNN_EPS8)                          # edge MLP: std + 1e-8, sigmoid(.) + 1e-8
    G_HALF = DT(0.5)

    def gnn_istats(src, dst, part):
        """Validation stats of an index pair (src, dst) (E,) — for a 1-D index array the same
        array twice: block b of a grid-stride sweep writes ``part[b] = (min, max, number of
        e with src_e == dst_e)`` (shared-memory tree over a power-of-2 block; no atomics)."""
        smin = cuda.shared.array(GNR, int64)
        smax = cuda.shared.array(GNR, int64)
        scnt = cuda.shared.array(GNR, int64)
        t = cuda.threadIdx.x
        lo = GI64MAX
        hi = GI64MIN
        c = int64(0)
        e = cuda.grid(1)
        while e < src.shape[0]:
            a = src[e]
            b = dst[e]
            lo = min(lo, min(a, b))
            hi = max(hi, max(a, b))
            if a == b:
                c += 1
            e += cuda.gridsize(1)
        smin[t] = lo
        smax[t] = hi
        scnt[t] = c
        cuda.syncthreads()
        off = cuda.blockDim.x // 2
        while off > 0:
            if t < off:
                smin[t] = min(smin[t], smin[t + off])
                smax[t] = max(smax[t], smax[t + off])
                scnt[t] += scnt[t + off]
            cuda.syncthreads()
            off //= 2
        if t == 0:
            b = cuda.blockIdx.x
            part[b, 0] = smin[0]
            part[b, 1] = smax[0]
            part[b, 2] = scnt[0]

    def gnn_istats_finish(part, out, off):
        """One thread: the block partials of ``gnn_istats`` in block order into
        ``out[off:off + 3]`` (min, max, loop count)."""
        if cuda.grid(1) == 0:
            lo = part[0, 0]
            hi = part[0, 1]
            c = part[0, 2]
            for b in range(1, part.shape[0]):
                lo = min(lo, part[b, 0])
                hi = max(hi, part[b, 1])
                c += part[b, 2]
            out[off] = lo
            out[off + 1] = hi
            out[off + 2] = c

    def gnn_fstats(A, ipart, fpart):
        """Validation stats of a float array (viewed 2-D): block b writes the counts of entries
        that are non-finite / not >= 0 / not 0 or 1 / not in [0, 1] to ``ipart[b, 0:4]`` and the
        min / max of the finite entries to ``fpart[b, 0:2]`` (+inf / -inf if none)."""
        c0 = cuda.shared.array(GNR, int64)
        c1 = cuda.shared.array(GNR, int64)
        c2 = cuda.shared.array(GNR, int64)
        c3 = cuda.shared.array(GNR, int64)
        fmn = cuda.shared.array(GNR, NB)
        fmx = cuda.shared.array(GNR, NB)
        t = cuda.threadIdx.x
        n1 = A.shape[1]
        total = A.shape[0] * n1
        k0 = int64(0)
        k1 = int64(0)
        k2 = int64(0)
        k3 = int64(0)
        mn = INF
        mx = NINF
        e = cuda.grid(1)
        while e < total:
            r = e // n1
            v = A[r, e - r * n1]
            if v - v == ZERO:
                mn = min(mn, v)
                mx = max(mx, v)
            else:
                k0 += 1
            if not (v >= ZERO):
                k1 += 1
            if v != ZERO and v != ONE:
                k2 += 1
            if not (v >= ZERO and v <= ONE):
                k3 += 1
            e += cuda.gridsize(1)
        c0[t] = k0
        c1[t] = k1
        c2[t] = k2
        c3[t] = k3
        fmn[t] = mn
        fmx[t] = mx
        cuda.syncthreads()
        off = cuda.blockDim.x // 2
        while off > 0:
            if t < off:
                c0[t] += c0[t + off]
                c1[t] += c1[t + off]
                c2[t] += c2[t + off]
                c3[t] += c3[t + off]
                fmn[t] = min(fmn[t], fmn[t + off])
                fmx[t] = max(fmx[t], fmx[t + off])
            cuda.syncthreads()
            off //= 2
        if t == 0:
            b = cuda.blockIdx.x
            ipart[b, 0] = c0[0]
            ipart[b, 1] = c1[0]
            ipart[b, 2] = c2[0]
            ipart[b, 3] = c3[0]
            fpart[b, 0] = fmn[0]
            fpart[b, 1] = fmx[0]

    def gnn_fstats_finish(ipart, fpart, out, fout, off, foff):
        """One thread: ``gnn_fstats`` partials in block order into ``out[off:off + 4]`` (the
        counts) and ``fout[foff:foff + 2]`` (min, max; ``fout`` is a float view of the same
        packed buffer as ``out``, so that one copy reads every stat of a call)."""
        if cuda.grid(1) == 0:
            for k in range(4):
                c = int64(0)
                for b in range(ipart.shape[0]):
                    c += ipart[b, k]
                out[off + k] = c
            mn = fpart[0, 0]
            mx = fpart[0, 1]
            for b in range(1, fpart.shape[0]):
                mn = min(mn, fpart[b, 0])
                mx = max(mx, fpart[b, 1])
            fout[foff] = mn
            fout[foff + 1] = mx

    def gnn_keys(a, b, n, ne, mode, keys, perm):
        """Sort keys and the identity permutation. mode 0: ``keys[e] = b[e] n + a[e]`` (b = dst,
        a = src: CSR order) for e < ne and the loop keys ``i n + i`` of the N appended loops
        (i = e - ne) beyond; mode 1: ``keys[e] = b[e]`` (one index array)."""
        e = cuda.grid(1)
        while e < keys.shape[0]:
            if mode == 1:
                keys[e] = b[e]
            elif e < ne:
                keys[e] = b[e] * n + a[e]
            else:
                keys[e] = (e - ne) * n + (e - ne)
            perm[e] = e
            e += cuda.gridsize(1)

    def gnn_split(keys, n, srcs, dsts):
        """Sorted (dst, src) keys back to ``srcs = key % n`` and ``dsts = key // n``."""
        e = cuda.grid(1)
        while e < keys.shape[0]:
            d = keys[e] // n
            dsts[e] = d
            srcs[e] = keys[e] - d * n
            e += cuda.gridsize(1)

    def gnn_lower_bound(sorted_keys, ptr):
        """``ptr[i]`` = the first position p with ``sorted_keys[p] >= i`` (binary search, one
        thread per i): the exclusive cumulative in-degrees without a histogram."""
        i = cuda.grid(1)
        while i < ptr.shape[0]:
            lo = int64(0)
            hi = int64(sorted_keys.shape[0])
            while lo < hi:
                mid = (lo + hi) // 2
                if sorted_keys[mid] < i:
                    lo = mid + 1
                else:
                    hi = mid
            ptr[i] = lo
            i += cuda.gridsize(1)

    def gnn_gather_i(idx, src, out):
        """``out[t] = src[idx[t]]`` (int64)."""
        t = cuda.grid(1)
        while t < out.shape[0]:
            out[t] = src[idx[t]]
            t += cuda.gridsize(1)

    def gnn_loop_keep(keys, perm, n, ne, keep):
        """``keep[p] = 0`` for an INPUT self-loop (perm < ne, src == dst), else 1 (the sorted
        edge list with the N appended loops)."""
        p = cuda.grid(1)
        while p < keep.shape[0]:
            k = keys[p]
            d = k // n
            keep[p] = 0 if (perm[p] < ne and k - d * n == d) else 1
            p += cuda.gridsize(1)

    def gnn_loop_compact(keys, perm, pos, n, ne, take_last, srcs, dsts, origin):
        """Compaction of the sorted list without the input loops: edge p goes to ``pos[p]``
        (exclusive scan of ``gnn_loop_keep``); ``origin`` = its input position, and for an
        appended loop -1 or, with ``take_last`` ("remaining"), the input position of the node's
        LAST input loop — the stable sort puts it right before the appended loop."""
        p = cuda.grid(1)
        while p < keys.shape[0]:
            k = keys[p]
            d = k // n
            s = k - d * n
            o = perm[p]
            if not (o < ne and s == d):
                q = pos[p]
                srcs[q] = s
                dsts[q] = d
                if o < ne:
                    origin[q] = o
                else:
                    last = int64(-1)
                    if take_last != 0 and p > 0:
                        if keys[p - 1] == k:
                            last = perm[p - 1]
                    origin[q] = last
            p += cuda.gridsize(1)

    def gnn_gather_rows(V, origin, fillv, out):
        """``out[q] = V[origin[q]]``, or ``fillv`` where origin is -1 (edge values of the list
        used, in its CSR order)."""
        ncol = out.shape[1]
        total = out.shape[0] * ncol
        k = cuda.grid(1)
        while k < total:
            q = k // ncol
            c = k - q * ncol
            o = origin[q]
            out[q, c] = V[o, c] if o >= 0 else fillv
            k += cuda.gridsize(1)

    def gnn_loop_mean(ptr, srcs, origin, V, out):
        """fill="mean": one thread per (row i, column c) writes the filled loop of row i
        (origin -1) as the mean of V over the row's non-loop edges, in CSR order (0 if none;
        PyG's scatter-mean)."""
        r = cuda.blockIdx.x * cuda.blockDim.y + cuda.threadIdx.y
        c = cuda.blockIdx.y * cuda.blockDim.x + cuda.threadIdx.x
        if r < ptr.shape[0] - 1 and c < out.shape[1]:
            acc = ZERO
            cnt = ZERO
            ql = int64(-1)
            for q in range(ptr[r], ptr[r + 1]):
                if srcs[q] != r:
                    acc += V[origin[q], c]
                    cnt += ONE
                elif origin[q] < 0:
                    ql = q
            if ql >= 0:
                out[ql, c] = acc / cnt if cnt > ZERO else ZERO

    def gnn_deg(ptr, w, has_w, dinv):
        """GCN: ``deg_i = sum_row w`` (1 per edge without weights) in CSR order and
        ``dinv_i = deg_i^-1/2``, 0 where deg_i = 0 (PyG's inf -> 0)."""
        i = cuda.grid(1)
        while i < dinv.shape[0]:
            deg = ZERO
            for q in range(ptr[i], ptr[i + 1]):
                deg += w[q, 0] if has_w != 0 else ONE
            dinv[i] = ONE / math.sqrt(deg) if deg > ZERO else ZERO
            i += cuda.gridsize(1)

    def gnn_gcn_norm(srcs, dsts, w, has_w, dinv, normalize, norm):
        """``norm_q = dinv_src w_q dinv_dst`` (``w_q`` itself without normalisation)."""
        q = cuda.grid(1)
        while q < norm.shape[0]:
            wq = w[q, 0] if has_w != 0 else ONE
            if normalize != 0:
                wq = dinv[srcs[q]] * wq * dinv[dsts[q]]
            norm[q] = wq
            q += cuda.gridsize(1)

    def gnn_spmm(ptr, idx, w, wperm, X, bias, out, selfc, scale, C, has_w, has_perm, has_bias):
        """The segment sum of every layer, one thread per (row r, column f), the row's edges in
        their fixed order::

            out[r, f] = scale sum_{p in row r} w[q_p, f // C] X[idx_p, f % X.shape[1]]
                        + selfc X[r, f % X.shape[1]] + bias[f]

        (``q_p = wperm[p]`` with has_perm — weights kept in CSR order read through the
        transposed CSR — else p; weight 1 without has_w). GCN: w = norm; GIN: selfc = 1 + eps;
        GAT: w = alpha (E', heads) with C channels per head; the backward passes use the
        transposed CSR (rows = sources, idx = destinations)."""
        r = cuda.blockIdx.x * cuda.blockDim.y + cuda.threadIdx.y
        f = cuda.blockIdx.y * cuda.blockDim.x + cuda.threadIdx.x
        if r < out.shape[0] and f < out.shape[1]:
            xc = X.shape[1]
            fx = f % xc
            h = f // C
            acc = ZERO
            for p in range(ptr[r], ptr[r + 1]):
                v = X[idx[p], fx]
                if has_w != 0:
                    q = p
                    if has_perm != 0:
                        q = wperm[p]
                    v = w[q, h] * v
                acc += v
            acc = scale * acc
            if selfc != ZERO:
                acc += selfc * X[r, fx]
            if has_bias != 0:
                acc += bias[f]
            out[r, f] = acc

    def gnn_edge_dot(srcs, dsts, A, B, out):
        """``out[q] = <A[dst_q], B[src_q]>`` (GCN: dnorm = <G_dst, (XW)_src>), one thread per
        edge."""
        q = cuda.grid(1)
        while q < out.shape[0]:
            d = dsts[q]
            s = srcs[q]
            acc = ZERO
            for f in range(A.shape[1]):
                acc += A[d, f] * B[s, f]
            out[q] = acc
            q += cuda.gridsize(1)

    def gnn_gcn_gdeg(ptr, srcs, tptr, tedge, dsts, w, has_w, dinv, dnorm, gdeg):
        """GCN weight gradient, per node k (transposed CSR, then CSR, fixed orders)::

            gdeg_k = -1/2 dinv_k^3 [sum_{src_q = k} dnorm_q w_q dinv_dst
                                    + sum_{dst_q = k} dnorm_q dinv_src w_q]"""
        k = cuda.grid(1)
        while k < gdeg.shape[0]:
            acc = ZERO
            for t in range(tptr[k], tptr[k + 1]):
                q = tedge[t]
                wq = w[q, 0] if has_w != 0 else ONE
                acc += dnorm[q] * wq * dinv[dsts[q]]
            for q in range(ptr[k], ptr[k + 1]):
                wq = w[q, 0] if has_w != 0 else ONE
                acc += dnorm[q] * dinv[srcs[q]] * wq
            dk = dinv[k]
            gdeg[k] = -G_HALF * dk * dk * dk * acc
            k += cuda.gridsize(1)

    def gnn_gcn_gw(srcs, dsts, dnorm, dinv, gdeg, normalize, gw):
        """``gw_q = dnorm_q dinv_src dinv_dst + gdeg_dst`` (``dnorm_q`` without
        normalisation)."""
        q = cuda.grid(1)
        while q < gw.shape[0]:
            if normalize != 0:
                d = dsts[q]
                gw[q] = dnorm[q] * dinv[srcs[q]] * dinv[d] + gdeg[d]
            else:
                gw[q] = dnorm[q]
            q += cuda.gridsize(1)

    def gnn_scatter_origin(origin, V, out):
        """``out[origin[q]] = V[q]`` where origin >= 0 (each input edge is the origin of at most
        one edge used: no two threads write one entry; ``out`` zeroed by the caller)."""
        q = cuda.grid(1)
        while q < V.shape[0]:
            o = origin[q]
            if o >= 0:
                out[o] = V[q]
            q += cuda.gridsize(1)

    def gnn_head_dot(Xp, a, out):
        """``out[n, h] = sum_c Xp[n, h C + c] a[h, c]`` (GAT's s_src / s_dst; with W_e and a_e
        the (D, heads) matrix whose product with the edge attributes is s_edge)."""
        H = a.shape[0]
        C = a.shape[1]
        total = out.shape[0] * H
        k = cuda.grid(1)
        while k < total:
            n = k // H
            h = k - n * H
            acc = ZERO
            for c in range(C):
                acc += Xp[n, h * C + c] * a[h, c]
            out[n, h] = acc
            k += cuda.gridsize(1)

    def gnn_gat_scores(srcs, dsts, ssrc, sdst, sedge, has_edge, slope, out):
        """``out[q, h] = LeakyReLU(s_src[src_q, h] + s_dst[dst_q, h] (+ s_edge[q, h]))``."""
        H = out.shape[1]
        total = out.shape[0] * H
        k = cuda.grid(1)
        while k < total:
            q = k // H
            h = k - q * H
            z = ssrc[srcs[q], h] + sdst[dsts[q], h]
            if has_edge != 0:
                z += sedge[q, h]
            out[q, h] = z if z > ZERO else slope * z
            k += cuda.gridsize(1)

    @cuda.jit(device=True, inline="always")
    def gnn_row_lse(ptr, perm, has_perm, S, r, h):
        """Online (max, sum of exp(. - max)) of the scores of row r, head h, in row order;
        NaN propagates, -inf adds nothing, and a +inf max makes the sum NaN (exp(inf - inf),
        as the two-pass reference)."""
        m = NINF
        s = ZERO
        for p in range(ptr[r], ptr[r + 1]):
            q = perm[p] if has_perm != 0 else p
            x = S[q, h]
            if x > m:
                s = s * math.exp(m - x) + ONE
                m = x
            elif x != NINF:
                s += math.exp(x - m)
        if m == INF:
            s = NAN
        return m, s

    def gnn_seg_softmax(ptr, perm, has_perm, S, out):
        """Segment softmax, one thread per (row, head): the online max / sum-exp of the row,
        then ``out[q, h] = exp(S[q, h] - m) / (sum + 1e-16)`` (q = perm[p] with has_perm: the
        rows index input positions; else CSR positions)."""
        H = S.shape[1]
        total = (ptr.shape[0] - 1) * H
        k = cuda.grid(1)
        while k < total:
            r = k // H
            h = k - r * H
            m, s = gnn_row_lse(ptr, perm, has_perm, S, r, h)
            den = s + G_SM_EPS
            for p in range(ptr[r], ptr[r + 1]):
                q = perm[p] if has_perm != 0 else p
                out[q, h] = math.exp(S[q, h] - m) / den
            k += cuda.gridsize(1)

    def gnn_seg_softmax_bwd(ptr, perm, has_perm, S, is_alpha, G, Y, slope, has_act, out):
        """Softmax backward per (row, head): alpha (S itself with is_alpha, else recomputed
        from the scores S), ``dot = sum_row alpha G``, ``out = alpha (G - dot)``, times the
        LeakyReLU derivative (1 where the activated score Y > 0, else slope) with has_act.
        ``out`` may alias ``G`` (each (q, h) is read, then written, by its one thread)."""
        H = S.shape[1]
        total = (ptr.shape[0] - 1) * H
        k = cuda.grid(1)
        while k < total:
            r = k // H
            h = k - r * H
            m = ZERO
            den = ONE
            if is_alpha == 0:
                m, s = gnn_row_lse(ptr, perm, has_perm, S, r, h)
                den = s + G_SM_EPS
            dot = ZERO
            for p in range(ptr[r], ptr[r + 1]):
                q = perm[p] if has_perm != 0 else p
                a = S[q, h] if is_alpha != 0 else math.exp(S[q, h] - m) / den
                dot += a * G[q, h]
            for p in range(ptr[r], ptr[r + 1]):
                q = perm[p] if has_perm != 0 else p
                a = S[q, h] if is_alpha != 0 else math.exp(S[q, h] - m) / den
                ds = a * (G[q, h] - dot)
                if has_act != 0 and not (Y[q, h] > ZERO):
                    ds = ds * slope
                out[q, h] = ds
            k += cuda.gridsize(1)

    def gnn_gat_agg(ptr, srcs, alpha, Xp, bias, has_bias, concat, inv_h, out):
        """GAT aggregation, one thread per (row i, output column f), never an E x heads x C
        tensor: concat ``out[i, hC + c] = sum_row alpha[q, h] Xp[src_q, hC + c]``; mean
        ``out[i, c] = inv_h sum_h sum_row alpha[q, h] Xp[src_q, hC + c]``; then + b."""
        r = cuda.blockIdx.x * cuda.blockDim.y + cuda.threadIdx.y
        f = cuda.blockIdx.y * cuda.blockDim.x + cuda.threadIdx.x
        H = alpha.shape[1]
        if r < out.shape[0] and f < out.shape[1]:
            acc = ZERO
            if concat != 0:
                h = f // (Xp.shape[1] // H)
                for q in range(ptr[r], ptr[r + 1]):
                    acc += alpha[q, h] * Xp[srcs[q], f]
            else:
                C = out.shape[1]
                for h in range(H):
                    ah = ZERO
                    for q in range(ptr[r], ptr[r + 1]):
                        ah += alpha[q, h] * Xp[srcs[q], h * C + f]
                    acc += ah
                acc = acc * inv_h
            if has_bias != 0:
                acc += bias[f]
            out[r, f] = acc

    def gnn_gat_dalpha(srcs, dsts, Xp, G, concat, inv_h, out):
        """``out[q, h] = <Gh[dst_q, h], Xp[src_q, h]>`` with Gh = G viewed (N, heads, C)
        (concat) or G / heads for every head (mean), one thread per (edge, head)."""
        H = out.shape[1]
        C = Xp.shape[1] // H
        total = out.shape[0] * H
        k = cuda.grid(1)
        while k < total:
            q = k // H
            h = k - q * H
            d = dsts[q]
            s = srcs[q]
            acc = ZERO
            for c in range(C):
                g = G[d, h * C + c] if concat != 0 else G[d, c] * inv_h
                acc += g * Xp[s, h * C + c]
            out[q, h] = acc
            k += cuda.gridsize(1)

    def gnn_seg_sum(ptr, perm, has_perm, V, out):
        """``out[i, h] = sum_{p in row i} V[q_p, h]`` (q_p = perm[p] with has_perm), one thread
        per (row, column), fixed order (GAT's ds_src on the transposed CSR, ds_dst on the
        CSR)."""
        H = V.shape[1]
        total = out.shape[0] * H
        k = cuda.grid(1)
        while k < total:
            i = k // H
            h = k - i * H
            acc = ZERO
            for p in range(ptr[i], ptr[i + 1]):
                q = perm[p] if has_perm != 0 else p
                acc += V[q, h]
            out[i, h] = acc
            k += cuda.gridsize(1)

    def gnn_gat_dxp_add(dXp, ds_src, ds_dst, a_src, a_dst):
        """``dXp[n, hC + c] += ds_src[n, h] a_src[h, c] + ds_dst[n, h] a_dst[h, c]``."""
        H = a_src.shape[0]
        C = a_src.shape[1]
        HC = H * C
        total = dXp.shape[0] * HC
        k = cuda.grid(1)
        while k < total:
            n = k // HC
            f = k - n * HC
            h = f // C
            c = f - h * C
            dXp[n, f] = dXp[n, f] + (ds_src[n, h] * a_src[h, c] + ds_dst[n, h] * a_dst[h, c])
            k += cuda.gridsize(1)

    def gnn_gat_edge_grads(M, W_e, a_e, dW_e, da_e):
        """From ``M = A^T dz`` (D, heads): ``dW_e[d, hC + c] = M[d, h] a_e[h, c]`` and
        ``da_e[h, c] = sum_d M[d, h] W_e[d, hC + c]``."""
        D = M.shape[0]
        H = a_e.shape[0]
        C = a_e.shape[1]
        HC = H * C
        total = D * HC + HC
        k = cuda.grid(1)
        while k < total:
            if k < D * HC:
                d = k // HC
                f = k - d * HC
                h = f // C
                dW_e[d, f] = M[d, h] * a_e[h, f - h * C]
            else:
                f = k - D * HC
                h = f // C
                acc = ZERO
                for d in range(D):
                    acc += M[d, h] * W_e[d, f]
                da_e[h, f - h * C] = acc
            k += cuda.gridsize(1)

    def gnn_colsum_part(A, B, part, mode, C, K2):
        """Split column reductions over the rows j of A (J rows in gridDim.y fixed chunks; one
        thread per (output k, chunk s)): mode 0 ``sum_j A[j, k]``; mode 1
        ``sum_j A[j, k] B[j, k // C]``; mode 2 ``sum_j A[j, k // K2] B[j, k % K2]`` (a small
        A^T B). ``gnn_colsum_finish`` adds the chunk partials in chunk order."""
        k = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
        s = cuda.blockIdx.y
        nsplit = part.shape[0]
        J = A.shape[0]
        if k < part.shape[1]:
            chunk = (J + nsplit - 1) // nsplit
            j0 = s * chunk
            j1 = min(J, j0 + chunk)
            acc = ZERO
            if mode == 0:
                for j in range(j0, j1):
                    acc += A[j, k]
            elif mode == 1:
                hb = k // C
                for j in range(j0, j1):
                    acc += A[j, k] * B[j, hb]
            else:
                ka = k // K2
                kb = k - ka * K2
                for j in range(j0, j1):
                    acc += A[j, ka] * B[j, kb]
            part[s, k] = acc

    def gnn_colsum_finish(part, out, scale):
        """``out[k] = scale sum_s part[s, k]`` (chunk order)."""
        k = cuda.grid(1)
        if k < part.shape[1]:
            acc = ZERO
            for s in range(part.shape[0]):
                acc += part[s, k]
            out[k] = scale * acc

    def gnn_relu(A):
        """``A = max(A, 0)`` in place (GIN's hidden layer; its derivative is read back from
        R > 0, which equals Z > 0)."""
        n1 = A.shape[1]
        total = A.shape[0] * n1
        k = cuda.grid(1)
        while k < total:
            r = k // n1
            c = k - r * n1
            if not (A[r, c] > ZERO):
                A[r, c] = ZERO
            k += cuda.gridsize(1)

    def gnn_relu_bwd(dA, R):
        """``dA = dA [R > 0]`` in place (torch's ReLU derivative: 0 at 0)."""
        n1 = dA.shape[1]
        total = dA.shape[0] * n1
        k = cuda.grid(1)
        while k < total:
            r = k // n1
            c = k - r * n1
            if not (R[r, c] > ZERO):
                dA[r, c] = ZERO
            k += cuda.gridsize(1)

    def gnn_standardize(ea, mean, std, Z):
        """``Z = (edge_attr - mean) / (std + 1e-8)`` (edge MLP input)."""
        n1 = Z.shape[1]
        total = Z.shape[0] * n1
        k = cuda.grid(1)
        while k < total:
            r = k // n1
            c = k - r * n1
            Z[r, c] = (ea[r, c] - mean[c]) / (std[c] + G_EPS8)
            k += cuda.gridsize(1)

    def gnn_edge_mlp_out(Z1, W2, b2, out):
        """``out[e] = sigmoid(sum_k relu(Z1[e, k]) W2[k, 0] + b2[0]) + 1e-8`` (the edge MLP's
        output layer fused with its hidden ReLU), one thread per edge."""
        e = cuda.grid(1)
        while e < out.shape[0]:
            acc = ZERO
            for k in range(Z1.shape[1]):
                v = Z1[e, k]
                if v > ZERO:
                    acc += v * W2[k, 0]
            x = acc + b2[0]
            if x >= ZERO:
                sg = ONE / (ONE + math.exp(-x))
            else:
                ex = math.exp(x)
                sg = ex / (ONE + ex)
            out[e] = sg + G_EPS8
            e += cuda.gridsize(1)

    def gnn_softmax_vec(x, out):
        """One thread: ``out = softmax(x)`` (R relation logits)."""
        if cuda.grid(1) == 0:
            m = x[0]
            for r in range(1, x.shape[0]):
                m = max(m, x[r])
            s = ZERO
            for r in range(x.shape[0]):
                s += math.exp(x[r] - m)
            for r in range(x.shape[0]):
                out[r] = math.exp(x[r] - m) / s

    def gnn_softmax_vec_bwd(beta, g, out):
        """One thread: ``out = beta (g - <beta, g>)``."""
        if cuda.grid(1) == 0:
            dot = ZERO
            for r in range(beta.shape[0]):
                dot += beta[r] * g[r]
            for r in range(beta.shape[0]):
                out[r] = beta[r] * (g[r] - dot)

    def gnn_wsum(Hs, beta, per_node, out):
        """``out[i, f] = sum_r beta_r Hs[r, i, f]`` (beta[0, r] shared, or beta[i, r] per node)."""
        R = Hs.shape[0]
        F = out.shape[1]
        total = out.shape[0] * F
        k = cuda.grid(1)
        while k < total:
            i = k // F
            f = k - i * F
            acc = ZERO
            for r in range(R):
                b = beta[i, r] if per_node != 0 else beta[0, r]
                acc += b * Hs[r, i, f]
            out[i, f] = acc
            k += cuda.gridsize(1)

    def gnn_fuse_dh(beta, per_node, G, dHs):
        """``dHs[r, i, f] = beta_r G[i, f]`` (beta per node with per_node)."""
        N = dHs.shape[1]
        F = dHs.shape[2]
        total = dHs.shape[0] * N * F
        k = cuda.grid(1)
        while k < total:
            r = k // (N * F)
            rem = k - r * (N * F)
            i = rem // F
            f = rem - i * F
            b = beta[i, r] if per_node != 0 else beta[0, r]
            dHs[r, i, f] = b * G[i, f]
            k += cuda.gridsize(1)

    def gnn_rowdot(Hs, G, P):
        """``P[i, r] = sum_f G[i, f] Hs[r, i, f]`` (dbeta per node and relation)."""
        R = Hs.shape[0]
        total = P.shape[0] * R
        k = cuda.grid(1)
        while k < total:
            i = k // R
            r = k - i * R
            acc = ZERO
            for f in range(G.shape[1]):
                acc += G[i, f] * Hs[r, i, f]
            P[i, r] = acc
            k += cuda.gridsize(1)

    def gnn_att_scores(T, q, S):
        """Attention fusion, one thread per row of the stacked (R N, A) pre-activations:
        ``T = tanh(T)`` in place (u, kept for the backward) and ``S[row] = q . u_row``."""
        row = cuda.grid(1)
        while row < T.shape[0]:
            acc = ZERO
            for a in range(T.shape[1]):
                u = math.tanh(T[row, a])
                T[row, a] = u
                acc += q[a] * u
            S[row] = acc
            row += cuda.gridsize(1)

    def gnn_row_softmax(S, beta):
        """``beta[i] = softmax(S[i])`` per row (node attention over R relations)."""
        i = cuda.grid(1)
        while i < beta.shape[0]:
            m = S[i, 0]
            for r in range(1, S.shape[1]):
                m = max(m, S[i, r])
            s = ZERO
            for r in range(S.shape[1]):
                s += math.exp(S[i, r] - m)
            for r in range(S.shape[1]):
                beta[i, r] = math.exp(S[i, r] - m) / s
            i += cuda.gridsize(1)

    def gnn_row_softmax_bwd(beta, P, out):
        """``out[i, r] = beta_ir (P_ir - sum_r beta_ir P_ir)`` per row."""
        i = cuda.grid(1)
        while i < beta.shape[0]:
            dot = ZERO
            for r in range(beta.shape[1]):
                dot += beta[i, r] * P[i, r]
            for r in range(beta.shape[1]):
                out[i, r] = beta[i, r] * (P[i, r] - dot)
            i += cuda.gridsize(1)

    def gnn_bcast(v, scale, out):
        """``out[r, i] = v[r] scale`` (semantic attention: dS = ds / N for every node)."""
        n1 = out.shape[1]
        total = out.shape[0] * n1
        k = cuda.grid(1)
        while k < total:
            r = k // n1
            out[r, k - r * n1] = v[r] * scale
            k += cuda.gridsize(1)

    def gnn_att_bwd(T, dS, q):
        """``T[row, a] = dS[row] q[a] (1 - T[row, a]^2)`` in place (u -> dZ)."""
        n1 = T.shape[1]
        total = T.shape[0] * n1
        k = cuda.grid(1)
        while k < total:
            row = k // n1
            a = k - row * n1
            u = T[row, a]
            T[row, a] = dS[row] * q[a] * (ONE - u * u)
            k += cuda.gridsize(1)

    def gnn_focal(z, y, alpha, gamma, variant, want_grad, inv_n, terms, grad):
        """Focal loss terms and gradient, one thread per node (variant 0 "code": scalar alpha;
        1 "logits": alpha_t = alpha y + (1 - alpha)(1 - y))::

            bce = max(x, 0) - x y + log1p(exp(-|x|)),  q = -expm1(-bce)  (= 1 - p_t)
            terms = a q^gamma bce
            grad = (a / N) [q^gamma + gamma q^(gamma - 1) exp(-bce) bce (0 where q = 0)]
                   (sigmoid(x) - y)"""
        i = cuda.grid(1)
        while i < z.shape[0]:
            x = z[i]
            t = y[i]
            a = alpha
            if variant != 0:
                a = alpha * t + (ONE - alpha) * (ONE - t)
            bce = max(x, ZERO) - x * t + math.log1p(math.exp(-abs(x)))
            qv = -math.expm1(-bce)
            qg = math.pow(qv, gamma)
            terms[i] = a * qg * bce
            if want_grad != 0:
                d = qg
                if qv > ZERO:
                    d += gamma * math.pow(qv, gamma - ONE) * math.exp(-bce) * bce
                if x >= ZERO:
                    sg = ONE / (ONE + math.exp(-x))
                else:
                    ex = math.exp(x)
                    sg = ex / (ONE + ex)
                grad[i] = (a * inv_n) * d * (sg - t)
            i += cuda.gridsize(1)

    return {
        "__tile__": TS,
        "fill1d": fill1d,
        "bf16_up": bf16_up,
        "bf16_down": bf16_down,
        "sdtw_forward": sdtw_forward,
        "sdtw_backward": sdtw_backward,
        "sdtw_combine": sdtw_combine,
        "row_norms": row_norms,
        "pair_cost": pair_cost,
        "vjp_gemm": vjp_gemm,
        "cos_epilogue": cos_epilogue,
        "any_nan": any_nan,
        "ot_prep": ot_prep,
        "ot_col_lse": ot_col_lse,
        "ot_col_lse_finish": ot_col_lse_finish,
        "ot_row_lse": ot_row_lse,
        "ot_col_ktu": ot_col_ktu,
        "ot_col_ktu_finish": ot_col_ktu_finish,
        "ot_row_kv": ot_row_kv,
        "ot_colsum": ot_colsum,
        "ot_err": ot_err,
        "ot_plan": ot_plan,
        "ot_potential": ot_potential,
        "ot_dual_value": ot_dual_value,
        "ot_linear_value": ot_linear_value,
        "ot_center": ot_center,
        "ot_div_combine": ot_div_combine,
        "pref_gemm": pref_gemm,
        "pref_gather": pref_gather,
        "pref_scatter": pref_scatter,
        "pref_lse_update": pref_lse_update,
        "pref_lse_finish": pref_lse_finish,
        "pref_grad_block": pref_grad_block,
        "pref_colsum": pref_colsum,
        "pref_seq_sum": pref_seq_sum,
        "pref_token_coef": pref_token_coef,
        "pref_dpo": pref_dpo,
        "pref_frob_dot": pref_frob_dot,
        "pref_sam_scale": pref_sam_scale,
        "pref_absmul": pref_absmul,
        "pref_cast": pref_cast,
        "ct_kd": ct_kd,
        "ct_rowstat": ct_rowstat,
        "ct_rownorm": ct_rownorm,
        "ct_band": ct_band,
        "ct_gather_rows": ct_gather_rows,
        "ct_gather_block": ct_gather_block,
        "ct_scatter_rows": ct_scatter_rows,
        "ct_sum": ct_sum,
        "ct_span_sum": ct_span_sum,
        "ct_span_scale": ct_span_scale,
        "ct_span_weights": ct_span_weights,
        "ct_ctpd_rows": ct_ctpd_rows,
        "ct_row_scale": ct_row_scale,
        "ct_tis_tok": ct_tis_tok,
        "ct_tis_rows": ct_tis_rows,
        "ct_tis_grad": ct_tis_grad,
        "iss_stats": iss_stats,
        "iss_gram": iss_gram,
        "iss_code": iss_code,
        "iss_code_grad": iss_code_grad,
        "iss_principled": iss_principled,
        "iss_mamba": iss_mamba,
        "iss_copy": iss_copy,
        "iss_scan_stats": iss_scan_stats,
        "iss_scan_sum": iss_scan_sum,
        "iss_reg_scale": iss_reg_scale,
        "iss_reg_loss": iss_reg_loss,
        "iss_mse_grad": iss_mse_grad,
        "cd_cast_i8": _cd_cast,
        "cd_cast_i16": _cd_cast,
        "cd_cast_i32": _cd_cast,
        "cd_cast_u8": _cd_cast,
        "cd_cast_u16": _cd_cast,
        "cd_cast_u32": _cd_cast,
        "cd_cast_u64": _cd_cast,
        "cd_colrange": cd_colrange,
        "cd_fill_i64": cd_fill_i64,
        "cd_iota": cd_iota,
        "cd_scan": cd_scan,
        "cd_sort_hist": cd_sort_hist,
        "cd_sort_scatter": cd_sort_scatter,
        "cd_group_key": cd_group_key,
        "cd_seg_flags": cd_seg_flags,
        "cd_seg_count": cd_seg_count,
        "cd_plugin_write": cd_plugin_write,
        "cd_gsm_rows": cd_gsm_rows,
        "cd_sum_scale": cd_sum_scale,
        "cd_fstats": cd_fstats,
        "cd_leaf_pass": cd_leaf_pass,
        "cd_leaf_finish": cd_leaf_finish,
        "cd_rank_rows": cd_rank_rows,
        "cd_ci_count": cd_ci_count,
        "cd_ci_stat": cd_ci_stat,
        "cd_gammaincc": cd_gammaincc,
        "cd_pair_dist": cd_pair_dist,
        "cd_median": cd_median,
        "cd_stein_kernel": cd_stein_kernel,
        "cd_stein_rhs": cd_stein_rhs,
        "cd_add_diag": cd_add_diag,
        "cd_chol_col": cd_chol_col,
        "cd_chol_update": cd_chol_update,
        "cd_trsm": cd_trsm,
        "cd_stein_combine": cd_stein_combine,
        "se_vec_partial": se_vec_partial,
        "se_vec_final": se_vec_final,
        "se_vec_apply": se_vec_apply,
        "se_ibdr_fwd": se_ibdr_fwd,
        "se_ibdr_chol": se_ibdr_chol,
        "se_ibdr_inv": se_ibdr_inv,
        "se_ibdr_coef": se_ibdr_coef,
        "se_ibdr_grad": se_ibdr_grad,
        "se_pred_dist": se_pred_dist,
        "se_finish": se_finish,
        "se_weights": se_weights,
        "se_nll": se_nll,
        "se_wce_coef": se_wce_coef,
        "se_dot": se_dot,
        "rv_rowprep": rv_rowprep,
        "rv_csr_prep": rv_csr_prep,
        "rv_spmm": rv_spmm,
        "rv_spmm_t": rv_spmm_t,
        "rv_tanh": rv_tanh,
        "rv_tanh_bwd": rv_tanh_bwd,
        "rv_latent": rv_latent,
        "rv_nll_rows": rv_nll_rows,
        "rv_kl_rows": rv_kl_rows,
        "rv_loss_finish": rv_loss_finish,
        "rv_latent_bwd": rv_latent_bwd,
        "rv_eaug": rv_eaug,
        "rv_centroid": rv_centroid,
        "rv_pia_rows": rv_pia_rows,
        "rv_reduce": rv_reduce,
        "rv_pia_grad_rows": rv_pia_grad_rows,
        "rv_pia_de": rv_pia_de,
        "rv_w2": rv_w2,
        "rv_densify": rv_densify,
        "rv_metric_stats": rv_metric_stats,
        "rv_topk": rv_topk,
        "rv_cast_bool": _rv_cast,
        "rv_cast_i8": _rv_cast,
        "rv_cast_i16": _rv_cast,
        "rv_cast_i32": _rv_cast,
        "rv_cast_i64": _rv_cast,
        "rv_cast_u8": _rv_cast,
        "rv_cast_u16": _rv_cast,
        "rv_cast_u32": _rv_cast,
        "rv_cast_u64": _rv_cast,
        "rv_cast_f": _rv_cast,
        "rv_idx32": rv_idx32,
        "rv_flags": rv_flags,
        "gnn_istats": gnn_istats,
        "gnn_istats_finish": gnn_istats_finish,
        "gnn_fstats": gnn_fstats,
        "gnn_fstats_finish": gnn_fstats_finish,
        "gnn_keys": gnn_keys,
        "gnn_split": gnn_split,
        "gnn_lower_bound": gnn_lower_bound,
        "gnn_gather_i": gnn_gather_i,
        "gnn_loop_keep": gnn_loop_keep,
        "gnn_loop_compact": gnn_loop_compact,
        "gnn_gather_rows": gnn_gather_rows,
        "gnn_loop_mean": gnn_loop_mean,
        "gnn_deg": gnn_deg,
        "gnn_gcn_norm": gnn_gcn_norm,
        "gnn_spmm": gnn_spmm,
        "gnn_edge_dot": gnn_edge_dot,
        "gnn_gcn_gdeg": gnn_gcn_gdeg,
        "gnn_gcn_gw": gnn_gcn_gw,
        "gnn_scatter_origin": gnn_scatter_origin,
        "gnn_head_dot": gnn_head_dot,
        "gnn_gat_scores": gnn_gat_scores,
        "gnn_seg_softmax": gnn_seg_softmax,
        "gnn_seg_softmax_bwd": gnn_seg_softmax_bwd,
        "gnn_gat_agg": gnn_gat_agg,
        "gnn_gat_dalpha": gnn_gat_dalpha,
        "gnn_seg_sum": gnn_seg_sum,
        "gnn_gat_dxp_add": gnn_gat_dxp_add,
        "gnn_gat_edge_grads": gnn_gat_edge_grads,
        "gnn_colsum_part": gnn_colsum_part,
        "gnn_colsum_finish": gnn_colsum_finish,
        "gnn_relu": gnn_relu,
        "gnn_relu_bwd": gnn_relu_bwd,
        "gnn_standardize": gnn_standardize,
        "gnn_edge_mlp_out": gnn_edge_mlp_out,
        "gnn_softmax_vec": gnn_softmax_vec,
        "gnn_softmax_vec_bwd": gnn_softmax_vec_bwd,
        "gnn_wsum": gnn_wsum,
        "gnn_fuse_dh": gnn_fuse_dh,
        "gnn_rowdot": gnn_rowdot,
        "gnn_att_scores": gnn_att_scores,
        "gnn_row_softmax": gnn_row_softmax,
        "gnn_row_softmax_bwd": gnn_row_softmax_bwd,
        "gnn_bcast": gnn_bcast,
        "gnn_att_bwd": gnn_att_bwd,
        "gnn_focal": gnn_focal,
        **_crpl_kernels(DT, NB),
    }


# --------------------------------------------------------------------------- crpl (issue 10)


def _crpl_kernels(DT, NB) -> dict:
    """CRPL (arXiv 2506.11493; ``crpl_*``, details in the docstring of
    :mod:`backends.numba_cuda.crpl`). Small row kernels around ``pref_gemm``: one thread per row
    (grid-stride) for the reference probabilities, the cross entropies and the argmax; one
    thread for the finishing means (rows added in row order; no atomics); one thread per element
    for the centroid update, the row stacking and the averaging of text embeddings. All float
    arithmetic in the input dtype; the validators' statistics are stored as float64."""
    ZERO = DT(0.0)
    ONE = DT(1.0)
    HALF = DT(0.5)
    INF_C = DT(np.inf)
    THIRD_N = DT(3.0)
    TWO_N = DT(2.0)

    def crpl_centroids(means, counts, feats, labels, domains, out_m, out_c):
        """Running class means per (domain i, class k, feature d), one thread per element:
        ``out_m = (means count + sum_{n: (domain, label) = (i, k)} u_n) / (count + n_ik)`` where
        ``n_ik > 0`` (else ``means``); ``out_c = count + n_ik`` (written by the d = 0 thread)."""
        Kc = means.shape[1]
        Dd = means.shape[2]
        total = means.shape[0] * Kc * Dd
        e = cuda.grid(1)
        while e < total:
            i = e // (Kc * Dd)
            rem = e - i * (Kc * Dd)
            k = rem // Dd
            d = rem - k * Dd
            acc = ZERO
            cnt = ZERO
            for n in range(feats.shape[0]):
                if labels[n] == k and domains[n] == i:
                    acc += feats[n, d]
                    cnt += ONE
            c0 = counts[i, k]
            if cnt > ZERO:
                out_m[i, k, d] = (means[i, k, d] * c0 + acc) / (c0 + cnt)
            else:
                out_m[i, k, d] = means[i, k, d]
            if d == 0:
                out_c[i, k] = c0 + cnt
            e += cuda.gridsize(1)

    def crpl_stack(src, dst, row0):
        """``dst[row0 + a K + k, :] = src[a, k, :]`` (the stacked GEMM operand), per element."""
        Kc = src.shape[1]
        Dd = src.shape[2]
        total = src.shape[0] * Kc * Dd
        e = cuda.grid(1)
        while e < total:
            r = e // Dd
            d = e - r * Dd
            a = r // Kc
            dst[row0 + r, d] = src[a, r - a * Kc, d]
            e += cuda.gridsize(1)

    def crpl_sqnorm(X, out):
        """``out[r] = sum_d X[r, d]^2`` per row."""
        r = cuda.grid(1)
        while r < X.shape[0]:
            acc = ZERO
            for d in range(X.shape[1]):
                acc += X[r, d] * X[r, d]
            out[r] = acc
            r += cuda.gridsize(1)

    def crpl_irange(x, out, slot):
        """One thread: ``out[slot], out[slot + 1] = min(x), max(x)`` as float64 (0, 0 if empty)."""
        if cuda.grid(1) == 0:
            lo = int64(0)
            hi = int64(0)
            if x.shape[0] > 0:
                lo = x[0]
                hi = x[0]
            for r in range(1, x.shape[0]):
                lo = min(lo, x[r])
                hi = max(hi, x[r])
            out[slot] = float64(lo)
            out[slot + 1] = float64(hi)

    def crpl_dcount(dom, out, slot, S):
        """One thread: ``out[slot] = min_{i < S} #{n : dom[n] == i}`` (entries outside
        [0, S) ignored)."""
        if cuda.grid(1) == 0:
            lo = dom.shape[0]
            for i in range(S):
                c = int64(0)
                for n in range(dom.shape[0]):
                    if dom[n] == i:
                        c += 1
                lo = min(lo, c)
            out[slot] = float64(lo)

    def crpl_probs(G, UC, un, cn, counts, Kc, S, has_si, variant, gamma, scale, P):
        """Reference probabilities, one thread per row b. ``G`` (B, (2 + S) K) holds the
        cosines ``z_b . [t_base; t_S; t_S1; ...]``; ``UC[b, i K + k] = u_b . c_ik``, ``un`` =
        ``||u_b||^2``, ``cn[i K + k] = ||c_ik||^2``. ``D_i = un + cn - 2 UC`` (expanded form),
        ``w = softmax_i(-gamma D_i)`` (per (b, k)), ``s = sum_i w_i z.t_Si,k``.
        variant 0 "code": ``l = (z.t_base + z.t_S + s) / 3`` when has_si and every count > 0,
        else ``(z.t_base + z.t_S) / 2``; variant 1 "paper": ``l = z.t_base / 2 + s / 2`` (with
        the T_S term in place of s when there is none). ``P = softmax_k(scale l)``."""
        full = has_si != 0
        if full:
            for i in range(counts.shape[0]):
                for k in range(counts.shape[1]):
                    if not (counts[i, k] > ZERO):
                        full = False
        b = cuda.grid(1)
        while b < P.shape[0]:
            mx = ZERO
            for k in range(Kc):
                base = G[b, k]
                ts = G[b, Kc + k]
                if full:
                    m = -gamma * (un[b] + cn[k] - TWO_N * UC[b, k])
                    for i in range(1, S):
                        q = i * Kc + k
                        m = max(m, -gamma * (un[b] + cn[q] - TWO_N * UC[b, q]))
                    sw = ZERO
                    s = ZERO
                    for i in range(S):
                        q = i * Kc + k
                        w = math.exp(-gamma * (un[b] + cn[q] - TWO_N * UC[b, q]) - m)
                        sw += w
                        s += w * G[b, (2 + i) * Kc + k]
                    s = s / sw
                    if variant == 0:
                        lv = (base + ts + s) / THIRD_N
                    else:
                        lv = HALF * base + HALF * s
                elif variant == 0:
                    lv = (base + ts) / TWO_N
                else:
                    lv = HALF * base + HALF * ts
                x = scale * lv
                P[b, k] = x
                if k == 0 or x > mx:
                    mx = x
            sm = ZERO
            for k in range(Kc):
                sm += math.exp(P[b, k] - mx)
            for k in range(Kc):
                P[b, k] = math.exp(P[b, k] - mx) / sm
            b += cuda.gridsize(1)

    def crpl_sce_rows(X, p, rows, grad, want_grad):
        """Soft cross entropy per row: ``rows[b] = -sum_k p_bk log_softmax(X_b)_k``; with
        want_grad ``grad[b] = (softmax(X_b) sum_k p_bk - p_b) / B``."""
        B = X.shape[0]
        b = cuda.grid(1)
        while b < B:
            mx = X[b, 0]
            for k in range(1, X.shape[1]):
                mx = max(mx, X[b, k])
            s = ZERO
            for k in range(X.shape[1]):
                s += math.exp(X[b, k] - mx)
            lse = mx + math.log(s)
            acc = ZERO
            for k in range(X.shape[1]):
                acc -= p[b, k] * (X[b, k] - lse)
            rows[b] = acc
            if want_grad != 0:
                ps = ZERO
                for k in range(X.shape[1]):
                    ps += p[b, k]
                for k in range(X.shape[1]):
                    grad[b, k] = (math.exp(X[b, k] - lse) * ps - p[b, k]) / DT(B)
            b += cuda.gridsize(1)

    def crpl_tgt_rows(C, p, lab, mode, scale, use_ot, rows, hard, grad, want_grad):
        """Target terms per row from the cosines ``C = z T_T^T``: ``hard[b] = argmax_k C_bk``
        (first index); ``x = scale C``. mode 0 (soft p): ``rows[b, 0] = -sum_k p log_softmax(x)``;
        mode 1 (labels, -1 = none): ``rows[b, 0] = CE(C_b, lab_b)`` on the UNSCALED cosines
        (0 when unlabelled). ``rows[b, 1] = CE(x_b, hard_b)`` when use_ot (else 0). With
        want_grad, ``grad = dL_T / dC`` of ``L_T = (A + H) / 2`` (use_ot) or ``A`` with
        ``A`` = the mean of rows[:, 0] (mode 1: over the labelled rows) and ``H`` the mean of
        rows[:, 1]."""
        B = C.shape[0]
        Kc = C.shape[1]
        nlab = 0
        if mode != 0:
            for r in range(B):
                if lab[r] >= 0:
                    nlab += 1
        b = cuda.grid(1)
        while b < B:
            h = 0
            mc = C[b, 0]
            for k in range(1, Kc):
                if C[b, k] > mc:
                    mc = C[b, k]
                    h = k
            hard[b] = h
            mx = scale * C[b, 0]
            for k in range(1, Kc):
                mx = max(mx, scale * C[b, k])
            s = ZERO
            for k in range(Kc):
                s += math.exp(scale * C[b, k] - mx)
            lse = mx + math.log(s)
            wa = ONE
            wh = ZERO
            if use_ot != 0:
                wa = HALF
                wh = HALF / DT(B)
                rows[b, 1] = lse - scale * C[b, h]
            else:
                rows[b, 1] = ZERO
            if mode == 0:
                acc = ZERO
                for k in range(Kc):
                    acc -= p[b, k] * (scale * C[b, k] - lse)
                rows[b, 0] = acc
                wa = wa / DT(B)
                if want_grad != 0:
                    ps = ZERO
                    for k in range(Kc):
                        ps += p[b, k]
                    for k in range(Kc):
                        sk = math.exp(scale * C[b, k] - lse)
                        g = wa * (sk * ps - p[b, k]) + wh * sk
                        if k == h:
                            g -= wh
                        grad[b, k] = scale * g
            else:
                y = lab[b]
                mu = C[b, 0]
                for k in range(1, Kc):
                    mu = max(mu, C[b, k])
                su = ZERO
                for k in range(Kc):
                    su += math.exp(C[b, k] - mu)
                lu = mu + math.log(su)
                if y >= 0:
                    rows[b, 0] = lu - C[b, y]
                    wa = wa / DT(nlab)
                else:
                    rows[b, 0] = ZERO
                    wa = ZERO
                if want_grad != 0:
                    for k in range(Kc):
                        sk = math.exp(scale * C[b, k] - lse)
                        g = scale * wh * sk
                        if k == h:
                            g -= scale * wh
                        if y >= 0:
                            g += wa * math.exp(C[b, k] - lu)
                            if k == y:
                                g -= wa
                        grad[b, k] = g
            b += cuda.gridsize(1)

    def crpl_src_rows(C, y, dom, Kc, S, has_si, scale, rows, grad, want_grad):
        """Source cross entropies per row from ``C = z_src [T_S; T_S1; ...]^T`` (Bs, (1 + S) K):
        ``rows[b, 0] = CE(scale C[b, :K], y_b)``, ``rows[b, 1] = CE(scale C[b, (1 + i) K:
        (2 + i) K], y_b)`` with ``i = dom_b`` (has_si). With want_grad, ``grad = dL_src / dC``:
        ``scale (softmax - onehot) / Bs`` in the T_S block and ``/ (S n_i)`` in block i (zero in
        the other domains' blocks)."""
        B = C.shape[0]
        b = cuda.grid(1)
        while b < B:
            yb = y[b]
            for blk in range(1 + S if has_si != 0 else 1):
                c0 = 0
                wgt = ONE / DT(B)
                if blk > 0:
                    i = dom[b]
                    if blk - 1 != i:
                        if want_grad != 0:
                            for k in range(Kc):
                                grad[b, blk * Kc + k] = ZERO
                        continue
                    ni = 0
                    for r in range(B):
                        if dom[r] == i:
                            ni += 1
                    wgt = ONE / (DT(S) * DT(ni))
                c0 = blk * Kc
                mx = scale * C[b, c0]
                for k in range(1, Kc):
                    mx = max(mx, scale * C[b, c0 + k])
                s = ZERO
                for k in range(Kc):
                    s += math.exp(scale * C[b, c0 + k] - mx)
                lse = mx + math.log(s)
                rows[b, 0 if blk == 0 else 1] = lse - scale * C[b, c0 + yb]
                if want_grad != 0:
                    for k in range(Kc):
                        g = math.exp(scale * C[b, c0 + k] - lse)
                        if k == yb:
                            g -= ONE
                        grad[b, c0 + k] = scale * wgt * g
            if has_si == 0:
                rows[b, 1] = ZERO
            b += cuda.gridsize(1)

    def crpl_mean(rows, out, slot):
        """One thread: ``out[slot] = mean(rows)`` (rows added in order)."""
        if cuda.grid(1) == 0:
            acc = ZERO
            for r in range(rows.shape[0]):
                acc += rows[r]
            out[slot] = acc / DT(rows.shape[0])

    def crpl_tgt_finish(rows, lab, mode, use_ot, out, slot):
        """One thread: ``out[slot] = L_T`` from ``crpl_tgt_rows``' rows (see there)."""
        if cuda.grid(1) == 0:
            B = rows.shape[0]
            a = ZERO
            h = ZERO
            n = 0
            for r in range(B):
                h += rows[r, 1]
                if mode == 0 or lab[r] >= 0:
                    a += rows[r, 0]
                    n += 1
            if n > 0:
                a = a / DT(n)
            if use_ot != 0:
                out[slot] = (a + h / DT(B)) / TWO_N
            else:
                out[slot] = a

    def crpl_src_finish(rows, dom, S, has_si, out, slot):
        """One thread: ``out[slot] = L_src = mean_b rows[b, 0] + (1/S) sum_i mean_{dom = i}
        rows[b, 1]`` (the second term with has_si only)."""
        if cuda.grid(1) == 0:
            B = rows.shape[0]
            a = ZERO
            for r in range(B):
                a += rows[r, 0]
            a = a / DT(B)
            if has_si != 0:
                t = ZERO
                for i in range(S):
                    si = ZERO
                    ni = 0
                    for r in range(B):
                        if dom[r] == i:
                            si += rows[r, 1]
                            ni += 1
                    t += si / DT(ni)
                a += t / DT(S)
            out[slot] = a

    def crpl_total(out, cost, has_w, lam_W, lam_T):
        """One thread, ``out = (L, L_src, L_W, L_T)``: ``out[2] = cost[0]`` (0 without OT),
        ``out[0] = out[1] + lam_W out[2] + lam_T out[3]``."""
        if cuda.grid(1) == 0:
            lw = ZERO
            if has_w != 0:
                lw = cost[0]
            out[2] = lw
            out[0] = out[1] + lam_W * lw + lam_T * out[3]

    def crpl_argmax(C, scale, threshold, mode, lab):
        """``lab[b] = argmax_k C_bk`` (first index; mode 1: of ``scale C_b``, the softmax's
        argmax); mode 1 (CLIP pseudo-labels): -1 unless
        ``max_k softmax(scale C_b)_k = 1 / sum_k exp(scale C_bk - max) > threshold``."""
        b = cuda.grid(1)
        while b < C.shape[0]:
            h = 0
            mc = C[b, 0]
            if mode != 0:
                mc = scale * mc
            for k in range(1, C.shape[1]):
                v = C[b, k]
                if mode != 0:
                    v = scale * v
                if v > mc:
                    mc = v
                    h = k
            if mode != 0:
                mx = scale * C[b, 0]
                for k in range(1, C.shape[1]):
                    mx = max(mx, scale * C[b, k])
                s = ZERO
                for k in range(C.shape[1]):
                    s += math.exp(scale * C[b, k] - mx)
                if not (ONE / s > threshold):
                    h = -1
            lab[b] = h
            b += cuda.gridsize(1)

    def crpl_acc(pred, labels, denom, out):
        """One thread: ``out[0] = #{b : pred_b == labels_b} / denom``."""
        if cuda.grid(1) == 0:
            c = 0
            for r in range(pred.shape[0]):
                if pred[r] == labels[r]:
                    c += 1
            out[0] = DT(c) / denom

    def crpl_accum(src, dst, mode, div):
        """Plain mean of text embeddings, per element: mode 0 ``dst = src``, mode 1
        ``dst += src``, mode 2 ``dst = dst / div``."""
        n1 = dst.shape[1]
        total = dst.shape[0] * n1
        e = cuda.grid(1)
        while e < total:
            r = e // n1
            c = e - r * n1
            if mode == 0:
                dst[r, c] = src[r, c]
            elif mode == 1:
                dst[r, c] += src[r, c]
            else:
                dst[r, c] = dst[r, c] / div
            e += cuda.gridsize(1)

    def crpl_frows(X, rs):
        """Validation statistics per row, in the input dtype: ``rs[r] = (#non-finite, min, max,
        | ||X_r|| - 1 |)`` (min/max over the row's entries, NaN propagating)."""
        r = cuda.grid(1)
        while r < X.shape[0]:
            nf = ZERO
            acc = ZERO
            mn = INF_C
            mx = -INF_C
            for d in range(X.shape[1]):
                v = X[r, d]
                if not (v - v == ZERO):
                    nf += ONE
                acc += v * v
                if mn == mn and not (v >= mn):
                    mn = v
                if mx == mx and not (v <= mx):
                    mx = v
            rs[r, 0] = nf
            rs[r, 1] = mn
            rs[r, 2] = mx
            rs[r, 3] = abs(math.sqrt(acc) - ONE)
            r += cuda.gridsize(1)

    def crpl_fpack(rs, out, slot):
        """One thread: ``crpl_frows``' rows into ``out[slot:slot + 4]`` (float64) = (#non-finite,
        min, max, max deviation) (NaN sticks; empty: 0, +inf, -inf, 0)."""
        if cuda.grid(1) == 0:
            nf = int64(0)
            mn = INF_C
            mx = -INF_C
            dv = ZERO
            for r in range(rs.shape[0]):
                nf += int64(rs[r, 0])
                v = rs[r, 1]
                if mn == mn and not (v >= mn):
                    mn = v
                v = rs[r, 2]
                if mx == mx and not (v <= mx):
                    mx = v
                v = rs[r, 3]
                if dv == dv and not (v <= dv):
                    dv = v
            out[slot] = float64(nf)
            out[slot + 1] = float64(mn)
            out[slot + 2] = float64(mx)
            out[slot + 3] = float64(dv)

    return {
        "crpl_centroids": crpl_centroids,
        "crpl_stack": crpl_stack,
        "crpl_sqnorm": crpl_sqnorm,
        "crpl_irange": crpl_irange,
        "crpl_dcount": crpl_dcount,
        "crpl_probs": crpl_probs,
        "crpl_sce_rows": crpl_sce_rows,
        "crpl_tgt_rows": crpl_tgt_rows,
        "crpl_src_rows": crpl_src_rows,
        "crpl_mean": crpl_mean,
        "crpl_tgt_finish": crpl_tgt_finish,
        "crpl_src_finish": crpl_src_finish,
        "crpl_total": crpl_total,
        "crpl_argmax": crpl_argmax,
        "crpl_acc": crpl_acc,
        "crpl_accum": crpl_accum,
        "crpl_frows": crpl_frows,
        "crpl_fpack": crpl_fpack,
    }
