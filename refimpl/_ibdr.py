r"""IBDR: interactive Bayesian distributional robustness for particle ensembles, the float64
NumPy reference (re-exported by :mod:`refimpl.safety_ensembles`).

Paper: Pham, Truong, Tran, Nguyen, Phung, Le, "Promoting Ensemble Diversity with Interactive
Bayesian Distributional Robustness for Fine-tuning Foundation Models", arXiv 2506.07247
(ICML 2025). Official code: ``ngocquanofficial/DRO`` — ``src/model.py @58efd5f`` (the loss and
the step, branch ``optimizer == "dro"``) with ``src/utils.py @9026ccc`` (``DRO.step1(lamda)``,
``euclid_distance(.., bound)``, ``log_det``), configs ``configs/dro/<task>.yaml`` (``distance:
euclid``, ``bound: 0.03``, ``num_particles: 4``). The spec (``specs/safety_ensembles.md`` Part B)
records that behaviour; both files were also read through the code index while writing this
module, which confirmed: ``shared_step`` (CE of the mean logits ``pred_`` by
``SoftTargetCrossEntropy`` + ``alpha_div * (-log_det(y, softmax(pred), K))``), ``log_det`` (a loop
over the batch: mask ``~y_onehot.bool()``, ``Q / torch.norm(Q, dim=1)``, ``torch.logdet(G + 1e-7
I)``, mean), ``torch.nn.utils.clip_grad_norm_(net.parameters(), clip)`` before ``DRO.step1``
(``p += p.grad / (2 lamda)``), ``euclid_distance`` (tau = 0.01) and the clamp of lamda to
[0.5, 5] with the current learning rate. The default of every function is the code's;
``variant="paper"`` is the paper's written form where it differs; "reconstructed" marks our
choices (each says what to check).

Set-up (spec B.1): K particles (LoRA adapters + heads on a frozen ViT), each giving logits
F_k (B, C); targets are one-hot (mixup off).

Diversity (:func:`dpp_logdet_diversity`, code)::

    P_k  = softmax(F_k)                               (K, B, C)
    Q_kb = P_kb with the true class y_b removed        (K, B, C-1)
    qh_kb = Q_kb / max(||Q_kb||_2, 1e-12)              (the code: Q / ||Q||, no eps)
    M_b  = Qh_b Qh_b^T + jitter I                      (K x K Gram, jitter = 1e-7)
    LD   = (1/B) sum_b log det M_b                     (Cholesky: 2 sum log diag L_b)

The guard ``max(., 1e-12)`` (F.normalize's eps, contract choice) is ours: the code divides by the
norm itself, so it gives NaN where Q_kb = 0 (all wrong-class probabilities underflowed) and the two
differ only for ``||Q_kb|| < 1e-12``; the gradient below the guard follows F.normalize's clamp (no
projection term). LD is at most K log(1 + jitter) (orthonormal qh, Hadamard) and is log(K + jitter)
+ (K-1) log(jitter) for identical particles. C >= 3 is required: for C = 2 every qh is the scalar 1
and LD is constant. The Gram, its log-determinant and inverse are float64 in every backend (in
float32 a jitter of 1e-7 is at the rounding level of 1).

Loss (:func:`ibdr_loss`)::

    code:   Fbar = (1/K) sum_k F_k  (mean of the LOGITS);  CE = mean_b -log softmax(Fbar_b)[y_b]
            loss = CE - alpha_div LD(softmax(F))                     (alpha_div = 0.02)
    paper:  loss = (1/K) sum_k mean_b -log softmax(F_kb)[y_b] - alpha_div (1/B) sum_b det M_b

The paper's l_div is a DPP volume (det of the Gram of the normalised wrong-class probability
vectors) added to the mean per-particle loss; the reconstructed "paper" variant keeps the same
jitter (jitter -> 0 is the paper's form) and takes no log — check the sign and whether a log is
taken against the PDF (spec B.4).

Gradient (:func:`ibdr_loss_grad`, written from the math, checked by finite differences)::

    dCE/dF_k = (softmax(Fbar) - e_y) / (K B)                  (code)
    dCE/dF_k = (softmax(F_k)  - e_y) / (K B)                  (paper)
    dLD_b/dQh_b    = 2 M_b^{-1} Qh_b                          (rows k; M_b symmetric)
    d det M_b/dQh_b = 2 det(M_b) M_b^{-1} Qh_b                 (paper)
    g_Q = (g - (g . qh) qh) / ||Q||   if ||Q|| >= 1e-12, else g / 1e-12   (F.normalize's clamp:
                                      below eps the normaliser is a constant, no projection)
    g_P = g_Q scattered into length C with 0 at y_b
    dF_k = P_k * (g_P - <P_k, g_P>)                           (softmax VJP)
    dloss/dF = dCE/dF - (alpha_div / B) * (that chain of sum_b LD_b or sum_b det M_b)

One step (spec B.3; the model's forward/backward stay in the caller's loop):

1. ``g`` = gradient of the loss at theta; :func:`dro_ascent` clips its global norm to ``clip``
   with ``clip_grad_norm_``'s factor ``min(1, clip / (||g|| + 1e-6))`` (the code calls it on all
   of the network's parameters; ``clip`` = 0.12 per the spec's configs, 0.2 the class default)
   and returns ``theta' = theta + g_c / (2 lam)``,
   the first-order maximiser of ``L(theta') - lam ||theta' - theta||^2`` ("euclid" distance, the
   default). No division by ||g||, no sigma-noise on this path.
2. The caller evaluates loss' and Fbar' at theta', back-propagates, restores theta and takes its
   SGD-momentum step with that gradient.
3. Dual step in prediction space: :func:`prediction_distance` gives
   ``d_raw = mean_b ||softmax(Fbar'_b) - softmax(Fbar_b)||_2``; :func:`ibdr_dual_update`::

       code:  d~ = exp(max(0, d_raw - bound) / temp) d_raw
              lam <- clip(lam - lr (bound - d~), lo, hi)
              (lam_0 = 3, bound = 0.03 = the paper's rho, temp = 0.01, [lo, hi] = [0.5, 5],
              lr = the model's current learning rate)
       paper: lam <- max(0, lam - lr (bound - distance)),  distance = ||theta' - theta||^2 given by
              the caller (projected gradient step on lam >= 0; no barrier, no upper clip;
              reconstructed)

   Edge case of the code form (ours): when exp overflows (d~ = inf) the step is -inf for
   lr > 0 (lam -> hi) and 0 for lr = 0 (the code would compute 0 * inf = NaN).

Why the "fisher" distance is not implemented: the official code's symmetric-KL distance makes
``utils.DRO.step1`` step by ``e_w = 1 / (2 lamda p.grad)`` — the reciprocal of the gradient instead
of ``g / (2 lam)`` or a Fisher-preconditioned ``F^{-1} g / (2 lam)`` — which looks like a bug: it
is not the first-order maximiser of ``L(theta') - lam c(theta, theta')`` for any symmetric-KL cost
we could derive, it blows up where an entry of g is small (inf at g = 0), and the VTAB configs set
``distance: euclid`` (the class default is "fisher", so a run without the key would take that path;
its dual step then uses ``fisher_distance``, the symmetric KL of the softmaxes with a 1e-8 offset,
through the same barrier). Implementing it faithfully would reproduce a probable bug; "correcting"
it would need the Fisher information of each particle's predictive, which the array API here does
not receive. So there is no function for it: the ascent is :func:`dro_ascent` (euclid),
``ibdr_dual_update``'s ``distance`` is a number whatever produced it, and ``variant="fisher"`` is
refused with a ValueError naming the reason (the spec says NotImplementedError; the contract's
validators raise ValueError/TypeError only).

Posterior sampling of the paper (``theta_i = mu_i + sigma eps_i``, sigma = 0.1) is the caller's
(no function needed).

Everything computes in float64 (inputs are upcast); scalar results are Python floats, arrays are
float64 NumPy arrays. Inputs are validated by :mod:`refimpl._validate` (section "safety: IBDR",
the same messages on every backend).
"""

from __future__ import annotations

import math

import numpy as np

from refimpl import _validate as V

__all__ = [
    "dpp_logdet_diversity", "ibdr_loss", "ibdr_loss_grad", "dro_ascent", "prediction_distance",
    "ibdr_dual_update",
]

NORMALIZE_EPS = 1e-12   # F.normalize's default eps (reconstructed: the code calls F.normalize)
CLIP_EPS = 1e-6         # clip_grad_norm_'s 1e-6 in clip / (||g|| + 1e-6)


# --------------------------------------------------------------------------- helpers


def _f64(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


def _softmax(F: np.ndarray) -> np.ndarray:
    z = F - F.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _log_softmax(F: np.ndarray) -> np.ndarray:
    z = F - F.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def _wrong_class(P: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Q (K, B, C-1): each row of P (K, B, C) without its true class y_b (order kept)."""
    K, B, C = P.shape
    keep = np.ones((B, C), dtype=bool)
    keep[np.arange(B), y] = False
    return P[:, keep].reshape(K, B, C - 1)


def _scatter_wrong_class(G: np.ndarray, y: np.ndarray, C: int) -> np.ndarray:
    """The adjoint of :func:`_wrong_class`: G (K, B, C-1) -> (K, B, C) with 0 at y_b."""
    K, B, _ = G.shape
    keep = np.ones((B, C), dtype=bool)
    keep[np.arange(B), y] = False
    out = np.zeros((K, B, C))
    out[:, keep] = G.reshape(K, -1)
    return out


class _Gram:
    """Normalised wrong-class vectors and the per-row K x K Grams ``M_b`` with Cholesky."""

    def __init__(self, P: np.ndarray, y: np.ndarray, jitter: float):
        K, _, C = P.shape
        self.C, self.y = C, y
        Q = _wrong_class(P, y)                                   # (K, B, C-1)
        self.norm = np.sqrt((Q * Q).sum(axis=-1))                # (K, B)
        self.qh = Q / np.maximum(self.norm, NORMALIZE_EPS)[..., None]
        Qh = np.transpose(self.qh, (1, 0, 2))                    # (B, K, C-1)
        M = Qh @ np.transpose(Qh, (0, 2, 1)) + jitter * np.eye(K)
        try:
            L = np.linalg.cholesky(M)                            # (B, K, K), lower
        except np.linalg.LinAlgError:
            raise V.ibdr_gram_not_positive_definite(jitter) from None
        d = np.diagonal(L, axis1=1, axis2=2)
        self.logdet = 2.0 * np.log(d).sum(axis=-1)               # (B,)
        self._L = L

    def inv(self) -> np.ndarray:
        """M_b^{-1} (B, K, K) from the Cholesky factor: L^{-T} L^{-1}."""
        K = self._L.shape[-1]
        Linv = np.linalg.solve(self._L, np.broadcast_to(np.eye(K), self._L.shape))
        return np.transpose(Linv, (0, 2, 1)) @ Linv

    def vjp_probs(self, w: np.ndarray) -> np.ndarray:
        """d(sum_b w_b logdet M_b)/dP (K, B, C) for per-row weights w (B,)."""
        Qh = np.transpose(self.qh, (1, 0, 2))                    # (B, K, C-1)
        gQh = 2.0 * w[:, None, None] * (self.inv() @ Qh)         # (B, K, C-1)
        g = np.transpose(gQh, (1, 0, 2))                         # (K, B, C-1)
        # F.normalize: x / clamp_min(||x||, eps); the clamp has zero gradient below eps
        big = self.norm >= NORMALIZE_EPS
        proj = np.where(big[..., None], (g * self.qh).sum(axis=-1, keepdims=True) * self.qh, 0.0)
        gQ = (g - proj) / np.maximum(self.norm, NORMALIZE_EPS)[..., None]
        return _scatter_wrong_class(gQ, self.y, self.C)


def _softmax_vjp(P: np.ndarray, gP: np.ndarray) -> np.ndarray:
    return P * (gP - (P * gP).sum(axis=-1, keepdims=True))


# --------------------------------------------------------------------------- diversity


def dpp_logdet_diversity(probs, y, *, jitter=1e-7):
    """LD = (1/B) sum_b log det(Qh_b Qh_b^T + jitter I), Qh_b the K normalised wrong-class
    probability vectors of row b.

    probs: (K, B, C) float, >= 0, K >= 2, C >= 3; y: (B,) int in [0, C). Returns a Python float.
    """
    probs = V.host_array(probs, "probs")
    y = V.host_array(y, "y")
    _, _, _, jitter = V.ibdr_dpp_args(probs, y, jitter)
    G = _Gram(_f64(probs), y.astype(np.int64), jitter)
    return float(G.logdet.mean())


def _dpp_logdet_vjp(probs, y, cot, jitter=1e-7):
    """d(cot * LD)/dprobs (K, B, C) (the registry's VJP)."""
    probs = V.host_array(probs, "probs")
    y = V.host_array(y, "y")
    _, n_rows, _, jitter = V.ibdr_dpp_args(probs, y, jitter)
    G = _Gram(_f64(probs), y.astype(np.int64), jitter)
    return G.vjp_probs(np.full(n_rows, float(cot) / n_rows))


# --------------------------------------------------------------------------- loss


def _loss_and_grad(logits, y, alpha_div, jitter, variant, want_grad):
    logits = V.host_array(logits, "logits")
    y = V.host_array(y, "y")
    K, B, C, alpha_div, jitter, variant = V.ibdr_loss_args(logits, y, alpha_div, jitter, variant)
    F = _f64(logits)
    y = y.astype(np.int64)
    rows = np.arange(B)
    onehot = np.zeros((B, C))
    onehot[rows, y] = 1.0
    if variant == "code":
        Fbar = F.mean(axis=0)                                    # mean of the logits
        ce = float(-_log_softmax(Fbar)[rows, y].mean())          # SoftTargetCE on one-hot
        dF = np.broadcast_to((_softmax(Fbar) - onehot) / (K * B), F.shape).copy()
    else:
        ce = float(-_log_softmax(F)[:, rows, y].mean())          # mean_k mean_b CE(F_k)
        dF = (_softmax(F) - onehot) / (K * B)
    loss = ce
    if alpha_div != 0.0:
        P = _softmax(F)
        G = _Gram(P, y, jitter)
        if variant == "code":
            loss = ce - alpha_div * float(G.logdet.mean())
            w = np.ones(B)                                       # d logdet: 2 M^-1 Qh
        else:
            det = np.exp(G.logdet)
            loss = ce - alpha_div * float(det.mean())
            w = det                                              # d det: 2 det M^-1 Qh
        if want_grad:
            dF -= (alpha_div / B) * _softmax_vjp(P, G.vjp_probs(w))
    return (loss, dF) if want_grad else loss


def ibdr_loss(logits, y, *, alpha_div=0.02, jitter=1e-7, variant="code"):
    """IBDR's ensemble loss on particle logits (K, B, C) with labels y (B,).

    ``variant="code"``: ``CE(mean_k F_k) - alpha_div LD(softmax(F))``; ``"paper"``:
    ``mean_k CE(F_k) - alpha_div mean_b det M_b`` (reconstructed). ``alpha_div = 0`` needs only
    K >= 1 and C >= 2. Returns a Python float."""
    return _loss_and_grad(logits, y, alpha_div, jitter, variant, False)


def ibdr_loss_grad(logits, y, *, alpha_div=0.02, jitter=1e-7, variant="code"):
    """``(loss, dloss/dlogits (K, B, C))`` of :func:`ibdr_loss`, from the closed form."""
    return _loss_and_grad(logits, y, alpha_div, jitter, variant, True)


# --------------------------------------------------------------------------- the step


def dro_ascent(theta, g, lam, *, clip=0.12):
    """theta' = theta + g_c / (2 lam), g_c = g min(1, clip / (||g|| + 1e-6)).

    theta, g: flat float vectors (P,) of one dtype, g finite; lam > 0 (a Python number or a 0-d
    array); clip > 0. Returns a float64 array (P,)."""
    theta = V.host_array(theta, "theta")
    g = V.host_array(g, "g")
    _, lam, clip = V.ibdr_ascent_args(theta, g, lam, clip)
    g = _f64(g)
    norm = math.sqrt(float(np.dot(g, g)))
    g_c = g * min(1.0, clip / (norm + CLIP_EPS))
    return _f64(theta) + g_c / (2.0 * lam)


def prediction_distance(logits_bar_new, logits_bar_old):
    """d_raw = mean_b || softmax(new_b) - softmax(old_b) ||_2 for (B, C) logits. Python float."""
    new = V.host_array(logits_bar_new, "logits_bar_new")
    old = V.host_array(logits_bar_old, "logits_bar_old")
    V.ibdr_prediction_pair(new, old)
    D = _softmax(_f64(new)) - _softmax(_f64(old))
    return float(np.sqrt((D * D).sum(axis=-1)).mean())


def ibdr_dual_update(lam, distance, lr, *, bound=0.03, temp=0.01, lo=0.5, hi=5.0, variant="code"):
    """One dual step on lam (a Python float in, a Python float out).

    ``"code"``: ``d~ = exp(max(0, distance - bound) / temp) distance``,
    ``lam_new = clip(lam - lr (bound - d~), lo, hi)`` (``distance`` = :func:`prediction_distance`).
    ``"paper"``: ``lam_new = max(0, lam - lr (bound - distance))`` (``distance`` =
    ``||theta' - theta||^2``; lo, hi and temp unused; reconstructed). ``variant="fisher"`` is
    refused (see the module docstring)."""
    lam, distance, lr, bound, temp, lo, hi, variant = V.ibdr_dual_args(
        lam, distance, lr, bound, temp, lo, hi, variant)
    if variant == "paper":
        return max(0.0, lam - lr * (bound - distance))
    arg = max(0.0, distance - bound) / temp
    try:
        d_tilde = math.exp(arg) * distance
    except OverflowError:
        d_tilde = math.inf if distance > 0 else 0.0
    if lr == 0.0:
        step = 0.0                       # (the code: 0 * inf = NaN when d~ overflows)
    else:
        step = lr * (bound - d_tilde)    # -inf when d~ overflows
    return float(min(max(lam - step, lo), hi))
