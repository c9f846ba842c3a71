"""python -m services.deploy (or tunelab-deploy): serve, migrate the schema, or rotate the
encryption of the stored provider keys."""

from __future__ import annotations

import asyncio

from services.common import cli
from services.common.db import Database
from services.deploy.service import MIGRATIONS, keyring, server_spec, utc_now
from services.deploy.settings import DeploySettings
from services.deploy.store import DeploymentStore


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
    root, sub = cli.parser("tunelab-deploy", __doc__)
    keys = sub.add_parser("keys", help="provider API keys")
    keys.add_argument("action", choices=["rotate"], help="re-encrypt with the first KEK")
    args = root.parse_args()
    settings = DeploySettings()
    if not cli.run(args, settings, MIGRATIONS, server_spec):
        asyncio.run(_rotate(settings))


if __name__ == "__main__":
    main()
