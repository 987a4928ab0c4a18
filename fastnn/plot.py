"""Pictures of a fit: loss curves, a confusion matrix, ROC curves, a 2-D
decision boundary (``pip install fastnn[plot]``: matplotlib).

Each function returns a matplotlib Figure (shown as it is in a notebook)
and, given ``path=``, saves it there (png, pdf, svg: by the suffix) at
``figsize`` inches times ``dpi`` pixels.  The figures are made without
pyplot (no GUI, no global figure list to close): they render with Agg, and
matplotlib's backend is set to Agg when there is no display.  matplotlib is
imported by the first call, not by ``import fastnn``.
"""

import os
import sys

import numpy as np

from . import metrics


def _figure(figsize, dpi, ncols=1):
    try:
        import matplotlib
    except ImportError as exc:
        raise ImportError("fastnn.plot needs matplotlib: pip install fastnn[plot]") from exc
    no_display = (sys.platform.startswith("linux") and not os.environ.get("DISPLAY")
                  and not os.environ.get("WAYLAND_DISPLAY"))
    if no_display and "matplotlib.pyplot" not in sys.modules:
        matplotlib.use("Agg")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]
    return fig, axes


def _save(fig, path):
    if path is not None:
        path = os.fspath(path)
        folder = os.path.dirname(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        fig.savefig(path, dpi=fig.dpi)
    return fig


def _ticker():
    import matplotlib.ticker

    return matplotlib.ticker


def history(history, path=None, figsize=(10, 4), dpi=100):
    """Loss and metrics per epoch: one panel for the losses ("loss" and
    "val_loss"), one per other metric found (accuracy / val_accuracy;
    samples_per_s and lr are left out), train solid and validation dashed.

    history: a fastnn History (``Trainer.fit``'s), or its ``.history``
    dict of lists.
    """
    logs = getattr(history, "history", history)
    if not isinstance(logs, dict) or not logs.get("loss"):
        raise ValueError("history: expected a History (or its dict) with a 'loss' list")
    names = [k for k in logs if not k.startswith("val_") and k not in ("samples_per_s", "lr")]
    names = ["loss"] + [k for k in names if k != "loss"]
    fig, axes = _figure(figsize, dpi, len(names))
    for ax, name in zip(axes, names):
        for key, style in ((name, "-"), ("val_" + name, "--")):
            values = logs.get(key)
            if values:
                ax.plot(np.arange(1, len(values) + 1), values, style, marker="o", markersize=3,
                        label=key)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(_ticker().MaxNLocator(integer=True))  # whole epochs
        ax.set_ylabel(name)
        ax.set_title(name)
        ax.grid(alpha=0.3)
        ax.legend()
    return _save(fig, path)


def confusion_matrix(y_true, y_pred, labels=None, normalize=None, path=None, figsize=(6, 5),
                     dpi=100, cmap="Blues"):
    """The confusion matrix as a heat map with its values written in the
    cells: rows true classes, columns predicted
    (:func:`fastnn.metrics.confusion_matrix`).  normalize: None (counts),
    "true" (each row sums to 1: recall on the diagonal), "pred" (columns:
    precision) or "all", as scikit-learn's."""
    if normalize not in (None, "true", "pred", "all"):
        raise ValueError(f"normalize: expected None, 'true', 'pred' or 'all', got {normalize!r}")
    cm = metrics.confusion_matrix(y_true, y_pred, labels=labels).astype(np.float64)
    if labels is None:
        labels = np.unique(np.concatenate([np.asarray(y_true).ravel(),
                                           np.asarray(y_pred).ravel()]))
    with np.errstate(invalid="ignore", divide="ignore"):
        if normalize == "true":
            cm = cm / cm.sum(axis=1, keepdims=True)
        elif normalize == "pred":
            cm = cm / cm.sum(axis=0, keepdims=True)
        elif normalize == "all":
            cm = cm / cm.sum()
    cm = np.nan_to_num(cm)
    fig, (ax,) = _figure(figsize, dpi)
    im = ax.imshow(cm, cmap=cmap, vmin=0)
    fig.colorbar(im, ax=ax)
    k = len(labels)
    ax.set_xticks(range(k), [str(c) for c in labels])
    ax.set_yticks(range(k), [str(c) for c in labels])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("confusion matrix" + ("" if normalize is None else f" (normalized: {normalize})"))
    high = cm.max() / 2 if cm.size else 0
    for i in range(k):
        for j in range(k):
            text = f"{int(cm[i, j])}" if normalize is None else f"{cm[i, j]:.2f}"
            ax.text(j, i, text, ha="center", va="center", fontsize=8,
                    color="white" if cm[i, j] > high else "black")
    return _save(fig, path)


def roc(y_true, scores, labels=None, path=None, figsize=(6, 5), dpi=100):
    """ROC curves with their AUC (:func:`fastnn.metrics.roc_curve`,
    :func:`~fastnn.metrics.roc_auc`): binary -- scores 1-D (the greater
    label's) or (n, 2) -- one curve; multiclass, scores (n, k) one column per
    class (sorted classes, or `labels`' order), one one-vs-rest curve per
    class, the macro-average AUC in the title."""
    y_true = np.asarray(y_true).ravel()
    scores = np.asarray(scores, dtype=np.float64)
    classes = np.unique(y_true) if labels is None else np.asarray(labels)
    if scores.ndim == 2 and scores.shape[1] == 2 and len(classes) == 2:
        scores = scores[:, 1]
    fig, (ax,) = _figure(figsize, dpi)
    if scores.ndim == 1:
        if len(classes) != 2:
            raise ValueError(f"scores: 1-D scores need two classes, y_true has {len(classes)}")
        fpr, tpr, _ = metrics.roc_curve(y_true, scores, pos_label=classes[1])
        auc = metrics.roc_auc(y_true, scores, labels=classes)
        ax.plot(fpr, tpr, label=f"{classes[1]} (AUC {auc:.3f})")
        title = f"ROC, AUC {auc:.3f}"
    else:
        if scores.shape[1] != len(classes):
            raise ValueError(f"scores: {scores.shape[1]} columns for {len(classes)} classes")
        aucs = metrics.roc_auc(y_true, scores, average=None, labels=classes)
        for c, cls in enumerate(classes):
            is_c = (y_true == cls).astype(np.int64)
            fpr, tpr, _ = metrics.roc_curve(is_c, scores[:, c], pos_label=1)
            ax.plot(fpr, tpr, label=f"{cls} (AUC {aucs[c]:.3f})")
        title = f"ROC one-vs-rest, macro AUC {float(np.mean(aucs)):.3f}"
    ax.plot([0, 1], [0, 1], ":", color="gray", label="chance")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def _classes_of(model, Z):
    """The class a model gives each row of Z: from predict_proba if it has
    one (argmax; one column: > 0.5), else from predict (argmax of several
    outputs; one output: > 0.5 if its values lie in [0, 1], else > 0
    (a logit); 1-D: the labels themselves)."""
    proba = getattr(model, "predict_proba", None)
    if proba is not None:
        try:
            p = np.asarray(proba(Z))
        except ValueError:  # e.g. a regression Trainer
            p = None
        if p is not None:
            return p.argmax(axis=1) if p.ndim == 2 and p.shape[1] > 1 else (
                p.reshape(-1) > 0.5).astype(np.int64)
    out = np.asarray(model.predict(Z))
    if out.ndim == 2 and out.shape[1] > 1:
        return out.argmax(axis=1)
    out = out.reshape(-1)
    if out.dtype.kind == "f":
        threshold = 0.5 if out.min() >= 0 and out.max() <= 1 else 0.0
        return (out > threshold).astype(np.int64)
    return out


def decision_boundary(model, X, y, path=None, resolution=200, margin=0.1, figsize=(6, 5),
                      dpi=100, cmap="coolwarm"):
    """A classifier's decision regions over 2-D data (the XOR, gates and
    spirals pictures): the predicted class on a resolution x resolution
    grid spanning X (plus `margin` of its range each side), and the points
    coloured by y.  model: a Sequential, a Trainer or a scikit-learn-style
    estimator (see _classes_of for how its outputs become classes)."""
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y).ravel()
    if X.ndim != 2 or X.shape[1] != 2:
        raise ValueError(f"X: expected 2-D data of shape (n, 2), got {X.shape}")
    if len(y) != len(X):
        raise ValueError(f"y: {len(y)} labels for {len(X)} samples")
    lo, hi = X.min(axis=0), X.max(axis=0)
    pad = margin * np.where(hi > lo, hi - lo, 1.0)
    lo, hi = lo - pad, hi + pad
    gx = np.linspace(lo[0], hi[0], resolution)
    gy = np.linspace(lo[1], hi[1], resolution)
    xx, yy = np.meshgrid(gx, gy)
    grid = np.column_stack([xx.ravel(), yy.ravel()]).astype(np.float32)
    regions = _classes_of(model, grid).reshape(resolution, resolution)
    classes, codes = np.unique(y, return_inverse=True)
    fig, (ax,) = _figure(figsize, dpi)
    k = max(len(classes), int(regions.max()) + 1 if regions.size else 1)
    ax.imshow(regions, origin="lower", extent=(lo[0], hi[0], lo[1], hi[1]), aspect="auto",
              cmap=cmap, alpha=0.35, vmin=0, vmax=max(k - 1, 1), interpolation="nearest")
    ax.scatter(X[:, 0], X[:, 1], c=codes, cmap=cmap, vmin=0, vmax=max(k - 1, 1), s=14,
               edgecolors="black", linewidths=0.4)
    ax.set_xlim(lo[0], hi[0])
    ax.set_ylim(lo[1], hi[1])
    ax.set_title("decision boundary")
    return _save(fig, path)
