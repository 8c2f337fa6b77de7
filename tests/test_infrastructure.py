"""The registry, the backend probe, the interface rule, the command and the asv suite."""

import importlib
import inspect
import json
import os
import pathlib
import subprocess
import sys
import types

import numpy as np
import pytest

import backends
from refimpl import _harness as H
from refimpl import _ops, cli

ROOT = pathlib.Path(__file__).resolve().parents[1]


def importable(name):
    """Backend modules whose array library imports here (even without a device)."""
    try:
        return importlib.import_module(f"backends.{name}")
    except ImportError as exc:
        pytest.skip(f"backends.{name} does not import here: {exc}")


# --------------------------------------------------------------------------- backend probing


def test_available_lists_every_backend_with_a_reason():
    avail = backends.available()
    assert list(avail) == list(backends.NAMES)
    assert avail["numpy"] is None
    for why in avail.values():
        assert why is None or (isinstance(why, str) and len(why) > 10)


def test_disable_variable_and_unknown_names(monkeypatch):
    monkeypatch.setenv("REFIMPL_DISABLE_NUMPY", "1")
    assert backends.reason("numpy") == "disabled by REFIMPL_DISABLE_NUMPY"
    with pytest.raises(backends.BackendUnavailable, match="disabled by REFIMPL_DISABLE_NUMPY"):
        backends.get("numpy")
    with pytest.raises(ValueError, match="unknown backend 'jax'"):
        backends.get("jax")


def _python(code):
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                          env=env, timeout=300)


def test_import_refimpl_imports_numpy_and_scipy_only():
    res = _python("import sys, refimpl, refimpl._ops, backends; "
                  "print(sorted(m for m in ('torch', 'cupy', 'numba', 'numba.cuda') if m in sys.modules))")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"


def test_probing_and_importing_backends_allocate_nothing_on_a_device():
    pytest.importorskip("torch")
    res = _python("import backends, torch; backends.available(); "
                  "[backends.get(n) for n, w in backends.available().items() if w is None]; "
                  "import importlib; [importlib.import_module('backends.' + n) for n in ('cupy', 'numba_cuda')]; "
                  "print(torch.cuda.is_initialized())")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().splitlines()[-1] == "False"


# --------------------------------------------------------------------------- the interface rule


# Families whose issue promised every backend: a backend missing one of their ops is a bug.
COMPLETE_FAMILIES = ("softdtw", "ot", "preference", "cross_tokenizer", "inf_ssm",
                     "causal_discrete", "safety_ensembles", "recsys_vae", "gnn", "crpl")


@pytest.mark.parametrize("name", ["numpy", "torch", "cupy", "numba_cuda"])
def test_backends_offer_ops_with_the_reference_signature(name):
    bk = importable(name)
    for attr in ("NAME", "DTYPES", "asarray", "to_numpy", "is_native", "synchronize",
                 "reset_peak_memory", "peak_memory", "describe"):
        assert hasattr(bk, attr), f"backends.{name} lacks the protocol's {attr}"
    assert bk.NAME == name
    for op in _ops.OPS:
        fn = getattr(bk, op.name, None)
        if fn is None:
            assert name != "numpy" and op.family not in COMPLETE_FAMILIES, (
                f"backends.{name} has no {op.name}")
            continue
        assert inspect.signature(fn) == inspect.signature(op.ref), (
            f"{name}.{op.name}{inspect.signature(fn)} != reference {inspect.signature(op.ref)}")


def test_a_missing_op_is_reported_not_failed(monkeypatch, capsys):
    monkeypatch.delattr(backends.get("numpy"), "sdtw_cost")
    assert cli.main(["check", "--backend", "numpy", "--op", "sdtw_cost", "--op", "soft_dtw"]) == 0
    out = capsys.readouterr().out
    assert "missing" in out and "1 passed, 0 failed, 1 missing" in out


def test_registry_is_consistent():
    names = {op.name for op in _ops.OPS}
    assert len(names) == len(_ops.OPS)
    for op in _ops.OPS:
        params = inspect.signature(op.ref).parameters
        assert op.paper and op.doc
        assert all(w in params for w in op.wrt), op.name
        assert (op.vjp is None) == (not op.wrt), op.name
        assert op.grad_of is None or op.grad_of in names, op.name
        for scale in _ops.SCALES:
            cases = H.cases(op, scale)
            assert cases, f"{op.name} has no {scale} cases"
            for case in cases:
                assert case.where in ("any", "cpu", "gpu")
                if not callable(case.kwargs):
                    inspect.signature(op.ref).bind(**case.kwargs)
        for dtype in op.dtypes:
            assert "*" in op.tol[dtype]


def test_mixed_backends_are_refused_by_name():
    torch = pytest.importorskip("torch")
    tb = backends.get("torch")
    C = np.ones((3, 3))
    with pytest.raises(TypeError, match="C is a numpy.ndarray; the torch backend"):
        tb.soft_dtw(C, 1.0)
    with pytest.raises(TypeError, match="the numpy reference"):
        backends.get("numpy").soft_dtw(torch.ones(3, 3, dtype=torch.float64), 1.0)


# --------------------------------------------------------------------------- comparison logic


def test_compare_arrays_catches_errors_infinities_and_nans():
    a = np.array([1.0, np.inf, 2.0])
    assert H.compare_arrays(a, a.copy(), 0, 0)[2]
    assert not H.compare_arrays(a + [1e-3, 0, 0], a, 1e-5, 1e-5)[2]
    assert not H.compare_arrays(np.array([1.0, 5.0, 2.0]), a, 1, 1)[2]
    assert not H.compare_arrays(np.array([1.0, np.inf, np.nan]), a, 1, 1)[2]
    assert not H.compare_arrays(np.ones(2), np.ones(3), 1, 1)[2]
    assert H.compare_arrays(50, 50, 0, 0)[2] and not H.compare_arrays(50, 49, 0, 0)[2]
    padded = np.array([1.0, np.nan, -np.inf])           # NaN padding matched where expected
    assert H.compare_arrays(padded.copy(), padded, 0, 0)[2]
    assert not H.compare_arrays(np.array([1.0, 0.0, -np.inf]), padded, 1, 1)[2]
    assert not H.compare_arrays(np.array([1.0, np.nan, np.inf]), padded, 1, 1)[2]


def test_bf16_rounding_is_round_to_nearest_even():
    """``bf16_round`` against torch's float32 -> bfloat16 cast, including exact ties."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    x = rng.normal(size=20000) * np.exp(5 * rng.normal(size=20000))
    ties = np.array([1 + 2.0 ** -8, 1 + 3 * 2.0 ** -8, -(1 + 2.0 ** -8), 0.0, -0.0])
    for v in (x, ties, np.float64(1.0)):
        want = torch.as_tensor(np.asarray(v, dtype=np.float32)).bfloat16().float().numpy()
        got = H.bf16_round(v)
        assert got.shape == np.shape(v) and np.array_equal(got, want)
    assert H.bf16_round(ties)[:2].tolist() == [1.0, 1 + 2.0 ** -6]   # ties go to even
    assert H.rounded(np.array([1 + 2.0 ** -9]), "bfloat16")[0] == 1.0
    assert H.itemsize("bfloat16") == 2


def test_bf16_runs_only_where_the_op_and_the_backend_offer_it():
    tb = types.SimpleNamespace(DTYPES=("float32", "float64", "bfloat16"))
    nb = types.SimpleNamespace(DTYPES=("float32", "float64"))
    assert H.run_dtypes(_ops.get("logits_sam_dpo_grad"), tb)[-1] == "bfloat16"
    assert "bfloat16" not in H.run_dtypes(_ops.get("logits_sam_dpo_grad"), nb)
    assert "bfloat16" not in H.run_dtypes(_ops.get("soft_dtw"), tb)
    gpu = [c for c in H.cases(_ops.get("linear_dpo_loss_grad"), "bench") if c.where == "gpu"]
    assert gpu and all(c.runs_in("bfloat16") and not c.runs_in("float32") for c in gpu)


# --------------------------------------------------------------------------- the command


def test_list_names_every_op_and_backend(capsys):
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    for op in _ops.OPS:
        assert op.name in out
    for name in backends.NAMES:
        assert name in out


def test_check_passes_on_the_reference(capsys):
    assert cli.main(["check", "--backend", "numpy", "--op", "soft_dtw", "--op", "emd"]) == 0
    out = capsys.readouterr().out
    assert "soft_dtw" in out and "emd" in out and "FAIL" not in out and "2 passed, 0 failed, 0 missing" in out


def test_check_fails_loudly_on_a_wrong_backend(monkeypatch, capsys):
    bk = backends.get("numpy")
    monkeypatch.setattr(bk, "soft_dtw", lambda C, gamma, **kw: _ops.get("soft_dtw").ref(C, gamma, **kw) + 1e-6)
    assert cli.main(["check", "--backend", "numpy", "--op", "soft_dtw"]) == 1
    assert "FAIL" in capsys.readouterr().out


def test_check_reports_unavailable_backends_with_the_reason(monkeypatch, capsys):
    monkeypatch.setenv("REFIMPL_DISABLE_TORCH", "1")
    cli.main(["check", "--backend", "numpy", "--backend", "torch", "--op", "sdtw_cost"])
    assert "torch: not checked — disabled by REFIMPL_DISABLE_TORCH" in capsys.readouterr().out


def test_check_writes_json(tmp_path, capsys):
    path = tmp_path / "rows.json"
    cli.main(["check", "--backend", "numpy", "--op", "pairwise_cost", "--json", str(path)])
    rows = json.loads(path.read_text())
    assert rows and all(r["ok"] for r in rows) and {r["op"] for r in rows} == {"pairwise_cost"}


def test_bench_prints_speedup_over_the_reference(capsys):
    assert cli.main(["bench", "--backend", "numpy", "--op", "sdtw_cost", "--scale", "tiny",
                     "--repeat", "3"]) == 0
    out = capsys.readouterr().out
    assert "median ms" in out and "1.0x" in out


def test_demo_command_writes_the_plot_and_prints_the_summary(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    assert cli.main(["demo", "ot", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert (tmp_path / "ot.png").stat().st_size > 10_000
    summary = json.loads((tmp_path / "ot.json").read_text())
    assert f'"emd_cost": {summary["emd_cost"]}' in out


def test_unknown_op_is_an_error():
    with pytest.raises(ValueError, match="unknown op 'soft_dtwx'"):
        cli.main(["check", "--op", "soft_dtwx"])


# --------------------------------------------------------------------------- asv


def _suite_classes():
    sys.path.insert(0, str(ROOT / "asv_bench"))
    try:
        from benchmarks import common
    finally:
        sys.path.pop(0)
    return {name: cls for fam in _ops.FAMILIES for name, cls in common.suite(fam).items()}


def test_asv_suite_covers_every_op_forward_and_full():
    classes = _suite_classes()
    methods = {m for cls in classes.values() for m in vars(cls) if m.startswith(("time_", "track_"))}
    for op in _ops.OPS:
        base = op.grad_of or op.name
        assert (f"time_full_{base}" if op.grad_of else f"time_{op.name}") in methods
        if any(c.where != "cpu" for c in H.cases(op, "bench")):
            assert f"track_peak_gpu_bytes_{base}" in methods
    for name, cls in classes.items():
        assert name.endswith(("CPU", "GPU")) and cls.params[0] == (
            ["numpy", "torch"] if name.endswith("CPU") else ["torch", "cupy", "numba_cuda"])


def test_every_family_has_an_asv_module():
    for family in _ops.FAMILIES:
        module = ROOT / "asv_bench" / "benchmarks" / f"bench_{family}.py"
        assert module.exists() and f'suite("{family}")' in module.read_text(), module


def test_every_timed_benchmark_synchronises(monkeypatch):
    """Each timed call must call its backend's synchronize (patched here to count). Every CPU
    class must have a case that runs here; GPU classes are exercised on a GPU machine."""
    counter = []
    for name in ("numpy", "torch"):
        if backends.reason(name) is None:
            monkeypatch.setattr(backends.get(name), "synchronize", lambda: counter.append(1))
    ran = set()
    for cname, cls in _suite_classes().items():
        method = next((m for m in vars(cls) if m.startswith("time_")), None)
        if method is None:
            continue
        for backend in cls.params[0]:
            for label in cls.params[1]:
                bench = cls()
                try:
                    bench.setup(backend, label, "float64")
                except NotImplementedError:
                    continue
                before = len(counter)
                getattr(bench, method)(backend, label, "float64")
                assert len(counter) == before + 1, f"{cname}.{method} did not synchronise"
                ran.add(cname)
                break
    cpu = {c for c in _suite_classes() if c.endswith("CPU")}
    assert cpu <= ran, f"CPU benchmark classes with no runnable case: {sorted(cpu - ran)}"


# --------------------------------------------------------------------------- the README


def test_readme_tour_runs_and_computes_what_it_says(capsys):
    pytest.importorskip("torch")
    import re

    code = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)[0]
    ns: dict = {}
    exec(compile(code, "README.md", "exec"), ns)
    assert ns["E"].shape == (80, 60) and ns["Xt"].grad.shape == (80, 3)
    assert ns["D"].item() >= 0
    linear = float((ns["res"].plan * ns["C"] / ns["C"].max()).sum())
    assert 0 <= linear - float(ns["exact"].cost) <= 0.005 * np.log(60)  # entropic bound (ot.md)
    step = ns["step"]
    assert abs(np.linalg.norm(step["eps_W"]) - 1e-3) < 1e-15      # ||eps_W||_F = rho
    # first order: L_post - L_pre = rho ||g_W|| + O(rho^2)
    assert abs(step["loss_post"] - step["loss_pre"] - 1e-3 * step["grad_norm"]) < 1e-3 * 1e-3 * step["grad_norm"]
    # Antibody: the weights are a softmax over the batch; ignored (prompt) positions get no
    # gradient; IBDR: the loss is the CE of the mean logits minus 0.02 LD, LD <= K log(1 + j)
    assert abs(ns["w"].sum() - 1) < 1e-15 and np.all(ns["w"] > 0)
    assert ns["dW"].shape == ns["W"].shape and not ns["dH"][:, :2].any() and ns["loss"] > 0
    F, y = ns["F"], ns["y"]
    Fbar = F.mean(axis=0)
    lse = np.log(np.exp(Fbar).sum(-1))
    ld = ns["se"].dpp_logdet_diversity(np.exp(F) / np.exp(F).sum(-1, keepdims=True), y)
    assert ld <= 4 * np.log1p(1e-7)
    assert abs(ns["val"] - (np.mean(lse - Fbar[np.arange(8), y]) - 0.02 * ld)) < 1e-12
    # Mult-VAE: the objective is the loss of the forward with the same mask and noise; one
    # gradient per parameter, of its shape
    rv, Xr, prm = ns["rv"], ns["Xr"], ns["prm"]
    fwd = rv.multvae_forward(Xr, prm, ns["mask"], ns["eps"])
    assert abs(ns["obj"] - rv.multvae_loss(Xr, *fwd, 0.2)[0]) < 1e-12
    assert {k: g.shape for k, g in ns["grads"].items()} == {k: p.shape for k, p in prm.items()}
    # GAT: a softmax per (destination, head) over 4 nodes x 2 heads sums to 8; the GCN VJP
    # is the gradient of <ones, H> (checked against finite differences in test_gnn_layers)
    assert ns["Hg"].shape == (4, 4) and abs(ns["alpha"].sum() - 8) < 1e-12
    assert sorted(ns["gg"]) == ["dW", "dX"] and ns["gg"]["dX"].shape == (4, 3)
    # CRPL: the plan's columns carry 1/K; the text gradient is the envelope -P^T Z; the value is
    # <P, 1 - Z T^T>
    P, Zc, Tc = ns["P"], ns["Zc"], ns["Tc"]
    assert np.allclose(P.sum(0), 1 / 3) and np.allclose(P.sum(1), 1 / 6)
    assert abs(ns["L_W"] - (P * (1 - Zc @ Tc.T)).sum()) < 1e-12
