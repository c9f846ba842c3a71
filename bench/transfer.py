"""Transfer benchmark: a large JSONL dataset up and down through the gateway, on each storage
backend, against the limit of that backend measured in the same run.

local:  upload   curl -T FILE -X POST /v1/datasets   vs   curl -T FILE (PUT) to nginx's dav module
        download curl of a minted download URL         vs   curl of the same blob file from nginx
s3:     upload   curl -T FILE -X POST /v1/datasets   vs   curl -T FILE to a presigned PUT URL
                                                          straight to SeaweedFS
        download curl of a minted download URL         vs   curl of a presigned GET URL of the
                                                          same object straight from SeaweedFS
Both sides write to / read from the same disk; runs alternate between them, medians reported.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Protocol

import httpx

from bench import dataset
from bench.suite import BenchError, Nginx, Suite

RESULTS = Path(__file__).resolve().parent / "results"
MIB = 1 << 20


class Reference(Protocol):
    """The limit a backend sets: the same transfers without tunelab in the way."""

    name: str

    def blobs(self) -> set[str]:
        """The stored blobs (to find the one an upload made)."""
        ...

    def put(self, path: Path, run: int, timeout: float) -> float:
        """Store the file directly; bytes/s."""
        ...

    def url(self, blob: str) -> str:
        """Where the stored blob can be fetched directly."""
        ...


class NginxReference:
    name = "nginx"

    def __init__(self, suite: Suite, nginx: Nginx) -> None:
        self._suite = suite
        self._nginx = nginx

    def blobs(self) -> set[str]:
        return {str(p.relative_to(self._nginx.files)) for p in self._suite.blobs()}

    def put(self, path: Path, run: int, timeout: float) -> float:
        target = f"upload/run-{run}.jsonl"
        status, speed = _curl(
            ["-o", "/dev/null", "-T", str(path), f"{self._nginx.url}/{target}"],
            "speed_upload",
            timeout,
        )
        _expect(status, 201, "nginx PUT")
        stored = self._nginx.dav / target
        if stored.stat().st_size != path.stat().st_size:
            raise BenchError(
                f"nginx stored {stored.stat().st_size} bytes, not {path.stat().st_size}"
            )
        stored.unlink()  # a fresh file each run, as the gateway makes
        return speed

    def url(self, blob: str) -> str:
        return f"{self._nginx.url}/files/{blob}"


class S3Reference:
    name = "seaweedfs"

    def __init__(self, client: Any, bucket: str, prefix: str) -> None:
        self._client = client  # a botocore S3 client
        self._bucket = bucket
        self._prefix = prefix

    def blobs(self) -> set[str]:
        pages = self._client.get_paginator("list_objects_v2").paginate(
            Bucket=self._bucket, Prefix=self._prefix
        )
        return {item["Key"] for page in pages for item in page.get("Contents", [])}

    def put(self, path: Path, run: int, timeout: float) -> float:
        key = f"reference/run-{run}.jsonl"
        url = self._client.generate_presigned_url(
            "put_object", Params={"Bucket": self._bucket, "Key": key}, ExpiresIn=3600
        )
        status, speed = _curl(["-o", "/dev/null", "-T", str(path), url], "speed_upload", timeout)
        _expect(status, 200, "SeaweedFS presigned PUT")
        head = self._client.head_object(Bucket=self._bucket, Key=key)
        if head["ContentLength"] != path.stat().st_size:
            raise BenchError(f"SeaweedFS stored {head['ContentLength']} bytes")
        self._client.delete_object(Bucket=self._bucket, Key=key)
        return speed

    def url(self, blob: str) -> str:
        url: str = self._client.generate_presigned_url(
            "get_object", Params={"Bucket": self._bucket, "Key": blob}, ExpiresIn=3600
        )
        return url


def _curl(args: list[str], variable: str, timeout: float) -> tuple[int, float]:
    """(HTTP status, curl's average speed in bytes/s) of one transfer."""
    result = subprocess.run(
        ["curl", "-sS", "-w", f"%{{http_code}} %{{{variable}}}", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if result.returncode != 0:
        raise BenchError(f"curl {' '.join(args)} failed: {result.stderr.strip()}")
    status, speed = result.stdout.split()
    return int(status), float(speed)


def _expect(status: int, wanted: int, what: str) -> None:
    if status != wanted:
        raise BenchError(f"{what}: HTTP {status}, expected {wanted}")


def _check_dataset(body: dict[str, Any], data: dataset.Dataset) -> None:
    """The service must have stored exactly the bytes (and rows) we sent."""
    got = (body.get("sha256"), int(body.get("size_bytes", -1)), int(body.get("row_count", -1)))
    if got != (data.sha256, data.size_bytes, data.rows):
        raise BenchError(
            f"upload stored the wrong data: sha256, size, rows = {got}, "
            f"expected {(data.sha256, data.size_bytes, data.rows)}"
        )


def upload(
    suite: Suite, ref: Reference, data: dataset.Dataset, runs: int, token: str, tmp: Path
) -> tuple[dict[str, Any], str, str]:
    """Median MB/s of each side; the id and stored blob of the last dataset uploaded."""
    timeout = 120 + data.size_bytes / 2e6
    gateway: list[float] = []
    baseline: list[float] = []
    dataset_id, blob = "", ""
    reply = tmp / "upload.json"
    for run in range(runs):
        before = ref.blobs()
        status, speed = _curl(
            [
                "-o", str(reply), "-T", str(data.path), "-X", "POST",
                f"{suite.url}/v1/datasets?name=bench-{run}.jsonl",
                "-H", f"Authorization: Bearer {token}",
            ],
            "speed_upload",
            timeout,
        )  # fmt: skip
        if status != 201:
            raise BenchError(f"gateway upload: HTTP {status}: {reply.read_text()[:500]}")
        body = json.loads(reply.read_text())
        _check_dataset(body, data)
        gateway.append(speed / 1e6)
        dataset_id = body["id"]
        new = ref.blobs() - before
        if len(new) != 1:
            raise BenchError(f"expected one new blob after the upload, found {len(new)}")
        blob = new.pop()
        baseline.append(ref.put(data.path, run, timeout) / 1e6)
    return _figures(gateway, baseline, ref.name), dataset_id, blob


def download(
    suite: Suite, ref: Reference, data: dataset.Dataset, dataset_id: str, blob: str, runs: int
) -> dict[str, Any]:
    timeout = 120 + data.size_bytes / 2e6
    token = suite.token()
    response = httpx.post(
        f"{suite.url}/v1/datasets/{dataset_id}/download-tokens",
        json={"max_uses": runs + 2, "ttl_seconds": 7200},
        headers={"Authorization": f"Bearer {token}"},
    )
    if response.status_code != 201:
        raise BenchError(f"minting a download token: HTTP {response.status_code}: {response.text}")
    url = response.json()["url"]

    _verify_download(url, data, timeout)
    urls = {"gateway": url, ref.name: ref.url(blob)}
    speeds: dict[str, list[float]] = {"gateway": [], ref.name: []}
    for run in range(runs + 1):
        for side, address in urls.items():
            status, speed = _curl(["-o", "/dev/null", address], "speed_download", timeout)
            _expect(status, 200, f"{side} download")
            if run:  # the first round warms up
                speeds[side].append(speed / 1e6)
    return _figures(speeds["gateway"], speeds[ref.name], ref.name)


def _verify_download(url: str, data: dataset.Dataset, timeout: float) -> None:
    """Once, uncounted: the gateway must serve exactly the bytes we uploaded."""
    digest = hashlib.sha256()
    size = 0
    with httpx.stream("GET", url, timeout=httpx.Timeout(30.0, read=timeout)) as response:
        if response.status_code != 200:
            raise BenchError(f"gateway download: HTTP {response.status_code}")
        for chunk in response.iter_bytes(dataset.CHUNK):
            digest.update(chunk)
            size += len(chunk)
    if (digest.hexdigest(), size) != (data.sha256, data.size_bytes):
        raise BenchError(
            f"gateway served {size} bytes with sha256 {digest.hexdigest()}, "
            f"expected {data.size_bytes} with {data.sha256}"
        )


def _figures(gateway: list[float], baseline: list[float], reference: str) -> dict[str, Any]:
    medians = statistics.median(gateway), statistics.median(baseline)
    return {
        "reference": reference,
        "gateway_mb_s": round(medians[0], 1),
        "reference_mb_s": round(medians[1], 1),
        "ratio": round(medians[0] / medians[1], 3),
        "gateway_runs_mb_s": [round(s, 1) for s in gateway],
        "reference_runs_mb_s": [round(s, 1) for s in baseline],
    }


def table(results: dict[str, Any]) -> str:
    lines = [
        f"transfer benchmark: {results['size_bytes'] / MIB:.0f} MiB JSONL "
        f"({results['rows']:,} rows), {results['runs']} runs, medians "
        f"(upload floor: sha256+parse in-process {results['floor_mb_s']:.0f} MB/s)"
    ]
    for storage, figures in results["storage"].items():
        for way in ("upload", "download"):
            f = figures[way]
            lines.append(
                f"{storage:5} {way:8}  gateway {f['gateway_mb_s']:7.1f} MB/s   "
                f"{f['reference']:9} {f['reference_mb_s']:7.1f} MB/s   ratio {f['ratio']:.2f}"
            )
        rss = figures["peak_rss_mib"]
        lines.append(
            f"{storage:5} peak RSS  "
            + "  ".join(f"{name} {mib:.0f} MiB" for name, mib in rss.items())
        )
    return "\n".join(lines)


def run(args: argparse.Namespace, tmp: Path, stack: contextlib.ExitStack) -> dict[str, Any]:
    size = args.size_mib * MIB
    print(f"writing a {args.size_mib} MiB JSONL dataset ...", flush=True)
    data = dataset.make(tmp / "train.jsonl", size, seed=args.seed)

    floors = []
    for _ in range(args.runs):
        speed, digest, rows = dataset.floor(data.path)
        if (digest, rows) != (data.sha256, data.rows):
            raise BenchError("the dataset changed on disk while being measured")
        floors.append(speed)

    figures = {}
    for storage in args.storage:
        with contextlib.ExitStack() as inner:
            suite, ref = _start(storage, tmp / storage, inner)
            print(f"{storage}: uploading, {args.runs} runs each ...", flush=True)
            up, dataset_id, blob = upload(suite, ref, data, args.runs, suite.token(), tmp)
            print(f"{storage}: downloading, {args.runs} runs each after a warm-up ...", flush=True)
            down = download(suite, ref, data, dataset_id, blob, args.runs)
            rss = {k: round(v, 1) for k, v in suite.peak_rss_mib().items()}
            figures[storage] = {"upload": up, "download": down, "peak_rss_mib": rss}
    return {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "cpus": os.cpu_count(),
        "size_bytes": data.size_bytes,
        "rows": data.rows,
        "sha256": data.sha256,
        "runs": args.runs,
        "floor_mb_s": round(statistics.median(floors), 1),
        "storage": figures,
    }


def _start(storage: str, root: Path, stack: contextlib.ExitStack) -> tuple[Suite, Reference]:
    """The suite on `storage`, and that storage's reference."""
    if storage == "local":
        suite = Suite(root / "suite")
        stack.callback(_keep_log, suite, storage)
        stack.callback(suite.stop)
        suite.start()
        nginx = Nginx(root / "nginx", suite.storage / "objects")
        stack.callback(nginx.stop)
        nginx.start()
        return suite, NginxReference(suite, nginx)
    from tunelab_cli.seaweed import SeaweedFS

    seaweed = SeaweedFS(root / "seaweedfs")
    stack.callback(seaweed.stop)
    seaweed.start()
    bucket = "bench"
    seaweed.create_bucket(bucket)
    suite = Suite(root / "suite", env=seaweed.storage_env(bucket))
    stack.callback(_keep_log, suite, storage)
    stack.callback(suite.stop)
    suite.start()
    return suite, S3Reference(seaweed.client(), bucket, "datasets/")


def _keep_log(suite: Suite, storage: str) -> None:
    """Keep the suite's log (WARNING and up) beside the results; say if it has anything."""
    if not suite.log_path.exists():
        return
    RESULTS.mkdir(exist_ok=True)
    kept = RESULTS / f"transfer-suite-{storage}.log"
    shutil.copyfile(suite.log_path, kept)
    lines = kept.read_text(errors="replace").splitlines()
    noteworthy = [line for line in lines if re.search(r" (WARNING|ERROR|CRITICAL) ", line)]
    if noteworthy:
        print(f"note: the suite logged {len(noteworthy)} warnings or errors; see {kept}:")
        for line in noteworthy[:5]:
            print(f"  {line[:200]}")


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--size-mib", type=int, default=1024, help="dataset size (default 1024)")
    parser.add_argument("--runs", type=int, default=3, help="measured runs per side (default 3)")
    parser.add_argument("--seed", type=int, default=1234, help="random seed of the dataset")
    parser.add_argument(
        "--storage",
        choices=["local", "s3"],
        action="append",
        help="the backend(s) to measure (default: both; repeat the flag for several)",
    )
    return parser


def _interrupt(signum: int, _: object) -> None:
    raise KeyboardInterrupt  # so that a SIGTERM cleans up as Ctrl-C does


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    args.storage = args.storage or ["local", "s3"]
    if args.size_mib < 1 or args.runs < 1:
        print("bench: --size-mib and --runs must be positive", file=sys.stderr)
        return 2
    if shutil.which("curl") is None:
        print("bench: curl is needed (apt-get install curl)", file=sys.stderr)
        return 1
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        with contextlib.ExitStack() as stack:
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tunelab-bench-")))
            results = run(args, tmp, stack)
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench: interrupted; cleaned up", file=sys.stderr)
        return 130
    print(table(results))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "transfer.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"(figures in {RESULTS / 'transfer.json'})")
    return 0
