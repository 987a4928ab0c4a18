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
import scipy.sparse as sp
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin, is_classifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import accuracy_score, r2_score
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import LabelBinarizer
from sklearn.utils import check_random_state, column_or_1d
from sklearn.utils._param_validation import Interval, Options, StrOptions
from sklearn.utils.multiclass import _check_partial_fit_first_call, type_of_target, unique_labels
from sklearn.utils.class_weight import compute_class_weight
from sklearn.utils.metaestimators import available_if
from sklearn.utils.validation import _check_sample_weight, check_is_fitted, validate_data

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

_NONFINITE = ("Solver produced non-finite parameter weights. The input data may contain "
              "large values and need to be preprocessed.")
_CHUNK = 4096  # rows per forward/backward of the weighted / sparse full-batch path


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


def _per_sample(kind, z, y):
    """scikit-learn's per-sample loss and its gradient w.r.t. the output
    layer's pre-activation z (float64, unweighted, not divided by n) for
    output `kind`: softmax / logistic (log-losses from the logits, summed over
    labels), identity (squared error: half the mean over outputs, gradient
    z - y as scikit-learn back-propagates it), exp (half Poisson deviance),
    absolute (mean absolute error over outputs and its subgradient)."""
    if kind == "softmax":
        m = z.max(axis=1, keepdims=True)
        lse = m + np.log(np.exp(z - m).sum(axis=1, keepdims=True))
        loss = (y * (lse - z)).sum(axis=1)
        return loss, np.exp(z - lse) - y
    if kind == "logistic":
        loss = (np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z)))).sum(axis=1)
        return loss, 0.5 * (1.0 + np.tanh(0.5 * z)) - y
    if kind == "identity":
        e = z - y
        return 0.5 * (e * e).mean(axis=1), e
    if kind == "exp":
        mu = np.exp(z)
        with np.errstate(divide="ignore", invalid="ignore"):
            ylogy = np.where(y > 0, y * np.log(np.where(y > 0, y, 1.0)), 0.0)
        return (ylogy - y * z - y + mu).sum(axis=1), mu - y
    if kind == "absolute":
        e = z - y
        return np.abs(e).mean(axis=1), np.sign(e) / z.shape[1]
    raise ValueError(kind)


class _Batches:
    """Loss and gradient of rows of (X, Y) computed layer by layer (the
    model's forward / backward kernels, the loss in numpy, float64): the
    path for what the compiled epoch does not do -- per-sample weights,
    sparse X (each batch's rows densified as they are gathered; X is never
    densified whole), the Poisson loss.  ``trainer`` and ``compiled`` make
    it look like an EpochRunner to MLPSearchCV's driver."""

    compiled = False

    def __init__(self, est, X, Y, sw, batch_size=None):
        self.est, self.model = est, est._model
        self.k = kernels.get(self.model.backend)
        self.X = X.tocsr() if sp.issparse(X) and X.format != "csr" else X
        self.Y = np.asarray(Y, np.float64)
        self.sw = None if sw is None else np.asarray(sw, np.float64)
        self.n = self.X.shape[0]
        self.batch_size = batch_size
        self.kind = est._output_kind()
        self.alpha = float(est.alpha)
        self.trainer = getattr(est, "_trainer", None)
        self.weights = [(i, off, shape) for i, name, shape, off in self.model._layout
                        if name == "weight"]

    def _forward_backward(self, rows, sw_sum):
        """Sum over `rows` of the weighted per-sample losses; model.grads
        gets the gradient of that sum / sw_sum (no L2 term)."""
        xb = self.X[rows]
        xb = xb.toarray() if sp.issparse(xb) else xb
        xb = np.ascontiguousarray(xb, self.model.dtype)
        if not np.isfinite(xb).all():
            raise FloatingPointError("X overflows the model's dtype")
        out = self.model.forward(self.k.asarray(xb, self.model.dtype), training=True)
        z = np.asarray(self.k.to_numpy(out), np.float64).reshape(len(xb), -1)
        with np.errstate(over="ignore", invalid="ignore"):
            loss, delta = _per_sample(self.kind, z, self.Y[rows])
            if self.sw is not None:
                w = self.sw[rows]
                loss = loss * w
                delta = delta * w[:, None]
            total = float(loss.sum())
        if not np.isfinite(total):
            return total
        delta /= sw_sum
        self.model.backward(self.k.asarray(np.ascontiguousarray(delta, self.model.dtype),
                                           self.model.dtype))
        return total

    def _l2_value(self, flat, sw_sum):
        if not self.alpha:
            return 0.0
        sq = sum(float(np.dot(w, w)) for w in
                 (flat[off:off + int(np.prod(s))] for _, off, s in self.weights))
        return 0.5 * self.alpha * sq / sw_sum

    def loss_grad(self, flat):
        """(loss, gradient) over all rows at the float64 flat parameter
        vector `flat` (the model's buffer layout): the L-BFGS objective."""
        self.model.set_params(flat)
        sw_sum = float(self.n if self.sw is None else self.sw.sum())
        grad = np.zeros(self.model.size)
        total = 0.0
        for lo in range(0, self.n, _CHUNK):
            part = self._forward_backward(slice(lo, min(lo + _CHUNK, self.n)), sw_sum)
            total += part
            if not np.isfinite(part):
                return np.inf, grad
            grad += self.k.to_numpy(self.model.grads)
        value = total / sw_sum + self._l2_value(flat, sw_sum)
        if self.alpha:
            for _, off, s in self.weights:
                size = int(np.prod(s))
                grad[off:off + size] += self.alpha / sw_sum * flat[off:off + size]
        return value, grad

    def __call__(self, order):
        """One epoch of mini-batch steps in `order` (None: in order); the
        mean batch loss, as scikit-learn averages it (by batch length)."""
        rows = np.arange(self.n) if order is None else np.asarray(order)
        opt, model, k = self.trainer.optimizer, self.model, self.k
        penalized = model.penalized()
        total = 0.0
        for lo in range(0, self.n, self.batch_size):
            idx = rows[lo:lo + self.batch_size]
            sw_sum = float(len(idx) if self.sw is None else self.sw[idx].sum())
            value = self._forward_backward(idx, sw_sum) / sw_sum
            if self.alpha:
                value += 0.5 * self.alpha / sw_sum * sum(
                    k.sum_squares(W.reshape(-1)) for W, _ in penalized)
            if not np.isfinite(value):
                raise FloatingPointError(f"loss became {value}")
            if self.alpha:
                for W, dW in penalized:
                    k.axpy(dW.reshape(-1), W.reshape(-1), self.alpha / sw_sum)
            opt.step(model.params, model.grads)
            total += value * len(idx)
        return total / self.n


def _denormal_flush(model):
    """flush(on) -> previous: denormals flushed to zero around L-BFGS's
    full-batch epoch on the c and numba backends (float32).  Near a minimum
    the softmax's probabilities of the wrong classes underflow below 1.2e-38
    and every product of the backward pass with them takes the CPU's slow
    denormal path: measured 2.5 ms -> 47 ms per evaluation on digits
    (64-100-10).  Flushed values change the gradient by less than float32
    shows; scipy's own arithmetic between evaluations is not affected."""
    if model.dtype == np.float32 and model.backend in ("c", "numba"):
        try:
            return kernels.get("c").flush_denormals
        except Exception:  # noqa: BLE001 - no C extension: keep denormals
            pass
    return lambda on: False


class _OptimizerView:
    """``est._optimizer``: the learning rate scikit-learn's private optimizer
    object shows (read-only)."""

    def __init__(self, optimizer):
        self._opt = optimizer

    @property
    def learning_rate(self):
        return self._opt.lr


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
        "dtype": "no_validation",  # checked by _check_dtype
        "backend": [None, StrOptions(set(kernels.BACKENDS))],
    }
    _REAL_PARAMS = ("alpha", "learning_rate_init", "power_t", "tol", "momentum",
                    "validation_fraction", "beta_1", "beta_2", "epsilon")

    def _set(self, args):
        for key, value in args.items():
            if key not in ("self", "__class__"):
                setattr(self, key, value)

    # ---- public API ---------------------------------------------------------

    def fit(self, X, y, sample_weight=None):
        """Fit the network to X and y.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            CSR / CSC matrices are densified a batch at a time.
        y : array-like of shape (n_samples,) or (n_samples, n_outputs)
            Class labels (classifier; a 2-D indicator matrix for multilabel)
            or real targets (regressor).
        sample_weight : array-like of shape (n_samples,), default=None
            Weights of the per-sample losses (and their gradients): a batch's
            loss is sum(w * loss) / sum(w), its L2 term alpha / (2 sum(w)).

        Returns
        -------
        self
        """
        return self._fit(X, y, sample_weight, incremental=False)

    def _partial_fit(self, X, y, sample_weight=None):
        if self.early_stopping:
            raise ValueError("partial_fit does not support early_stopping=True")
        return self._fit(X, y, sample_weight, incremental=True)

    def set_params(self, **params):
        """scikit-learn's set_params, refusing a NaN or infinite value of a
        real parameter at once (nothing is changed then).  Other invalid
        values are refused by fit, as scikit-learn's conventions ask
        (set_params must accept what fit validates)."""
        for key, value in params.items():
            if (key in self._REAL_PARAMS and isinstance(value, numbers.Real)
                    and not isinstance(value, bool) and not np.isfinite(value)):
                raise ValueError(f"set_params: {key} must be finite, got {value!r}")
        return super().set_params(**params)

    def _check_solver(self):
        if self.solver not in ("sgd", "adam"):
            raise AttributeError("partial_fit is only available for stochastic optimizers. "
                                 f"{self.solver} is not stochastic.")
        return True

    @property
    def _optimizer(self):
        trainer = self.__dict__.get("_trainer")
        if trainer is None or self.solver == "lbfgs":
            raise AttributeError("_optimizer: only after fitting with solver 'sgd' or 'adam'")
        return _OptimizerView(trainer.optimizer)

    # ---- fitting -----------------------------------------------------------------

    def _check_params(self):
        self._validate_params()
        for name in self._REAL_PARAMS:
            if not np.isfinite(getattr(self, name)):
                raise ValueError(f"The {name!r} parameter must be finite, got "
                                 f"{getattr(self, name)!r}")
        self._dtype()
        sizes = self.hidden_layer_sizes
        sizes = list(sizes) if hasattr(sizes, "__iter__") else [sizes]
        if any(isinstance(s, bool) or not isinstance(s, numbers.Integral) or s <= 0
               for s in sizes):
            raise ValueError(f"hidden_layer_sizes must be positive integers, got {sizes}.")
        return [int(s) for s in sizes]

    def _dtype(self):
        """The compute dtype (float32, or float64 on the reference backend)."""
        try:
            dtype = np.dtype(self.dtype)
        except TypeError:
            dtype = None
        if dtype not in (np.float32, np.float64):
            raise ValueError(f"The 'dtype' parameter must be np.float32 or np.float64, "
                             f"got {self.dtype!r}")
        if dtype == np.float64 and self.backend not in (None, "reference"):
            raise ValueError("dtype=np.float64 is computed by the 'reference' backend only, "
                             f"not backend={self.backend!r}")
        return dtype

    def _backend(self):
        if self._dtype() == np.float64:
            return "reference"
        return self.backend or kernels.get_backend()

    def _fit(self, X, y, sample_weight, incremental):
        hidden = self._check_params()
        first_pass = not hasattr(self, "coefs_") or (not self.warm_start and not incremental)
        X, Y = self._validate_input(X, y, incremental, reset=first_pass)
        dtype = self._dtype()
        if sp.issparse(X):
            if not np.isfinite(X.data.astype(dtype)).all():
                raise ValueError(_NONFINITE)
        else:
            X = np.ascontiguousarray(X, dtype)
            if not np.isfinite(X).all():  # finite input that overflows float32
                raise ValueError(_NONFINITE)
        sw = self._sample_weights(X, Y, sample_weight, incremental)
        rs = check_random_state(self.random_state)
        if first_pass:
            self._initialize(Y, [X.shape[1]] + hidden + [Y.shape[1]], rs)
        else:
            if Y.shape[1] != self.n_outputs_:
                raise ValueError(f"y has {Y.shape[1]} outputs, the fitted network has "
                                 f"{self.n_outputs_}")
            self._sync_model()
        if self.solver == "lbfgs":
            self._fit_lbfgs(X, Y, sw)
        else:
            if not incremental or getattr(self, "_trainer", None) is None:
                self._trainer = self._make_trainer()
            for key, value in (("loss_curve_", []), ("t_", 0), ("_no_improvement_count", 0)):
                if not hasattr(self, key):
                    setattr(self, key, value)
            if not hasattr(self, "best_loss_"):
                self.best_loss_ = None if self.early_stopping else np.inf
            _drive(self._epochs(X, Y, rs, incremental, sw=sw))
        if not all(np.isfinite(a).all() for a in self.coefs_ + self.intercepts_):
            raise ValueError(_NONFINITE)
        return self

    def _sample_weights(self, X, Y, sample_weight, incremental):
        """The per-sample weights (sample_weight times class_weight), float64,
        or None when there are none."""
        sw = None
        if sample_weight is not None:
            sw = _check_sample_weight(sample_weight, X, dtype=np.float64)
            if (sw < 0).any():
                raise ValueError("sample_weight: must be non-negative")
            if not sw.sum() > 0:
                raise ValueError("sample_weight: must not sum to zero")
        cw = self._class_weights(Y, incremental)
        if cw is not None:
            sw = cw if sw is None else sw * cw
        return sw

    def _class_weights(self, Y, incremental):
        return None

    def _fit_epochs(self, X, y, plan=False, shared=None):
        """fit as a generator of epochs (MLPSearchCV trains banks of
        estimators this way, their epochs in one kernel call): see _epochs.
        `shared`: a dict the unfitted estimators of one bank, fitted on the
        same X and y, share, so that X and y are validated once a bank (see
        _validated), not once an estimator."""
        hidden = self._check_params()
        if (sp.issparse(X) or self.solver == "lbfgs" or getattr(self, "loss", None) == "poisson"
                or getattr(self, "class_weight", None) is not None):
            self._fit(X, y, None, incremental=False)  # not a compiled epoch: fit alone
            return iter(())
        X, Y = self._validated(X, y, shared)
        rs = check_random_state(self.random_state)
        self._initialize(Y, [X.shape[1]] + hidden + [Y.shape[1]], rs)
        self._trainer = self._make_trainer()
        return self._epochs(X, Y, rs, False, plan)

    def _validated(self, X, y, shared=None):
        """_fit_epochs' X (C-contiguous, of the compute dtype, finite) and Y,
        from _validate_input for a fresh fit.  With `shared` (a dict), the
        result is kept there for the next estimator of the same class, dtype
        and loss, which takes X and Y as they are (they are only read) and
        a copy of the attributes validation set (n_features_in_,
        feature_names_in_, classes_, the label binarizer)."""
        key = (type(self), self._dtype(), getattr(self, "loss", None))
        if shared is not None and key in shared:
            X, Y, attrs = shared[key]
            for name, value in copy.deepcopy(attrs).items():
                setattr(self, name, value)
            return X, Y
        before = dict(vars(self))
        X, Y = self._validate_input(X, y, False, reset=True)
        X = np.ascontiguousarray(X, self._dtype())
        if not np.isfinite(X).all():
            raise ValueError(_NONFINITE)
        after = vars(self)
        if shared is not None and set(before) <= set(after):  # (nothing deleted: a fresh clone)
            shared[key] = (X, Y, {k: v for k, v in after.items()
                                  if k not in before or before[k] is not v})
        return X, Y

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
        factor = 2.0 if self.activation == "logistic" else 6.0
        coefs, intercepts = [], []
        for fan_in, fan_out in zip(layer_units, layer_units[1:]):
            bound = np.sqrt(factor / (fan_in + fan_out))
            coefs.append(rs.uniform(-bound, bound, (fan_in, fan_out)))
            intercepts.append(rs.uniform(-bound, bound, fan_out))
        self.coefs_, self.intercepts_ = coefs, intercepts
        self._model = None
        self._rebuild()
        self._best_params = self._model.get_params()
        if self.solver in ("sgd", "adam"):
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
        self._views = (list(self.coefs_), list(self.intercepts_))

    def _sync_model(self):
        """coefs_ / intercepts_ are the source of truth: make the model compute
        with whatever they hold (arrays the user assigned are copied into the
        model's buffer, so optimizer state survives; a different architecture
        rebuilds the model)."""
        model = self.__dict__.get("_model")
        views = self.__dict__.get("_views")
        coefs, intercepts = list(self.coefs_), list(self.intercepts_)
        if (model is not None and views is not None and isinstance(model.params, np.ndarray)
                and len(coefs) == len(views[0]) and len(intercepts) == len(views[1])
                and all(a is b for a, b in zip(coefs + intercepts, views[0] + views[1]))):
            return  # the user's arrays are the model's buffer
        if len(coefs) != len(intercepts) or not coefs:
            raise ValueError("coefs_ and intercepts_ must be lists of the same non-zero length")
        coefs = [np.asarray(W) for W in coefs]
        intercepts = [np.asarray(b).reshape(-1) for b in intercepts]
        for i, (W, b) in enumerate(zip(coefs, intercepts)):
            if W.ndim != 2 or b.shape != (W.shape[1],) or (
                    i and W.shape[0] != coefs[i - 1].shape[1]):
                raise ValueError(f"coefs_[{i}] {W.shape} / intercepts_[{i}] {b.shape} do not "
                                 "chain into a network")
        dense = ([layer for layer in model.layers if isinstance(layer, Dense)]
                 if model is not None else [])
        if model is None or [layer.weight.shape for layer in dense] != [W.shape for W in coefs]:
            self.coefs_, self.intercepts_ = coefs, intercepts
            self._rebuild()
            return
        flat = model.get_params()
        for layer_off, (W, b) in zip(self._dense_offsets(model), zip(coefs, intercepts)):
            (wo, ws), (bo, bs) = layer_off
            flat[wo:wo + ws] = W.reshape(-1)
            flat[bo:bo + bs] = b
        model.set_params(flat)
        self._sync_attributes()

    @staticmethod
    def _dense_offsets(model):
        offs = {}
        for i, name, shape, off in model._layout:
            offs.setdefault(i, {})[name] = (off, int(np.prod(shape)))
        return [(offs[i]["weight"], offs[i]["bias"]) for i in sorted(offs)]

    def _objective(self):
        base, value_scale, grad_scale = self._loss_parts()
        return type(base)(value_scale=value_scale, grad_scale=grad_scale)

    def _make_trainer(self):
        objective = self._objective()
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

    def _compiled_ok(self, X, sw):
        """Whether the compiled epoch computes this objective: dense X, a
        loss fastnn's kernels have, and no weights or equal ones (equal
        weights c are the unweighted objective with alpha / c)."""
        if sp.issparse(X) or self._output_kind() == "exp":
            return None
        if sw is None:
            return 1.0
        c = float(sw[0]) if len(sw) else 1.0
        return c if c > 0 and np.all(sw == c) else None

    def _fit_lbfgs(self, X, Y, sw):
        """scipy's L-BFGS-B over the flat parameter buffer, as scikit-learn's
        _fit_lbfgs (maxiter=max_iter, maxfun=max_fun, gtol=tol).  The loss and
        gradient over all samples are one compiled-epoch kernel call (a
        full-batch epoch whose update is SGD with lr=0, which leaves the
        parameters as they are) when _compiled_ok; else _Batches.loss_grad."""
        import scipy.optimize

        model = self._model
        loss_grad = self._lbfgs_objective(X, Y, sw)
        callback = None
        if self.verbose:
            count = [0]

            def callback(intermediate_result):
                count[0] += 1
                print("Iteration %d, loss = %.8f" % (count[0], intermediate_result.fun))
        res = scipy.optimize.minimize(
            loss_grad, model.get_params().astype(np.float64), method="L-BFGS-B", jac=True,
            callback=callback,
            options={"maxfun": self.max_fun, "maxiter": self.max_iter, "gtol": self.tol})
        self.n_iter_ = min(int(res.nit), self.max_iter)
        self.loss_ = float(res.fun)
        model.set_params(res.x)
        self._sync_attributes()
        if res.status != 0:
            msg = res.message.decode() if isinstance(res.message, bytes) else str(res.message)
            text = (f"lbfgs failed to converge after {self.n_iter_} iteration(s) "
                    f"(status={res.status}):\n{msg}\n")
            if self.n_iter_ == self.max_iter:
                text += ("\nIncrease the number of iterations to improve the convergence "
                         f"(max_iter={self.max_iter}).")
            warnings.warn(text, ConvergenceWarning, stacklevel=4)

    def _lbfgs_objective(self, X, Y, sw):
        """L-BFGS's objective: a function of the float64 flat parameter
        vector (the model's buffer layout) returning (loss, gradient) over
        all samples, L2 term included; it leaves the model's parameters at
        that vector."""
        model = self._model
        c = self._compiled_ok(X, sw)
        if c is not None:
            trainer = Trainer(model, self._objective(), optim_mod.SGD(lr=0.0),
                              backend=model.backend, l2=float(self.alpha) / c)
            run = trainer.epoch_runner(X, self._fit_targets(Y), X.shape[0])
            k = kernels.get(model.backend)
            flush = _denormal_flush(model)

            def loss_grad(flat):
                model.set_params(flat)
                before = flush(True)
                try:
                    value = run(None)
                except FloatingPointError:
                    return np.inf, np.zeros(model.size)
                finally:
                    flush(before)
                return value, np.array(k.to_numpy(model.grads), np.float64)  # a copy
            return loss_grad
        return _Batches(self, X, Y, sw).loss_grad

    def _loss_grad_lbfgs(self, packed_coef_inter, X, y, sample_weight=None, *buffers):
        """scikit-learn's private objective of L-BFGS, in its packing (every
        coefs_ raveled, then every intercepts_): (loss, gradient), computed
        in float64 on the reference backend whatever `dtype` (a check of the
        formulas, not the training path)."""
        shapes = [W.shape for W in self.coefs_]
        coefs, intercepts, start = [], [], 0
        for s in shapes:
            coefs.append(packed_coef_inter[start:start + s[0] * s[1]].reshape(s))
            start += s[0] * s[1]
        for s in shapes:
            intercepts.append(packed_coef_inter[start:start + s[1]])
            start += s[1]
        probe = self.__dict__.get("_lbfgs_probe")
        if probe is None or [W.shape for W in probe.coefs_] != shapes:
            probe = copy.copy(self)
            probe.__dict__.update(coefs_=coefs, intercepts_=intercepts, _model=None,
                                  _trainer=None, dtype=np.float64, backend="reference")
            probe._rebuild()
            self._lbfgs_probe = probe
        else:
            probe.coefs_, probe.intercepts_ = coefs, intercepts
            probe._sync_model()
        Y = np.asarray(y, np.float64).reshape(len(y), -1)
        value, flat_grad = _Batches(probe, X, Y, sample_weight).loss_grad(
            probe._model.get_params())
        grads = [[], []]
        for (wo, ws), (bo, bs) in self._dense_offsets(probe._model):
            grads[0].append(flat_grad[wo:wo + ws])
            grads[1].append(flat_grad[bo:bo + bs])
        return value, np.concatenate(grads[0] + grads[1])

    def _epochs(self, X, Y, rs, incremental, plan=False, sw=None):
        """scikit-learn's _fit_stochastic as a generator: for each epoch it
        yields (runner, order) -- the trainer's EpochRunner (or _Batches)
        and the epoch permutation scikit-learn would draw from `rs` -- and
        receives the epoch's mean loss (or, thrown in, the runner's
        FloatingPointError), then applies scikit-learn's end-of-epoch rules.
        A non-finite loss is scikit-learn's divergence: the weights become
        NaN, the remaining epochs record NaN losses (and validation scores),
        early stopping restores the best weights, and _fit fails if the
        final weights are not finite.  _drive runs it."""
        sw_val = None
        if self.early_stopping:
            stratify = Y if (is_classifier(self) and self.n_outputs_ == 1) else None
            parts = train_test_split(X, Y, *([] if sw is None else [sw]), random_state=rs,
                                     test_size=self.validation_fraction, stratify=stratify)
            X, X_val, Y, Y_val = parts[:4]
            if sw is not None:
                sw, sw_val = parts[4:]
            if X_val.shape[0] < 2:
                raise ValueError("The validation set is too small. Increase "
                                 "'validation_fraction' or the size of your dataset.")
            self._val = (X_val, self._decode_targets(Y_val), sw_val)
        n = self._n_train = X.shape[0]
        if self.batch_size == "auto":
            batch_size = min(200, n)
        else:
            if self.batch_size > n:
                warnings.warn("Got `batch_size` less than 1 or larger than sample size. "
                              "It is going to be clipped", stacklevel=3)
            batch_size = int(np.clip(self.batch_size, 1, n))
        self.n_iter_ = 0
        c = self._compiled_ok(X, sw)
        if c is not None:
            self._trainer.l2 = float(self.alpha) / c
            run_epoch = self._trainer.epoch_runner(X, self._fit_targets(Y), batch_size, plan)
        else:
            run_epoch = _Batches(self, X, Y, sw, batch_size)
        order = np.arange(n)
        stopped = diverged = False
        try:
            for _ in range(1 if incremental else self.max_iter):
                if self.shuffle:
                    # sklearn's permutation from rs, hence its batches: what
                    # sklearn.utils.shuffle(order, random_state=rs) computes,
                    # without its argument validation (~0.5 ms an epoch)
                    perm = np.arange(n)
                    rs.shuffle(perm)
                    order = order[perm]
                if diverged:
                    loss = np.nan
                else:
                    try:  # (one batch of all rows: in order, as the sum is the same)
                        loss = yield run_epoch, (order if self.shuffle and batch_size < n
                                                 else None)
                    except FloatingPointError:
                        diverged, loss = True, np.nan
                        self._model.set_params(np.full(self._model.size, np.nan))
                stopped = self._end_of_epoch(loss)
                if stopped:
                    break
        finally:
            self._val = None
        if not incremental and not stopped and self.n_iter_ == self.max_iter:
            warnings.warn(f"Stochastic Optimizer: Maximum iterations ({self.max_iter}) reached "
                          "and the optimization hasn't converged yet.", ConvergenceWarning,
                          stacklevel=3)
        if self.early_stopping:
            self._model.set_params(self._best_params)
        self._sync_attributes()
        if diverged and not all(np.isfinite(a).all() for a in self.coefs_ + self.intercepts_):
            raise ValueError(_NONFINITE)

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
            X_val, y_val, sw_val = self._val
            score = float(self._score_raw(self._predict_raw(X_val), X_val.dtype, y_val, sw_val))
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
        """Validated X and the network's raw outputs (logits / values)."""
        check_is_fitted(self)
        X = validate_data(self, X, accept_sparse=["csr", "csc"],
                          dtype=(np.float64, np.float32), reset=False)
        return X, self._predict_raw(X)

    def _predict_raw(self, X, batch_size=1024):
        """The network's raw outputs for X (dense or sparse, rows densified
        a batch at a time), in the model's dtype; from coefs_ / intercepts_."""
        if self.__dict__.get("_model") is None:  # unpickled or assigned: build from coefs_
            self._rebuild()
        else:
            self._sync_model()
        model = self._model
        k = kernels.get(model.backend)
        if not sp.issparse(X):
            return model.predict(np.asarray(X), batch_size=batch_size)
        X = X.tocsr()
        out = np.empty((X.shape[0],) + model.output_shape, model.dtype)
        for lo in range(0, X.shape[0], batch_size):
            xb = np.ascontiguousarray(X[lo:lo + batch_size].toarray(), model.dtype)
            out[lo:lo + batch_size] = k.to_numpy(model.forward(k.asarray(xb, model.dtype)))
        return out

    def _rebuild(self):
        """The model from coefs_ / intercepts_ (in the estimator's dtype, on
        its backend); a fresh optimizer at the next fit."""
        layers = []
        n_dense = len(self.coefs_)
        coefs = [np.asarray(W) for W in self.coefs_]
        intercepts = [np.asarray(b).reshape(-1) for b in self.intercepts_]
        for i, W in enumerate(coefs):
            act = _ACTIVATIONS[self.activation] if i < n_dense - 1 else None
            layers.append(Dense(W.shape[0], W.shape[1], activation=act))
        dtype = self._dtype()
        model = Sequential(layers, seed=0, backend="reference", dtype=dtype)
        for layer, W, b in zip(layers, coefs, intercepts):
            layer.weight[...] = W
            layer.bias[...] = b
        self._model = model if dtype == np.float64 else model.to(self._backend())
        self._trainer = None
        self._sync_attributes()

    def __getstate__(self):
        state = dict(super().__getstate__())  # object's is the live __dict__
        for key in ("_model", "_trainer", "_val", "_views", "_lbfgs_probe"):
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
        tags.input_tags.sparse = True
        return tags


_PARAMETERS = """
    Parameters
    ----------
    hidden_layer_sizes : array-like of int, default=(100,)
        Units of each hidden layer.
    activation : {"identity", "logistic", "tanh", "relu"}, default="relu"
        Hidden-layer activation (fused into the dense kernels).
    solver : {"lbfgs", "sgd", "adam"}, default="adam"
        "lbfgs": scipy's L-BFGS-B over the flat parameter buffer (maxiter =
        max_iter, maxfun = max_fun, gtol = tol), the loss and gradient over
        all samples in one compiled-epoch kernel call (layer by layer for
        per-sample weights, sparse X or the Poisson loss); no partial_fit.
    alpha : float, default=0.0001
        L2 penalty ``alpha / (2 n) * sum(W^2)`` on the weights (not the
        intercepts), n the batch size (the batch's sum of sample weights).
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
        Maximum number of loss evaluations of L-BFGS.
    dtype : np.float32 (default) or np.float64
        The compute dtype (of coefs_ and intercepts_ too).  float64 runs on
        the reference backend (numpy, slow, exact to float64).
    backend : str or None, default=None
        fastnn kernel backend ("c", "numba", "cuda", "reference"); None is
        :func:`fastnn.get_backend` at fit time.

    Attributes
    ----------
    coefs_, intercepts_ : list of ndarray, of `dtype`
        Weights (n_in, n_out) and intercepts of each layer, and the source of
        truth: on host backends views into the network's parameter buffer;
        arrays assigned to them (or to their elements) are what predict and
        the next fit / partial_fit compute with.
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
    - Computation is float32 (unless dtype=np.float64) whatever the input
      dtype, so `coefs_` are float32 and results agree with scikit-learn's
      float64 ones to float32 rounding, not bitwise.  Finite float64 input
      that overflows float32 fails with scikit-learn's "non-finite parameter
      weights" error.
    - A non-finite loss is scikit-learn's divergence: the weights become NaN
      at once (scikit-learn reaches NaN within a few steps), the remaining
      epochs record NaN losses and validation scores, early stopping
      restores the best weights, and otherwise fit raises ValueError.
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
    - The weighted loss is sum(w l) / sum(w) per batch, as scikit-learn's;
      equal weights c train exactly as no weights with alpha / c.
    - A full batch (batch_size >= n_samples) is summed in row order whatever
      the shuffle, so fit and repeated partial_fit agree to the last bit.
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

    ``class_weight`` (dict, "balanced" or None, default None; not in
    scikit-learn's MLPClassifier) multiplies sample_weight by the weight of
    each sample's class: {label: weight} (missing labels weigh 1) or
    "balanced", n_samples / (n_classes * bincount(y)) of the y given to fit
    ("balanced" is refused by partial_fit; multilabel y refuses both).
""" + _PARAMETERS + """    classes_ : ndarray or list of ndarray
""" + _DIFFERENCES)

    _parameter_constraints = {
        **_BaseMLP._parameter_constraints,
        "class_weight": [dict, StrOptions({"balanced"}), None],
    }

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, solver="adam",
                 alpha=0.0001, batch_size="auto", learning_rate="constant",
                 learning_rate_init=0.001, power_t=0.5, max_iter=200, shuffle=True,
                 random_state=None, tol=1e-4, verbose=False, warm_start=False, momentum=0.9,
                 nesterovs_momentum=True, early_stopping=False, validation_fraction=0.1,
                 beta_1=0.9, beta_2=0.999, epsilon=1e-8, n_iter_no_change=10, max_fun=15000,
                 class_weight=None, dtype=np.float32, backend=None):
        self._set(locals())

    def _validate_input(self, X, y, incremental, reset):
        X, y = validate_data(self, X, y, accept_sparse=["csr", "csc"], multi_output=True,
                             dtype=(np.float64, np.float32), reset=reset)
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

    def _class_weights(self, Y, incremental):
        """Per-sample weights from class_weight (None without it)."""
        cw = self.class_weight
        if cw is None:
            return None
        if self._label_binarizer.y_type_.startswith("multilabel"):
            raise ValueError("class_weight is not supported for multilabel targets")
        if isinstance(cw, str) and incremental:
            raise ValueError("class_weight='balanced' is not supported for partial_fit (the "
                             "class frequencies of one call are not the data's); pass a dict")
        classes = np.asarray(self.classes_)
        idx = Y.argmax(axis=1) if Y.shape[1] > 1 else Y[:, 0].astype(np.intp)
        if isinstance(cw, dict):
            unknown = [c for c in cw if c not in set(classes.tolist())]
            if unknown:
                raise ValueError(f"class_weight: classes {unknown} are not in classes_ "
                                 f"{classes}")
            per_class = np.array([float(cw.get(c, 1.0)) for c in classes.tolist()])
            if not (np.isfinite(per_class).all() and (per_class >= 0).all()):
                raise ValueError("class_weight: weights must be finite and non-negative")
        else:
            per_class = compute_class_weight("balanced", classes=classes, y=classes[idx])
        return per_class[idx]

    def _out_activation(self):
        return "softmax" if self._label_binarizer.y_type_ == "multiclass" else "logistic"

    def _output_kind(self):
        return self.out_activation_

    def _loss_parts(self):
        if self.out_activation_ == "softmax":
            return losses_mod.SoftmaxCrossEntropy(), 1.0, 1.0
        k = float(self.n_outputs_)  # summed over labels in sklearn, averaged in BCE
        return losses_mod.BinaryCrossEntropy(), k, k

    def _fit_targets(self, Y):
        if self.out_activation_ == "softmax":
            return Y.argmax(axis=1).astype(np.int32)
        return Y.astype(self._dtype())

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

    def _score_raw(self, out, dtype, y, sample_weight=None):
        return accuracy_score(y, self._labels(out, dtype), sample_weight=sample_weight)

    @available_if(_BaseMLP._check_solver)
    def partial_fit(self, X, y, sample_weight=None, classes=None):
        """One epoch over (X, y), continuing from the current state.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
        y : array-like of shape (n_samples,) or (n_samples, n_labels)
        sample_weight : array-like of shape (n_samples,), default=None
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
        return self._partial_fit(X, y, sample_weight)

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
    ``sklearn.neural_network.MLPRegressor``.

    loss="squared_error" (default) minimises scikit-learn's half squared
    error with an identity output; "poisson" the half Poisson deviance with
    an exp output (predictions exp(z) > 0, targets >= 0); "absolute_error"
    (not in scikit-learn) the mean absolute error, identity output.
    `predict` returns float32 for float32 X and float64 (computed in the
    estimator's dtype) for any other X, as scikit-learn returns X's float
    dtype.
""" + _PARAMETERS + _DIFFERENCES)

    _parameter_constraints = {
        **_BaseMLP._parameter_constraints,
        "loss": [StrOptions({"squared_error", "poisson", "absolute_error"})],
    }

    def __init__(self, loss="squared_error", hidden_layer_sizes=(100,), activation="relu", *,
                 solver="adam", alpha=0.0001, batch_size="auto", learning_rate="constant",
                 learning_rate_init=0.001, power_t=0.5, max_iter=200, shuffle=True,
                 random_state=None, tol=1e-4, verbose=False, warm_start=False, momentum=0.9,
                 nesterovs_momentum=True, early_stopping=False, validation_fraction=0.1,
                 beta_1=0.9, beta_2=0.999, epsilon=1e-8, n_iter_no_change=10, max_fun=15000,
                 dtype=np.float32, backend=None):
        self._set(locals())

    def _validate_input(self, X, y, incremental, reset):
        X, y = validate_data(self, X, y, accept_sparse=["csr", "csc"], multi_output=True,
                             y_numeric=True, dtype=(np.float64, np.float32), reset=reset)
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        if self.loss == "poisson" and (y < 0).any():
            raise ValueError("loss='poisson' needs non-negative targets y")
        return X, y.reshape(len(y), -1)

    def _out_activation(self):
        return "exp" if self.loss == "poisson" else "identity"

    def _output_kind(self):
        return {"poisson": "exp", "absolute_error": "absolute"}.get(self.loss, "identity")

    def _loss_parts(self):
        if self.loss == "absolute_error":  # mean |e| over n*k, sign(e) / (n k)
            return losses_mod.MAE(), 1.0, 1.0
        # sklearn: loss 0.5 * mean over n*k, gradient (y_hat - y) / n
        return losses_mod.MSE(), 0.5, 0.5 * self.n_outputs_

    def _fit_targets(self, Y):
        return Y.astype(self._dtype())

    def _decode_targets(self, Y):
        return Y.ravel() if Y.shape[1] == 1 else Y

    def _values(self, out, dtype):
        out = out.astype(dtype, copy=False)
        if self.loss == "poisson":
            with np.errstate(over="ignore"):
                out = np.exp(out)
        return out.ravel() if out.shape[1] == 1 else out

    def _score_raw(self, out, dtype, y, sample_weight=None):
        pred = self._values(out, dtype)
        if not np.all(np.isfinite(pred)):
            return np.nan
        return r2_score(y, pred, sample_weight=sample_weight)

    @available_if(_BaseMLP._check_solver)
    def partial_fit(self, X, y, sample_weight=None):
        """One epoch over (X, y), continuing from the current state.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
        y : array-like of shape (n_samples,) or (n_samples, n_outputs)
        sample_weight : array-like of shape (n_samples,), default=None

        Returns
        -------
        self
        """
        return self._partial_fit(X, y, sample_weight)

    def predict(self, X):
        """Predicted values, shape (n_samples,) or (n_samples, n_outputs)."""
        X, out = self._raw(X)
        return self._values(out, X.dtype)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags


from ._search import MLPSearchCV  # noqa: E402 - the search over the estimators above
