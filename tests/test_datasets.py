"""fastnn.datasets: IDX/MNIST reading (plain and gzip, corrupt files), digits, toy sets, CSV."""

import gzip
import struct

import numpy as np
import pytest

from fastnn import datasets as ds


def _idx_bytes(arr, type_code=0x08):
    arr = np.asarray(arr)
    header = bytes([0, 0, type_code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + arr.astype(arr.dtype.newbyteorder(">")).tobytes()


def _write(path, data, gz=False):
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def _mnist_dir(tmp_path, kind="train", n=5, rows=28, cols=28, gz=False, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, rows, cols), dtype=np.uint8)
    labels = rng.integers(0, 10, n, dtype=np.uint8)
    ext = ".gz" if gz else ""
    _write(tmp_path / f"{kind}-images-idx3-ubyte{ext}", _idx_bytes(images), gz)
    _write(tmp_path / f"{kind}-labels-idx1-ubyte{ext}", _idx_bytes(labels), gz)
    return images, labels


# ---------------------------------------------------------------------- IDX

@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("dtype,code", [(np.uint8, 0x08), (np.int8, 0x09), (np.int16, 0x0B),
                                        (np.int32, 0x0C), (np.float32, 0x0D), (np.float64, 0x0E)])
def test_read_idx_roundtrip(tmp_path, gz, dtype, code):
    arr = (np.arange(24).reshape(2, 3, 4) - 5).astype(dtype)
    if dtype == np.uint8:
        arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    path = _write(tmp_path / "a.idx", _idx_bytes(arr, code), gz)
    out = ds.read_idx(path)
    assert out.dtype == np.dtype(dtype) and out.dtype.isnative
    np.testing.assert_array_equal(out, arr)


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("kind", ["train", "t10k"])
def test_load_mnist_roundtrip(tmp_path, gz, kind):
    images, labels = _mnist_dir(tmp_path, kind, n=7, gz=gz)
    X, y = ds.load_mnist(tmp_path, kind=kind)
    assert X.shape == (7, 784) and X.dtype == np.float32
    assert y.shape == (7,) and y.dtype == np.int64
    assert 0.0 <= X.min() and X.max() <= 1.0
    np.testing.assert_allclose(X, images.reshape(7, -1) / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(y, labels)


def test_load_mnist_test_alias_and_missing_file(tmp_path):
    _mnist_dir(tmp_path, "t10k", n=3)
    assert ds.load_mnist(tmp_path, kind="test")[0].shape == (3, 784)
    with pytest.raises(FileNotFoundError, match="train"):
        ds.load_mnist(tmp_path, kind="train")
    with pytest.raises(ValueError, match="kind"):
        ds.load_mnist(tmp_path, kind="validation")


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("corrupt,match", [
    (lambda b: b[:-1], "truncated"),
    (lambda b: b + b"\x00", "trailing"),
    (lambda b: b[:6], "truncated IDX header"),
    (lambda b: b[:2], "too short"),
    (lambda b: b"\x01" + b[1:], "magic"),
    (lambda b: b[:2] + b"\x07" + b[3:], "element type"),
    (lambda b: b[:3] + b"\x00" + b[4:], "0 dimensions"),
])
def test_read_idx_corrupt_files(tmp_path, gz, corrupt, match):
    good = _idx_bytes(np.zeros((3, 4, 4), dtype=np.uint8))
    path = _write(tmp_path / "bad", corrupt(good), gz)
    with pytest.raises(ValueError, match=match):
        ds.read_idx(path)


def test_read_idx_corrupt_gzip(tmp_path):
    data = gzip.compress(_idx_bytes(np.zeros((3, 4), dtype=np.uint8)))
    path = _write(tmp_path / "bad.gz", data[: len(data) // 2])
    with pytest.raises(ValueError, match="gzip"):
        ds.read_idx(path)


def test_load_mnist_wrong_kinds_of_file(tmp_path):
    images, labels = _mnist_dir(tmp_path, n=4)
    # Labels stored where images belong: 1-D, not 3-D.
    _write(tmp_path / "train-images-idx3-ubyte", _idx_bytes(labels))
    with pytest.raises(ValueError, match="3-D uint8 images"):
        ds.load_mnist(tmp_path)
    _write(tmp_path / "train-images-idx3-ubyte", _idx_bytes(images))
    _write(tmp_path / "train-labels-idx1-ubyte", _idx_bytes(labels.astype(np.int32), 0x0C))
    with pytest.raises(ValueError, match="1-D uint8 labels"):
        ds.load_mnist(tmp_path)
    _write(tmp_path / "train-labels-idx1-ubyte", _idx_bytes(labels[:3]))
    with pytest.raises(ValueError, match="4 images but 3 labels"):
        ds.load_mnist(tmp_path)


# ------------------------------------------------------------------ digits

def test_load_digits():
    X, y = ds.load_digits()
    assert X.shape == (1797, 64) and X.dtype == np.float32
    assert y.shape == (1797,) and y.dtype == np.int64
    assert X.min() == 0.0 and X.max() == 1.0
    np.testing.assert_array_equal(np.unique(y), np.arange(10))
    bunch = ds.load_digits(return_X_y=False)
    np.testing.assert_array_equal(bunch.data, X)
    assert bunch.images.shape == (1797, 8, 8)


# -------------------------------------------------------------- toy sets

@pytest.mark.parametrize("name,expected", [("and", [0, 0, 0, 1]), ("OR", [0, 1, 1, 1]),
                                           ("nand", [1, 1, 1, 0]), ("nor", [1, 0, 0, 0]),
                                           ("xor", [0, 1, 1, 0])])
def test_logic_gate(name, expected):
    X, y = ds.logic_gate(name)
    assert X.shape == (4, 2) and X.dtype == np.float32
    np.testing.assert_array_equal(X, [[0, 0], [0, 1], [1, 0], [1, 1]])
    np.testing.assert_array_equal(y, expected)
    with pytest.raises(ValueError, match="unknown gate"):
        ds.logic_gate("xnand")


def test_make_xor():
    X, y = ds.make_xor(101, noise=0.05, seed=1)
    assert X.shape == (101, 2) and X.dtype == np.float32 and y.dtype == np.int64
    np.testing.assert_array_equal(y, np.logical_xor(X[:, 0] > 0.5, X[:, 1] > 0.5))
    np.testing.assert_array_equal(ds.make_xor(101, noise=0.05, seed=1)[0], X)


@pytest.mark.parametrize("n,k", [(300, 2), (100, 3), (7, 5)])
def test_make_spirals_shapes_balance_determinism(n, k):
    X, y = ds.make_spirals(n_samples=n, n_classes=k, noise=0.1, seed=3)
    assert X.shape == (n, 2) and X.dtype == np.float32
    assert y.shape == (n,) and y.dtype == np.int64
    counts = np.bincount(y, minlength=k)
    assert counts.size == k and counts.max() - counts.min() <= 1
    X2, y2 = ds.make_spirals(n_samples=n, n_classes=k, noise=0.1, seed=3)
    np.testing.assert_array_equal(X, X2)
    np.testing.assert_array_equal(y, y2)
    assert not np.array_equal(X, ds.make_spirals(n_samples=n, n_classes=k, noise=0.1, seed=4)[0])


def test_make_spirals_noise_free_geometry():
    X, y = ds.make_spirals(n_samples=200, n_classes=2, noise=0.0, seed=0)
    radius = np.hypot(X[:, 0], X[:, 1])
    assert 0 < radius.min() and radius.max() == pytest.approx(1.0)
    # Arms are a half turn apart: the point-reflection of an arm-0 point lies on arm 1.
    arm0, arm1 = X[y == 0], X[y == 1]
    d = np.abs((-arm0)[:, None, :] - arm1[None, :, :]).sum(axis=2).min(axis=1)
    assert d.max() < 1e-5


@pytest.mark.parametrize("kwargs", [dict(n_samples=0), dict(n_samples=2.5), dict(noise=-1),
                                    dict(n_classes=0), dict(n_samples=2, n_classes=3)])
def test_make_spirals_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        ds.make_spirals(**kwargs)


# --------------------------------------------------------------------- CSV

def test_load_csv_header_auto_and_targets(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text("x1,x2,label\n0.5,1,0\n1.5,-2,1\n\n2,3e-1,1\n")
    X, y = ds.load_csv(path)
    np.testing.assert_allclose(X, [[0.5, 1], [1.5, -2], [2, 0.3]])
    assert X.dtype == np.float32
    np.testing.assert_array_equal(y, [0, 1, 1])
    assert y.dtype == np.int64
    X, y = ds.load_csv(path, target_column=0)
    np.testing.assert_allclose(y, [0.5, 1.5, 2.0])
    assert y.dtype == np.float64


def test_load_csv_no_header_string_targets_whitespace(tmp_path):
    path = tmp_path / "b.txt"
    path.write_text("setosa 1 2\nvirginica 3 4\n")
    X, y = ds.load_csv(path, target_column=0, delimiter=None)
    np.testing.assert_array_equal(X, [[1, 2], [3, 4]])
    np.testing.assert_array_equal(y, ["setosa", "virginica"])
    path.write_text("1 2 3\n4 5 6\n")
    X, y = ds.load_csv(path, target_column=None, delimiter=None, skip_header=True)
    assert y is None
    np.testing.assert_array_equal(X, [[4, 5, 6]])


@pytest.mark.parametrize("text,kwargs,match", [
    ("", {}, "no data"),
    ("a,b\n", {}, "header but no data"),
    ("1,2\n1,2,3\n", {}, "fields"),
    ("1,x,0\n2,y,1\n", {}, "non-numeric"),
    ("1,2\n", dict(target_column=5), "out of range"),
])
def test_load_csv_errors(tmp_path, text, kwargs, match):
    path = tmp_path / "c.csv"
    path.write_text(text)
    with pytest.raises(ValueError, match=match):
        ds.load_csv(path, **kwargs)


@pytest.mark.parametrize("turns", [float("inf"), float("nan"), "1.5", None, True])
def test_spirals_refuse_a_non_finite_turn_count(turns):
    with pytest.raises(ValueError, match="turns"):
        ds.make_spirals(100, turns=turns)
