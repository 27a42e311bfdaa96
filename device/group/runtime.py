"""The device group at work against a server: DeviceRuntime's request path with the group as the device half.

Only the leader (rank 0, this process) talks to the server; it tokenises, the group computes the
device half, and the leader sends the hidden states exactly as a single device would (same codec,
message, stream and checks), so the server cannot tell a group from one device.
"""
from __future__ import annotations

import torch

from coinfer.device.group.ranks import DeviceGroup
from coinfer.device.runtime import DeviceRuntime
from coinfer.errors import UsageError
from coinfer.rpc import DEFAULT_MAX_MESSAGE_BYTES
from coinfer.split import GenerationOptions


class _GroupPart:
    """Looks like DevicePart to DeviceRuntime: call it with (ids, mask), ask it `runs_alone`; it has
    no prunable layers here (the group runs the dense half)."""

    def __init__(self, group: DeviceGroup, mode: str, probe: bool):
        self.group, self.mode, self.probe = group, mode, probe

    @property
    def runs_alone(self) -> bool:
        return self.group.runs_alone

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.group.forward(input_ids, attention_mask, self.mode, self.probe)

    def linear_layers(self) -> dict:
        return {}


class GroupRuntime(DeviceRuntime):
    """DeviceRuntime whose device half is a DeviceGroup (no pruning: the group runs the dense half).

    With `server` None, `infer_tokens` returns the device half's output (hidden states) unsent.
    """

    requires_server = False

    def __init__(self, group: DeviceGroup, mode: str = "exact", server: str | None = None, codec: str = "fp32",
                 epoch: int = 0, max_length: int | None = None, generation: GenerationOptions = GenerationOptions(),
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, timeout_s: float = 120.0,
                 use_stream: bool = True, probe: bool = False):
        self.group, self.mode, self.probe = group, mode, probe
        # No server (or nothing left for one): results carry the device half's output itself.
        super().__init__(group.src, group.split, 1.0, "magnitude", server if not group.runs_alone else None,
                         codec, epoch, max_length, generation, max_message_bytes, timeout_s, use_stream)

    def _make_part(self, split: int) -> _GroupPart:
        if split != self.group.split:
            raise UsageError(f"a device group is sharded for k={self.group.split}; it cannot move to k={split}")
        return _GroupPart(self.group, self.mode, self.probe)

    def apply(self, epoch, split, rho, method, codec, freq_hz=None, max_freq_hz=None, tx_power_w=None, **about):
        if rho != 1.0:
            raise UsageError("a device group runs the dense device half; pruning is not supported (rho must be 1)")
        return super().apply(epoch, split, rho, method, codec, freq_hz, max_freq_hz, tx_power_w, **about)
