"""Pruning a half's linear weights to a remaining ratio rho, as a live knob.

Three methods:

* ``magnitude`` — unstructured: zero all but the largest round(rho * n) |w| of each layer;
* ``random`` — unstructured: keep a uniformly random subset, drawn from a generator seeded by the
  layer's canonical name, so the device, the server and a whole model in one process prune a given
  layer identically;
* ``structured`` — remove whole attention heads and FFN intermediate neurons (ranked by the L1 norm of
  their weights, rows in the projections that produce them plus columns in the one that consumes
  them), physically shrinking the matrices so compute falls with rho. Zeroed weights save no time on
  dense kernels; smaller matrices do.

The dense weights are kept as a master copy (made on the first prune), so any ratio and method can be
applied at any time, up or down, without reloading the checkpoint. Unstructured masks and structured
index sets are cached per (method, rho) because a plan often returns to a ratio it used before.
"""
from __future__ import annotations

import threading
import zlib
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Callable

import torch
from torch import nn

from coinfer.errors import UsageError

METHODS = ("magnitude", "random", "structured")

# Structured groups, by canonical-name suffix: (producers sliced by rows, consumer sliced by columns,
# unit). A unit is one attention head (head_dim rows) or one FFN neuron (1 row).
_GROUPS = [
    (("attention.self.query", "attention.self.key", "attention.self.value"), "attention.output.dense", "head"),
    (("intermediate.dense",), "output.dense", "neuron"),
    (("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), "self_attn.out_proj", "head"),
    (("encoder_attn.q_proj", "encoder_attn.k_proj", "encoder_attn.v_proj"), "encoder_attn.out_proj", "head"),
    (("fc1",), "fc2", "neuron"),
    # DistilBERT. (MPNet's FFN matches the BERT names above; its heads are not pruned structurally:
    # its attention reshapes to the configured head count and adds a per-head position bias.)
    (("attention.q_lin", "attention.k_lin", "attention.v_lin"), "attention.out_lin", "head"),
    (("ffn.lin1",), "ffn.lin2", "neuron"),
]


def check_ratio(rho: float, field: str = "rho") -> float:
    rho = float(rho)
    if not 0.0 < rho <= 1.0 or rho != rho:
        raise UsageError(f"{field} must be in (0, 1], got {rho}")
    return rho


def check_method(method: str) -> str:
    if method not in METHODS:
        raise UsageError(f"prune method must be one of {', '.join(METHODS)}, got {method!r}")
    return method


def keep_count(numel: int, rho: float) -> int:
    """Weights (or units) kept out of `numel` at ratio rho (at least one)."""
    return max(1, min(numel, round(rho * numel)))


def layer_mask(weight: torch.Tensor, rho: float, method: str, name: str, seed: int = 0) -> torch.Tensor:
    """Boolean mask keeping round(rho * numel) weights of one layer (magnitude or random)."""
    flat = weight.reshape(-1)
    keep = keep_count(flat.numel(), rho)
    mask = torch.zeros(flat.numel(), dtype=torch.bool, device=weight.device)
    if keep == flat.numel():
        mask.fill_(True)
    elif method == "magnitude":
        mask[torch.topk(flat.abs().float(), keep, sorted=False).indices] = True
    else:
        # Drawn on the CPU whatever the weight's device, so every process draws the same subset.
        generator = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
        mask[torch.randperm(flat.numel(), generator=generator)[:keep].to(weight.device)] = True
    return mask.view_as(weight)


@dataclass(frozen=True)
class StructuredGroup:
    """Linears that share units: producers' output rows and the consumer's input columns."""

    producers: tuple[str, ...]
    consumer: str
    unit_size: int

    def units(self, layers: dict[str, nn.Linear]) -> int:
        return layers[self.consumer].in_features // self.unit_size


def structured_groups(layers: dict[str, nn.Linear], head_dim: Callable[[str], int]) -> list[StructuredGroup]:
    """Heads and FFN neurons found among `layers` (canonical name -> Linear)."""
    groups = []
    for name in layers:
        for producers, consumer, unit in _GROUPS:
            if not name.endswith(producers[0]):
                continue
            prefix = name[: -len(producers[0])]
            names = tuple(prefix + p for p in producers)
            if all(n in layers for n in names) and prefix + consumer in layers:
                size = head_dim(name) if unit == "head" else 1
                groups.append(StructuredGroup(names, prefix + consumer, size))
    return groups


def structured_keep(dense: dict[str, tuple[torch.Tensor, torch.Tensor | None]], group: StructuredGroup,
                    rho: float) -> torch.Tensor:
    """Indices (ascending) of the units of `group` kept at rho, ranked by the L1 norm of their weights."""
    size = group.unit_size
    score = dense[group.consumer][0].abs().sum(0).reshape(-1, size).sum(1)
    for name in group.producers:
        score = score + dense[name][0].abs().sum(1).reshape(-1, size).sum(1)
    keep = keep_count(score.numel(), rho)
    return torch.topk(score, keep).indices.sort().values


@dataclass(frozen=True)
class PruneState:
    rho: float
    method: str
    kept: int      # weights kept over all pruned layers
    total: int     # weights in all pruned layers

    @property
    def achieved_ratio(self) -> float:
        return self.kept / self.total if self.total else 1.0


def _set_linear(layer: nn.Linear, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    layer.weight = nn.Parameter(weight, requires_grad=False)
    if bias is not None:
        layer.bias = nn.Parameter(bias, requires_grad=False)
    layer.out_features, layer.in_features = weight.shape


class Pruner:
    """Applies (rho, method) to a set of Linear layers from their dense master copies.

    `head_dim(name)` gives the attention head width for a layer's canonical name; it is needed only
    for the structured method.
    """

    def __init__(self, layers: dict[str, nn.Linear], seed: int = 0, cache_size: int = 3,
                 head_dim: Callable[[str], int] | None = None):
        self.layers = layers
        self.seed = seed
        self.cache_size = cache_size
        self.head_dim = head_dim
        self._dense: dict[str, tuple[torch.Tensor, torch.Tensor | None]] | None = None
        self._cache: OrderedDict[tuple[str, float], dict] = OrderedDict()
        self._lock = threading.Lock()
        self._shrunk = False
        total = sum(layer.weight.numel() for layer in layers.values())
        self.state = PruneState(1.0, "magnitude", total, total)

    @classmethod
    def for_part(cls, part: nn.Module, src, rho: float, method: str) -> "Pruner":
        """A pruner over the Linear layers of `part` (a DevicePart or ServerPart built from the
        ModelSource `src`), applied at (rho, method): how each half prunes what it just built."""
        pruner = cls(part.linear_layers(), seed=src.seed, head_dim=src.head_dim)
        pruner.apply(rho, method)
        return pruner

    def _dense_weights(self) -> dict[str, tuple[torch.Tensor, torch.Tensor | None]]:
        if self._dense is None:
            self._dense = {name: (layer.weight.detach().clone(),
                                  None if layer.bias is None else layer.bias.detach().clone())
                           for name, layer in self.layers.items()}
        return self._dense

    def _cached(self, rho: float, method: str, build: Callable[[], dict]) -> dict:
        key = (method, rho)
        if key not in self._cache:
            self._cache[key] = build()
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        self._cache.move_to_end(key)
        return self._cache[key]

    def _restore_dense(self) -> None:
        for name, layer in self.layers.items():
            weight, bias = self._dense_weights()[name]
            if self._shrunk:
                _set_linear(layer, weight.clone(), None if bias is None else bias.clone())
            else:
                layer.weight.data.copy_(weight)
        self._shrunk = False

    def _keeps(self, rho: float, method: str) -> dict:
        """What (rho, method) keeps, cached: kept units per structured group, else a mask per layer."""
        dense = self._dense_weights()
        if method == "structured":
            if self.head_dim is None:
                raise ValueError("structured pruning needs the model's attention head width (head_dim)")
            groups = structured_groups(self.layers, self.head_dim)
            return self._cached(rho, method, lambda: {g: structured_keep(dense, g, rho) for g in groups})
        return self._cached(rho, method, lambda: {
            name: layer_mask(dense[name][0], rho, method, name, self.seed) for name in self.layers})

    def _apply_masks(self, rho: float, method: str) -> int:
        dense = self._dense_weights()
        masks = self._keeps(rho, method)
        kept = 0
        for name, layer in self.layers.items():
            torch.mul(dense[name][0], masks[name], out=layer.weight.data)
            kept += int(masks[name].sum())
        return kept

    def _apply_structured(self, rho: float) -> int:
        dense = self._dense_weights()
        keeps = self._keeps(rho, "structured")
        for group, units in keeps.items():
            rows = (units[:, None] * group.unit_size + torch.arange(group.unit_size, device=units.device)).reshape(-1)
            for name in group.producers:
                weight, bias = dense[name]
                _set_linear(self.layers[name], weight[rows].clone(), None if bias is None else bias[rows].clone())
            weight, bias = dense[group.consumer]
            _set_linear(self.layers[group.consumer], weight[:, rows].clone(), None if bias is None else bias.clone())
        self._shrunk = True
        return sum(layer.weight.numel() for layer in self.layers.values())

    def prepare(self, rho: float, method: str = "magnitude") -> None:
        """Work out (and cache) what (rho, method) keeps without touching the layers, so that a later
        `apply` only writes weights: the ranking is the slow part."""
        rho, method = check_ratio(rho), check_method(method)
        if rho == 1.0:
            return
        with self._lock:
            self._keeps(rho, method)

    def apply(self, rho: float, method: str = "magnitude") -> PruneState:
        """Set every layer to its dense weights pruned at (rho, method). Thread-safe; idempotent."""
        rho, method = check_ratio(rho), check_method(method)
        with self._lock:
            if rho == self.state.rho and (method == self.state.method or rho == 1.0):
                self.state = replace(self.state, method=method)  # at rho = 1 every method is the same
                return self.state
            if self._shrunk or rho == 1.0:
                self._restore_dense()
            if rho == 1.0:
                kept = self.state.total
            elif method == "structured":
                kept = self._apply_structured(rho)
            else:
                kept = self._apply_masks(rho, method)
            self.state = PruneState(rho, method, kept, self.state.total)
            return self.state
