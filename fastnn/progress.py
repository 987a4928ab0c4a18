"""Progress of a fit, Keras's ``verbose`` semantics (Trainer.fit, fit_many,
the CLI).

``verbose``: 0 (or False) silent; 1 a ``tqdm.auto`` bar per epoch (a
widget in a notebook) with the running loss and samples/s, updated within
the epoch -- on the compiled path through the epoch hook
(:class:`fastnn.kernels.spec.HookEvent`, every ~2% of the batches: the cost
is not measurable); 2 one line per epoch; "auto" (and True) 1 on a terminal
or in a notebook, else 2 (a log file gets lines, not bar redraws).
tqdm is imported when a bar is made.
"""

import sys

import numpy as np

from .kernels import spec

# The bar's updates per epoch on the compiled path (one hook call each).
UPDATES_PER_EPOCH = 50


def check_verbose(verbose):
    """0, 1 or 2 for a verbose setting; ValueError otherwise."""
    if verbose is True or (isinstance(verbose, str) and verbose == "auto"):
        return 1 if _interactive() else 2
    if verbose is False or verbose is None:
        return 0
    if isinstance(verbose, (int, np.integer)) and 0 <= verbose <= 2:
        return int(verbose)
    raise ValueError(f"verbose: expected 0, 1, 2, 'auto' or a bool, got {verbose!r}")


def _interactive():
    """A terminal on stderr, or a Jupyter kernel (tqdm.auto's widget)."""
    try:
        if sys.stderr is not None and sys.stderr.isatty():
            return True
    except (AttributeError, ValueError):
        pass
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    try:
        shell = ipython.get_ipython()
    except AttributeError:
        return False
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


def hook_every(n_batches):
    """The BATCH hook's period for about UPDATES_PER_EPOCH bar updates."""
    return max(1, n_batches // UPDATES_PER_EPOCH)


def format_logs(logs):
    return " ".join(f"{k}={v:,.0f}" if k == "samples_per_s" else f"{k}={v:.4g}"
                    for k, v in logs.items())


class EpochBar:
    """One epoch's bar (verbose=1): ``update(batches, loss_sum, rows)``
    while it runs (cumulative: batches done, sum of their losses weighted
    by rows, rows done), ``finish(logs)`` at its end (the epoch's logs as
    the bar's postfix; the bar stays as the epoch's line)."""

    def __init__(self, epoch, epochs, n_batches, file=None):
        from tqdm.auto import tqdm

        import time

        self._time = time.perf_counter
        self.start = self._time()
        self.n_batches = n_batches
        self.bar = tqdm(total=n_batches, desc=f"epoch {epoch + 1}/{epochs}", unit="batch",
                        leave=True, file=file, dynamic_ncols=True)
        self.done = 0
        self.loss = float("nan")
        self.every = hook_every(n_batches)

    def update(self, batches, loss_sum, rows):
        if batches > self.done:
            self.bar.update(batches - self.done)
            self.done = batches
        self.loss = loss_sum / rows if rows else float("nan")
        elapsed = self._time() - self.start
        self.bar.set_postfix_str(f"loss={self.loss:.4g} samples/s="
                                 f"{rows / elapsed if elapsed > 0 else 0:,.0f}", refresh=False)

    def hook(self, batch_losses, sizes):
        """The compiled epoch's hook updating this bar from batch_losses
        (the epoch's, written as it runs) and the batches' sizes."""
        return _BarHook(self, batch_losses, sizes)

    def finish(self, logs):
        if self.done < self.n_batches:
            self.bar.update(self.n_batches - self.done)
            self.done = self.n_batches
        self.bar.set_postfix_str(format_logs(logs), refresh=False)
        self.bar.close()

    def close(self):
        self.bar.close()


class _BarHook:
    """ModelEpoch.hook for an EpochBar: BATCH events, the running loss
    summed incrementally (each batch's loss read once)."""

    events = frozenset({spec.HookEvent.BATCH})

    def __init__(self, bar, batch_losses, sizes):
        self.bar, self.losses, self.sizes = bar, batch_losses, sizes
        self.seen, self.loss_sum, self.rows = 0, 0.0, 0.0
        self.last = -1  # the batch of the last call (stop-by-exception: its batch is done)

    def __call__(self, event, batch):
        self.last = batch
        b1 = batch + 1
        if b1 > self.seen:
            s = slice(self.seen, b1)
            self.loss_sum += float(np.dot(self.losses[s], self.sizes[s]))
            self.rows += float(self.sizes[s].sum())
            self.seen = b1
        self.bar.update(b1, self.loss_sum, self.rows)
