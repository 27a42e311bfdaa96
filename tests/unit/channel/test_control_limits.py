"""Channel control refuses what it cannot represent (issue 15, finding 12): a value outside the limits,
or one whose gain or rate would overflow, is a ValueError naming the field with the model exactly as it
was; a bool on the wire is 0 or 1 and nothing else."""
from __future__ import annotations

import math

import pytest

from coinfer.channel import ChannelEmulator
from coinfer.channel.config import ChannelConfig
from coinfer.channel.control import Refused, nonbinary_bool, strict_deserializer
from coinfer.channel.model import ChannelModel
from coinfer.errors import UsageError
from coinfer.protos import channel_pb2
from coinfer.radio import dbm_per_hz_to_w_per_hz, path_loss_gain, shannon_rate_bps

UP = "127.0.0.1:9"
RADIO = dict(bandwidth_hz=1e6, tx_power_w=0.1)
N0 = dbm_per_hz_to_w_per_hz(-174)
NAN, INF = math.nan, math.inf

# (verb, bad value, the field its message must start with, and what else it must say)
BAD = [
    ("set_tx_power", 1e308, "watts", "tx power"),
    ("set_tx_power", 1000.1, "watts", "[0, 1000] W"),
    ("set_tx_power", -1.0, "watts", ""),
    ("set_tx_power", INF, "watts", "finite"),
    ("set_tx_power", NAN, "watts", "finite"),
    ("set_gain", 0.0, "gain", ""),
    ("set_gain", -1e-9, "gain", ""),
    ("set_gain", 1e31, "gain", "[1e-30, 1e+30]"),
    ("set_gain", 1e-31, "gain", "[1e-30, 1e+30]"),
    ("set_gain", INF, "gain", "finite"),
    ("set_gain", NAN, "gain", "finite"),
    ("set_gain_db", 5000.0, "gain_db", "5000 gives a non-finite gain"),
    ("set_gain_db", 301.0, "gain_db", "[-300, 300] dB"),
    ("set_gain_db", -5000.0, "gain_db", "[-300, 300] dB"),
    ("set_gain_db", INF, "gain_db", "finite"),
    ("set_gain_db", NAN, "gain_db", "finite"),
    ("set_distance", 1e-300, "distance_m", "1e-300 gives a non-finite gain"),
    ("set_distance", 1e-4, "distance_m", "[0.001, 1e+07] m"),
    ("set_distance", 1e8, "distance_m", "[0.001, 1e+07] m"),
    ("set_distance", 0.0, "distance_m", "> 0"),
    ("set_distance", -5.0, "distance_m", "> 0"),
    ("set_distance", INF, "distance_m", "finite"),
    ("set_distance", NAN, "distance_m", "finite"),
    ("set_fixed_rate", 1e308, "fixed_bps", "(0, 1e+15] bit/s"),
    ("set_fixed_rate", 0.0, "fixed_bps", ""),
    ("set_fixed_rate", INF, "fixed_bps", "finite"),
    ("set_fixed_rate", NAN, "fixed_bps", "finite"),
]


def radio_model(**options) -> ChannelModel:
    return ChannelModel(ChannelConfig(upstream=UP, **{**RADIO, "distance_m": 10.0, **options}).validate(),
                        origin=0.0)


def state(model: ChannelModel) -> dict:
    return dict(vars(model))


@pytest.mark.parametrize("verb, value, field, says", BAD)
def test_a_refused_change_leaves_the_model_exactly_as_it_was(verb, value, field, says):
    m = radio_model()
    m.advance(1.0)
    before, stats_before = state(m), m.stats(2.0)
    with pytest.raises(ValueError) as refused:
        getattr(m, verb)(value, at=1.5)
    message = str(refused.value)
    assert message.startswith(f"{field}: ") and says in message
    assert state(m) == before and m.stats(2.0) == stats_before
    assert math.isfinite(m.mean_rate(3.0))
    # A good value afterwards works, and the mean still counts the old rate up to the change.
    good = {"set_tx_power": 0.2, "set_gain": 1e-9, "set_gain_db": -90.0, "set_distance": 20.0,
            "set_fixed_rate": 5e6}[verb]
    old_rate = m.rate_at(1.5)
    getattr(m, verb)(good, at=1.5)
    expected = {"set_tx_power": shannon_rate_bps(1e6, N0, path_loss_gain(10.0, -40.0, 3.0), 0.2),
                "set_gain": shannon_rate_bps(1e6, N0, 1e-9, 0.1),
                "set_gain_db": shannon_rate_bps(1e6, N0, 1e-9, 0.1),
                "set_distance": shannon_rate_bps(1e6, N0, path_loss_gain(20.0, -40.0, 3.0), 0.1),
                "set_fixed_rate": 5e6}[verb]
    assert m.rate_at(2.0) == pytest.approx(expected, rel=1e-12)
    assert m.mean_rate(2.0) == pytest.approx((old_rate * 1.5 + expected * 0.5) / 2.0, rel=1e-12)


def test_values_that_are_not_numbers_are_refused_naming_the_field():
    m = radio_model()
    before = state(m)
    for verb, field in (("set_tx_power", "watts"), ("set_gain", "gain"), ("set_distance", "distance_m")):
        for value in ("0.1", None, True, 10 ** 400):
            with pytest.raises(ValueError, match=f"^{field}: "):
                getattr(m, verb)(value)
    assert state(m) == before


def test_an_overflowing_path_loss_model_is_refused_not_stored():
    # alpha = 200: 1 mm is 10^600 too much gain for a double; alpha = 30: 1e86, beyond the 1e30 cap
    for exponent, says in ((200.0, "0.001 gives a non-finite gain"), (30.0, "outside (0, 1e+30]")):
        m = radio_model(path_loss_exponent=exponent)
        before = state(m)
        with pytest.raises(ValueError, match=f"^distance_m: .*{says.replace('(', '.').replace('+', '.')}"):
            m.set_distance(1e-3)
        assert state(m) == before
        m.set_distance(10.0)
        assert m.distance_m == 10.0


def test_a_change_whose_rate_would_not_be_finite_is_refused():
    # Within the limits every rate is finite; the model checks the rate anyway, before it commits.
    m = radio_model()
    m.noise_psd_w_per_hz = 1e-320            # what the limits forbid, to reach the last check
    before = state(m)
    with pytest.raises(ValueError, match=r"^watts: 1000 gives a non-finite rate"):
        m.set_tx_power(1e3)
    with pytest.raises(ValueError, match=r"^gain: 1e\+30 gives a non-finite rate"):
        m.set_gain(1e30)
    assert state(m) == before


def test_fading_is_included_in_the_rate_check():
    m = radio_model(fading="rayleigh", coherence_s=0.01, seed=1)
    assert m.peak_rate() == pytest.approx(
        shannon_rate_bps(1e6, N0, path_loss_gain(10.0, -40.0, 3.0) * 53 * math.log(2), 0.1), rel=1e-6)
    for t in range(0, 10_000, 7):            # no block ever beats the peak the check uses
        assert m.rate_at(t * 0.01) <= m.peak_rate()


@pytest.mark.parametrize("options, complaint", [
    (dict(RADIO, gain_db=5000.0), "--gain-db must be in [-300, 300] dB"),
    (dict(RADIO, gain=1e40), "--gain must be in [1e-30, 1e+30]"),
    (dict(RADIO, distance_m=1e-300), "--distance-m must be in [0.001, 1e+07] m"),
    (dict(RADIO, distance_m=1e-3, path_loss_exponent=200.0), "--distance-m 0.001 with"),
    (dict(bandwidth_hz=1e6, tx_power_w=1e308, gain=1e-9), "--tx-power-w must be at most 1000 W"),
    (dict(bandwidth_hz=1e-300, tx_power_w=0.1, gain=1e-9), "--bandwidth-hz must be in [1, 1e+12] Hz"),
    (dict(RADIO, gain=1e-9, noise_psd_dbm_hz=-4000.0), "--noise-psd-dbm-hz must be in [-300, 0]"),
    (dict(rate_bps=1e308), "--rate-bps must be at most 1e+15 bit/s"),
])
def test_options_have_the_same_limits(options, complaint):
    with pytest.raises(UsageError) as refused:
        ChannelConfig(upstream=UP, **options).validate()
    assert complaint in str(refused.value)


def test_a_trace_gain_beyond_the_limits_is_refused(tmp_path):
    for text, complaint in (("time_s,gain_db\n0,-90\n1,5000\n", "--trace"),
                            ("0,1e-9\n1,1e40\n", "--trace: point 2: gain 1e+40")):
        path = tmp_path / "t.csv"
        path.write_text(text)
        with pytest.raises(UsageError, match=complaint.replace("+", r"\+")):
            ChannelConfig(upstream=UP, **RADIO, trace=str(path)).validate()


# -- the emulator: the same refusals through its thread-safe API; stats unchanged -------------------
def comparable(stats) -> dict:
    values = stats.to_dict()
    del values["uptime_s"]
    mean = values.pop("mean_rate_bps")
    return values | {"mean_finite": math.isfinite(mean)}


def test_emulator_refusals_leave_its_stats_unchanged():
    with ChannelEmulator(upstream=UP, **RADIO, gain=1e-9) as emu:
        before = emu.stats()
        for verb, kwargs, field in (
                ("set_tx_power", dict(watts=1e308), "watts"), ("set_tx_power", dict(watts=NAN), "watts"),
                ("set_gain", dict(gain_db=5000.0), "gain_db"), ("set_gain", dict(distance_m=1e-300), "distance_m"),
                ("set_gain", dict(gain=INF), "gain"), ("set_rate", dict(rate_bps=1e308), "fixed_bps")):
            with pytest.raises(ValueError, match=f"^{field}: "):
                getattr(emu, verb)(**kwargs)
            after = emu.stats()
            assert comparable(after) == comparable(before), (verb, kwargs)
            assert after.mean_rate_bps == pytest.approx(before.mean_rate_bps, rel=1e-9)
        assert emu.set_tx_power(0.2).rate_bps == pytest.approx(shannon_rate_bps(1e6, N0, 1e-9, 0.2))
        assert emu.set_gain(distance_m=10.0).distance_m == 10.0
        assert math.isfinite(emu.stats().mean_rate_bps)


# -- bools on the wire ---------------------------------------------------------------------------
RATE = channel_pb2.ChannelRateRequest


@pytest.mark.parametrize("raw, refused", [
    (b"\x10\x01", None),                               # unlimited = 1
    (b"\x18\x01", None),                               # radio = 1
    (b"\x10\x00", None),                               # unlimited = 0 (an explicit false)
    (b"\x10\x81\x80\x00", None),                       # 1, in a longer (legal) varint
    (b"\x09" + bytes(8) + b"\x18\x01", None),          # fixed_bps then radio = 1
    (b"\x10\x02", "unlimited: a bool must be 0 or 1, got 2"),
    (b"\x10\xff\x01", "unlimited: a bool must be 0 or 1, got 255"),
    (b"\x18\x80\x01", "radio: a bool must be 0 or 1, got 128"),
    (b"\x10" + b"\xff" * 9 + b"\x01", "unlimited: a bool must be 0 or 1, got 18446744073709551615"),
    (b"\x10\x01\x18\x02", "radio: a bool must be 0 or 1, got 2"),   # the last one set wins: checked too
    (b"\x23\x08\x05\x24\x18\x02", "radio: a bool must be 0 or 1, got 2"),  # after an unknown group
])
def test_a_bool_is_0_or_1_on_the_wire(raw, refused):
    # Python protobuf itself takes any non-zero varint as true: only the bytes can tell.
    assert RATE.FromString(raw).unlimited or RATE.FromString(raw).radio or raw == b"\x10\x00"
    found = nonbinary_bool(raw, RATE.DESCRIPTOR)
    assert (found is None) if refused is None else found.startswith(refused)
    read = strict_deserializer(RATE)(raw)
    if refused is None:
        assert isinstance(read, RATE) and read == RATE.FromString(raw)
    else:
        assert isinstance(read, Refused) and read.reason.startswith(refused)


def test_bytes_that_are_not_a_message_are_refused_not_raised():
    for raw in (b"\x10", b"\x10\xff", b"\x0a\x05ab", b"\x24"):
        read = strict_deserializer(RATE)(raw)
        assert isinstance(read, Refused) and read.reason.startswith("cannot parse ChannelRateRequest")
    # Messages without bools pass through the same reader unchanged.
    raw = channel_pb2.ChannelGainRequest(gain_db=-90.0).SerializeToString()
    assert strict_deserializer(channel_pb2.ChannelGainRequest)(raw).gain_db == -90.0
