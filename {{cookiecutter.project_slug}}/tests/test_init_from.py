"""Multi-stage training (model.init_from): fold k starts from the source experiment's fold-k weights, and never
from weights that trained on fold k's validation rows, however far back in the chain."""

import dataclasses
import shutil

import pytest
import torch

from {{ cookiecutter.package_name }} import cli, config, train
from {{ cookiecutter.package_name }}.core.errors import UserError
from {{ cookiecutter.package_name }}.core.runs import InitFrom, Run, checksum, read_checkpoint
from {{ cookiecutter.package_name }}.cv import summarize
from {{ cookiecutter.package_name }}.engine.fold import setup_fold

from conftest import on_other_folds, small_config, weighted_teacher, write_config

FINE_TUNE = ["augment.image_size=24", "model.init_from=stage1"]


@pytest.fixture(scope="module")
def stage1(small_project):
    """The source: the small project's two folds trained at 16 px, summarised (cv.json)."""
    cfg = small_config(small_project, "stage1")
    train.train_folds(cfg, [0, 1])
    summarize(cfg, log=lambda line: None)
    return cfg


def copy_of(cfg: config.Config, name: str) -> Run:
    """Another experiment folder holding the source's files (as a teammate's copy would)."""
    run = Run.named(cfg.output_dir, name)
    shutil.copytree(cfg.run_dir, run.path)
    return run


@pytest.mark.e2e
def test_each_fold_starts_from_the_same_fold_of_the_source(small_project, stage1):
    cfg = small_config(small_project, "stage2", FINE_TUNE)
    weights = []
    for k in (0, 1):
        s = setup_fold(cfg, k)
        source = read_checkpoint(stage1.run.fold(k).best).model
        state = s.model.state_dict()
        assert state.keys() == source.keys()
        for key, value in source.items():
            torch.testing.assert_close(state[key], value, rtol=0, atol=0, msg=key)
        assert s.init == InitFrom("stage1", k, checksum(stage1.run.fold(k).best), "keep", ["stage1"])
        weights.append(source)
    assert any(not torch.equal(weights[0][k], weights[1][k]) for k in weights[0])  # each fold its own weights

    # init_from_head=reset: the backbone from the source, the head as this config builds it (at the prior)
    reset = small_config(small_project, "stage2_reset", [*FINE_TUNE, "model.init_from_head=reset"])
    s = setup_fold(reset, 0)
    head = next(f"{n}." for n, m in s.model.named_modules() if m is s.model.get_classifier())
    state = s.model.state_dict()
    assert not torch.equal(state[f"{head}weight"], weights[0][f"{head}weight"])
    for key, value in weights[0].items():
        if not key.startswith(head):
            torch.testing.assert_close(state[key], value, rtol=0, atol=0, msg=key)


@pytest.mark.e2e
def test_the_fine_tune_trains_through_the_cli_records_its_start_and_stops_on_a_retrained_source(
    small_project, stage1, capsys
):
    path = small_project / "configs" / "stage2_cli.yaml"
    path.write_text((small_project / "configs" / "stage1.yaml").read_text())
    assert cli.main(["train", "-c", str(path), *FINE_TUNE]) == 0
    capsys.readouterr()
    cfg = config.load(path, FINE_TUNE)
    summary = cfg.run.read_cv()
    assert summary.complete and len(summary.folds) == 2
    shas = {str(k): checksum(stage1.run.fold(k).best) for k in (0, 1)}
    assert summary.init_from == {"exp": "stage1", "head": "keep", "chain": {"0": ["stage1"], "1": ["stage1"]},
                                 "checkpoints": shas}  # fmt: skip
    assert cfg.run.fold(1).read_init_from().checkpoint == shas["1"]

    # The source's fold 0 retrained since: carrying on with this experiment would mix two starts.
    best = stage1.run.fold(0).best
    saved = best.read_bytes()
    try:
        ckpt = read_checkpoint(best)
        stage1.run.fold(0).write_best(dataclasses.replace(ckpt, score=(ckpt.score or 0) + 1))
        with pytest.raises(UserError, match=r"fold 0 started from .*retrained since"):
            train.check_resumable(cfg, 1)
        with pytest.raises(UserError, match=r"--force on fold\(s\) \[1\]: fold 0 started from"):
            train.check_forced(cfg, [1])
    finally:
        best.write_bytes(saved)
    train.check_resumable(cfg, 1)


@pytest.mark.e2e
def test_sources_that_saw_this_folds_validation_rows_or_do_not_fit_are_refused(small_project, stage1):
    def refused(source: str, match: str, *extra: str) -> None:
        cfg = small_config(small_project, "stage2_refused", ["augment.image_size=24", f"model.init_from={source}",
                                                             *extra])  # fmt: skip
        with pytest.raises(UserError, match=match):
            setup_fold(cfg, 0)

    # trained on another split (its cv.json says so)
    copy_of(stage1, "other_split")
    on_other_folds(stage1, "other_split")
    refused("other_split", "'other_split' .*trained on folds hash 0123456789abcdef")

    # through a chain: a -> b -> c, where c was trained on another split
    a, b, c = (copy_of(stage1, n) for n in ("chain_a", "chain_b", "chain_c"))
    for run, start in ((a, "chain_b"), (b, "chain_c")):
        for k in (0, 1):
            run.fold(k).write_init_from(InitFrom(start, k, checksum(run.fold(k).best), "keep", [start]))
    on_other_folds(stage1, c.name)
    refused("chain_a", "'chain_c' .*stage2_refused -> chain_a -> chain_b -> chain_c.*folds hash")

    # the property itself: fold 0's weights are the source's fold-1 model, which trained on fold 0's rows
    swapped = copy_of(stage1, "swapped")
    swapped.cv.unlink()  # no recorded split to go by: the ids tell
    shutil.move(swapped.fold(0).path, swapped.path / "tmp")
    shutil.move(swapped.fold(1).path, swapped.fold(0).path)
    shutil.move(swapped.path / "tmp", swapped.fold(1).path)
    n_valid = len(Run.named(stage1.output_dir, "stage1").fold(0).oof.read_text().splitlines()) - 1
    refused("swapped", f"fold 0 of 'swapped' .*trained on {n_valid} of fold 0's {n_valid} validation ids")

    # not a finished fold-wise experiment: an unfinished fold, nothing there, an ensemble
    unfinished = copy_of(stage1, "unfinished")
    unfinished.fold(0).oof.unlink()
    refused("unfinished", "no finished fold 0")
    refused("nothing_here", "no experiment there")
    weighted_teacher(stage1, "blend", ["stage1"], [1.0])
    refused("blend", "'blend' is an ensemble")

    # weights that do not fit: another backbone; another head (other classes) unless it is reset
    refused("stage1", "model.backbone='test_resnet'", "model.backbone=test_efficientnet")
    head = copy_of(stage1, "other_classes")
    ckpt = read_checkpoint(head.fold(0).best)
    head.fold(0).write_best(dataclasses.replace(ckpt, classes=[f"c{c}" for c in ckpt.classes or []]))
    refused("other_classes", "init_from_head=reset")


def test_init_from_names_another_fold_wise_experiment(tmp_path):
    path = write_config(tmp_path, name="exp010")
    with pytest.raises(UserError, match="this experiment itself"):
        config.load(path, ["model.init_from=exp010"])
    with pytest.raises(UserError, match="fitted on every row"):
        config.load(path, ["model.init_from=exp009@full"])
    with pytest.raises(UserError, match="not a plain name"):
        config.load(path, ["model.init_from=../exp009"])
    with pytest.raises(UserError, match=r"model\.init_from_head"):
        config.load(path, ["model.init_from_head=drop"])
    assert config.load(path, ["model.init_from=exp009"]).model.init_from == "exp009"
