"""What every service's `python -m services.<name>` does: serve, or migrate the schema."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable
from typing import Protocol, TypeVar

from services.common import logs
from services.common.db import Database
from services.common.metrics import serve_metrics
from services.common.migrations import Migrations
from services.common.server import ServerSpec, serve


class ServiceSettings(Protocol):
    @property
    def database_url(self) -> str: ...
    @property
    def metrics_address(self) -> str: ...
    @property
    def log_level(self) -> str: ...
    @property
    def log_format(self) -> str: ...


S = TypeVar("S", bound=ServiceSettings)


def parser(
    prog: str, description: str | None
) -> tuple[argparse.ArgumentParser, argparse._SubParsersAction[argparse.ArgumentParser]]:
    """The parser with `serve` and `migrate`; add a service's own commands to the second item
    (the subparsers)."""
    root = argparse.ArgumentParser(prog=prog, description=description)
    sub = root.add_subparsers(dest="command")
    sub.add_parser("serve", help="run the gRPC server (the default)")
    migrate = sub.add_parser("migrate", help="change or show the database schema")
    migrate.add_argument("action", choices=["upgrade", "downgrade", "current"])
    migrate.add_argument("revision", nargs="?", help="target (default: head, or one step down)")
    return root, sub


def run(
    args: argparse.Namespace,
    settings: S,
    migrations: Migrations,
    build: Callable[[S, Database], ServerSpec],
) -> bool:
    """Run `serve` or `migrate`; False when the command is the service's own to run."""
    logs.setup(settings.log_level, settings.log_format)
    if args.command == "migrate":
        asyncio.run(_migrate(settings, migrations, args.action, args.revision))
    elif args.command in (None, "serve"):
        asyncio.run(_serve(settings, migrations, build))
    else:
        return False
    return True


async def _serve(
    settings: S, migrations: Migrations, build: Callable[[S, Database], ServerSpec]
) -> None:
    db = Database(settings.database_url)
    try:
        await migrations.require_current(db)
        serve_metrics(settings.metrics_address)
        await serve(build(settings, db))
    finally:
        await db.close()


async def _migrate(
    settings: ServiceSettings, migrations: Migrations, action: str, revision: str | None
) -> None:
    db = Database(settings.database_url)
    try:
        if action == "upgrade":
            await migrations.upgrade(db, revision or "head")
        elif action == "downgrade":
            await migrations.downgrade(db, revision or "-1")
        current = await migrations.current(db)
        print(f"{migrations.service} schema: {current or 'empty'}")
    finally:
        await db.close()
