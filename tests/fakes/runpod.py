"""A fake RunPod built from RunPod's published contracts, not from our client's assumptions.

It serves the REST v2 operations the deploy service uses (pods, their logs, the GPU catalog, pod
billing) and the GraphQL subset it still needs (spot pods), over a real socket (uvicorn in a
background thread), so a service in another process can use it too. Every request is checked
against `tests/fixtures/runpod/` (RunPod's v2 OpenAPI document and the GraphQL subset; see
SOURCE.md): a body or query that breaks the contract is answered 422 with RunPod's `errors` list,
as RunPod does, and recorded in `violations`. Every answer is checked against the same document
before it is sent, so the fake cannot drift into serving what the document does not say.
`strict_reading()` also records each read by the client of a field the schema does not define.
Tests end with `check()`: no violation of either side may have happened.

    with FakeRunPod() as fake, fake.strict_reading():
        provider = RunPodProvider(fake.api_key, rest_url=fake.url, graphql_url=fake.graphql_url)

Tests read the state (`pods`, `requests`) and inject faults (`fail_next`, `rate_limit_next`,
`delay_next`, `fail_next_create_after_creating`, `deny_pool`, `balance_usd`); every fault is
one-shot, consumed by the next request(s) it matches.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import socket
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

import graphql
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from tests.fakes.runpod_schema import GraphQLSchema, OpenApi, Operation, strict_reading

# The text RunPod gives when a GPU type has no free machine (a 400 on REST v2, an error on
# GraphQL); SkyPilot and dstack match on "no longer any instances available".
NO_INSTANCES = (
    "There are no longer any instances available with the requested specifications. "
    "Please refresh and try again."
)
PROBLEM = "application/problem+json"
JSON = "application/json"

# id -> what the catalog and GraphQL say of it. Prices per GPU and hour; None: not offered.
DEFAULT_GPU_TYPES: dict[str, dict[str, Any]] = {
    "NVIDIA H100 80GB HBM3": {
        "name": "H100 SXM",
        "memory": 80,
        "secure": 2.99,
        "community": 2.69,
        "secure_spot": 1.75,
        "community_spot": 1.5,
        "cuda": ["12.4", "12.8", "13.0"],
    },
    "NVIDIA A100 80GB PCIe": {
        "name": "A100 PCIe",
        "memory": 80,
        "secure": 1.64,
        "community": 1.19,
        "secure_spot": 0.82,
        "community_spot": 0.6,
        "cuda": ["12.2", "12.4", "12.8"],
    },
    "NVIDIA RTX A6000": {
        "name": "RTX A6000",
        "memory": 48,
        "secure": 0.76,
        "community": 0.49,
        "secure_spot": 0.38,
        "community_spot": 0.25,
        "cuda": ["12.4", "12.8"],
    },
    "NVIDIA GeForce RTX 4090": {
        "name": "RTX 4090",
        "memory": 24,
        "secure": 0.69,
        "community": None,
        "secure_spot": 0.35,
        "community_spot": None,
        "cuda": ["12.1", "12.2"],
    },
}


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    query: str
    json: Any
    authorization: str | None

    @property
    def url(self) -> str:
        return f"{self.path}?{self.query}" if self.query else self.path


@dataclass(frozen=True)
class _Failure:
    status: int
    retry_after: float | None = None
    reset: int | None = None  # the RateLimit header's t=, for 429
    only: str | None = None  # "METHOD /path" prefix the request must match, e.g. "POST /v2/pods"


def _cuda(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class FakeRunPod:
    openapi = OpenApi()
    graphql_schema = GraphQLSchema()

    def __init__(
        self,
        api_keys: Iterable[str] = ("rpa_" + "K" * 40,),
        *,
        gpu_types: Mapping[str, Mapping[str, Any]] | None = None,
        capacity: Mapping[str, int] | None = None,
        port: int = 0,
    ) -> None:
        self.api_keys = list(api_keys)
        self.gpu_types = {k: dict(v) for k, v in (gpu_types or DEFAULT_GPU_TYPES).items()}
        self._initial_capacity = dict(capacity or {})
        self._port = port
        self._lock = threading.RLock()  # answers are checked (and violations noted) under it
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.reset()
        self._app = Starlette(
            routes=[
                Route("/v2/pods", self._pods_route, methods=["GET", "POST"]),
                Route("/v2/pods/{id}", self._pod_route, methods=["GET", "DELETE"]),
                Route("/v2/pods/{id}/logs", self._logs_route, methods=["GET"]),
                Route("/v2/catalog/gpus", self._catalog_route, methods=["GET"]),
                Route("/v2/billing/pods", self._billing_route, methods=["GET"]),
                Route("/graphql", self._graphql_route, methods=["POST"]),
                Route("/{path:path}", self._unknown_route, methods=["GET", "POST", "DELETE"]),
            ]
        )

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def api_key(self) -> str:
        return self.api_keys[0]

    @property
    def base(self) -> str:
        if self._server is None:
            raise RuntimeError("FakeRunPod is not started")
        return f"http://127.0.0.1:{self._port}"

    @property
    def url(self) -> str:
        return f"{self.base}/v2"

    @property
    def graphql_url(self) -> str:
        return f"{self.base}/graphql"

    def start(self) -> FakeRunPod:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self._port))
        self._port = sock.getsockname()[1]
        config = uvicorn.Config(
            self._app,
            log_config=None,
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=1,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name="fake-runpod", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("FakeRunPod did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> FakeRunPod:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @contextmanager
    def strict_reading(self) -> Iterator[None]:
        """Record every read by an in-process client of a field RunPod's schema lacks."""
        with strict_reading(self.base, self.openapi, self.violations):
            yield

    def check(self) -> None:
        """Fail if any request, answer or read broke RunPod's published contract."""
        with self._lock:
            found, self.violations[:] = list(self.violations), []
        assert not found, "RunPod's contract was broken:\n" + "\n".join(found)

    # -- state and faults, for tests -------------------------------------------------------

    def reset(self) -> None:
        """Forget pods, requests, faults and violations (tests can share one server)."""
        with self._lock:
            self.pods: dict[str, dict[str, Any]] = {}
            self.requests: list[RecordedRequest] = []
            self.logs: dict[str, list[str]] = {}
            self.billed: dict[str, float] = {}
            self.violations: list[str] = []
            self.capacity = {gpu: 8 for gpu in self.gpu_types} | self._initial_capacity
            # GPU types whose pool this account may not use (403 on create).
            self.denied_pools: set[str] = set()
            # None: enough; else a create costing more than this per hour answers 402.
            self.balance_usd: float | None = None
            self._failures: list[_Failure] = []
            self._delays: list[float] = []
            self._create_faults: list[tuple[int | None, float]] = []
            self._bids: dict[str, float] = {}

    def set_capacity(self, gpu_type: str, gpus: int) -> None:
        with self._lock:
            self.capacity[gpu_type] = gpus

    def deny_pool(self, gpu_type: str) -> None:
        with self._lock:
            self.denied_pools.add(gpu_type)

    def set_status(self, pod_id: str, status: str) -> None:
        with self._lock:
            pod = self.pods[pod_id]
            pod["status"] = status
            if status == "RUNNING" and pod["startedAt"] is None:
                pod["startedAt"] = _now()
            if status in ("EXITED", "TERMINATED"):
                pod["cost"] = 0.0  # as documented: 0.0 when EXITED or TERMINATED
            pod["actions"] = _actions(status)

    def exit(self, pod_id: str) -> None:
        """The pod's container stopped (v2 says nothing of how)."""
        self.set_status(pod_id, "EXITED")

    def remove(self, pod_id: str) -> None:
        """Make RunPod forget a pod entirely (GET answers 404)."""
        with self._lock:
            self.pods.pop(pod_id, None)

    def add_pod(self, name: str, *, gpu_type: str = "NVIDIA A100 80GB PCIe", **fields: Any) -> str:
        """A pod made outside the code under test (e.g. by an earlier process)."""
        with self._lock:
            pod = self._new_pod(name, "img", gpu_type, 1, "SECURE", {}, "", 20, None)
            pod.update(fields)
            return str(pod["id"])

    def live_pods(self, name: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            return [
                pod
                for pod in self.pods.values()
                if pod["status"] != "TERMINATED" and (name is None or pod["name"] == name)
            ]

    def spot_bid(self, pod_id: str) -> float | None:
        return self._bids.get(pod_id)

    def fail_next(self, n: int = 1, status: int = 503, *, only: str | None = None) -> None:
        """The next n requests (matching `only`, e.g. "POST /v2/pods") answer `status`."""
        with self._lock:
            self._failures += [_Failure(status, only=only)] * n

    def rate_limit_next(
        self,
        n: int = 1,
        retry_after: float | None = 1,
        reset: int | None = None,
        *,
        only: str | None = None,
    ) -> None:
        """429s with problem+json, `Retry-After` (if given) and `RateLimit` (t=reset, else
        retry_after)."""
        with self._lock:
            self._failures += [_Failure(429, retry_after, reset, only)] * n

    def delay_next(self, seconds: float, n: int = 1) -> None:
        with self._lock:
            self._delays += [seconds] * n

    def fail_next_create_after_creating(self, status: int | None = 500, delay: float = 0.0) -> None:
        """The next create makes the pod, then waits `delay` and answers `status` (None: the
        normal answer, e.g. to arrive after the client's timeout)."""
        with self._lock:
            self._create_faults.append((status, delay))

    # -- the HTTP side ---------------------------------------------------------------------

    async def _prelude(self, request: Request) -> tuple[Operation | None, Any, Response | None]:
        """Record and check the request; answer 401, 422 or an injected fault, or None to go
        on."""
        raw = await request.body()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode(errors="replace")
        auth = request.headers.get("authorization")
        path = request.url.path
        operation = self.openapi.operation(request.method, path)
        with self._lock:
            self.requests.append(
                RecordedRequest(request.method, path, request.url.query, body, auth)
            )
        if auth not in {f"Bearer {key}" for key in self.api_keys}:
            return operation, body, self._problem(operation, 401, "missing bearer token")
        if operation is not None:
            problems = self.openapi.check_request(operation, request.url.query, body, bool(raw))
            if problems:
                with self._lock:
                    self.violations.extend(f"{operation.id} request: {p}" for p in problems)
                return (
                    operation,
                    body,
                    self._problem(operation, 422, "Request validation failed.", errors=problems),
                )
        with self._lock:
            delay = self._delays.pop(0) if self._delays else 0.0
            target = f"{request.method} {path}"
            failure = next(
                (f for f in self._failures if f.only is None or target.startswith(f.only)), None
            )
            if failure is not None:
                self._failures.remove(failure)
        if delay:
            await asyncio.sleep(delay)
        if failure is None:
            return operation, body, None
        if failure.status != 429:
            return operation, body, self._problem(operation, failure.status, "injected failure")
        headers = {"RateLimit-Policy": '"minute";q=100;w=60'}
        wait = failure.reset if failure.reset is not None else failure.retry_after
        if wait is not None:
            headers["RateLimit"] = f'"minute";r=0;t={int(wait)}'
        if failure.retry_after is not None:
            headers["Retry-After"] = f"{failure.retry_after:g}"
        return (
            operation,
            body,
            self._problem(
                operation, 429, "rate limit exceeded for the minute window", headers=headers
            ),
        )

    def _answer(
        self,
        operation: Operation | None,
        status: int,
        body: Any = None,
        *,
        media: str = JSON,
        headers: Mapping[str, str] | None = None,
    ) -> Response:
        """An answer, checked against what the document says of this operation and status."""
        if operation is not None:
            try:
                problems = self.openapi.check_response(operation, status, media, body)
            except AssertionError as error:
                problems = [str(error)]
            if problems:
                with self._lock:
                    self.violations.extend(f"{operation.id} {status} answer: {p}" for p in problems)
        content = b"" if body is None else json.dumps(body).encode()
        return Response(content, status, headers=dict(headers or {}), media_type=media)

    def _problem(
        self,
        operation: Operation | None,
        status: int,
        detail: str,
        *,
        errors: list[str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Response:
        titles = {400: "Bad Request", 401: "Unauthorized", 402: "Payment Required"}
        titles |= {403: "Forbidden", 404: "Not Found", 409: "Conflict", 422: "Unprocessable Entity"}
        titles |= {429: "Too Many Requests", 500: "Internal Server Error"}
        titles |= {503: "Service Unavailable"}
        body: dict[str, Any] = {
            "title": titles.get(status, "Error"),
            "status": status,
            "detail": detail,
        }
        if errors:
            body["errors"] = errors
        return self._answer(operation, status, body, media=PROBLEM, headers=headers)

    async def _unknown_route(self, request: Request) -> Response:
        with self._lock:
            self.violations.append(
                f"{request.method} {request.url.path}: not an operation of RunPod's API"
            )
        return self._problem(None, 404, "route not found")

    async def _pods_route(self, request: Request) -> Response:
        operation, body, early = await self._prelude(request)
        if early is not None:
            return early
        if request.method == "GET":
            with self._lock:
                pods = [dict(p) for p in self.pods.values() if p["status"] != "TERMINATED"]
            return self._answer(operation, 200, {"pods": pods})
        return await self._create(operation, body)

    async def _create(self, operation: Operation | None, body: dict[str, Any]) -> Response:
        gpu = body.get("gpu")
        if not isinstance(gpu, dict):
            return self._problem(operation, 400, "exactly one of gpu or cpu must be set")
        gpu_id, count = gpu["id"], int(gpu.get("count", 1))
        cloud = body.get("cloud", "SECURE")
        offer = self.gpu_types.get(gpu_id)
        if offer is None:
            return self._problem(operation, 400, f"unknown GPU type {gpu_id!r}")
        if gpu.get("allowedCudaVersions") and "minCudaVersion" in gpu:
            return self._problem(
                operation, 400, "allowedCudaVersions and minCudaVersion are mutually exclusive"
            )
        if gpu_id in self.denied_pools:
            return self._problem(operation, 403, "access denied")
        hourly = (offer.get(cloud.lower()) or 0.0) * count
        if self.balance_usd is not None and self.balance_usd < hourly:
            return self._problem(operation, 402, "insufficient balance")
        hosts = offer.get("cuda", [])
        if floor := gpu.get("minCudaVersion"):
            hosts = [v for v in hosts if _cuda(v) >= _cuda(floor)]
        if allowed := gpu.get("allowedCudaVersions"):
            hosts = [v for v in hosts if v in allowed]
        with self._lock:
            if (
                offer.get(cloud.lower()) is None
                or self.capacity.get(gpu_id, 0) < count
                or not hosts
            ):
                return self._problem(operation, 400, NO_INSTANCES)
            pod = self._new_pod(
                body["name"], body["image"], gpu_id, count, cloud, body.get("env") or {},
                body.get("args") or "", body.get("disk") or 20, None,
            )  # fmt: skip
            pod["cudaVersion"] = hosts[-1]
            pod["ports"] = body.get("ports") or []
            fault = self._create_faults.pop(0) if self._create_faults else None
        if fault is not None:
            status, delay = fault
            await asyncio.sleep(delay)
            if status is not None:
                return self._problem(operation, status, "internal error")
        return self._answer(operation, 201, dict(pod))

    async def _pod_route(self, request: Request) -> Response:
        operation, _, early = await self._prelude(request)
        if early is not None:
            return early
        pod_id = request.path_params["id"]
        with self._lock:
            pod = self.pods.get(pod_id)
            if pod is None or (request.method == "DELETE" and pod["status"] == "TERMINATED"):
                return self._problem(operation, 404, "pod not found")
            if request.method == "GET":
                return self._answer(operation, 200, dict(pod))
            self._terminate(pod)
        return self._answer(operation, 204)

    async def _logs_route(self, request: Request) -> Response:
        operation, _, early = await self._prelude(request)
        if early is not None:
            return early
        pod_id = request.path_params["id"]
        tail = int(request.query_params.get("tail") or 100)
        with self._lock:
            if pod_id not in self.pods:
                return self._problem(operation, 404, "pod not found")
            lines = list(self.logs.get(pod_id, []))[-tail:] if tail else []
        if operation is not None:
            self.openapi.response_schema(operation, 200, "text/event-stream")  # documented

        async def events() -> Any:
            for number, line in enumerate(lines, 1):
                stamp = _now()
                data = {"ts": stamp, "source": "container", "line": line}
                yield f"id: {stamp}/{number:012d}\ndata: {json.dumps(data)}\n\n"
            await asyncio.sleep(30)  # a live stream stays open: the client decides when to stop

        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        return StreamingResponse(events(), media_type="text/event-stream", headers=headers)

    async def _catalog_route(self, request: Request) -> Response:
        operation, _, early = await self._prelude(request)
        if early is not None:
            return early
        query = request.query_params
        include = query.get("include", "")
        if bool(include) != bool(query.get("product")):
            return self._problem(operation, 400, "product is required with include, and only")
        floor = query.get("minCudaVersion")
        gpus = []
        with self._lock:
            for gpu_id, offer in self.gpu_types.items():
                item: dict[str, Any] = {
                    "id": gpu_id,
                    "name": offer["name"],
                    "pool": None,
                    "manufacturer": "NVIDIA",
                    "memory": offer["memory"],
                    "secure": offer.get("secure") is not None,
                    "community": offer.get("community") is not None,
                    "price": {
                        "secure": offer.get("secure") or 0.0,
                        "community": offer.get("community") or 0.0,
                    },
                    "maxCount": {"secure": 8, "community": 4},
                }
                if include:
                    count = int(query.get("count") or 1)
                    cloud = (query.get("cloud") or "SECURE").lower()
                    offered = offer.get(cloud) is not None and self.capacity.get(gpu_id, 0) >= count
                    free = self.capacity.get(gpu_id, 0) if offered else 0
                    versions = [
                        v for v in offer.get("cuda", []) if not floor or _cuda(v) >= _cuda(floor)
                    ]
                    item["availability"] = "HIGH" if free >= 4 else "LOW" if free else "NONE"
                    item["cudaVersions"] = [{"version": v, "available": free > 0} for v in versions]
                gpus.append(item)
        return self._answer(operation, 200, {"gpus": gpus})

    async def _billing_route(self, request: Request) -> Response:
        operation, _, early = await self._prelude(request)
        if early is not None:
            return early
        query = request.query_params
        pod_id = query.get("podId")
        start = query.get("startTime") or "2026-01-01T00:00:00Z"
        end = query.get("endTime") or _now()
        bucket = query.get("bucketSize") or "day"
        with self._lock:
            billed = {k: v for k, v in self.billed.items() if pod_id is None or k == pod_id}
        records = [
            {
                "startTime": start,
                "endTime": end,
                "podId": pid,
                "totalAmount": amount,
                "gpuAmount": amount,
                "cpuAmount": 0.0,
                "diskAmount": 0.0,
            }
            for pid, amount in billed.items()
        ]
        total = sum(billed.values())
        amounts = {"totalAmount": total, "gpuAmount": total, "cpuAmount": 0.0, "diskAmount": 0.0}
        metadata = {
            "query": {"startTime": start, "endTime": end, "bucketSize": bucket, "podId": pod_id},
            "recordCount": len(records),
            "uniquePodCount": len(billed),
            "totals": amounts,
        }
        return self._answer(operation, 200, {"records": records, "metadata": metadata})

    # -- GraphQL ---------------------------------------------------------------------------

    async def _graphql_route(self, request: Request) -> Response:
        _, body, early = await self._prelude(request)
        if early is not None:
            message = "Unauthorized" if early.status_code == 401 else "Something went wrong"
            return _graphql_answer({"errors": [{"message": message}]}, early.status_code)
        if not isinstance(body, dict) or not isinstance(body.get("query"), str):
            with self._lock:
                self.violations.append("graphql request: no query")
            return _graphql_answer({"errors": [{"message": "Must provide query string."}]}, 400)
        document, problems = self.graphql_schema.check(body["query"])
        if document is None or problems:
            with self._lock:
                self.violations.extend(f"graphql request: {p}" for p in problems)
            return _graphql_answer({"errors": [{"message": p} for p in problems]}, 400)
        state: dict[str, Any] = {"fault": None}
        result = await graphql.graphql(
            self.graphql_schema.schema,
            body["query"],
            root_value=_Root(self, state),
            variable_values=body.get("variables"),
        )
        if fault := state["fault"]:
            status, delay = fault
            await asyncio.sleep(delay)
            if status is not None:
                return _graphql_answer({"errors": [{"message": "Something went wrong"}]}, status)
        answer: dict[str, Any] = {"data": result.data}
        if unexecuted := [e.message for e in result.errors or () if e.path is None]:
            # No path: the request itself was wrong (a variable of the wrong type, say), not
            # RunPod's answer to it.
            with self._lock:
                self.violations.extend(f"graphql request: {m}" for m in unexecuted)
        if result.errors:
            answer["errors"] = [{"message": e.message, "path": e.path} for e in result.errors]
        return _graphql_answer(answer, 200)

    def _gpu_type_object(self, gpu_id: str, offer: Mapping[str, Any]) -> dict[str, Any]:
        def lowest_price(_info: Any, input: Mapping[str, Any] | None = None) -> dict[str, Any]:
            secure = (input or {}).get("secureCloud", True)
            spot = offer.get("secure_spot" if secure else "community_spot")
            return {
                "minimumBidPrice": spot,
                "uninterruptablePrice": offer.get("secure" if secure else "community"),
                "stockStatus": "High" if self.capacity.get(gpu_id, 0) else None,
            }

        return {
            "id": gpu_id,
            "displayName": offer["name"],
            "memoryInGb": offer["memory"],
            "secureCloud": offer.get("secure") is not None,
            "communityCloud": offer.get("community") is not None,
            "securePrice": offer.get("secure"),
            "communityPrice": offer.get("community"),
            "secureSpotPrice": offer.get("secure_spot"),
            "communitySpotPrice": offer.get("community_spot"),
            "lowestPrice": lowest_price,
        }

    def _rent_spot(self, spot: Mapping[str, Any], state: dict[str, Any]) -> dict[str, Any]:
        gpu_id, count = spot["gpuTypeId"], int(spot["gpuCount"])
        cloud = spot.get("cloudType") or "ALL"
        offer = self.gpu_types.get(gpu_id)
        if offer is None:
            raise graphql.GraphQLError(f"Unknown GPU type {gpu_id}")
        floor = offer.get("community_spot" if cloud == "COMMUNITY" else "secure_spot")
        if floor is None:
            raise graphql.GraphQLError(NO_INSTANCES)
        if float(spot["bidPerGpu"]) < floor:
            raise graphql.GraphQLError(f"Your bid of ${spot['bidPerGpu']} is below ${floor}")
        with self._lock:
            if self.capacity.get(gpu_id, 0) < count:
                raise graphql.GraphQLError(NO_INSTANCES)
            env = {item["key"]: item["value"] for item in spot.get("env") or []}
            pod = self._new_pod(
                spot.get("name") or "", spot["imageName"], gpu_id, count,
                "COMMUNITY" if cloud == "COMMUNITY" else "SECURE", env,
                spot.get("dockerArgs") or "", spot.get("containerDiskInGb") or 20,
                float(spot["bidPerGpu"]),
            )  # fmt: skip
            state["fault"] = self._create_faults.pop(0) if self._create_faults else None
        return {
            "id": pod["id"],
            "name": pod["name"],
            "imageName": pod["image"],
            "env": [f"{k}={v}" for k, v in env.items()],
            "desiredStatus": "RUNNING",
            "costPerHr": pod["cost"],
        }

    # -- under the lock --------------------------------------------------------------------

    def _new_pod(
        self,
        name: str,
        image: str,
        gpu_id: str,
        count: int,
        cloud: str,
        env: Mapping[str, str],
        args: str,
        disk: int,
        bid: float | None,
    ) -> dict[str, Any]:
        offer = self.gpu_types.get(gpu_id, {})
        per_gpu = bid if bid is not None else offer.get(cloud.lower()) or 0.0
        pod: dict[str, Any] = {
            "id": secrets.token_hex(7),
            "name": name,
            "status": "PROVISIONING",
            "actions": _actions("PROVISIONING"),
            "image": image,
            "args": args,
            "disk": disk,
            "mounts": {},
            "ports": [],
            "env": dict(env),
            "registry": None,
            "gpu": {"id": gpu_id, "count": count},
            "cloud": cloud,
            "dataCenterId": "US-KS-2",
            "cudaVersion": (offer.get("cuda") or [None])[-1],
            "ssh": {"proxy": None, "direct": None},
            "template": None,
            "cost": round(per_gpu * count, 4),
            "locked": False,
            "runtime": None,
            "createdAt": _now(),
            "startedAt": None,
            "globalNetworking": {"enabled": False},
        }
        if bid is not None:
            self._bids[pod["id"]] = bid
        self.capacity[gpu_id] = self.capacity.get(gpu_id, 0) - count
        self.pods[pod["id"]] = pod
        return pod

    def _terminate(self, pod: dict[str, Any]) -> None:
        pod["status"] = "TERMINATED"
        pod["cost"] = 0.0
        pod["actions"] = []
        gpu = pod["gpu"]
        self.capacity[gpu["id"]] = self.capacity.get(gpu["id"], 0) + gpu["count"]


class _Root:
    """GraphQL's root value: the fields of Query and Mutation that the subset declares."""

    def __init__(self, fake: FakeRunPod, state: dict[str, Any]) -> None:
        self._fake, self._state = fake, state

    def gpuTypes(self, _info: Any, input: Mapping[str, Any] | None = None) -> list[Any]:
        wanted = (input or {}).get("id")
        return [
            self._fake._gpu_type_object(gpu_id, offer)
            for gpu_id, offer in self._fake.gpu_types.items()
            if wanted in (None, gpu_id)
        ]

    def podRentInterruptable(self, _info: Any, input: Mapping[str, Any]) -> dict[str, Any]:
        return self._fake._rent_spot(input, self._state)


def _actions(status: str) -> list[str]:
    return {
        "PROVISIONING": ["stop", "terminate"],
        "STARTING": ["stop", "terminate"],
        "RUNNING": ["stop", "restart", "terminate"],
        "EXITED": ["start", "terminate"],
        "ERROR": ["terminate"],
    }.get(status, [])


def _graphql_answer(body: Mapping[str, Any], status: int) -> Response:
    return Response(json.dumps(body), status, media_type=JSON)
