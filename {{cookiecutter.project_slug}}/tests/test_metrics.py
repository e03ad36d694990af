"""Every metric against scikit-learn (or a hand count), on every task it is registered for."""

from __future__ import annotations

import ast
import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from {{ cookiecutter.package_name }}.core.errors import UserError
from {{ cookiecutter.package_name }}.modeling import metrics

N, C, L = 60, 4, 3
MASK = (6, 3, 9, 7)  # segmentation: N images, C classes, H x W


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def make_data(task: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Predictions that are informative but imperfect, with every class / label value present."""
    rng = np.random.default_rng(seed)
    if task == "segmentation":  # blobs of varied size, some masks empty, class 2 empty in image 0 and 1
        y = (rng.random(MASK) < rng.uniform(0.0, 0.6, MASK[:2])[:, :, None, None]).astype(np.uint8)
        y[:2, 2] = 0
        y[3, 1] = 0
        return y, _sigmoid(rng.normal(size=MASK) + 1.5 * (2.0 * y - 1))
    if task == "multiclass":
        y = np.concatenate([np.arange(C), rng.integers(0, C, N - C)])
        z = rng.normal(size=(N, C)) + 1.5 * np.eye(C)[y]
        return y, np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    if task == "binary":
        y = np.concatenate([[0, 1], rng.integers(0, 2, N - 2)])
        return y, _sigmoid(rng.normal(size=N) + 1.5 * (2 * y - 1))
    if task == "multilabel":
        y = np.concatenate([np.zeros((1, L)), np.ones((1, L)), rng.integers(0, 2, (N - 2, L))]).astype(int)
        return y, _sigmoid(rng.normal(size=(N, L)) + 1.5 * (2 * y - 1))
    y = rng.integers(0, 5, N).astype(float)
    return y, y + rng.normal(scale=0.8, size=N)


def make_tied(task: str) -> tuple[np.ndarray, np.ndarray]:
    """Predictions from a few values only: ties in ranks and argmax, and probabilities of exactly 0.5."""
    rng = np.random.default_rng(2)
    y, _ = make_data(task, seed=2)
    if task == "multiclass":
        rows = [*itertools.permutations([0.4, 0.3, 0.2, 0.1]), *itertools.permutations([0.3, 0.3, 0.3, 0.1])]
        return y, np.array(rows)[rng.integers(0, len(rows), N)]
    if task == "regression":
        return y, y + rng.choice([-0.5, 0.0, 0.5, 1.5], N)
    return y, rng.choice([0.1, 0.3, 0.5, 0.7, 0.9], y.shape)


def _labels(y_pred: np.ndarray, task: str) -> np.ndarray:  # written here again, not metrics.to_labels
    if task == "multiclass":
        return np.array([int(np.argmax(row)) for row in y_pred])
    return (y_pred >= 0.5).astype(int)


def _qwk_ref(y_true: np.ndarray, y_pred: np.ndarray, task: str) -> float:
    if task == "multiclass":
        a, b, labels = y_true, _labels(y_pred, task), np.arange(y_pred.shape[1])
    else:
        a, b = np.rint(y_true).astype(int), np.rint(y_pred).astype(int)
        labels = np.arange(min(a.min(), b.min()), max(a.max(), b.max()) + 1)  # Kaggle: the whole rating range
    return skm.cohen_kappa_score(a, b, weights="quadratic", labels=labels)


def _log_loss_ref(y_true: np.ndarray, y_pred: np.ndarray, task: str) -> float:
    if task == "multiclass":
        return skm.log_loss(y_true, y_pred, labels=np.arange(y_pred.shape[1]))
    if task == "multilabel":  # mean binary log loss over the labels
        return float(np.mean([skm.log_loss(y_true[:, j], y_pred[:, j]) for j in range(y_true.shape[1])]))
    return skm.log_loss(y_true, y_pred)


def _roc_auc_ref(y_true: np.ndarray, y_pred: np.ndarray, task: str) -> float:
    if task == "multiclass":
        return skm.roc_auc_score(y_true, y_pred, multi_class="ovr", average="macro")
    return skm.roc_auc_score(y_true, y_pred, average="macro")


def _mask_ref(kind: str):
    """Per image and class, in plain Python: pixel counts of truth, prediction (>= 0.5) and both; empty on empty = 1."""

    def ref(y_true: np.ndarray, y_pred: np.ndarray, task: str) -> float:
        pairs, inter_c, union_c = [], {}, {}
        for n in range(y_true.shape[0]):
            for c in range(y_true.shape[1]):
                t = [int(v) for v in y_true[n, c].ravel()]
                p = [1 if v >= 0.5 else 0 for v in y_pred[n, c].ravel()]
                inter = sum(a * b for a, b in zip(t, p, strict=True))
                union = sum(max(a, b) for a, b in zip(t, p, strict=True))
                if kind == "dice":
                    pairs.append(1.0 if sum(t) + sum(p) == 0 else 2 * inter / (sum(t) + sum(p)))
                else:
                    pairs.append(1.0 if union == 0 else inter / union)
                inter_c[c] = inter_c.get(c, 0) + inter
                union_c[c] = union_c.get(c, 0) + union
        if kind == "miou":
            ious = [inter_c[c] / union_c[c] for c in union_c if union_c[c] > 0]
            return sum(ious) / len(ious) if ious else 1.0
        return sum(pairs) / len(pairs)

    return ref


def _map_ref(k: int):
    def ref(y_true: np.ndarray, y_pred: np.ndarray, task: str) -> float:
        total = 0.0
        for truth, row in zip(y_true, y_pred, strict=True):
            ranked = sorted(range(len(row)), key=lambda c: -row[c])  # Python's sort is stable
            if truth in ranked[:k]:
                total += 1.0 / (ranked.index(truth) + 1)
        return total / len(y_true)

    return ref


REFERENCE = {
    "accuracy": lambda y, p, t: skm.accuracy_score(y, _labels(p, t)),
    "balanced_accuracy": lambda y, p, t: skm.balanced_accuracy_score(y, _labels(p, t)),
    "f1": lambda y, p, t: skm.f1_score(y, _labels(p, t)),
    "f1_macro": lambda y, p, t: skm.f1_score(y, _labels(p, t), average="macro"),
    "f1_micro": lambda y, p, t: skm.f1_score(y, _labels(p, t), average="micro"),
    "roc_auc": _roc_auc_ref,
    "log_loss": _log_loss_ref,
    "qwk": _qwk_ref,
    "rmse": lambda y, p, t: np.sqrt(skm.mean_squared_error(y, p)),
    "mae": lambda y, p, t: skm.mean_absolute_error(y, p),
    "map_at_3": _map_ref(3),
    "map_at_5": _map_ref(5),
    "dice": _mask_ref("dice"),
    "iou": _mask_ref("iou"),
    "miou": _mask_ref("miou"),
}

EXPECTED_TASKS = {
    "accuracy": {"multiclass", "binary", "multilabel"},
    "balanced_accuracy": {"multiclass", "binary"},
    "f1": {"binary"},
    "f1_macro": {"multiclass", "binary", "multilabel"},
    "f1_micro": {"multiclass", "multilabel"},
    "roc_auc": {"multiclass", "binary", "multilabel"},
    "log_loss": {"multiclass", "binary", "multilabel"},
    "qwk": {"multiclass", "regression"},
    "rmse": {"regression"},
    "mae": {"regression"},
    "map_at_3": {"multiclass"},
    "map_at_5": {"multiclass"},
    "dice": {"segmentation"},
    "iou": {"segmentation"},
    "miou": {"segmentation"},
}

LOWER_IS_BETTER = {"log_loss", "rmse", "mae"}

PAIRS = [(m, t) for m in metrics.list_metrics() for t in metrics.get_metric(m).tasks]
TASKS = ("multiclass", "binary", "multilabel", "regression", "segmentation")


def test_every_metric_has_a_reference_and_a_task_table():
    assert set(metrics.list_metrics()) == set(REFERENCE) == set(EXPECTED_TASKS)


@pytest.mark.parametrize("name", metrics.list_metrics())
def test_valid_tasks(name):
    assert set(metrics.get_metric(name).tasks) == EXPECTED_TASKS[name]


@pytest.mark.parametrize(("name", "task"), PAIRS)
@pytest.mark.parametrize("variant", ["seed0", "seed1", "ties"])
def test_matches_reference(name, task, variant):
    y, p = make_tied(task) if variant == "ties" else make_data(task, seed=int(variant[-1]))
    expected = REFERENCE[name](y, p, task)
    assert metrics.score(name, y, p, task) == pytest.approx(expected, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize(("name", "task"), PAIRS)
def test_direction_flag(name, task):
    """Near-perfect predictions score better than shuffled ones, in the direction the flag states."""
    y, p = make_data(task)
    if task == "regression":
        good = y + 0.1
    elif task == "multiclass":
        good = 0.1 / (C - 1) * (1 - np.eye(C)[y]) + 0.9 * np.eye(C)[y]
    else:
        good = np.where(y == 1, 0.9, 0.1)
    bad = np.random.default_rng(3).permutation(p)
    s_good, s_bad = metrics.score(name, y, good, task), metrics.score(name, y, bad, task)
    assert metrics.get_metric(name).higher_is_better == (name not in LOWER_IS_BETTER)
    assert (s_good > s_bad) if metrics.get_metric(name).higher_is_better else (s_good < s_bad)


def perfect(y: np.ndarray, task: str) -> np.ndarray:
    """Predictions that are exactly right: one-hot rows (multiclass), the 0/1 targets, the values."""
    return np.eye(C)[y] if task == "multiclass" else y.astype(float)


@pytest.mark.parametrize("name", metrics.list_metrics())
def test_better_and_gain_follow_the_direction(name):
    """On two real scores of the metric (perfect and shuffled predictions), `better` and `gain` rank the perfect one
    first, whatever the direction; NaN is never better, and loses to any number."""
    metric = metrics.get_metric(name)
    task = metric.tasks[0]
    y, p = make_data(task)
    good = metrics.score(name, y, perfect(y, task), task)
    bad = metrics.score(name, y, np.random.default_rng(3).permutation(p), task)
    assert (good > bad) == metric.higher_is_better and good != bad  # the direction the registry states
    assert metric.better(good, bad) and not metric.better(bad, good) and not metric.better(good, good)
    assert metric.gain(good) > metric.gain(bad)
    assert metric.gain(good) - metric.gain(bad) == pytest.approx(abs(good - bad))  # the score itself, signed
    nan = float("nan")
    assert metric.better(bad, nan) and not metric.better(nan, bad) and not metric.better(nan, nan)
    assert metric.gain(nan) == -np.inf
    assert metric.direction == ("higher is better" if metric.higher_is_better else "lower is better")


def _direction_reads(path) -> list[str]:
    """Where a module reads `higher_is_better` other than to copy it into a record: any name, attribute, argument or
    string 'higher_is_better' except in a dict entry keyed "higher_is_better" (`{"higher_is_better": m.flag}`), in a
    keyword argument of that name (`Decisions(higher_is_better=m.flag)`) or as a record's field (`flag: bool` in a
    class body): there it is data, not a sign."""
    tree = ast.parse(path.read_text())
    stored = set()  # the nodes of the record entries, keywords and fields above
    for node in ast.walk(tree):
        parts = []
        if isinstance(node, ast.Dict):
            parts = [(k, v) for k, v in zip(node.keys, node.values, strict=True)
                     if isinstance(k, ast.Constant) and k.value == "higher_is_better"]  # fmt: skip
        elif isinstance(node, ast.keyword) and node.arg == "higher_is_better":
            parts = [(node,)]
        elif isinstance(node, ast.ClassDef):
            parts = [(f,) for f in node.body if isinstance(f, ast.AnnAssign) and f.value is None
                     and isinstance(f.target, ast.Name) and f.target.id == "higher_is_better"]  # fmt: skip
        stored |= {id(n) for part in parts for root in part for n in ast.walk(root)}
    names = {ast.Attribute: lambda n: n.attr, ast.Name: lambda n: n.id, ast.keyword: lambda n: n.arg,
             ast.arg: lambda n: n.arg, ast.Constant: lambda n: n.value}  # fmt: skip
    found = []
    for node in ast.walk(tree):
        get = names.get(type(node))
        if get and get(node) == "higher_is_better" and id(node) not in stored:
            found.append(node.lineno)
    return [f"{path.name}:{line}" for line in sorted(found)]


def test_only_the_metric_registry_turns_the_direction_into_a_sign():
    """Every comparison of scores goes through Metric.better / Metric.gain: outside modeling/metrics.py the flag
    appears only as data copied into a record (cv.json, export.json, decisions), never read to make a sign."""
    root = Path(metrics.__file__).parents[1]
    reads = [r for path in sorted(root.rglob("*.py")) if path != Path(metrics.__file__)
             for r in _direction_reads(path)]  # fmt: skip
    assert reads == []
    assert _direction_reads(Path(metrics.__file__))  # the check sees the flag where it is read


def test_the_direction_check_catches_a_hand_written_sign(tmp_path):
    src = tmp_path / "stage.py"
    src.write_text(
        'info = {"metric": "rmse", "higher_is_better": get_metric("rmse").higher_is_better}\n'  # data: fine
        "d = Decisions(metric=name, higher_is_better=metric.higher_is_better)\n"  # data: fine
        "class Record:\n    higher_is_better: bool\n"  # a record's field: fine
        'sign = 1.0 if info["higher_is_better"] else -1.0\n'
        "sign = 1.0 if metric.higher_is_better else -1.0\n"
        "def rank(scores, higher_is_better):\n    return sorted(scores, reverse=higher_is_better)\n"
        "class Record:\n    def key(self, s):\n        return s if self.higher_is_better else -s\n"
    )
    assert _direction_reads(src) == [f"stage.py:{n}" for n in (5, 6, 7, 8, 11)]


WRONG_PAIRS = [(m, t) for m in metrics.list_metrics() for t in TASKS if t not in metrics.get_metric(m).tasks]


@pytest.mark.parametrize(("name", "task"), WRONG_PAIRS)
def test_wrong_task_is_a_user_error(name, task):
    y, p = make_data(task)
    with pytest.raises(UserError, match=rf"metric '{name}'.*task '{task}'") as exc:
        metrics.score(name, y, p, task)
    assert all(m in str(exc.value) for m in metrics.list_metrics(task))
    assert "\n" not in str(exc.value)


def test_list_metrics_by_task():
    assert metrics.list_metrics("regression") == ["mae", "qwk", "rmse"]
    assert "map_at_3" in metrics.list_metrics("multiclass")
    with pytest.raises(UserError, match="unknown task 'ranking'"):
        metrics.list_metrics("ranking")
    with pytest.raises(UserError, match="unknown metric 'auc'"):
        metrics.get_metric("auc")


def test_map_at_k_hand_computed():
    # true class at rank 1, 2, 3, 4, 5 of the same probability row
    row = [0.5, 0.3, 0.1, 0.06, 0.04]
    y, p = np.arange(5), np.array([row] * 5)
    assert metrics.score("map_at_3", y, p, "multiclass") == pytest.approx((1 + 1 / 2 + 1 / 3) / 5)
    assert metrics.score("map_at_5", y, p, "multiclass") == pytest.approx((1 + 1 / 2 + 1 / 3 + 1 / 4 + 1 / 5) / 5)
    # ties rank the lower class id first
    assert metrics.score("map_at_3", np.array([2]), np.array([[0.2, 0.4, 0.4]]), "multiclass") == pytest.approx(0.5)


def test_qwk_regression_with_a_gap_in_ratings():
    y = np.array([0, 0, 3, 3, 4, 4, 1.0])  # rating 2 never occurs; Kaggle's weights still count it
    p = np.array([0.2, 1.4, 2.6, 3.1, 4.4, 3.6, 0.9])
    ref = skm.cohen_kappa_score(np.rint(y), np.rint(p), weights="quadratic", labels=np.arange(5))
    assert metrics.score("qwk", y, p, "regression") == pytest.approx(ref)


def test_to_labels():
    probs = np.array([[0.2, 0.7, 0.1], [0.5, 0.2, 0.3]])
    assert metrics.to_labels(probs, "multiclass").tolist() == [1, 0]
    assert metrics.to_labels(np.array([0.5, 0.49]), "binary").tolist() == [1, 0]
    assert metrics.to_labels(np.array([0.7, 0.2]), "binary", threshold=0.8).tolist() == [0, 0]
    per_label = metrics.to_labels(np.array([[0.3, 0.3], [0.6, 0.6]]), "multilabel", threshold=np.array([0.2, 0.7]))
    assert per_label.tolist() == [[1, 0], [1, 0]]
    assert metrics.to_labels(np.array([1.4, 1.6, -0.2]), "regression").tolist() == [1, 2, 0]
    assert metrics.DEFAULT_THRESHOLD == 0.5


def test_threshold_is_used_by_label_metrics():
    y, p = np.array([1, 0]), np.array([0.5, 0.4999])
    assert metrics.score("accuracy", y, p, "binary") == 1.0


def test_accepts_torch_tensors_and_model_columns():
    y, p = make_data("binary")
    expected = skm.roc_auc_score(y, p)
    as_torch = metrics.score("roc_auc", torch.tensor(y), torch.tensor(p, requires_grad=True)[:, None], "binary")
    assert as_torch == pytest.approx(expected, rel=1e-6)
    y, p = make_data("multiclass")
    rounded = torch.tensor(p).bfloat16()
    expected = skm.accuracy_score(y, rounded.float().numpy().argmax(1))
    assert metrics.score("accuracy", torch.tensor(y), rounded, "multiclass") == pytest.approx(expected)


def test_bad_shapes_and_labels_are_user_errors():
    y, p = make_data("multiclass")
    with pytest.raises(UserError, match=r"metric 'accuracy' \(multiclass\) expects .*got shapes \(60,\) and \(60,\)"):
        metrics.score("accuracy", y, p[:, 0], "multiclass")
    with pytest.raises(UserError, match=r"class ids 0\.\.3"):
        metrics.score("accuracy", y + 1, p, "multiclass")
    with pytest.raises(UserError, match="0/1"):
        metrics.score("roc_auc", np.full(3, 2), np.full(3, 0.5), "binary")
    with pytest.raises(UserError, match="expects"):
        metrics.score("rmse", np.zeros(3), np.zeros(4), "regression")


def test_non_finite_predictions_give_nan():
    y, p = make_data("regression")
    p[0] = np.nan
    assert np.isnan(metrics.score("rmse", y, p, "regression"))


def test_auc_skips_classes_missing_from_a_fold():
    y, p = make_data("multilabel")
    y[:, 1] = 0  # label 1 has no positive in this fold: its AUC is undefined
    expected = np.mean([skm.roc_auc_score(y[:, j], p[:, j]) for j in (0, 2)])
    assert metrics.score("roc_auc", y, p, "multilabel") == pytest.approx(expected)
    assert np.isnan(metrics.score("roc_auc", np.zeros(4), np.linspace(0, 1, 4), "binary"))


def test_log_loss_clips_and_renormalises_rows_like_kaggle():
    y, p = make_data("multiclass")
    expected = skm.log_loss(y, p, labels=np.arange(C))
    assert metrics.score("log_loss", y, 0.5 * p, "multiclass") == pytest.approx(expected)
    zero = metrics.score("log_loss", np.array([1]), np.array([[1.0, 0.0]]), "multiclass")
    assert zero == pytest.approx(-np.log(1e-15))  # clipped, not infinite


# --- segmentation ----------------------------------------------------------------------------------------------------


def test_mask_metrics_hand_computed():
    """Two images, two classes of 2 x 2: a half overlap, an empty-on-empty pair (1), a false positive on an empty
    mask (0) and a miss (0)."""
    y = np.zeros((2, 2, 2, 2), np.uint8)
    p = np.zeros((2, 2, 2, 2))
    y[0, 0, 0] = 1  # truth: the top row; prediction: the left column -> |A&B| = 1, |A| = |B| = 2
    p[0, 0, :, 0] = 0.9
    p[1, 0, 0, 0] = 0.5  # a false positive on an empty mask (0.5 counts as positive)
    y[1, 1, 1, 1] = 1  # a missed pixel; image 0 class 1 is empty on empty
    assert metrics.score("dice", y, p, "segmentation") == pytest.approx((0.5 + 1 + 0 + 0) / 4)
    assert metrics.score("iou", y, p, "segmentation") == pytest.approx((1 / 3 + 1 + 0 + 0) / 4)
    # miou: class 0 sums to |A&B| = 1 over |A|B| = 3 + 1; class 1 to 0 over 1
    assert metrics.score("miou", y, p, "segmentation") == pytest.approx((1 / 4 + 0) / 2)


def test_miou_leaves_out_a_class_absent_from_truth_and_prediction():
    y, p = make_data("segmentation")
    y[:, 2], p[:, 2] = 0, 0.1
    two = metrics.score("miou", y[:, :2], p[:, :2], "segmentation")
    assert metrics.score("miou", y, p, "segmentation") == pytest.approx(two)
    assert metrics.score("miou", y * 0, p * 0, "segmentation") == 1.0  # nothing anywhere: nothing wrong
    assert metrics.score("dice", y * 0, p * 0, "segmentation") == 1.0


def test_mask_metrics_take_binary_masks_uint8_and_chunks(monkeypatch):
    y, p = make_data("segmentation")
    masks = (p >= 0.5).astype(np.float32)  # a post-processed mask, scored as 0./1. floats
    for name in ("dice", "iou", "miou"):
        expected = metrics.score(name, y, p, "segmentation")
        assert metrics.score(name, y, masks, "segmentation") == pytest.approx(expected)
        assert metrics.score(name, torch.tensor(y), torch.tensor(p), "segmentation") == pytest.approx(expected)
        monkeypatch.setattr(metrics, "MASK_CHUNK_VALUES", 1)  # one image per chunk
        assert metrics.score(name, y, p, "segmentation") == pytest.approx(expected)
        monkeypatch.undo()
    assert metrics.to_labels(p, "segmentation").dtype == np.uint8
    per_class = metrics.to_labels(np.full((1, 2, 1, 1), 0.6), "segmentation", threshold=np.array([0.5, 0.7]))
    assert per_class.ravel().tolist() == [1, 0]


def test_bad_mask_shapes_are_one_line_user_errors():
    y, p = make_data("segmentation")
    for yt, yp in ((y[:, 0], p[:, 0]), (y, p[:, :2]), (y[:0], p[:0])):
        with pytest.raises(UserError, match=r"metric 'dice' \(segmentation\) expects y_true \(N, C, H, W\)") as exc:
            metrics.score("dice", yt, yp, "segmentation")
        assert "\n" not in str(exc.value)
    with pytest.raises(UserError, match="0/1 masks"):
        metrics.score("iou", y * 255, p, "segmentation")
