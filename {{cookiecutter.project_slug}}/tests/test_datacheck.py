"""check-data: the near-duplicate finder finds planted duplicates (an exact copy, a resized JPEG, a brightened copy;
train/train and train/test) and none in a clean set; folds keep its groups whole; adversarial validation is about 0.5
on a random split and near 1 on a planted shift, which the drift table shows; the CLI writes every file."""

import contextlib
import io
import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from {{ cookiecutter.package_name }} import cli, config
from {{ cookiecutter.package_name }}.core.errors import UserError
from {{ cookiecutter.package_name }}.core.runs import data_check_files
from {{ cookiecutter.package_name }}.data import folds
from {{ cookiecutter.package_name }}.datacheck import run_check_data

from conftest import write_config

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def pattern(rng: np.random.Generator, size: int = 40) -> np.ndarray:
    """A distinct smooth random image (an 8 x 8 random field, upscaled): unrelated images' 64-bit hashes differ in
    about half their bits (at least 12 of 64 among 300 of them), and a resize, JPEG or brightening moves 0-3 bits."""
    field = cv2.resize(rng.random((8, 8)).astype(np.float32), (size, size), interpolation=cv2.INTER_CUBIC)
    low, high = rng.uniform(10, 60), rng.uniform(160, 230)  # each image its own contrast
    return (low + (field - field.min()) / (np.ptp(field) + 1e-6) * (high - low)).astype(np.uint8)


def resized(img: np.ndarray, size: int) -> np.ndarray:
    return cv2.resize(img, (size, size), interpolation=cv2.INTER_LINEAR)


def brightened(img: np.ndarray, by: int) -> np.ndarray:
    return np.clip(img.astype(np.int64) + by, 0, 255).astype(np.uint8)


def write_competition(root: Path, train: dict[str, np.ndarray], test: dict[str, np.ndarray], extra: str = "",
                      n_folds: int = 3) -> config.Config:  # fmt: skip
    """data/train.csv (id, label alternating a/b), data/test.csv, the images as PNG (an id ending in .jpg: JPEG at
    quality 80), and its config (grayscale)."""
    for split, images in (("train", train), ("test", test)):
        folder = root / "data" / split
        folder.mkdir(parents=True, exist_ok=True)
        for name, img in images.items():
            if name.endswith(".jpg"):
                Image.fromarray(img).save(folder / name, "JPEG", quality=80)
            else:
                Image.fromarray(img).save(folder / f"{name}.png")
    labels = ["a", "b"] * (len(train) // 2) + ["a"] * (len(train) % 2)
    pd.DataFrame({"id": list(train), "label": labels}).to_csv(root / "data" / "train.csv", index=False)
    pd.DataFrame({"id": list(test)}).to_csv(root / "data" / "test.csv", index=False)
    yaml = "model:\n  in_chans: 1\n  backbone: test_resnet\n  pretrained: false\nwandb:\n  mode: disabled\n" + extra
    return config.load(write_config(root, n_folds=n_folds, extra=yaml))


def check_data(path: Path, *overrides: str) -> tuple[int, str]:
    """`check-data -c PATH OVERRIDES` as typed (the CLI's own parsing): (exit status, what it printed)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = cli.main(["check-data", "-c", str(path), *overrides])
    return status, out.getvalue()


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """40 distinct training images + 3 planted train/train duplicates, 10 distinct test images + 2 planted leaks,
    checked once through the CLI: (config, the DataCheck record, the planted pairs, what the command printed)."""
    root = tmp_path_factory.mktemp("planted")
    rng = np.random.default_rng(0)
    train = {f"t{i:02d}": pattern(rng) for i in range(40)}
    test = {f"s{i:02d}": pattern(rng) for i in range(10)}
    train["copy_t00"] = train["t00"].copy()  # exact
    buf = io.BytesIO()
    Image.fromarray(resized(train["t01"], 56)).save(buf, "JPEG", quality=60)  # resized and re-encoded twice
    train["jpeg_t01.jpg"] = np.array(Image.open(buf))
    train["bright_t02"] = brightened(train["t02"], 25)
    test["leak_t03"] = resized(train["t03"], 32)
    test["leak_t04"] = brightened(train["t04"], 20)
    cfg = write_competition(root, train, test)
    status, printed = check_data(root / "configs" / "exp.yaml", "checks.top_k=4")
    assert status == 0, printed
    expected = {("t00", "copy_t00"), ("t01", "jpeg_t01.jpg"), ("t02", "bright_t02"), ("t03", "leak_t03"),
                ("t04", "leak_t04")}  # fmt: skip
    return cfg, data_check_files(cfg.output_dir).read_summary(), expected, printed


@pytest.fixture(scope="module")
def random_split(tmp_path_factory):
    """200 distinct patterns, split at random into 100 train and 100 test images (a clean set, no shift): its config
    and check."""
    rng = np.random.default_rng(2)
    images = [pattern(rng, 32) for _ in range(200)]
    cfg = write_competition(tmp_path_factory.mktemp("random"), {f"a{i}": im for i, im in enumerate(images[:100])},
                            {f"b{i}": im for i, im in enumerate(images[100:])})  # fmt: skip
    return cfg, run_check_data(cfg), images


def test_planted_duplicates_and_leaks_are_found_and_nothing_else(planted):
    cfg, check, expected, _ = planted
    files = data_check_files(cfg.output_dir)
    pairs = pd.read_csv(files.duplicates, dtype={"id_a": str, "id_b": str})
    ordered = [tuple(sorted(p, key=lambda i: not i.startswith("t"))) for p in zip(pairs.id_a, pairs.id_b, strict=True)]
    assert set(ordered) == expected and len(ordered) == len(expected)
    leaks = pairs[pairs.leak]
    assert set(leaks.id_b) == {"leak_t03", "leak_t04"} and (leaks.split_b == "test").all()
    assert (pairs.distance <= cfg.checks.hash_distance).all()
    assert (check.train_pairs, check.leak_pairs, check.leaked_test_ids, check.groups, check.rows_in_groups) == (
        3, 2, 2, 3, 6)  # fmt: skip
    groups = pd.read_csv(files.groups, dtype=str).set_index("id")["group"]
    assert len(groups) == 43 and groups["copy_t00"] == groups["t00"] and groups["jpeg_t01.jpg"] == groups["t01"]
    assert groups.nunique() == 40  # 43 images, 3 pairs joined


def test_a_clean_set_has_no_near_duplicates(random_split):
    """Distinct random patterns, train and test: not one pair, at a threshold well below their closest distance."""
    cfg, check, _ = random_split
    assert (check.train_pairs, check.leak_pairs, check.groups) == (0, 0, 0)
    hashes = pd.read_csv(data_check_files(cfg.output_dir).image_stats, dtype=str)["hash"]
    bits = np.array([[int(c) for c in f"{int(h, 16):064b}"] for h in hashes], dtype=bool)
    distance = (bits[:, None] != bits[None]).sum(-1) + 64 * np.eye(len(bits), dtype=int)
    assert distance.min() > 2 * cfg.checks.hash_distance


def test_folds_keep_each_duplicate_group_in_one_fold(planted, tmp_path):
    cfg, _, _, _ = planted
    exp = Path(cfg.folds.path).parents[1] / "configs" / "exp.yaml"
    groups_file = data_check_files(cfg.output_dir).groups
    grouped = config.load(exp, [f"folds.groups_file={groups_file}"])
    folds.write_folds(grouped, force=True)
    split, _ = folds.read_folds(grouped)
    fold_of = split.set_index("id")["fold"]
    for a, b in (("t00", "copy_t00"), ("t01", "jpeg_t01.jpg"), ("t02", "bright_t02")):
        assert fold_of[a] == fold_of[b]
    assert folds.resolve_method(grouped) == "stratified_group"
    # a split that ignores the groups is refused once the groups file is named
    other = split.copy()
    other.loc[other.id == "copy_t00", "fold"] = (fold_of["t00"] + 1) % 3
    bad = tmp_path / "folds.csv"
    other.to_csv(bad, index=False)
    shutil.copy(folds.meta_path(grouped), bad.with_suffix(".json"))
    stale = config.load(exp, [f"folds.groups_file={groups_file}", f"folds.path={bad}"])
    with pytest.raises(UserError, match=r"group 't00' of folds.groups_file .* is in folds"):
        folds.read_folds(stale)
    # a training id without a group is refused, naming the file
    partial = tmp_path / "groups.csv"
    pd.read_csv(groups_file, dtype=str).iloc[1:].to_csv(partial, index=False)
    missing = config.load(exp, [f"folds.groups_file={partial}", f"folds.path={tmp_path / 'f2.csv'}"])
    with pytest.raises(UserError, match=r"groups.csv \(folds.groups_file\): 1 training ids .* have no group"):
        folds.write_folds(missing)
    with pytest.raises(UserError, match=r"'folds.groups_file'=.* and 'folds.group_col'="):
        config.load(exp, [f"folds.groups_file={groups_file}", "folds.group_col=label"])


def test_adversarial_auc_is_near_half_on_a_random_split_and_high_on_a_planted_shift(random_split, tmp_path):
    _, alike, images = random_split
    assert alike.adversarial_auc < 0.65
    shifted = write_competition(tmp_path, {f"a{i}": im for i, im in enumerate(images[:100])},
                                {f"b{i}": brightened(im, 60) for i, im in enumerate(images[100:])})  # fmt: skip
    shift = run_check_data(shifted)
    assert shift.adversarial_auc > 0.9
    assert shift.drift["brightness_mean"] > 0.5 > alike.drift["brightness_mean"]
    drift = pd.read_csv(data_check_files(shifted.output_dir).drift).set_index(["feature", "split"])
    assert drift.loc[("brightness_mean", "test"), "mean"] - drift.loc[("brightness_mean", "train"), "mean"] > 40
    assert drift.loc[("width", "test"), "ks"] == 0  # same size: no drift where none was planted
    stats = pd.read_csv(data_check_files(shifted.output_dir).image_stats, dtype={"id": str})
    top = stats[stats.split == "train"].nlargest(len(shift.test_like), "test_prob")
    assert shift.test_like == top.id.tolist() and len(shift.test_like) == shifted.checks.top_k


def test_the_cli_as_typed_writes_every_file_and_refuses_a_bad_key_in_one_line(planted, capsys):
    cfg, check, _, printed = planted
    assert "2 train/test pairs (leaks, 2 test ids)" in printed and "adversarial AUC" in printed
    assert "folds.groups_file=" in printed
    files = data_check_files(cfg.output_dir)
    for png in (files.duplicates_png, files.test_like_png, files.drift_png):
        assert png.read_bytes()[:8] == PNG_SIGNATURE and png.stat().st_size > 1000
    assert len(check.test_like) == 4  # checks.top_k=4 on the command line
    path = Path(cfg.folds.path).parents[1] / "configs" / "exp.yaml"
    for bad, key in (("checks.hash_distance=64", "checks.hash_distance"), ("checks.hash=md5", "checks.hash"),
                     ("checks.hash_distanse=3", "checks.hash_distanse")):  # fmt: skip
        assert check_data(path, bad)[0] == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and key in err, err
    if shutil.which("make"):
        root = Path(__file__).resolve().parents[1]
        dry = subprocess.run(["make", "-n", "check-data", "EXP=exp002"], cwd=root, capture_output=True, text=True)
        assert "check-data -c configs/exp002.yaml" in dry.stdout, dry.stdout + dry.stderr
