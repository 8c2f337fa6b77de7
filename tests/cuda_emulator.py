"""A CPU emulator of the CuPy backend's CUDA sources, shared by the CuPy test files.

The real sources of ``backends/cupy/_kernels.py`` are compiled with g++ (-std=c++20) against a
small shim: one OS thread per CUDA thread, the blocks of a grid one after another,
``__syncthreads`` a barrier, warp shuffles through per-warp barriers, float64 ``atomicAdd``
under a mutex, dynamic shared memory refilled with NaN between blocks. Launches are checked
against the kernels' C signatures exactly like ``_kernels.launch``. :class:`_NumpyAsCupy`
stands in for the ``cupy`` module in the backend's glue (which uses the shared array API), so
a backend module runs end to end on NumPy arrays.

Use :func:`build` (memoised per process: the test files share one build) for the emulator and
:func:`patch_backend` to point the backend modules at it (pytest ``monkeypatch``).
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import importlib
import importlib.util
import os
import shutil
import subprocess
import types
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load_kernels():
    """``backends/cupy/_kernels.py`` (it needs only NumPy at import; loaded by path when the
    ``backends.cupy`` package cannot be imported because CuPy is not installed)."""
    try:
        return importlib.import_module("backends.cupy._kernels")
    except ImportError:
        spec = importlib.util.spec_from_file_location("_cupy_kernels_src",
                                                      ROOT / "backends" / "cupy" / "_kernels.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod


K = _load_kernels()


_SHIM = r'''
#include <algorithm>
#include <barrier>
#include <cmath>
#include <cstring>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>
struct ri_dim3 { unsigned x, y, z; };
thread_local ri_dim3 threadIdx, blockIdx;
static ri_dim3 blockDim, gridDim;
thread_local int ri_tid;
static std::barrier<>* ri_block_barrier = nullptr;
static std::vector<std::barrier<>*> ri_warp_barriers;
static std::vector<double> ri_shfl;
static std::vector<double> ri_dyn;
static std::mutex ri_atomic_mutex;
#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__ static
inline void __syncthreads() { ri_block_barrier->arrive_and_wait(); }
inline float __int_as_float(int i) { float f; std::memcpy(&f, &i, 4); return f; }
inline double __longlong_as_double(long long i) { double f; std::memcpy(&f, &i, 8); return f; }
inline float __fdividef(float a, float b) { return a / b; }   // fast division (exact here)
template <typename T> T __shfl_xor_sync(unsigned, T v, int off) {
  const int w = ri_tid / 32, lane = ri_tid % 32;
  ri_shfl[w * 32 + lane] = (double)v;
  ri_warp_barriers[w]->arrive_and_wait();
  const T r = (T)ri_shfl[w * 32 + (lane ^ off)];
  ri_warp_barriers[w]->arrive_and_wait();
  return r;
}
inline double atomicAdd(double* p, double v) {
  std::lock_guard<std::mutex> g(ri_atomic_mutex); double o = *p; *p += v; return o;
}
// One OS thread per CUDA thread of a block, created once per launch; the blocks of the grid
// run one after another. Between blocks every thread waits on `between`, whose completion
// step (run once, while all threads wait) installs fresh block/warp barriers and refills the
// dynamic shared memory with NaN (it starts as garbage on a GPU). A thread that returns
// early leaves the barriers (arrive_and_drop), as an exited CUDA thread does.
template <typename F>
static void ri_launch(unsigned gx, unsigned gy, unsigned bx, unsigned by, long long shmem, F body) {
  gridDim = {gx, gy, 1}; blockDim = {bx, by, 1};
  const int nthreads = (int)(bx * by);
  const int nw = (nthreads + 31) / 32;
  const unsigned nblocks = gx * gy;
  ri_dyn.assign((size_t)(shmem / 8 + 1), 0.0);
  ri_shfl.assign(nw * 32, 0.0);
  std::unique_ptr<std::barrier<>> block_bar;
  std::vector<std::unique_ptr<std::barrier<>>> warp_bars(nw);
  auto fresh = [&]() noexcept {
    block_bar.reset(new std::barrier<>(nthreads));
    ri_block_barrier = block_bar.get();
    ri_warp_barriers.assign(nw, nullptr);
    for (int w = 0; w < nw; ++w) {
      warp_bars[w].reset(new std::barrier<>(std::min(32, nthreads - 32 * w)));
      ri_warp_barriers[w] = warp_bars[w].get();
    }
    std::fill(ri_dyn.begin(), ri_dyn.end(), std::nan(""));
  };
  fresh();
  std::barrier<decltype(fresh)> between(nthreads, fresh);
  std::vector<std::thread> ts;
  for (int t = 0; t < nthreads; ++t) ts.emplace_back([=, &between]() {
    threadIdx = {unsigned(t % (int)bx), unsigned(t / (int)bx), 0u};
    ri_tid = t;
    for (unsigned k = 0; k < nblocks; ++k) {
      blockIdx = {k % gx, k / gx, 0u};
      body();
      ri_warp_barriers[t / 32]->arrive_and_drop();
      ri_block_barrier->arrive_and_drop();
      between.arrive_and_wait();
    }
  });
  for (auto& th : ts) th.join();
}
'''

_DYN_DECL = "extern __shared__ double ri_dyn_smem[];"
_CTYPES = {"int": ctypes.c_int, "long long": ctypes.c_longlong, "float": ctypes.c_float,
           "double": ctypes.c_double}


def _host_source(module: str) -> str:
    src = K.module_source(module)
    assert src.count(_DYN_DECL) == 1
    parts = [_SHIM, src.replace(_DYN_DECL, "double* ri_dyn_smem = ri_dyn.data();")]
    for k in K.KERNELS.values():
        if k.module == module:
            decl = ", ".join(f"{t} {n}" for t, n in k.params)
            call = ", ".join(n for _, n in k.params)
            parts.append(f'extern "C" void launch_{k.name}(unsigned gx, unsigned gy, unsigned bx, '
                         f'unsigned by, long long shmem, {decl}) {{\n'
                         f'  ri_launch(gx, gy, bx, by, shmem, [=]() {{ {k.name}({call}); }});\n}}\n')
    return "\n".join(parts)


class Emulator:
    """Runs the exported kernels of ``_kernels.py`` on NumPy arrays (checked like ``launch``)."""

    def __init__(self, workdir: Path, cxx: str):
        self.libs = {}
        self.calls = []
        for mod in K.MODULES:
            src = _host_source(mod)
            tag = hashlib.sha1(src.encode()).hexdigest()[:12]
            cpp, so = workdir / f"{mod}_{tag}.cpp", workdir / f"{mod}_{tag}.so"
            cpp.write_text(src)
            res = subprocess.run([cxx, "-std=c++20", "-O1", "-shared", "-fPIC", "-pthread", "-w",
                                  str(cpp), "-o", str(so)], capture_output=True, text=True)
            assert res.returncode == 0, f"host build of module {mod} failed:\n{res.stderr[-8000:]}"
            self.libs[mod] = ctypes.CDLL(str(so))

    def launch(self, name, grid, block, args, shared_mem=0):
        K.check_args(name, args, np.ndarray)
        k = K.KERNELS[name]
        grid, block = tuple(grid) + (1,) * (2 - len(grid)), tuple(block) + (1,) * (2 - len(block))
        assert block[0] * block[1] <= 1024 and grid[1] <= 65535
        cargs = [ctypes.c_void_p(a.ctypes.data) if ty.endswith("*") else _CTYPES[ty](a.item())
                 for (ty, _), a in zip(k.params, args)]
        fn = getattr(self.libs[k.module], f"launch_{name}")
        fn.restype = None
        fn(ctypes.c_uint(grid[0]), ctypes.c_uint(grid[1]), ctypes.c_uint(block[0]),
           ctypes.c_uint(block[1]), ctypes.c_longlong(shared_mem), *cargs)
        self.calls.append((name, grid, block, shared_mem))


class _NumpyAsCupy(types.ModuleType):
    """NumPy standing in for CuPy in the backend's glue (the glue uses the shared array API)."""

    def __init__(self):
        super().__init__("numpy_as_cupy")

    def __getattr__(self, name):
        return getattr(np, name)

    @staticmethod
    def asnumpy(x):
        return np.asarray(x)


_PROBE = r'''
#include <barrier>
#include <thread>
int main() {
  std::barrier<> b(2);
  std::thread t([&] { b.arrive_and_wait(); });
  b.arrive_and_wait();
  t.join();
}
'''


_BUILT: dict[str, Emulator] = {}


def build(tmp_path_factory) -> Emulator:
    """The emulator of every kernel module (built once per process), or a pytest skip naming
    what is missing: CuPy (the backend glue imports it), a C++ compiler, C++20 ``<barrier>``."""
    pytest.importorskip("cupy", reason="cupy is not installed (the backend glue imports it)")
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("clang++")
    if cxx is None:
        pytest.skip("no C++ compiler (g++/clang++) to build the CPU emulator of the kernels")
    if cxx in _BUILT:
        return _BUILT[cxx]
    work = tmp_path_factory.mktemp("cuda_emulator")
    probe = work / "probe.cpp"
    probe.write_text(_PROBE)
    res = subprocess.run([cxx, "-std=c++20", "-pthread", str(probe), "-o", str(work / "probe")],
                         capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"{cxx} lacks C++20 <barrier>: {res.stderr[-300:]}")
    _BUILT[cxx] = Emulator(work, cxx)
    return _BUILT[cxx]


def build_module(tmp_path_factory, module: str) -> Emulator:
    """The shared emulator when another test file already built it in this process; else one
    of kernel module ``module`` only (the other modules' host builds are not needed), not kept
    as the shared one."""
    if _BUILT:
        return next(iter(_BUILT.values()))
    before = dict(_BUILT)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(K, "MODULES", (module,))
        emu = build(tmp_path_factory)
    _BUILT.clear()
    _BUILT.update(before)
    return emu


def cast_floats(v, dtype):
    """Float arrays (also inside dicts) cast to ``dtype``; integers, scalars and strings kept."""
    if isinstance(v, np.ndarray) and v.dtype.kind == "f":
        return v.astype(dtype)
    if isinstance(v, dict):
        return {k: cast_floats(x, dtype) for k, x in v.items()}
    return v


class Smem:
    limit = 232448 - 16          # H100 opt-in limit minus the static shared memory


def patch_backend(monkeypatch, emulator: Emulator) -> types.SimpleNamespace:
    """Every module of ``backends.cupy`` with NumPy for CuPy and the emulator for the GPU:
    ``SimpleNamespace(sd=softdtw, ot=ot, pref=preference, ct=cross_tokenizer, iss=inf_ssm,
    cd=causal_discrete, se=safety_ensembles, rv=recsys_vae, gnn=gnn, crpl=crpl,
    calls=emulator.calls, bk=backends.cupy, reads=[...])``, ``reads`` the shapes of the ``asnumpy`` (device-to-host)
    reads since."""
    import scipy.linalg
    import scipy.special

    import backends.cupy as package
    import backends.cupy.causal_discrete as bcd
    import backends.cupy.crpl as bcrpl
    import backends.cupy.cross_tokenizer as bct
    import backends.cupy.gnn as bgnn
    import backends.cupy.inf_ssm as biss
    import backends.cupy.ot as bot
    import backends.cupy.preference as bpref
    import backends.cupy.recsys_vae as brv
    import backends.cupy.safety_ensembles as bse
    import backends.cupy.softdtw as bsd

    fake = _NumpyAsCupy()
    reads = []

    def counted(x):
        reads.append(np.shape(x))
        return _NumpyAsCupy.asnumpy(x)

    monkeypatch.setattr(fake, "asnumpy", counted, raising=False)
    monkeypatch.setattr(package, "cupy", fake)  # is_native (the mixed-backend check) lives here
    for mod in (bsd, bot, bpref, bct, biss, bcd, bse, brv, bgnn, bcrpl):
        monkeypatch.setattr(mod, "cupy", fake)
    # cupyx.scipy (special, linalg, errstate) of the causal module: SciPy, no error state
    monkeypatch.setattr(bcd, "_library", lambda: (scipy.special, scipy.linalg,
                                                  lambda **kw: contextlib.nullcontext()))
    monkeypatch.setattr(K, "launch", emulator.launch)
    monkeypatch.setattr(K, "dynamic_smem_limit", lambda name: Smem.limit)
    monkeypatch.setattr(K, "reserve_dynamic_smem", lambda name, nbytes: None)
    emulator.calls.clear()
    return types.SimpleNamespace(sd=bsd, ot=bot, pref=bpref, ct=bct, iss=biss, cd=bcd, se=bse,
                                 rv=brv, gnn=bgnn, crpl=bcrpl, calls=emulator.calls, bk=package,
                                 reads=reads)


# --------------------------------------------------------------------------- GPU fixtures


@pytest.fixture(scope="module")
def cp():
    """The ``cupy`` module on a machine where the cupy backend can run (else the test skips
    with the reason); import it into a test module to use it."""
    import backends

    why = backends.available()["cupy"]
    if why is not None:
        pytest.skip(f"backend cupy: {why}")
    import cupy

    return cupy


@pytest.fixture(scope="module")
def bk(cp):
    """``backends.cupy`` (GPU tests)."""
    import backends

    return backends.get("cupy")
