"""Does bench.compare's torch worker slow the fastnn contender timed next?
fastnn c's LeNet-like epoch (2,048 samples, batch 128) and its 14x14x32->64
conv step (batch 128, with dX), timed in a process with bench.compare's spin
policy (GOMP_SPINCOUNT=1000):

  alone       no torch worker alive (before it starts and after it quits)
  idle        the worker alive, its torch contender set up, not running
  after       each fastnn sample right after one of torch's (A B A B, as in
              bench.compare), the worker pausing SETTLE_S before its reply
  after-0     the same without the pause (settle 0)

the idle / after / after-0 samples interleaved round by round; medians and
(max - min) / median.

    python -m bench.torch_idle [--threads 2] [--rounds 7]
"""

import argparse
import os
import statistics
import time

os.environ.setdefault("GOMP_SPINCOUNT", "1000")  # as bench.compare sets it

import fastnn  # noqa: E402
from fastnn.bench import compare  # noqa: E402
from fastnn.bench import torch_worker  # noqa: E402
from fastnn.bench import workloads as wl  # noqa: E402


def _timed(fn, count):
    t0 = time.perf_counter()
    for _ in range(count):
        fn()
    return (time.perf_counter() - t0) / count


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.torch_idle")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=7)
    args = p.parse_args(argv)
    fastnn.set_num_threads(args.threads)
    X, y = wl.synthetic_mnist(2048, seed=0)
    X = X.reshape(-1, 28, 28, 1)
    lenet = compare._fit_fn(compare.model_trainer(compare.lenet_layers, "c", (28, 28, 1)),
                            X, y, 128)
    case = [c for c in wl.conv_cases() if c[0] == "14x14x32->64"][0]
    conv_data = wl.conv_data(case)
    conv = wl.conv_step(fastnn.kernels.get("c"), case, conv_data, True)[0]
    fastnn_fns = {"lenet epoch": (lenet, 1), "conv step": (conv, 10)}
    for fn, count in fastnn_fns.values():
        fn()  # warm-up
    samples = {(name, mode): [] for name in fastnn_fns
               for mode in ("alone", "idle", "after", "after-0")}

    def alone():
        for _ in range((args.rounds + 1) // 2):
            for name, (fn, count) in fastnn_fns.items():
                time.sleep(torch_worker.SETTLE_S)  # as long a pause as before the others
                samples[name, "alone"].append(_timed(fn, count))

    alone()
    assert compare.torch_status() is None, compare.torch_status()
    worker = compare._TORCH["worker"]
    Xw, Ww, bw, dYw = conv_data
    jobs = {"lenet epoch": compare.torch_job("fit", args.threads,
                                             compare.torch_data(X=X, y=y), name="lenet",
                                             model="lenet", batch=128),
            "conv step": compare.torch_job(
                "conv", args.threads, compare.torch_data(
                    X=Xw, W=Ww, b=bw, dY=dYw, **wl.conv_expected(case, conv_data, True)),
                name="conv", with_dx=True, padding=wl.CONV_PADDING)}
    for _ in range(args.rounds):
        for name, (fn, count) in fastnn_fns.items():
            time.sleep(torch_worker.SETTLE_S)
            samples[name, "idle"].append(_timed(fn, count))
            for mode, settle in (("after", torch_worker.SETTLE_S), ("after-0", 0.0)):
                worker("run", name=jobs[name].name, repeat=count, settle=settle)
                samples[name, mode].append(_timed(fn, count))
    compare.close_workers()
    alone()
    print(f"fastnn c, {args.threads} threads, ms per call: median (spread), load "
          + " ".join(f"{x:.2f}" for x in os.getloadavg()))
    for (name, mode), s in samples.items():
        med = statistics.median(s)
        print(f"  {name:12s} {mode:8s} {1e3 * med:8.2f} ({100 * (max(s) - min(s)) / med:.0f}%)"
              f"  n={len(s)}")


if __name__ == "__main__":
    main()
