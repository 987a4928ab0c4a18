"""The cuda backend's elementwise kernels: activations, softmax and the
flat-buffer utilities (scale, clip, axpy).  1-D kernels use grid-stride loops
over a capped grid; the activation kernels run on flattened views."""

import numpy as np
from numba import cuda, float32

from ._device import act, act_grad, maximum, minimum, softmax_row
from ._launch import TPB, blocks, flat, stages_outputs


@cuda.jit
def _activation_forward_kernel(Y, X, code, slope):
    for i in range(cuda.grid(1), Y.shape[0], cuda.gridsize(1)):
        Y[i] = act(code, X[i], slope)


@cuda.jit
def _activation_backward_kernel(dX, dY, Y, code, slope):
    for i in range(cuda.grid(1), dX.shape[0], cuda.gridsize(1)):
        dX[i] = dY[i] * act_grad(code, Y[i], slope)


def launch_activation_backward(dX, dY, Y, code, slope):
    dX, dY, Y = flat(dX), flat(dY), flat(Y)
    _activation_backward_kernel[blocks(dX.shape[0]), TPB](dX, dY, Y, code, np.float32(slope))


@stages_outputs
def activation_forward(Y, X, activation, negative_slope):
    y = flat(Y)
    _activation_forward_kernel[blocks(y.shape[0]), TPB](y, flat(X), activation,
                                                        np.float32(negative_slope))


@stages_outputs
def activation_backward(dX, dY, Y, activation, negative_slope):
    launch_activation_backward(dX, dY, Y, activation, negative_slope)


# One thread per row: rows are short here (classes), and a row's three passes
# stay in one thread's registers and cache lines.

@cuda.jit
def _softmax_forward_kernel(Y, X):
    for r in range(cuda.grid(1), X.shape[0], cuda.gridsize(1)):
        softmax_row(Y, X, r)


@cuda.jit
def _softmax_backward_kernel(dX, dY, Y):
    n, c = Y.shape
    for r in range(cuda.grid(1), n, cuda.gridsize(1)):
        s = 0.0
        for j in range(c):
            s += dY[r, j] * Y[r, j]
        s32 = float32(s)
        for j in range(c):
            dX[r, j] = Y[r, j] * (dY[r, j] - s32)


@stages_outputs
def softmax_forward(Y, X):
    _softmax_forward_kernel[blocks(X.shape[0]), TPB](Y, X)


@stages_outputs
def softmax_backward(dX, dY, Y):
    _softmax_backward_kernel[blocks(Y.shape[0]), TPB](dX, dY, Y)


# ---- flat-buffer utilities -----------------------------------------------------------

@cuda.jit
def _scale_kernel(x, s):
    for i in range(cuda.grid(1), x.shape[0], cuda.gridsize(1)):
        x[i] = x[i] * s


@cuda.jit
def _clip_kernel(x, lo, hi):
    for i in range(cuda.grid(1), x.shape[0], cuda.gridsize(1)):
        x[i] = minimum(maximum(x[i], lo), hi)


@cuda.jit
def _axpy_kernel(y, x, alpha):
    for i in range(cuda.grid(1), y.shape[0], cuda.gridsize(1)):
        y[i] = y[i] + alpha * x[i]


@stages_outputs
def scale(x, s):
    _scale_kernel[blocks(x.shape[0]), TPB](x, np.float32(s))


@stages_outputs
def clip(x, lo, hi):
    _clip_kernel[blocks(x.shape[0]), TPB](x, np.float32(lo), np.float32(hi))


@stages_outputs
def axpy(y, x, alpha):
    _axpy_kernel[blocks(y.shape[0]), TPB](y, x, np.float32(alpha))
