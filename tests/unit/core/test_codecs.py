"""Tensors on the wire: exact where they must be, bounded error where a codec trades bits."""
import pytest
import torch

from coinfer.codecs import CODECS, WireError, decode, encode, encode_into
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


@pytest.mark.parametrize("codec,bits,tolerance", [("fp16", 16, 1e-3), ("bf16", 16, 1e-2), ("int8", 8, 2e-2),
                                                  ("int4", 4, 1 / 14 + 1e-3)])
def test_lossy_codecs_shrink_bytes_with_bounded_error(codec, bits, tolerance):
    values = torch.randn(4, 32, 384)
    message = encode(values, codec)
    assert len(message.data) == values.numel() * bits // 8
    back = decode(message)
    assert back.dtype == torch.float32
    relative = ((back - values).abs().amax(-1) / values.abs().amax(-1)).max().item()
    assert relative <= tolerance


def test_int8_scales_are_per_token():
    """A loud token gets its own scale: the others keep a small error (a per-tensor scale would give
    them an error near their own magnitude)."""
    values = torch.randn(2, 3, 16, generator=torch.Generator().manual_seed(0))
    values[0, 0] *= 1000
    back = decode(encode(values, "int8"))
    assert ((back[1] - values[1]).abs().max() / values[1].abs().max()).item() < 0.05


def test_int8_smoothing_beats_plain_per_token_scales_on_loud_channels():
    """Activations with a few loud channels (as transformers have) keep more precision when channels
    are smoothed before the per-token scale is chosen."""
    values = torch.randn(4, 32, 384, generator=torch.Generator().manual_seed(1))
    values[..., :4] *= 40
    back = decode(encode(values, "int8"))
    plain_scales = values.abs().amax(-1, keepdim=True) / 127
    plain = torch.round(values / plain_scales) * plain_scales
    assert (back - values).pow(2).mean() < 0.5 * (plain - values).pow(2).mean()


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


@pytest.mark.parametrize("codec", ["fp32", "fp16", "bf16", "int8", "int4"])
@pytest.mark.parametrize("shape", [(1, 1, 1), (3, 7, 70), (2, 1, 65), (0, 4, 64), (5,), (2, 3, 0)])
def test_odd_and_empty_shapes_round_trip(codec, shape):
    values = torch.randn(*shape)
    back = decode(pb.Tensor.FromString(encode(values, codec).SerializeToString()))
    assert back.shape == values.shape
    if values.numel():
        assert (back - values).abs().max().item() <= values.abs().max().item() / 7 + 1e-6


def test_int4_error_is_bounded_per_group():
    """Each group's error is at most half a step of its own scale: one loud group spoils nothing else."""
    values = torch.randn(4, 256)
    values[0, :64] *= 100
    back = decode(encode(values, "int4"))
    groups_err = (back - values).abs().reshape(4, 4, 64).amax(-1)
    groups_max = values.abs().reshape(4, 4, 64).amax(-1)
    assert (groups_err <= groups_max / 14 * 1.01 + 1e-6).all()


def test_int4_packs_two_values_per_byte():
    message = encode(torch.randn(8, 128), "int4")
    assert len(message.data) == 8 * 128 // 2 and len(message.scales) == 8 * 2 * 2


@pytest.mark.parametrize("codec", ["int8", "int4"])
def test_non_finite_scales_are_refused(codec):
    message = encode(torch.randn(2, 64), codec)
    import numpy as np

    dtype = "<f4" if codec == "int8" else "<f2"
    scales = np.frombuffer(message.scales, dtype=dtype).copy()
    scales[0] = np.nan
    message.scales = scales.tobytes()
    with pytest.raises(WireError, match="scales"):
        decode(message, "x")


def test_int4_group_size_is_checked():
    message = encode(torch.randn(2, 64), "int4")
    message.group_size = 0
    with pytest.raises(WireError) as caught:
        decode(message, "x")
    assert caught.value.field == "x.group_size"


def test_unknown_codec_name_is_refused():
    with pytest.raises(ValueError, match="int4"):
        encode(torch.randn(2, 2), "zip")


@pytest.mark.parametrize("codec", CODECS)
def test_encode_into_a_request_field_equals_encode(codec):
    x = torch.randn(2, 5, 70)
    request = pb.InferRequest(hidden_states=encode(torch.ones(1, 1, 3), "int8"))  # a stale value to replace
    encode_into(request.hidden_states, x, codec)
    assert request.hidden_states == encode(x, codec)
    assert request.WhichOneof("payload") == "hidden_states"
    assert torch.equal(decode(request.hidden_states), decode(encode(x, codec)))


@pytest.mark.parametrize("byte", [b"\x02", b"\xff"])
def test_bool_bytes_other_than_0_and_1_are_refused(byte):
    """A hostile mask byte 0x02/0xff would otherwise decode as True and pass every later 0/1 check."""
    msg = encode(torch.ones(1, 4, dtype=torch.bool))
    msg.data = b"\x01" + byte + b"\x00\x01"
    with pytest.raises(WireError, match=r"attention_mask.data: .*0 or 1"):
        decode(msg, "attention_mask")
    msg.data = b"\x01\x01\x00\x01"
    assert decode(msg, "attention_mask").tolist() == [[True, True, False, True]]
