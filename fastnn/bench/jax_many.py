"""JAX + optax as the comparator of fastnn.fit_many, in a process of its own.

    python -m fastnn.bench.jax_many --threads N --models K [--rounds R]

K digits MLPs 64-256-128-10 (different seeds), Adam(1e-3), batch 32, one
epoch over the first 1,344 digits: ``jax.vmap`` of one model's Adam step
over the K models (stacked parameters and optimizer states) inside one
jitted ``lax.scan`` over the epoch's batches -- JAX's way to train many
small models at once.  Prints one JSON line: {"rates": [model-samples/s
per timed epoch], "loss": the last epoch's mean loss}.  --threads 1 pins
the process to one CPU and turns off Eigen's threads before jax is
imported (bench/jax_worker.py says why).
"""

import argparse
import json
import os
import time


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m fastnn.bench.jax_many")
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--models", type=int, required=True)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--cpu", type=int, default=0, help="the CPU for --threads 1")
    args = parser.parse_args(argv)
    if args.threads == 1:
        os.sched_setaffinity(0, {args.cpu})
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                                   + " --xla_cpu_multi_thread_eigen=false").strip()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    from fastnn.bench.jax_worker import mlp_loss
    from fastnn.datasets import load_digits

    X, y = load_digits()
    X, y = np.asarray(X[:1344], np.float32), np.asarray(y[:1344], np.int32)
    B, K = 32, args.models
    nb = len(X) // B
    sizes = [64, 256, 128, 10]

    def init(seed):
        r = np.random.default_rng(seed)
        return [(jnp.asarray((r.uniform(-1, 1, (a, b)) * np.sqrt(6 / (a + b))).astype(np.float32)),
                 jnp.zeros(b, jnp.float32)) for a, b in zip(sizes, sizes[1:])]

    params = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *[init(s) for s in range(K)])
    opt = optax.adam(1e-3, b1=0.9, b2=0.999, eps=1e-8)

    loss_fn = mlp_loss

    def step(p, s, xb, yb):
        loss, g = jax.value_and_grad(loss_fn)(p, xb, yb)
        updates, s = opt.update(g, s, p)
        return optax.apply_updates(p, updates), s, loss

    many_step = jax.vmap(step, in_axes=(0, 0, None, None))

    def body(carry, batch):
        p, s = carry
        p, s, loss = many_step(p, s, *batch)
        return (p, s), loss

    @jax.jit
    def epoch(p, s, Xb, yb):
        (p, s), losses = jax.lax.scan(body, (p, s), (Xb, yb))
        return p, s, losses.mean()

    perm = np.random.default_rng(0).permutation(len(X))[:nb * B]
    Xb, yb = jnp.asarray(X[perm].reshape(nb, B, 64)), jnp.asarray(y[perm].reshape(nb, B))
    state = jax.vmap(opt.init)(params)
    params, state, loss = jax.block_until_ready(epoch(params, state, Xb, yb))  # compile
    rates = []
    for _ in range(args.rounds):
        t0 = time.perf_counter()
        params, state, loss = jax.block_until_ready(epoch(params, state, Xb, yb))
        rates.append(K * nb * B / (time.perf_counter() - t0))
    print(json.dumps({"rates": rates, "loss": float(loss)}))


if __name__ == "__main__":
    main()
