"""Which kinds of example (recipe.data.KINDS: image, features, tokens) each check applies to.

A check is written against the contract once and declares the kinds it has been proved on with
`@applies_to(...)`; a check that declares nothing was written for images. On a pipeline of another
kind the runner gives it N/A with the reason, without calling it, so an image-only check can
never misread a feature vector or a token sequence.
"""
from __future__ import annotations

import functools
from typing import Callable

from recipe.data import KIND_SHAPES, KINDS

DEFAULT_KINDS = ("image",)  # checks that declare nothing predate the other kinds


def applies_to(*kinds: str) -> Callable:
    """Decorator: the kinds of example this check applies to (see recipe.data.KINDS)."""
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds:
        raise ValueError(f"applies_to takes kinds from {KINDS}, got {kinds}")

    def mark(check: Callable) -> Callable:
        check.kinds = tuple(kinds)
        return check
    return mark


def kinds_of(check: Callable) -> tuple[str, ...]:
    return getattr(check, "kinds", DEFAULT_KINDS)


def why_not(check: Callable, kind: str) -> str | None:
    """None when `check` applies to examples of `kind`; else the N/A reason, in one line."""
    kinds = kinds_of(check)
    if kind in kinds:
        return None
    names = " and ".join(KIND_SHAPES[k].split(" (")[0] for k in kinds)
    return f"applies to {names} only; this pipeline's examples are {KIND_SHAPES[kind]}"


TABLE_WORDS = ((" images", " rows"), ("Images", "Rows"), (" image", " row"), (" picture", " row"))


def worded_for_kind(check: Callable) -> Callable:
    """A check whose messages speak of images, reworded for feature vectors: a table's rows are not images."""
    @functools.wraps(check)
    def reworded(pipeline, *args, **kwargs):
        result = check(pipeline, *args, **kwargs)
        if getattr(pipeline, "kind", "image") == "features":
            for image_word, table_word in TABLE_WORDS:
                result.message = result.message.replace(image_word, table_word)
        return result
    return reworded
