"""PyTorch eager as a comparator, in a process of its own at torch's default
OpenMP wait policy, for ``bench.compare``'s conv, train, models and rnn
sections.

    python -m fastnn.bench.torch_worker

``bench.compare`` keeps one worker alive for the run, sets up each torch
contender in it (its data and weights handed over in .npz files, checked
here before any timing) and asks it for a few steps or one epoch at a time,
between fastnn's, so that both see the same machine state (A B A B).

Requests are JSON lines on stdin, replies JSON lines on stdout:

    {"op": "setup", "name": "torch", "job": "conv", "threads": 2,
     "data": "conv.npz", "with_dx": true, "padding": 1}
        the conv layer's step: F.relu(F.conv2d(x, w, b)) and torch.autograd.grad
        of the given upstream gradient dY; the file holds X, W, b, dY
        (channels-last, as fastnn) and the reference's Y, dW, db (and dX),
        which torch's results must match before the job is kept
    {"op": "setup", "name": "torch", "job": "fit", "threads": 2, "data": "d.npz",
     "model": "lenet", "batch": 128, "epochs": 1, "seed": 0,
     "weights": null, "check_loss": null, "hidden": null}
        an eager training epoch (`epochs` of them per call) of MODELS[model],
        Adam(fused=True), over slices of X[perm] (no DataLoader), loss.item()
        per batch; warmed up on two batches.  "weights": the .npz of the MLP's
        initial weights (W0, b0, ...; bench.compare's MLP), "check_loss":
        [n, loss] to match on the first n rows before training
        -> {} or {"error", "check_failed"}
    {"op": "run", "name": "torch", "repeat": 3, "settle": 0.03}
        -> {"seconds"}   wall time of `repeat` back-to-back calls, then a
           pause of `settle` seconds (default SETTLE_S) before the reply
    {"op": "quit"}

Why its own process: bench.compare gives every OpenMP pool in its process
fastnn's short spin (GOMP_SPINCOUNT=1000), and that costs torch: measured
alone (session 8, bench/NOTES.md entry 46), the LeNet epoch at 2 threads
8,215 samples/s at torch's default policy against 6,059 at the short spin,
the 14x14x32->64 conv step 17.5 vs 19.2 ms, nn.GRU (1 -> 128) 3,473 vs
1,925 samples/s.  Here GOMP_SPINCOUNT is dropped before torch (and its
libgomp, which reads it once, when loaded) is imported, so torch runs as a
torch user would have it.  Nothing timed of fastnn runs here; only its
numpy-only check (fastnn.bench.workloads.assert_close) is imported, after
torch.

Why SETTLE_S: at the default policy torch's pool threads spin for ~300,000
iterations after each parallel region before they sleep; replying at once
would let them take the second core from the fastnn contender timed next.
The pause, outside the timed interval, lets them go to sleep first.
"""

import os
import sys
import time

os.environ.pop("GOMP_SPINCOUNT", None)

import numpy as np  # noqa: E402

from fastnn.bench._serve import serve  # noqa: E402

SETTLE_S = 0.03
CLASSES = 10


# ---- the torch models (fastnn's, layer for layer, in NCHW / batch-first) ------

def lenet(torch, data, spec):
    nn = torch.nn
    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(1568, CLASSES))


def cli_cnn(torch, data, spec):
    """fastnn.cli.small_cnn((8, 8, 1), 10)."""
    nn = torch.nn
    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.BatchNorm2d(16),
                         nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(4 * 4 * 32, 64), nn.ReLU(),
                         nn.Linear(64, CLASSES))


def bn_dropout(torch, data, spec, p=0.2):
    nn = torch.nn
    return nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.BatchNorm1d(256), nn.Dropout(p),
                         nn.Linear(256, 128), nn.ReLU(), nn.BatchNorm1d(128), nn.Dropout(p),
                         nn.Linear(128, CLASSES))


def mlp(torch, data, spec):
    """ReLU MLP with the given initial weights (W{i} (fan_in, fan_out), b{i}),
    the layout of fastnn's Dense and of jax_worker's weight file."""
    mods = []
    with np.load(spec["weights"]) as w:
        n_layers = len(w.files) // 2
        for i in range(n_layers):
            W, b = w[f"W{i}"], w[f"b{i}"]
            lin = torch.nn.Linear(*W.shape)
            with torch.no_grad():
                lin.weight.copy_(torch.from_numpy(np.ascontiguousarray(W.T)))
                lin.bias.copy_(torch.from_numpy(b))
            mods += [lin] + ([torch.nn.ReLU()] if i < n_layers - 1 else [])
    return torch.nn.Sequential(*mods)


def recurrent(torch, data, spec):
    """nn.RNN / GRU / LSTM(batch_first) + nn.Linear on the last step's output."""
    layer = {"rnn": torch.nn.RNN, "gru": torch.nn.GRU, "lstm": torch.nn.LSTM}[spec["model"]]
    inputs, hidden = data["X"].shape[2], spec["hidden"]

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn, self.head = layer(inputs, hidden, batch_first=True), torch.nn.Linear(
                hidden, CLASSES)

        def forward(self, x):
            return self.head(self.rnn(x)[0][:, -1])

    return Net()


MODELS = {"lenet": lenet, "cli_cnn": cli_cnn, "bn_dropout": bn_dropout, "mlp": mlp,
          "rnn": recurrent, "gru": recurrent, "lstm": recurrent}


def nchw(X):
    """Channels-last images (N, H, W, C) as torch's (N, C, H, W); other arrays as they are."""
    return np.ascontiguousarray(X.transpose(0, 3, 1, 2)) if X.ndim == 4 else X


def epoch_fn(torch, net, X, y, batch_size):
    """One epoch of plain eager PyTorch over pre-shuffled tensors (no
    DataLoader); called with `limit`, only the first `limit` samples."""
    crit = torch.nn.CrossEntropyLoss()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, fused=True)
    perm = np.random.default_rng(0).permutation(len(X))
    Xt, yt = torch.from_numpy(X[perm]), torch.from_numpy(y[perm])
    n = len(Xt)

    def epoch(limit=None):
        total = 0.0
        for lo in range(0, limit or n, batch_size):
            xb, yb = Xt[lo:lo + batch_size], yt[lo:lo + batch_size]
            opt.zero_grad(set_to_none=True)
            loss = crit(net(xb), yb)
            loss.backward()
            opt.step()
            total += loss.item() * len(xb)
        return total / n

    return epoch


# ---- jobs -----------------------------------------------------------------------

def conv_job(torch, data, spec, assert_close):
    """The conv layer's forward + backward step, checked against the reference's."""
    F = torch.nn.functional
    with_dx = spec["with_dx"]
    x = torch.from_numpy(nchw(data["X"])).requires_grad_(with_dx)
    w = torch.from_numpy(np.ascontiguousarray(data["W"].transpose(3, 2, 0, 1))).requires_grad_()
    bias = torch.from_numpy(data["b"].copy()).requires_grad_()
    g = torch.from_numpy(nchw(data["dY"]))
    inputs = (w, bias, x) if with_dx else (w, bias)

    def step():
        y = F.relu(F.conv2d(x, w, bias, stride=1, padding=spec["padding"]))
        return (y, *torch.autograd.grad(y, inputs, g))

    y, dw, db, *dx = step()
    got = {"Y": y.detach().numpy().transpose(0, 2, 3, 1), "dW": dw.numpy().transpose(2, 3, 1, 0),
           "db": db.numpy()}
    if with_dx:
        got["dX"] = dx[0].numpy().transpose(0, 2, 3, 1)
    for key in ("Y", "dW", "db") + (("dX",) if with_dx else ()):
        assert_close(got[key], data[key], 1e-4, f"torch conv {key}")
    return step


def fit_job(torch, data, spec, assert_close):
    """`epochs` eager training epochs of MODELS[model] per call, warmed up."""
    torch.manual_seed(spec.get("seed", 0))
    net = MODELS[spec["model"]](torch, data, spec)
    X, y = nchw(data["X"]), data["y"].astype(np.int64)
    if spec.get("check_loss"):
        rows, want = spec["check_loss"]
        with torch.no_grad():
            got = torch.nn.functional.cross_entropy(net(torch.from_numpy(X[:rows])),
                                                    torch.from_numpy(y[:rows])).item()
        if not abs(got - want) <= 1e-4 * abs(want):
            raise AssertionError(f"torch {spec['model']} loss {got} != fastnn's {want} "
                                 "at the same weights")
    epoch = epoch_fn(torch, net, X, y, spec["batch"])
    epoch(2 * spec["batch"])  # warm-up

    def run():
        for _ in range(spec.get("epochs", 1)):
            epoch()
    return run


JOBS = {"conv": conv_job, "fit": fit_job}


class Worker:
    def __init__(self):
        import torch

        from fastnn.bench.workloads import assert_close  # numpy only; after torch's libgomp

        self.torch, self.assert_close = torch, assert_close
        self.jobs, self._data = {}, (None, None)

    def _load(self, path):
        if self._data[0] != path:
            self._data = (None, None)  # one data set at a time: free the last first
            with np.load(path) as f:
                self._data = (path, {k: f[k] for k in f.files})
        return self._data[1]

    def _threads(self, n):
        if self.torch.get_num_threads() != n:
            self.torch.set_num_threads(n)

    def setup(self, req):
        self.jobs.pop(req["name"], None)
        self._threads(req["threads"])
        step = JOBS[req["job"]](self.torch, self._load(req["data"]), req, self.assert_close)
        self.jobs[req["name"]] = (req["threads"], step)
        return {}

    def run(self, req):
        threads, step = self.jobs[req["name"]]
        self._threads(threads)
        t0 = time.perf_counter()
        for _ in range(req.get("repeat", 1)):
            step()
        seconds = time.perf_counter() - t0
        time.sleep(req.get("settle", SETTLE_S))
        return {"seconds": seconds}


def main():
    return serve(Worker, lambda w: {"torch": w.torch.__version__,
                                    "GOMP_SPINCOUNT": os.environ.get("GOMP_SPINCOUNT"),
                                    "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY")})


if __name__ == "__main__":
    sys.exit(main())
