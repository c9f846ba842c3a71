"""Assemble the eval service from its settings."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import grpc

from services.common import egress
from services.common.db import Database
from services.common.keyring import KeyRing, KeyRingError
from services.common.migrations import Migrations
from services.common.server import ServerSpec
from services.eval.curation import Curator
from services.eval.curation_store import CurationStore
from services.eval.datasets import DatasetsClient
from services.eval.evaluator import Evaluator
from services.eval.housekeeping import Housekeeping
from services.eval.judge.client import JudgeClient
from services.eval.judge_keys import KEK_VARIABLE, JudgeKeys
from services.eval.judging import JudgeRunner
from services.eval.judgment_store import JudgmentStore
from services.eval.rule_store import RuleStore
from services.eval.rules import RuleWorker
from services.eval.server import EvalServicer, utc_now
from services.eval.settings import EvalSettings
from services.eval.tracing import TracingClient
from tunelab.eval.v1 import eval_service_pb2, eval_service_pb2_grpc

MIGRATIONS = Migrations("eval", Path(__file__).parent / "migrations")
DOMAIN = "eval.tunelab.dev"
SERVICE_NAME = eval_service_pb2.DESCRIPTOR.services_by_name["EvalService"].full_name


def server_spec(
    settings: EvalSettings,
    db: Database,
    *,
    clock: Callable[[], datetime] = utc_now,
    address: str | None = None,
    resolve: egress.Resolver = egress.system_resolver,
) -> ServerSpec:
    token = settings.require_internal_token()
    try:
        keyring = KeyRing(
            settings.keys_kek.get_secret_value() if settings.keys_kek else "", KEK_VARIABLE
        )
    except KeyRingError as exc:
        raise SystemExit(f"eval: {exc}") from None
    tracing = TracingClient(settings.tracing_address, token)
    judgments = JudgmentStore(db)
    rules = RuleStore(db)
    keys = JudgeKeys(db, keyring)
    client = JudgeClient(
        allow=settings.allowlist(),
        resolve=resolve,
        concurrency=settings.judge_concurrency,
        max_attempts=settings.judge_max_attempts,
        deadline_s=settings.judge_timeout_seconds,
    )
    evaluator = Evaluator(tracing, judgments, JudgeRunner(client, keys, tracing, settings), clock)
    worker = RuleWorker(
        rules,
        judgments,
        tracing,
        evaluator,
        clock,
        has_operator_judge=settings.has_operator_judge,
        concurrency=settings.rule_concurrency,
        interval=settings.follow_interval_seconds,
    )
    housekeeping = Housekeeping(
        judgments, tracing, evaluator, settings.housekeeping_interval_seconds
    )
    datasets = DatasetsClient(
        settings.datasets_address, token, settings.curation_upload_timeout_seconds
    )
    curations = CurationStore(db)
    curator = Curator(
        curations, db, tracing, datasets, clock, interval=settings.follow_interval_seconds
    )
    servicer = EvalServicer(
        settings,
        judgments,
        rules,
        keys,
        tracing,
        evaluator,
        worker,
        curations,
        curator,
        clock,
        resolve,
    )

    def register(server: grpc.aio.Server) -> None:
        eval_service_pb2_grpc.add_EvalServiceServicer_to_server(servicer, server)

    async def release() -> None:
        """Held open while the server runs; closes the clients when the server stops."""
        try:
            await asyncio.Event().wait()
        finally:
            await worker.stop()
            await curator.stop()
            await client.aclose()
            await tracing.close()
            await datasets.close()

    return ServerSpec(
        name="eval",
        domain=DOMAIN,
        address=address or settings.grpc_address,
        internal_token=token,
        register=register,
        service_names=[SERVICE_NAME],
        background=[
            worker.follow_forever,
            worker.run_jobs_forever,
            curator.run_forever,
            housekeeping.forever,
            release,
        ],
    )
