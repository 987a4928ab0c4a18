"""Side-by-side comparison of fastnn with numpy, PyTorch and scikit-learn.

    fastnn bench [--quick] ...            (the CLI; see ``fastnn bench --help``)
    python -m fastnn.bench.compare [--quick] [--threads 1,2]
                            [--sections gemm,adam,conv,train,sklearn,models,many,rnn]
                            [--markdown] [--mnist DIR] [--json FILE]

Every contender runs on the same data, at the same thread count, interleaved
A B A B over several rounds; the table shows the median of each and the
ratios.  fastnn, numpy, scikit-learn and the gemm and adam sections' torch
run in this process; the other sections' torch runs in a worker process at
torch's default OpenMP policy (fastnn/bench/torch_worker.py), JAX in its own
(jax_worker.py), each asked for one step or epoch at a time between fastnn's.
Peak memory is measured apart, one subprocess per framework, because RSS is
process-wide.

The environment may set OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE, which make
numpy's OpenBLAS pick a slower kernel on this CPU; OpenBLAS reads them when it
is loaded, so this script re-executes itself without them before numpy is
imported (and says so), and prints which OpenBLAS core is in use.
"""

import os
import sys

_SLOW_OPENBLAS_ENV = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
_REEXEC_MARK = "FASTNN_BENCH_UNSET_ENV"


def _reexec_without_slow_openblas_env():
    removed = [f"{key}={os.environ.pop(key)}" for key in _SLOW_OPENBLAS_ENV if key in os.environ]
    if removed:
        os.environ[_REEXEC_MARK] = " ".join(removed)
        sys.stdout.flush()
        os.execv(sys.executable, [sys.executable, "-m", "fastnn.bench.compare", *sys.argv[1:]])


if __name__ == "__main__":
    _reexec_without_slow_openblas_env()
    # One OpenMP spin policy for every contender, set before any library
    # loads its libgomp (torch ships its own copy): fastnn's c backend
    # asks for GOMP_SPINCOUNT=1000 when it is imported, which would
    # otherwise reach only the copies loaded after it, and torch's pool,
    # spinning ~300,000 iterations after each of its calls, would take the
    # second core from the contender timed next in this one process.
    if "OMP_WAIT_POLICY" not in os.environ:
        os.environ.setdefault("GOMP_SPINCOUNT", "1000")
    # OpenBLAS's threads (numpy, scipy) likewise spin 2^28 cycles (~0.1 s)
    # after each call unless told otherwise; 2^16 is about GOMP's 1000 spins.
    # Left at the default, they took the second core from the contender
    # timed after numpy: fastnn's 2-thread gemm measured 0.44-0.6x numpy in
    # this process and 1.7-1.9x its 1-thread rate on its own.
    os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "16")

# Everything below may load OpenBLAS, so it comes after the re-exec.
import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from contextlib import ExitStack  # noqa: E402

import numpy as np  # noqa: E402
import threadpoolctl  # noqa: E402

import fastnn  # noqa: E402
from fastnn.bench import workloads as wl  # noqa: E402

torch = None  # the optional comparator, imported by main(): not in fastnn's RSS workers

SECTIONS = ("gemm", "adam", "conv", "train", "sklearn", "models", "many", "rnn")
FASTNN_BACKENDS = ("c", "numba")
TRAIN_TARGETS = {32: 5.0, 128: 2.5, 512: 1.3}  # fastnn c vs torch, samples/s
NUMBA_VS_C = 0.5
CONV_TARGET = 1.0  # fastnn c vs torch, conv forward + backward
CONV_TARGETS = {"14x14x32->64": 1.5}  # the target for this layer; CONV_TARGET for the rest


# ---- timing --------------------------------------------------------------------

def interleaved(fns, rounds, target_s):
    """Median seconds per call of each function in `fns` (name -> callable).

    Each is warmed up and given a repeat count so that one sample takes about
    `target_s` (with target_s == 0: one call per sample, no warm-up); then the samples are taken A B C A B C ... for `rounds` rounds,
    so that drifting machine load hits every contender alike.  A worker's
    contender (TorchJob) is timed in its own process, one request per sample.
    """
    counts = dict.fromkeys(fns, 1)
    for name, fn in fns.items() if target_s > 0 else ():  # long calls: warmed up by the caller
        _seconds(fn, 1)
        counts[name] = max(1, int(target_s / max(_seconds(fn, 1), 1e-9)))
    samples = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            samples[name].append(_seconds(fn, counts[name]) / counts[name])
    medians = {name: statistics.median(s) for name, s in samples.items()}
    _SPREADS.append(max((max(s) - min(s)) / statistics.median(s) for s in samples.values())
                    if rounds > 1 else None)
    return medians


def _seconds(fn, count):
    """Wall seconds of `count` back-to-back calls of fn, timed here, or by the
    worker process that runs them when fn has a timed(count) (TorchJob)."""
    if hasattr(fn, "timed"):
        return fn.timed(count)
    t0 = time.perf_counter()
    for _ in range(count):
        fn()
    return time.perf_counter() - t0


_SPREADS = []  # per comparison: the widest (max - min) / median among its contenders


def spread():
    """The noise of the last comparison, as a table cell."""
    return f"{100 * _SPREADS[-1]:.0f}%" if _SPREADS and _SPREADS[-1] is not None else "-"


class Threads:
    """Set one thread count for fastnn, numpy's BLAS and torch together."""

    def __init__(self, n):
        self.n = n
        self._stack = ExitStack()

    def __enter__(self):
        fastnn.set_num_threads(self.n)
        self._stack.enter_context(threadpoolctl.threadpool_limits(self.n, user_api="blas"))
        if torch is not None:
            torch.set_num_threads(self.n)
        return self

    def __exit__(self, *exc):
        self._stack.close()


# ---- results -------------------------------------------------------------------

class Table:
    """One section's results: rows of cells, printed as text or Markdown."""

    def __init__(self, title, columns, notes=()):
        self.title, self.columns, self.notes = title, list(columns), list(notes)
        self.rows = []

    def add(self, *cells):
        self.rows.append([str(c) for c in cells])

    def render(self, markdown):
        lines = [f"### {self.title}" if markdown else f"== {self.title} =="]
        if markdown:
            lines.append("")
            lines.append("| " + " | ".join(self.columns) + " |")
            lines.append("|" + "|".join("---" for _ in self.columns) + "|")
            lines += ["| " + " | ".join(r) + " |" for r in self.rows]
        else:
            widths = [max(len(c), *(len(r[i]) for r in self.rows)) if self.rows else len(c)
                      for i, c in enumerate(self.columns)]
            lines.append("  ".join(c.rjust(w) for c, w in zip(self.columns, widths)))
            lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in self.rows]
        if self.notes:
            lines.append("")
            lines += [f"{'- ' if markdown else '  '}{n}" for n in self.notes]
        return "\n".join(lines)


def ratio(a, b):
    return a / b if a and b else float("nan")


def fmt_ratio(r, target=None):
    if r != r:  # NaN: a contender is missing
        return "-"
    text = f"{r:.2f}x"
    if target is not None:
        text += " ok" if r >= target else f" (<{target:g}x)"
    return text


def fmt_rate(x, unit):
    if x is None:
        return "-"
    if unit == "samples/s":
        return f"{x:,.0f}"
    return f"{x:.1f}" if x < 1000 else f"{x:,.0f}"


# ---- worker processes ------------------------------------------------------------

def _worker_env():
    """The environment of a worker subprocess: this fastnn first on PYTHONPATH."""
    return dict(os.environ, PYTHONPATH=os.pathsep.join(
        [_ROOT] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])))


_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class Worker:
    """A `python -m <module>` subprocess answering JSON-line requests, one
    reply a request (fastnn/bench/jax_worker.py, torch_worker.py)."""

    def __init__(self, module, *argv):
        import tempfile

        self.module = module
        self._err = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", module, *argv], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=self._err, text=True, bufsize=1, cwd=_ROOT,
            env=_worker_env())
        self.info = self._reply()

    def _reply(self):
        line = self.proc.stdout.readline()
        if not line:
            self._err.seek(0)
            tail = self._err.read().strip().splitlines()[-3:]
            raise RuntimeError(f"{self.module} died: " + " | ".join(tail))
        reply = json.loads(line)
        if reply.get("check_failed"):  # a wrong result must stop the run, not be skipped
            raise AssertionError(f"{self.module}: {reply['error']}")
        if "error" in reply:
            raise RuntimeError(reply["error"])
        return reply

    def __call__(self, op, **fields):
        self.proc.stdin.write(json.dumps({"op": op, **fields}) + "\n")
        self.proc.stdin.flush()
        return self._reply()

    def close(self):
        try:
            if self.proc.poll() is None:
                self.proc.stdin.write('{"op": "quit"}\n')
                self.proc.stdin.flush()
                self.proc.wait(timeout=30)
        except (OSError, subprocess.SubprocessError):
            self.proc.kill()
        self._err.close()


TORCH_ALONE = ("torch alone: in its own process (fastnn/bench/torch_worker.py) at its default "
               "OpenMP wait policy, asked for one step or epoch at a time between fastnn's, "
               "timed there")
_TORCH = {}  # the run's torch worker ("worker") or why there is none ("error"); its files


def torch_status():
    """None when the run's torch worker is up (started on first use), else why not."""
    if not _TORCH:
        import importlib.util
        import tempfile

        if importlib.util.find_spec("torch") is None:
            _TORCH["error"] = "not installed"
            return _TORCH["error"]
        try:
            _TORCH["worker"] = Worker("fastnn.bench.torch_worker")
        except (RuntimeError, OSError, ValueError) as exc:
            _TORCH["error"] = str(exc)[:120]
            return _TORCH["error"]
        _TORCH["dir"], _TORCH["files"] = tempfile.TemporaryDirectory(), 0
    return _TORCH.get("error")


def _torch_dir():
    return _TORCH["dir"].name


def torch_data(**arrays):
    """An .npz of `arrays` for the torch worker (its path), or None without one."""
    if torch_status() is not None:
        return None
    _TORCH["files"] += 1
    path = os.path.join(_torch_dir(), f"data{_TORCH['files']}.npz")
    np.savez(path, **arrays)
    return path


class TorchJob:
    """A torch contender set up in the torch worker: a call runs it once there;
    timed(k) is the worker's wall time of k back-to-back calls."""

    def __init__(self, worker, name):
        self.worker, self.name = worker, name

    def __call__(self):
        self.timed(1)

    def timed(self, count):
        return self.worker("run", name=self.name, repeat=count)["seconds"]


def torch_job(job, n_threads, data, name="torch", **spec):
    """Set up `job` ("conv" or "fit", see torch_worker.py) at n_threads on the
    torch_data file `data`: its TorchJob, or None when there is no worker.
    A torch result that fails its check raises AssertionError."""
    if torch_status() is not None:
        return None
    _TORCH["worker"]("setup", name=name, job=job, threads=n_threads, data=data, **spec)
    return TorchJob(_TORCH["worker"], name)


def close_workers():
    if "worker" in _TORCH:
        _TORCH["worker"].close()
        _TORCH["dir"].cleanup()
    _TORCH.clear()


# ---- machine -------------------------------------------------------------------

def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_report(args):
    lines = []
    lines.append(f"GOMP_SPINCOUNT={os.environ.get('GOMP_SPINCOUNT')} "
                 f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')} "
                 f"OPENBLAS_THREAD_TIMEOUT={os.environ.get('OPENBLAS_THREAD_TIMEOUT')} "
                 "(every contender in this process; torch in the conv, train, models and rnn "
                 "sections runs in a process of its own at its default policy)")
    if os.environ.get(_REEXEC_MARK):
        lines.append(f"re-executed without {os.environ[_REEXEC_MARK]} (they slow numpy's "
                     "OpenBLAS on this CPU; OpenBLAS reads them at load time)")
    lines.append(f"CPU: {cpu_model()}, {os.cpu_count()} logical cores, "
                 f"{len(os.sched_getaffinity(0))} usable")
    rates = gemm_rates(args.threads)
    lines.append("GEMM rate (numpy's BLAS, float32 1024^3, best of 5, the thread counts "
                 "interleaved): " + ", ".join(
                     f"{t} thread{'s' if t > 1 else ''} {r:.0f} GFLOP/s"
                     + (f" ({r / rates[1]:.2f}x one)" if t > 1 else "")
                     for t, r in rates.items())
                 + " -- the unit of every 'limit' column (that many threads' measured rate, "
                 "not threads x one core)")
    lines.append("load average at start: " + " ".join(f"{x:.2f}" for x in os.getloadavg()))
    lines.append(f"threads compared: {', '.join(map(str, args.threads))}")
    for name in FASTNN_BACKENDS:
        try:
            info = fastnn.kernels.get(name).info()
        except ImportError as exc:
            info = f"unavailable ({exc})"
        lines.append(f"fastnn {name}: {info}")
    versions = [f"python {platform.python_version()}", f"fastnn {fastnn.__version__}",
                f"numpy {np.__version__}", f"numba {_version('numba')}",
                f"torch {_version('torch')}",
                f"scikit-learn {_version('sklearn')}",
                f"threadpoolctl {threadpoolctl.__version__}"]
    lines.append("versions: " + ", ".join(versions))
    for lib in threadpoolctl.threadpool_info():
        lines.append(f"threadpool: {lib.get('user_api')} {lib.get('internal_api')} "
                     f"{lib.get('version')} core={lib.get('architecture', '-')} "
                     f"threads={lib.get('num_threads')} "
                     f"({os.path.basename(lib.get('filepath', ''))})")
    return lines


def _version(module):
    """An installed distribution's version, without importing it (torch is slow to import)."""
    from importlib import metadata

    try:
        return metadata.version({"sklearn": "scikit-learn"}.get(module, module))
    except metadata.PackageNotFoundError:
        return "not installed"


# ---- gemm ----------------------------------------------------------------------

def section_gemm(args):
    cases = wl.gemm_cases(full=not args.quick)
    impls = [f"fastnn-{b}" for b in FASTNN_BACKENDS] + ["numpy"] + (["torch"] if torch else [])
    table = Table("GEMM, GFLOP/s (C = op(A) op(B), float32)",
                  ["case (m x n x k)", "threads", *impls, "c/numpy", "numba/numpy", "numba/c",
                   *(["c/torch"] if torch else []), "spread"],
                  ["target: c >= 0.9x numpy (OpenBLAS); numba >= 0.5x c",
                   "dW = X^T dZ (trans_a), dX = dZ W^T (trans_b) of the 784->256 layer"])
    for n_threads in args.threads:
        with Threads(n_threads):
            for case in cases:
                name, m, n, k, trans_a, trans_b = case
                A, B = wl.gemm_operands(case)
                want = wl.gemm_expected(A, B, trans_a, trans_b)
                fns = _gemm_fns(A, B, m, n, trans_a, trans_b, want, name)
                secs = interleaved(fns, args.rounds, args.target_s)
                rate = {impl: wl.gemm_flops(case) / secs[impl] / 1e9 for impl in fns}
                c, nb, npy = rate.get("fastnn-c"), rate.get("fastnn-numba"), rate["numpy"]
                row = [f"{name} ({m}x{n}x{k})", n_threads, *(fmt_rate(rate.get(i), "") for i in impls),
                       fmt_ratio(ratio(c, npy), 0.9), fmt_ratio(ratio(nb, npy)),
                       fmt_ratio(ratio(nb, c), NUMBA_VS_C)]
                if torch:
                    row.append(fmt_ratio(ratio(c, rate["torch"])))
                table.add(*row, spread())
                args.results.append({"section": "gemm", "case": name, "threads": n_threads,
                                     "GFLOP/s": rate})
    return table


def _gemm_fns(A, B, m, n, trans_a, trans_b, want, name):
    """name -> callable doing this GEMM once, each checked against `want` first."""
    fns = {}
    for backend in FASTNN_BACKENDS:
        k = fastnn.kernels.get(backend)
        C = np.empty((m, n), np.float32)
        fns[f"fastnn-{backend}"] = (lambda k=k, C=C: k.gemm(A, B, C, trans_a=trans_a,
                                                            trans_b=trans_b))
    opa, opb = (A.T if trans_a else A), (B.T if trans_b else B)
    Cn = np.empty((m, n), np.float32)
    fns["numpy"] = lambda: np.matmul(opa, opb, out=Cn)
    if torch is not None:
        ta, tb = torch.from_numpy(A), torch.from_numpy(B)
        ta, tb = (ta.t() if trans_a else ta), (tb.t() if trans_b else tb)
        Ct = torch.empty((m, n), dtype=torch.float32)
        fns["torch"] = lambda: torch.mm(ta, tb, out=Ct)
    for impl, fn in fns.items():
        out = fn()
        out = out.numpy() if torch is not None and isinstance(out, torch.Tensor) else out
        wl.assert_close(out, want, 1e-4, f"{impl} gemm {name}")
    return fns


# ---- fused Adam ----------------------------------------------------------------

def section_adam(args):
    size = (4 if args.quick else 16) << 20
    impls = [f"fastnn-{b}" for b in FASTNN_BACKENDS] + (["torch-fused"] if torch else [])
    table = Table(f"Adam step over {size >> 20}M float32 parameters, GB/s at 28 B/param",
                  ["threads", *impls, "c/torch", "numba/torch", "numba/c", "spread"],
                  ["28 B/param: read p, g, m, v (16 B), write p, m, v (12 B); in place, grads fixed",
                   "target: c >= 0.95x torch.optim.Adam(fused=True); numba >= 0.5x c"])
    for n_threads in args.threads:
        with Threads(n_threads):
            fns = {}
            for backend in FASTNN_BACKENDS:
                k = fastnn.kernels.get(backend)
                wl.check_optimizer(k, "adam")
                p, g, (m, v) = wl.optimizer_buffers(size, 2)
                counter = iter(range(1, 1 << 30))
                fns[f"fastnn-{backend}"] = (
                    lambda k=k, p=p, g=g, m=m, v=v, c=counter:
                    k.adam(p, g, m, v, step=next(c), lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8))
            if torch is not None:
                _check_torch_adam()
                fns["torch-fused"] = _torch_adam_step(size)
            secs = interleaved(fns, args.rounds, args.target_s)
            rate = {i: 28.0 * size / secs[i] / 1e9 for i in fns}
            c, nb, tf = rate.get("fastnn-c"), rate.get("fastnn-numba"), rate.get("torch-fused")
            table.add(n_threads, *(fmt_rate(rate.get(i), "") for i in impls),
                      fmt_ratio(ratio(c, tf), 0.95), fmt_ratio(ratio(nb, tf)),
                      fmt_ratio(ratio(nb, c), NUMBA_VS_C), spread())
            args.results.append({"section": "adam", "size": size, "threads": n_threads,
                                 "GB/s": rate})
    return table


def _torch_adam_step(size, seed=0):
    p, g, (m, v) = wl.optimizer_buffers(size, 2, seed)
    param = torch.nn.Parameter(torch.from_numpy(p))
    param.grad = torch.from_numpy(g)
    opt = torch.optim.Adam([param], lr=1e-3, betas=(0.9, 0.999), eps=1e-8, fused=True)
    opt.step()  # creates the state; then give it our m and v
    opt.state[param]["exp_avg"].copy_(torch.from_numpy(m))
    opt.state[param]["exp_avg_sq"].copy_(torch.from_numpy(v))
    return opt.step


def _check_torch_adam(size=4099):
    """torch's fused Adam does the same update as fastnn's reference (same work)."""
    from fastnn import kernels
    reference = kernels.get("reference")

    p, g, (m, v) = wl.optimizer_buffers(size, 2, seed=1)
    param = torch.nn.Parameter(torch.from_numpy(p.copy()))
    param.grad = torch.from_numpy(g)
    opt = torch.optim.Adam([param], lr=1e-3, betas=(0.9, 0.999), eps=1e-8, fused=True)
    opt.step()
    reference.adam(p, g, m * 0, v * 0, step=1, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8)
    wl.assert_close(param.detach().numpy(), p, 1e-5, "torch fused Adam vs reference")


# ---- convolution ---------------------------------------------------------------

def section_conv(args):
    impls = [f"fastnn-{b}" for b in FASTNN_BACKENDS] + (["torch"] if torch_status() is None else [])
    table = Table("Conv2d 3x3, stride 1, padding 1, bias, ReLU, batch 128: forward + backward, "
                  "ms per step",
                  ["layer (H x W x C -> OC)", "dX", "threads", *impls, "c GFLOP/s", "c/torch",
                   "numba/torch", "numba/c", "spread"],
                  ["fastnn: conv2d_forward + conv2d_backward, channels-last (N, H, W, C), "
                   "weights (3, 3, C, OC); torch: NCHW tensors, F.relu(F.conv2d(...)) then "
                   "torch.autograd.grad of a fixed upstream gradient; same threads; "
                   + TORCH_ALONE,
                   "dX no: the input gradient is skipped (fastnn dX=None, torch input without "
                   "requires_grad), as a first layer needs none",
                   "ratios are speed ratios (time of the other / time of the first named); "
                   "GFLOP/s counts 2 M K OC per GEMM (M = N*H*W, K = 9 C): forward, dW, dX",
                   f"target: c >= {CONV_TARGET:g}x torch ("
                   + ", ".join(f"{k} {v:g}x" for k, v in CONV_TARGETS.items())
                   + f"); numba >= {NUMBA_VS_C}x c"])
    for n_threads in args.threads:
        with Threads(n_threads):
            for case, with_dx in wl.conv_runs():
                data = wl.conv_data(case)
                want = wl.conv_expected(case, data, with_dx)
                fns = {}
                for backend in FASTNN_BACKENDS:
                    k = fastnn.kernels.get(backend)
                    wl.check_conv(k, case, data, with_dx, want)
                    fns[f"fastnn-{backend}"] = wl.conv_step(k, case, data, with_dx)[0]
                X, W, b, dY = data
                job = torch_job("conv", n_threads, torch_data(X=X, W=W, b=b, dY=dY, **want),
                                with_dx=with_dx, padding=wl.CONV_PADDING)
                if job is not None:  # checked against `want` in the worker
                    fns["torch"] = job
                secs = interleaved(fns, args.rounds, args.target_s)
                c, nb, tt = (secs.get(i) for i in ("fastnn-c", "fastnn-numba", "torch"))
                table.add(case[0], "yes" if with_dx else "no", n_threads,
                          *(f"{1e3 * secs[i]:.2f}" if i in secs else "-" for i in impls),
                          fmt_rate(wl.conv_flops(case, with_dx) / c / 1e9, ""),
                          fmt_ratio(ratio(tt, c), CONV_TARGETS.get(case[0], CONV_TARGET)),
                          fmt_ratio(ratio(tt, nb)),
                          fmt_ratio(ratio(c, nb), NUMBA_VS_C), spread())
                args.results.append({"section": "conv", "case": case[0], "dX": with_dx,
                                     "threads": n_threads, "seconds": secs})
    return table


# ---- training ------------------------------------------------------------------

def load_train_data(args, n):
    if args.mnist:
        X, y = fastnn.datasets.load_mnist(args.mnist, kind="train")
        X = np.ascontiguousarray(X.reshape(len(X), -1)[:n], dtype=np.float32)
        return X, np.asarray(y[:n], dtype=np.int64)
    return wl.synthetic_mnist(n, seed=0)


def dense_weights_file(path, model):
    """Write a fastnn MLP's weights as W0, b0, W1, ... ((fan_in, fan_out), (fan_out,)):
    the initial weights the jax and torch workers start from."""
    dense = [layer for layer in model.layers if hasattr(layer, "weight")]
    np.savez(path, **{f"{k}{i}": np.asarray(getattr(layer, name))
                      for i, layer in enumerate(dense) for k, name in (("W", "weight"), ("b", "bias"))})
    return path


def torch_mlp_job(n_threads, X, y, data, batch_size, rows=256):
    """torch's MLP in the worker (on `data`, X and y's torch_data file) from
    fastnn's initial weights (seed 0), its loss on the first `rows` samples
    checked there against the reference backend's."""
    if torch_status() is not None:
        return None
    fresh = wl.make_trainer("reference", seed=0)
    weights = dense_weights_file(os.path.join(_torch_dir(), "mlp_init.npz"), fresh.model)
    return torch_job("fit", n_threads, data, model="mlp", weights=weights, batch=batch_size,
                     check_loss=[rows, fresh.evaluate(X[:rows], y[:rows])["loss"]])


def train_fns(X, y, batch_size, n_threads, data, check=True):
    """name -> callable training one epoch, for fastnn c, numba and torch (a
    TorchJob in the worker, or left out if torch is unavailable)."""
    fns = {}
    for backend in FASTNN_BACKENDS:
        if check:
            wl.check_model_grads(backend, X[:64], y[:64])
        trainer = wl.make_trainer(backend, seed=0)
        fns[f"fastnn-{backend}"] = (
            lambda t=trainer: t.fit(X, y, epochs=1, batch_size=batch_size, verbose=False))
        trainer.fit(X[:2 * batch_size], y[:2 * batch_size], epochs=1, batch_size=batch_size,
                    verbose=False)  # compile / allocate outside the timing
    job = torch_mlp_job(n_threads, X, y, data, batch_size)
    if job is not None:
        fns["torch"] = job
    return fns


def section_train(args):
    n = 10_000 if args.quick else 60_000
    X, y = load_train_data(args, n)
    n = len(X)
    data = f"MNIST from {args.mnist}" if args.mnist else "synthetic MNIST-shaped data"
    impls = [f"fastnn-{b}" for b in FASTNN_BACKENDS] + (["torch"] if torch_status() is None else [])
    table = Table(f"Training MLP 784-256-128-10, Adam lr 1e-3, one epoch of {n:,} samples "
                  f"({data}), samples/s",
                  ["batch", "threads", *impls, "c/torch", "target", "numba/torch", "numba/c",
                   "spread"],
                  ["fastnn: Trainer.fit(epochs=1) wall time (input validation and the "
                   "per-epoch shuffle included); torch: eager nn.Sequential, CrossEntropyLoss, "
                   "Adam(fused=True), slices of a pre-shuffled tensor, loss.item() per batch; "
                   + TORCH_ALONE,
                   f"target c/torch: {', '.join(f'>= {t:g}x at {b}' for b, t in TRAIN_TARGETS.items())}"
                   f"; numba >= {NUMBA_VS_C}x c"])
    tdata = torch_data(X=X, y=y)
    for n_threads in args.threads:
        with Threads(n_threads):
            for batch_size in wl.TRAIN_BATCHES:
                fns = train_fns(X, y, batch_size, n_threads, tdata)
                # one epoch is long enough: no repeats inside a sample
                secs = interleaved(fns, args.train_rounds, 0.0)
                rate = {i: n / secs[i] for i in fns}
                c, nb, tt = rate.get("fastnn-c"), rate.get("fastnn-numba"), rate.get("torch")
                table.add(batch_size, n_threads, *(fmt_rate(rate.get(i), "samples/s") for i in impls),
                          fmt_ratio(ratio(c, tt), TRAIN_TARGETS[batch_size]),
                          f">= {TRAIN_TARGETS[batch_size]:g}x",
                          fmt_ratio(ratio(nb, tt)), fmt_ratio(ratio(nb, c), NUMBA_VS_C),
                          spread())
                args.results.append({"section": "train", "batch": batch_size,
                                     "threads": n_threads, "samples/s": rate})
    table.notes.append(_rss_note(args, n))
    return table


def _rss_note(args, n, batch_size=128):
    """Peak RSS of one epoch per framework, each in its own subprocess."""
    parts = []
    for impl in [f"fastnn-{b}" for b in FASTNN_BACKENDS] + (["torch"] if torch_status() is None
                                                             else []):
        cmd = [sys.executable, "-m", "fastnn.bench.compare", "--rss-worker", impl,
               "--rss-samples", str(n), "--rss-batch", str(batch_size),
               "--threads", str(max(args.threads))]
        if args.mnist:
            cmd += ["--mnist", args.mnist]
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=900)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            parts.append(f"{impl} {r['peak_kb'] / 1024:.0f} MiB "
                         f"(+{(r['peak_kb'] - r['base_kb']) / 1024:.0f} over data + imports)")
            args.results.append({"section": "rss", "impl": impl, **r})
        except (subprocess.SubprocessError, ValueError, KeyError, IndexError) as exc:
            parts.append(f"{impl} failed ({exc})")
    return (f"peak RSS, one epoch at batch {batch_size}, {max(args.threads)} threads, each in "
            f"its own process: " + "; ".join(parts))


def rss_worker(args):
    """--rss-worker IMPL: train one epoch and print {"base_kb", "peak_kb"} as JSON."""
    X, y = load_train_data(args, args.rss_samples)
    fastnn.set_num_threads(args.threads[0])
    if args.rss_worker == "torch":
        import tempfile

        from fastnn.bench import torch_worker

        torch.set_num_threads(args.threads[0])
        with tempfile.TemporaryDirectory() as tmp:
            weights = dense_weights_file(os.path.join(tmp, "init.npz"),
                                         wl.make_mlp("reference", 0))
            net = torch_worker.mlp(torch, None, {"weights": weights})
        run = torch_worker.epoch_fn(torch, net, X, y, args.rss_batch)
    else:
        trainer = wl.make_trainer(args.rss_worker.split("-", 1)[1], seed=0)
        run = lambda: trainer.fit(X, y, epochs=1, batch_size=args.rss_batch,  # noqa: E731
                                  verbose=False)
    base = _peak_rss_kb()
    run()
    print(json.dumps({"base_kb": base, "peak_kb": _peak_rss_kb()}))


def _peak_rss_kb():
    """This process's peak RSS in KiB.

    VmHWM of /proc/self/status where there is one: getrusage's ru_maxrss
    also counts the parent's peak (Linux carries the high-water mark of the
    forked image across exec), so every worker would report the parent's.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


# ---- scikit-learn --------------------------------------------------------------

def section_sklearn(args):
    try:
        from fastnn.sklearn import MLPClassifier as FastMLP
    except ImportError as exc:
        table = Table("scikit-learn MLPClassifier", ["status"])
        table.add(f"skipped: fastnn.sklearn.MLPClassifier not importable ({exc})")
        return table
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from sklearn.neural_network import MLPClassifier as SkMLP

    X, y = load_digits(return_X_y=True)
    digits = train_test_split((X / 16.0).astype(np.float32), y, test_size=0.25, random_state=0)
    n_big = 3_000 if args.quick else 12_000
    Xb, yb = load_train_data(args, n_big + 2_000)
    big = (Xb[:n_big], Xb[n_big:], yb[:n_big], yb[n_big:])
    cases = [("digits 64-256-128-10", digits, 10 if args.quick else 40, 5.0),
             (f"784-256-128-10, {n_big:,} samples", big, 3 if args.quick else 10, 2.0)]
    impls = [f"fastnn-{b}" for b in FASTNN_BACKENDS] + ["sklearn"]
    table = Table("scikit-learn MLPClassifier(hidden_layer_sizes=(256, 128), solver='adam'): "
                  "fit seconds (test accuracy)",
                  ["data", "epochs", "batch", "threads", *impls, "speedup c", "target",
                   "speedup numba", "spread"],
                  ["same settings for both: learning_rate_init=1e-3, alpha=1e-4, tol=0, "
                   "n_iter_no_change > max_iter (all epochs run), random_state=0",
                   "speedup = sklearn fit time / fastnn fit time"])
    for n_threads in args.threads:
        with Threads(n_threads):
            for label, (X_tr, X_te, y_tr, y_te), epochs, target in cases:
                for batch_size in (32, 200):
                    params = dict(hidden_layer_sizes=(256, 128), batch_size=batch_size,
                                  max_iter=epochs, tol=0.0, n_iter_no_change=epochs + 1,
                                  random_state=0, learning_rate_init=1e-3, alpha=1e-4)
                    makers = {f"fastnn-{b}": (lambda b=b: FastMLP(backend=b, **params))
                              for b in FASTNN_BACKENDS}
                    makers["sklearn"] = lambda: SkMLP(**params)
                    fitted = {}

                    def fit_fn(name, make):
                        def fit():
                            with warnings.catch_warnings():
                                warnings.simplefilter("ignore")
                                fitted[name] = make().fit(X_tr, y_tr)
                        return fit

                    for name in FASTNN_BACKENDS:  # compile outside the timing
                        with warnings.catch_warnings():
                            warnings.simplefilter("ignore")
                            FastMLP(backend=name, **{**params, "max_iter": 1}).fit(
                                X_tr[:400], y_tr[:400])
                    fns = {name: fit_fn(name, make) for name, make in makers.items()}
                    secs = interleaved(fns, args.sklearn_rounds, 0.0)
                    acc = {}
                    for name, clf in fitted.items():
                        assert clf.n_iter_ == epochs, (name, clf.n_iter_)
                        acc[name] = float(np.mean(clf.predict(X_te) == y_te))
                    sk = secs["sklearn"]
                    table.add(label, epochs, batch_size, n_threads,
                              *(f"{secs[i]:.2f} ({acc[i]:.3f})" for i in impls),
                              fmt_ratio(ratio(sk, secs["fastnn-c"]), target), f">= {target:g}x",
                              fmt_ratio(ratio(sk, secs["fastnn-numba"])), spread())
                    args.results.append({"section": "sklearn", "case": label, "batch": batch_size,
                                         "threads": n_threads, "fit_s": secs, "accuracy": acc})
    return table


# ---- models: CNNs, JAX, BatchNorm + Dropout, MNIST-1D ---------------------------
# Whole models through fastnn's public API only (Sequential, layers,
# Trainer.fit), so that whichever path the Trainer takes (batch by batch from
# Python, or a compiled epoch) is what gets measured.

_RATES = {}


def gemm_rates(thread_counts=(1,)):
    """The GEMM rate of this machine with 1, 2, ... threads, the "limit"
    columns' unit: float32 1024 x 1024 x 1024 products by numpy's BLAS,
    the thread counts interleaved over 5 rounds, the best of each, measured
    once per run.  With more than one thread it is what the cores do
    together -- not the one-core rate times the threads: on session 18's
    2-vCPU Xeon two cores together reached ~1.6-1.8x one core (GEMMs pinned
    to each core in two processes, and numpy's own 2 threads), as one core
    runs slower while the other computes (bench/NOTES.md 59).  The
    register-only FMA peak is higher still (session 8's Xeon: 16 AVX-512
    FMA chains ~206 GFLOP/s against ~130 for the GEMMs; session 18's
    ~131 against ~110-120): no GEMM gets near it, so it is not the limit
    quoted."""
    want = sorted({1, *thread_counts} - set(_RATES))
    if want:
        rng = np.random.default_rng(0)
        A, B = (rng.random((1024, 1024), dtype=np.float32) for _ in range(2))
        best = dict.fromkeys(want, float("inf"))
        for _ in range(5):
            for t in want:
                with threadpoolctl.threadpool_limits(t, user_api="blas"):
                    A @ B
                    best[t] = min(best[t], _timed(lambda: A @ B))
        _RATES.update({t: 2.0 * 1024 ** 3 / best[t] / 1e9 for t in want})
    return {t: _RATES[t] for t in sorted({1, *thread_counts})}


def peak_gflops(n_threads=1):
    """The measured GEMM rate with `n_threads` threads (gemm_rates)."""
    return gemm_rates((n_threads,))[n_threads]


def limit_text():
    """The limit's unit for the table notes: the measured rate per thread count."""
    gemm_rates()
    return ", ".join(f"{t} thread{'s' if t > 1 else ''} {r:.0f}"
                     for t, r in sorted(_RATES.items())) + " GFLOP/s"


def _timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0
LENET_TARGET = 2.5  # fastnn c vs torch eager, samples/s
CLI_CNN_TARGET = 2.0
JAX_TARGETS = {2: {32: 1.5, 128: 1.15, 512: 1.1}, 1: {32: 1.2, 128: 1.1, 512: 1.05}}
BN_DROPOUT_TARGET = 0.9  # fastnn with BatchNorm + Dropout vs without
MNIST1D_TARGET = 0.93  # test accuracy (Greydanus 2020: CNN 94%)


def _model_sizes(args):
    """Data sizes and epochs of the models section: full, --quick, --tiny (the CI test)."""
    if args.tiny:
        return dict(lenet_n=256, digits_epochs=1, jax_n=2048, jax_batches=(128,), bn_n=1024,
                    bn_batches=(128,), mnist1d_epochs=1)
    if args.quick:
        return dict(lenet_n=2048, digits_epochs=1, jax_n=10_000, jax_batches=wl.TRAIN_BATCHES,
                    bn_n=5_000, bn_batches=(128,), mnist1d_epochs=5)
    return dict(lenet_n=8192, digits_epochs=4, jax_n=60_000, jax_batches=wl.TRAIN_BATCHES,
                bn_n=20_000, bn_batches=(128,), mnist1d_epochs=MNIST1D_EPOCHS)


def _backends(args):
    """fastnn's backends in the models section: the c backend only in --tiny (the CI
    test, whose time numba's first compilations would take)."""
    return ("c",) if args.tiny else FASTNN_BACKENDS


def train_flops(model):
    """Multiply-add FLOP per sample of one training step of a fastnn model:
    forward, dW and dX of every Conv and Dense (2 per multiply-add), without
    the first one's dX (nobody needs the input gradient); pooling, BatchNorm,
    activations, the loss and the update are left out (memory-bound, small)."""
    shape, total, first = model.input_shape, 0.0, True
    for layer in model.layers:
        out = layer.build(shape)  # idempotent: the shapes the model was built with
        if isinstance(layer, fastnn.Conv2D):
            positions = out[0] if len(out) == 2 else out[0] * out[1]  # Conv1D: (L, C)
            macs = positions * int(np.prod(layer.kernel_size)) * layer.in_channels * layer.out_channels
        elif isinstance(layer, fastnn.Dense):
            macs = layer.in_features * layer.out_features
        else:
            macs = 0
        if macs:
            total += 2.0 * macs * (2 if first else 3)
            first = False
        shape = out
    return total


def _limit(flops, n_threads):
    return peak_gflops(n_threads) * 1e9 / flops


def lenet_layers():
    return [fastnn.Conv2D(1, 16, 3, padding=1, activation="relu"), fastnn.MaxPool2D(2),
            fastnn.Conv2D(16, 32, 3, padding=1, activation="relu"), fastnn.MaxPool2D(2),
            fastnn.Flatten(), fastnn.Dense(1568, 10)]


def cli_cnn_layers():
    from fastnn.cli import small_cnn

    return small_cnn((8, 8, 1), 10)


def bn_dropout_layers(p=0.2):
    return [fastnn.Dense(784, 256, activation="relu"), fastnn.BatchNorm(256), fastnn.Dropout(p),
            fastnn.Dense(256, 128, activation="relu"), fastnn.BatchNorm(128), fastnn.Dropout(p),
            fastnn.Dense(128, 10)]


def model_trainer(layers_fn, backend, input_shape=None, seed=0, lr=1e-3):
    model = fastnn.Sequential(layers_fn(), seed=seed, backend=backend, input_shape=input_shape)
    return fastnn.Trainer(model, "softmax_cross_entropy", fastnn.optim.Adam(lr=lr),
                          backend=backend)


def _fit_fn(trainer, X, y, batch_size, epochs=1):
    """One timed call: Trainer.fit over (X, y); compiled / allocated beforehand."""
    trainer.fit(X[:2 * batch_size], y[:2 * batch_size], epochs=1, batch_size=batch_size,
                verbose=False)
    return lambda: trainer.fit(X, y, epochs=epochs, batch_size=batch_size, verbose=False)


def _cnn_rows(args, table, label, layers_fn, torch_model, input_shape, X, y, batch_size, epochs,
              target):
    n = len(X) * epochs
    flops = None
    tdata = torch_data(X=X, y=y)
    for n_threads in args.threads:
        with Threads(n_threads):
            trainers = {b: model_trainer(layers_fn, b, input_shape) for b in _backends(args)}
            flops = train_flops(trainers["c"].model)
            loss0 = trainers["c"].evaluate(X[:1000], y[:1000])["loss"]
            fns = {f"fastnn-{b}": _fit_fn(t, X, y, batch_size, epochs) for b, t in trainers.items()}
            job = torch_job("fit", n_threads, tdata, model=torch_model, batch=batch_size,
                            epochs=epochs, seed=0)
            if job is not None:
                fns["torch"] = job
            secs = interleaved(fns, args.train_rounds, 0.0)
            loss1 = trainers["c"].evaluate(X[:1000], y[:1000])["loss"]
            rate = {i: n / secs[i] for i in fns}
            c, nb, tt = rate.get("fastnn-c"), rate.get("fastnn-numba"), rate.get("torch")
            table.add(label, batch_size, n_threads, fmt_rate(c, "samples/s"),
                      fmt_rate(nb, "samples/s"),
                      fmt_rate(tt, "samples/s") if tt else torch_status(),
                      fmt_ratio(ratio(c, tt), target), f">= {target:g}x",
                      fmt_rate(_limit(flops, n_threads), "samples/s"),
                      f"{100 * c * flops / (peak_gflops(n_threads) * 1e9):.0f}%",
                      fmt_ratio(ratio(nb, c), NUMBA_VS_C), f"{loss0:.2f}->{loss1:.3f}", spread())
            args.results.append({"section": "models", "model": label, "batch": batch_size,
                                 "threads": n_threads, "samples/s": rate,
                                 "MFLOP/sample": flops / 1e6})
    return flops


def _models_cnn_table(args, sizes):
    table = Table("Training CNNs, Adam lr 1e-3, softmax cross-entropy: samples/s",
                  ["model", "batch", "threads", "fastnn-c", "fastnn-numba", "torch", "c/torch",
                   "target", "limit", "c of limit", "numba/c", "c loss", "spread"])
    n = sizes["lenet_n"]
    X, y = wl.synthetic_mnist(n, seed=0)
    X = X.reshape(n, 28, 28, 1)
    lenet = _cnn_rows(args, table, f"LeNet-like 28x28, {n:,} samples", lenet_layers,
                      "lenet", (28, 28, 1), X, y, 128, 1, LENET_TARGET)
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    Xd, yd = load_digits(return_X_y=True)
    Xd, _, yd, _ = train_test_split((Xd / 16.0).astype(np.float32), yd, test_size=0.25,
                                    random_state=0, stratify=yd)
    epochs = sizes["digits_epochs"]
    digits = _cnn_rows(args, table, f"fastnn train --model cnn, digits, {epochs} x {len(Xd):,}",
                       cli_cnn_layers, "cli_cnn", (8, 8, 1), Xd.reshape(-1, 8, 8, 1),
                       yd.astype(np.int64), 32, epochs, CLI_CNN_TARGET)
    table.notes += [
        "LeNet-like: Conv2D(1,16,3,p=1,relu)-MaxPool2D(2)-Conv2D(16,32,3,p=1,relu)-MaxPool2D(2)-"
        "Flatten-Dense(1568,10) on synthetic 28x28x1 MNIST-shaped data (channels-last; torch "
        "the same in NCHW with nn.Conv2d, nn.MaxPool2d, nn.Linear)",
        "fastnn train --model cnn: fastnn.cli.small_cnn((8, 8, 1), 10) = Conv2D(1,16,3,relu)-"
        "BatchNorm(16)-Conv2D(16,32,3,relu)-MaxPool2D(2)-Flatten-Dense(512,64,relu)-Dense(64,10), "
        "batch 32 (the CLI's default) on the digits' training split; torch the same with "
        "BatchNorm2d (train mode); no schedule or validation on either side",
        "fastnn: Trainer.fit wall time (shuffle included); torch: eager, Adam(fused=True), "
        "slices of a pre-shuffled tensor, loss.item() per batch (as the train section); "
        + TORCH_ALONE,
        f"limit: the GEMM rate of that many threads ({limit_text()}) / the "
        f"FLOP of one training step per sample: LeNet-like {lenet / 1e6:.2f} MFLOP, the CLI's "
        f"CNN {digits / 1e6:.2f} MFLOP (forward + dW + dX of the convolutions and dense "
        "layers, no dX for the first layer); c loss: fastnn c's loss on 1,000 training "
        "samples before and after its timed epochs"]
    return table


# -- JAX --

def _jax_status():
    """None when jax and optax are importable (in the worker), else why not."""
    import importlib.util

    missing = [m for m in ("jax", "optax") if importlib.util.find_spec(m) is None]
    return f"{' and '.join(missing)} not installed" if missing else None


class JaxWorker(Worker):
    """A `python -m fastnn.bench.jax_worker` subprocess at a fixed thread count."""

    def __init__(self, n_threads, cpus):
        super().__init__("fastnn.bench.jax_worker", "--threads", str(n_threads),
                         "--cpus", ",".join(map(str, sorted(cpus))))


class _Pinned:
    """Pin the calling thread to `cpus` (None: leave it), restoring its mask after."""

    def __init__(self, cpus):
        self.cpus = cpus

    def __enter__(self):
        self._saved = os.sched_getaffinity(0)
        if self.cpus:
            os.sched_setaffinity(0, self.cpus)

    def __exit__(self, *exc):
        os.sched_setaffinity(0, self._saved)


def _jax_cpus(n_threads):
    """The CPUs of a jax worker at n_threads: one of ours for 1 thread, all of ours otherwise."""
    allowed = sorted(os.sched_getaffinity(0))
    return set(allowed[:1]) if n_threads == 1 else set(allowed)


def _models_jax_table(args, sizes):
    n = sizes["jax_n"]
    X, y = load_train_data(args, n)
    n = len(X)
    flops = train_flops(wl.make_mlp("reference", 0))
    table = Table(f"Training MLP 784-256-128-10 vs JAX (whole epoch jitted), Adam lr 1e-3, "
                  f"{n:,} samples: samples/s",
                  ["batch", "threads", "fastnn-c", "fastnn-numba", "jax", "c/jax", "target",
                   "limit", "c of limit", "numba/c", "loss c | jax", "spread"],
                  ["jax: one jax.jit of jax.lax.scan over a jitted value_and_grad + optax.adam "
                   "step, over batches shuffled once beforehand and put on the device (the "
                   "remainder of n / batch left out; its samples/s counts the samples it did), "
                   "in its own process (bench/jax_worker.py) asked for one epoch at a time "
                   "between fastnn's epochs; compile time excluded (a discarded warm-up epoch)",
                   "jax threads: 1 = that process pinned to one CPU (and Eigen's threads off), "
                   "fastnn's timing thread pinned to the same CPU for these rows; 2 = both on "
                   "the allowed CPUs (see bench/jax_worker.py for what was measured)",
                   "both start from the same weights (fastnn's He/Glorot init, copied; the initial "
                   "losses are checked equal); loss: on 2,000 training samples, before -> after "
                   "the timed epochs (fastnn also trained its 2-batch warm-up)",
                   f"limit: the GEMM rate of that many threads ({limit_text()}) / {flops / 1e6:.3f} MFLOP "
                   "per sample (2 x (forward + dW) x 234,752 multiply-adds, + dX of the two "
                   "upper layers; the brief's 2*3*234,752 = 1.409 MFLOP also counts the first "
                   "layer's dX, which is not computed)",
                   "targets: " + "; ".join(
                       f"{t} thread{'s' if t > 1 else ''} " + ", ".join(
                           f">= {v:g}x at {b}" for b, v in JAX_TARGETS[t].items())
                       for t in (2, 1))])
    status = _jax_status()
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        weights = dense_weights_file(os.path.join(tmp, "init.npz"), wl.make_mlp("reference", 0))
        for n_threads in args.threads:
            cpus = _jax_cpus(n_threads)
            worker, error = None, status
            if error is None:
                try:
                    worker = JaxWorker(n_threads, cpus)
                except (RuntimeError, OSError, ValueError) as exc:
                    error = str(exc)[:120]
            try:
                with Threads(n_threads), _Pinned(cpus if n_threads == 1 else None):
                    for batch_size in sizes["jax_batches"]:
                        _jax_row(args, table, worker, error, weights, X, y, n, batch_size,
                                 n_threads, flops)
            finally:
                if worker is not None:
                    worker.close()
    return table


def _jax_row(args, table, worker, error, weights, X, y, n, batch_size, n_threads, flops):
    trainers = {b: wl.make_trainer(b, seed=0) for b in _backends(args)}
    loss0 = trainers["c"].evaluate(X[:2000], y[:2000])["loss"]  # before any step: jax's too
    fns = {f"fastnn-{b}": _fit_fn(t, X, y, batch_size) for b, t in trainers.items()}
    jax_samples = jax_loss = None
    if worker is not None and error is None:
        try:
            setup = worker("setup", n=n, seed=0, mnist=args.mnist, batch=batch_size,
                           weights=weights, lr=1e-3, eval_n=2000)
            if abs(setup["loss0"] - loss0) > 1e-3 * abs(loss0):
                error = f"jax's initial loss {setup['loss0']:.4f} != fastnn's {loss0:.4f}"
            else:
                jax_samples, jax_loss = setup["samples"], [setup["loss0"]]
                fns["jax"] = lambda: worker("epoch")
        except RuntimeError as exc:
            error = str(exc)[:120]
    secs = interleaved(fns, args.train_rounds, 0.0)
    rate = {i: (jax_samples if i == "jax" else n) / secs[i] for i in fns}
    loss1 = trainers["c"].evaluate(X[:2000], y[:2000])["loss"]
    loss_text = f"{loss0:.2f}->{loss1:.2f}"
    if jax_loss is not None:
        jax_loss.append(worker("eval")["loss"])
        loss_text += f" | {jax_loss[0]:.2f}->{jax_loss[1]:.2f}"
        if not jax_loss[1] < jax_loss[0]:
            loss_text += " (jax did not learn!)"
    c, nb, jx = rate.get("fastnn-c"), rate.get("fastnn-numba"), rate.get("jax")
    target = JAX_TARGETS.get(n_threads, {}).get(batch_size)
    table.add(batch_size, n_threads, fmt_rate(c, "samples/s"), fmt_rate(nb, "samples/s"),
              fmt_rate(jx, "samples/s") if jx else (error or "-"),
              fmt_ratio(ratio(c, jx), target), f">= {target:g}x" if target else "-",
              fmt_rate(_limit(flops, n_threads), "samples/s"),
              f"{100 * c * flops / (peak_gflops(n_threads) * 1e9):.0f}%",
              fmt_ratio(ratio(nb, c), NUMBA_VS_C), loss_text, spread())
    args.results.append({"section": "models", "model": "mlp-vs-jax", "batch": batch_size,
                         "threads": n_threads, "samples/s": rate,
                         **({"jax_error": error} if error else {})})


# -- BatchNorm + Dropout --

def _models_bn_table(args, sizes):
    n = sizes["bn_n"]
    X, y = load_train_data(args, n)
    n = len(X)
    table = Table(f"MLP 784-256-128-10 with BatchNorm + Dropout(0.2) after each hidden Dense "
                  f"vs without, Adam lr 1e-3, {n:,} samples: samples/s",
                  ["batch", "threads", "c plain", "c bn+do", "c ratio", "target", "numba plain",
                   "numba bn+do", "numba ratio", "torch plain", "torch bn+do", "torch ratio",
                   "spread"],
                  ["bn+do: Dense(relu)-BatchNorm-Dropout(0.2) twice, then Dense(128,10); torch "
                   "the same with BatchNorm1d and Dropout in train mode; plain: the train "
                   "section's MLP; " + TORCH_ALONE,
                   f"ratio: bn+do samples/s / plain samples/s (target for fastnn c: >= "
                   f"{BN_DROPOUT_TARGET:g}x; torch's for context)"])
    tdata = torch_data(X=X, y=y)
    for n_threads in args.threads:
        with Threads(n_threads):
            for batch_size in sizes["bn_batches"]:
                fns = {}
                for backend in _backends(args):
                    fns[f"{backend} plain"] = _fit_fn(wl.make_trainer(backend, seed=0), X, y,
                                                      batch_size)
                    fns[f"{backend} bn+do"] = _fit_fn(model_trainer(bn_dropout_layers, backend),
                                                      X, y, batch_size)
                jobs = {"torch plain": torch_mlp_job(n_threads, X, y, tdata, batch_size),
                        "torch bn+do": torch_job("fit", n_threads, tdata, model="bn_dropout",
                                                 batch=batch_size, seed=0, name="torch bn+do")}
                fns.update((name, job) for name, job in jobs.items() if job is not None)
                secs = interleaved(fns, args.train_rounds, 0.0)
                rate = {i: n / secs[i] for i in fns}
                row = [batch_size, n_threads]
                for impl in ("c", "numba", "torch"):
                    plain, bn = rate.get(f"{impl} plain"), rate.get(f"{impl} bn+do")
                    if plain is None:  # torch unavailable; numba left out in --tiny
                        cell = torch_status() if impl == "torch" else "-"
                        row += [cell, cell, "-"] + (["-"] if impl == "c" else [])
                        continue
                    row += [fmt_rate(plain, "samples/s"), fmt_rate(bn, "samples/s"),
                            fmt_ratio(ratio(bn, plain), BN_DROPOUT_TARGET if impl == "c" else None)]
                    if impl == "c":
                        row.append(f">= {BN_DROPOUT_TARGET:g}x")
                table.add(*row, spread())
                args.results.append({"section": "models", "model": "bn-dropout",
                                     "batch": batch_size, "threads": n_threads, "samples/s": rate})
    return table


# -- MNIST-1D --

MNIST1D_EPOCHS = 15
MNIST1D_BATCH = 64
_MNIST1D = {}


def mnist1d_data():
    """(X_train (4000, 40, 1), y_train, X_test (1000, 40, 1), y_test) made by the mnist1d
    package from its default arguments (generated here, nothing downloaded); or None."""
    if "data" not in _MNIST1D:
        try:
            from mnist1d.data import get_dataset_args, make_dataset
        except ImportError:
            _MNIST1D["data"] = None
        else:
            state = np.random.get_state()  # make_dataset seeds numpy's global generator
            d = make_dataset(get_dataset_args())
            np.random.set_state(state)
            _MNIST1D["data"] = tuple(
                np.ascontiguousarray(d[k], dtype=np.float32).reshape(-1, 40, 1) if k[0] == "x"
                else np.asarray(d[k], dtype=np.int64) for k in ("x", "y", "x_test", "y_test"))
    return _MNIST1D["data"]


def mnist1d_layers():
    """Three convolutions with BatchNorm, two pools, a linear head.  Tried (40
    epochs, batch 64, test accuracy): without BatchNorm, 32-32-pool-32-pool and
    a Dense(64) head 0.91, 32-64-pool-64-pool 0.92, four convolutions of 32
    (5-3-3-pool-3-pool) 0.94 (0.95 at batch 32); with BatchNorm after each
    convolution, 32-64-pool-64-pool: 0.93 after 5 epochs, 0.96 after 30."""
    return [fastnn.Conv1D(1, 32, 5, padding=2, activation="relu"), fastnn.BatchNorm(32),
            fastnn.Conv1D(32, 64, 3, padding=1, activation="relu"), fastnn.BatchNorm(64),
            fastnn.MaxPool1D(2),
            fastnn.Conv1D(64, 64, 3, padding=1, activation="relu"), fastnn.BatchNorm(64),
            fastnn.MaxPool1D(2), fastnn.Flatten(), fastnn.Dense(640, 10)]


def train_mnist1d(backend, epochs, batch_size=MNIST1D_BATCH, seed=0):
    """(seconds, test accuracy) of a fresh fastnn Conv1D network trained on MNIST-1D."""
    X, y, Xt, yt = mnist1d_data()
    trainer = model_trainer(mnist1d_layers, backend, (40, 1), seed=seed)
    trainer.fit(X[:2 * batch_size], y[:2 * batch_size], epochs=1, batch_size=batch_size,
                verbose=False)  # compile outside the timing; then start afresh
    trainer = model_trainer(mnist1d_layers, backend, (40, 1), seed=seed)
    t0 = time.perf_counter()
    trainer.fit(X, y, epochs=epochs, batch_size=batch_size, seed=seed, verbose=False,
                callbacks=[fastnn.schedules.CosineAnnealingLR(epochs)])
    seconds = time.perf_counter() - t0
    accuracy = float(np.mean(trainer.predict(Xt).argmax(axis=1) == yt))
    return seconds, accuracy


def _models_mnist1d_table(args, sizes):
    epochs = sizes["mnist1d_epochs"]
    table = Table("MNIST-1D Conv1D (fastnn): training seconds and test accuracy",
                  ["model", "backend", "threads", "epochs", "batch", "seconds", "samples/s",
                   "test accuracy", "target"])
    data = mnist1d_data()
    if data is None:
        table.add("MNIST-1D Conv1D", "-", "-", "-", "-", "not installed (pip install mnist1d)",
                  "-", "-", "-")
        return table
    model = fastnn.Sequential(mnist1d_layers(), seed=0, input_shape=(40, 1))
    runs = [("c", t) for t in args.threads] + [("numba", max(args.threads))
                                                for _ in ("numba",) if not args.tiny]
    for backend, n_threads in runs:
        with Threads(n_threads):
            seconds, accuracy = train_mnist1d(backend, epochs)
        ok = "ok" if accuracy >= MNIST1D_TARGET else f"(<{MNIST1D_TARGET:g})"
        table.add("MNIST-1D Conv1D", backend, n_threads, epochs, MNIST1D_BATCH, f"{seconds:.1f}",
                  fmt_rate(epochs * len(data[0]) / seconds, "samples/s"), f"{accuracy:.3f}",
                  f">= {MNIST1D_TARGET:g} {ok if epochs >= MNIST1D_EPOCHS else '(too few epochs)'}")
        args.results.append({"section": "models", "model": "mnist1d", "backend": backend,
                             "threads": n_threads, "epochs": epochs, "seconds": seconds,
                             "test_accuracy": accuracy})
    table.notes += [
        "data: mnist1d.data.make_dataset(get_dataset_args()) (defaults: 4,000 train / 1,000 "
        "test signals of length 40, generated offline), as (N, 40, 1) channels-last",
        f"model ({model.n_parameters:,} parameters): Conv1D(1,32,5,p=2,relu)-BatchNorm-"
        "Conv1D(32,64,3,p=1,relu)-BatchNorm-MaxPool1D(2)-Conv1D(64,64,3,p=1,relu)-BatchNorm-"
        "MaxPool1D(2)-Flatten-Dense(640,10); Adam lr 1e-3 with cosine annealing over the epochs, batch "
        f"{MNIST1D_BATCH}; seconds: Trainer.fit wall time, one run each (not interleaved)",
        "reference: Greydanus 2020 reports 94% for a CNN on MNIST-1D"]
    return table


def section_models(args):
    """Whole models: CNNs vs torch, the MLP vs JAX, BatchNorm + Dropout, MNIST-1D.
    A generator: each table is printed when it is done."""
    sizes = _model_sizes(args)
    yield _models_cnn_table(args, sizes)
    yield _models_jax_table(args, sizes)
    yield _models_bn_table(args, sizes)
    yield _models_mnist1d_table(args, sizes)


# ---- many models in one call ------------------------------------------------------

def _digits_mlps(k, backend="c"):
    """k trainers of the 64-256-128-10 digits MLP, seeds 0..k-1."""
    return [fastnn.Trainer(fastnn.Sequential(
        [fastnn.Dense(64, 256, activation="relu"), fastnn.Dense(256, 128, activation="relu"),
         fastnn.Dense(128, 10)], seed=s, backend=backend), "softmax_cross_entropy", "adam")
        for s in range(k)]


def section_many(args):
    """fastnn.fit_many against the same fits one after another, and
    MLPSearchCV against GridSearchCV over fastnn's and scikit-learn's
    estimators.  A generator: each table is printed when it is done."""
    from fastnn.datasets import load_digits

    X, y = load_digits()
    X, y = X[:1344], y[:1344]
    ks = (4,) if args.tiny or args.quick else (4, 16, 64)
    # per sample and model: forward + dW of every layer + dX of the upper two
    flops = 2 * 3 * (64 * 256 + 256 * 128 + 128 * 10) - 2 * 64 * 256
    rounds = args.rounds_override or (1 if args.tiny else (3 if args.quick else 5))
    table = Table(
        "Many models: 64-256-128-10 MLPs on 1,344 digits, batch 32, one epoch, Adam: "
        "model-samples/s",
        ["models", "threads", "fit_many", "one after another", "ratio", "target",
         "JAX vmap-in-scan", "vs JAX", "limit", "spread"],
        notes=["fit_many: one model_epochs call per epoch, the models side by side (one per "
               "thread); one after another: trainer.fit of each (the c backend's "
               "dense-stack epoch)",
               "the trainers of each sample are built before its timer starts (2 ms a "
               "trainer, 32 ms for 16: as long as the 16 models' epoch at 700k)",
               f"limit: the GEMM rate of that many threads ({limit_text()}) / {flops / 1e6:.2f} MFLOP per sample and model "
               "(forward + dW of every layer, dX of the upper two)",
               "target: >= 3x the fits one after another, >= 4x JAX (issue 12)",
               "JAX vmap-in-scan: jax.vmap of one model's optax Adam step over the K models "
               "inside one jitted lax.scan epoch (fastnn/bench/jax_many.py, its own process, "
               "after fastnn's rounds; model-samples/s, median of its epochs); '-' without jax "
               "or with --tiny"])
    for threads in args.threads:
        with Threads(threads):
            for k in ks:
                def many(trainers):
                    fastnn.fit_many(trainers, X, y, epochs=1, batch_size=32, seed=0,
                                    verbose=False)

                def one_by_one(trainers):
                    for tr in trainers:
                        tr.fit(X, y, epochs=1, batch_size=32, seed=0, verbose=False)

                many(_digits_mlps(k)), one_by_one(_digits_mlps(k))  # warm-up
                med = _interleaved_fits({"many": many, "seq": one_by_one}, k, rounds)
                rate = {name: k * len(X) / t for name, t in med.items()}
                r = rate["many"] / rate["seq"]
                noise = spread()
                jax_rate = None if args.tiny else _jax_many_rate(threads, k, rounds)
                if jax_rate:
                    rate["jax"] = jax_rate
                table.add(k, threads, fmt_rate(rate["many"], ""), fmt_rate(rate["seq"], ""),
                          fmt_ratio(r, 3.0), ">= 3x",
                          fmt_rate(jax_rate, "") if jax_rate else "-",
                          fmt_ratio(rate["many"] / jax_rate, 4.0) if jax_rate else "-",
                          fmt_rate(peak_gflops(threads) * 1e9 / flops, ""), noise)
                args.results.append({"section": "many", "models": k, "threads": threads,
                                     "model-samples/s": rate})
    yield table
    yield _search_table(args)


def _interleaved_fits(fns, k, rounds):
    """interleaved() for fits that consume their trainers: each sample
    gets k fresh digits MLPs, built before its timer starts."""
    samples = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            trainers = _digits_mlps(k)
            t0 = time.perf_counter()
            fn(trainers)
            samples[name].append(time.perf_counter() - t0)
    _SPREADS.append(max((max(v) - min(v)) / statistics.median(v) for v in samples.values())
                    if rounds > 1 else None)
    return {name: statistics.median(v) for name, v in samples.items()}


def _jax_many_rate(threads, k, rounds):
    """JAX's vmap-in-scan epoch of k digits MLPs (fastnn/bench/jax_many.py in
    a subprocess): the median model-samples/s, or None without jax."""
    import importlib.util
    import json as _json

    if importlib.util.find_spec("jax") is None or importlib.util.find_spec("optax") is None:
        return None
    proc = subprocess.run([sys.executable, "-m", "fastnn.bench.jax_many", "--threads",
                           str(threads), "--models", str(k), "--rounds", str(max(rounds, 3))],
                          capture_output=True, text=True, env=_worker_env(), timeout=600)
    if proc.returncode:
        print(f"jax_many failed: {proc.stderr[-500:]}", file=sys.stderr)
        return None
    return statistics.median(_json.loads(proc.stdout.strip().splitlines()[-1])["rates"])


def _search_table(args):
    import warnings

    from sklearn.datasets import load_digits as sk_digits
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import GridSearchCV, ParameterGrid
    from sklearn.neural_network import MLPClassifier as SkMLP

    from fastnn.sklearn import MLPClassifier, MLPSearchCV

    X, y = sk_digits(return_X_y=True)
    X = X / 16.0
    if args.tiny:
        grid, cv, iters = {"alpha": [1e-4, 1e-2]}, 2, 2
    elif args.quick:
        grid, cv, iters = {"hidden_layer_sizes": [(64,), (128,)], "alpha": [1e-4, 1e-2]}, 3, 5
    else:  # the search
        grid = {"hidden_layer_sizes": [(64,), (128,), (256, 128)],
                "alpha": [1e-5, 1e-4, 1e-3, 1e-2], "learning_rate_init": [1e-3, 3e-3]}
        cv, iters = 5, 30
    n_cand = len(ParameterGrid(grid))
    table = Table(
        f"MLPSearchCV on the digits: {n_cand} candidates x {cv} folds, max_iter={iters}: seconds",
        ["threads", "MLPSearchCV", "GridSearchCV(fastnn, n_jobs=2)",
         "GridSearchCV(sklearn, n_jobs=2)", "vs fastnn's", "vs sklearn's", "targets",
         "same best", "spread"],
        notes=["every search refits the best candidate on all the data (refit=True)",
               "targets: >= 3x GridSearchCV over fastnn's estimator, >= 10x over scikit-learn's "
               "(issue 12)"])
    best = {}

    def run(name, make):
        def fit():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                best[name] = make().fit(X, y).best_params_
        return fit

    for threads in args.threads:
        with Threads(threads):
            fns = {
                "ours": run("ours", lambda: MLPSearchCV(
                    MLPClassifier(max_iter=iters, random_state=0), grid, cv=cv)),
                "grid-fastnn": run("grid-fastnn", lambda: GridSearchCV(
                    MLPClassifier(max_iter=iters, random_state=0), grid, cv=cv, n_jobs=2)),
                "grid-sklearn": run("grid-sklearn", lambda: GridSearchCV(
                    SkMLP(max_iter=iters, random_state=0), grid, cv=cv, n_jobs=2)),
            }
            for fn in fns.values():
                fn()  # warm-up: joblib's workers, first compilations
            med = interleaved(fns, 1 if args.tiny else 2, 0)
            table.add(threads, f"{med['ours']:.2f}", f"{med['grid-fastnn']:.2f}",
                      f"{med['grid-sklearn']:.2f}",
                      fmt_ratio(med["grid-fastnn"] / med["ours"], 3.0),
                      fmt_ratio(med["grid-sklearn"] / med["ours"], 10.0), ">= 3x / >= 10x",
                      "yes" if best["ours"] == best["grid-fastnn"] else "NO", spread())
            args.results.append({"section": "many", "search": n_cand, "threads": threads,
                                 "seconds": med,
                                 "same_best": best["ours"] == best["grid-fastnn"]})
    return table


# ---- recurrent layers ------------------------------------------------------------

RNN_LENGTH, RNN_HIDDEN, RNN_BATCH = 40, 128, 100


def rnn_flops(kind, length=RNN_LENGTH, inputs=1, hidden=RNN_HIDDEN, classes=10):
    """FLOP per sample of one training step of `kind`(inputs -> hidden) over
    `length` steps + Dense(hidden -> classes): the gate products forward, their
    dW and the hidden state's dX (2 per multiply-add; no dX for the input)."""
    gates = {"rnn": 1, "gru": 3, "lstm": 4}[kind]
    per_step = gates * hidden * (inputs * 2 + hidden * 3)  # W_ih: fwd + dW; W_hh: fwd, dW, dh
    return 2.0 * (length * per_step + classes * hidden * 3)  # Dense: fwd, dW, dX


def section_rnn(args):
    """SimpleRNN / GRU / LSTM (1 -> 128) + Dense(128 -> 10) on random sequences
    of length 40, batch 100, Adam: fastnn's compiled epoch against torch eager
    nn.RNN / nn.GRU / nn.LSTM (in the torch worker), interleaved."""
    n = 400 if args.tiny else (1000 if args.quick else 2000)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(n, RNN_LENGTH, 1)).astype(np.float32)
    y = rng.integers(0, 10, n).astype(np.int64)
    tdata = torch_data(X=X, y=y)
    layer = {"rnn": fastnn.SimpleRNN, "gru": fastnn.GRU, "lstm": fastnn.LSTM}
    names = {"rnn": "SimpleRNN", "gru": "GRU", "lstm": "LSTM"}
    table = Table(
        f"Recurrent layers: (1 -> {RNN_HIDDEN}) + Dense({RNN_HIDDEN} -> 10), length "
        f"{RNN_LENGTH}, batch {RNN_BATCH}, {n:,} samples, Adam: samples/s",
        ["model", "threads", "fastnn-c", "fastnn-numba", "torch", "c/torch", "numba/c",
         "limit", "c of limit", "c loss", "spread"],
        notes=["fastnn: Trainer.fit wall time (one compiled epoch call, shuffle included); "
               "torch: eager nn.RNN/GRU/LSTM(batch_first=True) + nn.Linear on the last "
               "step's output, Adam(fused=True), slices of the same data, loss.item() per "
               "batch; " + TORCH_ALONE + " (GOMP_SPINCOUNT=1000 cost its GRU ~45% at 2 threads)",
               f"limit: the GEMM rate of that many threads ({limit_text()}) / the FLOP of one step "
               "per sample (gate products forward, their dW, the hidden state's dX; "
               "bench.compare.rnn_flops): the step's products are only "
               f"{RNN_BATCH} x {RNN_HIDDEN} x {RNN_HIDDEN}-sized, one after another",
               "c loss: fastnn c's loss on the training data before and after its timed "
               "epochs (random labels: near ln 10 = 2.30 both times)"])
    for n_threads in args.threads:
        with Threads(n_threads):
            for kind in ("rnn", "gru", "lstm"):
                trainers = {b: model_trainer(lambda: [layer[kind](1, RNN_HIDDEN),
                                                      fastnn.Dense(RNN_HIDDEN, 10)],
                                             b, (RNN_LENGTH, 1)) for b in _backends(args)}
                loss0 = trainers["c"].evaluate(X, y)["loss"]
                fns = {f"fastnn-{b}": _fit_fn(t, X, y, RNN_BATCH) for b, t in trainers.items()}
                job = torch_job("fit", n_threads, tdata, model=kind, hidden=RNN_HIDDEN,
                                batch=RNN_BATCH, seed=0)
                if job is not None:
                    fns["torch"] = job
                secs = interleaved(fns, args.train_rounds, 0.0)
                loss1 = trainers["c"].evaluate(X, y)["loss"]
                rate = {i: n / secs[i] for i in fns}
                c, nb, tt = rate.get("fastnn-c"), rate.get("fastnn-numba"), rate.get("torch")
                flops = rnn_flops(kind)
                table.add(names[kind], n_threads, fmt_rate(c, "samples/s"),
                          fmt_rate(nb, "samples/s"),
                          fmt_rate(tt, "samples/s") if tt else torch_status(),
                          fmt_ratio(ratio(c, tt)), fmt_ratio(ratio(nb, c)),
                          fmt_rate(_limit(flops, n_threads), "samples/s"),
                          f"{100 * c * flops / (peak_gflops(n_threads) * 1e9):.0f}%",
                          f"{loss0:.2f}->{loss1:.2f}", spread())
                args.results.append({"section": "rnn", "model": kind, "threads": n_threads,
                                     "samples/s": rate, "MFLOP/sample": flops / 1e6})
    return table


# ---- main ----------------------------------------------------------------------

def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m fastnn.bench.compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds, smaller data")
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts (default 1,2)")
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help=f"comma-separated subset of {','.join(SECTIONS)}")
    parser.add_argument("--markdown", action="store_true", help="print Markdown tables")
    parser.add_argument("--mnist", metavar="DIR", help="real MNIST IDX files for the training data")
    parser.add_argument("--json", metavar="FILE", help="also write the raw results as JSON")
    parser.add_argument("--rounds", type=int, metavar="N", dest="rounds_override",
                        help="interleaved rounds of every timed comparison, kernels and training alike "
                             "(default 7 for kernels, 3 for training epochs; --quick 3 and 2): more "
                             "rounds, steadier medians on a noisy host")
    parser.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # the CI test
    parser.add_argument("--rss-worker", help=argparse.SUPPRESS)
    parser.add_argument("--rss-samples", type=int, default=60_000, help=argparse.SUPPRESS)
    parser.add_argument("--rss-batch", type=int, default=128, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        args.threads = [int(t) for t in args.threads.split(",") if t.strip()]
    except ValueError:
        parser.error(f"--threads: expected integers like 1,2, got {args.threads!r}")
    if not args.threads or min(args.threads) < 1:
        parser.error("--threads: expected integers >= 1")
    args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = set(args.sections) - set(SECTIONS)
    if unknown:
        parser.error(f"--sections: unknown {', '.join(sorted(unknown))}; choose from {','.join(SECTIONS)}")
    args.quick = args.quick or args.tiny
    args.rounds = 1 if args.tiny else 3 if args.quick else 7
    args.train_rounds = 1 if args.tiny else 2 if args.quick else 3
    args.sklearn_rounds = 1 if args.quick else 2
    if args.rounds_override is not None:
        if args.rounds_override < 1:
            parser.error(f"--rounds: expected an integer >= 1, got {args.rounds_override}")
        args.rounds = args.train_rounds = args.sklearn_rounds = args.rounds_override
    args.target_s = 0.02 if args.quick else 0.05
    args.results = []
    return args


def _import_torch():
    global torch
    try:
        import torch as module
    except ImportError:
        return
    torch = module


def main(argv=None):
    args = parse_args(argv)
    if args.rss_worker == "torch" or (args.rss_worker is None
                                      and {"gemm", "adam"} & set(args.sections)):
        _import_torch()  # in-process torch: only these sections' (and the RSS worker's)
    if args.rss_worker:
        return rss_worker(args)
    if _version("torch") == "not installed":
        print("note: PyTorch is not installed; its columns are left out")
    header = machine_report(args)
    print("\n".join(("- " if args.markdown else "") + line for line in header), flush=True)
    started = time.perf_counter()
    try:
        for section in args.sections:
            tables = globals()[f"section_{section}"](args)
            for table in [tables] if isinstance(tables, Table) else tables:  # one, or a generator
                print("\n" + table.render(args.markdown), flush=True)
    finally:
        close_workers()
    print("\nspread: the widest (max - min) / median of the timed samples among a row's "
          "contenders; a large one means the machine was busy (medians resist it, ratios less so)")
    print(f"\nload average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; "
          f"took {time.perf_counter() - started:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": header, "results": args.results}, f, indent=1, default=float)
    return 0


if __name__ == "__main__":
    sys.exit(main())
