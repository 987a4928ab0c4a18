"""An untimed smoke run of the `many` section of ``python -m bench.compare``
(fit_many vs one fit after another; MLPSearchCV vs GridSearchCV) at its
tiny sizes, one thread: it keeps the section from rotting."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_many_section_tiny(tmp_path):
    out_json = tmp_path / "many.json"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [ROOT] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])))
    proc = subprocess.run(
        [sys.executable, "-m", "fastnn.bench.compare", "--tiny", "--sections", "many", "--threads", "1",
         "--json", str(out_json)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "Many models" in proc.stdout and "MLPSearchCV on the digits" in proc.stdout
    rows = [r for r in json.loads(out_json.read_text())["results"] if r["section"] == "many"]
    fits = [r for r in rows if "models" in r]
    assert fits and all(v > 0 for r in fits for v in r["model-samples/s"].values())
    searches = [r for r in rows if "search" in r]
    assert searches and all(r["same_best"] for r in searches), searches
