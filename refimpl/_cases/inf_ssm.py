"""Registry cases, tolerances and reference VJPs of the Inf-SSM family (spec inf_ssm.md sec. 6-7).

Inputs follow the official code's regime: ``a = tanh(U(0, 1) / 2)`` in (0, 0.4621) (the squashed
channel mean of Mamba's ``exp(dt A)``), ``c ~ U(-1, 1)``; plus one case with
``a ~ U(-0.95, 0.95)``. Scales: "tiny" m = 3 systems of n = 4 states (runs in Numba's CUDA
simulator: at most three cases per op), "small" m = 256, n = 16 plus variants (leading shape
(2, 3), n1 != n2, wide spectra, multi-output C for the Gram ops), "bench" the asv sizes: CPU
m = 4096, GPU m = 1,210,368 (= 128 x 197 x 48, one Vim-small step) in float32; Mamba scan
B = 128, D = 768, L = 197, n = 16 (GPU) and B = 2 (CPU); the regulariser over 48 scans.

The principled variants ("projection", "martin") use n <= 4 with separated spectra
(a near [-0.8, -0.2, 0.3, 0.7]) and are float64-only cases: their Cholesky/triangular solves
lose ~cond(G) digits and ``k - ||M||_F^2`` cancels, so a float32 backend cannot meet the
float32 tolerance reliably (see the conditioning caveat of :mod:`refimpl.inf_ssm`).
Every case is deterministic given ``rng``.
"""

from __future__ import annotations

import numpy as np

from refimpl._cases import Case

PAPER = "2505.18604"   # Lee et al., Exemplar-Free Continual Learning for State Space Models

# dtype -> output name ("*" = default) -> (rtol, atol)
TOL = {
    "float64": {"*": (1e-10, 1e-10)},
    "float32": {"*": (5e-4, 1e-5)},
}

SEPARATED = np.array([-0.8, -0.2, 0.3, 0.7])   # spectra of the principled-variant cases


def _check_scale(scale):
    if scale not in ("tiny", "small", "bench"):
        raise ValueError(f"unknown scale {scale!r}; expected 'tiny', 'small' or 'bench'")


# --------------------------------------------------------------------------- input builders


def code_a(rng, shape):
    """``tanh(U(0, 1) / 2)``: the squashed Mamba regime, a in (0, 0.4621)."""
    return np.tanh(rng.random(shape) / 2.0)


def wide_a(rng, shape):
    return rng.uniform(-0.95, 0.95, shape)


def code_c(rng, shape):
    return rng.uniform(-1.0, 1.0, shape)


def separated_system(rng, lead, n):
    """Well-conditioned single-output system: a near SEPARATED[:n] (+-0.05), |c| in [0.5, 1]."""
    a = SEPARATED[:n] + rng.uniform(-0.05, 0.05, lead + (n,))
    c = rng.uniform(0.5, 1.0, lead + (n,)) * rng.choice([-1.0, 1.0], lead + (n,))
    return a, c


def _pair(rng, lead, n1, n2, a_fn=code_a):
    return dict(a=a_fn(rng, lead + (n1,)), c=code_c(rng, lead + (n1,)),
                b=a_fn(rng, lead + (n2,)), e=code_c(rng, lead + (n2,)))


# --------------------------------------------------------------------------- Grams


def cases_stein_gram_diag(rng, scale):
    """Cases of ``stein_gram_diag(a, C)`` (vector and multi-output C)."""
    _check_scale(scale)
    if scale == "tiny":
        return [
            Case("m3_n4", dict(a=code_a(rng, (3, 4)), C=code_c(rng, (3, 4)))),
            Case("m3_p2_n4_wide", dict(a=wide_a(rng, (3, 4)), C=code_c(rng, (3, 2, 4)))),
        ]
    if scale == "small":
        return [
            Case("m256_n16", dict(a=code_a(rng, (256, 16)), C=code_c(rng, (256, 16)))),
            Case("2x3_n16", dict(a=code_a(rng, (2, 3, 16)), C=code_c(rng, (2, 3, 16)))),
            Case("m256_n16_wide", dict(a=wide_a(rng, (256, 16)), C=code_c(rng, (256, 16)))),
            Case("m256_p3_n16", dict(a=code_a(rng, (256, 16)), C=code_c(rng, (256, 3, 16)))),
        ]
    return [
        Case("m4096_n16", lambda: dict(a=code_a(rng, (4096, 16)), C=code_c(rng, (4096, 16))),
             where="cpu"),
        Case("m65536_n16", lambda: dict(a=code_a(rng, (65536, 16)), C=code_c(rng, (65536, 16))),
             where="gpu", dtypes=("float32",)),
    ]


def _cross(rng, lead, n1, n2, p=0, a_fn=code_a):
    c1 = lead + ((p,) if p else ()) + (n1,)
    c2 = lead + ((p,) if p else ()) + (n2,)
    return dict(a=a_fn(rng, lead + (n1,)), C1=code_c(rng, c1), b=a_fn(rng, lead + (n2,)),
                C2=code_c(rng, c2))


def cases_stein_cross_gram_diag(rng, scale):
    """Cases of ``stein_cross_gram_diag(a, C1, b, C2)``."""
    _check_scale(scale)
    if scale == "tiny":
        return [
            Case("m3_n4", _cross(rng, (3,), 4, 4)),
            Case("m3_p2_n4x3_wide", _cross(rng, (3,), 4, 3, p=2, a_fn=wide_a)),
        ]
    if scale == "small":
        return [
            Case("m256_n16", _cross(rng, (256,), 16, 16)),
            Case("2x3_n16", _cross(rng, (2, 3), 16, 16)),
            Case("m256_n16x8", _cross(rng, (256,), 16, 8)),
            Case("m256_n16_wide", _cross(rng, (256,), 16, 16, a_fn=wide_a)),
            Case("m256_p3_n16", _cross(rng, (256,), 16, 16, p=3)),
        ]
    return [
        Case("m4096_n16", lambda: _cross(rng, (4096,), 16, 16), where="cpu"),
        Case("m65536_n16", lambda: _cross(rng, (65536,), 16, 16), where="gpu", dtypes=("float32",)),
    ]


# --------------------------------------------------------------------------- distances


def _principled(rng, lead, n1, n2, variant, eps):
    a, c = separated_system(rng, lead, n1)
    b, e = separated_system(rng, lead, n2)
    return dict(a=a, c=c, b=b, e=e, variant=variant, eps=eps)


def _bench_pair(rng, m):
    """Bench inputs: two code-regime systems per row, n = 16."""
    return dict(a=code_a(rng, (m, 16)), c=code_c(rng, (m, 16)),
                b=code_a(rng, (m, 16)), e=code_c(rng, (m, 16)))


def cases_infssm_distance(rng, scale):
    """Cases of ``infssm_distance``: code variant (code regime, wide spectra, n1 != n2, leading
    shape) and the principled variants (n <= 4, separated spectra, float64 only; eps 0 and
    one eps > 0)."""
    _check_scale(scale)
    f64 = ("float64",)
    if scale == "tiny":
        return [
            Case("m3_n4_code", dict(_pair(rng, (3,), 4, 4), variant="code", eps=0.0)),
            Case("m3_n4_projection", _principled(rng, (3,), 4, 4, "projection", 0.0), dtypes=f64),
            Case("m3_n4x3_martin", _principled(rng, (3,), 4, 3, "martin", 0.0), dtypes=f64),
        ]
    if scale == "small":
        return [
            Case("m256_n16_code", dict(_pair(rng, (256,), 16, 16), variant="code", eps=0.0)),
            Case("2x3_n16_code", dict(_pair(rng, (2, 3), 16, 16), variant="code", eps=0.0)),
            Case("m256_n16x8_code", dict(_pair(rng, (256,), 16, 8), variant="code", eps=0.0)),
            Case("m256_n16_wide_code", dict(_pair(rng, (256,), 16, 16, wide_a), variant="code",
                                            eps=0.0)),
            Case("m64_n4_projection", _principled(rng, (64,), 4, 4, "projection", 0.0), dtypes=f64),
            Case("m64_n4x3_martin", _principled(rng, (64,), 4, 3, "martin", 0.0), dtypes=f64),
            Case("2x8_n3x4_martin", _principled(rng, (2, 8), 3, 4, "martin", 0.0), dtypes=f64),
            Case("m64_n4_projection_eps1e-3", _principled(rng, (64,), 4, 4, "projection", 1e-3),
                 dtypes=f64),
        ]
    return [
        Case("m4096_n16", lambda: dict(_bench_pair(rng, 4096), variant="code", eps=0.0),
             where="cpu"),
        Case("m1210368_n16", lambda: dict(_bench_pair(rng, 1210368), variant="code", eps=0.0),
             where="gpu", dtypes=("float32",)),
    ]


def cases_infssm_distance_grad(rng, scale):
    """Cases of ``infssm_distance_grad(a, c, b, e)`` (variant "code" only)."""
    _check_scale(scale)
    if scale == "tiny":
        return [
            Case("m3_n4", _pair(rng, (3,), 4, 4)),
            Case("m3_n4x3_wide", _pair(rng, (3,), 4, 3, wide_a)),
        ]
    if scale == "small":
        return [
            Case("m256_n16", _pair(rng, (256,), 16, 16)),
            Case("2x3_n16", _pair(rng, (2, 3), 16, 16)),
            Case("m256_n16x8", _pair(rng, (256,), 16, 8)),
            Case("m256_n16_wide", _pair(rng, (256,), 16, 16, wide_a)),
        ]
    return [
        Case("m4096_n16", lambda: _bench_pair(rng, 4096), where="cpu"),
        Case("m1210368_n16", lambda: _bench_pair(rng, 1210368), where="gpu", dtypes=("float32",)),
    ]


def vjp_infssm_distance(kw, cot):
    """``d(sum cot * d)/d(a, c, b, e)``: the explicit gradient ("code") or Gram-level adjoints
    chained through the closed form ("projection", "martin")."""
    from refimpl.inf_ssm import infssm_distance_vjp

    da, dc, db, de = infssm_distance_vjp(kw["a"], kw["c"], kw["b"], kw["e"], cot,
                                         variant=kw.get("variant", "code"), eps=kw.get("eps", 0.0))
    return {"da": da, "dc": dc, "db": db, "de": de}


# --------------------------------------------------------------------------- Mamba extraction


def scan_inputs(rng, B, D, L, n, dt_bias=False):
    """A Mamba-like scan: S4D-real ``A_log = log(1..n)`` (+ noise), ``delta_raw ~ N(-1, 1)``
    (softplus ~ 0.3), ``C ~ N(0, 1)``, ``dt_bias = softplus^-1(U(1e-3, 0.1))`` (Mamba's init)."""
    A_log = np.log(np.arange(1, n + 1, dtype=np.float64))[None, :] + 0.1 * rng.normal(size=(D, n))
    kw = dict(delta_raw=rng.normal(-1.0, 1.0, (B, D, L)), A_log=A_log,
              C=rng.normal(size=(B, n, L)))
    if dt_bias:
        dt = np.exp(rng.uniform(np.log(1e-3), np.log(0.1), D))
        kw["dt_bias"] = dt + np.log(-np.expm1(-dt))
    else:
        kw["dt_bias"] = None
    return kw


def cases_mamba_ac_from_scan(rng, scale):
    """Cases of ``mamba_ac_from_scan``: tiny covers every option value once (three cases);
    small runs all 8 combinations of (channel_reduce, squash, dt_bias) at m = B L = 256."""
    _check_scale(scale)
    if scale == "tiny":
        return [
            Case("B1_D2_L3_n4_mean_squash", dict(scan_inputs(rng, 1, 2, 3, 4), channel_reduce="mean",
                                                 squash=True)),
            Case("B1_D2_L3_n4_none_raw_bias", dict(scan_inputs(rng, 1, 2, 3, 4, True),
                                                   channel_reduce="none", squash=False)),
            Case("B1_D2_L3_n4_mean_raw_bias", dict(scan_inputs(rng, 1, 2, 3, 4, True),
                                                   channel_reduce="mean", squash=False)),
        ]
    if scale == "small":
        out = []
        for reduce in ("mean", "none"):
            for squash in (True, False):
                for bias in (False, True):
                    label = f"B2_D24_L128_n16_{reduce}_{'squash' if squash else 'raw'}" + \
                            ("_bias" if bias else "")
                    out.append(Case(label, dict(scan_inputs(rng, 2, 24, 128, 16, bias),
                                                channel_reduce=reduce, squash=squash)))
        return out
    return [
        Case("B2_D768_L197_n16", lambda: dict(scan_inputs(rng, 2, 768, 197, 16),
                                              channel_reduce="mean", squash=True), where="cpu"),
        Case("B128_D768_L197_n16", lambda: dict(scan_inputs(rng, 128, 768, 197, 16),
                                                channel_reduce="mean", squash=True), where="gpu"),
    ]


def vjp_mamba_ac_from_scan(kw, cot):
    """VJP of the first output ``a`` w.r.t. ``delta_raw``, ``A_log`` and ``C`` (``dC = 0``:
    ``a`` does not depend on C); ``dt_bias`` is not differentiated."""
    from refimpl.inf_ssm import mamba_ac_from_scan_vjp

    opts = {k: kw[k] for k in ("dt_bias", "channel_reduce", "squash") if k in kw}
    dd, dA = mamba_ac_from_scan_vjp(kw["delta_raw"], kw["A_log"], kw["C"], cot, **opts)
    return {"ddelta_raw": dd, "dA_log": dA, "dC": np.zeros(np.shape(kw["C"]))}


# --------------------------------------------------------------------------- regulariser


def reg_pairs(rng, S, m, n, identical=(), step=0.05):
    """``(new_pairs, old_pairs)``: old in the code regime, new = old perturbed by ``step``
    (a kept in (0, 0.9)); scans in ``identical`` get exact copies (the shortcut fires)."""
    new, old = [], []
    for s in range(S):
        a, c = code_a(rng, (m, n)), code_c(rng, (m, n))
        old.append((a, c))
        if s in identical:
            new.append((a.copy(), c.copy()))
        else:
            an = np.clip(a + step * rng.normal(size=(m, n)), 0.0, 0.9)
            new.append((an, c + step * rng.normal(size=(m, n))))
    return new, old


def _reg(rng, S, m, n, lam, mode, shortcut, identical=()):
    new, old = reg_pairs(rng, S, m, n, identical)
    return dict(new_pairs=new, old_pairs=old, lam=lam, mode=mode, allclose_shortcut=shortcut)


def cases_infssm_reg_loss(rng, scale):
    """Cases of ``infssm_reg_loss`` / ``_grad``: both modes, shortcut on and off, scans that are
    exact copies (with the shortcut on they contribute exactly 0)."""
    _check_scale(scale)
    if scale == "tiny":
        return [
            Case("S2_m3_n4_infssm_shortcut", _reg(rng, 2, 3, 4, 1.0, "inf_ssm", True, (1,))),
            Case("S2_m3_n4_infssm_noshortcut", _reg(rng, 2, 3, 4, 2.0, "inf_ssm", False, (0,))),
            Case("S2_m3_n4_mse_shortcut", _reg(rng, 2, 3, 4, 0.5, "mse", True, (0,))),
        ]
    if scale == "small":
        return [
            Case("S4_m256_n16_infssm_shortcut", _reg(rng, 4, 256, 16, 2.5e5, "inf_ssm", True, (2,))),
            Case("S4_m256_n16_infssm_noshortcut", _reg(rng, 4, 256, 16, 1.0, "inf_ssm", False, (2,))),
            Case("S4_m256_n16_infssm_all_identical", _reg(rng, 4, 256, 16, 1.0, "inf_ssm", True,
                                                          (0, 1, 2, 3))),
            Case("S4_m256_n16_mse_shortcut", _reg(rng, 4, 256, 16, 1.0, "mse", True, (1,))),
            Case("S4_m256_n16_mse_noshortcut", _reg(rng, 4, 256, 16, 10.0, "mse", False)),
        ]
    return [
        Case("S48_m394_n16", lambda: _reg(rng, 48, 394, 16, 1e6, "inf_ssm", True), where="cpu"),
        Case("S48_m25216_n16", lambda: _reg(rng, 48, 25216, 16, 1e6, "inf_ssm", True), where="gpu"),
    ]
