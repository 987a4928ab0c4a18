"""The Numba backend: every kernel of spec.KERNELS compiled for the CPU.

The implementations follow the backend contract (fastnn/kernels/spec.py):
the front, ``fastnn.kernels.get("numba")``, validates every argument and
calls them positionally with normalised arguments (float32 arrays, the
activation's code, (h, w) pairs, Python floats); the reference documents
the kernels.  One file per area, as csrc/: ``_gemm`` (the vector-IR
micro-kernel, gemm and the dense layer), ``_elementwise`` (activations,
softmax, flat-buffer utilities), ``_losses``, ``_optimizers``, ``_epoch``
(dense_stack_epoch), ``_conv`` (convolution and pooling), ``_norm`` (batch
norm), ``_dropout`` (Philox masks), ``_plan`` (model_epoch, the interpreter
of a compiled model's records over those kernels); ``_common`` holds what
they share.

Nothing is compiled at import time: kernels are compiled on first call and
cached on disk (``cache=True``, in ``__pycache__``); :func:`warmup` compiles
all of them at once (benchmarks call it so that timings exclude compilation).

Numerics.  ``fastmath`` is limited to ``contract`` (FMA) and ``reassoc`` (so
that LLVM can vectorise reductions): NaN and Inf propagate as in the
reference.  Losses and ``sum_squares`` accumulate in float64.  Elementwise
math mixes float32 arrays with float64 scalars, so it runs in float64 and
rounds once on store -- except the optimizer updates, which run in float32
as the c backend's do (see ``_optimizers``).
"""

import hashlib
import os

import numba  # absolute import: the real numba, not this package
import numpy as np

from .. import spec


def _cache_dirs(here):
    """The folders numba may cache this backend's kernels in: ``__pycache__``
    beside the sources, NUMBA_CACHE_DIR's folder for them when it is set, and
    the user-wide one numba falls back to when ``__pycache__`` is read-only
    (the two latter named as numba's locators name them)."""
    dirs = [os.path.join(here, "__pycache__")]
    try:
        from numba.core.caching import _CacheLocator
        from numba.misc.appdirs import AppDirs
        sub = _CacheLocator.get_suitable_cache_subpath(os.path.join(here, "__init__.py"))
        if numba.config.CACHE_DIR:
            dirs.append(os.path.join(numba.config.CACHE_DIR, sub))
        dirs.append(os.path.join(AppDirs(appname="numba", appauthor=False).user_cache_dir, sub))
    except (ImportError, AttributeError):  # another numba's internals: __pycache__ only
        pass
    return dirs


def _drop_stale_caches(here=None):
    """Remove the on-disk compiled kernels when any source they were built
    from changed.  Numba keys a cache entry on its own file's timestamp only:
    a kernel in _plan.py inlining a helper of _epoch.py keeps loading the
    machine code of the old helper (wrong results or a crash) after _epoch.py
    changes.  The stamp is a hash of every module of this backend and of
    spec.py (whose constants are frozen into the code), kept in each folder
    numba may cache them in."""
    here = here or os.path.dirname(os.path.abspath(__file__))
    sources = sorted(f for f in os.listdir(here) if f.endswith(".py"))
    digest = hashlib.sha256()
    for path in [os.path.join(here, f) for f in sources] + [spec.__file__]:
        with open(path, "rb") as f:
            digest.update(f.read())
    digest.update(numba.__version__.encode())
    # __pycache__ and NUMBA_CACHE_DIR's folder are made with their stamp if
    # missing (else the next process would find numba's entries there without
    # a stamp and drop them); the user-wide one is looked at only if it exists
    written = {os.path.join(here, "__pycache__")}
    if numba.config.CACHE_DIR:
        written.update(_cache_dirs(here)[1:2])
    for cache in _cache_dirs(here):
        if cache in written or os.path.isdir(cache):
            _drop_if_stale(cache, digest.hexdigest())


def _drop_if_stale(cache, stamp):
    stamp_path = os.path.join(cache, "fastnn-sources.sha256")
    try:
        with open(stamp_path) as f:
            if f.read().strip() == stamp:
                return
    except OSError:
        pass
    try:
        os.makedirs(cache, exist_ok=True)
        for f in os.listdir(cache):
            if f.endswith((".nbi", ".nbc")):
                os.remove(os.path.join(cache, f))
        with open(stamp_path, "w") as f:
            f.write(stamp)
    except OSError:  # no such folder yet, or read-only: numba then caches elsewhere or not
        pass


def _guard_parfor_cache():
    """Make the on-disk cache safe for kernels that call parallel (prange)
    kernels.  Machine code that calls into numba's threading layer needs its
    symbols (``numba_parallel_for``, ``get_num_threads``, ...) registered
    with the JIT before it is loaded; numba registers them when it compiles
    a parfor or loads a cache entry whose ``reload_init`` says so.  But
    numba 0.68 does not give a library loaded from the cache its
    ``reload_init`` back (``CompileResult._rebuild`` runs the functions and
    drops them), so a caller compiled in a process whose parallel callees
    all came from the cache is written with an empty ``reload_init``.  A
    later process whose first kernel is that caller loads it with the
    threading symbols unknown: the JIT leaves every external relocation of
    the object at 0 and the first call jumps to address 0 (a segfault).

    Two guards, each sufficient on its own:
    1. the threading layer is started here, before any kernel is loaded,
       so that a cache entry written without its reload_init (by numba, or
       by an older fastnn) loads with its symbols resolved;
    2. ``_rebuild`` keeps the reload_init on the loaded library, so that
       callers linking it inherit it and are cached correctly (a no-op
       where numba's internals differ from 0.68's)."""
    from numba.core import compiler
    rebuild = compiler.CompileResult.__dict__.get("_rebuild")
    if isinstance(rebuild, classmethod) and not getattr(rebuild.__func__, "_fastnn", False):
        def _rebuild(cls, *args, **kwargs):
            cres = rebuild.__func__(cls, *args, **kwargs)
            reload_init = getattr(cres, "reload_init", None)
            library = getattr(cres, "library", None)
            if reload_init and isinstance(getattr(library, "_reload_init", None), set):
                library._reload_init.update(reload_init)
            return cres
        _rebuild._fastnn = True
        compiler.CompileResult._rebuild = classmethod(_rebuild)
    numba.get_num_threads()  # starts the threading layer, registering its symbols


_drop_stale_caches()
_guard_parfor_cache()
from ..reference import asarray, empty, to_numpy, zeros  # noqa: F401 - host arrays, as the reference
from ._conv import (avgpool2d_backward, avgpool2d_forward, conv2d_backward,  # noqa: F401
                    conv2d_forward, maxpool2d_backward, maxpool2d_forward)
from ._elementwise import (activation_backward, activation_forward, axpy, clip,  # noqa: F401
                           scale, softmax_backward, softmax_forward, sum_squares)
from ._dropout import dropout_backward, dropout_forward  # noqa: F401
from ._epoch import dense_stack_epoch  # noqa: F401
from ._gemm import _W, dense_backward, dense_forward, gemm  # noqa: F401
from ._losses import (bce_backward, bce_forward, mae_backward, mae_forward,  # noqa: F401
                      mse_backward, mse_forward, softmax_xent_backward, softmax_xent_forward)
from ._norm import batchnorm_backward, batchnorm_forward, batchnorm_inference  # noqa: F401
from ._optimizers import adagrad, adam, adamax, adamw, nadam, radam, rmsprop, sgd  # noqa: F401
from ._plan import model_epoch  # noqa: F401
from ._rnn import rnn_backward, rnn_forward  # noqa: F401

name = "numba"
DTYPE = np.float32


def info():
    """What this backend is: a dict with at least 'backend' and 'threads'."""
    return {"backend": name, "threads": numba.get_num_threads(),
            "simd": f"llvm, {_W}-float vectors", "numba": numba.__version__}


def set_num_threads(n):
    """Threads used by the parallel kernels (clamped to NUMBA_NUM_THREADS)."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n: expected an integer >= 1, got {n!r}")
    numba.set_num_threads(min(int(n), numba.config.NUMBA_NUM_THREADS))


def warmup():
    """Compile (or load from the disk cache) every kernel on tiny inputs,
    with the argument types the front passes."""
    f32 = np.float32
    relu, tanh = int(spec.Activation.RELU), int(spec.Activation.TANH)
    x = np.linspace(-1.0, 1.0, 6, dtype=f32).reshape(2, 3)
    w = np.ones((3, 3), dtype=f32)
    out = np.empty_like(x)
    labels = np.array([0, 2], dtype=np.int32)
    gemm(x, w, out, False, False, 1.0, 0.0)
    dense_forward(out, x, w, w[0], relu, 0.01)
    dense_backward(np.empty_like(x), np.empty_like(w), np.empty(3, f32), np.empty_like(x), x, x,
                   w, out, relu, 0.01)
    activation_forward(out, x, tanh, 0.01)
    activation_backward(out, x, x, tanh, 0.01)
    softmax_forward(out, x)
    softmax_backward(out, x, x)
    softmax_xent_forward(out, x, labels)
    softmax_xent_backward(out, x, labels)
    for forward, backward in ((bce_forward, bce_backward), (mse_forward, mse_backward),
                              (mae_forward, mae_backward)):
        forward(x, x)
        backward(out, x, x)
    p, g = np.zeros(4, f32), np.ones(4, f32)
    s1, s2, s3 = np.zeros(4, f32), np.zeros(4, f32), np.zeros(4, f32)
    sgd(p, g, s1, 1, 0.1, 0.9, 0.0, False, 0.0)
    adam(p, g, s1, s2, 1, 0.1, 0.9, 0.999, 1e-8, 0.0)
    adamw(p, g, s1, s2, 1, 0.1, 0.9, 0.999, 1e-8, 0.0)
    rmsprop(p, g, s1, s2, s3, 0.1, 0.99, 1e-8, 0.0, 0.9, True)
    adagrad(p, g, s1, 1, 0.1, 0.0, 0.0, 1e-10)
    nadam(p, g, s1, s2, 1, 0.1, 0.9, 0.999, 1e-8, 0.0, 4e-3, spec.nadam_mu(1, 0.9, 4e-3))
    adamax(p, g, s1, s2, 1, 0.1, 0.9, 0.999, 1e-8, 0.0)
    radam(p, g, s1, s2, 1, 0.1, 0.9, 0.999, 1e-8, 0.0)
    sum_squares(p)
    scale(p, 0.5)
    clip(p, -1.0, 1.0)
    axpy(p, g, 0.5)
    layers = (spec.DenseLayer(3, 3, 0, -1, relu, 0.0),)
    hyper = {h.name: h.default for h in spec.OPTIMIZERS["sgd"].hyper}
    dense_stack_epoch(spec.Epoch(
        np.zeros(9, f32), np.zeros(9, f32), (None,),
        np.empty(spec.epoch_workspace(layers, 2, 1), f32), x, labels, np.empty(1),
        np.empty(1, np.int64), layers, "softmax_xent", 2, "sgd", dict(hyper, lr=0.1), 0))
    dropout_forward(out, x, 0.5, 1, 2)
    dropout_backward(out, x, 0.5, 1, 2)
    _warmup_cnn()
    _warmup_rnn()
    _warmup_model_epoch()


def _warmup_cnn():
    """The conv, pooling and batch-norm kernels of ``warmup``."""
    f32, relu = np.float32, int(spec.Activation.RELU)
    x = np.linspace(-1.0, 1.0, 32, dtype=f32).reshape(1, 4, 4, 2)
    w = np.ones((3, 3, 2, 2), dtype=f32)
    y, cols = np.empty((1, 2, 2, 2), f32), np.empty((4, 18), f32)
    conv2d_forward(y, x, w, w[0, 0, 0], cols, (1, 1), (0, 0), relu, 0.01)
    conv2d_backward(np.empty_like(x), np.empty_like(w), np.empty(2, f32), np.empty_like(y), y,
                    x, w, y, cols, (1, 1), (0, 0), relu, 0.01)
    from ._gemm import _W  # one vector of output channels: the direct convolution
    wd = np.ones((3, 3, 2, _W), dtype=f32)
    yd = np.empty((1, 2, 2, _W), f32)
    conv2d_forward(yd, x, wd, wd[0, 0, 0], cols, (1, 1), (0, 0), relu, 0.01)
    conv2d_backward(np.empty_like(x), np.empty_like(wd), np.empty(_W, f32), np.empty_like(yd), yd,
                    x, wd, yd, cols, (1, 1), (0, 0), relu, 0.01)
    am = np.empty((1, 2, 2, 2), np.int32)
    maxpool2d_forward(y, x, am, (2, 2), (2, 2))
    maxpool2d_backward(np.empty_like(x), y, am, (2, 2), (2, 2))
    avgpool2d_forward(y, x, (2, 2), (2, 2))
    avgpool2d_backward(np.empty_like(x), y, (2, 2), (2, 2))
    c2, c3, c4 = np.ones(2, f32), np.ones(2, f32), np.ones(2, f32)
    batchnorm_forward(np.empty_like(x), x, c2, c2, c3, c4, np.zeros(2, f32), np.ones(2, f32),
                      0.1, 1e-5)
    batchnorm_inference(np.empty_like(x), x, c2, c2, c3, c4, 1e-5)
    batchnorm_backward(np.empty_like(x), np.empty(2, f32), np.empty(2, f32), x, x, c2, c3, c4)


def _warmup_rnn():
    """The recurrent kernels of ``warmup`` (one compilation serves every cell)."""
    f32 = np.float32
    x = np.linspace(-1.0, 1.0, 6, dtype=f32).reshape(1, 2, 3)
    for cell, gates, cache in ((spec.Cell.RNN, 1, 1), (spec.Cell.GRU, 3, 4)):
        w_ih, w_hh = np.ones((3, gates * 2), f32), np.ones((2, gates * 2), f32)
        b = np.zeros(gates * 2, f32)
        hs, g = np.empty((1, 2, 2), f32), np.empty((1, 2, cache * 2), f32)
        rnn_forward(hs, g, x, w_ih, w_hh, b, b, int(cell), int(spec.Activation.TANH))
        rnn_backward(np.empty_like(x), np.empty_like(w_ih), np.empty_like(w_hh), np.empty_like(b),
                     np.empty_like(b), np.ones_like(hs), g, x, w_ih, w_hh, hs, int(cell),
                     int(spec.Activation.TANH))


def _warmup_model_epoch():
    """model_epoch on a one-record plan (every record kind's code is
    compiled with it: the interpreter is one function), with clipping so
    that it runs the interpreter, not the dense stack's loop (which
    dense_stack_epoch compiled)."""
    f32 = np.float32
    rec = dict.fromkeys(spec.PLAN_FIELDS, 0)
    rec.update(op=int(spec.Op.DENSE), x=-1, y=0, dx=-1, dy=6, aux=-1, daux=-1, iaux=-1, param=0,
               bias=-1, stat0=-1, stat1=-1, h=1, w=1, c=3, oh=1, ow=1, oc=3, kh=1, kw=1, sh=1,
               sw=1, act=int(spec.Activation.RELU))
    hyper = {h.name: h.default for h in spec.OPTIMIZERS["sgd"].hyper}
    x = np.linspace(-1.0, 1.0, 6, dtype=f32).reshape(2, 3)
    model_epoch(spec.ModelEpoch(
        np.zeros(9, f32), np.zeros(9, f32), np.zeros(0, f32), (None,), np.zeros(24, f32),
        np.zeros(2, np.int32), x, np.array([0, 2], np.int32), np.empty(1),
        np.empty(1, np.int64), np.array([[rec[k] for k in spec.PLAN_FIELDS]], np.int64),
        np.array([[0.01, 0.1, 1e-5, 0.0]]), np.zeros((0, 2), np.int64), in_size=3, out_size=3,
        xb=12, tb=18, lb=0, output=0, doutput=6, batch_size=2, optimizer="sgd",
        hyper=dict(hyper, lr=0.1), clip_value=1.0))
