"""The decode cache (`data.cache`): decode each image once, at the size training needs, instead of every epoch.

    none    decode the file every time an image is read (small images, or little RAM and disk)
    memory  decode once per process into RAM (small datasets)
    disk    decode once, ever: uint8 arrays under <data.cache_dir>/<key>/<row>.npy, reused across folds, experiments
            and processes (one fold per GPU, torchrun ranks) until the images or the size change

Cached images are shrunk (never enlarged) so that their shorter side is the size the transforms need to lose
nothing (augment.source_size: the training size, more for random crops that zoom in); a 2-3k pixel fundus photo
trained at 256-512 px then decodes from a file a tenth of its size. JPEGs are decoded at reduced DCT scale when that
still covers the size. The key (the folder's name) hashes the image set (paths, sizes, modification times), the size,
the channels and the decoder (CACHE_VERSION, Pillow's and OpenCV's versions): change any of them and a new entry is
built next to the old one (delete <data.cache_dir> to reclaim the space). Each array is written to a temporary name
and renamed; `manifest.json` is written last and marks the entry complete. An entry without it (a crash, Ctrl-C) is
resumed: arrays that read back whole are kept, the rest are decoded again.

The feature cache (train.frozen_features) sits beside it: <data.cache_dir>/features/<key>.npz holds a frozen
backbone's pooled features of an image set, one row per image (in the sorted order of the paths it also holds),
under a key that extends the decode cache's (image set, size, channels, decoder) with the model's identity
(`features_key`: the backbone, a digest of its weights, the normalisation, the precision).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import cv2
import numpy as np
import PIL
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ..core.runs import atomic_save_npy, atomic_save_npz, atomic_write_json, read_json, remove_stale_tmp
from ..core.runtime import barrier, is_main
from .decode import one_opencv_thread, read_image, worker_init

MODES = ("none", "memory", "disk")
CACHE_VERSION = 2  # bump when read_image or shrink changes what a cached array holds (2: fixed 16-bit scaling)


def decoder() -> dict[str, str]:
    """What a cached array was decoded with: this code's CACHE_VERSION and the decoding libraries' versions (a new
    Pillow or OpenCV may decode or resize a JPEG a few levels differently)."""
    return {"version": str(CACHE_VERSION), "pillow": PIL.__version__, "opencv": cv2.__version__}


MANIFEST = "manifest.json"


def shrink(image: np.ndarray, size: int | None) -> np.ndarray:
    """`image` (HWC uint8) with its shorter side reduced to `size` (area interpolation, aspect kept); never enlarged."""
    h, w = image.shape[:2]
    if not size or min(h, w) <= size:
        return image
    scale = size / min(h, w)
    out = cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    return out[..., None] if out.ndim == 2 else out


def decode(path: Path, in_chans: int, size: int | None) -> np.ndarray:
    """What the cache holds for `path`: the image decoded and shrunk to `size`."""
    return shrink(read_image(path, in_chans, min_side=size), size)


def cache_key(paths: Sequence[Path], in_chans: int, size: int | None) -> str:
    """Hash of the image set (path, byte size, modification time of each file), size, channels and decoder. `paths`
    in a fixed order (open_cache sorts them), so that another row order of the same images finds the same entry."""
    h = hashlib.sha256(json.dumps({"decoder": decoder(), "in_chans": in_chans, "size": size}).encode())
    for p in paths:
        st = os.stat(p)
        h.update(f"{os.path.abspath(p)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


class ImageCache:
    """Decoded images of a fixed set of files; `read(path)` -> HWC uint8, for any path of the set."""

    def __init__(self, paths: Sequence[Path]) -> None:
        self.rows = {str(p): i for i, p in enumerate(paths)}

    def row(self, path: Path) -> int:
        try:
            return self.rows[str(path)]
        except KeyError:
            raise KeyError(f"{path} is not among the {len(self.rows)} images of this cache") from None

    def read(self, path: Path) -> np.ndarray:
        raise NotImplementedError


class MemoryCache(ImageCache):
    def __init__(self, paths: Sequence[Path], images: list[np.ndarray]) -> None:
        super().__init__(paths)
        self.images = images

    def read(self, path: Path) -> np.ndarray:
        return self.images[self.row(path)]


class DiskCache(ImageCache):
    def __init__(self, paths: Sequence[Path], folder: Path) -> None:
        super().__init__(paths)
        self.folder = folder

    def file(self, row: int) -> Path:
        return self.folder / f"{row}.npy"

    def read(self, path: Path) -> np.ndarray:
        return np.load(self.file(self.row(path)))


def whole(file: Path, in_chans: int) -> bool:
    """Whether `file` is a complete HWC uint8 array (a truncated .npy fails to map its declared shape)."""
    try:
        arr = np.load(file, mmap_mode="r")
    except (OSError, ValueError, EOFError):
        return False
    return arr.dtype == np.uint8 and arr.ndim == 3 and arr.shape[2] == in_chans


class _Decode(Dataset):
    """Decodes row i: returns the array (memory), or writes it unless already whole and returns None (disk)."""

    def __init__(self, paths: Sequence[Path], in_chans: int, size: int | None, disk: DiskCache | None) -> None:
        self.paths, self.in_chans, self.size, self.disk = list(paths), in_chans, size, disk

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> np.ndarray | None:
        if self.disk is None:
            return decode(self.paths[i], self.in_chans, self.size)
        file = self.disk.file(i)
        if not (file.is_file() and whole(file, self.in_chans)):
            atomic_save_npy(file, decode(self.paths[i], self.in_chans, self.size))
        return None


def _as_is(item: np.ndarray | None) -> np.ndarray | None:
    return item  # the loader's default would turn arrays into tensors


def _decode_all(job: _Decode, workers: int, desc: str) -> list:
    """job[i] for every row, in order, decoded by `workers` processes (0: here), with a progress bar."""
    one_opencv_thread()
    loader = DataLoader(job, batch_size=None, num_workers=workers, worker_init_fn=worker_init, collate_fn=_as_is)
    out = []
    # tqdm.auto(loader) would call iter(loader) twice (its asyncio flavour takes an iterator up front), starting
    # every worker twice; the bar is updated by hand instead.
    with tqdm(total=len(job), desc=desc, disable=None) as bar:
        for item in loader:
            out.append(item)
            bar.update()
    return out


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """One builder per entry at a time, across processes (one fold per GPU starts several at once): the others
    wait, then find the entry complete. Without fcntl (Windows) there is no lock; writes stay atomic."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(folder / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


_MEMORY: dict[str, MemoryCache] = {}  # per process: folds and stages in one process decode once


def open_cache(
    mode: str,
    paths: Sequence[Path],
    in_chans: int,
    size: int | None,
    cache_dir: str | Path = "data/cache",
    workers: int = 0,
) -> ImageCache | None:
    """The cache of `paths` for data.cache = `mode` (None for 'none'), built first where needed.

    disk: under torchrun, rank 0 builds while the other ranks wait, then all read the same files."""
    if mode == "none":
        return None
    if mode not in MODES:
        raise ValueError(f"data.cache={mode!r}; expected one of {MODES}")
    paths = sorted(paths, key=str)  # row r of the entry is the r-th path in this order, whatever the table's order
    key = cache_key(paths, in_chans, size)
    if mode == "memory":
        if key not in _MEMORY:
            images = _decode_all(_Decode(paths, in_chans, size, None), workers, f"decode {len(paths)} images")
            _MEMORY[key] = MemoryCache(paths, images)
        return _MEMORY[key]
    cache = DiskCache(paths, Path(cache_dir) / key)
    manifest = {"version": CACHE_VERSION, "in_chans": in_chans, "size": size, "images": len(paths)}
    done = cache.folder / MANIFEST
    if is_main() and not _complete(done, manifest):
        cache.folder.mkdir(parents=True, exist_ok=True)
        with _locked(cache.folder):
            if not _complete(done, manifest):  # another process may have built it while this one waited
                remove_stale_tmp(cache.folder)  # a build killed mid-write leaves its temporary files
                desc = f"decode cache {len(paths)} images -> {cache.folder}"
                _decode_all(_Decode(paths, in_chans, size, cache), workers, desc)
                atomic_write_json(done, manifest)  # last: the entry is complete
    barrier()
    return cache


def _complete(done: Path, manifest: dict) -> bool:
    return done.is_file() and read_json(done) == manifest


# --------------------------------------------------------------------------------------------- feature cache

FEATURES_DIR = "features"


def features_key(paths: Sequence[Path], in_chans: int, size: int | None, model: dict) -> str:
    """The decode cache's key of the image set (`cache_key`: paths, byte sizes, modification times, size,
    channels, decoder) extended with `model`, what else decides a feature (backbone, weights digest,
    normalisation, precision): change any of them and the features are computed again."""
    h = hashlib.sha256(cache_key(sorted(paths, key=str), in_chans, size).encode())
    h.update(json.dumps(model, sort_keys=True).encode())
    return h.hexdigest()[:16]


def features_file(cache_dir: str | Path, key: str) -> Path:
    return Path(cache_dir) / FEATURES_DIR / f"{key}.npz"


def write_features(file: Path, paths: Sequence[Path], features: np.ndarray) -> Path:
    """Row r of `features` is the image paths[r]; written atomically (a reader finds the whole entry or none)."""
    names = np.array([str(p) for p in paths])
    return atomic_save_npz(file, paths=names, features=np.ascontiguousarray(features, dtype=np.float32))


def read_features(file: Path) -> dict[str, np.ndarray] | None:
    """path -> its feature row, from an entry written by `write_features`; None when there is none (or it is
    unreadable: computed again)."""
    if not file.is_file():
        return None
    try:
        with np.load(file, allow_pickle=False) as z:
            names, features = z["paths"], z["features"]
    except (OSError, ValueError, KeyError, EOFError):
        return None
    return {str(p): features[i] for i, p in enumerate(names)}
