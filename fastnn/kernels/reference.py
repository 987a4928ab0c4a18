"""The numpy reference backend: the specification of every kernel.

Each function here is the plain transcription of the kernel's equations and
the oracle every other backend (``c``, ``numba``, ``cuda``) is tested against.
It is slow on purpose: no fusion, no blocking, nothing clever.

All backends share the signatures below (a test enforces it).  Outputs come
first, inputs next, options are keyword-only; the one exception is ``gemm``,
which keeps the BLAS order ``(A, B, C)``.  Outputs are written in place and
must have the exact shape, the backend's dtype and be C-contiguous; inputs of
another dtype or layout are converted (copied).  Some kernels may run in place
(an output that *is* one named input): each docstring says which.

The reference computes in the dtype of the output array when that is float64
(so gradient checks by finite differences are exact enough), otherwise in
float32, like the other backends.  Losses return a Python float.
"""

import numpy as np

from . import _checks as ck

name = "reference"

_F32 = np.dtype(np.float32)


def _dt(*outs):
    for o in outs:
        if o is not None and np.dtype(o.dtype) == np.float64:
            return np.dtype(np.float64)
    return _F32


def _dt_in(x):
    return np.dtype(np.float64) if np.asarray(x).dtype == np.float64 else _F32


def info():
    """What this backend is: a dict with at least 'backend' and 'threads'."""
    return {"backend": name, "threads": 1, "simd": "numpy"}


# ---- arrays ------------------------------------------------------------------
# Where a backend keeps its arrays: host numpy here and on c/numba, device
# arrays on cuda.  Models and trainers allocate through these four.

def empty(shape, dtype=np.float32):
    """An uninitialised backend array."""
    return np.empty(shape, dtype=dtype)


def zeros(shape, dtype=np.float32):
    """A zero-filled backend array."""
    return np.zeros(shape, dtype=dtype)


def asarray(x, dtype=np.float32):
    """x as a C-contiguous backend array of `dtype` (no copy if it already is)."""
    return np.ascontiguousarray(x, dtype=dtype)


def to_numpy(x):
    """A host numpy array with the content of backend array x."""
    return np.asarray(x)


# ---- matrix multiply -------------------------------------------------------

def gemm(A, B, C, *, trans_a=False, trans_b=False, alpha=1.0, beta=0.0):
    """C = alpha * op(A) @ op(B) + beta * C, in place; returns C.

    op(A) is A, or A.T if ``trans_a``; likewise B.  Any m, n, k >= 1.  With
    ``beta == 0`` the old content of C is never read (it may hold NaN).
    """
    dt = _dt(C)
    A, B, m, n, k, alpha, beta = ck.prepare_gemm(A, B, C, trans_a, trans_b, alpha, beta, dt)
    opa = A.T if trans_a else A
    opb = B.T if trans_b else B
    prod = alpha * (opa.astype(np.float64) @ opb.astype(np.float64))
    if beta != 0.0:
        prod += beta * C
    C[...] = prod
    return C


# ---- activations -----------------------------------------------------------

def _act(x, code, slope):
    """act(x) for activation `code` (see _checks.ACTIVATIONS)."""
    if code == 0:
        return x.copy()
    if code == 1:
        return (x > 0).astype(x.dtype)
    if code == 2:
        return np.sign(x)
    if code == 3:
        # Stable both ways: exp of a non-positive number only.
        e = np.exp(-np.abs(x))
        return np.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype)
    if code == 4:
        return np.tanh(x)
    if code == 5:
        return np.maximum(x, 0)
    if code == 6:
        return np.where(x > 0, x, x * x.dtype.type(slope))
    return (np.maximum(x, 0) + np.log1p(np.exp(-np.abs(x)))).astype(x.dtype)


def _act_grad(y, code, slope):
    """act'(x) expressed through the output y = act(x)."""
    one = y.dtype.type(1)
    if code == 0:
        return np.ones_like(y)
    if code in (1, 2):
        return np.zeros_like(y)
    if code == 3:
        return y * (one - y)
    if code == 4:
        return one - y * y
    if code == 5:
        return (y > 0).astype(y.dtype)
    if code == 6:
        return np.where(y > 0, one, y.dtype.type(slope))
    # softplus: y = log(1 + e^x)  =>  sigmoid(x) = 1 - e^-y
    return -np.expm1(-y)


def activation_forward(Y, X, *, activation, negative_slope=0.01):
    """Y = act(X) elementwise; Y may be X (in place).

    Activations: identity, step (x > 0), sign, sigmoid, tanh, relu,
    leaky_relu (slope ``negative_slope`` for x < 0), softplus.
    """
    dt = _dt(Y)
    X, code, slope = ck.prepare_activation_forward(Y, X, activation, negative_slope, dt)
    Y[...] = _act(X, code, slope)
    return Y


def activation_backward(dX, dY, Y, *, activation, negative_slope=0.01):
    """dX = dY * act'(x), computed from the cached output Y = act(x).

    dX may be dY (in place).  step and sign have derivative 0 everywhere it
    exists.  leaky_relu's derivative is read from the sign of Y, which needs
    ``negative_slope > 0``.
    """
    dt = _dt(dX)
    dY, Y, code, slope = ck.prepare_activation_backward(dX, dY, Y, activation, negative_slope, dt)
    dX[...] = dY * _act_grad(Y, code, slope)
    return dX


def softmax_forward(Y, X):
    """Row-wise softmax of X (n, c) into Y; Y may be X.  Stable: max-shifted."""
    dt = _dt(Y)
    X, n, c = ck.prepare_softmax_forward(Y, X, dt)
    e = np.exp(X - X.max(axis=1, keepdims=True))
    Y[...] = e / e.sum(axis=1, keepdims=True)
    return Y


def softmax_backward(dX, dY, Y):
    """dX = Y * (dY - rowsum(dY * Y)) for Y = softmax(X); dX may be dY."""
    dt = _dt(dX)
    dY, Y, n, c = ck.prepare_softmax_backward(dX, dY, Y, dt)
    dX[...] = Y * (dY - (dY * Y).sum(axis=1, keepdims=True))
    return dX


# ---- dense layer -----------------------------------------------------------

def dense_forward(Y, X, W, b, *, activation="identity", negative_slope=0.01):
    """Y = act(X @ W + b): X (n, in), W (in, out), b (out,) or None, Y (n, out)."""
    dt = _dt(Y)
    X, W, b, n, fan_in, fan_out, code, slope = ck.prepare_dense_forward(
        Y, X, W, b, activation, negative_slope, dt)
    Z = (X.astype(np.float64) @ W.astype(np.float64)).astype(dt)
    if b is not None:
        Z += b
    Y[...] = _act(Z, code, slope)
    return Y


def dense_backward(dX, dW, db, dZ, dY, X, W, Y, *, activation="identity",
                   negative_slope=0.01):
    """Backward of ``dense_forward`` from its cached input X and output Y.

    dZ (n, out) = dY * act'(Y); dZ may be dY (in place).
    dW (in, out) = X.T @ dZ;  db (out,) = dZ.sum(0), skipped if None;
    dX (n, in) = dZ @ W.T, skipped if None (a first layer needs no dX).
    Every output is overwritten, never accumulated.
    """
    dt = _dt(dW)
    dY, X, W, Y, n, fan_in, fan_out, code, slope = ck.prepare_dense_backward(
        dX, dW, db, dZ, dY, X, W, Y, activation, negative_slope, dt)
    dZ[...] = dY * _act_grad(Y, code, slope)
    z64 = dZ.astype(np.float64)
    dW[...] = X.T.astype(np.float64) @ z64
    if db is not None:
        db[...] = z64.sum(axis=0)
    if dX is not None:
        dX[...] = z64 @ W.T.astype(np.float64)


# ---- losses ----------------------------------------------------------------

def softmax_xent_forward(P, Z, labels):
    """Softmax fused with cross-entropy on logits Z (n, c) and integer labels.

    Writes P = softmax(Z) and returns mean_i(logsumexp(Z_i) - Z[i, labels_i])
    (stable for any logits), as torch.nn.CrossEntropyLoss.
    """
    dt = _dt(P)
    Z, labels, n, c = ck.prepare_softmax_xent_forward(P, Z, labels, dt)
    z64 = Z.astype(np.float64)
    zmax = z64.max(axis=1, keepdims=True)
    e = np.exp(z64 - zmax)
    s = e.sum(axis=1, keepdims=True)
    P[...] = e / s
    lse = (zmax + np.log(s))[:, 0]
    return float(np.mean(lse - z64[np.arange(n), labels]))


def softmax_xent_backward(dZ, P, labels):
    """dZ = (P - onehot(labels)) / n; dZ may be P (in place)."""
    dt = _dt(dZ)
    P, labels, n, c = ck.prepare_softmax_xent_backward(dZ, P, labels, dt)
    g = P.copy()
    g[np.arange(n), labels] -= 1
    dZ[...] = g / n


def bce_forward(Z, T):
    """Sigmoid fused with binary cross-entropy on logits Z, targets T in [0, 1].

    Returns mean(max(z, 0) - z t + log1p(exp(-|z|))), stable for any |z|, as
    torch.nn.BCEWithLogitsLoss.
    """
    Z, T = ck.prepare_pointwise_loss(Z, T, _dt_in(Z), y_name="Z")
    z, t = Z.astype(np.float64), T.astype(np.float64)
    return float(np.mean(np.maximum(z, 0) - z * t + np.log1p(np.exp(-np.abs(z)))))


def bce_backward(dZ, Z, T):
    """dZ = (sigmoid(Z) - T) / Z.size; dZ may be Z (in place)."""
    dt = _dt(dZ)
    Z, T = ck.prepare_pointwise_loss_backward(dZ, Z, T, dt, y_name="Z")
    dZ[...] = (_act(Z, 3, 0.0) - T) / Z.size


def mse_forward(Y, T):
    """Mean over all elements of (Y - T)^2, as torch.nn.MSELoss."""
    Y, T = ck.prepare_pointwise_loss(Y, T, _dt_in(Y))
    return float(np.mean((Y.astype(np.float64) - T) ** 2))


def mse_backward(dY, Y, T):
    """dY = 2 (Y - T) / Y.size; dY may be Y (in place)."""
    dt = _dt(dY)
    Y, T = ck.prepare_pointwise_loss_backward(dY, Y, T, dt)
    dY[...] = 2 * (Y - T) / Y.size


def mae_forward(Y, T):
    """Mean over all elements of |Y - T|, as torch.nn.L1Loss."""
    Y, T = ck.prepare_pointwise_loss(Y, T, _dt_in(Y))
    return float(np.mean(np.abs(Y.astype(np.float64) - T)))


def mae_backward(dY, Y, T):
    """dY = sign(Y - T) / Y.size (0 where Y == T); dY may be Y (in place)."""
    dt = _dt(dY)
    Y, T = ck.prepare_pointwise_loss_backward(dY, Y, T, dt)
    dY[...] = np.sign(Y - T) / Y.size


# ---- optimizer updates -----------------------------------------------------
# Each is one pass over flat 1-D buffers, following torch.optim step for step
# (single-tensor, maximize=False, differentiable=False).  `step` counts from 1.
# params and state buffers are updated in place; grads is only read.

def sgd(params, grads, momentum_buf, *, step, lr, momentum=0.0, dampening=0.0,
        nesterov=False, weight_decay=0.0):
    """torch.optim.SGD::

        g = grad + weight_decay * p
        if momentum != 0:
            buf = g                                    (step 1)
            buf = momentum * buf + (1 - dampening) * g (later)
            g = g + momentum * buf if nesterov else buf
        p = p - lr * g

    ``momentum_buf`` may be None when momentum == 0.
    """
    dt = _dt(params)
    grads, size = ck.prepare_update(params, grads, {"momentum_buf": momentum_buf}, dt)
    step = ck.check_step(step)
    if momentum != 0.0 and momentum_buf is None:
        raise ValueError("momentum_buf: required when momentum != 0")
    g = grads + weight_decay * params if weight_decay != 0.0 else grads.copy()
    if momentum != 0.0:
        if step == 1:
            momentum_buf[...] = g
        else:
            momentum_buf[...] = momentum * momentum_buf + (1 - dampening) * g
        g = g + momentum * momentum_buf if nesterov else momentum_buf
    params -= lr * g


def adam(params, grads, m, v, *, step, lr, beta1, beta2, eps, weight_decay=0.0):
    """torch.optim.Adam (amsgrad=False)::

        g = grad + weight_decay * p
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g^2
        p = p - lr * (m / (1 - beta1^t)) / (sqrt(v / (1 - beta2^t)) + eps)

    eps is added to sqrt(v_hat), as torch and llm.c do (scikit-learn folds the
    bias correction into the step size instead).
    """
    _adam(params, grads, m, v, step, lr, beta1, beta2, eps, weight_decay, decoupled=False)


def adamw(params, grads, m, v, *, step, lr, beta1, beta2, eps, weight_decay=0.0):
    """torch.optim.AdamW: p = p * (1 - lr * weight_decay), then Adam without L2."""
    _adam(params, grads, m, v, step, lr, beta1, beta2, eps, weight_decay, decoupled=True)


def _adam(params, grads, m, v, step, lr, beta1, beta2, eps, weight_decay, decoupled):
    dt = _dt(params)
    grads, size = ck.prepare_update(params, grads, {"m": m, "v": v}, dt)
    t = ck.check_step(step)
    if decoupled:
        params *= 1 - lr * weight_decay
        g = grads
    else:
        g = grads + weight_decay * params if weight_decay != 0.0 else grads
    m[...] = beta1 * m + (1 - beta1) * g
    v[...] = beta2 * v + (1 - beta2) * g * g
    bc1 = 1 - beta1 ** t
    bc2 = 1 - beta2 ** t
    params -= (lr / bc1) * m / (np.sqrt(v / bc2) + eps)


def rmsprop(params, grads, square_avg, momentum_buf, grad_avg, *, lr, alpha, eps,
            weight_decay=0.0, momentum=0.0, centered=False):
    """torch.optim.RMSprop::

        g = grad + weight_decay * p
        sq = alpha * sq + (1 - alpha) * g^2
        if centered: ga = alpha * ga + (1 - alpha) * g;  avg = sqrt(sq - ga^2) + eps
        else:        avg = sqrt(sq) + eps
        if momentum > 0: buf = momentum * buf + g / avg;  p = p - lr * buf
        else:            p = p - lr * g / avg

    ``momentum_buf`` may be None when momentum == 0, ``grad_avg`` when not
    centered.
    """
    dt = _dt(params)
    grads, size = ck.prepare_update(
        params, grads, {"square_avg": square_avg, "momentum_buf": momentum_buf,
                        "grad_avg": grad_avg}, dt)
    if momentum != 0.0 and momentum_buf is None:
        raise ValueError("momentum_buf: required when momentum != 0")
    if centered and grad_avg is None:
        raise ValueError("grad_avg: required when centered")
    g = grads + weight_decay * params if weight_decay != 0.0 else grads
    square_avg[...] = alpha * square_avg + (1 - alpha) * g * g
    if centered:
        grad_avg[...] = alpha * grad_avg + (1 - alpha) * g
        avg = np.sqrt(square_avg - grad_avg * grad_avg) + eps
    else:
        avg = np.sqrt(square_avg) + eps
    if momentum > 0.0:
        momentum_buf[...] = momentum * momentum_buf + g / avg
        params -= lr * momentum_buf
    else:
        params -= lr * g / avg


def adagrad(params, grads, sum_sq, *, step, lr, lr_decay=0.0, weight_decay=0.0, eps=1e-10):
    """torch.optim.Adagrad::

        g = grad + weight_decay * p
        clr = lr / (1 + (t - 1) * lr_decay)
        sum_sq = sum_sq + g^2
        p = p - clr * g / (sqrt(sum_sq) + eps)

    (initial_accumulator_value is the caller's initial fill of ``sum_sq``.)
    """
    dt = _dt(params)
    grads, size = ck.prepare_update(params, grads, {"sum_sq": sum_sq}, dt)
    t = ck.check_step(step)
    g = grads + weight_decay * params if weight_decay != 0.0 else grads
    clr = lr / (1 + (t - 1) * lr_decay)
    sum_sq += g * g
    params -= clr * g / (np.sqrt(sum_sq) + eps)


def nadam_mu(step, beta1, momentum_decay):
    """mu_t of NAdam's momentum schedule: beta1 * (1 - 0.5 * 0.96^(t * psi))."""
    return beta1 * (1.0 - 0.5 * 0.96 ** (step * momentum_decay))


def nadam(params, grads, m, v, *, step, lr, beta1, beta2, eps, weight_decay=0.0,
          momentum_decay=4e-3, mu_product):
    """torch.optim.NAdam (decoupled_weight_decay=False)::

        g = grad + weight_decay * p
        mu, mu_next = nadam_mu(t), nadam_mu(t + 1)
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g^2
        denom = sqrt(v / (1 - beta2^t)) + eps
        p = p - lr * (1 - mu) / (1 - mu_product) * g / denom
              - lr * mu_next / (1 - mu_product * mu_next) * m / denom

    ``mu_product`` is mu_1 * ... * mu_t (this step's mu included), which the
    caller keeps, as torch keeps it in the optimizer state.
    """
    dt = _dt(params)
    grads, size = ck.prepare_update(params, grads, {"m": m, "v": v}, dt)
    t = ck.check_step(step)
    g = grads + weight_decay * params if weight_decay != 0.0 else grads
    mu = nadam_mu(t, beta1, momentum_decay)
    mu_next = nadam_mu(t + 1, beta1, momentum_decay)
    m[...] = beta1 * m + (1 - beta1) * g
    v[...] = beta2 * v + (1 - beta2) * g * g
    denom = np.sqrt(v / (1 - beta2 ** t)) + eps
    params -= (lr * (1 - mu) / (1 - mu_product)) * g / denom
    params -= (lr * mu_next / (1 - mu_product * mu_next)) * m / denom


def adamax(params, grads, m, u, *, step, lr, beta1, beta2, eps, weight_decay=0.0):
    """torch.optim.Adamax::

        g = grad + weight_decay * p
        m = beta1 * m + (1 - beta1) * g
        u = max(beta2 * u, |g| + eps)
        p = p - lr / (1 - beta1^t) * m / u
    """
    dt = _dt(params)
    grads, size = ck.prepare_update(params, grads, {"m": m, "u": u}, dt)
    t = ck.check_step(step)
    g = grads + weight_decay * params if weight_decay != 0.0 else grads
    m[...] = beta1 * m + (1 - beta1) * g
    u[...] = np.maximum(beta2 * u, np.abs(g) + eps)
    params -= (lr / (1 - beta1 ** t)) * m / u


# ---- flat-buffer utilities -------------------------------------------------

def sum_squares(x):
    """sum(x^2) over a flat buffer, accumulated in float64; returns a float."""
    x = ck.as_input("x", x, _dt_in(x), ndim=1)
    return float(np.sum(x.astype(np.float64) ** 2))


def scale(x, s):
    """x *= s in place (gradient clipping by norm)."""
    ck.prepare_flat("x", x, _dt(x))
    x *= x.dtype.type(ck.check_scalar("s", s))


def clip(x, lo, hi):
    """x = min(max(x, lo), hi) in place (gradient clipping by value)."""
    ck.prepare_flat("x", x, _dt(x))
    lo, hi = ck.check_scalar("lo", lo), ck.check_scalar("hi", hi)
    if lo > hi:
        raise ValueError(f"lo: must be <= hi, got lo={lo}, hi={hi}")
    np.clip(x, lo, hi, out=x)
