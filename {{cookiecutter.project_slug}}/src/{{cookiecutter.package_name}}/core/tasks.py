"""The task types every stage handles, and what follows from a task alone."""

from __future__ import annotations

TASKS = ("multiclass", "binary", "multilabel", "regression")
SIGMOID_TASKS = ("binary", "multilabel")  # independent sigmoid outputs
CLASSIFICATION_TASKS = ("multiclass", "binary", "multilabel")


def num_outputs(task: str, n_classes: int) -> int:
    """Logits per image: one per class (multiclass) or label (multilabel), one for binary and regression."""
    return n_classes if task in ("multiclass", "multilabel") else 1
