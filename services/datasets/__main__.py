"""python -m services.datasets (or tunelab-datasets): serve, or migrate the schema."""

from __future__ import annotations

import argparse
import asyncio

from services.common import logs
from services.common.db import Database
from services.common.metrics import serve_metrics
from services.common.server import serve
from services.datasets.service import MIGRATIONS, server_spec
from services.datasets.settings import DatasetsSettings


async def _serve(settings: DatasetsSettings) -> None:
    db = Database(settings.database_url)
    try:
        await MIGRATIONS.require_current(db)
        serve_metrics(settings.metrics_address)
        await serve(server_spec(settings, db))
    finally:
        await db.close()


async def _migrate(settings: DatasetsSettings, action: str, revision: str | None) -> None:
    db = Database(settings.database_url)
    try:
        if action == "upgrade":
            await MIGRATIONS.upgrade(db, revision or "head")
        elif action == "downgrade":
            await MIGRATIONS.downgrade(db, revision or "-1")
        print(f"datasets schema: {await MIGRATIONS.current(db) or 'empty'}")
    finally:
        await db.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="tunelab-datasets", description=__doc__)
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("serve", help="run the gRPC server (the default)")
    migrate = sub.add_parser("migrate", help="change or show the database schema")
    migrate.add_argument("action", choices=["upgrade", "downgrade", "current"])
    migrate.add_argument("revision", nargs="?", help="target (default: head, or one step down)")
    args = parser.parse_args()
    settings = DatasetsSettings()
    logs.setup(settings.log_level, settings.log_format)
    if args.command == "migrate":
        asyncio.run(_migrate(settings, args.action, args.revision))
    else:
        asyncio.run(_serve(settings))


if __name__ == "__main__":
    main()
