"""Run `buf lint` on protos/ (`make lint`).

Our protos import google/api/*.proto; buf cannot fetch them (no network to the Buf registry),
so they are copied from the googleapis-common-protos wheel, which ships them, into
.build/proto-deps: a module of buf.yaml that is not linted.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import google.api

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    source = Path(next(iter(google.api.__path__)))
    target = ROOT / ".build" / "proto-deps" / "google" / "api"
    target.mkdir(parents=True, exist_ok=True)
    for name in ("annotations.proto", "http.proto", "field_behavior.proto"):
        shutil.copyfile(source / name, target / name)
    sys.exit(
        subprocess.run([str(ROOT / "node_modules" / ".bin" / "buf"), "lint"], cwd=ROOT).returncode
    )


if __name__ == "__main__":
    main()
