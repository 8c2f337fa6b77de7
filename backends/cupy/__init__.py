"""The CuPy backend: the reference functions of :mod:`refimpl` on ``cupy.ndarray``.

Every op has the reference's name, positional order, keyword names and defaults; it takes
``cupy.ndarray`` inputs (per-pair lengths included), computes on the current CUDA device in
the input's dtype (float32 or float64) on the current stream, and returns CuPy arrays.
Arrays of another kind are refused with a ``TypeError`` naming the argument (no silent
copies). The hot loops are CUDA C kernels (``_kernels.py``): the Soft-DTW wavefronts (one
thread block per DP, live anti-diagonals in shared memory) and the fused log-domain
Sinkhorn half-iterations (online log-sum-exp, never forming ``(f - C)/eps``); costs are
cuBLAS GEMMs with fused epilogues; the preference family (DPO through a linear head,
logits-SAM) runs cuBLAS GEMMs per (token, vocab) block with a fused online-LSE/target-gather
kernel and an in-place logit-gradient kernel (``preference.py``; it reads labels and mask on
the host for validation, O(R T)); the cross-tokenizer family (``cross_tokenizer.py``: KD
divergences, DWA-KD weights, band and Soft-DTW loss, CTPD span sums and loss, TIS-DPO) runs
fused per-row softmax kernels, a float64-atomic segment sum, CuPy glue and the Soft-DTW
backend (it reads masks, labels and segment ids on the host for validation); the Inf-SSM family
(``inf_ssm.py``: Stein Grams, the observability-subspace distance as a fused thread-per-system
kernel with its gradient, the Mamba (a, c) extraction kernel, the regulariser over all scans in
one launch; one small device-to-host read per call for the value checks); the discrete-score
causal-discovery family (``causal_discrete.py``: the plug-in score, leaf statistic, GSM loss and
batched G²/chi² tests by sorts of int64 keys and atomic-free segment-count kernels, SCORE's
Stein Hessian by cuBLAS and cuSOLVER; one small read per call). Exact OT (``emd``, ``emd_grad``) is an explicit host solve
(the reference on copies of the inputs), its results returned on the device.

Importing this package imports CuPy and NumPy only: no CUDA context is created, nothing is
compiled, no device memory is allocated. Kernels are compiled on first use (and cached by
CuPy on disk).

Besides the ops, the backend protocol of :mod:`backends`: ``NAME``, ``DTYPES``, ``asarray``,
``to_numpy``, ``is_native``, ``synchronize``, ``reset_peak_memory``, ``peak_memory``,
``describe``.
"""

from __future__ import annotations

import cupy
import numpy as np

from backends import _bf16
from refimpl import _validate

NAME = "cupy"
#: bfloat16 (``ml_dtypes.bfloat16`` arrays, CuPy >= 14) through the float32 kernels: backends._bf16
_BF16 = _bf16.AVAILABLE and int(cupy.__version__.split(".")[0]) >= 14
DTYPES = ("float32", "float64") + (("bfloat16",) if _BF16 else ())


def asarray(a, dtype=None) -> cupy.ndarray:
    """A NumPy array (or scalar) as a CuPy array on the current device (a copy), dtype kept or
    cast on the host to ``dtype`` (e.g. ``"bfloat16"``)."""
    return cupy.asarray(_bf16.host_cast(a, dtype))


def to_numpy(x) -> np.ndarray:
    """A CuPy array as a NumPy array (an explicit device-to-host copy); bfloat16 comes back as
    float32 (exactly)."""
    return _bf16.host_float(cupy.asnumpy(x))


def _is_bf16(x) -> bool:
    return isinstance(x, cupy.ndarray) and _bf16.is_bf16_dtype(x.dtype)


def _bf16_up(x):
    return x.astype(cupy.float32)


def _bf16_down(x):
    return x.astype(_bf16.ml_dtypes.bfloat16)


def is_native(x) -> bool:
    """Whether ``x`` is a ``cupy.ndarray``."""
    return isinstance(x, cupy.ndarray)


def native(**arrays) -> None:
    """Refuse arrays of another kind with a ``TypeError`` naming the argument (no silent copies)."""
    _validate.native(NAME, is_native, "cupy.ndarray", **arrays)


def synchronize() -> None:
    """Wait for the work queued on the current stream of the current device."""
    cupy.cuda.get_current_stream().synchronize()


def reset_peak_memory() -> None:
    """Start a new high-water mark: release the default memory pool's cached free blocks.

    The pool never returns a freed block to the driver by itself, so from here on its
    ``total_bytes()`` only grows: it is the high-water mark of the bytes the pool holds
    (live arrays included, e.g. inputs allocated before the reset)."""
    synchronize()
    cupy.get_default_memory_pool().free_all_blocks()


def peak_memory() -> int:
    """Bytes held by CuPy's default memory pool: its high-water mark since the last
    :func:`reset_peak_memory` (an upper bound of the true peak when freed blocks could not be
    reused for later, differently sized requests)."""
    return int(cupy.get_default_memory_pool().total_bytes())


def describe() -> str:
    """The device in words, e.g. ``cupy 14.2.0, device 0 (NVIDIA H100 80GB HBM3, sm_90, CUDA 12.9)``."""
    rt = cupy.cuda.runtime
    dev = rt.getDevice()
    props = rt.getDeviceProperties(dev)
    name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    ver = rt.runtimeGetVersion()
    return (f"cupy {cupy.__version__}, device {dev} ({name}, sm_{props['major']}{props['minor']}, "
            f"CUDA {ver // 1000}.{(ver % 1000) // 10})")


# The op modules import nothing from this package's namespace above; they are plain imports.
from backends.cupy.causal_discrete import (  # noqa: E402
    ci_test_batch, discrete_score_plugin, gsm_marginal_loss, leaf_statistic, stein_hessian_diag,
)
from backends.cupy.crpl import (  # noqa: E402
    clip_pseudo_labels, crpl_loss, crpl_loss_grad, crpl_reference_probs, crpl_target_loss,
    ot_cluster_loss, soft_cross_entropy, soft_cross_entropy_grad, target_accuracy,
    update_class_centroids,
)
from backends.cupy.cross_tokenizer import (  # noqa: E402
    certainty_weights, cma_band_penalty, ctpd_loss, ctpd_loss_grad, dwa_dtw_loss,
    dwa_dtw_loss_grad, entropy_weights, kd_divergence, kd_divergence_grad, kd_gate, span_sum,
    span_weights, tis_dpo_loss, tis_dpo_loss_grad,
)
from backends.cupy.gnn import (  # noqa: E402
    add_self_loops, edge_mlp_weights, focal_bce, focal_bce_grad, fuse, fuse_vjp, gat_layer,
    gat_layer_vjp, gcn_layer, gcn_layer_vjp, gcn_norm, gin_layer, gin_layer_vjp, segment_softmax,
    segment_softmax_vjp, to_csr,
)
from backends.cupy.inf_ssm import (  # noqa: E402
    infssm_distance, infssm_distance_grad, infssm_reg_loss, infssm_reg_loss_grad,
    mamba_ac_from_scan, stein_cross_gram_diag, stein_gram_diag,
)
from backends.cupy.ot import (  # noqa: E402
    emd, emd_grad, pairwise_cost, sinkhorn, sinkhorn_cost, sinkhorn_cost_grad,
    sinkhorn_divergence, sinkhorn_log,
)
from backends.cupy.preference import (  # noqa: E402
    dpo_loss, dpo_loss_grad, linear_dpo_loss, linear_dpo_loss_grad, logits_sam_dpo,
    logits_sam_dpo_grad, seq_logps,
)
from backends.cupy.recsys_vae import (  # noqa: E402
    anneal_beta, gaussian_w2, item_centroids, multvae_forward, multvae_loss,
    multvae_value_and_grad, ndcg_at_k, pia_anchor_grad, pia_anchor_loss, recall_at_k,
)
from backends.cupy.safety_ensembles import (  # noqa: E402
    antibody_align_direction, antibody_lambda, antibody_weights, dpp_logdet_diversity,
    dro_ascent, harmful_perturb, ibdr_dual_update, ibdr_loss, ibdr_loss_grad,
    prediction_distance, token_mean_nll, weighted_token_ce, weighted_token_ce_grad,
)
from backends.cupy.softdtw import (  # noqa: E402
    sdtw_cost, sdtw_cost_vjp, soft_dtw, soft_dtw_divergence, soft_dtw_divergence_grad,
    soft_dtw_grad,
)

__all__ = [
    "NAME", "DTYPES", "asarray", "to_numpy", "is_native", "synchronize", "reset_peak_memory",
    "peak_memory", "describe",
    "soft_dtw", "soft_dtw_grad", "sdtw_cost", "sdtw_cost_vjp", "soft_dtw_divergence",
    "soft_dtw_divergence_grad",
    "sinkhorn_log", "sinkhorn", "sinkhorn_cost", "sinkhorn_cost_grad", "sinkhorn_divergence",
    "pairwise_cost", "emd", "emd_grad",
    "seq_logps", "dpo_loss", "dpo_loss_grad", "linear_dpo_loss", "linear_dpo_loss_grad",
    "logits_sam_dpo", "logits_sam_dpo_grad",
    "kd_divergence", "kd_divergence_grad", "entropy_weights", "certainty_weights", "kd_gate",
    "cma_band_penalty", "dwa_dtw_loss", "dwa_dtw_loss_grad", "span_sum", "span_weights",
    "ctpd_loss", "ctpd_loss_grad", "tis_dpo_loss", "tis_dpo_loss_grad",
    "stein_gram_diag", "stein_cross_gram_diag", "infssm_distance", "infssm_distance_grad",
    "mamba_ac_from_scan", "infssm_reg_loss", "infssm_reg_loss_grad",
    "discrete_score_plugin", "gsm_marginal_loss", "leaf_statistic", "ci_test_batch",
    "stein_hessian_diag",
    "harmful_perturb", "antibody_lambda", "antibody_align_direction", "token_mean_nll",
    "antibody_weights", "weighted_token_ce", "weighted_token_ce_grad",
    "dpp_logdet_diversity", "ibdr_loss", "ibdr_loss_grad", "dro_ascent", "prediction_distance",
    "ibdr_dual_update",
    "multvae_forward", "multvae_loss", "multvae_value_and_grad", "anneal_beta",
    "item_centroids", "pia_anchor_loss", "pia_anchor_grad", "gaussian_w2", "recall_at_k",
    "ndcg_at_k",
    "to_csr", "add_self_loops", "gcn_norm", "gcn_layer", "gcn_layer_vjp", "segment_softmax",
    "segment_softmax_vjp", "gat_layer", "gat_layer_vjp", "gin_layer", "gin_layer_vjp",
    "edge_mlp_weights", "fuse", "fuse_vjp", "focal_bce", "focal_bce_grad",
    "update_class_centroids", "crpl_reference_probs", "soft_cross_entropy",
    "soft_cross_entropy_grad", "ot_cluster_loss", "crpl_target_loss", "crpl_loss", "crpl_loss_grad",
    "clip_pseudo_labels", "target_accuracy",
]

if _BF16:
    _bf16.install(globals(), _is_bf16, _bf16_up, _bf16_down)
