"""Registry cases, tolerances and output normalisation of the optimal-transport ops (ot.md sec. 7-8).

Cross-check cases run a fixed number of iterations (``tol=0.0``, ``max_iter=50``) so the
reference and every backend perform identical updates. Outputs are compared after
normalisation (:func:`scaled_result`, :func:`scaled_grads`): the plan times ``n*m`` (a uniform
plan becomes all ones) and the potentials divided by ``eps`` (POT's ``log_u``/``log_v``), so
one absolute tolerance fits every size and eps.

Bench cases follow ot.md sec. 8: CPU (``where="cpu"``) n = m = 500, eps = 0.05, costs in
[0, 1], 50 iterations, meant for float64; GPU (``where="gpu"``) n = m = 16384 and
64 x 512 x 512, 100 iterations, meant for float32; ``sinkhorn_cost_grad`` at 4096; ``emd`` at the
CRPL sizes (B, K) in {(30, 12), (30, 65), (30, 345)} with uniform weights and cosine costs.
"""

from __future__ import annotations

import numpy as np

from refimpl._cases import Case

PAPER = "1306.0895"        # Cuturi 2013, Sinkhorn distances (defaults follow POT, see docs/ot.md)
DIV_PAPER = "1810.08278"   # Feydy et al. 2019, Sinkhorn divergences

# dtype -> output name ("*" = default) -> (rtol, atol), on the normalised outputs
TOL = {
    "float64": {"*": (1e-10, 1e-10)},
    "float32": {"*": (5e-4, 1e-5)},
}
# exact OT: backends solve on the host in float64; float32 inputs only perturb the data
TOL_EXACT = {
    "float64": {"*": (1e-10, 1e-10)},
    "float32": {"*": (1e-5, 1e-6)},
}

FIXED = dict(max_iter=50, tol=0.0)


# --------------------------------------------------------------------------- input builders


def _simplex(rng, shape):
    """Random positive weights summing to 1 over the last axis (bounded away from 0).

    Dyadic (multiples of 2**-20): exact in float32 and summing to exactly 1 in any order, so the
    float32-rounded weights the reference receives in a float32 cross-check still pass the
    1e-8 sum check."""
    w = rng.random(shape) + 0.2
    q = np.floor(w / w.sum(axis=-1, keepdims=True) * 2**20)
    q[..., 0] += 2**20 - q.sum(axis=-1)
    return q / 2**20


def _sqdist(x, y):
    """Squared distances: explicit differences for small inputs; for the large bench inputs
    ``|x|^2 + |y|^2 - 2 x.y`` in place, clipped at 0 (there the values are just data)."""
    if x.shape[-2] * y.shape[-2] * x.shape[-1] <= 2**22:
        return ((x[..., :, None, :] - y[..., None, :, :]) ** 2).sum(-1)
    C = x @ np.swapaxes(y, -1, -2)
    C *= -2.0
    C += (x * x).sum(-1)[..., :, None]
    C += (y * y).sum(-1)[..., None, :]
    return np.maximum(C, 0.0, out=C)


def _cloud_cost(rng, batch, n, m, d=2):
    """Squared-Euclidean costs between two Gaussian clouds, scaled to max 1 per problem."""
    x = rng.normal(size=batch + (n, d))
    y = rng.normal(loc=0.5, size=batch + (m, d))
    C = _sqdist(x, y)
    C /= C.max(axis=(-2, -1), keepdims=True)
    return C


def _cosine_cost(rng, n, m, d=32):
    """CRPL-style costs ``1 - z . t`` of unit vectors (values in [0, 2])."""
    z = rng.normal(size=(n, d))
    t = rng.normal(size=(m, d))
    z /= np.linalg.norm(z, axis=-1, keepdims=True)
    t /= np.linalg.norm(t, axis=-1, keepdims=True)
    return 1.0 - z @ t.T


def _check_scale(scale):
    if scale not in ("tiny", "small", "bench"):
        raise ValueError(f"unknown scale {scale!r}; expected 'tiny', 'small' or 'bench'")


# --------------------------------------------------------------------------- Sinkhorn


def cases_sinkhorn(rng, scale):
    """Cases of ``sinkhorn_log`` (a, b, C, eps, max_iter, tol[, init])."""
    _check_scale(scale)
    if scale == "tiny":
        return [
            Case("5x7_uniform", dict(a=None, b=None, C=_cloud_cost(rng, (), 5, 7), eps=0.5, **FIXED)),
            Case("B2_5x7_weights_init", dict(a=_simplex(rng, (2, 5)), b=_simplex(rng, (2, 7)),
                                             C=_cloud_cost(rng, (2,), 5, 7), eps=0.1,
                                             init=(0.1 * rng.normal(size=(2, 5)), np.zeros(7)),
                                             **FIXED)),
        ]
    if scale == "small":
        return [
            Case("64x48_eps0.05", dict(a=_simplex(rng, (64,)), b=_simplex(rng, (48,)),
                                       C=_cloud_cost(rng, (), 64, 48), eps=0.05, **FIXED)),
            Case("30x345_cosine_eps0.05", dict(a=None, b=None, C=_cosine_cost(rng, 30, 345),
                                               eps=0.05, **FIXED)),
            Case("B3_64x48_shared_a", dict(a=_simplex(rng, (64,)), b=_simplex(rng, (3, 48)),
                                           C=_cloud_cost(rng, (3,), 64, 48), eps=0.1, **FIXED)),
        ]
    return [
        Case("500x500_eps0.05_it50", lambda: dict(a=None, b=None, C=_cloud_cost(rng, (), 500, 500),
                                          eps=0.05, **FIXED), where="cpu"),
        Case("16384x16384_eps0.05_it100", lambda: dict(a=None, b=None, C=_cloud_cost(rng, (), 16384, 16384),
                                               eps=0.05, max_iter=100, tol=0.0), where="gpu"),
        Case("B64_512x512_eps0.05_it100", lambda: dict(a=None, b=None, C=_cloud_cost(rng, (64,), 512, 512),
                                               eps=0.05, max_iter=100, tol=0.0), where="gpu"),
    ]


def cases_sinkhorn_std(rng, scale):
    """Cases of the standard-domain ``sinkhorn``: max(C)/eps <= 40 (safe in float32)."""
    _check_scale(scale)
    if scale == "tiny":
        return [
            Case("5x7_uniform", dict(a=None, b=None, C=_cloud_cost(rng, (), 5, 7), eps=0.5, **FIXED)),
            Case("B2_5x7_weights", dict(a=_simplex(rng, (2, 5)), b=_simplex(rng, (2, 7)),
                                        C=_cloud_cost(rng, (2,), 5, 7), eps=0.1, **FIXED)),
        ]
    if scale == "small":
        return [
            Case("64x48_eps0.05", dict(a=_simplex(rng, (64,)), b=_simplex(rng, (48,)),
                                       C=_cloud_cost(rng, (), 64, 48), eps=0.05, **FIXED)),
            Case("30x345_cosine_eps0.05", dict(a=None, b=None, C=_cosine_cost(rng, 30, 345),
                                               eps=0.05, **FIXED)),
        ]
    return [
        Case("500x500_eps0.05_it50", lambda: dict(a=None, b=None, C=_cloud_cost(rng, (), 500, 500),
                                          eps=0.05, **FIXED), where="cpu"),
    ]


def cases_cost(rng, scale):
    """Cases of ``sinkhorn_cost`` (both kinds, both methods)."""
    _check_scale(scale)
    if scale == "tiny":
        return [
            Case("5x7_entropic_log", dict(a=_simplex(rng, (5,)), b=None, C=_cloud_cost(rng, (), 5, 7),
                                          eps=0.2, kind="entropic", method="log", **FIXED)),
            Case("B2_5x7_linear_std", dict(a=None, b=_simplex(rng, (2, 7)), C=_cloud_cost(rng, (2,), 5, 7),
                                           eps=0.1, kind="linear", method="standard", **FIXED)),
        ]
    if scale == "small":
        return [
            Case("64x48_entropic_log", dict(a=_simplex(rng, (64,)), b=_simplex(rng, (48,)),
                                            C=_cloud_cost(rng, (), 64, 48), eps=0.05,
                                            kind="entropic", method="log", **FIXED)),
            Case("30x345_linear_std", dict(a=None, b=None, C=_cosine_cost(rng, 30, 345), eps=0.05,
                                           kind="linear", method="standard", **FIXED)),
        ]
    return [
        Case("500x500_entropic_log", lambda: dict(a=None, b=None, C=_cloud_cost(rng, (), 500, 500), eps=0.05,
                                          kind="entropic", method="log", **FIXED), where="cpu"),
        Case("4096x4096_entropic_log_it100", lambda: dict(a=None, b=None, C=_cloud_cost(rng, (), 4096, 4096),
                                                  eps=0.05, kind="entropic", method="log",
                                                  max_iter=100, tol=0.0), where="gpu"),
    ]


def cases_cost_grad(rng, scale):
    """Cases of ``sinkhorn_cost_grad`` (envelope gradient)."""
    _check_scale(scale)
    if scale == "tiny":
        return [
            Case("5x7_log", dict(a=_simplex(rng, (5,)), b=_simplex(rng, (7,)),
                                 C=_cloud_cost(rng, (), 5, 7), eps=0.2, method="log", **FIXED)),
            Case("B2_5x7_std", dict(a=None, b=None, C=_cloud_cost(rng, (2,), 5, 7), eps=0.2,
                                    method="standard", **FIXED)),
        ]
    if scale == "small":
        return [
            Case("64x48_log", dict(a=_simplex(rng, (64,)), b=_simplex(rng, (48,)),
                                   C=_cloud_cost(rng, (), 64, 48), eps=0.05, method="log", **FIXED)),
            Case("30x345_std", dict(a=None, b=None, C=_cosine_cost(rng, 30, 345), eps=0.05,
                                    method="standard", **FIXED)),
        ]
    return [
        Case("500x500_log", lambda: dict(a=None, b=None, C=_cloud_cost(rng, (), 500, 500), eps=0.05,
                                 method="log", **FIXED), where="cpu"),
        Case("4096x4096_log_it100", lambda: dict(a=None, b=None, C=_cloud_cost(rng, (), 4096, 4096), eps=0.05,
                                         method="log", max_iter=100, tol=0.0), where="gpu"),
    ]


def _divergence_kwargs(rng, batch, n, m, d, eps, variant, weights):
    x = rng.normal(size=batch + (n, d))
    y = rng.normal(loc=0.5, size=batch + (m, d))

    def half_sq(p, q):
        C = _sqdist(p, q)
        C *= 0.5
        return C

    a = _simplex(rng, batch + (n,)) if weights else None
    b = _simplex(rng, batch + (m,)) if weights else None
    return dict(a=a, b=b, C_xy=half_sq(x, y), C_xx=half_sq(x, x), C_yy=half_sq(y, y), eps=eps,
                variant=variant, **FIXED)


def cases_divergence(rng, scale):
    """Cases of ``sinkhorn_divergence`` (half squared-Euclidean costs of Gaussian clouds)."""
    _check_scale(scale)
    if scale == "tiny":
        return [
            Case("5x7_entropic", _divergence_kwargs(rng, (), 5, 7, 2, 0.5, "entropic", True)),
            Case("B2_5x7_linear", _divergence_kwargs(rng, (2,), 5, 7, 2, 0.5, "linear", False)),
        ]
    if scale == "small":
        return [
            Case("64x48_entropic", _divergence_kwargs(rng, (), 64, 48, 3, 0.1, "entropic", True)),
            Case("B2_30x40_linear", _divergence_kwargs(rng, (2,), 30, 40, 3, 0.1, "linear", False)),
        ]
    return [
        Case("500x500_entropic", lambda: _divergence_kwargs(rng, (), 500, 500, 2, 0.1, "entropic", False),
             where="cpu"),
        Case("4096x4096_entropic_it100",
             lambda: dict(_divergence_kwargs(rng, (), 4096, 4096, 3, 0.1, "entropic", False),
                          max_iter=100),
             where="gpu"),
    ]


def cases_pairwise(rng, scale):
    """Cases of ``pairwise_cost`` (points scaled so costs are O(1))."""
    _check_scale(scale)

    def pts(*shape):
        return rng.normal(size=shape) / np.sqrt(shape[-1])

    kinds = ("sqeuclidean", "half_sqeuclidean", "cosine")
    if scale == "tiny":
        out = [Case(f"5x7_d3_{k}", dict(x=pts(5, 3), y=pts(7, 3), kind=k)) for k in kinds]
        out.append(Case("B2_5x7_d3_sqeuclidean", dict(x=pts(2, 5, 3), y=pts(2, 7, 3), kind="sqeuclidean")))
        return out
    if scale == "small":
        out = [Case(f"64x48_d8_{k}", dict(x=pts(64, 8), y=pts(48, 8), kind=k)) for k in kinds]
        out.append(Case("B4_30x34_d16_cosine", dict(x=pts(4, 30, 16), y=pts(4, 34, 16), kind="cosine")))
        return out
    return [
        Case("500x500_d16_sqeuclidean", lambda: dict(x=pts(500, 16), y=pts(500, 16), kind="sqeuclidean"),
             where="cpu"),
        Case("4096x4096_d64_sqeuclidean", lambda: dict(x=pts(4096, 64), y=pts(4096, 64), kind="sqeuclidean"),
             where="gpu"),
        Case("B64_512x512_d32_cosine", lambda: dict(x=pts(64, 512, 32), y=pts(64, 512, 32), kind="cosine"),
             where="gpu"),
    ]


def cases_emd(rng, scale):
    """Cases of ``emd``/``emd_grad``. Tiny/small use random (non-degenerate) weights or the
    uniform square assignment case, so the duals are unique or continuous in the data."""
    _check_scale(scale)
    if scale == "tiny":
        return [
            Case("5x7_weights", dict(a=_simplex(rng, (5,)), b=_simplex(rng, (7,)),
                                     C=rng.random((5, 7)), method="auto")),
            Case("6x6_assignment", dict(a=None, b=None, C=rng.random((6, 6)), method="auto")),
        ]
    if scale == "small":
        return [
            Case("30x12_weights_cosine", dict(a=_simplex(rng, (30,)), b=_simplex(rng, (12,)),
                                              C=_cosine_cost(rng, 30, 12), method="linprog")),
            Case("64x48_weights", dict(a=_simplex(rng, (64,)), b=_simplex(rng, (48,)),
                                       C=_cloud_cost(rng, (), 64, 48), method="auto")),
            Case("40x40_assignment", dict(a=None, b=None, C=_cloud_cost(rng, (), 40, 40),
                                          method="assignment")),
        ]
    return [Case(f"B30_K{K}_uniform_cosine",
                 lambda K=K: dict(a=None, b=None, C=_cosine_cost(rng, 30, K), method="auto"))
            for K in (12, 65, 345)]


# --------------------------------------------------------------------------- output normalisation


def scaled_result(result, kwargs):
    """``SinkhornResult`` -> {"plan": P*n*m, "f": f/eps, "g": g/eps, "n_iter": int}."""
    plan, f, g, n_iter = result[0], result[1], result[2], result[3]
    n, m = np.shape(plan)[-2:]
    eps = kwargs["eps"]
    return {"plan": np.asarray(plan) * (n * m), "f": np.asarray(f) / eps,
            "g": np.asarray(g) / eps, "n_iter": int(n_iter)}


def scaled_grads(result, kwargs):
    """``(dC, da, db)`` -> {"dC": dC*n*m, "da": da/eps, "db": db/eps}."""
    dC, da, db = result
    n, m = np.shape(dC)[-2:]
    eps = kwargs["eps"]
    return {"dC": np.asarray(dC) * (n * m), "da": np.asarray(da) / eps, "db": np.asarray(db) / eps}
