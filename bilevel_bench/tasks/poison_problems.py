"""The poisoning bilevel problems (paper.md 3.4).

    upper u: poison points (pixels, boxed),   lower v: a softmax regression on train + poisons

Both problems share `SoftmaxRegression`, which is also what the evaluation retrains from scratch,
so the attacked model and the retrained model are the same model with the same loss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bilevel_bench.problem import BilevelProblem, BoundObjectives, Variables

OPTIMIZERS = {
    "adam": torch.optim.Adam,
    "rmsprop": torch.optim.RMSprop,
    "sgd": torch.optim.SGD,
}


@dataclass
class TrainingBudget:
    """Full-batch optimiser steps used to (re)train the lower model outside the bilevel loop."""

    steps: int
    lr: float
    optimizer: str = "adam"


class SoftmaxRegression:
    """logits = x W (+ b); loss = mean CE + weight_decay ||W||^2.

    init_std None: Glorot-uniform W (TF's default, the authors' MNIST attacks); otherwise
    W ~ N(0, init_std^2) and b = 0 (the authors' clean-label head).
    """

    def __init__(self, in_dim, num_classes, bias, weight_decay, init_std=None, device="cpu"):
        self.in_dim, self.num_classes, self.bias = in_dim, num_classes, bias
        self.weight_decay, self.init_std = weight_decay, init_std
        self.device = torch.device(device)

    def init(self, generator: torch.Generator) -> Variables:
        shape = (self.in_dim, self.num_classes)
        if self.init_std is None:
            limit = math.sqrt(6.0 / (self.in_dim + self.num_classes))
            weight = (torch.rand(shape, generator=generator) * 2 - 1) * limit
        else:
            weight = torch.randn(shape, generator=generator) * self.init_std
        v = {"W": weight.to(self.device)}
        if self.bias:
            v["b"] = torch.zeros(self.num_classes, device=self.device)
        return v

    def logits(self, v: Variables, x: torch.Tensor) -> torch.Tensor:
        out = x @ v["W"]
        return out + v["b"] if self.bias else out

    def loss(self, v: Variables, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        loss = F.cross_entropy(self.logits(v, x), y)
        if self.weight_decay:
            loss = loss + self.weight_decay * (v["W"] ** 2).sum()
        return loss

    @torch.no_grad()
    def predict(self, v: Variables, x: torch.Tensor) -> torch.Tensor:
        return self.logits(v, x).argmax(dim=1)

    def fit(self, x, y, budget: TrainingBudget, start: Variables) -> Variables:
        """Full-batch training from `start` (copied); returns the trained, detached variables."""
        v = {k: t.detach().clone().requires_grad_() for k, t in start.items()}
        optimizer = OPTIMIZERS[budget.optimizer](list(v.values()), lr=budget.lr)
        x, y = x.detach(), y.detach()
        with torch.enable_grad():
            for _ in range(budget.steps):
                optimizer.zero_grad(set_to_none=True)
                self.loss(v, x, y).backward()
                optimizer.step()
        return {k: t.detach() for k, t in v.items()}


class LinearPoisoning(BilevelProblem):
    """MNIST untargeted / targeted attacks: u = {"poisons": [n, pixels]} in [0, 1].

    g = CE(poisons + train) + weight_decay ||W||^2.   f = sign * CE(upper set):
    sign -1 with true labels (untargeted: maximise validation loss), +1 with the target label
    (targeted: make the source-class validation images look like the target class).
    """

    def __init__(
        self, classifier, x_train, y_train, poisons, poison_labels, x_upper, y_upper, sign
    ):
        self.classifier = classifier
        self.x_train, self.y_train = x_train, y_train
        self.initial_poisons, self.poison_labels = poisons, poison_labels
        self.x_upper, self.y_upper, self.sign = x_upper, y_upper, float(sign)
        self.y_lower = torch.cat([poison_labels, y_train])

    def init_variables(self, generator):
        return {"poisons": self.initial_poisons.clone()}, self.classifier.init(generator)

    def f(self, u, v, batch):
        return self.sign * F.cross_entropy(self.classifier.logits(v, self.x_upper), self.y_upper)

    def g(self, u, v, batch):
        return self.classifier.loss(v, torch.cat([u["poisons"], self.x_train]), self.y_lower)

    def project_u(self, u):
        return {"poisons": u["poisons"].clamp(0.0, 1.0)}

    def poison_inputs(self, u):
        """What the retrained model sees for the poisons: their pixels."""
        return u["poisons"].detach()


class CleanLabelPoisoning(BilevelProblem):
    """Clean-label feature-collision attack on frozen features phi (authors' dog-fish set-up).

    u = {"poisons": [k, 3, H, W]}, one image per target, initialised at its base image and kept
    in the data's [low, high] box (and optionally within epsilon of the base in L-infinity).
    f = sum_t [ CE(target_t, wrong label) + ||phi(u_t) - phi(target_t)||^2 + beta ||u_t - base_t||^2 ]
    g = mean CE over phi(train) + phi(poisons) with the bases' (correct) labels.
    """

    def __init__(
        self,
        classifier,
        features,
        train_features,
        y_train,
        bases,
        poison_labels,
        target_features,
        target_wrong_labels,
        beta,
        box,
        epsilon=None,
    ):
        self.classifier, self.features = classifier, features
        self.train_features, self.y_train = train_features, y_train
        self.bases, self.poison_labels = bases, poison_labels
        self.target_features, self.target_wrong_labels = target_features, target_wrong_labels
        self.beta, self.box, self.epsilon = float(beta), box, epsilon
        self.y_lower = torch.cat([poison_labels, y_train])

    def init_variables(self, generator):
        return {"poisons": self.bases.clone()}, self.classifier.init(generator)

    def bind(self, u, upper_batch, lower_batch):
        # phi(u) depends on u only: one pass through the feature network per upper step
        poison_features = self.features(u["poisons"])
        return BoundObjectives(
            f=lambda v: self._f(u, poison_features, v), g=lambda v: self._g(poison_features, v)
        )

    def _f(self, u, poison_features, v):
        wrong = F.cross_entropy(
            self.classifier.logits(v, self.target_features),
            self.target_wrong_labels,
            reduction="sum",
        )
        collision = ((poison_features - self.target_features) ** 2).sum()
        proximity = ((u["poisons"] - self.bases) ** 2).sum()
        return wrong + collision + self.beta * proximity

    def _g(self, poison_features, v):
        return self.classifier.loss(
            v, torch.cat([poison_features, self.train_features]), self.y_lower
        )

    def f(self, u, v, batch):
        return self.bind(u, batch, None).f(v)

    def g(self, u, v, batch):
        return self.bind(u, None, batch).g(v)

    def project_u(self, u):
        poisons = u["poisons"].clamp(*self.box)
        if self.epsilon is not None:
            poisons = torch.maximum(
                torch.minimum(poisons, self.bases + self.epsilon), self.bases - self.epsilon
            )
        return {"poisons": poisons}

    @torch.no_grad()
    def poison_inputs(self, u):
        return self.features(u["poisons"].detach())
