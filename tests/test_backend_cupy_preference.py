"""CuPy backend of the preference family (``backends/cupy/preference.py``, preference.md sec. 7,
8, 11) on the CPU emulator of ``tests/cuda_emulator.py``: the real CUDA sources of the
``preference`` kernel module compiled with g++, the backend's glue running on NumPy in place of
CuPy.

* the two kernels alone (online LSE + target gather, logit-gradient block) against NumPy;
* every registry case of the seven ops at ``tiny`` scale and a subset at ``small`` scale,
  float32 and float64, through ``refimpl._harness.check_case`` (the cross-check's own
  comparison and the registry tolerances): chunked and dense, every loss type, ``delta="gram"``,
  ``adaptive``, rho in {0, 1e-3, 0.05};
* output kinds and dtypes, rho = 0 == linear DPO, chunked == dense (1e-12), masked positions;
* bad inputs raise the reference's exception and message; other array kinds are a TypeError.

On a GPU the registry cross-check of these ops runs in ``tests/test_crosscheck.py`` (the cupy
rows carry the ``gpu`` marker); ``test_gpu_*`` below adds a larger chunked case there.
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest

import backends
import cuda_emulator
from refimpl import _harness as Hn
from refimpl import _ops
from refimpl import preference as ref
from refimpl._cases import preference as pf_cases

K = cuda_emulator.K
FUNCS = ("seq_logps", "dpo_loss", "dpo_loss_grad", "linear_dpo_loss", "linear_dpo_loss_grad",
         "logits_sam_dpo", "logits_sam_dpo_grad")


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    return cuda_emulator.build(tmp_path_factory)


@pytest.fixture
def emu(emulator, monkeypatch):
    """``backends.cupy`` with NumPy for CuPy; one warp per block and at most two blocks, so
    the warps grid-stride over the rows (few emulated threads)."""
    ns = cuda_emulator.patch_backend(monkeypatch, emulator)
    monkeypatch.setattr(ns.pref, "ROW_WARPS", 1)
    monkeypatch.setattr(ns.pref, "GRID_CAP", 2)
    import backends.cupy as package

    ns.bk = package
    return ns


# =========================================================================== structure (CPU)


def test_signatures_and_exports_match_the_reference():
    pytest.importorskip("cupy", reason="cupy is not installed")
    import backends.cupy as bk
    from backends.cupy import preference as P

    for name in FUNCS:
        assert inspect.signature(getattr(P, name)) == inspect.signature(getattr(ref, name)), name
        fn = getattr(bk, name)                 # bf16 ops: wrapped by backends._bf16
        assert getattr(fn, "__wrapped__", fn) is getattr(P, name) and name in bk.__all__
    assert set(P.__all__) == set(FUNCS)


def test_compile_test_covers_the_preference_kernels():
    """``test_every_kernel_source_compiles_to_ptx_for_sm90`` iterates ``K.kernel_sources()``:
    the preference module and both instantiations of both kernels are among them."""
    src = {s.module: s for s in K.kernel_sources()}
    assert "preference" in K.MODULES and "preference" in src
    want = {f"{t}_{sfx}" for t in ("pref_lse_block", "pref_grad_block") for sfx in ("f32", "f64")}
    assert set(src["preference"].names) == want
    for name in want:
        assert f'extern "C" __global__ void {name}(' in src["preference"].source


# ==================================================================== kernels alone (emulated)


@pytest.mark.parametrize("dtype,tol", [("float64", 1e-13), ("float32", 2e-6)])
@pytest.mark.parametrize("warps,cap", [(1, 1), (2, 3)])
def test_emulated_kernels_online_lse_and_gradient_block(emulator, dtype, tol, warps, cap):
    """Two column blocks folded by ``pref_lse_block`` give LSE and the target logit of every
    row (targets in either block, -inf entries included); ``pref_grad_block`` writes
    ``c (onehot - exp(Z - lse))`` in place."""
    rng = np.random.default_rng(0)
    rows, V1, V2 = 9, 37, 5
    Z = (3 * rng.normal(size=(rows, V1 + V2))).astype(dtype)
    Z[2, :4] = -np.inf
    y = rng.integers(0, V1 + V2, rows).astype(np.int64)
    y[:2] = (3, V1 + 1)
    mx, s, zy = np.full(rows, -np.inf, dtype), np.zeros(rows, dtype), np.zeros(rows, dtype)
    blocks = max(1, min(-(-rows // warps), cap))
    for j0, j1 in ((0, V1), (V1, V1 + V2)):
        Zb = np.ascontiguousarray(Z[:, j0:j1])
        emulator.launch(K.kernel_name("pref_lse_block", dtype), (blocks,), (32 * warps,),
                        (Zb, np.int64(j1 - j0), np.int32(rows), np.int32(j1 - j0), y,
                         np.int64(j0), mx, s, zy))
    Z64 = Z.astype(np.float64)
    m = Z64.max(axis=1)
    lse_want = m + np.log(np.exp(Z64 - m[:, None]).sum(axis=1))
    lse = (mx + np.log(s)).astype(dtype)
    np.testing.assert_allclose(lse, lse_want, rtol=tol, atol=tol)
    np.testing.assert_array_equal(zy, Z[np.arange(rows), y])
    c = rng.normal(size=rows).astype(dtype)
    j0, j1 = V1, V1 + V2
    G = np.ascontiguousarray(Z[:, j0:j1])
    emulator.launch(K.kernel_name("pref_grad_block", dtype), (blocks,), (32 * warps,),
                    (G, np.int64(j1 - j0), np.int32(rows), np.int32(j1 - j0), y, np.int64(j0),
                     lse, c))
    onehot = (np.arange(j0, j1)[None, :] == y[:, None]).astype(np.float64)
    want = c[:, None] * (onehot - np.exp(Z64[:, j0:j1] - lse.astype(np.float64)[:, None]))
    np.testing.assert_allclose(G, want, rtol=tol, atol=tol)


# =================================================================== registry cases (emulated)


def _check(emu, op, dtype, cases):
    rows = [row for case in cases for row in Hn.check_case(op, emu.bk, dtype, case)]
    if not op.name.startswith("dpo"):                   # the emulated kernels did the work
        launched = {c[0] for c in emu.calls}
        assert K.kernel_name("pref_lse_block", dtype) in launched
        if op.name.endswith("_grad") or op.name == "logits_sam_dpo":      # backward sweeps
            assert K.kernel_name("pref_grad_block", dtype) in launched
    bad = [r for r in rows if not r.ok]
    assert rows and not bad, "\n".join(
        f"{r.case} {r.output}: max abs {r.max_abs:.3g} rel {r.max_rel:.3g} "
        f"tol {op.tolerance(dtype, r.output)} {r.note}" for r in bad)
    return rows


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", FUNCS)
def test_emulated_registry_tiny_cases(emu, name, dtype):
    """Every ``tiny`` registry case of the op (chunked and dense, every loss type, rho in
    {0, 1e-3, 0.05}, gram, adaptive, with and without bias) within the registry tolerances."""
    op = _ops.get(name)
    _check(emu, op, dtype, Hn.cases(op, "tiny"))


def _small_subset(op):
    """Of each ``small`` size: the chunked case of every loss type for the head ops (blocks
    that divide neither n nor V), the gram and adaptive cases for logits-SAM; all DPO cases."""
    cases = Hn.cases(op, "small")
    if op.name.startswith("dpo_loss"):
        return cases
    keep = [c for c in cases if "chunks(7, 50)" in c.label and "adaptive" not in c.label]
    if op.name.startswith("logits_sam"):
        keep = keep[:4] + [c for c in cases if "gram" in c.label or "adaptive" in c.label]
    return keep


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", ["seq_logps", "dpo_loss_grad", "linear_dpo_loss_grad",
                                  "logits_sam_dpo_grad"])
def test_emulated_registry_small_cases(emu, name, dtype):
    op = _ops.get(name)
    cases = _small_subset(op)
    assert cases
    _check(emu, op, dtype, cases)


# =========================================================================== properties (emulated)


def _inputs(seed=0, B=2, T=6, d=8, V=13, bias=True, lt="sigmoid"):
    rng = np.random.default_rng(seed)
    H, W, b, labels, mask = pf_cases.head_inputs(rng, B, T, d, V, bias=bias)
    refl = pf_cases._ref_logp(rng, H, W, b, labels, mask, lt == "ipo")
    return dict(H=H, W=W, labels=labels, mask=mask, ref_logp=refl, beta=0.5, b=b, loss_type=lt)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_emulated_output_kinds_and_dtypes(emu, dtype):
    kw = _inputs()
    kw = {k: (v.astype(dtype) if isinstance(v, np.ndarray) and v.dtype.kind == "f" else v)
          for k, v in kw.items()}
    P = emu.pref
    l = P.seq_logps(kw["H"], kw["W"], kw["labels"], kw["mask"], kw["b"])
    assert l.dtype == dtype and l.shape == (4,)
    loss, cr, rr = P.dpo_loss(l, kw["ref_logp"], 0.5)
    assert np.ndim(loss) == 0 and loss.dtype == dtype and cr.dtype == rr.dtype == dtype
    loss, dl = P.dpo_loss_grad(l, kw["ref_logp"], 0.5)
    assert isinstance(loss, np.ndarray) and loss.shape == () and dl.dtype == dtype
    loss, dH, dW, db = P.linear_dpo_loss_grad(**kw)
    assert loss.shape == () and {dH.dtype, dW.dtype, db.dtype} == {np.dtype(dtype)}
    assert P.linear_dpo_loss_grad(**dict(kw, b=None))[3] is None
    for delta in ("weight", "gram"):
        out = P.logits_sam_dpo_grad(**kw, rho=0.05, delta=delta)
        want = ref.logits_sam_dpo_grad(**{k: (v.astype(np.float64) if isinstance(v, np.ndarray)
                                              and v.dtype.kind == "f" else v)
                                          for k, v in kw.items()}, rho=0.05, delta=delta)
        assert list(out) == list(want)
        assert (out["eps_W"] is None) == (delta == "gram")
        for k, v in out.items():
            if v is not None:
                assert isinstance(v, np.ndarray) and v.dtype == dtype, k
        for k in ("loss_pre", "loss_post", "grad_norm"):
            assert out[k].shape == ()
        assert P.logits_sam_dpo(**kw, rho=0.05, delta=delta).dtype == dtype
    assert P.logits_sam_dpo_grad(**dict(kw, b=None), rho=0.05)["db"] is None
    other = "float64" if dtype == "float32" else "float32"      # ref_logp is cast to H's dtype
    assert P.linear_dpo_loss(**dict(kw, ref_logp=kw["ref_logp"].astype(other))).dtype == dtype


@pytest.mark.parametrize("lt", ["sigmoid", "hinge", "ipo"])
@pytest.mark.parametrize("delta", ["weight", "gram"])
def test_emulated_rho_zero_is_linear_dpo(emu, lt, delta):
    kw = _inputs(seed=3, lt=lt)
    out = emu.pref.logits_sam_dpo_grad(**kw, rho=0.0, delta=delta, token_chunk=5, vocab_chunk=4)
    loss, dH, dW, db = emu.pref.linear_dpo_loss_grad(**kw)
    assert float(out["loss_pre"]) == pytest.approx(float(out["loss_post"]), abs=1e-15)
    assert float(out["loss_post"]) == pytest.approx(float(loss), abs=1e-14)
    for got, want in ((out["dH"], dH), (out["dW"], dW), (out["db"], db)):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-14)


@pytest.mark.parametrize("chunks", [(1, 1), (3, 5), (4, 13), (100, 2), (None, 6), (5, None)])
def test_emulated_chunked_equals_dense(emu, chunks):
    """Every option of logits-SAM chunked == dense to 1e-12 (gram recomputes G0 of all tokens
    per block: skipped for 1 x 1 blocks, which only cost emulator time)."""
    kw = _inputs(seed=5, lt="sigmoid")
    tc, vc = chunks
    options = (("weight", False), ("weight", True)) + (() if chunks == (1, 1) else
                                                      (("gram", False),))
    for delta, adaptive in options:
        a = emu.pref.logits_sam_dpo_grad(**kw, rho=0.05, delta=delta, adaptive=adaptive)
        c = emu.pref.logits_sam_dpo_grad(**kw, rho=0.05, delta=delta, adaptive=adaptive,
                                         token_chunk=tc, vocab_chunk=vc)
        for k, v in a.items():
            if v is not None:
                np.testing.assert_allclose(c[k], v, rtol=1e-12, atol=1e-12, err_msg=k)
    np.testing.assert_allclose(
        emu.pref.seq_logps(kw["H"], kw["W"], kw["labels"], kw["mask"], average=True,
                           token_chunk=tc, vocab_chunk=vc),
        ref.seq_logps(kw["H"], kw["W"], kw["labels"], kw["mask"], average=True), atol=1e-12)


def test_emulated_masked_positions_change_nothing(emu):
    kw = _inputs(seed=7, B=3, T=7)
    m = kw["mask"]
    rng = np.random.default_rng(1)
    kw2 = dict(kw, H=kw["H"].copy(), labels=kw["labels"].copy())
    kw2["H"][~m] = 1e3 * rng.normal(size=kw2["H"][~m].shape)
    kw2["labels"][~m] = rng.integers(-5, 10 ** 6, size=int((~m).sum()))
    a = emu.pref.logits_sam_dpo_grad(**kw, rho=1e-3, token_chunk=4, vocab_chunk=5)
    c = emu.pref.logits_sam_dpo_grad(**kw2, rho=1e-3, token_chunk=4, vocab_chunk=5)
    for k in a:
        if a[k] is not None:
            np.testing.assert_array_equal(a[k], c[k], err_msg=k)
    assert not a["dH"][~m].any()


def test_emulated_all_zero_mask(emu):
    kw = _inputs(seed=2)
    kw["mask"] = np.zeros_like(kw["mask"])
    out = emu.pref.logits_sam_dpo_grad(**kw, rho=0.05, token_chunk=3, vocab_chunk=4)
    want = ref.logits_sam_dpo_grad(**kw, rho=0.05, token_chunk=3, vocab_chunk=4)
    for k, v in want.items():
        if v is not None:
            assert not np.isnan(out[k]).any(), k
            np.testing.assert_allclose(out[k], v, atol=1e-14, err_msg=k)
    assert not out["eps_W"].any() and not out["dH"].any()


# =========================================================================== errors


def _bad_calls():
    kw = _inputs(seed=4)
    kw_ipo = _inputs(seed=4, lt="ipo")
    labels_oob = kw["labels"].copy()
    labels_oob[tuple(np.argwhere(kw["mask"])[0])] = kw["W"].shape[0]      # = V
    empty = kw_ipo["mask"].copy()
    empty[1] = False
    odd = {k: (v[:3] if k in ("H", "labels", "mask") else v) for k, v in kw.items()}
    odd["ref_logp"] = kw["ref_logp"][:3]
    return [
        ("labels out of range", "linear_dpo_loss", dict(kw, labels=labels_oob)),
        ("negative label", "seq_logps", dict(H=kw["H"], W=kw["W"], labels=np.where(
            kw["mask"], -1, 0), mask=kw["mask"])),
        ("rho < 0", "logits_sam_dpo_grad", dict(kw, rho=-1e-3)),
        ("rho None", "logits_sam_dpo", dict(kw, rho=None)),
        ("mask shape", "linear_dpo_loss_grad", dict(kw, mask=kw["mask"][:, :-1])),
        ("labels shape", "linear_dpo_loss_grad", dict(kw, labels=kw["labels"][:, :-1])),
        ("mask values", "seq_logps", dict(H=kw["H"], W=kw["W"], labels=kw["labels"],
                                          mask=2 * kw["mask"].astype(np.int64))),
        ("float labels", "seq_logps", dict(H=kw["H"], W=kw["W"], labels=kw["labels"] * 1.0,
                                           mask=kw["mask"])),
        ("odd R", "linear_dpo_loss", odd),
        ("W shape", "linear_dpo_loss", dict(kw, W=kw["W"][:, :-1])),
        ("b shape", "linear_dpo_loss", dict(kw, b=kw["b"][:-1])),
        ("W dtype", "linear_dpo_loss", dict(kw, W=kw["W"].astype(np.float32))),
        ("ref_logp shape", "linear_dpo_loss", dict(kw, ref_logp=kw["ref_logp"][:-1])),
        ("beta", "linear_dpo_loss", dict(kw, beta=0.0)),
        ("loss type", "linear_dpo_loss", dict(kw, loss_type="kto")),
        ("smoothing with hinge", "linear_dpo_loss",
         dict(kw, loss_type="hinge", label_smoothing=0.1)),
        ("token_chunk", "linear_dpo_loss_grad", dict(kw, token_chunk=0)),
        ("vocab_chunk", "seq_logps", dict(H=kw["H"], W=kw["W"], labels=kw["labels"],
                                          mask=kw["mask"], vocab_chunk=2.5)),
        ("delta", "logits_sam_dpo_grad", dict(kw, rho=0.1, delta="full")),
        ("gram adaptive", "logits_sam_dpo_grad", dict(kw, rho=0.1, delta="gram", adaptive=True)),
        ("norm_eps", "logits_sam_dpo_grad", dict(kw, rho=0.1, norm_eps=0.0)),
        ("ipo empty row", "linear_dpo_loss", dict(kw_ipo, mask=empty)),
        ("average empty row", "seq_logps", dict(H=kw["H"], W=kw["W"], labels=kw["labels"],
                                                mask=empty, average=True)),
        ("dpo odd", "dpo_loss", dict(logp=kw["ref_logp"][:3], ref_logp=kw["ref_logp"][:3],
                                     beta=0.1)),
        ("dpo ref shape", "dpo_loss_grad", dict(logp=kw["ref_logp"], ref_logp=kw["ref_logp"][:2],
                                                beta=0.1)),
        ("dpo loss type", "dpo_loss", dict(logp=kw["ref_logp"], ref_logp=kw["ref_logp"],
                                           beta=0.1, loss_type="ipo", label_smoothing=0.2)),
    ]


@pytest.mark.parametrize("what,name,kw", _bad_calls(), ids=[c[0] for c in _bad_calls()])
def test_emulated_bad_inputs_raise_like_the_reference(emu, what, name, kw):
    with pytest.raises(Exception) as want:
        getattr(ref, name)(**kw)
    with pytest.raises(type(want.value)) as got:
        getattr(emu.pref, name)(**kw)
    assert str(got.value) == str(want.value), what


def test_emulated_other_array_kinds_are_refused(emu):
    """Under the emulator NumPy arrays are the native kind: a list (or any other kind) for
    labels, mask, b, ref_logp or logp is a TypeError naming the argument."""
    kw = _inputs(seed=6)
    for arg in ("labels", "mask", "b", "ref_logp", "H"):
        bad = dict(kw, **{arg: kw[arg].tolist()})
        with pytest.raises(TypeError, match=f"{arg} is a builtins.list; the cupy backend"):
            emu.pref.linear_dpo_loss_grad(**bad)
    with pytest.raises(TypeError, match="logp is a builtins.list"):
        emu.pref.dpo_loss(kw["ref_logp"].tolist(), kw["ref_logp"], 0.1)


def test_numpy_inputs_refused_by_the_real_backend():
    """The real module (CuPy imported, no device touched): NumPy arrays are refused before
    any device work, naming the first foreign argument."""
    pytest.importorskip("cupy", reason="cupy is not installed")
    from backends.cupy import preference as P

    kw = _inputs(seed=6)
    with pytest.raises(TypeError, match="H is a numpy.ndarray; the cupy backend"):
        P.logits_sam_dpo_grad(**kw, rho=0.1)
    with pytest.raises(TypeError, match="logp is a numpy.ndarray"):
        P.dpo_loss_grad(kw["ref_logp"], kw["ref_logp"], 0.1)


# =========================================================================== GPU


@pytest.fixture(scope="module")
def cp():
    why = backends.available()["cupy"]
    if why is not None:
        pytest.skip(f"backend cupy: {why}")
    import cupy

    return cupy


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_gpu_chunked_logits_sam_moderate_size(cp, dtype):
    """(B, T, d, V) = (8, 32, 128, 8192), chunks (96, 1536) that divide neither n nor V:
    every output of ``logits_sam_dpo_grad`` and ``linear_dpo_loss_grad`` against the float64
    reference (registry tolerances), and the chunked call's device workspace beyond inputs and
    outputs bounded by the V x d perturbation plus a few chunks of logits."""
    bk = backends.get("cupy")
    op = _ops.get("logits_sam_dpo_grad")
    rng = np.random.default_rng(0)
    H, W, b, labels, mask = pf_cases.head_inputs(rng, 8, 32, 128, 8192)
    refl = pf_cases._ref_logp(rng, H, W, b, labels, mask, False)
    kw = dict(H=H, W=W, labels=labels, mask=mask, ref_logp=refl, beta=0.5, b=b, rho=1e-3,
              token_chunk=96, vocab_chunk=1536)
    want = ref.logits_sam_dpo_grad(**{k: Hn.rounded(v, dtype) for k, v in kw.items()})
    dev = {k: Hn.to_backend(bk, v, dtype) for k, v in kw.items()}
    bk.synchronize()
    bk.reset_peak_memory()
    base = bk.peak_memory()
    got = bk.logits_sam_dpo_grad(**dev)
    bk.synchronize()
    extra = bk.peak_memory() - base
    for k, v in want.items():                       # every output of the SAM step
        rtol, atol = op.tolerance(dtype, k)
        if v is not None:
            np.testing.assert_allclose(cp.asnumpy(got[k]), v, rtol=rtol, atol=atol, err_msg=k)
    lin = {k: v for k, v in kw.items() if k != "rho"}
    want = ref.linear_dpo_loss_grad(**{k: Hn.rounded(v, dtype) for k, v in lin.items()})
    got = bk.linear_dpo_loss_grad(**{k: v for k, v in dev.items() if k != "rho"})
    for k, g, w in zip(("loss", "dH", "dW", "db"), got, want):
        rtol, atol = op.tolerance(dtype, k)
        np.testing.assert_allclose(cp.asnumpy(g), w, rtol=rtol, atol=atol, err_msg=k)
    item = np.dtype(dtype).itemsize
    n, d, V = int(mask.sum()), 128, 8192
    outputs = (H.size + 2 * V * d + V) * item        # dH, dW, eps_W, db
    chunk = 96 * 1536 * item
    assert extra <= outputs + 3 * V * d * item + 8 * chunk + 64 * n * item + (8 << 20), extra
