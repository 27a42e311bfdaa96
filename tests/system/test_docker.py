"""Containers: the compose files and Dockerfiles in docker/, checked as far as this machine allows.

No Docker engine here (and no registry), so no image is built. What is checked instead:
* a real compose implementation validates the compose files where one is installed (skipped otherwise);
* the files are parsed and checked: services, ports, health checks, the GPU reservation, non-root
  users, read-only model mounts, that every command is a `coinfer` subcommand with options it accepts,
  and that the images install exactly what pyproject.toml lists;
* the four processes are started exactly as compose starts them (same commands, same COINFER_*
  environment; host names mapped to 127.0.0.1, ports left to the OS; server, channel and device with
  only the base install importable) and the device gets its answers from the server through the
  channel emulator, under the planner's plan;
* the health-check entry point, the server's --dtype, and client-side round robin over replicas.
"""
from __future__ import annotations

import functools
import json
import os
import posixpath
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import grpc
import pytest
import yaml

from coinfer.lab.launch import ServiceProcess

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
GPU_COMPOSE = DOCKER / "compose.yaml"
CPU_COMPOSE = DOCKER / "compose.cpu.yaml"
SCALE_COMPOSE = DOCKER / "compose.scale.yaml"
SERVICES = {"planner", "server", "channel", "device"}
# which endpoint line a service prints for each address option it binds (coinfer.lab.launch reads them)
ENDPOINT_OF_OPTION = {"listen": "listening", "control": "control"}
HEALTHCHECK = ["python", "-m", "coinfer.healthcheck"]


# --- reading the files ---------------------------------------------------------------------------

def load_compose(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


_VARIABLE = re.compile(r"\$\$|\$\{(\w+)(?:(:?[-?])([^}]*))?\}|\$(\w+)")
# What a user must set (${VAR:?message} in the files): the values these tests run with.
REQUIRED = {"COINFER_TOKEN": "compose-test-token"}
TOKEN_METADATA = (("authorization", f"Bearer {REQUIRED['COINFER_TOKEN']}"),)


def interpolate(value):
    """Compose's ${VAR:-default} with no variable set: the defaults (what a bare `up` runs); a required
    ${VAR:?message} takes its value from REQUIRED."""
    if isinstance(value, list):
        return [interpolate(v) for v in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        if match.group(2) and match.group(2).endswith("?"):
            return REQUIRED[match.group(1)]
        return match.group(3) if match.group(2) else ""

    return _VARIABLE.sub(substitute, value)


def environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {key: str(interpolate(value)) for key, value in env.items()}


def command(service: dict) -> list[str]:
    cmd = service["command"]
    return interpolate(shlex.split(cmd) if isinstance(cmd, str) else [str(c) for c in cmd])


def healthcheck_argv(service: dict) -> list[str]:
    test = service["healthcheck"]["test"]
    assert isinstance(test, list) and test[0] == "CMD", f"exec form keeps the check free of a shell: {test}"
    return interpolate(test[1:])


class Stage:
    def __init__(self, name: str, base: str):
        self.name, self.base = name, base
        self.instructions: list[tuple[str, str]] = []


class Dockerfile:
    """The few things the tests need from a Dockerfile: global ARGs and the stages' instructions."""

    def __init__(self, path: Path):
        self.path = path
        self.args: dict[str, str] = {}
        self.stages: dict[str, Stage] = {}
        self.order: list[Stage] = []
        text = re.sub(r"\\\n", " ", path.read_text())  # join continuation lines
        for line in text.splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            keyword, _, rest = line.partition(" ")
            keyword, rest = keyword.upper(), rest.strip()
            if keyword == "FROM":
                words = rest.split()
                name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else f"#{len(self.order)}"
                stage = Stage(name, self.expand(words[0]))
                self.stages[name] = stage
                self.order.append(stage)
            elif not self.order:
                assert keyword == "ARG", f"{path.name}: only ARG may come before FROM, not {keyword}"
                key, _, default = rest.partition("=")
                self.args[key] = default
            else:
                self.order[-1].instructions.append((keyword, rest))

    def expand(self, value: str, extra: dict | None = None) -> str:
        args = {**self.args, **(extra or {})}
        return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m.group(1) or m.group(2), m.group(0)), value)

    def chain(self, name: str) -> list[Stage]:
        """The stage and the stages it is built FROM, base first."""
        stages = []
        stage = self.stages[name]
        while True:
            stages.insert(0, stage)
            if stage.base not in self.stages:
                return stages
            stage = self.stages[stage.base]

    def instructions(self, name: str) -> list[tuple[str, str]]:
        return [item for stage in self.chain(name) for item in stage.instructions]

    def last(self, name: str, keyword: str) -> str | None:
        found = [rest for kw, rest in self.instructions(name) if kw == keyword]
        return found[-1] if found else None

    def stage_args(self, name: str) -> dict[str, str]:
        args = {}
        for keyword, rest in self.instructions(name):
            if keyword == "ARG" and "=" in rest:
                key, _, default = rest.partition("=")
                args[key] = default
        return args

    def env(self, name: str) -> dict[str, str]:
        env = {}
        for keyword, rest in self.instructions(name):
            if keyword == "ENV":
                for token in shlex.split(rest):
                    key, _, value = token.partition("=")
                    env[key] = value
        return env

    def exposed(self, name: str) -> set[int]:
        return {int(p.split("/")[0]) for kw, rest in self.instructions(name) if kw == "EXPOSE" for p in rest.split()}

    def exec_form(self, name: str, keyword: str) -> list[str] | None:
        rest = self.last(name, keyword)
        if rest is None:
            return None
        if keyword == "HEALTHCHECK":
            if rest.upper() == "NONE":
                return None
            rest = rest[rest.index("CMD") + 3:].strip()
        assert rest.startswith("["), f"{self.path.name} {name}: {keyword} must use the exec (JSON) form: {rest}"
        return json.loads(rest)

    def copies(self, name: str) -> dict[str, str]:
        """Container path -> repository path, for the COPY lines that copy from the build context."""
        copied, workdir = {}, "/"
        for keyword, rest in self.instructions(name):
            if keyword == "WORKDIR":
                workdir = posixpath.join(workdir, rest)
            elif keyword == "COPY" and "--from" not in rest:
                *sources, dest = [w for w in rest.split() if not w.startswith("--")]
                into_folder = dest.endswith("/") or dest == "." or len(sources) > 1
                for source in sources:
                    target = posixpath.join(workdir, dest, posixpath.basename(source) if into_folder else "")
                    copied[posixpath.normpath(target)] = source
        return copied

    def targets(self) -> list[str]:
        """Stages meant to be run: not the base of another stage, nor only copied from."""
        bases = {s.base for s in self.order}
        copied_from = {re.search(r"--from=(\S+)", rest).group(1) for s in self.order
                       for kw, rest in s.instructions if kw == "COPY" and "--from=" in rest}
        copied_from |= {m for s in self.order for kw, rest in s.instructions if kw == "RUN"
                        for m in re.findall(r"--mount=\S*\bfrom=([\w-]+)", rest)}
        return [s.name for s in self.order if s.name not in bases | copied_from]


def dockerfile_of(service: dict) -> tuple[Dockerfile, str]:
    build = service["build"]
    path = (DOCKER / build["context"] / build["dockerfile"]).resolve()
    dockerfile = Dockerfile(path)
    return dockerfile, build.get("target") or dockerfile.order[-1].name


@functools.lru_cache(maxsize=None)
def coinfer_help(subcommand: str) -> str:
    done = subprocess.run([sys.executable, "-m", "coinfer", subcommand, "--help"], capture_output=True, text=True,
                          timeout=120, env=_clean_env())
    assert done.returncode == 0, f"`coinfer {subcommand}` is not a coinfer subcommand:\n{done.stderr}"
    return done.stdout


@functools.lru_cache(maxsize=None)
def healthcheck_help() -> str:
    done = subprocess.run([sys.executable, "-m", "coinfer.healthcheck", "--help"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _clean_env(extra: dict | None = None) -> dict[str, str]:
    """This process's environment without any COINFER_* (so that only the compose file's apply)."""
    return {**{k: v for k, v in os.environ.items() if not k.startswith("COINFER_")}, **(extra or {})}


def assert_flags_accepted(argv: list[str], help_text: str, where: str) -> None:
    for flag in (token.split("=", 1)[0] for token in argv if token.startswith("--")):
        assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", help_text), \
            f"{where}: {flag} is not an option of `{argv[0] if not argv[0].startswith('-') else ''}`"


def bound_ports(service: dict) -> dict[int, str]:
    """Container port -> option, for each address the service binds (flag or COINFER_ variable)."""
    bound = {}
    for key, value in environment(service).items():
        if key.startswith("COINFER_") and re.fullmatch(r"0\.0\.0\.0:\d+", value):
            bound[int(value.rpartition(":")[2])] = key[len("COINFER_"):].lower()
    argv = command(service)
    for flag, value in zip(argv, argv[1:]):
        if flag.startswith("--") and re.fullmatch(r"0\.0\.0\.0:\d+", value):
            bound[int(value.rpartition(":")[2])] = flag[2:]
    return bound


# --- a real compose implementation -------------------------------------------------------------

def compose_implementations() -> list[list[str]]:
    found = []
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True)
        if probe.returncode == 0:
            found.append(["docker", "compose"])
    if shutil.which("docker-compose"):
        found.append(["docker-compose"])
    return found


@pytest.mark.parametrize("files", [
    [GPU_COMPOSE], [CPU_COMPOSE], [GPU_COMPOSE, SCALE_COMPOSE], [CPU_COMPOSE, SCALE_COMPOSE],
], ids=["gpu", "cpu", "gpu+scale", "cpu+scale"])
def test_a_real_compose_implementation_validates_the_files(files):
    implementations = compose_implementations()
    if not implementations:
        pytest.skip("no compose implementation installed (neither `docker compose` nor `docker-compose`); "
                    "`apt-get install docker-compose` validates without an engine. The parsing checks still ran.")
    for tool in implementations:
        version = subprocess.run([*tool, "version"], capture_output=True, text=True).stdout.splitlines()[0]
        args = [*tool, *(a for f in files for a in ("-f", str(f))), "config"]
        missing = subprocess.run(args, capture_output=True, text=True, timeout=120, cwd=ROOT, env=_clean_env())
        assert missing.returncode != 0 and "COINFER_TOKEN" in missing.stderr, "the token must be required"
        done = subprocess.run(args, capture_output=True, text=True, timeout=120, cwd=ROOT, env=_clean_env(REQUIRED))
        assert done.returncode == 0, f"{version}: {' '.join(args)} refused the file:\n{done.stderr}"
        resolved = yaml.safe_load(done.stdout)["services"]
        assert set(resolved) == SERVICES, version
        devices = resolved["server"].get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices")
        if files[0] == GPU_COMPOSE:
            assert devices and devices[0]["capabilities"] == ["gpu"], f"{version}: GPU reservation lost"
        else:
            assert not devices, f"{version}: the CPU file must not reserve a GPU"
        if SCALE_COMPOSE in files:
            assert int(resolved["server"]["deploy"]["replicas"]) > 1, version
            assert resolved["device"]["environment"]["COINFER_SERVER"] == "dns:///server:50051", version
        assert resolved["device"]["environment"]["COINFER_REPEAT"] in ("0", 0), version  # defaults interpolated


# --- the compose files, parsed -------------------------------------------------------------------

@pytest.fixture(scope="module", params=[GPU_COMPOSE, CPU_COMPOSE], ids=["gpu", "cpu"])
def compose(request):
    return load_compose(request.param)


def test_four_services_on_one_network_with_health_gated_start_up(compose):
    services = compose["services"]
    assert set(services) == SERVICES
    assert set(compose["networks"]) == {"coinfer"}
    for name, service in services.items():
        assert service["networks"] == ["coinfer"], name
        deps = service.get("depends_on") or {}
        for dep, how in deps.items():
            assert how == {"condition": "service_healthy"}, f"{name} must wait for {dep} to be healthy"
            assert "healthcheck" in services[dep], f"{name} waits on {dep}, which has no health check"
    # who waits for whom: the server subscribes to the planner, the channel resolves the server once
    # at start, the device needs all three
    assert set(services["server"]["depends_on"]) == {"planner"}
    assert set(services["channel"]["depends_on"]) == {"server"}
    assert set(services["device"]["depends_on"]) == {"planner", "server", "channel"}
    assert "depends_on" not in services["planner"]


def test_ports_bind_all_interfaces_and_are_published_or_exposed(compose):
    services = compose["services"]
    expected = {"planner": {50060: "listen"}, "server": {50051: "listen"},
                "channel": {50052: "listen", 50053: "control"}, "device": {}}
    for name, service in services.items():
        bound = bound_ports(service)
        assert bound == expected[name], f"{name} binds {bound}"
        published = {int(interpolate(p).rpartition(":")[2]) for p in service.get("ports", [])}
        exposed = {int(p) for p in service.get("expose", [])}
        assert set(bound) == published | exposed, f"{name}: every bound port is published or exposed"
        for port in service.get("ports", []):
            assert interpolate(port).startswith("127.0.0.1:"), f"{name}: publish on loopback unless asked"
    # every HOST:PORT a service is given names a service that binds that port
    for name, service in services.items():
        values = list(environment(service).values()) + command(service)
        for host, port in re.findall(r"(?:^|/)([a-z]+):(\d+)$", "\n".join(values), re.M):
            if host in SERVICES:
                assert int(port) in bound_ports(services[host]), f"{name} points at {host}:{port}: nothing binds it"


def test_health_checks_ask_the_service_on_its_own_port(compose):
    services = compose["services"]
    assert "healthcheck" not in services["device"]  # a device serves nothing
    for name in ("planner", "server", "channel"):
        check = healthcheck_argv(services[name])
        assert check[:3] == HEALTHCHECK, name
        ports = {int(a.rpartition(":")[2]) for a in check if re.fullmatch(r"127\.0\.0\.1:\d+", a)}
        assert ports == set(bound_ports(services[name])), f"{name}'s health check asks {ports}"
        assert_flags_accepted(check[3:], healthcheck_help(), f"{name} healthcheck")
        timing = services[name]["healthcheck"]
        assert {"interval", "timeout", "retries", "start_period"} <= set(timing), name
    assert check_service(services["server"]) == "coinfer.v1.CoInference"
    assert "--channel-control" in healthcheck_argv(services["channel"])


def check_service(service: dict) -> str | None:
    argv = healthcheck_argv(service)
    return argv[argv.index("--service") + 1] if "--service" in argv else None


def test_the_gpu_file_reserves_a_gpu_and_the_cpu_file_is_the_same_stack_without_it():
    gpu, cpu = load_compose(GPU_COMPOSE)["services"], load_compose(CPU_COMPOSE)["services"]
    (reservation,) = gpu["server"]["deploy"]["resources"]["reservations"]["devices"]
    assert reservation["driver"] == "nvidia" and reservation["capabilities"] == ["gpu"]
    assert reservation["count"] == "all" or int(reservation["count"]) >= 1
    assert gpu["server"]["build"]["dockerfile"] == "docker/Dockerfile.server"
    assert environment(gpu["server"])["COINFER_DEVICE"].startswith("cuda")
    assert not any("deploy" in s for s in cpu.values()), "no GPU reservation in the CPU file"
    assert cpu["server"]["build"] == {"context": "..", "dockerfile": "docker/Dockerfile.device", "target": "server"}
    assert environment(cpu["server"])["COINFER_DEVICE"] == "cpu"
    # everything else is identical, so the two files cannot drift apart
    for name in SERVICES:
        g, c = dict(gpu[name]), dict(cpu[name])
        if name == "server":
            for s in (g, c):
                s.pop("deploy", None), s.pop("build"), s.pop("image")
                s["environment"] = {k: v for k, v in s["environment"].items() if k != "COINFER_DEVICE"}
        assert g == c, f"{name} differs between compose.yaml and compose.cpu.yaml"


def test_models_are_mounted_read_only_and_every_variable_has_a_default(compose):
    for name, service in compose["services"].items():
        volumes = service.get("volumes", [])
        if name != "channel":  # planner, server and device load the model
            assert any(interpolate(v).endswith(":/models:ro") for v in volumes), f"{name}: no read-only /models"
        for volume in volumes:
            assert interpolate(volume).endswith(":ro"), f"{name}: {volume} is writable"
    text = (GPU_COMPOSE.read_text() + CPU_COMPOSE.read_text() + SCALE_COMPOSE.read_text())
    without_comments = "\n".join(line.split(" #")[0] for line in text.splitlines() if not line.lstrip().startswith("#"))
    bare = re.findall(r"\$\{\w+\}|\$\w+", without_comments.replace("$$", ""))
    assert not bare, f"variables without a default: {bare} (a bare `up` must run)"


def test_every_command_is_a_coinfer_subcommand_with_options_it_accepts(compose):
    for name, service in compose["services"].items():
        argv = command(service)
        help_text = coinfer_help(argv[0])
        assert_flags_accepted(argv, help_text, f"{name} command")
        for key in environment(service):
            assert key.startswith("COINFER_"), f"{name}: {key} configures nothing"
            flag = "--" + key[len("COINFER_"):].lower().replace("_", "-")
            assert_flags_accepted([argv[0], flag], help_text, f"{name} environment {key}")
        # the values parse: COINFER_ variables are read by every subcommand's parser at start-up
        done = subprocess.run([sys.executable, "-m", "coinfer", argv[0], "--help"], capture_output=True, text=True,
                              timeout=120, env=_clean_env(environment(service)))
        assert done.returncode == 0, f"{name}'s environment is refused:\n{done.stderr}"
        dockerfile, target = dockerfile_of(service)
        assert dockerfile.exec_form(target, "ENTRYPOINT") == ["coinfer"], f"{name}: the image runs `coinfer`"


# --- the Dockerfiles, parsed ---------------------------------------------------------------------

DOCKERFILES = {"device": DOCKER / "Dockerfile.device", "server": DOCKER / "Dockerfile.server"}


@pytest.mark.parametrize("which", sorted(DOCKERFILES))
def test_images_run_as_a_non_root_user_with_coinfer_as_entry_point(which):
    dockerfile = Dockerfile(DOCKERFILES[which])
    expected = {"device": ["planner", "channel", "server", "device"], "server": ["runtime"]}[which]
    assert dockerfile.targets() == expected
    for target in dockerfile.targets():
        user = dockerfile.last(target, "USER")
        assert user and user.split(":")[0] not in ("root", "0"), f"{which}/{target} runs as {user}"
        assert dockerfile.exec_form(target, "ENTRYPOINT") == ["coinfer"], target
        cmd = dockerfile.exec_form(target, "CMD")
        assert cmd, f"{which}/{target} has no CMD"
        assert_flags_accepted(cmd, coinfer_help(cmd[0]), f"Dockerfile.{which} {target} CMD")
        assert dockerfile.env(target)["HF_HUB_OFFLINE"] == "1"  # weights from /models or the package only
        assert "/models" in " ".join(rest for kw, rest in dockerfile.instructions(target) if kw == "RUN")


@pytest.mark.parametrize("which", sorted(DOCKERFILES))
def test_image_health_checks_ask_the_port_the_image_listens_on(which):
    dockerfile = Dockerfile(DOCKERFILES[which])
    for stage in map(dockerfile.stages.get, dockerfile.targets()):
        check = dockerfile.exec_form(stage.name, "HEALTHCHECK")
        cmd = dockerfile.exec_form(stage.name, "CMD")
        if cmd[0] == "device":
            assert check is None, "a device serves nothing to check"
            continue
        assert check and check[:3] == HEALTHCHECK, f"{which}/{stage.name}: {check}"
        assert_flags_accepted(check[3:], healthcheck_help(), f"Dockerfile.{which} {stage.name} HEALTHCHECK")
        ports = {int(a.rpartition(":")[2]) for a in check if re.fullmatch(r"127\.0\.0\.1:\d+", a)}
        env = dockerfile.env(stage.name)
        bound = {int(v.rpartition(":")[2]) for k, v in env.items() if k in ("COINFER_LISTEN", "COINFER_CONTROL")}
        assert ports == bound == dockerfile.exposed(stage.name), f"{which}/{stage.name}"


def _pip_commands(dockerfile: Dockerfile, stage: str) -> list[list[str]]:
    """The words of every `pip install` / `pip wheel` in a stage's own RUN lines."""
    found = []
    for keyword, rest in dockerfile.stages[stage].instructions:
        if keyword != "RUN":
            continue
        words: list[str] = []
        for token in shlex.split(rest) + ["&&"]:  # quoted ';' (python -c "...; ...") stays inside
            if token.endswith(";") and token != ";":  # `fi;`: a word, then the end of a command
                words.append(token[:-1])
                token = ";"
            if not words and token.startswith("--mount="):  # RUN's own flags
                continue
            if token in ("&&", "||", ";", "|"):
                if words[:2] in (["pip", "install"], ["pip", "wheel"]):
                    found.append(words)
                assert words[:3] != ["python", "-m", "pip"], "call `pip` (what this test reads)"
                words = []
            else:
                words.append(token)
    return found


BUILD_ARGS = {"PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS", "PIP_TRUSTED_HOST", "PIP_NO_INDEX"}


@pytest.mark.parametrize("which", sorted(DOCKERFILES))
def test_images_install_the_locked_wheels_without_resolving_anything(which):
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    (torch_pin,) = [d for d in pyproject["project"]["dependencies"] if re.match(r"torch\s*==", d)]
    dockerfile = Dockerfile(DOCKERFILES[which])
    text = DOCKERFILES[which].read_text()
    assert not re.search(r"^#\s*syntax\s*=", text, re.M | re.I), "a syntax directive makes BuildKit pull a frontend"
    assert "uv " not in text.replace("uv pip compile", ""), "no download of a Python or a tool at build time"
    # air-gapped builds: pip's settings as build args of the build stage, an empty default for the local
    # wheels context, a CA bundle by secret
    build = dockerfile.stages["build"]
    assert BUILD_ARGS <= set(dockerfile.stage_args("build")), BUILD_ARGS - set(dockerfile.stage_args("build"))
    assert dockerfile.stage_args("build")["PIP_FIND_LINKS"] == "/wheels"
    assert dockerfile.stages["wheels"].base == "scratch" and not dockerfile.stages["wheels"].instructions
    runs = " ".join(rest for kw, rest in build.instructions if kw == "RUN")
    assert "--mount=type=bind,from=wheels,target=/wheels" in runs and "--mount=type=secret,id=pip_ca" in runs
    torch_version = torch_pin.split("==")[1].strip()
    for stage in dockerfile.order:
        if "TORCH_VERSION" in dockerfile.stage_args(stage.name):
            assert dockerfile.stage_args(stage.name)["TORCH_VERSION"] == torch_version, stage.name
    index = dockerfile.stage_args("build")["PIP_EXTRA_INDEX_URL"]
    assert index.startswith("https://download.pytorch.org/whl/" + ("cpu" if which == "device" else "cu")), index
    # the build stage fetches exactly the lock's pins (wheels, no resolving but torch's CUDA closure)
    fetched = _pip_commands(dockerfile, "build")
    requirement_files = {w for cmd in fetched for a, w in zip(cmd, cmd[1:]) if a == "-r"}
    wanted = {"device": {"requirements/image-planner.txt"}, "server": {"/tmp/base.txt"}}[which]
    assert requirement_files == wanted, requirement_files
    assert all("--no-deps" in cmd for cmd in fetched if "-r" in cmd)
    # what `pip wheel /src` needs is in the build stage: pyproject, its readme and every package folder
    package_dirs = set(pyproject["tool"]["setuptools"]["package-dir"].values())
    needed = {"pyproject.toml", pyproject["project"]["readme"]} | package_dirs
    copied = set(dockerfile.copies("build").values())
    assert needed <= copied, f"not copied: {needed - copied}"
    # every stage an image is made of installs from mounted wheels only: no index, no resolver
    image_stages = {s.name for t in dockerfile.targets() for s in dockerfile.chain(t)}
    assert "build" not in image_stages, "the build stage (and its build/, *.egg-info) is no layer of an image"
    for stage in image_stages:
        for cmd in _pip_commands(dockerfile, stage):
            assert cmd[:2] == ["pip", "install"] and {"--no-index", "--no-deps"} <= set(cmd), f"{stage}: {cmd}"
    assert "pip check" in text
    if which == "device":
        installs = [c for c in _pip_commands(dockerfile, "cpu") if "-r" in c]
        assert [c[c.index("-r") + 1] for c in installs] == ["/requirements/image.txt"], "the base only"
        planner = [c for c in _pip_commands(dockerfile, "planner") if "-r" in c]
        assert [c[c.index("-r") + 1] for c in planner] == ["/requirements/image-planner.txt"]


def test_one_root_dockerignore_keeps_the_context_to_what_the_images_copy():
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    needed = {"pyproject.toml", pyproject["project"]["readme"], "requirements", "docker/sentences.txt",
              *pyproject["tool"]["setuptools"]["package-dir"].values()}
    assert "*" in ignore and {f"!{n}" for n in needed} <= set(ignore), ignore
    for never in ("**/.git", "**/.venv", "**/results", "**/build", "**/*.egg-info", "**/__pycache__"):
        assert never in ignore, never
    # BuildKit would read a <Dockerfile>.dockerignore instead of the root one: keep a single file
    assert not list(DOCKER.glob("*.dockerignore"))
    for which, path in DOCKERFILES.items():
        dockerfile = Dockerfile(path)
        for stage in dockerfile.order:
            for source in dockerfile.copies(stage.name).values():
                assert source.split("/")[0] in {n.split("/")[0] for n in needed}, f"{which}: {source} is ignored"


@pytest.mark.parametrize("which", sorted(DOCKERFILES))
def test_images_have_the_python_pyproject_requires(which):
    from packaging.specifiers import SpecifierSet
    from packaging.version import Version

    requires = SpecifierSet(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"])
    dockerfile = Dockerfile(DOCKERFILES[which])
    # both images take Python from the same base image (no CPython download at build time)
    version = re.match(r"python:(\d+\.\d+)", dockerfile.args["PYTHON_IMAGE"]).group(1)
    assert all(s.base in dockerfile.stages or s.base in ("scratch", dockerfile.args["PYTHON_IMAGE"])
               for s in dockerfile.order), [s.base for s in dockerfile.order]
    assert Version(version + ".0") in requires, f"{which} image has Python {version}, pyproject wants {requires}"
    if which == "server":  # what the NVIDIA container toolkit reads to mount the driver's libraries
        env = dockerfile.env(dockerfile.targets()[0])
        assert env["NVIDIA_DRIVER_CAPABILITIES"] == "compute,utility" and env["NVIDIA_VISIBLE_DEVICES"] == "all"


def test_the_device_logs_one_compact_line_per_answer_in_containers():
    for path in (GPU_COMPOSE, CPU_COMPOSE):
        assert "--json-compact" in command(load_compose(path)["services"]["device"]), path.name
    device = Dockerfile(DOCKERFILES["device"])
    assert "--json-compact" in device.exec_form("device", "CMD")


# --- the four processes as compose starts them ---------------------------------------------------

def start_order(services: dict) -> list[str]:
    order: list[str] = []
    while len(order) < len(services):
        ready = [n for n, s in services.items() if n not in order and set(s.get("depends_on") or {}) <= set(order)]
        assert ready, "depends_on has a cycle"
        order += sorted(ready)
    return order


class Localizer:
    """Maps a container's view to this machine: a bound 0.0.0.0:P becomes 127.0.0.1:0 (the OS picks
    the port, the service prints it); SERVICE:P and dns:///SERVICE:P become the address that service
    printed for P; a path the image COPYs to becomes the repository file."""

    def __init__(self, copies: dict[str, Path]):
        self.addresses: dict[tuple[str, int], str] = {}
        self.copies = copies

    def value(self, value: str, own: str | None = None) -> str:
        if value in self.copies:
            return str(self.copies[value])
        if re.fullmatch(r"0\.0\.0\.0:\d+", value):
            return "127.0.0.1:0"

        def reference(match: re.Match) -> str:
            host, port = match.group(2), int(match.group(3))
            if host == "127.0.0.1":  # a health check asks its own container
                host = own
            if (host, port) not in self.addresses:
                return match.group(0)
            return match.group(1) + self.addresses[(host, port)]

        return re.sub(r"^((?:dns:///)?)([\w.]+):(\d+)$", reference, value)


# The names the device image lacks (extras and what only the embedded model's package declares). None
# in sys.modules makes `import X` fail and importlib.util.find_spec(X) say None, as for a package that
# is not installed; a sitecustomize first on PYTHONPATH sets that before anything else runs.
NOT_IN_THE_BASE = ("cvxpy", "scipy", "matplotlib", "sklearn", "pytest", "_pytest", "hypothesis", "openai",
                   "sentence_transformers", "importlinter")


def base_only_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "base-only"
    folder.mkdir(exist_ok=True)
    (folder / "sitecustomize.py").write_text(f"import sys\nfor name in {NOT_IN_THE_BASE!r}:\n"
                                             "    sys.modules[name] = None\n")
    return folder


def run_compose_stack(path: Path, repeat: int, tmp_path: Path):
    """Start planner, server and channel as `path` does, then the device with --repeat; returns
    (device process result, {name: ServiceProcess}, localizer). The caller stops the services."""
    services = load_compose(path)["services"]
    copies = {}
    for service in services.values():
        dockerfile, target = dockerfile_of(service)
        copies.update({dest: ROOT / src for dest, src in dockerfile.copies(target).items()})
    where = Localizer(copies)
    running: dict[str, ServiceProcess] = {}
    try:
        for name in start_order(services):
            service = services[name]
            env = {k: where.value(v) for k, v in environment(service).items()}
            if name != "planner":  # as in the images: only the base install (no cvxpy, scipy, pytest, ...)
                env["PYTHONPATH"] = str(base_only_folder(tmp_path))
            argv = [where.value(a) for a in command(service)]
            if name == "device":
                # the one change: a finite --repeat (the flag wins over COINFER_REPEAT=0)
                done = subprocess.run([sys.executable, "-m", "coinfer", *argv, "--repeat", str(repeat)],
                                      capture_output=True, text=True, timeout=300, env=_clean_env(env))
                return done, running, where
            bound = bound_ports(service)
            expect = tuple(ENDPOINT_OF_OPTION[option] for _, option in sorted(bound.items(), key=lambda i: i[1] != "listen"))
            log_path = tmp_path / f"{path.stem}-{name}.log"
            try:
                with open(log_path, "w") as log:
                    running[name] = ServiceProcess(argv, name, expect=expect, stderr=log, env=_clean_env(env))
            except (RuntimeError, TimeoutError) as exc:
                raise AssertionError(f"{name} as {path.name} starts it ({argv}, {env}) failed: {exc}\n"
                                     f"{log_path.read_text()}") from None
            for port, option in bound.items():
                where.addresses[(name, port)] = running[name].endpoints[ENDPOINT_OF_OPTION[option]]
            # the service's own health check, as compose runs it, passes once it listens
            check = [where.value(a, own=name) for a in healthcheck_argv(service)]
            health = subprocess.run([sys.executable, *check[1:]], capture_output=True, text=True, timeout=60,
                                    env=_clean_env(env))
            assert health.returncode == 0, f"{name} health check {check}: {health.stderr}"
    except BaseException:
        for proc in running.values():
            proc.stop()
        raise
    raise AssertionError("compose file has no device")


@pytest.mark.slow
@pytest.mark.parametrize("path", [GPU_COMPOSE, CPU_COMPOSE], ids=["gpu-file", "cpu-file"])
def test_the_four_processes_as_compose_starts_them_answer_the_device(path, tmp_path):
    from coinfer.protos import channel_pb2, channel_pb2_grpc, coinfer_pb2, coinfer_pb2_grpc
    from coinfer.protos import planner_pb2, planner_pb2_grpc

    sentences = [s for s in (DOCKER / "sentences.txt").read_text().splitlines() if s.strip()]
    done, running, where = run_compose_stack(path, 1, tmp_path)
    try:
        logs = "\n".join(f"--- {p.name}\n{p.read_text()}" for p in tmp_path.glob("*.log"))
        assert done.returncode == 0, f"device failed:\n{done.stderr}\n{logs}"
        lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
        records = [json.loads(line) for line in lines]
        # --json-compact (what the files run): the sentence cut to 40 characters, a digest for the vector
        short = [s if len(s) <= 40 else s[:39] + "\u2026" for s in sentences]
        assert [r["sentence"] for r in records] == short  # one answer per sentence, in order
        for line, record in zip(lines, records):
            assert len(line.encode()) <= 1000, "a compact line must stay whole in a container log"
            assert record["output_kind"] == "sentence_embedding" and record["dim"] == 384
            assert len(record["sha256_16"]) == 16 and "output" not in record
            assert abs(record["norm"] - 1.0) < 1e-3  # MiniLM's L2-normalised sentence embedding
            assert record["bytes_sent"] > 0
        # computed under a plan from the planner (epoch 0 would mean no planner), ...
        epochs = [record["plan_epoch"] for record in records]
        assert epochs and min(epochs) >= 1, done.stderr
        with grpc.insecure_channel(where.addresses[("server", 50051)]) as ch:
            info = coinfer_pb2_grpc.CoInferenceStub(ch).Info(coinfer_pb2.InfoRequest(), timeout=10,
                                                             metadata=TOKEN_METADATA)
        assert info.requests_computed >= len({r['request_id'] for r in records}) and info.plan_epoch >= 1
        # ... through the channel emulator, whose transmit power the device set from that plan
        with grpc.insecure_channel(where.addresses[("channel", 50053)]) as ch:
            stats = channel_pb2_grpc.ChannelControlStub(ch).GetStats(channel_pb2.ChannelStatsRequest(), timeout=10,
                                                                     metadata=TOKEN_METADATA)
        assert stats.bytes_up >= sum(r["bytes_sent"] for r in records[:1]) and stats.connections_total >= 1
        with grpc.insecure_channel(where.addresses[("planner", 50060)]) as ch:
            state = planner_pb2_grpc.PlannerStub(ch).GetState(planner_pb2.StateRequest(), timeout=10,
                                                              metadata=TOKEN_METADATA)
        if state.plan.epoch == epochs[-1]:  # no newer plan since the device's last request
            assert abs(stats.tx_power_w - state.plan.tx_power_w) <= 1e-9 * max(1.0, state.plan.tx_power_w)
    finally:
        for proc in running.values():
            proc.stop()


# --- the health-check entry point ----------------------------------------------------------------

def test_healthcheck_passes_against_a_running_server_and_fails_on_a_dead_port(tmp_path):
    with ServiceProcess(["server", "--model", "random:bert-tiny", "--split", "1", "--listen", "127.0.0.1:0"],
                        "server") as server:
        for extra in ([], ["--service", "coinfer.v1.CoInference"]):
            ok = subprocess.run([sys.executable, "-m", "coinfer.healthcheck", server.address, *extra],
                                capture_output=True, text=True, timeout=60)
            assert ok.returncode == 0, ok.stderr
            assert "ok" in ok.stdout
        unknown = subprocess.run([sys.executable, "-m", "coinfer.healthcheck", server.address, "--service", "nope"],
                                 capture_output=True, text=True, timeout=60)
        assert unknown.returncode == 1 and "no health status for service 'nope'" in unknown.stderr
        port = server.port
    # the server is gone: its port is dead
    dead = subprocess.run([sys.executable, "-m", "coinfer.healthcheck", f"127.0.0.1:{port}", "--timeout-s", "2"],
                          capture_output=True, text=True, timeout=60)
    assert dead.returncode == 1
    assert f"unhealthy: 127.0.0.1:{port}: UNAVAILABLE" in dead.stderr
    usage = subprocess.run([sys.executable, "-m", "coinfer.healthcheck"], capture_output=True, text=True, timeout=60)
    assert usage.returncode == 1 and "give a HOST:PORT" in usage.stderr  # 1, not 2: Docker reserves 2


def test_healthcheck_of_a_channel_emulator_with_a_token(tmp_path):
    from coinfer.lab.launch import ServiceProcess as Service

    env = _clean_env({"COINFER_TOKEN": "s3cret"})
    with Service(["channel", "--listen", "127.0.0.1:0", "--control", "127.0.0.1:0", "--upstream", "127.0.0.1:9",
                  "--unlimited"], "channel", expect=("listening", "control"), env=env) as channel:
        args = [sys.executable, "-m", "coinfer.healthcheck", "--channel-control", channel.endpoints["control"],
                "--tcp", channel.address]
        ok = subprocess.run(args, capture_output=True, text=True, timeout=60, env=env)
        assert ok.returncode == 0, ok.stderr  # the token comes from COINFER_TOKEN, as the service's does
        refused = subprocess.run(args, capture_output=True, text=True, timeout=60, env=_clean_env())
        assert refused.returncode == 1 and "UNAUTHENTICATED" in refused.stderr


# --- the server's --dtype ------------------------------------------------------------------------

def test_fp16_on_the_cpu_is_a_usage_error_naming_dtype():
    done = subprocess.run([sys.executable, "-m", "coinfer", "server", "--device", "cpu", "--dtype", "fp16",
                           "--model", "random:bert-tiny", "--split", "1", "--listen", "127.0.0.1:0"],
                          capture_output=True, text=True, timeout=120, env=_clean_env())
    assert done.returncode == 2
    assert "--dtype fp16 needs a CUDA device" in done.stderr and "listening" not in done.stdout


def test_bf16_on_the_cpu_serves_answers_close_to_fp32(minilm, sentences):
    import torch

    from coinfer.device.runtime import DeviceRuntime
    from coinfer.lab.monolithic import WholeModel
    from coinfer.server.half import ServerHalf

    half = ServerHalf(minilm, 3, device="cpu", dtype="bf16")
    weights = {p.dtype for p in half.state.part.parameters()}
    assert weights == {torch.bfloat16}, weights
    whole = WholeModel(minilm)
    with ServiceProcess(["server", "--model", "minilm", "--split", "3", "--device", "cpu", "--dtype", "bf16",
                         "--listen", "127.0.0.1:0"], "server-bf16", env=_clean_env()) as server:
        runtime = DeviceRuntime(minilm, 3, server=server.address)
        try:
            runtime.connect()
            ids, mask = runtime.tokenize(sentences)
            result = runtime.infer_tokens(ids, mask)
        finally:
            runtime.close()
    reference = whole(ids, mask)
    assert result.output.dtype == torch.float32  # answers are float32 whatever the half computed in
    cosine = torch.nn.functional.cosine_similarity(result.output, reference, dim=-1)
    assert cosine.min().item() >= 0.99, cosine
    assert (result.output - reference).abs().max().item() > 1e-6  # it really computed in bf16


# --- scale-out: client-side round robin over replicas --------------------------------------------

def test_round_robin_spreads_unary_requests_over_replicas_and_pins_a_stream(tiny_bert, sentences):
    from coinfer.device.client import InferenceClient
    from coinfer.device.runtime import DeviceRuntime

    def computed(address: str) -> int:
        with InferenceClient(address) as client:
            return client.info().requests_computed

    args = ["server", "--model", "random:bert-tiny", "--split", "1", "--listen", "127.0.0.1:0"]
    with ServiceProcess(args, "replica-a", env=_clean_env()) as a, ServiceProcess(args, "replica-b", env=_clean_env()) as b:
        # one name for both replicas (what Docker's DNS gives for `server`); dns:/// takes the same path
        target = f"ipv4:{a.address},{b.address}"
        unary = DeviceRuntime(tiny_bert, 1, server=target, use_stream=False)
        try:
            unary.connect()
            for _ in range(6):
                unary.infer(sentences)
        finally:
            unary.close()
        spread = (computed(a.address), computed(b.address))
        assert min(spread) >= 1 and sum(spread) == 6, f"unary requests per replica: {spread}"
        stream = DeviceRuntime(tiny_bert, 1, server=target, use_stream=True)
        try:
            stream.connect()
            for _ in range(4):
                stream.infer(sentences)
        finally:
            stream.close()
        added = (computed(a.address) - spread[0], computed(b.address) - spread[1])
        assert sorted(added) == [0, 4], f"a stream stays on one replica: {added}"
        via_dns = DeviceRuntime(tiny_bert, 1, server=f"dns:///{a.address}")
        try:
            via_dns.connect()
            assert via_dns.infer(sentences).output.shape[0] == len(sentences)
        finally:
            via_dns.close()


# --- the stack built and run for real, where an engine is reachable ---------------------------------

@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_container_check_builds_runs_and_gets_the_local_answers():
    from coinfer.lab import container_check

    engine, why = container_check.probe()  # a PATH lookup where there is no engine: no time lost
    if engine is None:
        pytest.skip(f"no container engine reachable, so scripts/container_check cannot run here: {why}")
    done = subprocess.run([sys.executable, "-m", "coinfer.lab.container_check", "--engine", engine],
                          capture_output=True, text=True, timeout=3500, env=_clean_env())
    summary = json.loads(done.stdout)
    assert done.returncode == 0 and summary["ok"], json.dumps(summary, indent=1)[-6000:]
    assert set(summary["health"].values()) == {"healthy"} and summary["answers"]["equal"]
    assert summary["torn_down"]
    assert summary["image_bytes"]["coinfer/device"] <= 1.2e9, summary["image_mb"]
