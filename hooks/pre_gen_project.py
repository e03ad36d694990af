"""Validate the answers before anything is generated: one line naming the prompt, the value and what is allowed.

Exit status 1 makes cookiecutter raise FailedHookException and remove the half-made folder.
"""

import json
import keyword
import re
import sys

# The answers as JSON inside a raw string literal, so that this file is Python before it is rendered too (ruff lints
# it). JSON escapes every quote and backslash inside its strings and never has three quotes in a row, so no answer
# (quotes, backslashes, newlines, a user's path) can end the literal early.
ANSWERS = json.loads(r"""{{ cookiecutter | jsonify }}""")

# Names the generated package must not take: it would shadow a dependency or a module the code imports.
# fmt: off
DEPENDENCIES = {
    "torch", "torchvision", "timm", "albumentations", "sklearn", "scipy", "numpy", "pandas", "PIL", "omegaconf",
    "pytorch_optimizer", "iterstrat", "wandb", "matplotlib", "tqdm", "kaggle", "cookiecutter", "pytest", "ruff",
    "yaml", "six", "test", "tests", "src", "configs", "scripts", "data", "outputs",
}
# fmt: on
# Which metrics make sense for which task (the generated metrics registry holds the same table; a test checks it).
METRIC_TASKS = {
    "auto": {"multiclass", "binary", "multilabel", "regression", "segmentation"},
    "accuracy": {"multiclass", "binary", "multilabel"},
    "balanced_accuracy": {"multiclass", "binary"},
    "f1_macro": {"multiclass", "binary", "multilabel"},
    "f1_micro": {"multiclass", "multilabel"},  # binary micro-F1 equals accuracy: the registry leaves it out
    "roc_auc": {"multiclass", "binary", "multilabel"},
    "log_loss": {"multiclass", "binary", "multilabel"},
    "qwk": {"multiclass", "regression"},
    "rmse": {"regression"},
    "mae": {"regression"},
    "map_at_3": {"multiclass"},
    "dice": {"segmentation"},  # Kaggle's mean Dice per image and class (empty on empty = 1)
    "iou": {"segmentation"},
    "miou": {"segmentation"},  # per-class IoU over the whole set
}
# Free-text answers are escaped where they are rendered (pyproject.toml strings, the README's Markdown title, a
# Makefile comment; answers in configs/*.yaml are quoted), so any one line of printable text is fine. What no one-line
# field can hold is refused: nothing, line breaks, tabs and other control or invisible characters (str.isprintable()),
# which TOML and YAML strings could not hold unescaped either.
FREE_TEXT = ("competition_name", "author")


def fail(prompt: str, value: object, allowed: str) -> None:
    print(f"ERROR: {prompt}={value!r} is not allowed: {allowed}")
    sys.exit(1)


def is_number(text: str) -> bool:
    """ASCII digits only: str.isdigit() also takes '²' or '٢٥٦', which int() rejects or YAML reads as text. Leading
    zeros are fine: the configs render the value through Jinja's int filter (YAML would read 010 as octal 8)."""
    return re.fullmatch(r"[0-9]+", text) is not None


def check() -> None:
    a = ANSWERS
    for key in FREE_TEXT:
        if not a[key].strip() or not a[key].isprintable():
            fail(key, a[key], "expected one line of printable text (no line breaks, tabs or control characters)")
    slug = a["competition_id"]
    if not re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", slug) or len(slug) > 60:
        fail("competition_id", slug, "expected a Kaggle slug: lowercase letters, digits and single hyphens")
    if not re.fullmatch(r"[a-z0-9][a-z0-9._-]*", a["project_slug"]):
        fail("project_slug", a["project_slug"], "expected a folder name of lowercase letters, digits, '.', '_', '-'")
    pkg = a["package_name"]
    if not re.fullmatch(r"[a-z_][a-z0-9_]*", pkg) or keyword.iskeyword(pkg):
        fail("package_name", pkg, "expected a lowercase Python identifier (letters, digits, underscores)")
    if pkg in DEPENDENCIES or pkg in sys.stdlib_module_names:
        fail("package_name", pkg, "it would shadow a standard-library module or a dependency; pick another name")
    if a["metric"] not in METRIC_TASKS:
        fail("metric", a["metric"], f"expected one of {sorted(METRIC_TASKS)}")
    if a["task"] not in METRIC_TASKS[a["metric"]]:
        valid = sorted(m for m, tasks in METRIC_TASKS.items() if a["task"] in tasks)
        fail("metric", a["metric"], f"not valid for task={a['task']}; valid: {', '.join(valid)}")
    if not is_number(a["image_size"]) or int(a["image_size"]) <= 0 or int(a["image_size"]) % 8:
        fail("image_size", a["image_size"], "expected a positive multiple of 8 (e.g. 224, 256, 384)")
    if not is_number(a["n_folds"]) or not 2 <= int(a["n_folds"]) <= 20:
        fail("n_folds", a["n_folds"], "expected a whole number from 2 to 20")
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", a["backbone"]):
        fail("backbone", a["backbone"], "expected a timm model name such as efficientnet_b0 or convnext_tiny.fb_in22k")
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", a["wandb_project"]):
        fail("wandb_project", a["wandb_project"], "expected letters, digits, '.', '_', '-'")


check()
