"""The generic cross-check: every registry op x every backend x dtype against the reference.

Nothing here names an op: adding one to ``refimpl/_ops.py`` makes it checked. CuPy and real
Numba-CUDA runs carry the ``gpu`` marker; Numba's simulator runs one ``tiny`` case per dtype in
CI (``refimpl check`` runs them all)."""

import pytest

import backends
from refimpl import _harness as H
from refimpl._ops import OPS


def _params():
    for name in backends.NAMES:
        marks = [pytest.mark.gpu] if name == "cupy" or (name == "numba_cuda" and not backends.simulator()) else []
        for op in OPS:
            for dtype in op.dtypes:
                yield pytest.param(name, op, dtype, id=f"{op.name}-{name}-{dtype}", marks=marks)


@pytest.mark.parametrize("name,op,dtype", list(_params()))
def test_backend_matches_reference(name, op, dtype):
    why = backends.reason(name)
    if why is not None:
        pytest.skip(f"backend {name}: {why}")
    bk = backends.get(name)
    if not H.offers(bk, op):
        pytest.skip(f"{name} does not offer {op.name} (reported as missing by refimpl check)")
    if dtype not in H.run_dtypes(op, bk):
        pytest.skip(f"{name} runs {', '.join(bk.DTYPES)} only")
    scale = H.default_scale(name)
    cases = [c for c in H.cases(op, scale) if c.runs_in(dtype)]
    assert cases, f"{op.name} has no {scale} cases"
    if name == "numba_cuda" and backends.simulator():
        # the simulator is slow (a Python thread per CUDA thread): one case per dtype, a
        # different one for each dtype; `refimpl check` (the README's first command, run before
        # the tests in CI) runs every case in every dtype, and each backend's own test file
        # covers its variants
        k = H.run_dtypes(op, bk).index(dtype)
        cases = [cases[k % len(cases)]]
    rows = [row for case in cases for row in H.check_case(op, bk, dtype, case)]
    bad = [r for r in rows if not r.ok]
    assert not bad, "\n".join(
        f"{r.case} {r.backend} {r.output}: max abs {r.max_abs:.3g} rel {r.max_rel:.3g} "
        f"tol {op.tolerance(dtype, r.output)} {r.note}" for r in bad)
