"""The device half at work: tokenise, run the embedding and blocks 1..k, send, return the answer."""
from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

import torch

from coinfer.codecs import decode, encode
from coinfer.device.client import InferenceClient
from coinfer.errors import UsageError
from coinfer.models import ModelSource
from coinfer.protos import coinfer_pb2 as pb
from coinfer.pruning import Pruner, check_method, check_ratio
from coinfer.rpc import DEFAULT_MAX_MESSAGE_BYTES
from coinfer.split import OUTPUT_GENERATED_TOKENS, OUTPUT_SENTENCE_EMBEDDING, DevicePart, GenerationOptions


@dataclass
class DeviceResult:
    """One request's answer and where its time went (seconds)."""

    request_id: str
    output: torch.Tensor          # sentence embeddings [batch, dim] or generated token ids [batch, len]
    output_kind: str
    batch: int
    seq_len: int
    device_compute_s: float       # tokenising excluded; embedding + blocks 1..k (and the head if alone)
    encode_s: float               # activation codec and message building
    transfer_s: float             # round trip minus the server's own time: network + (de)serialisation
    server_queue_s: float
    server_compute_s: float
    server_batch_size: int        # requests the server computed together with this one
    end_to_end_s: float           # from tokens in hand to the answer in hand
    bytes_sent: int
    bytes_received: int


class DeviceRuntime:
    def __init__(self, src: ModelSource, split: int, rho: float = 1.0, method: str = "magnitude",
                 server: str | None = None, codec: str = "fp32", epoch: int = 0,
                 max_length: int | None = None, generation: GenerationOptions = GenerationOptions(),
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, timeout_s: float = 120.0,
                 use_stream: bool = True):
        self.src = src
        self.split = split
        self.epoch = epoch
        self.codec = codec
        self.generation = generation
        self.max_length = min(max_length or src.max_seq_length, src.max_seq_length)
        self.part = DevicePart(src, split)
        self.pruner = Pruner(self.part.linear_layers(), seed=src.seed, head_dim=src.head_dim)
        self.set_pruning(rho, method)
        self.client: InferenceClient | None = None
        if not self.part.runs_alone:
            if not server:
                raise UsageError(f"split point {split} leaves blocks to the server: give --server HOST:PORT")
            self.client = InferenceClient(server, max_message_bytes, timeout_s, use_stream)

    def set_pruning(self, rho: float, method: str) -> None:
        try:
            self.pruner.apply(check_ratio(rho), check_method(method))
        except ValueError as exc:
            raise UsageError(str(exc)) from None

    def connect(self, timeout_s: float = 30.0) -> pb.ServerInfo | None:
        """Wait for the server and check it holds the same model, split point and plan epoch."""
        if self.client is None:
            return None
        self.client.wait_ready(timeout_s)
        info = self.client.info()
        problems = []
        if info.model_id != self.src.name:
            problems.append(f"model {info.model_id!r} (device has {self.src.name!r})")
        if info.split_point != self.split:
            problems.append(f"split point {info.split_point} (device has {self.split})")
        if info.plan_epoch != self.epoch:
            problems.append(f"plan epoch {info.plan_epoch} (device has {self.epoch})")
        if problems:
            raise UsageError(f"server at {self.client.address} holds " + ", ".join(problems))
        return info

    def tokenize(self, sentences: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        if not sentences:
            raise UsageError("no input sentences")
        return self.src.tokenize(sentences, self.max_length)

    def infer(self, sentences: list[str]) -> DeviceResult:
        return self.infer_tokens(*self.tokenize(sentences))

    def infer_tokens(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> DeviceResult:
        request_id = uuid.uuid4().hex
        started = time.perf_counter()
        hidden = self.part(input_ids, attention_mask)
        computed = time.perf_counter()
        batch, seq_len = int(input_ids.shape[0]), int(input_ids.shape[1])
        if self.client is None:
            return DeviceResult(request_id, hidden, OUTPUT_SENTENCE_EMBEDDING, batch, seq_len,
                                computed - started, 0.0, 0.0, 0.0, 0.0, 0, computed - started, 0, 0)
        payload = {"input_ids": encode(hidden)} if self.split == 0 else {"hidden_states": encode(hidden, self.codec)}
        g = self.generation
        request = pb.InferRequest(
            request_id=request_id, plan_epoch=self.epoch, split_point=self.split, model_id=self.src.name,
            attention_mask=encode(attention_mask),
            generate=pb.GenerateOptions(max_new_tokens=g.max_new_tokens, num_beams=g.num_beams,
                                        min_new_tokens=g.min_new_tokens),
            **payload)
        encoded = time.perf_counter()
        reply = self.client.infer(request)
        answered = time.perf_counter()
        output = decode(reply.output, "output")
        finished = time.perf_counter()
        server_s = reply.timing.queue_s + reply.timing.compute_s + reply.timing.decode_s
        kind = OUTPUT_GENERATED_TOKENS if self.src.family == "bart" else OUTPUT_SENTENCE_EMBEDDING
        return DeviceResult(
            request_id=request_id, output=output, output_kind=kind, batch=batch, seq_len=seq_len,
            device_compute_s=computed - started, encode_s=encoded - computed,
            transfer_s=max(0.0, answered - encoded - server_s),
            server_queue_s=reply.timing.queue_s, server_compute_s=reply.timing.compute_s,
            server_batch_size=reply.timing.batch_size,
            end_to_end_s=finished - started, bytes_sent=request.ByteSize(), bytes_received=reply.ByteSize())

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
