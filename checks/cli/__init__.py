"""The `recipe` command line: the composition root, the only part that knows every other.

One module per command (`check`, `train` for train/run, `report` for report/diff; `warm_server`
serves them from a warm process), `main` dispatching to them, and `parser`, the options, which
imports no torch so that `recipe --help` answers at once. Nothing in recipe/ or the rest of checks/
imports this package.
"""
