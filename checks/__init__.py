"""The preflight checks. `run_all(pipeline)` runs every registered check and returns the results.

Import it lazily here so `import checks` stays cheap and `checks/conftest.py` can be loaded alone.
"""


def run_all(pipeline, **options):
    from checks.engine.runner import run_all as run

    return run(pipeline, **options)
