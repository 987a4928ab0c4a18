"""Frozen layers: no update and no optimizer-state change for their
parameters on every path (batch by batch and the compiled epoch) of every
host backend, with every optimizer, weight decay, L2 and clipping."""

import numpy as np
import pytest

import fastnn as fn
from fastnn import optim

BACKENDS = ["reference", "numba", "c"]
# weight decay where the optimizer has it: frozen weights must not decay either
OPTIMIZERS = {
    "sgd": dict(lr=0.05, momentum=0.9, weight_decay=0.01),
    "adam": dict(lr=0.01, weight_decay=0.01),
    "adamw": dict(lr=0.01, weight_decay=0.1),
    "rmsprop": dict(lr=0.01, momentum=0.5, centered=True, weight_decay=0.01),
    "adagrad": dict(lr=0.05, initial_accumulator_value=0.1, weight_decay=0.01),
    "nadam": dict(lr=0.01, weight_decay=0.01),
    "adamax": dict(lr=0.01, weight_decay=0.01),
    "radam": dict(lr=0.01, weight_decay=0.01),
}


def _data(n=96, d=6, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)).astype(np.float32)
    y = (X[:, 0] + X[:, 1] * X[:, 2] > 0).astype(np.int64) + (X[:, 3] > 1.0)
    return X, y % classes


def _mlp(backend, seed=1):
    return fn.Sequential([fn.Dense(6, 16), fn.ReLU(), fn.Dense(16, 12, "tanh"), fn.Dense(12, 3)],
                         seed=seed, backend=backend)


def _slices(model, layer_index):
    return [(off, int(np.prod(shape))) for i, _, shape, off in model._layout if i == layer_index]


# the compiled epoch with every optimizer on every backend; the batch-by-batch
# path (each backend's optimizer kernel over slices) with three of them
CASES = ([(b, True, name) for b in BACKENDS for name in sorted(OPTIMIZERS)]
         + [(b, False, name) for b in BACKENDS for name in ("sgd", "adamw", "nadam")])


@pytest.mark.parametrize("backend,fused,name", CASES)
def test_frozen_layer_bit_identical_every_optimizer(backend, fused, name):
    X, y = _data()
    model = _mlp(backend)
    model.freeze(model.layers[2])  # the middle Dense: gradients flow through it
    before = model.get_params()
    opt = optim.get(name, **OPTIMIZERS[name])
    tr = fn.Trainer(model, "softmax_cross_entropy", opt, fused=fused, l2=1e-3, clip_norm=5.0)
    states_before = {k: np.array(tr._k.to_numpy(v), copy=True) for k, v in opt.state.items()}
    tr.fit(X, y, epochs=2, batch_size=16, seed=0, verbose=False)
    after = model.get_params()
    for off, size in _slices(model, 2):
        np.testing.assert_array_equal(after[off:off + size], before[off:off + size])
        for k, v in opt.state.items():
            np.testing.assert_array_equal(tr._k.to_numpy(v)[off:off + size],
                                          states_before[k][off:off + size], err_msg=k)
    for layer in (0, 3):
        for off, size in _slices(model, layer):
            assert np.abs(after[off:off + size] - before[off:off + size]).max() > 1e-4


@pytest.mark.parametrize("backend", ["numba", "c"])
def test_frozen_compiled_matches_reference_and_batch_path(backend):
    """The compiled epoch with a frozen layer follows the batch-by-batch
    reference trajectory."""
    X, y = _data()
    results = []
    for b, fused in (("reference", False), (backend, True)):
        model = _mlp(b).freeze(0)
        tr = fn.Trainer(model, "softmax_cross_entropy", optim.Adam(lr=0.01), fused=fused,
                        l2=1e-3, clip_value=0.5)
        tr.fit(X, y, epochs=3, batch_size=16, seed=3, verbose=False)
        results.append(model.get_params())
    np.testing.assert_allclose(results[1], results[0], rtol=1e-4, atol=1e-5)


def test_frozen_equals_training_the_head_on_fixed_features():
    """Independent check: freezing the first layer is the same as training
    the rest on that layer's (fixed) outputs."""
    X, y = _data()
    full = _mlp("reference").freeze(0, 1)
    head = fn.Sequential([fn.Dense(16, 12, "tanh"), fn.Dense(12, 3)], seed=5, backend="reference")
    # the same initial head weights
    for src, dst in ((full.layers[2], head.layers[0]), (full.layers[3], head.layers[1])):
        dst.weight[...] = src.weight
        dst.bias[...] = src.bias
    features = np.maximum(X @ full.layers[0].weight + full.layers[0].bias, 0).astype(np.float32)
    for model, data in ((full, X), (head, features)):
        fn.Trainer(model, "softmax_cross_entropy", optim.SGD(lr=0.1, momentum=0.9),
                   fused=False).fit(data, y, epochs=3, batch_size=16, shuffle=False,
                                    verbose=False)
    np.testing.assert_allclose(full.layers[2].weight, head.layers[0].weight, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(full.layers[3].bias, head.layers[1].bias, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_frozen_inside_blocks_and_cnn(backend):
    """A frozen layer inside a Residual, and a frozen conv + BatchNorm."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 6, 6, 2)).astype(np.float32)
    y = (X[:, :3].sum(axis=(1, 2, 3)) > 0).astype(np.int64)
    conv = fn.Conv2D(2, 4, 3, padding=1, activation="relu")
    bn = fn.BatchNorm(4)
    inner = fn.Dense(8, 8, "relu")
    model = fn.Sequential([conv, bn, fn.MaxPool2D(2), fn.Flatten(), fn.Dense(36, 8, "relu"),
                           fn.Residual(inner, fn.Dense(8, 8)), fn.Dense(8, 2)],
                          seed=2, backend=backend, input_shape=(6, 6, 2))
    model.freeze(conv, bn, inner)
    tensors = [(conv, "weight"), (conv, "bias"), (bn, "gamma"), (bn, "beta"),
               (inner, "weight"), (inner, "bias")]
    frozen = [np.array(getattr(layer, name), copy=True) for layer, name in tensors]
    assert model.n_trainable == model.n_parameters - sum(v.size for v in frozen)
    before = model.get_params()
    fn.Trainer(model, "softmax_cross_entropy", optim.AdamW(lr=0.01)).fit(
        X, y, epochs=2, batch_size=8, verbose=False)
    for (layer, name), value in zip(tensors, frozen):
        np.testing.assert_array_equal(getattr(layer, name), value)
    assert np.abs(model.get_params() - before).max() > 1e-3


def test_unfreeze_trains_again_and_ranges():
    model = _mlp("reference")
    assert model.trainable_ranges() is None
    assert model.n_trainable == model.n_parameters
    model.freeze(2)
    ranges = model.trainable_ranges()
    frozen = set(range(*(_slices(model, 2)[0][0], _slices(model, 2)[-1][0]
                         + _slices(model, 2)[-1][1])))
    covered = {i for o, n in ranges for i in range(o, o + n)}
    assert not covered & frozen
    assert all(o in covered for o, _ in _slices(model, 0) + _slices(model, 3))
    model.unfreeze()
    assert model.trainable_ranges() is None
    model.freeze()
    with pytest.raises(ValueError, match="frozen"):
        model.trainable_ranges()


def test_freeze_bad_arguments():
    model = _mlp("reference")
    with pytest.raises(ValueError, match="layers"):
        model.freeze(fn.Dense(2, 2))
    with pytest.raises(ValueError, match="index"):
        model.freeze(7)
    with pytest.raises(TypeError, match="layers"):
        model.freeze("dense")


def test_optimizer_step_ranges_checked():
    opt = optim.Adam().bind(32, fn.kernels.get("reference"), np.float32)
    p, g = np.zeros(32, np.float32), np.ones(32, np.float32)
    with pytest.raises(ValueError, match="ranges"):
        opt.step(p, g, [(0, 20), (10, 5)])
    with pytest.raises(ValueError, match="ranges"):
        opt.step(p, g, [(30, 5)])
    opt.step(p, g, [(4, 4)])
    assert np.all(p[4:8] != 0) and np.all(p[:4] == 0) and np.all(p[8:] == 0)
    assert np.all(opt.state["exp_avg"][8:] == 0) if "exp_avg" in opt.state else True


def test_summary_keras_form():
    model = fn.Sequential([fn.Conv2D(1, 4, 3, activation="relu"), fn.BatchNorm(4),
                           fn.MaxPool2D(2), fn.Flatten(), fn.Dense(36, 16), fn.ReLU(),
                           fn.Residual(fn.Dense(16, 8, "relu")), fn.Dense(8, 10)],
                          input_shape=(8, 8, 1), backend="reference")
    model.freeze(0)
    text = model.summary()
    lines = text.splitlines()
    row = {line.split()[0]: line for line in lines if "(" in line and "Model" not in line}
    # counts by independent formulas: conv 3*3*1*4 + 4, dense 36*16 + 16, ...
    assert row["conv2d"].endswith(f"{3 * 3 * 4 + 4:>10,}") and "[frozen]" in row["conv2d"]
    assert "(None, 6, 6, 4)" in row["conv2d"]
    assert "(None, 3, 3, 4)" in row["max_pool2d"]
    assert row["dense"].endswith(f"{36 * 16 + 16:>10,}")
    assert row["residual"].endswith(f"{2 * (16 * 8 + 8):>10,}")  # the layer and its projection
    assert "(None, 10)" in row["dense_3"]
    running = 2 * 4  # BatchNorm's running mean and variance
    total = 40 + 8 + 592 + 272 + 90
    assert f"Total params: {total + running:,}" in lines
    assert f"Trainable params: {total - 40:,}" in lines
    assert f"Non-trainable params: {40 + running:,}" in lines
    printed = []
    model.summary(print_fn=printed.append)
    assert printed == [text]


def test_custom_optimizer_respects_frozen_layers():
    """An Optimizer subclass with its own _update (run batch by batch)."""

    class SignSGD(optim.SGD):
        def _update(self, params, grads):
            params -= self.lr * np.sign(grads)

    X, y = _data()
    model = _mlp("reference").freeze(2)
    before = model.get_params()
    fn.Trainer(model, "softmax_cross_entropy", SignSGD(lr=0.01)).fit(
        X, y, epochs=1, batch_size=16, verbose=False)
    after = model.get_params()
    for off, size in _slices(model, 2):
        np.testing.assert_array_equal(after[off:off + size], before[off:off + size])
    off, size = _slices(model, 0)[0]
    assert np.abs(after[off:off + size] - before[off:off + size]).max() > 1e-3


def test_frozen_layers_saved_and_loaded(tmp_path):
    model = fn.Sequential([fn.Dense(4, 6, "relu"), fn.Residual(fn.Dense(6, 6)), fn.Dense(6, 2)],
                          seed=0)
    model.freeze(0)
    model.layers[1].layers[0].trainable = False
    model.save(tmp_path / "m.npz")
    loaded = fn.load(tmp_path / "m.npz")
    assert [layer.trainable for layer in loaded.walk()] == \
        [layer.trainable for layer in model.walk()] == [False, True, False, True]
    np.testing.assert_array_equal(loaded.trainable_ranges(), model.trainable_ranges())


@pytest.mark.parametrize("backend", BACKENDS)
def test_model_epoch_refuses_bad_trainable_ranges(backend):
    import dataclasses

    X, y = _data()
    model = _mlp(backend).freeze(2)
    tr = fn.Trainer(model, "softmax_cross_entropy", optim.Adam())
    epoch_fn = tr._fused_epoch(len(X), 16)
    epoch = epoch_fn.build(X, y.astype(np.int32), None)
    before = model.get_params()
    for bad in ([[0, 10], [5, 10]], [[0, model.size + 1]], [[4, 0]], np.zeros((0, 2), int),
                [[0.5, 3]]):
        with pytest.raises(ValueError, match="trainable"):
            epoch_fn.kernel(dataclasses.replace(epoch, trainable=np.asarray(bad)))
    np.testing.assert_array_equal(model.get_params(), before)  # nothing ran


def test_c_refuses_bad_trainable_ranges_without_the_front():
    """csrc/plan.c checks the ranges itself (EINVAL, nothing written)."""
    import dataclasses

    raw = pytest.importorskip("fastnn.kernels.c")
    X, y = _data()
    model = _mlp("c").freeze(2)
    tr = fn.Trainer(model, "softmax_cross_entropy", optim.Adam())
    epoch_fn = tr._fused_epoch(len(X), 16)
    epoch = fn.kernels._checks.prepare_model_epoch(
        epoch_fn.build(X, y.astype(np.int32), None), np.float32)[0]
    before = model.get_params()
    for bad in ([[0, 10], [5, 10]], [[0, model.size + 1]], [[-1, 3]]):
        with pytest.raises(RuntimeError, match="error"):
            raw.model_epoch(dataclasses.replace(epoch, trainable=np.asarray(bad, np.int64)))
    np.testing.assert_array_equal(model.get_params(), before)
    raw.model_epoch(epoch)  # the valid ranges run
    assert np.any(model.get_params() != before)
