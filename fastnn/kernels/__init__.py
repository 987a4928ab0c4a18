"""Kernel backends: one API, four implementations.

``reference`` (numpy, the oracle), ``c`` (C through cffi), ``numba`` (Numba on
the CPU) and ``cuda`` (numba.cuda) expose the same functions with the same
signatures; ``reference`` documents them.  Backends are imported lazily, so
importing fastnn compiles nothing.

The default backend is ``c`` when its extension is built, else ``numba``; the
``FASTNN_BACKEND`` environment variable or :func:`set_backend` choose another.
"""

import importlib
import os

BACKENDS = ("c", "numba", "cuda", "reference")

# The kernel names every backend exposes (tests check signatures against
# reference).
KERNELS = (
    "gemm", "dense_forward", "dense_backward",
    "activation_forward", "activation_backward", "softmax_forward", "softmax_backward",
    "softmax_xent_forward", "softmax_xent_backward", "bce_forward", "bce_backward",
    "mse_forward", "mse_backward", "mae_forward", "mae_backward",
    "sgd", "adam", "adamw", "rmsprop", "adagrad", "nadam", "adamax",
    "sum_squares", "scale", "clip", "axpy", "dense_stack_epoch", "dense_stack_workspace",
    "conv2d_forward", "conv2d_backward", "maxpool2d_forward", "maxpool2d_backward",
    "avgpool2d_forward", "avgpool2d_backward", "batchnorm_forward", "batchnorm_inference",
    "batchnorm_backward",
    "empty", "zeros", "asarray", "to_numpy", "info",
)

_default = None
_num_threads = None


def get(name=None):
    """Return the backend module `name` (default: the current backend).

    Raises ValueError for an unknown name and ImportError, with the reason,
    for a backend that cannot be used on this machine.
    """
    if name is None:
        name = get_backend()
    if name not in BACKENDS:
        raise ValueError(f"backend: unknown {name!r}; expected one of {', '.join(BACKENDS)}")
    module = importlib.import_module(f"fastnn.kernels.{name}")
    if _num_threads is not None and hasattr(module, "set_num_threads"):
        module.set_num_threads(_num_threads)
    return module


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
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n: expected an integer >= 1, got {n!r}")
    _num_threads = n
    for name in ("c", "numba"):
        if available(name):  # get() applies _num_threads
            get(name)


def default_num_threads():
    """OMP_NUM_THREADS if set, else the cores this process may use."""
    env = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1
