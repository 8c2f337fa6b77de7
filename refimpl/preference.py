r"""DPO-family losses through a linear LM head, and logits-SAM — the float64 reference.

Papers: DPO, Rafailov et al. (arXiv 2305.18290); IPO, Azar et al. (arXiv 2310.12036); hinge
loss as in TRL (RSO, arXiv 2309.06657); conservative-DPO label smoothing (Mitchell's cDPO
note); logits-SAM, Luo et al., "Sharpness-Aware Minimization in Logit Space Efficiently
Enhances Direct Preference Optimization" (arXiv 2603.18258). Official code:
``RitianLuo/logits-sam-dpo: src/alignment/sam_trainer.py @b0d47d7`` on trl 0.23.0
``DPOTrainer.dpo_loss``; ``docs``/``shared/specs/preference.md`` give line references.

Conventions (as the official code):

* B pairs, R = 2B rows stacked **chosen first** (row i chosen, row B+i rejected of pair i);
  T tokens per row; ``H`` (R, T, d) final hidden states, ``W`` (V, d), optional ``b`` (V,);
  ``Z = H W^T + b``.
* ``labels`` (R, T) integers **already shifted** (position t holds token t+1); ``mask``
  (R, T) is 1 on completion tokens only. Where mask = 0 the label may be anything (-100): it is
  never read, and neither is ``H`` there (masked tokens are dropped before any matmul).
* ``l_r = sum_t m_rt log softmax(Z_rt)[y_rt]`` (a **sum**); only IPO uses the token mean
  ``l_r / n_r`` (``n_r = sum_t m_rt``; ``n_r = 0`` with IPO is a ``ValueError``).
* Loss = mean over pairs.

DPO losses from log-probs (TRL 0.23 ``dpo_loss``), ``h_i = (l_ci - lref_ci) - (l_ri - lref_ri)``,
``u_i = beta h_i``::

    sigmoid:  loss_i = -(1-eps) log sig(u_i) - eps log sig(-u_i)   kappa_i = beta (sig(u_i) - 1 + eps)
    hinge:    loss_i = max(0, 1 - u_i)                             kappa_i = -beta 1[u_i < 1]
    ipo:      loss_i = (h_i - 1/(2 beta))^2   (token means)        kappa_i = 2 (h_i - 1/(2 beta))
    L = (1/B) sum_i loss_i,  dL/dl_ci = kappa_i / B,  dL/dl_ri = -kappa_i / B
    rewards: beta (l_c - lref_c), beta (l_r - lref_r)  (no gradient)

``label_smoothing`` with a non-sigmoid type is a ``ValueError`` (TRL ignores it silently: our
choice). For IPO the caller passes ``ref_logp`` as token means too (**reconstructed**: the
official ``compute_ref_log_probs`` is believed to apply the same division).

Closed-form gradient w.r.t. the logits (sec. 4 of the spec)::

    G_rt = dL/dZ_rt = sgn_r (kappa_i / B) a_r m_rt (e_{y_rt} - softmax(Z_rt)),
    sgn = +1 chosen / -1 rejected, a_r = 1 (sum) or 1/n_r (IPO);
    dH = G W,  dW = G^T H (summed over all tokens),  db = sum_rt G_rt.

Streaming (``token_chunk``/``vocab_chunk``; either set selects it): the rows with m = 1 are
compacted; for each row block and vocab block ``Zb = H_rows W_b^T + b_b`` the online LSE keeps
``mx' = max(mx, max Zb)``, ``s = s e^{mx - mx'} + sum e^{Zb - mx'}`` and picks ``z_y``;
``lse = mx + log s``. The backward recomputes ``Gb = c (onehot_b(y) - exp(Zb - lse))`` per block
(c = per-token ``dL/dlogp``) and accumulates ``dH += Gb W_b``, ``dW_b += Gb^T H``,
``db_b += sum Gb``. The dense path is the same with one block (the full n x V logits).

logits-SAM (official code, non-ZeRO path; no gradient flows through eps)::

    Z0 = H W^T + b,  L_pre = DPO(Z0),  G0 = dL_pre/dZ0,  g_W = G0^T H,
    n = max(||g_W||_F, norm_eps),  eps_W = rho g_W / n   (b is never perturbed),
    Z' = H (W + eps_W)^T + b,  L_post = DPO(Z'),  G' = dL_post/dZ',
    dW = G'^T H,  dH = G' (W + eps_W),  db = sum G'.

``adaptive=True`` (code L605-606, not on the CLI): ``g_W <- g_W * |W|`` elementwise before the
same normalisation, ``grad_norm`` is the norm of that product, and eps_W = rho g_W |W| / n —
**reconstructed**: only one |W| factor, as the code reads; ASAM (arXiv 2102.11600) applies a
second one (``eps = rho T^2 g / ||T g||``); check the paper. ``delta="gram"`` uses the identity
``Z' = Z0 + (rho/n) (H H^T) G0`` with ``n^2 = <G0 G0^T, H H^T>_F`` and
``dH = G' W + (rho/n) (G' G0^T) H``; it never forms a V x d perturbation and returns
``eps_W = None``. ``rho`` has no default (code 0.05; README example 1e-3; paper: 1e-5..1e-4);
theory wants a negative rho on the rejected term, the code uses one positive rho: ``rho < 0``
is a ``ValueError``.

Paper vs code: the paper's theory perturbs with a negative rho on the rejected term; the code
(default here, it produced the numbers) uses one positive rho for the whole loss, justified by a
first-order argument (Sec. 3.3). The code keeps G0/g_W in the logits dtype (bf16) and only the
norm in fp32; entries of eps_W (~rho/sqrt(V d)) are below bf16 spacing, so backends form the
perturbation in fp32 (``Z' = Z0 + H eps_W^T`` or ``W_b + eps_b`` per block) — a documented
departure for low precision only; in float64 both are the same.

Everything computes in float64 (inputs are upcast) and returns float64.
"""

from __future__ import annotations

import numpy as np
from scipy.special import log_softmax

from refimpl import _validate as V

__all__ = [
    "seq_logps", "dpo_loss", "dpo_loss_grad", "linear_dpo_loss", "linear_dpo_loss_grad",
    "logits_sam_dpo", "logits_sam_dpo_grad", "dpo_logits_grad", "squeeze_first_order",
]


# --------------------------------------------------------------------------- inputs


class _Head:
    """Compacted float64 head inputs: the n tokens with m = 1, their rows and labels."""

    def __init__(self, H, W, labels, mask, b, paired=True):
        H = V.host_array(H, "H")
        W = V.host_array(W, "W")
        labels = V.host_array(labels, "labels")
        mask = V.host_array(mask, "mask")
        b = None if b is None else V.host_array(b, "b")
        self.shape = V.pref_head(H, W, labels, mask, b, paired=paired)
        R, T, d, _ = self.shape
        m = V.pref_mask(mask).reshape(-1)
        self.idx = np.flatnonzero(m)                       # flat (r, t) of active tokens
        self.rows = self.idx // T
        self.Hc = np.asarray(H, dtype=np.float64).reshape(-1, d)[self.idx]
        self.y = np.asarray(labels).reshape(-1)[self.idx].astype(np.int64)
        self.W = np.asarray(W, dtype=np.float64)
        self.b = None if b is None else np.asarray(b, dtype=np.float64)
        self.counts = np.bincount(self.rows, minlength=R).astype(np.float64)

    @property
    def n(self) -> int:
        return int(self.idx.size)

    def blocks(self, token_chunk, vocab_chunk):
        """Row and vocab block boundaries (one block each on the dense path)."""
        n, Vs = self.n, self.shape.V
        tc = n if token_chunk is None else token_chunk
        vc = Vs if vocab_chunk is None else vocab_chunk
        rb = [(r0, min(r0 + tc, n)) for r0 in range(0, n, max(tc, 1))]
        vb = [(v0, min(v0 + vc, Vs)) for v0 in range(0, Vs, vc)]
        return rb, vb

    def logits(self, W, r0, r1, v0, v1):
        Z = self.Hc[r0:r1] @ W[v0:v1].T
        return Z if self.b is None else Z + self.b[v0:v1]

    def row_sum(self, tok):
        return np.bincount(self.rows, weights=tok, minlength=self.shape.R)

    def full_dH(self, dHc):
        R, T, d, _ = self.shape
        out = np.zeros((R * T, d))
        out[self.idx] = dHc
        return out.reshape(R, T, d)


def _lse_zy(head: _Head, zfun, blocks):
    """Online LSE and target logit of every active token: ``(lse (n,), z_y (n,))``."""
    rb, vb = blocks
    lse, zy = np.empty(head.n), np.empty(head.n)
    for r0, r1 in rb:
        y = head.y[r0:r1]
        mx = np.full(r1 - r0, -np.inf)
        s = np.zeros(r1 - r0)
        for v0, v1 in vb:
            Zb = zfun(r0, r1, v0, v1)
            mx_new = np.maximum(mx, Zb.max(axis=1))
            s = s * np.exp(mx - mx_new) + np.exp(Zb - mx_new[:, None]).sum(axis=1)
            mx = mx_new
            sel = np.flatnonzero((y >= v0) & (y < v1))
            zy[r0 + sel] = Zb[sel, y[sel] - v0]
        lse[r0:r1] = mx + np.log(s)
    return lse, zy


def _grad_block(head, zfun, lse, c, r0, r1, v0, v1):
    """``Gb = c (onehot_b(y) - exp(Zb - lse))`` recomputed for one block."""
    Zb = zfun(r0, r1, v0, v1)
    Gb = -np.exp(Zb - lse[r0:r1, None])
    y = head.y[r0:r1]
    sel = np.flatnonzero((y >= v0) & (y < v1))
    Gb[sel, y[sel] - v0] += 1.0
    return c[r0:r1, None] * Gb


def _backward(head: _Head, zfun, lse, c, blocks, W_dH=None, need_dH=True):
    """Accumulate ``(dHc (n, d) or None, dW (V, d), db (V,))`` from per-token coefficients c."""
    rb, vb = blocks
    _, _, d, Vs = head.shape
    dHc = np.zeros((head.n, d)) if need_dH else None
    dW, db = np.zeros((Vs, d)), np.zeros(Vs)
    for r0, r1 in rb:
        for v0, v1 in vb:
            Gb = _grad_block(head, zfun, lse, c, r0, r1, v0, v1)
            if need_dH:
                dHc[r0:r1] += Gb @ W_dH[v0:v1]
            dW[v0:v1] += Gb.T @ head.Hc[r0:r1]
            db[v0:v1] += Gb.sum(axis=0)
    return dHc, dW, db


def _seq(head: _Head, lse, zy, average: bool):
    """Sequence log-probs (R,) and the per-row scale a_r (1 or 1/n_r)."""
    l = head.row_sum(zy - lse)
    if not average:
        return l, np.ones(head.shape.R)
    if np.any(head.counts == 0):
        empty = np.flatnonzero(head.counts == 0).tolist()
        raise ValueError(f"mask has rows with an empty completion {empty}: the token mean (IPO / "
                         f"average=True) is undefined (n_r = 0)")
    return l / head.counts, 1.0 / head.counts


# --------------------------------------------------------------------------- public API


def seq_logps(H, W, labels, mask, b=None, *, average=False, token_chunk=None, vocab_chunk=None):
    """Sequence log-probs ``l_r = sum_t m_rt log softmax(H_rt W^T + b)[y_rt]`` (R,), float64.

    ``average=True`` divides by ``n_r = sum_t m_rt`` (IPO); empty rows then raise ValueError.
    ``token_chunk``/``vocab_chunk`` select the streaming path (online LSE, never n x V)."""
    head = _Head(H, W, labels, mask, b)
    blocks = head.blocks(*V.pref_chunks(token_chunk, vocab_chunk))
    zfun = lambda r0, r1, v0, v1: head.logits(head.W, r0, r1, v0, v1)
    lse, zy = _lse_zy(head, zfun, blocks)
    return _seq(head, lse, zy, bool(average))[0]


def _dpo(logp, ref_logp, beta, loss_type, eps, xp=np):
    """``(loss (0-d array), chosen_rewards, rejected_rewards, dlogp)`` from log-probs (R,).

    Written once for any array module ``xp`` with NumPy's API (the CuPy backend passes
    ``cupy``, so nothing leaves the device); ``sig(u) = exp(-logaddexp(0, -u))`` is stable
    for either sign of u."""
    B = logp.shape[0] // 2
    dc, dr = logp[:B] - ref_logp[:B], logp[B:] - ref_logp[B:]
    h = dc - dr
    u = beta * h
    if loss_type == "sigmoid":
        # -log sig(u) = log(1 + e^{-u}) = logaddexp(0, -u)
        softplus_neg = xp.logaddexp(0.0, -u)
        losses = (1 - eps) * softplus_neg + eps * xp.logaddexp(0.0, u)
        kappa = beta * (xp.exp(-softplus_neg) - 1 + eps)
    elif loss_type == "hinge":
        losses = xp.maximum(0.0, 1 - u)
        kappa = -beta * (u < 1).astype(u.dtype)
    else:  # ipo
        losses = (h - 1 / (2 * beta)) ** 2
        kappa = 2 * (h - 1 / (2 * beta))
    dlogp = xp.concatenate([kappa, -kappa]) / B
    return losses.mean(), beta * dc, beta * dr, dlogp


def _dpo_args(logp, ref_logp, beta, loss_type, label_smoothing):
    logp = V.host_array(logp, "logp")
    ref_logp = V.host_array(ref_logp, "ref_logp")
    V.pref_logps(logp, ref_logp)
    beta, loss_type, eps = V.pref_loss(beta, loss_type, label_smoothing)
    return (np.asarray(logp, dtype=np.float64), np.asarray(ref_logp, dtype=np.float64),
            beta, loss_type, eps)


def dpo_loss(logp, ref_logp, beta, *, loss_type="sigmoid", label_smoothing=0.0):
    """``(L, chosen_rewards (B,), rejected_rewards (B,))`` from sequence log-probs (R,) of the
    policy and the reference (chosen rows first; IPO expects token means for both)."""
    loss, cr, rr, _ = _dpo(*_dpo_args(logp, ref_logp, beta, loss_type, label_smoothing))
    return float(loss), cr, rr


def dpo_loss_grad(logp, ref_logp, beta, *, loss_type="sigmoid", label_smoothing=0.0):
    """``(L, dL/dlogp (R,))``: ``+kappa_i / B`` on chosen rows, ``-kappa_i / B`` on rejected."""
    loss, _, _, dlogp = _dpo(*_dpo_args(logp, ref_logp, beta, loss_type, label_smoothing))
    return float(loss), dlogp


def _linear_setup(H, W, labels, mask, ref_logp, beta, b, loss_type, label_smoothing,
                  token_chunk, vocab_chunk):
    head = _Head(H, W, labels, mask, b)
    ref_logp = V.host_array(ref_logp, "ref_logp")
    V.pref_ref_logp(ref_logp, head.shape.R)
    beta, loss_type, eps = V.pref_loss(beta, loss_type, label_smoothing)
    blocks = head.blocks(*V.pref_chunks(token_chunk, vocab_chunk))
    return head, np.asarray(ref_logp, dtype=np.float64), beta, loss_type, eps, blocks


def _dpo_pass(head, zfun, blocks, ref_logp, beta, loss_type, eps):
    """Forward sweep + DPO: ``(loss, cr, rr, lse, per-token coefficient c (n,))``."""
    lse, zy = _lse_zy(head, zfun, blocks)
    l, a = _seq(head, lse, zy, loss_type == "ipo")
    loss, cr, rr, dlogp = _dpo(l, ref_logp, beta, loss_type, eps)
    c = (dlogp * a)[head.rows]
    return float(loss), cr, rr, lse, c


def linear_dpo_loss(H, W, labels, mask, ref_logp, beta, b=None, *, loss_type="sigmoid",
                    label_smoothing=0.0, token_chunk=None, vocab_chunk=None):
    """DPO loss of the policy head ``Z = H W^T + b`` (IPO switches to token means)."""
    head, ref, beta, lt, eps, blocks = _linear_setup(H, W, labels, mask, ref_logp, beta, b,
                                                     loss_type, label_smoothing, token_chunk,
                                                     vocab_chunk)
    zfun = lambda r0, r1, v0, v1: head.logits(head.W, r0, r1, v0, v1)
    return _dpo_pass(head, zfun, blocks, ref, beta, lt, eps)[0]


def linear_dpo_loss_grad(H, W, labels, mask, ref_logp, beta, b=None, *, loss_type="sigmoid",
                         label_smoothing=0.0, token_chunk=None, vocab_chunk=None):
    """``(L, dH (R, T, d), dW (V, d), db (V,) or None)``: ``dH = G W``, ``dW = G^T H``,
    ``db = sum G`` with G the closed form of the module docstring (0 at masked tokens)."""
    head, ref, beta, lt, eps, blocks = _linear_setup(H, W, labels, mask, ref_logp, beta, b,
                                                     loss_type, label_smoothing, token_chunk,
                                                     vocab_chunk)
    zfun = lambda r0, r1, v0, v1: head.logits(head.W, r0, r1, v0, v1)
    loss, _, _, lse, c = _dpo_pass(head, zfun, blocks, ref, beta, lt, eps)
    dHc, dW, db = _backward(head, zfun, lse, c, blocks, W_dH=head.W)
    return loss, head.full_dH(dHc), dW, (db if head.b is not None else None)


def logits_sam_dpo_grad(H, W, labels, mask, ref_logp, beta, rho, b=None, *, loss_type="sigmoid",
                        label_smoothing=0.0, adaptive=False, norm_eps=1e-12, delta="weight",
                        token_chunk=None, vocab_chunk=None):
    """One logits-SAM step (official code, non-ZeRO path): a dict with ``loss_pre``,
    ``loss_post``, ``grad_norm`` (n), ``eps_W`` (V, d; None for ``delta="gram"``), ``dH``,
    ``dW``, ``db`` (None without b), ``chosen_rewards``/``rejected_rewards`` (at Z').

    Four sweeps: A) clean forward, B) ``g_W = G0^T H`` and its norm, A') forward at
    ``W + eps_W`` (or ``Z0 + (rho/n) H H^T G0`` for gram), B') ``dH, dW, db`` from G'."""
    head, ref, beta, lt, eps, blocks = _linear_setup(H, W, labels, mask, ref_logp, beta, b,
                                                     loss_type, label_smoothing, token_chunk,
                                                     vocab_chunk)
    rho, norm_eps, delta = V.pref_sam(rho, norm_eps, delta, adaptive)
    clean = lambda r0, r1, v0, v1: head.logits(head.W, r0, r1, v0, v1)
    loss_pre, _, _, lse0, c0 = _dpo_pass(head, clean, blocks, ref, beta, lt, eps)
    rb, vb = blocks
    eps_W = None
    if delta == "weight":
        _, g_W, _ = _backward(head, clean, lse0, c0, blocks, need_dH=False)
        if adaptive:
            g_W = g_W * np.abs(head.W)
        n = max(float(np.sqrt((g_W ** 2).sum())), norm_eps)
        eps_W = (rho / n) * g_W
        W_post = head.W + eps_W
        post = lambda r0, r1, v0, v1: head.logits(W_post, r0, r1, v0, v1)
    else:
        K = head.Hc @ head.Hc.T                               # (n, n) Gram matrix

        def G0_all(v0, v1):
            return np.concatenate([_grad_block(head, clean, lse0, c0, r0, r1, v0, v1)
                                   for r0, r1 in rb], axis=0) if rb else np.zeros((0, v1 - v0))

        GG = np.zeros((head.n, head.n))
        for v0, v1 in vb:
            G0b = G0_all(v0, v1)
            GG += G0b @ G0b.T
        n = max(float(np.sqrt(max((GG * K).sum(), 0.0))), norm_eps)
        scale = rho / n

        def post(r0, r1, v0, v1):
            return clean(r0, r1, v0, v1) + scale * (K[r0:r1] @ G0_all(v0, v1))

        W_post = head.W
    loss_post, cr, rr, lse1, c1 = _dpo_pass(head, post, blocks, ref, beta, lt, eps)
    dHc, dW, db = _backward(head, post, lse1, c1, blocks, W_dH=W_post)
    if delta == "gram":                                       # dH += (rho/n) (G' G0^T) H
        M = np.zeros((head.n, head.n))
        for v0, v1 in vb:
            G0b = G0_all(v0, v1)
            for r0, r1 in rb:
                M[r0:r1] += _grad_block(head, post, lse1, c1, r0, r1, v0, v1) @ G0b.T
        dHc += scale * (M @ head.Hc)
    return dict(loss_pre=loss_pre, loss_post=loss_post, grad_norm=n, eps_W=eps_W,
                dH=head.full_dH(dHc), dW=dW, db=(db if head.b is not None else None),
                chosen_rewards=cr, rejected_rewards=rr)


def logits_sam_dpo(H, W, labels, mask, ref_logp, beta, rho, b=None, *, loss_type="sigmoid",
                   label_smoothing=0.0, adaptive=False, norm_eps=1e-12, delta="weight",
                   token_chunk=None, vocab_chunk=None):
    """``L_post = DPO(H (W + eps_W)^T + b)`` with eps_W of :func:`logits_sam_dpo_grad`."""
    return logits_sam_dpo_grad(H, W, labels, mask, ref_logp, beta, rho, b, loss_type=loss_type,
                               label_smoothing=label_smoothing, adaptive=adaptive,
                               norm_eps=norm_eps, delta=delta, token_chunk=token_chunk,
                               vocab_chunk=vocab_chunk)["loss_post"]


# --------------------------------------------------------------------------- oracles


def dpo_logits_grad(Z, labels, mask, ref_logp, beta, *, loss_type="sigmoid", label_smoothing=0.0):
    """Oracle on free logits ``Z`` (R, T, V): ``(L, G = dL/dZ (R, T, V))`` in the closed form
    ``G_rt = sgn_r (kappa_i / B) a_r m_rt (e_{y_rt} - softmax(Z_rt))`` (dense, scipy log_softmax)."""
    Z = np.asarray(V.host_array(Z, "Z"), dtype=np.float64)
    if Z.ndim != 3:
        raise ValueError(f"Z must be 3-D (R, T, V), got shape {Z.shape}")
    R = Z.shape[0]
    m = V.pref_mask(V.host_array(mask, "mask")).astype(np.float64)
    beta, loss_type, eps = V.pref_loss(beta, loss_type, label_smoothing)
    ref_logp = V.host_array(ref_logp, "ref_logp")
    V.pref_ref_logp(ref_logp, R)
    if R % 2 or tuple(m.shape) != Z.shape[:2] or np.shape(labels) != Z.shape[:2]:
        raise ValueError(f"Z must be (R, T, V) with R even and labels/mask of shape (R, T), got "
                         f"Z {Z.shape}, labels {np.shape(labels)}, mask {m.shape}")
    y = np.where(m > 0, np.asarray(labels), 0).astype(np.int64)
    ref = np.asarray(ref_logp, dtype=np.float64)
    lsm = log_softmax(Z, axis=-1)
    tok = np.take_along_axis(lsm, y[..., None], axis=-1)[..., 0] * m
    n = m.sum(axis=1)
    if loss_type == "ipo":
        if np.any(n == 0):
            raise ValueError("mask has rows with an empty completion: IPO's token mean is undefined")
        a = 1.0 / n
    else:
        a = np.ones(R)
    l = tok.sum(axis=1) * a
    loss, _, _, dlogp = _dpo(l, ref, beta, loss_type, eps)
    loss = float(loss)
    onehot = np.zeros_like(Z)
    np.put_along_axis(onehot, y[..., None], 1.0, axis=-1)
    G = (dlogp * a)[:, None, None] * m[..., None] * (onehot - np.exp(lsm))
    return loss, G


def squeeze_first_order(p, k_neg, eta):
    """First-order change of ``log p_k`` (all k) when a rejected token ``k_neg`` is pushed down in
    free-logit space, ``z <- z - eta (e_{k_neg} - p)``::

        delta log p_k = eta (p_k + p_{k_neg} - ||p||^2 - [k = k_neg])

    so for k != k_neg only tokens with ``p_k > ||p||^2 - p_{k_neg}`` gain (the squeezing effect).
    ``p`` (..., V) probabilities; ``k_neg`` an int or an integer array of shape ``p.shape[:-1]``."""
    p = np.asarray(V.host_array(p, "p"), dtype=np.float64)
    k = np.asarray(k_neg)
    pk = np.take_along_axis(p, k[..., None], axis=-1)
    onehot = np.zeros_like(p)
    np.put_along_axis(onehot, k[..., None], 1.0, axis=-1)
    return float(eta) * (p + pk - (p ** 2).sum(axis=-1, keepdims=True) - onehot)
