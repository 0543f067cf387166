"""Training-data poisoning (paper.md 3.4): `task.attack=untargeted | targeted | clean_label`.

The attack optimises poison points (upper level) against a softmax regression trained on clean
data plus the poisons (lower level). The final metrics prove it by retraining a fresh model from
scratch on train + poisons, next to two baselines retrained the same way: no poisons (`clean_*`)
and the same number of random label flips (`flip_*`: random training points, random wrong labels;
for the untargeted attack these are exactly its initial poisons, so the comparison is paired).
"""

from __future__ import annotations

import logging
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
    LinearPoisoning,
    SoftmaxRegression,
    TrainingBudget,
)

log = logging.getLogger(__name__)

ATTACKS = ("untargeted", "targeted", "clean_label")
DIGIT_DATASETS = ("mnist", "fake_poison")
# separate streams so that the attack's randomness never changes the baselines or retraining
RETRAIN_SEED_OFFSET = 2_000_003
FLIP_SEED_OFFSET = 3_000_017


def percent(correct: torch.Tensor) -> float:
    return 100.0 * float(correct.float().mean()) if correct.numel() else float("nan")


class PoisonTask(Task):
    """Shared evaluation: the attack model's f and |grad_v g| while training, retraining at the end."""

    def __init__(self, problem, cfg, clean, flips, test):
        """clean, flips, test: (inputs, labels) pairs in the model's input space."""
        super().__init__(problem, cfg, str(cfg.dataset.name))
        self.clean_inputs, self.clean_labels = clean
        self.flip_inputs, self.flip_labels = flips
        self.x_test, self.y_test = test
        task = cfg.task
        self.pretrain = TrainingBudget(**task.pretrain)
        self.retrain = TrainingBudget(**task.retrain)
        self.retrain_seed = int(cfg.seed) + RETRAIN_SEED_OFFSET

    def prepare(self, u, v):
        """The authors train the attacked model on clean data before the attack (warm start)."""
        if self.pretrain.steps == 0:
            return
        trained = self.problem.classifier.fit(
            self.clean_inputs, self.clean_labels, self.pretrain, v
        )
        with torch.no_grad():
            for k, t in v.items():
                t.copy_(trained[k])

    def evaluate(self, u, v):
        problem = self.problem
        with torch.enable_grad():
            v_live = {k: t.detach().requires_grad_() for k, t in v.items()}
            bound = problem.bind(autodiff.detached(u), None, None)
            f = bound.f(v_live)
            gv = autodiff.grad(bound.g(v_live), v_live)
        return {
            "upper_loss": float(f.detach()),
            "lower_grad_norm": float(autodiff.norm_sq(gv).sqrt()),
            **self.attack_model_metrics(v),
        }

    def attack_model_metrics(self, v) -> dict[str, float]:
        return {}

    def retrained(self, extra_inputs=None, extra_labels=None):
        """A fresh model (same init for every call of a run) trained on clean data + extras."""
        x, y = self.clean_inputs, self.clean_labels
        if extra_inputs is not None:
            x, y = torch.cat([extra_inputs, x]), torch.cat([extra_labels, y])
        classifier = self.problem.classifier
        start = classifier.init(torch.Generator().manual_seed(self.retrain_seed))
        return classifier.fit(x, y, self.retrain, start)

    def final_metrics(self, u, v):
        """Retrain on train + poisons, train only, train + label flips; `v` is never used."""
        models = {
            "": self.retrained(self.problem.poison_inputs(u), self.problem.poison_labels),
            "clean_": self.retrained(),
            "flip_": self.retrained(self.flip_inputs, self.flip_labels),
        }
        metrics = {}
        for prefix, model in models.items():
            metrics.update({prefix + k: x for k, x in self.scores(model).items()})
        save_poison_grid(self, u)
        return metrics

    def scores(self, model) -> dict[str, float]:
        raise NotImplementedError

    def poison_images(self, u) -> torch.Tensor:
        """[n, C, H, W] in [0, 1] for the PNG grid."""
        raise NotImplementedError


class UntargetedTask(PoisonTask):
    def __init__(self, problem, cfg, clean, flips, test, image_shape):
        super().__init__(problem, cfg, clean, flips, test)
        self.image_shape = image_shape

    def attack_model_metrics(self, v):
        p = self.problem
        return {"val_acc": percent(p.classifier.predict(v, p.x_upper) == p.y_upper)}

    def scores(self, model):
        p = self.problem
        return {"test_acc": percent(p.classifier.predict(model, self.x_test) == self.y_test)}

    def poison_images(self, u):
        return u["poisons"].detach().reshape(-1, *self.image_shape)


class TargetedTask(UntargetedTask):
    """Success = percentage of test images of the source class predicted as the target class."""

    def attack_model_metrics(self, v):
        p = self.problem
        return {"val_target_success": percent(p.classifier.predict(v, p.x_upper) == p.y_upper)}

    def scores(self, model):
        predicted = self.problem.classifier.predict(model, self.x_test)
        source = self.y_test == int(self.cfg.task.source_class)
        return {
            "target_success": percent(predicted[source] == int(self.cfg.task.target_class)),
            "test_acc": percent(predicted == self.y_test),
        }


class CleanLabelTask(PoisonTask):
    """Success = percentage of targets classified as the wrong class after retraining."""

    def __init__(self, problem, cfg, clean, flips, test, target_images):
        super().__init__(problem, cfg, clean, flips, test)
        self.target_images = target_images

    def attack_model_metrics(self, v):
        p = self.problem
        predicted = p.classifier.predict(v, p.target_features)
        return {"val_target_success": percent(predicted == p.target_wrong_labels)}

    def scores(self, model):
        p = self.problem
        predicted = p.classifier.predict(model, p.target_features)
        test_predicted = p.classifier.predict(model, self.x_test)
        return {
            "target_success": percent(predicted == p.target_wrong_labels),
            "test_acc": percent(test_predicted == self.y_test),
        }

    def poison_images(self, u):
        # rows of (base, poison, target) so the (in)visibility of the change can be judged
        low, high = self.problem.box
        triples = torch.stack([self.problem.bases, u["poisons"].detach(), self.target_images], 1)
        return ((triples.flatten(0, 1) - low) / (high - low)).clamp(0, 1)


def save_poison_grid(task: PoisonTask, u) -> Path | None:
    """Write poisons.png (and the raw tensor) into the Hydra run directory when there is one."""
    if not bool(task.cfg.task.save_images):
        return None
    try:
        from hydra.core.hydra_config import HydraConfig

        run_dir = Path(HydraConfig.get().runtime.output_dir)
    except ValueError:  # not launched through the Hydra app: no run directory to write into
        log.info("poison: no Hydra run directory, poisons.png not written")
        return None
    from torchvision.utils import save_image

    images = task.poison_images(u).float().cpu()
    nrow = 3 if isinstance(task, CleanLabelTask) else min(10, len(images))
    save_image(images, run_dir / "poisons.png", nrow=nrow, padding=1, pad_value=1.0)
    torch.save(u["poisons"].detach().cpu(), run_dir / "poisons.pt")
    return run_dir / "poisons.png"


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


def _linear_task(cfg, device, generator):
    task = cfg.task
    pools = _digit_pools(cfg)
    n = int(task.num_poisons)
    targeted = task.attack == "targeted"
    if targeted:
        source, target = int(task.source_class), int(task.target_class)
        split = poison_sets.targeted_split(pools, task.split, source, target, generator)
        poisons, labels = poison_sets.swap_poisons(
            split.x_train, split.y_train, n, source, target, generator
        )
        flip_generator = torch.Generator().manual_seed(int(cfg.seed) + FLIP_SEED_OFFSET)
        flips = poison_sets.label_flip_poisons(
            split.x_train, split.y_train, n, pools.num_classes, flip_generator
        )
    else:
        split = poison_sets.untargeted_split(pools, task.split, generator)
        # the authors' initial poisons are random training points with random wrong labels, so
        # the label-flip baseline is the attack's own starting point: a paired comparison
        poisons, labels = poison_sets.label_flip_poisons(
            split.x_train, split.y_train, n, pools.num_classes, generator
        )
        flips = (poisons, labels)
    to = lambda t: t.to(device)  # noqa: E731
    classifier = SoftmaxRegression(
        split.x_train.shape[1],
        pools.num_classes,
        bias=False,
        weight_decay=float(task.weight_decay),
        device=device,
    )
    problem = LinearPoisoning(
        classifier,
        to(split.x_train),
        to(split.y_train),
        to(poisons),
        to(labels),
        to(split.x_upper),
        to(split.y_upper),
        sign=1.0 if targeted else -1.0,
    )
    cls = TargetedTask if targeted else UntargetedTask
    return cls(
        problem,
        cfg,
        clean=(problem.x_train, problem.y_train),
        flips=(to(flips[0]), to(flips[1])),
        test=(to(split.x_test), to(split.y_test)),
        image_shape=pools.image_shape,
    )


def _clean_label_task(cfg, device, generator):
    task, ds = cfg.task, cfg.dataset
    data = poison_sets.load_dogfish(ds.path)
    features = build_features(
        str(ds.features),
        data.x_train.shape[1],
        int(ds.feature_dim),
        int(ds.seed),
        bool(cfg.data.download),
    ).to(device)
    to = lambda t: t.to(device)  # noqa: E731
    x_train, x_test = to(data.x_train), to(data.x_test)
    y_train, y_test = to(data.y_train), to(data.y_test)
    train_features, test_features = extract(features, x_train), extract(features, x_test)
    num_classes = int(max(int(y_train.max()), int(y_test.max())) + 1)
    classifier = SoftmaxRegression(
        train_features.shape[1],
        num_classes,
        bias=True,
        weight_decay=float(task.weight_decay),
        init_std=0.01,
        device=device,
    )
    retrain = TrainingBudget(**task.retrain)
    init_seed = int(cfg.seed) + RETRAIN_SEED_OFFSET
    clean_model = classifier.fit(
        train_features,
        y_train,
        retrain,
        classifier.init(torch.Generator().manual_seed(init_seed)),
    )
    # targets: random test images the clean model gets right (authors: the next such image)
    correct = torch.nonzero(classifier.predict(clean_model, test_features) == y_test).flatten()
    n = int(task.num_poisons)
    if len(correct) < n:
        raise ConfigError(
            f"task.num_poisons={n} targets requested but the clean model classifies only "
            f"{len(correct)} test images correctly; lower task.num_poisons"
        )
    targets = correct[torch.randperm(len(correct), generator=generator)[:n].to(device)]
    bases = _nearest_other_class(train_features, y_train, test_features[targets], y_test[targets])
    epsilon = task.epsilon
    problem = CleanLabelPoisoning(
        classifier,
        features,
        train_features,
        y_train,
        x_train[bases].clone(),
        y_train[bases],
        test_features[targets],
        y_train[bases],  # the wrong label for each target is its base's (correct) label
        beta=float(task.beta),
        box=(float(data.x_train.min()), float(data.x_train.max())),
        epsilon=None if epsilon is None else float(epsilon),
    )
    flip_generator = torch.Generator().manual_seed(int(cfg.seed) + FLIP_SEED_OFFSET)
    return CleanLabelTask(
        problem,
        cfg,
        clean=(train_features, y_train),
        flips=poison_sets.label_flip_poisons(
            train_features, y_train, n, num_classes, flip_generator
        ),
        test=(test_features, y_test),
        target_images=x_test[targets],
    )


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


def build(cfg, device, generator) -> PoisonTask:
    validate(cfg)
    if cfg.task.attack == "clean_label":
        return _clean_label_task(cfg, device, generator)
    return _linear_task(cfg, device, generator)
