"""augment.mean/std: fold: each fold's training images' statistics, computed once when it trains, kept in the run
folder, and read back by every stage that normalises (predict, export)."""

import json

import cv2
import numpy as np
import pandas as pd
import pytest

from {{ cookiecutter.package_name }} import cli, config, predict
from {{ cookiecutter.package_name }}.core.errors import UserError
from {{ cookiecutter.package_name }}.data import problem as problem_module
from {{ cookiecutter.package_name }}.data.problem import fold_normalization, load_problem
from {{ cookiecutter.package_name }}.engine import inference

from conftest import small_config

FOLD = ["augment.mean=fold", "augment.std=fold"]


def direct_statistics(paths, size: int) -> tuple[np.ndarray, np.ndarray]:
    """numpy over the images, each read as grayscale and resized to the training size (bilinear, as the
    prediction-time Resize)."""
    images = [cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) for p in paths]
    resized = [cv2.resize(im, (size, size), interpolation=cv2.INTER_LINEAR).ravel() for im in images]
    pixels = np.concatenate(resized).astype(np.float64) / 255.0
    return np.array([pixels.mean()]), np.array([pixels.std()])


@pytest.mark.e2e
def test_fold_statistics_equal_numpy_are_cached_and_read_back_by_predict(small_project, monkeypatch):
    root = small_project
    cfg = small_config(root, "foldnorm", FOLD)
    problem = load_problem(cfg)
    path = root / "configs" / "foldnorm.yaml"
    assert cli.main(["train", "-c", str(path), *FOLD]) == 0
    stats = {}
    for k in (0, 1):
        saved = json.loads(cfg.run.fold(k).normalization.read_text())
        rows = problem.rows(k, valid=False)
        mean, std = direct_statistics([problem.paths[i] for i in rows], cfg.augment.image_size)
        assert saved["mean"] == pytest.approx(mean.tolist(), abs=1e-9)
        assert saved["std"] == pytest.approx(std.tolist(), abs=1e-9)
        assert saved["n_images"] == len(rows) and saved["image_size"] == cfg.augment.image_size
        stats[k] = saved["mean"]
    assert stats[0] != stats[1]  # each fold its own
    # Read back, never recomputed: predict re-predicts the OOF rows as training did, with each fold's statistics.
    monkeypatch.setattr(problem_module, "fold_statistics", lambda *a: pytest.fail("recomputed"))
    assert fold_normalization(cfg, problem, 0)[0] == stats[0]
    trained = pd.read_csv(cfg.run.oof, dtype={"id": str}).sort_values("id").reset_index(drop=True)
    again = predict.predict_oof_tta(cfg).sort_values("id").reset_index(drop=True)
    cols = [c for c in trained.columns if c not in ("id", "fold")]
    assert np.abs(trained[cols].to_numpy() - again[cols].to_numpy()).max() < 1e-5
    load, feed = inference.fold_predictors(cfg, len(problem.classes))
    for k in (1, 0):  # each fold's model is fed with its own statistics
        load(k)
        assert feed.normalize.mean.flatten().tolist() == pytest.approx([255 * m for m in stats[k]])
    # Another image size: recomputed for it.
    monkeypatch.undo()
    bigger = small_config(root, "foldnorm", [*FOLD, "augment.image_size=24"])
    mean24, _ = fold_normalization(bigger, load_problem(bigger), 0)
    rows = problem.rows(0, valid=False)
    assert mean24 == pytest.approx(direct_statistics([problem.paths[i] for i in rows], 24)[0].tolist(), abs=1e-9)


def test_fold_goes_to_both_mean_and_std(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("{}\n")
    assert config.load(path, FOLD).augment.mean == "fold"
    with pytest.raises(UserError, match="'fold' goes to both"):
        config.load(path, ["augment.mean=fold"])
    with pytest.raises(UserError, match="expected numbers"):
        config.load(path, ["augment.mean=grey", "augment.std=grey"])
