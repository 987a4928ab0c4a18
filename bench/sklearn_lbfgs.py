"""fastnn.sklearn's solver="lbfgs" vs scikit-learn's, side by side.

    python -m bench.sklearn_lbfgs [--rounds 3] [--threads 1]

Digits (1,797 x 64, scaled to [0, 1]), MLPClassifier(hidden_layer_sizes=(100,),
solver="lbfgs", max_iter=200, random_state=0): both run scipy's L-BFGS-B on
the same objective from the same initial weights; fastnn evaluates the loss
and gradient over all samples in one compiled-epoch kernel call (float32),
scikit-learn in numpy (float64).  Fits are interleaved (A B A B ...) and the
medians compared; n_iter_ and the number of objective evaluations are shown
because the two may stop at different iterations (float32 vs float64).
"""

import argparse
import time
import warnings

import numpy as np
import threadpoolctl
from sklearn.datasets import load_digits
from sklearn.neural_network import MLPClassifier as SkMLP

import fastnn
from fastnn.sklearn import MLPClassifier as FastMLP


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--backends", default="c,numba")
    args = parser.parse_args()
    X, y = load_digits(return_X_y=True)
    X = X / 16.0
    params = dict(hidden_layer_sizes=(100,), solver="lbfgs", max_iter=200, random_state=0)
    makers = {f"fastnn-{b}": (lambda b=b: FastMLP(backend=b, **params))
              for b in args.backends.split(",")}
    makers["sklearn"] = lambda: SkMLP(**params)
    fastnn.set_num_threads(args.threads)
    with threadpoolctl.threadpool_limits(args.threads, user_api="blas"):
        for name, make in makers.items():  # warm up (numba compiles here)
            if name != "sklearn":
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    make().set_params(max_iter=2).fit(X[:200], y[:200])
        samples = {name: [] for name in makers}
        fitted = {}
        for _ in range(args.rounds):
            for name, make in makers.items():
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    t0 = time.perf_counter()
                    fitted[name] = make().fit(X, y)
                    samples[name].append(time.perf_counter() - t0)
    sk = np.median(samples["sklearn"])
    print(f"digits 64-100-10, lbfgs, max_iter=200, {args.threads} thread(s), "
          f"{args.rounds} interleaved rounds; load average {open('/proc/loadavg').read().split()[0]}")
    print(f"{'impl':<14}{'median s':>10}{'min':>8}{'max':>8}{'n_iter_':>9}{'loss_':>10}"
          f"{'train acc':>11}{'s / iter':>10}{'speedup':>9}")
    for name, secs in samples.items():
        est = fitted[name]
        med = np.median(secs)
        print(f"{name:<14}{med:>10.3f}{min(secs):>8.3f}{max(secs):>8.3f}{est.n_iter_:>9}"
              f"{est.loss_:>10.4f}{est.score(X, y):>11.4f}{med / est.n_iter_ * 1e3:>8.2f}ms"
              f"{sk / med:>8.2f}x")


if __name__ == "__main__":
    main()
