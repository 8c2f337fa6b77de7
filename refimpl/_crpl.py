r"""CRPL: cluster-preserving prompt learning for unsupervised domain adaptation, the float64
NumPy reference (re-exported by :mod:`refimpl.crpl`).

Paper: Vuong, Phan, Vo, Bui, Do, Le, Phung, "Preserving Clusters in Prompt Learning for
Unsupervised Domain Adaptation", arXiv 2506.11493 (CVPR 2025). No repository is linked from the
paper; the defaults follow the **authors' training script** (built on ``VietHoang1512/PGA: LA/``),
treated as the official code with medium-high confidence (spec ``specs/clip_uda_ot.md``). Tags
below: *official code* (the script, as the spec records it), *paper summary* (not yet checked
against the PDF), *reconstructed* (our choice; each says what to check).

Notation: B target images with normalised embeddings ``z`` (B, D) and pre-normalisation features
``u`` (B, D); K classes; S source domains; text embeddings ``T_base`` (zero-shot), ``T_S``
(source-combined prompt), ``T_Si`` (S, K, D) (one prompt per source), ``T_T`` (target prompt),
rows L2-normalised. Every cosine below is ``z . t`` (unscaled) unless multiplied by ``scale``
(= exp(logit_scale) = 100 for released CLIP).

Centroids (:func:`update_class_centroids`, official code): running means of the pre-norm source
features of domain i, class k, updated from the batch *before* the pseudo-label of the step::

    n_ik = #{b : domain_b = i, label_b = k},   s_ik = sum_{those b} u_b
    c_ik <- (c_ik * count_ik + s_ik) / (count_ik + n_ik),   count_ik <- count_ik + n_ik   (n_ik > 0)

Reference prediction (:func:`crpl_reference_probs`; ``variant="code"``, official code)::

    D[i, b, k] = ||u_b||^2 + ||c_ik||^2 - 2 u_b . c_ik          (expanded form; may be < 0, kept)
    w[i, b, k] = softmax_i(-gamma D[i, b, k])                    (over SOURCES; gamma = 10)
    l_bk = (z_b.t_base,k + z_b.t_S,k + sum_i w[i,b,k] z_b.t_Si,k) / 3   once every count_ik > 0
    l_bk = (z_b.t_base,k + z_b.t_S,k) / 2                        otherwise, and source-combined
    p_b  = softmax_k(scale * l_b)                                (detached soft target)

``variant="paper"`` (reconstructed from a summary of the paper: averaging of text embeddings,
``t_bk = 0.5 t_base,k + 0.5 sum_i w[i,b,k] t_Si,k``, not renormalised, ``p = softmax(scale z t^T)``,
i.e. ``l_bk = 0.5 z_b.t_base,k + 0.5 sum_i w[i,b,k] z_b.t_Si,k``). We keep the code's sign
``-gamma D`` (the summary prints a positive exponent: check the PDF). Where the weights are not
available (source-combined mode, or a centroid not yet seen) the paper variant uses
``0.5 z.t_base + 0.5 z.t_S`` (reconstructed).

Exact balanced OT (:func:`ot_cluster_loss`, official code: ``ot.emd2(a, b, C)``)::

    C_bk = 1 - z_b . t_T,k,   a = 1_B / B,   b = 1_K / K
    L_W  = min_{P >= 0, P 1 = a, P^T 1 = b} <P, C>               (refimpl.ot.emd: exact LP)
    dL_W/dT = -P*^T Z,   dL_W/dZ = -P* T                         (envelope theorem, dL_W/dC = P*)

a subgradient where P* is not unique (ties). Each t_T,k is pulled to the P*-weighted mean of
its images (column mass 1/K): the "text embedding = cluster centroid" reading (Lemma 1, paper
summary).

Objective (:func:`crpl_loss`, official code defaults lam_W = lam_T = 0.5)::

    CE(logits, y)  = mean_b -log softmax(logits_b)[y_b]
    SCE(logits, p) = mean_b -sum_k p_bk log softmax(logits_b)_k          (soft_cross_entropy)
    L_src = CE(scale z_src T_S^T, y) + [T_Si given] (1/S) sum_i CE(scale z_src,i T_Si[i]^T, y_i)
    h_b   = argmax_k z_tgt,b . t_T,k  (= argmin_k C_bk; first index on ties; NOT the plan's argmax)
    L_T   = (SCE(scale z_tgt T_T^T, p) + CE(scale z_tgt T_T^T, h)) / 2    use_ot (SPL branch)
    L_T   =  SCE(scale z_tgt T_T^T, p)                                    use_ot False
    L     = L_src + lam_W L_W + lam_T L_T                                 (L_W = 0 if not use_ot)

Baseline branch (official code's ``enhanced_pseudo_label=0``): ``p`` an INTEGER array (B,) of
CLIP pseudo-labels (:func:`clip_pseudo_labels`, -1 = unlabelled, confidence <= 0.4)::

    L_base = mean_{b: p_b >= 0} -log softmax(z_tgt,b T_T^T)[p_b]    (UNSCALED logits: the code's
             quirk; 0 when no row is labelled)
    L_T    = (L_base + CE(scale z_tgt T_T^T, h)) / 2   use_ot   (the hard CE as in the SPL branch:
             reconstructed),     L_T = L_base   otherwise

The optional entropy term of the baseline (``entropy_tradeoff``, default 0) is not implemented.

Gradients (:func:`crpl_loss_grad`, written from the math; w.r.t. the text embeddings only — the
prompts are what is trained; z, p, the hard labels h and the plan's support are constants)::

    d CE(scale z T^T, y)/dT   = scale G^T z,  G = (softmax(scale z T^T) - onehot(y)) / n
    d SCE(scale z T^T, p)/dT  = scale G^T z,  G = (softmax(scale z T^T) * rowsum(p) - p) / B
    d L_base/dT_T             = G^T z,        G = (softmax(z T_T^T) - onehot(p)) / n_labelled
                                              on the labelled rows (unscaled)
    dL/dT_S  = d CE_S/dT_S;    dL/dT_Si[i] = (1/S) d CE_i/dT_Si[i]
    dL/dT_T  = lam_W (-P*^T z_tgt) + lam_T dL_T/dT_T

:func:`soft_cross_entropy_grad` is ``(softmax(logits) * rowsum(p) - p) / B``, which is the
contract's ``(softmax(logits) - p) / B`` when the rows of p sum to 1 (they do for every soft
target of the method); the general form is the exact derivative of SCE for any p.

Evaluation (:func:`target_accuracy`, official code): accuracy of ``argmax_k z . t_k`` with t the
plain mean of the given text-embedding matrices (the script's averaged target prompt over steps,
not renormalised). ``variant="code"`` divides the number of correct predictions by
``ceil(n / batch_size) * batch_size`` (the script's undercount of a partial last batch);
``"exact"`` by n. Returned as a fraction in [0, 1].

Everything computes in float64 (inputs are upcast); scalars are Python floats, arrays float64
NumPy arrays, labels int64. Inputs are validated by :mod:`refimpl._validate` (section
``# ---- crpl``; the same messages on every backend). Exact OT is :func:`refimpl.ot.emd`.
"""

from __future__ import annotations

import numpy as np

from refimpl import _validate as V
from refimpl.ot import emd

__all__ = [
    "update_class_centroids", "crpl_reference_probs", "soft_cross_entropy",
    "soft_cross_entropy_grad", "ot_cluster_loss", "crpl_target_loss", "crpl_loss",
    "crpl_loss_grad", "clip_pseudo_labels", "target_accuracy",
]


# --------------------------------------------------------------------------- helpers


def _f64(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


def _host(x, name):
    return None if x is None else V.host_array(x, name)


def _softmax(F: np.ndarray, axis: int = -1) -> np.ndarray:
    e = np.exp(F - F.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _log_softmax(F: np.ndarray) -> np.ndarray:
    z = F - F.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def _argmax_first(S: np.ndarray) -> np.ndarray:
    """argmax over the last axis, first index on ties (NumPy's rule), int64."""
    return np.argmax(S, axis=-1).astype(np.int64)


def _ce(logits: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """Hard CE, mean over rows, and its gradient w.r.t. the logits."""
    n = logits.shape[0]
    rows = np.arange(n)
    loss = float(-_log_softmax(logits)[rows, y].mean())
    G = _softmax(logits)
    G[rows, y] -= 1.0
    return loss, G / n


def _sce(logits: np.ndarray, p: np.ndarray) -> tuple[float, np.ndarray]:
    """Soft CE, mean over rows, and its gradient (softmax * rowsum(p) - p) / B."""
    B = logits.shape[0]
    loss = float(-(p * _log_softmax(logits)).sum(axis=-1).mean())
    G = (_softmax(logits) * p.sum(axis=-1, keepdims=True) - p) / B
    return loss, G


# --------------------------------------------------------------------------- centroids


def update_class_centroids(means, counts, feats, labels, domains):
    """One running-mean update of the per-domain class centroids of pre-norm source features.

    ``c_ik <- (c_ik * count_ik + sum_{b in (i, k)} u_b) / (count_ik + n_ik)``,
    ``count_ik += n_ik`` for every (i, k) present in the batch (others unchanged).
    means (S, K, D), counts (S, K) (float, exact integers), feats (N, D) pre-norm ``u``,
    labels (N,) in [0, K), domains (N,) in [0, S). Returns new ``(means, counts)`` (float64;
    the inputs are not modified)."""
    means, counts = V.host_array(means, "means"), V.host_array(counts, "counts")
    feats = V.host_array(feats, "feats")
    labels, domains = V.host_array(labels, "labels"), V.host_array(domains, "domains")
    S, K, D, _ = V.crpl_centroid_args(means, counts, feats, labels, domains)
    idx = domains.astype(np.int64) * K + labels.astype(np.int64)
    n = np.bincount(idx, minlength=S * K).astype(np.float64).reshape(S, K)
    s = np.zeros((S * K, D))
    np.add.at(s, idx, _f64(feats))
    s = s.reshape(S, K, D)
    m, c = _f64(means), _f64(counts)
    seen = n > 0
    new_c = c + n
    new_m = m.copy()
    new_m[seen] = (m[seen] * c[seen][:, None] + s[seen]) / new_c[seen][:, None]
    return new_m, new_c


# --------------------------------------------------------------------------- reference probs


def _source_weights(u: np.ndarray, centroids: np.ndarray, gamma: float) -> np.ndarray:
    """w (S, B, K) = softmax over i of -gamma (||u_b||^2 + ||c_ik||^2 - 2 u_b . c_ik)."""
    uu = (u * u).sum(axis=-1)                                   # (B,)
    cc = (centroids * centroids).sum(axis=-1)                   # (S, K)
    Dist = uu[None, :, None] + cc[:, None, :] - 2.0 * (u @ centroids.transpose(0, 2, 1))
    return _softmax(-gamma * Dist, axis=0)


def crpl_reference_probs(z, u, T_base, T_S, T_Si=None, centroids=None, counts=None, gamma=10.0,
                         scale=100.0, variant="code"):
    """The source-augmented soft pseudo-label ``p = softmax_k(scale * l)`` (B, K) (module
    docstring: "code" averages the cosine logits of T_base, T_S and the distance-weighted T_Si,
    n_pseudo = 3 once every centroid count is > 0, else 2; T_Si=None = source-combined mode,
    always 2; "paper" is the reconstructed text-embedding averaging)."""
    z, u = V.host_array(z, "z"), V.host_array(u, "u")
    T_base, T_S = V.host_array(T_base, "T_base"), V.host_array(T_S, "T_S")
    T_Si, centroids, counts = (_host(T_Si, "T_Si"), _host(centroids, "centroids"),
                               _host(counts, "counts"))
    _, _, _, S, gamma, scale, variant = V.crpl_probs_args(
        z, u, T_base, T_S, T_Si, centroids, counts, gamma, scale, variant)
    z64 = _f64(z)
    cos_base = z64 @ _f64(T_base).T
    cos_S = z64 @ _f64(T_S).T
    full = S > 0 and bool((_f64(counts) > 0).all())
    if full:
        w = _source_weights(_f64(u), _f64(centroids), gamma)            # (S, B, K)
        cos_Si = z64 @ _f64(T_Si).transpose(0, 2, 1)                 # (S, B, K)
        mixed = (w * cos_Si).sum(axis=0)                                # (B, K)
        if variant == "code":
            logits = (cos_base + cos_S + mixed) / 3.0
        else:
            logits = 0.5 * cos_base + 0.5 * mixed
    elif variant == "code":
        logits = (cos_base + cos_S) / 2.0
    else:
        logits = 0.5 * cos_base + 0.5 * cos_S
    return _softmax(scale * logits)


# --------------------------------------------------------------------------- soft CE


def soft_cross_entropy(logits, p):
    """``mean_b -sum_k p_bk log_softmax(logits)_bk`` (Python float)."""
    logits, p = V.host_array(logits, "logits"), V.host_array(p, "p")
    V.crpl_sce_args(logits, p)
    return _sce(_f64(logits), _f64(p))[0]


def soft_cross_entropy_grad(logits, p):
    """``d SCE/d logits = (softmax(logits) * rowsum(p) - p) / B`` (B, K); equals
    ``(softmax(logits) - p) / B`` when the rows of p sum to 1."""
    logits, p = V.host_array(logits, "logits"), V.host_array(p, "p")
    V.crpl_sce_args(logits, p)
    return _sce(_f64(logits), _f64(p))[1]


# --------------------------------------------------------------------------- exact OT


def _ot(Z: np.ndarray, T: np.ndarray):
    B, K = Z.shape[0], T.shape[0]
    C = 1.0 - Z @ T.T
    res = emd(np.full(B, 1.0 / B), np.full(K, 1.0 / K), C)
    P = res.plan
    return float(res.cost), P, -P.T @ Z, -P @ T


def ot_cluster_loss(Z, T):
    """``(L_W, P, dT, dZ)``: the exact balanced OT cost between the uniform image batch Z (B, D)
    and the uniform class text embeddings T (K, D) under the cosine cost ``C = 1 - Z T^T``
    (:func:`refimpl.ot.emd`), the optimal plan P (B, K) (rows 1/B, columns 1/K) and the envelope
    gradients ``dT = -P^T Z`` (K, D), ``dZ = -P T`` (B, D). L_W is a Python float."""
    Z, T = V.host_array(Z, "Z"), V.host_array(T, "T")
    V.crpl_ot_args(Z, T)
    return _ot(_f64(Z), _f64(T))


# --------------------------------------------------------------------------- target loss


def _target(z: np.ndarray, T_T: np.ndarray, p: np.ndarray, scale: float, use_ot: bool,
            baseline: bool):
    """``(L_T, hard_labels, dL_T/dT_T)`` (module docstring, SPL and baseline branches)."""
    cos = z @ T_T.T
    hard = _argmax_first(cos)
    if baseline:
        lab = p.astype(np.int64)
        keep = lab >= 0
        if keep.any():
            loss, G = _ce(cos[keep], lab[keep])                 # unscaled (the code's quirk)
            dT = G.T @ z[keep]
        else:
            loss, dT = 0.0, np.zeros_like(T_T)
    else:
        loss, G = _sce(scale * cos, p)
        dT = scale * (G.T @ z)
    if use_ot:
        l_h, G_h = _ce(scale * cos, hard)
        loss = 0.5 * (loss + l_h)
        dT = 0.5 * (dT + scale * (G_h.T @ z))
    return loss, hard, dT


def crpl_target_loss(z, T_T, p, scale=100.0, use_ot=True):
    """``(L_T, hard_labels)``: the target term (SPL branch for soft ``p`` (B, K); baseline
    branch for integer pseudo-labels ``p`` (B,), -1 = unlabelled) and
    ``hard_labels = argmax_k z . t_T,k`` (int64, first index on ties)."""
    z, T_T, p = V.host_array(z, "z"), V.host_array(T_T, "T_T"), V.host_array(p, "p")
    _, _, _, scale, use_ot, baseline = V.crpl_target_args(z, T_T, p, scale, use_ot)
    loss, hard, _ = _target(_f64(z), _f64(T_T), p if baseline else _f64(p), scale, use_ot,
                            baseline)
    return loss, hard


# --------------------------------------------------------------------------- full objective


def _loss(z_src, y_src, dom_src, z_tgt, T_S, T_Si, T_T, p, scale, lam_W, lam_T, use_ot):
    z_src, y_src, z_tgt = (V.host_array(z_src, "z_src"), V.host_array(y_src, "y_src"),
                           V.host_array(z_tgt, "z_tgt"))
    dom_src, T_Si = _host(dom_src, "dom_src"), _host(T_Si, "T_Si")
    T_S, T_T, p = V.host_array(T_S, "T_S"), V.host_array(T_T, "T_T"), V.host_array(p, "p")
    _, _, _, _, S, scale, lam_W, lam_T, use_ot, baseline = V.crpl_loss_args(
        z_src, y_src, dom_src, z_tgt, T_S, T_Si, T_T, p, scale, lam_W, lam_T, use_ot)
    zs, zt, y = _f64(z_src), _f64(z_tgt), y_src.astype(np.int64)
    L_src, G = _ce(scale * (zs @ _f64(T_S).T), y)
    grads = {"dT_S": scale * (G.T @ zs)}
    if S > 0:
        Ti = _f64(T_Si)
        dom = dom_src.astype(np.int64)
        dTi = np.zeros_like(Ti)
        for i in range(S):
            rows = dom == i
            l_i, G_i = _ce(scale * (zs[rows] @ Ti[i].T), y[rows])
            L_src += l_i / S
            dTi[i] = (scale / S) * (G_i.T @ zs[rows])
        grads["dT_Si"] = dTi
    Tt = _f64(T_T)
    L_T, _, dT_T = _target(zt, Tt, p if baseline else _f64(p), scale, use_ot, baseline)
    dT_T = lam_T * dT_T
    L_W = 0.0
    if use_ot:
        L_W, _, dT_W, _ = _ot(zt, Tt)
        dT_T = dT_T + lam_W * dT_W
    grads["dT_T"] = dT_T
    L = L_src + lam_W * L_W + lam_T * L_T
    return L, {"L_src": L_src, "L_W": L_W, "L_T": L_T}, grads


def crpl_loss(z_src, y_src, dom_src, z_tgt, T_S, T_Si, T_T, p, scale=100.0, lam_W=0.5, lam_T=0.5,
              use_ot=True):
    """``(L, parts)``: ``L = L_src + lam_W L_W + lam_T L_T`` and
    ``parts = {"L_src", "L_W", "L_T"}`` (Python floats; L_W = 0.0 when ``use_ot`` is False).
    ``T_Si=None`` is source-combined mode (dom_src then unused and may be None)."""
    L, parts, _ = _loss(z_src, y_src, dom_src, z_tgt, T_S, T_Si, T_T, p, scale, lam_W, lam_T,
                        use_ot)
    return L, parts


def crpl_loss_grad(z_src, y_src, dom_src, z_tgt, T_S, T_Si, T_T, p, scale=100.0, lam_W=0.5,
                   lam_T=0.5, use_ot=True):
    """``(L, parts, grads)``: :func:`crpl_loss` and its explicit gradient w.r.t. the text
    embeddings, ``grads = {"dT_S", "dT_T"}`` (+ ``"dT_Si"`` when T_Si is given); the OT term by
    the envelope ``-P*^T z_tgt``, the CE terms through the scaled cosine logits."""
    return _loss(z_src, y_src, dom_src, z_tgt, T_S, T_Si, T_T, p, scale, lam_W, lam_T, use_ot)


# --------------------------------------------------------------------------- baseline labels


def clip_pseudo_labels(z, T_base, threshold=0.4, scale=100.0):
    """The baseline's CLIP zero-shot labels: ``argmax_k z . t_base,k`` (first index on ties)
    where ``max_k softmax(scale z T_base^T) > threshold``, else -1 (int64, (B,)).
    threshold in [0, 1]."""
    z, T_base = V.host_array(z, "z"), V.host_array(T_base, "T_base")
    _, _, _, threshold, scale = V.crpl_pseudo_args(z, T_base, threshold, scale)
    P = _softmax(scale * (_f64(z) @ _f64(T_base).T))
    lab = _argmax_first(P)
    return np.where(P.max(axis=-1) > threshold, lab, -1).astype(np.int64)


# --------------------------------------------------------------------------- evaluation


def target_accuracy(z, T_list, labels, batch_size=30, variant="code"):
    """Accuracy (fraction) of ``argmax_k z . tbar_k`` with ``tbar`` the plain mean of T_list
    (one (K, D), an (M, K, D) stack or a list of (K, D)); "code" divides by
    ``ceil(n / batch_size) * batch_size``, "exact" by n."""
    z = V.host_array(z, "z")
    if isinstance(T_list, (list, tuple)):
        T_list = [V.host_array(T, f"T_list[{j}]") for j, T in enumerate(T_list)]
    else:
        T_list = V.host_array(T_list, "T_list")
    labels = V.host_array(labels, "labels")
    n, _, _, _, batch_size, variant = V.crpl_acc_args(z, T_list, labels, batch_size, variant)
    if isinstance(T_list, list):
        Tbar = np.mean([_f64(T) for T in T_list], axis=0)
    else:
        T64 = _f64(T_list)
        Tbar = T64.mean(axis=0) if T64.ndim == 3 else T64
    correct = int((_argmax_first(_f64(z) @ Tbar.T) == labels.astype(np.int64)).sum())
    denom = -(-n // batch_size) * batch_size if variant == "code" else n
    return correct / denom
