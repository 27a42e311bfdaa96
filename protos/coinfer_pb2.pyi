from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DTYPE_UNSPECIFIED: _ClassVar[DType]
    FLOAT32: _ClassVar[DType]
    FLOAT16: _ClassVar[DType]
    BFLOAT16: _ClassVar[DType]
    INT8: _ClassVar[DType]
    UINT8: _ClassVar[DType]
    INT32: _ClassVar[DType]
    INT64: _ClassVar[DType]
    BOOL: _ClassVar[DType]

class Codec(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CODEC_UNSPECIFIED: _ClassVar[Codec]
    RAW: _ClassVar[Codec]
    FP16: _ClassVar[Codec]
    BF16: _ClassVar[Codec]
    INT8_PER_TOKEN: _ClassVar[Codec]
    INT4_GROUP: _ClassVar[Codec]
DTYPE_UNSPECIFIED: DType
FLOAT32: DType
FLOAT16: DType
BFLOAT16: DType
INT8: DType
UINT8: DType
INT32: DType
INT64: DType
BOOL: DType
CODEC_UNSPECIFIED: Codec
RAW: Codec
FP16: Codec
BF16: Codec
INT8_PER_TOKEN: Codec
INT4_GROUP: Codec

class Tensor(_message.Message):
    __slots__ = ("dtype", "shape", "data", "codec", "logical_dtype", "scales", "group_size", "channel_scales")
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    CODEC_FIELD_NUMBER: _ClassVar[int]
    LOGICAL_DTYPE_FIELD_NUMBER: _ClassVar[int]
    SCALES_FIELD_NUMBER: _ClassVar[int]
    GROUP_SIZE_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_SCALES_FIELD_NUMBER: _ClassVar[int]
    dtype: DType
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    codec: Codec
    logical_dtype: DType
    scales: bytes
    group_size: int
    channel_scales: bytes
    def __init__(self, dtype: _Optional[_Union[DType, str]] = ..., shape: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ..., codec: _Optional[_Union[Codec, str]] = ..., logical_dtype: _Optional[_Union[DType, str]] = ..., scales: _Optional[bytes] = ..., group_size: _Optional[int] = ..., channel_scales: _Optional[bytes] = ...) -> None: ...

class GenerateOptions(_message.Message):
    __slots__ = ("max_new_tokens", "num_beams", "min_new_tokens")
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    NUM_BEAMS_FIELD_NUMBER: _ClassVar[int]
    MIN_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    max_new_tokens: int
    num_beams: int
    min_new_tokens: int
    def __init__(self, max_new_tokens: _Optional[int] = ..., num_beams: _Optional[int] = ..., min_new_tokens: _Optional[int] = ...) -> None: ...

class InferRequest(_message.Message):
    __slots__ = ("request_id", "plan_epoch", "split_point", "model_id", "hidden_states", "input_ids", "attention_mask", "generate", "model_fingerprint")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PLAN_EPOCH_FIELD_NUMBER: _ClassVar[int]
    SPLIT_POINT_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    HIDDEN_STATES_FIELD_NUMBER: _ClassVar[int]
    INPUT_IDS_FIELD_NUMBER: _ClassVar[int]
    ATTENTION_MASK_FIELD_NUMBER: _ClassVar[int]
    GENERATE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    plan_epoch: int
    split_point: int
    model_id: str
    hidden_states: Tensor
    input_ids: Tensor
    attention_mask: Tensor
    generate: GenerateOptions
    model_fingerprint: str
    def __init__(self, request_id: _Optional[str] = ..., plan_epoch: _Optional[int] = ..., split_point: _Optional[int] = ..., model_id: _Optional[str] = ..., hidden_states: _Optional[_Union[Tensor, _Mapping]] = ..., input_ids: _Optional[_Union[Tensor, _Mapping]] = ..., attention_mask: _Optional[_Union[Tensor, _Mapping]] = ..., generate: _Optional[_Union[GenerateOptions, _Mapping]] = ..., model_fingerprint: _Optional[str] = ...) -> None: ...

class ServerTiming(_message.Message):
    __slots__ = ("queue_s", "compute_s", "decode_s", "batch_size", "batch_rows", "energy_j", "energy_source", "freq_hz")
    QUEUE_S_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_S_FIELD_NUMBER: _ClassVar[int]
    DECODE_S_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    BATCH_ROWS_FIELD_NUMBER: _ClassVar[int]
    ENERGY_J_FIELD_NUMBER: _ClassVar[int]
    ENERGY_SOURCE_FIELD_NUMBER: _ClassVar[int]
    FREQ_HZ_FIELD_NUMBER: _ClassVar[int]
    queue_s: float
    compute_s: float
    decode_s: float
    batch_size: int
    batch_rows: int
    energy_j: float
    energy_source: str
    freq_hz: float
    def __init__(self, queue_s: _Optional[float] = ..., compute_s: _Optional[float] = ..., decode_s: _Optional[float] = ..., batch_size: _Optional[int] = ..., batch_rows: _Optional[int] = ..., energy_j: _Optional[float] = ..., energy_source: _Optional[str] = ..., freq_hz: _Optional[float] = ...) -> None: ...

class Error(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class InferReply(_message.Message):
    __slots__ = ("request_id", "plan_epoch", "output", "timing", "error")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PLAN_EPOCH_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    TIMING_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    plan_epoch: int
    output: Tensor
    timing: ServerTiming
    error: Error
    def __init__(self, request_id: _Optional[str] = ..., plan_epoch: _Optional[int] = ..., output: _Optional[_Union[Tensor, _Mapping]] = ..., timing: _Optional[_Union[ServerTiming, _Mapping]] = ..., error: _Optional[_Union[Error, _Mapping]] = ...) -> None: ...

class InfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ServerInfo(_message.Message):
    __slots__ = ("model_id", "family", "num_blocks", "split_point", "plan_epoch", "rho", "prune_method", "device", "max_message_bytes", "output_kind", "freq_cap_hz", "freq_mode", "energy_source", "requests_computed", "replies_from_cache", "model_fingerprint")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    FAMILY_FIELD_NUMBER: _ClassVar[int]
    NUM_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    SPLIT_POINT_FIELD_NUMBER: _ClassVar[int]
    PLAN_EPOCH_FIELD_NUMBER: _ClassVar[int]
    RHO_FIELD_NUMBER: _ClassVar[int]
    PRUNE_METHOD_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_KIND_FIELD_NUMBER: _ClassVar[int]
    FREQ_CAP_HZ_FIELD_NUMBER: _ClassVar[int]
    FREQ_MODE_FIELD_NUMBER: _ClassVar[int]
    ENERGY_SOURCE_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_COMPUTED_FIELD_NUMBER: _ClassVar[int]
    REPLIES_FROM_CACHE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    family: str
    num_blocks: int
    split_point: int
    plan_epoch: int
    rho: float
    prune_method: str
    device: str
    max_message_bytes: int
    output_kind: str
    freq_cap_hz: float
    freq_mode: str
    energy_source: str
    requests_computed: int
    replies_from_cache: int
    model_fingerprint: str
    def __init__(self, model_id: _Optional[str] = ..., family: _Optional[str] = ..., num_blocks: _Optional[int] = ..., split_point: _Optional[int] = ..., plan_epoch: _Optional[int] = ..., rho: _Optional[float] = ..., prune_method: _Optional[str] = ..., device: _Optional[str] = ..., max_message_bytes: _Optional[int] = ..., output_kind: _Optional[str] = ..., freq_cap_hz: _Optional[float] = ..., freq_mode: _Optional[str] = ..., energy_source: _Optional[str] = ..., requests_computed: _Optional[int] = ..., replies_from_cache: _Optional[int] = ..., model_fingerprint: _Optional[str] = ...) -> None: ...
