"""The work fastnn's benchmarks measure, defined once for ``pytest bench/`` and
``python -m bench.compare``: the GEMM shapes of the MLP 784-256-128-10, the
small-image convolution layers, the synthetic MNIST-shaped data, the model, the optimizer calls with the bytes
each moves per parameter, and the correctness checks every benchmark runs
before it is timed (a fast but wrong kernel must fail, not win).
"""

import numpy as np

MLP_SIZES = (784, 256, 128, 10)
TRAIN_BATCHES = (32, 128, 512)


# ---- GEMM --------------------------------------------------------------------

def gemm_cases(full=False):
    """(name, m, n, k, trans_a, trans_b) with C (m, n) = op(A) (m, k) @ op(B) (k, n).

    The first layer of the MLP at batch n: forward X (n, 784) @ W (784, 256);
    dW = X^T dZ (trans_a, X stored (n, 784)); dX = dZ W^T (trans_b, W stored
    (784, 256)).  Then square sizes; 2048 only in full mode.
    """
    cases = []
    for n in TRAIN_BATCHES:
        cases.append((f"fwd_{n}x784x256", n, 256, 784, False, False))
        cases.append((f"dW_784x{n}x256_tA", 784, 256, n, True, False))
        cases.append((f"dX_{n}x256x784_tB", n, 784, 256, False, True))
    for s in (256, 512, 1024) + ((2048,) if full else ()):
        cases.append((f"square_{s}", s, s, s, False, False))
    return cases


def gemm_operands(case, seed=0):
    """A, B (float32, stored as the transposes say) for a gemm case."""
    _, m, n, k, trans_a, trans_b = case
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((k, m) if trans_a else (m, k), dtype=np.float32)
    B = rng.standard_normal((n, k) if trans_b else (k, n), dtype=np.float32)
    return A, B


def gemm_flops(case):
    _, m, n, k, _, _ = case
    return 2.0 * m * n * k


def gemm_expected(A, B, trans_a, trans_b):
    """op(A) @ op(B) in float64."""
    a = A.T if trans_a else A
    b = B.T if trans_b else B
    return a.astype(np.float64) @ b.astype(np.float64)


# ---- convolution -------------------------------------------------------------

def conv_cases():
    """(name, n, h, w, c, oc): 3x3 convolutions, stride 1, padding 1, bias, ReLU.

    The two layers of a small-image CNN at batch 128: 28x28x1 -> 32 filters
    (an MNIST first layer) and 14x14x32 -> 64 (after a 2x2 pool).
    """
    return [("28x28x1->32", 128, 28, 28, 1, 32), ("14x14x32->64", 128, 14, 14, 32, 64)]


CONV_KERNEL = 3
CONV_PADDING = 1


def conv_runs():
    """(case, with_dx) to measure: every layer with its input gradient, and the
    first layer (C = 1) also without, as a network's first layer needs none."""
    return [(case, with_dx) for case in conv_cases() for with_dx in (True, False)
            if with_dx or case[4] == 1]


def conv_data(case, seed=0):
    """X (N, H, W, C) in [0, 1), W (3, 3, C, OC), b (OC,), dY (N, H, W, OC): float32."""
    _, n, h, w, c, oc = case
    rng = np.random.default_rng(seed)
    k = CONV_KERNEL
    X = rng.random((n, h, w, c), dtype=np.float32)
    W = rng.standard_normal((k, k, c, oc), dtype=np.float32) * np.float32((k * k * c) ** -0.5)
    b = rng.standard_normal(oc, dtype=np.float32) * np.float32(0.1)
    dY = rng.standard_normal((n, h, w, oc), dtype=np.float32)
    return X, W, b, dY


def conv_flops(case, with_dx=True):
    """2 M K OC per GEMM (M = N*OH*OW, K = 9 C): forward, dW and, with dX, dZ W^T."""
    _, n, h, w, c, oc = case
    gemm = 2.0 * n * h * w * CONV_KERNEL * CONV_KERNEL * c * oc
    return gemm * (3 if with_dx else 2)


def conv_step(k, case, data, with_dx=True):
    """(run, outputs) on backend module `k`: run() is one conv2d_forward + conv2d_backward
    (bias, ReLU; the upstream gradient dY is fixed, dZ a buffer of its own);
    outputs maps "Y", "dW", "db" and, with dX, "dX" to the backend's arrays."""
    _, n, h, w, c, oc = case
    X, W, b, dY = (k.asarray(a) for a in data)
    cols = k.empty((n * h * w, CONV_KERNEL * CONV_KERNEL * c))
    out = {"Y": k.empty((n, h, w, oc)), "dW": k.empty(W.shape), "db": k.empty((oc,))}
    if with_dx:
        out["dX"] = k.empty(X.shape)
    dZ = k.empty((n, h, w, oc))
    conv = dict(stride=1, padding=CONV_PADDING, activation="relu")

    def run():
        k.conv2d_forward(out["Y"], X, W, b, cols, **conv)
        k.conv2d_backward(out.get("dX"), out["dW"], out["db"], dZ, dY, X, W, out["Y"], cols,
                          **conv)

    return run, out


def conv_expected(case, data, with_dx=True):
    """The reference backend's Y, dW, db (and dX) for `conv_step`."""
    from fastnn import kernels
    reference = kernels.get("reference")

    run, out = conv_step(reference, case, data, with_dx)
    run()
    return out


def check_conv(k, case, data, with_dx=True, want=None, rel=1e-4):
    """One forward + backward on backend module `k` equals the reference's."""
    want = conv_expected(case, data, with_dx) if want is None else want
    run, out = conv_step(k, case, data, with_dx)
    run()
    sync(k)
    for name, ref in want.items():
        assert_close(k.to_numpy(out[name]), ref, rel, f"{k.name} conv {case[0]} {name}")


# ---- data and model ----------------------------------------------------------

def synthetic_mnist(n, seed=0, n_features=784, n_classes=10, chunk=8192):
    """MNIST-shaped, learnable data: X (n, 784) float32 in [0, 1], y int64.

    Each class has a sparse "stroke" prototype; a sample is its class's
    prototype with pixels dropped out, a fainter random other prototype on top
    and noise, so a model learns it (not perfectly, as MNIST) and the compute
    is exactly that of MNIST.  Made in chunks so that the temporaries stay
    small next to X (peak-RSS measurements see X, not its making).
    """
    rng = np.random.default_rng(seed)
    protos = (rng.random((n_classes, n_features), dtype=np.float32) < 0.2).astype(np.float32)
    y = rng.integers(0, n_classes, size=n)
    X = np.empty((n, n_features), np.float32)
    for lo in range(0, n, chunk):
        hi = min(lo + chunk, n)
        x = X[lo:hi]
        np.multiply(protos[y[lo:hi]], rng.random((hi - lo, n_features), dtype=np.float32) < 0.6,
                    out=x)
        other = protos[rng.integers(0, n_classes, size=hi - lo)]
        x += 0.8 * other * (rng.random((hi - lo, n_features), dtype=np.float32) < 0.5)
        x += 0.5 * rng.random((hi - lo, n_features), dtype=np.float32)
        np.clip(x, 0.0, 1.0, out=x)
    return X, y.astype(np.int64)


def make_mlp(backend, seed=0, sizes=MLP_SIZES):
    """The benchmark MLP (ReLU hidden layers, logits out) on `backend`."""
    import fastnn

    layers = [fastnn.Dense(a, b, activation="relu") for a, b in zip(sizes[:-2], sizes[1:-1])]
    layers.append(fastnn.Dense(sizes[-2], sizes[-1]))
    return fastnn.Sequential(layers, seed=seed, backend=backend)


def make_trainer(backend, seed=0, sizes=MLP_SIZES, lr=1e-3):
    import fastnn

    return fastnn.Trainer(make_mlp(backend, seed, sizes), "softmax_cross_entropy",
                          fastnn.optim.Adam(lr=lr), backend=backend)


# ---- checks ------------------------------------------------------------------

def assert_close(got, want, rel=1e-4, what="result"):
    """max |got - want| <= rel * max |want| (relative to the scale of the result)."""
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    if got.shape != want.shape:
        raise AssertionError(f"{what}: shape {got.shape}, expected {want.shape}")
    if not np.all(np.isfinite(got)):
        raise AssertionError(f"{what}: contains NaN or Inf")
    scale = max(float(np.max(np.abs(want))), 1e-30)
    err = float(np.max(np.abs(got - want)))
    if err > rel * scale:
        raise AssertionError(f"{what}: max error {err:.3g} > {rel:g} x scale {scale:.3g}")


def check_model_grads(backend, X, y, sizes=MLP_SIZES, rel=1e-3):
    """The gradients of one batch on `backend` equal those of the reference backend."""
    import fastnn

    grads = {}
    for name in (backend, "reference"):
        trainer = fastnn.Trainer(make_mlp(name, 0, sizes), "softmax_cross_entropy",
                                 fastnn.optim.SGD(lr=0.0), backend=name)
        trainer.train_step(X, y)
        grads[name] = fastnn.kernels.get(name).to_numpy(trainer.model.grads)
    assert_close(grads[backend], grads["reference"], rel, f"{backend} MLP gradients")


# ---- optimizer updates ---------------------------------------------------------
# name -> (bytes moved per parameter, number of state buffers, call).  Each
# call reads params, grads and every state buffer and writes params and every
# state buffer back: 4 B x (2 + s) read + 4 B x (1 + s) written.

_HYPER = dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8)

OPTIMIZERS = {
    # p, g, buf read; p, buf written: 20 B/param
    "sgd": (20, 1, lambda k, p, g, s: k.sgd(p, g, s[0], step=2, lr=1e-2, momentum=0.9)),
    # p, g, m, v read; p, m, v written: 28 B/param
    "adam": (28, 2, lambda k, p, g, s: k.adam(p, g, s[0], s[1], step=3, **_HYPER)),
    "adamw": (28, 2, lambda k, p, g, s: k.adamw(p, g, s[0], s[1], step=3, weight_decay=1e-2,
                                                **_HYPER)),
    "nadam": (28, 2, lambda k, p, g, s: k.nadam(p, g, s[0], s[1], step=3, mu_product=0.5,
                                                **_HYPER)),
    "adamax": (28, 2, lambda k, p, g, s: k.adamax(p, g, s[0], s[1], step=3, **_HYPER)),
    # p, g, square_avg read; p, square_avg written: 20 B/param
    "rmsprop": (20, 1, lambda k, p, g, s: k.rmsprop(p, g, s[0], None, None, lr=1e-2,
                                                    alpha=0.99, eps=1e-8)),
    # p, g, sum_sq read; p, sum_sq written: 20 B/param
    "adagrad": (20, 1, lambda k, p, g, s: k.adagrad(p, g, s[0], step=3, lr=1e-2)),
}


def optimizer_buffers(size, n_state, seed=0):
    """params, grads and `n_state` state buffers (positive, as second moments are)."""
    rng = np.random.default_rng(seed)
    p = rng.standard_normal(size, dtype=np.float32)
    g = rng.standard_normal(size, dtype=np.float32)
    state = [rng.random(size, dtype=np.float32) for _ in range(n_state)]
    return p, g, state


def check_optimizer(k, name, size=4099):
    """One update on backend module `k` equals the reference's."""
    from fastnn import kernels
    reference = kernels.get("reference")

    _, n_state, call = OPTIMIZERS[name]
    results = []
    for mod in (k, reference):
        p, g, state = optimizer_buffers(size, n_state, seed=1)
        p, g, state = mod.asarray(p), mod.asarray(g), [mod.asarray(s) for s in state]
        call(mod, p, g, state)
        results.append([mod.to_numpy(a) for a in [p] + state])
    for got, want in zip(*results):
        assert_close(got, want, 1e-5, f"{k.name} {name} update")


# ---- pytest-benchmark helpers ------------------------------------------------

def sync(k):
    """Wait for the device (cuda) so a timing covers the work, not its launch."""
    if k.name == "cuda":
        from numba import cuda

        cuda.synchronize()


def record(benchmark, k, rates):
    """Put the backend's threads and each rate (amount per call / median time)
    into ``benchmark.extra_info``; ``rates`` maps a unit ("GFLOP/s") to the
    amount of that unit's numerator done by one call (in units, e.g. GFLOP)."""
    benchmark.extra_info["threads"] = k.info().get("threads")
    stats = getattr(benchmark, "stats", None)
    if stats is None:  # --benchmark-disable: the body ran once, untimed
        return
    median = stats.stats.median
    for unit, amount in rates.items():
        benchmark.extra_info[unit] = round(amount / median, 3)
