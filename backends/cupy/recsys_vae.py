r"""Mult-VAE (arXiv 1802.05814) and the PIA anchor regulariser (arXiv 2511.06781) on CuPy arrays.

Same functions, signatures, defaults and validation messages as :mod:`refimpl._multvae` and
:mod:`refimpl._recsys_eval` (specs/recsys_vae.md). Inputs are ``cupy.ndarray`` (float32 or
float64; other array kinds are refused with a ``TypeError``); ``X`` may also be a
``cupyx.scipy.sparse.csr_matrix`` (any CSR object with ``format == "csr"``, ``indptr``,
``indices``, ``data`` and ``shape``). Results are CuPy arrays of the input dtype; ``loss``,
``nll``, ``kl`` are 0-d CuPy arrays; the metrics are float arrays of the scores' dtype with NaN
where ``|T| = 0``; :func:`anneal_beta` is the reference's host function (a Python float).

Math as implemented (spec secs. 1-4, 6):

- forward: ``xn = X / max(||X||_row, 1e-12)`` (zero rows stay 0), dropout mode
  ``h0 = xn * mask / keep_prob`` (official code), bernoulli mode ``x_h = X * mask``,
  ``h0 = x_h / max(||x_h||_row, 1e-12)`` (PIA, reconstructed); ``mask=None``: ``h0 = xn``;
  ``h1 = tanh(h0 W1 + b1)``, ``[mu, logvar] = h1 W2 + b2``, ``z = mu + eps exp(logvar / 2)``
  (``eps=None``: ``z = mu``), ``logits = tanh(z W3 + b3) W4 + b4``. The GEMMs are CuPy matmuls
  (cuBLAS); with a CSR ``X`` the input ``h0`` stays CSR (stored values scaled on the device) and
  the first layer is a sparse-dense product (cuSPARSE), as is ``dW1 = h0^T da1``.
- loss: ``nll = mean_u [n_u lse_u - sum_i X_ui logits_ui]`` (= ``-sum_i X_ui
  log_softmax(logits)_ui``), ``kl = mean_u 0.5 sum_k (-logvar + exp(logvar) + mu^2 - 1)``,
  ``loss = nll + beta kl``. The row kernel ``rv_nll_rows`` (``_kernels.py``, module
  ``recsys_vae``; one block per user row) does ONE sweep of the logits for the online max /
  sum-exp, the X-weighted sum and ``n_u`` (CSR: the row's stored entries), and, for the
  gradient, one more sweep writing ``dlogits = (softmax * n_u - X) / U``.
- ``multvae_value_and_grad``: the explicit backward of spec sec. 2: ``dW4 = h3^T dlogits``,
  ``da3 = (dlogits W4^T)(1 - h3^2)``, ``dW3 = z^T da3``, ``dz = da3 W3^T``,
  ``dmu = dz + beta mu / U + lam_A dLA/dmu``, ``dlogvar = dz eps sigma / 2 + beta
  (exp(logvar) - 1) / (2U) + lam_A dLA/dlogvar``, ``dW2 = h1^T [dmu, dlogvar]``,
  ``da1 = ([dmu, dlogvar] W2^T)(1 - h1^2)``, ``dW1 = h0^T da1``; biases are column sums. With
  ``E``: ``loss += lam_A L_A`` (the "mean" reduction of :func:`pia_anchor_loss`) and
  ``grads["E"] = lam_A dL_A/dE``.
- PIA (closed form, spec sec. 4): ``ebar_u = (X_u E) / n_u``, ``L_A(u) = ||mu_u - ebar_u||^2 +
  sum_k exp(logvar_uk) + (X_u rownorm2(E)) / n_u - ||ebar_u||^2``; the "mean" over the ``nv``
  users with ``n_u > 0``; gradients of the mean: ``dmu = 2 (mu - ebar) / nv``, ``dlogvar =
  exp(logvar) / nv`` (rows with ``n_u > 0``, else 0), ``dE = (2 / nv) (diag(sum_u X_uk / n_u) E -
  (X / n)^T mu)``. Monte Carlo path (``z`` given): ``mean_s [||z_su||^2 - 2 z_su . ebar_u +
  (X_u rownorm2(E)) / n_u]``.
- metrics (spec sec. 6): fold-in items set to ``-inf`` on the device (CSR: a scatter at the
  stored entries), ranking by a stable ``cupy.argsort`` of ``-scores`` along each row (ties by
  the lower item index, as the reference), the first ``min(k, I)`` kept and entries at ``-inf``
  dropped (a shorter list); ``Recall = hits / min(k, |T|)``; NDCG's gains
  ``1 / log2(r + 2)`` and the ideal DCG table are computed on the HOST with NumPy exactly as
  the reference does and uploaded (k + 1 numbers, host-to-device), and the kernel
  ``rv_ndcg_rows`` sums each row's gains with NumPy's pairwise-summation order, so float64
  results are bit-identical to the reference. Metric values are computed in float64 and cast
  once to the scores' dtype. Deviation from the contract's "argpartition + sort of k": CuPy's
  ``argpartition`` (14.x) is documented to sort the whole row (it is ``argsort``), and its
  order among equal scores is not the reference's; one stable ``argsort`` is then both exact and
  no slower. A CSR ``X_heldout`` is expanded on the device into a (U, I) bool array (one scatter).

Host reads (device-to-host copies; nothing else synchronises):

- every function with value checks does ONE read of the stacked validation flags (binary X or
  stored CSR values all 1, finiteness, ``X`` not empty for PIA, ``s >= 0`` for W2): the
  ``flags`` hook of the reference validators, computed on the device;
- ``beta`` / ``lam_A`` given as 0-d arrays are read once each (host hyperparameters);
- the metrics do one read (their validation flags).
"""

from __future__ import annotations

import numpy as np

import cupy

from backends.cupy import _kernels
from backends.cupy import native as _native
from refimpl import _multvae as _ref_mv
from refimpl import _validate as V

__all__ = [
    "multvae_forward", "multvae_loss", "multvae_value_and_grad", "anneal_beta",
    "item_centroids", "pia_anchor_loss", "pia_anchor_grad", "gaussian_w2",
    "recall_at_k", "ndcg_at_k",
]

ROW_THREADS = 256        # threads per row block of rv_nll_rows (a multiple of 32, <= 1024)
ROW_GRID_CAP = 65535     # at most this many row blocks (blocks then grid-stride over rows)
NDCG_THREADS = 128       # threads per block of rv_ndcg_rows (one row per thread)
NDCG_GRID_CAP = 4096
L2_EPS = 1e-12           # tf.nn.l2_normalize's epsilon (on the squared norm)


def _launch(template, grid, block, args, dtype, shared_mem=0):
    _kernels.launch(_kernels.kernel_name(template, dtype), grid, block, args, shared_mem)


# --------------------------------------------------------------------------- helpers


def _is_csr(X) -> bool:
    return (getattr(X, "format", None) == "csr" and hasattr(X, "indptr")
            and hasattr(X, "indices") and hasattr(X, "data"))


def _x_values(X):
    return X.data if _is_csr(X) else None


def _check_native(X=None, **arrays):
    """Mixed kinds are refused: dense arrays must be cupy.ndarray, a CSR X must hold them."""
    if X is not None:
        if _is_csr(X):
            _native(**{"X.data": X.data})
        elif hasattr(X, "shape") and hasattr(X, "dtype"):
            _native(X=X)
    _native(**{k: v for k, v in arrays.items() if v is not None})


def _flags(checks) -> tuple[bool, ...]:
    """The validators' ``flags`` hook: every flag on the device, ONE host read for all."""
    vals = []
    for kind, x in checks:
        if kind == "binary":
            v = ((x == 0) | (x == 1)).all()
        elif kind == "ones":
            v = (x == 1).all()
        elif kind == "finite":
            v = cupy.isfinite(x).all()
        elif kind == "nonneg":
            v = (x >= 0).all()
        elif kind == "nonzero":
            v = (x != 0).any()
        else:
            raise ValueError(f"unknown flag kind {kind!r}; expected one of {V.RV_FLAG_KINDS}")
        vals.append(cupy.asarray(v).reshape(1))
    return tuple(bool(b) for b in np.asarray(cupy.asnumpy(cupy.concatenate(vals))))


def _to_numpy(v):
    return cupy.asnumpy(v) if hasattr(v, "shape") and hasattr(v, "dtype") else np.asarray(v)


def _scalar_native(**kw):
    _native(**{k: v for k, v in kw.items() if hasattr(v, "shape") and hasattr(v, "dtype")})


def _csr_rows(X):
    """Row id of every stored entry of a CSR matrix (on the device, no host read)."""
    nnz = int(X.indices.shape[0])
    return cupy.searchsorted(X.indptr, cupy.arange(nnz, dtype=X.indptr.dtype),
                             side="right") - 1


def _csr_like(X, data):
    """A CSR matrix of X's kind and pattern holding ``data``."""
    return type(X)((data, X.indices, X.indptr), shape=X.shape)


def _row_sums_csr(X, values, dtype):
    rows = _csr_rows(X)
    return cupy.bincount(rows, weights=values, minlength=int(X.shape[0])).astype(dtype, copy=False)


def _input(X, mask, keep_prob, mask_mode, dt):
    """``h0`` of spec secs. 1 and 3 (CSR in, CSR out)."""
    T = dt.type
    if _is_csr(X):
        data = X.data
        rows = _csr_rows(X)
        if mask is not None:
            mk = mask[rows, X.indices]
            if mask_mode == "bernoulli":
                data = data * mk
        ss = cupy.bincount(rows, weights=data * data, minlength=int(X.shape[0])).astype(dt)
        scale = T(1) / cupy.sqrt(cupy.maximum(ss, T(L2_EPS)))
        data = data * scale[rows]
        if mask is not None and mask_mode == "dropout":
            data = data * mk / T(keep_prob)
        return _csr_like(X, data.astype(dt, copy=False))
    x = X
    if mask is not None and mask_mode == "bernoulli":
        x = X * mask
    ss = (x * x).sum(axis=1, keepdims=True)
    h0 = x / cupy.sqrt(cupy.maximum(ss, T(L2_EPS)))
    if mask is not None and mask_mode == "dropout":
        h0 = h0 * mask / T(keep_prob)
    return h0


class _Fwd:
    """The forward pass with the activations the backward needs."""

    def __init__(self, X, params, mask, eps, keep_prob, mask_mode, d, dt):
        p = params
        self.h0 = _input(X, mask, keep_prob, mask_mode, dt)
        self.h1 = cupy.tanh(self.h0 @ p["W1"] + p["b1"])
        o2 = self.h1 @ p["W2"] + p["b2"]
        self.mu, self.logvar = o2[:, :d], o2[:, d:]
        if eps is None:
            self.sigma, self.z = None, self.mu
        else:
            self.sigma = cupy.exp(self.logvar / dt.type(2))
            self.z = self.mu + eps * self.sigma
        self.h3 = cupy.tanh(self.z @ p["W3"] + p["b3"])
        self.logits = self.h3 @ p["W4"] + p["b4"]


def _nll_rows(X, logits, need_grad):
    """``rv_nll_rows``: (rowout (U, 2) [nll_u, n_u], dlogits or None)."""
    Z = cupy.ascontiguousarray(logits)
    dt = Z.dtype
    U, I = (int(s) for s in Z.shape)
    rowout = cupy.empty((U, 2), dtype=dt)
    dZ = cupy.empty((U, I) if need_grad else (1,), dtype=dt)
    if _is_csr(X):
        csr = 1
        indptr = cupy.ascontiguousarray(X.indptr.astype(np.int32, copy=False))
        indices = cupy.ascontiguousarray(X.indices.astype(np.int32, copy=False))
        data = cupy.ascontiguousarray(X.data.astype(dt, copy=False))
        Xd = Z
    else:
        csr = 0
        Xd = cupy.ascontiguousarray(X.astype(dt, copy=False))
        indptr = indices = cupy.zeros(1, dtype=np.int32)
        data = Z
    threads = max(32, min(ROW_THREADS, 32 * -(-I // 32)))
    _launch("rv_nll_rows", (max(1, min(U, ROW_GRID_CAP)),), (threads,),
            (Z, Xd, indptr, indices, data, np.int32(csr), np.int64(U), np.int32(I),
             dt.type(1.0 / U), np.int32(need_grad), rowout, dZ), dt)
    return rowout, (dZ if need_grad else None)


def _kl_rows(mu, logvar):
    T = mu.dtype.type
    return T(0.5) * (-logvar + cupy.exp(logvar) + mu * mu - T(1)).sum(axis=1)


def _zero_d(x, dt):
    return cupy.asarray(x).astype(dt, copy=False).reshape(())


# --------------------------------------------------------------------------- Mult-VAE


def multvae_forward(X, params, mask=None, eps=None, keep_prob=0.5, mask_mode="dropout"):
    """``(logits (U, I), mu (U, d), logvar (U, d))`` (spec sec. 1): CuPy GEMMs (cuBLAS), the
    first layer sparse-dense when ``X`` is CSR. One host read (the validation flags)."""
    _check_native(X, mask=mask, eps=eps, **{f"params['{k}']": v for k, v in
                                             (params.items() if isinstance(params, dict) else ())})
    shape = V.multvae_forward_args(X, params, mask, eps, keep_prob, mask_mode,
                                   x_values=_x_values(X), flags=_flags)
    dt = np.dtype(shape.dtype)
    f = _Fwd(X, params, mask, eps, float(keep_prob), mask_mode, shape.d, dt)
    return f.logits, cupy.ascontiguousarray(f.mu), cupy.ascontiguousarray(f.logvar)


def multvae_loss(X, logits, mu, logvar, beta):
    """``(loss, nll, kl)`` as 0-d arrays: nll from the fused row kernel (one sweep of the
    logits), kl a CuPy reduction. One host read (flags); ``beta`` as a 0-d array: one more."""
    _check_native(X, logits=logits, mu=mu, logvar=logvar)
    _scalar_native(beta=beta)
    shape, beta = V.multvae_loss_args(X, logits, mu, logvar, beta, x_values=_x_values(X),
                                      flags=_flags, to_numpy=_to_numpy)
    dt = np.dtype(shape.dtype)
    rowout, _ = _nll_rows(X, logits, 0)
    nll = rowout[:, 0].mean()
    kl = _kl_rows(mu, logvar).mean()
    loss = nll + dt.type(beta) * kl
    return _zero_d(loss, dt), _zero_d(nll, dt), _zero_d(kl, dt)


def _pia_parts(mu, X, E, dt):
    """``(n (U,), valid (U,) bool, ebar (U, d), spread_base (U,) = X rownorm2(E) / n)``."""
    T = dt.type
    if _is_csr(X):
        n = _row_sums_csr(X, X.data, dt)
    else:
        n = X.sum(axis=1)
    valid = n > 0
    inv = cupy.where(valid, T(1) / cupy.where(valid, n, T(1)), T(0))
    XE = X @ E
    ebar = XE * inv[:, None]
    rn2 = (E * E).sum(axis=1)
    base = (X @ rn2) * inv
    return n, valid, inv, ebar, base


def _pia_loss_rows(mu, logvar, X, E, dt):
    n, valid, inv, ebar, base = _pia_parts(mu, X, E, dt)
    diff = mu - ebar
    per = (diff * diff).sum(axis=1) + cupy.exp(logvar).sum(axis=1) + base - (ebar * ebar).sum(axis=1)
    return per, valid, inv, ebar


def _reduce(per, valid, reduction, dt):
    T = dt.type
    if reduction == "none":
        return cupy.where(valid, per, T(np.nan))
    s = cupy.where(valid, per, T(0)).sum()
    if reduction == "sum":
        return _zero_d(s, dt)
    return _zero_d(s / valid.sum().astype(dt), dt)


def _pia_grads(mu, logvar, X, E, dt):
    """Gradients of the "mean" reduction: ``(LA (0-d), dmu, dlogvar, dE)``."""
    T = dt.type
    per, valid, inv, ebar = _pia_loss_rows(mu, logvar, X, E, dt)
    nv = valid.sum().astype(dt)
    LA = cupy.where(valid, per, T(0)).sum() / nv
    vm = valid.astype(dt)[:, None]
    dmu = T(2) * (mu - ebar) * vm / nv
    dlogvar = cupy.exp(logvar) * vm / nv
    if _is_csr(X):
        Wn = _csr_like(X, (X.data * inv[_csr_rows(X)]).astype(dt, copy=False))
        colw = Wn.T @ cupy.ones(int(X.shape[0]), dtype=dt)
        WTmu = Wn.T @ mu
    else:
        Wn = X * inv[:, None]
        colw = Wn.sum(axis=0)
        WTmu = Wn.T @ mu
    dE = T(2) * (colw[:, None] * E - WTmu) / nv
    return LA, dmu, dlogvar, dE


def multvae_value_and_grad(X, params, beta, mask, eps, keep_prob=0.5, mask_mode="dropout",
                           E=None, lam_A=0.0):
    """``(loss (0-d), grads)``, grads ``W1 b1 W2 b2 W3 b3 W4 b4`` (+ ``E``): the forward, the
    fused nll/dlogits row kernel and the explicit backward of spec sec. 2 (cuBLAS GEMMs;
    ``dW1 = h0^T da1`` sparse-dense for CSR X). One host read (flags); ``beta`` / ``lam_A`` as
    0-d arrays: one read each."""
    _check_native(X, mask=mask, eps=eps, E=E, **{f"params['{k}']": v for k, v in
                                                  (params.items() if isinstance(params, dict)
                                                   else ())})
    _scalar_native(beta=beta, lam_A=lam_A)
    shape, beta, lam_A = V.multvae_value_and_grad_args(
        X, params, beta, mask, eps, keep_prob, mask_mode, E, lam_A, x_values=_x_values(X),
        flags=_flags, to_numpy=_to_numpy)
    dt = np.dtype(shape.dtype)
    T = dt.type
    U, d = shape.U, shape.d
    p = params
    f = _Fwd(X, p, mask, eps, float(keep_prob), mask_mode, d, dt)
    rowout, dl = _nll_rows(X, f.logits, 1)
    mu, logvar = f.mu, f.logvar
    nll = rowout[:, 0].mean()
    kl = _kl_rows(mu, logvar).mean()
    loss = nll + T(beta) * kl
    g = {}
    g["W4"] = f.h3.T @ dl
    g["b4"] = dl.sum(axis=0)
    da3 = (dl @ p["W4"].T) * (T(1) - f.h3 * f.h3)
    g["W3"] = f.z.T @ da3
    g["b3"] = da3.sum(axis=0)
    dz = da3 @ p["W3"].T
    dmu = dz + T(beta) * mu / T(U)
    dlogvar = T(beta) * (cupy.exp(logvar) - T(1)) / T(2 * U)
    if eps is not None:
        dlogvar = dlogvar + dz * eps * f.sigma / T(2)
    if E is not None:
        LA, pmu, plv, pE = _pia_grads(mu, logvar, X, E, dt)
        loss = loss + T(lam_A) * LA
        dmu = dmu + T(lam_A) * pmu
        dlogvar = dlogvar + T(lam_A) * plv
    do2 = cupy.concatenate([dmu, dlogvar], axis=1)
    g["W2"] = f.h1.T @ do2
    g["b2"] = do2.sum(axis=0)
    da1 = (do2 @ p["W2"].T) * (T(1) - f.h1 * f.h1)
    h0T = f.h0.T
    g["W1"] = cupy.ascontiguousarray(h0T @ da1)
    g["b1"] = da1.sum(axis=0)
    grads = {k: g[k] for k in V.RV_PARAM_KEYS}
    if E is not None:
        grads["E"] = T(lam_A) * pE
    return _zero_d(loss, dt), grads


def anneal_beta(step, cap=0.2, total_anneal_steps=200_000):
    """``min(cap, step / total_anneal_steps)``: the reference's host function (a Python float;
    the schedule is a host hyperparameter of the training loop)."""
    return _ref_mv.anneal_beta(step, cap=cap, total_anneal_steps=total_anneal_steps)


def item_centroids(X, E):
    """``(X @ E) / n_u`` (U, d), rows with ``n_u = 0`` are 0 (sparse-dense for CSR X). One host
    read (flags)."""
    _check_native(X, E=E)
    shape = V.item_centroids_args(X, E, x_values=_x_values(X), flags=_flags)
    dt = np.dtype(shape.dtype)
    return _pia_parts(None, X, E, dt)[3]


def pia_anchor_loss(mu, logvar, X, E, reduction="mean", z=None):
    """PIA's anchor loss: the closed form per user, or (``z`` (S, U, d) given) the Monte Carlo
    mean ``mean_s mean_{i in S_u} ||z_su - e_i||^2``; reduction "mean" (users with items),
    "none" ((U,), NaN where ``n_u = 0``) or "sum". One host read (flags)."""
    _check_native(X, mu=mu, logvar=logvar, E=E, z=z)
    shape, S = V.pia_args(mu, logvar, X, E, reduction, z, x_values=_x_values(X), flags=_flags)
    dt = np.dtype(shape.dtype)
    if z is None:
        per, valid, _, _ = _pia_loss_rows(mu, logvar, X, E, dt)
    else:
        n, valid, inv, ebar, base = _pia_parts(mu, X, E, dt)
        zz = (z * z).sum(axis=2)
        zb = (z * ebar[None]).sum(axis=2)
        per = (zz - dt.type(2) * zb).mean(axis=0) + base
    return _reduce(per, valid, reduction, dt)


def pia_anchor_grad(mu, logvar, X, E):
    """``(dmu, dlogvar, dE)`` of the "mean" reduction (spec sec. 4): ``2 (mu - ebar) / nv``,
    ``exp(logvar) / nv`` on users with items, ``(2 / nv) sum_u (X_uk / n_u)(e_k - mu_u)``.
    One host read (flags)."""
    _check_native(X, mu=mu, logvar=logvar, E=E)
    shape, _ = V.pia_args(mu, logvar, X, E, "mean", None, x_values=_x_values(X), flags=_flags)
    dt = np.dtype(shape.dtype)
    _, dmu, dlogvar, dE = _pia_grads(mu, logvar, X, E, dt)
    return dmu, dlogvar, dE


def gaussian_w2(mu1, s1, mu2, s2):
    """``sqrt(||mu1 - mu2||^2 + ||s1 - s2||^2)`` per row (U,). One host read (flags)."""
    _native(mu1=mu1, s1=s1, mu2=mu2, s2=s2)
    V.gaussian_w2_args(mu1, s1, mu2, s2, flags=_flags)
    a, b = mu1 - mu2, s1 - s2
    return cupy.sqrt((a * a).sum(axis=1) + (b * b).sum(axis=1))


# --------------------------------------------------------------------------- metrics


def _bool_dense(X, U, I):
    """A 0/1 interaction matrix as a (U, I) bool device array (CSR: one scatter of the stored
    entries; explicit zeros stay False)."""
    if V.rv_is_csr(X):
        out = cupy.zeros((U, I), dtype=bool)
        if int(X.indices.shape[0]):
            out[_csr_rows(X), X.indices] = X.data != 0
        return out
    return X != 0


class _Metric:
    """Validation (ONE host read of the stacked flags) and the device ranking shared by the two
    metrics: ``hits`` (U, m) float64 in rank order, ``n_t`` (U,) int64, m = min(k, I)."""

    def __init__(self, scores, X_fold, X_heldout, k):
        _native(scores=scores)
        for name, X in (("X_fold", X_fold), ("X_heldout", X_heldout)):
            if V.rv_is_csr(X) and hasattr(X, "data"):
                _native(**{f"{name}.data": X.data})
            elif hasattr(X, "shape") and hasattr(X, "dtype"):
                _native(**{name: X})
        self.k = V.rv_metric_args(scores, X_fold, X_heldout, k, stats=self._stats)[2]
        U, I = self.UI
        m = min(self.k, I)
        s = cupy.where(self.fold, -cupy.inf, scores.astype(np.float64))
        order = cupy.argsort(-s, axis=1, kind="stable")[:, :m]   # ties by the lower index
        ranked = cupy.take_along_axis(s, order, axis=1)
        hits = cupy.take_along_axis(self.held, order, axis=1) & cupy.isfinite(ranked)
        self.m = m
        self.hits = hits.astype(np.float64)
        self.n_t = self.held.sum(axis=1)

    def _stats(self, scores, X_fold, X_heldout):
        U, I = (int(v) for v in scores.shape)
        self.UI = (U, I)
        self.fold = _bool_dense(X_fold, U, I)
        self.held = _bool_dense(X_heldout, U, I)
        vals = [~(cupy.isnan(scores).any() | (scores == cupy.inf).any())]
        for X in (X_fold, X_heldout):
            v = X.data if V.rv_is_csr(X) else X
            vals.append(((v == 0) | (v == 1)).all())
        vals.append((self.fold & self.held).sum())
        st = cupy.stack([cupy.asarray(v).astype(np.int64).reshape(()) for v in vals])
        ok, fb, hb, overlap = (int(v) for v in np.asarray(cupy.asnumpy(st)))  # the one host read
        return bool(ok), bool(fb), bool(hb), overlap


def recall_at_k(scores, X_fold, X_heldout, k):
    """Recall@k (U,): ``hits / min(k, |T|)``, NaN where ``|T| = 0``; float64 arithmetic, cast
    to the scores' dtype. One host read (validation flags)."""
    mt = _Metric(scores, X_fold, X_heldout, k)
    n_t = mt.n_t
    den = cupy.minimum(mt.k, n_t).astype(np.float64)
    val = mt.hits.sum(axis=1) / cupy.where(n_t > 0, den, 1.0)
    out = cupy.where(n_t > 0, val, np.nan)
    return out.astype(scores.dtype)


def ndcg_at_k(scores, X_fold, X_heldout, k):
    """NDCG@k (U,), NaN where ``|T| = 0``: gains and the ideal-DCG table from the host (NumPy,
    the reference's expressions; uploaded), each row's DCG by ``rv_ndcg_rows`` in NumPy's
    pairwise-summation order, divided in float64 and cast to the scores' dtype."""
    mt = _Metric(scores, X_fold, X_heldout, k)
    m = mt.m
    tp = 1.0 / np.log2(np.arange(2, m + 2))                  # the reference's discounts
    idcg = np.array([tp[:j].sum() for j in range(m + 1)])    # the reference's ideal DCG table
    G = cupy.ascontiguousarray(mt.hits * cupy.asarray(tp)[None, :])
    den = cupy.ascontiguousarray(cupy.asarray(idcg)[cupy.minimum(mt.n_t, m)])
    U = int(G.shape[0])
    out = cupy.empty(U, dtype=scores.dtype)
    blocks = max(1, min(-(-U // NDCG_THREADS), NDCG_GRID_CAP))
    _launch("rv_ndcg_rows", (blocks,), (NDCG_THREADS,),
            (G, np.int64(U), np.int64(m), den, out), scores.dtype)
    return out
