"""The cuda backend: the kernels of :mod:`fastnn.kernels.spec` as numba.cuda
kernels, called by the front (:mod:`fastnn.kernels`) after it has validated
their arguments and copied host inputs to the device with :func:`to_device`.

Arrays live on the device: the trainer allocates with :func:`empty`,
:func:`zeros` and :func:`asarray` and passes numba device arrays, which run
with no host traffic except the one scalar a loss returns.  A host output
array runs on a device copy that is copied back into it (``_launch``).

Compute dtype is float32 (accumulations that feed a returned scalar or a
row/column reduction are float64).  Kernels compile lazily on first call.
Without a GPU, set ``NUMBA_ENABLE_CUDASIM=1`` before numba is imported to run
everything under numba's CUDA simulator (slow: one Python thread per CUDA
thread, so use small shapes there).

The kernels live by area: ``_device`` (device functions they share),
``_gemm`` (gemm, dense layer), ``_elementwise`` (activations, softmax,
scale, clip, axpy), ``_losses``, ``_optimizers``, ``_conv`` (convolution,
pooling), ``_norm`` (per-channel sums, batch normalisation),
``_dropout`` (Philox masks) and ``_rnn`` (SimpleRNN/GRU/LSTM: the input
projection as one gemm, one fused launch per step forward and backward).  There is
no fused epoch: ``dense_stack_epoch`` and ``model_epoch`` are the
reference's loops over these kernels (the front's fallback), on device
arrays when given them.
"""

import numpy as np

from ._launch import SIMULATOR, TPB, cuda, is_device  # first: it checks for a driver
from ._conv import (avgpool2d_backward, avgpool2d_forward, conv2d_backward,  # noqa: F401
                    conv2d_forward, maxpool2d_backward, maxpool2d_forward)
from ._dropout import dropout_backward, dropout_forward  # noqa: F401
from ._elementwise import (activation_backward, activation_forward, axpy, clip,  # noqa: F401
                           scale, softmax_backward, softmax_forward)
from ._gemm import dense_backward, dense_forward, gemm  # noqa: F401
from ._losses import (bce_backward, bce_forward, mae_backward, mae_forward,  # noqa: F401
                      mse_backward, mse_forward, softmax_xent_backward, softmax_xent_forward,
                      sum_squares)
from ._norm import batchnorm_backward, batchnorm_forward, batchnorm_inference  # noqa: F401
from ._optimizers import adagrad, adam, adamax, adamw, nadam, radam, rmsprop, sgd  # noqa: F401
from ._rnn import rnn_backward, rnn_forward  # noqa: F401

name = "cuda"
DTYPE = np.float32
DEVICE = True


def info():
    """What this backend is: backend, threads (per block), simulator, device."""
    device = cuda.get_current_device()
    dev_name = getattr(device, "name", "simulator")
    if isinstance(dev_name, bytes):
        dev_name = dev_name.decode()
    return {"backend": name, "threads": TPB, "simulator": bool(SIMULATOR),
            "device": str(dev_name)}


# ---- arrays ------------------------------------------------------------------

def empty(shape, dtype=np.float32):
    """An uninitialised device array."""
    return cuda.device_array(shape, dtype=dtype)


def zeros(shape, dtype=np.float32):
    """A zero-filled device array."""
    return cuda.to_device(np.zeros(shape, dtype=dtype))


def asarray(x, dtype=np.float32):
    """x as a C-contiguous device array of `dtype` (no copy if it already is)."""
    if is_device(x):
        if np.dtype(x.dtype) == np.dtype(dtype) and x.is_c_contiguous():
            return x
        x = x.copy_to_host()
    return cuda.to_device(np.ascontiguousarray(x, dtype=dtype))


def to_numpy(x):
    """A host numpy array with the content of x (device or host)."""
    return x.copy_to_host() if is_device(x) else np.asarray(x)


def to_device(host_array):
    """A device copy of a host input (the front converts inputs with it)."""
    return cuda.to_device(host_array)
