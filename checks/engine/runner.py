"""The one runner: every check on a pipeline, stage by stage, with the one stage gate.

`pytest checks/`, the `recipe` CLI, the zoo, the bench and the tests all run checks through
`iter_results` (or `run_all`, which collects it). With `gate`, a stage with a FAIL or ERROR turns
every later check into SKIP ("blocked by <stage>"). Asking for a subset (`only`, as `pytest -k`
does) runs just those, in registry order; such a run is partial and can never open the training
gate (see `is_complete`). A pipeline that breaks the Pipeline contract (recipe/contract.py) is
refused with one RecipeError line before any check runs.
"""
from __future__ import annotations

import time
import traceback
from typing import Callable, Collection, Iterator

from checks.engine.kinds import why_not
from checks.engine.registry import CHECKS, CHECKS_BY_STAGE
from checks.engine.result import STAGES, CheckResult, Verdict
from recipe.contract import check_contract
from recipe.user_code import describe, user_line

OnEvent = Callable[[str, str], None]  # (check name, stage), called as a check starts


def run_check(check: Callable[..., CheckResult], pipeline, stage: str, blocked_by: str | None = None) -> CheckResult:
    """Run one check, timing it; an exception becomes ERROR, a blocked stage becomes SKIP."""
    name = check.__name__
    if blocked_by is not None:
        return CheckResult(name, stage, Verdict.SKIP, None, None, "", f"blocked by {blocked_by}")
    kind = getattr(getattr(pipeline, "data", None), "kind", "image")
    reason = why_not(check, kind)
    if reason is not None:
        return CheckResult(name, stage, Verdict.NA, None, None, "", reason)
    started = time.perf_counter()
    try:
        result = check(pipeline)
    except Exception as err:  # the one place that catches: a crashing check must not stop the others
        frame = traceback.extract_tb(err.__traceback__)[-1]
        line = user_line(err)
        # Raised in the user's model, step or loader, the crash is theirs to fix (fit_dry_run tells whether
        # training meets it too); raised in the harness alone, it is a bug of the check.
        said = (f"raised in the pipeline's own code, at {line}, while this check ran it: {describe(err)} "
                f"(at {frame.filename.rsplit('/', 1)[-1]}:{frame.lineno}). Fix the model, step or data there; "
                "fit_dry_run says whether training meets it too" if line else
                f"the check crashed: {type(err).__name__}: {err} (at {frame.filename.rsplit('/', 1)[-1]}:{frame.lineno})")
        result = CheckResult(name, stage, Verdict.ERROR, None, None, "", said)
    result.duration_s = time.perf_counter() - started
    return result


def iter_results(pipeline, *, gate: bool = True, only: Collection[str] | None = None,
                 checks_by_stage: dict | None = None, on_start: OnEvent | None = None,
                 fork: bool = False, on_done: Callable[[CheckResult], None] | None = None
                 ) -> Iterator[CheckResult]:
    """Yield each check's result as it finishes, in stage order. With `fork`, where it is safe, the
    data stage runs in a forked copy of this process beside the later stages (checks/engine/forked_stage.py);
    the results, their order and the gate are the same. `on_done` sees each result as soon as it
    exists, which with `fork` can be before earlier ones are yielded: for work that needs no order
    (drawing its figures)."""
    checks_by_stage = CHECKS_BY_STAGE if checks_by_stage is None else checks_by_stage
    if only is not None:
        unknown = sorted(set(only) - {c.__name__ for checks in checks_by_stage.values() for c in checks})
        if unknown:
            raise KeyError(f"no such checks: {', '.join(unknown)}")
    # Not a generator itself, so a pipeline that breaks the contract is refused here, at the call, in
    # one RecipeError line, before any check runs (a check would only crash on it).
    check_contract(pipeline)
    return _iter_stages(pipeline, gate, only, checks_by_stage, on_start, fork, on_done)


def _iter_stages(pipeline, gate: bool, only: Collection[str] | None, checks_by_stage: dict,
                 on_start: OnEvent | None, fork: bool, on_done: Callable[[CheckResult], None] | None
                 ) -> Iterator[CheckResult]:
    if fork:
        from checks.engine.forked_stage import FIRST, fork_helps, iter_forked

        wanted = lambda check: only is None or check.__name__ in only  # noqa: E731
        if fork_helps(pipeline) and any(map(wanted, checks_by_stage.get(FIRST, []))):
            yield from iter_forked(pipeline, checks_by_stage, gate, wanted, on_start, on_done, run_check)
            return
    blocked_by: str | None = None
    for stage in STAGES:
        stage_blocks = False
        for check in checks_by_stage.get(stage, []):
            if only is not None and check.__name__ not in only:
                continue
            if on_start is not None:
                on_start(check.__name__, stage)
            result = run_check(check, pipeline, stage, blocked_by)
            if on_done is not None:
                on_done(result)
            stage_blocks = stage_blocks or result.verdict.blocks
            yield result
        if gate and blocked_by is None and stage_blocks:
            blocked_by = stage


def run_all(pipeline, *, gate: bool = False, only: Collection[str] | None = None,
            on_start: OnEvent | None = None, on_result: Callable[[CheckResult], None] | None = None
            ) -> list[CheckResult]:
    """Every registered check (or `only` those) on `pipeline`; the stable Python entry point.

    >>> from checks import run_all
    >>> results = run_all(pipeline)            # gate=False: every check runs, whatever fails
    """
    results = []
    for result in iter_results(pipeline, gate=gate, only=only, on_start=on_start):
        results.append(result)
        if on_result is not None:
            on_result(result)
    return results


def is_complete(names: Collection[str]) -> bool:
    """Whether results with these check names cover every registered check (no -k/-m subset)."""
    return set(CHECKS) <= set(names)


def expected_count() -> int:
    return len(CHECKS)
