"""An untimed smoke run of the models section of ``python -m bench.compare``
(CNNs vs torch, the MLP vs JAX in its worker process, BatchNorm + Dropout,
MNIST-1D) at the tiny sizes of its hidden ``--tiny`` option, one thread, the c
backend only: it keeps the section and bench/jax_worker.py from rotting.
Skipped when jax or optax is not installed."""

import importlib.util

import pytest

from bench._tiny import run_tiny


@pytest.mark.skipif(any(importlib.util.find_spec(m) is None for m in ("jax", "optax")),
                    reason="jax and optax are not installed (pip install -e .[bench])")
def test_models_section_tiny(tmp_path):
    stdout, results = run_tiny("models", tmp_path, timeout=240)
    for title in ("Training CNNs", "vs JAX", "BatchNorm + Dropout", "MNIST-1D"):
        assert title in stdout, (title, stdout[-3000:])
    assert "did not learn" not in stdout, stdout
    by_model = {}
    for r in results:
        by_model.setdefault(r["model"], []).append(r)
    jax_rows = by_model["mlp-vs-jax"]
    assert jax_rows and all("jax_error" not in r for r in jax_rows), jax_rows
    assert all(r["samples/s"].get("jax", 0) > 0 and r["samples/s"]["fastnn-c"] > 0
               for r in jax_rows), jax_rows
    assert len(by_model.get("bn-dropout", [])) == 1
    cnn = [r for r in results if "MFLOP/sample" in r]
    assert len(cnn) == 2 and all(r["samples/s"]["fastnn-c"] > 0 for r in cnn), cnn
    if importlib.util.find_spec("mnist1d") is not None:
        assert by_model["mnist1d"][0]["test_accuracy"] > 0.1, by_model["mnist1d"]
