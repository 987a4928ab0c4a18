"""Progress and logging: Keras's verbose semantics on Trainer.fit and
fit_many, the bar moved from inside the compiled epoch (through the epoch
hook) with the running loss the batch path computes, on_batch_end
callbacks (which leave the compiled path), scikit-learn's verbose lines."""

import inspect

import numpy as np
import pytest

from fastnn import Dense, Dropout, Sequential, Trainer, fit_many, optim, progress

from .conftest import CPU_BACKENDS

N, BS = 1000, 10  # 100 batches: a bar update every 2


def data(n=N, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 6)).astype(np.float32)
    return X, (X[:, 0] + X[:, 1] > 0).astype(int) + (X[:, 2] > 1)


def trainer(backend="c", fused=None, seed=3, dropout=False):
    layers = [Dense(6, 16, activation="relu")] + ([Dropout(0.2)] if dropout else []) + [
        Dense(16, 3)]
    return Trainer(Sequential(layers, seed=seed, backend=backend), "softmax_cross_entropy",
                   optim.Adam(lr=1e-2), fused=fused)


class Recording:
    """Replaces EpochBar.update: records (batches, running loss, inside a
    model_epoch call)."""

    def __init__(self, monkeypatch, stop_at=None):
        self.calls = []
        original = progress.EpochBar.update
        rec = self

        def update(bar, batches, loss_sum, rows):
            inside = any(f.function == "model_epoch" for f in inspect.stack())
            rec.calls.append((bar.bar.desc, batches, loss_sum / rows, inside))
            if stop_at is not None and len(rec.calls) == stop_at:
                raise KeyboardInterrupt
            original(bar, batches, loss_sum, rows)

        monkeypatch.setattr(progress.EpochBar, "update", update)


class BatchLog:
    def __init__(self, stop_at=None):
        self.losses, self.stop_at = [], stop_at

    def on_batch_end(self, trainer, epoch, batch, logs):
        self.losses.append((epoch, batch, logs["loss"], logs["size"]))
        if self.stop_at == (epoch, batch):
            raise KeyboardInterrupt


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_bar_moves_inside_the_compiled_epoch_with_the_running_loss(backend, monkeypatch,
                                                                  capsys):
    X, y = data()
    rec = Recording(monkeypatch)
    tr = trainer(backend)
    hist = tr.fit(X, y, epochs=2, batch_size=BS, seed=1, verbose=1)
    out = capsys.readouterr()
    assert out.out == ""  # the bar is on stderr, and holds the epoch's logs at its end
    assert "epoch 2/2" in out.err and f"loss={hist.loss[-1]:.4g}" in out.err
    # ~2% of the batches: 50 updates an epoch, every one from inside model_epoch
    assert len(rec.calls) == 100 and all(inside for *_, inside in rec.calls)
    assert [b for _, b, _, _ in rec.calls[:50]] == list(range(2, 101, 2))
    # the running loss is the batch path's running mean of the batch losses
    log = BatchLog()
    trainer(backend, fused=False).fit(X, y, epochs=2, batch_size=BS, seed=1, verbose=0,
                                      callbacks=[log])
    losses = np.array([v for _, _, v, _ in log.losses]).reshape(2, -1)
    for desc, b, running, _ in rec.calls:
        epoch = int(desc.split()[1].split("/")[0]) - 1
        np.testing.assert_allclose(running, losses[epoch, :b].mean(), rtol=2e-5)
    np.testing.assert_allclose([c[2] for c in rec.calls[49::50]], hist.loss, rtol=1e-6)


def test_bar_on_the_batch_path_too(monkeypatch):
    X, y = data()
    rec = Recording(monkeypatch)
    hist = trainer(fused=False).fit(X, y, epochs=1, batch_size=BS, seed=1, verbose=1)
    assert len(rec.calls) == 50 and not any(inside for *_, inside in rec.calls)
    np.testing.assert_allclose(rec.calls[-1][2], hist.loss[0], rtol=1e-6)


def test_verbose_2_prints_a_line_per_epoch_and_0_nothing(capsys):
    X, y = data(200)
    hist = trainer().fit(X, y, epochs=3, batch_size=BS, verbose=2)
    out = capsys.readouterr()
    lines = out.out.splitlines()
    assert [ln.split()[1] for ln in lines] == ["1/3", "2/3", "3/3"] and out.err == ""
    assert f"loss={hist.loss[1]:.4g}" in lines[1]
    trainer().fit(X, y, epochs=2, batch_size=BS, verbose=0)
    assert capsys.readouterr() == ("", "")
    # "auto" (and True) off a terminal, as under pytest: lines
    trainer().fit(X, y, epochs=1, batch_size=BS)
    assert capsys.readouterr().out.startswith("epoch 1/1 loss=")
    for bad in (3, -1, "yes", 1.0):
        with pytest.raises(ValueError, match="verbose"):
            trainer().fit(X, y, verbose=bad)


def test_check_verbose():
    assert [progress.check_verbose(v) for v in (0, 1, 2, False, None)] == [0, 1, 2, 0, 0]
    assert progress.check_verbose("auto") == progress.check_verbose(True) == 2  # no tty here


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_on_batch_end_leaves_the_compiled_path(backend, monkeypatch):
    X, y = data(300)
    from fastnn import trainer as trainer_mod

    compiled = []
    monkeypatch.setattr(trainer_mod._CompiledEpoch, "__call__",
                        lambda *a, **k: compiled.append(1) or pytest.fail("compiled epoch"))
    log = BatchLog()
    a = trainer(backend, dropout=True)
    assert a.fused
    a.fit(X, y, epochs=2, batch_size=BS, seed=2, verbose=0, callbacks=[log])
    assert not compiled
    assert [(e, b) for e, b, _, _ in log.losses] == [(e, b) for e in range(2) for b in range(30)]
    assert all(size == BS for *_, size in log.losses)
    b = trainer(backend, fused=False, dropout=True)
    b.fit(X, y, epochs=2, batch_size=BS, seed=2, verbose=0)
    np.testing.assert_array_equal(a.model.get_params(), b.model.get_params())


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_ctrl_c_in_the_compiled_epoch_keeps_the_state_consistent(backend, monkeypatch):
    """KeyboardInterrupt from the bar's hook (where Ctrl-C lands): the
    counters are the batches done, as on the batch path."""
    X, y = data(300)
    Recording(monkeypatch, stop_at=7)  # 30 batches: an update each, the 7th after batch 6
    a = trainer(backend, dropout=True)
    with pytest.raises(KeyboardInterrupt):
        a.fit(X, y, epochs=1, batch_size=BS, seed=2, verbose=1)
    b = trainer(backend, fused=False, dropout=True)
    with pytest.raises(KeyboardInterrupt):
        b.fit(X, y, epochs=1, batch_size=BS, seed=2, verbose=0, callbacks=[BatchLog((0, 6))])
    assert a.optimizer.step_count == b.optimizer.step_count == 7
    drop_a, drop_b = a.model.layers[1], b.model.layers[1]
    assert drop_a.calls == drop_b.calls == 7
    np.testing.assert_allclose(a.model.get_params(), b.model.get_params(), rtol=1e-5, atol=1e-6)


def test_fit_many_verbose(monkeypatch, capsys):
    X, y = data(400)
    trs = [trainer(seed=s) for s in range(3)]
    fit_many(trs, X, y, epochs=2, batch_size=BS, verbose=1)
    out = capsys.readouterr()
    assert out.out == "" and "epoch 2/2" in out.err and "3 trainers" in out.err
    assert "120/120" in out.err  # three models' 40 batches each, moved by their hooks
    fit_many([trainer(seed=s) for s in range(2)], X, y, epochs=2, batch_size=BS, verbose=2)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[0].startswith("epoch 1/2: 2 trainers, loss min")
    fit_many([trainer(seed=0)], X, y, epochs=1, batch_size=BS, verbose=0)
    assert capsys.readouterr() == ("", "")


def test_sklearn_verbose_prints_scikit_learns_lines(capsys):
    sk = pytest.importorskip("sklearn.neural_network")
    from fastnn.sklearn import MLPClassifier

    X, y = data(200)
    kw = dict(hidden_layer_sizes=(8,), max_iter=3, random_state=0, verbose=True)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        MLPClassifier(**kw).fit(X, y)
        ours = capsys.readouterr().out.splitlines()
        sk.MLPClassifier(**kw).fit(X, y)
        theirs = capsys.readouterr().out.splitlines()
    assert len(ours) == len(theirs) == 3
    for a, b in zip(ours, theirs):
        assert a.split("=")[0] == b.split("=")[0]  # "Iteration k, loss "
        np.testing.assert_allclose(float(a.split("=")[1]), float(b.split("=")[1]), rtol=1e-3)
