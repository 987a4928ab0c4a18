"""fastnn's benchmarks: the pytest-benchmark suite (``pytest bench/``) and the
side-by-side comparison with numpy, PyTorch and scikit-learn
(``python -m bench.compare``).

Nothing is imported here: ``bench.compare`` must be able to re-execute itself
before numpy is loaded (see its module docstring).
"""
