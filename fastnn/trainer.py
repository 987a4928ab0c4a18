"""The trainer: mini-batch gradient descent over a Sequential model.

Per batch the trainer makes one kernel call per layer forward and backward,
one for the loss and its gradient, and one for the optimizer over the whole
flat parameter buffer.  The training set is validated and converted once per
``fit``; each epoch is shuffled with one gather into a preallocated array, and
batches are views into it, so nothing is allocated per batch (layer and loss
buffers are allocated once per batch size).
"""

import functools
import json
import os
import sys
import time

import numpy as np

from . import kernels
from . import progress as progress_mod
from . import schedules as schedules_mod
from .kernels import _checks, spec
from . import losses as losses_mod
from . import plan as plan_mod
from . import optim as optim_mod


def check_X(X, input_shape, dtype=np.float32):
    """Validate a batch of inputs; returns a C-contiguous array of `dtype`.

    Accepts float64, Fortran-ordered, strided and integer input (converted);
    refuses NaN/Inf, strings, 1-D or empty input and a wrong feature count.
    """
    try:
        arr = np.asarray(X)
    except Exception as exc:  # noqa: BLE001
        raise TypeError(f"X: cannot convert to an array ({exc})") from exc
    if arr.dtype.kind not in "fiub":
        raise ValueError(f"X: expected numbers, got dtype {arr.dtype}")
    want = tuple(input_shape)
    if arr.ndim != 1 + len(want):
        raise ValueError(f"X: expected a {1 + len(want)}-D array (n_samples, "
                         f"{', '.join(map(str, want))}), got shape {arr.shape}"
                         + ("; reshape a single sample with X.reshape(1, -1)" if arr.ndim == 1 else ""))
    if arr.shape[0] == 0:
        raise ValueError("X: no samples (empty array)")
    if arr.shape[1:] != want:
        raise ValueError(f"X: expected {want} features per sample, got {arr.shape[1:]}"
                         if len(want) > 1 else
                         f"X: expected {want[0]} features, got {arr.shape[1]}")
    arr = np.ascontiguousarray(arr, dtype=dtype)
    if not _all_finite(arr):
        raise ValueError("X: contains NaN or Inf")
    return arr


def _all_finite(arr, rows=8192):
    """No NaN or Inf in arr, in one pass without a temporary the size of
    arr: a sum in arr's own dtype (numpy's pairwise SIMD sum, ~4x faster
    than accumulating float32 in float64) is finite only if every value is;
    when it is not, the values may still be finite and their sum overflow,
    so rows are then tested chunk by chunk."""
    if arr.dtype.kind != "f":
        return True
    with np.errstate(invalid="ignore", over="ignore"):
        if np.isfinite(np.sum(arr)):
            return True
    flat = arr.reshape(len(arr), -1)
    return all(np.isfinite(flat[i:i + rows]).all() for i in range(0, len(flat), rows))


def _check_batch_size(batch_size):
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
            or batch_size < 1:
        raise ValueError(f"batch_size: expected an integer >= 1, got {batch_size!r}")
    return int(batch_size)


class Diverged(FloatingPointError):
    """A batch's loss became NaN or Inf: training stopped before that
    batch's update.  ``epoch`` and ``batch`` are 0-based indices (the
    message counts from 1)."""

    def __init__(self, value, epoch, batch):
        super().__init__(f"loss became {value} at epoch {epoch + 1}, batch {batch + 1}: "
                         "lower the learning rate or check the data")
        self.value, self.epoch, self.batch = value, epoch, batch


def _check_finite(value, epoch, batch):
    if not np.isfinite(value):
        raise Diverged(value, epoch, batch)


class History:
    """Per-epoch records of a fit: ``history.history["loss"]`` etc.

    Also readable as attributes (``history.loss``, ``history.val_accuracy``).
    """

    def __init__(self):
        self.history = {}
        self.epochs = 0

    def append(self, logs):
        for key, value in logs.items():
            self.history.setdefault(key, []).append(value)
        self.epochs += 1

    def __getattr__(self, key):
        try:
            return self.__dict__["history"][key]
        except KeyError:
            raise AttributeError(key) from None

    def __repr__(self):
        last = {k: round(v[-1], 5) for k, v in self.history.items()}
        return f"History(epochs={self.epochs}, last={last})"


class EarlyStopping:
    """Stop when `monitor` has not improved by `min_delta` for `patience` epochs.

    monitor: "val_loss" (default when validation data is given, else "loss"),
    "loss", "val_accuracy", ...  restore_best puts back the best parameters
    when the fit ends, whether patience ran out or the fit reached its
    epochs (Keras's restore_best_weights).
    """

    def __init__(self, monitor=None, patience=5, min_delta=0.0, restore_best=True):
        if isinstance(patience, bool) or not isinstance(patience, (int, np.integer)) or patience < 0:
            raise ValueError(f"patience: expected an integer >= 0, got {patience!r}")
        if monitor is not None and not isinstance(monitor, str):
            raise TypeError(f"monitor: expected a log name such as 'val_loss', got {monitor!r}")
        min_delta = _checks.check_scalar("min_delta", min_delta, low=0.0)
        self.monitor, self.patience, self.min_delta = monitor, int(patience), float(min_delta)
        self.restore_best = restore_best

    def start(self, has_validation):
        if self.monitor is None:
            self.monitor = "val_loss" if has_validation else "loss"
        self.best, self.best_epoch, self.best_params, self.wait = None, -1, None, 0
        self.stopped_epoch = None

    def __call__(self, trainer, epoch, logs):
        value = logs.get(self.monitor)
        if value is None:
            raise ValueError(f"EarlyStopping: no {self.monitor!r} among {sorted(logs)}")
        sign = 1.0 if "acc" in self.monitor else -1.0  # accuracy up, losses down
        if self.best is None or sign * (value - self.best) > self.min_delta:
            self.best, self.best_epoch, self.wait = value, epoch, 0
            if self.restore_best:
                self.best_params = trainer.model.get_params()
            return False
        self.wait += 1
        if self.wait >= self.patience:
            self.stopped_epoch = epoch
            if self.restore_best and self.best_params is not None:
                trainer.model.set_params(self.best_params)
            return True
        return False


def _check_epochs(epochs):
    if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or epochs < 0:
        raise ValueError(f"epochs: expected an integer >= 0, got {epochs!r}")
    return int(epochs)


def _check_fit_options(validation_data, shuffle, seed, callbacks, early_stopping,
                       verbose=True):
    """fit's options of the wrong type or value are refused before anything
    trains (not with an AttributeError after the first epoch)."""
    if validation_data is not None and (not isinstance(validation_data, (tuple, list))
                                        or len(validation_data) != 2):
        raise TypeError("validation_data: expected a pair (X_val, y_val), got "
                        f"{type(validation_data).__name__}"
                        + (f" of length {len(validation_data)}"
                           if isinstance(validation_data, (tuple, list)) else ""))
    if not isinstance(shuffle, (bool, np.bool_)):
        raise TypeError(f"shuffle: expected a bool, got {shuffle!r}")
    progress_mod.check_verbose(verbose)
    if seed is not None and not isinstance(seed, (np.random.Generator, np.random.SeedSequence)):
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed: expected None or an integer >= 0, got {seed!r}")
    if callable(callbacks) or isinstance(callbacks, (str, bytes)) \
            or not hasattr(callbacks, "__iter__"):
        raise TypeError("callbacks: expected a list of callables f(trainer, epoch, logs), got "
                        f"{type(callbacks).__name__}")
    callbacks = list(callbacks)  # (once: a generator is consumed)
    for i, cb in enumerate(callbacks):
        if not callable(cb) and not callable(getattr(cb, "on_batch_end", None)):
            raise TypeError(f"callbacks[{i}]: expected a callable f(trainer, epoch, logs) or an "
                            f"object with on_batch_end(trainer, epoch, batch, logs), got "
                            f"{type(cb).__name__}")
    if early_stopping is not None and not isinstance(early_stopping, EarlyStopping):
        if isinstance(early_stopping, bool) or not isinstance(early_stopping, (int, np.integer)) \
                or early_stopping < 1:
            raise TypeError("early_stopping: expected an EarlyStopping or an integer patience "
                            f">= 1, got {early_stopping!r}")
    return callbacks


def _check_batchnorm_batches(model, n, batch_size):
    """Refuse, before anything trains, an epoch whose last batch would give
    a BatchNorm one value per channel (no variance: torch refuses it too)."""
    last = n - (-(-n // batch_size) - 1) * batch_size
    for layer in model.walk():
        per_sample = getattr(layer, "values_per_sample", None)
        if per_sample is not None and last * per_sample < 2:
            raise ValueError(
                f"batch_size: {n} samples in batches of {batch_size} leave a last batch of "
                f"{last}, which gives {type(layer).__name__} one value per channel (no batch "
                f"statistics); pick a batch_size that does not leave one sample over")


class _FitRun:
    """One trainer's fit in progress, epoch by epoch: what Trainer.fit
    loops over, and what fastnn.fit_many runs for each of its trainers.

    Each epoch: ``next_order()`` (the rows of X this epoch visits, drawn as
    fit draws them: ``rng.permutation`` of its n rows, mapped through
    ``rows``), ``run(order)`` (the epoch's training; the compiled epoch
    gathers its batches through the order, with no copy of X), then
    ``finish_epoch`` (logs, validation, callbacks; True: stop).
    """

    def __init__(self, trainer, X, t, rows, epochs, batch_size, validation_data, shuffle, seed,
                 stoppers, plan=False):
        self.trainer, self.rows = trainer, rows
        self.n = len(X) if rows is None else len(rows)
        self.epochs, self.batch_size = epochs, min(batch_size, self.n)
        self.n_batches = -(-self.n // self.batch_size)
        self.validation, self.shuffle, self.stoppers = validation_data, shuffle, stoppers
        self.sharding, n_run = None, self.n
        if trainer.distributed is not None:  # this rank's rows of each global batch
            from . import distributed

            seed = distributed.start_fit(trainer, X, t, self.batch_size, epochs, shuffle, seed,
                                         validation_data)
            self.sharding = distributed.Sharding(trainer.distributed, self.n, self.batch_size)
            self.n_batches, n_run = self.sharding.n_batches, self.sharding.local_n
        _check_batchnorm_batches(trainer.model, n_run, self.batch_size)
        self.rng = np.random.default_rng(seed)
        batch_end = [cb for cb in stoppers if hasattr(cb, "on_batch_end")]
        self.runner = EpochRunner(trainer, X, t, self.batch_size, plan, n_run, batch_end)
        self.history = History()
        self.epoch = 0

    def end(self):
        """The fit is over: EarlyStopping(restore_best=True) puts back its
        best parameters also when the fit ran all its epochs (Keras's
        restore_best_weights)."""
        for cb in self.stoppers:
            if isinstance(cb, EarlyStopping) and cb.restore_best \
                    and cb.best_params is not None and cb.stopped_epoch is None:
                self.trainer.model.set_params(cb.best_params)

    def next_order(self):
        """The rows of X the next epoch visits, in order (None: all, in order)."""
        perm = self.rng.permutation(self.n) if self.shuffle else None
        if self.sharding is not None:
            return self.sharding.order(perm)
        if self.rows is None:
            return perm
        return self.rows if perm is None else self.rows[perm]

    def run(self, order, bar=None):
        """Train one epoch over X[order]; returns (sum of batch losses
        weighted by batch size, correct answers).  Raises Diverged."""
        if self.sharding is None:
            return self.runner.totals(order, self.epoch, bar)
        tr = self.trainer
        tr.distributed.where = f"epoch {self.epoch + 1}"
        tr._grad_hook, self.sharding.sync.grads = self.sharding.sync, tr.model.grads
        # the l2 term enters the summed gradient once: rank 0 adds it (its
        # weight b0/G turns l2/b0 into the global batch's l2/G), the others not
        l2, tr.l2 = tr.l2, tr.l2 if tr.distributed.rank == 0 else 0.0
        try:
            return self.runner.totals(order, self.epoch, bar)
        finally:
            tr._grad_hook, tr.l2 = None, l2

    def finish_epoch(self, total, correct, elapsed, lr, report):
        """Logs of the epoch just run into the History; the callbacks'
        verdict.  `report`: False, or the progress bar (None: print)."""
        tr, n = self.trainer, self.n
        evaluate = tr._evaluate
        if self.sharding is not None:  # the job's totals, validation and buffers
            from . import distributed

            total, correct, elapsed = self.sharding.reduce_epoch(total, correct, elapsed,
                                                                 self.runner.last_batch())
            distributed.average_buffers(tr)
            evaluate = functools.partial(distributed.evaluate, tr)
        logs = {"loss": total / n}
        if tr.loss.classification:
            logs["accuracy"] = correct / n
        if self.validation is not None:
            logs.update({"val_" + k: v for k, v in evaluate(*self.validation).items()})
        logs["samples_per_s"] = n / elapsed if elapsed > 0 else float("inf")
        logs["lr"] = lr
        self.history.append(logs)
        if report is not False:
            tr._report(report, self.epoch, self.epochs, logs)
        epoch, self.epoch = self.epoch, self.epoch + 1
        return any([bool(_epoch_end(cb)(tr, epoch, logs)) for cb in self.stoppers])


def _epoch_end(cb):
    """A callback's end-of-epoch call: the callable itself, or its
    on_epoch_end (an object with only on_batch_end: nothing)."""
    if callable(cb):
        return cb
    return getattr(cb, "on_epoch_end", lambda trainer, epoch, logs: False)


class EpochRunner:
    """Trainer.epoch_runner's epochs over (X, t) in orders the caller draws
    (and each epoch of Trainer.fit and fastnn.fit_many).

    ``runner(order)`` trains one epoch over X[order] (n rows) and returns
    its mean loss.  The compiled epoch on the host takes the order as it is
    and gathers each batch itself (no shuffled copy of X); otherwise the
    rows are copied into a shuffle buffer first.  When ``compiled``, the
    epoch is one kernel call, and ``build(order)`` / ``finish(result)``
    split it so that many runners' epochs can run in one ``model_epochs``
    call (fit_many, fastnn.sklearn.MLPSearchCV's banks)."""

    def __init__(self, trainer, X, t, batch_size, plan=False, n=None, batch_end=()):
        self.trainer, self.X, self.t = trainer, X, t
        self.n = len(X) if n is None else n
        self.batch_size = batch_size
        fused = trainer.fused and not batch_end  # on_batch_end: Python between batches
        self.epoch_fn = (trainer._fused_epoch(self.n, batch_size, plan) if fused
                         else functools.partial(trainer._python_epoch, batch_end=batch_end))
        self.by_order = fused and not trainer._device
        self.compiled = self.by_order and isinstance(self.epoch_fn, _CompiledEpoch)

    def totals(self, order, epoch=0, bar=None):
        """(sum of batch losses weighted by batch size, correct answers) of
        one epoch over X[order] (None: X in order); raises Diverged."""
        X, t = (self.X, self.t) if self.by_order else self.trainer._rows_in_order(
            self.X, self.t, order)
        return self.epoch_fn(X, t, self.batch_size, epoch, bar,
                             order if self.by_order else None)

    def __call__(self, order):
        return self.totals(order)[0] / self.n

    def build(self, order):
        return self.epoch_fn.build(self.X, self.t, order)

    def last_batch(self):
        """(loss x rows, correct answers) of the last epoch's last batch."""
        fn = self.epoch_fn
        if isinstance(fn, _CompiledEpoch):
            return float(fn.batch_losses[-1] * fn.sizes[-1]), int(fn.batch_correct[-1])
        return self.trainer._last_batch

    def finish(self, result, epoch=0):
        """The (total, correct) of a built epoch the kernel ran."""
        return self.epoch_fn.finish(result, epoch)


class _CompiledEpoch:
    """A trainer's compiled epoch: model_epoch over the model's plan
    (fastnn.plan).  ``build`` makes the kernel's argument for one epoch,
    ``kernel`` runs it, ``finish`` takes the kernel's result back into the
    trainer (optimizer counters, dropout counters, the divergence check);
    calling the object does all three (the epoch-function protocol of
    Trainer._python_epoch).

    For a plain dense stack without clipping the workspace is also large
    enough for the backend's dense-stack scheduling (the c backend then
    runs the plan with its threaded dense-stack epoch) -- unless ``plan``
    (fit_many: many models side by side, one thread each)."""

    def __init__(self, trainer, n, batch_size, plan=False):
        self.trainer, k, model = trainer, trainer._k, trainer.model
        self.n_batches = -(-n // batch_size)
        self.batch_losses = np.empty(self.n_batches)
        self.batch_correct = np.empty(self.n_batches, np.int64)
        self.sizes = np.full(self.n_batches, batch_size, np.float64)
        self.sizes[-1] = n - (self.n_batches - 1) * batch_size
        self.batch_size = batch_size
        self.plan = plan_mod.compile_model(model, batch_size)
        size = self.plan.workspace_size
        if trainer._stack is not None and not plan:
            size = max(size, k.dense_stack_workspace(trainer._stack, batch_size))
        self.workspace = k.empty(size, model.dtype)
        self.iworkspace = k.empty(self.plan.iworkspace_size, np.int32)
        self.kernel = k.model_epoch

    def build(self, X, t, order):
        tr = self.trainer
        opt, model = tr.optimizer, tr.model
        if tr._device:  # the whole epoch moves to the device once
            X, t = tr._to_backend("epoch_x", X), tr._to_backend("epoch_t", t)
        kernel, states, hyper = opt.kernel_spec()
        common = dict(
            params=model.params, grads=model.grads, states=states, workspace=self.workspace,
            X=X, targets=t, batch_losses=self.batch_losses, batch_correct=self.batch_correct,
            loss=tr.loss.name, batch_size=self.batch_size, optimizer=kernel, hyper=hyper,
            step=opt.step_count, mu_product=getattr(opt, "mu_product", 1.0), l2=tr.l2,
            loss_scale=tr.loss.value_scale, grad_scale=tr.loss.grad_scale, order=order)
        if tr._grad_hook is not None:  # the data-parallel all-reduce at each GRADS event
            common["hook"] = tr._grad_hook
        return self.plan.epoch(trainable=model.trainable_ranges(),
                               buffers=model.buffers, iworkspace=self.iworkspace,
                               clip_value=tr.clip_value or 0.0, clip_norm=tr.clip_norm or 0.0,
                               **common)

    def finish(self, result, epoch, bar=None):
        """(sum of batch losses weighted by batch size, correct answers)
        of the epoch the kernel ran; raises Diverged at a bad batch."""
        opt = self.trainer.optimizer
        done, opt.step_count, mu = result
        self.plan.advance(done)
        if "mu_product" in opt.spec.scalars:
            opt.mu_product = mu
        losses = self.batch_losses[:done]
        if not np.isfinite(losses).all():  # the first bad one says where
            b = int(np.argmin(np.isfinite(losses)))
            _check_finite(losses[b], epoch, b)
        return float(self.batch_losses @ self.sizes), int(self.batch_correct.sum())

    def __call__(self, X, t, batch_size, epoch, bar, order=None):
        e = self.build(X, t, order)
        if bar is not None:  # the bar moves within the epoch: the epoch hook
            from .kernels.spec import HookChain  # (with a distributed fit's all-reduce)

            bar_hook = bar.hook(self.batch_losses, self.sizes)
            e.hook = bar_hook if e.hook is None else HookChain(e.hook, bar_hook)
            e.hook_every = bar.every
            self.batch_losses[:] = np.nan
        try:
            result = self.kernel(e)
        except BaseException:
            # The hook raised -- Ctrl-C lands in it, the only Python running
            # inside a c epoch, or between two of numba's batch ranges --
            # after the update of its batch: the counters follow the batches
            # done (those with a loss written; a non-finite loss ends an
            # epoch without an exception), so that the state stays consistent.
            if e.hook is not None:
                written = np.isfinite(self.batch_losses)
                self._stopped(int(written.argmin()) if not written.all() else len(written))
            raise
        return self.finish(result, epoch, bar)

    def _stopped(self, done):
        """The optimizer's and dropouts' counters after `done` batches of
        an epoch that stopped by an exception."""
        opt = self.trainer.optimizer
        kernel, _, hyper = opt.kernel_spec()
        if "mu_product" in opt.spec.scalars:
            scalars = {"mu_product": opt.mu_product}
            for step in range(opt.step_count + 1, opt.step_count + done + 1):
                scalars = spec.advance(kernel, scalars, step, hyper)
            opt.mu_product = scalars["mu_product"]
        opt.step_count += done
        self.plan.advance(done)


_TRAINER_FORMAT = "fastnn-trainer-1"


def _jsonable(value):
    """Tuples as lists, numpy scalars as Python numbers (for JSON)."""
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _schedule_state(sched):
    """A Schedule as JSON: its class and attributes (a nested schedule too)."""
    if type(sched) is not getattr(schedules_mod, type(sched).__name__, None):
        raise ValueError(f"save: the schedule {type(sched).__name__} is not one of fastnn's "
                         "own (it cannot be written)")
    attrs = {}
    for k, v in vars(sched).items():
        attrs[k] = _schedule_state(v) if isinstance(v, schedules_mod.Schedule) else _jsonable(v)
    return {"type": type(sched).__name__, "attrs": attrs}


def _schedule_from(state):
    cls = getattr(schedules_mod, state["type"], None)
    if not (isinstance(cls, type) and issubclass(cls, schedules_mod.Schedule)):
        raise ValueError(f"unknown schedule {state['type']!r}")
    sched = cls.__new__(cls)
    for k, v in state["attrs"].items():
        setattr(sched, k, _schedule_from(v) if isinstance(v, dict) and "attrs" in v else v)
    return sched


def _guarded(method):
    """A distributed trainer's method that tells the other ranks if it raises."""
    @functools.wraps(method)
    def run(self, *args, **kwargs):
        if self.distributed is None:
            return method(self, *args, **kwargs)
        with self.distributed.guard():
            return method(self, *args, **kwargs)
    return run


class Trainer:
    """Train a model with a loss and an optimizer.

    Parameters
    ----------
    model : Sequential
    loss : Loss or str
        "mse", "mae", "binary_cross_entropy", "softmax_cross_entropy".
    optimizer : Optimizer or str
        An instance (``fastnn.optim.Adam(lr=1e-3)``) or a name with defaults.
    backend : str or None
        Kernel backend; the model is moved there.  "cuda" keeps parameters,
        gradients and optimizer state on the device and copies each batch
        there once.  Default: the model's backend.
    fused : bool or None
        Run each epoch of ``fit`` as one compiled-epoch kernel call (no
        Python between batches): ``model_epoch`` over the model's plan
        (:mod:`fastnn.plan`), or ``dense_stack_epoch`` for a plain stack of
        Dense layers without clipping.  None (default): whenever every layer
        compiles (fastnn's own layers do; a custom Python layer does not) and
        the loss and optimizer are fastnn's own; False: always batch by
        batch from Python.  Both follow the same trajectory (the same
        dropout masks too).
    l2 : float
        scikit-learn's MLP penalty alpha: each batch of m samples adds
        ``l2 / (2 m) * sum(W**2)`` over the weights W of
        ``model.penalized()`` (Dense and Conv weights, those inside blocks
        included; not biases) to its loss, and ``l2 / m * W`` to their
        gradients.  (An optimizer's ``weight_decay`` is torch's, over every
        parameter.)  Frozen layers (``layer.trainable = False``,
        ``model.freeze``) are left out of the penalty, the clipping (its
        norm too) and the update, on every path: their parameters and
        optimizer state do not change.
    clip_value, clip_norm : float or None
        Gradient clipping before each update, one pass over the flat gradient
        buffer each: every gradient to [-clip_value, clip_value], then the
        whole gradient scaled to global L2 norm <= clip_norm (torch's
        clip_grad_value_ and clip_grad_norm_).
    distributed : None, "mpi" or fastnn.distributed.MPIGroup
        Synchronous data-parallel ``fit`` over MPI (run under ``mpiexec -n
        N``; every rank passes the same full X, y; batch_size is per rank):
        N ranks with batch B follow 1 process with batch N * B.  Rank 0
        alone prints; every rank returns the same History.  See
        :mod:`fastnn.distributed`.
    """

    def __init__(self, model, loss, optimizer, backend=None, fused=None, l2=0.0,
                 clip_value=None, clip_norm=None, distributed=None):
        if not all(hasattr(model, a) for a in ("layers", "to", "built")):  # (params: once built)
            raise TypeError(f"model: expected a fastnn.Sequential, got {type(model).__name__}")
        self.model = model
        self.loss = losses_mod.get(loss)
        self.optimizer = optim_mod.get(optimizer)
        self.backend = backend or model.backend
        model.to(self.backend)
        self._k = kernels.get(self.backend)
        self._device = self.backend == "cuda"
        self.loss.set_backend(self._k, model.dtype)
        self._batch_bufs = {}
        self.l2 = _checks.check_scalar("l2", l2, low=0.0)
        self.clip_value = (None if clip_value is None
                           else _checks.check_scalar("clip_value", clip_value, low=0.0, low_open=True))
        self.clip_norm = (None if clip_norm is None
                          else _checks.check_scalar("clip_norm", clip_norm, low=0.0, low_open=True))
        self._fused_arg = fused
        self._fit_rng = None      # the shuffling stream fit continues (seed=None)
        self.schedules = []       # the Schedule callbacks of the last fit
        self._resume_schedules = []  # restored by load: the next fit continues them
        self.fused = None if fused is None else bool(fused)  # (decided by _bind)
        self._bound = False
        self.distributed, self._grad_hook, self._last_batch = None, None, (0.0, 0)
        if distributed is not None:
            from . import distributed as distributed_mod

            if self._device:
                raise ValueError("distributed: data-parallel training runs on the host "
                                 f"backends, not {self.backend!r}")
            self.distributed = distributed_mod.get(distributed)
        if model.built:  # (else when the first data builds the model: _build_for)
            self._bind()

    def _bind(self):
        """What needs the built model: the optimizer's state, the compiled
        paths."""
        model = self.model
        self.optimizer.bind(model.size, self._k, model.dtype)
        clipped = self.clip_value is not None or self.clip_norm is not None
        self._stack = None if clipped else model.dense_stack()
        can_fuse = (plan_mod.compile_model(model, 1) is not None and self.optimizer.fusable
                    and type(self.loss) in losses_mod.LOSSES.values())
        if self._fused_arg and not can_fuse:
            raise ValueError("fused=True needs a model of fastnn's own layers (no custom Python "
                             "layer) and one of fastnn's own losses and optimizers")
        self.fused = can_fuse if self._fused_arg is None else bool(self._fused_arg)
        self._bound = True

    def _build_for(self, X):
        """A deferred model is built from the first data (its sample shape)."""
        if not self._bound:
            self.model.build_for(X)
            self._bind()

    # ---- one batch ----------------------------------------------------------

    def _to_backend(self, key, host):
        """Copy a host batch into a per-shape device buffer (cuda); host arrays
        are used as they are elsewhere."""
        if not self._device:
            return host
        buf = self._batch_bufs.get((key, host.shape))
        if buf is None:
            buf = self._batch_bufs[(key, host.shape)] = self._k.empty(host.shape, host.dtype)
        buf.copy_to_device(host)
        return buf

    def _step(self, xb, tb, batch=0):
        model, loss, k = self.model, self.loss, self._k
        out = model.forward(self._to_backend("x", xb), training=True)
        value = loss.forward(out, self._to_backend("t", tb))
        if self.l2:
            penalized = model.penalized()
            value += 0.5 * self.l2 / len(xb) * sum(
                k.sum_squares(W.reshape(-1)) for W, _ in penalized)
        if not np.isfinite(value):  # no update from a bad batch (as the compiled epoch)
            return value, out
        model.backward(loss.backward())
        if self.l2:
            for W, dW in penalized:
                k.axpy(dW.reshape(-1), W.reshape(-1), self.l2 / len(xb))
        if self._grad_hook is not None:  # e.g. the data-parallel all-reduce
            self._grad_hook(spec.HookEvent.GRADS, batch)
        ranges = model.trainable_ranges()
        self._clip(model.grads, ranges)
        self.optimizer.step(model.params, model.grads, ranges)
        return value, out

    def _clip(self, grads, ranges=None):
        """Clipping of the trainable ranges (None: the whole buffer)."""
        parts = [grads] if ranges is None else [grads[o:o + n] for o, n in ranges]
        if self.clip_value is not None:
            for g in parts:
                self._k.clip(g, -self.clip_value, self.clip_value)
        if self.clip_norm is not None:
            norm = np.sqrt(sum(self._k.sum_squares(g) for g in parts))
            coef = self.clip_norm / (norm + 1e-6)
            if coef < 1.0:
                for g in parts:
                    self._k.scale(g, coef)

    def train_step(self, X, y):
        """One mini-batch step: forward, loss, backward, update.

        Returns the batch loss before the update.
        """
        self._build_for(X)
        X = check_X(X, self.model.input_shape, self.model.dtype)
        t = self._targets(y, len(X))
        value, _ = self._step(X, t)
        if not np.isfinite(value):
            raise FloatingPointError(f"loss became {value} in train_step")
        return value

    def _targets(self, y, n):
        t = self.loss.targets(y, self.model.output_shape)
        if t.shape[0] != n:
            raise ValueError(f"X and y have different lengths: {n} and {t.shape[0]}")
        return t.astype(self.model.dtype) if t.dtype.kind == "f" else t

    # ---- fit ------------------------------------------------------------------

    @_guarded
    def fit(self, X, y, epochs=1, batch_size=32, validation_data=None, validation_split=0.0,
            shuffle=True, seed=None, callbacks=(), early_stopping=None, verbose="auto"):
        """Train for `epochs` passes over (X, y) in mini-batches.

        batch_size=len(X) is full-batch gradient descent, batch_size=1 pure
        SGD.  validation_split holds out the last fraction of (X, y) (before
        shuffling), as Keras does.  callbacks are callables
        ``f(trainer, epoch, logs)`` (or objects with ``on_epoch_end(trainer,
        epoch, logs)``); one returning True stops training.  A callback
        with an ``on_batch_end(trainer, epoch, batch, logs)`` method (logs:
        the batch's ``loss`` and ``size``) is called after every batch's
        update -- which takes the fit OFF the compiled path: its epochs
        then run batch by batch from Python (the same trajectory, slower
        for small batches); the progress bar needs no such callback.
        early_stopping is an EarlyStopping or an int patience.  A loss that
        becomes NaN or Inf stops with FloatingPointError naming the epoch and
        batch.  verbose is Keras's: 0 silent, 1 a progress bar per epoch
        (tqdm.auto; running loss and samples/s, updated within the compiled
        epoch too), 2 one line per epoch, "auto"/True 1 on a terminal or in
        a notebook, else 2 (fastnn.progress).  Returns a History.
        """
        self._build_for(X)
        X = check_X(X, self.model.input_shape, self.model.dtype)
        t = self._targets(y, len(X))
        epochs = _check_epochs(epochs)
        batch_size = _check_batch_size(batch_size)
        validation_split = _checks.check_scalar("validation_split", validation_split, low=0.0,
                                                high=1.0, high_open=True)
        callbacks = _check_fit_options(validation_data, shuffle, seed, callbacks, early_stopping,
                                       verbose)
        if self.distributed is not None:  # rank 0 alone prints
            verbose = verbose if self.distributed.rank == 0 else 0
            if verbose:
                self.distributed.announce()
        if validation_data is None and validation_split > 0:
            n_val = int(round(len(X) * validation_split))
            if n_val < 1 or n_val >= len(X):
                raise ValueError(f"validation_split={validation_split} leaves no training or "
                                 f"validation samples out of {len(X)}")
            validation_data = (X[-n_val:], t[-n_val:])
            X, t = X[:-n_val], t[:-n_val]
        verbose = progress_mod.check_verbose(verbose)
        callbacks = list(callbacks)
        scheds = [cb for cb in callbacks if isinstance(cb, schedules_mod.Schedule)]
        if not scheds and self._resume_schedules:  # a loaded trainer's schedules go on
            scheds = self._resume_schedules
            callbacks += scheds
        self._resume_schedules = []
        self.schedules = scheds
        # seed=None continues this trainer's shuffling stream (a loaded one's too)
        if seed is not None or self._fit_rng is None:
            if seed is None and self.distributed is not None:  # one stream on every rank
                seed = self.distributed.shared_seed(None)
            self._fit_rng = np.random.default_rng(seed)
        run = self._fit_run(X, t, None, epochs, batch_size, validation_data, shuffle,
                            self._fit_rng, callbacks, early_stopping)
        for epoch in range(epochs):
            bar = (progress_mod.EpochBar(epoch, epochs, run.n_batches) if verbose == 1
                   else None)
            try:
                start_time = time.perf_counter()
                lr = self.optimizer.lr
                total, correct = run.run(run.next_order(), bar)
                if run.finish_epoch(total, correct, time.perf_counter() - start_time, lr,
                                    bar if verbose else False):
                    break
            finally:
                if bar is not None:
                    bar.close()
        run.end()
        return run.history

    def _fit_run(self, X, t, rows, epochs, batch_size, validation_data, shuffle, seed,
                 callbacks, early_stopping, plan=False):
        """A fit of (X, t) (validated) in progress: the rows `rows` of them
        (None: all), epoch by epoch (see _FitRun)."""
        callbacks = _check_fit_options(validation_data, shuffle, seed, callbacks, early_stopping)
        if validation_data is not None:
            Xv, yv = validation_data
            try:
                Xv = check_X(Xv, self.model.input_shape, self.model.dtype)
                validation_data = (Xv, self._targets(yv, len(Xv)))
            except (TypeError, ValueError) as exc:
                raise type(exc)(f"validation_data: {exc}") from exc
        if isinstance(early_stopping, (int, np.integer)) and not isinstance(early_stopping, bool):
            early_stopping = EarlyStopping(patience=int(early_stopping))
        stoppers = list(callbacks)
        if early_stopping is not None:
            early_stopping.start(validation_data is not None)
            stoppers.append(early_stopping)
        for cb in stoppers:
            if hasattr(cb, "on_fit_start"):  # e.g. learning-rate schedules
                cb.on_fit_start(self)
        return _FitRun(self, X, t, rows, epochs, batch_size, validation_data, shuffle, seed,
                       stoppers, plan)

    def epoch_runner(self, X, y, batch_size, plan=False):
        """Epochs over (X, y) in orders the caller draws (as fastnn.sklearn
        draws scikit-learn's permutations).

        Parameters
        ----------
        X : array-like (n_samples, *model.input_shape)
        y : array-like
            Targets as ``fit`` takes them.
        batch_size : int
            Clipped to n_samples; the last batch may be smaller.
        plan : bool
            Compile even a plain dense stack as a model plan (its epochs
            can then run with other models' in one ``model_epochs`` call).

        Returns
        -------
        run : EpochRunner
            ``run(order)`` trains one epoch over the rows ``order`` of X (a
            permutation of ``range(n_samples)``; None: in order) and returns
            its mean loss.  X and y are validated and converted once, here;
            an epoch on the compiled path gathers its batches through
            ``order``, with no copy of X.  A loss that becomes NaN or Inf
            raises FloatingPointError.
        """
        self._build_for(X)
        X = check_X(X, self.model.input_shape, self.model.dtype)
        t = self._targets(y, len(X))
        n = len(X)
        batch_size = min(_check_batch_size(batch_size), n)
        _check_batchnorm_batches(self.model, n, batch_size)
        return EpochRunner(self, X, t, batch_size, plan)

    def _rows_in_order(self, X, t, order):
        """(X, t) with their rows in `order`, copied into the shuffle buffers;
        X and t themselves when order is None."""
        if order is None:
            return X, t
        Xs, ts = self._shuffle_buffer("X", X, len(order)), self._shuffle_buffer("t", t, len(order))
        # mode="clip": order is valid, and the default "raise" buffers the
        # whole gather (measured 2x slower on 60,000 x 784)
        np.take(X, order, axis=0, out=Xs, mode="clip")
        np.take(t, order, axis=0, out=ts, mode="clip")
        return Xs, ts

    def _shuffle_buffer(self, key, like, rows):
        """The array an epoch's shuffled copy (`rows` rows of `like`) goes
        to, kept across fits (a fresh one per fit costs its page faults
        every call)."""
        shape = (rows,) + like.shape[1:]
        buf = self._batch_bufs.get(("shuffle", key))
        if buf is None or buf.shape != shape or buf.dtype != like.dtype:
            buf = self._batch_bufs[("shuffle", key)] = np.empty(shape, like.dtype)
        return buf

    def _python_epoch(self, X, t, batch_size, epoch, bar, order=None, batch_end=()):
        """One epoch batch by batch from Python; returns (sum of losses
        weighted by batch size, correct answers).  (X, t are already in
        the epoch's order.)  batch_end: callbacks with on_batch_end."""
        total, correct, n = 0.0, 0, len(X)
        n_batches = -(-n // batch_size)
        for b in range(n_batches):
            lo, hi = b * batch_size, min((b + 1) * batch_size, n)
            value, out = self._step(X[lo:hi], t[lo:hi], b)
            _check_finite(value, epoch, b)
            total += value * (hi - lo)
            right = self._n_correct(out, t[lo:hi]) if self.loss.classification else 0
            correct += right
            self._last_batch = (value * (hi - lo), right)
            if bar is not None and spec.hook_batch_due(b, n_batches, bar.every):
                bar.update(b + 1, total, hi)
            for cb in batch_end:
                cb.on_batch_end(self, epoch, b, {"loss": float(value), "size": hi - lo})
        return total, correct

    def _fused_epoch(self, n, batch_size, plan=False):
        """The compiled epoch of this trainer for n rows in batches of
        batch_size (its buffers allocated once, here): a _CompiledEpoch,
        called as the batch-by-batch epoch function is.  plan=True: always
        model_epoch (fit_many runs many such at once), even for a dense
        stack."""
        return _CompiledEpoch(self, n, batch_size, plan)

    def _report(self, bar, epoch, epochs, logs):
        """The epoch's logs: on its bar (verbose=1), else one line."""
        if bar is not None:
            bar.finish(logs)
        else:
            print(f"epoch {epoch + 1}/{epochs} " + progress_mod.format_logs(logs))

    def _n_correct(self, out, target):
        pred = self._k.to_numpy(out)
        if pred.shape[1] == 1:  # binary on one logit
            return int(np.sum((pred[:, 0] > 0) == (target[:, 0] > 0.5)))
        labels = target if target.ndim == 1 else target.argmax(axis=1)
        return int(np.sum(pred.argmax(axis=1) == labels))

    # ---- training state ---------------------------------------------------------

    def save(self, path):
        """Write the whole training state to an .npz file, so that
        ``Trainer.load(path).fit(X, y, ...)`` continues the trajectory an
        uninterrupted fit would have followed, bit for bit: the model
        (architecture, parameters, running statistics, dropout seeds and
        call counters), the loss, the optimizer (hyperparameters, current
        learning rate, state buffers, step count, NAdam's mu_product), the
        Schedule callbacks of the last fit (their epoch counters and
        plateau state), the shuffling stream (fit's RNG state) and the
        trainer's options.  Written atomically as ``model.save`` (a
        temporary file renamed); nothing is pickled.

        Resuming: the loaded trainer's next fit continues the schedules
        unless it is given Schedule callbacks of its own, and with
        ``seed=None`` continues the shuffling stream.  ``epochs`` counts
        the epochs of the new fit.
        """
        from . import model as model_mod

        if not self._bound:
            raise RuntimeError("save: the model is not built yet (nothing trained)")
        loss_key = next((k for k, cls in losses_mod.LOSSES.items() if type(self.loss) is cls),
                        None)
        opt = self.optimizer
        if loss_key is None:
            raise ValueError(f"save: the loss {type(self.loss).__name__} is not one of "
                             "fastnn's own (it cannot be written)")
        if type(opt) is not optim_mod.OPTIMIZERS.get(opt.kernel):
            raise ValueError(f"save: the optimizer {type(opt).__name__} is not one of "
                             "fastnn's own (it cannot be written)")
        dropout = [{"seed": int(layer.seed), "calls": int(layer.calls)}
                   for layer in self.model.walk() if hasattr(layer, "reseed")]
        state = {
            "format": _TRAINER_FORMAT,
            "loss": {"type": loss_key, "value_scale": self.loss.value_scale,
                     "grad_scale": self.loss.grad_scale},
            "optimizer": {"type": opt.kernel, "hyper": _jsonable(opt.hyperparameters()),
                          "lr": float(opt.lr), "step_count": int(opt.step_count),
                          "scalars": {k: float(getattr(opt, k)) for k in opt.spec.scalars},
                          "states": sorted(opt.state)},
            "options": {"fused": self._fused_arg, "l2": self.l2, "clip_value": self.clip_value,
                        "clip_norm": self.clip_norm},
            "dropout": dropout,
            "rng": None if self._fit_rng is None else self._fit_rng.bit_generator.state,
            "schedules": [_schedule_state(sc) for sc in self.schedules],
        }
        arrays = self.model._arrays()
        arrays["trainer"] = np.array(json.dumps(state))
        for name, buf in opt.state.items():
            arrays["state_" + name] = np.asarray(self._k.to_numpy(buf), np.float32)
        if self.distributed is None:
            model_mod.atomic_savez(path, **arrays)
            return
        if self.distributed.rank == 0:  # rank 0 writes; the others wait for the file
            model_mod.atomic_savez(path, **arrays)
        self.distributed.allreduce(np.zeros(1), "sum", "the save")

    @classmethod
    def load(cls, path, backend=None, distributed=None):
        """A Trainer from a file written by :meth:`save` (see there), on
        `backend` (default: the backend of fastnn's default), data-parallel
        if `distributed` (as the constructor's; every rank loads).  ValueError
        for a file that is not a fastnn trainer, is truncated or whose
        parts do not agree; nothing is unpickled."""
        from . import model as model_mod

        path = os.fspath(path)
        base = {"architecture", "params", "buffers", "trainer"}
        arrays = model_mod.read_npz(
            path, "fastnn trainer",
            lambda files: base <= files and all(f in base or f.startswith("state_")
                                                for f in files))
        try:
            state = json.loads(str(arrays["trainer"]))
        except (ValueError, RecursionError) as exc:
            raise ValueError(f"{path}: not a readable fastnn trainer (bad JSON: {exc})") from exc
        if not isinstance(state, dict) or state.get("format") != _TRAINER_FORMAT:
            found = state.get("format") if isinstance(state, dict) else None
            raise ValueError(f"{path}: not a fastnn trainer (format {found!r})")
        model = model_mod.from_arrays(path, arrays, backend)
        try:
            return cls._restore(model, state, arrays, backend, distributed)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"{path}: inconsistent trainer state ({type(exc).__name__}: "
                             f"{exc})") from exc

    @classmethod
    def _restore(cls, model, state, arrays, backend, distributed=None):
        lo, o = state["loss"], state["optimizer"]
        loss = losses_mod.LOSSES[lo["type"]](value_scale=lo["value_scale"],
                                             grad_scale=lo["grad_scale"])
        opt = optim_mod.OPTIMIZERS[o["type"]](**o["hyper"])
        options = state["options"]
        tr = cls(model, loss, opt, backend=backend, fused=options["fused"], l2=options["l2"],
                 clip_value=options["clip_value"], clip_norm=options["clip_norm"],
                 distributed=distributed)
        if sorted(opt.state) != o["states"] or set(arrays) - {
                "architecture", "params", "buffers", "trainer"} != {
                "state_" + n for n in opt.state}:
            raise ValueError(f"optimizer states {o['states']} do not match {sorted(opt.state)}")
        for name, buf in opt.state.items():
            host = arrays["state_" + name]
            if host.dtype != np.float32 or host.shape != (model.size,) \
                    or not np.all(np.isfinite(host)):
                raise ValueError(f"optimizer state {name!r}: expected ({model.size},) finite "
                                 f"float32, got {host.dtype} {host.shape}")
            if isinstance(buf, np.ndarray):
                buf[...] = host
            else:
                buf.copy_to_device(np.ascontiguousarray(host, model.dtype))
        opt.lr = _checks.check_scalar("lr", o["lr"], low=0.0)
        opt.step_count = _checks._integer("step_count", o["step_count"], 0)
        if set(o["scalars"]) != set(opt.spec.scalars):
            raise ValueError(f"optimizer scalars {sorted(o['scalars'])}")
        for name, value in o["scalars"].items():
            setattr(opt, name, float(value))
        drops = [layer for layer in model.walk() if hasattr(layer, "reseed")]
        if len(drops) != len(state["dropout"]):
            raise ValueError(f"{len(state['dropout'])} dropout states for {len(drops)} layers")
        for layer, d in zip(drops, state["dropout"]):
            layer.seed = _checks._integer("dropout seed", d["seed"], 0, 2 ** 63 - 1)
            layer.calls = _checks._integer("dropout calls", d["calls"], 0)
        if state["rng"] is not None:
            bit = getattr(np.random, state["rng"]["bit_generator"])()
            bit.state = state["rng"]
            tr._fit_rng = np.random.Generator(bit)
        tr.schedules = tr._resume_schedules = [_schedule_from(s) for s in state["schedules"]]
        return tr

    # ---- inference --------------------------------------------------------------

    def _evaluate(self, X, t, batch_size=1024):
        total, correct = 0.0, 0
        for lo in range(0, len(X), batch_size):
            xb, tb = X[lo:lo + batch_size], t[lo:lo + batch_size]
            out = self.model.forward(self._to_backend("x", xb))
            total += self.loss.forward(out, self._to_backend("t", tb)) * len(xb)
            if self.loss.classification:
                correct += self._n_correct(out, tb)
        logs = {"loss": total / len(X)}
        if self.loss.classification:
            logs["accuracy"] = correct / len(X)
        return logs

    def evaluate(self, X, y):
        """Mean loss (and accuracy for classification losses) on (X, y)."""
        self._build_for(X)
        X = check_X(X, self.model.input_shape, self.model.dtype)
        return self._evaluate(X, self._targets(y, len(X)))

    def predict(self, X):
        """Raw model outputs for X (a host numpy array)."""
        return self.model.predict(X)

    def predict_proba(self, X):
        """Class probabilities: softmax of the logits (softmax_cross_entropy) or
        sigmoid (binary_cross_entropy)."""
        if not self.loss.classification:
            raise ValueError(f"predict_proba needs a classification loss, not {self.loss!r}")
        return self.loss.proba(self.predict(X))
