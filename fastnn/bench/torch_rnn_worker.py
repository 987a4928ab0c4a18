"""torch eager's recurrent epoch in a process of its own, at torch's own
default wait policy, for the rnn section of ``bench.compare``.

    python -m fastnn.bench.torch_rnn_worker --kind gru --threads 2 --n 2000 --rounds 3 \
        --length 40 --hidden 128 --batch 100

prints one JSON line {"rates": [samples/s of each timed epoch]}.

Why its own process: in bench.compare's process GOMP_SPINCOUNT=1000 (the
wait policy fastnn's c backend sets when the user has none) holds for every
contender, and torch's recurrent layers, 40 small steps per batch, each a
parallel region, lose most at 2 threads under it: nn.GRU (1 -> 128), batch
100, 2 threads, measured alone: 3,473 samples/s at torch's default policy
against 1,925 at GOMP_SPINCOUNT=1000 (1 thread: 2,970 vs 2,803).  Here
GOMP_SPINCOUNT is dropped before torch (and its libgomp) loads, so torch
runs as a torch user would have it.  Nothing of fastnn is imported.
"""

import argparse
import json
import os
import time

os.environ.pop("GOMP_SPINCOUNT", None)

import numpy as np  # noqa: E402
import torch  # noqa: E402

CLASSES = 10


def net(kind, hidden):
    rnn = {"rnn": torch.nn.RNN, "gru": torch.nn.GRU, "lstm": torch.nn.LSTM}[kind]

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn, self.head = rnn(1, hidden, batch_first=True), torch.nn.Linear(hidden, CLASSES)

        def forward(self, x):
            return self.head(self.rnn(x)[0][:, -1])

    return Net()


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--kind", required=True, choices=("rnn", "gru", "lstm"))
    p.add_argument("--threads", type=int, required=True)
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--rounds", type=int, default=3)
    for size in ("--length", "--hidden", "--batch"):  # bench.compare's RNN_* sizes
        p.add_argument(size, type=int, required=True)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)  # the same data as bench.compare's section_rnn
    X = torch.from_numpy(rng.normal(size=(args.n, args.length, 1)).astype(np.float32))
    y = torch.from_numpy(rng.integers(0, CLASSES, args.n).astype(np.int64))
    model = net(args.kind, args.hidden)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    crit = torch.nn.CrossEntropyLoss()

    def epoch(limit):
        for lo in range(0, limit, args.batch):
            opt.zero_grad(set_to_none=True)
            loss = crit(model(X[lo:lo + args.batch]), y[lo:lo + args.batch])
            loss.backward()
            opt.step()
            loss.item()

    epoch(2 * args.batch)  # warm-up
    rates = []
    for _ in range(args.rounds):
        t0 = time.perf_counter()
        epoch(args.n)
        rates.append(args.n / (time.perf_counter() - t0))
    print(json.dumps({"rates": rates}))


if __name__ == "__main__":
    main()
