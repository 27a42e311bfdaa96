"""Fuzzing the CoInference service with hypothesis, against one real `coinfer server` process.

10,000+ requests in all, over both the unary `Infer` and the `InferStream` path:

* mutated requests: a valid request (any codec) with 0-3 targeted faults: wrong dtype/codec enums,
  shapes (huge, negative, empty, rank), byte lengths, scales, group sizes, NaN/Inf, batch over the
  limit, wrong epoch/split/model, missing payload or mask, bad mask values, generate options;
* random structures: every field of the message drawn from a wide range;
* random bytes: raw bytes (and byte-level mutations of a valid message) sent as the request.

Every answer must be a result (for a request with no fault: the embedding of its batch) or a clean
status: a code a bad request may get, and a message naming the field. DEADLINE_EXCEEDED means the
server hung, UNAVAILABLE that it died, UNKNOWN/INTERNAL that an exception escaped the validation.
After each test a good request still succeeds and the server process is alive.
"""
from __future__ import annotations

import math
import os
import re
import struct
import uuid
from collections import Counter

import grpc
import pytest
import torch
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coinfer.codecs import CODECS, decode, encode
from coinfer.device.client import InferenceClient, InferenceError
from coinfer.lab.launch import ServiceProcess
from coinfer.protos import coinfer_pb2 as pb
from coinfer.protos import coinfer_pb2_grpc as pb_grpc
from coinfer.rpc import EPOCH_METADATA

SPLIT = 2
HIDDEN = 384              # MiniLM
MAX_MESSAGE_MB = 4        # small, so an oversize message is cheap to build
CALL_TIMEOUT_S = 15.0     # per call: a call still running after this is a hang
SEQ_LIMIT = 512
MAX_BATCH = 256

# Codes a bad request may get; anything else (UNKNOWN, INTERNAL, UNAVAILABLE, DEADLINE_EXCEEDED...) is a bug.
# ALREADY_EXISTS: a byte-level mutation that leaves the id intact is another request under a used id.
CLEAN = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND,
         grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.ALREADY_EXISTS}
# A refusal by the service names the field first; gRPC's own size limit says so in its words.
FIELD = re.compile(r"^(request_id|model_id|model_fingerprint|split_point|plan_epoch|hidden_states|input_ids|attention_mask|"
                   r"generate|request)\b")
GRPC_SIZE_LIMIT = re.compile(r"larger than max", re.IGNORECASE)

# COINFER_FUZZ_SCALE=0.1 runs a tenth of the examples (a quick look; the 10,000 total is then not checked)
SCALE = float(os.environ.get("COINFER_FUZZ_SCALE", "1"))
CASES: Counter = Counter()   # examples run, per test (the module's total must reach 10,000)
def _fresh_id(prefix: str = "") -> str:
    # unique per example, and far from any other even after a byte flip: the server's reply cache
    # answers a repeated (id, epoch) with the first reply
    return f"{prefix}#{uuid.uuid4().hex}"


# --- the server under test -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(tmp_path_factory):
    log = open(tmp_path_factory.mktemp("fuzz") / "server.log", "w+")
    proc = ServiceProcess(["server", "--model", "minilm", "--split", str(SPLIT), "--listen", "127.0.0.1:0",
                           "--max-message-mb", str(MAX_MESSAGE_MB)], "fuzz-server", stderr=log)
    try:
        proc.log = log
        yield proc
    finally:
        code = proc.stop()
        log.close()
        assert code == 0, f"the fuzzed server exited with {code}"


@pytest.fixture(scope="module")
def channel(server):
    with grpc.insecure_channel(server.address) as ch:
        grpc.channel_ready_future(ch).result(timeout=30)
        yield ch


@pytest.fixture(scope="module")
def stub(channel):
    return pb_grpc.CoInferenceStub(channel)


@pytest.fixture(scope="module")
def model_id(stub):
    return stub.Info(pb.InfoRequest(), timeout=CALL_TIMEOUT_S).model_id


@pytest.fixture(scope="module")
def stream_client(server):
    # the device's own stream client: one long-lived InferStream, replies matched by request id
    with InferenceClient(server.address, timeout_s=CALL_TIMEOUT_S, use_stream=True) as client:
        yield client


@pytest.fixture(scope="module")
def raw(channel):
    """Unserialised callables: bytes in, bytes out (for bytes that are not an InferRequest)."""
    return (channel.unary_unary("/coinfer.v1.CoInference/Infer"),
            channel.stream_stream("/coinfer.v1.CoInference/InferStream"))


def _server_log(server) -> str:
    server.log.flush()
    server.log.seek(0)
    return server.log.read()[-4000:]


def _assert_still_serving(server, stub, model_id):
    assert server.proc.poll() is None, f"server died:\n{_server_log(server)}"
    request = _valid_request(model_id, 2, 5, "fp32", seed=7)
    reply = stub.Infer(request, timeout=CALL_TIMEOUT_S)
    assert list(reply.output.shape) == [2, HIDDEN]
    with InferenceClient(server.address, timeout_s=CALL_TIMEOUT_S) as client:  # a new stream, too
        request.request_id = _fresh_id("good-after")
        assert list(client.infer(request).output.shape) == [2, HIDDEN]


# --- sending and judging ---------------------------------------------------------------------------
class Outcome:
    def __init__(self, code, message: str = "", reply: pb.InferReply | None = None, epoch: int | None = None):
        self.code, self.message, self.reply, self.epoch = code, message, reply, epoch

    def __repr__(self) -> str:
        return f"Outcome({self.code}, {self.message[:200]!r})"


def _send(path: str, request: pb.InferRequest, stub, stream_client) -> Outcome:
    if path == "unary":
        try:
            reply = stub.Infer(request, timeout=CALL_TIMEOUT_S)
        except grpc.RpcError as exc:
            epoch = dict(exc.trailing_metadata() or ()).get(EPOCH_METADATA)
            return Outcome(exc.code(), exc.details() or "", epoch=int(epoch) if epoch else None)
        return Outcome(grpc.StatusCode.OK, reply=reply)
    try:
        reply = stream_client.infer(request)
    except InferenceError as exc:
        return Outcome(exc.code, exc.message, epoch=exc.server_epoch)
    return Outcome(grpc.StatusCode.OK, reply=reply)


def _send_bytes(path: str, data: bytes, raw) -> Outcome:
    unary, stream = raw
    try:
        if path == "unary":
            reply = pb.InferReply.FromString(unary(data, timeout=CALL_TIMEOUT_S))
        else:
            replies = list(stream(iter([data]), timeout=CALL_TIMEOUT_S))
            assert len(replies) == 1, f"one request, {len(replies)} replies"
            reply = pb.InferReply.FromString(replies[0])
    except grpc.RpcError as exc:
        epoch = dict(exc.trailing_metadata() or ()).get(EPOCH_METADATA)
        return Outcome(exc.code(), exc.details() or "", epoch=int(epoch) if epoch else None)
    if reply.HasField("error"):
        code = next(c for c in grpc.StatusCode if c.value[0] == reply.error.code)
        return Outcome(code, reply.error.message, epoch=reply.plan_epoch)
    return Outcome(grpc.StatusCode.OK, reply=reply)


def _judge(outcome: Outcome, request: pb.InferRequest | None, expect=None) -> None:
    """A result or a clean refusal; `expect` (a code) when the request's fault decides it."""
    assert outcome.code != grpc.StatusCode.DEADLINE_EXCEEDED, f"the server hung: {outcome}"
    if outcome.code == grpc.StatusCode.OK:
        assert expect in (None, grpc.StatusCode.OK), f"expected {expect}, got a result"
        reply = outcome.reply
        if request is not None:
            assert reply.request_id == request.request_id
            batch = request.hidden_states.shape[0]
            assert list(reply.output.shape) == [batch, HIDDEN], "a result must be the batch's embeddings"
        assert torch.isfinite(decode(reply.output)).all(), "a result must be finite"
        assert not reply.HasField("error")
        return
    assert outcome.code in CLEAN, f"not a clean status for bad input: {outcome}"
    assert outcome.message.strip(), f"a refusal without a message: {outcome}"
    assert FIELD.match(outcome.message) or (outcome.code == grpc.StatusCode.RESOURCE_EXHAUSTED
                                            and GRPC_SIZE_LIMIT.search(outcome.message)), \
        f"the message does not name the field: {outcome}"
    if expect is not None:
        assert outcome.code == expect, f"expected {expect.name}: {outcome}"
    if outcome.code == grpc.StatusCode.FAILED_PRECONDITION:
        assert outcome.epoch == 0, f"a plan refusal carries the epoch the server holds (0): {outcome}"


# --- building requests -----------------------------------------------------------------------------
def _valid_request(model_id: str, batch: int, seq: int, codec: str, seed: int, mask_bits=None) -> pb.InferRequest:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, seq, HIDDEN, generator=generator)
    mask = torch.ones(batch, seq, dtype=torch.long)
    if mask_bits is not None:  # padding after the first token (every row keeps at least one)
        for i, bit in enumerate(mask_bits[: batch * (seq - 1)]):
            mask[i // (seq - 1), 1 + i % (seq - 1)] = bit
    return pb.InferRequest(request_id=_fresh_id("fuzz"), plan_epoch=0, split_point=SPLIT, model_id=model_id,
                           hidden_states=encode(x, codec), attention_mask=encode(mask))


# wire patterns of NaN, +Inf, -Inf per float wire format, and of the largest finite value
_HUGE = {pb.FLOAT32: struct.pack("<f", 3.4e38), pb.FLOAT16: b"\xff\x7b", pb.BFLOAT16: b"\x7f\x7f"}
_BAD_FLOATS = {
    pb.FLOAT32: [struct.pack("<f", v) for v in (math.nan, math.inf, -math.inf)],
    pb.FLOAT16: [b"\x00\x7e", b"\x00\x7c", b"\x00\xfc"],
    pb.BFLOAT16: [b"\xc0\x7f", b"\x80\x7f", b"\x80\xff"],
}
DIMS = st.one_of(
    st.integers(0, 6),
    st.sampled_from([0, 1, HIDDEN - 1, HIDDEN, HIDDEN + 1, MAX_BATCH + 1, SEQ_LIMIT, SEQ_LIMIT + 1, -1, -HIDDEN,
                     2**31 - 1, 2**31, 2**32 + 1, 2**62, 2**63 - 1, -2**63]),
    st.integers(-2**63, 2**63 - 1),
)
ENUMS = st.one_of(st.integers(0, 9), st.integers(-2**31, 2**31 - 1))  # proto3 enums are open int32


def _poke(data: bytes, offset: int, pattern: bytes) -> bytes:
    if len(data) < len(pattern):
        return pattern
    offset %= len(data) - len(pattern) + 1
    offset -= offset % len(pattern)
    return data[:offset] + pattern + data[offset + len(pattern):]


def _nonfinite(draw, r: pb.InferRequest):
    """NaN/Inf wherever this codec carries floats: the values, or the scales."""
    t = r.hidden_states
    where = "data" if t.codec in (pb.RAW, pb.FP16, pb.BF16) else draw(
        st.sampled_from(["scales", "channel_scales"] if t.codec == pb.INT8_PER_TOKEN else ["scales"]))
    fmt = {"data": t.dtype, "channel_scales": pb.FLOAT16,
           "scales": pb.FLOAT32 if t.codec == pb.INT8_PER_TOKEN else pb.FLOAT16}[where]
    pattern = draw(st.sampled_from(_BAD_FLOATS.get(fmt, _BAD_FLOATS[pb.FLOAT32])))  # (dtype may be mutated)
    setattr(t, where, _poke(getattr(t, where), draw(st.integers(0, 2**20)), pattern))


def _huge_values(draw, r):
    """The largest finite value among the data: the server half may overflow (refused) or not (a result)."""
    t = r.hidden_states
    if t.dtype in _HUGE and t.codec in (pb.RAW, pb.FP16, pb.BF16):
        t.data = _poke(t.data, draw(st.integers(0, 2**20)), _HUGE[t.dtype])


def _negative_scale(draw, r):
    t = r.hidden_states
    if t.codec == pb.INT8_PER_TOKEN:
        t.scales = _poke(t.scales, draw(st.integers(0, 2**20)), struct.pack("<f", -1.0))
    elif t.codec == pb.INT4_GROUP:
        t.scales = _poke(t.scales, draw(st.integers(0, 2**20)), b"\x00\xbc")  # float16 -1.0
    else:
        t.scales = draw(st.binary(min_size=1, max_size=64))  # side information a RAW/FP16 tensor must not need
        return None
    return grpc.StatusCode.INVALID_ARGUMENT


def _shape(draw, r):
    t = r.hidden_states
    if t.shape and draw(st.booleans()):  # one dimension off
        shape = list(t.shape)
        shape[draw(st.integers(0, len(shape) - 1))] = draw(DIMS)
    else:
        shape = draw(st.lists(DIMS, max_size=10))
    del t.shape[:]
    t.shape.extend(shape)


def _bytes(field):
    def mutate(draw, r):
        t = r.hidden_states
        data = getattr(t, field)
        how = draw(st.sampled_from(["truncate", "extend", "random", "empty"]))
        if how == "truncate" and data:
            data = data[: draw(st.integers(0, len(data) - 1))]
        elif how == "extend":
            data = data + draw(st.binary(min_size=1, max_size=64))
        elif how == "random":
            data = draw(st.binary(max_size=max(64, len(data) + 8)))
        else:
            data = b""
        setattr(t, field, data)
    return mutate


def _over_batch(draw, r):
    seq = draw(st.integers(1, 2))
    batch = draw(st.integers(MAX_BATCH + 1, MAX_BATCH + 40))
    r.hidden_states.CopyFrom(encode(torch.zeros(batch, seq, HIDDEN), draw(st.sampled_from(["int4", "int8"]))))
    r.attention_mask.CopyFrom(encode(torch.ones(batch, seq, dtype=torch.long)))
    return grpc.StatusCode.RESOURCE_EXHAUSTED


def _mask(draw, r):
    m = r.attention_mask
    how = draw(st.sampled_from(["values", "float", "all-zero", "shape", "clear", "dtype"]))
    batch, seq = (m.shape[0], m.shape[1]) if len(m.shape) == 2 else (1, 1)  # the mask still has its own shape
    if how == "values":
        m.CopyFrom(encode(torch.full((batch, seq), draw(st.sampled_from([2, -1, 255, 2**40])), dtype=torch.long)))
    elif how == "float":
        m.CopyFrom(encode(torch.ones(batch, seq)))
    elif how == "all-zero":
        m.CopyFrom(encode(torch.zeros(batch, seq, dtype=torch.long)))
    elif how == "shape":
        m.CopyFrom(encode(torch.ones(batch + 1, seq, dtype=torch.long)))
    elif how == "clear":
        r.ClearField("attention_mask")
    else:
        m.dtype = draw(ENUMS)
        return None
    return grpc.StatusCode.INVALID_ARGUMENT


def _payload(draw, r):
    how = draw(st.sampled_from(["none", "input_ids"]))
    if how == "none":
        r.ClearField("hidden_states")
    else:
        r.input_ids.CopyFrom(encode(torch.ones(1, 3, dtype=torch.long)))
    return grpc.StatusCode.INVALID_ARGUMENT


def _generate(draw, r):
    g = r.generate
    g.max_new_tokens, g.num_beams, g.min_new_tokens = (draw(st.integers(0, 2**32 - 1)) for _ in range(3))


def _set(field, strategy, expect=None):
    def mutate(draw, r):
        setattr(r.hidden_states, field, draw(strategy))
        return expect
    return mutate


def _header(field, strategy, expect):
    def mutate(draw, r):
        setattr(r, field, draw(strategy))
        return expect
    return mutate


MUTATIONS = {
    "dtype": _set("dtype", ENUMS),
    "logical_dtype": _set("logical_dtype", ENUMS),
    "codec": _set("codec", ENUMS),
    "group_size": _set("group_size", st.one_of(st.integers(0, 9000), st.sampled_from([2**32 - 1, 2**31]))),
    "shape": _shape,
    "data": _bytes("data"),
    "scales": _bytes("scales"),
    "channel_scales": _bytes("channel_scales"),
    "nonfinite": lambda draw, r: (_nonfinite(draw, r), grpc.StatusCode.INVALID_ARGUMENT)[1],
    "negative_scale": _negative_scale,
    "huge_values": _huge_values,
    "over_batch": _over_batch,
    "mask": _mask,
    "payload": _payload,
    "generate": _generate,
    "epoch": _header("plan_epoch", st.integers(1, 2**64 - 1), grpc.StatusCode.FAILED_PRECONDITION),
    "split": _header("split_point", st.integers(0, 2**32 - 1).filter(lambda k: k != SPLIT),
                     grpc.StatusCode.FAILED_PRECONDITION),
    "model": _header("model_id", st.text(min_size=1, max_size=40), grpc.StatusCode.NOT_FOUND),
    "request_id": _header("request_id", st.just(""), grpc.StatusCode.INVALID_ARGUMENT),
}


@st.composite
def mutated_requests(draw, model_id):
    batch, seq = draw(st.integers(1, 3)), draw(st.integers(1, 10))
    codec = draw(st.sampled_from(CODECS))
    bits = draw(st.lists(st.integers(0, 1), max_size=batch * seq))
    request = _valid_request(model_id, batch, seq, codec, draw(st.integers(0, 2**16)), bits)
    names = draw(st.lists(st.sampled_from(sorted(MUTATIONS)), max_size=3, unique=True))
    expects = []
    for name in names:
        expects.append(MUTATIONS[name](draw, request))
    if request.model_id == model_id and "model" in names:  # st.text drew the right name after all
        expects[names.index("model")] = None
    # the code is decided only by a lone fault; no fault at all must give a result
    expect = grpc.StatusCode.OK if not names else (expects[0] if len(names) == 1 else None)
    return names, request, expect


@st.composite
def tensors(draw):
    """A Tensor with every field drawn: the data's length sometimes fits the shape."""
    shape = draw(st.lists(DIMS, max_size=9))
    dtype = draw(ENUMS)
    count = math.prod(shape) if shape and all(0 <= d for d in shape) else -1
    if 0 <= count <= 4096 and draw(st.booleans()):
        itemsize = {pb.FLOAT32: 4, pb.FLOAT16: 2, pb.BFLOAT16: 2, pb.INT32: 4, pb.INT64: 8}.get(dtype, 1)
        data = draw(st.binary(min_size=count * itemsize, max_size=count * itemsize))
    else:
        data = draw(st.binary(max_size=512))
    return pb.Tensor(dtype=dtype, shape=shape, data=data, codec=draw(ENUMS), logical_dtype=draw(ENUMS),
                     scales=draw(st.binary(max_size=64)), group_size=draw(st.integers(0, 2**32 - 1)),
                     channel_scales=draw(st.binary(max_size=64)))


@st.composite
def random_requests(draw, model_id):
    """Every field drawn, biased towards the right header so the tensors get checked too."""
    request = pb.InferRequest(
        request_id=draw(st.one_of(st.just(""), st.text(max_size=30).map(_fresh_id))),
        plan_epoch=draw(st.one_of(st.just(0), st.integers(0, 2**64 - 1))),
        split_point=draw(st.one_of(st.just(SPLIT), st.integers(0, 2**32 - 1))),
        model_id=draw(st.one_of(st.just(model_id), st.text(max_size=30))),
        generate=pb.GenerateOptions(max_new_tokens=draw(st.integers(0, 2**32 - 1)),
                                    num_beams=draw(st.integers(0, 2**32 - 1)),
                                    min_new_tokens=draw(st.integers(0, 2**32 - 1))))
    payload = draw(st.sampled_from(["hidden_states", "input_ids", None]))
    if payload:
        getattr(request, payload).CopyFrom(draw(tensors()))
    if draw(st.booleans()):
        request.attention_mask.CopyFrom(draw(tensors()))
    return request


FUZZ = dict(deadline=None, database=None, derandomize=False,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
PATHS = st.sampled_from(["unary", "stream"])


# --- the fuzz tests --------------------------------------------------------------------------------
def test_fuzz_mutated_requests(server, stub, stream_client, model_id):
    examples = max(1, int(4000 * SCALE))

    @settings(max_examples=examples, **FUZZ)
    @given(case=mutated_requests(model_id), path=PATHS)
    def run(case, path):
        names, request, expect = case
        CASES["mutated"] += 1
        _judge(_send(path, request, stub, stream_client), request, expect)

    run()
    assert CASES["mutated"] >= examples
    _assert_still_serving(server, stub, model_id)


def test_fuzz_random_structures(server, stub, stream_client, model_id):
    examples = max(1, int(3000 * SCALE))

    @settings(max_examples=examples, **FUZZ)
    @given(request=random_requests(model_id), path=PATHS)
    def run(request, path):
        CASES["random"] += 1
        _judge(_send(path, request, stub, stream_client), request)

    run()
    assert CASES["random"] >= examples
    _assert_still_serving(server, stub, model_id)


def test_fuzz_random_bytes(server, stub, raw, model_id):
    examples = max(1, int(3000 * SCALE))
    valid = _valid_request(model_id, 1, 4, "int8", seed=1).SerializeToString()

    @st.composite
    def garbage(draw):
        if draw(st.booleans()):
            return draw(st.binary(max_size=1024))
        data = bytearray(valid)  # a valid message with bytes flipped, cut out or put in
        for _ in range(draw(st.integers(1, 4))):
            at = draw(st.integers(0, len(data) - 1))
            how = draw(st.sampled_from(["flip", "delete", "insert"]))
            if how == "flip":
                data[at] ^= draw(st.integers(1, 255))
            elif how == "delete":
                del data[at: at + draw(st.integers(1, 16))]
            else:
                data[at:at] = draw(st.binary(min_size=1, max_size=16))
            if not data:
                break
        return bytes(data)

    @settings(max_examples=examples, **FUZZ)
    @given(data=garbage(), path=PATHS)
    def run(data, path):
        CASES["bytes"] += 1
        try:
            request = pb.InferRequest.FromString(data)
        except DecodeError:
            request = None
        outcome = _send_bytes(path, data, raw)
        if request is not None and outcome.code == grpc.StatusCode.OK:
            # a byte-level mutation of a valid request may still be one; its id may repeat, so the
            # reply may come from the cache: only its form is checked
            assert list(outcome.reply.output.shape)[1:] == [HIDDEN]
            return
        _judge(outcome, None, grpc.StatusCode.INVALID_ARGUMENT if request is None else None)

    run()
    assert CASES["bytes"] >= examples
    _assert_still_serving(server, stub, model_id)


def test_fuzz_total_is_over_10000(server, stub, model_id):
    if set(CASES) != {"mutated", "random", "bytes"} or SCALE < 1:
        pytest.skip("the total needs the whole module at full scale")
    print(f"\nfuzz cases: {dict(CASES)}, total {sum(CASES.values())}")
    assert sum(CASES.values()) >= 10_000, dict(CASES)
    _assert_still_serving(server, stub, model_id)


# --- faults the fuzzer found, and the ones too costly to draw often ----------------------------------
def _tensor(t: torch.Tensor, codec: str = "fp32", **changes) -> pb.Tensor:
    msg = encode(t, codec)
    for field, value in changes.items():
        if field == "shape":
            del msg.shape[:]
            msg.shape.extend(value)
        else:
            setattr(msg, field, value)
    return msg


@pytest.mark.parametrize("path", ["unary", "stream"])
@pytest.mark.parametrize("name, hidden, mask_shape, expect, field", [
    # an empty batch in int4: decoding raised inside torch (UNKNOWN; on a stream, no reply ever)
    ("int4 empty batch", lambda: _tensor(torch.randn(1, 4, HIDDEN), "int4", shape=[0, 4, HIDDEN], data=b"",
                                         scales=b""), (1, 4), grpc.StatusCode.INVALID_ARGUMENT, "hidden_states"),
    # int8 with an empty last dimension: its scales could not take the shape
    ("int8 empty rows", lambda: _tensor(torch.randn(1, 4, HIDDEN), "int8", shape=[2, 3, 0], data=b"", scales=b"",
                                        channel_scales=b""), (1, 4), grpc.StatusCode.INVALID_ARGUMENT, "hidden_states"),
    # zero elements, but strides beyond int64
    ("huge empty", lambda: _tensor(torch.randn(1, 4, HIDDEN), shape=[0, 2**62, HIDDEN], data=b""), (1, 4),
     grpc.StatusCode.INVALID_ARGUMENT, "hidden_states"),
    ("huge dims", lambda: _tensor(torch.randn(1, 4, HIDDEN), shape=[2**40, 2**40, HIDDEN]), (1, 4),
     grpc.StatusCode.INVALID_ARGUMENT, "hidden_states.shape"),
    ("over batch", lambda: _tensor(torch.zeros(MAX_BATCH + 1, 1, HIDDEN)), (MAX_BATCH + 1, 1),
     grpc.StatusCode.RESOURCE_EXHAUSTED, "hidden_states.shape"),
    ("over sequence", lambda: _tensor(torch.zeros(1, SEQ_LIMIT + 1, HIDDEN)), (1, SEQ_LIMIT + 1),
     grpc.StatusCode.INVALID_ARGUMENT, "hidden_states.shape"),
    # over --max-message-mb: gRPC itself refuses it
    ("oversize", lambda: _tensor(torch.zeros(1, 4, HIDDEN), data=b"\0" * (MAX_MESSAGE_MB << 20)), (1, 4),
     grpc.StatusCode.RESOURCE_EXHAUSTED, "larger than max"),
])
def test_known_bad_tensors_get_a_clean_status(server, stub, model_id, path, name, hidden, mask_shape, expect, field):
    request = _valid_request(model_id, 1, 4, "fp32", seed=3)
    request.hidden_states.CopyFrom(hidden())
    request.attention_mask.CopyFrom(encode(torch.ones(*mask_shape, dtype=torch.long)))
    with InferenceClient(server.address, timeout_s=CALL_TIMEOUT_S) as client:
        outcome = _send(path, request, stub, client)
    assert outcome.code == expect, outcome
    assert field in outcome.message, outcome
    _judge(outcome, request, expect)
    _assert_still_serving(server, stub, model_id)


@pytest.mark.parametrize("path", ["unary", "stream"])
def test_bytes_that_are_no_request_are_invalid_argument(server, stub, raw, model_id, path):
    # gRPC's own deserialiser answers INTERNAL and, on a stream, ends the stream with every request
    # in flight on it; the service parses the bytes itself and refuses only this one message
    outcome = _send_bytes(path, b"\xff\xff\xff", raw)
    assert outcome.code == grpc.StatusCode.INVALID_ARGUMENT, outcome
    assert outcome.message.startswith("request"), outcome
    if path == "stream":
        unary, stream = raw
        good = _valid_request(model_id, 1, 4, "fp32", seed=5)
        replies = [pb.InferReply.FromString(r) for r in
                   stream(iter([good.SerializeToString(), b"\xff\xff\xff"]), timeout=CALL_TIMEOUT_S)]
        answered = {r.request_id: r for r in replies}
        assert good.request_id in answered and not answered[good.request_id].HasField("error"), replies
        assert len(replies) == 2 and any(r.HasField("error") for r in replies), replies
    _assert_still_serving(server, stub, model_id)
