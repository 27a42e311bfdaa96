"""Tensors on the wire: torch tensor <-> coinfer.v1.Tensor, with an activation codec.

Data is raw little-endian bytes in C order. Codecs trade bytes for precision on the activations:

* ``fp32`` (RAW) — exact: the tensor's own dtype and values;
* ``fp16`` / ``bf16`` — half the bytes;
* ``int8`` — per-token absmax: each row of the last dimension is scaled to [-127, 127] with one float32
  scale, a quarter of the bytes plus 4 bytes per token.

Decoding checks everything it is given (dtype, shape, byte length, scales) and raises
`WireError(field, message)`, which the server turns into INVALID_ARGUMENT naming the field.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from coinfer.protos import coinfer_pb2 as pb

CODECS = ("fp32", "fp16", "bf16", "int8")
CODEC_ENUM = {"fp32": pb.RAW, "fp16": pb.FP16, "bf16": pb.BF16, "int8": pb.INT8_PER_TOKEN}
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


def codec_bits_per_element(codec: str) -> float:
    """Bits on the wire per activation element, scales excluded."""
    return {"fp32": 32.0, "fp16": 16.0, "bf16": 16.0, "int8": 8.0}[codec]


def _raw_bytes(tensor: torch.Tensor) -> bytes:
    tensor = tensor.detach().contiguous().cpu()
    if tensor.dtype == torch.bfloat16:
        tensor = tensor.view(torch.int16)
    return tensor.numpy().tobytes()  # numpy arrays from torch are native = little-endian on our targets


def encode(tensor: torch.Tensor, codec: str = "fp32") -> pb.Tensor:
    """`tensor` as a wire message. Non-float tensors (token ids, masks) are always sent RAW."""
    if tensor.dtype not in _TORCH_TO_ENUM:
        raise TypeError(f"cannot send dtype {tensor.dtype}")
    logical = _TORCH_TO_ENUM[tensor.dtype]
    shape = list(tensor.shape)
    if not tensor.is_floating_point() or codec == "fp32":  # fp32 = no lossy codec: the values as they are
        return pb.Tensor(dtype=logical, shape=shape, data=_raw_bytes(tensor), codec=pb.RAW,
                         logical_dtype=logical)
    if codec == "fp16":
        return pb.Tensor(dtype=pb.FLOAT16, shape=shape, data=_raw_bytes(tensor.half()), codec=pb.FP16,
                         logical_dtype=logical)
    if codec == "bf16":
        return pb.Tensor(dtype=pb.BFLOAT16, shape=shape, data=_raw_bytes(tensor.bfloat16()), codec=pb.BF16,
                         logical_dtype=logical)
    if codec == "int8":
        values = tensor.float()
        scales = values.abs().amax(dim=-1, keepdim=True).clamp(min=1e-12) / 127.0
        quantised = torch.round(values / scales).clamp_(-127, 127).to(torch.int8)
        return pb.Tensor(dtype=pb.INT8, shape=shape, data=_raw_bytes(quantised), codec=pb.INT8_PER_TOKEN,
                         logical_dtype=logical, scales=_raw_bytes(scales.reshape(-1)))
    raise ValueError(f"unknown codec {codec!r}; choose one of {', '.join(CODECS)}")


def _array(data: bytes, dtype_enum: int, count: int, field: str) -> torch.Tensor:
    np_dtype, torch_dtype = _DTYPES[dtype_enum]
    if len(data) != count * np_dtype.itemsize:
        raise WireError(f"{field}.data", f"has {len(data)} bytes, shape and dtype need {count * np_dtype.itemsize}")
    # Copy out of the (immutable) protobuf bytes so the tensor owns writable memory.
    array = np.frombuffer(data, dtype=np_dtype, count=count).copy()
    tensor = torch.from_numpy(array)
    return tensor.view(torch.bfloat16) if torch_dtype == torch.bfloat16 else tensor


def decode(msg: pb.Tensor, field: str = "tensor", max_elements: int | None = None) -> torch.Tensor:
    """The logical tensor a wire message carries; WireError names what is wrong."""
    if msg.dtype not in _DTYPES:
        raise WireError(f"{field}.dtype", f"unknown or unset dtype {msg.dtype}")
    shape = list(msg.shape)
    if not shape or len(shape) > MAX_RANK:
        raise WireError(f"{field}.shape", f"rank must be 1..{MAX_RANK}, got {len(shape)}")
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
    expected = {pb.FP16: pb.FLOAT16, pb.BF16: pb.BFLOAT16, pb.INT8_PER_TOKEN: pb.INT8}.get(codec)
    if expected is None:
        raise WireError(f"{field}.codec", f"codec {codec} is not supported by this server")
    if msg.dtype != expected:
        raise WireError(f"{field}.dtype", f"codec {pb.Codec.Name(codec)} needs dtype {pb.DType.Name(expected)}")
    target = _DTYPES[logical][1]
    if not target.is_floating_point:
        raise WireError(f"{field}.logical_dtype", "a float codec must decode to a float dtype")
    values = _array(msg.data, msg.dtype, count, field).reshape(shape)
    if codec != pb.INT8_PER_TOKEN:
        return values.to(target)
    rows = count // shape[-1] if shape[-1] else 0
    scales = _array(msg.scales, pb.FLOAT32, rows, f"{field}.scales").reshape(*shape[:-1], 1)
    if not torch.isfinite(scales).all() or (scales < 0).any():
        raise WireError(f"{field}.scales", "scales must be finite and non-negative")
    return (values.float() * scales).to(target)
