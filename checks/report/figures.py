"""The one place that draws: `render_png(Figure) -> bytes` for each Figure kind in checks/engine/result.py.

Uses matplotlib's object API on the Agg canvas (no pyplot): no global figure registry, nothing to
close, no display needed. Figures are small on purpose (dpi 80, a few inches wide) so a report
with dozens of them stays a few hundred kB. Text is drawn with mathtext off, so a class name with a
`$` in it is drawn as typed instead of crashing the renderer.
"""
from __future__ import annotations

import io
import warnings
import textwrap
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless; must precede any backend use

import numpy as np  # noqa: E402
from matplotlib import rc_context  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure as MplFigure  # noqa: E402
from matplotlib.ticker import FuncFormatter, MaxNLocator, NullFormatter  # noqa: E402

from checks.engine.result import Figure  # noqa: E402

DPI = 80
WIDTH_IN = 6.4        # 512 px at DPI 80: fits the report column without scaling
IMAGES_WIDTH_IN = 8.0  # image grids get more room so captions stay legible
MAX_IMAGES = 48       # an images figure is a glance, not a data dump
MAX_ROWS = 26         # ...but a grid with one row per class keeps every class up to this many
MAX_ANNOTATED_CELLS = 20 * 20
STYLE = {"text.parse_math": False, "font.size": 9, "axes.titlesize": 10, "axes.spines.top": False,
         "axes.spines.right": False, "savefig.dpi": DPI}


def render_png(figure: Figure) -> bytes:
    """Draw one Figure as PNG bytes. Raises ValueError for an unknown kind or malformed data."""
    draw = _DRAWERS.get(figure.kind)
    if draw is None:
        raise ValueError(f"unknown figure kind {figure.kind!r}; expected one of {', '.join(_DRAWERS)}")
    # A character the font lacks (an emoji in a user's text, shown as decoded tokens) is drawn as a box; the
    # user needs no warning per glyph (38 of them for one emoji-rich text file).
    with rc_context(STYLE), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Glyph \d+ .* missing from font")
        fig = draw(figure.data)
        if figure.title:
            fig.suptitle(_wrap(figure.title, 80), fontsize=10)
        canvas = FigureCanvasAgg(fig)  # before tight_layout: it measures text with the renderer that draws
        if figure.kind not in _PLACED:
            fig.tight_layout()
        buffer = io.BytesIO()
        canvas.print_png(buffer)
    return buffer.getvalue()


# ---------------------------------------------------------------- the kinds

def _images(data: dict[str, Any]) -> MplFigure:
    """All images as one mosaic on one Axes (one imshow, not one Axes per image: 5-10x faster to draw).

    `ncols` (optional) fixes the columns: a figure with one row per class passes its examples per
    class, and when every caption in a row is the same (the class name) it is written once, at the
    row's left. Such a grid keeps every row up to MAX_ROWS; any other grid keeps MAX_IMAGES images.
    A grid that had to be cut says so under it.
    """
    images = _array(data["images"], "images")
    if images.dtype == np.uint8:  # 8-bit pixels; float images come in [0, 1] (checks scale by the declared range)
        images = images / 255.0
    if images.ndim == 4 and images.shape[1] == 3:  # (N, 3, H, W) colour -> (N, H, W, 3)
        images = images.transpose(0, 2, 3, 1)
    elif images.ndim == 4:  # (N, 1, H, W), or channels that are not colours: the first one, in grey
        images = images[:, 0]
    if images.ndim not in (3, 4) or len(images) == 0:
        raise ValueError(f"images must be (N, H, W) or (N, C, H, W), got shape {images.shape}")
    total = len(images)
    fixed = int(data.get("ncols") or 0)
    cols = fixed if fixed > 0 else _grid_columns(min(total, MAX_IMAGES))
    images = images[:cols * MAX_ROWS if fixed > 0 else MAX_IMAGES]
    n, rows = len(images), -(-len(images) // cols)
    captions = [str(c) for c in data.get("captions", [])][:n]
    row_labels = _row_labels(captions, cols, rows) if fixed > 0 else None
    cell_captions = captions if captions and row_labels is None else []
    height, width = images.shape[1:3]
    pad = max(1, round(0.08 * max(height, width)))
    cell_w, cell_h = width + pad, height + pad                        # one tile and its gap, in image pixels
    scale = min(0.8 if fixed > 0 else 1.4, IMAGES_WIDTH_IN / cols) / cell_w  # inches per image pixel
    caption_lines = max((_wrap(c, 18).count("\n") + 1 for c in cell_captions), default=0)
    caption_h = int(np.ceil(0.16 * caption_lines / scale))            # caption band above each tile
    row_h = cell_h + caption_h
    label_in = 0.15 + 0.075 * max(min(len(label), 16) for label in row_labels) if row_labels else 0.0
    title_in, note_in = 0.45, (0.25 if n < total else 0.0)
    grid_w_in, grid_h_in = cols * cell_w * scale, rows * row_h * scale
    fig = MplFigure(figsize=(grid_w_in + label_in, grid_h_in + title_in + note_in), dpi=DPI)
    fig_w, fig_h = fig.get_size_inches()
    ax = fig.add_axes((label_in / fig_w, note_in / fig_h, grid_w_in / fig_w, grid_h_in / fig_h))
    ax.set_axis_off()

    rgb = images.ndim == 4
    canvas = np.full((rows * row_h, cols * cell_w) + ((3,) if rgb else ()), 1.0 if rgb else np.nan)
    signed = data.get("cmap", "gray") == "signed"
    for i, image in enumerate(images):
        top, left = (i // cols) * row_h + caption_h + pad // 2, (i % cols) * cell_w + pad // 2
        canvas[top:top + height, left:left + width] = _scaled(image.astype(float), signed, rgb)
        if i < len(cell_captions):
            ax.text(left + width / 2, top - 0.5, _wrap(cell_captions[i], 18), ha="center", va="bottom", fontsize=8)
    if rgb:
        ax.imshow(canvas, interpolation="nearest", aspect="auto")
    elif signed:  # centred at 0, per image: red pushes the score up, blue pushes it down
        ax.imshow(canvas, cmap=matplotlib.colormaps["RdBu_r"].with_extremes(bad="white"), vmin=-1, vmax=1,
                  interpolation="nearest", aspect="auto")
    else:
        ax.imshow(canvas, cmap=matplotlib.colormaps["gray"].with_extremes(bad="white"), vmin=0, vmax=1,
                  interpolation="nearest", aspect="auto")
    for r, label in enumerate(row_labels or []):
        ax.text(-pad, r * row_h + caption_h + cell_h / 2, _wrap(label, 16), ha="right", va="center", fontsize=8)
    if n < total:
        fig.text(0.5, 0.02, f"the first {n} of {total} images", ha="center", va="bottom", fontsize=8)
    return fig


def _scaled(image: np.ndarray, signed: bool, rgb: bool) -> np.ndarray:
    """One image in its colour map's range, scaled on its own (as when each image had its own Axes)."""
    low, high = float(np.nanmin(image)), float(np.nanmax(image))
    if rgb:  # pixels in [0, 1] drawn as they are; signed weights, or values outside [0, 1], stretched per image
        if signed or low < 0.0 or high > 1.0:
            return (image - low) / ((high - low) or 1.0)
        return image
    if signed:  # centred at 0: -1..1 for the RdBu map
        return image / (max(abs(low), abs(high)) or 1.0)
    return (image - low) / (high - low) if high > low else np.zeros_like(image)


def _row_labels(captions: list[str], cols: int, rows: int) -> list[str] | None:
    """One label per row when every caption in each row is the same (a class name), else None."""
    if len(captions) < (rows - 1) * cols + 1:
        return None
    labels = []
    for r in range(rows):
        row = captions[r * cols:(r + 1) * cols]
        if len(set(row)) != 1:
            return None
        labels.append(row[0])
    return labels


def _lines(data: dict[str, Any]) -> MplFigure:
    fig = MplFigure(figsize=(WIDTH_IN * 0.75, 3.0), dpi=DPI)
    ax = fig.add_subplot()
    series = data["series"]
    for name, ys in series.items():
        ys = _array(ys, f"series {name!r}").astype(float).ravel()
        xs = _array(data["x"], "x").ravel()[:len(ys)] if data.get("x") is not None else np.arange(len(ys))
        ax.plot(xs, ys, marker="o" if len(ys) <= 30 else None, markersize=3, label=str(name))
    if data.get("hline") is not None:
        ax.axhline(float(data["hline"]), color="gray", linestyle="--", linewidth=1,
                   label=str(data.get("hline_label", f"{float(data['hline']):.4g}")))
    ax.set_xlabel(str(data.get("xlabel", "")))
    ax.set_ylabel(str(data.get("ylabel", "")))
    if data.get("x") is None or all(float(v).is_integer() for v in _array(data["x"], "x").ravel()):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs and steps: no 1.25
    if data.get("logy"):
        _log_y(ax)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def _bars(data: dict[str, Any]) -> MplFigure:
    categories = [str(c) for c in data["categories"]]
    series = {str(k): _array(v, f"series {k!r}").astype(float).ravel() for k, v in data["series"].items()}
    fig = MplFigure(figsize=(WIDTH_IN * 0.85, 3.2), dpi=DPI)
    ax = fig.add_subplot()
    positions = np.arange(len(categories))
    width = 0.8 / max(len(series), 1)
    highlight = str(data.get("highlight", ""))  # optional: one category drawn in another colour
    for j, (name, values) in enumerate(series.items()):
        offset = (j - (len(series) - 1) / 2) * width
        colors = ["#dd8452" if c == highlight else "#4c72b0" for c in categories] if len(series) == 1 else None
        bars = ax.bar(positions + offset, values, width, label=name, color=colors)
        if len(categories) * len(series) <= 12:
            ax.bar_label(bars, labels=[f"{v:.3g}" for v in values], fontsize=7, padding=1)
    if data.get("hline") is not None:
        ax.axhline(float(data["hline"]), color="gray", linestyle="--", linewidth=1)
    if len(categories) > 6:  # many names: slant them so neighbours do not overlap
        ax.set_xticks(positions, categories, fontsize=8, rotation=30, ha="right")
    else:
        ax.set_xticks(positions, [_wrap(c, 16, lines=4) for c in categories], fontsize=8)
    ax.set_ylabel(str(data.get("ylabel", "")))
    ax.margins(y=0.12)  # room for the value labels
    if len(series) > 1:  # beside the axes: bars fill the plot, a legend inside would hide some
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return fig


def _histogram(data: dict[str, Any]) -> MplFigure:
    values = _array(data["values"], "values").astype(float).ravel()
    values = values[np.isfinite(values)]
    fig = MplFigure(figsize=(WIDTH_IN * 0.75, 2.8), dpi=DPI)
    ax = fig.add_subplot()
    ax.hist(values, bins=data.get("bins", 50), color="#4c72b0")
    ax.set_xlabel(str(data.get("xlabel", "")))
    ax.set_ylabel("count")
    if data.get("logy"):
        _log_y(ax)
    return fig


def _matrix(data: dict[str, Any]) -> MplFigure:
    values = _array(data["values"], "values").astype(float)
    if values.ndim != 2:
        raise ValueError(f"matrix values must be 2-D, got shape {values.shape}")
    rows = [str(r) for r in data.get("rows", range(values.shape[0]))]
    cols = [str(c) for c in data.get("cols", range(values.shape[1]))]
    side = min(WIDTH_IN * 0.8, 1.6 + 0.42 * max(values.shape))
    fig = MplFigure(figsize=(side + 0.8, side), dpi=DPI)
    ax = fig.add_subplot()
    image = ax.imshow(values, cmap="Blues", interpolation="nearest", aspect="auto")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(len(cols)), [_wrap(c, 10) for c in cols], fontsize=7,
                  rotation=45 if max(map(len, cols), default=0) > 2 else 0, ha="right" if max(map(len, cols), default=0) > 2 else "center")
    ax.set_yticks(range(len(rows)), [_wrap(r, 14) for r in rows], fontsize=7)
    ax.set_xlabel(str(data.get("xlabel", "")))
    ax.set_ylabel(str(data.get("ylabel", "")))
    if data.get("annotate", True) and values.size <= MAX_ANNOTATED_CELLS:  # each number costs ~2 ms to draw
        top = np.nanmax(values) if values.size else 0
        for (r, c), v in np.ndenumerate(values):
            text = f"{v:.0f}" if float(v).is_integer() else f"{v:.2g}"
            ax.text(c, r, text, ha="center", va="center", fontsize=6, in_layout=False,  # inside the axes:
                    color="white" if top and v > 0.6 * top else "black")        # not measured by tight_layout
    return fig


def _text(data: dict[str, Any]) -> MplFigure:
    """Lines of text (decoded samples), one a row, in a fixed-width font."""
    lines = [str(line).replace("\n", "\u21b5") for line in data["lines"]][:MAX_ROWS]
    fig = MplFigure(figsize=(IMAGES_WIDTH_IN, 0.3 + 0.22 * len(lines)), dpi=DPI)
    ax = fig.add_subplot()
    ax.axis("off")
    for row, line in enumerate(lines):
        ax.text(0, 1 - (row + 0.5) / max(len(lines), 1), line[:110], family="monospace", fontsize=8, va="center")
    return fig


_PLACED = {"images"}  # kinds that place their own Axes (tight_layout would fight them, and costs a draw)
_DRAWERS = {"images": _images, "lines": _lines, "bars": _bars, "histogram": _histogram, "matrix": _matrix, "text": _text}


# ---------------------------------------------------------------- small pieces

def _array(value: Any, what: str) -> np.ndarray:
    """numpy view of a list, numpy array or torch tensor (any device)."""
    if hasattr(value, "detach"):  # a torch tensor: leave the GPU, drop autograd
        value = value.detach().cpu().numpy()
    try:
        return np.asarray(value)
    except (TypeError, ValueError) as err:
        raise ValueError(f"figure {what} is not array-like: {err}") from None


def _log_y(ax) -> None:
    """Log y axis with plain tick labels (mathtext is off, so the default 10^k labels would show raw)."""
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())


def _grid_columns(n: int) -> int:
    if n <= 6:
        return n
    if n <= 10:
        return 5
    return 6 if n <= 24 else 8


def _wrap(text: str, width: int, lines: int = 3) -> str:
    return "\n".join(textwrap.wrap(text, width)[:lines]) or text
