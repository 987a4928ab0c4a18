"""Device functions shared by the cuda backend's kernels: activations and
their derivatives, a softmax row, pointwise loss terms, numpy's
NaN-propagating maximum and minimum, and the block-wide sum.

IEEE semantics are the reference's numpy expressions: ``max``/``min`` are
fmaxf/fminf on a GPU (which drop a NaN) and Python's under the simulator
(which keep or drop it by argument order), so neither is used on data; the
explicit comparisons below behave the same on both.
"""

import math

from numba import cuda, float32, float64

from .. import spec
from ._launch import TPB

IDENTITY = int(spec.Activation.IDENTITY)
STEP = int(spec.Activation.STEP)
SIGN = int(spec.Activation.SIGN)
SIGMOID = int(spec.Activation.SIGMOID)
TANH = int(spec.Activation.TANH)
RELU = int(spec.Activation.RELU)
LEAKY_RELU = int(spec.Activation.LEAKY_RELU)
SOFTPLUS = int(spec.Activation.SOFTPLUS)

BCE = spec.LOSS_CODES["bce"]
MSE = spec.LOSS_CODES["mse"]
MAE = spec.LOSS_CODES["mae"]
SUM_SQUARES = len(spec.LOSSES)  # not a loss: sum_squares is the loss sum with T = Y


@cuda.jit(device=True)
def maximum(a, b):
    """np.maximum(a, b): NaN if either is NaN; a on a tie (the sign of a
    zero, as numpy keeps it)."""
    return a if a >= b or a != a else b


@cuda.jit(device=True)
def minimum(a, b):
    """np.minimum(a, b): NaN if either is NaN; a on a tie."""
    return a if a <= b or a != a else b


@cuda.jit(device=True)
def sqrt(x):
    """math.sqrt with NaN for x < 0, as on the device and in numpy (the
    simulator's math.sqrt raises ValueError instead)."""
    return math.sqrt(x) if x >= float32(0.0) else float32(math.nan)


@cuda.jit(device=True)
def sign(x):
    """np.sign: -1, 0 or 1; NaN stays NaN (as do +-0, as in the C kernels)."""
    one = float32(1.0)
    zero = float32(0.0)
    return one if x > zero else (-one if x < zero else x)


@cuda.jit(device=True)
def act(code, x, slope):
    """act(x) for activation `code` (spec.Activation), in float32."""
    one = float32(1.0)
    zero = float32(0.0)
    if code == STEP:
        return one if x > zero else zero
    if code == SIGN:
        return sign(x)
    if code == SIGMOID:
        # Stable both ways: exp of a non-positive number only.
        e = math.exp(-abs(x))
        return one / (one + e) if x >= zero else e / (one + e)
    if code == TANH:
        return math.tanh(x)
    if code == RELU:
        return maximum(x, zero)
    if code == LEAKY_RELU:
        return x if x > zero else x * slope
    if code == SOFTPLUS:
        return maximum(x, zero) + math.log1p(math.exp(-abs(x)))
    return x


@cuda.jit(device=True)
def act_grad(code, y, slope):
    """act'(x) expressed through the output y = act(x)."""
    one = float32(1.0)
    zero = float32(0.0)
    if code == IDENTITY:
        return one
    if code == STEP or code == SIGN:
        return zero
    if code == SIGMOID:
        return y * (one - y)
    if code == TANH:
        return one - y * y
    if code == RELU:
        return one if y > zero else zero
    if code == LEAKY_RELU:
        return one if y > zero else slope
    # softplus: y = log(1 + e^x)  =>  sigmoid(x) = 1 - e^-y
    return -math.expm1(-y)


@cuda.jit(device=True)
def softmax_row(P, Z, r):
    """P[r] = softmax(Z[r]), shifted by the row's maximum; returns the shift
    and the float64 sum of the shifted exponentials.  One thread does the row
    (rows are short here: classes), so P may be Z: Z[r, j] is read before
    P[r, j] is written."""
    c = Z.shape[1]
    mx = Z[r, 0]
    for j in range(1, c):
        mx = maximum(mx, Z[r, j])
    s = 0.0
    for j in range(c):
        e = math.exp(Z[r, j] - mx)
        P[r, j] = e
        s += e
    for j in range(c):
        P[r, j] = P[r, j] / s
    return mx, s


@cuda.jit(device=True)
def loss_term(kind, y, t):
    """One element's term of loss `kind` (BCE, MSE, MAE or SUM_SQUARES), in
    float64 (the mean is taken on the host)."""
    z = float64(y)
    if kind == BCE:
        return maximum(z, 0.0) - z * float64(t) + math.log1p(math.exp(-abs(z)))
    if kind == SUM_SQUARES:
        return z * z
    d = z - float64(t)
    if kind == MSE:
        return d * d
    return abs(d)


@cuda.jit(device=True)
def loss_grad(kind, y, t, size):
    """d(mean loss)/dy for one element; `size` is the element count (float32)."""
    if kind == BCE:
        return (act(SIGMOID, y, float32(0.0)) - t) / size
    d = y - t
    if kind == MSE:
        return float32(2.0) * d / size
    return sign(d) / size


@cuda.jit(device=True)
def block_sum_into(out, buf, acc):
    """out[0] += sum of `acc` over the block (shared tree, one atomic per block).

    `buf` is a shared float64 array of TPB; every thread of the block must call.
    """
    t = cuda.threadIdx.x
    buf[t] = acc
    cuda.syncthreads()
    s = TPB // 2
    while s > 0:
        if t < s:
            buf[t] += buf[t + s]
        cuda.syncthreads()
        s //= 2
    if t == 0:
        cuda.atomic.add(out, 0, buf[0])
