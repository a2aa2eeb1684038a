"""All training settings in one frozen dataclass."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from recipe.errors import RecipeError

OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("cosine", "constant")
MIN_CHECK_STEPS = 60  # the shortest check run: its loss windows (20 steps each) still need room to compare
RETIRED = {"check_budget": "check_budget (seconds) is gone: the checks now train a number of steps chosen from "
                           "the model's forward FLOPs, so the same fingerprint gives the same results on any "
                           "machine; set check_steps (--check-steps N) to choose the length yourself"}


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10
    batch_size: int = 64       # as in pytorch/examples mnist; the benchmark compares at this size
    lr: float = 0.001          # Adam default; with the cosine schedule it reaches 0.845 test on Fashion-MNIST
    optimizer: str = "adam"
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "cosine"   # lr decays to 0 by the last step: removes SGD's end-of-run noise (+~0.5% test acc)
    seed: int = 0
    augment: str = "none"      # off by default: the recipe says simplify first
    # Steps each training-based check trains; 0: chosen from the model's forward FLOPs (checks/measure/step_budget.py),
    # never from the clock, so that the same fingerprint gives the same results on any machine.
    check_steps: int = field(default=0, metadata={"help": "steps each training-based check trains; 0 chooses "
                             f"them from the model's forward FLOPs (300 for small models, fewer for costly ones, at "
                             f"least {MIN_CHECK_STEPS})"})

    def __post_init__(self) -> None:
        from recipe.augment import AUGMENTATIONS

        if self.epochs < 1:
            raise RecipeError(f"--epochs must be at least 1, got {self.epochs}")
        if self.batch_size < 1:
            raise RecipeError(f"--batch-size must be at least 1, got {self.batch_size}")
        if not self.lr > 0:
            raise RecipeError(f"--lr must be positive, got {self.lr}")
        if self.optimizer not in OPTIMIZERS:
            raise RecipeError(f"unknown --optimizer {self.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
        if self.schedule not in SCHEDULES:
            raise RecipeError(f"unknown --schedule {self.schedule!r}; choose one of {', '.join(SCHEDULES)}")
        if self.check_steps and self.check_steps < MIN_CHECK_STEPS:
            raise RecipeError(f"--check-steps must be 0 (chosen from the model's FLOPs) or at least {MIN_CHECK_STEPS} "
                              f"(the loss windows need room), got {self.check_steps}")
        if self.augment not in AUGMENTATIONS:
            raise RecipeError(f"unknown --augment {self.augment!r}; choose one of {', '.join(AUGMENTATIONS)}")

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            retired = "".join(f"; {RETIRED[key]}" for key in sorted(unknown & set(RETIRED)))
            raise RecipeError(f"unknown config keys: {', '.join(sorted(unknown))}{retired}")
        return cls(**values)
