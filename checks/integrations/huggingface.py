"""Hugging Face: `Trainer(..., callbacks=[RecipeTrainerCallback()])` runs the preflight before the first step.

    from checks.integrations.huggingface import RecipeTrainerCallback   # pip install -e '.[hf]'
    trainer = Trainer(model=model, args=args, train_dataset=train, callbacks=[RecipeTrainerCallback()])
    trainer.train()   # stops with PreflightFailed, naming the failing checks

At `on_train_begin` (the Trainer's optimizer and scheduler exist, no step has run) it builds the Pipeline
view of the run from what the Trainer hands its callbacks:
- the data: the train DataLoader's dataset, collated in order by the Trainer's own collate_fn (so the
  tokens are what the model would see; a streaming dataset, read once through the Trainer's loader), then converted from Hugging Face's causal-LM batches
  (input_ids, attention_mask, labels = input_ids with -100 on padding, the model shifting internally)
  to the harness contract: x = input_ids[:, :-1], y = labels[:, 1:], -100 read as the pad id. The
  val and test splits are the halves of `eval_dataset` when given (the callback does not see the
  Trainer's own), else of train's last fifth, held out of the checks' train;
- the model: a deepcopy taken before any step, one fresh copy per check, wrapped so forward(x) returns
  next-token logits (attention_mask = x != pad);
- the optimizer: the Trainer's class and param-group settings (lr before warm-up), re-created on each
  copy's parameters by name; a LambdaLR scheduler (every Hugging Face schedule) is re-created with the
  same lambdas, stepped per step; the step clips gradients at `args.max_grad_norm` as the Trainer does.
The run's length is counted in whole epochs: a `max_steps` shorter than an epoch makes the schedule end
early in the checks' eyes (lr_schedule FAILs); give such a run `num_train_epochs` instead.
On a FAIL or ERROR it raises PreflightFailed out of `train()`; `force=True` reports and trains anyway.
Causal language models only: a sequence-classification model is refused in one line (not yet read).
"""
from __future__ import annotations

import copy
import math
import weakref
from pathlib import Path

import torch
from torch import nn

from checks.integrations.loop import LoopVerdict, PreflightFailed, run_preflight_on
from recipe.config import TrainConfig
from recipe.errors import RecipeError

try:
    from transformers import TrainerCallback
except ImportError:  # the base install does without transformers: say how to get it, in one line
    raise RecipeError("RecipeTrainerCallback needs transformers: pip install -e '.[hf]' "
                      "(or pip install transformers)") from None
from recipe.language import token_cross_entropy
from recipe.pipeline import Pipeline
from recipe.sequences import TokenBatches
from recipe.token_datasets import bundle_from_token_ids

IGNORE = -100  # Hugging Face's label for "no loss here"


class RecipeTrainerCallback(TrainerCallback):
    def __init__(self, force: bool = False, report_dir: str | Path | None = None, *, eval_dataset=None,
                 gate: bool = True, only=None, seed: int = 0, check_steps: int = 0):
        self.force, self.report_dir, self.eval_dataset = force, report_dir, eval_dataset
        self.gate, self.only, self.seed, self.check_steps = gate, only, seed, check_steps
        self.verdict: LoopVerdict | None = None

    def on_train_begin(self, args, state, control, model=None, optimizer=None, lr_scheduler=None,
                       train_dataloader=None, **kwargs):
        if not state.is_world_process_zero:
            return
        pipeline = trainer_pipeline(args, model, optimizer, lr_scheduler, train_dataloader,
                                    eval_dataset=self.eval_dataset, seed=self.seed, check_steps=self.check_steps)
        self.verdict = run_preflight_on(pipeline, _spec_of(model), gate=self.gate, report_dir=self.report_dir,
                                        raise_on_fail=False, only=self.only)
        if not self.verdict.passed and not self.force:
            raise PreflightFailed(self.verdict)


def trainer_pipeline(args, model, optimizer, lr_scheduler, train_dataloader, *, eval_dataset=None,
                     seed: int = 0, check_steps: int = 0) -> Pipeline:
    """The Pipeline view of a Trainer about to train `model` (see the module docstring)."""
    if model is None or optimizer is None or train_dataloader is None:
        raise RecipeError("RecipeTrainerCallback reads the model, optimizer and train DataLoader the Trainer hands "
                          "its callbacks at on_train_begin; one of them is missing")
    if getattr(model.config, "is_encoder_decoder", False) or "ForCausalLM" not in _arch(model):
        raise RecipeError(f"RecipeTrainerCallback reads causal language models (…ForCausalLM / …LMHeadModel); "
                          f"{type(model).__name__} is not one yet")
    collate = train_dataloader.collate_fn
    train = _collated(train_dataloader.dataset, collate, "train", train_dataloader, model)
    pad_id = _pad_id(train, model)  # what the collator padded inputs with: the copies' attention mask
    counted = "labels" not in train or not (train["labels"] == IGNORE).any()
    loss_pad = None if counted else pad_id  # labels without -100: the Trainer's loss counts padding, so do the checks
    held = None
    if eval_dataset is not None:
        eval_loader = torch.utils.data.DataLoader(eval_dataset, batch_size=int(args.per_device_eval_batch_size),
                                                  collate_fn=collate)
        held = _collated(eval_dataset, collate, "eval", eval_loader, model)
    pairs = _pairs(train, pad_id)
    vocab = int(model.config.vocab_size)
    if held is not None:  # val and test: the two halves of eval (one set in both reads as a leak)
        held_pairs = _pairs(held, pad_id)
        val, test = held_pairs[:len(held_pairs) // 2], held_pairs[len(held_pairs) // 2:]
    else:  # val and test: the two halves of train's last fifth, held out of the checks' train
        tail = max(2, len(pairs) // 5)
        pairs, val, test = pairs[:-tail], pairs[-tail:-tail // 2], pairs[-tail // 2:]
    if not val or not test or not pairs:
        raise RecipeError("RecipeTrainerCallback needs at least 2 eval examples and some train examples")
    data = bundle_from_token_ids(pairs, test, val, vocab=vocab, pad_id=loss_pad, source="Hugging Face Trainer")
    device = next(model.parameters()).device
    made = _Made(model, optimizer, lr_scheduler, pad_id, device)
    batch_size = int(args.per_device_train_batch_size)
    per_epoch = -(-len(data.train) // batch_size)
    epochs = -(-args.max_steps // per_epoch) if args.max_steps > 0 else math.ceil(args.num_train_epochs)
    config = TrainConfig(epochs=max(int(epochs), 1), batch_size=batch_size, seed=seed,
                         check_steps=check_steps)
    clip = float(args.max_grad_norm or 0.0)

    def step(net, opt, loss_fn, x, y):  # the Trainer's inner step: forward, loss, backward, clip, step
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(net(x), y)
        loss.backward()
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(net.parameters(), clip)
        opt.step()
        return loss.detach()

    def loss_fn(logits, y):
        return token_cross_entropy(logits, y, pad_id=loss_pad)

    return Pipeline(name=type(model).__name__, data=data, norm=None, batches=TokenBatches(data, batch_size),
                    make_model=made.model, loss_fn=loss_fn, make_optimizer=made.optimizer, train_step=step,
                    config=config, make_scheduler=made.scheduler if made.lambdas else None,
                    scheduler_interval="step", derived_from=config)


class CausalLMLogits(nn.Module):
    """forward(x) -> the wrapped model's logits for x, attention_mask = x != pad: next-token logits."""

    def __init__(self, model: nn.Module, pad_id: int | None):
        super().__init__()
        self.model, self.pad_id = model, pad_id

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask = None if self.pad_id is None else (x != self.pad_id).long()
        return self.model(input_ids=x, attention_mask=mask).logits


def _arch(model) -> str:
    """The model's classes (its own and those it subclasses) and configured architectures, LMHeadModel read
    as ForCausalLM."""
    names = [c.__name__ for c in type(model).__mro__] + list(getattr(model.config, "architectures", None) or [])
    return " ".join(n.replace("LMHeadModel", "ForCausalLM") for n in names)


KEYS = ("input_ids", "attention_mask", "labels")


def _collated(dataset, collate, split: str, loader, model) -> dict:
    """The split as one batch, collated in order by the Trainer's collate_fn; a dataset without len() (an
    IterableDataset: streaming) is read once through `loader` instead (recipe/read_once.py says why)."""
    try:
        n = len(dataset)
    except TypeError:
        return _streamed(loader, split, model)
    return _tensors(collate([dataset[i] for i in range(n)]), split)


def _tensors(batch, split: str) -> dict:
    if "input_ids" not in batch:
        raise RecipeError(f"the collated {split} batch has keys {sorted(batch)}; RecipeTrainerCallback reads "
                          "input_ids (and labels)")
    return {k: torch.as_tensor(v) for k, v in batch.items() if k in KEYS}


def _streamed(loader, split: str, model) -> dict:
    """One pass through the loader (at most MAX_READ rows), its batches padded to the longest and joined:
    input_ids with the pad id the collator used (or the config's), attention_mask 0, labels -100."""
    from recipe.read_once import MAX_READ, seeded

    parts, rows = [], 0
    with seeded():  # a stream that shuffles reads the same way on every run
        for batch in loader:
            parts.append(_tensors(batch, split))
            rows += len(parts[-1]["input_ids"])
            if rows >= MAX_READ:
                break
    if not parts:
        raise RecipeError(f"the {split} dataset yielded no examples")
    width = max(part["input_ids"].shape[1] for part in parts)
    pads = [part["input_ids"][part["attention_mask"] == 0] for part in parts if "attention_mask" in part]
    pad = next((int(p[0]) for p in pads if len(p)), getattr(model.config, "pad_token_id", None) or 0)
    fill = {"input_ids": pad, "attention_mask": 0, "labels": IGNORE}
    return {key: torch.cat([nn.functional.pad(part[key], (0, width - part[key].shape[1]), value=fill[key])
                            for part in parts])[:MAX_READ] for key in parts[0]}


def _pad_id(batch: dict, model) -> int | None:
    """The id the collator padded with: the input id under attention_mask == 0 (or label -100), else the
    model config's pad_token_id, else none (nothing is padded)."""
    ids = batch["input_ids"]
    where = batch["attention_mask"] == 0 if "attention_mask" in batch else \
        batch["labels"] == IGNORE if "labels" in batch else torch.zeros_like(ids, dtype=torch.bool)
    if where.any():
        return int(ids[where].mode().values)
    configured = getattr(model.config, "pad_token_id", None)
    if configured is not None:
        return int(configured)
    if "labels" in batch and (batch["labels"] == IGNORE).any():
        raise RecipeError("labels hold -100 but no pad id can be read (no attention_mask zeros, no "
                          "config.pad_token_id): set model.config.pad_token_id")
    return None


def _pairs(batch: dict, pad_id: int | None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Hugging Face's (input_ids, labels = input_ids, model shifts) as the contract's (x, y[t] = target of t)."""
    ids = batch["input_ids"].long()
    labels = batch.get("labels", ids).long()
    x, y = ids[:, :-1].clone(), labels[:, 1:].clone()
    if (y == IGNORE).any():
        y[y == IGNORE] = pad_id
    return list(zip(x, y))


class _Made:
    """Fresh wrapped copies of the model, and for each copy the Trainer's optimizer (same class, same group
    settings, parameters matched by name) and LambdaLR scheduler (same lambdas)."""

    def __init__(self, model, optimizer, lr_scheduler, pad_id, device):
        self.template = copy.deepcopy(model).to(device)
        self.pad_id = pad_id
        inner = getattr(optimizer, "optimizer", optimizer)  # accelerate wraps the optimizer
        self.optimizer_class = type(inner)
        names = {id(p): n for n, p in model.named_parameters()}
        self.groups = []
        for group in inner.param_groups:
            settings = {k: v for k, v in group.items() if k not in ("params", "initial_lr")}
            settings["lr"] = group.get("initial_lr", group["lr"])  # before warm-up scaled it
            self.groups.append(([names[id(p)] for p in group["params"] if id(p) in names], settings))
        inner_scheduler = getattr(lr_scheduler, "scheduler", lr_scheduler)
        self.lambdas = list(inner_scheduler.lr_lambdas) if isinstance(
            inner_scheduler, torch.optim.lr_scheduler.LambdaLR) else None
        self.owners: weakref.WeakValueDictionary = weakref.WeakValueDictionary()

    def model(self) -> nn.Module:
        wrapped = CausalLMLogits(copy.deepcopy(self.template), self.pad_id)
        for parameter in wrapped.parameters():
            self.owners[id(parameter)] = wrapped
        return wrapped

    def optimizer(self, params):
        params = list(params)
        owner = self.owners.get(id(params[0])) if params else None
        if owner is None:
            raise RecipeError("RecipeTrainerCallback re-creates the Trainer's optimizer on one copy's parameters; "
                              "a check asked for another set")
        by_name = dict(owner.model.named_parameters())
        groups = [dict(settings, params=[by_name[n] for n in names]) for names, settings in self.groups]
        return self.optimizer_class(groups, lr=groups[0]["lr"])

    def scheduler(self, optimizer):
        return torch.optim.lr_scheduler.LambdaLR(optimizer, self.lambdas)


def _spec_of(model) -> str:
    return f"{type(model).__module__}:{type(model).__qualname__}"
