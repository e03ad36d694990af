"""The config: defaults <- YAML <- dotted overrides, strict keys and types, saved and reloaded unchanged."""

from pathlib import Path

import pytest

from {{ cookiecutter.package_name }} import config
from {{ cookiecutter.package_name }}.core.errors import UserError
from {{ cookiecutter.package_name }}.data import augment, samplers
from {{ cookiecutter.package_name }}.modeling import losses, metrics, models, optim

from conftest import SMALL

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


ACCURACY, MULTICLASS = "metric: accuracy\n", "task: multiclass\n"

# A bad value stops at load with one line that names the key (or what else is wrong).
BAD_AT_LOAD = [  # (id, the config file's text or None for no file, overrides, a regex the error line matches)
    # keys, types, the command line, the file
    ("unknown-key-in-file", "train:\n  epoch: 5\n", [],
     r"unknown key 'train.epoch'.*did you mean 'epochs'.*batch_size"),
    ("unknown-key-in-override", "", ["modle.backbone=x"], r"unknown key 'modle'"),
    ("wrong-type", "", ["train.epochs=many"], r"'train.epochs'"),
    ("bad-choice", "", ["train.sampler=balanced"], r"'train.sampler' is 'balanced'"),
    ("override-without-equals", "", ["train.epochs"], r"key=value"),
    ("file-missing", None, [], r"not found"),
    # ranges and combinations (the file says accuracy)
    ("metric-not-for-task", ACCURACY, ["task=regression"], r"metric.*accuracy.*not defined for task=regression"),
    ("zero-lr", ACCURACY, ["optim.lr=0"], r"'optim.lr' is 0; expected a number > 0"),
    ("negative-lr", ACCURACY, ["optim.lr=-1e-3"], r"'optim.lr' is -0.001"),
    ("loss-not-for-task", ACCURACY, ["loss.name=bce"], r"loss 'bce' does not support task 'multiclass'"),
    ("loss-option-not-for-task", ACCURACY, ["loss.label_smoothing=0.1", "loss.name=focal", "task=regression",
                                            "metric=rmse"], r"loss 'focal'"),
    ("mix-prob", ACCURACY, ["augment.mix_prob=2"], r"'augment.mix_prob' is 2.0"),
    ("tta-view", ACCURACY, ["tta.views=[identity,flipx]"], r"TTA view 'flipx'"),
    ("temperature-zero", ACCURACY, ["distill.temperature=0"], r"'distill.temperature'"),
    # runtime
    ("negative-workers", MULTICLASS, ["data.num_workers=-1"], r"data\.num_workers"),
    ("zero-threads", MULTICLASS, ["threads=0"], r"threads"),
    ("threads-not-a-number", MULTICLASS, ["threads=many"], r"threads"),
    ("channels-last", MULTICLASS, ["model.channels_last=sometimes"], r"model\.channels_last"),
    ("cache-mode", MULTICLASS, ["data.cache=ram"], r"data\.cache"),
    ("negative-seed", MULTICLASS, ["seed=-1"], r"seed"),
    # export and the ONNX runtime
    ("export-variant", "", ["export.variants=[onnx,tensorrt]"], r"'export\.variants'"),
    ("export-variant-twice", "", ["export.variants=[onnx,onnx]"], r"distinct"),
    ("export-int8-alone", "", ["export.variants=[onnx_int8]"], r"onnx_int8 without onnx"),
    ("export-sparsity", "", ["export.sparsity=1.0"], r"'export\.sparsity' is 1\.0"),
    ("export-opset", "", ["export.opset=17"], r"'export\.opset' is 17"),
    ("exporter", "", ["export.exporter=tflite"], r"'export\.exporter' is 'tflite'"),
    ("calibration-batches", "", ["export.calibration_batches=0"], r"'export\.calibration_batches'"),
    ("runtime", "", ["predict.runtime=tensorrt"], r"'predict\.runtime' is 'tensorrt'"),
    ("onnx-model", "", ["predict.onnx_model=fp16"], r"'predict\.onnx_model' is 'fp16'"),
    # distillation and pseudo-labels, on conftest's SMALL config
    ("distill-alpha", SMALL, ["distill.alpha=1.5"], r"distill\.alpha"),
    ("distill-temperature", SMALL, ["distill.temperature=0"], r"distill\.temperature"),
    ("pseudo-threshold", SMALL, ["pseudo.threshold=1.5"], r"pseudo\.threshold"),
    ("pseudo-top-fraction", SMALL, ["pseudo.top_fraction=0"], r"pseudo\.top_fraction"),
    ("pseudo-max-per-class", SMALL, ["pseudo.max_per_class=-1"], r"pseudo\.max_per_class"),
    ("pseudo-batch-ratio", SMALL, ["pseudo.batch_ratio=1.0"], r"pseudo\.batch_ratio"),
    ("pseudo-rounds", SMALL, ["pseudo.rounds=0"], r"pseudo\.rounds"),
    ("pseudo-weight", SMALL, ["pseudo.weight=-1"], r"pseudo\.weight"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "overrides", "match"), [c[1:] for c in BAD_AT_LOAD], ids=[c[0] for c in BAD_AT_LOAD])
def test_a_bad_value_stops_at_load_with_one_line_naming_it(tmp_path, text, overrides, match):
    path = tmp_path / "e.yaml"
    if text is not None:
        path.write_text(text or "seed: 1\n")  # an empty config is refused itself: the base is a one-key file
    with pytest.raises(UserError, match=match) as caught:
        config.load(path, overrides)
    assert len(str(caught.value).splitlines()) == 1, str(caught.value)


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


def test_base_is_merged_first_relative_to_the_file(tmp_path):
    (tmp_path / "configs" / "sub").mkdir(parents=True)
    (tmp_path / "configs" / "exp001.yaml").write_text("task: binary\ntrain:\n  epochs: 7\n  batch_size: 8\n")
    (tmp_path / "configs" / "sub" / "exp002.yaml").write_text("base: ../exp001.yaml\ntrain:\n  epochs: 3\n")
    (tmp_path / "configs" / "sub" / "exp003.yaml").write_text("base: exp002.yaml\noptim:\n  lr: 0.01\n")
    cfg = config.load(tmp_path / "configs" / "sub" / "exp003.yaml", ["train.batch_size=4"])
    assert (cfg.exp, cfg.task, cfg.train.epochs, cfg.optim.lr, cfg.train.batch_size) == ("exp003", "binary", 3, 0.01, 4)
    assert "base" not in config.to_yaml(cfg)  # the resolved config stands alone


def test_base_errors_name_the_file(tmp_path):
    (tmp_path / "a.yaml").write_text("base: missing.yaml\n")
    with pytest.raises(UserError, match=r"missing\.yaml not found \(named by 'base' in .*a\.yaml\)"):
        config.load(tmp_path / "a.yaml")
    (tmp_path / "b.yaml").write_text("base: c.yaml\n")
    (tmp_path / "c.yaml").write_text("base: b.yaml\n")
    with pytest.raises(UserError, match="loops back"):
        config.load(tmp_path / "b.yaml")


def test_shipped_student_configs_inherit_the_demo():
    demo, student = config.load(CONFIGS / "demo.yaml"), config.load(CONFIGS / "demo_pseudo.yaml")
    assert student.exp == "demo_pseudo" and student.pseudo.teacher == "demo"
    assert (student.model, student.augment, student.data) == (demo.model, demo.augment, demo.data)


@pytest.mark.parametrize(
    ("key", "registry"),
    [
        ("loss.name", losses.LOSSES),
        ("optim.name", optim.OPTIMIZERS),
        ("optim.schedule", optim.SCHEDULES),
        ("augment.preset", augment.PRESETS),
        ("train.sampler", samplers.SAMPLERS),
        ("metric", metrics.METRICS),
        ("model.init", models.INITS),
    ],
)
def test_choices_come_from_the_registries(tmp_path, key, registry):
    assert set(registry.names()) <= set(config.CHOICES[key])
    path = tmp_path / "c.yaml"
    path.write_text("{}\n")
    for name in registry.names():  # every registered name loads (for a task it supports)
        meta = registry.meta(name)
        task = meta["tasks"][0] if "tasks" in meta else "multiclass"
        assert config.get(config.load(path, [f"{key}={name}", f"task={task}"]), key) == name
    with pytest.raises(UserError, match=rf"'{key}' is 'nope'; allowed: "):
        config.load(path, [f"{key}=nope"])


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


@pytest.mark.parametrize("how", ["file", "override"])
def test_amp_off_means_off_although_yaml_reads_it_as_false(tmp_path, how):
    """`train.amp: off` is YAML 1.1's False; the hint for a diverging loss says `train.amp=off`: both must work."""
    path = tmp_path / "e.yaml"
    path.write_text("train:\n  amp: off\n" if how == "file" else "{}\n")
    cfg = config.load(path, [] if how == "file" else ["train.amp=off"])
    assert cfg.train.amp == "off"
    assert config.load(path, ["train.amp=on"]).train.amp == "auto"
    assert config.load(path, ["train.amp=bf16"]).train.amp == "bf16"
    saved = tmp_path / "saved.yaml"  # the run's config.yaml reads back as written
    config.save(cfg, saved)
    assert config.load(saved).train.amp == "off"


def test_home_is_expanded_once_at_load(tmp_path, monkeypatch):
    """`~` in a path key is the user's home folder for every stage (and wandb), never a folder named '~'."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "exp.yaml"
    path.write_text("data:\n  dir: ~/input\n")
    cfg = config.load(path, ["output_dir=~/runs", "data.cache_dir=~/cache"])
    assert cfg.output_dir == str(tmp_path / "home" / "runs") and cfg.run_dir == tmp_path / "home" / "runs" / "exp"
    assert (cfg.data.dir, cfg.data.cache_dir) == (str(tmp_path / "home" / "input"), str(tmp_path / "home" / "cache"))


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("exp=../x", r"config key 'exp' '\.\./x' is not a plain name"),
        ("exp=a/b", r"'a/b' is not a plain name"),
        ("exp=.", r"'\.' is not a plain name"),
        ("exp=~x", r"'~x' is not a plain name"),
        ("output_dir=../x", r"'output_dir' is '\.\./x', which leaves the project folder"),
        ("output_dir=outputs/../..", r"leaves the project folder"),
        ("output_dir=.", r"the project folder .* or one above it"),
        ("data.cache_dir=/", r"'data.cache_dir' is '/', the project folder .* or one above it"),
    ],
)
def test_names_and_written_paths_stay_inside_their_folder(tmp_path, monkeypatch, override, match):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "exp.yaml"
    path.write_text("seed: 1\n")
    with pytest.raises(UserError, match=match):
        config.load(path, [override])


def test_data_dir_may_be_outside_the_project(tmp_path, monkeypatch):
    """Data is only read: a Kaggle input folder or a folder beside the project is fine."""
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "exp.yaml"
    path.write_text("data:\n  dir: ../input\n")
    assert config.load(path, ["output_dir=/tmp/scratch/outputs"]).data.dir == "../input"
