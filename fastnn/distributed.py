"""Synchronous data-parallel training over MPI (mpi4py).

``Trainer(model, loss, optimizer, distributed="mpi")`` under ``mpiexec -n N``:
every rank holds the whole model and passes the same full (X, y) to
``fit``.  Each epoch one seeded permutation (the same on every rank) is cut
into global batches of N * batch_size rows; rank r trains on its
batch_size rows of each (the last global batch is split as evenly as its
rows allow).  After each batch's backward ONE in-place all-reduce (sum) of
the flat gradient buffer, each rank's part weighted by its share of the
global batch's rows, then every rank applies the identical update: N ranks
with batch B follow the trajectory of one process with batch N * B, float32
rounding aside.

Faults never hang the job: every collective is non-blocking and polled;
a rank whose fit raises tells the others, which raise :class:`RankError`
naming it; a rank that stops answering (killed, hung) is named by the
survivors after ``timeout`` seconds.  After a fault the process calls
``MPI_Abort`` at exit (a job that lost a rank cannot finalize).  mpiexec's
default (MPICH's hydra) also tears the whole job down at once when a
process dies.

What is not the single-process trajectory: BatchNorm normalizes with each
rank's own batch statistics (torch's DDP without SyncBatchNorm) and its
running statistics are averaged over the ranks after every epoch; dropout
draws the same mask sequence on every rank (for a rank's row j, not the
global row).  ``train_step``, ``evaluate`` and ``predict`` stay local.

An exception raised outside ``fit`` (loading data, say) is the program's:
run it as ``mpiexec -n N python -m mpi4py train.py`` so that mpi4py aborts
the job instead of leaving the other ranks waiting.

mpi4py is imported only when a group is made (``import fastnn`` stays
light).
"""

import atexit
import contextlib
import os
import socket
import sys
import time

import numpy as np

from .kernels.spec import HookChain, HookEvent  # noqa: F401  (HookChain: re-exported)

GRADS = HookEvent.GRADS

_TAG_FAIL, _TAG_PING, _TAG_PONG = 7101, 7102, 7103


class RankError(RuntimeError):
    """Another rank of the job failed (raised, was killed or hangs): this
    rank stops too.  ``ranks``: the failed ranks (empty if unknown)."""

    def __init__(self, message, ranks=()):
        super().__init__(message)
        self.ranks = tuple(ranks)


def get(distributed):
    """None, "mpi" (MPI.COMM_WORLD) or an MPIGroup -> None or an MPIGroup."""
    if distributed is None or distributed is False:
        return None
    if isinstance(distributed, MPIGroup):
        return distributed
    if distributed == "mpi":
        return MPIGroup()
    raise ValueError(f"distributed: expected None, 'mpi' or a fastnn.distributed.MPIGroup, "
                     f"got {distributed!r}")


class MPIGroup:
    """The ranks of an MPI communicator training one model together.

    Parameters
    ----------
    comm : mpi4py communicator or None
        Default MPI.COMM_WORLD (duplicated: fastnn's messages never mix
        with the program's own).
    timeout : float
        Seconds a collective may wait before the ranks that do not answer
        a ping (for up to 5 s more) are named as failed (RankError).  It bounds how long a rank may
        spend between two collectives (a batch, the validation), so keep
        it well above a batch's time.
    """

    def __init__(self, comm=None, timeout=20.0):
        try:
            from mpi4py import MPI
        except ImportError as exc:
            raise ImportError("distributed='mpi' needs mpi4py and an MPI library: pip install "
                              "'fastnn[mpi]' (mpi4py and the mpich wheel), then run under "
                              "mpiexec -n N python ...") from exc
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) \
                or not timeout > 0:
            raise ValueError(f"timeout: expected a number of seconds > 0, got {timeout!r}")
        self._MPI = MPI
        base = MPI.COMM_WORLD if comm is None else comm
        self.comm, self.ctrl = base.Dup(), base.Dup()
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        self.timeout = float(timeout)
        self.where = "start"
        self.failed = False
        self._pending, self._pongs, self._ping = [], set(), 0
        self._abort_armed = self._origin = self._announced = False
        self.reduce_seconds, self.n_reduces = 0.0, 0  # the gradient all-reduces (figures)
        self.peers = self._gather_peers()

    def announce(self):
        """Print (rank 0) which process each rank is: mpiexec names a dead
        process by its pid."""
        if self.rank == 0 and not self._announced:
            self._announced = True
            print(f"fastnn.distributed: {self.size} ranks: " + ", ".join(
                f"rank {r} pid {pid} on {host}" for r, (host, pid) in enumerate(self.peers)),
                file=sys.stderr, flush=True)

    def __repr__(self):
        return f"MPIGroup(rank={self.rank}, size={self.size}, timeout={self.timeout})"

    # ---- collectives, polled ---------------------------------------------------

    def allreduce(self, buf, op="sum", what="all-reduce"):
        """In-place all-reduce of a contiguous numpy array (op: sum, max)."""
        MPI = self._MPI
        self._wait(self.comm.Iallreduce(MPI.IN_PLACE, buf, MPI.SUM if op == "sum" else MPI.MAX),
                   what)
        return buf

    def bcast(self, buf, what="broadcast"):
        """Rank 0's values of a contiguous numpy array into every rank's."""
        self._wait(self.comm.Ibcast(buf, root=0), what)
        return buf

    def allgather(self, row, what="all-gather"):
        """(size, len(row)) float64: every rank's row."""
        row = np.ascontiguousarray(row, np.float64)
        out = np.empty((self.size, row.size))
        self._wait(self.comm.Iallgather(row, out), what)
        return out

    def _wait(self, req, what):
        if req.Test():
            return
        start = time.monotonic()
        check = start
        while not req.Test():
            now = time.monotonic()
            if now >= check:
                self._poll()
                check = now + 1e-3
                if now - start > self.timeout:
                    self._on_timeout(what)
            # let go of the core between polls: a Test in a tight loop slows the
            # reduction itself (measured 3-6x on a 940 KB buffer, 2 ranks)
            if now - start > 2e-4:  # (small messages finish within the spin)
                time.sleep(5e-5 if now - start < 0.05 else 2e-4)

    def _poll(self):
        """Handle the control messages waiting: a peer's failure (raise), pings."""
        MPI = self._MPI
        status = MPI.Status()
        while self.ctrl.Iprobe(source=MPI.ANY_SOURCE, tag=MPI.ANY_TAG, status=status):
            src, tag = status.Get_source(), status.Get_tag()
            msg = self.ctrl.recv(source=src, tag=tag)
            if tag == _TAG_FAIL:
                self._fault()
                raise RankError(f"rank {src} of {self.size} failed ({msg}); rank {self.rank} "
                                f"stops at {self.where}", [src])
            if tag == _TAG_PING:
                self._pending.append(self.ctrl.isend(msg, dest=src, tag=_TAG_PONG))
            elif tag == _TAG_PONG and msg == self._ping:
                self._pongs.add(src)

    def _on_timeout(self, what):
        """A collective waited `timeout` s: ask every peer; name those that
        do not answer."""
        self._ping += 1
        self._pongs = set()
        others = [r for r in range(self.size) if r != self.rank]
        for r in others:
            with contextlib.suppress(Exception):
                self._pending.append(self.ctrl.isend(self._ping, dest=r, tag=_TAG_PING))
        deadline = time.monotonic() + min(5.0, max(1.0, self.timeout / 4))
        while time.monotonic() < deadline and len(self._pongs) < len(others):
            self._poll()
            time.sleep(1e-3)
        missing = sorted(set(others) - self._pongs)
        self._fault()
        if missing:
            names = ", ".join(f"rank {r} (pid {self.peers[r][1]} on {self.peers[r][0]})"
                              for r in missing)
            raise RankError(f"{names} did not answer for {self.timeout:g} s during {what} at "
                            f"{self.where} (killed or hung); rank {self.rank} stops", missing)
        raise RankError(f"{what} at {self.where} did not complete within {self.timeout:g} s "
                        f"though every rank answers: the ranks are out of step (did one rank "
                        f"call fit differently?); rank {self.rank} stops")

    # ---- faults -----------------------------------------------------------------

    @contextlib.contextmanager
    def guard(self):
        """Tell the other ranks if the body raises (then re-raise)."""
        try:
            yield self
        except BaseException as exc:
            if not isinstance(exc, RankError) and not getattr(exc, "every_rank", False):
                self.notify_failure(exc)
            raise

    def notify_failure(self, exc):
        """This rank failed with `exc`: tell every other rank (they raise RankError)."""
        if self.failed:
            return
        text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        text += f", at {self.where}"
        self._origin = True
        sent = []
        for r in range(self.size):
            if r != self.rank:
                with contextlib.suppress(Exception):
                    sent.append(self.ctrl.isend(text, dest=r, tag=_TAG_FAIL))
        deadline = time.monotonic() + 2.0
        with contextlib.suppress(Exception):
            while sent and not all(req.Test() for req in sent) and time.monotonic() < deadline:
                time.sleep(1e-3)
        self._fault()

    def _fault(self):
        self.failed = True
        if not self._abort_armed:
            self._abort_armed = True
            atexit.register(self._abort)

    def _abort(self):
        # a job that lost a rank (or has one out of step) cannot finalize:
        # MPI_Finalize would wait for it forever
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        # the others report this rank's failure before the abort ends them,
        # and the failed rank gets to print its own error
        time.sleep(1.5 if self._origin else 0.5)
        self._MPI.COMM_WORLD.Abort(1)

    # ---- start of a fit ---------------------------------------------------------

    def _gather_peers(self):
        host = socket.gethostname()
        names = self.comm.allgather((host, os.getpid()))
        return names

    def check_same(self, fields, what="fit"):
        """Every rank passed the same `fields` ({name: number}); ValueError
        naming the first that differs, on every rank."""
        names = list(fields)
        table = self.allgather([float(fields[k]) for k in names], what=f"the start of {what}")
        for j, name in enumerate(names):
            col = table[:, j]
            bad = np.nonzero(col != col[0])[0]
            if bad.size:
                r = int(bad[0])
                raise MismatchError(f"distributed {what}: rank {r} has {name} = {_num(col[r])}, "
                                 f"rank 0 has {_num(col[0])} (every rank must pass the same "
                                 f"model, data and options)")

    def shared_seed(self, seed):
        """Rank 0's seed for every rank (seed None: one rank 0 draws)."""
        value = np.zeros(1, np.int64)
        if self.rank == 0:
            value[0] = (int(np.random.SeedSequence().generate_state(1, np.uint64)[0] >> 2)
                        if seed is None else seed)
        self.bcast(value, "the seed broadcast")
        return int(value[0])


class MismatchError(ValueError):
    """The ranks of a distributed fit were given different data, models or
    options; every rank raises it alike, at the start."""

    every_rank = True


def _num(x):
    return int(x) if float(x).is_integer() else x


def fingerprint(arr, samples=4096):
    """A cheap float64 checksum of an array (rows spread over it): tells
    ranks given different data apart."""
    flat = np.asarray(arr).reshape(len(arr), -1)
    step = max(1, len(flat) // samples)
    rows = flat[::step].astype(np.float64)
    w = np.arange(1, rows.shape[1] + 1, dtype=np.float64)
    return float((rows @ w).sum()) + len(flat)


class Sharding:
    """One rank's part of every epoch of a distributed fit of n rows in
    per-rank batches of batch_size.

    Global batch g holds rows [g*G, (g+1)*G) of the epoch's order (G = N *
    batch_size); rank r trains on rows [r*B, (r+1)*B) of each full one, and
    on its share of the last (split as evenly as possible, the first ranks
    taking one more).  A rank left with no row of the last batch trains on
    one row of it with weight 0 (so every rank makes the same number of
    steps, each with one all-reduce).  ``weights[b]``: this rank's rows of
    global batch b over the global batch's rows.
    """

    def __init__(self, group, n, batch_size):
        N, r, B = group.size, group.rank, batch_size
        self.group, self.n, self.batch_size = group, n, B
        G = N * B
        self.n_batches = nb = -(-n // G)
        self.n_full = nb - 1
        last = n - self.n_full * G
        counts = [last // N + (q < last % N) for q in range(N)]
        self.last_start, self.last_rows = sum(counts[:r]), counts[r]
        self.last_total = last
        self.dummy = self.last_rows == 0
        self.local_n = self.n_full * B + max(self.last_rows, 1)
        self.weights = np.full(nb, 1.0 / N)
        self.weights[-1] = self.last_rows / last
        self.sync = GradSync(group, self.weights)

    def order(self, perm):
        """This rank's rows, in order, of the epoch's global order (None: 0..n-1)."""
        idx = np.arange(self.n) if perm is None else np.asarray(perm)
        G, B, N, r = self.group.size * self.batch_size, self.batch_size, self.group.size, \
            self.group.rank
        head = idx[:self.n_full * G].reshape(self.n_full, N, B)[:, r].reshape(-1)
        tail = idx[self.n_full * G:]
        tail = tail[:1] if self.dummy else tail[self.last_start:self.last_start + self.last_rows]
        return np.ascontiguousarray(np.concatenate([head, tail]), dtype=np.int64)

    def reduce_epoch(self, total, correct, elapsed, last):
        """The job's (total, correct, elapsed) from this rank's; `last` is
        (loss, correct) of this rank's last batch (taken out for a weight-0
        one)."""
        if self.dummy:
            total -= last[0]
            correct -= last[1]
        sums = np.array([total, correct], np.float64)
        self.group.allreduce(sums, "sum", "the epoch's loss all-reduce")
        slowest = np.array([elapsed], np.float64)
        self.group.allreduce(slowest, "max", "the epoch's time all-reduce")
        return float(sums[0]), int(round(sums[1])), float(slowest[0])


class GradSync:
    """The epoch hook of a distributed fit: at each batch's GRADS event the
    gradient buffer is weighted by this rank's share of the global batch
    and summed over the ranks in place (one all-reduce)."""

    events = frozenset({GRADS})

    def __init__(self, group, weights):
        self.group, self.weights = group, weights
        self.grads = None

    def __call__(self, event, batch):
        if event != GRADS:
            return
        g = self.grads
        w = self.weights[batch]
        if w != 1.0:
            np.multiply(g, np.float32(w), out=g)
        start = time.perf_counter()
        self.group.allreduce(g, "sum", f"the gradient all-reduce of batch {batch + 1}")
        self.group.reduce_seconds += time.perf_counter() - start
        self.group.n_reduces += 1


def evaluate(trainer, X, t):
    """trainer._evaluate over (X, t), each rank a contiguous shard, reduced."""
    group = trainer.distributed
    n = len(X)
    lo, hi = n * group.rank // group.size, n * (group.rank + 1) // group.size
    sums = np.zeros(3)
    if hi > lo:
        logs = trainer._evaluate(X[lo:hi], t[lo:hi])
        sums[:] = logs["loss"] * (hi - lo), logs.get("accuracy", 0.0) * (hi - lo), hi - lo
    group.allreduce(sums, "sum", "the validation all-reduce")
    out = {"loss": sums[0] / n}
    if trainer.loss.classification:
        out["accuracy"] = sums[1] / n
    return out


def start_fit(trainer, X, t, batch_size, epochs, shuffle, seed, validation):
    """At the start of a distributed fit, on every rank: refuse ranks that
    differ (data, model, options), send rank 0's parameters, buffers and
    optimizer state to all; returns the seed every rank uses."""
    group, model, opt = trainer.distributed, trainer.model, trainer.optimizer
    if isinstance(seed, np.random.Generator):  # fit's shuffling stream: the same everywhere
        import json
        import zlib

        state = json.dumps(seed.bit_generator.state, sort_keys=True, default=str)
        seed_field = zlib.crc32(state.encode())
    elif seed is None or (isinstance(seed, (int, np.integer)) and not isinstance(seed, bool)
                          and seed >= 0):
        seed_field = -1 if seed is None else seed % 2**52
    else:
        raise ValueError(f"seed: a distributed fit takes an integer >= 0 or None (every rank "
                         f"then uses rank 0's), got {seed!r}")
    fields = {"the number of samples": len(X), "X's dimensions": X.ndim}
    for i, d in enumerate(X.shape[1:]):
        fields[f"X.shape[{i + 1}]"] = d
    fields.update({"the model's parameter count": model.size,
                   "the model's buffer count": model.buffers.size,
                   "the model's layer count": len(list(model.walk())),
                   "batch_size": batch_size, "epochs": epochs, "shuffle": int(bool(shuffle)),
                   "the optimizer's step count": opt.step_count,
                   "the checksum of X": fingerprint(X), "the checksum of y": fingerprint(t),
                   "validation rows": -1 if validation is None else len(validation[0]),
                   "the shuffling seed": seed_field})
    group.check_same(fields)
    group.bcast(model.params, "the parameter broadcast")
    if model.buffers.size:
        group.bcast(model.buffers, "the buffer broadcast")
    for name in sorted(getattr(opt, "state", {}) or {}):
        state = opt.state[name]
        if isinstance(state, np.ndarray) and state.flags.c_contiguous:
            group.bcast(state, "the optimizer-state broadcast")
    return seed if isinstance(seed, np.random.Generator) else group.shared_seed(seed)


def average_buffers(trainer):
    """Running statistics (BatchNorm) averaged over the ranks, so that
    every rank ends with the same model."""
    buffers = trainer.model.buffers
    if buffers.size and buffers.dtype.kind == "f":
        trainer.distributed.allreduce(buffers, "sum", "the buffer all-reduce")
        buffers *= buffers.dtype.type(1.0 / trainer.distributed.size)


