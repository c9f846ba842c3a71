"""One Alembic history per service, each with its own version table, run on the async engine.

A service's migrations/env.py is two lines: it calls `run_env` with its metadata. The service
refuses to start on a stale schema (`require_current`) and names the command that fixes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from alembic import command, context
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

if TYPE_CHECKING:
    from sqlalchemy import Connection, MetaData

    from services.common.db import Database


@dataclass(frozen=True)
class Migrations:
    service: str
    directory: Path

    @property
    def version_table(self) -> str:
        return f"alembic_version_{self.service}"

    def config(self, connection: Connection | None = None) -> Config:
        cfg = Config()
        cfg.set_main_option("script_location", str(self.directory))
        cfg.attributes["version_table"] = self.version_table
        cfg.attributes["connection"] = connection
        return cfg

    def head(self) -> str:
        head = ScriptDirectory.from_config(self.config()).get_current_head()
        assert head is not None, f"{self.service} has no migrations"
        return head

    async def upgrade(self, db: Database, revision: str = "head") -> None:
        async with db.engine.begin() as conn:
            await conn.run_sync(lambda c: command.upgrade(self.config(c), revision))

    async def downgrade(self, db: Database, revision: str) -> None:
        async with db.engine.begin() as conn:
            await conn.run_sync(lambda c: command.downgrade(self.config(c), revision))

    async def current(self, db: Database) -> str | None:
        async with db.engine.connect() as conn:
            return await conn.run_sync(
                lambda c: MigrationContext.configure(
                    c, opts={"version_table": self.version_table}
                ).get_current_revision()
            )

    async def require_current(self, db: Database) -> None:
        """Exit with the fixing command when the database is not at this build's head."""
        current, head = await self.current(db), self.head()
        if current != head:
            raise SystemExit(
                f"the {self.service} database is at schema revision {current or 'none'} but this "
                f"build needs {head}: run `python -m services.{self.service} migrate upgrade` "
                f"(`make run` does it for you) and start the service again"
            )


def run_env(metadata: MetaData) -> None:
    """The body of a service's migrations/env.py."""
    config = context.config
    connection = config.attributes.get("connection")
    if connection is None:
        raise RuntimeError(
            "run migrations through the service (`tunelab-<service> migrate ...`), "
            "not the alembic command: the service supplies the connection"
        )
    context.configure(
        connection=connection,
        target_metadata=metadata,
        version_table=config.attributes["version_table"],
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()
