r"""Mult-VAE and the PIA anchor regulariser, and the ranking metrics, on torch tensors
(recsys_vae.md).

Same functions, signatures, messages and results as the reference (:mod:`refimpl._multvae`,
:mod:`refimpl._recsys_eval`). Papers: Liang et al., "Variational Autoencoders for Collaborative
Filtering", arXiv 1802.05814 (official code ``dawenl/vae_cf VAE_ML20M_WWW2018.ipynb``
@ad103c5); Vuong et al., PIA, arXiv 2511.06781 (no public code: the anchor loss is the
reference's reconstruction). Inputs are torch tensors on any device; results are tensors of the
input's float dtype (float32 or float64) on its device; ``loss``, ``nll``, ``kl`` are 0-d
tensors; ``anneal_beta`` is the reference's host function (a Python float).

Model (``X`` (U, I) dense or ``torch.sparse_csr``, stored values 1; params W1 (I, H) b1 W2
(H, 2d) b2 W3 (d, H) b3 W4 (H, I) b4)::

    l2n(x)   = x / sqrt(max(sum_i x_i^2, 1e-12))               (tf.nn.l2_normalize)
    dropout:   h0 = l2n(X) * mask / keep_prob                   (official; mask None: l2n(X))
    bernoulli: h0 = l2n(X * mask)                               (PIA, reconstructed)
    h1 = tanh(h0 W1 + b1);  [mu, logvar] = h1 W2 + b2;  z = mu + eps exp(logvar / 2)
    (eps None: z = mu);  logits = tanh(z W3 + b3) W4 + b4
    nll = mean_u [n_u lse_u - sum_i X_ui logits_ui]  = mean_u -sum_i X_ui log_softmax_ui
    kl  = mean_u 0.5 sum_k (-logvar + exp(logvar) + mu^2 - 1);  loss = nll + beta kl

- CSR X is never densified: the normalisation and the mask act on the stored values (the mask
  is gathered at X's pattern), the first layer is ``torch.sparse.mm(h0, W1)`` (autograd gives
  dW1 = h0^T da1 as a sparse-dense product); n_u and the X-weighted sums use the CSR triplet.
- The nll is one custom ``autograd.Function`` (:class:`_MultNLL`): the forward computes
  ``lse`` (U,) (``torch.logsumexp``, max-shifted) and ``sum_i X_ui logits_ui`` (``vecdot`` /
  a gather on the CSR pattern) without forming log_softmax, and saves the logits, lse, n_u and X
  as given (the caller's dense tensor or the CSR triplet) — no softmax, no copy of X. Its
  backward forms softmax once, in place, ``dlogits = (softmax n_u - X) g / U``.
- ``multvae_value_and_grad``: autograd of the whole objective ``nll + beta kl (+ lam_A
  mean_u L_A(u))`` w.r.t. detached leaves of the params (and E); returns the detached 0-d loss
  and a dict with the params' keys (+ "E"). Anchor sets use the unmasked X.
- bfloat16: not offered as an input dtype (the validators take float32/float64, as the
  reference). Under ``torch.autocast`` (float32 inputs) the forward's GEMMs run in bf16 and
  :class:`_MultNLL` reduces bf16 logits in float32 (nll float32, dlogits in the logits' dtype),
  so ``multvae_value_and_grad`` works under autocast (tested on the CPU against the float64
  reference at bf16 accuracy).

PIA (reference's closed form, V = users with n_u > 0)::

    ebar = (X E) / n,  spread = (X rownorm2(E)) / n - ||ebar||^2
    L_A(u) = ||mu - ebar||^2 + sum_k exp(logvar) + spread;  "mean" over V, "sum", "none" (NaN off V)
    z (S, U, d) given: mean_s ||z_su||^2 - 2 zbar_u . ebar_u + (X rownorm2(E)) / n
                       (= mean_s mean_{i in S_u} ||z_su - e_i||^2 expanded; no S x U x I tensor)

plain torch expressions (differentiable by autograd); ``pia_anchor_grad`` is
``torch.autograd.grad`` of the "mean" closed form, ``item_centroids`` = ``(X E) / max(n, 1)``,
``gaussian_w2 = sqrt(||mu1 - mu2||^2 + ||s1 - s2||^2)`` per row.

Metrics (``scores`` (U, I) float; ``X_fold``, ``X_heldout`` dense of any numeric/bool dtype or
CSR): fold-in items get -inf; the top ``m = min(k, I)`` by descending score with ties broken by
the lower item index, exactly as the reference's stable argsort (:func:`_ranking`: topk only
supplies the tie-independent m-th value; the tied slots are filled by index through a second
topk on distinct keys; three stable sorts of 2m candidates rank them); -inf entries are not
ranked (a shorter list). ``Recall = hits / min(k, |T|)``; ``NDCG = DCG / IDCG`` with the
reference's discount constants (computed with NumPy on the host: m + 1 values, uploaded) and
DCG summed in NumPy's pairwise order (:func:`_np_pairwise_rowsum`), so float64 results are
bit-identical to the reference; NaN where |T| = 0. Computed in float64, returned in the scores'
dtype. Workspace: the masked scores, two (U, I) bool patterns and one (U, I) int32 key.

Host reads (documented)
-----------------------
Validation uses the reference's validators (:mod:`refimpl._validate`, sections "recsys: Mult-VAE
and PIA" and "recsys: evaluation") with their device hooks: every value check of a call
(binary X / stored CSR values all 1, binary mask, finite eps / E / logits / mu / logvar / z,
non-negative s1, s2, "X has an interaction"; for the metrics: scores free of NaN/+inf, binary
X_fold / X_heldout, their overlap count) is computed on the device and read with ONE
device-to-host copy per call (:func:`_read`). ``beta`` / ``lam_A`` given as 0-d tensors are read
once each (``to_numpy``). The CSR row expansion uses ``repeat_interleave(..., output_size=nnz)``
(no read). Nothing else reads the device.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.autograd.function import once_differentiable

from backends.torch import native as _native
from backends.torch import read_packed, sparse_csr, to_numpy
from refimpl import _multvae as _ref_m
from refimpl import _validate as V

__all__ = [
    "anneal_beta",
    "gaussian_w2",
    "item_centroids",
    "multvae_forward",
    "multvae_loss",
    "multvae_value_and_grad",
    "ndcg_at_k",
    "pia_anchor_grad",
    "pia_anchor_loss",
    "recall_at_k",
]

F64 = torch.float64
PARAM_KEYS = ("W1", "b1", "W2", "b2", "W3", "b3", "W4", "b4")


# --------------------------------------------------------------------------- host reads


def _flag(kind, x):
    x = x.detach()
    if kind == "binary":
        return ((x == 0) | (x == 1)).all()
    if kind == "ones":
        return (x == 1).all()
    if kind == "finite":
        return torch.isfinite(x).all() if x.is_floating_point() else torch.ones(
            (), dtype=torch.bool, device=x.device)
    if kind == "nonneg":
        return (x >= 0).all()
    if kind == "nonzero":
        return (x != 0).any()
    raise ValueError(f"unknown flag kind {kind!r}; expected one of {V.RV_FLAG_KINDS}")


def _flags(checks):
    """The validators' ``flags`` hook: every requested flag computed on the device, then ONE
    host read for all of them (``_read``)."""
    if not checks:
        return ()
    dev = checks[0][1].device
    fl = torch.stack([_flag(kind, x).to(dev) for kind, x in checks])
    return tuple(bool(v) for v in read_packed([fl])[0])


def _x_values(X):
    """The stored values of a CSR X (what the validators check), None for a dense X."""
    return X.values() if _is_csr(X) else None


def _forward_args(X, params, mask, eps, keep_prob, mask_mode):
    _native(X=X, mask=mask, eps=eps)
    if isinstance(params, dict):
        _native(**{f"params['{k}']": v for k, v in params.items()})
    V.multvae_forward_args(X, params, mask, eps, keep_prob, mask_mode, x_values=_x_values(X),
                           flags=_flags)
    return _Inter(X), V.rv_keep_prob(keep_prob), mask_mode


def _loss_args(X, logits, mu, logvar, beta):
    _native(X=X, logits=logits, mu=mu, logvar=logvar)
    _, beta = V.multvae_loss_args(X, logits, mu, logvar, beta, x_values=_x_values(X),
                                  flags=_flags, to_numpy=to_numpy)
    return _Inter(X), beta


def _vag_args(X, params, beta, mask, eps, keep_prob, mask_mode, E, lam_A):
    _native(X=X, mask=mask, eps=eps, E=E)
    if isinstance(params, dict):
        _native(**{f"params['{k}']": v for k, v in params.items()})
    _, beta, lam_A = V.multvae_value_and_grad_args(
        X, params, beta, mask, eps, keep_prob, mask_mode, E, lam_A, x_values=_x_values(X),
        flags=_flags, to_numpy=to_numpy)
    return _Inter(X), beta, V.rv_keep_prob(keep_prob), mask_mode, lam_A


def _centroid_args(X, E):
    _native(X=X, E=E)
    V.item_centroids_args(X, E, x_values=_x_values(X), flags=_flags)
    return _Inter(X)


def _pia_args(mu, logvar, X, E, reduction, z):
    _native(mu=mu, logvar=logvar, X=X, E=E, z=z)
    V.pia_args(mu, logvar, X, E, reduction, z, x_values=_x_values(X), flags=_flags)
    return _Inter(X), reduction


def _w2_args(mu1, s1, mu2, s2):
    _native(mu1=mu1, s1=s1, mu2=mu2, s2=s2)
    V.gaussian_w2_args(mu1, s1, mu2, s2, flags=_flags)


# --------------------------------------------------------------------------- interactions


def _is_csr(x) -> bool:
    return isinstance(x, torch.Tensor) and x.layout == torch.sparse_csr


class _Inter:
    """A binary interaction matrix (U, I), dense or sparse CSR, in the form the kernels use:
    ``dense`` (U, I) or the CSR triplet ``row, col, val`` (nnz,) with ``row`` expanded from
    ``crow_indices`` on the device (``repeat_interleave`` with ``output_size = nnz``: no host
    read); ``n`` (U,) the row sums ``n_u`` in X's float dtype."""

    def __init__(self, X):
        self.shape = (int(X.shape[0]), int(X.shape[1]))
        U, _ = self.shape
        self.csr = _is_csr(X)
        if self.csr:
            crow, self.col = X.crow_indices(), X.col_indices().to(torch.int64)
            val = X.values()
            self.dtype = val.dtype if val.is_floating_point() else torch.float32
            self.val = val.to(self.dtype)
            self.row = torch.repeat_interleave(
                torch.arange(U, device=val.device), crow.diff(), output_size=val.numel())
            self.n = torch.zeros(U, dtype=self.dtype, device=val.device).index_add_(
                0, self.row, self.val)
            self.dense = None
            self.X = X
        else:
            self.dtype = X.dtype if X.is_floating_point() else torch.float32
            self.dense = X if X.dtype == self.dtype else X.to(self.dtype)
            self.n = self.dense.sum(1)
            self.X = self.dense

    def with_values(self, val):
        """The CSR matrix with the same pattern and new values ``val`` (nnz,)."""
        return sparse_csr(self.X.crow_indices(), self.X.col_indices(), val, self.shape)

    def matmul(self, W):
        """``X @ W`` (dense W; sparse-dense product for CSR, X never densified)."""
        if self.csr:
            Xs = self.X if self.X.values().dtype == W.dtype else self.with_values(
                self.val.to(W.dtype))
            return torch.sparse.mm(Xs, W)
        return self.dense.to(W.dtype) @ W

    def matvec(self, w):
        """``X @ w`` (U,) for a vector w (I,)."""
        if self.csr:
            return torch.zeros(self.shape[0], dtype=w.dtype, device=w.device).index_add_(
                0, self.row, self.val.to(w.dtype) * w.index_select(0, self.col))
        return self.dense.to(w.dtype) @ w


# --------------------------------------------------------------------------- forward


def _l2_rows(n2, eps=1e-12):
    """``1 / sqrt(max(sum x^2, eps))`` per row, tf.nn.l2_normalize's factor."""
    return torch.rsqrt(torch.clamp(n2, min=eps))


def _encoder_input(inter, mask, keep_prob, mask_mode, dtype):
    """``h0`` of spec secs. 1 and 3: dense (U, I), or a CSR with X's pattern (never densified).

    dropout:   h0 = (X / ||X||_row) * mask / keep_prob      (mask None: h0 = X / ||X||_row)
    bernoulli: h0 = (X * mask) / ||X * mask||_row            (no 1 / keep_prob rescale)
    """
    if inter.csr:
        v = inter.val.to(dtype)
        m = None if mask is None else mask[inter.row, inter.col].to(dtype)
        if mask_mode == "bernoulli" and m is not None:
            v = v * m
        n2 = torch.zeros(inter.shape[0], dtype=dtype, device=v.device).index_add_(
            0, inter.row, v * v)
        v = v * _l2_rows(n2).index_select(0, inter.row)
        if mask_mode == "dropout" and m is not None:
            v = v * m / keep_prob
        return inter.with_values(v)
    x = inter.dense.to(dtype)
    if mask_mode == "bernoulli" and mask is not None:
        x = x * mask
    x = x * _l2_rows((x * x).sum(1))[:, None]
    if mask_mode == "dropout" and mask is not None:
        x = x * mask / keep_prob
    return x


def _forward(inter, params, mask, eps, keep_prob, mask_mode):
    """``(logits, mu, logvar)`` (spec sec. 1), differentiable w.r.t. the params by autograd."""
    W1 = params["W1"]
    h0 = _encoder_input(inter, mask, keep_prob, mask_mode, W1.dtype)
    a1 = (torch.sparse.mm(h0, W1) if inter.csr else h0 @ W1) + params["b1"]
    h1 = torch.tanh(a1)
    o2 = h1 @ params["W2"] + params["b2"]
    d = o2.shape[1] // 2
    mu, logvar = o2[:, :d], o2[:, d:]
    z = mu if eps is None else mu + eps * torch.exp(0.5 * logvar)
    h3 = torch.tanh(z @ params["W3"] + params["b3"])
    logits = h3 @ params["W4"] + params["b4"]
    return logits, mu, logvar


# --------------------------------------------------------------------------- loss


def _low(dtype) -> bool:
    return dtype in (torch.bfloat16, torch.float16)


class _MultNLL(torch.autograd.Function):
    """``nll = mean_u [n_u lse_u - sum_i X_ui logits_ui]`` = ``mean_u -sum_i X_ui
    log_softmax(logits)_ui``, fused: the forward computes ``lse`` (U,) and the X-weighted sum
    without forming log_softmax, and saves ``logits``, ``lse``, ``n`` and X as given (the
    caller's tensor for dense X, the CSR triplet otherwise); the backward forms softmax once,
    in place: ``dlogits = (softmax * n_u - X) * g / U``. bf16/fp16 logits (autocast) are
    reduced in float32; nll is float32 then, the gradient in the logits' dtype."""

    @staticmethod
    def forward(ctx, logits, n, dense, row, col, val):
        lg = logits.float() if _low(logits.dtype) else logits
        lse = torch.logsumexp(lg, 1)
        if dense is not None:
            xw = torch.linalg.vecdot(dense.to(lg.dtype), lg, dim=1)
        else:
            xw = torch.zeros_like(lse).index_add_(0, row, val.to(lg.dtype) * lg[row, col])
        nll = (n.to(lg.dtype) * lse - xw).mean()
        ctx.save_for_backward(logits, lse, n, dense, row, col, val)
        ctx.csr = dense is None
        return nll

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        logits, lse, n, dense, row, col, val = ctx.saved_tensors
        lg = logits.float() if _low(logits.dtype) else logits
        U = lg.shape[0]
        G = torch.sub(lg, lse[:, None]).exp_().mul_(n.to(lg.dtype)[:, None])   # softmax * n_u
        if ctx.csr:
            G.index_put_((row, col), -val.to(lg.dtype), accumulate=True)
        else:
            G.sub_(dense.to(lg.dtype))
        G.mul_(g.to(lg.dtype) / U)
        return G.to(logits.dtype), None, None, None, None, None


def _nll(logits, inter):
    if inter.csr:
        return _MultNLL.apply(logits, inter.n, None, inter.row, inter.col, inter.val)
    return _MultNLL.apply(logits, inter.n, inter.dense, None, None, None)


def _kl(mu, logvar):
    """``mean_u 0.5 sum_k (-logvar + exp(logvar) + mu^2 - 1)`` (the official form)."""
    return (0.5 * (-logvar + torch.exp(logvar) + mu * mu - 1.0).sum(1)).mean()


# --------------------------------------------------------------------------- PIA


def _pia_per_user(mu, logvar, inter, E, z=None):
    """Per-user anchor loss (U,) and the validity mask ``n_u > 0``.

    closed form: ``||mu - ebar||^2 + sum_k exp(logvar) + spread``, ``ebar = (X @ E) / n``,
    ``spread = (X @ rownorm2(E)) / n - ||ebar||^2``;
    Monte Carlo (z (S, U, d)): ``mean_s mean_{i in S_u} ||z_su - e_i||^2
    = mean_s ||z_su||^2 - 2 zbar_u . ebar_u + (X @ rownorm2(E)) / n`` (expanded square; no
    S x U x I tensor)."""
    n = inter.n.to(E.dtype)
    valid = n > 0
    nc = torch.clamp(n, min=1.0)
    ebar = inter.matmul(E) / nc[:, None]
    rn2 = inter.matvec((E * E).sum(1)) / nc
    if z is None:
        diff = mu - ebar
        L = (diff * diff).sum(1) + torch.exp(logvar).sum(1) + rn2 - (ebar * ebar).sum(1)
    else:
        zz = (z * z).sum(-1).mean(0)
        L = zz - 2.0 * (z.mean(0) * ebar).sum(1) + rn2
    return L, valid


def _reduce(L, valid, reduction):
    if reduction == "none":
        return torch.where(valid, L, torch.full_like(L, float("nan")))
    s = torch.where(valid, L, torch.zeros_like(L)).sum()
    if reduction == "sum":
        return s
    return s / valid.sum().to(L.dtype)


def _centroids(inter, E):
    n = torch.clamp(inter.n.to(E.dtype), min=1.0)
    return inter.matmul(E) / n[:, None]


# --------------------------------------------------------------------------- metrics


def _pattern(X):
    """``X != 0`` as a dense (U, I) bool tensor (CSR: scattered from the stored values)."""
    if not _is_csr(X):
        return X != 0
    val = X.values()
    U = int(X.shape[0])
    row = torch.repeat_interleave(torch.arange(U, device=val.device), X.crow_indices().diff(),
                                  output_size=val.numel())
    out = torch.zeros(tuple(int(s) for s in X.shape), dtype=torch.bool, device=val.device)
    out[row, X.col_indices().to(torch.int64)] = val != 0
    return out


class _MetricReads:
    """The validators' ``stats(scores, X_fold, X_heldout)`` hook: (scores free of NaN / +inf,
    X_fold binary, X_heldout binary, overlap count) computed on the device and read together
    (one read). The dense bool patterns it builds are kept for the ranking."""

    def __init__(self):
        self.fold = self.held = None

    def __call__(self, scores, X_fold, X_heldout):
        s = scores.detach()
        ok = ~(torch.isnan(s) | (s == float("inf"))).any()
        flags = [ok]
        for X in (X_fold, X_heldout):
            v = X.values() if _is_csr(X) else X
            flags.append(((v == 0) | (v == 1)).all())
        self.fold, self.held = _pattern(X_fold), _pattern(X_heldout)
        overlap = (self.fold & self.held).sum()
        fl, ov = read_packed([torch.stack(flags), overlap.reshape(1)])
        return bool(fl[0]), bool(fl[1]), bool(fl[2]), int(ov[0])


def _ranking(s, k):
    """Top ``m = min(k, I)`` items per row of the masked scores ``s`` (fold-in = -inf), by
    descending score, ties by the lower item index (the reference's stable argsort of -s).

    ``torch.topk`` documents no order among equal values, so it is used for what is
    tie-independent: the m-th largest value ``t`` and the items above it (at most m - 1, all
    in the top-m). The ``need = m - #above`` remaining slots go to the lowest-index items equal
    to ``t``: a second topk on the distinct keys ``I - index`` (0 off ``s == t``) lists them by
    ascending index. The 2m candidates (valid: above t, resp. among the first ``need``) are
    ranked by three stable sorts (index ascending, then score descending, then valid first).
    Returns ``(idx (U, m), s (U, m))``: item indices and their masked scores in rank order."""
    I = s.shape[1]
    m = min(k, I)
    vals, idx = torch.topk(s, m, dim=1, sorted=True)
    t = vals[:, m - 1:m]
    above = vals > t
    need = m - above.sum(1, keepdim=True)
    rev = torch.arange(I, 0, -1, device=s.device, dtype=torch.int32)
    key = torch.where(s == t, rev, torch.zeros((), dtype=torch.int32, device=s.device))
    idx_eq = torch.topk(key, m, dim=1, sorted=True).indices
    first = torch.arange(m, device=s.device)[None, :] < need
    cidx = torch.cat((idx, idx_eq), 1)
    valid = torch.cat((above, first), 1)
    cidx = torch.where(valid, cidx, torch.full_like(cidx, I))
    o = torch.sort(cidx, dim=1, stable=True).indices                       # index ascending
    cidx, valid = cidx.gather(1, o), valid.gather(1, o)
    sv = torch.where(valid, s.gather(1, cidx.clamp(max=I - 1)), float("-inf"))
    o = torch.sort(sv, dim=1, descending=True, stable=True).indices         # score descending
    cidx, valid, sv = cidx.gather(1, o), valid.gather(1, o), sv.gather(1, o)
    o = torch.sort(valid.to(torch.int8), dim=1, descending=True, stable=True).indices[:, :m]
    return cidx.gather(1, o), sv.gather(1, o)


def _hits(scores, X_fold, X_heldout, k):
    """``(hits (U, m) float64 in rank order, |T| (U,) float64)`` after the validation."""
    reads = _MetricReads()
    _native(scores=scores, X_fold=X_fold, X_heldout=X_heldout)
    _, _, k = V.rv_metric_args(scores, X_fold, X_heldout, k, stats=reads)
    s = scores.detach().masked_fill(reads.fold, float("-inf"))
    idx, sv = _ranking(s, k)
    hit = reads.held.gather(1, idx) & torch.isfinite(sv)
    return hit.to(F64), reads.held.sum(1).to(F64), k


def _np_pairwise_rowsum(A):
    """Row sums of A (U, n) in NumPy's summation order (``pairwise_sum`` of
    numpy/_core/src/umath/loops_utils.h: n < 8 sequential; n <= 128 eight running partial sums
    over blocks of 8, combined as ((r0+r1)+(r2+r3))+((r4+r5)+(r6+r7)), then the tail; larger n
    split at n/2 rounded down to a multiple of 8). Floating-point addition is exact-rounded on
    every device, so the result is bit-identical to ``A.sum(axis=1)`` of the reference."""
    n = A.shape[1]
    if n < 8:
        res = torch.zeros(A.shape[0], dtype=A.dtype, device=A.device)
        for i in range(n):
            res = res + A[:, i]
        return res
    if n <= 128:
        r = A[:, :8].clone()
        i = 8
        while i < n - n % 8:
            r += A[:, i:i + 8]
            i += 8
        res = (r[:, 0] + r[:, 1] + (r[:, 2] + r[:, 3])) + (r[:, 4] + r[:, 5] + (r[:, 6] + r[:, 7]))
        for j in range(i, n):
            res = res + A[:, j]
        return res
    n2 = n // 2
    n2 -= n2 % 8
    return _np_pairwise_rowsum(A[:, :n2]) + _np_pairwise_rowsum(A[:, n2:])


def _discounts(m):
    """Host constants (the reference's): ``tp = 1 / log2(2..m+1)`` and ``idcg[j] = tp[:j].sum()``
    for j = 0..m, computed with NumPy so that they are the reference's bits (O(m^2) host adds,
    independent of the data; uploaded, never read back)."""
    tp = 1.0 / np.log2(np.arange(2, m + 2))
    return tp, np.array([tp[:j].sum() for j in range(m + 1)])


# --------------------------------------------------------------------------- public functions


def multvae_forward(X, params, mask=None, eps=None, keep_prob=0.5, mask_mode="dropout"):
    """``(logits (U, I), mu (U, d), logvar (U, d))`` of spec sec. 1 / 3 in the params' dtype.

    X dense or sparse CSR (first layer ``torch.sparse.mm``, never densified). Differentiable
    w.r.t. the params (and mask / eps) by autograd."""
    inter, keep_prob, mask_mode = _forward_args(X, params, mask, eps, keep_prob, mask_mode)
    return _forward(inter, params, mask, eps, keep_prob, mask_mode)


def multvae_loss(X, logits, mu, logvar, beta):
    """``(loss, nll, kl)`` 0-d tensors: ``nll`` by the fused :class:`_MultNLL`, ``kl`` in the
    official form, ``loss = nll + beta kl``; differentiable w.r.t. logits, mu, logvar."""
    inter, beta = _loss_args(X, logits, mu, logvar, beta)
    nll = _nll(logits, inter)
    kl = _kl(mu, logvar)
    return nll + beta * kl, nll, kl


def multvae_value_and_grad(X, params, beta, mask, eps, keep_prob=0.5, mask_mode="dropout",
                           E=None, lam_A=0.0):
    """``(loss 0-d, grads)`` of ``nll + beta kl (+ lam_A * mean_u L_A(u))`` by autograd of the
    whole objective (the fused nll's custom backward inside). ``grads`` has the params' keys
    (+ ``"E"`` when E is given). The anchor sets come from the unmasked X; mu, logvar from the
    masked input."""
    inter, beta, keep_prob, mask_mode, lam_A = _vag_args(X, params, beta, mask, eps, keep_prob,
                                                         mask_mode, E, lam_A)
    leaves = {k: params[k].detach().requires_grad_(True) for k in PARAM_KEYS}
    if E is not None:
        leaves["E"] = E.detach().requires_grad_(True)
    with torch.enable_grad():
        logits, mu, logvar = _forward(inter, leaves, mask, eps, keep_prob, mask_mode)
        loss = _nll(logits, inter) + beta * _kl(mu, logvar)
        if E is not None:
            L, valid = _pia_per_user(mu, logvar, inter, leaves["E"])
            loss = loss + lam_A * _reduce(L, valid, "mean")
        grads = torch.autograd.grad(loss, list(leaves.values()))
    return loss.detach(), dict(zip(leaves, grads))


def anneal_beta(step, cap=0.2, total_anneal_steps=200_000):
    """``min(cap, step / total_anneal_steps)``: the reference's host function (a Python float;
    the schedule is host bookkeeping of the training loop)."""
    return _ref_m.anneal_beta(step, cap=cap, total_anneal_steps=total_anneal_steps)


def item_centroids(X, E):
    """``(X @ E) / n_u`` (U, d); rows with ``n_u = 0`` give 0. X dense or CSR."""
    inter = _centroid_args(X, E)
    return _centroids(inter, E)


def pia_anchor_loss(mu, logvar, X, E, reduction="mean", z=None):
    """PIA's anchor loss (spec sec. 4): closed form, or the Monte Carlo estimate when ``z``
    (S, U, d) is given; ``reduction`` "mean" (users with n_u > 0), "sum" or "none" (U,) with
    NaN where n_u = 0. Differentiable w.r.t. mu, logvar, E (and z) by autograd."""
    inter, reduction = _pia_args(mu, logvar, X, E, reduction, z)
    L, valid = _pia_per_user(mu, logvar, inter, E, z)
    return _reduce(L, valid, reduction)


def pia_anchor_grad(mu, logvar, X, E):
    """``(dmu, dlogvar, dE)`` of the "mean" anchor loss, by autograd of the closed form."""
    inter, _ = _pia_args(mu, logvar, X, E, "mean", None)
    with torch.enable_grad():
        leaves = [t.detach().requires_grad_(True) for t in (mu, logvar, E)]
        L, valid = _pia_per_user(*leaves[:2], inter, leaves[2])
        return torch.autograd.grad(_reduce(L, valid, "mean"), leaves)


def gaussian_w2(mu1, s1, mu2, s2):
    """``sqrt(||mu1 - mu2||^2 + ||s1 - s2||^2)`` per row (U,) (s = std), the 2-Wasserstein
    distance of two diagonal Gaussians."""
    _w2_args(mu1, s1, mu2, s2)
    dm, ds = mu1 - mu2, s1 - s2
    return torch.sqrt((dm * dm).sum(-1) + (ds * ds).sum(-1))


def recall_at_k(scores, X_fold, X_heldout, k):
    """``|top-k ∩ T| / min(k, |T|)`` per user (U,), the scores' dtype, NaN where |T| = 0.

    ``scores`` (U, I) float32/float64 (no NaN or +inf; -inf = not ranked); ``X_fold``,
    ``X_heldout`` dense (any numeric dtype or bool) or sparse CSR, 0/1, disjoint; ``k`` int >= 1.
    Computed in float64 (the hit count is exact), returned in the scores' dtype."""
    hit, nT, k = _hits(scores, X_fold, X_heldout, k)
    den = torch.clamp(nT, max=k)
    out = torch.where(nT > 0, hit.sum(1) / den, torch.full_like(den, float("nan")))
    return out.to(scores.dtype)


def ndcg_at_k(scores, X_fold, X_heldout, k):
    """``DCG / IDCG`` per user (U,), the scores' dtype, NaN where |T| = 0:
    ``DCG = sum_{r<=m} 1[pi(r) in T] / log2(r + 1)``, ``IDCG = sum_{r<=min(k,|T|)} 1/log2(r + 1)``.

    In float64 with the reference's discount constants and NumPy's summation order
    (:func:`_np_pairwise_rowsum`): bit-identical to the reference for float64 scores."""
    hit, nT, k = _hits(scores, X_fold, X_heldout, k)
    m = hit.shape[1]
    tp, idcg = (torch.as_tensor(a, device=hit.device) for a in _discounts(m))   # uploads
    dcg = _np_pairwise_rowsum(hit * tp)
    ideal = idcg.index_select(0, torch.clamp(nT, max=m).to(torch.int64))
    out = torch.where(nT > 0, dcg / ideal, torch.full_like(dcg, float("nan")))
    return out.to(scores.dtype)
