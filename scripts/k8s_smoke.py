"""`make k8s-smoke`: the dev overlay, rendered, started with `podman kube play`, and every
service's health checked; then taken down.

podman plays Pods, Deployments, ConfigMaps, Secrets and PersistentVolumeClaims. What it does
not play is translated here, and said: a StatefulSet becomes a Pod with a claim of its own, a
Job a Pod that runs once, a Deployment a Pod named after it (so that its Service's name
resolves: podman's DNS knows pods by name), and `status.podIP` the pod's name. Services,
NetworkPolicies, the Ingress, ServiceAccounts and the Namespace have no podman equivalent and
are left out: this checks that the images, their settings, Secrets and volumes, the migration
order and the probes' commands work together, not the cluster's policies (tests/deploy does
those statically).

    python scripts/k8s_smoke.py [--keep] [--timeout S]
"""

from __future__ import annotations

import argparse
import base64
import copy
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from scripts.podman import podman, tool

ROOT = Path(__file__).resolve().parent.parent
OVERLAY = ROOT / "deploy" / "k8s" / "overlays" / "dev"
KUBECTL = Path(sys.executable).parent / "kubectl"
NETWORK = "tunelab-k8s-smoke"
PLAYED = {"ConfigMap", "PersistentVolumeClaim"}
LEFT_OUT = {"Service", "NetworkPolicy", "Ingress", "ServiceAccount", "Namespace"}


def render() -> list[dict[str, Any]]:
    text = subprocess.run(
        [str(KUBECTL), "kustomize", str(OVERLAY)], capture_output=True, text=True, check=True
    ).stdout
    return [doc for doc in yaml.safe_load_all(text) if doc]


def pod(name: str, template: dict[str, Any], restart: str | None = None) -> dict[str, Any]:
    spec = copy.deepcopy(template["spec"])
    if restart:
        spec["restartPolicy"] = restart
    for container in spec.get("initContainers", []) + spec["containers"]:
        # podman 4.3 publishes a containerPort without a hostPort on the host's same port
        # (where this machine's own PostgreSQL may be); nothing here needs them published.
        container.pop("ports", None)
        values = {}
        for variable in container.get("env", []):
            field = variable.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
            if field == "status.podIP":
                variable.pop("valueFrom")
                variable["value"] = name
            if "value" in variable:
                values[variable["name"]] = variable["value"]
        # Kubernetes expands $(VAR) in a command and its arguments; podman does not.
        for key in ("command", "args"):
            if key in container:
                container[key] = [expand(item, values) for item in container[key]]
    for volume in spec.get("volumes", []):
        if "secret" in volume:
            # podman 4.3 dereferences `optional` without looking whether it is there.
            volume["secret"].setdefault("optional", False)
    metadata = {"name": name, "labels": template.get("metadata", {}).get("labels", {})}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}


def expand(text: str, values: dict[str, str]) -> str:
    return re.sub(r"\$\((\w+)\)", lambda m: values.get(m.group(1), m.group(0)), text)


def translate(
    docs: list[dict[str, Any]],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[str]]:
    """What podman plays, the Secrets to create first, and a line for each object translated
    or left out."""
    played: list[dict[str, Any]] = []
    secrets: list[dict[str, Any]] = []
    jobs: list[dict[str, Any]] = []
    servers: list[dict[str, Any]] = []
    said: list[str] = []
    for doc in docs:
        kind, name = doc["kind"], doc["metadata"]["name"]
        if kind in PLAYED:
            played.append(doc)
        elif kind == "Secret":
            secrets.append(doc)
        elif kind == "Deployment":
            # OnFailure, not Always: podman 4.3 applies the pod's policy to its init containers
            # too, restarts the one that finished, and then fails to remove it.
            servers.append(pod(name, doc["spec"]["template"], restart="OnFailure"))
        elif kind == "Job":
            # Retried until it succeeds, as the Job's backoff would: the database may not
            # answer yet.
            jobs.append(pod(name, doc["spec"]["template"], restart="OnFailure"))
            said.append(f"Job {name}: a Pod that runs until it succeeds")
        elif kind == "StatefulSet":
            made = pod(name, doc["spec"]["template"])
            for claim in doc["spec"].get("volumeClaimTemplates", []):
                claim_name = f"{claim['metadata']['name']}-{name}-0"
                played.append(
                    {
                        "apiVersion": "v1",
                        "kind": "PersistentVolumeClaim",
                        "metadata": {"name": claim_name},
                        "spec": claim["spec"],
                    }
                )
                made["spec"].setdefault("volumes", []).append(
                    {
                        "name": claim["metadata"]["name"],
                        "persistentVolumeClaim": {"claimName": claim_name},
                    }
                )
            played.append(made)
            said.append(f"StatefulSet {name}: a Pod with its claims")
        elif kind in LEFT_OUT:
            said.append(f"{kind} {name}: left out (no podman equivalent)")
        else:
            raise SystemExit(f"{kind} {name}: the smoke test does not know how to play it")
    # podman plays in order, and waits for each pod's init containers: ConfigMaps and claims
    # first, then the stores, the Jobs, and last the Deployments (whose init containers wait
    # for the migrations).
    played.sort(key=lambda d: d["kind"] not in ("ConfigMap", "PersistentVolumeClaim"))
    return [*played, *jobs, *servers], secrets, said


def create_secrets(secrets: list[dict[str, Any]], played: list[dict[str, Any]]) -> None:
    """The Secrets as podman 4.3 reads them, which is not as it makes them from a played Secret
    (YAML, which its own readers then refuse), and differs by use: a secretKeyRef wants
    {key: base64 value} as JSON; a secret volume wants the Secret with its values in plain
    text (it writes them to the files as they stand)."""
    as_files = {
        volume["secret"]["secretName"]
        for doc in played
        if doc["kind"] == "Pod"
        for volume in doc["spec"].get("volumes", [])
        if "secret" in volume
    }
    for secret in secrets:
        name = secret["metadata"]["name"]
        values = {key: "".join(value.split()) for key, value in secret.get("data", {}).items()}
        for key, value in secret.get("stringData", {}).items():
            values[key] = base64.b64encode(value.encode()).decode()
        if name in as_files:
            plain = {key: base64.b64decode(value).decode() for key, value in values.items()}
            content: dict[str, Any] = {"apiVersion": "v1", "kind": "Secret", "data": plain}
            content["metadata"] = {"name": name}
        else:
            content = values
        podman("secret", "rm", name, check=False)
        subprocess.run(
            [tool(), "secret", "create", name, "-"],
            input=json.dumps(content),
            capture_output=True,
            text=True,
            check=True,
        )


def teardown(played: list[dict[str, Any]], secrets: list[dict[str, Any]]) -> None:
    """Remove what a run (this one, or one that was kept or broke off) left."""
    for doc in played:
        name = doc["metadata"]["name"]
        if doc["kind"] == "Pod":
            # With their anonymous volumes (the images' VOLUME), which `pod rm` would leave.
            members = podman("ps", "--all", "--quiet", f"--filter=pod={name}", check=False)
            if ids := members.stdout.split():
                podman("rm", "--force", "--volumes", "--time=10", *ids, check=False)
            podman("pod", "rm", "--force", "--time=10", name, check=False)
        elif doc["kind"] == "PersistentVolumeClaim":
            podman("volume", "rm", "--force", name, check=False)
    for secret in secrets:
        podman("secret", "rm", secret["metadata"]["name"], check=False)
        # podman makes a volume of each secret a pod mounts as files.
        podman("volume", "rm", "--force", secret["metadata"]["name"], check=False)
    podman("network", "rm", "--force", NETWORK, check=False)


def readiness(docs: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Each long-running pod's readiness probe as a command to run inside it: podman 4.3 runs
    none of them (gRPC ones it drops, HTTP ones it runs with a curl our images lack), and so a
    probe with a wrong port fails here as it would in a cluster."""
    commands = {}
    for doc in docs:
        if doc["kind"] not in ("Deployment", "StatefulSet"):
            continue
        container = doc["spec"]["template"]["spec"]["containers"][0]
        probe = container["readinessProbe"]
        ports = {p["name"]: p["containerPort"] for p in container.get("ports", []) if "name" in p}
        if "grpc" in probe:
            address = f"127.0.0.1:{probe['grpc']['port']}"
            command = ["python3", "-m", "services.common.probe", address]
        elif "httpGet" in probe:
            port = ports.get(probe["httpGet"]["port"], probe["httpGet"]["port"])
            url = f"http://127.0.0.1:{port}{probe['httpGet']['path']}"
            command = [
                "python3",
                "-c",
                f"import urllib.request as u; u.urlopen({url!r}, timeout=2)",
            ]
        else:
            command = probe["exec"]["command"]
        commands[doc["metadata"]["name"]] = command
    return commands


def answers(pod_name: str, command: list[str]) -> bool:
    """Whether the pod's main container (podman names it <pod>-<container>, and each of ours
    is named after its pod) passes `command`."""
    return podman("exec", f"{pod_name}-{pod_name}", *command, check=False).returncode == 0


def anonymous_volumes() -> set[str]:
    listed = podman("volume", "ls", "--quiet", check=False).stdout.split()
    return {name for name in listed if re.fullmatch(r"[0-9a-f]{64}", name)}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--keep", action="store_true", help="leave it running afterwards")
    args = parser.parse_args()
    docs = render()
    played, secrets, said = translate(docs)
    probes = readiness(docs)
    for line in said:
        print(f"  {line}")
    manifest = ROOT / ".build" / "k8s-smoke" / "dev.yaml"
    manifest.parent.mkdir(parents=True, exist_ok=True)
    manifest.write_text(yaml.safe_dump_all(played, sort_keys=False))
    print(f"  played: {manifest.relative_to(ROOT)}")
    teardown(played, secrets)
    before = anonymous_volumes()
    # Dual stack, as compose.yaml explains: names get AAAA answers without asking upstream.
    podman("network", "create", "--ipv6", NETWORK)
    started = time.monotonic()
    try:
        create_secrets(secrets, played)
        play = podman("kube", "play", "--network", NETWORK, str(manifest), check=False)
        if play.returncode:
            print(play.stdout + play.stderr)
            return 1
        pending = set(probes)
        while pending and time.monotonic() - started < args.timeout:
            pending = {name for name in pending if not answers(name, probes[name])}
            time.sleep(2)
        if pending:
            print(f"not healthy after {args.timeout:.0f} s: {sorted(pending)}")
            for name in sorted(pending):
                logs = podman("pod", "logs", "--tail=20", name, check=False)
                print(f"--- {name}\n{logs.stdout}{logs.stderr}")
            return 1
        print(f"every pod passes its readiness probe, {time.monotonic() - started:.0f} s")
        return 0
    finally:
        if not args.keep:
            teardown(played, secrets)
            # The images' VOLUME gives each init container one, which podman leaves behind
            # when it removes the container.
            if made := anonymous_volumes() - before:
                podman("volume", "rm", "--force", *sorted(made), check=False)


if __name__ == "__main__":
    sys.exit(main())
