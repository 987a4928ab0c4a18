"""The compiled epoch of any model (fastnn.plan + model_epoch).

Every layer kind, loss, optimizer, l2 and clipping: one compiled epoch call
must follow the batch-by-batch path's trajectory (the same kernels, the
same dropout masks, the same BatchNorm running statistics), on every
backend; dropout masks are Philox4x32-10's (Random123's known answers).
"""

import numpy as np
import pytest

from fastnn import (AvgPool1D, AvgPool2D, BatchNorm, Conv1D, Conv2D, Dense, Dropout, Flatten,
                    GlobalAvgPool, LeakyReLU, MaxPool1D, MaxPool2D, ReLU, Residual, Sequential,
                    Sigmoid, Softmax, Tanh, Trainer, kernels, optim)
from fastnn import plan as plan_mod
from fastnn.kernels import reference, spec
from fastnn.layers import Layer

from .conftest import require

# name -> (layers factory, input shape, loss, classes/outputs)
MODELS = {
    "mlp_bn_dropout": (lambda: [Dense(12, 16), BatchNorm(16), ReLU(), Dropout(0.25),
                                Dense(16, 3)], (12,), "softmax_cross_entropy", 3),
    "cnn": (lambda: [Conv2D(1, 4, 3, padding=1, activation="relu"), MaxPool2D(2),
                     Conv2D(4, 6, 3, stride=2, padding=1), ReLU(), AvgPool2D(2), Flatten(),
                     Dense(6, 3)], (8, 8, 1), "softmax_cross_entropy", 3),
    "cnn_bn_gap": (lambda: [Conv2D(2, 4, 3), BatchNorm(4), ReLU(), Dropout(0.2),
                            GlobalAvgPool(), Dense(4, 3)], (7, 7, 2), "softmax_cross_entropy", 3),
    "conv1d": (lambda: [Conv1D(1, 4, 5, padding=2, activation="relu"), MaxPool1D(2),
                        Conv1D(4, 4, 3), Tanh(), AvgPool1D(2), Flatten(), Dense(12, 3)],
               (16, 1), "softmax_cross_entropy", 3),
    "residual": (lambda: [Dense(10, 8, activation="relu"),
                          Residual(Dense(8, 8, activation="relu"), Dense(8, 8)),
                          Residual(Dense(8, 6)), ReLU(), Dense(6, 3)],
                 (10,), "softmax_cross_entropy", 3),
    "residual_conv": (lambda: [Conv2D(1, 4, 3, padding=1),
                               Residual(Conv2D(4, 4, 3, padding=1, activation="relu"),
                                        Conv2D(4, 8, 3, stride=2, padding=1)),
                               GlobalAvgPool(), Dense(8, 3)], (6, 6, 1),
                      "softmax_cross_entropy", 3),
    "residual_first": (lambda: [Residual(Dense(10, 10, activation="relu")), Dense(10, 3)],
                       (10,), "softmax_cross_entropy", 3),
    "bn_first": (lambda: [BatchNorm(10), Dense(10, 8), Sigmoid(), Tanh(), Dense(8, 3)],
                 (10,), "softmax_cross_entropy", 3),
    "dropout_first": (lambda: [Dropout(0.5), Dense(10, 8), LeakyReLU(0.2), Dense(8, 3)],
                      (10,), "softmax_cross_entropy", 3),
    "softmax_mse": (lambda: [Dense(10, 4, activation="tanh"), Softmax()], (10,), "mse", 4),
    "bce": (lambda: [Dense(10, 6, activation="relu"), Dropout(0.1), Dense(6, 1)], (10,),
            "binary_cross_entropy", 1),
    "mae": (lambda: [Dense(10, 6, activation="relu"), BatchNorm(6), Dense(6, 2)], (10,),
            "mae", 2),
}


def data(input_shape, loss, outputs, n=150, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n,) + input_shape).astype(np.float32)
    if loss == "softmax_cross_entropy":
        y = rng.integers(0, outputs, n)
    elif loss == "binary_cross_entropy":
        y = (rng.random((n, 1)) > 0.5).astype(np.float32)
    else:
        y = rng.normal(size=(n, outputs)).astype(np.float32)
    return X, y


def train(name, backend, fused, optimizer="adam", epochs=2, batch_size=32, **trainer_kw):
    layers, shape, loss, outputs = MODELS[name]
    model = Sequential(layers(), seed=7, backend=backend, input_shape=shape)
    opt = optim.get(optimizer) if isinstance(optimizer, str) else optimizer
    trainer = Trainer(model, loss, opt, fused=fused, **trainer_kw)
    X, y = data(shape, loss, outputs)
    history = trainer.fit(X, y, epochs=epochs, batch_size=batch_size, seed=3, verbose=False)
    return model, history


def assert_same_training(a, b, rtol=1e-5, atol=1e-6):
    (ma, ha), (mb, hb) = a, b
    np.testing.assert_allclose(ma.get_params(), mb.get_params(), rtol=rtol, atol=atol)
    np.testing.assert_allclose(ma.get_buffers(), mb.get_buffers(), rtol=rtol, atol=atol)
    np.testing.assert_allclose(ha.loss, hb.loss, rtol=rtol, atol=atol)


def test_philox_known_answers():
    """Random123's kat_vectors for Philox4x32-10."""
    cases = [((0, 0, 0, 0), (0, 0), (0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8)),
             ((0xffffffff,) * 4, (0xffffffff,) * 2,
              (0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd)),
             ((0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344), (0xa4093822, 0x299f31d0),
              (0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1))]
    for ctr, key, want in cases:
        assert tuple(int(w) for w in reference.philox4x32(ctr, key)) == want


def test_dropout_mask_is_the_documented_philox_draw():
    """Element e: word e % 4 of block e // 4, dropped below ceil(p 2^24)."""
    seed, counter, p = 2 ** 40 + 5, 2 ** 33 + 7, 0.3
    mask = reference.dropout_mask(11, p, seed, counter)
    scale = np.float32(1 / (1 - p))
    for e in range(11):
        words = reference.philox4x32(
            (e // 4, 0, counter & 0xFFFFFFFF, counter >> 32), (seed & 0xFFFFFFFF, seed >> 32))
        keep = int(words[e % 4]) >> 8 >= int(np.ceil(p * 2 ** 24))
        assert mask[e] == (scale if keep else 0.0)


@pytest.mark.parametrize("p", [0.0, 0.1, 0.5, 0.9])
def test_dropout_mask_rate(p):
    mask = reference.dropout_mask(200_000, p, seed=123, counter=4)
    dropped = np.mean(mask == 0)
    assert abs(dropped - p) < 5 * np.sqrt(p * (1 - p) / mask.size) + 1e-12
    assert set(np.unique(mask)) <= {0.0, np.float32(1 / (1 - p))}


def test_dropout_masks_differ_by_call_and_seed():
    a = reference.dropout_mask(1000, 0.5, 1, 0)
    assert not np.array_equal(a, reference.dropout_mask(1000, 0.5, 1, 1))
    assert not np.array_equal(a, reference.dropout_mask(1000, 0.5, 2, 0))
    np.testing.assert_array_equal(a, reference.dropout_mask(1000, 0.5, 1, 0))


@pytest.mark.parametrize("name", ["c", "numba", "cuda"])
def test_dropout_kernels_match_the_reference_bits(name):
    k = require(name)
    rng = np.random.default_rng(0)
    for size, p, seed, counter in [(1, 0.5, 0, 0), (5, 0.1, 1, 3), (1003, 0.999, 2 ** 63 - 1, 9),
                                   (4096, 0.5, 2 ** 40 + 5, 2 ** 35)]:
        X = rng.normal(size=size).astype(np.float32)
        X[0] = np.nan
        want = X * reference.dropout_mask(size, p, seed, counter)
        Y = k.to_numpy(k.dropout_forward(k.empty(size), X, p=p, seed=seed, counter=counter))
        np.testing.assert_array_equal(Y, want)
        dX = k.to_numpy(k.dropout_backward(k.empty(size), X, p=p, seed=seed, counter=counter))
        np.testing.assert_array_equal(dX, want)


def test_dropout_front_refuses_bad_arguments():
    k = kernels.get("reference")
    X = np.ones(4, np.float32)
    for kw, match in [({"p": 1.0}, "p"), ({"p": -0.1}, "p"), ({"seed": -1}, "seed"),
                      ({"counter": 2 ** 63}, "counter"), ({"seed": 1.5}, "seed")]:
        args = {"p": 0.5, "seed": 0, "counter": 0, **kw}
        with pytest.raises(ValueError, match=match):
            k.dropout_forward(np.empty(4, np.float32), X, **args)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_compiles(name):
    layers, shape, _, _ = MODELS[name]
    model = Sequential(layers(), seed=1, backend="reference", input_shape=shape)
    plan = plan_mod.compile_model(model, 8)
    assert plan is not None
    for rec in plan.records:
        for buf, off, size in spec.record_regions(rec, 8):
            assert 0 <= off and off + size <= {"ws": plan.workspace_size,
                                               "iws": plan.iworkspace_size,
                                               "params": model.size,
                                               "buffers": model.buffers.shape[0]}[buf]


def test_activation_layers_fold_into_the_dense_record():
    model = Sequential([Dense(10, 8), ReLU(), Dense(8, 3), Tanh(), Sigmoid()], seed=1,
                       backend="reference")
    plan = plan_mod.compile_model(model, 4)
    ops = [spec.Op(int(r[spec.F["op"]])) for r in plan.records]
    assert ops == [spec.Op.DENSE, spec.Op.DENSE, spec.Op.ACTIVATION]
    acts = [int(r[spec.F["act"]]) for r in plan.records]
    assert acts == [spec.Activation.RELU, spec.Activation.TANH, spec.Activation.SIGMOID]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_compiled_epoch_follows_the_batch_path_reference(name):
    assert_same_training(train(name, "reference", False), train(name, "reference", True))


@pytest.mark.parametrize("backend", ["c", "numba"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_compiled_epoch_follows_the_batch_path(name, backend):
    require(backend)
    assert_same_training(train(name, backend, False), train(name, backend, True),
                         rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("backend", ["c", "numba"])
@pytest.mark.parametrize("name", ["cnn", "residual_conv", "mlp_bn_dropout", "conv1d"])
def test_compiled_epoch_matches_the_reference(name, backend):
    """Across backends with SGD: Adam's normalised steps make the biases
    before a BatchNorm (whose gradients are rounding noise) diverge."""
    require(backend)
    sgd = lambda: optim.SGD(lr=0.05, momentum=0.9)  # noqa: E731
    assert_same_training(train(name, "reference", True, sgd()), train(name, backend, True, sgd()),
                         rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("optimizer", sorted(spec.OPTIMIZERS))
@pytest.mark.parametrize("backend", ["reference", "c", "numba"])
def test_every_optimizer_in_the_compiled_epoch(optimizer, backend):
    require(backend) if backend != "reference" else None
    assert_same_training(train("mlp_bn_dropout", backend, False, optimizer),
                         train("mlp_bn_dropout", backend, True, optimizer), rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("backend", ["reference", "c", "numba"])
@pytest.mark.parametrize("kw", [{"l2": 0.01}, {"clip_value": 0.01}, {"clip_norm": 0.05},
                                {"clip_value": 0.02, "clip_norm": 0.1, "l2": 0.1}])
def test_l2_and_clipping_in_the_compiled_epoch(kw, backend):
    require(backend) if backend != "reference" else None
    a = train("cnn_bn_gap", backend, False, **kw)
    b = train("cnn_bn_gap", backend, True, **kw)
    assert_same_training(a, b, rtol=2e-5, atol=2e-6)
    plain = train("cnn_bn_gap", backend, True)
    assert not np.allclose(plain[0].get_params(), b[0].get_params())  # the option acted


def test_clipped_dense_stack_takes_the_plan():
    model = Sequential([Dense(10, 8, activation="relu"), Dense(8, 3)], seed=1, backend="c")
    trainer = Trainer(model, "softmax_cross_entropy", "adam", clip_norm=1.0)
    assert trainer.fused and trainer._stack is None


@pytest.mark.slow  # ~50 s under the CUDA simulator
def test_cuda_compiled_epoch_follows_the_batch_path():
    require("cuda")
    a = train("mlp_bn_dropout", "cuda", False, epochs=1, batch_size=50)
    b = train("mlp_bn_dropout", "cuda", True, epochs=1, batch_size=50)
    assert_same_training(a, b, rtol=2e-5, atol=2e-6)


def test_dropout_masks_are_the_same_on_every_backend():
    """Masks are keyed by (seed, call): the same model trained on two
    backends drops the same units, so the trajectories agree closely."""
    a = train("dropout_first", "reference", True, optim.SGD(lr=0.05))
    b = train("dropout_first", "c", True, optim.SGD(lr=0.05))
    assert_same_training(a, b, rtol=1e-3, atol=1e-4)


def test_dropout_counters_advance_alike_on_both_paths():
    for fused in (False, True):
        model, _ = train("mlp_bn_dropout", "reference", fused, epochs=2)
        dropout = [layer for layer in model.walk() if isinstance(layer, Dropout)][0]
        assert dropout.calls == 2 * 5  # 150 rows / batch 32 -> 5 batches per epoch


class Doubler(Layer):
    """A custom Python layer: no emit, so no plan."""

    def forward(self, X, training=False):
        self._Y = self._buffer("Y", X.shape)
        np.multiply(X, 2.0, out=self._Y)
        return self._Y

    def backward(self, dY, need_dx=True):
        return dY * 2.0 if need_dx else None


def test_custom_layer_keeps_the_batch_path():
    model = Sequential([Dense(10, 8), Doubler(), Dense(8, 3)], seed=1, backend="reference")
    assert plan_mod.compile_model(model, 4) is None
    trainer = Trainer(model, "softmax_cross_entropy", "adam")
    assert not trainer.fused
    with pytest.raises(ValueError, match="custom Python"):
        Trainer(model, "softmax_cross_entropy", "adam", fused=True)


def test_model_epoch_front_refuses_a_record_outside_the_workspace():
    model = Sequential(MODELS["cnn"][0](), seed=1, backend="reference", input_shape=(8, 8, 1))
    plan = plan_mod.compile_model(model, 4)
    k = kernels.get("reference")
    opt = optim.Adam()
    opt.bind(model.size, k, np.float32)
    _, states, hyper = opt.kernel_spec()
    X, y = data((8, 8, 1), "softmax_cross_entropy", 3, n=8)
    ws = np.zeros(plan.workspace_size, np.float32)
    iws = np.zeros(plan.iworkspace_size, np.int32)

    def epoch(**over):
        e = plan.epoch(params=model.params, grads=model.grads, buffers=model.buffers,
                       states=states, workspace=ws, iworkspace=iws, X=X, targets=y,
                       batch_losses=np.zeros(2), batch_correct=np.zeros(2, np.int64),
                       optimizer="adam", hyper=hyper)
        for key, v in over.items():
            setattr(e, key, v)
        return e

    before = model.get_params()
    bad = plan.records.copy()
    bad[0, spec.F["y"]] = plan.workspace_size - 1
    for over, match in [({"plan": bad}, "outside"), ({"workspace": ws[:10]}, "outside"),
                        ({"output": 10 ** 9}, "output"), ({"penalized": np.array([[0, 10 ** 9]])},
                                                          "penalized"),
                        ({"clip_norm": -1.0}, "clip_norm"), ({"X": X[:, :4]}, "X")]:
        with pytest.raises(ValueError, match=match):
            k.model_epoch(epoch(**over))
    np.testing.assert_array_equal(model.get_params(), before)
    assert k.model_epoch(epoch())[0] == 2


@pytest.mark.parametrize("fused", [False, True])
def test_batchnorm_last_batch_of_one_is_refused_before_training(fused):
    model = Sequential(MODELS["mlp_bn_dropout"][0](), seed=1, backend="c")
    trainer = Trainer(model, "softmax_cross_entropy", "adam", fused=fused)
    X, y = data((12,), "softmax_cross_entropy", 3, n=33)
    before = model.get_params()
    with pytest.raises(ValueError, match="last batch of 1"):
        trainer.fit(X, y, epochs=1, batch_size=16, verbose=False)
    np.testing.assert_array_equal(model.get_params(), before)
    trainer.fit(X, y, epochs=1, batch_size=11, verbose=False)  # 3 x 11: fine


@pytest.mark.parametrize("path", ["generic", "avx2", "avx512"])
def test_c_dropout_every_simd_path(path):
    """The AVX-512 Philox (intrinsics) and the portable one give the
    reference's bits, on full and partial passes (a block counter past
    2^32 would take a 16 GiB buffer: not tested; the lanes add it in
    64 bits)."""
    c = kernels.get("c")
    best = c.info()["simd"]
    try:
        c.set_simd_path(path)
    except ValueError:
        pytest.skip(f"this CPU has no {path}")
    try:
        rng = np.random.default_rng(3)
        for size, p, seed, counter in [(64 * 5, 0.5, 9, 1), (64 * 3 + 7, 0.2, 2 ** 40 + 5, 2 ** 33),
                                       (17, 0.7, 1, 0), (100_003, 0.1, 2 ** 63 - 1, 12)]:
            X = rng.normal(size=size).astype(np.float32)
            Y = c.dropout_forward(np.empty(size, np.float32), X, p=p, seed=seed, counter=counter)
            np.testing.assert_array_equal(Y, X * reference.dropout_mask(size, p, seed, counter))
    finally:
        c.set_simd_path(best)
