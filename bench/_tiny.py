"""The bench smoke tests' one way of running ``python -m fastnn.bench.compare``
at its hidden ``--tiny`` size in a subprocess (this tree first on
PYTHONPATH), one thread."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_tiny(section, tmp_path, timeout=300):
    """(stdout, the section's result rows from --json) of one --tiny run;
    fails the test with the run's output when it exits non-zero."""
    out_json = tmp_path / f"{section}.json"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [ROOT] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])))
    proc = subprocess.run(
        [sys.executable, "-m", "fastnn.bench.compare", "--tiny", "--sections", section,
         "--threads", "1", "--json", str(out_json)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    rows = [r for r in json.loads(out_json.read_text())["results"] if r["section"] == section]
    return proc.stdout, rows
