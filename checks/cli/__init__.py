"""The `recipe` command line: the composition root, the only part that knows every other.

One module per command (`check`, `train` for train/run, `report` for report/diff; `warm_server`
serves them from a warm process), `main` dispatching to them, and `parser`, the options, which
imports no torch so that `recipe --help` answers at once. Nothing in recipe/ or the rest of checks/
imports this package.
"""
from __future__ import annotations

# The exit codes of every command.
EXIT_OK = 0             # all passed (WARN allowed), or trained
EXIT_FAILED = 1         # a check or training monitor FAILed/ERRORed, training stopped; `diff`: a verdict got worse
EXIT_USAGE = 2          # a usage or data error
EXIT_INTERRUPTED = 130  # Ctrl-C
