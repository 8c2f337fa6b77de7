"""asv benchmarks generated from the op registry (one module per family).

Each op gets classes for its CPU sizes (backends numpy and torch on the CPU) and for its GPU
sizes (torch on CUDA, cupy, numba_cuda), parametrised by ``(backend, case, dtype)`` over the
registry's ``bench`` cases. Combinations that cannot run here (backend unavailable, a size for
the other kind of device, a dtype the backend does not offer, Numba's simulator) raise
``NotImplementedError`` in ``setup``, which asv reports as skipped. Every timed call
synchronises the device before returning (``refimpl._harness.prepare``).

``time_<op>`` times the op; ``time_full_<op>`` its gradient partner (forward + backward);
``track_peak_gpu_bytes_<op>`` the device high-water mark of the full call (GPU classes only).
"""

import backends
from refimpl import _harness as H
from refimpl import _ops

BACKENDS = {"cpu": ["numpy", "torch"], "gpu": ["torch", "cupy", "numba_cuda"]}


def _class_name(op_name: str) -> str:
    return "".join(part.capitalize() for part in op_name.split("_"))


def _backend_for(name: str):
    why = backends.reason(name)
    if why is not None:
        raise NotImplementedError(why)
    if name == "numba_cuda" and backends.simulator():
        raise NotImplementedError("the CUDA simulator is not timed")
    return backends.get(name)


def _make(base, timed, method: str, where: str):
    """A benchmark class timing (or tracking the peak memory of) op ``timed`` on its ``where``
    ("cpu"/"gpu") bench cases, under the method name ``<method>_<base op>``."""
    labels = [c.label for c in H.cases(timed, "bench") if c.where in (where, "any")]
    if not labels:
        return None
    peak = method.startswith("track")

    def setup(self, backend, label, dtype):
        bk = _backend_for(backend)
        if not H.offers(bk, timed):
            raise NotImplementedError(f"{backend} does not offer {timed.name}")
        if dtype not in H.run_dtypes(timed, bk):
            raise NotImplementedError(f"{backend} runs {bk.DTYPES} only")
        case = next(c for c in H.cases(timed, "bench") if c.label == label)
        if not case.runs_in(dtype):
            raise NotImplementedError(f"{label} is timed in {case.dtypes} only")
        if H.on_gpu(bk) != (where == "gpu"):
            raise NotImplementedError(f"{backend} runs on {bk.describe()}; this is a {where} size")
        if peak and bk.peak_memory() is None:
            raise NotImplementedError(f"{backend} reports no device memory")
        self.bk, self.call = bk, H.prepare(timed, bk, dtype, case.inputs())
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
    attrs = dict(params=[BACKENDS[where], labels, list(timed.dtypes)],
                 param_names=["backend", "case", "dtype"],
                 timeout=900, setup=setup)
    attrs[f"{method}_{base.name}"] = track if peak else run
    return type(_class_name(base.name) + suffix + where.upper(), (), attrs)


def suite(family: str) -> dict:
    """``{class name: class}`` for every op of ``family``: ``time_<op>`` and, for ops with a
    gradient partner, ``time_full_<op>``, on CPU and GPU sizes; ``track_peak_gpu_bytes_<op>``
    on GPU sizes. Gradient partners get no classes of their own."""
    out = {}
    for op in _ops.select(families=[family]):
        if op.grad_of is not None:
            continue
        full = H.partner(op)
        specs = [("time", op, "cpu"), ("time", op, "gpu")]
        if full is not op:
            specs += [("time_full", full, "cpu"), ("time_full", full, "gpu")]
        specs.append(("track_peak_gpu_bytes", full, "gpu"))
        for method, timed, where in specs:
            cls = _make(op, timed, method, where)
            if cls is not None:
                out[cls.__name__] = cls
    return out
