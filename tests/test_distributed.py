"""Training on several processes (issue 15, part 2): sharding like DistributedSampler, the rank checks
on their twins (tests/zoo/ranks.py), equivalence with one process, and `recipe train --nproc 2`,
`--resume` and torchrun end to end. Everything runs on the CPU with gloo."""
from __future__ import annotations

import io
import json
import subprocess
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.multiprocessing as mp
from torch.utils.data import DistributedSampler

from checks.training.distributed_checks import judge_ranks
from checks.engine.result import Verdict, holds
from recipe import sources
from checks.cli.main import main
from recipe.config import TrainConfig
from recipe.data import Batch
from recipe.distributed import world_of
from recipe.errors import RecipeError
from recipe.pipeline import default_pipeline
from recipe.ranks import RankBatches, World, shard_batches
from recipe.train import CHECKPOINT_NAME, fit, seed_epoch
from tests.conftest import PYTHON, REPO_ROOT, subprocess_env
from tests.test_cli_gate import UNNORMALISED
from tests.zoo.ranks import SCENARIOS, run_scenarios

TIMEOUT_S = 90.0  # a rank that waits longer for the others fails instead of hanging the suite
QUICK = ["linear", "linear_sgd", "nan_on_rank_1",  # the equivalence runs and a non-finite loss on one rank
         "drop_last_on_rank_1", "whole_data_on_every_rank", "seeded_by_rank_not_broadcast", "forward_through_module"]


# ---------------------------------------------------------------- sharding, without processes

def _global_batches(n: int, batch_size: int, order: torch.Tensor):
    for start in range(0, n, batch_size):
        idx = order[start:start + batch_size]
        yield Batch(idx.float()[:, None], idx % 10, idx)


@pytest.mark.parametrize("n, size, per_rank", [(10, 2, 2), (11, 2, 2), (20, 3, 2), (7, 4, 1), (3, 4, 1)])
def test_each_rank_takes_what_distributed_sampler_would_give_it(n, size, per_rank):
    """DistributedSampler(drop_last=False) over the epoch's order, batched by batch_size / N: same examples,
    same batches, same padding; the shares are disjoint but for the padding, and cover the split."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(n))
    for rank in range(size):
        mine = [b.idx.tolist() for b in shard_batches(_global_batches(n, per_rank * size, order), rank, size)]
        positions = list(DistributedSampler(range(n), num_replicas=size, rank=rank, shuffle=False))
        expected = order[positions].tolist()
        assert mine == [expected[i:i + per_rank] for i in range(0, len(expected), per_rank)]
    drawn = [i for r in range(size) for b in shard_batches(_global_batches(n, per_rank * size, order), r, size)
             for i in b.idx.tolist()]
    assert sorted(set(drawn)) == list(range(n)) and len(drawn) - n == -n % size


def test_every_rank_draws_the_epochs_order_but_augments_with_its_own_seed():
    def batches(split, *, shuffle=False, augment=False, generator=None):
        order = torch.randperm(8, generator=generator)
        yield Batch(torch.rand(8, 1), order % 2, order)  # rand: what augmentation draws from the global RNG

    def draw(rank: int, epoch: int) -> Batch:
        return next(RankBatches(batches, World(rank, 2, "gloo"))("train", shuffle=True, generator=seed_epoch(0, epoch)))

    rank0, rank1 = draw(0, 0), draw(1, 0)
    assert set(rank0.idx.tolist()).isdisjoint(rank1.idx.tolist())                  # one permutation, split
    assert not torch.equal(rank0.x, rank1.x[: len(rank0.x)])                        # augmentation differs per rank
    assert torch.equal(draw(1, 0).x, rank1.x)                                       # and is reproducible (resume)
    assert draw(1, 1).idx.tolist() != rank1.idx.tolist()                            # set_epoch: a new order
    whole = next(RankBatches(batches, World(1, 2, "gloo"))("val", shuffle=False))
    assert len(whole.y) == 8                                                         # evaluation is not sharded


# ---------------------------------------------------------------- launch arguments

def _args(**values):
    defaults = {"command": "train", "nproc": 1, "batch_size": 64, "device": "cpu"}
    return SimpleNamespace(**{**defaults, **values})


def test_world_of_reads_nproc_and_the_torchrun_environment(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "RECIPE_LAUNCHER"):
        monkeypatch.delenv(name, raising=False)
    assert world_of(_args()) is None
    assert world_of(_args(nproc=2)) == World(0, 2, "gloo", "recipe --nproc", 0)
    with pytest.raises(RecipeError, match="must divide evenly by the 3 processes"):
        world_of(_args(nproc=3))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert world_of(_args()) == World(1, 2, "gloo", "torchrun", 1)
    with pytest.raises(RecipeError, match="leave --nproc out"):
        world_of(_args(nproc=4))
    with pytest.raises(RecipeError, match="runs in one process"):
        world_of(_args(command="check"))


# ---------------------------------------------------------------- the twins, on two processes

def _spawn(tmp_path: Path, data, names: list[str]) -> dict[str, list[dict]]:
    # fork, not spawn: the ranks start from this process's imports (seconds less each); the CLI spawns
    mp.start_processes(run_scenarios, args=(2, str(tmp_path / "store"), data, names, str(tmp_path), TIMEOUT_S),
                       nprocs=2, start_method="fork")
    return {name: [torch.load(tmp_path / f"{name}.rank{r}.pt", weights_only=False) for r in range(2)]
            for name in names}


@pytest.fixture(scope="module")
def quick_runs(tmp_path_factory, sample_data):
    return _spawn(tmp_path_factory.mktemp("ranks"), sample_data, QUICK)


@pytest.fixture(scope="module")
def all_runs(tmp_path_factory, sample_data):
    return _spawn(tmp_path_factory.mktemp("ranks"), sample_data, [n for n in SCENARIOS if n not in QUICK])


def _assert_judged_as_planned(name: str, ranks: list[dict]) -> None:
    scenario = SCENARIOS[name]
    assert ranks[0]["record"] == ranks[1]["record"]  # gathered: every rank knows what every rank measured
    results = judge_ranks(ranks[0]["record"])
    for r in results:  # value, comparison and threshold agree with the verdict (as tests/test_verdicts.py asks)
        if r.verdict in (Verdict.PASS, Verdict.WARN, Verdict.FAIL):
            assert holds(r.value, r.comparison, r.threshold) != r.verdict.blocks, r
        else:
            assert r.verdict is Verdict.NA and r.value is None, r
    verdicts = {r.name: r.verdict for r in results}
    if scenario.fails:
        assert verdicts[scenario.fails] is Verdict.FAIL, verdicts
        assert all(r["stopped"] and r["stopped"].startswith("rank checks:") for r in ranks)  # all stopped, none hung
    else:
        assert not any(v.blocks for v in verdicts.values()), verdicts
        assert verdicts["weights_identical"] is (Verdict.WARN if scenario.warns else Verdict.PASS)


@pytest.mark.parametrize("name", [n for n in QUICK if n != "nan_on_rank_1"])
@pytest.mark.slow
def test_rank_checks_on_one_twin_of_each_kind_and_a_clean_run(quick_runs, name):
    _assert_judged_as_planned(name, quick_runs[name])


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in SCENARIOS if n not in QUICK])
def test_rank_checks_on_every_twin_and_the_valid_configurations(all_runs, name):
    _assert_judged_as_planned(name, all_runs[name])


def test_a_loss_gone_non_finite_on_one_rank_stops_every_rank(quick_runs):
    stopped = [r["stopped"] for r in quick_runs["nan_on_rank_1"]]
    assert stopped[0] == stopped[1] and "non-finite on rank(s) [1] in epoch 1" in stopped[0]


@pytest.mark.parametrize("name, optimizer", [("linear", "adam"), ("linear_sgd", "sgd")])
def test_two_processes_train_what_one_process_trains_on_the_same_global_batch(quick_runs, sample_data, name,
                                                                                optimizer):
    """N = 2, 32 rows each, against one process with the batch of 64: after one epoch (55 steps with the
    cosine schedule) the weights agree to float rounding (measured: 4e-8 at most, weights up to 0.03, with
    Adam); the two ranks agree bit for bit."""
    ranks = quick_runs[name]
    assert ranks[0]["stopped"] is None and len(ranks[0]["history"]) == 1
    alone = fit(default_pipeline(TrainConfig(epochs=1, optimizer=optimizer), sample_data), quiet=True).model
    for key, weights in alone.state_dict().items():
        assert torch.equal(ranks[0]["state"][key], ranks[1]["state"][key])
        torch.testing.assert_close(ranks[0]["state"][key], weights, rtol=1e-5, atol=5e-7)
    assert ranks[0]["state"]["fc.weight"].abs().max() > 1e-2  # it trained: zero-initialised weights moved


# ---------------------------------------------------------------- the command

SAMPLE = ["--data", "sample", "--no-download", "--quiet"]


@pytest.mark.slow
def test_a_refused_preflight_starts_no_other_process(tmp_path, monkeypatch, fast_sample, capsys):
    (tmp_path / "unnormalised.py").write_text(UNNORMALISED)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(mp, "start_processes", lambda *a, **k: pytest.fail("a rank was started"))
    assert main(["train", "--nproc", "2", "--pipeline", "unnormalised.py:build", *SAMPLE, "--epochs", "1"]) == 1
    assert "the preflight FAILED, so training will not start" in capsys.readouterr().err


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory, sample_raw):
    """`recipe train --nproc 2` (the preflight, then one epoch on two processes), then `--resume` to 2 epochs."""
    report_dir = tmp_path_factory.mktemp("reports")
    out = report_dir / "run"
    codes, err = [], io.StringIO()
    with pytest.MonkeyPatch.context() as patch, redirect_stdout(io.StringIO()), redirect_stderr(err):
        patch.setattr(sources, "read_sample_csv", lambda path: sample_raw)
        for more in (["--epochs", "1"], ["--epochs", "2", "--resume"]):
            codes.append(main(["train", "--nproc", "2", *SAMPLE, "--report-dir", str(report_dir), "--out", str(out),
                               *more]))
    return codes, err.getvalue(), out, report_dir


@pytest.mark.slow
def test_recipe_train_nproc_2_trains_checks_the_ranks_and_resumes(two_process_run):
    codes, err, out, _ = two_process_run
    assert codes == [0, 0], err
    record = json.loads((out / "results.json").read_text())
    block = record["training"]["distributed"]
    assert (block["processes"], block["backend"], block["launcher"]) == (2, "gloo", "recipe --nproc")
    assert {c["name"]: c["verdict"] for c in block["checks"]} == {
        "batch_counts_equal": "PASS", "shares_disjoint_and_covering": "PASS", "weights_identical": "PASS",
        "gradients_synchronised": "PASS"}
    assert [row["epoch"] for row in record["training"]["epochs"]] == [1, 2]  # resumed on two processes
    assert "Trained on 2 processes with torch.distributed" in (out / "index.html").read_text()
    state = torch.load(out / CHECKPOINT_NAME, weights_only=True)
    assert state["epochs_done"] == 2
    from recipe.model import LinearClassifier

    LinearClassifier(10, 784).load_state_dict(state["model"])  # one process loads it: no `module.` prefix


@pytest.mark.slow
def test_torchrun_runs_the_same_command(two_process_run, tmp_path):
    """`torchrun --nproc-per-node 2 -m checks.cli train`: rank 0 reuses the preflight (same fingerprint) and
    broadcasts the plan; only rank 0 writes the run."""
    report_dir = two_process_run[3]
    command = [PYTHON, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m", "checks.cli", "train", *SAMPLE,
               "--epochs", "1", "--report-dir", str(report_dir), "--out", str(tmp_path / "run")]
    done = subprocess.run(command, cwd=REPO_ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    block = json.loads((tmp_path / "run" / "results.json").read_text())["training"]["distributed"]
    assert (block["processes"], block["launcher"]) == (2, "torchrun")
    assert all(c["verdict"] == "PASS" for c in block["checks"])


@pytest.mark.slow
def test_python_m_recipe_is_the_command():
    done = subprocess.run([PYTHON, "-m", "checks.cli", "train", "--help"], cwd=REPO_ROOT, env=subprocess_env(),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "--nproc" in done.stdout


def test_the_usage_page_lists_every_rank_check_in_order():
    from checks.training.distributed_checks import RANK_CHECKS

    section = (REPO_ROOT / "docs" / "usage.md").read_text().split("## Training on several processes", 1)[1].split("\n## ", 1)[0]
    table = section.split("| rank check |", 1)[1].split("\n\n", 1)[0]
    rows = [line.split("|")[1].strip().strip("`") for line in table.splitlines() if line.startswith("| `")]
    assert rows == [check.__name__ for check in RANK_CHECKS]
