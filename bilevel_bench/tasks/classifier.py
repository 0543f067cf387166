"""Supervised training and evaluation of K networks at once, one parameter set per run (the
lower variables v), via bilevel_bench.models.batched. Used for the authors' pre-training on the
validation set, for the retrain-from-scratch protocol and for accuracies.

Examples are index tensors into one shared image tensor, [K, n] (one index set per run). Random
choices (batch order, dropout masks) come from per-run keys, so run k of a batch trains exactly
as the single run of its seed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bilevel_bench import keys
from bilevel_bench.models import batched
from bilevel_bench.models.networks import DropoutMasks
from bilevel_bench.problem import Variables


def initial_parameters(model: nn.Module, generators: list[torch.Generator]) -> Variables:
    """[K, ...] parameters: the model's layers re-initialised once per run, from its generator
    (torch's layer initialisers draw from the global generator, hence the fork)."""
    runs = []
    for generator in generators:
        seed = int(torch.randint(2**62, (1,), generator=generator))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for module in model.modules():
                if hasattr(module, "reset_parameters"):
                    module.reset_parameters()
            runs.append({name: p.detach().clone() for name, p in model.named_parameters()})
    return {name: torch.stack([run[name] for run in runs]) for name in runs[0]}


def logits(model, params: Variables, x: torch.Tensor, dropout=None, shared_input=False):
    """[K, B, classes]; `dropout` (the batch's DropoutMasks) turns dropout on."""
    return batched.forward(model, params, x, dropout, shared_input=shared_input)


def example_losses(model, params, x, y, dropout=None) -> torch.Tensor:
    """[K, B] cross-entropy of every example of every run."""
    out = logits(model, params, x, dropout)
    return F.cross_entropy(out.flatten(0, 1), y.flatten(), reduction="none").view(y.shape)


def fit(
    model: nn.Module,
    params: Variables,
    images: torch.Tensor,
    index: torch.Tensor,
    labels: torch.Tensor,
    epochs: int,
    lr: float,
    batch_size: int,
    key: torch.Tensor,
) -> Variables:
    """Adam on each run's mean cross-entropy over images[index[k]], labels[k]: `epochs` shuffled
    passes (the last partial batch dropped). Returns the trained parameters.

    One torch.optim.Adam over the stacked parameters and the sum of the runs' losses is every
    run's own Adam: Adam is elementwise and runs share no parameter."""
    params = {k: t.detach().clone().requires_grad_() for k, t in params.items()}
    optimizer = torch.optim.Adam(list(params.values()), lr=lr)
    n = index.shape[1]
    batch_size = min(batch_size, n)
    batches = n // batch_size
    within = torch.arange(batch_size, device=index.device)
    for epoch in range(epochs):
        order = keys.permutation(keys.derive(key, epoch), n)
        for position in range(batches):
            chosen = order[:, position * batch_size + within]
            step_key = keys.derive(key, 1_000_000 + epoch * batches + position)
            x = images[index.gather(1, chosen)]
            dropout = DropoutMasks(step_key, model, tuple(x.shape[1:]))
            with torch.enable_grad():
                loss = example_losses(model, params, x, labels.gather(1, chosen), dropout).mean(1)
                optimizer.zero_grad(set_to_none=True)
                loss.sum().backward()
            optimizer.step()
    return {k: t.detach() for k, t in params.items()}


@torch.no_grad()
def predict(model, params, images, chunk: int, index=None) -> torch.Tensor:
    """[K, N, classes] logits without dropout, `chunk` examples at a time to bound memory: of
    images [N, ...] (the same examples for every run) or, with index [K, N], of each run's own
    images[index[k]] (gathered chunk by chunk, never all at once)."""
    if index is None:
        parts = [logits(model, params, part, shared_input=True) for part in images.split(chunk)]
    else:
        parts = [logits(model, params, images[part]) for part in index.split(chunk, dim=1)]
    return torch.cat(parts, dim=1)


def accuracy_and_loss(model, params, images, labels, chunk, index=None):
    """([K] accuracy in percent, [K] mean cross-entropy); labels [N] (shared) or [K, N]."""
    out = predict(model, params, images, chunk, index)
    labels = labels.expand(out.shape[:2])
    correct = (out.argmax(-1) == labels).to(out.dtype).mean(1)
    loss = F.cross_entropy(out.flatten(0, 1), labels.flatten(), reduction="none")
    return 100 * correct, loss.view(labels.shape).mean(1)
