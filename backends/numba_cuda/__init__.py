"""The Numba-CUDA backend: the reference functions of :mod:`refimpl` as ``@cuda.jit`` kernels.

Every op has the reference's name, positional order, keyword names and defaults.

Arrays
    Inputs are CUDA arrays: Numba device arrays or any ``__cuda_array_interface__`` object
    (CuPy arrays, CUDA torch tensors), viewed zero-copy. Outputs are Numba device arrays; when
    the leading input of a call (``C``, ``X``, ``a``/``C`` ...) is a CuPy array or a torch
    tensor, the outputs are returned as that kind through ``cupy.asarray`` /
    ``torch.as_tensor`` — zero-copy views that keep the Numba allocation alive. Host arrays
    (NumPy) are refused with a ``TypeError`` (no silent host round-trips); only the small
    integer ``len_x``/``len_y`` of Soft-DTW may also be host arrays, since they are needed
    on the host to build the job table anyway. The preference ops take ``labels``/``mask``
    as CUDA arrays too and read them on the host once (validation and the compacted token
    index, :mod:`.preference`); the cross-tokenizer ops likewise read their masks, labels and
    segment ids once (:mod:`.cross_tokenizer`); the causal-discovery ops read the per-column
    range of X (and ``cards``/``candidates`` given as device arrays) once per call
    (:mod:`.causal_discrete`).

Stream
    Every kernel and copy goes to the CUDA *legacy default stream*, which is ordered after work
    queued on the legacy and per-thread default streams (the default streams of torch and
    CuPy). A CAI input produced on another stream is synchronised with that stream first.
    Host reads are explicit and few: Soft-DTW reads the B lengths; Sinkhorn reads one small
    status array per convergence check (none at all with ``tol=0``); ``emd``/``emd_grad`` are
    an explicit host solve.

Simulator
    With ``NUMBA_ENABLE_CUDASIM=1`` the same kernels run in Numba's CUDA simulator (logic only,
    tiny sizes; every CUDA thread is a Python thread, so launch geometries are kept small
    there). Arrays are then the simulator's device arrays.

Kernels are compiled lazily, one signature per dtype, on first use (seconds); importing this
package compiles nothing and allocates nothing.
"""

from __future__ import annotations

import numpy as np

from .. import _bf16
from . import _kernels as K
from .causal_discrete import (ci_test_batch, discrete_score_plugin,  # noqa: F401
                              gsm_marginal_loss, leaf_statistic, stein_hessian_diag)
from .crpl import (  # noqa: F401
    clip_pseudo_labels, crpl_loss, crpl_loss_grad, crpl_reference_probs, crpl_target_loss,
    ot_cluster_loss, soft_cross_entropy, soft_cross_entropy_grad, target_accuracy,
    update_class_centroids,
)
from .cross_tokenizer import (certainty_weights, cma_band_penalty, ctpd_loss,  # noqa: F401
                              ctpd_loss_grad, dwa_dtw_loss, dwa_dtw_loss_grad, entropy_weights,
                              kd_divergence, kd_divergence_grad, kd_gate, span_sum,
                              span_weights, tis_dpo_loss, tis_dpo_loss_grad)
from .gnn import (  # noqa: F401
    add_self_loops, edge_mlp_weights, focal_bce, focal_bce_grad, fuse, fuse_vjp, gat_layer,
    gat_layer_vjp, gcn_layer, gcn_layer_vjp, gcn_norm, gin_layer, gin_layer_vjp, segment_softmax,
    segment_softmax_vjp, to_csr,
)
from .inf_ssm import (infssm_distance, infssm_distance_grad, infssm_reg_loss,  # noqa: F401
                      infssm_reg_loss_grad, mamba_ac_from_scan, stein_cross_gram_diag,
                      stein_gram_diag)
from .ot import (EMDResult, SinkhornResult, emd, emd_grad, pairwise_cost, sinkhorn,  # noqa: F401
                 sinkhorn_cost, sinkhorn_cost_grad, sinkhorn_divergence, sinkhorn_log)
from .preference import (dpo_loss, dpo_loss_grad, linear_dpo_loss,  # noqa: F401
                         linear_dpo_loss_grad, logits_sam_dpo, logits_sam_dpo_grad, seq_logps)
from .recsys_vae import (  # noqa: F401
    anneal_beta, gaussian_w2, item_centroids, multvae_forward, multvae_loss,
    multvae_value_and_grad, ndcg_at_k, pia_anchor_grad, pia_anchor_loss, recall_at_k,
)
from .safety_ensembles import (  # noqa: F401
    antibody_align_direction, antibody_lambda, antibody_weights, dpp_logdet_diversity,
    dro_ascent, harmful_perturb, ibdr_dual_update, ibdr_loss, ibdr_loss_grad,
    prediction_distance, token_mean_nll, weighted_token_ce, weighted_token_ce_grad,
)
from .softdtw import (sdtw_cost, sdtw_cost_vjp, soft_dtw, soft_dtw_divergence,  # noqa: F401
                      soft_dtw_divergence_grad, soft_dtw_grad)

__all__ = [
    "NAME", "DTYPES", "asarray", "to_numpy", "is_native", "synchronize", "reset_peak_memory",
    "peak_memory", "describe",
    "soft_dtw", "soft_dtw_grad", "sdtw_cost", "sdtw_cost_vjp", "soft_dtw_divergence",
    "soft_dtw_divergence_grad",
    "SinkhornResult", "EMDResult", "sinkhorn_log", "sinkhorn", "sinkhorn_cost",
    "sinkhorn_cost_grad", "sinkhorn_divergence", "pairwise_cost", "emd", "emd_grad",
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

NAME = "numba_cuda"
#: bfloat16 (``ml_dtypes.bfloat16`` arrays) through the float32 kernels: :mod:`backends._bf16`
DTYPES = ("float32", "float64") + (("bfloat16",) if _bf16.AVAILABLE else ())


def asarray(a, dtype=None):
    """A NumPy array as a Numba device array (an explicit host-to-device copy), dtype kept or
    cast on the host to ``dtype`` (e.g. ``"bfloat16"``, an ``ml_dtypes`` dtype)."""
    return K.upload(_bf16.host_cast(a, dtype))


def to_numpy(x) -> np.ndarray:
    """A native array as a NumPy array (an explicit device-to-host copy); bfloat16 comes back
    as float32 (exactly)."""
    return _bf16.host_float(K.to_numpy(x))


def is_native(x) -> bool:
    """Whether ``x`` is a CUDA array this backend takes: Numba device arrays, CuPy arrays, CUDA
    torch tensors (any ``__cuda_array_interface__`` object); the simulator's device arrays
    when simulating."""
    return K.is_native(x)


def synchronize() -> None:
    """Wait for all queued work of the current CUDA context (no-op in the simulator)."""
    from numba import cuda

    cuda.synchronize()


def reset_peak_memory() -> None:
    """Restart the high-water mark of :func:`peak_memory` from the bytes alive now."""
    K.reset_peak()


def peak_memory() -> int:
    """High-water mark, in bytes, of the device arrays this backend allocated — arrays made by
    :func:`asarray`, outputs and workspaces, each counted while referenced — since
    :func:`reset_peak_memory`.

    Numba has no allocator statistics, so this is what the backend can measure honestly: it
    excludes arrays other libraries allocated (CuPy/torch inputs) and Numba's own small
    internal allocations, and counts an array as freed when its last reference goes (Numba
    may return the memory to the driver a little later)."""
    return K.peak()


def describe() -> str:
    """The device in words, e.g. ``numba-cuda 0.30.4, NVIDIA H100 80GB HBM3 (cc 9.0)``."""
    try:
        from numba_cuda import __version__ as version
    except ImportError:  # older layouts
        from numba import __version__ as version
    if K.simulator():
        return f"numba-cuda {version}, CUDA simulator (NUMBA_ENABLE_CUDASIM=1)"
    from numba import cuda

    dev = cuda.get_current_device()
    name = dev.name.decode() if isinstance(dev.name, bytes) else str(dev.name)
    cc = ".".join(str(c) for c in dev.compute_capability)
    return f"numba-cuda {version}, {name} (cc {cc})"


_bf16.install(globals(), K.is_bf16, K.bf16_to_float32, K.float32_to_bf16)
