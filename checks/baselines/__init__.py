"""Stage `baselines`: dumb baselines and short training runs (input-independent baseline, overfit
one batch, the training loss decreases, prediction dynamics, the planned run's length)."""
