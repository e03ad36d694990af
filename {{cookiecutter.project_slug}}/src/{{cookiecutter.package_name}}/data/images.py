"""Images on disk -> tensors: path resolution, the up-front decode check, decoding (grayscale or RGB), the Dataset,
the loaders."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..core.errors import UserError
from .decode import one_opencv_thread, read_image, worker_init
from .samplers import ShuffleSampler

if TYPE_CHECKING:
    from .cache import ImageCache


class ImageDataset(Dataset):
    """Yields {"image": HWC uint8 tensor, "target": task target, "index": row} (+ any `extras` arrays by name).
    Segmentation: `masks(i, (H, W))` gives row i's masks, HWC uint8 0/1; they go through the transforms with the
    image (albumentations moves a `mask` with every geometric step, nearest-neighbour) and the target is their
    (C, H, W) uint8 stack, or float32 mask / `mask_scale` when that is set (soft masks: uint8 0..255 probabilities
    with mask_scale 255, next to 0/1 masks made float32 with mask_scale 1 so that both collate into one batch).
    `maps` (name -> callable like `masks`, e.g. a teacher's logits) move with the image the same way (albumentations
    `masks`) and are yielded by name as float32 (C, H, W).
    HWC as the transforms leave it: the batch is laid out NCHW on the device (DeviceLoader), not here, image by
    image (a copy in every worker, 8% of an image's decoding and resizing at 224 px).

    Images come from `cache` (data.cache: decoded once, data/cache.py) or are decoded from the file each time.
    Augmentations are seeded per sample from (seed, fold, epoch, part, row) once `set_epoch` has run, so that a
    row is augmented alike whichever worker loads it: results do not depend on data.num_workers, and a resumed run
    repeats the interrupted one. The key lives in shared memory, so persistent workers see each new epoch."""

    def __init__(
        self,
        paths: Sequence[Path],
        targets: np.ndarray | None,
        transform: Callable | None,
        in_chans: int = 3,
        cache: ImageCache | None = None,
        extras: dict[str, np.ndarray] | None = None,
        masks: Callable[[int, tuple[int, int]], np.ndarray] | None = None,
        mask_scale: float | None = None,
        maps: dict[str, Callable[[int, tuple[int, int]], np.ndarray]] | None = None,
    ) -> None:
        if in_chans not in (1, 3):
            raise UserError(f"model.in_chans={in_chans}: images are read as 1 (grayscale) or 3 (RGB) channels")
        self.paths, self.targets, self.transform, self.in_chans = list(paths), targets, transform, in_chans
        self.cache, self.extras, self.masks = cache, extras or {}, masks
        self.mask_scale, self.maps = mask_scale, maps or {}
        self.augment_key = torch.full((4,), -1, dtype=torch.int64).share_memory_()  # seed, fold, epoch, part

    def __len__(self) -> int:
        return len(self.paths)

    def read(self, i: int) -> np.ndarray:
        return self.cache.read(self.paths[i]) if self.cache is not None else read_image(self.paths[i], self.in_chans)

    def _seed_transform(self, i: int) -> None:
        key = self.augment_key.tolist()
        if key[0] >= 0 and hasattr(self.transform, "set_random_state"):
            rng = np.random.default_rng([*key, i])  # albumentations draws from one numpy and one python stream
            self.transform.set_random_state(rng, random.Random(int(rng.integers(2**63))))

    def __getitem__(self, i: int) -> dict:
        image = self.read(i)
        shape = image.shape[:2]
        mask = self.masks(i, shape) if self.masks is not None else None
        maps = [get(i, shape) for get in self.maps.values()]
        if self.transform is not None:
            self._seed_transform(i)
            spatial = ({} if mask is None else {"mask": mask}) | ({"masks": maps} if maps else {})
            out = self.transform(image=image, **spatial)
            image, mask, maps = out["image"], out.get("mask"), list(out.get("masks", maps))
        image = image[..., None] if image.ndim == 2 else image
        item = {"image": torch.from_numpy(np.ascontiguousarray(image)), "index": i}
        if mask is not None:
            target = _chw(mask)
            item["target"] = target if self.mask_scale is None else target.float() / self.mask_scale
        elif self.targets is not None:
            item["target"] = torch.as_tensor(self.targets[i])
        for name, values in self.extras.items():
            item[name] = torch.as_tensor(values[i])
        for name, m in zip(self.maps, maps, strict=True):
            item[name] = _chw(m).float()
        return item


def _chw(mask: np.ndarray) -> torch.Tensor:
    """An HW or HWC mask as a (C, H, W) tensor."""
    mask = mask[..., None] if mask.ndim == 2 else mask
    return torch.from_numpy(np.ascontiguousarray(mask.transpose(2, 0, 1)))


def set_epoch(dataset: Dataset, seed: int, fold: int, epoch: int) -> None:
    """Seed the augmentations of `dataset` for (seed, fold, epoch); each part of a ConcatDataset gets its own
    stream (its position), so that row i of the labelled part and row i of the pseudo part differ."""
    for part, ds in enumerate(getattr(dataset, "datasets", [dataset])):
        if isinstance(ds, ImageDataset):
            ds.augment_key.copy_(torch.tensor([seed, fold, epoch, part]))


class DeviceLoader:
    """A DataLoader's batches on `device`: tensors copied from pinned memory without blocking the host, the uint8
    NHWC images laid out NCHW there (channels_last when asked: NHWC is that layout already, so no copy at all) and
    normalised to float32 by `normalize` (augment.Normalize, which keeps the layout).
    Iterate it like the DataLoader; `set_epoch` reaches its sampler."""

    def __init__(self, loader: DataLoader, device: torch.device, normalize: Callable, channels_last: bool = False):
        self.loader, self.device, self.normalize, self.channels_last = loader, device, normalize, channels_last

    def __len__(self) -> int:
        return len(self.loader)

    def set_epoch(self, epoch: int) -> None:
        """Epoch `epoch`'s order, from the sampler's (seed, epoch) only. A loader whose order cannot take an epoch
        (an evaluation loader) is an error here: its epochs would be drawn from a stream a resume cannot rejoin."""
        takers = [s for s in (self.loader.sampler, self.loader.batch_sampler) if hasattr(s, "set_epoch")]
        if not takers:
            raise TypeError(f"this loader's {type(self.loader.sampler).__name__} has no set_epoch(epoch)")
        for sampler in takers:
            sampler.set_epoch(epoch)

    def to_device(self, batch: dict) -> dict:
        out = {k: v.to(self.device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
        image = out["image"].permute(0, 3, 1, 2)  # NHWC -> NCHW: a view with channels_last strides
        out["image"] = self.normalize(image if self.channels_last else image.contiguous())
        return out

    def __iter__(self) -> Iterator[dict]:
        for batch in self.loader:
            yield self.to_device(batch)


def make_loader(
    dataset: Dataset,
    batch_size: int,
    train: bool,
    num_workers: int,
    device: torch.device,
    normalize: Callable,
    *,
    channels_last: bool = False,
    sampler: Sampler | None = None,
    batch_sampler: Sampler | None = None,
    seed: int = 0,
    generator: torch.Generator | None = None,
) -> DeviceLoader:
    """Training loaders shuffle (unless a sampler decides) and drop the last partial batch (mixup needs even
    batches, BatchNorm dislikes a batch of one); evaluation loaders keep order and every row.
    A `batch_sampler` (pseudo-labelling's labelled:pseudo mix) composes whole batches itself.

    Shuffling depends on (seed, epoch) only (ShuffleSampler), and the loader draws its workers' seeds from its own
    `generator`, never from torch's global one: the global stream (dropout, drop-path) and the batches are then the
    same whatever the number of workers. Workers persist across epochs and prefetch (the default 2 batches each);
    pinned memory on CUDA, for the non-blocking copies of DeviceLoader."""
    one_opencv_thread()
    if train and sampler is None and batch_sampler is None:
        sampler = ShuffleSampler(len(dataset), seed)
    common = {
        "num_workers": num_workers,
        "pin_memory": device.type == "cuda",
        "worker_init_fn": worker_init,
        "generator": generator or torch.Generator().manual_seed(seed),
        "persistent_workers": num_workers > 0,
    }
    if batch_sampler is not None:
        loader = DataLoader(dataset, batch_sampler=batch_sampler, **common)
    else:
        loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=train, **common)
    return DeviceLoader(loader, device, normalize, channels_last)
