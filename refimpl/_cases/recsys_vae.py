"""Registry cases, tolerances and reference VJPs of the recsys_vae family (spec recsys_vae.md;
Mult-VAE arXiv 1802.05814, PIA arXiv 2511.06781).

Model ops (REF-M): binary interaction matrices X (U, I) as dense float64 0/1 arrays (the
harness casts them to the tested dtype, exactly), parameters as a dict of float64 arrays
(``multvae_init`` plus N(0, 0.1^2) on the biases so that they matter), mask and eps from
``multvae_draw``; anchors E ~ N(0, 0.3^2). Modes covered: evaluation (mask = eps = None),
dropout (official), bernoulli (PIA, reconstructed), PIA with lam_A > 0, a user row that is all
zero (forward, loss, value_and_grad and the PIA ops, which exclude it from their mean).
Scales (contract): tiny U = 4, I = 12, d = 3, hidden 5 (<= 2 cases per op for the Numba
simulator); small U = 64, I = 500, d = 16, hidden 32; bench CPU U = 100, I = 1447, d = 200,
hidden 600 (the demo size), GPU (lazy, float32) U = 500, I = 20108, d = 200, hidden 600.

Evaluation metrics (REF-E): see the section at the end.
Every case is deterministic given ``rng``.
"""

from __future__ import annotations

import numpy as np

from refimpl._cases import Case

MULTVAE_PAPER = "1802.05814"   # Mult-VAE: variational autoencoders for collaborative filtering
PIA_PAPER = "2511.06781"       # PIA: mechanisms of collaborative learning in VAE recommenders

# dtype -> output name ("*" = default) -> (rtol, atol)
TOL = {
    "float64": {"*": (1e-10, 1e-10)},
    "float32": {"*": (5e-4, 1e-5)},
}

DTYPES = ("float32", "float64")


def _check_scale(scale):
    if scale not in ("tiny", "small", "bench"):
        raise ValueError(f"unknown scale {scale!r}; expected 'tiny', 'small' or 'bench'")


# ==================================================================== Mult-VAE and PIA (REF-M)

MV_TINY = (4, 12, 5, 3)                  # (U, I, H, d)
MV_SMALL = (64, 500, 32, 16)
MV_BENCH_CPU = (100, 1447, 600, 200)     # the demo size (ML-100k after filtering)
MV_BENCH_GPU = (500, 20108, 600, 200)    # ML-20M's items, batch 500
MV_DENSITY = {MV_TINY: 0.25, MV_SMALL: 0.05, MV_BENCH_CPU: 0.04, MV_BENCH_GPU: 0.004}


def interactions(rng, U, I, density, empty_row=None):
    """Binary X (U, I) float64: Bernoulli(density) entries, every row with >= 1 item except
    ``empty_row`` (all zero)."""
    X = (rng.random((U, I)) < density).astype(np.float64)
    for u in range(U):
        if not X[u].any():
            X[u, rng.integers(0, I)] = 1.0
    if empty_row is not None:
        X[empty_row] = 0.0
    return X


def params(rng, I, H, d):
    """``multvae_init`` weights with N(0, 0.1^2) added to the (~1e-3) biases."""
    from refimpl._multvae import multvae_init

    P = multvae_init(I, rng, hidden=H, latent=d)
    for k in ("b1", "b2", "b3", "b4"):
        P[k] = P[k] + 0.1 * rng.standard_normal(P[k].shape)
    return P


def anchors(rng, I, d):
    return 0.3 * rng.standard_normal((I, d))


def _label(size, tag):
    U, I, H, d = size
    return f"U{U}_I{I}_H{H}_d{d}_{tag}"


def _model_kw(rng, size, mode, empty_row=None, keep_prob=0.5, pia=False, lam_A=1.0):
    """Inputs of forward / value_and_grad. ``mode``: "eval" (mask = eps = None), "dropout",
    "bernoulli", "eps_only" (mask None, eps given)."""
    U, I, H, d = size
    from refimpl._multvae import multvae_draw

    X = interactions(rng, U, I, MV_DENSITY[size], empty_row)
    kw = dict(X=X, params=params(rng, I, H, d))
    mask, eps = multvae_draw(rng, U, I, d, keep_prob)
    if mode in ("dropout", "bernoulli"):
        kw.update(mask=mask, eps=eps, keep_prob=keep_prob)
        if mode == "bernoulli":
            kw["mask_mode"] = "bernoulli"
    elif mode == "eps_only":
        kw.update(mask=None, eps=eps)
    else:
        kw.update(mask=None, eps=None)
    if pia:
        kw.update(E=anchors(rng, I, d), lam_A=lam_A)
    return kw


def _bench(rng, mode, make, gpu=True):
    out = [Case(_label(MV_BENCH_CPU, mode), lambda: make(rng, MV_BENCH_CPU), "cpu")]
    if gpu:
        out.append(Case(_label(MV_BENCH_GPU, mode), lambda: make(rng, MV_BENCH_GPU), "gpu",
                        ("float32",)))
    return out


def cases_multvae_forward(rng, scale):
    """``multvae_forward(X, params, mask, eps, keep_prob, mask_mode)``: evaluation with an empty
    user, dropout, bernoulli, eps only, keep_prob 0.8."""
    _check_scale(scale)
    if scale == "bench":
        def make(r, size):
            kw = _model_kw(r, size, "dropout")
            return kw
        return _bench(rng, "dropout", make)
    if scale == "tiny":
        return [Case(_label(MV_TINY, "eval_empty_row"), _model_kw(rng, MV_TINY, "eval", 2)),
                Case(_label(MV_TINY, "dropout"), _model_kw(rng, MV_TINY, "dropout"))]
    S = MV_SMALL
    return [Case(_label(S, "eval_empty_row"), _model_kw(rng, S, "eval", 5)),
            Case(_label(S, "dropout"), _model_kw(rng, S, "dropout")),
            Case(_label(S, "dropout_keep0.8_empty_row"), _model_kw(rng, S, "dropout", 0, 0.8)),
            Case(_label(S, "bernoulli"), _model_kw(rng, S, "bernoulli")),
            Case(_label(S, "eps_only"), _model_kw(rng, S, "eps_only"))]


def _loss_kw(rng, size, beta, empty_row=None, scale_logits=2.0):
    U, I, _, d = size
    return dict(X=interactions(rng, U, I, MV_DENSITY[size], empty_row),
                logits=scale_logits * rng.standard_normal((U, I)),
                mu=0.5 * rng.standard_normal((U, d)),
                logvar=0.3 * rng.standard_normal((U, d)) - 0.5, beta=beta)


def cases_multvae_loss(rng, scale):
    """``multvae_loss(X, logits, mu, logvar, beta)``: the annealing cap 0.2, beta = 0 (first
    update), beta = 1 (the plain ELBO), large logits (the max shift matters), an empty user."""
    _check_scale(scale)
    if scale == "bench":
        return _bench(rng, "beta0.2", lambda r, size: _loss_kw(r, size, 0.2))
    if scale == "tiny":
        return [Case(_label(MV_TINY, "beta0.2_empty_row"), _loss_kw(rng, MV_TINY, 0.2, 1)),
                Case(_label(MV_TINY, "beta0"), _loss_kw(rng, MV_TINY, 0.0))]
    S = MV_SMALL
    return [Case(_label(S, "beta0.2_empty_row"), _loss_kw(rng, S, 0.2, 3)),
            Case(_label(S, "beta0"), _loss_kw(rng, S, 0.0)),
            Case(_label(S, "beta1_large_logits"), _loss_kw(rng, S, 1.0, scale_logits=30.0))]


def cases_multvae_value_and_grad(rng, scale):
    """``multvae_value_and_grad(X, params, beta, mask, eps, keep_prob, mask_mode, E, lam_A)``:
    dropout with an empty user, bernoulli + PIA, evaluation mode, PIA with lam_A = 0 (dE = 0)."""
    _check_scale(scale)

    def vg(r, size, mode, beta, empty_row=None, pia=False, lam_A=1.0, keep_prob=0.5):
        kw = _model_kw(r, size, mode, empty_row, keep_prob, pia, lam_A)
        kw["beta"] = beta
        return kw

    if scale == "bench":
        return _bench(rng, "dropout", lambda r, size: vg(r, size, "dropout", 0.2))
    if scale == "tiny":
        return [Case(_label(MV_TINY, "dropout_beta0.2_empty_row"),
                     vg(rng, MV_TINY, "dropout", 0.2, 3)),
                Case(_label(MV_TINY, "bernoulli_pia_lam1_empty_row"),
                     vg(rng, MV_TINY, "bernoulli", 0.2, 0, pia=True, lam_A=1.0))]
    S = MV_SMALL
    return [Case(_label(S, "dropout_beta0.2_empty_row"), vg(rng, S, "dropout", 0.2, 7)),
            Case(_label(S, "eval_beta0"), vg(rng, S, "eval", 0.0)),
            Case(_label(S, "bernoulli_pia_lam0.5_empty_row"),
                 vg(rng, S, "bernoulli", 0.2, 1, pia=True, lam_A=0.5)),
            Case(_label(S, "dropout_keep0.8_pia_lam10"),
                 vg(rng, S, "dropout", 1.0, pia=True, lam_A=10.0, keep_prob=0.8)),
            Case(_label(S, "bernoulli_pia_lam0"), vg(rng, S, "bernoulli", 0.2, pia=True,
                                                     lam_A=0.0))]


def outputs_value_and_grad(result, kwargs):
    """``(loss, grads)`` -> {"loss", "dW1", "db1", ..., "db4"} (+ "dE" when E is given)."""
    loss, grads = result
    out = {"loss": loss}
    out.update({"d" + k: v for k, v in grads.items()})
    return out


def _pia_kw(rng, size, empty_row=None, logvar_shift=-1.0):
    U, I, _, d = size
    X = interactions(rng, U, I, MV_DENSITY[size], empty_row)
    return dict(mu=0.5 * rng.standard_normal((U, d)),
                logvar=0.3 * rng.standard_normal((U, d)) + logvar_shift,
                X=X, E=anchors(rng, I, d))


def cases_pia_anchor_loss(rng, scale):
    """``pia_anchor_loss(mu, logvar, X, E)`` with the default "mean" reduction (the same cases
    serve ``pia_anchor_grad``, which has no ``reduction``); an empty user is excluded from the
    mean. ``cases_pia_anchor_loss_reductions`` adds "sum" and "none"."""
    _check_scale(scale)
    if scale == "bench":
        return _bench(rng, "mean", lambda r, size: _pia_kw(r, size))
    if scale == "tiny":
        return [Case(_label(MV_TINY, "mean_empty_row"), _pia_kw(rng, MV_TINY, 2)),
                Case(_label(MV_TINY, "mean_wide_q"), _pia_kw(rng, MV_TINY, logvar_shift=0.5))]
    S = MV_SMALL
    return [Case(_label(S, "mean_empty_row"), _pia_kw(rng, S, 10)),
            Case(_label(S, "mean"), _pia_kw(rng, S)),
            Case(_label(S, "mean_wide_q"), _pia_kw(rng, S, logvar_shift=0.5))]


def cases_pia_anchor_loss_reductions(rng, scale):
    """Extra cases of ``pia_anchor_loss`` only (not of ``pia_anchor_grad``): reduction "sum"
    (with an empty user) and "none" (no empty user: its NaN would reach autograd's dE)."""
    _check_scale(scale)
    size = {"tiny": MV_TINY, "small": MV_SMALL, "bench": MV_BENCH_CPU}[scale]
    return [Case(_label(size, "sum_empty_row"), dict(_pia_kw(rng, size, 1), reduction="sum")),
            Case(_label(size, "none"), dict(_pia_kw(rng, size), reduction="none"))]


def vjp_multvae_loss(kw, cot):
    """d(cot * loss)/d(logits, mu, logvar) with loss = nll + beta kl:
    ``dlogits = cot (softmax n_u - X) / U``, ``dmu = cot beta mu / U``,
    ``dlogvar = cot beta (exp(logvar) - 1) / (2U)``."""
    X, logits, mu, logvar = (np.asarray(kw[k], dtype=np.float64)
                             for k in ("X", "logits", "mu", "logvar"))
    c, beta, U = float(np.asarray(cot)), float(kw["beta"]), X.shape[0]
    m = logits.max(axis=1, keepdims=True)
    p = np.exp(logits - m)
    p /= p.sum(axis=1, keepdims=True)
    n = X.sum(axis=1, keepdims=True)
    return {"dlogits": c * (p * n - X) / U, "dmu": c * beta * mu / U,
            "dlogvar": c * beta * (np.exp(logvar) - 1.0) / (2.0 * U)}


def vjp_pia_anchor_loss(kw, cot):
    """d(sum cot * L)/d(mu, logvar, E) of ``pia_anchor_loss`` for each reduction: per-user
    weights w_u (mean: cot/|V|, sum: cot, none: cot_u; 0 for users without items), then
    ``dmu = 2 w (mu - ebar)``, ``dlogvar = w exp(logvar)``,
    ``dE_k = sum_u w_u X_uk (2/n_u)(e_k - mu_u)``."""
    X, mu, logvar, E = (np.asarray(kw[k], dtype=np.float64) for k in ("X", "mu", "logvar", "E"))
    red = kw.get("reduction", "mean")
    n = X.sum(axis=1)
    valid = n > 0
    c = np.asarray(cot, dtype=np.float64)
    if red == "none":
        w = np.where(valid, c, 0.0)
    else:
        w = np.where(valid, float(c) / (valid.sum() if red == "mean" else 1.0), 0.0)
    safe = np.where(valid, n, 1.0)
    ebar = (X @ E) / safe[:, None]
    A = X * (w / safe)[:, None]
    return {"dmu": 2.0 * w[:, None] * (mu - ebar), "dlogvar": w[:, None] * np.exp(logvar),
            "dE": 2.0 * (A.sum(axis=0)[:, None] * E - A.T @ mu)}


# ==================================================================== evaluation metrics (REF-E)
#
# REF-E appends the recall_at_k / ndcg_at_k cases below this line.
#
# recall_at_k / ndcg_at_k (refimpl._recsys_eval). Scores: per user a random permutation of
# 0..I-1, centred and scaled by 2^-6 — distinct and exact in float32 (integers < 2^24 times a
# power of two), so the ranking is tie-free and unchanged by the cast (the official top-k order
# among ties is arbitrary). X_fold / X_heldout: disjoint 0/1 float64 arrays (exact in every
# dtype), bool in one small case and in the GPU case (contract: any numeric dtype or bool).
# Every case has a user with |T| = 0 (NaN), and all but k = 1 a user with fewer than k candidate
# items (I - |F| < k, a shorter list); the tiny k = 5 case scores one non-fold item -inf (not
# ranked); one tiny case has k > I.
# Tolerances (TOL_METRICS): the ranking must be identical; the values then differ only by the
# arithmetic of the output dtype. Recall is one division of two exact integers: bit-exact in
# float64, one float32 rounding (<= 2^-24 relative) in float32. NDCG sums up to k discounts
# in an order each backend chooses: rtol 1e-12 (float64) / 5e-6 (float32, sum of <= 100
# terms). The smallest change a ranking error can make is far larger: moving a target across
# rank r <= 100 changes NDCG by >= (1/log2(r+1) - 1/log2(r+2)) / IDCG >= 3.2e-4 / 21.3 = 1.5e-5.

TOL_METRICS = {
    "float64": {"recall": (0.0, 0.0), "ndcg": (1e-12, 0.0), "*": (0.0, 0.0)},
    "float32": {"recall": (1.2e-7, 0.0), "ndcg": (5e-6, 0.0), "*": (1.2e-7, 0.0)},
}

METRIC_TINY = ((4, 12, 5), (4, 12, 20))                          # (U, I, k); k = 20 > I
METRIC_SMALL = ((64, 500, 1), (64, 500, 20), (64, 500, 100))     # the last with bool X
METRIC_BENCH_CPU = tuple((1000, 1682, k) for k in (20, 50, 100))
METRIC_BENCH_GPU = (10_000, 20_000, 100)
# (fold-in density, target density) per item count (other I: 0.05, 0.03)
METRIC_DENSITY = {12: (0.25, 0.25), 500: (0.05, 0.03), 1682: (0.03, 0.02), 20_000: (0.004, 0.002)}


def metric_scores(rng, U, I):
    """(U, I) float64 scores: each row a random permutation of (0..I-1) - I // 2, times 2^-6."""
    perm = rng.permuted(np.tile(np.arange(I, dtype=np.int32), (U, 1)), axis=1)
    return (perm - I // 2).astype(np.float64) * 2.0 ** -6


def metric_inputs(rng, U, I, k, *, as_bool=False, neg_inf=False):
    """``scores, X_fold, X_heldout, k``: disjoint fold-in / target sets, every user with >= 1
    target except user 0 (|T| = 0); user 1 keeps only max(1, k // 2) < k candidate items when
    k >= 2 (and k // 2 < I); ``neg_inf``: user U - 1 scores one non-fold, non-target item -inf."""
    f_dens, t_dens = METRIC_DENSITY.get(I, (0.05, 0.03))
    scores = metric_scores(rng, U, I)
    fold = rng.random((U, I), dtype=np.float32) < f_dens
    held = ~fold & (rng.random((U, I), dtype=np.float32) < t_dens)
    for u in range(1, U):
        if not held[u].any():
            held[u, rng.choice(np.flatnonzero(~fold[u]))] = True
    held[0] = False
    c = max(1, k // 2)
    if k >= 2 and c < I and U > 1:
        cand = rng.choice(I, size=c, replace=False)
        fold[1] = True
        fold[1, cand] = False
        held[1] = False
        held[1, cand[: max(1, c // 2)]] = True
    if neg_inf:
        free = np.flatnonzero(~fold[U - 1] & ~held[U - 1])
        scores[U - 1, free[0]] = -np.inf
    to = (lambda a: a) if as_bool else (lambda a: a.astype(np.float64))
    return {"scores": scores, "X_fold": to(fold), "X_heldout": to(held), "k": k}


def _metric_cases(rng, scale):
    _check_scale(scale)
    if scale == "tiny":
        (U, I, k), (U2, I2, k2) = METRIC_TINY
        return [Case(f"U{U}_I{I}_k{k}", metric_inputs(rng, U, I, k, neg_inf=True)),
                Case(f"U{U2}_I{I2}_k{k2}", metric_inputs(rng, U2, I2, k2))]
    if scale == "small":
        last = len(METRIC_SMALL) - 1
        return [Case(f"U{U}_I{I}_k{k}" + ("_bool" if j == last else ""),
                     metric_inputs(rng, U, I, k, as_bool=j == last))
                for j, (U, I, k) in enumerate(METRIC_SMALL)]
    out = [Case(f"U{U}_I{I}_k{k}", (lambda U=U, I=I, k=k: metric_inputs(rng, U, I, k)), "cpu")
           for U, I, k in METRIC_BENCH_CPU]
    U, I, k = METRIC_BENCH_GPU
    out.append(Case(f"U{U}_I{I}_k{k}_bool", lambda: metric_inputs(rng, U, I, k, as_bool=True),
                    "gpu", ("float32",)))
    return out


def cases_recall_at_k(rng, scale):
    return _metric_cases(rng, scale)


def cases_ndcg_at_k(rng, scale):
    return _metric_cases(rng, scale)
