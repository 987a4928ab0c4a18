"""fastnn's benchmarks: the pytest-benchmark suite (``pytest bench/``) and the
side-by-side comparison with numpy, PyTorch and scikit-learn
(``fastnn bench``, i.e. ``python -m fastnn.bench.compare``; the sections
and the workloads live in the package, fastnn/bench/, and the tests here
import them from there; ``python -m bench.compare`` still runs it).

Nothing is imported here: the comparison must be able to re-execute itself
before numpy is loaded (see its module docstring).
"""
