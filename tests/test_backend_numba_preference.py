"""Numba-CUDA preference family (DPO through a linear head, logits-SAM) beyond the registry.

(a) CPU, always: every ``pref_*`` kernel is in the signature table, so the PTX compile test of
    ``tests/test_backend_numba.py`` (``-k compile``: cc 9.0, float32 and float64, no float64
    arithmetic in float32 kernels) covers it; the public functions have the reference's
    signatures.
(b) simulator (``NUMBA_ENABLE_CUDASIM=1``, tiny sizes): against the float64 reference —
    chunked vs dense, every loss type, bias absent/present, an all-zero mask row, strided
    inputs, ``delta="gram"``, ``adaptive``, rho = 0 == linear DPO, an all-zero mask, float32;
    bad input raises the reference's errors; every launch's argument types are the compiled
    signatures and every ``pref_*`` kernel runs.
(c) ``gpu`` marker, real device: a mid-size case (many tiles and blocks) in float64 and
    float32, and CuPy/torch inputs coming back as their kind.
"""

import inspect

import numpy as np
import pytest

import backends
from refimpl import preference as P
from refimpl._cases.preference import TOL, head_inputs

pytest.importorskip("numba")
from backends.numba_cuda import _kernels as K  # noqa: E402

from numba_sim import assert_launches_conform, GPU_REASON, ON_GPU, nb, sim_only  # noqa: E402,F401
from numba_sim import raises_like_reference  # noqa: E402
from numba_sim import rng_for as _rng  # noqa: E402
from numba_sim import to_host as _h  # noqa: E402

PUBLIC = ("seq_logps", "dpo_loss", "dpo_loss_grad", "linear_dpo_loss", "linear_dpo_loss_grad",
          "logits_sam_dpo", "logits_sam_dpo_grad")
F64 = dict(rtol=1e-10, atol=1e-10)


def _d(bk, a, dtype="float64"):
    a = np.asarray(a)
    return bk.asarray(a.astype(dtype) if a.dtype.kind == "f" else a)





def _case(seed, B=2, T=5, d=8, V=11, *, bias=True, empty_row=None, ipo=False):
    """Head inputs (prompt prefix + right padding, -100 labels there) and ref_logp."""
    rng = _rng(seed)
    H, W, b, labels, mask = head_inputs(rng, B, T, d, V, bias=bias)
    if empty_row is not None:
        mask[empty_row] = False
        labels[empty_row] = -100
    l = P.seq_logps(H, W, labels, mask, b, average=ipo)
    ref = l + (0.3 if ipo else 2.0) * rng.normal(size=l.shape)
    return H, W, b, labels, mask, ref


def _dev(bk, H, W, b, labels, mask, ref, dtype="float64"):
    """Device copies in call order ``(H, W, labels, mask, ref_logp, b)``."""
    return (_d(bk, H, dtype), _d(bk, W, dtype), _d(bk, labels), _d(bk, mask),
            _d(bk, ref, dtype), None if b is None else _d(bk, b, dtype))


def _close(got, want, rtol=1e-10, atol=1e-10, what=""):
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol, err_msg=what)


# --------------------------------------------------------------------------- (a) CPU


def test_every_pref_kernel_is_in_the_signature_table_compiled_by_the_ptx_test():
    """The PTX test of test_backend_numba.py compiles ``K.specs()``: every kernel function the
    dtype factory builds must be listed there, for both dtypes."""
    built = {name for name in K.functions("float64") if name.startswith("pref_")}
    listed = {name for name in K._SIGNATURES if name.startswith("pref_")}
    assert built == listed and len(listed) >= 10
    ids = {name for name, _, _ in K.specs()}
    for name in listed:
        for dt in K.DTYPES:
            assert f"{name}[{dt}]" in ids
            assert "{" not in K.signature(name, dt)
    # pref_cast reads the other dtype ({U})
    assert K.signature("pref_cast", "float32").startswith("void(float64[:]")


def test_public_functions_have_the_reference_signatures():
    import backends.numba_cuda as nbm

    for name in PUBLIC:
        assert name in nbm.__all__
        assert inspect.signature(getattr(nbm, name)) == inspect.signature(getattr(P, name)), name
    assert nbm.DTYPES[:2] == ("float32", "float64")   # bfloat16: tests/test_bf16.py


# --------------------------------------------------------------------------- (b) simulator


@sim_only
@pytest.mark.parametrize("loss_type,ls,chunks,bias,empty_row", [
    ("sigmoid", 0.0, None, True, 1),
    ("sigmoid", 0.1, (3, 4), False, 2),
    ("hinge", 0.0, (1, 3), True, 0),
    ("ipo", 0.0, (7, 50), False, None),
])
def test_sim_linear_dpo_grad_matches_reference(nb, loss_type, ls, chunks, bias, empty_row):
    """Each loss type, chunks that do not divide n or V (and None), bias absent/present, an
    all-zero mask row (not for IPO: its token mean is undefined there); strided H and W."""
    H, W, b, labels, mask, ref = _case(1, bias=bias, empty_row=empty_row, ipo=loss_type == "ipo")
    kw = dict(loss_type=loss_type, label_smoothing=ls)
    if chunks is not None:
        kw.update(token_chunk=chunks[0], vocab_chunk=chunks[1])
    want = P.linear_dpo_loss_grad(H, W, labels, mask, ref, 0.5, b, **kw)
    # strided device views: H[..., :d] of a wider array, W[:, :d] likewise
    Hw = np.concatenate([H, np.ones(H.shape[:2] + (3,))], axis=2)
    Ww = np.concatenate([W, np.ones((W.shape[0], 2))], axis=1)
    d = H.shape[2]
    Hd, Wd = _d(nb, Hw)[:, :, :d], _d(nb, Ww)[:, :d]
    _, _, ld, md, rd, bd = _dev(nb, H, W, b, labels, mask, ref)
    got = nb.linear_dpo_loss_grad(Hd, Wd, ld, md, rd, 0.5, bd, **kw)
    assert (got[3] is None) == (b is None)
    for name, g, w in zip(("loss", "dH", "dW", "db"), got, want):
        if w is not None:
            _close(_h(nb, g), w, what=name)
    if empty_row is not None:
        assert np.all(_h(nb, got[1])[empty_row] == 0.0)
    assert np.all(_h(nb, got[1])[~mask] == 0.0)       # dH exactly 0 at masked tokens
    loss = nb.linear_dpo_loss(Hd, Wd, ld, md, rd, 0.5, bd, **kw)
    assert np.shape(_h(nb, loss)) == () and _h(nb, loss) == _h(nb, got[0])


@sim_only
def test_sim_chunked_equals_dense_and_seq_logps(nb):
    H, W, b, labels, mask, ref = _case(2, empty_row=3)
    dev = _dev(nb, H, W, b, labels, mask, ref)
    Hd, Wd, ld, md, rd, bd = dev
    dense = nb.linear_dpo_loss_grad(Hd, Wd, ld, md, rd, 0.5, bd)
    chunk = nb.linear_dpo_loss_grad(Hd, Wd, ld, md, rd, 0.5, bd, token_chunk=2, vocab_chunk=3)
    for g0, g1 in zip(dense, chunk):
        _close(_h(nb, g1), _h(nb, g0), rtol=1e-12, atol=1e-12)
    for kw in ({}, dict(token_chunk=4, vocab_chunk=5)):
        got = nb.seq_logps(Hd, Wd, ld, md, bd, **kw)
        _close(_h(nb, got), P.seq_logps(H, W, labels, mask, b))
    assert _h(nb, got)[3] == 0.0                            # empty completion: l = 0
    m2 = mask.copy()                                        # average=True needs n_r > 0
    m2[3, 1] = True
    l2 = labels.copy()
    l2[3, 1] = 0
    got = nb.seq_logps(Hd, Wd, _d(nb, l2), _d(nb, m2), None, average=True, vocab_chunk=4)
    _close(_h(nb, got), P.seq_logps(H, W, l2, m2, None, average=True))


@sim_only
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("loss_type,ls", [("sigmoid", 0.0), ("sigmoid", 0.3), ("hinge", 0.0),
                                          ("ipo", 0.0)])
def test_sim_dpo_loss_from_logps(nb, dtype, loss_type, ls):
    rng = _rng(3)
    B = 5
    ref = -20 + 5 * rng.normal(size=2 * B)
    logp = ref + 4.0 * rng.normal(size=2 * B)
    logp[0] = ref[0] + 1e3      # large |u|: the stable softplus branch
    beta = 0.3
    x, r = logp.astype(dtype).astype(np.float64), ref.astype(dtype).astype(np.float64)
    want = P.dpo_loss(x, r, beta, loss_type=loss_type, label_smoothing=ls)
    want_g = P.dpo_loss_grad(x, r, beta, loss_type=loss_type, label_smoothing=ls)
    # ref_logp in the other dtype: converted on the device (pref_cast)
    other = "float32" if dtype == "float64" else "float64"
    got = nb.dpo_loss(_d(nb, x, dtype), _d(nb, r, other), beta, loss_type=loss_type,
                      label_smoothing=ls)
    got_g = nb.dpo_loss_grad(_d(nb, x, dtype), _d(nb, r, dtype), beta, loss_type=loss_type,
                             label_smoothing=ls)
    rtol, atol = TOL[dtype]["*"]
    r_other = r.astype(other).astype(np.float64)
    want_o = P.dpo_loss(x, r_other, beta, loss_type=loss_type, label_smoothing=ls)
    for g, w in zip(got, want_o):
        _close(_h(nb, g), w, rtol=rtol, atol=atol)
    assert all(str(np.dtype(g.dtype)) == dtype for g in got)
    _close(_h(nb, got_g[0]), want_g[0], rtol=rtol, atol=atol)
    _close(_h(nb, got_g[1]), want_g[1], rtol=rtol, atol=TOL[dtype].get("dlogp", (0, atol))[1])
    assert np.shape(_h(nb, got[0])) == () and want[0] == want_g[0]


def _sam_close(nb, got, want, tol=F64):
    assert set(got) == set(want)
    for k, w in want.items():
        if w is None:
            assert got[k] is None, k
        else:
            _close(_h(nb, got[k]), w, what=k, **tol)


@sim_only
@pytest.mark.parametrize("delta,adaptive,chunks,bias,loss_type", [
    ("weight", False, (7, 50), True, "hinge"),
    ("weight", True, (4, 5), False, "sigmoid"),
    ("gram", False, None, True, "sigmoid"),
    ("gram", False, (3, 4), False, "ipo"),
])
def test_sim_logits_sam_matches_reference(nb, delta, adaptive, chunks, bias, loss_type):
    H, W, b, labels, mask, ref = _case(4, bias=bias, ipo=loss_type == "ipo",
                                       empty_row=None if loss_type == "ipo" else 2)
    kw = dict(loss_type=loss_type, adaptive=adaptive, delta=delta)
    if chunks is not None:
        kw.update(token_chunk=chunks[0], vocab_chunk=chunks[1])
    want = P.logits_sam_dpo_grad(H, W, labels, mask, ref, 0.5, 0.05, b, **kw)
    dev = _dev(nb, H, W, b, labels, mask, ref)
    got = nb.logits_sam_dpo_grad(*dev[:5], 0.5, 0.05, dev[5], **kw)
    _sam_close(nb, got, want)
    assert (got["eps_W"] is None) == (delta == "gram") and (got["db"] is None) == (b is None)
    if delta == "weight" and not adaptive:
        assert np.linalg.norm(_h(nb, got["eps_W"])) == pytest.approx(0.05, rel=1e-12)


@sim_only
def test_sim_gram_equals_weight_and_rho0_equals_linear_dpo(nb):
    H, W, b, labels, mask, ref = _case(5, empty_row=0)
    Hd, Wd, ld, md, rd, bd = _dev(nb, H, W, b, labels, mask, ref)
    g = nb.logits_sam_dpo_grad(Hd, Wd, ld, md, rd, 0.5, 0.05, bd, vocab_chunk=4)
    gg = nb.logits_sam_dpo_grad(Hd, Wd, ld, md, rd, 0.5, 0.05, bd, delta="gram", token_chunk=5)
    for k in ("loss_pre", "loss_post", "grad_norm", "dH", "dW", "db", "chosen_rewards"):
        _close(_h(nb, gg[k]), _h(nb, g[k]), rtol=1e-11, atol=1e-12, what=k)
    assert _h(nb, g["loss_post"]) != _h(nb, g["loss_pre"])
    z = nb.logits_sam_dpo_grad(Hd, Wd, ld, md, rd, 0.5, 0.0, bd, token_chunk=3, vocab_chunk=4)
    lin = nb.linear_dpo_loss_grad(Hd, Wd, ld, md, rd, 0.5, bd)
    assert _h(nb, z["loss_post"]) == _h(nb, z["loss_pre"])
    assert np.all(_h(nb, z["eps_W"]) == 0.0)
    for k, x in zip(("loss_post", "dH", "dW", "db"), lin):
        _close(_h(nb, z[k]), _h(nb, x), rtol=1e-12, atol=1e-13, what=k)
    post = nb.logits_sam_dpo(Hd, Wd, ld, md, rd, 0.5, 0.05, bd, vocab_chunk=4)
    assert _h(nb, post) == _h(nb, g["loss_post"])


@sim_only
@pytest.mark.parametrize("delta", ["weight", "gram"])
def test_sim_all_zero_mask_gives_zero_eps_and_no_nan(nb, delta):
    H, W, b, labels, mask, ref = _case(6, B=1, T=3, d=4, V=5)
    mask[:] = False
    labels[:] = -100
    want = P.logits_sam_dpo_grad(H, W, labels, mask, ref, 0.5, 0.05, b, delta=delta)
    dev = _dev(nb, H, W, b, labels, mask, ref)
    got = nb.logits_sam_dpo_grad(*dev[:5], 0.5, 0.05, dev[5], delta=delta)
    _sam_close(nb, got, want)
    assert _h(nb, got["grad_norm"]) == 1e-12 and not np.isnan(_h(nb, got["loss_post"]))
    if delta == "weight":
        assert np.all(_h(nb, got["eps_W"]) == 0.0)


@sim_only
def test_sim_float32_logits_sam_within_registry_tolerance(nb):
    H, W, b, labels, mask, ref = _case(7)
    r32 = [x.astype("float32").astype(np.float64) if x.dtype.kind == "f" else x
           for x in (H, W, labels, mask, ref, b)]
    want = P.logits_sam_dpo_grad(*r32[:5], 0.5, 0.05, r32[5], token_chunk=7,
                                 vocab_chunk=5, label_smoothing=0.1)
    dev = _dev(nb, H, W, b, labels, mask, ref, "float32")
    got = nb.logits_sam_dpo_grad(*dev[:5], 0.5, 0.05, dev[5], token_chunk=7,
                                 vocab_chunk=5, label_smoothing=0.1)
    for k, w in want.items():
        assert str(np.dtype(got[k].dtype)) == "float32", k
        rtol, atol = TOL["float32"].get(k, TOL["float32"]["*"])
        _close(_h(nb, got[k]), w, rtol=rtol, atol=atol, what=k)


@sim_only
def test_sim_bad_input_raises_the_reference_errors(nb):
    H, W, b, labels, mask, ref = _case(8, empty_row=1)
    Hd, Wd, ld, md, rd, bd = _dev(nb, H, W, b, labels, mask, ref)
    bad = labels.copy()
    bad[0, int(np.flatnonzero(mask[0])[0])] = W.shape[0]          # label == V where mask = 1
    cases = [
        (lambda: P.linear_dpo_loss(H, W, bad, mask, ref, 0.5, b),
         lambda: nb.linear_dpo_loss(Hd, Wd, _d(nb, bad), md, rd, 0.5, bd)),
        (lambda: P.logits_sam_dpo(H, W, labels, mask, ref, 0.5, -1e-3, b),
         lambda: nb.logits_sam_dpo(Hd, Wd, ld, md, rd, 0.5, -1e-3, bd)),
        (lambda: P.seq_logps(H, W[:, :-1], labels, mask),                # d mismatch
         lambda: nb.seq_logps(Hd, _d(nb, W[:, :-1]), ld, md)),
        (lambda: P.linear_dpo_loss(H, W, labels, mask, ref[:-2], 0.5, b),
         lambda: nb.linear_dpo_loss(Hd, Wd, ld, md, _d(nb, ref[:-2]), 0.5, bd)),
        (lambda: P.linear_dpo_loss(H, W, labels[:, :-1], mask, ref, 0.5),
         lambda: nb.linear_dpo_loss(Hd, Wd, _d(nb, labels[:, :-1]), md, rd, 0.5)),
        (lambda: P.seq_logps(H, W, labels, mask, average=True),         # empty row, IPO mean
         lambda: nb.seq_logps(Hd, Wd, ld, md, average=True)),
        (lambda: P.linear_dpo_loss(H, W, labels, mask, ref, 0.5, loss_type="ipo"),
         lambda: nb.linear_dpo_loss(Hd, Wd, ld, md, rd, 0.5, loss_type="ipo")),
        (lambda: P.linear_dpo_loss(H, W, labels, mask, ref, 0.5, loss_type="hinge",
                                   label_smoothing=0.1),
         lambda: nb.linear_dpo_loss(Hd, Wd, ld, md, rd, 0.5, loss_type="hinge",
                                    label_smoothing=0.1)),
        (lambda: P.logits_sam_dpo(H, W, labels, mask, ref, 0.5, 0.1, delta="gram", adaptive=True),
         lambda: nb.logits_sam_dpo(Hd, Wd, ld, md, rd, 0.5, 0.1, delta="gram", adaptive=True)),
        (lambda: P.dpo_loss(ref[:3], ref[:3], 0.1), lambda: nb.dpo_loss(rd[:3], rd[:3], 0.1)),
        (lambda: P.dpo_loss(ref, ref, 0.0), lambda: nb.dpo_loss(rd, rd, 0.0)),
        (lambda: P.seq_logps(H, W, labels, mask, token_chunk=0),
         lambda: nb.seq_logps(Hd, Wd, ld, md, token_chunk=0)),
    ]
    for ref_call, nb_call in cases:
        raises_like_reference(ref_call, nb_call)
    # host NumPy arrays are refused (no silent host round-trips), naming the argument
    with pytest.raises(TypeError, match="H is a numpy.ndarray; the numba_cuda backend"):
        nb.seq_logps(H, Wd, ld, md)
    with pytest.raises(TypeError, match="labels is a numpy.ndarray"):
        nb.seq_logps(Hd, Wd, labels, md)
    with pytest.raises(TypeError, match="ref_logp is a numpy.ndarray"):
        nb.linear_dpo_loss(Hd, Wd, ld, md, ref, 0.5)
    with pytest.raises(TypeError, match="logp is a numpy.ndarray"):
        nb.dpo_loss(ref, rd, 0.1)
    with pytest.raises(TypeError, match="W must have the dtype of H"):
        nb.seq_logps(Hd, _d(nb, W, "float32"), ld, md)
    with pytest.raises(TypeError, match="H must have dtype float32 or float64"):
        nb.seq_logps(_d(nb, H, "float16"), Wd, ld, md)


@sim_only
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_sim_every_pref_launch_matches_a_compiled_signature(nb, monkeypatch, dtype):

    monkeypatch.setattr(K, "RECORD", [])
    H, W, b, labels, mask, ref = _case(9, B=1, T=3, d=4, V=5)
    Hd, Wd, ld, md, rd, bd = _dev(nb, H, W, b, labels, mask, ref, dtype)
    other = "float32" if dtype == "float64" else "float64"
    nb.dpo_loss(_d(nb, ref, dtype), _d(nb, ref, other), 0.1)
    nb.logits_sam_dpo_grad(Hd, Wd, ld, md, rd, 0.5, 0.05, bd, adaptive=True, token_chunk=2,
                           vocab_chunk=3, loss_type="ipo")
    nb.logits_sam_dpo_grad(Hd, Wd, ld, md, rd, 0.5, 0.05, None, delta="gram")
    assert K.RECORD, "nothing was launched"
    assert_launches_conform(K.RECORD)
    ran = {name for name, _, _ in K.RECORD if name.startswith("pref_")}
    assert ran == {name for name in K._SIGNATURES if name.startswith("pref_")}


@sim_only
def test_sim_outputs_are_device_arrays_of_the_input_dtype(nb):
    H, W, b, labels, mask, ref = _case(10, B=1, T=3, d=4, V=5)
    dev = _dev(nb, H, W, b, labels, mask, ref, "float32")
    nb.reset_peak_memory()
    loss, dH, dW, db = nb.linear_dpo_loss_grad(*dev[:5], 0.5, dev[5], vocab_chunk=2)
    for x, shape in ((loss, ()), (dH, H.shape), (dW, W.shape), (db, b.shape)):
        assert nb.is_native(x) and tuple(x.shape) == shape and np.dtype(x.dtype) == np.float32
    assert nb.peak_memory() >= dH.nbytes + dW.nbytes


# --------------------------------------------------------------------------- (c) real GPU


@pytest.fixture(scope="module")
def gpu_nb():
    if not ON_GPU:
        pytest.skip(GPU_REASON)
    return backends.get("numba_cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not ON_GPU, reason=GPU_REASON)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_gpu_mid_size_matches_reference(gpu_nb, dtype):
    """Many GEMM tiles, several row and vocab blocks, full warps in the LSE kernel."""
    bk = gpu_nb
    H, W, b, labels, mask, ref = _case(11, B=3, T=40, d=70, V=517)
    rd = [x.astype(dtype).astype(np.float64) if x.dtype.kind == "f" else x
          for x in (H, W, labels, mask, ref, b)]
    tol = F64 if dtype == "float64" else dict(rtol=5e-4, atol=1e-4)
    dev = _dev(bk, H, W, b, labels, mask, ref, dtype)
    for kw in (dict(token_chunk=37, vocab_chunk=200), {}):
        for delta in ("weight", "gram"):
            want = P.logits_sam_dpo_grad(*rd[:5], 0.5, 1e-3, rd[5], delta=delta, **kw)
            got = bk.logits_sam_dpo_grad(*dev[:5], 0.5, 1e-3, dev[5], delta=delta, **kw)
            _sam_close(bk, got, want, tol)
        want = P.linear_dpo_loss_grad(*rd[:5], 0.5, rd[5], loss_type="hinge", **kw)
        got = bk.linear_dpo_loss_grad(*dev[:5], 0.5, dev[5], loss_type="hinge", **kw)
        for g, w in zip(got, want):
            _close(_h(bk, g), w, **tol)


@pytest.mark.gpu
@pytest.mark.skipif(not ON_GPU, reason=GPU_REASON)
def test_gpu_cupy_and_torch_inputs_come_back_as_their_kind(gpu_nb):
    bk = gpu_nb
    H, W, b, labels, mask, ref = _case(12)
    want = P.linear_dpo_loss_grad(H, W, labels, mask, ref, 0.5, b)
    ran = False
    try:
        import cupy
    except ImportError:
        cupy = None
    if cupy is not None and cupy.is_available():
        got = bk.linear_dpo_loss_grad(*(cupy.asarray(x) for x in (H, W, labels, mask, ref)), 0.5,
                                      cupy.asarray(b))
        assert all(isinstance(x, cupy.ndarray) for x in got)
        for g, w in zip(got, want):
            _close(cupy.asnumpy(g), w)
        ran = True
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None and torch.cuda.is_available():
        t = lambda x: torch.as_tensor(x, device="cuda")  # noqa: E731
        got = bk.linear_dpo_loss_grad(t(H), t(W), t(labels), t(mask), t(ref), 0.5, t(b))
        assert all(isinstance(x, torch.Tensor) and x.is_cuda for x in got)
        for g, w in zip(got, want):
            _close(g.cpu().numpy(), w)
        ran = True
    if not ran:
        pytest.skip("neither CuPy nor torch with CUDA is installed")
