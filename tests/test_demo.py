"""`make demo` in a render runs the render's own task end to end: a multilabel render demos multilabel (tags made
from the digit), a regression render regression (the digit's value), a segmentation render masks of pasted digits,
from the demo data to a locally scored submission, through the render's own Makefile and CLI."""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import run

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(shutil.which("make") is None, reason="needs make")]
DEMO_TIMEOUT_S = 1500  # 2 folds x 3 epochs and six CLI starts: ~1.5 min of CPU, minutes more on a busy machine
# (task, metric the demo reports, a score only a model that learnt reaches: the mean digit predicted for every image
# has RMSE ~2.9; even/odd, big, round tags predicted at chance have micro-F1 ~0.5; empty masks everywhere score a Dice
# of ~0.49 on the segmentation demo), and the epochs it needs (segmentation: its demo's own 12, a mask learns later)
CASES = [
    ("multilabel", "f1_micro", lambda s: s > 0.8, 3),
    ("regression", "rmse", lambda s: s < 1.5, 3),
    ("segmentation", "dice", lambda s: s > 0.6, 12),
]


@pytest.mark.parametrize(("task", "metric", "learnt", "epochs"), CASES, ids=[c[0] for c in CASES])
def test_make_demo_runs_the_renders_task(rendered, tmp_path, task, metric, learnt, epochs):
    project = Path(shutil.copytree(rendered(task=task, n_folds="2"), tmp_path / "project"))
    # The package is importable from src/ (as `make setup` would install it); threads=1: on a busy shared machine one
    # torch thread trains many times faster than two that wait for each other.
    command = ["make", "--no-print-directory", "demo", f"PY={sys.executable}", f"ARGS=threads=1 train.epochs={epochs}"]
    proc = run(command, cwd=project, timeout=DEMO_TIMEOUT_S, env={"PYTHONPATH": str(project / "src")})
    assert proc.returncode == 0, f"make demo failed:\n{proc.stdout[-6000:]}\n{proc.stderr[-3000:]}"

    train = pd.read_csv(project / "data" / "demo" / "train.csv", dtype=str, keep_default_na=False)
    if task == "multilabel":
        tags = {t for cell in train["label"] for t in cell.split()}
        assert tags == {"even", "odd", "big", "round"}, tags
    elif task == "segmentation":  # Kaggle's long run-length table, a row per image and class
        assert list(train.columns) == ["id", "ClassId", "EncodedPixels"] and set(train["ClassId"]) == {"1", "2", "3"}
    else:
        assert sorted(set(train["label"].astype(float))) == [float(d) for d in range(10)]
    cv = json.loads((project / "outputs" / "demo" / "cv.json").read_text(encoding="utf-8"))
    assert cv["metric"] == metric and cv["complete"]
    assert (project / "submissions" / "demo.csv").is_file()
    scored = re.search(rf"submissions/demo\.csv: {metric} = ([0-9.]+)", proc.stdout)
    assert scored, proc.stdout[-3000:]
    assert learnt(float(scored.group(1))), scored.group(0)
