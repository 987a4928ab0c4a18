"""Small datasets and loaders: digits, MNIST (IDX files), logic gates, toy 2-D sets, CSV.

Every loader returns features as float32 (the dtype the kernels compute in)
and class labels as int64, so its output can go straight into a model.
Nothing is downloaded: ``load_digits`` uses the copy bundled with
scikit-learn and ``load_mnist`` reads files you already have.
"""

import gzip
import os

import numpy as np

__all__ = ["load_digits", "read_idx", "load_mnist", "logic_gate", "make_xor",
           "make_spirals", "load_csv"]


def load_digits(return_X_y=True):
    """The 8x8 handwritten digits bundled with scikit-learn (1797 samples, 10 classes).

    Parameters
    ----------
    return_X_y : bool, default True
        Return ``(X, y)``; if False return a ``sklearn.utils.Bunch`` with
        ``data`` (= X), ``target`` (= y), ``images`` (X as (n, 8, 8)) and
        ``target_names``.

    Returns
    -------
    X : ndarray of shape (1797, 64), float32
        Pixel intensities divided by 16, so in [0, 1].
    y : ndarray of shape (1797,), int64
        Digits 0..9.
    """
    from sklearn import datasets as skd
    from sklearn.utils import Bunch

    raw = skd.load_digits()
    X = (raw.data / 16.0).astype(np.float32)
    y = raw.target.astype(np.int64)
    if return_X_y:
        return X, y
    return Bunch(data=X, target=y, images=X.reshape(-1, 8, 8),
                 target_names=np.arange(10, dtype=np.int64))


# ---------------------------------------------------------------------- IDX

# Third byte of an IDX magic number -> big-endian element type.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4",
               0x0D: ">f4", 0x0E: ">f8"}


def _read_bytes(path):
    """File contents, gunzipped when the file is gzip (detected by content, not name)."""
    with open(path, "rb") as fh:
        data = fh.read()
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as e:
            raise ValueError(f"{path}: corrupt gzip data ({e})") from None
    return data


def read_idx(path):
    """Read an IDX file (the MNIST format), gzipped or not.

    The format: two zero bytes, one type byte, one byte with the number of
    dimensions d, then d big-endian uint32 sizes, then the elements in
    row-major order, big-endian.

    Parameters
    ----------
    path : str or os.PathLike
        The file; gzip compression is detected from its first bytes.

    Returns
    -------
    ndarray
        Of the stored shape, in the stored type (uint8 for MNIST) with native
        byte order.

    Raises
    ------
    ValueError
        On a bad magic number, an unknown type, or a length that does not
        match the header (truncated or trailing bytes).
    """
    data = _read_bytes(path)
    if len(data) < 4:
        raise ValueError(f"{path}: too short for an IDX header ({len(data)} bytes)")
    if data[0] != 0 or data[1] != 0:
        raise ValueError(f"{path}: bad IDX magic number {data[:4].hex()} (must start with 0000)")
    type_code, ndim = data[2], data[3]
    if type_code not in _IDX_DTYPES:
        raise ValueError(f"{path}: unknown IDX element type 0x{type_code:02x}")
    if ndim == 0:
        raise ValueError(f"{path}: IDX header declares 0 dimensions")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path}: truncated IDX header ({len(data)} bytes, need {header})")
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[type_code])
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "has trailing bytes"
        raise ValueError(f"{path}: IDX file {what}: {len(data)} bytes, header "
                         f"{shape} of {dtype.name} needs {expected}")
    arr = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    return arr.astype(dtype.newbyteorder("="))


def _find_idx(directory, kind, what):
    # Official names use '-idx', some mirrors use '.idx'; either may be gzipped.
    for sep in ("-", "."):
        for ext in ("", ".gz"):
            path = os.path.join(directory, f"{kind}-{what}{sep}idx{3 if what == 'images' else 1}-ubyte{ext}")
            if os.path.exists(path):
                return path
    raise FileNotFoundError(f"no {kind} {what} file in {directory!r} "
                            f"(expected e.g. {kind}-{what}-idx{3 if what == 'images' else 1}-ubyte[.gz])")


def load_mnist(path, kind="train"):
    """Load MNIST (or a same-format set such as Fashion-MNIST) from IDX files.

    Parameters
    ----------
    path : str or os.PathLike
        Directory holding ``train-images-idx3-ubyte``,
        ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte`` and
        ``t10k-labels-idx1-ubyte``, each optionally gzipped (``.gz``).
    kind : {"train", "t10k"}, default "train"
        Which split; "test" is accepted for "t10k".

    Returns
    -------
    X : ndarray of shape (n, rows * cols), float32
        Images flattened row-major (784 features for MNIST), pixel / 255 so
        in [0, 1].
    y : ndarray of shape (n,), int64
        Labels.

    Raises
    ------
    FileNotFoundError
        If a file is missing.
    ValueError
        If a file is not a valid IDX file of the expected kind (3-D uint8
        images, 1-D uint8 labels) or image and label counts differ.
    """
    if kind == "test":
        kind = "t10k"
    if kind not in ("train", "t10k"):
        raise ValueError(f"kind: expected 'train' or 't10k', got {kind!r}")
    images_path = _find_idx(path, kind, "images")
    labels_path = _find_idx(path, kind, "labels")
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(f"{images_path}: expected 3-D uint8 images (magic 0x00000803), "
                         f"got {images.ndim}-D {images.dtype}")
    if labels.ndim != 1 or labels.dtype != np.uint8:
        raise ValueError(f"{labels_path}: expected 1-D uint8 labels (magic 0x00000801), "
                         f"got {labels.ndim}-D {labels.dtype}")
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{kind}: {images.shape[0]} images but {labels.shape[0]} labels")
    X = images.reshape(images.shape[0], -1).astype(np.float32)
    X *= np.float32(1 / 255)
    return X, labels.astype(np.int64)


# ------------------------------------------------------------- toy problems

_GATES = {"and": [0, 0, 0, 1], "or": [0, 1, 1, 1], "nand": [1, 1, 1, 0],
          "nor": [1, 0, 0, 0], "xor": [0, 1, 1, 0]}


def logic_gate(name):
    """Truth table of a two-input logic gate.

    Parameters
    ----------
    name : {"and", "or", "nand", "nor", "xor"}
        Case-insensitive.

    Returns
    -------
    X : ndarray of shape (4, 2), float32
        Inputs (0, 0), (0, 1), (1, 0), (1, 1).
    y : ndarray of shape (4,), int64
        Outputs 0 or 1.
    """
    key = name.lower() if isinstance(name, str) else name
    if key not in _GATES:
        raise ValueError(f"logic_gate: unknown gate {name!r}; expected one of {', '.join(_GATES)}")
    X = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=np.float32)
    return X, np.array(_GATES[key], dtype=np.int64)


def _check_n_noise(n_samples, noise, minimum):
    if isinstance(n_samples, bool) or not isinstance(n_samples, (int, np.integer)) or n_samples < minimum:
        raise ValueError(f"n_samples: expected an integer >= {minimum}, got {n_samples!r}")
    if not (np.isfinite(noise) and noise >= 0):
        raise ValueError(f"noise: expected a finite number >= 0, got {noise!r}")


def make_xor(n_samples=200, noise=0.1, seed=None):
    """Noisy XOR: Gaussian blobs around the four corners of the unit square.

    Parameters
    ----------
    n_samples : int, default 200
        Split as evenly as possible over the four corners.
    noise : float, default 0.1
        Standard deviation of the Gaussian added to each coordinate.
    seed : int or numpy.random.Generator, optional
        For reproducible output.

    Returns
    -------
    X : ndarray of shape (n_samples, 2), float32
    y : ndarray of shape (n_samples,), int64
        1 for corners (0, 1) and (1, 0), else 0.  Samples are shuffled.
    """
    _check_n_noise(n_samples, noise, 1)
    rng = np.random.default_rng(seed)
    corners, gate = logic_gate("xor")
    which = rng.permutation(np.arange(n_samples) % 4)
    X = corners[which] + rng.normal(0.0, noise, (n_samples, 2))
    return X.astype(np.float32), gate[which]


def make_spirals(n_samples=300, n_classes=2, noise=0.1, turns=1.5, seed=None):
    """Interleaved spirals, one arm per class: the classic non-linear toy problem.

    Arm c is the curve r(t) = t, angle(t) = 2 pi (turns t + c / n_classes)
    for t in (0, 1], sampled at evenly spaced t; Gaussian noise of standard
    deviation ``noise`` is then added to each coordinate.  Points lie roughly
    in [-1, 1]^2.

    Parameters
    ----------
    n_samples : int, default 300
        Total number of points, split as evenly as possible over the classes
        (class sizes differ by at most one).
    n_classes : int, default 2
    noise : float, default 0.1
    turns : float, default 1.5
        How many times each arm winds around the origin.
    seed : int or numpy.random.Generator, optional
        For reproducible output.

    Returns
    -------
    X : ndarray of shape (n_samples, 2), float32
    y : ndarray of shape (n_samples,), int64
        Class of each point, 0..n_classes-1.  Samples are shuffled.
    """
    if isinstance(n_classes, bool) or not isinstance(n_classes, (int, np.integer)) or n_classes < 1:
        raise ValueError(f"n_classes: expected an integer >= 1, got {n_classes!r}")
    _check_n_noise(n_samples, noise, n_classes)
    if isinstance(turns, (bool, np.bool_, str)) or not isinstance(turns, (int, float, np.number)) \
            or not np.isfinite(turns):
        raise ValueError(f"turns: expected a finite number, got {turns!r}")
    rng = np.random.default_rng(seed)
    y = np.arange(n_samples) % n_classes
    # Position of each point along its arm: the i-th point of a class of m
    # points sits at t = (i + 1) / m.
    rank = np.arange(n_samples) // n_classes
    size = np.bincount(y, minlength=n_classes)
    t = (rank + 1) / size[y]
    angle = 2 * np.pi * (turns * t + y / n_classes)
    X = np.column_stack([t * np.cos(angle), t * np.sin(angle)])
    X += rng.normal(0.0, noise, X.shape)
    order = rng.permutation(n_samples)
    return X[order].astype(np.float32), y[order].astype(np.int64)


# ---------------------------------------------------------------------- CSV

def _is_number(field):
    try:
        float(field)
    except ValueError:
        return False
    return True


def load_csv(path, target_column=-1, skip_header="auto", delimiter=","):
    """Load a numeric table with one target column, e.g. for the command line.

    Parameters
    ----------
    path : str or os.PathLike
    target_column : int or None, default -1
        Index of the target column (negative counts from the end); None
        means there is no target.
    skip_header : bool or "auto", default "auto"
        Skip the first line; "auto" skips it when one of its fields is not a
        number while the same field of the second line is (or, for a
        one-line file, when any field is not a number).
    delimiter : str, default ","
        Field separator; None splits on any whitespace.

    Returns
    -------
    X : ndarray of shape (n_samples, n_features), float32
        Every column but the target; all must be numeric.
    y : ndarray of shape (n_samples,) or None
        int64 when every target value is an integer, float64 when numeric
        otherwise (regression), else the strings as read (class names).

    Raises
    ------
    ValueError
        On an empty file, rows of different lengths, a target column out of
        range, or non-numeric features.
    """
    with open(path, newline="") as fh:
        rows = [line.strip() for line in fh]
    rows = [r for r in rows if r and not r.startswith("#")]
    if not rows:
        raise ValueError(f"{path}: no data")
    table = [[f.strip().strip('"').strip("'") for f in r.split(delimiter)] for r in rows]
    if skip_header == "auto":
        # A header is a first line with a text field where the next line has
        # a number; so a text target column (class names) is not a header.
        first = [not _is_number(f) for f in table[0]]
        below = [_is_number(f) for f in table[1]] if len(table) > 1 else [True] * len(first)
        skip_header = any(a and b for a, b in zip(first, below))
    if skip_header:
        table = table[1:]
    if not table:
        raise ValueError(f"{path}: header but no data")
    width = len(table[0])
    bad = [i for i, r in enumerate(table) if len(r) != width]
    if bad:
        raise ValueError(f"{path}: data row {bad[0] + 1} has {len(table[bad[0]])} fields, expected {width}")
    cells = np.array(table, dtype=str)
    y = None
    if target_column is not None:
        if not -width <= target_column < width:
            raise ValueError(f"target_column={target_column} out of range for {width} columns")
        target_column %= width
        y_text = cells[:, target_column]
        cells = np.delete(cells, target_column, axis=1)
        try:
            y = y_text.astype(np.float64)
        except ValueError:
            y = y_text
        else:
            if np.all(np.isfinite(y)) and np.all(y == np.round(y)):
                y = y.astype(np.int64)
    try:
        X = cells.astype(np.float32)
    except ValueError as e:
        raise ValueError(f"{path}: non-numeric feature value ({e})") from None
    return X, y
