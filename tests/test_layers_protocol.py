"""The layer protocol (children, penalized, Sequential.walk) and the L2
penalty it lets the trainer apply to every weight, nested ones included."""

import numpy as np
import pytest

import fastnn
from fastnn import losses, optim


def test_children_walk_and_penalized():
    inner, second, bn = fastnn.Dense(4, 4, "tanh"), fastnn.Dense(4, 3), fastnn.BatchNorm(3)
    block = fastnn.Residual(inner, second)
    first, last = fastnn.Dense(5, 4, "relu"), fastnn.Dense(3, 2)
    model = fastnn.Sequential([first, block, bn, fastnn.Dropout(0.2), last], seed=0)
    proj = block.projection
    assert isinstance(proj, fastnn.Dense)  # 4 -> 3 needs one
    assert block.children() == [inner, second, proj]
    assert first.children() == [] and bn.children() == []
    assert list(model.walk()) == [first, block, inner, second, proj, bn, model.layers[3], last]

    for layer in (first, inner, proj):
        (W, dW), = layer.penalized()
        assert W is layer.weight and dW is layer.weight_grad
    assert bn.penalized() == [] and block.penalized() == [] and model.layers[3].penalized() == []
    assert [W for W, _ in model.penalized()] == [layer.weight for layer in
                                                 (first, inner, second, proj, last)]


def test_conv_weight_is_penalized_not_its_bias():
    conv = fastnn.Conv2D(2, 3, 3)
    fastnn.Sequential([conv], seed=0, input_shape=(5, 5, 2))
    (W, dW), = conv.penalized()
    assert W is conv.weight and dW is conv.weight_grad


# (layers, input shape, every weight of the model listed by hand: what L2 must reach)
MODELS = {
    "dense-residual": (
        lambda: [fastnn.Dense(5, 4, "tanh"),
                 fastnn.Residual(fastnn.Dense(4, 4, "tanh"), fastnn.Dense(4, 3)),
                 fastnn.Dense(3, 2)],
        (5,),
        lambda m: [m.layers[0].weight, m.layers[1].layers[0].weight, m.layers[1].layers[1].weight,
                   m.layers[1].projection.weight, m.layers[2].weight]),
    "conv-residual": (
        lambda: [fastnn.Residual(fastnn.Conv2D(2, 3, 3, stride=2, padding=1, activation="tanh"),
                                 fastnn.BatchNorm(3)),
                 fastnn.Flatten(), fastnn.Dense(27, 2)],
        (5, 5, 2),
        lambda m: [m.layers[0].layers[0].weight, m.layers[0].projection.weight,
                   m.layers[2].weight]),
}


@pytest.mark.parametrize("name", MODELS)
def test_l2_reaches_weights_inside_blocks_batch_by_batch(name, rng):
    """One train_step with l2 > 0 is the SGD step on loss + l2 / (2 m) *
    sum(W**2) over every weight, computed here by hand from the unpenalised
    gradient."""
    make_layers, input_shape, weights = MODELS[name]
    model = fastnn.Sequential(make_layers(), seed=3, backend="reference", dtype=np.float64,
                              input_shape=input_shape)
    m, lr, l2 = 6, 0.1, 0.7
    X = rng.normal(size=(m,) + input_shape)
    y = rng.normal(size=(m, 2)).astype(np.float32)  # Loss.targets makes them float32

    p0 = model.get_params()
    model.set_params(np.zeros(model.size))
    for W in weights(model):
        W[...] = 1.0
    is_weight = model.get_params()
    model.set_params(p0)

    loss = losses.get("mse")
    loss.set_backend(fastnn.kernels.get("reference"), np.float64)
    value = loss.forward(model.forward(X, training=True), y)
    model.backward(loss.backward())
    grad = model.grads.copy()

    trainer = fastnn.Trainer(model, "mse", optim.SGD(lr=lr), fused=False, l2=l2)
    got = trainer.train_step(X, y)
    W0 = is_weight * p0
    assert got == pytest.approx(value + 0.5 * l2 / m * np.sum(W0 ** 2), rel=1e-12)
    np.testing.assert_allclose(model.get_params(), p0 - lr * (grad + l2 / m * W0),
                               rtol=1e-12, atol=1e-14)


def test_fused_epoch_applies_l2_as_batch_by_batch():
    """A plain dense stack runs fused; with l2 it follows the batch-by-batch
    trajectory (where the penalty comes from model.penalized())."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(50, 6)).astype(np.float32)
    y = rng.integers(0, 3, 50)
    params = []
    for fused in (True, False):
        model = fastnn.Sequential([fastnn.Dense(6, 8, "relu"), fastnn.Dense(8, 3)], seed=1)
        trainer = fastnn.Trainer(model, "softmax_cross_entropy",
                                 optim.SGD(lr=0.1, momentum=0.9), fused=fused, l2=0.5)
        assert trainer.fused is fused
        history = trainer.fit(X, y, epochs=3, batch_size=16, seed=2, verbose=False)
        params.append((model.get_params(), history.loss))
    (fused_p, fused_loss), (python_p, python_loss) = params
    np.testing.assert_allclose(fused_p, python_p, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(fused_loss, python_loss, rtol=1e-5)
