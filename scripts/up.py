"""`make up` / `make down`: compose.yaml, carried out with podman.

compose.yaml is the one description of the suite in containers; this reads it and does what it
says with plain `podman run`, in dependency order, waiting for each condition (healthy, or
completed successfully) itself: podman's own health timers need systemd, which these machines
lack, and podman-compose starts dependants without waiting for health. Any key it does not
carry out is refused by name, so compose.yaml cannot say something `make up` silently ignores.

    python scripts/up.py up [--timeout S]     start (or finish starting) the suite
    python scripts/up.py down [--volumes]     stop and remove its containers (and its data)
    python scripts/up.py ps | logs NAME       what runs; one container's log
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from scripts.podman import podman, tool

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "compose.yaml"

# What a service may say: everything else is refused (see the module's docstring).
KEYS = {
    "image", "command", "entrypoint", "environment", "volumes", "tmpfs", "read_only",
    "cap_drop", "security_opt", "ports", "healthcheck", "restart", "depends_on", "user",
}  # fmt: skip
HEALTH_KEYS = {"test", "interval", "timeout", "retries", "start_period"}
CONDITIONS = {"service_healthy", "service_completed_successfully", "service_started"}
CONFIG_LABEL = "io.tunelab.compose.config-hash"
VARIABLE = re.compile(r"\$\$|\$\{(\w+)(?::-([^}]*))?\}")


class ComposeError(Exception):
    """compose.yaml says something this runner does not do, or the suite did not come up."""


@dataclass
class Service:
    name: str
    spec: dict[str, Any]
    needs: dict[str, str] = field(default_factory=dict)  # dependency -> condition

    @property
    def one_shot(self) -> bool:
        return "restart" not in self.spec


@dataclass
class Project:
    name: str
    services: dict[str, Service]
    volumes: list[str]
    ipv6: bool = False

    def container(self, service: str) -> str:
        return f"{self.name}-{service}"

    @property
    def network(self) -> str:
        return self.name

    def volume(self, name: str) -> str:
        return f"{self.name}_{name}"

    def order(self) -> list[Service]:
        """Dependencies first; a cycle is an error."""
        done: list[Service] = []
        visiting: set[str] = set()

        def visit(service: Service) -> None:
            if service in done:
                return
            if service.name in visiting:
                raise ComposeError(f"depends_on has a cycle through {service.name}")
            visiting.add(service.name)
            for needed in service.needs:
                visit(self.services[needed])
            visiting.discard(service.name)
            done.append(service)

        for service in self.services.values():
            visit(service)
        return done


def interpolate(value: Any, env: Mapping[str, str]) -> Any:
    """${VAR} and ${VAR:-default} from `env`, $$ as a dollar, as Compose does."""
    if isinstance(value, str):

        def substitute(match: re.Match[str]) -> str:
            if match.group(0) == "$$":
                return "$"
            name, default = match.group(1), match.group(2)
            found = env.get(name)
            if found:
                return found
            if default is None:
                raise ComposeError(f"${{{name}}} is not set and has no default")
            return default

        return VARIABLE.sub(substitute, value)
    if isinstance(value, list):
        return [interpolate(item, env) for item in value]
    if isinstance(value, dict):
        return {key: interpolate(item, env) for key, item in value.items()}
    return value


def load(path: Path = COMPOSE, env: Mapping[str, str] = os.environ) -> Project:
    document = yaml.safe_load(path.read_text())
    unknown = (
        set(document)
        - {"name", "services", "volumes", "networks"}
        - {key for key in document if key.startswith("x-")}
    )
    if unknown:
        raise ComposeError(f"compose.yaml: top-level keys not carried out: {sorted(unknown)}")
    services: dict[str, Service] = {}
    for name, raw in document["services"].items():
        spec = interpolate(raw, env)
        if extra := set(spec) - KEYS:
            raise ComposeError(f"compose.yaml: {name}: keys not carried out: {sorted(extra)}")
        if not isinstance(spec.get("environment", {}), dict):
            raise ComposeError(f"compose.yaml: {name}: write environment as a mapping")
        if extra := set(spec.get("healthcheck", {})) - HEALTH_KEYS:
            raise ComposeError(f"compose.yaml: {name}: healthcheck keys: {sorted(extra)}")
        needs = {
            dep: (cond or {}).get("condition", "service_started")
            for dep, cond in spec.get("depends_on", {}).items()
        }
        if bad := {c for c in needs.values() if c not in CONDITIONS}:
            raise ComposeError(f"compose.yaml: {name}: conditions not carried out: {bad}")
        services[name] = Service(name, spec, needs)
    volumes = list(document.get("volumes") or {})
    for service in services.values():
        if missing := set(service.needs) - set(services):
            raise ComposeError(f"{service.name} depends on unknown {sorted(missing)}")
        for mount in service.spec.get("volumes", []):
            source = mount.split(":", 1)[0]
            if not source.startswith(".") and source not in volumes:
                raise ComposeError(f"{service.name}: volume {source!r} is not declared")
    networks = document.get("networks") or {}
    if set(networks) - {"default"} or set(networks.get("default") or {}) - {"enable_ipv6"}:
        raise ComposeError("compose.yaml: networks: only default's enable_ipv6 is carried out")
    ipv6 = bool((networks.get("default") or {}).get("enable_ipv6"))
    return Project(document["name"], services, volumes, ipv6)


def seconds(duration: str) -> float:
    """Compose durations as this file writes them: 5s, 2m, 1m30s."""
    parts = re.fullmatch(r"(?:(\d+)m)?(?:(\d+)s)?", duration)
    if not parts or not duration:
        raise ComposeError(f"duration {duration!r}: write it as 5s, 2m or 1m30s")
    return int(parts.group(1) or 0) * 60 + int(parts.group(2) or 0)


def run_arguments(project: Project, service: Service) -> list[str]:
    """`podman run` for one service, key by key."""
    spec = service.spec
    args = [
        "--detach", f"--name={project.container(service.name)}",
        f"--network={project.network}", f"--network-alias={service.name}",
        f"--label=io.tunelab.compose.project={project.name}",
        f"--label=io.tunelab.compose.service={service.name}",
        # Health is checked by this runner (see the docstring), never by a systemd timer.
        "--health-interval=disable",
    ]  # fmt: skip
    if service.one_shot:
        args.append("--restart=no")
    else:
        args.append(f"--restart={spec['restart']}")
    if spec.get("read_only"):
        args.append("--read-only")
    args += [f"--cap-drop={cap}" for cap in spec.get("cap_drop", [])]
    args += [f"--security-opt={opt}" for opt in spec.get("security_opt", [])]
    args += [f"--tmpfs={mount}" for mount in spec.get("tmpfs", [])]
    if "user" in spec:
        args.append(f"--user={spec['user']}")
    for name, value in spec.get("environment", {}).items():
        args.append(f"--env={name}={value}")
    for mount in spec.get("volumes", []):
        source, rest = mount.split(":", 1)
        if source.startswith("."):
            source = str((COMPOSE.parent / source).resolve())
        else:
            source = project.volume(source)
        args.append(f"--volume={source}:{rest}")
    args += [f"--publish={port}" for port in spec.get("ports", [])]
    if health := spec.get("healthcheck"):
        test = health["test"]
        if test[0] != "CMD":
            raise ComposeError(f"{service.name}: healthcheck test must be [CMD, ...]")
        args.append(f"--health-cmd={json.dumps(test[1:])}")
        args.append(f"--health-timeout={health.get('timeout', '30s')}")
    if "entrypoint" in spec:
        args.append(f"--entrypoint={json.dumps(spec['entrypoint'])}")
    return [*args, spec["image"], *spec.get("command", [])]


def state(project: Project, service: str) -> tuple[str, int]:
    """The container's status (running, exited, ... or missing) and exit code."""
    found = podman(
        "container", "inspect", "--format={{.State.Status}} {{.State.ExitCode}}",
        project.container(service), check=False,
    )  # fmt: skip
    if found.returncode:
        return "missing", 0
    status, code = found.stdout.split()
    return status, int(code)


def image_id(image: str) -> str:
    return podman("image", "inspect", "--format={{.Id}}", image).stdout.strip()


def label(project: Project, service: str, name: str) -> str:
    found = podman(
        "container", "inspect", f'--format={{{{index .Config.Labels "{name}"}}}}',
        project.container(service), check=False,
    )  # fmt: skip
    return found.stdout.strip()


def healthy(project: Project, service: str) -> bool:
    return podman("healthcheck", "run", project.container(service), check=False).returncode == 0


def health_window(service: Service) -> float:
    """How long a service may take to become healthy: its start period, then `retries` checks
    `interval` apart (Compose's defaults: 0 s, 3, 30 s). This runner checks every half second
    within it rather than waiting out each interval."""
    health = service.spec.get("healthcheck", {})
    start, interval = (
        seconds(health.get("start_period", "0s")),
        seconds(health.get("interval", "30s")),
    )
    return start + interval * int(health.get("retries", 3))


def wait(project: Project, service: Service, condition: str, deadline: float) -> None:
    name = service.name
    if condition == "service_healthy":
        deadline = min(deadline, time.monotonic() + health_window(service))
    while True:
        status, code = state(project, name)
        if condition == "service_completed_successfully" and status == "exited":
            if code == 0:
                return
            raise ComposeError(f"{name} exited with {code}:\n{tail(project, name)}")
        if condition == "service_healthy" and status == "running" and healthy(project, name):
            return
        if condition == "service_started" and status == "running":
            return
        if status in ("exited", "missing") and condition != "service_completed_successfully":
            raise ComposeError(f"{name} is {status} (exit {code}):\n{tail(project, name)}")
        if time.monotonic() > deadline:
            raise ComposeError(f"{name} not {condition} in time:\n{tail(project, name)}")
        time.sleep(0.5)


def tail(project: Project, service: str, lines: int = 30) -> str:
    logs = podman("logs", f"--tail={lines}", project.container(service), check=False)
    return (logs.stdout + logs.stderr).rstrip()


def ensure_network(project: Project) -> None:
    if not podman("network", "exists", project.network, check=False).returncode:
        found = podman("network", "inspect", "--format={{.IPv6Enabled}}", project.network)
        if (found.stdout.strip() == "true") == project.ipv6:
            return
        print(f"making the network {project.network} again (enable_ipv6 changed)", flush=True)
        down(project, volumes=False)
    podman("network", "create", *(["--ipv6"] if project.ipv6 else []), project.network)


def up(project: Project, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    images = {service.spec["image"] for service in project.services.values()}
    if missing := sorted(i for i in images if podman("image", "exists", i, check=False).returncode):
        raise ComposeError(f"no image {', '.join(missing)}: run `make images` first")
    ensure_network(project)
    for volume in project.volumes:
        if podman("volume", "exists", project.volume(volume), check=False).returncode:
            podman("volume", "create", project.volume(volume))
    for service in project.order():
        for needed, condition in service.needs.items():
            wait(project, project.services[needed], condition, deadline)
        arguments = run_arguments(project, service)
        # As Compose does: a container made from other settings or an older image is made
        # again; one that is as asked (running, or a one-shot that succeeded) is kept.
        config = hashlib.sha256(
            json.dumps([arguments, image_id(service.spec["image"])]).encode()
        ).hexdigest()
        status, code = state(project, service.name)
        current = status != "missing" and label(project, service.name, CONFIG_LABEL) == config
        if current and (status == "running" or (service.one_shot and code == 0)):
            continue
        if status != "missing":
            podman("rm", "--force", "--volumes", "--time=15", project.container(service.name))
        print(f"starting {service.name}", flush=True)
        podman("run", f"--label={CONFIG_LABEL}={config}", *arguments)
    for service in project.services.values():
        if not service.one_shot:
            health = "healthcheck" in service.spec or _image_has_health(service)
            wait(project, service, "service_healthy" if health else "service_started", deadline)


def _image_has_health(service: Service) -> bool:
    found = podman(
        "image", "inspect", "--format={{.Config.Healthcheck}}", service.spec["image"], check=False
    )
    return found.returncode == 0 and found.stdout.strip() not in ("", "<nil>")


def down(project: Project, volumes: bool) -> None:
    for service in reversed(project.order()):
        if state(project, service.name)[0] != "missing":
            print(f"removing {service.name}", flush=True)
            podman("rm", "--force", "--volumes", "--time=15", project.container(service.name))
    podman("network", "rm", "--force", project.network, check=False)
    if volumes:
        for volume in project.volumes:
            podman("volume", "rm", "--force", project.volume(volume), check=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    start = sub.add_parser("up", help="start the suite and wait until every service is healthy")
    start.add_argument("--timeout", type=float, default=300.0)
    stop = sub.add_parser("down", help="stop and remove the suite's containers")
    stop.add_argument("--volumes", action="store_true", help="and its volumes (its data)")
    sub.add_parser("ps", help="each service's container state")
    logs = sub.add_parser("logs", help="a service's log")
    logs.add_argument("service")
    args = parser.parse_args(argv)
    try:
        project = load()
        if args.command == "up":
            started = time.monotonic()
            up(project, args.timeout)
            port = os.environ.get("TUNELAB_GATEWAY_PORT", "8080")
            print(f"tunelab is up in {time.monotonic() - started:.0f} s: http://127.0.0.1:{port}")
        elif args.command == "down":
            down(project, args.volumes)
        elif args.command == "ps":
            for service in project.order():
                status, code = state(project, service.name)
                print(f"{service.name:20} {status}{f' ({code})' if status == 'exited' else ''}")
        else:
            subprocess.run([tool(), "logs", project.container(args.service)], check=False)
    except ComposeError as exc:
        print(f"make up: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
