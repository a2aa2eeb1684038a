"""Measurement code the checks share, no verdicts: sampling batches and fresh models (`sampling`),
the one short reference run (`reference_run`), how many steps a check trains (`step_budget`), and
exact / near-duplicate search (`near_copies`)."""
