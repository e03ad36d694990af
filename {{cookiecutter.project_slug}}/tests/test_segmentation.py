"""Segmentation through the CLI on the demo competition (digits pasted on textured canvases, Kaggle's long RLE
table): folds, train, predict with TTA, the CV with its post-processing decided on the OOF predicted as the test set
is, a run-length encoded submission validated against the sample, and its local score; each artefact checked
against what it must equal, recomputed here from the files."""

import copy
import dataclasses
import json
import shutil
from pathlib import Path

import albumentations as A
import numpy as np
import pandas as pd
import pytest
import torch
from scipy.special import expit
from torch import nn

from {{ cookiecutter.package_name }} import cli, config
from {{ cookiecutter.package_name }}.config import LossConfig
from {{ cookiecutter.package_name }}.core.errors import UserError
from {{ cookiecutter.package_name }}.core.runs import Checkpoint, Run, read_masks
from {{ cookiecutter.package_name }}.data import demo
from {{ cookiecutter.package_name }}.data.augment import build_transforms
from {{ cookiecutter.package_name }}.data.masks import rle_decode
from {{ cookiecutter.package_name }}.data.problem import load_problem, sizes_of_test_images
from {{ cookiecutter.package_name }}.engine import masks_codec, postprocess
from {{ cookiecutter.package_name }}.modeling import metrics, models
from {{ cookiecutter.package_name }}.modeling.losses import build_loss
from {{ cookiecutter.package_name }}.students import distill, pseudo, teachers
from {{ cookiecutter.package_name }}.submission import score_submission

from conftest import TINY_SEGMENTATION as SEG
from conftest import write_config

pytestmark = pytest.mark.e2e


def run(*args) -> None:
    assert cli.main([str(a) for a in args]) == 0


def dice_reference(truth: list[np.ndarray], pred: list[np.ndarray]) -> float:
    """Kaggle's mean Dice over image x class pairs, an empty prediction of an empty mask counting 1: a plain loop."""
    scores = []
    for t_img, p_img in zip(truth, pred, strict=True):
        for t, p in zip(t_img, p_img, strict=True):
            total = int(t.sum()) + int(p.sum())
            scores.append(1.0 if total == 0 else 2.0 * int((t & p).sum()) / total)
    return float(np.mean(scores))


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("seg")
    demo.write_demo(root / "data", "segmentation")
    path = write_config(root, "segmentation", n_folds=2, extra=SEG)
    run("folds", "-c", path)
    run("train", "-c", path)
    run("predict", "-c", path, "tta.views=[identity,vflip]")
    other = write_config(root, "segmentation", n_folds=2, extra=SEG + "seed: 7\n", name="exp2")
    run("train", "-c", other)
    run("predict", "-c", other)
    return root


def test_cv_scores_the_saved_oof_maps_and_decides_the_post_processing_on_them(project):
    cfg = config.load(project / "configs" / "exp.yaml", ["tta.views=[identity,vflip]"])
    run_ = Run.named(cfg.output_dir, "exp")
    cv, decided = json.loads(run_.cv.read_text()), run_.read_decisions()
    problem = load_problem(cfg)
    oof = pd.read_csv(run_.oof, dtype={"id": str})
    maps = read_masks(run_.oof, oof["id"].tolist())
    assert maps.dtype == np.uint8 and maps.shape == (len(problem.ids), 3, 32, 32)
    rows = np.array([problem.ids.index(i) for i in oof["id"]])
    truth = problem.truth(rows, 32)
    assert cv["cv"] == pytest.approx(dice_reference(list(truth), list(maps >= 128)))
    # decided on the OOF predicted as test_pred.csv was (both views), and its CV is that of the post-processed masks
    assert decided.views == ["identity", "vflip"] and decided.cv_from == run_.oof_tta.name
    tta = pd.read_csv(run_.oof_tta, dtype={"id": str})
    tta_maps = read_masks(run_.oof_tta, tta["id"].tolist())
    tta_truth = problem.truth(np.array([problem.ids.index(i) for i in tta["id"]]), 32)
    assert cv["cv_tta"] == pytest.approx(dice_reference(list(tta_truth), list(tta_maps >= 128)))
    masks = postprocess.apply(tta_maps, decided.postprocess)
    assert decided.cv == pytest.approx(dice_reference(list(tta_truth), list(masks.astype(bool))))
    assert cv["cv_submission"] == decided.cv and len(decided.postprocess["classes"]) == 3
    assert metrics.get_metric("dice").gain(decided.cv) >= metrics.get_metric("dice").gain(cv["cv_tta"])


def test_the_submission_holds_the_decided_masks_at_each_test_image_size(project, capsys):
    path = project / "configs" / "exp.yaml"
    cfg = config.load(path)
    run_ = Run.named(cfg.output_dir, "exp")
    # A model of four batches masks nothing at the tuned thresholds: the record gets others, which the submission
    # must apply as written: class 1 at the median probability of the test maps (masks everywhere), class 2 emptied
    # below a peak of 2 (never reached), class 3 as tuned.
    decided = run_.read_decisions()
    test_maps = read_masks(cfg.run.test_pred, pd.read_csv(cfg.run.test_pred, dtype={"id": str})["id"].tolist())
    median = float(np.median(test_maps[:, 0])) / 255
    first, second, third = decided.postprocess["classes"]
    classes = [{**first, "threshold": median, "min_area": 0.001}, {**second, "empty_below": 2.0}, third]
    decided = dataclasses.replace(decided, postprocess={**decided.postprocess, "classes": classes})
    run_.write_decisions(decided)
    run("make-submission", "-c", path)
    sub = pd.read_csv(project / "submissions" / "exp.csv", dtype=str, keep_default_na=False)
    sample = pd.read_csv(project / "data" / "sample_submission.csv", dtype=str, keep_default_na=False)
    assert list(sub.columns) == list(sample.columns)
    assert sub[["id", "ClassId"]].values.tolist() == sample[["id", "ClassId"]].values.tolist()
    test = pd.read_csv(cfg.run.test_pred, dtype={"id": str})
    ids = test["id"].tolist()
    maps, shapes = read_masks(cfg.run.test_pred, ids), dict(zip(ids, sizes_of_test_images(cfg, ids), strict=True))
    classes = ["1", "2", "3"]
    for n in range(len(ids)):  # the file's masks: the maps upsampled, post-processed as decided
        expected = masks_codec.image_masks(maps[n], shapes[ids[n]], decided.postprocess)
        for c, want in zip(classes, expected, strict=True):
            rle = sub.loc[(sub["id"] == ids[n]) & (sub["ClassId"] == c), "EncodedPixels"].item()
            np.testing.assert_array_equal(rle_decode(rle, shapes[ids[n]]), want)
    by_class = sub.groupby("ClassId")["EncodedPixels"]
    assert by_class.apply(lambda r: (r != "").mean())["1"] > 0.5 and by_class.apply(lambda r: (r == "").all())["2"]
    capsys.readouterr()
    run("score", "-c", path, project / "submissions" / "exp.csv")
    line = capsys.readouterr().out
    solution = pd.read_csv(project / "data" / "solution.csv", dtype=str, keep_default_na=False)

    def decoded(table: pd.DataFrame) -> list[np.ndarray]:
        cells = {(i, c): r for i, c, r in table[["id", "ClassId", "EncodedPixels"]].values}
        return [np.stack([rle_decode(cells[(i, c)], shapes[i]) for c in classes]).astype(bool) for i in ids]

    local = dice_reference(decoded(solution), decoded(sub))
    assert f"dice = {local:.5f}" in line and f"OOF CV {decided.cv:.5f}" in line


def test_a_submission_with_a_broken_encoding_is_refused_naming_its_row(project):
    path = project / "configs" / "exp.yaml"
    run("make-submission", "-c", path, "--name", "broken")
    file = project / "submissions" / "broken.csv"
    sub = pd.read_csv(file, dtype=str, keep_default_na=False)
    sub.loc[3, "EncodedPixels"] = "4000 200"  # past the last pixel of a 64 x 64 image
    sub.to_csv(file, index=False)
    cfg = config.load(path)
    with pytest.raises(UserError, match=r"broken\.csv row 5 \(id .*, class 1\)"):
        score_submission(cfg, file, project / "data" / "solution.csv")


@pytest.mark.parametrize(("key", "value"), [("data.cache", "memory"), ("augment.image_size", "48"),
                                            ("augment.mixup_alpha", "0.4"), ("train.sampler", "weighted")])  # fmt: skip
def test_what_segmentation_cannot_honour_is_refused_in_one_line(tmp_path, key, value):
    path = write_config(tmp_path, "segmentation", extra=SEG)
    with pytest.raises(UserError, match=key.replace(".", r"\.")):
        config.load(path, [f"{key}={value}"])


# --- pseudo-labelling and distillation on masks -----------------------------------------------------------------------


def record_and_train(monkeypatch) -> dict:
    """Each student fold's training data, recorded on its way to the real training."""
    seen: dict = {}
    real = teachers.train_one_fold

    def spy(cfg, fold, data, step, force=False):
        seen[fold] = data
        return real(cfg, fold, data, step, force=force)

    monkeypatch.setattr(teachers, "train_one_fold", spy)
    return seen


def fingerprint_teacher(cfg: config.Config, name: str) -> None:
    """outputs/<name>: the trained experiment `exp` whose fold j model is replaced by a model of its own (another
    random initialisation per fold): maps that vary over each image and differ from fold to fold, so that maps of
    any other origin than fold k's model show up in fold k (the tiny trained folds all predict about their prior)."""
    shutil.copytree(Path(cfg.output_dir) / "exp", Path(cfg.output_dir) / name)
    tcfg = teachers.teacher_config(cfg, name)
    classes = tcfg.run.read_classes().classes
    for j in range(2):
        torch.manual_seed(100 + j)
        model = models.build_model(tcfg, len(classes), pretrained=False)
        tcfg.run.fold(j).write_best(Checkpoint(model.state_dict(), 1, 0.0, "model", classes))


def one_view(ds, transform) -> list[dict]:
    """Every row of `ds` through `transform` instead of its training augmentation."""
    ds = copy.copy(ds)
    ds.transform = transform
    return [ds[j] for j in range(len(ds))]


def test_pseudo_selects_images_by_their_mean_pixel_confidence_and_hardens_at_one_half():
    maps = np.zeros((3, 2, 4, 4), np.uint8)  # image 0 empty and sure; image 1 class 1 at p=0.6; image 2 half unsure
    maps[1, 1, :2] = 153
    maps[2, 0] = 128
    conf, group = pseudo.confidence_and_class(maps, "segmentation")
    assert conf == pytest.approx([1.0, 1 - 8 * 0.4 / 32, 128 / 255 / 2 + 0.5])
    assert group.tolist() == [2, 1, 0]  # "(none)", then the class each holds
    assert pseudo.class_names("segmentation", ["a", "b"]) == ["a", "b", "(none)"]
    assert pseudo.select_pseudo(maps, "segmentation", threshold=0.8).tolist() == [0, 1]
    hard = pseudo.pseudo_targets(maps, "segmentation", soft=False)
    assert hard.dtype == np.uint8 and set(np.unique(hard)) == {0, 255}
    np.testing.assert_array_equal(hard == 255, maps.astype(np.float64) / 255 >= 0.5)
    np.testing.assert_array_equal(pseudo.pseudo_targets(maps, "segmentation", soft=True), maps)


def test_distillation_on_maps_is_per_pixel_soft_bce_plus_the_mask_loss_on_labelled_images():
    rng = np.random.default_rng(0)
    s, t = rng.standard_normal((4, 2, 8, 8)), 3 * rng.standard_normal((4, 2, 8, 8))
    y = (rng.random((4, 2, 8, 8)) > 0.7).astype(np.uint8)
    labelled = np.array([1, 0, 1, 1], np.float32)
    batch = {"image": torch.tensor(s, dtype=torch.float32), "teacher": torch.tensor(t, dtype=torch.float32),
             "target": torch.from_numpy(y), "labelled": torch.from_numpy(labelled)}  # fmt: skip
    criterion = build_loss(LossConfig(), "segmentation", 2)
    got = distill.distill_step("segmentation", 0.3, 2.0)(nn.Identity(), batch, criterion)
    q, x = expit(t / 2), s / 2
    kd = 4 * np.mean(-(q * np.log(expit(x)) + (1 - q) * np.log(expit(-x))))
    task = float(criterion(batch["image"][[0, 2, 3]], batch["target"][[0, 2, 3]]))
    assert float(got["kd"]) == pytest.approx(kd, rel=1e-4) and float(got["task"]) == pytest.approx(task, rel=1e-5)
    assert float(got["loss"]) == pytest.approx(0.3 * kd + 0.7 * task, rel=1e-4)


def test_pseudo_learns_fold_k_teacher_test_maps_as_soft_masks(project, monkeypatch):
    path = write_config(project, "segmentation", n_folds=2, extra=SEG, name="seg_pseudo")
    cfg = config.load(path)
    fingerprint_teacher(cfg, "fp_pseudo")
    seen = record_and_train(monkeypatch)
    run("pseudo", "-c", path, "--teacher", "fp_pseudo")  # its fold test maps are predicted first (new models)
    problem, teacher, test = load_problem(cfg), Run.named(cfg.output_dir, "fp_pseudo"), teachers.unlabelled_images(cfg)
    lineage = json.loads(cfg.run.lineage.read_text())
    assert (lineage["kind"], lineage["teachers"], sorted(seen)) == ("pseudo", ["fp_pseudo"], [0, 1])
    resize = build_transforms(cfg.augment, False, cfg.model.in_chans)  # the transform without its augmentation
    flip = A.Compose([A.Resize(32, 32), A.HorizontalFlip(p=1.0)])

    def teacher_maps(table: Path, ids: list[str]) -> np.ndarray:
        own = pd.read_csv(table, dtype={"id": str})["id"].tolist()
        return read_masks(table, own)[[own.index(i) for i in ids]]

    for k, data in seen.items():
        labelled, rows = data.train.datasets
        table = pd.read_csv(cfg.run.fold(k).pseudo_labels, dtype={"id": str})
        ids = table["id"].tolist()
        assert lineage["folds"][str(k)]["sources"] == [["fp_pseudo", k]]
        assert lineage["folds"][str(k)]["pseudo"] == len(ids)
        assert ids == test.ids and rows.paths == test.paths  # every test image (no threshold), no training image
        mine = teacher_maps(teacher.fold(k).test_pred, ids)
        np.testing.assert_array_equal(read_masks(cfg.run.fold(k).pseudo_labels, ids), mine)
        items = one_view(rows, resize)
        got = np.stack([item["target"].numpy() for item in items])
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, mine.astype(np.float32) / 255)  # fold k's maps, p in [0, 1]
        for other in (teacher.fold(1 - k).test_pred, teacher.test_pred):  # not another fold's, nor the average
            assert not np.array_equal(got, teacher_maps(other, ids).astype(np.float32) / 255)
        flipped = np.stack([item["target"].numpy() for item in one_view(rows, flip)])
        np.testing.assert_array_equal(flipped, got[..., ::-1])  # the soft mask moves with the image
        # the labelled rows' 0/1 masks collate with them: float32 too, the truth at the training size
        lab = one_view(labelled, resize)
        assert {item["target"].dtype for item in lab} == {torch.float32}
        truth = problem.truth(problem.rows(k, valid=False), 32)
        np.testing.assert_array_equal(np.stack([item["target"].numpy() for item in lab]), truth)
        np.testing.assert_array_equal(data.y_valid, problem.truth(problem.rows(k, valid=True), 32))
    cv = json.loads(cfg.run.cv.read_text())
    assert cv["task"] == "segmentation" and set(cv["folds"]) == {"0", "1"} and np.isfinite(cv["cv"])
    assert len(pd.read_csv(cfg.run.test_pred)) == len(test.ids)


def test_distill_learns_fold_k_teacher_logit_maps_only(project, monkeypatch):
    path = write_config(project, "segmentation", n_folds=2, extra=SEG + "distill:\n  use_test: true\n",
                        name="seg_distill")  # fmt: skip
    cfg = config.load(path)
    fingerprint_teacher(cfg, "fp_distill")
    seen = record_and_train(monkeypatch)
    run("distill", "-c", path, "--teacher", "fp_distill")
    problem = load_problem(cfg)
    tcfg = teachers.teacher_config(cfg, "fp_distill")
    test = teachers.unlabelled_images(cfg)
    lineage = json.loads(cfg.run.lineage.read_text())
    assert (lineage["kind"], lineage["teachers"], sorted(seen)) == ("distill", ["fp_distill"], [0, 1])
    resize = build_transforms(cfg.augment, False, cfg.model.in_chans)
    for k, data in seen.items():
        record = lineage["folds"][str(k)]
        assert record["sources"] == [["fp_distill", k]] and record["test_sources"] == [["fp_distill", k]]
        labelled, test_rows = data.train.datasets
        train_rows = problem.rows(k, valid=False)
        assert labelled.paths == [problem.paths[i] for i in train_rows] and test_rows.paths == test.paths
        with np.load(cfg.run.teacher_cache(f"fold{k}")) as cache:  # the cache holds fold k's training rows
            assert cache["ids"].tolist() == [problem.ids[i] for i in train_rows]
        for part, paths in ((labelled, labelled.paths), (test_rows, test.paths)):
            stored = part.maps["teacher"].maps
            assert stored.dtype == np.float16 and stored.shape == (len(paths), 3, 32, 32)
            mine = teachers.predict_fold(cfg, tcfg, k, paths)  # fold k's model, logits
            theirs = teachers.predict_fold(cfg, tcfg, 1 - k, paths)  # the other fold's model saw k's rows
            np.testing.assert_allclose(stored, mine, atol=0.02, rtol=1e-2)
            assert np.abs(stored.astype(np.float32) - theirs).max() > 0.1
            items = one_view(part, resize)  # the maps go through the transform with the image
            np.testing.assert_array_equal(np.stack([i["teacher"].numpy() for i in items]), stored.astype(np.float32))
        lab, unl = one_view(labelled, resize), one_view(test_rows, resize)
        np.testing.assert_array_equal(np.stack([i["target"].numpy() for i in lab]), problem.truth(train_rows, 32))
        assert all(i["target"].dtype == torch.uint8 and not i["target"].any() and i["labelled"] == 0 for i in unl)
    cv = json.loads(cfg.run.cv.read_text())
    assert cv["task"] == "segmentation" and set(cv["folds"]) == {"0", "1"} and np.isfinite(cv["cv"])
    history = json.loads((cfg.run_dir / "fold0" / "history.json").read_text())
    assert np.isfinite(history[0]["train_loss"])


@pytest.mark.parametrize("method", ["mean", "hill_climb"])
def test_an_ensemble_blends_the_members_maps_and_submits_them(project, method, capsys):
    path = project / "configs" / "exp.yaml"
    run("ensemble", "-c", path, "--exps", "exp", "exp2", "--method", method, "--name", f"seg_{method}")
    cfg = config.load(path)
    out, members = Run.named(cfg.output_dir, f"seg_{method}"), [Run.named(cfg.output_dir, e) for e in ("exp", "exp2")]
    weights = json.loads(out.path.joinpath("weights.json").read_text())["weights"]
    ids = pd.read_csv(out.oof, dtype={"id": str})["id"].tolist()

    def maps(table: Path, rows: list[str]) -> np.ndarray:  # a member's maps in the order of `rows`
        own = pd.read_csv(table, dtype={"id": str})["id"].tolist()
        return read_masks(table, own)[[own.index(i) for i in rows]].astype(np.float32) / 255

    sources = [m.path / m.read_decisions().cv_from for m in members]  # each member's OOF as it was predicted
    expected = sum(w * maps(p, ids) for w, p in zip(weights, sources, strict=True))
    blended = read_masks(out.oof, ids).astype(np.float32) / 255
    np.testing.assert_allclose(blended, expected, atol=0.5 / 255 + 1e-6)  # stored as uint8
    cv, decided = json.loads(out.cv.read_text()), out.read_decisions()
    problem = load_problem(cfg)
    truth = problem.truth(np.array([problem.ids.index(i) for i in ids]), 32)
    assert cv["cv"] == pytest.approx(dice_reference(list(truth), list(expected >= 0.5)), abs=2e-3)
    assert decided.members == ["exp", "exp2"] and len(decided.postprocess["classes"]) == 3
    run("make-submission", "-c", path, "--exp", f"seg_{method}")
    sub = pd.read_csv(project / "submissions" / f"seg_{method}.csv", dtype=str, keep_default_na=False)
    sample = pd.read_csv(project / "data" / "sample_submission.csv", dtype=str, keep_default_na=False)
    assert sub[["id", "ClassId"]].values.tolist() == sample[["id", "ClassId"]].values.tolist()
