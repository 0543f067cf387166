"""Tiny generated-data settings of every task (seconds on a CPU), shared by the engine tests."""

from __future__ import annotations

DENOISE = [
    "task=denoise", "dataset=fake", "task.batch_size=100", "task.val_batch_size=50",
    "task.pretrain_epochs=1", "task.retrain=true", "task.retrain_epochs=1", "solver.T=2",
]  # fmt: skip
SMALL_CNN = ["model=mnist_cnn", "model.blocks=[[4]]", "model.hidden=[8]", "dataset.size=8"]
FEWSHOT = [
    "task=fewshot", "dataset=fake_fewshot", "model.channels=4", "task.ways=3", "task.shots=1",
    "task.queries=2", "task.meta_batch=2", "task.eval_episodes=4", "task.eval_steps=2",
    "task.eval_chunk=4", "solver.T=2",
]  # fmt: skip
POISON = [
    "task=poison", "dataset=fake_poison", "task.num_poisons=4", "task.split.train=30",
    "task.split.val=30", "task.split.test=40", "task.pretrain.steps=5", "task.retrain.steps=5",
    "solver.T=2", "task.save_images=false",
]  # fmt: skip


def steps(total: int, every: int) -> list[str]:
    return [f"task.iters={total}", f"task.eval_every={every}"]


def epochs(total: int, every: int) -> list[str]:
    """Denoising counts epochs: 500 generated training images at batch 100, 5 steps each."""
    return [f"task.epochs={total}", f"task.eval_every={every}"]
