"""pytest-benchmark configuration for ``pytest bench/``.

``--bench-full`` adds the big cases (GEMM 2048, Adam over 16M parameters, a
full 60,000-sample training epoch); without it the suite is quick, and with
``--benchmark-disable`` (as CI runs it) every benchmark body runs exactly once.

Backends: ``c`` and ``numba`` always; ``cuda`` only on a real GPU (timing
numba's CUDA simulator would measure nothing useful).
"""

import os

import pytest

from fastnn.bench import workloads

BACKENDS = ("c", "numba", "cuda")


def pytest_addoption(parser):
    parser.addoption("--bench-full", action="store_true", default=False,
                     help="fastnn: run the big benchmark cases too (GEMM 2048, Adam 16M, "
                          "a full 60,000-sample epoch)")


def pytest_generate_tests(metafunc):
    full = metafunc.config.getoption("--bench-full")
    if "backend" in metafunc.fixturenames:
        metafunc.parametrize("backend", BACKENDS, indirect=True)
    if "gemm_case" in metafunc.fixturenames:
        cases = workloads.gemm_cases(full)
        metafunc.parametrize("gemm_case", cases, ids=[c[0] for c in cases])


def _cuda_skip_reason():
    if os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0"):
        return "cuda: NUMBA_ENABLE_CUDASIM is set; the simulator is not benchmarked"
    try:
        from numba import cuda
    except ImportError as exc:
        return f"cuda: numba.cuda not importable ({exc})"
    if not cuda.is_available():
        return "cuda: no GPU on this machine"
    return None


@pytest.fixture(scope="session")
def full(request):
    """True with --bench-full."""
    return request.config.getoption("--bench-full")


@pytest.fixture
def backend(request):
    """The backend module under test (skips backends this machine cannot run)."""
    import fastnn

    name = request.param
    if name == "cuda":
        reason = _cuda_skip_reason()
        if reason:
            pytest.skip(reason)
    try:
        return fastnn.kernels.get(name)
    except ImportError as exc:
        pytest.skip(f"{name}: not available ({exc})")
