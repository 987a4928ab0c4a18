"""fastnn.plot: each picture is written, non-empty, of the size asked for,
and plots the numbers it is given (read back from the Figure's artists:
History's values, metrics.confusion_matrix, metrics.roc_curve / roc_auc,
the model's predictions on the grid); fastnn train --plot writes the three
files."""

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from fastnn import Dense, Sequential, Trainer, metrics, optim, plot  # noqa: E402
from fastnn.cli import main  # noqa: E402


def png_size(path):
    import matplotlib.image

    img = matplotlib.image.imread(path)
    return img.shape[1], img.shape[0]


def blobs(n=300, k=3, seed=0):
    rng = np.random.default_rng(seed)
    centers = np.array([[0, 0], [3, 0], [0, 3], [3, 3]], np.float32)[:k]
    y = rng.integers(0, k, n)
    return (centers[y] + rng.normal(size=(n, 2))).astype(np.float32), y


def test_history_plots_the_history_numbers(tmp_path):
    X, y = blobs()
    tr = Trainer(Sequential([Dense(2, 16, "relu"), Dense(16, 3)], seed=0),
                 "softmax_cross_entropy", optim.Adam(lr=1e-2))
    hist = tr.fit(X, y, epochs=5, batch_size=32, validation_split=0.2, seed=0, verbose=0)
    path = tmp_path / "loss.png"
    fig = plot.history(hist, path=path, figsize=(8, 3), dpi=50)
    assert path.stat().st_size > 1000 and png_size(path) == (400, 150)
    loss_ax, acc_ax = fig.axes[:2]
    lines = {ln.get_label(): ln for ln in loss_ax.lines}
    assert set(lines) == {"loss", "val_loss"}
    for key in ("loss", "val_loss"):
        np.testing.assert_array_equal(lines[key].get_ydata(), hist.history[key])
        np.testing.assert_array_equal(lines[key].get_xdata(), np.arange(1, 6))
    acc = {ln.get_label(): ln.get_ydata() for ln in acc_ax.lines}
    np.testing.assert_array_equal(acc["accuracy"], hist.accuracy)
    np.testing.assert_array_equal(acc["val_accuracy"], hist.val_accuracy)
    assert len(fig.axes) == 2  # samples_per_s and lr are not plotted
    with pytest.raises(ValueError, match="history"):
        plot.history({})


@pytest.mark.parametrize("normalize", [None, "true", "pred", "all"])
def test_confusion_matrix_plots_the_metrics_matrix(tmp_path, normalize):
    rng = np.random.default_rng(1)
    y_true = rng.integers(0, 4, 200)
    y_pred = np.where(rng.random(200) < 0.7, y_true, rng.integers(0, 4, 200))
    path = tmp_path / "cm.png"
    fig = plot.confusion_matrix(y_true, y_pred, normalize=normalize, path=path)
    assert path.stat().st_size > 1000 and png_size(path) == (600, 500)
    cm = metrics.confusion_matrix(y_true, y_pred).astype(float)
    want = {None: cm, "true": cm / cm.sum(1, keepdims=True),
            "pred": cm / cm.sum(0, keepdims=True), "all": cm / cm.sum()}[normalize]
    ax = fig.axes[0]
    np.testing.assert_allclose(ax.images[0].get_array(), want)
    texts = [t.get_text() for t in ax.texts]
    assert len(texts) == 16
    fmt = (lambda v: str(int(v))) if normalize is None else (lambda v: f"{v:.2f}")
    assert texts == [fmt(v) for v in want.ravel()]
    with pytest.raises(ValueError, match="normalize"):
        plot.confusion_matrix(y_true, y_pred, normalize="rows")


def test_roc_plots_the_metrics_curves_and_aucs(tmp_path):
    rng = np.random.default_rng(2)
    y = rng.integers(0, 3, 300)
    scores = rng.random((300, 3)) + 0.8 * (y[:, None] == np.arange(3))
    path = tmp_path / "roc.png"
    fig = plot.roc(y, scores, path=path, dpi=80)
    assert path.stat().st_size > 1000 and png_size(path) == (480, 400)
    ax = fig.axes[0]
    curves = [ln for ln in ax.lines if ln.get_label() != "chance"]
    aucs = metrics.roc_auc(y, scores, average=None)
    assert len(curves) == 3
    for c, ln in enumerate(curves):
        fpr, tpr, _ = metrics.roc_curve((y == c).astype(int), scores[:, c])
        np.testing.assert_array_equal(ln.get_xdata(), fpr)
        np.testing.assert_array_equal(ln.get_ydata(), tpr)
        assert ln.get_label() == f"{c} (AUC {aucs[c]:.3f})"
    assert f"{metrics.roc_auc(y, scores):.3f}" in ax.get_title()
    # binary: one curve, from 1-D scores or the second column
    yb = (y == 0).astype(int)
    for s in (scores[:, 0], np.column_stack([-scores[:, 0], scores[:, 0]])):
        fig = plot.roc(yb, s)
        (ln,) = [ln for ln in fig.axes[0].lines if ln.get_label() != "chance"]
        fpr, tpr, _ = metrics.roc_curve(yb, scores[:, 0])
        np.testing.assert_array_equal(ln.get_xdata(), fpr)
        assert f"{metrics.roc_auc(yb, scores[:, 0]):.3f}" in ln.get_label()


def test_decision_boundary_plots_the_models_predictions(tmp_path):
    X, y = blobs(k=4)
    model = Sequential([Dense(2, 16, "tanh"), Dense(16, 4)], seed=0)
    tr = Trainer(model, "softmax_cross_entropy", optim.Adam(lr=2e-2))
    tr.fit(X, y, epochs=20, batch_size=32, seed=0, verbose=0)
    path = tmp_path / "db.png"
    fig = plot.decision_boundary(model, X, y, path=path, resolution=50)
    assert path.stat().st_size > 1000 and png_size(path) == (600, 500)
    ax = fig.axes[0]
    regions = np.asarray(ax.images[0].get_array())
    x0, x1, y0, y1 = ax.images[0].get_extent()
    gx, gy = np.meshgrid(np.linspace(x0, x1, 50), np.linspace(y0, y1, 50))
    grid = np.column_stack([gx.ravel(), gy.ravel()]).astype(np.float32)
    np.testing.assert_array_equal(regions, model.predict(grid).argmax(1).reshape(50, 50))
    np.testing.assert_allclose(ax.collections[0].get_offsets(), X)
    assert len(np.unique(regions)) == 4  # all four blobs have a region
    # a Trainer (predict_proba) and a binary model (one logit) work too
    yb = (y >= 2).astype(int)
    bm = Sequential([Dense(2, 8, "tanh"), Dense(8, 1)], seed=0)
    Trainer(bm, "binary_cross_entropy", optim.Adam(lr=2e-2)).fit(
        X, yb, epochs=10, batch_size=32, seed=0, verbose=0)
    fig = plot.decision_boundary(bm, X, yb, resolution=40)
    regions = np.asarray(fig.axes[0].images[0].get_array())
    x0, x1, y0, y1 = fig.axes[0].images[0].get_extent()
    gx, gy = np.meshgrid(np.linspace(x0, x1, 40), np.linspace(y0, y1, 40))
    grid = np.column_stack([gx.ravel(), gy.ravel()]).astype(np.float32)
    np.testing.assert_array_equal(regions.ravel(), (bm.predict(grid)[:, 0] > 0).astype(int))
    plot.decision_boundary(tr, X, y, resolution=20)
    with pytest.raises(ValueError, match="X"):
        plot.decision_boundary(model, np.zeros((5, 3)), np.zeros(5))


def test_cli_train_plot_writes_the_three_pictures(tmp_path, capsys):
    out = tmp_path / "plots"
    assert main(["train", "--epochs", "2", "--layers", "32", "--plot", str(out),
                 "--verbose", "0"]) == 0
    text = capsys.readouterr().out
    assert "plots written" in text and "epoch 1/2" not in text
    for name in ("loss.png", "confusion.png", "roc.png"):
        assert (out / name).stat().st_size > 1000
    assert png_size(out / "loss.png") == (1000, 400)
    assert png_size(out / "confusion.png") == (600, 500)


def test_matplotlib_is_imported_by_the_first_plot_only():
    import subprocess
    import sys

    code = ("import sys, fastnn, fastnn.plot, fastnn.progress; "
            "print('matplotlib' in sys.modules, 'tqdm' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.split() == ["False", "False"]
