"""The bug zoo: the default pipeline with ONE realistic bug planted, for every bug the checks should catch.

Each `Bug` plants its mistake through the public Pipeline contract (`dataclasses.replace` on a clean
pipeline), the way it would sit in a user's code: a loader that pairs images with the wrong labels,
a model that ends in softmax, a train step without zero_grad. It declares which checks must FAIL
on it and which words the failing message must use to name the cause. A bug no automatic check can
see stays in the zoo with `must_fail=()` and a `why` saying so.

The catalogue follows Karpathy's "A Recipe for Training Neural Networks" and his "most common
neural net mistakes", the Full Stack Deep Learning troubleshooting guide, and the DeepCrime
mutation operators (Humbatova et al. 2021).

    python -m tests.zoo [--data sample|colour-digits|fashion-mnist|mnist] [--seed N] [--markdown]

runs every entry, plus the clean linear, MLP and CNN pipelines, through all checks and prints the
detection matrix (bug x check), the detection rate and the bugs nobody caught. `colour-digits` is the
second, 3-channel data set: the `sample` digits as 3x32x32 colour images (tests/synthetic.py), written
as CIFAR-10 batches and read back through the real `cifar10` source.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Mapping

import torch

from checks import run_all
from checks.engine.result import CheckResult, Verdict
from tests.zoo.bugs import (MISSING_CLASS, BatchMixingLinear, DetachedLinear, LogSoftmaxLinear, class_missing_from_train,
    eval_images_mirrored, frozen_weights, horizontal_flip, init_100x, inputs_normalised_twice,
    inputs_not_normalised, label_in_pixel, labels_off_by_one, labels_permuted_in_dataset, labels_shuffled_apart,
    leaked_test_images, loss_clamped, loss_summed, lr_100x_too_high, lr_far_too_low, mse_on_class_indices,
    negated_loss, never_shuffled, noisy_labels_everywhere, noisy_train_labels, norm_stats_from_test,
    rotation_180, same_batch_every_time, softmax_before_loss, sorted_by_class, step_before_backward,
    step_returns_float, step_sets_lr, step_without_zero_grad, systematic_mislabel_everywhere,
    train_and_test_swapped, train_label_map_differs, unseeded_shuffle, val_copied_into_test,
    val_from_sorted_tail, val_labels_shifted, weight_decay_far_too_high, with_linear_model)
from tests.zoo.family_bugs import (DropoutAlwaysOnLinear, MisspelledActivationMLP, ReluNeverCalledMLP, clip_norm_after_step,
    clip_norm_before_backward, clip_value_after_step, cosine_tmax_epochs_per_batch, dropout_layers_left_in_eval,
    duplicates_relabelled, eval_for_logging_never_reset, exponential_lr_per_batch, jpeg_compressed_test_images,
    lambda_lr_factor_is_lr, one_epoch_of_huge_batches, reencoded_test_copies_in_train, seed_reset_in_step,
    shifted_test_copies_in_train, val_batch_in_step_no_reset, val_brightened_into_test, val_images_downscaled)
from recipe.config import TrainConfig
from recipe.data import DataBundle, load_data
from recipe.errors import RecipeError
from recipe.pipeline import Pipeline, default_pipeline, mlp_pipeline
from tests.synthetic import write_colour_digits
from tests.zoo.valid import small_cnn

COLOUR_DIGITS = "colour-digits"
DATA_SETS = ("sample", COLOUR_DIGITS, "fashion-mnist", "mnist")


@dataclass(frozen=True)
class Expectation:
    """What a bug is expected to do on one data set where it differs from its default, and why."""
    must_fail: tuple[str, ...]
    cause_words: tuple[str, ...]
    why: str


@dataclass(frozen=True)
class Bug:
    name: str
    description: str                       # the planted cause, in one line
    plant: Callable[[Pipeline], Pipeline]  # clean pipeline -> the same pipeline with the bug
    must_fail: tuple[str, ...]             # checks that must FAIL on it; () when none can see it
    cause_words: tuple[str, ...]           # a failing message must contain one of these (any case)
    why: str                               # why those checks see it, or why no check can
    # data set (DataBundle.source) -> what it does there instead, for a bug whose effect depends on
    # the data (the grey 1x28x28 digits vs the 3x32x32 colour digits); declared, never dropped
    on_data: Mapping[str, Expectation] = field(default_factory=dict)

    def on(self, data_set: str) -> "Bug":
        """This bug with the expectation it declares for `data_set` (its default when it declares none)."""
        expected = self.on_data.get(data_set)
        if expected is None:
            return self
        return replace(self, must_fail=expected.must_fail, cause_words=expected.cause_words, why=expected.why)


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
        ("training_loss_decreases",), ("too high",),
        "the loss jumps from ln(C) to ~8 in the first steps. Whether the over-confident model also ends with a "
        "worse val loss than the zero-input model (input_independent_baseline) is a knife edge that differs "
        "between CPUs: it did on a 2-core Xeon, not on a 2-core AMD EPYC (val loss 2.219 vs 2.303)"),
    Bug("lr_far_too_low", lr_far_too_low.__doc__, lr_far_too_low,
        ("overfit_one_batch", "training_loss_decreases", "prediction_dynamics"), ("too low",),
        "a small batch cannot be overfit in the allotted steps: the loss plateaus near ln(C), and the "
        "predictions on fixed val examples never move",
        on_data={COLOUR_DIGITS: Expectation(("overfit_one_batch",), ("too low",), (
            "one batch cannot be memorised at lr 1e-6 (the loss stays near ln(C)); but Adam moves every weight by "
            "about lr a step, and a linear model on 3,072 inputs has 4x the weights of one on 784, so its logits "
            "move 4x faster: over 300 steps the loss still falls ~3% and the predictions gain a little, which "
            "training_loss_decreases and prediction_dynamics call slow (WARN, 'too low'), not broken")),
                 "fashion-mnist": Expectation(("overfit_one_batch",), ("too low",), (
            "the same mechanism as on the colour digits, milder: Adam moves each weight by about lr a step, and a "
            "garment fills far more of the frame than a digit's strokes, so the normalised input has more large "
            "values and the logits move faster; over 300 steps the loss falls ~3%, which training_loss_decreases "
            "calls slow (WARN, 'too low'); the predictions do not move, which prediction_dynamics WARNs (a training "
            "loss that falls means the weights train)"))}),
    Bug("weight_decay_far_too_high", weight_decay_far_too_high.__doc__, weight_decay_far_too_high,
        ("overfit_one_batch",), ("weight decay",),
        "16 examples cannot be memorised: the decay holds the loss on a plateau far above 0",
        on_data={COLOUR_DIGITS: Expectation((), (), (
            "not caught on the colour digits: 16 images of 3,072 values lie further apart than 16 of 784, so "
            "a smaller weight norm separates them and the same L2 pull no longer binds; the one-batch loss "
            "reaches 0.035 in 8 steps and settles at ~0.043, under the 0.05 bar. The decay still shrinks the "
            "model a full run trains; only the learning curves of a real run would show it"))}),
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
    Bug("test_shifted_into_train", shifted_test_copies_in_train.__doc__, shifted_test_copies_in_train,
        ("duplicates_and_leakage",), ("test images leaked",),
        "no byte matches, but each copy's central window equals its test image's one pixel over"),
    Bug("test_reencoded_into_train", reencoded_test_copies_in_train.__doc__, reencoded_test_copies_in_train,
        ("duplicates_and_leakage",), ("test images leaked",),
        "JPEG changes every byte, but a copy's thumbnail still correlates >= 0.998 with its test image"),
    Bug("val_brightened_into_test", val_brightened_into_test.__doc__, val_brightened_into_test,
        ("duplicates_and_leakage",), ("val and test overlap",),
        "brightness and contrast drop out of the normalised thumbnails: a tenth of test matches val at ~1.0"),
    Bug("duplicates_relabelled", duplicates_relabelled.__doc__, duplicates_relabelled,
        ("conflicting_labels",), ("conflicting labels",),
        "byte-identical train images carry two labels: every copy found disagrees"),
    Bug("dropout_active_in_eval", DropoutAlwaysOnLinear.__doc__, with_linear_model(DropoutAlwaysOnLinear),
        ("eval_determinism",), ("training=self.training",),
        "two eval-mode passes over the same batch differ"),
    Bug("no_zero_grad", step_without_zero_grad.__doc__, lambda p: replace(p, train_step=step_without_zero_grad),
        ("gradient_flow",), ("zero_grad",),
        "the second step's gradient on the same batch is the sum of two steps' gradients"),
    Bug("test_images_jpeg_compressed", jpeg_compressed_test_images.__doc__, jpeg_compressed_test_images,
        ("split_shift",), ("different distribution",),
        "a probe on per-image encoding statistics tells train from test images (ROC AUC ~1): JPEG ringing fills "
        "the flat background with small non-zero values and changes the histogram; the labels still agree"),
    Bug("val_images_downscaled", val_images_downscaled.__doc__, val_images_downscaled,
        ("split_shift",), ("different distribution",),
        "val images have far less fine detail (second differences) than train's: a probe tells them apart"),
    Bug("relu_never_called", ReluNeverCalledMLP.__doc__, with_linear_model(ReluNeverCalledMLP),
        ("effective_linearity",), ("activation",),
        "mixing two real inputs mixes the two-layer model's outputs exactly: it is affine, one linear layer"),
    Bug("activation_misspelled_identity", MisspelledActivationMLP.__doc__, with_linear_model(MisspelledActivationMLP),
        ("effective_linearity",), ("activation",),
        "three weight layers with nn.Identity between them compose to one affine map"),
    Bug("one_epoch_of_huge_batches", one_epoch_of_huge_batches.__doc__, one_epoch_of_huge_batches,
        ("run_length",), ("too short",),
        "the whole run has 9 steps, fewer than the 20-30 the baselines needed: to memorise 16 examples, and for the "
        "reference run's loss to fall half of its way"),
    Bug("eval_for_logging_never_reset", eval_for_logging_never_reset.__doc__, eval_for_logging_never_reset,
        ("train_mode_kept",), ("eval mode",),
        "after the step's first logging call, the training forwards run Dropout and BatchNorm in eval mode until "
        "the next epoch's model.train()"),
    Bug("val_batch_in_step_no_reset", val_batch_in_step_no_reset.__doc__, val_batch_in_step_no_reset,
        ("train_mode_kept",), ("eval mode",),
        "the val evaluation inside the step leaves the model in eval mode: the training forwards that follow run "
        "Dropout and BatchNorm in eval mode"),
    Bug("dropout_layers_left_in_eval", dropout_layers_left_in_eval.__doc__, dropout_layers_left_in_eval,
        ("train_mode_kept",), ("eval mode",),
        "the model itself stays in train mode, but its Dropout and BatchNorm layers train in eval mode"),
    Bug("seed_reset_in_step", seed_reset_in_step.__doc__, seed_reset_in_step,
        ("fresh_randomness",), ("same dropout mask",),
        "from two different generator states, the step leaves torch's generator in the same state, and the "
        "model's training forward is random"),
    Bug("clip_norm_after_step", clip_norm_after_step.__doc__, lambda p: replace(p, train_step=clip_norm_after_step),
        ("gradient_clipping",), ("after optimizer.step()",),
        "every clip comes after the optimizer step of its call: the updates use the unclipped gradients"),
    Bug("clip_norm_before_backward", clip_norm_before_backward.__doc__,
        lambda p: replace(p, train_step=clip_norm_before_backward),
        ("gradient_clipping",), ("before loss.backward()",),
        "the clip finds no gradient (zero_grad set them to None) and backward writes unclipped ones after it"),
    Bug("clip_value_after_step", clip_value_after_step.__doc__, lambda p: replace(p, train_step=clip_value_after_step),
        ("gradient_clipping",), ("after optimizer.step()",),
        "value clipping after the optimizer step: the updates use the raw gradients"),
    Bug("cosine_tmax_epochs_per_batch", cosine_tmax_epochs_per_batch.__doc__, cosine_tmax_epochs_per_batch,
        ("lr_schedule",), ("stepped per batch",),
        "the planned lr reaches 0 at step 10 of 550 and climbs back every 20 steps"),
    Bug("exponential_lr_per_batch", exponential_lr_per_batch.__doc__, exponential_lr_per_batch,
        ("lr_schedule",), ("stepped per batch",),
        "the planned lr falls below 1e-3 of its peak at step 66 of 550"),
    Bug("lambda_lr_factor_is_lr", lambda_lr_factor_is_lr.__doc__, lambda_lr_factor_is_lr,
        ("lr_schedule",), ("returns an lr",),
        "the planned lr peaks at lr x lr: the lambda's peak factor is exactly the optimizer's lr"),
)


# ---------------------------------------------------------------- the detection matrix

CODES = {"PASS": "P", "WARN": "W", "FAIL": "F", "ERROR": "E", "SKIP": "S", "N/A": "-"}
REFUSED = "R"  # the runner refused the pipeline before any check ran: it breaks the Pipeline contract
LEGEND = ("P pass, W warn, F fail, E error (the check crashed), S skip, - n/a (does not apply), R refused "
          "before any check (the pipeline breaks its contract); * the zoo expects this check to FAIL")
CLEAN = "clean"


@dataclass(frozen=True)
class ZooRow:
    name: str
    bug: Bug | None                  # None for a clean pipeline
    results: dict[str, CheckResult]  # check name -> result
    refused: str | None = None       # the runner's one-line refusal, when no check ran

    @property
    def failed(self) -> list[str]:
        return [name for name, r in self.results.items() if r.verdict is Verdict.FAIL]

    @property
    def caught(self) -> bool:
        return bool(self.failed or self.refused)

    @property
    def missed(self) -> list[str]:
        """Checks the bug declares it must FAIL that did not (none when the pipeline was refused outright:
        what those checks would find, the refusal says first)."""
        expected = self.bug.must_fail if self.bug and not self.refused else ()
        return [name for name in expected if name not in self.results or self.results[name].verdict is not Verdict.FAIL]


def clean_pipelines(config: TrainConfig, data: DataBundle) -> dict[str, Pipeline]:
    """The clean linear, MLP and small CNN pipelines (tests/zoo/valid.py's SmallCNN, shaped from the data)."""
    return {f"{CLEAN}:linear": default_pipeline(config, data), f"{CLEAN}:mlp": mlp_pipeline(config, data),
            f"{CLEAN}:cnn": small_cnn(config, data)}


def run_zoo(data: DataBundle, seed: int = 0, bugs: tuple[Bug, ...] = ZOO,
            clean: tuple[str, ...] = ("linear", "mlp", "cnn")) -> list[ZooRow]:
    """The `clean` pipelines, then every bug planted on the clean linear one, through all checks; each
    bug judged by what it declares for this data set (`Bug.on(data.source)`)."""
    config = TrainConfig(seed=seed)
    cleans = clean_pipelines(config, data)
    planted = [(bug.name, bug.on(data.source), bug.plant(cleans[f"{CLEAN}:linear"])) for bug in bugs]
    shown = [(name, None, p) for name, p in cleans.items() if name.split(":", 1)[1] in clean]
    rows = []
    for name, bug, pipeline in shown + planted:
        torch.manual_seed(seed)
        try:
            results = run_all(pipeline, gate=False)
        except RecipeError as refusal:
            rows.append(ZooRow(name, bug, {}, refused=str(refusal)))
            continue
        rows.append(ZooRow(name, bug, {r.name: r for r in results}))
    return rows


def detection_rate(rows: list[ZooRow]) -> tuple[int, int]:
    """(bugs with at least one FAIL or refused outright, bugs)."""
    bug_rows = [row for row in rows if row.bug is not None]
    return sum(row.caught for row in bug_rows), len(bug_rows)


def _cell(row: ZooRow, check: str) -> str:
    if row.refused:
        return REFUSED
    expected = row.bug is not None and check in row.bug.must_fail
    return CODES[row.results[check].verdict.value] + ("*" if expected else "")


def _summary(row: ZooRow) -> str:
    if row.bug is None:
        return "no FAIL" if not row.caught else "FALSE ALARM"
    if row.refused:
        return "refused"
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
    lines = [f"detection rate: {caught}/{total} bugs have at least one FAIL or are refused ({caught / total:.0%})"]
    for row in rows:
        if row.refused:
            lines.append(f"- {'FALSE ALARM: ' if row.bug is None else ''}{row.name} refused before any check: "
                         f"{row.refused}")
        elif row.bug is None and row.failed:
            lines += [f"- FALSE ALARM on {row.name}: {name}: {row.results[name].message}" for name in row.failed]
        elif row.bug is not None and not row.failed:
            lines.append(f"- not caught: {row.name}: {row.bug.description} Why: {row.bug.why}")
        elif row.bug is not None and row.missed:
            lines += [f"- {row.name}: expected {name} to FAIL, got " + (
                f"{row.results[name].verdict.value}: {row.results[name].message}" if name in row.results
                else "no such check in the registry") for name in row.missed]
    return lines


def zoo_data(name: str, data_dir: str | Path = "data") -> DataBundle:
    """One of DATA_SETS as splits. colour-digits is written to a temporary folder as CIFAR-10 batches and
    read back through the `cifar10` source (so the CIFAR reader is exercised too), then named for what it is."""
    if name != COLOUR_DIGITS:
        return load_data(name, data_dir, download=False)
    with tempfile.TemporaryDirectory() as folder:
        write_colour_digits(Path(folder))
        return replace(load_data("cifar10", folder, download=False), source=COLOUR_DIGITS)


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m tests.zoo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="sample", choices=DATA_SETS)
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--markdown", action="store_true", help="print a markdown table (for docs/zoo.md)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: the models are "
                        "tiny, and on 2 cores extra threads made the zoo 15x slower)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = zoo_data(args.data, args.data_dir)  # once, shared by every pipeline
    rows = run_zoo(data, args.seed)
    print((render_markdown if args.markdown else render_text)(rows))
    clean_ok = all(not row.failed for row in rows if row.bug is None)
    return 0 if clean_ok and not any(row.missed for row in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
