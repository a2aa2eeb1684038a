"""The Pipeline contract, tried once on one batch before anything relies on it.

A pipeline whose parts cannot work together as the contract says (batches that are not
`Batch(x, y, idx)`, labels that are not class indices, a model whose output holds no logits, a step
that does not return the loss tensor) would make every check that touches the broken part crash,
and `fit` would refuse it at its first step anyway. `check_contract` finds that first, with one
line naming the contract and the fix, so no check runs on a pipeline that cannot train.

It raises only the contract's own errors (RecipeError). Anything else the user's code raises is
left for the checks to find and explain (fit_dry_run says where the loop crashes).
"""
from __future__ import annotations

import torch
from torch import nn

from recipe.data import Batch
from recipe.errors import RecipeError
from recipe.outputs import forward_logits
from recipe.pipeline import Pipeline
from recipe.train import take_step, training_objects


class PipelineContractError(RecipeError):
    """The pipeline's batches or model factory do not keep the Pipeline contract."""


def check_contract(pipeline: Pipeline) -> None:
    """One batch, one forward and one step on a throwaway model; raises a one-line RecipeError
    where a part breaks the contract. The global RNG is left as it was, so what runs next draws
    the same numbers as without this."""
    devices = [pipeline.device] if pipeline.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        try:
            batch = _first_batch(pipeline)
            model = pipeline.make_model()
            if not isinstance(model, nn.Module):
                raise PipelineContractError(f"Pipeline.make_model returned a {type(model).__name__}; it must return a "
                                            "fresh torch.nn.Module")
            was_training = model.training
            with torch.no_grad():
                forward_logits(model.eval(), batch.x)  # the checks read its output as logits: it must hold them
            model.train(was_training)
            optimizer, _ = training_objects(pipeline, model)
            take_step(pipeline, model, optimizer, batch.x, batch.y)
        except RecipeError:
            raise
        except Exception:  # the user's code crashed: a finding for the checks (they say where), not a contract
            return


def _first_batch(pipeline: Pipeline) -> Batch:
    generator = torch.Generator().manual_seed(pipeline.config.seed)
    batches = pipeline.batches("train", shuffle=True, augment=pipeline.augment is not None, generator=generator)
    batch = next(iter(batches), None)
    if batch is None:
        raise PipelineContractError("Pipeline.batches('train') yielded no batches; is the train split empty?")
    if not all(isinstance(getattr(batch, name, None), torch.Tensor) for name in ("x", "y", "idx")):
        raise PipelineContractError(
            f"Pipeline.batches yielded a {type(batch).__name__}; it must yield recipe.data.Batch(x, y, idx), with "
            "idx the examples' positions in pipeline.data.<split> (the checks trace each example back through it)")
    tokens = pipeline.data.kind == "tokens"
    if tokens and (batch.x.dtype.is_floating_point or batch.x.dim() != 2):
        raise PipelineContractError(
            f"Pipeline.batches yielded x of dtype {batch.x.dtype} and shape {list(batch.x.shape)} for token sequences; "
            "x must be (B, T) integer token ids (embed them inside the model)")
    wanted_dims = 2 if tokens else 1
    if batch.y.dtype.is_floating_point or batch.y.dtype == torch.bool or batch.y.dim() != wanted_dims \
            or (tokens and batch.y.shape != batch.x.shape):
        want = ("(B, T) integer target ids, one per input position (the next token)" if tokens else
                "(B,) integer class indices (one-hot or soft targets: pass y.argmax(1) and put the rest in loss_fn)")
        raise PipelineContractError(
            f"Pipeline.batches yielded labels y of dtype {batch.y.dtype} and shape {list(batch.y.shape)}; y must be "
            + want)
    if len(batch.y) != len(batch.x) or len(batch.idx) != len(batch.x):
        raise PipelineContractError(f"Pipeline.batches yielded x, y and idx of lengths {len(batch.x)}, {len(batch.y)} "
                                    f"and {len(batch.idx)}; they must be one row per example")
    return batch
