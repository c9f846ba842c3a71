"""Fixtures shared by every test: databases on both backends, and test identities.

Every database test runs on SQLite and on PostgreSQL. PostgreSQL must be reachable (at
TUNELAB_TEST_PG_URL, by default the local server with trust auth): if it is not, those tests
fail, they are not skipped, so CI cannot pass while testing one backend only.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from services.common import context
from services.common.db import Database
from services.common.migrations import Migrations
from services.datasets.service import MIGRATIONS
from tests.podman_api import Unavailable, podman_api

PG_ADMIN_URL = os.environ.get(
    "TUNELAB_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
BACKENDS = ["sqlite", "postgresql"]
# Where the services under test keep their bytes: a directory, or S3 on a real SeaweedFS.
STORAGES = ["local", "s3"]
INTERNAL_TOKEN = "test-internal-token-" + "x" * 32

os.environ.setdefault("TUNELAB_LOG_FORMAT", "text")

# S3 storage on a real SeaweedFS: s3_server, s3_config, private_s3_server.
pytest_plugins = ["tests.s3_fixtures"]


class PgDatabases:
    """Creates PostgreSQL databases for tests from migrated templates, and drops them after."""

    def __init__(self) -> None:
        self.admin = make_url(PG_ADMIN_URL)
        self.created: list[str] = []
        self.templates: dict[str, str] = {}

    def _execute(self, *statements: str) -> None:
        async def run() -> None:
            conn = await asyncpg.connect(
                host=self.admin.host,
                port=self.admin.port or 5432,
                user=self.admin.username,
                password=self.admin.password,
                database=self.admin.database,
            )
            try:
                for statement in statements:
                    await conn.execute(statement)
            finally:
                await conn.close()

        asyncio.run(run())

    def url(self, name: str) -> str:
        return self.admin.set(database=name).render_as_string(hide_password=False)

    def fresh(self, migrations: Migrations | None) -> str:
        """A new database; migrated to head when `migrations` is given."""
        name = f"tunelab_test_{secrets.token_hex(6)}"
        if migrations is None:
            self._execute(f'CREATE DATABASE "{name}"')
        else:
            template = self.templates.get(migrations.service)
            if template is None:
                template = f"tunelab_tmpl_{migrations.service}_{secrets.token_hex(4)}"
                self._execute(f'CREATE DATABASE "{template}"')
                self.created.append(template)
                asyncio.run(_migrate(migrations, self.url(template)))
                self.templates[migrations.service] = template
            self._execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
        self.created.append(name)
        return self.url(name)

    def drop_all(self) -> None:
        self._execute(*(f'DROP DATABASE IF EXISTS "{n}" WITH (FORCE)' for n in self.created))


async def _migrate(migrations: Migrations, url: str) -> None:
    db = Database(url)
    try:
        await migrations.upgrade(db)
    finally:
        await db.close()


@pytest.fixture(scope="session")
def pg() -> Iterator[PgDatabases]:
    databases = PgDatabases()
    try:
        databases._execute("SELECT 1")
    except OSError as exc:
        pytest.fail(
            f"PostgreSQL is not reachable at {PG_ADMIN_URL} ({exc}); start it "
            "(pg_ctlcluster ... main start) or set TUNELAB_TEST_PG_URL"
        )
    yield databases
    databases.drop_all()


@pytest.fixture(scope="session")
def docker_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """DOCKER_HOST of a Podman API service for the session (tests/podman_api.py), with the
    container pods' image built; the tests that need one are skipped, saying why, only where
    none can be started."""
    try:
        with podman_api(tmp_path_factory.mktemp("podman")) as host:
            yield host
    except Unavailable as exc:
        pytest.skip(f"no Docker-compatible API can be started on this machine: {exc}")


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("templates") / "datasets.db"
    asyncio.run(_migrate(MIGRATIONS, f"sqlite:///{path}"))
    return path


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(params=STORAGES)
def storage(request: pytest.FixtureRequest) -> str:
    """The blob backend of the services a test starts: "local" or "s3" (tests/s3_fixtures.py's
    session server). A test about the local filesystem parametrizes it itself, to local only,
    with the reason (tests/contract/conftest.py's local_only)."""
    return str(request.param)


@pytest.fixture
def datasets_db_url(backend: str, tmp_path: Path, pg: PgDatabases, sqlite_template: Path) -> str:
    """A fresh datasets database at the head revision, on the test's backend."""
    if backend == "postgresql":
        return pg.fresh(MIGRATIONS)
    path = tmp_path / "datasets.db"
    shutil.copyfile(sqlite_template, path)
    return f"sqlite:///{path}"


@pytest.fixture
def empty_db_url(backend: str, tmp_path: Path, pg: PgDatabases) -> str:
    """A fresh, empty database on the test's backend."""
    if backend == "postgresql":
        return pg.fresh(None)
    return f"sqlite:///{tmp_path / 'empty.db'}"


@pytest.fixture(autouse=True)
def _fresh_request_context() -> Iterator[None]:
    """Each test starts with no request id and no calling user: a value one test sets must not
    ride along on another test's outbound calls."""
    tokens = (context.request_id.set(""), context.caller.set(""))
    yield
    context.request_id.reset(tokens[0])
    context.caller.reset(tokens[1])


def new_user() -> str:
    return f"user-{secrets.token_hex(4)}"
