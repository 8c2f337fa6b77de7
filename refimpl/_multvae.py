r"""Mult-VAE and the PIA anchor regulariser — the float64 reference (model part of the
``recsys_vae`` family; spec ``recsys_vae.md`` secs. 1-4).

Papers: Liang, Krishnan, Hoffman, Jebara, "Variational Autoencoders for Collaborative
Filtering", WWW 2018, arXiv 1802.05814 (Mult-VAE); Vuong, Monteil, Dang, Vaskovych, Le, Nguyen,
"On the Mechanisms of Collaborative Learning in VAE Recommenders", arXiv 2511.06781 (PIA,
ICLR 2026). Official Mult-VAE code: ``dawenl/vae_cf``, notebook ``VAE_ML20M_WWW2018.ipynb``
@ad103c5 (class ``MultVAE``: ``forward_pass``, ``build_graph``, ``_construct_weights``; the
training loop's annealing). PIA has no public code.

Provenance of each item:

* **official code** (Mult-VAE): the forward pass, the multinomial log-likelihood on the raw
  binary X, the KL in the code's form, the beta annealing (including ``total_anneal_steps = 0``
  giving the cap), Glorot-uniform weights and truncated-normal (std 1e-3, 2 std) biases,
  inverted dropout after l2 normalisation (``mask_mode="dropout"``);
* **paper summary** (PIA, not yet checked against the PDF): anchors ``E`` (I, d), the user
  anchor set from the unmasked X, ``L_A(u) = mean_{i in S_u} E_q ||z - e_i||^2``, its mean over
  users added with weight ``lam_A``;
* **reconstructed**: ``mask_mode="bernoulli"`` (mask first, then row-normalise, no 1/rho
  rescale; rho = ``keep_prob``), the closed form of L_A with its spread term, its gradients,
  the treatment of empty users, ``gaussian_w2`` as the analysis distance;
* **ours**: the randomness is an input (``multvae_draw``), so every backend gets the same mask
  and noise; the explicit backward (``multvae_value_and_grad``) written from the math.

Forward (``multvae_forward``; U users, I items, hidden H, latent d)::

    l2n(x)  = x / sqrt(max(sum_i x_i^2, 1e-12))        (tf.nn.l2_normalize: zero rows stay 0)
    dropout   (official):   h0 = l2n(X) * mask / keep_prob        (mask=None: h0 = l2n(X))
    bernoulli (PIA, recon): h0 = l2n(X * mask)                    (mask=None: h0 = l2n(X))
    h1 = tanh(h0 W1 + b1)                   W1 (I, H)
    o2 = h1 W2 + b2,  mu = o2[:, :d],  logvar = o2[:, d:]          W2 (H, 2d)
    sigma = exp(logvar / 2),  z = mu + eps * sigma                (eps=None: z = mu)
    h3 = tanh(z W3 + b3)                    W3 (d, H)
    logits = h3 W4 + b4                     W4 (H, I)

Loss (``multvae_loss``; n_u = sum_i X_ui; target = the raw binary X)::

    nll  = mean_u [ -sum_i X_ui log_softmax(logits_u)_i ]          (max-shifted log-sum-exp)
    kl   = mean_u [ 0.5 sum_k (-logvar_uk + exp(logvar_uk) + mu_uk^2 - 1) ]
    loss = nll + beta kl                  beta_t = min(cap, t / total_anneal_steps)

PIA (closed form for the diagonal Gaussian q; V = users with n_u > 0)::

    ebar_u   = (X_u E) / n_u                                   item_centroids (0 if n_u = 0)
    spread_u = (X_u rownorm2(E)) / n_u - ||ebar_u||^2  = mean_{i in S_u} ||e_i - ebar_u||^2
    L_A(u)   = ||mu_u - ebar_u||^2 + sum_k exp(logvar_uk) + spread_u
    reduction "mean": (1/|V|) sum_{u in V} L_A(u);  "sum": sum_{u in V};  "none": NaN off V
    Monte Carlo (z given, (S, U, d)): mean_s mean_{i in S_u} ||z_su - e_i||^2, same reductions
    gradients of the mean (w = 1/|V| on V, 0 elsewhere):
        dmu_u = 2 w_u (mu_u - ebar_u),  dlogvar_u = w_u exp(logvar_u),
        dE_k  = sum_u w_u X_uk (2/n_u)(e_k - mu_u)
              = 2 [diag(A^T 1) E - A^T mu]  with A = X diag(w / n)  (row-scaled X)
    The spread does not depend on the encoder but does on E: without it the anchor gradient
    would be (2/n_u)(ebar_u - mu_u) for every k in S_u instead of (2/n_u)(e_k - mu_u), the
    Monte Carlo gradient (tests show the difference).

Explicit backward (``multvae_value_and_grad``; loss = nll + beta kl + lam_A L_A_mean)::

    dlogits = (softmax(logits) n_u - X) / U;  dW4 = h3^T dlogits,  db4 = 1^T dlogits
    da3 = (dlogits W4^T)(1 - h3^2);           dW3 = z^T da3,       db3 = 1^T da3
    dz  = da3 W3^T
    dmu     = dz + beta mu / U + lam_A dL_A/dmu
    dlogvar = dz eps sigma / 2 + beta (exp(logvar) - 1) / (2U) + lam_A dL_A/dlogvar
              (eps=None: no dz term — z = mu)
    do2 = [dmu, dlogvar];  dW2 = h1^T do2,  db2 = 1^T do2
    da1 = (do2 W2^T)(1 - h1^2);  dW1 = h0^T da1 (sparse-dense product when X is CSR), db1 = 1^T da1
    dE  = lam_A dL_A/dE
h0 depends on X only (the normalisation and the mask carry no parameter), so the backward
stops at W1.

``gaussian_w2(mu1, s1, mu2, s2) = sqrt(||mu1 - mu2||^2 + ||s1 - s2||^2)`` per row: the
2-Wasserstein distance of two diagonal Gaussians (s = standard deviations).

Everything computes in float64 (inputs are upcast); arrays come back as float64, the scalars
(loss, nll, kl, beta) as Python floats. ``X`` is a dense (U, I) float array of 0/1 or a
``scipy.sparse`` CSR matrix/array (stored values all 1).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from refimpl import _validate as V

__all__ = [
    "multvae_init", "multvae_draw", "multvae_forward", "multvae_loss", "multvae_value_and_grad",
    "anneal_beta", "item_centroids", "pia_anchor_loss", "pia_anchor_grad", "gaussian_w2",
]

_L2_EPS = 1e-12          # tf.nn.l2_normalize's epsilon (on the squared norm)
_BIAS_STD = 1e-3         # tf.truncated_normal_initializer(stddev=0.001) in _construct_weights


# --------------------------------------------------------------------------- helpers


def _interactions(X):
    """``(X as float64 dense or CSR, stored values or None)``; other sparse formats refused."""
    if sp.issparse(X):
        if X.format != "csr":
            raise TypeError(f"X must be a dense array or a CSR matrix, got a scipy.sparse "
                            f"{X.format.upper()} matrix (convert with .tocsr())")
        return X, X.data
    return V.host_array(X, "X"), None


def _as64(X):
    if sp.issparse(X):
        return sp.csr_matrix(X, dtype=np.float64)
    return np.asarray(X, dtype=np.float64)


def _f64(x, name):
    return None if x is None else np.asarray(V.host_array(x, name), dtype=np.float64)


def _params64(params):
    if not isinstance(params, dict):
        return params  # the validator raises the TypeError
    return {k: (V.host_array(v, f"params['{k}']") if k in V.RV_PARAM_KEYS else v)
            for k, v in params.items()}


def _row_sums(X):
    return np.asarray(X.sum(axis=1)).ravel()


def _row_dot(X, A):
    """``sum_i X_ui A_ui`` per row (dense or CSR X, dense A)."""
    if sp.issparse(X):
        return np.asarray(X.multiply(A).sum(axis=1)).ravel()
    return (X * A).sum(axis=1)


def _l2n(X):
    """Row l2 normalisation as ``tf.nn.l2_normalize(x, 1)``: x * rsqrt(max(sum x^2, 1e-12))."""
    sq = np.asarray(X.multiply(X).sum(axis=1)).ravel() if sp.issparse(X) else (X * X).sum(axis=1)
    inv = 1.0 / np.sqrt(np.maximum(sq, _L2_EPS))
    if sp.issparse(X):
        return sp.csr_matrix(sp.diags(inv) @ X)
    return X * inv[:, None]


def _times(X, M):
    """Elementwise ``X * M`` (dense mask M), CSR stays CSR."""
    return sp.csr_matrix(X.multiply(M)) if sp.issparse(X) else X * M


def _encoder_input(X, mask, keep_prob, mask_mode):
    if mask_mode == "dropout":
        h0 = _l2n(X)
        return h0 if mask is None else _times(h0, mask) * (1.0 / keep_prob)
    return _l2n(X if mask is None else _times(X, mask))


def _forward(X, P, mask, eps, keep_prob, mask_mode):
    """All intermediates of the forward pass (float64)."""
    h0 = _encoder_input(X, mask, keep_prob, mask_mode)
    h1 = np.tanh(np.asarray(h0 @ P["W1"]) + P["b1"])
    o2 = h1 @ P["W2"] + P["b2"]
    d = o2.shape[1] // 2
    mu, logvar = o2[:, :d], o2[:, d:]
    sigma = np.exp(0.5 * logvar)
    z = mu if eps is None else mu + eps * sigma
    h3 = np.tanh(z @ P["W3"] + P["b3"])
    logits = h3 @ P["W4"] + P["b4"]
    return dict(h0=h0, h1=h1, mu=mu, logvar=logvar, sigma=sigma, z=z, h3=h3, logits=logits)


def _log_softmax(logits):
    m = logits.max(axis=1, keepdims=True)
    return logits - (m + np.log(np.exp(logits - m).sum(axis=1, keepdims=True)))


def _nll_kl(X, logits, mu, logvar):
    nll = float(np.mean(-_row_dot(X, _log_softmax(logits))))
    kl = float(np.mean(0.5 * (-logvar + np.exp(logvar) + mu * mu - 1.0).sum(axis=1)))
    return nll, kl


def _pia_parts(mu, logvar, X, E):
    """``(n, valid, ebar, per-user closed-form L_A with NaN off V)``."""
    n = _row_sums(X)
    valid = n > 0
    safe = np.where(valid, n, 1.0)
    ebar = np.asarray(X @ E) / safe[:, None]
    spread = np.asarray(X @ (E * E).sum(axis=1)).ravel() / safe - (ebar * ebar).sum(axis=1)
    la = ((mu - ebar) ** 2).sum(axis=1) + np.exp(logvar).sum(axis=1) + spread
    return n, valid, ebar, np.where(valid, la, np.nan)


def _reduce(per_user, valid, reduction):
    if reduction == "none":
        return per_user
    total = float(per_user[valid].sum())
    return total if reduction == "sum" else total / int(valid.sum())


def _pia_grads(mu, logvar, X, E, n, valid, ebar, w):
    """Gradients of ``sum_u w_u L_A(u)`` (w = 0 off V)."""
    w = np.where(valid, w, 0.0)
    dmu = 2.0 * w[:, None] * (mu - ebar)
    dlogvar = w[:, None] * np.exp(logvar)
    a = w / np.where(valid, n, 1.0)                                  # w_u / n_u
    A = sp.csr_matrix(sp.diags(a) @ X) if sp.issparse(X) else X * a[:, None]
    colsum = np.asarray(A.sum(axis=0)).ravel()                       # sum_u w_u X_uk / n_u
    dE = 2.0 * (colsum[:, None] * E - np.asarray(A.T @ mu))
    return dmu, dlogvar, dE


# --------------------------------------------------------------------------- model


def multvae_init(n_items, rng, hidden=600, latent=200):
    """Parameters of the official ``MultVAE`` (p_dims = [latent, hidden, n_items], q mirrored
    with a last layer of width 2 latent): weights Glorot-uniform ``U(-r, r)``,
    ``r = sqrt(6 / (fan_in + fan_out))`` (``xavier_initializer``), biases truncated normal with
    std 1e-3, redrawn outside 2 std (``truncated_normal_initializer``). Drawn in the order
    W1 b1 W2 b2 W3 b3 W4 b4 from the NumPy Generator ``rng``. Returns a dict of float64 arrays."""
    I, H, d = V.multvae_sizes(n_items, hidden, latent)
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")

    def glorot(fan_in, fan_out):
        r = np.sqrt(6.0 / (fan_in + fan_out))
        return rng.uniform(-r, r, size=(fan_in, fan_out))

    def tnormal(size):
        b = rng.normal(0.0, _BIAS_STD, size)
        bad = np.abs(b) > 2 * _BIAS_STD
        while bad.any():
            b[bad] = rng.normal(0.0, _BIAS_STD, int(bad.sum()))
            bad = np.abs(b) > 2 * _BIAS_STD
        return b

    out = {}
    for k, (fi, fo) in zip(("1", "2", "3", "4"), ((I, H), (H, 2 * d), (d, H), (H, I))):
        out["W" + k] = glorot(fi, fo)
        out["b" + k] = tnormal(fo)
    return out


def multvae_draw(rng, n_users, n_items, latent=200, keep_prob=0.5):
    """The randomness of one training step, as inputs: ``mask`` (U, I) float64 in {0, 1}, each
    entry 1 with probability ``keep_prob`` (``rng.random < keep_prob``), then ``eps`` (U, latent)
    standard normal. Pass ``mask=None`` / ``eps=None`` to the model for evaluation."""
    I, _, d, U = V.multvae_sizes(n_items, 1, latent, n_users)
    kp = V.rv_keep_prob(keep_prob)
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    mask = (rng.random((U, I)) < kp).astype(np.float64)
    eps = rng.standard_normal((U, d))
    return mask, eps


def multvae_forward(X, params, mask=None, eps=None, keep_prob=0.5, mask_mode="dropout"):
    """``(logits (U, I), mu (U, d), logvar (U, d))`` of the Mult-VAE forward pass (module
    docstring). ``mask=None``: no input masking; ``eps=None``: z = mu (evaluation uses both)."""
    X, xv = _interactions(X)
    P = _params64(params)
    mask = V.host_array(mask, "mask") if mask is not None else None
    eps = V.host_array(eps, "eps") if eps is not None else None
    V.multvae_forward_args(X, P, mask, eps, keep_prob, mask_mode, x_values=xv)
    P = {k: np.asarray(P[k], dtype=np.float64) for k in V.RV_PARAM_KEYS}
    f = _forward(_as64(X), P, _f64(mask, "mask"), _f64(eps, "eps"), float(keep_prob), mask_mode)
    return f["logits"], f["mu"], f["logvar"]


def multvae_loss(X, logits, mu, logvar, beta):
    """``(loss, nll, kl)`` as Python floats: ``nll = mean_u -sum_i X_ui log_softmax(logits)_ui``
    (raw binary X as the target), ``kl = mean_u 0.5 sum_k (-logvar + exp(logvar) + mu^2 - 1)``,
    ``loss = nll + beta kl``. Users with no items contribute 0 to nll (they still count in U)."""
    X, xv = _interactions(X)
    logits, mu, logvar = (V.host_array(a, n) for a, n in
                          ((logits, "logits"), (mu, "mu"), (logvar, "logvar")))
    _, beta = V.multvae_loss_args(X, logits, mu, logvar, beta, x_values=xv)
    nll, kl = _nll_kl(_as64(X), *(np.asarray(a, dtype=np.float64) for a in (logits, mu, logvar)))
    return nll + beta * kl, nll, kl


def multvae_value_and_grad(X, params, beta, mask, eps, keep_prob=0.5, mask_mode="dropout",
                           E=None, lam_A=0.0):
    """``(loss, grads)``: ``loss = nll + beta kl (+ lam_A pia_anchor_loss(mu, logvar, X, E))``
    as a Python float, with mu and logvar from the (masked) forward pass and the anchor sets from
    the unmasked X; ``grads`` a dict W1 b1 W2 b2 W3 b3 W4 b4 (+ "E" when E is given) of float64
    arrays from the explicit backward of the module docstring. ``mask`` and ``eps`` are
    required positionally and may be None (evaluation mode)."""
    X, xv = _interactions(X)
    P = _params64(params)
    mask = V.host_array(mask, "mask") if mask is not None else None
    eps = V.host_array(eps, "eps") if eps is not None else None
    E = V.host_array(E, "E") if E is not None else None
    _, beta, lam_A = V.multvae_value_and_grad_args(X, P, beta, mask, eps, keep_prob, mask_mode,
                                                   E, lam_A, x_values=xv)
    P = {k: np.asarray(P[k], dtype=np.float64) for k in V.RV_PARAM_KEYS}
    X = _as64(X)
    eps = _f64(eps, "eps")
    f = _forward(X, P, _f64(mask, "mask"), eps, float(keep_prob), mask_mode)
    mu, logvar, sigma, logits = f["mu"], f["logvar"], f["sigma"], f["logits"]
    U = logits.shape[0]
    nll, kl = _nll_kl(X, logits, mu, logvar)
    loss = nll + beta * kl

    n = _row_sums(X)
    softmax = np.exp(_log_softmax(logits))
    dlogits = (softmax * n[:, None] - (X.toarray() if sp.issparse(X) else X)) / U
    grads = {"W4": f["h3"].T @ dlogits, "b4": dlogits.sum(axis=0)}
    da3 = (dlogits @ P["W4"].T) * (1.0 - f["h3"] ** 2)
    grads["W3"] = f["z"].T @ da3
    grads["b3"] = da3.sum(axis=0)
    dz = da3 @ P["W3"].T
    dmu = dz + beta * mu / U
    dlogvar = beta * (np.exp(logvar) - 1.0) / (2.0 * U)
    if eps is not None:
        dlogvar = dlogvar + dz * eps * sigma / 2.0
    if E is not None:
        E = np.asarray(E, dtype=np.float64)
        n_, valid, ebar, la = _pia_parts(mu, logvar, X, E)
        loss += lam_A * _reduce(la, valid, "mean")
        w = np.full(U, 1.0 / int(valid.sum()))
        gmu, glv, gE = _pia_grads(mu, logvar, X, E, n_, valid, ebar, w)
        dmu = dmu + lam_A * gmu
        dlogvar = dlogvar + lam_A * glv
        grads["E"] = lam_A * gE
    do2 = np.concatenate([dmu, dlogvar], axis=1)
    grads["W2"] = f["h1"].T @ do2
    grads["b2"] = do2.sum(axis=0)
    da1 = (do2 @ P["W2"].T) * (1.0 - f["h1"] ** 2)
    grads["W1"] = np.asarray(f["h0"].T @ da1)        # CSR h0: a sparse-dense product
    grads["b1"] = da1.sum(axis=0)
    order = V.RV_PARAM_KEYS + (("E",) if "E" in grads else ())
    return float(loss), {k: grads[k] for k in order}


def anneal_beta(step, cap=0.2, total_anneal_steps=200_000):
    """``min(cap, step / total_anneal_steps)`` (step = updates already made, so the first update
    uses 0); ``total_anneal_steps = 0`` gives ``cap`` (the official training loop)."""
    step, cap, total = V.anneal_beta_args(step, cap, total_anneal_steps)
    if total == 0:
        return cap
    return min(cap, step / total)


# --------------------------------------------------------------------------- PIA


def item_centroids(X, E):
    """``ebar = (X @ E) / n_u`` (U, d): the mean anchor of each user's items; rows with
    ``n_u = 0`` give 0."""
    X, xv = _interactions(X)
    E = V.host_array(E, "E")
    V.item_centroids_args(X, E, x_values=xv)
    X = _as64(X)
    n = _row_sums(X)
    return np.asarray(X @ np.asarray(E, dtype=np.float64)) / np.where(n > 0, n, 1.0)[:, None]


def pia_anchor_loss(mu, logvar, X, E, reduction="mean", z=None):
    """PIA's anchor loss (module docstring): per user the closed form
    ``||mu - ebar||^2 + sum exp(logvar) + spread`` or, with samples ``z`` (S, U, d), the Monte
    Carlo estimate ``mean_s mean_{i in S_u} ||z_su - e_i||^2``. ``reduction``: "mean" over users
    with items (Python float), "sum" over them (Python float), "none" (U,) with NaN for users
    without items. An X with no interaction at all is refused."""
    X, xv = _interactions(X)
    mu, logvar, E = (V.host_array(a, n) for a, n in ((mu, "mu"), (logvar, "logvar"), (E, "E")))
    z = V.host_array(z, "z") if z is not None else None
    V.pia_args(mu, logvar, X, E, reduction, z, x_values=xv)
    X = _as64(X)
    mu, logvar, E = (np.asarray(a, dtype=np.float64) for a in (mu, logvar, E))
    n, valid, _, la = _pia_parts(mu, logvar, X, E)
    if z is not None:
        z = np.asarray(z, dtype=np.float64)
        safe = np.where(valid, n, 1.0)
        XE = np.asarray(X @ E)                                        # sum_{i in S_u} e_i
        XE2 = np.asarray(X @ (E * E).sum(axis=1)).ravel()             # sum_{i in S_u} ||e_i||^2
        # sum_{i in S_u} ||z - e_i||^2 = n_u ||z||^2 - 2 z . XE_u + XE2_u, averaged over s, i
        per = (n * (z * z).sum(axis=2) - 2.0 * (z * XE).sum(axis=2) + XE2).mean(axis=0) / safe
        la = np.where(valid, per, np.nan)
    return _reduce(la, valid, reduction)


def pia_anchor_grad(mu, logvar, X, E):
    """``(dmu, dlogvar, dE)`` of ``pia_anchor_loss(mu, logvar, X, E, "mean")``:
    ``dmu = 2 (mu - ebar) / |V|``, ``dlogvar = exp(logvar) / |V|`` (0 for users without items),
    ``dE_k = (1/|V|) sum_u X_uk (2/n_u)(e_k - mu_u)``."""
    X, xv = _interactions(X)
    mu, logvar, E = (V.host_array(a, n) for a, n in ((mu, "mu"), (logvar, "logvar"), (E, "E")))
    V.pia_args(mu, logvar, X, E, "mean", None, x_values=xv)
    X = _as64(X)
    mu, logvar, E = (np.asarray(a, dtype=np.float64) for a in (mu, logvar, E))
    n, valid, ebar, _ = _pia_parts(mu, logvar, X, E)
    w = np.full(mu.shape[0], 1.0 / int(valid.sum()))
    return _pia_grads(mu, logvar, X, E, n, valid, ebar, w)


def gaussian_w2(mu1, s1, mu2, s2):
    """``W2 = sqrt(||mu1 - mu2||^2 + ||s1 - s2||^2)`` (U,) per row: the 2-Wasserstein distance
    of N(mu1, diag s1^2) and N(mu2, diag s2^2) (s = standard deviations, >= 0)."""
    arrs = [V.host_array(a, n) for a, n in ((mu1, "mu1"), (s1, "s1"), (mu2, "mu2"), (s2, "s2"))]
    V.gaussian_w2_args(*arrs)
    m1, a1, m2, a2 = (np.asarray(a, dtype=np.float64) for a in arrs)
    return np.sqrt(((m1 - m2) ** 2).sum(axis=1) + ((a1 - a2) ** 2).sum(axis=1))
