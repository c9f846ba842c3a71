"""Keys for judge endpoints, stored encrypted per user (services/common/keyring.py)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, select

from services.common.db import Database
from services.common.errors import invalid_argument, not_found
from services.common.keyring import KeyRing, last4, valid_api_key
from services.eval.models import JudgeKeyRow
from services.eval.plan import KEY_NAME
from tunelab.eval.v1 import eval_service_pb2 as api

KEK_VARIABLE = "TUNELAB_EVAL_KEYS_KEK"


def checked_name(name: str) -> str:
    if not KEY_NAME.fullmatch(name):
        raise invalid_argument("name", "a key's name is 1 to 64 characters of a-z, 0-9, _ and -")
    return name


class JudgeKeys:
    def __init__(self, db: Database, keyring: KeyRing) -> None:
        self.db = db
        self.keyring = keyring

    async def set(self, owner: str, name: str, api_key: str, now: datetime) -> None:
        checked_name(name)
        if not valid_api_key(api_key):
            raise invalid_argument(
                "api_key", "api_key must be 8 to 512 printable characters without spaces"
            )
        ciphertext = self.keyring.encrypt(api_key)
        async with self.db.session(write=True) as session:
            row = await session.get(JudgeKeyRow, (owner, name))
            if row is None:
                session.add(
                    JudgeKeyRow(
                        owner=owner,
                        name=name,
                        ciphertext=ciphertext,
                        last4=last4(api_key),
                        updated_at=now,
                    )
                )
            else:
                row.ciphertext, row.last4, row.updated_at = ciphertext, last4(api_key), now

    async def list_keys(self, owner: str) -> list[api.JudgeKey]:
        query = select(JudgeKeyRow).where(JudgeKeyRow.owner == owner).order_by(JudgeKeyRow.name)
        async with self.db.session() as session:
            rows = (await session.scalars(query)).all()
        found = []
        for row in rows:
            key = api.JudgeKey(name=row.name, last4=row.last4)
            key.updated_at.FromDatetime(row.updated_at)
            found.append(key)
        return found

    async def delete(self, owner: str, name: str) -> None:
        async with self.db.session(write=True) as session:
            result = await session.execute(
                delete(JudgeKeyRow).where(
                    JudgeKeyRow.owner == owner, JudgeKeyRow.name == checked_name(name)
                )
            )
        if not result.rowcount:  # type: ignore[attr-defined]
            raise not_found("judge key", name)

    async def plaintext(self, owner: str, name: str) -> str | None:
        """The key, decrypted for one call; None when the owner has none of that name."""
        async with self.db.session() as session:
            row = await session.get(JudgeKeyRow, (owner, name))
        return None if row is None else self.keyring.decrypt(row.ciphertext)
