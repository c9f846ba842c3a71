"""Each service's Alembic history: up, down and up again on both backends, matching the models."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy import Connection, inspect, select, text

from services.common.db import Database
from services.common.migrations import Migrations
from services.datasets.formats import Analysis, Format
from services.datasets.models import Base
from services.datasets.service import MIGRATIONS
from services.datasets.store import DatasetStore
from services.deploy import models as deploy_models
from services.deploy import service as deploy_service
from services.eval import models as eval_models
from services.eval import service as eval_service
from services.tracing import models as tracing_models
from services.tracing import service as tracing_service
from services.tracing.prices import PriceTable
from services.tracing.store import SpanStore
from services.tracing.workers import Preparer
from tunelab.tracing.v1 import spans_pb2 as pb


def tables(conn: Connection) -> set[str]:
    return set(inspect(conn).get_table_names())


def drift(conn: Connection, migrations: Migrations = MIGRATIONS, base: Any = Base) -> list[object]:
    context = MigrationContext.configure(
        conn, opts={"compare_type": True, "version_table": migrations.version_table}
    )
    return list(compare_metadata(context, base.metadata))


@pytest.mark.parametrize(
    ("migrations", "base", "expected"),
    [
        (
            deploy_service.MIGRATIONS,
            deploy_models.Base,
            {
                "deployments",
                "deployment_events",
                "deployment_metrics",
                "deployment_log_lines",
                "provider_keys",
                "leases",
                "output_retention",
            },
        ),
        (tracing_service.MIGRATIONS, tracing_models.Base, {"spans", "span_tags"}),
        (
            eval_service.MIGRATIONS,
            eval_models.Base,
            {
                "judgments",
                "judgment_checks",
                "rules",
                "rule_jobs",
                "judge_keys",
                "curations",
                "curation_candidates",
                "curation_rows",
            },
        ),
    ],
    ids=["deploy", "tracing", "eval"],
)
async def test_other_services_up_down_up_and_no_drift(
    empty_db_url: str, migrations: Migrations, base: Any, expected: set[str]
) -> None:
    db = Database(empty_db_url)
    try:
        for _ in range(2):
            await migrations.upgrade(db)
            assert await migrations.current(db) == migrations.head()
            async with db.engine.connect() as conn:
                assert await conn.run_sync(drift, migrations, base) == []
                assert await conn.run_sync(tables) == {*expected, migrations.version_table}
            await migrations.downgrade(db, "base")
            async with db.engine.connect() as conn:
                assert await conn.run_sync(tables) <= {migrations.version_table}
    finally:
        await db.close()


async def test_up_down_up_and_no_drift(empty_db_url: str) -> None:
    db = Database(empty_db_url)
    try:
        assert await MIGRATIONS.current(db) is None
        await MIGRATIONS.upgrade(db)
        assert await MIGRATIONS.current(db) == MIGRATIONS.head()
        async with db.engine.connect() as conn:
            assert await conn.run_sync(drift) == []
            assert await conn.run_sync(tables) == {
                "datasets",
                "download_tokens",
                "download_events",
                MIGRATIONS.version_table,
            }
        await MIGRATIONS.downgrade(db, "base")
        assert await MIGRATIONS.current(db) is None
        async with db.engine.connect() as conn:
            assert await conn.run_sync(tables) <= {MIGRATIONS.version_table}
        await MIGRATIONS.upgrade(db)
        async with db.engine.connect() as conn:
            assert await conn.run_sync(drift) == []
    finally:
        await db.close()


async def test_service_refuses_a_stale_schema_and_says_how_to_fix_it(empty_db_url: str) -> None:
    db = Database(empty_db_url)
    try:
        with pytest.raises(SystemExit, match=r"python -m services\.datasets migrate upgrade"):
            await MIGRATIONS.require_current(db)
        await MIGRATIONS.upgrade(db)
        await MIGRATIONS.require_current(db)
    finally:
        await db.close()


async def test_rows_survive_a_downgrade_and_upgrade(empty_db_url: str) -> None:
    db = Database(empty_db_url)
    try:
        await MIGRATIONS.upgrade(db)
        store = DatasetStore(db)
        now = datetime.now(UTC)
        dataset = await store.create_dataset(
            owner="alice",
            name="t.jsonl",
            analysis=Analysis(Format.TEXT, 1),
            size_bytes=10,
            sha256="0" * 64,
            blob_key="a" * 32,
            now=now,
        )
        minted = await store.create_token(
            "alice", dataset.id, ttl=timedelta(hours=1), max_uses=2, now=now
        )
        await MIGRATIONS.downgrade(db, "0001")
        await MIGRATIONS.upgrade(db)
        assert await store.get_dataset("alice", dataset.id) == dataset
        tokens = await store.list_tokens("alice", dataset.id, 10, "")
        assert tokens.items == [minted.token]
    finally:
        await db.close()


async def test_tracing_spans_and_tags_survive_a_downgrade_and_upgrade(empty_db_url: str) -> None:
    """0002's downgrade drops a column of `spans`: on SQLite that must not copy the table, whose
    old copy's DROP would delete every span's tags (ON DELETE CASCADE)."""
    db = Database(empty_db_url)
    store = SpanStore(db, PriceTable.load(None), Preparer(PriceTable.load(None), 0))
    now = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
    stamp = Timestamp()
    stamp.FromDatetime(now)
    scored = pb.Span(
        trace_id="t",
        span_id="s",
        timing=pb.Timing(start_time=stamp),
        tags=["prod", "exp-1"],
        evaluation=pb.Evaluation(eval_score=0.5),
    )
    try:
        await tracing_service.MIGRATIONS.upgrade(db)
        assert await store.ingest("alice", [scored], 0, lambda: now) == []
        await tracing_service.MIGRATIONS.downgrade(db, "0001")
        async with db.engine.connect() as conn:
            columns = await conn.run_sync(
                lambda c: {col["name"] for col in inspect(c).get_columns("spans")}
            )
            assert "eval_score" not in columns
            assert (await conn.execute(text("SELECT count(*) FROM span_tags"))).scalar() == 2
        await tracing_service.MIGRATIONS.upgrade(db)
        (kept,) = await store.trace("alice", "t")
        assert list(kept.tags) == ["prod", "exp-1"]
        async with db.session() as session:
            # Not backfilled: spans stored before 0002 carry no score column value.
            assert (await session.scalar(select(tracing_models.SpanRow.eval_score))) is None
    finally:
        await db.close()
