"""Data denoising by importance re-weighting (paper.md 3.2).

    u = {"logits": a, one per training example},  w = (tanh(a) + 1) / 2
    g(u, v) = sum_i w_i CE_i(v) / sum_i w_i     on a minibatch of the noisy training set
    f(v)    = mean CE(v)                         on a random minibatch of the clean validation set
    v       = the network's parameters (a dict of leaf tensors, run with functional_call)

The authors' extras, each a flag (defaults = their code): pre-train v on the validation set,
initialise w from agreement of the pre-trained network with each label, rescale w to mean 0.5
after every epoch. `solver=erm` gives the baselines: plain unweighted ERM (no extras) on the data
chosen by task.fit_on = noisy | val | noisy+val | clean | clean+val (oracles: the noisy examples
dropped, without or with the validation set).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bilevel_bench import checks
from bilevel_bench.checks import ConfigError
from bilevel_bench.data.images import ImageSets, load_image_sets
from bilevel_bench.data.noise import corrupt_labels
from bilevel_bench.models import build_model
from bilevel_bench.problem import BilevelProblem, BoundObjectives
from bilevel_bench.solvers import solver_class
from bilevel_bench.tasks import classifier
from bilevel_bench.tasks.base import Task
from bilevel_bench.tasks.detection import detection_metrics

FIT_ON = ("noisy", "val", "noisy+val", "clean", "clean+val")
WEIGHT_CLIP = 1e-5  # the authors clip renormalised weights to [1e-5, 1 - 1e-5]

TASK_RULES = {
    "noise": lambda key, value: _fraction_or_zero(key, value),
    "epochs": checks.positive_int,
    "max_steps": lambda key, value: value is None or checks.positive_int(key, value),
    "batch_size": checks.positive_int,
    "val_batch_size": checks.positive_int,
    "fit_on": checks.one_of(*FIT_ON),
    "pretrain_epochs": checks.non_negative_int,
    "pretrain_lr": checks.positive,
    "init_from_agreement": checks.boolean,
    "init_agree": checks.fraction,
    "init_disagree": checks.fraction,
    "renormalize": checks.boolean,
    "detect_threshold": checks.fraction,
    "retrain": checks.boolean,
    "retrain_threshold": checks.fraction,
    "retrain_epochs": checks.positive_int,
    "retrain_lr": checks.positive,
    "eval_chunk": checks.positive_int,
}


def _fraction_or_zero(key, value):
    checks.non_negative(key, value)
    if value > 1:
        raise ConfigError(f"{key} must be in [0, 1] (got {value!r}); e.g. {key}=0.25")


def weights_of(logits: torch.Tensor) -> torch.Tensor:
    return (torch.tanh(logits) + 1) / 2


def logits_of(weights: torch.Tensor) -> torch.Tensor:
    return torch.atanh(2 * weights.clamp(WEIGHT_CLIP, 1 - WEIGHT_CLIP) - 1)


class DenoiseProblem(BilevelProblem):
    """Bilevel re-weighting of a noisy training set against a clean validation set.

    The lower objective trains on a *pool* (the noisy training set for every bilevel solver; the
    set chosen by fit_on for the erm baselines). Its batches walk through seeded permutations
    of the pool; validation batches are drawn at random, as in the authors' code.
    """

    def __init__(
        self, model, data: ImageSets, noisy_y, pool, weighted, batch_size, val_batch_size, name
    ):
        self.model, self.data, self.name = model, data, name
        self.noisy_y = noisy_y  # labels of data.train_x after corruption
        pool_x, pool_y = pool
        self.pool_x, self.pool_y, self.weighted = pool_x, pool_y, weighted
        self.batch_size = min(batch_size, len(pool_y))
        self.val_batch_size = min(val_batch_size, len(data.val_y))
        self.device = data.train_x.device
        self._order, self._cursor = None, 0

    def init_variables(self, generator):
        n_train = len(self.data.train_y)
        u = {"logits": torch.zeros(n_train, device=self.device)}  # w = 0.5 everywhere
        return u, classifier.parameters_of(self.model)

    def sample_batches(self, generator):
        n = len(self.pool_y)
        if self._order is None or self._cursor + self.batch_size > n:
            self._order, self._cursor = torch.randperm(n, generator=generator), 0
        lower = self._order[self._cursor : self._cursor + self.batch_size].to(self.device)
        self._cursor += self.batch_size
        n_val = len(self.data.val_y)
        upper = torch.randperm(n_val, generator=generator)[: self.val_batch_size].to(self.device)
        return upper, lower

    def bind(self, u, upper_batch, lower_batch):
        # the gathers and the weights depend on u and the batch only: computed once per step
        val_x, val_y = self.data.val_x[upper_batch], self.data.val_y[upper_batch]
        x, y = self.pool_x[lower_batch], self.pool_y[lower_batch]
        weights = weights_of(u["logits"][lower_batch]) if self.weighted else None

        def f(v):
            return F.cross_entropy(classifier.logits(self.model, v, val_x), val_y)

        def g(v):
            losses = F.cross_entropy(classifier.logits(self.model, v, x), y, reduction="none")
            if weights is None:
                return losses.mean()
            return (weights * losses).sum() / weights.sum()

        return BoundObjectives(f=f, g=g)

    def f(self, u, v, batch):
        return self.bind(u, batch, None).f(v)

    def g(self, u, v, batch):
        return self.bind(u, None, batch).g(v)


class DenoiseTask(Task):
    def __init__(self, problem, cfg, is_noisy, steps_per_epoch, generator):
        total = int(cfg.task.epochs) * steps_per_epoch
        if cfg.task.max_steps is not None:  # a cap for costly solvers (fmd) and quick checks
            total = min(total, int(cfg.task.max_steps))
        super().__init__(problem, cfg, problem.name, total)
        self.is_noisy, self.steps_per_epoch = is_noisy, steps_per_epoch
        self.t = cfg.task
        self.generator = generator  # pre-training and retraining shuffles

    def prepare(self, u, v):
        """The authors' extras for the bilevel solvers: pre-train v on the validation set, then
        start w at init_agree / init_disagree by whether the network agrees with each label."""
        p, data = self.problem, self.problem.data
        if not p.weighted:
            return
        if self.t.pretrain_epochs > 0:
            classifier.fit(
                p.model, v, data.val_x, data.val_y, int(self.t.pretrain_epochs),
                float(self.t.pretrain_lr), int(self.t.batch_size), self.generator,
            )  # fmt: skip
        if self.t.init_from_agreement:
            predicted = classifier.predict(p.model, v, data.train_x, int(self.t.eval_chunk))
            agree = predicted.argmax(1) == p.noisy_y
            weights = torch.where(agree, float(self.t.init_agree), float(self.t.init_disagree))
            with torch.no_grad():
                u["logits"].copy_(logits_of(weights))

    def after_step(self, step, u, v):
        if self.problem.weighted and self.t.renormalize and step % self.steps_per_epoch == 0:
            with torch.no_grad():
                weights = weights_of(u["logits"])
                u["logits"].copy_(logits_of(weights * (0.5 / weights.mean())))

    def evaluate(self, u, v):
        p, data, chunk = self.problem, self.problem.data, int(self.t.eval_chunk)
        test_acc, _ = classifier.accuracy_and_loss(p.model, v, data.test_x, data.test_y, chunk)
        val_acc, val_loss = classifier.accuracy_and_loss(p.model, v, data.val_x, data.val_y, chunk)
        metrics = {"test_acc": test_acc, "val_acc": val_acc, "upper_loss": val_loss}
        if p.weighted:
            weights = weights_of(u["logits"].detach())
            metrics["mean_weight"] = float(weights.mean())
            if 0 < int(self.is_noisy.sum()) < len(self.is_noisy):  # detection needs both kinds
                metrics.update(
                    detection_metrics(weights, self.is_noisy, float(self.t.detect_threshold))
                )
        return metrics

    def final_metrics(self, u, v):
        """The authors' small-scale protocol: retrain from scratch on {w > threshold} + val."""
        if not (self.t.retrain and self.problem.weighted):
            return {}
        p, data = self.problem, self.problem.data
        kept = weights_of(u["logits"].detach()) > float(self.t.retrain_threshold)
        x = torch.cat([data.train_x[kept], data.val_x])
        y = torch.cat([p.noisy_y[kept], data.val_y])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(self.cfg.seed) + 7919)
            network = build_model(self.cfg.model, data.input_shape, data.n_classes, verbose=False)
            fresh = classifier.parameters_of(network.to(data.test_x.device))
        classifier.fit(
            p.model, fresh, x, y, int(self.t.retrain_epochs), float(self.t.retrain_lr),
            int(self.t.batch_size), self.generator,
        )  # fmt: skip
        chunk = int(self.t.eval_chunk)
        acc, _ = classifier.accuracy_and_loss(p.model, fresh, data.test_x, data.test_y, chunk)
        return {
            "retrain_test_acc": acc,
            "retrain_kept": float(kept.sum()),
            "retrain_kept_noisy_pct": 100
            * float((kept & self.is_noisy).sum())
            / max(float(kept.sum()), 1.0),
        }


def _pool(data: ImageSets, noisy_y, is_noisy, fit_on):
    """(x, y) the lower level trains on."""
    if fit_on == "noisy":
        return data.train_x, noisy_y
    if fit_on == "val":
        return data.val_x, data.val_y
    if fit_on == "noisy+val":
        return torch.cat([data.train_x, data.val_x]), torch.cat([noisy_y, data.val_y])
    clean = ~is_noisy
    if fit_on == "clean":
        return data.train_x[clean], noisy_y[clean]
    # the ceiling of re-weighting: every clean example the bilevel solvers can see
    return torch.cat([data.train_x[clean], data.val_x]), torch.cat([noisy_y[clean], data.val_y])


def _row_name(cfg, baseline: bool) -> str:
    """The result row's `dataset`: baselines say what they trained on, so that their rows stay
    apart in tables (fit_on is a task key and the row has no column for it)."""
    name = str(cfg.dataset.name)
    return f"{name} fit_on={cfg.task.fit_on}" if baseline else name


def build(cfg, device, generator) -> DenoiseTask:
    checks.check_section("task", cfg.task, TASK_RULES)
    # lower-level-only baselines (erm) choose their training data; bilevel solvers re-weight
    baseline = not solver_class(cfg.solver.name).updates_upper
    if cfg.task.fit_on != "noisy" and not baseline:
        raise ConfigError(
            f"task.fit_on={cfg.task.fit_on} is for the baselines (solver=erm); bilevel solvers "
            "always re-weight the noisy training set: use task.fit_on=noisy"
        )
    # a generator of its own, so that the split and the noise depend on the seed alone
    data_generator = torch.Generator().manual_seed(int(cfg.seed))
    data = load_image_sets(
        cfg.dataset, str(cfg.data.root), bool(cfg.data.download), data_generator, device
    )
    noisy_y, is_noisy = corrupt_labels(
        data.train_y.cpu(), float(cfg.task.noise), data.n_classes, data_generator
    )
    noisy_y, is_noisy = noisy_y.to(device), is_noisy.to(device)
    model = build_model(cfg.model, data.input_shape, data.n_classes).to(device)
    problem = DenoiseProblem(
        model, data, noisy_y, _pool(data, noisy_y, is_noisy, cfg.task.fit_on), not baseline,
        int(cfg.task.batch_size), int(cfg.task.val_batch_size), _row_name(cfg, baseline),
    )  # fmt: skip
    # an epoch = one pass over the training set, for the baselines too (same number of steps)
    n_train = len(data.train_y)
    steps_per_epoch = max(n_train // min(int(cfg.task.batch_size), n_train), 1)
    return DenoiseTask(problem, cfg, is_noisy, steps_per_epoch, data_generator)
