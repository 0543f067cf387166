"""Few-shot learning with a shared representation (paper section 3.3).

    upper u: encoder parameters, [K, ...] per parameter (one encoder per run, applied with
             bilevel_bench.models.batched.forward)
    lower v: one cosine-similarity head per task of the meta-batch, held as two batched tensors
             weight [K, tasks, dim, ways] and bias [K, tasks, ways]
    g = mean support cross-entropy over a run's tasks,  f = mean query cross-entropy ([K] each)

`bind` runs the encoder once per call: the solvers bind once with u detached for their T lower
steps (features computed once, no graph into the encoder) and once with u live for the upper
step, so second-order terms flow through the heads and once through the encoder.

Every run draws its own episodes and fresh heads from its random stream (bilevel_bench.keys),
as index tensors into the one copy of the images on the device.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from bilevel_bench import autodiff, checks, keys
from bilevel_bench.data import fake_fewshot, miniimagenet, omniglot
from bilevel_bench.data.episodes import Episodes, EpisodeSampler, LabelledImages, task_keys
from bilevel_bench.models import batched
from bilevel_bench.models.fewshot import ENCODERS, cosine_logits
from bilevel_bench.problem import BilevelProblem, BoundObjectives, Stream, Variables
from bilevel_bench.tasks.base import Task

LOADERS = {"omniglot": omniglot, "miniimagenet": miniimagenet, "fake_fewshot": fake_fewshot}

TASK_KEYS = {
    "ways": checks.positive_int,
    "shots": checks.positive_int,
    "queries": checks.positive_int,
    "meta_batch": checks.positive_int,
    "head_scale": checks.positive,
    "head_init_std": checks.positive,
    "reset_lower": checks.boolean,
    "eval_episodes": checks.positive_int,
    "eval_queries": checks.positive_int,
    "eval_steps": checks.positive_int,
    "eval_lr": checks.positive,
    "eval_chunk": checks.positive_int,
}

# sub-streams of a run's training key, and of a task's key for its fresh head (the episode
# sampler uses 1 and 2 of a task's key)
EPISODES_STREAM, HEADS_STREAM = 1, 2
HEAD_OF_TASK = 3


def reinitialised_parameters(encoder: nn.Module, seed: int) -> Variables:
    """The encoder's parameters as its layers' own initialisation draws them from `seed`.

    On a CPU copy, so that a seed gives the same encoder on every device, and under fork_rng,
    so that the global random state is left as it was."""
    fresh = copy.deepcopy(encoder).cpu()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for layer in fresh.modules():
            if hasattr(layer, "reset_parameters"):
                layer.reset_parameters()
    return {name: p.detach() for name, p in fresh.named_parameters()}


class FewShotProblem(BilevelProblem):
    batched = True

    def __init__(
        self,
        encoder: nn.Module,
        sampler: EpisodeSampler,
        meta_batch: int,
        head_scale: float,
        head_init_std: float,
        feature_dim: int,
        name: str,
        reset_lower: bool = True,
    ):
        self.encoder, self.sampler, self.meta_batch = encoder, sampler, meta_batch
        self.head_scale, self.head_init_std = head_scale, head_init_std
        self.feature_dim, self.ways, self.name = feature_dim, sampler.ways, name
        self.reset_lower = reset_lower
        self.device = sampler.images.device
        self.dtype = torch.get_default_dtype()

    # --- variables ----------------------------------------------------------------------------
    def init_variables(self, generators):
        runs = [self._init_run(generator) for generator in generators]
        return tuple(
            {name: torch.stack([run[side][name] for run in runs]) for name in runs[0][side]}
            for side in (0, 1)
        )

    def _init_run(self, generator: torch.Generator) -> tuple[Variables, Variables]:
        """One run's encoder and heads, from that run's generator alone (drawn on the CPU, so a
        seed gives the same start on every device)."""
        seed = int(torch.randint(2**62, (), generator=generator))
        encoder = reinitialised_parameters(self.encoder, seed)
        shape = (self.meta_batch, self.feature_dim, self.ways)
        weight = self.head_init_std * torch.randn(shape, generator=generator, dtype=self.dtype)
        heads = {"weight": weight, "bias": torch.zeros(shape[0], self.ways, dtype=self.dtype)}
        return tuple(
            {name: t.to(self.device) for name, t in side.items()} for side in (encoder, heads)
        )

    def fresh_heads(self, keys_of_tasks: torch.Tensor) -> Variables:
        """A new head per task key (keys [..., tasks]): N(0, head_init_std^2) weights, zero bias,
        as the authors initialise them."""
        shape = (self.feature_dim, self.ways)
        noise = keys.normal(keys.derive(keys_of_tasks, HEAD_OF_TASK), shape, self.dtype)
        bias = torch.zeros(*keys_of_tasks.shape, self.ways, dtype=self.dtype, device=self.device)
        return {"weight": self.head_init_std * noise, "bias": bias}

    # --- objectives ---------------------------------------------------------------------------
    def features(self, u: Variables, images: torch.Tensor) -> torch.Tensor:
        """[K, tasks, n, c, h, w] -> [K, tasks, n, dim]: one encoder pass over each run's images,
        all its tasks together (BatchNorm normalises with the statistics of those images)."""
        flat = batched.forward(self.encoder, u, images.flatten(1, 2))
        return flat.unflatten(1, images.shape[1:3])

    def per_task_loss(self, features, heads: Variables, labels) -> torch.Tensor:
        """[K, tasks]: each task's mean cross-entropy."""
        logits = cosine_logits(features, heads["weight"], heads["bias"], self.head_scale)
        losses = F.cross_entropy(logits.flatten(0, -2), labels.flatten(), reduction="none")
        return losses.view(labels.shape).mean(-1)

    def loss(self, features, v: Variables, labels) -> torch.Tensor:
        """[K]: the mean over a run's tasks of each task's mean cross-entropy."""
        return self.per_task_loss(features, v, labels).mean(-1)

    def f(self, u, v, batch: LabelledImages):
        return self.loss(self.features(u, batch.images), v, batch.labels)

    g = f  # the same loss: f sees the query sets, g the support sets (see sample_batches)

    def _step_key(self, stream: Stream, sub_stream: int) -> torch.Tensor:
        return keys.derive(keys.derive(stream["key"], sub_stream), stream["step"])

    def sample_batches(self, stream):
        """One meta-batch of episodes per run: the query sets feed f, the support sets feed g."""
        episodes = self.sampler.sample(self._step_key(stream, EPISODES_STREAM), self.meta_batch)
        return episodes.query, episodes.support

    def bind(self, u, upper_batch, lower_batch) -> BoundObjectives:
        # Support and query go through the encoder separately: BatchNorm statistics of the
        # support images never see the queries (no transductive leak into g).
        support = self.features(u, lower_batch.images)
        query = self.features(u, upper_batch.images)
        return BoundObjectives(
            f=lambda v: self.loss(query, v, upper_batch.labels),
            g=lambda v: self.loss(support, v, lower_batch.labels),
        )

    def after_step(self, u, v, stream):
        """Fresh heads for the next meta-batch, as the authors (task.reset_lower); the solver
        keeps the optimiser state of v."""
        if not self.reset_lower:
            return u, v
        heads_key = self._step_key(stream, HEADS_STREAM)
        return u, self.fresh_heads(task_keys(heads_key, self.meta_batch))


# --- meta-test ----------------------------------------------------------------------------------
def fit_heads(problem: FewShotProblem, heads: Variables, support, labels, steps: int, lr: float):
    """`steps` Adam(lr) steps on the heads (in place) for the support features.

    One Adam over the stacked heads is one Adam per head (Adam is elementwise), and the gradient
    of the summed per-task losses gives each head its own task's mean-loss gradient, so every
    run and task gets the trajectory a fit of that head alone would have."""
    optimizer = torch.optim.Adam(list(heads.values()), lr=lr)
    with torch.enable_grad():
        for _ in range(steps):
            optimizer.zero_grad(set_to_none=True)
            problem.per_task_loss(support, heads, labels).sum().backward()
            optimizer.step()


def meta_test_chunk(problem: FewShotProblem, u: Variables, episodes: Episodes, steps, lr):
    """The authors' protocol on some episodes: fresh heads fitted on the support features
    (encoder frozen), then each episode's query accuracy and loss ([K, tasks] each)."""
    with torch.no_grad():
        support = problem.features(u, episodes.support.images)
        query = problem.features(u, episodes.query.images)
    heads = autodiff.leaves(problem.fresh_heads(episodes.task_keys))
    fit_heads(problem, heads, support, episodes.support.labels, steps, lr)
    with torch.no_grad():
        logits = cosine_logits(query, heads["weight"], heads["bias"], problem.head_scale)
        correct = logits.argmax(-1) == episodes.query.labels
        accuracy = correct.to(torch.float64).mean(-1)
        loss = problem.per_task_loss(query, heads, episodes.query.labels)
    return accuracy, loss


def summarise(accuracy: torch.Tensor, loss: torch.Tensor) -> list[dict[str, float]]:
    """Per run: mean accuracy and its 95% CI over the episodes (percent), mean query loss."""
    episodes = accuracy.shape[1]
    if episodes > 1:
        ci95 = 1.96 * accuracy.std(1) / math.sqrt(episodes)
    else:  # one episode: no spread to estimate
        ci95 = torch.zeros(len(accuracy), dtype=accuracy.dtype)
    columns = {
        "test_acc": (100.0 * accuracy.mean(1)).tolist(),
        "test_acc_ci95": (100.0 * ci95).tolist(),
        "test_loss": loss.to(torch.float64).mean(1).tolist(),
    }
    return [dict(zip(columns, run, strict=True)) for run in zip(*columns.values(), strict=True)]


class FewShotTask(Task):
    def __init__(self, problem, cfg, seeds, device, test_sampler: EpisodeSampler):
        super().__init__(problem, cfg, problem.name, seeds, device)
        self.test_sampler = test_sampler

    def evaluate(self, u, v):
        """Meta-test on the same held-out episodes at every evaluation (so curve points are
        comparable), drawn per run from its evaluation stream."""
        t = self.cfg.task
        episodes, chunk = int(t.eval_episodes), int(t.eval_chunk)
        u = autodiff.detached(u)
        accuracies, losses = [], []
        for first in range(0, episodes, chunk):
            batch = self.test_sampler.sample(
                self.eval_stream["key"], min(chunk, episodes - first), first
            )
            accuracy, loss = meta_test_chunk(
                self.problem, u, batch, int(t.eval_steps), float(t.eval_lr)
            )
            accuracies.append(accuracy.cpu())
            losses.append(loss.cpu())
        return summarise(torch.cat(accuracies, 1), torch.cat(losses, 1))


def build(cfg, device, seeds) -> FewShotTask:
    checks.check_section("task", cfg.task, TASK_KEYS)
    dataset_name = str(cfg.dataset.name)
    if dataset_name not in LOADERS:
        raise checks.ConfigError(
            f"dataset={dataset_name} is not a few-shot dataset; use one of {checks.names(LOADERS)}"
        )
    model_name = str(cfg.model.name)
    if model_name not in ENCODERS:
        raise checks.ConfigError(
            f"model={model_name} is not a few-shot encoder; use one of {checks.names(ENCODERS)}"
        )
    splits = LOADERS[dataset_name].load(cfg.dataset, cfg.data).to(device)
    t = cfg.task
    shape = dict(ways=int(t.ways), shots=int(t.shots), queries=int(t.queries))
    train_sampler = EpisodeSampler(splits.train, split="meta-train", **shape)
    shape["queries"] = int(t.eval_queries)
    test_sampler = EpisodeSampler(splits.test, split="meta-test", **shape)
    model_kwargs = {k: v for k, v in cfg.model.items() if k != "name"}
    encoder = ENCODERS[model_name](in_channels=splits.train.shape[2], **model_kwargs).to(device)
    with torch.no_grad():  # feature size for this image size (two images: BN needs a batch)
        probe = splits.train[:1, :2].flatten(0, 1).to(torch.get_default_dtype())
        feature_dim = encoder(probe).shape[1]
    problem = FewShotProblem(
        encoder,
        train_sampler,
        int(t.meta_batch),
        float(t.head_scale),
        float(t.head_init_std),
        feature_dim,
        splits.name,
        reset_lower=bool(t.reset_lower),
    )
    return FewShotTask(problem, cfg, seeds, device, test_sampler)
