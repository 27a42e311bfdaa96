"""What the planner will believe: physical bounds on everything a node or an operator can tell it.

Nothing on the planner's wire is authenticated by what it says (`node_id` is a label, not an identity),
so every number that reaches an estimate or a plan is checked first against what the physical world
allows, and refused with a ValueError that names the field before any of it is used (the service
answers INVALID_ARGUMENT with that message). The bounds are wide on purpose: they exist to stop values
no honest node can send (inf, NaN, negative times, an hour-long forward, a terabyte-per-request
activation, an epoch within reach of 2^64), never to second-guess a real, slow, machine. What is
inside the bounds but unlikely (one odd sample among honest ones) is the estimators' business
(coinfer.planner.estimators: outlier gates, warm-up).

Telemetry, per sample (DeviceSample and ServerSample):

  ===================================  ============================  =======================================
  field                                accepted                      why this maximum
  ===================================  ============================  =======================================
  compute_s, send_s, server_s,         finite, in [0, 3600] s        a request still waiting after an hour
  queue_s, end_to_end_s                                              has been given up by every client
  batch, batch_size                    <= 4096                       sequences (requests) in one forward
  batch_rows                           <= 65536                      sequences computed together
  seq_len                              <= 1,000,000 tokens           beyond any transformer's positions
  bytes_sent                           <= 2^40 (1 TiB)               one request's activations
  freq_hz                              finite, in [0, 1e11] Hz       100 GHz: no processor clocks higher
  energy_j                             finite, in [0, 1e6] J         a megajoule: 280 Wh for one request
  tx_power_w                           finite, in [0, 1000] W        a radio, not a broadcast tower
  cpu_util_pct                         finite, in [0, 10000] %       100 cores' worth
  rss_bytes                            <= 2^50 (1 PiB)               resident memory of one process
  request_id, energy_source            <= 128, 32 characters         what the server accepts; rapl|nvml|model
  ===================================  ============================  =======================================

and, for a server sample, batch <= batch_rows and batch_size <= batch_rows when batch_rows is given
(this request's sequences are among those computed together).

QoS (SetQoS): max_delay_s finite in [1e-6, 3600] s, max_energy_j finite in [1e-6, 1e6] J; a refused
QoS stores nothing.

Epochs: epochs are the planner's own. A node's `known_epoch` above MAX_EPOCH = 2^53 is refused: no
planner issues one (below), and 2^53 is the largest integer every JSON reader and float64 holds
exactly. A claim from another planner (a restarted one) moves this planner past it, but at most
MAX_EPOCH_JUMP = 2^20 above its own current epoch in one resync, and resyncs are rate limited
(coinfer.planner.controller), so no claim, however often repeated, brings the epochs anywhere near
MAX_EPOCH within centuries (2^33 resyncs), let alone near 2^64: epoch arithmetic cannot overflow uint64.
A previous planner whose chain of epochs is more than 2^20 ahead of a fresh one (a million plans:
months of re-planning at one plan a second) is caught up 2^20 per resync.
"""
from __future__ import annotations

import math

from coinfer.protos import planner_pb2 as ppb

MAX_EPOCH = 2 ** 53                  # the largest known_epoch a node may claim
MAX_EPOCH_JUMP = 2 ** 20             # the most one resync moves this planner's epoch above its own
UINT64_MAX = 2 ** 64 - 1
MAX_PLANNER_ID_CHARS = 64            # a planner id is 12 hex digits

MAX_SECONDS = 3600.0
MAX_BATCH = 4096
MAX_BATCH_ROWS = 65536
MAX_SEQ_LEN = 1_000_000
MAX_BYTES_SENT = 2 ** 40
MAX_FREQ_HZ = 1e11
MAX_ENERGY_J = 1e6
MAX_TX_POWER_W = 1e3
MAX_CPU_UTIL_PCT = 1e4
MAX_RSS_BYTES = 2 ** 50
MAX_REQUEST_ID_CHARS = 128
MAX_ENERGY_SOURCE_CHARS = 32

MIN_QOS = 1e-6                       # below a microsecond / a microjoule a limit is a typo, not a QoS
MAX_DELAY_S = MAX_SECONDS
MAX_QOS_ENERGY_J = MAX_ENERGY_J

# field -> (low, high): every numeric field of both samples (test_trust checks none is missing)
_TIMES = {name: (0.0, MAX_SECONDS) for name in ("compute_s", "send_s", "server_s", "queue_s", "end_to_end_s")}
SAMPLE_BOUNDS: dict[str, tuple[float, float]] = {
    **_TIMES,
    "plan_epoch": (0, UINT64_MAX),   # an epoch this planner never issued is ignored, not refused
    "batch": (0, MAX_BATCH),
    "batch_size": (0, MAX_BATCH),
    "batch_rows": (0, MAX_BATCH_ROWS),
    "seq_len": (0, MAX_SEQ_LEN),
    "bytes_sent": (0, MAX_BYTES_SENT),
    "freq_hz": (0.0, MAX_FREQ_HZ),
    "energy_j": (0.0, MAX_ENERGY_J),
    "tx_power_w": (0.0, MAX_TX_POWER_W),
    "cpu_util_pct": (0.0, MAX_CPU_UTIL_PCT),
    "rss_bytes": (0, MAX_RSS_BYTES),
}
STRING_BOUNDS = {"request_id": MAX_REQUEST_ID_CHARS, "energy_source": MAX_ENERGY_SOURCE_CHARS}


def _fmt(x: float) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


def check_range(name: str, value, low: float, high: float) -> None:
    """ValueError naming `name` unless `value` is a finite number in [low, high]."""
    try:
        ok = math.isfinite(value) and low <= value <= high
    except TypeError:
        ok = False
    if not ok:
        raise ValueError(f"{name}: must be finite and in [{_fmt(low)}, {_fmt(high)}], got {value!r}")


def check_sample(sample: ppb.DeviceSample | ppb.ServerSample) -> None:
    """Every field of a telemetry sample within its physical bounds (module docstring), or ValueError
    naming the first one that is not."""
    for field in sample.DESCRIPTOR.fields:
        name, value = field.name, getattr(sample, field.name)
        if name in STRING_BOUNDS:
            if len(value) > STRING_BOUNDS[name]:
                raise ValueError(f"{name}: at most {STRING_BOUNDS[name]} characters, got {len(value)}")
        elif name in SAMPLE_BOUNDS:
            check_range(name, value, *SAMPLE_BOUNDS[name])
        else:  # a new field must be given bounds before the planner reads it
            raise ValueError(f"{name}: no bounds are defined for this field")
    if isinstance(sample, ppb.ServerSample) and sample.batch_rows:
        if sample.batch > sample.batch_rows:
            raise ValueError(f"batch: must be <= batch_rows ({sample.batch_rows}), got {sample.batch}")
        if sample.batch_size > sample.batch_rows:
            raise ValueError(f"batch_size: must be <= batch_rows ({sample.batch_rows}), got {sample.batch_size}")


def check_qos(max_delay_s: float, max_energy_j: float) -> None:
    check_range("qos.max_delay_s", max_delay_s, MIN_QOS, MAX_DELAY_S)
    check_range("qos.max_energy_j", max_energy_j, MIN_QOS, MAX_QOS_ENERGY_J)


def check_claim(known_epoch: int, known_planner_id: str) -> None:
    """A WatchRequest's claim about the plan a node holds, before it is believed at all."""
    if not 0 <= known_epoch <= MAX_EPOCH:
        raise ValueError(f"known_epoch: must be <= {MAX_EPOCH} (2^53; no planner issues more), got {known_epoch}")
    if len(known_planner_id) > MAX_PLANNER_ID_CHARS:
        raise ValueError(f"known_planner_id: at most {MAX_PLANNER_ID_CHARS} characters, "
                         f"got {len(known_planner_id)}")


KNOB_STRINGS = {"clock": 16, "clock_reason": 200, "tx_power": 16, "energy_source": MAX_ENERGY_SOURCE_CHARS}


def check_knobs(knobs: ppb.Knobs) -> None:
    """A node's Knobs (WatchRequest.knobs): bounded strings, frequencies and power in physical range."""
    for name, most in KNOB_STRINGS.items():
        if len(getattr(knobs, name)) > most:
            raise ValueError(f"knobs.{name}: at most {most} characters, got {len(getattr(knobs, name))}")
    check_range("knobs.min_freq_hz", knobs.min_freq_hz, 0.0, MAX_FREQ_HZ)
    check_range("knobs.max_freq_hz", knobs.max_freq_hz, 0.0, MAX_FREQ_HZ)
    check_range("knobs.max_tx_power_w", knobs.max_tx_power_w, 0.0, MAX_TX_POWER_W)
    if knobs.max_freq_hz and knobs.min_freq_hz > knobs.max_freq_hz:
        raise ValueError(f"knobs.min_freq_hz: must be <= max_freq_hz ({knobs.max_freq_hz:g}), got {knobs.min_freq_hz:g}")
