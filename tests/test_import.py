"""`import fastnn` is light: no scikit-learn, numba or C extension until used."""

import subprocess
import sys


def _modules_after(code):
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys\nprint(' '.join(sorted("
                          "m for m in sys.modules if m.split('.')[0] in ('sklearn', 'numba', "
                          "'scipy', 'torch') or m == 'fastnn._ckernels')))"],
                         capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_import_fastnn_loads_no_heavy_dependency():
    assert _modules_after("import fastnn") == set()


def test_lazy_names_still_import():
    loaded = _modules_after("from fastnn import Perceptron, fit_many, Sequential")
    assert "sklearn" in loaded  # Perceptron's conventions are scikit-learn's
    assert "numba" not in loaded
