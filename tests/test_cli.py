"""The fastnn command line."""

import re
import subprocess
import sys

import numpy as np
import pytest

from fastnn import cli


def test_train_defaults_reach_97_percent_on_digits(capsys, tmp_path):
    model_path = tmp_path / "digits.npz"
    assert cli.main(["train", "--save", str(model_path)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"epoch 40/40 loss=\S+ accuracy=\S+ val_loss=\S+ val_accuracy=\S+ "
                     r"samples_per_s=[\d,]+", out)
    acc = float(re.search(r"test accuracy: ([\d.]+)", out).group(1))
    assert acc >= 0.97
    assert re.search(r"macro: precision [\d.]+  recall [\d.]+  f1 [\d.]+", out)
    assert "confusion matrix" in out
    import fastnn
    from fastnn.datasets import load_digits

    X, _ = load_digits()
    assert fastnn.load(model_path).predict(X[:5]).shape == (5, 10)


def test_train_on_csv_with_options(capsys, tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 4))
    y = np.where(X[:, 0] + X[:, 1] > 0, "yes", "no")
    path = tmp_path / "data.csv"
    with open(path, "w") as f:
        f.write("a,b,c,d,label\n")
        for row, label in zip(X, y):
            f.write(",".join(f"{v:.5f}" for v in row) + f",{label}\n")
    assert cli.main(["train", "--dataset", "csv", "--data-path", str(path), "--layers", "16,8",
                     "--activation", "tanh", "--optimizer", "sgd", "--lr", "0.1", "--epochs", "20",
                     "--batch-size", "16", "--backend", "numba", "--threads", "1", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert float(re.search(r"test accuracy: ([\d.]+)", out).group(1)) > 0.9
    assert "epoch" not in out  # --quiet


def test_help_explains_every_option():
    out = subprocess.run([sys.executable, "-m", "fastnn.cli", "train", "--help"],
                         capture_output=True, text=True, check=True).stdout
    for opt in ("--dataset", "--data-path", "--layers", "--activation", "--optimizer", "--lr",
                "--epochs", "--batch-size", "--backend", "--threads", "--seed", "--save"):
        assert opt in out


def test_missing_mnist_path_is_a_clear_error(capsys):
    assert cli.main(["train", "--dataset", "mnist"]) == 2
    assert "--data-path" in capsys.readouterr().err


def test_train_cnn_reaches_98_percent_on_digits(capsys):
    assert cli.main(["train", "--model", "cnn", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert float(re.search(r"test accuracy: ([\d.]+)", out).group(1)) >= 0.98


def test_cnn_needs_an_image_dataset(tmp_path, capsys):
    path = tmp_path / "d.csv"
    path.write_text("1,2,0\n3,4,1\n5,6,0\n7,8,1\n1,1,0\n2,2,1\n3,3,0\n4,4,1\n")
    assert cli.main(["train", "--model", "cnn", "--dataset", "csv", "--data-path", str(path)]) == 2
    assert "image dataset" in capsys.readouterr().err


def test_train_backend_is_the_models_own_not_the_process_default(capsys):
    import fastnn

    before = fastnn.get_backend()
    assert cli.main(["train", "--backend", "reference", "--epochs", "1", "--layers", "8"]) == 0
    out = capsys.readouterr().out
    assert "'backend': 'reference'" in out
    assert fastnn.get_backend() == before  # main never switched it
