"""Optimizer updates of the numba backend: one fused pass each over the flat
buffers, shared by the per-call kernels and the fused epoch (``_epoch``).

Equations: see the reference docstrings (torch.optim).  The per-step
scalars (step sizes, decay factors) are derived in float64 inside each
update from the step's bias corrections and NAdam's mu, which the caller
computes: the per-call kernels with spec.bias_corrections and spec.nadam_mu,
the fused epoch with its jitted copies of them.

The per-element math is float32, as the c backend's (the scalars are rounded
to float32 once per step; in float64 the divisions and square roots ran at
half the lanes).  Each update is a serial "span" loop compiled with
error_model="numpy" over slices starting at 0: with Python's error model a
division carries a zero check, and with indices from `lo` a wraparound
check, and either stops LLVM from vectorising the loop.  Adam over 235k
parameters, 1 thread: 234 -> 99 us (c: 97 us).  An update runs on the
calling thread below 2 * _CHUNK elements (a prange launch costs more than it
saves there), else in spans of at least _CHUNK dealt out by prange.

Numba's disk cache (cache=True) stores a function whose arguments are
arrays, scalars and tuples of them, which is why each update repeats that
dispatch: one generic dispatcher taking the span function as an argument (a
first-class function type) is not cached on disk and was compiled again in
every new process.
"""

import math

import numpy as np
from numba import njit, prange

from .. import spec
from ._common import _EXACT, _NO_BUF, _flush_denormals, _setcsr, _spans


@njit(cache=True, fastmath=_EXACT, error_model="numpy", inline="always")
def _l2_grad(g, p, wd):
    """grad + L2 weight decay; skipped when wd == 0, so a non-finite p does
    not leak into g (as the reference and torch)."""
    return g + wd * p if wd != 0.0 else g


# ---- sgd -------------------------------------------------------------------------

@njit(cache=True, fastmath=_EXACT, error_model="numpy")
def _sgd_span(p, g, buf, lo, hi, k, nesterov, first):
    lr, mom, damp1, wd = k
    p, g, buf = p[lo:hi], g[lo:hi], buf[lo:hi]
    csr = _flush_denormals()  # FTZ + DAZ on this thread, as the c backend
    for i in range(p.size):
        d = _l2_grad(g[i], p[i], wd)
        if mom != 0.0:
            b = d if first else mom * buf[i] + damp1 * d
            buf[i] = b
            d = d + mom * b if nesterov else b
        p[i] -= lr * d
    _setcsr(csr)


@njit(cache=True)
def _sgd_k(lr, momentum, dampening, weight_decay):
    """_sgd_span's float32 scalars."""
    f = np.float32
    return f(lr), f(momentum), f(1.0 - dampening), f(weight_decay)


@njit(cache=True, parallel=True)
def _sgd(p, g, buf, lr, momentum, dampening, nesterov, weight_decay, first):
    n, s = p.size, _spans(p.size)
    k = _sgd_k(lr, momentum, dampening, weight_decay)
    if s == 1:
        _sgd_span(p, g, buf, 0, n, k, nesterov, first)
        return
    for c in prange(s):
        _sgd_span(p, g, buf, c * n // s, (c + 1) * n // s, k, nesterov, first)


def sgd(params, grads, momentum_buf, step, lr, momentum, dampening, nesterov, weight_decay):
    _sgd(params, grads, _NO_BUF if momentum_buf is None else momentum_buf, lr, momentum,
         dampening, nesterov, weight_decay, step == 1)


# ---- adam, adamw ---------------------------------------------------------------

@njit(cache=True, fastmath=_EXACT, error_model="numpy")
def _adam_span(p, g, m, v, lo, hi, k):
    decay, l2, b1, c1, b2, c2, inv_sqrt_bc2, eps, step_size = k
    p, g, m, v = p[lo:hi], g[lo:hi], m[lo:hi], v[lo:hi]
    csr = _flush_denormals()  # FTZ + DAZ on this thread, as the c backend
    for i in range(p.size):
        w = p[i] * decay
        d = _l2_grad(g[i], w, l2)
        mi = b1 * m[i] + c1 * d
        vi = b2 * v[i] + c2 * (d * d)
        m[i] = mi
        v[i] = vi
        # torch: denom = sqrt(v) / sqrt(bc2) + eps;  p -= (lr / bc1) * m / denom
        p[i] = w - step_size * (mi / (math.sqrt(vi) * inv_sqrt_bc2 + eps))
    _setcsr(csr)


@njit(cache=True)
def _adam_k(lr, beta1, beta2, eps, weight_decay, decoupled, bc1, bc2):
    """_adam_span's float32 scalars."""
    decay, l2 = (1.0 - lr * weight_decay, 0.0) if decoupled else (1.0, weight_decay)
    f = np.float32
    return (f(decay), f(l2), f(beta1), f(1.0 - beta1), f(beta2), f(1.0 - beta2),
            f(1.0 / math.sqrt(bc2)), f(eps), f(lr / bc1))


@njit(cache=True, parallel=True)
def _adam(p, g, m, v, lr, beta1, beta2, eps, weight_decay, decoupled, bc1, bc2):
    """Adam (L2 weight decay) or, if decoupled, AdamW, with the bias
    corrections bc1 = 1 - beta1^t and bc2 = 1 - beta2^t of step t."""
    n, s = p.size, _spans(p.size)
    k = _adam_k(lr, beta1, beta2, eps, weight_decay, decoupled, bc1, bc2)
    if s == 1:
        _adam_span(p, g, m, v, 0, n, k)
        return
    for c in prange(s):
        _adam_span(p, g, m, v, c * n // s, (c + 1) * n // s, k)


def adam(params, grads, m, v, step, lr, beta1, beta2, eps, weight_decay):
    _adam(params, grads, m, v, lr, beta1, beta2, eps, weight_decay, False,
          *spec.bias_corrections(step, beta1, beta2))


def adamw(params, grads, m, v, step, lr, beta1, beta2, eps, weight_decay):
    _adam(params, grads, m, v, lr, beta1, beta2, eps, weight_decay, True,
          *spec.bias_corrections(step, beta1, beta2))


# ---- rmsprop ---------------------------------------------------------------------

# no contraction: an FMA would compute sq - ga * ga without rounding ga * ga
# to inf, where the formula's inf - inf is NaN (spec, IEEE semantics 4)
@njit(cache=True, error_model="numpy")
def _rmsprop_span(p, g, sq, buf, ga, lo, hi, k, centered):
    lr, a, c, eps, wd, mom = k
    p, g, sq, buf, ga = p[lo:hi], g[lo:hi], sq[lo:hi], buf[lo:hi], ga[lo:hi]
    csr = _flush_denormals()  # FTZ + DAZ on this thread, as the c backend
    for i in range(p.size):
        d = _l2_grad(g[i], p[i], wd)
        s = a * sq[i] + c * (d * d)
        sq[i] = s
        if centered:
            avg = a * ga[i] + c * d
            ga[i] = avg
            s -= avg * avg
        step = d / (math.sqrt(s) + eps)
        if mom > 0.0:
            step += mom * buf[i]
            buf[i] = step
        p[i] -= lr * step
    _setcsr(csr)


@njit(cache=True)
def _rmsprop_k(lr, alpha, eps, weight_decay, momentum):
    """_rmsprop_span's float32 scalars."""
    f = np.float32
    return f(lr), f(alpha), f(1.0 - alpha), f(eps), f(weight_decay), f(momentum)


@njit(cache=True, parallel=True)
def _rmsprop(p, g, sq, buf, ga, lr, alpha, eps, weight_decay, momentum, centered):
    n, s = p.size, _spans(p.size)
    k = _rmsprop_k(lr, alpha, eps, weight_decay, momentum)
    if s == 1:
        _rmsprop_span(p, g, sq, buf, ga, 0, n, k, centered)
        return
    for c in prange(s):
        _rmsprop_span(p, g, sq, buf, ga, c * n // s, (c + 1) * n // s, k, centered)


def rmsprop(params, grads, square_avg, momentum_buf, grad_avg, lr, alpha, eps, weight_decay,
            momentum, centered):
    _rmsprop(params, grads, square_avg, _NO_BUF if momentum_buf is None else momentum_buf,
             _NO_BUF if grad_avg is None else grad_avg, lr, alpha, eps, weight_decay, momentum,
             centered)


# ---- adagrad ---------------------------------------------------------------------

@njit(cache=True, fastmath=_EXACT, error_model="numpy")
def _adagrad_span(p, g, sum_sq, lo, hi, k):
    clr, wd, eps = k
    p, g, sum_sq = p[lo:hi], g[lo:hi], sum_sq[lo:hi]
    csr = _flush_denormals()  # FTZ + DAZ on this thread, as the c backend
    for i in range(p.size):
        d = _l2_grad(g[i], p[i], wd)
        s = sum_sq[i] + d * d
        sum_sq[i] = s
        p[i] -= clr * (d / (math.sqrt(s) + eps))
    _setcsr(csr)


@njit(cache=True)
def _adagrad_k(step, lr, lr_decay, weight_decay, eps):
    """_adagrad_span's float32 scalars."""
    clr = lr / (1.0 + (step - 1) * lr_decay)  # the decayed learning rate of this step
    f = np.float32
    return f(clr), f(weight_decay), f(eps)


@njit(cache=True, parallel=True)
def _adagrad(p, g, sum_sq, step, lr, lr_decay, weight_decay, eps):
    n, s = p.size, _spans(p.size)
    k = _adagrad_k(step, lr, lr_decay, weight_decay, eps)
    if s == 1:
        _adagrad_span(p, g, sum_sq, 0, n, k)
        return
    for c in prange(s):
        _adagrad_span(p, g, sum_sq, c * n // s, (c + 1) * n // s, k)


def adagrad(params, grads, sum_sq, step, lr, lr_decay, weight_decay, eps):
    _adagrad(params, grads, sum_sq, step, lr, lr_decay, weight_decay, eps)


# ---- nadam -----------------------------------------------------------------------

@njit(cache=True, fastmath=_EXACT, error_model="numpy")
def _nadam_span(p, g, m, v, lo, hi, k):
    wd, b1, c1, b2, c2, inv_bc2, eps, c_grad, c_avg = k
    p, g, m, v = p[lo:hi], g[lo:hi], m[lo:hi], v[lo:hi]
    csr = _flush_denormals()  # FTZ + DAZ on this thread, as the c backend
    for i in range(p.size):
        d = _l2_grad(g[i], p[i], wd)
        mi = b1 * m[i] + c1 * d
        vi = b2 * v[i] + c2 * (d * d)
        m[i] = mi
        v[i] = vi
        # one division for torch's two addcdiv_ (as the c backend)
        inv_denom = np.float32(1.0) / (math.sqrt(vi * inv_bc2) + eps)
        w = p[i] - c_grad * (d * inv_denom)
        p[i] = w - c_avg * (mi * inv_denom)
    _setcsr(csr)


@njit(cache=True)
def _nadam_k(lr, beta1, beta2, eps, weight_decay, mu, mu_next, mu_product, bc2):
    """_nadam_span's float32 scalars."""
    c_grad = lr * (1.0 - mu) / (1.0 - mu_product)
    c_avg = lr * mu_next / (1.0 - mu_product * mu_next)
    f = np.float32
    return (f(weight_decay), f(beta1), f(1.0 - beta1), f(beta2), f(1.0 - beta2), f(1.0 / bc2),
            f(eps), f(c_grad), f(c_avg))


@njit(cache=True, parallel=True)
def _nadam(p, g, m, v, lr, beta1, beta2, eps, weight_decay, mu, mu_next, mu_product, bc2):
    """NAdam step t from mu = mu_t, mu_next = mu_(t+1), mu_product =
    mu_1 ... mu_t and bc2 = 1 - beta2^t."""
    n, s = p.size, _spans(p.size)
    k = _nadam_k(lr, beta1, beta2, eps, weight_decay, mu, mu_next, mu_product, bc2)
    if s == 1:
        _nadam_span(p, g, m, v, 0, n, k)
        return
    for c in prange(s):
        _nadam_span(p, g, m, v, c * n // s, (c + 1) * n // s, k)


def nadam(params, grads, m, v, step, lr, beta1, beta2, eps, weight_decay, momentum_decay,
          mu_product):
    _nadam(params, grads, m, v, lr, beta1, beta2, eps, weight_decay,
           spec.nadam_mu(step, beta1, momentum_decay),
           spec.nadam_mu(step + 1, beta1, momentum_decay), mu_product,
           spec.bias_corrections(step, beta1, beta2)[1])


# ---- adamax ----------------------------------------------------------------------

@njit(cache=True, fastmath=_EXACT, error_model="numpy")
def _adamax_span(p, g, m, u, lo, hi, k):
    wd, b1, c1, b2, eps, step_size = k
    p, g, m, u = p[lo:hi], g[lo:hi], m[lo:hi], u[lo:hi]
    csr = _flush_denormals()  # FTZ + DAZ on this thread, as the c backend
    for i in range(p.size):
        d = _l2_grad(g[i], p[i], wd)
        mi = b1 * m[i] + c1 * d
        decayed, fresh = b2 * u[i], abs(d) + eps
        ui = decayed if decayed > fresh or decayed != decayed else fresh  # NaN wins
        m[i] = mi
        u[i] = ui
        p[i] -= step_size * (mi / ui)
    _setcsr(csr)


@njit(cache=True)
def _adamax_k(lr, beta1, beta2, eps, weight_decay, bc1):
    """_adamax_span's float32 scalars."""
    f = np.float32
    return f(weight_decay), f(beta1), f(1.0 - beta1), f(beta2), f(eps), f(lr / bc1)


@njit(cache=True, parallel=True)
def _adamax(p, g, m, u, lr, beta1, beta2, eps, weight_decay, bc1):
    """Adamax with the bias correction bc1 = 1 - beta1^t of step t."""
    n, s = p.size, _spans(p.size)
    k = _adamax_k(lr, beta1, beta2, eps, weight_decay, bc1)
    if s == 1:
        _adamax_span(p, g, m, u, 0, n, k)
        return
    for c in prange(s):
        _adamax_span(p, g, m, u, c * n // s, (c + 1) * n // s, k)


def adamax(params, grads, m, u, step, lr, beta1, beta2, eps, weight_decay):
    _adamax(params, grads, m, u, lr, beta1, beta2, eps, weight_decay,
            spec.bias_corrections(step, beta1, beta2)[0])


# ---- radam -----------------------------------------------------------------------

@njit(cache=True, fastmath=_EXACT, error_model="numpy")
def _radam_span(p, g, m, v, lo, hi, k, adaptive):
    wd, b1, c1, b2, c2, eps, step_size = k
    p, g, m, v = p[lo:hi], g[lo:hi], m[lo:hi], v[lo:hi]
    csr = _flush_denormals()  # FTZ + DAZ on this thread, as the c backend
    for i in range(p.size):
        d = _l2_grad(g[i], p[i], wd)
        mi = b1 * m[i] + c1 * d
        vi = b2 * v[i] + c2 * (d * d)
        m[i] = mi
        v[i] = vi
        p[i] -= step_size * (mi / (math.sqrt(vi) + eps) if adaptive else mi)
    _setcsr(csr)


@njit(cache=True)
def _radam_k(lr, beta1, beta2, eps, weight_decay, bc1, bc2, rect):
    """_radam_span's float32 scalars (rect > 0: the adaptive step)."""
    step_size = lr / bc1 * rect * math.sqrt(bc2) if rect > 0.0 else lr / bc1
    f = np.float32
    return (f(weight_decay), f(beta1), f(1.0 - beta1), f(beta2), f(1.0 - beta2), f(eps),
            f(step_size))


@njit(cache=True, parallel=True)
def _radam(p, g, m, v, lr, beta1, beta2, eps, weight_decay, bc1, bc2, rect):
    """RAdam step t from bc1, bc2 = 1 - beta^t and rect = r_t (0: not yet
    rectified, a momentum step)."""
    adaptive = rect > 0.0
    n, s = p.size, _spans(p.size)
    k = _radam_k(lr, beta1, beta2, eps, weight_decay, bc1, bc2, rect)
    if s == 1:
        _radam_span(p, g, m, v, 0, n, k, adaptive)
        return
    for c in prange(s):
        _radam_span(p, g, m, v, c * n // s, (c + 1) * n // s, k, adaptive)


def radam(params, grads, m, v, step, lr, beta1, beta2, eps, weight_decay):
    _radam(params, grads, m, v, lr, beta1, beta2, eps, weight_decay,
           *spec.bias_corrections(step, beta1, beta2), spec.radam_rectification(step, beta2))
