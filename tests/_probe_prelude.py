"""What every probe of tests/test_probes.py can use (run inside the probe's
subprocess; not a test module).

A probe is a piece of Python that passes if it runs to its end.  The
helpers here build a valid call of every kernel (``valid(name)``), valid
epochs, and check that a call fails the way the project promises: a
TypeError or ValueError whose message names an argument, before any kernel
runs (``refused``).
"""

import contextlib
import dataclasses
import json
import math
import os
import re
import resource
import subprocess
import sys
import tempfile

import numpy as np

import fastnn
from fastnn import kernels
from fastnn.kernels import spec


class ProbeFailed(AssertionError):
    pass


def raises(exc, match, fn, *args, **kwargs):
    """fn(*args, **kwargs) raises exc with a message matching `match`."""
    try:
        fn(*args, **kwargs)
    except exc as e:
        if match is not None and not re.search(match, str(e), re.I | re.S):
            raise ProbeFailed(f"{type(e).__name__} with the wrong message: {e}") from e
        return e
    except BaseException as e:  # noqa: BLE001 - any other exception is the failure
        raise ProbeFailed(f"expected {exc}, got {type(e).__name__}: {e}") from e
    raise ProbeFailed(f"expected {exc} ({match}), nothing was raised")


def refused(fn, names, *args, **kwargs):
    """A TypeError/ValueError naming one of `names` (an argument) as 'name:'
    or 'name ' somewhere in its message."""
    names = [names] if isinstance(names, str) else list(names)
    pat = "|".join(re.escape(n) for n in names)
    return raises((TypeError, ValueError), rf"(^|[^A-Za-z_])({pat})\b", fn, *args, **kwargs)


@contextlib.contextmanager
def memory_limit(extra_bytes):
    """Address space limited to what is mapped now plus extra_bytes: an
    allocation past it raises MemoryError instead of swapping."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    with open("/proc/self/statm") as f:
        mapped = int(f.read().split()[0]) * resource.getpagesize()
    resource.setrlimit(resource.RLIMIT_AS, (mapped + extra_bytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def f32(*shape, seed=0, low=-1.0, high=1.0):
    return np.random.default_rng(seed).uniform(low, high, shape).astype(np.float32)


def zeros(*shape, dtype=np.float32):
    return np.zeros(shape, dtype)


# ---- a valid call of every kernel -----------------------------------------------------

def _optimizer_args(name):
    o = spec.OPTIMIZERS[name]
    args = {"params": f32(10), "grads": f32(10, seed=1)}
    for s in o.states:
        args[s] = zeros(10)
    if o.step:
        args["step"] = 1
    for h in o.hyper:
        args[h.name] = (h.default if h.default is not None else 0.0)
    args["lr"] = 0.01
    for s, v in o.scalars.items():
        args[s] = v
    if "mu_product" in args:  # mu_1 (this step's mu included)
        args["mu_product"] = spec.nadam_mu(1, args["beta1"], args["momentum_decay"])
    return args


def valid(name):
    """Keyword arguments of a small valid call of kernel `name`."""
    if name in spec.OPTIMIZERS:
        return _optimizer_args(name)
    lab = np.array([0, 1, 3], np.int32)
    T01 = f32(3, 4, low=0.0, high=1.0)
    table = {
        "gemm": lambda: dict(A=f32(3, 4), B=f32(4, 5), C=zeros(3, 5), trans_a=False,
                             trans_b=False, alpha=1.0, beta=0.0),
        "dense_forward": lambda: dict(Y=zeros(3, 5), X=f32(3, 4), W=f32(4, 5), b=f32(5),
                                      activation="relu", negative_slope=0.01),
        "dense_backward": lambda: dict(dX=zeros(3, 4), dW=zeros(4, 5), db=zeros(5), dZ=zeros(3, 5),
                                       dY=f32(3, 5), X=f32(3, 4), W=f32(4, 5), Y=f32(3, 5, low=0),
                                       activation="relu", negative_slope=0.01),
        "activation_forward": lambda: dict(Y=zeros(3, 4), X=f32(3, 4), activation="tanh",
                                           negative_slope=0.01),
        "activation_backward": lambda: dict(dX=zeros(3, 4), dY=f32(3, 4), Y=f32(3, 4),
                                            activation="tanh", negative_slope=0.01),
        "softmax_forward": lambda: dict(Y=zeros(3, 4), X=f32(3, 4)),
        "softmax_backward": lambda: dict(dX=zeros(3, 4), dY=f32(3, 4), Y=f32(3, 4, low=0)),
        "softmax_xent_forward": lambda: dict(P=zeros(3, 4), Z=f32(3, 4), labels=lab),
        "softmax_xent_backward": lambda: dict(dZ=zeros(3, 4), P=f32(3, 4, low=0), labels=lab),
        "bce_forward": lambda: dict(Z=f32(3, 4), T=T01),
        "bce_backward": lambda: dict(dZ=zeros(3, 4), Z=f32(3, 4), T=T01),
        "mse_forward": lambda: dict(Y=f32(3, 4), T=f32(3, 4, seed=1)),
        "mse_backward": lambda: dict(dY=zeros(3, 4), Y=f32(3, 4), T=f32(3, 4, seed=1)),
        "mae_forward": lambda: dict(Y=f32(3, 4), T=f32(3, 4, seed=1)),
        "mae_backward": lambda: dict(dY=zeros(3, 4), Y=f32(3, 4), T=f32(3, 4, seed=1)),
        "sum_squares": lambda: dict(x=f32(10)),
        "scale": lambda: dict(x=f32(10), s=2.0),
        "clip": lambda: dict(x=f32(10), lo=-0.5, hi=0.5),
        "axpy": lambda: dict(y=f32(10), x=f32(10, seed=1), alpha=0.5),
        "dropout_forward": lambda: dict(Y=zeros(3, 4), X=f32(3, 4), p=0.5, seed=1, counter=0),
        "dropout_backward": lambda: dict(dX=zeros(3, 4), dY=f32(3, 4), p=0.5, seed=1, counter=0),
        "conv2d_forward": lambda: dict(Y=zeros(2, 3, 3, 4), X=f32(2, 5, 5, 3), W=f32(3, 3, 3, 4),
                                       b=f32(4), cols=zeros(18, 27), stride=1, padding=0,
                                       activation="relu", negative_slope=0.01),
        "conv2d_backward": lambda: dict(dX=zeros(2, 5, 5, 3), dW=zeros(3, 3, 3, 4), db=zeros(4),
                                        dZ=zeros(2, 3, 3, 4), dY=f32(2, 3, 3, 4),
                                        X=f32(2, 5, 5, 3), W=f32(3, 3, 3, 4),
                                        Y=f32(2, 3, 3, 4, low=0), cols=zeros(18, 27), stride=1,
                                        padding=0, activation="relu", negative_slope=0.01),
        "maxpool2d_forward": lambda: dict(Y=zeros(2, 2, 2, 3), X=f32(2, 4, 4, 3),
                                          argmax=zeros(2, 2, 2, 3, dtype=np.int32), pool=2,
                                          stride=None),
        "maxpool2d_backward": lambda: dict(dX=zeros(2, 4, 4, 3), dY=f32(2, 2, 2, 3),
                                           argmax=np.full((2, 2, 2, 3), 5, np.int32), pool=2,
                                           stride=None),
        "avgpool2d_forward": lambda: dict(Y=zeros(2, 2, 2, 3), X=f32(2, 4, 4, 3), pool=2,
                                          stride=None),
        "avgpool2d_backward": lambda: dict(dX=zeros(2, 4, 4, 3), dY=f32(2, 2, 2, 3), pool=2,
                                           stride=None),
        "batchnorm_forward": lambda: dict(Y=zeros(4, 3), X=f32(4, 3), gamma=np.ones(3, np.float32),
                                          beta=zeros(3), mean=zeros(3), invstd=zeros(3),
                                          running_mean=zeros(3), running_var=np.ones(3, np.float32),
                                          momentum=0.1, eps=1e-5),
        "batchnorm_inference": lambda: dict(Y=zeros(4, 3), X=f32(4, 3), gamma=np.ones(3, np.float32),
                                            beta=zeros(3), running_mean=zeros(3),
                                            running_var=np.ones(3, np.float32), eps=1e-5),
        "batchnorm_backward": lambda: dict(dX=zeros(4, 3), dgamma=zeros(3), dbeta=zeros(3),
                                           dY=f32(4, 3), X=f32(4, 3), gamma=np.ones(3, np.float32),
                                           mean=zeros(3), invstd=np.ones(3, np.float32)),
        # a GRU layer: N 2, L 3, C 2, H 4; 3 gates, a gate cache of 4 H per step
        "rnn_forward": lambda: dict(Hs=zeros(2, 3, 4), G=zeros(2, 3, 16), X=f32(2, 3, 2),
                                    W_ih=f32(2, 12), W_hh=f32(4, 12), b_ih=f32(12), b_hh=f32(12),
                                    cell="gru", activation="tanh"),
        "rnn_backward": lambda: dict(dX=zeros(2, 3, 2), dW_ih=zeros(2, 12), dW_hh=zeros(4, 12),
                                     db_ih=zeros(12), db_hh=zeros(12), dHs=f32(2, 3, 4),
                                     G=f32(2, 3, 16, low=0.0), X=f32(2, 3, 2), W_ih=f32(2, 12),
                                     W_hh=f32(4, 12), Hs=f32(2, 3, 4), cell="gru",
                                     activation="tanh"),
    }
    return table[name]()


def optional_arrays(name):
    """Array arguments that may be None in a valid call."""
    if name in spec.OPTIMIZERS:
        return set(spec.OPTIMIZERS[name].optional)
    return {"dense_forward": {"b"}, "conv2d_forward": {"b"}, "dense_backward": {"db", "dX"},
            "conv2d_backward": {"db", "dX"},
            "rnn_backward": {"dX", "db_ih", "db_hh"}}.get(name, set())


def call(backend, name, args):
    return getattr(kernels.get(backend), name)(**args)


def overlapping(a, b, shift=8):
    """Copies of arrays a and b laid into one buffer so that b starts
    `shift` bytes into a (a partial overlap, never the same pointer); b's
    values are written last (an input stays valid)."""
    na, nb = a.nbytes, b.nbytes
    if shift >= na:  # a is tiny: the same start, a different dtype or shape
        shift = 0
    buf = np.zeros(max(na, shift + nb) + 64, np.uint8)
    va = buf[:na].view(a.dtype).reshape(a.shape)
    vb = buf[shift:shift + nb].view(b.dtype).reshape(b.shape)
    va[...] = a
    vb[...] = b
    return va, vb


# ---- valid epochs ---------------------------------------------------------------------

def dense_epoch(backend="c", n=20, batch=8, optimizer="adam", loss="softmax_xent", order=True):
    """A valid spec.Epoch of a 5-6-3 dense stack."""
    k = kernels.get(backend)
    model = fastnn.Sequential([fastnn.Dense(5, 6, "relu"), fastnn.Dense(6, 3)], seed=0,
                              backend="reference")
    layers = model.dense_stack()
    p = model.get_params()
    X = f32(n, 5)
    t = (np.arange(n) % 3).astype(np.int32) if loss == "softmax_xent" else f32(n, 3)
    o = np.random.default_rng(1).permutation(n).astype(np.int64) if order else None
    nb = -(-n // batch)
    return spec.Epoch(p, np.zeros_like(p), tuple(np.zeros_like(p) for _ in
                                                  spec.OPTIMIZERS[optimizer].states),
                      k.empty(k.dense_stack_workspace(layers, batch)), X, t, np.zeros(nb),
                      np.zeros(nb, np.int64), layers=layers, loss=loss, batch_size=batch,
                      optimizer=optimizer, hyper={"lr": 1e-2, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8}, order=o)


def model_epoch(backend="c", n=20, batch=8, cnn=False, order=True):
    """A valid spec.ModelEpoch (a dense model, or a small CNN with BatchNorm)."""
    from fastnn import plan as plan_mod

    k = kernels.get(backend)
    if cnn:
        layers = [fastnn.Conv2D(1, 2, 3, padding=1, activation="relu"), fastnn.BatchNorm(2),
                  fastnn.MaxPool2D(2), fastnn.Flatten(), fastnn.Dense(8, 3)]
        model = fastnn.Sequential(layers, seed=0, backend="reference", input_shape=(4, 4, 1))
        X = f32(n, 4, 4, 1)
    else:
        model = fastnn.Sequential([fastnn.Dense(5, 6, "relu"), fastnn.Dropout(0.2),
                                   fastnn.Dense(6, 3)], seed=0, backend="reference")
        X = f32(n, 5)
    pl = plan_mod.compile_model(model, batch)
    p = model.get_params()
    t = (np.arange(n) % 3).astype(np.int32)
    o = np.random.default_rng(1).permutation(n).astype(np.int64) if order else None
    nb = -(-n // batch)
    return pl.epoch(params=p, grads=np.zeros_like(p), buffers=model.get_buffers(),
                    states=(np.zeros_like(p), np.zeros_like(p)),
                    workspace=k.empty(pl.workspace_size),
                    iworkspace=np.zeros(pl.iworkspace_size, np.int32), X=X, targets=t,
                    batch_losses=np.zeros(nb), batch_correct=np.zeros(nb, np.int64),
                    optimizer="adam", hyper={"lr": 1e-2, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8}, order=o)


def epoch_arrays(e):
    """(name, array) of every array field of an epoch (states flattened)."""
    out = []
    for f in dataclasses.fields(e):
        v = getattr(e, f.name)
        if f.name == "states":
            out += [(f"states[{i}]", s) for i, s in enumerate(v) if s is not None]
        elif isinstance(v, np.ndarray):
            out.append((f.name, v))
    return out


def with_arrays(e, **arrays):
    """Epoch e with some arrays replaced ('states[i]' names too)."""
    states = list(e.states)
    fields = {}
    for name, v in arrays.items():
        m = re.fullmatch(r"states\[(\d)\]", name)
        if m:
            states[int(m.group(1))] = v
        else:
            fields[name] = v
    return dataclasses.replace(e, states=tuple(states), **fields)


EPOCH_WRITES = {"params", "grads", "workspace", "iworkspace", "batch_losses", "batch_correct",
                "buffers"}


def written(name):
    return name in EPOCH_WRITES or name.startswith("states[")


def small_model(backend=None, seed=0):
    return fastnn.Sequential([fastnn.Dense(4, 8, "relu"), fastnn.Dense(8, 3)], seed=seed,
                             backend=backend)


def toy(n=40, d=4, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)).astype(np.float32), rng.integers(0, classes, n)


def trainer(model=None, **kw):
    return fastnn.Trainer(small_model() if model is None else model, "softmax_cross_entropy",
                          fastnn.optim.Adam(lr=1e-2), **kw)


def run_cli(*argv, env=None, timeout=120):
    """`fastnn ...` in a fresh process: (returncode, stdout, stderr)."""
    r = subprocess.run([sys.executable, "-m", "fastnn.cli", *argv], capture_output=True,
                       text=True, timeout=timeout, env=env)
    return r.returncode, r.stdout, r.stderr


def cli_main(*argv):
    """fastnn.cli.main(argv) in this process (the probe's own, so a crash
    still fails only the probe): (returncode, stdout, stderr); an exception
    other than SystemExit (it would print a traceback) fails the probe."""
    import io
    from fastnn import cli

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = cli.main(list(argv))
        except SystemExit as e:
            rc = e.code if isinstance(e.code, int) else 1
            if not isinstance(e.code, int) and e.code is not None:
                err.write(str(e.code) + "\n")
        except BaseException as e:  # noqa: BLE001 - the traceback a user would see
            raise ProbeFailed(f"traceback: {type(e).__name__}: {e}") from e
    return rc, out.getvalue(), err.getvalue()


def cli_error(*argv, option):
    """The CLI refuses argv: exit 2 and a last stderr line naming `option`
    (argparse's own errors print the usage above it), no traceback."""
    rc, out, err = cli_main(*argv)
    lines = [line for line in err.strip().splitlines() if line.strip()]
    if rc != 2 or "Traceback" in err or not lines or not re.search(option, lines[-1]):
        raise ProbeFailed(f"rc={rc}, stderr={err[-600:]!r}")
    return err
