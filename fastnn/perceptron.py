"""Rosenblatt's perceptron: one threshold unit and its mistake-driven learning rule.

The historical baseline before multilayer networks: it learns any linearly
separable binary problem (AND, OR) in finitely many updates and can never
learn XOR.  Plain numpy; it needs none of the compiled kernels.
"""

import numbers
import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning, NotFittedError

__all__ = ["Perceptron"]

# Samples examined per vectorised look-ahead in `fit` (see there).
_CHUNK = 32


def _check_X(X, name="X"):
    X = np.asarray(X)
    if X.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D array (n_samples, n_features), got shape {X.shape}")
    if X.shape[0] == 0 or X.shape[1] == 0:
        raise ValueError(f"{name}: empty array of shape {X.shape}")
    if X.dtype.kind not in "biuf":
        raise ValueError(f"{name}: expected numbers, got dtype {X.dtype}")
    X = X.astype(np.float64, copy=False)
    if not np.all(np.isfinite(X)):
        raise ValueError(f"{name}: contains NaN or infinity")
    return X


class Perceptron:
    """Binary linear classifier trained with the perceptron learning rule.

    The unit outputs ``step(x . w + b)`` with ``step(a) = 1 if a > 0 else 0``.
    Training visits the samples one by one and, for target t and output p in
    {0, 1}, applies::

        w <- w + lr * (t - p) * x
        b <- b + lr * (t - p)

    so weights move only on mistakes (by +-lr * x).  An epoch is one pass over
    the samples; training stops after the first epoch without mistakes.  By
    the perceptron convergence theorem this happens after finitely many
    updates whenever the two classes are linearly separable.  Starting from
    zero weights, `lr` only rescales w and b, so it does not change the
    predictions.

    Parameters
    ----------
    lr : float, default 1.0
        Learning rate (> 0).
    max_epochs : int, default 1000
        Stop after this many epochs even if mistakes remain.
    shuffle : bool, default True
        Visit the samples in a new random order every epoch.
    seed : int or numpy.random.Generator, optional
        Seed of the shuffling, for reproducible results.

    Attributes
    ----------
    classes_ : ndarray of shape (2,)
        The two labels seen in `fit`, sorted; ``classes_[1]`` is the class
        the unit fires for (t = 1).
    weights_ : ndarray of shape (n_features,), float64
    bias_ : float
    converged_ : bool
        True if the last epoch had no mistake.
    n_epochs_ : int
        Epochs run, including the final mistake-free one.
    errors_ : list of int
        Mistakes (updates) in each epoch.
    """

    def __init__(self, lr=1.0, max_epochs=1000, shuffle=True, seed=None):
        self.lr = lr
        self.max_epochs = max_epochs
        self.shuffle = shuffle
        self.seed = seed

    def fit(self, X, y):
        """Learn weights and bias from a binary problem.

        Parameters
        ----------
        X : array_like of shape (n_samples, n_features)
        y : array_like of shape (n_samples,)
            Exactly two distinct labels, of any type.

        Returns
        -------
        self

        Warns
        -----
        sklearn.exceptions.ConvergenceWarning
            If an epoch still had mistakes after `max_epochs` epochs
            (``converged_`` is then False); nothing is raised.
        """
        if not (isinstance(self.lr, numbers.Real) and np.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr: expected a number > 0, got {self.lr!r}")
        if isinstance(self.max_epochs, bool) or not isinstance(self.max_epochs, (int, np.integer)) \
                or self.max_epochs < 1:
            raise ValueError(f"max_epochs: expected an integer >= 1, got {self.max_epochs!r}")
        X = _check_X(X)
        y = np.asarray(y)
        if y.ndim != 1 or y.shape[0] != X.shape[0]:
            raise ValueError(f"y: expected shape ({X.shape[0]},), got {y.shape}")
        if y.dtype.kind == "f" and np.isnan(y).any():
            raise ValueError("y: contains NaN")
        classes, target = np.unique(y, return_inverse=True)
        if classes.size != 2:
            raise ValueError(f"y: the perceptron needs exactly two classes, got {classes.size}")

        n = X.shape[0]
        w = np.zeros(X.shape[1])
        b = np.zeros(1)  # an array so that _epoch can update it in place
        target = target.reshape(-1).astype(bool)
        rng = np.random.default_rng(self.seed)
        errors = []
        for _ in range(self.max_epochs):
            order = rng.permutation(n) if self.shuffle else np.arange(n)
            errors.append(self._epoch(X[order], target[order], w, b))
            if errors[-1] == 0:
                break

        self.classes_ = classes
        self.weights_ = w
        self.bias_ = float(b[0])
        self.errors_ = errors
        self.n_epochs_ = len(errors)
        self.converged_ = errors[-1] == 0
        if not self.converged_:
            warnings.warn(f"Perceptron did not converge in {self.max_epochs} epochs "
                          f"({errors[-1]} mistakes in the last); the classes may not be "
                          "linearly separable", ConvergenceWarning, stacklevel=2)
        return self

    def _epoch(self, X, target, w, b):
        """One pass of the learning rule over (X, target) in order, updating w and b in place.

        Exactly the sample-by-sample rule, but instead of one Python step per
        sample it looks ahead: it computes the outputs of the next `_CHUNK`
        samples with the current w in one product, jumps to the first
        mistake, updates, and looks ahead again from the sample after it.
        Samples before the first mistake would not have changed w, so the
        result is identical; the Python loop runs once per mistake or chunk.
        """
        n = X.shape[0]
        mistakes = 0
        start = 0
        while start < n:
            stop = min(start + _CHUNK, n)
            # The same expression as decision_function, so that a fitted
            # perceptron predicts its training points as fit last saw them.
            fired = X[start:stop] @ w + b > 0
            wrong = np.flatnonzero(fired != target[start:stop])
            if wrong.size == 0:
                start = stop
                continue
            i = start + wrong[0]
            # t - p is +1 for a missed positive, -1 for a false alarm.
            step = self.lr if target[i] else -self.lr
            w += step * X[i]
            b += step
            mistakes += 1
            start = i + 1
        return mistakes

    def _check_fitted(self, X):
        if not hasattr(self, "weights_"):
            raise NotFittedError("This Perceptron is not fitted yet; call fit first")
        X = _check_X(X)
        if X.shape[1] != self.weights_.shape[0]:
            raise ValueError(f"X has {X.shape[1]} features, the perceptron was fitted "
                             f"with {self.weights_.shape[0]}")
        return X

    def decision_function(self, X):
        """The unit's activation ``X @ weights_ + bias_``; positive means ``classes_[1]``.

        Parameters
        ----------
        X : array_like of shape (n_samples, n_features)

        Returns
        -------
        ndarray of shape (n_samples,), float64
        """
        X = self._check_fitted(X)
        return X @ self.weights_ + self.bias_

    def predict(self, X):
        """Predicted labels: ``classes_[1]`` where the activation is > 0, else ``classes_[0]``.

        Parameters
        ----------
        X : array_like of shape (n_samples, n_features)

        Returns
        -------
        ndarray of shape (n_samples,)
        """
        fires = self.decision_function(X) > 0
        return self.classes_[fires.astype(np.intp)]

    def score(self, X, y):
        """Accuracy of `predict(X)` against `y`.

        Parameters
        ----------
        X : array_like of shape (n_samples, n_features)
        y : array_like of shape (n_samples,)

        Returns
        -------
        float
        """
        from .metrics import accuracy

        return accuracy(y, self.predict(X))
