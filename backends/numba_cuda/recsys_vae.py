r"""Mult-VAE (arXiv 1802.05814) and the PIA anchor regulariser (arXiv 2511.06781) with Numba-CUDA
kernels (``specs/recsys_vae.md``).

Same functions, signatures and results as :mod:`refimpl._multvae` and the metrics of
:mod:`refimpl._recsys_eval` (the reference); see the package docstring for array kinds and the
stream. float32 or float64, one dtype per call; results have the input dtype. Scalars (``loss``,
``nll``, ``kl``, the "mean"/"sum" PIA loss) are 0-d device arrays (views of a small result
array); :func:`anneal_beta` is the reference's host function. No bfloat16.

``X`` is a dense device array (U, I), or any CSR object with ``.shape`` and device arrays
``.data`` (X's float dtype, stored values all 1), ``.indices``, ``.indptr`` (int32, or int64
narrowed once to int32 by ``rv_idx32``), e.g. a ``cupyx.scipy.sparse.csr_matrix``.

Equations as implemented (``rv_*`` kernels in :mod:`._kernels`; every matmul is the tiled
``pref_gemm`` of the preference family for dense operands, ``rv_spmm`` / ``rv_spmm_t`` for CSR):

- forward: ``rv_rowprep`` (dense; one block per row) or ``rv_csr_prep`` (CSR; one thread per
  row, the stored values of h0) computes ``n_u`` and ``h0``: dropout ``h0 = X / ||X_u|| * mask
  / keep_prob``, bernoulli ``h0 = (X * mask) / ||X_u * mask_u||``, no mask ``X / ||X_u||``, with
  ``||x|| = sqrt(max(sum x^2, 1e-12))`` (tf.nn.l2_normalize); ``a1 = h0 W1 + b1`` (pref_gemm
  with the bias, or rv_spmm), ``h1 = tanh(a1)`` (``rv_tanh``), ``o2 = h1 W2 + b2``,
  ``rv_latent`` splits mu / logvar and forms ``z = mu + eps exp(logvar / 2)`` (z = mu without
  eps), ``h3 = tanh(z W3 + b3)``, ``logits = h3 W4 + b4``.
- loss: ``rv_nll_rows`` one block per row: online log-sum-exp fused with ``sum_i X_ui z_ui``
  and n_u, ``nll_u = -(sum_i X_ui z_ui - n_u lse_u)``; with the gradient the same kernel's
  second sweep writes ``dlogits = (softmax * n_u - X) / U`` (softmax is never stored);
  ``rv_kl_rows`` ``kl_u = 0.5 sum_k (-logvar + exp(logvar) + mu^2 - 1)``; ``rv_loss_finish``
  (one block) the means and ``loss = nll + beta kl (+ lam_A L_A)``.
- backward (spec sec. 2): ``dW4 = h3^T dlogits``, ``db4`` column sums (``pref_colsum``),
  ``da3 = (dlogits W4^T)(1 - h3^2)`` (``rv_tanh_bwd``), ``dW3 = z^T da3``, ``dz = da3 W3^T``;
  ``rv_latent_bwd``: ``dmu = dz + beta mu / U (+ lam_A dL_A/dmu)``, ``dlogvar = dz eps sigma / 2
  + beta (exp(logvar) - 1) / (2U) (+ lam_A dL_A/dlogvar)``; ``dW2 = h1^T do2``,
  ``da1 = (do2 W2^T)(1 - h1^2)``, ``dW1 = h0^T da1`` (CSR: ``rv_spmm_t``, atomics).
- PIA: ``rv_eaug`` forms ``[E, ||E_i||^2, 1]`` (I, d + 2) so that ONE product ``ax = X @ that``
  gives ``X E``, ``X rownorm2(E)`` and ``n_u``; ``rv_pia_rows`` the per-user closed form
  ``||mu - ebar||^2 + sum exp(logvar) + spread`` with ``spread = (X rn2)_u / n_u - ||ebar||^2``
  (or, with z (S, U, d), ``mean_s ||z_su - ebar||^2 + spread``, equal to the reference's Monte
  Carlo mean over s and i in S_u), NaN where n_u = 0; ``rv_reduce`` (one block) sum / count /
  mean over users with items; ``rv_pia_grad_rows`` ``dmu = 2 (mu - ebar) / |V|``,
  ``dlogvar = exp(logvar) / |V|`` and the rows ``[mu_u / n_u, 1 / n_u]``, whose product with X^T
  gives ``dE_k = (2 / |V|)(e_k c_k - g_k)`` (``rv_pia_de``), the sum over users of
  ``(2 / n_u)(e_k - mu_u)`` for k in S_u. ``item_centroids`` = ``rv_centroid`` of the same ax.
- ``gaussian_w2``: ``rv_w2``, ``sqrt(||mu1 - mu2||^2 + ||s1 - s2||^2)`` per row.
- metrics: ``rv_topk`` one block per row: per-row top-k selection in shared memory (k rounds
  of a block arg-max over per-thread candidates, ranking by score descending with ties by the
  lower item index, fold-in items and -inf scores excluded, the selected indices in shared
  memory), then Recall = hits / min(k, |T|) and NDCG = DCG / IDCG with the reference's float64
  ``1 / log2(r + 2)`` and ideal-DCG tables (uploaded, O(k)); NaN where |T| = 0. **Backend
  limit:** k <= :data:`._kernels.RV_KMAX` = 128 (the selected list lives in shared memory);
  larger k raises ValueError (use the torch/cupy backends or the reference). ``X_fold`` /
  ``X_heldout`` of another dtype than the scores are converted once on the device
  (``rv_cast_*``); CSR ones are expanded to a dense (U, I) array of the scores' dtype
  (``rv_densify``: the metrics read every score anyway). float16/bfloat16 interaction arrays
  are refused (TypeError: numba-cuda has no kernels for them here).

Host reads (each documented; nothing O(data)):

1. validation, ONE read per call: the value checks the validators ask for (binary X or CSR
   values all 1, binary mask, finite eps / E / logits / mu / logvar / z, X not empty for PIA;
   metrics: scores without NaN/+inf, binary X_fold / X_heldout, their overlap count) are
   computed by ``rv_flags`` / ``rv_metric_stats`` into one small array, read once.
2. ``beta`` / ``lam_A`` given as 0-d device arrays are read once by the shared validator.
"""

from __future__ import annotations

import numpy as np

from refimpl import _validate as V
from refimpl._multvae import anneal_beta as _ref_anneal_beta

from . import _kernels as K
from .preference import _gemm

__all__ = [
    "multvae_forward", "multvae_loss", "multvae_value_and_grad", "anneal_beta",
    "item_centroids", "pia_anchor_loss", "pia_anchor_grad", "gaussian_w2", "recall_at_k",
    "ndcg_at_k",
]

ROW_BLOCK = K.RV_RED      # most threads of the one-block-per-row kernels (a power of 2)

_FLAG_KIND = {"binary": 0, "ones": 1, "finite": 2, "nonneg": 3, "nonzero": 4}
_CASTS = {"bool": "rv_cast_bool", "int8": "rv_cast_i8", "int16": "rv_cast_i16",
          "int32": "rv_cast_i32", "int64": "rv_cast_i64", "uint8": "rv_cast_u8",
          "uint16": "rv_cast_u16", "uint32": "rv_cast_u32", "uint64": "rv_cast_u64"}


def _row_threads(n: int) -> int:
    return K.pow2_floor(K.threads(n, ROW_BLOCK))


def _view0(arr, i: int, like):
    """Entry ``i`` of a device array as a 0-d device array of ``like``'s kind."""
    return K.wrap(arr[i:i + 1].reshape(()), like)


def _as3(x):
    """A 3-D view of a 1-, 2- or 3-D device array (for ``rv_flags``)."""
    nd = len(x.shape)
    if nd == 3:
        return x
    if nd == 2:
        return K.lift3(x)
    n = int(x.shape[0])
    if K.simulator():
        return x[None][None] if not x.is_c_contiguous() else x.reshape((1, 1, n))
    st = int(x.strides[0]) or int(x.dtype.itemsize)
    return K._view(x, (1, 1, n), (st * max(n, 1), st * max(n, 1), st))


def _flags(checks):
    """The validators' ``flags`` hook: one ``rv_flags`` launch per check into one small array,
    read once (THE host read of the call)."""
    if not checks:
        return ()
    dt = V.dtype_name(checks[0][1])
    out = K.zeros((len(checks),), dt)
    for slot, (kind, x) in enumerate(checks):
        a = _as3(K.device(K.unmeta(x)))
        total = int(np.prod([int(s) for s in a.shape]))
        K.launch_grid_stride("rv_flags", dt, total, a, out, slot, _FLAG_KIND[kind])
    h = out.copy_to_host()                               # THE one read
    return tuple(bool(h[i] != 0) if kind == "nonzero" else bool(h[i] == 0)
                 for i, (kind, _) in enumerate(checks))


# --------------------------------------------------------------------------- X


def _idx32(a, name: str):
    """A CSR index array as int32 (int64 narrowed once by ``rv_idx32``)."""
    a = K.device(a)
    dt = V.dtype_name(a)
    if dt == "int32":
        return a
    if dt != "int64":
        raise TypeError(f"{name} must be an int32 or int64 device array, got {dt}")
    n = int(a.shape[0])
    out = K.empty((n,), "int32")
    K.launch_per_item("rv_idx32", "float64", n, a, out)
    return out


class _X:
    """An interaction matrix on the device: dense, or CSR (data, int32 indices / indptr)."""

    def __init__(self, X, name: str = "X"):
        self.csr = V.rv_is_csr(X) and not hasattr(X, "__cuda_array_interface__") and not \
            getattr(X, "__cuda_ndarray__", False)
        if self.csr:
            K.native(**{f"{name}.data": X.data, f"{name}.indices": X.indices,
                        f"{name}.indptr": X.indptr})
            self.obj = X
            self.data = K.device(X.data)
            self.values = K.meta(X.data)           # what the validators check
            self.meta = X
        else:
            K.native(**{name: X})
            self.dense = K.device(X)
            self.values = None
            self.meta = K.meta(X)
        self.like = X.data if self.csr else X

    def index(self):
        if self.csr and not hasattr(self, "indices"):
            self.indices = _idx32(self.obj.indices, "X.indices")
            self.indptr = _idx32(self.obj.indptr, "X.indptr")

    def product(self, dt: str, B, C, bias=None):
        """``C = X B (+ bias)`` (X dense or CSR with its stored values)."""
        if self.csr:
            self.spmm(dt, self.data, B, C, bias)
        else:
            _gemm(dt, self.dense, B, C, bias=bias)

    def spmm(self, dt: str, vals, B, C, bias=None):
        self.index()
        U, N = int(C.shape[0]), int(C.shape[1])
        if U == 0 or N == 0:
            return
        nt = K.threads(N, K.EW_BLOCK)
        K.launch("rv_spmm", dt, (K.ceil_div(N, nt), U), (nt,), 0, vals, self.indices, self.indptr,
                 B, K.dummy(1, dt) if bias is None else bias, C, int(bias is not None))

    def spmm_t(self, dt: str, vals, B, C):
        """``C += S^T B`` (S: X's pattern with ``vals``; C zeroed by the caller)."""
        self.index()
        U, N = int(B.shape[0]), int(B.shape[1])
        if U == 0 or N == 0:
            return
        nt = K.threads(N, K.EW_BLOCK)
        K.launch("rv_spmm_t", dt, (K.ceil_div(N, nt), U), (nt,), 0, vals, self.indices,
                 self.indptr, B, C)

    def tproduct(self, dt: str, B, C):
        """``C = X^T B``."""
        if self.csr:
            K.fill(C, 0.0)
            self.spmm_t(dt, self.data, B, C)
        else:
            _gemm(dt, self.dense, B, C, ta=1)


_IDUMMY: list = []


def _idummy():
    """A 1-element int32 array standing in for unused CSR index arguments (never read)."""
    if not _IDUMMY:
        _IDUMMY.append(K.empty((1,), "int32"))
    return _IDUMMY[0]


def _dev(x):
    return None if x is None else K.device(x)


def _pdev(params):
    return {k: K.device(params[k]) for k in V.RV_PARAM_KEYS}


def _native_params(params):
    if isinstance(params, dict):
        K.native(**{f"params['{k}']": params[k] for k in V.RV_PARAM_KEYS if k in params})
        return {k: (K.meta(v) if k in V.RV_PARAM_KEYS else v) for k, v in params.items()}
    return params


# --------------------------------------------------------------------------- model


def _forward(x: _X, P, mask, eps, keep_prob, mode, sh, keep=False):
    """The forward pass on the device; returns a dict of the device arrays."""
    dt, U, I, H, d = sh.dtype, sh.U, sh.I, sh.H, sh.d
    f = {}
    nrow = K.empty((U,), dt)
    has_mask = int(mask is not None)
    m2 = mask if mask is not None else K.dummy(2, dt)
    a1 = K.empty((U, H), dt)
    if x.csr:
        x.index()
        vals = K.empty((int(x.data.shape[0]),), dt)
        K.launch_per_item("rv_csr_prep", dt, U, x.data, x.indices, x.indptr, m2, vals, nrow,
                 K.scalar(dt, keep_prob), mode, has_mask)
        x.spmm(dt, vals, P["W1"], a1, P["b1"])
        f["h0vals"] = vals
    else:
        h0 = K.empty((U, I), dt)
        K.launch("rv_rowprep", dt, (U,), (_row_threads(I),), 0, x.dense, m2, h0, nrow,
                 K.scalar(dt, keep_prob), mode, has_mask)
        _gemm(dt, h0, P["W1"], a1, bias=P["b1"])
        f["h0"] = h0
    K.launch_grid_stride("rv_tanh", dt, U * H, a1)
    o2 = K.empty((U, 2 * d), dt)
    _gemm(dt, a1, P["W2"], o2, bias=P["b2"])
    mu, lv, z = (K.empty((U, d), dt) for _ in range(3))
    K.launch_grid_stride("rv_latent", dt, U * d, o2, eps if eps is not None else K.dummy(2, dt), mu, lv, z,
        int(eps is not None))
    h3 = K.empty((U, H), dt)
    _gemm(dt, z, P["W3"], h3, bias=P["b3"])
    K.launch_grid_stride("rv_tanh", dt, U * H, h3)
    logits = K.empty((U, I), dt)
    _gemm(dt, h3, P["W4"], logits, bias=P["b4"])
    f.update(h1=a1, mu=mu, lv=lv, z=z, h3=h3, logits=logits, nrow=nrow)
    return f


def _mode(mask_mode) -> int:
    return 0 if mask_mode == "dropout" else 1


def multvae_forward(X, params, mask=None, eps=None, keep_prob=0.5, mask_mode="dropout"):
    """``(logits (U, I), mu (U, d), logvar (U, d))``: ``rv_rowprep``/``rv_csr_prep``, four
    GEMMs with fused biases, ``rv_tanh``, ``rv_latent`` (module docstring). One host read (the
    value checks)."""
    x = _X(X)
    Pm = _native_params(params)
    K.native(mask=mask, eps=eps)
    sh = V.multvae_forward_args(x.meta, Pm, K.meta(mask) if mask is not None else None,
                                K.meta(eps) if eps is not None else None, keep_prob, mask_mode,
                                x_values=x.values, flags=_flags)
    f = _forward(x, _pdev(params), _dev(mask), _dev(eps), float(keep_prob), _mode(mask_mode), sh)
    return K.wrap(f["logits"], x.like), K.wrap(f["mu"], x.like), K.wrap(f["lv"], x.like)


def _loss_rows(x: _X, logits, mu, lv, dt, U, want_grad: bool):
    """``(nll rows, kl rows, dlogits or None)``: ``rv_nll_rows`` + ``rv_kl_rows``."""
    I = int(logits.shape[1])
    rows = K.empty((U,), dt)
    dlog = K.empty((U, I), dt) if want_grad else K.dummy(2, dt)
    if x.csr:
        x.index()
        xa = (K.dummy(2, dt), x.data, x.indices, x.indptr)
    else:
        d1 = _idummy()
        xa = (x.dense, K.dummy(1, dt), d1, d1)
    K.launch("rv_nll_rows", dt, (U,), (_row_threads(I),), 0, logits, *xa, rows, dlog,
             K.scalar(dt, 1.0 / U), int(x.csr), int(want_grad))
    kl = K.empty((U,), dt)
    K.launch_per_item("rv_kl_rows", dt, U, mu, lv, kl)
    return rows, kl, (dlog if want_grad else None)


def _finish(dt, rows, kl, beta, lam=0.0, extra=None):
    out = K.empty((3,), dt)
    U = int(rows.shape[0])
    K.launch("rv_loss_finish", dt, (1,), (_row_threads(U),), 0, rows, kl,
             K.dummy(1, dt) if extra is None else extra, out, K.scalar(dt, beta), K.scalar(dt, lam),
             int(extra is not None))
    return out


def multvae_loss(X, logits, mu, logvar, beta):
    """``(loss, nll, kl)`` as 0-d device arrays: ``rv_nll_rows`` (fused log-sum-exp and
    X-weighted sum), ``rv_kl_rows``, ``rv_loss_finish``. One host read (the value checks; a
    0-d ``beta`` is read once more)."""
    x = _X(X)
    K.native(logits=logits, mu=mu, logvar=logvar)
    sh, beta = V.multvae_loss_args(x.meta, K.meta(logits), K.meta(mu), K.meta(logvar), beta,
                                   x_values=x.values, flags=_flags, to_numpy=K.to_numpy)
    dt = sh.dtype
    rows, kl, _ = _loss_rows(x, K.device(logits), K.device(mu), K.device(logvar), dt, sh.U,
                             False)
    out = _finish(dt, rows, kl, beta)
    return tuple(_view0(out, i, x.like) for i in range(3))


def _pia(x: _X, mu, lv, E, dt, U, d, z=None):
    """``(ax = X @ [E, rn2, 1], per-user L_A rows, reduction (sum, count, mean))``."""
    I = int(E.shape[0])
    Ea = K.empty((I, d + 2), dt)
    K.launch_per_item("rv_eaug", dt, I, E, Ea)
    ax = K.empty((U, d + 2), dt)
    x.product(dt, Ea, ax)
    rows = K.empty((U,), dt)
    K.launch_per_item("rv_pia_rows", dt, U, mu, lv, ax, K.dummy(3, dt) if z is None else z, rows,
             int(z is not None))
    red = K.empty((3,), dt)
    K.launch("rv_reduce", dt, (1,), (_row_threads(U),), 0, rows, ax, red)
    return ax, rows, red


def _pia_grads(x: _X, mu, lv, E, ax, red, dt, U, d, scale):
    """``(dmu, dlogvar, dE)`` of ``scale * mean_u L_A(u)``."""
    I = int(E.shape[0])
    dmu = K.empty((U, d), dt)
    dlv = K.empty((U, d), dt)
    waug = K.empty((U, d + 1), dt)
    K.launch_grid_stride("rv_pia_grad_rows", dt, U * d, mu, lv, ax, red, dmu, dlv, waug, K.scalar(dt, scale))
    G = K.empty((I, d + 1), dt)
    x.tproduct(dt, waug, G)
    dE = K.empty((I, d), dt)
    K.launch_grid_stride("rv_pia_de", dt, I * d, E, G, red, dE, K.scalar(dt, scale))
    return dmu, dlv, dE


def _colsum(dt, G):
    out = K.zeros((int(G.shape[1]),), dt)
    n = int(G.shape[1])
    nt = K.threads(n, K.EW_BLOCK)
    K.launch("pref_colsum", dt, (K.ceil_div(n, nt),), (nt,), 0, G, out)
    return out


def multvae_value_and_grad(X, params, beta, mask, eps, keep_prob=0.5, mask_mode="dropout",
                           E=None, lam_A=0.0):
    """``(loss (0-d), grads)`` by the explicit backward of spec sec. 2 (module docstring):
    GEMMs by ``pref_gemm``, the fused ``rv_nll_rows`` (nll and dlogits), ``rv_tanh_bwd``,
    ``rv_latent_bwd``, ``pref_colsum`` for the biases, ``rv_spmm_t`` for dW1 with a CSR X; with
    E the PIA term (``rv_pia_*``) and ``grads["E"]``. One host read (the value checks; 0-d
    ``beta`` / ``lam_A`` are read once more each)."""
    x = _X(X)
    Pm = _native_params(params)
    K.native(mask=mask, eps=eps, E=E)
    sh, beta, lam_A = V.multvae_value_and_grad_args(
        x.meta, Pm, beta, K.meta(mask) if mask is not None else None,
        K.meta(eps) if eps is not None else None, keep_prob, mask_mode,
        K.meta(E) if E is not None else None, lam_A, x_values=x.values, flags=_flags,
        to_numpy=K.to_numpy)
    dt, U, I, H, d = sh.dtype, sh.U, sh.I, sh.H, sh.d
    P = _pdev(params)
    eps_d, E_d = _dev(eps), _dev(E)
    f = _forward(x, P, _dev(mask), eps_d, float(keep_prob), _mode(mask_mode), sh)
    mu, lv = f["mu"], f["lv"]
    rows, kl, dlog = _loss_rows(x, f["logits"], mu, lv, dt, U, True)
    red = None
    if E_d is not None:
        ax, _, red = _pia(x, mu, lv, E_d, dt, U, d)
        pmu, plv, dE = _pia_grads(x, mu, lv, E_d, ax, red, dt, U, d, lam_A)
    out = _finish(dt, rows, kl, beta, lam_A, red)
    g = {}
    g["W4"] = K.empty((H, I), dt)
    _gemm(dt, f["h3"], dlog, g["W4"], ta=1)
    g["b4"] = _colsum(dt, dlog)
    da3 = K.empty((U, H), dt)
    _gemm(dt, dlog, P["W4"], da3, tb=1)
    K.launch_grid_stride("rv_tanh_bwd", dt, U * H, da3, f["h3"])
    g["W3"] = K.empty((d, H), dt)
    _gemm(dt, f["z"], da3, g["W3"], ta=1)
    g["b3"] = _colsum(dt, da3)
    dz = K.empty((U, d), dt)
    _gemm(dt, da3, P["W3"], dz, tb=1)
    do2 = K.empty((U, 2 * d), dt)
    d2 = K.dummy(2, dt)
    K.launch_grid_stride("rv_latent_bwd", dt, U * d, dz, mu, lv, d2 if eps_d is None else eps_d,
        d2 if red is None else pmu, d2 if red is None else plv, do2, K.scalar(dt, beta),
        K.scalar(dt, 1.0 / U), int(eps_d is not None), int(red is not None))
    g["W2"] = K.empty((H, 2 * d), dt)
    _gemm(dt, f["h1"], do2, g["W2"], ta=1)
    g["b2"] = _colsum(dt, do2)
    da1 = K.empty((U, H), dt)
    _gemm(dt, do2, P["W2"], da1, tb=1)
    K.launch_grid_stride("rv_tanh_bwd", dt, U * H, da1, f["h1"])
    g["W1"] = K.empty((I, H), dt)
    if x.csr:
        K.fill(g["W1"], 0.0)
        x.spmm_t(dt, f["h0vals"], da1, g["W1"])
    else:
        _gemm(dt, f["h0"], da1, g["W1"], ta=1)
    g["b1"] = _colsum(dt, da1)
    order = V.RV_PARAM_KEYS + (("E",) if E_d is not None else ())
    if E_d is not None:
        g["E"] = dE
    return _view0(out, 0, x.like), {k: K.wrap(g[k], x.like) for k in order}


def anneal_beta(step, cap=0.2, total_anneal_steps=200_000):
    """``min(cap, step / total_anneal_steps)``: the reference's host function (a Python float;
    the schedule is optimiser state on the host)."""
    return _ref_anneal_beta(step, cap, total_anneal_steps)


# --------------------------------------------------------------------------- PIA


def item_centroids(X, E):
    """``(X @ E) / n_u`` (U, d), 0 for empty rows: ``rv_eaug``, one product, ``rv_centroid``.
    One host read (the value checks)."""
    x = _X(X)
    K.native(E=E)
    sh = V.item_centroids_args(x.meta, K.meta(E), x_values=x.values, flags=_flags)
    dt, U, I, d = sh.dtype, sh.U, sh.I, sh.d
    Ea = K.empty((I, d + 2), dt)
    K.launch_per_item("rv_eaug", dt, I, K.device(E), Ea)
    ax = K.empty((U, d + 2), dt)
    x.product(dt, Ea, ax)
    cen = K.empty((U, d), dt)
    K.launch_grid_stride("rv_centroid", dt, U * d, ax, cen)
    return K.wrap(cen, x.like)


def pia_anchor_loss(mu, logvar, X, E, reduction="mean", z=None):
    """PIA's anchor loss: per user the closed form (or, with z (S, U, d), the Monte Carlo mean)
    by ``rv_pia_rows``; "none" (U,) with NaN for users without items, "mean" / "sum" 0-d
    (``rv_reduce``). One host read (the value checks)."""
    x = _X(X)
    K.native(mu=mu, logvar=logvar, E=E, z=z)
    sh, _ = V.pia_args(K.meta(mu), K.meta(logvar), x.meta, K.meta(E), reduction,
                       K.meta(z) if z is not None else None, x_values=x.values, flags=_flags)
    _, rows, red = _pia(x, K.device(mu), K.device(logvar), K.device(E), sh.dtype, sh.U, sh.d,
                        _dev(z))
    if reduction == "none":
        return K.wrap(rows, mu)
    return _view0(red, 2 if reduction == "mean" else 0, mu)


def pia_anchor_grad(mu, logvar, X, E):
    """``(dmu, dlogvar, dE)`` of the "mean" anchor loss: ``rv_pia_grad_rows``, the product
    ``X^T [mu / n, 1 / n]`` and ``rv_pia_de``. One host read (the value checks)."""
    x = _X(X)
    K.native(mu=mu, logvar=logvar, E=E)
    sh, _ = V.pia_args(K.meta(mu), K.meta(logvar), x.meta, K.meta(E), "mean", None,
                       x_values=x.values, flags=_flags)
    mu_d, lv_d, E_d = K.device(mu), K.device(logvar), K.device(E)
    ax, _, red = _pia(x, mu_d, lv_d, E_d, sh.dtype, sh.U, sh.d)
    dmu, dlv, dE = _pia_grads(x, mu_d, lv_d, E_d, ax, red, sh.dtype, sh.U, sh.d, 1.0)
    return K.wrap(dmu, mu), K.wrap(dlv, mu), K.wrap(dE, mu)


def gaussian_w2(mu1, s1, mu2, s2):
    """``sqrt(||mu1 - mu2||^2 + ||s1 - s2||^2)`` per row (``rv_w2``). One host read."""
    K.native(mu1=mu1, s1=s1, mu2=mu2, s2=s2)
    U, _ = V.gaussian_w2_args(*(K.meta(a) for a in (mu1, s1, mu2, s2)), flags=_flags)
    dt = V.dtype_name(K.meta(mu1))
    out = K.empty((U,), dt)
    K.launch_per_item("rv_w2", dt, U, *(K.device(a) for a in (mu1, s1, mu2, s2)), out)
    return K.wrap(out, mu1)


# --------------------------------------------------------------------------- metrics


def _to_T(a, dt: str, name: str):
    """A 2-D device array as dtype ``dt`` (itself when it already is; else ``rv_cast_*``)."""
    src = V.dtype_name(a)
    if src == dt:
        return a
    out = K.empty(tuple(int(s) for s in a.shape), dt)
    if src in ("float32", "float64"):
        kname = "rv_cast_f"
    elif src in _CASTS:
        kname = _CASTS[src]
    else:
        raise TypeError(f"{name} has dtype {src}, which the numba_cuda backend cannot read; "
                        f"pass bool, an integer dtype, float32 or float64")
    K.launch_grid_stride(kname, dt, int(np.prod(out.shape)), a, out)
    return out


def _interactions_T(X, dt: str, name: str, U: int, I: int):
    """X_fold / X_heldout as a dense (U, I) device array of the scores' dtype."""
    if V.rv_is_csr(X) and not hasattr(X, "__cuda_array_interface__") and not \
            getattr(X, "__cuda_ndarray__", False):
        data = K.device(X.data)
        nnz = int(data.shape[0])
        if V.dtype_name(data) != dt:
            data = _to_T(data.reshape((1, nnz)) if nnz else K.empty((1, 0), V.dtype_name(data)),
                         dt, name)[0]
        out = K.zeros((U, I), dt)
        K.launch_per_item("rv_densify", dt, U, data, _idx32(X.indices, f"{name}.indices"),
                 _idx32(X.indptr, f"{name}.indptr"), out)
        return out
    return _to_T(K.device(X), dt, name)


def _meta_interactions(X, name: str):
    if V.rv_is_csr(X) and not hasattr(X, "__cuda_array_interface__") and not \
            getattr(X, "__cuda_ndarray__", False):
        K.native(**{f"{name}.data": X.data, f"{name}.indices": X.indices,
                    f"{name}.indptr": X.indptr})
        return X
    K.native(**{name: X})
    return K.meta(X)


def _tables(k: int, I: int):
    """The reference's float64 tables: ``tp[r] = 1 / log2(r + 2)`` and ``idcg[j] = tp[:j].sum()``
    (uploaded, O(k))."""
    m = min(k, I)
    tp = 1.0 / np.log2(np.arange(2, m + 2))
    idcg = np.array([tp[:j].sum() for j in range(m + 1)])
    return K.upload(tp), K.upload(idcg)


def _metric(scores, X_fold, X_heldout, k, mode: int):
    K.native(scores=scores)
    fm = _meta_interactions(X_fold, "X_fold")
    hm = _meta_interactions(X_heldout, "X_heldout")
    st = {}

    def stats(s, f, h):
        kk = int(k)
        if kk > K.RV_KMAX:
            raise ValueError(f"the numba_cuda backend supports k <= {K.RV_KMAX} (per-row top-k "
                             f"selection in shared memory), got k = {kk}; use the torch/cupy "
                             f"backend or the reference")
        sc = K.device(scores)
        dt = V.dtype_name(sc)
        U, I = (int(v) for v in sc.shape)
        fold = _interactions_T(X_fold, dt, "X_fold", U, I)
        held = _interactions_T(X_heldout, dt, "X_heldout", U, I)
        out = K.zeros((4,), dt)
        K.launch_grid_stride("rv_metric_stats", dt, U * I, sc, fold, held, out)
        hh = out.copy_to_host()                         # THE one read
        st.update(sc=sc, fold=fold, held=held, dt=dt)
        return bool(hh[0] == 0), bool(hh[1] == 0), bool(hh[2] == 0), int(hh[3])

    U, I, k = V.rv_metric_args(K.meta(scores), fm, hm, k, stats=stats)
    dt = st["dt"]
    tp, idcg = _tables(k, I)
    out = K.empty((U,), dt)
    K.launch("rv_topk", dt, (U,), (_row_threads(I),), 0, st["sc"], st["fold"], st["held"], tp,
             idcg, out, k, mode)
    return K.wrap(out, scores)


def recall_at_k(scores, X_fold, X_heldout, k):
    """Recall@k per user, ``|top-k ∩ T| / min(k, |T|)``, NaN where |T| = 0 (``rv_topk``;
    k <= 128 on this backend). One host read (the value checks)."""
    return _metric(scores, X_fold, X_heldout, k, 0)


def ndcg_at_k(scores, X_fold, X_heldout, k):
    """NDCG@k per user (binary relevance, log2 discount), NaN where |T| = 0 (``rv_topk``;
    k <= 128 on this backend). One host read (the value checks)."""
    return _metric(scores, X_fold, X_heldout, k, 1)
