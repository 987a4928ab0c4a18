"""Data-parallel figures (bench/NOTES.md, "distributed"): samples/s of the
784-256-128-10 MLP over MPI ranks vs threads, the all-reduce's share of a
step, and the ring all-reduce scaling model for N nodes.

    mpiexec -n 2 python -m bench.distributed          # 2 ranks x 1 thread
    python -m bench.distributed --threads 2           # 1 rank x 2 threads
    python -m bench.distributed --model               # compute per step + the model

Each line printed is one JSON record (rank 0 only).  Short runs (a shared
machine): n rows, one warm-up epoch, then `epochs` timed epochs (median).
"""

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import fastnn  # noqa: E402
from fastnn.bench import workloads as wl  # noqa: E402
from fastnn.bench.compare import lenet_layers  # noqa: E402

BATCHES = (32, 128, 512)


def mlp_trainer(distributed=None, fused=None):
    return fastnn.Trainer(wl.make_mlp("c"), "softmax_cross_entropy", fastnn.optim.Adam(lr=1e-3),
                          distributed=distributed, fused=fused)


def run(trainer, X, y, batch, epochs):
    h = trainer.fit(X, y, epochs=1 + epochs, batch_size=batch, seed=0, verbose=False)
    return float(np.median(h.samples_per_s[1:]))


def ranks(args):
    from fastnn.distributed import MPIGroup

    group = MPIGroup()
    fastnn.set_num_threads(1)
    X, y = wl.synthetic_mnist(args.n)
    for batch in BATCHES:
        tr = mlp_trainer(group)
        group.reduce_seconds, group.n_reduces = 0.0, 0
        start = time.perf_counter()
        sps = run(tr, X, y, batch, args.epochs)
        wall = time.perf_counter() - start
        steps = group.n_reduces
        if group.rank == 0:
            print(json.dumps(dict(setup=f"{group.size} ranks x 1 thread", batch_per_rank=batch,
                                  global_batch=batch * group.size, fused=tr.fused,
                                  samples_per_s=round(sps),
                                  allreduce_ms=round(1e3 * group.reduce_seconds / steps, 3),
                                  allreduce_share=round(group.reduce_seconds / wall, 3))),
                  flush=True)


def threads(args):
    fastnn.set_num_threads(args.threads)
    X, y = wl.synthetic_mnist(args.n)
    for batch in BATCHES:
        for fused in (True, False):
            sps = run(mlp_trainer(fused=fused), X, y, batch * args.global_of, args.epochs)
            print(json.dumps(dict(setup=f"1 rank x {args.threads} threads", fused=fused,
                                  global_batch=batch * args.global_of,
                                  samples_per_s=round(sps))), flush=True)


def step_seconds(trainer, X, y, batch, repeats=3):
    """Median seconds of one compiled training step at `batch` (1 thread)."""
    times = []
    for _ in range(repeats):
        h = trainer.fit(X, y, epochs=1, batch_size=batch, seed=0, verbose=False)
        times.append(batch / h.samples_per_s[-1])
    return float(np.median(times))


def scaling_model(args):
    """Smallest per-rank batch B with compute(B) / (compute(B) + ring(N))
    >= 80 %, ring(N) = 2 (N-1)/N x bytes / bandwidth + 2 (N-1) x latency,
    compute(B) fitted as a + b B to the 1-thread step times measured here
    (no overlap of the all-reduce with the backward)."""
    fastnn.set_num_threads(1)
    X, y = wl.synthetic_mnist(args.n)
    rng = np.random.default_rng(0)
    Xi = rng.random((2048, 28, 28, 1), dtype=np.float32)
    yi = rng.integers(0, 10, 2048)
    models = {
        "mlp 784-256-128-10": (lambda: mlp_trainer(), X, y),
        "lenet (conv16-pool-conv32-pool-dense)": (
            lambda: fastnn.Trainer(fastnn.Sequential(lenet_layers(), seed=0,
                                                     input_shape=(28, 28, 1)),
                                   "softmax_cross_entropy", fastnn.optim.Adam(lr=1e-3)),
            Xi, yi)}
    for name, (make, Xm, ym) in models.items():
        tr = make()
        tr.fit(Xm[:256], ym[:256], epochs=1, batch_size=32, verbose=False)  # warm-up
        bs = np.array(BATCHES, float)
        t = np.array([step_seconds(tr, Xm, ym, int(b)) for b in bs])
        per_sample = t[-1] / bs[-1]  # the large-batch cost: compute(B) ~ B x this (a lower
        nbytes = tr.model.size * 4   # bound at small B, so the batches below are upper bounds)
        out = dict(model=name, params=tr.model.size, bytes_per_step=nbytes,
                   step_ms={int(b): round(1e3 * s, 3) for b, s in zip(bs, t)},
                   per_sample_ms=round(1e3 * per_sample, 5))
        out.update(min_batches(nbytes, per_sample))
        print(json.dumps(out), flush=True)


def min_batches(nbytes, per_sample, latency=5e-6):
    """{f"min_batch_80pct_{g}gbit": {N: B}}: the smallest per-rank batch B
    with B x per_sample >= 4 x ring(N) (80 % efficiency, no overlap)."""
    out = {}
    for gbit in (10, 100):
        bw = gbit * 1e9 / 8
        row = {}
        for n in (2, 4, 8, 16, 64, 256):
            comm = 2 * (n - 1) / n * nbytes / bw + 2 * (n - 1) * latency
            row[n] = int(np.ceil(4 * comm / per_sample))
        out[f"min_batch_80pct_{gbit}gbit"] = row
    return out


def dask_search(args):
    """MLPSearchCV on the digits: n_jobs=1, n_jobs=2 (loky), and a 2-worker
    LocalCluster (1 thread each) through joblib's dask backend."""
    import warnings

    import joblib
    from dask.distributed import Client, LocalCluster
    from sklearn.datasets import load_digits

    from fastnn.sklearn import MLPClassifier, MLPSearchCV

    X, y = load_digits(return_X_y=True)
    X = X / 16.0
    grid = {"hidden_layer_sizes": [(64,), (128,), (64, 64), (128, 64)],
            "alpha": [1e-4, 1e-3, 1e-2]}
    est = MLPClassifier(max_iter=15, random_state=0, batch_size=32)

    def once(n_jobs):
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            s = MLPSearchCV(est, grid, cv=3, n_jobs=n_jobs).fit(X, y)
        return time.perf_counter() - start, s.best_score_

    fastnn.set_num_threads(1)
    once(1)  # warm-up
    for n_jobs in (1, 2):
        secs, best = once(n_jobs)
        print(json.dumps(dict(search="local", n_jobs=n_jobs, seconds=round(secs, 2),
                              best_score=round(best, 4))), flush=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                               dashboard_address=None)
    with cluster, Client(cluster), joblib.parallel_backend("dask"):
        once(2)  # the workers' imports
        secs, best = once(2)
        print(json.dumps(dict(search="dask LocalCluster 2x1", n_jobs=2, seconds=round(secs, 2),
                              best_score=round(best, 4))), flush=True)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--global-of", type=int, default=2, help="1-rank batch = this x per-rank")
    p.add_argument("--model", action="store_true")
    p.add_argument("--dask", action="store_true")
    p.add_argument("--n", type=int, default=8192)
    p.add_argument("--epochs", type=int, default=2)
    args = p.parse_args()
    if args.dask:
        dask_search(args)
    elif args.model:
        scaling_model(args)
    elif args.threads:
        threads(args)
    else:
        ranks(args)


if __name__ == "__main__":
    main()
