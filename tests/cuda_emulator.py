"""A CPU emulator of the CuPy backend's CUDA sources, shared by the CuPy test files.

The real sources of ``backends/cupy/_kernels.py`` are compiled with g++ (-std=c++20) against a
small shim: one fiber (``ucontext``) per CUDA thread on one OS thread, the blocks of a grid one
after another, ``__syncthreads`` a barrier, warp shuffles through per-warp barriers, dynamic
shared memory refilled with NaN between blocks. A barrier wakes its waiters in thread order and
in reverse order by turns (a missing ``__syncthreads`` shows), and a launch whose threads stop
at a barrier the others never reach fails. Launches are checked against the kernels' C
signatures exactly like ``_kernels.launch``. :class:`_NumpyAsCupy`
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
#include <cmath>
#include <cstring>
#include <deque>
#include <memory>
#include <vector>
#include <ucontext.h>
struct ri_dim3 { unsigned x, y, z; };
static ri_dim3 threadIdx, blockIdx, blockDim, gridDim;
static int ri_tid;
// Every CUDA thread of a block is a fiber (ucontext) on the calling OS thread; the blocks of
// the grid run one after another. A fiber runs until it waits at a barrier, then the next
// ready one runs. A barrier wakes its waiters in thread order and in reverse order by turns,
// so a read that lacks its __syncthreads sees the other threads' stores either not yet made
// or already made, one time or the other. Nothing is preemptive: a spin-wait on memory would
// hang (the kernels use barriers and shuffles only).
struct ri_fiber { ucontext_t ctx; int tid; };
static std::vector<ri_fiber> ri_fibers;
static std::vector<std::unique_ptr<char[]>> ri_stacks;
static const size_t ri_stack_bytes = 256 * 1024;
static std::deque<int> ri_ready;
static ucontext_t ri_sched;
static int ri_cur;
static unsigned long long ri_turn;
static void ri_yield() { swapcontext(&ri_fibers[ri_cur].ctx, &ri_sched); }
struct ri_barrier {
  int expected = 0, arrived = 0;
  std::vector<int> waiting;
  void (*on_complete)() = nullptr;        // runs once, while every participant waits
  void release() {
    arrived = 0;
    if (on_complete) on_complete();
    if (ri_turn++ & 1) std::reverse(waiting.begin(), waiting.end());
    for (int f : waiting) ri_ready.push_back(f);
    waiting.clear();
  }
  void arrive_and_wait() {
    waiting.push_back(ri_cur);
    if (++arrived == expected) release();
    ri_yield();
  }
  void arrive_and_drop() {                // an exited thread: later phases expect one fewer
    if (--expected > 0 && arrived == expected) release();
  }
};
static ri_barrier ri_block_barrier, ri_between;
static std::vector<ri_barrier> ri_warp_barriers;
static std::vector<double> ri_shfl;
static std::vector<double> ri_dyn;
static unsigned ri_nblocks;
static int ri_finished;
static void* ri_body;
static void (*ri_call)(void*);
#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__ static
inline void __syncthreads() { ri_block_barrier.arrive_and_wait(); }
inline float __int_as_float(int i) { float f; std::memcpy(&f, &i, 4); return f; }
inline double __longlong_as_double(long long i) { double f; std::memcpy(&f, &i, 8); return f; }
inline float __fdividef(float a, float b) { return a / b; }   // fast division (exact here)
template <typename T> T __shfl_xor_sync(unsigned, T v, int off) {
  const int w = ri_tid / 32, lane = ri_tid % 32;
  ri_shfl[w * 32 + lane] = (double)v;
  ri_warp_barriers[w].arrive_and_wait();
  const T r = (T)ri_shfl[w * 32 + (lane ^ off)];
  ri_warp_barriers[w].arrive_and_wait();
  return r;
}
inline double atomicAdd(double* p, double v) { double o = *p; *p += v; return o; }
// Between blocks every fiber waits on `ri_between`, whose completion step installs fresh block
// and warp barriers and refills the dynamic shared memory with NaN (it starts as garbage on a
// GPU). A thread that returns early leaves the barriers (arrive_and_drop), as an exited CUDA
// thread does.
static void ri_fresh() {
  const int n = (int)(blockDim.x * blockDim.y);
  ri_block_barrier.expected = n;
  for (size_t w = 0; w < ri_warp_barriers.size(); ++w)
    ri_warp_barriers[w].expected = std::min(32, n - 32 * (int)w);
  std::fill(ri_dyn.begin(), ri_dyn.end(), std::nan(""));
}
static void ri_fiber_main(int f) {
  const int t = ri_fibers[f].tid;
  for (unsigned k = 0; k < ri_nblocks; ++k) {
    blockIdx = {k % gridDim.x, k / gridDim.x, 0u};
    ri_call(ri_body);
    ri_warp_barriers[t / 32].arrive_and_drop();
    ri_block_barrier.arrive_and_drop();
    ri_between.arrive_and_wait();
  }
  ++ri_finished;
}
// 0, or 1 when fibers are left waiting at a barrier that the others never reach (a
// __syncthreads or shuffle under divergent control flow).
template <typename F>
static int ri_launch(unsigned gx, unsigned gy, unsigned bx, unsigned by, long long shmem, F body) {
  gridDim = {gx, gy, 1}; blockDim = {bx, by, 1};
  const int n = (int)(bx * by);
  ri_turn = 0;
  ri_nblocks = gx * gy;
  ri_body = &body;
  ri_call = [](void* p) { (*static_cast<F*>(p))(); };
  ri_dyn.assign((size_t)(shmem / 8 + 1), 0.0);
  ri_shfl.assign((size_t)((n + 31) / 32) * 32, 0.0);
  ri_warp_barriers.assign((size_t)((n + 31) / 32), ri_barrier());
  ri_block_barrier = ri_barrier();
  ri_between = ri_barrier();
  ri_between.expected = n;
  ri_between.on_complete = ri_fresh;
  ri_fresh();
  ri_ready.clear();
  ri_fibers.assign((size_t)n, ri_fiber());
  while (ri_stacks.size() < (size_t)n) ri_stacks.emplace_back(new char[ri_stack_bytes]);
  for (int t = 0; t < n; ++t) {
    ri_fibers[t].tid = t;
    getcontext(&ri_fibers[t].ctx);
    ri_fibers[t].ctx.uc_stack.ss_sp = ri_stacks[t].get();
    ri_fibers[t].ctx.uc_stack.ss_size = ri_stack_bytes;
    ri_fibers[t].ctx.uc_link = &ri_sched;
    makecontext(&ri_fibers[t].ctx, (void (*)())ri_fiber_main, 1, t);
    ri_ready.push_back(t);
  }
  ri_finished = 0;
  while (!ri_ready.empty()) {
    ri_cur = ri_ready.front();
    ri_ready.pop_front();
    ri_tid = ri_fibers[ri_cur].tid;
    threadIdx = {unsigned(ri_tid % (int)bx), unsigned(ri_tid / (int)bx), 0u};
    swapcontext(&ri_sched, &ri_fibers[ri_cur].ctx);
  }
  return ri_finished == n ? 0 : 1;
}
'''

_DYN_DECL = "extern __shared__ double ri_dyn_smem[];"
_CTYPES = {"int": ctypes.c_int, "long long": ctypes.c_longlong, "float": ctypes.c_float,
           "double": ctypes.c_double}


def host_source(src: str, kernels) -> str:
    """CUDA C ``src`` (the subset the shim provides) made host C++: the shim, ``src``, and per
    ``(name, params)`` of ``kernels`` (``params`` a list of ``(C type, name)``) an
    ``extern "C" int launch_<name>(gx, gy, bx, by, shmem, <params>)`` returning 1 on a hang."""
    parts = [_SHIM, src]
    for name, params in kernels:
        decl = ", ".join(f"{t} {n}" for t, n in params)
        call = ", ".join(n for _, n in params)
        parts.append(f'extern "C" int launch_{name}(unsigned gx, unsigned gy, unsigned bx, '
                     f'unsigned by, long long shmem, {decl}) {{\n'
                     f'  return ri_launch(gx, gy, bx, by, shmem, [=]() {{ {name}({call}); }});'
                     f'\n}}\n')
    return "\n".join(parts)


def compile_host(cxx: str, workdir: Path, stem: str, source: str) -> ctypes.CDLL:
    """``source`` (from :func:`host_source`) built as a shared library and loaded."""
    tag = hashlib.sha1(source.encode()).hexdigest()[:12]
    cpp, so = workdir / f"{stem}_{tag}.cpp", workdir / f"{stem}_{tag}.so"
    cpp.write_text(source)
    res = subprocess.run([cxx, "-std=c++20", "-O1", "-shared", "-fPIC", "-w", str(cpp), "-o",
                          str(so)], capture_output=True, text=True)
    assert res.returncode == 0, f"host build of {stem} failed:\n{res.stderr[-8000:]}"
    return ctypes.CDLL(str(so))


class Emulator:
    """Runs the exported kernels of ``_kernels.py`` on NumPy arrays (checked like ``launch``)."""

    def __init__(self, workdir: Path, cxx: str):
        self.libs = {}
        self.calls = []
        for mod in K.MODULES:
            src = K.module_source(mod)
            assert src.count(_DYN_DECL) == 1
            src = src.replace(_DYN_DECL, "double* ri_dyn_smem = ri_dyn.data();")
            kernels = [(k.name, k.params) for k in K.KERNELS.values() if k.module == mod]
            self.libs[mod] = compile_host(cxx, workdir, mod, host_source(src, kernels))

    def launch(self, name, grid, block, args, shared_mem=0):
        K.check_args(name, args, np.ndarray)
        k = K.KERNELS[name]
        grid, block = tuple(grid) + (1,) * (2 - len(grid)), tuple(block) + (1,) * (2 - len(block))
        assert block[0] * block[1] <= 1024 and grid[1] <= 65535
        cargs = [ctypes.c_void_p(a.ctypes.data) if ty.endswith("*") else _CTYPES[ty](a.item())
                 for (ty, _), a in zip(k.params, args)]
        fn = getattr(self.libs[k.module], f"launch_{name}")
        fn.restype = ctypes.c_int
        hung = fn(ctypes.c_uint(grid[0]), ctypes.c_uint(grid[1]), ctypes.c_uint(block[0]),
                  ctypes.c_uint(block[1]), ctypes.c_longlong(shared_mem), *cargs)
        assert not hung, (f"{name} {grid}x{block}: threads wait at a barrier that the others "
                          "never reach (__syncthreads or a shuffle under divergent control flow)")
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

    @staticmethod
    def argsort(a, axis=-1, kind=None):
        """CuPy sorts stably whatever ``kind`` says (NumPy's default is not stable)."""
        return np.argsort(a, axis=axis, kind="stable")

    @staticmethod
    def sort(a, axis=-1, kind=None):
        return np.sort(a, axis=axis, kind="stable")


_PROBE = r'''
#include <ucontext.h>
static ucontext_t main_ctx, fib;
static char stack[16384];
static void run() { swapcontext(&fib, &main_ctx); }
int main() {
  getcontext(&fib);
  fib.uc_stack.ss_sp = stack; fib.uc_stack.ss_size = sizeof stack; fib.uc_link = &main_ctx;
  makecontext(&fib, run, 0);
  swapcontext(&main_ctx, &fib);
  swapcontext(&main_ctx, &fib);
}
'''


_BUILT: dict[str, Emulator] = {}
_PROBED: dict[str, str | None] = {}   # compiler -> None, or why it cannot build fibers


def compiler(tmp_path_factory) -> str:
    """The C++ compiler that builds the emulator (``$CXX``, g++ or clang++), or a pytest skip
    saying why there is none: none installed, or no C++20 with ``<ucontext.h>`` fibers."""
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("clang++")
    if cxx is None:
        pytest.skip("no C++ compiler (g++/clang++) to build the CPU emulator of the kernels")
    if cxx not in _PROBED:
        work = tmp_path_factory.mktemp("cuda_emulator_probe")
        (work / "probe.cpp").write_text(_PROBE)
        res = subprocess.run([cxx, "-std=c++20", str(work / "probe.cpp"), "-o",
                              str(work / "probe")], capture_output=True, text=True)
        if res.returncode == 0:
            res = subprocess.run([str(work / "probe")], capture_output=True, text=True)
        _PROBED[cxx] = None if res.returncode == 0 else res.stderr[-300:]
    if _PROBED[cxx] is not None:
        pytest.skip(f"{cxx}: no C++20 with <ucontext.h> fibers here: {_PROBED[cxx]}")
    return cxx


def build(tmp_path_factory) -> Emulator:
    """The emulator of every kernel module (built once per process), or a pytest skip naming
    what is missing: CuPy (the backend glue imports it) or a compiler (:func:`compiler`)."""
    pytest.importorskip("cupy", reason="cupy is not installed (the backend glue imports it)")
    cxx = compiler(tmp_path_factory)
    if cxx not in _BUILT:
        _BUILT[cxx] = Emulator(tmp_path_factory.mktemp("cuda_emulator"), cxx)
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
