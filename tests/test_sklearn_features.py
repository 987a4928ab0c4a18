"""fastnn.sklearn beyond the ported scikit-learn suite: the L-BFGS objective
against finite differences and an independent numpy formula, sample and
class weights against repeated rows, sparse against dense input, the
Poisson and absolute-error losses, coefs_ as the source of truth,
divergence, and agreement with scikit-learn's lbfgs in float64."""

import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn import neural_network as sk_nn
from sklearn.datasets import load_digits, make_classification, make_regression
from sklearn.exceptions import ConvergenceWarning

from fastnn.sklearn import MLPClassifier, MLPRegressor, _Batches

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

F64 = dict(dtype=np.float64)


def _clf_data(n=60, classes=3, seed=0):
    X, y = make_classification(n_samples=n, n_features=6, n_informative=4,
                               n_classes=classes, random_state=seed)
    return X, y


def _reg_data(n=60, seed=0, outputs=1):
    X, y = make_regression(n_samples=n, n_features=5, n_targets=outputs, noise=1.0,
                           random_state=seed)
    return X, y / np.std(y)


def _prepared(est, X, y, sample_weight=None):
    """A fitted estimator (one lbfgs iteration) and what its _fit sees."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.set_params(max_iter=1).fit(X, y)
    _, Y = est._validate_input(X, y, incremental=True, reset=False)
    sw = est._sample_weights(X, Y, sample_weight, incremental=False)
    return Y, sw


def _objective_and_flat(est, X, Y, sw):
    f = est._lbfgs_objective(np.ascontiguousarray(X, est._dtype()), Y, sw)
    return f, est._model.get_params().astype(np.float64)


# ---- the L-BFGS objective -----------------------------------------------------------

@pytest.mark.parametrize("case", ["multiclass", "binary", "regression", "poisson",
                                  "weighted", "absolute"])
@pytest.mark.parametrize("activation", ["logistic", "tanh", "relu", "identity"])
def test_lbfgs_objective_matches_finite_differences(case, activation):
    """The loss and gradient L-BFGS minimises (compiled epoch, or the layer-by-
    layer path for weights / Poisson) in float64: the gradient equals central
    differences of the loss, L2 term included."""
    rng = np.random.RandomState(1)
    sw = None
    if case in ("multiclass", "binary", "weighted"):
        X, y = _clf_data(n=25, classes=2 if case == "binary" else 3)
        est = MLPClassifier(hidden_layer_sizes=(5,), activation=activation, solver="lbfgs",
                            alpha=0.3, random_state=0, **F64)
        if case == "weighted":
            sw = rng.uniform(0.2, 3.0, len(y))
    else:
        X, y = _reg_data(n=25)
        if case == "poisson":
            y = rng.poisson(2.0, len(y)).astype(float)
        est = MLPRegressor(loss={"poisson": "poisson", "absolute": "absolute_error"}.get(
            case, "squared_error"), hidden_layer_sizes=(5,), activation=activation,
            solver="lbfgs", alpha=0.3, random_state=0, **F64)
    Y, w = _prepared(est, X, y, sw)
    f, flat = _objective_and_flat(est, X, Y, w)
    value, grad = f(flat.copy())
    used = [i for i in range(len(flat)) if grad[i] != 0 or flat[i] != 0]
    eps = 1e-6
    for i in rng.choice(used, size=min(30, len(used)), replace=False):
        e = np.zeros_like(flat)
        e[i] = eps
        num = (f(flat + e)[0] - f(flat - e)[0]) / (2 * eps)
        assert num == pytest.approx(grad[i], rel=1e-5, abs=1e-7), i


@pytest.mark.parametrize("est", [
    MLPClassifier(hidden_layer_sizes=(7,), activation="tanh", solver="lbfgs", alpha=0.1,
                  random_state=0, **F64),
    MLPRegressor(hidden_layer_sizes=(7,), solver="lbfgs", alpha=0.1, random_state=0, **F64),
    MLPRegressor(loss="absolute_error", hidden_layer_sizes=(7,), solver="lbfgs", alpha=0.1,
                 random_state=0, **F64),
], ids=["classifier", "squared_error", "absolute_error"])
def test_compiled_objective_equals_layer_by_layer(est):
    """The one-kernel-call objective (the compiled full-batch epoch) and the
    numpy-loss layer-by-layer path agree (float64), and so does
    scikit-learn's private _loss_grad_lbfgs in its own packing."""
    X, y = _clf_data() if isinstance(est, MLPClassifier) else _reg_data(outputs=2)
    Y, sw = _prepared(est, X, y)
    fast, flat = _objective_and_flat(est, X, Y, None)
    v1, g1 = fast(flat.copy())
    v2, g2 = _Batches(est, X, Y, None).loss_grad(flat.copy())
    assert v1 == pytest.approx(v2, rel=1e-12)
    np.testing.assert_allclose(g1, g2, rtol=1e-10, atol=1e-14)
    if isinstance(est, MLPClassifier) or est.loss == "squared_error":
        ref = sk_nn.MLPClassifier if isinstance(est, MLPClassifier) else sk_nn.MLPRegressor
        sk = ref(hidden_layer_sizes=(7,), activation=est.activation, solver="lbfgs",
                 alpha=0.1, random_state=0, max_iter=1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            sk.fit(X, y)
        packed = np.concatenate([a.ravel() for a in est.coefs_ + est.intercepts_])
        acts = [X] + [None] * (len(est.coefs_))
        sk.coefs_, sk.intercepts_ = [np.array(a) for a in est.coefs_], [
            np.array(a) for a in est.intercepts_]
        sk._coef_indptr, sk._intercept_indptr, start = [], [], 0
        for W in sk.coefs_:
            sk._coef_indptr.append((start, start + W.size, W.shape))
            start += W.size
        for b in sk.intercepts_:
            sk._intercept_indptr.append((start, start + b.size))
            start += b.size
        deltas = [None] * len(est.coefs_)
        cg = [np.empty_like(W) for W in sk.coefs_]
        ig = [np.empty_like(b) for b in sk.intercepts_]
        v_sk, g_sk = sk._loss_grad_lbfgs(packed, X, Y.astype(float), None, acts, deltas, cg, ig)
        v_ours, g_ours = est._loss_grad_lbfgs(packed, X, Y, None)
        assert v_ours == pytest.approx(v_sk, rel=1e-9)
        np.testing.assert_allclose(g_ours, g_sk, rtol=1e-7, atol=1e-12)
        assert v1 == pytest.approx(v_sk, rel=1e-9)


def test_lbfgs_follows_scikit_learn_in_float64():
    """Same random_state, same objective, same scipy minimiser: the float64
    fit lands where scikit-learn's does."""
    X, y = load_digits(n_class=4, return_X_y=True)
    X = X[:300] / 16.0
    y = y[:300]
    kw = dict(hidden_layer_sizes=(20,), solver="lbfgs", max_iter=40, random_state=3)
    ours = MLPClassifier(**kw, **F64).fit(X, y)
    ref = sk_nn.MLPClassifier(**kw).fit(X, y)
    assert ours.n_iter_ == ref.n_iter_
    assert ours.loss_ == pytest.approx(ref.loss_, rel=1e-6)
    np.testing.assert_allclose(ours.predict_proba(X), ref.predict_proba(X), atol=1e-6)
    # float32 (the default) reaches the same quality
    fast = MLPClassifier(**kw).fit(X, y)
    assert fast.loss_ == pytest.approx(ref.loss_, rel=0.05)
    assert fast.score(X, y) >= ref.score(X, y) - 0.02
    with pytest.raises(AttributeError, match="partial_fit"):
        fast.partial_fit  # noqa: B018 - hidden for lbfgs
    with pytest.warns(ConvergenceWarning, match="lbfgs failed to converge"):
        MLPClassifier(**dict(kw, max_iter=2)).fit(X, y)


def test_lbfgs_max_fun_and_warm_start():
    X, y = _reg_data(n=80)
    est = MLPRegressor(hidden_layer_sizes=(8,), solver="lbfgs", max_fun=5, random_state=0)
    with pytest.warns(ConvergenceWarning):
        est.fit(X, y)
    assert est.n_iter_ <= 5
    est.set_params(max_fun=15000, max_iter=30, warm_start=True)
    before = est.loss_
    est.fit(X, y)
    assert est.loss_ < before


# ---- weights ------------------------------------------------------------------------

@pytest.mark.parametrize("solver", ["lbfgs", "sgd"])
def test_integer_weights_equal_repeated_rows(solver):
    """w_i = k_i is the data set with row i repeated k_i times (float64;
    full-batch sgd, so the batches are the same)."""
    X, y = _reg_data(n=30)
    k = np.random.RandomState(0).randint(0, 4, len(y))
    Xr, yr = np.repeat(X, k, axis=0), np.repeat(y, k)
    kw = dict(hidden_layer_sizes=(6,), solver=solver, random_state=0, max_iter=30, alpha=0.2,
              shuffle=False, learning_rate_init=0.01, **F64)
    a = MLPRegressor(**kw, batch_size=len(y)).fit(X, y, sample_weight=k)
    b = MLPRegressor(**kw, batch_size=len(yr)).fit(Xr, yr)
    np.testing.assert_allclose(a.predict(X), b.predict(X), rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("solver", ["lbfgs", "adam"])
def test_class_weight_equals_sample_weight(solver):
    X, y = _clf_data(n=80)
    kw = dict(hidden_layer_sizes=(6,), solver=solver, random_state=0, max_iter=20, **F64)
    cw = {0: 0.5, 1: 2.0, 2: 1.0}
    a = MLPClassifier(**kw, class_weight=cw).fit(X, y)
    b = MLPClassifier(**kw).fit(X, y, sample_weight=np.array([cw[c] for c in y]))
    np.testing.assert_allclose(a.predict_proba(X), b.predict_proba(X), rtol=1e-10)
    # balanced: n / (n_classes * count)
    yb = np.r_[np.zeros(60, int), np.ones(20, int)]
    counts = np.bincount(yb)
    w = (len(yb) / (2 * counts))[yb]
    a = MLPClassifier(**kw, class_weight="balanced").fit(X, yb)
    b = MLPClassifier(**kw).fit(X, yb, sample_weight=w)
    np.testing.assert_allclose(a.predict_proba(X), b.predict_proba(X), rtol=1e-10)
    assert not np.allclose(a.predict_proba(X),
                           MLPClassifier(**kw).fit(X, yb).predict_proba(X))
    if solver == "adam":
        with pytest.raises(ValueError, match="balanced"):
            MLPClassifier(solver="adam", class_weight="balanced").partial_fit(
                X, yb, classes=[0, 1])


def test_weights_split_with_validation_set():
    """Under early stopping the weights follow their rows into the training
    and validation parts (the validation score is weighted)."""
    X, y = _reg_data(n=100)
    w = np.random.RandomState(0).uniform(0.5, 2.0, len(y))
    kw = dict(hidden_layer_sizes=(6,), early_stopping=True, random_state=0, max_iter=15,
              n_iter_no_change=50, **F64)
    a = MLPRegressor(**kw).fit(X, y, sample_weight=w)
    b = MLPRegressor(**kw).fit(X, y, sample_weight=2 * w)  # only the l2 term's scale moves
    assert len(a.validation_scores_) == 15
    np.testing.assert_allclose(a.validation_scores_[0], b.validation_scores_[0], rtol=1e-3)


# ---- sparse input -------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["csr", "csc"])
@pytest.mark.parametrize("solver", ["lbfgs", "adam"])
def test_sparse_equals_dense(fmt, solver):
    X, y = _clf_data(n=90)
    X[np.abs(X) < 0.7] = 0.0
    kw = dict(hidden_layer_sizes=(8,), solver=solver, random_state=0, max_iter=15,
              batch_size=32, **F64)
    dense = MLPClassifier(**kw).fit(X, y)
    Xs = sp.csr_matrix(X) if fmt == "csr" else sp.csc_matrix(X)
    sparse = MLPClassifier(**kw).fit(Xs, y)
    np.testing.assert_allclose(sparse.predict_proba(Xs), dense.predict_proba(X), rtol=1e-9)
    np.testing.assert_allclose(sparse.loss_, dense.loss_, rtol=1e-9)
    if solver == "adam":  # the validation split and its scores on sparse rows
        kw.update(early_stopping=True, n_iter_no_change=100)
        dense = MLPClassifier(**kw).fit(X, y)
        sparse = MLPClassifier(**kw).fit(Xs, y)
        np.testing.assert_allclose(sparse.validation_scores_, dense.validation_scores_)
        np.testing.assert_allclose(sparse.predict_proba(Xs), dense.predict_proba(X),
                                   rtol=1e-9)
    # float32 default, sparse prediction of a dense fit
    est = MLPRegressor(hidden_layer_sizes=(8,), random_state=0, max_iter=5).fit(X, y * 1.0)
    np.testing.assert_allclose(est.predict(Xs), est.predict(X), rtol=1e-6)


# ---- losses -------------------------------------------------------------------------

def test_poisson_follows_scikit_learn():
    rng = np.random.RandomState(0)
    X = rng.normal(size=(120, 4))
    y = rng.poisson(np.exp(0.3 * X[:, 0] - 0.2 * X[:, 1]))
    kw = dict(loss="poisson", hidden_layer_sizes=(5,), solver="lbfgs", max_iter=50,
              random_state=1)
    ours = MLPRegressor(**kw, **F64).fit(X, y)
    ref = sk_nn.MLPRegressor(**kw).fit(X, y)
    assert ours.out_activation_ == ref.out_activation_ == "exp"
    assert ours.loss_ == pytest.approx(ref.loss_, rel=1e-6)
    np.testing.assert_allclose(ours.predict(X), ref.predict(X), rtol=1e-5)
    # adam, float32: predictions positive, loss decreasing
    est = MLPRegressor(loss="poisson", hidden_layer_sizes=(5,), max_iter=30,
                       learning_rate_init=0.01, random_state=0).fit(X, y)
    assert (est.predict(X) > 0).all() and est.loss_curve_[-1] < est.loss_curve_[0]


def test_absolute_error_value():
    """loss_ of absolute_error is mean |y - f(x)| (plus the L2 term): the
    compiled epoch (adam) and the weighted path report the same value as
    the formula evaluated at the final weights for a full-batch lbfgs."""
    X, y = _reg_data(n=50, outputs=2)
    est = MLPRegressor(loss="absolute_error", hidden_layer_sizes=(6,), solver="lbfgs",
                       alpha=0.0, max_iter=30, random_state=0, **F64).fit(X, y)
    assert est.loss_ == pytest.approx(np.abs(est.predict(X) - y).mean(), rel=1e-9)
    adam = MLPRegressor(loss="absolute_error", hidden_layer_sizes=(6,), max_iter=20,
                        learning_rate_init=0.01, random_state=0).fit(X, y)
    assert adam.loss_curve_[-1] < adam.loss_curve_[0]


# ---- coefs_ as the source of truth --------------------------------------------------

@pytest.mark.parametrize("backend", ["reference", "c", "numba"])
def test_assigned_coefs_are_used(backend):
    X, y = _clf_data(n=40, classes=2)
    est = MLPClassifier(hidden_layer_sizes=(4,), solver="sgd", max_iter=3, random_state=0,
                        backend=backend).fit(X, y)
    W = [np.full_like(np.asarray(a), 0.01) for a in est.coefs_]
    b = [np.zeros_like(np.asarray(a)) for a in est.intercepts_]
    est.coefs_, est.intercepts_ = W, b  # new arrays
    z = np.tanh(0) + np.maximum(X @ W[0], 0) @ W[1]  # relu hidden, no intercepts
    want = 1 / (1 + np.exp(-z.ravel()))
    np.testing.assert_allclose(est.predict_proba(X)[:, 1], want, rtol=1e-5)
    est.coefs_[1][:] = -0.01  # in place on an assigned array
    np.testing.assert_allclose(est.predict_proba(X)[:, 1], 1 / (1 + np.exp(z.ravel())),
                               rtol=1e-5)
    # the next partial_fit starts from them (one sgd step from the assigned weights)
    ref = sk_nn.MLPClassifier(hidden_layer_sizes=(4,), solver="sgd", max_iter=3,
                              random_state=0, shuffle=False, batch_size=40)
    ref.partial_fit(X, y, classes=[0, 1])
    ref.coefs_ = [np.array(a, np.float64) for a in est.coefs_]
    ref.intercepts_ = [np.zeros_like(a) for a in ref.intercepts_]
    ref._optimizer = None
    del ref._optimizer
    ours = MLPClassifier(hidden_layer_sizes=(4,), solver="sgd", shuffle=False, batch_size=40,
                         backend=backend).partial_fit(X, y, classes=[0, 1])
    ours.coefs_ = [np.array(a) for a in ref.coefs_]
    ours.intercepts_ = [np.array(a) for a in ref.intercepts_]
    ours._trainer = None  # a fresh optimizer, as scikit-learn's after del _optimizer
    ref.partial_fit(X, y)
    ours.partial_fit(X, y)
    for a, r in zip(ours.coefs_ + ours.intercepts_, ref.coefs_ + ref.intercepts_):
        np.testing.assert_allclose(a, r, rtol=1e-4, atol=1e-6)
    assert ours.coefs_[0] is not ref.coefs_[0]


# ---- divergence ---------------------------------------------------------------------

def test_divergence_as_scikit_learn():
    X = np.random.RandomState(0).normal(size=(60, 3)) * 30
    y = X.sum(axis=1) * 1e3
    kw = dict(hidden_layer_sizes=(20,), activation="identity", solver="sgd",
              learning_rate_init=1.0, max_iter=8, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match="non-finite parameter weights"):
            MLPRegressor(**kw).fit(X, y)
        est = MLPRegressor(**kw, early_stopping=True).fit(X, y)
    assert np.isnan(est.loss_curve_[-1]) and len(est.loss_curve_) == 8
    assert np.isnan(est.validation_scores_[-1])
    assert all(np.isfinite(a).all() for a in est.coefs_)  # the best weights restored


def test_optimizer_learning_rate_is_read_only():
    X, y = _clf_data(n=40)
    est = MLPClassifier(solver="sgd", learning_rate="invscaling", power_t=0.5,
                        learning_rate_init=0.1, max_iter=2, random_state=0).fit(X, y)
    assert est._optimizer.learning_rate == pytest.approx(0.1 / (2 * 40 + 1) ** 0.5)
    with pytest.raises(AttributeError):
        est._optimizer.learning_rate = 1.0
    with pytest.raises(AttributeError):
        MLPClassifier(solver="lbfgs", max_iter=2).fit(X, y)._optimizer  # noqa: B018


def test_flush_denormals_around_the_lbfgs_epoch():
    """c's flush_denormals (which the L-BFGS objective sets around its
    epoch): on, a denormal product of a C kernel is 0; off again, IEEE
    denormals are back; it returns the previous setting, and the lbfgs
    objective leaves the setting as it found it."""
    c = pytest.importorskip("fastnn.kernels.c")
    from fastnn import kernels

    k = kernels.get("c")
    A = np.full((1, 1), 1e-20, np.float32)
    B = np.full((1, 1), 1e-20, np.float32)
    assert k.gemm(A, B, np.zeros((1, 1), np.float32))[0, 0] == np.float32(1e-40)
    assert c.flush_denormals(True) is False
    try:
        assert k.gemm(A, B, np.zeros((1, 1), np.float32))[0, 0] == 0.0
    finally:
        assert c.flush_denormals(False) is True
    assert k.gemm(A, B, np.zeros((1, 1), np.float32))[0, 0] == np.float32(1e-40)
    X, y = _clf_data(n=40)
    MLPClassifier(hidden_layer_sizes=(4,), solver="lbfgs", max_iter=3, backend="c").fit(X, y)
    assert c.flush_denormals(False) is False
