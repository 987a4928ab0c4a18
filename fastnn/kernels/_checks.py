"""Argument checks shared by every kernel backend.

Every public kernel of every backend starts with one call into this module, so
that bad input raises the same clear Python exception on every backend before
any kernel runs, and so that C code is only ever called with sizes that
describe the buffers it is given.

Policy
------
* Inputs that are not of the backend's dtype, or not C-contiguous, are
  converted (a copy); this is said in each kernel's docstring.
* Outputs are never converted: an output must already have the right shape,
  the backend's dtype, be C-contiguous and writable, else TypeError/ValueError.
* An output may not overlap any input, except where a kernel documents that it
  may be the *same* array as one named input (in-place operation).

Arrays may be numpy arrays or, on the cuda backend, numba device arrays: the
checks only use ``shape``, ``dtype``, contiguity and the data pointer from the
array interface.

Each ``prepare_<kernel>`` takes the kernel's public arguments (in the order
of ``spec.KERNELS[kernel].params``), the backend's compute dtype and its
host-to-device conversion (None on the host), and returns the same arguments
normalised (see :mod:`fastnn.kernels.spec`): the front in
``fastnn/kernels/__init__.py`` calls it once, then the backend's
implementation with what it returns.
"""

import bisect
import dataclasses
import functools
import math
import weakref

import numpy as np

from . import spec
from .spec import ACTIVATIONS, activation_code  # noqa: F401 - re-exported for the layers


def _pointer(x):
    iface = getattr(x, "__cuda_array_interface__", None)
    if iface is None:
        iface = x.__array_interface__
    return iface["data"][0]


def _nbytes(x):
    return math.prod(x.shape) * x.dtype.itemsize


def _c_contiguous(x):
    flags = getattr(x, "flags", None)
    if flags is not None and hasattr(flags, "c_contiguous"):
        return flags.c_contiguous
    return x.is_c_contiguous()  # numba device array


def _is_device(x):
    # numba device arrays; the CUDA simulator's lack __cuda_array_interface__
    return not isinstance(x, np.ndarray) and (hasattr(x, "__cuda_array_interface__")
                                              or hasattr(x, "copy_to_host"))


def overlaps(a, b):
    """True if the memory of arrays a and b overlaps."""
    if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
        return np.shares_memory(a, b)  # bounds first, exact for strided views
    na, nb = _nbytes(a), _nbytes(b)
    if na == 0 or nb == 0:
        return False
    pa, pb = _pointer(a), _pointer(b)
    return pa < pb + nb and pb < pa + na


def same_array(a, b):
    """True if a and b are the same buffer with the same shape (in place)."""
    return a is b or (tuple(a.shape) == tuple(b.shape) and np.dtype(a.dtype) == np.dtype(b.dtype)
                      and overlaps(a, b) and _pointer(a) == _pointer(b))


def _shape_str(shape):
    return "(" + ", ".join(str(s) for s in shape) + (",)" if len(shape) == 1 else ")")


def as_input(name, x, dtype, ndim=None, shape=None):
    """Return x as a C-contiguous array of `dtype`, checking ndim and shape.

    A dimension given as None in `shape` is free.  Host arrays stay on the
    host: the front moves them to a device backend after every check, so
    that overlaps are judged on the caller's arrays.
    """
    if x is None:
        raise TypeError(f"{name}: expected an array, got None")
    if not (hasattr(x, "shape") and hasattr(x, "dtype")):
        try:
            x = np.asarray(x)
        except Exception as exc:  # noqa: BLE001 - re-raised with the name
            raise TypeError(f"{name}: expected an array, got {type(x).__name__}") from exc
    dt = np.dtype(x.dtype)
    if dt.kind not in "fiub":
        raise TypeError(f"{name}: expected a numeric array, got dtype {dt}")
    _check_shape(name, x, ndim, shape)
    if _is_device(x):
        if dt != dtype or not _c_contiguous(x):
            raise TypeError(f"{name}: device arrays must be C-contiguous {np.dtype(dtype)}, "
                            f"got {dt}")
        return x
    return np.asarray(x, dtype=dtype, order="C")  # keeps 0-d arrays 0-d


def as_labels(name, labels, n, classes):
    """Integer class labels of shape (n,) in [0, classes), as C-contiguous
    int32.  The range is checked before the narrowing cast, so 2**32 + 1 is
    refused rather than read as 1.  (Device labels are the caller's.)"""
    return as_indices(name, labels, classes, ndim=1, shape=(n,), what="integer class labels", noun="")


def as_indices(name, x, high, ndim=None, shape=None, what="integers", noun="indices "):
    """Integer indices in [0, high) as C-contiguous int32, the range checked
    on the caller's integers before the narrowing cast (int64 2**32 + 1 is
    refused, not read as 1); floats are refused.  Device arrays must
    already be int32 (their range is the caller's)."""
    if _is_device(x):
        return as_input(name, x, np.int32, ndim=ndim, shape=shape)
    if x is not None and hasattr(x, "dtype") and np.dtype(x.dtype).kind == "f":
        raise TypeError(f"{name}: expected {what}, got dtype {np.dtype(x.dtype)}")
    x = as_input(name, x, np.asarray(x).dtype if x is not None else np.int32, ndim=ndim,
                 shape=shape)
    if np.dtype(x.dtype).kind not in "iu":
        raise TypeError(f"{name}: expected {what}, got dtype {x.dtype}")
    if x.size:
        lo, hi = x.min(), x.max()
        if lo < 0 or hi >= high:
            raise ValueError(f"{name}: {noun}must lie in [0, {high}), got values in [{lo}, {hi}]")
    return np.ascontiguousarray(x, dtype=np.int32)


def check_output(name, x, dtype, shape):
    """Check an output array: exact shape, dtype, C-contiguous, writable."""
    if x is None:
        raise TypeError(f"{name}: expected an output array, got None")
    if not (hasattr(x, "shape") and hasattr(x, "dtype")):
        raise TypeError(f"{name}: expected an output array, got {type(x).__name__}")
    _check_shape(name, x, len(shape), shape)
    if np.dtype(x.dtype) != np.dtype(dtype):
        raise TypeError(f"{name}: output must have dtype {np.dtype(dtype)}, got {np.dtype(x.dtype)}")
    if not _c_contiguous(x):
        raise ValueError(f"{name}: output must be C-contiguous")
    flags = getattr(x, "flags", None)
    if isinstance(x, np.ndarray) and not flags.writeable:
        raise ValueError(f"{name}: output array is read-only")
    return x


def check_no_alias(out_name, out, inputs, inplace_ok=()):
    """Refuse an output that overlaps an input.

    `inputs` maps names to arrays (None entries are skipped); names in
    `inplace_ok` may be the very same array as the output.
    """
    for name, arr in inputs.items():
        if arr is None or arr is out:
            if arr is out and arr is not None and name not in inplace_ok:
                raise ValueError(f"{out_name}: output overlaps input {name} (the same array)")
            continue
        if overlaps(out, arr):
            if name in inplace_ok and same_array(out, arr):
                continue
            raise ValueError(f"{out_name}: output overlaps input {name}")


def _check_shape(name, x, ndim, shape):
    if ndim is not None and len(x.shape) != ndim:
        raise ValueError(f"{name}: expected a {ndim}-D array, got shape {_shape_str(x.shape)}")
    if shape is not None:
        for want, got in zip(shape, x.shape):
            if want is not None and want != got:
                want_str = _shape_str(["*" if s is None else s for s in shape])
                raise ValueError(f"{name}: expected shape {want_str}, got {_shape_str(x.shape)}")


def check_scalar(name, value, low=None, high=None, low_open=False, high_open=False):
    """A finite real scalar within [low, high] (low excluded if low_open,
    high if high_open).  Strings and bools are refused (float('1') and
    float(True) would take them)."""
    if isinstance(value, (str, bytes, bool, np.bool_)):
        raise TypeError(f"{name}: expected a real number, got {value!r}")
    try:
        v = float(value)
    except (TypeError, ValueError, OverflowError):
        raise TypeError(f"{name}: expected a real number, got {value!r}") from None
    if not math.isfinite(v):  # (math's: np.isfinite costs ~1 us a scalar)
        raise ValueError(f"{name}: must be finite, got {v}")
    if low is not None and (v < low or (low_open and v == low)):
        raise ValueError(f"{name}: must be {'>' if low_open else '>='} {low}, got {v}")
    if high is not None and (v > high or (high_open and v == high)):
        raise ValueError(f"{name}: must be {'<' if high_open else '<='} {high}, got {v}")
    return v


def check_flag(name, value):
    """A bool (numpy's too, or the integers 0 and 1): bool('no') is True,
    so a string is refused rather than read as a flag."""
    if isinstance(value, (bool, np.bool_)) or (isinstance(value, (int, np.integer))
                                               and value in (0, 1)):
        return bool(value)
    raise TypeError(f"{name}: expected a bool, got {value!r}")


# Step counters stay far below int64's limit, so that an epoch adding its
# batches to one cannot overflow in the compiled code.
MAX_STEP = 2 ** 62


def check_step(step):
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)) \
            or not 1 <= step <= MAX_STEP:
        raise ValueError(f"step: expected an integer in [1, 2**62], got {step!r}")
    return int(step)


# ---------------------------------------------------------------------------
# One preparation function per kernel.  Each validates every argument of the
# kernel of the same name, converts inputs, and returns the kernel's
# arguments normalised, in order.  `dtype` is the backend's compute dtype.

def prepare_gemm(A, B, C, trans_a, trans_b, alpha, beta, dtype):
    trans_a, trans_b = check_flag("trans_a", trans_a), check_flag("trans_b", trans_b)
    A = as_input("A", A, dtype, ndim=2)
    B = as_input("B", B, dtype, ndim=2)
    m, k = (A.shape[1], A.shape[0]) if trans_a else A.shape
    kb, n = (B.shape[1], B.shape[0]) if trans_b else B.shape
    if k != kb:
        raise ValueError(f"B: inner dimensions differ: op(A) is ({m}, {k}) but op(B) is "
                         f"({kb}, {n}) (trans_a={bool(trans_a)}, trans_b={bool(trans_b)})")
    if m == 0 or n == 0 or k == 0:
        raise ValueError(f"gemm: every dimension must be >= 1, got m={m}, n={n}, k={k}")
    check_output("C", C, dtype, (m, n))
    check_no_alias("C", C, {"A": A, "B": B})
    return (A, B, C, trans_a, trans_b, check_scalar("alpha", alpha),
            check_scalar("beta", beta))


def _dense_dims(X, W, dtype):
    X = as_input("X", X, dtype, ndim=2)
    W = as_input("W", W, dtype, ndim=2, shape=(X.shape[1], None))
    n, fan_in = X.shape
    fan_out = W.shape[1]
    if n == 0 or fan_in == 0 or fan_out == 0:
        raise ValueError(f"dense: every dimension must be >= 1, got n={n}, in={fan_in}, "
                         f"out={fan_out}")
    return X, W, n, fan_in, fan_out


def _activation(activation, negative_slope):
    return activation_code(activation), check_scalar("negative_slope", negative_slope, low=0.0)


def prepare_dense_forward(Y, X, W, b, activation, negative_slope, dtype):
    X, W, n, fan_in, fan_out = _dense_dims(X, W, dtype)
    if b is not None:
        b = as_input("b", b, dtype, ndim=1, shape=(fan_out,))
    check_output("Y", Y, dtype, (n, fan_out))
    check_no_alias("Y", Y, {"X": X, "W": W, "b": b})
    return (Y, X, W, b, *_activation(activation, negative_slope))


def _in_place_input(out_name, out, in_name, x, dtype, **shape):
    """Input x, which may be the output `out` itself (in place)."""
    if out is x or (hasattr(x, "shape") and same_array(out, x)):
        return out
    return as_input(in_name, x, dtype, **shape)


def prepare_dense_backward(dX, dW, db, dZ, dY, X, W, Y, activation, negative_slope,
                           dtype):
    X, W, n, fan_in, fan_out = _dense_dims(X, W, dtype)
    Y = as_input("Y", Y, dtype, ndim=2, shape=(n, fan_out))
    check_output("dZ", dZ, dtype, (n, fan_out))
    dY = _in_place_input("dZ", dZ, "dY", dY, dtype, ndim=2, shape=(n, fan_out))
    check_no_alias("dZ", dZ, {"dY": dY, "X": X, "W": W, "Y": Y}, inplace_ok=("dY",))
    check_output("dW", dW, dtype, (fan_in, fan_out))
    inputs = {"dY": dY, "X": X, "W": W, "Y": Y, "dZ": dZ}
    check_no_alias("dW", dW, inputs)
    if db is not None:
        check_output("db", db, dtype, (fan_out,))
        check_no_alias("db", db, dict(inputs, dW=dW))
    if dX is not None:
        check_output("dX", dX, dtype, (n, fan_in))
        check_no_alias("dX", dX, dict(inputs, dW=dW, db=db))
    return (dX, dW, db, dZ, dY, X, W, Y, *_activation(activation, negative_slope))


def _elementwise_out(out_name, out, in_name, x, dtype, shape=None):
    """An output with the shape of input x (or `shape`); out may be x itself."""
    if out is x or (hasattr(x, "shape") and out is not None
                    and hasattr(out, "shape") and same_array(out, x)):
        check_output(out_name, out, dtype, tuple(out.shape))
        return out
    x = as_input(in_name, x, dtype)
    check_output(out_name, out, dtype, tuple(x.shape) if shape is None else shape)
    check_no_alias(out_name, out, {in_name: x})
    return x


def prepare_activation_forward(Y, X, activation, negative_slope, dtype):
    X = _elementwise_out("Y", Y, "X", X, dtype)
    return (Y, X, *_activation(activation, negative_slope))


def prepare_activation_backward(dX, dY, Y, activation, negative_slope, dtype):
    dY = _elementwise_out("dX", dX, "dY", dY, dtype)
    Y = as_input("Y", Y, dtype, shape=tuple(dY.shape), ndim=len(dY.shape))
    check_no_alias("dX", dX, {"Y": Y})
    return (dX, dY, Y, *_activation(activation, negative_slope))


def _rows(name, x):
    if len(x.shape) != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{name}: expected a non-empty 2-D array (n, c), got shape "
                         f"{_shape_str(x.shape)}")
    return x.shape


def prepare_softmax_forward(Y, X, dtype):
    X = _elementwise_out("Y", Y, "X", X, dtype)
    _rows("X", X)
    return Y, X


def prepare_softmax_backward(dX, dY, Y, dtype):
    dY = _elementwise_out("dX", dX, "dY", dY, dtype)
    n, c = _rows("dY", dY)
    Y = as_input("Y", Y, dtype, ndim=2, shape=(n, c))
    check_no_alias("dX", dX, {"Y": Y})
    return dX, dY, Y


def prepare_softmax_xent_forward(P, Z, labels, dtype):
    Z = as_input("Z", Z, dtype, ndim=2)
    n, c = _rows("Z", Z)
    labels = as_labels("labels", labels, n, c)
    check_output("P", P, dtype, (n, c))
    check_no_alias("P", P, {"Z": Z, "labels": labels})
    return P, Z, labels


def prepare_softmax_xent_backward(dZ, P, labels, dtype):
    P = _elementwise_out("dZ", dZ, "P", P, dtype)
    n, c = _rows("P", P)
    labels = as_labels("labels", labels, n, c)
    check_no_alias("dZ", dZ, {"labels": labels})
    return dZ, P, labels


def _pointwise_loss(y_name):
    """Forward of bce/mse/mae: Y (Z for bce) and T of the same non-empty shape."""
    def prepare(Y, T, dtype):
        Y = as_input(y_name, Y, dtype)
        T = as_input("T", T, dtype, ndim=len(Y.shape), shape=tuple(Y.shape))
        if _nbytes(Y) == 0:
            raise ValueError(f"{y_name}: must not be empty")
        return Y, T
    return prepare


def _pointwise_loss_backward(y_name):
    """Backward of bce/mse/mae: dY has Y's shape and may be Y itself."""
    def prepare(dY, Y, T, dtype):
        Y = _elementwise_out("d" + y_name, dY, y_name, Y, dtype)
        T = as_input("T", T, dtype, ndim=len(Y.shape), shape=tuple(Y.shape))
        if _nbytes(Y) == 0:
            raise ValueError(f"{y_name}: must not be empty")
        check_no_alias("d" + y_name, dY, {"T": T})
        return dY, Y, T
    return prepare


prepare_bce_forward = _pointwise_loss("Z")
prepare_bce_backward = _pointwise_loss_backward("Z")
prepare_mse_forward = prepare_mae_forward = _pointwise_loss("Y")
prepare_mse_backward = prepare_mae_backward = _pointwise_loss_backward("Y")


def prepare_update(params, grads, states, dtype):
    """Optimizer update: params and every state buffer are outputs (1-D, same
    size); grads is an input.  `states` maps names to buffers (None: unused)."""
    if params is None or not hasattr(params, "shape") or len(params.shape) != 1:
        raise ValueError("params: expected a flat 1-D buffer, got "
                         + ("None" if params is None else
                            _shape_str(getattr(params, "shape", ()))))
    size = params.shape[0]
    check_output("params", params, dtype, (size,))
    grads = as_input("grads", grads, dtype, ndim=1, shape=(size,))
    check_no_alias("params", params, {"grads": grads})
    seen = {"params": params}
    for name, buf in states.items():
        if buf is None:
            continue
        check_output(name, buf, dtype, (size,))
        check_no_alias(name, buf, dict(seen, grads=grads))
        seen[name] = buf
    return grads


def check_hyper(opt, hyper):
    """Every hyperparameter of optimizer `opt` (a spec.OptimizerSpec) within
    its range, flags as bools; returns them normalised."""
    out = {}
    for h in opt.hyper:
        value = hyper[h.name]
        out[h.name] = (check_flag(h.name, value) if h.flag else
                       check_scalar(h.name, value, h.low, h.high, h.low_open,
                                    getattr(h, "high_open", False)))
    return out


def check_states_given(opt, states, hyper):
    """Every state buffer of optimizer `opt` is given (`states`: name ->
    buffer or None), except an optional one whose hyperparameter is zero."""
    for name, buf in states.items():
        needed_by = opt.optional.get(name)
        if buf is None and (needed_by is None or hyper[needed_by]):
            raise ValueError(f"{name}: required" + (f" when {needed_by} != 0" if needed_by
                                                     else ""))


def prepare_optimizer(opt, *args):
    """Any optimizer update: (params, grads, *states, [step], *hyper,
    *scalars, dtype) in spec order; a state may be None only where its
    hyperparameter is zero."""
    *args, dtype = args
    n_states = len(opt.states)
    params, grads, states = args[0], args[1], dict(zip(opt.states, args[2:2 + n_states]))
    rest = args[2 + n_states:]
    step = [check_step(rest[0])] if opt.step else []
    rest = rest[len(step):]
    hyper = check_hyper(opt, dict(zip(opt.hyper_names, rest)))
    # NAdam's mu_product is mu_1 * ... * mu_t, each mu in [0, 1) (beta1 < 1):
    # 1 would divide by zero
    scalars = [check_scalar(name, v, **(dict(low=0.0, high=1.0, high_open=True)
                                        if name == "mu_product" else {}))
               for name, v in zip(opt.scalars, rest[len(opt.hyper):])]
    grads = prepare_update(params, grads, states, dtype)
    check_states_given(opt, states, hyper)
    return (params, grads, *states.values(), *step, *hyper.values(), *scalars)


def prepare_flat(name, x, dtype):
    if x is None or not hasattr(x, "shape") or len(x.shape) != 1:
        raise ValueError(f"{name}: expected a flat 1-D buffer")
    return check_output(name, x, dtype, tuple(x.shape))


def prepare_sum_squares(x, dtype):
    return (as_input("x", x, dtype, ndim=1),)


def prepare_scale(x, s, dtype):
    return prepare_flat("x", x, dtype), check_scalar("s", s)


def prepare_clip(x, lo, hi, dtype):
    lo, hi = check_scalar("lo", lo), check_scalar("hi", hi)
    if lo > hi:
        raise ValueError(f"lo: must be <= hi, got lo={lo}, hi={hi}")
    return prepare_flat("x", x, dtype), lo, hi


def prepare_axpy(y, x, alpha, dtype):
    prepare_flat("y", y, dtype)
    x = as_input("x", x, dtype, ndim=1, shape=tuple(y.shape))
    check_no_alias("y", y, {"x": x})
    return y, x, check_scalar("alpha", alpha)


def _integer(name, value, low, high=None):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low \
            or (high is not None and value > high):
        within = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name}: expected an integer {within}, got {value!r}")
    return int(value)


def _dense_layers(layers, size):
    """The layers of an epoch as spec.DenseLayer with activation codes,
    chained, inside a params buffer of `size` floats and not overlapping."""
    norm = []
    if len(layers) == 0:
        raise ValueError("layers: at least one dense layer")
    for i, layer in enumerate(layers):
        try:
            fan_in, fan_out, w_off, b_off, act, slope = layer
        except (TypeError, ValueError):
            raise ValueError(f"layers[{i}]: expected (in, out, w_offset, b_offset, activation, "
                             f"negative_slope), got {layer!r}") from None
        fan_in, fan_out, w_off, b_off = (int(v) for v in (fan_in, fan_out, w_off, b_off))
        if fan_in < 1 or fan_out < 1:
            raise ValueError(f"layers[{i}]: sizes must be >= 1, got in={fan_in}, out={fan_out}")
        if i > 0 and fan_in != norm[-1].fan_out:
            raise ValueError(f"layers[{i}]: takes {fan_in} inputs but layers[{i - 1}] gives "
                             f"{norm[-1].fan_out}")
        if not 0 <= w_off <= size - fan_in * fan_out:
            raise ValueError(f"layers[{i}]: weights at {w_off} overrun the {size}-float buffer")
        if b_off != -1 and not 0 <= b_off <= size - fan_out:
            raise ValueError(f"layers[{i}]: bias at {b_off} overruns the {size}-float buffer")
        norm.append(spec.DenseLayer(fan_in, fan_out, w_off, b_off, *_activation(act, slope)))
    ranges = sorted([(L.w_offset, L.w_offset + L.fan_in * L.fan_out, f"layers[{i}] weights")
                     for i, L in enumerate(norm)]
                    + [(L.b_offset, L.b_offset + L.fan_out, f"layers[{i}] bias")
                       for i, L in enumerate(norm) if L.b_offset != -1])
    for (_, end, first), (start, _, second) in zip(ranges, ranges[1:]):
        if start < end:
            raise ValueError(f"layers: {first} and {second} overlap in params")
    return tuple(norm)


def prepare_dense_stack_epoch(epoch, dtype):
    """Checks of dense_stack_epoch; returns a validated copy of the
    spec.Epoch: layers as spec.DenseLayer with activation codes, hyper with
    every hyperparameter of the optimizer, targets and order converted."""
    if not isinstance(epoch, spec.Epoch):
        raise TypeError(f"epoch: expected a fastnn.kernels.spec.Epoch, got "
                        f"{type(epoch).__name__}")
    e = epoch
    opt, states, hyper, size = _epoch_optimizer(e, dtype)
    batch_size = _integer("batch_size", e.batch_size, 1)
    step = _integer("step", e.step, 0, high=MAX_STEP)
    layers = _dense_layers(e.layers, size)
    X = as_input("X", e.X, dtype, ndim=2, shape=(None, layers[0].fan_in))
    targets, order = _epoch_data(e, X, layers[-1].fan_out)
    e = dataclasses.replace(
        e, states=states, X=X, targets=targets, layers=layers, batch_size=batch_size,
        hyper=hyper, step=step, order=order, **_epoch_scalars(e))
    need = spec.epoch_workspace(layers, batch_size)
    ws = e.workspace
    if ws is None or len(getattr(ws, "shape", ())) != 1 or ws.shape[0] < need:
        raise ValueError(f"workspace: needs at least {need} floats "
                         f"(dense_stack_workspace), got "
                         f"{None if ws is None else tuple(ws.shape)}")
    check_output("workspace", ws, dtype, tuple(ws.shape))
    _epoch_aliases(e, opt, {"workspace": ws})
    return (e,)


def _epoch_optimizer(e, dtype):
    """An epoch's optimizer, states and hyperparameters checked: (spec,
    states, hyper with every hyperparameter, n_params)."""
    opt = spec.OPTIMIZERS.get(e.optimizer) if isinstance(e.optimizer, str) else None
    if opt is None:
        raise ValueError(f"optimizer: unknown {e.optimizer!r}; expected one of "
                         f"{', '.join(spec.OPTIMIZERS)}")
    states = tuple(e.states)
    if len(states) != len(opt.states):
        raise ValueError(f"states: {opt.name} takes {len(opt.states)} state buffers "
                         f"({', '.join(opt.states)}), got {len(states)}")
    hyper = _epoch_hyper(e, opt)
    grads_in = prepare_update(e.params, e.grads, dict(zip(opt.states, states)), dtype)
    if grads_in is not e.grads and not same_array(grads_in, e.grads):
        raise TypeError("grads: must be a C-contiguous float32 buffer (it is overwritten)")
    size = e.params.shape[0]
    check_output("grads", e.grads, dtype, (size,))
    check_states_given(opt, dict(zip(opt.states, states)), hyper)
    if e.loss not in spec.LOSSES:
        raise ValueError(f"loss: unknown {e.loss!r}; expected one of {', '.join(spec.LOSSES)}")
    return opt, states, hyper, size


def _epoch_hyper(e, opt):
    """An epoch's hyperparameters (the optimizer's defaults filled in), checked."""
    unknown = set(e.hyper) - set(opt.hyper_names)
    if unknown:
        raise ValueError(f"hyper: {opt.name} takes no {', '.join(sorted(unknown))}")
    hyper = dict(opt.kernel_defaults(), **e.hyper)
    missing = [name for name in opt.hyper_names if name not in hyper]
    if missing:
        raise ValueError(f"hyper: {opt.name} needs {', '.join(missing)}")
    return check_hyper(opt, hyper)


def _epoch_data(e, X, n_out):
    """An epoch's targets and order checked against its X (n rows)."""
    n = X.shape[0]
    if n == 0:
        raise ValueError("X: no samples")
    if e.loss == "softmax_xent":
        targets = as_labels("targets", e.targets, n, n_out)
    else:
        targets = as_input("targets", e.targets, X.dtype, ndim=2, shape=(n, n_out))
    order = e.order
    if order is not None:
        order = np.asarray(order)
        if order.ndim != 1 or order.dtype.kind not in "iu" or order.size == 0:
            raise ValueError(f"order: expected a non-empty 1-D array of row indices, got "
                             f"{order.dtype} of shape {order.shape}")
        if order.min() < 0 or order.max() >= n:
            raise ValueError(f"order: row indices must lie in [0, {n})")
        order = np.ascontiguousarray(order, dtype=np.int64)
    return targets, order


def _epoch_scalars(e):
    """The scalar fields every epoch has, checked."""
    return dict(l2=check_scalar("l2", e.l2, low=0.0),
                loss_scale=check_scalar("loss_scale", e.loss_scale),
                grad_scale=check_scalar("grad_scale", e.grad_scale),
                mu_product=check_scalar("mu_product", e.mu_product, low=0.0, high=1.0))


def _epoch_aliases(e, opt, work):
    """No array the (checked) epoch e writes overlaps an array it reads or
    another it writes (optimizer states, workspaces, buffers, the per-batch
    outputs against X, targets, order and the plan arrays); `work` names
    its workspace arrays."""
    outs = {"batch_losses": check_output("batch_losses", e.batch_losses, np.float64,
                                         (e.n_batches,)),
            "batch_correct": check_output("batch_correct", e.batch_correct, np.int64,
                                          (e.n_batches,))}
    reads = {"X": e.X, "targets": e.targets}
    for name in ("order", "plan", "plan_scalars", "penalized"):
        if getattr(e, name, None) is not None:
            reads[name] = getattr(e, name)
    writes = {"params": e.params, "grads": e.grads, **dict(zip(opt.states, e.states)),
              "buffers": getattr(e, "buffers", None), **work, **outs}
    writes = [(name, arr) for name, arr in writes.items() if arr is not None]
    for i, (name, arr) in enumerate(writes):
        check_no_alias(name, arr, dict(reads, **dict(writes[:i])))


def check_ranges(name, ranges, n_params):
    """(offset, size) ranges of a buffer of n_params as a (k, 2) int64
    array: k >= 1, sizes >= 1, inside the buffer, increasing and disjoint."""
    r = np.asarray(ranges)
    if r.dtype.kind not in "iu" or r.size == 0 or r.size % 2:
        raise ValueError(f"{name}: expected a non-empty (k, 2) integer array of (offset, size), "
                         f"got {r.dtype} of shape {r.shape}")
    r = np.ascontiguousarray(r, dtype=np.int64).reshape(-1, 2)
    end = 0
    for o, size in r:
        if size < 1 or o < end or o + size > n_params:
            raise ValueError(f"{name}: range [{o}, {o + size}) is empty, overlaps the one "
                             f"before or lies outside params ({n_params})")
        end = o + size
    return r


def prepare_model_epoch(epoch, dtype):
    """Checks of model_epoch; returns a validated copy of the
    spec.ModelEpoch: hyper with every hyperparameter, X as (n, in_size),
    targets, order, plan and penalized as int64, plan_scalars as float64,
    and every region of every record (spec.record_regions) inside its
    buffer.  The checks of what an epoch's builder keeps from one epoch to
    the next are cached (see _static_key)."""
    return (_prepare_model_epoch(epoch, dtype)[0],)


def _check_model_epoch(e, dtype):
    """Every check of model_epoch (prepare_model_epoch's specification):
    the validated copy of spec.ModelEpoch e."""
    opt, states, hyper, n_params = _epoch_optimizer(e, dtype)
    batch_size = _integer("batch_size", e.batch_size, 1)
    step = _integer("step", e.step, 0, high=MAX_STEP)
    in_size, out_size = _integer("in_size", e.in_size, 1), _integer("out_size", e.out_size, 1)
    X = as_input("X", e.X, dtype)
    if X.ndim < 2 or X.size // max(X.shape[0], 1) != in_size:
        raise ValueError(f"X: expected (n, ...) with {in_size} values per sample, got shape "
                         f"{X.shape}")
    X = X.reshape(X.shape[0], in_size)
    targets, order = _epoch_data(e, X, out_size)
    plan = np.asarray(e.plan)
    if plan.ndim != 2 or plan.shape[1] != len(spec.PLAN_FIELDS) or plan.shape[0] < 1 \
            or plan.dtype.kind not in "iu":
        raise ValueError(f"plan: expected a (records, {len(spec.PLAN_FIELDS)}) integer array, "
                         f"got {plan.dtype} of shape {plan.shape}")
    plan = np.ascontiguousarray(plan, dtype=np.int64)
    scal = np.ascontiguousarray(e.plan_scalars, dtype=np.float64)
    if scal.shape != (plan.shape[0], len(spec.PLAN_SCALARS)):
        raise ValueError(f"plan_scalars: expected shape ({plan.shape[0]}, "
                         f"{len(spec.PLAN_SCALARS)}), got {scal.shape}")
    pen = np.ascontiguousarray(np.asarray(e.penalized, dtype=np.int64).reshape(-1, 2))
    ws, iws, buffers = e.workspace, e.iworkspace, e.buffers
    check_output("workspace", ws, dtype, (_length("workspace", ws),))
    check_output("iworkspace", iws, np.int32, (_length("iworkspace", iws),))
    if buffers is not None:
        check_output("buffers", buffers, dtype, (_length("buffers", buffers),))
    sizes = {"ws": ws.shape[0], "iws": iws.shape[0], "params": n_params,
             "buffers": 0 if buffers is None else buffers.shape[0]}
    B = batch_size
    for i, (rec, s) in enumerate(zip(plan, scal)):
        if int(rec[spec.F["op"]]) not in set(spec.Op):
            raise ValueError(f"plan[{i}]: unknown op {int(rec[spec.F['op']])}")
        if not np.all(np.isfinite(s)):
            raise ValueError(f"plan_scalars[{i}]: not finite")
        if rec[spec.F["op"]] == spec.Op.DROPOUT and not 0.0 <= s[spec.S["p"]] < 1.0:
            raise ValueError(f"plan_scalars[{i}]: dropout p must lie in [0, 1)")
        if rec[spec.F["op"]] == spec.Op.RNN:
            _rnn_record_check(i, rec)
        problem = _record_problem(rec.tolist(), s, in_size, -(-(X.shape[0] if order is None
                                                                 else order.shape[0]) // B))
        if problem:
            raise ValueError(f"plan[{i}] ({spec.Op(int(rec[0])).name}): {problem}")
        for buf, off, size in spec.record_regions(rec, B):
            if off < 0 or size < 0 or off + size > sizes[buf]:
                raise ValueError(f"plan[{i}] ({spec.Op(int(rec[0])).name}): region "
                                 f"[{off}, {off + size}) of {buf} outside its {sizes[buf]}")
    for name, off, size, buf in (("xb", e.xb, B * in_size, "ws"), ("tb", e.tb, B * out_size, "ws"),
                                 ("lb", e.lb, B, "iws"), ("doutput", e.doutput, B * out_size, "ws"),
                                 ("output", e.output, B * out_size, "ws")):
        if name == "output" and off == -1:
            continue
        if isinstance(off, bool) or not isinstance(off, (int, np.integer)) or off < 0 \
                or off + size > sizes[buf]:
            raise ValueError(f"{name}: offset {off!r} with {size} values lies outside {buf}")
    rows = X.shape[0] if order is None else order.shape[0]
    last = rows - (-(-rows // B) - 1) * B
    for i, rec in enumerate(plan):
        if rec[spec.F["op"]] == spec.Op.BATCHNORM \
                and last * rec[spec.F["h"]] * rec[spec.F["w"]] < 2:
            raise ValueError(f"batch_size: the last batch of {last} gives plan[{i}] "
                             "(BATCHNORM) one value per channel")
    for o, size in pen.tolist():  # Python ints: o + size cannot wrap
        if o < 0 or size < 0 or o + size > n_params:
            raise ValueError(f"penalized: range [{o}, {o + size}) outside params ({n_params})")
    if e.hook is not None and not callable(e.hook):
        raise TypeError(f"hook: expected a callable hook(event, batch) or None, got "
                        f"{type(e.hook).__name__}")
    spec.hook_events(e.hook)  # (raises for a bad hook.events)
    hook_every = _integer("hook_every", e.hook_every, 0, 2 ** 62)
    trainable = None if e.trainable is None else check_ranges("trainable", e.trainable, n_params)
    e = dataclasses.replace(
        e, states=states, X=X, targets=targets, batch_size=batch_size, hyper=hyper, step=step,
        order=order, plan=plan, plan_scalars=scal, penalized=pen, trainable=trainable,
        hook_every=hook_every,
        clip_value=check_scalar("clip_value", e.clip_value, low=0.0),
        clip_norm=check_scalar("clip_norm", e.clip_norm, low=0.0), **_epoch_scalars(e))
    _epoch_aliases(e, opt, {"workspace": ws, "iworkspace": iws})
    return e


# ---- the checks of an epoch's static parts, once ------------------------------------
#
# An epoch's builder (the trainer's compiled epoch, fit_many, MLPSearchCV's
# banks) gives model_epoch the same plan, sizes and buffers every epoch;
# only the order, the step and the scalars (a schedule's learning rate)
# change.  The checks of everything else -- the records' regions against
# the buffers, the buffers' shapes and aliases: ~0.3 ms of Python per epoch,
# most of a small model's -- run once: _static_key describes what they
# read, and while an epoch's key equals the one of the last full check of
# the same workspace, only the dynamic checks run (_recheck_model_epoch).
# The key holds every array's identity (weakly referenced, so that an id
# is never a dead array's), shape, strides, dtype and writeability (numpy
# cannot move a live array's data, so these fix its address; numpy 1 could,
# so there the address is in the key), the plan's, plan_scalars',
# penalized's and trainable's values (a plan edited in place is checked
# again), and every static scalar with its type.  Only epochs whose inputs
# the full check would not convert are cached (the fast path then passes
# the very arrays the full check would).

_ADDRESS_IN_KEY = np.lib.NumpyVersion(np.__version__) < "2.0.0"  # a.data = ... possible
_STATIC = {}  # id(workspace) -> (weakref to it, _Static of its last full check)


class _Static:
    """The cached result of an epoch's static checks."""

    __slots__ = ("key", "refs", "opt", "written", "__weakref__")

    def __init__(self, key, refs, opt, written):
        self.key, self.refs, self.opt, self.written = key, refs, opt, written

    def alive(self):
        return all(r is None or r() is not None for r in self.refs)


def _array_key(a, dtype=None, ndim=None):
    """What the static checks read of array a (a host array), or raise
    _Uncached when a is not one the full check would pass unconverted (of
    `dtype` and C-contiguous when dtype is given)."""
    if type(a) is not np.ndarray:
        raise _Uncached
    if dtype is not None and (a.dtype != dtype or not a.flags.c_contiguous):
        raise _Uncached
    if ndim is not None and a.ndim != ndim:
        raise _Uncached
    key = (id(a), a.shape, a.strides, a.dtype, a.flags.writeable)
    return key + (a.__array_interface__["data"][0],) if _ADDRESS_IN_KEY else key


class _Uncached(Exception):
    """An epoch the static-check cache does not take."""


def _static_key(e, dtype):
    """(key, arrays) of epoch e's static parts (see above), or None when e
    is not cached."""
    try:
        if not isinstance(e.states, (tuple, list)) or not isinstance(e.optimizer, str) \
                or not isinstance(e.loss, str):
            raise _Uncached
        labels = e.loss == "softmax_xent"
        arrays = (e.params, e.grads, *e.states, e.workspace, e.iworkspace, e.buffers,
                  e.batch_losses, e.batch_correct)
        keys = [None if a is None else _array_key(a) for a in arrays]
        keys += [_array_key(e.X, dtype), _array_key(e.targets, np.int32 if labels else dtype),
                 _array_key(e.plan, np.int64, 2), _array_key(e.plan_scalars, np.float64, 2),
                 _array_key(e.penalized, np.int64),
                 None if e.trainable is None else _array_key(e.trainable, np.int64)]
        arrays += (e.X, e.targets, e.plan, e.plan_scalars, e.penalized, e.trainable)
        order = e.order
        if order is not None and type(order) is not np.ndarray:
            raise _Uncached
        rows = e.X.shape[0] if order is None else order.shape
        values = tuple(None if a is None else a.tobytes()
                       for a in (e.plan, e.plan_scalars, e.penalized, e.trainable))
    except _Uncached:
        return None
    scalars = tuple((type(v), v) for v in (
        e.optimizer, e.loss, e.batch_size, e.in_size, e.out_size, e.xb, e.tb, e.lb, e.output,
        e.doutput))
    return (np.dtype(dtype), len(e.states), tuple(keys), values, scalars, rows), arrays


def _prepare_model_epoch(epoch, dtype):
    """(the checked copy of epoch, its _Static or None): the full check,
    or the dynamic checks when the static ones hold from an earlier epoch."""
    if not isinstance(epoch, spec.ModelEpoch):
        raise TypeError(f"epoch: expected a fastnn.kernels.spec.ModelEpoch, got "
                        f"{type(epoch).__name__}")
    found = _static_key(epoch, dtype)
    if found is None:
        return _check_model_epoch(epoch, dtype), None
    key, arrays = found
    ws = epoch.workspace
    entry = _STATIC.get(id(ws))
    if entry is not None and entry[0]() is ws and entry[1].key == key and entry[1].alive():
        return _recheck_model_epoch(epoch, entry[1]), entry[1]
    refs = tuple(None if a is None else weakref.ref(a) for a in arrays)
    layout = _layout_key(key)
    opt = _LAYOUTS.get(layout)
    checked = None
    if opt is not None:  # a layout the full check passed: only the memory is new
        writes = _written(epoch)
        reads = [getattr(epoch, name) for name in _ALIAS_READS
                 if getattr(epoch, name) is not None]
        written = sorted(_span(a) + (name,) for name, a in writes.items())
        written = [w for w in written if w[1] > w[0]]
        writes = list(writes.values())
        if _apart(written, [_span(a) for a in reads], writes, reads):
            static = _Static(key, refs, opt, written)
            checked = _recheck_model_epoch(epoch, static)
    if checked is None:
        checked = _check_model_epoch(epoch, dtype)
        written = sorted(_span(a) + (name,) for name, a in _written(checked).items())
        static = _Static(key, refs, spec.OPTIMIZERS[checked.optimizer],
                         [w for w in written if w[1] > w[0]])
        if len(_LAYOUTS) >= 64:  # (a few bytes of plan and shapes each)
            _LAYOUTS.clear()
        _LAYOUTS[layout] = static.opt
    # the entry goes when its workspace goes (one weak reference per workspace)
    ref = entry[0] if entry is not None and entry[0]() is ws else weakref.ref(
        ws, functools.partial(_forget, id(ws)))
    _STATIC[id(ws)] = (ref, static)
    return checked, static


# A bank's epochs (fit_many, MLPSearchCV) and every fit's first epoch
# are new arrays in a layout the full check has passed before: the same
# plan, sizes and scalars, arrays of the same shapes, strides, dtypes and
# writeability.  Everything _check_model_epoch reads besides the arrays'
# memory is in that layout (the key without the arrays' identities), so
# for such an epoch only the memory is checked again: when no span it
# writes meets another span it writes or one _epoch_aliases checks it
# against (for C-contiguous arrays, bounds apart = memory apart), the full
# check would pass it too, and the dynamic checks run (_recheck_model_epoch);
# otherwise the full check runs and gives its message.  ~200 -> ~50 us an
# epoch of the digits MLP: the most of fit_many's Python per model.
_LAYOUTS = {}  # _layout_key -> the optimizer's spec (of the full check that passed it)
_ALIAS_READS = ("X", "targets", "order", "plan", "plan_scalars", "penalized")


def _layout_key(key):
    """_static_key's key without the arrays' identities and addresses."""
    dtype, n_states, keys, values, scalars, rows = key
    return (dtype, n_states, tuple(None if k is None else k[1:5] for k in keys), values,
            scalars, rows)


def _apart(written, reads, written_arrays, read_arrays):
    """True when the sorted written spans (start, end, name) are disjoint
    and none meets a read span (start, end), and no written array is
    given twice (as the full check refuses, even empty)."""
    ids = {id(a) for a in written_arrays}
    if len(ids) < len(written_arrays) or any(id(a) in ids for a in read_arrays):
        return False
    spans = sorted([(w[0], w[1], True) for w in written]
                   + [(r[0], r[1], False) for r in reads if r[1] > r[0]])
    end_any = end_written = -1
    for start, end, is_written in spans:
        if start < (end_any if is_written else end_written):
            return False
        end_any = max(end_any, end)
        if is_written:
            end_written = max(end_written, end)
    return True


def _forget(ws_id, ref):
    entry = _STATIC.get(ws_id)
    if entry is not None and entry[0] is ref:
        del _STATIC[ws_id]


def _recheck_model_epoch(e, static):
    """The checks of what may change between two epochs of one builder
    (their static parts passed _check_model_epoch with this key): the
    hyperparameters, the states given for them, step, the scalars, the
    labels' range, the order (type, range, aliases) and the hook.  The same
    checked copy _check_model_epoch makes."""
    opt = static.opt
    hyper = _epoch_hyper(e, opt)
    check_states_given(opt, dict(zip(opt.states, e.states)), hyper)
    step = _integer("step", e.step, 0, high=MAX_STEP)
    X = e.X.reshape(e.X.shape[0], e.in_size)
    targets, order = _epoch_data(e, X, e.out_size)
    if order is not None:
        _order_outside(order, static.written, "input ")
    if e.hook is not None and not callable(e.hook):
        raise TypeError(f"hook: expected a callable hook(event, batch) or None, got "
                        f"{type(e.hook).__name__}")
    spec.hook_events(e.hook)
    hook_every = _integer("hook_every", e.hook_every, 0, 2 ** 62)
    return dataclasses.replace(
        e, states=tuple(e.states), X=X, targets=targets, batch_size=int(e.batch_size),
        hyper=hyper, step=step, order=order, penalized=e.penalized.reshape(-1, 2),
        trainable=None if e.trainable is None else e.trainable.reshape(-1, 2),
        hook_every=hook_every,
        clip_value=check_scalar("clip_value", e.clip_value, low=0.0),
        clip_norm=check_scalar("clip_norm", e.clip_norm, low=0.0), **_epoch_scalars(e))


def _order_outside(order, written, reader):
    """ValueError unless the (int64, C-contiguous) order's memory lies
    outside every span of `written` (sorted, disjoint (start, end, name));
    `reader` names the order's epoch in the message."""
    start, end = _span(order)
    i = bisect.bisect_left(written, (end,)) - 1  # the last span starting before end
    if i >= 0 and written[i][1] > start and end > start:
        raise ValueError(f"{written[i][2]}: output overlaps {reader}order")


def prepare_model_epochs(epochs, dtype):
    """Checks of model_epochs: each epoch as model_epoch's, and nothing one
    writes overlaps anything another reads or writes (they may share X,
    targets and order).  The sweep over the epochs' arrays is cached as
    their static checks are: while every epoch's static parts are those of
    the last call with the same epochs, only the orders are checked
    against everything the epochs write."""
    if isinstance(epochs, spec.ModelEpoch) or not isinstance(epochs, (list, tuple)) or not epochs:
        raise TypeError("epochs: expected a non-empty list of fastnn.kernels.spec.ModelEpoch")
    checked, statics = [], []
    for i, e in enumerate(epochs):
        try:
            c, static = _prepare_model_epoch(e, dtype)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"epochs[{i}]: {exc}") from exc
        checked.append(c)
        statics.append(static)
    cached = all(st is not None for st in statics)
    if cached:
        key = tuple(map(id, statics))
        swept = _SWEPT.get(key)
        if swept is not None and all(r() is st for r, st in zip(swept[0], statics)):
            for i, c in enumerate(checked):
                if c.order is not None:
                    _order_outside(c.order, swept[1], f"epochs[{i}].")
            return (checked,)
    _sweep(checked)
    if cached:
        if len(_SWEPT) >= 64:  # (entries of banks gone; a few bytes each)
            _SWEPT.clear()
        written = sorted((w[0], w[1], f"epochs[{i}].{w[2]}")
                         for i, st in enumerate(statics) for w in st.written)
        _SWEPT[key] = (tuple(weakref.ref(st) for st in statics), written)
    return (checked,)


_SWEPT = {}  # ids of the epochs' _Static -> (weakrefs to them, every written span, sorted)


def _sweep(checked):
    """One sweep over every array's memory range (n log n in the number of
    arrays, not the pairs of epochs): a range one epoch writes must not
    meet another epoch's written range nor anything any epoch reads."""
    spans = []  # (start, end, epoch, name, written)
    reads = {}
    for i, e in enumerate(checked):
        for name, arr in _written(e).items():
            spans.append(_span(arr) + (i, name, True))
        for name in ("X", "targets", "order"):
            arr = getattr(e, name)
            if arr is not None:
                reads.setdefault(id(arr), (arr, i, name))
    spans += [_span(arr) + (i, name, False) for arr, i, name in reads.values()]
    spans = sorted(sp for sp in spans if sp[1] > sp[0])
    open_spans = []  # the spans whose range may still reach the next ones
    for sp in spans:
        open_spans = [o for o in open_spans if o[1] > sp[0]]
        for o in open_spans:
            if (sp[4] or o[4]) and (o[2] != sp[2] or not (sp[4] and o[4])):
                w, r = (sp, o) if sp[4] else (o, sp)
                if w[2] == r[2] and not r[4]:
                    continue  # an epoch against its own inputs: checked above
                raise ValueError(f"epochs[{w[2]}].{w[3]}: output overlaps "
                                 f"epochs[{r[2]}].{r[3]}")
        open_spans.append(sp)


def _window_ok(n, k, s, p, out):
    """One spatial extent of a window (csrc/plan.c's window_valid)."""
    return k >= 1 and s >= 1 and 0 <= p < k and n + 2 * p >= k and out == (n + 2 * p - k) // s + 1


def _record_problem(r, s, in_size, n_batches):
    """What is wrong with plan record r (a list of Python ints) besides its
    regions, or None: the geometry, window and activation checks
    csrc/plan.c makes, so that they fail here with a message."""
    F, Op = spec.F, spec.Op
    op = r[F["op"]]
    h, w, c, oh, ow, oc = (r[F[k]] for k in ("h", "w", "c", "oh", "ow", "oc"))
    if min(h, w, c, oh, ow, oc) < 1:
        return f"shapes (h, w, c) = ({h}, {w}, {c}), (oh, ow, oc) = ({oh}, {ow}, {oc}) must be >= 1"
    isz, osz = h * w * c, oh * ow * oc
    if r[F["x"]] == -1 and isz != in_size:
        return f"reads the input rows ({in_size} values) as {isz} values"
    act_ok = r[F["act"]] in set(int(a) for a in spec.Activation)
    win = [r[F[k]] for k in ("kh", "kw", "sh", "sw", "ph", "pw")]
    kh, kw, sh, sw, ph, pw = win
    if op == Op.DENSE:
        ok, why = oh == 1 and ow == 1 and act_ok, "needs oh = ow = 1 and a valid activation"
    elif op == Op.CONV2D:
        ok = act_ok and _window_ok(h, kh, sh, ph, oh) and _window_ok(w, kw, sw, pw, ow)
        why = f"window {win} does not give ({oh}, {ow}) from ({h}, {w}), or bad activation"
    elif op in (Op.MAXPOOL2D, Op.AVGPOOL2D):
        ok = oc == c and _window_ok(h, kh, sh, 0, oh) and _window_ok(w, kw, sw, 0, ow) \
            and h * w < 2 ** 31
        why = f"window {win} does not give ({oh}, {ow}, {oc}) from ({h}, {w}, {c})"
    elif op in (Op.ACTIVATION, Op.SOFTMAX):
        ok, why = isz == osz and (act_ok or op == Op.SOFTMAX), "sizes differ or bad activation"
    elif op == Op.BATCHNORM:
        ok = isz == osz and oc == c and r[F["dx"]] != -1 and s[spec.S["eps"]] > 0 \
            and 0 <= s[spec.S["momentum"]] <= 1
        why = "needs equal shapes, a dx, eps > 0 and momentum in [0, 1]"
    elif op == Op.DROPOUT:
        ok = isz == osz and r[F["seed"]] >= 0 and 0 <= r[F["counter"]] \
            and r[F["counter"]] + n_batches < 2 ** 63
        why = "needs equal sizes and seed, counter >= 0 (counter + batches in int64)"
    elif op == Op.ADD:
        ok = isz == osz and (r[F["aux"]] != -1 or osz == in_size)
        why = "needs equal sizes (aux = -1: the input's)"
    elif op == Op.RNN:  # (its own fields: _rnn_record_check)
        ok, why = True, ""
    else:  # FORK
        ok = isz == osz and (r[F["dx"]] == -1 or r[F["daux"]] != -1)
        why = "needs equal sizes and a daux with a dx"
    return None if ok else why


def _span(a):
    """The byte range [start, end) of a C-contiguous array's memory."""
    start = _pointer(a)
    return (start, start + _nbytes(a))


def _written(e):
    """The arrays a (checked) model epoch writes, by name."""
    out = {"params": e.params, "grads": e.grads, "workspace": e.workspace,
           "iworkspace": e.iworkspace, "batch_losses": e.batch_losses,
           "batch_correct": e.batch_correct, "buffers": e.buffers}
    out.update({f"states[{i}]": s for i, s in enumerate(e.states)})
    return {k: v for k, v in out.items() if v is not None}


def _length(name, a):
    """The length of a 1-D array argument, or a ValueError naming it."""
    if a is None or len(getattr(a, "shape", ())) != 1:
        raise ValueError(f"{name}: expected a 1-D array, got "
                         f"{None if a is None else getattr(a, 'shape', type(a).__name__)}")
    return a.shape[0]


def prepare_dropout_forward(Y, X, p, seed, counter, dtype):
    """Checks of dropout_forward."""
    X = as_input("X", X, dtype)
    check_output("Y", Y, dtype, X.shape)
    check_no_alias("Y", Y, {"X": X}, inplace_ok=("X",))
    return (Y, X) + _dropout_args(p, seed, counter)


def prepare_dropout_backward(dX, dY, p, seed, counter, dtype):
    """Checks of dropout_backward."""
    dY = as_input("dY", dY, dtype)
    check_output("dX", dX, dtype, dY.shape)
    check_no_alias("dX", dX, {"dY": dY}, inplace_ok=("dY",))
    return (dX, dY) + _dropout_args(p, seed, counter)


def _dropout_args(p, seed, counter):
    p = check_scalar("p", p, low=0.0, high=1.0)
    if p >= 1.0:
        raise ValueError("p: must be < 1 (p = 1 drops everything)")
    return p, _integer("seed", seed, 0, high=2 ** 63 - 1), _integer("counter", counter, 0,
                                                                    high=2 ** 63 - 1)


# ---- convolution, pooling, batch normalisation (channels-last) ----------------------

def _pair(name, value, low):
    """An int or a pair of ints, each >= low, as a tuple (h, w)."""
    try:
        pair = (value, value) if isinstance(value, (int, np.integer)) else tuple(value)
    except TypeError:
        pair = ()
    if len(pair) != 2 or any(isinstance(v, bool) or not isinstance(v, (int, np.integer))
                             or v < low for v in pair):
        raise ValueError(f"{name}: expected an integer >= {low} or a pair of them, got {value!r}")
    return int(pair[0]), int(pair[1])


def conv_output_size(size, kernel, stride, padding):
    """Output length of a convolution/pooling window along one axis."""
    return (size + 2 * padding - kernel) // stride + 1


def _conv_geometry(X, kh, kw, stride, padding, name="X"):
    """(stride, padding) pairs of a window (kh, kw) over images X (the
    argument `name`)."""
    n, h, w, c = X.shape
    sh, sw = _pair("stride", stride, 1)
    ph, pw = _pair("padding", padding, 0)
    if ph >= kh or pw >= kw:
        raise ValueError(f"padding: must be smaller than the kernel ({kh}, {kw}), got ({ph}, {pw})")
    oh, ow = conv_output_size(h, kh, sh, ph), conv_output_size(w, kw, sw, pw)
    if oh < 1 or ow < 1:
        raise ValueError(f"{name}: input ({h}, {w}) is smaller than the window ({kh}, {kw}) "
                         f"with padding ({ph}, {pw})")
    return (sh, sw), (ph, pw), oh, ow


def _image(name, X, dtype):
    X = as_input(name, X, dtype, ndim=4)
    if 0 in X.shape:
        raise ValueError(f"{name}: expected a non-empty (N, H, W, C) array, got shape "
                         f"{_shape_str(X.shape)}")
    return X


def _conv_weights(X, W, dtype):
    W = as_input("W", W, dtype, ndim=4, shape=(None, None, X.shape[3], None))
    if 0 in W.shape:
        raise ValueError(f"W: expected a non-empty (KH, KW, C, OC) array, got {_shape_str(W.shape)}")
    return W


def prepare_conv2d_forward(Y, X, W, b, cols, stride, padding, activation, negative_slope,
                           dtype):
    X = _image("X", X, dtype)
    W = _conv_weights(X, W, dtype)
    kh, kw, c, oc = W.shape
    stride, padding, oh, ow = _conv_geometry(X, kh, kw, stride, padding)
    n = X.shape[0]
    if b is not None:
        b = as_input("b", b, dtype, ndim=1, shape=(oc,))
    check_output("Y", Y, dtype, (n, oh, ow, oc))
    check_output("cols", cols, dtype, (n * oh * ow, kh * kw * c))
    check_no_alias("Y", Y, {"X": X, "W": W, "b": b})
    check_no_alias("cols", cols, {"X": X, "W": W, "b": b, "Y": Y})
    return (Y, X, W, b, cols, stride, padding, *_activation(activation, negative_slope))


def prepare_conv2d_backward(dX, dW, db, dZ, dY, X, W, Y, cols, stride, padding, activation,
                            negative_slope, dtype):
    X = _image("X", X, dtype)
    W = _conv_weights(X, W, dtype)
    kh, kw, c, oc = W.shape
    stride, padding, oh, ow = _conv_geometry(X, kh, kw, stride, padding)
    n, h, w = X.shape[:3]
    Y = as_input("Y", Y, dtype, ndim=4, shape=(n, oh, ow, oc))
    check_output("dZ", dZ, dtype, (n, oh, ow, oc))
    dY = _in_place_input("dZ", dZ, "dY", dY, dtype, ndim=4, shape=(n, oh, ow, oc))
    check_output("cols", cols, dtype, (n * oh * ow, kh * kw * c))
    check_output("dW", dW, dtype, (kh, kw, c, oc))
    inputs = {"dY": dY, "X": X, "W": W, "Y": Y}
    check_no_alias("dZ", dZ, inputs, inplace_ok=("dY",))
    check_no_alias("cols", cols, dict(inputs, dZ=dZ))
    check_no_alias("dW", dW, dict(inputs, dZ=dZ, cols=cols))
    if db is not None:
        check_output("db", db, dtype, (oc,))
        check_no_alias("db", db, dict(inputs, dZ=dZ, cols=cols, dW=dW))
    if dX is not None:
        check_output("dX", dX, dtype, (n, h, w, c))
        check_no_alias("dX", dX, dict(inputs, dZ=dZ, cols=cols, dW=dW, db=db))
    return (dX, dW, db, dZ, dY, X, W, Y, cols, stride, padding,
            *_activation(activation, negative_slope))


def _pool_geometry(X, pool, stride, name="X"):
    """(pool, stride) pairs and the output size of a pooling window over X."""
    pool = _pair("pool", pool, 1)
    stride, _, oh, ow = _conv_geometry(X, *pool, pool if stride is None else stride, 0, name)
    return pool, stride, oh, ow


def _prepare_pool_forward(Y, X, argmax, pool, stride, dtype):
    X = _image("X", X, dtype)
    pool, stride, oh, ow = _pool_geometry(X, pool, stride)
    n, _, _, c = X.shape
    check_output("Y", Y, dtype, (n, oh, ow, c))
    check_no_alias("Y", Y, {"X": X})
    if argmax is not None:
        check_output("argmax", argmax, np.int32, (n, oh, ow, c))
        check_no_alias("argmax", argmax, {"X": X, "Y": Y})
    return X, pool, stride


def _prepare_pool_backward(dX, dY, argmax, pool, stride, dtype):
    """dX is (N, H, W, C) and fixes the geometry; dY (N, OH, OW, C)."""
    if dX is None or len(getattr(dX, "shape", ())) != 4 or 0 in dX.shape:
        raise ValueError("dX: expected a non-empty (N, H, W, C) output array")
    check_output("dX", dX, dtype, tuple(dX.shape))
    pool, stride, oh, ow = _pool_geometry(dX, pool, stride, "dX")
    n, h, w, c = dX.shape
    dY = as_input("dY", dY, dtype, ndim=4, shape=(n, oh, ow, c))
    inputs = {"dY": dY}
    if argmax is not None:
        argmax = as_indices("argmax", argmax, h * w, ndim=4, shape=(n, oh, ow, c))
        inputs["argmax"] = argmax
    check_no_alias("dX", dX, inputs)
    return dY, argmax, pool, stride


def prepare_maxpool2d_forward(Y, X, argmax, pool, stride, dtype):
    if argmax is None:
        raise TypeError("argmax: expected an output array, got None")
    X, pool, stride = _prepare_pool_forward(Y, X, argmax, pool, stride, dtype)
    return Y, X, argmax, pool, stride


def prepare_maxpool2d_backward(dX, dY, argmax, pool, stride, dtype):
    if argmax is None:
        raise TypeError("argmax: expected an array, got None")
    dY, argmax, pool, stride = _prepare_pool_backward(dX, dY, argmax, pool, stride, dtype)
    return dX, dY, argmax, pool, stride


def prepare_avgpool2d_forward(Y, X, pool, stride, dtype):
    X, pool, stride = _prepare_pool_forward(Y, X, None, pool, stride, dtype)
    return Y, X, pool, stride


def prepare_avgpool2d_backward(dX, dY, pool, stride, dtype):
    dY, _, pool, stride = _prepare_pool_backward(dX, dY, None, pool, stride, dtype)
    return dX, dY, pool, stride


def _channels(name, x, c, dtype, out=False):
    if out:
        return check_output(name, x, dtype, (c,))
    return as_input(name, x, dtype, ndim=1, shape=(c,))


def _features(X, dtype):
    """X (..., C) non-empty, and its rows and channels."""
    X = as_input("X", X, dtype)
    if len(X.shape) < 2 or 0 in X.shape:
        raise ValueError(f"X: expected a non-empty array (..., C), got {_shape_str(X.shape)}")
    shape = tuple(X.shape)  # tuple(): the CUDA simulator's shapes refuse negative indices
    return X, math.prod(shape[:-1]), shape[-1]


def prepare_batchnorm_forward(Y, X, gamma, beta, mean, invstd, running_mean, running_var,
                              momentum, eps, dtype):
    X, rows, c = _features(X, dtype)
    if rows < 2:
        raise ValueError("X: batch statistics need at least 2 values per channel")
    gamma = _channels("gamma", gamma, c, dtype)
    beta = _channels("beta", beta, c, dtype)
    check_output("Y", Y, dtype, tuple(X.shape))
    check_no_alias("Y", Y, {"X": X, "gamma": gamma, "beta": beta})
    outs = {"Y": Y}
    for name, buf in (("mean", mean), ("invstd", invstd), ("running_mean", running_mean),
                      ("running_var", running_var)):
        if buf is None:
            raise TypeError(f"{name}: expected an array, got None")
        _channels(name, buf, c, dtype, out=True)
        check_no_alias(name, buf, dict(outs, X=X, gamma=gamma, beta=beta))
        outs[name] = buf
    return (Y, X, gamma, beta, mean, invstd, running_mean, running_var,
            check_scalar("momentum", momentum, 0.0, 1.0),
            check_scalar("eps", eps, low=0.0, low_open=True))


def prepare_batchnorm_inference(Y, X, gamma, beta, running_mean, running_var, eps, dtype):
    X, rows, c = _features(X, dtype)
    args = [_channels(name, v, c, dtype) for name, v in
            (("gamma", gamma), ("beta", beta), ("running_mean", running_mean),
             ("running_var", running_var))]
    if not _is_device(args[3]) and not np.all(args[3] >= 0):  # NaN fails too
        raise ValueError("running_var: must be >= 0 (a variance), got "
                         f"{args[3][~(args[3] >= 0)][0]}")
    check_output("Y", Y, dtype, tuple(X.shape))
    check_no_alias("Y", Y, dict(zip(("gamma", "beta", "running_mean", "running_var"), args), X=X))
    return (Y, X, *args, check_scalar("eps", eps, low=0.0, low_open=True))


def prepare_batchnorm_backward(dX, dgamma, dbeta, dY, X, gamma, mean, invstd, dtype):
    X, rows, c = _features(X, dtype)
    dY = as_input("dY", dY, dtype, ndim=len(X.shape), shape=tuple(X.shape))
    gamma, mean, invstd = (_channels(name, v, c, dtype) for name, v in
                           (("gamma", gamma), ("mean", mean), ("invstd", invstd)))
    inputs = {"dY": dY, "X": X, "gamma": gamma, "mean": mean, "invstd": invstd}
    check_output("dX", dX, dtype, tuple(X.shape))
    check_no_alias("dX", dX, inputs)
    for name, buf in (("dgamma", dgamma), ("dbeta", dbeta)):
        _channels(name, buf, c, dtype, out=True)
        check_no_alias(name, buf, dict(inputs, dX=dX))
    check_no_alias("dbeta", dbeta, {"dgamma": dgamma})
    return dX, dgamma, dbeta, dY, X, gamma, mean, invstd


# ---- recurrent layers (rnn_forward / rnn_backward) -------------------------------------

def _rnn_options(cell, activation):
    """(cell code, activation code): SimpleRNN's activation is tanh or relu,
    GRU's and LSTM's must be left at tanh."""
    code = spec.cell_code(cell)
    if activation not in spec.RNN_ACTIVATIONS or (code != spec.Cell.RNN and activation != "tanh"):
        allowed = spec.RNN_ACTIVATIONS if code == spec.Cell.RNN else ("tanh",)
        raise ValueError(f"activation: expected one of {', '.join(allowed)} for cell "
                         f"{spec.Cell(code).name.lower()}, got {activation!r}")
    return code, activation_code(activation)


def _rnn_dims(X, W_ih, W_hh, b_ih, b_hh, code, dtype):
    X = as_input("X", X, dtype, ndim=3)
    n, L, c = X.shape
    if 0 in X.shape:
        raise ValueError(f"X: expected a non-empty (N, L, C) array, got shape {X.shape}")
    W_hh = as_input("W_hh", W_hh, dtype, ndim=2)
    H = W_hh.shape[0]
    gh = spec.RNN_GATES[spec.Cell(code)] * H
    if H < 1 or W_hh.shape[1] != gh:
        raise ValueError(f"W_hh: expected shape (H, {spec.RNN_GATES[spec.Cell(code)]} H) for "
                         f"cell {spec.Cell(code).name.lower()}, got {W_hh.shape}")
    W_ih = as_input("W_ih", W_ih, dtype, ndim=2, shape=(c, gh))
    if b_ih is not None or b_hh is not None:  # (the forward's; backward passes none)
        b_ih = as_input("b_ih", b_ih, dtype, ndim=1, shape=(gh,))
        b_hh = as_input("b_hh", b_hh, dtype, ndim=1, shape=(gh,))
    K = spec.RNN_CACHE[spec.Cell(code)] * H
    return X, W_ih, W_hh, b_ih, b_hh, n, L, c, H, K


def prepare_rnn_forward(Hs, G, X, W_ih, W_hh, b_ih, b_hh, cell, activation, dtype):
    code, act = _rnn_options(cell, activation)
    X, W_ih, W_hh, b_ih, b_hh, n, L, c, H, K = _rnn_dims(X, W_ih, W_hh, b_ih, b_hh, code, dtype)
    inputs = {"X": X, "W_ih": W_ih, "W_hh": W_hh, "b_ih": b_ih, "b_hh": b_hh}
    check_output("Hs", Hs, dtype, (n, L, H))
    check_no_alias("Hs", Hs, inputs)
    check_output("G", G, dtype, (n, L, K))
    check_no_alias("G", G, dict(inputs, Hs=Hs))
    return Hs, G, X, W_ih, W_hh, b_ih, b_hh, code, act


def prepare_rnn_backward(dX, dW_ih, dW_hh, db_ih, db_hh, dHs, G, X, W_ih, W_hh, Hs, cell,
                         activation, dtype):
    code, act = _rnn_options(cell, activation)
    X, W_ih, W_hh, _, _, n, L, c, H, K = _rnn_dims(X, W_ih, W_hh, None, None, code, dtype)
    gh = W_hh.shape[1]
    Hs = as_input("Hs", Hs, dtype, ndim=3, shape=(n, L, H))
    inputs = {"X": X, "W_ih": W_ih, "W_hh": W_hh, "Hs": Hs}
    written = {}
    for name, arr, shape in (("dHs", dHs, (n, L, H)), ("G", G, (n, L, K)),
                             ("dW_ih", dW_ih, (c, gh)), ("dW_hh", dW_hh, (H, gh)),
                             ("db_ih", db_ih, (gh,)), ("db_hh", db_hh, (gh,)),
                             ("dX", dX, (n, L, c))):
        if arr is None and name in ("db_ih", "db_hh", "dX"):
            continue
        check_output(name, arr, dtype, shape)
        check_no_alias(name, arr, dict(inputs, **written))
        written[name] = arr
    return dX, dW_ih, dW_hh, db_ih, db_hh, dHs, G, X, W_ih, W_hh, Hs, code, act


def _rnn_record_check(i, rec):
    """An RNN record's cell, activation and shapes (spec.rnn_record_regions)."""
    F = spec.F
    cell, act = int(rec[F["cell"]]), int(rec[F["act"]])
    if cell not in set(spec.Cell):
        raise ValueError(f"plan[{i}] (RNN): unknown cell {cell}")
    allowed = ((spec.Activation.TANH, spec.Activation.RELU) if cell == spec.Cell.RNN
               else (spec.Activation.TANH,))
    if act not in allowed:
        raise ValueError(f"plan[{i}] (RNN): activation code {act} not allowed for its cell")
    L = int(rec[F["w"]])
    seq = rec[F["aux"]] == rec[F["y"]]
    if rec[F["h"]] != 1 or rec[F["oh"]] != 1 or min(L, rec[F["c"]], rec[F["oc"]]) < 1 \
            or rec[F["ow"]] != (L if seq else 1) or (seq and rec[F["daux"]] != rec[F["dy"]]):
        raise ValueError(f"plan[{i}] (RNN): inconsistent shapes or offsets")
