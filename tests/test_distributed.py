"""Data-parallel training over MPI (fastnn.distributed): 2 ranks launched
with the mpich wheel's mpiexec, checked against one process."""

import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

import fastnn

pytest.importorskip("mpi4py")

SCRIPT = os.path.join(os.path.dirname(__file__), "mpi_fit.py")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(fastnn.__file__)))


def _mpiexec():
    here = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    found = here if os.path.exists(here) else shutil.which("mpiexec")
    if found is None:
        pytest.skip("no mpiexec (pip install mpich)")
    return found


def launch(mode, out, n=2, extra=(), timeout=120, env=None):
    """Run tests/mpi_fit.py MODE on n ranks; (returncode, output, seconds)."""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1", **(env or {}))
    start = time.monotonic()
    proc = subprocess.run([_mpiexec(), *extra, "-n", str(n), sys.executable, SCRIPT, mode,
                           str(out)], capture_output=True, text=True, timeout=timeout, env=env)
    return proc.returncode, proc.stdout + proc.stderr, time.monotonic() - start


def load_script():
    import importlib.util

    spec = importlib.util.spec_from_file_location("mpi_fit", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("mpi")
    rc, text, _ = launch("equiv", out)
    assert rc == 0, text
    ranks = [np.load(out / f"rank{r}.npz") for r in range(2)]
    logs = [json.load(open(out / f"rank{r}.json")) for r in range(2)]
    return ranks, logs


def test_two_ranks_end_identical(two_ranks):
    (a, b), (la, lb) = two_ranks
    for name in a.files:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
        assert la[name] == lb[name], name  # the same History on every rank


def test_two_ranks_of_batch_b_equal_one_process_of_batch_2b(two_ranks):
    (a, _), (la, _) = two_ranks
    mod = load_script()
    for name, n, batch, opt, options, fit_options in mod.CONFIGS:
        tr = mod.make_trainer((8, 16, 3), opt, options, None)
        history = mod.fit(tr, n, 2 * batch, fit_options)
        np.testing.assert_allclose(a[name], tr.model.get_params(), rtol=2e-5, atol=2e-6,
                                   err_msg=name)
        for key in ("loss", "accuracy", "val_loss", "val_accuracy", "lr"):
            np.testing.assert_allclose(la[name][key], history.history[key], rtol=1e-5,
                                       err_msg=f"{name} {key}")
