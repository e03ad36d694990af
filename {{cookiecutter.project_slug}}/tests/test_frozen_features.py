"""train.frozen_features: a linear head on the frozen backbone's pooled features, cached per fold, scored on OOF
beside the fine-tuned model in cv.json."""

import copy
import json

import cv2
import numpy as np
import pandas as pd
import pytest
import torch

from {{ cookiecutter.package_name }} import cli, config
from {{ cookiecutter.package_name }}.core.errors import UserError
from {{ cookiecutter.package_name }}.data.cache import features_file, read_features
from {{ cookiecutter.package_name }}.data.problem import load_problem
from {{ cookiecutter.package_name }}.engine import probe
from {{ cookiecutter.package_name }}.engine.fold import setup_fold
from {{ cookiecutter.package_name }}.modeling import metrics

from conftest import TINY_SEGMENTATION, small_config, write_config


def count_backbone_passes(monkeypatch) -> list[int]:
    calls = []
    real = probe.pooled_features

    def counted(model, loader, *args):
        calls.append(1)
        return real(model, loader, *args)

    monkeypatch.setattr(probe, "pooled_features", counted)
    return calls


@pytest.mark.e2e
def test_probe_cv_reported_cache_reused_and_equal_to_a_direct_pass(small_project, monkeypatch):
    root = small_project
    on = ["train.frozen_features=true", f"data.cache_dir={root / 'cache'}"]
    cfg = small_config(root, "probe", on)
    calls = count_backbone_passes(monkeypatch)
    assert cli.main(["train", "-c", str(root / "configs" / "probe.yaml"), *on]) == 0
    assert len(calls) == 2  # one pass per fold (from scratch, each fold's seeded weights differ)

    # cv.json: the probe's OOF CV beside the fine-tuned one, equal to a direct scoring of its OOF rows
    cv = json.loads(cfg.run.cv.read_text())
    problem = load_problem(cfg)
    tables = [pd.read_csv(cfg.run.fold(k).frozen_oof, dtype={"id": str}) for k in (0, 1)]
    oof = pd.concat(tables, ignore_index=True)
    truth = problem.y[[problem.ids.index(i) for i in oof["id"]]]
    direct = metrics.score("accuracy", truth, oof[problem.classes].to_numpy(), "multiclass")
    assert cv["cv_frozen_features"] == pytest.approx(direct)
    assert set(cv["folds_frozen_features"]) == {"0", "1"} and "cv" in cv
    assert np.allclose(oof[problem.classes].sum(1), 1.0, atol=1e-5)
    assert direct > 0.2  # ten classes: far above chance even on random 16 px features

    # A second experiment on the same images and weights: no backbone pass, the same probe
    cfg2 = small_config(root, "probe2", on)
    assert cli.main(["train", "-c", str(root / "configs" / "probe2.yaml"), *on]) == 0
    assert len(calls) == 2
    again = pd.concat([pd.read_csv(cfg2.run.fold(k).frozen_oof, dtype={"id": str}) for k in (0, 1)])
    assert np.allclose(again[problem.classes].to_numpy(), oof[problem.classes].to_numpy(), atol=1e-6)

    # The fine-tuning is the one it would be without the probe (its random streams are left alone)
    off = [f"data.cache_dir={root / 'cache'}"]
    plain = small_config(root, "plain", off)
    assert cli.main(["train", "-c", str(root / "configs" / "plain.yaml"), *off]) == 0
    a, b = (pd.read_csv(c.run.oof, dtype={"id": str}).sort_values("id") for c in (cfg, plain))
    assert np.allclose(a[problem.classes].to_numpy(), b[problem.classes].to_numpy(), atol=1e-6)

    # The cached features of an image equal a direct pass of the backbone, classifier removed, on it
    s = setup_fold(cfg, 0)
    _, _, key, computed = probe.fold_features(cfg, s, 0)
    assert not computed and len(calls) == 2
    rows = read_features(features_file(cfg.data.cache_dir, key))
    path = problem.paths[int(problem.rows(0, valid=True)[0])]
    image = cv2.resize(cv2.imread(str(path), cv2.IMREAD_GRAYSCALE), (16, 16), interpolation=cv2.INTER_LINEAR)
    x = s.valid_loader.normalize(torch.from_numpy(image)[None, None].float())
    backbone = copy.deepcopy(s.model).eval()
    backbone.reset_classifier(0)
    with torch.no_grad():
        expected = backbone(x)[0].numpy()
    assert rows[str(path)].shape == expected.shape
    assert np.allclose(rows[str(path)], expected, atol=1e-5)


def test_fit_head_each_task():
    rng = np.random.default_rng(0)
    centers = np.array([[3.0, 0.0], [0.0, 3.0], [-3.0, -3.0]])
    y = np.repeat([0, 2], 50)  # class 1 absent from these rows
    x = centers[y] + rng.normal(size=(100, 2))
    w, b = probe.fit_head("multiclass", 3, x, y)
    pred = (x @ w.T + b).argmax(1)
    assert (pred == y).mean() > 0.95 and (pred != 1).all()
    tags = np.stack([y == 0, np.ones(100, bool)], 1).astype(np.float32)  # the second label always on
    w, b = probe.fit_head("multilabel", 2, x, tags)
    logits = x @ w.T + b
    assert ((logits[:, 0] > 0) == (y == 0)).mean() > 0.95 and (logits[:, 1] > 10).all()
    target = x @ np.array([1.5, -0.5]) + 0.2
    w, b = probe.fit_head("regression", 1, x, target)
    assert np.abs(x @ w[0] + b[0] - target).max() < 0.1


def test_refused_for_segmentation(tmp_path):
    path = write_config(tmp_path, "segmentation", extra=TINY_SEGMENTATION)
    config.load(path)
    with pytest.raises(UserError, match=r"train\.frozen_features"):
        config.load(path, ["train.frozen_features=true"])
