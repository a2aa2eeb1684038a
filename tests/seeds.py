"""The seeds the evidence matrices (valid configurations, clean pipelines, hard-clean data) run over.

CI runs seed 0 of every matrix: each matrix guards against regressions on one draw, and the full
suite stays near 15 minutes on 2 cores (with seeds 0 and 1 it took 27 minutes). Seeds 1..4 run the
same code on other draws and cost as much again each. `RECIPE_ALL_SEEDS=1` runs 0..4:
what docs/matrices.md reports was measured that way, with the machine named there.
"""
from __future__ import annotations

import os

ALL_SEEDS = os.environ.get("RECIPE_ALL_SEEDS") == "1"
EVIDENCE_SEEDS = range(5) if ALL_SEEDS else range(1)
