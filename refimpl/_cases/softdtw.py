"""Registry cases, tolerances and reference VJPs of the Soft-DTW ops (softdtw.md sec. 9, 12).

Ragged cases pad with NaN beyond each pair's lengths, so every cross-check also checks that
padding is never read."""

from __future__ import annotations

import numpy as np

from refimpl._cases import Case

# dtype -> output -> (rtol, atol). Autograd outputs are named "d" + input ("dC", "dX", "dY").
TOL = {
    "float64": {"*": (1e-10, 1e-9)},
    "float32": {"*": (5e-4, 1e-4), "value": (1e-5, 1e-4), "E": (0.0, 1e-4), "dC": (0.0, 1e-4),
                "C": (1e-5, 1e-5)},
}


def _points(rng, B, N, d):
    """Gaussian sequences scaled so squared-Euclidean costs are O(1) per cell."""
    return rng.normal(size=(B, N, d)) / np.sqrt(d)


def _ragged(rng, B, N, low=1):
    return rng.integers(low, N + 1, size=B).astype(np.int64)


def pad_nan(A, lengths, axis):
    """NaN beyond ``lengths[b]`` along ``axis`` (1 or 2) of a (B, ...) array, in place."""
    for b, n in enumerate(lengths):
        idx = [b] + [slice(None)] * (A.ndim - 1)
        idx[axis] = slice(n, None)
        A[tuple(idx)] = np.nan
    return A


def _cost_batch(rng, B, N, M, d=4):
    X, Y = _points(rng, B, N, d), _points(rng, B, M, d)
    return ((X[:, :, None, :] - Y[:, None, :, :]) ** 2).sum(-1)


def cases_soft_dtw(rng, scale):
    if scale == "tiny":
        out = [Case("2d_3x4", dict(C=_cost_batch(rng, 1, 3, 4)[0], gamma=1.0))]
        for gamma, bw in ((0.1, None), (1.0, 1)):
            C, lx, ly = _cost_batch(rng, 2, 6, 6), _ragged(rng, 2, 6), _ragged(rng, 2, 6)
            pad_nan(pad_nan(C, lx, 1), ly, 2)
            out.append(Case(f"B2_ragged6_g{gamma}_bw{bw}",
                            dict(C=C, gamma=gamma, len_x=lx, len_y=ly, bandwidth=bw)))
        return out
    if scale == "small":
        out = []
        for gamma in (0.01, 0.1, 1.0):
            C, lx, ly = _cost_batch(rng, 4, 32, 32), _ragged(rng, 4, 32, 8), _ragged(rng, 4, 32, 8)
            pad_nan(pad_nan(C, lx, 1), ly, 2)
            out.append(Case(f"B4_ragged32_g{gamma}", dict(C=C, gamma=gamma, len_x=lx, len_y=ly)))
        out.append(Case("B4_32x24_band3", dict(C=_cost_batch(rng, 4, 32, 24), gamma=0.1, bandwidth=3)))
        out.append(Case("2d_40x17_g0.1", dict(C=_cost_batch(rng, 1, 40, 17)[0], gamma=0.1)))
        return out
    if scale == "bench":
        return [
            Case("B8_64x64", lambda: dict(C=_cost_batch(rng, 8, 64, 64), gamma=0.1), where="cpu"),
            Case("B512_256x256", lambda: dict(C=rng.random((512, 256, 256)), gamma=0.1), where="gpu"),
            Case("B512_1024x1024", lambda: dict(C=rng.random((512, 1024, 1024)), gamma=0.1),
                 where="gpu"),
            Case("B4_8192x8192", lambda: dict(C=rng.random((4, 8192, 8192)), gamma=0.1), where="gpu"),
        ]
    raise ValueError(f"unknown scale {scale!r}")


def _cost_args(rng, B, N, M, d, batched):
    X, Y = _points(rng, B, N, d), _points(rng, B, M, d)
    return (X, Y) if batched else (X[0], Y[0])


def cases_cost(rng, scale):
    sizes = {"tiny": [(2, 5, 4, 3, True), (1, 3, 6, 2, False)],
             "small": [(4, 32, 24, 8, True), (1, 40, 17, 16, False)],
             "bench": [(4, 64, 64, 16, True), (32, 512, 512, 64, True)]}[scale]
    out = []
    for B, N, M, d, batched in sizes:
        where = "any" if scale != "bench" else ("cpu" if N <= 64 else "gpu")
        for kind in ("sqeuclidean", "cosine"):
            X, Y = _cost_args(rng, B, N, M, d, batched)
            out.append(Case(f"{'B%d_' % B if batched else ''}{N}x{M}_d{d}_{kind}",
                            dict(X=X, Y=Y, kind=kind), where=where))
    return out


def cases_cost_vjp(rng, scale):
    out = []
    for case in cases_cost(rng, scale):
        kw = case.inputs()
        G = rng.random(kw["X"].shape[:-1] + (kw["Y"].shape[-2],))
        out.append(Case(case.label, dict(kw, G=G), case.where))
    return out


def _divergence_case(rng, label, B, N, M, d, *, where="any", **options):
    if where == "gpu":  # large: build on demand
        return Case(label, lambda: _divergence_kwargs(rng, B, N, M, d, **options), where)
    return Case(label, _divergence_kwargs(rng, B, N, M, d, **options), where)


def _divergence_kwargs(rng, B, N, M, d, *, kind="sqeuclidean", gamma=0.1, ragged=False, low=1,
                       penalty=False, bandwidth=None):
    X, Y = _points(rng, B, N, d), _points(rng, B, M, d)
    kw = dict(X=X, Y=Y, gamma=gamma, kind=kind, bandwidth=bandwidth)
    if ragged:
        kw["len_x"], kw["len_y"] = _ragged(rng, B, N, low), _ragged(rng, B, M, low)
        pad_nan(X, kw["len_x"], 1)
        pad_nan(Y, kw["len_y"], 1)
    if penalty:
        P = 0.1 * rng.random((B, N, M))
        if ragged:
            pad_nan(pad_nan(P, kw["len_x"], 1), kw["len_y"], 2)
        kw["penalty"] = P
    return kw


def cases_divergence(rng, scale):
    if scale == "tiny":
        X, Y = _points(rng, 1, 4, 3)[0], _points(rng, 1, 5, 3)[0]
        return [
            Case("2d_4x5_cosine", dict(X=X, Y=Y, gamma=1.0, kind="cosine")),
            _divergence_case(rng, "B2_ragged6_sq_pen", 2, 6, 6, 3, ragged=True, penalty=True),
            _divergence_case(rng, "B2_ragged6_cos_bw1", 2, 6, 5, 3, kind="cosine", gamma=1.0,
                             ragged=True, bandwidth=1),
        ]
    if scale == "small":
        out = [_divergence_case(rng, f"B4_ragged32_{kind}_g{g}", 4, 32, 32, 8, kind=kind, gamma=g,
                                ragged=True)
               for kind in ("sqeuclidean", "cosine") for g in (0.01, 0.1, 1.0)]
        out.append(_divergence_case(rng, "B4_ragged32_zero_len_pen", 4, 32, 28, 8, ragged=True,
                                    low=0, penalty=True))
        out.append(_divergence_case(rng, "B4_32x24_band3", 4, 32, 24, 8, bandwidth=3))
        return out
    if scale == "bench":
        return [
            _divergence_case(rng, "B4_64x64_d16", 4, 64, 64, 16, where="cpu"),
            _divergence_case(rng, "B32_512x512_d64", 32, 512, 512, 64, where="gpu"),
            _divergence_case(rng, "B64_ragged1024_d768_cos_pen", 64, 1024, 1024, 768, kind="cosine",
                             ragged=True, low=64, penalty=True, where="gpu"),
        ]
    raise ValueError(f"unknown scale {scale!r}")


# --------------------------------------------------------------------------- reference VJPs


def vjp_soft_dtw(kw, cot):
    from refimpl.softdtw import soft_dtw_grad

    _, E = soft_dtw_grad(**kw)
    return {"dC": np.asarray(cot)[..., None, None] * E}


def vjp_cost(kw, cot):
    from refimpl.softdtw import sdtw_cost_vjp

    dX, dY = sdtw_cost_vjp(kw["X"], kw["Y"], cot, kind=kw.get("kind", "sqeuclidean"))
    return {"dX": dX, "dY": dY}


def vjp_divergence(kw, cot):
    from refimpl.softdtw import soft_dtw_divergence_grad

    _, dX, dY = soft_dtw_divergence_grad(**kw)
    c = np.asarray(cot)[..., None, None]
    return {"dX": c * dX, "dY": c * dY}
