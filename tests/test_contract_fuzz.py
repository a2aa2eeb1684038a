"""The Pipeline contract, fuzzed: every way users commonly write a pipeline is either supported (all
checks run, none ERRORs) or refused before any check runs, in one line naming the contract.

Each example builds a pipeline from the user's own Datasets (tuples or dicts), with NormStats as a
float, a list, a numpy array or a tensor of any per-channel shape, labels in int32/uint8/int64, a
model that returns a tensor, a tuple, a list, a dict or an object with `.logits` (plain,
parametrized, weight-normed or compiled), and a step returning the loss in some form. The data are
tiny synthetic images, so the whole file runs in well under a minute.
"""
from __future__ import annotations

import dataclasses
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from checks import run_all
from checks.engine.registry import CHECKS
from checks.engine.result import Verdict
from recipe.config import TrainConfig
from recipe.data import DataBundle, NormStats, TensorBatches, norm_stats
from recipe.datasets import bundle_from_datasets
from recipe.errors import DataError, RecipeError
from recipe.outputs import forward_logits
from recipe.pipeline import Pipeline, build_pipeline

N_CLASSES, SIZE = 4, 6  # 4 classes of 6x6 images: enough for every check to have something to judge
# derandomize: the same examples on every run and machine, so a failure here is never a flake
FUZZ = settings(derandomize=True, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


class ListDataset(torch.utils.data.Dataset):
    """A user's map-style Dataset over examples held in a list."""

    def __init__(self, items: list):
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        return self.items[i]


def synthetic_bundle(channels: int, as_dicts: bool, label_dtype: torch.dtype, seed: int = 0) -> DataBundle:
    """Each class a bright square in its own corner on noise, read through bundle_from_datasets."""
    generator = torch.Generator().manual_seed(seed)

    def split(n_per_class: int) -> ListDataset:
        items = []
        for c in range(N_CLASSES):
            for _ in range(n_per_class):
                image = torch.randint(0, 120, (channels, SIZE, SIZE), generator=generator, dtype=torch.uint8)
                row, col = divmod(c, 2)
                image[:, row * 3:row * 3 + 3, col * 3:col * 3 + 3] += 120
                label = torch.tensor(c, dtype=label_dtype)
                items.append({"image": image, "label": label} if as_dicts else (image, label))
        return ListDataset(items)

    return bundle_from_datasets(split(40), split(10), class_names=[f"corner {c}" for c in range(N_CLASSES)])


# ---------------------------------------------------------------- what users' models return

@dataclass
class ClassifierOutput:
    """An HF-style output object: the logits as a field beside other things."""
    logits: torch.Tensor
    hidden: torch.Tensor | None = None


class ModelOutputDict(OrderedDict):
    """Like transformers' ModelOutput: a mapping whose entries are also attributes."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


WRAPS = {
    "tensor": lambda z, h: z,
    "tuple": lambda z, h: (z, h),
    "list": lambda z, h: [z, h],
    "dict": lambda z, h: {"logits": z, "hidden": h},
    "dataclass": lambda z, h: ClassifierOutput(z, h),
    "model-output": lambda z, h: ModelOutputDict(logits=z, hidden_states=h),
}
REFUSED_WRAPS = {  # outputs with no unambiguous logits
    "dict-without-logits": lambda z, h: {"scores": z, "hidden": h},
    "tuple-hidden-first": lambda z, h: (None, z),
}


class SmallNet(nn.Module):
    """Conv features, then a linear head; `forward` returns the logits wrapped as `wrap` says."""

    def __init__(self, channels: int, wrap: str):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(channels, 8, 3, padding=1), nn.ReLU(), nn.Flatten())
        self.head = nn.Linear(8 * SIZE * SIZE, N_CLASSES)
        self.wrap = wrap

    def forward(self, x: torch.Tensor):
        hidden = self.features(x)
        return {**WRAPS, **REFUSED_WRAPS}[self.wrap](self.head(hidden), hidden)


class Scaled(nn.Module):
    """A parametrization: the stored weight, scaled (so the parametrized weight differs from it)."""

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * 0.5


def model_factory(channels: int, wrap: str, form: str, device: torch.device):
    def make_model() -> nn.Module:
        model = SmallNet(channels, wrap)
        if form == "parametrized":
            nn.utils.parametrize.register_parametrization(model.head, "weight", Scaled())
        elif form == "weight-norm":
            nn.utils.parametrizations.weight_norm(model.head)
        elif form == "compiled":
            return torch.compile(model.to(device), backend="eager")
        return model.to(device)
    return make_model


# ---------------------------------------------------------------- what users' steps return

STEP_RETURNS = ("tensor", "undetached", "float64", "shape-1", "on-cpu")


def step_returning(kind: str):
    """The default step with the loss handed back as `kind` says; "python-float" (`loss.item()`) is
    the one fit's contract refuses."""
    def step(model, optimizer, loss_fn, x, y):
        optimizer.zero_grad()
        loss = loss_fn(forward_logits(model, x), y)
        loss.backward()
        optimizer.step()
        return {"tensor": loss.detach(), "undetached": loss, "float64": loss.detach().double(),
                "shape-1": loss.detach().reshape(1), "on-cpu": loss.detach().cpu(),
                "python-float": loss.item()}[kind]
    return step


def norm_value(values: list[float], form: str):
    """`values` (one per channel) written the way `form` says users write them."""
    if form == "float":
        return values[0] if len(values) == 1 else values
    if form == "list":
        return list(values)
    if form == "tuple":
        return tuple(values)
    if form == "numpy":
        return np.asarray(values, dtype=np.float64)
    shapes = {"tensor-c": (-1,), "tensor-c11": (-1, 1, 1), "tensor-1c11": (1, -1, 1, 1), "tensor-1c": (1, -1)}
    return torch.tensor(values).reshape(shapes[form])


NORM_FORMS = ("one-float", "float", "list", "tuple", "numpy", "tensor-c", "tensor-c11", "tensor-1c11", "tensor-1c")


def norm_as_written(data: DataBundle, form: str) -> NormStats:
    measured = norm_stats(data.train, data.value_range)
    mean, std = measured.mean.flatten().tolist(), measured.std.flatten().tolist()
    if form == "one-float":  # one value for every channel, as NormStats(mean=0.5, std=0.25)
        return NormStats(mean=float(np.mean(mean)), std=float(np.mean(std)), value_range=data.value_range)
    return NormStats(mean=norm_value(mean, form), std=norm_value(std, form), value_range=data.value_range)


def tuple_batches(batches):
    """A batch function yielding (x, y) tuples, as a DataLoader does: no idx to trace examples by."""
    def tuples(split, **options):
        for batch in batches(split, **options):
            yield batch.x, batch.y
    return tuples


def contract_pipeline(case: dict) -> Pipeline:
    data = synthetic_bundle(case["channels"], case["dict_items"], case["label_dtype"])
    config = TrainConfig(epochs=2, batch_size=32)
    norm = norm_as_written(data, case["norm"])
    batches = TensorBatches(data, norm, config.batch_size)
    clean = build_pipeline("fuzzed", config, data, lambda **sizes: SmallNet(case["channels"], "tensor"))
    return dataclasses.replace(
        clean, norm=norm, batches=tuple_batches(batches) if case["tuple_batches"] else batches,
        make_model=model_factory(case["channels"], case["output"], case["model"], clean.device),
        train_step=step_returning(case["step"]))


def cases(output=st.sampled_from(sorted(WRAPS)), step=st.sampled_from(STEP_RETURNS), tuple_batches=st.just(False)):
    return st.fixed_dictionaries({
        "channels": st.sampled_from((1, 3)), "dict_items": st.booleans(),
        "label_dtype": st.sampled_from((torch.int64, torch.int32, torch.uint8)),
        "norm": st.sampled_from(NORM_FORMS), "output": output,
        "model": st.sampled_from(("plain", "parametrized", "weight-norm", "compiled")),
        "step": step, "tuple_batches": tuple_batches})


REFUSED = st.one_of(cases(step=st.just("python-float")), cases(tuple_batches=st.just(True)),
                    cases(output=st.sampled_from(sorted(REFUSED_WRAPS))))


@settings(FUZZ, max_examples=16)  # ~1 s each: covers every output form, model form, step return and NormStats form
@given(cases())
@pytest.mark.slow
def test_a_supported_pipeline_runs_every_check_and_none_errors(case):
    pipeline = contract_pipeline(case)
    torch.manual_seed(0)
    results = run_all(pipeline)
    errors = [f"{r.name}: {r.message}" for r in results if r.verdict is Verdict.ERROR]
    assert not errors, f"{case}:\n" + "\n".join(errors)
    assert len(results) == len(CHECKS)


@settings(FUZZ, max_examples=8)
@given(REFUSED)
def test_a_pipeline_breaking_the_contract_is_refused_in_one_line_before_any_check(case):
    pipeline = contract_pipeline(case)
    started = []
    with pytest.raises(RecipeError) as refusal:
        run_all(pipeline, on_start=lambda name, stage: started.append(name))
    message = str(refusal.value)
    assert started == [], f"{case}: checks ran before the refusal"
    assert "\n" not in message and any(part in message for part in CONTRACT_PARTS), message


CONTRACT_PARTS = ("Pipeline.batches", "the model returned", "the train step")


# ---------------------------------------------------------------- plain regressions

def test_float_norm_stats_no_longer_crash_the_checks_that_undo_normalisation(sample_data):
    """NormStats(mean=0.1307, std=0.3081), as users write it for MNIST, made these two ERROR with
    "'float' object has no attribute 'to'"."""
    clean = build_pipeline("floats", TrainConfig(), sample_data, lambda **sizes: nn.Sequential(
        nn.Flatten(), nn.Linear(sizes["in_features"], sizes["num_classes"])))
    norm = NormStats(mean=0.1307, std=0.3081)
    pipeline = dataclasses.replace(clean, norm=norm, batches=TensorBatches(sample_data, norm, clean.config.batch_size))
    results = run_all(pipeline, only={"what_goes_into_the_net", "label_pairing"})
    assert [r.verdict for r in results] == [Verdict.PASS, Verdict.PASS], [r.message for r in results]


@pytest.mark.parametrize("form", NORM_FORMS[1:])
def test_norm_stats_written_any_per_channel_way_hold_one_form(form):
    values = [0.1, 0.2, 0.3]
    stats = NormStats(mean=norm_value(values, form), std=norm_value(values, form))
    assert stats.mean.shape == stats.std.shape == (3, 1, 1) and stats.mean.dtype == torch.float32
    assert stats.mean.flatten().tolist() == pytest.approx(values)


def test_norm_stats_that_are_not_per_channel_are_refused_in_one_line():
    with pytest.raises(DataError, match="one value per channel"):
        NormStats(mean=torch.zeros(3, 6), std=1.0)  # per pixel row, not per channel
    with pytest.raises(DataError, match="positive"):
        NormStats(mean=0.5, std=[0.2, 0.0, 0.2])
    with pytest.raises(DataError, match="3 channels"):
        NormStats(mean=[0.1, 0.2, 0.3], std=0.2).for_images(1, "cpu")


def test_a_dict_dataset_without_one_clear_image_and_label_key_is_refused():
    image = torch.zeros(1, SIZE, SIZE, dtype=torch.uint8)
    ambiguous = ListDataset([{"image": image, "img": image, "label": 0}] * 8)
    with pytest.raises(DataError, match="several \\(image, img\\)"):
        bundle_from_datasets(ambiguous, ambiguous)
