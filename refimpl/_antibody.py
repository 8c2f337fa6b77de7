r"""Antibody: the alignment-stage update direction and the fine-tuning-stage sample weighting —
the float64 reference (Part A of the ``safety_ensembles`` family).

Paper: Nguyen, Le, Wu, Bui, Harandi, "Antibody: Strengthening Defense Against Harmful
Fine-Tuning for Large Language Models via Attenuating Harmful Gradient Influence",
arXiv 2603.00498 (ICLR 2026); it builds on Booster (``git-disl/Booster``).
Official code: ``minhquoc0712/Antibody @1d4fa5f`` — ``trainers/antibody_alignment.py``
(``AntibodyAlignmentTrainer.training_step``, ``_compute_lambda_t``, ``_apply_lambda_t_ema``) and
``trainers/weighted_sft.py`` (``WeightedSFTTrainer.training_step``, ``_sequence_nll``,
``compute_weighted_loss_and_gradient``); hyperparameters from
``script/antibody/antibody_alignment_finetune.sh`` (spec ``safety_ensembles.md`` A.1).

The library holds the array math only: flat parameter/gradient vectors ``theta``, ``g_*`` (P,)
(LoRA parameters flattened by the caller) and a linear LM head for the token-level losses; the
model forwards/backwards stay in the caller's training loop.

Alignment stage (official code, one step; a = ``alpha``, the paper's rho)::

    g_h = grad L_harm(theta; D)
    theta' = theta - a g_h / (||g_h|| + eps)                  harmful_perturb, eps = 1e-7
    g_p = grad L_harm(theta'; D),  d = g_h - g_p              (gradient of L_sharp, direction held)
    g_r = grad L_CE(theta'; D_ref)                            (refusal loss at theta')
    g_s = grad L_align(theta; S)
    cosine (code):  lam_raw = max(eta - <g_s, d> / (||d|| ||g_s|| + 1e-8), 0)
    kkt (variant):  lam_raw = max(eta - <g_s, d> / (||d||^2 + 1e-8), 0)
    lam_new = lam_raw                                   if lam_ema is None (first step)
            = m lam_ema + (1 - m) lam_raw               otherwise (EMA, m = momentum)
    g = g_s + lam_new d + lam2 g_r                          antibody_align_direction

Code facts (read from the files above): the code keeps the EMA in the trainer and initialises
it with the first raw value (our ``lam_ema=None``); the script sets m = 0.99 and lam2 = 0.05
(argparse defaults 0.9 and 0.1); eta = ``eta_lbd`` = 5; K = 1 ascent step is hard-coded
(``--num_ascent_steps`` is ignored, ``--rho`` unused); the perturbation is done on a deep copy of
the model with a recomputed g_h (an in-place perturb/restore is equivalent); ||d|| and ||g_s||
are host floats (``.item()``), <g_s, d> is a tensor dot; the kkt line sits commented out next to
the cosine one (marked as replaced). With eta > 1 the cosine keeps lam_raw in [eta-1, eta+1]
and the clamp never acts. When the batch has no refusal view the code drops the ``lam2 g_r``
term: pass ``lam2=0`` (g_r is then still validated but contributes 0).

Booster (the special case the paper names): ``momentum=1.0`` with a fixed ``lam_ema`` (the
EMA then never moves: lam_new = lam_ema) and ``lam2=0`` gives ``g = g_s + lam (g_h - g_p)``,
Booster's direction with a constant lambda (its normalised perturbation is
:func:`harmful_perturb`).

Fine-tuning stage (official code, ``weighted_sft.py``); labels are already shifted, ``m_it =
[y_it != ignore_index]`` (prompt and padding carry -100), ``N_i = sum_t m_it``,
``CE_it = lse(z_it) - z_it[y_it]`` with ``z_it = H_it W^T + b``::

    token_mean_nll:    nll_i = sum_t m_it CE_it / max(N_i, 1)      (the code's safe count)
    antibody_weights:  w = softmax((nll_r - nll_c) / tau)  over the batch (no gradient)
    weighted_token_ce, variant "code":   L = sum_i w_i sum_t m CE_it / max(sum_i w_i N_i, 1)
                       variant "paper":  L = sum_i w_i (sum_t m CE_it / max(N_i, 1))
    gradient: with c_k = dL/dlogp_k per active token k of row i,
        code  c_k = -w_i / max(sum_j w_j N_j, 1),   paper  c_k = -w_i / max(N_i, 1),
        dL/dz_k = c_k (e_{y_k} - softmax(z_k)),  dH = G W,  dW = G^T H,  db = sum G.

w_i = 1 gives HF's default token mean exactly. The "code" form is a w-weighted *token* mean
(long samples weigh more); the paper writes the update as ``sum_i w_i grad l_i``: the "paper"
variant takes l_i as the token mean (**reconstructed**: the spec asks to check whether l_i is a
mean or a sum in the PDF). The ``max(., 1)`` clamps are the code's (``clamp(min=1)`` of the
denominator, zero counts replaced by 1): a batch with every label ignored gives loss 0 and zero
gradients in both variants; with the code's clamp a tiny ``sum_i w_i N_i < 1`` (weights
concentrated on rows without completion tokens) is divided by 1, not by itself.

The token-level ops reuse the preference family's fused linear log-softmax machinery — the ONE
streaming log-sum-exp of the codebase: :class:`refimpl.preference._Head` with ``paired=False``
and ``mask = labels != ignore_index`` (from :func:`refimpl._validate.ignore_labels`),
:func:`refimpl.preference._lse_zy` (forward sweep: online LSE and target logit per active
token) and :func:`refimpl.preference._backward` with the per-token coefficients above (the loss
is linear in the token log-probs). ``token_chunk``/``vocab_chunk`` select blocks exactly as
there; ignored positions are dropped before any matmul (their labels are never read).

Code vs paper vs reconstructed:

* defaults = the code: cosine lambda, EMA from the first raw value, ``lam2 g_r`` at theta'
  added to the update at theta (SAM-style, as the paper says too), the w-weighted token mean;
* ``variant="kkt"`` (lambda) and ``variant="paper"`` (per-sample token mean) are the paper-form
  options; both **reconstructed** (the KKT lambda's epsilon and whether the paper uses the EMA
  are unconfirmed, see the spec A.3);
* the per-sample NLL is the code's token mean (``_sequence_nll`` sums, ``training_step``
  divides by ``counts.clamp(min=1)``); the softmax is over the whole micro-batch.

Everything computes in float64 (inputs are upcast); vectors are returned as float64 arrays,
scalars (``loss``, ``lam_new``, ``lam_raw``) as Python floats, ``n_tok`` as int64.
"""

from __future__ import annotations

import numpy as np

from refimpl import _validate as V
from refimpl import preference as _P

__all__ = [
    "harmful_perturb", "antibody_lambda", "antibody_align_direction", "token_mean_nll",
    "antibody_weights", "weighted_token_ce", "weighted_token_ce_grad",
]

_DIV_EPS = 1e-8      # the code's epsilon in lambda_t's denominator (both variants)


def _f64(x, name):
    return np.asarray(V.host_array(x, name), dtype=np.float64)


# --------------------------------------------------------------------------- alignment stage


def harmful_perturb(theta, g_h, alpha=0.1, *, eps=1e-7):
    """``theta' = theta - alpha g_h / (||g_h|| + eps)`` (P,): one normalised step along the
    harmful gradient (code: ``--alpha`` = 0.1, eps = 1e-7). ``g_h = 0`` gives ``theta``."""
    theta = V.host_array(theta, "theta")
    g_h = V.host_array(g_h, "g_h")
    _, alpha, eps = V.antibody_perturb_args(theta, g_h, alpha, eps)
    t, g = np.asarray(theta, dtype=np.float64), np.asarray(g_h, dtype=np.float64)
    return t - (alpha / (float(np.sqrt(g @ g)) + eps)) * g


def _lambda(gs, d, lam_ema, eta, m, variant):
    dot = float(gs @ d)
    dd = float(d @ d)
    if variant == "cosine":
        denom = np.sqrt(dd) * np.sqrt(float(gs @ gs)) + _DIV_EPS
    else:  # kkt
        denom = dd + _DIV_EPS
    lam_raw = max(eta - dot / denom, 0.0)
    lam_new = lam_raw if lam_ema is None else m * lam_ema + (1.0 - m) * lam_raw
    return float(lam_new), float(lam_raw)


def antibody_lambda(g_s, d, lam_ema=None, *, eta=5.0, momentum=0.99, variant="cosine"):
    """``(lam_new, lam_raw)`` (Python floats).

    cosine (code): ``lam_raw = max(eta - <g_s, d> / (||d|| ||g_s|| + 1e-8), 0)``;
    kkt (paper form, reconstructed): ``lam_raw = max(eta - <g_s, d> / (||d||^2 + 1e-8), 0)``;
    ``lam_new = lam_raw`` when ``lam_ema`` is None (the code's first step), else
    ``momentum lam_ema + (1 - momentum) lam_raw``."""
    g_s = V.host_array(g_s, "g_s")
    d = V.host_array(d, "d")
    _, lam_ema, eta, m, variant = V.antibody_lambda_args(g_s, d, lam_ema, eta, momentum, variant)
    return _lambda(np.asarray(g_s, dtype=np.float64), np.asarray(d, dtype=np.float64),
                   lam_ema, eta, m, variant)


def antibody_align_direction(g_s, g_h, g_p, g_r, lam_ema=None, *, eta=5.0, momentum=0.99,
                             lam2=0.05, variant="cosine"):
    """``(g (P,), lam_new, lam_raw)``: ``d = g_h - g_p``, lambda of :func:`antibody_lambda`,
    ``g = g_s + lam_new d + lam2 g_r`` (code step A.2.6-8). Booster: ``momentum=1.0``, a fixed
    ``lam_ema`` and ``lam2=0`` give ``g_s + lam_ema (g_h - g_p)``."""
    arrs = [V.host_array(x, n) for x, n in ((g_s, "g_s"), (g_h, "g_h"), (g_p, "g_p"), (g_r, "g_r"))]
    _, lam_ema, eta, m, lam2, variant = V.antibody_align_args(*arrs, lam_ema, eta, momentum, lam2,
                                                              variant)
    gs, gh, gp, gr = (np.asarray(x, dtype=np.float64) for x in arrs)
    d = gh - gp
    lam_new, lam_raw = _lambda(gs, d, lam_ema, eta, m, variant)
    return gs + lam_new * d + lam2 * gr, lam_new, lam_raw


# --------------------------------------------------------------------------- fine-tuning stage


def _head(H, W, labels, b, ignore_index, token_chunk, vocab_chunk):
    """``(head, blocks, zfun)``: the preference head over the tokens with labels != ignore_index."""
    H = V.host_array(H, "H")
    W = V.host_array(W, "W")
    labels = V.host_array(labels, "labels")
    b = None if b is None else V.host_array(b, "b")
    mask, chunks = V.antibody_head_args(H, W, labels, ignore_index, token_chunk, vocab_chunk)
    head = _P._Head(H, W, labels, mask, b, paired=False)
    blocks = head.blocks(*chunks)
    zfun = lambda r0, r1, v0, v1: head.logits(head.W, r0, r1, v0, v1)
    return head, blocks, zfun, H


def token_mean_nll(H, W, labels, b=None, *, ignore_index=-100, token_chunk=None, vocab_chunk=None):
    """``(nll (B,), n_tok (B,) int64)``: ``nll_i = sum_t m_it CE_it / max(N_i, 1)`` with
    ``m_it = [labels_it != ignore_index]`` and ``N_i = n_tok_i`` (no gradient; code's
    ``_sequence_nll`` sum divided by ``counts.clamp(min=1)``)."""
    head, blocks, zfun, _ = _head(H, W, labels, b, ignore_index, token_chunk, vocab_chunk)
    lse, zy = _P._lse_zy(head, zfun, blocks)
    nll = head.row_sum(lse - zy) / np.maximum(head.counts, 1.0)
    return nll, head.counts.astype(np.int64)


def antibody_weights(nll_c, nll_r, *, tau=1.0):
    """``w = softmax((nll_r - nll_c) / tau)`` over the batch (B,) (code: tau = 1; no gradient).

    ``s_i = nll_r_i - nll_c_i`` is the length-normalised ``log pi(y_i|x) - log pi(y_r|x)``: a
    sample the model prefers to comply with (harmful-looking) gets a small weight."""
    nll_c = V.host_array(nll_c, "nll_c")
    nll_r = V.host_array(nll_r, "nll_r")
    _, tau = V.antibody_weights_args(nll_c, nll_r, tau)
    s = (np.asarray(nll_r, dtype=np.float64) - np.asarray(nll_c, dtype=np.float64)) / tau
    e = np.exp(s - s.max())
    return e / e.sum()


def _weighted(H, W, labels, w, b, ignore_index, variant, token_chunk, vocab_chunk):
    head, blocks, zfun, Hh = _head(H, W, labels, b, ignore_index, token_chunk, vocab_chunk)
    variant = V.antibody_ce_variant(variant)
    w = V.host_array(w, "w")
    V.antibody_sample_weights(w, head.shape.R, Hh)
    w = np.asarray(w, dtype=np.float64)
    if variant == "code":
        per_row = w / max(float(w @ head.counts), 1.0)
    else:
        per_row = w / np.maximum(head.counts, 1.0)
    lse, zy = _P._lse_zy(head, zfun, blocks)
    c = -per_row[head.rows]                              # dL/dlogp per active token
    loss = float(c @ (zy - lse)) if head.n else 0.0
    return head, blocks, zfun, lse, c, loss


def weighted_token_ce(H, W, labels, w, b=None, *, ignore_index=-100, variant="code",
                      token_chunk=None, vocab_chunk=None):
    """Weighted token cross-entropy (Python float).

    code:  ``L = sum_i w_i sum_t m_it CE_it / max(sum_i w_i N_i, 1)`` (w-weighted token mean);
    paper: ``L = sum_i w_i sum_t m_it CE_it / max(N_i, 1)`` (reconstructed)."""
    return _weighted(H, W, labels, w, b, ignore_index, variant, token_chunk, vocab_chunk)[-1]


def weighted_token_ce_grad(H, W, labels, w, b=None, *, ignore_index=-100, variant="code",
                           token_chunk=None, vocab_chunk=None):
    """``(L, dH (B, T, d), dW (V, d), db (V,) or None)`` of :func:`weighted_token_ce` (w held
    constant): ``G_k = c_k (e_{y_k} - softmax(z_k))`` per active token (0 at ignored ones),
    ``dH = G W``, ``dW = G^T H``, ``db = sum G``."""
    head, blocks, zfun, lse, c, loss = _weighted(H, W, labels, w, b, ignore_index, variant,
                                                 token_chunk, vocab_chunk)
    dHc, dW, db = _P._backward(head, zfun, lse, c, blocks, W_dH=head.W)
    return loss, head.full_dH(dHc), dW, (db if head.b is not None else None)
