"""Image grids: every class gets its row, a cut grid is a cut of whole images, colour images draw."""
from __future__ import annotations

import io

import numpy as np
import pytest
from matplotlib.image import imread

from checks.report.figures import MAX_IMAGES, render_png
from checks.engine.result import Figure


def tile_rows(png: bytes) -> int:
    """Rows of (all-black) tiles in a drawn grid: runs of dark pixels down the column with the most ink."""
    pixels = imread(io.BytesIO(png))[..., :3].mean(axis=2)  # (H, W), 0 black .. 1 white
    dark = pixels < 0.2
    column = dark[:, dark.sum(axis=0).argmax()]
    edges = np.flatnonzero(np.diff(np.r_[0, column.astype(int), 0]))
    runs = edges[1::2] - edges[::2]
    return int((runs >= 20).sum())  # tiles are tens of pixels tall; title and caption strokes are short


def black_images(n: int, shape=(28, 28)) -> np.ndarray:
    return np.zeros((n, *shape), dtype=np.uint8)


def test_one_row_per_class_keeps_every_class():
    per_class, classes = 8, 10
    captions = [str(c) for c in range(classes) for _ in range(per_class)]
    figure = Figure("images", "8 training examples per class",
                    {"images": black_images(per_class * classes), "captions": captions, "ncols": per_class})
    assert per_class * classes > MAX_IMAGES  # the old cut dropped classes 6-9
    assert tile_rows(render_png(figure)) == classes


def test_a_plain_grid_is_cut_to_whole_rows_of_the_first_images():
    figure = Figure("images", "many", {"images": black_images(60), "captions": [f"#{i}" for i in range(60)]})
    assert tile_rows(render_png(figure)) == MAX_IMAGES // 8


@pytest.mark.parametrize("shape", [(100, 1, 28, 28), (12, 3, 32, 32), (5, 2, 20, 30)])
def test_channel_first_images_draw(shape):
    images = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    png = render_png(Figure("images", "batch", {"images": images}))
    assert png.startswith(b"\x89PNG")


def test_a_wrong_image_shape_is_a_clear_error():
    with pytest.raises(ValueError, match=r"images must be \(N, H, W\)"):
        render_png(Figure("images", "bad", {"images": np.zeros((4, 28))}))


def test_a_matrix_can_leave_its_cells_unnumbered():
    from checks.report import figures

    data = {"values": np.eye(3), "rows": ["a", "b", "c"], "cols": ["a", "b", "c"]}
    numbered = figures._matrix(data).axes[0].texts
    assert [t.get_text() for t in numbered] == ["1", "0", "0", "0", "1", "0", "0", "0", "1"]
    assert len(figures._matrix({**data, "annotate": False}).axes[0].texts) == 0


def test_characters_the_font_lacks_draw_without_a_warning_per_glyph():
    """Decoded tokens of a user's text (Devanagari here) in a title, a legend and an axis label: DejaVu Sans has
    no glyph for them, and matplotlib warned once per character (38 lines for one text file)."""
    import warnings

    from checks.report.figures import render_png

    text = "\u0902\u0926\u0939\u093f"
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        png = render_png(Figure("lines", f"tokens {text}", {"series": {f"a {text}": [1, 2, 3]}, "xlabel": text,
                                                          "ylabel": "y"}))
    assert png.startswith(b"\x89PNG") and not [w for w in seen if "missing from font" in str(w.message)]
