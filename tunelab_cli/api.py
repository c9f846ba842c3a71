"""What every command shares: the authenticated client and how answers and errors are shown."""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
import time
from typing import Any

import httpx
import jwt

from tunelab_cli import dev


class CliError(Exception):
    pass


def mint_dev_token(user: str, ttl_seconds: int) -> str:
    secret = dev.dev_secret("jwt-secret")
    if secret is None:
        raise CliError(
            "no development signing key: run this from the project directory after `make run` "
            "has started once, or set TUNELAB_JWT_SECRET (or pass --token)"
        )
    now = int(time.time())
    claims = {"sub": user, "iat": now, "exp": now + ttl_seconds, "iss": "tunelab-dev"}
    return jwt.encode(claims, secret, algorithm="HS256")


def api_client(args: argparse.Namespace) -> httpx.Client:
    token = args.token or os.environ.get("TUNELAB_TOKEN")
    if not token:
        user = args.user or os.environ.get("TUNELAB_USER") or getpass.getuser()
        token = mint_dev_token(user, 3600)
        print(f"(acting as {user!r} with a development token)", file=sys.stderr)
    return httpx.Client(
        base_url=args.url,
        headers={"Authorization": f"Bearer {token}"},
        timeout=httpx.Timeout(30.0, read=600.0),
    )


def checked(response: httpx.Response) -> Any:
    if response.status_code >= 400:
        try:
            error = response.json()["error"]
            message = f"{error['message']} (HTTP {response.status_code}, {error['status']})"
        except (ValueError, KeyError, TypeError):
            message = f"HTTP {response.status_code}: {response.text[:200]}"
        raise CliError(message)
    return response.json() if response.content else None


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False))
