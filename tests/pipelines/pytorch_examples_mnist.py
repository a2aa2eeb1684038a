"""pytorch/examples mnist/main.py as a user plugs it in: its Net (ending in log_softmax), F.nll_loss,
Adadelta(lr=1.0) and StepLR(step_size=1, gamma=0.7) stepped once per epoch, all as the user built them."""
import dataclasses

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.optim as optim
from torch.optim.lr_scheduler import StepLR

from recipe.pipeline import default_pipeline


class Net(nn.Module):
    def __init__(self):
        super(Net, self).__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, 1)
        self.conv2 = nn.Conv2d(32, 64, 3, 1)
        self.dropout1 = nn.Dropout(0.25)
        self.dropout2 = nn.Dropout(0.5)
        self.fc1 = nn.Linear(9216, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x):
        x = self.conv1(x)
        x = F.relu(x)
        x = self.conv2(x)
        x = F.relu(x)
        x = F.max_pool2d(x, 2)
        x = self.dropout1(x)
        x = torch.flatten(x, 1)
        x = self.fc1(x)
        x = F.relu(x)
        x = self.dropout2(x)
        x = self.fc2(x)
        output = F.log_softmax(x, dim=1)
        return output


def build(config, data):
    pipeline = default_pipeline(config, data)
    return dataclasses.replace(
        pipeline, name="pytorch-examples-mnist",
        make_model=lambda: Net().to(pipeline.device),
        loss_fn=F.nll_loss,
        make_optimizer=lambda params: optim.Adadelta(params, lr=1.0),
        make_scheduler=lambda optimizer: StepLR(optimizer, step_size=1, gamma=0.7),
        scheduler_interval="epoch")
