r"""Cross-tokenizer distillation on torch tensors: DSKD-CMA, DWA-KD, CTPD, TIS-DPO
(cross_tokenizer.md).

Same functions, signatures and results as :mod:`refimpl.cross_tokenizer` (sec. 11), except
``span_align`` (host preprocessing of tokenizer offsets: reference only). Inputs are torch
tensors on any device; float32 or float64 (one dtype per call), and also bfloat16 for
``kd_divergence`` and ``tis_dpo_loss``, whose softmaxes are computed in float32 as the official
code does. Integer/bool tensors: masks (bool, integer or float in {0, 1}), labels, segment ids.

Structure:

- :class:`_KDDiv`, one custom ``torch.autograd.Function``, computes the per-token divergences
  of sec. 3 over row blocks of at most ``_BLOCK`` logits (the full vocabulary of each row at
  once) and saves only its two inputs: the backward recomputes ``p``, ``q`` per block and
  applies the closed form ``dz = p * (g - <p, g>) / tau`` (``g = df/dp``; ``p * g`` is formed
  directly, never ``q / p``). So neither pass keeps an N x V tensor beyond the block being
  worked on, and autograd keeps none. ``z_t`` is a constant (stop-gradient), as in every use
  of sec. 2 and 4 (the teacher, or ``sg z^t2s``): the reference's VJP covers ``z_s`` only.
  A vocabulary entry whose logit is infinite contributes 0 (the official ``inf_mask``, as
  the reference: the student's logit for forward_kl, either logit for the other kinds).
- ``entropy_weights``, ``certainty_weights``, ``kd_gate`` are detached (computed under
  ``no_grad`` in the compute dtype, per row block; bf16 logits give float32 weights).
- ``cma_align`` is plain torch (GEMMs, softmax) and differentiable by autograd w.r.t. every
  floating input (projector weights included). The mask offset ``-1e5 (1 - mu nu)`` is not
  added to a query row (key column) without any valid pair: the softmax of such a row is
  shift-invariant, so the result is the same, without rounding ``a - 1e5`` (float32 ulp
  2^-7, i.e. ~1% error in those rows' weights).
- ``dwa_dtw_loss`` compacts the selected positions of each row (``positions="mask"``: the
  masked positions in order; ``"prefix"``: the first n_b positions) into a padded batch with
  per-pair lengths, builds the soft band of every pair at once (:func:`_band`) and makes one
  call of :func:`backends.torch.softdtw.soft_dtw_divergence` (``kind="cosine"``,
  ``penalty=P``): the Soft-DTW is that backend's, differentiable w.r.t. X and Y.
- ``span_sum`` is one segment sum (``index_add``) into ``(rows, R)`` plus a dump slot for
  ``seg = -1``; ``ctpd_loss`` and ``tis_dpo_loss`` end in
  :func:`backends.torch.preference._dpo_from_logp` (the one DPO formula of this backend).
- :class:`_TisTokens` (custom Function) returns, per token, ``log p(y) - log q(y)`` and
  ``KL(p || q)`` from the two logit tensors, saving only its inputs; its backward recomputes
  the softmaxes per row block: ``da/dz = e_y - p``, ``dK/dz = p (log p - log q - K)``.
  ``ref_logits`` is a constant (the frozen reference).

Dtypes of the outputs: float32/float64 inputs give results in their dtype. For bfloat16
inputs the value outputs (``kd_divergence``'s divergences, ``tis_dpo_loss``'s loss and rewards)
are float32 (as ``backends.torch.preference``: not rounded to bf16) and the gradients
(``dz_s``, ``dlogits``) are bfloat16.

Host reads (documented): validation reads masks, labels and segment ids on the host to check
their values (the shared helpers of ``refimpl/_validate.py``, O(B N)); ``dwa_dtw_loss`` reads
the B pair lengths (the Soft-DTW backend sizes its wavefront with them); ``cma_band_penalty``
reads A (n x m) for the shared value check (no NaN, no negative entry); ``dwa_kd_loss`` reads
the token count ``n_tok``. No N x V tensor is ever copied to the host.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from backends.torch import native as _native
from backends.torch import to_numpy
from backends.torch.preference import _dpo_from_logp
from backends.torch.softdtw import soft_dtw_divergence
from refimpl import _validate as V

__all__ = [
    "kd_divergence", "kd_divergence_grad", "entropy_weights", "certainty_weights", "kd_gate",
    "cma_align", "cma_band_penalty", "dwa_gamma", "dwa_dtw_loss", "dwa_dtw_loss_grad",
    "dwa_kd_loss", "span_sum", "span_weights", "ctpd_loss", "ctpd_loss_grad", "tis_dpo_loss",
    "tis_dpo_loss_grad",
]

_BLOCK = 1 << 24          # logits per row block (64 MiB of fp32) in the full-vocabulary sweeps
_ENT_EPS = 1e-9           # the official code's epsilons
_MASK_NEG = 1e5           # a_ij -= 1e5 (1 - mu_i nu_j)


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _row_blocks(rows: int, width: int):
    step = max(1, _BLOCK // max(width, 1))
    return [(i, min(i + step, rows)) for i in range(0, rows, step)]


def _as_bool(mask) -> torch.Tensor:
    return mask if mask.dtype == torch.bool else mask != 0


# --------------------------------------------------------------------------- sec. 3 divergences


def _kd_terms(zs, zt, kind, tau, ttau, skew, alpha, need_grad):
    """One row block (rows, V) in the compute dtype: ``(div (rows,), dz (rows, V) or None)``.

    ``pg = p * df/dp`` is formed per kind (never ``q / p``) and zeroed where the entry's term
    is masked: ``isinf(z_s)`` for forward_kl (as the code's ``inf_mask``), ``isinf(z_s) |
    isinf(z_t)`` for the others; then ``dz = (pg - p sum pg) / tau``."""
    inf_s = torch.isinf(zs)
    both = inf_s | torch.isinf(zt)
    ls = torch.log_softmax(zs / tau, dim=-1)
    lq = torch.log_softmax(zt / ttau, dim=-1)
    p, q = ls.exp(), lq.exp()
    pg = None

    def masked(m, t):
        return torch.where(m, 0.0, t)

    if kind in ("forward_kl", "reverse_kl", "adaptive_kl"):
        if kind == "forward_kl":
            div = masked(inf_s, q * (lq - ls)).sum(-1)
            pg = masked(inf_s, -q) if need_grad else None
        elif kind == "reverse_kl":
            div = masked(both, p * (ls - lq)).sum(-1)
            pg = masked(both, p * (ls - lq + 1.0)) if need_grad else None
        else:
            qs, idx = torch.sort(q, dim=-1, stable=True)
            gap = (qs - p.gather(-1, idx)).abs()
            tail = torch.cumsum(qs, dim=-1) <= alpha
            g_head = torch.where(tail, 0.0, gap).sum(-1)
            g_tail = torch.where(tail, gap, 0.0).sum(-1)
            del qs, idx, gap, tail
            den = (g_head + g_tail).clamp_min(1e-9)
            a_f, a_r = g_head / den, g_tail / den
            div = (a_f * masked(inf_s, q * (lq - ls)).sum(-1)
                   + a_r * masked(both, p * (ls - lq)).sum(-1))
            if need_grad:
                pg = (a_f.unsqueeze(-1) * masked(inf_s, -q)
                      + a_r.unsqueeze(-1) * masked(both, p * (ls - lq + 1.0)))
    elif kind == "skewed_forward_kl":
        ms = skew * q + (1.0 - skew) * p
        lms = torch.log(ms)
        div = masked(both, q * (lq - lms)).sum(-1)
        if need_grad:
            pg = masked(both, -(1.0 - skew) * p * q / ms)
    elif kind == "skewed_reverse_kl":
        ms = (1.0 - skew) * q + skew * p
        lms = torch.log(ms)
        div = masked(both, p * (ls - lms)).sum(-1)
        if need_grad:
            pg = masked(both, p * (ls + 1.0 - lms) - skew * p * p / ms)
    else:  # js
        e = _ENT_EPS
        m = 0.5 * (p + q)
        lme = torch.log(m + e)
        lpe = torch.log(p + e)
        div = masked(both, 0.5 * (q * (torch.log(q + e) - lme) + p * (lpe - lme))).sum(-1)
        if need_grad:
            pg = masked(both, 0.5 * p * (lpe + p / (p + e) - lme - (p + q) / (2.0 * (m + e))))
    if need_grad:
        pg = (pg - p * pg.sum(-1, keepdim=True)) / tau       # dz = p (g - <p, g>) / tau
    return div, pg


class _KDDiv(torch.autograd.Function):
    """Per-token divergence of sec. 3 over the last axis; saves only ``(z_s, z_t)``."""

    @staticmethod
    def forward(ctx, zs, zt, opts):
        ctx.opts = opts
        ctx.save_for_backward(zs, zt)
        return _kd_sweep(zs, zt, opts, need_grad=False)[0]

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        zs, zt = ctx.saved_tensors
        dz = _kd_sweep(zs, zt, ctx.opts, need_grad=True, seed=grad)[1]    # recomputed p, q
        return dz, None, None


def _kd_sweep(zs, zt, opts, need_grad, seed=None):
    """Row-block sweep: ``(div (...), dz_s (..., V) or None)``; ``dz`` is the gradient of
    ``sum(seed * div)`` (``seed`` None: all ones)."""
    kind, tau, ttau, skew, alpha = opts
    cd = _acc_dtype(zs.dtype)
    Vn = zs.shape[-1]
    lead = zs.shape[:-1]
    zs2, zt2 = zs.reshape(-1, Vn), zt.reshape(-1, Vn)
    rows = zs2.shape[0]
    div = torch.empty(rows, dtype=cd, device=zs.device)
    dz = torch.empty_like(zs2) if need_grad else None
    sd = None if seed is None else seed.reshape(-1).to(cd)
    for r0, r1 in _row_blocks(rows, Vn):
        d, pg = _kd_terms(zs2[r0:r1].to(cd), zt2[r0:r1].to(cd), kind, tau, ttau, skew, alpha,
                          need_grad)
        div[r0:r1] = d
        if need_grad:
            if sd is not None:
                pg = pg * sd[r0:r1, None]
            dz[r0:r1] = pg.to(zs.dtype)
    return div.reshape(lead), (dz.reshape(zs.shape) if need_grad else None)


def _kd_args(z_s, z_t, kind, tau, tea_temp, use_tea_temp, skew, adaptive_alpha):
    _native(z_s=z_s, z_t=z_t)
    a = V.kd_args(z_s, z_t, kind, tau, tea_temp, use_tea_temp, skew, adaptive_alpha)
    ttau = a.tau * a.tea_temp if a.use_tea_temp else a.tau
    return (a.kind, a.tau, ttau, a.skew, a.adaptive_alpha)


def kd_divergence(z_s, z_t, *, kind="forward_kl", tau=2.0, tea_temp=1.0, use_tea_temp=False,
                  skew=0.1, adaptive_alpha=None):
    """Per-token divergence (sec. 3) over the last (vocabulary) axis; leading dims kept.

    ``p = softmax(z_s / tau)``, ``q = softmax(z_t / (tau tea_temp))`` (``tea_temp`` only with
    ``use_tea_temp``). Differentiable by autograd w.r.t. ``z_s`` (closed-form backward,
    nothing N x V saved); ``z_t`` is a constant."""
    opts = _kd_args(z_s, z_t, kind, tau, tea_temp, use_tea_temp, skew, adaptive_alpha)
    return _KDDiv.apply(z_s, z_t, opts)


def kd_divergence_grad(z_s, z_t, *, kind="forward_kl", tau=2.0, tea_temp=1.0,
                       use_tea_temp=False, skew=0.1, adaptive_alpha=None):
    """``(div, dz_s)`` with ``dz_s = d sum(div) / d z_s`` (per token: ``p (g - <p, g>) / tau``)."""
    opts = _kd_args(z_s, z_t, kind, tau, tea_temp, use_tea_temp, skew, adaptive_alpha)
    with torch.no_grad():
        return _kd_sweep(z_s.detach(), z_t.detach(), opts, need_grad=True)   # one sweep


# --------------------------------------------------------------------------- sec. 4 weights


def _entropy(z: torch.Tensor) -> torch.Tensor:
    """``H = -sum_v p log(p + 1e-9)``, ``p = softmax(z)`` over the last axis, per row block in
    the compute dtype (no gradient)."""
    cd = _acc_dtype(z.dtype)
    Vn = z.shape[-1]
    z2 = z.reshape(-1, Vn)
    H = torch.empty(z2.shape[0], dtype=cd, device=z.device)
    for r0, r1 in _row_blocks(z2.shape[0], Vn):
        p = torch.softmax(z2[r0:r1].to(cd), dim=-1)
        t = (p + _ENT_EPS).log_().mul_(p)
        H[r0:r1] = -t.sum(-1)
    return H.reshape(z.shape[:-1])


def _row_normalise(v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``n_row v mu / (sum v mu + 1e-9)``, ``n_row = max(#valid, 1)`` per row."""
    m = mask.to(v.dtype)
    vm = v * m
    n_row = m.sum(-1, keepdim=True).clamp_min(1.0)
    return n_row * vm / (vm.sum(-1, keepdim=True) + _ENT_EPS)


def entropy_weights(z_s, mask):
    """Student-uncertainty weights ``w^S`` (B, N') (sec. 4): mean 1 over each row's valid
    positions, 0 elsewhere; detached."""
    _native(z_s=z_s, mask=mask)
    V.logits_and_mask(z_s, mask, "z_s", "mask", to_numpy=to_numpy)
    with torch.no_grad():
        return _row_normalise(_entropy(z_s.detach()), _as_bool(mask))


def certainty_weights(z_t, mask):
    """Teacher-confidence weights ``w^T`` (B, M') (sec. 4):
    ``c = clip(1 - H / (log V_T + 1e-9), 0, 1)`` normalised like ``entropy_weights``."""
    _native(z_t=z_t, mask=mask)
    V.logits_and_mask(z_t, mask, "z_t", "mask", to_numpy=to_numpy)
    with torch.no_grad():
        H = _entropy(z_t.detach())
        c = (1.0 - H / (math.log(z_t.shape[-1]) + _ENT_EPS)).clamp(0.0, 1.0)
        return _row_normalise(c, _as_bool(mask))


def kd_gate(z_t2s, mask, step, *, warmup=300):
    """Soft gate ``g = max_v softmax(z_t2s)_v * min(1, (step + 1) / warmup) * mu`` (B, N');
    ``warmup = 0``: no ramp."""
    _native(z_t2s=z_t2s, mask=mask)
    V.logits_and_mask(z_t2s, mask, "z_t2s", "mask", to_numpy=to_numpy)
    step, warmup = V.nonneg_int(step, "step"), V.nonneg_int(warmup, "warmup")
    with torch.no_grad():
        cd = _acc_dtype(z_t2s.dtype)
        z = z_t2s.detach().to(cd)
        pmax = torch.exp(z.amax(-1) - torch.logsumexp(z, dim=-1))   # max_v softmax(z)_v
        ramp = min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0
        return pmax * ramp * _as_bool(mask).to(cd)


# --------------------------------------------------------------------------- sec. 2 CMA


def _linear(x, wb):
    w, b = wb
    return F.linear(x, w, b)


def cma_align(e_s_in, e_s_tgt, e_t_in, e_t_tgt, H_s, H_t, mask_s, mask_t, proj, W_s, W_t):
    """DSKD cross-model attention (sec. 2): ``dict(A_t2s (B, N', M'), A_s2t (B, M', N'),
    z_t2s (B, N', V_S), z_s2t (B, M', V_T))``. ``proj[name] = (weight (out, in), bias (out,))``
    as ``torch.nn.Linear``. Differentiable by autograd w.r.t. every floating input."""
    _native(e_s_in=e_s_in, e_s_tgt=e_s_tgt, e_t_in=e_t_in, e_t_tgt=e_t_tgt, H_s=H_s, H_t=H_t,
            mask_s=mask_s, mask_t=mask_t, W_s=W_s, W_t=W_t)
    for name, wb in (proj.items() if isinstance(proj, dict) else ()):
        if isinstance(wb, (tuple, list)) and len(wb) == 2:    # malformed: cma_args says so
            _native(**{f"proj[{name!r}] weight": wb[0], f"proj[{name!r}] bias": wb[1]})
    V.cma_args(e_s_in, e_s_tgt, e_t_in, e_t_tgt, H_s, H_t, mask_s, mask_t, proj, W_s, W_t,
               to_numpy=to_numpy)
    d_t = H_t.shape[-1]
    ms, mt = _as_bool(mask_s), _as_bool(mask_t)
    q = _linear(torch.cat((e_s_in, e_s_tgt), dim=-1), proj["query"])
    k_raw = torch.cat((e_t_in, e_t_tgt), dim=-1)
    k = k_raw / k_raw.std()
    v_t2s = _linear(H_t / H_t.std() + e_t_tgt / e_t_tgt.std(), proj["t2s"])
    v_s2t = _linear(H_s, proj["s2t"])
    a = q @ k.transpose(-1, -2) / math.sqrt(2 * d_t)
    both = ms.unsqueeze(-1) & mt.unsqueeze(-2)
    # a - 1e5 (1 - mu nu). A row (column) with no valid pair is shifted as a whole, which a
    # softmax ignores: it keeps a there instead of rounding a - 1e5 (ulp 2^-7 in float32);
    # in the others the masked weights are exp(-1e5 + ...) = 0 either way.
    off = torch.where(both, 0.0, _MASK_NEG).to(a.dtype)
    A_t2s = torch.softmax(a - off * both.any(-1, keepdim=True), dim=-1)
    A_s2t = torch.softmax((a - off * both.any(-2, keepdim=True)).transpose(-1, -2), dim=-1)
    z_t2s = (A_t2s @ v_t2s) @ W_s.T
    z_s2t = (A_s2t @ v_s2t) @ W_t.T
    return {"A_t2s": A_t2s, "A_s2t": A_s2t, "z_t2s": z_t2s, "z_s2t": z_s2t}


# --------------------------------------------------------------------------- sec. 5 band, DTW


def _band(A, n, m, alpha, w0, kappa, rho):
    """Soft band penalty of every pair at once. ``A`` (B, N, M) (detached), ``n``/``m`` (B,)
    device integer lengths: pair b uses the block ``A[b, :n_b, :m_b]``; entries outside it are
    0 in the result (the Soft-DTW backend ignores them)."""
    B, N, M = A.shape
    dt = A.dtype
    i = torch.arange(N, device=A.device, dtype=dt).view(1, -1, 1)
    j = torch.arange(M, device=A.device, dtype=dt).view(1, 1, -1)
    nf = n.to(dt).view(-1, 1, 1)
    mf = m.to(dt).view(-1, 1, 1)
    block = (i < nf) & (j < mf)
    Ab = torch.where(block, A, 0.0)
    Ab = torch.where(block, (Ab + _ENT_EPS) / (Ab.sum(-1, keepdim=True) + _ENT_EPS), 0.0)
    h = -torch.where(block, Ab * torch.log(torch.where(block, Ab, 1.0)), 0.0).sum(-1,
                                                                               keepdim=True)
    centre = alpha * (Ab * j).sum(-1, keepdim=True) + (1.0 - alpha) * i * mf / nf.clamp_min(1.0)
    width = w0 + kappa * h
    return (block & ((j - centre).abs() > width)).to(dt) * rho


def cma_band_penalty(A, *, alpha=0.7, w0=5.0, kappa=2.0, rho=1.0):
    """Band penalty ``P (n, m)`` (or (..., n, m)) of attention blocks ``A`` (sec. 5): entries
    in ``{0, rho}``; not differentiable (A is detached in DWA-KD). Reads A on the host once
    (O(n m), the shared check that it holds no NaN and no negative entry)."""
    _native(A=A)
    V.float_array(A, "A")
    V.band_attention(to_numpy(A))          # host read of A (n x m): the values' check
    alpha, w0, kappa, rho = V.band_args(alpha, w0, kappa, rho)
    with torch.no_grad():
        n, m = A.shape[-2:]
        A3 = A.detach().reshape(-1, n, m)
        lens = torch.tensor([n, m], device=A.device).expand(A3.shape[0], 2)
        P = _band(A3, lens[:, 0], lens[:, 1], alpha, w0, kappa, rho)
        return P.reshape(A.shape)


def dwa_gamma(step, *, gamma0=2.0, gamma1=0.8, steps=3570):
    """``gamma_t = g0 + (g1 - g0) min(1, (t + 1) / T_g)`` (a Python float; ``steps = 0``: g0)."""
    step, gamma0, gamma1, steps = V.gamma_schedule(step, gamma0, gamma1, steps)
    if steps == 0:
        return gamma0
    return gamma0 + (gamma1 - gamma0) * min(1.0, (step + 1) / steps)


def _compact(X, mask):
    """Rows of ``X`` (B, N, d) at the masked positions, in order, moved to the front of a
    zero-padded (B, N, d) tensor (differentiable gather); returns ``(Xc, rank, lengths)``."""
    m = _as_bool(mask)
    rank = torch.cumsum(m.to(torch.int64), dim=-1) - 1
    # unselected positions are routed to index N - 1 with a zero contribution...
    B, N = m.shape
    dest = torch.where(m, rank, N - 1)
    src = torch.where(m.unsqueeze(-1), X, 0.0)
    Xc = torch.zeros_like(X).scatter_add(1, dest.unsqueeze(-1).expand_as(X), src)
    return Xc, dest, m.sum(-1)


def _compact_A(A, ds, dt_, ms, mt):
    """``A[b, i, j]`` at the masked (i, j) moved to ``[b, rank_i, rank_j]`` (zeros elsewhere)."""
    B, N, M = A.shape
    keep = ms.unsqueeze(-1) & mt.unsqueeze(-2)
    flat = ds.unsqueeze(-1) * M + dt_.unsqueeze(-2)
    out = torch.zeros(B, N * M, dtype=A.dtype, device=A.device)
    out.scatter_add_(1, flat.reshape(B, -1), torch.where(keep, A, 0.0).reshape(B, -1))
    return out.view(B, N, M)


def _dtw_value(X, Y, mask_s, mask_t, A, a):
    gamma, positions = a.gamma, a.positions
    alpha, w0, kappa, rho = a.band
    ms, mt = _as_bool(mask_s), _as_bool(mask_t)
    n, m = ms.sum(-1), mt.sum(-1)
    if positions == "mask":
        Xc, ds, _ = _compact(X, ms)
        Yc, dt_, _ = _compact(Y, mt)
    else:
        Xc, Yc = X, Y
    P = None
    if a.use_band:
        with torch.no_grad():
            Ad = A.detach()
            if positions == "mask":
                Ad = _compact_A(Ad, ds, dt_, ms, mt)
            P = _band(Ad, n, m, alpha, w0, kappa, rho).to(X.dtype)
    D = soft_dtw_divergence(Xc, Yc, gamma, kind="cosine", len_x=n, len_y=m, penalty=P)
    return D.sum()


def _dtw_args(X, Y, mask_s, mask_t, gamma, A, positions, band, alpha, w0, kappa, rho):
    _native(X=X, Y=Y, mask_s=mask_s, mask_t=mask_t, A=A)
    return V.dwa_dtw_args(X, Y, mask_s, mask_t, gamma, A, positions, band, alpha, w0, kappa,
                          rho, to_numpy=to_numpy)


def dwa_dtw_loss(X, Y, mask_s, mask_t, gamma, A=None, *, positions="mask", band=True,
                 alpha=0.7, w0=5.0, kappa=2.0, rho=1.0):
    """``L_DTW = sum_b D_gamma(X_b, Y_b; P_b)`` (sec. 5), cosine cost, one batched Soft-DTW
    divergence call; differentiable by autograd w.r.t. X and Y (A is detached)."""
    a = _dtw_args(X, Y, mask_s, mask_t, gamma, A, positions, band, alpha, w0, kappa, rho)
    return _dtw_value(X, Y, mask_s, mask_t, A, a)


def dwa_dtw_loss_grad(X, Y, mask_s, mask_t, gamma, A=None, *, positions="mask", band=True,
                      alpha=0.7, w0=5.0, kappa=2.0, rho=1.0):
    """``(value, dX, dY)`` (autograd through the Soft-DTW backend's explicit backward)."""
    a = _dtw_args(X, Y, mask_s, mask_t, gamma, A, positions, band, alpha, w0, kappa, rho)
    with torch.enable_grad():
        Xl = X.detach().requires_grad_(True)
        Yl = Y.detach().requires_grad_(True)
        value = _dtw_value(Xl, Yl, mask_s, mask_t, A, a)
        dX, dY = torch.autograd.grad(value, (Xl, Yl), allow_unused=True)
    dX = torch.zeros_like(X) if dX is None else dX
    dY = torch.zeros_like(Y) if dY is None else dY
    return value.detach(), dX, dY


# --------------------------------------------------------------------------- sec. 4-6 composite


def _token_nll(z, labels, mask):
    """``sum_{valid} -log softmax(z)[y]`` (CE without temperature), summed over everything."""
    y = torch.where(mask, labels, 0).to(torch.int64)
    lp = torch.log_softmax(z, dim=-1).gather(-1, y.unsqueeze(-1)).squeeze(-1)
    return -(torch.where(mask, lp, 0.0)).sum()


def dwa_kd_loss(z_s, z_t, labels_s, labels_t, H_s, H_t, e_s_in, e_s_tgt, e_t_in, e_t_tgt, proj,
                W_s, W_t, step, *, rates=(0.5, 0.5, 0.2), tau=2.0, kind="skewed_reverse_kl",
                variant="dwa", positions="mask", gamma0=2.0):
    """DWA-KD total loss (sec. 4-6): ``(loss, parts)``, ``parts`` = ce, t2s_ce, t2s_kd, s2t_kd,
    kd, dtw_emb, dtw_hid, dtw (0-d tensors), gamma, n_tok (Python floats); ``loss`` =
    ``(r_ce ce + r_kd kd + r_dtw dtw) / n_tok``. Differentiable by autograd w.r.t. the
    student logits, hidden states, target embeddings (through the ``emb`` DTW layer) and the
    projectors; detached as in the code: the embeddings entering CMA, the heads, the teacher
    side, ``z_t2s`` inside Div, the weights, the gate and A in the band."""
    _native(z_s=z_s, z_t=z_t, labels_s=labels_s, labels_t=labels_t, H_s=H_s, H_t=H_t,
            e_s_in=e_s_in, e_s_tgt=e_s_tgt, e_t_in=e_t_in, e_t_tgt=e_t_tgt, W_s=W_s, W_t=W_t)
    B, N, Vs, M, Vt, _, _, (r_ce, r_kd, r_dtw), variant, step = V.dwa_kd_args(
        z_s, z_t, labels_s, labels_t, H_s, H_t, W_s, W_t, rates, variant, kind, step,
        to_numpy=to_numpy)
    ms, mt = labels_s != -100, labels_t != -100
    det = [x.detach() for x in (e_s_in, e_s_tgt, e_t_in, e_t_tgt, W_s, W_t)]
    cma = cma_align(det[0], det[1], det[2], det[3], H_s, H_t.detach(), ms, mt, proj, det[4],
                    det[5])
    if int(W_s.shape[0]) != Vs or int(W_t.shape[0]) != Vt:
        raise ValueError(f"W_s / W_t must have V_S = {Vs} / V_T = {Vt} rows (the logits' "
                         f"vocabularies), got {tuple(W_s.shape)} / {tuple(W_t.shape)}")
    if tuple(z_t.shape[:2]) != tuple(H_t.shape[:2]) or tuple(z_s.shape[:2]) != tuple(H_s.shape[:2]):
        raise ValueError("z_s / z_t must share (B, N') / (B, M') with H_s / H_t")
    z_t2s, z_s2t = cma["z_t2s"], cma["z_s2t"]
    zt = z_t.detach()
    ce = _token_nll(z_s, labels_s, ms)
    t2s_ce = _token_nll(z_t2s, labels_s, ms)
    div = kd_divergence(z_s, z_t2s.detach(), kind=kind, tau=tau, tea_temp=1.0,
                        use_tea_temp=True)
    s2t_div = kd_divergence(z_s2t, zt, kind="forward_kl", tau=tau)
    if variant == "dwa":
        t2s_kd = (entropy_weights(z_s, ms) * kd_gate(z_t2s, ms, step) * div).sum()
        s2t_kd = (certainty_weights(zt, mt) * mt.to(s2t_div.dtype) * s2t_div).sum()
    else:
        hit = (z_t2s.detach().argmax(-1) == torch.where(ms, labels_s, 0)) & ms
        t2s_kd = torch.where(hit, div, 0.0).sum()
        s2t_kd = torch.where(mt, s2t_div, 0.0).sum()
    kd = t2s_ce + t2s_kd + s2t_kd
    gamma = dwa_gamma(step, gamma0=gamma0)
    dtw_emb = dtw_hid = z_s.new_zeros(())
    if r_dtw > 0:
        V.projector(proj, "dtw_embed_t2s", int(e_t_tgt.shape[-1]), int(e_s_tgt.shape[-1]))
        A = cma["A_t2s"].detach()
        y_emb = _linear(e_t_tgt.detach(), proj["dtw_embed_t2s"])
        y_hid = _linear(H_t.detach(), proj["t2s"])
        dtw_emb = dwa_dtw_loss(e_s_tgt, y_emb, ms, mt, gamma, A, positions=positions)
        dtw_hid = dwa_dtw_loss(H_s, y_hid, ms, mt, gamma, A, positions=positions)
    dtw = dtw_emb + dtw_hid
    n_tok = max(float(ms.sum()), 1.0)            # one host read (the token count)
    loss = (r_ce * ce + r_kd * kd + r_dtw * dtw) / n_tok
    parts = {"ce": ce, "t2s_ce": t2s_ce, "t2s_kd": t2s_kd, "s2t_kd": s2t_kd, "kd": kd,
             "dtw_emb": dtw_emb, "dtw_hid": dtw_hid, "dtw": dtw, "gamma": gamma, "n_tok": n_tok}
    return loss, parts


# --------------------------------------------------------------------------- sec. 8 spans


def span_sum(token_logps, seg, num_spans, *, reduce="sum"):
    """``out[..., r] = sum_{k: seg[..., k] = r} token_logps[..., k]`` (``seg = -1`` ignored), one
    ``index_add``. ``seg`` has the shape of ``token_logps`` (..., K) or (K,) (shared by every
    row). ``reduce="mean"`` divides by the span's own token count (0 for an empty span),
    ``"padded_mean"`` by the padded width (the largest token count of any span of the call:
    the code's average). Differentiable by autograd w.r.t. ``token_logps``."""
    _native(token_logps=token_logps, seg=seg)
    reduce = V.choice(reduce, "reduce", V.SPAN_REDUCES)
    V.float_array(token_logps, "token_logps")
    _, R = V.span_seg(seg, tuple(token_logps.shape), num_spans, to_numpy=to_numpy)
    K = token_logps.shape[-1]
    lead = tuple(token_logps.shape[:-1])
    x = token_logps.reshape(-1, K)
    s = seg.to(torch.int64).expand(token_logps.shape).reshape(-1, K)
    rows = x.shape[0]
    base = torch.arange(rows, device=x.device).unsqueeze(-1) * R
    idx = torch.where(s >= 0, base + s, rows * R).reshape(-1)      # -1 -> the dump slot
    out = x.new_zeros(rows * R + 1).index_add(0, idx, x.reshape(-1))[:-1].view(rows, R)
    if reduce != "sum":
        cnt = torch.zeros(rows * R + 1, dtype=x.dtype, device=x.device).index_add_(
            0, idx, torch.ones(idx.shape, dtype=x.dtype, device=x.device))[:-1].view(rows, R)
        if reduce == "mean":
            out = torch.where(cnt > 0, out / cnt.clamp_min(1.0), 0.0)
        else:
            width = cnt.amax() if cnt.numel() else cnt.new_zeros(())
            out = out / width.clamp_min(1.0)
    return out.view(*lead, R)


def span_weights(lp_pos, lp_neg, mu, *, k=1.0, lo=-0.5, hi=1.5, decimals=2):
    """``w = k exp(mu clip(lp_pos - lp_neg, lo, hi))`` rounded half to even at ``decimals``
    (None: no rounding); ``mu`` (+1 chosen, -1 rejected) a number or a tensor broadcasting
    against the log-probs. Not differentiable (fixed offline weights)."""
    k, lo, hi, decimals = V.span_weight_args(k, lo, hi, decimals)
    _native(lp_pos=lp_pos, lp_neg=lp_neg)
    V.span_logp_pair(lp_pos, lp_neg)
    if isinstance(mu, torch.Tensor):
        mu_shape = tuple(mu.shape)
    else:
        V.host_array(mu, "mu")
        mu_shape = tuple(torch.as_tensor(mu).shape)
    try:
        torch.broadcast_shapes(mu_shape, tuple(lp_pos.shape))
    except RuntimeError:
        raise ValueError(f"mu of shape {mu_shape} does not broadcast against lp_pos "
                         f"{tuple(lp_pos.shape)}") from None
    with torch.no_grad():
        mu_t = torch.as_tensor(mu, dtype=lp_pos.dtype, device=lp_pos.device)
        w = k * torch.exp(mu_t * (lp_pos - lp_neg).clamp(lo, hi))
        return w if decimals is None else torch.round(w, decimals=decimals)


# --------------------------------------------------------------------------- sec. 9 CTPD


def _ctpd(ellS, ellT, w, beta):
    logp = (w * ellS).sum(-1)
    ref = (w * ellT).sum(-1)
    return _dpo_from_logp(logp, ref, beta, "sigmoid", 0.0)


def _ctpd_args(ellS, ellT, w, beta):
    _native(ellS=ellS, ellT=ellT, w=w)
    return V.ctpd_args(ellS, ellT, w, beta)[2]


def ctpd_loss(ellS, ellT, w, beta=0.1):
    """Teacher-anchored DPO over spans (sec. 9): ``(loss, rewards_w (B,), rewards_l (B,))``;
    ``Delta = sum_r w (ellS - ellT)``, ``loss = mean softplus(-beta (Delta_w - Delta_l))``.
    Differentiable by autograd w.r.t. ``ellS`` (and ``ellT``, ``w``)."""
    beta = _ctpd_args(ellS, ellT, w, beta)
    return _ctpd(ellS, ellT, w, beta)


def ctpd_loss_grad(ellS, ellT, w, beta=0.1):
    """``(loss, d_ellS)`` with ``d_ellS = +-w dL/dd`` on the chosen/rejected rows."""
    beta = _ctpd_args(ellS, ellT, w, beta)
    with torch.enable_grad():
        l = ellS.detach().requires_grad_(True)
        loss = _ctpd(l, ellT.detach(), w.detach(), beta)[0]
        (g,) = torch.autograd.grad(loss, l)
    return loss.detach(), g


# --------------------------------------------------------------------------- sec. 10 TIS-DPO


def _tis_block(z, zr, y, need_grad, ga=None, gk=None):
    """One row block in the compute dtype: ``(a = lp[y] - lq[y], K = sum p (lp - lq))`` or
    the gradient ``ga (e_y - p) + gk p (lp - lq - K)``."""
    lp = torch.log_softmax(z, dim=-1)
    lq = torch.log_softmax(zr, dim=-1)
    diff = lp - lq
    p = lp.exp()
    K = (p * diff).sum(-1)
    if not need_grad:
        a = diff.gather(-1, y.unsqueeze(-1)).squeeze(-1)
        return a, K
    G = p * (gk.unsqueeze(-1) * (diff - K.unsqueeze(-1)) - ga.unsqueeze(-1))
    G.scatter_add_(-1, y.unsqueeze(-1), ga.unsqueeze(-1))
    return G


def _tis_sweep(z, zr, y, need_grad, ga=None, gk=None):
    cd = _acc_dtype(z.dtype)
    Vn = z.shape[-1]
    z2, zr2, y2 = z.reshape(-1, Vn), zr.reshape(-1, Vn), y.reshape(-1)
    rows = z2.shape[0]
    if need_grad:
        ga2, gk2 = ga.reshape(-1).to(cd), gk.reshape(-1).to(cd)
        dz = torch.empty_like(z2)
        for r0, r1 in _row_blocks(rows, Vn):
            dz[r0:r1] = _tis_block(z2[r0:r1].to(cd), zr2[r0:r1].to(cd), y2[r0:r1], True,
                                   ga2[r0:r1], gk2[r0:r1]).to(z.dtype)
        return dz.view(z.shape)
    a = torch.empty(rows, dtype=cd, device=z.device)
    K = torch.empty(rows, dtype=cd, device=z.device)
    for r0, r1 in _row_blocks(rows, Vn):
        a[r0:r1], K[r0:r1] = _tis_block(z2[r0:r1].to(cd), zr2[r0:r1].to(cd), y2[r0:r1], False)
    return a.view(y.shape), K.view(y.shape)


class _TisTokens(torch.autograd.Function):
    """Per token ``(log p(y) - log q(y), KL(p || q))``, ``p = softmax(logits)``,
    ``q = softmax(ref_logits)``; saves only its inputs. ``ref_logits`` is a constant."""

    @staticmethod
    def forward(ctx, z, zr, y):
        ctx.save_for_backward(z, zr, y)
        return _tis_sweep(z, zr, y, need_grad=False)

    @staticmethod
    @once_differentiable
    def backward(ctx, ga, gk):
        z, zr, y = ctx.saved_tensors
        return _tis_sweep(z, zr, y, True, ga, gk), None, None


def _tis_args(logits, ref_logits, labels, mask, weights, beta, alpha, token_level):
    _native(logits=logits, ref_logits=ref_logits, labels=labels, mask=mask, weights=weights)
    a = V.tis_dpo_args(logits, ref_logits, labels, mask, weights, beta, alpha,
                       to_numpy=to_numpy)
    return a[3], a[4], bool(token_level)


def _tis(logits, ref_logits, labels, mask, weights, beta, alpha, token_level):
    m = _as_bool(mask)
    y = torch.where(m, labels, 0).to(torch.int64)
    a, K = _TisTokens.apply(logits, ref_logits, y)
    c = torch.where(m, weights.to(a.dtype), 0.0)
    u = (c * a).sum(-1)
    Ks = (c * K).sum(-1)
    # the DPO formula with logp = u - alpha K and ref = 0: beta [(u_c - u_r) - alpha (K_c - K_r)]
    if token_level:
        loss, _, _ = _dpo_from_logp(u - alpha * Ks, torch.zeros_like(u), beta, "sigmoid", 0.0)
        r = (beta * (u - Ks)).detach()
    else:
        loss, _, _ = _dpo_from_logp(u, torch.zeros_like(u), beta, "sigmoid", 0.0)
        r = (beta * u).detach()
    B = u.shape[0] // 2
    return loss, r[:B], r[B:]


def tis_dpo_loss(logits, ref_logits, labels, mask, weights, beta, *, alpha=0.5,
                 token_level=True):
    """TIS-DPO (sec. 10): ``(loss, rewards_w (B,), rewards_l (B,))``; rows stacked chosen first.
    Differentiable by autograd w.r.t. ``logits`` (nothing R x T x V saved)."""
    beta, alpha, token_level = _tis_args(logits, ref_logits, labels, mask, weights, beta, alpha,
                                         token_level)
    return _tis(logits, ref_logits.detach(), labels, mask, weights, beta, alpha, token_level)


def tis_dpo_loss_grad(logits, ref_logits, labels, mask, weights, beta, *, alpha=0.5,
                      token_level=True):
    """``(loss, dlogits)`` (dlogits in the dtype of ``logits``)."""
    beta, alpha, token_level = _tis_args(logits, ref_logits, labels, mask, weights, beta, alpha,
                                         token_level)
    with torch.enable_grad():
        z = logits.detach().requires_grad_(True)
        loss = _tis(z, ref_logits.detach(), labels, mask, weights.detach(), beta, alpha,
                    token_level)[0]
        (g,) = torch.autograd.grad(loss, z)
    return loss.detach(), g
