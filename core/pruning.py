"""Pruning a half's linear weights to a remaining ratio rho, as a live knob.

The dense weights are kept as a master copy (made on the first prune), so any ratio can be applied at
any time, up or down, without reloading the checkpoint. Masks are cached per (method, rho) because a
plan often returns to a ratio it used before.

A mask depends only on the weight and its canonical name (the random method seeds its generator from
the name), so the device, the server and a whole model in one process prune a given layer identically.
"""
from __future__ import annotations

import threading
import zlib
from collections import OrderedDict
from dataclasses import dataclass, replace

import torch
from torch import nn

METHODS = ("magnitude", "random")


def check_ratio(rho: float, field: str = "rho") -> float:
    rho = float(rho)
    if not 0.0 < rho <= 1.0 or rho != rho:
        raise ValueError(f"{field} must be in (0, 1], got {rho}")
    return rho


def check_method(method: str) -> str:
    if method not in METHODS:
        raise ValueError(f"prune method must be one of {', '.join(METHODS)}, got {method!r}")
    return method


def keep_count(numel: int, rho: float) -> int:
    """Weights kept in a layer of `numel` weights at ratio rho (at least one)."""
    return max(1, min(numel, round(rho * numel)))


def layer_mask(weight: torch.Tensor, rho: float, method: str, name: str, seed: int = 0) -> torch.Tensor:
    """Boolean mask keeping round(rho * numel) weights of one layer.

    magnitude: the largest |w| of this layer (unstructured, per layer); random: a uniformly random
    subset drawn from a generator seeded by (seed, name).
    """
    flat = weight.reshape(-1)
    keep = keep_count(flat.numel(), rho)
    mask = torch.zeros(flat.numel(), dtype=torch.bool)
    if keep == flat.numel():
        mask.fill_(True)
    elif method == "magnitude":
        mask[torch.topk(flat.abs().float(), keep, sorted=False).indices] = True
    else:
        generator = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
        mask[torch.randperm(flat.numel(), generator=generator)[:keep]] = True
    return mask.view_as(weight)


@dataclass(frozen=True)
class PruneState:
    rho: float
    method: str
    kept: int      # weights kept over all pruned layers
    total: int     # weights in all pruned layers

    @property
    def achieved_ratio(self) -> float:
        return self.kept / self.total if self.total else 1.0


class Pruner:
    """Applies (rho, method) to a set of Linear layers from their dense master copies."""

    def __init__(self, layers: dict[str, nn.Linear], seed: int = 0, cache_size: int = 3):
        self.layers = layers
        self.seed = seed
        self.cache_size = cache_size
        self._dense: dict[str, torch.Tensor] | None = None
        self._masks: OrderedDict[tuple[str, float], dict[str, torch.Tensor]] = OrderedDict()
        self._lock = threading.Lock()
        total = sum(layer.weight.numel() for layer in layers.values())
        self.state = PruneState(1.0, "magnitude", total, total)

    def _dense_weights(self) -> dict[str, torch.Tensor]:
        if self._dense is None:
            self._dense = {name: layer.weight.detach().clone() for name, layer in self.layers.items()}
        return self._dense

    def _masks_for(self, rho: float, method: str) -> dict[str, torch.Tensor]:
        key = (method, rho)
        if key in self._masks:
            self._masks.move_to_end(key)
            return self._masks[key]
        dense = self._dense_weights()
        masks = {name: layer_mask(dense[name], rho, method, name, self.seed) for name in self.layers}
        self._masks[key] = masks
        while len(self._masks) > self.cache_size:
            self._masks.popitem(last=False)
        return masks

    def apply(self, rho: float, method: str = "magnitude") -> PruneState:
        """Set every layer to its dense weights masked at (rho, method). Thread-safe; idempotent."""
        rho, method = check_ratio(rho), check_method(method)
        with self._lock:
            if rho == self.state.rho and (method == self.state.method or rho == 1.0):
                self.state = replace(self.state, method=method)  # at rho = 1 every method is the same
                return self.state
            if rho == 1.0:
                for name, layer in self.layers.items():
                    layer.weight.data.copy_(self._dense_weights()[name])
                kept = self.state.total
            else:
                masks, dense = self._masks_for(rho, method), self._dense_weights()
                kept = 0
                for name, layer in self.layers.items():
                    torch.mul(dense[name], masks[name], out=layer.weight.data)
                    kept += int(masks[name].sum())
            self.state = PruneState(rho, method, kept, self.state.total)
            return self.state
