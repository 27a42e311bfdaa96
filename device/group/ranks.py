"""A device group: N processes on loopback computing the device half with tensor parallelism.

The process that creates a DeviceGroup is rank 0, the group's leader: it takes the requests, holds its
own shard like every other member, hosts the emulated over-the-air receiver, and gets the device
half's output. Ranks 1..N-1 are child processes (multiprocessing "spawn"). They join one
torch.distributed process group (gloo; rendezvous through a file, gloo bound to the loopback
interface), so every byte of the group's data path (tokens, all-reduces) goes through gloo.
A pipe per worker carries only control: "run a forward in mode M", "stop", and each worker's reply
(its timings, or its traceback if it failed). Waiting for the next command happens on that pipe, so
an idle group never trips gloo's collective timeout, and a worker whose leader has died exits.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import shutil
import tempfile
import time
import traceback
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from coinfer.device.group.aircomp import AirCompAllReduce, AirReceiver, AllReduceRecord, ExactAllReduce
from coinfer.device.group.tp import ShardedDevicePart, shards
from coinfer.errors import UsageError

MODES = ("exact", "aircomp")


@dataclass(frozen=True)
class RankTiming:
    rank: int
    forward_s: float       # the whole forward on this rank
    all_reduce_s: float    # of which inside all-reduces (waiting for the slowest included)

    @property
    def compute_s(self) -> float:
        return self.forward_s - self.all_reduce_s


class _TimedReduce:
    """Wraps an all-reduce to add up the time spent in it on this rank."""

    def __init__(self, inner):
        self.inner, self.seconds = inner, 0.0

    def __call__(self, partial, tag):
        started = time.perf_counter()
        try:
            return self.inner(partial, tag)
        finally:
            self.seconds += time.perf_counter() - started


def _init_rank(rank: int, world: int, store_path: str, timeout_s: float) -> None:
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")  # gloo listens on 127.0.0.1 only
    store = dist.FileStore(store_path, world)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world,
                            timeout=timedelta(seconds=timeout_s))


def _run_forward(part: ShardedDevicePart, reducer, shape: tuple[int, int], rank: int,
                 input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None):
    """One forward on this rank: the leader's tokens reach every rank by gloo broadcast."""
    started = time.perf_counter()
    ids = input_ids.contiguous() if rank == 0 else torch.empty(shape, dtype=torch.long)
    mask = attention_mask.to(torch.long).contiguous() if rank == 0 else torch.empty(shape, dtype=torch.long)
    dist.broadcast(ids, src=0)
    dist.broadcast(mask, src=0)
    timed = _TimedReduce(reducer)
    out = part(ids, mask, timed)
    return out, RankTiming(rank, time.perf_counter() - started, timed.seconds)


def _worker_main(rank: int, world: int, store_path: str, model: str, seed: int, split: int,
                 heads: list[int], columns: list[int], threads: int, timeout_s: float, conn) -> None:
    """A group member: load my shard, then run forwards on command until told to stop."""
    try:
        torch.set_num_threads(threads)
        from coinfer.models import resolve_model

        conn.send(("joining", None))  # imports done: the leader may now wait in the rendezvous
        _init_rank(rank, world, store_path, timeout_s)
        dist.barrier()  # matches the leader's: every pair connected before anyone goes on
        part = ShardedDevicePart(resolve_model(model, seed=seed), split, shards(heads, columns)[rank])
        exact = ExactAllReduce()
        conn.send(("ready", part.shard_parameters()))
        parent = os.getppid()
        while True:
            if not conn.poll(1.0):
                if os.getppid() != parent:  # the leader is gone: nobody will ever send "stop"
                    break
                continue
            command = conn.recv()
            if command[0] == "stop":
                break
            _, mode, probe, shape = command
            reducer = AirCompAllReduce(None, probe=probe) if mode == "aircomp" else exact
            _, timing = _run_forward(part, reducer, tuple(shape), rank)
            conn.send(("done", timing))
    except Exception:  # noqa: BLE001 - the leader reports it; a worker has no terminal of its own
        try:
            conn.send(("error", traceback.format_exc()))
        except (OSError, EOFError):
            pass
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


class DeviceGroup:
    """N ranks computing the device half of `model` at split point `split`, sharded by `heads`/`columns`.

    Use as a context manager, or call close(): it stops the worker processes and leaves the process group.
    """

    def __init__(self, model: str, split: int, heads: list[int], columns: list[int], *, seed: int = 0,
                 receiver: AirReceiver | None = None, threads: int = 1, timeout_s: float = 120.0,
                 start_timeout_s: float = 300.0):
        from coinfer.models import resolve_model
        from coinfer.device.group.design import Assignment
        from coinfer.device.group.design import BlockShape

        if dist.is_initialized():
            raise UsageError("this process already belongs to a torch.distributed group")
        self.src = resolve_model(model, seed=seed)
        shape = BlockShape.of(self.src)
        try:
            self.assignment = Assignment(tuple(heads), tuple(columns)).check(shape.heads, shape.ffn)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        self.world = self.assignment.devices
        if receiver is not None and receiver.gains.shape != (self.world,):
            raise UsageError(f"the receiver knows {receiver.gains.size} channels, the group has {self.world} devices")
        self.split, self.receiver, self.timeout_s = split, receiver, timeout_s
        self.records: list[AllReduceRecord] = []
        self.last_timings: list[RankTiming] = []
        self._threads_before = torch.get_num_threads()
        self._tmp = tempfile.mkdtemp(prefix="coinfer-group-")
        self._procs: list[mp.Process] = []
        self._conns = []
        self._closed = False
        self._broken: str | None = None
        try:
            self._start(model, seed, threads, start_timeout_s)
        except BaseException:
            self.close()
            raise

    def _start(self, model: str, seed: int, threads: int, start_timeout_s: float) -> None:
        store_path = os.path.join(self._tmp, "rendezvous")
        ctx = mp.get_context("spawn")
        for rank in range(1, self.world):
            here, there = ctx.Pipe()
            proc = ctx.Process(target=_worker_main, name=f"coinfer-group-rank{rank}", daemon=True,
                               args=(rank, self.world, store_path, model, self.src.seed, self.split,
                                     list(self.assignment.heads), list(self.assignment.columns), threads,
                                     self.timeout_s, there))
            proc.start()
            there.close()
            self._procs.append(proc)
            self._conns.append(here)
        # The rendezvous cannot be interrupted, so enter it only once every worker is about to: a worker
        # that fails to start is reported here, by its traceback, instead of after the store's timeout.
        for rank, conn in enumerate(self._conns, start=1):
            self._expect(conn, rank, "joining", start_timeout_s)
        torch.set_num_threads(threads)
        _init_rank(0, self.world, store_path, self.timeout_s)
        dist.barrier()  # init returns before every peer is connected; a failed start shows here, not later
        self.part = ShardedDevicePart(self.src, self.split, shards(self.assignment.heads, self.assignment.columns)[0])
        self.shard_parameters = [self.part.shard_parameters()]
        for rank, conn in enumerate(self._conns, start=1):
            self.shard_parameters.append(self._expect(conn, rank, "ready", start_timeout_s))

    def _expect(self, conn, rank: int, what: str, timeout_s: float):
        deadline = time.monotonic() + timeout_s
        while not conn.poll(0.2):
            if not self._procs[rank - 1].is_alive() and not conn.poll(0):
                raise RuntimeError(f"group rank {rank} exited (status {self._procs[rank - 1].exitcode})")
            if time.monotonic() > deadline:
                raise TimeoutError(f"group rank {rank}: no '{what}' within {timeout_s:.0f} s")
        try:
            kind, payload = conn.recv()
        except EOFError:
            raise RuntimeError(f"group rank {rank} exited (status {self._procs[rank - 1].exitcode})") from None
        if kind == "error":
            raise RuntimeError(f"group rank {rank} failed:\n{payload}")
        if kind != what:
            raise RuntimeError(f"group rank {rank}: expected '{what}', got '{kind}'")
        return payload

    def _failure(self) -> RuntimeError:
        """Why the group broke: a worker's traceback, or which worker exited."""
        for rank, conn in enumerate(self._conns, start=1):
            try:
                if conn.poll(0.5):
                    kind, payload = conn.recv()
                    if kind == "error":
                        return RuntimeError(f"group rank {rank} failed:\n{payload}")
            except (EOFError, OSError):
                pass
            proc = self._procs[rank - 1]
            proc.join(0.5)
            if not proc.is_alive():
                return RuntimeError(f"group rank {rank} exited (status {proc.exitcode})")
        return RuntimeError("the device group failed")

    @property
    def runs_alone(self) -> bool:
        return self.part.runs_alone

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, mode: str = "exact",
                probe: bool = False) -> torch.Tensor:
        """The device half's output, computed by the whole group. Records go to `self.records`."""
        if self._closed:
            raise RuntimeError("the device group is closed")
        if mode not in MODES:
            raise UsageError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        if mode == "aircomp" and self.receiver is None:
            raise UsageError("over-the-air mode needs a receiver (channel gains, powers, noise)")
        if input_ids.dim() != 2 or input_ids.shape != attention_mask.shape:
            raise UsageError("input ids and attention mask must both be [batch, seq]")
        if self._broken is not None:
            raise RuntimeError(f"the device group is broken ({self._broken}); close it and start a new one")
        shape = tuple(int(s) for s in input_ids.shape)
        if mode == "aircomp":
            self.receiver.redraw()  # a new fading block per request (no-op without fading)
            reducer = AirCompAllReduce(self.receiver, probe=probe, records=self.records)
        else:
            reducer = ExactAllReduce(self.records)
        try:
            for conn in self._conns:
                conn.send(("forward", mode, probe, shape))
            out, timing = _run_forward(self.part, reducer, shape, 0, input_ids, attention_mask)
            self.last_timings = [timing] + [self._expect(conn, rank, "done", self.timeout_s)
                                            for rank, conn in enumerate(self._conns, start=1)]
        except Exception as exc:
            # A send or a collective failed, most likely because a worker died: say which, and why.
            failure = exc if isinstance(exc, RuntimeError) and str(exc).startswith("group rank") else self._failure()
            self._broken = str(failure).splitlines()[0]
            raise failure from exc
        return out

    __call__ = forward

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for conn in self._conns:
            try:
                conn.send(("stop",))
            except (OSError, BrokenPipeError):
                pass
        for proc in self._procs:
            proc.join(10)
            if proc.is_alive():
                proc.terminate()
                proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join()
        for conn in self._conns:
            conn.close()
        if dist.is_initialized():
            dist.destroy_process_group()
        torch.set_num_threads(self._threads_before)
        shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> "DeviceGroup":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
