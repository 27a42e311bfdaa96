"""Tensors on the wire: exact where they must be, bounded error where a codec trades bits."""
import pytest
import torch

from coinfer.codecs import WireError, decode, encode
from coinfer.protos import coinfer_pb2 as pb


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int32,
                                   torch.int8, torch.uint8, torch.bool])
def test_raw_round_trip_is_exact(dtype):
    values = (torch.randn(3, 4, 5) * 50).to(dtype)
    message = pb.Tensor.FromString(encode(values).SerializeToString())
    back = decode(message)
    assert back.dtype == dtype and torch.equal(back, values)


def test_bytes_are_little_endian():
    message = encode(torch.tensor([1], dtype=torch.int32))
    assert message.data == b"\x01\x00\x00\x00"


@pytest.mark.parametrize("codec,bits,tolerance", [("fp16", 16, 1e-3), ("bf16", 16, 1e-2), ("int8", 8, 2e-2)])
def test_lossy_codecs_shrink_bytes_with_bounded_error(codec, bits, tolerance):
    values = torch.randn(4, 32, 384)
    message = encode(values, codec)
    assert len(message.data) == values.numel() * bits // 8
    back = decode(message)
    assert back.dtype == torch.float32
    relative = ((back - values).abs().amax(-1) / values.abs().amax(-1)).max().item()
    assert relative <= tolerance


def test_int8_scales_are_per_token():
    values = torch.randn(2, 3, 16)
    values[0, 0] *= 1000  # one loud token must not drown the others
    back = decode(encode(values, "int8"))
    assert ((back[1] - values[1]).abs().max() / values[1].abs().max()).item() < 1e-2


def bad(**changes):
    message = encode(torch.randn(2, 3))
    for key, value in changes.items():
        if key == "shape":
            del message.shape[:]
            message.shape.extend(value)
        else:
            setattr(message, key, value)
    return message


@pytest.mark.parametrize("message,field", [
    (bad(dtype=0), "x.dtype"),
    (bad(dtype=42), "x.dtype"),
    (bad(shape=[]), "x.shape"),
    (bad(shape=[2, -3]), "x.shape"),
    (bad(shape=[2, 4]), "x.data"),
    (bad(codec=pb.INT8_PER_TOKEN), "x.dtype"),
    (bad(codec=77), "x.codec"),
    (bad(logical_dtype=pb.INT64), "x.logical_dtype"),
])
def test_malformed_tensors_name_the_field(message, field):
    with pytest.raises(WireError) as caught:
        decode(message, "x")
    assert caught.value.field == field


def test_int8_needs_one_scale_per_token():
    message = encode(torch.randn(2, 3, 8), "int8")
    message.scales = message.scales[:-4]
    with pytest.raises(WireError, match="scales"):
        decode(message, "x")


def test_element_limit_is_enforced_before_allocating():
    message = pb.Tensor(dtype=pb.FLOAT32, shape=[10**6, 10**6], data=b"")
    with pytest.raises(WireError, match="limit"):
        decode(message, "x", max_elements=10**7)
