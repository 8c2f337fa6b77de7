r"""CTPD span alignment and teacher-anchored DPO, and TIS-DPO — the float64 reference.

Papers: CTPD — Nguyen, Phi, Nguyen, Ngo, Le, Nguyen, "CTPD: Cross Tokenizer Preference
Distillation" (arXiv 2601.11865, AAAI 2026); TIS-DPO — Liu et al., "TIS-DPO: Token-level
Importance Sampling for Direct Preference Optimization" (arXiv 2410.04350, ICLR 2025).
Official code (``shared/specs/cross_tokenizer.md`` secs. 7-10): ``dinhtruongng/CTPD-2 @06ffd4e``
— ``src/prefkd/utils/parent_token_dict.py`` (``find_parent_token``), ``src/prefkd/weight.py``,
``src/prefkd/loss/loss.py`` (``get_ptoken_logps``, ``token_level_dpo_loss``, ``tisdpo_loss``,
``_get_batch_logps_tisdpo``), ``src/prefkd/trainers.py @2903a86`` (loss ``KD_tisdpo``),
``script/training/CTPD.sh``; TIS-DPO ``exlaw/TIS-DPO`` (bundled as ``baseline/TIS-DPO-main``).

Conventions: preference rows are stacked **chosen first** (R = 2B rows: row i chosen, row
B + i rejected of pair i), labels already shifted, loss = mean over pairs, as in
:mod:`refimpl.preference`. Both losses are evaluated by the one DPO formula
:func:`refimpl.preference._dpo` (sigmoid, no label smoothing).

1. Span alignment (``span_align``; host preprocessing). Each response is tokenised alone
   (no special tokens); token k of the student has character offsets (a_k, b_k), k = 1..K,
   the teacher's (a'_l, b'_l). Tokens without offset (``None``; the appended EOS) get
   segment id -1, as does every token the rule leaves unassigned.

   ``rule="official"`` reproduces ``find_parent_token`` literally (a flag: its quirks below
   make ``"ends"`` the default)::

       n = max(b_K, b'_L);  cnt[p] = #{student and teacher tokens starting at p};  cnt[n] = 2
       P = [0] + [b_k for k in student order if cnt[b_k] == 2];  span r = (P_{r-1}, P_r)
       membership, scanned per tokenisation over the spans in order: a token joins the current
       span while b <= span end; the token with b == span end closes the span; a token with
       b > span end is skipped (lost), and so is every later one that never meets an end.

   On contiguous offsets with positive widths (b_k = a_{k+1}, both ending at n) this is
   ``P = {0} u (ends(S) n ends(T))``: the finest partition both tokenisations refine.
   Quirks, reproduced: (i) gapped offsets (a ``Whitespace`` pre-tokenizer drops the spaces)
   only count a start, so word boundaries are missed and spans collapse (see the spec's
   "Unbelievable days follow the student." -> [0, 36), [36, 37)); (ii) a byte-level tokenizer
   gives every piece of a split multi-byte character that character's offsets, so cnt counts
   the same start twice and can put a boundary where the teacher has none, after which every
   teacher token is skipped (all -1); (iii) repeated boundaries give zero-width spans, and the
   code keys spans by ``(start, end)`` in a dict, so a repeated key keeps its first position
   but is re-emptied (tokens already filed under it are lost); (iv) an empty offset list
   raises in the code (``[-1]`` of an empty list): here zero spans and all -1.

   ``rule="ends"`` (ours, **default**): boundaries ``{0} u (ends(S) n ends(T)) u {n}``; token k belongs to
   the span r with ``P_{r-1} < b_k <= P_r`` (a zero-width token at 0 to the first span).
   Only ends are read, so gaps, duplicated pieces and one-character overlaps are harmless,
   and it equals the official rule on contiguous positive-width offsets.
   ``normalize_offsets=True`` first closes gaps (``a_k := b_{k-1}`` where ``a_k > b_{k-1}``,
   ``a_1 := 0``; the gap joins the following token): it repairs quirk (i) of the official rule
   and changes nothing for ``"ends"``.

2. Span sums (``span_sum``): ``l_r = sum_{k: seg_k = r} logp_k``; -1 contributes nothing.
   ``reduce="sum"`` (the code's default, ``average_log_prob=0``); ``"padded_mean"`` reproduces
   the code's average (``get_ptoken_logps``: ``torch.mean`` over the last axis of the -1-padded
   index tensor (B, R, W)): the sum divided by the padded width ``W``, taken here as the largest
   number of tokens in any span of the whole call (**reconstructed**: the collate function that
   pads the index tensor was not read; check that it pads to the batch maximum); ``"mean"``
   divides by the span's own token count (empty spans: 0) — ours.

3. Span weights (``weight.py``): ``w = k exp(mu clip(lp_pos - lp_neg, lo, hi))`` rounded half
   to even at ``decimals`` (k = 1, lo = -0.5, hi = 1.5, 2 decimals; mu = +1 chosen, -1
   rejected: chosen weights in [0.61, 4.48], rejected in [0.22, 1.65]).

4. Teacher-anchored DPO (CTPD, ``KD_tisdpo``)::

       Delta_i = sum_r w_ir (l^S_ir - l^T_ir)   (rows i, chosen first; padded spans have w = 0)
       d_i = Delta_{chosen i} - Delta_{rejected i},   loss = mean_i softplus(-beta d_i)
       rewards = beta Delta;   dL/dl^S_ir = w_ir dL/dDelta_i,  dL/dDelta = +-beta sig(-beta d)/B

   evaluated as ``_dpo(logp = sum_r w l^S, ref_logp = sum_r w l^T)`` (exact: ``_dpo``'s
   ``h`` and rewards are the same differences).

5. TIS-DPO (``tisdpo_loss``, ``_get_batch_logps_tisdpo``) on logits z (policy) and z'
   (reference), ``p = softmax(z)``, ``q = softmax(z')``::

       u_r = sum_t omega m (log p(y_t) - log q(y_t)),   K_r = sum_t omega m KL(p_t || q_t)
       token_level:  loss_i = -log sig(beta [(u_c - u_r) - alpha (K_c - K_r)]), rewards beta (u - K)
       otherwise:    loss_i = -log sig(beta (u_c - u_r)),                       rewards beta u

   evaluated as ``_dpo(logp = u - alpha K, ref_logp = 0)`` (``u`` alone without token_level).
   ``_dpo``'s rewards would be ``beta (u - alpha K)``; the code's ``beta (u - K)`` differ for
   alpha != 1, so they are formed here. Gradient (policy logits only; the reference is frozen)::

       dz_t = g_r omega m [(e_y - p) - alpha p * (log p - log q - KL_t)],  g_r = dL/dlogp_r

   The code takes ``log(softmax)`` (underflows to -inf); we use log-softmax (equal where finite).
   Its ``average_log_prob`` branch is not offered (the CTPD/TIS-DPO scripts leave it off).

Everything computes in float64 (inputs are upcast) and returns float64.
"""

from __future__ import annotations

import numpy as np
from scipy.special import log_softmax

from refimpl import _validate as V
from refimpl.preference import _dpo

__all__ = [
    "span_align", "span_sum", "span_weights", "ctpd_loss", "ctpd_loss_grad", "tis_dpo_loss",
    "tis_dpo_loss_grad",
]


# --------------------------------------------------------------------------- span alignment


def _normalize(offsets):
    """Close gaps: ``a_k := b_{k-1}`` where ``a_k > b_{k-1}`` (``b_0 = 0``)."""
    out, prev_end = [], 0
    for a, b in offsets:
        out.append((min(a, prev_end), b))
        prev_end = b
    return out


def _official(off_s, off_t):
    """``find_parent_token`` as written: ``(spans, seg_s, seg_t)`` over the given tokens."""
    n = max(off_s[-1][1], off_t[-1][1])
    cnt = np.zeros(n + 1, dtype=np.int64)
    for a, _ in off_s:
        cnt[a] += 1
    for a, _ in off_t:
        cnt[a] += 1
    cnt[n] = 2
    parent_index = [0]
    for _, b in off_s:
        if cnt[b] == 2:
            parent_index.append(b)
    parent = [(parent_index[i], parent_index[i + 1]) for i in range(len(parent_index) - 1)]

    def members(offsets):
        table, ind = {}, 0          # a dict keyed by (start, end), as the code
        for span in parent:
            table[span] = []
            while ind < len(offsets):
                if offsets[ind][1] <= span[1]:
                    table[span].append(ind)
                if offsets[ind][1] == span[1]:
                    ind += 1
                    break
                ind += 1
        return table

    table_s, table_t = members(off_s), members(off_t)
    spans = list(table_s)            # insertion order; both tables share the keys
    seg_s = np.full(len(off_s), -1, dtype=np.int64)
    seg_t = np.full(len(off_t), -1, dtype=np.int64)
    for r, span in enumerate(spans):
        seg_s[table_s[span]] = r
        seg_t[table_t[span]] = r
    return spans, seg_s, seg_t


def _ends(off_s, off_t):
    """Common-end boundaries; token k in the span r with ``P_{r-1} < b_k <= P_r``."""
    n = max(off_s[-1][1], off_t[-1][1])
    common = {b for _, b in off_s} & {b for _, b in off_t}
    P = sorted({0, n} | common)
    spans = [(P[r], P[r + 1]) for r in range(len(P) - 1)]
    ends_P = np.asarray(P[1:], dtype=np.int64)

    def segment(offsets):
        b = np.asarray([e for _, e in offsets], dtype=np.int64)
        return np.searchsorted(ends_P, b, side="left").astype(np.int64)

    return spans, segment(off_s), segment(off_t)


def span_align(offsets_s, offsets_t, *, rule="ends", normalize_offsets=False):
    """Aligned spans of two tokenisations of one response: ``(spans (R, 2), seg_s (K,),
    seg_t (L,))``, int64, ``seg`` in ``[0, R)`` or -1 (no offset / unassigned).

    ``offsets_*``: per token a ``(start, end)`` character pair, or ``None`` for a token without
    offset (the appended EOS). ``rule="ends"`` (default) uses the common token ends;
    ``"official"`` reproduces ``find_parent_token`` with its quirks (module docstring, item 1);
    the two agree on contiguous offsets."""
    rule = V.choice(rule, "rule", V.SPAN_RULES)
    off_s = V.span_offsets(offsets_s, "offsets_s")
    off_t = V.span_offsets(offsets_t, "offsets_t")
    idx_s = [k for k, o in enumerate(off_s) if o is not None]
    idx_t = [k for k, o in enumerate(off_t) if o is not None]
    seg_s = np.full(len(off_s), -1, dtype=np.int64)
    seg_t = np.full(len(off_t), -1, dtype=np.int64)
    tok_s = [off_s[k] for k in idx_s]
    tok_t = [off_t[k] for k in idx_t]
    if not tok_s or not tok_t or max(tok_s[-1][1], tok_t[-1][1]) == 0:
        return np.zeros((0, 2), dtype=np.int64), seg_s, seg_t       # an empty response
    if normalize_offsets:
        tok_s, tok_t = _normalize(tok_s), _normalize(tok_t)
    spans, s, t = (_official if rule == "official" else _ends)(tok_s, tok_t)
    seg_s[idx_s] = s
    seg_t[idx_t] = t
    return np.asarray(spans, dtype=np.int64).reshape(-1, 2), seg_s, seg_t


# --------------------------------------------------------------------------- span sums and weights


def _segments(token_logps, seg, num_spans):
    """Flattened ``(x (M, K) float64, seg (M, K), leading shape, R)``."""
    x = V.host_array(token_logps, "token_logps")
    V.float_array(x, "token_logps")
    sg, R = V.span_seg(V.host_array(seg, "seg"), tuple(x.shape), num_spans)
    lead = tuple(x.shape[:-1])
    K = int(x.shape[-1])
    x = np.asarray(x, dtype=np.float64).reshape(-1, K)
    sg = np.broadcast_to(np.asarray(sg, dtype=np.int64), lead + (K,)).reshape(-1, K)
    return x, sg, lead, R


def _span_scale(sg, R, reduce):
    """Per (row, span) factor applied to the span sums: 1, 1/count or 1/padded width."""
    M = sg.shape[0]
    counts = np.zeros((M, R))
    rows, cols = np.nonzero(sg >= 0)
    np.add.at(counts, (rows, sg[rows, cols]), 1.0)
    if reduce == "sum":
        return np.ones((M, R))
    if reduce == "mean":
        return np.where(counts > 0, 1.0 / np.maximum(counts, 1.0), 0.0)
    width = counts.max() if counts.size else 0.0          # padded_mean: the index tensor's width
    return np.full((M, R), 1.0 / max(width, 1.0))


def span_sum(token_logps, seg, num_spans, *, reduce="sum"):
    """Span log-probs ``(..., R)``: ``l_r = sum_{k: seg_k = r} token_logps_k`` (-1 ignored),
    scaled by ``reduce`` ("sum", "mean" = own count, "padded_mean" = the code's padded width).

    ``seg`` has the shape of ``token_logps`` (..., K) or (K,) (shared by every row)."""
    reduce = V.choice(reduce, "reduce", V.SPAN_REDUCES)
    x, sg, lead, R = _segments(token_logps, seg, num_spans)
    out = np.zeros((x.shape[0], R))
    rows, cols = np.nonzero(sg >= 0)
    np.add.at(out, (rows, sg[rows, cols]), x[rows, cols])
    return (out * _span_scale(sg, R, reduce)).reshape(lead + (R,))


def span_weights(lp_pos, lp_neg, mu, *, k=1.0, lo=-0.5, hi=1.5, decimals=2):
    """``w = k exp(mu clip(lp_pos - lp_neg, lo, hi))`` rounded half to even at ``decimals``
    (None: no rounding). ``mu`` is +1 (chosen) / -1 (rejected), a scalar or an array
    broadcasting against the log-probs (e.g. a (2B, 1) column)."""
    k, lo, hi, decimals = V.span_weight_args(k, lo, hi, decimals)
    lp_pos = V.host_array(lp_pos, "lp_pos")
    lp_neg = V.host_array(lp_neg, "lp_neg")
    V.span_logp_pair(lp_pos, lp_neg)
    mu = np.asarray(V.host_array(mu, "mu"), dtype=np.float64)
    try:
        np.broadcast_shapes(mu.shape, tuple(lp_pos.shape))
    except ValueError:
        raise ValueError(f"mu of shape {mu.shape} does not broadcast against lp_pos "
                         f"{tuple(lp_pos.shape)}") from None
    diff = np.asarray(lp_pos, dtype=np.float64) - np.asarray(lp_neg, dtype=np.float64)
    w = k * np.exp(mu * np.clip(diff, lo, hi))
    return w if decimals is None else np.round(w, decimals)   # numpy rounds half to even


# --------------------------------------------------------------------------- CTPD loss


def _ctpd(ellS, ellT, w, beta):
    ellS = V.host_array(ellS, "ellS")
    ellT = V.host_array(ellT, "ellT")
    w = V.host_array(w, "w")
    _, _, beta = V.ctpd_args(ellS, ellT, w, beta)
    w = np.asarray(w, dtype=np.float64)
    logp = (w * np.asarray(ellS, dtype=np.float64)).sum(axis=1)       # sum_r w l^S
    ref = (w * np.asarray(ellT, dtype=np.float64)).sum(axis=1)        # sum_r w l^T
    loss, cr, rr, dlogp = _dpo(logp, ref, beta, "sigmoid", 0.0)
    return float(loss), cr, rr, dlogp[:, None] * w


def ctpd_loss(ellS, ellT, w, beta=0.1):
    """Teacher-anchored DPO on span log-probs (2B, R), chosen first:
    ``(loss, rewards_w (B,), rewards_l (B,))`` with rewards ``beta Delta``."""
    loss, cr, rr, _ = _ctpd(ellS, ellT, w, beta)
    return loss, cr, rr


def ctpd_loss_grad(ellS, ellT, w, beta=0.1):
    """``(loss, d_ellS (2B, R))`` with ``d_ellS = w dL/dDelta`` (every span of a row shares
    its row's ``dL/dDelta = +-beta sig(-beta d) / B``)."""
    loss, _, _, d_ellS = _ctpd(ellS, ellT, w, beta)
    return loss, d_ellS


# --------------------------------------------------------------------------- TIS-DPO loss


def _tis(logits, ref_logits, labels, mask, weights, beta, alpha, token_level, need_grad):
    logits = V.host_array(logits, "logits")
    ref_logits = V.host_array(ref_logits, "ref_logits")
    labels = V.host_array(labels, "labels")
    mask = V.host_array(mask, "mask")
    weights = V.host_array(weights, "weights")
    R, _, _, beta, alpha, m = V.tis_dpo_args(logits, ref_logits, labels, mask, weights, beta,
                                             alpha)
    m = m.astype(np.float64)
    y = np.where(m > 0, np.asarray(labels), 0).astype(np.int64)
    lp = log_softmax(np.asarray(logits, dtype=np.float64), axis=-1)        # log p
    lq = log_softmax(np.asarray(ref_logits, dtype=np.float64), axis=-1)    # log q
    p = np.exp(lp)
    kl = (p * (lp - lq)).sum(axis=-1)                                       # KL(p_t || q_t)
    margin = (np.take_along_axis(lp, y[..., None], axis=-1)
              - np.take_along_axis(lq, y[..., None], axis=-1))[..., 0]
    om = np.asarray(weights, dtype=np.float64) * m                          # omega m
    u = (om * margin).sum(axis=1)
    K = (om * kl).sum(axis=1)
    a = alpha if token_level else 0.0
    loss, _, _, g = _dpo(u - a * K, np.zeros(R), beta, "sigmoid", 0.0)
    values = u - K if token_level else u
    B = R // 2
    rewards_w, rewards_l = beta * values[:B], beta * values[B:]
    if not need_grad:
        return float(loss), rewards_w, rewards_l, None
    onehot = np.zeros_like(p)
    np.put_along_axis(onehot, y[..., None], 1.0, axis=-1)
    dK = p * (lp - lq - kl[..., None])
    dz = (g[:, None] * om)[..., None] * ((onehot - p) - a * dK)
    return float(loss), rewards_w, rewards_l, dz


def tis_dpo_loss(logits, ref_logits, labels, mask, weights, beta, *, alpha=0.5, token_level=True):
    """TIS-DPO on policy/reference logits (R, T, V), shifted ``labels``/``mask``/``weights``
    (R, T), chosen rows first: ``(loss, rewards_w (B,), rewards_l (B,))``."""
    loss, rw, rl, _ = _tis(logits, ref_logits, labels, mask, weights, beta, alpha,
                           bool(token_level), need_grad=False)
    return loss, rw, rl


def tis_dpo_loss_grad(logits, ref_logits, labels, mask, weights, beta, *, alpha=0.5,
                      token_level=True):
    """``(loss, dlogits (R, T, V))``: ``g_r omega m [(e_y - p) - alpha p (log p - log q - KL)]``
    (alpha = 0 without token_level); 0 at masked positions."""
    loss, _, _, dz = _tis(logits, ref_logits, labels, mask, weights, beta, alpha,
                          bool(token_level), need_grad=True)
    return loss, dz
