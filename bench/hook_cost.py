"""What the epoch hook costs: the MLP 784-256-128-10 at batch 32, one
compiled epoch (model_epoch) without a hook, with a BATCH hook every ~2% of
the batches (what a progress bar uses), and with a GRADS hook on every
batch (what a data-parallel all-reduce uses), interleaved A B C A B C ...

    python -m bench.hook_cost [--n 20000] [--rounds 5] [--backends c,numba]
    python -m bench.hook_cost --per-call     # the cost of one hook call
"""

import argparse
import statistics
import time

import numpy as np

from fastnn import Dense, Sequential, Trainer, optim
from fastnn.kernels import spec


def setup(backend, n):
    model = Sequential([Dense(784, 256, activation="relu"), Dense(256, 128, activation="relu"),
                        Dense(128, 10)], seed=0, backend=backend)
    tr = Trainer(model, "softmax_cross_entropy", optim.Adam(), fused=True)
    rng = np.random.default_rng(0)
    X = rng.random((n, 784), dtype=np.float32)
    y = rng.integers(0, 10, n)
    ce = tr._fused_epoch(n, 32)
    t = tr._targets(y, n)
    order = np.random.default_rng(1).permutation(n)
    return tr, ce, X, t, order


class Batch:
    events = frozenset({spec.HookEvent.BATCH})

    def __init__(self):
        self.calls = 0

    def __call__(self, event, batch):
        self.calls += 1


class Grads(Batch):
    events = frozenset({spec.HookEvent.GRADS})


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--n", type=int, default=20000)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--backends", default="c,numba")
    args = p.parse_args(argv)
    for backend in args.backends.split(","):
        tr, ce, X, t, order = setup(backend, args.n)
        nb = ce.n_batches
        every = max(1, nb // 50)
        variants = {"no hook": None, f"BATCH every {every}": Batch, "GRADS every batch": Grads}
        times = {name: [] for name in variants}
        calls = {}
        for r in range(args.rounds + 1):  # round 0: warm-up (numba compiles)
            for name, cls in variants.items():
                e = ce.build(X, t, order)
                hook = None if cls is None else cls()
                e.hook, e.hook_every = hook, every
                t0 = time.perf_counter()
                ce.kernel(e)
                dt = time.perf_counter() - t0
                if r:
                    times[name].append(dt)
                calls[name] = 0 if hook is None else hook.calls
        base = statistics.median(times["no hook"])
        best = min(times["no hook"])
        print(f"{backend}: MLP 784-256-128-10, batch 32, {args.n} rows ({nb} batches), "
              f"{args.rounds} rounds interleaved")
        for name, ts in times.items():
            med = statistics.median(ts)
            spread = (max(ts) - min(ts)) / med
            print(f"  {name:20s} median {med * 1e3:8.1f} ms ({med / base - 1:+6.1%}), "
                  f"min {min(ts) * 1e3:8.1f} ms ({min(ts) / best - 1:+6.1%}), "
                  f"spread {spread:.0%}, {calls[name]} hook calls")


def per_call(backend, n=20000, rounds=5):
    """The cost of one hook call: a tiny model (Dense 4-2) at batch 1, so
    that the epoch is mostly per-batch overhead, with a BATCH hook on every
    batch vs none (the difference / n is what one call costs, the
    trampoline and, on numba, one more njit dispatch per range)."""
    model = Sequential([Dense(4, 2)], seed=0, backend=backend)
    tr = Trainer(model, "softmax_cross_entropy", optim.SGD(lr=1e-3), fused=True)
    rng = np.random.default_rng(0)
    X, y = rng.random((n, 4), dtype=np.float32), rng.integers(0, 2, n)
    ce, t = tr._fused_epoch(n, 1), tr._targets(y, n)
    times = {False: [], True: []}
    for r in range(rounds + 1):
        for hooked in (False, True):
            e = ce.build(X, t, None)
            e.hook, e.hook_every = (Batch() if hooked else None), 1
            t0 = time.perf_counter()
            ce.kernel(e)
            if r:
                times[hooked].append(time.perf_counter() - t0)
    a, b = min(times[False]), min(times[True])
    print(f"{backend}: one hook call costs {(b - a) / n * 1e6:.2f} us (min of {rounds}: "
          f"epoch of {n} batches {a * 1e3:.1f} ms without, {b * 1e3:.1f} ms with a call each)")


if __name__ == "__main__":
    import sys

    if "--per-call" in sys.argv:
        for backend in ("c", "numba"):
            per_call(backend)
    else:
        main()
