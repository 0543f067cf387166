"""Counter-based random numbers: every draw is a pure function of a run's key and a counter.

A run's randomness during training (minibatches, dropout masks, fresh few-shot heads) comes from
integer hashes of (run key, step, stream, element index) computed with tensor operations on the
run's device. So:
- a batch of K runs draws each run's numbers exactly as a single run of that seed would;
- the random state of a run is its key and its step counter: a checkpoint holds it, and a
  resumed run draws the same numbers as an uninterrupted one;
- no generator object is mutated inside a step (nothing to synchronise or to capture), and the
  numbers are the same on every device.

Keys are int64 tensors of any shape (a leading run dimension, or none inside torch.func.vmap);
each value stays below 2**31 so that products with the 31-bit multipliers below never overflow.
"""

from __future__ import annotations

import torch

MASK = 2**31 - 1
_MULTIPLIERS = (0x2C1B3C6D, 0x297A2D39, 0x5BD1E995)  # odd: multiplication is a bijection mod 2^31
_INDEX_STRIDE = 0x3C6EF35F  # odd, so distinct indices (< 2^31) give distinct hash inputs


def mix(x: torch.Tensor) -> torch.Tensor:
    """A bijection of [0, 2^31) that scrambles its bits (xor-shift-multiply rounds)."""
    for multiplier in _MULTIPLIERS:
        x = (((x >> 15) ^ x) * multiplier) & MASK
    return (x >> 15) ^ x


def run_keys(seeds: list[int], device: torch.device | str = "cpu") -> torch.Tensor:
    """[K] base keys, one per run seed."""
    return mix(torch.tensor(seeds, dtype=torch.int64, device=device) & MASK)


def derive(key: torch.Tensor, salt: int | torch.Tensor) -> torch.Tensor:
    """A new key for a named sub-stream (`salt`: a stream number, a step, an epoch...)."""
    return mix((mix(key) + salt * _INDEX_STRIDE + 1) & MASK)


def bits(key: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """key.shape + shape int64 values in [0, 2^31); distinct within one key (a bijective hash of
    the element index), so that sorting them gives a random permutation without ties.

    One mix per element, of the spread index xor a mixed key: every elementwise pass costs
    memory traffic on large draws (dropout masks), so the per-key work is done once."""
    count = 1
    for size in shape:
        count *= size
    index = torch.arange(count, dtype=torch.int64, device=key.device).view(shape)
    salt = derive(key, 0x1F).reshape(key.shape + (1,) * len(shape))
    return mix(((index * _INDEX_STRIDE) & MASK) ^ salt)


def uniform(key: torch.Tensor, shape: tuple[int, ...], dtype=None) -> torch.Tensor:
    """Uniform numbers in [0, 1), the same in float32 and float64."""
    return unit_interval(bits(key, shape), dtype or torch.get_default_dtype())


def unit_interval(values: torch.Tensor, dtype) -> torch.Tensor:
    """[0, 2^31) integers to [0, 1) on a grid of 2^-24: the top 24 bits, which float32 holds
    exactly (all 31 would round the largest values up to 1.0, and log(1 - u) to -inf)."""
    return (values >> 7).to(dtype) * (1.0 / 2**24)


def normal(key: torch.Tensor, shape: tuple[int, ...], dtype=None) -> torch.Tensor:
    """Standard normal numbers (Box-Muller on two independent uniform streams)."""
    dtype = dtype or torch.get_default_dtype()
    radius = torch.sqrt(-2.0 * torch.log1p(-uniform(derive(key, 1), shape, dtype)))
    return radius * torch.cos(2 * torch.pi * uniform(derive(key, 2), shape, dtype))


def permutation(key: torch.Tensor, n: int) -> torch.Tensor:
    """key.shape + (n,): a random permutation of range(n) per key."""
    return bits(key, (n,)).argsort(dim=-1)


def without_replacement(key: torch.Tensor, shape: tuple[int, ...], population: int):
    """key.shape + shape[:-1] + (k,) distinct indices in range(population) along the last axis,
    with k = shape[-1]: one independent draw per row."""
    *rows, k = shape
    return bits(key, (*rows, population)).argsort(dim=-1)[..., :k]


def keep_mask(key: torch.Tensor, shape: tuple[int, ...], keep: float) -> torch.Tensor:
    """Boolean mask with each element True with probability `keep` (dropout's kept units), to a
    resolution of 2^-15: each 31-bit hash serves two elements, halving the hashing."""
    count = 1
    for size in shape:
        count *= size
    pairs = bits(key, ((count + 1) // 2,))
    lanes = torch.stack([pairs & 0x7FFF, (pairs >> 15) & 0x7FFF], dim=-1).flatten(-2)
    kept = lanes[..., :count] < round(keep * 2**15)
    return kept.reshape(key.shape + tuple(shape))
