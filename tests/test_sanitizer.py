"""The C kernels under AddressSanitizer and UBSan.

tests/c/sanitize_kernels.c calls every function of csrc/fastnn.h on
exact-size heap buffers with odd shapes, on every SIMD path this CPU has and
with 1 and 2 threads; here it is compiled with the sanitizers and must run
clean.  (The extension itself is built without them.)
"""

import os
import shutil
import subprocess
import sysconfig

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CSRC = os.path.join(ROOT, "csrc")


@pytest.mark.slow  # builds the C kernels twice: ~2 min
@pytest.mark.sanitizer
def test_c_kernels_are_clean_under_asan_and_ubsan(tmp_path):
    cc = os.environ.get("CC") or sysconfig.get_config_var("CC").split()[0] or "cc"
    if shutil.which(cc) is None:
        pytest.fail(f"no C compiler {cc!r}: the package build needs one too")
    exe = tmp_path / "sanitize_kernels"
    sources = sorted(os.path.join(CSRC, f) for f in os.listdir(CSRC) if f.endswith(".c"))
    cmd = [cc, "-std=c11", "-O1", "-g", "-fopenmp", "-fno-omit-frame-pointer",
           "-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-I", CSRC,
           os.path.join(ROOT, "tests", "c", "sanitize_kernels.c"), *sources, "-lm", "-o", str(exe)]
    build = subprocess.run(cmd, capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=1:abort_on_error=0",
               UBSAN_OPTIONS="print_stacktrace=1")
    run = subprocess.run([str(exe)], capture_output=True, text=True, env=env, timeout=600)
    report = run.stdout + run.stderr
    assert run.returncode == 0, report
    assert "ERROR: AddressSanitizer" not in report and "runtime error" not in report, report
    assert "failures: 0" in run.stdout
