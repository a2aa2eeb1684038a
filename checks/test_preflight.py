"""One test per check, in stage order, each marked with its stage (`pytest checks/ -m data`)."""
import pytest

from checks.engine.registry import CHECKS_BY_STAGE

PARAMS = [pytest.param(check.__name__, id=check.__name__, marks=getattr(pytest.mark, stage))
          for stage, checks in CHECKS_BY_STAGE.items() for check in checks]


@pytest.mark.parametrize("name", PARAMS)
def test_check(preflight, name):
    preflight(name)
