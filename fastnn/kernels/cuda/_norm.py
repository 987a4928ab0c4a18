"""The cuda backend's per-channel reductions (bias gradients, batch
statistics) and batch normalisation.

Sums over the rows of a (rows, C) array, in float64, without atomics and in a
fixed order.  A block covers G = min(C, TPB) channels with TPB // G row lanes
(so a block reads whole contiguous rows when C is small) and a slice of the
rows; each block writes its partial sums to part[:, slice, channel], and a
second kernel, one thread per channel, adds the slices in order.
"""

import math

import numpy as np
from numba import cuda, float64

from ._device import maximum
from ._launch import TPB, blocks, dummy, flat, stages_outputs

SUM, _CENTRED, _GRAD = 0, 1, 2  # what _channel_partials_kernel sums
_MAX_SLICES = 64                # row slices (grid.y) of the partial sums


@cuda.jit
def _channel_partials_kernel(part, kind, A, B, shift, scale):
    """part[0/1, blockIdx.y, ch]: kind SUM: sum A; _CENTRED, d = A - shift:
    sum d, sum d^2; _GRAD: sum A, sum A (B - shift) scale."""
    s0 = cuda.shared.array(TPB, float64)
    s1 = cuda.shared.array(TPB, float64)
    rows, c = A.shape
    t = cuda.threadIdx.x
    g = min(c, TPB)
    lanes = TPB // g
    ch = cuda.blockIdx.x * g + t % g
    lane = t // g
    a0 = 0.0
    a1 = 0.0
    if lane < lanes and ch < c:
        for r in range(cuda.blockIdx.y * lanes + lane, rows, cuda.gridDim.y * lanes):
            v = float64(A[r, ch])
            if kind == _CENTRED:
                v -= float64(shift[ch])
                a1 += v * v
            elif kind == _GRAD:
                a1 += v * (float64(B[r, ch]) - float64(shift[ch])) * float64(scale[ch])
            a0 += v
    s0[t] = a0
    s1[t] = a1
    cuda.syncthreads()
    if t < g and ch < c:  # lane 0 adds the other lanes of its channel, in order
        for q in range(1, lanes):
            a0 += s0[t + q * g]
            a1 += s1[t + q * g]
        part[0, cuda.blockIdx.y, ch] = a0
        part[1, cuda.blockIdx.y, ch] = a1


@cuda.jit(device=True)
def _slices_total(part, q, ch):
    s = 0.0
    for k in range(part.shape[1]):
        s += part[q, k, ch]
    return s


@cuda.jit
def _sum_finish_kernel(out0, out1, part, both):
    """out0 = the first sums, and out1 the second if ``both``."""
    for ch in range(cuda.grid(1), out0.shape[0], cuda.gridsize(1)):
        out0[ch] = _slices_total(part, 0, ch)
        if both:
            out1[ch] = _slices_total(part, 1, ch)


def _partials(kind, A, B=None, shift=None, scale=None):
    """The (2, slices, C) partial sums of ``_channel_partials_kernel``."""
    rows, c = A.shape
    g = min(c, TPB)
    lanes = TPB // g
    slices = max(1, min(_MAX_SLICES, rows // (8 * lanes)))
    part = cuda.device_array((2, slices, c), np.float64)
    _channel_partials_kernel[(-(-c // g), slices), TPB](
        part, kind, A, dummy() if B is None else B, dummy() if shift is None else shift,
        dummy() if scale is None else scale)
    return part


def channel_reduce(kind, out0, out1, A, B=None, shift=None, scale=None):
    """out0[ch] (and out1[ch] unless None) = the float64 sums of ``_partials``."""
    part = _partials(kind, A, B, shift, scale)
    _sum_finish_kernel[blocks(out0.shape[0]), TPB](out0, dummy() if out1 is None else out1,
                                                   part, out1 is not None)


@cuda.jit
def _batchnorm_stats_kernel(mean, invstd, rm, rv, part, shift, rows, momentum, eps):
    """mean, invstd and torch's running update from the shifted sums; the
    one-pass variance is clamped at 0 (NaN stays NaN, as the reference's)."""
    for ch in range(cuda.grid(1), mean.shape[0], cuda.gridsize(1)):
        d = _slices_total(part, 0, ch) / rows
        var = maximum(_slices_total(part, 1, ch) / rows - d * d, 0.0)
        mu = float64(shift[ch]) + d
        mean[ch] = mu
        invstd[ch] = 1.0 / math.sqrt(var + eps)
        rm[ch] = (1.0 - momentum) * rm[ch] + momentum * mu
        rv[ch] = (1.0 - momentum) * rv[ch] + momentum * var * rows / (rows - 1)


@cuda.jit
def _batchnorm_apply_kernel(Y, X, center, spread, gamma, beta, eps, spread_is_var):
    """Y = (X - center) * gamma / s + beta per channel, s = sqrt(spread + eps)
    if spread_is_var (inference: running stats) else 1 / spread (invstd)."""
    c = center.shape[0]
    for e in range(cuda.grid(1), Y.shape[0], cuda.gridsize(1)):
        ch = e % c
        if spread_is_var:
            scale = gamma[ch] / math.sqrt(spread[ch] + eps)
        else:
            scale = gamma[ch] * spread[ch]
        Y[e] = (X[e] - center[ch]) * scale + beta[ch]


@cuda.jit
def _batchnorm_backward_kernel(dX, dY, X, gamma, mean, invstd, dgamma, dbeta, rows):
    """dX = gamma invstd (dY - dbeta / M - xhat dgamma / M)."""
    c = mean.shape[0]
    for e in range(cuda.grid(1), dX.shape[0], cuda.gridsize(1)):
        ch = e % c
        xhat = (X[e] - mean[ch]) * invstd[ch]
        dX[e] = gamma[ch] * invstd[ch] * (dY[e] - dbeta[ch] / rows - xhat * dgamma[ch] / rows)


# The statistics are shifted by the first row, so the one-pass variance does
# not cancel.
@stages_outputs
def batchnorm_forward(Y, X, gamma, beta, mean, invstd, running_mean, running_var, momentum,
                      eps):
    c = gamma.shape[0]
    rows = X.size // c
    x = X.reshape(rows, c)
    part = _partials(_CENTRED, x, shift=x[0])
    _batchnorm_stats_kernel[blocks(c), TPB](mean, invstd, running_mean, running_var, part, x[0],
                                            float(rows), momentum, eps)
    _batchnorm_apply_kernel[blocks(rows * c), TPB](flat(Y), flat(x), mean, invstd, gamma, beta,
                                                   np.float32(eps), False)


@stages_outputs
def batchnorm_inference(Y, X, gamma, beta, running_mean, running_var, eps):
    c = gamma.shape[0]
    _batchnorm_apply_kernel[blocks(X.size), TPB](flat(Y), flat(X), running_mean, running_var,
                                                 gamma, beta, np.float32(eps), True)


@stages_outputs
def batchnorm_backward(dX, dgamma, dbeta, dY, X, gamma, mean, invstd):
    c = gamma.shape[0]
    rows = X.size // c
    dy, x = dY.reshape(rows, c), X.reshape(rows, c)
    channel_reduce(_GRAD, dbeta, dgamma, dy, x, mean, invstd)
    _batchnorm_backward_kernel[blocks(rows * c), TPB](
        flat(dX), flat(dy), flat(x), gamma, mean, invstd, dgamma, dbeta, np.float32(rows))
