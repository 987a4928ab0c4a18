"""scikit-learn drop-ins: :class:`MLPClassifier` and :class:`MLPRegressor`.

Same constructor parameters, defaults, fitted attributes and stopping rules
as ``sklearn.neural_network``'s estimators, trained by fastnn's kernels: the
network is a :class:`fastnn.Sequential` of ``Dense`` layers on one flat
parameter buffer, trained by a :class:`fastnn.Trainer`, one ``fit`` per
epoch followed by scikit-learn's end-of-iteration logic (learning-rate
schedules, ``tol`` / ``n_iter_no_change``, early stopping).

What is exactly scikit-learn's: the initial weights, the early-stopping split
and the epoch permutations (drawn from ``random_state`` in scikit-learn's
order), the objective and its gradient (half squared error, log-loss, L2 on
the weights only), SGD with (Nesterov) momentum and its learning-rate
schedules.  So the same settings give scikit-learn's training trajectory up
to float32 rounding.  What differs is listed in the class docstrings.
"""

import copy
import numbers
import warnings

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin, is_classifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import accuracy_score, r2_score
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import LabelBinarizer
from sklearn.utils import check_random_state, column_or_1d
from sklearn.utils._param_validation import Interval, Options, StrOptions
from sklearn.utils.multiclass import _check_partial_fit_first_call, type_of_target, unique_labels
from sklearn.utils.validation import check_is_fitted, validate_data

from . import kernels
from . import losses as losses_mod
from . import optim as optim_mod
from .layers import Dense
from .model import Sequential
from .schedules import Schedule
from .trainer import Trainer

__all__ = ["MLPClassifier", "MLPRegressor", "MLPSearchCV"]

_ACTIVATIONS = {"identity": "identity", "logistic": "sigmoid", "tanh": "tanh", "relu": "relu"}


# ---- scikit-learn's conventions on fastnn's losses and optimizers ---------------------
#
# The objective: sklearn's loss for a batch of n samples and k outputs is
# value_scale * (fastnn loss) + alpha / (2 n) * sum(W^2) over the weights, and
# it back-propagates grad_scale * (fastnn gradient) + alpha / n * W:
#   - regression: sklearn reports 0.5 * mean over all n*k elements but
#     back-propagates (y_hat - y) / n, the gradient of a sum over outputs; MSE
#     gives 2 (y_hat - y) / (n k): value_scale = 1/2, grad_scale = k/2.
#   - multilabel: sklearn sums the k binary log-losses, fastnn's BCE averages
#     them: value_scale = grad_scale = k.
#   - binary and multiclass: the fastnn losses are sklearn's (scales 1).
# The L2 term is the Trainer's l2 (weights only, divided by the batch size),
# not torch's weight_decay (every parameter).


# ---- the estimators ---------------------------------------------------------------

def _drive(epochs):
    """Run an estimator's epoch generator (_BaseMLP._epochs) to its end,
    one runner call per epoch."""
    try:
        runner, order = next(epochs)
        while True:
            try:
                loss = runner(order)
            except FloatingPointError as exc:
                runner, order = epochs.throw(exc)
                continue
            runner, order = epochs.send(loss)
    except StopIteration:
        pass


class _BaseMLP(BaseEstimator):
    """Shared by MLPClassifier and MLPRegressor; not public."""

    _parameter_constraints = {
        "hidden_layer_sizes": ["array-like", Interval(numbers.Integral, 1, None, closed="left")],
        "activation": [StrOptions(set(_ACTIVATIONS))],
        "solver": [StrOptions({"lbfgs", "sgd", "adam"})],
        "alpha": [Interval(numbers.Real, 0, None, closed="left")],
        "batch_size": [StrOptions({"auto"}), Interval(numbers.Integral, 1, None, closed="left")],
        "learning_rate": [StrOptions({"constant", "invscaling", "adaptive"}), Schedule],
        "learning_rate_init": [Interval(numbers.Real, 0, None, closed="neither")],
        "power_t": [Interval(numbers.Real, 0, None, closed="left")],
        "max_iter": [Interval(numbers.Integral, 1, None, closed="left")],
        "shuffle": ["boolean"],
        "random_state": ["random_state"],
        "tol": [Interval(numbers.Real, 0, None, closed="left")],
        "verbose": ["verbose"],
        "warm_start": ["boolean"],
        "momentum": [Interval(numbers.Real, 0, 1, closed="both")],
        "nesterovs_momentum": ["boolean"],
        "early_stopping": ["boolean"],
        "validation_fraction": [Interval(numbers.Real, 0, 1, closed="left")],
        "beta_1": [Interval(numbers.Real, 0, 1, closed="left")],
        "beta_2": [Interval(numbers.Real, 0, 1, closed="left")],
        "epsilon": [Interval(numbers.Real, 0, None, closed="neither")],
        "n_iter_no_change": [Interval(numbers.Integral, 1, None, closed="left"),
                             Options(numbers.Real, {np.inf})],
        "max_fun": [Interval(numbers.Integral, 1, None, closed="left")],
        "backend": [None, StrOptions(set(kernels.BACKENDS))],
    }

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, solver="adam",
                 alpha=0.0001, batch_size="auto", learning_rate="constant",
                 learning_rate_init=0.001, power_t=0.5, max_iter=200, shuffle=True,
                 random_state=None, tol=1e-4, verbose=False, warm_start=False, momentum=0.9,
                 nesterovs_momentum=True, early_stopping=False, validation_fraction=0.1,
                 beta_1=0.9, beta_2=0.999, epsilon=1e-8, n_iter_no_change=10, max_fun=15000,
                 backend=None):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.learning_rate_init = learning_rate_init
        self.power_t = power_t
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.verbose = verbose
        self.warm_start = warm_start
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.n_iter_no_change = n_iter_no_change
        self.max_fun = max_fun
        self.backend = backend

    # ---- public API ---------------------------------------------------------

    def fit(self, X, y):
        """Fit the network to X and y.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : array-like of shape (n_samples,) or (n_samples, n_outputs)
            Class labels (classifier; a 2-D indicator matrix for multilabel)
            or real targets (regressor).

        Returns
        -------
        self
        """
        return self._fit(X, y, incremental=False)

    def _partial_fit(self, X, y):
        if self.early_stopping:
            raise ValueError("partial_fit does not support early_stopping=True")
        return self._fit(X, y, incremental=True)

    # ---- fitting -----------------------------------------------------------------

    def _check_params(self):
        self._validate_params()
        if self.solver == "lbfgs":
            raise ValueError("solver='lbfgs' is not supported by fastnn's MLP estimators "
                             "(only the stochastic solvers 'adam' and 'sgd'); use "
                             "sklearn.neural_network for L-BFGS")
        sizes = self.hidden_layer_sizes
        sizes = list(sizes) if hasattr(sizes, "__iter__") else [sizes]
        if any(isinstance(s, bool) or not isinstance(s, numbers.Integral) or s <= 0
               for s in sizes):
            raise ValueError(f"hidden_layer_sizes must be positive integers, got {sizes}.")
        return [int(s) for s in sizes]

    def _fit(self, X, y, incremental):
        hidden = self._check_params()
        first_pass = not hasattr(self, "coefs_") or (not self.warm_start and not incremental)
        X, Y = self._validate_input(X, y, incremental, reset=first_pass)
        rs = check_random_state(self.random_state)
        if first_pass:
            self._initialize(Y, [X.shape[1]] + hidden + [Y.shape[1]], rs)
        elif Y.shape[1] != self.n_outputs_:
            raise ValueError(f"y has {Y.shape[1]} outputs, the fitted network has "
                             f"{self.n_outputs_}")
        if not incremental or getattr(self, "_trainer", None) is None:
            self._trainer = self._make_trainer()
        _drive(self._epochs(X, Y, rs, incremental))
        return self

    def _fit_epochs(self, X, y, plan=False):
        """fit as a generator of epochs (MLPSearchCV trains banks of
        estimators this way, their epochs in one kernel call): see _epochs."""
        hidden = self._check_params()
        X, Y = self._validate_input(X, y, False, reset=True)
        rs = check_random_state(self.random_state)
        self._initialize(Y, [X.shape[1]] + hidden + [Y.shape[1]], rs)
        self._trainer = self._make_trainer()
        return self._epochs(X, Y, rs, False, plan)

    def _initialize(self, Y, layer_units, rs):
        """Build the network with scikit-learn's initial weights.

        Weights and biases are drawn from U(-b, b), b = sqrt(f / (fan_in +
        fan_out)) with f = 2 for logistic and 6 otherwise, layer by layer
        (weights then biases) from `rs`, exactly as scikit-learn draws them.
        """
        self.n_iter_ = 0
        self.t_ = 0
        self.n_outputs_ = Y.shape[1]
        self.n_layers_ = len(layer_units)
        self.out_activation_ = self._out_activation()
        act = _ACTIVATIONS[self.activation]
        n_dense = len(layer_units) - 1
        layers = [Dense(fan_in, fan_out, activation=act if i < n_dense - 1 else None)
                  for i, (fan_in, fan_out) in enumerate(zip(layer_units, layer_units[1:]))]
        model = Sequential(layers, seed=0, backend="reference")  # host arrays to fill
        factor = 2.0 if self.activation == "logistic" else 6.0
        for layer in layers:
            bound = np.sqrt(factor / (layer.in_features + layer.out_features))
            layer.weight[...] = rs.uniform(-bound, bound, layer.weight.shape)
            layer.bias[...] = rs.uniform(-bound, bound, layer.bias.shape)
        self._model = model.to(self.backend or kernels.get_backend())
        self._trainer = None
        self._sync_attributes()
        self._best_params = self._model.get_params()
        self.loss_curve_ = []
        self._no_improvement_count = 0
        if self.early_stopping:
            self.validation_scores_ = []
            self.best_validation_score_ = -np.inf
            self.best_loss_ = None
        else:
            self.best_loss_ = np.inf
            self.validation_scores_ = None
            self.best_validation_score_ = None

    def _sync_attributes(self):
        """coefs_ / intercepts_: views into the model's buffer on host backends
        (writing them changes the model), host copies on cuda."""
        dense = [layer for layer in self._model.layers if isinstance(layer, Dense)]
        if isinstance(self._model.params, np.ndarray):
            self.coefs_ = [layer.weight for layer in dense]
            self.intercepts_ = [layer.bias for layer in dense]
        else:
            k = kernels.get(self._model.backend)
            self.coefs_ = [k.to_numpy(layer.weight) for layer in dense]
            self.intercepts_ = [k.to_numpy(layer.bias) for layer in dense]

    def _make_trainer(self):
        base, value_scale, grad_scale = self._loss_parts()
        objective = type(base)(value_scale=value_scale, grad_scale=grad_scale)
        if self.solver == "sgd":
            optimizer = optim_mod.SGD(lr=self.learning_rate_init, momentum=self.momentum,
                                      nesterov=bool(self.nesterovs_momentum and self.momentum > 0))
        else:
            optimizer = optim_mod.Adam(lr=self.learning_rate_init,
                                       betas=(self.beta_1, self.beta_2), eps=self.epsilon)
        self._schedule = None
        if isinstance(self.learning_rate, Schedule):  # a copy: fit leaves parameters alone
            self._schedule = copy.deepcopy(self.learning_rate)
            optimizer.lr = self._schedule.start(self.learning_rate_init)
        return Trainer(self._model, objective, optimizer, backend=self._model.backend,
                       l2=float(self.alpha))

    def _epochs(self, X, Y, rs, incremental, plan=False):
        """scikit-learn's _fit_stochastic as a generator: for each epoch it
        yields (runner, order) -- the trainer's EpochRunner and the epoch
        permutation scikit-learn would draw from `rs` -- and receives the
        epoch's mean loss (or, thrown in, the runner's FloatingPointError),
        then applies scikit-learn's end-of-epoch rules.  _drive runs it."""
        if self.early_stopping:
            stratify = Y if (is_classifier(self) and self.n_outputs_ == 1) else None
            X, X_val, Y, Y_val = train_test_split(X, Y, random_state=rs,
                                                  test_size=self.validation_fraction,
                                                  stratify=stratify)
            if X_val.shape[0] < 2:
                raise ValueError("The validation set is too small. Increase "
                                 "'validation_fraction' or the size of your dataset.")
            self._val = (np.ascontiguousarray(X_val, np.float32), self._decode_targets(Y_val))
        n = self._n_train = X.shape[0]
        if self.batch_size == "auto":
            batch_size = min(200, n)
        else:
            if self.batch_size > n:
                warnings.warn("Got `batch_size` less than 1 or larger than sample size. "
                              "It is going to be clipped", stacklevel=3)
            batch_size = int(np.clip(self.batch_size, 1, n))
        self.n_iter_ = 0
        run_epoch = self._trainer.epoch_runner(X, self._fit_targets(Y), batch_size, plan)
        order = np.arange(n)
        stopped = False
        try:
            for _ in range(1 if incremental else self.max_iter):
                if self.shuffle:
                    # sklearn's permutation from rs, hence its batches: what
                    # sklearn.utils.shuffle(order, random_state=rs) computes,
                    # without its argument validation (~0.5 ms an epoch)
                    perm = np.arange(n)
                    rs.shuffle(perm)
                    order = order[perm]
                loss = yield run_epoch, (order if self.shuffle else None)
                stopped = self._end_of_epoch(loss)
                if stopped:
                    break
        except FloatingPointError as exc:
            raise ValueError("Solver produced non-finite parameter weights. The input data "
                             "may contain large values and need to be preprocessed.") from exc
        finally:
            self._val = None
        if not incremental and not stopped and self.n_iter_ == self.max_iter:
            warnings.warn(f"Stochastic Optimizer: Maximum iterations ({self.max_iter}) reached "
                          "and the optimization hasn't converged yet.", ConvergenceWarning,
                          stacklevel=3)
        if self.early_stopping:
            self._model.set_params(self._best_params)
        self._sync_attributes()

    def _end_of_epoch(self, loss):
        """scikit-learn's end-of-iteration rules; returns True to stop."""
        self.n_iter_ += 1
        self.t_ += self._n_train
        self.loss_ = float(loss)
        self.loss_curve_.append(self.loss_)
        if self.verbose:
            print("Iteration %d, loss = %.8f" % (self.n_iter_, self.loss_))
        self._update_no_improvement_count()
        optimizer = self._trainer.optimizer
        if getattr(self, "_schedule", None) is not None:
            optimizer.lr = self._schedule.next({"loss": self.loss_})
        elif self.solver == "sgd" and self.learning_rate == "invscaling":
            self._set_sgd_lr(self.learning_rate_init / (self.t_ + 1) ** self.power_t)
        if self._no_improvement_count > self.n_iter_no_change:
            what = "Validation score" if self.early_stopping else "Training loss"
            msg = (f"{what} did not improve more than tol={self.tol:f} for "
                   f"{self.n_iter_no_change} consecutive epochs.")
            if self.solver == "sgd" and self.learning_rate == "adaptive" \
                    and optimizer.lr > 1e-6:
                self._set_sgd_lr(optimizer.lr / 5.0)
                self._no_improvement_count = 0
                if self.verbose:
                    print(msg + " Setting learning rate to %f" % optimizer.lr)
                return False
            if self.verbose:
                print(msg + (" Learning rate too small." if self.learning_rate == "adaptive"
                             and self.solver == "sgd" else "") + " Stopping.")
            return True
        return False

    def _set_sgd_lr(self, lr):
        """Change SGD's learning rate the way scikit-learn's SGD sees it.

        sklearn keeps the velocity v = -lr * buf with the lr of the steps that
        built it; fastnn's (torch's) momentum buffer is multiplied by the
        current lr.  Scaling the buffer by old / new keeps lr * buf, so the
        next steps equal sklearn's.
        """
        optimizer = self._trainer.optimizer
        buf = optimizer.state.get("momentum_buf")
        if buf is not None and lr > 0 and lr != optimizer.lr:
            kernels.get(self._trainer.backend).scale(buf, optimizer.lr / lr)
        optimizer.lr = lr

    def _update_no_improvement_count(self):
        if self.early_stopping:
            X_val, y_val = self._val
            score = self._score_raw(self._model.predict(X_val), X_val.dtype, y_val)
            self.validation_scores_.append(score)
            if self.verbose:
                print("Validation score: %f" % score)
            if score < self.best_validation_score_ + self.tol:
                self._no_improvement_count += 1
            else:
                self._no_improvement_count = 0
            if score > self.best_validation_score_:
                self.best_validation_score_ = score
                self._best_params = self._model.get_params()
        else:
            if self.loss_curve_[-1] > self.best_loss_ - self.tol:
                self._no_improvement_count += 1
            else:
                self._no_improvement_count = 0
            if self.loss_curve_[-1] < self.best_loss_:
                self.best_loss_ = self.loss_curve_[-1]

    # ---- prediction --------------------------------------------------------------

    def _raw(self, X):
        """Validated X and the network's raw outputs (logits / values) as float32."""
        check_is_fitted(self)
        X = validate_data(self, X, dtype=(np.float64, np.float32), reset=False)
        if getattr(self, "_model", None) is None:  # unpickled: rebuild from coefs_
            self._rebuild()
        return X, self._model.predict(X)

    def _rebuild(self):
        layers = []
        n_dense = len(self.coefs_)
        for i, W in enumerate(self.coefs_):
            act = _ACTIVATIONS[self.activation] if i < n_dense - 1 else None
            layers.append(Dense(W.shape[0], W.shape[1], activation=act))
        model = Sequential(layers, seed=0, backend="reference")
        for layer, W, b in zip(layers, self.coefs_, self.intercepts_):
            layer.weight[...] = W
            layer.bias[...] = b
        self._model = model.to(self.backend or kernels.get_backend())
        self._trainer = None
        self._sync_attributes()

    def __getstate__(self):
        state = dict(super().__getstate__())  # object's is the live __dict__
        for key in ("_model", "_trainer", "_val"):
            state.pop(key, None)
        for key in ("coefs_", "intercepts_"):  # copies, not views of a buffer
            if key in state:
                state[key] = [np.array(a) for a in state[key]]
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        self._model = self._trainer = None
        if "coefs_" in state:
            self._rebuild()

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = False
        return tags


_PARAMETERS = """
    Parameters
    ----------
    hidden_layer_sizes : array-like of int, default=(100,)
        Units of each hidden layer.
    activation : {"identity", "logistic", "tanh", "relu"}, default="relu"
        Hidden-layer activation (fused into the dense kernels).
    solver : {"adam", "sgd"}, default="adam"
        "lbfgs" raises ValueError: it is not supported.
    alpha : float, default=0.0001
        L2 penalty ``alpha / (2 n) * sum(W^2)`` on the weights (not the
        intercepts), n the batch size.
    batch_size : int or "auto", default="auto"
        ``min(200, n_samples)`` for "auto"; clipped to n_samples.
    learning_rate : {"constant", "invscaling", "adaptive"} or Schedule, default="constant"
        Schedule for solver="sgd": invscaling sets ``lr = learning_rate_init
        / (t_ + 1) ** power_t`` at the end of every epoch (t_ = samples seen);
        adaptive divides lr by 5 whenever `n_iter_no_change` epochs in a row
        did not improve by `tol`, and stops once lr <= 1e-6.  A
        ``fastnn.schedules`` object (StepLR, CosineAnnealingLR, ...; either
        solver) sets the rate of every epoch from ``learning_rate_init``
        (a copy of it is used, so the parameter itself is not changed).
    learning_rate_init : float, default=0.001
    power_t : float, default=0.5
    max_iter : int, default=200
        Maximum number of epochs.
    shuffle : bool, default=True
    random_state : int, RandomState or None, default=None
        Seeds the initial weights, the early-stopping split and the shuffling.
    tol : float, default=1e-4
    verbose : bool, default=False
        Print the loss (and validation score) every epoch.
    warm_start : bool, default=False
        Continue from the previous solution in `fit` (with a fresh optimizer,
        as scikit-learn does).
    momentum : float, default=0.9
    nesterovs_momentum : bool, default=True
    early_stopping : bool, default=False
        Hold out `validation_fraction` of the data (stratified for binary
        targets, as scikit-learn does), stop when the validation score
        (accuracy or R^2) has not improved by `tol` for `n_iter_no_change`
        epochs, and restore the best weights.
    validation_fraction : float, default=0.1
    beta_1, beta_2, epsilon : float, defaults 0.9, 0.999, 1e-8
        Adam's parameters.
    n_iter_no_change : int, default=10
    max_fun : int, default=15000
        Accepted for compatibility; only L-BFGS uses it.
    backend : str or None, default=None
        fastnn kernel backend ("c", "numba", "cuda", "reference"); None is
        :func:`fastnn.get_backend` at fit time.

    Attributes
    ----------
    coefs_, intercepts_ : list of ndarray, float32
        Weights (n_in, n_out) and intercepts of each layer.  On host backends
        they are views into the network's parameter buffer.
    loss_ : float
        Training loss of the last epoch, in scikit-learn's convention
        (including the L2 term).
    loss_curve_ : list of float
    best_loss_ : float or None
        None with early_stopping.
    validation_scores_ : list of float or None
    best_validation_score_ : float or None
    n_iter_ : int
        Epochs run by the last fit (1 after partial_fit).
    t_ : int
        Training samples seen over all fits.
    n_features_in_ : int
    feature_names_in_ : ndarray of str
        Only when fitted on a DataFrame with string column names.
    n_layers_ : int
        Hidden layers + 2.
    n_outputs_ : int
    out_activation_ : str
"""

_DIFFERENCES = """
    Differences from scikit-learn
    -----------------------------
    - Computation is float32 whatever the input dtype (float64 input is
      converted for the kernels), so `coefs_` are float32 and results agree
      with scikit-learn's float64 ones to float32 rounding, not bitwise.
    - Adam adds epsilon to sqrt(v_hat) as torch does; scikit-learn folds the
      bias correction into the step and adds epsilon to sqrt(v), which equals
      ours with epsilon * sqrt(1 - beta_2^t).  The difference matters only
      where sqrt(v_hat) is near epsilon.
    - The log-loss is computed from the logits (stable for any logit);
      scikit-learn clips probabilities to [eps, 1 - eps].
    - Not a difference: with the same `random_state`, the initial weights,
      the early-stopping split and every epoch's batches are scikit-learn's,
      so `loss_curve_` and `coefs_` follow scikit-learn's to float32 rounding
      (tests/test_sklearn.py checks this for every solver and schedule).
    - No "lbfgs" solver, no sparse input, no `sample_weight`.
    - A pickled estimator keeps the weights but not the optimizer state: a
      `partial_fit` after unpickling starts a fresh optimizer.
    - Schedules (SGD): fastnn's SGD is torch's (buf = momentum * buf + g,
      p -= lr * buf); when the learning rate changes the buffer is rescaled
      by old / new lr, which reproduces scikit-learn's velocity exactly.
"""


class MLPClassifier(ClassifierMixin, _BaseMLP):
    __doc__ = ("""Multi-layer perceptron classifier on fastnn kernels; a drop-in for
    ``sklearn.neural_network.MLPClassifier``.

    Binary targets train one logit with the binary log-loss, multiclass
    targets a softmax with the categorical log-loss, multilabel indicator
    matrices one logit per label (summed binary log-losses).  Labels may be
    of any type (``classes_``).
""" + _PARAMETERS + """    classes_ : ndarray or list of ndarray
""" + _DIFFERENCES)

    def _validate_input(self, X, y, incremental, reset):
        X, y = validate_data(self, X, y, multi_output=True, dtype=(np.float64, np.float32),
                             reset=reset)
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        if not hasattr(self, "classes_") or (not self.warm_start and not incremental):
            self._label_binarizer = LabelBinarizer()
            self._label_binarizer.fit(y)
            self.classes_ = self._label_binarizer.classes_
        else:
            classes = unique_labels(y)
            if self.warm_start:
                if set(classes) != set(self.classes_):
                    raise ValueError("warm_start can only be used where `y` has the same "
                                     "classes as in the previous call to fit. Previously got "
                                     f"{self.classes_}, `y` has {classes}")
            elif len(np.setdiff1d(classes, self.classes_, assume_unique=True)):
                raise ValueError(f"`y` has classes not in `self.classes_`. `self.classes_` has "
                                 f"{self.classes_}. 'y' has {classes}.")
        Y = self._label_binarizer.transform(y).astype(bool)
        return X, Y.reshape(len(Y), -1)

    def _out_activation(self):
        return "softmax" if self._label_binarizer.y_type_ == "multiclass" else "logistic"

    def _loss_parts(self):
        if self.out_activation_ == "softmax":
            return losses_mod.SoftmaxCrossEntropy(), 1.0, 1.0
        k = float(self.n_outputs_)  # summed over labels in sklearn, averaged in BCE
        return losses_mod.BinaryCrossEntropy(), k, k

    def _fit_targets(self, Y):
        if self.out_activation_ == "softmax":
            return Y.argmax(axis=1).astype(np.int32)
        return Y.astype(np.float32)

    def _decode_targets(self, Y):
        return self._label_binarizer.inverse_transform(Y.ravel() if Y.shape[1] == 1 else Y)

    def _proba(self, out, dtype):
        z = out.astype(np.float64)
        if self.out_activation_ == "softmax":
            e = np.exp(z - z.max(axis=1, keepdims=True))
            p = e / e.sum(axis=1, keepdims=True)
        else:
            p = 0.5 * (1.0 + np.tanh(0.5 * z))  # sigmoid without overflow
        return p.astype(dtype, copy=False)

    def _labels(self, out, dtype):
        p = self._proba(out, dtype)
        return self._label_binarizer.inverse_transform(p.ravel() if p.shape[1] == 1 else p)

    def _score_raw(self, out, dtype, y):
        return accuracy_score(y, self._labels(out, dtype))

    def partial_fit(self, X, y, classes=None):
        """One epoch over (X, y), continuing from the current state.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : array-like of shape (n_samples,) or (n_samples, n_labels)
        classes : array-like, required on the first call
            All classes that will ever appear (not needed for multilabel y).

        Returns
        -------
        self
        """
        if _check_partial_fit_first_call(self, classes):
            self._label_binarizer = LabelBinarizer()
            if type_of_target(y).startswith("multilabel"):
                self._label_binarizer.fit(y)
            else:
                self._label_binarizer.fit(classes)
        return self._partial_fit(X, y)

    def predict(self, X):
        """Predicted labels, shape (n_samples,) (or (n_samples, n_labels) multilabel)."""
        X, out = self._raw(X)
        return self._labels(out, X.dtype)

    def predict_proba(self, X):
        """Class probabilities, shape (n_samples, n_classes), in the order of
        `classes_`; dtype float32 for float32 X, float64 otherwise."""
        X, out = self._raw(X)
        p = self._proba(out, X.dtype)
        if p.shape[1] == 1:
            return np.hstack([1 - p, p])
        return p

    def predict_log_proba(self, X):
        """log(predict_proba(X))."""
        p = self.predict_proba(X)
        return np.log(p, out=p)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = True
        return tags


class MLPRegressor(RegressorMixin, _BaseMLP):
    __doc__ = ("""Multi-layer perceptron regressor on fastnn kernels; a drop-in for
    ``sklearn.neural_network.MLPRegressor`` (loss="squared_error").

    Minimises scikit-learn's half squared error with an identity output.
    `predict` returns float32 for float32 X and float64 (computed in float32)
    for any other X, as scikit-learn returns X's float dtype.
""" + _PARAMETERS + _DIFFERENCES)

    def _validate_input(self, X, y, incremental, reset):
        X, y = validate_data(self, X, y, multi_output=True, y_numeric=True,
                             dtype=(np.float64, np.float32), reset=reset)
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        return X, y.reshape(len(y), -1)

    def _out_activation(self):
        return "identity"

    def _loss_parts(self):
        # sklearn: loss 0.5 * mean over n*k, gradient (y_hat - y) / n
        return losses_mod.MSE(), 0.5, 0.5 * self.n_outputs_

    def _fit_targets(self, Y):
        return Y.astype(np.float32)

    def _decode_targets(self, Y):
        return Y.ravel() if Y.shape[1] == 1 else Y

    def _values(self, out, dtype):
        out = out.astype(dtype, copy=False)
        return out.ravel() if out.shape[1] == 1 else out

    def _score_raw(self, out, dtype, y):
        pred = self._values(out, dtype)
        if not np.all(np.isfinite(pred)):
            return np.nan
        return r2_score(y, pred)

    def partial_fit(self, X, y):
        """One epoch over (X, y), continuing from the current state.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : array-like of shape (n_samples,) or (n_samples, n_outputs)

        Returns
        -------
        self
        """
        return self._partial_fit(X, y)

    def predict(self, X):
        """Predicted values, shape (n_samples,) or (n_samples, n_outputs)."""
        X, out = self._raw(X)
        return self._values(out, X.dtype)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags


from ._search import MLPSearchCV  # noqa: E402 - the search over the estimators above
