"""python -m services.eval (or tunelab-eval): serve, or migrate the schema."""

from __future__ import annotations

from services.common import cli
from services.eval.service import MIGRATIONS, server_spec
from services.eval.settings import EvalSettings


def main() -> None:
    root, _ = cli.parser("tunelab-eval", __doc__)
    cli.run(root.parse_args(), EvalSettings(), MIGRATIONS, server_spec)


if __name__ == "__main__":
    main()
