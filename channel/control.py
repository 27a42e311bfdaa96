"""The gRPC control service of the emulator (coinfer.v1.ChannelControl) and its Python client.

The device keeps one client and calls `set_tx_power(p)` whenever a plan changes p:

    from coinfer.channel import ChannelControlClient
    with ChannelControlClient("127.0.0.1:7001") as channel:
        channel.set_tx_power(0.15)
        print(channel.stats().rate_bps)

Every client method returns a coinfer.channel.model.ChannelStats; an invalid value raises
ValueError (the server's INVALID_ARGUMENT / FAILED_PRECONDITION), anything else grpc.RpcError.

The service reads each request strictly: a value outside the limits of coinfer.channel.config, or
whose gain or rate would not be finite, is INVALID_ARGUMENT naming the field, with nothing changed;
so is a bool field whose wire value is anything but 0 or 1 (protobuf itself reads any non-zero varint
as true, so the raw bytes are checked: `nonbinary_bool`), and bytes that do not parse.
"""
from __future__ import annotations

import asyncio
import math
from dataclasses import fields

import grpc
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError

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


# -- strict request reading ------------------------------------------------------------------------
_MAX_NESTING = 64


def _varint(raw: bytes, pos: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= end:
            raise ValueError("truncated varint")
        byte = raw[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint longer than 10 bytes")


def _scan(raw: bytes, pos: int, end: int, descriptor, prefix: str, depth: int,
          group: int | None = None) -> tuple[int, str | None]:
    """Walk the fields in raw[pos:end] (a message of `descriptor`, None for an unknown one), up to the
    end-group tag of `group` if given. Returns (position after, first bad bool or None)."""
    if depth > _MAX_NESTING:
        raise ValueError("messages nested too deep")
    while pos < end:
        key, pos = _varint(raw, pos, end)
        number, wire = key >> 3, key & 7
        field = descriptor.fields_by_number.get(number) if descriptor is not None else None
        is_bool = field is not None and field.type == FieldDescriptor.TYPE_BOOL
        name = prefix + field.name if field is not None else None
        if wire == 0:
            value, pos = _varint(raw, pos, end)
            if is_bool and value > 1:
                return pos, f"{name}: a bool must be 0 or 1, got {value} on the wire"
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        elif wire == 2:
            length, pos = _varint(raw, pos, end)
            stop = pos + length
            if stop > end:
                raise ValueError("truncated length-delimited field")
            if is_bool:                                  # a packed repeated bool
                p = pos
                while p < stop:
                    value, p = _varint(raw, p, stop)
                    if value > 1:
                        return stop, f"{name}: a bool must be 0 or 1, got {value} on the wire"
            elif field is not None and field.type == FieldDescriptor.TYPE_MESSAGE:
                _, bad = _scan(raw, pos, stop, field.message_type, name + ".", depth + 1)
                if bad:
                    return stop, bad
            pos = stop
        elif wire == 3:                                  # a group (unknown in proto3: skipped)
            pos, bad = _scan(raw, pos, end, None, "", depth + 1, group=number)
            if bad:
                return pos, bad
        elif wire == 4:
            if group != number:
                raise ValueError("unmatched end-group tag")
            return pos, None
        else:
            raise ValueError(f"wire type {wire} does not exist")
        if pos > end:
            raise ValueError("truncated field")
    if group is not None:
        raise ValueError("group without its end tag")
    return pos, None


def nonbinary_bool(raw: bytes, descriptor) -> str | None:
    """'field: a bool must be 0 or 1, got N on the wire' for the first bool field (nested messages,
    packed repeated bools included) of the serialized message `raw` whose varint is neither 0 nor 1;
    None when there is none. Python protobuf parses 2 or 255 as True, so only the bytes can tell.
    ValueError when `raw` is not a well-formed protobuf message."""
    return _scan(raw, 0, len(raw), descriptor, "", 0)[1]


class Refused:
    """What `strict_deserializer` hands a handler in place of a request it will not take."""
    __slots__ = ("reason",)

    def __init__(self, reason: str):
        self.reason = reason


def strict_deserializer(message_class):
    """A gRPC request deserializer for `message_class` that returns a Refused (the handler answers
    INVALID_ARGUMENT with its reason) for bytes that do not parse or that carry a bool other than 0/1."""
    def deserialize(raw: bytes):
        try:
            message = message_class.FromString(raw)
            bad = nonbinary_bool(raw, message_class.DESCRIPTOR)
        except (DecodeError, ValueError) as exc:
            return Refused(f"cannot parse {message_class.DESCRIPTOR.name}: {exc}")
        return Refused(bad) if bad else message
    return deserialize


def add_control_servicer(servicer, server) -> None:
    """channel_pb2_grpc.add_ChannelControlServicer_to_server, with every request read by
    strict_deserializer (the methods are taken from the proto's service, so none is missed)."""
    service = channel_pb2.DESCRIPTOR.services_by_name["ChannelControl"]
    handlers = {
        method.name: grpc.unary_unary_rpc_method_handler(
            getattr(servicer, method.name),
            request_deserializer=strict_deserializer(getattr(channel_pb2, method.input_type.name)),
            response_serializer=getattr(channel_pb2, method.output_type.name).SerializeToString)
        for method in service.methods}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))
    server.add_registered_method_handlers(service.full_name, handlers)


async def _accepted(request, context):
    """The request, or INVALID_ARGUMENT when strict_deserializer refused it."""
    if isinstance(request, Refused):
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.reason)
    return request


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
        request = await _accepted(request, context)
        return await self._reply(context, lambda: self.emulator.set_tx_power(request.watts))

    async def SetGain(self, request, context):
        request = await _accepted(request, context)
        which = request.WhichOneof("value")
        if which is None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "set one of gain, gain_db, distance_m")
        return await self._reply(context, lambda: self.emulator.set_gain(**{which: getattr(request, which)}))

    async def SetRate(self, request, context):
        request = await _accepted(request, context)
        which = request.WhichOneof("mode")
        if which == "fixed_bps":
            return await self._reply(context, lambda: self.emulator.set_rate(request.fixed_bps))
        if which == "unlimited" and request.unlimited:
            return await self._reply(context, self.emulator.set_unlimited)
        if which == "radio" and request.radio:
            return await self._reply(context, self.emulator.use_radio)
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "set one of fixed_bps, unlimited=true, radio=true")

    async def GetStats(self, request, context):
        await _accepted(request, context)
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
    starting = start_grpc_server(lambda server: add_control_servicer(servicer, server),
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
