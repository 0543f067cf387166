"""The poisoning bilevel problems (paper section 3.4), batched over K runs.

    upper u: poison points (pixels, boxed),   lower v: a softmax regression on train + poisons

Both problems share `SoftmaxRegression`, which is also what the evaluation retrains from scratch,
so the attacked model and the retrained model are the same model with the same loss.

Every variable has a leading run dimension K: u = {"poisons": [K, n, ...]}, v = K regressions.
What the seed changes (a run's split, initial poisons, targets) is held as per-run row indices and
labels over one shared pool (`Examples`), never as K copies of the data.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bilevel_bench.problem import BilevelProblem, BoundObjectives, Variables

OPTIMIZERS = {
    "adam": torch.optim.Adam,
    "rmsprop": torch.optim.RMSprop,
    "sgd": torch.optim.SGD,
}

#: (inputs, labels): inputs [K, N, in] (each run's own) or [N, in] (the same for every run);
#: labels [K, N] or [N] alike.
Part = tuple[torch.Tensor, torch.Tensor]


@dataclass
class TrainingBudget:
    """Full-batch optimiser steps used to (re)train the lower model outside the bilevel loop."""

    steps: int
    lr: float
    optimizer: str = "adam"


@dataclass
class Examples:
    """Each run's examples as rows of one shared pool: run k sees pool[index[k]], labels[k]."""

    pool: torch.Tensor  # [N, ...], shared by the runs
    index: torch.Tensor  # [K, n] rows of the pool
    labels: torch.Tensor  # [K, n]

    def take(self, runs: slice = slice(None)) -> Part:
        """(inputs [k, n, ...], labels [k, n]) of the selected runs, gathered on demand."""
        return self.pool[self.index[runs]], self.labels[runs]


class SoftmaxRegression:
    """K softmax regressions, one per run: logits = x W_k (+ b_k); loss = mean CE +
    weight_decay ||W_k||^2. v = {"W": [K, in, classes]} (+ {"b": [K, classes]}).

    init_std None: Glorot-uniform W (TF's default, the authors' MNIST attacks); otherwise
    W ~ N(0, init_std^2) and b = 0 (the authors' clean-label head).
    """

    def __init__(self, in_dim, num_classes, bias, weight_decay, init_std=None, device="cpu"):
        self.in_dim, self.num_classes, self.bias = in_dim, num_classes, bias
        self.weight_decay, self.init_std = weight_decay, init_std
        self.device = torch.device(device)

    def init(self, generators: Sequence[torch.Generator]) -> Variables:
        """One model per generator (drawn on the CPU, so a seed gives the same model anywhere)."""
        runs = [self._init_one(generator) for generator in generators]
        return {name: torch.stack([run[name] for run in runs]).to(self.device) for name in runs[0]}

    def _init_one(self, generator: torch.Generator) -> Variables:
        shape = (self.in_dim, self.num_classes)
        if self.init_std is None:
            limit = math.sqrt(6.0 / (self.in_dim + self.num_classes))
            weight = (torch.rand(shape, generator=generator) * 2 - 1) * limit
        else:
            weight = torch.randn(shape, generator=generator) * self.init_std
        v = {"W": weight}
        if self.bias:
            v["b"] = torch.zeros(self.num_classes)
        return v

    def logits(self, v: Variables, x: torch.Tensor) -> torch.Tensor:
        """[K, N, classes] for x [K, N, in] or shared x [N, in] (a batched matrix product)."""
        out = torch.matmul(x, v["W"])
        return out + v["b"][:, None, :] if self.bias else out

    def example_losses(self, v: Variables, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """[K, N] cross-entropy of every example of every run."""
        out = self.logits(v, x)
        y = y.expand(out.shape[:2])
        return F.cross_entropy(out.flatten(0, 1), y.flatten(), reduction="none").view(y.shape)

    def cross_entropy(self, v: Variables, parts: Sequence[Part]) -> torch.Tensor:
        """[K]: mean cross-entropy over the examples of all parts together."""
        return torch.cat([self.example_losses(v, x, y) for x, y in parts], dim=1).mean(1)

    def loss(self, v: Variables, parts: Sequence[Part]) -> torch.Tensor:
        """[K]: the training loss, cross-entropy + weight decay."""
        loss = self.cross_entropy(v, parts)
        if self.weight_decay:
            loss = loss + self.weight_decay * (v["W"] ** 2).sum((1, 2))
        return loss

    @torch.no_grad()
    def predict(self, v: Variables, x: torch.Tensor) -> torch.Tensor:
        """[K, N] predicted classes."""
        return self.logits(v, x).argmax(-1)

    def fit(self, start: Variables, budget: TrainingBudget, parts: Sequence[Part]) -> Variables:
        """Full-batch training of every run from `start` (copied) on the parts; returns the
        trained, detached variables.

        One torch.optim optimiser over the stacked variables and the sum of the runs' losses is
        every run's own optimiser: Adam, RMSprop and SGD are elementwise and the runs share no
        variable."""
        v = {k: t.detach().clone().requires_grad_() for k, t in start.items()}
        optimizer = OPTIMIZERS[budget.optimizer](list(v.values()), lr=budget.lr)
        parts = [(x.detach(), y) for x, y in parts]
        with torch.enable_grad():
            for _ in range(budget.steps):
                optimizer.zero_grad(set_to_none=True)
                self.loss(v, parts).sum().backward()
                optimizer.step()
        return {k: t.detach() for k, t in v.items()}


class PoisoningProblem(BilevelProblem):
    """What both attacks share: batched f and g through `bind`, and the training sets the
    evaluation retrains on."""

    batched = True

    def f(self, u, v, batch):
        return self.bind(u, batch, None).f(v)

    def g(self, u, v, batch):
        return self.bind(u, None, batch).g(v)

    def clean_set(self, runs: slice = slice(None)) -> Part:
        """The selected runs' clean training set, in the model's input space."""
        raise NotImplementedError

    def poison_set(self, u: Variables, runs: slice = slice(None)) -> Part:
        """The selected runs' poisons as the model sees them, with their labels (detached)."""
        raise NotImplementedError


class LinearPoisoning(PoisoningProblem):
    """MNIST untargeted / targeted attacks: u = {"poisons": [K, n, pixels]} in [0, 1].

    g = CE(poisons + train) + weight_decay ||W||^2.   f = sign * CE(upper set):
    sign -1 with true labels (untargeted: maximise validation loss), +1 with the target label
    (targeted: make the source-class validation images look like the target class).
    `train`, `upper` and `initial_poisons` are rows of the same shared image tensor.
    """

    def __init__(
        self, classifier, train: Examples, upper: Examples, initial_poisons: Examples, sign
    ):
        self.classifier, self.train, self.upper = classifier, train, upper
        self.initial_poisons, self.sign = initial_poisons, float(sign)

    @property
    def poison_labels(self) -> torch.Tensor:
        return self.initial_poisons.labels

    def init_variables(self, generators):
        poisons, _ = self.initial_poisons.take()
        return {"poisons": poisons}, self.classifier.init(generators)

    def bind(self, u, upper_batch, lower_batch):
        # the runs' sets are gathered once per upper step, not at each of the T lower steps
        train, upper = self.train.take(), self.upper.take()
        poisons = (u["poisons"], self.poison_labels)
        return BoundObjectives(
            f=lambda v: self.sign * self.classifier.cross_entropy(v, [upper]),
            g=lambda v: self.classifier.loss(v, [poisons, train]),
        )

    def project_u(self, u):
        return {"poisons": u["poisons"].clamp(0.0, 1.0)}

    def clean_set(self, runs=slice(None)):
        return self.train.take(runs)

    def poison_set(self, u, runs=slice(None)):
        """What the retrained model sees for the poisons: their pixels."""
        return u["poisons"][runs].detach(), self.poison_labels[runs]


class CleanLabelPoisoning(PoisoningProblem):
    """Clean-label feature-collision attack on frozen features phi (authors' dog-fish set-up).

    u = {"poisons": [K, n, 3, H, W]}, one image per target, initialised at its base image and
    kept in the data's [low, high] box (and optionally within epsilon of the base in L-infinity).
    f = sum_t [ CE(target_t, wrong label) + ||phi(u_t) - phi(target_t)||^2 + beta ||u_t - base_t||^2 ]
    g = mean CE over phi(train) + phi(poisons) with the bases' (correct) labels.

    The training features are shared by the runs; each run has its own bases [K, n, 3, H, W]
    (the centres of its poisons' balls, the size of u), base labels and targets (rows of the test
    features, labelled with the wrong class).
    """

    def __init__(
        self,
        classifier,
        features,
        train_features,
        y_train,
        bases,
        poison_labels,
        targets: Examples,
        beta,
        box,
        epsilon=None,
    ):
        self.classifier, self.features = classifier, features
        self.train_features, self.y_train = train_features, y_train
        self.bases, self.poison_labels, self.targets = bases, poison_labels, targets
        self.beta, self.box, self.epsilon = float(beta), box, epsilon

    def init_variables(self, generators):
        return {"poisons": self.bases.clone()}, self.classifier.init(generators)

    def features_of(self, poisons: torch.Tensor) -> torch.Tensor:
        """[K, n, features]: all K * n images through the network as one batch."""
        return self.features(poisons.flatten(0, 1)).unflatten(0, poisons.shape[:2])

    def bind(self, u, upper_batch, lower_batch):
        # phi(u) depends on u only: one pass through the feature network per upper step
        poison_features = self.features_of(u["poisons"])
        targets = self.targets.take()
        poisons = (poison_features, self.poison_labels)
        clean = (self.train_features, self.y_train)
        return BoundObjectives(
            f=lambda v: self._f(u, poison_features, targets, v),
            g=lambda v: self.classifier.loss(v, [poisons, clean]),
        )

    def _f(self, u, poison_features, targets, v):
        target_features, wrong_labels = targets
        wrong = self.classifier.example_losses(v, target_features, wrong_labels).sum(1)
        collision = ((poison_features - target_features) ** 2).sum((1, 2))
        proximity = ((u["poisons"] - self.bases) ** 2).flatten(1).sum(1)
        return wrong + collision + self.beta * proximity

    def project_u(self, u):
        poisons = u["poisons"].clamp(*self.box)
        if self.epsilon is not None:
            poisons = torch.maximum(
                torch.minimum(poisons, self.bases + self.epsilon), self.bases - self.epsilon
            )
        return {"poisons": poisons}

    def clean_set(self, runs=slice(None)):
        return self.train_features, self.y_train  # the same for every run

    @torch.no_grad()
    def poison_set(self, u, runs=slice(None)):
        return self.features_of(u["poisons"][runs]), self.poison_labels[runs]
