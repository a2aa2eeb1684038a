"""The buggy and fixed pipelines of the real-bug track, written the way the reports' users wrote them.

Every pair ports ONE publicly reported training bug (its source is in `catalogue.py`) onto this
project's data: the 5k MNIST `sample`, images (N, 1, 28, 28). A factory is `build(config, data) ->
Pipeline`; the user's code replaces what it owns in `default_pipeline` (model, loss, optimizer,
scheduler, step, batches), as a user plugging their own script into the harness would. The buggy and
the fixed version of a pair differ only in the reported mistake and its fix.

What had to be adapted to the data is said in the pair's comment: architectures are shrunk to
MNIST-sized CPU models (a text transformer becomes an MLP, a segmentation net a small CNN), but the
mechanism of the bug (where the softmax sits, which parameters the optimizer holds, when the
scheduler steps...) is kept as the report describes it. Where a report does not give a hyperparameter,
the default pipeline's (Adam, lr 1e-3) is kept and no claim is made about it.

Nothing here is imported by the harness: this is test material, like tests/zoo.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn, optim
from torch.autograd import Variable
from torch.optim import lr_scheduler

from recipe.data import Batch, normalize
from recipe.pipeline import default_pipeline
from recipe.steps import train_step


# ---------------------------------------------------------------- shared user code

class Net(nn.Module):
    """The small MNIST CNN most pairs start from (pytorch/examples' mnist Net, narrowed for CPU time)."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.fc1 = nn.Linear(16 * 7 * 7, 64)
        self.fc2 = nn.Linear(64, num_classes)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.relu(self.fc1(torch.flatten(x, 1)))
        return self.fc2(x)


def _user_pipeline(config, data, model_class, **replaced):
    """default_pipeline with the user's model and the plain autograd step, no scheduler unless given."""
    base = default_pipeline(config, data)
    fields = dict(make_model=lambda: model_class().to(base.device), loss_fn=nn.CrossEntropyLoss(),
                  train_step=train_step, make_scheduler=None)
    fields.update(replaced)
    return dataclasses.replace(base, **fields)


def _adam(lr):
    return lambda params: optim.Adam(params, lr=lr)


# ---------------------------------------------------------------- 1. missing optimizer.zero_grad()
# stackoverflow.com/questions/60335387 (a TrainCheck OSDI'25 silent-issue workload): an MNIST CNN with
# Adam(lr=1e-4) whose loop never calls optimizer.zero_grad(), so every step uses the sum of all
# gradients so far.

def _step_without_zero_grad(model, optimizer, criterion, data, label):
    pred_score = model(data)
    loss = criterion(pred_score, label)
    loss.backward()
    optimizer.step()
    return loss.detach()


def _step_with_zero_grad(model, optimizer, criterion, data, label):
    optimizer.zero_grad()  # This line was missing
    pred_score = model(data)
    loss = criterion(pred_score, label)
    loss.backward()
    optimizer.step()
    return loss.detach()


def missing_zero_grad_buggy(config, data):
    return _user_pipeline(config, data, Net, make_optimizer=_adam(1e-4), train_step=_step_without_zero_grad)


def missing_zero_grad_fixed(config, data):
    return _user_pipeline(config, data, Net, make_optimizer=_adam(1e-4), train_step=_step_with_zero_grad)


# ---------------------------------------------------------------- 2. softmax in forward, then CrossEntropyLoss
# jindongwang/Deep-learning-activity-recognition#10: the CNN's forward ends in F.softmax and its
# output goes into nn.CrossEntropyLoss, which applies log-softmax again. (The 1-D activity CNN becomes
# a 2-D MNIST CNN.)

class SoftmaxOutputNet(Net):
    def forward(self, x):
        out = super().forward(x)
        return F.softmax(out, dim=1)


def softmax_before_cross_entropy_buggy(config, data):
    return _user_pipeline(config, data, SoftmaxOutputNet)


def softmax_before_cross_entropy_fixed(config, data):
    return _user_pipeline(config, data, Net)  # forward returns the raw scores


# ---------------------------------------------------------------- 3. log_softmax over the batch dimension
# fxia22/pointnet.pytorch#27: PointNetCls returns F.log_softmax(x, dim=0), normalising across the
# batch, into F.nll_loss. Its head as it was then (fc 1024-512-256-k with BatchNorm1d) and its
# optimizer (SGD lr 0.01, momentum 0.9) are kept; it reads the 784 pixels instead of point features.

class PointNetCls(nn.Module):
    def __init__(self, k: int = 10, log_softmax_dim: int = 0):
        super().__init__()
        self.fc1 = nn.Linear(784, 512)
        self.fc2 = nn.Linear(512, 256)
        self.fc3 = nn.Linear(256, k)
        self.bn1 = nn.BatchNorm1d(512)
        self.bn2 = nn.BatchNorm1d(256)
        self.relu = nn.ReLU()
        self.log_softmax_dim = log_softmax_dim

    def forward(self, x):
        x = x.flatten(1)
        x = F.relu(self.bn1(self.fc1(x)))
        x = F.relu(self.bn2(self.fc2(x)))
        x = self.fc3(x)
        return F.log_softmax(x, dim=self.log_softmax_dim)


def _pointnet(config, data, dim):
    return _user_pipeline(config, data, lambda: PointNetCls(log_softmax_dim=dim), loss_fn=F.nll_loss,
                          make_optimizer=lambda params: optim.SGD(params, lr=0.01, momentum=0.9))


def log_softmax_over_batch_buggy(config, data):
    return _pointnet(config, data, dim=0)


def log_softmax_over_batch_fixed(config, data):
    return _pointnet(config, data, dim=1)


# ---------------------------------------------------------------- 4. NLLLoss on softmax probabilities
# AnubhavGupta3377/Text-Classification-Models-Pytorch#9: the model ends in nn.Softmax and is trained
# with nn.NLLLoss, which expects log-probabilities: the loss is -p(true class), always negative.
# (The text transformer becomes an MLP on pixels.)

class SoftmaxMLP(nn.Module):
    def __init__(self, final=None):
        super().__init__()
        self.fc1 = nn.Linear(784, 256)
        self.fc2 = nn.Linear(256, 10)
        self.softmax = final if final is not None else nn.Softmax(dim=1)

    def forward(self, x):
        return self.softmax(self.fc2(F.relu(self.fc1(x.flatten(1)))))


def nll_loss_on_softmax_buggy(config, data):
    return _user_pipeline(config, data, SoftmaxMLP, loss_fn=nn.NLLLoss())


def nll_loss_on_softmax_fixed(config, data):
    return _user_pipeline(config, data, lambda: SoftmaxMLP(final=nn.LogSoftmax(dim=1)), loss_fn=nn.NLLLoss())


# ---------------------------------------------------------------- 5. ReLU after the last layer
# pytorch/tutorials#1644: the quickstart tutorial's NeuralNetwork ended its linear_relu_stack with a
# ReLU, so the logits fed to CrossEntropyLoss are clipped at 0. Same model, loss and SGD(lr=1e-3).

class QuickstartNetwork(nn.Module):
    def __init__(self, final_relu: bool):
        super().__init__()
        self.flatten = nn.Flatten()
        layers = [nn.Linear(28 * 28, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10)]
        self.linear_relu_stack = nn.Sequential(*(layers + [nn.ReLU()] if final_relu else layers))

    def forward(self, x):
        return self.linear_relu_stack(self.flatten(x))


def relu_on_logits_buggy(config, data):
    return _user_pipeline(config, data, lambda: QuickstartNetwork(final_relu=True),
                          make_optimizer=lambda params: torch.optim.SGD(params, lr=1e-3))


def relu_on_logits_fixed(config, data):
    return _user_pipeline(config, data, lambda: QuickstartNetwork(final_relu=False),
                          make_optimizer=lambda params: torch.optim.SGD(params, lr=1e-3))


# ---------------------------------------------------------------- 6. LSTM batch_first dropped
# yunjey/pytorch-tutorial#196: the tutorial's MNIST row-LSTM with batch_first=True changed to False
# while the input stays (batch, seq, feature): the LSTM runs along the batch and reads the 28 rows as
# 28 parallel sequences. Adam(lr=0.01); hidden 128 -> 64 for CPU time; h0 is left to the LSTM's default
# zeros (the tutorial's explicit h0 of size x.size(0) would not even fit the transposed layout).

class RNN(nn.Module):
    def __init__(self, batch_first: bool, input_size=28, hidden_size=64, num_layers=1, num_classes=10):
        super().__init__()
        self.lstm = nn.LSTM(input_size, hidden_size, num_layers, batch_first=batch_first)
        self.fc = nn.Linear(hidden_size, num_classes)

    def forward(self, x):
        x = x.reshape(-1, 28, 28)    # (batch, sequence_length, input_size)
        out, _ = self.lstm(x)
        return self.fc(out[:, -1, :])  # "last time step"


def lstm_batch_first_dropped_buggy(config, data):
    return _user_pipeline(config, data, lambda: RNN(batch_first=False), make_optimizer=_adam(0.01))


def lstm_batch_first_dropped_fixed(config, data):
    return _user_pipeline(config, data, lambda: RNN(batch_first=True), make_optimizer=_adam(0.01))


# ---------------------------------------------------------------- 7. F.dropout without training=self.training
# delip/PyTorchNLPBook#28: the book's MLP classifier calls F.dropout(x, p=0.5) in forward; the
# functional form ignores model.eval(), so evaluation and inference stay stochastic. Optimizer: the
# pipeline default.

class SurnameMLP(nn.Module):
    def __init__(self, respect_eval: bool):
        super().__init__()
        self.fc1 = nn.Linear(784, 300)
        self.fc2 = nn.Linear(300, 10)
        self.respect_eval = respect_eval

    def forward(self, x_in):
        intermediate = F.relu(self.fc1(x_in.flatten(1)))
        if self.respect_eval:
            intermediate = F.dropout(intermediate, p=0.5, training=self.training)
        else:
            intermediate = F.dropout(intermediate, p=0.5)
        return self.fc2(intermediate)


def functional_dropout_in_eval_buggy(config, data):
    return _user_pipeline(config, data, lambda: SurnameMLP(respect_eval=False))


def functional_dropout_in_eval_fixed(config, data):
    return _user_pipeline(config, data, lambda: SurnameMLP(respect_eval=True))


# ---------------------------------------------------------------- 8. model.eval() for logging, never model.train()
# shubhamagarwal92/mmd#14: the training loop calls evaluate()/logging, which sets model.eval(), and
# never sets model.train() again, so dropout and BatchNorm stay in eval mode for the rest of training.
# Adapted to the step contract: the user's step logs the batch accuracy every 50 steps in eval mode.

class BNDropoutNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(16)
        self.dropout = nn.Dropout(0.5)
        self.fc1 = nn.Linear(16 * 7 * 7, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        x = F.max_pool2d(F.relu(self.bn2(self.conv2(x))), 2)
        x = self.dropout(F.relu(self.fc1(torch.flatten(x, 1))))
        return self.fc2(x)


class LoggingStep:
    """The user's step: an ordinary update, plus a batch-accuracy log line every `every` steps."""

    def __init__(self, back_to_train: bool, every: int = 50):
        self.back_to_train, self.every, self.steps, self.log = back_to_train, every, 0, []

    def __call__(self, model, optimizer, loss_fn, x, y):
        optimizer.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
        self.steps += 1
        if self.steps % self.every == 0:
            model.eval()
            with torch.no_grad():
                self.log.append((model(x).argmax(1) == y).float().mean().item())
            if self.back_to_train:
                model.train()
        return loss.detach()


def eval_mode_never_reset_buggy(config, data):
    return _user_pipeline(config, data, BNDropoutNet, train_step=LoggingStep(back_to_train=False))


def eval_mode_never_reset_fixed(config, data):
    return _user_pipeline(config, data, BNDropoutNet, train_step=LoggingStep(back_to_train=True))


# ---------------------------------------------------------------- 9. CosineAnnealingLR(T_max=epochs) stepped per batch
# ivadomed/ivadomed#55: `CosineAnnealingLR(optimizer, num_epochs)` was stepped in the batch loop, so
# the "per-epoch" cosine runs a full half-period every num_epochs batches. Optimizer: Adam, lr 1e-3
# (not taken from the report).

def _cosine(config, data, interval):
    return _user_pipeline(config, data, Net, make_optimizer=_adam(1e-3),
                          make_scheduler=lambda optimizer: lr_scheduler.CosineAnnealingLR(optimizer, config.epochs),
                          scheduler_interval=interval)


def cosine_stepped_per_batch_buggy(config, data):
    return _cosine(config, data, interval="step")


def cosine_stepped_per_batch_fixed(config, data):
    return _cosine(config, data, interval="epoch")


# ---------------------------------------------------------------- 10. StepLR(step_size=7) stepped per batch
# pytorch/tutorials#640: the transfer-learning tutorial's StepLR(step_size=7, gamma=0.1) meant per
# epoch was stepped per batch, so the lr falls 10x every 7 batches. SGD(lr=0.001, momentum=0.9).

def _steplr(config, data, interval):
    return _user_pipeline(config, data, Net,
                          make_optimizer=lambda params: optim.SGD(params, lr=0.001, momentum=0.9),
                          make_scheduler=lambda optimizer: lr_scheduler.StepLR(optimizer, step_size=7, gamma=0.1),
                          scheduler_interval=interval)


def steplr_stepped_per_batch_buggy(config, data):
    return _steplr(config, data, interval="step")


def steplr_stepped_per_batch_fixed(config, data):
    return _steplr(config, data, interval="epoch")


# ---------------------------------------------------------------- 11. clip_grad_norm after optimizer.step()
# VGraphRNN/VGRNN#4: clip_grad_norm is called after opt.step(), so it clips gradients nobody uses.
# VGRNN's Adam(lr=1e-2) and clip=10 are kept; the graph RNN becomes an MLP.

class MLP(nn.Module):
    def __init__(self, hidden=256):
        super().__init__()
        self.fc1 = nn.Linear(784, hidden)
        self.fc2 = nn.Linear(hidden, 10)

    def forward(self, x):
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


CLIP = 10


def _clip_after_step(model, opt, loss_fn, x, y):
    opt.zero_grad()
    loss = loss_fn(model(x), y)
    loss.backward()
    opt.step()
    nn.utils.clip_grad_norm_(model.parameters(), CLIP)
    return loss.detach()


def _clip_before_step(model, opt, loss_fn, x, y):
    opt.zero_grad()
    loss = loss_fn(model(x), y)
    loss.backward()
    nn.utils.clip_grad_norm_(model.parameters(), CLIP)
    opt.step()
    return loss.detach()


def clip_after_step_buggy(config, data):
    return _user_pipeline(config, data, MLP, make_optimizer=_adam(1e-2), train_step=_clip_after_step)


def clip_after_step_fixed(config, data):
    return _user_pipeline(config, data, MLP, make_optimizer=_adam(1e-2), train_step=_clip_before_step)


# ---------------------------------------------------------------- 12. clip_grad_norm_ before loss.backward()
# Cranial-XIX/FAMO#4: clip_grad_norm_ runs before loss.backward(), on gradients that were just
# zeroed, so nothing is clipped. max_norm 1.0 here (the report does not say); Adam lr 1e-3.

def _clip_before_backward(model, optimizer, loss_fn, x, y):
    optimizer.zero_grad()
    loss = loss_fn(model(x), y)
    nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    loss.backward()
    optimizer.step()
    return loss.detach()


def _clip_after_backward(model, optimizer, loss_fn, x, y):
    optimizer.zero_grad()
    loss = loss_fn(model(x), y)
    loss.backward()
    nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    return loss.detach()


def clip_before_backward_buggy(config, data):
    return _user_pipeline(config, data, MLP, train_step=_clip_before_backward)


def clip_before_backward_fixed(config, data):
    return _user_pipeline(config, data, MLP, train_step=_clip_after_backward)


# ---------------------------------------------------------------- 13. outputs.data + Variable(loss, requires_grad=True)
# huggingface/torchMoji#21: the model returns `outputs.data` (return_tensor=True), backward then
# complains that the loss has no grad_fn, and the user wraps `loss = Variable(loss, requires_grad=True)`:
# it runs, but no gradient reaches the model. The LSTM-attention model becomes an MLP.

class TorchMojiLikeMLP(MLP):
    def __init__(self, return_tensor: bool):
        super().__init__()
        self.return_tensor = return_tensor

    def forward(self, x):
        outputs = super().forward(x)
        if self.return_tensor:
            outputs = outputs.data
        return outputs


def _step_rewrapping_loss(model, optimizer, loss_fn, x, y):
    optimizer.zero_grad()
    loss = loss_fn(model(x), y)
    loss = Variable(loss, requires_grad=True)  # "element 0 of tensors does not require grad" without it
    loss.backward()
    optimizer.step()
    return loss.detach()


def loss_rewrapped_in_variable_buggy(config, data):
    return _user_pipeline(config, data, lambda: TorchMojiLikeMLP(return_tensor=True), train_step=_step_rewrapping_loss)


def loss_rewrapped_in_variable_fixed(config, data):
    return _user_pipeline(config, data, lambda: TorchMojiLikeMLP(return_tensor=False))


# ---------------------------------------------------------------- 14. hidden layers kept in a Python list
# pytorch/pytorch#715: `self.hids = []` filled with [nn.Linear, activation] pairs in a loop, plus a
# registered `self.classifier`: the hidden layers' parameters are not in model.parameters(), so the
# optimizer never updates them (and .to()/.eval() never reach them).

class ListHidsNet(nn.Module):
    def __init__(self, module_list: bool, n_hid=256, n_layers=2):
        super().__init__()
        hids, indim = [], 784
        for _ in range(n_layers):
            hids.append(nn.Linear(indim, n_hid))
            hids.append(nn.ReLU())
            indim = n_hid
        self.hids = nn.ModuleList(hids) if module_list else hids
        self.classifier = nn.Linear(n_hid, 10)

    def forward(self, x):
        x = x.flatten(1)
        for layer in self.hids:
            x = layer(x)
        return self.classifier(x)


def layers_in_python_list_buggy(config, data):
    return _user_pipeline(config, data, lambda: ListHidsNet(module_list=False))


def layers_in_python_list_fixed(config, data):
    return _user_pipeline(config, data, lambda: ListHidsNet(module_list=True))


# ---------------------------------------------------------------- 15. train loader never shuffled
# Deci-AI/super-gradients#416: the default dataloader params lack shuffle=True, so a SequentialSampler
# walks a class-ordered (ImageFolder-style) training set one class at a time. The sample's train split
# is stored in class order too. SGD(lr=1e-3, momentum=0.9, nesterov, weight_decay=1e-4) as in the report.

def _sgd_nesterov(params):
    return optim.SGD(params, lr=0.001, momentum=0.9, nesterov=True, weight_decay=0.0001)


def train_loader_not_shuffled_buggy(config, data):
    base = default_pipeline(config, data)

    def train_dataloader(split, *, shuffle=False, augment=False, generator=None):  # dataloader_params: no shuffle
        return base.batches(split, shuffle=False, augment=augment, generator=generator)
    return _user_pipeline(config, data, Net, make_optimizer=_sgd_nesterov, batches=train_dataloader)


def train_loader_not_shuffled_fixed(config, data):
    base = default_pipeline(config, data)

    def train_dataloader(split, *, shuffle=False, augment=False, generator=None):  # "shuffle": True passed through
        return base.batches(split, shuffle=shuffle, augment=augment, generator=generator)
    return _user_pipeline(config, data, Net, make_optimizer=_sgd_nesterov, batches=train_dataloader)


# ---------------------------------------------------------------- 16. labels 1..C instead of 0..C-1
# pytorch/pytorch#15666: a CIFAR-10 variant stored labels 1..10; CrossEntropy needs 0..9 (on CUDA a
# device assert, on CPU "IndexError: Target 10 is out of bounds").

def _label_file_batches(base, shift_back: bool):
    def batches(split, *, shuffle=False, augment=False, generator=None):
        for batch in base.batches(split, shuffle=shuffle, augment=augment, generator=generator):
            labels = batch.y + 1  # the variant's label file is 1-based
            yield dataclasses.replace(batch, y=labels - 1 if shift_back else labels)
    return batches


def labels_one_based_buggy(config, data):
    base = default_pipeline(config, data)
    return _user_pipeline(config, data, Net, batches=_label_file_batches(base, shift_back=False))


def labels_one_based_fixed(config, data):
    base = default_pipeline(config, data)
    return _user_pipeline(config, data, Net, batches=_label_file_batches(base, shift_back=True))


# ---------------------------------------------------------------- 17. pixels divided by 255 twice
# 4uiiurz1/pytorch-nested-unet#62: the Dataset does img.astype('float32') / 255 and then
# albumentations' Normalize(mean, std, max_pixel_value=255) scales mean and std by 255 again, so the
# net sees (x/255 - 255*mean) / (255*std): nearly constant inputs. The U-Net becomes the MNIST CNN;
# optimizer: the pipeline default.

def _albumentations_batches(base, dataset_divides: bool):
    mean, std = base.norm.mean, base.norm.std  # the (mean, std) handed to Normalize

    def batches(split, *, shuffle=False, augment=False, generator=None):
        images = base.data.split(split).images
        labels = base.data.split(split).labels
        n = len(labels)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        for start in range(0, n, base.config.batch_size):
            idx = order[start:start + base.config.batch_size]
            img = images[idx].float()
            if dataset_divides:
                img = img / 255                                # dataset.py
            img = (img - mean * 255.0) / (std * 255.0)         # Normalize(max_pixel_value=255)
            yield Batch(img, labels[idx], idx)
    return batches


def pixels_divided_by_255_twice_buggy(config, data):
    base = default_pipeline(config, data)
    return _user_pipeline(config, data, Net, batches=_albumentations_batches(base, dataset_divides=True))


def pixels_divided_by_255_twice_fixed(config, data):
    base = default_pipeline(config, data)
    return _user_pipeline(config, data, Net, batches=_albumentations_batches(base, dataset_divides=False))


# ---------------------------------------------------------------- 18. everything frozen but BatchNorm
# discuss.pytorch.org/t/84911 (TrainCheck's PT-FORUM-84911 workload): a fine-tuning script sets
# requires_grad=False on every parameter whose name lacks "bn", and on the _fc head too: only the
# BatchNorm affine parameters train. lr 0.01 (fixed: 0.005, as the workload's fix). EfficientNet-B0 on
# CIFAR-100 becomes a BatchNorm CNN on MNIST, trained from scratch.

class BNNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(16)
        self._fc = nn.Linear(16 * 7 * 7, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        x = F.max_pool2d(F.relu(self.bn2(self.conv2(x))), 2)
        return self._fc(torch.flatten(x, 1))


def _frozen_transfer_model():
    model_transfer = BNNet()
    for name, param in model_transfer.named_parameters():
        if "bn" not in name:
            param.requires_grad = False
    for param in model_transfer._fc.parameters():
        param.requires_grad = False
    return model_transfer


def only_batchnorm_trainable_buggy(config, data):
    return _user_pipeline(config, data, _frozen_transfer_model, make_optimizer=_adam(0.01))


def only_batchnorm_trainable_fixed(config, data):
    return _user_pipeline(config, data, BNNet, make_optimizer=_adam(0.005))


# ---------------------------------------------------------------- 19. a module left out of the optimizer's groups
# ohhhyeahhh/SiamCAR#18: the model has an extra `self.down` layer, but the optimizer's parameter
# groups list backbone, neck and head only, so `down` never trains (the authors confirmed and fixed it).
# The grouping (backbone at a fraction of the base lr) follows the report; the numbers are illustrative.

class SiamStyleNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.down = nn.Conv2d(16, 16, 1)
        self.car_head = nn.Linear(16 * 7 * 7, 10)

    def forward(self, x):
        return self.car_head(torch.flatten(F.relu(self.down(self.backbone(x))), 1))


def _siamcar_optimizer(model_params, with_down: bool):
    # The harness hands over the parameters; the user's code groups them by module, as SiamCAR's train.py.
    params = list(model_params)
    backbone, down, head = params[:4], params[4:6], params[6:]
    trainable_params = [{"params": backbone, "lr": 0.1 * 0.01}]
    if with_down:
        trainable_params += [{"params": down, "lr": 0.01}]
    trainable_params += [{"params": head, "lr": 0.01}]
    return optim.SGD(trainable_params, lr=0.01, momentum=0.9, weight_decay=1e-4)


def module_left_out_of_optimizer_buggy(config, data):
    return _user_pipeline(config, data, SiamStyleNet, make_optimizer=lambda p: _siamcar_optimizer(p, with_down=False))


def module_left_out_of_optimizer_fixed(config, data):
    return _user_pipeline(config, data, SiamStyleNet, make_optimizer=lambda p: _siamcar_optimizer(p, with_down=True))


# ---------------------------------------------------------------- 20. scheduler stepped at EPOCH_STARTED
# michuanhaohao/reid-strong-baseline#190: WarmupMultiStepLR is stepped in an EPOCH_STARTED handler,
# before any optimizer.step() of the epoch, so the first value of the warm-up is skipped and every epoch
# trains with the next epoch's lr (PyTorch warns "Detected call of lr_scheduler.step() before
# optimizer.step()"). configs/softmax_triplet.yml: Adam lr 3.5e-4, warm-up factor 0.01 over 10 epochs,
# milestones (40, 70).
# The harness steps an "epoch" scheduler after each epoch, so one extra step at construction is the
# EPOCH_STARTED handler's call before the first epoch.

def _warmup_multistep(optimizer):
    milestones, gamma, warmup_factor, warmup_iters = (40, 70), 0.1, 0.01, 10

    def factor(epoch):
        warm = 1.0
        if epoch < warmup_iters:
            alpha = epoch / warmup_iters
            warm = warmup_factor * (1 - alpha) + alpha
        return warm * gamma ** sum(epoch >= m for m in milestones)
    return lr_scheduler.LambdaLR(optimizer, factor)


def _scheduler_stepped_on_epoch_started(optimizer):
    scheduler = _warmup_multistep(optimizer)
    scheduler.step()  # @trainer.on(Events.EPOCH_STARTED): adjust_learning_rate -> scheduler.step()
    return scheduler


def scheduler_stepped_at_epoch_start_buggy(config, data):
    return _user_pipeline(config, data, Net, make_optimizer=_adam(3.5e-4),
                          make_scheduler=_scheduler_stepped_on_epoch_started, scheduler_interval="epoch")


def scheduler_stepped_at_epoch_start_fixed(config, data):
    return _user_pipeline(config, data, Net, make_optimizer=_adam(3.5e-4),
                          make_scheduler=_warmup_multistep, scheduler_interval="epoch")  # EPOCH_COMPLETED


# ---------------------------------------------------------------- 21. running loss accumulated as a tensor
# samuelyu2002/ImVisible#2: `running_loss += loss` keeps every step's autograd graph alive through the
# running total, and memory grows until the run dies; `+= loss.item()` fixes it.

class RunningLossStep:
    def __init__(self, as_float: bool):
        self.as_float, self.running_loss = as_float, 0.0

    def __call__(self, model, optimizer, criterion, x, y):
        optimizer.zero_grad()
        loss = criterion(model(x), y)
        loss.backward()
        optimizer.step()
        self.running_loss += loss.item() if self.as_float else loss
        return loss.detach()


def running_loss_keeps_graph_buggy(config, data):
    return _user_pipeline(config, data, Net, train_step=RunningLossStep(as_float=False))


def running_loss_keeps_graph_fixed(config, data):
    return _user_pipeline(config, data, Net, train_step=RunningLossStep(as_float=True))


# ---------------------------------------------------------------- 22. a multi-layer net initialised to zero
# tensorflow/tensorflow#3916: the MNIST softmax tutorial's tf.zeros initialisation (fine for the linear
# model) kept for a 784-1000-10 sigmoid MLP: every hidden unit is identical and the first layer gets no
# gradient at all. Gradient descent lr 0.5 as in the tutorial; ported to PyTorch.

class TwoLayerSigmoid(nn.Module):
    def __init__(self, zero_init: bool):
        super().__init__()
        self.hidden = nn.Linear(784, 1000)
        self.out = nn.Linear(1000, 10)
        if zero_init:
            for layer in (self.hidden, self.out):
                nn.init.zeros_(layer.weight)
                nn.init.zeros_(layer.bias)

    def forward(self, x):
        return self.out(torch.sigmoid(self.hidden(x.flatten(1))))


def zero_init_multilayer_buggy(config, data):
    return _user_pipeline(config, data, lambda: TwoLayerSigmoid(zero_init=True),
                          make_optimizer=lambda params: optim.SGD(params, lr=0.5))


def zero_init_multilayer_fixed(config, data):
    return _user_pipeline(config, data, lambda: TwoLayerSigmoid(zero_init=False),
                          make_optimizer=lambda params: optim.SGD(params, lr=0.5))


# ---------------------------------------------------------------- 23. TF keep_prob passed as PyTorch's p
# hassony2/kinetics_i3d_pytorch#6: the port from TensorFlow passes `dropout_keep_prob=1` to
# torch.nn.Dropout, whose p is the probability to DROP: every feature before the logits is zeroed in
# training (and kept in eval). The I3D video net becomes the MNIST CNN with that dropout before fc2.

class I3DStyleNet(Net):
    def __init__(self, p):
        super().__init__()
        self.dropout = nn.Dropout(p)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.relu(self.fc1(torch.flatten(x, 1)))
        return self.fc2(self.dropout(x))


def dropout_keep_prob_as_p_buggy(config, data, dropout_keep_prob=1.0):
    return _user_pipeline(config, data, lambda: I3DStyleNet(dropout_keep_prob))


def dropout_keep_prob_as_p_fixed(config, data, dropout_keep_prob=1.0):
    return _user_pipeline(config, data, lambda: I3DStyleNet(1 - dropout_keep_prob))


# ---------------------------------------------------------------- 24. BatchNorm momentum in TensorFlow's convention
# kazuto1011/deeplab-pytorch#79: BatchNorm2d(momentum=0.999) meant TF's "keep 99.9%", but PyTorch's
# momentum is the weight of the NEW batch: the running statistics become the last batch's statistics.

class MomentumBNNet(BNNet):
    def __init__(self, momentum):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(8, eps=1e-5, momentum=momentum)
        self.bn2 = nn.BatchNorm2d(16, eps=1e-5, momentum=momentum)


def batchnorm_momentum_tf_convention_buggy(config, data):
    return _user_pipeline(config, data, lambda: MomentumBNNet(momentum=0.999))


def batchnorm_momentum_tf_convention_fixed(config, data):
    return _user_pipeline(config, data, lambda: MomentumBNNet(momentum=0.001))


# ---------------------------------------------------------------- 25. test inputs shuffled, test labels not
# dennybritz/cnn-text-classification-tf#136: eval shuffles the test data with np.random.permutation
# but compares predictions with y_test in the original order, so test accuracy is computed against the
# wrong labels. Training is untouched.

def _eval_batches(base, shuffle_test_inputs: bool):
    def batches(split, *, shuffle=False, augment=False, generator=None):
        if split != "test" or not shuffle_test_inputs:
            yield from base.batches(split, shuffle=shuffle, augment=augment, generator=generator)
            return
        x_test = normalize(base.data.test.images, base.norm)
        y_test = base.data.test.labels
        shuffle_indices = torch.from_numpy(np.random.RandomState(10).permutation(np.arange(len(y_test))))
        shuffled_data = x_test[shuffle_indices]
        for start in range(0, len(y_test), base.config.batch_size):
            idx = torch.arange(start, min(start + base.config.batch_size, len(y_test)))
            yield Batch(shuffled_data[idx], y_test[idx], idx)
    return batches


def test_inputs_shuffled_labels_not_buggy(config, data):
    base = default_pipeline(config, data)
    return _user_pipeline(config, data, Net, batches=_eval_batches(base, shuffle_test_inputs=True))


def test_inputs_shuffled_labels_not_fixed(config, data):
    base = default_pipeline(config, data)
    return _user_pipeline(config, data, Net, batches=_eval_batches(base, shuffle_test_inputs=False))


# ---------------------------------------------------------------- 26. view(-1, wrong size) folds features into the batch
# qijiezhao/pseudo-3d-pytorch#28: x.view(-1, sizes[1], sizes[3], sizes[4]) drops a dimension from the
# product, so -1 absorbs it into the batch: "Expected input batch_size (128) to match target
# batch_size (64)". Here the flatten before the classifier uses the wrong feature count.

class WideConvNet(nn.Module):
    def __init__(self, view_features: int):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.view_features = view_features
        self.fc = nn.Linear(view_features, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = x.view(-1, self.view_features)
        return self.fc(x)


def flatten_view_wrong_size_buggy(config, data):
    return _user_pipeline(config, data, lambda: WideConvNet(view_features=16 * 7 * 7))


def flatten_view_wrong_size_fixed(config, data):
    return _user_pipeline(config, data, lambda: WideConvNet(view_features=32 * 7 * 7))


# ---------------------------------------------------------------- 27. LambdaLR's lambda returns the lr itself
# lhoyer/MIC#60 (inherited from SDAT): `LambdaLR(optimizer, lambda x: args.lr * (1 + gamma*x) ** -decay)`
# but the lambda is a FACTOR on the base lr, so the lr is multiplied twice (1e-4 instead of 1e-2).
# SGD(lr=0.01, momentum=0.9, weight_decay=1e-3, nesterov=True), lr_gamma 0.001, lr_decay 0.75, per step.

LR, LR_GAMMA, LR_DECAY = 0.01, 0.001, 0.75


def _mic_optimizer(params):
    return optim.SGD(params, lr=LR, momentum=0.9, weight_decay=1e-3, nesterov=True)


def lambda_lr_returns_lr_buggy(config, data):
    return _user_pipeline(config, data, Net, make_optimizer=_mic_optimizer, scheduler_interval="step",
                          make_scheduler=lambda optimizer: lr_scheduler.LambdaLR(
                              optimizer, lambda x: LR * (1. + LR_GAMMA * float(x)) ** (-LR_DECAY)))


def lambda_lr_returns_lr_fixed(config, data):
    return _user_pipeline(config, data, Net, make_optimizer=_mic_optimizer, scheduler_interval="step",
                          make_scheduler=lambda optimizer: lr_scheduler.LambdaLR(
                              optimizer, lambda x: (1. + LR_GAMMA * float(x)) ** (-LR_DECAY)))


# ---------------------------------------------------------------- 28. optimizer built on an earlier instance of the model
# spro/practical-pytorch#9: the char-RNN notebook instantiates the model twice; the optimizer was
# created with the first instance's parameters and training runs the second, so optimizer.step()
# updates a model nobody uses (and zero_grad never clears the trained model's gradients). The char-RNN
# becomes an MLP with log_softmax + NLLLoss, SGD(lr=0.005) as in the notebook.

class LogSoftmaxMLP(MLP):
    def forward(self, x):
        return F.log_softmax(super().forward(x), dim=1)


def optimizer_on_stale_model_buggy(config, data):
    base = default_pipeline(config, data)
    rnn = LogSoftmaxMLP().to(base.device)
    optimizer = lambda params: torch.optim.SGD(rnn.parameters(), lr=0.005)  # noqa: E731 - built on this instance
    return _user_pipeline(config, data, LogSoftmaxMLP, loss_fn=nn.NLLLoss(), make_optimizer=optimizer)


def optimizer_on_stale_model_fixed(config, data):
    return _user_pipeline(config, data, LogSoftmaxMLP, loss_fn=nn.NLLLoss(),
                          make_optimizer=lambda params: torch.optim.SGD(params, lr=0.005))
