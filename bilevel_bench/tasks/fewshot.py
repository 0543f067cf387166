"""Few-shot learning with a shared representation (paper.md 3.3).

    upper u: encoder parameters (a dict of leaf tensors, used through torch.func.functional_call)
    lower v: one cosine-similarity head per task of the meta-batch, held as two batched tensors
             weight [tasks, dim, ways] and bias [tasks, ways]
    g = mean support cross-entropy over tasks,  f = mean query cross-entropy over tasks

`bind` runs the encoder once per call: the solvers bind once with u detached for their T lower
steps (features computed once, no graph into the encoder) and once with u live for the upper
step, so second-order terms flow through the heads and once through the encoder.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.func import functional_call

from bilevel_bench import checks
from bilevel_bench.data import fake_fewshot, miniimagenet, omniglot
from bilevel_bench.data.episodes import EpisodeSampler, LabelledImages
from bilevel_bench.models.fewshot import ENCODERS, cosine_logits
from bilevel_bench.problem import BilevelProblem, BoundObjectives, Variables
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


class FewShotProblem(BilevelProblem):
    def __init__(
        self,
        encoder,
        sampler: EpisodeSampler,
        meta_batch: int,
        head_scale: float,
        head_init_std: float,
        feature_dim: int,
        name: str,
    ):
        self.encoder, self.sampler, self.meta_batch = encoder, sampler, meta_batch
        self.head_scale, self.head_init_std = head_scale, head_init_std
        self.feature_dim, self.ways, self.name = feature_dim, sampler.ways, name
        self.device = sampler.images.device

    # --- variables ----------------------------------------------------------------------------
    def init_variables(self, generator):
        u = {name: p.detach().clone() for name, p in self.encoder.named_parameters()}
        return u, self.init_heads(self.meta_batch, generator)

    def init_heads(self, n_tasks: int, generator) -> Variables:
        weight = torch.randn(n_tasks, self.feature_dim, self.ways, generator=generator)
        return {
            "weight": (self.head_init_std * weight).to(self.device),
            "bias": torch.zeros(n_tasks, self.ways, device=self.device),
        }

    # --- objectives ---------------------------------------------------------------------------
    def features(self, u: Variables, images: torch.Tensor) -> torch.Tensor:
        """[tasks, n, c, h, w] -> [tasks, n, dim]; one encoder pass over all tasks' images."""
        flat = functional_call(self.encoder, u, (images.flatten(0, 1),))
        return flat.view(*images.shape[:2], -1)

    def loss(self, features, v: Variables, labels) -> torch.Tensor:
        """Mean over tasks of each task's mean cross-entropy (tasks have equal sizes)."""
        logits = cosine_logits(features, v["weight"], v["bias"], self.head_scale)
        return F.cross_entropy(logits.flatten(0, 1), labels.flatten())

    def f(self, u, v, batch: LabelledImages):
        return self.loss(self.features(u, batch.images), v, batch.labels)

    g = f  # the same loss: f sees the query sets, g the support sets (see sample_batches)

    def sample_batches(self, generator):
        """One meta-batch of episodes: the query sets feed f, the support sets feed g."""
        episodes = self.sampler.sample(self.meta_batch, generator)
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


def meta_test(
    problem: FewShotProblem,
    u: Variables,
    sampler: EpisodeSampler,
    episodes: int,
    steps: int,
    lr: float,
    chunk: int,
    generator,
) -> dict[str, float]:
    """The authors' protocol: fresh heads, `steps` Adam(lr) steps on the support features
    (encoder frozen), query accuracy per episode; mean and 95% CI in percent."""
    u = {k: t.detach() for k, t in u.items()}
    accuracies, losses = [], []
    for start in range(0, episodes, chunk):
        batch = sampler.sample(min(chunk, episodes - start), generator)
        with torch.no_grad():
            support = problem.features(u, batch.support.images)
            query = problem.features(u, batch.query.images)
        n_tasks = support.shape[0]
        heads = {k: t.requires_grad_() for k, t in problem.init_heads(n_tasks, generator).items()}
        optimizer = torch.optim.Adam(list(heads.values()), lr=lr)
        with torch.enable_grad():
            for _ in range(steps):
                optimizer.zero_grad(set_to_none=True)
                # x n_tasks: each head gets its own task's mean loss gradient, as a per-task fit
                (n_tasks * problem.loss(support, heads, batch.support.labels)).backward()
                optimizer.step()
        with torch.no_grad():
            logits = cosine_logits(query, heads["weight"], heads["bias"], problem.head_scale)
            correct = logits.argmax(-1) == batch.query.labels
            accuracies.append(correct.to(torch.float64).mean(1).cpu())
            losses.append(float(problem.loss(query, heads, batch.query.labels)) * n_tasks)
    accuracy = torch.cat(accuracies)
    ci95 = 1.96 * float(accuracy.std()) / math.sqrt(len(accuracy)) if len(accuracy) > 1 else 0.0
    return {
        "test_acc": 100.0 * float(accuracy.mean()),
        "test_acc_ci95": 100.0 * ci95,
        "test_loss": sum(losses) / len(accuracy),
    }


class FewShotTask(Task):
    def __init__(self, problem, cfg, test_sampler, generator):
        super().__init__(problem, cfg, problem.name)
        self.test_sampler, self.generator = test_sampler, generator

    def after_step(self, step, u, v):
        """Fresh heads for the next meta-batch, as the authors (the optimiser state of v is kept).

        Done here, in place on the solver's leaf tensors, so it works with every solver: each
        solver's next step starts from these heads whatever it does inside a step.
        """
        if self.cfg.task.reset_lower:
            with torch.no_grad():
                fresh = self.problem.init_heads(v["weight"].shape[0], self.generator)
                for name, tensor in fresh.items():
                    v[name].copy_(tensor)

    def evaluate(self, u, v):
        t = self.cfg.task
        # the same held-out episodes at every evaluation, so curve points are comparable
        generator = torch.Generator().manual_seed(int(self.cfg.seed) + 1_000_003)
        return meta_test(
            self.problem,
            u,
            self.test_sampler,
            int(t.eval_episodes),
            int(t.eval_steps),
            float(t.eval_lr),
            int(t.eval_chunk),
            generator,
        )


def build(cfg, device, generator) -> FewShotTask:
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
    )
    return FewShotTask(problem, cfg, test_sampler, generator)
