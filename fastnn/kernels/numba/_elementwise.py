"""Elementwise kernels of the numba backend: the activations (the one scalar
definition that the gemm epilogue, the dense backward and the losses use
too), softmax, and the flat-buffer utilities (sum_squares, scale, clip,
axpy).

Elementwise math mixes float32 arrays with float64 scalars, so it runs in
float64 and rounds once on store; sums accumulate in float64.
"""

import math

import numpy as np
from numba import njit, prange

from .. import spec
from ._common import _EXACT, _REDUCE, _chunks, _spans

# Activation codes as module globals: numba compiles them in as constants.
_IDENTITY = int(spec.Activation.IDENTITY)
_STEP = int(spec.Activation.STEP)
_SIGN = int(spec.Activation.SIGN)
_SIGMOID = int(spec.Activation.SIGMOID)
_TANH = int(spec.Activation.TANH)
_RELU = int(spec.Activation.RELU)
_LEAKY_RELU = int(spec.Activation.LEAKY_RELU)
_SOFTPLUS = int(spec.Activation.SOFTPLUS)


# ---- activations ---------------------------------------------------------------

@njit(cache=True, inline="always")
def _act(code, x, slope):
    """act(x) for activation `code`; NaN propagates except through step, as
    in the reference."""
    if code == _IDENTITY:
        return x
    if code == _STEP:
        return 1.0 if x > 0 else 0.0
    if code == _SIGN:
        return 1.0 if x > 0 else (-1.0 if x < 0 else x)  # sign(+-0) = 0, NaN stays
    if code == _SIGMOID:
        e = math.exp(-abs(x))  # stable: exp of a non-positive number only
        return 1.0 / (1.0 + e) if x >= 0 else e / (1.0 + e)
    if code == _TANH:
        return math.tanh(x)
    if code == _RELU:
        return 0.0 if x < 0 else x
    if code == _LEAKY_RELU:
        return x if x > 0 else x * slope
    return (x if x > 0 else 0.0) + math.log1p(math.exp(-abs(x)))  # softplus


@njit(cache=True, inline="always")
def _act_grad(code, y, slope):
    """act'(x) expressed through the output y = act(x).  The 0 / 1 factors
    are float32 (dy times them is exact either way; the float64 product ran
    2x slower)."""
    if code == _IDENTITY:
        return np.float32(1.0)
    if code == _STEP or code == _SIGN:
        return np.float32(0.0)
    if code == _SIGMOID:
        return y * (1.0 - y)
    if code == _TANH:
        return 1.0 - y * y
    if code == _RELU:
        return np.float32(1.0) if y > 0 else np.float32(0.0)
    if code == _LEAKY_RELU:
        return 1.0 if y > 0 else slope
    return -math.expm1(-y)  # softplus: sigmoid(x) = 1 - e^-y


# The loops below run over slices from index 0: LLVM vectorises neither a
# loop indexed from a run-time `lo` (numba's negative-index wrap-around stays
# in it) nor one whose two arrays are the same memory (its run-time overlap
# check fails and the scalar loop runs), so an in-place span has a loop of
# one array.  Both cost 10-15x on a span in L1 (bench/NOTES.md, entry 57).

@njit(cache=True, inline="always")
def _same(a, b):
    """Whether a and b start at the same address (an in-place span)."""
    return a.ctypes.data == b.ctypes.data


@njit(cache=True, inline="always")
def _act_loop(y, x, lo, hi, code, slope):
    ys = y[lo:hi]
    if _same(y, x):
        for i in range(ys.size):
            ys[i] = _act(code, ys[i], slope)
    else:
        xs = x[lo:hi]
        for i in range(ys.size):
            ys[i] = _act(code, xs[i], slope)


@njit(cache=True, inline="always")
def _grad_loop(dx, dy, y, lo, hi, code, slope):
    dxs, ys = dx[lo:hi], y[lo:hi]
    if _same(dx, dy):
        for i in range(dxs.size):
            dxs[i] = dxs[i] * _act_grad(code, ys[i], slope)
    else:
        dys = dy[lo:hi]
        for i in range(dxs.size):
            dxs[i] = dys[i] * _act_grad(code, ys[i], slope)


@njit(cache=True)
def _act_span(y, x, lo, hi, code, slope):
    """y[lo:hi] = act(x[lo:hi]).  One loop per activation: `code` is a
    constant in each, so the branch leaves the loop and LLVM can vectorise."""
    if code == _IDENTITY:
        if not _same(y, x):
            _act_loop(y, x, lo, hi, _IDENTITY, slope)
    elif code == _STEP:
        _act_loop(y, x, lo, hi, _STEP, slope)
    elif code == _SIGN:
        _act_loop(y, x, lo, hi, _SIGN, slope)
    elif code == _SIGMOID:
        _act_loop(y, x, lo, hi, _SIGMOID, slope)
    elif code == _TANH:
        _act_loop(y, x, lo, hi, _TANH, slope)
    elif code == _RELU:
        _act_loop(y, x, lo, hi, _RELU, slope)
    elif code == _LEAKY_RELU:
        _act_loop(y, x, lo, hi, _LEAKY_RELU, slope)
    else:
        _act_loop(y, x, lo, hi, _SOFTPLUS, slope)


@njit(cache=True)
def _grad_span(dx, dy, y, lo, hi, code, slope):
    """dx[lo:hi] = dy * act'(y) over [lo, hi); one loop per activation (in
    place, identity's dy * 1 is dy: nothing to do)."""
    if code == _IDENTITY:
        if not _same(dx, dy):
            _grad_loop(dx, dy, y, lo, hi, _IDENTITY, slope)
    elif code == _STEP or code == _SIGN:
        _grad_loop(dx, dy, y, lo, hi, _STEP, slope)
    elif code == _SIGMOID:
        _grad_loop(dx, dy, y, lo, hi, _SIGMOID, slope)
    elif code == _TANH:
        _grad_loop(dx, dy, y, lo, hi, _TANH, slope)
    elif code == _RELU:
        _grad_loop(dx, dy, y, lo, hi, _RELU, slope)
    elif code == _LEAKY_RELU:
        _grad_loop(dx, dy, y, lo, hi, _LEAKY_RELU, slope)
    else:
        _grad_loop(dx, dy, y, lo, hi, _SOFTPLUS, slope)


@njit(cache=True, parallel=True)
def _activation_forward(y, x, code, slope, nchunks):
    for c in prange(nchunks):
        _act_span(y, x, c * x.size // nchunks, (c + 1) * x.size // nchunks, code, slope)


@njit(cache=True, parallel=True)
def _activation_backward(dx, dy, y, code, slope, nchunks):
    for c in prange(nchunks):
        _grad_span(dx, dy, y, c * y.size // nchunks, (c + 1) * y.size // nchunks, code, slope)


def activation_forward(Y, X, activation, negative_slope):
    _activation_forward(Y.reshape(-1), X.reshape(-1), activation, negative_slope,
                        _chunks(X.size))


def activation_backward(dX, dY, Y, activation, negative_slope):
    _activation_backward(dX.reshape(-1), dY.reshape(-1), Y.reshape(-1), activation,
                         negative_slope, _chunks(Y.size))


# ---- softmax ---------------------------------------------------------------------

@njit(cache=True, fastmath=_EXACT)
def _softmax_forward(y, x):
    n, c = x.shape
    for r in range(n):
        xmax = x[r, 0]
        for j in range(1, c):
            xmax = max(xmax, x[r, j])
        s = 0.0
        for j in range(c):
            e = math.exp(x[r, j] - xmax)
            y[r, j] = e
            s += e
        inv = 1.0 / s
        for j in range(c):
            y[r, j] *= inv


@njit(cache=True, fastmath=_REDUCE)
def _softmax_backward(dx, dy, y):
    n, c = y.shape
    for r in range(n):
        dot = 0.0
        for j in range(c):
            dot += dy[r, j] * y[r, j]
        for j in range(c):
            dx[r, j] = y[r, j] * (dy[r, j] - dot)


def softmax_forward(Y, X):
    _softmax_forward(Y, X)


def softmax_backward(dX, dY, Y):
    _softmax_backward(dX, dY, Y)


# ---- flat-buffer utilities -------------------------------------------------------

@njit(cache=True, fastmath=_REDUCE)
def _sum_squares(x):
    s = 0.0
    for i in range(x.size):
        v = np.float64(x[i])
        s += v * v
    return s


@njit(cache=True)
def _scale(x, s):
    for i in range(x.size):
        x[i] *= s


@njit(cache=True)
def _clip(x, lo, hi):
    for i in range(x.size):
        v = x[i]
        if v < lo:
            v = lo
        if v > hi:
            v = hi
        x[i] = v


@njit(cache=True, fastmath=_EXACT, error_model="numpy")
def _axpy_span(y, x, lo, hi, alpha):
    y, x = y[lo:hi], x[lo:hi]
    for i in range(y.size):
        y[i] += alpha * x[i]


@njit(cache=True, parallel=True)
def _axpy(y, x, alpha):
    """y += alpha x; on the calling thread below 2 spans (as the optimizer
    updates, which explain the span loop)."""
    n, s = y.size, _spans(y.size)
    if s == 1:
        _axpy_span(y, x, 0, n, alpha)
        return
    for c in prange(s):
        _axpy_span(y, x, c * n // s, (c + 1) * n // s, alpha)


def sum_squares(x):
    return float(_sum_squares(x))


# s, lo, hi and alpha are rounded to float32 once, so that the loops run in
# float32 (as the c backend's).

def scale(x, s):
    _scale(x, np.float32(s))


def clip(x, lo, hi):
    _clip(x, np.float32(lo), np.float32(hi))


def axpy(y, x, alpha):
    _axpy(y, x, np.float32(alpha))
