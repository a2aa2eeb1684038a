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
KEY_ROWS = 2048      # rows projected at a time for their keys: 3 MB of projections, in cache
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
    exact = images.dtype == torch.uint8 and channels == 1  # 2x2 means of bytes: sums in int16, exact
    windows = [(margin - dy, margin - dx) for dy, dx in shifts]  # (top, left) of each shift's window
    boxes = {}  # per pixel phase, the first and last (top, left) of its windows: pooled once, 2 px a cell
    for top, left in windows:
        first = boxes.get((top % 2, left % 2), (top, left, top, left))
        boxes[top % 2, left % 2] = (min(first[0], top), min(first[1], left), max(first[2], top), max(first[3], left))
    if not exact:  # pooled whole: the mean of a float window also depends on the strides of what it is cut from
        boxes = {(r, c): (r, c, r + 2 * ((h - r) // 2 - rows), c + 2 * ((w - c) // 2 - cols)) for r, c in boxes}
    crop = (slice(min(b[0] for b in boxes.values()), max(b[2] for b in boxes.values()) + 2 * rows),
            slice(min(b[1] for b in boxes.values()), max(b[3] for b in boxes.values()) + 2 * cols))
    for start in range(0, n, CHUNK):
        pixels = images[start:start + CHUNK]
        if exact:
            pixels = pixels[..., crop[0], crop[1]].short()  # no pixel outside a window
        else:
            pixels = pixels.float()
            if channels > 1:
                luma = pixels.mean(1, keepdim=True)
                pixels = torch.cat([luma, CHROMA * (pixels - luma)], 1)
            pixels = pixels[..., crop[0], crop[1]]
        pooled = {}
        for phase, (top, left, bottom, right) in boxes.items():
            box = pixels[..., top - crop[0].start:bottom + 2 * rows - crop[0].start,
                         left - crop[1].start:right + 2 * cols - crop[1].start]
            pooled[phase] = _cell_means(box) if exact else F.avg_pool2d(box, 2)
        for k, (top, left) in enumerate(windows):
            first = boxes[top % 2, left % 2]
            up, side = (top - first[0]) // 2, (left - first[1]) // 2  # cells below and right of the box's corner
            cells = pooled[top % 2, left % 2][..., up:up + rows, side:side + cols]
            cells = cells - torch.cat([cells[:, :1].mean((1, 2, 3), keepdim=True),  # brightness offset out
                                       cells.new_zeros(len(cells), planes - 1, 1, 1)], 1)
            cells = cells.flatten(1)
            out[start:start + CHUNK, k] = cells / cells.norm(dim=1, keepdim=True).clamp_min(1e-6)  # 0: a flat image
    return out


def _cell_means(pixels: torch.Tensor) -> torch.Tensor:
    """avg_pool2d(pixels, 2) of integer pixels, bit for bit (a sum of four bytes over 4 is exact in
    float32), at a fifth of its cost: two strided adds in int16 instead of a float pooling."""
    rows, cols = pixels.shape[-2] // 2, pixels.shape[-1] // 2
    pairs = pixels[..., 0:2 * rows:2, :] + pixels[..., 1:2 * rows:2, :]
    return (pairs[..., 0:2 * cols:2] + pairs[..., 1:2 * cols:2]).float() / 4


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
        """(n, cells) -> (n, BANDS) int64 band keys: the sign bits of each band packed into an int32.
        Projected KEY_ROWS at a time: the projections stay in cache (twice as fast as one product of
        all rows on a CPU, and the same bits: a row's product does not depend on its neighbours)."""
        packed = numpy.empty((len(thumbs), BANDS * BAND_BITS // 8), dtype=numpy.uint8)  # 4 bytes a band
        for start in range(0, len(thumbs), KEY_ROWS):
            projected = ((thumbs[start:start + KEY_ROWS] - self.center) @ self.planes).cpu().numpy()
            above = projected > 0  # numpy's comparison: 4x faster than torch's here
            packed[start:start + KEY_ROWS] = numpy.packbits(above, axis=1, bitorder="little")
        return torch.from_numpy(packed.view(numpy.int32)).long().to(thumbs.device)


@dataclass(frozen=True)
class Index:
    """The images of one split, ready to be searched: their central thumbnails and, for every band, its
    distinct keys, where each key's rows start in `order` and how many there are. Keys are stored as
    band * 2^32 + (key + 2^31): the bands' distinct keys, one after the other, are then one sorted array."""
    thumbs: torch.Tensor  # (G, cells) int16, x 2^15 (unit vectors): half the memory, ~1e-5 off
    order: torch.Tensor   # (BANDS * G,): per band, in turn, its rows sorted by their key
    keys: torch.Tensor    # (D,) the distinct keys of every band, as above: sorted
    starts: torch.Tensor  # (D,) position in `order` of each key's first row
    counts: torch.Tensor  # (D,) rows holding each key
    bands: torch.Tensor   # (BANDS + 1,) where each band's keys start in `keys`

    @classmethod
    def build(cls, hasher: Hasher, thumbs: torch.Tensor) -> "Index":
        """From `interiors(images, hasher.margin)`."""
        keys = torch.cat([hasher.keys(thumbs[s:s + CHUNK]) for s in range(0, len(thumbs), CHUNK)])
        # torch's sort, not a stable one: a crowded bucket is searched in its first BUCKET_CAP rows, so the
        # order of its tied rows is part of what is found (int32 and rows of keys: the same order, faster)
        sorted_keys, order = keys.int().T.contiguous().sort(dim=1)
        flat = (sorted_keys.cpu().numpy() + numpy.int64(2 ** 31) +
                (numpy.arange(BANDS, dtype=numpy.int64)[:, None] << 32)).ravel()  # sorted: band after band
        first = numpy.ones(len(flat), dtype=bool)
        first[1:] = flat[1:] != flat[:-1]
        starts = numpy.flatnonzero(first)
        distinct = flat[starts]
        bands = numpy.searchsorted(distinct, numpy.arange(BANDS + 1, dtype=numpy.int64) << 32)
        table = (distinct, starts, numpy.diff(starts, append=len(flat)), bands)
        quantised = torch.mul(thumbs, SCALE).round_().to(torch.int16)  # float16 was 3e-4 off: too near SIMILAR's margin
        return cls(quantised, order.flatten(), *(torch.from_numpy(x).to(keys.device) for x in table))


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


def _candidates(index: Index, keys: torch.Tensor) -> torch.Tensor:
    """Every (row of `keys`, row of the index) sharing the keys of at least MIN_BANDS bands, at most
    BUCKET_CAP index rows per row and band, as row * (G + 1) + index row: sorted, each pair once.
    In numpy: its sorts are several times faster than torch's on a CPU, and a search of sorted keys
    (each band's query keys sorted first, their row in the low bits) four times faster than of random ones."""
    n, stride = len(keys), len(index.thumbs) + 1
    bits = max(1, (n - 1).bit_length())  # key + 2^31 < 2^32 above `bits` row bits: fits an int64 to 2^31 rows
    wanted = keys.cpu().numpy() + 2 ** 31
    distinct, bands = index.keys.cpu().numpy(), index.bands.tolist()
    found, rows = [], []
    for band in range(BANDS):
        packed = numpy.sort((wanted[:, band] << bits) | numpy.arange(n))
        value = (packed >> bits) + (band << 32)
        at = numpy.minimum(numpy.searchsorted(distinct[bands[band]:bands[band + 1]], value) + bands[band],
                           bands[band + 1] - 1)
        hit = distinct[at] == value
        found.append(at[hit])
        rows.append(packed[hit] & ((1 << bits) - 1))
    at, row = numpy.concatenate(found), numpy.concatenate(rows)
    count = numpy.minimum(index.counts.cpu().numpy()[at], BUCKET_CAP)
    ends = numpy.cumsum(count)
    place = numpy.repeat(index.starts.cpu().numpy()[at] - (ends - count), count)
    place += numpy.arange(len(place))  # each bucket's first `count` rows
    pairs = numpy.sort(numpy.repeat(row * stride, count) + index.order.cpu().numpy()[place])
    if len(pairs) < MIN_BANDS:
        return torch.from_numpy(pairs[:0]).to(keys.device)
    last = len(pairs) - MIN_BANDS + 1  # a pair is kept at its first place when MIN_BANDS places hold it
    first = numpy.ones(last, dtype=bool)
    first[1:] = pairs[1:last] != pairs[:last - 1]
    return torch.from_numpy(pairs[:last][first & (pairs[MIN_BANDS - 1:] == pairs[:last])]).to(keys.device)


def _dots(queries: torch.Tensor, rows: torch.Tensor, index: torch.Tensor, refs: torch.Tensor) -> torch.Tensor:
    """(queries[rows] * index[refs]).sum(1), CHUNK pairs at a time (index_select: 3x faster than [])."""
    out = torch.empty(len(rows), device=queries.device)
    for start in range(0, len(rows), CHUNK):
        part = torch.index_select(queries, 0, rows[start:start + CHUNK])
        torch.sum(part.mul_(torch.index_select(index, 0, refs[start:start + CHUNK])), 1, out=out[start:start + CHUNK])
    return out


def nearest_copies(index: Index, queries: Queries, groups: torch.Tensor, n_groups: int,
                   exclude: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """For each query and each group of index rows (`groups[row]` in [0, n_groups): the split a row
    comes from), the best similarity over the shifts and its row: (n, n_groups) each, (0, -1) where no
    row shares MIN_BANDS bands with the query. `exclude[q]` is a row query q may not match (itself)."""
    shifts, stride = len(queries.shifts), len(index.thumbs) + 1
    best = torch.zeros(queries.count * n_groups, device=queries.thumbs.device)
    match = torch.full((queries.count * n_groups,), -1, dtype=torch.int64, device=best.device)
    if queries.count and len(index.thumbs):
        pairs = _candidates(index, queries.keys)  # a look-alike shares a band by chance; a copy shares several
        rows, refs = pairs // stride, pairs % stride
        query = rows // shifts
        if exclude is not None:
            keep = refs != exclude[query]
            rows, refs, query = rows[keep], refs[keep], query[keep]
        similarity = (_dots(queries.thumbs, rows, index.thumbs, refs) / SCALE).clamp(max=1.0)
        slot = query * n_groups + groups[refs]
        best.scatter_reduce_(0, slot, similarity, "amax")
        winner = (similarity == best[slot]) & (similarity > 0)  # ties: any of them
        match[slot[winner]] = refs[winner]
    return best.reshape(-1, n_groups), match.reshape(-1, n_groups)
