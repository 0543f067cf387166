"""Data denoising by importance re-weighting (paper section 3.2).

    u = {"logits": a, one per training example},  w = (tanh(a) + 1) / 2
    g(u, v) = sum_i w_i CE_i(v) / sum_i w_i     on a minibatch of the noisy training set
    f(v)    = mean CE(v)                         on a random minibatch of the clean validation set
    v       = the network's parameters (a dict of leaf tensors, run with functional_call)

The authors' extras, each a flag (defaults = their code): pre-train v on the validation set,
initialise w from agreement of the pre-trained network with each label, rescale w to mean 0.5
after every epoch. The baselines are plain training (solver=erm, no weights, no extras) on the
data chosen by task.fit_on = noisy | val | noisy+val | clean | clean+val (oracles: the noisy
examples dropped, without or with the validation set); fit_on=weighted (the default) is the
bilevel problem.

K runs share one copy of the images: a run's split, its label noise and its batches are index
tensors and labels of its own, drawn from its seed (splits, noise) and its key (batches, dropout).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bilevel_bench import checks, keys
from bilevel_bench.checks import ConfigError
from bilevel_bench.data.images import ImageSets, load_image_sets
from bilevel_bench.data.noise import corrupt_labels
from bilevel_bench.models import build_model
from bilevel_bench.models.networks import DropoutMasks
from bilevel_bench.problem import BilevelProblem, BoundObjectives
from bilevel_bench.tasks import classifier
from bilevel_bench.tasks.base import Task
from bilevel_bench.tasks.detection import detection_metrics

FIT_ON = ("weighted", "noisy", "val", "noisy+val", "clean", "clean+val")
# the rows' `baseline` label of each plain-training pool (the paper's names where it has them:
# Table 2's Oracle = clean + val, Val-Only = val, Train+Val = noisy + val)
BASELINES = {
    "noisy": "noisy",
    "val": "val_only",
    "noisy+val": "train_val",
    "clean": "clean_only",
    "clean+val": "oracle",
}
WEIGHT_CLIP = 1e-5  # the authors clip renormalised weights to [1e-5, 1 - 1e-5]

TASK_RULES = {
    "noise": lambda key, value: _fraction_or_zero(key, value),
    "epochs": checks.positive_int,
    "baseline_epochs": lambda key, value: value is None or checks.positive_int(key, value),
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


# streams of a run's key: the lower level's pool order, validation batches, pre-training,
# retraining (each run's numbers are its own, and the same alone or in a batch)
LOWER_STREAM, UPPER_STREAM, PRETRAIN_STREAM, RETRAIN_STREAM, DROPOUT_STREAM = 11, 12, 13, 14, 15


def weights_of(logits: torch.Tensor) -> torch.Tensor:
    return (torch.tanh(logits) + 1) / 2


def logits_of(weights: torch.Tensor) -> torch.Tensor:
    return torch.atanh(2 * weights.clamp(WEIGHT_CLIP, 1 - WEIGHT_CLIP) - 1)


@dataclass
class ImageBatch:
    """A minibatch of every run: x [K, B, C, H, W], y [K, B], the examples' positions in the
    run's pool or validation set [K, B] (which weights apply), and its dropout masks."""

    x: torch.Tensor
    y: torch.Tensor
    positions: torch.Tensor
    dropout: DropoutMasks


@dataclass
class Pool:
    """What the lower level trains on, per run: rows of the image tensor and their labels."""

    index: torch.Tensor  # [K, P]
    labels: torch.Tensor  # [K, P]


class DenoiseProblem(BilevelProblem):
    """Bilevel re-weighting of a noisy training set against a clean validation set.

    The lower objective trains on a pool: the noisy training set, weighted (fit_on=weighted),
    or the plain data of a baseline. Its batches walk through a fresh permutation of the pool
    at every pass; validation batches are drawn at random, as in the authors' code.
    """

    batched = True

    def __init__(
        self, model, data: ImageSets, pool: Pool, weighted: bool, batch_size: int,
        val_batch_size: int, steps_per_epoch: int, renormalize: bool, name: str,
    ):  # fmt: skip
        self.model, self.data, self.pool, self.name = model, data, pool, name
        self.weighted, self.renormalize = weighted, renormalize
        self.batch_size = min(batch_size, pool.index.shape[1])
        self.val_batch_size = min(val_batch_size, data.val_index.shape[1])
        self.steps_per_epoch = steps_per_epoch
        self.val_labels = data.labels[data.val_index]

    def init_variables(self, generators):
        v = classifier.initial_parameters(self.model, generators)
        if not self.weighted:  # a baseline: plain training, no upper variables
            return {}, v
        index = self.data.train_index
        logits = torch.zeros(index.shape, dtype=torch.get_default_dtype(), device=index.device)
        return {"logits": logits}, v  # w = 0.5 everywhere

    def sample_batches(self, stream):
        key, step = stream["key"], stream["step"]
        pool_size = self.pool.index.shape[1]
        per_pass = pool_size // self.batch_size
        order = keys.permutation(
            keys.derive(keys.derive(key, LOWER_STREAM), step // per_pass), pool_size
        )
        within = torch.arange(self.batch_size, device=step.device)
        chosen = order.gather(1, (step % per_pass)[:, None] * self.batch_size + within)
        # one dropout mask per upper step and level: g (and f) are one function within a step
        dropout = keys.derive(keys.derive(key, DROPOUT_STREAM), step)
        lower_x = self.data.images[self.pool.index.gather(1, chosen)]
        lower = ImageBatch(
            lower_x,
            self.pool.labels.gather(1, chosen),
            chosen,
            DropoutMasks(keys.derive(dropout, 0), self.model, tuple(lower_x.shape[1:])),
        )
        upper_key = keys.derive(keys.derive(key, UPPER_STREAM), step)
        shown = keys.without_replacement(
            upper_key, (self.val_batch_size,), self.data.val_index.shape[1]
        )
        upper_x = self.data.images[self.data.val_index.gather(1, shown)]
        upper = ImageBatch(
            upper_x,
            self.val_labels.gather(1, shown),
            shown,
            DropoutMasks(keys.derive(dropout, 1), self.model, tuple(upper_x.shape[1:])),
        )
        return upper, lower

    def bind(self, u, upper_batch, lower_batch):
        # the weights depend on u and the batch only: gathered once per step
        weights = None
        if self.weighted:
            weights = weights_of(u["logits"].gather(1, lower_batch.positions))

        def f(v):
            batch = upper_batch
            return classifier.example_losses(self.model, v, batch.x, batch.y, batch.dropout).mean(1)

        def g(v):
            batch = lower_batch
            losses = classifier.example_losses(self.model, v, batch.x, batch.y, batch.dropout)
            if weights is None:
                return losses.mean(1)
            return (weights * losses).sum(1) / weights.sum(1)

        return BoundObjectives(f=f, g=g)

    def f(self, u, v, batch):
        return self.bind(u, batch, None).f(v)

    def g(self, u, v, batch):
        return self.bind(u, None, batch).g(v)

    def after_step(self, u, v, stream):
        """The authors' per-epoch rescaling of the weights to mean 0.5 (after an epoch's last
        step), per run and without a host-side test of the step."""
        if not (self.weighted and self.renormalize):
            return u, v
        epoch_done = (stream["step"] % self.steps_per_epoch == 0)[:, None]
        weights = weights_of(u["logits"])
        rescaled = logits_of(weights * (0.5 / weights.mean(1, keepdim=True)))
        return {"logits": torch.where(epoch_done, rescaled, u["logits"])}, v


class DenoiseTask(Task):
    def __init__(self, problem, cfg, seeds, device, is_noisy, noisy_y, steps_per_epoch):
        epochs = cfg.task.epochs
        if cfg.task.fit_on in BASELINES and cfg.task.baseline_epochs is not None:
            epochs = cfg.task.baseline_epochs  # the paper trains its baselines for their own budget
        total = int(epochs) * steps_per_epoch
        if cfg.task.max_steps is not None:  # a cap for costly solvers (fmd) and quick checks
            total = min(total, int(cfg.task.max_steps))
        super().__init__(problem, cfg, problem.name, seeds, device, total)
        self.is_noisy, self.noisy_y = is_noisy, noisy_y  # [K, n_train]
        self.t = cfg.task
        self.run_keys = keys.run_keys(seeds, device)

    def prepare(self, u, v):
        """The authors' extras for the bilevel problem: pre-train v on the validation set, then
        start w at init_agree / init_disagree by whether the network agrees with each label."""
        p, data = self.problem, self.problem.data
        if not p.weighted:
            return u, v
        if self.t.pretrain_epochs > 0:
            v = classifier.fit(
                p.model, v, data.images, data.val_index, p.val_labels, int(self.t.pretrain_epochs),
                float(self.t.pretrain_lr), int(self.t.batch_size),
                keys.derive(self.run_keys, PRETRAIN_STREAM),
            )  # fmt: skip
        if self.t.init_from_agreement:
            predicted = classifier.predict(
                p.model, v, data.images, int(self.t.eval_chunk), data.train_index
            )
            agree = predicted.argmax(-1) == self.noisy_y
            weights = torch.where(agree, float(self.t.init_agree), float(self.t.init_disagree))
            u = {"logits": logits_of(weights.to(u["logits"].dtype))}
        return u, v

    def evaluate(self, u, v):
        p, data, chunk = self.problem, self.problem.data, int(self.t.eval_chunk)
        test_acc, _ = classifier.accuracy_and_loss(p.model, v, data.test_x, data.test_y, chunk)
        val_acc, val_loss = classifier.accuracy_and_loss(
            p.model, v, data.images, p.val_labels, chunk, data.val_index
        )
        columns = {"test_acc": test_acc, "val_acc": val_acc, "upper_loss": val_loss}
        metrics = [
            {name: float(values[run]) for name, values in columns.items()}
            for run in range(self.runs)
        ]
        if p.weighted:
            weights = weights_of(u["logits"].detach())
            for run, point in enumerate(metrics):
                point["mean_weight"] = float(weights[run].mean())
                noisy = self.is_noisy[run]
                if 0 < int(noisy.sum()) < len(noisy):  # detection needs both kinds
                    threshold = float(self.t.detect_threshold)
                    point.update(detection_metrics(weights[run], noisy, threshold))
        return metrics

    def final_metrics(self, u, v, runs, run_dirs):
        """The authors' small-scale protocol: retrain from scratch on {w > threshold} + val."""
        if not (self.t.retrain and self.problem.weighted):
            return {}
        return {run: self._retrained(u, run) for run in runs}

    def _retrained(self, u, run):
        p, data = self.problem, self.problem.data
        kept = weights_of(u["logits"][run].detach()) > float(self.t.retrain_threshold)
        index = torch.cat([data.train_index[run][kept], data.val_index[run]])[None]
        labels = torch.cat([self.noisy_y[run][kept], p.val_labels[run]])[None]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seeds[run] + 7919)
            network = build_model(self.cfg.model, data.input_shape, data.n_classes, verbose=False)
            fresh = {
                name: t.detach().to(data.images.device)[None]
                for name, t in network.named_parameters()
            }
        trained = classifier.fit(
            p.model, fresh, data.images, index, labels, int(self.t.retrain_epochs),
            float(self.t.retrain_lr), int(self.t.batch_size),
            keys.derive(self.run_keys[run : run + 1], RETRAIN_STREAM),
        )  # fmt: skip
        accuracy, _ = classifier.accuracy_and_loss(
            p.model, trained, data.test_x, data.test_y, int(self.t.eval_chunk)
        )
        n_kept = float(kept.sum())
        return {
            "retrain_test_acc": float(accuracy[0]),
            "retrain_kept": n_kept,
            "retrain_kept_noisy_pct": 100
            * float((kept & self.is_noisy[run]).sum())
            / max(n_kept, 1.0),
        }


def _pool(data: ImageSets, noisy_y, is_noisy, fit_on) -> Pool:
    """What the lower level trains on, per run (every run's pool has the same size: the noise
    changes exactly round(noise * n_train) labels in each run)."""
    val_labels = data.labels[data.val_index]
    if fit_on in ("weighted", "noisy"):
        return Pool(data.train_index, noisy_y)
    if fit_on == "val":
        return Pool(data.val_index, val_labels)
    if fit_on == "noisy+val":
        return Pool(
            torch.cat([data.train_index, data.val_index], 1), torch.cat([noisy_y, val_labels], 1)
        )
    runs = len(noisy_y)
    clean_index = data.train_index[~is_noisy].view(runs, -1)
    clean_labels = noisy_y[~is_noisy].view(runs, -1)  # their labels were never changed
    if fit_on == "clean":
        return Pool(clean_index, clean_labels)
    # the ceiling of re-weighting: every clean example the bilevel solvers can see
    return Pool(
        torch.cat([clean_index, data.val_index], 1), torch.cat([clean_labels, val_labels], 1)
    )


def build(cfg, device, seeds) -> DenoiseTask:
    checks.check_section("task", cfg.task, TASK_RULES)
    # a generator of its own per run, so that the split and the noise depend on the seed alone
    generators = [torch.Generator().manual_seed(seed) for seed in seeds]
    data = load_image_sets(
        cfg.dataset, str(cfg.data.root), bool(cfg.data.download), generators, device
    )
    noise = float(cfg.task.noise)
    corrupted = [
        corrupt_labels(data.labels[index].cpu(), noise, data.n_classes, generator)
        for index, generator in zip(data.train_index, generators, strict=True)
    ]
    noisy_y = torch.stack([labels for labels, _ in corrupted]).to(device)
    is_noisy = torch.stack([mask for _, mask in corrupted]).to(device)
    model = build_model(cfg.model, data.input_shape, data.n_classes).to(device)
    # an epoch = one pass over the training set, for the baselines too (same number of steps)
    n_train = data.train_index.shape[1]
    steps_per_epoch = max(n_train // min(int(cfg.task.batch_size), n_train), 1)
    problem = DenoiseProblem(
        model, data, _pool(data, noisy_y, is_noisy, cfg.task.fit_on),
        cfg.task.fit_on == "weighted", int(cfg.task.batch_size), int(cfg.task.val_batch_size),
        steps_per_epoch, bool(cfg.task.renormalize), str(cfg.dataset.name),
    )  # fmt: skip
    task = DenoiseTask(problem, cfg, seeds, device, is_noisy, noisy_y, steps_per_epoch)
    if cfg.task.fit_on in BASELINES:
        task.labels["baseline"] = BASELINES[cfg.task.fit_on]
    return task
