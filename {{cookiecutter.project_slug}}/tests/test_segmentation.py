"""Segmentation through the CLI on the demo competition (digits pasted on textured canvases, Kaggle's long RLE
table): folds, train, predict with TTA, the CV with its post-processing decided on the OOF predicted as the test set
is, a run-length encoded submission validated against the sample, and its local score; each artefact checked
against what it must equal, recomputed here from the files."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from {{ cookiecutter.package_name }} import cli, config
from {{ cookiecutter.package_name }}.core.errors import UserError
from {{ cookiecutter.package_name }}.core.runs import Run, read_masks
from {{ cookiecutter.package_name }}.data import demo
from {{ cookiecutter.package_name }}.data.masks import rle_decode
from {{ cookiecutter.package_name }}.data.problem import load_problem, sizes_of_test_images
from {{ cookiecutter.package_name }}.engine import masks_codec, postprocess
from {{ cookiecutter.package_name }}.modeling import metrics

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
    from {{ cookiecutter.package_name }}.submission import score_submission

    with pytest.raises(UserError, match=r"broken\.csv row 5 \(id .*, class 1\)"):
        score_submission(cfg, file, project / "data" / "solution.csv")


@pytest.mark.parametrize(("key", "value"), [("data.cache", "memory"), ("augment.image_size", "48"),
                                            ("augment.mixup_alpha", "0.4"), ("train.sampler", "weighted")])  # fmt: skip
def test_what_segmentation_cannot_honour_is_refused_in_one_line(tmp_path, key, value):
    path = write_config(tmp_path, "segmentation", extra=SEG)
    with pytest.raises(UserError, match=key.replace(".", r"\.")):
        config.load(path, [f"{key}={value}"])


@pytest.mark.parametrize("command", [["pseudo", "--teacher", "exp"], ["distill", "--teacher", "exp"]])
def test_stages_that_take_tables_only_refuse_segmentation_in_one_line(project, command, capsys):
    capsys.readouterr()
    args = [command[0], "-c", str(project / "configs" / "exp.yaml"), *command[1:]]
    assert cli.main(args) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and command[0] in err[0] and "task=segmentation" in err[0]


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
