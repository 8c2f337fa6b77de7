"""bfloat16 on the CuPy and Numba-CUDA backends (``backends/_bf16.py``): the float32 path with
bf16 arrays at the boundary.

* the wrapper's rule on stand-in functions: bf16 arguments upcast, gradients (tuple entries
  after the value of ``*_grad`` ops, ``d*`` dict entries) rounded back, everything else left
  float32, calls without bf16 untouched, the reference signature kept;
* the Numba cast kernels (simulator) against the harness's ``bf16_round`` (ties to even,
  overflow, infinities, NaN), bit for bit;
* every registry op that lists bfloat16 through ``refimpl._harness.check_case`` (registry
  tolerances): every ``tiny`` case on the CuPy emulator (``tests/cuda_emulator.py``), the first
  on the Numba simulator (``refimpl check`` runs them all there), with the output dtypes of
  the rule;
* on both, the preference spec's bf16 acceptance check of logits-SAM (sec. 11 item 6): the
  perturbation's effect on the loss survives, which a bf16 ``W + eps`` would not (0.0004 vs
  0.0029 on the case used).

On a GPU the same ops run in ``tests/test_crosscheck.py`` (the backend's ``DTYPES`` lists
bfloat16); CuPy's own bf16 casts (CuPy >= 14) are exercised only there.
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest

from backends import _bf16
from refimpl import _harness as Hn
from refimpl import _ops

ml_dtypes = pytest.importorskip("ml_dtypes", reason="ml_dtypes is not installed (bf16 arrays)")
BF16 = np.dtype(ml_dtypes.bfloat16)
BF16_OPS = _bf16.ops()


def test_the_bf16_ops_are_the_registry_entries_listing_bfloat16():
    assert set(BF16_OPS) == {op.name for op in _ops.OPS if "bfloat16" in op.dtypes}
    assert {"linear_dpo_loss_grad", "logits_sam_dpo_grad", "kd_divergence_grad",
            "tis_dpo_loss_grad", "weighted_token_ce_grad"} <= set(BF16_OPS)


# =========================================================================== the rule (host)


def _rule(func):
    seen = []

    def is_bf16(x):
        return isinstance(x, np.ndarray) and x.dtype == BF16

    def up(x):
        seen.append(x.shape)
        return x.astype(np.float32)

    return _bf16.through_float32(func, is_bf16, up, lambda x: x.astype(BF16)), seen


def test_rule_on_a_grad_op_rounds_the_gradients_only():
    def thing_grad(H, W, labels, beta=0.1, b=None):
        """A value and gradients: (loss, dH, dW, db)."""
        assert H.dtype == W.dtype == np.float32 and labels.dtype == np.int64
        return np.float32(beta) * H.sum(), H * 3.0, W / 3.0, None

    f, seen = _rule(thing_grad)
    assert inspect.signature(f) == inspect.signature(thing_grad) and f.__doc__ == thing_grad.__doc__
    H = np.array([[1.0, 1 + 2.0 ** -8]], dtype=BF16)
    W = np.array([0.1], dtype=BF16)
    loss, dH, dW, db = f(H, W=W, labels=np.zeros(2, np.int64))
    assert seen == [(1, 2), (1,)]
    assert loss.dtype == np.float32 and dH.dtype == dW.dtype == BF16 and db is None
    np.testing.assert_array_equal(dH.astype(np.float32),
                                  Hn.bf16_round(H.astype(np.float32) * 3.0))
    np.testing.assert_array_equal(dW.astype(np.float32), Hn.bf16_round(W.astype(np.float32) / 3))


def test_rule_on_dict_and_value_ops():
    def step_grad(H):
        return {"loss_pre": H.sum(), "eps_W": H * 0.5, "dH": H * 2.0, "db": None}

    def value(H):
        return H * 2.0

    g, _ = _rule(step_grad)
    out = g(np.ones(3, dtype=BF16))
    assert out["dH"].dtype == BF16 and out["db"] is None
    assert out["eps_W"].dtype == np.float32 and out["loss_pre"].dtype == np.float32
    v, seen = _rule(value)
    assert v(np.ones(3, dtype=BF16)).dtype == np.float32
    x = np.ones(3, dtype=np.float64)
    assert v(x).dtype == np.float64 and seen == [(3,)]          # no bf16 argument: untouched


# =========================================================================== Numba (simulator)

_SPECIAL = np.array([0.0, -0.0, 1.0, 1 + 2.0 ** -8, 1 + 3 * 2.0 ** -8, 1 + 2.0 ** -8 + 2.0 ** -20,
                     -(1 + 2.0 ** -8), 3.3895e38, 3.4e38, -3.4e38, 1e-40, -1e-44, np.inf,
                     -np.inf, np.nan], dtype=np.float32)


def test_numba_cast_kernels_round_to_nearest_even_bitwise():
    from numba_sim import SIM

    if not SIM:
        pytest.skip("Numba CUDA simulator tests: run with NUMBA_ENABLE_CUDASIM=1")
    import backends

    bk = backends.get("numba_cuda")
    from backends.numba_cuda import _kernels as K

    x = np.concatenate([_SPECIAL, np.random.default_rng(0).normal(size=200).astype(np.float32)
                        * np.float32(1e3)]).reshape(5, -1)
    from numba_sim import assert_launches_conform

    K.RECORD = []
    try:
        down = K.float32_to_bf16(bk.asarray(x))
        up = K.bf16_to_float32(down)
        assert {name for name, _, _ in K.RECORD} == {"bf16_up", "bf16_down"}
        assert_launches_conform(K.RECORD)
    finally:
        K.RECORD = None
    assert str(down.dtype) == "bfloat16" and down.shape == x.shape
    got = bk.to_numpy(down)
    want = Hn.bf16_round(x)
    finite = np.isfinite(x)
    np.testing.assert_array_equal(got[finite].view(np.uint32), want[finite].view(np.uint32))
    assert np.all(np.isnan(got[np.isnan(x)]))
    assert np.array_equal(got[np.isinf(x)], x[np.isinf(x)])
    assert np.isinf(got.ravel()[8]) and np.isinf(got.ravel()[9])          # overflow to +-inf
    assert str(up.dtype) == "float32"
    np.testing.assert_array_equal(bk.to_numpy(up).view(np.uint32), got.view(np.uint32))


def _check_all(bk, per_op=None):
    """``check_case`` of the bf16 ops' ``tiny`` cases (the first ``per_op`` of each op)."""
    bad, n = [], 0
    for name in BF16_OPS:
        op = _ops.get(name)
        for case in [c for c in Hn.cases(op, "tiny") if c.runs_in("bfloat16")][:per_op]:
            rows = Hn.check_case(op, bk, "bfloat16", case)
            n += len(rows)
            bad += [f"{name} {case.label} {r.output}: {r.max_abs:.3g} {r.note}"
                    for r in rows if not r.ok]
    assert n and not bad, "\n".join(bad)


def _dtypes_of_outputs(bk, up):
    """Output dtypes of one head op and one logits-level op on bf16 inputs."""
    from refimpl._cases import preference as pf

    rng = np.random.default_rng(1)
    H, W, b, labels, mask = pf.head_inputs(rng, 2, 5, 8, 11)
    refl = pf._ref_logp(rng, H, W, b, labels, mask, False)
    dev = {k: bk.asarray(Hn.bf16_round(v), dtype="bfloat16")
           for k, v in dict(H=H, W=W, b=b, ref_logp=refl).items()}
    lab, msk = up(labels), up(mask)
    loss, dH, dW, db = bk.linear_dpo_loss_grad(dev["H"], dev["W"], lab, msk, dev["ref_logp"], 0.1,
                                               dev["b"])
    assert [str(x.dtype) for x in (loss, dH, dW, db)] == ["float32"] + ["bfloat16"] * 3
    out = bk.logits_sam_dpo_grad(dev["H"], dev["W"], lab, msk, dev["ref_logp"], 0.1, 1e-3)
    assert {k: str(v.dtype) for k, v in out.items() if v is not None} == {
        "loss_pre": "float32", "loss_post": "float32", "grad_norm": "float32",
        "eps_W": "float32", "dH": "bfloat16", "dW": "bfloat16", "chosen_rewards": "float32",
        "rejected_rewards": "float32"}
    z = bk.asarray(Hn.bf16_round(rng.normal(size=(2, 3, 7))), dtype="bfloat16")
    div, dz = bk.kd_divergence_grad(z, z)
    assert (str(div.dtype), str(dz.dtype)) == ("float32", "bfloat16")


def _sam_step_survives_bf16(bk, up):
    """Spec sec. 11 item 6: on bf16 H, W, b, ``loss_post - loss_pre`` agrees to 20% with the
    float64 reference on the same values, where ``rho ||g_W|| >= 1e-3`` and a bf16 ``W + eps``
    would lose most of the perturbation (the backend forms it in float32)."""
    from refimpl import preference as ref
    from refimpl._cases import preference as pf

    rng = np.random.default_rng(14)
    H, W, b, labels, mask = pf.head_inputs(rng, 2, 8, 16, 67)
    H, W, b = (Hn.bf16_round(x) for x in (H, W, b))
    refl = pf._ref_logp(rng, H, W, b, labels, mask, False)
    beta, rho = 0.5, 1e-3
    o64 = ref.logits_sam_dpo_grad(H, W, labels, mask, refl, beta, rho, b)
    assert rho * o64["grad_norm"] >= 1e-3
    lost = Hn.bf16_round(W + o64["eps_W"]) == W
    assert lost.mean() > 0.5
    dev = [bk.asarray(x, dtype="bfloat16") for x in (H, W, b)]
    o16 = bk.logits_sam_dpo_grad(dev[0], dev[1], up(labels), up(mask), bk.asarray(refl),
                                 beta, rho, dev[2])
    d64 = o64["loss_post"] - o64["loss_pre"]
    d16 = float(bk.to_numpy(o16["loss_post"])) - float(bk.to_numpy(o16["loss_pre"]))
    assert abs(d16 - d64) <= 0.2 * abs(d64), (d16, d64)


def test_numba_registry_tiny_cases_in_bfloat16():
    from numba_sim import SIM

    if not SIM:
        pytest.skip("Numba CUDA simulator tests: run with NUMBA_ENABLE_CUDASIM=1")
    import backends

    bk = backends.get("numba_cuda")
    assert "bfloat16" in bk.DTYPES
    _check_all(bk, per_op=1)          # refimpl check (CI) runs all of them in the simulator
    _dtypes_of_outputs(bk, bk.asarray)
    _sam_step_survives_bf16(bk, bk.asarray)


# =========================================================================== CuPy (emulator)


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    import cuda_emulator

    return cuda_emulator.build(tmp_path_factory)


def test_cupy_registry_tiny_cases_in_bfloat16(emulator, monkeypatch):
    """The emulator's NumPy stand-in holds ``ml_dtypes`` arrays, so the backend's rule runs as
    written (``astype`` both ways) and the float32 kernels do the work."""
    import cuda_emulator

    ns = cuda_emulator.patch_backend(monkeypatch, emulator)
    monkeypatch.setattr(ns.bk, "_BF16", True)
    monkeypatch.setattr(ns.bk, "DTYPES", ("float32", "float64", "bfloat16"))
    import backends.cupy as package

    for name in BF16_OPS:   # the wrappers as installed (CuPy < 14 leaves them out)
        if not hasattr(getattr(package, name), "__wrapped__"):
            wrapped = _bf16.through_float32(getattr(package, name), package._is_bf16,
                                            package._bf16_up, package._bf16_down)
            monkeypatch.setattr(package, name, wrapped)
    _check_all(package)
    from backends.cupy import _kernels as K

    launched = {c[0] for c in emulator.calls}
    assert K.kernel_name("pref_lse_block", "float32") in launched          # the float32 path
    assert not any(k.endswith("_f64") for k in launched)
    _dtypes_of_outputs(package, np.asarray)
    _sam_step_survives_bf16(package, np.asarray)
