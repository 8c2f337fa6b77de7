"""The ``numpy`` backend: the float64 reference itself behind the backend protocol, so every
harness treats it like the others (it is the baseline of ``refimpl bench``)."""

import platform

import numpy as np

from refimpl.causal_discrete import (ci_test_batch, discrete_score_plugin,  # noqa: F401
                                     gsm_marginal_loss, leaf_statistic, stein_hessian_diag)
from refimpl.cross_tokenizer import (  # noqa: F401
    certainty_weights, cma_align, cma_band_penalty, ctpd_loss, ctpd_loss_grad, dwa_dtw_loss,
    dwa_dtw_loss_grad, dwa_gamma, dwa_kd_loss, entropy_weights, kd_divergence, kd_divergence_grad,
    kd_gate, span_align, span_sum, span_weights, tis_dpo_loss, tis_dpo_loss_grad,
)
from refimpl.crpl import (  # noqa: F401
    clip_pseudo_labels, crpl_loss, crpl_loss_grad, crpl_reference_probs, crpl_target_loss,
    ot_cluster_loss, soft_cross_entropy, soft_cross_entropy_grad, target_accuracy,
    update_class_centroids,
)
from refimpl.gnn import (  # noqa: F401
    add_self_loops, edge_mlp_weights, focal_bce, focal_bce_grad, fuse, fuse_vjp, gat_layer,
    gat_layer_vjp, gcn_layer, gcn_layer_vjp, gcn_norm, gin_layer, gin_layer_vjp, segment_softmax,
    segment_softmax_vjp, to_csr,
)
from refimpl.inf_ssm import (infssm_distance, infssm_distance_grad, infssm_reg_loss,  # noqa: F401
                             infssm_reg_loss_grad, mamba_ac_from_scan, stein_cross_gram_dense,
                             stein_cross_gram_diag, stein_gram_diag)
from refimpl.ot import (emd, emd_grad, pairwise_cost, sinkhorn, sinkhorn_cost,  # noqa: F401
                        sinkhorn_cost_grad, sinkhorn_divergence, sinkhorn_log)
from refimpl.preference import (dpo_loss, dpo_loss_grad, linear_dpo_loss,  # noqa: F401
                                linear_dpo_loss_grad, logits_sam_dpo, logits_sam_dpo_grad,
                                seq_logps)
from refimpl.recsys_vae import (  # noqa: F401
    anneal_beta, gaussian_w2, item_centroids, multvae_forward, multvae_loss,
    multvae_value_and_grad, ndcg_at_k, pia_anchor_grad, pia_anchor_loss, recall_at_k,
)
from refimpl.safety_ensembles import (  # noqa: F401
    antibody_align_direction, antibody_lambda, antibody_weights, dpp_logdet_diversity, dro_ascent,
    harmful_perturb, ibdr_dual_update, ibdr_loss, ibdr_loss_grad, prediction_distance,
    token_mean_nll, weighted_token_ce, weighted_token_ce_grad,
)
from refimpl.softdtw import (sdtw_cost, sdtw_cost_vjp, soft_dtw, soft_dtw_divergence,  # noqa: F401
                             soft_dtw_divergence_grad, soft_dtw_grad)

NAME = "numpy"
DTYPES = ("float64",)


def asarray(a):
    return np.asarray(a)


def to_numpy(x):
    return np.asarray(x)


def is_native(x) -> bool:
    return isinstance(x, (np.ndarray, np.generic))


def synchronize() -> None:
    """Nothing is queued on the CPU."""


def reset_peak_memory() -> None:
    """Host memory is not tracked (asv ``peakmem_`` measures RSS)."""


def peak_memory() -> None:
    return None


def describe() -> str:
    return f"CPU ({platform.processor() or platform.machine()}), NumPy {np.__version__}"
