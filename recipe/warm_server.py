"""`python -m recipe.warm_server`: the warm process of recipe/warm.py, serving recipe.cli's commands.

Its own module so that recipe/warm.py (which the `recipe` client imports first, and which must stay
light) never imports recipe.cli, and recipe.cli never imports this."""
from __future__ import annotations

from recipe import cli, warm


def run_forked(argv: list[str], started: float) -> int:
    """One command in a fork of the warm process, timed from its client's start."""
    cli.warm_start(started)
    return cli.main(argv)


if __name__ == "__main__":
    warm.serve(cli.preload, run_forked)
