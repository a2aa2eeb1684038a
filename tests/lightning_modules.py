"""Lightning modules for tests/test_lightning_check.py, written as Lightning's docs write their MNIST
example, and the zoo bugs planted in them. A module of its own so that collecting the tests imports no
Lightning (~3 s in each pytest worker): only a worker that runs those tests imports it, through their `lit` fixture."""
from __future__ import annotations

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn

from checks.integrations.lightning import RecipeCheck  # noqa: F401 (the tests and the DDP script take it from here)


class LitMNIST(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer_1 = nn.Linear(28 * 28, 128)
        self.layer_2 = nn.Linear(128, 256)
        self.layer_3 = nn.Linear(256, 10)

    def forward(self, x):
        x = x.view(x.size(0), -1)
        x = F.relu(self.layer_1(x))
        x = F.relu(self.layer_2(x))
        return self.layer_3(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", F.cross_entropy(self(x), y))

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-3)


class NegatedLoss(LitMNIST):
    def training_step(self, batch, batch_idx):
        x, y = batch
        return -F.cross_entropy(self(x), y)  # the zoo's negated_loss: gradient ascent


class SummedLoss(LitMNIST):
    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y, reduction="sum")  # the zoo's loss_summed: B times the mean


class SoftmaxInStep(LitMNIST):
    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(F.softmax(self(x), dim=1), y)  # probabilities into a loss that wants logits


class ManualMNIST(LitMNIST):
    """Manual optimisation, as Lightning's docs write it: the step zeroes, backpropagates, clips and steps."""

    def __init__(self):
        super().__init__()
        self.automatic_optimization = False

    def training_step(self, batch, batch_idx):
        opt = self.optimizers()
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        opt.zero_grad()
        self.manual_backward(loss)
        self.clip_gradients(opt, gradient_clip_val=1.0, gradient_clip_algorithm="norm")
        opt.step()
        self.log("train_loss", loss)


class ManualWithoutZeroGrad(ManualMNIST):
    def training_step(self, batch, batch_idx):
        opt = self.optimizers()
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.manual_backward(loss)  # the zoo's no_zero_grad: gradients pile up across steps
        opt.step()


class ManualNegated(ManualMNIST):
    def training_step(self, batch, batch_idx):
        opt = self.optimizers()
        x, y = batch
        opt.zero_grad()
        self.manual_backward(-F.cross_entropy(self(x), y))  # the zoo's negated_loss
        opt.step()


class ManualClipAfterStep(ManualMNIST):
    def training_step(self, batch, batch_idx):
        opt = self.optimizers()
        x, y = batch
        opt.zero_grad()
        self.manual_backward(F.cross_entropy(self(x), y))
        opt.step()
        self.clip_gradients(opt, gradient_clip_val=1.0, gradient_clip_algorithm="norm")  # clips what was used


class DropoutMNIST(LitMNIST):
    def forward(self, x):
        return F.dropout(super().forward(x), p=0.3, training=self.training)


class SeedsFromBatchIdx(DropoutMNIST):
    """Valid: a fresh, reproducible dropout draw per batch (some users seed each step from its index)."""
    def training_step(self, batch, batch_idx):
        torch.manual_seed(1000 + batch_idx)
        return super().training_step(batch, batch_idx)


class ReseedsEveryStep(DropoutMNIST):
    """The zoo's seed_reset_in_step: the same dropout mask at every step."""
    def training_step(self, batch, batch_idx):
        torch.manual_seed(0)
        return super().training_step(batch, batch_idx)


def fit(module, digits, callback):
    trainer = pl.Trainer(max_epochs=1, callbacks=[callback], accelerator="cpu", logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         limit_train_batches=5, limit_val_batches=1, num_sanity_val_steps=0)
    trainer.fit(module, *digits)
    return trainer
