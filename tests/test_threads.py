"""Results that do not depend on the thread count.

Every reduction the C kernels split between threads is cut on fixed
boundaries and its parts are added in a fixed order, so 1, 2 and 4 threads
give the same bits (4 threads on a 2-core machine still run, only slower).
The numba backend is held to the same for numba.set_num_threads.
"""

import contextlib

import numpy as np
import pytest

from fastnn import kernels
from fastnn.kernels import spec

from .test_epoch import _epoch, _stack

import fastnn

THREADS = (1, 2, 4)


@contextlib.contextmanager
def c_threads(n):
    from fastnn.kernels import c

    before = c.info()["threads"]
    c.set_num_threads(n)
    try:
        yield
    finally:
        c.set_num_threads(before)


def _epoch_run(sizes, batch, n, loss="softmax_xent", opt="adam", l2=0.0, grad_scale=1.0,
               shuffle=False, epochs=2, seed=0):
    """Parameters, batch losses and correct counts after `epochs` c epochs of
    an MLP of `sizes` (ReLU hidden layers) on random data, with the c
    backend's current thread count (the workspace sized for it)."""
    k = kernels.get("c")
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, sizes[0])).astype(np.float32)
    if loss == "softmax_xent":
        t = rng.integers(0, sizes[-1], n)
    else:
        t = rng.random((n, sizes[-1])).astype(np.float32)
    acts = ["relu"] * (len(sizes) - 2) + [None]
    model = fastnn.Sequential([fastnn.Dense(a, b, act) for a, b, act in
                               zip(sizes, sizes[1:], acts)], seed=seed, backend="reference")
    layers = _stack(model)
    p, g = model.params.copy(), np.zeros(model.size, np.float32)
    states = tuple(np.zeros_like(p) for _ in spec.OPTIMIZERS[opt].states)
    hyper = {"adam": dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8),
             "sgd": dict(lr=0.05, momentum=0.9)}[opt]
    ws = k.empty(k.dense_stack_workspace(layers, batch))
    order = rng.permutation(n) if shuffle else None
    n_batches = -(-n // batch)
    step, mu, losses, correct = 0, 1.0, [], []
    for _ in range(epochs):
        bl, bc = np.zeros(n_batches), np.zeros(n_batches, np.int64)
        done, step, mu = _epoch(k, p, g, states, ws, X, t, bl, bc, layers=layers, loss=loss,
                                batch_size=batch, optimizer=opt, hyper=hyper, step=step,
                                mu_product=mu, l2=l2, grad_scale=grad_scale, order=order)
        assert done == n_batches
        losses.append(bl)
        correct.append(bc)
    return p, np.concatenate(losses), np.concatenate(correct), states


def _same_bits(runs):
    base = runs[0]
    for other in runs[1:]:
        assert base[0].tobytes() == other[0].tobytes(), "parameters differ"
        assert base[1].tobytes() == other[1].tobytes(), "batch losses differ"
        np.testing.assert_array_equal(base[2], other[2])
        for s0, s1 in zip(base[3], other[3]):
            assert s0.tobytes() == s1.tobytes(), "optimizer states differ"


# The epoch uses several threads when a batch has >= threads * 2M
# multiply-adds (csrc/train.c): 784-256-128-10 (235k a sample) at batch 32
# runs on 2 threads and, asked for 4, on 3; at batch 128 on 4.  The last
# batch is short (300 = 9 * 32 + 12 = 2 * 128 + 44).
@pytest.mark.parametrize("batch", [32, 128])
def test_mlp_epoch_adam_same_bits_on_1_2_4_threads(batch):
    runs = []
    for n in THREADS:
        with c_threads(n):
            runs.append(_epoch_run((784, 256, 128, 10), batch, 300))
    _same_bits(runs)


@pytest.mark.parametrize("case", [
    # l2 (its sum of squares per fixed chunk), a gathered order, grad_scale
    dict(sizes=(784, 256, 128, 10), batch=48, n=101, l2=0.05, shuffle=True, grad_scale=2.0),
    # a pointwise loss on targets, SGD
    dict(sizes=(784, 256, 128, 10), batch=40, n=90, loss="mse", opt="sgd"),
    # the tests' split shapes: partial sums (700, 400) and split by output (48, 40)
    dict(sizes=(700, 400, 7, 3), batch=24, n=53, l2=0.01),
    dict(sizes=(48, 1024, 40, 3), batch=48, n=101),
    # chunks wider than a gemm k block (1100 inputs): pairs chained, never split
    dict(sizes=(1100, 300, 3), batch=24, n=61),
    dict(sizes=(1100, 300, 3), batch=32, n=70, loss="bce"),
], ids=["l2-order", "mse-sgd", "700", "48", "wide24", "wide32-bce"])
def test_epoch_variants_same_bits_on_1_2_4_threads(case):
    case = dict(case)
    sizes, batch, n = case.pop("sizes"), case.pop("batch"), case.pop("n")
    runs = []
    for threads in THREADS:
        with c_threads(threads):
            runs.append(_epoch_run(sizes, batch, n, **case))
    _same_bits(runs)


def test_epoch_threads_up_to_eight_same_bits():
    """Odd thread counts deal the chunks unevenly (3: 1 + 1 + 2 of 4)."""
    runs = []
    for threads in (1, 3, 5, 8):
        with c_threads(threads):
            runs.append(_epoch_run((784, 256, 128, 10), 256, 300, epochs=1))
    _same_bits(runs)


# ---- single kernels ----------------------------------------------------------

def _rough(shape, rng):
    """Values over eight decades, so that float64 sums of them round (sums of
    plain normal floats are often exact in float64, whatever the order)."""
    return (3.0 + rng.normal(size=shape) * 10.0 ** rng.uniform(-4, 4, shape)).astype(np.float32)


def _on_threads(fn):
    out = []
    for n in THREADS:
        with c_threads(n):
            out.append(fn())
    return out


def test_sum_squares_and_loss_values_same_bits():
    k = kernels.get("c")
    rng = np.random.default_rng(1)
    x = rng.normal(size=1_000_003).astype(np.float32)
    t = rng.normal(size=x.size).astype(np.float32)
    Z = rng.normal(size=(20_000, 10)).astype(np.float32)
    labels = rng.integers(0, 10, 20_000)

    def run():
        P = np.empty_like(Z)
        return (k.sum_squares(x), k.mse_forward(x, t), k.mae_forward(x, t),
                k.bce_forward(x, (t > 0).astype(np.float32)),
                k.softmax_xent_forward(P, Z, labels))

    values = _on_threads(run)
    for v in values[1:]:
        assert v == values[0]
    # and still the sums they are
    assert values[0][0] == pytest.approx(float(np.sum(x.astype(np.float64) ** 2)), rel=1e-12)


@pytest.mark.parametrize("rows,c", [(5000, 200), (70_001, 3), (300, 1000)])
def test_batchnorm_same_bits(rows, c):
    k = kernels.get("c")
    rng = np.random.default_rng(2)
    X, dY = _rough((rows, c), rng), _rough((rows, c), rng)
    gamma = rng.normal(size=c).astype(np.float32)
    beta = rng.normal(size=c).astype(np.float32)

    def run():
        Y = np.empty_like(X)
        mean, invstd = np.empty(c, np.float32), np.empty(c, np.float32)
        rm, rv = np.zeros(c, np.float32), np.ones(c, np.float32)
        k.batchnorm_forward(Y, X, gamma, beta, mean, invstd, rm, rv)
        dX, dg, db = np.empty_like(X), np.empty(c, np.float32), np.empty(c, np.float32)
        k.batchnorm_backward(dX, dg, db, dY, X, gamma, mean, invstd)
        return [a.tobytes() for a in (Y, mean, invstd, rm, rv, dX, dg, db)]

    runs = _on_threads(run)
    for r in runs[1:]:
        assert r == runs[0]


def test_dense_backward_and_gemm_same_bits():
    k = kernels.get("c")
    rng = np.random.default_rng(3)
    n, fi, fo = 512, 300, 700
    X = rng.normal(size=(n, fi)).astype(np.float32)
    W = rng.normal(size=(fi, fo)).astype(np.float32)
    dY = rng.normal(size=(n, fo)).astype(np.float32)
    Y = np.maximum(rng.normal(size=(n, fo)), 0).astype(np.float32)

    def run():
        dX, dW = np.empty_like(X), np.empty_like(W)
        db, dZ = np.empty(fo, np.float32), np.empty_like(dY)
        k.dense_backward(dX, dW, db, dZ, dY, X, W, Y, activation="relu")
        C = np.empty((n, fo), np.float32)
        k.gemm(X, W, C)
        return [a.tobytes() for a in (dX, dW, db, dZ, C)]

    runs = _on_threads(run)
    for r in runs[1:]:
        assert r == runs[0]


@pytest.mark.parametrize("cell,C", [("rnn", 3), ("gru", 3), ("gru", 12), ("lstm", 2)])
def test_rnn_kernels_same_bits(cell, C):
    """rnn_forward / rnn_backward: the recurrence splits the batch (37 rows, 5
    tiles of 8: 3 + 2 on 2 threads, 2 + 1 + 1 + 1 on 4), the weight
    gradients are GEMMs and one column pass over a cache big enough to be
    split; every output's bits the same on 1, 2 and 4 threads."""
    k = kernels.get("c")
    G, K = {"rnn": (1, 1), "gru": (3, 4), "lstm": (4, 5)}[cell]
    rng = np.random.default_rng(5)
    n, L, H = 37, 30, 64
    X = _rough((n, L, C), rng)
    W_ih, W_hh = rng.uniform(-0.3, 0.3, (C, G * H)), rng.uniform(-0.3, 0.3, (H, G * H))
    b_ih, b_hh = rng.uniform(-0.3, 0.3, G * H), rng.uniform(-0.3, 0.3, G * H)
    W_ih, W_hh, b_ih, b_hh = (a.astype(np.float32) for a in (W_ih, W_hh, b_ih, b_hh))
    dHs0 = rng.normal(size=(n, L, H)).astype(np.float32)

    def run():
        Hs, Gc = np.zeros((n, L, H), np.float32), np.zeros((n, L, K * H), np.float32)
        k.rnn_forward(Hs, Gc, X, W_ih, W_hh, b_ih, b_hh, cell=cell)
        outs = [Hs.copy(), Gc.copy(), np.zeros_like(X), np.zeros_like(W_ih), np.zeros_like(W_hh),
                np.zeros_like(b_ih), np.zeros_like(b_hh), dHs0.copy()]
        k.rnn_backward(*outs[2:], Gc, X, W_ih, W_hh, Hs, cell=cell)
        return [a.tobytes() for a in outs + [Gc]]

    runs = _on_threads(run)
    for r in runs[1:]:
        assert r == runs[0]


def test_gru_epoch_same_bits_on_1_2_4_threads():
    """A compiled GRU + Dense training epoch (Adam)."""
    rng = np.random.default_rng(2)
    X = rng.normal(size=(90, 12, 2)).astype(np.float32)
    y = rng.integers(0, 3, 90)

    def run():
        model = fastnn.Sequential([fastnn.GRU(2, 24), fastnn.Dense(24, 3)], seed=0,
                                  backend="c", input_shape=(12, 2))
        trainer = fastnn.Trainer(model, "softmax_cross_entropy", fastnn.optim.Adam(lr=1e-2))
        hist = trainer.fit(X, y, epochs=2, batch_size=40, shuffle=False, verbose=False)
        return model.get_params().tobytes(), np.asarray(hist.history["loss"]).tobytes()

    runs = _on_threads(run)
    for r in runs[1:]:
        assert r == runs[0]


# ---- numba -------------------------------------------------------------------

def test_numba_kernels_same_bits_for_numba_threads():
    numba = pytest.importorskip("numba")
    k = kernels.get("numba")
    top = numba.config.NUMBA_NUM_THREADS
    counts = sorted({1, min(2, top), min(4, top)})
    rng = np.random.default_rng(4)
    rows, c = 5000, 200
    X, dY = _rough((rows, c), rng), _rough((rows, c), rng)
    gamma = rng.normal(size=c).astype(np.float32)
    beta = rng.normal(size=c).astype(np.float32)
    x = rng.normal(size=1_000_003).astype(np.float32)
    A = rng.normal(size=(300, 700)).astype(np.float32)
    B = rng.normal(size=(700, 500)).astype(np.float32)

    def run():
        Y = np.empty_like(X)
        mean, invstd = np.empty(c, np.float32), np.empty(c, np.float32)
        rm, rv = np.zeros(c, np.float32), np.ones(c, np.float32)
        k.batchnorm_forward(Y, X, gamma, beta, mean, invstd, rm, rv)
        dX, dg, db = np.empty_like(X), np.empty(c, np.float32), np.empty(c, np.float32)
        k.batchnorm_backward(dX, dg, db, dY, X, gamma, mean, invstd)
        C = np.empty((300, 500), np.float32)
        k.gemm(A, B, C)
        return [a.tobytes() for a in (Y, mean, invstd, rm, rv, dX, dg, db, C)] + [
            k.sum_squares(x), k.mse_forward(x, x[::-1].copy())]

    before = numba.get_num_threads()
    runs = []
    try:
        for n in counts:
            numba.set_num_threads(n)
            runs.append(run())
    finally:
        numba.set_num_threads(before)
    for r in runs[1:]:
        assert r == runs[0]


# ---- the team's spin window (fastnn_set_cold_factor) ---------------------------
# By default a small kernel stays on one thread when the OpenMP team has
# probably slept since its last region (conftest sets the factor to 1 for
# every other test).  Which thread runs a piece never changes the bits, so
# a model trained at the default factor equals one trained at factor 1 and
# one trained on one thread.

def _cli_cnn_params(threads, factor):
    from fastnn.cli import small_cnn
    from fastnn.kernels import c

    rng = np.random.default_rng(5)
    X = rng.random((200, 8, 8, 1), dtype=np.float32)
    y = rng.integers(0, 10, 200)
    layers = small_cnn((8, 8, 1), 10)[:-1] + [fastnn.Dropout(0.2), fastnn.Dense(64, 10)]
    model = fastnn.Sequential(layers, seed=0, backend="c", input_shape=(8, 8, 1))
    trainer = fastnn.Trainer(model, "softmax_cross_entropy", fastnn.optim.Adam(lr=1e-3),
                             backend="c")
    before = c.set_cold_factor(factor)
    try:
        with c_threads(threads):
            history = trainer.fit(X, y, epochs=2, batch_size=32, seed=1, verbose=False)
    finally:
        c.set_cold_factor(before)
    return np.array(model.params), history.history["loss"]


def test_cold_factor_never_changes_the_bits():
    base = _cli_cnn_params(1, 16)
    for threads, factor in ((2, 16), (2, 1), (2, 1 << 20)):
        got = _cli_cnn_params(threads, factor)
        np.testing.assert_array_equal(got[0], base[0], err_msg=f"{threads} threads, {factor}")
        assert got[1] == base[1]


def test_set_cold_factor_validates_and_returns_the_previous():
    from fastnn.kernels import c

    before = c.set_cold_factor(3)
    try:
        assert c.set_cold_factor(5) == 3
        assert c.set_cold_factor(np.int32(2)) == 5
        for bad in (0, -1, True, 1.5, 2 ** 31, "2"):
            with pytest.raises(ValueError, match="factor"):
                c.set_cold_factor(bad)
        assert c.set_cold_factor(2) == 2
    finally:
        c.set_cold_factor(before)


# ---- the epoch's barrier -------------------------------------------------------
# The threaded dense epoch's threads meet at barriers of their own
# (runtime.c, fastnn_barrier_wait) that spin before they sleep on a futex.
# Spin 0 sends every waiter to the futex at once; a spin of 1000 s keeps
# every waiter spinning (on up to as many threads as processors: 4 threads
# on a 2-core machine never spin, they sleep at once).  The bits are one
# thread's either way, on 2 and 4 threads, through the post ops
# (BatchNorm, Dropout) and around a hook that sleeps while the others wait.

@contextlib.contextmanager
def c_setting(name, value):
    """The c backend's set_<name>(value) for the block, the previous after."""
    from fastnn.kernels import c

    setter = getattr(c, "set_" + name)
    before = setter(value)
    try:
        yield
    finally:
        setter(before)


def barrier_spin(us):
    return c_setting("barrier_spin", us)


@pytest.mark.parametrize("threads", [2, 4])
def test_barrier_spin_never_changes_the_bits(threads):
    with c_threads(1):
        runs = [_epoch_run((784, 256, 128, 10), 32, 1000, shuffle=True, epochs=1)]
    for us in (0, None, 10 ** 9):
        with c_threads(threads), barrier_spin(us):
            runs.append(_epoch_run((784, 256, 128, 10), 32, 1000, shuffle=True, epochs=1))
    _same_bits(runs)


def test_barrier_beside_a_busy_process_same_bits():
    """With another process spinning on a core the team's threads are
    preempted, and the default spin may drop to the short one mid-epoch
    (runtime.c team_busy; not observable from here): the bits stay one
    thread's."""
    import subprocess
    import sys

    with c_threads(1):
        base = _epoch_run((784, 256, 128, 10), 32, 3000, shuffle=True, epochs=3)
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        with c_threads(2), barrier_spin(None):
            runs = [_epoch_run((784, 256, 128, 10), 32, 3000, shuffle=True, epochs=3)
                    for _ in range(2)]
    finally:
        busy.kill()
        busy.wait()
    _same_bits([base, *runs])


def _bn_dropout_fit(threads, us, hook_sleep=None):
    import time

    from fastnn.kernels import c

    model = fastnn.Sequential([fastnn.Dense(784, 256, "relu"), fastnn.BatchNorm(256),
                               fastnn.Dropout(0.2), fastnn.Dense(256, 128, "relu"),
                               fastnn.BatchNorm(128), fastnn.Dropout(0.2),
                               fastnn.Dense(128, 10)], seed=3, backend="c")
    trainer = fastnn.Trainer(model, "softmax_cross_entropy", fastnn.optim.Adam(lr=1e-3),
                             fused=True)
    rng = np.random.default_rng(4)
    X = rng.random((600, 784), dtype=np.float32)
    y = rng.integers(0, 10, 600)
    events = []
    with c_threads(threads), barrier_spin(us):
        ce = trainer._fused_epoch(600, 64)
        e = ce.build(X, trainer._targets(y, 600), rng.permutation(600))
        if hook_sleep is not None:
            def hook(event, batch):
                events.append((int(event), batch))
                time.sleep(hook_sleep)
            # GRADS too: the updates then wait for the hook (update_owned)
            hook.events = frozenset({spec.HookEvent.GRADS, spec.HookEvent.BATCH})
            e.hook, e.hook_every = hook, 1
        done = trainer._k.model_epoch(e)[0]
        assert c.epoch_threads() == threads
    assert done == 10
    return model.get_params(), events


def test_barrier_spin_with_post_ops_and_a_sleeping_hook():
    base, _ = _bn_dropout_fit(1, None)
    for threads, us, sleep in ((2, 0, None), (2, 10 ** 9, None), (2, 0, 0.003),
                               (2, None, 0.003), (4, 0, 0.001)):
        params, events = _bn_dropout_fit(threads, us, sleep)
        np.testing.assert_array_equal(params, base, err_msg=f"{threads} threads, spin {us}")
        if sleep is not None:  # every batch's GRADS, then BATCH event, in order
            assert events == [(int(ev), b) for b in range(10)
                              for ev in (spec.HookEvent.GRADS, spec.HookEvent.BATCH)]


def test_set_barrier_spin_validates_and_returns_the_previous():
    from fastnn.kernels import c

    before = c.set_barrier_spin(7)
    try:
        assert c.set_barrier_spin(0) == 7
        assert c.set_barrier_spin(np.int64(12)) == 0
        assert c.set_barrier_spin(None) == 12
        assert c.set_barrier_spin(3) is None
        for bad in (-1, True, 1.5, 2 ** 63, "2"):
            with pytest.raises(ValueError, match="us"):
                c.set_barrier_spin(bad)
        # "forever" (any spin past ~292,000 years) reads back as the
        # largest value, which it takes again
        assert c.set_barrier_spin(2 ** 62) == 3
        forever = c.set_barrier_spin(None)
        assert forever == 2 ** 63 - 1
        assert c.set_barrier_spin(forever) is None
        assert c.set_barrier_spin(3) == forever
        assert c.set_barrier_spin(None) == 3
    finally:
        c.set_barrier_spin(before)


# ---- one team for a plan's epoch (fastnn_set_epoch_team) -----------------------
# A threaded epoch of a plan that is not a dense stack keeps one team for the
# whole epoch (runtime.c fastnn_team_epoch): the calling thread runs the
# batch loop and hands each kernel's shares (jobs) to the others, which
# wait at a spinning barrier.  Off, every kernel opens its own parallel
# region.  The model below reaches every kernel written as a job: direct
# and Winograd 3x3 convolutions (forward, dW, dX), the im2col path
# (stride 2), the fused convolution + pooling, max and average pooling,
# BatchNorm, an activation layer, Dropout, a residual block (axpy), dense
# layers (gemm and gemv), the optimizer update, clipping (scale, clip) and
# l2 (axpy); the bits are one thread's on 2, 3 and 4 threads, team or not,
# beside a busy process, and around a hook that runs the model's predict
# on the team from inside the epoch.

def epoch_team(on):
    return c_setting("epoch_team", on)


def _team_model():
    return fastnn.Sequential([
        fastnn.Conv2D(3, 16, 3, padding=1, activation="relu"), fastnn.BatchNorm(16),
        fastnn.Conv2D(16, 16, 3, padding=1, activation="relu"), fastnn.MaxPool2D(2),
        fastnn.Residual(fastnn.Conv2D(16, 16, 3, padding=1), fastnn.ReLU()),
        fastnn.Conv2D(16, 24, 3, stride=2, padding=1, activation="tanh"), fastnn.Dropout(0.25),
        fastnn.AvgPool2D(2), fastnn.Flatten(), fastnn.Dense(96, 300, "relu"),
        fastnn.Dense(300, 1), fastnn.Flatten(), fastnn.Dense(1, 10)],
        seed=2, backend="c", input_shape=(16, 16, 3))


def _team_fit(threads, team, trainer_kw=None, predict_in_hook=False):
    rng = np.random.default_rng(6)
    X = rng.standard_normal((192, 16, 16, 3)).astype(np.float32)
    y = rng.integers(0, 10, 192)
    model = _team_model()
    trainer = fastnn.Trainer(model, "softmax_cross_entropy", fastnn.optim.Adam(lr=1e-3),
                             backend="c", **(trainer_kw or {}))
    seen = []
    with c_threads(threads), epoch_team(team):
        ce = trainer._fused_epoch(192, 48)
        e = ce.build(X, trainer._targets(y, 192), rng.permutation(192))
        if predict_in_hook:
            def hook(event, batch):
                seen.append(model.predict(X[:40]))
            hook.events = frozenset({spec.HookEvent.BATCH})
            e.hook, e.hook_every = hook, 1
        done = trainer._k.model_epoch(e)[0]
    assert done == 4
    return model.get_params(), seen


@pytest.mark.parametrize("trainer_kw", [None, dict(clip_norm=0.5, l2=1e-3),
                                        dict(clip_value=0.01)])
def test_epoch_team_same_bits_as_one_thread(trainer_kw):
    base, _ = _team_fit(1, True, trainer_kw)
    for threads, team in ((2, True), (2, False), (3, True), (4, True)):
        got, _ = _team_fit(threads, team, trainer_kw)
        np.testing.assert_array_equal(got, base, err_msg=f"{threads} threads, team {team}")


def test_epoch_team_beside_a_busy_process_and_with_a_kernel_in_the_hook():
    """Beside a busy process the team may stop handing out shares mid-epoch
    (runtime.c, the barrier's preemption rule); a BATCH hook calling
    predict runs its kernels on the team from inside the epoch."""
    import subprocess
    import sys

    base, seen_1 = _team_fit(1, True, predict_in_hook=True)
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        got, _ = _team_fit(2, True)
    finally:
        busy.kill()
        busy.wait()
    np.testing.assert_array_equal(got, base)
    got, seen_2 = _team_fit(2, True, predict_in_hook=True)
    np.testing.assert_array_equal(got, base)
    assert len(seen_1) == len(seen_2) == 4
    for a, b in zip(seen_1, seen_2):
        np.testing.assert_array_equal(a, b)


def test_set_epoch_team_validates_and_returns_the_previous():
    from fastnn.kernels import c

    before = c.set_epoch_team(False)
    try:
        assert c.set_epoch_team(None) is False
        assert c.set_epoch_team(True) is False
        assert c.set_epoch_team(np.bool_(False)) is True
        for bad in (0, 1, "yes", 1.0):
            with pytest.raises(ValueError, match="on"):
                c.set_epoch_team(bad)
        assert c.set_epoch_team(None) is False
    finally:
        c.set_epoch_team(before)
