r"""CRPL (cluster-preserving prompt learning for UDA, arXiv 2506.11493) with Numba-CUDA kernels.

Same functions, signatures and results as :mod:`refimpl.crpl` (the reference
:mod:`refimpl._crpl`, whose docstring states the equations); see the package docstring for array
kinds and the stream. float32 or float64, one dtype per call; results have the input dtype,
scalars (``L_W``, ``L``, the parts, the SCE value, the accuracy) are 0-d device arrays (views of
a small result array), labels int64 device arrays. Integer label inputs of any integer dtype are
widened to int64 on the device (``cd_cast_*``).

Kernels (``crpl_*`` in :mod:`._kernels`, one signature per dtype in ``_SIGNATURES``); every
matrix product is ``pref_gemm`` (:func:`backends.numba_cuda.preference._gemm`):

- :func:`crpl_reference_probs`: ``crpl_stack`` copies ``[T_base; T_S; T_Si[0]; ...]`` into one
  ((2 + S) K, D) operand and the centroids into one (S K, D) operand; ONE GEMM gives every
  cosine ``z [T_base; T_S; T_Si]^T`` (B, (2 + S) K), one more ``u C^T`` (B, S K);
  ``crpl_sqnorm`` gives ``||u_b||^2`` and ``||c_ik||^2``; the row kernel ``crpl_probs`` (one
  thread per image) forms the expanded squared distances, the softmax over sources, the
  ``n_pseudo`` switch (every count > 0, checked on the device), the averaged logits and the
  softmax over classes.
- :func:`soft_cross_entropy(_grad)`: ``crpl_sce_rows`` (per row LSE, loss, gradient
  ``(softmax rowsum(p) - p) / B``) and ``crpl_mean``.
- :func:`ot_cluster_loss`: ``C = 1 - Z T^T`` by one GEMM on a ones-filled buffer
  (``alpha = -1, beta = 1``), then :func:`backends.numba_cuda.ot.emd` with uniform marginals —
  its documented **host solve** (C copied to the host, the plan, cost and duals copied back) —
  and ``dT = -P^T Z``, ``dZ = -P T`` by two GEMMs on the device. There is no second OT solver.
- :func:`crpl_target_loss`: one GEMM ``z T_T^T``; ``crpl_tgt_rows`` (argmax hard labels,
  SCE / unscaled baseline CE, hard CE, and with a gradient ``dL_T / d cos``) and
  ``crpl_tgt_finish``.
- :func:`crpl_loss(_grad)`: one GEMM of ``z_src`` against ``[T_S; T_Si]``, ``crpl_src_rows``
  (source CEs per row and their gradients, per-domain weights ``1 / (S n_i)``) and
  ``crpl_src_finish``; the target as above; the OT term as :func:`ot_cluster_loss`;
  ``crpl_total`` assembles ``L = L_src + lam_W L_W + lam_T L_T``. The explicit gradient is two
  GEMMs for the sources (``[dT_S; dT_Si] = G^T z_src``) and two for the target
  (``dT_T = lam_T G_T^T z_tgt - lam_W P^T z_tgt``, accumulated with ``beta = 1``).
- :func:`update_class_centroids`: ``crpl_centroids``, one thread per (i, k, d).
- :func:`clip_pseudo_labels` / :func:`target_accuracy`: one GEMM, ``crpl_argmax``; the accuracy
  averages ``T_list`` with ``crpl_accum`` (sum, then divide by M: NumPy's mean) and counts with
  ``crpl_acc`` (divisor ``ceil(n / bs) bs`` for "code", n for "exact").

Host reads (each documented):

1. validation, ONE read per call: the shared validators' ``stats`` hook (``# ---- crpl`` in
   :mod:`refimpl._validate`): per float array ``crpl_frows`` + ``crpl_fpack`` (non-finite count,
   min, max, max row-norm deviation), per integer array ``crpl_irange`` (min, max) and
   ``crpl_dcount`` (the smallest domain count), all written into one float64 vector read with one
   copy.
2. :func:`ot_cluster_loss` and ``crpl_loss(_grad)`` with ``use_ot``: the exact-OT host solve of
   :func:`backends.numba_cuda.ot.emd` reads the (B, K) cost matrix (explicit; the spec's
   "explicit OT transfer").

Nothing else leaves the device: the ``n_pseudo`` switch, the domain counts and the number of
labelled rows are computed by the kernels that use them.
"""

from __future__ import annotations

import numpy as np

from refimpl import _validate as V

from . import _kernels as K
from . import ot as _ot
from .preference import _gemm
from .safety_ensembles import _labels64

__all__ = [
    "update_class_centroids", "crpl_reference_probs", "soft_cross_entropy",
    "soft_cross_entropy_grad", "ot_cluster_loss", "crpl_target_loss", "crpl_loss",
    "crpl_loss_grad", "clip_pseudo_labels", "target_accuracy",
]

_VARIANT = {"code": 0, "paper": 1}


# --------------------------------------------------------------------------- helpers


def _dt(x) -> str:
    return V.dtype_name(K.meta(x))


def _stack(dt: str, parts, D: int):
    """The rows of ``parts`` ((K, D) or (S, K, D) device arrays) stacked into one C-contiguous
    (sum of rows, D) device array (``crpl_stack``, one launch per part)."""
    parts = [K.lift3(K.device(p)) for p in parts]
    rows = sum(int(p.shape[0]) * int(p.shape[1]) for p in parts)
    out = K.empty((rows, D), dt)
    r0 = 0
    for p in parts:
        K.launch_grid_stride("crpl_stack", dt, int(p.shape[0]) * int(p.shape[1]) * D, p, out,
                             r0)
        r0 += int(p.shape[0]) * int(p.shape[1])
    return out


def _rows2d(x):
    """A float array as a 2-D (rows, last axis) device view (rows over every leading axis)."""
    x = K.device(K.unmeta(x))
    if len(x.shape) == 2:
        return x
    if len(x.shape) == 3:
        return K.flatten_batch(x, 1)
    return x.reshape((1, int(x.shape[0])))


class _Stats:
    """The validators' ``stats`` hook with ONE host read (module docstring, host read 1). Integer
    arrays are widened to int64 once; the widened copies are kept for the computation."""

    def __init__(self):
        self.ints: dict[int, object] = {}

    def int64(self, y):
        y = K.unmeta(y)
        key = id(y)
        if key not in self.ints:
            self.ints[key] = _labels64(y)
        return self.ints[key]

    def __call__(self, requests):
        buf = K.empty((4 * len(requests),), "float64")
        done: dict[tuple, int] = {}
        picks = []
        for j, (kind, x, param) in enumerate(requests):
            xd = K.unmeta(x)
            base = 4 * j
            if V.dtype_name(xd) in V.CRPL_INTS:
                y = self.int64(xd)
                if kind == "mincount":
                    K.launch_per_item("crpl_dcount", "float64", 1, y, buf, base, int(param))
                    picks.append(base)
                    continue
                key = ("i", id(xd))
                if key not in done:
                    K.launch_per_item("crpl_irange", "float64", 1, y, buf, base)
                    done[key] = base
                picks.append(done[key] + (0 if kind == "min" else 1))
                continue
            key = ("f", id(xd))
            if key not in done:
                dt = V.dtype_name(xd)
                X = _rows2d(xd)
                rs = K.empty((int(X.shape[0]), 4), dt)
                K.launch_grid_stride("crpl_frows", dt, int(X.shape[0]), X, rs)
                K.launch_per_item("crpl_fpack", dt, 1, rs, buf, base)
                done[key] = base
            off = {"nonfinite": 0, "min": 1, "max": 2, "normdev": 3}[kind]
            picks.append(done[key] + off)
        host = buf.copy_to_host()                  # THE one host read of the validation
        return tuple(float(host[i]) for i in picks)


def _out(arr, i: int, like):
    """Entry ``i`` of a small result array as a 0-d array of ``like``'s kind."""
    return K.wrap(arr[i:i + 1].reshape(()), like)


def _cos(dt: str, z, T, rows: int, cols: int):
    """``z T^T`` (rows, cols), one GEMM."""
    out = K.empty((rows, cols), dt)
    _gemm(dt, z, T, out, tb=1)
    return out


def _ot_solve(dt: str, Zd, Td, B: int, Kc: int):
    """``C = 1 - Z T^T`` on the device, then the exact-OT host solve of
    :func:`backends.numba_cuda.ot.emd` (uniform marginals; it reads C: host read 2)."""
    C = K.empty((B, Kc), dt)
    K.fill(C, 1.0)
    _gemm(dt, Zd, Td, C, tb=1, alpha=-1.0, beta=1.0)
    res = _ot.emd(None, None, C)
    return K.device(res.plan), K.device(res.cost)


# --------------------------------------------------------------------------- centroids


def update_class_centroids(means, counts, feats, labels, domains):
    """``(means, counts)`` after one running-mean update (``crpl_centroids``)."""
    K.native(means=means, counts=counts, feats=feats, labels=labels, domains=domains)
    st = _Stats()
    S, Kc, D, _ = V.crpl_centroid_args(*(K.meta(x) for x in (means, counts, feats, labels,
                                                            domains)), stats=st)
    dt = _dt(means)
    out_m, out_c = K.empty((S, Kc, D), dt), K.empty((S, Kc), dt)
    K.launch_grid_stride("crpl_centroids", dt, S * Kc * D, K.device(means), K.device(counts),
                         K.device(feats), st.int64(labels), st.int64(domains), out_m, out_c)
    return K.wrap(out_m, means), K.wrap(out_c, means)


# --------------------------------------------------------------------------- reference probs


def crpl_reference_probs(z, u, T_base, T_S, T_Si=None, centroids=None, counts=None, gamma=10.0,
                         scale=100.0, variant="code"):
    """``p = softmax_k(scale l)`` (B, K): one stacked GEMM of the cosines, one GEMM of
    ``u . c``, ``crpl_sqnorm`` and the row kernel ``crpl_probs``."""
    K.native(z=z, u=u, T_base=T_base, T_S=T_S, T_Si=T_Si, centroids=centroids, counts=counts)
    B, Kc, D, S, gamma, scale, variant = V.crpl_probs_args(
        *(None if x is None else K.meta(x) for x in (z, u, T_base, T_S, T_Si, centroids,
                                                     counts)),
        gamma, scale, variant, stats=_Stats())
    dt = _dt(z)
    zd, ud = K.device(z), K.device(u)
    W = _stack(dt, [T_base, T_S] + ([T_Si] if S else []), D)
    G = _cos(dt, zd, W, B, int(W.shape[0]))
    if S:
        Cm = _stack(dt, [centroids], D)
        UC = _cos(dt, ud, Cm, B, S * Kc)
        un, cn = K.empty((B,), dt), K.empty((S * Kc,), dt)
        K.launch_grid_stride("crpl_sqnorm", dt, B, ud, un)
        K.launch_grid_stride("crpl_sqnorm", dt, S * Kc, Cm, cn)
        cnt = K.device(counts)
    else:
        UC, un, cn, cnt = K.dummy(2, dt), K.dummy(1, dt), K.dummy(1, dt), K.dummy(2, dt)
    P = K.empty((B, Kc), dt)
    K.launch_grid_stride("crpl_probs", dt, B, G, UC, un, cn, cnt, Kc, max(S, 1), int(S > 0),
                         _VARIANT[variant], K.scalar(dt, gamma), K.scalar(dt, scale), P)
    return K.wrap(P, z)


# --------------------------------------------------------------------------- soft CE


def _sce(logits, p, want_grad: bool):
    K.native(logits=logits, p=p)
    B, Kc = V.crpl_sce_args(K.meta(logits), K.meta(p), stats=_Stats())
    dt = _dt(logits)
    rows = K.empty((B,), dt)
    grad = K.empty((B, Kc), dt) if want_grad else K.dummy(2, dt)
    K.launch_grid_stride("crpl_sce_rows", dt, B, K.device(logits), K.device(p), rows, grad,
                         int(want_grad))
    if want_grad:
        return K.wrap(grad, logits)
    out = K.empty((1,), dt)
    K.launch_per_item("crpl_mean", dt, 1, rows, out, 0)
    return _out(out, 0, logits)


def soft_cross_entropy(logits, p):
    """``mean_b -sum_k p_bk log_softmax(logits)_bk`` (0-d): ``crpl_sce_rows`` + ``crpl_mean``."""
    return _sce(logits, p, False)


def soft_cross_entropy_grad(logits, p):
    """``(softmax(logits) rowsum(p) - p) / B`` (B, K): ``crpl_sce_rows``."""
    return _sce(logits, p, True)


# --------------------------------------------------------------------------- exact OT


def ot_cluster_loss(Z, T):
    """``(L_W, P, dT, dZ)``: C by one GEMM, the exact plan by the host solve of
    :func:`backends.numba_cuda.ot.emd`, ``dT = -P^T Z`` and ``dZ = -P T`` by two GEMMs."""
    K.native(Z=Z, T=T)
    B, Kc, D = V.crpl_ot_args(K.meta(Z), K.meta(T), stats=_Stats())
    dt = _dt(Z)
    Zd, Td = K.device(Z), K.device(T)
    P, cost = _ot_solve(dt, Zd, Td, B, Kc)
    dT, dZ = K.empty((Kc, D), dt), K.empty((B, D), dt)
    _gemm(dt, P, Zd, dT, ta=1, alpha=-1.0)
    _gemm(dt, P, Td, dZ, alpha=-1.0)
    return K.wrap(cost.reshape(()), Z), K.wrap(P, Z), K.wrap(dT, Z), K.wrap(dZ, Z)


# --------------------------------------------------------------------------- target loss


def _target(dt: str, st: _Stats, zd, Td, p, B: int, Kc: int, scale: float, use_ot: bool,
            baseline: bool, out, slot: int, want_grad: bool):
    """``out[slot] = L_T``; returns (hard labels, dL_T / d cos or None)."""
    cos = _cos(dt, zd, Td, B, Kc)
    rows, hard = K.empty((B, 2), dt), K.empty((B,), "int64")
    grad = K.empty((B, Kc), dt) if want_grad else K.dummy(2, dt)
    if baseline:
        lab, pf = st.int64(p), K.dummy(2, dt)
    else:
        lab, pf = K.empty((1,), "int64"), K.device(p)
    K.launch_grid_stride("crpl_tgt_rows", dt, B, cos, pf, lab, int(baseline),
                         K.scalar(dt, scale), int(use_ot), rows, hard, grad, int(want_grad))
    K.launch_per_item("crpl_tgt_finish", dt, 1, rows, lab, int(baseline), int(use_ot), out, slot)
    return hard, (grad if want_grad else None)


def crpl_target_loss(z, T_T, p, scale=100.0, use_ot=True):
    """``(L_T, hard_labels)``: one GEMM, ``crpl_tgt_rows`` and ``crpl_tgt_finish``."""
    K.native(z=z, T_T=T_T, p=p)
    st = _Stats()
    B, Kc, _, scale, use_ot, baseline = V.crpl_target_args(K.meta(z), K.meta(T_T), K.meta(p),
                                                            scale, use_ot, stats=st)
    dt = _dt(z)
    out = K.empty((1,), dt)
    hard, _ = _target(dt, st, K.device(z), K.device(T_T), p, B, Kc, scale, use_ot, baseline, out,
                      0, False)
    return _out(out, 0, z), K.wrap(hard, z)


# --------------------------------------------------------------------------- full objective


def _loss(z_src, y_src, dom_src, z_tgt, T_S, T_Si, T_T, p, scale, lam_W, lam_T, use_ot,
          want_grad: bool):
    K.native(z_src=z_src, y_src=y_src, dom_src=dom_src, z_tgt=z_tgt, T_S=T_S, T_Si=T_Si,
             T_T=T_T, p=p)
    st = _Stats()
    N, B, Kc, D, S, scale, lam_W, lam_T, use_ot, baseline = V.crpl_loss_args(
        *(None if x is None else K.meta(x) for x in (z_src, y_src, dom_src, z_tgt, T_S, T_Si,
                                                     T_T, p)),
        scale, lam_W, lam_T, use_ot, stats=st)
    dt = _dt(z_src)
    zs, zt, Tt = K.device(z_src), K.device(z_tgt), K.device(T_T)
    out = K.empty((4,), dt)                                   # (L, L_src, L_W, L_T)
    # sources: one GEMM against [T_S; T_Si]
    W = _stack(dt, [T_S] + ([T_Si] if S else []), D)
    R = int(W.shape[0])
    cs = _cos(dt, zs, W, N, R)
    y = st.int64(y_src)
    dom = st.int64(dom_src) if S else K.empty((1,), "int64")
    rows = K.empty((N, 2), dt)
    gs = K.empty((N, R), dt) if want_grad else K.dummy(2, dt)
    K.launch_grid_stride("crpl_src_rows", dt, N, cs, y, dom, Kc, max(S, 1), int(S > 0),
                         K.scalar(dt, scale), rows, gs, int(want_grad))
    K.launch_per_item("crpl_src_finish", dt, 1, rows, dom, max(S, 1), int(S > 0), out, 1)
    # target
    _, gt = _target(dt, st, zt, Tt, p, B, Kc, scale, use_ot, baseline, out, 3, want_grad)
    P = cost = None
    if use_ot:
        P, cost = _ot_solve(dt, zt, Tt, B, Kc)
    K.launch_per_item("crpl_total", dt, 1, out,
                      cost.reshape((1,)) if use_ot else K.dummy(1, dt), int(use_ot),
                      K.scalar(dt, lam_W), K.scalar(dt, lam_T))
    L = _out(out, 0, z_src)
    parts = {"L_src": _out(out, 1, z_src), "L_W": _out(out, 2, z_src),
             "L_T": _out(out, 3, z_src)}
    if not want_grad:
        return L, parts
    dW = K.empty((R, D), dt)
    _gemm(dt, gs, zs, dW, ta=1)                               # [dT_S; dT_Si] = G^T z_src
    dT_T = K.empty((Kc, D), dt)
    _gemm(dt, gt, zt, dT_T, ta=1, alpha=lam_T)
    if use_ot:
        _gemm(dt, P, zt, dT_T, ta=1, alpha=-lam_W, beta=1.0)
    grads = {"dT_S": K.wrap(dW[:Kc], z_src)}
    if S:
        grads["dT_Si"] = K.wrap(dW[Kc:].reshape((S, Kc, D)), z_src)
    grads["dT_T"] = K.wrap(dT_T, z_src)
    return L, parts, grads


def crpl_loss(z_src, y_src, dom_src, z_tgt, T_S, T_Si, T_T, p, scale=100.0, lam_W=0.5, lam_T=0.5,
              use_ot=True):
    """``(L, parts)`` as 0-d arrays (``parts = {"L_src", "L_W", "L_T"}``)."""
    return _loss(z_src, y_src, dom_src, z_tgt, T_S, T_Si, T_T, p, scale, lam_W, lam_T, use_ot,
                 False)


def crpl_loss_grad(z_src, y_src, dom_src, z_tgt, T_S, T_Si, T_T, p, scale=100.0, lam_W=0.5,
                   lam_T=0.5, use_ot=True):
    """``(L, parts, grads)``: the explicit gradient w.r.t. T_S, T_Si (when given) and T_T (the
    OT term by the envelope ``-P*^T z_tgt``)."""
    return _loss(z_src, y_src, dom_src, z_tgt, T_S, T_Si, T_T, p, scale, lam_W, lam_T, use_ot,
                 True)


# --------------------------------------------------------------------------- baseline labels


def clip_pseudo_labels(z, T_base, threshold=0.4, scale=100.0):
    """CLIP zero-shot labels (int64 (B,), -1 below the confidence threshold): one GEMM and
    ``crpl_argmax`` (mode 1)."""
    K.native(z=z, T_base=T_base)
    B, Kc, _, threshold, scale = V.crpl_pseudo_args(K.meta(z), K.meta(T_base), threshold, scale,
                                                    stats=_Stats())
    dt = _dt(z)
    cos = _cos(dt, K.device(z), K.device(T_base), B, Kc)
    lab = K.empty((B,), "int64")
    K.launch_grid_stride("crpl_argmax", dt, B, cos, K.scalar(dt, scale),
                         K.scalar(dt, threshold), 1, lab)
    return K.wrap(lab, z)


# --------------------------------------------------------------------------- evaluation


def target_accuracy(z, T_list, labels, batch_size=30, variant="code"):
    """Accuracy (0-d, z's dtype) of ``argmax_k z . tbar_k``, tbar the plain mean of T_list
    (``crpl_accum``), then one GEMM, ``crpl_argmax`` and ``crpl_acc``."""
    items = list(T_list) if isinstance(T_list, (list, tuple)) else [T_list]
    K.native(z=z, labels=labels, **{f"T_list[{j}]" if isinstance(T_list, (list, tuple))
                                    else "T_list": T for j, T in enumerate(items)})
    st = _Stats()
    metas = [K.meta(T) for T in items] if isinstance(T_list, (list, tuple)) else K.meta(T_list)
    n, Kc, D, M, batch_size, variant = V.crpl_acc_args(K.meta(z), metas, K.meta(labels),
                                                       batch_size, variant, stats=st)
    dt = _dt(z)
    if isinstance(T_list, (list, tuple)):
        mats = [K.device(T) for T in items]
    elif len(T_list.shape) == 3:
        Td = K.device(T_list)
        mats = [Td[j] for j in range(M)]
    else:
        mats = [K.device(T_list)]
    if len(mats) == 1:
        Tbar = mats[0]
    else:
        Tbar = K.empty((Kc, D), dt)
        for j, T in enumerate(mats):
            K.launch_grid_stride("crpl_accum", dt, Kc * D, T, Tbar, int(j > 0), K.scalar(dt, 1))
        K.launch_grid_stride("crpl_accum", dt, Kc * D, Tbar, Tbar, 2, K.scalar(dt, M))
    cos = _cos(dt, K.device(z), Tbar, n, Kc)
    pred = K.empty((n,), "int64")
    K.launch_grid_stride("crpl_argmax", dt, n, cos, K.scalar(dt, 1), K.scalar(dt, 0), 0, pred)
    denom = -(-n // batch_size) * batch_size if variant == "code" else n
    out = K.empty((1,), dt)
    K.launch_per_item("crpl_acc", dt, 1, pred, st.int64(labels), K.scalar(dt, denom), out)
    return _out(out, 0, z)
