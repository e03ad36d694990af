"""The guard that a change of a default breaks no task: on a small competition in each task's shape (tests/
synthetic.py: multiclass; imbalanced binary; one or two digits on a non-square canvas as multilabel tags; ordinal
grades as regression), described through the data.* keys only and trained from scratch with the defaults of
configs/exp001.yaml (Ranger, one-cycle, its learning rate and augmentation, the head started at the prior), the
model must beat a scikit-learn logistic regression on the raw pixels, on the same validation rows, with the task's
metric. What differs from exp001 is what a CPU needs (a tiny model, a small image size, five epochs, one fold) and
what anyone sets for digits (no flips).
"""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

import synthetic
from {{ cookiecutter.package_name }} import cli, config
from {{ cookiecutter.package_name }}.engine import scoring
from {{ cookiecutter.package_name }}.modeling import metrics

PROJECT = Path(cli.__file__).parents[2]  # src/<package>/cli.py -> the project, with its configs/
pytestmark = pytest.mark.e2e

CPU = """
model:
  backbone: test_resnet
  pretrained: false
  in_chans: 1
augment:
  image_size: 32
  hflip: false  # what a user sets for digits or text, as configs/demo.yaml does: a mirrored digit is another glyph
train:
  epochs: 5
folds:
  n_folds: 4
data:
  cache: memory
  num_workers: 0
tta:
  views: [identity]
wandb:
  mode: disabled
"""


# What a CPU needs besides, for masks: no decode cache (masks lie on the original pixels), a small U-Net decoder, and
# smaller, more steps: a mask is learnt later than a class (Dice stays at the empty masks' for ~100 steps).
CPU_SEGMENTATION = """
data:
  cache: none
model:
  decoder_channels: [32, 16, 16, 8, 8]
train:
  epochs: 12
  batch_size: 16
"""


def guard_config(root: Path, task: str) -> Path:
    """configs/guard.yaml: exp001.yaml, the competition's data.* keys, and the CPU settings."""
    keys = synthetic.write_competition(root / "data", task)
    where = {"output_dir": str(root / "outputs"), "folds": {"path": str(root / "data" / "folds.csv")}}
    cpu = [OmegaConf.create(CPU), OmegaConf.create(CPU_SEGMENTATION if task == "segmentation" else "{}")]
    conf = OmegaConf.merge(OmegaConf.create(keys), *cpu, where)
    path = root / "configs" / "guard.yaml"
    path.parent.mkdir(parents=True)
    path.write_text(f"base: {PROJECT / 'configs' / 'exp001.yaml'}\n" + OmegaConf.to_yaml(conf))
    return path


@pytest.mark.parametrize("task", synthetic.SHAPES)
def test_defaults_beat_logistic_regression_on_raw_pixels(tmp_path, task):
    path = guard_config(tmp_path, task)
    for command in (["folds"], ["train", "--fold", "0"]):
        assert cli.main([command[0], "-c", str(path), *command[1:]]) == 0
    cfg = config.load(path)
    assert cfg.optim.name == "ranger" and cfg.optim.schedule == "one_cycle" and cfg.model.init_head == "prior"
    cv = json.loads((tmp_path / "outputs" / "guard" / "cv.json").read_text())
    model, baseline = cv["folds"]["0"], synthetic.pixel_baseline(cfg, 0)
    better = model > baseline if metrics.get_metric(cv["metric"]).higher_is_better else model < baseline
    assert better, f"{task}: {cv['metric']} {model:.4f} with the defaults, {baseline:.4f} for logistic regression"
    if task == "regression":  # ordinal grades scored with QWK: rounded at cuts tuned on OOF, in cv.json and the file
        check_ordinal_submission(path, cv)


def check_ordinal_submission(path: Path, cv: dict) -> None:
    levels, cuts = np.array(cv["ordinal"]["levels"]), np.array(cv["ordinal"]["cuts"])
    assert levels.tolist() == [0, 1, 2, 3, 4] and cv["cv_ordinal"] >= cv["cv"]
    for command in (["predict", "--allow-partial"], ["make-submission"]):  # fold 0 alone was trained
        assert cli.main([command[0], "-c", str(path), *command[1:]]) == 0
    root = path.parents[1]
    sub = pd.read_csv(root / "submissions" / "guard.csv")
    pred = pd.read_csv(root / "outputs" / "guard" / "test_pred.csv").set_index("image_id").loc[sub["image_id"]]
    expected = scoring.apply_cuts(np.clip(pred["grade"].to_numpy(), 0, 4), levels, cuts)
    np.testing.assert_array_equal(sub["grade"], expected)
