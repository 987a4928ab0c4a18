"""The torch worker of ``python -m bench.compare`` (fastnn/bench/torch_worker.py):
torch's results are checked where its data is, before it is timed -- a wrong
reference makes the set-up fail -- it runs at torch's default OpenMP policy,
and a TorchJob reports the worker's own timing.  Then an untimed smoke run of
the conv section at its --tiny size.  Skipped without torch."""

import importlib.util
import os

import numpy as np
import pytest

from bench._tiny import run_tiny
from fastnn.bench import compare
from fastnn.bench import workloads as wl

pytestmark = pytest.mark.skipif(importlib.util.find_spec("torch") is None,
                                reason="torch is not installed")


@pytest.fixture(scope="module")
def worker():
    assert compare.torch_status() is None, compare.torch_status()
    yield compare._TORCH["worker"]
    compare.close_workers()


def test_torch_worker_policy(worker):
    assert worker.info["ready"] and worker.info["GOMP_SPINCOUNT"] is None, worker.info


@pytest.mark.parametrize("with_dx", [True, False])
def test_torch_conv_job_checked(worker, with_dx):
    case = ("5x6x3->7", 4, 5, 6, 3, 7)
    X, W, b, dY = wl.conv_data(case)
    want = wl.conv_expected(case, (X, W, b, dY), with_dx)
    data = compare.torch_data(X=X, W=W, b=b, dY=dY, **want)
    job = compare.torch_job("conv", 1, data, with_dx=with_dx, padding=wl.CONV_PADDING)
    assert job.timed(3) > 0
    for key in want:  # each output is checked: one of them wrong fails the set-up
        wrong = dict(want, **{key: want[key] + np.float32(0.01) * np.abs(want[key]).max()})
        with pytest.raises(AssertionError, match=f"torch conv {key}"):
            compare.torch_job("conv", 1, compare.torch_data(X=X, W=W, b=b, dY=dY, **wrong),
                              with_dx=with_dx, padding=wl.CONV_PADDING)


def test_torch_mlp_job_loss_checked(worker):
    X, y = wl.synthetic_mnist(300, seed=0)
    data = compare.torch_data(X=X, y=y)
    job = compare.torch_mlp_job(1, X, y, data, batch_size=64)  # checks torch's loss vs fastnn's
    assert job.timed(1) > 0
    with pytest.raises(AssertionError, match="loss"):
        compare.torch_job("fit", 1, data, model="mlp", batch=64, check_loss=[256, 1.0],
                          weights=compare.dense_weights_file(
                              os.path.join(compare._torch_dir(), "w.npz"),
                              wl.make_mlp("reference", 0)))


def test_torch_worker_error_is_reported(worker):
    X, y = wl.synthetic_mnist(64, seed=0)
    with pytest.raises(RuntimeError, match="KeyError"):
        compare.torch_job("fit", 1, compare.torch_data(X=X, y=y), model="no such model",
                          batch=32)


def test_conv_section_tiny(tmp_path):
    stdout, rows = run_tiny("conv", tmp_path)
    assert "Conv2d 3x3" in stdout and "torch alone" in stdout, stdout[-3000:]
    assert len(rows) == len(wl.conv_runs()), rows
    assert all(r["seconds"]["torch"] > 0 and r["seconds"]["fastnn-c"] > 0 for r in rows), rows
