"""One test per check, in stage order, each marked with its stage (`pytest checks/ -m data`)."""
import pytest

from checks.registry import CHECKS_BY_STAGE

PARAMS = [pytest.param(check, stage, id=check.__name__, marks=getattr(pytest.mark, stage))
          for stage, checks in CHECKS_BY_STAGE.items() for check in checks]


@pytest.mark.parametrize("check, stage", PARAMS)
def test_check(preflight, check, stage):
    preflight(check, stage)
