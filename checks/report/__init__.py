"""The report layer: results (and training metrics) in, results.json / figures.json / index.html out.

It reads results and never re-runs a check. Import the pieces from their modules:
`checks.report.render` (build_record, environment_info, write_report, rerender),
`checks.report.training` (training_summary) and `checks.report.figures` (render_png, matplotlib).
Nothing is imported here, so `recipe report` does not pay for torch or matplotlib.
"""
