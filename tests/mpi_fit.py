"""Launched by tests/test_distributed.py under ``mpiexec -n N``: distributed
fits on small synthetic data, each rank writing what it ended with.

    mpiexec -n 2 python tests/mpi_fit.py MODE OUT_DIR

MODE: equiv (several configurations; rank r writes OUT_DIR/rank{r}.npz),
raise / kill (rank 1 raises / is SIGKILLed at the end of epoch 2),
hang (rank 1 stops answering), rows / width (rank 1 passes other data / a
bigger model).  Each rank prints one line "rank R: ..." saying how its fit
ended.
"""

import json
import os
import signal
import sys
import time

import numpy as np

import fastnn
from fastnn import optim
from fastnn.distributed import MPIGroup, RankError


def data(n, d=8, classes=3, seed=0):
    """n rows of a fixed linear 3-class problem (seed picks the rows)."""
    W = np.random.default_rng(0).normal(size=(d, classes))
    rng = np.random.default_rng(seed + 1)
    X = rng.normal(size=(n, d)).astype(np.float32)
    y = (X @ W + 0.3 * rng.normal(size=(n, classes))).argmax(axis=1)
    return X, y


# (name, n rows, per-rank batch, optimizer, trainer options, fit options)
CONFIGS = [
    ("sgd_l2_uneven", 203, 16, ("sgd", dict(lr=0.05, momentum=0.9)), dict(l2=1e-2), {}),
    ("adam_last_row_alone", 193, 16, ("adam", dict(lr=1e-2)), dict(clip_norm=0.5), {}),
    ("adam_python", 150, 8, ("adam", dict(lr=1e-2)), dict(fused=False, l2=1e-3), {}),
    ("rmsprop_noshuffle", 100, 64, ("rmsprop", dict(lr=1e-3)), {}, dict(shuffle=False)),
]


def make_trainer(widths, opt, options, distributed, seed=3):
    sizes = list(widths)
    layers = [fastnn.Dense(a, b, "tanh") for a, b in zip(sizes[:-2], sizes[1:-1])]
    layers.append(fastnn.Dense(sizes[-2], sizes[-1]))
    model = fastnn.Sequential(layers, seed=seed)
    name, kw = opt
    return fastnn.Trainer(model, "softmax_cross_entropy", optim.get(name, **kw),
                          distributed=distributed, **options)


def fit(tr, n, batch, fit_options, epochs=3, **extra):
    X, y = data(n)
    Xv, yv = data(37, seed=100)
    return tr.fit(X, y, epochs=epochs, batch_size=batch, seed=11, validation_data=(Xv, yv),
                  verbose=False, **fit_options, **extra)


def equiv(group, out):
    arrays, logs = {}, {}
    for name, n, batch, opt, options, fit_options in CONFIGS:
        tr = make_trainer((8, 16, 3), opt, options, group)
        history = fit(tr, n, batch, fit_options)
        arrays[name] = tr.model.get_params()
        logs[name] = history.history
        logs[name + ":fused"] = tr.fused
    # BatchNorm: each rank normalizes with its own batch; the running
    # statistics are averaged over the ranks after every epoch
    model = fastnn.Sequential([fastnn.Dense(8, 16, "relu"), fastnn.BatchNorm(16),
                               fastnn.Dense(16, 3)], seed=3)
    tr = fastnn.Trainer(model, "softmax_cross_entropy", optim.get("adam", lr=1e-2),
                        distributed=group)
    history = fit(tr, 203, 16, {})
    arrays["batchnorm"], arrays["batchnorm:buffers"] = model.get_params(), model.get_buffers()
    logs["batchnorm"] = history.history
    # checkpoint after 2 epochs (rank 0 writes), every rank loads it and
    # goes on: the trajectory of 4 uninterrupted epochs
    X, y = data(203)
    whole = make_trainer((8, 16, 3), ("adam", dict(lr=1e-2)), {}, group)
    whole.fit(X, y, epochs=4, batch_size=16, seed=5, verbose=0)
    first = make_trainer((8, 16, 3), ("adam", dict(lr=1e-2)), {}, group)
    first.fit(X, y, epochs=2, batch_size=16, seed=5, verbose=0)
    path = os.path.join(out, "checkpoint.npz")
    first.save(path)
    resumed = fastnn.Trainer.load(path, distributed=group)
    resumed.fit(X, y, epochs=2, batch_size=16, verbose=0)
    arrays["resume:whole"], arrays["resume:resumed"] = (whole.model.get_params(),
                                                        resumed.model.get_params())
    np.savez(os.path.join(out, f"rank{group.rank}.npz"), **arrays)
    with open(os.path.join(out, f"rank{group.rank}.json"), "w") as f:
        json.dump(logs, f)
    print(f"rank {group.rank}: ok", flush=True)


def fault(group, mode):
    X, y = data(2000)
    widths = (8, 64, 3)
    if mode == "rows" and group.rank == 1:
        X, y = X[:-1], y[:-1]
    if mode == "width" and group.rank == 1:
        widths = (8, 65, 3)

    def inject(trainer, epoch, logs):
        if epoch == 1 and group.rank == 1:
            if mode == "raise":
                raise RuntimeError("injected failure")
            if mode == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            if mode == "hang":
                time.sleep(600)

    tr = make_trainer(widths, ("sgd", dict(lr=0.01)), {}, group)
    try:
        tr.fit(X, y, epochs=50, batch_size=16, seed=0, callbacks=[inject], verbose=mode == "kill")
    except RankError as exc:
        print(f"rank {group.rank}: RankError {exc.ranks}: {exc}", flush=True)
        sys.exit(3)
    except Exception as exc:  # noqa: BLE001
        print(f"rank {group.rank}: {type(exc).__name__}: {exc}", flush=True)
        sys.exit(4)
    print(f"rank {group.rank}: finished", flush=True)


def main():
    mode, out = sys.argv[1], sys.argv[2]
    timeout = float(os.environ.get("FASTNN_TEST_TIMEOUT", "30"))
    group = MPIGroup(timeout=timeout)
    fastnn.set_num_threads(1)  # two ranks on a 2-core machine
    print(f"rank {group.rank}: pid {os.getpid()}", flush=True)
    if mode == "equiv":
        equiv(group, out)
    else:
        fault(group, mode)


if __name__ == "__main__":
    main()
