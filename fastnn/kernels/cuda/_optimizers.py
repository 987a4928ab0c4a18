"""The cuda backend's optimizer updates: one fused kernel per optimizer, so
each element's parameter and state are read and written once.

Step-dependent scalars (spec.bias_corrections, spec.nadam_mu) are computed on
the host in float64, as torch does in Python floats, and passed as float32,
so the arithmetic is float32 throughout, as in the reference.  An unused
optional state buffer is a 1-element dummy that is never touched.
"""

import math

import numpy as np
from numba import cuda, float32

from .. import spec
from ._device import maximum, sqrt
from ._launch import TPB, blocks, dummy, stages_outputs

_f = np.float32


def _run_update(kernel, params, grads, states, *scalars):
    bufs = [dummy() if s is None else s for s in states]
    kernel[blocks(params.shape[0]), TPB](params, grads, *bufs, *scalars)


@cuda.jit
def _sgd_kernel(params, grads, buf, lr, weight_decay, momentum, one_m_damp, first, nesterov):
    zero = float32(0.0)
    for i in range(cuda.grid(1), params.shape[0], cuda.gridsize(1)):
        g = l2_grad(grads[i], params[i], weight_decay)
        if momentum != zero:
            b = g if first else momentum * buf[i] + one_m_damp * g
            buf[i] = b
            g = g + momentum * b if nesterov else b
        params[i] = params[i] - lr * g


@stages_outputs
def sgd(params, grads, momentum_buf, step, lr, momentum, dampening, nesterov, weight_decay):
    _run_update(_sgd_kernel, params, grads, [momentum_buf], _f(lr), _f(weight_decay),
                _f(momentum), _f(1 - dampening), step == 1, nesterov)


@cuda.jit(device=True)
def l2_grad(g, p, weight_decay):
    """torch's L2 weight decay: g + weight_decay * p, skipped at 0 (so a
    non-finite p does not leak into g then; spec, IEEE semantics 21)."""
    return g + weight_decay * p if weight_decay != float32(0.0) else g


@cuda.jit(device=True)
def _moments(m, v, i, g, beta1, one_m_b1, beta2, one_m_b2):
    """The Adam family's moments of element i after gradient g, stored and returned."""
    mi = beta1 * m[i] + one_m_b1 * g
    vi = beta2 * v[i] + one_m_b2 * g * g
    m[i] = mi
    v[i] = vi
    return mi, vi


@cuda.jit
def _adam_kernel(params, grads, m, v, decay, weight_decay, beta1, one_m_b1, beta2, one_m_b2,
                 step_size, sqrt_bc2, eps, decoupled):
    zero = float32(0.0)
    for i in range(cuda.grid(1), params.shape[0], cuda.gridsize(1)):
        p = params[i]
        g = grads[i]
        if decoupled:
            p = p * decay
        elif weight_decay != zero:
            g = g + weight_decay * p
        mi, vi = _moments(m, v, i, g, beta1, one_m_b1, beta2, one_m_b2)
        params[i] = p - step_size * mi / (math.sqrt(vi) / sqrt_bc2 + eps)


def _adam(params, grads, m, v, step, lr, beta1, beta2, eps, weight_decay, decoupled):
    bc1, bc2 = spec.bias_corrections(step, beta1, beta2)
    _run_update(_adam_kernel, params, grads, [m, v], _f(1 - lr * weight_decay),
                _f(weight_decay), _f(beta1), _f(1 - beta1), _f(beta2), _f(1 - beta2),
                _f(lr / bc1), _f(math.sqrt(bc2)), _f(eps), decoupled)


@stages_outputs
def adam(params, grads, m, v, step, lr, beta1, beta2, eps, weight_decay):
    _adam(params, grads, m, v, step, lr, beta1, beta2, eps, weight_decay, False)


@stages_outputs
def adamw(params, grads, m, v, step, lr, beta1, beta2, eps, weight_decay):
    _adam(params, grads, m, v, step, lr, beta1, beta2, eps, weight_decay, True)


@cuda.jit
def _rmsprop_kernel(params, grads, square_avg, buf, grad_avg, lr, alpha, one_m_alpha, eps,
                    weight_decay, momentum, centered):
    zero = float32(0.0)
    for i in range(cuda.grid(1), params.shape[0], cuda.gridsize(1)):
        p = params[i]
        g = l2_grad(grads[i], p, weight_decay)
        sq = alpha * square_avg[i] + one_m_alpha * g * g
        square_avg[i] = sq
        if centered:
            ga = alpha * grad_avg[i] + one_m_alpha * g
            grad_avg[i] = ga
            avg = sqrt(sq - ga * ga) + eps  # a negative variance: NaN, not an error
        else:
            avg = math.sqrt(sq) + eps
        if momentum > zero:
            b = momentum * buf[i] + g / avg
            buf[i] = b
            params[i] = p - lr * b
        else:
            params[i] = p - lr * g / avg


@stages_outputs
def rmsprop(params, grads, square_avg, momentum_buf, grad_avg, lr, alpha, eps, weight_decay,
            momentum, centered):
    _run_update(_rmsprop_kernel, params, grads, [square_avg, momentum_buf, grad_avg], _f(lr),
                _f(alpha), _f(1 - alpha), _f(eps), _f(weight_decay), _f(momentum), centered)


@cuda.jit
def _adagrad_kernel(params, grads, sum_sq, clr, weight_decay, eps):
    for i in range(cuda.grid(1), params.shape[0], cuda.gridsize(1)):
        p = params[i]
        g = l2_grad(grads[i], p, weight_decay)
        s = sum_sq[i] + g * g
        sum_sq[i] = s
        params[i] = p - clr * g / (math.sqrt(s) + eps)


@stages_outputs
def adagrad(params, grads, sum_sq, step, lr, lr_decay, weight_decay, eps):
    clr = lr / (1 + (step - 1) * lr_decay)
    _run_update(_adagrad_kernel, params, grads, [sum_sq], _f(clr), _f(weight_decay), _f(eps))


@cuda.jit
def _nadam_kernel(params, grads, m, v, weight_decay, beta1, one_m_b1, beta2, one_m_b2, bc2,
                  eps, coef_g, coef_m):
    for i in range(cuda.grid(1), params.shape[0], cuda.gridsize(1)):
        p = params[i]
        g = l2_grad(grads[i], p, weight_decay)
        mi, vi = _moments(m, v, i, g, beta1, one_m_b1, beta2, one_m_b2)
        denom = math.sqrt(vi / bc2) + eps
        p = p - coef_g * g / denom
        params[i] = p - coef_m * mi / denom


@stages_outputs
def nadam(params, grads, m, v, step, lr, beta1, beta2, eps, weight_decay, momentum_decay,
          mu_product):
    mu = spec.nadam_mu(step, beta1, momentum_decay)
    mu_next = spec.nadam_mu(step + 1, beta1, momentum_decay)
    _, bc2 = spec.bias_corrections(step, beta1, beta2)
    _run_update(_nadam_kernel, params, grads, [m, v], _f(weight_decay), _f(beta1),
                _f(1 - beta1), _f(beta2), _f(1 - beta2), _f(bc2), _f(eps),
                _f(lr * (1 - mu) / (1 - mu_product)),
                _f(lr * mu_next / (1 - mu_product * mu_next)))


@cuda.jit
def _adamax_kernel(params, grads, m, u, weight_decay, beta1, one_m_b1, beta2, eps, step_size):
    for i in range(cuda.grid(1), params.shape[0], cuda.gridsize(1)):
        p = params[i]
        g = l2_grad(grads[i], p, weight_decay)
        mi = beta1 * m[i] + one_m_b1 * g
        ui = maximum(beta2 * u[i], abs(g) + eps)
        m[i] = mi
        u[i] = ui
        params[i] = p - step_size * mi / ui


@stages_outputs
def adamax(params, grads, m, u, step, lr, beta1, beta2, eps, weight_decay):
    bc1, _ = spec.bias_corrections(step, beta1, beta2)
    _run_update(_adamax_kernel, params, grads, [m, u], _f(weight_decay), _f(beta1),
                _f(1 - beta1), _f(beta2), _f(eps), _f(lr / bc1))


@cuda.jit
def _radam_kernel(params, grads, m, v, weight_decay, beta1, one_m_b1, beta2, one_m_b2, eps,
                  step_size, adaptive):
    for i in range(cuda.grid(1), params.shape[0], cuda.gridsize(1)):
        p = params[i]
        g = l2_grad(grads[i], p, weight_decay)
        mi, vi = _moments(m, v, i, g, beta1, one_m_b1, beta2, one_m_b2)
        params[i] = p - step_size * (mi / (math.sqrt(vi) + eps) if adaptive else mi)


@stages_outputs
def radam(params, grads, m, v, step, lr, beta1, beta2, eps, weight_decay):
    bc1, bc2 = spec.bias_corrections(step, beta1, beta2)
    rect = spec.radam_rectification(step, beta2)
    step_size = lr / bc1 * rect * math.sqrt(bc2) if rect > 0 else lr / bc1
    _run_update(_radam_kernel, params, grads, [m, v], _f(weight_decay), _f(beta1),
                _f(1 - beta1), _f(beta2), _f(1 - beta2), _f(eps), _f(step_size), rect > 0)
