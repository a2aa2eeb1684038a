"""The report layer: results (and training metrics) in, results.json / figures.json / index.html out.

It reads results and never re-runs a check, nor imports one (tests/test_architecture.py). Import
the pieces from their modules:
`checks.report.record` (build_record, environment_info, read_record: results.json),
`checks.report.render` (write_report, rerender: the files and the page), `checks.report.diff` (two runs),
`checks.report.training` (training_summary) and `checks.report.figures` (render_png, matplotlib).
Nothing is imported here, so `recipe report` does not pay for torch or matplotlib.
"""
