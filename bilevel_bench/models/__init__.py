"""The paper's networks, built from configs/model/*.yaml."""

from bilevel_bench.models.networks import build_model

__all__ = ["build_model"]
