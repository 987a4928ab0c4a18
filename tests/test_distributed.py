"""Data-parallel training over MPI (fastnn.distributed): 2 ranks launched
with the mpich wheel's mpiexec, checked against one process."""

import json
import os
import re
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
        if name in la:
            assert la[name] == lb[name], name  # the same History on every rank
    # BatchNorm's running statistics moved, and are the ranks' average
    assert np.abs(a["batchnorm:buffers"]).max() > 1e-3
    # a checkpoint written on rank 0 and resumed on both ranks continues
    # the uninterrupted trajectory, bit for bit
    np.testing.assert_array_equal(a["resume:resumed"], a["resume:whole"])


def test_two_ranks_of_batch_b_equal_one_process_of_batch_2b(two_ranks):
    (a, _), (la, _) = two_ranks
    mod = load_script()
    for name, n, batch, opt, options, fit_options in mod.CONFIGS:
        tr = mod.make_trainer((8, 16, 3), opt, options, None)
        history = mod.fit(tr, n, 2 * batch, fit_options)
        # the ranks ran the compiled epoch (all-reduce in its hook) where it exists
        assert la[name + ":fused"] == (options.get("fused") is not False), name
        np.testing.assert_allclose(a[name], tr.model.get_params(), rtol=2e-5, atol=2e-6,
                                   err_msg=name)
        for key in ("loss", "accuracy", "val_loss", "val_accuracy", "lr"):
            np.testing.assert_allclose(la[name][key], history.history[key], rtol=1e-5,
                                       err_msg=f"{name} {key}")


def test_a_rank_that_raises_stops_the_others_naming_it(tmp_path):
    rc, text, seconds = launch("raise", tmp_path)
    assert rc != 0
    assert "rank 1: RuntimeError: injected failure" in text
    assert "rank 0: RankError (1,): rank 1 of 2 failed (RuntimeError: injected failure, " \
           "at epoch 2)" in text, text
    assert seconds < 30


def test_a_killed_rank_ends_the_job_naming_a_process_of_it(tmp_path):
    # MPICH's mpiexec ends the whole job when a process dies (rank 1 kills
    # itself with SIGKILL after epoch 2) and reports a process of the job
    # by pid, with exit code 9.  Which one it names races with its own
    # cleanup, which SIGKILLs the others too: on a fast host it has named
    # rank 0, so the test asks for one of the job's pids (rank 0's fit said
    # at its start which pid each rank is) and that no rank finished.
    rc, text, seconds = launch("kill", tmp_path)
    assert rc != 0 and seconds < 30, text
    pids = re.search(r"fastnn.distributed: 2 ranks: rank 0 pid (\d+) on \S+, rank 1 pid (\d+)",
                     text)
    assert pids, text
    named = re.search(r"PID (\d+) RUNNING AT .*\n.*EXIT CODE: 9", text)
    assert named and named.group(1) in pids.groups(), text
    assert "finished" not in text and "epoch 3/50" not in text, text


def test_a_rank_that_stops_answering_is_named_after_the_timeout(tmp_path):
    rc, text, seconds = launch("hang", tmp_path, env={"FASTNN_TEST_TIMEOUT": "2"})
    assert rc != 0
    assert re.search(r"rank 0: RankError \(1,\): rank 1 \(pid \d+ on \S+\) did not answer for "
                     r"2 s during the gradient all-reduce of batch 1 at epoch 3", text), text
    assert seconds < 30


@pytest.mark.parametrize("mode, what", [
    ("rows", "rank 1 has the number of samples = 1999, rank 0 has 2000"),
    ("width", "rank 1 has the model's parameter count = 832, rank 0 has 784")])
def test_ranks_given_different_data_or_models_refuse_at_the_start(tmp_path, mode, what):
    rc, text, _ = launch(mode, tmp_path)
    assert rc != 0
    for r in range(2):
        assert f"rank {r}: MismatchError: distributed fit: {what}" in text, text
    assert "finished" not in text


@pytest.mark.slow  # ~10-20 s: scikit-learn, the digits and two launches
def test_fastnn_train_distributed_on_two_ranks(tmp_path):
    common = ["train", "--epochs", "2", "--layers", "32", "--seed", "2", "--threads", "1"]
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    proc = subprocess.run([_mpiexec(), "-n", "2", sys.executable, "-m", "fastnn.cli", *common,
                           "--distributed", "mpi", "--batch-size", "16",
                           "--save", str(tmp_path / "two.npz")],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("test accuracy:") == 1  # rank 0 alone prints
    assert proc.stdout.count("epoch 2/2") == 1
    from fastnn import cli

    assert cli.main(common + ["--batch-size", "32", "--quiet",
                              "--save", str(tmp_path / "one.npz")]) == 0
    two, one = np.load(tmp_path / "two.npz"), np.load(tmp_path / "one.npz")
    np.testing.assert_allclose(two["params"], one["params"], rtol=1e-4, atol=1e-5)


def test_mpi4py_loads_only_when_a_group_is_made():
    code = ("import sys, fastnn, fastnn.distributed\n"
            "m = fastnn.Sequential([fastnn.Dense(2, 2)])\n"
            "fastnn.Trainer(m, 'mse', 'sgd')\n"
            "print('mpi4py' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env=dict(os.environ, PYTHONPATH=ROOT))
    assert out.stdout.strip() == "False"


def test_bad_distributed_argument_is_refused():
    m = fastnn.Sequential([fastnn.Dense(2, 2)])
    with pytest.raises(ValueError, match="distributed: expected None, 'mpi'"):
        fastnn.Trainer(m, "mse", "sgd", distributed="nccl")
