"""A tiny GPT-2 for tests/test_hf_check.py, and the bug planted in one. A module of its own so that
collecting the tests imports no transformers (~1-4 s in each pytest worker): only a worker that runs those
tests imports it, through their `hf` fixture."""
from __future__ import annotations

import torch
import transformers

from checks.integrations.huggingface import RecipeTrainerCallback  # noqa: F401 (the tests take it from here)


class PeekingGPT2(transformers.GPT2LMHeadModel):
    """A custom mask that forgot causality: every position sees the whole row (padding still masked)."""

    def forward(self, input_ids=None, attention_mask=None, labels=None, **kwargs):
        if attention_mask is not None and attention_mask.dim() == 2:
            keys = attention_mask.bool()[:, None, None, :]
            attention_mask = keys.expand(-1, 1, input_ids.shape[1], -1)
        return super().forward(input_ids=input_ids, attention_mask=attention_mask, labels=labels, **kwargs)


class StopAfterTwoSteps(transformers.TrainerCallback):
    """The run is configured in full (3 epochs: the checks judge its length); the test trains 2 steps of it."""

    def on_step_end(self, args, state, control, **kwargs):
        control.should_training_stop = state.global_step >= 2


def model_class(name: str):
    """GPT2LMHeadModel, or its twin with the bug planted, by name (the tests' parameters are names)."""
    return PeekingGPT2 if name == "PeekingGPT2" else getattr(transformers, name)


def train(model_name, names, tmp_path, callback):
    train_rows, eval_rows, vocab, pad_id = names
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=vocab, n_positions=64,
                                     pad_token_id=pad_id)
    model = model_class(model_name)(config)
    args = transformers.TrainingArguments(output_dir=str(tmp_path / "out"), num_train_epochs=3, learning_rate=3e-3,
                                          per_device_train_batch_size=16, report_to=[], use_cpu=True,
                                          save_strategy="no", disable_tqdm=True)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=train_rows, callbacks=[callback, StopAfterTwoSteps()])
    trainer.train()
    return trainer
