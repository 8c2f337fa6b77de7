r"""Cross-tokenizer distillation ops with Numba-CUDA kernels: the DWA-KD per-token pieces,
CTPD span sums/weights/loss and TIS-DPO (``cross_tokenizer.md`` secs. 3-5, 8-11).

Same functions, signatures and results as :mod:`refimpl.cross_tokenizer` (see the package
docstring for array kinds and the stream), except three the spec leaves to other backends:
``span_align`` (host preprocessing of tokenizer offsets: reference only), ``cma_align`` and
``dwa_kd_loss`` (GEMM-bound composites). float32 or float64, one dtype per call; every kernel
computes in that dtype and results have it (0-d device arrays for scalar losses and values).
Integer / bool inputs (masks, labels, segment ids) are CUDA arrays too.

Kernels (``ct_*`` in :mod:`._kernels`, correctness first):

- ``kd_divergence``/``_grad``: ``ct_kd``, one block per row of the (rows, V) logits. The two
  softmaxes come from online (max, sum) pairs (``lse_push``/``lse_merge``), then one sweep
  sums the divergence terms (an entry with an infinite scaled logit adds 0: the student's for
  forward_kl, either for the others, as the reference) and ``<p, g>``, and a last sweep
  writes ``dz = p (g - <p, g>) / tau`` (forward_kl: ``(p - q) / tau``); nothing rows x V is
  stored besides ``dz``. ``adaptive_kl`` needs the cumsum of q in stable ascending order,
  whose entries up to ``adaptive_alpha`` form the tail: instead of a sort, the block finds the
  last tail entry in (q, index) order bit by bit (an integer key that orders as q, then the
  index; each bit one pass summing q over the entries at or below the candidate): 63 + log2 V
  passes per row in float64, 34 + log2 V in float32, for any V (no cap, no shared-memory
  sort). The sums are taken in index order rather than in sorted order, so an entry whose
  cumsum lies within rounding of ``adaptive_alpha`` may fall on the other side than in the
  reference.
- ``entropy_weights``/``certainty_weights``/``kd_gate``: ``ct_rowstat`` (one block per
  position: online LSE, entropy / certainty / max-probability) and ``ct_rownorm`` (one block
  per row: ``n_row w mu / (sum w mu + 1e-9)``).
- ``cma_band_penalty``: ``ct_band``, one block per (row, block).
- ``dwa_dtw_loss``/``_grad``: the selected positions of each pair (``positions="mask"``: the
  masked ones in order; ``"prefix"``: the first n_b) are gathered into padded (B, N', d) /
  (B, M', d) arrays (``ct_gather_rows``) and the used attention block into (B, N', M')
  (``ct_gather_block``); ``ct_band`` turns it into the penalty; then ONE call of
  :func:`backends.numba_cuda.softdtw.soft_dtw_divergence` (``_grad``) with ``kind="cosine"``,
  per-pair lengths and the penalty (empty pairs have length 0 and contribute 0);
  ``ct_sum`` adds the B values; ``ct_scatter_rows`` puts the gradients back at the used
  positions (zeros elsewhere). An ``A`` of the other float dtype is converted on the device.
- ``span_sum``: ``ct_span_sum`` (atomic adds into (rows, R), seg -1 skipped; counts too for
  ``"mean"``), ``ct_span_scale``; ``span_weights``: ``ct_span_weights`` (round half to even as
  ``numpy.round``).
- ``ctpd_loss``/``_grad``: ``ct_ctpd_rows`` forms ``logp = sum_r w ellS`` and
  ``ref = sum_r w ellT`` per row, then the preference family's ``pref_dpo`` kernel (the
  backend's one DPO formula, mirroring ``refimpl.preference._dpo``) with sigmoid loss and no
  smoothing, as :mod:`refimpl._ctpd`; ``d_ellS = dL/dlogp w`` (``ct_row_scale``).
- ``tis_dpo_loss``/``_grad``: ``ct_tis_tok`` (one block per token: both softmaxes, ``log p(y)
  - log q(y)``, ``KL(p || q)``, and the softmax statistics kept for the backward),
  ``ct_tis_rows`` (``u``, ``K``, ``logp = u - alpha K`` and the rewards ``beta (u - K)``
  or ``beta u``), ``pref_dpo`` with ``ref = 0``, and ``ct_tis_grad`` for
  ``dz = g_r omega m [(e_y - p) - alpha p (log p - log q - KL)]``.

Host reads (documented, all O(B N) or smaller; no N x V array is read): the validators read
masks, labels and segment ids (the shared checks of ``refimpl/_validate.py``); the same host
copies give the float masks and cleaned labels that are uploaded, the position tables of
``dwa_dtw_loss`` (the Soft-DTW backend reads the B uploaded pair lengths back for its job
table) and the
padded width of ``span_sum(reduce="padded_mean")``. ``cma_band_penalty`` reads A (n x m) for
the shared value check (no NaN, no negative entry). ``span_weights`` reads ``mu`` (a sign per
row; a Python number is also accepted) to broadcast it.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from refimpl import _validate as V

from . import _kernels as K
from .softdtw import soft_dtw_divergence, soft_dtw_divergence_grad

__all__ = [
    "kd_divergence", "kd_divergence_grad", "entropy_weights", "certainty_weights", "kd_gate",
    "cma_band_penalty", "dwa_dtw_loss", "dwa_dtw_loss_grad", "span_sum", "span_weights",
    "ctpd_loss", "ctpd_loss_grad", "tis_dpo_loss", "tis_dpo_loss_grad",
]

_KD_CODE = {"forward_kl": 0, "reverse_kl": 1, "skewed_forward_kl": 2, "skewed_reverse_kl": 3,
            "js": 4, "adaptive_kl": 5}
_ENT_EPS = 1e-9
_BLOCK_1D = 256            # threads of the elementwise 2-D launches along the contiguous axis


# --------------------------------------------------------------------------- helpers



def _red(work: int) -> int:
    """Threads of a one-block-per-row kernel: a power of 2 (the shared-memory trees)."""
    return K.pow2_floor(K.threads(work, K.RED_BLOCK))


def _launch_rows_cols(name: str, dt: str, rows: int, cols: int, *args) -> None:
    """A 2-D elementwise kernel: rows on grid x (no 65535 limit), column blocks on grid y,
    threads along the (contiguous) columns."""
    if rows == 0 or cols == 0:
        return
    nt = K.threads(cols, _BLOCK_1D)
    K.launch(name, dt, (rows, K.ceil_div(cols, nt)), (nt,), 0, *args)


def _reader():
    """``(read, host)``: a ``to_numpy`` hook for the validators that keeps the host copies."""
    host = {}

    def read(x):
        h = np.asarray(K.to_numpy(x))
        host[id(K.unmeta(x))] = h
        return h

    return read, host


def _out(arr, like):
    return K.wrap(arr, like)


def _scalar_out(arr, like):
    """A (1,) device array as the 0-d result of the leading input's kind."""
    return K.wrap(arr.reshape(()), like)


def _dpo(logp, ref, beta: float, dt: str):
    """The preference family's ``pref_dpo`` (sigmoid, no smoothing) on (R,) device arrays:
    ``(loss (1,), chosen_rewards, rejected_rewards, dlogp)``."""
    R = int(logp.shape[0])
    B = R // 2
    loss = K.empty((1,), dt)
    cr, rr, dlogp = K.empty((B,), dt), K.empty((B,), dt), K.empty((R,), dt)
    K.launch("pref_dpo", dt, (1,), (_red(B),), 0, logp, ref, loss, cr, rr, dlogp,
             K.scalar(dt, beta), K.scalar(dt, 0.0), 0)
    return loss, cr, rr, dlogp


def _to_dtype(x, dt: str):
    """A device array in dtype ``dt``: converted on the device (``pref_cast`` on a flat view)
    when it has the other float dtype."""
    if V.dtype_name(x) == dt:
        return x
    shape = tuple(int(s) for s in x.shape)
    flat = K.flatten_batch(x, 0)          # (size,) view; contiguous inputs always qualify
    out = K.empty((int(np.prod(shape)),), dt)
    if out.shape[0]:
        nt = K.threads(out.shape[0], 256)
        K.launch("pref_cast", dt, (K.ceil_div(out.shape[0], nt),), (nt,), 0, flat, out)
    return out.reshape(shape)


# --------------------------------------------------------------------------- sec. 3 divergences


def _kd(z_s, z_t, kind, tau, tea_temp, use_tea_temp, skew, adaptive_alpha, need_grad):
    K.native(z_s=z_s, z_t=z_t)
    a = V.kd_args(K.meta(z_s), K.meta(z_t), kind, tau, tea_temp, use_tea_temp, skew,
                  adaptive_alpha)
    dt = V.dtype_name(K.meta(z_s))
    shape = tuple(int(s) for s in z_s.shape)
    zs2 = K.flatten_batch(K.device(z_s), 1)
    zt2 = K.flatten_batch(K.device(z_t), 1)
    rows, nv = int(zs2.shape[0]), int(zs2.shape[1])
    div = K.empty((rows,), dt)
    dz = K.empty((rows, nv), dt) if need_grad else K.dummy(2, dt)
    if rows:
        tt = a.tea_temp if a.use_tea_temp else 1.0
        alpha = a.adaptive_alpha if a.adaptive_alpha is not None else 0.0
        K.launch("ct_kd", dt, (rows,), (_red(nv),), 0, zs2, zt2, div, dz, K.scalar(dt, a.tau),
                 K.scalar(dt, tt), K.scalar(dt, a.skew), K.scalar(dt, alpha), _KD_CODE[a.kind], int(need_grad))
    div = _out(div.reshape(shape[:-1]), z_s)
    if not need_grad:
        return div
    return div, _out(dz.reshape(shape), z_s)


def kd_divergence(z_s, z_t, *, kind="forward_kl", tau=2.0, tea_temp=1.0, use_tea_temp=False,
                  skew=0.1, adaptive_alpha=None):
    """Per-token divergence between student logits ``z_s`` and (detached) teacher logits
    ``z_t`` of shape (..., V); returns (...) — no reduction, no tau^2 factor."""
    return _kd(z_s, z_t, kind, tau, tea_temp, use_tea_temp, skew, adaptive_alpha, False)


def kd_divergence_grad(z_s, z_t, *, kind="forward_kl", tau=2.0, tea_temp=1.0,
                       use_tea_temp=False, skew=0.1, adaptive_alpha=None):
    """``(div, dz_s)``: the divergence and its gradient w.r.t. ``z_s`` (finite logits)."""
    return _kd(z_s, z_t, kind, tau, tea_temp, use_tea_temp, skew, adaptive_alpha, True)


# --------------------------------------------------------------------------- sec. 4 weights


def _logits_mask(z, mask, zname: str):
    """Validation as the reference (logits (B, N, V), mask (B, N)); the mask uploaded as a
    float array of the logits' dtype."""
    K.native(**{zname: z, "mask": mask})
    mu = V.logits_and_mask(K.meta(z), K.meta(mask), zname, "mask", to_numpy=K.to_numpy)
    dt = V.dtype_name(K.meta(z))
    return dt, K.upload(mu.astype(dt))


def _rowstat(z, mu, dt: str, c1: float, mode: int):
    B, N, nv = (int(s) for s in z.shape)
    out = K.empty((B, N), dt)
    if B and N:
        K.launch("ct_rowstat", dt, (N, B), (_red(nv),), 0, K.device(z), mu, out,
                 K.scalar(dt, c1), mode)
    return out


def _rownorm(stat, mu, dt: str):
    B, N = (int(s) for s in stat.shape)
    out = K.empty((B, N), dt)
    if B and N:
        K.launch("ct_rownorm", dt, (B,), (_red(N),), 0, stat, mu, out)
    return out


def entropy_weights(z_s, mask):
    """Student-uncertainty weights (B, N'): entropy at tau = 1, mean 1 over each row's valid
    positions (0 elsewhere)."""
    dt, mu = _logits_mask(z_s, mask, "z_s")
    return _out(_rownorm(_rowstat(z_s, mu, dt, 0.0, 0), mu, dt), z_s)


def certainty_weights(z_t, mask):
    """Teacher-confidence weights (B, M'): ``clip(1 - H / (log V_T + 1e-9), 0, 1)``, then
    normalised to mean ~1 over each row's valid positions."""
    dt, mu = _logits_mask(z_t, mask, "z_t")
    c1 = math.log(int(K.meta(z_t).shape[-1])) + _ENT_EPS
    return _out(_rownorm(_rowstat(z_t, mu, dt, c1, 1), mu, dt), z_t)


def kd_gate(z_t2s, mask, step, *, warmup=300):
    """Soft gate (B, N'): ``max_v softmax(z_t2s)_v * min(1, (step+1)/warmup) * mu``."""
    dt, mu = _logits_mask(z_t2s, mask, "z_t2s")
    step, warmup = V.nonneg_int(step, "step"), V.nonneg_int(warmup, "warmup")
    ramp = min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0
    return _out(_rowstat(z_t2s, mu, dt, ramp, 2), z_t2s)


# --------------------------------------------------------------------------- sec. 5 band, DTW


def _band(A3, ln, lm, dt: str, params):
    """``ct_band`` on (B, N, M) blocks with per-block sizes ``ln``/``lm`` (device int64)."""
    alpha, w0, kappa, rho = params
    B, N, M = (int(s) for s in A3.shape)
    P = K.empty((B, N, M), dt)
    if B and N and M:
        K.launch("ct_band", dt, (N, B), (_red(M),), 0, A3, ln, lm, P, K.scalar(dt, alpha),
                 K.scalar(dt, w0), K.scalar(dt, kappa), K.scalar(dt, rho))
    return P


def cma_band_penalty(A, *, alpha=0.7, w0=5.0, kappa=2.0, rho=1.0):
    """Soft band ``P = rho 1[|j - c_i| > w_i]`` (n, m) (or (..., n, m)) from an attention
    block A, normalised per row; entries are 0 or rho. Reads A on the host once (the shared
    value check)."""
    K.native(A=A)
    V.float_array(K.meta(A), "A")
    if len(A.shape) >= 2:
        V.band_attention(K.to_numpy(A))      # host read of A: no NaN, no negative entry
    else:
        V.band_attention(K.meta(A))          # the shape error, as the reference
    params = V.band_args(alpha, w0, kappa, rho)
    dt = V.dtype_name(K.meta(A))
    shape = tuple(int(s) for s in A.shape)
    n, m = shape[-2:]
    A3 = K.flatten_batch(K.device(A), 2)
    nb = int(A3.shape[0])
    ln = K.upload(np.full(nb, n, dtype=np.int64))
    lm = K.upload(np.full(nb, m, dtype=np.int64))
    return _out(_band(A3, ln, lm, dt, params).reshape(shape), A)


def _positions(mask: np.ndarray, rule: str) -> tuple[np.ndarray, np.ndarray]:
    """Per row the used positions, padded with 0: ``(idx (B, N) int64, counts (B,) int64)``."""
    B, N = mask.shape
    idx = np.zeros((B, max(N, 1)), dtype=np.int64)
    cnt = mask.sum(-1).astype(np.int64)
    for b in range(B):
        pos = np.flatnonzero(mask[b]) if rule == "mask" else np.arange(cnt[b])
        idx[b, :pos.size] = pos
    return idx, cnt


def _gather_rows(X, idx, lens, dt: str):
    B, N, d = (int(s) for s in X.shape)
    out = K.empty((B, N, d), dt)
    if B and N and d:
        K.launch("ct_gather_rows", dt, (N, B), (K.threads(d, 256),), 0, X, idx, lens, out)
    return out


def _dwa_dtw(X, Y, mask_s, mask_t, gamma, A, positions, band, alpha, w0, kappa, rho,
             need_grad):
    K.native(X=X, Y=Y, A=A, mask_s=mask_s, mask_t=mask_t)
    a = V.dwa_dtw_args(K.meta(X), K.meta(Y), K.meta(mask_s), K.meta(mask_t), gamma,
                       None if A is None else K.meta(A), positions, band, alpha, w0, kappa,
                       rho, to_numpy=K.to_numpy)
    dt = V.dtype_name(K.meta(X))
    B, N, M, d = a.B, a.N, a.M, a.d
    Xd, Yd = K.device(X), K.device(Y)
    ix_h, n_h = _positions(a.mask_s, a.positions)
    jx_h, m_h = _positions(a.mask_t, a.positions)
    active = (n_h > 0) & (m_h > 0)           # the reference skips empty pairs
    n_h = np.where(active, n_h, 0).astype(np.int64)
    m_h = np.where(active, m_h, 0).astype(np.int64)
    ix, jx, ln, lm = K.upload(ix_h), K.upload(jx_h), K.upload(n_h), K.upload(m_h)
    total = K.zeros((1,), dt)
    dX = dY = None
    if need_grad:
        dX, dY = K.zeros((B, N, d), dt), K.zeros((B, M, d), dt)
    if active.any():
        Xc = _gather_rows(Xd, ix, ln, dt)
        Yc = _gather_rows(Yd, jx, lm, dt)
        P = None
        if a.use_band:
            Ad = _to_dtype(K.device(A), dt)
            Ac = K.empty((B, N, M), dt)
            K.launch("ct_gather_block", dt, (N, B), (K.threads(M, 256),), 0, Ad, ix, jx, ln,
                     lm, Ac)
            P = _band(Ac, ln, lm, dt, a.band)
        kw = dict(kind="cosine", len_x=ln, len_y=lm, penalty=P)
        if need_grad:
            vals, dXc, dYc = soft_dtw_divergence_grad(Xc, Yc, a.gamma, **kw)
            for G, idx, lens, out, n in ((dXc, ix, ln, dX, N), (dYc, jx, lm, dY, M)):
                if n and d:
                    K.launch("ct_scatter_rows", dt, (n, B), (K.threads(d, 256),), 0,
                             K.device(G), idx, lens, out)
        else:
            vals = soft_dtw_divergence(Xc, Yc, a.gamma, **kw)
        K.launch("ct_sum", dt, (1,), (_red(B),), 0, K.device(vals), total)
    value = _scalar_out(total, X)
    if not need_grad:
        return value
    return value, _out(dX, X), _out(dY, X)


def dwa_dtw_loss(X, Y, mask_s, mask_t, gamma, A=None, *, positions="mask", band=True,
                 alpha=0.7, w0=5.0, kappa=2.0, rho=1.0):
    """``sum_b D_gamma(X[b, S_b], Y[b, T_b]; P_b)`` (cosine cost, band penalty from A) — a
    0-d array. X (B, N', d), Y (B, M', d), A (B, N', M') or None."""
    return _dwa_dtw(X, Y, mask_s, mask_t, gamma, A, positions, band, alpha, w0, kappa, rho,
                    need_grad=False)


def dwa_dtw_loss_grad(X, Y, mask_s, mask_t, gamma, A=None, *, positions="mask", band=True,
                      alpha=0.7, w0=5.0, kappa=2.0, rho=1.0):
    """``(value, dX, dY)``; A (and so the penalty) is detached, unused positions get 0."""
    return _dwa_dtw(X, Y, mask_s, mask_t, gamma, A, positions, band, alpha, w0, kappa, rho,
                    need_grad=True)


# --------------------------------------------------------------------------- sec. 8 spans


def span_sum(token_logps, seg, num_spans, *, reduce="sum"):
    """Span log-probs ``(..., R)``: ``l_r = sum_{k: seg_k = r} token_logps_k`` (-1 ignored),
    scaled by ``reduce`` ("sum", "mean" = own count, "padded_mean" = the code's padded width).

    ``seg`` has the shape of ``token_logps`` (..., K) or (K,) (shared by every row)."""
    reduce = V.choice(reduce, "reduce", V.SPAN_REDUCES)
    K.native(token_logps=token_logps)
    V.float_array(K.meta(token_logps), "token_logps")
    K.native(seg=seg)
    shape = tuple(int(s) for s in token_logps.shape)
    sg, R = V.span_seg(K.meta(seg), shape, num_spans, to_numpy=K.to_numpy)
    dt = V.dtype_name(K.meta(token_logps))
    kk = shape[-1]
    x2 = K.flatten_batch(K.device(token_logps), 1)
    rows = int(x2.shape[0])
    sg2 = np.asarray(sg, dtype=np.int64).reshape(-1, kk) if kk else None
    out = K.zeros((rows, R), dt)
    need_cnt = reduce == "mean"
    cnt = K.zeros((rows, R), dt) if need_cnt else K.dummy(2, dt)
    if rows and kk and R:
        seg_d = K.upload(np.ascontiguousarray(sg2))
        _launch_rows_cols("ct_span_sum", dt, rows, kk, x2, seg_d, out, cnt, int(need_cnt))
        if reduce == "mean":
            _launch_rows_cols("ct_span_scale", dt, rows, R, out, cnt, K.scalar(dt, 1.0), 1)
        elif reduce == "padded_mean":
            width = 0
            for row in sg2:                # the largest token count of any (row, span)
                v = row[row >= 0]
                if v.size:
                    width = max(width, int(np.bincount(v, minlength=R).max()))
            _launch_rows_cols("ct_span_scale", dt, rows, R, out, K.dummy(2, dt),
                              K.scalar(dt, 1.0 / max(float(width), 1.0)), 2)
    return _out(out.reshape(shape[:-1] + (R,)), token_logps)


def span_weights(lp_pos, lp_neg, mu, *, k=1.0, lo=-0.5, hi=1.5, decimals=2):
    """``w = k exp(mu clip(lp_pos - lp_neg, lo, hi))`` rounded half to even at ``decimals``
    (None: no rounding). ``mu`` is +1 (chosen) / -1 (rejected): a number or a CUDA array
    broadcasting against the log-probs (e.g. a (2B, 1) column); it is read on the host."""
    k, lo, hi, decimals = V.span_weight_args(k, lo, hi, decimals)
    K.native(lp_pos=lp_pos)
    K.native(lp_neg=lp_neg)
    V.float_array(K.meta(lp_pos), "lp_pos")
    V.float_array(K.meta(lp_neg), "lp_neg")
    shape = tuple(int(s) for s in lp_pos.shape)
    if tuple(int(s) for s in lp_neg.shape) != shape:
        raise ValueError(f"lp_neg must have the shape of lp_pos {shape}, got "
                         f"{tuple(lp_neg.shape)}")
    if isinstance(mu, numbers.Real):
        mu_h = np.asarray(float(mu))
    else:
        K.native(mu=mu)
        mu_h = np.asarray(K.to_numpy(mu), dtype=np.float64)
    try:
        full = np.broadcast_shapes(mu_h.shape, shape)
    except ValueError:
        raise ValueError(f"mu of shape {mu_h.shape} does not broadcast against lp_pos "
                         f"{shape}") from None
    if full != shape:
        raise ValueError(f"mu of shape {mu_h.shape} would broadcast lp_pos {shape} to {full}; "
                         f"the numba_cuda backend keeps the log-probs' shape (give mu at most "
                         f"lp_pos's dimensions)")
    dt = V.dtype_name(K.meta(lp_pos))
    cols = shape[-1] if shape else 1
    pos2 = K.flatten_batch(K.device(lp_pos), 1) if shape else K.device(lp_pos).reshape((1, 1))
    neg = _to_dtype(K.device(lp_neg), dt)       # the reference upcasts both: no dtype rule
    neg2 = K.flatten_batch(neg, 1) if shape else neg.reshape((1, 1))
    rows = int(pos2.shape[0])
    mu_full = np.broadcast_to(mu_h, shape).reshape(rows, cols)
    if rows and np.all(mu_full == mu_full[:, :1]):        # constant along the last axis
        mu_full = mu_full[:, :1]
    if rows and np.all(mu_full == mu_full[:1]):           # and along the rows
        mu_full = mu_full[:1]
    mu_d = K.upload(np.array(mu_full, dtype=dt, order="C", copy=True))
    out = K.empty((rows, cols), dt)
    scale = 10.0 ** decimals if decimals is not None else 1.0
    _launch_rows_cols("ct_span_weights", dt, rows, cols, pos2, neg2, mu_d, out, K.scalar(dt, k),
                      K.scalar(dt, lo), K.scalar(dt, hi), K.scalar(dt, scale), int(decimals is not None))
    return _out(out.reshape(shape), lp_pos)


# --------------------------------------------------------------------------- sec. 9 CTPD


def _ctpd(ellS, ellT, w, beta):
    K.native(ellS=ellS, ellT=ellT, w=w)
    _, _, beta = V.ctpd_args(K.meta(ellS), K.meta(ellT), K.meta(w), beta)
    dt = V.dtype_name(K.meta(ellS))
    rows, R = (int(s) for s in ellS.shape)
    S, T, W = K.device(ellS), K.device(ellT), K.device(w)
    logp, ref = K.empty((rows,), dt), K.empty((rows,), dt)
    K.launch("ct_ctpd_rows", dt, (rows,), (_red(R),), 0, S, T, W, logp, ref)
    loss, cr, rr, dlogp = _dpo(logp, ref, beta, dt)
    return dt, loss, cr, rr, dlogp, W


def ctpd_loss(ellS, ellT, w, beta=0.1):
    """Teacher-anchored DPO on span log-probs (2B, R), chosen first:
    ``(loss, rewards_w (B,), rewards_l (B,))`` with rewards ``beta Delta``."""
    _, loss, cr, rr, _, _ = _ctpd(ellS, ellT, w, beta)
    return _scalar_out(loss, ellS), _out(cr, ellS), _out(rr, ellS)


def ctpd_loss_grad(ellS, ellT, w, beta=0.1):
    """``(loss, d_ellS (2B, R))`` with ``d_ellS = w dL/dDelta`` (every span of a row shares
    its row's ``dL/dDelta = +-beta sig(-beta d) / B``)."""
    dt, loss, _, _, dlogp, W = _ctpd(ellS, ellT, w, beta)
    rows, R = (int(s) for s in ellS.shape)
    d = K.empty((rows, R), dt)
    _launch_rows_cols("ct_row_scale", dt, rows, R, dlogp, W, d)
    return _scalar_out(loss, ellS), _out(d, ellS)


# --------------------------------------------------------------------------- sec. 10 TIS-DPO


def _tis(logits, ref_logits, labels, mask, weights, beta, alpha, token_level, need_grad):
    K.native(logits=logits, ref_logits=ref_logits, labels=labels, mask=mask, weights=weights)
    read, host = _reader()
    R, T, nv, beta, alpha, m = V.tis_dpo_args(K.meta(logits), K.meta(ref_logits),
                                              K.meta(labels), K.meta(mask), K.meta(weights),
                                              beta, alpha, to_numpy=read)
    dt = V.dtype_name(K.meta(logits))
    y_h = np.where(m, host[id(labels)], 0).astype(np.int64)
    z, zr = K.device(logits), K.device(ref_logits)
    wts = _to_dtype(K.device(weights), dt)
    y, md = K.upload(y_h), K.upload(m.astype(dt))
    a, kt, om = K.zeros((R, T), dt), K.zeros((R, T), dt), K.zeros((R, T), dt)
    st = K.zeros((R, T, 4), dt)
    if T:
        K.launch("ct_tis_tok", dt, (T, R), (_red(nv),), 0, z, zr, y, wts, md, a, kt, om, st)
    aeff = alpha if token_level else 0.0
    logp, rew = K.empty((R,), dt), K.empty((R,), dt)
    K.launch("ct_tis_rows", dt, (R,), (_red(T),), 0, a, kt, om, logp, rew, K.scalar(dt, aeff),
             K.scalar(dt, beta), int(token_level))
    loss, _, _, dlogp = _dpo(logp, K.zeros((R,), dt), beta, dt)
    B = R // 2
    if not need_grad:
        return (_scalar_out(loss, logits), _out(rew[:B], logits), _out(rew[B:], logits))
    dz = K.empty((R, T, nv), dt)
    if T:
        K.launch("ct_tis_grad", dt, (T, R), (K.threads(nv, 256),), 0, z, zr, y, om, st, kt,
                 dlogp, dz, K.scalar(dt, aeff))
    return _scalar_out(loss, logits), _out(dz, logits)


def tis_dpo_loss(logits, ref_logits, labels, mask, weights, beta, *, alpha=0.5, token_level=True):
    """TIS-DPO on policy/reference logits (R, T, V), shifted ``labels``/``mask``/``weights``
    (R, T), chosen rows first: ``(loss, rewards_w (B,), rewards_l (B,))``."""
    return _tis(logits, ref_logits, labels, mask, weights, beta, alpha, bool(token_level),
                need_grad=False)


def tis_dpo_loss_grad(logits, ref_logits, labels, mask, weights, beta, *, alpha=0.5,
                      token_level=True):
    """``(loss, dlogits (R, T, V))``: ``g_r omega m [(e_y - p) - alpha p (log p - log q - KL)]``
    (alpha = 0 without token_level); 0 at masked positions."""
    return _tis(logits, ref_logits, labels, mask, weights, beta, alpha, bool(token_level),
                need_grad=True)
