"""dense_stack_epoch: a whole training epoch in one kernel call.

Each backend's epoch must follow the reference's trajectory (which is written
with the per-batch kernels), and the Trainer must give the same result on its
fused path as on its per-batch Python path.
"""

import numpy as np
import pytest

import fastnn
from fastnn import optim
from fastnn import kernels
from fastnn.kernels import spec

REF = kernels.get("reference")


def _epoch(k, *args, **kwargs):
    """One dense_stack_epoch call of backend k; the arguments are spec.Epoch's."""
    return k.dense_stack_epoch(spec.Epoch(*args, **kwargs))

OPTS = [
    ("sgd", dict(lr=0.1, momentum=0.9, nesterov=True)),
    ("adam", dict(lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01)),
    ("adamw", dict(lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01)),
    ("rmsprop", dict(lr=1e-3, alpha=0.99, eps=1e-8, momentum=0.5, centered=True)),
    ("adagrad", dict(lr=0.05, lr_decay=0.01)),
    ("nadam", dict(lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8)),
    ("adamax", dict(lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8)),
]
# an optimizer of the specification not listed above runs at torch's defaults
OPTS += [(name, dict({h.name: h.default for h in o.hyper}, lr=1e-2))
         for name, o in spec.OPTIMIZERS.items() if name not in dict(OPTS)]
LOSSES = ["softmax_xent", "bce", "mse", "mae"]


def _stack(model):
    layers = []
    for li, layer in enumerate(model.layers):
        offs = {name: off for i, name, _, off in model._layout if i == li}
        layers.append((layer.in_features, layer.out_features, offs["weight"], offs["bias"],
                       layer.activation, layer.negative_slope))
    return layers


def _run(k, loss, opt, hyper, X, t, batch, l2=0.0, loss_scale=1.0, grad_scale=1.0, epochs=2,
         sizes=(6, 9, 7, 3), order=None):
    acts = ["relu", "tanh", None]
    model = fastnn.Sequential([fastnn.Dense(a, b, act) for a, b, act in
                               zip(sizes, sizes[1:], acts)], seed=0, backend="reference")
    layers = _stack(model)
    p, g = model.params.copy(), np.zeros(model.size, np.float32)
    states = tuple(np.zeros_like(p) for _ in spec.OPTIMIZERS[opt].states)
    ws = k.empty(k.dense_stack_workspace(layers, batch))
    n_batches = -(-(len(X) if order is None else len(order)) // batch)
    step, mu, losses, correct = 0, 1.0, [], []
    for _ in range(epochs):
        bl, bc = np.zeros(n_batches), np.zeros(n_batches, np.int64)
        done, step, mu = _epoch(k, p, g, states, ws, X, t, bl, bc, layers=layers, loss=loss, batch_size=batch,
            optimizer=opt, hyper=hyper, step=step, mu_product=mu, l2=l2,
            loss_scale=loss_scale, grad_scale=grad_scale, order=order)
        assert done == n_batches
        losses.append(bl)
        correct.append(bc)
    return p, np.concatenate(losses), np.concatenate(correct), step, mu


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("opt,hyper", OPTS, ids=[o for o, _ in OPTS])
def test_epoch_matches_reference(cpu_backend, loss, opt, hyper, rng):
    n = 53  # 6 full batches of 8 and one of 5
    X = rng.normal(size=(n, 6)).astype(np.float32)
    t = rng.integers(0, 3, n) if loss == "softmax_xent" else rng.uniform(0, 1, (n, 3)).astype(np.float32)
    kw = dict(l2=0.05, loss_scale=0.5, grad_scale=2.0) if opt == "sgd" else {}
    want = _run(REF, loss, opt, hyper, X, t, 8, **kw)
    got = _run(cpu_backend, loss, opt, hyper, X, t, 8, **kw)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-4, atol=2e-6)
    np.testing.assert_allclose(got[1], want[1], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(got[2], want[2])
    assert got[3] == want[3] == 14
    assert got[4] == pytest.approx(want[4], rel=1e-12)


def test_epoch_on_cuda_matches_reference(rng):
    cuda = pytest.importorskip("fastnn.kernels.cuda") if fastnn.kernels.available("cuda") else None
    if cuda is None:
        pytest.skip("cuda backend unavailable")
    X = rng.normal(size=(11, 6)).astype(np.float32)
    t = rng.integers(0, 3, 11)
    want = _run(REF, "softmax_xent", "adam", OPTS[1][1], X, t, 4, epochs=1)
    got = _run(kernels.get("cuda"), "softmax_xent", "adam", OPTS[1][1], X, t, 4, epochs=1)
    np.testing.assert_allclose(got[1], want[1], rtol=1e-5)


def test_epoch_stops_at_a_non_finite_loss(cpu_backend, rng):
    X = rng.normal(size=(20, 6)).astype(np.float32)
    X[13] = np.inf  # batch 3 of 4 (batch size 5) gets a non-finite loss
    t = rng.uniform(0, 1, (20, 3)).astype(np.float32)
    model = fastnn.Sequential([fastnn.Dense(6, 3)], seed=0, backend="reference")
    p, g = model.params.copy(), np.zeros(model.size, np.float32)
    bl, bc = np.zeros(4), np.zeros(4, np.int64)
    done, step, _ = _epoch(cpu_backend, p, g, (np.zeros_like(p),), np.empty(100, np.float32), X, t, bl, bc, layers=_stack(model),
        loss="mse", batch_size=5, optimizer="adagrad", hyper=dict(lr=0.1), step=0)
    assert done == 3 and step == 2 and not np.isfinite(bl[2])


def test_epoch_bad_arguments(cpu_backend, rng):
    model = fastnn.Sequential([fastnn.Dense(4, 3)], seed=0, backend="reference")
    layers = _stack(model)
    p, g = model.params.copy(), np.zeros(model.size, np.float32)
    X, t = rng.normal(size=(10, 4)), rng.integers(0, 3, 10)
    bl, bc = np.zeros(5), np.zeros(5, np.int64)
    ok = dict(layers=layers, loss="softmax_xent", batch_size=2, optimizer="sgd",
              hyper=dict(lr=0.1), step=0)
    ws = np.empty(REF.dense_stack_workspace(layers, 2), np.float32)
    cases = [
        (dict(ok, layers=[(4, 3, p.size - 5, -1, "relu", 0.0)]), "overrun"),
        (dict(ok, layers=[(4, 3, 0, 16, None, 0.0), (4, 2, 0, -1, None, 0.0)]), "takes 4 inputs"),
        (dict(ok, optimizer="lbfgs"), "unknown 'lbfgs'"),
        (dict(ok, hyper=dict(lr=0.1, beta1=0.9)), "takes no beta1"),
        (dict(ok, hyper={}), "needs lr"),
        (dict(ok, loss="hinge"), "unknown 'hinge'"),
        (dict(ok, batch_size=1), r"batch_losses: expected shape \(10,\)"),
    ]
    for kwargs, match in cases:
        with pytest.raises(ValueError, match=match):
            _epoch(cpu_backend, p, g, (None,), ws, X, t, bl, bc, **kwargs)
    with pytest.raises(ValueError, match="workspace: needs at least"):
        _epoch(cpu_backend, p, g, (None,), ws[:10], X, t, bl, bc, **ok)
    with pytest.raises(ValueError, match=r"targets: must lie in \[0, 3\)"):
        _epoch(cpu_backend, p, g, (None,), ws, X, t + 1, bl, bc, **ok)


@pytest.mark.parametrize("backend_name", ["c", "numba"])
@pytest.mark.parametrize("opt", [optim.Adam(lr=1e-2), optim.NAdam(), optim.SGD(lr=0.1, momentum=0.9),
                                 optim.RMSprop(centered=True)], ids=lambda o: type(o).__name__)
def test_trainer_fused_and_python_paths_agree(backend_name, opt, rng):
    import copy

    X = rng.normal(size=(100, 8))
    y = rng.integers(0, 4, 100)
    runs = []
    for fused in (True, False):
        model = fastnn.Sequential([fastnn.Dense(8, 16), fastnn.ReLU(), fastnn.Dense(16, 4)], seed=0)
        trainer = fastnn.Trainer(model, "softmax_cross_entropy", copy.deepcopy(opt),
                                 backend=backend_name, fused=fused)
        assert trainer.fused is fused
        hist = trainer.fit(X, y, epochs=3, batch_size=16, seed=1, verbose=False,
                           validation_data=(X[:20], y[:20]))
        runs.append((hist, model.get_params(), trainer.optimizer.step_count))
    (h1, p1, s1), (h2, p2, s2) = runs
    assert s1 == s2 == 21
    np.testing.assert_allclose(h1.loss, h2.loss, rtol=1e-5)
    assert h1.accuracy == h2.accuracy
    np.testing.assert_allclose(p1, p2, rtol=1e-4, atol=1e-6)


def test_trainer_fuses_only_what_it_can():
    """Every model of fastnn's own layers compiles (tests/test_plan.py);
    a custom Python layer or optimizer keeps the batch-by-batch path."""
    dense = [fastnn.Dense(3, 4, "relu"), fastnn.Dense(4, 2)]
    assert fastnn.Trainer(fastnn.Sequential(dense), "mse", "adam").fused
    with_softmax = fastnn.Sequential([fastnn.Dense(3, 2), fastnn.Softmax()])
    assert fastnn.Trainer(with_softmax, "mse", "adam").fused
    with_dropout = fastnn.Sequential([fastnn.Dense(3, 4), fastnn.Dropout(0.5), fastnn.Dense(4, 2)])
    assert fastnn.Trainer(with_dropout, "mse", "adam").fused

    class Twice(fastnn.layers.Layer):
        def forward(self, X, training=False):
            return X * 2

    custom = fastnn.Sequential([fastnn.Dense(3, 4), Twice(), fastnn.Dense(4, 2)])
    assert not fastnn.Trainer(custom, "mse", "adam").fused
    with pytest.raises(ValueError, match="fused=True needs"):
        fastnn.Trainer(custom, "mse", "adam", fused=True)

    class Custom(optim.SGD):
        def _update(self, params, grads):
            super()._update(params, grads)

    assert not fastnn.Trainer(fastnn.Sequential([fastnn.Dense(3, 2)]), "mse", Custom()).fused


def test_fused_fit_reports_divergence_with_epoch_and_batch(rng):
    X, y = rng.normal(size=(64, 4)) * 1e3, rng.normal(size=64) * 1e3
    trainer = fastnn.Trainer(fastnn.Sequential([fastnn.Dense(4, 16, "relu"), fastnn.Dense(16, 1)],
                                               seed=0), "mse", optim.SGD(lr=10.0))
    assert trainer.fused
    with pytest.raises(FloatingPointError, match=r"epoch \d+, batch \d+"):
        trainer.fit(X, y, epochs=50, batch_size=8, verbose=False)


# Layer sizes for the 2-thread epoch tests: wide enough for the epoch to use
# both threads (it stays on one when a batch is too small to pay for the
# barriers).  At batch 24 the two wide layers sum partial products over the
# threads' input columns and the 7-wide one splits its output columns; at
# batch 48 the 48- and 40-wide inputs split by output around a 1024-wide
# layer summed in parts (csrc/train.c split_outputs).
SPLIT_SIZES = {24: (700, 400, 7, 3), 48: (48, 1024, 40, 3)}


@pytest.mark.parametrize("n,batch", [(53, 24), (49, 24), (64, 16), (53, 48)])
@pytest.mark.parametrize("opt,hyper", [OPTS[1], OPTS[0], OPTS[5]], ids=["adam", "sgd", "nadam"])
def test_c_epoch_split_over_threads_matches_reference(n, batch, opt, hyper, rng):
    """The c backend splits each batch over its threads (here 2; the last
    batches of 5 and 1 rows leave a thread with few or none: then it only
    computes its part of dW and updates it)."""
    from fastnn.kernels import c

    sizes = SPLIT_SIZES.get(batch, SPLIT_SIZES[24])
    X = rng.normal(size=(n, sizes[0])).astype(np.float32)
    t = rng.integers(0, 3, n)
    kw = dict(l2=0.05, loss_scale=0.5, grad_scale=2.0, sizes=sizes)
    want = _run(REF, "softmax_xent", opt, hyper, X, t, batch, **kw)
    before = c.info()["threads"]
    try:
        runs = []
        for threads in (1, 2):
            c.set_num_threads(threads)
            runs.append(_run(kernels.get("c"), "softmax_xent", opt, hyper, X, t, batch, **kw))
    finally:
        c.set_num_threads(before)
    one, got = runs
    # Two threads sum each forward product in two parts: float32 rounding
    # apart from one thread, like the reference.  The losses are the tight
    # check: with 283k parameters a few Adam/NAdam updates m / sqrt(v) of
    # gradients at rounding level differ by up to ~lr / 50 (another
    # summation order), and SGD with momentum carries a 700-wide layer's
    # rounding to ~5e-5.
    atol = 1e-4 if opt == "sgd" else 1e-3
    for other in (one, want):
        np.testing.assert_allclose(got[0], other[0], rtol=1e-4, atol=atol)
        np.testing.assert_allclose(got[1], other[1], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(got[2], want[2])
    assert got[3] == want[3] and got[4] == pytest.approx(want[4], rel=1e-12)


@pytest.mark.parametrize("threads", [1, 2])
def test_epoch_updates_parameters_no_layer_owns(cpu_backend, threads, rng):
    """Alignment gaps and parameters outside the stack get the optimizer's
    update with whatever grads holds there, as in the reference (which
    updates the whole flat buffer); the kernels never write those grads."""
    from fastnn.kernels import c

    layers = [(40, 30, 5, 1210, "relu", 0.0), (30, 4, 1250, -1, None, 0.0)]
    size = 1250 + 120 + 7  # a gap of 5 in front, 5 after W0, 10 after b0, 7 at the end
    p0 = rng.normal(size=size).astype(np.float32)
    g0 = rng.normal(size=size).astype(np.float32)
    X = rng.normal(size=(50, 40)).astype(np.float32)
    t = rng.integers(0, 4, 50)
    results = []
    for k in (REF, cpu_backend):
        p, g = p0.copy(), g0.copy()
        states = (np.zeros_like(p), np.zeros_like(p))
        ws = k.empty(k.dense_stack_workspace(layers, 10))
        bl, bc = np.zeros(5), np.zeros(5, np.int64)
        before = c.info()["threads"]
        try:
            c.set_num_threads(threads)
            _epoch(k, p, g, states, ws, X, t, bl, bc, layers=layers,
                                loss="softmax_xent", batch_size=10, optimizer="adam",
                                hyper=dict(lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8), step=0)
        finally:
            c.set_num_threads(before)
        results.append((p, g))
    (p_ref, g_ref), (p_got, g_got) = results
    owned = np.zeros(size, bool)
    owned[5:1205] = owned[1210:1240] = owned[1250:1370] = True
    np.testing.assert_array_equal(g_got[~owned], g0[~owned])
    assert np.all(p_got[~owned] != p0[~owned])  # Adam moves them against g0
    np.testing.assert_allclose(p_got, p_ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(g_got, g_ref, rtol=1e-4, atol=1e-6)


def test_epoch_refuses_overlapping_layers(cpu_backend, rng):
    layers = [(4, 3, 0, 12, "relu", 0.0), (3, 2, 14, -1, None, 0.0)]  # b0 [12, 15) meets W1
    with pytest.raises(ValueError, match=r"layers\[0\] bias and layers\[1\] weights overlap"):
        _epoch(cpu_backend, np.zeros(20, np.float32), np.zeros(20, np.float32), (None,),
            np.empty(1000, np.float32), rng.normal(size=(4, 4)), np.zeros(4, np.int64),
            np.zeros(2), np.zeros(2, np.int64), layers=layers, loss="softmax_xent",
            batch_size=2, optimizer="sgd", hyper=dict(lr=0.1), step=0)


@pytest.mark.parametrize("batch", sorted(SPLIT_SIZES))
def test_c_epoch_on_two_threads_is_deterministic(batch, rng):
    """The same call gives the same bits every time: a race between the
    threads (one writing a column another owns, or reading a row of W
    before its owner has updated it) shows up as run-to-run differences.
    A last batch of one row leaves the second thread no rows and gives the
    small layers' columns all to the first."""
    from fastnn.kernels import c

    sizes = SPLIT_SIZES[batch]
    n = 2 * batch + 1
    X = rng.normal(size=(n, sizes[0])).astype(np.float32)
    t = rng.integers(0, 3, n)
    kw = dict(l2=0.05, grad_scale=2.0, sizes=sizes, epochs=1)
    hyper = dict(lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8)
    before = c.info()["threads"]
    try:
        c.set_num_threads(2)
        runs = [_run(kernels.get("c"), "softmax_xent", "adam", hyper, X, t, batch, **kw) for _ in range(80)]
    finally:
        c.set_num_threads(before)
    for got in runs[1:]:
        np.testing.assert_array_equal(got[0], runs[0][0])
        np.testing.assert_array_equal(got[1], runs[0][1])


def _order_case(k, loss, rng, sizes, threads=1, n=60, keep=50, batch=16, epochs=2):
    """(epochs over X with order, epochs over the copy X[order])."""
    from fastnn.kernels import c

    X = rng.normal(size=(n, sizes[0])).astype(np.float32)
    t = (rng.integers(0, 3, n) if loss == "softmax_xent"
         else rng.uniform(0, 1, (n, 3)).astype(np.float32))
    # shuffled, with repeats and rows left out
    order = np.concatenate([rng.permutation(n)[:keep], [7, 7, 0]])
    hyper = dict(lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8)
    kw = dict(sizes=sizes, l2=0.05)
    before = c.info()["threads"]
    try:
        c.set_num_threads(threads)
        got = _run(k, loss, "adam", hyper, X, t, batch, order=order, epochs=epochs, **kw)
        want = _run(k, loss, "adam", hyper, X[order], t[order], batch, epochs=epochs, **kw)
    finally:
        c.set_num_threads(before)
    assert got[3] == want[3] == epochs * -(-(keep + 3) // batch)
    return got, want


@pytest.mark.parametrize("loss", ["softmax_xent", "mse"])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("batch", [16, 48])
def test_epoch_in_a_given_order_equals_the_gathered_copy(cpu_backend, loss, threads, batch, rng):
    """order picks the epoch's rows without a shuffled copy of X: the same
    trajectory, bit for bit, as the epoch over X[order] (layers wide enough
    for the c backend to use both threads; at batch 48 the first layer
    splits by output, so every thread reads rows the others gathered)."""
    sizes = SPLIT_SIZES.get(batch, SPLIT_SIZES[24])
    got, want = _order_case(cpu_backend, loss, rng, sizes, threads, batch=batch)
    for a, b in zip(got[:3], want[:3]):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", ["reference", "cuda"])
def test_epoch_order_on_the_reference_and_cuda(name, rng):
    """The reference (the spec) and cuda gather the order's rows on the host."""
    if name == "cuda" and not kernels.available("cuda"):
        pytest.skip("no cuda (simulator) here")
    k = kernels.get(name)
    got, want = _order_case(k, "mse", rng, (6, 9, 7, 3), n=10, keep=1, batch=4,
                            epochs=1)  # the simulator is slow
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got[1], want[1], rtol=1e-6)


def test_epoch_order_bad_arguments(cpu_backend, rng):
    model = fastnn.Sequential([fastnn.Dense(4, 3)], seed=0, backend="reference")
    layers = _stack(model)
    p, g = model.params.copy(), np.zeros(model.size, np.float32)
    X, t = rng.normal(size=(10, 4)), rng.integers(0, 3, 10)
    ws = np.empty(cpu_backend.dense_stack_workspace(layers, 2), np.float32)
    ok = dict(layers=layers, loss="softmax_xent", batch_size=2, optimizer="sgd",
              hyper=dict(lr=0.1), step=0)
    bl, bc = np.zeros(5), np.zeros(5, np.int64)
    for order, match in [(np.array([0, 10]), r"order: row indices must lie in \[0, 10\)"),
                         (np.array([-1, 2]), r"order: row indices must lie in \[0, 10\)"),
                         (np.zeros((2, 2), np.int64), "1-D array of row indices"),
                         (np.array([0.0, 1.0]), "1-D array of row indices"),
                         (np.zeros(0, np.int64), "1-D array of row indices")]:
        with pytest.raises(ValueError, match=match):
            _epoch(cpu_backend, p, g, (None,), ws, X, t, bl[:1], bc[:1], order=order,
                                          **ok)
    with pytest.raises(ValueError, match=r"batch_losses: expected shape \(2,\)"):
        _epoch(cpu_backend, p, g, (None,), ws, X, t, bl, bc, order=np.arange(3), **ok)
