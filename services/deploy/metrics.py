"""The deploy service's own Prometheus metrics: what an operator alerts on."""

from __future__ import annotations

from prometheus_client import Counter

PODS_RENTED = Counter(
    "tunelab_deploy_pods_rented_total", "Pods rented for deployments.", ["provider"]
)
PODS_TERMINATED = Counter(
    "tunelab_deploy_pods_terminated_total",
    "Pods of finished deployments confirmed terminated.",
    ["provider"],
)
RUNS_ENDED = Counter(
    "tunelab_deploy_runs_ended_total",
    "Deployments that reached a terminal state, by state and reason (the error code).",
    ["provider", "state", "reason"],
)
ORPHANS_TERMINATED = Counter(
    "tunelab_deploy_orphan_pods_terminated_total",
    "Pods named as ours that no live deployment owned, terminated by the sweep. Any at all "
    "means something rented a pod the service lost track of: look at the logs.",
    ["provider"],
)
