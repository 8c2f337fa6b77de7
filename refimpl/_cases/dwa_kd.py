"""Registry cases, tolerances and reference VJPs of the DWA-KD ops (cross_tokenizer.md sec. 3-5,
11 and the asv sizes of its Acceptance list).

Sizes (B, N', M', d_s, d_t, V_S, V_T): ``tiny`` (2, 6, 5, 4, 6, 11, 13), ``small``
(3, 24, 19, 16, 24, 257, 301). Masks are bool arrays (the harness casts only float arrays):
a prompt prefix of random length, then targets, then right padding. ``kd_divergence`` takes
the t2s pair (student logits vs CMA logits, both over V_S); ``dwa_dtw_loss`` takes X (B, N', d_s),
the projected teacher Y (B, M', d_s) and a CMA-like attention A (B, N', M') for the band.

The band indicator ``1[|j - c_i| > w_i]`` is discontinuous in A: cases are redrawn until every
entry of every used block is at least ``BAND_MARGIN`` away from its threshold, so float32
rounding cannot flip a penalty entry (which would move the value by rho).
"""

from __future__ import annotations

import numpy as np

from refimpl._cases import Case

PAPER = "2602.21669"

TINY = (2, 6, 5, 4, 6, 11, 13)
SMALL = (3, 24, 19, 16, 24, 257, 301)
BAND_MARGIN = 1e-3

# dtype -> output -> (rtol, atol). fp32 gradients of the Soft-DTW divergence carry the
# accumulated error of E (softdtw TOL: E atol 1e-4), hence dX/dY atol 1e-4 in float32.
TOL = {
    "float64": {"*": (1e-10, 1e-10), "dX": (1e-10, 1e-9), "dY": (1e-10, 1e-9)},
    "float32": {"*": (5e-4, 1e-5), "dX": (5e-4, 1e-4), "dY": (5e-4, 1e-4)},
    "bfloat16": {"*": (5e-1, 5e-2)},
}

KD_DTYPES = ("float32", "float64", "bfloat16")  # kd_divergence (spec: bf16 tolerances)

KINDS = ("forward_kl", "reverse_kl", "skewed_forward_kl", "skewed_reverse_kl", "js",
         "adaptive_kl")


def token_mask(rng, B, N, *, prompt=True, min_valid=1):
    """(B, N) bool: a prompt prefix (random length < N/3), targets, right padding."""
    mask = np.zeros((B, N), dtype=bool)
    for b in range(B):
        start = int(rng.integers(0, max(N // 3, 1))) if prompt else 0
        end = int(rng.integers(min(start + min_valid, N), N + 1))
        mask[b, start:end] = True
    return mask


def _sizes(scale):
    if scale == "tiny":
        return TINY
    if scale == "small":
        return SMALL
    raise ValueError(f"unknown scale {scale!r}")


def _label(B, N, V):
    return f"B{B}_N{N}_V{V}"


# --------------------------------------------------------------------------- kd_divergence


def _logit_pair(rng, shape, spread=2.0):
    """Student and teacher logits that are correlated (a realistic, non-trivial divergence)."""
    z_t = spread * rng.normal(size=shape)
    z_s = 0.7 * z_t + spread * 0.7 * rng.normal(size=shape)
    return z_s, z_t


def cases_kd_divergence(rng, scale):
    if scale == "bench":
        return [
            Case("N64_V8192", lambda: dict(zip(("z_s", "z_t"), _logit_pair(rng, (64, 8192))),
                                           kind="skewed_reverse_kl", tau=2.0), where="cpu"),
            Case("N4096_V50257", lambda: dict(zip(("z_s", "z_t"), _logit_pair(rng, (4096, 50257))),
                                              kind="skewed_reverse_kl", tau=2.0),
                 where="gpu", dtypes=("float32", "bfloat16")),
        ]
    B, N, _, _, _, V_S, _ = _sizes(scale)
    out = []
    for i, kind in enumerate(KINDS):
        # the Numba simulator ("tiny") takes one temperature per kind, alternating
        for tau in ((1.0, 2.0) if scale != "tiny" else ((1.0, 2.0)[i % 2],)):
            z_s, z_t = _logit_pair(rng, (B, N, V_S))
            kw = dict(z_s=z_s, z_t=z_t, kind=kind, tau=tau)
            if kind == "adaptive_kl":
                kw["adaptive_alpha"] = 0.5
            out.append(Case(f"{_label(B, N, V_S)}_{kind}_tau{tau}", kw))
    z_s, z_t = _logit_pair(rng, (N, V_S))
    out.append(Case(f"N{N}_V{V_S}_skewed_reverse_kl_teatemp1.5_skew0.3",
                    dict(z_s=z_s, z_t=z_t, kind="skewed_reverse_kl", tau=2.0, tea_temp=1.5,
                         use_tea_temp=True, skew=0.3)))
    return out


def vjp_kd_divergence(kw, cot):
    """``d(sum cot * div)/dz_s`` by the closed form of :func:`kd_divergence_grad`."""
    from refimpl._dwa_kd import kd_divergence_grad

    _, dz = kd_divergence_grad(**kw)
    return {"dz_s": np.asarray(cot, dtype=np.float64)[..., None] * dz}


# --------------------------------------------------------------------------- weights and gate


def _weights_case(rng, B, N, Vv, *, uniform_rows=False):
    z = 3.0 * rng.normal(size=(B, N, Vv))
    if uniform_rows:
        z[0, : N // 2] = 0.0  # uniform positions (entropy log V, certainty ~5e-9)
    return z, token_mask(rng, B, N)


def cases_entropy_weights(rng, scale):
    if scale == "bench":
        return [Case("B4_N64_V8192", lambda: dict(z_s=3.0 * rng.normal(size=(4, 64, 8192)),
                                                  mask=token_mask(rng, 4, 64)), where="cpu"),
                Case("B8_N512_V50257", lambda: dict(z_s=3.0 * rng.normal(size=(8, 512, 50257)),
                                                    mask=token_mask(rng, 8, 512)), where="gpu")]
    B, N, _, _, _, V_S, _ = _sizes(scale)
    z, mask = _weights_case(rng, B, N, V_S)
    out = [Case(_label(B, N, V_S), dict(z_s=z, mask=mask))]
    z, mask = _weights_case(rng, B, N, V_S)
    mask[-1] = False  # an empty row: weights 0
    out.append(Case(f"{_label(B, N, V_S)}_empty_row", dict(z_s=z, mask=mask)))
    return out


def cases_certainty_weights(rng, scale):
    if scale == "bench":
        return [Case("B4_N64_V8192", lambda: dict(z_t=3.0 * rng.normal(size=(4, 64, 8192)),
                                                  mask=token_mask(rng, 4, 64)), where="cpu"),
                Case("B8_N512_V151936", lambda: dict(z_t=3.0 * rng.normal(size=(8, 512, 151936)),
                                                     mask=token_mask(rng, 8, 512)), where="gpu")]
    B, _, M, _, _, _, V_T = _sizes(scale)
    z, mask = _weights_case(rng, B, M, V_T)
    out = [Case(_label(B, M, V_T), dict(z_t=z, mask=mask))]
    z, mask = _weights_case(rng, B, M, V_T)
    z[0] *= 10.0  # confident rows
    out.append(Case(f"{_label(B, M, V_T)}_confident_row", dict(z_t=z, mask=mask)))
    return out


def cases_kd_gate(rng, scale):
    if scale == "bench":
        return [Case("B4_N64_V8192", lambda: dict(z_t2s=3.0 * rng.normal(size=(4, 64, 8192)),
                                                  mask=token_mask(rng, 4, 64), step=100), where="cpu"),
                Case("B8_N512_V50257", lambda: dict(z_t2s=3.0 * rng.normal(size=(8, 512, 50257)),
                                                    mask=token_mask(rng, 8, 512), step=100),
                     where="gpu")]
    B, N, _, _, _, V_S, _ = _sizes(scale)
    out = []
    for step, warmup in ((0, 300), (150, 300), (400, 300), (5, 0)):
        z, mask = _weights_case(rng, B, N, V_S)
        out.append(Case(f"{_label(B, N, V_S)}_step{step}_warmup{warmup}",
                        dict(z_t2s=z, mask=mask, step=step, warmup=warmup)))
    return out


# --------------------------------------------------------------------------- band and DTW


def _attention(rng, B, N, M, mask_s, mask_t, sharp=2.0):
    """A CMA-like t2s attention: rows drift along the diagonal, masked keys get ~0 weight."""
    i = np.arange(N)[:, None] * (M / N)
    j = np.arange(M)[None, :]
    logits = -((j - i) ** 2) / (2.0 * sharp ** 2) + rng.normal(size=(B, N, M))
    logits = logits - 1e5 * (1.0 - mask_s[:, :, None] * mask_t[:, None, :])
    logits -= logits.max(-1, keepdims=True)
    A = np.exp(logits)
    return A / A.sum(-1, keepdims=True)


def band_margin(A, *, alpha=0.7, w0=5.0, kappa=2.0):
    """``min |(|j - c_i| - w_i)|`` over a block (n, m): the distance to the band threshold."""
    n, m = A.shape
    Ab = (A + 1e-9) / (A.sum(-1, keepdims=True) + 1e-9)
    h = -(Ab * np.log(Ab)).sum(-1)
    c = alpha * (Ab * np.arange(m)).sum(-1) + (1 - alpha) * np.arange(n) * m / n
    w = w0 + kappa * h
    return float(np.abs(np.abs(np.arange(m)[None, :] - c[:, None]) - w[:, None]).min())


def _blocks(mask_s, mask_t, positions):
    for ms, mt in zip(mask_s, mask_t):
        if positions == "mask":
            yield np.flatnonzero(ms), np.flatnonzero(mt)
        else:
            yield np.arange(ms.sum()), np.arange(mt.sum())


def _dtw_inputs(rng, B, N, M, d, positions, band, *, prompt=True, empty=False, safe=True):
    """X, Y, masks, A; redrawn until the band is BAND_MARGIN away from every threshold
    (``safe=False``, for bench sizes that are only timed: the first draw)."""
    w0, kappa = band
    for _ in range(200 if safe else 1):
        mask_s = token_mask(rng, B, N, prompt=prompt)
        mask_t = token_mask(rng, B, M, prompt=prompt)
        if empty:
            mask_t[-1] = False
        A = _attention(rng, B, N, M, mask_s, mask_t)
        ok = all(band_margin(A[b][np.ix_(si, tj)], w0=w0, kappa=kappa) > BAND_MARGIN
                 for b, (si, tj) in enumerate(_blocks(mask_s, mask_t, positions))
                 if si.size and tj.size)
        if ok or not safe:
            break
    else:
        raise RuntimeError("no band-safe draw found")
    X = rng.normal(size=(B, N, d))
    Y = 0.6 * X[:, np.minimum((np.arange(M) * N) // M, N - 1)] + 0.8 * rng.normal(size=(B, M, d))
    return dict(X=X, Y=Y, mask_s=mask_s, mask_t=mask_t, A=A)


def cases_cma_band_penalty(rng, scale):
    if scale == "bench":
        def build(n, m):
            mask_s, mask_t = np.ones((1, n), bool), np.ones((1, m), bool)
            return dict(A=_attention(rng, 1, n, m, mask_s, mask_t)[0])
        return [Case("64x64", lambda: build(64, 64), where="cpu"),
                Case("512x512", lambda: build(512, 512), where="gpu")]
    _, N, M, _, _, _, _ = _sizes(scale)
    out = []
    params = ((0.7, 5.0, 2.0, 1.0), (0.7, 0.5, 0.5, 1.0), (0.3, 1.0, 1.0, 2.5), (1.0, 0.5, 0.0, 0.7))
    for alpha, w0, kappa, rho in params:
        kw = _dtw_inputs(rng, 1, N, M, 2, "mask", (w0, kappa), prompt=False)
        # blocks with alpha != 0.7 checked against their own centre
        A = kw["A"][0]
        for _ in range(200):
            if band_margin(A, alpha=alpha, w0=w0, kappa=kappa) > BAND_MARGIN:
                break
            A = _attention(rng, 1, N, M, np.ones((1, N)), np.ones((1, M)))[0]
        out.append(Case(f"{N}x{M}_a{alpha}_w{w0}_k{kappa}_r{rho}",
                        dict(A=A, alpha=alpha, w0=w0, kappa=kappa, rho=rho)))
    return out


def cases_dwa_dtw_loss(rng, scale):
    if scale == "bench":
        def build(B, n, m, d):
            kw = _dtw_inputs(rng, B, n, m, d, "mask", (5.0, 2.0), prompt=False, safe=False)
            return dict(kw, gamma=0.8)
        return [Case("B2_64x64_d32", lambda: build(2, 64, 64, 32), where="cpu"),
                Case("B8_512x512_d768", lambda: build(8, 512, 512, 768), where="gpu")]
    B, N, M, d_s, _, _, _ = _sizes(scale)
    w0, kappa = (0.5, 0.5) if scale == "tiny" else (5.0, 2.0)  # tiny: w0 = 5 covers m <= 5
    out = []
    settings = (("mask", True, 2.0), ("mask", True, 0.1), ("prefix", True, 0.8),
                ("mask", False, 0.8))
    for positions, band, gamma in settings:
        kw = _dtw_inputs(rng, B, N, M, d_s, positions, (w0, kappa))
        out.append(Case(f"B{B}_{N}x{M}_d{d_s}_{positions}_band{int(band)}_g{gamma}",
                        dict(kw, gamma=gamma, positions=positions, band=band, w0=w0,
                             kappa=kappa)))
    kw = _dtw_inputs(rng, B, N, M, d_s, "mask", (w0, kappa), empty=True)
    out.append(Case(f"B{B}_{N}x{M}_d{d_s}_empty_pair",
                    dict(kw, gamma=0.8, w0=w0, kappa=kappa, rho=2.0)))
    return out


def vjp_dwa_dtw_loss(kw, cot):
    """``cot * (dX, dY)`` of :func:`dwa_dtw_loss_grad` (A and the penalty detached)."""
    from refimpl._dwa_kd import dwa_dtw_loss_grad

    _, dX, dY = dwa_dtw_loss_grad(**kw)
    c = float(np.asarray(cot))
    return {"dX": c * dX, "dY": c * dY}
