"""python -m services.datasets (or tunelab-datasets): serve, or migrate the schema."""

from __future__ import annotations

from services.common import cli
from services.datasets.service import MIGRATIONS, server_spec
from services.datasets.settings import DatasetsSettings


def main() -> None:
    root, _ = cli.parser("tunelab-datasets", __doc__)
    cli.run(root.parse_args(), DatasetsSettings(), MIGRATIONS, server_spec)


if __name__ == "__main__":
    main()
