r"""Antibody and IBDR (``safety_ensembles.md``) with Numba-CUDA kernels.

Same functions, signatures and results as :mod:`refimpl.safety_ensembles` (the references
:mod:`refimpl._antibody` and :mod:`refimpl._ibdr`); see the package docstring for array kinds and
the stream. float32 or float64, one dtype per call; results have the input dtype. Scalars
(``loss``, ``LD``, ``d_raw``, ``lam_new``, ``lam_raw``) are 0-d device arrays (views of a small
result array), except :func:`ibdr_dual_update`, which returns a Python float (``lam`` is a host
hyperparameter of the optimiser; a 0-d ``distance`` array is read once). ``n_tok`` is an int64
device array. bfloat16 (the token CE ops) arrives upcast to float32 (:mod:`backends._bf16`).

Kernels (``se_*`` in :mod:`._kernels`, one signature per dtype in ``_SIGNATURES``):

- Flat vectors (``harmful_perturb``, ``antibody_lambda``, ``antibody_align_direction``,
  ``dro_ascent``), two fused passes. Pass 1 ``se_vec_partial``: grid-stride, one row of partial
  sums per block (no atomics) of ``<g_s, d>``, ``||d||^2``, ``||g_s||^2`` with ``d = g_h - g_p``
  formed on the fly, plus one non-finite flag per input vector; ``se_vec_final`` (one block)
  reduces the rows and computes the scalar on the device (lam_raw / lam_new; the perturbation
  scale ``-alpha / (||g_h|| + eps)``; the DRO scale ``min(1, clip / (||g|| + 1e-6)) / (2 lam)``).
  Pass 2 ``se_vec_apply``: grid-stride ``g = g_s + lam d + lam2 g_r`` / ``theta + s g``, the
  scale read from device memory. Sums accumulate in the input dtype (float32 for float32).
  Geometry: :data:`VEC_BLOCK` threads, at most :data:`VEC_GRID` blocks (simulator: 8 x 2).
- ``antibody_weights``: ``se_weights``, one block (online LSE of the scores, then w).
- ``token_mean_nll`` / ``weighted_token_ce(_grad)``: the preference family's fused linear
  log-softmax (:mod:`.preference`: ``_Head(..., paired=False)``, ``_forward``, ``_backward``,
  ``token_coef`` — the ONE streaming LSE of the backend) with per-row coefficients
  ``dlogp_r`` (``se_wce_coef``: code ``-w_r / max(sum_i w_i N_i, 1)``, paper
  ``-w_r / max(N_r, 1)``) spread over each row's tokens; the loss is ``<dlogp, l>`` (``se_dot``)
  with ``l`` the row sums of token log-probs; ``se_nll`` gives ``-l_r / max(N_r, 1)``.
- IBDR (``dpp_logdet_diversity``, ``ibdr_loss(_grad)``): ``se_ibdr_fwd`` one block per batch
  row b (per-particle online LSE and of Fbar, CE term, finiteness / min / label statistics, the
  Gram of the wrong-class vectors Q accumulated in **float64**); ``se_ibdr_chol`` (float64, one
  thread per b: norms with F.normalize's clamp, ``M = Qh Qh^T + jitter I``, Cholesky, log det —
  float32 kernels take a float32 log of each float64 pivot — or det for the paper);
  ``se_ibdr_inv`` (float64: ``M^-1``); ``se_ibdr_coef`` (``g_Q_k = sum_j C_kj Q_j``
  coefficients; ``s_k = <Q_k, g_Q_k>`` in closed form: 0 when projected,
  ``w (1 - jitter Minv_kk)`` under the clamp; the cancelling ``1 - jitter Minv_kk`` in float64);
  ``se_ibdr_grad`` one block per b (CE gradient + softmax VJP of the chain); ``se_finish``
  (one block) the means. The float64 part is split over small kernels so that each float32
  variant keeps a handful of float64 instructions (the backend's PTX test bounds them).
  **Backend limit:** K <= :data:`._kernels.SE_KMAX` = 8 particles (compile-time local/shared
  arrays); larger K raises ValueError (use the torch/cupy backends or the reference).
- ``prediction_distance``: ``se_pred_dist`` one block per row (two online LSEs, the squared
  difference of the softmaxes), ``se_finish`` the mean.

Host reads (each documented; none is O(data) except labels, as in the preference family):

1. validation, ONE small read per call: the flat-vector ops read the 11-word result of
   ``se_vec_final`` (the non-finite flags of the gradient vectors; the scalars stay on the
   device); IBDR reads the 7-word result of ``se_finish`` (non-finite, min X, min/max y,
   Cholesky failure: computed by the fused kernels themselves, no extra pass);
   ``antibody_weights`` / ``weighted_token_ce`` the 2-word flags of ``se_weights`` /
   ``se_wce_coef``.
2. a 0-d ``lam_ema`` (Antibody) or ``lam`` (``dro_ascent``) / ``lam``, ``distance``
   (``ibdr_dual_update``) array is read once by the shared validator (8 bytes).
3. token ops: ``labels`` (O(B T)) once for the ignore_index validation, then the preference
   head reads labels and the uploaded mask once more (its documented read; the host copies
   build the compacted token index).
"""

from __future__ import annotations

import numpy as np

from refimpl import _validate as V

from . import _kernels as K
from . import preference as P

__all__ = [
    "harmful_perturb", "antibody_lambda", "antibody_align_direction", "token_mean_nll",
    "antibody_weights", "weighted_token_ce", "weighted_token_ce_grad",
    "dpp_logdet_diversity", "ibdr_loss", "ibdr_loss_grad", "dro_ascent", "prediction_distance",
    "ibdr_dual_update",
]

VEC_BLOCK = 256           # threads of the flat-vector kernels (a power of 2 <= SE_RED)
VEC_GRID = 1024           # most blocks of pass 1 (rows of partial sums)
IBDR_BLOCK = 128          # most threads per batch row of the IBDR / distance kernels
SCALAR_BLOCK = 128        # threads of the per-thread-per-row float64 IBDR kernels

_LAM_MODE = {"cosine": 0, "kkt": 1}
_IBDR_MODE = {"code": 0, "paper": 1}
_CASTS = {"int8": "cd_cast_i8", "int16": "cd_cast_i16", "int32": "cd_cast_i32",
          "uint8": "cd_cast_u8", "uint16": "cd_cast_u16", "uint32": "cd_cast_u32",
          "uint64": "cd_cast_u64"}


def _pow2_threads(work: int, cap: int) -> int:
    return K.pow2_floor(K.threads(work, cap))


def _view0(arr, i: int, like):
    """Entry ``i`` of a device array as a 0-d device array of ``like``'s kind."""
    return K.wrap(arr[i:i + 1].reshape(()), like)


# --------------------------------------------------------------------------- flat vectors


class _Vec:
    """Pass 1 and the final reduction of the flat-vector ops, launched lazily by the
    validator's ``finite`` hook (after the shape checks); one host read of the result."""

    def __init__(self, a, b=None, c=None, r=None):
        self.a, self.b, self.c, self.r = (K.device(x) for x in (a, b, c, r))
        self._orig = (a, b, c, r)
        self.host = None

    def run(self, dt: str):
        n = int(self.a.shape[0])
        nt = _pow2_threads(n, VEC_BLOCK)
        grid = max(1, min(K.ceil_div(n, nt), 2 if K.simulator() else VEC_GRID))
        self.dt = dt
        self.part = K.empty((grid, 7), dt)
        d1 = K.dummy(1, dt)
        K.launch("se_vec_partial", dt, (grid,), (nt,), 0, self.a,
                 d1 if self.b is None else self.b, d1 if self.c is None else self.c,
                 d1 if self.r is None else self.r, self.part, int(self.b is not None),
                 int(self.c is not None), int(self.r is not None))
        self.out = K.empty((11,), dt)
        self.final(0.0, 0.0, -1.0, 0)
        self.host = self.out.copy_to_host()        # THE one read of the validation

    def final(self, s1, s2, s3, mode):
        dt = self.dt
        nt = _pow2_threads(int(self.part.shape[0]), VEC_BLOCK)
        K.launch("se_vec_final", dt, (1,), (nt,), 0, self.part, K.dummy(1, dt), self.out,
                 K.scalar(dt, s1), K.scalar(dt, s2), K.scalar(dt, s3), int(mode), 0)

    def _slot(self, x):
        for slot, orig in enumerate(self._orig):
            if orig is x:
                return slot
        raise KeyError("array not registered")


def _vec(a, b=None, c=None, r=None):
    return _Vec(a, b, c, r)


def _apply(v: _Vec, mode: int, lam2: float, like):
    dt = v.dt
    n = int(v.a.shape[0])
    res = K.empty((n,), dt)
    nt = K.threads(n, VEC_BLOCK)
    grid = max(1, min(K.ceil_div(n, nt), 2 if K.simulator() else 65535))
    d1 = K.dummy(1, dt)
    if mode == 0:
        args = (v.a, v.b, v.c, v.r)
    else:
        args = (v.b, v.a, d1, d1)            # theta + s g: (theta, g) with g in pass 1's "a"
    K.launch("se_vec_apply", dt, (grid,), (nt,), 0, *args, v.out, res, K.scalar(dt, lam2), mode)
    return K.wrap(res, like)


def harmful_perturb(theta, g_h, alpha=0.1, *, eps=1e-7):
    """``theta' = theta - alpha g_h / (||g_h|| + eps)`` (P,): pass 1 reduces ||g_h||^2 (and
    g_h's finiteness), the scale is formed on the device, pass 2 writes theta'."""
    K.native(theta=theta, g_h=g_h)
    v = _vec(g_h)
    v.b = K.device(theta)         # pass 2 reads theta; pass 1 only g_h (has_b = 0 there)
    _, alpha, eps = V.antibody_perturb_args(K.meta(theta), K.meta(g_h), alpha, eps,
                                            finite=_finite_hook(v, g_h))
    v.final(alpha, eps, 0.0, 2)
    return _apply(v, 1, 0.0, theta)


def _finite_hook(v: _Vec, a):
    """The validators' ``finite``: pass 1 + final reduction on the first call, one read."""
    def finite(*xs):
        if v.host is None:
            b = v.b
            if v.c is None and v.r is None and v._orig[1] is None:
                v.b = None                     # norm-only pass (harmful_perturb, dro_ascent)
            v.run(V.dtype_name(K.meta(a)))
            v.b = b
        return tuple(bool(v.host[3 + v._slot(K.unmeta(x))] == 0) for x in xs)
    return finite


def antibody_lambda(g_s, d, lam_ema=None, *, eta=5.0, momentum=0.99, variant="cosine"):
    """``(lam_new, lam_raw)`` as 0-d device arrays: pass 1 and the final reduction only."""
    K.native(g_s=g_s, d=d)
    v = _vec(g_s, d)
    _, lam_ema, eta, m, variant = V.antibody_lambda_args(
        K.meta(g_s), K.meta(d), lam_ema, eta, momentum, variant, finite=_finite_hook(v, g_s),
        to_numpy=K.to_numpy)
    v.final(eta, m, -1.0 if lam_ema is None else lam_ema, _LAM_MODE[variant])
    return _view0(v.out, 0, g_s), _view0(v.out, 1, g_s)


def antibody_align_direction(g_s, g_h, g_p, g_r, lam_ema=None, *, eta=5.0, momentum=0.99,
                             lam2=0.05, variant="cosine"):
    """``(g (P,), lam_new, lam_raw)``: pass 1 reduces ``<g_s, d>``, ``||d||^2``, ``||g_s||^2``
    with ``d = g_h - g_p`` on the fly (and checks all four vectors), lam is computed on the
    device, pass 2 writes ``g = g_s + lam_new d + lam2 g_r`` reading lam from device memory."""
    K.native(g_s=g_s, g_h=g_h, g_p=g_p, g_r=g_r)
    v = _vec(g_s, g_h, g_p, g_r)
    _, lam_ema, eta, m, lam2, variant = V.antibody_align_args(
        *(K.meta(x) for x in (g_s, g_h, g_p, g_r)), lam_ema, eta, momentum, lam2, variant,
        finite=_finite_hook(v, g_s), to_numpy=K.to_numpy)
    v.final(eta, m, -1.0 if lam_ema is None else lam_ema, _LAM_MODE[variant])
    g = _apply(v, 0, lam2, g_s)
    return g, _view0(v.out, 0, g_s), _view0(v.out, 1, g_s)


def dro_ascent(theta, g, lam, *, clip=0.12):
    """``theta' = theta + g min(1, clip / (||g|| + 1e-6)) / (2 lam)``: pass 1 reduces ||g||^2,
    the scale is formed on the device, pass 2 writes theta'. A 0-d ``lam`` is read once."""
    K.native(theta=theta, g=g)
    v = _vec(g)
    v.b = K.device(theta)
    _, lam, clip = V.ibdr_ascent_args(K.meta(theta), K.meta(g), lam, clip,
                                      finite=_finite_hook(v, g), to_numpy=K.to_numpy)
    v.final(clip, lam, 0.0, 3)
    return _apply(v, 1, 0.0, theta)


# --------------------------------------------------------------------------- weights


def antibody_weights(nll_c, nll_r, *, tau=1.0):
    """``w = softmax((nll_r - nll_c) / tau)`` over the batch: one block (``se_weights``)."""
    K.native(nll_c=nll_c, nll_r=nll_r)
    st = {}

    def finite(c, r):
        dt = V.dtype_name(c)
        n = int(c.shape[0])
        st["w"] = K.empty((n,), dt)
        info = K.empty((2,), dt)
        K.launch("se_weights", dt, (1,), (_pow2_threads(n, K.SE_RED),), 0, K.device(nll_c),
                 K.device(nll_r), st["w"], info, K.scalar(dt, 1.0 / st["tau"]))
        h = info.copy_to_host()                        # THE one read
        return bool(h[0] == 0), bool(h[1] == 0)

    tau = V.positive_float(tau, "tau")
    st["tau"] = tau
    V.antibody_weights_args(K.meta(nll_c), K.meta(nll_r), tau, finite=finite)
    return K.wrap(st["w"], nll_c)


# --------------------------------------------------------------------------- token ops


def _head(H, W, labels, b, ignore_index, token_chunk, vocab_chunk):
    """The preference head over the tokens with ``labels != ignore_index`` (paired=False)."""
    K.native(H=H, W=W, labels=labels, b=b)
    for name, x in (("H", H), ("W", W), ("b", b)):
        if x is not None:
            V.float_array(K.meta(x), name)
    mask, (tc, vc) = V.antibody_head_args(K.meta(H), K.meta(W), K.meta(labels), ignore_index,
                                          token_chunk, vocab_chunk, to_numpy=K.to_numpy)
    return P._Head(H, W, labels, K.upload(np.ascontiguousarray(mask)), b, tc, vc, paired=False)


def token_mean_nll(H, W, labels, b=None, *, ignore_index=-100, token_chunk=None,
                   vocab_chunk=None):
    """``(nll (B,), n_tok (B,) int64)``: the preference forward sweep, row sums of the token
    log-probs, ``nll = -sum / max(N, 1)`` (``se_nll``)."""
    hd = _head(H, W, labels, b, ignore_index, token_chunk, vocab_chunk)
    _, tok = P._forward(hd)
    sums = hd.seq(tok, False)
    R = hd.shape.R
    counts = K.upload(hd.counts.astype(np.int64))
    nll = K.empty((R,), hd.dt)
    nt = K.threads(R, 256)
    K.launch("se_nll", hd.dt, (K.ceil_div(R, nt),), (nt,), 0, sums, counts, nll)
    return K.wrap(nll, H), K.wrap(counts, H)


def _weighted(H, W, labels, w, b, ignore_index, variant, token_chunk, vocab_chunk):
    hd = _head(H, W, labels, b, ignore_index, token_chunk, vocab_chunk)
    variant = V.antibody_ce_variant(variant)
    K.native(w=w)
    R = hd.shape.R
    st = {}

    def stats(wm):
        dt = hd.dt
        st["counts"] = K.upload(hd.counts.astype(np.int64))
        st["dlogp"] = K.empty((R,), dt)
        info = K.empty((2,), dt)
        K.launch("se_wce_coef", dt, (1,), (_pow2_threads(R, K.SE_RED),), 0, K.device(w),
                 st["counts"], st["dlogp"], info, 0 if variant == "code" else 1)
        h = info.copy_to_host()                        # THE one read of w's checks
        return bool(h[0] == 0), float(h[1])

    V.antibody_sample_weights(K.meta(w), R, K.meta(H), stats=stats)
    lse, tok = P._forward(hd)
    l = hd.seq(tok, False)
    loss = K.zeros((1,), hd.dt)
    if hd.n:
        K.launch("se_dot", hd.dt, (1,), (_pow2_threads(R, K.SE_RED),), 0, st["dlogp"], l, loss)
    return hd, lse, st["dlogp"], loss


def weighted_token_ce(H, W, labels, w, b=None, *, ignore_index=-100, variant="code",
                      token_chunk=None, vocab_chunk=None):
    """Weighted token CE (0-d): ``sum_r dlogp_r l_r`` with the per-row coefficients of
    ``se_wce_coef`` and the preference forward sweep's row log-prob sums ``l``."""
    hd, _, _, loss = _weighted(H, W, labels, w, b, ignore_index, variant, token_chunk,
                               vocab_chunk)
    return K.wrap(loss.reshape(()), H)


def weighted_token_ce_grad(H, W, labels, w, b=None, *, ignore_index=-100, variant="code",
                           token_chunk=None, vocab_chunk=None):
    """``(L, dH, dW, db or None)``: the preference backward sweep with the per-token
    coefficients ``c_k = dlogp_r`` (``token_coef``)."""
    hd, lse, dlogp, loss = _weighted(H, W, labels, w, b, ignore_index, variant, token_chunk,
                                     vocab_chunk)
    c = hd.token_coef(dlogp, False)
    dHc, dW, db = P._backward(hd, lse, c)
    return (K.wrap(loss.reshape(()), H), K.wrap(hd.full_dH(dHc), H), K.wrap(dW, H),
            None if db is None else K.wrap(db, H))


# --------------------------------------------------------------------------- IBDR


def _labels64(y):
    """``y`` as an int64 device vector (other integer dtypes widened by ``cd_cast_*``)."""
    y = K.device(y)
    dt = V.dtype_name(y)
    if dt == "int64":
        return y
    n = int(y.shape[0])
    out = K.empty((1, n), "int64")
    if K.simulator():
        y2 = y.reshape((1, n)) if y.is_c_contiguous() else y[None]
    else:
        st = int(y.strides[0])
        y2 = K._view(y, (1, n), (st * max(n, 1), st))
    K.launch(_CASTS[dt], "float64", (1, K.ceil_div(n, 32)), (1, 32) if not K.simulator() else (1, 4),
             0, y2, out)
    return out[0]


class _Ibdr:
    """The fused IBDR passes, launched by the validator's ``stats`` hook (after the shape
    checks); the one read is the ``se_finish`` result (7 words)."""

    def __init__(self, X, y, mode, want_grad, has_div, jitter, alpha):
        self.X, self.y0 = X, y
        self.mode, self.want_grad, self.has_div = mode, want_grad, has_div
        self.jitter, self.alpha = jitter, alpha
        self.host = None

    def stats(self, xm, ym):
        dt = V.dtype_name(xm)
        Kp, B, C = (int(s) for s in xm.shape)
        if self.has_div and Kp > K.SE_KMAX:
            raise ValueError(f"the numba_cuda backend supports K <= {K.SE_KMAX} particles for "
                             f"the diversity term (fused kernels with compile-time local "
                             f"arrays), got K = {Kp}; use the torch/cupy backend or the "
                             f"reference")
        X = K.device(self.X)
        y = _labels64(self.y0)
        self.dt = dt
        nt = _pow2_threads(C, IBDR_BLOCK)
        lse = K.empty((B, Kp + 1), dt)
        kk = Kp * Kp if self.has_div else 1
        Gm = K.empty((B, kk), "float64")
        terms = K.empty((B, 7), dt)
        K.launch("se_ibdr_fwd", dt, (B,), (nt,), 0, X, y, lse, Gm, terms, self.mode,
                 int(self.has_div))
        st = K.threads(B, SCALAR_BLOCK)
        sgrid = (min(K.ceil_div(B, st), 2 if K.simulator() else 65535),)
        if self.has_div:
            nrm = K.empty((B, 2 * Kp + 1), "float64")
            K.launch("se_ibdr_chol", dt, sgrid, (st,), 0, Gm, nrm, terms,
                     float(self.jitter), Kp, self.mode)
        out = K.empty((7,), dt)
        K.launch("se_finish", dt, (1,), (_pow2_threads(B, K.SE_RED),), 0, terms, out,
                 K.scalar(dt, self.alpha if self.mode != 2 else 0.0))
        self.out = out
        if self.want_grad:
            dX = K.empty((Kp, B, C), dt)
            Cg = K.empty((B, kk), dt)
            sk = K.empty((B, Kp if self.has_div else 1), dt)
            if self.has_div:
                K.launch("se_ibdr_inv", dt, sgrid, (st,), 0, Gm, Kp)
                K.launch("se_ibdr_coef", dt, sgrid, (st,), 0, Gm, nrm, Cg, sk,
                         float(self.jitter), K.scalar(dt, self.alpha), Kp, self.mode)
            K.launch("se_ibdr_grad", dt, (B,), (nt,), 0, X, y, lse, Cg, sk, dX, self.mode,
                     int(self.has_div))
            self.dX = dX
        h = self.host = out.copy_to_host()           # THE one read
        return bool(h[2] == 0), float(h[4]), int(h[5]), int(h[6])

    def check_cholesky(self):
        if self.has_div and self.host[3] != 0:
            raise V.ibdr_gram_not_positive_definite(self.jitter)


def dpp_logdet_diversity(probs, y, *, jitter=1e-7):
    """``LD = mean_b log det(Qh_b Qh_b^T + jitter I)`` (0-d): ``se_ibdr_fwd`` (mode 2, the
    float64 Gram), ``se_ibdr_chol``, ``se_finish``."""
    K.native(probs=probs, y=y)
    # jitter is validated after the arrays (the reference's order); an invalid one only
    # makes the launched passes use a placeholder before the validator raises
    run = _Ibdr(probs, y, 2, False, True, jitter if _is_real(jitter) else 1.0, 0.0)
    _, _, _, jitter = V.ibdr_dpp_args(K.meta(probs), K.meta(y), jitter, stats=run.stats)
    run.check_cholesky()
    return _view0(run.out, 1, probs)


def _is_real(x) -> bool:
    try:
        return bool(np.isfinite(float(x)) and float(x) > 0) and not isinstance(x, bool)
    except (TypeError, ValueError):
        return False


def _ibdr(logits, y, alpha_div, jitter, variant, want_grad):
    K.native(logits=logits, y=y)
    st = {}

    def stats(xm, ym):
        # ibdr_loss_args validated the options before the arrays (the reference's order)
        alpha = float(alpha_div)
        run = _Ibdr(logits, y, _IBDR_MODE[variant], want_grad, alpha != 0, float(jitter), alpha)
        st["run"] = run
        return run.stats(xm, ym)

    V.ibdr_loss_args(K.meta(logits), K.meta(y), alpha_div, jitter, variant, stats=stats)
    run = st["run"]
    run.check_cholesky()
    return run


def ibdr_loss(logits, y, *, alpha_div=0.02, jitter=1e-7, variant="code"):
    """IBDR's loss (0-d): CE of the averaged logits (code) or mean per-particle CE (paper),
    minus ``alpha_div`` times the mean log det (code) or det (paper) of the particles' Grams."""
    run = _ibdr(logits, y, alpha_div, jitter, variant, False)
    return _view0(run.out, 0, logits)


def ibdr_loss_grad(logits, y, *, alpha_div=0.02, jitter=1e-7, variant="code"):
    """``(loss, dloss/dlogits (K, B, C))``: the forward passes plus ``se_ibdr_inv``,
    ``se_ibdr_coef`` and ``se_ibdr_grad`` (the chain rule to the logits)."""
    run = _ibdr(logits, y, alpha_div, jitter, variant, True)
    return _view0(run.out, 0, logits), K.wrap(run.dX, logits)


def prediction_distance(logits_bar_new, logits_bar_old):
    """``d_raw = mean_b ||softmax(new_b) - softmax(old_b)||_2`` (0-d): ``se_pred_dist`` one
    block per row, ``se_finish`` the mean; finiteness from the same result (one read)."""
    K.native(logits_bar_new=logits_bar_new, logits_bar_old=logits_bar_old)
    st = {}

    def finite(nm, om):
        dt = V.dtype_name(nm)
        B, C = (int(s) for s in nm.shape)
        terms = K.empty((B, 7), dt)
        K.launch("se_pred_dist", dt, (B,), (_pow2_threads(C, IBDR_BLOCK),), 0,
                 K.device(logits_bar_new), K.device(logits_bar_old), terms)
        out = st["out"] = K.empty((7,), dt)
        K.launch("se_finish", dt, (1,), (_pow2_threads(B, K.SE_RED),), 0, terms, out,
                 K.scalar(dt, 0.0))
        h = out.copy_to_host()                       # THE one read
        return bool(h[2] == 0), bool(h[3] == 0)

    V.ibdr_prediction_pair(K.meta(logits_bar_new), K.meta(logits_bar_old), finite=finite)
    return _view0(st["out"], 0, logits_bar_new)


def ibdr_dual_update(lam, distance, lr, *, bound=0.03, temp=0.01, lo=0.5, hi=5.0,
                     variant="code"):
    """One dual step on the host (a Python float, as in every backend); a 0-d ``lam`` /
    ``distance`` device array is read once (8 bytes each)."""
    from refimpl import _ibdr

    for name, x in (("lam", lam), ("distance", distance)):
        if hasattr(x, "shape") and hasattr(x, "dtype"):
            K.native(**{name: x})
    lam = _host_scalar(lam)
    distance = _host_scalar(distance)
    return float(_ibdr.ibdr_dual_update(lam, distance, lr, bound=bound, temp=temp, lo=lo, hi=hi,
                                        variant=variant))


def _host_scalar(x):
    """A 0-d (or one-element) device array as a host NumPy array (one read); other values
    unchanged (the reference validates both)."""
    if hasattr(x, "shape") and hasattr(x, "dtype") and K.is_native(x):
        return np.asarray(K.to_numpy(x))
    return x
