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
    grads, size, step = ck.prepare_sgd(params, grads, momentum_buf, step, momentum, dt)
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
    grads, size = ck.prepare_rmsprop(params, grads, square_avg, momentum_buf, grad_avg, momentum,
                                     centered, dt)
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


def axpy(y, x, alpha):
    """y += alpha * x in place over flat buffers (y may not overlap x)."""
    x = ck.prepare_axpy(y, x, _dt(y))
    y += y.dtype.type(ck.check_scalar("alpha", alpha)) * x


def clip(x, lo, hi):
    """x = min(max(x, lo), hi) in place (gradient clipping by value)."""
    ck.prepare_flat("x", x, _dt(x))
    lo, hi = ck.check_scalar("lo", lo), ck.check_scalar("hi", hi)
    if lo > hi:
        raise ValueError(f"lo: must be <= hi, got lo={lo}, hi={hi}")
    np.clip(x, lo, hi, out=x)


# ---- a whole epoch of a dense stack -----------------------------------------------

def dense_stack_epoch(params, grads, states, workspace, X, targets, batch_losses,
                      batch_correct, *, layers, loss, batch_size, optimizer, hyper, step,
                      mu_product=1.0, l2=0.0, loss_scale=1.0, grad_scale=1.0, order=None):
    """Train a stack of dense layers for one epoch of mini-batches.

    The trainer's inner loop as one kernel, so that backends can run it
    without returning to Python per batch.  For each batch
    ``X[i*batch_size : (i+1)*batch_size]`` (the last may be shorter), or
    with ``order`` ``X[order[i*batch_size : (i+1)*batch_size]]``:
    forward through every layer (``dense_forward``), the loss forward,
    the loss backward, every layer backward (``dense_backward``, the first
    without dX), then one optimizer update over the flat buffers.

    Parameters
    ----------
    params, grads : 1-D float32
        The model's flat buffers; ``grads`` is overwritten each batch.
    states : tuple
        The optimizer kernel's state buffers in its argument order (None
        where unused), e.g. ``(m, v)`` for adam.
    workspace : 1-D float32
        At least ``dense_stack_workspace(layers, batch_size, params.size)`` floats
        of the same backend (each backend lays it out its own way).
    X : (n, layers[0].in)
    targets : int labels (n,) for "softmax_xent"; (n, out) floats otherwise.
    batch_losses : float64 (n_batches,), batch_correct : int64 (n_batches,)
        Outputs: each batch's mean loss (before its update) and number of
        correctly classified samples (argmax, or logit > 0 against target >
        0.5 for one output; 0 for mse/mae).
    layers : sequence of (in, out, w_offset, b_offset, activation, negative_slope)
        W (in, out) lives at params[w_offset:], b (out,) at params[b_offset:]
        (b_offset -1: no bias); gradients at the same offsets in grads.
    loss : "softmax_xent", "bce", "mse" or "mae"
    optimizer : the name of an optimizer kernel ("sgd", "adam", ...)
    hyper : dict of that kernel's keyword arguments other than step and
        mu_product.
    step : optimizer steps taken before this epoch.
    mu_product : NAdam's running product before this epoch.
    l2 : scikit-learn's MLP penalty alpha: each batch of m samples adds
        ``l2 / (2 m) * sum(W**2)`` over the weights (not the biases) to its
        loss and ``l2 / m * W`` to dW.  (The optimizer's weight_decay is
        torch's, over the whole buffer.)
    loss_scale, grad_scale : the recorded loss is ``loss_scale * loss`` (+
        the l2 term) and the loss gradient is multiplied by ``grad_scale``
        (scikit-learn's squared error is half the MSE and its multilabel
        log-loss a sum, not a mean).
    order : None or 1-D integer array of row indices into X and targets
        (each in [0, n), repeats allowed): the epoch's samples in this
        order, n_batches counted from its length.  A shuffled epoch without
        a shuffled copy of X (the c backend gathers each batch's rows into
        its workspace; on cuda the rows are gathered on the host).

    Returns
    -------
    (n_done, step, mu_product) : batches run, and the optimizer counters
    after them.  A batch whose loss is not finite stops the epoch before its
    backward pass; it is counted in n_done and its loss recorded.
    """
    import sys

    return run_dense_stack_epoch(sys.modules[__name__], params, grads, states, workspace, X,
                                 targets, batch_losses, batch_correct, layers=layers, loss=loss,
                                 batch_size=batch_size, optimizer=optimizer, hyper=hyper,
                                 step=step, mu_product=mu_product, l2=l2, loss_scale=loss_scale,
                                 grad_scale=grad_scale, order=order)


def dense_stack_workspace(layers, batch_size, n_params):
    """Floats of workspace dense_stack_epoch needs on this backend: every
    layer's output for one batch, plus two gradient buffers of the widest
    layer.  (The c backend lays its workspace out otherwise and asks for
    more: every layer's gradient, a gathered batch and, with several
    threads, partial products; see csrc/train.c.)"""
    widest = max(max(layer[0], layer[1]) for layer in layers)
    return batch_size * (sum(layer[1] for layer in layers) + 2 * widest)


def run_dense_stack_epoch(k, params, grads, states, workspace, X, targets, batch_losses,
                          batch_correct, *, layers, loss, batch_size, optimizer, hyper, step,
                          mu_product=1.0, l2=0.0, loss_scale=1.0, grad_scale=1.0, order=None):
    """dense_stack_epoch written with backend `k`'s kernels (its specification;
    backends without a fused version use it as it is)."""
    X, targets, layers, n_batches, hyper, order = ck.prepare_dense_stack_epoch(
        params, grads, states, workspace, X, targets, batch_losses, batch_correct, layers,
        loss, batch_size, optimizer, hyper, step, l2, loss_scale, grad_scale, _dt(params),
        order=order)
    if order is not None:  # the spec: the same epoch over the gathered rows
        X, targets = (k.asarray(k.to_numpy(a)[order], a.dtype) for a in (X, targets))
    n, bs = X.shape[0], batch_size
    widest = max(max(layer[0], layer[1]) for layer in layers)
    acts, offset = [], 0
    for layer in layers:
        acts.append(offset)
        offset += bs * layer[1]
    g_off = (offset, offset + bs * widest)
    views = [(params[w:w + fi * fo].reshape(fi, fo), grads[w:w + fi * fo].reshape(fi, fo),
              None if b < 0 else params[b:b + fo], None if b < 0 else grads[b:b + fo])
             for fi, fo, w, b, _, _ in layers]
    update = getattr(k, optimizer)
    step_kw = {} if optimizer == "rmsprop" else {"step": None}
    n_out = layers[-1][1]
    t_host = k.to_numpy(targets)  # for counting correct answers (no copy on the host)
    for i in range(n_batches):
        lo, hi = i * bs, min((i + 1) * bs, n)
        m = hi - lo
        xb, tb = X[lo:hi], targets[lo:hi]
        Ys = [workspace[a:a + m * layer[1]].reshape(m, layer[1]) for a, layer in zip(acts, layers)]
        g = [workspace[o:o + m * widest] for o in g_off]
        inp = xb
        for (W, _, b, _), layer, Y in zip(views, layers, Ys):
            k.dense_forward(Y, inp, W, b, activation=layer[4], negative_slope=layer[5])
            inp = Y
        out, dout = Ys[-1], g[0][:m * n_out].reshape(m, n_out)
        if loss == "softmax_xent":
            value = k.softmax_xent_forward(dout, out, tb)
        else:
            value = getattr(k, loss + "_forward")(out, tb)
        value *= loss_scale
        if l2:
            value += 0.5 * l2 / m * sum(k.sum_squares(W.reshape(-1)) for W, _, _, _ in views)
        batch_losses[i] = value
        batch_correct[i] = count_correct(k.to_numpy(out), t_host[lo:hi], loss)
        if not np.isfinite(value):
            return i + 1, step, mu_product
        if loss == "softmax_xent":
            k.softmax_xent_backward(dout, dout, tb)
        else:
            getattr(k, loss + "_backward")(dout, out, tb)
        if grad_scale != 1.0:
            k.scale(dout.reshape(-1), grad_scale)
        cur = 0
        for j in range(len(layers) - 1, -1, -1):
            fi, fo = layers[j][0], layers[j][1]
            dY = g[cur][:m * fo].reshape(m, fo)
            dX = g[1 - cur][:m * fi].reshape(m, fi) if j > 0 else None
            W, dW, _, db = views[j]
            k.dense_backward(dX, dW, db, dY, dY, Ys[j - 1] if j > 0 else xb, W, Ys[j],
                             activation=layers[j][4], negative_slope=layers[j][5])
            if l2:
                k.axpy(dW.reshape(-1), W.reshape(-1), l2 / m)
            cur = 1 - cur
        step += 1
        if optimizer == "nadam":
            mu_product *= nadam_mu(step, hyper["beta1"], hyper["momentum_decay"])
            update(params, grads, *states, step=step, mu_product=mu_product, **hyper)
        else:
            if step_kw:
                step_kw["step"] = step
            update(params, grads, *states, **step_kw, **hyper)
    return n_batches, step, mu_product


def count_correct(out, target, loss):
    """Correctly classified samples in a batch of outputs (host arrays)."""
    if loss in ("mse", "mae"):
        return 0
    if loss == "softmax_xent":
        return int(np.sum(out.argmax(axis=1) == target))
    target = np.asarray(target)
    if out.shape[1] == 1:
        return int(np.sum((out[:, 0] > 0) == (target[:, 0] > 0.5)))
    return int(np.sum(out.argmax(axis=1) == target.argmax(axis=1)))


# ---- convolution (channels-last) ----------------------------------------------------

def _im2col(X, kh, kw, sh, sw, ph, pw, oh, ow):
    """Rows (n, oh, ow), columns (kh, kw, c): every window of the padded X."""
    n, h, w, c = X.shape
    Xp = np.pad(X, ((0, 0), (ph, ph), (pw, pw), (0, 0)))
    return _windows(Xp, kh, kw, sh, sw, oh, ow).reshape(n * oh * ow, kh * kw * c)


def _col2im(dcols, shape, kh, kw, sh, sw, ph, pw, oh, ow):
    """The adjoint of _im2col: every window's gradient added back into place."""
    n, h, w, c = shape
    dXp = np.zeros((n, h + 2 * ph, w + 2 * pw, c), dcols.dtype)
    d = dcols.reshape(n, oh, ow, kh, kw, c)
    for i in range(kh):
        for j in range(kw):
            dXp[:, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw] += d[:, :, :, i, j, :]
    return dXp[:, ph:ph + h, pw:pw + w]


def conv2d_forward(Y, X, W, b, cols, *, stride=(1, 1), padding=(0, 0), activation="identity",
                   negative_slope=0.01):
    """2-D convolution (cross-correlation, as torch's) of channels-last images.

    X (N, H, W, C), W (KH, KW, C, OC), b (OC,) or None, Y (N, OH, OW, OC)
    with OH = (H + 2 ph - KH) // sh + 1 (likewise OW); zero padding.
    Y = act(im2col(X) @ W.reshape(KH*KW*C, OC) + b): ``cols`` (N*OH*OW,
    KH*KW*C) is the caller's workspace, left holding im2col(X) for
    ``conv2d_backward``.  stride and padding are ints or (h, w) pairs.
    """
    dt = _dt(Y)
    X, W, b, g, code, slope = ck.prepare_conv2d_forward(Y, X, W, b, cols, stride, padding,
                                                        activation, negative_slope, dt)
    n, h, w, c, oh, ow, oc, kh, kw, sh, sw, ph, pw = g
    cols[...] = _im2col(X, kh, kw, sh, sw, ph, pw, oh, ow)
    Z = (cols.astype(np.float64) @ W.reshape(kh * kw * c, oc).astype(np.float64)).astype(dt)
    if b is not None:
        Z += b
    Y[...] = _act(Z, code, slope).reshape(n, oh, ow, oc)
    return Y


def conv2d_backward(dX, dW, db, dZ, dY, X, W, Y, cols, *, stride=(1, 1), padding=(0, 0),
                    activation="identity", negative_slope=0.01):
    """Backward of ``conv2d_forward`` from its X, output Y and ``cols``.

    dZ = dY * act'(Y) (dZ may be dY); dW (KH, KW, C, OC) = cols.T @ dZ, with
    cols holding im2col(X) as conv2d_forward left it; db (OC,) = sums of dZ
    (None: skipped); dX (N, H, W, C) = col2im(dZ @ W.T) (None: skipped).
    ``cols`` is overwritten (it holds dZ @ W.T afterwards when dX is given).
    """
    dt = _dt(dW)
    dY, X, W, Y, g, code, slope = ck.prepare_conv2d_backward(
        dX, dW, db, dZ, dY, X, W, Y, cols, stride, padding, activation, negative_slope, dt)
    n, h, w, c, oh, ow, oc, kh, kw, sh, sw, ph, pw = g
    dZ[...] = dY * _act_grad(Y, code, slope)
    z = dZ.reshape(n * oh * ow, oc).astype(np.float64)
    dW[...] = (cols.T.astype(np.float64) @ z).reshape(kh, kw, c, oc)
    if db is not None:
        db[...] = z.sum(axis=0)
    if dX is not None:
        cols[...] = z @ W.reshape(kh * kw * c, oc).T.astype(np.float64)
        dX[...] = _col2im(cols.astype(np.float64), (n, h, w, c), kh, kw, sh, sw, ph, pw, oh, ow)


# ---- pooling --------------------------------------------------------------------------

def _windows(X, kh, kw, sh, sw, oh, ow):
    """(N, OH, OW, KH*KW, C): every pooling window, row-major inside."""
    n, h, w, c = X.shape
    win = np.empty((n, oh, ow, kh, kw, c), X.dtype)
    for i in range(kh):
        for j in range(kw):
            win[:, :, :, i, j, :] = X[:, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw]
    return win.reshape(n, oh, ow, kh * kw, c)


def maxpool2d_forward(Y, X, argmax, *, pool, stride=None):
    """Max pooling of channels-last images, no padding.

    X (N, H, W, C) -> Y (N, OH, OW, C); ``argmax`` (int32, like Y) receives
    the flat index h * W + w of each maximum in its image (the first in
    row-major window order on ties), for the backward.  stride defaults to
    the pool size; pool and stride are ints or (h, w) pairs.
    """
    dt = _dt(Y)
    X, (n, h, w, c, oh, ow, kh, kw, sh, sw) = ck.prepare_pool_forward(Y, X, argmax, pool,
                                                                       stride, dt)
    win = _windows(X, kh, kw, sh, sw, oh, ow)
    idx = win.argmax(axis=3)
    Y[...] = np.take_along_axis(win, idx[:, :, :, None, :], axis=3)[:, :, :, 0, :]
    rows = np.arange(oh)[None, :, None, None] * sh + idx // kw
    colsn = np.arange(ow)[None, None, :, None] * sw + idx % kw
    argmax[...] = rows * w + colsn
    return Y


def maxpool2d_backward(dX, dY, argmax, *, pool, stride=None):
    """dX (N, H, W, C) = 0, then each dY added at its argmax (overlapping
    windows accumulate)."""
    dt = _dt(dX)
    dY, argmax, (n, h, w, c, oh, ow, kh, kw, sh, sw) = ck.prepare_pool_backward(
        dX, dY, argmax, pool, stride, dt)
    flat = np.zeros((n, h * w, c), np.float64)
    nn_, cc = np.arange(n)[:, None, None, None], np.arange(c)[None, None, None, :]
    np.add.at(flat, (np.broadcast_to(nn_, argmax.shape), argmax, np.broadcast_to(cc, argmax.shape)),
              dY)
    dX[...] = flat.reshape(n, h, w, c)


def avgpool2d_forward(Y, X, *, pool, stride=None):
    """Average pooling of channels-last images, no padding (see maxpool2d)."""
    dt = _dt(Y)
    X, (n, h, w, c, oh, ow, kh, kw, sh, sw) = ck.prepare_pool_forward(Y, X, None, pool, stride, dt)
    Y[...] = _windows(X.astype(np.float64), kh, kw, sh, sw, oh, ow).mean(axis=3)
    return Y


def avgpool2d_backward(dX, dY, *, pool, stride=None):
    """dX (N, H, W, C): each dY / (KH*KW) added over its window."""
    dt = _dt(dX)
    dY, _, (n, h, w, c, oh, ow, kh, kw, sh, sw) = ck.prepare_pool_backward(dX, dY, None, pool,
                                                                          stride, dt)
    acc = np.zeros((n, h, w, c), np.float64)
    share = dY.astype(np.float64) / (kh * kw)
    for i in range(kh):
        for j in range(kw):
            acc[:, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw] += share
    dX[...] = acc


# ---- batch normalisation --------------------------------------------------------------

def batchnorm_forward(Y, X, gamma, beta, mean, invstd, running_mean, running_var, *,
                      momentum=0.1, eps=1e-5):
    """Batch normalisation in training mode over the last axis of X (..., C).

    Statistics over all other axes (M values per channel): mean and invstd =
    1 / sqrt(var + eps) with the biased variance are written to ``mean`` and
    ``invstd`` (C,) for the backward; Y = (X - mean) * invstd * gamma + beta.
    The running statistics are updated as torch.nn.BatchNorm does:
    running = (1 - momentum) * running + momentum * batch, with the unbiased
    variance var * M / (M - 1).
    """
    dt = _dt(Y)
    X, gamma, beta, rows, c, momentum, eps = ck.prepare_batchnorm_forward(
        Y, X, gamma, beta, mean, invstd, running_mean, running_var, momentum, eps, dt)
    x = X.reshape(rows, c).astype(np.float64)
    mu = x.mean(axis=0)
    var = x.var(axis=0)
    istd = 1.0 / np.sqrt(var + eps)
    mean[...], invstd[...] = mu, istd
    Y[...] = ((x - mu) * (istd * gamma) + beta).reshape(X.shape)
    running_mean[...] = (1 - momentum) * running_mean + momentum * mu
    running_var[...] = (1 - momentum) * running_var + momentum * var * rows / (rows - 1)
    return Y


def batchnorm_inference(Y, X, gamma, beta, running_mean, running_var, *, eps=1e-5):
    """Batch normalisation in evaluation mode: the running statistics."""
    dt = _dt(Y)
    X, gamma, beta, rm, rv, rows, c, eps = ck.prepare_batchnorm_inference(
        Y, X, gamma, beta, running_mean, running_var, eps, dt)
    scale_ = gamma / np.sqrt(rv.astype(np.float64) + eps)
    Y[...] = ((X.reshape(rows, c) - rm) * scale_ + beta).reshape(X.shape)
    return Y


def batchnorm_backward(dX, dgamma, dbeta, dY, X, gamma, mean, invstd):
    """Backward of ``batchnorm_forward`` (training mode) from X and the saved
    mean and invstd: with xhat = (X - mean) * invstd and M values per
    channel, dbeta = sum(dY), dgamma = sum(dY * xhat),
    dX = gamma * invstd / M * (M dY - dbeta - xhat * dgamma)."""
    dt = _dt(dX)
    dY, X, gamma, mean, invstd, rows, c = ck.prepare_batchnorm_backward(
        dX, dgamma, dbeta, dY, X, gamma, mean, invstd, dt)
    x = X.reshape(rows, c).astype(np.float64)
    g = dY.reshape(rows, c).astype(np.float64)
    xhat = (x - mean) * invstd
    db_, dg_ = g.sum(axis=0), (g * xhat).sum(axis=0)
    dbeta[...], dgamma[...] = db_, dg_
    dX[...] = (gamma * invstd / rows * (rows * g - db_ - xhat * dg_)).reshape(X.shape)
