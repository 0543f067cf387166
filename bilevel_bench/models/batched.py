"""A network applied with a different parameter set per run: one batched computation for K runs.

Parameters are dicts name -> [K, *shape] (one row per run). Two ways to run them:
- a sequence of convolutions, linear layers, activations, pooling and keyed dropout (the
  denoising networks) runs as grouped convolutions and batched matrix products on a run-major
  layout, [B, K * channels, H, W] then [K, B, features]: no copies between layers, and an input
  shared by all runs (a test set) enters the first layer once for all K;
- any other module runs under torch.func.vmap over torch.func.functional_call (correct for
  every module, at the price of the layout changes vmap makes around each layer).
Both compute, for each run, exactly the function of its own parameters.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from bilevel_bench import precision
from bilevel_bench.models.networks import DropoutMasks, KeyedDropout
from bilevel_bench.problem import Variables

# layers acting on every channel (or feature) alone: the run-major layout passes through them
_ELEMENTWISE = (nn.ReLU, nn.Tanh, nn.LeakyReLU)
_POOLING = (nn.MaxPool2d, nn.AvgPool2d)


def stacked_parameters(module: nn.Module, runs: int) -> Variables:
    """The module's parameters repeated for `runs` runs (each run then trains its own copy)."""
    return {
        name: p.detach().unsqueeze(0).expand(runs, *p.shape).clone()
        for name, p in module.named_parameters()
    }


def forward(
    module: nn.Module,
    params: Variables,
    x: torch.Tensor,
    dropout: DropoutMasks | None = None,
    shared_input: bool = False,
):
    """module(x) for every run: params [K, ...]; x [K, ...] (one input per run) or, with
    shared_input, one input for all runs (no K copies of it). `dropout`: the batch's masks for
    the denoising networks' KeyedDropout layers (None: no dropout).

    Under precision=bf16 the pass runs in autocast and its output comes back in the parameters'
    dtype, so that losses and everything after them stay in full precision."""
    with precision.network_autocast(x.device.type):
        out = _forward(module, params, x, dropout, shared_input)
    dtype = next(iter(params.values())).dtype
    return out if out.dtype == dtype or not out.is_floating_point() else out.to(dtype)


def _forward(module, params, x, dropout, shared_input):
    if _runs_layer_by_layer(module):
        return _sequential(module, params, x, dropout, shared_input)

    def one_run(p, x_, *key):
        return functional_call(module, p, (x_, *key))

    args = () if dropout is None else (dropout.key,)
    in_dims = (0, None if shared_input else 0, *(0 for _ in args))
    return torch.func.vmap(one_run, in_dims=in_dims)(params, x, *args)


def _runs_layer_by_layer(module: nn.Module) -> bool:
    return isinstance(module, nn.Sequential) and all(
        isinstance(
            layer, (nn.Conv2d, nn.Linear, nn.Flatten, KeyedDropout, *_ELEMENTWISE, *_POOLING)
        )
        and (not isinstance(layer, nn.Conv2d) or layer.groups == 1)
        for layer in module
    )


class _Activations:
    """The activations of all runs in one of three layouts: `shared` (one input for every run,
    before any per-run layer), `channels` ([B, K * C, H, W], run-major channels) or `rows`
    ([K, B, ...], the run first)."""

    def __init__(self, tensor, layout, runs):
        self.tensor, self.layout, self.runs = tensor, layout, runs

    def as_channels(self):
        if self.layout == "rows":  # [K, B, C, H, W] -> [B, K * C, H, W]
            t = self.tensor
            return t.transpose(0, 1).reshape(t.shape[1], -1, *t.shape[3:])
        return self.tensor

    def as_rows(self):
        if self.layout == "channels":  # [B, K * C, ...] -> [K, B, C, ...]
            t = self.tensor
            return t.view(t.shape[0], self.runs, -1, *t.shape[2:]).transpose(0, 1)
        if self.layout == "shared":
            return self.tensor.expand(self.runs, *self.tensor.shape)
        return self.tensor


def _sequential(module, params, x, dropout, shared_input) -> torch.Tensor:
    runs = next(iter(params.values())).shape[0]
    h = _Activations(x, "shared" if shared_input else "rows", runs)
    for index, layer in enumerate(module):
        weight, bias = params.get(f"{index}.weight"), params.get(f"{index}.bias")
        if isinstance(layer, nn.Conv2d):
            h = _conv(layer, weight, bias, h)
        elif isinstance(layer, nn.Linear):
            h = _linear(weight, bias, h)
        elif isinstance(layer, nn.Flatten):
            h = _flatten(h)
        elif isinstance(layer, KeyedDropout):
            h = _dropout(layer, dropout, h)
        elif isinstance(layer, _POOLING):
            h = _Activations(layer(h.as_channels()), "channels", runs)
        else:
            h = _Activations(layer(h.tensor), h.layout, runs)
    return h.as_rows()


def _conv(layer, weight, bias, h):
    runs = h.runs
    options = dict(stride=layer.stride, padding=layer.padding, dilation=layer.dilation)
    flat_weight = weight.reshape(-1, *weight.shape[2:])  # [K * O, C, kh, kw]
    flat_bias = None if bias is None else bias.reshape(-1)
    if h.layout == "shared":  # one input, K filter banks: an ordinary convolution
        return _Activations(F.conv2d(h.tensor, flat_weight, flat_bias, **options), "channels", runs)
    out = F.conv2d(h.as_channels(), flat_weight, flat_bias, groups=runs, **options)
    return _Activations(out, "channels", runs)


def _linear(weight, bias, h):
    runs = h.runs
    if h.layout == "shared":  # one input, K weight matrices: one matrix product
        out = F.linear(h.tensor, weight.reshape(-1, weight.shape[-1]), bias.reshape(-1))
        return _Activations(out.view(*out.shape[:-1], runs, -1).movedim(-2, 0), "rows", runs)
    rows = h.as_rows()
    flat = rows.reshape(runs, -1, rows.shape[-1])
    out = torch.baddbmm(bias[:, None], flat, weight.transpose(1, 2))
    return _Activations(out.view(*rows.shape[:-1], -1), "rows", runs)


def _flatten(h):
    if h.layout == "shared":
        return _Activations(h.tensor.flatten(1), "shared", h.runs)
    rows = h.as_rows()
    return _Activations(rows.reshape(*rows.shape[:2], -1), "rows", h.runs)


def _dropout(layer, dropout, h):
    if dropout is None or layer.p == 0:
        return h
    rows = h.as_rows()  # masks are hashed per run over the run's own [B, ...] tensor
    kept = dropout.kept(layer.layer)
    kept = _Activations(kept.to(rows.dtype), "rows", h.runs)
    if h.layout == "channels":  # the same arithmetic as KeyedDropout.forward
        return _Activations(h.tensor * kept.as_channels() / (1 - layer.p), "channels", h.runs)
    return _Activations(rows * kept.tensor / (1 - layer.p), "rows", h.runs)
