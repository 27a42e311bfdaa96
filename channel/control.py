"""The gRPC control service of the emulator (coinfer.v1.ChannelControl) and its Python client.

The device keeps one client and calls `set_tx_power(p)` whenever a plan changes p:

    from coinfer.channel import ChannelControlClient
    with ChannelControlClient("127.0.0.1:7001") as channel:
        channel.set_tx_power(0.15)
        print(channel.stats().rate_bps)

Every client method returns a coinfer.channel.model.ChannelStats; an invalid value raises
ValueError (the server's INVALID_ARGUMENT / FAILED_PRECONDITION), anything else grpc.RpcError.
"""
from __future__ import annotations

import asyncio
import math
from dataclasses import fields

import grpc

from coinfer import security

from coinfer.channel.model import FIXED, RADIO, UNLIMITED, ChannelStats, RadioNotConfigured
from coinfer.protos import channel_pb2, channel_pb2_grpc

_MODE_TO_PROTO = {RADIO: channel_pb2.CHANNEL_MODE_RADIO, FIXED: channel_pb2.CHANNEL_MODE_FIXED,
                  UNLIMITED: channel_pb2.CHANNEL_MODE_UNLIMITED}
_MODE_FROM_PROTO = {v: k for k, v in _MODE_TO_PROTO.items()}


def stats_to_proto(stats: ChannelStats) -> channel_pb2.ChannelStats:
    values = stats.to_dict()
    values["mode"] = _MODE_TO_PROTO[stats.mode]
    return channel_pb2.ChannelStats(**values)


def stats_from_proto(msg: channel_pb2.ChannelStats) -> ChannelStats:
    values = {f.name: getattr(msg, f.name) for f in fields(ChannelStats)}
    values["mode"] = _MODE_FROM_PROTO.get(msg.mode, RADIO)
    return ChannelStats(**values)


class ControlListenError(OSError):
    """The control service could not bind its address."""


class ChannelControlServicer(channel_pb2_grpc.ChannelControlServicer):
    """Turns each call into one call on the ChannelEmulator, on the emulator's own event loop (where the
    emulator's methods run directly: nothing waits on a thread)."""

    def __init__(self, emulator):
        self.emulator = emulator

    async def _reply(self, context, action) -> channel_pb2.ChannelStats:
        try:
            return stats_to_proto(action())
        except ValueError as exc:
            code = (grpc.StatusCode.FAILED_PRECONDITION if isinstance(exc, RadioNotConfigured)
                    else grpc.StatusCode.INVALID_ARGUMENT)
            await context.abort(code, str(exc))

    async def SetTxPower(self, request, context):
        return await self._reply(context, lambda: self.emulator.set_tx_power(request.watts))

    async def SetGain(self, request, context):
        which = request.WhichOneof("value")
        if which is None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "set one of gain, gain_db, distance_m")
        return await self._reply(context, lambda: self.emulator.set_gain(**{which: getattr(request, which)}))

    async def SetRate(self, request, context):
        which = request.WhichOneof("mode")
        if which == "fixed_bps":
            return await self._reply(context, lambda: self.emulator.set_rate(request.fixed_bps))
        if which == "unlimited" and request.unlimited:
            return await self._reply(context, self.emulator.set_unlimited)
        if which == "radio" and request.radio:
            return await self._reply(context, self.emulator.use_radio)
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "set one of fixed_bps, unlimited=true, radio=true")

    async def GetStats(self, request, context):
        return await self._reply(context, self.emulator.stats)


class _ControlServer:
    def __init__(self, served, loop: asyncio.AbstractEventLoop):
        self.served, self.loop = served, loop

    def stop(self, grace_s: float = 1.0) -> None:
        if self.loop.is_closed():
            return
        asyncio.run_coroutine_threadsafe(self.served.stop(grace_s), self.loop).result(grace_s + 10)


def start_control_server(emulator, address: str, loop: asyncio.AbstractEventLoop) -> tuple[_ControlServer, int]:
    """Serve ChannelControl for `emulator` on address (port 0 picks one), on the emulator's event loop
    `loop`; returns (server, port)."""
    from coinfer.serving import start_grpc_server

    servicer = ChannelControlServicer(emulator)
    starting = start_grpc_server(lambda server: channel_pb2_grpc.add_ChannelControlServicer_to_server(servicer, server),
                                 address, option_name="--control")
    try:
        served = asyncio.run_coroutine_threadsafe(starting, loop).result(30)
    except OSError as exc:
        raise ControlListenError(str(exc)) from None
    return _ControlServer(served, loop), served.port


class ChannelControlClient:
    """A client of ChannelControl (the device's handle on its radio)."""

    def __init__(self, target: str, timeout_s: float = 5.0):
        self.target, self.timeout_s = target, timeout_s
        self._channel = security.channel(target)
        self._stub = channel_pb2_grpc.ChannelControlStub(self._channel)

    def _call(self, method, request) -> ChannelStats:
        try:
            return stats_from_proto(method(request, timeout=self.timeout_s))
        except grpc.RpcError as exc:
            if exc.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION):
                raise ValueError(exc.details()) from None
            raise

    def set_tx_power(self, watts: float) -> ChannelStats:
        return self._call(self._stub.SetTxPower, channel_pb2.ChannelTxPowerRequest(watts=watts))

    def set_gain(self, gain: float | None = None, *, gain_db: float | None = None,
                 distance_m: float | None = None) -> ChannelStats:
        given = {k: v for k, v in (("gain", gain), ("gain_db", gain_db), ("distance_m", distance_m))
                 if v is not None}
        if len(given) != 1:
            raise ValueError("give exactly one of gain, gain_db, distance_m")
        return self._call(self._stub.SetGain, channel_pb2.ChannelGainRequest(**given))

    def set_rate(self, rate_bps: float) -> ChannelStats:
        if not (math.isfinite(rate_bps) and rate_bps > 0):
            raise ValueError(f"rate must be a finite number of bit/s > 0, got {rate_bps!r}")
        return self._call(self._stub.SetRate, channel_pb2.ChannelRateRequest(fixed_bps=rate_bps))

    def set_unlimited(self) -> ChannelStats:
        return self._call(self._stub.SetRate, channel_pb2.ChannelRateRequest(unlimited=True))

    def use_radio(self) -> ChannelStats:
        return self._call(self._stub.SetRate, channel_pb2.ChannelRateRequest(radio=True))

    def stats(self) -> ChannelStats:
        return self._call(self._stub.GetStats, channel_pb2.ChannelStatsRequest())

    def wait_ready(self, timeout_s: float = 10.0) -> None:
        grpc.channel_ready_future(self._channel).result(timeout=timeout_s)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "ChannelControlClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
