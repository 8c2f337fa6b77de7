r"""DPO-family losses through a linear head, and logits-SAM, on torch tensors (preference.md).

Same functions, signatures and results as :mod:`refimpl.preference`; inputs are torch tensors
on any device. H (R, T, d), W (V, d), optional b (V,) in float32, float64 or bfloat16 (one
dtype for all three); labels (R, T) integer (already shifted); mask (R, T) bool or {0, 1};
ref_logp (R,) float. Rows are stacked chosen first (row i chosen, row B + i rejected).

Structure (preference.md sec. 8):

- :class:`_TokenLogp`, one custom ``torch.autograd.Function``, computes the log-probs
  ``z_y - LSE(z)`` of the selected tokens of the *compacted* rows (mask = 1 only; prompt and
  padding never reach a matmul) with an online log-sum-exp, storing only ``lse`` (n values);
  its backward recomputes each logit block, ``G_b = c (onehot_b(y) - exp(Z_b - lse))`` and
  accumulates ``dH``, ``dW``, ``db``. Both sweeps run vocabulary blocks outside and token
  blocks inside (``vocab_chunk`` x ``token_chunk``; ``None`` = one block): ``dW_b``/``db_b``
  are complete after their inner loop and go straight to the output, so the workspace is one
  logit block (plus its exp), dH (n x d, accumulation dtype) and the running (max, sum, z_y)
  of the n tokens. With chunks set, no N x V tensor exists at any time.
- Accumulation dtype: float64 for float64 inputs, float32 otherwise. **bf16** inputs are GEMM
  operands as they are (:func:`_mm`: on CUDA one tensor-core GEMM with fp32 accumulation and
  an fp32 result, ``torch.mm(..., out_dtype=torch.float32)``; elsewhere the same arithmetic on
  upcast operands); the logit gradient G is rounded to bf16 as the operand of the dH and dW
  GEMMs (as Liger and every fused bf16 head do); softmax, LSE and G itself are fp32.
- The DPO formula (sec. 3) is :func:`_dpo_from_logp`, plain torch code written once, used by
  every function here (losses, rewards and ``dL/dlogp`` via autograd).
- logits-SAM (sec. 5, 6) runs the four sweeps: A) clean forward (lse0, L_pre, kappa0),
  B) ``g_W = G0^T H`` into one V x d buffer (float32 for bf16) -> ``eps_W = rho g_W / n``,
  A') forward at ``W + eps``, B') backward at Z' -> ``dH = G'(W + eps)``, ``dW = G'^T H``,
  ``db = sum G'``. The perturbation is never rounded into a bf16 W (:class:`_Shift`): float32
  and float64 heads form ``W_b + eps_b`` per block in the accumulation dtype; a bf16 head keeps
  ``eps = s E`` with ``E`` bf16 (relative precision 2^-9) and adds ``s H E_b^T`` (one more bf16
  GEMM) to the logits and ``s G E_b`` to dH. ``logits_sam_dpo`` returns ``L_post``
  differentiable by autograd w.r.t. H, W, b with eps frozen (the same Function, with the
  perturbation passed as a constant).
  ``delta="gram"`` (non-adaptive only) replaces the V x d buffer by ``K = H_c H_c^T`` (n x n):
  ``Z' = Z0 + (rho/n) K G0`` with G0 recomputed per vocab block, ``n^2 = <G0 G0^T, K>_F``, and
  ``dH = G' W + (rho/n) (G' G0^T) H``; ``eps_W`` is returned as None (as the reference). It
  computes in the accumulation dtype and recomputes G0 of all n tokens per vocab block (and
  per token block in the forward): worth it only when n << d.

Dtypes of the outputs (our choice): gradients have the input dtype; scalar/vector results
(losses, log-probs, rewards, ``grad_norm``) have the accumulation dtype (float32 for bf16
inputs, so that e.g. ``loss_post - loss_pre`` is not rounded to bf16); ``eps_W`` is float32 for
bf16 inputs (it is below the bf16 spacing of W, sec. 5).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from backends.torch import native as _native
from backends.torch import to_numpy
from refimpl import _validate as V

__all__ = [
    "dpo_loss", "dpo_loss_grad", "linear_dpo_loss", "linear_dpo_loss_grad", "logits_sam_dpo",
    "logits_sam_dpo_grad", "seq_logps",
]

LOSS_TYPES = V.PREF_LOSS_TYPES
DELTAS = V.PREF_DELTAS



def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


# --------------------------------------------------------------------------- validation
# Through the shared helpers of refimpl/_validate.py (the reference's messages).


def _dpo_options(beta, loss_type, label_smoothing):
    return V.pref_loss(beta, loss_type, label_smoothing)


def _logp_pair(logp, ref_logp):
    return V.pref_logps(logp, ref_logp)


def _head(H, W, labels, mask, b):
    """Shapes of a linear-head call (reads labels and mask on the host, O(R T))."""
    if not isinstance(labels, torch.Tensor) or not isinstance(mask, torch.Tensor):
        raise TypeError("labels and mask must be torch tensors")
    return V.pref_head(H, W, labels, mask, b, to_numpy=to_numpy)


class _Tokens:
    """The compacted completion tokens of a call (mask = 1 only)."""

    def __init__(self, H, labels, mask, Vn: int):
        R, T, d = H.shape
        m = mask.reshape(-1) != 0
        self.pos = torch.nonzero(m).squeeze(1)                 # flat indices (n,)
        self.y = labels.reshape(-1).index_select(0, self.pos).to(torch.int64)
        self.row = torch.div(self.pos, T, rounding_mode="floor")
        self.counts = torch.bincount(self.row, minlength=R)   # n_r
        self.R, self.T, self.d = R, T, d

    def compact(self, H):
        flat = H.reshape(-1, self.d)
        if self.pos.numel() == flat.shape[0]:        # no masked token: no gather
            return flat
        return flat.index_select(0, self.pos)

    def row_sum(self, tok, average: bool):
        out = torch.zeros(self.R, dtype=tok.dtype, device=tok.device).index_add(0, self.row, tok)
        if average:
            if bool((self.counts == 0).any()):
                empty = torch.nonzero(self.counts == 0).squeeze(1).tolist()
                raise ValueError(f"mask has rows with an empty completion {empty}: the token mean "
                                 f"(IPO / average=True) is undefined (n_r = 0)")
            out = out / self.counts.to(out.dtype)
        return out


# --------------------------------------------------------------------------- the fused head


def _blocks(n: int, chunk):
    step = chunk if chunk is not None else max(n, 1)
    return [(i, min(i + step, n)) for i in range(0, n, step)]


def _mm(a, b):
    """``a @ b`` in the accumulation dtype. bf16 operands: on CUDA one tensor-core GEMM with
    fp32 accumulation and an fp32 result (``torch.mm(..., out_dtype=torch.float32)``); on
    other devices the same arithmetic on upcast operands (a product of two bf16 values is
    exact in fp32, so only the summation order differs)."""
    if a.dtype != torch.bfloat16:
        return a @ b
    if a.is_cuda:
        return torch.mm(a, b, out_dtype=torch.float32)
    return a.float() @ b.float()


def _operand(x, cd):
    """A GEMM operand: bf16 stays bf16 (for :func:`_mm`), anything else in the accumulation dtype."""
    return x if x.dtype == torch.bfloat16 else x.to(cd)


class _Shift:
    """A constant weight perturbation eps_W (V, d) in the accumulation dtype (what
    ``logits_sam_dpo_grad`` returns). With a bf16 head it is also held as ``s * E``,
    ``s = max |eps|`` and ``E = bf16(eps / s)`` — relative precision 2^-9 — so that bf16 GEMMs
    carry it: ``W + eps`` rounded to bf16 would drop it (its entries lie below the bf16 spacing
    of W, preference.md sec. 5)."""

    def __init__(self, eps, head_dtype):
        self.eps = eps
        self.split = head_dtype == torch.bfloat16
        if self.split:
            self.s = eps.abs().amax().clamp(min=torch.finfo(torch.float32).tiny)
            self.E = (eps / self.s).to(torch.bfloat16)


def _head_block(W, pert, j0, j1, cd):
    """Rows j0:j1 of the effective head ``W + eps`` as GEMM operands ``(W_b, E_b, s)``: float32/64
    ``W_b + eps_b`` in the accumulation dtype (``E_b`` None); bf16 ``W_b`` and ``eps_b = s E_b``."""
    Wb = _operand(W[j0:j1], cd)
    if not isinstance(pert, _Shift):
        return Wb, None, None
    if pert.split:
        return Wb, pert.E[j0:j1], pert.s
    return Wb + pert.eps[j0:j1], None, None


def _times_head_t(Hr, blk):
    """``H_r (W + eps)_b^T`` in the accumulation dtype."""
    Wb, Eb, s = blk
    Z = _mm(Hr, Wb.T)
    return Z if Eb is None else Z + s * _mm(Hr, Eb.T)


def _times_head(G, blk):
    """``G_b (W + eps)_b`` (G rounded to bf16 for a bf16 head, as a tensor-core operand)."""
    Wb, Eb, s = blk
    G = G.to(Wb.dtype)
    out = _mm(G, Wb)
    return out if Eb is None else out + s * _mm(G, Eb)


def _logits(Hr, b, pert, blk, i0, i1, j0, j1, cd):
    """The logit block ``Z_b = H_r (W + eps)_b^T + b_b`` (+ the Gram shift) in the accumulation dtype."""
    Z = _times_head_t(Hr, blk)
    if b is not None:
        Z = Z + b[j0:j1].to(cd)
    if isinstance(pert, _Gram):
        Z = Z + pert.delta(i0, i1, j0, j1)
    return Z


def _onehot_add(G, yr, j0, j1, val):
    """``G[k, y_k - j0] += val_k`` for the rows whose target lies in block j0:j1 (no host
    synchronisation: rows outside the block add 0 at a clamped column)."""
    inb = (yr >= j0) & (yr < j1)
    col = (yr - j0).clamp(0, j1 - j0 - 1)
    return G.index_put_((torch.arange(G.shape[0], device=G.device), col),
                        torch.where(inb, val, 0).to(G.dtype), accumulate=True)


def _forward_sweep(Hc, W, b, pert, y, token_chunk, vocab_chunk):
    """Per-token ``(z_y - lse, lse)`` with an online LSE (sweeps A, A'): vocabulary blocks
    outside, token blocks inside, a running (max, sum, z_y) per token; ``z_y`` is picked from
    the block that holds it."""
    cd = _acc_dtype(Hc.dtype)
    n, dev = Hc.shape[0], Hc.device
    mx = torch.full((n,), -torch.inf, dtype=cd, device=dev)
    s = torch.zeros(n, dtype=cd, device=dev)
    zy = torch.zeros(n, dtype=cd, device=dev)
    for j0, j1 in _blocks(W.shape[0], vocab_chunk):
        blk = _head_block(W, pert, j0, j1, cd)
        for i0, i1 in _blocks(n, token_chunk):
            Z = _logits(_operand(Hc[i0:i1], cd), b, pert, blk, i0, i1, j0, j1, cd)
            m0 = mx[i0:i1]
            m1 = torch.maximum(m0, Z.amax(dim=1))
            s[i0:i1] = s[i0:i1] * torch.exp(m0 - m1) + torch.exp(Z - m1[:, None]).sum(dim=1)
            mx[i0:i1] = m1
            yr = y[i0:i1]
            inb = (yr >= j0) & (yr < j1)
            picked = Z.gather(1, (yr - j0).clamp(0, j1 - j0 - 1)[:, None])[:, 0]
            zy[i0:i1] = torch.where(inb, picked, zy[i0:i1])
    lse = mx + torch.log(s)
    return zy - lse, lse


def _grad_block(Z, yr, lr, cr, j0, j1):
    """``G_b = c (onehot_b(y) - exp(Z_b - lse))`` from a recomputed logit block (in place)."""
    G = torch.exp(Z.sub_(lr[:, None])).mul_(-cr[:, None])
    return _onehot_add(G, yr, j0, j1, cr)


def _backward_sweep(Hc, W, b, pert, y, lse, c, token_chunk, vocab_chunk,
                    need_H=True, need_W=True, need_b=True, out_dtype=None):
    """Recompute each logit block; with ``G = c (onehot(y) - softmax)`` return
    ``(G (W + eps), G^T H, sum G)`` (None where not needed). Vocabulary blocks outside:
    ``dW_b``/``db_b`` are complete after their inner token loop and are stored in
    ``out_dtype`` (default: the accumulation dtype; a bf16 head's gradient needs no fp32
    V x d buffer), so the only full-size accumulator is dH (n x d, accumulation dtype). With
    a :class:`_Gram` ``pert``, ``dH = G W + (rho/n) (G G0^T) H`` (eps_W = (rho/n) G0^T H
    frozen)."""
    cd = _acc_dtype(Hc.dtype)
    od = out_dtype or cd
    n, d, Vn, dev = Hc.shape[0], Hc.shape[1], W.shape[0], Hc.device
    gram = isinstance(pert, _Gram) and need_H
    dH = torch.zeros(n, d, dtype=cd, device=dev) if need_H else None
    dW = torch.empty(Vn, d, dtype=od, device=dev) if need_W else None
    db = torch.empty(Vn, dtype=od, device=dev) if need_b else None
    M = torch.zeros(n, n, dtype=cd, device=dev) if gram else None
    c = c.to(cd)
    for j0, j1 in _blocks(Vn, vocab_chunk):
        blk = _head_block(W, pert, j0, j1, cd)
        g0 = pert.g0(j0, j1) if gram else None
        dWj = torch.zeros(j1 - j0, d, dtype=cd, device=dev) if need_W else None
        dbj = torch.zeros(j1 - j0, dtype=cd, device=dev) if need_b else None
        for i0, i1 in _blocks(n, token_chunk):
            Hr = _operand(Hc[i0:i1], cd)
            Z = _logits(Hr, b, pert, blk, i0, i1, j0, j1, cd)
            G = _grad_block(Z, y[i0:i1], lse[i0:i1], c[i0:i1], j0, j1)
            if need_H:
                dH[i0:i1] += _times_head(G, blk)
            if gram:
                M[i0:i1].addmm_(G, g0.T)
            if need_W:
                dWj += _mm(G.to(Hr.dtype).T, Hr)
            if need_b:
                dbj += G.sum(dim=0)
        if need_W:
            dW[j0:j1] = dWj
        if need_b:
            db[j0:j1] = dbj
    if gram:
        dH += pert.scale * (M @ pert.Hc)
    return dH, dW, db


class _Gram:
    """``delta="gram"``: ``Z' = Z0 + (rho/n) K G0`` with ``K = H_c H_c^T`` (n x n) and G0 the
    clean logit gradient, recomputed per vocab block for all n tokens (never a V x d buffer);
    ``n^2 = <G0 G0^T, K>_F`` accumulated over vocab blocks. Cost O(n^2 (d + V)). Computes in
    the accumulation dtype throughout (no bf16 GEMMs)."""

    def __init__(self, Hc, W, b, y, lse0, c0, rho, norm_eps, token_chunk, vocab_chunk):
        cd = _acc_dtype(Hc.dtype)
        self.Hc, self.W, self.b, self.y, self.lse0, self.c0 = Hc.to(cd), W, b, y, lse0, c0.to(cd)
        self.cd, self.token_chunk = cd, token_chunk
        self.K = self.Hc @ self.Hc.T
        n_tok = Hc.shape[0]
        GG = torch.zeros(n_tok, n_tok, dtype=cd, device=Hc.device)
        for j0, j1 in _blocks(W.shape[0], vocab_chunk):
            G0 = self.g0(j0, j1)
            GG += G0 @ G0.T
        n = torch.sqrt(torch.clamp((GG * self.K).sum(), min=0.0))
        self.norm = torch.clamp(n, min=norm_eps)
        self.scale = rho / self.norm

    def g0(self, j0, j1):
        """Clean logit gradient ``G0[:, j0:j1]`` of all n tokens (n, j1 - j0)."""
        blk = _head_block(self.W, None, j0, j1, self.cd)
        blk = (blk[0].to(self.cd), None, None)
        out = torch.empty(self.Hc.shape[0], j1 - j0, dtype=self.cd, device=self.Hc.device)
        for i0, i1 in _blocks(self.Hc.shape[0], self.token_chunk):
            Z = _logits(self.Hc[i0:i1], self.b, None, blk, i0, i1, j0, j1, self.cd)
            out[i0:i1] = _grad_block(Z, self.y[i0:i1], self.lse0[i0:i1], self.c0[i0:i1], j0, j1)
        return out

    def delta(self, i0, i1, j0, j1):
        return self.scale * (self.K[i0:i1] @ self.g0(j0, j1))


class _TokenLogp(torch.autograd.Function):
    """Per-token log-probs ``log softmax(H_c (W + eps)^T + b)[y]`` of the compacted tokens.

    ``pert`` is None, a :class:`_Shift` (constant eps_W) or a :class:`_Gram`; the gradient
    w.r.t. W is the gradient at ``W + eps`` and no gradient flows through the perturbation."""

    @staticmethod
    def forward(ctx, Hc, W, b, pert, y, token_chunk, vocab_chunk):
        tok, lse = _forward_sweep(Hc, W, b, pert, y, token_chunk, vocab_chunk)
        ctx.save_for_backward(Hc, W, b, y, lse)
        ctx.pert = pert
        ctx.chunks = (token_chunk, vocab_chunk)
        return tok

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_tok):
        Hc, W, b, y, lse = ctx.saved_tensors
        need_H, need_W, need_b = ctx.needs_input_grad[:3]
        dH, dW, db = _backward_sweep(Hc, W, b, ctx.pert, y, lse, grad_tok, *ctx.chunks,
                                     need_H=need_H, need_W=need_W,
                                     need_b=need_b and b is not None, out_dtype=W.dtype)
        return (None if dH is None else dH.to(Hc.dtype),
                None if dW is None else dW.to(W.dtype),
                None if db is None else db.to(b.dtype),
                None, None, None, None)


def _seq_logps(H, W, b, eps, toks: _Tokens, average, token_chunk, vocab_chunk):
    Hc = toks.compact(H)
    tok = _TokenLogp.apply(Hc, W, b, eps, toks.y, token_chunk, vocab_chunk)
    return toks.row_sum(tok, average)


# --------------------------------------------------------------------------- the DPO formula


def _dpo_from_logp(logp, ref_logp, beta, loss_type, ls):
    """Sec. 3, written once: ``(L, chosen_rewards, rejected_rewards)`` (rewards detached)."""
    B = logp.shape[0] // 2
    ref = ref_logp.to(logp.dtype)
    dc = logp[:B] - ref[:B]
    dr = logp[B:] - ref[B:]
    h = dc - dr
    u = beta * h
    if loss_type == "sigmoid":
        losses = -(1.0 - ls) * F.logsigmoid(u) - ls * F.logsigmoid(-u)
    elif loss_type == "hinge":
        losses = torch.relu(1.0 - u)
    else:  # ipo (log-probs are token means)
        losses = (h - 1.0 / (2.0 * beta)) ** 2
    return losses.mean(), (beta * dc).detach(), (beta * dr).detach()


def _as_acc(x):
    return x.to(_acc_dtype(x.dtype))


def dpo_loss(logp, ref_logp, beta, *, loss_type="sigmoid", label_smoothing=0.0):
    """``(loss, chosen_rewards (B,), rejected_rewards (B,))`` from sequence log-probs (sec. 3).

    Differentiable by autograd w.r.t. ``logp`` (and ``ref_logp``)."""
    _native(logp=logp, ref_logp=ref_logp)
    _logp_pair(logp, ref_logp)
    beta, loss_type, ls = _dpo_options(beta, loss_type, label_smoothing)
    return _dpo_from_logp(_as_acc(logp), ref_logp, beta, loss_type, ls)


def dpo_loss_grad(logp, ref_logp, beta, *, loss_type="sigmoid", label_smoothing=0.0):
    """``(loss, dlogp (R,))``: ``dlogp = (+kappa/B, -kappa/B)`` for (chosen, rejected)."""
    _native(logp=logp, ref_logp=ref_logp)
    _logp_pair(logp, ref_logp)
    beta, loss_type, ls = _dpo_options(beta, loss_type, label_smoothing)
    with torch.enable_grad():
        lp = _as_acc(logp).detach().requires_grad_(True)
        loss = _dpo_from_logp(lp, ref_logp.detach(), beta, loss_type, ls)[0]
        (g,) = torch.autograd.grad(loss, lp)
    return loss.detach(), g.to(logp.dtype) if logp.dtype != torch.bfloat16 else g


# --------------------------------------------------------------------------- linear head


def _head_call(H, W, labels, mask, b, token_chunk, vocab_chunk):
    _native(H=H, W=W, labels=labels, mask=mask, b=b)
    Vn = _head(H, W, labels, mask, b).V
    tc, vc = V.pref_chunks(token_chunk, vocab_chunk)
    return _Tokens(H, labels, mask, Vn), tc, vc


def seq_logps(H, W, labels, mask, b=None, *, average=False, token_chunk=None, vocab_chunk=None):
    """Sequence log-probs ``l_r = sum_t m_rt log softmax(H_rt W^T + b)[y_rt]`` (R,), or the
    token mean with ``average=True``; differentiable w.r.t. H, W, b (fused, chunked)."""
    toks, tc, vc = _head_call(H, W, labels, mask, b, token_chunk, vocab_chunk)
    return _seq_logps(H, W, b, None, toks, bool(average), tc, vc)


def _linear_args(H, W, labels, mask, ref_logp, beta, b, loss_type, label_smoothing,
                 token_chunk, vocab_chunk):
    toks, tc, vc = _head_call(H, W, labels, mask, b, token_chunk, vocab_chunk)
    _native(ref_logp=ref_logp)
    V.pref_ref_logp(ref_logp, toks.R)
    beta, loss_type, ls = _dpo_options(beta, loss_type, label_smoothing)
    return toks, tc, vc, beta, loss_type, ls


def _linear_loss(H, W, b, eps, ref_logp, toks, tc, vc, beta, loss_type, ls):
    logp = _seq_logps(H, W, b, eps, toks, loss_type == "ipo", tc, vc)
    return _dpo_from_logp(logp, ref_logp, beta, loss_type, ls)


def linear_dpo_loss(H, W, labels, mask, ref_logp, beta, b=None, *, loss_type="sigmoid",
                    label_smoothing=0.0, token_chunk=None, vocab_chunk=None):
    """The DPO loss of the head ``Z = H W^T + b`` (mean over pairs); differentiable w.r.t.
    H, W, b by autograd through the fused :class:`_TokenLogp`."""
    args = _linear_args(H, W, labels, mask, ref_logp, beta, b, loss_type, label_smoothing,
                        token_chunk, vocab_chunk)
    return _linear_loss(H, W, b, None, ref_logp, *args)[0]


def _grads_of(loss, H, W, b):
    leaves = [H, W] + ([b] if b is not None else [])
    gs = torch.autograd.grad(loss, leaves, allow_unused=True)
    gs = [torch.zeros_like(x) if g is None else g for x, g in zip(leaves, gs)]
    return gs[0], gs[1], (gs[2] if b is not None else None)


def _leaf(x):
    return None if x is None else x.detach().requires_grad_(True)


def linear_dpo_loss_grad(H, W, labels, mask, ref_logp, beta, b=None, *, loss_type="sigmoid",
                         label_smoothing=0.0, token_chunk=None, vocab_chunk=None):
    """``(loss, dH, dW, db)``; ``db`` is None when ``b`` is None."""
    toks, tc, vc, beta, loss_type, ls = _linear_args(
        H, W, labels, mask, ref_logp, beta, b, loss_type, label_smoothing, token_chunk,
        vocab_chunk)
    with torch.enable_grad():
        Hl, Wl, bl = _leaf(H), _leaf(W), _leaf(b)
        loss = _linear_loss(Hl, Wl, bl, None, ref_logp.detach(), toks, tc, vc, beta,
                            loss_type, ls)[0]
        dH, dW, db = _grads_of(loss, Hl, Wl, bl)
    return loss.detach(), dH, dW, db


# --------------------------------------------------------------------------- logits-SAM


def _sam_args(H, W, labels, mask, ref_logp, beta, rho, b, loss_type, label_smoothing,
              adaptive, norm_eps, delta, token_chunk, vocab_chunk):
    args = _linear_args(H, W, labels, mask, ref_logp, beta, b, loss_type, label_smoothing,
                        token_chunk, vocab_chunk)
    rho, norm_eps, delta = V.pref_sam(rho, norm_eps, delta, adaptive)
    return args, rho, norm_eps, delta, bool(adaptive)


def _perturbation(H, W, b, ref_logp, toks, tc, vc, beta, loss_type, ls, rho, norm_eps,
                  adaptive, delta):
    """Sweeps A and B: ``(loss_pre, n, pert)``. ``delta="weight"``: pert is a :class:`_Shift`
    holding eps_W = rho g_W / n (V, d; accumulation dtype, a constant), ``g_W = G0^T H``
    (times ``|W|`` with ``adaptive``); ``delta="gram"``: pert is a :class:`_Gram` (no V x d
    buffer). n in at least float32."""
    average = loss_type == "ipo"
    with torch.no_grad():
        Hc = toks.compact(H.detach())
        Wd, bd = W.detach(), (None if b is None else b.detach())
        tok0, lse0 = _forward_sweep(Hc, Wd, bd, None, toks.y, tc, vc)          # A
    with torch.enable_grad():
        l0 = toks.row_sum(tok0, average).detach().requires_grad_(True)
        loss_pre = _dpo_from_logp(l0, ref_logp.detach(), beta, loss_type, ls)[0]
        (dl0,) = torch.autograd.grad(loss_pre, l0)
    with torch.no_grad():
        c0 = dl0.index_select(0, toks.row)                                      # dL/dtok
        if average:
            c0 = c0 / toks.counts.index_select(0, toks.row).to(c0.dtype)
        if delta == "gram":
            g = _Gram(Hc, Wd, bd, toks.y, lse0, c0, rho, norm_eps, tc, vc)
            return loss_pre.detach(), g.norm, g
        _, gW, _ = _backward_sweep(Hc, Wd, bd, None, toks.y, lse0, c0, tc, vc,   # B
                                   need_H=False, need_W=True, need_b=False)
        if adaptive:
            gW.mul_(Wd.abs().to(gW.dtype))
        n = torch.clamp(torch.linalg.vector_norm(gW), min=norm_eps)
        eps_W = gW.mul_(rho / n)                                                 # in place
    return loss_pre.detach(), n, _Shift(eps_W, W.dtype)


def logits_sam_dpo(H, W, labels, mask, ref_logp, beta, rho, b=None, *, loss_type="sigmoid",
                   label_smoothing=0.0, adaptive=False, norm_eps=1e-12, delta="weight",
                   token_chunk=None, vocab_chunk=None):
    """``L_post = DPO(H (W + eps_W)^T + b)``, differentiable w.r.t. H, W, b with eps_W frozen
    (dW = G'^T H, dH = G' (W + eps_W), db = sum G')."""
    (toks, tc, vc, beta, loss_type, ls), rho, norm_eps, delta, adaptive = _sam_args(
        H, W, labels, mask, ref_logp, beta, rho, b, loss_type, label_smoothing, adaptive,
        norm_eps, delta, token_chunk, vocab_chunk)
    _, _, pert = _perturbation(H, W, b, ref_logp, toks, tc, vc, beta, loss_type, ls, rho,
                               norm_eps, adaptive, delta)
    return _linear_loss(H, W, b, pert, ref_logp, toks, tc, vc, beta, loss_type, ls)[0]


def logits_sam_dpo_grad(H, W, labels, mask, ref_logp, beta, rho, b=None, *,
                        loss_type="sigmoid", label_smoothing=0.0, adaptive=False,
                        norm_eps=1e-12, delta="weight", token_chunk=None, vocab_chunk=None):
    """The logits-SAM step (sec. 5, four sweeps of sec. 6): a dict with ``loss_pre``,
    ``loss_post``, ``grad_norm`` (n), ``eps_W`` (V, d; None for ``delta="gram"``), ``dH``,
    ``dW``, ``db`` (None without b), ``chosen_rewards``, ``rejected_rewards`` (at Z')."""
    (toks, tc, vc, beta, loss_type, ls), rho, norm_eps, delta, adaptive = _sam_args(
        H, W, labels, mask, ref_logp, beta, rho, b, loss_type, label_smoothing, adaptive,
        norm_eps, delta, token_chunk, vocab_chunk)
    loss_pre, n, pert = _perturbation(H, W, b, ref_logp, toks, tc, vc, beta, loss_type, ls,
                                      rho, norm_eps, adaptive, delta)
    with torch.enable_grad():                                                   # A', B'
        Hl, Wl, bl = _leaf(H), _leaf(W), _leaf(b)
        loss_post, cr, rr = _linear_loss(Hl, Wl, bl, pert, ref_logp.detach(), toks, tc, vc,
                                         beta, loss_type, ls)
        dH, dW, db = _grads_of(loss_post, Hl, Wl, bl)
    return {"loss_pre": loss_pre, "loss_post": loss_post.detach(), "grad_norm": n.detach(),
            "eps_W": pert.eps if isinstance(pert, _Shift) else None,
            "dH": dH, "dW": dW, "db": db, "chosen_rewards": cr, "rejected_rewards": rr}
