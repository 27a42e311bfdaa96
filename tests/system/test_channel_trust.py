"""The channel emulator's control service believes no stranger (issue 15, finding 12): a real
`coinfer channel` process, sent hostile values over raw gRPC as a client built from the protos (or
from bytes) would. Each is INVALID_ARGUMENT naming the field, and GetStats is exactly as before."""
from __future__ import annotations

import math
import subprocess

import grpc
import pytest

from coinfer.lab.launch import ServiceProcess
from coinfer.protos import channel_pb2 as pb
from coinfer.protos import channel_pb2_grpc as pb_grpc
from coinfer.radio import dbm_per_hz_to_w_per_hz, shannon_rate_bps

SERVICE = "/coinfer.v1.ChannelControl/"


@pytest.fixture(scope="module")
def channel():
    # A forced rate with the radio parameters kept: SetRate(unlimited) and SetRate(radio) both
    # visibly change the mode, so a bool taken as true would show.
    with ServiceProcess(["channel", "--listen", "127.0.0.1:0", "--upstream", "127.0.0.1:9",
                         "--control", "127.0.0.1:0", "--rate-bps", "2e6", "--bandwidth-hz", "1e6",
                         "--tx-power-w", "0.1", "--gain-db", "-90"],
                        name="channel", stderr=subprocess.STDOUT, expect=("listening", "control")) as proc:
        with grpc.insecure_channel(proc.endpoints["control"]) as ch:
            grpc.channel_ready_future(ch).result(timeout=30)
            yield ch


def stats(ch) -> pb.ChannelStats:
    return pb_grpc.ChannelControlStub(ch).GetStats(pb.ChannelStatsRequest(), timeout=10)


def unchanged(before: pb.ChannelStats, after: pb.ChannelStats) -> bool:
    a, b = pb.ChannelStats(), pb.ChannelStats()
    a.CopyFrom(before)
    b.CopyFrom(after)
    for m in (a, b):
        m.ClearField("uptime_s")
        m.ClearField("mean_rate_bps")
    # The time-weighted mean moves on with time at the unchanged rate, and only so.
    if math.isinf(before.mean_rate_bps):     # an unlimited spell earlier makes the mean inf for good
        expected = before.mean_rate_bps
    else:
        expected = (before.mean_rate_bps * before.uptime_s
                    + before.rate_bps * (after.uptime_s - before.uptime_s)) / after.uptime_s
    return a == b and after.mean_rate_bps == pytest.approx(expected, rel=1e-9)


def raw_call(ch, method: str, raw: bytes) -> pb.ChannelStats:
    call = ch.unary_unary(SERVICE + method, request_serializer=None,
                          response_deserializer=pb.ChannelStats.FromString)
    return call(raw, timeout=10)


N0 = dbm_per_hz_to_w_per_hz(-174)
GOOD = {  # after each refusal, a good value of the same call, and what its reply must show
    "SetGain": (pb.ChannelGainRequest(gain_db=-80.0), lambda r: r.gain == pytest.approx(1e-8)),
    "SetTxPower": (pb.ChannelTxPowerRequest(watts=0.2), lambda r: r.tx_power_w == 0.2),
    "SetRate": (pb.ChannelRateRequest(fixed_bps=3e6), lambda r: r.mode == pb.CHANNEL_MODE_FIXED and r.rate_bps == 3e6),
    "unlimited": (b"\x10\x01", lambda r: r.mode == pb.CHANNEL_MODE_UNLIMITED and math.isinf(r.rate_bps)),
    "radio": (b"\x18\x01", lambda r: r.mode == pb.CHANNEL_MODE_RADIO and
              r.rate_bps == pytest.approx(shannon_rate_bps(1e6, N0, r.gain, r.tx_power_w), rel=1e-9)),
}

# (call, the hostile request or its raw bytes, the field the refusal starts with, what it also says, good)
HOSTILE = [
    ("SetGain", pb.ChannelGainRequest(gain_db=5000.0), "gain_db", "5000 gives a non-finite gain", "SetGain"),
    ("SetGain", pb.ChannelGainRequest(gain_db=-5000.0), "gain_db", "[-300, 300] dB", "SetGain"),
    ("SetGain", pb.ChannelGainRequest(distance_m=1e-300), "distance_m", "1e-300 gives a non-finite gain", "SetGain"),
    ("SetGain", pb.ChannelGainRequest(distance_m=-1.0), "distance_m", "> 0", "SetGain"),
    ("SetGain", pb.ChannelGainRequest(gain=math.inf), "gain", "finite", "SetGain"),
    ("SetGain", pb.ChannelGainRequest(gain=math.nan), "gain", "finite", "SetGain"),
    ("SetTxPower", pb.ChannelTxPowerRequest(watts=1e308), "watts", "[0, 1000] W", "SetTxPower"),
    ("SetTxPower", pb.ChannelTxPowerRequest(watts=math.inf), "watts", "finite", "SetTxPower"),
    ("SetTxPower", pb.ChannelTxPowerRequest(watts=math.nan), "watts", "finite", "SetTxPower"),
    ("SetRate", pb.ChannelRateRequest(fixed_bps=1e308), "fixed_bps", "(0, 1e+15] bit/s", "SetRate"),
    ("SetRate", pb.ChannelRateRequest(fixed_bps=math.nan), "fixed_bps", "finite", "SetRate"),
    # bools: field 2 is `unlimited`, field 3 `radio`; protobuf alone reads 2 and 255 as true
    ("SetRate", b"\x18\x02", "radio", "a bool must be 0 or 1, got 2", "radio"),
    ("SetRate", b"\x18\xff\x01", "radio", "a bool must be 0 or 1, got 255", "radio"),
    # last: after an unlimited spell the time-weighted mean is inf for good
    ("SetRate", b"\x10\x02", "unlimited", "a bool must be 0 or 1, got 2", "unlimited"),
    ("SetRate", b"\x10\xff\x01", "unlimited", "a bool must be 0 or 1, got 255", "unlimited"),
]


@pytest.mark.parametrize("method, hostile, field, says, good", HOSTILE,
                         ids=[f"{m}-{f}-{i}" for i, (m, _, f, _, _) in enumerate(HOSTILE)])
def test_hostile_control_values_are_invalid_argument_with_nothing_changed(channel, method, hostile, field,
                                                                          says, good):
    stub = pb_grpc.ChannelControlStub(channel)
    stub.SetRate(pb.ChannelRateRequest(fixed_bps=2e6), timeout=10)   # the same start for every case
    before = stats(channel)
    raw = hostile if isinstance(hostile, bytes) else hostile.SerializeToString()
    with pytest.raises(grpc.RpcError) as refused:
        raw_call(channel, method, raw)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, refused.value.details()
    details = refused.value.details()
    assert details.startswith(f"{field}: ") and says in details, details
    assert unchanged(before, stats(channel))
    request, shows = GOOD[good]
    reply = raw_call(channel, method, request if isinstance(request, bytes) else request.SerializeToString())
    assert shows(reply), reply


def test_bytes_that_do_not_parse_are_invalid_argument(channel):
    before = stats(channel)
    with pytest.raises(grpc.RpcError) as refused:
        raw_call(channel, "SetRate", b"\x10\xff")                   # a varint cut short
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details().startswith("cannot parse ChannelRateRequest")
    assert unchanged(before, stats(channel))
