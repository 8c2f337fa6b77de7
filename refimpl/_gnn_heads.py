r"""Heads of the multilayer GNN for predictive maintenance — the float64 reference (spec
``gnn_pdm.md`` secs. 3-5, 8): the edge-weight MLP, relation fusion, the focal loss, binary F1 and
the cluster-validity indices.

Paper: Kazim, Pirim, Le, Le, Yadav, "Multilayer GNN for Predictive Maintenance and Clustering in
Power Grids", arXiv 2507.07298. Official code ``CEL-lab/Multilayer_GNN`` @6910437:
``Code/Predictive_Maintenance.ipynb`` (``WeightedGCNConv``, ``PowerGridGNN``, ``FocalLoss``, the
test cell) and ``Code/Substation_Clustering.ipynb`` (``OperationalGNN``, HDBSCAN, silhouette).
Focal loss: Lin, Goyal, Girshick, He, Dollar, "Focal Loss for Dense Object Detection",
arXiv 1708.02002. Semantic attention: Wang et al., "Heterogeneous Graph Attention Network"
(HAN), arXiv 1903.07293, eqs. 7-9.

Provenance:

* **official code**: the edge MLP of ``WeightedGCNConv`` (sigmoid output + 1e-8); the global
  softmax fusion of ``PowerGridGNN`` (``aggregation_weights`` initialised to ones); the
  concatenation fusion of ``OperationalGNN``; ``FocalLoss`` with a scalar alpha applied to the
  model's *sigmoid outputs* through ``binary_cross_entropy_with_logits`` (``variant="code"``);
  the F1 of the test cell;
* **lib** (scikit-learn's conventions): silhouette and Davies-Bouldin, here with noise points
  (label -1) removed first, as the clustering notebook does before scoring;
* **reconstructed**: the semantic (HAN-style) and node-level attention fusions (the paper's
  "attention-weighted fusion" is not in the code); the ``variant="logits"`` focal loss
  (Lin et al.'s alpha_t form on logits, the fix of the double sigmoid).

Edge weights (``edge_mlp_weights``; edge_attr (E, D), W1 (D, Hd), W2 (Hd, 1))::

    z = (edge_attr - mean) / (std + 1e-8)        (mean, std given; else z = edge_attr)
    w = sigmoid(relu(z W1 + b1) W2 + b2) + 1e-8  (E,),  in (1e-8, 1 + 1e-8]  (in float64
        exactly 1e-8 once sigmoid < ~1e-24, and 1 + 1e-8 once it rounds to 1)

The notebook standardises twice — once with the whole graph's mean/std (``_register_edge_stats``)
and once inside ``WeightedGCNConv.forward`` with the current edges' mean and *unbiased* std;
each pass is one call's ``mean``/``std`` (the caller computes them).

Fusion (``fuse``; H_stack (R, N, F), H_r its r-th block, h_i^r its row i)::

    global   (code):  beta = softmax(w) (R,),  H = sum_r beta_r H_r;  w = ones(R) if params None
    concat   (code):  H = [H_1 | ... | H_R] W + b     W (R F, F_out), beta None
    semantic (HAN):   u_ir = tanh(h_i^r W + b) (A,),  s_r = (1/N) sum_i q . u_ir,
                      beta = softmax_r(s) (R,),  H = sum_r beta_r H_r
    node     (recon): e_ir = q . tanh(h_i^r W + b),  beta_i = softmax_r(e_i) (N, R),
                      h_i = sum_r beta_ir h_i^r

The caller applies ReLU and dropout after the global fusion, as ``PowerGridGNN`` does.
``fuse_vjp`` returns the gradient of ``<G, H>`` (G of H's shape) w.r.t. H_stack and each param:
with dbeta_r = <G, H_r> and the softmax backward ds = beta (dbeta - <beta, dbeta>)::

    global:   dH_r = beta_r G,  dw = ds
    concat:   dW = [H_1 | ... | H_R]^T G,  db = 1^T G,  [dH_1 | ... | dH_R] = G W^T
    semantic: ds as above; dq = sum_r ds_r mean_i u_ir;  P_r = (ds_r / N) q (1 - u_r^2) (N, A);
              dW = sum_r H_r^T P_r,  db = sum_r 1^T P_r,  dH_r = beta_r G + P_r W^T
    node:     dbeta_ir = G_i . h_i^r,  de_i = beta_i (dbeta_i - <beta_i, dbeta_i>);
              dq = sum_ir de_ir u_ir;  P_r = de_:r q (1 - u_r^2);  dW, db as semantic;
              dH_r = beta_:r G + P_r W^T

Focal loss (``focal_bce``; x = outputs, y in {0, 1}, N nodes)::

    BCE(x, y) = max(x, 0) - x y + log(1 + exp(-|x|))     (BCE with logits, element-wise)
    1 - p_t   = 1 - exp(-BCE) = -expm1(-BCE)
    "code":   loss = (1/N) sum alpha (1 - p_t)^gamma BCE,  x = the model's sigmoid outputs
              p in [0, 1] (so the probability is sigmoid(p): the double sigmoid), scalar alpha
    "logits": loss = (1/N) sum alpha_t (1 - p_t)^gamma BCE,  alpha_t = alpha y + (1 - alpha)(1 - y),
              x = logits (= -alpha_t (1 - p_t)^gamma log p_t with p_t = y p + (1 - y)(1 - p),
              p = sigmoid(x): Lin et al., arXiv 1708.02002, eq. 5)
    d loss / dx = (a / N) [(1 - p_t)^gamma + gamma (1 - p_t)^(gamma - 1) p_t BCE] (sigmoid(x) - y)

with a = alpha or alpha_t; the gamma term is 0 where 1 - p_t = 0 (its limit for gamma > 0).
The notebook's validation loss is plain BCE-with-logits on the sigmoid outputs (no focal term)
and its test probabilities are ``sigmoid(output) = sigmoid(sigmoid(z))``, which lies in
(0.5, 0.7311) for every z: at threshold 0.5 every node is predicted positive — the saved test
metrics (precision = accuracy 0.6901, recall 1, F1 0.8167 on 71 nodes with 49 positives) are
exactly those of the all-positive predictor. (In floating point ``0.5 + sigmoid(z)/4`` rounds
to exactly 0.5, i.e. "negative" under ``> 0.5``, for z < -16.23 in float32, the notebook's
dtype, and z < -36.33 in float64.)

F1 (``binary_f1``): ``2 TP / (2 TP + FP + FN)``, 0 when there is no positive at all (scikit-learn's
``zero_division=0``). The notebook's ``2 P R / (P + R + 1e-8)`` with ``P = TP / (TP + FP + 1e-8)``
differs by less than 1e-7.

Cluster validity (noise points, label -1, removed first; Euclidean distances from exact
coordinate differences; 2 <= K <= n - 1 clusters after removal, else ValueError)::

    silhouette:  a_i = sum_{j in C(i), j != i} d_ij / (|C(i)| - 1),
                 b_i = min_{k != C(i)} mean_{j in k} d_ij,
                 s_i = (b_i - a_i) / max(a_i, b_i);  s_i = 0 for singletons and when
                 max(a_i, b_i) = 0 (duplicate points);  score = mean_i s_i
    Davies-Bouldin: c_k = mean of cluster k, S_k = mean_{i in k} ||x_i - c_k||,
                 M_kl = ||c_k - c_l||, M_kl = 0 counts as infinite (coincident centroids and
                 the diagonal), DB = mean_k max_l (S_k + S_l) / M_kl;  DB = 0 when every S_k or
                 every M_kl is within 1e-8 of 0 (``isclose(., 0)``)

These are scikit-learn's conventions (``silhouette_score``, ``davies_bouldin_score``); scikit-learn
computes distances with the expansion ``||x||^2 - 2 x.y + ||y||^2``, so where a distance is
exactly 0 here — duplicate points, coincident centroids, a singleton cluster's S_k (its point
is its centroid) — its value may carry a ~1e-8 residue unless the coordinates make the
expansion exact (e.g. small integers).

Everything computes in float64 (inputs are upcast); arrays come back as float64, scalars (loss,
scores) as Python floats.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.distance import cdist
from scipy.special import expit

from refimpl import _validate as V

__all__ = [
    "edge_mlp_weights", "fuse", "fuse_vjp", "focal_bce", "focal_bce_grad", "binary_f1",
    "silhouette_score_np", "davies_bouldin_np",
]

_STD_EPS = 1e-8          # WeightedGCNConv: edge_attr.std(dim=0) + 1e-8
_WEIGHT_EPS = 1e-8       # WeightedGCNConv: gcn(x, edge_index, edge_weight=weights + 1e-8)
_ZERO_ATOL = 1e-8        # scikit-learn's isclose(., 0) in davies_bouldin_score
_CHUNK = 1024            # rows of the distance matrix held at once (silhouette)


def _f64(x, name):
    return np.asarray(V.host_array(x, name), dtype=np.float64)


def _host_params(params):
    if not isinstance(params, dict):
        return params  # None, or the validator's TypeError
    return {k: V.host_array(v, f"params['{k}']") for k, v in params.items()}


# --------------------------------------------------------------------------- edge weights


def edge_mlp_weights(edge_attr, W1, b1, W2, b2, mean=None, std=None):
    """Edge weights of ``WeightedGCNConv``: ``w = sigmoid(relu(z W1 + b1) W2 + b2) + 1e-8`` (E,)
    with ``z = (edge_attr - mean) / (std + 1e-8)`` when ``mean``/``std`` (D,) are given, else
    ``z = edge_attr``. ``edge_attr`` (E, D), ``W1`` (D, hidden), ``b1`` (hidden,), ``W2``
    (hidden, 1), ``b2`` (1,); the code's hidden width is 64. float64 (E,) in (1e-8, 1 + 1e-8]."""
    arrs = [V.host_array(a, n) for a, n in ((edge_attr, "edge_attr"), (W1, "W1"), (b1, "b1"),
                                            (W2, "W2"), (b2, "b2"))]
    mean = V.host_array(mean, "mean") if mean is not None else None
    std = V.host_array(std, "std") if std is not None else None
    V.edge_mlp_args(*arrs, mean, std)
    X, W1, b1, W2, b2 = (np.asarray(a, dtype=np.float64) for a in arrs)
    if mean is not None:
        X = (X - np.asarray(mean, dtype=np.float64)) / (np.asarray(std, dtype=np.float64)
                                                         + _STD_EPS)
    h = np.maximum(X @ W1 + b1, 0.0)
    return expit(h @ W2[:, 0] + b2[0]) + _WEIGHT_EPS


# --------------------------------------------------------------------------- fusion


def _softmax(s, axis=-1):
    e = np.exp(s - s.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _softmax_back(beta, dbeta, axis=-1):
    """``d s`` from ``d beta`` through ``beta = softmax(s)`` along ``axis``."""
    return beta * (dbeta - (beta * dbeta).sum(axis=axis, keepdims=True))


def _fuse_parts(Hs, mode, P):
    """``(H, beta, u)`` in float64; u = tanh(H_r W + b) (R, N, A) for the attention modes."""
    R, N, F = Hs.shape
    if mode == "global":
        w = np.ones(R) if P is None else P["w"]
        beta = _softmax(w)
        return np.tensordot(beta, Hs, axes=1), beta, None
    if mode == "concat":
        Hc = Hs.transpose(1, 0, 2).reshape(N, R * F)        # row i = [h_i^1 | ... | h_i^R]
        return Hc @ P["W"] + P["b"], None, None
    u = np.tanh(Hs @ P["W"] + P["b"])                        # (R, N, A)
    e = u @ P["q"]                                           # (R, N)
    if mode == "semantic":
        beta = _softmax(e.mean(axis=1))                      # (R,)
        return np.tensordot(beta, Hs, axes=1), beta, u
    beta = _softmax(e.T, axis=1)                             # (N, R)
    return np.einsum("nr,rnf->nf", beta, Hs), beta, u


def _fuse_inputs(H_stack, mode, params, G=None):
    Hs = V.host_array(H_stack, "H_stack")
    P = _host_params(params)
    G = V.host_array(G, "G") if G is not None else None
    shape = V.fuse_args(Hs, mode, P, G)
    P = None if P is None else {k: np.asarray(v, dtype=np.float64) for k, v in P.items()}
    G = None if G is None else np.asarray(G, dtype=np.float64)
    return np.asarray(Hs, dtype=np.float64), P, G, shape


def fuse(H_stack, mode="global", params=None):
    """``(H, beta)``: the relation fusion of the module docstring. ``H_stack`` (R, N, F);
    ``mode`` "global" (code; ``params`` None -> w = ones, or {"w": (R,)}), "concat" (code;
    {"W": (R*F, F_out), "b": (F_out,)}), "semantic" / "node" (reconstructed; {"W": (F, A),
    "b": (A,), "q": (A,)}). ``H`` (N, F) ((N, F_out) for concat); ``beta`` (R,) for global and
    semantic, (N, R) for node, None for concat."""
    Hs, P, _, _ = _fuse_inputs(H_stack, mode, params)
    H, beta, _ = _fuse_parts(Hs, mode, P)
    return H, beta


def fuse_vjp(H_stack, G, mode="global", params=None):
    """Gradient of ``<G, H>`` (``H`` = ``fuse(H_stack, mode, params)[0]``, ``G`` of H's shape)
    as a dict: "dH_stack" (R, N, F) and "d<key>" for each key of ``params`` ("dw"; "dW", "db";
    "dW", "db", "dq"). The global mode with ``params=None`` returns "dH_stack" only. Formulas in
    the module docstring."""
    Hs, P, G, _ = _fuse_inputs(H_stack, mode, params, G)
    R, N, F = Hs.shape
    _, beta, u = _fuse_parts(Hs, mode, P)
    if mode == "concat":
        Hc = Hs.transpose(1, 0, 2).reshape(N, R * F)
        dHc = G @ P["W"].T
        return {"dH_stack": dHc.reshape(N, R, F).transpose(1, 0, 2).copy(),
                "dW": Hc.T @ G, "db": G.sum(axis=0)}
    if mode in ("global", "semantic"):
        dH = beta[:, None, None] * G[None]
        ds = _softmax_back(beta, np.einsum("rnf,nf->r", Hs, G))         # (R,)
        if mode == "global":
            return {"dH_stack": dH} if P is None else {"dH_stack": dH, "dw": ds}
        dq = (ds[:, None] * u.mean(axis=1)).sum(axis=0)
        Pr = (ds[:, None, None] / N) * P["q"] * (1.0 - u * u)            # (R, N, A)
    else:  # node
        dH = beta.T[:, :, None] * G[None]
        de = _softmax_back(beta, np.einsum("rnf,nf->nr", Hs, G), axis=1)  # (N, R)
        dq = np.einsum("nr,rna->a", de, u)
        Pr = de.T[:, :, None] * P["q"] * (1.0 - u * u)                   # (R, N, A)
    dW = np.einsum("rnf,rna->fa", Hs, Pr)
    db = Pr.sum(axis=(0, 1))
    dH = dH + Pr @ P["W"].T
    return {"dH_stack": dH, "dW": dW, "db": db, "dq": dq}


# --------------------------------------------------------------------------- focal loss


def _bce_with_logits(x, y):
    """``max(x, 0) - x y + log1p(exp(-|x|))`` element-wise (torch's stable form)."""
    return np.maximum(x, 0.0) - x * y + np.log1p(np.exp(-np.abs(x)))


def _focal(outputs, y, alpha, gamma, variant, grad):
    o = V.host_array(outputs, "outputs")
    yh = V.host_array(y, "y")
    N, alpha, gamma, variant = V.focal_args(o, yh, alpha, gamma, variant)
    x = np.asarray(o, dtype=np.float64)
    t = np.asarray(yh, dtype=np.float64)
    a = alpha if variant == "code" else alpha * t + (1.0 - alpha) * (1.0 - t)
    bce = _bce_with_logits(x, t)
    q = -np.expm1(-bce)                                      # 1 - p_t
    loss = float(np.mean(a * q ** gamma * bce))
    if not grad:
        return loss
    pos = q > 0
    qg1 = np.where(pos, q, 1.0) ** (gamma - 1.0)
    dfocal = q ** gamma + np.where(pos, gamma * qg1 * np.exp(-bce) * bce, 0.0)
    return loss, (a / N) * dfocal * (expit(x) - t)


def focal_bce(outputs, y, alpha=0.75, gamma=2.0, variant="code"):
    """The focal loss as a Python float (module docstring). ``variant="code"`` (default, the
    notebook's ``FocalLoss``): ``outputs`` are the model's sigmoid probabilities in [0, 1],
    passed to BCE-with-logits (the double sigmoid), scalar ``alpha`` for both classes.
    ``variant="logits"``: ``outputs`` are logits, ``alpha_t = alpha y + (1 - alpha)(1 - y)``
    (arXiv 1708.02002). ``y`` (N,) 0/1 labels (bool, integer or float); mean over the N nodes."""
    return _focal(outputs, y, alpha, gamma, variant, grad=False)


def focal_bce_grad(outputs, y, alpha=0.75, gamma=2.0, variant="code"):
    """``(loss, doutputs)``: :func:`focal_bce` and its gradient w.r.t. ``outputs`` (N,) float64
    (module docstring)."""
    return _focal(outputs, y, alpha, gamma, variant, grad=True)


# --------------------------------------------------------------------------- metrics


def binary_f1(y, y_pred):
    """``2 TP / (2 TP + FP + FN)`` of 0/1 labels ``y`` and predictions ``y_pred`` (N,) as a
    Python float; 0.0 when neither has a positive (scikit-learn's ``zero_division=0``)."""
    t, p = V.binary_f1_args(y, y_pred)
    tp = int((t & p).sum())
    denom = 2 * tp + int((~t & p).sum()) + int((t & ~p).sum())
    return 0.0 if denom == 0 else 2.0 * tp / denom


def silhouette_score_np(E, labels):
    """Mean silhouette coefficient of the embedding ``E`` (n, d) under ``labels`` (n,) integer,
    noise (-1) removed first (module docstring; scikit-learn's conventions: 0 for singletons
    and for points with a = b = 0). ValueError unless 2 <= #clusters <= n - 1 after removal."""
    X, codes, K = V.cluster_args(E, labels)
    n = X.shape[0]
    counts = np.bincount(codes, minlength=K).astype(np.float64)
    onehot = np.zeros((n, K))
    onehot[np.arange(n), codes] = 1.0
    sums = np.empty((n, K))                                  # sum_{j in k} d_ij
    for s in range(0, n, _CHUNK):
        sums[s:s + _CHUNK] = cdist(X[s:s + _CHUNK], X) @ onehot
    rows = np.arange(n)
    own = counts[codes]
    single = own == 1
    a = np.where(single, 0.0, sums[rows, codes] / np.where(single, 1.0, own - 1.0))
    means = sums / counts
    means[rows, codes] = np.inf
    b = means.min(axis=1)
    denom = np.maximum(a, b)
    ok = ~single & (denom > 0)
    s_i = np.where(ok, (b - a) / np.where(ok, denom, 1.0), 0.0)
    return float(s_i.mean())


def davies_bouldin_np(E, labels):
    """Davies-Bouldin index of ``E`` (n, d) under ``labels`` (n,) integer, noise (-1) removed
    first (module docstring; scikit-learn's conventions: coincident centroids count as
    infinitely far apart, 0 when every S_k or every centroid distance is ~0).
    ValueError unless 2 <= #clusters <= n - 1 after removal."""
    X, codes, K = V.cluster_args(E, labels)
    C = np.stack([X[codes == k].mean(axis=0) for k in range(K)])
    S = np.array([np.linalg.norm(X[codes == k] - C[k], axis=1).mean() for k in range(K)])
    M = cdist(C, C)
    if np.all(np.abs(S) <= _ZERO_ATOL) or np.all(np.abs(M) <= _ZERO_ATOL):
        return 0.0
    M[M == 0] = np.inf
    return float(np.mean(np.max((S[:, None] + S[None, :]) / M, axis=1)))
