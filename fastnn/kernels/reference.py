"""The numpy reference backend: the specification of every kernel.

Each function here is the plain transcription of the kernel's equations and
the oracle every other backend (``c``, ``numba``, ``cuda``) is tested against.
It is slow on purpose: no fusion, no blocking, nothing clever.

The signatures are the specification's (:mod:`fastnn.kernels.spec`): these
functions are the implementations, called by the front in
:mod:`fastnn.kernels` with validated, normalised arguments (activation
codes, (h, w) pairs, floats), and their docstrings document the public
kernels.  Outputs come first, inputs next; the one exception is ``gemm``,
which keeps the BLAS order ``(A, B, C)``.  Outputs are written in place and
must have the exact shape, the backend's dtype and be C-contiguous; inputs of
another dtype or layout are converted (copied).  Some kernels may run in place
(an output that *is* one named input): each docstring says which.

The reference computes in the dtype of the output arrays when that is float64
(so gradient checks by finite differences are exact enough), otherwise in
float32, like the other backends.  Losses return a Python float.
"""

import sys

import numpy as np

from . import spec
from .spec import Activation as A, nadam_mu
from . import _reference_rnn as _rnn
from ._reference_rnn import rnn_backward, rnn_forward  # noqa: F401 - kernels of spec.KERNELS

name = "reference"
DTYPE = None  # the outputs' dtype: float32, or float64 for gradient checks


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

def gemm(A, B, C, trans_a, trans_b, alpha, beta):
    """C = alpha * op(A) @ op(B) + beta * C, in place; returns C.

    op(A) is A, or A.T if ``trans_a``; likewise B.  Any m, n, k >= 1.  With
    ``beta == 0`` the old content of C is never read (it may hold NaN).
    """
    opa = A.T if trans_a else A
    opb = B.T if trans_b else B
    prod = alpha * (opa.astype(np.float64) @ opb.astype(np.float64))
    if beta != 0.0:
        prod += beta * C
    C[...] = prod
    return C


# ---- activations -----------------------------------------------------------

def _act(x, code, slope):
    """act(x) for activation `code` (spec.Activation)."""
    if code == A.IDENTITY:
        return x.copy()
    if code == A.STEP:
        return (x > 0).astype(x.dtype)
    if code == A.SIGN:
        return np.sign(x)
    if code == A.SIGMOID:
        # Stable both ways: exp of a non-positive number only.
        e = np.exp(-np.abs(x))
        return np.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype)
    if code == A.TANH:
        return np.tanh(x)
    if code == A.RELU:
        return np.maximum(x, 0)
    if code == A.LEAKY_RELU:
        return np.where(x > 0, x, x * x.dtype.type(slope))
    assert code == A.SOFTPLUS
    return (np.maximum(x, 0) + np.log1p(np.exp(-np.abs(x)))).astype(x.dtype)


def _act_grad(y, code, slope):
    """act'(x) expressed through the output y = act(x)."""
    one = y.dtype.type(1)
    if code == A.IDENTITY:
        return np.ones_like(y)
    if code in (A.STEP, A.SIGN):
        return np.zeros_like(y)
    if code == A.SIGMOID:
        return y * (one - y)
    if code == A.TANH:
        return one - y * y
    if code == A.RELU:
        return (y > 0).astype(y.dtype)
    if code == A.LEAKY_RELU:
        return np.where(y > 0, one, y.dtype.type(slope))
    assert code == A.SOFTPLUS
    # softplus: y = log(1 + e^x)  =>  sigmoid(x) = 1 - e^-y
    return -np.expm1(-y)


def activation_forward(Y, X, activation, negative_slope):
    """Y = act(X) elementwise; Y may be X (in place).

    Activations: identity, step (x > 0), sign, sigmoid, tanh, relu,
    leaky_relu (slope ``negative_slope`` for x < 0), softplus.
    """
    Y[...] = _act(X, activation, negative_slope)
    return Y


def activation_backward(dX, dY, Y, activation, negative_slope):
    """dX = dY * act'(x), computed from the cached output Y = act(x).

    dX may be dY (in place).  step and sign have derivative 0 everywhere it
    exists.  leaky_relu's derivative is read from the sign of Y, which needs
    ``negative_slope > 0``.
    """
    dX[...] = dY * _act_grad(Y, activation, negative_slope)
    return dX


def softmax_forward(Y, X):
    """Row-wise softmax of X (n, c) into Y; Y may be X.  Stable: max-shifted."""
    e = np.exp(X - X.max(axis=1, keepdims=True))
    Y[...] = e / e.sum(axis=1, keepdims=True)
    return Y


def softmax_backward(dX, dY, Y):
    """dX = Y * (dY - rowsum(dY * Y)) for Y = softmax(X); dX may be dY."""
    dX[...] = Y * (dY - (dY * Y).sum(axis=1, keepdims=True))
    return dX


# ---- dense layer -----------------------------------------------------------

def dense_forward(Y, X, W, b, activation, negative_slope):
    """Y = act(X @ W + b): X (n, in), W (in, out), b (out,) or None, Y (n, out)."""
    Z = (X.astype(np.float64) @ W.astype(np.float64)).astype(Y.dtype)
    if b is not None:
        Z += b
    Y[...] = _act(Z, activation, negative_slope)
    return Y


def dense_backward(dX, dW, db, dZ, dY, X, W, Y, activation, negative_slope):
    """Backward of ``dense_forward`` from its cached input X and output Y.

    dZ (n, out) = dY * act'(Y); dZ may be dY (in place).
    dW (in, out) = X.T @ dZ;  db (out,) = dZ.sum(0), skipped if None;
    dX (n, in) = dZ @ W.T, skipped if None (a first layer needs no dX).
    Every output is overwritten, never accumulated.
    """
    dZ[...] = dY * _act_grad(Y, activation, negative_slope)
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
    n = Z.shape[0]
    z64 = Z.astype(np.float64)
    zmax = z64.max(axis=1, keepdims=True)
    e = np.exp(z64 - zmax)
    s = e.sum(axis=1, keepdims=True)
    P[...] = e / s
    lse = (zmax + np.log(s))[:, 0]
    return float(np.mean(lse - z64[np.arange(n), labels]))


def softmax_xent_backward(dZ, P, labels):
    """dZ = (P - onehot(labels)) / n; dZ may be P (in place)."""
    n = P.shape[0]
    g = P.copy()
    g[np.arange(n), labels] -= 1
    dZ[...] = g / n


def bce_forward(Z, T):
    """Sigmoid fused with binary cross-entropy on logits Z, targets T in [0, 1].

    Returns mean(max(z, 0) - z t + log1p(exp(-|z|))), stable for any |z|, as
    torch.nn.BCEWithLogitsLoss.
    """
    z, t = Z.astype(np.float64), T.astype(np.float64)
    return float(np.mean(np.maximum(z, 0) - z * t + np.log1p(np.exp(-np.abs(z)))))


def bce_backward(dZ, Z, T):
    """dZ = (sigmoid(Z) - T) / Z.size; dZ may be Z (in place)."""
    dZ[...] = (_act(Z, A.SIGMOID, 0.0) - T) / Z.size


def mse_forward(Y, T):
    """Mean over all elements of (Y - T)^2, as torch.nn.MSELoss."""
    return float(np.mean((Y.astype(np.float64) - T) ** 2))


def mse_backward(dY, Y, T):
    """dY = 2 (Y - T) / Y.size; dY may be Y (in place)."""
    dY[...] = 2 * (Y - T) / Y.size


def mae_forward(Y, T):
    """Mean over all elements of |Y - T|, as torch.nn.L1Loss."""
    return float(np.mean(np.abs(Y.astype(np.float64) - T)))


def mae_backward(dY, Y, T):
    """dY = sign(Y - T) / Y.size (0 where Y == T); dY may be Y (in place)."""
    dY[...] = np.sign(Y - T) / Y.size


# ---- optimizer updates -----------------------------------------------------
# Each is one pass over flat 1-D buffers, following torch.optim step for step
# (single-tensor, maximize=False, differentiable=False).  `step` counts from 1.
# params and state buffers are updated in place; grads is only read.

def sgd(params, grads, momentum_buf, step, lr, momentum, dampening, nesterov, weight_decay):
    """torch.optim.SGD::

        g = grad + weight_decay * p
        if momentum != 0:
            buf = g                                    (step 1)
            buf = momentum * buf + (1 - dampening) * g (later)
            g = g + momentum * buf if nesterov else buf
        p = p - lr * g

    ``momentum_buf`` may be None when momentum == 0.
    """
    g = grads + weight_decay * params if weight_decay != 0.0 else grads.copy()
    if momentum != 0.0:
        if step == 1:
            momentum_buf[...] = g
        else:
            momentum_buf[...] = momentum * momentum_buf + (1 - dampening) * g
        g = g + momentum * momentum_buf if nesterov else momentum_buf
    params -= lr * g


def adam(params, grads, m, v, step, lr, beta1, beta2, eps, weight_decay):
    """torch.optim.Adam (amsgrad=False)::

        g = grad + weight_decay * p
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g^2
        p = p - lr * (m / (1 - beta1^t)) / (sqrt(v / (1 - beta2^t)) + eps)

    eps is added to sqrt(v_hat), as torch and llm.c do (scikit-learn folds the
    bias correction into the step size instead).
    """
    _adam(params, grads, m, v, step, lr, beta1, beta2, eps, weight_decay, decoupled=False)


def adamw(params, grads, m, v, step, lr, beta1, beta2, eps, weight_decay):
    """torch.optim.AdamW: p = p * (1 - lr * weight_decay), then Adam without L2."""
    _adam(params, grads, m, v, step, lr, beta1, beta2, eps, weight_decay, decoupled=True)


def _adam(params, grads, m, v, t, lr, beta1, beta2, eps, weight_decay, decoupled):
    if decoupled:
        params *= 1 - lr * weight_decay
        g = grads
    else:
        g = grads + weight_decay * params if weight_decay != 0.0 else grads
    m[...] = beta1 * m + (1 - beta1) * g
    v[...] = beta2 * v + (1 - beta2) * g * g
    bc1, bc2 = spec.bias_corrections(t, beta1, beta2)
    params -= (lr / bc1) * m / (np.sqrt(v / bc2) + eps)


def rmsprop(params, grads, square_avg, momentum_buf, grad_avg, lr, alpha, eps, weight_decay,
            momentum, centered):
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


def adagrad(params, grads, sum_sq, step, lr, lr_decay, weight_decay, eps):
    """torch.optim.Adagrad::

        g = grad + weight_decay * p
        clr = lr / (1 + (t - 1) * lr_decay)
        sum_sq = sum_sq + g^2
        p = p - clr * g / (sqrt(sum_sq) + eps)

    (initial_accumulator_value is the caller's initial fill of ``sum_sq``.)
    """
    g = grads + weight_decay * params if weight_decay != 0.0 else grads
    clr = lr / (1 + (step - 1) * lr_decay)
    sum_sq += g * g
    params -= clr * g / (np.sqrt(sum_sq) + eps)


def nadam(params, grads, m, v, step, lr, beta1, beta2, eps, weight_decay, momentum_decay,
          mu_product):
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
    t = step
    g = grads + weight_decay * params if weight_decay != 0.0 else grads
    mu = nadam_mu(t, beta1, momentum_decay)
    mu_next = nadam_mu(t + 1, beta1, momentum_decay)
    m[...] = beta1 * m + (1 - beta1) * g
    v[...] = beta2 * v + (1 - beta2) * g * g
    denom = np.sqrt(v / (1 - beta2 ** t)) + eps
    params -= (lr * (1 - mu) / (1 - mu_product)) * g / denom
    params -= (lr * mu_next / (1 - mu_product * mu_next)) * m / denom


def adamax(params, grads, m, u, step, lr, beta1, beta2, eps, weight_decay):
    """torch.optim.Adamax::

        g = grad + weight_decay * p
        m = beta1 * m + (1 - beta1) * g
        u = max(beta2 * u, |g| + eps)
        p = p - lr / (1 - beta1^t) * m / u
    """
    g = grads + weight_decay * params if weight_decay != 0.0 else grads
    m[...] = beta1 * m + (1 - beta1) * g
    u[...] = np.maximum(beta2 * u, np.abs(g) + eps)
    params -= (lr / (1 - beta1 ** step)) * m / u


# ---- flat-buffer utilities -------------------------------------------------

def radam(params, grads, m, v, step, lr, beta1, beta2, eps, weight_decay):
    """torch.optim.RAdam (decoupled_weight_decay=False)::

        g = grad + weight_decay * p
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g^2
        r = spec.radam_rectification(t, beta2)     (0 while rho_t <= 5)
        p = p - lr * m / (1 - beta1^t) * r * sqrt(1 - beta2^t) / (sqrt(v) + eps)   if r > 0
        p = p - lr * m / (1 - beta1^t)                                               else
    """
    g = grads + weight_decay * params if weight_decay != 0.0 else grads
    m[...] = beta1 * m + (1 - beta1) * g
    v[...] = beta2 * v + (1 - beta2) * g * g
    bc1, bc2 = spec.bias_corrections(step, beta1, beta2)
    r = spec.radam_rectification(step, beta2)
    if r > 0.0:
        params -= (lr / bc1) * m * r * (np.sqrt(bc2) / (np.sqrt(v) + eps))
    else:
        params -= (lr / bc1) * m


def sum_squares(x):
    """sum(x^2) over a flat buffer, accumulated in float64; returns a float."""
    return float(np.sum(x.astype(np.float64) ** 2))


def scale(x, s):
    """x *= s in place (gradient clipping by norm)."""
    x *= x.dtype.type(s)


def axpy(y, x, alpha):
    """y += alpha * x in place over flat buffers (y may not overlap x)."""
    y += y.dtype.type(alpha) * x


def clip(x, lo, hi):
    """x = min(max(x, lo), hi) in place (gradient clipping by value)."""
    np.clip(x, lo, hi, out=x)


# ---- a whole epoch of a dense stack -----------------------------------------------

def dense_stack_epoch(epoch):
    """Train a stack of dense layers for one epoch of mini-batches.

    The trainer's inner loop as one kernel, so that backends can run it
    without returning to Python per batch.  For each batch
    ``X[i*batch_size : (i+1)*batch_size]`` (the last may be shorter), or
    with ``order`` ``X[order[i*batch_size : (i+1)*batch_size]]``:
    forward through every layer (``dense_forward``), the loss forward,
    the loss backward, every layer backward (``dense_backward``, the first
    without dX), then one optimizer update over the flat buffers.

    ``epoch`` is one :class:`fastnn.kernels.spec.Epoch`; its fields:

    params, grads : 1-D float32
        The model's flat buffers; ``grads`` is overwritten each batch.
    states : tuple
        The optimizer kernel's state buffers in its argument order (None
        where unused), e.g. ``(m, v)`` for adam.
    workspace : 1-D float32
        At least ``dense_stack_workspace(layers, batch_size)`` floats of the
        backend, laid out as ``spec.epoch_layout`` says (one layout for every
        backend; a larger workspace lets the c backend use more threads).
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
    hyper : dict of that kernel's hyperparameters (spec.OPTIMIZERS[name]
        .hyper_names; weight_decay and the flags may be left out).
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
    return run_dense_stack_epoch(sys.modules[__name__], epoch)


def run_dense_stack_epoch(k, epoch):
    """dense_stack_epoch written with the kernel implementations of `k` (a
    backend module, or a Backend's ``impls``) on a validated spec.Epoch: the
    specification of the fused versions, and the epoch of backends without
    one."""
    e = epoch
    X, targets = e.X, e.targets
    if e.order is not None:  # the spec: the same epoch over the gathered rows
        X, targets = (k.asarray(k.to_numpy(a)[e.order], a.dtype) for a in (X, targets))
    n, bs, layers, ws = X.shape[0], e.batch_size, e.layers, e.workspace
    at = spec.epoch_layout(layers, bs)
    views = [(e.params[L.w_offset:L.w_offset + L.fan_in * L.fan_out].reshape(L.fan_in, L.fan_out),
              e.grads[L.w_offset:L.w_offset + L.fan_in * L.fan_out].reshape(L.fan_in, L.fan_out),
              None if L.b_offset < 0 else e.params[L.b_offset:L.b_offset + L.fan_out],
              None if L.b_offset < 0 else e.grads[L.b_offset:L.b_offset + L.fan_out])
             for L in layers]
    opt = spec.OPTIMIZERS[e.optimizer]
    update = getattr(k, e.optimizer)
    scalars = {name: getattr(e, name) for name in opt.scalars}
    step = e.step
    t_host = k.to_numpy(targets)  # for counting correct answers (no copy on the host)
    for i in range(e.n_batches):
        lo, hi = i * bs, min((i + 1) * bs, n)
        m = hi - lo
        xb, tb = X[lo:hi], targets[lo:hi]
        Ys = [ws[a:a + m * L.fan_out].reshape(m, L.fan_out) for a, L in zip(at["Y"], layers)]
        Ds = [ws[a:a + m * L.fan_out].reshape(m, L.fan_out) for a, L in zip(at["D"], layers)]
        inp = xb
        for (W, _, b, _), L, Y in zip(views, layers, Ys):
            k.dense_forward(Y, inp, W, b, L.activation, L.negative_slope)
            inp = Y
        out, dout = Ys[-1], Ds[-1]
        if e.loss == "softmax_xent":
            value = k.softmax_xent_forward(dout, out, tb)
        else:
            value = getattr(k, e.loss + "_forward")(out, tb)
        value *= e.loss_scale
        if e.l2:
            value += 0.5 * e.l2 / m * sum(k.sum_squares(W.reshape(-1)) for W, _, _, _ in views)
        e.batch_losses[i] = value
        e.batch_correct[i] = count_correct(k.to_numpy(out), t_host[lo:hi], e.loss)
        if not np.isfinite(value):
            return i + 1, step, scalars.get("mu_product", e.mu_product)
        if e.loss == "softmax_xent":
            k.softmax_xent_backward(dout, dout, tb)
        else:
            getattr(k, e.loss + "_backward")(dout, out, tb)
        if e.grad_scale != 1.0:
            k.scale(dout.reshape(-1), e.grad_scale)
        for j in range(len(layers) - 1, -1, -1):
            L, (W, dW, _, db) = layers[j], views[j]
            k.dense_backward(Ds[j - 1] if j > 0 else None, dW, db, Ds[j], Ds[j],
                             Ys[j - 1] if j > 0 else xb, W, Ys[j], L.activation,
                             L.negative_slope)
            if e.l2:
                k.axpy(dW.reshape(-1), W.reshape(-1), e.l2 / m)
        step += 1
        scalars = spec.advance(e.optimizer, scalars, step, e.hyper)
        update(e.params, e.grads, *e.states, *([step] if opt.step else []),
               *e.hyper.values(), *scalars.values())
    return e.n_batches, step, scalars.get("mu_product", e.mu_product)


# ---- dropout masks from a counter-based generator -----------------------------------------

def philox4x32(counter, key, rounds=spec.PHILOX_ROUNDS):
    """Philox4x32-R (Salmon et al. 2011, Random123) on arrays: `counter` a
    (4, ...) and `key` a (2, ...) array of uint32 words (broadcast);
    returns the (4, ...) uint32 output words."""
    c = [np.asarray(w, np.uint64) for w in counter]
    k0, k1 = (np.asarray(w, np.uint64) for w in key)
    mask = np.uint64(0xFFFFFFFF)
    m0, m1 = np.uint64(spec.PHILOX_M[0]), np.uint64(spec.PHILOX_M[1])
    w0, w1 = np.uint64(spec.PHILOX_W[0]), np.uint64(spec.PHILOX_W[1])
    for r in range(rounds):
        if r:
            k0, k1 = (k0 + w0) & mask, (k1 + w1) & mask
        p0, p1 = m0 * c[0], m1 * c[2]  # < 2^64: no wrap
        c = [(p1 >> np.uint64(32)) ^ c[1] ^ k0, p1 & mask,
             (p0 >> np.uint64(32)) ^ c[3] ^ k1, p0 & mask]
    return np.stack([w.astype(np.uint32) for w in c])


def dropout_mask(size, p, seed, counter):
    """The float32 mask of a dropout call over `size` elements: 0 (dropped)
    or float32(1 / (1 - p)).  Element e takes word e % 4 of Philox4x32-10
    at counter (e // 4 low, e // 4 high, counter low, counter high) and key
    (seed low, seed high), all 32-bit halves; it is dropped when the word's
    top 24 bits are < ceil(p * 2^24).  The same bits on every backend and
    for any thread count."""
    blocks = np.arange(-(-size // 4), dtype=np.uint64)
    lo32 = np.uint64(0xFFFFFFFF)
    ctr = (blocks & lo32, blocks >> np.uint64(32),
           np.uint64(counter & 0xFFFFFFFF), np.uint64(counter >> 32))
    words = philox4x32(ctr, (np.uint64(seed & 0xFFFFFFFF), np.uint64(seed >> 32)))
    words = words.T.reshape(-1)[:size]
    keep = (words >> np.uint32(8)) >= np.uint32(min(spec.dropout_threshold(p), 2 ** 24))
    return np.where(keep, np.float32(spec.dropout_scale(p)), np.float32(0.0))


def dropout_forward(Y, X, p, seed, counter):
    """Inverted dropout: Y = X * mask (see dropout_mask; X flat in C order),
    so an element's NaN or inf propagates like a product: NaN * 0 = NaN."""
    mask = dropout_mask(X.size, p, seed, counter).reshape(X.shape)
    np.multiply(X, mask, out=Y)
    return Y


def dropout_backward(dX, dY, p, seed, counter):
    """dX = dY * mask, the forward's mask recomputed (nothing is stored)."""
    mask = dropout_mask(dY.size, p, seed, counter).reshape(dY.shape)
    np.multiply(dY, mask, out=dX)
    return dX


# ---- a whole epoch of any compiled model ------------------------------------------------

def model_epoch(epoch):
    """Train a compiled model (a plan of layer records) for one epoch.

    ``epoch`` is one :class:`fastnn.kernels.spec.ModelEpoch` (fastnn.plan
    compiles a Sequential into it).  For each batch (rows of X in order, or
    ``X[order[...]]`` gathered into the workspace at ``xb``), m rows:

    1. every record forward in plan order (training mode: BatchNorm's batch
       statistics and running averages; Dropout's Philox mask for call
       ``counter + batch index``);
    2. the loss of the output at ``output`` against the batch's targets,
       times ``loss_scale``, plus ``l2 / (2 m) * sum(w^2)`` over the
       ``penalized`` ranges; recorded in batch_losses / batch_correct; a
       non-finite value ends the epoch here (counted in n_done);
    3. the loss gradient (times ``grad_scale``) into ``doutput``, then every
       record backward in reverse order (each writes its parameters'
       gradients, overwriting; dx where asked for);
    4. ``l2 / m * w`` added to the penalized gradients, the gradients
       clipped to [-clip_value, clip_value] (if clip_value > 0), then scaled
       by clip_norm / (norm + 1e-6) if that is < 1 (if clip_norm > 0; norm
       = sqrt(sum_squares(grads))), as the Trainer's batch-by-batch path
       does; one optimizer update over the whole buffer -- or, when
       ``trainable`` lists ranges, the clipping (its norm too) and the
       update over those ranges only (frozen parameters and their
       optimizer state do not change).

    The hook (``hook``, ``hook_every``; :class:`fastnn.kernels.spec.HookEvent`
    says when it is called): ``hook(GRADS, i)`` between the l2 term and
    the clipping of 4 when ``hook.events`` asks for it, ``hook(BATCH, i)``
    after the update of every ``hook_every``-th batch and of the last.  An
    exception from it ends the epoch there and propagates unchanged.

    Returns
    -------
    (n_done, step, mu_product), as dense_stack_epoch.
    """
    return run_model_epoch(sys.modules[__name__], epoch)


def model_epochs(epochs):
    """One epoch of each of several compiled models (a list of
    spec.ModelEpoch): what fastnn.fit_many runs per epoch.  They may share
    X, targets and order (read only), nothing they write.  The result is
    each one's as if run alone by model_epoch (in any order: the c backend
    trains them side by side, one model per thread); returns the list of
    their (n_done, step, mu_product)."""
    return run_model_epochs(sys.modules[__name__], epochs)


def run_model_epochs(k, epochs):
    """model_epochs as one model_epoch of `k` after the other."""
    return [k.model_epoch(e) for e in epochs]


def _record_forward(k, e, r, s, xin, m, batch, xb):
    """Record r (ints) / s (floats) forward over m rows of batch number
    `batch` of the epoch; xin its input, xb the batch's input rows."""
    ws, P, F, Op = e.workspace, e.params, spec.F, spec.Op
    op = r[F["op"]]
    ishape = (m, r[F["h"]], r[F["w"]], r[F["c"]])
    oshape = (m, r[F["oh"]], r[F["ow"]], r[F["oc"]])
    isz, osz = int(np.prod(ishape)), int(np.prod(oshape))
    if op == Op.FORK:
        return
    Y = ws[r[F["y"]]:r[F["y"]] + osz]
    if op == Op.DENSE:
        fan_in, oc = isz // m, r[F["oc"]]
        W = P[r[F["param"]]:r[F["param"]] + fan_in * oc].reshape(fan_in, oc)
        b = None if r[F["bias"]] < 0 else P[r[F["bias"]]:r[F["bias"]] + oc]
        k.dense_forward(Y.reshape(m, oc), xin.reshape(m, fan_in), W, b, r[F["act"]],
                        s[spec.S["slope"]])
    elif op == Op.CONV2D:
        kh, kw, c, oc = r[F["kh"]], r[F["kw"]], r[F["c"]], r[F["oc"]]
        W = P[r[F["param"]]:r[F["param"]] + kh * kw * c * oc].reshape(kh, kw, c, oc)
        b = None if r[F["bias"]] < 0 else P[r[F["bias"]]:r[F["bias"]] + oc]
        K = kh * kw * c
        cols = ws[r[F["aux"]]:r[F["aux"]] + osz // oc * K].reshape(osz // oc, K)
        k.conv2d_forward(Y.reshape(oshape), xin.reshape(ishape), W, b, cols,
                         (r[F["sh"]], r[F["sw"]]), (r[F["ph"]], r[F["pw"]]), r[F["act"]],
                         s[spec.S["slope"]])
    elif op in (Op.MAXPOOL2D, Op.AVGPOOL2D):
        pool, stride = (r[F["kh"]], r[F["kw"]]), (r[F["sh"]], r[F["sw"]])
        if op == Op.MAXPOOL2D:
            am = e.iworkspace[r[F["iaux"]]:r[F["iaux"]] + osz].reshape(oshape)
            k.maxpool2d_forward(Y.reshape(oshape), xin.reshape(ishape), am, pool, stride)
        else:
            k.avgpool2d_forward(Y.reshape(oshape), xin.reshape(ishape), pool, stride)
    elif op == Op.ACTIVATION:
        k.activation_forward(Y, xin, r[F["act"]], s[spec.S["slope"]])
    elif op == Op.SOFTMAX:
        c = r[F["c"]]
        k.softmax_forward(Y.reshape(-1, c), xin.reshape(-1, c))
    elif op == Op.BATCHNORM:
        c = r[F["c"]]
        gamma, beta = P[r[F["param"]]:r[F["param"]] + c], P[r[F["bias"]]:r[F["bias"]] + c]
        rm = e.buffers[r[F["stat0"]]:r[F["stat0"]] + c]
        rv = e.buffers[r[F["stat1"]]:r[F["stat1"]] + c]
        mean, invstd = ws[r[F["aux"]]:r[F["aux"]] + c], ws[r[F["aux"]] + c:r[F["aux"]] + 2 * c]
        k.batchnorm_forward(Y.reshape(-1, c), xin.reshape(-1, c), gamma, beta, mean, invstd,
                            rm, rv, s[spec.S["momentum"]], s[spec.S["eps"]])
    elif op == Op.DROPOUT:
        k.dropout_forward(Y, xin, s[spec.S["p"]], r[F["seed"]], r[F["counter"]] + batch)
    elif op == Op.RNN:
        _rnn.record_forward(k, e, r, xin, m)
    elif op == Op.ADD:  # (aux -1: the skip is the batch's input rows)
        skip = xb if r[F["aux"]] == -1 else ws[r[F["aux"]]:r[F["aux"]] + osz]
        _copy_into(k, Y, xin)
        k.axpy(Y, skip, 1.0)
    else:
        raise ValueError(f"plan: unknown op {op}")


def _copy_into(k, dst, src):
    """dst[...] = src on the backend's flat arrays."""
    if isinstance(dst, np.ndarray):
        np.copyto(dst, src)
    else:
        dst.copy_to_device(src)


def _record_backward(k, e, r, s, xin, m, batch):
    """Record r backward over m rows (its output gradient at dy)."""
    ws, P, G, F, Op = e.workspace, e.params, e.grads, spec.F, spec.Op
    op = r[F["op"]]
    ishape = (m, r[F["h"]], r[F["w"]], r[F["c"]])
    oshape = (m, r[F["oh"]], r[F["ow"]], r[F["oc"]])
    isz, osz = int(np.prod(ishape)), int(np.prod(oshape))
    dY = ws[r[F["dy"]]:r[F["dy"]] + osz]
    Y = None if op == Op.FORK else ws[r[F["y"]]:r[F["y"]] + osz]
    dX = None if r[F["dx"]] < 0 else ws[r[F["dx"]]:r[F["dx"]] + isz]
    if op == Op.DENSE:
        fan_in, oc = isz // m, r[F["oc"]]
        W = P[r[F["param"]]:r[F["param"]] + fan_in * oc].reshape(fan_in, oc)
        dW = G[r[F["param"]]:r[F["param"]] + fan_in * oc].reshape(fan_in, oc)
        db = None if r[F["bias"]] < 0 else G[r[F["bias"]]:r[F["bias"]] + oc]
        d2 = dY.reshape(m, oc)
        k.dense_backward(None if dX is None else dX.reshape(m, fan_in), dW, db, d2, d2,
                         xin.reshape(m, fan_in), W, Y.reshape(m, oc), r[F["act"]],
                         s[spec.S["slope"]])
    elif op == Op.CONV2D:
        kh, kw, c, oc = r[F["kh"]], r[F["kw"]], r[F["c"]], r[F["oc"]]
        n_w = kh * kw * c * oc
        W = P[r[F["param"]]:r[F["param"]] + n_w].reshape(kh, kw, c, oc)
        dW = G[r[F["param"]]:r[F["param"]] + n_w].reshape(kh, kw, c, oc)
        db = None if r[F["bias"]] < 0 else G[r[F["bias"]]:r[F["bias"]] + oc]
        K = kh * kw * c
        cols = ws[r[F["aux"]]:r[F["aux"]] + osz // oc * K].reshape(osz // oc, K)
        d4 = dY.reshape(oshape)
        k.conv2d_backward(None if dX is None else dX.reshape(ishape), dW, db, d4, d4,
                          xin.reshape(ishape), W, Y.reshape(oshape), cols,
                          (r[F["sh"]], r[F["sw"]]), (r[F["ph"]], r[F["pw"]]), r[F["act"]],
                          s[spec.S["slope"]])
    elif op in (Op.MAXPOOL2D, Op.AVGPOOL2D):
        if dX is None:
            return
        pool, stride = (r[F["kh"]], r[F["kw"]]), (r[F["sh"]], r[F["sw"]])
        if op == Op.MAXPOOL2D:
            am = e.iworkspace[r[F["iaux"]]:r[F["iaux"]] + osz].reshape(oshape)
            k.maxpool2d_backward(dX.reshape(ishape), dY.reshape(oshape), am, pool, stride)
        else:
            k.avgpool2d_backward(dX.reshape(ishape), dY.reshape(oshape), pool, stride)
    elif op == Op.ACTIVATION:
        if dX is not None:
            k.activation_backward(dX, dY, Y, r[F["act"]], s[spec.S["slope"]])
    elif op == Op.SOFTMAX:
        if dX is not None:
            c = r[F["c"]]
            k.softmax_backward(dX.reshape(-1, c), dY.reshape(-1, c), Y.reshape(-1, c))
    elif op == Op.BATCHNORM:
        c = r[F["c"]]
        gamma = P[r[F["param"]]:r[F["param"]] + c]
        dgamma, dbeta = G[r[F["param"]]:r[F["param"]] + c], G[r[F["bias"]]:r[F["bias"]] + c]
        mean, invstd = ws[r[F["aux"]]:r[F["aux"]] + c], ws[r[F["aux"]] + c:r[F["aux"]] + 2 * c]
        # (dx is always given: the compiler gives a first layer a scratch one)
        k.batchnorm_backward(dX.reshape(-1, c), dgamma, dbeta, dY.reshape(-1, c),
                             xin.reshape(-1, c), gamma, mean, invstd)
    elif op == Op.DROPOUT:
        if dX is not None:
            k.dropout_backward(dX, dY, s[spec.S["p"]], r[F["seed"]], r[F["counter"]] + batch)
    elif op == Op.ADD:
        if r[F["daux"]] != -1:
            _copy_into(k, ws[r[F["daux"]]:r[F["daux"]] + osz], dY)
        if dX is not None and r[F["dx"]] != r[F["dy"]]:
            _copy_into(k, dX, dY)
    elif op == Op.RNN:
        _rnn.record_backward(k, e, r, xin, m)
    elif op == Op.FORK:
        if dX is not None:
            if r[F["dx"]] != r[F["dy"]]:
                _copy_into(k, dX, dY)
            k.axpy(dX, ws[r[F["daux"]]:r[F["daux"]] + osz], 1.0)
    else:
        raise ValueError(f"plan: unknown op {op}")


def run_model_epoch(k, epoch):
    """model_epoch written with the kernel implementations of `k` (a
    backend module, or a Backend's ``impls``) on a validated
    spec.ModelEpoch: the specification of the compiled versions, and the
    epoch of backends without one (cuda runs it on device arrays)."""
    e = epoch
    X, targets = e.X, e.targets
    if e.order is not None:  # the spec: the same epoch over the gathered rows
        X, targets = (k.asarray(k.to_numpy(a)[e.order], a.dtype) for a in (X, targets))
    n, bs, ws, F = X.shape[0], e.batch_size, e.workspace, spec.F
    plan = [[int(v) for v in rec] for rec in np.asarray(e.plan)]
    scal = [[float(v) for v in rec] for rec in np.asarray(e.plan_scalars)]
    pen = [(int(o), int(sz)) for o, sz in np.asarray(e.penalized).reshape(-1, 2)]
    ranges = ([(0, e.params.shape[0])] if e.trainable is None
              else [(int(o), int(sz)) for o, sz in np.asarray(e.trainable).reshape(-1, 2)])
    opt = spec.OPTIMIZERS[e.optimizer]
    update = getattr(k, e.optimizer)
    scalars = {name: getattr(e, name) for name in opt.scalars}
    step = e.step
    t_host = k.to_numpy(targets)
    n_out = e.out_size
    events = spec.hook_events(e.hook)  # (spec.HookEvent)
    grads_hook, batch_hook = spec.HookEvent.GRADS in events, spec.HookEvent.BATCH in events
    for i in range(e.n_batches):
        lo, hi = i * bs, min((i + 1) * bs, n)
        m = hi - lo
        xb, tb = X[lo:hi].reshape(-1), targets[lo:hi]
        inputs = []
        for r, s in zip(plan, scal):
            xin = xb if r[F["x"]] == -1 else ws[r[F["x"]]:r[F["x"]] + m * r[F["h"]] * r[F["w"]]
                                               * r[F["c"]]]
            inputs.append(xin)
            _record_forward(k, e, r, s, xin, m, i, xb)
        out = (xb if e.output == -1 else ws[e.output:e.output + m * n_out]).reshape(m, n_out)
        dout = ws[e.doutput:e.doutput + m * n_out].reshape(m, n_out)
        if e.loss == "softmax_xent":
            value = k.softmax_xent_forward(dout, out, tb)
        else:
            value = getattr(k, e.loss + "_forward")(out, tb.reshape(m, n_out))
        value *= e.loss_scale
        if e.l2:
            value += 0.5 * e.l2 / m * sum(k.sum_squares(e.params[o:o + sz]) for o, sz in pen)
        e.batch_losses[i] = value
        e.batch_correct[i] = count_correct(k.to_numpy(out), t_host[lo:hi].reshape(
            (m,) if e.loss == "softmax_xent" else (m, n_out)), e.loss)
        if not np.isfinite(value):
            return i + 1, step, scalars.get("mu_product", e.mu_product)
        if e.loss == "softmax_xent":
            k.softmax_xent_backward(dout, dout, tb)
        else:
            getattr(k, e.loss + "_backward")(dout, out, tb.reshape(m, n_out))
        if e.grad_scale != 1.0:
            k.scale(dout.reshape(-1), e.grad_scale)
        for j in range(len(plan) - 1, -1, -1):
            _record_backward(k, e, plan[j], scal[j], inputs[j], m, i)
        if e.l2:
            for o, sz in pen:
                k.axpy(e.grads[o:o + sz], e.params[o:o + sz], e.l2 / m)
        if grads_hook:  # (an exception stops the epoch before this batch's update)
            e.hook(spec.HookEvent.GRADS, i)
        if e.clip_value > 0.0:
            for o, sz in ranges:
                k.clip(e.grads[o:o + sz], -e.clip_value, e.clip_value)
        if e.clip_norm > 0.0:
            norm = np.sqrt(sum(k.sum_squares(e.grads[o:o + sz]) for o, sz in ranges))
            coef = e.clip_norm / (norm + 1e-6)
            if coef < 1.0:
                for o, sz in ranges:
                    k.scale(e.grads[o:o + sz], coef)
        step += 1
        scalars = spec.advance(e.optimizer, scalars, step, e.hyper)
        for o, sz in ranges:  # frozen parameters and their state stay as they are
            update(e.params[o:o + sz], e.grads[o:o + sz],
                   *(None if st is None else st[o:o + sz] for st in e.states),
                   *([step] if opt.step else []), *e.hyper.values(), *scalars.values())
        if batch_hook and spec.hook_batch_due(i, e.n_batches, e.hook_every):
            e.hook(spec.HookEvent.BATCH, i)
    return e.n_batches, step, scalars.get("mu_product", e.mu_product)


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


def conv2d_forward(Y, X, W, b, cols, stride, padding, activation, negative_slope):
    """2-D convolution (cross-correlation, as torch's) of channels-last images.

    X (N, H, W, C), W (KH, KW, C, OC), b (OC,) or None, Y (N, OH, OW, OC)
    with OH = (H + 2 ph - KH) // sh + 1 (likewise OW); zero padding.
    Y = act(im2col(X) @ W.reshape(KH*KW*C, OC) + b): ``cols`` (N*OH*OW,
    KH*KW*C) is the caller's workspace, left holding im2col(X) for
    ``conv2d_backward``.  stride and padding are ints or (h, w) pairs.
    """
    n, oh, ow, oc = Y.shape
    kh, kw, c, _ = W.shape
    (sh, sw), (ph, pw) = stride, padding
    cols[...] = _im2col(X, kh, kw, sh, sw, ph, pw, oh, ow)
    Z = (cols.astype(np.float64) @ W.reshape(kh * kw * c, oc).astype(np.float64)).astype(Y.dtype)
    if b is not None:
        Z += b
    Y[...] = _act(Z, activation, negative_slope).reshape(n, oh, ow, oc)
    return Y


def conv2d_backward(dX, dW, db, dZ, dY, X, W, Y, cols, stride, padding, activation,
                    negative_slope):
    """Backward of ``conv2d_forward`` from its X, output Y and ``cols``.

    dZ = dY * act'(Y) (dZ may be dY); dW (KH, KW, C, OC) = cols.T @ dZ, with
    cols holding im2col(X) as conv2d_forward left it; db (OC,) = sums of dZ
    (None: skipped); dX (N, H, W, C) = col2im(dZ @ W.T) (None: skipped).
    ``cols`` is overwritten (it holds dZ @ W.T afterwards when dX is given).
    """
    n, h, w, c = X.shape
    _, oh, ow, oc = Y.shape
    kh, kw = W.shape[:2]
    (sh, sw), (ph, pw) = stride, padding
    dZ[...] = dY * _act_grad(Y, activation, negative_slope)
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


def maxpool2d_forward(Y, X, argmax, pool, stride):
    """Max pooling of channels-last images, no padding.

    X (N, H, W, C) -> Y (N, OH, OW, C); ``argmax`` (int32, like Y) receives
    the flat index h * W + w of each maximum in its image (the first in
    row-major window order on ties), for the backward.  stride defaults to
    the pool size; pool and stride are ints or (h, w) pairs.
    """
    n, h, w, c = X.shape
    _, oh, ow, _ = Y.shape
    (kh, kw), (sh, sw) = pool, stride
    win = _windows(X, kh, kw, sh, sw, oh, ow)
    idx = win.argmax(axis=3)
    Y[...] = np.take_along_axis(win, idx[:, :, :, None, :], axis=3)[:, :, :, 0, :]
    rows = np.arange(oh)[None, :, None, None] * sh + idx // kw
    colsn = np.arange(ow)[None, None, :, None] * sw + idx % kw
    argmax[...] = rows * w + colsn
    return Y


def maxpool2d_backward(dX, dY, argmax, pool, stride):
    """dX (N, H, W, C) = 0, then each dY added at its argmax (overlapping
    windows accumulate)."""
    n, h, w, c = dX.shape
    flat = np.zeros((n, h * w, c), np.float64)
    nn_, cc = np.arange(n)[:, None, None, None], np.arange(c)[None, None, None, :]
    np.add.at(flat, (np.broadcast_to(nn_, argmax.shape), argmax, np.broadcast_to(cc, argmax.shape)),
              dY)
    dX[...] = flat.reshape(n, h, w, c)


def avgpool2d_forward(Y, X, pool, stride):
    """Average pooling of channels-last images, no padding (see maxpool2d)."""
    _, oh, ow, _ = Y.shape
    (kh, kw), (sh, sw) = pool, stride
    Y[...] = _windows(X.astype(np.float64), kh, kw, sh, sw, oh, ow).mean(axis=3)
    return Y


def avgpool2d_backward(dX, dY, pool, stride):
    """dX (N, H, W, C): each dY / (KH*KW) added over its window."""
    n, h, w, c = dX.shape
    _, oh, ow, _ = dY.shape
    (kh, kw), (sh, sw) = pool, stride
    acc = np.zeros((n, h, w, c), np.float64)
    share = dY.astype(np.float64) / (kh * kw)
    for i in range(kh):
        for j in range(kw):
            acc[:, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw] += share
    dX[...] = acc


# ---- batch normalisation --------------------------------------------------------------

def batchnorm_forward(Y, X, gamma, beta, mean, invstd, running_mean, running_var, momentum,
                      eps):
    """Batch normalisation in training mode over the last axis of X (..., C).

    Statistics over all other axes (M values per channel): mean and invstd =
    1 / sqrt(var + eps) with the biased variance are written to ``mean`` and
    ``invstd`` (C,) for the backward; Y = (X - mean) * invstd * gamma + beta.
    The running statistics are updated as torch.nn.BatchNorm does:
    running = (1 - momentum) * running + momentum * batch, with the unbiased
    variance var * M / (M - 1).
    """
    c = X.shape[-1]
    rows = X.size // c
    x = X.reshape(rows, c).astype(np.float64)
    mu = x.mean(axis=0)
    var = x.var(axis=0)
    istd = 1.0 / np.sqrt(var + eps)
    mean[...], invstd[...] = mu, istd
    Y[...] = ((x - mu) * (istd * gamma) + beta).reshape(X.shape)
    running_mean[...] = (1 - momentum) * running_mean + momentum * mu
    running_var[...] = (1 - momentum) * running_var + momentum * var * rows / (rows - 1)
    return Y


def batchnorm_inference(Y, X, gamma, beta, running_mean, running_var, eps):
    """Batch normalisation in evaluation mode: the running statistics."""
    c = X.shape[-1]
    rows, rm, rv = X.size // c, running_mean, running_var
    scale_ = gamma / np.sqrt(rv.astype(np.float64) + eps)
    Y[...] = ((X.reshape(rows, c) - rm) * scale_ + beta).reshape(X.shape)
    return Y


def batchnorm_backward(dX, dgamma, dbeta, dY, X, gamma, mean, invstd):
    """Backward of ``batchnorm_forward`` (training mode) from X and the saved
    mean and invstd: with xhat = (X - mean) * invstd and M values per
    channel, dbeta = sum(dY), dgamma = sum(dY * xhat),
    dX = gamma * invstd / M * (M dY - dbeta - xhat * dgamma)."""
    c = X.shape[-1]
    rows = X.size // c
    x = X.reshape(rows, c).astype(np.float64)
    g = dY.reshape(rows, c).astype(np.float64)
    xhat = (x - mean) * invstd
    db_, dg_ = g.sum(axis=0), (g * xhat).sum(axis=0)
    dbeta[...], dgamma[...] = db_, dg_
    dX[...] = (gamma * invstd / rows * (rows * g - db_ - xhat * dg_)).reshape(X.shape)
