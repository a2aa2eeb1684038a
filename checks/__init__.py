"""The preflight checks. `run_all(pipeline)` runs every registered check and returns the results.

Import it lazily here so `import checks` stays cheap and `checks/conftest.py` can be loaded alone.
"""


def run_all(pipeline, **options):
    from checks.engine.runner import run_all as run

    return run(pipeline, **options)


def __getattr__(name: str):
    """`from checks import check_loop, PreflightFailed, LoopVerdict`, loaded on first use (still cheap to import)."""
    if name in ("check_loop", "PreflightFailed", "LoopVerdict", "pipeline_from_loop"):
        from checks.integrations import loop

        return getattr(loop, name)
    raise AttributeError(f"module 'checks' has no attribute {name!r}")
