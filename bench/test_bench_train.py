"""End-to-end benchmarks: one epoch of ``fastnn.Trainer.fit`` on the MLP
784-256-128-10 (ReLU, softmax cross-entropy, Adam lr 1e-3, float32) over
synthetic MNIST-shaped data, and ``fastnn.sklearn.MLPClassifier`` on the
digits.  Rates are samples/s (extra_info)."""

import warnings

import numpy as np
import pytest

from fastnn.bench import workloads as wl


def _untimed(config):
    """--benchmark-disable: each body runs once, as a smoke test (CI)."""
    return bool(config.getoption("benchmark_disable"))


@pytest.fixture(scope="module")
def mnist_like(request, full):
    # A full epoch with --bench-full; 10,000 samples keep the quick suite
    # quick, 4,000 the untimed smoke run.
    n = 60_000 if full else 4_000 if _untimed(request.config) else 10_000
    return wl.synthetic_mnist(n, seed=0)


@pytest.mark.parametrize("batch_size", wl.TRAIN_BATCHES)
def test_trainer_fit_epoch(benchmark, backend, mnist_like, batch_size):
    k = backend
    X, y = mnist_like
    wl.check_model_grads(k.name, X[:64], y[:64])
    trainer = wl.make_trainer(k.name, seed=0)
    loss_before = trainer.evaluate(X[:2000], y[:2000])["loss"]
    trainer.fit(X[:2 * batch_size], y[:2 * batch_size], epochs=1, batch_size=batch_size,
                verbose=False)  # allocate the per-batch-size buffers outside the timing
    epochs = []

    def run():
        epochs.append(trainer.fit(X, y, epochs=1, batch_size=batch_size, seed=len(epochs),
                                  verbose=False))
        wl.sync(k)

    benchmark.pedantic(run, rounds=3, iterations=1)
    loss_after = trainer.evaluate(X[:2000], y[:2000])["loss"]
    assert np.isfinite(loss_after) and loss_after < loss_before, (loss_before, loss_after)
    benchmark.extra_info["samples"] = len(X)
    wl.record(benchmark, k, {"samples/s": float(len(X))})


@pytest.mark.parametrize("batch_size", [32, 200])
def test_sklearn_mlpclassifier_digits(request, benchmark, backend, full, batch_size):
    try:
        from fastnn.sklearn import MLPClassifier
    except ImportError as exc:
        pytest.skip(f"fastnn.sklearn.MLPClassifier not importable yet ({exc})")
    from sklearn.datasets import load_digits
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import train_test_split

    k = backend
    X, y = load_digits(return_X_y=True)
    X_tr, X_te, y_tr, y_te = train_test_split(X / 16.0, y, test_size=0.25, random_state=0)
    epochs = 40 if full else 5 if _untimed(request.config) else 10
    clf = MLPClassifier(hidden_layer_sizes=(256, 128), batch_size=batch_size, max_iter=epochs,
                        tol=0.0, n_iter_no_change=epochs + 1, random_state=0, backend=k.name)

    def run():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            clf.fit(X_tr, y_tr)
        return clf

    benchmark.pedantic(run, rounds=3, iterations=1)
    # the check: all epochs ran and the model learned the digits
    assert clf.n_iter_ == epochs, clf.n_iter_
    accuracy = float(np.mean(clf.predict(X_te) == y_te))
    assert accuracy >= (0.85 if epochs < 10 else 0.9), accuracy
    benchmark.extra_info["test_accuracy"] = round(accuracy, 4)
    wl.record(benchmark, k, {"samples/s": float(epochs * len(X_tr))})
