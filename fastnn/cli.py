"""The ``fastnn`` command: train a network from the shell.

``fastnn train`` trains an MLP on scikit-learn's bundled 8x8 digits by
default and prints per-epoch loss, validation accuracy and samples/s, then
the test accuracy, precision/recall/F1 and the confusion matrix.
"""

import argparse
import os
import sys

import numpy as np

from . import kernels
from .kernels import spec


def _hidden_sizes(text):
    try:
        sizes = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if any(s < 1 for s in sizes):
        raise argparse.ArgumentTypeError("layer sizes must be >= 1")
    return sizes


def _number(kind, low=None, high=None, low_open=False, high_open=False):
    """An argparse type: a finite int/float within the bounds (the error
    names the option: argparse adds it)."""
    def parse(text):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, "
                                             f"got {text!r}") from None
        if kind is float and not np.isfinite(v):
            raise argparse.ArgumentTypeError(f"must be finite, got {text!r}")
        if (low is not None and (v < low or (low_open and v == low))) \
                or (high is not None and (v > high or (high_open and v == high))):
            lo = "" if low is None else f"{'(' if low_open else '['}{low}, "
            hi = "inf)" if high is None else f"{high}{')' if high_open else ']'}"
            raise argparse.ArgumentTypeError(f"must lie in {lo or '(-inf, '}{hi}, got {text}")
        return v
    parse.__name__ = kind.__name__  # argparse's "invalid <name> value"
    return parse


class UsageError(Exception):
    """A command-line error: printed as one line naming the option, exit 2."""

    def __init__(self, option, message):
        super().__init__(f"{option}: {message}")


def build_parser():
    parser = argparse.ArgumentParser(
        prog="fastnn", description="Train small neural networks fast on the CPU (or a GPU).")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser(
        "train", help="train a classifier and report test metrics",
        description="Train an MLP classifier (default: on the bundled 8x8 digits) and report "
                    "per-epoch loss, validation accuracy and throughput, then test accuracy, "
                    "precision/recall/F1 and the confusion matrix.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    train.add_argument("--dataset", choices=("digits", "mnist", "csv"), default="digits",
                       help="digits: scikit-learn's bundled 8x8 digits; mnist: IDX files in "
                            "--data-path; csv: a CSV file (--data-path) whose last column is "
                            "the class label")
    train.add_argument("--data-path", help="folder with the MNIST IDX files, or the CSV file")
    train.add_argument("--model", choices=("mlp", "cnn"), default="mlp",
                       help="mlp: dense layers (--layers); cnn: a small convolutional network "
                            "(conv-batchnorm-conv-pool-dense) for the image datasets")
    train.add_argument("--layers", type=_hidden_sizes, default=[256],
                       help="hidden layer sizes of the mlp, comma-separated (e.g. 256,128)")
    train.add_argument("--activation", default="relu",
                       # step and sign have derivative 0: nothing to train with
                       choices=[a for a in spec.ACTIVATIONS if a not in ("step", "sign")],
                       help="activation of the hidden layers")
    train.add_argument("--optimizer", default="adam",
                       choices=tuple(spec.OPTIMIZERS),
                       help="optimizer (torch.optim's defaults apart from --lr)")
    train.add_argument("--lr", type=_number(float, 0.0, low_open=True), default=1e-3, help="learning rate")
    train.add_argument("--momentum", type=_number(float, 0.0), default=0.9, help="momentum (sgd only)")
    train.add_argument("--weight-decay", type=_number(float, 0.0), default=0.0, help="L2 weight decay")
    train.add_argument("--epochs", type=_number(int, 1, 2 ** 62), default=40, help="passes over the training set")
    train.add_argument("--schedule", choices=("none", "cosine", "step", "plateau"), default=None,
                       help="learning-rate schedule over the epochs (default: cosine for the "
                            "cnn, none for the mlp); step halves it every epochs/4")
    train.add_argument("--batch-size", type=_number(int, 1, 2 ** 62), default=32, help="mini-batch size")
    train.add_argument("--test-size", type=_number(float, 0.0, 1.0, True, True), default=0.25,
                       help="fraction held out for the test (digits and csv)")
    train.add_argument("--val-size", type=_number(float, 0.0, 1.0, high_open=True), default=0.1,
                       help="fraction of the training set used for per-epoch validation")
    train.add_argument("--backend", choices=kernels.BACKENDS, default=None,
                       help="kernel backend (default: c if built, else numba)")
    train.add_argument("--threads", type=_number(int, 1, 2 ** 31, high_open=True), default=None, help="threads for the C/Numba kernels")
    train.add_argument("--seed", type=int, default=0, help="seed for the split, init and shuffling")
    train.add_argument("--save", metavar="PATH", help="save the trained model (.npz) here")
    train.add_argument("--quiet", action="store_true", help="print only the final report")
    train.add_argument("--distributed", choices=("mpi",), default=None,
                       help="data-parallel over MPI: run as `mpiexec -n N fastnn train "
                            "--distributed mpi ...` (--batch-size is per rank; rank 0 prints "
                            "and saves; needs the mpi extra)")
    train.add_argument("--verbose", type=int, choices=(0, 1, 2), default=None,
                       help="per-epoch progress as Keras's: 0 none, 1 a bar per epoch, 2 a "
                            "line per epoch (default: 1 on a terminal, else 2; 0 with --quiet)")
    train.add_argument("--plot", metavar="DIR",
                       help="write loss.png, confusion.png and roc.png (test set) into DIR "
                            "(needs matplotlib: pip install fastnn[plot])")
    _add_bench_parser(sub)
    return parser


def _add_bench_parser(sub):
    """`fastnn bench`: the side-by-side benchmark (fastnn/bench/compare.py)."""
    bench = sub.add_parser(
        "bench", help="benchmark fastnn side by side with numpy/PyTorch/scikit-learn/JAX",
        description="Run the side-by-side benchmark (fastnn against numpy/OpenBLAS always, "
                    "PyTorch, scikit-learn and JAX when installed, otherwise left out with a "
                    "note), print its tables, optionally write the figures as JSON and "
                    "compare them with a baseline JSON file.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    bench.add_argument("--quick", action="store_true", help="fewer rounds, smaller data")
    bench.add_argument("--sections", default=None,
                       help="comma-separated subset of gemm,adam,conv,train,sklearn,models,many,rnn "
                            "(default: all)")
    bench.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    bench.add_argument("--markdown", action="store_true", help="print Markdown tables")
    bench.add_argument("--json", metavar="FILE", help="write the figures here as JSON")
    bench.add_argument("--compare", metavar="BASELINE", help="a JSON file of an earlier run: "
                       "print each figure's change and exit 1 past --fail-over")
    bench.add_argument("--current", metavar="FILE", help="with --compare: compare this JSON "
                       "file of a run instead of running the benchmark")
    bench.add_argument("--fail-over", default="10%",
                       help="the worsening of a fastnn figure that fails --compare")
    bench.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # the tests


def bench(args):
    """Run fastnn.bench.compare in a fresh interpreter (it sets the BLAS and
    OpenMP environment before numpy loads), then compare with --compare."""
    import subprocess
    import tempfile

    from .bench import regress

    threshold = baseline = None
    if args.compare:
        try:
            threshold = regress.parse_threshold(args.fail_over)
            baseline = regress.load(args.compare)
        except ValueError as exc:
            raise SystemExit(f"fastnn bench: {exc}") from None
    elif args.current:
        raise SystemExit("fastnn bench: --current needs --compare BASELINE")
    if args.current:
        try:
            current = regress.load(args.current)
        except ValueError as exc:
            raise SystemExit(f"fastnn bench: {exc}") from None
        return _report_change(args, regress, baseline, current, threshold)
    argv = [sys.executable, "-m", "fastnn.bench.compare", "--threads", args.threads]
    argv += ["--quick"] * args.quick + ["--markdown"] * args.markdown + ["--tiny"] * args.tiny
    if args.sections:
        argv += ["--sections", args.sections]
    with tempfile.TemporaryDirectory() as tmp:
        out = args.json or (os.path.join(tmp, "bench.json") if args.compare else None)
        if out:
            argv += ["--json", out]
        rc = subprocess.call(argv)
        if rc or not args.compare:
            return rc
        try:
            current = regress.load(out)
        except ValueError as exc:
            raise SystemExit(f"fastnn bench: {exc}") from None
    return _report_change(args, regress, baseline, current, threshold)


def _report_change(args, regress, baseline, current, threshold):
    rows, regressed = regress.compare(baseline, current, threshold)
    print("\n" + regress.render(rows, threshold))
    if regressed:
        print(f"fastnn bench: a fastnn figure is more than {args.fail_over} worse than "
              f"{args.compare}", file=sys.stderr)
        return 1
    return 0


def small_cnn(input_shape, n_classes, activation="relu"):
    """conv3x3(16)-batchnorm-conv3x3(32)-maxpool2 (twice more on large
    images: conv3x3(64)-maxpool2), then dense(64) and the logits."""
    import fastnn

    h, w, c = input_shape
    layers = [fastnn.Conv2D(c, 16, 3, padding=1, activation=activation), fastnn.BatchNorm(16),
              fastnn.Conv2D(16, 32, 3, padding=1, activation=activation), fastnn.MaxPool2D(2)]
    h, w, ch = h // 2, w // 2, 32
    if min(h, w) >= 8:
        layers += [fastnn.Conv2D(32, 64, 3, padding=1, activation=activation), fastnn.MaxPool2D(2)]
        h, w, ch = h // 2, w // 2, 64
    return layers + [fastnn.Flatten(), fastnn.Dense(h * w * ch, 64, activation),
                     fastnn.Dense(64, n_classes)]


def _load(args):
    from . import datasets

    if args.dataset == "mnist":
        if not args.data_path:
            raise UsageError("--data-path", "--dataset mnist needs the folder of IDX files")
        try:
            Xtr, ytr = datasets.load_mnist(args.data_path, kind="train")
            Xte, yte = datasets.load_mnist(args.data_path, kind="t10k")
        except (OSError, ValueError) as exc:
            raise UsageError("--data-path", f"cannot read MNIST: {exc}") from None
        for X in (Xtr, Xte):
            _check_data(args, X)
        return Xtr, Xte, ytr, yte
    if args.dataset == "csv":
        if not args.data_path:
            raise UsageError("--data-path", "--dataset csv needs the CSV file")
        try:
            X, y = datasets.load_csv(args.data_path)
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            raise UsageError("--data-path", f"cannot read the CSV file: {exc}") from None
        if y is None or y.ndim != 1:
            raise UsageError("--data-path", "the CSV file needs a label column (the last)")
    else:
        X, y = datasets.load_digits()
    _check_data(args, X)
    from sklearn.model_selection import train_test_split

    try:
        return train_test_split(X, y, test_size=args.test_size, random_state=args.seed,
                                stratify=y)
    except ValueError as exc:  # too few samples or a class with a single one
        raise UsageError("--test-size", f"cannot split {len(X)} samples "
                         f"({args.data_path or args.dataset}): {exc}") from None


def _check_data(args, X):
    where = args.data_path or args.dataset
    if X.ndim != 2 or X.shape[0] < 2 or X.shape[1] < 1:
        raise UsageError("--data-path", f"{where}: expected at least 2 samples with a feature, "
                         f"got shape {X.shape}")
    if not np.all(np.isfinite(X)):
        raise UsageError("--data-path", f"{where}: the features hold NaN or Inf")


def _check_save(path):
    """--save is checked before training: a folder that exists and can be
    written, and not a folder itself."""
    if path is None:
        return
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise UsageError("--save", f"{path} is a folder; give a file name")
    if not os.path.isdir(folder):
        raise UsageError("--save", f"folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError("--save", f"folder {folder} is not writable")


def train(args):
    import fastnn
    from fastnn import metrics, optim, schedules

    _check_save(args.save)
    if args.threads is not None:
        fastnn.set_num_threads(args.threads)
    if args.backend is not None:  # (the model's own backend: the process default is left alone)
        try:
            fastnn.kernels.get(args.backend)
        except ImportError as exc:
            raise UsageError("--backend", f"{args.backend} cannot be used here: "
                             f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    if args.model == "cnn" and args.dataset not in ("digits", "mnist"):
        raise UsageError("--model", "cnn needs an image dataset (--dataset digits or mnist)")
    Xtr, Xte, ytr, yte = _load(args)
    classes, ytr_idx = np.unique(ytr, return_inverse=True)
    lookup = {c: i for i, c in enumerate(classes.tolist())}
    unknown = set(np.unique(yte).tolist()) - set(lookup)
    if unknown:
        raise UsageError("--test-size", f"the test set has classes not seen in training: "
                         f"{sorted(unknown)}")
    yte_idx = np.array([lookup[c] for c in yte.tolist()])

    if args.model == "cnn":
        side = {"digits": 8, "mnist": 28}[args.dataset]
        Xtr, Xte = (X.reshape(-1, side, side, 1) for X in (Xtr, Xte))
        model = fastnn.Sequential(small_cnn((side, side, 1), len(classes), args.activation),
                                  seed=args.seed, input_shape=(side, side, 1),
                                  backend=args.backend)
        shape_text = f"cnn on {side}x{side}x1"
    else:
        sizes = [Xtr.shape[1]] + args.layers
        layers = [fastnn.Dense(a, b, args.activation) for a, b in zip(sizes, sizes[1:])]
        layers.append(fastnn.Dense(sizes[-1], len(classes)))
        model = fastnn.Sequential(layers, seed=args.seed, backend=args.backend)
        shape_text = "-".join(map(str, sizes + [len(classes)]))
    extra = {"momentum": args.momentum} if args.optimizer == "sgd" else {}
    opt = optim.get(args.optimizer, lr=args.lr, weight_decay=args.weight_decay, **extra)
    trainer = fastnn.Trainer(model, "softmax_cross_entropy", opt, distributed=args.distributed)
    if trainer.distributed is not None and trainer.distributed.rank != 0:
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - rank 0 alone prints (and saves)
    info = fastnn.kernels.get(model.backend).info()
    if not args.quiet:
        print(f"fastnn {fastnn.__version__}: {args.dataset}, {len(Xtr)} train / {len(Xte)} test, "
              f"{len(classes)} classes; model {shape_text} "
              f"({model.n_parameters} parameters); {opt!r}; backend {info}")
    schedule = args.schedule or ("cosine" if args.model == "cnn" else "none")
    callbacks = {"none": [], "cosine": [schedules.CosineAnnealingLR(max(args.epochs, 1))],
                 "step": [schedules.StepLR(max(args.epochs // 4, 1), gamma=0.5)],
                 "plateau": [schedules.ReduceLROnPlateau(patience=3)]}[schedule]
    try:
        verbose = (0 if args.quiet else "auto") if args.verbose is None else args.verbose
        history = trainer.fit(Xtr, ytr_idx, epochs=args.epochs, batch_size=args.batch_size,
                              validation_split=args.val_size, seed=args.seed, verbose=verbose,
                              callbacks=callbacks)
    except ValueError as exc:  # checked by fit before anything trains
        text = str(exc)
        option = ("--val-size" if "validation_split" in text else
                  "--batch-size" if "batch_size" in text else None)
        if option is None:
            raise
        raise UsageError(option, text) from None

    pred = trainer.predict(Xte).argmax(axis=1)
    print(f"test accuracy: {metrics.accuracy(yte_idx, pred):.4f}")
    for avg in ("macro", "weighted"):
        print(f"{avg:>8}: precision {metrics.precision(yte_idx, pred, average=avg):.4f}  "
              f"recall {metrics.recall(yte_idx, pred, average=avg):.4f}  "
              f"f1 {metrics.f1(yte_idx, pred, average=avg):.4f}")
    cm = metrics.confusion_matrix(yte_idx, pred, labels=np.arange(len(classes)))
    width = max(len(str(cm.max())), max(len(str(c)) for c in classes)) + 1
    print("confusion matrix (rows: true, columns: predicted):")
    print(" " * width + "".join(f"{str(c):>{width}}" for c in classes))
    for c, row in zip(classes, cm):
        print(f"{str(c):>{width}}" + "".join(f"{v:>{width}}" for v in row))
    if args.save and (trainer.distributed is None or trainer.distributed.rank == 0):
        try:
            model.save(args.save)
        except OSError as exc:
            raise UsageError("--save", f"cannot write {args.save}: {exc}") from None
        print(f"model saved to {args.save}")
    if args.plot:
        _plots(args.plot, history, yte_idx, pred, trainer.predict_proba(Xte), classes)
    return 0


def _plots(folder, history, y_true, pred, proba, classes):
    """--plot DIR: loss.png (the History), confusion.png and roc.png (the
    test set; classes by their index, named in the tick labels)."""
    try:
        from . import plot
    except ImportError as exc:  # (plot imports matplotlib lazily; this is belt and braces)
        raise UsageError("--plot", f"needs matplotlib: pip install fastnn[plot] ({exc})") from None
    try:
        plot.history(history, path=os.path.join(folder, "loss.png"))
        fig = plot.confusion_matrix(y_true, pred, labels=np.arange(len(classes)),
                                    path=None)
        ax = fig.axes[0]
        names = [str(c) for c in classes]
        ax.set_xticks(range(len(names)), names)
        ax.set_yticks(range(len(names)), names)
        plot._save(fig, os.path.join(folder, "confusion.png"))
        if len(classes) == 2:
            plot.roc(y_true, proba[:, 1], labels=np.arange(2), path=os.path.join(folder, "roc.png"))
        else:
            plot.roc(y_true, proba, labels=np.arange(len(classes)),
                     path=os.path.join(folder, "roc.png"))
    except ImportError as exc:
        raise UsageError("--plot", f"needs matplotlib: pip install fastnn[plot] ({exc})") from None
    print(f"plots written to {folder}: loss.png, confusion.png, roc.png")


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.command == "train":  # (main may run inside a process: leave its settings)
        from . import kernels

        threads = kernels._num_threads
        try:
            return _run(args)
        finally:
            if args.threads is not None:
                kernels.set_num_threads(threads or kernels.default_num_threads())
    return _run(args)


def _run(args):
    try:
        if args.command == "train":
            return train(args)
        if args.command == "bench":
            return bench(args)
    except UsageError as exc:
        print(f"fastnn {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except MemoryError as exc:
        print(f"fastnn {args.command}: error: --layers/--batch-size: out of memory ({exc})",
              file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `fastnn train | head`: the reader left, not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
