r"""Antibody and IBDR (safety_ensembles.md) on torch tensors.

Same functions, signatures, messages and results as :mod:`refimpl.safety_ensembles`
(``refimpl._antibody`` Part A, ``refimpl._ibdr`` Part B). Papers: Antibody arXiv 2603.00498
(official code ``minhquoc0712/Antibody``), IBDR arXiv 2506.07247 (``ngocquanofficial/DRO``).
Inputs are torch tensors on any device; results are tensors of the input's dtype on its device.
Scalar results (``loss``, ``LD``, ``d_raw``, ``lam_new``, ``lam_raw``) are 0-d tensors, except
:func:`ibdr_dual_update`, which returns a Python float (lam is a host hyperparameter of the
official optimiser). ``n_tok`` is an int64 tensor.

Part A — Antibody
-----------------
- Flat vectors (``harmful_perturb``, ``antibody_lambda``, ``antibody_align_direction``): plain
  vectorised torch in the input dtype (float32 reductions for float32 — ``torch.dot`` /
  ``linalg.vector_norm`` accumulate in the input dtype; float64 for float64). No host read in
  the arithmetic: ``||g_h||``, ``<g_s, d>``, ``lam`` stay 0-d device tensors.
  ``antibody_align_direction`` forms ``d = g_h - g_p`` once, reduces ``<g_s,d>``, ``||d||^2``,
  ``||g_s||^2`` and writes ``g = g_s + lam d + lam2 g_r`` (``addcmul`` + ``add_``).
  These functions are plain torch expressions, so they are differentiable by autograd (no
  custom Function: nothing to save but the vectors themselves).
- Linear head (``token_mean_nll``, ``weighted_token_ce``, ``weighted_token_ce_grad``): the
  preference family's fused chunked linear log-softmax (:mod:`backends.torch.preference`:
  ``_Tokens`` compaction, ``_TokenLogp`` with its online-LSE ``_forward_sweep`` and
  recomputing ``_backward_sweep``) — the ONE streaming LSE of the code base, reused as is.
  The mask is ``labels != ignore_index``. The weighted loss is linear in the per-token
  log-probs ``tok_k`` of the compacted tokens::

      L = sum_k c_k * (-tok_k),  c_k = w_row(k) / max(sum_i w_i N_i, 1)     (code)
                                 c_k = w_row(k) / max(N_row(k), 1)           (paper)

  so autograd hands ``_TokenLogp.backward`` the per-token coefficient ``-c_k`` and its
  backward sweep forms ``G = -c (onehot - softmax)`` block by block: with ``token_chunk`` /
  ``vocab_chunk`` no N x V tensor exists at any time and none is saved (``_TokenLogp`` saves
  ``H_c, W, b, y, lse``; the product saves ``c`` (n,)). Without chunk arguments one block is
  used (the dense path, as in preference). ``w`` carries no gradient (detached: the official
  code computes the weights under ``no_grad``). ``weighted_token_ce_grad`` is
  ``torch.autograd.grad`` of the same graph. ``token_mean_nll`` runs the forward sweep only,
  under ``no_grad``.
  Dtypes as preference: H, W, b in float32, float64 or bfloat16; bf16 GEMMs accumulate in
  float32 (``_mm``); ``nll`` and ``loss`` are in the accumulation dtype (float32 for bf16
  inputs, float64 for float64), the gradients dH, dW, db in the input dtype.

Part B — IBDR
-------------
- ``dpp_logdet_diversity`` / ``ibdr_loss(_grad)``: softmax, the wrong-class gather (an index
  table ``j + (j >= y_b)``, no boolean indexing, no host sync), the norms and ``qh`` are in the
  input dtype; the K x K Gram ``M_b = Qh_b Qh_b^T + jitter I``, its Cholesky factor
  (``torch.linalg.cholesky_ex``, batched over B; library ops for any K), the logdet and the
  solve ``M_b^{-1} Qh_b`` (``cholesky_solve``, in place of the explicit inverse) are float64 on
  every device; the gradient w.r.t. Qh is cast back to the input dtype. The loss adds CE (input
  dtype) and ``alpha_div LD`` (float64) in float64 and returns the input dtype.
  Autograd: ``dpp_logdet_diversity`` and ``ibdr_loss`` go through custom
  ``torch.autograd.Function`` s (:class:`_DppLogdet`, :class:`_IbdrLoss`) whose forward
  computes the closed-form gradient of the spec (the same helper as ``ibdr_loss_grad``)
  together with the value and saves it (one tensor of the input's shape); the backward scales
  it by the cotangent (once differentiable). When no gradient is needed the gradient is not
  computed.
- ``dro_ascent``: ``theta + g min(1, clip / (||g|| + 1e-6)) / (2 lam)`` with the norm and the
  factor as 0-d device tensors. ``prediction_distance``: softmax in the input dtype, the row
  norms and their mean as a 0-d tensor. ``ibdr_dual_update``: host scalar arithmetic, the
  reference's own function applied to the values read once.

Host reads (documented)
-----------------------
Validation uses the validators of :mod:`refimpl._validate` (the reference's messages); their
value checks get callables whose device reductions are read with ONE device-to-host copy per
call (:func:`_read`; several values packed into one int64 tensor):
- flat-vector ops: every gradient's "all finite" flag, plus ``lam_ema`` / ``lam`` when it is a
  0-d tensor, in one read;
- head ops: the labels (O(B T) integers, needed for the range check) and, for the weighted CE,
  ``w``'s (finite, min) in the same read; the compaction's ``torch.nonzero`` synchronises once
  more (preference's ``_Tokens``, unchanged);
- ``dpp_logdet_diversity`` / ``ibdr_loss(_grad)``: (finite, min, min y, max y) in one read,
  plus one 0-d flag "did every Cholesky succeed" when the diversity term is on (the
  reference raises on a non-positive-definite Gram, so must we);
- ``prediction_distance``: the two finite flags in one read; ``ibdr_dual_update``: one read
  per 0-d tensor argument (``distance``, and ``lam`` if it is one).
Nothing else reads the device: the arithmetic never synchronises.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.autograd.function import once_differentiable

from backends.torch import native as _native
from backends.torch import preference as _pref
from backends.torch import read_packed, to_numpy
from refimpl import _ibdr as _ref_ibdr
from refimpl import _validate as V

__all__ = [
    "harmful_perturb", "antibody_lambda", "antibody_align_direction", "token_mean_nll",
    "antibody_weights", "weighted_token_ce", "weighted_token_ce_grad",
    "dpp_logdet_diversity", "ibdr_loss", "ibdr_loss_grad", "dro_ascent", "prediction_distance",
    "ibdr_dual_update",
]

NORMALIZE_EPS = _ref_ibdr.NORMALIZE_EPS     # F.normalize's eps
CLIP_EPS = _ref_ibdr.CLIP_EPS               # clip_grad_norm_'s 1e-6
F64 = torch.float64


# --------------------------------------------------------------------------- host reads


def _one_device(*xs) -> bool:
    devs = {x.device for x in xs if isinstance(x, torch.Tensor)}
    return len(devs) <= 1


def _is_scalar_tensor(v) -> bool:
    return isinstance(v, torch.Tensor) and v.numel() == 1 and v.is_floating_point()


class _FlatReads:
    """``finite`` and ``to_numpy`` callables for the flat-vector validators: the first call of
    ``finite`` computes every requested flag (and the 0-d scalar, if any) on the device and
    reads them together; later calls answer from that read."""

    def __init__(self, vectors, scalar=None):
        self.vectors = [v for v in vectors if isinstance(v, torch.Tensor)]
        self.scalar = scalar if _is_scalar_tensor(scalar) else None
        self._flags = None
        self._scalar_value = None

    def _fill(self):
        vs = self.vectors
        if not _one_device(*vs, self.scalar):
            self._flags = {}
            return
        parts = [torch.isfinite(v).all() if v.numel() else torch.ones((), dtype=torch.bool)
                 for v in vs]
        flags = [torch.stack(parts)] if parts else []
        if self.scalar is not None:
            flags.append(self.scalar.detach().reshape(1))
        vals = read_packed(flags)
        self._flags = {id(v): bool(f) for v, f in zip(vs, vals[0])} if parts else {}
        if self.scalar is not None:
            self._scalar_value = np.asarray(vals[-1][0])

    def finite(self, *xs):
        if self._flags is None:
            self._fill()
        out = []
        for x in xs:
            hit = self._flags.get(id(x))
            if hit is None or not any(x is v for v in self.vectors):
                hit = bool(torch.isfinite(x).all()) if isinstance(x, torch.Tensor) else \
                    V._all_finite_each(x)[0]
            out.append(hit)
        return tuple(out)

    def to_numpy(self, x):
        if self.scalar is not None and x is self.scalar:
            if self._flags is None:
                self._fill()
            if self._scalar_value is not None:
                return self._scalar_value
        return to_numpy(x)


# --------------------------------------------------------------------------- Part A: flat vectors


def harmful_perturb(theta, g_h, alpha=0.1, *, eps=1e-7):
    """``theta' = theta - alpha g_h / (||g_h|| + eps)`` (P,), input dtype; the norm accumulates
    in the input dtype (float32 for float32). One host read: g_h's finite flag."""
    _native(theta=theta, g_h=g_h)
    r = _FlatReads([g_h])
    _, alpha, eps = V.antibody_perturb_args(theta, g_h, alpha, eps, finite=r.finite)
    n = torch.linalg.vector_norm(g_h)
    return theta - (alpha / (n + eps)) * g_h


def _lambda(g_s, d, lam, eta, momentum, variant):
    """(lam_new, lam_raw) as 0-d tensors of g_s's dtype from the three reductions (``lam``:
    the validated lam_ema as a Python float, or None)."""
    dot = torch.dot(g_s, d)
    if variant == "cosine":
        denom = torch.linalg.vector_norm(d) * torch.linalg.vector_norm(g_s) + 1e-8
    else:
        denom = torch.dot(d, d) + 1e-8
    raw = torch.clamp(eta - dot / denom, min=0.0)
    new = raw if lam is None else momentum * lam + (1.0 - momentum) * raw
    return new, raw


def antibody_lambda(g_s, d, lam_ema=None, *, eta=5.0, momentum=0.99, variant="cosine"):
    """``(lam_new, lam_raw)`` 0-d tensors (A.2 step 6-7); ``variant="kkt"`` divides by
    ``||d||^2 + 1e-8``. One host read: the finite flags of g_s, d (and lam_ema if a tensor)."""
    _native(g_s=g_s, d=d)
    r = _FlatReads([g_s, d], lam_ema)
    _, lam, eta, momentum, variant = V.antibody_lambda_args(
        g_s, d, lam_ema, eta, momentum, variant, finite=r.finite, to_numpy=r.to_numpy)
    return _lambda(g_s, d, lam, eta, momentum, variant)


def antibody_align_direction(g_s, g_h, g_p, g_r, lam_ema=None, *, eta=5.0, momentum=0.99,
                             lam2=0.05, variant="cosine"):
    """``(g, lam_new, lam_raw)``: ``d = g_h - g_p``, lam from :func:`antibody_lambda`'s
    formula, ``g = g_s + lam d + lam2 g_r`` (A.2 step 8). One host read (four finite flags and
    lam_ema if a tensor)."""
    _native(g_s=g_s, g_h=g_h, g_p=g_p, g_r=g_r)
    r = _FlatReads([g_s, g_h, g_p, g_r], lam_ema)
    _, lam, eta, momentum, lam2, variant = V.antibody_align_args(
        g_s, g_h, g_p, g_r, lam_ema, eta, momentum, lam2, variant, finite=r.finite,
        to_numpy=r.to_numpy)
    d = g_h - g_p
    new, raw = _lambda(g_s, d, lam, eta, momentum, variant)
    g = torch.addcmul(g_s, d, new)
    g = g.add_(g_r, alpha=lam2) if not g.requires_grad else g + lam2 * g_r
    return g, new, raw


def antibody_weights(nll_c, nll_r, *, tau=1.0):
    """``w = softmax((nll_r - nll_c) / tau)`` over the batch (B,), input dtype. One host read
    (the finite flags)."""
    _native(nll_c=nll_c, nll_r=nll_r)
    r = _FlatReads([nll_c, nll_r])
    _, tau = V.antibody_weights_args(nll_c, nll_r, tau, finite=r.finite)
    return torch.softmax((nll_r - nll_c) / tau, dim=0)


# --------------------------------------------------------------------------- Part A: linear head


class _HeadReads:
    """The host values of a head call: ``labels`` (and ``w``'s (finite, min)) read together."""

    def __init__(self, labels, w=None):
        self.labels, self.w = labels, w
        self._labels = None
        self._wstats = None

    def _fill(self):
        parts = [self.labels]
        ok_w = (isinstance(self.w, torch.Tensor) and self.w.is_floating_point()
                and self.w.numel() > 0 and _one_device(self.labels, self.w))
        if ok_w:
            w64 = self.w.detach().to(F64)
            parts.append(torch.stack((torch.isfinite(w64).all().to(F64), w64.amin())))
        vals = read_packed(parts)
        self._labels = vals[0].reshape(tuple(self.labels.shape))
        if ok_w:
            self._wstats = (bool(vals[1][0]), float(vals[1][1]))

    def to_numpy(self, x):
        if x is self.labels and isinstance(x, torch.Tensor) and not x.is_floating_point() \
                and x.dtype != torch.bool:
            if self._labels is None:
                self._fill()
            return self._labels.astype(_np_int(x.dtype), copy=False)
        return to_numpy(x)

    def wstats(self, w):
        if w is self.w and self._wstats is None and self._labels is None:
            self._fill()
        if w is self.w and self._wstats is not None:
            return self._wstats
        w64 = w.detach().to(F64)
        ok, lo = torch.stack((torch.isfinite(w64).all().to(F64), w64.amin())).tolist()
        return bool(ok), lo


def _np_int(dt):
    return {torch.int8: np.int8, torch.int16: np.int16, torch.int32: np.int32,
            torch.int64: np.int64, torch.uint8: np.uint8}.get(dt, np.int64)


def _head_args(H, W, labels, b, ignore_index, token_chunk, vocab_chunk, reads):
    """The reference's validation order: ``antibody_head_args`` (labels read once, through
    ``reads``), then ``pref_head(..., paired=False)`` on the host mask. Returns (tc, vc, R)."""
    mask, (tc, vc) = V.antibody_head_args(H, W, labels, ignore_index, token_chunk, vocab_chunk,
                                          to_numpy=reads.to_numpy)
    R = V.pref_head(H, W, labels, mask, b, to_numpy=reads.to_numpy, paired=False).R
    return tc, vc, R


def _tokens(H, labels, ignore_index):
    """The compacted tokens (preference's ``_Tokens``) of the mask ``labels != ignore_index``."""
    return _pref._Tokens(H, labels, labels != ignore_index, None)


def token_mean_nll(H, W, labels, b=None, *, ignore_index=-100, token_chunk=None,
                   vocab_chunk=None):
    """``(nll (B,), n_tok (B,) int64)``: ``nll_i = sum_t m CE / max(N_i, 1)`` (no gradient).

    The forward sweep of preference's fused head (online LSE over vocab blocks; with chunks no
    N x V tensor). ``nll`` is in the accumulation dtype (float32 for bf16)."""
    _native(H=H, W=W, labels=labels, b=b)
    reads = _HeadReads(labels)
    tc, vc, _ = _head_args(H, W, labels, b, ignore_index, token_chunk, vocab_chunk, reads)
    with torch.no_grad():
        toks = _tokens(H, labels, ignore_index)
        Hc = toks.compact(H)
        tok, _ = _pref._forward_sweep(Hc, W, b, None, toks.y, tc, vc)
        s = toks.row_sum(-tok, False)
        n = toks.counts
        nll = s / torch.clamp(n, min=1).to(s.dtype)
    return nll, n.to(torch.int64)


def _coefficients(toks, w, variant):
    """Per-token ``c_k`` (n,) in the accumulation dtype: the loss is ``-sum_k c_k tok_k``."""
    cd = _pref._acc_dtype(w.dtype)
    w = w.detach().to(cd)
    n_i = toks.counts.to(cd)
    if variant == "code":
        per_row = w / torch.clamp((w * n_i).sum(), min=1.0)
    else:
        per_row = w / torch.clamp(n_i, min=1.0)
    return per_row.index_select(0, toks.row)


def _weighted_loss(H, W, b, toks, w, variant, tc, vc):
    Hc = toks.compact(H)
    tok = _pref._TokenLogp.apply(Hc, W, b, None, toks.y, tc, vc)
    c = _coefficients(toks, w, variant)
    return -(c * tok).sum()


def _weighted_args(H, W, labels, w, b, ignore_index, variant, token_chunk, vocab_chunk):
    _native(H=H, W=W, labels=labels, w=w, b=b)
    reads = _HeadReads(labels, w)
    tc, vc, R = _head_args(H, W, labels, b, ignore_index, token_chunk, vocab_chunk, reads)
    variant = V.antibody_ce_variant(variant)
    V.antibody_sample_weights(w, R, H, stats=reads.wstats)
    return _tokens(H, labels, ignore_index), tc, vc, variant


def weighted_token_ce(H, W, labels, w, b=None, *, ignore_index=-100, variant="code",
                      token_chunk=None, vocab_chunk=None):
    """The Antibody weighted token CE (A.4), a 0-d tensor (accumulation dtype), differentiable
    by autograd w.r.t. H, W, b through preference's fused ``_TokenLogp`` (w is a constant)."""
    toks, tc, vc, variant = _weighted_args(H, W, labels, w, b, ignore_index, variant,
                                           token_chunk, vocab_chunk)
    return _weighted_loss(H, W, b, toks, w, variant, tc, vc)


def weighted_token_ce_grad(H, W, labels, w, b=None, *, ignore_index=-100, variant="code",
                           token_chunk=None, vocab_chunk=None):
    """``(loss, dH (B,T,d), dW (V,d), db (V,) or None)``: the gradients by the fused backward
    sweep with per-token coefficients ``c_k`` (the input dtype; loss in the accumulation dtype)."""
    toks, tc, vc, variant = _weighted_args(H, W, labels, w, b, ignore_index, variant,
                                           token_chunk, vocab_chunk)
    with torch.enable_grad():
        Hl, Wl, bl = _pref._leaf(H), _pref._leaf(W), _pref._leaf(b)
        loss = _weighted_loss(Hl, Wl, bl, toks, w, variant, tc, vc)
        dH, dW, db = _pref._grads_of(loss, Hl, Wl, bl)
    return loss.detach(), dH, dW, db


# --------------------------------------------------------------------------- Part B: IBDR


def _particle_stats(x, y):
    """The validators' ``stats(x, y)``: (all finite, min x, min y, max y) in one read."""
    if not (isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor)) or x.device != y.device:
        return V._default_ibdr_stats(x, y)
    xd = x.detach()
    fx = torch.stack((torch.isfinite(xd).all().to(F64), xd.amin().to(F64)))
    yl = y.detach().to(torch.int64)
    fl, yy = read_packed([fx, torch.stack((yl.amin(), yl.amax()))])
    return bool(fl[0]), float(fl[1]), int(yy[0]), int(yy[1])


class _Gram:
    """Normalised wrong-class vectors ``qh`` (input dtype) and the float64 Cholesky factors of
    ``M_b = Qh_b Qh_b^T + jitter I`` (B, K, K)."""

    def __init__(self, P, y, jitter):
        K, B, C = P.shape
        self.shape = (K, B, C)
        j = torch.arange(C - 1, device=P.device)
        self.idx = (j[None, :] + (j[None, :] >= y[:, None])).expand(K, B, C - 1)
        Q = P.gather(-1, self.idx)                                # (K, B, C-1)
        self.norm = torch.linalg.vector_norm(Q, dim=-1)           # (K, B)
        self.qh = Q / torch.clamp(self.norm, min=NORMALIZE_EPS)[..., None]
        self.Qh64 = self.qh.to(F64).transpose(0, 1)               # (B, K, C-1)
        eye = torch.eye(K, dtype=F64, device=P.device)
        M = self.Qh64 @ self.Qh64.transpose(1, 2) + jitter * eye
        self.L, info = torch.linalg.cholesky_ex(M)
        if bool((info != 0).any()):                               # one 0-d host read
            raise V.ibdr_gram_not_positive_definite(jitter)
        self.logdet = 2.0 * torch.log(torch.diagonal(self.L, dim1=1, dim2=2)).sum(-1)  # (B,) f64

    def vjp_probs(self, wt):
        """d(sum_b wt_b logdet M_b)/dP (K, B, C) in P's dtype, wt (B,) float64."""
        gQh = 2.0 * wt[:, None, None] * torch.cholesky_solve(self.Qh64, self.L)  # M^-1 Qh, f64
        g = gQh.transpose(0, 1).to(self.qh.dtype)                 # (K, B, C-1)
        big = (self.norm >= NORMALIZE_EPS)[..., None]
        proj = torch.where(big, (g * self.qh).sum(-1, keepdim=True) * self.qh, 0.0)
        gQ = (g - proj) / torch.clamp(self.norm, min=NORMALIZE_EPS)[..., None]
        return torch.zeros(self.shape, dtype=gQ.dtype, device=gQ.device).scatter_(-1, self.idx,
                                                                                  gQ)


def _softmax_vjp(P, gP):
    return P * (gP - (P * gP).sum(-1, keepdim=True))


def _dpp(probs, y, jitter, want_grad):
    G = _Gram(probs, y.to(device=probs.device, dtype=torch.int64), jitter)
    LD = G.logdet.mean()
    dP = None
    if want_grad:
        B = probs.shape[1]
        dP = G.vjp_probs(torch.full((B,), 1.0 / B, dtype=F64, device=probs.device))
    return LD.to(probs.dtype), dP


class _DppLogdet(torch.autograd.Function):
    """LD with the closed-form gradient (computed in the forward, saved, scaled in backward)."""

    @staticmethod
    def forward(ctx, probs, y, jitter):
        LD, dP = _dpp(probs, y, jitter, True)
        ctx.save_for_backward(dP)
        return LD

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        (dP,) = ctx.saved_tensors
        return g.to(dP.dtype) * dP, None, None


def _needs_grad(*xs) -> bool:
    return torch.is_grad_enabled() and any(isinstance(x, torch.Tensor) and x.requires_grad
                                           for x in xs)


def dpp_logdet_diversity(probs, y, *, jitter=1e-7):
    """``LD = mean_b logdet(Qh_b Qh_b^T + jitter I)`` as a 0-d tensor of probs' dtype (Gram,
    Cholesky and logdet in float64); differentiable w.r.t. probs (closed form)."""
    _native(probs=probs, y=y)
    _, _, _, jitter = V.ibdr_dpp_args(probs, y, jitter, stats=_particle_stats)
    if _needs_grad(probs):
        return _DppLogdet.apply(probs, y, jitter)
    return _dpp(probs, y, jitter, False)[0]


def _ibdr(F, y, alpha_div, jitter, variant, want_grad):
    """``(loss 0-d (F's dtype), dloss/dF or None)`` of spec B.2 / B.4."""
    K, B, C = F.shape
    y = y.to(device=F.device, dtype=torch.int64)
    if variant == "code":
        Fbar = F.mean(0)
        ls = torch.log_softmax(Fbar, -1)
        ce = -ls.gather(-1, y[:, None]).mean()
    else:
        ls = torch.log_softmax(F, -1)
        ce = -ls.gather(-1, y.expand(K, B)[..., None]).mean()
    dF = None
    if want_grad:
        sm = torch.exp(ls)
        dF = sm.scatter_add(-1, (y[:, None] if variant == "code" else y.expand(K, B)[..., None]),
                            -torch.ones_like(ls[..., :1])) / (K * B)
        dF = dF.expand(K, B, C).clone() if variant == "code" else dF
    loss = ce.to(F64)
    if alpha_div != 0.0:
        P = torch.softmax(F, -1)
        G = _Gram(P, y, jitter)
        if variant == "code":
            loss = loss - alpha_div * G.logdet.mean()
            wt = torch.ones(B, dtype=F64, device=F.device)
        else:
            det = torch.exp(G.logdet)
            loss = loss - alpha_div * det.mean()
            wt = det
        if want_grad:
            dF -= (alpha_div / B) * _softmax_vjp(P, G.vjp_probs(wt))
    return loss.to(F.dtype), dF


class _IbdrLoss(torch.autograd.Function):
    """``ibdr_loss`` with the spec's closed-form gradient (computed in the forward by the
    helper of ``ibdr_loss_grad``, saved — one (K, B, C) tensor — and scaled in backward)."""

    @staticmethod
    def forward(ctx, logits, y, alpha_div, jitter, variant):
        loss, dF = _ibdr(logits, y, alpha_div, jitter, variant, True)
        ctx.save_for_backward(dF)
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        (dF,) = ctx.saved_tensors
        return g.to(dF.dtype) * dF, None, None, None, None


def _ibdr_args(logits, y, alpha_div, jitter, variant):
    _native(logits=logits, y=y)
    _, _, _, alpha_div, jitter, variant = V.ibdr_loss_args(logits, y, alpha_div, jitter, variant,
                                                           stats=_particle_stats)
    return alpha_div, jitter, variant


def ibdr_loss(logits, y, *, alpha_div=0.02, jitter=1e-7, variant="code"):
    """IBDR's loss (B.2 code / B.4 paper) as a 0-d tensor of logits' dtype, differentiable
    w.r.t. logits through :class:`_IbdrLoss` (closed form)."""
    alpha_div, jitter, variant = _ibdr_args(logits, y, alpha_div, jitter, variant)
    if _needs_grad(logits):
        return _IbdrLoss.apply(logits, y, alpha_div, jitter, variant)
    return _ibdr(logits, y, alpha_div, jitter, variant, False)[0]


def ibdr_loss_grad(logits, y, *, alpha_div=0.02, jitter=1e-7, variant="code"):
    """``(loss, dlogits (K, B, C))`` from the closed form (spec B.2), logits' dtype."""
    alpha_div, jitter, variant = _ibdr_args(logits, y, alpha_div, jitter, variant)
    with torch.no_grad():
        return _ibdr(logits.detach(), y, alpha_div, jitter, variant, True)


def dro_ascent(theta, g, lam, *, clip=0.12):
    """``theta' = theta + g min(1, clip / (||g|| + 1e-6)) / (2 lam)`` (P,), input dtype; the
    norm and the factor stay on the device. One host read: g's finite flag and lam (when lam
    is a 0-d tensor) together."""
    _native(theta=theta, g=g)
    r = _FlatReads([g], lam)
    _, lam, clip = V.ibdr_ascent_args(theta, g, lam, clip, finite=r.finite, to_numpy=r.to_numpy)
    factor = torch.clamp(clip / (torch.linalg.vector_norm(g) + CLIP_EPS), max=1.0)
    return theta + g * (factor / (2.0 * lam))


def prediction_distance(logits_bar_new, logits_bar_old):
    """``d_raw = mean_b ||softmax(new_b) - softmax(old_b)||_2``, a 0-d tensor (input dtype).
    One host read (the two finite flags)."""
    _native(logits_bar_new=logits_bar_new, logits_bar_old=logits_bar_old)
    r = _FlatReads([logits_bar_new, logits_bar_old])
    V.ibdr_prediction_pair(logits_bar_new, logits_bar_old, finite=r.finite)
    D = torch.softmax(logits_bar_new, -1) - torch.softmax(logits_bar_old, -1)
    return torch.linalg.vector_norm(D, dim=-1).mean()


def ibdr_dual_update(lam, distance, lr, *, bound=0.03, temp=0.01, lo=0.5, hi=5.0,
                     variant="code"):
    """One dual step on lam, a Python float (B.3 step 4 / B.4). ``lam`` and ``distance`` may be
    Python numbers or 0-d tensors (each read to the host once); the arithmetic is the
    reference's (host scalars)."""
    _native(**{k: v for k, v in (("lam", lam), ("distance", distance)) if hasattr(v, "shape")})
    lam, distance, lr, bound, temp, lo, hi, variant = V.ibdr_dual_args(
        lam, distance, lr, bound, temp, lo, hi, variant, to_numpy=to_numpy)
    return _ref_ibdr.ibdr_dual_update(lam, distance, lr, bound=bound, temp=temp, lo=lo, hi=hi,
                                      variant=variant)
