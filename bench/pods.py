"""Pod start latency: `python -m bench pods [--runs N]` (make bench-pods).

`tunelab dev` runs the suite; a Podman API service (tests/podman_api.py) runs the container
provider's pods, from the image `make images` builds (built or brought up to date first). Each
run trains the tiny model on a 50-row SFT dataset for 5 steps; runs alternate between the
providers so that the machine's noise falls on both alike.

Timed: from the run's creation to its pod's first report (the deployment's `last_report_at`,
polled every 20 ms; both times are the deploy service's clock), and to the run's end.

Baseline, measured in the same run and printed beside each figure as a ratio: the local
provider, whose pod is a process of the deploy service's machine: the cost of a container
(engine API, namespaces, cgroup, tmpfs, network, relay) over a bare process.
Figures go to bench/results/pods.json.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from bench.suite import BenchError, Suite, run_and_report
from tests.e2e.test_deploy_local import chat_rows
from tests.podman_api import Unavailable, podman_api, remove_pods

RESULTS = Path(__file__).resolve().parent / "results"
PROVIDERS = ("local", "container")
PREFIX = "benchpods"
NETWORK = "tunelab-bench-pods"


def _when(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


async def one_run(client: httpx.AsyncClient, provider: str, dataset_id: str) -> dict[str, float]:
    body = {
        "provider": provider,
        "dataset_id": dataset_id,
        "method": "sft",
        "hyperparameters": {"max_steps": 5},
        "limits": {"max_runtime_minutes": 10, "max_cost_usd": 1},
    }
    created = await client.post("/v1/deployments", json=body)
    if created.status_code != 201:
        raise BenchError(f"{provider}: {created.status_code} {created.text[:500]}")
    deployment = created.json()
    first: float | None = None
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        now: dict[str, Any] = (await client.get(f"/v1/deployments/{deployment['id']}")).json()
        if first is None and now.get("last_report_at"):
            first = (_when(now["last_report_at"]) - _when(now["created_at"])).total_seconds()
        if now["state"] in ("succeeded", "failed", "cancelled"):
            if now["state"] != "succeeded" or first is None:
                raise BenchError(f"{provider} run {now['id']} ended {now['state']}: {now}")
            end = (_when(now["finished_at"]) - _when(now["created_at"])).total_seconds()
            return {"first_report_s": first, "end_s": end}
        await asyncio.sleep(0.02)
    raise BenchError(f"{provider} run {deployment['id']} did not end in 300 s")


async def measure(root: Path, runs: int) -> dict[str, Any]:
    try:
        with podman_api(root) as docker_host:
            suite = Suite(
                root,
                {
                    "TUNELAB_DEPLOY_CONTAINER_DOCKER_HOST": docker_host,
                    "TUNELAB_DEPLOY_CONTAINER_NETWORK": NETWORK,
                    "TUNELAB_DEPLOY_CONTAINER_SUBNET": "10.213.250.0/24",
                    "TUNELAB_DEPLOY_POD_NAME_PREFIX": PREFIX,
                },
            )
            suite.start()
            try:
                return await _runs(suite, runs)
            finally:
                suite.stop()
                remove_pods(docker_host, f"{PREFIX}-", NETWORK)
    except Unavailable as exc:
        raise BenchError(f"no Docker-compatible API can be started here: {exc}") from None


async def _runs(suite: Suite, runs: int) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {suite.token()}"}
    async with httpx.AsyncClient(base_url=suite.url, headers=headers, timeout=30) as client:
        uploaded = await client.post(
            "/v1/datasets", params={"name": "b.jsonl"}, content=chat_rows(50)
        )
        if uploaded.status_code != 201:
            raise BenchError(f"upload: {uploaded.status_code} {uploaded.text[:300]}")
        dataset_id = uploaded.json()["id"]
        for provider in PROVIDERS:  # one untimed run each: images and interpreters cached
            await one_run(client, provider, dataset_id)
        samples: dict[str, list[dict[str, float]]] = {p: [] for p in PROVIDERS}
        for _ in range(runs):
            for provider in PROVIDERS:
                samples[provider].append(await one_run(client, provider, dataset_id))
    figures: dict[str, Any] = {"runs": runs}
    for provider, found in samples.items():
        for key in ("first_report_s", "end_s"):
            values = [sample[key] for sample in found]
            figures[f"{provider}_{key}_median"] = round(statistics.median(values), 3)
            figures[f"{provider}_{key}_max"] = round(max(values), 3)
    return figures


def table(results: dict[str, Any]) -> str:
    lines = [
        f"pods, {results['runs']} runs each (tiny model, 5 steps); median (max), seconds",
        f"{'':<22}{'container':>18}{'local (baseline)':>20}{'ratio':>8}",
    ]
    for key, label in (("first_report_s", "create → first report"), ("end_s", "create → end")):
        ours = results[f"container_{key}_median"]
        base = results[f"local_{key}_median"]
        lines.append(
            f"{label:<22}{ours:>10.2f} ({results[f'container_{key}_max']:.2f})"
            f"{base:>12.2f} ({results[f'local_{key}_max']:.2f}){ours / base:>8.2f}"
        )
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench pods",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--runs", type=int, default=5, help="timed runs per provider (5)")
    args = parser.parse_args(argv)

    async def work(root: Path) -> dict[str, Any]:
        return await measure(root, args.runs)

    return run_and_report("bench pods", work, table, RESULTS / "pods.json")
