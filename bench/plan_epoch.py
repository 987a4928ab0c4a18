"""One CNN epoch through the c backend's compiled model_epoch (csrc/plan.c)
against the reference interpreter over the same c kernels
(reference.run_model_epoch(c impls, epoch)): the difference is the Python
between batches that the compiled epoch saves.

    python bench/plan_epoch.py [n_samples] [threads]

Conv2D(1,16,3,padding=1,relu), MaxPool2D(2), Conv2D(16,32,3,padding=1,relu),
MaxPool2D(2), Flatten, Dense(1568,10); Adam, batch 128, 28x28x1 random data.
"""

import sys
import time

import numpy as np

from fastnn import Conv2D, Dense, Flatten, MaxPool2D, Sequential, kernels
from fastnn import plan as plan_mod
from fastnn.kernels import reference, spec


def epoch(model, plan, X, y, states):
    B = plan.batch_size
    n_batches = -(-X.shape[0] // B)
    opt = spec.OPTIMIZERS["adam"]
    return plan.epoch(
        params=model.params, grads=model.grads, buffers=model.buffers, states=states,
        workspace=np.zeros(plan.workspace_size, np.float32),
        iworkspace=np.zeros(plan.iworkspace_size, np.int32), X=X, targets=y,
        batch_losses=np.zeros(n_batches), batch_correct=np.zeros(n_batches, np.int64),
        loss="softmax_xent", optimizer="adam",
        hyper={h.name: h.default for h in opt.hyper}, step=0)


def main(n=2048, threads=2, repeats=3):
    k = kernels.get("c")
    k.set_num_threads(threads)
    model = Sequential([Conv2D(1, 16, 3, padding=1, activation="relu"), MaxPool2D(2),
                        Conv2D(16, 32, 3, padding=1, activation="relu"), MaxPool2D(2),
                        Flatten(), Dense(1568, 10)], seed=0, backend="c",
                       input_shape=(28, 28, 1))
    plan = plan_mod.compile_model(model, 128)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(n, 28 * 28)).astype(np.float32)
    y = rng.integers(0, 10, n).astype(np.int32)
    p0 = model.params.copy()
    results = {}
    for name, run in (("compiled model_epoch", lambda e: k.model_epoch(e)),
                      ("reference interpreter over c kernels",
                       lambda e: reference.run_model_epoch(k.impls, e))):
        best = float("inf")
        for _ in range(repeats):
            model.params[:] = p0
            states = (np.zeros_like(p0), np.zeros_like(p0))
            e = epoch(model, plan, X, y, states)
            t = time.perf_counter()
            run(e)
            best = min(best, time.perf_counter() - t)
        results[name] = (best, model.params.copy(), e.batch_losses.copy())
        print(f"{name:40s} {best * 1e3:8.1f} ms/epoch  {n / best:9,.0f} samples/s  "
              f"({best / e.n_batches * 1e3:.2f} ms/batch)")
    (a, pa, la), (b, pb, lb) = results.values()
    print(f"saved: {(b - a) * 1e3:.1f} ms per epoch of {n} ({(b - a) / a * 100:.1f}% of the "
          f"compiled epoch); max |param diff| {np.max(np.abs(pa - pb)):.2e}")


if __name__ == "__main__":
    main(*(int(v) for v in sys.argv[1:3]))
