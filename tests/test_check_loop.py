"""check_loop on a plain PyTorch loop's own objects: pytorch/examples mnist/main.py's Net, Adadelta(lr=1.0),
StepLR(step_size=1, gamma=0.7) stepped per epoch, and DataLoaders over a Dataset applying ToTensor + Normalize
the way the script does, on the `sample` digits. Clean: PASS. One zoo bug planted in the user's objects:
that check's FAIL, raised as PreflightFailed. Loaders the checks cannot read: one line, before any check."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torch.optim as optim
from torch.optim.lr_scheduler import StepLR
from torch.utils.data import DataLoader, Dataset, IterableDataset
from torchvision import transforms

from checks import LoopVerdict, PreflightFailed, check_loop
from checks.engine.result import Verdict
from recipe.data import load_data
from recipe.loaders import LoaderError
from tests.pipelines.pytorch_examples_mnist import Net


class Digits(Dataset):
    """What datasets.MNIST(transform=...) gives in the script: (1, 28, 28) normalised tensors, int labels."""

    def __init__(self, split, labels=None):
        self.images, self.labels = split.images, split.labels if labels is None else labels
        self.transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))])

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.transform(self.images[i, 0].numpy()), int(self.labels[i])


@pytest.fixture(scope="module")
def sample():
    return load_data("sample", download=False)


def loaders(sample, train_labels=None, shuffle=True):
    return (DataLoader(Digits(sample.train, train_labels), batch_size=64, shuffle=shuffle),
            DataLoader(Digits(sample.val), batch_size=1000), DataLoader(Digits(sample.test), batch_size=1000))


def the_script(train, val, test, **overrides) -> LoopVerdict:
    """The script's objects, unchanged, handed to check_loop."""
    arguments = dict(test_loader=test, scheduler_factory=lambda opt: StepLR(opt, step_size=1, gamma=0.7),
                     scheduler_interval="epoch")
    arguments.update(overrides)
    return check_loop(lambda: Net(), lambda params: optim.Adadelta(params, lr=1.0), F.nll_loss, train, val,
                      **arguments)


def step_without_zero_grad(model, optimizer, loss_fn, x, y):
    loss = loss_fn(model(x), y)  # optimizer.zero_grad() forgotten: gradients add up across steps
    loss.backward()
    optimizer.step()
    return loss.detach()


class SoftmaxNet(Net):
    def forward(self, x):
        return F.softmax(super().forward(x), dim=1)  # probabilities, then cross_entropy log-softmaxes again


@pytest.mark.slow
def test_the_mnist_script_passes_and_writes_the_usual_report(sample, tmp_path):
    verdict = the_script(*loaders(sample), report_dir=tmp_path)
    assert verdict.passed, verdict.failure_line()
    assert verdict.complete and verdict.report.is_file()
    assert "read back into [0, 1] pixels" in verdict.pipeline.data.reason
    # the checks read the script's own Normalize constants off the batches
    assert verdict.result("normalisation_stats_source").details["applied_mean"] == pytest.approx([0.1307], abs=1e-4)


def test_the_model_sees_exactly_what_the_loader_gives(sample):
    train, val, test = loaders(sample)
    pipeline = the_script(train, val, test, only=["integrity"]).pipeline
    batch = next(pipeline.batches("val"))
    x, y = next(iter(val))
    assert torch.allclose(batch.x, x[:64], atol=1e-5) and torch.equal(batch.y, y[:64])
    assert pipeline.config.batch_size == 64 and pipeline.scheduler_interval == "epoch"


@pytest.mark.slow
@pytest.mark.parametrize("bug, check", [("no_zero_grad", "gradient_flow"), ("softmax_before_loss", "output_sanity"),
                                        ("labels_shuffled_in_dataset", "label_signal")])
def test_a_planted_zoo_bug_fails_its_check_and_stops_the_script(sample, bug, check):
    order = torch.randperm(len(sample.train), generator=torch.Generator().manual_seed(0))
    shuffled = sample.train.labels[order] if bug == "labels_shuffled_in_dataset" else None  # apart from the images
    train, val, test = loaders(sample, shuffled)
    overrides = {"only": [check]}
    if bug == "no_zero_grad":
        overrides["step"] = step_without_zero_grad
    if bug == "softmax_before_loss":
        overrides["loss_fn"] = F.cross_entropy
    model = SoftmaxNet if bug == "softmax_before_loss" else Net
    with pytest.raises(PreflightFailed) as raised:
        check_loop(lambda: model(), lambda params: optim.Adadelta(params, lr=1.0),
                   overrides.pop("loss_fn", F.nll_loss), train, val, test_loader=test, **overrides)
    assert raised.value.verdict.result(check).verdict is Verdict.FAIL
    assert f"/{check} FAIL" in str(raised.value) and "\n" not in str(raised.value)


def test_a_train_loader_that_never_shuffles_is_seen(sample):
    verdict = the_script(*loaders(sample, shuffle=False), only=["batch_sampling"], raise_on_fail=False)
    assert verdict.result("batch_sampling").verdict is Verdict.FAIL and not verdict.passed


class Stream(IterableDataset):
    def __iter__(self):
        yield from ((torch.zeros(1, 28, 28), 0) for _ in range(8))


@pytest.mark.parametrize("make, words", [  # streams and collate_fns that give (x, y) batches: tests/test_read_once.py
    (lambda t: DataLoader(t.dataset, batch_size=4, collate_fn=lambda items: items), "a list of (x, y) items"),
    (lambda t: DataLoader(Stream(), batch_size=4, collate_fn=lambda items: items), "a list of (x, y) items"),
    (lambda t: list(t), "DataLoader"),
])
def test_a_loader_the_checks_cannot_read_is_refused_in_one_line(sample, make, words):
    train, val, test = loaders(sample)
    with pytest.raises(LoaderError) as raised:
        the_script(make(train), val, test)
    assert words in str(raised.value) and "\n" not in str(raised.value)


@pytest.mark.parametrize("page_name", ["docs/usage.md", "README.md"])
def test_the_usage_example_runs_as_pasted(sample, tmp_path, monkeypatch, page_name):
    """The check_loop example of docs/usage.md and of the README, on the script's Net and loaders; a few checks instead of all,
    so it stays fast (the full preflight on these objects is the slow test above)."""
    import re
    from pathlib import Path

    import checks.integrations.loop as loop

    page = (Path(__file__).resolve().parents[1] / page_name).read_text()
    code = re.search(r"```python\n(.*?)```", re.split(r"\n#+ Your own training loop\n", page, maxsplit=1)[1], re.S).group(1)
    run = loop.run_preflight_on
    monkeypatch.setattr(loop, "run_preflight_on", lambda *a, **k: run(*a, **{**k, "only": ["label_pairing"]}))
    monkeypatch.chdir(tmp_path)
    train_loader, val_loader, _ = loaders(sample)
    scope = {"Net": Net, "train_loader": train_loader, "val_loader": val_loader}
    exec(compile(code, page_name, "exec"), scope)
    assert scope["verdict"].passed and scope["verdict"].report.is_file()
    assert scope["verdict"].pipeline.scheduler_interval == "epoch"


def test_feature_rows_and_token_ids_through_loaders_are_seen_as_the_model_gets_them():
    from torch import nn
    from torch.utils.data import TensorDataset

    rows = torch.randn(600, 5, generator=torch.Generator().manual_seed(0)) * 40 + 100  # never standardised
    labels = (rows[:, 0] > 100).long()
    train = DataLoader(TensorDataset(rows[:400], labels[:400]), batch_size=32, shuffle=True)
    val = DataLoader(TensorDataset(rows[400:], labels[400:]), batch_size=100)
    verdict = check_loop(lambda: nn.Linear(5, 2), lambda p: optim.Adam(p, 1e-2), F.cross_entropy, train, val,
                         only=["label_pairing", "input_normalisation"], gate=False, raise_on_fail=False)
    assert verdict.pipeline.kind == "features" and verdict.result("label_pairing").verdict is Verdict.PASS
    assert verdict.result("input_normalisation").verdict is Verdict.FAIL  # the rows reach the net raw, as given

    ids = torch.randint(0, 20, (300, 17), generator=torch.Generator().manual_seed(0))  # (N, T + 1) per item
    model = lambda: nn.Sequential(nn.Embedding(20, 16), nn.Linear(16, 20))  # noqa: E731
    loss = lambda out, y: F.cross_entropy(out.flatten(0, 1), y.flatten())  # noqa: E731
    verdict = check_loop(model, lambda p: optim.Adam(p, 1e-2), loss,
                         DataLoader(ids[:240], batch_size=16, shuffle=True), DataLoader(ids[240:], batch_size=16),
                         vocab=20, only=["token_range", "label_pairing"])
    assert verdict.pipeline.kind == "tokens" and verdict.passed
    with pytest.raises(LoaderError, match="vocab="):
        check_loop(model, optim.Adam, F.cross_entropy, DataLoader(ids, batch_size=16), DataLoader(ids, batch_size=16))
