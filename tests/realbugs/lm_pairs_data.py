"""Language-model pairs whose bug is in the labels, the loss or the step, not in the model (the other half
of lm_pairs.py, which holds the shared GPT and `_pipeline`). Same rules: the report's mechanism and
hyperparameters, the `names` data, the default pipeline's optimizer unless the report gives one.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from recipe.language import token_cross_entropy
from tests.realbugs.lm_pairs import _pipeline, _with_splits


# ---------------------------------------------------------------- targets: the shift

def _labels_are_inputs(data):
    """A Hugging Face style data set: labels = input_ids ('.' + name + '.', padded), the shift left to the model."""
    def edit(x, y):
        ids = torch.cat([x[:, :1], y], dim=1)  # the whole sequence: the first input, then every target
        return ids, ids.clone()
    return _with_splits(data, edit)


def _unshifted_loss(pad):
    return lambda logits, labels: token_cross_entropy(logits, labels, pad)  # position t scored on its own input


def _shifted_loss(pad):
    """GPT2LMHeadModel's loss (transformers#404): shift so that tokens < n predict n."""
    return lambda logits, labels: token_cross_entropy(logits[..., :-1, :].contiguous(), labels[..., 1:].contiguous(),
                                                      pad)


def lm_loss_not_shifted_buggy(config, data):
    hf = _labels_are_inputs(data)
    return _pipeline(config, hf, loss_fn=_unshifted_loss(hf.pad_id))


def lm_loss_not_shifted_fixed(config, data):
    hf = _labels_are_inputs(data)
    return _pipeline(config, hf, loss_fn=_shifted_loss(hf.pad_id))


def labels_shifted_twice_buggy(config, data):
    return _pipeline(config, data, loss_fn=_shifted_loss(data.pad_id))  # targets already the next ids


def labels_shifted_twice_fixed(config, data):
    return _pipeline(config, data, loss_fn=_unshifted_loss(data.pad_id))


# ---------------------------------------------------------------- padding in the loss

def _dalle_loss(ignore_index):
    def loss(logits, labels):  # F.cross_entropy(rearrange(logits, 'b n c -> b c n'), labels)
        if ignore_index is None:
            return F.cross_entropy(logits.transpose(1, 2), labels)  # self.ignore_index defined, never passed
        return F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=ignore_index)
    return loss


def ignore_index_unused_buggy(config, data):
    return _pipeline(config, data, loss_fn=_dalle_loss(None))


def ignore_index_unused_fixed(config, data):
    return _pipeline(config, data, loss_fn=_dalle_loss(data.pad_id))  # DALLE-pytorch#58: ignore_index=0, the pad


def _padded_with_end_token(data):
    """FlagAI's padding(indice, max_length, pad_idx=tokenizer.token_end_id): no pad id, the end token repeated."""
    end = data.class_names.index(".")
    return _with_splits(data, lambda x, y: (x.masked_fill(x == data.pad_id, end), y.masked_fill(y == data.pad_id, end)),
                        pad_id=None)


def pad_with_end_token_buggy(config, data):
    padded = _padded_with_end_token(data)  # nn.CrossEntropyLoss(ignore_index=-100): every end token is scored
    return _pipeline(config, padded, loss_fn=lambda logits, y: F.cross_entropy(logits.flatten(0, 1), y.flatten()))


def pad_with_end_token_fixed(config, data):
    return _pipeline(config, data)  # a real pad id, and the loss ignores it


# ---------------------------------------------------------------- gradient accumulation

ACCUMULATION_STEPS = 4  # 4 micro-batches of 16 make the pipeline's batch of 64


def _accumulating_step(pad, token_weighted: bool):
    """The Trainer's accumulation: each micro-batch's loss is the model's mean over ITS tokens, divided by the
    number of micro-batches (transformers#24725); the fix weighs each by its share of the step's tokens."""
    def step(model, optimizer, loss_fn, x, y):
        optimizer.zero_grad(set_to_none=True)
        parts = list(zip(x.chunk(ACCUMULATION_STEPS), y.chunk(ACCUMULATION_STEPS)))
        tokens = (y != pad).sum()
        total = torch.zeros((), device=x.device)
        for xs, ys in parts:
            weight = (ys != pad).sum() / tokens if token_weighted else 1.0 / len(parts)
            loss = loss_fn(model(xs), ys) * weight
            loss.backward()
            total += loss.detach()
        optimizer.step()
        return total
    return step


def accumulation_mean_of_means_buggy(config, data):
    return _pipeline(config, data, train_step=_accumulating_step(data.pad_id, token_weighted=False))


def accumulation_mean_of_means_fixed(config, data):
    return _pipeline(config, data, train_step=_accumulating_step(data.pad_id, token_weighted=True))
