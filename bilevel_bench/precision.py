"""`precision=fp32|tf32|bf16`: how a run's floating-point arithmetic is done on the device.

- fp32 (the default): IEEE float32 everywhere, convolutions too (PyTorch's own default lets
  cuDNN convolutions use TF32; here fp32 means fp32).
- tf32: CUDA matrix products and cuDNN convolutions with TF32 inputs (10-bit mantissa, float32
  accumulation). Everything else, and every tensor in the state, stays float32.
- bf16: the networks' forward passes (bilevel_bench.models.batched.forward: the denoising CNNs
  and the few-shot encoders) run under torch.autocast(bfloat16); their outputs come back as
  float32, so the losses, reductions, norms, the penalty schedule, the optimisers' moments and
  every variable stay float32. Gradients flow back through the same casts.

The CUDA default stays fp32 until GPU measurements pick the fastest setting whose accuracy
matches fp32 within the seeds' s.d. (issue 15). The choice is hashed unless it is fp32
(bilevel_bench.results), so rows computed before this option existed keep their hashes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from bilevel_bench import checks

PRECISIONS = ("fp32", "tf32", "bf16")
DEFAULT = "fp32"

# the dtype the networks' forward passes autocast to while a run is active (None: no autocast)
_network_dtype: torch.dtype | None = None


def validate(cfg) -> None:
    """Value checks that need no device (runner.validate)."""
    checks.one_of(*PRECISIONS)("precision", name_of(cfg))
    if name_of(cfg) != DEFAULT and cfg.dtype != "float32":
        raise checks.ConfigError(
            f"precision={name_of(cfg)} lowers float32 arithmetic, but dtype={cfg.dtype}: use "
            "dtype=float32, or precision=fp32 with dtype=float64"
        )


def check_device(name: str, device: torch.device) -> None:
    """TF32 exists on CUDA only: on a CPU it would change nothing but the row's label (and
    hash), so it is refused. bf16 autocast runs on CPUs too."""
    if name == "tf32" and device.type != "cuda":
        raise checks.ConfigError(
            f"precision=tf32 governs CUDA matrix products and convolutions, and device={device} "
            "has none: use precision=fp32 (or bf16) on a CPU"
        )


def name_of(cfg) -> str:
    """The run's precision; configs written before the option existed are fp32."""
    return str(cfg.get("precision", DEFAULT))


@contextlib.contextmanager
def applied(name: str, device: torch.device) -> Iterator[None]:
    """The run's precision for the duration of the block; the previous settings come back."""
    global _network_dtype
    check_device(name, device)
    previous_dtype = _network_dtype
    restore = _set_tf32(name == "tf32") if device.type == "cuda" else (lambda: None)
    _network_dtype = torch.bfloat16 if name == "bf16" else None
    try:
        yield
    finally:
        _network_dtype = previous_dtype
        restore()


def network_autocast(device_type: str) -> contextlib.AbstractContextManager:
    """Autocast for one forward pass of a network, when the active precision asks for it.

    The weight cache is off: under CUDA-graph capture a cached cast would be freed when the
    autocast block ends while the graph still refers to it (and each forward pass is its own
    block here, so the cache would never be hit anyway)."""
    if _network_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=_network_dtype, cache_enabled=False)


def network_dtype() -> torch.dtype | None:
    return _network_dtype


def _set_tf32(enabled: bool):
    """Set TF32 for CUDA matmuls and cuDNN convolutions; returns a function that restores the
    previous settings. Uses the per-backend fp32_precision switches where torch has them (2.9+:
    the allow_tf32 flags are deprecated there, and mixing the two APIs is refused)."""
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    if hasattr(matmul, "fp32_precision") and hasattr(
        getattr(cudnn, "conv", None), "fp32_precision"
    ):
        previous = (matmul.fp32_precision, cudnn.conv.fp32_precision)
        value = "tf32" if enabled else "ieee"
        matmul.fp32_precision = cudnn.conv.fp32_precision = value

        def restore():
            matmul.fp32_precision, cudnn.conv.fp32_precision = previous

        return restore
    previous = (matmul.allow_tf32, cudnn.allow_tf32)
    matmul.allow_tf32 = cudnn.allow_tf32 = enabled

    def restore_legacy():
        matmul.allow_tf32, cudnn.allow_tf32 = previous

    return restore_legacy
