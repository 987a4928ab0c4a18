"""An untimed smoke run of the `many` section of ``python -m bench.compare``
(fit_many vs one fit after another; MLPSearchCV vs GridSearchCV) at its
tiny sizes, one thread: it keeps the section from rotting."""

from bench._tiny import run_tiny


def test_many_section_tiny(tmp_path):
    stdout, rows = run_tiny("many", tmp_path)
    assert "Many models" in stdout and "MLPSearchCV on the digits" in stdout
    fits = [r for r in rows if "models" in r]
    assert fits and all(v > 0 for r in fits for v in r["model-samples/s"].values())
    searches = [r for r in rows if "search" in r]
    assert searches and all(r["same_best"] for r in searches), searches
