r"""CRPL — cluster-preserving prompt learning for UDA (Vuong et al., arXiv 2506.11493;
spec ``clip_uda_ot.md``) on torch tensors.

Same functions, signatures, messages and results as :mod:`refimpl.crpl` (the float64 reference
:mod:`refimpl._crpl`). Inputs are torch tensors on any device; results are tensors of the input's
dtype on its device, scalars as 0-d tensors, labels int64. What is the authors' script, what is
paper summary and what is reconstructed is documented in the reference; the equations as
implemented here:

- ``update_class_centroids``: with ``idx_n = domains_n K + labels_n``, one ``index_add_`` of
  the pre-norm features and one ``index_add_`` of ones (the counts)::

      n_ik = #{n : idx_n = (i, k)},  s_ik = sum_{idx_n = (i, k)} u_n
      c_ik <- (c_ik count_ik + s_ik) / (count_ik + n_ik)   where n_ik > 0 (else unchanged)
      count_ik <- count_ik + n_ik

- ``crpl_reference_probs`` (``variant="code"``): ONE fused product
  ``G = z @ [T_base; T_S; T_Si[0]; ...; T_Si[S-1]]^T`` (B, (2 + S) K) gives every cosine; the
  distances come from one product ``u @ centroids^T`` (B, S K) in the script's expanded form
  ``D_ibk = |u_b|^2 + |c_ik|^2 - 2 u_b.c_ik`` (kept when slightly negative)::

      w_ibk = softmax_i(-gamma D_ibk)
      l_bk  = (z_b.t_base,k + z_b.t_S,k + a sum_i w_ibk z_b.t_Si,k) / (2 + a)
      p     = softmax_k(scale l)

  with ``a = 1`` when every ``counts[i, k] > 0`` and ``a = 0`` otherwise — a 0-d device flag
  (``torch.where``), so the 2 -> 3 switch needs no host read; ``T_Si=None`` (source-combined)
  always averages the two first terms. ``variant="paper"`` (reconstructed text-embedding
  average, spec sec. 2; linear in t, so evaluated through the same cosines):
  ``l = 0.5 z.t_base + 0.5 sum_i w z.t_Si`` when every count is > 0, else
  ``0.5 z.t_base + 0.5 z.t_S`` (as the reference).
  The probabilities carry no gradient (detached, as in the script).
- ``soft_cross_entropy``: ``mean_b -sum_k p_bk log_softmax(logits)_bk``;
  ``soft_cross_entropy_grad``: ``(softmax(logits) - p) / B``.
- ``ot_cluster_loss(Z, T)``: ``C = 1 - Z T^T`` on the device, uniform marginals, the exact
  solve on the host through :func:`backends.torch.ot.emd` (the documented host solve of
  ``ot.md``: C is copied to the host, :func:`refimpl.ot.emd` solves the LP in float64, the plan
  comes back in C's dtype on C's device). ``L_W = <P*, C>``, ``dT = -P*^T Z``, ``dZ = -P* T``
  (envelope theorem, ``dL_W/dC = P*``). Inside :func:`crpl_loss` the same solve runs in the
  custom ``autograd.Function`` :class:`_OTCluster`, whose backward is that envelope gradient,
  so autograd through ``crpl_loss`` gives the reference's ``crpl_loss_grad``.
- ``crpl_target_loss``: ``x = z T_T^T``, ``hard = argmax_k x`` (first index on ties).
  Soft ``p`` (float, (B, K)): ``L_T = (SCE(scale x, p) + CE(scale x, hard)) / 2`` with OT, else
  ``SCE(scale x, p)``. Integer ``p`` (CLIP pseudo-labels, -1 = unlabelled; the baseline
  branch): ``CE(x, label)`` on UNSCALED logits averaged over the labelled rows (0 when none;
  sum / max(count, 1) on the device), and with OT ``(that + CE(scale x, hard)) / 2``
  (reconstructed, as the reference).
- ``crpl_loss``: ``L = L_src + lam_W L_W + lam_T L_T`` with
  ``L_src = CE(scale z_src T_S^T, y) + (1/S) sum_i mean_{dom_b = i} CE(scale z_src,b T_Si[i]^T,
  y_b)`` (multi-source) — the source logits of all prompts in one product
  ``z_src @ [T_S; T_Si]^T``, the per-domain means by ``index_add_`` (no boolean indexing).
- ``clip_pseudo_labels``: ``argmax_k``, and -1 where ``max softmax(scale z T_base^T) <=
  threshold``.
- ``target_accuracy``: ``T = mean(T_list)`` (plain mean), ``hits = #{argmax_k z T^T ==
  labels}``, divided by ``ceil(n / batch_size) batch_size`` ("code") or ``n`` ("exact"); a 0-d
  tensor of z's dtype.

Host reads (documented)
-----------------------
Validation uses the reference's validators (:mod:`refimpl._validate`, section ``crpl``); their
value checks (unit-norm rows, label / domain ranges, counts, finiteness) are computed on the
device and read with ONE packed device-to-host copy per call (:func:`backends.torch.read_packed`;
the unit-norm deviations are computed in float64 so that the messages print the reference's
numbers). The only other transfer is the explicit OT host solve (``ot_cluster_loss`` and
``crpl_loss`` / ``crpl_loss_grad`` with ``use_ot=True``), done by :func:`backends.torch.ot.emd`
(its own finiteness flag and the copy of the B x K cost to the host, the plan and cost copied
back). The arithmetic itself never synchronises (no ``bincount``, no boolean indexing, the
2 -> 3 term switch as a device flag), nor does any backward.
"""

from __future__ import annotations

import torch

from backends.torch import native as _native
from backends.torch import ot as _ot
from backends.torch import read_packed
from refimpl import _crpl as _ref
from refimpl import _validate as V

__all__ = list(_ref.__all__)


# --------------------------------------------------------------------------- helpers


def _ce_rows(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-row ``-log_softmax(logits)[b, labels_b]`` (labels in range)."""
    return -torch.gather(torch.log_softmax(logits, dim=-1), 1, labels.reshape(-1, 1)).squeeze(1)


def _sce(logits: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """``mean_b -sum_k p_bk log_softmax(logits)_bk`` (0-d); autograd gives the reference's
    ``(softmax(logits) rowsum(p) - p) / B``."""
    return -(p * torch.log_softmax(logits, dim=-1)).sum(dim=-1).mean()


def _stat(kind: str, x: torch.Tensor, param) -> torch.Tensor:
    """One statistic of the ``crpl`` validators' ``stats`` contract as a 0-d float64 tensor on
    x's device (no host read)."""
    x = x.detach()
    f64 = {"dtype": torch.float64, "device": x.device}
    if kind == "normdev":
        if x.numel() == 0:
            return torch.zeros((), **f64)
        return (torch.linalg.vector_norm(x.to(torch.float64), dim=-1) - 1.0).abs().amax()
    if kind == "nonfinite":
        return (~torch.isfinite(x)).sum().to(torch.float64)
    if kind in ("min", "max"):
        if x.numel() == 0:
            return torch.full((), float("inf") if kind == "min" else float("-inf"), **f64)
        return (x.amin() if kind == "min" else x.amax()).to(torch.float64)
    if kind == "mincount":
        n = int(param)
        a = x.reshape(-1).to(torch.int64)
        keep = (a >= 0) & (a < n)
        cnt = torch.zeros(n, dtype=torch.int64, device=x.device).index_add_(
            0, torch.where(keep, a, torch.zeros_like(a)), keep.to(torch.int64))
        return cnt.amin().to(torch.float64)
    raise ValueError(f"unknown stat kind {kind!r}; expected one of {V.CRPL_STAT_KINDS}")


def _stats(requests) -> tuple[float, ...]:
    """The validators' ``stats`` callable: every statistic computed on the device, then ONE
    packed device-to-host read (:func:`backends.torch.read_packed`)."""
    if not requests:
        return ()
    dev = requests[0][1].device
    vec = torch.stack([_stat(k, x, p).to(dev) for k, x, p in requests])
    return tuple(float(v) for v in read_packed([vec])[0])


# --------------------------------------------------------------------------- arithmetic


def _count(idx: torch.Tensor, n: int, dtype) -> torch.Tensor:
    """``#{j : idx_j = v}`` for v < n by ``index_add_`` (``torch.bincount`` reads the maximum
    back to the host on CUDA to size its output; this does not)."""
    return torch.zeros(n, dtype=dtype, device=idx.device).index_add_(
        0, idx, torch.ones(idx.shape[0], dtype=dtype, device=idx.device))


def _centroids(means, counts, feats, labels, domains):
    S, K, D = means.shape
    idx = domains.to(torch.int64) * K + labels.to(torch.int64)
    sums = torch.zeros((S * K, D), dtype=means.dtype, device=means.device)
    sums.index_add_(0, idx, feats.to(means.dtype))
    n = _count(idx, S * K, counts.dtype).reshape(S, K)
    new_counts = counts + n
    upd = (means * counts.unsqueeze(-1) + sums.reshape(S, K, D)) \
        / torch.where(n > 0, new_counts, torch.ones_like(new_counts)).unsqueeze(-1)
    return torch.where((n > 0).unsqueeze(-1), upd, means), new_counts


def _source_weights(u, centroids, gamma):
    """``w[i, b, k] = softmax_i(-gamma D_ibk)``, ``D`` in the expanded form (S, B, K)."""
    S, K, D = centroids.shape
    c = centroids.reshape(S * K, D)
    dist = (u * u).sum(-1, keepdim=True) + (c * c).sum(-1).unsqueeze(0) - 2.0 * (u @ c.T)
    dist = dist.reshape(-1, S, K).transpose(0, 1)                   # (S, B, K)
    return torch.softmax(-gamma * dist, dim=0)


def _probs(z, u, T_base, T_S, T_Si, centroids, counts, gamma, scale, variant):
    K = T_base.shape[0]
    blocks = [T_base, T_S] if T_Si is None else [T_base, T_S, T_Si.reshape(-1, T_Si.shape[-1])]
    G = z @ torch.cat(blocks, dim=0).T                                # (B, (2 + S) K), one GEMM
    g_base, g_S = G[:, :K], G[:, K:2 * K]
    two = (g_base + g_S) / 2.0 if variant == "code" else 0.5 * g_base + 0.5 * g_S
    if T_Si is None:
        return torch.softmax(scale * two, dim=-1)
    S = T_Si.shape[0]
    g_Si = G[:, 2 * K:].reshape(-1, S, K).transpose(0, 1)             # (S, B, K)
    w = _source_weights(u, centroids, gamma)
    mix = (w * g_Si).sum(dim=0)                                       # sum_i w z.t_Si
    three = (g_base + g_S + mix) / 3.0 if variant == "code" else 0.5 * g_base + 0.5 * mix
    full = (counts > 0).all()                                         # 0-d device flag
    return torch.softmax(scale * torch.where(full, three, two), dim=-1)


class _OTCluster(torch.autograd.Function):
    """``L_W(Z, T) = min_P <P, 1 - Z T^T>`` (uniform marginals) by the exact host solve; the
    backward is the envelope gradient ``dZ = -g P* T``, ``dT = -g P*^T Z`` (``dC = P*``).
    Saves Z, T and the plan (B x K)."""

    @staticmethod
    def forward(ctx, Z, T):
        C = 1.0 - Z @ T.T
        res = _ot.emd(None, None, C)                 # the documented host solve (ot.md)
        P = res.plan
        ctx.save_for_backward(Z, T, P)
        ctx.mark_non_differentiable(P)
        return res.cost, P

    @staticmethod
    def backward(ctx, g, _gP):
        Z, T, P = ctx.saved_tensors
        dZ = -(P @ T) * g if ctx.needs_input_grad[0] else None
        dT = -(P.T @ Z) * g if ctx.needs_input_grad[1] else None
        return dZ, dT


def _target_terms(z, T_T, p, scale, use_ot, baseline):
    """``(L_T, hard_labels)`` on validated inputs (module docstring)."""
    x = z @ T_T.T
    hard = torch.argmax(x.detach(), dim=-1)
    logits = scale * x
    if baseline:
        lab = p.to(torch.int64)
        mask = lab >= 0
        ce = _ce_rows(x, torch.where(mask, lab, torch.zeros_like(lab)))     # unscaled (quirk)
        m = mask.to(x.dtype)
        first = (ce * m).sum() / m.sum().clamp_min(1.0)
    else:
        first = _sce(logits, p.to(x.dtype))
    if not use_ot:
        return first, hard
    return (first + _ce_rows(logits, hard).mean()) / 2.0, hard


def _source_loss(z_src, y_src, dom_src, T_S, T_Si, scale):
    K = T_S.shape[0]
    y = y_src.to(torch.int64)
    if T_Si is None:
        return _ce_rows(scale * (z_src @ T_S.T), y).mean()
    S = T_Si.shape[0]
    G = scale * (z_src @ torch.cat([T_S, T_Si.reshape(-1, T_Si.shape[-1])], dim=0).T)
    L = _ce_rows(G[:, :K], y).mean()
    dom = dom_src.to(torch.int64)
    Gi = G[:, K:].reshape(-1, S, K)
    own = torch.gather(Gi, 1, dom.reshape(-1, 1, 1).expand(-1, 1, K)).squeeze(1)   # (B, K)
    ce = _ce_rows(own, y)
    per = torch.zeros(S, dtype=ce.dtype, device=ce.device).index_add_(0, dom, ce)
    n = _count(dom, S, ce.dtype)                             # every domain present (validated)
    return L + (per / n).mean()


def _loss(z_src, y_src, dom_src, z_tgt, T_S, T_Si, T_T, p, scale, lam_W, lam_T, use_ot,
          baseline):
    L_src = _source_loss(z_src, y_src, dom_src, T_S, T_Si, scale)
    L_T, _ = _target_terms(z_tgt, T_T, p, scale, use_ot, baseline)
    if use_ot:
        L_W, _ = _OTCluster.apply(z_tgt, T_T)
    else:
        L_W = torch.zeros((), dtype=L_src.dtype, device=L_src.device)
    L = L_src + lam_W * L_W + lam_T * L_T
    return L, {"L_src": L_src, "L_W": L_W, "L_T": L_T}


# --------------------------------------------------------------------------- public API


def update_class_centroids(means, counts, feats, labels, domains):
    """One running-mean update of the per-domain class centroids of pre-norm source features
    (module docstring): returns new ``(means, counts)`` in means' dtype (inputs unchanged).
    One host read (validation)."""
    _native(means=means, counts=counts, feats=feats, labels=labels, domains=domains)
    V.crpl_centroid_args(means, counts, feats, labels, domains, stats=_stats)
    with torch.no_grad():
        return _centroids(means, counts, feats, labels, domains)


def crpl_reference_probs(z, u, T_base, T_S, T_Si=None, centroids=None, counts=None, gamma=10.0,
                         scale=100.0, variant="code"):
    """The source-augmented soft pseudo-label ``p = softmax_k(scale l)`` (B, K), detached
    (module docstring): one fused cosine GEMM, one distance GEMM, the 2 -> 3 term switch as a
    device flag. One host read (validation)."""
    _native(z=z, u=u, T_base=T_base, T_S=T_S, T_Si=T_Si, centroids=centroids, counts=counts)
    _, _, _, _, gamma, scale, variant = V.crpl_probs_args(
        z, u, T_base, T_S, T_Si, centroids, counts, gamma, scale, variant, stats=_stats)
    with torch.no_grad():
        return _probs(z, u, T_base, T_S, T_Si, centroids, counts, gamma, scale, variant)


def soft_cross_entropy(logits, p):
    """``mean_b -sum_k p_bk log_softmax(logits)_bk`` (0-d tensor), differentiable by autograd.
    One host read (validation)."""
    _native(logits=logits, p=p)
    V.crpl_sce_args(logits, p, stats=_stats)
    return _sce(logits, p)


def soft_cross_entropy_grad(logits, p):
    """``(softmax(logits) rowsum(p) - p) / B`` (B, K) (= ``(softmax(logits) - p) / B`` for rows
    of p on the simplex). One host read (validation)."""
    _native(logits=logits, p=p)
    B, _ = V.crpl_sce_args(logits, p, stats=_stats)
    return (torch.softmax(logits, dim=-1) * p.sum(dim=-1, keepdim=True) - p) / B


def ot_cluster_loss(Z, T):
    """``(L_W, P, dT, dZ)``: exact balanced OT under ``C = 1 - Z T^T`` (uniform marginals) by
    the documented host solve of :func:`backends.torch.ot.emd`; ``dT = -P^T Z``, ``dZ = -P T``
    (envelope). L_W is a 0-d tensor differentiable by autograd with that envelope gradient
    (:class:`_OTCluster`); P, dT, dZ carry no graph. One host read (validation) plus the OT
    transfer."""
    _native(Z=Z, T=T)
    V.crpl_ot_args(Z, T, stats=_stats)
    L_W, P = _OTCluster.apply(Z, T)
    with torch.no_grad():
        return L_W, P, -(P.T @ Z), -(P @ T)


def crpl_target_loss(z, T_T, p, scale=100.0, use_ot=True):
    """``(L_T, hard_labels)``: the SPL branch for soft ``p`` (B, K), the baseline branch for
    integer pseudo-labels (B,) (-1 = unlabelled; unscaled logits), ``hard_labels = argmax_k
    z.t_T,k`` (int64, first index on ties). L_T is a 0-d tensor, differentiable by autograd.
    One host read (validation)."""
    _native(z=z, T_T=T_T, p=p)
    _, _, _, scale, use_ot, baseline = V.crpl_target_args(z, T_T, p, scale, use_ot,
                                                          stats=_stats)
    return _target_terms(z, T_T, p, scale, use_ot, baseline)


def _loss_checked(z_src, y_src, dom_src, z_tgt, T_S, T_Si, T_T, p, scale, lam_W, lam_T, use_ot):
    _native(z_src=z_src, y_src=y_src, dom_src=dom_src, z_tgt=z_tgt, T_S=T_S, T_Si=T_Si, T_T=T_T,
            p=p)
    args = V.crpl_loss_args(z_src, y_src, dom_src, z_tgt, T_S, T_Si, T_T, p, scale, lam_W, lam_T,
                            use_ot, stats=_stats)
    _, _, _, _, _, scale, lam_W, lam_T, use_ot, baseline = args
    return scale, lam_W, lam_T, use_ot, baseline


def crpl_loss(z_src, y_src, dom_src, z_tgt, T_S, T_Si, T_T, p, scale=100.0, lam_W=0.5, lam_T=0.5,
              use_ot=True):
    """``(L, parts)``: ``L = L_src + lam_W L_W + lam_T L_T``, ``parts = {"L_src", "L_W",
    "L_T"}`` (0-d tensors; L_W = 0 when ``use_ot`` is False). Differentiable by autograd in
    every float input; the OT term through :class:`_OTCluster` (envelope gradient), so the
    gradient w.r.t. T_S, T_Si, T_T equals the reference's ``crpl_loss_grad``. One host read
    (validation) plus the OT transfer when ``use_ot``."""
    scale, lam_W, lam_T, use_ot, baseline = _loss_checked(
        z_src, y_src, dom_src, z_tgt, T_S, T_Si, T_T, p, scale, lam_W, lam_T, use_ot)
    return _loss(z_src, y_src, dom_src, z_tgt, T_S, T_Si, T_T, p, scale, lam_W, lam_T, use_ot,
                 baseline)


def crpl_loss_grad(z_src, y_src, dom_src, z_tgt, T_S, T_Si, T_T, p, scale=100.0, lam_W=0.5,
                   lam_T=0.5, use_ot=True):
    """``(L, parts, grads)``: :func:`crpl_loss` and ``grads = {"dT_S", "dT_T"}`` (+ ``"dT_Si"``
    when T_Si is given) by ``torch.autograd.grad`` of the same graph (the OT term by the
    envelope ``-P*^T z_tgt``). Nothing returned carries a graph. One host read (validation)
    plus the OT transfer when ``use_ot``."""
    scale, lam_W, lam_T, use_ot, baseline = _loss_checked(
        z_src, y_src, dom_src, z_tgt, T_S, T_Si, T_T, p, scale, lam_W, lam_T, use_ot)
    names = ["T_S", "T_T"] + ([] if T_Si is None else ["T_Si"])
    given = {"T_S": T_S, "T_T": T_T, "T_Si": T_Si}
    leaves = {k: given[k].detach().requires_grad_(True) for k in names}
    with torch.enable_grad():
        L, parts = _loss(z_src.detach(), y_src, dom_src, z_tgt.detach(), leaves["T_S"],
                         leaves.get("T_Si"), leaves["T_T"], p.detach(), scale, lam_W, lam_T,
                         use_ot, baseline)
        grads = torch.autograd.grad(L, [leaves[k] for k in names])
    return (L.detach(), {k: v.detach() for k, v in parts.items()},
            {"d" + k: g for k, g in zip(names, grads)})


def clip_pseudo_labels(z, T_base, threshold=0.4, scale=100.0):
    """The baseline's CLIP zero-shot labels (int64, (B,)): ``argmax_k softmax(scale z
    T_base^T)`` (first index on ties) where its maximum is ``> threshold``, else -1. One host
    read (validation)."""
    _native(z=z, T_base=T_base)
    _, _, _, threshold, scale = V.crpl_pseudo_args(z, T_base, threshold, scale, stats=_stats)
    with torch.no_grad():
        P = torch.softmax(scale * (z @ T_base.T), dim=-1)
        lab = torch.argmax(P, dim=-1)
        return torch.where(P.amax(dim=-1) > threshold, lab, torch.full_like(lab, -1))


def target_accuracy(z, T_list, labels, batch_size=30, variant="code"):
    """Accuracy of ``argmax_k z . tbar_k`` with ``tbar`` the plain mean of T_list (a (K, D)
    tensor, an (M, K, D) stack or a list of (K, D) tensors), as a 0-d tensor of z's dtype:
    correct / (ceil(n / batch_size) batch_size) ("code") or correct / n ("exact"). One host
    read (validation)."""
    listed = isinstance(T_list, (list, tuple))
    _native(z=z, labels=labels)
    if listed:
        _native(**{f"T_list[{j}]": T for j, T in enumerate(T_list)})
    else:
        _native(T_list=T_list)
    n, _, _, _, batch_size, variant = V.crpl_acc_args(z, T_list, labels, batch_size, variant,
                                                      stats=_stats)
    with torch.no_grad():
        if listed:
            Tbar = torch.stack(list(T_list)).mean(dim=0)
        else:
            Tbar = T_list.mean(dim=0) if T_list.dim() == 3 else T_list
        correct = (torch.argmax(z @ Tbar.T, dim=-1) == labels.to(torch.int64)).sum()
        denom = -(-n // batch_size) * batch_size if variant == "code" else n
        return correct.to(z.dtype) / denom
