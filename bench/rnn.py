"""Recurrent layers: fastnn (compiled epoch) against torch eager, side by
side in one process, and a GRU classifier on MNIST-1D.

    python bench/rnn.py speed [threads] [repeats] [numba]
    python bench/rnn.py mnist1d [epochs] [threads]

speed: SimpleRNN / GRU / LSTM (1 -> 128) + Dense(128 -> 10) on random
sequences of length 40, batch 100, Adam(lr=1e-3), softmax cross-entropy;
one epoch of 2,000 samples (20 batches) per timing, best and worst of
`repeats`, fastnn's Trainer.fit (c backend, one model_epoch call) against
torch.nn.RNN/GRU/LSTM + Linear trained batch by batch (eager), the same
thread count for both (torch.set_num_threads); with a third argument 1,
the numba backend's epoch too (its time and c's / numba's).

mnist1d: GRU(1 -> 128) + Dense(128 -> 10) on mnist1d's default dataset
(4,000 train / 1,000 test sequences of length 40, generated offline),
Adam(lr=3e-3) with gradient-norm clipping 1.0 and a cosine schedule, batch 64.
"""

import sys
import time

import numpy as np

import fastnn

L, C, H, CLASSES, BATCH, N = 40, 1, 128, 10, 100, 2000


def fastnn_epoch_seconds(kind, X, y, repeats, backend="c"):
    layer = {"rnn": fastnn.SimpleRNN, "gru": fastnn.GRU, "lstm": fastnn.LSTM}[kind]
    model = fastnn.Sequential([layer(C, H), fastnn.Dense(H, CLASSES)], seed=0, backend=backend,
                              input_shape=(L, C))
    trainer = fastnn.Trainer(model, "softmax_cross_entropy", fastnn.optim.Adam(lr=1e-3))
    trainer.fit(X[:BATCH], y[:BATCH], epochs=1, batch_size=BATCH, verbose=False)  # warm
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        trainer.fit(X, y, epochs=1, batch_size=BATCH, shuffle=False, verbose=False)
        times.append(time.perf_counter() - t0)
    return times


def torch_epoch_seconds(kind, X, y, repeats):
    import torch

    rnn = {"rnn": torch.nn.RNN, "gru": torch.nn.GRU, "lstm": torch.nn.LSTM}[kind](
        C, H, batch_first=True)
    head = torch.nn.Linear(H, CLASSES)
    opt = torch.optim.Adam(list(rnn.parameters()) + list(head.parameters()), lr=1e-3)
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)

    def epoch(n):
        for lo in range(0, n, BATCH):
            out = head(rnn(Xt[lo:lo + BATCH])[0][:, -1])
            loss = torch.nn.functional.cross_entropy(out, yt[lo:lo + BATCH])
            opt.zero_grad()
            loss.backward()
            opt.step()

    epoch(BATCH)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        epoch(len(X))
        times.append(time.perf_counter() - t0)
    return times


def speed(threads=2, repeats=3, numba=0):
    import torch

    torch.set_num_threads(threads)
    fastnn.set_num_threads(threads)
    if numba:
        import numba as nb

        nb.set_num_threads(threads)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(N, L, C)).astype(np.float32)
    y = rng.integers(0, CLASSES, N)
    print(f"threads {threads}, {N} samples of length {L}, batch {BATCH}, Adam; seconds per "
          f"epoch best (worst) of {repeats}")
    print(f"{'model':28s} {'fastnn c':>16s} {'torch eager':>16s} {'speed-up':>9s}"
          + (f" {'numba':>16s} {'c/numba':>8s}" if numba else ""))
    for kind in ("gru", "lstm", "rnn"):
        ours = fastnn_epoch_seconds(kind, X, y, repeats)
        theirs = torch_epoch_seconds(kind, X, y, repeats)
        name = {"rnn": "SimpleRNN", "gru": "GRU", "lstm": "LSTM"}[kind]
        line = (f"{name + '(1->128)+Dense(128->10)':28s} {min(ours):7.3f} ({max(ours):.3f}) "
                f"{min(theirs):7.3f} ({max(theirs):.3f}) {min(theirs) / min(ours):8.2f}x")
        if numba:
            nbt = fastnn_epoch_seconds(kind, X, y, repeats, backend="numba")
            line += f" {min(nbt):7.3f} ({max(nbt):.3f}) {min(ours) / min(nbt):7.2f}x"
        print(line, flush=True)


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
    args = [int(a) for a in sys.argv[2:]]
    {"speed": speed, "mnist1d": mnist1d}[what](*args)
