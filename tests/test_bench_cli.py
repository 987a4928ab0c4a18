"""`fastnn bench`: a short run writes valid JSON; --compare finds a
regression of a fastnn figure and exits non-zero."""

import json
import os
import subprocess
import sys

import pytest

from fastnn import cli
from fastnn.bench import regress

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _results(c_rate, numpy_rate, train_rate, seconds):
    return {"machine": ["crafted"], "results": [
        {"section": "gemm", "case": "square", "threads": 1,
         "GFLOP/s": {"fastnn-c": c_rate, "numpy": numpy_rate}},
        {"section": "train", "batch": 128, "threads": 2, "samples/s": {"fastnn-c": train_rate}},
        {"section": "many", "search": 24, "threads": 2, "seconds": seconds, "same_best": True},
    ]}


def _write(tmp_path, name, data):
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return str(path)


def test_quick_run_of_one_section_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.run(
        [sys.executable, "-m", "fastnn.cli", "bench", "--quick", "--tiny", "--sections", "adam",
         "--threads", "1", "--json", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Adam step" in proc.stdout  # the table the README shows
    data = json.loads(out.read_text())
    entries = [e for e in data["results"] if e["section"] == "adam"]
    assert entries and all(e["threads"] == 1 for e in entries)
    rates = entries[0]["GB/s"]
    assert rates["fastnn-c"] > 0 and rates["fastnn-numba"] > 0
    assert {e["section"] for e in data["results"]} == {"adam"}
    assert isinstance(data["machine"], list) and data["machine"]


def test_compare_detects_a_regression(tmp_path, capsys):
    base = _write(tmp_path, "base.json", _results(100.0, 90.0, 50_000.0, 2.0))
    # fastnn-c gemm 15% slower; train 5% slower (within 10%); search time 30% longer
    worse = _write(tmp_path, "worse.json", _results(85.0, 90.0, 47_500.0, 2.6))
    rc = cli.main(["bench", "--compare", base, "--current", worse, "--fail-over", "10%"])
    out = capsys.readouterr().out
    assert rc == 1
    gemm = next(line for line in out.splitlines() if "GFLOP/s [fastnn-c]" in line)
    assert "-15.0%" in gemm and "REGRESSION" in gemm
    train = next(line for line in out.splitlines() if "samples/s [fastnn-c]" in line)
    assert "-5.0%" in train and "REGRESSION" not in train
    many = next(line for line in out.splitlines() if "seconds" in line)
    assert "+30.0%" in many and "REGRESSION" in many  # lower is better for times


def test_compare_within_threshold_and_comparator_only(tmp_path, capsys):
    base = _write(tmp_path, "base.json", _results(100.0, 90.0, 50_000.0, 2.0))
    # fastnn better everywhere; numpy 50% slower: printed, not a failure of fastnn
    better = _write(tmp_path, "better.json", _results(110.0, 45.0, 60_000.0, 1.5))
    assert cli.main(["bench", "--compare", base, "--current", better]) == 0
    out = capsys.readouterr().out
    numpy_line = next(line for line in out.splitlines() if "[numpy]" in line)
    assert "-50.0%" in numpy_line and "comparator" in numpy_line
    # a stricter threshold turns the 5% train drop into a failure
    slower = _write(tmp_path, "slower.json", _results(100.0, 90.0, 47_500.0, 2.0))
    assert cli.main(["bench", "--compare", base, "--current", slower, "--fail-over", "4"]) == 1
    assert cli.main(["bench", "--compare", base, "--current", slower, "--fail-over", "6%"]) == 0


def test_compare_missing_figures_are_reported_not_failed(tmp_path, capsys):
    base = _results(100.0, 90.0, 50_000.0, 2.0)
    cur = {"machine": [], "results": base["results"][:1]}
    rc = cli.main(["bench", "--compare", _write(tmp_path, "b.json", base),
                   "--current", _write(tmp_path, "c.json", cur)])
    assert rc == 0
    assert "missing now" in capsys.readouterr().out


def test_compare_bad_inputs(tmp_path):
    good = _write(tmp_path, "good.json", _results(1.0, 1.0, 1.0, 1.0))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(SystemExit, match="not a readable"):
        cli.main(["bench", "--compare", str(bad), "--current", good])
    with pytest.raises(SystemExit, match="results"):
        cli.main(["bench", "--compare", _write(tmp_path, "x.json", {"a": 1}), "--current", good])
    with pytest.raises(SystemExit, match="fail-over"):
        cli.main(["bench", "--compare", good, "--current", good, "--fail-over", "ten"])
    with pytest.raises(SystemExit, match="--current needs"):
        cli.main(["bench", "--current", good])
    assert regress.parse_threshold("12.5%") == pytest.approx(0.125)
