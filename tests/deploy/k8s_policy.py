"""What tunelab's rendered Kubernetes manifests must be, as a list of violations (empty: all
good): the "restricted" Pod Security Standard and our hardening, probes, graceful termination,
Services, migrations, Secrets, images, scaling, the Ingress, and the network arrows that the
NetworkPolicies allow, computed as Kubernetes would and compared with the exact expected set.

`check(docs, overlay)` runs every rule; `arrows(docs)` is the network computation alone.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from services.common.server import ServerSpec

Manifest = dict[str, Any]


def _drain_seconds() -> float:
    """The grace a gRPC server gives calls in flight after SIGTERM (ServerSpec's default)."""
    default = next(f.default for f in fields(ServerSpec) if f.name == "grace_seconds")
    assert isinstance(default, float)
    return default


SERVICES = ("datasets", "deploy", "tracing", "eval")
PROCESSES = (*SERVICES, "gateway")
GRPC_PORTS = {"datasets": 50051, "deploy": 50052, "tracing": 50053, "eval": 50054}
GATEWAY_PORT = 8080
# How long a process drains calls in flight after SIGTERM (the gRPC servers' grace; the
# gateway's uvicorn timeout_graceful_shutdown is the same 10 s): a pod's termination grace must
# cover it and the closing of stores and clients after it.
DRAIN_SECONDS = _drain_seconds()
MARGIN_SECONDS = 10
MAX_GRACE_SECONDS = 60
RUN_AS_USER = 10001
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob", "Pod")
# The volume types the restricted Pod Security Standard allows.
RESTRICTED_VOLUMES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}
# Settings that are credentials: never a literal value, never in a ConfigMap.
SECRET_SETTING = re.compile(r"(TOKEN|SECRET|PASSWORD|_KEY|_KEK|_KEY_ID|DATABASE_URL)$")
ANYWHERE = "anywhere"


@dataclass(frozen=True, order=True)
class Arrow:
    """Traffic the policies let through: `port` is "TCP/50051", "UDP/53", "TCP/*" or "*"."""

    source: str
    target: str
    port: str

    def __str__(self) -> str:
        return f"{self.source} -> {self.target} {self.port}"


@dataclass(frozen=True)
class Overlay:
    """What one overlay must render to, beyond the rules every overlay meets."""

    name: str
    arrows: frozenset[Arrow]
    # Deployment -> its replicas, or the HorizontalPodAutoscaler's minimum for `autoscaled`.
    replicas: Mapping[str, int]
    # image -> the whole reference it must become, e.g. "tunelab/gateway" -> "localhost/...".
    images: Mapping[str, str]
    pull_policy: str
    ingress_host: str
    ingress_tls_secret: str | None
    # "dev-only": generated here and so labelled; "none": the operator creates them.
    secrets: str
    # The Secrets the manifests may name that the render does not hold (the operator's).
    external_secrets: frozenset[str] = frozenset()
    autoscaled: frozenset[str] = frozenset()
    disruption_budgets: bool = False
    topology_spread: bool = False
    extra_statefulsets: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Workload:
    """A pod template and what owns it."""

    kind: str
    name: str
    spec: Manifest  # the pod spec
    labels: Mapping[str, str]

    @property
    def containers(self) -> list[Manifest]:
        return [*self.spec.get("initContainers", []), *self.spec.get("containers", [])]

    def port(self, name_or_number: str | int, protocol: str) -> int | None:
        """The container port a policy's or a Service's port means on this pod."""
        if isinstance(name_or_number, int):
            return name_or_number
        for container in self.spec.get("containers", []):
            for p in container.get("ports", []):
                if p.get("name") == name_or_number and p.get("protocol", "TCP") == protocol:
                    return int(p["containerPort"])
        return None


def check(docs: Sequence[Manifest], overlay: Overlay) -> list[str]:
    """Every violation of every rule, each a sentence naming the object."""
    return [
        *pod_security(docs),
        *service_accounts(docs),
        *processes(docs),
        *services(docs),
        *migrations(docs),
        *secrets(docs, overlay),
        *images(docs, overlay),
        *scaling(docs, overlay),
        *ingress(docs, overlay),
        *network(docs, overlay),
    ]


# Objects -----------------------------------------------------------------------------------


def objects(docs: Sequence[Manifest], kind: str) -> list[Manifest]:
    return [d for d in docs if d.get("kind") == kind]


def named(docs: Sequence[Manifest], kind: str, name: str) -> Manifest | None:
    return next((d for d in objects(docs, kind) if d["metadata"]["name"] == name), None)


def workloads(docs: Sequence[Manifest]) -> list[Workload]:
    found = []
    for d in docs:
        if d.get("kind") not in WORKLOAD_KINDS:
            continue
        if d["kind"] == "Pod":
            template = {"metadata": d["metadata"], "spec": d["spec"]}
        elif d["kind"] == "CronJob":
            template = d["spec"]["jobTemplate"]["spec"]["template"]
        else:
            template = d["spec"]["template"]
        labels = template.get("metadata", {}).get("labels", {})
        found.append(Workload(d["kind"], d["metadata"]["name"], template["spec"], labels))
    return found


def _container(workload: Workload, name: str) -> Manifest | None:
    return next((c for c in workload.spec.get("containers", []) if c["name"] == name), None)


def _deployments(docs: Sequence[Manifest]) -> dict[str, Workload]:
    return {w.name: w for w in workloads(docs) if w.kind == "Deployment"}


def selects(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """Whether a label selector (matchLabels and matchExpressions) selects these labels."""
    if selector is None:
        return False
    for key, value in selector.get("matchLabels", {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions", []):
        key, operator = expression["key"], expression["operator"]
        values = expression.get("values", [])
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and key in labels and labels[key] in values:
            return False
        if operator == "Exists" and key not in labels:
            return False
        if operator == "DoesNotExist" and key in labels:
            return False
    return True


# Pods ----------------------------------------------------------------------------------------


def pod_security(docs: Sequence[Manifest]) -> Iterator[str]:
    """The restricted Pod Security Standard, a read-only root, requests and limits."""
    for w in workloads(docs):
        pod = w.spec.get("securityContext", {})
        where = f"{w.kind} {w.name}"
        for key in ("hostNetwork", "hostPID", "hostIPC"):
            if w.spec.get(key):
                yield f"{where}: {key} is set"
        for volume in w.spec.get("volumes", []):
            kinds = set(volume) - {"name"}
            if not kinds <= RESTRICTED_VOLUMES:
                yield f"{where}: volume {volume['name']} is {sorted(kinds)}, not allowed"
        for c in w.containers:
            yield from (f"{where}, container {c['name']}: {p}" for p in _container_security(pod, c))


def _container_security(pod: Manifest, c: Manifest) -> Iterator[str]:
    own = c.get("securityContext", {})
    if own.get("runAsNonRoot", pod.get("runAsNonRoot")) is not True:
        yield "runAsNonRoot is not true"
    if own.get("runAsUser", pod.get("runAsUser")) == 0:
        yield "runs as uid 0"
    seccomp = own.get("seccompProfile", pod.get("seccompProfile", {})).get("type")
    if seccomp not in ("RuntimeDefault", "Localhost"):
        yield f"seccompProfile is {seccomp}, not RuntimeDefault"
    if own.get("allowPrivilegeEscalation") is not False:
        yield "allowPrivilegeEscalation is not false"
    if own.get("privileged"):
        yield "privileged"
    capabilities = own.get("capabilities", {})
    if "ALL" not in capabilities.get("drop", []):
        yield "capabilities do not drop ALL"
    if set(capabilities.get("add", [])) - {"NET_BIND_SERVICE"}:
        yield f"capabilities add {capabilities['add']}"
    if own.get("readOnlyRootFilesystem") is not True:
        yield "readOnlyRootFilesystem is not true"
    resources = c.get("resources", {})
    for kind in ("requests", "limits"):
        for resource in ("cpu", "memory"):
            if resource not in resources.get(kind, {}):
                yield f"no {resource} in resources.{kind}"
    if any("hostPort" in p for p in c.get("ports", [])):
        yield "uses a hostPort"


def service_accounts(docs: Sequence[Manifest]) -> Iterator[str]:
    """One ServiceAccount of its own per workload, and no API token mounted anywhere."""
    accounts = {d["metadata"]["name"]: d for d in objects(docs, "ServiceAccount")}
    for name, account in accounts.items():
        if account.get("automountServiceAccountToken") is not False:
            yield f"ServiceAccount {name}: automountServiceAccountToken is not false"
    for w in workloads(docs):
        name = w.spec.get("serviceAccountName", "default")
        if name not in accounts:
            yield f"{w.kind} {w.name}: its ServiceAccount {name} is not in the manifests"
        if w.spec.get("automountServiceAccountToken") is not False:
            yield f"{w.kind} {w.name}: automountServiceAccountToken is not false"


def processes(docs: Sequence[Manifest]) -> Iterator[str]:
    """Each tunelab process: its image's entrypoint with the right arguments, its probes, a
    termination grace that covers its drain, and its own uid."""
    deployments = _deployments(docs)
    for name in PROCESSES:
        w = deployments.get(name)
        container = _container(w, name) if w else None
        if w is None or container is None:
            yield f"no Deployment {name} with a container {name}"
            continue
        where = f"Deployment {name}"
        if "command" in container:
            yield f"{where}: the command replaces the image's entrypoint"
        expected_args = [] if name == "gateway" else ["serve"]
        if container.get("args", []) != expected_args:
            yield f"{where}: args are {container.get('args')}, not {expected_args}"
        yield from (f"{where}: {p}" for p in _probes(w, container, name))
        grace = w.spec.get("terminationGracePeriodSeconds")
        low = DRAIN_SECONDS + MARGIN_SECONDS
        if grace is None or not low <= grace <= MAX_GRACE_SECONDS:
            yield (
                f"{where}: terminationGracePeriodSeconds is {grace}, not between {low:g} (the "
                f"{DRAIN_SECONDS:g} s drain and the close after it) and {MAX_GRACE_SECONDS}"
            )
        pod_uid = w.spec.get("securityContext", {}).get("runAsUser")
        for c in w.containers:
            uid = c.get("securityContext", {}).get("runAsUser", pod_uid)
            if uid != RUN_AS_USER:
                yield f"{where}, container {c['name']}: runs as uid {uid}, not {RUN_AS_USER}"


def _probes(w: Workload, container: Manifest, name: str) -> Iterator[str]:
    liveness, readiness = container.get("livenessProbe"), container.get("readinessProbe")
    if liveness is None:
        yield "no livenessProbe"
    if readiness is None:
        yield "no readinessProbe"
    if name == "gateway":
        for probe, kind, path in (
            (liveness, "liveness", "/healthz"),
            (readiness, "readiness", "/readyz"),
        ):
            get = (probe or {}).get("httpGet", {})
            if probe and (
                get.get("path") != path or w.port(get.get("port", 0), "TCP") != GATEWAY_PORT
            ):
                yield f"the {kind} probe is not GET {path} on port {GATEWAY_PORT}"
        return
    port = GRPC_PORTS[name]
    if w.port("grpc", "TCP") != port:
        yield f"no container port named grpc on {port}"
    for probe, kind in ((liveness, "liveness"), (readiness, "readiness")):
        if probe and probe.get("grpc", {}).get("port") != port:
            yield f"the {kind} probe is not a gRPC health check on port {port}"


def services(docs: Sequence[Manifest]) -> Iterator[str]:
    """Each process's Service: its named port reaches the container's port."""
    deployments = _deployments(docs)
    for name in PROCESSES:
        service = named(docs, "Service", name)
        w = deployments.get(name)
        if service is None or w is None:
            yield f"no Service {name}"
            continue
        if not selects({"matchLabels": service["spec"].get("selector", {})}, w.labels):
            yield f"Service {name}: its selector does not select the Deployment's pods"
        port_name, protocol, number = (
            ("http", "http", GATEWAY_PORT)
            if name == "gateway"
            else ("grpc", "grpc", GRPC_PORTS[name])
        )
        port = next((p for p in service["spec"]["ports"] if p.get("name") == port_name), None)
        if port is None:
            yield f"Service {name}: no port named {port_name}"
            continue
        if port.get("appProtocol") != protocol:
            yield f"Service {name}: port {port_name} has appProtocol {port.get('appProtocol')}"
        if w.port(port.get("targetPort", port["port"]), "TCP") != number:
            yield f"Service {name}: port {port_name} does not reach the container's {number}"


def migrations(docs: Sequence[Manifest]) -> Iterator[str]:
    """Per service a Job that migrates with the Deployment's image, bounded and cleaned up, and
    an init container that holds the Deployment's new pods until it has."""
    deployments = {w.name: w for w in workloads(docs)}
    for name in SERVICES:
        server = deployments.get(name)
        job = named(docs, "Job", f"{name}-migrate")
        pod = deployments.get(f"{name}-migrate")
        if server is None or job is None or pod is None:
            yield f"no Job {name}-migrate beside Deployment {name}"
            continue
        image = _container(server, name) or {}
        migrate = pod.spec["containers"][0]
        if migrate.get("args") != ["migrate", "upgrade"] or "command" in migrate:
            yield f"Job {name}-migrate: it does not run the image's `migrate upgrade`"
        if migrate.get("image") != image.get("image"):
            yield f"Job {name}-migrate: its image is not the Deployment's"
        for key in ("backoffLimit", "activeDeadlineSeconds", "ttlSecondsAfterFinished"):
            if key not in job["spec"]:
                yield f"Job {name}-migrate: no {key}"
        waits = [
            c
            for c in server.spec.get("initContainers", [])
            if c.get("args", [])[:2] == ["migrate", "wait"] and c.get("image") == image.get("image")
        ]
        if not waits:
            yield f"Deployment {name}: no init container that runs `migrate wait` on its image"


def secrets(docs: Sequence[Manifest], overlay: Overlay) -> Iterator[str]:
    """Credentials come from Secrets only; dev's are labelled dev-only, prod commits none; every
    Secret a pod names exists (or is one the operator creates)."""
    held = {d["metadata"]["name"]: d for d in objects(docs, "Secret")}
    for name, secret in held.items():
        if overlay.secrets == "none":
            yield f"Secret {name} is in the manifests: the operator creates prod's"
        elif secret["metadata"].get("labels", {}).get("tunelab.dev/dev-only") != "true":
            yield f"Secret {name} is not labelled tunelab.dev/dev-only"
    config_maps = {d["metadata"]["name"]: d for d in objects(docs, "ConfigMap")}
    for name, config_map in config_maps.items():
        for key in config_map.get("data", {}):
            if SECRET_SETTING.search(key):
                yield f"ConfigMap {name} holds {key}, a credential"
    known = set(held) | overlay.external_secrets
    for w in workloads(docs):
        for c in w.containers:
            for env in c.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref is None:
                    if SECRET_SETTING.search(env["name"]):
                        yield f"{w.kind} {w.name}: {env['name']} is not from a Secret"
                elif ref["name"] not in known and not ref.get("optional"):
                    yield f"{w.kind} {w.name}: {env['name']} names Secret {ref['name']}, unknown"
        for volume in w.spec.get("volumes", []):
            if "secret" in volume and volume["secret"]["secretName"] not in known:
                yield f"{w.kind} {w.name}: volume {volume['name']} names an unknown Secret"
    gateway = _deployments(docs).get("gateway")
    if gateway is not None:
        yield from _no_storage(gateway, config_maps)


def _no_storage(gateway: Workload, config_maps: Mapping[str, Manifest]) -> Iterator[str]:
    """The gateway holds no storage: no storage settings, no storage credentials."""
    storage = re.compile(r"^AWS_|_S3_|_STORAGE")
    for c in gateway.containers:
        names = [e["name"] for e in c.get("env", [])]
        for source in c.get("envFrom", []):
            ref = source.get("configMapRef", {}).get("name")
            names += list(config_maps.get(ref, {}).get("data", {}))
        for name in names:
            if storage.search(name):
                yield f"Deployment gateway: it is given {name}, a storage setting"


def images(docs: Sequence[Manifest], overlay: Overlay) -> Iterator[str]:
    """tunelab's images become the overlay's references, pulled as the overlay says."""
    mapped = set(overlay.images.values())
    for w in workloads(docs):
        for c in w.containers:
            image = c.get("image", "")
            ours = image in mapped or image.split(":")[0].split("@")[0].endswith(
                tuple(f"tunelab/{p}" for p in PROCESSES)
            )
            where = f"{w.kind} {w.name}, container {c['name']}"
            if ours and image not in mapped:
                yield f"{where}: image {image} is not mapped"
            if ours and c.get("imagePullPolicy") != overlay.pull_policy:
                yield f"{where}: imagePullPolicy is not {overlay.pull_policy}"
    for process in PROCESSES:
        deployment = _deployments(docs).get(process)
        container = _container(deployment, process) if deployment else None
        wanted = overlay.images.get(f"tunelab/{process}")
        if container is not None and container.get("image") != wanted:
            yield f"Deployment {process}: image {container.get('image')}, not {wanted}"


# Scaling -------------------------------------------------------------------------------------


def scaling(docs: Sequence[Manifest], overlay: Overlay) -> Iterator[str]:
    deployments = _deployments(docs)
    hpas = {
        d["spec"]["scaleTargetRef"]["name"]: d for d in objects(docs, "HorizontalPodAutoscaler")
    }
    for name, replicas in overlay.replicas.items():
        d = named(docs, "Deployment", name)
        if d is None:
            continue  # processes() reports it
        hpa = hpas.pop(name, None)
        if name in overlay.autoscaled:
            yield from _autoscaled(d, hpa, replicas, deployments[name])
        elif hpa is not None:
            yield f"Deployment {name}: a HorizontalPodAutoscaler scales it"
        elif d["spec"].get("replicas", 1) != replicas:
            yield f"Deployment {name}: {d['spec'].get('replicas', 1)} replicas, not {replicas}"
    for name in hpas:
        yield f"HorizontalPodAutoscaler for {name}, which should not scale"
    for name, replicas in overlay.extra_statefulsets.items():
        s = named(docs, "StatefulSet", name)
        if s is None or s["spec"].get("replicas", 1) != replicas:
            yield f"StatefulSet {name}: not {replicas} replicas"
    if overlay.disruption_budgets:
        yield from _disruption_budgets(docs, overlay, deployments)
    elif objects(docs, "PodDisruptionBudget"):
        yield f"PodDisruptionBudgets in {overlay.name}"
    for name, w in deployments.items():
        spread = w.spec.get("topologySpreadConstraints", [])
        if overlay.topology_spread and not any(
            selects(t.get("labelSelector"), w.labels) for t in spread
        ):
            yield f"Deployment {name}: no topologySpreadConstraints over its own pods"


def _autoscaled(d: Manifest, hpa: Manifest | None, replicas: int, w: Workload) -> Iterator[str]:
    name = d["metadata"]["name"]
    if hpa is None:
        yield f"Deployment {name}: no HorizontalPodAutoscaler"
        return
    if hpa["apiVersion"] != "autoscaling/v2":
        yield f"HorizontalPodAutoscaler {name}: not autoscaling/v2"
    if hpa["spec"].get("minReplicas") != replicas or hpa["spec"]["maxReplicas"] < replicas:
        yield f"HorizontalPodAutoscaler {name}: its range does not start at {replicas} replicas"
    cpu = [
        m
        for m in hpa["spec"].get("metrics", [])
        if m.get("type") == "Resource"
        and m["resource"]["name"] == "cpu"
        and m["resource"]["target"]["type"] == "Utilization"
    ]
    if not cpu:
        yield f"HorizontalPodAutoscaler {name}: no CPU utilization target"
    if any("cpu" not in c.get("resources", {}).get("requests", {}) for c in w.spec["containers"]):
        yield f"HorizontalPodAutoscaler {name}: a container has no CPU request to scale against"
    if "replicas" in d["spec"]:
        yield f"Deployment {name}: names replicas, which each apply would reset under its HPA"


def _disruption_budgets(
    docs: Sequence[Manifest], overlay: Overlay, deployments: Mapping[str, Workload]
) -> Iterator[str]:
    budgets = objects(docs, "PodDisruptionBudget")
    for name, w in deployments.items():
        mine = [b for b in budgets if selects(b["spec"].get("selector"), w.labels)]
        if len(mine) != 1:
            yield f"Deployment {name}: {len(mine)} PodDisruptionBudgets, not 1"
            continue
        spec = mine[0]["spec"]
        if spec.get("unhealthyPodEvictionPolicy") != "AlwaysAllow":
            yield f"PodDisruptionBudget of {name}: unhealthyPodEvictionPolicy is not AlwaysAllow"
        replicas = overlay.replicas.get(name, 1)
        unavailable, available = spec.get("maxUnavailable"), spec.get("minAvailable")
        blocks = (
            (isinstance(unavailable, int) and unavailable < 1)
            or (isinstance(available, int) and available >= replicas)
            or isinstance(unavailable, str)
            or isinstance(available, str)
        )
        if blocks:
            yield f"PodDisruptionBudget of {name}: it may block a drain at {replicas} replicas"


def ingress(docs: Sequence[Manifest], overlay: Overlay) -> Iterator[str]:
    found = named(docs, "Ingress", "gateway")
    if found is None:
        yield "no Ingress gateway"
        return
    spec = found["spec"]
    if spec.get("ingressClassName") != "nginx":
        yield "Ingress gateway: ingressClassName is not nginx"
    hosts = [r.get("host") for r in spec.get("rules", [])]
    if hosts != [overlay.ingress_host]:
        yield f"Ingress gateway: hosts {hosts}, not {[overlay.ingress_host]}"
    backends = [
        p["backend"]["service"]
        for r in spec.get("rules", [])
        for p in r.get("http", {}).get("paths", [])
    ]
    if any(b["name"] != "gateway" for b in backends) or not backends:
        yield "Ingress gateway: a path leads elsewhere than the gateway"
    tls = [(t.get("secretName"), t.get("hosts")) for t in spec.get("tls", [])]
    wanted = (
        [(overlay.ingress_tls_secret, [overlay.ingress_host])] if overlay.ingress_tls_secret else []
    )
    if tls != wanted:
        yield f"Ingress gateway: TLS is {tls}, not {wanted}"


# Network -------------------------------------------------------------------------------------


def network(docs: Sequence[Manifest], overlay: Overlay) -> Iterator[str]:
    deny = [
        p
        for p in objects(docs, "NetworkPolicy")
        if p["spec"].get("podSelector") == {}
        and set(_policy_types(p)) == {"Ingress", "Egress"}
        and not p["spec"].get("ingress")
        and not p["spec"].get("egress")
    ]
    if not deny:
        yield "no default-deny NetworkPolicy (every pod, Ingress and Egress, no rule)"
    found = arrows(docs)
    for arrow in sorted(found - overlay.arrows):
        yield f"unexpected arrow {arrow}"
    for arrow in sorted(overlay.arrows - found):
        yield f"missing arrow {arrow}"


def arrows(docs: Sequence[Manifest]) -> frozenset[Arrow]:
    """Every (from, to, port) the NetworkPolicies let through, within the namespace (both the
    source's egress and the target's ingress must allow it) and across its edge."""
    pods = workloads(docs)
    policies = objects(docs, "NetworkPolicy")
    namespaces = {
        d.get("metadata", {}).get("namespace", "default")
        for d in docs
        if d.get("kind") in WORKLOAD_KINDS
    }
    namespace_labels = {"kubernetes.io/metadata.name": next(iter(namespaces), "default")}
    for ns in objects(docs, "Namespace"):
        if ns["metadata"]["name"] in namespaces:
            namespace_labels |= ns["metadata"].get("labels", {})
    egress = {w.name: _rules(policies, w, "Egress") for w in pods}
    ingress = {w.name: _rules(policies, w, "Ingress") for w in pods}
    found: set[Arrow] = set()
    for source in pods:
        for target in pods:
            out = _ports(egress[source.name], source, target, namespace_labels)
            into = _ports(ingress[target.name], target, source, namespace_labels, own=True)
            found |= {Arrow(source.name, target.name, p) for p in _intersect(out, into)}
        found |= _edge(egress[source.name], source, outward=True)
    for target in pods:
        found |= _edge(ingress[target.name], target, outward=False)
    return frozenset(found)


Rule = tuple[Manifest | None, Manifest]  # (a peer, None for any; its rule)


def _policy_types(policy: Manifest) -> list[str]:
    spec = policy["spec"]
    return list(spec.get("policyTypes") or (["Ingress"] + (["Egress"] if "egress" in spec else [])))


def _rules(policies: Sequence[Manifest], pod: Workload, direction: str) -> list[Rule] | None:
    """The peers a pod may reach (Egress) or be reached from (Ingress), or None when no policy
    isolates it in that direction (everything is allowed)."""
    mine = [
        p
        for p in policies
        if direction in _policy_types(p) and selects(p["spec"].get("podSelector", {}), pod.labels)
    ]
    if not mine:
        return None
    key, peers = ("egress", "to") if direction == "Egress" else ("ingress", "from")
    return [
        (peer, rule)
        for p in mine
        for rule in p["spec"].get(key) or []
        for peer in rule.get(peers) or [None]
    ]


def _ports(
    rules: list[Rule] | None,
    pod: Workload,
    other: Workload,
    namespace_labels: Mapping[str, str],
    *,
    own: bool = False,
) -> set[str]:
    """Ports `pod`'s rules allow toward `other` (or from it, for ingress: `own`), resolved on
    the target of the traffic."""
    if rules is None:
        return {"*"}
    target = pod if own else other
    allowed: set[str] = set()
    for peer, rule in rules:
        if peer is None or _peer_matches(peer, other, namespace_labels):
            allowed |= _rule_ports(rule, target)
    return allowed


def _peer_matches(peer: Manifest, pod: Workload, namespace_labels: Mapping[str, str]) -> bool:
    if "ipBlock" in peer:
        return False
    if "namespaceSelector" in peer and not selects(peer["namespaceSelector"], namespace_labels):
        return False
    return "podSelector" not in peer or selects(peer["podSelector"], pod.labels)


def _rule_ports(rule: Manifest, target: Workload | None) -> set[str]:
    if not rule.get("ports"):
        return {"*"}
    found = set()
    for p in rule["ports"]:
        protocol, port = p.get("protocol", "TCP"), p.get("port")
        if port is None:
            found.add(f"{protocol}/*")
            continue
        if isinstance(port, str) and target is not None:
            number = target.port(port, protocol)
            if number is None:
                continue  # a named port the target does not have: nothing
            port = number
        found.add(f"{protocol}/{port}" + (f"-{p['endPort']}" if "endPort" in p else ""))
    return found


def _intersect(a: set[str], b: set[str]) -> set[str]:
    found = set()
    for x in a:
        for y in b:
            if x == "*" or x == y:
                found.add(y)
            elif y == "*":
                found.add(x)
            elif x.endswith("/*") and y.startswith(x[:-1]):
                found.add(y)
            elif y.endswith("/*") and x.startswith(y[:-1]):
                found.add(x)
    return found


def _edge(rules: list[Rule] | None, pod: Workload, *, outward: bool) -> set[Arrow]:
    """Arrows between the pod and what lies outside the namespace: other namespaces, address
    blocks, or anywhere."""

    def arrow(peer: str, port: str) -> Arrow:
        return Arrow(pod.name, peer, port) if outward else Arrow(peer, pod.name, port)

    if rules is None:
        return {arrow(ANYWHERE, "*")}
    found = set()
    for peer, rule in rules:
        if peer is None:
            described = ANYWHERE
        elif "ipBlock" in peer or "namespaceSelector" in peer:
            described = describe(peer)
        else:
            continue
        found |= {arrow(described, p) for p in _rule_ports(rule, None if outward else pod)}
    return found


def describe(peer: Manifest) -> str:
    """A peer outside the namespace, as the expected arrows name it."""
    if "ipBlock" in peer:
        block = peer["ipBlock"]
        excepted = block.get("except", [])
        return f"ip {block['cidr']}" + (f" except {','.join(excepted)}" if excepted else "")
    text = f"namespaces {_selector(peer['namespaceSelector'])}"
    if "podSelector" in peer:
        text += f" pods {_selector(peer['podSelector'])}"
    return text


def _selector(selector: Mapping[str, Any]) -> str:
    terms = [f"{k}={v}" for k, v in sorted(selector.get("matchLabels", {}).items())]
    terms += [
        f"{e['key']} {e['operator']} ({'|'.join(e.get('values', []))})"
        for e in selector.get("matchExpressions", [])
    ]
    return ",".join(terms) or "any"
