"""Losses on the model's raw outputs, means over the batch as torch's defaults.

The two cross-entropies take logits and fuse the sigmoid/softmax, like
torch's BCEWithLogitsLoss and CrossEntropyLoss: stable for any logit.

A loss is used in three steps per batch: ``targets(y, output_shape)`` once
per data set (validation and conversion, on the host), ``forward(out, t)``
returning the batch loss, and ``backward()`` returning the gradient w.r.t.
``out`` in a buffer the loss owns.
"""

import numpy as np


def _finite(name, y):
    if np.dtype(y.dtype).kind == "f" and not np.all(np.isfinite(y)):
        raise ValueError(f"{name}: contains NaN or Inf")


class Loss:
    """Base class; subclasses name their kernels.

    Parameters
    ----------
    value_scale : float
        Multiplies the reported loss.
    grad_scale : float or None
        Multiplies the gradient (default: value_scale).  The two differ only
        to follow another library's convention (scikit-learn reports half the
        MSE but back-propagates the gradient of a sum over outputs).
    """

    name = None
    classification = False

    def __init__(self, value_scale=1.0, grad_scale=None):
        self._k = None
        self._bufs = {}
        self.value_scale = float(value_scale)
        self.grad_scale = self.value_scale if grad_scale is None else float(grad_scale)

    def set_backend(self, kernels_module, dtype=np.float32):
        self._k, self._dtype, self._bufs = kernels_module, dtype, {}

    def _buffer(self, shape):
        buf = self._bufs.get(shape)
        if buf is None:
            buf = self._bufs[shape] = self._k.empty(shape, self._dtype)
        return buf

    def targets(self, y, output_shape):
        """Validate and convert targets for outputs of per-sample `output_shape`."""
        y = _as_numeric("y", y)
        _finite("y", y)
        want = tuple(output_shape)
        if y.ndim == 1 and want == (1,):
            y = y.reshape(-1, 1)
        if y.shape[1:] != want:
            raise ValueError(f"y: expected per-sample shape {want} to match the model's output, "
                             f"got {y.shape[1:]}")
        # in the model's dtype (set_backend's): float64 only for a float64 model
        wide = np.dtype(getattr(self, "_dtype", np.float32)) == np.float64
        return np.ascontiguousarray(y, dtype=np.float64 if wide else np.float32)

    def forward(self, out, target):
        """The batch's mean loss (times value_scale)."""
        self._out, self._target = out, target
        return self.value_scale * getattr(self._k, self.name + "_forward")(out, target)

    def backward(self):
        """Gradient w.r.t. the last forward's output, in a buffer of the loss."""
        grad = self._buffer(tuple(self._out.shape))
        getattr(self._k, self.name + "_backward")(grad, self._out, self._target)
        return self._scaled(grad)

    def _scaled(self, grad):
        if self.grad_scale != 1.0:
            self._k.scale(grad.reshape(-1), self.grad_scale)
        return grad

    def __repr__(self):
        if self.value_scale == self.grad_scale == 1.0:
            return f"{type(self).__name__}()"
        return f"{type(self).__name__}(value_scale={self.value_scale}, grad_scale={self.grad_scale})"


def _as_numeric(name, y):
    try:
        arr = np.asarray(y)
    except Exception as exc:  # noqa: BLE001
        raise TypeError(f"{name}: cannot convert to an array ({exc})") from exc
    if arr.dtype.kind not in "fiub":
        raise ValueError(f"{name}: expected numbers, got dtype {arr.dtype}")
    if arr.ndim == 0 or arr.shape[0] == 0:
        raise ValueError(f"{name}: must be a non-empty array")
    return arr


class MSE(Loss):
    """Mean squared error over all elements (torch.nn.MSELoss)."""

    name = "mse"


class MAE(Loss):
    """Mean absolute error over all elements (torch.nn.L1Loss)."""

    name = "mae"


class BinaryCrossEntropy(Loss):
    """Sigmoid + binary cross-entropy on logits, targets in [0, 1]
    (torch.nn.BCEWithLogitsLoss); mean over all elements."""

    name = "bce"
    classification = True

    def targets(self, y, output_shape):
        t = super().targets(y, output_shape)
        if t.min() < 0 or t.max() > 1:
            raise ValueError(f"y: binary cross-entropy targets must lie in [0, 1], got values in "
                             f"[{t.min()}, {t.max()}]")
        return t

    def proba(self, out):
        return 1.0 / (1.0 + np.exp(-np.asarray(out, np.float64)))


class SoftmaxCrossEntropy(Loss):
    """Softmax + cross-entropy on logits (torch.nn.CrossEntropyLoss).

    Targets are integer class labels (any integer dtype) or one-hot rows.
    """

    name = "softmax_xent"
    classification = True

    def targets(self, y, output_shape):
        y = _as_numeric("y", y)
        n_classes = output_shape[-1]
        if y.ndim == 2:
            if y.shape[1] != n_classes:
                raise ValueError(f"y: one-hot targets need {n_classes} columns, got {y.shape[1]}")
            if not (np.all((y == 0) | (y == 1)) and np.all(y.sum(axis=1) == 1)):
                raise ValueError("y: 2-D targets must be one-hot rows (a single 1 per row)")
            y = y.argmax(axis=1)
        elif y.ndim != 1:
            raise ValueError(f"y: expected class labels (n,) or one-hot rows (n, c), got shape "
                             f"{y.shape}")
        if y.dtype.kind not in "iu":
            raise ValueError(f"y: class labels must be integers, got dtype {y.dtype}")
        if y.min() < 0 or y.max() >= n_classes:
            raise ValueError(f"y: class labels must lie in [0, {n_classes}), got values in "
                             f"[{y.min()}, {y.max()}]")
        return np.ascontiguousarray(y, dtype=np.int32)

    def forward(self, out, target):
        self._target = target
        self._P = self._buffer(tuple(out.shape))
        return self.value_scale * self._k.softmax_xent_forward(self._P, out, target)

    def backward(self):
        self._k.softmax_xent_backward(self._P, self._P, self._target)  # in place
        return self._scaled(self._P)

    def proba(self, out):
        z = np.asarray(out, np.float64)
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)


LOSSES = {"mse": MSE, "mae": MAE, "binary_cross_entropy": BinaryCrossEntropy,
          "softmax_cross_entropy": SoftmaxCrossEntropy}


def get(loss):
    """A loss instance from an instance, a class or a name ("mse", ...)."""
    if isinstance(loss, Loss):
        return loss
    if isinstance(loss, type) and issubclass(loss, Loss):
        return loss()
    try:
        return LOSSES[loss]()
    except (KeyError, TypeError):
        raise ValueError(f"loss: unknown {loss!r}; expected one of {', '.join(LOSSES)} "
                         "or a Loss") from None
