"""README's table of environment variables is the one the settings classes generate."""

from __future__ import annotations

from scripts import env_table


def test_the_readme_table_is_current() -> None:
    assert env_table.main(["--check"]) == 0, "run python scripts/env_table.py"


def test_a_stale_table_is_caught() -> None:
    readme = env_table.README.read_text()
    stale = readme.replace("| `TUNELAB_DEPLOY_LOCAL_API_URL` |", "| `TUNELAB_DEPLOY_OLD_URL` |")
    assert stale != readme
    assert env_table.replaced(stale) == readme


def test_every_setting_is_listed_with_who_reads_it() -> None:
    listed = {key: readers for key, readers, _, _ in env_table.rows()}
    assert listed["`TUNELAB_INTERNAL_TOKEN`"] == [
        "datasets",
        "deploy",
        "tracing",
        "eval",
        "gateway",
    ]
    assert listed["`TUNELAB_DATASETS_GRPC_ADDRESS`"] == ["datasets", "deploy", "eval"]
    assert listed["`TUNELAB_JWT_SECRET`"] == ["gateway"]
    # A secret's default is never printed, even where it has one.
    assert all(default in ("none", "(secret)") for key, _, default, _ in env_table.rows()
               if "KEK" in key or "SECRET" in key or "API_KEY" in key)  # fmt: skip
