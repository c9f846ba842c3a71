"""The rendered overlays meet tests/deploy/k8s_policy.py's rules, with exactly the network
arrows below; and each rule bites: a copy with one thing broken is reported."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.deploy.k8s_policy import (
    GRPC_PORTS,
    PROCESSES,
    SERVICES,
    Arrow,
    Manifest,
    Overlay,
    arrows,
    check,
    named,
)

MIGRATIONS = tuple(f"{s}-migrate" for s in SERVICES)
DNS = "namespaces kubernetes.io/metadata.name=kube-system pods k8s-app=kube-dns"
INTERNET = "ip 0.0.0.0/0 except 10.0.0.0/8,172.16.0.0/12,192.168.0.0/16"
ANY_NAMESPACE = "namespaces any"
MONITORING = "namespaces kubernetes.io/metadata.name=monitoring"
PRIVATE_NETWORKS = ("ip 10.0.0.0/8", "ip 172.16.0.0/12", "ip 192.168.0.0/16")
CALLS = {"gateway": SERVICES, "deploy": ("datasets",), "eval": ("tracing", "datasets")}
METRICS_PORTS = {"datasets": 9151, "deploy": 9152, "tracing": 9153, "eval": 9154}


def tcp(port: int) -> str:
    return f"TCP/{port}"


def both_overlays(pods: tuple[str, ...]) -> set[Arrow]:
    """The arrows of the base, for these pods."""
    return {
        # Every pod resolves names through the cluster's DNS only.
        *(Arrow(pod, DNS, port) for pod in pods for port in ("UDP/53", "TCP/53")),
        # The Ingress controller, from any namespace, to the gateway.
        Arrow(ANY_NAMESPACE, "gateway", tcp(8080)),
        # The gRPC contracts: gateway -> each service, deploy -> datasets, eval -> tracing and
        # datasets.
        *(Arrow(caller, s, tcp(GRPC_PORTS[s])) for caller, called in CALLS.items() for s in called),
        # RunPod and the LLM judges, over HTTPS, never to a private address.
        Arrow("deploy", INTERNET, tcp(443)),
        Arrow("eval", INTERNET, tcp(443)),
    }


DEV = Overlay(
    name="dev",
    arrows=frozenset(
        both_overlays((*PROCESSES, *MIGRATIONS, "postgres", "seaweedfs", "seaweedfs-bucket"))
        | {
            # Each service's processes to the in-cluster PostgreSQL.
            *(Arrow(pod, "postgres", tcp(5432)) for pod in (*SERVICES, *MIGRATIONS)),
            # S3: datasets and deploy store bytes, the gateway fetches signed download URLs.
            *(Arrow(pod, "seaweedfs", tcp(8333)) for pod in ("datasets", "deploy", "gateway")),
            # The bucket Job's `weed shell`: the master's and the filer's gRPC.
            Arrow("seaweedfs-bucket", "seaweedfs", tcp(19333)),
            Arrow("seaweedfs-bucket", "seaweedfs", tcp(18888)),
            # The local provider's pods, in the deploy container, call back to the gateway.
            Arrow("deploy", "gateway", tcp(8080)),
        }
    ),
    replicas=dict.fromkeys(PROCESSES, 1),
    extra_statefulsets={"postgres": 1, "seaweedfs": 1},
    images={f"tunelab/{p}": f"localhost/tunelab/{p}:latest" for p in PROCESSES},
    pull_policy="IfNotPresent",
    ingress_host="tunelab.localhost",
    ingress_tls_secret=None,
    secrets="dev-only",
)

PROD = Overlay(
    name="prod",
    arrows=frozenset(
        both_overlays((*PROCESSES, *MIGRATIONS))
        | {
            # Each service's processes to the managed PostgreSQL, on a private address.
            *(
                Arrow(pod, network, tcp(5432))
                for pod in (*SERVICES, *MIGRATIONS)
                for network in PRIVATE_NETWORKS
            ),
            # S3 (and the identity provider's JWKS) over HTTPS: deploy's is covered above.
            Arrow("datasets", INTERNET, tcp(443)),
            Arrow("gateway", INTERNET, tcp(443)),
            # Prometheus (components/monitoring) scrapes the services' metrics ports.
            *(Arrow(MONITORING, s, tcp(port)) for s, port in METRICS_PORTS.items()),
        }
    ),
    replicas={"gateway": 3, "tracing": 3, "datasets": 2, "deploy": 2, "eval": 1},
    autoscaled=frozenset({"gateway", "tracing", "datasets"}),
    disruption_budgets=True,
    topology_spread=True,
    images={f"tunelab/{p}": f"registry.example.com/tunelab/{p}:0.1.0" for p in PROCESSES},
    pull_policy="IfNotPresent",
    ingress_host="tunelab.example.com",
    ingress_tls_secret="tunelab-tls",
    secrets="none",
    external_secrets=frozenset(
        {"tunelab-internal", *(f"tunelab-{s}" for s in SERVICES), "tunelab-tls"}
    ),
)
OVERLAYS = {"dev": DEV, "prod": PROD}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_overlay_meets_every_rule(rendered: dict[str, list[Manifest]], overlay: str) -> None:
    assert check(rendered[overlay], OVERLAYS[overlay]) == []


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_network_allows_exactly_the_expected_arrows(
    rendered: dict[str, list[Manifest]], overlay: str
) -> None:
    found = arrows(rendered[overlay])
    assert sorted(map(str, found - OVERLAYS[overlay].arrows)) == []
    assert sorted(map(str, OVERLAYS[overlay].arrows - found)) == []


# Breaking one thing ------------------------------------------------------------------------

Mutation = Callable[[list[Manifest]], None]


def obj(docs: list[Manifest], kind: str, name: str) -> Manifest:
    found = named(docs, kind, name)
    assert found is not None, f"{kind} {name}"
    return found


def pod(docs: list[Manifest], kind: str, name: str) -> Manifest:
    spec: Manifest = obj(docs, kind, name)["spec"]["template"]["spec"]
    return spec


def container(docs: list[Manifest], kind: str, name: str, index: int = 0) -> Manifest:
    found: Manifest = pod(docs, kind, name)["containers"][index]
    return found


def init_container(docs: list[Manifest], name: str) -> Manifest:
    found: Manifest = pod(docs, "Deployment", name)["initContainers"][0]
    return found


def policy(docs: list[Manifest], name: str) -> Manifest:
    return obj(docs, "NetworkPolicy", name)


def remove(docs: list[Manifest], kind: str, name: str) -> None:
    docs.remove(obj(docs, kind, name))


def extra_in_namespace_arrow(docs: list[Manifest]) -> None:
    """tracing -> datasets: an egress for tracing, and tracing among datasets' callers."""
    docs.append(
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": "tracing-egress", "namespace": "tunelab"},
            "spec": {
                "podSelector": {"matchLabels": {"app.kubernetes.io/name": "tracing"}},
                "policyTypes": ["Egress"],
                "egress": [{"to": [{"podSelector": {}}], "ports": [{"port": "grpc"}]}],
            },
        }
    )
    peer = policy(docs, "datasets-ingress")["spec"]["ingress"][0]["from"][0]
    peer["podSelector"]["matchExpressions"][0]["values"].append("tracing")


def grpc_port_renamed(docs: list[Manifest]) -> None:
    obj(docs, "Service", "eval")["spec"]["ports"][0]["name"] = "api"


def no_isolation(docs: list[Manifest]) -> None:
    """Neither the default deny nor the DNS policy: no policy isolates a pod's egress."""
    remove(docs, "NetworkPolicy", "default-deny")
    remove(docs, "NetworkPolicy", "dns-egress")


MUTATIONS: dict[str, tuple[str, Mutation, str]] = {
    "runAsNonRoot dropped": (
        "dev",
        lambda d: pod(d, "Deployment", "datasets")["securityContext"].pop("runAsNonRoot"),
        "Deployment datasets, container datasets: runAsNonRoot is not true",
    ),
    "pod securityContext removed": (
        "prod",
        lambda d: pod(d, "Deployment", "gateway").pop("securityContext"),
        "Deployment gateway, container gateway: runAsNonRoot is not true",
    ),
    "seccomp dropped": (
        "prod",
        lambda d: pod(d, "Job", "tracing-migrate")["securityContext"].pop("seccompProfile"),
        "Job tracing-migrate, container migrate: seccompProfile is None",
    ),
    "privilege escalation": (
        "dev",
        lambda d: init_container(d, "eval")["securityContext"].update(
            allowPrivilegeEscalation=True
        ),
        "Deployment eval, container wait-for-migration: allowPrivilegeEscalation",
    ),
    "capabilities kept": (
        "dev",
        lambda d: container(d, "StatefulSet", "postgres")["securityContext"].pop("capabilities"),
        "StatefulSet postgres, container postgres: capabilities do not drop ALL",
    ),
    "writable root": (
        "prod",
        lambda d: container(d, "Deployment", "gateway")["securityContext"].update(
            readOnlyRootFilesystem=False
        ),
        "Deployment gateway, container gateway: readOnlyRootFilesystem is not true",
    ),
    "limits removed": (
        "prod",
        lambda d: container(d, "Deployment", "tracing")["resources"].pop("limits"),
        "Deployment tracing, container tracing: no cpu in resources.limits",
    ),
    "hostPath volume": (
        "dev",
        lambda d: pod(d, "Deployment", "deploy")["volumes"].append(
            {"name": "host", "hostPath": {"path": "/"}}
        ),
        "Deployment deploy: volume host is ['hostPath'], not allowed",
    ),
    "root uid": (
        "dev",
        lambda d: pod(d, "Deployment", "tracing")["securityContext"].update(runAsUser=0),
        "Deployment tracing, container tracing: runs as uid 0",
    ),
    "token mounted": (
        "prod",
        lambda d: pod(d, "Deployment", "eval").update(automountServiceAccountToken=True),
        "Deployment eval: automountServiceAccountToken is not false",
    ),
    "readiness probe removed": (
        "dev",
        lambda d: container(d, "Deployment", "gateway").pop("readinessProbe"),
        "Deployment gateway: no readinessProbe",
    ),
    "liveness probe on the wrong port": (
        "prod",
        lambda d: container(d, "Deployment", "deploy")["livenessProbe"]["grpc"].update(port=50051),
        "Deployment deploy: the liveness probe is not a gRPC health check on port 50052",
    ),
    "grace too short": (
        "prod",
        lambda d: pod(d, "Deployment", "datasets").update(terminationGracePeriodSeconds=5),
        "Deployment datasets: terminationGracePeriodSeconds is 5",
    ),
    "grpc port renamed": ("dev", grpc_port_renamed, "Service eval: no port named grpc"),
    "migration Job removed": (
        "prod",
        lambda d: remove(d, "Job", "deploy-migrate"),
        "no Job deploy-migrate beside Deployment deploy",
    ),
    "migration wait removed": (
        "dev",
        lambda d: pod(d, "Deployment", "tracing").pop("initContainers"),
        "Deployment tracing: no init container that runs `migrate wait`",
    ),
    "dev Secret unlabelled": (
        "dev",
        lambda d: next(x for x in d if x["kind"] == "Secret")["metadata"].pop("labels"),
        "is not labelled tunelab.dev/dev-only",
    ),
    "credential in a ConfigMap": (
        "dev",
        lambda d: next(x for x in d if x["kind"] == "ConfigMap")["data"].update(
            TUNELAB_INTERNAL_TOKEN="x" * 32
        ),
        "holds TUNELAB_INTERNAL_TOKEN, a credential",
    ),
    "credential as a literal": (
        "prod",
        lambda d: container(d, "Deployment", "gateway")["env"].append(
            {"name": "TUNELAB_JWT_SECRET", "value": "x" * 32}
        ),
        "Deployment gateway: TUNELAB_JWT_SECRET is not from a Secret",
    ),
    "storage credentials for the gateway": (
        "dev",
        lambda d: container(d, "Deployment", "gateway")["env"].append(
            {
                "name": "AWS_SECRET_ACCESS_KEY",
                "valueFrom": {"secretKeyRef": {"name": "tunelab-internal", "key": "token"}},
            }
        ),
        "Deployment gateway: it is given AWS_SECRET_ACCESS_KEY, a storage setting",
    ),
    "image not mapped": (
        "prod",
        lambda d: container(d, "Deployment", "eval").update(image="tunelab/eval"),
        "Deployment eval, container eval: image tunelab/eval is not mapped",
    ),
    "two replicas in dev": (
        "dev",
        lambda d: obj(d, "Deployment", "eval")["spec"].update(replicas=2),
        "Deployment eval: 2 replicas, not 1",
    ),
    "autoscaler removed": (
        "prod",
        lambda d: remove(d, "HorizontalPodAutoscaler", "tracing"),
        "Deployment tracing: no HorizontalPodAutoscaler",
    ),
    "replicas beside the autoscaler": (
        "prod",
        lambda d: obj(d, "Deployment", "gateway")["spec"].update(replicas=3),
        "Deployment gateway: names replicas",
    ),
    "unhealthy pods protected": (
        "prod",
        lambda d: obj(d, "PodDisruptionBudget", "deploy")["spec"].pop("unhealthyPodEvictionPolicy"),
        "PodDisruptionBudget of deploy: unhealthyPodEvictionPolicy is not AlwaysAllow",
    ),
    "budget that blocks a drain": (
        "prod",
        lambda d: obj(d, "PodDisruptionBudget", "eval")["spec"].update(
            minAvailable=1, maxUnavailable=None
        ),
        "PodDisruptionBudget of eval: it may block a drain at 1 replicas",
    ),
    "no topology spread": (
        "prod",
        lambda d: pod(d, "Deployment", "gateway").pop("topologySpreadConstraints"),
        "Deployment gateway: no topologySpreadConstraints",
    ),
    "TLS removed": (
        "prod",
        lambda d: obj(d, "Ingress", "gateway")["spec"].pop("tls"),
        "Ingress gateway: TLS is []",
    ),
    "default deny removed": (
        "dev",
        lambda d: remove(d, "NetworkPolicy", "default-deny"),
        "no default-deny NetworkPolicy",
    ),
    "extra arrow in the namespace": (
        "prod",
        extra_in_namespace_arrow,
        "unexpected arrow tracing -> datasets TCP/50051",
    ),
    "extra port to the internet": (
        "prod",
        lambda d: policy(d, "internet-egress")["spec"]["egress"][0]["ports"].append(
            {"protocol": "TCP", "port": 80}
        ),
        f"unexpected arrow eval -> {INTERNET} TCP/80",
    ),
    "private ranges reachable": (
        "dev",
        lambda d: policy(d, "internet-egress")["spec"]["egress"][0]["to"][0]["ipBlock"].pop(
            "except"
        ),
        "unexpected arrow deploy -> ip 0.0.0.0/0 TCP/443",
    ),
    "a caller's arrow removed": (
        "dev",
        lambda d: remove(d, "NetworkPolicy", "eval-egress"),
        "missing arrow eval -> tracing TCP/50053",
    ),
    "DNS egress removed": (
        "prod",
        lambda d: remove(d, "NetworkPolicy", "dns-egress"),
        f"missing arrow gateway -> {DNS} UDP/53",
    ),
    "isolation lost": ("dev", no_isolation, "unexpected arrow postgres -> anywhere *"),
}


@pytest.mark.parametrize("mutation", MUTATIONS)
def test_a_broken_copy_is_reported(rendered: dict[str, list[Manifest]], mutation: str) -> None:
    overlay, mutate, expected = MUTATIONS[mutation]
    docs = rendered[overlay]
    assert check(docs, OVERLAYS[overlay]) == []
    mutate(docs)
    violations = check(docs, OVERLAYS[overlay])
    assert any(expected in v for v in violations), violations
