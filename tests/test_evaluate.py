import numpy as np
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
)

from audiovit.evaluate import format_table, metrics, most_confused


def test_metrics_match_scikit_learn():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 200)
    p = np.where(rng.random(200) < 0.6, y, rng.integers(0, 4, 200))
    m = metrics(y, p, ["a", "b", "c", "d"])
    assert m["accuracy"] == accuracy_score(y, p)
    assert np.isclose(m["balanced_accuracy"], balanced_accuracy_score(y, p))
    assert np.isclose(m["macro_f1"], f1_score(y, p, average="macro"))
    prec, rec, f1, sup = precision_recall_fscore_support(y, p, zero_division=0)
    for i, lb in enumerate("abcd"):
        r = m["per_class"][lb]
        assert np.allclose(
            [r["precision"], r["recall"], r["f1"], r["support"]], [prec[i], rec[i], f1[i], sup[i]]
        )
    assert m["confusion_matrix"] == confusion_matrix(y, p).tolist() and m["n"] == 200
    table = format_table(m)
    assert "balanced accuracy" in table and table.count("\n") == 5


def test_absent_classes_do_not_count_as_zero():
    m = metrics([0, 0, 1], [0, 0, 1], ["a", "b", "c"])
    assert m["accuracy"] == m["balanced_accuracy"] == m["macro_f1"] == 1.0
    assert most_confused(metrics([0, 0, 1, 1, 1], [1, 1, 0, 1, 1], ["a", "b"])) == [
        ("a", "b", 2),
        ("b", "a", 1),
    ]
