"""Learning-rate schedules, applied once per epoch as torch's schedulers are.

A schedule is a Trainer callback: ``Trainer.fit(..., callbacks=[StepLR(10)])``.
At the start of a fit it records the optimizer's learning rate as the base
rate (once: a later fit continues the schedule) and sets the rate of the
first epoch; after each epoch it sets the rate of the next.  The closed forms
are torch.optim.lr_scheduler's.  The scikit-learn estimators take one as
``learning_rate``.
"""

import math

from .kernels import _checks


class Schedule:
    """Base class: ``lr(epoch)`` gives the rate of epoch `epoch` (from 0)."""

    def __init__(self):
        self.base_lr = None
        self.epoch = 0

    def start(self, base_lr):
        """Record the base rate (first call only); returns the current rate."""
        if self.base_lr is None:
            self.base_lr = float(base_lr)
        return self.lr(self.epoch)

    def next(self, logs):
        """The epoch just ended with `logs`; returns the next epoch's rate."""
        self.epoch += 1
        return self.lr(self.epoch)

    def lr(self, epoch):
        raise NotImplementedError

    # as a Trainer callback
    def on_fit_start(self, trainer):
        trainer.optimizer.lr = self.start(trainer.optimizer.lr)

    def __call__(self, trainer, epoch, logs):
        trainer.optimizer.lr = self.next(logs)
        return False

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items()
                         if k not in ("base_lr", "epoch") and not k.startswith("_"))
        return f"{type(self).__name__}({args})"


class StepLR(Schedule):
    """lr = base * gamma ** (epoch // step_size)."""

    def __init__(self, step_size, gamma=0.1):
        super().__init__()
        if isinstance(step_size, bool) or not isinstance(step_size, int) or step_size < 1:
            raise ValueError(f"step_size: expected an integer >= 1, got {step_size!r}")
        self.step_size, self.gamma = step_size, _checks.check_scalar("gamma", gamma, low=0.0)

    def lr(self, epoch):
        return self.base_lr * self.gamma ** (epoch // self.step_size)


class ExponentialLR(Schedule):
    """lr = base * gamma ** epoch."""

    def __init__(self, gamma):
        super().__init__()
        self.gamma = _checks.check_scalar("gamma", gamma, low=0.0)

    def lr(self, epoch):
        return self.base_lr * self.gamma ** epoch


class CosineAnnealingLR(Schedule):
    """lr = eta_min + (base - eta_min) * (1 + cos(pi * epoch / T_max)) / 2
    (torch's closed form; it keeps cycling after T_max)."""

    def __init__(self, T_max, eta_min=0.0):  # noqa: N803 - torch's name
        super().__init__()
        if isinstance(T_max, bool) or not isinstance(T_max, int) or T_max < 1:
            raise ValueError(f"T_max: expected an integer >= 1, got {T_max!r}")
        self.T_max, self.eta_min = T_max, _checks.check_scalar("eta_min", eta_min, low=0.0)

    def lr(self, epoch):
        return self.eta_min + (self.base_lr - self.eta_min) * (
            1 + math.cos(math.pi * epoch / self.T_max)) / 2


class Warmup(Schedule):
    """Linear warm-up from ``start_factor * base`` to base over `epochs`
    epochs, then `after` (another schedule, counted from the end of the
    warm-up) or the base rate."""

    def __init__(self, epochs, start_factor=0.1, after=None):
        super().__init__()
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            raise ValueError(f"epochs: expected an integer >= 1, got {epochs!r}")
        self.epochs = epochs
        self.start_factor = _checks.check_scalar("start_factor", start_factor, 0.0, 1.0)
        if after is not None and not isinstance(after, Schedule):
            raise TypeError(f"after: expected a Schedule, got {type(after).__name__}")
        self.after = after

    def start(self, base_lr):
        if self.after is not None:
            self.after.start(base_lr)
        return super().start(base_lr)

    def lr(self, epoch):
        if epoch < self.epochs:
            return self.base_lr * (self.start_factor
                                   + (1 - self.start_factor) * epoch / self.epochs)
        return self.base_lr if self.after is None else self.after.lr(epoch - self.epochs)


class ReduceLROnPlateau(Schedule):
    """Multiply the rate by `factor` when `monitor` has not improved by a
    relative `threshold` for more than `patience` epochs (torch's defaults:
    mode "min" for losses, "max" for accuracies/scores), not below min_lr."""

    def __init__(self, monitor=None, factor=0.1, patience=10, threshold=1e-4, min_lr=0.0):
        super().__init__()
        self.monitor = monitor
        self.factor = _checks.check_scalar("factor", factor, 0.0, 1.0)
        self.patience = _checks._integer("patience", patience, 0)
        self.threshold = _checks.check_scalar("threshold", threshold, low=0.0)
        self.min_lr = _checks.check_scalar("min_lr", min_lr, low=0.0)
        self._best, self._bad, self._lr = None, 0, None

    def start(self, base_lr):
        lr = super().start(base_lr)
        if self._lr is None:
            self._lr = lr
        return self._lr

    def lr(self, epoch):
        return self.base_lr if self._lr is None else self._lr

    def next(self, logs):
        self.epoch += 1
        key = self.monitor or ("val_loss" if "val_loss" in logs else "loss")
        if key not in logs:
            raise ValueError(f"ReduceLROnPlateau: no {key!r} among {sorted(logs)}")
        value, maximize = logs[key], ("acc" in key or "score" in key)
        better = (self._best is None or
                  (value > self._best * (1 + self.threshold) if maximize
                   else value < self._best * (1 - self.threshold)))
        if better:
            self._best, self._bad = value, 0
        else:
            self._bad += 1
            if self._bad > self.patience:
                self._lr, self._bad = max(self._lr * self.factor, self.min_lr), 0
        return self._lr
