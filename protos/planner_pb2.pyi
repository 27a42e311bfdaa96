from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Plan(_message.Message):
    __slots__ = ("epoch", "reason", "created_unix_s", "model_id", "split_point", "rho_device", "rho_server", "prune_method", "f_device_hz", "f_server_hz", "tx_power_w", "codec", "feasible", "detail", "predicted_delay_s", "predicted_energy_j", "distortion", "delay_limit_s", "energy_limit_j", "device_max_freq_hz", "server_max_freq_hz", "planner_id", "predicted_quality", "quality_metric", "min_quality", "device_knobs", "server_knobs", "binding")
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    CREATED_UNIX_S_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    SPLIT_POINT_FIELD_NUMBER: _ClassVar[int]
    RHO_DEVICE_FIELD_NUMBER: _ClassVar[int]
    RHO_SERVER_FIELD_NUMBER: _ClassVar[int]
    PRUNE_METHOD_FIELD_NUMBER: _ClassVar[int]
    F_DEVICE_HZ_FIELD_NUMBER: _ClassVar[int]
    F_SERVER_HZ_FIELD_NUMBER: _ClassVar[int]
    TX_POWER_W_FIELD_NUMBER: _ClassVar[int]
    CODEC_FIELD_NUMBER: _ClassVar[int]
    FEASIBLE_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_DELAY_S_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_ENERGY_J_FIELD_NUMBER: _ClassVar[int]
    DISTORTION_FIELD_NUMBER: _ClassVar[int]
    DELAY_LIMIT_S_FIELD_NUMBER: _ClassVar[int]
    ENERGY_LIMIT_J_FIELD_NUMBER: _ClassVar[int]
    DEVICE_MAX_FREQ_HZ_FIELD_NUMBER: _ClassVar[int]
    SERVER_MAX_FREQ_HZ_FIELD_NUMBER: _ClassVar[int]
    PLANNER_ID_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_QUALITY_FIELD_NUMBER: _ClassVar[int]
    QUALITY_METRIC_FIELD_NUMBER: _ClassVar[int]
    MIN_QUALITY_FIELD_NUMBER: _ClassVar[int]
    DEVICE_KNOBS_FIELD_NUMBER: _ClassVar[int]
    SERVER_KNOBS_FIELD_NUMBER: _ClassVar[int]
    BINDING_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    reason: str
    created_unix_s: float
    model_id: str
    split_point: int
    rho_device: float
    rho_server: float
    prune_method: str
    f_device_hz: float
    f_server_hz: float
    tx_power_w: float
    codec: str
    feasible: bool
    detail: str
    predicted_delay_s: float
    predicted_energy_j: float
    distortion: float
    delay_limit_s: float
    energy_limit_j: float
    device_max_freq_hz: float
    server_max_freq_hz: float
    planner_id: str
    predicted_quality: float
    quality_metric: str
    min_quality: float
    device_knobs: Knobs
    server_knobs: Knobs
    binding: str
    def __init__(self, epoch: _Optional[int] = ..., reason: _Optional[str] = ..., created_unix_s: _Optional[float] = ..., model_id: _Optional[str] = ..., split_point: _Optional[int] = ..., rho_device: _Optional[float] = ..., rho_server: _Optional[float] = ..., prune_method: _Optional[str] = ..., f_device_hz: _Optional[float] = ..., f_server_hz: _Optional[float] = ..., tx_power_w: _Optional[float] = ..., codec: _Optional[str] = ..., feasible: _Optional[bool] = ..., detail: _Optional[str] = ..., predicted_delay_s: _Optional[float] = ..., predicted_energy_j: _Optional[float] = ..., distortion: _Optional[float] = ..., delay_limit_s: _Optional[float] = ..., energy_limit_j: _Optional[float] = ..., device_max_freq_hz: _Optional[float] = ..., server_max_freq_hz: _Optional[float] = ..., planner_id: _Optional[str] = ..., predicted_quality: _Optional[float] = ..., quality_metric: _Optional[str] = ..., min_quality: _Optional[float] = ..., device_knobs: _Optional[_Union[Knobs, _Mapping]] = ..., server_knobs: _Optional[_Union[Knobs, _Mapping]] = ..., binding: _Optional[str] = ...) -> None: ...

class DeviceSample(_message.Message):
    __slots__ = ("request_id", "plan_epoch", "batch", "seq_len", "compute_s", "bytes_sent", "send_s", "freq_hz", "energy_j", "energy_source", "end_to_end_s", "tx_power_w", "cpu_util_pct", "rss_bytes", "server_s")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PLAN_EPOCH_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    SEQ_LEN_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_S_FIELD_NUMBER: _ClassVar[int]
    BYTES_SENT_FIELD_NUMBER: _ClassVar[int]
    SEND_S_FIELD_NUMBER: _ClassVar[int]
    FREQ_HZ_FIELD_NUMBER: _ClassVar[int]
    ENERGY_J_FIELD_NUMBER: _ClassVar[int]
    ENERGY_SOURCE_FIELD_NUMBER: _ClassVar[int]
    END_TO_END_S_FIELD_NUMBER: _ClassVar[int]
    TX_POWER_W_FIELD_NUMBER: _ClassVar[int]
    CPU_UTIL_PCT_FIELD_NUMBER: _ClassVar[int]
    RSS_BYTES_FIELD_NUMBER: _ClassVar[int]
    SERVER_S_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    plan_epoch: int
    batch: int
    seq_len: int
    compute_s: float
    bytes_sent: int
    send_s: float
    freq_hz: float
    energy_j: float
    energy_source: str
    end_to_end_s: float
    tx_power_w: float
    cpu_util_pct: float
    rss_bytes: int
    server_s: float
    def __init__(self, request_id: _Optional[str] = ..., plan_epoch: _Optional[int] = ..., batch: _Optional[int] = ..., seq_len: _Optional[int] = ..., compute_s: _Optional[float] = ..., bytes_sent: _Optional[int] = ..., send_s: _Optional[float] = ..., freq_hz: _Optional[float] = ..., energy_j: _Optional[float] = ..., energy_source: _Optional[str] = ..., end_to_end_s: _Optional[float] = ..., tx_power_w: _Optional[float] = ..., cpu_util_pct: _Optional[float] = ..., rss_bytes: _Optional[int] = ..., server_s: _Optional[float] = ...) -> None: ...

class ServerSample(_message.Message):
    __slots__ = ("request_id", "plan_epoch", "batch", "seq_len", "queue_s", "compute_s", "batch_size", "batch_rows", "freq_hz", "energy_j", "energy_source", "cpu_util_pct", "rss_bytes")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PLAN_EPOCH_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    SEQ_LEN_FIELD_NUMBER: _ClassVar[int]
    QUEUE_S_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_S_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    BATCH_ROWS_FIELD_NUMBER: _ClassVar[int]
    FREQ_HZ_FIELD_NUMBER: _ClassVar[int]
    ENERGY_J_FIELD_NUMBER: _ClassVar[int]
    ENERGY_SOURCE_FIELD_NUMBER: _ClassVar[int]
    CPU_UTIL_PCT_FIELD_NUMBER: _ClassVar[int]
    RSS_BYTES_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    plan_epoch: int
    batch: int
    seq_len: int
    queue_s: float
    compute_s: float
    batch_size: int
    batch_rows: int
    freq_hz: float
    energy_j: float
    energy_source: str
    cpu_util_pct: float
    rss_bytes: int
    def __init__(self, request_id: _Optional[str] = ..., plan_epoch: _Optional[int] = ..., batch: _Optional[int] = ..., seq_len: _Optional[int] = ..., queue_s: _Optional[float] = ..., compute_s: _Optional[float] = ..., batch_size: _Optional[int] = ..., batch_rows: _Optional[int] = ..., freq_hz: _Optional[float] = ..., energy_j: _Optional[float] = ..., energy_source: _Optional[str] = ..., cpu_util_pct: _Optional[float] = ..., rss_bytes: _Optional[int] = ...) -> None: ...

class Telemetry(_message.Message):
    __slots__ = ("node_id", "device", "server")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    SERVER_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    device: DeviceSample
    server: ServerSample
    def __init__(self, node_id: _Optional[str] = ..., device: _Optional[_Union[DeviceSample, _Mapping]] = ..., server: _Optional[_Union[ServerSample, _Mapping]] = ...) -> None: ...

class TelemetryAck(_message.Message):
    __slots__ = ("received",)
    RECEIVED_FIELD_NUMBER: _ClassVar[int]
    received: int
    def __init__(self, received: _Optional[int] = ...) -> None: ...

class WatchRequest(_message.Message):
    __slots__ = ("node_id", "role", "known_epoch", "known_planner_id", "knobs")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    KNOWN_EPOCH_FIELD_NUMBER: _ClassVar[int]
    KNOWN_PLANNER_ID_FIELD_NUMBER: _ClassVar[int]
    KNOBS_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    role: str
    known_epoch: int
    known_planner_id: str
    knobs: Knobs
    def __init__(self, node_id: _Optional[str] = ..., role: _Optional[str] = ..., known_epoch: _Optional[int] = ..., known_planner_id: _Optional[str] = ..., knobs: _Optional[_Union[Knobs, _Mapping]] = ...) -> None: ...

class Knobs(_message.Message):
    __slots__ = ("clock", "clock_reason", "min_freq_hz", "max_freq_hz", "tx_power", "max_tx_power_w", "energy_source")
    CLOCK_FIELD_NUMBER: _ClassVar[int]
    CLOCK_REASON_FIELD_NUMBER: _ClassVar[int]
    MIN_FREQ_HZ_FIELD_NUMBER: _ClassVar[int]
    MAX_FREQ_HZ_FIELD_NUMBER: _ClassVar[int]
    TX_POWER_FIELD_NUMBER: _ClassVar[int]
    MAX_TX_POWER_W_FIELD_NUMBER: _ClassVar[int]
    ENERGY_SOURCE_FIELD_NUMBER: _ClassVar[int]
    clock: str
    clock_reason: str
    min_freq_hz: float
    max_freq_hz: float
    tx_power: str
    max_tx_power_w: float
    energy_source: str
    def __init__(self, clock: _Optional[str] = ..., clock_reason: _Optional[str] = ..., min_freq_hz: _Optional[float] = ..., max_freq_hz: _Optional[float] = ..., tx_power: _Optional[str] = ..., max_tx_power_w: _Optional[float] = ..., energy_source: _Optional[str] = ...) -> None: ...

class QoS(_message.Message):
    __slots__ = ("max_delay_s", "max_energy_j")
    MAX_DELAY_S_FIELD_NUMBER: _ClassVar[int]
    MAX_ENERGY_J_FIELD_NUMBER: _ClassVar[int]
    max_delay_s: float
    max_energy_j: float
    def __init__(self, max_delay_s: _Optional[float] = ..., max_energy_j: _Optional[float] = ...) -> None: ...

class Estimates(_message.Message):
    __slots__ = ("channel_gain", "device_flops_per_cycle", "server_flops_per_cycle", "device_power_coeff", "server_power_coeff", "overhead_s", "device_samples", "server_samples", "device_fixed_s", "server_fixed_s")
    CHANNEL_GAIN_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FLOPS_PER_CYCLE_FIELD_NUMBER: _ClassVar[int]
    SERVER_FLOPS_PER_CYCLE_FIELD_NUMBER: _ClassVar[int]
    DEVICE_POWER_COEFF_FIELD_NUMBER: _ClassVar[int]
    SERVER_POWER_COEFF_FIELD_NUMBER: _ClassVar[int]
    OVERHEAD_S_FIELD_NUMBER: _ClassVar[int]
    DEVICE_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    SERVER_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIXED_S_FIELD_NUMBER: _ClassVar[int]
    SERVER_FIXED_S_FIELD_NUMBER: _ClassVar[int]
    channel_gain: float
    device_flops_per_cycle: float
    server_flops_per_cycle: float
    device_power_coeff: float
    server_power_coeff: float
    overhead_s: float
    device_samples: int
    server_samples: int
    device_fixed_s: float
    server_fixed_s: float
    def __init__(self, channel_gain: _Optional[float] = ..., device_flops_per_cycle: _Optional[float] = ..., server_flops_per_cycle: _Optional[float] = ..., device_power_coeff: _Optional[float] = ..., server_power_coeff: _Optional[float] = ..., overhead_s: _Optional[float] = ..., device_samples: _Optional[int] = ..., server_samples: _Optional[int] = ..., device_fixed_s: _Optional[float] = ..., server_fixed_s: _Optional[float] = ...) -> None: ...

class StateRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PlannerState(_message.Message):
    __slots__ = ("plan", "estimates", "planned_with", "qos", "subscribers")
    PLAN_FIELD_NUMBER: _ClassVar[int]
    ESTIMATES_FIELD_NUMBER: _ClassVar[int]
    PLANNED_WITH_FIELD_NUMBER: _ClassVar[int]
    QOS_FIELD_NUMBER: _ClassVar[int]
    SUBSCRIBERS_FIELD_NUMBER: _ClassVar[int]
    plan: Plan
    estimates: Estimates
    planned_with: Estimates
    qos: QoS
    subscribers: int
    def __init__(self, plan: _Optional[_Union[Plan, _Mapping]] = ..., estimates: _Optional[_Union[Estimates, _Mapping]] = ..., planned_with: _Optional[_Union[Estimates, _Mapping]] = ..., qos: _Optional[_Union[QoS, _Mapping]] = ..., subscribers: _Optional[int] = ...) -> None: ...

class SetQoSRequest(_message.Message):
    __slots__ = ("qos",)
    QOS_FIELD_NUMBER: _ClassVar[int]
    qos: QoS
    def __init__(self, qos: _Optional[_Union[QoS, _Mapping]] = ...) -> None: ...

class ReplanRequest(_message.Message):
    __slots__ = ("why",)
    WHY_FIELD_NUMBER: _ClassVar[int]
    why: str
    def __init__(self, why: _Optional[str] = ...) -> None: ...
