"""The generated pod bootstrap script: shellcheck-clean and injection-proof whatever the values."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from services.deploy.pod import render, stack

SHELLCHECK = str(Path(sys.executable).parent / "shellcheck")
HOSTILE = [
    "plain",
    "it's",
    'say "hi"',
    "$(touch {marker})",
    "`touch {marker}`",
    "line one\nline two; touch {marker}",
    "${{IFS}}$HOME \\ !! *",
    "'; touch {marker}; echo '",
]
TRAINERS = {
    "tiny": render.trainer("tiny"),
    "trl": render.gpu_trainer(),
}


def script(value: str, trainer: render.Trainer) -> str:
    return render.render(
        render.Bootstrap(
            deployment_id=value,
            api_url=f"https://example.com/{value}",
            dataset_sha256=value,
            dataset_size=123,
            config={"method": "sft", "base_model": value, "note": value},
            trainer=trainer,
        )
    )


@pytest.mark.parametrize("provider", sorted(TRAINERS))
@pytest.mark.parametrize("value", HOSTILE)
def test_every_variant_passes_shellcheck(tmp_path: Path, provider: str, value: str) -> None:
    path = tmp_path / "bootstrap.sh"
    path.write_text(script(value.format(marker=tmp_path / "pwned"), TRAINERS[provider]))
    checked = subprocess.run([SHELLCHECK, str(path)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout


@pytest.mark.parametrize("value", HOSTILE)
def test_values_reach_the_script_as_text_never_as_code(tmp_path: Path, value: str) -> None:
    value = value.format(marker=tmp_path / "pwned")
    text = script(value, TRAINERS["tiny"])
    # Run the script's value block, then print the values back.
    header = text[: text.index(': "${TUNELAB_JOB_TOKEN')]
    probe = header + (
        'printf "%s\\0" "$DEPLOYMENT_ID" "$DATASET_SHA256" "$API_URL" "$CONFIG_JSON"\n'
    )
    done = subprocess.run(["bash", "-c", probe], capture_output=True, cwd=tmp_path, check=True)
    deployment_id, sha, api_url, config = done.stdout.decode().split("\0")[:4]
    assert deployment_id == value
    assert sha == value
    assert api_url == f"https://example.com/{value}"
    assert json.loads(config)["note"] == value
    assert not (tmp_path / "pwned").exists()


def test_the_script_embeds_its_files_verbatim() -> None:
    text = script("dep_x", TRAINERS["trl"])
    for _, source in TRAINERS["trl"].files:
        assert source.rstrip("\n") in text
    assert "trl==0.24.0" in text
    assert stack.constraints().rstrip("\n") in text


def test_the_launch_command_unpacks_and_runs_the_packed_script(tmp_path: Path) -> None:
    env = {
        "PATH": os.environ["PATH"],
        "TUNELAB_WORK_DIR": str(tmp_path / "work"),
        render.PACKED_ENV: render.pack('echo "ran in $PWD with ${TUNELAB_BOOTSTRAP:-no} copy"\n'),
    }
    done = subprocess.run(
        render.launch_command(), env=env, cwd=tmp_path, capture_output=True, text=True, check=True
    )
    # The packed copy is dropped from the environment before the script runs.
    assert done.stdout.strip() == f"ran in {tmp_path} with no copy"
    assert (tmp_path / "work" / "bootstrap.sh").exists()
