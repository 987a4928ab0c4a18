"""Classification metrics: accuracy, precision/recall/F1, confusion matrix, ROC.

Plain vectorised numpy, no dependency on scikit-learn at run time, and the same
numbers as ``sklearn.metrics`` for the cases covered (the tests cross-check
every function against it on random inputs, with ties and missing labels).

Conventions shared by every function here:

* Labels are 1-D arrays of integers, booleans, integral floats or strings;
  ``y_true`` and ``y_pred`` must have the same non-zero length.  Bad input
  (2-D labels, empty arrays, NaN, non-integral floats, mismatched lengths,
  strings mixed with numbers, an unknown ``average``) raises ValueError.
* The classes are the sorted union of the labels seen in ``y_true`` and
  ``y_pred``; per-class results (``average=None``) follow that order.
* A ratio whose denominator is zero (precision of a class never predicted,
  recall of a class never present) takes the value ``zero_division``
  (default 0.0) without a warning.  This equals scikit-learn's default
  ``zero_division="warn"`` minus the warning.  With ``zero_division=nan``
  the undefined classes are left out of the averages, as in scikit-learn.

Differences from scikit-learn, on purpose: ``roc_auc`` and ``roc_curve``
raise ValueError when ``y_true`` has no positive or no negative sample (the
AUC is undefined) instead of warning and returning NaN; ``roc_auc`` does not
require multiclass scores to sum to one (one-vs-rest AUC is defined for any
scores, e.g. logits).
"""

import numpy as np

__all__ = ["accuracy", "precision", "recall", "f1", "confusion_matrix",
           "roc_curve", "roc_auc"]


# ---------------------------------------------------------------- validation

def _check_labels(y, name):
    """`y` as a 1-D array of class labels; ValueError explains what is wrong."""
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array of labels, got shape {y.shape}")
    if y.size == 0:
        raise ValueError(f"{name}: empty array")
    if y.dtype.kind == "f":
        if np.isnan(y).any():
            raise ValueError(f"{name}: contains NaN")
        if not np.all(np.mod(y, 1) == 0):  # also rejects +-inf
            raise ValueError(f"{name}: float labels must be integral (got continuous values)")
    elif y.dtype.kind not in "biuUSO":
        raise ValueError(f"{name}: unsupported label dtype {y.dtype}")
    return y


def _is_text(y):
    return y.dtype.kind in "USO"


def _check_pair(y_true, y_pred, pred_name="y_pred"):
    y_true = _check_labels(y_true, "y_true")
    y_pred = _check_labels(y_pred, pred_name)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true and {pred_name} have different lengths: "
                         f"{y_true.size} and {y_pred.size}")
    if _is_text(y_true) != _is_text(y_pred):
        raise ValueError(f"y_true and {pred_name} mix string and numeric labels "
                         f"({y_true.dtype} and {y_pred.dtype})")
    return y_true, y_pred


def _check_average(average, allowed):
    if average is not None and not (isinstance(average, str) and average in allowed):
        raise ValueError(f"average: unknown {average!r}; expected one of "
                         f"{', '.join(map(repr, allowed))} or None")


def _unique(y, **kwargs):
    try:
        return np.unique(y, **kwargs)
    except TypeError as e:  # object arrays holding incomparable values
        raise ValueError(f"labels cannot be sorted: {e}") from None


def _classes_and_codes(y):
    """Sorted distinct labels of `y` and the index of each element among them.

    np.unique(return_inverse=True) sorts; for integer labels in a range not
    much wider than the data a lookup table gives the same result in O(n),
    2-3x faster on a million labels.
    """
    if y.dtype.kind in "biu":
        lo, hi = int(y.min()), int(y.max())
        if hi - lo <= 4 * y.size and hi < 2**62:
            offset = y.astype(np.int64) - lo
            present = np.bincount(offset, minlength=hi - lo + 1) > 0
            classes = (np.flatnonzero(present) + lo).astype(y.dtype)
            return classes, (np.cumsum(present) - 1)[offset]
    classes, codes = _unique(y, return_inverse=True)
    return classes, codes.reshape(-1)


def _encode(y, labels):
    """Index of each value of `y` in `labels` (any order) and a mask of the found ones."""
    order = np.argsort(labels, kind="stable")
    sorted_labels = labels[order]
    pos = np.searchsorted(sorted_labels, y)
    pos = np.minimum(pos, sorted_labels.size - 1)
    found = sorted_labels[pos] == y
    return order[pos], found


def _check_score(y_score, n):
    y_score = np.asarray(y_score)
    if y_score.dtype.kind not in "biuf":
        raise ValueError(f"y_score: expected numbers, got dtype {y_score.dtype}")
    if y_score.ndim not in (1, 2):
        raise ValueError(f"y_score: expected a 1-D or 2-D array, got shape {y_score.shape}")
    if y_score.shape[0] != n:
        raise ValueError(f"y_true and y_score have different lengths: {n} and {y_score.shape[0]}")
    if not np.all(np.isfinite(y_score)):
        raise ValueError("y_score: contains NaN or infinity")
    return y_score


# ------------------------------------------------------------ label metrics

def accuracy(y_true, y_pred):
    """Fraction of samples whose predicted label equals the true label.

    Parameters
    ----------
    y_true, y_pred : array_like of shape (n_samples,)
        True and predicted class labels.

    Returns
    -------
    float
        In [0, 1].
    """
    y_true, y_pred = _check_pair(y_true, y_pred)
    return float(np.mean(y_true == y_pred))


def _divide(num, den, zero_division):
    """num / den elementwise, `zero_division` where den == 0."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.full(num.shape, zero_division, dtype=np.float64)
    np.divide(num, den, out=out, where=den != 0)
    return out


def _nan_average(values, weights=None):
    """Average ignoring NaN entries (scikit-learn's rule for zero_division=nan)."""
    keep = ~np.isnan(values)
    if not keep.any():
        return float("nan")
    values = values[keep]
    if weights is not None:
        weights = weights[keep]
        if weights.sum() == 0:
            weights = None
    return float(np.average(values, weights=weights))


def _prf(y_true, y_pred, average, pos_label, zero_division):
    """Precision, recall and F1: three floats, or three per-class arrays if average is None."""
    _check_average(average, ("binary", "macro", "weighted", "micro"))
    zd = float(zero_division) if isinstance(zero_division, (int, float, np.number)) else -1.0
    if not (zd in (0.0, 1.0) or np.isnan(zd)):
        raise ValueError(f"zero_division: expected 0, 1 or nan, got {zero_division!r}")
    y_true, y_pred = _check_pair(y_true, y_pred)
    n = y_true.size
    classes, codes = _classes_and_codes(np.concatenate([y_true, y_pred]))
    t, p = codes[:n], codes[n:]
    k = classes.size

    if average == "binary":
        if k > 2:
            raise ValueError(f"average='binary' needs at most two classes, got {k}: "
                             "choose 'macro', 'weighted', 'micro' or None")
        is_pos = classes == pos_label
        if not is_pos.any():
            if k == 2:
                raise ValueError(f"pos_label={pos_label!r} is not one of the labels {classes.tolist()}")
            # A single class that is not pos_label: no positive anywhere,
            # every ratio is 0/0.
            return zd, zd, zd
        k_pos = int(np.flatnonzero(is_pos)[0])
        t, p = (t == k_pos).astype(np.intp), (p == k_pos).astype(np.intp)
        k = 2
        keep = slice(1, 2)  # the positive class only
    else:
        keep = slice(None)

    hit = t == p
    tp = np.bincount(t[hit], minlength=k)[keep]
    true_sum = np.bincount(t, minlength=k)[keep]
    pred_sum = np.bincount(p, minlength=k)[keep]
    if average == "micro":
        tp, true_sum, pred_sum = (c.sum(keepdims=True) for c in (tp, true_sum, pred_sum))

    prec = _divide(tp, pred_sum, zd)
    rec = _divide(tp, true_sum, zd)
    # F1 from counts (2tp / (2tp + fp + fn)): defined even where precision
    # or recall alone is 0/0, as in scikit-learn >= 1.3.
    f = _divide(2 * tp, true_sum + pred_sum, zd)

    if average is None:
        return prec, rec, f
    weights = true_sum.astype(np.float64) if average == "weighted" else None
    return tuple(_nan_average(v, weights) for v in (prec, rec, f))


_PRF_PARAMS = """
    Parameters
    ----------
    y_true, y_pred : array_like of shape (n_samples,)
        True and predicted class labels.
    average : {{"binary", "macro", "weighted", "micro"}} or None, default "binary"
        "binary": the score of class `pos_label` only (at most two classes
        allowed).  "macro": unweighted mean of the per-class scores.
        "weighted": mean weighted by each class's support (count in
        `y_true`).  "micro": computed from the counts summed over classes
        (equal to accuracy for single-label multiclass data).  None: the
        per-class scores, classes in sorted order.
    pos_label : label, default 1
        The positive class for average="binary"; ignored otherwise.
    zero_division : {{0.0, 1.0, nan}}, default 0.0
        The value, given without a warning, of a 0/0 {what}.
        NaN values are left out of the averages.

    Returns
    -------
    float or ndarray of shape (n_classes,)
"""


def precision(y_true, y_pred, average="binary", pos_label=1, zero_division=0.0):
    return _prf(y_true, y_pred, average, pos_label, zero_division)[0]


def recall(y_true, y_pred, average="binary", pos_label=1, zero_division=0.0):
    return _prf(y_true, y_pred, average, pos_label, zero_division)[1]


def f1(y_true, y_pred, average="binary", pos_label=1, zero_division=0.0):
    return _prf(y_true, y_pred, average, pos_label, zero_division)[2]


precision.__doc__ = ("Precision tp / (tp + fp): the fraction of predictions of a class that are right.\n"
                     + _PRF_PARAMS.format(what="precision\n        (a class never predicted)"))
recall.__doc__ = ("Recall tp / (tp + fn): the fraction of a class's samples that are found.\n"
                  + _PRF_PARAMS.format(what="recall\n        (a class absent from y_true)"))
f1.__doc__ = ("F1 score 2 tp / (2 tp + fp + fn), the harmonic mean of precision and recall.\n"
              + _PRF_PARAMS.format(what="F1\n        (a class neither present nor predicted)"))


def confusion_matrix(y_true, y_pred, labels=None):
    """Count matrix C where C[i, j] is the number of samples of true class i predicted as j.

    Parameters
    ----------
    y_true, y_pred : array_like of shape (n_samples,)
        True and predicted class labels.
    labels : array_like of shape (n_labels,), optional
        Classes indexing the rows and columns, in this order.  Samples whose
        true or predicted label is not listed are ignored.  Default: the
        sorted union of the labels in `y_true` and `y_pred`.

    Returns
    -------
    ndarray of shape (n_labels, n_labels), int64
        Rows are true classes, columns predicted classes (as scikit-learn).
    """
    y_true, y_pred = _check_pair(y_true, y_pred)
    if labels is None:
        labels, codes = _classes_and_codes(np.concatenate([y_true, y_pred]))
        t, p = codes[:y_true.size], codes[y_true.size:]
    else:
        labels = _check_labels(labels, "labels")
        if _is_text(labels) != _is_text(y_true):
            raise ValueError("labels and y_true mix string and numeric labels")
        if _unique(labels).size != labels.size:
            raise ValueError("labels: contains duplicates")
        t, t_found = _encode(y_true, labels)
        p, p_found = _encode(y_pred, labels)
        if not t_found.any():
            raise ValueError("labels: none of the given labels occurs in y_true")
        keep = t_found & p_found
        t, p = t[keep], p[keep]
    k = labels.size
    counts = np.bincount(t * k + p, minlength=k * k)
    return counts.reshape(k, k).astype(np.int64, copy=False)


# ---------------------------------------------------------------------- ROC

def _score_groups(is_pos, score):
    """Positive and negative counts per distinct score, scores ascending."""
    distinct, group = np.unique(score, return_inverse=True)
    group = group.reshape(-1)
    pos = np.bincount(group[is_pos], minlength=distinct.size)
    neg = np.bincount(group[~is_pos], minlength=distinct.size)
    return distinct, pos, neg


def _binary_auc(is_pos, score):
    """Area under the ROC curve of the binary problem (is_pos, score).

    Mann-Whitney form: the probability that a random positive scores above a
    random negative, ties counting one half.  This is exactly the trapezoid
    area under the ROC curve with tied scores forming one diagonal segment,
    i.e. scikit-learn's value; it is computed from integer counts, so the only
    rounding is the final division.
    """
    _, pos, neg = _score_groups(is_pos, score)
    n_pos, n_neg = int(pos.sum()), int(neg.sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("ROC AUC is undefined: y_true needs both positive and "
                         "negative samples for every class scored")
    neg_below = np.cumsum(neg) - neg
    twice_wins = 2 * np.dot(pos, neg_below) + np.dot(pos, neg)
    return float(twice_wins / (2.0 * n_pos * n_neg))


def roc_curve(y_true, y_score, pos_label=1, drop_intermediate=True):
    """Receiver operating characteristic curve of a binary problem.

    Parameters
    ----------
    y_true : array_like of shape (n_samples,)
        True labels, at most two distinct values.
    y_score : array_like of shape (n_samples,)
        Scores; higher means more likely positive (probabilities, logits...).
    pos_label : label, default 1
        The positive class.
    drop_intermediate : bool, default True
        Drop thresholds on straight segments of the curve (they do not change
        its shape or area), as scikit-learn does by default.

    Returns
    -------
    fpr, tpr : ndarray of shape (n_thresholds,), float64
        False and true positive rates of the rule ``score >= thresholds[i]``;
        both increase from 0 to 1.
    thresholds : ndarray of shape (n_thresholds,), float64
        Decreasing; ``thresholds[0]`` is +inf (nothing predicted positive).

    Raises
    ------
    ValueError
        If `y_true` has more than two classes or lacks positives or negatives.
    """
    y_true = _check_labels(y_true, "y_true")
    y_score = _check_score(y_score, y_true.size)
    if y_score.ndim != 1:
        raise ValueError(f"y_score: expected a 1-D array, got shape {y_score.shape}")
    if _unique(y_true).size > 2:
        raise ValueError("roc_curve: y_true has more than two classes")
    is_pos = y_true == pos_label
    distinct, pos, neg = _score_groups(is_pos, y_score)
    # One point per distinct score, from the highest threshold down.
    tps = np.cumsum(pos[::-1])
    fps = np.cumsum(neg[::-1])
    thresholds = distinct[::-1].astype(np.float64)
    if tps[-1] == 0 or fps[-1] == 0:
        raise ValueError(f"roc_curve is undefined: y_true has no "
                         f"{'positive' if tps[-1] == 0 else 'negative'} sample "
                         f"(pos_label={pos_label!r})")
    if drop_intermediate and tps.size > 2:
        # A point is intermediate when both neighbouring segments have the
        # same direction (second differences zero in fps and tps).
        bend = (np.diff(fps, 2) != 0) | (np.diff(tps, 2) != 0)
        keep = np.concatenate([[True], bend, [True]])
        tps, fps, thresholds = tps[keep], fps[keep], thresholds[keep]
    fpr = np.concatenate([[0.0], fps / fps[-1]])
    tpr = np.concatenate([[0.0], tps / tps[-1]])
    thresholds = np.concatenate([[np.inf], thresholds])
    return fpr, tpr, thresholds


def roc_auc(y_true, y_score, multi_class="ovr", average="macro", labels=None):
    """Area under the ROC curve, binary or one-vs-rest multiclass.

    Parameters
    ----------
    y_true : array_like of shape (n_samples,)
        True labels.
    y_score : array_like of shape (n_samples,) or (n_samples, n_classes)
        Binary: the score of the greater label (1-D), or an (n, 2) array whose
        column 1 is used.  Multiclass: one column per class, classes in sorted
        order (or in the order of `labels`).  Any real scores work;
        probabilities need not sum to one.
    multi_class : {"ovr"}, default "ovr"
        One-vs-rest: the AUC of each class against all the others.
    average : {"macro", "weighted", "micro"} or None, default "macro"
        How multiclass per-class AUCs are combined: plain mean, mean weighted
        by class prevalence, a single AUC over the flattened one-hot targets
        and scores, or None for the per-class array.  Ignored for binary
        problems.
    labels : array_like of shape (n_classes,), optional
        The classes of the columns of a 2-D `y_score`.  Default: the sorted
        labels of `y_true`.

    Returns
    -------
    float or ndarray of shape (n_classes,)

    Raises
    ------
    ValueError
        On bad shapes, non-finite scores, or a class with no positive or no
        negative sample (the AUC is undefined; scikit-learn warns and returns
        NaN instead).
    """
    if multi_class != "ovr":
        raise ValueError(f"multi_class: only 'ovr' is supported, got {multi_class!r}")
    _check_average(average, ("macro", "weighted", "micro"))
    y_true = _check_labels(y_true, "y_true")
    y_score = _check_score(y_score, y_true.size)
    if labels is None:
        classes = _unique(y_true)
    else:
        classes = _check_labels(labels, "labels")
        if _is_text(classes) != _is_text(y_true):
            raise ValueError("labels and y_true mix string and numeric labels")
        if _unique(classes).size != classes.size:
            raise ValueError("labels: contains duplicates")
    code, found = _encode(y_true, classes)
    if not found.all():
        raise ValueError("y_true contains labels that are not in `labels`")
    k = classes.size
    if k < 2:
        raise ValueError("ROC AUC is undefined: y_true has a single class")

    if y_score.ndim == 1:
        if k != 2:
            raise ValueError(f"y_score is 1-D but there are {k} classes; pass one column per class")
        return _binary_auc(code == 1, y_score)
    if y_score.shape[1] != k:
        raise ValueError(f"y_score has {y_score.shape[1]} columns but there are {k} classes")
    if k == 2:
        return _binary_auc(code == 1, y_score[:, 1])

    onehot = code[:, None] == np.arange(k)
    if average == "micro":
        return _binary_auc(onehot.ravel(), y_score.ravel())
    # One rank computation per class: the loop is over classes, not samples.
    aucs = np.array([_binary_auc(onehot[:, c], y_score[:, c]) for c in range(k)])
    if average is None:
        return aucs
    weights = onehot.sum(axis=0) if average == "weighted" else None
    return float(np.average(aucs, weights=weights))
