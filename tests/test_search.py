"""fastnn.sklearn.MLPSearchCV against scikit-learn's GridSearchCV over the
same fastnn estimator with the same splits."""

import pickle
import warnings

import numpy as np
import pytest
from sklearn.datasets import load_digits, make_regression
from sklearn.exceptions import ConvergenceWarning, FitFailedWarning
from sklearn.model_selection import GridSearchCV, KFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from fastnn.sklearn import MLPClassifier, MLPRegressor, MLPSearchCV


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return X[:360] / 16.0, y[:360]


def _compare(a, b):
    keys = set(b.cv_results_)
    assert set(a.cv_results_) == keys
    for key in keys:
        if "time" in key:
            continue
        va, vb = a.cv_results_[key], b.cv_results_[key]
        if key == "params" or key.startswith("param_"):
            assert list(va) == list(vb), key
        else:
            np.testing.assert_allclose(np.asarray(va, float), np.asarray(vb, float), rtol=1e-6,
                                       err_msg=key)
    assert a.best_params_ == b.best_params_ and a.best_index_ == b.best_index_
    assert a.best_score_ == pytest.approx(b.best_score_)
    assert a.n_splits_ == b.n_splits_


def _both(estimator, grid, X, y, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ours = MLPSearchCV(estimator, grid, **kw).fit(X, y)
        theirs = GridSearchCV(estimator, grid, **kw).fit(X, y)
    return ours, theirs


def test_scores_equal_gridsearchcv_classifier(digits):
    X, y = digits
    grid = {"hidden_layer_sizes": [(16,), (32, 16)], "alpha": [1e-4, 1e-1],
            "learning_rate_init": [1e-3, 1e-2]}
    a, b = _both(MLPClassifier(max_iter=4, random_state=0), grid, X, y, cv=3,
                 return_train_score=True)
    _compare(a, b)
    np.testing.assert_array_equal(a.predict(X), b.predict(X))
    np.testing.assert_allclose(a.predict_proba(X), b.predict_proba(X), rtol=1e-6)
    assert a.score(X, y) == b.score(X, y)
    assert a.refit_time_ > 0


def test_scores_equal_gridsearchcv_regressor_list_grid_and_scorer():
    X, y = make_regression(n_samples=120, n_features=6, noise=0.1, random_state=0)
    grid = [{"hidden_layer_sizes": [(8,)], "alpha": [1e-4, 1.0]},
            {"hidden_layer_sizes": [(12,)], "solver": ["sgd"], "momentum": [0.5, 0.9]}]
    a, b = _both(MLPRegressor(max_iter=3, random_state=1, learning_rate_init=1e-2), grid,
                 X, y / 100, cv=KFold(3, shuffle=True, random_state=0),
                 scoring="neg_mean_squared_error")
    _compare(a, b)


def test_pipeline_search_fits_the_scaler_once_per_fold(digits):
    X, y = digits
    pipe = Pipeline([("scale", StandardScaler()), ("mlp", MLPClassifier(max_iter=3,
                                                                        random_state=0))])
    grid = {"mlp__alpha": [1e-4, 1e-2], "scale__with_mean": [True, False]}
    a, b = _both(pipe, grid, X, y, cv=3)
    _compare(a, b)


def test_early_stopping_candidates_in_a_bank(digits):
    X, y = digits
    grid = {"n_iter_no_change": [1, 3], "alpha": [1e-4, 1e-2]}
    a, b = _both(MLPClassifier(max_iter=8, early_stopping=True, random_state=0), grid, X, y,
                 cv=3)
    _compare(a, b)


def test_search_pickles_and_delegates(digits):
    X, y = digits
    search = MLPSearchCV(MLPClassifier(max_iter=2, random_state=0), {"alpha": [1e-4, 1e-3]},
                         cv=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        search.fit(X, y)
    again = pickle.loads(pickle.dumps(search))
    np.testing.assert_array_equal(again.predict(X), search.predict(X))
    assert list(again.classes_) == list(range(10))


def test_lbfgs_and_class_weight_candidates_fit_alone(digits):
    """Candidates that are not compiled epochs (lbfgs, class weights) are
    fitted one by one, with the same scores as GridSearchCV's."""
    X, y = digits
    grid = [{"solver": ["lbfgs"], "max_iter": [5]},
            {"class_weight": [None, "balanced"], "max_iter": [3]}]
    a, b = _both(MLPClassifier(hidden_layer_sizes=(8,), random_state=0), grid, X, y, cv=2)
    _compare(a, b)


def test_a_diverging_candidate_scores_nan_with_a_warning(digits):
    X, y = digits
    grid = {"learning_rate_init": [1e-3, 1e6], "solver": ["sgd"], "momentum": [0.0]}
    search = MLPSearchCV(MLPClassifier(max_iter=3, random_state=0), grid, cv=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        search.fit(X * 1e3, y)
    scores = search.cv_results_["mean_test_score"]
    assert np.isfinite(scores[0])
    assert search.best_index_ == 0


def test_search_refuses_a_foreign_estimator():
    from sklearn.linear_model import LogisticRegression

    with pytest.raises(TypeError, match="fastnn"):
        MLPSearchCV(LogisticRegression(), {"C": [1.0]}).fit(np.zeros((10, 2)), np.arange(10) % 2)


@pytest.mark.parametrize("frame", [False, True])
def test_a_banks_estimators_validated_once_end_as_their_own_fits(digits, frame):
    """The estimators of a bank share one validation of X and y, each with
    its own copy of what validation sets (n_features_in_, feature names,
    classes_, the label binarizer), and each ends where its own fit does."""
    from fastnn._search import _train_bank

    X, y = digits
    labels = np.array(["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"])[y]
    if frame:
        pd = pytest.importorskip("pandas")
        X = pd.DataFrame(X, columns=[f"px{i}" for i in range(X.shape[1])])
    grid = [dict(alpha=a, learning_rate_init=lr) for a in (1e-4, 1e-2) for lr in (1e-3, 1e-2)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        bank = [fitted for fitted, _ in _train_bank(
            [MLPClassifier((16,), max_iter=3, random_state=0, **p) for p in grid], X, labels)]
        alone = [MLPClassifier((16,), max_iter=3, random_state=0, **p).fit(X, labels)
                 for p in grid]
    for a, b in zip(bank, alone):
        assert a.n_features_in_ == b.n_features_in_ == 64
        assert hasattr(a, "feature_names_in_") == frame
        if frame:
            np.testing.assert_array_equal(a.feature_names_in_, b.feature_names_in_)
        np.testing.assert_array_equal(a.classes_, b.classes_)
        assert a.classes_ is a._label_binarizer.classes_
        np.testing.assert_array_equal(a.predict(X), b.predict(X))
        np.testing.assert_allclose(a.loss_curve_, b.loss_curve_, rtol=1e-6)
    assert bank[0].classes_ is not bank[1].classes_
    assert bank[0]._label_binarizer is not bank[1]._label_binarizer


def test_banks_side_by_side_equal_banks_one_after_another(digits, monkeypatch):
    """With two threads the banks run side by side, each worker's kernels
    on that worker alone; every score and the refit equal those of the
    banks run one after another (each model's epochs run on one thread
    either way), and the caller's thread count is untouched."""
    from fastnn import _search
    from fastnn.kernels import c

    from .test_threads import c_threads

    X, y = digits
    grid = {"hidden_layer_sizes": [(16,), (32, 16), (8,)], "alpha": [1e-4, 1e-1]}
    seen = []
    real = _search._run_job

    def spy(*args):
        seen.append(c.info()["threads"])
        return real(*args)

    monkeypatch.setattr(_search, "_run_job", spy)
    runs = {}
    for threads in (2, 1):
        with c_threads(threads), warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            runs[threads] = MLPSearchCV(MLPClassifier(max_iter=3, random_state=0), grid,
                                        cv=2).fit(X, y)
            assert c.info()["threads"] == threads
        assert seen == [1] * 6  # (3 banks x 2 folds, each worker's kernels serial)
        seen.clear()
    _compare(runs[2], runs[1])
    np.testing.assert_array_equal(runs[2].predict_proba(X), runs[1].predict_proba(X))


def test_side_by_side_only_where_joblib_would_run_banks_in_turn():
    import joblib

    from fastnn import _search

    from .test_threads import c_threads

    est = MLPClassifier(hidden_layer_sizes=(4,))
    jobs = MLPSearchCV(est, {"alpha": [1e-4, 1e-2]}, cv=2)._jobs(
        [{"alpha": 1e-4}, {"alpha": 1e-2}], [(None, None)] * 3)
    with c_threads(2):
        assert _search._side_by_side(est, jobs, None) == 2
        assert _search._side_by_side(est, jobs, 2) == 1  # joblib runs them
        with joblib.parallel_backend("threading", n_jobs=2):
            assert _search._side_by_side(est, jobs, None) == 1
        assert _search._side_by_side(MLPClassifier(backend="reference"), jobs, None) == 1
        assert _search._side_by_side(est, jobs[:1], None) == 1
    with c_threads(1):
        assert _search._side_by_side(est, jobs, None) == 1


def test_an_error_in_a_bank_side_by_side_is_raised(digits):
    from .test_threads import c_threads

    X, y = digits
    grid = {"hidden_layer_sizes": [(8,), (4,)], "alpha": [1e-4, -1.0]}
    search = MLPSearchCV(MLPClassifier(max_iter=2, random_state=0), grid, cv=2,
                         error_score="raise")
    with c_threads(2), warnings.catch_warnings(), pytest.raises(ValueError, match="alpha"):
        warnings.simplefilter("ignore", ConvergenceWarning)
        search.fit(X, y)
    with c_threads(2), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("ignore", FitFailedWarning)
        scores = search.set_params(error_score=np.nan).fit(X, y).cv_results_["mean_test_score"]
    assert np.isfinite(scores[:2]).all() and np.isnan(scores[2:]).all()  # (alpha sorts first)
