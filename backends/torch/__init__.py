"""The PyTorch backend: the reference functions of :mod:`refimpl` on torch tensors.

Every op has the reference's name, positional order, keyword names and defaults; it takes
``torch.Tensor`` inputs on any device, computes in the input's dtype (float32 or float64) on
that device, and returns tensors. Arrays of another kind (e.g. ``numpy.ndarray``) are refused
with a ``TypeError`` naming the argument. The Soft-DTW ops and ``sdtw_cost`` are
differentiable by autograd through custom ``torch.autograd.Function`` s whose backward is the
reference's explicit gradient; ``sinkhorn_cost`` is differentiable by unrolling the iterations.

Device: ``asarray`` places arrays on ``cuda`` when ``torch.cuda.is_available()``, else on the
CPU; the environment variable ``REFIMPL_TORCH_DEVICE`` (e.g. ``cpu``, ``cuda:1``) overrides
that. Importing this package only imports torch: no CUDA context, no device memory.

Besides the protocol of :mod:`backends` (``NAME``, ``DTYPES``, ``asarray``, ``to_numpy``,
``is_native``, ``synchronize``, ``reset_peak_memory``, ``peak_memory``, ``describe``) the
backend offers :func:`autograd_vjp`, which the cross-check uses to compare autograd
gradients with the reference's vector-Jacobian products.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import torch

from refimpl import _validate

NAME = "torch"
DTYPES = ("float32", "float64", "bfloat16")  # bfloat16: the ops whose registry entry lists it


def device() -> torch.device:
    """The device of :func:`asarray`: ``$REFIMPL_TORCH_DEVICE``, else cuda when available, else
    the CPU."""
    override = os.environ.get("REFIMPL_TORCH_DEVICE", "").strip()
    if override:
        return torch.device(override)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def is_native(x) -> bool:
    """Whether ``x`` is a torch tensor (on any device)."""
    return isinstance(x, torch.Tensor)


def native(**arrays) -> None:
    """Refuse arrays of another kind with a ``TypeError`` naming the argument (no silent copies)."""
    _validate.native(NAME, is_native, "torch.Tensor", **arrays)


def asarray(a, dtype: str | None = None) -> torch.Tensor:
    """A NumPy array (or scalar) as a tensor on :func:`device` (an explicit copy): dtype kept,
    or cast to ``dtype`` by name (e.g. ``"bfloat16"``, which NumPy cannot hold) on the device."""
    if isinstance(a, torch.Tensor):
        t = a.to(device())
    else:
        a = np.asarray(a)
        if not a.flags.c_contiguous:  # e.g. negative strides, which torch cannot wrap
            a = a.copy()
        t = torch.as_tensor(a, device=device())
    return t if dtype is None else t.to(getattr(torch, dtype))


def to_numpy(x) -> np.ndarray:
    """A tensor as a NumPy array (an explicit device-to-host copy, detached from autograd);
    bfloat16 comes back as float32 (exactly: NumPy has no bfloat16)."""
    if isinstance(x, torch.Tensor):
        x = x.detach()
        return (x.float() if x.dtype == torch.bfloat16 else x).cpu().numpy()
    return np.asarray(x)


def _cuda_in_use() -> bool:
    return device().type == "cuda"


def synchronize() -> None:
    """Wait for the queued work of the current CUDA device; nothing to wait for on the CPU."""
    if _cuda_in_use():
        torch.cuda.synchronize(device())


def reset_peak_memory() -> None:
    """Reset the CUDA allocator's high-water mark (no-op on the CPU)."""
    if _cuda_in_use():
        torch.cuda.reset_peak_memory_stats(device())


def peak_memory() -> int | None:
    """Bytes of device memory allocated at the high-water mark, or None on the CPU."""
    if _cuda_in_use():
        return int(torch.cuda.max_memory_allocated(device()))
    return None


def describe() -> str:
    """The device in words, e.g. ``torch 2.4.0, cuda:0 (NVIDIA H100 80GB HBM3)``."""
    dev = device()
    if dev.type == "cuda":
        index = dev.index if dev.index is not None else torch.cuda.current_device()
        return f"torch {torch.__version__}, cuda:{index} ({torch.cuda.get_device_name(index)})"
    return f"torch {torch.__version__}, {dev.type} ({torch.get_num_threads()} threads)"


def sparse_csr(ptr, col, val, size):
    """A CSR tensor from trusted parts (invariants not checked: the caller built them sorted),
    without torch's once-per-process "sparse CSR support is in beta" notice."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Sparse CSR tensor support is in beta", UserWarning)
        return torch.sparse_csr_tensor(ptr, col, val, size=size, check_invariants=False)


def read_packed(parts) -> list[np.ndarray]:
    """Read several device values with ONE device-to-host copy (the validators' value checks).

    ``parts``: 1-D (or 0-d) tensors of any integer / float / bool dtype on one device; floats
    travel as float64 bit patterns inside an int64 tensor (exact), integers as int64. Returns
    host NumPy arrays, one per part (float64 for floating parts, int64 otherwise)."""
    packed, kinds = [], []
    for p in parts:
        p = p.detach().reshape(-1)
        if p.is_floating_point():
            packed.append(p.to(torch.float64).view(torch.int64))
            kinds.append(True)
        else:
            packed.append(p.to(torch.int64))
            kinds.append(False)
    flat = torch.cat(packed).cpu().numpy() if packed else np.empty(0, np.int64)  # the one read
    out, off = [], 0
    for p, is_float in zip(packed, kinds):
        chunk = flat[off:off + p.numel()]
        out.append(chunk.view(np.float64) if is_float else chunk)
        off += p.numel()
    return out


def autograd_vjp(fn, kwargs: dict, wrt, cotangent) -> dict:
    """Autograd's vector-Jacobian product of ``fn(**kwargs)`` w.r.t. the inputs named in ``wrt``.

    Each differentiated input is replaced by a detached clone with ``requires_grad=True``, the
    output ``y`` (the first one, for ops returning a tuple such as ``(loss, rewards...)``) is
    computed, and ``sum(cotangent * y)`` is backpropagated. Returns
    ``{name: gradient}`` for each name in ``wrt`` (the harness compares them with the
    reference VJP's ``"d" + name``); an input the output does not depend on gets zeros.
    """
    leaves = {name: kwargs[name].detach().clone().requires_grad_(True) for name in wrt}
    with torch.enable_grad():
        out = fn(**{**kwargs, **leaves})
        if isinstance(out, tuple):  # ops with several outputs differentiate the first (the loss)
            out = out[0]
        cot = cotangent if isinstance(cotangent, torch.Tensor) else torch.as_tensor(cotangent)
        cot = cot.to(device=out.device, dtype=out.dtype)
        grads = torch.autograd.grad(out, list(leaves.values()), grad_outputs=cot,
                                    allow_unused=True)
    return {name: (torch.zeros_like(x) if g is None else g)
            for (name, x), g in zip(leaves.items(), grads)}


# The op modules import the helpers above from this (then partially initialised) package.
from backends.torch.causal_discrete import (  # noqa: E402
    ci_test_batch, discrete_score_plugin, gsm_marginal_loss, leaf_statistic, stein_hessian_diag,
)
from backends.torch.crpl import (  # noqa: E402
    clip_pseudo_labels, crpl_loss, crpl_loss_grad, crpl_reference_probs, crpl_target_loss,
    ot_cluster_loss, soft_cross_entropy, soft_cross_entropy_grad, target_accuracy,
    update_class_centroids,
)
from backends.torch.cross_tokenizer import (  # noqa: E402
    certainty_weights, cma_align, cma_band_penalty, ctpd_loss, ctpd_loss_grad, dwa_dtw_loss,
    dwa_dtw_loss_grad, dwa_gamma, dwa_kd_loss, entropy_weights, kd_divergence,
    kd_divergence_grad, kd_gate, span_sum, span_weights, tis_dpo_loss, tis_dpo_loss_grad,
)
from backends.torch.gnn import (  # noqa: E402
    add_self_loops, edge_mlp_weights, focal_bce, focal_bce_grad, fuse, fuse_vjp, gat_layer,
    gat_layer_vjp, gcn_layer, gcn_layer_vjp, gcn_norm, gin_layer, gin_layer_vjp, segment_softmax,
    segment_softmax_vjp, to_csr,
)
from backends.torch.gnn_models import (  # noqa: E402
    cluster_encoder_forward, cluster_encoder_loss, pdm_classifier_forward, to_torch_params,
)
from backends.torch.inf_ssm import (  # noqa: E402
    infssm_distance, infssm_distance_grad, infssm_reg_loss, infssm_reg_loss_grad,
    mamba_ac_from_scan, stein_cross_gram_diag, stein_gram_diag,
)
from backends.torch.ot import (  # noqa: E402
    emd, emd_grad, pairwise_cost, sinkhorn, sinkhorn_cost, sinkhorn_cost_grad,
    sinkhorn_divergence, sinkhorn_log,
)
from backends.torch.preference import (  # noqa: E402
    dpo_loss, dpo_loss_grad, linear_dpo_loss, linear_dpo_loss_grad, logits_sam_dpo,
    logits_sam_dpo_grad, seq_logps,
)
from backends.torch.recsys_vae import (  # noqa: E402
    anneal_beta, gaussian_w2, item_centroids, multvae_forward, multvae_loss,
    multvae_value_and_grad, ndcg_at_k, pia_anchor_grad, pia_anchor_loss, recall_at_k,
)
from backends.torch.safety_ensembles import (  # noqa: E402
    antibody_align_direction, antibody_lambda, antibody_weights, dpp_logdet_diversity,
    dro_ascent, harmful_perturb, ibdr_dual_update, ibdr_loss, ibdr_loss_grad,
    prediction_distance, token_mean_nll, weighted_token_ce, weighted_token_ce_grad,
)
from backends.torch.softdtw import (  # noqa: E402
    sdtw_cost, sdtw_cost_vjp, soft_dtw, soft_dtw_divergence, soft_dtw_divergence_grad,
    soft_dtw_grad,
)

__all__ = [
    "NAME", "DTYPES", "device", "asarray", "to_numpy", "is_native", "synchronize",
    "reset_peak_memory", "peak_memory", "describe", "autograd_vjp", "read_packed", "sparse_csr",
    "soft_dtw", "soft_dtw_grad", "sdtw_cost", "sdtw_cost_vjp", "soft_dtw_divergence",
    "soft_dtw_divergence_grad",
    "sinkhorn_log", "sinkhorn", "sinkhorn_cost", "sinkhorn_cost_grad", "sinkhorn_divergence",
    "pairwise_cost", "emd", "emd_grad",
    "seq_logps", "dpo_loss", "dpo_loss_grad", "linear_dpo_loss", "linear_dpo_loss_grad",
    "logits_sam_dpo", "logits_sam_dpo_grad",
    "kd_divergence", "kd_divergence_grad", "entropy_weights", "certainty_weights", "kd_gate",
    "cma_align", "cma_band_penalty", "dwa_gamma", "dwa_dtw_loss", "dwa_dtw_loss_grad",
    "dwa_kd_loss", "span_sum", "span_weights", "ctpd_loss", "ctpd_loss_grad", "tis_dpo_loss",
    "tis_dpo_loss_grad",
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
    "pdm_classifier_forward", "cluster_encoder_forward", "cluster_encoder_loss",
    "to_torch_params",
    "update_class_centroids", "crpl_reference_probs", "soft_cross_entropy",
    "soft_cross_entropy_grad", "ot_cluster_loss", "crpl_target_loss", "crpl_loss", "crpl_loss_grad",
    "clip_pseudo_labels", "target_accuracy",
]
