"""Measurement code the checks share, no verdicts: sampling batches and fresh models (`sampling`),
the one short reference run (`reference_run`), how many steps a check trains (`step_budget`),
exact / near-duplicate search (`near_copies`) and the held-out label probe (`label_probe`)."""
