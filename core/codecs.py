"""Tensors on the wire: torch tensor <-> coinfer.v1.Tensor, with an activation codec.

Data is raw little-endian bytes in C order. Codecs trade bytes for precision on the activations:

* ``fp32`` (RAW) — exact: the tensor's own dtype and values;
* ``fp16`` / ``bf16`` — half the bytes;
* ``int8`` — per-token absmax: each row of the last dimension is scaled to [-127, 127] with one float32
  scale, a quarter of the bytes plus 4 bytes per token. Transformer activations carry a few loud
  channels that would set every token's scale, so channels are first divided by a smoothing factor
  sqrt(max |x| of the channel) (SmoothQuant's alpha = 0.5), sent as float16 (2 bytes per channel per
  message): MiniLM's worst-k output error 1 - cos falls from 8e-4 to 1e-4;
* ``int4`` — per-group absmax: groups of `INT4_GROUP_SIZE` consecutive elements of a row are scaled to
  [-7, 7] with one float16 scale and packed two values per byte (about 4.5 bits per element).

Decoding checks everything it is given (dtype, shape, byte length, scales) and raises
`WireError(field, message)`, which the server turns into INVALID_ARGUMENT naming the field.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from coinfer.protos import coinfer_pb2 as pb

CODECS = ("fp32", "fp16", "bf16", "int8", "int4")
CODEC_ENUM = {"fp32": pb.RAW, "fp16": pb.FP16, "bf16": pb.BF16, "int8": pb.INT8_PER_TOKEN, "int4": pb.INT4_GROUP}
INT4_GROUP_SIZE = 64
CODEC_NAME = {v: k for k, v in CODEC_ENUM.items()}

# wire dtype enum <-> (numpy little-endian dtype for the bytes, torch dtype)
_DTYPES = {
    pb.FLOAT32: (np.dtype("<f4"), torch.float32),
    pb.FLOAT16: (np.dtype("<f2"), torch.float16),
    pb.BFLOAT16: (np.dtype("<u2"), torch.bfloat16),  # numpy has no bf16: move the raw 16-bit words
    pb.INT8: (np.dtype("i1"), torch.int8),
    pb.UINT8: (np.dtype("u1"), torch.uint8),
    pb.INT32: (np.dtype("<i4"), torch.int32),
    pb.INT64: (np.dtype("<i8"), torch.int64),
    pb.BOOL: (np.dtype("?"), torch.bool),
}
_TORCH_TO_ENUM = {torch_dtype: enum for enum, (_, torch_dtype) in _DTYPES.items()}
MAX_RANK = 8


class WireError(ValueError):
    """A tensor message that cannot be decoded; `field` names the offending field."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


def codec_bits_per_element(codec: str, row_length: int = 0) -> float:
    """Bits on the wire per activation element, scales included when `row_length` (the last
    dimension) is given."""
    if codec == "int8":  # + a float32 scale per token (the per-channel factors are per message: ignored)
        return 8.0 + (32.0 / row_length if row_length else 0.0)
    if codec == "int4":
        if not row_length:
            return 4.0
        groups = -(-row_length // INT4_GROUP_SIZE)
        return (groups * INT4_GROUP_SIZE * 4 + groups * 16) / row_length
    return {"fp32": 32.0, "fp16": 16.0, "bf16": 16.0}[codec]


def _raw_bytes(tensor: torch.Tensor) -> bytes:
    tensor = tensor.detach().contiguous().cpu()
    if tensor.dtype == torch.bfloat16:
        tensor = tensor.view(torch.int16)
    return tensor.numpy().tobytes()  # numpy arrays from torch are native = little-endian on our targets


def encode(tensor: torch.Tensor, codec: str = "fp32") -> pb.Tensor:
    """`tensor` as a wire message. Non-float tensors (token ids, masks) are always sent RAW."""
    return pb.Tensor(**_fields(tensor, codec))


def encode_into(target: pb.Tensor, tensor: torch.Tensor, codec: str = "fp32") -> None:
    """`encode` straight into a request's Tensor field: `Request(field=encode(...))` would copy the
    bytes once more (about 0.3 ms for MiniLM's 1.5 MB of hidden states)."""
    fields = _fields(tensor, codec)
    target.Clear()
    target.shape.extend(fields.pop("shape"))
    for name, value in fields.items():
        setattr(target, name, value)


def _fields(tensor: torch.Tensor, codec: str) -> dict:
    if tensor.dtype not in _TORCH_TO_ENUM:
        raise TypeError(f"cannot send dtype {tensor.dtype}")
    logical = _TORCH_TO_ENUM[tensor.dtype]
    shape = list(tensor.shape)
    if codec not in CODECS:
        raise ValueError(f"unknown codec {codec!r}; choose one of {', '.join(CODECS)}")
    # fp32 means no lossy codec: the values as they are. An empty tensor has nothing to compress.
    if not tensor.is_floating_point() or codec == "fp32" or tensor.numel() == 0:
        return dict(dtype=logical, shape=shape, data=_raw_bytes(tensor), codec=pb.RAW, logical_dtype=logical)
    if codec == "fp16":
        return dict(dtype=pb.FLOAT16, shape=shape, data=_raw_bytes(tensor.half()), codec=pb.FP16,
                    logical_dtype=logical)
    if codec == "bf16":
        return dict(dtype=pb.BFLOAT16, shape=shape, data=_raw_bytes(tensor.bfloat16()), codec=pb.BF16,
                    logical_dtype=logical)
    if codec == "int8":
        values = tensor.float()
        channels = values.reshape(-1, shape[-1]).abs().amax(0).clamp(min=1e-6).sqrt().half()
        smoothed = values / channels.float()  # the receiver multiplies by the same float16 factors
        scales = smoothed.abs().amax(dim=-1, keepdim=True).clamp(min=1e-12) / 127.0
        quantised = torch.round(smoothed / scales).clamp_(-127, 127).to(torch.int8)
        return dict(dtype=pb.INT8, shape=shape, data=_raw_bytes(quantised), codec=pb.INT8_PER_TOKEN,
                    logical_dtype=logical, scales=_raw_bytes(scales.reshape(-1)),
                    channel_scales=_raw_bytes(channels))
    return _int4_fields(tensor, logical, shape)


def _int4_groups(shape: list[int], group_size: int) -> tuple[int, int]:
    """(rows, groups per row) of an int4 tensor: rows of the last dimension, padded to whole groups."""
    row = shape[-1]
    rows = math.prod(shape[:-1]) if len(shape) > 1 else 1
    return rows, -(-row // group_size) if row else 0


def _int4_fields(tensor: torch.Tensor, logical: int, shape: list[int]) -> dict:
    rows, groups = _int4_groups(shape, INT4_GROUP_SIZE)
    values = tensor.float().reshape(rows, shape[-1])
    padded = torch.nn.functional.pad(values, (0, groups * INT4_GROUP_SIZE - shape[-1])).reshape(rows, groups, INT4_GROUP_SIZE)
    scales = (padded.abs().amax(-1, keepdim=True) / 7.0).clamp(min=1e-8).half()
    codes = (torch.round(padded / scales.float()).clamp_(-7, 7) + 8).to(torch.uint8).reshape(-1)
    packed = codes[0::2] | (codes[1::2] << 4)  # even elements in the low nibble
    return dict(dtype=pb.UINT8, shape=shape, data=_raw_bytes(packed), codec=pb.INT4_GROUP, logical_dtype=logical,
                scales=_raw_bytes(scales.reshape(-1)), group_size=INT4_GROUP_SIZE)


def _decode_int4(msg: pb.Tensor, shape: list[int], target: torch.dtype, field: str) -> torch.Tensor:
    if msg.group_size == 0 or msg.group_size % 2 or msg.group_size > 4096:
        raise WireError(f"{field}.group_size", "must be an even number in 2..4096")
    rows, groups = _int4_groups(shape, msg.group_size)
    padded = rows * groups * msg.group_size
    # Checked before anything is allocated: groups wider than the rows would expand a small message
    # into a huge tensor (a [1, N, 1] tensor with 4096-wide groups is 4096 x its size). An honest
    # encoder's padding at most doubles the values.
    if padded > 2 * math.prod(shape) + msg.group_size:
        raise WireError(f"{field}.group_size", f"{msg.group_size} pads {shape} to {padded} values; "
                        "groups must not be much wider than the last dimension")
    packed = _array(msg.data, pb.UINT8, padded // 2, field)
    scales = _array(msg.scales, pb.FLOAT16, rows * groups, f"{field}.scales").float()
    if not torch.isfinite(scales).all() or (scales < 0).any():
        raise WireError(f"{field}.scales", "scales must be finite and non-negative")
    codes = torch.stack([packed & 0x0F, packed >> 4], dim=-1).reshape(rows, groups, msg.group_size)
    values = (codes.float() - 8.0) * scales.reshape(rows, groups, 1)
    return values.reshape(rows, -1)[:, : shape[-1]].reshape(shape).to(target)


def _array(data: bytes, dtype_enum: int, count: int, field: str) -> torch.Tensor:
    np_dtype, torch_dtype = _DTYPES[dtype_enum]
    if len(data) != count * np_dtype.itemsize:
        raise WireError(f"{field}.data", f"has {len(data)} bytes, shape and dtype need {count * np_dtype.itemsize}")
    if dtype_enum == pb.BOOL and count and np.frombuffer(data, dtype=np.uint8).max() > 1:
        # numpy and torch read any non-zero byte as True: 0x02 or 0xff would pass for 1 unseen
        raise WireError(f"{field}.data", "bool bytes must be 0 or 1")
    # Copy out of the (immutable) protobuf bytes so the tensor owns writable memory.
    array = np.frombuffer(data, dtype=np_dtype, count=count).copy()
    tensor = torch.from_numpy(array)
    return tensor.view(torch.bfloat16) if torch_dtype == torch.bfloat16 else tensor


def decode(msg: pb.Tensor, field: str = "tensor", max_elements: int | None = None) -> torch.Tensor:
    """The logical tensor a wire message carries; WireError names what is wrong."""
    if msg.dtype not in _DTYPES:
        raise WireError(f"{field}.dtype", f"unknown or unset dtype {msg.dtype}")
    rank = len(msg.shape)  # before list(): a shape of millions of entries must cost nothing
    if not 1 <= rank <= MAX_RANK:
        raise WireError(f"{field}.shape", f"rank must be 1..{MAX_RANK}, got {rank}")
    shape = list(msg.shape)
    if any(d < 0 for d in shape):
        raise WireError(f"{field}.shape", f"negative dimension in {shape}")
    count = math.prod(shape)
    if max_elements is not None and count > max_elements:
        raise WireError(f"{field}.shape", f"{shape} has {count} elements, limit is {max_elements}")
    codec = msg.codec or pb.RAW
    logical = msg.logical_dtype or msg.dtype
    if logical not in _DTYPES:
        raise WireError(f"{field}.logical_dtype", f"unknown dtype {logical}")
    if codec == pb.RAW:
        if logical != msg.dtype:
            raise WireError(f"{field}.logical_dtype", "must equal dtype for the RAW codec")
        return _array(msg.data, msg.dtype, count, field).reshape(shape)
    expected = {pb.FP16: pb.FLOAT16, pb.BF16: pb.BFLOAT16, pb.INT8_PER_TOKEN: pb.INT8,
                pb.INT4_GROUP: pb.UINT8}.get(codec)
    if expected is None:
        raise WireError(f"{field}.codec", f"codec {codec} is not supported by this server")
    if msg.dtype != expected:
        raise WireError(f"{field}.dtype", f"codec {pb.Codec.Name(codec)} needs dtype {pb.DType.Name(expected)}")
    target = _DTYPES[logical][1]
    if not target.is_floating_point:
        raise WireError(f"{field}.logical_dtype", "a float codec must decode to a float dtype")
    if codec == pb.INT4_GROUP:
        return _decode_int4(msg, shape, target, field)
    values = _array(msg.data, msg.dtype, count, field).reshape(shape)
    if codec != pb.INT8_PER_TOKEN:
        return values.to(target)
    rows = count // shape[-1] if shape[-1] else 0
    scales = _array(msg.scales, pb.FLOAT32, rows, f"{field}.scales").reshape(*shape[:-1], 1)
    if not torch.isfinite(scales).all() or (scales < 0).any():
        raise WireError(f"{field}.scales", "scales must be finite and non-negative")
    decoded = values.float() * scales
    if msg.channel_scales:
        channels = _array(msg.channel_scales, pb.FLOAT16, shape[-1], f"{field}.channel_scales").float()
        if not torch.isfinite(channels).all() or (channels <= 0).any():
            raise WireError(f"{field}.channel_scales", "channel scales must be finite and positive")
        decoded = decoded * channels
    return decoded.to(target)
