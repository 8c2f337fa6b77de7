r"""Antibody and IBDR (safety_ensembles.md) on CuPy arrays.

Same functions, signatures and validation messages as :mod:`refimpl.safety_ensembles`.
Inputs are ``cupy.ndarray`` (other array kinds are refused with a ``TypeError``), float32 or
float64; results are CuPy arrays of the input dtype, scalar results 0-d CuPy arrays (``loss``,
``lam_new``, ``lam_raw``, ``LD``, ``d_raw``), ``n_tok`` int64 — except
:func:`ibdr_dual_update`, which returns a Python float (lam is a host hyperparameter of the
optimiser in the official code).

Kernels (``_kernels.py``, module ``safety``):

- Flat vectors (``harmful_perturb``, ``antibody_lambda``, ``antibody_align_direction``,
  ``dro_ascent``): pass 1 is ``se_flat_partial`` (``FLAT_THREADS`` threads per block, at most
  ``FLAT_GRID_CAP`` blocks grid-striding over P; per-block partials of ``<g_s, d>``,
  ``||d||^2``, ``||g_s||^2`` with ``d = g_h - g_p`` formed on the fly, and the non-finite counts
  of every gradient — g_r's check is folded into this pass, so g_r is read once more only by
  pass 2) followed by ``se_flat_finish`` (ONE block of ``FINISH_THREADS`` threads folds the
  partials in a fixed order — deterministic — and computes lam_raw, the EMA lam_new, or the
  axpy coefficient ``-alpha / (||g_h|| + eps)`` / ``min(1, clip / (||g|| + 1e-6)) / (2 lam)``
  ON THE DEVICE); pass 2 is ``se_align_apply`` / ``se_axpy_apply`` (elementwise, grid-stride,
  reading the scalar from device memory). Sums accumulate in the input dtype (float32 for
  float32 input). ``antibody_lambda`` runs pass 1 only.
- IBDR (``ibdr_loss``, ``ibdr_loss_grad``, ``dpp_logdet_diversity``): ``se_ibdr_rows``, one
  thread block per batch row b (``32 * min(IBDR_WARPS, ceil(C / 32))`` threads, at most
  ``IBDR_GRID_CAP`` blocks grid-striding over b): the K particle softmaxes over C (block max
  and sum reductions, input dtype), the CE of the mean logits (code) or the mean per-particle
  CE (paper), the wrong-class Gram ``sum_{c != y} P_ic P_jc`` accumulated in float64, the
  F.normalize scaling, ``M_b = Qh Qh^T + jitter I`` and its Cholesky, logdet and inverse in
  float64 in shared memory (thread 0; K <= ``SE_KMAX`` = 8), and the chain rule to dlogits
  (the projection terms ``<qh_k, g_k> = 2 w (M^-1 G)_kk`` and ``<P_k, gP_k>`` come from the
  Gram in closed form, so the gradient needs one more sweep over the row only). Per-row CE and
  logdet (det for the paper variant) go to a (B, 5) float64 array; the means are CuPy
  reductions. ``K > 8`` raises ``ValueError`` (the official runs use K = 4, the paper 3-5; no
  library fallback — documented deviation).
- ``prediction_distance``: ``se_pred_dist``, one warp per row (``ROW_WARPS`` warps per block,
  at most ``GRID_CAP`` blocks), then a CuPy mean.

Token-level ops (``token_mean_nll``, ``weighted_token_ce(_grad)``) reuse the preference
family's machinery — THE streaming log-sum-exp of this backend: ``preference._Head(...,
paired=False)`` with ``mask = labels != ignore_index``, ``preference._forward`` (cuBLAS GEMM
per block + ``pref_lse_block``) and ``preference._backward`` (``pref_grad_block`` + GEMMs) with
the per-token coefficients ``c_k = -w_i / max(sum_j w_j N_j, 1)`` (code) or
``-w_i / max(N_i, 1)`` (paper); never an N x V array when chunks are set.

Host reads (each a small device-to-host copy; nothing else synchronises):

- flat-vector ops: ONE read of the non-finite counts of pass 1 (validation: "g_h has
  non-finite entries"), between pass 1 and pass 2; ``lam_ema`` / ``lam`` given as 0-d arrays
  are read once more by the validators (they are host hyperparameters: the value is then passed
  to the kernel as a scalar);
- IBDR losses: ONE read of (non-finite flag, min of the input, min / max of y, Cholesky
  failure) after the fused kernel (the kernel runs before the value checks; a label outside
  [0, C) is never used as an index);
- ``prediction_distance``, ``antibody_weights``, ``weighted_token_ce``: one read of the
  finiteness flags (and min of w); the token ops also read ``labels`` on the host (O(B T),
  :func:`refimpl._validate.ignore_labels`) and upload the mask for the preference head, which
  reads labels and mask once more (its own validation, O(B T));
- ``ibdr_dual_update``: ``lam`` / ``distance`` given as 0-d arrays are read once each.
"""

from __future__ import annotations

import numbers

import cupy
import numpy as np

from backends.cupy import _kernels
from backends.cupy import native as _native
from backends.cupy import preference as _pref
from refimpl import _ibdr as _ref_ibdr
from refimpl import _validate as V

__all__ = [
    "harmful_perturb", "antibody_lambda", "antibody_align_direction", "token_mean_nll",
    "antibody_weights", "weighted_token_ce", "weighted_token_ce_grad",
    "dpp_logdet_diversity", "ibdr_loss", "ibdr_loss_grad", "dro_ascent", "prediction_distance",
    "ibdr_dual_update",
]

FLAT_THREADS = 256       # threads per block of the flat-vector passes
FLAT_GRID_CAP = 1024     # at most this many blocks (partials) in pass 1
APPLY_GRID_CAP = 8192    # at most this many blocks in pass 2
FINISH_THREADS = 256     # the one block of se_flat_finish
IBDR_WARPS = 4           # at most this many warps per row block of se_ibdr_rows
IBDR_GRID_CAP = 65535    # at most this many row blocks (blocks then grid-stride over rows)
ROW_WARPS = 8            # warps (rows) per block of se_pred_dist
GRID_CAP = 4096
SE_KMAX = 8              # = SE_KMAX of the kernel source
SE_MAXW = 8              # = SE_MAXW of the kernel source (blocks of <= 256 threads)
NPART = 7                # = SE_NPART
CLIP_EPS = _ref_ibdr.CLIP_EPS

_FLAG_NAMES = {0: ("g_s", "g_h", "g_p", "g_r"), 1: ("g_s", "d"), 2: ("x",)}


def _launch(template, grid, block, args, shared_mem=0):
    _kernels.launch(_kernels.kernel_name(template, args[0].dtype), grid, block, args, shared_mem)


def _scalar(x):
    """A 0-d array (NumPy reductions give scalars; CuPy ones are already 0-d arrays)."""
    return cupy.asarray(x)


def _item0(x, i=0):
    """Element i of a 1-D device array as a 0-d array (a copy)."""
    return cupy.ascontiguousarray(x[i:i + 1]).reshape(())


def _native_scalar(**kw):
    """0-d arrays given for scalar arguments must be of this backend's kind too."""
    _native(**{k: v for k, v in kw.items() if hasattr(v, "shape") and hasattr(v, "dtype")})


def _float_dtype(**arrays):
    for name, x in arrays.items():
        if x is not None:
            V.float_array(x, name)


# --------------------------------------------------------------------------- flat passes


class _Flat:
    """Pass 1 of a flat-vector op. ``finite`` is handed to the validator: called after the
    shape and dtype checks, it launches ``se_flat_partial`` and reads the non-finite counts
    (the ONE host read of the call); :meth:`finish` then derives the step scalar on the device."""

    def __init__(self, mode, x, y=None, z=None, r=None):
        self.mode, self.arrays = mode, (x, y, z, r)
        self.part = None

    def finite(self, *xs):
        x, y, z, r = (a if a is None else cupy.ascontiguousarray(a) for a in self.arrays)
        y = x if y is None else y
        z = x if z is None else z
        r = x if r is None else r
        P = int(x.shape[0])
        blocks = max(1, min(-(-P // FLAT_THREADS), FLAT_GRID_CAP))
        self.part = cupy.empty(blocks * NPART, dtype=x.dtype)
        self.nparts, self.dtype = blocks, x.dtype
        self.xs = (x, y, z, r)
        _launch("se_flat_partial", (blocks,), (FLAT_THREADS,),
                (x, y, z, r, np.int64(P), np.int32(self.mode), self.part))
        counts = self.part.reshape(blocks, NPART)[:, 3:3 + len(xs)].sum(axis=0)
        bad = np.asarray(cupy.asnumpy(counts))                 # the one host read
        return tuple(not (v > 0 or v != v) for v in bad)

    def finish(self, mode, kkt=0, eta=0.0, momentum=0.0, lam_ema=None, a=0.0, e=0.0, f=0.0):
        T = self.dtype.type
        out = cupy.empty(8, dtype=self.dtype)
        has = 0 if lam_ema is None else 1
        _launch("se_flat_finish", (1,), (FINISH_THREADS,),
                (self.part, np.int32(self.nparts), np.int32(mode), np.int32(kkt), T(eta),
                 T(momentum), np.int32(has), T(0.0 if lam_ema is None else lam_ema), self.part,
                 T(a), T(e), T(f), out))
        return out


def _apply_grid(P):
    return (max(1, min(-(-P // FLAT_THREADS), APPLY_GRID_CAP)),), (FLAT_THREADS,)


def _axpy(x, g, coef):
    x = cupy.ascontiguousarray(x)
    g = cupy.ascontiguousarray(g)
    out = cupy.empty_like(x)
    grid, block = _apply_grid(int(x.shape[0]))
    _launch("se_axpy_apply", grid, block, (x, g, coef, np.int64(x.shape[0]), out))
    return out


def harmful_perturb(theta, g_h, alpha=0.1, *, eps=1e-7):
    """``theta' = theta - alpha g_h / (||g_h|| + eps)`` (P,): one norm reduction (pass 1, with
    g_h's finiteness check: one host read) and one elementwise pass reading the scale on the
    device."""
    _native(theta=theta, g_h=g_h)
    flat = _Flat(2, g_h)
    _, alpha, eps = V.antibody_perturb_args(theta, g_h, alpha, eps, finite=flat.finite)
    out = flat.finish(2, a=-alpha, e=eps)
    return _axpy(theta, g_h, out)


def _lambda_opts(variant, lam_ema, eta, momentum):
    return dict(kkt=int(variant == "kkt"), eta=eta, momentum=momentum, lam_ema=lam_ema)


def antibody_lambda(g_s, d, lam_ema=None, *, eta=5.0, momentum=0.99, variant="cosine"):
    """``(lam_new, lam_raw)`` as 0-d arrays: pass 1 reduces ``<g_s, d>``, ``||d||^2``,
    ``||g_s||^2`` (and the finiteness flags: one host read); one block folds the partials and
    computes lambda on the device. ``lam_ema`` (a number or a 0-d array, read once)."""
    _native(g_s=g_s, d=d)
    _native_scalar(lam_ema=lam_ema)
    flat = _Flat(1, g_s, d)
    _, lam_ema, eta, m, variant = V.antibody_lambda_args(g_s, d, lam_ema, eta, momentum, variant,
                                                         finite=flat.finite,
                                                         to_numpy=cupy.asnumpy)
    out = flat.finish(1, **_lambda_opts(variant, lam_ema, eta, m))
    return _item0(out, 0), _item0(out, 1)


def antibody_align_direction(g_s, g_h, g_p, g_r, lam_ema=None, *, eta=5.0, momentum=0.99,
                             lam2=0.05, variant="cosine"):
    """``(g (P,), lam_new, lam_raw)``, two fused passes: pass 1 (``d = g_h - g_p`` on the fly,
    the three sums and the four finiteness flags; lambda on the device), pass 2
    ``g = g_s + lam d + lam2 g_r`` reading lam from device memory. One host read (the flags)."""
    _native(g_s=g_s, g_h=g_h, g_p=g_p, g_r=g_r)
    _native_scalar(lam_ema=lam_ema)
    flat = _Flat(0, g_s, g_h, g_p, g_r)
    _, lam_ema, eta, m, lam2, variant = V.antibody_align_args(
        g_s, g_h, g_p, g_r, lam_ema, eta, momentum, lam2, variant, finite=flat.finite,
        to_numpy=cupy.asnumpy)
    out = flat.finish(0, **_lambda_opts(variant, lam_ema, eta, m))
    gs, gh, gp, gr = flat.xs
    g = cupy.empty_like(gs)
    grid, block = _apply_grid(int(gs.shape[0]))
    _launch("se_align_apply", grid, block,
            (gs, gh, gp, gr, out, gs.dtype.type(lam2), np.int64(gs.shape[0]), g))
    return g, _item0(out, 0), _item0(out, 1)


def dro_ascent(theta, g, lam, *, clip=0.12):
    """``theta' = theta + g min(1, clip / (||g|| + 1e-6)) / (2 lam)``: one norm reduction (with
    g's finiteness check: one host read) and one elementwise pass; ``lam`` given as a 0-d array
    is read once by the validation (``lam > 0``)."""
    _native(theta=theta, g=g)
    _native_scalar(lam=lam)
    flat = _Flat(2, g)
    _, lam, clip = V.ibdr_ascent_args(theta, g, lam, clip, finite=flat.finite,
                                      to_numpy=cupy.asnumpy)
    out = flat.finish(3, a=clip, e=CLIP_EPS, f=1.0 / (2.0 * lam))
    return _axpy(theta, g, out)


# --------------------------------------------------------------------------- token level


def _token_head(H, W, labels, b, ignore_index, token_chunk, vocab_chunk):
    _native(H=H, W=W, labels=labels, b=b)
    host = _pref._HostCopy()
    mask, chunks = V.antibody_head_args(H, W, labels, ignore_index, token_chunk, vocab_chunk,
                                        to_numpy=host)
    head = _pref._Head(H, W, labels, cupy.asarray(mask), b, paired=False)
    return head.prepare(*chunks)


def _row_counts(head):
    return cupy.asarray(head.counts.astype(np.int64))


def token_mean_nll(H, W, labels, b=None, *, ignore_index=-100, token_chunk=None, vocab_chunk=None):
    """``(nll (B,), n_tok (B,) int64)``: the preference forward sweep (online LSE) over the
    tokens with ``labels != ignore_index``; ``nll_i = -sum_t logp / max(N_i, 1)``."""
    head = _token_head(H, W, labels, b, ignore_index, token_chunk, vocab_chunk)
    tok, _ = _pref._forward(head, None)
    l, _ = head.seq(tok, False)
    n_tok = _row_counts(head)
    den = cupy.asarray(np.maximum(head.counts, 1).astype(head.dtype))
    return -l / den, n_tok


def antibody_weights(nll_c, nll_r, *, tau=1.0):
    """``w = softmax((nll_r - nll_c) / tau)`` over the batch (CuPy glue; one host read of the
    two finiteness flags)."""
    _native(nll_c=nll_c, nll_r=nll_r)

    def finite(a, c):
        flags = cupy.stack([cupy.isfinite(a).all(), cupy.isfinite(c).all()])
        return tuple(bool(v) for v in np.asarray(cupy.asnumpy(flags)))

    _, tau = V.antibody_weights_args(nll_c, nll_r, tau, finite=finite)
    _float_dtype(nll_c=nll_c, nll_r=nll_r)
    s = (nll_r - nll_c) / nll_c.dtype.type(tau)
    e = cupy.exp(s - s.max())
    return e / e.sum()


def _weighted(H, W, labels, w, b, ignore_index, variant, token_chunk, vocab_chunk):
    _native(H=H, W=W, labels=labels, b=b, w=w)
    head = _token_head(H, W, labels, b, ignore_index, token_chunk, vocab_chunk)
    variant = V.antibody_ce_variant(variant)

    def wstats(x):
        st = cupy.stack([cupy.isfinite(x).all().astype(np.float64), x.min().astype(np.float64)])
        ok, lo = np.asarray(cupy.asnumpy(st))
        return bool(ok), float(lo)

    V.antibody_sample_weights(w, head.shape.R, H, stats=wstats)
    dt = head.dtype
    w = w.astype(dt, copy=False)
    if variant == "code":
        den = cupy.maximum(w @ _row_counts(head).astype(dt), dt.type(1))   # 0-d, on the device
        per_row = w / den
    else:
        per_row = w / cupy.asarray(np.maximum(head.counts, 1).astype(dt))
    tok, lse = _pref._forward(head, None)
    c = cupy.ascontiguousarray(-per_row[head.row])          # dL/dlogp per active token
    loss = _scalar((c * tok).sum()) if head.n else cupy.zeros((), dtype=dt)
    return head, lse, c, loss


def weighted_token_ce(H, W, labels, w, b=None, *, ignore_index=-100, variant="code",
                      token_chunk=None, vocab_chunk=None):
    """Weighted token CE (0-d): code ``sum_i w_i sum_t m CE / max(sum_i w_i N_i, 1)``, paper
    ``sum_i w_i sum_t m CE / max(N_i, 1)``; the preference forward sweep."""
    return _weighted(H, W, labels, w, b, ignore_index, variant, token_chunk, vocab_chunk)[-1]


def weighted_token_ce_grad(H, W, labels, w, b=None, *, ignore_index=-100, variant="code",
                           token_chunk=None, vocab_chunk=None):
    """``(L, dH, dW, db or None)``: the preference backward sweep with the per-token
    coefficients ``c_k = dL/dlogp_k``."""
    head, lse, c, loss = _weighted(H, W, labels, w, b, ignore_index, variant, token_chunk,
                                   vocab_chunk)
    dHc, dW, db = _pref._backward(head, None, lse, c, need_b=b is not None)
    return loss, head.full_dH(dHc), dW, db


# --------------------------------------------------------------------------- IBDR


class _Rows:
    """The fused per-row IBDR kernel, launched from the validator's ``stats`` callable (after
    the shape checks) so that its flags and the label range come back in ONE host read."""

    def __init__(self, mode, need_grad, params):
        self.mode, self.need_grad, self.params = mode, need_grad, params
        self.too_many = None
        self.fail = False

    def stats(self, x, y):
        K, B, C = (int(s) for s in x.shape)
        if K > SE_KMAX:
            self.too_many = K
            return V._default_ibdr_stats(x, y)
        diversity, alpha, jitter = self.params()
        x = cupy.ascontiguousarray(x)
        y64 = cupy.ascontiguousarray(y.astype(np.int64))
        self.rowout = cupy.empty((B, 5), dtype=np.float64)
        self.dX = cupy.empty((K, B, C) if self.need_grad else (1,), dtype=x.dtype)
        self.diversity = diversity
        threads = 32 * max(1, min(IBDR_WARPS, SE_MAXW, -(-C // 32)))
        _launch("se_ibdr_rows", (max(1, min(B, IBDR_GRID_CAP)),), (threads,),
                (x, y64, np.int32(K), np.int64(B), np.int32(C), np.int32(self.mode),
                 np.int32(diversity), np.float64(alpha), np.float64(jitter),
                 np.int32(self.need_grad), self.rowout, self.dX))
        st = cupy.stack([self.rowout[:, 2].max(), self.rowout[:, 3].min(),
                         y.min().astype(np.float64), y.max().astype(np.float64),
                         self.rowout[:, 4].max()])
        bad, xmin, ymin, ymax, fail = (float(v) for v in np.asarray(cupy.asnumpy(st)))
        self.fail = fail > 0
        return not bad > 0, xmin, int(ymin), int(ymax)

    def check(self, jitter):
        if self.too_many is not None:
            raise ValueError(f"the fused IBDR kernel of the cupy backend supports K <= {SE_KMAX} "
                             f"particles (the official runs use K = 4), got K = {self.too_many}")
        if self.fail:
            raise V.ibdr_gram_not_positive_definite(jitter)


def _real_or(v, default):
    ok = (not isinstance(v, bool) and isinstance(v, numbers.Real) and np.isfinite(float(v))
          and float(v) > 0)
    return float(v) if ok else default


def dpp_logdet_diversity(probs, y, *, jitter=1e-7):
    """LD (0-d): the fused row kernel on probabilities (forward only; one host read)."""
    _native(probs=probs, y=y)
    rows = _Rows(2, 0, lambda: (1, 0.0, _real_or(jitter, 1.0)))
    _, _, _, jitter = V.ibdr_dpp_args(probs, y, jitter, stats=rows.stats)
    rows.check(jitter)
    return _scalar(rows.rowout[:, 1].mean().astype(probs.dtype))


def _ibdr(logits, y, alpha_div, jitter, variant, need_grad):
    _native(logits=logits, y=y)
    mode = 0 if variant == "code" else 1
    rows = _Rows(mode, need_grad,
                 lambda: (int(float(alpha_div) != 0.0), float(alpha_div), float(jitter)))
    K, B, C, alpha_div, jitter, variant = V.ibdr_loss_args(logits, y, alpha_div, jitter, variant,
                                                           stats=rows.stats)
    rows.check(jitter)
    loss = rows.rowout[:, 0].mean()
    if alpha_div != 0.0:
        loss = loss - alpha_div * rows.rowout[:, 1].mean()
    loss = _scalar(loss.astype(logits.dtype))
    return (loss, rows.dX) if need_grad else loss


def ibdr_loss(logits, y, *, alpha_div=0.02, jitter=1e-7, variant="code"):
    """IBDR's ensemble loss (0-d): one fused kernel launch (one block per row) + means."""
    return _ibdr(logits, y, alpha_div, jitter, variant, 0)


def ibdr_loss_grad(logits, y, *, alpha_div=0.02, jitter=1e-7, variant="code"):
    """``(loss, dlogits (K, B, C))`` from the same launch (the gradient sweep enabled)."""
    return _ibdr(logits, y, alpha_div, jitter, variant, 1)


def prediction_distance(logits_bar_new, logits_bar_old):
    """``d_raw = mean_b ||softmax(new_b) - softmax(old_b)||_2`` (0-d): one warp per row, then a
    CuPy mean; the finiteness flags come from the same kernel (one host read)."""
    _native(logits_bar_new=logits_bar_new, logits_bar_old=logits_bar_old)
    res = {}

    def finite(new, old):
        a, b = cupy.ascontiguousarray(new), cupy.ascontiguousarray(old)
        B, C = (int(s) for s in a.shape)
        d = cupy.empty(B, dtype=a.dtype)
        bad = cupy.empty(2 * B, dtype=a.dtype)
        blocks = max(1, min(-(-B // ROW_WARPS), GRID_CAP))
        _launch("se_pred_dist", (blocks,), (32 * ROW_WARPS,),
                (a, b, np.int64(B), np.int32(C), d, bad))
        res["d"] = d
        flags = np.asarray(cupy.asnumpy(cupy.stack([bad[0::2].max(), bad[1::2].max()])))
        return tuple(not v > 0 for v in flags)

    V.ibdr_prediction_pair(logits_bar_new, logits_bar_old, finite=finite)
    return _scalar(res["d"].mean())


def ibdr_dual_update(lam, distance, lr, *, bound=0.03, temp=0.01, lo=0.5, hi=5.0, variant="code"):
    """One dual step on lam; returns a Python float (as every backend). ``lam`` and
    ``distance`` may be 0-d arrays: each is read to the host once (the validation); the step
    itself is the reference's scalar formula."""
    _native_scalar(lam=lam, distance=distance)
    lam, distance, lr, bound, temp, lo, hi, variant = V.ibdr_dual_args(
        lam, distance, lr, bound, temp, lo, hi, variant, to_numpy=cupy.asnumpy)
    return _ref_ibdr.ibdr_dual_update(lam, distance, lr, bound=bound, temp=temp, lo=lo, hi=hi,
                                      variant=variant)
