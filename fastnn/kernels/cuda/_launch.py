"""The host side every kernel file of the cuda backend shares: numba.cuda
itself (imported here first, so that a missing driver is reported once and
clearly), launch geometry, stand-ins for absent buffers, reading back a
reduction's scalar, and the staging of host output arrays.
"""

import functools

import numpy as np

from .. import spec

try:
    from numba import cuda
except ImportError as exc:  # numba-cuda or the CUDA Python bindings missing
    raise ImportError(f"cuda backend: numba.cuda cannot be imported: {exc}") from exc
if not cuda.is_available():
    raise ImportError("cuda backend: no usable CUDA GPU or driver; set NUMBA_ENABLE_CUDASIM=1 "
                      "before importing numba to use the simulator")
try:
    from numba.cuda.core.config import ENABLE_CUDASIM as SIMULATOR  # noqa: F401 - for info()
except ImportError:  # numba's built-in cuda target
    from numba.config import ENABLE_CUDASIM as SIMULATOR  # noqa: F401

TPB = 128          # threads per block of 1-D kernels (a power of two: block reduction)
MAX_BLOCKS = 1024  # 1-D grids are capped; grid-stride loops cover the rest


def is_device(x):
    # the simulator's arrays have copy_to_host but no __cuda_array_interface__
    return not isinstance(x, np.ndarray) and hasattr(x, "copy_to_host")


def blocks(count):
    return min(max(1, -(-count // TPB)), MAX_BLOCKS)


def flat(x):
    return x.reshape(int(np.prod(x.shape, dtype=np.int64)))


_dummy_cache = {}


def dummy(dtype=np.float32):
    """A 1-element device array standing in for an unused optional buffer
    (a kernel argument cannot be None)."""
    if dtype not in _dummy_cache:
        _dummy_cache[dtype] = cuda.device_array(1, dtype=dtype)
    return _dummy_cache[dtype]


def device_sum(kernel, count, *args):
    """Run a reduction kernel that adds into a float64 scalar; return it."""
    out = cuda.to_device(np.zeros(1, np.float64))
    kernel[blocks(count), TPB](out, *args)
    return float(out.copy_to_host()[0])


def stages_outputs(impl):
    """Let the implementation `impl` of a kernel be given host output arrays.

    The front hands the implementations device inputs, but outputs as the
    caller gave them; a host output (spec.KERNELS' ``outputs``) runs on a
    device copy that is copied back after the call.  Device outputs pass
    through untouched, so the trainer's calls pay nothing.
    """
    params = spec.KERNELS[impl.__name__].params
    where = tuple(params.index(o) for o in spec.KERNELS[impl.__name__].outputs)

    @functools.wraps(impl)
    def run(*args):
        host = [i for i in where if isinstance(args[i], np.ndarray)]
        if not host:
            return impl(*args)
        staged = list(args)
        for i in host:
            staged[i] = cuda.to_device(args[i])
        result = impl(*staged)
        for i in host:
            staged[i].copy_to_host(args[i])
        return result

    return run
