"""Stage `data`, split hygiene: copies of an image between splits or within one, and copies whose
labels disagree. Both checks read one search (`find_copies`), kept for the data being checked.

A copy is exact (the same bytes) or near: the same picture shifted by a pixel or two, re-encoded,
noised, brightened or with its contrast changed (checks/measure/near_copies.py finds them). Exact copies are
counted over every image; near copies over a seeded sample of each split, which measures a rate to
about a tenth of a point at any data size.
"""
from __future__ import annotations

import itertools
import weakref
from dataclasses import dataclass

import numpy
import torch

from checks.measure.near_copies import SHIFT, Hasher, Index, Queries, image_hashes, nearest_copies, small, small_size
from checks.engine.kinds import applies_to, worded_for_kind
from checks.engine.result import CheckResult, Figure, Verdict
from recipe.data import DataBundle, unit_pixels
from recipe.pipeline import Pipeline

STAGE = "data"
SPLITS = ("train", "val", "test")
HELD_OUT = (("val", "train"), ("test", "train"), ("test", "val"))  # (split, a split its images must not be in)
SIMILAR = 0.998   # thumbnail correlation of a copy: 0.24% of clean Fashion-MNIST test has a look-alike in train
QUERIES = 2000    # images searched per split: a rate of 0.25% to within about +-0.1 point
EXAMPLES = 6      # pairs shown in a figure
TABLE = 1 << 24   # (image, label) keys up to this many: membership read from a table of them (7x faster)


@dataclass(frozen=True)
class PairCopies:
    """Copies of `split`'s images in `other` (elsewhere in `split` when they are the same split)."""
    split: str
    other: str
    size: int                # images in `split`
    exact: int               # of them, byte-identical to an image of `other` (all images counted)
    exact_conflicts: int     # of those, with an identical image labelled differently
    searched: int            # images of `split` searched for near copies (a seeded sample)
    copies: int              # of those, with an exact or near copy in `other`
    conflicts: int           # of those, whose copy carries another label
    examples: tuple[tuple[int, int, float], ...]           # (position in split, in other, similarity)
    conflict_examples: tuple[tuple[int, int, float], ...]

    @property
    def within(self) -> bool:
        return self.split == self.other

    @property
    def exact_fraction(self) -> float:
        return self.exact / max(self.size, 1)

    @property
    def copy_fraction(self) -> float:
        return self.copies / max(self.searched, 1)

    @property
    def conflict_share(self) -> float:
        return self.conflicts / max(self.copies, 1)

    @property
    def where(self) -> str:
        return f"elsewhere in {self.split}" if self.within else f"in {self.other}"

    def row(self) -> dict:
        return {"split": self.split, "copies_looked_for": "within" if self.within else f"in {self.other}",
                "images": self.size, "exact": self.exact, "exact_label_conflicts": self.exact_conflicts,
                "searched": self.searched, "with_copy": self.copies, "copy_fraction": self.copy_fraction,
                "label_conflicts": self.conflicts}


_LAST: list[tuple[weakref.ref, tuple, dict]] = []


def find_copies(data: DataBundle, similar: float = SIMILAR, queries: int = QUERIES,
                seed: int = 0) -> dict[tuple[str, str], PairCopies]:
    """PairCopies for every (split, other) pair, within-split pairs included. Kept for the last data
    bundle checked, as the reference run is for the last pipeline: both checks here read it."""
    key = (similar, queries, seed)
    if _LAST and _LAST[0][0]() is data and _LAST[0][1] == key:
        return _LAST[0][2]
    found = _search(data, similar, queries, seed)
    _LAST[:] = [(weakref.ref(data), key, found)]
    return found


def _search(data: DataBundle, similar: float, queries: int, seed: int) -> dict[tuple[str, str], PairCopies]:
    splits = {s: data.split(s) for s in SPLITS}
    sizes = [len(splits[s]) for s in SPLITS]
    hashes = torch.tensor(list(itertools.chain.from_iterable(image_hashes(splits[s].images) for s in SPLITS)),
                          dtype=torch.int64)
    _, by_hash = torch.unique(hashes, return_inverse=True)  # one id per distinct image, over all splits
    first_seen = torch.full((int(by_hash.max()) + 1,), len(by_hash)).scatter_reduce(
        0, by_hash, torch.arange(len(by_hash)), "amin")
    image_id = torch.argsort(torch.argsort(first_seen))[by_hash]  # numbered in order of appearance: Python
    # salts its hash of bytes per process, and the index's row order must not change with it
    _, label_id = torch.unique(torch.cat([splits[s].labels.cpu() for s in SPLITS]).long(), return_inverse=True)
    n_ids, n_labels = int(image_id.max()) + 1, int(label_id.max()) + 1
    ids, labels = dict(zip(SPLITS, image_id.split(sizes))), dict(zip(SPLITS, label_id.split(sizes)))
    label_keys = {s: torch.unique(ids[s] * n_labels + labels[s]) for s in SPLITS}  # (image, label) pairs present
    label_count = {s: torch.bincount(label_keys[s] // n_labels, minlength=n_ids) for s in SPLITS}
    copies_of = {s: torch.bincount(ids[s], minlength=n_ids) for s in SPLITS}

    # the index: each split's distinct images, one row each; `row_of[s][image id]` is its row
    none = max(sizes) + 1
    first = {s: torch.full((n_ids,), none).scatter_reduce(0, ids[s], torch.arange(len(ids[s])), "amin") for s in SPLITS}
    last = {s: torch.full((n_ids,), -1).scatter_reduce(0, ids[s], torch.arange(len(ids[s])), "amax") for s in SPLITS}
    positions, row_of, offset = [], {}, 0
    for s in SPLITS:
        present = torch.nonzero(first[s] < none).flatten()
        positions.append(first[s][present])
        row_of[s] = torch.full((n_ids,), -1).index_put_((present,), torch.arange(len(present)) + offset)
        offset += len(present)
    row_split = torch.cat([torch.full((len(p),), k) for k, p in enumerate(positions)])
    row_position = torch.cat(positions)
    rows = splits["train"].images.dim() == 2  # feature vectors: exact copies only (no picture to shift or re-encode)
    size = None if rows else small_size(*splits["train"].images.shape[-2:])
    hasher, thumbs = (None, None) if rows else Hasher.fit(_distinct_images(splits, positions, size), seed)
    index = None if rows else Index.build(hasher, thumbs)

    found = {}
    for s in SPLITS:
        pick = torch.randperm(len(ids[s]), generator=torch.Generator().manual_seed(seed))[:queries].sort().values
        best, match = (torch.zeros(len(pick), len(SPLITS)), torch.full((len(pick), len(SPLITS)), -1)) if rows else \
            nearest_copies(index, Queries.build(hasher, small(splits[s].images[pick].cpu(), size)),
                           row_split, len(SPLITS), exclude=row_of[s][ids[s][pick]])
        image = ids[s][pick]
        for k, other in enumerate(SPLITS):
            similarity = best[:, k].clone()
            where = torch.where(match[:, k] >= 0, row_position[match[:, k].clamp(min=0)], 0)  # 0: no match
            if other == s:  # an identical twin is its own row, which the search excluded: take it from the ids
                exact = copies_of[s][ids[s]] >= 2
                exact_conflict = exact & (label_count[s][ids[s]] >= 2)
                twin = exact[pick]
                similarity[twin] = 1.0
                where[twin] = torch.where(first[s][image] == pick, last[s][image], first[s][image])[twin]
            else:
                exact = copies_of[other][ids[s]] >= 1
                same = torch.from_numpy(numpy.isin((ids[s] * n_labels + labels[s]).numpy(), label_keys[other].numpy(),
                                                   kind="table" if n_ids * n_labels <= TABLE else None))
                exact_conflict = exact & (label_count[other][ids[s]] - same.long() >= 1)
                if rows:  # the search found nothing by design: its exact copies are the copies
                    twin = exact[pick]
                    similarity[twin] = 1.0
                    where[twin] = first[other][image][twin]
            has_copy = similarity >= similar
            near = has_copy & ~exact[pick]
            near_conflict = torch.zeros_like(near)
            near_conflict[near] = labels[s][pick][near] != labels[other][where[near]]
            conflict = (has_copy & exact_conflict[pick]) | near_conflict
            found[(s, other)] = PairCopies(s, other, len(ids[s]), int(exact.sum()), int(exact_conflict.sum()),
                                           len(pick), int(has_copy.sum()), int(conflict.sum()),
                                           _listed(has_copy, pick, where, similarity),
                                           _listed(conflict, pick, where, similarity))
    return found


def _distinct_images(splits: dict, positions: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
    """`small` of each split's images at `positions`, one split after the other. Where `small` keeps the
    images as they are (8-bit, small already), gathered straight into one tensor: 4x faster than [] and cat."""
    images = [splits[s].images.cpu() for s in SPLITS]
    if not all(part.dtype == torch.uint8 and tuple(part.shape[-2:]) == size for part in images):
        return torch.cat([small(part[p], size) for part, p in zip(images, positions)])
    out = torch.empty((sum(len(p) for p in positions), *images[0].shape[1:]), dtype=torch.uint8)
    for part, p, start in zip(images, positions, itertools.accumulate((len(p) for p in positions), initial=0)):
        torch.index_select(part, 0, p, out=out[start:start + len(p)])
    return out


def _listed(mask: torch.Tensor, pick: torch.Tensor, where: torch.Tensor,
            similarity: torch.Tensor) -> tuple[tuple[int, int, float], ...]:
    """The first EXAMPLES pairs `mask` selects, as (position in the split, in the other, similarity)."""
    return tuple((int(pick[i]), int(where[i]), float(similarity[i]))
                 for i in torch.nonzero(mask).flatten()[:EXAMPLES].tolist())


def _pairs_figure(data: DataBundle, pairs: list[PairCopies], title: str, conflicts: bool = False) -> Figure:
    """Each found image next to its copy, captioned with where they sit (and their labels); for feature
    vectors, a line per pair of identical rows."""
    if data.kind == "features":
        lines = [f"{pair.split} #{mine} = {pair.other} #{theirs}" + (
            f"  labels '{data.class_names[int(data.split(pair.split).labels[mine])]}' / "
            f"'{data.class_names[int(data.split(pair.other).labels[theirs])]}'" if conflicts else "")
            for pair in pairs for mine, theirs, _ in (pair.conflict_examples if conflicts else pair.examples)]
        return Figure("text", title.replace("images", "rows"), {"lines": lines})
    images, captions = [], []
    for pair in pairs:
        for mine, theirs, similarity in (pair.conflict_examples if conflicts else pair.examples):
            for split, position in ((pair.split, mine), (pair.other, theirs)):
                source = data.split(split)
                images.append(unit_pixels(source.images[position:position + 1].cpu(), data.value_range)[0])
                label = f" '{data.class_names[int(source.labels[position])]}'" if conflicts else ""
                captions.append(f"{split} #{position}{label}")
            captions[-1] += f" ({similarity:.4f})"
    return Figure("images", title, {"images": torch.stack(images).numpy() if images else [], "captions": captions,
                                    "ncols": 4 if len(images) > 2 else 2})  # two pairs a row


def _counts(pairs: list[PairCopies]) -> str:
    return "; ".join(f"{p.split} {p.where}: {p.copies} of {p.searched}" for p in pairs)


@applies_to("image", "features")
@worded_for_kind
def duplicates_and_leakage(pipeline: Pipeline, max_exact_leak: float = 0.001, max_copy_leak: float = 0.005,
                           min_copies: int = 3, max_repeated: float = 0.01, similar: float = SIMILAR) -> CheckResult:
    """Copies of held-out images in train (and of test images in val), exact or near, and images
    repeated within a split.

    Catches: test (or val) images leaked into train, byte for byte or as shifted, re-encoded, noised or
    brightened copies; val and test sharing images (the model is chosen on the very images that then
    grade it); WARNs on images repeated within a split (duplicated files, augmented copies saved to disk).
    Exact copies are counted over every image (FAIL above `max_exact_leak`), exact or near copies over
    a sample of QUERIES images per split (FAIL above `max_copy_leak` once `min_copies` are found: in a
    small split one natural look-alike is already a share; WARN within a split above `max_repeated`); a
    near copy has an aligned thumbnail correlation of at least `similar`.
    """
    data = pipeline.data
    found = find_copies(data, similar)
    held = [found[pair] for pair in HELD_OUT]
    within = [found[(s, s)] for s in SPLITS]
    exact = max(held, key=lambda p: p.exact_fraction)
    leak = max(held, key=lambda p: (p.copies >= min_copies, p.copy_fraction))
    repeated = max(within, key=lambda p: p.copy_fraction)
    how = ("feature vectors are compared as exact copies only" if pipeline.kind == "features" else
           f"a near copy is the same picture up to a shift of {SHIFT} px, brightness, contrast or re-encoding: "
           f"aligned thumbnail correlation >= {similar}")
    details = {"pairs": [p.row() for p in found.values()], "similarity_threshold": similar,
               "max_shift_px": SHIFT, "searched_per_split": QUERIES}
    if exact.exact_fraction > max_exact_leak:
        pair, value, threshold = exact, exact.exact_fraction, max_exact_leak
        what = (f"{exact.exact} {exact.split} images ({exact.exact_fraction:.2%}) are exact copies of {exact.other} "
                "images")
    elif leak.copy_fraction > max_copy_leak and leak.copies >= min_copies:
        pair, value, threshold = leak, leak.copy_fraction, max_copy_leak
        what = (f"{leak.copies} of {leak.searched} {leak.split} images searched ({leak.copy_fraction:.2%}) have a "
                f"copy in {leak.other} ({leak.exact} of all {leak.size} byte for byte; {how})")
    else:
        pair = None
    if pair is not None:
        limit = f"limit {threshold:.1%}"
        if pair.split == "test" and pair.other == "val":
            why = (f"leakage: val and test overlap: {what} ({limit}). The model and its settings are chosen on the "
                   "very images that grade them. Likely cause: val and test were cut from overlapping ranges, or one "
                   "file was used for both.")
        else:
            why = (f"leakage: {pair.split} images leaked into train: {what} ({limit}). Held-out accuracy will be "
                   "inflated. Likely causes: the splits were built from overlapping sources (train concatenated with "
                   "test, a re-split without de-duplication), or augmented / re-encoded copies of held-out images were "
                   "saved into the training set.")
        figure = _pairs_figure(data, [pair], f"{pair.split} images, each followed by its copy in {pair.other}")
        return CheckResult("duplicates_and_leakage", STAGE, Verdict.FAIL, value, threshold, "<=", why,
                           figures=[figure] if pair.examples else [], details=details)
    summary = (f"exact copies: {', '.join(f'{p.split} in {p.other} {p.exact}' for p in held)} (all images); exact "
               f"or near copies in a sample: {_counts(held)}; repeated within: {_counts(within)}. {how.capitalize()}.")
    figures = [_pairs_figure(data, [repeated], f"{repeated.split} images, each followed by its copy elsewhere in "
                             f"{repeated.split}")] if repeated.examples else []
    if leak.copy_fraction > max_copy_leak:  # too few copies to judge decided, so that is the number shown
        shown = (float(leak.copies), float(min_copies), "<")
        ok = (f"{leak.copies} {leak.split} images have a copy in {leak.other}: over {max_copy_leak:.1%} of the "
              f"{leak.searched} searched, but FAIL needs {min_copies} (a small split's natural look-alikes): ")
    else:
        shown = (leak.copy_fraction, max_copy_leak, "<=")
        ok = f"no held-out split copies another beyond {max_copy_leak:.1%}: "
    if repeated.copy_fraction > max_repeated:
        message = (f"{repeated.copies} of {repeated.searched} {repeated.split} images searched "
                   f"({repeated.copy_fraction:.1%}) have a copy elsewhere in {repeated.split} (limit "
                   f"{max_repeated:.0%}; {repeated.exact} of all {repeated.size} byte for byte): repeated images weigh "
                   "more in training (or in the score, for val and test). Fine if you over-sample on purpose; otherwise look for "
                   "duplicated files or augmented copies saved to disk. Between splits, " + ok + summary)
        return CheckResult("duplicates_and_leakage", STAGE, Verdict.WARN, *shown, message, figures=figures,
                           details={**details, "warn_threshold": max_repeated})
    return CheckResult("duplicates_and_leakage", STAGE, Verdict.PASS, *shown, ok + summary, figures=figures,
                       details=details)


@applies_to("image", "features")
@worded_for_kind
def conflicting_labels(pipeline: Pipeline, max_share: float = 0.05, min_conflicts: int = 5,
                       similar: float = SIMILAR) -> CheckResult:
    """The same image (exact or near copy) must carry the same label, within a split and across splits.

    Catches: images duplicated with another label (two annotators, a merge of two label maps, copies
    relabelled by a faulty script). FAILs when, for some pair of splits, more than `max_share` of the
    images found with a copy have a copy labelled differently, once at least `min_conflicts` such images
    are found (fewer is too little evidence: look-alike classes). WARNs on any byte-identical images
    labelled differently.
    """
    data = pipeline.data
    found = list(find_copies(data, similar).values())
    worst = max(found, key=lambda p: (p.conflicts >= min_conflicts, p.conflict_share))
    exact = sum(p.exact_conflicts for p in found if p.within or (p.split, p.other) in HELD_OUT)
    details = {"pairs": [p.row() for p in found], "similarity_threshold": similar}
    figure = [_pairs_figure(data, [worst], f"{worst.split} images, each followed by its copy {worst.where} "
                            "labelled differently", conflicts=True)] if worst.conflict_examples else []
    counts = "; ".join(f"{p.split} {p.where}: {p.conflicts} of {p.copies}" for p in found if p.copies)
    seen = (f"Images with a copy whose label differs, of those with a copy, per sample of {QUERIES}: "
            f"{counts or 'no copies'}")
    if worst.conflict_share > max_share and worst.conflicts >= min_conflicts:
        return CheckResult("conflicting_labels", STAGE, Verdict.FAIL, worst.conflict_share, max_share, "<=", (
            f"conflicting labels: {worst.conflicts} of the {worst.copies} {worst.split} images searched that have a "
            f"copy {worst.where} ({worst.conflict_share:.0%}, limit {max_share:.0%}) carry a different label from that "
            "copy. The same picture cannot be two classes: images were duplicated with different labels (two "
            f"annotators, two label maps merged, a relabelling script). {exact} byte-identical images are labelled "
            "differently. Look at the pairs, then de-duplicate and fix the labels."), figures=figure, details=details)
    if worst.conflict_share > max_share:  # the evidence floor decided, so that is the number shown
        shown = (float(worst.conflicts), float(min_conflicts), "<")
        finding = (f"only {worst.conflicts} images with a differently labelled copy (FAIL from {min_conflicts}, above "
                   f"{max_share:.0%} of the images with a copy): look-alike classes can do that")
    else:
        shown = (worst.conflict_share, max_share, "<=")
        finding = f"copies agree on their labels (at most {max_share:.0%} may not)"
    if exact:
        return CheckResult("conflicting_labels", STAGE, Verdict.WARN, *shown, (
            f"{exact} byte-identical images carry different labels: label noise, worth fixing; {finding}. {seen}."),
            figures=figure, details=details)
    return CheckResult("conflicting_labels", STAGE, Verdict.PASS, *shown, f"{finding}. {seen}.", figures=figure,
                       details=details)
