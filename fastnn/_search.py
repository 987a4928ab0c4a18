"""MLPSearchCV: scikit-learn's GridSearchCV over fastnn's MLP estimators,
with each fold's candidates trained as banks (one kernel call per epoch for
all of a bank's networks)."""

import sys
import time
import warnings
from collections import defaultdict

import numpy as np
from joblib import Parallel, delayed, effective_n_jobs
from scipy.stats import rankdata
from sklearn.base import clone, is_classifier
from sklearn.exceptions import FitFailedWarning
from sklearn.metrics import check_scoring
from sklearn.model_selection import GridSearchCV, ParameterGrid, check_cv
from sklearn.pipeline import Pipeline
from sklearn.utils import indexable

from . import kernels

# Parameters that change the network or its batches: candidates differing
# in them train in different banks (the others share one).
BANK_KEYS = ("hidden_layer_sizes", "activation", "batch_size", "solver", "backend",
             "early_stopping", "shuffle")


def _subset(X, idx):
    return X.iloc[idx] if hasattr(X, "iloc") else X[idx]


def _train_bank(estimators, X, y):
    """Fit each (unfitted) estimator on (X, y) as fit would, all their
    epochs advancing together: the compiled epochs of one round in one
    model_epochs call.  Returns a list of (fitted estimator or the
    exception, fit time)."""
    start = time.perf_counter()
    gens, state, failed = {}, {}, {}
    shared = {}  # X and y validated once for the bank
    for i, est in enumerate(estimators):
        try:
            gens[i] = est._fit_epochs(X, y, plan=True, shared=shared)
            state[i] = next(gens[i])
        except StopIteration:
            pass
        except Exception as exc:  # noqa: BLE001 - reported as a failed fit (error_score)
            failed[i] = exc
    by_backend = defaultdict(list)
    while state:
        for i, (runner, _) in state.items():
            by_backend[runner.trainer.backend if runner.compiled else None].append(i)
        losses = {}
        for backend, members in by_backend.items():
            if backend is None:
                for i in members:
                    runner, order = state[i]
                    losses[i] = _call(runner, order)
                continue
            built = [state[i][0].build(state[i][1]) for i in members]
            for i, result in zip(members, kernels.get(backend).model_epochs(built)):
                losses[i] = _call(lambda r, runner=state[i][0]: runner.finish(r)[0] / runner.n,
                                  result)
        by_backend.clear()
        for i, loss in losses.items():
            try:
                state[i] = (gens[i].throw(loss) if isinstance(loss, FloatingPointError)
                            else gens[i].send(loss))
            except StopIteration:
                del state[i]
            except Exception as exc:  # noqa: BLE001
                failed[i] = exc
                del state[i]
    elapsed = (time.perf_counter() - start) / max(len(estimators), 1)
    return [(failed.get(i, est), elapsed) for i, est in enumerate(estimators)]


def _call(fn, arg):
    try:
        return fn(arg)
    except FloatingPointError as exc:
        return exc


class MLPSearchCV(GridSearchCV):
    """Exhaustive search over a parameter grid for fastnn.sklearn's
    MLPClassifier / MLPRegressor (or a Pipeline ending in one), with
    scikit-learn's GridSearchCV semantics and attributes.

    The candidates of a fold are trained as banks: those that share the
    architecture and batching (``BANK_KEYS``: hidden_layer_sizes,
    activation, batch_size, solver, ...) train together, each epoch of all
    of them one ``model_epochs`` kernel call (the c backend trains them
    side by side, one network per thread).  Each candidate ends where its
    own ``fit`` would, so the scores are those of ``GridSearchCV`` over the
    same estimator with the same splits.  Without ``n_jobs`` (and no joblib
    backend in force), as many banks as the c backend has threads run at
    once in threads of this process, each on one thread, so that one bank's
    Python overlaps the others' compiled epochs.  For a Pipeline, the steps
    before the estimator are fitted once per fold (and per distinct setting
    of their own parameters).  ``n_jobs`` runs banks through joblib (so a
    joblib backend such as Dask's distributes them: under ``with
    joblib.parallel_backend("dask"):`` each bank is a task on a worker, X
    and y are scattered to the cluster once, and fastnn's kernels on a
    worker use its threads_per_worker threads).

    Parameters
    ----------
    estimator : MLPClassifier, MLPRegressor, or a Pipeline ending in one
    param_grid : dict or list of dicts
    cv : int, cross-validation generator or iterable (as GridSearchCV)
    scoring : str, callable or None (the estimator's score)
    refit : bool
    n_jobs : int or None
    verbose : int
    return_train_score : bool
    error_score : "raise" or a number (default NaN): a fit that fails
        (e.g. diverges) scores this, with a FitFailedWarning.
    """

    def __init__(self, estimator, param_grid, *, cv=5, scoring=None, refit=True, n_jobs=None,
                 verbose=0, return_train_score=False, error_score=np.nan):
        super().__init__(estimator, param_grid, scoring=scoring, n_jobs=n_jobs, refit=refit,
                         cv=cv, verbose=verbose, return_train_score=return_train_score,
                         error_score=error_score)

    def fit(self, X, y=None, **params):
        """Train every candidate on every fold (as banks), score them,
        refit the best on all of X."""
        if params:
            raise TypeError(f"MLPSearchCV.fit takes no fit parameters, got {sorted(params)}")
        if not isinstance(self.refit, bool):
            raise ValueError("refit: expected True or False (one metric)")
        estimator = self.estimator
        final = estimator.steps[-1][1] if isinstance(estimator, Pipeline) else estimator
        if not hasattr(final, "_fit_epochs"):
            raise TypeError("estimator: expected fastnn.sklearn's MLPClassifier or MLPRegressor "
                            "(or a Pipeline ending in one)")
        X, y = indexable(X, y)
        cv = check_cv(self.cv, y, classifier=is_classifier(estimator))
        splits = list(cv.split(X, y))
        self.n_splits_ = len(splits)
        scorer = check_scoring(estimator, self.scoring)
        self.scorer_ = scorer
        self.multimetric_ = False
        candidates = list(ParameterGrid(self.param_grid))
        if not candidates:
            raise ValueError("param_grid: no candidates")
        jobs = self._jobs(candidates, splits)
        args = (X, y, splits, scorer, self.return_train_score, self.error_score)
        side = _side_by_side(estimator, jobs, self.n_jobs)
        if side > 1:
            out = _run_side_by_side(estimator, jobs, args, side)
        else:
            out = Parallel(n_jobs=self.n_jobs, verbose=self.verbose)(
                delayed(_run_job)(estimator, job, *args) for job in jobs)
        results = {}
        for job_out in out:
            results.update(job_out)
        self.cv_results_ = self._results(candidates, results)
        ranks = self.cv_results_["rank_test_score"]
        self.best_index_ = int(np.argmin(ranks))
        self.best_params_ = candidates[self.best_index_]
        self.best_score_ = float(self.cv_results_["mean_test_score"][self.best_index_])
        if self.refit:
            best = clone(estimator).set_params(**self.best_params_)
            start = time.perf_counter()
            best.fit(X, y)
            self.refit_time_ = time.perf_counter() - start
            self.best_estimator_ = best
            if hasattr(best, "feature_names_in_"):
                self.feature_names_in_ = best.feature_names_in_
        return self

    def _jobs(self, candidates, splits):
        """(fold, pre-step params, [candidate indices]) per bank."""
        is_pipe = isinstance(self.estimator, Pipeline)
        final_name = self.estimator.steps[-1][0] if is_pipe else None
        jobs = []
        for f in range(len(splits)):
            banks = defaultdict(list)
            for c, params in enumerate(candidates):
                pre = {k: v for k, v in params.items()
                       if is_pipe and not k.startswith(final_name + "__")}
                own = {k[len(final_name) + 2:] if is_pipe else k: v
                       for k, v in params.items() if k not in pre}
                key = (repr(sorted(pre.items())),
                       repr([(k, own.get(k)) for k in BANK_KEYS]))
                banks[key].append(c)
            for (pre_key, _), members in banks.items():
                pre = {k: v for k, v in candidates[members[0]].items()
                       if is_pipe and not k.startswith(final_name + "__")}
                jobs.append((f, pre, members, candidates))
        return jobs

    def _results(self, candidates, results):
        """cv_results_ with GridSearchCV's keys."""
        n_c, n_s = len(candidates), self.n_splits_
        out = {}
        grid = lambda key: np.array([[results[(c, f)][key] for f in range(n_s)]  # noqa: E731
                                     for c in range(n_c)], dtype=float)
        for key in ("fit_time", "score_time"):
            values = grid(key)
            out[f"mean_{key}"], out[f"std_{key}"] = values.mean(axis=1), values.std(axis=1)
        names = sorted({k for p in candidates for k in p})
        for name in names:
            col = np.ma.MaskedArray(np.empty(n_c, dtype=object), mask=True)
            for c, p in enumerate(candidates):
                if name in p:
                    col[c] = p[name]
            out[f"param_{name}"] = col
        out["params"] = candidates
        sets = ["test"] + (["train"] if self.return_train_score else [])
        for which in sets:
            scores = grid(f"{which}_score")
            for f in range(n_s):
                out[f"split{f}_{which}_score"] = scores[:, f]
            out[f"mean_{which}_score"] = scores.mean(axis=1)
            out[f"std_{which}_score"] = scores.std(axis=1)
            if which == "test":
                out["rank_test_score"] = _ranks(out["mean_test_score"])
        return out


def _ranks(means):
    """GridSearchCV's ranks: 1 for the best mean, ties share the lowest
    rank, NaN means rank last."""
    if np.isnan(means).all():
        return np.ones(len(means), dtype=np.int32)
    means = np.nan_to_num(means, nan=np.nanmin(means) - 1)
    return rankdata(-means, method="min").astype(np.int32)


def _run_job(estimator, job, X, y, splits, scorer, train_score, error_score):
    """One bank: fold f's candidates `members` (their pre-step params
    `pre` shared); returns {(candidate, fold): scores and times}."""
    f, pre, members, candidates = job
    _dask_worker_threads()
    train_idx, test_idx = splits[f]
    X_train, y_train = _subset(X, train_idx), _subset(y, train_idx)
    X_test, y_test = _subset(X, test_idx), _subset(y, test_idx)
    is_pipe = isinstance(estimator, Pipeline)
    pre_time = 0.0
    if is_pipe:
        pipe = clone(estimator).set_params(**pre)
        start = time.perf_counter()
        steps, Xt = [], X_train
        for name, step in pipe.steps[:-1]:
            step = clone(step)
            Xt = step.fit_transform(Xt, y_train)
            steps.append((name, step))
        pre_time = time.perf_counter() - start
        final_name, final = pipe.steps[-1]
        fitted_pre = steps
    else:
        final, Xt = estimator, X_train
    models = []
    for c in members:
        params = candidates[c]
        if is_pipe:
            params = {k[len(final_name) + 2:]: v for k, v in params.items()
                      if k.startswith(final_name + "__")}
        models.append(clone(final).set_params(**params))
    out = {}
    for c, (fitted, fit_time) in zip(members, _train_bank(models, Xt, y_train)):
        fit_time += pre_time / len(members)
        if isinstance(fitted, Exception):
            if error_score == "raise":
                raise fitted
            warnings.warn(f"MLPSearchCV: candidate {candidates[c]} failed on fold {f}: "
                          f"{type(fitted).__name__}: {fitted}; its score is {error_score}",
                          FitFailedWarning, stacklevel=2)
            out[(c, f)] = {"fit_time": fit_time, "score_time": 0.0,
                           "test_score": error_score, "train_score": error_score}
            continue
        model = Pipeline(fitted_pre + [(final_name, fitted)]) if is_pipe else fitted
        start = time.perf_counter()
        test = scorer(model, X_test, y_test)
        score_time = time.perf_counter() - start
        train = scorer(model, X_train, y_train) if train_score else np.nan
        out[(c, f)] = {"fit_time": fit_time, "score_time": score_time,
                       "test_score": test, "train_score": train}
    return out


def _side_by_side(estimator, jobs, n_jobs):
    """How many banks run at once in this process, each on one thread of
    the c backend's thread count (1: one after another, each bank's epochs
    on all the threads).  Side by side, one bank's Python (its front, the
    end-of-epoch rules, validation and scoring, serial under the GIL) runs
    while the others' compiled epochs compute, as GridSearchCV's worker
    processes do; the kernels release the GIL.  Only when joblib would run
    the banks one after another (no n_jobs, no joblib backend in force that
    spreads them) and every bank trains on the c backend."""
    if effective_n_jobs(n_jobs) != 1 or len(jobs) < 2 or not _all_c(estimator, jobs):
        return 1
    try:
        threads = kernels.get("c").info()["threads"]
    except ImportError:
        return 1
    return min(threads, len(jobs))


def _finals(estimator, jobs):
    """{candidate: its final estimator (unfitted, its parameters set)}."""
    finals = {}
    for _, _, members, candidates in jobs:
        for c in members:
            if c not in finals:
                est = clone(estimator).set_params(**candidates[c])
                finals[c] = est.steps[-1][1] if isinstance(est, Pipeline) else est
    return finals


def _all_c(estimator, jobs):
    """Whether every candidate of `jobs` trains on the c backend (float32)."""
    try:
        return all(final._backend() == "c" for final in _finals(estimator, jobs).values())
    except ValueError:  # a bad dtype / backend: its fit says so
        return False


def _job_cost(finals, job):
    """A bank's relative cost: its members' weights (the multiply-adds of a
    sample) times their epochs, for the longest banks to start first."""
    cost = 0
    for c in job[2]:
        sizes = finals[c].hidden_layer_sizes
        sizes = [1] + (list(sizes) if hasattr(sizes, "__iter__") else [sizes]) + [1]
        try:
            cost += sum(int(a) * int(b) for a, b in zip(sizes, sizes[1:])) * int(finals[c].max_iter)
        except (TypeError, ValueError):  # (a bad parameter: its fit says so)
            pass
    return cost


def _run_side_by_side(estimator, jobs, args, threads):
    """_run_job over `jobs`, `threads` banks at a time, each worker's C
    kernels on that worker alone (the longest banks first, so that the
    last to finish are short)."""
    from concurrent.futures import ThreadPoolExecutor

    c = kernels.get("c")
    finals = _finals(estimator, jobs)
    order = sorted(range(len(jobs)), key=lambda j: -_job_cost(finals, jobs[j]))

    def run(job):
        before = c.run_serial(True)
        try:
            return _run_job(estimator, job, *args)
        finally:
            c.run_serial(before)

    with ThreadPoolExecutor(max_workers=threads) as pool:
        futures = [pool.submit(run, jobs[j]) for j in order]
        return [f.result() for f in futures]


def _dask_worker_threads():
    """On a Dask worker, fastnn's kernels use the worker's threads
    (threads_per_worker), not every core of the machine."""
    if "distributed" not in sys.modules:
        return
    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):  # not on a worker
        return
    n = getattr(worker, "nthreads", None) or getattr(getattr(worker, "state", None),
                                                     "nthreads", None)
    if n:
        kernels.set_num_threads(int(n))
