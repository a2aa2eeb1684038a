"""Every data source by name, for the command line and `pytest checks/`: the image sources of
recipe/data.py, the tables of feature vectors of recipe/features.py (scikit-learn's bundled sets), and
the token sequences of recipe/text_sources.py.

It sits above them, so recipe/data.py never imports the table or sequence readers (which import it): the
layers stay acyclic, and `load_data` keeps meaning what it always did.
"""
from __future__ import annotations

from pathlib import Path

import torch

from recipe import data
from recipe.features import FEATURE_SOURCES, load_features
from recipe.text_sources import TEXT_SOURCES, load_text_source

SOURCES = (*data.SOURCES, *FEATURE_SOURCES, *TEXT_SOURCES)


def load_source(source: str = "auto", data_dir: str | Path = "data", device: str | torch.device = "cpu",
                download: bool = True) -> data.DataBundle:
    """Load any source in SOURCES on `device` (for --data text, `data_dir` is the text file)."""
    if source in TEXT_SOURCES:  # offline by design: nothing to download
        return load_text_source(source, data_dir, device)
    if source in FEATURE_SOURCES:  # bundled with scikit-learn: nothing to download either
        return load_features(source, device)
    if source not in SOURCES:
        raise data.DataError(f"unknown data source {source!r}; choose one of {', '.join(SOURCES)}")
    return data.load_data(source, data_dir, device, download)
