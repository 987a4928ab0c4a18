"""fastnn.perceptron: convergence on separable problems, failure on XOR, the exact update rule."""

import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning, NotFittedError

from fastnn.datasets import logic_gate
from fastnn.perceptron import Perceptron


def _separable(seed, n=300, d=5, margin=0.1):
    """Points at distance >= margin from a random hyperplane, labelled by side."""
    rng = np.random.default_rng(seed)
    normal = rng.normal(size=d)
    normal /= np.linalg.norm(normal)
    offset = rng.uniform(-0.3, 0.3)
    X = rng.uniform(-1, 1, (4 * n, d))
    dist = X @ normal + offset
    keep = np.abs(dist) >= margin
    X, dist = X[keep][:n], dist[keep][:n]
    return X, np.where(dist > 0, "pos", "neg")


def _naive_fit(X, y01, lr, max_epochs, seed):
    """The textbook loop, one sample at a time, with fit's shuffling."""
    w, b = np.zeros(X.shape[1]), 0.0
    rng = np.random.default_rng(seed)
    errors = []
    for _ in range(max_epochs):
        mistakes = 0
        for i in rng.permutation(len(X)):
            p = 1 if X[i] @ w + b > 0 else 0
            w = w + lr * (y01[i] - p) * X[i]
            b = b + lr * (y01[i] - p)
            mistakes += p != y01[i]
        errors.append(mistakes)
        if mistakes == 0:
            break
    return w, b, errors


@pytest.mark.parametrize("gate", ["and", "or", "nand", "nor"])
@pytest.mark.parametrize("shuffle", [True, False])
def test_learns_linearly_separable_gates(gate, shuffle):
    X, y = logic_gate(gate)
    p = Perceptron(shuffle=shuffle, seed=0).fit(X, y)
    assert p.converged_
    assert p.errors_[-1] == 0 and p.n_epochs_ == len(p.errors_)
    np.testing.assert_array_equal(p.predict(X), y)
    assert p.score(X, y) == 1.0


@pytest.mark.parametrize("seed", range(5))
def test_learns_random_separable_set(seed):
    X, y = _separable(seed)
    p = Perceptron(seed=seed).fit(X, y)
    assert p.converged_
    np.testing.assert_array_equal(p.predict(X), y)
    np.testing.assert_array_equal(p.classes_, ["neg", "pos"])
    assert p.predict(X).dtype == y.dtype


def test_fails_on_xor_without_raising():
    X, y = logic_gate("xor")
    with pytest.warns(ConvergenceWarning, match="did not converge"):
        p = Perceptron(max_epochs=50, seed=0).fit(X, y)
    assert not p.converged_
    assert p.n_epochs_ == 50 and len(p.errors_) == 50 and min(p.errors_) > 0
    assert p.score(X, y) < 1.0


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("lr", [1.0, 0.3])
def test_identical_to_sample_by_sample_rule(seed, lr):
    # The look-ahead in fit must not change a single update; XOR-like labels
    # keep it making mistakes for all 20 epochs.
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(101, 3))
    y = (X[:, 0] * X[:, 1] > 0).astype(int) if seed % 2 else (X @ [1.0, -2.0, 0.5] > 0.2).astype(int)
    w, b, errors = _naive_fit(X, y, lr, 20, seed)
    p = Perceptron(lr=lr, max_epochs=20, seed=seed).fit(X, y)
    assert p.errors_ == errors
    np.testing.assert_allclose(p.weights_, w, rtol=1e-12, atol=1e-12)
    assert p.bias_ == pytest.approx(b, abs=1e-12)


def test_learning_rate_only_scales_weights():
    X, y = _separable(7, n=100)
    a = Perceptron(lr=1.0, seed=3).fit(X, y)
    b = Perceptron(lr=0.5, seed=3).fit(X, y)
    np.testing.assert_array_equal(b.weights_, 0.5 * a.weights_)
    assert b.errors_ == a.errors_


def test_seed_determinism_and_label_mapping():
    X, y = _separable(1, n=80)
    y_num = np.where(y == "pos", 7, -3)
    a = Perceptron(seed=5).fit(X, y_num)
    b = Perceptron(seed=5).fit(X, y_num)
    np.testing.assert_array_equal(a.weights_, b.weights_)
    np.testing.assert_array_equal(a.classes_, [-3, 7])
    np.testing.assert_array_equal(a.decision_function(X) > 0, y_num == 7)


@pytest.mark.parametrize("kwargs,X,y,match", [
    ({}, np.zeros((3, 2)), [1, 1, 1], "two classes"),
    ({}, np.zeros((3, 2)), [0, 1, 2], "two classes"),
    ({}, np.zeros((3, 2)), [0, 1], "shape"),
    ({}, np.zeros(3), [0, 1, 0], "2-D"),
    ({}, np.zeros((0, 2)), [], "empty"),
    ({}, [[0.0, np.nan], [1, 1]], [0, 1], "NaN"),
    ({}, np.zeros((2, 2)), [0.0, np.nan], "NaN"),
    (dict(lr=0), np.zeros((2, 2)), [0, 1], "lr"),
    (dict(max_epochs=0), np.zeros((2, 2)), [0, 1], "max_epochs"),
])
def test_bad_input(kwargs, X, y, match):
    with pytest.raises(ValueError, match=match):
        Perceptron(**kwargs).fit(X, y)


def test_predict_checks():
    with pytest.raises(NotFittedError):
        Perceptron().predict(np.zeros((1, 2)))
    X, y = logic_gate("and")
    p = Perceptron().fit(X, y)
    with pytest.raises(ValueError, match="features"):
        p.predict(np.zeros((1, 3)))
