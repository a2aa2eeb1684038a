"""The report layer: figures draw, the page says what happened, it is escaped, small, and re-renders."""
from __future__ import annotations

import base64
import dataclasses
import io
import json
import math
import re

import markupsafe
import numpy as np
import pytest
import torch

from checks.report import render, sections
from checks.report.figures import render_png
from checks.report.record import build_record, environment_info, figures_of
from checks.report.render import rerender, write_report
from recipe.evaluate import evaluate_trained, shift_image
from checks.report.training import training_summary, wilson_interval
from checks.engine.result import CheckResult, Figure, Verdict
from recipe.config import TrainConfig
from recipe.errors import RecipeError
from recipe.pipeline import default_pipeline, mlp_pipeline
from recipe.train import FitResult, fit

EVIL = '<script>alert("x")</script> \'quoted\' & $x$'
SCHEMA_KEYS = {"schema_version", "overall", "created_utc", "command", "forced", "fingerprint", "preflight", "pipeline", "data",
               "config", "environment", "timings", "checks", "training"}
CHECK_KEYS = {"name", "stage", "verdict", "value", "threshold", "comparison", "message", "details", "duration_s"}
TRAINING_KEYS = {"epochs", "val_accuracy", "val_ci95", "test_accuracy", "test_ci95", "stopped", "per_class", "anchors",
                 "shift_robustness"}


def _summarise(pipeline, result):
    return training_summary(pipeline, result, evaluate_trained(pipeline, result))


def one_of_each_kind(rng: np.random.Generator) -> list[Figure]:
    return [
        Figure("images", "digits", {"images": rng.integers(0, 256, (12, 28, 28), dtype=np.uint8),
                                    "captions": [f"true {i} / pred {9 - i} p=0.97" for i in range(12)]}),
        Figure("images", "templates", {"images": torch.randn(10, 28, 28), "captions": list("0123456789"),
                                       "cmap": "signed"}),
        Figure("lines", "loss", {"series": {"train": [2.3, 1.0, 0.5], "val": [2.0, 1.1, 0.7]}, "x": [1, 2, 3],
                                 "xlabel": "epoch", "ylabel": "loss", "hline": math.log(10), "logy": True}),
        Figure("bars", "per class", {"categories": [f"class {i}" for i in range(10)],
                                     "series": {"train": rng.integers(300, 400, 10), "val": rng.integers(40, 60, 10)},
                                     "ylabel": "count", "hline": 350}),
        Figure("histogram", "pixels", {"values": rng.normal(size=5000), "bins": 40, "xlabel": "value"}),
        Figure("matrix", "confusion", {"values": rng.integers(0, 100, (10, 10)), "rows": list("0123456789"),
                                       "cols": list("0123456789"), "xlabel": "predicted", "ylabel": "true"}),
    ]


def hand_made_results(rng: np.random.Generator) -> list[CheckResult]:
    figures = one_of_each_kind(rng)
    return [
        CheckResult("input_range", "data", Verdict.PASS, 2.82, 10.0, "<=", "max |x| = 2.82 <= 10\nlooks normalised",
                    figures=figures[:1], details={"mean": 0.001, "per_split": [{"split": "train", "max": 2.82}]}),
        CheckResult("loss_at_init", "skeleton", Verdict.PASS, 2.3026, 2.4177, "<=", "loss at init ~ ln(10)",
                    figures=figures[2:3]),
        CheckResult("overfit_one_batch", "skeleton", Verdict.FAIL, 0.83, 0.01, "<=",
                    "loss still 0.83 after 200 steps\n  - lr too small\n  - optimizer.step() never called",
                    figures=figures[3:5]),
        CheckResult("crashing_check", "baselines", Verdict.ERROR, None, None, "", "the check crashed: ZeroDivisionError"),
        CheckResult("input_independent_baseline", "baselines", Verdict.SKIP, None, None, "", "blocked by skeleton"),
    ]


def record_for(pipeline, results, training=None, forced=False):
    return build_record(results, pipeline_name=pipeline.name, pipeline_spec="recipe.pipeline:default_pipeline",
                        data=pipeline.data, config=pipeline.config, environment=environment_info("cpu", 0),
                        timings={"data_load_s": 0.1, "checks_s": 0.2, "total_s": 0.5}, training=training,
                        forced=forced, fingerprint="f00d")


@pytest.fixture(scope="module")
def trained(sample_data):
    pipeline = default_pipeline(TrainConfig(epochs=1), sample_data)
    result = fit(pipeline, quiet=True)
    return pipeline, result, _summarise(pipeline, result)


# ---------------------------------------------------------------- figures

@pytest.mark.parametrize("index", range(6), ids=["images", "images-signed", "lines", "bars", "histogram", "matrix"])
def test_every_figure_kind_renders_a_png(index):
    png = render_png(one_of_each_kind(np.random.default_rng(0))[index])
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert 1_000 < len(png) < 150_000  # drawn, and small enough for dozens per report


def test_an_unknown_figure_kind_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown figure kind 'pie'"):
        render_png(Figure("pie", "no", {}))


def dominant_colour(png: bytes) -> np.ndarray:
    from matplotlib.image import imread

    pixels = imread(io.BytesIO(png))[..., :3].reshape(-1, 3)
    coloured = pixels[pixels.max(1) - pixels.min(1) > 0.3]  # drop white, black and grey
    return coloured.mean(0)


def test_signed_templates_are_red_where_positive_and_blue_where_negative():
    positive = render_png(Figure("images", "", {"images": np.ones((1, 28, 28)), "cmap": "signed"}))
    negative = render_png(Figure("images", "", {"images": -np.ones((1, 28, 28)), "cmap": "signed"}))
    red, green, blue = dominant_colour(positive)
    assert red > 2 * blue
    red, green, blue = dominant_colour(negative)
    assert blue > 2 * red


# ---------------------------------------------------------------- training summary

def test_wilson_interval_matches_the_textbook_values():
    low, high = wilson_interval(50, 100)
    assert (round(low, 4), round(high, 4)) == (0.4038, 0.5962)
    assert wilson_interval(10, 10) == (pytest.approx(10 / (10 + 1.959964 ** 2)), 1.0)  # n / (n + z^2)
    assert wilson_interval(0, 10)[0] == 0.0


def test_training_summary_agrees_with_fit_and_accounts_for_every_test_image(trained):
    pipeline, result, (summary, figures) = trained
    assert TRAINING_KEYS <= set(summary)
    assert summary["test_accuracy"] == pytest.approx(result.test["accuracy"], abs=1e-12)  # fit's own evaluation
    assert summary["val_accuracy"] == pytest.approx(result.history[-1]["val_accuracy"])
    for key in ("val", "test"):
        low, high = summary[f"{key}_ci95"]
        assert 0 <= low < summary[f"{key}_accuracy"] < high <= 1
    assert sum(row["n"] for row in summary["per_class"]) == len(pipeline.data.test)
    by_title = {f.title: f for f in figures}
    assert np.asarray(by_title[sections.CONFUSION].data["values"]).sum() == len(pipeline.data.test)
    names = [a["name"] for a in summary["anchors"]]
    assert [a["accuracy"] for a in summary["anchors"] if "LeCun" in a["name"] or "logistic" in a["name"]] == [0.880, 0.917]
    assert names[0] == "chance (1/10)" and names[-1] == "this run"


def test_weight_templates_are_the_linear_layers_rows_captioned_by_class(trained):
    pipeline, result, (summary, figures) = trained
    templates = next(f for f in figures if f.title == sections.TEMPLATES)
    assert templates.data["captions"] == list(pipeline.data.class_names)
    assert np.allclose(templates.data["images"].reshape(10, -1), result.model.fc.weight.detach().numpy())
    assert templates.data["cmap"] == "signed"


def test_confident_mistakes_are_wrong_and_sorted_by_confidence(trained):
    pipeline, result, (summary, figures) = trained
    mistakes = summary["confident_mistakes"]
    assert 0 < len(mistakes) <= 12
    assert [m["p"] for m in mistakes] == sorted((m["p"] for m in mistakes), reverse=True)
    with torch.no_grad():
        for m in mistakes:
            image = pipeline.data.test.images[m["index"]]
            assert pipeline.data.class_names[int(pipeline.data.test.labels[m["index"]])] == m["true"] != m["predicted"]
            logits = result.model((image.float() / 255 - pipeline.norm.mean).div(pipeline.norm.std).reshape(1, 1, 28, 28))
            assert torch.softmax(logits, 1).max().item() == pytest.approx(m["p"], abs=1e-5)
    figure = next(f for f in figures if f.title == sections.MISTAKES)
    assert re.fullmatch(r"true \S+ / pred \S+ p=0\.\d\d", figure.data["captions"][0])


@pytest.mark.slow
def test_an_mlp_has_no_class_templates_and_the_page_says_why(sample_data, tmp_path):
    pipeline = mlp_pipeline(TrainConfig(epochs=1), sample_data)
    summary, figures = _summarise(pipeline, fit(pipeline, quiet=True))
    assert sections.TEMPLATES not in [f.title for f in figures]
    html = write_report(tmp_path, record_for(pipeline, [], summary), {sections.TRAINING: figures}).read_text()
    assert "not one Linear layer mapping the image" in html


def test_a_stopped_run_reports_no_test_numbers(trained):
    pipeline, result, _ = trained
    stopped = FitResult(model=result.model, history=result.history, test=None, stopped="training loss became nan")
    summary, figures = _summarise(pipeline, stopped)
    assert summary["test_accuracy"] is None and summary["per_class"] == [] and summary["shift_robustness"] == []
    assert sections.CONFUSION not in [f.title for f in figures]


# ---------------------------------------------------------------- the page and the files

@pytest.mark.slow
def test_write_report_then_rerender_gives_the_same_page_with_every_check(trained, tmp_path):
    pipeline, _, (summary, training_figures) = trained
    results = hand_made_results(np.random.default_rng(1))
    index = write_report(tmp_path, record_for(pipeline, results, summary), figures_of(results, training_figures))
    first = index.read_text()
    for result in results:
        assert result.name in first
    assert "FAIL ✗" in first and "ERROR ✗" in first and "SKIP" in first  # worded, not colour only
    assert "0.83 &lt;= 0.01" in first  # value vs threshold
    assert "loss still 0.83 after 200 steps\n  - lr too small" in first  # line breaks kept (pre-wrap)
    assert "Fix the failing checks below before training" in first
    assert str(markupsafe.escape(sections.TEMPLATES)) in first and "95% CI" in first
    index.unlink()
    assert rerender(tmp_path).read_text() == first


@pytest.mark.slow
def test_results_json_round_trips_and_has_the_schema_keys(trained, tmp_path):
    pipeline, _, (summary, training_figures) = trained
    results = hand_made_results(np.random.default_rng(2))
    record = record_for(pipeline, results, summary)
    write_report(tmp_path, record, figures_of(results, training_figures))
    stored = json.loads((tmp_path / "results.json").read_text())
    assert stored == json.loads(json.dumps(record))  # nothing lost, nothing added
    assert set(stored) == SCHEMA_KEYS and stored["schema_version"] == 1 and stored["overall"] == "ERROR"
    assert all(set(c) == CHECK_KEYS for c in stored["checks"])
    assert TRAINING_KEYS <= set(stored["training"])
    assert set(stored["data"]["sizes"]) == {"train", "val", "test"}
    assert {"python", "torch", "torchvision", "numpy", "platform", "device", "seed", "git_commit"} <= set(stored["environment"])
    figures = json.loads((tmp_path / "figures.json").read_text())
    assert set(figures) == {"input_range", "loss_at_init", "overfit_one_batch", sections.TRAINING}
    assert base64.b64decode(figures["loss_at_init"][0]["png_base64"]).startswith(b"\x89PNG")


@pytest.mark.slow
def test_user_strings_are_escaped_everywhere(sample_data, tmp_path):
    evil_data = dataclasses.replace(sample_data, class_names=tuple(f"{EVIL}{i}" for i in range(10)))
    pipeline = dataclasses.replace(default_pipeline(TrainConfig(epochs=1), evil_data), name=EVIL)
    summary, training_figures = _summarise(pipeline, fit(pipeline, quiet=True))
    results = [CheckResult(EVIL, "data", Verdict.FAIL, 1.0, 0.0, "<=", EVIL, details={EVIL: [{EVIL: EVIL}]},
                           figures=[Figure("bars", EVIL, {"categories": [EVIL], "series": {EVIL: [1.0]}})])]
    write_report(tmp_path, record_for(pipeline, results, summary), figures_of(results, training_figures))
    html = rerender(tmp_path).read_text()
    assert "<script" not in html.lower()
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in html
    assert EVIL + "3" in json.loads((tmp_path / "results.json").read_text())["data"]["class_names"]


@pytest.mark.slow
def test_a_realistic_report_stays_under_3_mb(trained, tmp_path):
    pipeline, _, (summary, training_figures) = trained
    rng = np.random.default_rng(3)
    results = [dataclasses.replace(r, name=f"{r.name}_{k}", figures=one_of_each_kind(rng)[:2])
               for k in range(3) for r in hand_made_results(rng)]  # 15 checks, 30 figures, + training
    index = write_report(tmp_path, record_for(pipeline, results, summary), figures_of(results, training_figures))
    assert index.stat().st_size < 3_000_000


@pytest.mark.slow
def test_forced_training_is_shown_loudly(trained, tmp_path):
    pipeline, _, (summary, training_figures) = trained
    results = hand_made_results(np.random.default_rng(4))[:3]
    html = write_report(tmp_path, record_for(pipeline, results, summary, forced=True),
                        figures_of(results, training_figures)).read_text()
    assert "FORCED ✗ training ran despite failing checks" in html


@pytest.mark.slow
def test_a_clean_run_says_training_ran(trained, tmp_path):
    pipeline, _, (summary, training_figures) = trained
    results = hand_made_results(np.random.default_rng(5))[:2]
    html = write_report(tmp_path, record_for(pipeline, results, summary), figures_of(results, training_figures)).read_text()
    assert "PASS ✓" in html and "All checks passed: training ran." in html and "FORCED" not in html


def test_a_figure_that_cannot_be_drawn_does_not_lose_the_report(sample_data, tmp_path):
    pipeline = default_pipeline(TrainConfig(epochs=1), sample_data)
    results = [CheckResult("odd_figure", "data", Verdict.PASS, 1.0, 1.0, "==", "fine",
                           figures=[Figure("matrix", "not a matrix", {"values": [1, 2, 3]})])]
    html = write_report(tmp_path, record_for(pipeline, results), figures_of(results)).read_text()
    assert "odd_figure" in html and "could not draw this &#39;matrix&#39; figure" in html


def test_nan_values_are_stored_as_strict_json_and_shown(sample_data, tmp_path):
    pipeline = default_pipeline(TrainConfig(epochs=1), sample_data)
    results = [CheckResult("loss_at_init", "skeleton", Verdict.FAIL, float("nan"), 2.4, "<=", "loss is NaN",
                           details={"losses": np.array([1.0, np.inf])})]
    html = write_report(tmp_path, record_for(pipeline, results), {}).read_text()

    def refuse(constant):
        raise AssertionError(f"non-standard JSON constant {constant}")

    stored = json.loads((tmp_path / "results.json").read_text(), parse_constant=refuse)
    assert stored["checks"][0]["value"] == "NaN" and stored["checks"][0]["details"]["losses"] == [1.0, "Infinity"]
    assert "NaN &lt;= 2.4" in html


def test_rerender_needs_a_valid_results_json(tmp_path):
    with pytest.raises(RecipeError, match="no results.json"):
        rerender(tmp_path)
    (tmp_path / "results.json").write_text('{"schema_version": 1, "overall": ')
    with pytest.raises(RecipeError, match="not valid JSON"):
        rerender(tmp_path)
    (tmp_path / "results.json").write_text('{"schema_version": 1}')
    with pytest.raises(RecipeError, match="lacks"):
        rerender(tmp_path)


def test_rerender_without_figures_json_says_the_figures_are_missing(sample_data, tmp_path):
    pipeline = default_pipeline(TrainConfig(epochs=1), sample_data)
    results = hand_made_results(np.random.default_rng(6))
    write_report(tmp_path, record_for(pipeline, results), figures_of(results))
    (tmp_path / render.FIGURES_NAME).unlink()
    html = rerender(tmp_path).read_text()
    assert "figures.json is missing" in html and "data:image/png" not in html and "overfit_one_batch" in html


def test_shift_image_moves_pixels_and_fills_the_gap():
    image = torch.arange(1, 10, dtype=torch.float32).reshape(1, 3, 3)
    assert shift_image(image, 0, 1, fill=-1.0).tolist() == [[[-1, 1, 2], [-1, 4, 5], [-1, 7, 8]]]
    assert shift_image(image, -1, 0, fill=0.0).tolist() == [[[4, 5, 6], [7, 8, 9], [0, 0, 0]]]
    assert torch.equal(shift_image(image, 0, 0, fill=0.0), image)


def test_shift_robustness_peaks_unshifted_and_drops_for_a_linear_model(trained):
    pipeline, result, (summary, figures) = trained
    rows = summary["shift_robustness"]
    assert [r["shift_px"] for r in rows] == list(range(-4, 5))
    centre = rows[4]
    assert centre["horizontal"] == centre["vertical"]
    n = len(pipeline.data.test)  # the sample's test split is under 2,000: all of it is scored
    assert centre["horizontal"] == pytest.approx(summary["test_accuracy"], abs=1 / n)
    assert max(rows[0]["vertical"], rows[-1]["vertical"]) < centre["vertical"] - 0.3  # templates are tied to positions
    assert sections.SHIFTS in [f.title for f in figures]


@pytest.mark.slow
def test_a_check_that_answers_a_handout_question_says_which(trained, tmp_path):
    pipeline, _, (summary, training_figures) = trained
    results = [CheckResult("label_signal", "data", Verdict.PASS, 0.2, 0.02, ">=", "means differ"),
               CheckResult("loss_at_init", "skeleton", Verdict.PASS, 0.0, 0.05, "<=", "ln(10)")]
    html = write_report(tmp_path, record_for(pipeline, results, summary), figures_of(results, training_figures))
    page = html.read_text()
    assert page.count("Lab question: Which features help you recognise the number?") == 1
    assert "Lab question: Does this feature always apply? Will it work for other images?" in page  # the shift figure
