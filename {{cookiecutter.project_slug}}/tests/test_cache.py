"""The decode cache (data.cache): decoded once at the size training needs, reused across folds, experiments and
processes, rebuilt when the images or the size change, and resumed after a crash without trusting a torn file."""

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from {{ cookiecutter.package_name }} import cli
from {{ cookiecutter.package_name }}.data import cache

from conftest import TINY


def _jpegs(folder: Path, n: int, size: tuple[int, int] = (40, 30)) -> list[Path]:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        paths.append(folder / f"{i}.jpg")
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(paths[-1], quality=95)
    return paths


@pytest.fixture
def decodes(monkeypatch) -> list[Path]:
    """The files the cache decodes, in order (the builds here run in this process: 0 workers)."""
    seen: list[Path] = []
    real = cache.read_image

    def counting(path, in_chans, min_side=None):
        seen.append(Path(path))
        return real(path, in_chans, min_side)

    monkeypatch.setattr(cache, "read_image", counting)
    return seen


def test_shrink_keeps_the_aspect_and_never_enlarges():
    img = np.zeros((300, 200, 3), np.uint8)
    assert cache.shrink(img, 100).shape == (150, 100, 3)  # the shorter side becomes 100
    assert cache.shrink(img, 400) is img and cache.shrink(img, None) is img  # never enlarged
    assert cache.shrink(np.zeros((300, 200, 1), np.uint8), 50).shape == (75, 50, 1)  # grayscale keeps its axis


def test_jpeg_decoded_at_reduced_scale_still_covers_the_size(tmp_path):
    (path,) = _jpegs(tmp_path, 1, size=(800, 600))
    full = cache.read_image(path, 3)
    reduced = cache.read_image(path, 3, min_side=140)  # libjpeg scales by 1/2, 1/4 or 1/8: 1/4 leaves 150
    assert full.shape == (600, 800, 3) and reduced.shape == (150, 200, 3)
    assert cache.decode(path, 3, 140).shape == (140, 187, 3)


def test_disk_cache_decodes_once_and_is_reused(tmp_path, decodes):
    paths = _jpegs(tmp_path / "img", 5)
    first = cache.open_cache("disk", paths, 3, 20, tmp_path / "cache")
    assert len(decodes) == 5 and (first.folder / cache.MANIFEST).is_file()
    expected = [cache.decode(p, 3, 20) for p in paths]
    decodes.clear()
    again = cache.open_cache("disk", paths[::-1], 3, 20, tmp_path / "cache")  # the same set in another order
    assert decodes == [] and again.folder == first.folder  # read back, never decoded again
    for p, want in zip(paths, expected, strict=True):
        assert again.read(p).shape == (20, 27, 3) and np.array_equal(again.read(p), want)


def test_disk_cache_rebuilds_when_images_size_or_decoder_change(tmp_path, decodes, monkeypatch):
    paths = _jpegs(tmp_path / "img", 4)
    root = tmp_path / "cache"
    a = cache.open_cache("disk", paths, 3, 20, root)
    b = cache.open_cache("disk", paths, 3, 16, root)  # another training size
    c = cache.open_cache("disk", paths, 1, 20, root)  # grayscale
    d = cache.open_cache("disk", paths[:3], 3, 20, root)  # another image set
    assert len({a.folder, b.folder, c.folder, d.folder}) == 4 and len(decodes) == 4 * 4 - 1
    Image.fromarray(np.full((30, 40, 3), 7, np.uint8)).save(paths[2])  # an image replaced in place
    os.utime(paths[2], ns=(1, 1))  # even with an old modification time: the byte size changed too
    decodes.clear()
    e = cache.open_cache("disk", paths, 3, 20, root)
    assert e.folder != a.folder and len(decodes) == 4
    assert (e.read(paths[2]) == 7).all() and not (a.read(paths[2]) == 7).all()
    monkeypatch.setattr(cache.PIL, "__version__", "0.0.1")  # another decoder: another entry, decoded again
    decodes.clear()
    assert cache.open_cache("disk", paths, 3, 20, root).folder != e.folder and len(decodes) == 4


def test_crashed_build_is_resumed_and_torn_files_decoded_again(tmp_path, decodes, monkeypatch):
    paths = _jpegs(tmp_path / "img", 6)
    real = cache.decode

    def crash_at_fourth(path, in_chans, size):
        if len(decodes) == 3:
            raise KeyboardInterrupt  # Ctrl-C, or a killed process, in the middle of the build
        return real(path, in_chans, size)

    monkeypatch.setattr(cache, "decode", crash_at_fourth)
    with pytest.raises(KeyboardInterrupt):
        cache.open_cache("disk", paths, 3, 20, tmp_path / "cache")
    monkeypatch.setattr(cache, "decode", real)
    folder = next((tmp_path / "cache").iterdir())
    assert not (folder / cache.MANIFEST).exists()  # not complete: nothing will trust it as it is
    assert sorted(f.name for f in folder.glob("*.npy")) == ["0.npy", "1.npy", "2.npy"]
    torn = folder / "1.npy"
    torn.write_bytes(torn.read_bytes()[:-100])  # a file cut short (a crash below the rename)
    (folder / ".5.npy.abc.tmp").write_bytes(b"half")  # a write that never reached its rename
    decodes.clear()
    done = cache.open_cache("disk", paths, 3, 20, tmp_path / "cache")
    assert sorted(p.name for p in decodes) == ["1.jpg", "3.jpg", "4.jpg", "5.jpg"]  # 0 and 2 were whole
    assert not list(folder.glob("*.tmp")) and json.loads((folder / cache.MANIFEST).read_text())["images"] == 6
    for p in paths:
        np.testing.assert_array_equal(done.read(p), real(p, 3, 20))


def test_memory_cache_decodes_once_per_process(tmp_path, decodes):
    paths = _jpegs(tmp_path / "img", 3)
    a = cache.open_cache("memory", paths, 3, None, tmp_path / "unused")
    b = cache.open_cache("memory", paths, 3, None, tmp_path / "unused")
    assert a is b and len(decodes) == 3 and not (tmp_path / "unused").exists()
    assert cache.open_cache("none", paths, 3, None) is None


@pytest.mark.e2e
def test_disk_cache_through_the_cli_is_shared_by_folds_and_experiments(tmp_path, new_project, decodes):
    extra = TINY.replace("  num_workers: 0\n", f"  num_workers: 0\n  cache: disk\n  cache_dir: {tmp_path / 'cache'}\n")
    cfg = new_project(tmp_path, "multiclass", n_folds=2, extra=extra)
    n_images = len(pd.read_csv(tmp_path / "data" / "train.csv"))
    exp = str(tmp_path / "configs" / "exp.yaml")
    assert cli.main(["train", "-c", exp, "--fold", "0"]) == 0
    assert len(decodes) == n_images  # every training image, once: fold 1 will find them too
    decodes.clear()
    assert cli.main(["train", "-c", exp, "--fold", "1"]) == 0
    assert cli.main(["train", "-c", exp, "--fold", "0", "exp=other", "seed=3"]) == 0
    assert decodes == []
    (entry,) = (tmp_path / "cache").iterdir()
    assert len(list(entry.glob("*.npy"))) == n_images and Path(cfg.output_dir, "other", "fold0", "oof.csv").is_file()
