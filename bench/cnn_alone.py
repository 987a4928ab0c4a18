"""Time one CNN contender alone in this process: fastnn c or PyTorch eager at its
default OpenMP policy (no GOMP_SPINCOUNT), for the LeNet-like epoch or the
14x14x32->64 conv step of bench.compare (same models, same data).

    python bench/cnn_alone.py --who torch --what lenet --threads 2 [--repeats 7]

Prints one line: who, what, threads, median and min/max (samples/s for lenet,
ms per step for conv).  Run it under the bench lock; alternate contenders in
separate processes (NOTES 46: bench.compare's shared spin policy handicaps torch).
"""

import argparse
import os
import statistics
import sys
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--who", choices=("torch", "c"), required=True)
    ap.add_argument("--what", choices=("lenet", "conv"), required=True)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--n", type=int, default=4096)
    args = ap.parse_args()
    if args.who == "torch":
        # torch_worker drops GOMP_SPINCOUNT before torch (and its libgomp, which reads
        # it once, when loaded) is imported: torch at its default OpenMP policy.  Its
        # jobs are bench.compare's torch contenders, called here in-process.
        from fastnn.bench import torch_worker as tw
        import torch
        torch.set_num_threads(args.threads)
    from fastnn.bench import compare as cmp
    from fastnn.bench import workloads as wl

    if args.who != "torch":
        import fastnn
        fastnn.set_num_threads(args.threads)
    if args.what == "lenet":
        n = args.n
        X, y = wl.synthetic_mnist(n, seed=0)
        X = X.reshape(n, 28, 28, 1)
        if args.who == "torch":
            run = tw.fit_job(torch, {"X": X, "y": y}, {"model": "lenet", "batch": 128, "seed": 0},
                             wl.assert_close)
        else:
            run = cmp._fit_fn(cmp.model_trainer(cmp.lenet_layers, "c", (28, 28, 1)), X, y, 128, 1)
        scale, unit = (lambda s: n / s), "samples/s"
    else:
        case = [c for c in wl.conv_cases() if c[0] == "14x14x32->64"][0]
        data = wl.conv_data(case)
        if args.who == "torch":
            want = wl.conv_expected(case, data, True)
            X, W, b, dY = data
            # checked against the reference's Y, dW, db, dX before any timing
            step = tw.conv_job(torch, dict(X=X, W=W, b=b, dY=dY, **want),
                               {"with_dx": True, "padding": wl.CONV_PADDING}, wl.assert_close)
        else:
            step = wl.conv_step(fastnn.kernels.get("c"), case, data, True)[0]
        reps = 10

        def run():
            for _ in range(reps):
                step()
        scale, unit = (lambda s: 1e3 * s / reps), "ms"
    run()
    vals, cpu = [], []
    for _ in range(args.repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        run()
        vals.append(scale(time.perf_counter() - t0))
        cpu.append(scale(time.process_time() - c0))
    med = statistics.median(vals)
    # per CPU-second of the process (all its threads): resists a busy machine
    print(f"{args.who} {args.what} threads={args.threads} median {med:.2f} {unit} "
          f"(min {min(vals):.2f} max {max(vals):.2f}, spread {(max(vals) - min(vals)) / med:.0%}), "
          f"by CPU time {statistics.median(cpu):.2f}; load {os.getloadavg()[0]:.2f}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
