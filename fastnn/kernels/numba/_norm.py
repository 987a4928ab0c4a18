"""Batch normalisation of the numba backend, over the last axis of X (rows,
C): training mode (batch statistics, torch's running-stat update),
inference mode (running statistics) and the training-mode backward.

The statistics are float64 sums; the per-element passes run in float32 with
float32 per-channel coefficients, as csrc/cnn.c's: Y = (X - mean) scale +
beta, dX = a (dY - dbeta / M - (X - mean) g).
"""

import math

import numpy as np
from numba import njit, prange

from ._common import _CHUNK

# Pieces the channel sums cut the rows into: a count that depends on the
# size only, never on numba's thread count (prange deals the pieces out).
_PIECES = 16
# Elements a per-element pass gives a thread at least: below twice that the
# pass runs on the calling thread (a parallel region costs more than a
# float32 pass over 64k elements).
_SPAN = 2 * _CHUNK


def _pieces(size):
    return max(1, min(_PIECES, size // _CHUNK))


# Per-channel sums over the rows of X (rows, C) in float64: each piece of rows
# (fixed by the size, _pieces) is summed into its own row of `part`, then the
# pieces are added in order into part[nchunks]: the same bits for every
# thread count.

@njit(cache=True)
def _sums_rows(s0, s1, a, b, center, kind, r0, r1):
    """s0, s1 (C) = float64 sums over rows [r0, r1): kind 0, d = a - center:
    sum d, sum d^2; kind 1: sum a, sum a (b - center)."""
    c = a.shape[1]
    s0[:] = 0.0
    s1[:] = 0.0
    if kind == 0:
        for r in range(r0, r1):
            for ch in range(c):
                d = np.float64(a[r, ch]) - center[ch]
                s0[ch] += d
                s1[ch] += d * d
    else:
        for r in range(r0, r1):
            for ch in range(c):
                g = np.float64(a[r, ch])
                s0[ch] += g
                s1[ch] += g * (np.float64(b[r, ch]) - center[ch])


@njit(cache=True, parallel=True)
def _channel_sums(part, a, b, center, kind, nchunks):
    """part[nchunks, 0:2, :C] = the sums of _sums_rows over all rows.
    part: scratch of at least (nchunks + 1, 2, C)."""
    rows, c = a.shape
    if nchunks == 1:  # one piece: no parallel region
        _sums_rows(part[0, 0, :c], part[0, 1, :c], a, b, center, kind, 0, rows)
    else:
        for k in prange(nchunks):
            _sums_rows(part[k, 0, :c], part[k, 1, :c], a, b, center, kind,
                       k * rows // nchunks, (k + 1) * rows // nchunks)
    out = part[nchunks, :, :c]
    out[:] = 0.0
    for k in range(nchunks):
        out += part[k, :, :c]
    return out


@njit(cache=True)
def _affine_rows(y, x, center, scale, shift, r0, r1):
    c = x.shape[1]
    for r in range(r0, r1):
        for ch in range(c):
            y[r, ch] = (x[r, ch] - center[ch]) * scale[ch] + shift[ch]


@njit(cache=True)
def _dx_rows(dx, dy, x, center, a, mb, g, r0, r1):
    c = x.shape[1]
    for r in range(r0, r1):
        for ch in range(c):
            dx[r, ch] = a[ch] * (dy[r, ch] - mb[ch] - (x[r, ch] - center[ch]) * g[ch])


@njit(cache=True)
def _row_spans(rows, c):
    """Row spans of a per-element pass over (rows, C): >= _SPAN elements each
    (fewer than 2: the pass runs on the calling thread)."""
    return min(rows, rows * c // _SPAN)


@njit(cache=True, parallel=True)
def _affine(y, x, center, scale, shift):
    """Y = (X - center) scale + shift, float32, in _row_spans."""
    rows, c = x.shape
    spans = _row_spans(rows, c)
    if spans < 2:
        _affine_rows(y, x, center, scale, shift, 0, rows)
    else:
        for s in prange(spans):
            _affine_rows(y, x, center, scale, shift, s * rows // spans, (s + 1) * rows // spans)


# The kernels take their scratch from the caller (part: float64 (nchunks + 1,
# 2, C); work: float32 (4, C)): the per-call wrappers allocate it, the
# compiled epoch once per epoch.

@njit(cache=True)
def _batchnorm_forward(y, x, gamma, beta, mean, invstd, rm, rv, momentum, eps, nchunks, part,
                       work):
    rows, c = x.shape
    center, scale = work[0, :c], work[1, :c]
    # Shifted by the first row, so the one-pass variance does not cancel.
    for ch in range(c):
        center[ch] = x[0, ch]
    s = _channel_sums(part, x, x, center, 0, nchunks)
    for ch in range(c):
        d = s[0, ch] / rows
        var = max(s[1, ch] / rows - d * d, 0.0)
        mu = np.float64(center[ch]) + d
        istd = 1.0 / math.sqrt(var + eps)
        mean[ch] = mu
        center[ch] = mu
        invstd[ch] = istd
        scale[ch] = istd * gamma[ch]
        rm[ch] = (1.0 - momentum) * rm[ch] + momentum * mu
        rv[ch] = (1.0 - momentum) * rv[ch] + momentum * var * rows / (rows - 1)
    _affine(y, x, center, scale, beta)


@njit(cache=True)
def _batchnorm_inference(y, x, gamma, beta, rm, rv, eps):
    rows, c = x.shape
    scale = np.empty(c, dtype=np.float32)
    for ch in range(c):
        scale[ch] = gamma[ch] / math.sqrt(np.float64(rv[ch]) + eps)
    _affine(y, x, rm, scale, beta)


@njit(cache=True, parallel=True)
def _batchnorm_backward(dx, dgamma, dbeta, dy, x, gamma, mean, invstd, nchunks, part, work):
    rows, c = x.shape
    center, a, mb, g = work[0, :c], work[1, :c], work[2, :c], work[3, :c]
    for ch in range(c):
        center[ch] = mean[ch]
    s = _channel_sums(part, dy, x, center, 1, nchunks)
    for ch in range(c):
        istd = np.float64(invstd[ch])
        dg = s[1, ch] * istd
        dbeta[ch] = s[0, ch]
        dgamma[ch] = dg
        a[ch] = np.float64(gamma[ch]) * istd
        mb[ch] = s[0, ch] / rows
        g[ch] = dg * istd / rows
    spans = _row_spans(rows, c)
    if spans < 2:
        _dx_rows(dx, dy, x, center, a, mb, g, 0, rows)
    else:
        for k in prange(spans):
            _dx_rows(dx, dy, x, center, a, mb, g, k * rows // spans, (k + 1) * rows // spans)


def _scratch(nchunks, c):
    return np.empty((nchunks + 1, 2, c), np.float64), np.empty((4, c), np.float32)


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
