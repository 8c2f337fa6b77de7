"""asv benchmarks generated from the op registry (one class per op, one module per family).

Parameters are ``(backend, case, dtype)`` with the registry's ``bench`` cases; combinations
that cannot run here (backend unavailable, GPU-only size on a CPU device, dtype not offered,
Numba's simulator) raise ``NotImplementedError`` in ``setup``, which asv reports as skipped.
Every timed call synchronises the device before returning (``refimpl._harness.prepare``).
``time_<op>`` times the forward op, ``time_full_<op>`` the op's gradient partner (forward +
backward), ``track_peak_gpu_bytes_<op>`` the device high-water mark of that call.
"""

import backends
from refimpl import _harness as H
from refimpl import _ops

BACKENDS = list(backends.NAMES)
DTYPES = ["float32", "float64"]


def _class_name(op_name: str) -> str:
    return "".join(part.capitalize() for part in op_name.split("_"))


def _backend_for(name: str, dtype: str):
    why = backends.reason(name)
    if why is not None:
        raise NotImplementedError(why)
    if name == "numba_cuda" and backends.simulator():
        raise NotImplementedError("the CUDA simulator is not timed")
    bk = backends.get(name)
    if dtype not in bk.DTYPES:
        raise NotImplementedError(f"{name} runs {bk.DTYPES} only")
    return bk


def _make(base, timed, method: str):
    """A benchmark class timing (or tracking the peak memory of) op ``timed`` on its own bench
    cases, under the method name ``<method>_<base op>``."""
    labels = [c.label for c in H.cases(timed, "bench")]
    peak = method.startswith("track")

    def setup(self, backend, label, dtype):
        bk = _backend_for(backend, dtype)
        case = next(c for c in H.cases(timed, "bench") if c.label == label)
        if not H.runs_here(case, bk):
            raise NotImplementedError(f"{label} is a {case.where} size")
        if peak and bk.peak_memory() is None:
            raise NotImplementedError(f"{backend} reports no device memory")
        self.bk, self.call = bk, H.prepare(timed, bk, dtype, case)
        for _ in range(2):  # warm up past JIT compilation and context creation
            self.call()

    def run(self, backend, label, dtype):
        self.call()

    def track(self, backend, label, dtype):
        self.bk.reset_peak_memory()
        self.call()
        return self.bk.peak_memory()

    track.unit = "bytes"
    suffix = {"time": "", "time_full": "Full", "track_peak_gpu_bytes": "PeakMemory"}[method]
    attrs = dict(params=[BACKENDS, labels, DTYPES], param_names=["backend", "case", "dtype"],
                 timeout=900, setup=setup)
    attrs[f"{method}_{base.name}"] = track if peak else run
    return type(_class_name(base.name) + suffix, (), attrs)


def suite(family: str) -> dict:
    """``{class name: class}`` for every op of ``family``: ``time_<op>``, ``time_full_<op>``
    (the gradient partner: forward + backward) and ``track_peak_gpu_bytes_<op>`` (of the full
    call where there is one). Gradient partners get no classes of their own."""
    out = {}
    for op in _ops.select(families=[family]):
        if op.grad_of is not None:
            continue
        full = H.partner(op)
        specs = [("time", op)] + ([("time_full", full)] if full is not op else [])
        specs.append(("track_peak_gpu_bytes", full))
        for method, timed in specs:
            cls = _make(op, timed, method)
            out[cls.__name__] = cls
    return out
