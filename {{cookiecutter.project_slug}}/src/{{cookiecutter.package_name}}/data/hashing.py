"""Perceptual hashes of images and the near-duplicate pairs they reveal (numpy + scipy, no extra dependency).

A hash is 64 bits (an 8 x 8 grid of bits) that barely changes when an image is resized, re-encoded (JPEG) or made
brighter or darker, and changes in about half its bits between unrelated images; the Hamming distance between two
hashes (bits that differ) measures how alike two images look.

    phash   the DCT hash: the image as grayscale at 32 x 32 (area average), its 2-D DCT, the 8 x 8 lowest frequencies,
            each bit set where the coefficient exceeds their median (Zauner's pHash; imagehash.phash's recipe)
    dhash   the difference hash: grayscale at 9 x 8, a bit per horizontal neighbour pair, set where the left pixel is
            brighter (imagehash.dhash's recipe)

A global brightness change moves only the DC coefficient (phash) or no comparison at all (dhash) until pixels clip.
"""

from __future__ import annotations

from collections.abc import Iterator

import cv2
import numpy as np
from scipy.fft import dctn
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

HASH_BITS = 64


def _gray(image: np.ndarray) -> np.ndarray:
    """HW or HWC (1 or 3 channels) uint8 -> HW float32 luma (ITU-R 601, as PIL's L mode)."""
    img = image.astype(np.float32)
    if img.ndim == 3 and img.shape[2] == 3:
        return img @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    return img.reshape(img.shape[:2])


def _shrink(gray: np.ndarray, width: int, height: int) -> np.ndarray:
    """Area-averaged resize (the average of the pixels each target pixel covers); small images are enlarged."""
    h, w = gray.shape
    interp = cv2.INTER_AREA if (w >= width and h >= height) else cv2.INTER_LINEAR
    return cv2.resize(gray, (width, height), interpolation=interp)


def phash(image: np.ndarray) -> np.ndarray:
    """The 64-bit DCT hash of `image` (HW or HWC uint8) as 64 booleans."""
    coeffs = dctn(_shrink(_gray(image), 32, 32).astype(np.float64), type=2, norm="ortho")[:8, :8]
    return (coeffs > np.median(coeffs)).ravel()


def dhash(image: np.ndarray) -> np.ndarray:
    """The 64-bit difference hash of `image` (HW or HWC uint8) as 64 booleans."""
    small = _shrink(_gray(image), 9, 8)
    return (small[:, :-1] > small[:, 1:]).ravel()


HASHES = {"phash": phash, "dhash": dhash}


def pack(bits: np.ndarray) -> np.ndarray:
    """(N, 64) booleans -> (N,) uint64, one hash per image."""
    return np.packbits(np.asarray(bits, dtype=bool), axis=1).view(">u8").ravel().astype(np.uint64)


def to_hex(hashes: np.ndarray) -> list[str]:
    return [f"{int(h):016x}" for h in hashes]


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bits that differ between every hash of `a` (N,) and every hash of `b` (M,): (N, M) uint8."""
    return np.bitwise_count(a[:, None] ^ b[None, :])


def close_pairs(a: np.ndarray, b: np.ndarray | None, max_distance: int, chunk: int = 256) -> Iterator[tuple]:
    """(i, j, distance) for every pair within `max_distance` bits: i in `a`, j in `b`; with b None, pairs within `a`
    (i < j). Memory stays at chunk x len(b) x 9 bytes whatever the number of images (200 MB for 100k images)."""
    other = a if b is None else b
    for start in range(0, len(a), chunk):
        d = hamming(a[start : start + chunk], other)
        if b is None:  # each unordered pair once, never an image with itself
            d[np.tril_indices(d.shape[0], k=start, m=d.shape[1])] = max_distance + 1
        rows, cols = np.nonzero(d <= max_distance)
        yield from zip((rows + start).tolist(), cols.tolist(), d[rows, cols].tolist(), strict=True)


def components(n: int, pairs: list[tuple[int, int]]) -> np.ndarray:
    """Connected components of n items linked by `pairs`: a component number per item (0, 1, ...)."""
    if not pairs:
        return np.arange(n)
    i, j = np.array(pairs).T
    graph = coo_matrix((np.ones(len(i)), (i, j)), shape=(n, n))
    return connected_components(graph, directed=False)[1]
