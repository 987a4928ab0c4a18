"""The numba backend's compiled MLP epoch against the c backend's, side by
side in one process (bench/NOTES.md entry 48).

    python bench/numba_mlp.py [n_samples] [rounds] [batches] [threads] [sizes]

e.g. ``python bench/numba_mlp.py 20000 3 32,128,512 1,2 784,256,128,10``.
An MLP (ReLU hidden layers, logits; default 784-256-128-10), Adam lr 1e-3,
softmax cross-entropy, on bench.compare's synthetic MNIST (the data entry
36 found the denormals on; narrower inputs: every k-th column); per
(threads, batch): one Trainer.fit epoch per sample, c and numba
interleaved (c numba c numba ...), `rounds` samples each, after a 2-batch
warm-up fit.  1-thread rows pin the process to one CPU (as bench.compare's
models rows).  Prints samples/s medians, numba/c and the spread ((max -
min) / median, the wider of the two), with the load average.
"""

import os
import statistics
import sys
import time

import numpy as np

import fastnn
from fastnn.bench import workloads as wl


def main(n=20000, rounds=3, batches=(32, 128, 512), threads=(1, 2), sizes=wl.MLP_SIZES):
    X, y = wl.synthetic_mnist(n, seed=0)
    X = np.ascontiguousarray(X[:, ::max(1, X.shape[1] // sizes[0])][:, :sizes[0]])
    y = y % sizes[-1]
    cpus = os.sched_getaffinity(0)
    print(f"# MLP {'-'.join(map(str, sizes))}, {n} samples, {rounds} rounds, "
          f"load {os.getloadavg()[0]:.2f}")
    print("threads batch      c/s  numba/s  numba/c spread")
    for t in threads:
        fastnn.set_num_threads(t)
        os.sched_setaffinity(0, set(sorted(cpus)[:1]) if t == 1 else cpus)
        for b in batches:
            trainers = {k: wl.make_trainer(k, seed=0, sizes=sizes) for k in ("c", "numba")}
            for tr in trainers.values():
                tr.fit(X[:2 * b], y[:2 * b], epochs=1, batch_size=b, verbose=False)
            secs = {k: [] for k in trainers}
            for _ in range(rounds):
                for k, tr in trainers.items():
                    t0 = time.perf_counter()
                    tr.fit(X, y, epochs=1, batch_size=b, verbose=False)
                    secs[k].append(time.perf_counter() - t0)
            med = {k: statistics.median(s) for k, s in secs.items()}
            spread = max((max(s) - min(s)) / statistics.median(s) for s in secs.values())
            print(f"{t:7d} {b:5d} {n / med['c']:8.0f} {n / med['numba']:8.0f} "
                  f"{med['c'] / med['numba']:8.2f} {100 * spread:5.0f}%", flush=True)
    os.sched_setaffinity(0, cpus)
    print(f"# load {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    a = sys.argv[1:]
    main(int(a[0]) if a else 20000, int(a[1]) if len(a) > 1 else 3,
         tuple(int(v) for v in a[2].split(",")) if len(a) > 2 else (32, 128, 512),
         tuple(int(v) for v in a[3].split(",")) if len(a) > 3 else (1, 2),
         tuple(int(v) for v in a[4].split(",")) if len(a) > 4 else wl.MLP_SIZES)
