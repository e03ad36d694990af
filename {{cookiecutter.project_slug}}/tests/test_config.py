"""The config: defaults <- YAML <- dotted overrides, strict keys and types, saved and reloaded unchanged."""

from pathlib import Path

import pytest

from {{ cookiecutter.package_name }} import config
from {{ cookiecutter.package_name }}.core.errors import UserError
from {{ cookiecutter.package_name }}.modeling import metrics

CONFIGS = Path(__file__).parents[1] / "configs"


@pytest.mark.parametrize("name", ["exp001", "demo"])
def test_shipped_configs_load_and_name_the_experiment(name):
    cfg = config.load(CONFIGS / f"{name}.yaml")
    assert cfg.exp == name
    assert cfg.run_dir == Path("outputs") / name
    assert config.metric_name(cfg) in metrics.list_metrics(cfg.task)


def test_overrides_win_over_the_file_and_keep_types(tmp_path):
    path = tmp_path / "e.yaml"
    path.write_text("train:\n  epochs: 5\noptim:\n  lr: 0.01\n")
    cfg = config.load(path, ["train.epochs=3", "optim.name=adamw", "tta.views=[identity,hflip]"])
    assert (cfg.train.epochs, cfg.optim.lr, cfg.optim.name) == (3, 0.01, "adamw")
    assert cfg.tta.views == ["identity", "hflip"]
    assert cfg.train.batch_size == config.TrainConfig().batch_size  # untouched keys keep their defaults


def test_unknown_key_names_it_and_suggests(tmp_path):
    path = tmp_path / "e.yaml"
    path.write_text("train:\n  epoch: 5\n")
    with pytest.raises(UserError, match=r"unknown key 'train.epoch'.*did you mean 'epochs'.*batch_size"):
        config.load(path)
    path.write_text("")
    with pytest.raises(UserError, match=r"unknown key 'modle'"):
        config.load(path, ["modle.backbone=x"])


def test_wrong_type_and_bad_choice_name_the_key(tmp_path):
    path = tmp_path / "e.yaml"
    path.write_text("")
    with pytest.raises(UserError, match=r"'train.epochs'"):
        config.load(path, ["train.epochs=many"])
    with pytest.raises(UserError, match=r"'train.sampler' is 'balanced'"):
        config.load(path, ["train.sampler=balanced"])
    with pytest.raises(UserError, match=r"key=value"):
        config.load(path, ["train.epochs"])
    with pytest.raises(UserError, match=r"not found"):
        config.load(tmp_path / "missing.yaml")


def test_target_col_may_be_a_list_only_for_multilabel(tmp_path):
    path = tmp_path / "e.yaml"
    path.write_text("task: multilabel\ndata:\n  target_col: [a, b]\n")
    assert config.load(path).target_cols == ["a", "b"]
    path.write_text("task: multiclass\ndata:\n  target_col: [a, b]\n")
    with pytest.raises(UserError, match=r"data\.target_col"):
        config.load(path)


def test_saved_config_reloads_identically(tmp_path):
    path = tmp_path / "exp007.yaml"
    path.write_text("task: regression\nmodel:\n  backbone: resnet10t\n")
    cfg = config.load(path, ["train.epochs=2"])
    config.save(cfg, tmp_path / "out" / "config.yaml")
    again = config.load(tmp_path / "out" / "config.yaml")
    assert again == cfg  # the experiment's name is stored, not re-derived from 'config.yaml'
    assert not list((tmp_path / "out").glob("*.tmp"))


def test_lr_is_a_positive_number_or_auto(tmp_path):
    path = tmp_path / "e.yaml"
    path.write_text("optim:\n  lr: 3e-4\n")  # YAML 1.1 would read 3e-4 as a string; OmegaConf reads a number
    assert config.load(path).optim.lr == pytest.approx(3e-4)
    assert config.load(path, ["optim.lr=auto"]).optim.lr == "auto"
    assert config.load(path, ["optim.lr=2"]).optim.lr == 2
    for bad in ("fast", "0", "-0.1", "true", "nan", "'0.01'"):
        with pytest.raises(UserError, match=r"'optim.lr' is .*expected a number > 0, or auto"):
            config.load(path, [f"optim.lr={bad}"])


def test_ordinal_rounding_and_head_init_keys(tmp_path):
    path = tmp_path / "e.yaml"
    path.write_text("task: regression\n")
    assert config.load(path, ["submit.ordinal=true"]).submit.ordinal is True
    path.write_text("task: multiclass\n")
    with pytest.raises(UserError, match=r"'submit.ordinal'.*task=multiclass"):
        config.load(path, ["submit.ordinal=true"])
    assert config.load(path).model.init_head == "prior"
    with pytest.raises(UserError, match=r"'model.init_head' is 'zeros'; allowed: prior, none"):
        config.load(path, ["model.init_head=zeros"])
