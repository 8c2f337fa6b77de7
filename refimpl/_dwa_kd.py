r"""DWA-KD (cross-tokenizer distillation on top of DSKD's cross-model attention) — the float64
reference.

Papers: DSKD — Zhang et al., "Dual-Space Knowledge Distillation for Large Language Models"
(EMNLP 2024, arXiv 2406.17328); DWA-KD — Vu, Pham, Phi, Ngo, Dinh, Le (arXiv 2602.21669);
Soft-DTW divergence — Blondel, Mensch & Vert (arXiv 2010.08354, see :mod:`refimpl.softdtw`).
Official code (spec ``shared/specs/cross_tokenizer.md`` sec. 2-6): DSKD ``songmzhang/DSKD:
code/criterions/dual_space_kd_with_cross_model_attention.py``, ``various_divergence.py``;
DWA-KD ``voluyen/dwa_mta: code/criterions/dwa_kd.py @bb54c07``,
``code/criterions/various_divergence.py @4d06100``, ``scripts/gpt2/dwa_kd_gpt2_base.sh``.
The full texts of the papers are not checked: every equation below comes from the code.

Per-token divergences ``kd_divergence`` (``various_divergence.py``; no reduction)::

    p = softmax(z_s / tau),  q = softmax(z_t / tau [/ tea_temp if use_tea_temp])
    forward_kl         sum q (log q - log p)
    reverse_kl         sum p (log p - log q)
    skewed_forward_kl  sum q (log q - log(l q + (1-l) p))
    skewed_reverse_kl  sum p (log p - log((1-l) q + l p))                     l = skew
    js                 1/2 [sum q (log(q+e) - log(m+e)) + sum p (log(p+e) - log(m+e))],
                       m = (p+q)/2, e = 1e-9
    adaptive_kl        sort q ascending, gap = |q_sorted - p_sorted|, tail = cumsum(q_sorted)
                       <= alpha; g_head, g_tail = gap sums (detached);
                       (g_head fkl + g_tail rkl) / max(g_head + g_tail, 1e-9)

Like the code, a vocabulary *entry* whose logit is infinite contributes 0 to the sum (the code's
``masked_fill(inf_mask, 0)`` acts on the (..., V) terms before the sum; the mask is the student
logits for forward_kl, student or teacher for the others; the spec's "positions ... contribute
0" is this per-entry rule). Gradient w.r.t. the student logits (teacher side detached)::

    dz_s = p * (g - <p, g>) / tau,  g = df/dp:
    fkl  dz = (p - q) / tau                      rkl  g = log p - log q + 1
    sfkl g = -(1-l) q / m_s                      srkl g = log p + 1 - log m_s - l p / m_s
    js   g = 1/2 [log(p+e) + p/(p+e) - log(m+e) - (p+q)/(2(m+e))]
    adaptive: the detached-weight combination of the fkl and rkl gradients.

``kd_divergence_grad`` is defined for finite logits.

Token weights and gate (``dwa_kd.py`` ``compute_dual_space_kd_loss_with_cma``; tau = 1,
full vocabulary, detached)::

    H_i = -sum_v p log(p + 1e-9);  w^S_i = n_row H_i mu_i / (sum_k H_k mu_k + 1e-9),
    n_row = max(#valid in the row, 1)                               (entropy_weights)
    c_j = clip(1 - H^T_j / (log V_T + 1e-9), 0, 1);  w^T_j = m_row c_j nu_j / (sum c nu + 1e-9)
                                                                    (certainty_weights)
    g_i = max_v softmax(z^t2s_i)_v * min(1, (step+1)/warmup) * mu_i  (kd_gate; warmup 0 = off)

Quirk kept: the 1e-9 terms make a uniform teacher row certainty ~5e-9, not 0, so a row of only
uniform positions still normalises to w^T ~ 0.96 (V = 13, 5 positions).

DSKD cross-model attention ``cma_align`` (sec. 2; ``proj[k] = (weight (out, in), bias)`` as
torch ``nn.Linear``; std = one unbiased scalar over the *whole* batch tensor, padding
included)::

    q_i = P_query([e_s_in ; e_s_tgt]_i),   k_j = [e_t_in ; e_t_tgt]_j / std([e_t_in ; e_t_tgt])
    v^t2s_j = P_t2s(H_t,j / std(H_t) + e_t_tgt,j / std(e_t_tgt)),   v^s2t_i = P_s2t(H_s,i)
    a_ij = q_i . k_j / sqrt(2 d_t) - 1e5 (1 - mu_i nu_j)
    A_t2s = softmax_j(a) (N', M'),  A_s2t = softmax_i(a)^T (M', N')
    z_t2s = (A_t2s v^t2s) W_s^T,  z_s2t = (A_s2t v^s2t) W_t^T

Soft band ``cma_band_penalty`` (``dwa_kd.py`` ``_calculate_alignment_loss``, 0-based i, j)::

    Ab_ij = (A_ij + 1e-9) / (sum_j A_ij + 1e-9),  h_i = -sum_j Ab_ij log Ab_ij
    c_i = alpha sum_j j Ab_ij + (1 - alpha) i m / n,  w_i = w0 + kappa h_i
    P_ij = rho 1[|j - c_i| > w_i]

Sequence level ``dwa_dtw_loss`` (``compute_dtw_loss``): per example b, gather positions S_b of X
and T_b of Y, ``value = sum_b D_gamma(X[b, S_b], Y[b, T_b]; P_b)`` with the cosine cost and the
penalty on the cross term only (:func:`refimpl.softdtw.soft_dtw_divergence`); empty pairs are
skipped (0). ``positions="mask"`` (**default, reconstructed** — the evident intent: the masked,
response positions) gathers ``S_b = {i: mu_bi}``; ``positions="prefix"`` reproduces the official
code, which takes the first n_b = |S_b| positions (``[:n_valid]``: mostly prompt positions with
right padding). The band block ``A[b][S_b x T_b]`` is sliced by the same rule; the band is
used when ``band`` is true, A is given and ``w0 > 0`` (the code's condition
``dtw_band_width > 0``). A is detached in the code (``self.last_align = t2s_weight.detach()``),
and P is piecewise constant in A anyway, so ``dwa_dtw_loss_grad`` returns gradients w.r.t. X and
Y only: ``dX[b, S_b], dY[b, T_b]`` = the Soft-DTW divergence gradient chained through the
cosine cost (:func:`refimpl.softdtw.soft_dtw_divergence_grad`), zero elsewhere.
``dwa_gamma(t) = g0 + (g1 - g0) min(1, (t+1)/T_g)`` (``steps = 0``: constant g0).

Whole loss ``dwa_kd_loss`` (sec. 4-6; ``dwa_kd.py`` ``forward``)::

    CE = sum_i mu_i (-log softmax(z_s,i)[y_i]),  L_t2s_ce = sum_i mu_i (-log softmax(z^t2s_i)[y_i])
    dwa:  L_t2s_kd = sum_i w^S_i g_i Div(z_s,i, sg z^t2s_i)  (use_tea_temp, tea_temp = 1)
          L_s2t_kd = sum_j w^T_j nu_j KL(softmax(z_t,j/tau) || softmax(z^s2t_j/tau))
    dskd: L_t2s_kd = sum_i mu_i 1[argmax z^t2s_i = y_i] Div(...),  L_s2t_kd = sum_j nu_j KL(...)
    KD = L_t2s_ce + L_t2s_kd + L_s2t_kd
    L_DTW = dwa_dtw_loss(e_s_tgt, P_e(e_t_tgt)) + dwa_dtw_loss(H_s, P_t2s(H_t)),
            gamma = dwa_gamma(step, gamma0), band from A_t2s
    loss = (r_ce CE + r_kd KD + r_dtw L_DTW) / N_tok,   N_tok = max(sum mu, 1)

``P_e = proj["dtw_embed_t2s"]`` (d_t -> d_s) is **reconstructed** (its config entry was not
available). Detached in the code: the embeddings entering CMA, the teacher side everywhere, the
heads W_s/W_t in CMA, z^t2s inside Div, the weights/gate, A in the band; *not* detached:
e_s_tgt in the ``emb`` DTW layer (the gradient reaches E_S). ``variant="dskd"`` keeps the DTW
term as set by ``rates`` (pass ``rates=(0.5, 0.5, 0.0)`` for plain DSKD). ``N_tok`` is the
student's valid-target count of the given batch (the code's ``batch_denom``, the global count
of the micro-batch share). ``kind="adaptive_kl"`` is refused here (the loss has no
``adaptive_alpha`` argument, and the script value is unknown).

Everything computes in float64 (inputs are upcast) and returns float64.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import log_softmax, softmax

from refimpl import _validate as V
from refimpl.softdtw import soft_dtw_divergence, soft_dtw_divergence_grad

__all__ = [
    "kd_divergence", "kd_divergence_grad", "entropy_weights", "certainty_weights", "kd_gate",
    "cma_align", "cma_band_penalty", "dwa_gamma", "dwa_dtw_loss", "dwa_dtw_loss_grad",
    "dwa_kd_loss",
]

ENT_EPS = 1e-9       # entropy log(p + eps), weight normalisers, band normalisation
JS_EPS = 1e-9
ADAPTIVE_EPS = 1e-9  # clamp of g_head + g_tail
MASK_FILL = 1e5      # attention logit offset of masked (query, key) pairs
IGNORE = -100


# --------------------------------------------------------------------------- divergences


def _f64(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


def _dists(z_s, z_t, a: V.KdArgs):
    """Scaled logits, probabilities and log-probabilities of student (p) and teacher (q)."""
    zs = _f64(z_s) / a.tau
    zt = _f64(z_t) / a.tau
    if a.use_tea_temp:
        zt = zt / a.tea_temp
    with np.errstate(invalid="ignore", divide="ignore"):
        logp, logq = log_softmax(zs, axis=-1), log_softmax(zt, axis=-1)
    return zs, zt, np.exp(logp), logp, np.exp(logq), logq


def _masked_sum(terms, inf_mask):
    with np.errstate(invalid="ignore"):
        return np.where(inf_mask, 0.0, terms).sum(-1)


def _adaptive_weights(p, q, alpha):
    """Detached ``(g_head, g_tail) / max(g_head + g_tail, 1e-9)`` of the adaptive KL."""
    order = np.argsort(q, axis=-1, kind="stable")
    qs = np.take_along_axis(q, order, -1)
    ps = np.take_along_axis(p, order, -1)
    gap = np.abs(qs - ps)
    tail = np.cumsum(qs, axis=-1) <= alpha
    g_head = np.where(tail, 0.0, gap).sum(-1)
    g_tail = np.where(tail, gap, 0.0).sum(-1)
    denom = np.maximum(g_head + g_tail, ADAPTIVE_EPS)
    return g_head / denom, g_tail / denom


def _div_terms(kind, zs, zt, p, logp, q, logq, skew):
    """Per-entry terms of one kind, before the infinite-entry mask and the vocabulary sum."""
    l = skew
    with np.errstate(invalid="ignore", divide="ignore"):
        if kind == "forward_kl":
            return q * (logq - logp), np.isinf(zs)
        both = np.isinf(zs) | np.isinf(zt)
        if kind == "reverse_kl":
            return p * (logp - logq), both
        if kind == "skewed_forward_kl":
            return q * (logq - np.log(l * q + (1 - l) * p)), both
        if kind == "skewed_reverse_kl":
            return p * (logp - np.log((1 - l) * q + l * p)), both
        if kind == "js":
            m = (p + q) / 2
            lm = np.log(m + JS_EPS)
            return 0.5 * (q * (np.log(q + JS_EPS) - lm) + p * (np.log(p + JS_EPS) - lm)), both
    raise AssertionError(kind)


def _divergence(z_s, z_t, a: V.KdArgs):
    zs, zt, p, logp, q, logq = _dists(z_s, z_t, a)
    if a.kind == "adaptive_kl":
        wh, wt = _adaptive_weights(p, q, a.adaptive_alpha)
        fkl = _masked_sum(*_div_terms("forward_kl", zs, zt, p, logp, q, logq, a.skew))
        rkl = _masked_sum(*_div_terms("reverse_kl", zs, zt, p, logp, q, logq, a.skew))
        return wh * fkl + wt * rkl
    return _masked_sum(*_div_terms(a.kind, zs, zt, p, logp, q, logq, a.skew))


def _dfdp(kind, p, logp, q, logq, skew):
    """``g = df/dp`` (q fixed) for the kinds with a softmax chain ``dz = p (g - <p,g>) / tau``."""
    l = skew
    if kind == "reverse_kl":
        return logp - logq + 1.0
    if kind == "skewed_forward_kl":
        ms = l * q + (1 - l) * p
        return -(1 - l) * q / ms
    if kind == "skewed_reverse_kl":
        ms = (1 - l) * q + l * p
        return logp + 1.0 - np.log(ms) - l * p / ms
    if kind == "js":
        e = JS_EPS
        m = (p + q) / 2
        return 0.5 * (np.log(p + e) + p / (p + e) - np.log(m + e) - (p + q) / (2 * (m + e)))
    raise AssertionError(kind)


def _dz(kind, p, logp, q, logq, skew, tau):
    if kind == "forward_kl":
        return (p - q) / tau
    g = _dfdp(kind, p, logp, q, logq, skew)
    return p * (g - (p * g).sum(-1, keepdims=True)) / tau


def kd_divergence(z_s, z_t, *, kind="forward_kl", tau=2.0, tea_temp=1.0, use_tea_temp=False,
                  skew=0.1, adaptive_alpha=None):
    """Per-token divergence between student logits ``z_s`` and (detached) teacher logits
    ``z_t`` of shape (..., V); returns (...) — no reduction, no tau^2 factor."""
    z_s, z_t = V.host_array(z_s, "z_s"), V.host_array(z_t, "z_t")
    a = V.kd_args(z_s, z_t, kind, tau, tea_temp, use_tea_temp, skew, adaptive_alpha)
    return _divergence(z_s, z_t, a)


def kd_divergence_grad(z_s, z_t, *, kind="forward_kl", tau=2.0, tea_temp=1.0,
                       use_tea_temp=False, skew=0.1, adaptive_alpha=None):
    """``(div, dz_s)``: the divergence and its gradient w.r.t. ``z_s`` (finite logits)."""
    z_s, z_t = V.host_array(z_s, "z_s"), V.host_array(z_t, "z_t")
    a = V.kd_args(z_s, z_t, kind, tau, tea_temp, use_tea_temp, skew, adaptive_alpha)
    div = _divergence(z_s, z_t, a)
    _, _, p, logp, q, logq = _dists(z_s, z_t, a)
    if a.kind == "adaptive_kl":
        wh, wt = _adaptive_weights(p, q, a.adaptive_alpha)
        dz = (wh[..., None] * _dz("forward_kl", p, logp, q, logq, a.skew, a.tau)
              + wt[..., None] * _dz("reverse_kl", p, logp, q, logq, a.skew, a.tau))
    else:
        dz = _dz(a.kind, p, logp, q, logq, a.skew, a.tau)
    return div, dz


# --------------------------------------------------------------------------- weights and gate


def _entropy(z):
    """``-sum_v p log(p + 1e-9)`` at tau = 1."""
    p = softmax(_f64(z), axis=-1)
    return -(p * np.log(p + ENT_EPS)).sum(-1)


def _row_normalise(w, mask):
    """``n_row w mu / (sum w mu + 1e-9)`` per row, n_row = max(#valid, 1)."""
    w = w * mask
    n_row = np.maximum(mask.sum(-1, keepdims=True), 1.0)
    return w * (n_row / (w.sum(-1, keepdims=True) + ENT_EPS))


def entropy_weights(z_s, mask):
    """Student-uncertainty weights (B, N'): entropy at tau = 1, mean 1 over each row's valid
    positions (0 elsewhere)."""
    z_s = V.host_array(z_s, "z_s")
    mu = V.logits_and_mask(z_s, mask, "z_s", "mask").astype(np.float64)
    return _row_normalise(_entropy(z_s), mu)


def certainty_weights(z_t, mask):
    """Teacher-confidence weights (B, M'): ``clip(1 - H / (log V_T + 1e-9), 0, 1)``, then
    normalised to mean ~1 over each row's valid positions."""
    z_t = V.host_array(z_t, "z_t")
    nu = V.logits_and_mask(z_t, mask, "z_t", "mask").astype(np.float64)
    c = np.clip(1.0 - _entropy(z_t) / (math.log(z_t.shape[-1]) + ENT_EPS), 0.0, 1.0)
    return _row_normalise(c, nu)


def _warmup(step: int, warmup: int) -> float:
    return min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0


def kd_gate(z_t2s, mask, step, *, warmup=300):
    """Soft gate (B, N'): ``max_v softmax(z_t2s)_v * min(1, (step+1)/warmup) * mu``."""
    z_t2s = V.host_array(z_t2s, "z_t2s")
    mu = V.logits_and_mask(z_t2s, mask, "z_t2s", "mask").astype(np.float64)
    step, warmup = V.nonneg_int(step, "step"), V.nonneg_int(warmup, "warmup")
    return softmax(_f64(z_t2s), axis=-1).max(-1) * _warmup(step, warmup) * mu


# --------------------------------------------------------------------------- cross-model attention


def _linear(x, pair):
    weight, bias = pair
    return x @ _f64(weight).T + _f64(bias)


def _std(x):
    """One unbiased standard deviation over the whole tensor (torch ``Tensor.std()``)."""
    return np.std(x, ddof=1)


def cma_align(e_s_in, e_s_tgt, e_t_in, e_t_tgt, H_s, H_t, mask_s, mask_t, proj, W_s, W_t):
    """DSKD cross-model attention; returns ``dict(A_t2s (B,N',M'), A_s2t (B,M',N'),
    z_t2s (B,N',V_S), z_s2t (B,M',V_T))``. ``proj``: {"query", "t2s", "s2t"} -> (weight, bias)."""
    args = [V.host_array(x, n) for x, n in ((e_s_in, "e_s_in"), (e_s_tgt, "e_s_tgt"),
                                            (e_t_in, "e_t_in"), (e_t_tgt, "e_t_tgt"),
                                            (H_s, "H_s"), (H_t, "H_t"), (W_s, "W_s"), (W_t, "W_t"))]
    e_s_in, e_s_tgt, e_t_in, e_t_tgt, H_s, H_t, W_s, W_t = args
    shape, mu, nu = V.cma_args(e_s_in, e_s_tgt, e_t_in, e_t_tgt, H_s, H_t, mask_s, mask_t, proj,
                               W_s, W_t)
    s_index = np.concatenate([_f64(e_s_in), _f64(e_s_tgt)], -1)
    t_index = np.concatenate([_f64(e_t_in), _f64(e_t_tgt)], -1)
    e_t_tgt, H_s, H_t = _f64(e_t_tgt), _f64(H_s), _f64(H_t)
    q = _linear(s_index, proj["query"])                                       # (B, N', 2 d_t)
    k = t_index / _std(t_index)                                               # (B, M', 2 d_t)
    v_t2s = _linear(H_t / _std(H_t) + e_t_tgt / _std(e_t_tgt), proj["t2s"])  # (B, M', d_s)
    v_s2t = _linear(H_s, proj["s2t"])                                         # (B, N', d_t)
    pair = mu[:, :, None].astype(np.float64) * nu[:, None, :]
    a = q @ np.swapaxes(k, -1, -2) / math.sqrt(2 * shape.d_t) - MASK_FILL * (1.0 - pair)
    A_t2s = softmax(a, axis=-1)
    A_s2t = np.swapaxes(softmax(a, axis=-2), -1, -2)
    return dict(A_t2s=A_t2s, A_s2t=A_s2t,
                z_t2s=(A_t2s @ v_t2s) @ _f64(W_s).T,
                z_s2t=(A_s2t @ v_s2t) @ _f64(W_t).T)


# --------------------------------------------------------------------------- sequence level


def _band(A, alpha, w0, kappa, rho):
    """The band penalty of one or more (n, m) attention blocks (vectorised over rows)."""
    A = _f64(A)
    n, m = A.shape[-2:]
    Ab = (A + ENT_EPS) / (A.sum(-1, keepdims=True) + ENT_EPS)
    h = -(Ab * np.log(Ab)).sum(-1)
    j = np.arange(m, dtype=np.float64)
    i = np.arange(n, dtype=np.float64)
    centre = alpha * (Ab * j).sum(-1) + (1.0 - alpha) * i * (m / n)
    width = w0 + kappa * h
    return rho * (np.abs(j - centre[..., None]) > width[..., None]).astype(np.float64)


def cma_band_penalty(A, *, alpha=0.7, w0=5.0, kappa=2.0, rho=1.0):
    """Soft band ``P = rho 1[|j - c_i| > w_i]`` (n, m) (or (..., n, m)) from an attention
    block A, normalised per row; entries are 0 or rho."""
    A = V.host_array(A, "A")
    V.band_attention(A)
    alpha, w0, kappa, rho = V.band_args(alpha, w0, kappa, rho)
    return _band(A, alpha, w0, kappa, rho)


def dwa_gamma(step, *, gamma0=2.0, gamma1=0.8, steps=3570):
    """Linear gamma schedule ``g0 + (g1 - g0) min(1, (step+1)/steps)`` (steps = 0: g0)."""
    step, gamma0, gamma1, steps = V.gamma_schedule(step, gamma0, gamma1, steps)
    if steps == 0:
        return gamma0
    return gamma0 + (gamma1 - gamma0) * min(1.0, (step + 1) / steps)


def _positions(mask_row: np.ndarray, rule: str) -> np.ndarray:
    """Indices of the positions a pair uses: the masked ones, or the first n (official)."""
    if rule == "mask":
        return np.flatnonzero(mask_row)
    return np.arange(int(mask_row.sum()))


def _dwa_dtw(X, Y, mask_s, mask_t, gamma, A, positions, band, alpha, w0, kappa, rho, need_grad):
    X, Y = V.host_array(X, "X"), V.host_array(Y, "Y")
    A = None if A is None else V.host_array(A, "A")
    a = V.dwa_dtw_args(X, Y, mask_s, mask_t, gamma, A, positions, band, alpha, w0, kappa, rho)
    X, Y = _f64(X), _f64(Y)
    dX, dY = np.zeros_like(X), np.zeros_like(Y)
    value = 0.0
    for b in range(a.B):
        si, tj = _positions(a.mask_s[b], a.positions), _positions(a.mask_t[b], a.positions)
        if si.size == 0 or tj.size == 0:          # the code skips empty pairs
            continue
        P = _band(A[b][np.ix_(si, tj)], *a.band) if a.use_band else None
        x, y = X[b, si], Y[b, tj]
        if need_grad:
            v, dx, dy = soft_dtw_divergence_grad(x, y, a.gamma, kind="cosine", penalty=P)
            dX[b, si] += dx
            dY[b, tj] += dy
        else:
            v = soft_dtw_divergence(x, y, a.gamma, kind="cosine", penalty=P)
        value += float(v)
    return np.asarray(value), dX, dY


def dwa_dtw_loss(X, Y, mask_s, mask_t, gamma, A=None, *, positions="mask", band=True,
                 alpha=0.7, w0=5.0, kappa=2.0, rho=1.0):
    """``sum_b D_gamma(X[b, S_b], Y[b, T_b]; P_b)`` (cosine cost, band penalty from A) — a
    0-d float64 array. X (B, N', d), Y (B, M', d), A (B, N', M') or None."""
    return _dwa_dtw(X, Y, mask_s, mask_t, gamma, A, positions, band, alpha, w0, kappa, rho,
                    need_grad=False)[0]


def dwa_dtw_loss_grad(X, Y, mask_s, mask_t, gamma, A=None, *, positions="mask", band=True,
                      alpha=0.7, w0=5.0, kappa=2.0, rho=1.0):
    """``(value, dX, dY)``; A (and so the penalty) is detached, unused positions get 0."""
    return _dwa_dtw(X, Y, mask_s, mask_t, gamma, A, positions, band, alpha, w0, kappa, rho,
                    need_grad=True)


# --------------------------------------------------------------------------- the whole loss


def _nll(z, y, mask):
    """``sum mask * (-log softmax(z)[y])`` with y already cleaned (0 where masked)."""
    lp = log_softmax(_f64(z), axis=-1)
    return float(-(np.take_along_axis(lp, y[..., None], -1)[..., 0] * mask).sum())


def dwa_kd_loss(z_s, z_t, labels_s, labels_t, H_s, H_t, e_s_in, e_s_tgt, e_t_in, e_t_tgt, proj,
                W_s, W_t, step, *, rates=(0.5, 0.5, 0.2), tau=2.0, kind="skewed_reverse_kl",
                variant="dwa", positions="mask", gamma0=2.0):
    """The DWA-KD loss of one micro-batch: ``(loss, parts)``.

    ``z_s`` (B, N', V_S) / ``z_t`` (B, M', V_T) logits, ``labels_*`` shifted targets (-100 on
    prompt and padding), ``H_*`` last hidden states, ``e_*`` embeddings of the (0-filled) input
    and target ids, ``proj`` {"query", "t2s", "s2t", "dtw_embed_t2s"} -> (weight, bias), heads
    ``W_s`` (V_S, d_s), ``W_t`` (V_T, d_t). ``parts``: ce, t2s_ce, t2s_kd, s2t_kd, kd, dtw_emb,
    dtw_hid, dtw, gamma, n_tok (unscaled sums; ``loss`` is the weighted sum / n_tok)."""
    z_s, z_t = V.host_array(z_s, "z_s"), V.host_array(z_t, "z_t")
    labels_s, labels_t = V.host_array(labels_s, "labels_s"), V.host_array(labels_t, "labels_t")
    H_s, H_t = V.host_array(H_s, "H_s"), V.host_array(H_t, "H_t")
    W_s, W_t = V.host_array(W_s, "W_s"), V.host_array(W_t, "W_t")
    B, N, Vs, M, Vt, ys, yt, (r_ce, r_kd, r_dtw), variant, step = V.dwa_kd_args(
        z_s, z_t, labels_s, labels_t, H_s, H_t, W_s, W_t, rates, variant, kind, step)
    mu, nu = ys != IGNORE, yt != IGNORE
    cma = cma_align(e_s_in, e_s_tgt, e_t_in, e_t_tgt, H_s, H_t, mu, nu, proj, W_s, W_t)
    ys0 = np.where(mu, ys, 0)
    fmu, fnu = mu.astype(np.float64), nu.astype(np.float64)
    z_t2s, z_s2t = cma["z_t2s"], cma["z_s2t"]

    ce = _nll(z_s, ys0, fmu)
    t2s_ce = _nll(z_t2s, ys0, fmu)
    div = kd_divergence(_f64(z_s), z_t2s, kind=kind, tau=tau, tea_temp=1.0, use_tea_temp=True)
    s2t_div = kd_divergence(z_s2t, _f64(z_t), kind="forward_kl", tau=tau)
    if variant == "dwa":
        t2s_kd = float((entropy_weights(z_s, mu) * kd_gate(z_t2s, mu, step) * div).sum())
        s2t_kd = float((certainty_weights(z_t, nu) * fnu * s2t_div).sum())
    else:
        hit = (z_t2s.argmax(-1) == ys0) & mu
        t2s_kd = float((hit * div).sum())
        s2t_kd = float((fnu * s2t_div).sum())
    kd = t2s_ce + t2s_kd + s2t_kd

    gamma = dwa_gamma(step, gamma0=gamma0)
    dtw_emb = dtw_hid = 0.0
    if r_dtw > 0:
        V.projector(proj, "dtw_embed_t2s", np.shape(e_t_tgt)[-1], np.shape(e_s_tgt)[-1])
        A = cma["A_t2s"]
        y_emb = _linear(_f64(e_t_tgt), proj["dtw_embed_t2s"])
        y_hid = _linear(_f64(H_t), proj["t2s"])
        dtw_emb = float(dwa_dtw_loss(_f64(e_s_tgt), y_emb, mu, nu, gamma, A, positions=positions))
        dtw_hid = float(dwa_dtw_loss(_f64(H_s), y_hid, mu, nu, gamma, A, positions=positions))
    dtw = dtw_emb + dtw_hid
    n_tok = max(float(mu.sum()), 1.0)
    loss = (r_ce * ce + r_kd * kd + r_dtw * dtw) / n_tok
    parts = dict(ce=ce, t2s_ce=t2s_ce, t2s_kd=t2s_kd, s2t_kd=s2t_kd, kd=kd, dtw_emb=dtw_emb,
                 dtw_hid=dtw_hid, dtw=dtw, gamma=gamma, n_tok=n_tok)
    return np.asarray(loss), parts
