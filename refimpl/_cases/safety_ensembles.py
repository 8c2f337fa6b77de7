"""Registry cases, tolerances and reference VJPs of the safety_ensembles family
(spec safety_ensembles.md; Antibody arXiv 2603.00498, IBDR arXiv 2506.07247).

Antibody (REF-A): flat parameter/gradient vectors of P entries (tiny P = 10, small P = 10^4,
bench CPU P = 10^6, GPU P = 25,165,824); the token-level ops use a linear head
(B, T, d, V) with ``ignore_index`` (-100) labels on a prompt prefix and right padding (one
row of a tiny case has no completion token), and sample weights ``w`` from
``antibody_weights`` of random per-sample NLLs. Labels stay int64 (the harness casts only
float arrays to the tested dtype); ``w`` is a float array (cast to the tested dtype, it must
have the dtype of ``H``).

IBDR (REF-B): see the IBDR section at the end.
Every case is deterministic given ``rng``.
"""

from __future__ import annotations

import numpy as np

from refimpl._cases import Case

ANTIBODY_PAPER = "2603.00498"   # Antibody: strengthening defense against harmful fine-tuning
IBDR_PAPER = "2506.07247"       # IBDR: Bayesian-DRO diversity-regularised ensembles

# dtype -> output name ("*" = default) -> (rtol, atol)
TOL = {
    "float64": {"*": (1e-10, 1e-10)},
    "float32": {"*": (5e-4, 1e-5)},
    # bf16 inputs (torch only), weighted CE / token mean NLL (spec: rtol 0.5, atol 5e-2)
    "bfloat16": {"*": (5e-1, 5e-2)},
}

DTYPES = ("float32", "float64")
WCE_DTYPES = ("float32", "float64", "bfloat16")   # token_mean_nll, weighted_token_ce(_grad)


def _check_scale(scale):
    if scale not in ("tiny", "small", "bench"):
        raise ValueError(f"unknown scale {scale!r}; expected 'tiny', 'small' or 'bench'")


# ==================================================================== Antibody (REF-A)
#
# Flat vectors: g ~ N(0, 1); g_p = g_h + 0.3 noise (d = g_h - g_p is a fraction of g_h, as the
# gradient at a nearby point); g_s partly aligned with d so that lam_raw is not just eta.
# Head: logits O(1) (W / sqrt(d)), prompt prefix + right padding carry ignore_index = -100.

AB_TINY_P, AB_SMALL_P = 10, 10_000
# (P, where, dtypes): CPU every dtype the backend runs; GPU: LoRA r = 32 on q, k, v x 32, fp32
AB_BENCH_P = ((1_000_000, "cpu", None), (25_165_824, "gpu", ("float32",)))
AB_TINY = (3, 5, 8, 11)                                    # (B, T, d, V)
AB_SMALL = (4, 16, 32, 257)
AB_CHUNKS = (7, 50)                                        # blocks that do not divide
IGNORE = -100


def _ab_vectors(rng, P):
    g_h = rng.normal(size=P)
    g_p = g_h + 0.3 * rng.normal(size=P)
    g_s = 0.5 * (g_h - g_p) + rng.normal(size=P)
    return dict(theta=rng.normal(size=P), g_s=g_s, g_h=g_h, g_p=g_p, g_r=rng.normal(size=P))


def _ab_bench_vectors(rng, P, names):
    def build():
        v = _ab_vectors(rng, P)
        return {k: v[k] for k in names}
    return build


def token_inputs(rng, B, T, d, V, *, bias=True, empty_row=None, full=False):
    """``H, W, b, labels``: labels in [0, V) on completion tokens, ``-100`` on a random prompt
    prefix and right padding (every row has >= 1 completion token except ``empty_row``;
    ``full``: every position is a completion token)."""
    H = rng.normal(size=(B, T, d))
    W = rng.normal(size=(V, d)) / np.sqrt(d)
    b = 0.1 * rng.normal(size=V) if bias else None
    labels = rng.integers(0, V, size=(B, T)).astype(np.int64)
    if not full:
        keep = np.zeros((B, T), dtype=bool)
        for r in range(B):
            prompt = int(rng.integers(0, max(T // 3, 1)))
            end = int(rng.integers(min(prompt + 1, T), T + 1))
            keep[r, prompt:end] = True
        if empty_row is not None:
            keep[empty_row] = False
        labels[~keep] = IGNORE
    return H, W, b, labels


def _ab_w(rng, B):
    """Sample weights as the code makes them: softmax of random NLL differences (tau = 1)."""
    from refimpl._antibody import antibody_weights

    return antibody_weights(rng.uniform(1.0, 4.0, B), rng.uniform(1.0, 4.0, B), tau=1.0)


def _ab_label(B, T, d, V):
    return f"B{B}_T{T}_d{d}_V{V}"


def _ab_head_kw(rng, size, *, bias=True, empty_row=None, chunks=None, weights=False, full=False,
                **extra):
    B, T, d, V = size
    H, W, b, labels = token_inputs(rng, B, T, d, V, bias=bias, empty_row=empty_row, full=full)
    kw = dict(H=H, W=W, labels=labels)
    if weights:
        kw["w"] = _ab_w(rng, B)
    if b is not None:
        kw["b"] = b
    if chunks is not None:
        kw.update(token_chunk=chunks[0], vocab_chunk=chunks[1])
    kw.update(extra)
    return kw


# Bench sizes (spec): weighted CE CPU (4, 64, 256, 8192) in every dtype the backend runs (the
# NumPy reference is float64 only; the spec's CPU dtype is fp32) (vocab blocks of 2048), GPU
# (16, 256, 4096, 32000) bf16 (N = 4096 tokens; vocab blocks of 8192: 4096 x 8192 fp32 logits
# = 134 MB of workspace, under the 0.25 GB target).
AB_BENCH_HEAD = (((4, 64, 256, 8192), "cpu", (None, 2048), None),
                 ((16, 256, 4096, 32000), "gpu", (4096, 8192), ("bfloat16",)))


def _ab_bench_head(rng, weights, gpu=True):
    out = []
    for size, where, chunks, dtypes in AB_BENCH_HEAD:
        if where == "gpu" and not gpu:
            continue
        build = (lambda size=size, chunks=chunks:
                 _ab_head_kw(rng, size, bias=False, chunks=chunks, weights=weights))
        out.append(Case(_ab_label(*size), build, where, dtypes))
    return out


def cases_harmful_perturb(rng, scale):
    """``harmful_perturb(theta, g_h, alpha, eps=)``: alpha 0.1 (code), a large alpha, g_h = 0."""
    _check_scale(scale)
    if scale == "bench":
        return [Case(f"P{P}", _ab_bench_vectors(rng, P, ("theta", "g_h")), where, dtypes)
                for P, where, dtypes in AB_BENCH_P]
    P = AB_TINY_P if scale == "tiny" else AB_SMALL_P
    v = _ab_vectors(rng, P)
    out = [Case(f"P{P}_alpha0.1", dict(theta=v["theta"], g_h=v["g_h"], alpha=0.1))]
    if scale == "tiny":
        out.append(Case(f"P{P}_zero_grad", dict(theta=v["theta"], g_h=np.zeros(P), alpha=0.1)))
    else:
        out.append(Case(f"P{P}_alpha2_eps1e-3", dict(theta=v["theta"], g_h=1e-3 * v["g_r"],
                                                     alpha=2.0, eps=1e-3)))
        out.append(Case(f"P{P}_zero_grad", dict(theta=v["theta"], g_h=np.zeros(P))))
    return out


def cases_antibody_lambda(rng, scale):
    """``antibody_lambda(g_s, d, lam_ema, eta=, momentum=, variant=)``: EMA init, EMA update,
    the kkt variant (whose clamp can act), Booster's momentum 1."""
    _check_scale(scale)
    if scale == "bench":
        def build():
            v = _ab_vectors(rng, AB_BENCH_P[0][0])
            return dict(g_s=v["g_s"], d=v["g_h"] - v["g_p"], lam_ema=4.8)
        return [Case(f"P{AB_BENCH_P[0][0]}", build)]
    P = AB_TINY_P if scale == "tiny" else AB_SMALL_P
    v = _ab_vectors(rng, P)
    d = v["g_h"] - v["g_p"]
    if scale == "tiny":
        return [Case(f"P{P}_cosine_init", dict(g_s=v["g_s"], d=d)),
                Case(f"P{P}_kkt_ema", dict(g_s=v["g_s"], d=d, lam_ema=4.5, variant="kkt",
                                           eta=1.0, momentum=0.9))]
    return [Case(f"P{P}_cosine_init", dict(g_s=v["g_s"], d=d)),
            Case(f"P{P}_cosine_ema", dict(g_s=v["g_s"], d=d, lam_ema=4.5, momentum=0.9)),
            Case(f"P{P}_cosine_clamped", dict(g_s=d + 0.3 * v["g_r"], d=d, lam_ema=0.0, eta=0.5)),
            Case(f"P{P}_kkt_clamped", dict(g_s=8.0 * d + 0.1 * v["g_r"], d=d, variant="kkt")),
            Case(f"P{P}_kkt_ema", dict(g_s=v["g_s"], d=d, lam_ema=2.0, variant="kkt", eta=1.0)),
            Case(f"P{P}_booster", dict(g_s=v["g_s"], d=d, lam_ema=3.0, momentum=1.0))]


def cases_antibody_align_direction(rng, scale):
    """``antibody_align_direction(g_s, g_h, g_p, g_r, lam_ema, ...)``."""
    _check_scale(scale)
    names = ("g_s", "g_h", "g_p", "g_r")
    if scale == "bench":
        return [Case(f"P{P}", (lambda P=P: dict(_ab_bench_vectors(rng, P, names)(), lam_ema=4.8)),
                     where, dtypes) for P, where, dtypes in AB_BENCH_P]
    P = AB_TINY_P if scale == "tiny" else AB_SMALL_P
    v = _ab_vectors(rng, P)
    g = {k: v[k] for k in names}
    if scale == "tiny":
        return [Case(f"P{P}_cosine_init", dict(g)),
                Case(f"P{P}_kkt_ema", dict(g, lam_ema=4.5, variant="kkt", momentum=0.9))]
    return [Case(f"P{P}_cosine_init", dict(g)),
            Case(f"P{P}_cosine_ema", dict(g, lam_ema=4.9, lam2=0.1)),
            Case(f"P{P}_kkt_ema", dict(g, lam_ema=4.5, variant="kkt", momentum=0.9)),
            Case(f"P{P}_booster", dict(g, lam_ema=2.0, momentum=1.0, lam2=0.0))]


def cases_antibody_weights(rng, scale):
    """``antibody_weights(nll_c, nll_r, tau=)``: code's tau = 1, a small tau (large logits)."""
    _check_scale(scale)
    Bs = {"tiny": (3,), "small": (16, 4), "bench": (4096,)}[scale]
    out = []
    for B in Bs:
        for tau in {"tiny": (1.0, 0.2), "small": (1.0, 0.05), "bench": (1.0,)}[scale]:
            kw = dict(nll_c=rng.uniform(0.5, 4.0, B), nll_r=rng.uniform(0.5, 4.0, B), tau=tau)
            out.append(Case(f"B{B}_tau{tau}", kw))
    return out


def cases_token_mean_nll(rng, scale):
    """``token_mean_nll(H, W, labels, b, ...)`` (tiny: one row without completion tokens)."""
    _check_scale(scale)
    if scale == "bench":
        return _ab_bench_head(rng, weights=False, gpu=False)
    if scale == "tiny":
        return [Case(f"{_ab_label(*AB_TINY)}_b1_empty_row", _ab_head_kw(rng, AB_TINY, empty_row=1)),
                Case(f"{_ab_label(*AB_TINY)}_b0", _ab_head_kw(rng, AB_TINY, bias=False))]
    return [Case(f"{_ab_label(*AB_SMALL)}_b1", _ab_head_kw(rng, AB_SMALL)),
            Case(f"{_ab_label(*AB_SMALL)}_b0_chunks{AB_CHUNKS}_empty_row",
                 _ab_head_kw(rng, AB_SMALL, bias=False, chunks=AB_CHUNKS, empty_row=2))]


def cases_weighted_token_ce(rng, scale):
    """``weighted_token_ce(H, W, labels, w, b, ...)`` (also the cases of ``_grad``)."""
    _check_scale(scale)
    if scale == "bench":
        return _ab_bench_head(rng, weights=True)
    if scale == "tiny":
        return [Case(f"{_ab_label(*AB_TINY)}_code_b1_empty_row",
                     _ab_head_kw(rng, AB_TINY, empty_row=1, weights=True)),
                Case(f"{_ab_label(*AB_TINY)}_paper_b0",
                     _ab_head_kw(rng, AB_TINY, bias=False, weights=True, variant="paper"))]
    return [Case(f"{_ab_label(*AB_SMALL)}_code_b1", _ab_head_kw(rng, AB_SMALL, weights=True)),
            Case(f"{_ab_label(*AB_SMALL)}_code_b0_chunks{AB_CHUNKS}",
                 _ab_head_kw(rng, AB_SMALL, bias=False, chunks=AB_CHUNKS, weights=True)),
            Case(f"{_ab_label(*AB_SMALL)}_paper_b1_chunks{AB_CHUNKS}_empty_row",
                 _ab_head_kw(rng, AB_SMALL, chunks=AB_CHUNKS, weights=True, empty_row=0,
                             variant="paper"))]


def vjp_weighted_token_ce(kw, cot):
    """d(cot * L)/d(H, W, b) (w held constant): ``cot * weighted_token_ce_grad(...)``; "db" only
    when the case has a bias."""
    from refimpl._antibody import weighted_token_ce_grad

    _, dH, dW, db = weighted_token_ce_grad(**kw)
    c = float(np.asarray(cot))
    out = {"dH": c * dH, "dW": c * dW}
    if kw.get("b") is not None:
        out["db"] = c * db
    return out


# ---- IBDR (REF-B)
#
# IBDR (arXiv 2506.07247; refimpl._ibdr). Particle logits are a shared part (sd 3, the ensemble's
# common prediction) plus a per-particle part (sd 1): the particles disagree moderately, so the
# K x K Grams are well conditioned (no near-identical particles whose LD sits at the jitter level,
# where float32 inputs could not meet the float32 tolerance). Labels y are int64 and stay so.
# tiny: (K, B, C) = (2, 3, 5) and (4, 3, 7) (Numba simulator: <= 2 cases per op; at K = 4,
# C = 5 the 4 x 4 Gram of 4-vectors reached condition ~4e7 and the fp64 VJP lost 8 digits); small:
# (4, 24, 100) (the official batch of 24, a VTAB-sized head) + the paper variant + alpha_div in
# {0, 3} (+ K = 1 and C = 2 without the diversity term); bench: CPU (4, 24, 100), GPU
# (4, 8192, 397) built lazily.

# (IBDR_PAPER, TOL, DTYPES and _check_scale are the header's: one tolerance table for both parts.)


def ibdr_logits(rng, K, B, C, shared=3.0, spread=1.0):
    """Particle logits (K, B, C): a shared N(0, shared^2) part + per-particle N(0, spread^2)."""
    return rng.normal(0.0, shared, (1, B, C)) + rng.normal(0.0, spread, (K, B, C))


def ibdr_labels(rng, B, C):
    return rng.integers(0, C, B).astype(np.int64)


def _ibdr_probs(rng, K, B, C):
    F = ibdr_logits(rng, K, B, C)
    z = np.exp(F - F.max(axis=-1, keepdims=True))
    return dict(probs=z / z.sum(axis=-1, keepdims=True), y=ibdr_labels(rng, B, C))


def _ibdr_loss_kw(rng, K, B, C, **kw):
    return dict(logits=ibdr_logits(rng, K, B, C), y=ibdr_labels(rng, B, C), **kw)


def cases_dpp_logdet_diversity(rng, scale):
    """Cases of ``dpp_logdet_diversity(probs, y, jitter=1e-7)``."""
    _check_scale(scale)
    if scale == "tiny":
        return [Case("K2_B3_C5", _ibdr_probs(rng, 2, 3, 5)),
                Case("K4_B3_C7", _ibdr_probs(rng, 4, 3, 7))]
    if scale == "small":
        return [Case("K4_B24_C100", _ibdr_probs(rng, 4, 24, 100)),
                Case("K8_B24_C100", _ibdr_probs(rng, 8, 24, 100)),
                Case("K4_B24_C100_jitter1e-3", dict(_ibdr_probs(rng, 4, 24, 100), jitter=1e-3))]
    return [Case("K4_B24_C100", lambda: _ibdr_probs(rng, 4, 24, 100), where="cpu"),
            Case("K4_B8192_C397", lambda: _ibdr_probs(rng, 4, 8192, 397), where="gpu")]


def cases_ibdr_loss(rng, scale):
    """Cases of ``ibdr_loss(logits, y, alpha_div=0.02, jitter=1e-7, variant="code")`` (also
    those of ``ibdr_loss_grad``)."""
    _check_scale(scale)
    if scale == "tiny":
        return [Case("K2_B3_C5", _ibdr_loss_kw(rng, 2, 3, 5)),
                Case("K4_B3_C7_paper_a3", _ibdr_loss_kw(rng, 4, 3, 7, alpha_div=3.0,
                                                        variant="paper"))]
    if scale == "small":
        return [Case("K4_B24_C100", _ibdr_loss_kw(rng, 4, 24, 100)),
                Case("K4_B24_C100_paper", _ibdr_loss_kw(rng, 4, 24, 100, variant="paper")),
                Case("K4_B24_C100_a0", _ibdr_loss_kw(rng, 4, 24, 100, alpha_div=0.0)),
                Case("K4_B24_C100_a3", _ibdr_loss_kw(rng, 4, 24, 100, alpha_div=3.0)),
                Case("K4_B24_C100_paper_a3", _ibdr_loss_kw(rng, 4, 24, 100, alpha_div=3.0,
                                                           variant="paper")),
                Case("K1_B24_C100_a0", _ibdr_loss_kw(rng, 1, 24, 100, alpha_div=0.0)),
                Case("K4_B24_C2_a0", _ibdr_loss_kw(rng, 4, 24, 2, alpha_div=0.0))]
    return [Case("K4_B24_C100", lambda: _ibdr_loss_kw(rng, 4, 24, 100), where="cpu"),
            Case("K4_B8192_C397", lambda: _ibdr_loss_kw(rng, 4, 8192, 397), where="gpu")]


cases_ibdr_loss_grad = cases_ibdr_loss


def _ibdr_ascent_kw(rng, P, g_scale, lam=3.0, **kw):
    """theta ~ N(0, 0.02^2) (LoRA-like weights), g ~ N(0, g_scale^2 / P): ||g|| ~ g_scale."""
    theta = rng.normal(0.0, 0.02, P)
    g = rng.normal(0.0, g_scale / np.sqrt(P), P)
    return dict(theta=theta, g=g, lam=lam, **kw)


def cases_dro_ascent(rng, scale):
    """Cases of ``dro_ascent(theta, g, lam, clip=0.12)``: ||g|| above the clip (clipped) and
    below it (unclipped); lam a Python float."""
    _check_scale(scale)
    if scale == "tiny":
        return [Case("P10_clipped", _ibdr_ascent_kw(rng, 10, 1.0)),
                Case("P10_unclipped_lam0.5", _ibdr_ascent_kw(rng, 10, 0.05, lam=0.5))]
    if scale == "small":
        return [Case("P1e4_clipped", _ibdr_ascent_kw(rng, 10_000, 1.0)),
                Case("P1e4_unclipped", _ibdr_ascent_kw(rng, 10_000, 0.05)),
                Case("P1e4_clip0.2_lam5", _ibdr_ascent_kw(rng, 10_000, 2.0, lam=5.0, clip=0.2))]
    # ViT-B/16 LoRA r=8 on q, v of 12 blocks: 294,912 per particle; 4 particles on the GPU
    return [Case("P1e6", lambda: _ibdr_ascent_kw(rng, 1_000_000, 1.0), where="cpu"),
            Case("P1179648", lambda: _ibdr_ascent_kw(rng, 4 * 294_912, 1.0), where="gpu",
                 dtypes=("float32",))]


def _ibdr_pred_kw(rng, B, C, step=1.0):
    old = rng.normal(0.0, 3.0, (B, C))
    return dict(logits_bar_new=old + rng.normal(0.0, step, (B, C)), logits_bar_old=old)


def cases_prediction_distance(rng, scale):
    """Cases of ``prediction_distance(logits_bar_new, logits_bar_old)``."""
    _check_scale(scale)
    if scale == "tiny":
        return [Case("B3_C5", _ibdr_pred_kw(rng, 3, 5)),
                Case("B3_C5_close", _ibdr_pred_kw(rng, 3, 5, step=0.01))]
    if scale == "small":
        return [Case("B24_C100", _ibdr_pred_kw(rng, 24, 100)),
                Case("B24_C100_close", _ibdr_pred_kw(rng, 24, 100, step=0.01)),
                Case("B24_C2", _ibdr_pred_kw(rng, 24, 2))]
    return [Case("B8192_C397", lambda: _ibdr_pred_kw(rng, 8192, 397))]


def _ibdr_dual_kw(lam, distance, lr, **kw):
    return dict(lam=float(lam), distance=np.asarray(distance, dtype=np.float64), lr=float(lr), **kw)


def cases_ibdr_dual_update(rng, scale):
    """Cases of ``ibdr_dual_update(lam, distance, lr, ...)``: lam and lr Python floats, distance
    a 0-d float64 array (cast to the tested dtype). Values chosen by hand (no randomness): below
    and above the bound, the lo and hi clips, the paper form and its projection onto lam >= 0."""
    _check_scale(scale)
    if scale == "tiny":
        return [Case("below_bound", _ibdr_dual_kw(3.0, 0.01, 0.2)),
                Case("above_bound_hi_clip", _ibdr_dual_kw(4.99, 0.05, 0.25))]
    if scale == "small":
        return [Case("below_bound", _ibdr_dual_kw(3.0, 0.01, 0.2)),
                Case("below_bound_lo_clip", _ibdr_dual_kw(0.5, 0.0, 0.25)),
                Case("above_bound", _ibdr_dual_kw(3.0, 0.035, 0.25)),
                Case("above_bound_hi_clip", _ibdr_dual_kw(4.99, 0.05, 0.25)),
                Case("above_bound_overflow", _ibdr_dual_kw(1.0, 9.0, 0.1)),
                Case("paper", _ibdr_dual_kw(1.0, 0.01, 0.2, variant="paper")),
                Case("paper_projected", _ibdr_dual_kw(0.001, 0.0, 0.2, variant="paper"))]
    return [Case("above_bound", _ibdr_dual_kw(3.0, 0.035, 0.25))]


def vjp_dpp_logdet(kw, cot):
    """d(cot * LD)/dprobs by the closed form (2 M_b^{-1} Qh_b through the normalisation)."""
    from refimpl._ibdr import _dpp_logdet_vjp

    return {"dprobs": _dpp_logdet_vjp(kw["probs"], kw["y"], float(np.asarray(cot)),
                                      jitter=kw.get("jitter", 1e-7))}


def vjp_ibdr_loss(kw, cot):
    """d(cot * loss)/dlogits: ``cot * ibdr_loss_grad(...)[1]``."""
    from refimpl._ibdr import ibdr_loss_grad

    _, dF = ibdr_loss_grad(**kw)
    return {"dlogits": float(np.asarray(cot)) * dF}
