"""The cuda backend's losses: softmax fused with cross-entropy, the pointwise
losses (bce, mse, mae) and sum_squares, which is their reduction with T = Y.
A loss is summed in float64 by block reductions into one device scalar, the
only value copied back to the host; its mean is taken there."""

import math

from numba import cuda, float32, float64

from ._device import BCE, MAE, MSE, SUM_SQUARES, block_sum_into, loss_grad, loss_term, softmax_row
from ._launch import TPB, blocks, device_sum, flat, stages_outputs


@cuda.jit
def _softmax_xent_forward_kernel(loss, P, Z, labels):
    buf = cuda.shared.array(TPB, float64)
    n, c = Z.shape
    acc = 0.0
    for r in range(cuda.grid(1), n, cuda.gridsize(1)):
        mx, s = softmax_row(P, Z, r)
        lab = labels[r]
        if 0 <= lab < c:
            acc += math.log(s) + float64(mx) - float64(Z[r, lab])
        else:
            acc += math.nan
    block_sum_into(loss, buf, acc)


@cuda.jit
def _softmax_xent_backward_kernel(dZ, P, labels):
    n, c = P.shape
    nf = float32(n)
    for i in range(cuda.grid(1), n * c, cuda.gridsize(1)):
        r = i // c
        j = i - r * c
        g = P[r, j]
        if labels[r] == j:
            g -= float32(1.0)
        dZ[r, j] = g / nf


# Device labels cannot be range-checked on the host: a label outside [0, c)
# makes the loss NaN and is ignored by the backward (never an out-of-bounds
# access).
@stages_outputs
def softmax_xent_forward(P, Z, labels):
    n = Z.shape[0]
    return device_sum(_softmax_xent_forward_kernel, n, P, Z, labels) / n


@stages_outputs
def softmax_xent_backward(dZ, P, labels):
    n, c = P.shape
    _softmax_xent_backward_kernel[blocks(n * c), TPB](dZ, P, labels)


@cuda.jit
def _loss_sum_kernel(total, Y, T, kind):
    buf = cuda.shared.array(TPB, float64)
    acc = 0.0
    for i in range(cuda.grid(1), Y.shape[0], cuda.gridsize(1)):
        acc += loss_term(kind, Y[i], T[i])
    block_sum_into(total, buf, acc)


@cuda.jit
def _loss_grad_kernel(dY, Y, T, kind):
    size = float32(dY.shape[0])
    for i in range(cuda.grid(1), dY.shape[0], cuda.gridsize(1)):
        dY[i] = loss_grad(kind, Y[i], T[i], size)


def _loss_forward(kind, Y, T):
    y = flat(Y)
    return device_sum(_loss_sum_kernel, y.shape[0], y, flat(T), kind) / y.shape[0]


def _loss_backward(kind, dY, Y, T):
    dy = flat(dY)
    _loss_grad_kernel[blocks(dy.shape[0]), TPB](dy, flat(Y), flat(T), kind)


def bce_forward(Z, T):
    return _loss_forward(BCE, Z, T)


@stages_outputs
def bce_backward(dZ, Z, T):
    _loss_backward(BCE, dZ, Z, T)


def mse_forward(Y, T):
    return _loss_forward(MSE, Y, T)


@stages_outputs
def mse_backward(dY, Y, T):
    _loss_backward(MSE, dY, Y, T)


def mae_forward(Y, T):
    return _loss_forward(MAE, Y, T)


@stages_outputs
def mae_backward(dY, Y, T):
    _loss_backward(MAE, dY, Y, T)


def sum_squares(x):
    return device_sum(_loss_sum_kernel, x.shape[0], x, x, SUM_SQUARES)
