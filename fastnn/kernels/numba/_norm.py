"""Batch normalisation of the numba backend, over the last axis of X (rows,
C): training mode (batch statistics, torch's running-stat update),
inference mode (running statistics) and the training-mode backward.
"""

import math

import numpy as np
from numba import njit, prange

from ._common import _CHUNK

# Pieces the channel sums cut the rows into: a count that depends on the
# size only, never on numba's thread count (prange deals the pieces out).
_PIECES = 16


def _pieces(size):
    return max(1, min(_PIECES, size // _CHUNK))


# Per-channel sums over the rows of X (rows, C) in float64: each piece of rows
# (fixed by the size, _pieces) is summed into its own row of `part`, then the
# pieces are added in order: the same bits for every thread count.

@njit(cache=True, parallel=True)
def _channel_sums(out, part, a, b, shift, scale, kind, nchunks):
    """out (2, C) = float64 sums over rows: kind 0, d = a - shift: sum d,
    sum d^2; kind 1: sum a, sum a (b - shift) scale.  part: scratch of at
    least (nchunks, 2, C)."""
    rows, c = a.shape
    for k in prange(nchunks):
        s0, s1 = part[k, 0, :c], part[k, 1, :c]
        s0[:] = 0.0
        s1[:] = 0.0
        for r in range(k * rows // nchunks, (k + 1) * rows // nchunks):
            if kind == 0:
                for ch in range(c):
                    d = np.float64(a[r, ch]) - shift[ch]
                    s0[ch] += d
                    s1[ch] += d * d
            else:
                for ch in range(c):
                    g = np.float64(a[r, ch])
                    s0[ch] += g
                    s1[ch] += g * ((np.float64(b[r, ch]) - shift[ch]) * scale[ch])
    out[:] = 0.0
    for k in range(nchunks):
        out += part[k, :, :c]


# The kernels take their float64 scratch (part: (nchunks, 2, C), work: (5,
# C)) from the caller: the per-call wrappers allocate it, the compiled epoch
# once per epoch.

@njit(cache=True, parallel=True)
def _batchnorm_forward(y, x, gamma, beta, mean, invstd, rm, rv, momentum, eps, nchunks, part,
                       work):
    rows, c = x.shape
    shift, mu, scale, s = work[0, :c], work[1, :c], work[2, :c], work[3:5, :c]
    # Shifted by the first row, so the one-pass variance does not cancel.
    for ch in range(c):
        shift[ch] = x[0, ch]
    _channel_sums(s, part, x, x, shift, shift, 0, nchunks)
    for ch in range(c):
        d = s[0, ch] / rows
        var = max(s[1, ch] / rows - d * d, 0.0)
        mu[ch] = shift[ch] + d
        istd = 1.0 / math.sqrt(var + eps)
        mean[ch] = mu[ch]
        invstd[ch] = istd
        scale[ch] = istd * gamma[ch]
        rm[ch] = (1.0 - momentum) * rm[ch] + momentum * mu[ch]
        rv[ch] = (1.0 - momentum) * rv[ch] + momentum * var * rows / (rows - 1)
    for r in prange(rows):
        for ch in range(c):
            y[r, ch] = (x[r, ch] - mu[ch]) * scale[ch] + beta[ch]


@njit(cache=True, parallel=True)
def _batchnorm_inference(y, x, gamma, beta, rm, rv, eps):
    rows, c = x.shape
    scale = np.empty(c, dtype=np.float64)
    for ch in range(c):
        scale[ch] = gamma[ch] / math.sqrt(np.float64(rv[ch]) + eps)
    for r in prange(rows):
        for ch in range(c):
            y[r, ch] = (x[r, ch] - np.float64(rm[ch])) * scale[ch] + beta[ch]


@njit(cache=True, parallel=True)
def _batchnorm_backward(dx, dgamma, dbeta, dy, x, gamma, mean, invstd, nchunks, part, work):
    rows, c = x.shape
    mu, istd, k0, s = work[0, :c], work[1, :c], work[2, :c], work[3:5, :c]
    for ch in range(c):
        mu[ch] = mean[ch]
        istd[ch] = invstd[ch]
    _channel_sums(s, part, dy, x, mu, istd, 1, nchunks)
    for ch in range(c):
        dbeta[ch] = s[0, ch]
        dgamma[ch] = s[1, ch]
        k0[ch] = gamma[ch] * istd[ch] / rows
    # dX = gamma invstd / M (M dY - dbeta - xhat dgamma), from the float64 sums
    for r in prange(rows):
        for ch in range(c):
            xhat = (x[r, ch] - mu[ch]) * istd[ch]
            dx[r, ch] = k0[ch] * (rows * np.float64(dy[r, ch]) - s[0, ch] - xhat * s[1, ch])


def _scratch(nchunks, c):
    return np.empty((nchunks, 2, c), np.float64), np.empty((5, c), np.float64)


def batchnorm_forward(Y, X, gamma, beta, mean, invstd, running_mean, running_var, momentum,
                      eps):
    c = X.shape[-1]
    rows = X.size // c
    nchunks = _pieces(rows * c)
    _batchnorm_forward(Y.reshape(rows, c), X.reshape(rows, c), gamma, beta, mean, invstd,
                       running_mean, running_var, momentum, eps, nchunks, *_scratch(nchunks, c))


def batchnorm_inference(Y, X, gamma, beta, running_mean, running_var, eps):
    c = X.shape[-1]
    rows = X.size // c
    _batchnorm_inference(Y.reshape(rows, c), X.reshape(rows, c), gamma, beta, running_mean,
                         running_var, eps)


def batchnorm_backward(dX, dgamma, dbeta, dY, X, gamma, mean, invstd):
    c = X.shape[-1]
    rows = X.size // c
    nchunks = _pieces(rows * c)
    _batchnorm_backward(dX.reshape(rows, c), dgamma, dbeta, dY.reshape(rows, c),
                        X.reshape(rows, c), gamma, mean, invstd, nchunks, *_scratch(nchunks, c))
