"""Measured quality end to end, at the planner's chosen points: device -> channel -> server.

For each (delay, energy) limit pair the planner chooses a split point, both ratios and the transmit
power for MiniLM (`plan_splits`, optionally at a fixed split). That plan is then run for real:

* `coinfer server` (a process) holds blocks k+1..L pruned to rho_s;
* `coinfer channel` (a process) sits in front of it and delivers the device's bytes at
  R(p) = B log2(1 + g p / (B N0)) with the plan's p and the system's B, g, N0;
* the device half runs here (`DeviceRuntime`), pruned to rho_d, and sends through the channel.

Every query and passage of the paraphrase set goes through that path. Measured: cosine to the
unpruned embeddings, retrieval accuracy, agreement with the same split computed in one process
(`SplitPipeline`), and each request's transfer time against the channel model's bytes x 8 / R(p).
The planner's own delay and energy figures are for its modelled hardware (spec section 2), not this
machine, so only the transfer time is compared with a prediction.
"""
from __future__ import annotations

import contextlib
import statistics
from dataclasses import asdict, dataclass


@dataclass
class E2EPoint:
    label: str
    max_delay_s: float
    max_energy_j: float
    split: int
    rho_device: float
    rho_server: float
    tx_power_w: float
    planned_distortion_rel: float    # the planner's D / ||W||_1
    path: str                        # device_only | device->channel->server
    requests: int
    cosine_mean: float               # to the unpruned model's embeddings
    cosine_min: float
    retrieval_acc: float
    retrieval_acc_ref: float
    max_abs_diff_vs_in_process: float   # the same plan computed in one process (SplitPipeline)
    rate_bps: float | None           # the emulator's R(p)
    transfer_ms_median: float | None
    predicted_transfer_ms_median: float | None   # bytes sent x 8 / R(p)
    transfer_over_predicted_median: float | None
    end_to_end_ms_median: float

    def to_dict(self) -> dict:
        return asdict(self)


def plan_point(profile, system, max_delay_s: float, max_energy_j: float, split="auto"):
    from coinfer.lab.paper.sweeps import with_qos
    from coinfer.planner.sweep import plan_splits

    return plan_splits(profile, with_qos(system, max_delay_s, max_energy_j), split=split)


def run_plan(label: str, plan_result, qos: tuple[float, float], profile, system, *, method: str = "magnitude",
             batch: int = 8, codec: str = "fp32", threads: int = 1) -> E2EPoint:
    """Run the planner's chosen plan (made under the (delay, energy) limits qos) through real processes."""
    import torch

    from coinfer.device.runtime import DeviceRuntime
    from coinfer.lab.launch import ServiceProcess
    from coinfer.models import resolve_model
    from coinfer.lab.paper.pairs import passages, queries
    from coinfer.lab.paper.quality import SplitPipeline, cosine_rows, retrieval_accuracy
    from coinfer.lab.paper.sweeps import total_l1
    from coinfer.radio import w_per_hz_to_dbm_per_hz

    if not plan_result.feasible:
        raise ValueError(f"{label}: the planner found no feasible plan ({plan_result.reason})")
    sol = plan_result.plan
    k, rho_d, rho_s, p = sol.split, sol.rho_device, sol.rho_server, sol.tx_power_w
    spec = "minilm"
    src = resolve_model(spec)
    qs, ps = queries(), passages()
    sentences = qs + ps

    # references in this process: unpruned, and the same plan computed without processes
    pipe = SplitPipeline(src, k, codec)
    pipe.prune(1.0, 1.0)
    reference = pipe.embed(sentences)
    pipe.prune(rho_d, rho_s, method)
    in_process = pipe.embed(sentences)

    ch = system.channel
    outputs, transfers, predicted, e2e = [], [], [], []
    rate = None
    with contextlib.ExitStack() as running:
        target = None
        if k < src.num_blocks:
            server = running.enter_context(ServiceProcess(
                ["server", "--model", spec, "--split", str(k), "--rho", repr(rho_s), "--prune-method", method,
                 "--listen", "127.0.0.1:0", "--threads", str(threads), "--emulate-frequency"], "server"))
            channel = running.enter_context(ServiceProcess(
                ["channel", "--listen", "127.0.0.1:0", "--upstream", server.address, "--control", "127.0.0.1:0",
                 "--bandwidth-hz", repr(ch.bandwidth_hz), "--gain", repr(ch.gain),
                 "--noise-psd-dbm-hz", repr(w_per_hz_to_dbm_per_hz(ch.noise_psd_w_per_hz)),
                 "--tx-power-w", repr(max(p, 1e-9))],
                "channel", expect=("listening", "control")))
            target = channel.address
            rate = _emulated_rate(channel.endpoints["control"])
        device = DeviceRuntime(src, k, rho_d, method, server=target, codec=codec, emulate_frequency=True)
        running.callback(device.close)
        device.connect()
        device.infer(sentences[:batch])          # warm-up: lazy initialisation on both sides
        for i in range(0, len(sentences), batch):
            result = device.infer(sentences[i:i + batch])
            outputs.append(result.output.float())
            e2e.append(result.end_to_end_s * 1e3)
            if target is not None:
                transfers.append(result.transfer_s * 1e3)
                predicted.append(result.bytes_sent * 8 / rate * 1e3)
    measured = torch.cat(outputs)
    n = len(qs)
    cos = cosine_rows(measured, reference)
    ratio = [t / q for t, q in zip(transfers, predicted)] if transfers else []
    return E2EPoint(
        label=label, max_delay_s=qos[0], max_energy_j=qos[1],
        split=k, rho_device=rho_d, rho_server=rho_s, tx_power_w=p,
        planned_distortion_rel=sol.distortion / total_l1(profile),
        path="device_only" if target is None else "device->channel->server",
        requests=len(outputs), cosine_mean=float(cos.mean()), cosine_min=float(cos.min()),
        retrieval_acc=retrieval_accuracy(measured[:n], measured[n:]),
        retrieval_acc_ref=retrieval_accuracy(reference[:n], reference[n:]),
        max_abs_diff_vs_in_process=float((measured - in_process).abs().max()),
        rate_bps=rate,
        transfer_ms_median=statistics.median(transfers) if transfers else None,
        predicted_transfer_ms_median=statistics.median(predicted) if predicted else None,
        transfer_over_predicted_median=statistics.median(ratio) if ratio else None,
        end_to_end_ms_median=statistics.median(e2e))


def _emulated_rate(control_address: str) -> float:
    from coinfer.channel import ChannelControlClient

    control = ChannelControlClient(control_address)
    try:
        return float(control.stats().rate_bps)
    finally:
        control.close()


def e2e_points(profile, system, points, *, method: str = "magnitude", threads: int = 1) -> list[E2EPoint]:
    """points: (label, max_delay_s, max_energy_j, split 'auto' or k). Plans each, then runs it."""
    out = []
    for label, t_max, e_max, split in points:
        res = plan_point(profile, system, t_max, e_max, split)
        out.append(run_plan(label, res, (t_max, e_max), profile, system, method=method, threads=threads))
    return out
