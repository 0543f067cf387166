"""Training-data poisoning (paper section 3.4): `task.attack=untargeted | targeted | clean_label`.

The attack optimises poison points (upper level) against a softmax regression trained on clean
data plus the poisons (lower level). The final metrics prove it by retraining a fresh model from
scratch on train + poisons, next to two baselines retrained the same way: no poisons (`clean_*`)
and the same number of random label flips (`flip_*`: random training points, random wrong labels;
for the untargeted attack these are exactly its initial poisons, so the comparison is paired).

K runs (seeds) are one batched problem over one copy of the data: each run's split, poisons,
label flips, targets and bases are drawn at build time from torch.Generator().manual_seed(seed)
and kept as row indices and labels, so a seed gets the same sets alone or in a batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from bilevel_bench import autodiff, checks
from bilevel_bench.checks import ConfigError
from bilevel_bench.data import poison_sets
from bilevel_bench.models.inception_features import build_features, extract
from bilevel_bench.tasks.base import Task
from bilevel_bench.tasks.poison_problems import (
    OPTIMIZERS,
    CleanLabelPoisoning,
    Examples,
    LinearPoisoning,
    SoftmaxRegression,
    TrainingBudget,
)

ATTACKS = ("untargeted", "targeted", "clean_label")
DIGIT_DATASETS = ("mnist", "fake_poison")
# separate streams so that the attack's randomness never changes the baselines or retraining
RETRAIN_SEED_OFFSET = 2_000_003
FLIP_SEED_OFFSET = 3_000_017


def percent(hits: torch.Tensor, among: torch.Tensor | None = None) -> list[float]:
    """Per run (rows of [K, N] booleans): the percentage of hits among the marked examples (all
    by default); NaN for a run with none marked."""
    among = torch.ones_like(hits) if among is None else among
    counted = (hits & among).sum(1).to(torch.float64)
    return (100.0 * counted / among.sum(1)).tolist()


def save_poison_grid(images: torch.Tensor, poisons: torch.Tensor, directory: Path, nrow: int):
    """poisons.png (a grid of `images`, values in [0, 1]) and poisons.pt (the raw poisons)."""
    from torchvision.utils import save_image

    save_image(images.float().cpu(), directory / "poisons.png", nrow=nrow, padding=1, pad_value=1)
    torch.save(poisons.detach().cpu(), directory / "poisons.pt")


class PoisonTask(Task):
    """Shared evaluation: the attack model's f and |grad_v g| while training, retraining at the end."""

    #: images per row of the poison grid
    grid_columns = 10

    def __init__(self, problem, cfg, seeds, device, flips: Examples):
        """flips: each run's label-flip baseline (rows of the model's inputs, wrong labels)."""
        super().__init__(problem, cfg, str(cfg.dataset.name), seeds, device)
        self.flips = flips
        self.pretrain = TrainingBudget(**cfg.task.pretrain)
        self.retrain = TrainingBudget(**cfg.task.retrain)
        self.save_images = bool(cfg.task.save_images)

    def prepare(self, u, v):
        """The authors train the attacked model on clean data before the attack (warm start)."""
        if self.pretrain.steps == 0:
            return u, v
        problem = self.problem
        return u, problem.classifier.fit(v, self.pretrain, [problem.clean_set()])

    def evaluate(self, u, v):
        problem = self.problem
        with torch.enable_grad():
            v_live = autodiff.leaves(v)
            bound = problem.bind(autodiff.detached(u), None, None)
            f = bound.f(v_live)
            gv = autodiff.grad(bound.g(v_live), v_live)
        columns = {
            "upper_loss": f.detach().tolist(),
            "lower_grad_norm": autodiff.norm_sq(gv).sqrt().tolist(),
            **self.attack_model_metrics(v),
        }
        return [{name: values[run] for name, values in columns.items()} for run in range(self.runs)]

    def attack_model_metrics(self, v) -> dict[str, list[float]]:
        """Per-run metrics of the attacked model itself, logged while training."""
        return {}

    def final_metrics(self, u, v, runs, run_dirs):
        """Retrain every listed run from scratch (`v` is never used) and write its poisons."""
        metrics = {}
        for run in runs:
            metrics[run] = self.retrained_scores(u, run)
            if self.save_images:
                images = self.poison_images(u, run)
                save_poison_grid(images, u["poisons"][run], run_dirs[run], self.grid_columns)
        return metrics

    def retrained_scores(self, u, run: int) -> dict[str, float]:
        """Scores of fresh models trained on train + poisons, train only, train + label flips."""
        rows = slice(run, run + 1)
        clean = self.problem.clean_set(rows)
        trainings = {
            "": [self.problem.poison_set(u, rows), clean],
            "clean_": [clean],
            "flip_": [self.flips.take(rows), clean],
        }
        metrics = {}
        for prefix, parts in trainings.items():
            model = self.retrained(parts, run)
            metrics.update({prefix + k: x for k, x in self.scores(model, rows).items()})
        return metrics

    def retrained(self, parts, run: int):
        """A fresh model of the run (the same start for every call) trained on the parts."""
        classifier = self.problem.classifier
        seed = self.seeds[run] + RETRAIN_SEED_OFFSET
        start = classifier.init([torch.Generator().manual_seed(seed)])
        return classifier.fit(start, self.retrain, parts)

    def scores(self, model, rows: slice) -> dict[str, float]:
        """Metrics of a retrained model (one run: the `rows` slice of the batch)."""
        raise NotImplementedError

    def poison_images(self, u, run: int) -> torch.Tensor:
        """[images, C, H, W] in [0, 1] for the run's PNG grid."""
        raise NotImplementedError


class UntargetedTask(PoisonTask):
    def __init__(self, problem, cfg, seeds, device, flips, test: Examples, image_shape):
        super().__init__(problem, cfg, seeds, device, flips)
        self.test, self.image_shape = test, image_shape

    def attack_model_metrics(self, v):
        x, y = self.problem.upper.take()
        return {"val_acc": percent(self.problem.classifier.predict(v, x) == y)}

    def scores(self, model, rows):
        x, y = self.test.take(rows)
        return {"test_acc": percent(self.problem.classifier.predict(model, x) == y)[0]}

    def poison_images(self, u, run):
        return u["poisons"][run].detach().reshape(-1, *self.image_shape)


class TargetedTask(UntargetedTask):
    """Success = percentage of test images of the source class predicted as the target class."""

    def attack_model_metrics(self, v):
        x, target = self.problem.upper.take()  # source-class images labelled as the target
        return {"val_target_success": percent(self.problem.classifier.predict(v, x) == target)}

    def scores(self, model, rows):
        x, y = self.test.take(rows)
        predicted = self.problem.classifier.predict(model, x)
        source = y == int(self.cfg.task.source_class)
        return {
            "target_success": percent(predicted == int(self.cfg.task.target_class), source)[0],
            "test_acc": percent(predicted == y)[0],
        }


class CleanLabelTask(PoisonTask):
    """Success = percentage of targets classified as the wrong class after retraining."""

    grid_columns = 3  # rows of (base, poison, target)

    def __init__(self, problem, cfg, seeds, device, flips, test, target_images):
        """test: (features, labels), shared by the runs; target_images: [K, n, 3, H, W]."""
        super().__init__(problem, cfg, seeds, device, flips)
        self.test_features, self.y_test = test
        self.target_images = target_images

    def attack_model_metrics(self, v):
        features, wrong = self.problem.targets.take()
        predicted = self.problem.classifier.predict(v, features)
        return {"val_target_success": percent(predicted == wrong)}

    def scores(self, model, rows):
        classifier = self.problem.classifier
        features, wrong = self.problem.targets.take(rows)
        return {
            "target_success": percent(classifier.predict(model, features) == wrong)[0],
            "test_acc": percent(classifier.predict(model, self.test_features) == self.y_test)[0],
        }

    def poison_images(self, u, run):
        # rows of (base, poison, target) so the (in)visibility of the change can be judged
        low, high = self.problem.box
        images = [self.problem.bases[run], u["poisons"][run].detach(), self.target_images[run]]
        triples = torch.stack([image.float().cpu() for image in images], 1)
        return ((triples.flatten(0, 1) - low) / (high - low)).clamp(0, 1)


# --- building -----------------------------------------------------------------------------------


def validate(cfg) -> None:
    task = cfg.task
    checks.one_of(*ATTACKS)("task.attack", task.attack)
    checks.positive_int("task.num_poisons", task.num_poisons)
    for section in ("pretrain", "retrain"):
        checks.check_section(
            f"task.{section}",
            task[section],
            {
                "steps": checks.non_negative_int,
                "lr": checks.positive,
                "optimizer": checks.one_of(*OPTIMIZERS),
            },
        )
    checks.boolean("task.save_images", task.save_images)
    name = cfg.dataset.name
    wanted = ("dogfish",) if task.attack == "clean_label" else DIGIT_DATASETS
    if name not in wanted:
        raise ConfigError(
            f"task.attack={task.attack} needs dataset={' or dataset='.join(wanted)} "
            f"(got dataset={name})"
        )


def _digit_pools(cfg):
    ds = cfg.dataset
    if ds.name == "mnist":
        return poison_sets.mnist_pools(cfg.data.root, bool(cfg.data.download))
    return poison_sets.fake_digit_pools(
        int(ds.side), int(ds.train_size), int(ds.test_size), float(ds.noise), int(ds.seed)
    )


@dataclass
class RunSets:
    """One run's sets of a digit attack, each as (rows of the pools, labels)."""

    train: tuple[torch.Tensor, torch.Tensor]
    upper: tuple[torch.Tensor, torch.Tensor]
    test: tuple[torch.Tensor, torch.Tensor]
    poisons: tuple[torch.Tensor, torch.Tensor]  # the initial poisons and their labels
    flips: tuple[torch.Tensor, torch.Tensor]


def _run_sets(pools: poison_sets.DigitPools, task, seed: int) -> RunSets:
    """A run's split, initial poisons and label flips, drawn from its seed alone."""
    generator = torch.Generator().manual_seed(seed)
    n = int(task.num_poisons)
    if task.attack == "targeted":
        source, target = int(task.source_class), int(task.target_class)
        split = poison_sets.targeted_split(pools, task.split, source, target, generator)
        y_train = pools.labels[split.train]
        poisons = poison_sets.swap_poisons(y_train, n, source, target, generator)
        flip_generator = torch.Generator().manual_seed(seed + FLIP_SEED_OFFSET)
        flips = poison_sets.label_flip_poisons(y_train, n, pools.num_classes, flip_generator)
    else:
        split = poison_sets.untargeted_split(pools, task.split, generator)
        y_train = pools.labels[split.train]
        # the authors' initial poisons are random training points with random wrong labels, so
        # the label-flip baseline is the attack's own starting point: a paired comparison
        poisons = flips = poison_sets.label_flip_poisons(y_train, n, pools.num_classes, generator)
    return RunSets(
        train=(split.train, y_train),
        upper=(split.upper, split.upper_labels),
        test=(split.test, pools.labels[split.test]),
        poisons=(split.train[poisons[0]], poisons[1]),  # positions in the train set -> rows
        flips=(split.train[flips[0]], flips[1]),
    )


def _stacked(pool: torch.Tensor, pairs, device) -> Examples:
    """The runs' (rows, labels) pairs as one Examples over the shared pool."""
    rows, labels = zip(*pairs, strict=True)
    return Examples(pool, torch.stack(rows).to(device), torch.stack(labels).to(device))


def _linear_task(cfg, device, seeds):
    task = cfg.task
    pools = _digit_pools(cfg)
    sets = [_run_sets(pools, task, seed) for seed in seeds]
    images = pools.images.to(device=device, dtype=torch.get_default_dtype())

    def stacked(name: str) -> Examples:
        return _stacked(images, [getattr(run, name) for run in sets], device)

    targeted = task.attack == "targeted"
    classifier = SoftmaxRegression(
        images.shape[1],
        pools.num_classes,
        bias=False,
        weight_decay=float(task.weight_decay),
        device=device,
    )
    problem = LinearPoisoning(
        classifier,
        stacked("train"),
        stacked("upper"),
        stacked("poisons"),
        sign=1.0 if targeted else -1.0,
    )
    cls = TargetedTask if targeted else UntargetedTask
    return cls(
        problem,
        cfg,
        seeds,
        device,
        flips=stacked("flips"),
        test=stacked("test"),
        image_shape=pools.image_shape,
    )


def _dogfish_features(cfg, device):
    """(images on the CPU, the frozen feature network, train and test features on the device):
    the device never holds the full-size images, only their features and each run's bases."""
    ds = cfg.dataset
    data = poison_sets.load_dogfish(ds.path)
    features = build_features(
        str(ds.features),
        data.x_train.shape[1],
        int(ds.feature_dim),
        int(ds.seed),
        bool(cfg.data.download),
    ).to(device)
    return data, features, extract(features, data.x_train), extract(features, data.x_test)


def _clean_label_task(cfg, device, seeds):
    task = cfg.task
    data, features, train_features, test_features = _dogfish_features(cfg, device)
    y_train, y_test = data.y_train.to(device), data.y_test.to(device)
    num_classes = int(max(int(data.y_train.max()), int(data.y_test.max())) + 1)
    classifier = SoftmaxRegression(
        train_features.shape[1],
        num_classes,
        bias=True,
        weight_decay=float(task.weight_decay),
        init_std=0.01,
        device=device,
    )
    n = int(task.num_poisons)
    clean = (train_features, y_train)
    test = (test_features, y_test)
    budget = TrainingBudget(**task.retrain)
    picks = [_targets_and_bases(classifier, budget, clean, test, n, seed) for seed in seeds]
    targets = torch.stack([t for t, _ in picks])
    bases = torch.stack([b for _, b in picks])
    epsilon = task.epsilon
    problem = CleanLabelPoisoning(
        classifier,
        features,
        train_features,
        y_train,
        data.x_train[bases.cpu()].to(device=device, dtype=torch.get_default_dtype()),
        y_train[bases],
        # the wrong label for each target is its base's (correct) label
        Examples(test_features, targets, y_train[bases]),
        beta=float(task.beta),
        box=(float(data.x_train.min()), float(data.x_train.max())),
        epsilon=None if epsilon is None else float(epsilon),
    )
    flips = [
        poison_sets.label_flip_poisons(
            data.y_train, n, num_classes, torch.Generator().manual_seed(seed + FLIP_SEED_OFFSET)
        )
        for seed in seeds
    ]
    return CleanLabelTask(
        problem,
        cfg,
        seeds,
        device,
        flips=_stacked(train_features, flips, device),
        test=test,
        target_images=data.x_test[targets.cpu()],
    )


def _targets_and_bases(classifier, budget, clean, test, n: int, seed: int):
    """One run's targets, random test images that the run's clean model gets right (authors:
    the next such image), and their bases, the nearest training image of another class.

    The clean model is trained for this run alone (not batched with the other runs), so that
    this discrete choice is bit for bit the same whether the seed runs alone or in a batch."""
    (train_features, y_train), (test_features, y_test) = clean, test
    start = classifier.init([torch.Generator().manual_seed(seed + RETRAIN_SEED_OFFSET)])
    clean_model = classifier.fit(start, budget, [clean])
    right = classifier.predict(clean_model, test_features)[0] == y_test
    correct = torch.nonzero(right).flatten()
    if len(correct) < n:
        raise ConfigError(
            f"task.num_poisons={n} targets requested but the clean model of seed {seed} "
            f"classifies only {len(correct)} test images correctly; lower task.num_poisons"
        )
    order = torch.randperm(len(correct), generator=torch.Generator().manual_seed(seed))
    targets = correct[order[:n].to(correct.device)]
    bases = _nearest_other_class(train_features, y_train, test_features[targets], y_test[targets])
    return targets, bases


def _nearest_other_class(train_features, y_train, target_features, target_labels):
    """For each target the closest training point (feature space) of another class, unused so far."""
    distances = torch.cdist(target_features, train_features)
    distances[target_labels[:, None] == y_train[None, :]] = float("inf")
    chosen = []
    for row in distances:
        row = row.clone()
        if chosen:
            row[torch.stack(chosen)] = float("inf")
        chosen.append(row.argmin())
    return torch.stack(chosen)


def build(cfg, device, seeds) -> PoisonTask:
    validate(cfg)
    if cfg.task.attack == "clean_label":
        return _clean_label_task(cfg, device, seeds)
    return _linear_task(cfg, device, seeds)
