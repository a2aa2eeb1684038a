"""The rank checks: are the N processes of a distributed run training one model on one data set?

Pure functions that judge the `RankRecord` every rank gathered while it trained (recipe/ranks.py),
the way the training monitors judge their log: not in the preflight registry, stage "distributed".
Each catches a distributed bug that fails silently (the run trains, the loss falls, and it is wrong):

- `batch_counts_equal`: a rank that takes fewer steps leaves the others waiting in an all-reduce
  forever (a rank-dependent drop_last, a hand-made split of the data). Measured before training.
- `shares_disjoint_and_covering`: a sampler that gives every rank the whole data set (no
  DistributedSampler: N times the compute for one epoch of data), or orders that differ per rank
  (a permutation drawn from the global RNG, seeded per rank, instead of the epoch's generator).
- `weights_identical`: ranks whose weights drift apart (a rank seeded differently and never
  broadcast, weights loaded on one rank after DDP wrapped the model, a rank-dependent lr).
- `gradients_synchronised`: a step that bypasses DDP's backward hooks (`model.module(x)`, a gradient
  written by hand, `no_sync()` left on), so each rank steps with its own gradient.

A rank check that FAILs has already stopped training on every rank (recipe/ranks.py); the report
says why. `judge_ranks(record)` runs them all; `distributed_block` is what results.json keeps.
"""
from __future__ import annotations

from checks.engine.result import CheckResult, Verdict, measured, not_applicable
from checks.engine.runner import run_check

STAGE = "distributed"
BUILT = "built by make_model"  # recipe.ranks.BUILT: the weights before DDP broadcast rank 0's


def _differing(values: list) -> list[int]:
    return [rank for rank, value in enumerate(values) if value != values[0]]


def batch_counts_equal(record: dict) -> CheckResult:
    """max - min of the train batches each rank takes in an epoch (compared before the first step)."""
    counts = record.get("batch_counts") or []
    if not counts:
        return not_applicable("batch_counts_equal", STAGE, "the ranks' batches were not counted")
    spread = max(counts) - min(counts)
    per_rank = ", ".join(f"rank {r}: {c}" for r, c in enumerate(counts))
    return measured(
        "batch_counts_equal", STAGE, spread, 0, "<=",
        f"every rank takes {counts[0]} batches an epoch ({record.get('expected_batches')} expected), so every "
        "all-reduce has all its ranks.",
        f"the ranks would take different numbers of batches in an epoch ({per_rank}): the rank that runs out "
        "first stops calling all-reduce and the others wait for it forever, so training did not start. Likely "
        "causes: a hand-made split of the data by rank whose sizes differ, or drop_last on some ranks only; "
        "shard with DistributedSampler (padding to equal shares), or recipe's own sharding.",
        details={"batch_counts": counts, "expected_batches": record.get("expected_batches")})


def shares_disjoint_and_covering(record: dict) -> CheckResult:
    """Train examples no rank drew, plus draws repeated beyond DistributedSampler's padding (N - 1)."""
    drawn = record.get("drawn") or []
    if not drawn:
        return not_applicable("shares_disjoint_and_covering", STAGE, "the ranks' shares were not gathered")
    examples, repeats, missing = record["examples"], record["repeats"], record["missing"]
    allowed = record["padding_allowed"]
    excess = max(0, repeats - allowed)
    shares = ", ".join(f"rank {r}: {n}" for r, n in enumerate(drawn))
    return measured(
        "shares_disjoint_and_covering", STAGE, missing + excess, 0, "<=",
        f"in the first epoch the ranks drew disjoint shares of the {examples} train examples ({shares}) that "
        f"together cover all of them ({repeats} drawn twice as padding, at most {allowed} allowed).",
        f"in the first epoch the ranks' shares ({shares}) left {missing} of the {examples} train examples undrawn "
        f"and repeated {repeats} draws ({allowed} allowed as padding), so training did not start. Likely causes: "
        "every rank reads the whole data set (no DistributedSampler), or each rank shuffles with its own seed "
        "(draw the order from the `generator` the batches get: the same on every rank, reseeded per epoch).",
        details={"examples": examples, "drawn": drawn, "repeats": repeats, "missing": missing,
                 "padding_allowed": allowed})


def weights_identical(record: dict) -> CheckResult:
    """The most ranks whose weights differ from rank 0's at any comparison (first step, after k steps, every
    epoch's end). WARN when only the weights the ranks *built* differed: DDP broadcast rank 0's at the start."""
    points = record.get("weights") or []
    trained = [p for p in points if p["when"] != BUILT]
    if not trained:
        return not_applicable("weights_identical", STAGE, "training stopped before its first step")
    worst = max(trained, key=lambda p: len(_differing(p["hashes"])))
    apart = _differing(worst["hashes"])
    built = next((_differing(p["hashes"]) for p in points if p["when"] == BUILT), [])
    compared = ", ".join(p["when"] for p in trained)
    details = {"compared": [{"when": p["when"], "ranks_differing_from_rank_0": _differing(p["hashes"])}
                            for p in points]}
    result = measured(
        "weights_identical", STAGE, len(apart), 0, "<=",
        f"the weights were bit-identical on all {record['processes']} ranks each time they were compared "
        f"({compared}).",
        f"the weights of rank(s) {apart} differ from rank 0's {worst['when']}, so the ranks train different "
        "models and what rank 0 saves is not what they learnt together; training stopped. Likely causes: a rank "
        "seeded differently whose weights were never broadcast (DDP with init_sync=False), weights initialised "
        "or loaded on one rank after DDP wrapped the model, an optimizer or lr that depends on the rank, or "
        "gradients that were not averaged (see gradients_synchronised).",
        details=details)
    if result.verdict is Verdict.PASS and built:
        result.verdict = Verdict.WARN
        result.message = (f"rank(s) {built} built different weights than rank 0 (make_model depends on the rank: "
                          "seeded with it?). DDP broadcast rank 0's at the start, so the weights then stayed "
                          f"identical ({compared}); but whatever else that seed drives differs per rank.")
    return result


def gradients_synchronised(record: dict) -> CheckResult:
    """Ranks whose gradient after the k-th step differs from rank 0's (DDP averages them: identical bits)."""
    grads = record.get("grads")
    if not grads:
        return not_applicable("gradients_synchronised", STAGE, "training stopped before the gradients were compared")
    hashes, norms = grads["hashes"], grads["norms"]
    if all(h is None for h in hashes):
        return not_applicable("gradients_synchronised", STAGE, "the train step leaves no .grad after it steps "
                              "(it clears them), so there was nothing to compare")
    apart = _differing(hashes)
    shown = ", ".join(f"rank {r}: {n:.4g}" if n is not None else f"rank {r}: none" for r, n in enumerate(norms))
    return measured(
        "gradients_synchronised", STAGE, len(apart), 0, "<=",
        f"after step {grads['after_step']} every rank held the same averaged gradient (norm {shown}).",
        f"after step {grads['after_step']} the gradients of rank(s) {apart} differ from rank 0's (norm {shown}): "
        "each rank stepped with its own gradient, so training stopped. Likely causes: a step that calls "
        "`model.module(x)` instead of `model(x)` (DDP's hooks never run), a gradient computed by hand and "
        "written to .grad, or backward inside `model.no_sync()` with no synchronising step after it.",
        details={"after_step": grads["after_step"], "grad_norms": norms})


RANK_CHECKS = (batch_counts_equal, shares_disjoint_and_covering, weights_identical, gradients_synchronised)


def judge_ranks(record: dict) -> list[CheckResult]:
    """Every rank check on one run's record, in order (a crashing one becomes ERROR)."""
    return [run_check(check, record, STAGE) for check in RANK_CHECKS]


def distributed_block(record: dict) -> dict:
    """results.json's training.distributed: how many processes trained, how, and the rank checks."""
    return {"processes": record["processes"], "backend": record["backend"], "launcher": record["launcher"],
            "stopped": record.get("stopped"), "checks": [r.to_json() for r in judge_ranks(record)]}
