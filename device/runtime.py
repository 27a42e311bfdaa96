"""The device half at work: tokenise, run the embedding and blocks 1..k, send, return the answer.

The device runs under a plan (epoch, split point, pruning, codec, frequency cap, transmit power).
Applying a plan builds what it needs beside the current state and swaps between requests' device
computes, so a request's hidden states always come from one plan. When the server refuses a request
because it holds another epoch, the device waits until it holds at least that epoch itself (its plan
watcher delivers it), recomputes under its current plan if that changed, and re-sends under the same
request id: nothing is lost, nothing is counted twice.
"""
from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from dataclasses import dataclass, field, replace

import grpc
import torch

from coinfer.codecs import CODECS, decode, encode, encode_into
from coinfer.device.client import InferenceClient, InferenceError
from coinfer.energy import PowerModel, make_meter
from coinfer.engines import Engine, check_engine, prepare_engine
from coinfer.errors import UsageError
from coinfer.frequency import FrequencyControl
from coinfer.models import ModelSource
from coinfer.openmp import release_thread_pool
from coinfer.plans import PLAN_LOG, describe_plan
from coinfer.protos import coinfer_pb2 as pb
from coinfer.pruning import Pruner, check_method, check_ratio
from coinfer.retry import RetryPolicy
from coinfer.rpc import DEFAULT_MAX_MESSAGE_BYTES
from coinfer.split import OUTPUT_GENERATED_TOKENS, OUTPUT_SENTENCE_EMBEDDING, DevicePart, GenerationOptions
from coinfer.system import default_system

log = logging.getLogger(__name__)

# Where energy is not measured, the device's power model is the default system's (coinfer.system).
_DEFAULT_DEVICE = default_system().device
DEFAULT_DEVICE_POWER = PowerModel(pue=_DEFAULT_DEVICE.pue, power_coeff=_DEFAULT_DEVICE.power_coeff)
DEFAULT_DEVICE_MAX_FREQ_HZ = _DEFAULT_DEVICE.max_freq_hz
RESEND = RetryPolicy(initial_s=0.02, max_s=0.5, max_attempts=20)
# Transient failures: the server or the link went away (a reset stream, a restart) or one attempt
# timed out on a stalled peer. The same request is sent again; the server's reply cache makes sure
# a request it already computed is answered, not computed again.
RETRY = RetryPolicy(initial_s=0.1, max_s=2.0, max_attempts=30)
TRANSIENT = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.ABORTED, grpc.StatusCode.CANCELLED,
             grpc.StatusCode.DEADLINE_EXCEEDED)
OUTPUT_HIDDEN_STATES = "hidden_states"  # a device half answering with no server (a device group alone)


@dataclass(frozen=True)
class DevicePlan:
    epoch: int
    split: int
    rho: float
    method: str
    codec: str
    freq_hz: float                          # the cap in force (F where the clock is fixed)
    tx_power_w: float | None                # in force (None: not set, e.g. no channel emulator)
    # what the device knows of the rest of the plan, for the answers' plan_info (not applied here)
    rho_server: float | None = None         # a planner's plan, or the server's Info; None: unknown
    predicted_quality: float | None = None  # a planner's prediction; None: none made
    quality_metric: str = ""
    reason: str = ""                        # why the planner made it
    source: str = "static"                  # static (command line / the server's Info) | planner
    server_clock: str = ""                  # the server's clock mode, where known


def plan_info(plan: DevicePlan, clock: str) -> dict:
    """What produced an answer: the plan's epoch, split, ratios, pruning, codec, predicted quality and the
    device's clock mode. A static plan's quality is 1.0 when nothing is pruned and the codec is lossless
    (fp32), else None (unknown)."""
    quality = plan.predicted_quality
    if quality is None and plan.rho == 1.0 and plan.rho_server == 1.0 and plan.codec == "fp32":
        quality = 1.0
    return {"plan_epoch": plan.epoch, "plan_source": plan.source, "plan_reason": plan.reason or None,
            "k": plan.split, "rho_device": plan.rho, "rho_server": plan.rho_server,
            "prune_method": plan.method, "codec": plan.codec, "predicted_quality": quality,
            "quality_metric": plan.quality_metric or None, "clock": clock, "freq_hz": plan.freq_hz,
            "server_clock": plan.server_clock or None}


def merge_plan_infos(infos: list[dict]) -> dict:
    """One plan_info for an answer made of several requests: the last one's, with "plan_epochs" listing
    every epoch when a plan changed in between."""
    if not infos:
        return {}
    merged = dict(infos[-1])
    epochs = sorted({i["plan_epoch"] for i in infos})
    if len(epochs) > 1:
        merged["plan_epochs"] = epochs
    return merged


@dataclass(eq=False)
class DeviceState:
    plan: DevicePlan
    part: DevicePart
    pruner: Pruner
    engine: Engine | None = None  # what computes the part (coinfer.engines); None: the part itself


@dataclass
class DeviceResult:
    """One request's answer and where its time went (seconds)."""

    request_id: str
    output: torch.Tensor          # sentence embeddings [batch, dim] or generated token ids [batch, len]
    output_kind: str
    batch: int
    seq_len: int
    device_compute_s: float       # embedding + blocks 1..k (and the head if alone), under the frequency cap
    encode_s: float               # activation codec and message building
    transfer_s: float             # round trip minus the server's own time: network + (de)serialisation
    server_queue_s: float
    server_compute_s: float
    server_batch_size: int        # requests the server computed together with this one
    end_to_end_s: float           # from tokens in hand to the answer in hand, re-sends included
    bytes_sent: int
    bytes_received: int
    plan_epoch: int = 0           # the plan the answer was computed under
    resends: int = 0              # times the server asked for the request under another plan
    retries: int = 0              # transient failures (server or link away, a stalled attempt) retried
    device_energy_j: float = 0.0
    device_energy_source: str = "model"
    server_energy_j: float = 0.0
    server_energy_source: str = ""
    truncated: tuple[int, ...] = ()  # rows whose input was longer than the length limit, cut to it
    plan: dict = field(default_factory=dict)  # plan_info(): what produced this answer


class DeviceRuntime:
    requires_server = True  # False: with no server, a request returns the device half's own output
    def __init__(self, src: ModelSource, split: int, rho: float = 1.0, method: str = "magnitude",
                 server: str | None = None, codec: str = "fp32", epoch: int = 0,
                 max_length: int | None = None, generation: GenerationOptions = GenerationOptions(),
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, timeout_s: float = 120.0,
                 use_stream: bool = True, max_freq_hz: float = DEFAULT_DEVICE_MAX_FREQ_HZ,
                 power_model: PowerModel = DEFAULT_DEVICE_POWER, channel_control: str | None = None,
                 telemetry=None, attempt_timeout_s: float | None = None, emulate_frequency: bool = False,
                 engine: str = "eager"):
        if codec not in CODECS:
            raise UsageError(f"--codec: unknown codec {codec!r} (one of {', '.join(CODECS)})")
        self.engine_name = check_engine(engine)
        self.src = src
        self.generation = generation
        self.timeout_s = timeout_s
        # one attempt may stall (a peer that accepts and never answers); the request as a whole
        # still has timeout_s, over several attempts
        self.attempt_timeout_s = attempt_timeout_s or max(1.0, timeout_s / 4)
        self.retries = 0  # transient failures retried, over this runtime's life
        self.max_length = min(max_length or src.max_seq_length, src.max_seq_length)
        # a clock cap the hardware cannot set is ignored ("fixed"), unless emulation is asked for
        self.freq = FrequencyControl("cpu", max_freq_hz, emulate=emulate_frequency)
        self._tx_ignored_logged = False
        self.meter = make_meter("cpu", power_model)
        self.telemetry = telemetry  # a NodeTelemetry, when a planner listens
        self.channel = None
        if channel_control:
            from coinfer.channel.control import ChannelControlClient

            self.channel = ChannelControlClient(channel_control)
        plan = DevicePlan(epoch, split, check_ratio(rho), check_method(method), codec, max_freq_hz, None)
        self.state = self._build(plan)
        self._compute_lock = threading.Lock()   # a device compute, or a swap of state, at a time
        self._apply_lock = threading.Lock()
        self._plan_changed = threading.Condition()
        self.watcher = None
        self.plan_listeners: list = []  # called with each plan after it is applied (e.g. the demo's log)
        self.client: InferenceClient | None = None
        if server:
            self.client = InferenceClient(server, max_message_bytes, timeout_s, use_stream)
        elif not self.state.part.runs_alone and self.requires_server:
            raise UsageError(f"split point {split} leaves blocks to the server: give --server HOST:PORT")

    # --- plans -------------------------------------------------------------------------------
    @property
    def split(self) -> int:
        return self.state.plan.split

    @property
    def epoch(self) -> int:
        return self.state.plan.epoch

    @property
    def codec(self) -> str:
        return self.state.plan.codec

    def _make_part(self, split: int):
        """The module that computes the device half (a subclass may compute it elsewhere)."""
        return DevicePart(self.src, split)

    def _build(self, plan: DevicePlan) -> DeviceState:
        part = self._make_part(plan.split)
        pruner = Pruner.for_part(part, self.src, plan.rho, plan.method)
        # after the pruning: an onnxruntime engine exports the weights the part holds
        return DeviceState(plan, part, pruner, prepare_engine(part, self.engine_name, pruner))

    def set_pruning(self, rho: float, method: str) -> None:
        """Change the device half's ratio under the current epoch (a static, planner-less setting)."""
        p = self.state.plan
        self.apply(p.epoch, p.split, rho, method, p.codec, p.freq_hz, None, p.tx_power_w,
                   rho_server=p.rho_server, server_clock=p.server_clock)

    def apply(self, epoch: int, split: int, rho: float, method: str, codec: str, freq_hz: float | None = None,
              max_freq_hz: float | None = None, tx_power_w: float | None = None, **about) -> DevicePlan:
        """Move to a new plan: build beside the current state, swap between device computes. A cap the
        clock cannot set, or a transmit power with no channel emulator to set it on, is ignored: the
        plan records what is in force. `about`: DevicePlan's other fields (rho_server, ...)."""
        rho, method = check_ratio(rho), check_method(method)  # UsageError naming the value
        if codec not in CODECS:
            raise UsageError(f"codec: unknown codec {codec!r}")
        with self._apply_lock:
            self.freq = self.freq.with_max(max_freq_hz)
            cap = self.freq.cap_for(freq_hz)
            current = self.state
            if tx_power_w and self.channel is None:
                self._log_tx_ignored(tx_power_w)
                tx_power_w = None
            plan = DevicePlan(epoch, split, rho, method, codec, cap, tx_power_w, **about)
            fresh = self._build(plan) if split != current.plan.split else None
            if fresh is None and current.engine is not None:
                current.engine.prepare(rho, method)  # onnxruntime: export ahead, so the swap only loads
            if tx_power_w and tx_power_w != current.plan.tx_power_w:
                self.channel.set_tx_power(tx_power_w)  # the radio first: the next bytes go out at p
            with self._compute_lock:
                self.freq.set_cap(cap)
                if self.freq.cap_hz != plan.freq_hz:  # fixed (F), or clamped by the kernel
                    plan = replace(plan, freq_hz=self.freq.cap_hz)
                if fresh is None:
                    current.pruner.apply(rho, method)
                    if current.engine is not None:
                        current.engine.refresh()  # the weights changed in place; an ONNX session holds a copy
                    fresh = DeviceState(plan, current.part, current.pruner, current.engine)
                fresh.plan = plan
                self.state = fresh
        release_thread_pool()  # plans arrive on the watcher's thread; the forwards run on the caller's
        with self._plan_changed:
            self._plan_changed.notify_all()
        return plan

    def _log_tx_ignored(self, tx_power_w: float) -> None:
        if not self._tx_ignored_logged:
            self._tx_ignored_logged = True
            PLAN_LOG.info("transmit power %g W ignored: no channel emulator or radio to set it on "
                          "(--channel-control); sending at whatever the link gives", tx_power_w)

    def knobs(self):
        """What this device can really set, for the planner (planner_pb2.Knobs): its clock, the transmit
        power (emulator: through the channel emulator's control port; else fixed) and its energy meter.
        max_tx_power_w stays 0 (unknown): the emulator has no P_max of its own (it accepts up to a 1 kW
        sanity bound), so the system file's P_max is the one that holds."""
        knobs = self.freq.knobs()
        knobs.tx_power = "emulator" if self.channel is not None else "fixed"
        knobs.max_tx_power_w = 0.0
        knobs.energy_source = self.meter.source
        return knobs

    def plan_info(self, state: DeviceState | None = None) -> dict:
        """What the answers are produced under now (or under `state`): see plan_info()."""
        return plan_info((state or self.state).plan, self.freq.mode)

    def wait_for_epoch(self, epoch: int, deadline: float) -> bool:
        with self._plan_changed:
            return self._plan_changed.wait_for(lambda: self.state.plan.epoch >= epoch,
                                               timeout=max(0.0, deadline - time.monotonic()))

    def connect(self, timeout_s: float | None = None) -> pb.ServerInfo | None:
        """Wait for the server and check it holds the same model, split point and plan epoch, all
        within `timeout_s` (default: the runtime's timeout_s, i.e. the device's --timeout-s).

        The model is compared by content (`ModelSource.fingerprint`) when the server reports one, so
        the same weights in another folder are accepted and other weights under the same name are not;
        a server that reports none is compared by name."""
        if self.client is None:
            return None
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout_s
        try:
            self.client.wait_ready(timeout_s)
            info = self.client.info(timeout_s=max(0.05, deadline - time.monotonic()))
        except InferenceError as exc:
            if exc.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise InferenceError(exc.code, exc.message + self._channel_hint(), exc.server_epoch) from None
            raise
        problems = []
        server_fingerprint = getattr(info, "model_fingerprint", "")
        if server_fingerprint:
            if server_fingerprint != self.src.fingerprint:
                problems.append(f"model {info.model_id!r} with fingerprint {server_fingerprint} "
                                f"(device has {self.src.name!r} with fingerprint {self.src.fingerprint})")
        elif info.model_id != self.src.name:
            problems.append(f"model {info.model_id!r} (device has {self.src.name!r})")
        if info.split_point != self.split:
            problems.append(f"split point {info.split_point} (device has {self.split})")
        if info.plan_epoch != self.epoch:
            problems.append(f"plan epoch {info.plan_epoch} (device has {self.epoch})")
        if problems:
            raise UsageError(f"server at {self.client.address} holds " + ", ".join(problems))
        if self.watcher is None:  # a static plan: the server's ratio and clock are known from its Info
            with self._compute_lock:
                self.state.plan = replace(self.state.plan, rho_server=float(info.rho) if info.rho > 0 else None,
                                          server_clock=getattr(info, "freq_mode", "") or "")
        return info

    def _channel_hint(self) -> str:
        """When the device dials a channel emulator (--channel-control), what the emulator says about
        its upstream: the server behind it, which the device itself never dials."""
        if self.channel is None:
            return ""
        hint = f"; {self.client.address} is a channel emulator (control {self.channel.target}): check its --upstream"
        saved, self.channel.timeout_s = self.channel.timeout_s, 1.0  # a hint is not worth waiting long for
        try:
            failed = self.channel.stats().connections_failed
            if failed:
                hint += f" (the emulator failed to reach its upstream {failed} time(s))"
        except Exception:  # the emulator's control port is down too: the hint stays as it is
            hint += " (its control port did not answer either)"
        finally:
            self.channel.timeout_s = saved
        return hint

    # --- requests ----------------------------------------------------------------------------
    def tokenize(self, sentences: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        if not sentences:
            raise UsageError("no input sentences")
        for i, sentence in enumerate(sentences):
            if not isinstance(sentence, str):
                raise UsageError(f"input {i}: expected a string, got {type(sentence).__name__}")
            try:
                sentence.encode("utf-8")
            except UnicodeEncodeError as exc:  # lone surrogates: bytes that were not UTF-8 (argv, surrogateescape)
                raise UsageError(f"input {i}: not UTF-8 (byte 0x{ord(sentence[exc.start]) & 0xff:02x} at "
                                 f"{exc.start})") from None
        return self.src.tokenize(sentences, self.max_length)

    def truncated_rows(self, sentences: list[str], attention_mask: torch.Tensor) -> tuple[int, ...]:
        """Rows of a tokenised batch whose input was longer than the length limit: only rows that fill
        the limit can have been cut, and those are tokenised again without truncation to tell."""
        full = [i for i, n in enumerate(attention_mask.sum(dim=1).tolist()) if n >= self.max_length]
        if not full:
            return ()
        tokenizer = self.src.tokenizer
        with getattr(self.src, "_tokenizer_lock", None) or contextlib.nullcontext():
            lengths = [len(ids) for ids in tokenizer([sentences[i] for i in full], truncation=False,
                                                     padding=False, verbose=False)["input_ids"]]
        return tuple(i for i, n in zip(full, lengths) if n > self.max_length)

    def infer(self, sentences: list[str]) -> DeviceResult:
        ids, mask = self.tokenize(sentences)
        truncated = self.truncated_rows(sentences, mask)
        if truncated:
            log.warning("%d of %d inputs longer than the limit of %d tokens, truncated to it (rows %s)",
                        len(truncated), len(sentences), self.max_length, ", ".join(map(str, truncated)))
        result = self.infer_tokens(ids, mask)
        result.truncated = truncated
        return result

    def _log_result(self, result: DeviceResult, mask: torch.Tensor, split: int) -> DeviceResult:
        """One INFO line per request (shown with --log-level INFO; quiet at the default WARNING)."""
        if log.isEnabledFor(logging.INFO):
            log.info("request %s: %d sentences, %d tokens (%d x %d), k=%d, epoch %d, device %.1f ms, encode %.1f ms, "
                     "transfer %.1f ms, server queue %.1f ms + compute %.1f ms (batch of %d), end to end %.1f ms, "
                     "%d bytes sent, %d received, %d resends, %d retries",
                     result.request_id[:8], result.batch, int(mask.sum()), result.batch, result.seq_len, split,
                     result.plan_epoch, result.device_compute_s * 1e3, result.encode_s * 1e3,
                     result.transfer_s * 1e3, result.server_queue_s * 1e3, result.server_compute_s * 1e3,
                     result.server_batch_size, result.end_to_end_s * 1e3, result.bytes_sent, result.bytes_received,
                     result.resends, result.retries)
        return result

    def _compute(self, ids: torch.Tensor, mask: torch.Tensor):
        """(state, hidden states, seconds, energy) under the current state."""
        with self._compute_lock:
            state = self.state
            started = time.perf_counter()
            token = self.meter.begin()
            hidden = (state.engine or state.part)(ids, mask)
            self.freq.stretch(time.perf_counter() - started)  # an emulated cap takes as long as a real one
            compute_s = time.perf_counter() - started
            energy = self.meter.end(token, compute_s, self.freq.effective_freq_hz())
        return state, hidden, compute_s, energy

    def _request(self, request_id: str, state: DeviceState, hidden, mask) -> pb.InferRequest:
        plan, g = state.plan, self.generation
        request = pb.InferRequest(
            request_id=request_id, plan_epoch=plan.epoch, split_point=plan.split, model_id=self.src.name,
            model_fingerprint=self.src.fingerprint, attention_mask=encode(mask),
            generate=pb.GenerateOptions(max_new_tokens=g.max_new_tokens, num_beams=g.num_beams,
                                        min_new_tokens=g.min_new_tokens))
        if plan.split == 0:
            encode_into(request.input_ids, hidden)
        else:
            encode_into(request.hidden_states, hidden, plan.codec)
        return request

    def infer_tokens(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> DeviceResult:
        request_id = uuid.uuid4().hex
        started = time.perf_counter()
        deadline = time.monotonic() + self.timeout_s
        batch, seq_len = int(input_ids.shape[0]), int(input_ids.shape[1])
        resends = retries = 0
        state, hidden, compute_s, energy = self._compute(input_ids, attention_mask)
        while True:
            if state.part.runs_alone or self.client is None:
                if not state.part.runs_alone and self.requires_server:
                    raise UsageError("the plan leaves blocks to the server, but this device has no --server")
                kind = OUTPUT_SENTENCE_EMBEDDING if state.part.runs_alone else OUTPUT_HIDDEN_STATES
                finished = time.perf_counter()
                return self._log_result(DeviceResult(
                    request_id=request_id, output=hidden, output_kind=kind, batch=batch, seq_len=seq_len,
                    device_compute_s=compute_s, encode_s=0.0, transfer_s=0.0, server_queue_s=0.0,
                    server_compute_s=0.0, server_batch_size=0, end_to_end_s=finished - started, bytes_sent=0,
                    bytes_received=0, plan_epoch=state.plan.epoch, resends=resends,
                    device_energy_j=energy.joules, device_energy_source=energy.source,
                    plan=self.plan_info(state)), attention_mask, state.plan.split)
            encode_from = time.perf_counter()
            request = self._request(request_id, state, hidden, attention_mask)
            sent_at = time.perf_counter()
            try:
                attempt_s = min(self.attempt_timeout_s, deadline - time.monotonic())
                reply = self.client.infer(request, timeout_s=max(0.05, attempt_s))
            except InferenceError as exc:
                if exc.code in TRANSIENT and retries < RETRY.max_attempts:
                    wait = RETRY.delay(retries)
                    if time.monotonic() + wait < deadline:
                        retries += 1
                        self.retries += 1
                        log.info("request %s: %s; retry %d in %.2f s", request_id[:8], exc.code.name, retries, wait)
                        if exc.code == grpc.StatusCode.DEADLINE_EXCEEDED:
                            self.client.reset()  # a stalled connection: the next attempt starts afresh
                        time.sleep(wait)
                        if self.state is not state:
                            state, hidden, compute_s, energy = self._compute(input_ids, attention_mask)
                        continue
                    raise InferenceError(exc.code, f"{exc.message} (gave up after {retries} retries within "
                                                   f"the {self.timeout_s:g} s deadline)", exc.server_epoch) from None
                if not self._should_resend(exc, state, deadline, resends):
                    raise
                resends += 1
                if exc.server_epoch is not None and exc.server_epoch > state.plan.epoch:
                    self.wait_for_epoch(exc.server_epoch, deadline)
                else:  # the server is behind us (still applying the plan): give it a moment
                    time.sleep(RESEND.delay(min(resends, 6)))
                if self.state is not state:
                    state, hidden, compute_s, energy = self._compute(input_ids, attention_mask)
                continue
            answered = time.perf_counter()
            output = decode(reply.output, "output")
            finished = time.perf_counter()
            t = reply.timing
            server_s = t.queue_s + t.compute_s + t.decode_s
            kind = OUTPUT_GENERATED_TOKENS if self.src.family == "bart" else OUTPUT_SENTENCE_EMBEDDING
            result = DeviceResult(
                request_id=request_id, output=output, output_kind=kind, batch=batch, seq_len=seq_len,
                device_compute_s=compute_s, encode_s=sent_at - encode_from,
                transfer_s=max(0.0, answered - sent_at - server_s), server_queue_s=t.queue_s,
                server_compute_s=t.compute_s, server_batch_size=t.batch_size, end_to_end_s=finished - started,
                bytes_sent=request.ByteSize(), bytes_received=reply.ByteSize(), plan_epoch=state.plan.epoch,
                resends=resends, retries=retries, device_energy_j=energy.joules, device_energy_source=energy.source,
                server_energy_j=t.energy_j, server_energy_source=t.energy_source, plan=self.plan_info(state))
            if self.telemetry is not None:
                self.telemetry.report_device(result, state.plan.epoch, self.freq.effective_freq_hz(),
                                             state.plan.tx_power_w or 0.0)
            return self._log_result(result, attention_mask, state.plan.split)

    def _should_resend(self, exc: InferenceError, state: DeviceState, deadline: float, resends: int) -> bool:
        """Only a refusal over plans is re-sent here: the server holds another epoch or split point."""
        if exc.code != grpc.StatusCode.FAILED_PRECONDITION or time.monotonic() >= deadline:
            return False
        if resends >= RESEND.max_attempts or self.watcher is None:
            return False  # without a planner no other plan is coming: the caller must hear of it
        return exc.server_epoch is not None and exc.server_epoch != state.plan.epoch

    def follow(self, planner: str, node_id: str = "device", report: bool = True, min_rho: float = 0.0) -> None:
        """Apply the plans of the planner at `planner` as they come, and report telemetry to it."""
        from coinfer.telemetry import follow_planner

        telemetry, self.watcher = follow_planner(planner, node_id, "device", self.src.name, self._apply_plan, report,
                                                  min_rho, knobs=self.knobs)
        self.telemetry = telemetry or self.telemetry

    def _apply_plan(self, plan) -> None:
        current = self.state.plan
        self.apply(plan.epoch, plan.split_point, plan.rho_device, plan.prune_method or current.method,
                   plan.codec or current.codec, plan.f_device_hz or None, plan.device_max_freq_hz or None,
                   plan.tx_power_w or None, rho_server=plan.rho_server,
                   predicted_quality=plan.predicted_quality or None, quality_metric=plan.quality_metric,
                   reason=plan.reason, source="planner",
                   server_clock=plan.server_knobs.clock if plan.HasField("server_knobs") else "")
        PLAN_LOG.info("%s", describe_plan(plan, self.freq.describe()))
        for listener in list(self.plan_listeners):
            listener(plan)

    def close(self) -> None:
        if self.watcher is not None:
            self.watcher.stop()
        if self.telemetry is not None:
            self.telemetry.stop()
        if self.client is not None:
            self.client.close()
        if self.channel is not None:
            self.channel.close()
