r"""DPO-family losses through a linear LM head, and logits-SAM, on CuPy arrays (preference.md).

Same functions, signatures and results as :mod:`refimpl.preference`. Inputs are
``cupy.ndarray`` (``labels`` and ``mask`` too; other kinds are refused with a ``TypeError``):
``H`` (R, T, d), ``W`` (V, d), optional ``b`` (V,) in float32 or float64, one dtype for the
three; ``labels`` (R, T) integer, already shifted; ``mask`` (R, T) bool or {0, 1};
``ref_logp`` (R,) float. Rows are stacked chosen first (row i chosen, row B + i rejected).

Structure (the torch backend's, without autograd):

- The completion tokens (mask = 1) are compacted once: ``Hc`` (n, d), their targets ``y``
  (int64) and rows. Prompt and padding never reach a matmul.
- Forward sweep (A, A'): for each token block (``token_chunk`` rows, None = all n) and vocab
  block (``vocab_chunk`` columns, None = all V) the logits ``Zb = Hc_rows W_b^T + b_b`` are one
  cuBLAS GEMM (``@``); kernel ``pref_lse_block`` folds ``Zb`` into a running max ``mx`` and
  sum ``s`` per token (online log-sum-exp, one warp per row, shuffle merge) and picks the
  target logit ``z_y`` when it lies in the block. ``lse = mx + log s``; only ``lse`` and
  ``z_y`` (n values each) are kept: no n x V array when chunks are set.
- Sequence log-probs: the per-token ``z_y - lse`` are scattered into an (R, T) array and
  summed over T (the token mean for IPO); the DPO formula is **not** rewritten here: it is
  :func:`refimpl.preference._dpo` run with ``xp=cupy`` (loss, rewards and ``dL/dlogp`` on the
  device), so the formula lives once.
- Backward sweep: each block is recomputed by the same GEMM and turned in place into
  ``Gb = c (onehot_b(y) - exp(Zb - lse))`` by kernel ``pref_grad_block`` (c = per-token
  ``dL/dlogp``, divided by n_r for IPO); ``dH_rows += Gb W_b``, ``dW_b += Gb^T H_rows``,
  ``db_b += sum_rows Gb`` are cuBLAS GEMMs and CuPy reductions.
- logits-SAM, four sweeps (sec. 6): A) clean forward -> ``L_pre`` and c0; B) backward with W
  only -> ``g_W = G0^T H`` in one V x d buffer (times ``|W|`` with ``adaptive``),
  ``n = max(||g_W||_F, norm_eps)``, scaled in place to ``eps_W = rho g_W / n``; A') forward
  on ``W_b + eps_b`` per vocab block -> ``L_post``, rewards, c'; B') backward at Z' ->
  ``dH = G' (W + eps_W)``, ``dW = G'^T H``, ``db = sum G'``. ``delta="gram"`` replaces the
  V x d buffer by ``K = Hc Hc^T`` (n x n): ``Z' = Z0 + (rho/n) K G0`` with G0 recomputed per
  block for all n tokens, ``n^2 = <G0 G0^T, K>_F`` and ``dH = G' W + (rho/n) (G' G0^T) Hc``;
  ``eps_W`` is then None (as the reference).

Host reads: ``labels`` and ``mask`` are read on the host once per call (O(R T), the
validation of :func:`refimpl._validate.pref_head`: labels in [0, V) where mask = 1; the torch
backend does the same). The positions of the completion tokens and the per-row token counts
(IPO's empty-row check) are derived from that host copy and the positions uploaded (O(n));
nothing else synchronises: losses, norms and scales stay 0-d device arrays.

Workspace beyond inputs and outputs: O(n d) (``Hc``, ``dHc``), O(R T), a few blocks of
``token_chunk x vocab_chunk`` logits and ``vocab_chunk x d`` head rows; logits-SAM adds the
V x d ``eps_W`` (an output; ``adaptive`` one more transient ``|W|``), or for ``gram`` a few
n x n matrices. :func:`logits_sam_dpo` runs sweeps A, B, A' only.

Dtypes: every GEMM, kernel and reduction computes in the input dtype (float32 or float64);
``ref_logp`` is cast to it. Results are CuPy arrays of the input dtype, scalars as 0-d arrays
(``loss``, ``loss_pre``, ``loss_post``, ``grad_norm``). bfloat16 inputs reach these functions
as float32 copies (:mod:`backends._bf16`, installed by the package). float32 accuracy assumes CuPy's default full-precision GEMMs (``CUPY_TF32``
unset).

Kernels (``_kernels.py``, module ``preference``): ``pref_lse_block`` and ``pref_grad_block``,
one warp per row, ``ROW_WARPS`` warps per block, at most ``GRID_CAP`` blocks (warps then
grid-stride over the rows).
"""

from __future__ import annotations

import cupy
import numpy as np

from backends.cupy import _kernels
from backends.cupy import native as _native
from refimpl import _validate as V
from refimpl.preference import _dpo

__all__ = [
    "seq_logps", "dpo_loss", "dpo_loss_grad", "linear_dpo_loss", "linear_dpo_loss_grad",
    "logits_sam_dpo", "logits_sam_dpo_grad",
]

ROW_WARPS = 8            # warps (rows) per block of both kernels
GRID_CAP = 4096          # at most this many blocks; warps grid-stride over further rows


# --------------------------------------------------------------------------- validation


class _HostCopy:
    """``to_numpy`` for the validators that copies each array to the host once per call."""

    def __init__(self):
        self._seen = {}

    def __call__(self, x):
        hit = self._seen.get(id(x))
        if hit is None:
            hit = self._seen[id(x)] = (x, np.asarray(cupy.asnumpy(x)))
        return hit[1]


def _float_dtype(**arrays) -> None:
    """These functions compute in float32 or float64 (bf16 arrives upcast: backends._bf16)."""
    for name, x in arrays.items():
        if x is not None:
            V.float_array(x, name)


class _Head:
    """A head call: validated on construction (the reference's checks and messages, one host
    copy of labels and mask); :meth:`prepare` then compacts the completion tokens on the
    device and sets the token and vocab block boundaries. ``paired=False`` (the safety family's
    token CE) admits any R >= 1 rows instead of chosen/rejected pairs."""

    def __init__(self, H, W, labels, mask, b, paired=True):
        _native(H=H, W=W, labels=labels, mask=mask, b=b)
        host = _HostCopy()
        self.shape = V.pref_head(H, W, labels, mask, b, to_numpy=host, paired=paired)
        _float_dtype(H=H, W=W, b=b)
        self._inputs = (H, W, labels, b)
        self._mask = V.pref_mask(mask, host).reshape(-1)   # the host copy made by pref_head
        self.dtype = H.dtype

    def prepare(self, token_chunk, vocab_chunk) -> "_Head":
        tc, vc = V.pref_chunks(token_chunk, vocab_chunk)
        H, W, labels, b = self._inputs
        R, T, d, Vn = self.shape
        pos = np.flatnonzero(self._mask)
        self.n = int(pos.size)
        self.counts = np.bincount(pos // T, minlength=R)   # n_r, host (IPO's empty-row check)
        self.pos = cupy.asarray(pos.astype(np.int64))      # O(n) upload
        self.row = self.pos // T
        self.y = cupy.ascontiguousarray(labels.reshape(-1)[self.pos].astype(np.int64))
        flat = cupy.ascontiguousarray(H).reshape(-1, d)
        self.Hc = flat if self.n == R * T else cupy.ascontiguousarray(flat[self.pos])
        self.W = cupy.ascontiguousarray(W)
        self.b = b
        step = tc if tc is not None else max(self.n, 1)
        self.rb = [(i, min(i + step, self.n)) for i in range(0, self.n, step)]
        vstep = vc if vc is not None else Vn
        self.vb = [(j, min(j + vstep, Vn)) for j in range(0, Vn, vstep)]
        return self

    # ----------------------------------------------------------------- per-row quantities

    def seq(self, tok, average: bool):
        """Sequence log-probs (R,) from per-token log-probs (n,) and the per-row scale a_r."""
        R, T, _, _ = self.shape
        full = cupy.zeros(R * T, dtype=self.dtype)    # O(R T); cupy.bincount would synchronise
        full[self.pos] = tok
        l = full.reshape(R, T).sum(axis=1)
        if not average:
            return l, cupy.ones(R, dtype=self.dtype)
        if np.any(self.counts == 0):
            empty = np.flatnonzero(self.counts == 0).tolist()
            raise ValueError(f"mask has rows with an empty completion {empty}: the token mean "
                             f"(IPO / average=True) is undefined (n_r = 0)")
        a = cupy.asarray(1.0 / self.counts).astype(self.dtype)
        return l * a, a

    def full_dH(self, dHc):
        R, T, d, _ = self.shape
        if self.n == R * T:
            return dHc.reshape(R, T, d)
        out = cupy.zeros((R * T, d), dtype=self.dtype)
        out[self.pos] = dHc
        return out.reshape(R, T, d)

    # ----------------------------------------------------------------- blocks

    def logits(self, pert, i0, i1, j0, j1):
        """``(Zb, W_b)``: logits of tokens i0:i1 and vocab block j0:j1 (C-contiguous) and the
        head rows used. ``pert``: None, a weight perturbation eps_W (V, d) or a :class:`_Gram`."""
        Wb = self.W[j0:j1]
        if pert is not None and not isinstance(pert, _Gram):
            Wb = Wb + pert[j0:j1]
        Z = self.Hc[i0:i1] @ Wb.T
        if self.b is not None:
            Z += self.b[j0:j1]
        if isinstance(pert, _Gram):
            Z += pert.delta(i0, i1, j0, j1)
        return cupy.ascontiguousarray(Z), Wb

    def grad_block(self, pert, lse, c, i0, i1, j0, j1):
        """``(Gb = c (onehot_b(y) - exp(Zb - lse)), W_b)`` recomputed for one block."""
        G, Wb = self.logits(pert, i0, i1, j0, j1)
        _launch("pref_grad_block", i1 - i0,
                (G, np.int64(G.shape[1]), np.int32(i1 - i0), np.int32(j1 - j0), self.y[i0:i1],
                 np.int64(j0), lse[i0:i1], c[i0:i1]))
        return G, Wb


def _launch(template: str, rows: int, args) -> None:
    name = _kernels.kernel_name(template, args[0].dtype)
    blocks = max(1, min(-(-rows // ROW_WARPS), GRID_CAP))
    _kernels.launch(name, (blocks,), (32 * ROW_WARPS,), args)


# --------------------------------------------------------------------------- sweeps


def _forward(head: _Head, pert):
    """Per-token ``(z_y - lse, lse)`` (n,) by the online LSE over the vocab blocks."""
    dt, n = head.dtype, head.n
    mx = cupy.full(n, -np.inf, dtype=dt)
    s = cupy.zeros(n, dtype=dt)
    zy = cupy.zeros(n, dtype=dt)
    for i0, i1 in head.rb:
        for j0, j1 in head.vb:
            Z, _ = head.logits(pert, i0, i1, j0, j1)
            _launch("pref_lse_block", i1 - i0,
                    (Z, np.int64(Z.shape[1]), np.int32(i1 - i0), np.int32(j1 - j0),
                     head.y[i0:i1], np.int64(j0), mx[i0:i1], s[i0:i1], zy[i0:i1]))
    lse = mx + cupy.log(s)
    return zy - lse, lse


def _backward(head: _Head, pert, lse, c, need_H=True, need_b=True):
    """``(dHc (n, d) or None, dW (V, d), db (V,) or None)`` from the per-token coefficients c;
    with a :class:`_Gram` ``pert``, ``dHc = G W + (rho/n) (G G0^T) Hc``."""
    dt, n = head.dtype, head.n
    _, _, d, Vn = head.shape
    gram = isinstance(pert, _Gram)
    dH = cupy.zeros((n, d), dtype=dt) if need_H else None
    dW = cupy.zeros((Vn, d), dtype=dt)
    db = cupy.zeros(Vn, dtype=dt) if need_b else None
    for i0, i1 in head.rb:
        Hr = head.Hc[i0:i1]
        Mr = cupy.zeros((i1 - i0, n), dtype=dt) if (gram and need_H) else None
        for j0, j1 in head.vb:
            G, Wb = head.grad_block(pert, lse, c, i0, i1, j0, j1)
            if need_H:
                dH[i0:i1] += G @ Wb
                if Mr is not None:
                    Mr += G @ pert.g0(j0, j1).T
            dW[j0:j1] += G.T @ Hr
            if need_b:
                db[j0:j1] += G.sum(axis=0)
        if Mr is not None:
            dH[i0:i1] += pert.scale * (Mr @ head.Hc)
    return dH, dW, db


class _Gram:
    """``delta="gram"``: ``Z' = Z0 + (rho/n) K G0`` with ``K = Hc Hc^T`` (n x n) and G0 the
    clean logit gradient, recomputed per vocab block for all n tokens (no V x d buffer);
    ``n^2 = <G0 G0^T, K>_F`` accumulated over vocab blocks. Cost O(n^2 (d + V))."""

    def __init__(self, head: _Head, lse0, c0, rho: float, norm_eps: float):
        self.head, self.lse0, self.c0 = head, lse0, c0
        self.K = head.Hc @ head.Hc.T
        GG = cupy.zeros((head.n, head.n), dtype=head.dtype)
        for j0, j1 in head.vb:
            G0 = self.g0(j0, j1)
            GG += G0 @ G0.T
        self.norm = cupy.maximum(cupy.sqrt(cupy.maximum((GG * self.K).sum(), 0.0)), norm_eps)
        self.scale = rho / self.norm

    def g0(self, j0, j1):
        """The clean logit gradient ``G0[:, j0:j1]`` of all n tokens (n, j1 - j0)."""
        head = self.head
        out = cupy.empty((head.n, j1 - j0), dtype=head.dtype)
        for i0, i1 in head.rb:
            out[i0:i1] = head.grad_block(None, self.lse0, self.c0, i0, i1, j0, j1)[0]
        return out

    def delta(self, i0, i1, j0, j1):
        return self.scale * (self.K[i0:i1] @ self.g0(j0, j1))


# --------------------------------------------------------------------------- DPO


def _scalar(x):
    """A 0-d array (NumPy reductions give scalars; CuPy ones are already 0-d arrays)."""
    return cupy.asarray(x)


def _dpo_inputs(logp, ref_logp, beta, loss_type, label_smoothing):
    _native(logp=logp, ref_logp=ref_logp)
    V.pref_logps(logp, ref_logp)
    beta, loss_type, eps = V.pref_loss(beta, loss_type, label_smoothing)
    _float_dtype(logp=logp, ref_logp=ref_logp)
    return logp, ref_logp.astype(logp.dtype, copy=False), beta, loss_type, eps


def dpo_loss(logp, ref_logp, beta, *, loss_type="sigmoid", label_smoothing=0.0):
    """``(L, chosen_rewards (B,), rejected_rewards (B,))`` from sequence log-probs (R,) of the
    policy and the reference (chosen rows first; IPO expects token means for both)."""
    loss, cr, rr, _ = _dpo(*_dpo_inputs(logp, ref_logp, beta, loss_type, label_smoothing),
                           xp=cupy)
    return _scalar(loss), cr, rr


def dpo_loss_grad(logp, ref_logp, beta, *, loss_type="sigmoid", label_smoothing=0.0):
    """``(L, dL/dlogp (R,))``: ``+kappa_i / B`` on chosen rows, ``-kappa_i / B`` on rejected."""
    loss, _, _, dlogp = _dpo(*_dpo_inputs(logp, ref_logp, beta, loss_type, label_smoothing),
                             xp=cupy)
    return _scalar(loss), dlogp


# --------------------------------------------------------------------------- linear head


def seq_logps(H, W, labels, mask, b=None, *, average=False, token_chunk=None, vocab_chunk=None):
    """Sequence log-probs ``l_r = sum_t m_rt log softmax(H_rt W^T + b)[y_rt]`` (R,).

    ``average=True`` divides by ``n_r = sum_t m_rt`` (IPO); empty rows then raise ValueError.
    ``token_chunk``/``vocab_chunk`` bound the logit blocks (online LSE, never n x V)."""
    head = _Head(H, W, labels, mask, b).prepare(token_chunk, vocab_chunk)
    tok, _ = _forward(head, None)
    return head.seq(tok, bool(average))[0]


def _linear_setup(H, W, labels, mask, ref_logp, beta, b, loss_type, label_smoothing,
                  token_chunk, vocab_chunk):
    head = _Head(H, W, labels, mask, b)
    _native(ref_logp=ref_logp)
    V.pref_ref_logp(ref_logp, head.shape.R)
    _float_dtype(ref_logp=ref_logp)
    beta, loss_type, eps = V.pref_loss(beta, loss_type, label_smoothing)
    head.prepare(token_chunk, vocab_chunk)
    return head, ref_logp.astype(head.dtype, copy=False), beta, loss_type, eps


def _dpo_pass(head: _Head, pert, ref, beta, loss_type, eps):
    """Forward sweep + DPO: ``(loss, chosen_rewards, rejected_rewards, lse, c (n,))``."""
    tok, lse = _forward(head, pert)
    l, a = head.seq(tok, loss_type == "ipo")
    loss, cr, rr, dlogp = _dpo(l, ref, beta, loss_type, eps, xp=cupy)
    c = cupy.ascontiguousarray((dlogp * a)[head.row])
    return _scalar(loss), cr, rr, lse, c


def linear_dpo_loss(H, W, labels, mask, ref_logp, beta, b=None, *, loss_type="sigmoid",
                    label_smoothing=0.0, token_chunk=None, vocab_chunk=None):
    """DPO loss of the policy head ``Z = H W^T + b`` (IPO switches to token means)."""
    head, ref, beta, lt, eps = _linear_setup(H, W, labels, mask, ref_logp, beta, b, loss_type,
                                             label_smoothing, token_chunk, vocab_chunk)
    return _dpo_pass(head, None, ref, beta, lt, eps)[0]


def linear_dpo_loss_grad(H, W, labels, mask, ref_logp, beta, b=None, *, loss_type="sigmoid",
                         label_smoothing=0.0, token_chunk=None, vocab_chunk=None):
    """``(L, dH (R, T, d), dW (V, d), db (V,) or None)``: ``dH = G W``, ``dW = G^T H``,
    ``db = sum G`` (dH is 0 at masked tokens)."""
    head, ref, beta, lt, eps = _linear_setup(H, W, labels, mask, ref_logp, beta, b, loss_type,
                                             label_smoothing, token_chunk, vocab_chunk)
    loss, _, _, lse, c = _dpo_pass(head, None, ref, beta, lt, eps)
    dHc, dW, db = _backward(head, None, lse, c, need_b=b is not None)
    return loss, head.full_dH(dHc), dW, db


# --------------------------------------------------------------------------- logits-SAM


def _sam(H, W, labels, mask, ref_logp, beta, rho, b, loss_type, label_smoothing, adaptive,
         norm_eps, delta, token_chunk, vocab_chunk, grads: bool) -> dict:
    """Sweeps A, B, A' and (``grads``) B' of a logits-SAM step."""
    head, ref, beta, lt, eps = _linear_setup(H, W, labels, mask, ref_logp, beta, b, loss_type,
                                             label_smoothing, token_chunk, vocab_chunk)
    rho, norm_eps, delta = V.pref_sam(rho, norm_eps, delta, adaptive)
    loss_pre, _, _, lse0, c0 = _dpo_pass(head, None, ref, beta, lt, eps)          # A
    if delta == "weight":
        _, g_W, _ = _backward(head, None, lse0, c0, need_H=False, need_b=False)  # B
        if adaptive:
            g_W *= cupy.abs(head.W)
        flat = g_W.reshape(-1)
        norm = cupy.maximum(cupy.sqrt(cupy.dot(flat, flat)), norm_eps)        # a cuBLAS dot
        g_W *= rho / norm
        pert = eps_W = g_W                                                        # in place
    else:
        pert = _Gram(head, lse0, c0, rho, norm_eps)
        norm, eps_W = pert.norm, None
    loss_post, cr, rr, lse1, c1 = _dpo_pass(head, pert, ref, beta, lt, eps)       # A'
    out = dict(loss_pre=loss_pre, loss_post=loss_post, grad_norm=_scalar(norm), eps_W=eps_W)
    if grads:
        dHc, dW, db = _backward(head, pert, lse1, c1, need_b=b is not None)       # B'
        out.update(dH=head.full_dH(dHc), dW=dW, db=db)
    out.update(chosen_rewards=cr, rejected_rewards=rr)
    return out


def logits_sam_dpo_grad(H, W, labels, mask, ref_logp, beta, rho, b=None, *, loss_type="sigmoid",
                        label_smoothing=0.0, adaptive=False, norm_eps=1e-12, delta="weight",
                        token_chunk=None, vocab_chunk=None):
    """One logits-SAM step (official code, non-ZeRO path): a dict with ``loss_pre``,
    ``loss_post``, ``grad_norm`` (n), ``eps_W`` (V, d; None for ``delta="gram"``), ``dH``,
    ``dW``, ``db`` (None without b), ``chosen_rewards``/``rejected_rewards`` (at Z').

    Four sweeps: A) clean forward, B) ``g_W = G0^T H`` and its norm, A') forward at
    ``W + eps_W`` (or ``Z0 + (rho/n) H H^T G0`` for gram), B') ``dH, dW, db`` from G'."""
    return _sam(H, W, labels, mask, ref_logp, beta, rho, b, loss_type, label_smoothing,
                adaptive, norm_eps, delta, token_chunk, vocab_chunk, grads=True)


def logits_sam_dpo(H, W, labels, mask, ref_logp, beta, rho, b=None, *, loss_type="sigmoid",
                   label_smoothing=0.0, adaptive=False, norm_eps=1e-12, delta="weight",
                   token_chunk=None, vocab_chunk=None):
    """``L_post = DPO(H (W + eps_W)^T + b)`` with eps_W of :func:`logits_sam_dpo_grad` (sweeps
    A, B, A' only)."""
    return _sam(H, W, labels, mask, ref_logp, beta, rho, b, loss_type, label_smoothing,
                adaptive, norm_eps, delta, token_chunk, vocab_chunk, grads=False)["loss_post"]
