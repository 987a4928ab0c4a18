"""fastnn.metrics against sklearn.metrics on random seeded inputs."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from sklearn import metrics as skm

from fastnn import metrics as fm

SEEDS = range(5)


def _labels(seed, n, k, missing_in_pred=False):
    """Random (y_true, y_pred) over k classes; optionally y_pred misses some classes."""
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, k, n)
    pred_classes = k - 1 if missing_in_pred and k > 2 else k
    y_pred = np.where(rng.random(n) < 0.5, y_true, rng.integers(0, pred_classes, n))
    y_pred = np.minimum(y_pred, pred_classes - 1)
    return y_true, y_pred


def _probabilities(rng, n, k):
    """Rows that sum to one, from small integer counts, so many scores tie."""
    counts = rng.integers(0, 3, (n, k)) + (rng.integers(0, k, n)[:, None] == np.arange(k))
    counts[counts.sum(axis=1) == 0, 0] = 1
    return counts / counts.sum(axis=1, keepdims=True)


# ------------------------------------------------------ accuracy, P/R/F1, CM

@pytest.mark.filterwarnings("ignore:A single label was found")
@pytest.mark.parametrize("seed", range(2))
@pytest.mark.parametrize("n,k,missing", [(1, 2, False), (7, 2, False), (60, 3, False),
                                         (60, 3, True), (200, 6, True)])
def test_label_metrics_match_sklearn(seed, n, k, missing):
    y_true, y_pred = _labels(seed, n, k, missing)
    assert fm.accuracy(y_true, y_pred) == pytest.approx(skm.accuracy_score(y_true, y_pred))
    np.testing.assert_array_equal(fm.confusion_matrix(y_true, y_pred),
                                  skm.confusion_matrix(y_true, y_pred))
    averages = ["macro", "weighted", "micro", None]
    if np.union1d(y_true, y_pred).size <= 2:
        averages.append("binary")
    for ours, theirs in [(fm.precision, skm.precision_score), (fm.recall, skm.recall_score),
                         (fm.f1, skm.f1_score)]:
        for average in averages:
            for zd in (0.0, 1.0, np.nan):
                np.testing.assert_allclose(
                    ours(y_true, y_pred, average=average, zero_division=zd),
                    theirs(y_true, y_pred, average=average, zero_division=zd),
                    rtol=1e-12, err_msg=f"{ours.__name__} average={average} zd={zd}")


@pytest.mark.parametrize("y_true,y_pred,pos_label", [
    ([-1, 1, 1, -1, 1], [1, 1, -1, -1, 1], 1),
    ([-1, 1, 1, -1, 1], [1, 1, -1, -1, 1], -1),
    (["cat", "dog", "dog"], ["dog", "dog", "cat"], "cat"),
    ([0, 0, 0], [0, 0, 0], 1),           # positive class absent: all 0/0
    ([1, 1, 1], [0, 0, 0], 1),           # never predicted: precision 0/0
    ([True, False, True], [True, True, True], True),
    ([0.0, 1.0, 1.0], [1.0, 1.0, 0.0], 1),
])
def test_binary_variants_match_sklearn(y_true, y_pred, pos_label):
    for ours, theirs in [(fm.precision, skm.precision_score), (fm.recall, skm.recall_score),
                         (fm.f1, skm.f1_score)]:
        assert ours(y_true, y_pred, pos_label=pos_label) == pytest.approx(
            theirs(y_true, y_pred, pos_label=pos_label, zero_division=0.0))


def test_string_labels_per_class_order():
    y_true = np.array(["b", "a", "c", "a"])
    y_pred = np.array(["a", "a", "c", "b"])
    np.testing.assert_allclose(fm.recall(y_true, y_pred, average=None),
                               skm.recall_score(y_true, y_pred, average=None))
    np.testing.assert_array_equal(fm.confusion_matrix(y_true, y_pred),
                                  skm.confusion_matrix(y_true, y_pred))


@pytest.mark.parametrize("values,dtype", [([-5, 0, 7], np.int16), ([-(2**40), 3, 2**40], np.int64),
                                          ([0, 200, 255], np.uint8), ([0, 2**63, 2**64 - 1], np.uint64)])
def test_integer_label_encodings(values, dtype):
    # Dense ranges use a lookup table, sparse ones np.unique: same results.
    y_true, y_pred = _labels(0, 40, 3)
    y_true, y_pred = (np.array(values, dtype=dtype)[y] for y in (y_true, y_pred))
    np.testing.assert_array_equal(fm.confusion_matrix(y_true, y_pred),
                                  skm.confusion_matrix(y_true, y_pred))
    np.testing.assert_allclose(fm.f1(y_true, y_pred, average=None),
                               skm.f1_score(y_true, y_pred, average=None))


@pytest.mark.parametrize("seed", SEEDS)
def test_confusion_matrix_labels_argument(seed):
    y_true, y_pred = _labels(seed, 50, 4)
    for labels in ([3, 1, 0, 2], [2, 0], [1, 7, 3]):
        np.testing.assert_array_equal(fm.confusion_matrix(y_true, y_pred, labels=labels),
                                      skm.confusion_matrix(y_true, y_pred, labels=labels))


def test_micro_equals_accuracy():
    y_true, y_pred = _labels(3, 100, 5, missing_in_pred=True)
    acc = fm.accuracy(y_true, y_pred)
    for fn in (fm.precision, fm.recall, fm.f1):
        assert fn(y_true, y_pred, average="micro") == pytest.approx(acc)


# ---------------------------------------------------------------------- ROC

@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("n", [2, 9, 300])
@pytest.mark.parametrize("decimals", [0, 6])  # 0: heavy ties
@pytest.mark.parametrize("drop", [True, False])
def test_roc_curve_matches_sklearn(seed, n, decimals, drop):
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, 2, n)
    y_true[:2] = [0, 1]
    y_score = np.round(rng.normal(size=n) + y_true, decimals)
    ours = fm.roc_curve(y_true, y_score, drop_intermediate=drop)
    theirs = skm.roc_curve(y_true, y_score, drop_intermediate=drop)
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a, b, rtol=1e-12)
    assert fm.roc_auc(y_true, y_score) == pytest.approx(skm.roc_auc_score(y_true, y_score), abs=1e-12)
    assert fm.roc_auc(y_true, y_score) == pytest.approx(skm.auc(theirs[0], theirs[1]), abs=1e-12)


def test_roc_curve_pos_label_and_label_values():
    y_true = np.array(["no", "yes", "yes", "no", "yes"])
    y_score = np.array([0.1, 0.9, 0.4, 0.4, 0.8])
    for a, b in zip(fm.roc_curve(y_true, y_score, pos_label="yes"),
                    skm.roc_curve(y_true, y_score, pos_label="yes")):
        np.testing.assert_allclose(a, b)
    assert fm.roc_auc(y_true, y_score) == pytest.approx(skm.roc_auc_score(y_true, y_score))


@pytest.mark.parametrize("seed", SEEDS)
def test_roc_auc_binary_two_columns(seed):
    rng = np.random.default_rng(seed)
    y_true = rng.choice([3, 8], 40)
    proba = _probabilities(rng, 40, 2)
    expected = skm.roc_auc_score(y_true, proba[:, 1])
    assert fm.roc_auc(y_true, proba) == pytest.approx(expected, abs=1e-12)
    assert fm.roc_auc(y_true, proba[:, 1]) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("k", [3, 5])
@pytest.mark.parametrize("average", ["macro", "weighted", "micro", None])
def test_roc_auc_ovr_matches_sklearn(seed, k, average):
    rng = np.random.default_rng(seed)
    n = 120
    y_true = np.concatenate([np.arange(k), rng.integers(0, k, n - k)])
    proba = _probabilities(rng, n, k)
    np.testing.assert_allclose(
        fm.roc_auc(y_true, proba, average=average),
        skm.roc_auc_score(y_true, proba, multi_class="ovr", average=average), atol=1e-12)


def test_roc_auc_ovr_with_labels():
    # Our `labels` may be in any order (the column order); sklearn's must be sorted.
    rng = np.random.default_rng(0)
    y_true = rng.choice([10, 20, 30], 60)
    proba = _probabilities(rng, 60, 3)
    expected = skm.roc_auc_score(y_true, proba, multi_class="ovr", labels=[10, 20, 30], average=None)
    np.testing.assert_allclose(fm.roc_auc(y_true, proba[:, [0, 2, 1]], labels=[10, 30, 20], average=None),
                               expected[[0, 2, 1]])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(-3, 3)), min_size=2, max_size=40))
def test_roc_auc_hypothesis_ties(pairs):
    y_true = np.array([p[0] for p in pairs], dtype=int)
    y_score = np.array([p[1] for p in pairs], dtype=float)
    if y_true.min() == y_true.max():
        with pytest.raises(ValueError, match="undefined"):
            fm.roc_auc(y_true, y_score)
        return
    assert fm.roc_auc(y_true, y_score) == pytest.approx(skm.roc_auc_score(y_true, y_score), abs=1e-12)


# ------------------------------------------------------------------- errors

@pytest.mark.parametrize("call,match", [
    (lambda: fm.accuracy([0, 1], [0, 1, 1]), "different lengths"),
    (lambda: fm.accuracy([], []), "empty"),
    (lambda: fm.accuracy([0.0, np.nan], [0, 1]), "NaN"),
    (lambda: fm.accuracy([0.5, 1.0], [0, 1]), "integral"),
    (lambda: fm.accuracy([[0, 1]], [[0, 1]]), "1-D"),
    (lambda: fm.accuracy(["a", "b"], [0, 1]), "mix string and numeric"),
    (lambda: fm.precision([0, 1], [0, 1], average="samples"), "average"),
    (lambda: fm.recall([0, 1, 2], [0, 1, 2]), "at most two classes"),
    (lambda: fm.f1([0, 2], [0, 2], pos_label=1), "pos_label"),
    (lambda: fm.f1([0, 1], [0, 1], zero_division=0.5), "zero_division"),
    (lambda: fm.f1([0, 1], [0, 1], zero_division="warn"), "zero_division"),
    (lambda: fm.confusion_matrix([0, 1], [0, 1], labels=[5]), "none of the given labels"),
    (lambda: fm.confusion_matrix([0, 1], [0, 1], labels=[1, 1]), "duplicates"),
    (lambda: fm.roc_auc([1, 1, 1], [0.1, 0.2, 0.3]), "undefined"),
    (lambda: fm.roc_auc([0, 1], [0.1, np.nan]), "NaN"),
    (lambda: fm.roc_auc([0, 1, 2], [0.1, 0.2, 0.3]), "1-D"),
    (lambda: fm.roc_auc([0, 1, 2], np.ones((3, 4))), "columns"),
    (lambda: fm.roc_auc([0, 1], [0.1, 0.2], multi_class="ovo"), "ovr"),
    (lambda: fm.roc_auc([0, 1, 2], np.eye(3), average="binary"), "average"),
    (lambda: fm.roc_auc([0, 1, 2], np.eye(3), labels=[0, 1, 3]), "not in `labels`"),
    (lambda: fm.roc_curve([0, 1, 2], [0.1, 0.2, 0.3]), "more than two classes"),
    (lambda: fm.roc_curve([0, 0], [0.1, 0.2]), "no positive"),
    (lambda: fm.roc_curve([2, 5], [0.1, 0.2]), "no positive"),
])
def test_bad_input_raises_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()
