"""fastnn.sklearn: scikit-learn's estimator checks, and agreement with
sklearn.neural_network's MLPs (same settings, same random_state)."""

import pickle
import warnings

import numpy as np
import pytest
from sklearn import neural_network as sk_nn
from sklearn.datasets import (load_digits, make_classification, make_multilabel_classification,
                              make_regression)
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import GridSearchCV, train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

from fastnn import kernels
from fastnn.sklearn import MLPClassifier, MLPRegressor

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


_WEIGHT_CHECKS = ("check_sample_weight_equivalence_on_dense_data",
                  "check_sample_weight_equivalence_on_sparse_data")


def _float32_failures(estimator):
    """Checks that compare to rtol 1e-7: float32 (the default dtype) cannot;
    test_sample_weight_equivalence_checks_float64 runs them in float64."""
    return {name: "float32 rounding; run in float64 by "
            "test_sample_weight_equivalence_checks_float64" for name in _WEIGHT_CHECKS}


@parametrize_with_checks([MLPClassifier(), MLPRegressor()],
                         expected_failed_checks=_float32_failures)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


@pytest.mark.parametrize("name", _WEIGHT_CHECKS)
@pytest.mark.parametrize("estimator", [
    MLPClassifier(solver="lbfgs", max_iter=100, dtype=np.float64),  # scikit-learn's settings
    MLPRegressor(solver="sgd", tol=1e-2, random_state=42, max_iter=100, dtype=np.float64),
], ids=["classifier-lbfgs", "regressor-sgd"])
def test_sample_weight_equivalence_checks_float64(estimator, name):
    """scikit-learn's own checks that integer weights equal repeated rows (and
    zero weights removed rows), with the settings scikit-learn runs them with
    on its MLPs, computed in float64."""
    from sklearn.utils import estimator_checks

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        getattr(estimator_checks, name)(type(estimator).__name__, estimator)


# ---- data -------------------------------------------------------------------------

def _multiclass():
    return make_classification(300, 8, n_informative=5, n_classes=3, random_state=0)


def _multioutput():
    X, y = make_regression(300, 6, n_targets=3, noise=1.0, random_state=0)
    return X, y / 100


def _multilabel():
    return make_multilabel_classification(300, 8, n_classes=4, random_state=0)


def _digits():
    X, y = load_digits(return_X_y=True)
    return train_test_split(X / 16, y, test_size=0.25, random_state=0, stratify=y)


# ---- same trajectory as scikit-learn ------------------------------------------------------

# The same settings and random_state give sklearn's initial weights, batches,
# objective, gradients and schedules, so the trajectories agree to float32
# rounding.  Each case exercises one part of that claim.
TRAJECTORY_CASES = {
    "adam-multiclass": ("clf", _multiclass, {}),
    "sgd-nesterov": ("clf", _multiclass, dict(solver="sgd", learning_rate_init=0.05)),
    "sgd-invscaling": ("clf", _multiclass, dict(solver="sgd", learning_rate="invscaling",
                                                learning_rate_init=0.5, power_t=0.25)),
    # tol too large to ever improve: lr /= 5 every n_iter_no_change + 1 epochs
    "sgd-adaptive": ("clf", _multiclass, dict(solver="sgd", learning_rate="adaptive",
                                              learning_rate_init=0.05, tol=0.5,
                                              n_iter_no_change=2)),
    "binary-tanh-l2": ("clf", lambda: (_multiclass()[0], _multiclass()[1] == 1),
                       dict(solver="sgd", learning_rate_init=0.05, alpha=0.1,
                            activation="tanh")),
    "multilabel-logistic-l2": ("clf", _multilabel, dict(solver="sgd", learning_rate_init=0.05,
                                                        alpha=0.1, activation="logistic")),
    "multioutput-sgd-l2": ("reg", _multioutput, dict(solver="sgd", learning_rate_init=0.01,
                                                     alpha=0.1, nesterovs_momentum=False)),
    "multioutput-adam": ("reg", _multioutput, dict(alpha=1.0, batch_size=64)),
    "early-stopping": ("clf", _multiclass, dict(solver="sgd", learning_rate_init=0.05,
                                                early_stopping=True, n_iter_no_change=3)),
}


def _pair(kind, **params):
    ours, theirs = ((MLPClassifier, sk_nn.MLPClassifier) if kind == "clf"
                    else (MLPRegressor, sk_nn.MLPRegressor))
    return ours(**params), theirs(**params)


@pytest.mark.parametrize("case", list(TRAJECTORY_CASES))
def test_trajectory_matches_sklearn(case):
    kind, data, params = TRAJECTORY_CASES[case]
    X, y = data()
    ours, theirs = _pair(kind, hidden_layer_sizes=(16, 8), max_iter=20, random_state=0,
                         **params)
    ours.fit(X, y)
    theirs.fit(X, y)
    assert ours.n_iter_ == theirs.n_iter_ and ours.t_ == theirs.t_
    np.testing.assert_allclose(ours.loss_curve_, theirs.loss_curve_, rtol=2e-5)
    assert ours.loss_ == pytest.approx(theirs.loss_, rel=2e-5)
    for a, b in zip(ours.coefs_ + ours.intercepts_, theirs.coefs_ + theirs.intercepts_):
        assert a.dtype == np.float32 and a.shape == b.shape
        np.testing.assert_allclose(a, b, atol=1e-4)
    if params.get("solver") == "sgd":  # the learning-rate schedule itself
        assert ours._trainer.optimizer.lr == pytest.approx(theirs._optimizer.learning_rate)
    for name in ("n_layers_", "n_outputs_", "out_activation_", "n_features_in_"):
        assert getattr(ours, name) == getattr(theirs, name)


def test_learning_rate_schedules_follow_sklearn_rules():
    X, y = _multiclass()
    inv = MLPClassifier(hidden_layer_sizes=(8,), solver="sgd", learning_rate="invscaling",
                        learning_rate_init=0.2, power_t=0.3, max_iter=7, batch_size=50,
                        random_state=0).fit(X, y)
    assert inv.t_ == 7 * len(X)
    assert inv._trainer.optimizer.lr == pytest.approx(0.2 / (inv.t_ + 1) ** 0.3)

    adaptive = MLPClassifier(hidden_layer_sizes=(8,), solver="sgd", learning_rate="adaptive",
                             learning_rate_init=0.1, tol=10.0, n_iter_no_change=1, max_iter=9,
                             random_state=0).fit(X, y)
    # the first epoch sets best_loss_; from then on no epoch improves by tol, so
    # the count exceeds n_iter_no_change at epochs 3, 5, 7, 9: lr / 5 each time
    assert adaptive.n_iter_ == 9
    assert adaptive._trainer.optimizer.lr == pytest.approx(0.1 / 5 ** 4)

    # at lr <= 1e-6 adaptive stops instead; constant stops at the first trigger
    tiny = MLPClassifier(hidden_layer_sizes=(8,), solver="sgd", learning_rate="adaptive",
                         learning_rate_init=1e-6, tol=10.0, n_iter_no_change=1, max_iter=50,
                         random_state=0).fit(X, y)
    assert tiny.n_iter_ == 3
    const = MLPClassifier(hidden_layer_sizes=(8,), solver="sgd", tol=10.0, n_iter_no_change=3,
                          max_iter=50, random_state=0).fit(X, y)
    assert const.n_iter_ == 5


# ---- quality on real problems ----------------------------------------------------------

def test_digits_accuracy_matches_sklearn():
    Xtr, Xte, ytr, yte = _digits()
    for seed in (0, 1):
        params = dict(hidden_layer_sizes=(64,), max_iter=50, random_state=seed)
        ours, theirs = _pair("clf", **params)
        ours_acc = ours.fit(Xtr, ytr).score(Xte, yte)
        theirs_acc = theirs.fit(Xtr, ytr).score(Xte, yte)
        assert ours_acc > 0.95
        assert abs(ours_acc - theirs_acc) <= 0.015


def test_regression_on_smooth_function_matches_sklearn():
    rng = np.random.default_rng(0)
    X = rng.uniform(-2, 2, (800, 2))
    y = np.sin(X[:, 0]) + 0.5 * np.cos(2 * X[:, 1])
    Xtr, Xte, ytr, yte = train_test_split(X, y, random_state=0)
    ours, theirs = _pair("reg", hidden_layer_sizes=(32, 32), max_iter=200,
                         learning_rate_init=0.01, random_state=0)
    r2_ours = ours.fit(Xtr, ytr).score(Xte, yte)
    r2_theirs = theirs.fit(Xtr, ytr).score(Xte, yte)
    assert r2_ours > 0.97
    assert abs(r2_ours - r2_theirs) < 0.01


# ---- API -----------------------------------------------------------------------------

def test_pipeline_and_grid_search():
    Xtr, Xte, ytr, yte = _digits()
    pipe = make_pipeline(StandardScaler(), MLPClassifier(max_iter=30, random_state=0))
    grid = GridSearchCV(pipe, {"mlpclassifier__hidden_layer_sizes": [(8,), (32,)],
                               "mlpclassifier__alpha": [1e-4, 1e-1]}, cv=2)
    grid.fit(Xtr, ytr)
    assert grid.best_params_["mlpclassifier__hidden_layer_sizes"] == (32,)
    assert grid.score(Xte, yte) > 0.9

    X, y = _multioutput()
    reg = GridSearchCV(make_pipeline(StandardScaler(), MLPRegressor(random_state=0)),
                       {"mlpregressor__learning_rate_init": [1e-3, 1e-2]}, cv=2).fit(X, y)
    assert reg.predict(X).shape == y.shape


def test_partial_fit_matches_sklearn():
    X, y = _multiclass()
    ours, theirs = _pair("clf", hidden_layer_sizes=(16,), random_state=0)
    with pytest.raises(ValueError, match="classes must be passed on the first call"):
        ours.partial_fit(X, y)
    for i in range(3):
        ours.partial_fit(X[:150], y[:150], classes=np.unique(y) if i == 0 else None)
        theirs.partial_fit(X[:150], y[:150], classes=np.unique(y) if i == 0 else None)
    assert ours.n_iter_ == 1 and ours.t_ == 450 and len(ours.loss_curve_) == 3
    np.testing.assert_allclose(ours.loss_curve_, theirs.loss_curve_, rtol=1e-5)
    with pytest.raises(ValueError, match="classes not in"):
        ours.partial_fit(X[:10], np.full(10, 7))
    with pytest.raises(ValueError, match="early_stopping"):
        MLPRegressor(early_stopping=True).partial_fit(X, y)
    reg = MLPRegressor(hidden_layer_sizes=(8,), random_state=0)
    for _ in range(2):
        reg.partial_fit(X, y.astype(float))
    assert reg.t_ == 600 and reg.n_iter_ == 1


def test_warm_start_continues():
    X, y = _multiclass()
    est = MLPClassifier(hidden_layer_sizes=(16,), max_iter=10, warm_start=True, random_state=0)
    est.fit(X, y)
    first = est.coefs_[0].copy()
    curve = list(est.loss_curve_)
    est.fit(X, y)
    assert len(est.loss_curve_) == 20 and est.loss_curve_[:10] == curve
    assert est.loss_curve_[10] < curve[0]  # continued, not restarted
    assert est.t_ == 20 * len(X)
    assert not np.array_equal(first, est.coefs_[0])
    with pytest.raises(ValueError, match="warm_start can only be used"):
        est.fit(X, (y == 1).astype(int))
    cold = MLPClassifier(hidden_layer_sizes=(16,), max_iter=10, random_state=0).fit(X, y)
    cold.fit(X, y)
    assert cold.loss_curve_ == curve  # without warm_start every fit starts over


def test_early_stopping_restores_best():
    X, y = _multiclass()
    est = MLPClassifier(hidden_layer_sizes=(32,), solver="sgd", learning_rate_init=0.3,
                        early_stopping=True, n_iter_no_change=4, max_iter=200, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        est.fit(X, y)
    assert est.n_iter_ < 200 and len(est.validation_scores_) == est.n_iter_
    assert est.best_loss_ is None
    assert est.best_validation_score_ == max(est.validation_scores_)
    # the best epoch's weights are back: sklearn restores the same ones
    ref = sk_nn.MLPClassifier(**{k: v for k, v in est.get_params().items()
                                 if k not in ("backend", "dtype", "class_weight")})
    ref.fit(X, y)
    assert ref.n_iter_ == est.n_iter_
    np.testing.assert_allclose(est.coefs_[1], ref.coefs_[1], atol=1e-4)
    with pytest.raises(ValueError, match="validation set is too small"):
        MLPClassifier(early_stopping=True, validation_fraction=0.01).fit(X[:50], y[:50])


def test_convergence_warning_only_at_max_iter():
    X, y = _multiclass()
    with pytest.warns(ConvergenceWarning, match="Maximum iterations \\(3\\)"):
        MLPClassifier(hidden_layer_sizes=(8,), max_iter=3, random_state=0).fit(X, y)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        MLPClassifier(hidden_layer_sizes=(8,), max_iter=50, tol=10.0, random_state=0).fit(X, y)


def test_string_and_integer_labels():
    X, y = _multiclass()
    names = np.array(["cat", "dog", "fish"])
    est = MLPClassifier(hidden_layer_sizes=(16,), max_iter=50, random_state=0)
    pred = est.fit(X, names[y]).predict(X)
    assert list(est.classes_) == ["cat", "dog", "fish"] and pred.dtype.kind == "U"
    codes = est.fit(X, 10 * y - 5).predict(X)
    np.testing.assert_array_equal(names[(codes + 5) // 10], pred)
    binary = est.fit(X, np.where(y == 1, "yes", "no"))
    assert binary.out_activation_ == "logistic" and binary.n_outputs_ == 1
    proba = binary.predict_proba(X)
    assert proba.shape == (len(X), 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1, rtol=1e-6)
    np.testing.assert_array_equal(binary.predict(X), binary.classes_[proba.argmax(axis=1)])
    np.testing.assert_allclose(binary.predict_log_proba(X), np.log(proba), rtol=1e-6)


def test_multilabel():
    X, Y = _multilabel()
    est, ref = _pair("clf", hidden_layer_sizes=(32,), max_iter=100, random_state=0)
    est.fit(X, Y)
    assert est.out_activation_ == "logistic" and est.n_outputs_ == Y.shape[1]
    pred, proba = est.predict(X), est.predict_proba(X)
    assert pred.shape == Y.shape and set(np.unique(pred)) <= {0, 1}
    assert proba.shape == Y.shape
    np.testing.assert_array_equal(pred, (proba > 0.5).astype(int))
    assert est.score(X, Y) == pytest.approx(ref.fit(X, Y).score(X, Y), abs=0.01)


def test_float32_stays_float32():
    X, y = _multioutput()
    X32 = X.astype(np.float32)
    reg = MLPRegressor(hidden_layer_sizes=(16,), max_iter=20, random_state=0).fit(X32, y)
    assert reg.predict(X32).dtype == np.float32
    assert reg.predict(X).dtype == np.float64  # float64 in, float64 out (computed in float32)
    np.testing.assert_array_equal(reg.predict(X32), reg.predict(X32.astype(np.float64)))
    assert all(c.dtype == np.float32 for c in reg.coefs_ + reg.intercepts_)
    Xc, yc = _multiclass()
    clf = MLPClassifier(hidden_layer_sizes=(16,), max_iter=20, random_state=0)
    assert clf.fit(Xc.astype(np.float32), yc).predict_proba(Xc.astype(np.float32)).dtype \
        == np.float32


def test_coefs_are_views_and_survive_pickle():
    X, y = _multioutput()
    reg = MLPRegressor(hidden_layer_sizes=(16,), max_iter=20, random_state=0).fit(X, y)
    before = reg.predict(X)
    clone = pickle.loads(pickle.dumps(reg))
    np.testing.assert_array_equal(clone.predict(X), before)
    if isinstance(reg._model.params, np.ndarray):  # host backends: writable views
        reg.intercepts_[-1][...] += 1.0
        np.testing.assert_allclose(reg.predict(X), before + 1.0, rtol=1e-5)
        clone.intercepts_[-1][...] += 1.0
        np.testing.assert_allclose(clone.predict(X), before + 1.0, rtol=1e-5)


def test_backends_agree():
    X, y = _multiclass()
    fits = [MLPClassifier(hidden_layer_sizes=(16,), max_iter=10, random_state=0,
                          backend=name).fit(X, y) for name in ("reference", "c", "numba")
            if kernels.available(name)]
    for est in fits[1:]:
        np.testing.assert_allclose(est.loss_curve_, fits[0].loss_curve_, rtol=1e-5)


def test_feature_names_from_dataframe():
    pd = pytest.importorskip("pandas")
    X, y = _multiclass()
    df = pd.DataFrame(X, columns=[f"f{i}" for i in range(X.shape[1])])
    est = MLPClassifier(hidden_layer_sizes=(8,), max_iter=5, random_state=0).fit(df, y)
    assert list(est.feature_names_in_) == list(df.columns)


def test_bad_parameters():
    X, y = _multiclass()
    with pytest.raises(ValueError, match="dtype"):
        MLPClassifier(dtype=np.float16).fit(X, y)
    with pytest.raises(ValueError, match="reference"):
        MLPClassifier(dtype=np.float64, backend="c").fit(X, y)
    with pytest.raises(ValueError, match="alpha.*finite"):
        MLPClassifier().set_params(alpha=np.nan)
    with pytest.raises(ValueError, match="learning_rate_init"):
        MLPClassifier(learning_rate_init=np.inf).fit(X, y)
    with pytest.raises(ValueError, match="class_weight"):
        MLPClassifier(class_weight={"nope": 2.0}).fit(X, y)
    with pytest.raises(ValueError, match="sample_weight"):
        MLPClassifier().fit(X, y, sample_weight=-np.ones(len(y)))
    with pytest.raises(ValueError, match="poisson"):
        MLPRegressor(loss="poisson").fit(X, -np.ones(len(y)))
    with pytest.raises(ValueError, match="hidden_layer_sizes"):
        MLPClassifier(hidden_layer_sizes=(4, 0)).fit(X, y)
    with pytest.raises(ValueError, match="backend"):
        MLPRegressor(backend="tpu").fit(X, y)


def test_schedule_as_learning_rate():
    from fastnn import schedules
    from fastnn.sklearn import MLPClassifier

    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(60, 4)).astype(np.float32), rng.integers(0, 2, 60)
    sched = schedules.StepLR(2, gamma=0.5)
    for solver in ("adam", "sgd"):
        clf = MLPClassifier((5,), solver=solver, learning_rate=sched, learning_rate_init=0.1,
                            max_iter=5, random_state=0, tol=0, n_iter_no_change=100)
        with pytest.warns(Warning):  # max_iter reached
            clf.fit(X, y)
        assert clf._trainer.optimizer.lr == pytest.approx(0.1 * 0.5 ** 2)  # epochs 4, 5 -> 6th's rate
        assert sched.base_lr is None and sched.epoch == 0  # the parameter is untouched
