"""The ``c`` backend: fastnn's C kernels (csrc/) called through cffi.

Same functions, signatures and semantics as :mod:`fastnn.kernels.reference`,
which documents each kernel.

Conversion policy (see :mod:`fastnn.kernels._checks`): arrays are host numpy
arrays and the compute dtype is float32.  Inputs of another dtype or layout
are converted to C-contiguous float32 (a copy; class labels to int32).
Outputs are never converted: each must already be a C-contiguous, writable
float32 array of the exact shape, else TypeError/ValueError is raised before
any C code runs.  Losses and ``sum_squares`` accumulate in double.

The C calls release the GIL.  Every wrapper is one ``ck.prepare_*`` call and
one C call; a non-zero C return code (which the checks should make
impossible) raises RuntimeError.
"""

import os
from functools import partial

import numpy as np

from . import _checks as ck
from . import default_num_threads as _default_num_threads
from .reference import asarray, empty, nadam_mu, to_numpy, zeros  # noqa: F401 - same on host

# GNU OpenMP's threads spin for ~300,000 iterations at every barrier before
# they sleep.  With more runnable threads than cores (a shared machine,
# another library's pool) a spinning thread holds the core the late thread
# needs, and the epoch's per-batch barriers cost whole time slices.  Measured
# (2 threads, MLP 784-256-128-10, batch 32, one other busy process): default
# 9k samples/s, spin 10000: 21k, 3000: 32k, 1000: 48k; on a quiet machine
# 1000 costs at most ~10% (65-80k, within the noise).  libgomp reads this
# once, when it is loaded; an explicit OMP_WAIT_POLICY or GOMP_SPINCOUNT wins.
if "OMP_WAIT_POLICY" not in os.environ:
    os.environ.setdefault("GOMP_SPINCOUNT", "1000")

try:
    from fastnn._ckernels import ffi, lib
except ImportError as exc:
    raise ImportError(
        "fastnn.kernels.c: the C extension fastnn._ckernels is not built or does not "
        f"load ({exc}); build it with `python fastnn/_build_ckernels.py` or "
        "`pip install .`") from exc

name = "c"

_F32 = np.dtype(np.float32)
_SIMD_NAMES = ("generic", "avx2", "avx512")   # index = enum fastnn_simd
_NULL = ffi.NULL
# Pointers to array data without copying (read-only arrays are fine too).
_fp = partial(ffi.from_buffer, ffi.typeof("float[]"))
_ip = partial(ffi.from_buffer, ffi.typeof("int32_t[]"))


def _fp_or_null(x):
    return _NULL if x is None else _fp(x)


def _fail(kernel, rc):
    raise RuntimeError(f"{kernel}: C kernel returned error {rc} (arguments passed the "
                       "Python checks; this is a bug)")


# ---- runtime -----------------------------------------------------------------

def info():
    """What this backend is: backend, threads, SIMD path in use and best available."""
    return {"backend": name, "threads": lib.fastnn_get_num_threads(),
            "simd": _SIMD_NAMES[lib.fastnn_simd_path()],
            "simd_best": _SIMD_NAMES[lib.fastnn_simd_best()]}


def set_num_threads(n):
    """Number of OpenMP threads the C kernels use (an integer >= 1)."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n: expected an integer >= 1, got {n!r}")
    lib.fastnn_set_num_threads(int(n))


def set_simd_path(path):
    """Force the gemm micro-kernel: 'generic', 'avx2' or 'avx512' (for tests).

    Raises ValueError for an unknown name or a path this CPU lacks.
    """
    if path not in _SIMD_NAMES:
        raise ValueError(f"path: unknown {path!r}; expected one of {', '.join(_SIMD_NAMES)}")
    if lib.fastnn_set_simd_path(_SIMD_NAMES.index(path)) != 0:
        raise ValueError(f"path: {path!r} is not supported by this CPU "
                         f"(best: {_SIMD_NAMES[lib.fastnn_simd_best()]!r})")


# ---- matrix multiply -------------------------------------------------------

def gemm(A, B, C, *, trans_a=False, trans_b=False, alpha=1.0, beta=0.0):
    """C = alpha * op(A) @ op(B) + beta * C, in place; returns C."""
    A, B, m, n, k, alpha, beta = ck.prepare_gemm(A, B, C, trans_a, trans_b, alpha, beta, _F32)
    # Row-major and C-contiguous: each leading dimension is the row length.
    rc = lib.fastnn_gemm(1 if trans_a else 0, 1 if trans_b else 0, m, n, k, alpha,
                         _fp(A), A.shape[1], _fp(B), B.shape[1], beta, _fp(C), n)
    if rc:
        _fail("gemm", rc)
    return C


# ---- activations -----------------------------------------------------------

def activation_forward(Y, X, *, activation, negative_slope=0.01):
    """Y = act(X) elementwise; Y may be X (in place)."""
    X, code, slope = ck.prepare_activation_forward(Y, X, activation, negative_slope, _F32)
    rc = lib.fastnn_activation_forward(_fp(Y), _fp(X), Y.size, code, slope)
    if rc:
        _fail("activation_forward", rc)
    return Y


def activation_backward(dX, dY, Y, *, activation, negative_slope=0.01):
    """dX = dY * act'(x) from the cached output Y; dX may be dY (in place)."""
    dY, Y, code, slope = ck.prepare_activation_backward(dX, dY, Y, activation,
                                                        negative_slope, _F32)
    rc = lib.fastnn_activation_backward(_fp(dX), _fp(dY), _fp(Y), dX.size, code, slope)
    if rc:
        _fail("activation_backward", rc)
    return dX


def softmax_forward(Y, X):
    """Row-wise softmax of X (n, c) into Y; Y may be X."""
    X, n, c = ck.prepare_softmax_forward(Y, X, _F32)
    rc = lib.fastnn_softmax_forward(_fp(Y), _fp(X), n, c)
    if rc:
        _fail("softmax_forward", rc)
    return Y


def softmax_backward(dX, dY, Y):
    """dX = Y * (dY - rowsum(dY * Y)); dX may be dY."""
    dY, Y, n, c = ck.prepare_softmax_backward(dX, dY, Y, _F32)
    rc = lib.fastnn_softmax_backward(_fp(dX), _fp(dY), _fp(Y), n, c)
    if rc:
        _fail("softmax_backward", rc)
    return dX


# ---- dense layer -----------------------------------------------------------

def dense_forward(Y, X, W, b, *, activation="identity", negative_slope=0.01):
    """Y = act(X @ W + b): X (n, in), W (in, out), b (out,) or None, Y (n, out)."""
    X, W, b, n, fan_in, fan_out, code, slope = ck.prepare_dense_forward(
        Y, X, W, b, activation, negative_slope, _F32)
    rc = lib.fastnn_dense_forward(_fp(Y), _fp(X), _fp(W), _fp_or_null(b), n, fan_in, fan_out,
                                  code, slope)
    if rc:
        _fail("dense_forward", rc)
    return Y


def dense_backward(dX, dW, db, dZ, dY, X, W, Y, *, activation="identity",
                   negative_slope=0.01):
    """Backward of ``dense_forward``; dZ may be dY; db and dX may be None."""
    dY, X, W, Y, n, fan_in, fan_out, code, slope = ck.prepare_dense_backward(
        dX, dW, db, dZ, dY, X, W, Y, activation, negative_slope, _F32)
    rc = lib.fastnn_dense_backward(_fp_or_null(dX), _fp(dW), _fp_or_null(db), _fp(dZ),
                                   _fp(dY), _fp(X), _fp(W), _fp(Y), n, fan_in, fan_out,
                                   code, slope)
    if rc:
        _fail("dense_backward", rc)


# ---- losses ----------------------------------------------------------------

def softmax_xent_forward(P, Z, labels):
    """Writes P = softmax(Z); returns the mean cross-entropy of the labels."""
    Z, labels, n, c = ck.prepare_softmax_xent_forward(P, Z, labels, _F32)
    loss = ffi.new("float *")
    rc = lib.fastnn_softmax_xent_forward(loss, _fp(P), _fp(Z), _ip(labels), n, c)
    if rc:
        _fail("softmax_xent_forward", rc)
    return float(loss[0])


def softmax_xent_backward(dZ, P, labels):
    """dZ = (P - onehot(labels)) / n; dZ may be P (in place)."""
    P, labels, n, c = ck.prepare_softmax_xent_backward(dZ, P, labels, _F32)
    rc = lib.fastnn_softmax_xent_backward(_fp(dZ), _fp(P), _ip(labels), n, c)
    if rc:
        _fail("softmax_xent_backward", rc)


def _pointwise_loss(kernel, Y, T):
    loss = ffi.new("float *")
    rc = kernel(loss, _fp(Y), _fp(T), Y.size)
    if rc:
        _fail(kernel.__name__, rc)
    return float(loss[0])


def _pointwise_grad(kernel, dY, Y, T):
    rc = kernel(_fp(dY), _fp(Y), _fp(T), dY.size)
    if rc:
        _fail(kernel.__name__, rc)


def bce_forward(Z, T):
    """Mean binary cross-entropy of sigmoid(Z) against targets T in [0, 1]."""
    Z, T = ck.prepare_pointwise_loss(Z, T, _F32, y_name="Z")
    return _pointwise_loss(lib.fastnn_bce_forward, Z, T)


def bce_backward(dZ, Z, T):
    """dZ = (sigmoid(Z) - T) / Z.size; dZ may be Z (in place)."""
    Z, T = ck.prepare_pointwise_loss_backward(dZ, Z, T, _F32, y_name="Z")
    _pointwise_grad(lib.fastnn_bce_backward, dZ, Z, T)


def mse_forward(Y, T):
    """Mean over all elements of (Y - T)^2."""
    Y, T = ck.prepare_pointwise_loss(Y, T, _F32)
    return _pointwise_loss(lib.fastnn_mse_forward, Y, T)


def mse_backward(dY, Y, T):
    """dY = 2 (Y - T) / Y.size; dY may be Y (in place)."""
    Y, T = ck.prepare_pointwise_loss_backward(dY, Y, T, _F32)
    _pointwise_grad(lib.fastnn_mse_backward, dY, Y, T)


def mae_forward(Y, T):
    """Mean over all elements of |Y - T|."""
    Y, T = ck.prepare_pointwise_loss(Y, T, _F32)
    return _pointwise_loss(lib.fastnn_mae_forward, Y, T)


def mae_backward(dY, Y, T):
    """dY = sign(Y - T) / Y.size (0 where Y == T); dY may be Y (in place)."""
    Y, T = ck.prepare_pointwise_loss_backward(dY, Y, T, _F32)
    _pointwise_grad(lib.fastnn_mae_backward, dY, Y, T)


# ---- optimizer updates -----------------------------------------------------
# torch.optim's equations, one fused C pass each; see reference.py.

def sgd(params, grads, momentum_buf, *, step, lr, momentum=0.0, dampening=0.0,
        nesterov=False, weight_decay=0.0):
    """torch.optim.SGD; ``momentum_buf`` may be None when momentum == 0."""
    grads, size, step = ck.prepare_sgd(params, grads, momentum_buf, step, momentum, _F32)
    rc = lib.fastnn_sgd(_fp(params), _fp(grads), _fp_or_null(momentum_buf), size, step, lr,
                        momentum, dampening, 1 if nesterov else 0, weight_decay)
    if rc:
        _fail("sgd", rc)


def adam(params, grads, m, v, *, step, lr, beta1, beta2, eps, weight_decay=0.0):
    """torch.optim.Adam (amsgrad=False)."""
    grads, size = ck.prepare_update(params, grads, {"m": m, "v": v}, _F32)
    step = ck.check_step(step)
    rc = lib.fastnn_adam(_fp(params), _fp(grads), _fp(m), _fp(v), size, step, lr, beta1,
                         beta2, eps, weight_decay)
    if rc:
        _fail("adam", rc)


def adamw(params, grads, m, v, *, step, lr, beta1, beta2, eps, weight_decay=0.0):
    """torch.optim.AdamW (decoupled weight decay)."""
    grads, size = ck.prepare_update(params, grads, {"m": m, "v": v}, _F32)
    step = ck.check_step(step)
    rc = lib.fastnn_adamw(_fp(params), _fp(grads), _fp(m), _fp(v), size, step, lr, beta1,
                          beta2, eps, weight_decay)
    if rc:
        _fail("adamw", rc)


def rmsprop(params, grads, square_avg, momentum_buf, grad_avg, *, lr, alpha, eps,
            weight_decay=0.0, momentum=0.0, centered=False):
    """torch.optim.RMSprop; ``momentum_buf`` may be None when momentum == 0,
    ``grad_avg`` when not centered."""
    grads, size = ck.prepare_rmsprop(params, grads, square_avg, momentum_buf, grad_avg, momentum,
                                     centered, _F32)
    rc = lib.fastnn_rmsprop(_fp(params), _fp(grads), _fp(square_avg),
                            _fp_or_null(momentum_buf), _fp_or_null(grad_avg), size, lr, alpha,
                            eps, weight_decay, momentum, 1 if centered else 0)
    if rc:
        _fail("rmsprop", rc)


def adagrad(params, grads, sum_sq, *, step, lr, lr_decay=0.0, weight_decay=0.0, eps=1e-10):
    """torch.optim.Adagrad."""
    grads, size = ck.prepare_update(params, grads, {"sum_sq": sum_sq}, _F32)
    step = ck.check_step(step)
    rc = lib.fastnn_adagrad(_fp(params), _fp(grads), _fp(sum_sq), size, step, lr, lr_decay,
                            weight_decay, eps)
    if rc:
        _fail("adagrad", rc)


def nadam(params, grads, m, v, *, step, lr, beta1, beta2, eps, weight_decay=0.0,
          momentum_decay=4e-3, mu_product):
    """torch.optim.NAdam; ``mu_product`` = mu_1 * ... * mu_step (see ``nadam_mu``)."""
    grads, size = ck.prepare_update(params, grads, {"m": m, "v": v}, _F32)
    step = ck.check_step(step)
    rc = lib.fastnn_nadam(_fp(params), _fp(grads), _fp(m), _fp(v), size, step, lr, beta1,
                          beta2, eps, weight_decay, momentum_decay, mu_product)
    if rc:
        _fail("nadam", rc)


def adamax(params, grads, m, u, *, step, lr, beta1, beta2, eps, weight_decay=0.0):
    """torch.optim.Adamax."""
    grads, size = ck.prepare_update(params, grads, {"m": m, "u": u}, _F32)
    step = ck.check_step(step)
    rc = lib.fastnn_adamax(_fp(params), _fp(grads), _fp(m), _fp(u), size, step, lr, beta1,
                           beta2, eps, weight_decay)
    if rc:
        _fail("adamax", rc)


# ---- flat-buffer utilities -------------------------------------------------

def sum_squares(x):
    """sum(x^2) over a flat buffer (float32 values), accumulated in double."""
    x = ck.as_input("x", x, _F32, ndim=1)
    out = ffi.new("double *")
    rc = lib.fastnn_sum_squares(out, _fp(x), x.shape[0])
    if rc:
        _fail("sum_squares", rc)
    return float(out[0])


def scale(x, s):
    """x *= s in place."""
    ck.prepare_flat("x", x, _F32)
    rc = lib.fastnn_scale(_fp(x), x.shape[0], ck.check_scalar("s", s))
    if rc:
        _fail("scale", rc)


def clip(x, lo, hi):
    """x = min(max(x, lo), hi) in place."""
    ck.prepare_flat("x", x, _F32)
    lo, hi = ck.check_scalar("lo", lo), ck.check_scalar("hi", hi)
    if lo > hi:
        raise ValueError(f"lo: must be <= hi, got lo={lo}, hi={hi}")
    rc = lib.fastnn_clip(_fp(x), x.shape[0], lo, hi)
    if rc:
        _fail("clip", rc)


lib.fastnn_set_num_threads(_default_num_threads())


def axpy(y, x, alpha):
    """y += alpha * x in place."""
    x = ck.prepare_axpy(y, x, _F32)
    rc = lib.fastnn_axpy(_fp(y), _fp(x), y.shape[0], ck.check_scalar("alpha", alpha))
    if rc:
        _fail("axpy", rc)


# ---- a whole epoch ------------------------------------------------------------------

_LOSS_CODES = {"softmax_xent": 0, "bce": 1, "mse": 2, "mae": 3}
_OPT_CODES = {name: i for i, name in enumerate(
    ("sgd", "adam", "adamw", "rmsprop", "adagrad", "nadam", "adamax"))}
_I64 = ffi.typeof("int64_t[]")
_F64 = ffi.typeof("double[]")


def dense_stack_workspace(layers, batch_size, n_params):
    """Floats of workspace dense_stack_epoch needs here with the current
    thread count: every layer's outputs and their gradients for a full
    batch, and with several threads their partial products (n_params does
    not matter: threads share the gradient buffer)."""
    return _workspace(layers, batch_size, max(1, lib.fastnn_get_num_threads()))


def _workspace(layers, batch_size, threads):
    """csrc's workspace size for `threads` threads (1: the least the epoch
    runs with; a larger workspace lets it use more)."""
    spec = _layer_spec([(fi, fo, w, b, "identity", 0.0) for fi, fo, w, b, *_ in layers])
    return int(lib.fastnn_dense_stack_workspace(spec, len(layers), batch_size, threads))


def _layer_spec(layers):
    spec = ffi.new("fastnn_dense_layer[]", len(layers))
    for s, (fan_in, fan_out, w_off, b_off, act, slope) in zip(spec, layers):
        setattr(s, "in", fan_in)  # "in" is a Python keyword
        s.out, s.w_offset, s.b_offset = fan_out, w_off, b_off
        s.act, s.slope = ck.activation_code(act), slope
    return spec


def dense_stack_epoch(params, grads, states, workspace, X, targets, batch_losses,
                      batch_correct, *, layers, loss, batch_size, optimizer, hyper, step,
                      mu_product=1.0, l2=0.0, loss_scale=1.0, grad_scale=1.0, order=None):
    """One training epoch of a dense stack, entirely in C (see reference)."""
    X, targets, layers, n_batches, hyper, order = ck.prepare_dense_stack_epoch(
        params, grads, states, workspace, X, targets, batch_losses, batch_correct, layers,
        loss, batch_size, optimizer, hyper, step, l2, loss_scale, grad_scale, _F32,
        workspace_need=lambda norm, bs: _workspace(norm, bs, 1), order=order)
    spec = _layer_spec(layers)
    opt = ffi.new("fastnn_optimizer *")
    opt.kind = _OPT_CODES[optimizer]
    for key, value in hyper.items():
        setattr(opt, key, value)
    keep = [_fp(s) if s is not None else _NULL for s in states]
    for i, p in enumerate(keep):
        opt.state[i] = p
    opt.step = step
    opt.mu_product = mu_product
    n_done = ffi.new("int64_t *")
    is_labels = loss == "softmax_xent"
    rc = lib.fastnn_dense_stack_epoch(
        _fp(params), _fp(grads), params.shape[0], spec, len(layers), opt, _LOSS_CODES[loss],
        _fp(X), _ip(targets) if is_labels else _NULL, _NULL if is_labels else _fp(targets),
        X.shape[0], _NULL if order is None else ffi.from_buffer(_I64, order),
        0 if order is None else order.size, batch_size, l2, loss_scale, grad_scale,
        _fp(workspace), workspace.shape[0],
        ffi.from_buffer(_F64, batch_losses), ffi.from_buffer(_I64, batch_correct), n_done)
    if rc:
        _fail("dense_stack_epoch", rc)
    return int(n_done[0]), int(opt.step), float(opt.mu_product)


# ---- convolution, pooling, batch normalisation (channels-last) ------------------------

def conv2d_forward(Y, X, W, b, cols, *, stride=(1, 1), padding=(0, 0), activation="identity",
                   negative_slope=0.01):
    """Y = act(im2col(X) @ W + b); ``cols`` is left holding im2col(X)."""
    X, W, b, g, code, slope = ck.prepare_conv2d_forward(Y, X, W, b, cols, stride, padding,
                                                        activation, negative_slope, _F32)
    n, h, w, c, oh, ow, oc, kh, kw, sh, sw, ph, pw = g
    rc = lib.fastnn_conv2d_forward(_fp(Y), _fp(cols), _fp(X), _fp(W), _fp_or_null(b), n, h, w,
                                   c, oc, kh, kw, sh, sw, ph, pw, code, slope)
    if rc:
        _fail("conv2d_forward", rc)
    return Y


def conv2d_backward(dX, dW, db, dZ, dY, X, W, Y, cols, *, stride=(1, 1), padding=(0, 0),
                    activation="identity", negative_slope=0.01):
    """Backward of ``conv2d_forward``; dZ may be dY; db and dX may be None;
    ``cols`` is overwritten."""
    dY, X, W, Y, g, code, slope = ck.prepare_conv2d_backward(
        dX, dW, db, dZ, dY, X, W, Y, cols, stride, padding, activation, negative_slope, _F32)
    n, h, w, c, oh, ow, oc, kh, kw, sh, sw, ph, pw = g
    rc = lib.fastnn_conv2d_backward(_fp_or_null(dX), _fp(dW), _fp_or_null(db), _fp(dZ),
                                    _fp(cols), _fp(dY), _fp(W), _fp(Y), n, h, w, c, oc, kh, kw,
                                    sh, sw, ph, pw, code, slope)
    if rc:
        _fail("conv2d_backward", rc)


def maxpool2d_forward(Y, X, argmax, *, pool, stride=None):
    """Window maxima of X into Y, their flat h * W + w indices into argmax."""
    X, (n, h, w, c, oh, ow, kh, kw, sh, sw) = ck.prepare_pool_forward(Y, X, argmax, pool,
                                                                       stride, _F32)
    rc = lib.fastnn_maxpool2d_forward(_fp(Y), _ip(argmax), _fp(X), n, h, w, c, kh, kw, sh, sw)
    if rc:
        _fail("maxpool2d_forward", rc)
    return Y


def maxpool2d_backward(dX, dY, argmax, *, pool, stride=None):
    """dX = 0, then each dY added at its argmax."""
    dY, argmax, (n, h, w, c, oh, ow, kh, kw, sh, sw) = ck.prepare_pool_backward(
        dX, dY, argmax, pool, stride, _F32)
    rc = lib.fastnn_maxpool2d_backward(_fp(dX), _fp(dY), _ip(argmax), n, h, w, c, kh, kw, sh,
                                       sw)
    if rc:
        _fail("maxpool2d_backward", rc)


def avgpool2d_forward(Y, X, *, pool, stride=None):
    """Window means of X into Y (summed in double)."""
    X, (n, h, w, c, oh, ow, kh, kw, sh, sw) = ck.prepare_pool_forward(Y, X, None, pool, stride,
                                                                       _F32)
    rc = lib.fastnn_avgpool2d_forward(_fp(Y), _fp(X), n, h, w, c, kh, kw, sh, sw)
    if rc:
        _fail("avgpool2d_forward", rc)
    return Y


def avgpool2d_backward(dX, dY, *, pool, stride=None):
    """dX: each dY / (KH*KW) added over its window."""
    dY, _, (n, h, w, c, oh, ow, kh, kw, sh, sw) = ck.prepare_pool_backward(dX, dY, None, pool,
                                                                          stride, _F32)
    rc = lib.fastnn_avgpool2d_backward(_fp(dX), _fp(dY), n, h, w, c, kh, kw, sh, sw)
    if rc:
        _fail("avgpool2d_backward", rc)


def batchnorm_forward(Y, X, gamma, beta, mean, invstd, running_mean, running_var, *,
                      momentum=0.1, eps=1e-5):
    """Training-mode batch norm over the last axis; statistics in double."""
    X, gamma, beta, rows, c, momentum, eps = ck.prepare_batchnorm_forward(
        Y, X, gamma, beta, mean, invstd, running_mean, running_var, momentum, eps, _F32)
    rc = lib.fastnn_batchnorm_forward(_fp(Y), _fp(mean), _fp(invstd), _fp(running_mean),
                                      _fp(running_var), _fp(X), _fp(gamma), _fp(beta), rows, c,
                                      momentum, eps)
    if rc:
        _fail("batchnorm_forward", rc)
    return Y


def batchnorm_inference(Y, X, gamma, beta, running_mean, running_var, *, eps=1e-5):
    """Evaluation-mode batch norm with the running statistics."""
    X, gamma, beta, rm, rv, rows, c, eps = ck.prepare_batchnorm_inference(
        Y, X, gamma, beta, running_mean, running_var, eps, _F32)
    rc = lib.fastnn_batchnorm_inference(_fp(Y), _fp(X), _fp(gamma), _fp(beta), _fp(rm),
                                        _fp(rv), rows, c, eps)
    if rc:
        _fail("batchnorm_inference", rc)
    return Y


def batchnorm_backward(dX, dgamma, dbeta, dY, X, gamma, mean, invstd):
    """Backward of ``batchnorm_forward`` from X and the saved mean and invstd."""
    dY, X, gamma, mean, invstd, rows, c = ck.prepare_batchnorm_backward(
        dX, dgamma, dbeta, dY, X, gamma, mean, invstd, _F32)
    rc = lib.fastnn_batchnorm_backward(_fp(dX), _fp(dgamma), _fp(dbeta), _fp(dY), _fp(X),
                                       _fp(gamma), _fp(mean), _fp(invstd), rows, c)
    if rc:
        _fail("batchnorm_backward", rc)
