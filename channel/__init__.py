"""The wireless channel emulator on the device->server byte path.

A TCP proxy that delivers device->server bytes at R(p) = B log2(1 + g p / (B N0)) (system-model.md
sections 2 and 6), server->device bytes at a downlink rate, each after a one-way propagation delay.
Any TCP traffic passes through it, gRPC included.

Embedding it (the demo, tests):

    from coinfer.channel import ChannelEmulator, ChannelControlClient

    emu = ChannelEmulator(upstream="127.0.0.1:50051",        # the server
                          bandwidth_hz=10e6, tx_power_w=0.1, gain=1e-9,   # R(p) ~ 110 Mbit/s
                          delay_s=0.002, control="127.0.0.1:0")
    port = emu.start()                      # the device connects to 127.0.0.1:port
    emu.set_tx_power(0.2)                   # takes effect on the next bytes; returns ChannelStats
    emu.stats().rate_bps, emu.stats().bytes_up
    ChannelControlClient(emu.control_address).set_tx_power(0.05)   # what the device process does
    emu.stop()                              # or use `with ChannelEmulator(...) as emu:`

Options (ChannelConfig fields, the same as `coinfer channel --help`): a fixed `rate_bps`, or
`unlimited=True`, or the radio model (`bandwidth_hz`, `tx_power_w`, `noise_psd_dbm_hz` = -174, and
one of `gain`, `gain_db`, `distance_m` [+ `path_loss_db_at_1m`, `path_loss_exponent`], `trace`),
optionally `fading="rayleigh"` with `coherence_s` and `seed`; `downlink_bps`, `delay_s`, `tc_dev`.
Fading and trace clocks count from start().

Modules: radio (formulas), gain (fading, traces), config (options and their checks), model (the
rate at each instant), link (the shared token schedule), proxy (sockets), emulator (the thread),
control (gRPC service and client), tc (kernel shaping), measure (timing transfers), cli.
Names are imported lazily so that `coinfer --help` does not load grpc.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "ChannelEmulator": "coinfer.channel.emulator",
    "ChannelConfig": "coinfer.channel.config",
    "ChannelStats": "coinfer.channel.model",
    "ChannelControlClient": "coinfer.channel.control",
    "shannon_rate_bps": "coinfer.radio",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'coinfer.channel' has no attribute {name!r}")
