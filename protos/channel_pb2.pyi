from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ChannelMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CHANNEL_MODE_UNSPECIFIED: _ClassVar[ChannelMode]
    CHANNEL_MODE_RADIO: _ClassVar[ChannelMode]
    CHANNEL_MODE_FIXED: _ClassVar[ChannelMode]
    CHANNEL_MODE_UNLIMITED: _ClassVar[ChannelMode]
CHANNEL_MODE_UNSPECIFIED: ChannelMode
CHANNEL_MODE_RADIO: ChannelMode
CHANNEL_MODE_FIXED: ChannelMode
CHANNEL_MODE_UNLIMITED: ChannelMode

class ChannelTxPowerRequest(_message.Message):
    __slots__ = ("watts",)
    WATTS_FIELD_NUMBER: _ClassVar[int]
    watts: float
    def __init__(self, watts: _Optional[float] = ...) -> None: ...

class ChannelGainRequest(_message.Message):
    __slots__ = ("gain", "gain_db", "distance_m")
    GAIN_FIELD_NUMBER: _ClassVar[int]
    GAIN_DB_FIELD_NUMBER: _ClassVar[int]
    DISTANCE_M_FIELD_NUMBER: _ClassVar[int]
    gain: float
    gain_db: float
    distance_m: float
    def __init__(self, gain: _Optional[float] = ..., gain_db: _Optional[float] = ..., distance_m: _Optional[float] = ...) -> None: ...

class ChannelRateRequest(_message.Message):
    __slots__ = ("fixed_bps", "unlimited", "radio")
    FIXED_BPS_FIELD_NUMBER: _ClassVar[int]
    UNLIMITED_FIELD_NUMBER: _ClassVar[int]
    RADIO_FIELD_NUMBER: _ClassVar[int]
    fixed_bps: float
    unlimited: bool
    radio: bool
    def __init__(self, fixed_bps: _Optional[float] = ..., unlimited: _Optional[bool] = ..., radio: _Optional[bool] = ...) -> None: ...

class ChannelStatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ChannelStats(_message.Message):
    __slots__ = ("bytes_up", "bytes_down", "rate_bps", "gain", "tx_power_w", "mean_rate_bps", "downlink_bps", "connections_active", "connections_total", "connections_failed", "mode", "gain_source", "bandwidth_hz", "noise_psd_w_per_hz", "distance_m", "delay_s", "uptime_s")
    BYTES_UP_FIELD_NUMBER: _ClassVar[int]
    BYTES_DOWN_FIELD_NUMBER: _ClassVar[int]
    RATE_BPS_FIELD_NUMBER: _ClassVar[int]
    GAIN_FIELD_NUMBER: _ClassVar[int]
    TX_POWER_W_FIELD_NUMBER: _ClassVar[int]
    MEAN_RATE_BPS_FIELD_NUMBER: _ClassVar[int]
    DOWNLINK_BPS_FIELD_NUMBER: _ClassVar[int]
    CONNECTIONS_ACTIVE_FIELD_NUMBER: _ClassVar[int]
    CONNECTIONS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    CONNECTIONS_FAILED_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    GAIN_SOURCE_FIELD_NUMBER: _ClassVar[int]
    BANDWIDTH_HZ_FIELD_NUMBER: _ClassVar[int]
    NOISE_PSD_W_PER_HZ_FIELD_NUMBER: _ClassVar[int]
    DISTANCE_M_FIELD_NUMBER: _ClassVar[int]
    DELAY_S_FIELD_NUMBER: _ClassVar[int]
    UPTIME_S_FIELD_NUMBER: _ClassVar[int]
    bytes_up: int
    bytes_down: int
    rate_bps: float
    gain: float
    tx_power_w: float
    mean_rate_bps: float
    downlink_bps: float
    connections_active: int
    connections_total: int
    connections_failed: int
    mode: ChannelMode
    gain_source: str
    bandwidth_hz: float
    noise_psd_w_per_hz: float
    distance_m: float
    delay_s: float
    uptime_s: float
    def __init__(self, bytes_up: _Optional[int] = ..., bytes_down: _Optional[int] = ..., rate_bps: _Optional[float] = ..., gain: _Optional[float] = ..., tx_power_w: _Optional[float] = ..., mean_rate_bps: _Optional[float] = ..., downlink_bps: _Optional[float] = ..., connections_active: _Optional[int] = ..., connections_total: _Optional[int] = ..., connections_failed: _Optional[int] = ..., mode: _Optional[_Union[ChannelMode, str]] = ..., gain_source: _Optional[str] = ..., bandwidth_hz: _Optional[float] = ..., noise_psd_w_per_hz: _Optional[float] = ..., distance_m: _Optional[float] = ..., delay_s: _Optional[float] = ..., uptime_s: _Optional[float] = ...) -> None: ...
