"""CuPy backend of the crpl family (``backends/cupy/crpl.py``: CRPL, arXiv 2506.11493) on the CPU
emulator of ``tests/cuda_emulator.py``: the real CUDA sources of the ``crpl`` kernel module
compiled with g++, the glue on NumPy.

* every tiny registry case (``refimpl/_cases/crpl.py``) of every function vs the float64
  reference, float32 and float64, at the registry tolerances (the probabilities also at the
  small size: the step where the last centroid appears, a missing centroid, source-combined,
  the "paper" variant), with the row kernels launched;
* the explicit gradient of ``crpl_loss_grad`` vs central finite differences of the backend's
  own ``crpl_loss`` (float64, tie-free costs);
* ONE host read per call (``ns.reads``; the OT paths add exactly the reads of
  ``backends.cupy.ot.emd``), bad inputs raise the reference's messages;
* ``gpu`` tests run the bench sizes on a real device against the reference.
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest

import cuda_emulator
from cuda_emulator import bk, cp  # noqa: F401 (GPU fixtures)
from refimpl import _crpl as R
from refimpl._cases import crpl as C

K = cuda_emulator.K
FUNCS = tuple(R.__all__)
_cast = cuda_emulator.cast_floats

CASES = {
    "update_class_centroids": C.cases_update_class_centroids,
    "crpl_reference_probs": C.cases_crpl_reference_probs,
    "soft_cross_entropy": C.cases_soft_cross_entropy,
    "soft_cross_entropy_grad": C.cases_soft_cross_entropy_grad,
    "ot_cluster_loss": C.cases_ot_cluster_loss,
    "crpl_target_loss": C.cases_crpl_target_loss,
    "crpl_loss": C.cases_crpl_loss,
    "crpl_loss_grad": C.cases_crpl_loss_grad,
    "target_accuracy": C.cases_target_accuracy,
}


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    return cuda_emulator.build_module(tmp_path_factory, "crpl")


@pytest.fixture
def emu(emulator, monkeypatch):
    ns = cuda_emulator.patch_backend(monkeypatch, emulator)
    monkeypatch.setattr(ns.crpl, "WARPS", 2)      # 2 rows per block
    monkeypatch.setattr(ns.crpl, "GRID_CAP", 2)   # warps grid-stride over rows
    return ns


def _flat(name, res):
    if name == "crpl_loss":
        return C.outputs_crpl_loss(res, {})
    if name == "crpl_loss_grad":
        return C.outputs_crpl_loss_grad(res, {})
    if isinstance(res, tuple):
        return {str(i): r for i, r in enumerate(res)}
    return {"0": res}


def _assert_close(got, want, dt, what=""):
    rtol, atol = C.TOL[dt]["*"]
    assert set(got) == set(want), (what, set(got), set(want))
    for key, w in want.items():
        g = np.asarray(got[key])
        w = np.asarray(w)
        assert g.shape == w.shape, (what, key, g.shape, w.shape)
        if w.dtype.kind in "iu":
            assert g.dtype == np.int64, (what, key, g.dtype)
            np.testing.assert_array_equal(g, w, err_msg=f"{what} {key}")
        else:
            assert g.dtype == np.dtype(dt), (what, key, g.dtype)
            np.testing.assert_allclose(g.astype(np.float64), w, rtol=rtol, atol=atol,
                                       err_msg=f"{what} {key}")


def _run(name, kw, dt):
    """(backend result flattened, reference result flattened) on the case cast to dt."""
    from backends.cupy import crpl as B

    kc = _cast(kw, dt)
    if isinstance(kc.get("T_list"), list):
        kc["T_list"] = [T.astype(dt) for T in kc["T_list"]]
    got = _flat(name, getattr(B, name)(**kc))
    want = _flat(name, getattr(R, name)(**kc))
    return got, want


# =========================================================================== structure


def test_signatures_match_the_reference():
    from backends.cupy import crpl as B

    for name in FUNCS:
        assert inspect.signature(getattr(B, name)) == inspect.signature(getattr(R, name)), name
    assert set(B.__all__) == set(FUNCS)


def test_module_is_registered_with_its_kernels():
    assert "crpl" in K.MODULES
    names = {k.name for k in K.KERNELS.values() if k.module == "crpl"}
    assert names == {f"{t}_{s}" for t in ("crpl_probs_rows", "crpl_ce_rows", "crpl_ce_grad")
                     for s in ("f32", "f64")}


def test_crpl_module_compiles_with_nvrtc_for_sm90():
    """The module through NVRTC for compute_90 (skips without NVRTC)."""
    import test_backend_cupy as T

    nvrtc = T._nvrtc()
    ks = {s.module: s for s in K.kernel_sources()}["crpl"]
    options = tuple(ks.options) + tuple(K.CUPY_IMPLICIT_OPTIONS) + ("-arch=compute_90",)
    ok, log, ptx = T._compile_ptx(nvrtc, ks.source, ks.module, options)
    assert ok, log
    for name in ks.names:
        assert f".entry {name}(" in ptx


# =========================================================================== vs the reference


@pytest.mark.parametrize("dt", ["float64", "float32"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_tiny_cases_match_the_reference(emu, name, dt):
    cases = CASES[name](np.random.default_rng(7), "tiny")
    assert cases
    for case in cases:
        emu.calls.clear()
        got, want = _run(name, case.inputs(), dt)
        _assert_close(got, want, dt, f"{name}[{case.label}]")
        if name not in ("update_class_centroids", "target_accuracy", "ot_cluster_loss"):
            assert any(c[0].startswith("crpl_") for c in emu.calls), name


def test_small_reference_probs_match(emu):
    """B = 30, K = 65, D = 1024, S = 3: last centroid step (2 -> 3 terms), missing centroid,
    source-combined, full, "paper" (full and missing), another gamma / scale."""
    for case in C.cases_crpl_reference_probs(np.random.default_rng(3), "small"):
        for dt in ("float64", "float32"):
            got, want = _run("crpl_reference_probs", case.inputs(), dt)
            _assert_close(got, want, dt, case.label)


def test_small_target_and_sce_cases_match(emu):
    rng = np.random.default_rng(5)
    for name in ("crpl_target_loss", "soft_cross_entropy_grad"):
        for case in CASES[name](rng, "small"):
            got, want = _run(name, case.inputs(), "float64")
            _assert_close(got, want, "float64", f"{name}[{case.label}]")


def test_n_pseudo_switch_on_the_last_centroid(emu):
    """Counts with one zero give the 2-term average, filling it gives 3 terms (closed forms)."""
    from backends.cupy import crpl as B

    kw = C.cases_crpl_reference_probs(np.random.default_rng(11), "tiny")[0].inputs()
    z, Tb, Ts = kw["z"], kw["T_base"], kw["T_S"]
    counts = kw["counts"].copy()
    counts[-1, -1] = 0.0
    p2 = B.crpl_reference_probs(**dict(kw, counts=counts))
    l2 = (z @ Tb.T + z @ Ts.T) / 2.0
    np.testing.assert_allclose(p2, R._softmax(100.0 * l2), rtol=1e-12, atol=1e-14)
    p3 = B.crpl_reference_probs(**kw)
    w = R._source_weights(kw["u"], kw["centroids"], 10.0)
    mixed = (w * np.einsum("bd,skd->sbk", z, kw["T_Si"])).sum(axis=0)
    l3 = (z @ Tb.T + z @ Ts.T + mixed) / 3.0
    np.testing.assert_allclose(p3, R._softmax(100.0 * l3), rtol=1e-10, atol=1e-14)
    assert np.abs(np.log(p3) - np.log(p2)).max() > 1e-3


def test_crpl_loss_grad_matches_finite_differences(emu):
    """float64, tie-free costs: the explicit dT_S, dT_Si, dT_T vs central differences of the
    backend's own crpl_loss along a random direction (the plan's support and the hard labels
    are locally constant)."""
    from backends.cupy import crpl as B

    kw = C.cases_crpl_loss(np.random.default_rng(2), "tiny")[0].inputs()
    _, _, grads = B.crpl_loss_grad(**kw)
    rng = np.random.default_rng(0)
    h = 1e-6
    for key, arg in (("dT_S", "T_S"), ("dT_Si", "T_Si"), ("dT_T", "T_T")):
        V = rng.normal(size=kw[arg].shape)
        # the loss off the unit sphere (rows 1e-6 off the unit norm pass the 1e-4 check)
        Lp = float(B._loss(*_args(kw, arg, h * V), need_grad=False)[0])
        Lm = float(B._loss(*_args(kw, arg, -h * V), need_grad=False)[0])
        fd = (Lp - Lm) / (2 * h)
        np.testing.assert_allclose(float((grads[key] * V).sum()), fd, rtol=1e-6, atol=1e-8,
                                   err_msg=key)


def _args(kw, arg, dv):
    kw = dict(kw)
    kw[arg] = kw[arg] + dv
    names = ("z_src", "y_src", "dom_src", "z_tgt", "T_S", "T_Si", "T_T", "p")
    defaults = dict(scale=100.0, lam_W=0.5, lam_T=0.5, use_ot=True)
    defaults.update({k: v for k, v in kw.items() if k in defaults})
    return [kw[n] for n in names] + [defaults[k] for k in ("scale", "lam_W", "lam_T", "use_ot")]


def test_clip_pseudo_labels_match(emu):
    from backends.cupy import crpl as B

    rng = np.random.default_rng(9)
    w = C.World(rng, 6, 8, 1)
    _, z, _ = w.images(40, 1)
    for thr, sc in ((0.4, 100.0), (0.9, 100.0), (0.2, 10.0)):
        for dt in ("float64", "float32"):
            got = B.clip_pseudo_labels(z.astype(dt), w.T_base.astype(dt), thr, sc)
            want = R.clip_pseudo_labels(z.astype(dt), w.T_base.astype(dt), thr, sc)
            assert got.dtype == np.int64
            np.testing.assert_array_equal(got, want)


# =========================================================================== host reads


def test_one_host_read_per_call(emu):
    """One read (the stacked validation statistics) per call; the OT paths add exactly the
    reads of backends.cupy.ot.emd on the same problem."""
    from backends.cupy import crpl as B

    rng = np.random.default_rng(1)
    for name, fn in CASES.items():
        kw = fn(rng, "tiny")[0].inputs()
        emu.reads.clear()
        getattr(B, name)(**kw)
        expect = 1
        if name == "ot_cluster_loss" or (name.startswith("crpl_loss")
                                        and kw.get("use_ot", True)):
            Bt = kw["Z"].shape[0] if name == "ot_cluster_loss" else kw["z_tgt"].shape[0]
            Kt = kw["T"].shape[0] if name == "ot_cluster_loss" else kw["T_T"].shape[0]
            n0 = len(emu.reads)
            emu.reads.clear()
            emu.ot.emd(np.full(Bt, 1.0 / Bt), np.full(Kt, 1.0 / Kt),
                       1.0 - rng.random((Bt, Kt)))
            expect = 1 + len(emu.reads)
            assert n0 == expect, (name, n0, expect)
            continue
        assert len(emu.reads) == expect, (name, emu.reads)


# =========================================================================== bad inputs


def _raises_same(fn_b, fn_r, kw):
    with pytest.raises((ValueError, TypeError)) as ref:
        fn_r(**kw)
    with pytest.raises(type(ref.value)) as got:
        fn_b(**kw)
    assert str(got.value) == str(ref.value)


def test_bad_inputs_raise_the_reference_messages(emu):
    from backends.cupy import crpl as B

    rng = np.random.default_rng(4)
    kp = C.cases_crpl_reference_probs(rng, "tiny")[0].inputs()
    kl = C.cases_crpl_loss(rng, "tiny")[0].inputs()
    ko = C.cases_ot_cluster_loss(rng, "tiny")[0].inputs()
    kc = C.cases_update_class_centroids(rng, "tiny")[0].inputs()
    ks = C.cases_soft_cross_entropy(rng, "tiny")[0].inputs()
    ka = C.cases_target_accuracy(rng, "tiny")[0].inputs()
    bad = [
        ("crpl_reference_probs", dict(kp, z=1.3 * kp["z"])),              # not unit norm
        ("crpl_reference_probs", dict(kp, T_S=kp["T_S"][:2])),            # K mismatch
        ("crpl_reference_probs", dict(kp, gamma=-1.0)),
        ("crpl_reference_probs", dict(kp, variant="pdf")),
        ("crpl_reference_probs", dict(kp, counts=-kp["counts"] - 1)),
        ("crpl_reference_probs", dict(kp, z=kp["z"][:0], u=kp["u"][:0])),  # empty batch
        ("ot_cluster_loss", dict(ko, T=2.0 * ko["T"])),
        ("update_class_centroids", dict(kc, labels=kc["labels"] + 100)),
        ("soft_cross_entropy", dict(ks, p=ks["p"][:, :2])),
        ("crpl_loss", dict(kl, dom_src=np.zeros_like(kl["dom_src"]))),    # a domain missing
        ("crpl_loss", dict(kl, y_src=kl["y_src"] - 10)),
        ("crpl_target_loss", dict(z=kl["z_tgt"], T_T=kl["T_T"], p=kl["p"], use_ot=1)),
        ("target_accuracy", dict(ka, batch_size=0)),
        ("target_accuracy", dict(ka, variant="paper")),
        ("clip_pseudo_labels", dict(z=kp["z"], T_base=kp["T_base"], threshold=1.5)),
    ]
    for name, kw in bad:
        _raises_same(getattr(B, name), getattr(R, name), kw)


# =========================================================================== GPU


def _gpu_cases(name, fn):
    return [c for c in fn(np.random.default_rng(0), "bench") if c.where in ("any", "gpu")]


@pytest.mark.gpu
@pytest.mark.parametrize("name", sorted(CASES))
def test_gpu_bench_sizes_match_the_reference(cp, bk, name):  # noqa: F811
    from backends.cupy import crpl as B

    for case in _gpu_cases(name, CASES[name]):
        kw = _cast(case.inputs(), "float32")
        if isinstance(kw.get("T_list"), list):
            kw["T_list"] = [T.astype(np.float32) for T in kw["T_list"]]
        want = _flat(name, getattr(R, name)(**kw))
        dev = {k: (cp.asarray(v) if isinstance(v, np.ndarray) else
                   [cp.asarray(t) for t in v] if isinstance(v, list) else v)
               for k, v in kw.items()}
        res = getattr(B, name)(**dev)
        got = {k: cp.asnumpy(v) if hasattr(v, "device") else np.asarray(v)
               for k, v in _flat(name, res).items()}
        _assert_close(got, want, "float32", f"{name}[{case.label}]")
