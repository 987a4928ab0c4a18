"""model_epoch on the numba backend: the plan interpreter, one ``@njit`` loop
over the mini-batches that runs the records of a compiled model (spec.Op,
spec.PLAN_FIELDS) with the same njit kernels as the per-call functions, in
reference.run_model_epoch's order (the same rounding points, so the
trajectory is the per-call one).

No Python between batches and no allocation inside the batch loop: the
kernels' scratch (gemm packing panels, column sums, batch-norm partial sums,
average-pool accumulators) is allocated once per epoch, sized for the full
batch.  Results do not depend on the thread count: threads split outputs
(gemm tiles, image rows, flat spans), and the batch-norm channel sums run
over a number of chunks that depends on the size only.

A plan that is a chain of Dense records (no frozen layer, no clipping)
runs as ``_epoch.stack_batches`` instead: the same kernels in the same
order per element, two parallel regions a batch where the interpreter
opens one per large gemm step (bench/NOTES.md entry 48).
"""

import math

import numba  # absolute import: the real numba, not this package
import numpy as np
from numba import njit

from .. import spec
from ._common import _CHUNK, _NO_BUF
from ._conv import (_DMR, _avgpool_backward, _avgpool_forward, _col2im, _conv_dz, _direct_dw,
                    _direct_dx, _direct_forward, _im2col, _maxpool_backward, _maxpool_forward,
                    _pad, direct, direct_dx, dw_chunks, dz_chunks)
from ._dropout import _dropout
from ._elementwise import (_IDENTITY, _activation_backward, _activation_forward, _axpy, _clip,
                           _scale, _softmax_backward, _softmax_forward, _sum_squares)
from ._epoch import (_HYPER, _NO_LABELS, _NO_ORDER, _NO_TARGETS, _count_correct, _gather_rows,
                     _loss_gradient, _loss_value, _optimizer_step)
from ._gemm import _dense_dz, _gemm_ws, _pack_floats
from ._losses import _SOFTMAX_XENT
from ._norm import _PIECES, _batchnorm_backward, _batchnorm_forward
from . import _epoch, _rnn

# Record fields, scalars and op codes as module globals: numba compiles them
# in as constants.
_OP, _X, _Y, _DX, _DY = (spec.F[k] for k in ("op", "x", "y", "dx", "dy"))
_AUX, _DAUX, _IAUX, _PARAM, _BIAS = (spec.F[k] for k in ("aux", "daux", "iaux", "param", "bias"))
_STAT0, _STAT1 = spec.F["stat0"], spec.F["stat1"]
_H, _W, _C, _OH, _OW, _OC = (spec.F[k] for k in ("h", "w", "c", "oh", "ow", "oc"))
_KH, _KW, _SH, _SW, _PH, _PW = (spec.F[k] for k in ("kh", "kw", "sh", "sw", "ph", "pw"))
_ACT, _SEED, _COUNTER = spec.F["act"], spec.F["seed"], spec.F["counter"]
_SLOPE, _MOMENTUM, _EPS, _P = (spec.S[k] for k in ("slope", "momentum", "eps", "p"))

_DENSE = int(spec.Op.DENSE)
_CONV2D = int(spec.Op.CONV2D)
_MAXPOOL2D = int(spec.Op.MAXPOOL2D)
_AVGPOOL2D = int(spec.Op.AVGPOOL2D)
_ACTIVATION = int(spec.Op.ACTIVATION)
_SOFTMAX = int(spec.Op.SOFTMAX)
_BATCHNORM = int(spec.Op.BATCHNORM)
_DROPOUT = int(spec.Op.DROPOUT)
_ADD = int(spec.Op.ADD)
_FORK = int(spec.Op.FORK)
_RNN = int(spec.Op.RNN)

# Batch-norm channel sums: chunks of at least _CHUNK elements, at most
# _norm's count -- a function of the size alone (so the sums' rounding does
# not depend on the thread count), the same as the per-call kernels' (so the
# compiled epoch rounds as the batch-by-batch path does).
_BN_CHUNKS = _PIECES


@njit(cache=True)
def _bn_chunks(size):
    return max(1, min(_BN_CHUNKS, size // _CHUNK))


@njit(cache=True)
def _flat_chunks(size, threads):
    """Chunks of an elementwise kernel (any split gives the same result)."""
    return max(1, min(threads, size // _CHUNK))


@njit(cache=True)
def _copy(dst, src):
    for i in range(dst.size):
        dst[i] = src[i]


@njit(cache=True)
def _record_forward(r, sc, xin, xb, m, batch, ws, iws, params, buffers, ap, bp, bn_part,
                    bn_work, pool_acc, threads, rnn, conv):
    """Record r (ints) / sc (floats) forward over m rows of batch number
    `batch`; xin its input (flat), xb the batch's input rows."""
    op = r[_OP]
    if op == _FORK:
        return
    h, w, c, oh, ow, oc = r[_H], r[_W], r[_C], r[_OH], r[_OW], r[_OC]
    isz, osz = m * h * w * c, m * oh * ow * oc
    y = ws[r[_Y]:r[_Y] + osz]
    no_buf = params[:0]
    if op == _DENSE:
        fi = h * w * c
        b = params[r[_BIAS]:r[_BIAS] + oc] if r[_BIAS] >= 0 else no_buf
        _gemm_ws(y.reshape((m, oc)), xin.reshape((m, fi)),
                 params[r[_PARAM]:r[_PARAM] + fi * oc].reshape((fi, oc)), False, False, 1.0, 0.0,
                 b, r[_ACT], sc[_SLOPE], ap, bp, threads)
    elif op == _CONV2D:
        kh, kw = r[_KH], r[_KW]
        K, M = kh * kw * c, m * oh * ow
        b = params[r[_BIAS]:r[_BIAS] + oc] if r[_BIAS] >= 0 else no_buf
        cols = ws[r[_AUX]:r[_AUX] + M * K]
        wk = params[r[_PARAM]:r[_PARAM] + K * oc].reshape((K, oc))
        hp, wp = h + 2 * r[_PH], w + 2 * r[_PW]
        if direct(c, oc, m * hp * wp * c, M * K):  # (the padded X stays in cols for dW)
            _pad(cols, xin.reshape((m, h, w, c)), r[_PH], r[_PW])
            _direct_forward(y.reshape((M, oc)), cols, wk, b, oh, ow, c, kh, kw, r[_SH], r[_SW],
                            hp, wp, r[_ACT], sc[_SLOPE], conv[0], conv[1])
        else:
            _im2col(cols.reshape((M, K)), xin.reshape((m, h, w, c)), kh, kw, r[_SH], r[_SW],
                    r[_PH], r[_PW], oh, ow)
            _gemm_ws(y.reshape((M, oc)), cols.reshape((M, K)), wk, False, False, 1.0, 0.0, b,
                     r[_ACT], sc[_SLOPE], ap, bp, threads)
    elif op == _MAXPOOL2D:
        am = iws[r[_IAUX]:r[_IAUX] + osz].reshape((m, oh, ow, oc))
        _maxpool_forward(y.reshape((m, oh, ow, oc)), am, xin.reshape((m, h, w, c)), r[_KH],
                         r[_KW], r[_SH], r[_SW])
    elif op == _AVGPOOL2D:
        _avgpool_forward(y.reshape((m, oh, ow, oc)), xin.reshape((m, h, w, c)), r[_KH], r[_KW],
                         r[_SH], r[_SW], pool_acc[:, 0, :])
    elif op == _ACTIVATION:
        _activation_forward(y, xin, r[_ACT], sc[_SLOPE], _flat_chunks(osz, threads))
    elif op == _SOFTMAX:
        _softmax_forward(y.reshape((osz // oc, oc)), xin.reshape((isz // c, c)))
    elif op == _BATCHNORM:
        rows = isz // c
        a = r[_AUX]
        _batchnorm_forward(y.reshape((rows, c)), xin.reshape((rows, c)),
                           params[r[_PARAM]:r[_PARAM] + c], params[r[_BIAS]:r[_BIAS] + c],
                           ws[a:a + c], ws[a + c:a + 2 * c], buffers[r[_STAT0]:r[_STAT0] + c],
                           buffers[r[_STAT1]:r[_STAT1] + c], sc[_MOMENTUM], sc[_EPS],
                           _bn_chunks(isz), bn_part, bn_work)
    elif op == _DROPOUT:
        _dropout(y, xin, sc[_P], r[_SEED], r[_COUNTER] + batch)
    elif op == _ADD:  # (aux -1: the skip is the batch's input rows)
        _copy(y, xin)
        _axpy(y, xb if r[_AUX] == -1 else ws[r[_AUX]:r[_AUX] + osz], np.float32(1.0))
    elif op == _RNN:  # (rnn: the records' scratch, _rnn.record_scratch)
        _rnn.record_forward(r, xin, m, ws, params, rnn[0], rnn[1], rnn[2], rnn[3], rnn[4],
                            rnn[5], rnn[6])
    else:
        raise ValueError("plan: unknown op")  # the front validated the plan


@njit(cache=True)
def _record_backward(r, sc, xin, m, batch, ws, iws, params, grads, ap, bp, sums, bn_part,
                     bn_work, pool_acc, threads, rnn, conv, dwp, dzp, wflip):
    """Record r backward over m rows (its output gradient at dy)."""
    op = r[_OP]
    h, w, c, oh, ow, oc = r[_H], r[_W], r[_C], r[_OH], r[_OW], r[_OC]
    isz, osz = m * h * w * c, m * oh * ow * oc
    dy = ws[r[_DY]:r[_DY] + osz]
    has_dx = r[_DX] >= 0
    dx = ws[r[_DX]:r[_DX] + isz] if has_dx else ws[:0]
    y = ws[r[_Y]:r[_Y] + osz] if op != _FORK else ws[:0]
    no_buf = params[:0]
    if op == _DENSE:
        fi = h * w * c
        p = r[_PARAM]
        db = grads[r[_BIAS]:r[_BIAS] + oc] if r[_BIAS] >= 0 else no_buf
        d2 = dy.reshape((m, oc))
        _dense_dz(d2, db, d2, y.reshape((m, oc)), r[_ACT], sc[_SLOPE], sums)
        _gemm_ws(grads[p:p + fi * oc].reshape((fi, oc)), xin.reshape((m, fi)), d2, True, False,
                 1.0, 0.0, no_buf, _IDENTITY, 0.0, ap, bp, threads)
        if has_dx:
            _gemm_ws(dx.reshape((m, fi)), d2, params[p:p + fi * oc].reshape((fi, oc)), False,
                     True, 1.0, 0.0, no_buf, _IDENTITY, 0.0, ap, bp, threads)
    elif op == _CONV2D:
        kh, kw = r[_KH], r[_KW]
        K, M = kh * kw * c, m * oh * ow
        p = r[_PARAM]
        db = grads[r[_BIAS]:r[_BIAS] + oc] if r[_BIAS] >= 0 else no_buf
        cols = ws[r[_AUX]:r[_AUX] + M * K].reshape((M, K))
        z = dy.reshape((M, oc))
        _conv_dz(z, db, z, y.reshape((M, oc)), r[_ACT], sc[_SLOPE], dzp)
        hp, wp = h + 2 * r[_PH], w + 2 * r[_PW]
        if direct(c, oc, m * hp * wp * c, M * K):
            _direct_dw(grads[p:p + K * oc].reshape((K, oc)), cols.reshape(-1), z, oh, ow, c, kh,
                       kw, r[_SH], r[_SW], hp, wp, conv[0], conv[1], dwp)
        else:
            _gemm_ws(grads[p:p + K * oc].reshape((K, oc)), cols, z, True, False, 1.0, 0.0,
                     no_buf, _IDENTITY, 0.0, ap, bp, threads)
        qh, qw = kh - 1 - r[_PH], kw - 1 - r[_PW]
        if has_dx and direct_dx(c, kh, kw, r[_SH], r[_SW], r[_PH], r[_PW],
                                m * (oh + 2 * qh) * (ow + 2 * qw) * oc, M * K):
            _direct_dx(dx.reshape((m, h, w, c)), z, params[p:p + K * oc].reshape((K, oc)), kh, kw,
                       r[_PH], r[_PW], cols.reshape(-1),
                       wflip[:K * oc].reshape((kh * kw * oc, c)), conv[0], conv[1], no_buf)
        elif has_dx:  # dcols into cols (dW has read them), folded back into dX
            _gemm_ws(cols, z, params[p:p + K * oc].reshape((K, oc)), False, True, 1.0, 0.0,
                     no_buf, _IDENTITY, 0.0, ap, bp, threads)
            _col2im(dx.reshape((m, h, w, c)), cols, kh, kw, r[_SH], r[_SW], r[_PH], r[_PW], oh,
                    ow)
    elif op == _MAXPOOL2D:
        if has_dx:
            am = iws[r[_IAUX]:r[_IAUX] + osz].reshape((m, oh, ow, oc))
            _maxpool_backward(dx.reshape((m, h * w, c)), dy.reshape((m, oh, ow, oc)), am)
    elif op == _AVGPOOL2D:
        if has_dx:
            _avgpool_backward(dx.reshape((m, h, w, c)), dy.reshape((m, oh, ow, oc)), r[_KH],
                              r[_KW], r[_SH], r[_SW], pool_acc)
    elif op == _ACTIVATION:
        if has_dx:
            _activation_backward(dx, dy, y, r[_ACT], sc[_SLOPE], _flat_chunks(osz, threads))
    elif op == _SOFTMAX:
        if has_dx:
            _softmax_backward(dx.reshape((isz // c, c)), dy.reshape((osz // oc, oc)),
                              y.reshape((osz // oc, oc)))
    elif op == _BATCHNORM:  # (dx is always given: the compiler gives a first layer a scratch one)
        rows = isz // c
        a = r[_AUX]
        _batchnorm_backward(dx.reshape((rows, c)), grads[r[_PARAM]:r[_PARAM] + c],
                            grads[r[_BIAS]:r[_BIAS] + c], dy.reshape((rows, c)),
                            xin.reshape((rows, c)), params[r[_PARAM]:r[_PARAM] + c], ws[a:a + c],
                            ws[a + c:a + 2 * c], _bn_chunks(isz), bn_part, bn_work)
    elif op == _DROPOUT:
        if has_dx:
            _dropout(dx, dy, sc[_P], r[_SEED], r[_COUNTER] + batch)
    elif op == _ADD:
        if r[_DAUX] != -1:
            _copy(ws[r[_DAUX]:r[_DAUX] + osz], dy)
        if has_dx and r[_DX] != r[_DY]:
            _copy(dx, dy)
    elif op == _FORK:
        if has_dx:
            if r[_DX] != r[_DY]:
                _copy(dx, dy)
            _axpy(dx, ws[r[_DAUX]:r[_DAUX] + osz], np.float32(1.0))
    elif op == _RNN:
        _rnn.record_backward(r, xin, m, ws, params, grads, rnn[0], rnn[1], rnn[2], rnn[3],
                             rnn[4], rnn[5], rnn[6])
    else:
        raise ValueError("plan: unknown op")


@njit(cache=True)
def _model_epoch(params, grads, buffers, s0, s1, s2, ws, iws, X, labels, T, order, batch_losses,
                 batch_correct, plan, plan_scalars, penalized, trainable, in_size, out_size, xb_off,
                 tb_off,
                 lb_off, output, doutput, loss, bs, optimizer, hyper, step, mu_product, l2,
                 loss_scale, grad_scale, clip_value, clip_norm, threads, b0, b1, defer_last):
    """reference.run_model_epoch over this backend's kernels, in its order,
    for the epoch's batches [b0, b1).
    X (n, in_size); labels (n,) for softmax_xent, else T (n, out_size) (the
    other one empty); order: the samples' rows (empty: X in its order).
    threads: numba's thread count (what the elementwise kernels may split
    their work into; it does not change the result).  trainable: (k, 2)
    ranges clipped and updated (the whole buffer when k = 0).  defer_last:
    return after batch b1 - 1's gradient (l2 included) without its update
    (the GRADS hook's point; _finish_batch does the rest).  Returns (n_done,
    step, mu_product, status): status 0 ran through, 1 a non-finite loss
    ended the epoch, 2 the last batch's update is pending."""
    n_rec = plan.shape[0]
    is_labels = loss == _SOFTMAX_XENT
    gather = order.shape[0] > 0
    n = order.shape[0] if gather else X.shape[0]

    # Everything that is not a view is allocated here, once per epoch.
    ap_size, bp_size, widest, bn_c, pool_w, pool_c = 0, 0, 1, 1, 1, 1
    pix_size, tap_size, dwp_size = 0, 0, 0  # (the direct convolutions' scratch)
    dz_rows, dz_cols, flip_size = 1, 1, 0
    for j in range(n_rec):
        r = plan[j]
        op = r[_OP]
        if op == _CONV2D:
            M, K = bs * r[_OH] * r[_OW], r[_KH] * r[_KW] * r[_C]
            kp = (K + _DMR - 1) // _DMR * _DMR
            # (dX as a convolution: n h w pixels, kh kw oc taps, W flipped)
            pix_size = max(pix_size, max(M, bs * r[_H] * r[_W]) + _DMR)
            tap_size = max(tap_size, max(kp, r[_KH] * r[_KW] * r[_OC]) + _DMR)
            flip_size = max(flip_size, K * r[_OC])
            dwp_size = max(dwp_size, dw_chunks(M) * kp * r[_OC])
            dz_rows, dz_cols = max(dz_rows, dz_chunks(M)), max(dz_cols, r[_OC])
        if op == _DENSE or op == _CONV2D:
            if op == _DENSE:
                M, K = bs, r[_H] * r[_W] * r[_C]
            else:
                M, K = bs * r[_OH] * r[_OW], r[_KH] * r[_KW] * r[_C]
            N = r[_OC]
            widest = max(widest, N)
            # the record's three products: Y = X W, dW = X^T dZ, dX = dZ W^T
            for gm, gn, gk in ((M, N, K), (K, N, M), (M, K, N)):
                a_floats, b_floats = _pack_floats(gm, gn, gk)
                ap_size, bp_size = max(ap_size, a_floats), max(bp_size, b_floats)
        elif op == _BATCHNORM:
            bn_c = max(bn_c, r[_C])
        elif op == _AVGPOOL2D:
            pool_w, pool_c = max(pool_w, r[_W]), max(pool_c, r[_C], r[_OC])
    ap = np.empty(threads * ap_size, dtype=np.float32)  # (a part a thread: _gemm_ws)
    bp = np.empty(threads * bp_size, dtype=np.float32)
    sums = np.empty(widest, dtype=np.float64)
    bn_part = np.empty((_BN_CHUNKS + 1, 2, bn_c), dtype=np.float64)
    bn_work = np.empty((4, bn_c), dtype=np.float32)
    pool_acc = np.empty((threads, pool_w, pool_c), dtype=np.float64)
    conv = (np.empty(pix_size, np.int64), np.empty(tap_size, np.int64))
    dwp = np.empty(dwp_size, np.float32)
    dzp = np.empty((dz_rows, dz_cols), np.float64)
    wflip = np.empty(flip_size, np.float32)
    ra, rb, r1, r2, r4, r5 = _rnn.record_scratch(plan, bs)
    rnn = (np.empty(ra, np.float32), np.empty(rb, np.float32), np.empty(r1, np.float32),
           np.empty(r2, np.float32), np.empty(r2, np.float32), np.empty(r4, np.float32),
           np.empty(r5, np.float64))

    x_flat, t_flat = X.reshape(-1), T.reshape(-1)
    g_rows = bs if gather else 0
    xg = ws[xb_off:xb_off + g_rows * in_size]
    tg = ws[tb_off:tb_off + (0 if is_labels else g_rows * out_size)]
    lg = iws[lb_off:lb_off + (g_rows if is_labels else 0)]
    for bi in range(b0, b1):
        lo = bi * bs
        m = min(bs, n - lo)
        if gather:
            _gather_rows(xg, tg, lg, x_flat, t_flat, labels, order, lo, 0, m, in_size, out_size,
                         is_labels)
            xb = xg[:m * in_size]
            lb, tb = (lg[:m], tg[:0]) if is_labels else (lg[:0], tg[:m * out_size])
        else:
            xb = x_flat[lo * in_size:(lo + m) * in_size]
            # (the unused one is empty)
            lb, tb = labels[lo:lo + m], t_flat[lo * out_size:(lo + m) * out_size]

        for j in range(n_rec):
            r = plan[j]
            xin = xb if r[_X] == -1 else ws[r[_X]:r[_X] + m * r[_H] * r[_W] * r[_C]]
            _record_forward(r, plan_scalars[j], xin, xb, m, bi, ws, iws, params, buffers, ap, bp,
                            bn_part, bn_work, pool_acc, threads, rnn, conv)
        out = (xb if output == -1 else ws[output:output + m * out_size]).reshape((m, out_size))
        dout = ws[doutput:doutput + m * out_size].reshape((m, out_size))

        value = _loss_value(out, dout, lb, tb, loss, is_labels, loss_scale)
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
        _loss_gradient(out, dout, lb, tb, loss, is_labels, grad_scale)

        for j in range(n_rec - 1, -1, -1):
            r = plan[j]
            xin = xb if r[_X] == -1 else ws[r[_X]:r[_X] + m * r[_H] * r[_W] * r[_C]]
            _record_backward(r, plan_scalars[j], xin, m, bi, ws, iws, params, grads, ap, bp,
                             sums, bn_part, bn_work, pool_acc, threads, rnn, conv, dwp, dzp, wflip)

        if l2 != 0.0:
            for q in range(penalized.shape[0]):
                o, size = penalized[q, 0], penalized[q, 1]
                _axpy(grads[o:o + size], params[o:o + size], np.float32(l2 / m))
        if defer_last and bi == b1 - 1:
            return b1, step, mu_product, 2
        step, mu_product = _finish_batch(params, grads, s0, s1, s2, optimizer, hyper, step,
                                         mu_product, clip_value, clip_norm, trainable)
    return b1, step, mu_product, 0


@njit(cache=True)
def _finish_batch(params, grads, s0, s1, s2, optimizer, hyper, step, mu_product, clip_value,
                  clip_norm, trainable):
    """A batch's clipping and update, once its gradient is in grads; with
    trainable ranges (frozen layers) only those ranges and their state change."""
    if trainable.shape[0] == 0:
        if clip_value > 0.0:
            _clip(grads, np.float32(-clip_value), np.float32(clip_value))
        if clip_norm > 0.0:
            coef = clip_norm / (math.sqrt(_sum_squares(grads)) + 1e-6)
            if coef < 1.0:
                _scale(grads, np.float32(coef))
        step += 1
        mu_product = _optimizer_step(optimizer, params, grads, s0, s1, s2, hyper, step, mu_product)
        return step, mu_product
    n_tr = trainable.shape[0]
    if clip_value > 0.0:
        for q in range(n_tr):
            o, size = trainable[q, 0], trainable[q, 1]
            _clip(grads[o:o + size], np.float32(-clip_value), np.float32(clip_value))
    if clip_norm > 0.0:
        sq = 0.0
        for q in range(n_tr):
            o, size = trainable[q, 0], trainable[q, 1]
            sq += _sum_squares(grads[o:o + size])
        coef = clip_norm / (math.sqrt(sq) + 1e-6)
        if coef < 1.0:
            for q in range(n_tr):
                o, size = trainable[q, 0], trainable[q, 1]
                _scale(grads[o:o + size], np.float32(coef))
    step += 1
    mu_next = mu_product
    for q in range(n_tr):
        o, size = trainable[q, 0], trainable[q, 1]
        mu_next = _optimizer_step(optimizer, params[o:o + size], grads[o:o + size],
                                  s0[o:o + size] if s0.shape[0] else s0,
                                  s1[o:o + size] if s1.shape[0] else s1,
                                  s2[o:o + size] if s2.shape[0] else s2, hyper, step,
                                  mu_product)
    return step, mu_next


_NO_RANGES = np.zeros((0, 2), np.int64)
_SIZES = {"ws": "workspace", "iws": "iworkspace", "params": "params", "buffers": "buffers"}


def _check_regions(epoch):
    """Every region a record touches lies inside its buffer (compiled code
    has no bounds checks; the front checked this too, this is cheap)."""
    sizes = {key: (0 if getattr(epoch, name) is None else getattr(epoch, name).size)
             for key, name in _SIZES.items()}
    sizes["params"] = min(sizes["params"], epoch.grads.size)
    for rec in np.asarray(epoch.plan):
        for buf, off, size in spec.record_regions(rec, epoch.batch_size):
            if off < 0 or size < 0 or off + size > sizes[buf]:
                raise ValueError(f"plan: record {list(rec)} region {buf}[{off}:{off + size}] "
                                 f"outside its buffer ({sizes[buf]})")


def _dense_stack(e, trainable):
    """(layers, slopes) of _epoch.stack_batches when the plan is a chain of
    Dense records that epoch runs as the interpreter would (no frozen
    layer, no clipping, the l2 term over the weights), else None."""
    plan = np.asarray(e.plan, np.int64)
    if (trainable.shape[0] or e.clip_value or e.clip_norm
            or not np.all(plan[:, _OP] == _DENSE) or plan[0, _X] != -1 or plan[0, _DX] != -1
            or e.output != plan[-1, _Y] or e.doutput != plan[-1, _DY]
            or np.any(plan[1:, _X] != plan[:-1, _Y]) or np.any(plan[1:, _DX] != plan[:-1, _DY])):
        return None
    fan_in = plan[:, _H] * plan[:, _W] * plan[:, _C]
    weights = sorted(zip(plan[:, _PARAM].tolist(), (fan_in * plan[:, _OC]).tolist()))
    if e.l2 and sorted(map(tuple, np.asarray(e.penalized).reshape(-1, 2).tolist())) != weights:
        return None
    layers = np.stack([fan_in, plan[:, _OC], plan[:, _PARAM], plan[:, _BIAS], plan[:, _ACT],
                       plan[:, _Y], plan[:, _DY]], axis=1)
    slopes = np.ascontiguousarray(np.asarray(e.plan_scalars, np.float64)[:, _SLOPE])
    return np.ascontiguousarray(layers), slopes


def model_epoch(epoch):
    e = epoch
    _check_regions(e)
    hyper = tuple(float(e.hyper.get(name, 0.0)) for name in _HYPER)
    states = tuple(e.states) + (None,) * (3 - len(e.states))
    s0, s1, s2 = (_NO_BUF if s is None else s for s in states)
    is_labels = e.loss == "softmax_xent"
    n = e.X.shape[0]
    X = e.X.reshape(n, -1)
    T = e.targets if is_labels else e.targets.reshape(n, -1)
    buffers = _NO_BUF if e.buffers is None else e.buffers
    iws = np.empty(0, np.int32) if e.iworkspace is None else e.iworkspace
    optimizer = spec.OPTIMIZERS[e.optimizer].code
    trainable = (_NO_RANGES if e.trainable is None
                 else np.ascontiguousarray(np.asarray(e.trainable, np.int64).reshape(-1, 2)))
    order = _NO_ORDER if e.order is None else e.order
    labels, targets = (T, _NO_TARGETS) if is_labels else (_NO_LABELS, T)
    penalized = np.ascontiguousarray(np.asarray(e.penalized, np.int64).reshape(-1, 2))
    bs = int(e.batch_size)
    stack = _dense_stack(e, trainable)
    if stack is not None:  # two parallel regions a batch (_epoch's header)
        g_rows = bs if e.order is not None else 0
        ws = e.workspace
        xg = ws[e.xb:e.xb + g_rows * int(e.in_size)]
        tg = ws[e.tb:e.tb + (0 if is_labels else g_rows * int(e.out_size))]
        lg = iws[e.lb:e.lb + (g_rows if is_labels else 0)]

        def run(step, mu_product, b0, b1, defer_last):
            return _epoch.stack_batches(
                e.params, e.grads, e.states, ws, X, labels, targets, order, e.batch_losses,
                e.batch_correct, stack[0], stack[1], penalized, spec.LOSS_CODES[e.loss], bs,
                xg, tg, lg, optimizer, hyper, step, mu_product, float(e.l2),
                float(e.loss_scale), float(e.grad_scale), b0, b1, defer_last)
    else:
        args = (e.params, e.grads, buffers, s0, s1, s2, e.workspace, iws, X, labels, targets,
                order, e.batch_losses, e.batch_correct, np.ascontiguousarray(e.plan, np.int64),
                np.ascontiguousarray(e.plan_scalars, np.float64), penalized, trainable,
                int(e.in_size), int(e.out_size), int(e.xb), int(e.tb), int(e.lb),
                int(e.output), int(e.doutput), spec.LOSS_CODES[e.loss], bs, optimizer, hyper)
        tail = (float(e.l2), float(e.loss_scale), float(e.grad_scale), float(e.clip_value),
                float(e.clip_norm), numba.get_num_threads())

        def run(step, mu_product, b0, b1, defer_last):
            return _model_epoch(*args, step, mu_product, *tail, b0, b1, defer_last)
    step, mu_product, n_batches = int(e.step), float(e.mu_product), e.n_batches
    if e.hook is None:
        done, step, mu_product, _ = run(step, mu_product, 0, n_batches, False)
        return int(done), int(step), float(mu_product)
    # With a hook the epoch runs in ranges of batches, the hook called in
    # between: one range per batch with GRADS (the hook comes between its
    # gradient and its update), else up to each batch the BATCH event follows.
    events = spec.hook_events(e.hook)
    grads_hook, batch_hook = spec.HookEvent.GRADS in events, spec.HookEvent.BATCH in events
    b0 = 0
    while b0 < n_batches:
        b1 = b0 + 1
        if not grads_hook:  # (the next batch + 1 a multiple of hook_every, or the end)
            every = e.hook_every if batch_hook else 0
            b1 = n_batches if every == 0 else min(n_batches, (b0 // every + 1) * every)
        done, step, mu_product, status = run(step, mu_product, b0, b1, grads_hook)
        if status == 1:
            return int(done), int(step), float(mu_product)
        if status == 2:
            e.hook(spec.HookEvent.GRADS, b1 - 1)
            step, mu_product = _finish_batch(e.params, e.grads, s0, s1, s2, optimizer, hyper,
                                             step, mu_product, float(e.clip_value),
                                             float(e.clip_norm), trainable)
        if batch_hook and spec.hook_batch_due(b1 - 1, n_batches, e.hook_every):
            e.hook(spec.HookEvent.BATCH, b1 - 1)
        b0 = b1
    return int(n_batches), int(step), float(mu_product)
