r"""Cross-tokenizer distillation on CuPy arrays: DWA-KD array ops, CTPD and TIS-DPO
(cross_tokenizer.md sec. 3, 4, 5, 8-11).

Same functions, signatures and results as :mod:`refimpl.cross_tokenizer` for the registry's
array ops: ``kd_divergence``, ``kd_divergence_grad``, ``entropy_weights``,
``certainty_weights``, ``kd_gate``, ``cma_band_penalty``, ``dwa_dtw_loss``,
``dwa_dtw_loss_grad``, ``span_sum``, ``span_weights``, ``ctpd_loss``, ``ctpd_loss_grad``,
``tis_dpo_loss``, ``tis_dpo_loss_grad``. Not offered here: ``span_align`` (host preprocessing
of tokenizer offsets, reference only), ``cma_align`` and ``dwa_kd_loss`` (composites of
GEMMs and these ops; they are not registry ops).

Inputs are ``cupy.ndarray`` (masks, labels, segment ids and ``mu`` too, or a Python number for
``mu``; other kinds are refused with a ``TypeError`` naming the argument). Floating inputs are
float32 or float64 (one dtype per call; bfloat16, which the validators admit for
``kd_divergence`` and ``tis_dpo_loss``, is refused: the backend's ``DTYPES``). Results are CuPy
arrays of the input dtype; scalars (``loss``, ``dwa_dtw_loss``'s value) are 0-d arrays.

Structure:

- ``kd_divergence(_grad)``: kernel ``ct_kd_rows``, one block per row of the (rows, V) logits
  (blocks grid-stride over rows): an online max/sum over the vocabulary for both softmaxes
  (``z_s / tau`` and ``z_t / tau [/ tea_temp]``, merged across the block by warp shuffles and
  shared memory), then one sweep summing the divergence terms (an entry with an infinite logit
  contributes 0: ``z_s`` for forward_kl and the fkl part, either for the others) and
  ``<p, g>``, and with the gradient one more sweep writing ``dz = p (g - <p, g>) / tau``
  (forward_kl: ``(p - q) / tau``). Nothing (rows, V) is allocated besides ``dz``.
  ``adaptive_kl``: the detached weights ``(g_head, g_tail) / max(g_head + g_tail, 1e-9)``
  need q sorted per row: they are computed in CuPy (softmaxes, ``argsort`` along the
  vocabulary, ``cumsum``; O(rows V) workspace) and passed to the same kernel, which combines
  the fkl and rkl sums and gradients. CuPy's ``argsort`` is a stable sort (documented so, and
  thrust's ``stable_sort_by_key`` underneath), so tied teacher probabilities keep index order
  as in the reference's stable NumPy sort.
- ``entropy_weights`` / ``certainty_weights`` / ``kd_gate``: kernel ``ct_row_stat`` (same
  row layout; entropy ``-sum p log(p + 1e-9)`` or ``max p = exp(max z - lse)``), then the
  per-row normalisation, clip and ramp as CuPy elementwise ops and reductions.
- ``cma_band_penalty``: CuPy elementwise ops and reductions over the last axis.
- ``dwa_dtw_loss(_grad)``: the positions of each pair (``positions="mask"``: the masked ones;
  ``"prefix"``: the first n_b) are gathered on the device into zero-padded (B, n_max, d) /
  (B, m_max, d) arrays with per-pair lengths; the soft band of every pair's block is built at
  once (:func:`_band` with per-pair lengths, entries outside a block are 0 and never read),
  then one call of :func:`backends.cupy.softdtw.soft_dtw_divergence` (``_grad``) with
  ``kind="cosine"`` and ``penalty=P``; the gradients are scattered back to the used positions
  (0 elsewhere). A is detached (no gradient), as in the reference.
- ``span_sum``: kernel ``ct_span_sum``, one thread per token, float64 ``atomicAdd`` into
  (rows, R) sums (and counts for ``"mean"``/``"padded_mean"``; ``seg = -1`` skipped); the
  scale and the cast to the input dtype are CuPy ops.
- ``span_weights``: CuPy elementwise (``cupy.round``: half to even, like NumPy).
- ``ctpd_loss(_grad)`` and ``tis_dpo_loss(_grad)`` end in the reference's one DPO formula
  :func:`refimpl.preference._dpo` run with ``xp=cupy``, mapped exactly as ``refimpl/_ctpd.py``
  maps them (CTPD: ``logp = sum_r w l^S``, ``ref = sum_r w l^T``; TIS-DPO: ``logp = u - alpha
  K`` (``u`` without ``token_level``), ``ref = 0``, rewards ``beta (u - K)`` / ``beta u``).
  TIS-DPO per token: kernel ``ct_tis_fwd`` (both log-softmaxes, ``log p(y) - log q(y)``,
  ``KL(p || q)``, and the two log-sum-exps it keeps for the backward); the gradient kernel
  ``ct_tis_grad`` writes ``c [(e_y - p) - alpha p (log p - log q - K)]`` in one sweep per row
  (``c = dL/dlogp_row omega m``; 0 at masked tokens).

Host reads (documented; nothing else synchronises): the validators of
``refimpl/_validate.py`` read masks (O(B N)), labels (O(R T)) and segment ids (O(rows K)) on
the host to check their values, as the torch backend does; ``cma_band_penalty`` reads A
(O(n m)) for the shared check (no NaN, no negative entry); ``dwa_dtw_loss`` derives the
gather positions and pair lengths from the host copy of the masks and uploads them (O(B N)).

Kernels (``_kernels.py``, module ``cross_tokenizer``): ``ROW_THREADS`` threads per block (a
multiple of 32), at most ``GRID_CAP`` blocks.
"""

from __future__ import annotations

import math
import numbers

import cupy
import numpy as np

from backends.cupy import _kernels
from backends.cupy import native as _native
from backends.cupy.softdtw import soft_dtw_divergence, soft_dtw_divergence_grad
from refimpl import _validate as V
from refimpl.preference import _dpo

__all__ = [
    "kd_divergence", "kd_divergence_grad", "entropy_weights", "certainty_weights", "kd_gate",
    "cma_band_penalty", "dwa_dtw_loss", "dwa_dtw_loss_grad", "span_sum", "span_weights",
    "ctpd_loss", "ctpd_loss_grad", "tis_dpo_loss", "tis_dpo_loss_grad",
]

ROW_THREADS = 256        # threads per block of the row kernels (a multiple of 32)
GRID_CAP = 4096          # at most this many blocks; blocks grid-stride over further rows
SCATTER_THREADS = 256    # threads per block of the segment sum

ENT_EPS = 1e-9
ADAPTIVE_EPS = 1e-9
_KIND_CODES = {"forward_kl": 0, "reverse_kl": 1, "skewed_forward_kl": 2, "skewed_reverse_kl": 3,
               "js": 4, "adaptive_kl": 5}


# --------------------------------------------------------------------------- helpers


def _to_host(x):
    return np.asarray(cupy.asnumpy(x))


def _float_dtype(**arrays) -> None:
    """This backend computes in float32 or float64 only (the validators also admit bf16)."""
    for name, x in arrays.items():
        if x is not None:
            V.float_array(x, name)


def _as_bool(mask):
    return mask if mask.dtype == np.bool_ else mask != 0


def _row_launch(template: str, rows: int, args) -> None:
    if rows == 0:
        return
    name = _kernels.kernel_name(template, args[0].dtype)
    _kernels.launch(name, (max(1, min(rows, GRID_CAP)),), (ROW_THREADS,), args)


def _rows2d(x, Vn: int):
    return cupy.ascontiguousarray(x).reshape(-1, Vn)


def _lse_host_rule(z):
    """``log_softmax`` with scipy's rule (a non-finite row max is replaced by 0), in CuPy."""
    mx = z.max(axis=-1, keepdims=True)
    mx = cupy.where(cupy.isfinite(mx), mx, 0.0).astype(z.dtype, copy=False)
    tmp = z - mx
    return tmp - cupy.log(cupy.exp(tmp).sum(axis=-1, keepdims=True))


# --------------------------------------------------------------------------- sec. 3 divergences


def _kd(z_s, z_t, kind, tau, tea_temp, use_tea_temp, skew, adaptive_alpha, need_grad):
    _native(z_s=z_s, z_t=z_t)
    a = V.kd_args(z_s, z_t, kind, tau, tea_temp, use_tea_temp, skew, adaptive_alpha)
    _float_dtype(z_s=z_s, z_t=z_t)
    dt = z_s.dtype
    Vn = int(z_s.shape[-1])
    lead = tuple(z_s.shape[:-1])
    zs, zt = _rows2d(z_s, Vn), _rows2d(z_t, Vn)
    rows = zs.shape[0]
    tea = a.tea_temp if a.use_tea_temp else 1.0
    dummy = cupy.zeros(1, dtype=dt)
    wh = wt = dummy
    if a.kind == "adaptive_kl" and rows:
        wh, wt = _adaptive_weights(zs, zt, a.tau, tea, a.adaptive_alpha)
    div = cupy.empty(rows, dtype=dt)
    dz = cupy.empty((rows, Vn), dtype=dt) if need_grad else dummy
    _row_launch("ct_kd_rows", rows,
                (zs, zt, np.int64(rows), np.int32(Vn), np.int32(_KIND_CODES[a.kind]),
                 dt.type(a.tau), dt.type(tea), dt.type(a.skew), wh, wt, np.int32(need_grad),
                 div, dz))
    div = div.reshape(lead)
    return (div, dz.reshape(tuple(z_s.shape))) if need_grad else div


def _adaptive_weights(zs, zt, tau, tea, alpha):
    """Detached ``(g_head, g_tail) / max(g_head + g_tail, 1e-9)`` per row (CuPy, O(rows V))."""
    p = cupy.exp(_lse_host_rule(zs / tau))
    q = cupy.exp(_lse_host_rule(zt / tau / tea))
    order = cupy.argsort(q, axis=-1)
    qs = cupy.take_along_axis(q, order, -1)
    ps = cupy.take_along_axis(p, order, -1)
    gap = cupy.abs(qs - ps)
    tail = cupy.cumsum(qs, axis=-1) <= alpha
    g_head = cupy.where(tail, 0.0, gap).sum(-1)
    g_tail = cupy.where(tail, gap, 0.0).sum(-1)
    den = cupy.maximum(g_head + g_tail, ADAPTIVE_EPS)
    return (cupy.ascontiguousarray((g_head / den).astype(zs.dtype, copy=False)),
            cupy.ascontiguousarray((g_tail / den).astype(zs.dtype, copy=False)))


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


def _row_stat(z, mode: int):
    """``ct_row_stat`` over the last axis of (B, N, V) logits: (B, N) in z's dtype."""
    Vn = int(z.shape[-1])
    z2 = _rows2d(z, Vn)
    rows = z2.shape[0]
    out = cupy.empty(rows, dtype=z.dtype)
    _row_launch("ct_row_stat", rows, (z2, np.int64(rows), np.int32(Vn), np.int32(mode), out))
    return out.reshape(tuple(z.shape[:-1]))


def _row_normalise(w, mask):
    """``n_row w mu / (sum w mu + 1e-9)`` per row, ``n_row = max(#valid, 1)``."""
    m = _as_bool(mask).astype(w.dtype)
    w = w * m
    n_row = cupy.maximum(m.sum(-1, keepdims=True), 1.0)
    return w * (n_row / (w.sum(-1, keepdims=True) + ENT_EPS))


def _weights_args(z, mask, zname):
    _native(**{zname: z, "mask": mask})
    V.logits_and_mask(z, mask, zname, "mask", to_numpy=_to_host)
    _float_dtype(**{zname: z})


def entropy_weights(z_s, mask):
    """Student-uncertainty weights (B, N'): entropy at tau = 1, mean 1 over each row's valid
    positions (0 elsewhere)."""
    _weights_args(z_s, mask, "z_s")
    return _row_normalise(_row_stat(z_s, 0), mask)


def certainty_weights(z_t, mask):
    """Teacher-confidence weights (B, M'): ``clip(1 - H / (log V_T + 1e-9), 0, 1)``, then
    normalised to mean ~1 over each row's valid positions."""
    _weights_args(z_t, mask, "z_t")
    H = _row_stat(z_t, 0)
    c = cupy.clip(1.0 - H / (math.log(z_t.shape[-1]) + ENT_EPS), 0.0, 1.0)
    return _row_normalise(c.astype(z_t.dtype, copy=False), mask)


def kd_gate(z_t2s, mask, step, *, warmup=300):
    """Soft gate (B, N'): ``max_v softmax(z_t2s)_v * min(1, (step+1)/warmup) * mu``."""
    _native(z_t2s=z_t2s, mask=mask)
    V.logits_and_mask(z_t2s, mask, "z_t2s", "mask", to_numpy=_to_host)
    step, warmup = V.nonneg_int(step, "step"), V.nonneg_int(warmup, "warmup")
    _float_dtype(z_t2s=z_t2s)
    ramp = min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0
    return _row_stat(z_t2s, 1) * ramp * _as_bool(mask).astype(z_t2s.dtype)


# --------------------------------------------------------------------------- sec. 5 band, DTW


def _band(A, n, m, alpha, w0, kappa, rho):
    """Soft band of every block at once: ``A`` (P, N, M), ``n``/``m`` (P,) device lengths; pair
    k uses ``A[k, :n_k, :m_k]``; entries outside it are 0 (the Soft-DTW ignores them)."""
    dt = A.dtype
    _, N, M = A.shape
    i = cupy.arange(N, dtype=dt).reshape(1, -1, 1)
    j = cupy.arange(M, dtype=dt).reshape(1, 1, -1)
    nf = n.astype(dt).reshape(-1, 1, 1)
    mf = m.astype(dt).reshape(-1, 1, 1)
    block = (i < nf) & (j < mf)
    Az = cupy.where(block, A, 0.0)
    Ab = cupy.where(block, (Az + ENT_EPS) / (Az.sum(-1, keepdims=True) + ENT_EPS), 0.0)
    h = -cupy.where(block, Ab * cupy.log(cupy.where(block, Ab, 1.0)), 0.0).sum(-1, keepdims=True)
    centre = alpha * (Ab * j).sum(-1, keepdims=True) + (1.0 - alpha) * i * (mf / cupy.maximum(nf, 1.0))
    width = w0 + kappa * h
    return (rho * (block & (cupy.abs(j - centre) > width))).astype(dt, copy=False)


def cma_band_penalty(A, *, alpha=0.7, w0=5.0, kappa=2.0, rho=1.0):
    """Soft band ``P = rho 1[|j - c_i| > w_i]`` (n, m) (or (..., n, m)) from an attention
    block A, normalised per row; entries are 0 or rho. Reads A on the host once (O(n m), the
    shared check that it holds no NaN and no negative entry)."""
    _native(A=A)
    V.float_array(A, "A")
    V.band_attention(_to_host(A))
    alpha, w0, kappa, rho = V.band_args(alpha, w0, kappa, rho)
    n, m = int(A.shape[-2]), int(A.shape[-1])
    A3 = A.reshape(-1, n, m)
    P = A3.shape[0]
    lens_n = cupy.full(P, n, dtype=np.int64)
    lens_m = cupy.full(P, m, dtype=np.int64)
    return _band(A3, lens_n, lens_m, alpha, w0, kappa, rho).reshape(tuple(A.shape))


def _positions(mask_row: np.ndarray, rule: str) -> np.ndarray:
    if rule == "mask":
        return np.flatnonzero(mask_row)
    return np.arange(int(mask_row.sum()))


def _gather_plan(masks: np.ndarray, rule: str):
    """Host plan of one side: ``(src (n_used,), dst (n_used,), lengths (B,), width)``: the
    flat source rows ``b * N + i`` and their compacted slots ``b * width + k``."""
    B, N = masks.shape
    pos = [_positions(masks[b], rule) for b in range(B)]
    lengths = np.array([p.size for p in pos], dtype=np.int64)
    width = max(int(lengths.max()) if B else 0, 1)
    src = np.concatenate([b * N + p for b, p in enumerate(pos)] + [np.zeros(0, np.int64)])
    dst = np.concatenate([b * width + np.arange(p.size) for b, p in enumerate(pos)]
                         + [np.zeros(0, np.int64)])
    return src.astype(np.int64), dst.astype(np.int64), lengths, width


def _compact(X, plan):
    """``X`` (B, N, d) -> (B, width, d), the used rows in order, zeros elsewhere."""
    src, dst, _, width = plan
    B, _, d = X.shape
    out = cupy.zeros((B * width, d), dtype=X.dtype)
    out[dst] = X.reshape(-1, d)[src]
    return out.reshape(B, width, d)


def _expand(G, plan, shape):
    """Inverse of :func:`_compact` for gradients: (B, width, d) -> zeros-filled ``shape``."""
    src, dst, _, _ = plan
    d = shape[-1]
    out = cupy.zeros((shape[0] * shape[1], d), dtype=G.dtype)
    out[src] = G.reshape(-1, d)[dst]
    return out.reshape(shape)


def _dwa_dtw(X, Y, mask_s, mask_t, gamma, A, positions, band, alpha, w0, kappa, rho,
             need_grad):
    _native(X=X, Y=Y, mask_s=mask_s, mask_t=mask_t, A=A)
    a = V.dwa_dtw_args(X, Y, mask_s, mask_t, gamma, A, positions, band, alpha, w0, kappa, rho,
                       to_numpy=_to_host)
    _float_dtype(X=X, Y=Y, A=A)
    dt = X.dtype
    ps, pt = _gather_plan(a.mask_s, a.positions), _gather_plan(a.mask_t, a.positions)
    dev = lambda v: cupy.asarray(v)          # noqa: E731  (O(B N) uploads of the plan)
    ps = (dev(ps[0]), dev(ps[1]), ps[2], ps[3])
    pt = (dev(pt[0]), dev(pt[1]), pt[2], pt[3])
    Xc, Yc = _compact(X, ps), _compact(Y, pt)
    lx, ly = dev(ps[2]), dev(pt[2])
    P = None
    if a.use_band:
        B, N, M = a.B, a.N, a.M
        ns, nt = ps[3], pt[3]
        # A[b, s_k, t_l] for the used (k, l): rows then columns, gathered with the same plans
        rows = cupy.zeros((B * ns, M), dtype=A.dtype)
        rows[ps[1]] = A.reshape(B * N, M)[ps[0]]
        rows = rows.reshape(B, ns, M).transpose(0, 2, 1).reshape(B * M, ns)
        cols = cupy.zeros((B * nt, ns), dtype=A.dtype)
        cols[pt[1]] = rows[pt[0]]
        Ac = cupy.ascontiguousarray(cols.reshape(B, nt, ns).transpose(0, 2, 1))
        P = cupy.ascontiguousarray(_band(Ac, lx, ly, *a.band).astype(dt, copy=False))
    if need_grad:
        v, dXc, dYc = soft_dtw_divergence_grad(Xc, Yc, a.gamma, kind="cosine", len_x=lx,
                                               len_y=ly, penalty=P)
        value = cupy.asarray(v.sum()).astype(dt, copy=False)
        return (value, _expand(dXc, ps, tuple(X.shape)),
                _expand(dYc, pt, tuple(Y.shape)))
    v = soft_dtw_divergence(Xc, Yc, a.gamma, kind="cosine", len_x=lx, len_y=ly, penalty=P)
    return cupy.asarray(v.sum()).astype(dt, copy=False)


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
    _native(token_logps=token_logps, seg=seg)
    reduce = V.choice(reduce, "reduce", V.SPAN_REDUCES)
    V.float_array(token_logps, "token_logps")
    _, R = V.span_seg(seg, tuple(token_logps.shape), num_spans, to_numpy=_to_host)
    _float_dtype(token_logps=token_logps)
    dt = token_logps.dtype
    K = int(token_logps.shape[-1])
    lead = tuple(token_logps.shape[:-1])
    x = cupy.ascontiguousarray(token_logps).reshape(-1, K)
    rows = x.shape[0]
    shared = tuple(seg.shape) != tuple(token_logps.shape) or len(token_logps.shape) == 1
    s = cupy.ascontiguousarray(seg.astype(np.int64, copy=False)).reshape(-1)
    need_cnt = reduce != "sum"
    out = cupy.zeros((rows, R), dtype=np.float64)
    cnt = cupy.zeros((rows, R) if need_cnt else (1,), dtype=np.float64)
    total = rows * K
    if total and R:
        name = _kernels.kernel_name("ct_span_sum", dt)
        blocks = max(1, min(-(-total // SCATTER_THREADS), GRID_CAP))
        _kernels.launch(name, (blocks,), (SCATTER_THREADS,),
                        (x, s, np.int64(rows), np.int32(K), np.int32(R), np.int32(shared),
                         np.int32(need_cnt), out, cnt))
    if reduce == "mean":
        out = out * cupy.where(cnt > 0, 1.0 / cupy.maximum(cnt, 1.0), 0.0)
    elif reduce == "padded_mean":
        width = cnt.max() if cnt.size else cupy.zeros((), dtype=np.float64)   # 0-d, on device
        out = out * (1.0 / cupy.maximum(width, 1.0))
    return out.astype(dt).reshape(lead + (R,))


def span_weights(lp_pos, lp_neg, mu, *, k=1.0, lo=-0.5, hi=1.5, decimals=2):
    """``w = k exp(mu clip(lp_pos - lp_neg, lo, hi))`` rounded half to even at ``decimals``
    (None: no rounding). ``mu`` is +1 (chosen) / -1 (rejected), a number or a CuPy array
    broadcasting against the log-probs (e.g. a (2B, 1) column)."""
    k, lo, hi, decimals = V.span_weight_args(k, lo, hi, decimals)
    _native(lp_pos=lp_pos, lp_neg=lp_neg)
    V.span_logp_pair(lp_pos, lp_neg)
    _float_dtype(lp_pos=lp_pos, lp_neg=lp_neg)
    dt = lp_pos.dtype
    if isinstance(mu, numbers.Real) and not isinstance(mu, bool):
        mu_shape, mu_d = (), dt.type(mu)
    else:
        _native(mu=mu)
        mu_shape, mu_d = tuple(mu.shape), mu.astype(dt, copy=False)
    try:
        np.broadcast_shapes(mu_shape, tuple(lp_pos.shape))
    except ValueError:
        raise ValueError(f"mu of shape {mu_shape} does not broadcast against lp_pos "
                         f"{tuple(lp_pos.shape)}") from None
    w = k * cupy.exp(mu_d * cupy.clip(lp_pos - lp_neg, lo, hi))
    w = w.astype(dt, copy=False)
    return w if decimals is None else cupy.round(w, decimals)


# --------------------------------------------------------------------------- sec. 9 CTPD


def _ctpd(ellS, ellT, w, beta):
    _native(ellS=ellS, ellT=ellT, w=w)
    _, _, beta = V.ctpd_args(ellS, ellT, w, beta)
    _float_dtype(ellS=ellS)
    logp = (w * ellS).sum(axis=1)                                     # sum_r w l^S
    ref = (w * ellT).sum(axis=1)                                      # sum_r w l^T
    loss, cr, rr, dlogp = _dpo(logp, ref, beta, "sigmoid", 0.0, xp=cupy)
    return cupy.asarray(loss), cr, rr, dlogp[:, None] * w


def ctpd_loss(ellS, ellT, w, beta=0.1):
    """Teacher-anchored DPO on span log-probs (2B, R), chosen first:
    ``(loss, rewards_w (B,), rewards_l (B,))`` with rewards ``beta Delta``."""
    loss, cr, rr, _ = _ctpd(ellS, ellT, w, beta)
    return loss, cr, rr


def ctpd_loss_grad(ellS, ellT, w, beta=0.1):
    """``(loss, d_ellS (2B, R))`` with ``d_ellS = w dL/dDelta`` (every span of a row shares
    its row's ``dL/dDelta = +-beta sig(-beta d) / B``)."""
    loss, _, _, d = _ctpd(ellS, ellT, w, beta)
    return loss, d


# --------------------------------------------------------------------------- sec. 10 TIS-DPO


def _tis(logits, ref_logits, labels, mask, weights, beta, alpha, token_level, need_grad):
    _native(logits=logits, ref_logits=ref_logits, labels=labels, mask=mask, weights=weights)
    R, T, Vn, beta, alpha, m_host = V.tis_dpo_args(logits, ref_logits, labels, mask, weights,
                                                   beta, alpha, to_numpy=_to_host)
    _float_dtype(logits=logits, ref_logits=ref_logits, weights=weights)
    dt = logits.dtype
    m = _as_bool(mask)
    y = cupy.ascontiguousarray(cupy.where(m, labels, 0).astype(np.int64).reshape(-1))
    z = cupy.ascontiguousarray(logits).reshape(-1, Vn)
    zr = cupy.ascontiguousarray(ref_logits).reshape(-1, Vn)
    rows = R * T
    a_tok, K_tok = cupy.empty(rows, dtype=dt), cupy.empty(rows, dtype=dt)
    lsep, lseq = cupy.empty(rows, dtype=dt), cupy.empty(rows, dtype=dt)
    _row_launch("ct_tis_fwd", rows, (z, zr, y, np.int64(rows), np.int32(Vn), a_tok, K_tok,
                                     lsep, lseq))
    om = weights.astype(dt, copy=False) * m.astype(dt)                  # omega m
    u = (om * a_tok.reshape(R, T)).sum(axis=1)
    Ks = (om * K_tok.reshape(R, T)).sum(axis=1)
    al = alpha if token_level else 0.0
    loss, _, _, g = _dpo(u - al * Ks, cupy.zeros(R, dtype=dt), beta, "sigmoid", 0.0, xp=cupy)
    values = u - Ks if token_level else u
    B = R // 2
    rewards_w, rewards_l = beta * values[:B], beta * values[B:]
    loss = cupy.asarray(loss)
    if not need_grad:
        return loss, rewards_w, rewards_l, None
    c = cupy.ascontiguousarray((g[:, None] * om).astype(dt, copy=False).reshape(-1))
    dz = cupy.empty((rows, Vn), dtype=dt)
    _row_launch("ct_tis_grad", rows, (z, zr, y, np.int64(rows), np.int32(Vn), lsep, lseq, K_tok,
                                      c, dt.type(al), dz))
    return loss, rewards_w, rewards_l, dz.reshape(R, T, Vn)


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
