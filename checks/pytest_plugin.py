"""Makes `pytest --pyargs checks --pipeline my_cnn:build` work from any folder.

pytest reads a package's conftest.py (where the preflight's options and hooks live) before parsing
the command line only when the package is given as a path (`pytest checks/`) under the current
folder. With `--pyargs checks` from elsewhere it is loaded too late, and `--pipeline` is an
"unrecognized argument". This module is registered as a pytest plugin by the `pytest11` entry point
in pyproject.toml, so it is loaded in every pytest session of the environment; it does nothing
unless the command names the `checks` package, and then loads checks/conftest.py early, under the
name pytest itself gives that conftest, so it is never registered twice.
"""
from __future__ import annotations

from pathlib import Path

import pytest

PACKAGE = "checks"


def names_this_package(arg: str) -> bool:
    """`checks`, `checks.test_preflight`, `checks::...` or `checks/...` (what --pyargs accepts)."""
    head = str(arg).split("::", 1)[0].replace("/", ".").split(".", 1)[0]
    return head == PACKAGE


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config: pytest.Config, parser: pytest.Parser, args: list[str]) -> None:
    known = early_config.known_args_namespace
    if not getattr(known, "pyargs", False) or getattr(known, "noconftest", False):
        return
    if not any(names_this_package(arg) for arg in known.file_or_dir or []):
        return
    path = Path(__file__).with_name("conftest.py")
    manager = early_config.pluginmanager
    if manager.get_plugin(str(path)) is None:  # the name pytest's own conftest loading looks for
        from checks import conftest

        manager.register(conftest, name=str(path))
