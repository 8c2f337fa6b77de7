"""The CPU emulator of the CUDA sources (``tests/cuda_emulator.py``) is the only place the CuPy
kernels run without a GPU, so it must expose what a GPU would: a read that lacks its
``__syncthreads`` (in either direction) and a barrier some threads never reach. Needs a C++20
compiler, not CuPy."""

import ctypes

import numpy as np
import pytest

import cuda_emulator

SOURCE = r"""
__global__ void neighbour_reads(double* out, int sync) {
  __shared__ double s[64];
  const int t = threadIdx.x;
  s[t] = t;
  __syncthreads();
  s[t] = 100 + t;
  if (sync) __syncthreads();
  out[t] = s[(t + 1) % 64];            // the next thread's new value
  __syncthreads();
  s[t] = 200 + t;
  if (sync) __syncthreads();
  out[64 + t] = s[(t + 63) % 64];      // the previous thread's new value
}

__global__ void half_warp_shuffle(double* out, int exit_instead) {
  const int t = threadIdx.x;
  double v = t;
  if (t < 16) v = __shfl_xor_sync(0xffffffffu, v, 1);
  else if (exit_instead) return;        // an exited thread leaves the barriers
  __syncthreads();
  out[t] = v;
}
"""
KERNELS = [("neighbour_reads", [("double*", "out"), ("int", "sync")]),
           ("half_warp_shuffle", [("double*", "out"), ("int", "exit_instead")])]


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    cxx = cuda_emulator.compiler(tmp_path_factory)
    return cuda_emulator.compile_host(cxx, tmp_path_factory.mktemp("emulator_self_test"),
                                      "self_test", cuda_emulator.host_source(SOURCE, KERNELS))


def _launch(lib, name, threads, out, flag):
    fn = getattr(lib, f"launch_{name}")
    fn.restype = ctypes.c_int
    return fn(ctypes.c_uint(1), ctypes.c_uint(1), ctypes.c_uint(threads), ctypes.c_uint(1),
              ctypes.c_longlong(0), ctypes.c_void_p(out.ctypes.data), ctypes.c_int(flag))


def test_missing_barrier_is_visible_in_both_directions(lib):
    t = np.arange(64)
    want = np.concatenate([100 + (t + 1) % 64, 200 + (t + 63) % 64]).astype(float)
    out = np.full(128, np.nan)
    assert _launch(lib, "neighbour_reads", 64, out, 1) == 0
    np.testing.assert_array_equal(out, want)
    out = np.full(128, np.nan)
    assert _launch(lib, "neighbour_reads", 64, out, 0) == 0
    # without the wrap-around pairs (63 -> 0, 0 -> 63), which expose either order alone
    assert (out[:63] != want[:63]).any(), "a read of a later thread's store was not exposed"
    assert (out[65:] != want[65:]).any(), "a read of an earlier thread's store was not exposed"


def test_barrier_under_divergence_hangs_and_exited_threads_do_not(lib):
    out = np.full(32, np.nan)
    assert _launch(lib, "half_warp_shuffle", 32, out, 0) == 1   # lanes 16.. wait elsewhere
    out = np.full(32, np.nan)
    assert _launch(lib, "half_warp_shuffle", 32, out, 1) == 0   # lanes 16.. exit instead
    np.testing.assert_array_equal(out[:16], np.arange(16) ^ 1)
    assert np.isnan(out[16:]).all()
