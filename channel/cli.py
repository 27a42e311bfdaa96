"""`coinfer channel`: run the channel emulator as a process of its own.

    coinfer channel --listen 127.0.0.1:7000 --upstream 127.0.0.1:50051 --control 127.0.0.1:7001 \\
        --bandwidth-hz 1e7 --tx-power-w 0.1 --distance-m 50 --fading rayleigh --coherence-s 0.05 --seed 1

It prints where it listens and the effective rates, then runs until SIGTERM or Ctrl-C.
"""
from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "channel", help="emulate the wireless uplink: a TCP proxy that forwards at R(p)",
        description="A TCP proxy on the device->server path that forwards device->server bytes at "
                    "R(p) = B log2(1 + g p / (B N0)), server->device bytes at --downlink-bps, each "
                    "after a one-way delay. Change p or g at run time through the --control gRPC service.")
    net = p.add_argument_group("network")
    net.add_argument("--listen", default="127.0.0.1:0", metavar="HOST:PORT",
                     help="where the device connects (default 127.0.0.1:0: a free port, printed)")
    net.add_argument("--upstream", required=True, metavar="HOST:PORT", help="the server the bytes go to")
    net.add_argument("--control", metavar="HOST:PORT", help="serve the ChannelControl gRPC service here")
    net.add_argument("--delay-ms", type=float, default=0.0, help="one-way propagation delay, each direction")
    net.add_argument("--downlink-bps", type=float, help="server->device rate (default: unlimited)")
    net.add_argument("--tc-dev", metavar="DEV",
                     help="shape the uplink in the kernel (tc tbf on DEV; root, Linux) instead of in the proxy")
    rate = p.add_argument_group("uplink rate: a fixed rate, none, or the radio model R(p)")
    rate.add_argument("--rate-bps", type=float, help="force this uplink rate, whatever p and g")
    rate.add_argument("--unlimited", action="store_true", help="do not shape the uplink")
    rate.add_argument("--bandwidth-hz", type=float, help="B")
    rate.add_argument("--noise-psd-dbm-hz", type=float, default=-174.0, help="N0 (default -174, thermal)")
    rate.add_argument("--tx-power-w", type=float, help="p, the device's transmit power")
    gain = p.add_argument_group("channel gain g: one of --gain, --gain-db, --distance-m, --trace")
    gain.add_argument("--gain", type=float, help="linear power gain")
    gain.add_argument("--gain-db", type=float, help="power gain in dB (e.g. -90)")
    gain.add_argument("--distance-m", type=float, help="gain from path loss at this distance")
    gain.add_argument("--path-loss-db-at-1m", type=float,
                      help="path loss at 1 m in dB, a loss: 40 means a gain of -40 dB at 1 m (default 40)")
    gain.add_argument("--path-loss-exponent", type=float, help="path loss exponent alpha (default 3)")
    gain.add_argument("--trace", metavar="FILE",
                      help="replay a gain trace: lines of 'time_s, gain' (header 'time_s,gain_db' for dB); "
                           "the last gain holds after the end")
    gain.add_argument("--fading", choices=["rayleigh"], help="block fading on top of --gain/--distance-m")
    gain.add_argument("--coherence-s", type=float, help="fading block length")
    gain.add_argument("--seed", type=int, help="fading seed (default 0)")
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace):
    from coinfer.channel.config import ChannelConfig
    return ChannelConfig(
        upstream=args.upstream, listen=args.listen, control=args.control, rate_bps=args.rate_bps,
        unlimited=args.unlimited, bandwidth_hz=args.bandwidth_hz, noise_psd_dbm_hz=args.noise_psd_dbm_hz,
        tx_power_w=args.tx_power_w, gain=args.gain, gain_db=args.gain_db, distance_m=args.distance_m,
        trace=args.trace, path_loss_db_at_1m=args.path_loss_db_at_1m,
        path_loss_exponent=args.path_loss_exponent, fading=args.fading, coherence_s=args.coherence_s,
        seed=args.seed, downlink_bps=args.downlink_bps, delay_s=args.delay_ms / 1000.0, tc_dev=args.tc_dev,
    ).validate()


def _rate_text(bps: float) -> str:
    return "unlimited" if bps == float("inf") else f"{bps / 1e6:.6g} Mbit/s"


def describe(emu) -> list[str]:
    """The start-up lines: addresses and the effective rates."""
    s = emu.stats()
    uplink = f"uplink {_rate_text(s.rate_bps)} ({s.mode}"
    if s.mode == "radio":
        uplink += (f": B={s.bandwidth_hz:g} Hz, p={s.tx_power_w:g} W, g={s.gain:.4g} [{s.gain_source}], "
                   f"N0={s.noise_psd_w_per_hz:.4g} W/Hz")
    if emu.config.tc_dev:
        uplink += f"; kernel tc on {emu.config.tc_dev}"
    lines = [f"listening on {emu.address} -> {emu.config.upstream}",
             f"{uplink}), downlink {_rate_text(s.downlink_bps)}, delay {s.delay_s * 1e3:g} ms"]
    if emu.control_address:
        lines.append(f"control on {emu.control_address}")
    return lines


def run(args: argparse.Namespace) -> int:
    import signal
    import threading

    from coinfer.channel.control import ControlListenError
    from coinfer.channel.emulator import ChannelEmulator
    from coinfer.channel.tc import TcError, why_not
    from coinfer.errors import UsageError

    config = config_from_args(args)
    if config.tc_dev is not None and why_not() is not None:
        raise UsageError(f"--tc-dev: {why_not()}")
    emu = ChannelEmulator(config)
    try:
        emu.start()
    except TcError as exc:
        raise UsageError(f"--tc-dev {args.tc_dev}: {exc}") from None
    except ControlListenError as exc:
        raise UsageError(str(exc)) from None
    except OSError as exc:
        raise UsageError(f"--listen: cannot listen on {args.listen}: {exc.strerror or exc}") from None
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    try:
        for line in describe(emu):
            print(f"coinfer channel: {line}", flush=True)
        stop.wait()
    finally:
        emu.stop()
    return 0
