"""Recurrent layers: the speed comparison against torch eager, and a GRU
classifier on MNIST-1D.

    python bench/rnn.py speed [threads]      (= python -m bench.compare --sections rnn)
    python bench/rnn.py mnist1d [epochs] [threads]

speed: SimpleRNN / GRU / LSTM (1 -> 128) + Dense(128 -> 10) on random
sequences of length 40, batch 100, Adam(lr=1e-3), softmax cross-entropy,
2,000 samples; fastnn c and numba (Trainer.fit, one compiled epoch call)
and torch eager, interleaved in one process at the same thread count
(fastnn/bench/compare.py, section_rnn).

mnist1d: GRU(1 -> 128) + Dense(128 -> 10) on mnist1d's default dataset
(4,000 train / 1,000 test sequences of length 40, generated offline),
Adam(lr=3e-3) with gradient-norm clipping 1.0 and a cosine schedule, batch 64.
"""

import sys
import time

import numpy as np

import fastnn

L, C, H, CLASSES, BATCH, N = 40, 1, 128, 10, 100, 2000


def speed(threads="1,2"):
    """The speed comparison: `python -m bench.compare --sections rnn` (fastnn c
    and numba against torch eager, interleaved rounds, medians and spread)."""
    from fastnn.bench.compare import main

    return main(["--sections", "rnn", "--threads", str(threads)])


def mnist1d(epochs=20, threads=2, seed=0):
    from mnist1d.data import get_dataset_args, make_dataset

    fastnn.set_num_threads(threads)
    state = np.random.get_state()
    d = make_dataset(get_dataset_args())
    np.random.set_state(state)
    X = np.ascontiguousarray(d["x"], np.float32).reshape(-1, 40, 1)
    Xt = np.ascontiguousarray(d["x_test"], np.float32).reshape(-1, 40, 1)
    y, yt = np.asarray(d["y"]), np.asarray(d["y_test"])
    model = fastnn.Sequential([fastnn.GRU(1, 128), fastnn.Dense(128, 10)], seed=seed,
                              input_shape=(40, 1))
    trainer = fastnn.Trainer(model, "softmax_cross_entropy", fastnn.optim.Adam(lr=3e-3),
                             clip_norm=1.0)
    t0 = time.perf_counter()
    trainer.fit(X, y, epochs=epochs, batch_size=64, seed=seed, verbose=False,
                callbacks=[fastnn.schedules.CosineAnnealingLR(epochs)])
    seconds = time.perf_counter() - t0
    acc = float(np.mean(trainer.predict(Xt).argmax(axis=1) == yt))
    print(f"MNIST-1D GRU(1->128)+Dense: {epochs} epochs in {seconds:.1f} s "
          f"({threads} threads), test accuracy {acc:.3f}")
    return seconds, acc


if __name__ == "__main__":
    what = sys.argv[1] if len(sys.argv) > 1 else "speed"
    if what == "speed":
        sys.exit(speed(*sys.argv[2:3]))
    mnist1d(*[int(a) for a in sys.argv[2:]])
