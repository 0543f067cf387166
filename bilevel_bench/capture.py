"""`engine.capture=auto|on|off`: a whole upper step (T lower steps, the upper step, the
problem's own change) captured as one CUDA graph and replayed once per upper step.

A solver step is a pure function of the state (bilevel_bench.solvers.base): no host sync, fixed
trip counts, randomness from the key and step counter in the state. So the same kernels run on
the same addresses at every step, which is what a CUDA graph replays. Double backward (the
Hessian-vector products of the hypergradients) is not covered by torch.cuda.make_graphed_callables,
so the step is captured whole with torch.cuda.graph over static state buffers:

- two buffers A and B of the state, and two graphs: step(A) -> B and step(B) -> A, each ending
  in copies of the step's outputs into the other buffer (inside the graph, so they cost no
  launches). The state returned by call n is then still intact during call n + 1 (the runner
  reads the old state to freeze diverged runs) and is overwritten by call n + 2;
- a state that is not the buffers the next graph reads (the first step, a resume, the runner's
  frozen runs) is copied into them first;
- warm-up on a side stream before capture (cuDNN autotuning, autograd's lazy set-up, the
  allocator), on the buffers, never on the caller's state;
- anything that cannot be captured (a host sync in the step, a state that changes shape, a
  tensor off the device) raises at capture time: the run then steps eagerly, and one log line
  says why.

`StaticStep(..., graphs=False)` runs the same buffer logic eagerly (no CUDA needed): the tests
check on a CPU that the buffered step equals the plain step, and on a GPU that the captured one
does.

Capture is left out of the config hash (results.NOT_HASHED): a replay runs the kernels of the
eager step on the same inputs, so it computes the same numbers (tests/test_gpu.py holds it to
1e-5 relative after 50 upper steps); only launch overhead changes. The row's `capture` column
says which way a run went.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import Any

import torch

from bilevel_bench import checks

log = logging.getLogger(__name__)

MODES = ("auto", "on", "off")
WARMUP_STEPS = 3  # PyTorch's capture examples warm up three iterations

Step = Callable[[dict], tuple[dict, dict]]


class CaptureUnsupported(RuntimeError):
    """A step that cannot be replayed from a graph (the message says why)."""


def validate(cfg) -> None:
    """Value checks that need no device (runner.validate)."""
    engine = cfg.get("engine") or {}
    unknown = sorted(set(engine) - {"capture"})
    if unknown:
        raise checks.ConfigError(f"engine.{unknown[0]} is not an engine option; known: capture")
    checks.one_of(*MODES)("engine.capture", mode_of(cfg))


def mode_of(cfg) -> str:
    """engine.capture; configs written before the option existed are auto."""
    engine = cfg.get("engine") or {}
    return str(engine.get("capture", "auto"))


def wanted(cfg, device: torch.device) -> bool:
    """Whether to capture on this device: auto = on CUDA devices; on = refused elsewhere."""
    mode = mode_of(cfg)
    if mode == "on" and device.type != "cuda":
        raise checks.ConfigError(
            f"engine.capture=on needs a CUDA device (CUDA graphs), and device={device}: use "
            "engine.capture=auto (captures on CUDA only) or off"
        )
    return mode == "on" or (mode == "auto" and device.type == "cuda")


class Stepper:
    """What the runner steps with: `step(state) -> (state, diagnostics)`, as a solver's; `captured`
    says whether the steps were replayed from a CUDA graph (None before the first step)."""

    def __init__(self, solver, capture: bool):
        self.solver, self.capture = solver, capture
        self.captured: bool | None = None if capture else False
        self._static: StaticStep | None = None

    def init(self, u: dict, v: dict, stream: dict) -> dict:
        return self.solver.init(u, v, stream)

    def step(self, state: dict) -> tuple[dict, dict]:
        if self.captured is None:  # the first step: capture now (the device is warm, the
            # state final: a resume or the task's preparation has already changed it)
            try:
                self._static = StaticStep(self.solver.step, state, graphs=True)
                self.captured = True
            except Exception as err:  # noqa: BLE001 - any capture failure means: step eagerly
                _release()
                self.captured = False
                log.warning(
                    "engine.capture: stepping eagerly, solver=%s could not be captured as a CUDA "
                    "graph (%s: %s)",
                    getattr(self.solver, "name", type(self.solver).__name__),
                    type(err).__name__,
                    str(err).strip().splitlines()[0] if str(err).strip() else "",
                )
        if self._static is not None:
            return self._static(state)
        return self.solver.step(state)


def for_run(cfg, solver, device: torch.device) -> Stepper:
    return Stepper(solver, wanted(cfg, device))


class StaticStep:
    """`step` over two static state buffers, replayed from CUDA graphs (graphs=True) or run
    eagerly on the same buffers (graphs=False). Call it like the step: `(state, diagnostics)`;
    the returned tensors are the buffers, valid until the call after next."""

    def __init__(self, step: Step, state: dict, graphs: bool, warmup: int = WARMUP_STEPS):
        self.step, self.graphs = step, graphs
        self.buffers = [clone(state), clone(state)]
        self.diagnostics: list[dict | None] = [None, None]
        self.next = 0  # the buffer the next call reads
        self._graphs: list[torch.cuda.CUDAGraph] = []
        if graphs:
            self._capture(state, warmup)

    def __call__(self, state: dict) -> tuple[dict, dict]:
        read = self.next
        source = self.buffers[read]
        if not same_leaves(state, source):
            copy_into(source, state)
        if self.graphs:
            self._graphs[read].replay()
        else:
            self._body(read)
        self.next = 1 - read
        return rebuild(self.buffers[self.next]), dict(self.diagnostics[read])

    def _body(self, read: int) -> None:
        """One step from buffer `read` into the other buffer (what each graph records)."""
        new_state, diagnostics = self.step(self.buffers[read])
        check_same_structure(new_state, self.buffers[read])
        copy_into(self.buffers[1 - read], new_state)
        if self.diagnostics[read] is None:  # static outputs: allocated once (at capture)
            self.diagnostics[read] = {k: _static_like(v) for k, v in diagnostics.items()}
        for name, value in diagnostics.items():
            self.diagnostics[read][name].copy_(value)

    def _capture(self, state: dict, warmup: int) -> None:
        device = _only_device(state)
        if device.type != "cuda":
            raise CaptureUnsupported(f"the state is on {device}, not on a CUDA device")
        copy_into(self.buffers[0], state)
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for i in range(max(warmup, 2)):  # both buffers' bodies run at least once
                # after the first (lazy initialisation may synchronise), a host sync raises
                # here, before any capture starts: a capture it would break could leave the
                # allocator or the stream in a state that is harder to recover from
                with _syncs_raise(i > 0):
                    self._body(i % 2)
        torch.cuda.current_stream(device).wait_stream(side)
        torch.cuda.synchronize(device)
        for read in (0, 1):
            graph = torch.cuda.CUDAGraph()
            pool = self._graphs[0].pool() if self._graphs else None
            # the graphs share one memory pool: they never run at the same time, and each
            # one's intermediates are dead once its copies into the other buffer are done
            with torch.cuda.graph(graph, pool=pool):
                self._body(read)
            self._graphs.append(graph)
        torch.cuda.synchronize(device)


# --- the state as a tree of tensors --------------------------------------------------------------


def clone(tree: Any) -> Any:
    if isinstance(tree, dict):
        return {k: clone(v) for k, v in tree.items()}
    if isinstance(tree, torch.Tensor):
        return tree.detach().clone()
    return tree


def rebuild(tree: Any) -> Any:
    """The same leaves in fresh dicts (a caller that edits the dicts it got leaves ours alone)."""
    return {k: rebuild(v) for k, v in tree.items()} if isinstance(tree, dict) else tree


def leaves(tree: Any) -> list[Any]:
    if isinstance(tree, dict):
        return [leaf for k in tree for leaf in leaves(tree[k])]
    return [tree]


def same_leaves(a: Any, b: Any) -> bool:
    """Whether `a` holds exactly the tensors of `b` (by identity: no copy needed)."""
    first, second = leaves(a), leaves(b)
    return len(first) == len(second) and all(x is y for x, y in zip(first, second, strict=True))


def copy_into(target: Any, source: Any, where: str = "state") -> None:
    """Copy the values of `source` into the tensors of `target` (same structure)."""
    if isinstance(target, dict):
        if not isinstance(source, dict) or set(source) != set(target):
            raise CaptureUnsupported(f"{where} changed its keys during the step")
        for key in target:
            copy_into(target[key], source[key], f"{where}.{key}")
    elif isinstance(target, torch.Tensor):
        if target is not source:
            target.copy_(source.detach())
    elif target != source:
        raise CaptureUnsupported(
            f"{where} is a Python value that changes ({target!r} -> {source!r})"
        )


def check_same_structure(new: Any, old: Any, where: str = "state") -> None:
    """The step must keep every tensor's shape, dtype and device: a graph has fixed buffers."""
    if isinstance(old, dict):
        if not isinstance(new, dict) or set(new) != set(old):
            raise CaptureUnsupported(f"{where} changes its keys from step to step")
        for key in old:
            check_same_structure(new[key], old[key], f"{where}.{key}")
    elif isinstance(old, torch.Tensor):
        if not isinstance(new, torch.Tensor) or (new.shape, new.dtype, new.device) != (
            old.shape,
            old.dtype,
            old.device,
        ):
            got = (new.shape, new.dtype, new.device) if isinstance(new, torch.Tensor) else new
            raise CaptureUnsupported(
                f"{where} changes from {(old.shape, old.dtype, old.device)} to {got} in a step"
            )


def _static_like(value: Any) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise CaptureUnsupported(f"a diagnostic is a {type(value).__name__}, not a tensor")
    return torch.empty_like(value, memory_format=torch.contiguous_format)


def _only_device(state: dict) -> torch.device:
    devices = {leaf.device for leaf in leaves(state) if isinstance(leaf, torch.Tensor)}
    if len(devices) != 1:
        raise CaptureUnsupported(f"the state's tensors are on {sorted(map(str, devices))}")
    return devices.pop()


@contextlib.contextmanager
def _syncs_raise(active: bool) -> Iterator[None]:
    if not active:
        yield
        return
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(previous)


def _release() -> None:
    """After a failed capture: wait for what was queued, give the graphs' memory back."""
    if torch.cuda.is_available():
        try:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
        except RuntimeError as err:
            log.debug("after a failed capture: %s", err)
