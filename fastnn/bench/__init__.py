"""The side-by-side benchmark suite, shipped with the package: ``fastnn
bench`` (fastnn/cli.py) runs ``python -m fastnn.bench.compare`` in a fresh
process and writes its figures as JSON; :mod:`fastnn.bench.regress`
compares two such files.  ``compare`` holds the sections, ``workloads`` the
data and models they share with the pytest-benchmark suite in a source
checkout's bench/ folder, ``jax_worker`` the JAX comparator's subprocess.

Nothing is imported here: ``compare`` must be able to re-execute itself
before numpy is loaded (see its module docstring), and ``import fastnn``
never imports this package.
"""
