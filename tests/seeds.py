"""The seeds the evidence matrices (valid configurations, clean pipelines, hard-clean data) run over.

CI runs seeds 0 and 1 of every matrix, so the full suite stays near 15 minutes on 2 cores; seeds
2..4 run the same code on other draws and cost as much again. `RECIPE_ALL_SEEDS=1` runs 0..4:
what docs/matrices.md reports was measured that way, with the machine named there.
"""
from __future__ import annotations

import os

ALL_SEEDS = os.environ.get("RECIPE_ALL_SEEDS") == "1"
EVIDENCE_SEEDS = range(5) if ALL_SEEDS else range(2)
