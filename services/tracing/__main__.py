"""python -m services.tracing (or tunelab-tracing): serve, or migrate the schema."""

from __future__ import annotations

from services.common import cli
from services.tracing.service import MIGRATIONS, server_spec
from services.tracing.settings import TracingSettings


def main() -> None:
    root, _ = cli.parser("tunelab-tracing", __doc__)
    cli.run(root.parse_args(), TracingSettings(), MIGRATIONS, server_spec)


if __name__ == "__main__":
    main()
