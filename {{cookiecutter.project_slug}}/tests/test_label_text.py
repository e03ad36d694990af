"""Ids and labels are the text the competition wrote, from train.csv to the submission and `score`: `01` stays `01`
(pandas would make it the number 1), `True` stays `True`, `NA`, `nan` and `None` are ids like any other. The lines
that refuse bad label text, a single class or a file that is not UTF-8 are in test_bad_input's table."""

import csv
from pathlib import Path

import pandas as pd
import pytest

from {{ cookiecutter.package_name }} import cli, config, submission
from {{ cookiecutter.package_name }}.core.errors import UserError
from {{ cookiecutter.package_name }}.data import demo, folds, tables
from {{ cookiecutter.package_name }}.kaggle import submissions as kaggle_submissions

from conftest import SMALL, fake_experiment, small_digits, write_config

quiet = lambda s: None  # noqa: E731
TABLES = ("train.csv", "test.csv", "sample_submission.csv", "solution.csv")


def respell(data: Path, labels: dict[str, str], ids: dict[str, str]) -> None:
    """The demo competition in `data` with its labels written as `labels` says (demo text -> new text) and some ids
    replaced (old -> new, images renamed with them)."""
    for name in TABLES:
        df = pd.read_csv(data / name, dtype=str, keep_default_na=False)
        df["id"] = df["id"].replace(ids)
        if name in ("train.csv", "solution.csv"):
            df["label"] = df["label"].map(labels)
        df.to_csv(data / name, index=False)
    for split in ("train", "test"):
        for old, new in ids.items():
            if (data / split / f"{old}.png").exists():
                (data / split / f"{old}.png").rename(data / split / f"{new}.png")


def odd_ids(data: Path) -> dict[str, str]:
    """Ids that pandas reads as missing or as numbers: two in train.csv, three in test.csv."""
    train, test = (pd.read_csv(data / name, dtype=str)["id"] for name in ("train.csv", "test.csv"))
    return {train[0]: "NA", train[1]: "007", test[0]: "nan", test[1]: "None", test[2]: "NULL"}


def text_column(path: Path, col: str) -> list[str]:
    """A column as the bytes of the file hold it (no pandas in between)."""
    with open(path, newline="", encoding="utf-8") as f:
        return [row[col] for row in csv.DictReader(f)]


SPELLINGS = {
    "zero-padded": ("multiclass", {str(d): f"{d:02d}" for d in range(10)}),
    "plain-numbers": ("multiclass", {str(d): str(d) for d in range(10)}),
    "true-false": ("binary", {"0": "False", "1": "True"}),
    "padded-binary": ("binary", {"0": "00", "1": "01"}),
}


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_submission_labels_are_the_training_label_text(tmp_path, new_project, spelling):
    task, labels = SPELLINGS[spelling]
    cfg = new_project(tmp_path, task, metric="accuracy", images=False, size=8)
    data = Path(cfg.data.dir)
    respell(data, labels, odd_ids(data))
    folds.write_folds(cfg, force=True)
    fake_experiment(cfg, "perfect", 0.0)
    assert sorted(tables.derive_classes(cfg, tables.read_train(cfg))) == sorted(
        set(labels.values()) if task == "multiclass" else ["label"]
    )

    path = submission.make_submission(cfg, "perfect", log=quiet)
    assert text_column(path, "id") == text_column(data / "sample_submission.csv", "id")  # NA, nan, None kept
    solution = data / "solution.csv"
    truth = dict(zip(text_column(solution, "id"), text_column(solution, "label"), strict=True))
    assert text_column(path, "label") == [truth[i] for i in text_column(path, "id")]  # byte for byte
    assert set(text_column(path, "label")) <= set(text_column(data / "train.csv", "label"))
    assert submission.score_submission(cfg, path, solution) == pytest.approx(1.0)

    retyped = {v: str(int(v)) for v in labels.values() if v.isdigit() and str(int(v)) != v}
    if retyped:  # the labels as pandas writes them back (01 -> 1): not the competition's labels
        sub = pd.read_csv(path, dtype=str, keep_default_na=False)
        sub["label"] = sub["label"].replace(retyped)
        sub.to_csv(tmp_path / "retyped.csv", index=False)
        with pytest.raises(UserError, match=r"column 'label' has values \['0', '1'.* not among the labels"):
            kaggle_submissions.check_submission_file(cfg, tmp_path / "retyped.csv")
        with pytest.raises(UserError, match=r"'\d'.* not among the labels"):
            submission.score_submission(cfg, tmp_path / "retyped.csv", solution)


def test_tables_in_another_encoding_read_with_data_encoding(tmp_path):
    (tmp_path / "train.csv").write_bytes("id,label\na,caf\xe9\nb,th\xe9\nc,caf\xe9\n".encode("cp1252"))
    path = tmp_path / "c.yaml"
    path.write_text(f"data:\n  dir: {tmp_path}\n")
    with pytest.raises(UserError, match=r"train.csv: not utf-8 text.*0xe9.*data.encoding"):
        tables.read_train(config.load(path))
    cfg = config.load(path, ["data.encoding=cp1252"])
    assert tables.derive_classes(cfg, tables.read_train(cfg)) == ["caf\xe9", "th\xe9"]


@pytest.mark.e2e
def test_label_text_and_odd_ids_through_the_real_pipeline(tmp_path, monkeypatch, capsys):
    """The commands as typed, on a competition whose labels are zero-padded and whose ids pandas would read as missing:
    the submission holds the training label text byte for byte, its ids are the sample's, and it scores."""
    monkeypatch.setattr(demo, "load_digits", small_digits)
    monkeypatch.chdir(tmp_path)
    demo.write_demo("data", "multiclass", size=16)
    data = tmp_path / "data"
    labels = {str(d): f"{d:02d}" for d in range(10)}
    respell(data, labels, odd_ids(data))
    c = str(write_config(tmp_path, n_folds=2, extra=SMALL))
    for argv in (["folds", "-c", c], ["train", "-c", c], ["predict", "-c", c], ["make-submission", "-c", c]):
        assert cli.main(argv) == 0, argv
    sub = tmp_path / "submissions" / "exp.csv"
    assert text_column(sub, "id") == text_column(data / "sample_submission.csv", "id")
    assert set(text_column(sub, "label")) <= set(labels.values())
    assert "NA" in text_column(tmp_path / "outputs" / "exp" / "oof.csv", "id")
    capsys.readouterr()
    assert cli.main(["score", "-c", c, str(sub)]) == 0
    assert "accuracy = " in capsys.readouterr().out
    assert cli.main(["submit", "-c", c, str(sub), "--dry-run"]) == 0
