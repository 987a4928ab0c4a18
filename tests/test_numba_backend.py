"""Tests of the numba backend's own machinery, beyond the kernels' results
(tests/test_kernels.py checks those on every backend): the micro-kernel at
every vector width and numba's disk cache.  Each runs in a child process
with a cache directory of its own."""

import os
import shutil
import subprocess
import sys

import pytest

pytest.importorskip("numba")


def _run(script, tmp_path, **env):
    full_env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path), **env)
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=full_env, timeout=600)


_WIDTH_CHECK = """
import numpy as np
from fastnn import kernels
from fastnn.kernels.numba import _gemm
assert _gemm._W == {width}, _gemm._W
nb = kernels.get("numba")
rng = np.random.default_rng(0)
for m, n, k in [(1, 33, 9), (7, 5, 3), (13, 40, 300), (70, 129, 65), (250, 30, 20),
                (210, 100, 120)]:  # the last >= 2M multiply-adds: the threaded loops
    for ta in (False, True):
        for tb in (False, True):
            A = rng.uniform(-1, 1, (k, m) if ta else (m, k)).astype(np.float32)
            B = rng.uniform(-1, 1, (n, k) if tb else (k, n)).astype(np.float32)
            C = rng.uniform(-1, 1, (m, n)).astype(np.float32)
            want = -0.5 * ((A.T if ta else A).astype(np.float64) @ (B.T if tb else B)) + 1.5 * C
            nb.gemm(A, B, C, trans_a=ta, trans_b=tb, alpha=-0.5, beta=1.5)
            assert np.allclose(C, want, rtol=1e-4, atol=3e-6 * k), (m, n, k, ta, tb)
    X, W, b = (rng.uniform(-1, 1, s).astype(np.float32) for s in ((m, k), (k, n), n))
    Y = np.empty((m, n), np.float32)
    nb.dense_forward(Y, X, W, b, activation="relu")
    assert np.allclose(Y, np.maximum(X.astype(np.float64) @ W + b, 0), rtol=1e-4, atol=3e-6 * k)
# conv2d's direct path (one and two vectors of output channels, dX direct for 2W inputs)
R = kernels.get("reference")
kw = dict(stride=(1, 1), padding=(1, 1), activation="relu", negative_slope=0.1)
for c, oc in ((1, {width}), (2 * {width}, 2 * {width}), ({width}, 2 * {width})):
    X = rng.uniform(-1, 1, (2, 6, 5, c)).astype(np.float32)
    Wc = rng.uniform(-1, 1, (3, 3, c, oc)).astype(np.float32)
    bc = rng.uniform(-1, 1, oc).astype(np.float32)
    dY = rng.uniform(-1, 1, (2, 6, 5, oc)).astype(np.float32)
    Y, cols = np.empty((2, 6, 5, oc), np.float32), np.empty((60, 9 * c), np.float32)
    nb.conv2d_forward(Y, X, Wc, bc, cols, **kw)
    Yr, colsr = np.empty((2, 6, 5, oc)), np.empty((60, 9 * c))
    R.conv2d_forward(Yr, X.astype(np.float64), Wc.astype(np.float64), bc.astype(np.float64),
                     colsr, **kw)
    assert np.allclose(Y, Yr, rtol=1e-4, atol=1e-4), (c, oc)
    got = [np.empty_like(X), np.empty_like(Wc), np.empty_like(bc), np.empty_like(dY)]
    nb.conv2d_backward(*got, dY, X, Wc, Y, cols, **kw)
    want = [np.empty(a.shape) for a in got]
    R.conv2d_backward(*want, dY.astype(np.float64), X.astype(np.float64), Wc.astype(np.float64),
                      Y.astype(np.float64), colsr, **kw)
    for a, b_ in zip(got, want):
        assert np.allclose(a, b_, rtol=1e-4, atol=1e-4), (c, oc)
print("ok")
"""


@pytest.mark.slow  # a fresh process compiles the numba GEMM: ~1 min each
@pytest.mark.parametrize("width,env", [
    (8, {"NUMBA_CPU_NAME": "haswell",
         "NUMBA_CPU_FEATURES": "+avx,+avx2,+fma,+sse,+sse2,+sse3,+ssse3,+sse4.1,+sse4.2"}),
    (4, {"NUMBA_CPU_NAME": "generic"}),
])
def test_numba_gemm_every_vector_width(tmp_path, width, env):
    """The numba micro-kernel is vector IR sized by the CPU numba compiles for
    (16 floats with AVX-512, 8 with AVX, else 4); the host tests run one of
    them, so the others are compiled here for a narrower CPU, in a child
    process with its own cache, on ragged tiles, several panels of k, every
    transpose, alpha/beta and the bias + activation epilogue; and conv2d's
    direct tile kernels (also vector IR) against the reference."""
    run = _run(_WIDTH_CHECK.format(width=width), tmp_path, **env)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-3000:]


_CACHE_CHECK = """
import numpy as np
from fastnn.kernels import numba as nb
from fastnn.kernels.numba import _elementwise, _optimizers
p, g, m, v = (np.full(4, 0.5, np.float32) for _ in range(4))
nb.adam(p, g, m, v, 1, 1e-3, 0.9, 0.999, 1e-8, 0.0)
nb.activation_forward(p, g, 5, 0.01)
print(sum(_optimizers._adam.stats.cache_hits.values()),
      sum(_elementwise._activation_forward.stats.cache_hits.values()))
"""


@pytest.mark.slow  # two fresh processes, the first compiles: ~35 s
def test_numba_kernels_load_from_the_disk_cache(tmp_path):
    """A second process loads the compiled kernels from numba's disk cache
    instead of compiling them again (a jitted function taking another as an
    argument, for example, is never cached: see _optimizers)."""
    first, second = _run(_CACHE_CHECK, tmp_path), _run(_CACHE_CHECK, tmp_path)
    assert first.returncode == 0 and second.returncode == 0, first.stderr[-3000:]
    assert first.stdout.split() == ["0", "0"], first.stdout
    assert second.stdout.split() == ["1", "1"], second.stdout


def test_stale_numba_caches_are_dropped_when_a_source_changes(tmp_path):
    """numba keys a cache entry on its own file only; the backend drops every
    compiled kernel when any of its sources (or spec.py) changed."""
    from fastnn.kernels import numba as nb
    (tmp_path / "_a.py").write_text("x = 1\n")
    cache = tmp_path / "__pycache__"
    cache.mkdir()
    (cache / "_a.f-1.py311.nbi").write_text("old")
    nb._drop_stale_caches(str(tmp_path))  # no stamp yet: dropped, stamp written
    assert sorted(p.name for p in cache.iterdir()) == ["fastnn-sources.sha256"]
    (cache / "_a.f-1.py311.nbi").write_text("new")
    nb._drop_stale_caches(str(tmp_path))  # sources unchanged: kept
    assert (cache / "_a.f-1.py311.nbi").exists()
    (tmp_path / "_a.py").write_text("x = 2\n")
    nb._drop_stale_caches(str(tmp_path))  # a source changed: dropped
    assert not (cache / "_a.f-1.py311.nbi").exists()


def test_stale_caches_are_dropped_in_numba_cache_dir_too(tmp_path, monkeypatch):
    """With NUMBA_CACHE_DIR set numba caches the kernels there (in a folder
    named after their source folder), not in __pycache__: stale entries are
    dropped there as well."""
    import numba
    from fastnn.kernels import numba as nb
    src, user = tmp_path / "src", tmp_path / "user"
    src.mkdir()
    (src / "_a.py").write_text("x = 1\n")
    monkeypatch.setattr(numba.config, "CACHE_DIR", str(user))
    mine = [d for d in nb._cache_dirs(str(src)) if d.startswith(str(user))]
    assert len(mine) == 1 and os.path.basename(mine[0]).startswith("src_"), mine
    os.makedirs(mine[0])
    entry = os.path.join(mine[0], "_a.f-1.py311.nbi")
    nb._drop_stale_caches(str(src))  # stamps written
    open(entry, "w").close()
    nb._drop_stale_caches(str(src))  # sources unchanged: kept
    assert os.path.exists(entry)
    (src / "_a.py").write_text("x = 2\n")
    nb._drop_stale_caches(str(src))  # a source changed: dropped in NUMBA_CACHE_DIR too
    assert not os.path.exists(entry)


# A parallel callee and a serial caller, as fastnn's epoch kernels call the
# parallel per-call kernels (_epoch._dense_stack_epoch calls _gemm_ws, ...).
_PARFOR_MODULE = """
import numpy as np
from numba import njit, prange


@njit(cache=True, parallel=True)
def callee(a):
    for i in prange(a.shape[0]):
        a[i] += 1.0


@njit(cache=True)
def caller(a):
    callee(a)
    return a.sum()
"""


# Prints the reload functions of the caller's cache entry (CompileResult._reduce's
# reload_init, the payload's item 7) after the call.
_SHOW_RELOAD_INIT = """
import glob, os, pickle
entries = glob.glob(os.path.join(os.environ["NUMBA_CACHE_DIR"], "**", "pm.caller-*.nbc"),
                    recursive=True)
assert len(entries) == 1, entries
print(len(pickle.loads(open(entries[0], "rb").read())[7]))
"""


def _parfor_run(tmp_path, cache, call, with_fastnn):
    """Calls pm.<call> in a fresh process; returns the number of reload
    functions of the caller's cache entry after it (None for the callee)."""
    script = (f"import sys; sys.path.insert(0, {str(tmp_path / 'src')!r})\n"
              + ("import fastnn.kernels.numba\n" if with_fastnn else "")
              + f"import numpy as np, pm\nprint(pm.{call}(np.zeros(1000)))\n"
              + (_SHOW_RELOAD_INIT if call == "caller" else ""))
    r = _run(script, cache)
    assert r.returncode == 0, (call, with_fastnn, r.returncode, r.stderr[-3000:])
    out = r.stdout.split()
    assert out[0] == ("None" if call == "callee" else "1000.0"), r.stdout
    return int(out[1]) if call == "caller" else None


def test_a_caller_of_cached_parallel_kernels_is_cached_loadable(tmp_path):
    """numba 0.68 caches a caller compiled in a process whose parallel callees
    came from the cache without the reload hook that starts the threading
    layer; a later process whose first call is that caller loaded its code
    with every external symbol at 0 and segfaulted (it happened to
    _dense_stack_epoch during a test run).  With the numba backend imported,
    the caller's entry carries the hook (whoever loads it later), and an
    entry written without it loads safely."""
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "pm.py").write_text(_PARFOR_MODULE)
    written_by_fastnn, written_by_numba = tmp_path / "cache_a", tmp_path / "cache_b"
    _parfor_run(tmp_path, written_by_fastnn, "callee", with_fastnn=False)  # the callee cached alone
    shutil.copytree(written_by_fastnn, written_by_numba)
    # the caller compiled over the cached callee, in a process with fastnn's numba backend:
    assert _parfor_run(tmp_path, written_by_fastnn, "caller", with_fastnn=True) >= 1
    _parfor_run(tmp_path, written_by_fastnn, "caller", with_fastnn=False)  # loads in plain numba
    # the same entry written by plain numba (without the hook, as numba 0.68 does):
    _parfor_run(tmp_path, written_by_numba, "caller", with_fastnn=False)
    _parfor_run(tmp_path, written_by_numba, "caller", with_fastnn=True)  # loads with fastnn


@pytest.mark.parametrize("optimizer", ["adam", "sgd", "rmsprop"])
def test_numba_updates_flush_denormals_as_the_c_backend(optimizer):
    """The optimizer updates run with FTZ + DAZ on numba as on c (spec, IEEE
    semantics 5): a state decaying through the denormal range (a dead unit's
    Adam moments) is flushed where c flushes it, and the caller's MXCSR is left as it was
    (a denormal product outside the update stays denormal)."""
    import numpy as np
    from fastnn import kernels
    pytest.importorskip("fastnn.kernels.c")
    nb = kernels.get("numba")
    ck = kernels.get("c")
    rng = np.random.default_rng(0)
    n = 3 * (1 << 15) + 5  # several spans: the threaded update too
    tiny = np.float32(1e-39)  # a denormal
    p0 = rng.uniform(-1, 1, n).astype(np.float32)
    g0 = np.where(rng.uniform(size=n) < 0.5, 0.0, rng.uniform(-1, 1, n) * 1e-36).astype(np.float32)
    s0 = (rng.uniform(size=n) * tiny * 100).astype(np.float32)  # normal and denormal states
    runs = []
    for k in (nb, ck):
        p, g = p0.copy(), g0.copy()
        states = [s0.copy(), s0.copy(), s0.copy()]
        for step in (1, 2, 3):
            if optimizer == "adam":
                k.adam(p, g, states[0], states[1], step=step, lr=1e-3, beta1=0.9, beta2=0.999,
                       eps=1e-8)
            elif optimizer == "sgd":
                k.sgd(p, g, states[0], step=step, lr=0.1, momentum=0.9)
            else:
                k.rmsprop(p, g, states[0], states[1], states[2], lr=1e-3, alpha=0.99, eps=1e-8,
                          momentum=0.5, centered=True)
        runs.append((p, *states))
    tiny_normal = np.finfo(np.float32).tiny
    used = {"adam": 3, "sgd": 2, "rmsprop": 4}[optimizer]  # params and the states it has
    for got, want in list(zip(*runs))[:used]:
        for a in (got, want):  # FTZ: no result in the denormal range on either backend
            assert not np.any((a != 0) & (np.abs(a) < tiny_normal))
        # (the two compute different roundings of one formula: near FLT_MIN
        # one flushes an intermediate the other keeps)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=4 * tiny_normal)
    assert np.count_nonzero(runs[0][1]) < n  # the test reached the flushed range
    x = np.array([1e-30], np.float32)
    assert (x * np.float32(1e-10))[0] != 0.0  # still a denormal after the updates
