"""fit_many(n_jobs=k): banks of trainers in other processes (joblib) end
exactly where the same trainers end in one local call."""

import numpy as np
import pytest

import fastnn
from fastnn import _transport


def trainers(k=5, dropout=True):
    out = []
    for s in range(k):
        layers = [fastnn.Dense(8, 16, "relu")] + ([fastnn.Dropout(0.2)] if dropout else []) \
            + [fastnn.Dense(16, 3)]
        opt = fastnn.optim.Adam(lr=1e-2) if s % 2 else fastnn.optim.SGD(lr=0.05, momentum=0.9)
        out.append(fastnn.Trainer(fastnn.Sequential(layers, seed=s), "softmax_cross_entropy",
                                  opt, l2=1e-3 * s))
    return out


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 8)).astype(np.float32)
    return X, (X[:, :3] @ rng.normal(size=(3, 3))).argmax(axis=1)


def assert_same(a, b, ha, hb):
    for i, (p, q) in enumerate(zip(a, b)):
        np.testing.assert_array_equal(p.model.get_params(), q.model.get_params(), err_msg=str(i))
        assert p.optimizer.step_count == q.optimizer.step_count
        for name in p.optimizer.state:
            np.testing.assert_array_equal(p.optimizer.state[name], q.optimizer.state[name])
    for x, z in zip(ha, hb):
        assert x.loss == z.loss and x.val_loss == z.val_loss


def test_banks_in_other_processes_equal_one_local_call(data):
    X, y = data
    rows = [np.arange(0, 300, 1 + i % 3) for i in range(5)]
    val = (X[:50], y[:50])
    a, b = trainers(), trainers()
    ha = fastnn.fit_many(a, X, y, epochs=3, seed=1, rows=rows, validation_data=val,
                         verbose=False)
    hb = fastnn.fit_many(b, X, y, epochs=3, seed=1, rows=rows, validation_data=val, n_jobs=2)
    assert_same(a, b, ha, hb)
    # and the trainers go on training in this process as the local ones do
    fastnn.fit_many(a, X, y, epochs=1, seed=2, verbose=False)
    fastnn.fit_many(b, X, y, epochs=1, seed=2, verbose=False)
    assert_same(a, b, ha, hb)


def test_a_diverging_trainer_in_a_bank_is_named_by_its_own_index(data):
    X, y = data
    ts = trainers(3, dropout=False)
    ts.append(fastnn.Trainer(fastnn.Sequential([fastnn.Dense(8, 3)], seed=0),
                             "softmax_cross_entropy", fastnn.optim.SGD(lr=0.1)))
    ts[3].model.set_params(np.full(ts[3].model.size, 3e38, np.float32))  # logits overflow
    with pytest.raises(FloatingPointError, match=r"\(trainer 3: epoch 1, batch 1\)"):
        fastnn.fit_many(ts, X, y, epochs=3, seed=0, n_jobs=2)


def test_bad_n_jobs_is_refused(data):
    X, y = data
    for bad in (0, -2, 1.5, True):
        with pytest.raises(ValueError, match="n_jobs: expected"):
            fastnn.fit_many(trainers(2), X, y, n_jobs=bad)


def test_a_trainer_through_bytes_trains_on_identically(data):
    X, y = data
    a = trainers(1)[0]
    a.fit(X, y, epochs=1, seed=0, verbose=False)
    b = _transport.loads(_transport.dumps(a, [a]))
    assert np.shares_memory(b.model.layers[0].weight, b.model.params)  # views, not copies
    owner = getattr(b.model.layers[0], "_owner", None)
    assert owner is None or owner() is b.model
    a.fit(X, y, epochs=2, seed=3, verbose=False)
    b.fit(X, y, epochs=2, seed=3, verbose=False)
    np.testing.assert_array_equal(a.model.get_params(), b.model.get_params())


def test_a_hook_chain_gives_each_hook_its_own_events():
    from fastnn.distributed import GRADS, HookChain
    from fastnn.kernels.spec import HookEvent

    seen = []

    class Grads:
        events = frozenset({GRADS})

        def __call__(self, event, batch):
            seen.append(("grads", event, batch))

    class Bar:  # no events attribute: BATCH only
        last = 7

        def __call__(self, event, batch):
            seen.append(("bar", event, batch))

    chain = HookChain(Grads(), None, Bar())
    assert chain.events == {HookEvent.GRADS, HookEvent.BATCH}
    chain(HookEvent.GRADS, 0)
    chain(HookEvent.BATCH, 0)
    assert seen == [("grads", HookEvent.GRADS, 0), ("bar", HookEvent.BATCH, 0)]
    assert chain.last == 7
