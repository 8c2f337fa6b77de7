"""Running registry ops on a backend and comparing them with the reference — the one piece of
logic behind the cross-check test, ``refimpl check``, ``refimpl bench`` and asv.

Inputs of a case are NumPy float64; for dtype ``dt`` a backend receives them cast to ``dt``
and the reference receives the same rounded values in float64, so a comparison measures only
the backend's arithmetic. ``bfloat16`` (no NumPy dtype) is rounded here to the nearest bf16
value (ties to even) and handed to the backend as float32 with ``asarray(a, dtype=...)``."""

from __future__ import annotations

import math
import statistics
import time
import zlib
from dataclasses import dataclass
from types import ModuleType
from typing import Callable, Iterable

import numpy as np

import backends
from refimpl._ops import Case, Op

MISSING = "missing: the backend does not offer this op"
DEVICE_BANDWIDTH = {"H100": 3.0e12}  # practical HBM ceilings (performance.md sec. 1), bytes/s


def rng_for(op: Op, salt: str = "") -> np.random.Generator:
    """A generator seeded from the op name, so every tool sees the same cases."""
    return np.random.default_rng(zlib.crc32((op.name + salt).encode()))


def default_scale(backend: str) -> str:
    """The simulator checks logic at tiny sizes; real devices and CPUs at small sizes."""
    return "tiny" if backend == "numba_cuda" and backends.simulator() else "small"


def cases(op: Op, scale: str) -> list[Case]:
    return op.cases(rng_for(op, scale), scale)


def runs_here(case: Case, bk: ModuleType) -> bool:
    """Whether a case's ``where`` ("cpu"/"gpu"/"any") fits the backend's device."""
    if case.where == "any":
        return True
    return (case.where == "gpu") == on_gpu(bk)


def on_gpu(bk: ModuleType) -> bool:
    """Whether the backend computes on a real CUDA device (not the CPU, not the simulator)."""
    if bk.NAME == "cupy":
        return True
    if bk.NAME == "numba_cuda":
        return not backends.simulator()
    return bk.NAME == "torch" and "cuda" in bk.describe().lower()


# --------------------------------------------------------------------------- conversions


def bf16_round(x: np.ndarray) -> np.ndarray:
    """``x`` rounded to the nearest bfloat16 value (ties to even), as float32 (finite inputs)."""
    bits = np.array(x, dtype=np.float32).view(np.uint32)      # a contiguous copy, shape kept
    bits = (bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) & np.uint32(0xFFFF0000)
    return bits.view(np.float32)


def itemsize(dtype: str) -> int:
    return 2 if dtype == "bfloat16" else np.dtype(dtype).itemsize


def run_dtypes(op: Op, bk: ModuleType) -> list[str]:
    """The dtypes ``op`` is checked and timed in on ``bk``: the op's that the backend offers."""
    return [d for d in op.dtypes if d in bk.DTYPES]


def to_backend(bk: ModuleType, value, dtype: str):
    """NumPy float arrays -> native arrays of ``dtype``; integer arrays keep their dtype; tuples,
    lists and dicts (e.g. a model's parameters) are converted item by item."""
    if isinstance(value, np.ndarray):
        if value.dtype.kind != "f":
            return bk.asarray(value)
        if dtype == "bfloat16":
            return bk.asarray(bf16_round(value), dtype="bfloat16")
        return bk.asarray(value.astype(dtype))
    if isinstance(value, (tuple, list)):  # pairs, lists of per-scan pairs
        return type(value)(to_backend(bk, v, dtype) for v in value)
    if isinstance(value, dict):
        return {k: to_backend(bk, v, dtype) for k, v in value.items()}
    return value


def rounded(value, dtype: str):
    """The float64 values a backend sees after the cast to ``dtype``."""
    if isinstance(value, np.ndarray) and value.dtype.kind == "f":
        if dtype == "bfloat16":
            return bf16_round(value).astype(np.float64)
        return value.astype(dtype).astype(np.float64)
    if isinstance(value, (tuple, list)):
        return type(value)(rounded(v, dtype) for v in value)
    if isinstance(value, dict):
        return {k: rounded(v, dtype) for k, v in value.items()}
    return value


def to_host(bk: ModuleType, result):
    """Native arrays in a result (array, tuple, namedtuple or dict) -> NumPy; other values kept."""
    if isinstance(result, dict):
        return {k: to_host(bk, v) for k, v in result.items()}
    if isinstance(result, tuple):
        items = [to_host(bk, r) for r in result]
        return type(result)(*items) if hasattr(result, "_fields") else tuple(items)
    if bk.is_native(result):
        return np.asarray(bk.to_numpy(result), dtype=np.float64)
    return result


# --------------------------------------------------------------------------- comparison


@dataclass
class Row:
    """One compared output of one case."""

    op: str
    backend: str
    dtype: str
    case: str
    output: str
    max_abs: float
    max_rel: float
    ok: bool
    note: str = ""


def compare_arrays(got, want, rtol: float, atol: float) -> tuple[float, float, bool]:
    """``(max abs err, max rel err, ok)`` with ``|got - want| <= atol + rtol |want|``; the
    relative error is taken over the entries larger than ``atol`` (below it, it is noise).

    Infinities must match exactly and NaN only where the reference has NaN."""
    if not isinstance(want, np.ndarray) and not isinstance(got, np.ndarray):
        if isinstance(want, (bool, int, str)) or want is None:  # exact: counts, flags, None
            return 0.0, 0.0, got == want
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    if got.shape != want.shape:
        return math.inf, math.inf, False
    nan_ok = np.array_equal(np.isnan(got), np.isnan(want))
    inf_ok = np.array_equal(np.where(np.isinf(want), np.sign(want), 0.0),  # NaN-safe signs
                            np.where(np.isinf(got), np.sign(got), 0.0))
    finite = np.isfinite(want) & np.isfinite(got)
    diff = np.abs(got[finite] - want[finite])
    scale = np.abs(want[finite])
    max_abs = float(diff.max()) if diff.size else 0.0
    rel = diff / np.where(scale > atol, scale, np.inf)  # relative error of entries above atol
    max_rel = float(rel.max()) if rel.size else 0.0
    ok = nan_ok and inf_ok and bool(np.all(diff <= atol + rtol * scale))
    if not (nan_ok and inf_ok):
        max_abs = max_rel = math.inf
    return max_abs, max_rel, ok


def _compare(op: Op, bk_name: str, dtype: str, label: str, got: dict, want: dict) -> list[Row]:
    rows = []
    for name, w in want.items():
        rtol, atol = op.tolerance(dtype, name)
        if name not in got:
            rows.append(Row(op.name, bk_name, dtype, label, name, math.inf, math.inf, False, "missing"))
            continue
        a, r, ok = compare_arrays(got[name], w, rtol, atol)
        rows.append(Row(op.name, bk_name, dtype, label, name, a, r, ok))
    return rows


def offers(bk: ModuleType, op: Op) -> bool:
    """Whether a backend has the op (a backend either computes an op or does not have it)."""
    return callable(getattr(bk, op.name, None))


def check_case(op: Op, bk: ModuleType, dtype: str, case: Case) -> list[Row]:
    """Run one case on a backend and on the reference; one Row per compared output.

    Ops with differentiable inputs are also checked through the backend's autograd
    (``autograd_vjp``, where the backend has one) against the reference VJP."""
    kw = case.inputs()
    ref_kw = {k: rounded(v, dtype) for k, v in kw.items()}
    want = op.named(op.ref(**ref_kw), ref_kw)
    fn = getattr(bk, op.name)
    native_kw = {k: to_backend(bk, v, dtype) for k, v in kw.items()}
    got = op.named(to_host(bk, fn(**native_kw)), ref_kw)
    rows = _compare(op, bk.NAME, dtype, case.label, got, want)
    wrt = tuple(w for w in op.wrt if kw.get(w) is not None)  # optional inputs (a bias) may be absent
    if wrt and op.vjp is not None and hasattr(bk, "autograd_vjp"):
        out_shape = np.shape(want[op.out_names[0]])
        cot = rounded(rng_for(op, case.label).random(out_shape), dtype)
        want_g = op.vjp(ref_kw, cot)
        got_g = bk.autograd_vjp(fn, native_kw, wrt, to_backend(bk, np.asarray(cot), dtype))
        got_g = {"d" + k: to_host(bk, v) for k, v in got_g.items()}
        rows += _compare(op, bk.NAME + ":autograd", dtype, case.label, got_g, want_g)
    return rows


def check(ops: Iterable[Op], backend_names: Iterable[str], scale: str | None = None,
          dtypes: Iterable[str] | None = None,
          progress: Callable[[str], None] | None = None) -> tuple[list[Row], dict[str, str]]:
    """Cross-check ``ops`` on every available backend in ``backend_names``.

    Returns the rows and ``{backend: reason}`` for the backends that could not run."""
    rows, skipped = [], {}
    for name in backend_names:
        why = backends.reason(name)
        if why is not None:
            skipped[name] = why
            continue
        bk = backends.get(name)
        sc = scale or default_scale(name)
        for op in ops:
            if not offers(bk, op):
                rows.append(Row(op.name, name, "-", "-", "-", 0.0, 0.0, True, MISSING))
                continue
            for dtype in (d for d in run_dtypes(op, bk) if dtypes is None or d in dtypes):
                for case in (c for c in cases(op, sc) if c.runs_in(dtype)):
                    if progress:
                        progress(f"{op.name} {name} {dtype} {case.label}")
                    try:
                        rows += check_case(op, bk, dtype, case)
                    except Exception as exc:  # a crash is a failed check, reported, not hidden
                        rows.append(Row(op.name, name, dtype, case.label, "-", math.inf, math.inf,
                                        False, f"{type(exc).__name__}: {exc}"))
    return rows, skipped


# --------------------------------------------------------------------------- timing


def prepare(op: Op, bk: ModuleType, dtype: str, inputs: dict) -> Callable[[], object]:
    """A zero-argument call of the op on native inputs that synchronises before returning.

    ``inputs`` is a case's ``inputs()`` (built once by the caller: bench sizes are large)."""
    fn = getattr(bk, op.name)
    kw = {k: to_backend(bk, v, dtype) for k, v in inputs.items()}

    def call():
        out = fn(**kw)
        bk.synchronize()
        return out

    return call


def partner(op: Op) -> Op:
    """The registry op computing ``op``'s gradient (``op`` itself if none)."""
    from refimpl._ops import OPS

    return next((o for o in OPS if o.grad_of == op.name), op)


def median_time(call: Callable[[], object], repeat: int = 10, warmup: int = 2,
                budget: float = 5.0) -> tuple[float, float]:
    """``(median, IQR)`` in seconds over up to ``repeat`` calls after ``warmup`` calls (past any
    JIT), stopping early once ``budget`` seconds have been spent."""
    for _ in range(warmup):
        call()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < repeat and (len(times) < 3 or time.perf_counter() - start < budget):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    q = statistics.quantiles(times, n=4) if len(times) >= 2 else [times[0]] * 3
    return statistics.median(times), q[2] - q[0]


def compulsory_bytes(inputs: dict, dtype: str, out) -> int:
    """Bytes every implementation must move: each float input read once, each output written."""
    size = itemsize(dtype)
    total = sum(v.size * (size if v.dtype.kind == "f" else v.itemsize)
                for v in inputs.values() if isinstance(v, np.ndarray))
    outs = out if isinstance(out, tuple) else (out,)
    return total + sum(int(np.prod(getattr(o, "shape", ()))) * size for o in outs
                       if hasattr(o, "shape"))


def bandwidth_of(bk: ModuleType) -> float | None:
    desc = bk.describe()
    return next((bw for key, bw in DEVICE_BANDWIDTH.items() if key in desc), None)
