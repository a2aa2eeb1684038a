"""The bug zoo: the default pipeline with ONE realistic bug planted, for every bug the checks should catch.

Each `Bug` plants its mistake through the public Pipeline contract (`dataclasses.replace` on a clean
pipeline), the way it would sit in a user's code: a loader that pairs images with the wrong labels,
a model that ends in softmax, a train step without zero_grad. It declares which checks must FAIL
on it and which words the failing message must use to name the cause. A bug no automatic check can
see stays in the zoo with `must_fail=()` and a `why` saying so.

The catalogue follows Karpathy's "A Recipe for Training Neural Networks" and his "most common
neural net mistakes", the Full Stack Deep Learning troubleshooting guide, and the DeepCrime
mutation operators (Humbatova et al. 2021).

    python -m tests.zoo [--data sample|fashion-mnist] [--seed N] [--markdown]

runs every entry, plus the clean linear and MLP pipelines, through all checks and prints the
detection matrix (bug x check), the detection rate and the bugs nobody caught.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import torch

from checks import run_all
from checks.result import CheckResult, Verdict
from tests.zoo.bugs import (
    MISSING_CLASS, BatchMixingLinear, DetachedLinear, LogSoftmaxLinear, class_missing_from_train,
    eval_images_mirrored, frozen_weights, horizontal_flip, init_100x, inputs_normalised_twice,
    inputs_not_normalised, label_in_pixel, labels_off_by_one, labels_permuted_in_dataset,
    labels_shuffled_apart, leaked_test_images, loss_clamped, loss_summed, lr_100x_too_high, lr_far_too_low,
    mse_on_class_indices, negated_loss, never_shuffled, noisy_labels_everywhere, noisy_train_labels,
    norm_stats_from_test, rotation_180, same_batch_every_time, softmax_before_loss, sorted_by_class,
    step_before_backward, step_returns_float, step_sets_lr, step_without_zero_grad, train_and_test_swapped,
    val_copied_into_test, DropoutAlwaysOnLinear, systematic_mislabel_everywhere, train_label_map_differs,
    unseeded_shuffle, val_from_sorted_tail, val_labels_shifted, weight_decay_far_too_high, with_linear_model)
from recipe.config import TrainConfig
from recipe.data import DataBundle, load_data
from recipe.pipeline import Pipeline, default_pipeline, mlp_pipeline


@dataclass(frozen=True)
class Bug:
    name: str
    description: str                       # the planted cause, in one line
    plant: Callable[[Pipeline], Pipeline]  # clean pipeline -> the same pipeline with the bug
    must_fail: tuple[str, ...]             # checks that must FAIL on it; () when none can see it
    cause_words: tuple[str, ...]           # a failing message must contain one of these (any case)
    why: str                               # why those checks see it, or why no check can


# ---------------------------------------------------------------- the catalogue

ZOO: tuple[Bug, ...] = (
    Bug("labels_shuffled_apart", labels_shuffled_apart.__doc__, labels_shuffled_apart,
        ("label_pairing",), ("shuffled apart",),
        "almost every label that reaches the model differs from its image's source label"),
    Bug("labels_off_by_one", labels_off_by_one.__doc__, labels_off_by_one,
        ("label_pairing",), ("differ from the source label",),
        "the label paired with an image is its batch neighbour's, not its own"),
    Bug("eval_images_mirrored", eval_images_mirrored.__doc__, eval_images_mirrored,
        ("label_pairing",), ("evaluation path",),
        "val and test inputs no longer equal their source images once the declared normalisation is undone, "
        "while train inputs do; training itself is unaffected, so only the val/test numbers would be wrong"),
    Bug("inputs_not_normalised", inputs_not_normalised.__doc__, inputs_not_normalised,
        ("input_normalisation", "what_goes_into_the_net"), ("un-normali",),
        "the batches the net sees have max 255 and std ~80, not ~1"),
    Bug("inputs_normalised_twice", inputs_normalised_twice.__doc__, inputs_normalised_twice,
        ("input_normalisation",), ("normalised twice",),
        "normalising an already normalised batch leaves std ~1/std, far from 1"),
    Bug("norm_stats_from_test", norm_stats_from_test.__doc__, norm_stats_from_test,
        ("normalisation_stats_source",), ("test split",),
        "pipeline.norm equals the test split's statistics, not train's"),
    Bug("test_leaked_into_train", leaked_test_images.__doc__, leaked_test_images,
        ("duplicates_and_leakage",), ("test images leaked",),
        "every test image also appears, byte for byte, in train"),
    Bug("class_missing_from_train", class_missing_from_train.__doc__, class_missing_from_train,
        ("integrity",), (f"class {MISSING_CLASS} is missing",),
        "train has 9 label values while val and test have 10"),
    Bug("label_in_pixel", label_in_pixel.__doc__, label_in_pixel,
        ("target_leak",), ("target leaks",),
        "a single pixel predicts the label perfectly"),
    Bug("noisy_train_labels", noisy_train_labels.__doc__, noisy_train_labels,
        ("label_agreement", "label_noise"), ("annotation noise", "flipped at random"),
        "a linear probe fit on part of train misses about 15 points more of the held-out train labels than of "
        "the val + test labels, and classes that never look alike share labels; every other check traces "
        "examples back to the noisy labels and trusts them"),
    Bug("noisy_labels_everywhere", noisy_labels_everywhere.__doc__, noisy_labels_everywhere,
        ("label_noise",), ("flipped at random",),
        "the splits agree (all equally noisy), but in clean data most label/class pairs never meet, and random "
        "flips put about 2% of every label's images in every other class"),
    Bug("systematic_mislabel_everywhere", systematic_mislabel_everywhere.__doc__, systematic_mislabel_everywhere,
        (), (),
        "not caught: the same confusion in every split keeps the splits in agreement, and it fills one cell "
        "of the label/class matrix rather than raising its floor; on digits, 4 and 9 are also a pair a linear model "
        "confuses honestly. The probe's confusion matrix in the report shows the cell; only a trusted, clean "
        "reference set could prove it wrong."),
    Bug("train_label_map_differs", train_label_map_differs.__doc__, train_label_map_differs,
        ("label_agreement",), ("label map",),
        "a probe taught by train predicts class 1 for val/test's class 0 and back, so it misses ~20 points "
        "more of the val + test labels; within train everything is consistent"),
    Bug("sorted_by_class", sorted_by_class.__doc__, sorted_by_class,
        ("batch_sampling",), ("sorted by class",),
        "batches hold one class each and the order does not change between epochs"),
    Bug("never_shuffled", never_shuffled.__doc__, never_shuffled,
        ("batch_sampling",), ("never shuffled",),
        "two epochs see the examples in the same fixed order"),
    Bug("same_batch_every_time", same_batch_every_time.__doc__, same_batch_every_time,
        ("batch_sampling",), ("same batch",),
        "an epoch covers only batch_size distinct examples, each many times"),
    Bug("horizontal_flip", horizontal_flip.__doc__, horizontal_flip,
        ("augmentation_consistency",), ("flip",),
        "a classifier trained on clean digits loses accuracy on mirrored val digits"),
    Bug("rotation_180", rotation_180.__doc__, rotation_180,
        ("augmentation_consistency",), ("rotation",),
        "a classifier trained on clean digits loses accuracy on rotated val digits"),
    Bug("softmax_before_loss", softmax_before_loss.__doc__, softmax_before_loss,
        ("output_sanity",), ("softmax",),
        "the model's outputs are non-negative and sum to 1 per row: probabilities, not logits"),
    Bug("log_softmax_output", LogSoftmaxLinear.__doc__, with_linear_model(LogSoftmaxLinear),
        ("output_sanity",), ("log_softmax",),
        "every output row's logsumexp is 0: the model already returns log-probabilities"),
    Bug("init_100x", init_100x.__doc__, init_100x,
        ("loss_at_init",), ("initialised too large",),
        "huge initial logits make the loss at init far above ln(C)"),
    Bug("frozen_weights", frozen_weights.__doc__, frozen_weights,
        ("gradient_flow",), ("frozen",),
        "the weight matrix has requires_grad=False"),
    Bug("detached_weights", DetachedLinear.__doc__, with_linear_model(DetachedLinear),
        ("gradient_flow",), ("detach",),
        "the weight matrix is trainable but receives no gradient"),
    Bug("view_mixes_batch", BatchMixingLinear.__doc__, with_linear_model(BatchMixingLinear),
        ("batch_independence",), ("transpose",),
        "one example's output has a non-zero gradient with respect to other examples' inputs"),
    Bug("negated_loss", negated_loss.__doc__, negated_loss,
        ("overfit_one_batch", "loss_at_init"), ("wrong sign",),
        "the loss goes below zero, which cross-entropy cannot"),
    Bug("mse_on_class_indices", mse_on_class_indices.__doc__, mse_on_class_indices,
        ("loss_at_init", "overfit_one_batch"), ("wrong loss", "does not measure classification"),
        "the loss at init is mean(y^2) ~ 28, not ln(C) ~ 2.3, and a small batch reaches a tiny loss "
        "with most of it still misclassified"),
    Bug("loss_clamped", loss_clamped.__doc__, loss_clamped,
        ("gradient_flow", "overfit_one_batch"), ("clipped",),
        "the clamped loss has zero gradient at init, so no parameter ever changes"),
    Bug("lr_100x_too_high", lr_100x_too_high.__doc__, lr_100x_too_high,
        ("input_independent_baseline", "training_loss_decreases"), ("too high",),
        "the loss jumps from ln(C) to ~8 in the first steps, and the over-confident model ends with a worse val "
        "loss than the zero-input model"),
    Bug("lr_far_too_low", lr_far_too_low.__doc__, lr_far_too_low,
        ("overfit_one_batch", "training_loss_decreases", "prediction_dynamics"), ("too low",),
        "a small batch cannot be overfit in the allotted steps: the loss plateaus near ln(C), and the "
        "predictions on fixed val examples never move"),
    Bug("weight_decay_far_too_high", weight_decay_far_too_high.__doc__, weight_decay_far_too_high,
        ("overfit_one_batch",), ("weight decay",),
        "16 examples cannot be memorised: the decay holds the loss on a plateau far above 0"),
    Bug("loss_summed", loss_summed.__doc__, loss_summed,
        ("loss_at_init",), ("reduction",),
        "the untrained loss is B * ln(C), not ln(C)"),
    Bug("step_before_backward", step_before_backward.__doc__, lambda p: replace(p, train_step=step_before_backward),
        ("gradient_flow",), ("before loss.backward",),
        "after one step the parameters have a gradient but have not moved"),
    Bug("val_labels_shifted", val_labels_shifted.__doc__, val_labels_shifted,
        ("label_agreement",), ("renumbered",),
        "a probe taught by train misses most val labels, but not the test labels or held-out train labels"),
    Bug("labels_permuted_in_dataset", labels_permuted_in_dataset.__doc__, labels_permuted_in_dataset,
        ("label_signal",), ("permuted", "shuffled"),
        "every class gets the same mean image; the loader is faithful to a source that is itself wrong, "
        "so only the data stage can see it"),
    Bug("val_from_sorted_tail", val_from_sorted_tail.__doc__, val_from_sorted_tail,
        ("class_balance",), ("sorted",),
        "val's class mix is far from train's (total variation ~0.8)"),
    Bug("unseeded_shuffle", unseeded_shuffle.__doc__, unseeded_shuffle,
        ("determinism",), ("not seeded", "unseeded"),
        "two runs with the same seed draw different batches, so their losses differ from the first step"),
    Bug("step_returns_float", step_returns_float.__doc__, lambda p: replace(p, train_step=step_returns_float),
        ("fit_dry_run",), ("loss.item()",),
        "the dry run of fit gets a Python float back from the step, where the loop needs the loss tensor"),
    Bug("step_sets_lr", step_sets_lr.__doc__, lambda p: replace(p, train_step=step_sets_lr),
        ("fit_dry_run",), ("rewrites the learning rate",),
        "the lr the optimizer holds during the dry run's steps is 0.05, not the 0.001 the pipeline's optimizer "
        "and cosine schedule give"),
    Bug("train_and_test_swapped", train_and_test_swapped.__doc__, train_and_test_swapped,
        ("split_sizes",), ("swapped",),
        "train holds 1,000 images and test 3,500"),
    Bug("test_overlaps_val", val_copied_into_test.__doc__, val_copied_into_test,
        ("duplicates_and_leakage",), ("val and test overlap",),
        "half the test images are byte-for-byte val images"),
    Bug("dropout_active_in_eval", DropoutAlwaysOnLinear.__doc__, with_linear_model(DropoutAlwaysOnLinear),
        ("eval_determinism",), ("training=self.training",),
        "two eval-mode passes over the same batch differ"),
    Bug("no_zero_grad", step_without_zero_grad.__doc__, lambda p: replace(p, train_step=step_without_zero_grad),
        ("gradient_flow",), ("zero_grad",),
        "the second step's gradient on the same batch is the sum of two steps' gradients"),
)


# ---------------------------------------------------------------- the detection matrix

CODES = {"PASS": "P", "WARN": "W", "FAIL": "F", "ERROR": "E", "SKIP": "S", "N/A": "-"}
LEGEND = ("P pass, W warn, F fail, E error (the check crashed), S skip, - n/a (does not apply); "
          "* the zoo expects this check to FAIL")
CLEAN = "clean"


@dataclass(frozen=True)
class ZooRow:
    name: str
    bug: Bug | None                  # None for a clean pipeline
    results: dict[str, CheckResult]  # check name -> result

    @property
    def failed(self) -> list[str]:
        return [name for name, r in self.results.items() if r.verdict is Verdict.FAIL]

    @property
    def missed(self) -> list[str]:
        """Checks the bug declares it must FAIL that did not."""
        expected = self.bug.must_fail if self.bug else ()
        return [name for name in expected if name not in self.results or self.results[name].verdict is not Verdict.FAIL]


def clean_pipelines(config: TrainConfig, data: DataBundle) -> dict[str, Pipeline]:
    return {f"{CLEAN}:linear": default_pipeline(config, data), f"{CLEAN}:mlp": mlp_pipeline(config, data)}


def run_zoo(data: DataBundle, seed: int = 0, bugs: tuple[Bug, ...] = ZOO,
            clean: tuple[str, ...] = ("linear", "mlp")) -> list[ZooRow]:
    """The `clean` pipelines, then every bug planted on the clean linear one, through all checks."""
    config = TrainConfig(seed=seed)
    cleans = clean_pipelines(config, data)
    planted = [(bug.name, bug, bug.plant(cleans[f"{CLEAN}:linear"])) for bug in bugs]
    shown = [(name, None, p) for name, p in cleans.items() if name.split(":", 1)[1] in clean]
    rows = []
    for name, bug, pipeline in shown + planted:
        torch.manual_seed(seed)
        results = run_all(pipeline, gate=False)
        rows.append(ZooRow(name, bug, {r.name: r for r in results}))
    return rows


def detection_rate(rows: list[ZooRow]) -> tuple[int, int]:
    """(bugs with at least one FAIL, bugs)."""
    bug_rows = [row for row in rows if row.bug is not None]
    return sum(bool(row.failed) for row in bug_rows), len(bug_rows)


def _cell(row: ZooRow, check: str) -> str:
    expected = row.bug is not None and check in row.bug.must_fail
    return CODES[row.results[check].verdict.value] + ("*" if expected else "")


def _summary(row: ZooRow) -> str:
    if row.bug is None:
        return "no FAIL" if not row.failed else "FALSE ALARM"
    if row.missed:
        return "MISSED " + ",".join(row.missed)
    return "caught" if row.failed else "not caught (known)"


def render_text(rows: list[ZooRow]) -> str:
    checks = list(rows[0].results)
    width = max(len(row.name) for row in rows)
    header = f"{'':{width}}  " + " ".join(f"{i + 1:>3}" for i in range(len(checks))) + "  verdict"
    lines = [header]
    for row in rows:
        lines.append(f"{row.name:{width}}  " + " ".join(f"{_cell(row, c):>3}" for c in checks) + f"  {_summary(row)}")
    lines += ["", LEGEND, "checks: " + ", ".join(f"{i + 1} {c}" for i, c in enumerate(checks))]
    return "\n".join(lines + [""] + _findings(rows))


def render_markdown(rows: list[ZooRow]) -> str:
    checks = list(rows[0].results)
    lines = ["| pipeline | " + " | ".join(f"`{c}`" for c in checks) + " | verdict |",
             "|---|" + "---|" * len(checks) + "---|"]
    lines += [f"| `{row.name}` | " + " | ".join(_cell(row, c) for c in checks) + f" | {_summary(row)} |"
              for row in rows]
    return "\n".join(lines + ["", LEGEND, ""] + _findings(rows))


def _findings(rows: list[ZooRow]) -> list[str]:
    caught, total = detection_rate(rows)
    lines = [f"detection rate: {caught}/{total} bugs have at least one FAIL ({caught / total:.0%})"]
    for row in rows:
        if row.bug is None and row.failed:
            lines += [f"- FALSE ALARM on {row.name}: {name}: {row.results[name].message}" for name in row.failed]
        elif row.bug is not None and not row.failed:
            lines.append(f"- not caught: {row.name}: {row.bug.description} Why: {row.bug.why}")
        elif row.bug is not None and row.missed:
            lines += [f"- {row.name}: expected {name} to FAIL, got " + (
                f"{row.results[name].verdict.value}: {row.results[name].message}" if name in row.results
                else "no such check in the registry") for name in row.missed]
    return lines


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m tests.zoo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="sample", choices=("sample", "fashion-mnist", "mnist"))
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--markdown", action="store_true", help="print a markdown table (for the README)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: the models are "
                        "tiny, and on 2 cores extra threads made the zoo 15x slower)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = load_data(args.data, args.data_dir, download=False)  # once, shared by every pipeline
    rows = run_zoo(data, args.seed)
    print((render_markdown if args.markdown else render_text)(rows))
    clean_ok = all(not row.failed for row in rows if row.bug is None)
    return 0 if clean_ok and not any(row.missed for row in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
