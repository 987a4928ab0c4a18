"""dense_stack_epoch on the numba backend: one ``@njit`` loop over the
mini-batches, made of the same kernels as the per-call functions (the same
rounding points, so the trajectory is the per-batch one).

The workspace is laid out as spec.epoch_layout(layers, batch_size, 1) says
(every backend's layout; the offsets are computed in Python and passed in).
The kernel's own scratch (packing buffers, column sums) is allocated once
per epoch, nothing per batch.
"""

import math

import numpy as np
from numba import njit

from .. import spec
from ._common import _NO_BUF
from ._elementwise import _IDENTITY, _axpy, _scale, _sum_squares
from ._gemm import _dense_dz, _gemm_ws, _pack_floats
from ._losses import (_BCE, _MAE, _MSE, _SOFTMAX_XENT, _pointwise_loss,
                      _pointwise_loss_backward, _softmax_xent_backward, _softmax_xent_forward)
from ._optimizers import _adagrad, _adam, _adamax, _nadam, _radam, _rmsprop, _sgd

# Optimizer codes as module globals: numba compiles them in as constants.
_SGD = spec.OPTIMIZERS["sgd"].code
_ADAM = spec.OPTIMIZERS["adam"].code
_ADAMW = spec.OPTIMIZERS["adamw"].code
_RMSPROP = spec.OPTIMIZERS["rmsprop"].code
_ADAGRAD = spec.OPTIMIZERS["adagrad"].code
_NADAM = spec.OPTIMIZERS["nadam"].code
_ADAMAX = spec.OPTIMIZERS["adamax"].code
_RADAM = spec.OPTIMIZERS["radam"].code

# The optimizer's hyperparameters go to the kernel as one tuple of floats in
# this order (0 for those of other optimizers; flags as 0 / 1).
_HYPER = ("lr", "momentum", "dampening", "nesterov", "weight_decay", "beta1", "beta2", "eps",
          "alpha", "centered", "lr_decay", "momentum_decay")
assert set(_HYPER) == {h for o in spec.OPTIMIZERS.values() for h in o.hyper_names}

_NO_LABELS = np.empty(0, dtype=np.int32)
_NO_TARGETS = np.empty((0, 1), dtype=np.float32)
_NO_ORDER = np.empty(0, dtype=np.int64)


# Jitted copies of spec.bias_corrections, spec.nadam_mu and
# spec.radam_rectification for the compiled epoch (the per-call updates take the spec's, computed in Python).  Powers
# take a float exponent so that they call libm's pow, as Python's float **
# int does: the same bits either way.

@njit(cache=True)
def _bias_corrections(step, beta1, beta2):
    return 1.0 - beta1 ** np.float64(step), 1.0 - beta2 ** np.float64(step)


@njit(cache=True)
def _nadam_mu(step, beta1, momentum_decay):
    return beta1 * (1.0 - 0.5 * 0.96 ** (np.float64(step) * momentum_decay))


@njit(cache=True)
def _radam_rectification(step, beta2):
    rho_inf = 2.0 / (1.0 - beta2) - 1.0
    b2t = beta2 ** np.float64(step)
    rho_t = rho_inf - 2.0 * step * b2t / (1.0 - b2t)
    if rho_t <= 5.0:
        return 0.0
    return ((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t)) ** 0.5


@njit(cache=True)
def _optimizer_step(optimizer, p, g, s0, s1, s2, hyper, step, mu_product):
    """Step `step` of the optimizer of code `optimizer` with state buffers
    s0, s1, s2 (as its kernel takes them; empty where unused); returns
    NAdam's mu_product after it."""
    (lr, momentum, dampening, nesterov, wd, beta1, beta2, eps, alpha, centered, lr_decay,
     momentum_decay) = hyper
    if optimizer == _SGD:
        _sgd(p, g, s0, lr, momentum, dampening, nesterov != 0.0, wd, step == 1)
    elif optimizer == _ADAM or optimizer == _ADAMW:
        bc1, bc2 = _bias_corrections(step, beta1, beta2)
        _adam(p, g, s0, s1, lr, beta1, beta2, eps, wd, optimizer == _ADAMW, bc1, bc2)
    elif optimizer == _RMSPROP:
        _rmsprop(p, g, s0, s1, s2, lr, alpha, eps, wd, momentum, centered != 0.0)
    elif optimizer == _ADAGRAD:
        _adagrad(p, g, s0, step, lr, lr_decay, wd, eps)
    elif optimizer == _NADAM:
        mu = _nadam_mu(step, beta1, momentum_decay)
        mu_product *= mu
        _nadam(p, g, s0, s1, lr, beta1, beta2, eps, wd, mu,
               _nadam_mu(step + 1, beta1, momentum_decay), mu_product,
               _bias_corrections(step, beta1, beta2)[1])
    elif optimizer == _ADAMAX:
        _adamax(p, g, s0, s1, lr, beta1, beta2, eps, wd, _bias_corrections(step, beta1, beta2)[0])
    elif optimizer == _RADAM:
        bc1, bc2 = _bias_corrections(step, beta1, beta2)
        _radam(p, g, s0, s1, lr, beta1, beta2, eps, wd, bc1, bc2,
               _radam_rectification(step, beta2))
    else:
        raise ValueError("optimizer: unknown code")  # the front validated it
    return mu_product


@njit(cache=True)
def _count_correct(out, labels, t, loss):
    """reference.count_correct for a batch out (m, c) against labels (m,) or
    flat targets t (m * c)."""
    m, c = out.shape
    if loss == _MSE or loss == _MAE:
        return 0
    correct = 0
    for i in range(m):
        if loss == _BCE and c == 1:
            correct += (out[i, 0] > 0) == (t[i] > 0.5)
        elif loss == _SOFTMAX_XENT:
            correct += np.argmax(out[i]) == labels[i]
        else:
            correct += np.argmax(out[i]) == np.argmax(t[i * c:(i + 1) * c])
    return correct


@njit(cache=True)
def _gather_rows(xg, tg, lg, x_flat, t_flat, labels, order, lo, m, in_size, out_size,
                 is_labels):
    """Rows order[lo:lo + m] of X into xg, and their labels into lg or
    targets into tg (a batch of a shuffled epoch, without a shuffled X)."""
    for i in range(m):
        row = order[lo + i]
        xg[i * in_size:(i + 1) * in_size] = x_flat[row * in_size:(row + 1) * in_size]
        if is_labels:
            lg[i] = labels[row]
        else:
            tg[i * out_size:(i + 1) * out_size] = t_flat[row * out_size:(row + 1) * out_size]


@njit(cache=True)
def _loss_value(out, dout, lb, tb, loss, is_labels, loss_scale):
    """A batch's loss times loss_scale (softmax cross-entropy also leaves
    its probabilities in dout); the l2 term is the caller's."""
    if is_labels:
        value = _softmax_xent_forward(dout, out, lb)
    else:
        value = _pointwise_loss(loss, out.reshape(-1), tb)
    return value * loss_scale


@njit(cache=True)
def _loss_gradient(out, dout, lb, tb, loss, is_labels, grad_scale):
    """The loss gradient (the kernels average over the batch's rows) into
    dout, times grad_scale."""
    if is_labels:
        _softmax_xent_backward(dout, dout, lb)
    else:
        _pointwise_loss_backward(loss, dout.reshape(-1), out.reshape(-1), tb)
    if grad_scale != 1.0:
        _scale(dout.reshape(-1), np.float32(grad_scale))


@njit(cache=True)
def _dense_stack_epoch(params, grads, s0, s1, s2, ws, X, labels, T, order, batch_losses,
                       batch_correct, layers, slopes, loss, bs, xb_off, tb_off, lb_off,
                       optimizer, hyper, step, mu_product, l2, loss_scale, grad_scale):
    """reference.dense_stack_epoch over this backend's kernels, in its order.
    layers: int64 rows (fan_in, fan_out, w_offset, b_offset, activation,
    offset of Y_l, offset of D_l), slopes their negative slopes; xb_off,
    tb_off, lb_off: the gathered batch's X, T and labels in ws; labels (for
    softmax_xent) or T (else) is empty; order: the samples' rows of X
    (empty: X in its order).  Returns (n_done, step, mu_product)."""
    n_layers = layers.shape[0]
    n, n_in, c = X.shape[0], layers[0, 0], layers[n_layers - 1, 1]
    is_labels = loss == _SOFTMAX_XENT
    gather = order.shape[0] > 0
    if gather:
        n = order.shape[0]
    # Everything that is not a view is allocated here, once per epoch.
    widest_out, ap_size, bp_size = 0, 0, 0
    for l in range(n_layers):
        fi, fo = layers[l, 0], layers[l, 1]
        widest_out = max(widest_out, fo)
        # panels of the layer's three gemms: Y = X W, dW = X^T dZ, dX = dZ W^T
        for gm, gn, gk in ((bs, fo, fi), (fi, fo, bs), (bs, fi, fo)):
            a_floats, b_floats = _pack_floats(gm, gn, gk)
            ap_size, bp_size = max(ap_size, a_floats), max(bp_size, b_floats)
    ap = np.empty(ap_size, dtype=np.float32)
    bp = np.empty(bp_size, dtype=np.float32)
    sums = np.empty(widest_out, dtype=np.float64)
    no_buf = params[:0]  # not _NO_BUF: a global array is a read-only constant in jitted code
    x_flat, t_flat = X.reshape(-1), T.reshape(-1)
    xg, tg = ws[xb_off:xb_off + bs * n_in], ws[tb_off:tb_off + bs * c]
    lg = ws[lb_off:lb_off + bs].view(np.int32)
    n_batches = (n + bs - 1) // bs
    for bi in range(n_batches):
        lo = bi * bs
        m = min(bs, n - lo)
        if gather:
            _gather_rows(xg, tg, lg, x_flat, t_flat, labels, order, lo, m, n_in, c, is_labels)
            xb = xg[:m * n_in].reshape((m, n_in))
            lb, tb = (lg[:m], tg[:0]) if is_labels else (lg[:0], tg[:m * c])
        else:
            xb = x_flat[lo * n_in:(lo + m) * n_in].reshape((m, n_in))
            lb, tb = labels[lo:lo + m], t_flat[lo * c:(lo + m) * c]  # the unused one is empty

        inp = xb
        for l in range(n_layers):
            fi, fo, w, b = layers[l, 0], layers[l, 1], layers[l, 2], layers[l, 3]
            y = ws[layers[l, 5]:layers[l, 5] + m * fo].reshape((m, fo))
            _gemm_ws(y, inp, params[w:w + fi * fo].reshape((fi, fo)), False, False, 1.0, 0.0,
                     params[b:b + fo] if b >= 0 else no_buf, layers[l, 4], slopes[l], ap, bp)
            inp = y
        out = inp
        d_last = layers[n_layers - 1, 6]
        dout = ws[d_last:d_last + m * c].reshape((m, c))

        value = _loss_value(out, dout, lb, tb, loss, is_labels, loss_scale)
        if l2 != 0.0:
            sq = 0.0
            for l in range(n_layers):
                w = layers[l, 2]
                sq += _sum_squares(params[w:w + layers[l, 0] * layers[l, 1]])
            value += 0.5 * l2 / m * sq
        batch_losses[bi] = value
        batch_correct[bi] = _count_correct(out, lb, tb, loss)
        if not math.isfinite(value):
            return bi + 1, step, mu_product
        _loss_gradient(out, dout, lb, tb, loss, is_labels, grad_scale)

        # backward: D_l becomes dZ in place, dX goes into D_(l-1)
        for l in range(n_layers - 1, -1, -1):
            fi, fo, w, b = layers[l, 0], layers[l, 1], layers[l, 2], layers[l, 3]
            y_off, d_off = layers[l, 5], layers[l, 6]
            dy = ws[d_off:d_off + m * fo].reshape((m, fo))
            x_l = ws[layers[l - 1, 5]:layers[l - 1, 5] + m * fi].reshape((m, fi)) if l > 0 else xb
            W, dW = params[w:w + fi * fo], grads[w:w + fi * fo]
            _dense_dz(dy, grads[b:b + fo] if b >= 0 else no_buf, dy,
                      ws[y_off:y_off + m * fo].reshape((m, fo)), layers[l, 4], slopes[l], sums)
            _gemm_ws(dW.reshape((fi, fo)), x_l, dy, True, False, 1.0, 0.0, no_buf, _IDENTITY,
                     0.0, ap, bp)
            if l > 0:
                d_in = layers[l - 1, 6]
                dx = ws[d_in:d_in + m * fi].reshape((m, fi))
                _gemm_ws(dx, dy, W.reshape((fi, fo)), False, True, 1.0, 0.0, no_buf, _IDENTITY,
                         0.0, ap, bp)
            if l2 != 0.0:
                _axpy(dW, W, np.float32(l2 / m))
        step += 1
        mu_product = _optimizer_step(optimizer, params, grads, s0, s1, s2, hyper, step,
                                     mu_product)
    return n_batches, step, mu_product


def dense_stack_epoch(epoch):
    layers, bs = epoch.layers, epoch.batch_size
    at = spec.epoch_layout(layers, bs, 1)
    table = np.array([(layer.fan_in, layer.fan_out, layer.w_offset, layer.b_offset,
                       layer.activation, y_off, d_off)
                      for layer, y_off, d_off in zip(layers, at["Y"], at["D"])], dtype=np.int64)
    slopes = np.array([layer.negative_slope for layer in layers], dtype=np.float64)
    hyper = tuple(float(epoch.hyper.get(name, 0.0)) for name in _HYPER)
    states = tuple(epoch.states) + (None,) * (3 - len(epoch.states))
    s0, s1, s2 = (_NO_BUF if s is None else s for s in states)
    is_labels = epoch.loss == "softmax_xent"
    done, step, mu_product = _dense_stack_epoch(
        epoch.params, epoch.grads, s0, s1, s2, epoch.workspace, epoch.X,
        epoch.targets if is_labels else _NO_LABELS, _NO_TARGETS if is_labels else epoch.targets,
        _NO_ORDER if epoch.order is None else epoch.order, epoch.batch_losses,
        epoch.batch_correct, table, slopes, spec.LOSS_CODES[epoch.loss], bs, at["Xb"],
        at["Tb"], at["Lb"], spec.OPTIMIZERS[epoch.optimizer].code, hyper, epoch.step,
        epoch.mu_product, epoch.l2, epoch.loss_scale, epoch.grad_scale)
    return int(done), int(step), float(mu_product)
