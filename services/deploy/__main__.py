"""python -m services.deploy (or tunelab-deploy): serve, migrate the schema, or rotate keys."""

from __future__ import annotations

import argparse
import asyncio

from services.common import logs
from services.common.db import Database
from services.common.metrics import serve_metrics
from services.common.server import serve
from services.deploy.service import MIGRATIONS, keyring, server_spec, utc_now
from services.deploy.settings import DeploySettings
from services.deploy.store import DeploymentStore


async def _serve(settings: DeploySettings) -> None:
    db = Database(settings.database_url)
    try:
        await MIGRATIONS.require_current(db)
        serve_metrics(settings.metrics_address)
        await serve(server_spec(settings, db))
    finally:
        await db.close()


async def _migrate(settings: DeploySettings, action: str, revision: str | None) -> None:
    db = Database(settings.database_url)
    try:
        if action == "upgrade":
            await MIGRATIONS.upgrade(db, revision or "head")
        elif action == "downgrade":
            await MIGRATIONS.downgrade(db, revision or "-1")
        print(f"deploy schema: {await MIGRATIONS.current(db) or 'empty'}")
    finally:
        await db.close()


async def _rotate(settings: DeploySettings) -> None:
    ring = keyring(settings)
    db = Database(settings.database_url)
    try:
        await MIGRATIONS.require_current(db)
        count = await DeploymentStore(db).rotate_keys(ring.rotate, utc_now())
        print(f"re-encrypted {count} provider keys with the first key-encryption key")
    finally:
        await db.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="tunelab-deploy", description=__doc__)
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("serve", help="run the gRPC server and the supervisor (the default)")
    migrate = sub.add_parser("migrate", help="change or show the database schema")
    migrate.add_argument("action", choices=["upgrade", "downgrade", "current"])
    migrate.add_argument("revision", nargs="?", help="target (default: head, or one step down)")
    keys = sub.add_parser("keys", help="provider API keys")
    keys.add_argument("action", choices=["rotate"], help="re-encrypt with the first KEK")
    args = parser.parse_args()
    settings = DeploySettings()
    logs.setup(settings.log_level, settings.log_format)
    if args.command == "migrate":
        asyncio.run(_migrate(settings, args.action, args.revision))
    elif args.command == "keys":
        asyncio.run(_rotate(settings))
    else:
        asyncio.run(_serve(settings))


if __name__ == "__main__":
    main()
