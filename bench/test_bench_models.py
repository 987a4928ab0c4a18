"""An untimed smoke run of the models section of ``python -m bench.compare``
(CNNs vs torch, the MLP vs JAX in its worker process, BatchNorm + Dropout,
MNIST-1D) at the tiny sizes of its hidden ``--tiny`` option, one thread, the c
backend only: it keeps the section and bench/jax_worker.py from rotting.
Skipped when jax or optax is not installed."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.skipif(any(importlib.util.find_spec(m) is None for m in ("jax", "optax")),
                    reason="jax and optax are not installed (pip install -e .[bench])")
def test_models_section_tiny(tmp_path):
    out_json = tmp_path / "models.json"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [ROOT] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])))
    proc = subprocess.run(
        [sys.executable, "-m", "fastnn.bench.compare", "--tiny", "--sections", "models",
         "--threads", "1", "--json", str(out_json)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    for title in ("Training CNNs", "vs JAX", "BatchNorm + Dropout", "MNIST-1D"):
        assert title in proc.stdout, (title, proc.stdout[-3000:])
    assert "did not learn" not in proc.stdout, proc.stdout
    results = [r for r in json.loads(out_json.read_text())["results"] if r["section"] == "models"]
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
