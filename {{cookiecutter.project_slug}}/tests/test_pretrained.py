"""The pretrained path, offline: every real run starts from pretrained weights, which the hub serves. Here a temporary
Hugging Face cache (HF_HOME, HF_HUB_OFFLINE=1) holds test_resnet's weights as the hub would, pretrained in this
module on another task (the digits 0-4 of the digits images the demo competition does not use), and the demo
competition (all ten digits) trains from them: build_model loads exactly those backbone weights (the head new, the
RGB stem summed for grey input), the backbone trains at optim.lr * model.backbone_lr_mult, the loader normalises
with the pretrained config's mean/std, and two epochs from them beat two epochs from scratch by a wide margin.
`model.weights: <file>` (a Kaggle dataset in a notebook without internet) loads the same weights without the hub.
"""

import dataclasses
import json
from pathlib import Path

import huggingface_hub.constants
import pytest
import timm
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from safetensors.torch import save_file
from sklearn.datasets import load_digits

from {{ cookiecutter.package_name }} import cli, config
from {{ cookiecutter.package_name }}.core.errors import UserError
from {{ cookiecutter.package_name }}.data.augment import resolve_normalization
from {{ cookiecutter.package_name }}.engine.fold import setup_fold
from {{ cookiecutter.package_name }}.engine.trainer import build_trainer
from {{ cookiecutter.package_name }}.modeling import models

from conftest import SMALL, small_digits, write_config

BACKBONE = "test_resnet"
HUB_ID = timm.models.get_pretrained_cfg(BACKBONE).hf_hub_id  # timm/test_resnet.r160_in1k
PRETEXT_CLASSES = [0, 1, 2, 3, 4]  # the pretext task: other images, half the classes
HUB_MEAN, HUB_STD = 0.3, 0.2  # an hf-hub: backbone's config.json normalisation (neither ImageNet's nor 0.5)

# Two epochs of the whole fold (4 batches each); the rest as SMALL (conftest), the normalisation the backbone's.
TARGET = """
model:
  pretrained: true
  backbone_lr_mult: 0.25
augment:
  mean: null
  std: null
train:
  epochs: 2
  limit_batches: 0
"""


def pretext_images() -> tuple[torch.Tensor, torch.Tensor]:
    """The pretext task: the digits images the small demo competition (conftest.small_digits) leaves out, of the
    classes PRETEXT_CLASSES, at the demo's 16 px as RGB (grey in three channels), 0..1."""
    d, used = load_digits(), small_digits()
    seen = {row.tobytes() for row in used.data}
    keep = [i for i, row in enumerate(d.data) if row.tobytes() not in seen and d.target[i] in PRETEXT_CLASSES]
    x = torch.tensor(d.data[keep] / 16, dtype=torch.float32).view(-1, 1, 8, 8)
    x = F.interpolate(x, size=16, mode="bicubic", align_corners=False).clamp(0, 1).expand(-1, 3, -1, -1)
    return x, torch.tensor(d.target[keep])


def pretrain(epochs: int = 4) -> dict[str, torch.Tensor]:
    """test_resnet (RGB, a head for the pretext classes) trained on the pretext task, normalised with its pretrained
    config's mean/std as the hub's weights would have been."""
    torch.manual_seed(0)
    x, y = pretext_images()
    pcfg = timm.models.get_pretrained_cfg(BACKBONE)
    x = (x - torch.tensor(pcfg.mean).view(1, 3, 1, 1)) / torch.tensor(pcfg.std).view(1, 3, 1, 1)
    model = timm.create_model(BACKBONE, num_classes=len(PRETEXT_CLASSES))
    steps = epochs * -(-len(x) // 64)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=steps)
    model.train()
    for _ in range(epochs):
        for b in torch.randperm(len(x)).split(64):
            loss = F.cross_entropy(model(x[b]), y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    with torch.no_grad():
        assert (model(x).argmax(1) == y).float().mean() > 0.9  # the pretext task is learnt
    return {k: v.detach().contiguous() for k, v in model.state_dict().items()}


def fill_cache(hf_home: Path, repo_id: str, state: dict[str, torch.Tensor], config_json: dict | None = None) -> Path:
    """`repo_id`'s files in the Hugging Face cache layout, as a download leaves them: hub/models--<org>--<name>/
    snapshots/<revision>/model.safetensors (and config.json), refs/main naming the revision."""
    repo = hf_hub_id_folder(hf_home, repo_id)
    revision = "0123456789abcdef0123456789abcdef01234567"
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True)
    save_file(state, snapshot / "model.safetensors")
    if config_json is not None:
        (snapshot / "config.json").write_text(json.dumps(config_json))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    return snapshot


def hf_hub_id_folder(hf_home: Path, repo_id: str) -> Path:
    return hf_home / "hub" / ("models--" + repo_id.replace("/", "--"))


@pytest.fixture(scope="module")
def hub(tmp_path_factory, small_project) -> dict:
    """HF_HOME: a temporary cache holding test_resnet's pretext weights (as timm/test_resnet.r160_in1k), and an
    hf-hub: copy of them with a config.json of its own normalisation. huggingface_hub reads HF_HOME once, when it is
    imported (already done here), into constants.HF_HUB_CACHE: both are set, as a fresh process would find them."""
    hf_home = tmp_path_factory.mktemp("hf_home")
    state = pretrain()
    snapshot = fill_cache(hf_home, HUB_ID, state)
    pcfg = {**timm.models.get_pretrained_cfg(BACKBONE).to_dict(), "mean": [HUB_MEAN] * 3, "std": [HUB_STD] * 3}
    hub_cfg = {"architecture": BACKBONE, "num_classes": len(PRETEXT_CLASSES), "pretrained_cfg": pcfg}
    fill_cache(hf_home, "someone/pretext-resnet", state, hub_cfg)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HOME", str(hf_home))
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hf_home / "hub"))
        mp.chdir(small_project)  # model.weights, like data.dir, is relative to the project
        yield {"home": hf_home, "state": state, "file": snapshot / "model.safetensors"}


def target_config(root: Path, name: str, overrides: list[str] = ()) -> config.Config:
    return config.load(target_path(root, name), list(overrides))


def target_path(root: Path, name: str) -> Path:
    extra = OmegaConf.to_yaml(OmegaConf.merge(OmegaConf.create(SMALL), OmegaConf.create(TARGET)))
    return write_config(root, n_folds=2, extra=extra, name=name)


def backbone_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    head = {n for n, p in model.named_parameters() if id(p) in models.head_parameter_ids(model)}
    return {k: v for k, v in model.state_dict().items() if k not in head}


def assert_pretext_backbone(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Every backbone tensor is the pretext model's; the RGB stem summed over its channels for grey input (timm's
    in_chans adaptation); the head is new (other classes), not the pretext's."""
    got = backbone_state(model)
    stem = models.first_conv_name(model) + ".weight"
    assert set(got) == {k for k in state if not k.startswith("fc.")}
    for k, v in got.items():
        want = state[k].sum(1, keepdim=True) if k == stem else state[k]
        torch.testing.assert_close(v, want, rtol=0, atol=1e-6, msg=k)
    assert model.get_classifier().out_features == 10 != state["fc.weight"].shape[0]


def test_pretrained_true_loads_the_cached_weights(hub, small_project):
    cfg = target_config(small_project, "pre")
    assert_pretext_backbone(models.build_model(cfg, 10), hub["state"])
    scratch = models.build_model(target_config(small_project, "scratch", ["model.pretrained=false"]), 10)
    assert not torch.equal(scratch.state_dict()["layer1.0.conv1.weight"], hub["state"]["layer1.0.conv1.weight"])


def test_backbone_trains_at_its_multiple_of_the_lr(hub, small_project):
    cfg = target_config(small_project, "pre")
    s = setup_fold(cfg, 0)
    trainer = build_trainer(cfg, s.model, s.n_batches, s.device, s.dtype)
    lrs = {g["name"]: g["max_lr"] for g in trainer.optimizer.param_groups}  # one-cycle's peak, per group
    lr = cfg.optim.lr
    assert lrs == {"head": lr, "head_no_decay": lr, "backbone": lr * 0.25, "backbone_no_decay": lr * 0.25}
    head = models.head_parameter_ids(s.model)
    for g in trainer.optimizer.param_groups:
        assert all((id(p) in head) == g["name"].startswith("head") for p in g["params"])


def test_loader_normalises_with_the_pretrained_mean_std(hub, small_project):
    # test_resnet's pretrained config: 0.5 / 0.5, not ImageNet's (grey: their mean, 0.449 / 0.226)
    s = setup_fold(target_config(small_project, "pre"), 0)
    pcfg = timm.models.get_pretrained_cfg(BACKBONE)
    assert pcfg.mean == (0.5,) * 3 and pcfg.std == (0.5,) * 3
    assert torch.allclose(s.loader.normalize.mean.flatten(), torch.tensor([255 * 0.5]))
    assert torch.allclose(s.valid_loader.normalize.inv_std.flatten(), torch.tensor([1 / (255 * 0.5)]))
    # an hf-hub: backbone: its config.json (in the cache) says the normalisation, and its weights are the cache's
    cfg = target_config(small_project, "hub", ["model.backbone=hf-hub:someone/pretext-resnet"])
    model = models.build_model(cfg, 10)
    mean, std = resolve_normalization(cfg.augment, model, 1)
    assert mean == pytest.approx([HUB_MEAN]) and std == pytest.approx([HUB_STD])
    assert_pretext_backbone(model, hub["state"])


@pytest.mark.e2e
def test_two_epochs_from_the_pretext_weights_beat_scratch(hub, small_project):
    """Fold 0 of the ten-digit demo (64 training rows), same seed and everything else, each at its own default
    backbone LR multiple except the pretrained one's 0.25 (scratch: 1, its default, which suits it best)."""
    scores = {}
    for name, overrides in (("pre", []), ("scratch", ["model.pretrained=false", "model.backbone_lr_mult=1"])):
        path = target_path(small_project, name)
        assert cli.main(["train", "-c", str(path), "--fold", "0", *overrides]) == 0
        scores[name] = json.loads((small_project / "outputs" / name / "cv.json").read_text())["cv"]
    print(f"accuracy after two epochs: pretrained {scores['pre']:.3f}, scratch {scores['scratch']:.3f}")
    assert scores["pre"] >= scores["scratch"] + 0.25, scores


def test_weights_file_gives_the_cached_weights(hub, small_project, tmp_path):
    cached = models.build_model(target_config(small_project, "pre"), 10)
    # a Kaggle dataset's file, outside the HF cache, given relative to the project
    kaggle = small_project / "input" / "pretext"
    kaggle.mkdir(parents=True, exist_ok=True)
    (kaggle / "model.safetensors").write_bytes(hub["file"].read_bytes())
    torch.save(hub["state"], kaggle / "pytorch_model.bin")
    for file in ("input/pretext/model.safetensors", "input/pretext/pytorch_model.bin"):
        model = models.build_model(target_config(small_project, "file", [f"model.weights={file}"]), 10)
        assert backbone_state(model).keys() == backbone_state(cached).keys()
        for k, v in backbone_state(model).items():
            assert torch.equal(v, backbone_state(cached)[k]), k


def test_weights_file_reaches_a_segmentation_encoder(hub, small_project):
    """task=segmentation: smp's tu- encoder is timm's backbone, loaded from the same file (the stem summed too)."""
    cfg = target_config(small_project, "file", [f"model.weights={hub['file']}"])
    seg = dataclasses.replace(cfg, task="segmentation", model=dataclasses.replace(cfg.model, decoder_channels=[8] * 5))
    encoder = models.build_model(seg, 3).encoder.model.state_dict()
    assert encoder.keys() == {k for k in hub["state"] if not k.startswith("fc.")}
    for k, v in encoder.items():
        want = hub["state"][k].sum(1, keepdim=True) if k == "conv1.0.weight" else hub["state"][k]
        torch.testing.assert_close(v, want, rtol=0, atol=1e-6, msg=k)


def test_weights_file_never_needs_the_hub(hub, small_project):
    """With the cache gone (a notebook without internet), model.weights still loads, the hub is never asked."""
    cfg = target_config(small_project, "file", [f"model.weights={hub['file']}"])
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub["home"] / "elsewhere"))
        with pytest.raises(UserError, match="cannot be downloaded"):
            models.build_model(target_config(small_project, "pre"), 10)
        assert_pretext_backbone(models.build_model(cfg, 10), hub["state"])


def test_weights_refusals(hub, small_project):
    with pytest.raises(UserError, match=r"'model.weights' is 'input/none.safetensors': no such file"):
        models.build_model(target_config(small_project, "bad", ["model.weights=input/none.safetensors"]), 10)
    with pytest.raises(UserError, match=r"'model.weights' .* model.pretrained is false"):
        target_config(small_project, "bad", [f"model.weights={hub['file']}", "model.pretrained=false"])
    other = small_project / "other.safetensors"
    save_file({"conv1.0.weight": torch.zeros(4, 3, 3, 3)}, other)
    with pytest.raises(UserError, match=r"'model.weights' is .*other.safetensors.*cannot load"):
        models.build_model(target_config(small_project, "bad", [f"model.weights={other}"]), 10)
    # predicting never opens it: the fold checkpoints hold the weights
    cfg = target_config(small_project, "bad", ["model.weights=input/none.safetensors"])
    assert models.build_model(cfg, 10, pretrained=False).get_classifier().out_features == 10
