"""fastnn.fit_many: many trainers on the same data, each ending where its
own fit would."""

import dataclasses

import numpy as np
import pytest

import fastnn
from fastnn import BatchNorm, Dense, Dropout, ReLU, Sequential, Trainer, fit_many, optim
from fastnn.kernels import spec

from .conftest import require
from .test_threads import c_threads


def _data(n=120, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 10)).astype(np.float32), rng.integers(0, 3, n)


def _trainer(i, backend, optimizer="adam", fused=None, dropout=False):
    layers = [Dense(10, 12), BatchNorm(12), ReLU()] + ([Dropout(0.2)] if dropout else []) \
        + [Dense(12, 3)]
    opt = optim.get(optimizer)
    return Trainer(Sequential(layers, seed=10 + i, backend=backend), "softmax_cross_entropy", opt,
                   fused=fused)


@pytest.mark.parametrize("backend", ["reference", "c", "numba"])
@pytest.mark.parametrize("optimizer", sorted(spec.OPTIMIZERS))
def test_each_trainer_ends_where_its_own_fit_would(optimizer, backend):
    if backend != "reference":
        require(backend)
    X, y = _data()
    rows = [np.arange(0, 100), np.arange(20, 120)[::-1], np.arange(120)]
    together = [_trainer(i, backend, optimizer, dropout=i == 1) for i in range(3)]
    histories = fit_many(together, X, y, epochs=2, batch_size=16, seed=5, rows=rows,
                         verbose=False)
    for i, (tr, h) in enumerate(zip(together, histories)):
        alone = _trainer(i, backend, optimizer, dropout=i == 1)
        h_alone = alone.fit(X[rows[i]], y[rows[i]], epochs=2, batch_size=16, seed=5,
                            verbose=False)
        np.testing.assert_allclose(tr.model.get_params(), alone.model.get_params(),
                                   rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(tr.model.get_buffers(), alone.model.get_buffers(),
                                   rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(h.loss, h_alone.loss, rtol=1e-6)
        assert h.diverged is None


def test_batch_by_batch_trainers_too():
    X, y = _data()
    together = [_trainer(i, "reference", fused=False) for i in range(2)]
    fit_many(together, X, y, epochs=2, batch_size=32, seed=1, verbose=False)
    for i, tr in enumerate(together):
        alone = _trainer(i, "reference", fused=False)
        alone.fit(X, y, epochs=2, batch_size=32, seed=1, verbose=False)
        np.testing.assert_array_equal(tr.model.get_params(), alone.model.get_params())


def test_a_diverging_trainer_stops_alone():
    X, y = _data()
    X[:, 0] *= 1e4
    good = Trainer(Sequential([Dense(10, 8, "relu"), Dense(8, 3)], seed=1), "softmax_cross_entropy",
                   optim.SGD(lr=1e-3))
    bad = Trainer(Sequential([Dense(10, 8, "relu"), Dense(8, 3)], seed=1), "softmax_cross_entropy",
                  optim.SGD(lr=1e6))
    with pytest.raises(FloatingPointError, match=r"trainer 1: epoch \d+, batch \d+"):
        fit_many([good, bad], X, y, epochs=3, batch_size=16, seed=0, verbose=False)
    good2 = Trainer(Sequential([Dense(10, 8, "relu"), Dense(8, 3)], seed=1),
                    "softmax_cross_entropy", optim.SGD(lr=1e-3))
    bad2 = Trainer(Sequential([Dense(10, 8, "relu"), Dense(8, 3)], seed=1),
                   "softmax_cross_entropy", optim.SGD(lr=1e6))
    hs = fit_many([good2, bad2], X, y, epochs=3, batch_size=16, seed=0, verbose=False,
                  errors="ignore")
    assert hs[0].diverged is None and hs[0].epochs == 3
    epoch, batch = hs[1].diverged
    assert hs[1].epochs == epoch
    assert np.all(np.isfinite(bad2.model.get_params()))  # stopped before the bad update


@pytest.mark.parametrize("kw, match", [
    ({"trainers": []}, "empty"),
    ({"rows": [np.arange(5)]}, "rows"),
    ({"rows": [np.arange(5), np.array([], int)]}, r"rows\[1\]"),
    ({"rows": [np.arange(5), np.array([0, 999])]}, r"rows\[1\]"),
    ({"errors": "warn"}, "errors"),
    ({"epochs": -1}, "epochs"),
    ({"y": np.zeros(7, int)}, "lengths"),
])
def test_bad_input_is_refused_before_training(kw, match):
    X, y = _data()
    trainers = [_trainer(i, "reference") for i in range(2)]
    before = [tr.model.get_params() for tr in trainers]
    args = {"trainers": trainers, "X": X, "y": y, **kw}
    with pytest.raises((ValueError, TypeError), match=match):
        fit_many(args.pop("trainers"), args.pop("X"), args.pop("y"), verbose=False, **args)
    for tr, p in zip(trainers, before):
        np.testing.assert_array_equal(tr.model.get_params(), p)


def test_trainers_on_different_backends_are_refused():
    X, y = _data()
    with pytest.raises(ValueError, match="backend"):
        fit_many([_trainer(0, "reference"), _trainer(1, "c")], X, y, verbose=False)


def test_fit_many_is_exported():
    assert fastnn.fit_many is fit_many


def test_model_epochs_refuses_epochs_that_write_the_same_memory():
    """Many epochs in one call may share what they read (X, targets,
    order), never what they write."""
    X, y = _data(40)
    trainers = [_trainer(i, "c") for i in range(2)]
    built = []
    for tr in trainers:
        run = tr._fit_run(X, tr._targets(y, 40), None, 1, 8, None, True, 0, (), None, plan=True)
        built.append(run.runner.build(run.next_order()))
    k = fastnn.kernels.get("c")
    clash = dataclasses.replace(built[1], workspace=built[0].workspace)
    with pytest.raises(ValueError, match=r"epochs\[1\]\.workspace"):
        k.model_epochs([built[0], clash])
    clash = dataclasses.replace(built[1], X=built[0].workspace[:40 * 10].reshape(40, 10))
    with pytest.raises(ValueError, match=r"epochs\[0\]\.workspace"):
        k.model_epochs([built[0], clash])
    assert [r[0] for r in k.model_epochs(built)] == [5, 5]


def _stack_trainer(i, optimizer, acts=("relu", "tanh"), l2=0.0, width=24):
    layers = [Dense(10, width, activation=acts[0]), Dense(width, 40, activation=acts[1]),
              Dense(40, 3)]
    return Trainer(Sequential(layers, seed=20 + i, backend="c"), "softmax_cross_entropy",
                   optim.get(optimizer), l2=l2)


@pytest.mark.parametrize("optimizer", sorted(spec.OPTIMIZERS))
def test_dense_stacks_end_bit_for_bit_where_their_own_fit_would(optimizer):
    """Small dense stacks take csrc/many_dense.c's one-thread epoch (the
    products without packing); trainer.fit runs train.c's.  Both sum every
    product in the same order: the same bits, on 1 and 2 threads."""
    require("c")
    X, y = _data(150)
    rows = [np.arange(0, 130), np.arange(10, 150)[::-1], None]
    rows[2] = np.arange(150)
    for threads in (1, 2):
        with c_threads(threads):
            together = [_stack_trainer(i, optimizer, l2=0.01 * (i == 1),
                                       acts=("relu", "leaky_relu") if i == 2 else ("relu", "tanh"))
                        for i in range(3)]
            hs = fit_many(together, X, y, epochs=2, batch_size=16, seed=3, rows=rows,
                          verbose=False)
            for i, (tr, h) in enumerate(zip(together, hs)):
                alone = _stack_trainer(i, optimizer, l2=0.01 * (i == 1),
                                       acts=("relu", "leaky_relu") if i == 2 else ("relu", "tanh"))
                h_alone = alone.fit(X[rows[i]], y[rows[i]], epochs=2, batch_size=16, seed=3,
                                    verbose=False)
                np.testing.assert_array_equal(tr.model.get_params(), alone.model.get_params())
                np.testing.assert_array_equal(h.loss, h_alone.loss)
                for name, state in alone.optimizer.state.items():
                    if isinstance(state, np.ndarray):
                        np.testing.assert_array_equal(tr.optimizer.state[name], state)


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_chunked_dense_stacks_end_bit_for_bit_too(optimizer):
    """An epoch large enough for train.c to cut each input of >= 128
    features into fixed chunks (batch x multiply-adds >= 4.2M): the
    one-thread epoch chains the same chunks."""
    require("c")
    X, y = _data(300)

    def make(i):
        layers = [Dense(10, 300, activation="relu"), Dense(300, 150, activation="relu"),
                  Dense(150, 3)]
        return Trainer(Sequential(layers, seed=30 + i, backend="c"), "softmax_cross_entropy",
                       optim.get(optimizer), l2=0.001)

    with c_threads(2):
        together = [make(i) for i in range(2)]
        hs = fit_many(together, X, y, epochs=1, batch_size=128, seed=1, verbose=False)
        for i, (tr, h) in enumerate(zip(together, hs)):
            alone = make(i)
            h_alone = alone.fit(X, y, epochs=1, batch_size=128, seed=1, verbose=False)
            np.testing.assert_array_equal(tr.model.get_params(), alone.model.get_params())
            np.testing.assert_array_equal(h.loss, h_alone.loss)
