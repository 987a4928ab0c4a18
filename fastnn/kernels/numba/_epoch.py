"""The numba backend's compiled dense stack: dense_stack_epoch, and
model_epoch's plan when it is a chain of Dense records (``_plan``), run
as ``stack_batches`` -- one ``@njit`` loop over the mini-batches with two
parallel regions a batch (see the section's header below for the split),
made of the same kernels as the per-call functions (the same rounding
points, so the trajectory is the per-batch one, on any thread count).

The workspace is laid out as spec.epoch_layout(layers, batch_size, 1) says
(every backend's layout; the offsets are computed in Python and passed in),
or as the plan's records say.  The kernel's own scratch (each thread's
packing buffers and column sums) is allocated once per call, nothing per
batch.  Also here, shared with the interpreter: the optimizer step's
dispatch and the loss, gather and accuracy helpers.
"""

import math

import numba  # absolute import: the real numba, not this package
import numpy as np
from numba import njit, prange

from .. import spec
from ._common import _NO_BUF, _spans
from ._elementwise import _IDENTITY, _axpy_span, _grad_span, _scale, _sum_squares
from ._gemm import _column_sums, _gemm_rows, _pack_floats
from ._losses import (_BCE, _MAE, _MSE, _SOFTMAX_XENT, _pointwise_grad_span, _pointwise_loss,
                      _pointwise_loss_backward, _softmax_xent_backward,
                      _softmax_xent_backward_rows, _softmax_xent_forward, _softmax_xent_rows)
from ._optimizers import (_adagrad_k, _adagrad_span, _adam_k, _adam_span, _adamax_k,
                          _adamax_span, _nadam_k, _nadam_span, _radam_k, _radam_span, _rmsprop_k,
                          _rmsprop_span, _sgd_k, _sgd_span)

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


@njit(cache=True, parallel=True)
def _optimizer_step(optimizer, p, g, s0, s1, s2, hyper, step, mu_product):
    """Step `step` of the optimizer of code `optimizer` over the whole of the
    buffers, with state buffers s0, s1, s2 (as its kernel takes them; empty
    where unused): _optimizer_span over _spans(p.size) spans, on the calling
    thread when there is one.  Returns NAdam's mu_product after the step."""
    mu_product = _mu_after(optimizer, hyper, step, mu_product)
    n, s = p.size, _spans(p.size)
    if s == 1:
        _optimizer_span(optimizer, p, g, s0, s1, s2, 0, n, hyper, step, mu_product)
    else:
        for c in prange(s):
            _optimizer_span(optimizer, p, g, s0, s1, s2, c * n // s, (c + 1) * n // s, hyper,
                            step, mu_product)
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
def _gather_rows(xg, tg, lg, x_flat, t_flat, labels, order, lo, i0, i1, in_size, out_size,
                 is_labels):
    """Rows order[lo + i0:lo + i1] of X into rows i0..i1 of xg, and their
    labels into lg or targets into tg (a batch of a shuffled epoch, without
    a shuffled X)."""
    for i in range(i0, i1):
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


# ---- the dense stack's batches: two parallel regions a batch ------------------------
# A numba parallel region (prange) is a fork/join of the threading layer: ~2 us
# when the workers are spinning, ~35 us once they sleep (GOMP_SPINCOUNT=1000,
# which fastnn.kernels.c sets), milliseconds when the other vCPU is taken.
# The batch loop of the interpreter opened one per large gemm panel and
# packing step and one for the update: 10 / 27 / 66 a batch for 784-256-128-10
# at batch 32 / 128 / 512.  Here a batch is two regions, each a prange over
# one chunk per thread whose body needs no synchronisation:
#   rows   thread t owns rows [t m / nt, (t+1) m / nt) of the batch: it
#          gathers them, runs them forward through every layer, takes the
#          loss gradient of its rows and runs them backward down to each
#          layer's dZ (dX = dZ W^T is row by row too);
#   params thread t owns the span cuts[t]..cuts[t+1] of the flat parameter
#          buffer (cut on dW rows and bias starts): it computes those rows
#          of every dW = X^T dZ and those biases' db, adds the l2 term and
#          updates the span.
# Between them the calling thread sums the loss (the rows' values in row
# order), counts the correct answers and checks the loss.  Every element is
# the same sum in the same order as in the one-thread batch: a gemm element
# does not depend on the rows computed with it (_gemm_rows), the column sums
# run over all rows in order, the updates are elementwise -- so the results
# are the same bits on any thread count, and the interpreter's.

@njit(cache=True)
def _mu_after(optimizer, hyper, step, mu_product):
    """NAdam's mu_1 ... mu_step (mu_product is the product before step)."""
    if optimizer == _NADAM:
        return mu_product * _nadam_mu(step, hyper[5], hyper[11])
    return mu_product


@njit(cache=True)
def _optimizer_span(optimizer, p, g, s0, s1, s2, lo, hi, hyper, step, mu_product):
    """_optimizer_step's update of step `step` over [lo, hi) of the buffers,
    on the calling thread; mu_product: NAdam's product after this step."""
    (lr, momentum, dampening, nesterov, wd, beta1, beta2, eps, alpha, centered, lr_decay,
     momentum_decay) = hyper
    if optimizer == _SGD:
        _sgd_span(p, g, s0, lo, hi, _sgd_k(lr, momentum, dampening, wd), nesterov != 0.0,
                  step == 1)
    elif optimizer == _ADAM or optimizer == _ADAMW:
        bc1, bc2 = _bias_corrections(step, beta1, beta2)
        _adam_span(p, g, s0, s1, lo, hi,
                   _adam_k(lr, beta1, beta2, eps, wd, optimizer == _ADAMW, bc1, bc2))
    elif optimizer == _RMSPROP:
        _rmsprop_span(p, g, s0, s1, s2, lo, hi, _rmsprop_k(lr, alpha, eps, wd, momentum),
                      centered != 0.0)
    elif optimizer == _ADAGRAD:
        _adagrad_span(p, g, s0, lo, hi, _adagrad_k(step, lr, lr_decay, wd, eps))
    elif optimizer == _NADAM:
        _nadam_span(p, g, s0, s1, lo, hi,
                    _nadam_k(lr, beta1, beta2, eps, wd, _nadam_mu(step, beta1, momentum_decay),
                             _nadam_mu(step + 1, beta1, momentum_decay), mu_product,
                             _bias_corrections(step, beta1, beta2)[1]))
    elif optimizer == _ADAMAX:
        _adamax_span(p, g, s0, s1, lo, hi,
                     _adamax_k(lr, beta1, beta2, eps, wd, _bias_corrections(step, beta1, beta2)[0]))
    elif optimizer == _RADAM:
        bc1, bc2 = _bias_corrections(step, beta1, beta2)
        rect = _radam_rectification(step, beta2)
        _radam_span(p, g, s0, s1, lo, hi, _radam_k(lr, beta1, beta2, eps, wd, bc1, bc2, rect),
                    rect > 0.0)
    else:
        raise ValueError("optimizer: unknown code")


@njit(cache=True, inline="always")
def _layer_input(xb, ws, layers, l):
    """Layer l's input as (flat buffer, offset): the batch rows or Y_(l-1)."""
    if l == 0:
        return xb, 0
    return ws, layers[l - 1, 5]


@njit(cache=True)
def _rows_pass(r0, r1, m, lo, gather, xb, lb, tb, x_flat, t_flat, labels, order, xg, tg, lg,
               ws, params, layers, slopes, loss, is_labels, grad_scale, values, ap, bp):
    """Rows [r0, r1) of a batch of m rows starting at sample lo: gathered
    (if gather), forward, the loss gradient (softmax-xent: each row's loss
    into values), backward to every layer's dZ in D_l.  xb, lb, tb: the
    whole batch's (flat) input, labels, targets."""
    if r1 <= r0:
        return
    n_layers = layers.shape[0]
    n_in, c = layers[0, 0], layers[n_layers - 1, 1]
    if gather:
        _gather_rows(xg, tg, lg, x_flat, t_flat, labels, order, lo, r0, r1, n_in, c, is_labels)
    mr = r1 - r0
    no_buf = params[:0]
    for l in range(n_layers):
        fi, fo, w, b = layers[l, 0], layers[l, 1], layers[l, 2], layers[l, 3]
        src, off = _layer_input(xb, ws, layers, l)
        y = ws[layers[l, 5] + r0 * fo:layers[l, 5] + r1 * fo].reshape((mr, fo))
        _gemm_rows(y, src[off + r0 * fi:off + r1 * fi].reshape((mr, fi)),
                   params[w:w + fi * fo].reshape((fi, fo)), 0, False, False, 1.0, 0.0,
                   params[b:b + fo] if b >= 0 else no_buf, layers[l, 4], slopes[l], ap, bp, False)
    y_last, d_last = layers[n_layers - 1, 5], layers[n_layers - 1, 6]
    if is_labels:
        out = ws[y_last:y_last + m * c].reshape((m, c))
        dout = ws[d_last:d_last + m * c].reshape((m, c))
        _softmax_xent_rows(dout, out, lb, r0, r1, values)
        _softmax_xent_backward_rows(dout, dout, lb, r0, r1, 1.0 / m)
    else:
        _pointwise_grad_span(loss, ws[d_last:d_last + m * c], ws[y_last:y_last + m * c], tb,
                             r0 * c, r1 * c, 1.0 / (m * c))
    if grad_scale != 1.0:
        _scale(ws[d_last + r0 * c:d_last + r1 * c], np.float32(grad_scale))
    for l in range(n_layers - 1, -1, -1):
        fi, fo, w = layers[l, 0], layers[l, 1], layers[l, 2]
        y_off, d_off = layers[l, 5], layers[l, 6]
        dz = ws[d_off + r0 * fo:d_off + r1 * fo]
        _grad_span(dz, dz, ws[y_off + r0 * fo:y_off + r1 * fo], 0, mr * fo, layers[l, 4],
                   slopes[l])
        if l > 0:
            d_in = layers[l - 1, 6]
            _gemm_rows(ws[d_in + r0 * fi:d_in + r1 * fi].reshape((mr, fi)), dz.reshape((mr, fo)),
                       params[w:w + fi * fo].reshape((fi, fo)), 0, False, True, 1.0, 0.0, no_buf,
                       _IDENTITY, 0.0, ap, bp, False)


@njit(cache=True)
def _params_pass(lo, hi, m, xb, ws, params, grads, s0, s1, s2, layers, l2, update, optimizer,
                 hyper, step, mu_product, ap, bp, sums):
    """The span [lo, hi) of the parameters (cut on dW rows and bias starts):
    its rows of each dW = X^T dZ, its biases' db, the l2 term, and (if
    update) step `step` of the optimizer over it."""
    no_buf = params[:0]
    for l in range(layers.shape[0]):
        fi, fo, w, b = layers[l, 0], layers[l, 1], layers[l, 2], layers[l, 3]
        i0 = min(fi, max(0, -((w - lo) // fo)))  # the first row starting at or after lo
        i1 = min(fi, max(0, -((w - hi) // fo)))
        d_off = layers[l, 6]
        dz = ws[d_off:d_off + m * fo].reshape((m, fo))
        if i1 > i0:
            src, off = _layer_input(xb, ws, layers, l)
            _gemm_rows(grads[w + i0 * fo:w + i1 * fo].reshape((i1 - i0, fo)),
                       src[off:off + m * fi].reshape((m, fi)), dz, i0, True, False, 1.0, 0.0,
                       no_buf, _IDENTITY, 0.0, ap, bp, False)
            if l2 != 0.0:
                _axpy_span(grads, params, w + i0 * fo, w + i1 * fo, np.float32(l2 / m))
        if b >= 0 and lo <= b < hi:
            _column_sums(grads[b:b + fo], dz, sums)
    if update:
        _optimizer_span(optimizer, params, grads, s0, s1, s2, lo, hi, hyper, step, mu_product)


@njit(cache=True, parallel=True)
def _stack_batches(params, grads, s0, s1, s2, ws, X, labels, T, order, batch_losses,
                   batch_correct, layers, slopes, cuts, penalized, loss, bs, xg, tg, lg,
                   optimizer, hyper, step, mu_product, l2, loss_scale, grad_scale, b0, b1,
                   defer_last):
    """Batches [b0, b1) of reference.dense_stack_epoch, each as the rows and
    params passes above, one chunk per thread (cuts: nt + 1 flat offsets,
    _param_cuts; nt = the thread count).  layers: int64 rows (fan_in,
    fan_out, w_offset, b_offset, activation, offset of Y_l, offset of D_l),
    slopes their negative slopes; penalized: the (offset, size) ranges of
    the l2 term's value (the layers' weights); xg, tg, lg: the gathered
    batch's X, T and labels (used when order is not empty).  defer_last:
    return after batch b1 - 1's gradient, without its update.  Returns
    (n_done, step, mu_product, status) as _plan._model_epoch."""
    nt = cuts.shape[0] - 1
    n_layers = layers.shape[0]
    n, n_in, c = X.shape[0], layers[0, 0], layers[n_layers - 1, 1]
    is_labels = loss == _SOFTMAX_XENT
    gather = order.shape[0] > 0
    if gather:
        n = order.shape[0]
    # Everything that is not a view is allocated here, once per call: each
    # thread's packing panels and column sums.
    widest_out, ap_size, bp_size = 0, 0, 0
    for l in range(n_layers):
        fi, fo = layers[l, 0], layers[l, 1]
        widest_out = max(widest_out, fo)
        for gm, gn, gk in ((bs, fo, fi), (fi, fo, bs), (bs, fi, fo)):
            a_floats, b_floats = _pack_floats(gm, gn, gk)
            ap_size, bp_size = max(ap_size, a_floats), max(bp_size, b_floats)
    ap = np.empty((nt, ap_size), dtype=np.float32)
    bp = np.empty((nt, bp_size), dtype=np.float32)
    sums = np.empty((nt, widest_out), dtype=np.float64)
    values = np.empty(bs, dtype=np.float64)
    x_flat, t_flat = X.reshape(-1), T.reshape(-1)
    for bi in range(b0, b1):
        lo = bi * bs
        m = min(bs, n - lo)
        if gather:
            xb = xg[:m * n_in]
            lb, tb = (lg[:m], tg[:0]) if is_labels else (lg[:0], tg[:m * c])
        else:
            xb = x_flat[lo * n_in:(lo + m) * n_in]
            lb, tb = labels[lo:lo + m], t_flat[lo * c:(lo + m) * c]  # the unused one is empty
        par = nt > 1  # (even 64-32-10 at batch 8 ran as fast on 2 threads: NOTES 48)
        if par:
            for t in prange(nt):
                _rows_pass(t * m // nt, (t + 1) * m // nt, m, lo, gather, xb, lb, tb, x_flat,
                           t_flat, labels, order, xg, tg, lg, ws, params, layers, slopes, loss,
                           is_labels, grad_scale, values, ap[t], bp[t])
        else:
            _rows_pass(0, m, m, lo, gather, xb, lb, tb, x_flat, t_flat, labels, order, xg, tg,
                       lg, ws, params, layers, slopes, loss, is_labels, grad_scale, values, ap[0],
                       bp[0])

        y_last = layers[n_layers - 1, 5]
        out = ws[y_last:y_last + m * c].reshape((m, c))
        if is_labels:
            total = 0.0
            for r in range(m):
                total += values[r]
            value = total / m
        else:
            value = _pointwise_loss(loss, out.reshape(-1), tb)
        value *= loss_scale
        if l2 != 0.0:
            sq = 0.0
            for q in range(penalized.shape[0]):
                o = penalized[q, 0]
                sq += _sum_squares(params[o:o + penalized[q, 1]])
            value += 0.5 * l2 / m * sq
        batch_losses[bi] = value
        batch_correct[bi] = _count_correct(out, lb, tb, loss)
        if not math.isfinite(value):
            return bi + 1, step, mu_product, 1

        update = not (defer_last and bi == b1 - 1)
        if update:
            step += 1
            mu_product = _mu_after(optimizer, hyper, step, mu_product)
        if par:
            for t in prange(nt):
                _params_pass(cuts[t], cuts[t + 1], m, xb, ws, params, grads, s0, s1, s2, layers,
                             l2, update, optimizer, hyper, step, mu_product, ap[t], bp[t],
                             sums[t])
        else:
            _params_pass(0, params.shape[0], m, xb, ws, params, grads, s0, s1, s2, layers, l2,
                         update, optimizer, hyper, step, mu_product, ap[0], bp[0], sums[0])
        if not update:
            return b1, step, mu_product, 2
    return b1, step, mu_product, 0


def _param_cuts(layers, n_params, threads):
    """threads + 1 offsets cutting the flat parameters into spans of about
    equal size, each cut at a row start of a weight matrix, a bias start or
    the end of either (so that no dW row or bias is split)."""
    points = [0, n_params]
    for fi, fo, w, b in np.asarray(layers)[:, :4]:
        points.extend(range(w, w + fi * fo + 1, fo))
        if b >= 0:
            points.extend((b, b + fo))
    points = np.unique(np.asarray(points, np.int64))
    targets = np.arange(threads + 1) * n_params / threads
    cuts = points[np.abs(points[None, :] - targets[:, None]).argmin(axis=1)]
    cuts[0], cuts[-1] = 0, n_params
    return np.maximum.accumulate(cuts)


def stack_batches(params, grads, states, ws, X, labels, T, order, batch_losses, batch_correct,
                  layers, slopes, penalized, loss, bs, xg, tg, lg, optimizer, hyper, step,
                  mu_product, l2, loss_scale, grad_scale, b0, b1, defer_last):
    """_stack_batches with the thread count's cuts (optimizer: its code;
    hyper: the tuple in _HYPER's order; states: up to three buffers)."""
    states = tuple(states) + (None,) * (3 - len(states))
    s0, s1, s2 = (_NO_BUF if s is None else s for s in states)
    cuts = _param_cuts(layers, params.size, numba.get_num_threads())
    return _stack_batches(params, grads, s0, s1, s2, ws, X, labels, T, order, batch_losses,
                          batch_correct, layers, slopes, cuts, penalized, loss, bs, xg, tg, lg,
                          optimizer, hyper, step, mu_product, l2, loss_scale, grad_scale, b0, b1,
                          defer_last)


def dense_stack_epoch(epoch):
    layers, bs = epoch.layers, epoch.batch_size
    at = spec.epoch_layout(layers, bs, 1)
    table = np.array([(layer.fan_in, layer.fan_out, layer.w_offset, layer.b_offset,
                       layer.activation, y_off, d_off)
                      for layer, y_off, d_off in zip(layers, at["Y"], at["D"])], dtype=np.int64)
    slopes = np.array([layer.negative_slope for layer in layers], dtype=np.float64)
    penalized = np.array([(layer.w_offset, layer.fan_in * layer.fan_out) for layer in layers],
                         dtype=np.int64)
    hyper = tuple(float(epoch.hyper.get(name, 0.0)) for name in _HYPER)
    is_labels = epoch.loss == "softmax_xent"
    ws, n_in, c = epoch.workspace, table[0, 0], table[-1, 1]
    n = epoch.X.shape[0] if epoch.order is None else len(epoch.order)
    done, step, mu_product, _ = stack_batches(
        epoch.params, epoch.grads, epoch.states, ws, epoch.X,
        epoch.targets if is_labels else _NO_LABELS, _NO_TARGETS if is_labels else epoch.targets,
        _NO_ORDER if epoch.order is None else epoch.order, epoch.batch_losses,
        epoch.batch_correct, table, slopes, penalized, spec.LOSS_CODES[epoch.loss], bs,
        ws[at["Xb"]:at["Xb"] + bs * n_in], ws[at["Tb"]:at["Tb"] + bs * c],
        ws[at["Lb"]:at["Lb"] + bs].view(np.int32), spec.OPTIMIZERS[epoch.optimizer].code, hyper,
        int(epoch.step), float(epoch.mu_product), float(epoch.l2), float(epoch.loss_scale),
        float(epoch.grad_scale), 0, -(-n // bs), False)
    return int(done), int(step), float(mu_product)
