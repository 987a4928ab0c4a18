"""A/B of two builds of fastnn's C kernels in ONE process (ctypes), alternating
calls, so both see the same machine: the 14x14x32->64 conv step (forward +
backward with dX, batch 128, ReLU) of each build's _ckernels .so.

    python bench/conv_ab.py /work/main /work/wt/<tree> --threads 1 [--rounds 60]

Prints, per build, the median and the 25th percentile of the step (ms) by
wall time and the ratio of medians.  Copies the .so files to a temporary
folder first (two ABI-identical extension files may not load twice from one
path).  Run under the bench lock.
"""

import argparse
import ctypes as C
import glob
import os
import shutil
import statistics
import tempfile
import time

import numpy as np

RELU = 5  # FASTNN_ACT_RELU (csrc/fastnn.h)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("trees", nargs=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=60)
    ap.add_argument("--part", choices=("step", "backward"), default="step")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp()
    libs = []
    for i, tree in enumerate(args.trees):
        src = glob.glob(os.path.join(tree, "fastnn", "_ckernels*.so"))[0]
        dst = os.path.join(tmp, f"k{i}.so")
        shutil.copy(src, dst)
        lib = C.CDLL(dst)
        lib.fastnn_set_num_threads(args.threads)
        libs.append(lib)
    n, h, w, c, oc = 128, 14, 14, 32, 64
    rng = np.random.default_rng(0)
    X = rng.random((n, h, w, c), dtype=np.float32)
    W = rng.standard_normal((3, 3, c, oc), dtype=np.float32) * np.float32((9 * c) ** -0.5)
    b = rng.standard_normal(oc, dtype=np.float32) * np.float32(0.1)
    dY = rng.standard_normal((n, h, w, oc), dtype=np.float32)
    bufs = []
    for _ in libs:
        bufs.append(dict(Y=np.empty((n, h, w, oc), np.float32),
                         cols=np.empty((n * h * w, 9 * c), np.float32),
                         dX=np.empty_like(X), dW=np.empty_like(W), db=np.empty_like(b),
                         dZ=np.empty((n, h, w, oc), np.float32)))
    p = lambda a: C.c_void_p(a.ctypes.data)
    I = C.c_int64
    geo = [I(v) for v in (n, h, w, c, oc, 3, 3, 1, 1, 1, 1)]

    def fwd(lib, B):
        return lib.fastnn_conv2d_forward(p(B["Y"]), p(B["cols"]), p(X), p(W), p(b), *geo,
                                         C.c_int(RELU), C.c_float(0.0))

    def bwd(lib, B):
        return lib.fastnn_conv2d_backward(p(B["dX"]), p(B["dW"]), p(B["db"]), p(B["dZ"]),
                                          p(B["cols"]), p(dY), p(W), p(B["Y"]), *geo,
                                          C.c_int(RELU), C.c_float(0.0))

    for lib, B in zip(libs, bufs):
        assert fwd(lib, B) == 0 and bwd(lib, B) == 0
    for name in ("Y", "dX", "dW", "db"):
        same = np.array_equal(bufs[0][name].view(np.uint32), bufs[1][name].view(np.uint32))
        print(f"{name} bit-identical between the builds: {same}")
    times = [[], []]
    for _ in range(args.rounds):
        for i, (lib, B) in enumerate(zip(libs, bufs)):
            if args.part == "backward":
                fwd(lib, B)
            t0 = time.perf_counter()
            if args.part == "step":
                fwd(lib, B)
            bwd(lib, B)
            times[i].append(1e3 * (time.perf_counter() - t0))
    meds = [statistics.median(t) for t in times]
    for tree, t, m in zip(args.trees, times, meds):
        q = statistics.quantiles(t, n=4)[0]
        print(f"{tree}: {args.part} median {m:.2f} ms, p25 {q:.2f}, min {min(t):.2f}")
    print(f"threads {args.threads}: second / first = {meds[1] / meds[0]:.3f} (time); "
          f"load {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
