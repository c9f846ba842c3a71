"""Regenerate the Python code for protos/ into gen/python (`make protos`).

The output is committed. With --check (run by `make lint`, so by CI) it regenerates into a
temporary directory and fails when that differs from what is committed.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"


def googleapis_include() -> Path:
    """The directory holding google/api/*.proto, shipped by googleapis-common-protos."""
    import google.api

    return Path(next(iter(google.api.__path__))).parent.parent


def generate(out: Path) -> None:
    if out.exists():
        shutil.rmtree(out)
    (out / "tunelab").mkdir(parents=True)
    sources = sorted(str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto"))
    scripts = Path(sysconfig.get_path("scripts"))
    cmd = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"-I{PROTOS}",
        f"-I{googleapis_include()}",
        f"--plugin=protoc-gen-mypy={scripts / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={scripts / 'protoc-gen-mypy_grpc'}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--mypy_out={out}",
        f"--mypy_grpc_out={out}",
        # With comments, for the gateway's OpenAPI document.
        f"--descriptor_set_out={out / 'tunelab' / 'descriptors.binpb'}",
        "--include_source_info",
        *sources,
    ]
    done = subprocess.run(cmd, cwd=PROTOS, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"protoc failed:\n{done.stderr}")
    # Regular packages (not namespace packages), typed for mypy.
    for directory in sorted({p.parent for p in out.rglob("*.py")}):
        while directory != out:
            (directory / "__init__.py").touch()
            directory = directory.parent
    (out / "tunelab" / "py.typed").touch()


def differences(left: Path, right: Path) -> list[str]:
    compare = filecmp.dircmp(left, right, ignore=["__pycache__"])
    found = [*compare.left_only, *compare.right_only, *compare.diff_files, *compare.funny_files]
    found = [str(left / name) for name in found]
    for name in compare.common_dirs:
        found += differences(left / name, right / name)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=ROOT / "gen" / "python")
    parser.add_argument("--check", action="store_true", help="fail if --out is not up to date")
    args = parser.parse_args()
    if not args.check:
        generate(args.out)
        return
    with tempfile.TemporaryDirectory() as scratch:
        fresh = Path(scratch) / "python"
        generate(fresh)
        if drift := differences(args.out, fresh):
            sys.exit(
                "generated code is out of date with protos/ (run `make protos` and commit):\n  "
                + "\n  ".join(drift)
            )


if __name__ == "__main__":
    main()
