"""The data path: uint8 from the workers, normalised on the device, workers that persist with one thread each,
augmentations seeded per sample (results independent of num_workers), one evaluation pass for raw and EMA weights,
and the CPU plan of threads and workers."""

import os
import signal
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch.utils.data import ConcatDataset, Dataset

from {{ cookiecutter.package_name }} import cli, config, train
from {{ cookiecutter.package_name }}.core import runtime
from {{ cookiecutter.package_name }}.core.errors import UserError
from {{ cookiecutter.package_name }}.data import augment, images, samplers
from {{ cookiecutter.package_name }}.engine import inference

from conftest import TINY

CPU = torch.device("cpu")


def _pngs(folder: Path, n: int, size: int = 12) -> list[Path]:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        paths.append(folder / f"{i}.png")
        Image.fromarray(rng.integers(0, 256, (size, size + 3), dtype=np.uint8)).save(paths[-1])
    return paths


def _train_tf(size: int = 12):
    cfg = config.AugmentConfig(image_size=size, preset="heavy", hflip=True, vflip=True, rotate90=True)
    return augment.build_transforms(cfg, True, 1)


def test_device_loader_gives_normalised_float_batches_from_uint8_items(tmp_path):
    paths = _pngs(tmp_path, 6)
    ds = images.ImageDataset(paths, np.arange(6), None, in_chans=3)
    assert ds[0]["image"].dtype == torch.uint8  # what workers send: a quarter of float32's bytes
    norm = augment.Normalize((0.5,) * 3, (0.25,) * 3)
    for channels_last in (False, True):
        loader = images.make_loader(ds, 4, False, 0, CPU, norm, channels_last=channels_last)
        batch = next(iter(loader))
        x = batch["image"]
        assert x.dtype == torch.float32 and x.is_contiguous(memory_format=torch.channels_last) == channels_last
        raw = torch.stack([ds[i]["image"] for i in range(4)]).permute(0, 3, 1, 2).float()  # items are HWC
        torch.testing.assert_close(x, (raw / 255 - 0.5) / 0.25)
        assert batch["target"].tolist() == [0, 1, 2, 3]
    with pytest.raises(TypeError, match="DeviceLoader"):  # raw uint8 batches are refused, not silently mis-scaled
        inference.predict_loader(torch.nn.Identity(), [{"image": raw.to(torch.uint8)}], "multiclass", CPU)


class _WorkerFacts(Dataset):
    """Reports, from inside the worker that loads it, the worker's process id and thread settings."""

    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> dict:
        facts = [os.getpid(), torch.get_num_threads(), cv2.getNumThreads()]
        return {"image": torch.zeros(2, 2, 1, dtype=torch.uint8), "facts": torch.tensor(facts)}


def _alarm(signum, frame):
    raise TimeoutError("the loader's workers hang")


def test_workers_persist_across_epochs_with_one_thread_each():
    # This process first runs OpenCV on two threads and lets its pool fall asleep: setting OpenCV's threads inside
    # a worker forked from it would then hang for ever, so the workers must inherit one thread instead.
    cv2.setNumThreads(2)
    for _ in range(3):
        cv2.GaussianBlur(np.zeros((1500, 1500, 3), np.uint8), (9, 9), 0)
    time.sleep(0.5)
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(60)
    try:
        loader = images.make_loader(_WorkerFacts(), 2, True, 2, CPU, augment.Normalize((0.5,), (0.5,)))
        epochs = []
        for epoch in range(2):
            loader.set_epoch(epoch)
            epochs.append(torch.cat([b["facts"] for b in loader]))
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    pids = [set(e[:, 0].tolist()) for e in epochs]
    assert len(pids[0]) == 2 and pids[0] == pids[1] and os.getpid() not in pids[0]  # the same two workers
    assert set(epochs[0][:, 1].tolist()) == {1} and set(epochs[0][:, 2].tolist()) == {1}  # torch and OpenCV


def test_augmentation_depends_on_seed_fold_epoch_and_row_only(tmp_path):
    paths = _pngs(tmp_path, 5)
    ds = images.ImageDataset(paths, None, _train_tf(), in_chans=1)
    images.set_epoch(ds, 1, 0, 0)
    first = [ds[i]["image"] for i in range(5)]
    again = [ds[i]["image"] for i in reversed(range(5))][::-1]  # another order, as another worker split draws them
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    for key in [(1, 0, 1), (1, 1, 0), (2, 0, 0)]:  # another epoch, fold or seed: other augmentations
        images.set_epoch(ds, *key)
        assert not all(torch.equal(a, ds[i]["image"]) for i, a in enumerate(first)), key
    # The two parts of a ConcatDataset (labelled + pseudo rows) draw different streams for the same row number.
    twin = images.ImageDataset(paths, None, _train_tf(), in_chans=1)
    both = ConcatDataset([ds, twin])
    images.set_epoch(both, 1, 0, 0)
    assert not all(torch.equal(both[i]["image"], both[5 + i]["image"]) for i in range(5))


def test_shuffle_depends_on_seed_and_epoch_only():
    a, b = samplers.ShuffleSampler(50, seed=3), samplers.ShuffleSampler(50, seed=3)
    orders = []
    for epoch in (0, 1):
        a.set_epoch(epoch)
        b.set_epoch(epoch)
        assert list(a) == list(a) == list(b)  # iterating again repeats the epoch
        orders.append(list(a))
    assert orders[0] != orders[1] and sorted(orders[0]) == list(range(50))


def _train(root: Path, *overrides: str) -> pd.DataFrame:
    assert cli.main(["train", "-c", str(root / "configs" / "exp.yaml"), "--fold", "0", *overrides]) == 0
    return pd.read_csv(root / "outputs" / "exp" / "fold0" / "oof.csv")


@pytest.mark.e2e
def test_oof_identical_with_0_and_2_workers(tmp_path, new_project):
    """Same seed, 0 or 2 loader processes: the same batches, the same augmentations, bit-identical OOF
    (2 epochs, so the second epoch's order and augmentations are compared too)."""
    extra = TINY.replace("epochs: 1", "epochs: 2").replace("preset: light", "preset: heavy")
    new_project(tmp_path / "a", "multiclass", n_folds=2, extra=extra)
    new_project(tmp_path / "b", "multiclass", n_folds=2, extra=extra)
    pd.testing.assert_frame_equal(
        _train(tmp_path / "a"), _train(tmp_path / "b", "data.num_workers=2"), check_exact=True
    )


def test_oof_identical_with_0_and_2_workers_under_default_threads(tmp_path, new_project, monkeypatch):
    """threads: auto (the default) comes from the cores alone: with 0 or 2 loader workers the training process
    computes on as many threads, and trains the very same model (CPU convolutions reduce in another order under
    another thread count)."""
    monkeypatch.setattr(runtime, "available_cores", lambda: 2)  # the machine's count, whatever this one has
    extra = TINY.replace("epochs: 1", "epochs: 2").replace("preset: light", "preset: heavy")
    extra = extra.replace("threads: 1", "threads: auto")
    new_project(tmp_path / "a", "multiclass", n_folds=2, extra=extra)
    new_project(tmp_path / "b", "multiclass", n_folds=2, extra=extra)
    before = torch.get_num_threads()
    try:
        pd.testing.assert_frame_equal(
            _train(tmp_path / "a", "data.num_workers=0"), _train(tmp_path / "b", "data.num_workers=2"), check_exact=True
        )
    finally:
        runtime.set_threads(before)


class _Counting(Dataset):
    def __init__(self, n: int) -> None:
        self.n, self.reads = n, 0

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        self.reads += 1
        g = torch.Generator().manual_seed(i)
        return {"image": torch.randint(0, 256, (8, 8, 1), generator=g, dtype=torch.uint8)}


def test_raw_and_ema_weights_evaluated_in_one_pass():
    ds = _Counting(10)
    loader = images.make_loader(ds, 4, False, 0, CPU, augment.Normalize((0.5,), (0.5,)))
    torch.manual_seed(0)
    nets = {k: torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3)) for k in ("model", "ema")}
    both = inference.predict_models(nets, loader, "multiclass", CPU)
    assert ds.reads == 10  # every row read once for both models
    for name, net in nets.items():
        np.testing.assert_array_equal(both[name], inference.predict_loader(net, loader, "multiclass", CPU))


def test_a_non_finite_loss_still_stops_training(tmp_path, new_project):
    cfg = new_project(tmp_path, "multiclass", n_folds=2, extra=TINY)

    def nan_step(model, batch, criterion):
        return {"loss": model(batch["image"]).sum() * float("nan")}

    with pytest.raises(UserError, match=r"epoch 1 batches 0\.\.3: lower optim.lr"):
        train.train_one_fold(cfg, 0, step=nan_step)


@pytest.mark.parametrize("cores", [1, 2, 3, 4, 8, 16, 64])
@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_auto_threads_and_workers_never_oversubscribe(monkeypatch, cores, device):
    monkeypatch.setattr(runtime, "available_cores", lambda: cores)
    dev = torch.device(device)
    threads, workers = runtime.plan_cpu(dev, "auto", "auto")
    assert threads >= 1 and workers >= 0 and threads + workers <= max(cores, 2)
    if device == "cpu" and cores >= 2:
        assert workers >= 1  # decoding overlaps the model's compute
    if device == "cuda" and cores >= 2:
        assert workers >= min(cores - 1, runtime.MAX_AUTO_WORKERS)  # the GPU computes; the cores decode
    assert runtime.plan_cpu(dev, 3, "auto")[0] == 3 and runtime.plan_cpu(dev, "auto", 5)[1] == 5  # overrides win
    assert sum(runtime.plan_cpu(dev, 1, "auto")) <= max(cores, 2)
    # auto threads never follow the workers (they would change the model on CPU)
    assert {runtime.plan_cpu(dev, "auto", w)[0] for w in ("auto", 0, 1, 2, 8)} == {threads}


def test_compute_setup_sets_threads_and_channels_last_auto_is_off_on_cpu():
    before = torch.get_num_threads()
    try:
        device, workers = runtime.compute_setup("cpu", 1, 3)
        assert (device.type, workers, torch.get_num_threads()) == ("cpu", 3, 1)
    finally:
        runtime.set_threads(before)
    assert runtime.use_channels_last("auto", CPU) is False
    assert runtime.use_channels_last("auto", torch.device("cuda")) is True
    assert runtime.use_channels_last(True, CPU) is True


def test_old_cache_images_key_still_loads(tmp_path):
    """An older run's saved config.yaml (teachers, upload and the notebook read it again) names data.cache_images."""
    path = tmp_path / "old.yaml"
    path.write_text("data:\n  cache_images: true\n")
    assert config.load(path).data.cache == "memory"
    assert config.load(path, ["data.cache_images=false"]).data.cache == "none"
    path.write_text("data:\n  cache_images: true\n  cache: disk\n")
    assert config.load(path).data.cache == "disk"
