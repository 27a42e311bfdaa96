"""ChannelEmulator: the whole emulator in-process, its asyncio loop on a background thread.

    from coinfer.channel import ChannelEmulator

    with ChannelEmulator(upstream="127.0.0.1:50051", bandwidth_hz=10e6, tx_power_w=0.1,
                         gain=1e-9, delay_s=0.002, control="127.0.0.1:0") as emu:
        device_target = f"127.0.0.1:{emu.port}"     # point the device here instead of the server
        emu.set_tx_power(0.2)                       # or ChannelControlClient(emu.control_address)
        print(emu.stats().rate_bps)

Keyword arguments are the fields of coinfer.channel.config.ChannelConfig (a ready ChannelConfig may
be passed instead). `start()` returns the proxy's port once it listens; `stop()` closes every
connection and joins the thread. The set_* methods and `stats()` may be called from any thread
other than the emulator's own and return a ChannelStats snapshot; bad values raise ValueError.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import math
import threading
from typing import Callable

from coinfer.channel.config import ChannelConfig, parse_hostport
from coinfer.channel.link import SharedLink
from coinfer.channel.model import ChannelModel, ChannelStats
from coinfer.channel.proxy import Proxy

log = logging.getLogger(__name__)

_EVAL_AFTER_BOUNDARY_S = 1e-7   # read the gain just after a boundary, never just before it


class ChannelEmulator:
    def __init__(self, config: ChannelConfig | None = None, **options):
        if config is not None and options:
            raise TypeError("pass either a ChannelConfig or keyword options, not both")
        self.config = (config or ChannelConfig(**options)).validate()
        self.upstream_host, self.upstream_port = parse_hostport(self.config.upstream, "--upstream")
        self.listen_host, self._listen_port = parse_hostport(self.config.listen, "--listen")
        self.port: int | None = None
        self.clock_origin: float | None = None  # time.monotonic() at which fading/trace time is 0
        self.control_port: int | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._control = None
        self._tc = None
        self._tick: asyncio.TimerHandle | None = None

    # -- lifecycle --------------------------------------------------------------------------------
    @property
    def address(self) -> str:
        return f"{self.listen_host}:{self.port}"

    @property
    def control_address(self) -> str | None:
        if self.control_port is None:
            return None
        return f"{parse_hostport(self.config.control, '--control')[0]}:{self.control_port}"

    def start(self, timeout_s: float = 10.0) -> int:
        """Listen, connect nothing yet; returns the bound proxy port. Raises OSError if it cannot bind."""
        if self._thread is not None:
            raise RuntimeError("emulator already started")
        ready: concurrent.futures.Future = concurrent.futures.Future()
        self._thread = threading.Thread(target=self._thread_main, args=(ready,), name="coinfer-channel",
                                        daemon=True)
        self._thread.start()
        try:
            self.port = ready.result(timeout_s)
        except BaseException:
            self._thread.join(timeout_s)
            self._thread = None
            raise
        if self.config.control is not None:
            try:
                from coinfer.channel.control import start_control_server
                self._control, self.control_port = start_control_server(self, self.config.control, self._loop)
            except BaseException:
                self.stop()
                raise
        return self.port

    def stop(self, timeout_s: float = 10.0) -> None:
        if self._control is not None:
            self._control.stop()
            self._control = None
        if self._thread is None:
            return
        if self._loop is not None and not self._loop.is_closed():
            try:
                self._loop.call_soon_threadsafe(self._stop_event.set)
            except RuntimeError:          # loop already closed
                pass
        self._thread.join(timeout_s)
        self._thread = None

    def __enter__(self) -> "ChannelEmulator":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- control (any thread) ---------------------------------------------------------------------
    def set_tx_power(self, watts: float) -> ChannelStats:
        return self._change(lambda m, now: m.set_tx_power(watts, at=now))

    def set_gain(self, gain: float | None = None, *, gain_db: float | None = None,
                 distance_m: float | None = None) -> ChannelStats:
        """Set the large-scale gain: exactly one of a linear gain, a gain in dB, or a distance."""
        given = [v for v in (gain, gain_db, distance_m) if v is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of gain, gain_db, distance_m")
        if gain is not None:
            return self._change(lambda m, now: m.set_gain(gain, at=now))
        if gain_db is not None:
            return self._change(lambda m, now: m.set_gain_db(gain_db, at=now))
        return self._change(lambda m, now: m.set_distance(distance_m, at=now))

    def set_rate(self, rate_bps: float) -> ChannelStats:
        """Force the uplink rate, whatever p and g are."""
        return self._change(lambda m, now: m.set_fixed_rate(rate_bps, at=now))

    def set_unlimited(self) -> ChannelStats:
        return self._change(lambda m, now: m.set_unlimited(at=now))

    def use_radio(self) -> ChannelStats:
        """Back to R(p) = B log2(1 + g p / (B N0))."""
        return self._change(lambda m, now: m.set_radio(at=now))

    def stats(self) -> ChannelStats:
        return self._call(self._stats)

    # -- internals: everything below runs on the emulator's loop -----------------------------------
    def _call(self, fn: Callable):
        if self._loop is None or self._thread is None:
            raise RuntimeError("emulator not running (call start() first)")
        if threading.current_thread() is self._thread:
            return fn()
        done: concurrent.futures.Future = concurrent.futures.Future()

        def run():
            try:
                done.set_result(fn())
            except BaseException as exc:
                done.set_exception(exc)
        self._loop.call_soon_threadsafe(run)
        return done.result(10.0)

    def _change(self, mutate: Callable[[ChannelModel, float], None]) -> ChannelStats:
        def apply():
            now = self._loop.time()
            # The model validates, computes the new rate, and only then accounts the old rate up to
            # now and commits: a ValueError leaves it (and the link) exactly as they were.
            mutate(self._model, now)
            self._rerate(now, now)
            return self._stats()
        return self._call(apply)

    def _rerate(self, at: float, now: float) -> None:
        """Take the model's rate from `at` on, and plan the next automatic change."""
        rate = self._model.advance(now)
        if self._tc is not None:
            if rate != self._tc.rate_bps:
                self._tc.set_rate(rate)
        else:
            self._uplink.set_rate(rate, at)
        if self._tick is not None:
            self._tick.cancel()
            self._tick = None
        nxt = self._model.next_change(now)
        if math.isfinite(nxt):
            self._tick = self._loop.call_at(nxt, self._on_boundary, nxt)

    def _on_boundary(self, at: float) -> None:
        self._tick = None
        self._rerate(at, at + _EVAL_AFTER_BOUNDARY_S)

    def _stats(self) -> ChannelStats:
        now = self._loop.time()
        s = self._model.stats(now)
        p = self._proxy
        s.bytes_up, s.bytes_down = p.bytes_up, p.bytes_down
        s.connections_active, s.connections_total = len(p.active), p.connections_total
        s.connections_failed = p.connections_failed
        s.downlink_bps = self._downlink.rate_bps
        s.delay_s = self.config.delay_s
        return s

    def _thread_main(self, ready: concurrent.futures.Future) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._main(ready))
        except BaseException as exc:  # only if _main itself broke; report it to start()
            if not ready.done():
                ready.set_exception(exc)
            log.exception("channel emulator loop failed")
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _main(self, ready: concurrent.futures.Future) -> None:
        cfg = self.config
        self._loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        now = self._loop.time()
        self._model = ChannelModel(cfg, origin=now)
        self.clock_origin = now
        kernel_shaped = cfg.tc_dev is not None
        self._uplink = SharedLink(math.inf if kernel_shaped else self._model.rate_at(now),
                                  quantum_s=cfg.quantum_s, max_catchup_s=cfg.max_catchup_s)
        self._downlink = SharedLink(cfg.downlink_bps or math.inf, quantum_s=cfg.quantum_s,
                                    max_catchup_s=cfg.max_catchup_s)
        self._proxy = Proxy(self.upstream_host, self.upstream_port, self._uplink, self._downlink, cfg.delay_s)
        try:
            if kernel_shaped:
                from coinfer.channel.tc import TcShaper
                self._tc = TcShaper(cfg.tc_dev)
            self._rerate(now, now)
            _, port = await self._proxy.start(self.listen_host, self._listen_port)
        except BaseException as exc:
            if self._tc is not None:
                self._tc.clear()
            ready.set_exception(exc)
            return
        ready.set_result(port)
        await self._stop_event.wait()
        if self._tick is not None:
            self._tick.cancel()
        await self._proxy.close()
        self._uplink.close()
        self._downlink.close()
        if self._tc is not None:
            self._tc.clear()
        # Let cancelled connection tasks finish before the loop closes.
        pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
