"""Assemble the deploy service from its settings: database, providers, supervisor, servicer."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

from services.common.blobstore import BlobStore
from services.common.db import Database
from services.common.migrations import Migrations
from services.common.server import ServerSpec
from services.deploy.changes import Changes
from services.deploy.datasets import DatasetsClient
from services.deploy.keys import KEK_VARIABLE, KeyRing, KeyRingError
from services.deploy.output_upkeep import upkeep_forever
from services.deploy.pod import render
from services.deploy.preflight import Preflight
from services.deploy.providers.container import ContainerProvider, Limits, Network
from services.deploy.providers.local import LocalProvider
from services.deploy.providers.registry import Providers, RunPodFactory
from services.deploy.providers.relay import Relay
from services.deploy.server import DeployServicer
from services.deploy.settings import DeploySettings
from services.deploy.store import DeploymentStore
from services.deploy.supervisor import Supervisor
from tunelab.deploy.v1 import deploy_service_pb2, deploy_service_pb2_grpc

MIGRATIONS = Migrations("deploy", Path(__file__).parent / "migrations")
DOMAIN = "deploy.tunelab.dev"
SERVICE_NAME = deploy_service_pb2.DESCRIPTOR.services_by_name["DeployService"].full_name


def utc_now() -> datetime:
    return datetime.now(UTC)


def keyring(settings: DeploySettings) -> KeyRing:
    try:
        return KeyRing(
            settings.keys_kek.get_secret_value() if settings.keys_kek else "", KEK_VARIABLE
        )
    except KeyRingError as exc:
        raise SystemExit(f"deploy: {exc}") from None


@dataclass(frozen=True)
class Parts:
    servicer: DeployServicer
    supervisor: Supervisor
    store: DeploymentStore
    datasets: DatasetsClient
    outputs: BlobStore
    container: ContainerProvider


def assemble(
    settings: DeploySettings,
    db: Database,
    *,
    clock: Callable[[], datetime] = utc_now,
    runpod: RunPodFactory | None = None,
) -> Parts:
    internal_token = settings.require_internal_token()
    store = DeploymentStore(db)
    changes = Changes()
    store.on_change = changes.notify
    local = LocalProvider(
        settings.local_work_dir,
        python=settings.local_python or sys.executable,
        kill_grace_seconds=settings.local_kill_grace_seconds,
    )
    container = container_provider(settings)
    providers = Providers(settings, store, keyring(settings), local, runpod, container)
    datasets = DatasetsClient(settings.datasets_address, internal_token)
    trainers = {
        "tiny": render.trainer("tiny"),
        # The image brings Python, CUDA and torch; pods install pod/stack.py's pinned packages.
        "trl": render.gpu_trainer(),
    }
    supervisor = Supervisor(store, providers, datasets, settings, trainers, clock)
    preflight = Preflight(
        datasets,
        providers,
        public_url=settings.public_url,
        local_api_url=settings.api_url("local"),
        container_api_url=settings.api_url("container"),
        max_cost_per_run_usd=settings.max_cost_per_run_usd,
        cuda_floor=settings.cuda_floor,
    )
    outputs = settings.blob_store(settings.output_dir)
    servicer = DeployServicer(
        store, outputs, preflight, providers, supervisor, changes, settings, clock
    )
    return Parts(servicer, supervisor, store, datasets, outputs, container)


def container_provider(settings: DeploySettings) -> ContainerProvider:
    return ContainerProvider(
        settings.container_docker_host,
        limits=Limits(
            cpus=settings.container_cpus,
            memory_mb=settings.container_memory_mb,
            pids=settings.container_pids_limit,
            work_dir_mb=settings.container_work_dir_mb,
            shm_mb=settings.container_shm_mb,
        ),
        network=Network(
            settings.container_network, settings.container_subnet, settings.container_internet
        ),
        stop_seconds=settings.container_stop_seconds,
        # The pods' one way to the gateway, unless they are told another.
        relay=None
        if settings.container_api_url
        else Relay(settings.relay_listen(), settings.gateway_address()),
    )


def server_spec(
    settings: DeploySettings,
    db: Database,
    *,
    clock: Callable[[], datetime] = utc_now,
    address: str | None = None,
    runpod: RunPodFactory | None = None,
) -> ServerSpec:
    parts = assemble(settings, db, clock=clock, runpod=runpod)
    return ServerSpec(
        name="deploy",
        domain=DOMAIN,
        address=address or settings.grpc_address,
        internal_token=settings.require_internal_token(),
        register=lambda server: deploy_service_pb2_grpc.add_DeployServiceServicer_to_server(
            parts.servicer, server
        ),
        service_names=[SERVICE_NAME],
        background=[
            parts.supervisor.run_forever,
            partial(upkeep_forever, parts.store, parts.outputs, settings, clock),
        ],
        startup=[parts.outputs.start],
        shutdown=[parts.outputs.close, parts.container.close],
    )
