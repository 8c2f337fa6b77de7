"""The Numba-CUDA kernels compiled to PTX for cc 9.0 (``numba.cuda.compile_ptx``) in a
background process: started when collection ends (tests/conftest.py), so the ~1 minute of
compilation overlaps with the test files that run before tests/test_backend_numba.py, whose
``ptx_results`` fixture then collects the results."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_SCRIPT = r"""
import json
from numba import cuda
from backends.numba_cuda import _kernels as K

ARITH = {"add", "sub", "mul", "fma", "div", "rcp", "sqrt", "rsqrt", "ex2", "lg2", "min", "max",
         "neg", "abs"}
out = {}
for name, fn, sigs in K.specs():
    res = {"ok": True, "error": "", "f64_arith": 0, "signatures": list(sigs)}
    try:
        for sig in sigs:
            ptx, _ = cuda.compile_ptx(fn, sig, cc=(9, 0))
            for line in ptx.splitlines():
                op = line.strip().split()[0] if line.strip() else ""
                if op.endswith(".f64") and op.split(".")[0] in ARITH:
                    res["f64_arith"] += 1
    except Exception as exc:
        res.update(ok=False, error=f"{type(exc).__name__}: {exc}"[:4000])
    out[name] = res
print("PTX-RESULTS " + json.dumps(out))
"""

_PTX = {}


def start() -> None:
    """Start the compile (once per process; outside the CUDA simulator)."""
    if "proc" not in _PTX:
        env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
        _PTX["proc"] = subprocess.Popen([sys.executable, "-c", _SCRIPT], cwd=ROOT, env=env,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def results() -> dict:
    """``{kernel: {"ok", "error", "f64_arith", "signatures"}}``, waiting for the compile."""
    start()
    if "results" not in _PTX:
        out, err = _PTX["proc"].communicate(timeout=900)
        lines = [ln for ln in out.splitlines() if ln.startswith("PTX-RESULTS ")]
        rc = _PTX["proc"].returncode
        assert lines, f"the PTX compile subprocess failed (rc={rc}):\n{err[-4000:]}"
        _PTX["results"] = json.loads(lines[-1][len("PTX-RESULTS "):])
    return _PTX["results"]


def stop() -> None:
    """Kill an unfinished compile nobody collected (the session ends)."""
    proc = _PTX.get("proc")
    if proc is not None and proc.poll() is None and "results" not in _PTX:
        proc.kill()
        proc.communicate()
