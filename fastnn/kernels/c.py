"""The ``c`` backend: fastnn's C kernels (csrc/) called through cffi.

The implementations of the kernels in :data:`fastnn.kernels.spec.KERNELS`
(the front, :mod:`fastnn.kernels`, validates and converts the arguments
once and then calls them; :mod:`fastnn.kernels.reference` documents each
kernel).  Each implementation only lists the C function's arguments,
taking the sizes from the arrays' shapes; :func:`_call` turns every
argument into its C form by the C parameter's type (:data:`_C_ARRAYS`) and
checks the return code.  Arrays are passed as pointers to their data, no
copy; the C calls release the GIL (cffi's API mode).  A non-zero return
code, which the front's checks should make impossible, raises RuntimeError.
"""

import inspect
import os

import numpy as np

from . import default_num_threads as _default_num_threads
from . import spec
from .reference import asarray, empty, to_numpy, zeros  # noqa: F401 - same on the host

# GNU OpenMP's threads spin for ~300,000 iterations at every barrier before
# they sleep.  With more runnable threads than cores (a shared machine,
# another library's pool) a spinning thread holds the core the late thread
# needs, and the epoch's per-batch barriers cost whole time slices.  Measured
# (2 threads, MLP 784-256-128-10, batch 32, one other busy process): default
# 9k samples/s, spin 10000: 21k, 3000: 32k, 1000: 48k; on a quiet machine
# 1000 costs at most ~10% (65-80k, within the noise).  libgomp reads this
# once, when it is loaded; an explicit OMP_WAIT_POLICY or GOMP_SPINCOUNT wins.
# (The dense epoch's barriers are no longer libgomp's: on a quiet Sapphire
# Rapids host 1000 spins cost its 2-thread epoch 15-20%, so they spin ~50 us
# inside the call, and ~10 us on a busy machine: runtime.c
# fastnn_barrier_wait, set_barrier_spin, bench/NOTES.md entry 60; a
# CNN's threaded epoch keeps one team at such a barrier, set_epoch_team,
# entry 61.)
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
DTYPE = np.float32

# The C pointer types an array is passed for, and the cffi array type its
# data is viewed as (ffi.from_buffer: no copy; None becomes NULL).  The
# front gives float32 arrays for float *, labels and argmax as int32 and
# order as int64; the epoch's batch losses are float64.  Sizes, codes,
# flags and scalars are passed as they are.
_C_ARRAYS = {cname: ffi.typeof(cname[:-2] + "[]")
             for cname in ("float *", "double *", "int32_t *", "int64_t *")}

_SIMD_NAMES = ("generic", "avx2", "avx512")   # index = enum fastnn_simd


def _c_array(array, x):
    """Array x as a C pointer: its data viewed as cffi type `array`; None: NULL."""
    return ffi.NULL if x is None else ffi.from_buffer(array, x)


_ARRAY_PARAMS = {}  # C function -> its array parameters: ((index, cffi array type), ...)


def _array_params(fn):
    params = _ARRAY_PARAMS.get(fn)
    if params is None:
        params = _ARRAY_PARAMS[fn] = tuple((i, _C_ARRAYS[t.cname])
                                           for i, t in enumerate(ffi.typeof(fn).args)
                                           if t.cname in _C_ARRAYS)
    return params


def _call(fn, *args):
    """Call C kernel `fn` with the implementation's arguments in C form."""
    args = list(args)
    for i, array in _array_params(fn):
        args[i] = _c_array(array, args[i])
    rc = fn(*args)
    if rc:
        raise RuntimeError(f"{fn.__name__}: C kernel returned error {rc} (arguments passed "
                           "the front's checks; this is a bug)")


def _value(fn, dtype, *args):
    """Call a C kernel whose first argument receives one value of `dtype`;
    return the value."""
    out = np.empty(1, dtype)
    _call(fn, out, *args)
    return float(out[0])


# ---- runtime -----------------------------------------------------------------

def info():
    """What this backend is: backend, threads, SIMD path in use and best available."""
    return {"backend": name, "threads": lib.fastnn_get_num_threads(),
            "simd": _SIMD_NAMES[lib.fastnn_simd_path()],
            "simd_best": _SIMD_NAMES[lib.fastnn_simd_best()]}


def set_num_threads(n):
    """Number of OpenMP threads the C kernels use (an integer >= 1)."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n < 2 ** 31:
        raise ValueError(f"n: expected an integer in [1, 2**31) (a C int), got {n!r}")
    lib.fastnn_set_num_threads(int(n))


def set_cold_factor(factor):
    """How much larger a kernel's work must be to go parallel when the
    OpenMP team has probably gone to sleep since its last region (an integer
    >= 1; default 16; 1: the same thresholds whether it spins or sleeps).
    Returns the previous factor.  Results do not depend on it."""
    if isinstance(factor, bool) or not isinstance(factor, (int, np.integer)) \
            or not 1 <= factor < 2 ** 31:
        raise ValueError(f"factor: expected an integer in [1, 2**31) (a C int), got {factor!r}")
    return int(lib.fastnn_set_cold_factor(int(factor)))


def set_barrier_spin(us):
    """How long (microseconds, an integer >= 0) a thread of a threaded
    training epoch spins at one of its barriers before it sleeps until the
    others arrive; None restores the default (50 us or libgomp's spin if
    longer, ~10 us for the rest of an epoch whose threads are often
    preempted; 0 under OMP_WAIT_POLICY=passive; forever under active).  A
    team of more threads than processors never spins, whatever the setting.
    Returns the previous setting (None: the default).  Results do not
    depend on it."""
    if us is None:
        us = -1
    elif isinstance(us, bool) or not isinstance(us, (int, np.integer)) or not 0 <= us < 2 ** 63:
        raise ValueError(f"us: expected an integer in [0, 2**63) or None, got {us!r}")
    before = int(lib.fastnn_set_barrier_spin(int(us)))
    return None if before < 0 else before


def set_epoch_team(on):
    """Whether a threaded compiled epoch of a model that is not a plain
    dense stack (CNNs, BatchNorm, Dropout, residual blocks; not recurrent
    layers) keeps one team of threads for the whole epoch, handing each
    kernel's work to threads that wait at a spinning barrier, rather than
    waking libgomp's sleeping workers for every kernel (True, the default)
    or not (False); None leaves it.  Returns the previous setting.
    Results do not depend on it."""
    if on is not None and not isinstance(on, (bool, np.bool_)):
        raise ValueError(f"on: expected True, False or None, got {on!r}")
    return bool(lib.fastnn_set_epoch_team(-1 if on is None else int(bool(on))))


def run_serial(on):
    """While on, every C kernel this thread calls runs on this thread alone
    (other threads keep the set thread count); returns the previous setting."""
    return bool(lib.fastnn_run_serial(1 if on else 0))


def flush_denormals(on):
    """Flush denormals to zero (FTZ + DAZ; on=True) or keep them (False) in
    the C kernels' threads and the calling thread, until called again;
    returns the calling thread's previous setting.  Not a default: every
    kernel keeps IEEE denormals unless a caller asks (fastnn.sklearn's
    L-BFGS objective does, around its full-batch epoch)."""
    return bool(lib.fastnn_flush_denormals(1 if on else 0))


def epoch_threads():
    """The threads dense_stack_epoch may use (it takes fewer for small
    batches, or when the workspace is sized for fewer)."""
    return lib.fastnn_get_num_threads()


def set_simd_path(path):
    """Force the gemm micro-kernel: 'generic', 'avx2' or 'avx512' (for tests).

    Raises ValueError for an unknown name or a path this CPU lacks.
    """
    if path not in _SIMD_NAMES:
        raise ValueError(f"path: unknown {path!r}; expected one of {', '.join(_SIMD_NAMES)}")
    if lib.fastnn_set_simd_path(_SIMD_NAMES.index(path)) != 0:
        raise ValueError(f"path: {path!r} is not supported by this CPU "
                         f"(best: {_SIMD_NAMES[lib.fastnn_simd_best()]!r})")


lib.fastnn_set_num_threads(_default_num_threads())


# ---- matrix multiply, dense layer ----------------------------------------------
# Row-major and C-contiguous: each leading dimension is the row length.

def gemm(A, B, C, trans_a, trans_b, alpha, beta):
    m, n = C.shape
    _call(lib.fastnn_gemm, trans_a, trans_b, m, n, A.shape[0 if trans_a else 1], alpha,
          A, A.shape[1], B, B.shape[1], beta, C, n)


def dense_forward(Y, X, W, b, activation, negative_slope):
    _call(lib.fastnn_dense_forward, Y, X, W, b, *X.shape, W.shape[1], activation,
          negative_slope)


def dense_backward(dX, dW, db, dZ, dY, X, W, Y, activation, negative_slope):
    _call(lib.fastnn_dense_backward, dX, dW, db, dZ, dY, X, W, Y, *X.shape, W.shape[1],
          activation, negative_slope)


# ---- activations, losses (elementwise over any shape, or rows (n, c)) --------

def activation_forward(Y, X, activation, negative_slope):
    _call(lib.fastnn_activation_forward, Y, X, Y.size, activation, negative_slope)


def activation_backward(dX, dY, Y, activation, negative_slope):
    _call(lib.fastnn_activation_backward, dX, dY, Y, dX.size, activation, negative_slope)


def softmax_forward(Y, X):
    _call(lib.fastnn_softmax_forward, Y, X, *X.shape)


def softmax_backward(dX, dY, Y):
    _call(lib.fastnn_softmax_backward, dX, dY, Y, *dY.shape)


def softmax_xent_forward(P, Z, labels):
    return _value(lib.fastnn_softmax_xent_forward, np.float32, P, Z, labels, *Z.shape)


def softmax_xent_backward(dZ, P, labels):
    _call(lib.fastnn_softmax_xent_backward, dZ, P, labels, *P.shape)


def bce_forward(Z, T):
    return _value(lib.fastnn_bce_forward, np.float32, Z, T, Z.size)


def bce_backward(dZ, Z, T):
    _call(lib.fastnn_bce_backward, dZ, Z, T, Z.size)


def mse_forward(Y, T):
    return _value(lib.fastnn_mse_forward, np.float32, Y, T, Y.size)


def mse_backward(dY, Y, T):
    _call(lib.fastnn_mse_backward, dY, Y, T, Y.size)


def mae_forward(Y, T):
    return _value(lib.fastnn_mae_forward, np.float32, Y, T, Y.size)


def mae_backward(dY, Y, T):
    _call(lib.fastnn_mae_backward, dY, Y, T, Y.size)


# ---- optimizer updates -------------------------------------------------------
# Every update in csrc/fastnn.h takes the buffers, their size, then the spec's
# options in order, so its wrapper is derived from the spec: an optimizer
# whose C kernel is not (yet) in the library runs the reference's.

def _update(o):
    """The implementation of optimizer `o` (a spec.OptimizerSpec): its C kernel."""
    fn, n_buffers = getattr(lib, "fastnn_" + o.name), 2 + len(o.states)

    def update(*args):
        _call(fn, *args[:n_buffers], args[0].size, *args[n_buffers:])

    update.__name__ = update.__qualname__ = o.name
    update.__signature__ = inspect.Signature(
        [inspect.Parameter(p, inspect.Parameter.POSITIONAL_OR_KEYWORD)
         for p in spec.KERNELS[o.name].params])
    return update


globals().update({name: _update(o) for name, o in spec.OPTIMIZERS.items()
                  if hasattr(lib, "fastnn_" + name)})


# ---- flat-buffer utilities ---------------------------------------------------

def sum_squares(x):
    return _value(lib.fastnn_sum_squares, np.float64, x, x.size)


def scale(x, s):
    _call(lib.fastnn_scale, x, x.size, s)


def clip(x, lo, hi):
    _call(lib.fastnn_clip, x, x.size, lo, hi)


def axpy(y, x, alpha):
    _call(lib.fastnn_axpy, y, x, y.size, alpha)


# ---- a whole epoch ------------------------------------------------------------

# The array fields of struct fastnn_epoch and fastnn_model_epoch: {name: cffi
# array type}.
_EPOCH_ARRAYS = {key: _C_ARRAYS[f.type.cname] for key, f in ffi.typeof("fastnn_epoch").fields
                 if f.type.cname in _C_ARRAYS}
_MODEL_EPOCH_ARRAYS = {key: _C_ARRAYS[f.type.cname]
                       for key, f in ffi.typeof("fastnn_model_epoch").fields
                       if f.type.cname in _C_ARRAYS}


def _epoch_pointers(fields, arrays):
    """The epoch's arrays as C pointers ({field: pointer}), by the struct's
    field types.  They must outlive the call: the struct only holds their
    addresses."""
    return {key: _c_array(fields[key], a) for key, a in arrays.items()}


def _targets(epoch):
    """The C fields of an epoch's targets: labels for softmax_xent, else T."""
    labelled = epoch.loss == "softmax_xent"
    return {"labels": epoch.targets if labelled else None,
            "T": None if labelled else epoch.targets}


def _optimizer(epoch):
    """The fastnn_optimizer initialiser of an epoch (spec.Epoch or
    spec.ModelEpoch): kind, hyperparameters, state pointers, counters.  Keep
    it while the struct built from it is used (it holds the pointers)."""
    states = [_c_array(_C_ARRAYS["float *"], s) for s in epoch.states]
    return dict(epoch.hyper, kind=spec.OPTIMIZERS[epoch.optimizer].code, state=states,
                step=epoch.step, mu_product=epoch.mu_product)


def _order_size(epoch):
    return 0 if epoch.order is None else epoch.order.size


def dense_stack_epoch(epoch):
    """The epoch in one C call: spec.Epoch as the C struct fastnn_epoch."""
    pointers = _epoch_pointers(_EPOCH_ARRAYS, dict(
        _targets(epoch), params=epoch.params, grads=epoch.grads, X=epoch.X, order=epoch.order,
        workspace=epoch.workspace, batch_loss=epoch.batch_losses,
        batch_correct=epoch.batch_correct))
    layers = ffi.new("fastnn_dense_layer[]", list(epoch.layers))  # spec.DenseLayer's order
    opt = _optimizer(epoch)
    e = ffi.new("fastnn_epoch *", dict(
        pointers, n_params=epoch.params.size, layers=layers, n_layers=len(epoch.layers),
        opt=opt, loss=spec.LOSS_CODES[epoch.loss], n=epoch.X.shape[0],
        n_order=_order_size(epoch), batch=epoch.batch_size, l2=epoch.l2,
        loss_scale=epoch.loss_scale, grad_scale=epoch.grad_scale,
        workspace_size=epoch.workspace.size))
    _call(lib.fastnn_dense_stack_epoch, e)
    return int(e.n_done), int(e.opt.step), float(e.opt.mu_product)


# ---- the epoch hook: C calls _fastnn_hook_trampoline(ctx, event, batch) -----------------

class _HookCall:
    """What a C epoch's hook_ctx points to (a cffi handle of it): the
    Python hook, and the exception it raised (the C epoch stops on the
    non-zero return; model_epoch raises it after the call returns)."""

    __slots__ = ("hook", "error", "handle")

    def __init__(self, hook):
        self.hook = hook
        self.error = None
        self.handle = ffi.new_handle(self)

    def reraise(self):
        if self.error is not None:
            error, self.error = self.error, None
            raise error


_EVENTS = {int(e): e for e in spec.HookEvent}


@ffi.def_extern(name="_fastnn_hook_trampoline")
def _hook_trampoline(ctx, event, batch):
    call = ffi.from_handle(ctx)
    try:
        call.hook(_EVENTS[event], batch)
    except BaseException as exc:  # noqa: B036 - KeyboardInterrupt too: re-raised unchanged
        call.error = exc
        return 1
    return 0


def _hook_fields(epoch):
    """The C hook fields of an epoch and the _HookCall behind them (None
    without a hook)."""
    if epoch.hook is None:
        return {}, None
    call = _HookCall(epoch.hook)
    return {"hook": lib._fastnn_hook_trampoline, "hook_ctx": call.handle,
            "hook_every": epoch.hook_every,
            "hook_events": spec.hook_mask(spec.hook_events(epoch.hook))}, call


def model_epoch(epoch):
    """The epoch of a compiled model in one C call: spec.ModelEpoch as the C
    struct fastnn_model_epoch (plan, plan_scalars and penalized as int64 /
    float64 / int64 arrays; buffers and iworkspace may be empty).  The hook
    is called through _fastnn_hook_trampoline; its exception, if any, is
    raised here once the C epoch has stopped."""
    c, keep = _model_epoch_struct(epoch)
    try:
        _call(lib.fastnn_model_epoch_run, c)
    finally:
        call = keep[-1]
        if call is not None:
            call.reraise()
    del keep
    return int(c.n_done), int(c.opt.step), float(c.opt.mu_product)


def model_epochs(epochs):
    """Several models' epochs in one C call, side by side (one model per
    thread): fastnn_model_epochs_run over an array of the structs."""
    structs = [_model_epoch_struct(e) for e in epochs]
    array = ffi.new("fastnn_model_epoch[]", len(structs))
    for i, (c, _) in enumerate(structs):
        array[i] = c[0]
    rcs = ffi.new("int[]", len(structs))
    rc = lib.fastnn_model_epochs_run(array, len(structs), rcs)
    for _, keep in structs:  # (the first hook's exception; each stopped its own epoch)
        if keep[-1] is not None:
            keep[-1].reraise()
    if rc:
        bad = [i for i in range(len(structs)) if rcs[i]]
        raise RuntimeError(f"fastnn_model_epochs_run: C kernel returned error {rc} for epochs "
                           f"{bad} (arguments passed the front's checks; this is a bug)")
    del structs  # (kept the arrays' pointers alive through the call)
    return [(int(a.n_done), int(a.opt.step), float(a.opt.mu_product)) for a in array]


def _model_epoch_struct(e):
    """A fastnn_model_epoch for spec.ModelEpoch e, and what must outlive
    its use (the arrays its pointers point into)."""
    plan = np.ascontiguousarray(e.plan, dtype=np.int64).reshape(-1, len(spec.PLAN_FIELDS))
    scal = np.ascontiguousarray(e.plan_scalars, dtype=np.float64).reshape(
        -1, len(spec.PLAN_SCALARS))
    pen = np.ascontiguousarray(e.penalized, dtype=np.int64).reshape(-1, 2)
    tra = (None if e.trainable is None
           else np.ascontiguousarray(e.trainable, dtype=np.int64).reshape(-1, 2))
    # an empty buffer has no address to give: NULL, with its size 0
    buffers = e.buffers if e.buffers is not None and e.buffers.size else None
    iws = e.iworkspace if e.iworkspace is not None and e.iworkspace.size else None
    pointers = _epoch_pointers(_MODEL_EPOCH_ARRAYS, dict(
        _targets(e), params=e.params, grads=e.grads, buffers=buffers,
        plan=plan if plan.size else None, plan_scalars=scal if scal.size else None,
        penalized=pen if pen.size else None, trainable=tra, X=e.X, order=e.order, workspace=e.workspace,
        iworkspace=iws, batch_loss=e.batch_losses, batch_correct=e.batch_correct))
    opt = _optimizer(e)
    hook, call = _hook_fields(e)
    c = ffi.new("fastnn_model_epoch *", dict(
        pointers, **hook, n_params=e.params.size, n_buffers=0 if buffers is None else buffers.size,
        n_records=plan.shape[0], n_penalized=pen.shape[0],
        n_trainable=0 if tra is None else tra.shape[0], opt=opt,
        loss=spec.LOSS_CODES[e.loss], n=e.X.shape[0], in_size=e.in_size,
        out_size=e.out_size, n_order=_order_size(e), batch=e.batch_size, xb=e.xb, tb=e.tb,
        lb=e.lb, output=e.output, doutput=e.doutput, l2=e.l2, loss_scale=e.loss_scale,
        grad_scale=e.grad_scale, clip_value=e.clip_value, clip_norm=e.clip_norm,
        workspace_size=e.workspace.size, iworkspace_size=0 if iws is None else iws.size))
    return c, (pointers, plan, scal, pen, tra, opt, call)


# ---- dropout (Philox4x32-10 masks) ---------------------------------------------

def dropout_forward(Y, X, p, seed, counter):
    _call(lib.fastnn_dropout_forward, Y, X, X.size, p, seed, counter)


def dropout_backward(dX, dY, p, seed, counter):
    _call(lib.fastnn_dropout_backward, dX, dY, dY.size, p, seed, counter)


# ---- convolution, pooling, batch normalisation (channels-last) ----------------
# X (n, h, w, c), W (kh, kw, c, oc); stride, padding and pool are (h, w) pairs.

def conv2d_forward(Y, X, W, b, cols, stride, padding, activation, negative_slope):
    _call(lib.fastnn_conv2d_forward, Y, cols, X, W, b, *X.shape, W.shape[3], *W.shape[:2],
          *stride, *padding, activation, negative_slope)


def conv2d_backward(dX, dW, db, dZ, dY, X, W, Y, cols, stride, padding, activation,
                    negative_slope):
    # (C reads X through cols, as conv2d_forward left it)
    _call(lib.fastnn_conv2d_backward, dX, dW, db, dZ, cols, dY, W, Y, *X.shape, W.shape[3],
          *W.shape[:2], *stride, *padding, activation, negative_slope)


def maxpool2d_forward(Y, X, argmax, pool, stride):
    _call(lib.fastnn_maxpool2d_forward, Y, argmax, X, *X.shape, *pool, *stride)


def maxpool2d_backward(dX, dY, argmax, pool, stride):
    _call(lib.fastnn_maxpool2d_backward, dX, dY, argmax, *dX.shape, *pool, *stride)


def avgpool2d_forward(Y, X, pool, stride):
    _call(lib.fastnn_avgpool2d_forward, Y, X, *X.shape, *pool, *stride)


def avgpool2d_backward(dX, dY, pool, stride):
    _call(lib.fastnn_avgpool2d_backward, dX, dY, *dX.shape, *pool, *stride)


# Batch norm: X (..., c) is (rows, c) for C.

def batchnorm_forward(Y, X, gamma, beta, mean, invstd, running_mean, running_var, momentum,
                      eps):
    _call(lib.fastnn_batchnorm_forward, Y, mean, invstd, running_mean, running_var, X, gamma,
          beta, X.size // gamma.size, gamma.size, momentum, eps)


def batchnorm_inference(Y, X, gamma, beta, running_mean, running_var, eps):
    _call(lib.fastnn_batchnorm_inference, Y, X, gamma, beta, running_mean, running_var,
          X.size // gamma.size, gamma.size, eps)


def batchnorm_backward(dX, dgamma, dbeta, dY, X, gamma, mean, invstd):
    _call(lib.fastnn_batchnorm_backward, dX, dgamma, dbeta, dY, X, gamma, mean, invstd,
          X.size // gamma.size, gamma.size)


# ---- recurrent layers (csrc/rnn.c) -----------------------------------------------
# X (n, L, c), W_hh (h, G h); cell and activation are codes.

def rnn_forward(Hs, G, X, W_ih, W_hh, b_ih, b_hh, cell, activation):
    _call(lib.fastnn_rnn_forward, Hs, G, X, W_ih, W_hh, b_ih, b_hh, *X.shape, W_hh.shape[0],
          cell, activation)


def rnn_backward(dX, dW_ih, dW_hh, db_ih, db_hh, dHs, G, X, W_ih, W_hh, Hs, cell, activation):
    _call(lib.fastnn_rnn_backward, dX, dW_ih, dW_hh, db_ih, db_hh, dHs, G, X, W_ih, W_hh, Hs,
          *X.shape, W_hh.shape[0], cell, activation)
