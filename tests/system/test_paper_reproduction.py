"""`scripts/reproduce_paper --quick` end to end, and the paper's qualitative claims checked on the CSVs
it writes (re-derived here from the rows, not read from the script's own verdicts)."""
import json
import subprocess
from pathlib import Path

import pytest

from coinfer.lab.paper.figures import read_csv

REPO = Path(__file__).resolve().parents[2]
BERT, BART = "random:bert-base", "random:bart-base"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    folder = tmp_path_factory.mktemp("paper")
    proc = subprocess.run([str(REPO / "scripts" / "reproduce_paper"), "--quick", "--out", str(folder)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return folder


@pytest.fixture(scope="module")
def summary(out):
    return json.loads((out / "summary.json").read_text())


def test_every_figure_has_csv_and_png(out, summary):
    for name in ("fig3_distortion", "fig4_delay", "fig5_energy", "fig6_split", "quality_minilm"):
        assert (out / f"{name}.csv").stat().st_size > 0
        png = (out / f"{name}.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
        assert summary["figures"][name]["rows"] == len(read_csv(out / f"{name}.csv"))
    assert (out / "e2e_minilm.csv").exists()
    assert summary["quick"] is True and summary["system"]["qos"]["max_delay_s"] > 0
    # every claim is reported with its verdict and the numbers behind it
    assert all({"claim", "paper", "holds", "values", "figure"} <= set(c) for c in summary["claims"])


def test_fig3_parameter_distortion_bounds_output_on_the_autoencoders(out):
    rows = [r for r in read_csv(out / "fig3_distortion.csv") if r["kind"] == "autoencoder"]
    assert {r["model"] for r in rows} == {"FCDNN-8", "FCDNN-16"}
    high = [r for r in rows if 0.5 <= r["rho"] < 1.0]
    assert len(high) >= 8
    for r in high:
        assert r["param_fro"] >= r["output_l2"] > 0, r
        assert r["param_l1"] >= r["param_fro"]
    for r in rows:   # Theorem III.1, with its constant, at every ratio
        assert r["output_l2"] <= r["theorem_bound"] * (1 + 1e-9) + 1e-12
    # distortions fall to zero as rho -> 1, and pruning more never removes less
    for model in ("FCDNN-8", "FCDNN-16"):
        pts = sorted((r["rho"], r["param_l1"]) for r in rows if r["model"] == model)
        assert pts[-1] == (1.0, 0.0)
        assert all(a[1] > b[1] for a, b in zip(pts, pts[1:]))


def test_fig3_covers_real_and_random_transformers(out):
    rows = [r for r in read_csv(out / "fig3_distortion.csv") if r["kind"] == "transformer"]
    real = {r["model"] for r in rows if not r["random_weights"]}
    fake = {r["model"] for r in rows if r["random_weights"]}
    assert real == {"minilm"} and len(fake) == 2


def _by_point(rows):
    points = {}
    for r in rows:
        points.setdefault((r["model"], r["pruning"], r["limit"]), {})[r["scheme"]] = r
    return points


@pytest.mark.parametrize("name", ["fig4_delay", "fig5_energy"])
def test_joint_design_never_worse_than_any_benchmark(out, name):
    points = _by_point(read_csv(out / f"{name}.csv"))
    assert {m for m, _, _ in points} == {BERT, BART} and {p for _, p, _ in points} == {"magnitude", "random"}
    compared = 0
    for key, schemes in points.items():
        joint = schemes["joint"]
        assert set(schemes) >= {"fixed_power", "fixed_frequency", "device_only_pruning", "server_only_pruning"}
        for scheme, r in schemes.items():
            if scheme in ("joint", "joint_sca") or not r["feasible"]:
                continue
            assert joint["feasible"], (key, scheme)
            assert joint["rel_distortion"] <= r["rel_distortion"] * (1 + 1e-6) + 1e-9, (key, scheme)
            compared += 1
        sca = schemes["joint_sca"]       # the paper's SCA lands on the global optimum
        assert sca["feasible"] == joint["feasible"]
        if joint["feasible"]:
            assert sca["rel_distortion"] == pytest.approx(joint["rel_distortion"], abs=1e-4)
    assert compared > len(points)


def test_fig4_server_only_infeasible_and_fig5_device_only_infeasible_when_tight(out):
    for name, scheme in (("fig4_delay", "server_only_pruning"), ("fig5_energy", "device_only_pruning")):
        points = _by_point(read_csv(out / f"{name}.csv"))
        tightest = min(limit for m, p, limit in points if m == BERT)
        pt = points[(BERT, "magnitude", tightest)]
        assert pt["joint"]["feasible"] and not pt[scheme]["feasible"], name
        # and the scheme becomes feasible once the limit is loose enough
        assert any(s[scheme]["feasible"] for (m, p, _), s in points.items() if m == BERT and p == "magnitude")


def test_fig6_best_split_interior_for_bert_base(out, summary):
    rows = read_csv(out / "fig6_split.csv")
    q = summary["system"]["qos"]
    for pruning in ("magnitude", "random", "rd_bound"):
        sub = {int(r["split"]): r for r in rows if r["model"] == BERT and r["pruning"] == pruning
               and r["max_delay_s"] == q["max_delay_s"] and r["max_energy_j"] == q["max_energy_j"]}
        assert sorted(sub) == list(range(13))
        best = min((r["rel_distortion"], k) for k, r in sub.items() if r["feasible"])[1]
        assert [k for k, r in sub.items() if r["chosen"]] == [best]
        assert 0 < best < 12
        assert sub[0]["rel_distortion"] > sub[best]["rel_distortion"] < sub[12]["rel_distortion"]
        assert sub[0]["where"] == "on_server" and sub[12]["where"] == "on_device"


def test_measured_quality_falls_with_rho_and_magnitude_beats_random(out):
    rows = read_csv(out / "quality_minilm.csv")
    assert {r["method"] for r in rows} == {"magnitude", "random", "structured"}
    for method in ("magnitude", "random", "structured"):
        pts = sorted((r["rho_device"], r["cosine_mean"]) for r in rows if r["method"] == method)
        assert pts[-1][0] == 1.0 and pts[-1][1] == pytest.approx(1.0, abs=1e-6)
        assert pts[0][1] < 0.9 * pts[-1][1]                 # heavy pruning visibly moves the embeddings
    mag = {r["rho_device"]: r["cosine_mean"] for r in rows if r["method"] == "magnitude"}
    rnd = {r["rho_device"]: r["cosine_mean"] for r in rows if r["method"] == "random"}
    assert all(mag[rho] > rnd[rho] for rho in mag if rho < 1.0)
    ref = {r["retrieval_acc_ref"] for r in rows}
    assert len(ref) == 1 and ref.pop() >= 0.8             # the unpruned model solves the pair set


def test_end_to_end_through_the_channel_at_the_planners_point(out, summary):
    import math

    rows = read_csv(out / "e2e_minilm.csv")
    assert rows
    ch = summary["system"]["channel"]
    for r in rows:
        assert r["max_abs_diff_vs_in_process"] <= 1e-4      # the processes compute the planned split
        assert 0 < r["cosine_mean"] <= 1 + 1e-6
        if r["path"] == "device->channel->server":
            # the emulator's rate is the spec's R(p) for the planner's p (its N0 is the exact -174 dBm/Hz)
            rate = ch["bandwidth_hz"] * math.log2(1 + ch["gain"] * r["tx_power_w"]
                                                  / (ch["bandwidth_hz"] * ch["noise_psd_w_per_hz"]))
            assert r["rate_bps"] == pytest.approx(rate, rel=2e-3)
            assert r["transfer_ms_median"] >= 0.8 * r["predicted_transfer_ms_median"]   # bytes cannot beat R(p)
