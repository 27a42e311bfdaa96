"""The channel emulator's arithmetic, without sockets: formulas, fading, traces, options, the link's
ideal schedule. Exact checks (no timing tolerance) wherever the code computes rather than waits."""
from __future__ import annotations

import asyncio
import math

import pytest
from hypothesis import given, settings, strategies as st

from coinfer.channel.config import ChannelConfig
from coinfer.channel.gain import GainTrace, RayleighBlockFading, load_trace
from coinfer.channel.link import SharedLink
from coinfer.channel.model import ChannelModel, RadioNotConfigured
from coinfer.radio import dbm_per_hz_to_w_per_hz, path_loss_gain, shannon_rate_bps
from coinfer.errors import UsageError

UP = "127.0.0.1:9"


# -- formulas ------------------------------------------------------------------------------------
def test_thermal_noise_and_the_scenario_rate():
    # system-model.md section 7 gives N0 = 3.98e-21 W/Hz for -174 dBm/Hz.
    assert dbm_per_hz_to_w_per_hz(-174) == pytest.approx(3.98e-21, rel=1e-3)
    # R = B log2(1 + g p / (B N0)) for the scenario's channel at p = 0.2 W, computed by hand.
    expected = 1e7 * math.log2(1 + 1e-9 * 0.2 / (1e7 * 3.98e-21))
    assert shannon_rate_bps(1e7, 3.98e-21, 1e-9, 0.2) == pytest.approx(expected, rel=1e-12)
    assert shannon_rate_bps(1e7, 3.98e-21, 1e-9, 0.0) == 0.0


def test_path_loss_follows_the_exponent():
    # the reference at 1 m is a gain in dB: -40 dB is the emulator's default 40 dB loss
    assert path_loss_gain(1.0, -40.0, 3.0) == pytest.approx(1e-4)
    # Ten times the distance at alpha = 3 costs 30 dB.
    assert path_loss_gain(10.0, -40.0, 3.0) == pytest.approx(1e-7)
    assert path_loss_gain(2.0, -30.0, 2.0) == pytest.approx(1e-3 / 4)
    # the spec's section 6 defaults: PL0 = -30 dB, alpha = 3, so 1e-9 at 100 m
    assert path_loss_gain(100.0) == pytest.approx(1e-9, rel=1e-12)
    with pytest.raises(ValueError, match="distance"):
        path_loss_gain(0.0)


def test_the_emulator_takes_its_path_loss_option_as_a_loss():
    # --path-loss-db-at-1m 50 (a loss) at 1 m gives g = 1e-5, not 1e5
    cfg = ChannelConfig(upstream=UP, bandwidth_hz=1e6, tx_power_w=0.1, distance_m=1.0,
                        path_loss_db_at_1m=50.0).validate()
    assert ChannelModel(cfg, origin=0.0).gain_at(0.0) == pytest.approx(1e-5, rel=1e-12)


# -- fading --------------------------------------------------------------------------------------
def test_rayleigh_fading_is_reproducible_and_exponential():
    a, b, other = RayleighBlockFading(0.01, 7), RayleighBlockFading(0.01, 7), RayleighBlockFading(0.01, 8)
    seq_a = [a.factor_of_block(k) for k in range(20000)]
    # Same seed, same sequence, even when read in another order.
    assert [b.factor_of_block(k) for k in reversed(range(20000))][::-1] == seq_a
    assert [other.factor_of_block(k) for k in range(100)] != seq_a[:100]
    # |h|^2 ~ Exp(1): mean 1, P(X > 1) = 1/e.
    assert sum(seq_a) / len(seq_a) == pytest.approx(1.0, abs=0.03)
    assert sum(x > 1 for x in seq_a) / len(seq_a) == pytest.approx(math.exp(-1), abs=0.015)
    # Blocks: constant within one, redrawn at the boundary.
    assert a.factor_at(0.0301) == a.factor_at(0.0399) == seq_a[3]
    assert a.next_change(0.0301) == pytest.approx(0.04)


# -- traces --------------------------------------------------------------------------------------
def test_trace_file_formats(tmp_path):
    csv_file = tmp_path / "g.csv"
    csv_file.write_text("# recorded\ntime_s,gain\n0,1e-9\n0.5, 2e-9\n\n1.5,4e-9\n")
    trace = load_trace(csv_file)
    assert trace.gain_at(0.2) == 1e-9 and trace.gain_at(0.5) == 2e-9 and trace.gain_at(99) == 4e-9
    assert trace.next_change(0.6) == 1.5 and math.isinf(trace.next_change(2.0))
    db_file = tmp_path / "g.txt"
    db_file.write_text("time_s gain_db\n0 -90\n1 -80\n")
    assert load_trace(db_file).gain_at(1.2) == pytest.approx(1e-8)


@pytest.mark.parametrize("text, complaint", [
    ("0,1\n0.5,2\n0.4,3\n", ":3: times must increase"),
    ("0,1\n0.5\n", ":2: expected two columns"),
    ("0,1\n1,abc\n", ":2: not a number"),
    ("0,-1\n", "gain must be"),
    ("# nothing\n", "no (time, gain) points"),
])
def test_trace_errors_name_the_line(tmp_path, text, complaint):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(ValueError, match=re_escape(complaint)):
        load_trace(path)


def re_escape(text: str) -> str:
    import re
    return re.escape(text)


# -- options -------------------------------------------------------------------------------------
RADIO = dict(bandwidth_hz=1e6, tx_power_w=0.1)


@pytest.mark.parametrize("options, option_named", [
    (dict(), "--bandwidth-hz"),
    (dict(bandwidth_hz=1e6, gain=1e-9), "--tx-power-w"),
    (dict(RADIO), "a gain is needed"),
    (dict(RADIO, gain=1e-9, gain_db=-90), "--gain and --gain-db"),
    (dict(RADIO, gain=0.0), "--gain must be > 0"),
    (dict(RADIO, gain=1e-9, path_loss_exponent=2.0), "--path-loss-exponent needs --distance-m"),
    (dict(RADIO, distance_m=10.0, path_loss_exponent=0.0), "--path-loss-exponent must be > 0"),
    (dict(RADIO, gain=1e-9, fading="rician"), "--fading must be 'rayleigh'"),
    (dict(RADIO, gain=1e-9, fading="rayleigh"), "--coherence-s"),
    (dict(RADIO, gain=1e-9, seed=3), "--seed needs --fading"),
    (dict(rate_bps=1e6, unlimited=True), "--rate-bps and --unlimited"),
    (dict(rate_bps=-5.0), "--rate-bps must be > 0"),
    (dict(rate_bps=1e6, tx_power_w=0.1), "--bandwidth-hz"),
    (dict(rate_bps=1e6, delay_s=-0.001), "--delay-ms must be >= 0"),
    (dict(rate_bps=1e6, downlink_bps=0.0), "--downlink-bps must be > 0"),
    (dict(rate_bps=1e6, listen="localhost"), "--listen must be HOST:PORT"),
    (dict(RADIO, trace="/nonexistent/trace.csv"), "--trace: cannot read"),
    (dict(RADIO, trace=GainTrace([0.0], [1e-9]), fading="rayleigh", coherence_s=0.1), "--fading cannot"),
])
def test_bad_options_are_named(options, option_named):
    with pytest.raises(UsageError, match=re_escape(option_named)):
        ChannelConfig(upstream=UP, **options).validate()


def test_upstream_must_have_a_port():
    with pytest.raises(UsageError, match="--upstream"):
        ChannelConfig(upstream="127.0.0.1:0", rate_bps=1e6).validate()


# -- the model -----------------------------------------------------------------------------------
def test_model_modes_and_changes():
    cfg = ChannelConfig(upstream=UP, bandwidth_hz=1e6, tx_power_w=0.1, distance_m=10.0).validate()
    m = ChannelModel(cfg, origin=100.0)
    n0 = dbm_per_hz_to_w_per_hz(-174)
    g10 = path_loss_gain(10.0, -40.0, 3.0)
    assert m.gain_at(100.5) == pytest.approx(g10) and m.gain_source == "path_loss"
    assert m.rate_at(100.5) == pytest.approx(shannon_rate_bps(1e6, n0, g10, 0.1))
    m.set_tx_power(0.4)
    assert m.rate_at(101) == pytest.approx(shannon_rate_bps(1e6, n0, g10, 0.4))
    m.set_gain_db(-80)
    assert m.gain_at(101) == pytest.approx(1e-8) and m.gain_source == "fixed" and m.distance_m is None
    m.set_fixed_rate(5e6)
    assert m.rate_at(101) == 5e6 and m.mode == "fixed"
    m.set_unlimited()
    assert math.isinf(m.rate_at(101))
    m.set_radio()
    assert m.rate_at(101) == pytest.approx(shannon_rate_bps(1e6, n0, 1e-8, 0.4))
    for bad in (lambda: m.set_tx_power(-1), lambda: m.set_gain(0), lambda: m.set_distance(float("nan")),
                lambda: m.set_fixed_rate(float("inf"))):
        with pytest.raises(ValueError):
            bad()


def test_radio_verbs_need_radio_parameters():
    m = ChannelModel(ChannelConfig(upstream=UP, rate_bps=1e6).validate(), origin=0.0)
    m.set_tx_power(0.2)             # always accepted: the device sets p whatever the mode
    with pytest.raises(RadioNotConfigured):
        m.set_gain(1e-9)
    with pytest.raises(RadioNotConfigured):
        m.set_radio()


def test_time_weighted_mean_rate_is_exact():
    m = ChannelModel(ChannelConfig(upstream=UP, rate_bps=1e6).validate(), origin=0.0)
    m.advance(1.0)
    m.set_fixed_rate(4e6)
    m.advance(1.0)
    # 1 s at 1 Mbit/s then 3 s at 4 Mbit/s.
    assert m.mean_rate(4.0) == pytest.approx((1e6 * 1 + 4e6 * 3) / 4)


def test_trace_and_fading_boundaries():
    trace = GainTrace([0.0, 0.5, 1.0], [1e-9, 2e-9, 3e-9])
    m = ChannelModel(ChannelConfig(upstream=UP, bandwidth_hz=1e6, tx_power_w=0.1, trace=trace).validate(), 10.0)
    assert m.next_change(10.2) == pytest.approx(10.5) and m.gain_at(10.7) == 2e-9
    assert math.isinf(m.next_change(11.2))
    cfg = ChannelConfig(upstream=UP, bandwidth_hz=1e6, tx_power_w=0.1, gain=1e-9, fading="rayleigh",
                        coherence_s=0.25, seed=5).validate()
    m = ChannelModel(cfg, 10.0)
    assert m.next_change(10.3) == pytest.approx(10.5)
    assert m.gain_at(10.3) == pytest.approx(1e-9 * RayleighBlockFading(0.25, 5).factor_of_block(1))


# -- the link's schedule (real loop, but the asserted times are computed, not measured) ----------
def run(coro):
    return asyncio.run(coro)


def test_link_schedule_chains_without_drift_or_idle_credit():
    async def main():
        link = SharedLink(8e6)                  # 1 byte per microsecond
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        ends = [await link.transmit(1000, t0) for _ in range(50)]
        # Back to back: each quantum ends exactly 1 ms after the previous, however late we woke.
        gaps = [b - a for a, b in zip(ends, ends[1:])]
        assert max(abs(g - 1e-3) for g in gaps) < 1e-9
        assert ends[0] == pytest.approx(t0 + 1e-3, abs=1e-9)
        # After idling, no credit: a new quantum takes its full time from its arrival.
        await asyncio.sleep(0.02)
        t_arr = loop.time()
        end = await link.transmit(500, t_arr)
        assert end == pytest.approx(t_arr + 0.5e-3, abs=1e-9)
    run(main())


def test_link_rate_change_applies_to_the_bytes_in_flight():
    async def main():
        link = SharedLink(8e6)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        pending = link.transmit(100_000, t0)    # 100 ms at 8 Mbit/s
        await asyncio.sleep(0.01)
        t_change = loop.time()
        link.set_rate(4e6, at=t_change)
        end = await pending
        # Bytes sent before the change went at 8 Mbit/s, the rest at half that.
        done_before = (t_change - t0) * 1e6
        assert end == pytest.approx(t_change + (100_000 - done_before) / 0.5e6, abs=1e-6)
    run(main())


def test_link_is_fair_between_backlogged_senders():
    async def main():
        link = SharedLink(80e6)
        loop = asyncio.get_running_loop()
        sent = {"a": 0, "b": 0}
        start = loop.time()
        stop = start + 0.2

        async def sender(name):
            while loop.time() < stop:
                await link.transmit(link.quantum, loop.time())
                sent[name] += link.quantum
        await asyncio.gather(sender("a"), sender("b"))
        # Round robin in 1 ms quanta: the two differ by at most a quantum or two...
        assert abs(sent["a"] - sent["b"]) <= 2 * link.quantum
        # ...and together never beat the rate (a busy machine may make them slower, never faster).
        assert sent["a"] + sent["b"] <= 80e6 / 8 * (loop.time() - start) + 2 * link.quantum
    run(main())


def test_silent_radio_holds_bytes_until_power_returns():
    async def main():
        link = SharedLink(0.0)
        loop = asyncio.get_running_loop()
        pending = link.transmit(1000, loop.time())
        await asyncio.sleep(0.05)
        assert not pending.done()
        before = loop.time()
        link.set_rate(8e6)
        after = loop.time()
        # 1000 bytes at 8 Mbit/s from the moment the power came back.
        assert before + 1e-3 <= await pending <= after + 1e-3
    run(main())


@settings(max_examples=200, deadline=None)
@given(p=st.floats(0, 10), g=st.floats(1e-15, 1e-3), b=st.floats(1e3, 1e9))
def test_rate_grows_with_power_and_gain(p, g, b):
    n0 = dbm_per_hz_to_w_per_hz(-174)
    r = shannon_rate_bps(b, n0, g, p)
    assert r >= 0
    assert shannon_rate_bps(b, n0, g, p * 2 + 1e-9) >= r
    assert shannon_rate_bps(b, n0, g * 2, p) >= r
