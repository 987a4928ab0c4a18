"""cffi build script for fastnn._ckernels (run by setup.py at install time).

The cdef is the region of csrc/fastnn.h between the CDEF markers, so the C
header stays the one declaration of the API.  The build does not use
-march=native: the SIMD micro-kernels carry their own target attributes and
are chosen at load time from what the CPU reports.
"""

import os
import re

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join(os.path.dirname(HERE), "csrc")


def read_cdef(header=os.path.join(CSRC, "fastnn.h")):
    """The declarations between '/* CDEF BEGIN */' and '/* CDEF END */'."""
    with open(header) as f:
        text = f.read()
    match = re.search(r"/\* CDEF BEGIN \*/(.*?)/\* CDEF END \*/", text, re.S)
    if match is None:
        raise RuntimeError(f"{header}: no CDEF BEGIN/END region")
    return match.group(1)


HOOK_CDEF = 'extern "Python" int _fastnn_hook_trampoline(void *ctx, int event, int64_t batch);\n'


def c_sources(root="csrc"):
    return sorted(os.path.join(root, f) for f in os.listdir(CSRC) if f.endswith(".c"))


CFLAGS = ["-O3", "-std=c11", "-fopenmp", "-fno-math-errno", "-fno-trapping-math", "-Wall",
          "-Wextra", "-Wno-unused-parameter"]
LDFLAGS = ["-fopenmp"]
if os.environ.get("FASTNN_SANITIZE"):
    CFLAGS += ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-O1", "-g"]
    LDFLAGS += ["-fsanitize=address,undefined"]


def make_ffibuilder(root="csrc"):
    """The FFI for fastnn._ckernels; `root` is where the C sources are
    (relative for setuptools, absolute for the in-place rebuild, which
    compiles in a temporary folder)."""
    builder = FFI()
    # + the Python function C calls for an epoch hook (fastnn.kernels.c's
    # trampoline, @ffi.def_extern: no run-time generated callback code)
    builder.cdef(read_cdef() + HOOK_CDEF)
    builder.set_source("fastnn._ckernels", '#include "fastnn.h"', sources=c_sources(root),
                       include_dirs=[root], extra_compile_args=CFLAGS, extra_link_args=LDFLAGS)
    return builder


ffibuilder = make_ffibuilder()


def build_inplace():
    """Development rebuild: compile in a private temp dir, then atomically
    replace fastnn/_ckernels*.so (safe when several people rebuild at once)."""
    import glob
    import shutil
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        make_ffibuilder(CSRC).compile(verbose=False, tmpdir=tmp)
        built = glob.glob(os.path.join(tmp, "fastnn", "_ckernels*.so"))
        if len(built) != 1:
            raise RuntimeError(f"expected one built module, found {built}")
        target = os.path.join(HERE, os.path.basename(built[0]))
        staged = target + f".{os.getpid()}.tmp"
        shutil.copy2(built[0], staged)
        os.replace(staged, target)
        for old in glob.glob(os.path.join(HERE, "_ckernels*.so")):
            if old != target:  # e.g. the abi3 module of a pip install
                os.remove(old)
        print("built", target)


if __name__ == "__main__":
    # python fastnn/_build_ckernels.py  -> rebuild the extension in place.
    build_inplace()
