"""Gradients: analytic backprop against central finite differences (float64
reference backend), then every backend's whole-model gradients against the
reference's."""

import numpy as np
import pytest

import fastnn
from fastnn import losses
from fastnn.kernels import _checks


def _loss_and_grads(model, loss, X, t):
    out = model.forward(X, training=True)
    value = loss.forward(out, t)
    model.backward(loss.backward())
    return value, model._k.to_numpy(model.grads).copy()


def _numeric_grads(model, loss, X, t, eps=1e-6):
    flat = model.get_params()
    grads = np.zeros_like(flat)
    for i, _, shape, off in model._layout:
        for j in range(int(np.prod(shape))):
            k = off + j
            for sign in (1, -1):
                p = flat.copy()
                p[k] += sign * eps
                model.set_params(p)
                grads[k] += sign * loss.forward(model.forward(X, training=True), t) / (2 * eps)
    model.set_params(flat)
    return grads


def _model64(layers, seed=0):
    return fastnn.Sequential(layers, seed=seed, backend="reference", dtype=np.float64)


def _data(rng, n, d, loss, n_out):
    X = rng.normal(size=(n, d))
    if isinstance(loss, losses.SoftmaxCrossEntropy):
        y = rng.integers(0, n_out, n)
    elif isinstance(loss, losses.BinaryCrossEntropy):
        y = rng.uniform(0, 1, (n, n_out))
    else:
        y = rng.normal(size=(n, n_out))
    return X, y


# step and sign have zero derivative almost everywhere; finite differences agree
SMOOTH = [a for a in _checks.ACTIVATIONS]


@pytest.mark.parametrize("activation", SMOOTH)
@pytest.mark.parametrize("loss_name", ["mse", "mae", "binary_cross_entropy", "softmax_cross_entropy"])
def test_dense_gradients_match_finite_differences(activation, loss_name, rng):
    loss = losses.get(loss_name)
    loss.set_backend(fastnn.kernels.get("reference"), np.float64)
    n_out = 3
    model = _model64([fastnn.Dense(4, 5, activation=activation, negative_slope=0.1),
                      fastnn.Dense(5, n_out)])
    X, y = _data(rng, 7, 4, loss, n_out)
    t = loss.targets(y, model.output_shape)
    t = t.astype(np.float64) if t.dtype.kind == "f" else t
    _, analytic = _loss_and_grads(model, loss, X, t)
    numeric = _numeric_grads(model, loss, X, t)
    np.testing.assert_allclose(analytic, numeric, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("layer", [fastnn.Sigmoid(), fastnn.Tanh(), fastnn.ReLU(),
                                   fastnn.LeakyReLU(0.2), fastnn.Softplus(), fastnn.Softmax(),
                                   fastnn.Identity()], ids=lambda layer: type(layer).__name__)
def test_activation_layer_gradients(layer, rng):
    loss = losses.MSE()
    loss.set_backend(fastnn.kernels.get("reference"), np.float64)
    model = _model64([fastnn.Dense(3, 4), layer, fastnn.Dense(4, 2)])
    X, y = rng.normal(size=(5, 3)), rng.normal(size=(5, 2))
    _, analytic = _loss_and_grads(model, loss, X, y)
    np.testing.assert_allclose(analytic, _numeric_grads(model, loss, X, y), rtol=1e-5, atol=1e-8)


def test_input_gradient(rng):
    loss = losses.SoftmaxCrossEntropy()
    loss.set_backend(fastnn.kernels.get("reference"), np.float64)
    model = _model64([fastnn.Dense(3, 6, "tanh"), fastnn.Dense(6, 4)])
    X, y = rng.normal(size=(2, 3)), np.array([1, 3])
    loss.forward(model.forward(X), y)
    dX = model.backward(loss.backward(), input_grad=True).copy()
    num = np.zeros_like(X)
    for idx in np.ndindex(X.shape):
        for s in (1, -1):
            Xp = X.copy()
            Xp[idx] += s * 1e-6
            num[idx] += s * loss.forward(model.forward(Xp), y) / 2e-6
    np.testing.assert_allclose(dX, num, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("loss_name", ["mse", "softmax_cross_entropy", "binary_cross_entropy"])
def test_every_backend_matches_reference_gradients(backend, loss_name, rng):
    layers = lambda: [fastnn.Dense(13, 17, "relu"), fastnn.Dense(17, 9, "tanh"),  # noqa: E731
                      fastnn.Sigmoid(), fastnn.Dense(9, 4)]
    ref_model = _model64(layers(), seed=3)
    model = fastnn.Sequential(layers(), seed=3, backend=backend.__name__.rsplit(".", 1)[1])
    np.testing.assert_allclose(model.get_params(), ref_model.get_params(), rtol=1e-7)
    ref_loss, loss = losses.get(loss_name), losses.get(loss_name)
    ref_loss.set_backend(fastnn.kernels.get("reference"), np.float64)
    loss.set_backend(backend, np.float32)
    X, y = _data(rng, 11, 13, loss, 4)
    t = loss.targets(y, (4,))
    want_value, want = _loss_and_grads(ref_model, ref_loss, X.astype(np.float64),
                                       t.astype(np.float64) if t.dtype.kind == "f" else t)
    value, got = _loss_and_grads(model, loss, backend.asarray(X), backend.asarray(t, t.dtype))
    assert value == pytest.approx(want_value, rel=1e-5)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


# ---- convolutional and deeper networks ----------------------------------------------------

def _check_model_gradients(layers, input_shape, n, rng, loss_name="mse", rtol=1e-5, atol=1e-8):
    loss = losses.get(loss_name)
    loss.set_backend(fastnn.kernels.get("reference"), np.float64)
    model = fastnn.Sequential(layers, seed=0, backend="reference", dtype=np.float64,
                              input_shape=input_shape)
    X = rng.normal(size=(n,) + tuple(input_shape))
    y = (rng.integers(0, model.output_shape[-1], n) if loss_name == "softmax_cross_entropy"
         else rng.normal(size=(n,) + model.output_shape))
    _, analytic = _loss_and_grads(model, loss, X, y)
    np.testing.assert_allclose(analytic, _numeric_grads(model, loss, X, y), rtol=rtol, atol=atol)
    # and the input gradient
    out = model.forward(X, training=True)
    loss.forward(out, y)
    dX = model.backward(loss.backward(), input_grad=True).copy()
    num = np.zeros_like(X)
    for idx in list(np.ndindex(X.shape))[:40]:
        for s in (1, -1):
            Xp = X.copy()
            Xp[idx] += s * 1e-6
            num[idx] += s * loss.forward(model.forward(Xp, training=True), y) / 2e-6
        np.testing.assert_allclose(dX[idx], num[idx], rtol=rtol, atol=atol)


CNN_CASES = {
    "conv-stride2-pad1": ([fastnn.Conv2D(2, 3, 3, stride=2, padding=1, activation="tanh")], (5, 6, 2)),
    "conv-kernel>stride": ([fastnn.Conv2D(1, 2, (3, 2), stride=(1, 2))], (5, 5, 1)),
    "conv-1x1": ([fastnn.Conv2D(3, 2, 1, activation="sigmoid")], (3, 3, 3)),
    "conv1d": ([fastnn.Conv1D(2, 3, 3, stride=2, padding=1, activation="softplus")], (7, 2)),
    "maxpool": ([fastnn.Conv2D(1, 2, 2), fastnn.MaxPool2D(2)], (5, 5, 1)),
    "maxpool-overlap": ([fastnn.MaxPool2D(3, stride=1)], (4, 5, 2)),
    "avgpool": ([fastnn.AvgPool2D((2, 3), stride=(1, 2))], (4, 7, 2)),
    "pool1d": ([fastnn.MaxPool1D(2), fastnn.AvgPool1D(2, stride=1)], (9, 2)),
    "global-flatten": ([fastnn.Conv2D(1, 3, 3), fastnn.GlobalAvgPool(), fastnn.Dense(3, 2)], (4, 4, 1)),
    "flatten": ([fastnn.Conv2D(1, 2, 3), fastnn.Flatten(), fastnn.Dense(8, 2)], (4, 4, 1)),
    "batchnorm-dense": ([fastnn.Dense(3, 4), fastnn.BatchNorm(4), fastnn.Dense(4, 2)], (3,)),
    "batchnorm-conv": ([fastnn.Conv2D(1, 2, 2), fastnn.BatchNorm(2)], (3, 3, 1)),
    "residual": ([fastnn.Residual(fastnn.Dense(4, 4, "tanh"), fastnn.Dense(4, 4))], (4,)),
    "residual-proj": ([fastnn.Residual(fastnn.Dense(4, 3, "relu"))], (4,)),
    "residual-conv-proj": ([fastnn.Residual(fastnn.Conv2D(2, 3, 3, stride=2, padding=1))], (5, 5, 2)),
}


@pytest.mark.parametrize("case", list(CNN_CASES))
def test_cnn_layer_gradients(case, rng):
    import copy

    layers, shape = CNN_CASES[case]
    n = 1 if case == "conv-1x1" else 3  # a batch of 1 too
    _check_model_gradients(copy.deepcopy(layers), shape, n, rng)


def test_every_backend_matches_reference_cnn_gradients(backend, rng):
    def layers():
        return [fastnn.Conv2D(2, 4, 3, padding=1, activation="relu"), fastnn.BatchNorm(4),
                fastnn.MaxPool2D(2),
                fastnn.Residual(fastnn.Conv2D(4, 6, 3, stride=2, padding=1, activation="tanh")),
                fastnn.GlobalAvgPool(), fastnn.Dense(6, 3)]

    shape = (6, 5, 2)
    ref_model = fastnn.Sequential(layers(), seed=3, backend="reference", dtype=np.float64,
                                  input_shape=shape)
    model = fastnn.Sequential(layers(), seed=3, backend=backend.__name__.rsplit(".", 1)[1],
                              input_shape=shape)
    ref_loss, loss = losses.SoftmaxCrossEntropy(), losses.SoftmaxCrossEntropy()
    ref_loss.set_backend(fastnn.kernels.get("reference"), np.float64)
    loss.set_backend(backend, np.float32)
    X = rng.normal(size=(5,) + shape)
    y = rng.integers(0, 3, 5)
    want_value, want = _loss_and_grads(ref_model, ref_loss, X, y)
    value, got = _loss_and_grads(model, loss, backend.asarray(X), backend.asarray(y, np.int32))
    assert value == pytest.approx(want_value, rel=1e-5)
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(model.get_buffers(), ref_model.get_buffers(), rtol=1e-5, atol=1e-6)
