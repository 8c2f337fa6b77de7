"""The op registry: the single list that the cross-check test, ``refimpl check``/``bench``
and the asv suite walk. Adding an :class:`Op` here is what makes a function tested against
the reference on every backend, checked by the command, and benchmarked.

An op's reference is ``refimpl.<family>.<name>``; backend ``b`` offers it as
``backends.get(b).<name>`` with the same signature. Cases are keyword-argument dicts of
NumPy inputs (float arrays in float64; the harness casts them to the dtype under test and
keeps integer arrays' dtype; tuples and lists, e.g. per-scan pairs, are converted item by item).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Callable, Mapping

import numpy as np

from refimpl._cases import Case
from refimpl._cases import causal_graph as _cg
from refimpl._cases import causal_score as _cs
from refimpl._cases import crpl as _cr
from refimpl._cases import ctpd as _ct
from refimpl._cases import dwa_kd as _dk
from refimpl._cases import gnn as _gn
from refimpl._cases import inf_ssm as _is
from refimpl._cases import ot as _ot
from refimpl._cases import preference as _pf
from refimpl._cases import recsys_vae as _rv
from refimpl._cases import safety_ensembles as _se
from refimpl._cases import softdtw as _sd

__all__ = ["Case", "Op", "OPS", "REGISTRY", "FAMILIES", "SCALES", "get", "select"]

SCALES = ("tiny", "small", "bench")


Tol = Mapping[str, Mapping[str, tuple[float, float]]]  # dtype -> output name ("*" = default) -> (rtol, atol)


@dataclass(frozen=True, eq=False)  # ops are unique registry entries: identity equality
class Op:
    name: str
    family: str
    paper: str
    out_names: tuple[str, ...]
    cases: Callable[[np.random.Generator, str], list[Case]]
    tol: Tol
    # result (converted to NumPy) + the case kwargs -> {output name: array or Python scalar}
    outputs: Callable[[object, dict], dict] | None = None
    grad_of: str | None = None          # this op returns the gradient of that op
    wrt: tuple[str, ...] = ()           # differentiable inputs (autograd is cross-checked)
    # reference vector-Jacobian product: (float64 kwargs, cotangent of the output) -> {input: grad}
    vjp: Callable[[dict, np.ndarray], dict] | None = None
    host_solver: bool = False           # backends solve on the host, by design (documented)
    doc: str = field(default="")
    # dtypes the op is checked and timed in, where a backend offers them (its DTYPES)
    dtypes: tuple[str, ...] = ("float32", "float64")

    @property
    def ref(self) -> Callable:
        return getattr(importlib.import_module(f"refimpl.{self.family}"), self.name)

    def named(self, result, kwargs: dict) -> dict:
        """The comparable outputs of one (NumPy) result, by name."""
        if self.outputs is not None:
            return self.outputs(result, kwargs)
        if isinstance(result, dict):
            return dict(result)
        if isinstance(result, tuple):
            return dict(zip(self.out_names, result))
        return {self.out_names[0]: result}

    def tolerance(self, dtype: str, output: str) -> tuple[float, float]:
        t = self.tol[dtype]
        return t.get(output, t["*"])


_SDTW_PAPER = "1703.01541"
_SDTW_DIV_PAPER = "2010.08354"

OPS: tuple[Op, ...] = (
    Op("soft_dtw", "softdtw", _SDTW_PAPER, ("value",), _sd.cases_soft_dtw, _sd.TOL,
       wrt=("C",), vjp=_sd.vjp_soft_dtw, doc="Soft-DTW value R[n, m]"),
    Op("soft_dtw_grad", "softdtw", _SDTW_PAPER, ("value", "E"), _sd.cases_soft_dtw, _sd.TOL,
       grad_of="soft_dtw", doc="Soft-DTW value and expected alignment E = d value / dC"),
    Op("sdtw_cost", "softdtw", _SDTW_PAPER, ("C",), _sd.cases_cost, _sd.TOL,
       wrt=("X", "Y"), vjp=_sd.vjp_cost, doc="pairwise costs for Soft-DTW (sqeuclidean, cosine)"),
    Op("sdtw_cost_vjp", "softdtw", _SDTW_PAPER, ("dX", "dY"), _sd.cases_cost_vjp, _sd.TOL,
       grad_of="sdtw_cost", doc="vector-Jacobian product of sdtw_cost"),
    Op("soft_dtw_divergence", "softdtw", _SDTW_DIV_PAPER, ("value",), _sd.cases_divergence, _sd.TOL,
       wrt=("X", "Y"), vjp=_sd.vjp_divergence, doc="Soft-DTW divergence D(X, Y)"),
    Op("soft_dtw_divergence_grad", "softdtw", _SDTW_DIV_PAPER, ("value", "dX", "dY"),
       _sd.cases_divergence, _sd.TOL, grad_of="soft_dtw_divergence",
       doc="Soft-DTW divergence and its gradients"),
    Op("sinkhorn_log", "ot", _ot.PAPER, ("plan", "f", "g"), _ot.cases_sinkhorn, _ot.TOL,
       outputs=_ot.scaled_result, doc="log-domain Sinkhorn: plan, potentials, iterations"),
    Op("sinkhorn", "ot", _ot.PAPER, ("plan", "f", "g"), _ot.cases_sinkhorn_std, _ot.TOL,
       outputs=_ot.scaled_result, doc="standard-domain Sinkhorn-Knopp"),
    Op("sinkhorn_cost", "ot", _ot.PAPER, ("value",), _ot.cases_cost, _ot.TOL,
       doc="entropic (dual) or linear transport cost"),
    Op("sinkhorn_cost_grad", "ot", _ot.PAPER, ("dC", "da", "db"), _ot.cases_cost_grad, _ot.TOL,
       outputs=_ot.scaled_grads, grad_of="sinkhorn_cost",
       doc="envelope gradient of the entropic cost (P, centred f, centred g)"),
    Op("sinkhorn_divergence", "ot", _ot.DIV_PAPER, ("value",), _ot.cases_divergence, _ot.TOL,
       doc="debiased Sinkhorn divergence"),
    Op("pairwise_cost", "ot", _ot.PAPER, ("C",), _ot.cases_pairwise, _ot.TOL,
       doc="ground costs: sqeuclidean, half_sqeuclidean, cosine"),
    Op("emd", "ot", _ot.PAPER, ("plan", "cost", "f", "g"), _ot.cases_emd, _ot.TOL_EXACT,
       host_solver=True, doc="exact OT by linear programming (host solve in every backend)"),
    Op("emd_grad", "ot", _ot.PAPER, ("dC", "da", "db"), _ot.cases_emd, _ot.TOL_EXACT,
       host_solver=True, grad_of="emd", doc="gradients of the exact OT cost"),
    Op("seq_logps", "preference", _pf.PAPER, ("logp",), _pf.cases_seq_logps, _pf.TOL,
       wrt=("H", "W", "b"), vjp=_pf.vjp_seq_logps,
       doc="masked sequence log-probs through a linear head (dense or chunked)", dtypes=_pf.DTYPES),
    Op("dpo_loss", "preference", _pf.DPO_PAPER, ("loss", "chosen_rewards", "rejected_rewards"),
       _pf.cases_dpo_loss, _pf.TOL, wrt=("logp",), vjp=_pf.vjp_dpo_loss,
       doc="DPO loss family (sigmoid, hinge, ipo) and rewards from sequence log-probs"),
    Op("dpo_loss_grad", "preference", _pf.DPO_PAPER, ("loss", "dlogp"), _pf.cases_dpo_loss,
       _pf.TOL, grad_of="dpo_loss", doc="DPO loss and its gradient w.r.t. the log-probs"),
    Op("linear_dpo_loss", "preference", _pf.DPO_PAPER, ("loss",), _pf.cases_linear_dpo, _pf.TOL,
       wrt=("H", "W", "b"), vjp=_pf.vjp_linear_dpo, doc="DPO through a linear LM head",
       dtypes=_pf.DTYPES),
    Op("linear_dpo_loss_grad", "preference", _pf.DPO_PAPER, ("loss", "dH", "dW", "db"),
       _pf.cases_linear_dpo, _pf.TOL, grad_of="linear_dpo_loss",
       doc="fused DPO forward+backward: loss and gradients w.r.t. H, W, b", dtypes=_pf.DTYPES),
    Op("logits_sam_dpo", "preference", _pf.PAPER, ("loss_post",), _pf.cases_logits_sam, _pf.TOL,
       wrt=("H", "W", "b"), vjp=_pf.vjp_logits_sam,
       doc="logits-SAM: DPO loss at the perturbed head W + eps (eps frozen)", dtypes=_pf.DTYPES),
    Op("logits_sam_dpo_grad", "preference", _pf.PAPER,
       ("loss_pre", "loss_post", "grad_norm", "eps_W", "dH", "dW", "db", "chosen_rewards",
        "rejected_rewards"), _pf.cases_logits_sam, _pf.TOL, outputs=_pf.sam_outputs,
       grad_of="logits_sam_dpo", doc="one exact logits-SAM step (official code's non-ZeRO path)",
       dtypes=_pf.DTYPES),
    Op("kd_divergence", "cross_tokenizer", _dk.PAPER, ("div",), _dk.cases_kd_divergence, _dk.TOL,
       wrt=("z_s",), vjp=_dk.vjp_kd_divergence, dtypes=_dk.KD_DTYPES,
       doc="per-token KD divergences of DSKD/DWA-KD (fkl, rkl, skewed, js, adaptive)"),
    Op("kd_divergence_grad", "cross_tokenizer", _dk.PAPER, ("div", "dz_s"),
       _dk.cases_kd_divergence, _dk.TOL, grad_of="kd_divergence", dtypes=_dk.KD_DTYPES,
       doc="KD divergence and its closed-form gradient w.r.t. the student logits"),
    Op("entropy_weights", "cross_tokenizer", _dk.PAPER, ("w_s",), _dk.cases_entropy_weights,
       _dk.TOL, doc="DWA-KD student-uncertainty token weights (mean 1 per row)"),
    Op("certainty_weights", "cross_tokenizer", _dk.PAPER, ("w_t",), _dk.cases_certainty_weights,
       _dk.TOL, doc="DWA-KD teacher-confidence token weights"),
    Op("kd_gate", "cross_tokenizer", _dk.PAPER, ("g",), _dk.cases_kd_gate, _dk.TOL,
       doc="DWA-KD soft gate: t2s max-probability with linear warm-up"),
    Op("cma_band_penalty", "cross_tokenizer", _dk.PAPER, ("P",), _dk.cases_cma_band_penalty,
       _dk.TOL, doc="DWA-KD soft band penalty from the CMA attention"),
    Op("dwa_dtw_loss", "cross_tokenizer", _dk.PAPER, ("value",), _dk.cases_dwa_dtw_loss, _dk.TOL,
       wrt=("X", "Y"), vjp=_dk.vjp_dwa_dtw_loss,
       doc="DWA-KD Soft-DTW divergence (cosine cost, band penalty), batch sum"),
    Op("dwa_dtw_loss_grad", "cross_tokenizer", _dk.PAPER, ("value", "dX", "dY"),
       _dk.cases_dwa_dtw_loss, _dk.TOL, grad_of="dwa_dtw_loss",
       doc="DWA-KD Soft-DTW loss and its gradients w.r.t. X and Y"),
    Op("span_sum", "cross_tokenizer", _ct.CTPD_PAPER, ("span_logps",), _ct.cases_span_sum,
       _ct.TOL, wrt=("token_logps",), vjp=_ct.vjp_span_sum,
       doc="CTPD span log-probs: segment sum of token log-probs (sum, mean, padded_mean)"),
    Op("span_weights", "cross_tokenizer", _ct.CTPD_PAPER, ("w",), _ct.cases_span_weights, _ct.TOL,
       doc="CTPD span weights k exp(mu clip(lp+ - lp-, lo, hi)), rounded half to even"),
    Op("ctpd_loss", "cross_tokenizer", _ct.CTPD_PAPER, ("loss", "rewards_w", "rewards_l"),
       _ct.cases_ctpd_loss, _ct.TOL, wrt=("ellS",), vjp=_ct.vjp_ctpd_loss,
       doc="CTPD teacher-anchored DPO on weighted span log-probs"),
    Op("ctpd_loss_grad", "cross_tokenizer", _ct.CTPD_PAPER, ("loss", "d_ellS"),
       _ct.cases_ctpd_loss, _ct.TOL, grad_of="ctpd_loss",
       doc="CTPD loss and its gradient w.r.t. the student span log-probs"),
    Op("tis_dpo_loss", "cross_tokenizer", _ct.TIS_PAPER, ("loss", "rewards_w", "rewards_l"),
       _ct.cases_tis_dpo_loss, _ct.TIS_TOL, wrt=("logits",), vjp=_ct.vjp_tis_dpo_loss,
       doc="TIS-DPO: token-weighted DPO with the full-vocabulary KL term", dtypes=_ct.TIS_DTYPES),
    Op("tis_dpo_loss_grad", "cross_tokenizer", _ct.TIS_PAPER, ("loss", "dlogits"),
       _ct.cases_tis_dpo_loss, _ct.TIS_TOL, grad_of="tis_dpo_loss",
       doc="TIS-DPO loss and its gradient w.r.t. the policy logits", dtypes=_ct.TIS_DTYPES),
    Op("stein_gram_diag", "inf_ssm", _is.PAPER, ("G",), _is.cases_stein_gram_diag, _is.TOL,
       doc="observability Gram of diagonal systems, closed form (the code's solve_P)"),
    Op("stein_cross_gram_diag", "inf_ssm", _is.PAPER, ("G12",), _is.cases_stein_cross_gram_diag,
       _is.TOL, doc="cross-Gram (C1^T C2)_ij / (1 - a_i b_j), O(p n1 n2)"),
    Op("infssm_distance", "inf_ssm", _is.PAPER, ("d",), _is.cases_infssm_distance, _is.TOL,
       wrt=("a", "c", "b", "e"), vjp=_is.vjp_infssm_distance,
       doc="Inf-SSM distance: the code's O(n^2) surrogate, or projection / Martin"),
    Op("infssm_distance_grad", "inf_ssm", _is.PAPER, ("d", "da", "dc", "db", "de"),
       _is.cases_infssm_distance_grad, _is.TOL, grad_of="infssm_distance",
       doc="the code distance and its explicit gradient (fused forward+backward)"),
    Op("mamba_ac_from_scan", "inf_ssm", _is.PAPER, ("a", "c"), _is.cases_mamba_ac_from_scan,
       _is.TOL, wrt=("delta_raw", "A_log", "C"), vjp=_is.vjp_mamba_ac_from_scan,
       doc="per-token diagonal systems (a, c) of a Mamba scan (MambaInnerFnNoOutProj_state)"),
    Op("infssm_reg_loss", "inf_ssm", _is.PAPER, ("loss",), _is.cases_infssm_reg_loss, _is.TOL,
       doc="Inf-SSM regulariser over scans (allclose shortcut; inf_ssm or mse)"),
    Op("infssm_reg_loss_grad", "inf_ssm", _is.PAPER, ("loss", "da_new", "dc_new"),
       _is.cases_infssm_reg_loss, _is.TOL, grad_of="infssm_reg_loss",
       doc="the regulariser and its gradient w.r.t. the new pairs"),
    Op("discrete_score_plugin", "causal_discrete", _cs.PAPER, ("S",),
       _cs.cases_discrete_score_plugin, _cs.TOL, dtypes=("float64",),
       doc="plug-in discrete score 1/p_hat(y | x_-i), Dirichlet pseudo-count, NaN-padded"),
    Op("gsm_marginal_loss", "causal_discrete", _cs.PAPER, ("J",), _cs.cases_gsm_marginal_loss,
       _cs.TOL, doc="generalised score-matching loss mean_r sum_i [s_i^2 - 2 sum_y s_i(y, x_-i)]"),
    Op("leaf_statistic", "causal_discrete", _cs.PAPER, ("stat",), _cs.cases_leaf_statistic,
       _cs.TOL, doc="leaf statistic per node (invariance of sum_y s, entropy, score variance)"),
    Op("ci_test_batch", "causal_discrete", _cg.PAPER, ("stat", "dof", "pvalue"),
       _cg.cases_ci_test_batch, _cg.TOL, dtypes=("float64",),
       doc="G² / chi² tests of X_i against each candidate given a set, batched"),
    Op("stein_hessian_diag", "causal_discrete", _cg.SCORE_PAPER, ("H",),
       _cg.cases_stein_hessian_diag, _cg.TOL_STEIN,
       doc="SCORE's Stein estimate of diag Hessian of log p (Cholesky solves)"),
    Op("harmful_perturb", "safety_ensembles", _se.ANTIBODY_PAPER, ("theta_prime",),
       _se.cases_harmful_perturb, _se.TOL, doc="Antibody's harmful step theta - alpha g_h / (||g_h|| + eps)"),
    Op("antibody_lambda", "safety_ensembles", _se.ANTIBODY_PAPER, ("lam_new", "lam_raw"),
       _se.cases_antibody_lambda, _se.TOL,
       doc="Antibody's adaptive weight (cosine of the code, or KKT) and its moving average"),
    Op("antibody_align_direction", "safety_ensembles", _se.ANTIBODY_PAPER, ("g", "lam_new", "lam_raw"),
       _se.cases_antibody_align_direction, _se.TOL,
       doc="Antibody alignment direction g_s + lam (g_h - g_p) + lam2 g_r (two fused passes)"),
    Op("antibody_weights", "safety_ensembles", _se.ANTIBODY_PAPER, ("w",), _se.cases_antibody_weights,
       _se.TOL, doc="per-sample weights softmax((nll_refusal - nll_compliance) / tau)"),
    Op("token_mean_nll", "safety_ensembles", _se.ANTIBODY_PAPER, ("nll", "n_tok"),
       _se.cases_token_mean_nll, _se.TOL, dtypes=_se.WCE_DTYPES,
       doc="per-sample token-mean NLL through a linear head (no gradient), token counts"),
    Op("weighted_token_ce", "safety_ensembles", _se.ANTIBODY_PAPER, ("loss",),
       _se.cases_weighted_token_ce, _se.TOL, wrt=("H", "W", "b"), vjp=_se.vjp_weighted_token_ce,
       dtypes=_se.WCE_DTYPES, doc="w-weighted token cross-entropy through a linear head (code or paper)"),
    Op("weighted_token_ce_grad", "safety_ensembles", _se.ANTIBODY_PAPER, ("loss", "dH", "dW", "db"),
       _se.cases_weighted_token_ce, _se.TOL, grad_of="weighted_token_ce", dtypes=_se.WCE_DTYPES,
       doc="fused weighted token CE forward+backward: gradients w.r.t. H, W, b"),
    Op("dpp_logdet_diversity", "safety_ensembles", _se.IBDR_PAPER, ("LD",),
       _se.cases_dpp_logdet_diversity, _se.TOL, wrt=("probs",), vjp=_se.vjp_dpp_logdet,
       doc="IBDR diversity: mean log det of the Gram of normalised wrong-class probabilities"),
    Op("ibdr_loss", "safety_ensembles", _se.IBDR_PAPER, ("loss",), _se.cases_ibdr_loss, _se.TOL,
       wrt=("logits",), vjp=_se.vjp_ibdr_loss,
       doc="IBDR loss: CE of the averaged logits minus alpha_div times the diversity"),
    Op("ibdr_loss_grad", "safety_ensembles", _se.IBDR_PAPER, ("loss", "dlogits"), _se.cases_ibdr_loss,
       _se.TOL, grad_of="ibdr_loss", doc="IBDR loss and its closed-form gradient w.r.t. the logits"),
    Op("dro_ascent", "safety_ensembles", _se.IBDR_PAPER, ("theta_prime",), _se.cases_dro_ascent,
       _se.TOL, doc="IBDR ascent theta + clip(g) / (2 lam)"),
    Op("prediction_distance", "safety_ensembles", _se.IBDR_PAPER, ("d_raw",),
       _se.cases_prediction_distance, _se.TOL,
       doc="mean L2 distance between the softmaxes of two averaged-logit batches"),
    Op("ibdr_dual_update", "safety_ensembles", _se.IBDR_PAPER, ("lam_new",),
       _se.cases_ibdr_dual_update, _se.TOL, doc="IBDR dual step on lam (code barrier and clip, or paper)"),
    Op("multvae_forward", "recsys_vae", _rv.MULTVAE_PAPER, ("logits", "mu", "logvar"),
       _rv.cases_multvae_forward, _rv.TOL,
       doc="Mult-VAE forward: normalise, mask (dropout or bernoulli), encoder, z, decoder logits"),
    Op("multvae_loss", "recsys_vae", _rv.MULTVAE_PAPER, ("loss", "nll", "kl"),
       _rv.cases_multvae_loss, _rv.TOL, wrt=("logits", "mu", "logvar"), vjp=_rv.vjp_multvae_loss,
       doc="multinomial NLL of the raw X + beta KL (fused log-softmax and X-weighted sum)"),
    Op("multvae_value_and_grad", "recsys_vae", _rv.MULTVAE_PAPER, ("loss", "grads"),
       _rv.cases_multvae_value_and_grad, _rv.TOL, outputs=_rv.outputs_value_and_grad,
       doc="Mult-VAE (+ PIA) objective and its gradient w.r.t. every parameter (and the anchors)"),
    Op("pia_anchor_loss", "recsys_vae", _rv.PIA_PAPER, ("loss",), _rv.cases_pia_anchor_loss,
       _rv.TOL, wrt=("mu", "logvar", "E"), vjp=_rv.vjp_pia_anchor_loss,
       doc="PIA anchor regulariser in closed form (distance to the centroid + variance + spread)"),
    Op("pia_anchor_grad", "recsys_vae", _rv.PIA_PAPER, ("dmu", "dlogvar", "dE"),
       _rv.cases_pia_anchor_loss, _rv.TOL, grad_of="pia_anchor_loss",
       doc="gradients of the mean PIA anchor loss w.r.t. mu, logvar and the anchors"),
    Op("recall_at_k", "recsys_vae", _rv.MULTVAE_PAPER, ("recall",), _rv.cases_recall_at_k,
       _rv.TOL_METRICS, doc="Recall@k of the notebook (fold-in excluded, NaN without targets)"),
    Op("ndcg_at_k", "recsys_vae", _rv.MULTVAE_PAPER, ("ndcg",), _rv.cases_ndcg_at_k,
       _rv.TOL_METRICS, doc="NDCG@k of the notebook (binary relevance, NaN without targets)"),
    Op("gcn_layer", "gnn", _gn.PAPER, ("H",), _gn.cases_gcn_layer, _gn.TOL,
       wrt=("X", "W", "b", "edge_weight"), vjp=_gn.vjp_gcn_layer,
       doc="GCN layer (PyG GCNConv): remaining self-loops, symmetric normalisation, CSR sum"),
    Op("gcn_layer_vjp", "gnn", _gn.PAPER, ("dX", "dW", "db", "dedge_weight"),
       _gn.cases_gcn_layer_vjp, _gn.TOL, grad_of="gcn_layer",
       doc="GCN layer forward + backward (edge-weight gradient through the degrees)"),
    Op("gat_layer", "gnn", _gn.PAPER, ("H", "alpha"), _gn.cases_gat_layer, _gn.TOL,
       wrt=("X", "W", "a_src", "a_dst", "b", "W_e", "a_e"), vjp=_gn.vjp_gat_layer,
       doc="GAT layer (PyG GATConv): per-destination, per-head segment softmax, edge features"),
    Op("gat_layer_vjp", "gnn", _gn.PAPER, ("dX", "dW", "da_src", "da_dst", "db", "dW_e", "da_e"),
       _gn.cases_gat_layer_vjp, _gn.TOL, grad_of="gat_layer",
       doc="GAT layer forward + backward (softmax backward per destination row)"),
    Op("gin_layer", "gnn", _gn.PAPER, ("H",), _gn.cases_gin_layer, _gn.TOL,
       wrt=("X", "W1", "b1", "W2", "b2"), vjp=_gn.vjp_gin_layer,
       doc="GIN layer (PyG GINConv, eps fixed): MLP((1 + eps) x_i + sum of in-neighbours)"),
    Op("gin_layer_vjp", "gnn", _gn.PAPER, ("dX", "dW1", "db1", "dW2", "db2"),
       _gn.cases_gin_layer_vjp, _gn.TOL, grad_of="gin_layer", doc="GIN layer forward + backward"),
    Op("segment_softmax", "gnn", _gn.PAPER, ("alpha",), _gn.cases_segment_softmax, _gn.TOL,
       wrt=("scores",), vjp=_gn.vjp_segment_softmax,
       doc="softmax of edge scores per destination (and head), max-shifted, + 1e-16"),
    Op("segment_softmax_vjp", "gnn", _gn.PAPER, ("dscores",), _gn.cases_segment_softmax_vjp,
       _gn.TOL, grad_of="segment_softmax", doc="segment softmax backward"),
    Op("fuse", "gnn", _gn.PAPER, ("H", "beta"), _gn.cases_fuse, _gn.TOL, outputs=_gn.outputs_fuse,
       wrt=("H_stack",), vjp=_gn.vjp_fuse,
       doc="relation fusion: global softmax (code), concat (code), semantic / node attention"),
    Op("fuse_vjp", "gnn", _gn.PAPER, ("dH_stack",), _gn.cases_fuse_vjp, _gn.TOL, grad_of="fuse",
       doc="relation fusion backward (stack and fusion parameters)"),
    Op("focal_bce", "gnn", _gn.PAPER, ("loss",), _gn.cases_focal_bce, _gn.TOL, wrt=("outputs",),
       vjp=_gn.vjp_focal_bce,
       doc="focal BCE as the code uses it (on sigmoid outputs) or on logits (alpha_t)"),
    Op("focal_bce_grad", "gnn", _gn.PAPER, ("loss", "doutputs"), _gn.cases_focal_bce, _gn.TOL,
       grad_of="focal_bce", doc="focal BCE and its gradient w.r.t. the outputs"),
    Op("edge_mlp_weights", "gnn", _gn.PAPER, ("w",), _gn.cases_edge_mlp_weights, _gn.TOL,
       doc="PdM edge weights sigmoid(MLP(standardised attributes)) + 1e-8"),
    Op("update_class_centroids", "crpl", _cr.PAPER, ("means", "counts"),
       _cr.cases_update_class_centroids, _cr.TOL,
       doc="running per-domain class centroids of the pre-norm source features"),
    Op("crpl_reference_probs", "crpl", _cr.PAPER, ("p",), _cr.cases_crpl_reference_probs,
       _cr.TOL, doc="CRPL reference prediction: zero-shot, source and centroid-weighted prompts"),
    Op("soft_cross_entropy", "crpl", _cr.PAPER, ("loss",), _cr.cases_soft_cross_entropy, _cr.TOL,
       wrt=("logits",), vjp=_cr.vjp_soft_cross_entropy, doc="mean_b -sum_k p log_softmax(logits)"),
    Op("soft_cross_entropy_grad", "crpl", _cr.PAPER, ("dlogits",), _cr.cases_soft_cross_entropy,
       _cr.TOL, grad_of="soft_cross_entropy", doc="(softmax(logits) - p) / B"),
    Op("ot_cluster_loss", "crpl", _cr.PAPER, ("L_W", "P", "dT", "dZ"), _cr.cases_ot_cluster_loss,
       _cr.TOL, host_solver=True,
       doc="exact balanced OT between images and class texts, cost 1 - cos (host solve)"),
    Op("crpl_target_loss", "crpl", _cr.PAPER, ("L_T", "hard_labels"), _cr.cases_crpl_target_loss,
       _cr.TOL, wrt=("T_T",), vjp=_cr.vjp_crpl_target_loss,
       doc="target loss: soft CE to the reference prediction (+ hard CE with OT on)"),
    Op("crpl_loss", "crpl", _cr.PAPER, ("L",), _cr.cases_crpl_loss, _cr.TOL,
       outputs=_cr.outputs_crpl_loss, wrt=("T_S", "T_Si", "T_T"), vjp=_cr.vjp_crpl_loss,
       host_solver=True,
       doc="CRPL objective L_src + lam_W L_W + lam_T L_T and its parts"),
    Op("crpl_loss_grad", "crpl", _cr.PAPER, ("L", "dT_S", "dT_Si", "dT_T"), _cr.cases_crpl_loss,
       _cr.TOL, outputs=_cr.outputs_crpl_loss_grad, grad_of="crpl_loss", host_solver=True,
       doc="CRPL objective and its gradients w.r.t. the prompts' text embeddings (OT by envelope)"),
    Op("target_accuracy", "crpl", _cr.PAPER, ("acc",), _cr.cases_target_accuracy, _cr.TOL,
       doc="target accuracy of argmax z.t_T (the script's batch undercount, or exact)"),
)

REGISTRY: dict[str, Op] = {op.name: op for op in OPS}
FAMILIES: tuple[str, ...] = tuple(dict.fromkeys(op.family for op in OPS))


def get(name: str) -> Op:
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown op {name!r}; known: {', '.join(REGISTRY)}") from None


def select(names=None, families=None) -> list[Op]:
    """Ops filtered by name and/or family (None = all), in registry order."""
    return [op for op in OPS
            if (not names or op.name in names) and (not families or op.family in families)]
