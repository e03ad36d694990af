"""The command line as typed: flags, overrides after list flags, fold lists, help, and the one-line error."""

from pathlib import Path

import pytest

from {{ cookiecutter.package_name }} import cli, config
from {{ cookiecutter.package_name }}.core.errors import UserError
from {{ cookiecutter.package_name }}.students import pseudo

from conftest import TINY, write_config


def parse(*argv: str):
    return cli.split_overrides(cli.build_parser().parse_args(list(argv)))


@pytest.mark.parametrize(
    ("argv", "flag", "values", "overrides"),
    [
        (
            ["pseudo", "-c", "c.yaml", "--teacher", "exp001", "train.epochs=2"],
            "teacher",
            ["exp001"],
            ["train.epochs=2"],
        ),
        (["distill", "-c", "c.yaml", "--teacher", "a", "b", "x.y=1", "z=2"], "teacher", ["a", "b"], ["x.y=1", "z=2"]),
        (["distill", "-c", "c.yaml", "x.y=1", "--teacher", "a", "z=2"], "teacher", ["a"], ["z=2", "x.y=1"]),
        (["ensemble", "-c", "c.yaml", "--exps", "e1", "e2", "seed=3"], "exps", ["e1", "e2"], ["seed=3"]),
        (["upload", "-c", "c.yaml", "--dataset", "me/ds-name", "--exps", "e1", "k=v"], "exps", ["e1"], ["k=v"]),
        (["train", "-c", "c.yaml", "--fold", "0,2", "optim.lr=1e-4"], "fold", "0,2", ["optim.lr=1e-4"]),
    ],
)
def test_list_flags_leave_the_overrides_that_follow_them(argv, flag, values, overrides):
    args = parse(*argv)
    assert getattr(args, flag) == values
    assert args.overrides == overrides


def test_pseudo_with_overrides_after_teacher_reaches_the_stage(tmp_path, monkeypatch):
    """`pseudo -c c.yaml --teacher exp001 train.epochs=2`: the stage gets teacher exp001 and epochs 2."""
    seen = {}

    def fake_run_pseudo(cfg, teacher, folds, force, allow_partial):
        seen.update(teacher=teacher, epochs=cfg.train.epochs, folds=folds)

    monkeypatch.setattr(pseudo, "run_pseudo", fake_run_pseudo)
    path = write_config(tmp_path, n_folds=3)
    assert cli.main(["pseudo", "-c", str(path), "--teacher", "exp001", "train.epochs=2", "--fold", "1"]) == 0
    assert seen == {"teacher": "exp001", "epochs": 2, "folds": [1]}


@pytest.mark.parametrize(("value", "folds"), [("all", [0, 1, 2, 3]), ("2", [2]), ("0,3", [0, 3])])
def test_fold_lists(tmp_path, value, folds):
    cfg = config.load(write_config(tmp_path, n_folds=4))
    assert cli.parse_folds(value, cfg) == folds


@pytest.mark.parametrize(
    ("value", "match"), [("4", r"--fold 4 is outside 0\.\.3"), ("x", "--fold 'x'"), ("1,", "--fold")]
)
def test_bad_fold_lists_name_the_flag(tmp_path, value, match):
    cfg = config.load(write_config(tmp_path, n_folds=4))
    with pytest.raises(UserError, match=match):
        cli.parse_folds(value, cfg)


@pytest.mark.parametrize("command", list(cli.COMMANDS))
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as done:
        cli.main([command, "--help"])
    assert done.value.code == 0
    assert cli.COMMANDS[command].help.split()[0] in capsys.readouterr().out


def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    path = write_config(tmp_path, extra="optim:\n  lrr: 0.1\n")
    assert cli.main(["train", "-c", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "optim.lrr" in err and "optim.lr" in err


def test_output_dir_in_home_is_one_folder_for_every_stage(tmp_path, monkeypatch, new_project, capsys):
    """`output_dir=~/runs`: checkpoints, OOF and cv.json all land in $HOME/runs/<exp>, none in a folder named '~'."""
    cfg = new_project(tmp_path / "project", n_folds=2, extra=TINY)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path / "project")
    assert cli.main(["train", "-c", "configs/exp.yaml", "--fold", "0", "output_dir=~/runs"]) == 0
    run = tmp_path / "home" / "runs" / "exp"
    assert (run / "fold0" / "best.pt").is_file() and (run / "config.yaml").is_file()
    assert not list(tmp_path.rglob("~")) and not (Path(cfg.output_dir) / "exp").exists()
