"""Losses of the numba backend: softmax fused with cross-entropy, and the
pointwise losses (bce on logits, mse, mae) as one kernel per direction that
takes the loss code of spec.Loss.  Losses accumulate in float64.
"""

import math

import numpy as np
from numba import njit, prange

from .. import spec
from ._common import _REDUCE
from ._elementwise import _SIGMOID, _act

# Loss codes as module globals: numba compiles them in as constants.
_SOFTMAX_XENT = int(spec.Loss.SOFTMAX_XENT)
_BCE = int(spec.Loss.BCE)
_MSE = int(spec.Loss.MSE)
_MAE = int(spec.Loss.MAE)


@njit(cache=True, inline="always")
def _softmax_xent_row(p, z, labels, r):
    """Row r's probabilities into p; returns its loss (float64)."""
    c = z.shape[1]
    zmax = z[r, 0]
    for j in range(1, c):
        zmax = max(zmax, z[r, j])
    s = 0.0
    for j in range(c):
        e = math.exp(np.float64(z[r, j]) - zmax)
        p[r, j] = e
        s += e
    inv = 1.0 / s
    for j in range(c):
        p[r, j] *= inv
    return zmax + math.log(s) - z[r, labels[r]]


@njit(cache=True)
def _softmax_xent_rows(p, z, labels, r0, r1, values):
    """Rows [r0, r1): probabilities into p, losses into values (float64);
    their sum in row order is _softmax_xent_forward's total."""
    for r in range(r0, r1):
        values[r] = _softmax_xent_row(p, z, labels, r)


@njit(cache=True)
def _softmax_xent_forward(p, z, labels):
    n = z.shape[0]
    total = 0.0
    for r in range(n):
        total += _softmax_xent_row(p, z, labels, r)
    return total / n


@njit(cache=True)
def _softmax_xent_backward_rows(dz, p, labels, r0, r1, inv_n):
    """Rows [r0, r1) of the gradient (p - onehot) inv_n, inv_n = 1 / (the
    batch's rows)."""
    c = p.shape[1]
    for r in range(r0, r1):
        for j in range(c):
            g = p[r, j] - 1.0 if j == labels[r] else p[r, j]
            dz[r, j] = g * inv_n


@njit(cache=True)
def _softmax_xent_backward(dz, p, labels):
    n = p.shape[0]
    _softmax_xent_backward_rows(dz, p, labels, 0, n, 1.0 / n)


def softmax_xent_forward(P, Z, labels):
    return float(_softmax_xent_forward(P, Z, labels))


def softmax_xent_backward(dZ, P, labels):
    _softmax_xent_backward(dZ, P, labels)


@njit(cache=True, fastmath=_REDUCE)
def _pointwise_loss(loss, y, t):
    """Mean over all elements, in float64, of loss _BCE (y = logits), _MSE
    or _MAE."""
    s = 0.0
    for i in range(y.size):
        a, b = np.float64(y[i]), np.float64(t[i])
        if loss == _BCE:
            s += (a if a > 0 else 0.0) - a * b + math.log1p(math.exp(-abs(a)))
        elif loss == _MSE:
            s += (a - b) * (a - b)
        else:
            s += abs(a - b)
    return s / y.size


@njit(cache=True, inline="always")
def _pointwise_grad(loss, y, t):
    """bce: sigmoid(y) - t; mse: 2 (y - t); mae: sign(y - t) (float64)."""
    if loss == _BCE:
        return _act(_SIGMOID, y, 0.0) - t
    if loss == _MSE:
        return 2.0 * (y - t)
    d = y - t
    return 1.0 if d > 0 else (-1.0 if d < 0 else d)


@njit(cache=True)
def _pointwise_grad_span(loss, dy, y, t, lo, hi, inv):
    """dy[lo:hi] = _pointwise_grad * inv, inv = 1 / (the batch's elements)."""
    dys, ys, ts = dy[lo:hi], y[lo:hi], t[lo:hi]  # (from 0: _elementwise's loops say why)
    for i in range(dys.size):
        dys[i] = _pointwise_grad(loss, ys[i], ts[i]) * inv


@njit(cache=True, parallel=True)
def _pointwise_loss_backward(loss, dy, y, t):
    """bce: (sigmoid(y) - t)/size; mse: 2 (y - t)/size; mae: sign(y - t)/size."""
    inv = 1.0 / y.size
    for i in prange(y.size):
        dy[i] = _pointwise_grad(loss, y[i], t[i]) * inv


def bce_forward(Z, T):
    return float(_pointwise_loss(_BCE, Z.reshape(-1), T.reshape(-1)))


def bce_backward(dZ, Z, T):
    _pointwise_loss_backward(_BCE, dZ.reshape(-1), Z.reshape(-1), T.reshape(-1))


def mse_forward(Y, T):
    return float(_pointwise_loss(_MSE, Y.reshape(-1), T.reshape(-1)))


def mse_backward(dY, Y, T):
    _pointwise_loss_backward(_MSE, dY.reshape(-1), Y.reshape(-1), T.reshape(-1))


def mae_forward(Y, T):
    return float(_pointwise_loss(_MAE, Y.reshape(-1), T.reshape(-1)))


def mae_backward(dY, Y, T):
    _pointwise_loss_backward(_MAE, dY.reshape(-1), Y.reshape(-1), T.reshape(-1))
