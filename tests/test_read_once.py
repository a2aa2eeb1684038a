"""Loaders the checks cannot read by index (recipe/read_once.py): a stream, a custom collate_fn, a random
transform. Each is read once through the loader, the checks index that draw and say what it cannot show;
the model sees exactly what the loader gave. Bad twins: a stream sorted by class still FAILs
batch_sampling; labels mixed in the collate and a loader that raises are refused in one line."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torch.optim as optim
from torch.utils.data import DataLoader, IterableDataset
from torchvision import transforms

from checks import check_loop
from checks.engine.result import Verdict
from recipe.loaders import LoaderError, read_loaders
from recipe.read_once import MAX_READ
from tests.pipelines.pytorch_examples_mnist import Net
from tests.test_check_loop import Digits, loaders, sample  # noqa: F401 (the module-scoped fixture)


class DigitStream(IterableDataset):
    """The digits as a stream: in a shuffled order unless `by_class`, each as (1, 28, 28) normalised."""

    def __init__(self, split, by_class=False, seed=0):
        self.digits, self.by_class, self.seed = Digits(split), by_class, seed

    def __iter__(self):
        labels = self.digits.labels
        order = torch.argsort(labels, stable=True) if self.by_class else \
            torch.randperm(len(labels), generator=torch.Generator().manual_seed(self.seed))
        return (self.digits[i] for i in order.tolist())


class BatchedStream(DigitStream):
    """A stream that batches itself (webdataset style): DataLoader(batch_size=None) passes its batches on."""

    def __iter__(self):
        items = list(super().__iter__())
        for start in range(0, len(items), 50):
            chunk = items[start:start + 50]
            yield torch.stack([x for x, _ in chunk]), torch.tensor([y for _, y in chunk])


def as_dicts(items):
    """A collate_fn as Hugging Face-style scripts write one: a dict of stacked tensors."""
    return {"pixel_values": torch.stack([x for x, _ in items]), "labels": torch.tensor([y for _, y in items])}


def checked(train, val, test, only, **overrides):
    return check_loop(lambda: Net(), lambda params: optim.Adadelta(params, lr=1.0), F.nll_loss, train, val,
                      test_loader=test, only=only, gate=False, raise_on_fail=False, **overrides)


def seen_by_model(pipeline, split="train"):
    return torch.cat([batch.x for batch in pipeline.batches(split, shuffle=False)])


def test_a_stream_is_read_once_and_the_model_sees_what_it_streamed(sample):
    train = DataLoader(DigitStream(sample.train), batch_size=64)
    _, val, test = loaders(sample)
    verdict = checked(train, val, test, ["batch_sampling", "label_pairing", "loss_at_init"])
    assert verdict.passed, str(verdict.failing)
    assert ("train", "stream") in verdict.pipeline.data.read_once and "IterableDataset" in verdict.pipeline.data.reason
    assert "its own order" in verdict.result("batch_sampling").message
    streamed = torch.stack([x for x, _ in DigitStream(sample.train)])
    assert torch.allclose(seen_by_model(verdict.pipeline), streamed, atol=1e-5)


@pytest.mark.parametrize("make", [
    lambda s: DataLoader(DigitStream(s.train, by_class=True), batch_size=64),
    lambda s: DataLoader(BatchedStream(s.train, by_class=True), batch_size=None),
    lambda s: DataLoader(Digits(s.train), batch_size=64, shuffle=False, collate_fn=as_dicts),
])
def test_a_stream_sorted_by_class_still_fails_batch_sampling(sample, make):
    _, val, test = loaders(sample)
    verdict = checked(make(sample), val, test, ["batch_sampling"])
    assert verdict.result("batch_sampling").verdict is Verdict.FAIL
    assert "sorted by class" in verdict.result("batch_sampling").message


def test_a_stream_that_batches_itself_gives_its_batch_size(sample):
    view = read_loaders(DataLoader(BatchedStream(sample.train), batch_size=None), *loaders(sample)[1:])
    assert view.batch_size == 50 and len(view.data.train) == len(sample.train)


def test_a_collate_fn_is_read_through_and_its_batches_are_what_the_model_sees(sample):
    train = DataLoader(Digits(sample.train), batch_size=64, shuffle=True, collate_fn=as_dicts,
                       generator=torch.Generator().manual_seed(0))
    _, val, test = loaders(sample)
    verdict = checked(train, val, test, ["batch_sampling", "label_pairing"])
    assert verdict.passed, str(verdict.failing)
    assert verdict.pipeline.data.read_once == (("train", "collate"),)
    assert sorted(verdict.pipeline.data.train.labels.tolist()) == sorted(sample.train.labels.tolist())


def test_a_random_transform_is_read_once_and_augmentation_consistency_says_why_not(sample):
    class Augmented(Digits):
        def __init__(self, split):
            super().__init__(split)
            self.transform = transforms.Compose([transforms.ToTensor(), transforms.RandomCrop(28, padding=2),
                                                 transforms.Normalize((0.1307,), (0.3081,))])

    _, val, test = loaders(sample)
    train = DataLoader(Augmented(sample.train), batch_size=64, shuffle=True)
    verdict = checked(train, val, test, ["augmentation_consistency", "label_pairing", "loss_at_init"])
    assert verdict.passed, str(verdict.failing)
    assert verdict.pipeline.data.read_once == (("train", "random transform"),)
    augmentation = verdict.result("augmentation_consistency")
    assert augmentation.verdict is Verdict.NA and "random transform" in augmentation.message
    first, again = seen_by_model(verdict.pipeline)[:8], seen_by_model(verdict.pipeline)[:8]
    assert torch.equal(first, again)  # one draw, the same for every check


def test_a_stream_of_token_ids_needs_no_class_mixing(sample):
    class Ids(IterableDataset):
        def __init__(self, n, seed):
            self.ids = torch.randint(0, 20, (n, 17), generator=torch.Generator().manual_seed(seed))

        def __iter__(self):
            return iter(self.ids)

    from torch import nn

    model = lambda: nn.Sequential(nn.Embedding(20, 16), nn.Linear(16, 20))  # noqa: E731
    loss = lambda out, y: F.cross_entropy(out.flatten(0, 1), y.flatten())  # noqa: E731
    verdict = check_loop(model, lambda p: optim.Adam(p, 1e-2), loss, DataLoader(Ids(240, 0), batch_size=16),
                         DataLoader(Ids(60, 1), batch_size=16), vocab=20,
                         only=["token_range", "batch_sampling"], gate=False, raise_on_fail=False)
    assert verdict.pipeline.kind == "tokens" and verdict.passed
    assert verdict.result("batch_sampling").verdict is Verdict.NA


def test_labels_mixed_in_the_collate_are_refused_in_one_line(sample):
    def mixup(items):
        x, y = torch.stack([x for x, _ in items]), F.one_hot(torch.tensor([y for _, y in items]), 10).float()
        return 0.8 * x + 0.2 * x.flip(0), 0.8 * y + 0.2 * y.flip(0)

    _, val, test = loaders(sample)
    with pytest.raises(LoaderError) as raised:
        checked(DataLoader(Digits(sample.train), batch_size=64, collate_fn=mixup), val, test, ["label_pairing"])
    assert "soft labels" in str(raised.value) and "\n" not in str(raised.value)


def test_a_loader_that_raises_while_read_is_named_in_one_line(sample):
    class Broken(DigitStream):
        def __iter__(self):
            yield from list(super().__iter__())[:10]
            raise OSError("shard 3 is truncated")

    _, val, test = loaders(sample)
    with pytest.raises(LoaderError) as raised:
        checked(DataLoader(Broken(sample.train), batch_size=4), val, test, ["label_pairing"])
    assert "train loader raised OSError: shard 3 is truncated" in str(raised.value)
    assert "\n" not in str(raised.value)


def test_an_endless_stream_is_read_up_to_the_cap(sample, monkeypatch):
    import recipe.read_once as read_once

    class Endless(IterableDataset):
        def __iter__(self):
            digits, i = Digits(sample.train), 0
            while True:
                yield digits[i % len(digits)]
                i += 1

    monkeypatch.setattr(read_once, "MAX_READ", 500)
    view = read_loaders(DataLoader(Endless(), batch_size=64), *loaders(sample)[1:])
    assert len(view.data.train) == 500 and "first 500" in view.data.reason
    assert MAX_READ >= 50_000  # a real stream gets a real epoch's worth


def test_the_same_loaders_are_read_the_same_way_twice(sample):
    class UnseededStream(IterableDataset):  # shuffles with the global RNG, as many streams do
        def __init__(self, split):
            self.digits = Digits(split)

        def __iter__(self):
            return (self.digits[i] for i in torch.randperm(len(self.digits)).tolist())

    _, val, test = loaders(sample)
    for make in (lambda: DataLoader(UnseededStream(sample.train), batch_size=64),
                 lambda: DataLoader(Digits(sample.train), batch_size=64, shuffle=True, collate_fn=as_dicts)):
        first, second = (read_loaders(make(), val, test).data.train for _ in range(2))
        assert torch.equal(first.images, second.images) and torch.equal(first.labels, second.labels)


class ResizedCrops(Digits):
    """The textbook train transform: RandomResizedCrop + flip, then ToTensor and Normalize."""

    def __init__(self, split, flip_only=False):
        super().__init__(split)
        random = [transforms.RandomHorizontalFlip()] if flip_only else [
            transforms.RandomResizedCrop(28, scale=(0.8, 1.0), antialias=True), transforms.RandomHorizontalFlip()]
        self.transform = transforms.Compose([transforms.ToTensor(), *random,
                                             transforms.Normalize((0.1307,), (0.3081,))])


def test_an_augmented_train_split_is_not_a_shifted_distribution(sample):
    """One draw of RandomResizedCrop smooths the pixels a probe reads (a new user's shapes: AUC 0.77-0.84 for
    train vs val, limit 0.74): split_shift then compares val with test, both as the model is graded on."""
    _, val, test = loaders(sample)
    verdict = checked(DataLoader(ResizedCrops(sample.train), batch_size=64, shuffle=True), val, test,
                      ["split_shift"])
    shift = verdict.result("split_shift")
    assert shift.verdict is not Verdict.FAIL, shift.message
    assert set(shift.details["auc"]) == {"test"} and "train is left out" in shift.message


def test_a_coin_flip_augmentation_is_seen_and_read_the_same_way_every_run(sample):
    _, val, test = loaders(sample)
    views = [read_loaders(DataLoader(ResizedCrops(sample.train, flip_only=True), batch_size=64), val, test)
             for _ in range(2)]
    assert all(view.data.read_once == (("train", "random transform"),) for view in views)
    assert torch.equal(views[0].data.train.images, views[1].data.train.images)


def test_with_an_augmented_train_a_shifted_val_still_fails(sample):
    class Brightened(Digits):
        def __init__(self, split):
            super().__init__(split)
            self.transform = transforms.Compose([transforms.ToTensor(), transforms.Lambda(lambda x: x ** 0.5),
                                                 transforms.Normalize((0.1307,), (0.3081,))])

    _, _, test = loaders(sample)
    verdict = checked(DataLoader(ResizedCrops(sample.train), batch_size=64, shuffle=True),
                      DataLoader(Brightened(sample.val), batch_size=1000), test, ["split_shift"])
    assert verdict.result("split_shift").verdict is Verdict.FAIL, verdict.result("split_shift").message
