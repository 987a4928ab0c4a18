"""Kernel backends: one API (``spec.KERNELS``), four implementations.

``reference`` (numpy, the oracle), ``c`` (C through cffi), ``numba`` (Numba on
the CPU) and ``cuda`` (numba.cuda) implement the kernels of
:mod:`fastnn.kernels.spec`; :func:`get` puts the specification's signatures
and argument checks in front of them (see :class:`Backend`), and the
reference's docstrings document them.  Backends are imported lazily, so
importing fastnn compiles nothing.

The default backend is ``c`` when its extension is built, else ``numba``; the
``FASTNN_BACKEND`` environment variable or :func:`set_backend` choose another.
"""

import functools
import importlib
import os
import types

import numpy as np

from . import _checks, spec

BACKENDS = ("c", "numba", "cuda", "reference")

# The kernel names every backend exposes, in the specification's order.
KERNELS = tuple(spec.KERNELS)

_default = None
_num_threads = None
_fronts = {}


def get(name=None):
    """The kernels of backend `name` (default: the current backend).

    Returns a :class:`Backend`: the specification's kernels, each checking
    its arguments before the backend's implementation runs.  Raises
    ValueError for an unknown name and ImportError, with the reason, for a
    backend that cannot be used on this machine.
    """
    if name is None:
        name = get_backend()
    if name not in BACKENDS:
        raise ValueError(f"backend: unknown {name!r}; expected one of {', '.join(BACKENDS)}")
    front = _fronts.get(name)
    if front is None:  # (a backend first used after set_num_threads takes its count)
        front = _fronts[name] = Backend(importlib.import_module(f"fastnn.kernels.{name}"))
        if _num_threads is not None and hasattr(front.module, "set_num_threads"):
            front.module.set_num_threads(_num_threads)
    return front


class Backend:
    """One backend's kernels behind the specification's signatures.

    For each kernel of :data:`spec.KERNELS` this object has a function with
    the public signature that validates and converts its arguments once
    (``_checks.prepare_<kernel>``, errors naming the argument) and then calls
    the module's implementation with the normalised arguments in order.  A
    module without an implementation of a kernel gets the reference's (for a
    device backend, with its arrays staged through the host), so a backend
    can be written one kernel at a time.  Other attributes (``info``,
    ``empty``, ``zeros``, ``asarray``, ``to_numpy``, ``set_num_threads``,
    ``warmup``, ...) are the module's own.
    """

    def __init__(self, module):
        self.module = module
        self.name = module.name
        self.__name__ = module.__name__
        # the implementations (the module's, else the reference's) and the
        # module's array functions: what a kernel written with other kernels
        # (the generic epoch) calls
        self.impls = types.SimpleNamespace(**{name: getattr(module, name)
                                              for name in spec.RUNTIME})
        for kernel in spec.KERNELS.values():
            impl = getattr(module, kernel.name, None)
            if impl is None:
                impl = _reference_impl(kernel, module, self.impls)
            setattr(self.impls, kernel.name, impl)
            setattr(self, kernel.name, _front(kernel, impl, module))

    def __getattr__(self, attr):
        return getattr(self.module, attr)

    def __repr__(self):
        return f"<fastnn kernels {self.name!r}>"

    def dense_stack_workspace(self, layers, batch_size):
        """Floats of workspace ``dense_stack_epoch`` needs here: the
        specification's layout (spec.epoch_layout) for the threads this
        backend's epoch may use."""
        threads = self.module.epoch_threads() if hasattr(self.module, "epoch_threads") else 1
        return spec.epoch_workspace(layers, batch_size, threads)


def _front(kernel, impl, module):
    """The public function of `kernel`: prepare, then impl (source generated
    from the specification, like dataclasses' __init__, so that the function
    has the kernel's real signature and costs one call more than impl)."""
    if kernel.name in spec.OPTIMIZERS:
        prepare = functools.partial(_checks.prepare_optimizer, spec.OPTIMIZERS[kernel.name])
    else:
        prepare = getattr(_checks, f"prepare_{kernel.name}")
    args = ", ".join(kernel.params)
    dtype = module.DTYPE
    if dtype is None:  # the reference computes in float64 when its outputs are float64
        arrays = kernel.outputs or kernel.params[:1]
        dt = f"_compute_dtype({', '.join(arrays)})"
    else:
        dt = "_dtype"
    ret = {"value": "value", None: "None"}.get(kernel.returns, kernel.returns)
    call = f"_prepare({args}, {dt})"
    if getattr(module, "DEVICE", False) and kernel.name not in _EPOCHS:
        # every check ran on the caller's arrays (overlaps, label ranges);
        # then host inputs move to the device (the epoch's implementation
        # moves its own)
        call = f"_inputs_to_device({call})"
    src = (f"def {kernel.name}({kernel.signature}):\n"
           f"    value = _impl(*{call})\n"
           f"    return {ret}\n")
    outputs = [i for i, p in enumerate(kernel.params) if p in kernel.outputs]
    namespace = {"_impl": impl, "_prepare": prepare, "_dtype": dtype,
                 "_compute_dtype": _compute_dtype,
                 "_inputs_to_device": functools.partial(_inputs_to_device, module, outputs)}
    exec(compile(src, f"<fastnn.kernels front: {kernel.name}>", "exec"), namespace)  # noqa: S102
    fn = namespace[kernel.name]
    fn.__doc__ = getattr(_reference_module(), kernel.name).__doc__
    fn.__qualname__ = f"{module.name}.{kernel.name}"
    fn.__module__ = module.__name__
    return fn


# The whole-epoch kernels and the reference's loops that run them over a
# backend's own kernels (for a backend without its own epoch).
_EPOCHS = {"dense_stack_epoch": "run_dense_stack_epoch", "model_epoch": "run_model_epoch",
           "model_epochs": "run_model_epochs"}


def _inputs_to_device(module, outputs, args):
    """args with every host array that is not an output copied to the device."""
    return tuple(module.to_device(a) if i not in outputs and isinstance(a, np.ndarray) else a
                 for i, a in enumerate(args))


def _compute_dtype(*arrays):
    """float64 when any given array is float64 (the reference's gradient
    checks), else float32; epoch structures by their params."""
    for a in arrays:
        if isinstance(a, (list, tuple)) and a:  # model_epochs' list of epochs
            a = a[0]
        a = getattr(a, "params", a)
        if a is not None and getattr(a, "dtype", None) == np.float64:
            return np.dtype(np.float64)
    return np.dtype(np.float32)


def _reference_module():
    return importlib.import_module("fastnn.kernels.reference")


def _reference_impl(kernel, module, impls):
    """The reference's implementation of `kernel` for `module`: the epoch
    as the reference's loop over the backend's own kernels (`impls`); any
    other kernel as it is on a host backend, and on a device backend with
    every device array copied to the host and the outputs copied back."""
    if kernel.name in _EPOCHS:
        return functools.partial(getattr(_reference_module(), _EPOCHS[kernel.name]), impls)
    impl = getattr(_reference_module(), kernel.name)
    if not getattr(module, "DEVICE", False):
        return impl
    outputs = {i for i, p in enumerate(kernel.params) if p in kernel.outputs}

    def staged(*args):
        host = [module.to_numpy(a) if _checks._is_device(a) else a for a in args]
        value = impl(*host)
        for i in outputs:
            if _checks._is_device(args[i]):
                args[i].copy_to_device(host[i])
        return value

    staged.__name__ = kernel.name
    return staged


def available(name):
    """True if backend `name` can be imported and used here."""
    try:
        get(name)
    except ImportError:
        return False
    return True


def get_backend():
    """Name of the current default backend."""
    global _default
    if _default is None:
        env = os.environ.get("FASTNN_BACKEND")
        if env:
            set_backend(env)
        else:
            _default = "c" if available("c") else "numba"
    return _default


def set_backend(name):
    """Make `name` the default backend (checked: it must import)."""
    global _default
    get(name)
    _default = name


def set_num_threads(n):
    """Threads used by the C and Numba kernels (default: the available cores)."""
    global _num_threads
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n < 2 ** 31:
        raise ValueError(f"n: expected an integer in [1, 2**31), got {n!r}")
    _num_threads = n = int(n)
    for name in ("c", "numba"):
        if available(name):
            get(name).module.set_num_threads(n)


def default_num_threads():
    """OMP_NUM_THREADS if set, else the cores this process may use."""
    env = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1
