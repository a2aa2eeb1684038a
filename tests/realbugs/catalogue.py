"""The real-bug track: training bugs that someone reported publicly, ported as buggy/fixed pipeline pairs.

The bug zoo (tests/zoo) plants bugs its authors thought of, and declares which check must catch each;
this track measures the harness on bugs nobody designed for it. Every `RealBug` carries the address of
the public report it reproduces (a GitHub issue or pull request, a Stack Overflow question, a PyTorch
forum thread, or a workload of TrainCheck's silent-issue benchmark, OSDI 2025), a one-line
description of the bug and of its fix, and the two factories (tests/realbugs/pairs.py). Nothing
declares which check should fire: the track runs every check on both versions and reports

- recall: the share of buggy versions with at least one FAIL, and
- the false-FAIL rate: the share of fixed versions with at least one FAIL,

plus, per pair, whether the buggy version FAILs a check its fixed twin passes (a FAIL the bug itself
caused, not the user's model tripping a check either way).

    python -m tests.realbugs [--seed N] [--markdown] [--only NAME ...]
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from checks import run_all
from checks.engine.result import CheckResult, Verdict
from recipe.config import TrainConfig
from recipe.data import DataBundle, load_data
from recipe.pipeline import Pipeline
from tests.realbugs import pairs as p

Factory = Callable[[TrainConfig, DataBundle], Pipeline]
SOURCE_KINDS = ("github-issue", "github-pr", "stackoverflow", "pytorch-forum")


@dataclass(frozen=True)
class RealBug:
    name: str
    source_url: str    # the public report, exactly as read
    source_kind: str   # one of SOURCE_KINDS
    bug: str           # what is wrong, in one line
    fix: str           # what the fix changes, in one line
    buggy: Factory
    fixed: Factory
    family: str        # the kind of mistake, for the misses-by-family summary
    via: str = ""      # the benchmark the report was taken from, if any


TRAINCHECK = "TrainCheck silent-issue workloads (OSDI 2025)"

REAL_BUGS: tuple[RealBug, ...] = (
    RealBug("missing_zero_grad",
            "https://stackoverflow.com/questions/60335387/pytorch-mnist-example-not-converge", "stackoverflow",
            "the MNIST loop never calls optimizer.zero_grad(): each step applies the sum of all past gradients",
            "call optimizer.zero_grad() at the start of every iteration",
            p.missing_zero_grad_buggy, p.missing_zero_grad_fixed, "training loop", via=TRAINCHECK),
    RealBug("softmax_before_cross_entropy",
            "https://github.com/jindongwang/Deep-learning-activity-recognition/issues/10", "github-issue",
            "forward ends in F.softmax and the probabilities go into nn.CrossEntropyLoss, which applies log-softmax again",
            "return the raw scores from forward",
            p.softmax_before_cross_entropy_buggy, p.softmax_before_cross_entropy_fixed, "loss / output layer"),
    RealBug("log_softmax_over_batch",
            "https://github.com/fxia22/pointnet.pytorch/issues/27", "github-issue",
            "the classifier returns F.log_softmax(x, dim=0): the distribution is taken across the batch, not the classes",
            "F.log_softmax(x, dim=1) (the class dimension)",
            p.log_softmax_over_batch_buggy, p.log_softmax_over_batch_fixed, "tensor shapes / dims"),
    RealBug("nll_loss_on_softmax",
            "https://github.com/AnubhavGupta3377/Text-Classification-Models-Pytorch/issues/9", "github-issue",
            "the model ends in nn.Softmax and trains with nn.NLLLoss, which expects log-probabilities: the loss is -p, "
            "always negative",
            "end the model in nn.LogSoftmax (or use CrossEntropyLoss on logits)",
            p.nll_loss_on_softmax_buggy, p.nll_loss_on_softmax_fixed, "loss / output layer"),
    RealBug("relu_on_logits",
            "https://github.com/pytorch/tutorials/pull/1644", "github-pr",
            "the quickstart network ends in a ReLU, so the logits fed to CrossEntropyLoss are clipped at zero",
            "drop the last ReLU",
            p.relu_on_logits_buggy, p.relu_on_logits_fixed, "loss / output layer"),
    RealBug("lstm_batch_first_dropped",
            "https://github.com/yunjey/pytorch-tutorial/issues/196", "github-issue",
            "batch_first=True changed to False while the input stays (batch, seq, feature): the LSTM recurs over the batch",
            "keep batch_first=True (or permute the input to (seq, batch, feature))",
            p.lstm_batch_first_dropped_buggy, p.lstm_batch_first_dropped_fixed, "tensor shapes / dims"),
    RealBug("functional_dropout_in_eval",
            "https://github.com/delip/PyTorchNLPBook/issues/28", "github-issue",
            "forward calls F.dropout(x, p=0.5) without training=self.training, so dropout stays on after model.eval()",
            "F.dropout(x, p=0.5, training=self.training) (or an nn.Dropout module)",
            p.functional_dropout_in_eval_buggy, p.functional_dropout_in_eval_fixed, "train/eval mode"),
    RealBug("eval_mode_never_reset",
            "https://github.com/shubhamagarwal92/mmd/issues/14", "github-issue",
            "logging inside the training loop calls model.eval() and nothing calls model.train() again: dropout and "
            "BatchNorm train in eval mode",
            "call model.train() after the evaluation/logging",
            p.eval_mode_never_reset_buggy, p.eval_mode_never_reset_fixed, "train/eval mode"),
    RealBug("cosine_stepped_per_batch",
            "https://github.com/ivadomed/ivadomed/pull/55", "github-pr",
            "CosineAnnealingLR(optimizer, num_epochs) is stepped in the batch loop: a whole annealing cycle every "
            "num_epochs batches",
            "step the scheduler once per epoch",
            p.cosine_stepped_per_batch_buggy, p.cosine_stepped_per_batch_fixed, "lr schedule"),
    RealBug("steplr_stepped_per_batch",
            "https://github.com/pytorch/tutorials/pull/640", "github-pr",
            "StepLR(step_size=7, gamma=0.1) meant per epoch is stepped per batch: the lr falls 10x every 7 batches",
            "step the scheduler once per epoch",
            p.steplr_stepped_per_batch_buggy, p.steplr_stepped_per_batch_fixed, "lr schedule"),
    RealBug("clip_after_optimizer_step",
            "https://github.com/VGraphRNN/VGRNN/issues/4", "github-issue",
            "clip_grad_norm is called after opt.step(): it clips gradients that were already applied",
            "clip between loss.backward() and optimizer.step()",
            p.clip_after_step_buggy, p.clip_after_step_fixed, "gradient clipping"),
    RealBug("clip_before_backward",
            "https://github.com/Cranial-XIX/FAMO/issues/4", "github-issue",
            "clip_grad_norm_ runs before loss.backward(), on gradients that were just zeroed: nothing is clipped",
            "clip after loss.backward()",
            p.clip_before_backward_buggy, p.clip_before_backward_fixed, "gradient clipping"),
    RealBug("loss_rewrapped_in_variable",
            "https://github.com/huggingface/torchMoji/issues/21", "github-issue",
            "the model returns outputs.data and the loop wraps Variable(loss, requires_grad=True): backward runs, no "
            "gradient reaches the model",
            "return the outputs themselves (no .data) and drop the Variable wrapper",
            p.loss_rewrapped_in_variable_buggy, p.loss_rewrapped_in_variable_fixed, "autograd graph cut"),
    RealBug("layers_in_python_list",
            "https://github.com/pytorch/pytorch/issues/715", "github-issue",
            "the hidden layers are kept in a Python list, so their parameters are not registered and never trained",
            "wrap them in nn.ModuleList",
            p.layers_in_python_list_buggy, p.layers_in_python_list_fixed, "parameters not trained"),
    RealBug("train_loader_not_shuffled",
            "https://github.com/Deci-AI/super-gradients/issues/416", "github-issue",
            "the train dataloader gets no shuffle=True: a SequentialSampler walks the class-ordered set one class at a time",
            "pass shuffle=True for the training loader",
            p.train_loader_not_shuffled_buggy, p.train_loader_not_shuffled_fixed, "data loading"),
    RealBug("labels_one_based",
            "https://github.com/pytorch/pytorch/issues/15666", "github-issue",
            "the data set's labels are 1..C while CrossEntropy needs 0..C-1: 'Target 10 is out of bounds'",
            "subtract 1 from the labels when loading",
            p.labels_one_based_buggy, p.labels_one_based_fixed, "labels"),
    RealBug("pixels_divided_by_255_twice",
            "https://github.com/4uiiurz1/pytorch-nested-unet/issues/62", "github-issue",
            "the Dataset divides by 255 and albumentations' Normalize(max_pixel_value=255) scales by 255 again: the "
            "inputs are almost constant",
            "drop the division in the Dataset",
            p.pixels_divided_by_255_twice_buggy, p.pixels_divided_by_255_twice_fixed, "input normalisation"),
    RealBug("only_batchnorm_trainable",
            "https://discuss.pytorch.org/t/obtaining-abnormal-changes-in-loss-and-accuracy/84911", "pytorch-forum",
            "requires_grad=False on every parameter whose name lacks 'bn', and on the _fc head: only BatchNorm trains",
            "leave the layers trainable (and lr 0.01 -> 0.005)",
            p.only_batchnorm_trainable_buggy, p.only_batchnorm_trainable_fixed, "parameters not trained",
            via=TRAINCHECK),
    RealBug("module_left_out_of_optimizer",
            "https://github.com/ohhhyeahhh/SiamCAR/issues/18", "github-issue",
            "the optimizer's parameter groups list backbone and head but forget the extra `down` layer, which never trains",
            "add the `down` layer's parameters to the groups",
            p.module_left_out_of_optimizer_buggy, p.module_left_out_of_optimizer_fixed, "parameters not trained"),
    RealBug("scheduler_stepped_at_epoch_start",
            "https://github.com/michuanhaohao/reid-strong-baseline/issues/190", "github-issue",
            "WarmupMultiStepLR is stepped on EPOCH_STARTED, before optimizer.step(): the warm-up's first value is "
            "skipped and every epoch uses the next epoch's lr",
            "step it on EPOCH_COMPLETED",
            p.scheduler_stepped_at_epoch_start_buggy, p.scheduler_stepped_at_epoch_start_fixed, "lr schedule"),
    RealBug("running_loss_keeps_graph",
            "https://github.com/samuelyu2002/ImVisible/issues/2", "github-issue",
            "`running_loss += loss` accumulates the loss tensor, keeping every step's graph alive: memory grows",
            "`running_loss += loss.item()`",
            p.running_loss_keeps_graph_buggy, p.running_loss_keeps_graph_fixed, "resource leak"),
    RealBug("zero_init_multilayer",
            "https://github.com/tensorflow/tensorflow/issues/3916", "github-issue",
            "the softmax tutorial's all-zero initialisation kept for a 784-1000-10 sigmoid MLP: symmetric hidden units, "
            "no gradient for the first layer",
            "random initialisation (PyTorch's default)",
            p.zero_init_multilayer_buggy, p.zero_init_multilayer_fixed, "initialisation"),
    RealBug("dropout_keep_prob_as_p",
            "https://github.com/hassony2/kinetics_i3d_pytorch/issues/6", "github-issue",
            "TensorFlow's dropout_keep_prob=1 passed as torch.nn.Dropout's p (drop probability): every feature before "
            "the logits is dropped in training",
            "nn.Dropout(1 - dropout_keep_prob)",
            p.dropout_keep_prob_as_p_buggy, p.dropout_keep_prob_as_p_fixed, "ported hyperparameter convention"),
    RealBug("batchnorm_momentum_tf_convention",
            "https://github.com/kazuto1011/deeplab-pytorch/issues/79", "github-issue",
            "BatchNorm2d(momentum=0.999) in TensorFlow's convention: PyTorch's running statistics become the last "
            "batch's",
            "momentum=0.001",
            p.batchnorm_momentum_tf_convention_buggy, p.batchnorm_momentum_tf_convention_fixed,
            "ported hyperparameter convention"),
    RealBug("test_inputs_shuffled_labels_not",
            "https://github.com/dennybritz/cnn-text-classification-tf/issues/136", "github-issue",
            "evaluation shuffles the test inputs with np.random.permutation but keeps y_test in file order",
            "shuffle the labels with the same permutation (or do not shuffle)",
            p.test_inputs_shuffled_labels_not_buggy, p.test_inputs_shuffled_labels_not_fixed, "data loading"),
    RealBug("flatten_view_wrong_size",
            "https://github.com/qijiezhao/pseudo-3d-pytorch/issues/28", "github-issue",
            "x.view(-1, n) with the wrong feature count folds features into the batch: 'Expected input batch_size (128) "
            "to match target batch_size (64)'",
            "flatten with x.view(x.size(0), -1) and size the linear layer to match",
            p.flatten_view_wrong_size_buggy, p.flatten_view_wrong_size_fixed, "tensor shapes / dims"),
    RealBug("lambda_lr_returns_lr",
            "https://github.com/lhoyer/MIC/issues/60", "github-issue",
            "LambdaLR's lambda returns args.lr * decay although it is a factor on the base lr: the lr is multiplied "
            "twice (1e-4 instead of 1e-2)",
            "return only the decay factor",
            p.lambda_lr_returns_lr_buggy, p.lambda_lr_returns_lr_fixed, "lr schedule"),
    RealBug("optimizer_on_stale_model",
            "https://github.com/spro/practical-pytorch/issues/9", "github-issue",
            "the model is instantiated twice and the optimizer holds the first instance's parameters: the trained "
            "model never changes",
            "create the optimizer from the model that is trained",
            p.optimizer_on_stale_model_buggy, p.optimizer_on_stale_model_fixed, "parameters not trained"),
)


# ---------------------------------------------------------------- running the track

@dataclass(frozen=True)
class TrackRow:
    bug: RealBug
    buggy: dict[str, CheckResult]  # check name -> result
    fixed: dict[str, CheckResult]

    @staticmethod
    def _with(results: dict[str, CheckResult], verdict: Verdict) -> list[str]:
        return [name for name, r in results.items() if r.verdict is verdict]

    @property
    def buggy_fails(self) -> list[str]:
        return self._with(self.buggy, Verdict.FAIL)

    @property
    def fixed_fails(self) -> list[str]:
        return self._with(self.fixed, Verdict.FAIL)

    @property
    def caught(self) -> bool:
        """The buggy version got at least one FAIL."""
        return bool(self.buggy_fails)

    @property
    def false_fail(self) -> bool:
        """The fixed version got at least one FAIL."""
        return bool(self.fixed_fails)

    @property
    def caught_by_bug(self) -> list[str]:
        """Checks that FAIL on the buggy version and not on its fixed twin."""
        return [name for name in self.buggy_fails if name not in self.fixed_fails]

    @property
    def errors(self) -> tuple[list[str], list[str]]:
        return self._with(self.buggy, Verdict.ERROR), self._with(self.fixed, Verdict.ERROR)


def run_pipeline(factory: Factory, data: DataBundle, seed: int) -> dict[str, CheckResult]:
    torch.manual_seed(seed)
    pipeline = factory(TrainConfig(seed=seed), data)
    return {r.name: r for r in run_all(pipeline, gate=False)}


def run_track(data: DataBundle, seed: int = 0, bugs: tuple[RealBug, ...] = REAL_BUGS,
              on_row: Callable[[TrackRow], None] | None = None) -> list[TrackRow]:
    """Every check, gate off, on the buggy and the fixed version of every pair."""
    rows = []
    for bug in bugs:
        row = TrackRow(bug, run_pipeline(bug.buggy, data, seed), run_pipeline(bug.fixed, data, seed))
        rows.append(row)
        if on_row is not None:
            on_row(row)
    return rows


def summary(rows: list[TrackRow]) -> dict[str, int]:
    return {"pairs": len(rows), "caught": sum(r.caught for r in rows),
            "caught_by_bug": sum(bool(r.caught_by_bug) for r in rows),
            "false_fail": sum(r.false_fail for r in rows)}


def summary_lines(rows: list[TrackRow]) -> list[str]:
    s = summary(rows)
    n = s["pairs"]
    return [f"recall on buggy versions: {s['caught']}/{n} ({s['caught'] / n:.0%})",
            f"false-FAIL rate on fixed versions: {s['false_fail']}/{n} ({s['false_fail'] / n:.0%})",
            f"buggy versions with a FAIL their fixed twin does not have: {s['caught_by_bug']}/{n} "
            f"({s['caught_by_bug'] / n:.0%})"]


def misses_by_family(rows: list[TrackRow]) -> dict[str, list[str]]:
    """family -> names of its pairs whose buggy version got no FAIL the fixed twin does not also get."""
    missed: dict[str, list[str]] = {}
    for row in rows:
        if not row.caught_by_bug:
            missed.setdefault(row.bug.family, []).append(row.bug.name)
    return missed


def _fails(names: list[str]) -> str:
    return ", ".join(names) if names else "-"


def render_text(rows: list[TrackRow]) -> str:
    width = max(len(r.bug.name) for r in rows)
    lines = [f"{'pair':{width}}  caught  false FAIL  buggy FAILs (fixed FAILs)"]
    for r in rows:
        errors = [f"{kind} ERROR: {', '.join(names)}" for kind, names in zip(("buggy", "fixed"), r.errors) if names]
        lines.append(f"{r.bug.name:{width}}  {'yes' if r.caught else 'NO':6}  {'YES' if r.false_fail else 'no':10}  "
                     f"{_fails(r.buggy_fails)} ({_fails(r.fixed_fails)})" + (f"  [{'; '.join(errors)}]" if errors else ""))
    lines += [""] + summary_lines(rows) + ["", "misses (no FAIL beyond the fixed twin's), by family:"]
    lines += [f"- {family}: {', '.join(names)}" for family, names in misses_by_family(rows).items()] or ["- none"]
    return "\n".join(lines)


def render_markdown(rows: list[TrackRow]) -> str:
    lines = ["| pair | source | caught? | false FAIL? | checks that FAIL: buggy (fixed) |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| `{r.bug.name}` | [{_short(r.bug.source_url)}]({r.bug.source_url}) | "
                     f"{'yes' if r.caught else '**no**'} | {'**yes**' if r.false_fail else 'no'} | "
                     f"{_fails(r.buggy_fails)} ({_fails(r.fixed_fails)}) |")
    return "\n".join(lines + [""] + summary_lines(rows))


def _short(url: str) -> str:
    """github.com/owner/repo/issues/12 -> owner/repo#12; other hosts -> host + last path part."""
    parts = url.split("://", 1)[-1].rstrip("/").split("/")
    if parts[0] == "github.com" and len(parts) >= 5:
        return f"{parts[1]}/{parts[2]}#{parts[4]}"
    if parts[0] == "stackoverflow.com":
        return f"SO {parts[2]}"
    return f"{parts[0]} {parts[-1]}"


def _progress(row: TrackRow) -> None:
    print(f"  {row.bug.name}: buggy {_fails(row.buggy_fails)} | fixed {_fails(row.fixed_fails)}", flush=True)
    for kind, results in (("buggy", row.buggy), ("fixed", row.fixed)):
        for name, result in results.items():
            if result.verdict is Verdict.ERROR:
                print(f"    {kind} {name} ERROR: {result.message[:300]}", flush=True)


def main(argv: list[str] | None = None) -> int:
    import argparse
    import time

    parser = argparse.ArgumentParser(prog="python -m tests.realbugs", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--markdown", action="store_true", help="print the markdown table (for docs/realbugs.md)")
    parser.add_argument("--only", nargs="*", help="run only these pairs")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # tiny models: extra intra-op threads only add overhead on a shared 2-core box
    bugs = tuple(b for b in REAL_BUGS if not args.only or b.name in args.only)
    data = load_data("sample", download=False)
    started = time.perf_counter()
    rows = run_track(data, args.seed, bugs, on_row=_progress)
    print()
    print((render_markdown if args.markdown else render_text)(rows))
    print(f"\n{len(rows)} pairs, seed {args.seed}, {time.perf_counter() - started:.0f} s")
    return 0
