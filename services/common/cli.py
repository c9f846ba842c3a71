"""What every service's `python -m services.<name>` does: serve, or migrate the schema."""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Callable
from typing import Protocol, TypeVar

from sqlalchemy.exc import SQLAlchemyError

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
    migrate.add_argument(
        "action",
        choices=["upgrade", "downgrade", "current", "wait"],
        help="wait: until another process (a Kubernetes Job) has brought the schema to this "
        "build's head, for an init container that holds a rollout until its migration ran",
    )
    migrate.add_argument("revision", nargs="?", help="target (default: head, or one step down)")
    migrate.add_argument(
        "--timeout",
        type=float,
        default=600.0,
        help="wait: give up (exit 1) after this many seconds (default 600)",
    )
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
        if args.action == "wait":
            asyncio.run(_wait(settings, migrations, args.timeout))
        else:
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


async def _wait(settings: ServiceSettings, migrations: Migrations, seconds: float) -> None:
    """Return once the schema is at this build's head; exit 1 after `seconds`.

    A database that is not reachable yet counts as not migrated yet: in a cluster the init
    container often starts before the database's Service answers.
    """
    head, deadline = migrations.head(), time.monotonic() + seconds
    db = Database(settings.database_url)
    try:
        while True:
            try:
                current: str | None = await migrations.current(db)
            except (OSError, SQLAlchemyError) as exc:
                current = f"unreachable ({type(exc).__name__})"
            if current == head:
                print(f"{migrations.service} schema: {head}", flush=True)
                return
            if time.monotonic() >= deadline:
                raise SystemExit(
                    f"the {migrations.service} schema is {current or 'empty'}, not {head}, after "
                    f"{seconds:g} s: has its migration (`migrate upgrade`) run?"
                )
            await asyncio.sleep(2)
    finally:
        await db.close()
