r"""CRPL (Vuong et al., arXiv 2506.11493) on CuPy arrays.

Same functions, signatures, defaults and validation messages as :mod:`refimpl._crpl`
(specs/clip_uda_ot.md; the equations are in that module's docstring). Inputs are
``cupy.ndarray`` float32/float64 (labels any integer dtype); results are CuPy arrays of the input
dtype, scalars (``L``, the parts, ``L_W``, the SCE value, the accuracy) 0-d CuPy arrays, labels
int64. ``parts["L_W"]`` is a 0-d zero when ``use_ot`` is False.

As implemented:

- :func:`crpl_reference_probs`: the three cosine products as ONE cuBLAS GEMM
  ``G = z [T_base; T_S; T_Si]^T`` (B, (2 + S) K), the distance cross term ``UC = u c^T``
  (B, S K) a second GEMM, ``||u_b||^2`` and ``||c_ik||^2`` row sums, then ONE fused row kernel
  ``crpl_probs_rows`` (``_kernels.py``, module ``crpl``; one warp per row) for
  ``D = ||u||^2 + ||c||^2 - 2 u.c`` (expanded form, kept), ``w = softmax_i(-gamma D)``, the
  averaged logits ((G_base + G_S + sum_i w G_Si) / 3 once every count is > 0, else
  (G_base + G_S) / 2; "paper": 0.5 G_base + 0.5 sum_i w G_Si, else 0.5 G_base + 0.5 G_S) and
  ``p = softmax_k(scale l)``. The "every count > 0" switch is decided inside the kernel (no
  host read).
- soft / hard cross-entropies: the row kernel ``crpl_ce_rows`` (per row: log-sum-exp of the
  scaled logits, the soft or labelled CE term, the first-index argmax of the cosines and the
  hard CE term ``lse - scale max_k g``), its gradient ``crpl_ce_grad`` with per-row
  coefficients kept on the device (``1/B``, ``1/(S n_i)``, ``1/n_labelled`` ...): the SCE
  gradient is ``(softmax * rowsum(p) - p) / B`` as the reference.
- :func:`ot_cluster_loss`: ``C = 1 - Z T^T`` on the device, the exact solve through
  :func:`backends.cupy.ot.emd` (its documented HOST solve; no second OT), the plan back on the
  device, ``dT = -P^T Z``, ``dZ = -P T`` (envelope theorem).
- :func:`crpl_loss_grad`: explicit, ``dT = G^T z`` GEMMs of the kernel's logit gradients (the
  per-source terms through one (N, S K) product), plus ``lam_W (-P^T z_tgt)``.
- :func:`update_class_centroids`: per-(domain, class) sums and counts as one GEMM with the
  (S K, N) one-hot matrix of ``domain * K + label`` (no atomics, deterministic), then the
  running mean where ``n_ik > 0``.
- :func:`clip_pseudo_labels`: ``crpl_ce_rows`` gives the argmax and ``lse - scale max g``;
  the confidence is ``exp(-(lse - scale max g))`` (= max softmax). The argmax is taken on the
  cosines, the reference's on the softmax: they differ only if rounding makes two softmax
  values equal.

Host reads (device-to-host copies; nothing else synchronises): every function does ONE read,
the stacked statistics of the reference validator's ``stats`` hook (unit-norm deviations,
non-finite counts, label ranges, domain counts), computed on the device. The OT paths
(:func:`ot_cluster_loss`, :func:`crpl_loss` / :func:`crpl_loss_grad` with ``use_ot``) add the
transfers of :func:`backends.cupy.ot.emd` (its validation and the copies of ``a``, ``b``, ``C``
to the host solver; the plan and cost are uploaded back).
"""

from __future__ import annotations

import math

import numpy as np

import cupy

from backends.cupy import _kernels
from backends.cupy import native as _native
from backends.cupy import ot as _ot
from refimpl import _validate as V

__all__ = [
    "update_class_centroids", "crpl_reference_probs", "soft_cross_entropy",
    "soft_cross_entropy_grad", "ot_cluster_loss", "crpl_target_loss", "crpl_loss",
    "crpl_loss_grad", "clip_pseudo_labels", "target_accuracy",
]

WARPS = 4            # rows (warps) per block of the row kernels
GRID_CAP = 4096      # at most this many blocks (warps then grid-stride over rows)
ROW_FIELDS = 5       # rowout of crpl_ce_rows: term_a, term_h, lse_a, lse_h, rowsum(p)


def _launch(template, rows: int, args, dtype) -> None:
    blocks = max(1, min(-(-rows // WARPS), GRID_CAP))
    _kernels.launch(_kernels.kernel_name(template, dtype), (blocks,), (32 * WARPS,), args)


def _stats(requests) -> tuple[float, ...]:
    """The ``stats`` hook of the ``# ---- crpl`` validators: every statistic on the device,
    stacked, ONE host read."""
    vals = []
    f64 = np.float64
    for kind, x, param in requests:
        if kind == "normdev":
            if x.size == 0:
                v = cupy.zeros((), dtype=f64)
            else:
                xf = x.astype(f64)
                v = cupy.abs(cupy.sqrt((xf * xf).sum(axis=-1)) - 1.0).max()
        elif kind == "nonfinite":
            v = (~cupy.isfinite(x)).sum()
        elif kind == "min":
            v = x.min() if x.size else cupy.full((), math.inf, dtype=f64)
        elif kind == "max":
            v = x.max() if x.size else cupy.full((), -math.inf, dtype=f64)
        elif kind == "mincount":
            a = x.astype(np.int64).reshape(-1)
            v = (a[None, :] == cupy.arange(int(param), dtype=np.int64)[:, None]).sum(axis=1).min()
        else:
            raise ValueError(f"unknown stat kind {kind!r}; expected one of {V.CRPL_STAT_KINDS}")
        vals.append(cupy.asarray(v).astype(f64).reshape(1))
    return tuple(float(t) for t in np.asarray(cupy.asnumpy(cupy.concatenate(vals))))


def _c(x):
    return cupy.ascontiguousarray(x)


def _ce_rows(G, P=None, y=None, sa=1.0, hard=False, sh=1.0):
    """``crpl_ce_rows`` on G (R, K): (rowout (R, 5), argmax labels (R,) int64)."""
    R, K = (int(s) for s in G.shape)
    dt = G.dtype.type
    rowout = cupy.empty((R, ROW_FIELDS), dtype=G.dtype)
    lab = cupy.empty(R, dtype=np.int64)
    dummy = cupy.empty(1, dtype=G.dtype)
    ydummy = cupy.empty(1, dtype=np.int64)
    _launch("crpl_ce_rows", R, (
        G, np.int64(R), np.int32(K), P if P is not None else dummy, np.int32(P is not None),
        y if y is not None else ydummy, np.int32(y is not None), dt(sa), np.int32(bool(hard)),
        dt(sh), rowout, lab), G.dtype)
    return rowout, lab


def _ce_grad(G, rowout, lab, coef, mult, P=None, y=None, sa=1.0, hard=False, sh=1.0):
    """``crpl_ce_grad``: d(mult * sum_b coef_b . (term_a, term_h))/dG (R, K)."""
    R, K = (int(s) for s in G.shape)
    dt = G.dtype.type
    dG = cupy.empty_like(G)
    dummy = cupy.empty(1, dtype=G.dtype)
    ydummy = cupy.empty(1, dtype=np.int64)
    _launch("crpl_ce_grad", R, (
        G, np.int64(R), np.int32(K), P if P is not None else dummy, np.int32(P is not None),
        y if y is not None else ydummy, np.int32(y is not None), dt(sa), np.int32(bool(hard)),
        dt(sh), rowout, lab, _c(coef.astype(G.dtype)), dt(mult), dG), G.dtype)
    return dG


def _weighted(rowout, coef):
    """sum_b coef_b0 term_a,b + coef_b1 term_h,b (0-d, on the device)."""
    return (rowout[:, :2] * coef).sum()


# --------------------------------------------------------------------------- centroids


def update_class_centroids(means, counts, feats, labels, domains):
    r"""Running means of the pre-norm source features per (domain, class):
    ``c_ik <- (c_ik count_ik + sum_{b in (i,k)} u_b) / (count_ik + n_ik)``, ``count_ik += n_ik``
    where ``n_ik > 0`` (others unchanged). The sums and counts are one GEMM with the one-hot
    (S K, N) matrix of ``domain * K + label``. Returns new ``(means, counts)``."""
    _native(means=means, counts=counts, feats=feats, labels=labels, domains=domains)
    S, K, D, N = V.crpl_centroid_args(means, counts, feats, labels, domains, stats=_stats)
    dt = means.dtype
    idx = domains.astype(np.int64) * K + labels.astype(np.int64)
    onehot = (idx[None, :] == cupy.arange(S * K, dtype=np.int64)[:, None]).astype(dt)
    s = (onehot @ feats).reshape(S, K, D)
    n = onehot.sum(axis=1).reshape(S, K)
    new_c = counts + n
    seen = n > 0
    safe = cupy.where(seen, new_c, cupy.ones_like(new_c))
    upd = (means * counts[:, :, None] + s) / safe[:, :, None]
    new_m = cupy.where(seen[:, :, None], upd, means)
    return new_m, new_c


# --------------------------------------------------------------------------- reference probs


def crpl_reference_probs(z, u, T_base, T_S, T_Si=None, centroids=None, counts=None, gamma=10.0,
                         scale=100.0, variant="code"):
    r"""Soft pseudo-label ``p = softmax_k(scale l)`` (B, K) (spec sec. 2; "code": averaged
    cosine logits, 3 terms once every count is > 0, else 2; "paper": reconstructed
    text-embedding averaging). One GEMM for the three cosine products, one for ``u c^T``, one
    fused row kernel."""
    _native(z=z, u=u, T_base=T_base, T_S=T_S, T_Si=T_Si, centroids=centroids, counts=counts)
    B, K, D, S, gamma, scale, variant = V.crpl_probs_args(
        z, u, T_base, T_S, T_Si, centroids, counts, gamma, scale, variant, stats=_stats)
    dt = z.dtype
    parts = [T_base, T_S] + ([T_Si.reshape(S * K, D)] if S else [])
    G = _c(z @ cupy.concatenate(parts, axis=0).T)                      # (B, (2 + S) K)
    if S:
        Cm = centroids.reshape(S * K, D)
        UC = _c(u @ Cm.T)                                               # (B, S K)
        uu = _c((u * u).sum(axis=1))
        cc = _c((Cm * Cm).sum(axis=1))
        cnt = _c(counts)
    else:
        UC = uu = cc = cnt = cupy.empty(1, dtype=dt)
    if variant == "code":
        coefs = (1.0, 1.0, 1.0, 3.0, 1.0, 1.0, 2.0)
    else:
        coefs = (0.5, 0.0, 0.5, 1.0, 0.5, 0.5, 1.0)
    P = cupy.empty((B, K), dtype=dt)
    t = dt.type
    _launch("crpl_probs_rows", B, (G, UC, uu, cc, cnt, np.int64(B), np.int32(K), np.int32(S),
                                   t(gamma), t(scale), *(t(c) for c in coefs), P), dt)
    return P


# --------------------------------------------------------------------------- soft CE


def soft_cross_entropy(logits, p):
    """``mean_b -sum_k p_bk log_softmax(logits)_bk`` (0-d)."""
    _native(logits=logits, p=p)
    B, _ = V.crpl_sce_args(logits, p, stats=_stats)
    rowout, _ = _ce_rows(_c(logits), P=_c(p))
    return rowout[:, 0].sum() / B


def soft_cross_entropy_grad(logits, p):
    """``(softmax(logits) * rowsum(p) - p) / B`` (B, K) (= ``(softmax - p) / B`` for rows of p
    on the simplex)."""
    _native(logits=logits, p=p)
    B, _ = V.crpl_sce_args(logits, p, stats=_stats)
    L, P = _c(logits), _c(p)
    rowout, lab = _ce_rows(L, P=P)
    coef = cupy.zeros((B, 2), dtype=logits.dtype)
    coef[:, 0] = 1.0 / B
    return _ce_grad(L, rowout, lab, coef, 1.0, P=P)


# --------------------------------------------------------------------------- exact OT


def _ot_from_cos(cos, Z, T):
    """Exact OT on ``C = 1 - cos`` (host solve of backends.cupy.ot.emd); (L_W, P, dT, dZ)."""
    B, K = (int(s) for s in cos.shape)
    dt = cos.dtype
    C = _c(1.0 - cos)
    a = cupy.full(B, 1.0 / B, dtype=dt)
    b = cupy.full(K, 1.0 / K, dtype=dt)
    res = _ot.emd(a, b, C)
    P = res.plan
    return res.cost, P, -(P.T @ Z), -(P @ T)


def ot_cluster_loss(Z, T):
    r"""``(L_W, P, dT, dZ)``: exact balanced OT between the uniform batch Z (B, D) and the
    uniform class embeddings T (K, D) under ``C = 1 - Z T^T`` (host solve of
    :func:`backends.cupy.ot.emd`), ``dT = -P^T Z``, ``dZ = -P T`` (envelope)."""
    _native(Z=Z, T=T)
    V.crpl_ot_args(Z, T, stats=_stats)
    return _ot_from_cos(_c(Z @ T.T), Z, T)


# --------------------------------------------------------------------------- target loss


def _target(z, T_T, p, scale, use_ot, baseline, lam=None):
    """(L_T 0-d, hard labels, cos, dL_T/dcos scaled by ``lam`` or None)."""
    B = int(z.shape[0])
    dt = z.dtype
    cos = _c(z @ T_T.T)
    if baseline:
        y = _c(p.astype(np.int64))
        P, sa = None, 1.0                                   # unscaled logits (the code's quirk)
        keep = (y >= 0).astype(dt)
        nl = keep.sum()
        ca = keep / cupy.maximum(nl, 1)
    else:
        y, P, sa = None, _c(p), scale
        ca = cupy.full(B, 1.0 / B, dtype=dt)
    rowout, hard = _ce_rows(cos, P=P, y=y, sa=sa, hard=use_ot, sh=scale)
    half = 0.5 if use_ot else 1.0
    coef = cupy.stack([ca * half, cupy.full(B, half / B if use_ot else 0.0, dtype=dt)], axis=1)
    L_T = _weighted(rowout, coef)
    dcos = None
    if lam is not None:
        dcos = _ce_grad(cos, rowout, hard, coef, lam, P=P, y=y, sa=sa, hard=use_ot, sh=scale)
    return L_T, hard, cos, dcos


def crpl_target_loss(z, T_T, p, scale=100.0, use_ot=True):
    """``(L_T, hard_labels)``: SPL branch for soft ``p`` (B, K), baseline branch (unscaled CE
    over the labelled rows) for integer ``p`` (B,); with ``use_ot`` the hard CE on
    ``argmax_k z . t_T,k`` is averaged in (spec sec. 4)."""
    _native(z=z, T_T=T_T, p=p)
    _, _, _, scale, use_ot, baseline = V.crpl_target_args(z, T_T, p, scale, use_ot, stats=_stats)
    L_T, hard, _, _ = _target(z, T_T, p, scale, use_ot, baseline)
    return L_T, hard


# --------------------------------------------------------------------------- full objective


def _loss(z_src, y_src, dom_src, z_tgt, T_S, T_Si, T_T, p, scale, lam_W, lam_T, use_ot,
          need_grad):
    _native(z_src=z_src, y_src=y_src, dom_src=dom_src, z_tgt=z_tgt, T_S=T_S, T_Si=T_Si,
            T_T=T_T, p=p)
    N, B, K, D, S, scale, lam_W, lam_T, use_ot, baseline = V.crpl_loss_args(
        z_src, y_src, dom_src, z_tgt, T_S, T_Si, T_T, p, scale, lam_W, lam_T, use_ot,
        stats=_stats)
    dt = z_src.dtype
    y = _c(y_src.astype(np.int64))
    if S:
        # one GEMM for T_S and every T_Si; each row keeps its own domain's block
        Gall = z_src @ cupy.concatenate([T_S, T_Si.reshape(S * K, D)], axis=0).T
        dom = dom_src.astype(np.int64)
        Gsel = Gall[:, K:].reshape(N, S, K)[cupy.arange(N), dom]
        Gs = _c(cupy.concatenate([Gall[:, :K], Gsel], axis=0))             # (2N, K)
        ys = _c(cupy.concatenate([y, y]))
        onehot = (dom[:, None] == cupy.arange(S, dtype=np.int64)[None, :]).astype(dt)  # (N, S)
        n_dom = onehot.sum(axis=0)
        ca = cupy.concatenate([cupy.full(N, 1.0 / N, dtype=dt), 1.0 / (S * n_dom[dom])])
    else:
        Gs, ys = _c(z_src @ T_S.T), y
        ca = cupy.full(N, 1.0 / N, dtype=dt)
    rows_s, lab_s = _ce_rows(Gs, y=ys, sa=scale)
    coef_s = cupy.stack([ca, cupy.zeros_like(ca)], axis=1)
    L_src = _weighted(rows_s, coef_s)
    L_T, _, cos_t, dcos_t = _target(z_tgt, T_T, p, scale, use_ot, baseline,
                                    lam=lam_T if need_grad else None)
    if use_ot:
        L_W, P, _, _ = _ot_from_cos(cos_t, z_tgt, T_T)
    else:
        L_W, P = cupy.zeros((), dtype=dt), None
    L = L_src + lam_W * L_W + lam_T * L_T
    parts = {"L_src": L_src, "L_W": L_W, "L_T": L_T}
    if not need_grad:
        return L, parts
    dGs = _ce_grad(Gs, rows_s, lab_s, coef_s, 1.0, y=ys, sa=scale)
    grads = {"dT_S": dGs[:N].T @ z_src}
    if S:
        dsel = (onehot[:, :, None] * dGs[N:][:, None, :]).reshape(N, S * K)
        grads["dT_Si"] = (dsel.T @ z_src).reshape(S, K, D)
    if use_ot:
        dcos_t = dcos_t - lam_W * P
    grads["dT_T"] = dcos_t.T @ z_tgt
    return L, parts, grads


def crpl_loss(z_src, y_src, dom_src, z_tgt, T_S, T_Si, T_T, p, scale=100.0, lam_W=0.5, lam_T=0.5,
              use_ot=True):
    """``(L, parts)``: ``L = L_src + lam_W L_W + lam_T L_T``, ``parts = {"L_src", "L_W",
    "L_T"}`` (0-d arrays; L_W = 0 without ``use_ot``); ``T_Si=None``: source-combined."""
    return _loss(z_src, y_src, dom_src, z_tgt, T_S, T_Si, T_T, p, scale, lam_W, lam_T, use_ot,
                 False)


def crpl_loss_grad(z_src, y_src, dom_src, z_tgt, T_S, T_Si, T_T, p, scale=100.0, lam_W=0.5,
                   lam_T=0.5, use_ot=True):
    """``(L, parts, grads)``, ``grads = {"dT_S", "dT_T"}`` (+ ``"dT_Si"``): the explicit
    gradient (CE terms through the kernel's logit gradients, OT by the envelope ``-P*^T z``)."""
    return _loss(z_src, y_src, dom_src, z_tgt, T_S, T_Si, T_T, p, scale, lam_W, lam_T, use_ot,
                 True)


# --------------------------------------------------------------------------- baseline labels


def clip_pseudo_labels(z, T_base, threshold=0.4, scale=100.0):
    """``argmax_k z . t_base,k`` where ``max softmax(scale z T_base^T) > threshold``, else -1
    (int64 (B,))."""
    _native(z=z, T_base=T_base)
    _, _, _, threshold, scale = V.crpl_pseudo_args(z, T_base, threshold, scale, stats=_stats)
    rowout, lab = _ce_rows(_c(z @ T_base.T), hard=True, sh=scale)
    conf = cupy.exp(-rowout[:, 1])
    return cupy.where(conf > threshold, lab, -1).astype(np.int64)


# --------------------------------------------------------------------------- evaluation


def target_accuracy(z, T_list, labels, batch_size=30, variant="code"):
    """Accuracy (0-d, z's dtype) of ``argmax_k z . tbar_k``, ``tbar`` the plain mean of T_list;
    "code" divides by ``ceil(n / batch_size) * batch_size``, "exact" by n."""
    if isinstance(T_list, (list, tuple)):
        _native(z=z, labels=labels, **{f"T_list[{j}]": T for j, T in enumerate(T_list)})
    else:
        _native(z=z, T_list=T_list, labels=labels)
    n, _, _, _, batch_size, variant = V.crpl_acc_args(z, T_list, labels, batch_size, variant,
                                                      stats=_stats)
    if isinstance(T_list, (list, tuple)):
        Tbar = cupy.stack(list(T_list)).mean(axis=0)
    else:
        Tbar = T_list.mean(axis=0) if T_list.ndim == 3 else T_list
    correct = (cupy.argmax(z @ Tbar.T, axis=1) == labels.astype(np.int64)).sum()
    denom = -(-n // batch_size) * batch_size if variant == "code" else n
    return correct.astype(z.dtype) / z.dtype.type(denom)
