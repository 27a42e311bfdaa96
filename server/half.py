"""The server's half of the model: blocks k+1..L and the head, with pruning as a live knob."""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import torch

from coinfer.models import ModelSource
from coinfer.pruning import Pruner, check_method, check_ratio
from coinfer.split import GenerationOptions, ServerPart


@dataclass(frozen=True)
class ServerPlan:
    """What the server half is set to; a request must match epoch and split point."""

    epoch: int
    split: int
    rho: float
    method: str


def pick_device(requested: str = "auto") -> torch.device:
    """CUDA when present (or asked for), else the CPU; a missing GPU is reported, never fatal."""
    if requested == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device(requested if requested.startswith("cuda") else "cuda:0")
    if requested.startswith("cuda"):
        import logging

        logging.getLogger(__name__).warning("no CUDA device available; the server half runs on the CPU")
    return torch.device("cpu")


class ServerHalf:
    def __init__(self, src: ModelSource, split: int, rho: float = 1.0, method: str = "magnitude",
                 epoch: int = 0, device: str = "auto"):
        self.src = src
        self.device = pick_device(device)
        self.part = ServerPart(src, split).to(self.device)
        self.pruner = Pruner(self.part.linear_layers(), seed=src.seed, head_dim=src.head_dim)
        self.pruner.apply(check_ratio(rho), check_method(method))
        self.plan = ServerPlan(epoch, split, rho, method)
        # One forward at a time: concurrent forwards on a few cores only thrash each other's caches.
        self._compute_lock = threading.Lock()

    @property
    def output_kind(self) -> str:
        return self.part.output_kind

    def set_pruning(self, rho: float, method: str) -> None:
        with self._compute_lock:
            state = self.pruner.apply(rho, method)
            self.plan = ServerPlan(self.plan.epoch, self.plan.split, state.rho, state.method)

    def run(self, x: torch.Tensor, attention_mask: torch.Tensor,
            generation: GenerationOptions) -> tuple[torch.Tensor, float, float]:
        """(output on the CPU, seconds queued for the compute lock, seconds computing)."""
        waited_from = time.perf_counter()
        with self._compute_lock:
            started = time.perf_counter()
            out = self.part(x.to(self.device), attention_mask.to(self.device), generation)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)  # host time is only right once the GPU is done
            out = out.cpu()
            finished = time.perf_counter()
        return out, started - waited_from, finished - started
