"""Many models in one call: ensembles over seeds, hyperparameter grids and
cross-validation folds (:func:`fit_many`)."""

import time

import numpy as np

from . import progress as progress_mod
from .kernels import spec
from .trainer import Diverged, Trainer, _check_batch_size, _check_epochs, check_X


def fit_many(trainers, X, y, *, epochs=1, batch_size=32, validation_data=None, shuffle=True,
             seed=None, rows=None, verbose="auto", errors="raise", n_jobs=None):
    """Train several trainers on (rows of) the same data.

    Each trainer ends exactly where ``trainer.fit(X[rows[i]], y[rows[i]],
    epochs=epochs, batch_size=batch_size, shuffle=shuffle, seed=seed)``
    alone would (the same permutations from the same seed), float32
    rounding aside; X is never copied per trainer (each epoch visits its
    rows through an order of X's rows).

    Parameters
    ----------
    trainers : list of Trainer
        Each with its own model, loss, optimizer and options; all on one
        backend, all models taking X's per-sample shape.
    X, y : array-like
        The data, validated and converted once.
    epochs, batch_size, shuffle, seed : as Trainer.fit, the same for all.
    validation_data : (Xv, yv), or a list of one (Xv, yv) or None per
        trainer (e.g. each fold's held-out rows).
    rows : None or a list of one 1-D integer array per trainer: the rows
        of X (and y) it trains on, in that order (each non-empty, in [0,
        n)); None: all rows for every trainer.
    verbose : 0, 1, 2, "auto" or bool
        As Trainer.fit's (fastnn.progress): 1 a bar per epoch over every
        trainer's batches (moved from inside the compiled epochs by the
        epoch hook), 2 one line per epoch summarising the trainers' losses.
    errors : "raise" or "ignore"
        A trainer whose loss becomes NaN or Inf stops at that batch (its
        parameters as before the bad update) while the others go on.  At
        the end "raise" raises FloatingPointError naming each such trainer,
        epoch and batch; "ignore" returns, with ``history.diverged = (epoch,
        batch)`` (0-based) on those trainers' Histories (None on the others).
    n_jobs : int or None
        None or 1: every trainer in this process, in one bank.  k > 1 (-1:
        joblib's count): the trainers are cut into k banks handed to joblib,
        each trained in another process (loky) or, under ``with
        joblib.parallel_backend("dask"):``, on a Dask cluster's workers (X
        and y are scattered once); the trained parameters, buffers and
        optimizer states come back into these trainers, which end as with
        n_jobs=None.  ``verbose`` prints nothing then.

    Returns
    -------
    list of History, one per trainer.  Early stopping, schedules and
    callbacks are per trainer: pass them to a Trainer's fit for a single
    model, or (schedules) set them on the optimizer.
    """
    trainers = _check_trainers(trainers)
    if errors not in ("raise", "ignore"):
        raise ValueError(f"errors: expected 'raise' or 'ignore', got {errors!r}")
    epochs = _check_epochs(epochs)
    batch_size = _check_batch_size(batch_size)
    for tr in trainers:  # (a deferred model is built by the data)
        tr._build_for(X)
    first = trainers[0].model
    X = check_X(X, first.input_shape, first.dtype)
    n = len(X)
    rows = _check_rows(rows, len(trainers), n)
    validation = _check_validation(validation_data, len(trainers))
    jobs = _check_n_jobs(n_jobs, len(trainers))
    for i, tr in enumerate(trainers):
        if getattr(tr, "distributed", None) is not None:
            raise ValueError(f"trainers[{i}]: a distributed (MPI) trainer trains alone, with "
                             f"its fit, not in fit_many")
    if jobs > 1:
        histories = _fit_banks(trainers, X, y, jobs, rows, validation,
                               dict(epochs=epochs, batch_size=batch_size, shuffle=shuffle,
                                    seed=seed))
        return _finish(histories, errors)
    targets = {}
    runs = []
    for i, tr in enumerate(trainers):
        key = (type(tr.loss), tr.model.output_shape)
        if key not in targets:  # one conversion of y per kind of loss and output
            targets[key] = tr._targets(y, n)
        runs.append(tr._fit_run(X, targets[key], rows[i], epochs, batch_size, validation[i],
                                shuffle, seed, (), None, plan=True))
    verbose = progress_mod.check_verbose(verbose)
    k = trainers[0]._k
    active = list(range(len(runs)))
    diverged = {}
    for epoch in range(epochs):
        losses = []
        # the compiled epochs of every active trainer in one kernel call
        # (the c backend trains them side by side), the others one by one
        together = [i for i in active if runs[i].runner.compiled]
        lrs = {i: trainers[i].optimizer.lr for i in active}
        bar = (_ManyBar(epoch, epochs, sum(runs[i].n_batches for i in active))
               if verbose == 1 else None)
        start = time.perf_counter()
        results = {}
        if together:
            built = [runs[i].runner.build(runs[i].next_order()) for i in together]
            if bar is not None:
                for i, e in zip(together, built):
                    e.hook, e.hook_every = bar.hook(), progress_mod.hook_every(runs[i].n_batches)
            try:
                results = dict(zip(together, k.model_epochs(built)))
            except BaseException:
                if bar is not None:
                    bar.close()
                raise
        shared = time.perf_counter() - start
        for i in list(active):
            run = runs[i]
            start = time.perf_counter()
            try:
                if i in results:
                    total, correct = run.runner.finish(results[i], run.epoch)
                else:
                    total, correct = run.run(run.next_order())
                    if bar is not None:
                        bar.advance(run.n_batches)
            except Diverged as exc:
                diverged[i] = (exc.epoch, exc.batch)
                active.remove(i)
                continue
            elapsed = shared if i in results else time.perf_counter() - start
            if run.finish_epoch(total, correct, elapsed, lrs[i], False):
                active.remove(i)
            losses.append(run.history.loss[-1])
        if bar is not None:
            bar.finish(_summary(losses, len(diverged)))
        elif verbose:
            print(f"epoch {epoch + 1}/{epochs}: {_summary(losses, len(diverged))}")
        if not active:
            break
    histories = [run.history for run in runs]
    for i, h in enumerate(histories):
        h.diverged = diverged.get(i)
    return _finish(histories, errors)


def _finish(histories, errors):
    diverged = {i: h.diverged for i, h in enumerate(histories) if h.diverged is not None}
    if diverged and errors == "raise":
        where = "; ".join(f"trainer {i}: epoch {e + 1}, batch {b + 1}"
                          for i, (e, b) in sorted(diverged.items()))
        raise FloatingPointError(f"fit_many: the loss became NaN or Inf ({where}); the other "
                                 f"trainers trained on (errors='ignore' returns their Histories)")
    return histories


def _check_n_jobs(n_jobs, k):
    """How many banks (1: train here)."""
    if n_jobs is None:
        return 1
    if isinstance(n_jobs, bool) or not isinstance(n_jobs, (int, np.integer)) or n_jobs == 0 \
            or n_jobs < -1:
        raise ValueError(f"n_jobs: expected None, an integer >= 1 or -1, got {n_jobs!r}")
    import joblib

    return max(1, min(int(joblib.effective_n_jobs(int(n_jobs))), k))


def _fit_banks(trainers, X, y, jobs, rows, validation, options):
    """fit_many over `jobs` banks through joblib; the results copied back
    into `trainers`.  Returns their Histories."""
    from joblib import Parallel, delayed

    from . import _transport

    banks = [list(b) for b in np.array_split(np.arange(len(trainers)), jobs) if len(b)]
    packed = [_transport.dumps([trainers[i] for i in b], [trainers[i] for i in b])
              for b in banks]
    out = Parallel(n_jobs=len(banks))(
        delayed(_train_bank)(data, X, y, [rows[i] for i in b], [validation[i] for i in b],
                             options) for data, b in zip(packed, banks))
    histories = [None] * len(trainers)
    for b, data in zip(banks, out):
        trained, bank_histories = _transport.loads(data)
        for i, tb, h in zip(b, trained, bank_histories):
            _copy_trained(trainers[i], tb)
            histories[i] = h
    return histories


def _train_bank(data, X, y, rows, validation, options):
    """One bank, on a worker: fit_many of the trainers in `data` (bytes);
    returns the trained trainers and their Histories, as bytes."""
    from . import _transport

    trainers = _transport.loads(data)
    if all(r is None for r in rows):
        rows = None
    else:
        rows = [np.arange(len(X)) if r is None else r for r in rows]
    histories = fit_many(trainers, X, y, rows=rows, validation_data=list(validation),
                         verbose=False, errors="ignore", **options)
    return _transport.dumps((trainers, histories), trainers)


def _copy_trained(tr, trained):
    """What a fit changes in a trainer, from its trained copy."""
    tr.model.set_params(trained.model.get_params())
    tr.model.set_buffers(trained.model.get_buffers())
    for la, lb in zip(tr.model.walk(), trained.model.walk()):
        if hasattr(lb, "calls"):  # dropout's call counter
            la.calls = lb.calls
    opt, new = tr.optimizer, trained.optimizer
    for key, value in vars(new).items():
        if key == "state":
            for name, arr in value.items():
                if isinstance(opt.state.get(name), np.ndarray):
                    opt.state[name][...] = arr
                else:
                    opt.state[name] = arr
        elif not key.startswith("_") and isinstance(value, (int, float, np.number, tuple)):
            setattr(opt, key, value)


def _check_trainers(trainers):
    if isinstance(trainers, Trainer) or not hasattr(trainers, "__len__"):
        raise TypeError("trainers: expected a list of fastnn.Trainer")
    trainers = list(trainers)
    if not trainers:
        raise ValueError("trainers: empty list")
    for i, tr in enumerate(trainers):
        if not isinstance(tr, Trainer):
            raise TypeError(f"trainers[{i}]: expected a fastnn.Trainer, got {type(tr).__name__}")
    first = trainers[0]
    for i, tr in enumerate(trainers):
        if tr.backend != first.backend:
            raise ValueError(f"trainers[{i}]: backend {tr.backend!r}, trainers[0] has "
                             f"{first.backend!r}; train one backend per call")
        if tr.model.input_shape != first.model.input_shape or tr.model.dtype != first.model.dtype:
            raise ValueError(f"trainers[{i}]: the model takes {tr.model.input_shape} "
                             f"{tr.model.dtype}, trainers[0]'s {first.model.input_shape} "
                             f"{first.model.dtype}: X must fit every model")
    for i, tr in enumerate(trainers):
        for j in range(i):
            if trainers[j].model is tr.model:
                raise ValueError(f"trainers[{i}] and trainers[{j}] train the same model")
    return trainers


def _check_rows(rows, k, n):
    if rows is None:
        return [None] * k
    if isinstance(rows, np.ndarray) or len(rows) != k:
        raise ValueError(f"rows: expected a list of {k} index arrays (one per trainer)")
    out = []
    for i, r in enumerate(rows):
        r = np.asarray(r)
        if r.ndim != 1 or r.size == 0 or r.dtype.kind not in "iu":
            raise ValueError(f"rows[{i}]: expected a non-empty 1-D integer array, got "
                             f"{r.dtype} of shape {r.shape}")
        if r.min() < 0 or r.max() >= n:
            raise ValueError(f"rows[{i}]: indices must lie in [0, {n})")
        out.append(np.ascontiguousarray(r, dtype=np.int64))
    return out


def _check_validation(validation_data, k):
    if validation_data is None:
        return [None] * k
    if isinstance(validation_data, tuple):
        if len(validation_data) != 2:
            raise ValueError("validation_data: expected (X, y) or a list of them")
        return [validation_data] * k
    if isinstance(validation_data, list) and len(validation_data) == k:
        for i, v in enumerate(validation_data):
            if v is not None and (not isinstance(v, tuple) or len(v) != 2):
                raise ValueError(f"validation_data[{i}]: expected (X, y) or None")
        return validation_data
    raise ValueError(f"validation_data: expected (X, y) or a list of {k} (X, y) or None")


def _summary(losses, n_diverged):
    if not losses:
        return f"no trainer left ({n_diverged} diverged)"
    q = np.percentile(losses, [0, 50, 100])
    return (f"{len(losses)} trainers, loss min {q[0]:.4g} median {q[1]:.4g} max {q[2]:.4g}"
            + (f", {n_diverged} diverged" if n_diverged else ""))


class _ManyBar:
    """verbose=1: one bar per epoch over every trainer's batches; each
    compiled epoch moves it through its own hook (called from the thread
    training that model, under the GIL)."""

    def __init__(self, epoch, epochs, total):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, desc=f"epoch {epoch + 1}/{epochs}", unit="batch",
                        leave=True, dynamic_ncols=True)

    def advance(self, batches):
        self.bar.update(batches)

    def hook(self):
        return _ManyHook(self)

    def finish(self, text):
        self.bar.set_postfix_str(text, refresh=False)
        self.bar.close()

    def close(self):
        self.bar.close()


class _ManyHook:
    events = frozenset({spec.HookEvent.BATCH})

    def __init__(self, bar):
        self.bar, self.seen = bar, 0

    def __call__(self, event, batch):
        self.bar.advance(batch + 1 - self.seen)
        self.seen = batch + 1
