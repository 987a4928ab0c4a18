"""Training state: Trainer.save / Trainer.load resume a fit bit for bit
(optimizer state and counters, schedules, the shuffling stream, dropout
counters), refuse corrupt files, write atomically; EarlyStopping restores
the best weights at the end of a fit that ran all its epochs; Sequential
infers a convolutional first layer's input shape from the first data."""

import os

import numpy as np
import pytest

from fastnn import (AvgPool2D, BatchNorm, Conv1D, Conv2D, Dense, Dropout, EarlyStopping, Flatten,
                    MaxPool1D, MaxPool2D, ReLU, Sequential, Trainer, optim, schedules)

from .conftest import CPU_BACKENDS


def data(n=240, seed=0, shape=(10,)):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n,) + shape).astype(np.float32)
    flat = X.reshape(n, -1)
    return X, (flat[:, 0] > 0).astype(int) + (flat[:, 1] > 0.5)


def make(backend, optimizer=None, fused=None):
    model = Sequential([Dense(10, 24, activation="relu"), BatchNorm(24), Dropout(0.3),
                        Dense(24, 3)], seed=None, backend=backend)  # random dropout seeds too
    return Trainer(model, "softmax_cross_entropy", optimizer or optim.Adam(lr=3e-3),
                   fused=fused)


def sched():
    return schedules.Warmup(2, after=schedules.CosineAnnealingLR(4))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("optimizer", ["adam", "nadam", "sgd"])
def test_resumed_fit_is_the_uninterrupted_one_bit_for_bit(backend, optimizer, tmp_path):
    X, y = data()
    opts = {"adam": lambda: optim.Adam(lr=3e-3), "nadam": lambda: optim.NAdam(lr=3e-3),
            "sgd": lambda: optim.SGD(lr=0.05, momentum=0.9, nesterov=True)}
    a = make(backend, opts[optimizer]())
    a.model.set_params(np.asarray(a.model.get_params()))  # (same start for both below)
    start = a.model.get_params()
    seeds = [layer.seed for layer in a.model.walk() if hasattr(layer, "reseed")]
    ha = a.fit(X, y, epochs=5, batch_size=32, seed=4, verbose=0, callbacks=[sched()])

    b = make(backend, opts[optimizer]())
    b.model.set_params(start)
    for layer, seed in zip([la for la in b.model.walk() if hasattr(la, "reseed")], seeds):
        layer.reseed(seed)
    hb = b.fit(X, y, epochs=2, batch_size=32, seed=4, verbose=0, callbacks=[sched()])
    b.save(tmp_path / "ckpt.npz")
    c = Trainer.load(tmp_path / "ckpt.npz", backend=backend)
    hc = c.fit(X, y, epochs=3, batch_size=32, verbose=0)  # seed=None: the stream goes on

    np.testing.assert_array_equal(c.model.get_params(), a.model.get_params())
    np.testing.assert_array_equal(c.model.get_buffers(), a.model.get_buffers())
    assert hb.loss + hc.loss == ha.loss and hb.lr + hc.lr == ha.lr
    assert c.optimizer.step_count == a.optimizer.step_count == 5 * 8
    for name, buf in a.optimizer.state.items():
        np.testing.assert_array_equal(c.optimizer.state[name], buf)
    # the loaded trainer's schedule is the restored one, still going
    assert isinstance(c.schedules[0], schedules.Warmup) and c.schedules[0].epoch == 5


def test_a_loaded_trainer_saves_the_same_state_again(tmp_path):
    X, y = data()
    a = make("c")
    a.fit(X, y, epochs=2, batch_size=32, seed=1, verbose=0, callbacks=[sched()])
    a.save(tmp_path / "a.npz")
    b = Trainer.load(tmp_path / "a.npz")
    b.save(tmp_path / "b.npz")
    with np.load(tmp_path / "a.npz") as fa, np.load(tmp_path / "b.npz") as fb:
        assert sorted(fa.files) == sorted(fb.files)
        for k in fa.files:
            np.testing.assert_array_equal(fa[k], fb[k])
    assert type(b.optimizer) is optim.Adam and b.optimizer.lr == a.optimizer.lr
    np.testing.assert_array_equal(b.predict(X), a.predict(X))


def test_save_is_atomic_and_load_refuses_corrupt_files(tmp_path, monkeypatch):
    X, y = data()
    tr = make("c")
    tr.fit(X, y, epochs=1, batch_size=32, seed=1, verbose=0)
    path = tmp_path / "t.npz"
    tr.save(path)
    good = path.read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", boom)
    with pytest.raises(OSError):
        tr.save(path)
    monkeypatch.undo()
    assert path.read_bytes() == good and sorted(os.listdir(tmp_path)) == ["t.npz"]

    for name, content in [("trunc.npz", good[:len(good) // 2]), ("junk.npz", b"not a zip"),
                          ("empty.npz", b"")]:
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ValueError, match="not a readable fastnn trainer"):
            Trainer.load(tmp_path / name)
    tr.model.save(tmp_path / "model.npz")  # a model file is not a trainer file
    with pytest.raises(ValueError, match="not a fastnn trainer"):
        Trainer.load(tmp_path / "model.npz")
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    for change, match in [({"state_m": arrays["state_m"][:-1]}, "optimizer state"),
                          ({"state_v": np.full_like(arrays["state_v"], np.nan)},
                           "optimizer state"),
                          ({"trainer": np.array(str(arrays["trainer"]).replace(
                              '"step_count": 8', '"step_count": -1'))}, "step_count"),
                          ({"trainer": np.array("{bad json")}, "bad JSON"),
                          ({"extra": np.zeros(2)}, "not a fastnn trainer"),
                          ({"params": arrays["params"][:-1]}, "parameter buffer")]:
        bad = dict(arrays, **change)
        np.savez(tmp_path / "bad.npz", **bad)
        with pytest.raises(ValueError, match=match):
            Trainer.load(tmp_path / "bad.npz")
    obj = np.empty(1, object)
    np.savez(tmp_path / "pickle.npz", **dict(arrays, trainer=obj))
    with pytest.raises(ValueError, match="not a readable fastnn trainer"):
        Trainer.load(tmp_path / "pickle.npz")


def test_save_refuses_what_it_cannot_write(tmp_path):
    class MyAdam(optim.Adam):
        pass

    tr = make("reference", MyAdam())
    with pytest.raises(ValueError, match="optimizer"):
        tr.save(tmp_path / "x.npz")
    assert not os.listdir(tmp_path)


@pytest.mark.parametrize("fused", [True, False])
def test_early_stopping_restores_the_best_also_at_the_last_epoch(fused):
    X, y = data()
    seen = {}

    def record(trainer, epoch, logs):
        seen[epoch] = (logs["loss"], trainer.model.get_params())

    # validated on flipped labels: the better the fit, the worse val_loss
    val = (X, (y + 1) % 3)
    tr = Trainer(Sequential([Dense(10, 3)], seed=0), "softmax_cross_entropy",
                 optim.SGD(lr=0.1), fused=fused)
    stop = EarlyStopping(monitor="val_loss", patience=100, restore_best=True)
    hist = tr.fit(X, y, epochs=6, batch_size=32, verbose=0, callbacks=[record],
                  early_stopping=stop, validation_data=val, seed=0)
    assert stop.stopped_epoch is None and len(hist.loss) == 6
    best = int(np.argmin(hist.val_loss))
    assert best != 5  # (else this test would not test anything)
    np.testing.assert_array_equal(tr.model.get_params(), seen[best][1])
    # without restore_best the last parameters stay
    tr2 = Trainer(Sequential([Dense(10, 3)], seed=0), "softmax_cross_entropy",
                  optim.SGD(lr=0.1), fused=fused)
    tr2.fit(X, y, epochs=6, batch_size=32, verbose=0, validation_data=val, seed=0,
            early_stopping=EarlyStopping(monitor="val_loss", patience=100, restore_best=False))
    np.testing.assert_array_equal(tr2.model.get_params(), seen[5][1])


@pytest.mark.parametrize("layers, shape", [
    (lambda: [Conv2D(1, 4, 3, padding=1, activation="relu"), MaxPool2D(2), Flatten(),
              Dense(4 * 4 * 4, 3)], (8, 8, 1)),
    (lambda: [Conv1D(2, 3, 3), ReLU(), MaxPool1D(2), Flatten(), Dense(3 * 5, 3)], (12, 2)),
    (lambda: [AvgPool2D(2), Conv2D(3, 2, 3), Flatten(), Dense(2 * 2 * 2, 3)], (8, 8, 3)),
])
def test_deferred_build_from_the_first_data(layers, shape):
    X, y = data(64, shape=shape)
    lazy = Sequential(layers(), seed=3)
    assert lazy.input_shape is None and not lazy.built
    with pytest.raises(RuntimeError, match="not built"):
        lazy.params
    tr = Trainer(lazy, "softmax_cross_entropy", optim.Adam(), fused=True)
    tr.fit(X, y, epochs=2, batch_size=16, seed=0, verbose=0)
    assert lazy.built and lazy.input_shape == shape
    eager = Sequential(layers(), seed=3, input_shape=shape)
    tr2 = Trainer(eager, "softmax_cross_entropy", optim.Adam(), fused=True)
    tr2.fit(X, y, epochs=2, batch_size=16, seed=0, verbose=0)
    np.testing.assert_array_equal(lazy.get_params(), eager.get_params())
    # predict builds too
    lazy2 = Sequential(layers(), seed=3)
    np.testing.assert_array_equal(lazy2.predict(X), Sequential(layers(), seed=3,
                                                               input_shape=shape).predict(X))
    with pytest.raises(ValueError, match="input"):
        Sequential(layers(), seed=3).predict(np.zeros(5, np.float32))  # no sample shape


def test_deferred_build_still_infers_dense_and_refuses_mismatches():
    assert Sequential([Dense(5, 2)]).input_shape == (5,)
    lazy = Sequential([Conv2D(3, 4, 3), Flatten(), Dense(4, 2)])
    with pytest.raises(ValueError):
        lazy.predict(np.zeros((2, 3, 3, 2), np.float32))  # 2 channels, the conv takes 3
