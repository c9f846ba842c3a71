"""The suite `make up` runs in containers, as the e2e tests marked `containers` see it.

What a test reads of a running suite (its logs, its stored objects, a local pod's directory and
processes) is read here through podman: the containers' logs, the deploy container's volume
(the tests run as root, as `make up` does), and Python run inside the containers.
"""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import uuid
from pathlib import Path
from typing import Any

import httpx

from scripts import up
from scripts.podman import podman as run_podman
from scripts.podman import tool
from tests.e2e.conftest import Suite, process_group


def podman(*args: str) -> str:
    return run_podman(*args, timeout=60).stdout


def inside(service: str, code: str, *args: str) -> Any:
    """Run Python in a service's container and read the JSON it prints."""
    return json.loads(podman("exec", f"tunelab-{service}", "python", "-c", code, *args))


LIST_OBJECTS = """
import json, os, sys, botocore.session
client = botocore.session.get_session().create_client(
    "s3", endpoint_url=os.environ[sys.argv[1] + "_S3_ENDPOINT_URL"])
bucket, prefix = os.environ[sys.argv[1] + "_S3_BUCKET"], os.environ[sys.argv[1] + "_S3_PREFIX"]
pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
print(json.dumps(sorted(o["Key"] for p in pages for o in p.get("Contents", []))))
"""

# The host's own reading of /proc (conftest.process_group), run inside the deploy container.
PROCESS_GROUP = (
    "import json, sys\nfrom pathlib import Path\n"
    + inspect.getsource(process_group)
    + "print(json.dumps(process_group(int(sys.argv[1]))))\n"
)


class ContainerSuite(Suite):
    """Its data outlives a test run (volumes), so each run's users are new ones: alice of this
    run sees nothing of the last run's alice (her rules would judge its traces first)."""

    run: str = ""

    def token(self, user: str, ttl: int = 600, **claims: object) -> str:
        return super().token(f"{user}-{self.run}", ttl, **claims)

    @classmethod
    def running(cls) -> ContainerSuite:
        """The suite `make up` started; a clear failure if it is not up."""
        project = up.load()
        gateway = project.services["gateway"].spec
        port = gateway["ports"][0].rsplit(":", 1)[0].rsplit(":", 1)[1]
        url = f"http://127.0.0.1:{port}"
        try:
            ready = httpx.get(f"{url}/readyz", timeout=5).status_code == 200
        except httpx.HTTPError:
            ready = False
        assert ready, f"no suite answers at {url}/readyz: run `make images up` first"
        volume = podman("volume", "inspect", "--format={{.Mountpoint}}", project.volume("deploy"))
        made = cls(
            url=url,
            env=dict(os.environ),
            var=Path(volume.strip()),
            database_url="",
            processes={},
            jwt_secret=gateway["environment"]["TUNELAB_JWT_SECRET"],
        )
        made.run = uuid.uuid4().hex[:8]
        return made

    def logs(self) -> str:
        names = podman("ps", "--all", "--format={{.Names}}", "--filter=name=^tunelab-")
        return "".join(
            subprocess.run(
                [tool(), "logs", name],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                check=False,
            ).stdout
            for name in names.split()
        )

    def blobs(self, service: str = "datasets") -> list[str]:
        found: list[str] = inside(service, LIST_OBJECTS, f"TUNELAB_{service.upper()}")
        return found

    def process_group(self, group: int) -> list[int]:
        found: list[int] = inside("deploy", PROCESS_GROUP, str(group))
        return found
