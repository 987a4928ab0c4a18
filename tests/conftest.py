"""Test configuration.

Without a GPU the cuda backend runs under numba's CUDA simulator, which must be
switched on before numba is first imported; with a GPU, the same tests run on
the device.
"""

import glob
import os
import shutil

if not (glob.glob("/dev/nvidia[0-9]*") or shutil.which("nvidia-smi")):
    os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from fastnn import kernels  # noqa: E402

CPU_BACKENDS = ("c", "numba")
FAST_BACKENDS = CPU_BACKENDS + ("cuda",)
if os.environ.get("FASTNN_TEST_BACKENDS"):
    # e.g. FASTNN_TEST_BACKENDS=reference checks the tests against the oracle itself
    FAST_BACKENDS = tuple(os.environ["FASTNN_TEST_BACKENDS"].split(","))
    CPU_BACKENDS = tuple(b for b in FAST_BACKENDS if b != "cuda")


@pytest.fixture(autouse=True, scope="session")
def _c_parallel_paths():
    """The c kernels' parallel paths at their own thresholds all session.  By
    default a small kernel stays on one thread when the OpenMP team has
    probably slept since its last region (fastnn_set_cold_factor, 16), which
    would run the tests' small shapes serially on any thread count and make
    the thread-count checks compare a serial run with itself.
    tests/test_threads.py checks the default factor's results apart."""
    if not kernels.available("c"):
        yield
        return
    c = kernels.get("c")
    before = c.set_cold_factor(1)
    yield
    c.set_cold_factor(before)


def require(name):
    """The backend module; c and numba must work here, cuda may be absent."""
    if name == "cuda" and not kernels.available("cuda"):
        pytest.skip("cuda backend unavailable (no GPU and no simulator)")
    return kernels.get(name)


@pytest.fixture(params=FAST_BACKENDS)
def backend(request):
    """Every non-reference backend, in turn."""
    return require(request.param)


@pytest.fixture(params=CPU_BACKENDS)
def cpu_backend(request):
    return require(request.param)


@pytest.fixture
def ref():
    return kernels.get("reference")


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def pytest_collection_modifyitems(config, items):
    """Under the CUDA simulator (no GPU: every kernel thread is a Python
    thread) a cuda case costs 10-100x its CPU twin, ~40% of the default
    run.  The default run keeps the first cuda case of each test function;
    the other cuda cases are marked slow (`pytest -m slow`, which CI runs
    too).  On a GPU every case stays in the default run."""
    if os.environ.get("NUMBA_ENABLE_CUDASIM") != "1":
        return
    seen = set()
    for item in items:
        spec = getattr(item, "callspec", None)
        if spec is None or "cuda" not in spec.id.split("-") or item.get_closest_marker("slow"):
            continue
        key = (item.path, getattr(item, "originalname", item.name))
        if key in seen:
            item.add_marker(pytest.mark.slow)
        else:
            seen.add(key)
