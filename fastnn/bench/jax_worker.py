"""JAX + optax as a comparator, in a process of its own.

    python -m bench.jax_worker --threads N [--cpus 0,1]

It trains the MLP 784-256-128-10 with the whole epoch jitted:
``jax.lax.scan`` over a jitted Adam step (``optax.adam``) over pre-shuffled
batches, on XLA's CPU backend.  ``bench.compare`` keeps one worker per thread
count alive and asks it for one epoch at a time, between its own fastnn
epochs, so that both see the same machine state (A B A B).

Requests are JSON lines on stdin, replies JSON lines on stdout:

    {"op": "setup", "n": 60000, "seed": 0, "mnist": null, "batch": 128,
     "weights": "init.npz", "lr": 0.001, "eval_n": 2000}
        -> {"samples", "compile_s", "loss0"}   compiles and warms up (a
           discarded epoch); the timed epochs start from the given weights
    {"op": "epoch"} -> {"seconds", "loss"}     one epoch, block_until_ready
    {"op": "eval"}  -> {"loss"}                mean loss on the first eval_n rows
    {"op": "quit"}

The thread count is fixed before jax is imported, and what fixes it was
measured here (jax/jaxlib 0.10.2, XLA CPU, 2 vCPUs; one jitted 128-batch
epoch, process CPU seconds per wall second from os.times()):

- default: 1.4-1.7 CPU s per s, 21 threads in the process;
- XLA_FLAGS=--xla_cpu_multi_thread_eigen=false: still 1.1-1.3 (the dots go
  single-threaded, but XLA's runtime still runs independent thunks on its
  own pool);
- "intra_op_parallelism_threads=1" in XLA_FLAGS (the well-known recipe) is
  a TensorFlow session option, not an XLA flag: XLA ignores it silently
  after a "--" flag (alone, XLA takes it for a flags file and aborts);
- os.sched_setaffinity to one CPU before the import: 0.95-1.00, and XLA
  sizes its pools from the affinity mask (15 threads instead of 21).

So: --threads 1 pins this process to one CPU (--cpus, which bench.compare
sets to the CPU it pins its own timing thread to) and also turns off Eigen's
multi-threading; --threads 2 gives it the allowed CPUs (the default pools).
"""

import argparse
import os
import sys
import time


def mlp_loss(p, xb, yb):
    """Mean softmax cross-entropy of a ReLU MLP with parameters p = [(W, b),
    ...] (JAX arrays; also jax_many.py's, under vmap)."""
    import jax
    import optax

    h = xb
    for i, (W, b) in enumerate(p):
        h = h @ W + b
        if i < len(p) - 1:
            h = jax.nn.relu(h)
    return optax.softmax_cross_entropy_with_integer_labels(h, yb).mean()


def _configure_threads(threads, cpus):
    if cpus:
        os.sched_setaffinity(0, cpus)
    if threads == 1:
        flags = os.environ.get("XLA_FLAGS", "")
        if "xla_cpu_multi_thread_eigen" not in flags:
            os.environ["XLA_FLAGS"] = (flags + " --xla_cpu_multi_thread_eigen=false").strip()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")


def _load_data(n, seed, mnist):
    import numpy as np

    if mnist:
        from fastnn import datasets

        X, y = datasets.load_mnist(mnist, kind="train")
        X = np.ascontiguousarray(X.reshape(len(X), -1)[:n], dtype=np.float32)
        return X, np.asarray(y[:n], dtype=np.int64)
    from fastnn.bench import workloads as wl

    return wl.synthetic_mnist(n, seed=seed)


class Worker:
    def __init__(self):
        import jax
        import jax.numpy as jnp
        import optax

        self.jax, self.jnp, self.optax = jax, jnp, optax
        self._data_key = None

    def setup(self, req):
        import numpy as np

        jax, jnp, optax = self.jax, self.jnp, self.optax
        key = (req["n"], req.get("seed", 0), req.get("mnist"))
        if self._data_key != key:
            self.X, self.y = _load_data(*key)
            self._data_key = key
        X, y = self.X, self.y
        batch = int(req["batch"])
        n_batches = len(X) // batch  # scan needs equal batches: the remainder is left out
        perm = np.random.default_rng(0).permutation(len(X))[:n_batches * batch]
        self.Xb = jnp.asarray(X[perm].reshape(n_batches, batch, X.shape[1]))
        self.yb = jnp.asarray(y[perm].reshape(n_batches, batch).astype(np.int32))
        eval_n = int(req.get("eval_n", 2000))
        self.Xe, self.ye = jnp.asarray(X[:eval_n]), jnp.asarray(y[:eval_n].astype(np.int32))
        with np.load(req["weights"]) as w:
            n_layers = len(w.files) // 2
            params = [(jnp.asarray(w[f"W{i}"]), jnp.asarray(w[f"b{i}"])) for i in range(n_layers)]
        opt = optax.adam(req.get("lr", 1e-3), b1=0.9, b2=0.999, eps=1e-8)

        loss_fn = mlp_loss

        @jax.jit
        def step(carry, batch):
            p, s = carry
            loss, g = jax.value_and_grad(loss_fn)(p, *batch)
            updates, s = opt.update(g, s, p)
            return (optax.apply_updates(p, updates), s), loss

        @jax.jit
        def epoch(p, s, Xb, yb):
            (p, s), losses = jax.lax.scan(step, (p, s), (Xb, yb))
            return p, s, losses.mean()

        self.loss_fn = jax.jit(loss_fn)
        self.epoch_fn = epoch
        state = opt.init(params)
        t0 = time.perf_counter()
        jax.block_until_ready(epoch(params, state, self.Xb, self.yb))  # compile + warm-up, discarded
        compile_s = time.perf_counter() - t0
        self.params, self.state = params, state
        return {"samples": n_batches * batch, "compile_s": compile_s,
                "loss0": float(self.loss_fn(params, self.Xe, self.ye))}

    def epoch(self, req):
        t0 = time.perf_counter()
        self.params, self.state, loss = self.jax.block_until_ready(
            self.epoch_fn(self.params, self.state, self.Xb, self.yb))
        return {"seconds": time.perf_counter() - t0, "loss": float(loss)}

    def eval(self, req):
        return {"loss": float(self.loss_fn(self.params, self.Xe, self.ye))}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m fastnn.bench.jax_worker")
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--cpus", default="", help="comma-separated CPUs to pin this process to")
    args = parser.parse_args(argv)
    cpus = {int(c) for c in args.cpus.split(",") if c.strip()}
    _configure_threads(args.threads, cpus)
    from fastnn.bench._serve import serve  # after the pinning: it imports numpy

    def ready(worker):
        return {"jax": worker.jax.__version__, "cpus": sorted(os.sched_getaffinity(0)),
                "xla_flags": os.environ.get("XLA_FLAGS", "")}

    return serve(Worker, ready)


if __name__ == "__main__":
    sys.exit(main())
