"""Model banks on a Dask cluster through joblib: MLPSearchCV(n_jobs=k)
under ``joblib.parallel_backend("dask")`` equals the local search."""

import os
import signal
import warnings

import numpy as np
import pytest
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.pipeline import Pipeline

pytest.importorskip("dask.distributed")
import joblib  # noqa: E402
from dask.distributed import Client, LocalCluster  # noqa: E402

from fastnn.sklearn import MLPClassifier, MLPSearchCV  # noqa: E402

GRID = {"hidden_layer_sizes": [(16,), (32,)], "alpha": [1e-4, 1e-2]}


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return X[:240] / 16.0, y[:240]


@pytest.fixture(scope="module")
def client():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the dashboard's port, etc.
        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                               dashboard_address=None)
    with cluster, Client(cluster) as c:
        yield c


def search(estimator, X, y, n_jobs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return MLPSearchCV(estimator, GRID if not isinstance(estimator, Pipeline) else
                           {"mlp__" + k: v for k, v in GRID.items()},
                           cv=3, n_jobs=n_jobs).fit(X, y)


def same(a, b):
    for key in a.cv_results_:
        if "time" in key or key == "params" or key.startswith("param_"):
            continue
        np.testing.assert_array_equal(np.asarray(a.cv_results_[key], float),
                                      np.asarray(b.cv_results_[key], float), err_msg=key)
    assert a.best_params_ == b.best_params_
    np.testing.assert_array_equal(a.best_estimator_.predict_proba(a._X),
                                  b.best_estimator_.predict_proba(a._X))


def test_search_on_a_dask_cluster_equals_the_local_search(client, digits):
    X, y = digits
    est = MLPClassifier(max_iter=4, random_state=0, batch_size=32)
    local = search(est, X, y, n_jobs=1)
    with joblib.parallel_backend("dask"):
        remote = search(est, X, y, n_jobs=2)
    local._X = X
    same(local, remote)
    # the banks ran on the workers, each with the worker's one thread
    ran = client.run(lambda: __import__("fastnn.kernels").kernels._num_threads)
    assert sorted(ran.values()) == [1, 1]


class KillOnce(TransformerMixin, BaseEstimator):
    """Identity step whose first fit (anywhere) kills its own process:
    a worker lost mid-search."""

    def __init__(self, marker=None):
        self.marker = marker

    def fit(self, X, y=None):
        try:
            fd = os.open(self.marker, os.O_CREAT | os.O_EXCL)
        except FileExistsError:
            return self
        os.close(fd)
        os.kill(os.getpid(), signal.SIGKILL)

    def transform(self, X):
        return X


@pytest.mark.slow  # a worker's restart: ~6 s more on a busy machine
def test_a_worker_killed_mid_search_is_rerun_and_the_result_still_equal(client, digits, tmp_path):
    X, y = digits
    pipe = Pipeline([("kill", KillOnce(str(tmp_path / "killed"))),
                     ("mlp", MLPClassifier(max_iter=4, random_state=0, batch_size=32))])
    (tmp_path / "killed").touch()
    local = search(pipe, X, y, n_jobs=1)  # the marker exists: nothing is killed
    (tmp_path / "killed").unlink()
    with joblib.parallel_backend("dask"):
        remote = search(pipe, X, y, n_jobs=2)
    assert (tmp_path / "killed").exists()  # a worker did die
    local._X = X
    same(local, remote)


def test_fit_many_banks_on_a_dask_cluster_equal_one_local_call(client):
    import fastnn

    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 8)).astype(np.float32)
    y = (X[:, :3] @ rng.normal(size=(3, 3))).argmax(axis=1)

    def trainers():
        return [fastnn.Trainer(fastnn.Sequential([fastnn.Dense(8, 16, "relu"),
                                                  fastnn.Dense(16, 3)], seed=s),
                               "softmax_cross_entropy", fastnn.optim.Adam(lr=1e-2))
                for s in range(4)]

    a, b = trainers(), trainers()
    ha = fastnn.fit_many(a, X, y, epochs=3, seed=1, verbose=False)
    with joblib.parallel_backend("dask"):
        hb = fastnn.fit_many(b, X, y, epochs=3, seed=1, n_jobs=2)
    for p, q, x, z in zip(a, b, ha, hb):
        np.testing.assert_array_equal(p.model.get_params(), q.model.get_params())
        assert x.loss == z.loss
