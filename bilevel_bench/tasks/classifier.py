"""Plain supervised training and evaluation of a network whose parameters live in a dict
(the lower variables v), via torch.func.functional_call. Used for the authors' pre-training on
the validation set, for the retrain-from-scratch protocol and for accuracies."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from bilevel_bench.problem import Variables


def parameters_of(model: nn.Module) -> Variables:
    """Fresh leaf copies of a module's parameters: the lower variables of the problem."""
    return {name: p.detach().clone().requires_grad_() for name, p in model.named_parameters()}


def logits(model: nn.Module, params: Variables, x: torch.Tensor) -> torch.Tensor:
    return functional_call(model, params, (x,))


def fit(
    model: nn.Module,
    params: Variables,
    x: torch.Tensor,
    y: torch.Tensor,
    epochs: int,
    lr: float,
    batch_size: int,
    generator: torch.Generator,
) -> None:
    """Adam on the mean cross-entropy, `epochs` shuffled passes; updates params in place."""
    optimizer = torch.optim.Adam(list(params.values()), lr=lr)
    model.train()
    n = len(y)
    batch_size = min(batch_size, n)
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator).to(y.device)
        for batch in order[: n - n % batch_size].view(-1, batch_size):
            loss = F.cross_entropy(logits(model, params, x[batch]), y[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()


@torch.no_grad()
def predict(model: nn.Module, params: Variables, x: torch.Tensor, chunk: int) -> torch.Tensor:
    """Logits in evaluation mode (no dropout), `chunk` examples at a time to bound memory."""
    was_training = model.training
    model.eval()
    out = torch.cat([logits(model, params, part) for part in x.split(chunk)])
    model.train(was_training)
    return out


def accuracy_and_loss(model, params, x, y, chunk) -> tuple[float, float]:
    """(accuracy in percent, mean cross-entropy)."""
    out = predict(model, params, x, chunk)
    return 100 * float((out.argmax(1) == y).float().mean()), float(F.cross_entropy(out, y))
