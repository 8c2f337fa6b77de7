r"""DPO-family losses through a linear LM head, and logits-SAM, with Numba-CUDA kernels
(``preference.md`` sec. 8: "a tiled shared-memory GEMM fused with the LSE; correctness first").

Same functions, signatures and results as :mod:`refimpl.preference`, on CUDA arrays (see the
package docstring for array kinds and the stream). ``H`` (R, T, d), ``W`` (V, d), optional
``b`` (V,): float32 or float64, one dtype for the three; ``labels`` (R, T) any integer dtype,
``mask`` (R, T) bool / integer / float in {0, 1}, both CUDA arrays; ``ref_logp`` (R,) float
(converted on the device to the dtype of H when it differs). Rows are stacked chosen first.

Structure (the same as the torch backend's, without autograd):

- Compaction: only the n tokens with mask = 1 reach a matmul. ``pref_gather`` copies their
  hidden states into ``Hc`` (n, d); their labels ``y`` (n,) and the row segments ``starts``
  (R + 1,) (tokens of row r are ``starts[r]:starts[r + 1]``, in row order) are uploaded.
- Forward sweep (A, A'): for each vocab block (``vocab_chunk``; None = all of V) and row block
  (``token_chunk``; None = all n tokens) the logit block ``Z_b = Hc_rows (W_b [+ eps_b])^T
  + b_b`` is one ``pref_gemm`` into a (token_chunk x vocab_chunk) workspace, then
  ``pref_lse_update`` updates the running max / sum of every row and picks ``z_y``;
  ``pref_lse_finish`` gives ``lse`` and the token log-probs; ``pref_seq_sum`` sums them per
  row (or averages: IPO / ``average=True``). Never an n x V array (unless the chunks are None).
- DPO (sec. 3): ``pref_dpo`` on the (R,) log-probs gives the mean loss, the rewards and
  ``dL/dlogp = (+kappa/B, -kappa/B)``; it mirrors ``refimpl.preference._dpo``, the formula's
  single source. ``pref_token_coef`` spreads ``c = dL/dlogp * a_r`` over each row's tokens.
- Backward sweep (B, B'): each logit block is recomputed and turned in place into
  ``G_b = c (onehot(y - j0) - exp(Z_b - lse))`` (``pref_grad_block``); then
  ``dHc_rows += G_b (W_b [+ eps_b])``, ``dW_b += G_b^T Hc_rows`` (both ``pref_gemm``) and
  ``db_b += sum_rows G_b`` (``pref_colsum``); ``pref_scatter`` puts dHc back to (R, T, d)
  (zeros at masked tokens).
- logits-SAM (sec. 5, 6), four sweeps: A) clean forward -> L_pre, c0; B) ``g_W = G0^T H``
  into one V x d buffer (x ``|W|`` with ``adaptive``: ``pref_absmul``), its squared norm
  (``pref_frob_dot``) and ``eps_W = rho g_W / n`` in place (``pref_sam_scale``, which reads the
  norm on the device); A') forward on ``W_b + eps_b`` (the GEMM's second B operand: the sum is
  formed per loaded tile, no second V x d array) -> L_post, rewards, c'; B') backward at Z'
  with ``dH = G' (W + eps_W)``. ``delta="gram"`` replaces the V x d buffer by
  ``K = Hc Hc^T`` (n x n): ``n^2 = <sum_b G0_b G0_b^T, K>_F``, then ``c0s = (rho/n) c0`` so that
  G0 recomputed with c0s is already scaled, ``Z'_b = Z0_b + K_rows G0s_b`` and
  ``dH = G' W + (G' G0s^T) H`` (an n x n accumulator); ``eps_W`` is None.

Host reads: exactly one, the O(R T) copy of ``labels`` and ``mask`` that
``refimpl._validate.pref_head(..., to_numpy=...)`` makes to validate them (labels in [0, V)
where mask = 1; mask in {0, 1}); the same host copies build the compacted token index, the
token labels and the row segments, which are uploaded once per call. Nothing is read back per
block, and no result is: losses, ``grad_norm`` and the SAM scale stay on the device.

Dtypes: every kernel computes in the dtype of the inputs (float32 or float64, one signature
each; float32 kernels do no float64 arithmetic). Results have the input dtype; scalars (losses,
``grad_norm``) are 0-d device arrays, as the OT ops return them, and all outputs come back as
the array kind of the leading input (``H``, or ``logp`` for the DPO-only functions). bfloat16
inputs reach these functions as float32 copies (:mod:`backends._bf16`, installed by the package).
"""

from __future__ import annotations

import numpy as np

from refimpl import _validate as V

from . import _kernels as K

__all__ = [
    "seq_logps", "dpo_loss", "dpo_loss_grad", "linear_dpo_loss", "linear_dpo_loss_grad",
    "logits_sam_dpo", "logits_sam_dpo_grad",
]

_LOSS_CODE = {"sigmoid": 0, "hinge": 1, "ipo": 2}


# --------------------------------------------------------------------------- launch helpers


def _launch2(name: str, dt: str, rows: int, cols: int, *args) -> None:
    """A 2-D elementwise kernel over (rows, cols): threadIdx.x along the (contiguous) columns,
    row blocks on grid x (no 65535 limit on rows, e.g. V rows of ``pref_absmul``)."""
    if rows == 0 or cols == 0:
        return
    bx, by = (4, 2) if K.simulator() else (32, 8)
    K.launch(name, dt, (K.ceil_div(rows, by), K.ceil_div(cols, bx)), (bx, by), 0, *args)


def _launch1(name: str, dt: str, size: int, *args, cap: int = 256) -> None:
    size = max(int(size), 1)
    nt = K.threads(size, cap)
    K.launch(name, dt, (K.ceil_div(size, nt),), (nt,), 0, *args)


def _gemm(dt: str, A, Bm, C, *, ta: int = 0, tb: int = 0, alpha: float = 1.0, beta: float = 0.0,
          B2=None, bias=None) -> None:
    """``C = alpha op(A) op(Bm + B2) + beta C (+ bias)`` with the tiled ``pref_gemm``: one
    TILE x TILE block per output tile, C's rows on grid y (at most 65535 TILE rows; C's rows
    here are tokens of a row block, vocab rows of dW or the n tokens of the Gram path)."""
    M, N = int(C.shape[0]), int(C.shape[1])
    if M == 0 or N == 0:
        return
    ts = K.tile(dt)
    K.launch("pref_gemm", dt, (K.ceil_div(N, ts), K.ceil_div(M, ts)), (ts, ts), 0,
             A, Bm, K.dummy(2, dt) if B2 is None else B2, C,
             K.dummy(1, dt) if bias is None else bias,
             K.scalar(dt, alpha), K.scalar(dt, beta), int(ta), int(tb),
             int(B2 is not None), int(bias is not None))


def _lse_geometry(rows: int, cols: int) -> tuple[int, int]:
    """(lanes, rows per block) of ``pref_lse_update``; lanes a power of 2."""
    if K.simulator():
        lanes = min(2, K.pow2_floor(cols))
        return lanes, max(1, min(rows, K.SIM_MAX_THREADS // lanes))
    lanes = min(K.PREF_LANES, 1 << max(0, (cols - 1).bit_length()))
    return lanes, max(1, K.PREF_ROW_THREADS // lanes)


def _red_threads(size: int) -> int:
    """A power-of-2 thread count for the shared-memory tree reductions."""
    return K.pow2_floor(K.threads(size, K.RED_BLOCK))


def _as_dtype(x, dt: str):
    """A 1-D device array in dtype ``dt`` (converted on the device when it differs)."""
    x = K.device(x)
    if V.dtype_name(x) == dt:
        return x
    out = K.empty(x.shape, dt)
    if out.shape[0]:
        _launch1("pref_cast", dt, out.shape[0], x, out)
    return out


def _scalar_out(arr, like):
    """A (1,) device array as the 0-d result of the leading input's kind."""
    return K.wrap(arr.reshape(()), like)


# --------------------------------------------------------------------------- the head


class _Head:
    """One validated linear-head call: the compacted tokens (mask = 1) on the device.

    ``labels`` and ``mask`` are read on the host once, by ``V.pref_head``'s ``to_numpy`` hook
    (validation), and the same host copies build ``idx``, ``y`` and ``starts``. ``check``
    runs the caller's remaining validation right after ``pref_head`` (the reference's order:
    head, then ref_logp and the loss options, then the chunks)."""

    def __init__(self, H, W, labels, mask, b, token_chunk=None, vocab_chunk=None, check=None,
                 paired=True):
        K.native(H=H, W=W, labels=labels, mask=mask, b=b)
        for name, x in (("H", H), ("W", W), ("b", b)):
            if x is not None:   # bfloat16 arrives upcast (backends._bf16)
                V.float_array(K.meta(x), name)
        host = {}

        def read(x):
            h = np.asarray(K.to_numpy(x))
            host[id(K.unmeta(x))] = h
            return h

        self.shape = V.pref_head(K.meta(H), K.meta(W), K.meta(labels), K.meta(mask),
                                 None if b is None else K.meta(b), to_numpy=read, paired=paired)
        if check is not None:     # the reference's remaining checks, in its order
            check(self.shape)
        tc, vc = V.pref_chunks(token_chunk, vocab_chunk)
        R, T, d, Vn = self.shape
        m = V.pref_mask(host[id(mask)]).reshape(-1)
        idx = np.flatnonzero(m)
        self.counts = np.bincount(idx // T, minlength=R)
        self.n = n = int(idx.size)
        self.dt = V.dtype_name(K.meta(H))
        self.idx = K.upload(idx.astype(np.int64))
        self.y = K.upload(host[id(labels)].reshape(-1)[idx].astype(np.int64))
        self.starts = K.upload(np.concatenate([[0], np.cumsum(self.counts)]).astype(np.int64))
        self.W = K.device(W)
        self.b = None if b is None else K.device(b)
        self.Hc = K.empty((n, d), self.dt)
        _launch2("pref_gather", self.dt, n, d, K.device(H), self.idx, self.Hc)
        tc = n if tc is None else min(tc, n)
        vc = Vn if vc is None else min(vc, Vn)
        self.rb = [(i, min(i + tc, n)) for i in range(0, n, max(tc, 1))]
        self.vb = [(j, min(j + vc, Vn)) for j in range(0, Vn, vc)]
        self.Z = K.empty((tc, vc), self.dt)                  # the one logit-block workspace

    def scalar(self, x):
        return K.scalar(self.dt, x)

    def logits(self, i0, i1, j0, j1, eps=None, out=None):
        """``Z_b = Hc[i0:i1] (W_b [+ eps_b])^T + b_b`` (into the workspace unless ``out``)."""
        Z = self.Z[:i1 - i0, :j1 - j0] if out is None else out
        _gemm(self.dt, self.Hc[i0:i1], self.W[j0:j1], Z, tb=1,
              B2=None if eps is None else eps[j0:j1],
              bias=None if self.b is None else self.b[j0:j1])
        return Z

    def grad_block(self, Z, i0, i1, j0, lse, c):
        """In place ``Z <- c (onehot(y - j0) - exp(Z - lse))`` for the rows i0:i1."""
        _launch2("pref_grad_block", self.dt, i1 - i0, Z.shape[1], Z, self.y[i0:i1], j0,
                 lse[i0:i1], c[i0:i1])
        return Z

    def check_average(self, average: bool) -> None:
        if average and np.any(self.counts == 0):
            empty = np.flatnonzero(self.counts == 0).tolist()
            raise ValueError(f"mask has rows with an empty completion {empty}: the token mean "
                             f"(IPO / average=True) is undefined (n_r = 0)")

    def _row_threads(self) -> int:
        """Threads per row block of the segment kernels (a power of 2)."""
        return _red_threads(int(self.counts.max()))

    def seq(self, tok, average: bool):
        """Sequence log-probs (R,) from the token log-probs (sum, or mean when average)."""
        R = self.shape.R
        out = K.empty((R,), self.dt)
        K.launch("pref_seq_sum", self.dt, (R,), (self._row_threads(),), 0, tok, self.starts,
                 out, int(average))
        return out

    def token_coef(self, dlogp, average: bool):
        """``c_k = dL/dl_r a_r`` for every token k of row r (n,)."""
        c = K.empty((self.n,), self.dt)
        K.launch("pref_token_coef", self.dt, (self.shape.R,), (self._row_threads(),), 0, dlogp,
                 self.starts, c, int(average))
        return c

    def full_dH(self, dHc):
        R, T, d, _ = self.shape
        dH = K.zeros((R, T, d), self.dt)
        _launch2("pref_scatter", self.dt, self.n, d, dHc, self.idx, dH)
        return dH


class _Gram:
    """``delta="gram"``: ``K = Hc Hc^T`` (n x n) and the clean logit gradient G0 recomputed
    per vocab block for all n tokens, with the SAM scale folded into its coefficients."""

    def __init__(self, hd: _Head, lse0, c0, rho: float, norm_eps: float):
        dt, n = hd.dt, hd.n
        self.hd, self.lse0 = hd, lse0
        self.K = K.empty((n, n), dt)
        _gemm(dt, hd.Hc, hd.Hc, self.K, tb=1)
        self.G0 = K.empty((n, hd.Z.shape[1]), dt)               # (n, vocab_chunk)
        self.M = K.zeros((n, n), dt)                            # sum_b G0_b G0_b^T, then M
        for j0, j1 in hd.vb:
            G0 = self.g0(j0, j1, c0)
            _gemm(dt, G0, G0, self.M, tb=1, beta=1.0)
        ss = K.zeros((1,), dt)
        _frob_dot(dt, self.M, self.K, ss)
        self.norm = K.empty((1,), dt)
        self.c0s = K.empty((n,), dt)                            # (rho / n) c0
        _launch1("pref_sam_scale", dt, n, c0, self.c0s, ss, self.norm, hd.scalar(rho),
                 hd.scalar(norm_eps))
        K.fill(self.M, 0.0)

    def g0(self, j0, j1, c=None):
        """``G0s[:, j0:j1]`` of all n tokens (clean logits; coefficients c, default c0s)."""
        hd = self.hd
        G = self.G0[:, :j1 - j0]
        if hd.n:
            hd.logits(0, hd.n, j0, j1, out=G)
            hd.grad_block(G, 0, hd.n, j0, self.lse0, self.c0s if c is None else c)
        return G


def _frob_dot(dt: str, A, Bm, out) -> None:
    """``out[0] += <A, Bm>_F`` on the device."""
    total = int(A.shape[0]) * int(A.shape[1])
    if total == 0:
        return
    nt = _red_threads(total)
    blocks = min(K.ceil_div(total, nt), 2 if K.simulator() else 1024)
    K.launch("pref_frob_dot", dt, (blocks,), (nt,), 0, A, Bm, out)


# --------------------------------------------------------------------------- sweeps


def _forward(hd: _Head, eps=None, gram: _Gram | None = None):
    """Sweeps A / A': online LSE over the blocks -> ``(lse (n,), token log-probs (n,))``."""
    dt, n = hd.dt, hd.n
    mx = K.empty((n,), dt)
    K.fill(mx, -np.inf)
    s, zy = K.zeros((n,), dt), K.zeros((n,), dt)
    for j0, j1 in hd.vb:
        G0s = gram.g0(j0, j1) if gram is not None else None
        for i0, i1 in hd.rb:
            Z = hd.logits(i0, i1, j0, j1, eps)
            if gram is not None:
                _gemm(dt, gram.K[i0:i1], G0s, Z, beta=1.0)
            lanes, rows = _lse_geometry(i1 - i0, j1 - j0)
            K.launch("pref_lse_update", dt, (K.ceil_div(i1 - i0, rows),), (lanes, rows), 0,
                     Z, hd.y[i0:i1], j0, mx[i0:i1], s[i0:i1], zy[i0:i1])
    lse, tok = K.empty((n,), dt), K.empty((n,), dt)
    if n:
        _launch1("pref_lse_finish", dt, n, mx, s, zy, lse, tok)
    return lse, tok


def _backward(hd: _Head, lse, c, eps=None, gram: _Gram | None = None, need_H=True,
              need_b=True):
    """Sweeps B / B': recompute each block, ``G = c (onehot - softmax)`` ->
    ``(dHc (n, d) or None, dW (V, d), db (V,) or None)``; with ``eps`` the head is
    ``W + eps`` (``dH = G (W + eps)``), with ``gram`` ``dH = G W + (G G0s^T) Hc``."""
    dt = hd.dt
    _, _, d, Vn = hd.shape
    dHc = K.zeros((hd.n, d), dt) if need_H else None
    dW = K.zeros((Vn, d), dt)
    db = K.zeros((Vn,), dt) if (need_b and hd.b is not None) else None
    for j0, j1 in hd.vb:
        G0s = gram.g0(j0, j1) if gram is not None else None
        for i0, i1 in hd.rb:
            G = hd.logits(i0, i1, j0, j1, eps)
            if gram is not None:
                _gemm(dt, gram.K[i0:i1], G0s, G, beta=1.0)
            hd.grad_block(G, i0, i1, j0, lse, c)
            if need_H:
                _gemm(dt, G, hd.W[j0:j1], dHc[i0:i1], beta=1.0,
                      B2=None if eps is None else eps[j0:j1])
                if gram is not None:
                    _gemm(dt, G, G0s, gram.M[i0:i1], tb=1, beta=1.0)
            _gemm(dt, G, hd.Hc[i0:i1], dW[j0:j1], ta=1, beta=1.0)
            if db is not None:
                _launch1("pref_colsum", dt, j1 - j0, G, db[j0:j1])
    if gram is not None and need_H:
        _gemm(dt, gram.M, hd.Hc, dHc, beta=1.0)
    return dHc, dW, db


def _dpo(l, ref, beta: float, loss_type: str, ls: float, dt: str):
    """``(loss (1,), chosen_rewards, rejected_rewards, dlogp)`` on the device (``pref_dpo``)."""
    R = int(l.shape[0])
    B = R // 2
    loss = K.empty((1,), dt)
    cr, rr, dlogp = K.empty((B,), dt), K.empty((B,), dt), K.empty((R,), dt)
    K.launch("pref_dpo", dt, (1,), (_red_threads(B),), 0, l, ref, loss, cr, rr, dlogp,
             K.scalar(dt, beta), K.scalar(dt, ls), _LOSS_CODE[loss_type])
    return loss, cr, rr, dlogp


def _dpo_pass(hd: _Head, ref, beta, loss_type, ls, eps=None, gram=None):
    """Forward sweep + DPO: ``(loss, cr, rr, lse, per-token coefficient c (n,))``."""
    average = loss_type == "ipo"
    hd.check_average(average)
    lse, tok = _forward(hd, eps, gram)
    l = hd.seq(tok, average)
    loss, cr, rr, dlogp = _dpo(l, ref, beta, loss_type, ls, hd.dt)
    return loss, cr, rr, lse, hd.token_coef(dlogp, average)


# --------------------------------------------------------------------------- public API


def seq_logps(H, W, labels, mask, b=None, *, average=False, token_chunk=None, vocab_chunk=None):
    """Sequence log-probs ``l_r = sum_t m_rt log softmax(H_rt W^T + b)[y_rt]`` (R,).

    ``average=True`` divides by ``n_r = sum_t m_rt`` (IPO); empty rows then raise ValueError.
    ``token_chunk``/``vocab_chunk`` bound the logit-block workspace (never n x V)."""
    hd = _Head(H, W, labels, mask, b, token_chunk, vocab_chunk)
    hd.check_average(bool(average))
    _, tok = _forward(hd)
    return K.wrap(hd.seq(tok, bool(average)), H)


def _dpo_args(logp, ref_logp, beta, loss_type, label_smoothing):
    K.native(logp=logp, ref_logp=ref_logp)
    V.float_array(K.meta(logp), "logp")
    V.pref_logps(K.meta(logp), K.meta(ref_logp))
    beta, loss_type, ls = V.pref_loss(beta, loss_type, label_smoothing)
    dt = V.dtype_name(K.meta(logp))
    return K.device(logp), _as_dtype(ref_logp, dt), beta, loss_type, ls, dt


def dpo_loss(logp, ref_logp, beta, *, loss_type="sigmoid", label_smoothing=0.0):
    """``(L, chosen_rewards (B,), rejected_rewards (B,))`` from sequence log-probs (R,) of the
    policy and the reference (chosen rows first; IPO expects token means for both)."""
    loss, cr, rr, _ = _dpo(*_dpo_args(logp, ref_logp, beta, loss_type, label_smoothing))
    return _scalar_out(loss, logp), K.wrap(cr, logp), K.wrap(rr, logp)


def dpo_loss_grad(logp, ref_logp, beta, *, loss_type="sigmoid", label_smoothing=0.0):
    """``(L, dL/dlogp (R,))``: ``+kappa_i / B`` on chosen rows, ``-kappa_i / B`` on rejected."""
    loss, _, _, dlogp = _dpo(*_dpo_args(logp, ref_logp, beta, loss_type, label_smoothing))
    return _scalar_out(loss, logp), K.wrap(dlogp, logp)


def _linear_setup(H, W, labels, mask, ref_logp, beta, b, loss_type, label_smoothing,
                  token_chunk, vocab_chunk):
    """Validation in the reference's order: head, ref_logp, loss options, chunks."""
    opts = {}

    def check(shape):
        K.native(ref_logp=ref_logp)
        V.pref_ref_logp(K.meta(ref_logp), shape.R)
        opts["loss"] = V.pref_loss(beta, loss_type, label_smoothing)

    hd = _Head(H, W, labels, mask, b, token_chunk, vocab_chunk, check=check)
    return (hd, _as_dtype(ref_logp, hd.dt)) + opts["loss"]


def linear_dpo_loss(H, W, labels, mask, ref_logp, beta, b=None, *, loss_type="sigmoid",
                    label_smoothing=0.0, token_chunk=None, vocab_chunk=None):
    """DPO loss of the policy head ``Z = H W^T + b`` (IPO switches to token means)."""
    hd, ref, beta, lt, ls = _linear_setup(H, W, labels, mask, ref_logp, beta, b, loss_type,
                                          label_smoothing, token_chunk, vocab_chunk)
    return _scalar_out(_dpo_pass(hd, ref, beta, lt, ls)[0], H)


def linear_dpo_loss_grad(H, W, labels, mask, ref_logp, beta, b=None, *, loss_type="sigmoid",
                         label_smoothing=0.0, token_chunk=None, vocab_chunk=None):
    """``(L, dH (R, T, d), dW (V, d), db (V,) or None)``: ``dH = G W``, ``dW = G^T H``,
    ``db = sum G`` with G the closed-form logit gradient (0 at masked tokens)."""
    hd, ref, beta, lt, ls = _linear_setup(H, W, labels, mask, ref_logp, beta, b, loss_type,
                                          label_smoothing, token_chunk, vocab_chunk)
    loss, _, _, lse, c = _dpo_pass(hd, ref, beta, lt, ls)
    dHc, dW, db = _backward(hd, lse, c)
    return (_scalar_out(loss, H), K.wrap(hd.full_dH(dHc), H), K.wrap(dW, H),
            None if db is None else K.wrap(db, H))


def logits_sam_dpo_grad(H, W, labels, mask, ref_logp, beta, rho, b=None, *, loss_type="sigmoid",
                        label_smoothing=0.0, adaptive=False, norm_eps=1e-12, delta="weight",
                        token_chunk=None, vocab_chunk=None):
    """One logits-SAM step (official code, non-ZeRO path): a dict with ``loss_pre``,
    ``loss_post``, ``grad_norm`` (n), ``eps_W`` (V, d; None for ``delta="gram"``), ``dH``,
    ``dW``, ``db`` (None without b), ``chosen_rewards``/``rejected_rewards`` (at Z').

    Four sweeps: A) clean forward, B) ``g_W = G0^T H`` and its norm, A') forward at
    ``W + eps_W`` (or ``Z0 + (rho/n) H H^T G0`` for gram), B') ``dH, dW, db`` from G'."""
    hd, ref, beta, lt, ls = _linear_setup(H, W, labels, mask, ref_logp, beta, b, loss_type,
                                          label_smoothing, token_chunk, vocab_chunk)
    rho, norm_eps, delta = V.pref_sam(rho, norm_eps, delta, adaptive)
    dt = hd.dt
    loss_pre, _, _, lse0, c0 = _dpo_pass(hd, ref, beta, lt, ls)                  # A
    eps_W = gram = None
    if delta == "weight":
        _, g_W, _ = _backward(hd, lse0, c0, need_H=False, need_b=False)           # B
        if adaptive:
            _launch2("pref_absmul", dt, g_W.shape[0], g_W.shape[1], g_W, hd.W)
        ss = K.zeros((1,), dt)
        _frob_dot(dt, g_W, g_W, ss)
        norm = K.empty((1,), dt)
        flat = g_W.reshape(-1)
        _launch1("pref_sam_scale", dt, flat.shape[0], flat, flat, ss, norm, hd.scalar(rho),
                 hd.scalar(norm_eps))
        eps_W = g_W                                                               # in place
    else:
        gram = _Gram(hd, lse0, c0, rho, norm_eps)
        norm = gram.norm
    loss_post, cr, rr, lse1, c1 = _dpo_pass(hd, ref, beta, lt, ls, eps_W, gram)   # A'
    dHc, dW, db = _backward(hd, lse1, c1, eps_W, gram)                            # B'
    return dict(loss_pre=_scalar_out(loss_pre, H), loss_post=_scalar_out(loss_post, H),
                grad_norm=_scalar_out(norm, H), eps_W=K.wrap(eps_W, H),
                dH=K.wrap(hd.full_dH(dHc), H), dW=K.wrap(dW, H), db=K.wrap(db, H),
                chosen_rewards=K.wrap(cr, H), rejected_rewards=K.wrap(rr, H))


def logits_sam_dpo(H, W, labels, mask, ref_logp, beta, rho, b=None, *, loss_type="sigmoid",
                   label_smoothing=0.0, adaptive=False, norm_eps=1e-12, delta="weight",
                   token_chunk=None, vocab_chunk=None):
    """``L_post = DPO(H (W + eps_W)^T + b)`` with eps_W of :func:`logits_sam_dpo_grad`."""
    return logits_sam_dpo_grad(H, W, labels, mask, ref_logp, beta, rho, b, loss_type=loss_type,
                               label_smoothing=label_smoothing, adaptive=adaptive,
                               norm_eps=norm_eps, delta=delta, token_chunk=token_chunk,
                               vocab_chunk=vocab_chunk)["loss_post"]
