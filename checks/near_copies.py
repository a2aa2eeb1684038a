"""Exact and near copies of images, between splits or within one, in about linear time.

Exact copies are found by hashing each image's bytes. Near copies hide from hashing: the same picture
shifted by a pixel or two, re-encoded (JPEG, quantised), noised, brightened or with its contrast
changed. Each image is judged on a small thumbnail of its central window (2x2-pixel cell means),
normalised to zero mean and unit norm, so brightness and contrast drop out; the window leaves out a
ring of SHIFT pixels, so that an image moved by up to SHIFT pixels shows the same window pixel for
pixel, whatever filled its border. The similarity of two images is the largest correlation of their
window thumbnails over the shifts (1 for a shifted copy).

Candidates come from locality-sensitive hashing, as random hyperplanes (SimHash) in BANDS bands of
BAND_BITS bits: a pair is a candidate when it agrees on every bit of at least MIN_BANDS bands, so one
flipped bit cannot hide it. Each query is hashed at every shift. The cost is linear in the images
indexed plus the queries times the shifts.

Nothing here assumes a shape: any (N, C, H, W) of any dtype; every channel counts (a copy keeps its
colours), and images larger than MAX_SIDE pixels a side are area-pooled down first.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy
import torch
import torch.nn.functional as F

MAX_SIDE = 32        # copies are judged on layout, not fine texture: larger images are pooled to <= 32 px a side
SHIFT = 2            # shifts of up to 2 px each way: RandomCrop(padding=2), a saved translate augmentation
BAND_BITS, BANDS = 32, 12  # a copy at the threshold (centred correlation ~0.995) meets MIN_BANDS with p ~0.96
BUCKET_CAP = 64      # at most this many candidates per query, shift and band: a huge bucket is one look-alike crowd
MIN_BANDS = 2        # bands a candidate must share: one is chance among look-alikes (Fashion-MNIST: 12x fewer)
CHUNK = 16384        # images per chunk: bounds the float copies of a 700k-image split
SCALE = 2 ** 15 - 1  # index thumbnails are stored as int16: unit vectors times SCALE
CHROMA = 0.15        # colour's weight against brightness: JPEG blurs colour; shapes differing in colour only < 0.99


def image_hashes(images: torch.Tensor) -> list[int]:
    """One hash of the raw bytes per image: equal for byte-identical images."""
    flat = images.flatten(1).cpu().contiguous().numpy()
    return [hash(row.tobytes()) for row in flat]


def small_size(height: int, width: int) -> tuple[int, int]:
    scale = min(1.0, MAX_SIDE / max(height, width))
    return max(2, round(height * scale)), max(2, round(width * scale))  # at least one 2x2 cell


def small(images: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
    """(N, C, H, W) of any dtype -> (N, C, h, w) uint8 of `size` (default: at most MAX_SIDE a side),
    stretched to 0..255 per image over all its channels: what copies are judged on. Colour is kept:
    two pictures that differ only in colour can be two classes."""
    n, channels, h, w = images.shape
    size = size or small_size(h, w)
    if images.dtype == torch.uint8 and (h, w) == size:
        return images  # already 8-bit and small: no copy of a 700k-image split
    out = torch.empty((n, channels, *size), dtype=torch.uint8, device=images.device)
    for start in range(0, n, CHUNK):
        part = F.adaptive_avg_pool2d(torch.nan_to_num(images[start:start + CHUNK].float()), size)
        low = part.flatten(1).min(1).values[:, None, None, None]
        span = (part.flatten(1).max(1).values[:, None, None, None] - low).clamp_min(1e-12)
        out[start:start + CHUNK] = ((part - low) * (255.0 / span)).round().to(torch.uint8)  # contrast drops out anyway
    return out


def interiors(images: torch.Tensor, margin: int, shifts: tuple[tuple[int, int], ...] = ((0, 0),)) -> torch.Tensor:
    """(n, C, h, w) -> (n, len(shifts), cells): thumbnails of the central window, h - 2 margin by w - 2
    margin, moved by (-dy, -dx). That window of an image equals, pixel for pixel, the central window of
    its copy shifted by (dy, dx), whatever filled the copy's border.

    A thumbnail holds 2x2-pixel cell means of the brightness (the channel mean) less its own mean, and,
    for colour images, of each channel's difference from the brightness, weighted CHROMA; normalised to
    unit norm. A change of brightness or contrast drops out; a change of colour does not."""
    n, channels, h, w = images.shape
    rows, cols = (h - 2 * margin) // 2, (w - 2 * margin) // 2  # whole cells only
    planes = 1 if channels == 1 else 1 + channels
    out = torch.empty((n, len(shifts), planes * rows * cols), device=images.device)
    for start in range(0, n, CHUNK):
        pixels = images[start:start + CHUNK].float()
        if channels > 1:
            luma = pixels.mean(1, keepdim=True)
            pixels = torch.cat([luma, CHROMA * (pixels - luma)], 1)
        pooled = {}  # each pixel phase pooled once: a shift of 2 px is then a shift of one cell
        for k, (dy, dx) in enumerate(shifts):
            top, left = margin - dy, margin - dx
            if (top % 2, left % 2) not in pooled:
                pooled[top % 2, left % 2] = F.avg_pool2d(pixels[..., top % 2:, left % 2:], 2)
            cells = pooled[top % 2, left % 2][..., top // 2:top // 2 + rows, left // 2:left // 2 + cols]
            cells = cells - torch.cat([cells[:, :1].mean((1, 2, 3), keepdim=True),  # brightness offset out
                                       cells.new_zeros(len(cells), planes - 1, 1, 1)], 1)
            cells = cells.flatten(1)
            out[start:start + CHUNK, k] = cells / cells.norm(dim=1, keepdim=True).clamp_min(1e-6)  # 0: a flat image
    return out


@dataclass(frozen=True)
class Hasher:
    """Random hyperplanes through one split's mean thumbnail (so they cut the data evenly), shared by
    every index and query so that one query's keys serve every split."""
    margin: int           # the largest shift searched, in pixels of `small`; also the ring no comparison reads
    center: torch.Tensor  # (cells,)
    planes: torch.Tensor  # (cells, BANDS * BAND_BITS)

    @classmethod
    def fit(cls, images: torch.Tensor, seed: int = 0) -> tuple["Hasher", torch.Tensor]:
        """The hasher for images like these, and the images' own thumbnails (the caller's index needs them)."""
        margin = max(0, min(SHIFT, (min(images.shape[-2:]) - 2) // 4))  # tiny images: keep a window to compare
        thumbs = interiors(images, margin)[:, 0]
        center = thumbs.mean(0) if len(thumbs) else torch.zeros(thumbs.shape[1], device=thumbs.device)
        planes = torch.randn(len(center), BANDS * BAND_BITS, generator=torch.Generator().manual_seed(seed))
        return cls(margin, center, planes.to(center.device)), thumbs

    @property
    def shifts(self) -> tuple[tuple[int, int], ...]:
        return tuple((dy, dx) for dy in range(-self.margin, self.margin + 1)
                     for dx in range(-self.margin, self.margin + 1))

    def keys(self, thumbs: torch.Tensor) -> torch.Tensor:
        """(n, cells) -> (n, BANDS) int64 band keys: the sign bits of each band packed into an int32."""
        above = ((thumbs - self.center) @ self.planes > 0).cpu().numpy()
        packed = numpy.ascontiguousarray(numpy.packbits(above, axis=1, bitorder="little"))  # 4 bytes a band
        return torch.from_numpy(packed.view(numpy.int32)).long().to(thumbs.device)


@dataclass(frozen=True)
class Index:
    """The images of one split, ready to be searched: their central thumbnails and, per band, the
    distinct keys (sorted), where each key's rows start in `order` and how many there are."""
    thumbs: torch.Tensor               # (G, cells) int16, x 2^15 (unit vectors): half the memory, ~1e-5 off
    order: torch.Tensor                # (G, BANDS): rows sorted by each band's key
    keys: tuple[torch.Tensor, ...]     # per band: distinct keys, sorted
    starts: tuple[torch.Tensor, ...]   # per band: first position in `order` of each key
    counts: tuple[torch.Tensor, ...]   # per band: rows holding each key

    @classmethod
    def build(cls, hasher: Hasher, thumbs: torch.Tensor) -> "Index":
        """From `interiors(images, hasher.margin)`."""
        keys = torch.cat([hasher.keys(thumbs[s:s + CHUNK]) for s in range(0, len(thumbs), CHUNK)])
        sorted_keys, order = keys.sort(dim=0)
        distinct, starts, counts = [], [], []
        for band in range(BANDS):
            values, count = torch.unique_consecutive(sorted_keys[:, band], return_counts=True)
            distinct.append(values)
            counts.append(count)
            starts.append(count.cumsum(0) - count)
        quantised = (thumbs * SCALE).round().to(torch.int16)  # float16 was 3e-4 off: too near SIMILAR's margin
        return cls(quantised, order, tuple(distinct), tuple(starts), tuple(counts))


@dataclass(frozen=True)
class Queries:
    """Some images of a split, their window thumbnail at every shift: row q * len(shifts) + s."""
    count: int
    shifts: tuple[tuple[int, int], ...]
    thumbs: torch.Tensor  # (count * len(shifts), cells)
    keys: torch.Tensor    # (count * len(shifts), BANDS)

    @classmethod
    def build(cls, hasher: Hasher, images: torch.Tensor) -> "Queries":
        shifts = hasher.shifts
        thumbs = interiors(images, hasher.margin, shifts).flatten(0, 1)
        return cls(len(images), shifts, thumbs, hasher.keys(thumbs))


def _collisions(index: Index, keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(row of `keys`, row of the index) for every band they share, at most BUCKET_CAP per row and band."""
    rows, refs = [], []
    for band in range(BANDS):
        distinct, wanted = index.keys[band], keys[:, band].contiguous()
        at = torch.searchsorted(distinct, wanted).clamp(max=max(len(distinct) - 1, 0))
        hit = distinct[at] == wanted
        count = torch.where(hit, index.counts[band][at], 0).clamp(max=BUCKET_CAP)
        row = torch.repeat_interleave(torch.arange(len(keys), device=keys.device), count)
        offset = torch.arange(len(row), device=keys.device) - torch.repeat_interleave(count.cumsum(0) - count, count)
        rows.append(row)
        refs.append(index.order[torch.repeat_interleave(index.starts[band][at], count) + offset, band])
    return torch.cat(rows), torch.cat(refs)


def nearest_copies(index: Index, queries: Queries, groups: torch.Tensor, n_groups: int,
                   exclude: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """For each query and each group of index rows (`groups[row]` in [0, n_groups): the split a row
    comes from), the best similarity over the shifts and its row: (n, n_groups) each, (0, -1) where no
    row shares MIN_BANDS bands with the query. `exclude[q]` is a row query q may not match (itself)."""
    shifts, stride = len(queries.shifts), len(index.thumbs) + 1
    best = torch.zeros(queries.count * n_groups, device=queries.thumbs.device)
    match = torch.full((queries.count * n_groups,), -1, dtype=torch.int64, device=best.device)
    if queries.count and len(index.thumbs):
        rows, refs = _collisions(index, queries.keys)
        pairs, bands = torch.unique(rows * stride + refs, return_counts=True)
        pairs = pairs[bands >= MIN_BANDS]  # a look-alike shares a band by chance; a copy shares several
        rows, refs = pairs // stride, pairs % stride
        query = rows // shifts
        if exclude is not None:
            keep = refs != exclude[query]
            rows, refs, query = rows[keep], refs[keep], query[keep]
        similarity = ((queries.thumbs[rows] * index.thumbs[refs].float()).sum(1) / SCALE).clamp(max=1.0)
        slot = query * n_groups + groups[refs]
        best.scatter_reduce_(0, slot, similarity, "amax")
        winner = (similarity == best[slot]) & (similarity > 0)  # ties: any of them
        match[slot[winner]] = refs[winner]
    return best.reshape(-1, n_groups), match.reshape(-1, n_groups)
