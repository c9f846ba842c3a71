"""A fake RunPod: the REST v2 pod routes and the GraphQL subset the deploy service uses.

It serves over a real socket (uvicorn in a background thread), so a test can point a service
running in another process at `fake.url` / `fake.graphql_url`. Tests read its state (`pods`,
`requests`) and inject faults (`fail_next`, `rate_limit_next`, `delay_next`,
`fail_next_create_after_creating`); every fault is one-shot, consumed by the next request(s).

    with FakeRunPod() as fake:
        provider = RunPodProvider(fake.api_key, rest_url=fake.url, graphql_url=fake.graphql_url)

Shapes follow RunPod's documentation: errors are RFC 9457 problem documents on REST and
{"errors": [{"message"}]} with HTTP 200 on GraphQL, where no capacity reads `NO_INSTANCES`.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import socket
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

NO_INSTANCES = (
    "There are no longer any instances available with the requested specifications. "
    "Please refresh and try again."
)
PROBLEM = "application/problem+json"

# id -> the GraphQL gpuTypes fields; prices per GPU and hour, None where not offered.
DEFAULT_GPU_TYPES: dict[str, dict[str, Any]] = {
    "NVIDIA H100 80GB HBM3": {
        "displayName": "H100 SXM",
        "memoryInGb": 80,
        "securePrice": 2.99,
        "communityPrice": 2.69,
        "secureSpotPrice": 1.75,
        "communitySpotPrice": 1.5,
    },
    "NVIDIA A100 80GB PCIe": {
        "displayName": "A100 PCIe",
        "memoryInGb": 80,
        "securePrice": 1.64,
        "communityPrice": 1.19,
        "secureSpotPrice": 0.82,
        "communitySpotPrice": 0.6,
    },
    "NVIDIA RTX A6000": {
        "displayName": "RTX A6000",
        "memoryInGb": 48,
        "securePrice": 0.76,
        "communityPrice": 0.49,
        "secureSpotPrice": 0.38,
        "communitySpotPrice": 0.25,
    },
    "NVIDIA GeForce RTX 4090": {
        "displayName": "RTX 4090",
        "memoryInGb": 24,
        "securePrice": 0.69,
        "communityPrice": None,
        "secureSpotPrice": 0.35,
        "communitySpotPrice": None,
    },
}

_CREATE_FIELDS = {
    "name", "image", "gpu", "cpu", "cloud", "env", "ports", "args", "disk", "dataCenterIds",
    "templateId", "mounts", "registry",
}  # fmt: skip
_CLOUDS = {"SECURE", "COMMUNITY"}
_ACTIONS = {"start", "stop", "restart", "terminate"}


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


class FakeRunPod:
    def __init__(
        self,
        api_keys: Iterable[str] = ("rpa_" + "K" * 40,),
        *,
        gpu_types: Mapping[str, Mapping[str, Any]] | None = None,
        capacity: Mapping[str, int] | None = None,
        capacity_status: int = 409,
        page_size: int | None = None,
        port: int = 0,
    ) -> None:
        self.api_keys = list(api_keys)
        self.gpu_types = {k: dict(v) for k, v in (gpu_types or DEFAULT_GPU_TYPES).items()}
        self._settings = (dict(capacity or {}), capacity_status, page_size)
        self._port = port
        self._lock = threading.Lock()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.reset()
        self._app = Starlette(
            routes=[
                Route("/v2/pods", self._pods_route, methods=["GET", "POST"]),
                Route("/v2/pods/{id}", self._pod_route, methods=["GET", "DELETE"]),
                Route("/v2/pods/{id}/action", self._action_route, methods=["POST"]),
                Route("/v2/pods/{id}/logs", self._logs_route, methods=["GET"]),
                Route("/graphql", self._graphql_route, methods=["POST"]),
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

    # -- state and faults, for tests -------------------------------------------------------

    def reset(self) -> None:
        """Forget pods, requests and faults, and restore the constructor's settings (so that
        tests can share one server)."""
        capacity, capacity_status, page_size = self._settings
        with self._lock:
            # How RunPod's REST API answers "no instances": its status is not documented.
            self.capacity_status = capacity_status
            # None: GET /v2/pods answers a plain array; else pages of {"data", "nextCursor"}.
            self.page_size = page_size
            self.pods: dict[str, dict[str, Any]] = {}
            self.requests: list[RecordedRequest] = []
            self.logs: dict[str, list[str]] = {}
            self.capacity = {gpu: 8 for gpu in self.gpu_types} | capacity
            self._failures: list[_Failure] = []
            self._delays: list[float] = []
            self._create_faults: list[tuple[int | None, float]] = []

    def set_capacity(self, gpu_type: str, gpus: int) -> None:
        with self._lock:
            self.capacity[gpu_type] = gpus

    def set_status(self, pod_id: str, status: str) -> None:
        with self._lock:
            self.pods[pod_id]["status"] = status

    def exit(self, pod_id: str, exit_code: int = 0) -> None:
        with self._lock:
            self.pods[pod_id]["status"] = "EXITED"
            self.pods[pod_id]["exitCode"] = exit_code

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

    async def _prelude(self, request: Request) -> tuple[Any, Response | None]:
        """Record the request; answer 401 or an injected fault, or None to go on."""
        raw = await request.body()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode(errors="replace")
        auth = request.headers.get("authorization")
        with self._lock:
            self.requests.append(
                RecordedRequest(request.method, request.url.path, request.url.query, body, auth)
            )
            if auth not in {f"Bearer {key}" for key in self.api_keys}:
                return body, _problem(request, 401, "Missing or invalid API key")
            delay = self._delays.pop(0) if self._delays else 0.0
            target = f"{request.method} {request.url.path}"
            failure = next(
                (f for f in self._failures if f.only is None or target.startswith(f.only)), None
            )
            if failure is not None:
                self._failures.remove(failure)
        if delay:
            await asyncio.sleep(delay)
        if failure is None:
            return body, None
        if failure.status != 429:
            return body, _problem(request, failure.status, "Injected failure")
        headers = {"RateLimit-Policy": '"minute";q=100;w=60'}
        wait = failure.reset if failure.reset is not None else failure.retry_after
        if wait is not None:
            headers["RateLimit"] = f'"minute";r=0;t={int(wait)}'
        if failure.retry_after is not None:
            headers["Retry-After"] = f"{failure.retry_after:g}"
        return body, _problem(request, 429, "Rate limit exceeded", headers=headers)

    async def _pods_route(self, request: Request) -> Response:
        body, early = await self._prelude(request)
        if early is not None:
            return early
        if request.method == "GET":
            return self._list(request)
        return await self._create(request, body)

    def _list(self, request: Request) -> Response:
        with self._lock:
            pods = [_public(p) for p in self.pods.values() if p["status"] != "TERMINATED"]
        if self.page_size is None:
            return JSONResponse(pods)
        start = int(request.query_params.get("cursor") or 0)
        end = start + self.page_size
        return JSONResponse(
            {"data": pods[start:end], "nextCursor": str(end) if end < len(pods) else None}
        )

    async def _create(self, request: Request, body: Any) -> Response:
        if problem := _invalid_create(body, self.gpu_types):
            return _problem(request, 400, problem)
        gpu_id, count = body["gpu"]["id"], int(body["gpu"].get("count", 1))
        with self._lock:
            if self.capacity.get(gpu_id, 0) < count:
                return _problem(request, self.capacity_status, NO_INSTANCES)
            pod = self._new_pod(
                body["name"], body["image"], gpu_id, count, body.get("cloud", "SECURE"),
                body.get("env") or {}, body.get("args") or "", body.get("disk") or 20, None,
            )  # fmt: skip
            pod["ports"] = body.get("ports") or []
            fault = self._create_faults.pop(0) if self._create_faults else None
        if fault is not None:
            status, delay = fault
            await asyncio.sleep(delay)
            if status is not None:
                return _problem(request, status, "Internal error")
        return JSONResponse(_public(pod), status_code=201)

    async def _pod_route(self, request: Request) -> Response:
        _, early = await self._prelude(request)
        if early is not None:
            return early
        pod_id = request.path_params["id"]
        with self._lock:
            pod = self.pods.get(pod_id)
            if pod is None or (request.method == "DELETE" and pod["status"] == "TERMINATED"):
                return _problem(request, 404, f"Pod {pod_id} not found")
            if request.method == "GET":
                return JSONResponse(_public(pod))
            self._terminate(pod)
        return Response(status_code=204)

    async def _action_route(self, request: Request) -> Response:
        body, early = await self._prelude(request)
        if early is not None:
            return early
        action = body.get("action") if isinstance(body, dict) else None
        if action not in _ACTIONS:
            return _problem(request, 400, f"action must be one of {sorted(_ACTIONS)}")
        with self._lock:
            pod = self.pods.get(request.path_params["id"])
            if pod is None:
                return _problem(request, 404, "Pod not found")
            status = pod["status"]
            allowed = {
                "terminate": status != "TERMINATED",
                "stop": status in {"PROVISIONING", "STARTING", "RUNNING"},
                "start": status == "EXITED",
                "restart": status == "RUNNING",
            }[action]
            if not allowed:
                return _problem(request, 409, f"Cannot {action} a pod that is {status}")
            if action == "terminate":
                self._terminate(pod)
            else:
                pod["status"] = "EXITED" if action == "stop" else "STARTING"
            return JSONResponse(_public(pod))

    async def _logs_route(self, request: Request) -> Response:
        _, early = await self._prelude(request)
        if early is not None:
            return early
        with self._lock:
            if request.path_params["id"] not in self.pods:
                return _problem(request, 404, "Pod not found")
            lines = list(self.logs.get(request.path_params["id"], []))

        async def events() -> Any:
            for line in lines:
                yield f"event: log\ndata: {json.dumps({'line': line})}\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    async def _graphql_route(self, request: Request) -> Response:
        body, early = await self._prelude(request)
        if early is not None:
            if early.status_code == 401:
                return JSONResponse({"errors": [{"message": "Unauthorized"}]}, status_code=401)
            return early
        query = body.get("query", "") if isinstance(body, dict) else ""
        variables = (body.get("variables") if isinstance(body, dict) else None) or {}
        if "podRentInterruptable" in query:
            return await self._rent_spot(variables.get("input"))
        if "gpuTypes" in query:
            return JSONResponse({"data": {"gpuTypes": self._gpu_types_data()}})
        return JSONResponse({"errors": [{"message": "Unknown operation"}]}, status_code=400)

    async def _rent_spot(self, spec: Any) -> Response:
        if error := _invalid_spot(spec, self.gpu_types):
            return _graphql_error(error)
        gpu_id, count, cloud = spec["gpuTypeId"], int(spec["gpuCount"]), spec["cloudType"]
        prices = self.gpu_types[gpu_id]
        floor = prices.get("communitySpotPrice" if cloud == "COMMUNITY" else "secureSpotPrice")
        if floor is None:
            return _graphql_error(NO_INSTANCES)
        if float(spec["bidPerGpu"]) < floor:
            return _graphql_error(f"Your bid of ${spec['bidPerGpu']} is below ${floor}")
        with self._lock:
            if self.capacity.get(gpu_id, 0) < count:
                return _graphql_error(NO_INSTANCES)
            env = {item["key"]: item["value"] for item in spec.get("env") or []}
            pod = self._new_pod(
                spec["name"], spec["imageName"], gpu_id, count, cloud, env,
                spec.get("dockerArgs") or "", spec.get("containerDiskInGb") or 20,
                float(spec["bidPerGpu"]),
            )  # fmt: skip
            fault = self._create_faults.pop(0) if self._create_faults else None
        if fault is not None:
            status, delay = fault
            await asyncio.sleep(delay)
            if status is not None:
                return JSONResponse({"errors": [{"message": "Internal error"}]}, status_code=status)
        made = {k: pod[k] for k in ("id", "name", "costPerHr")} | {"desiredStatus": "RUNNING"}
        return JSONResponse({"data": {"podRentInterruptable": made}})

    def _gpu_types_data(self) -> list[dict[str, Any]]:
        return [
            {"id": gpu_id, **fields}
            | {
                "lowestPrice": {
                    "minimumBidPrice": fields.get("secureSpotPrice")
                    or fields.get("communitySpotPrice"),
                    "uninterruptablePrice": fields.get("communityPrice")
                    or fields.get("securePrice"),
                }
            }
            for gpu_id, fields in self.gpu_types.items()
        ]

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
        prices = self.gpu_types.get(gpu_id, {})
        per_gpu = bid if bid is not None else prices.get(f"{cloud.lower()}Price") or 0.0
        pod: dict[str, Any] = {
            "id": secrets.token_hex(7),
            "name": name,
            "image": image,
            "args": args,
            "disk": disk,
            "ports": [],
            "env": dict(env),
            "cloud": cloud,
            "gpu": {"id": gpu_id, "count": count},
            "status": "PROVISIONING",
            "interruptible": bid is not None,
            "bidPerGpu": bid,
            "costPerHr": round(per_gpu * count, 4),
        }
        self.capacity[gpu_id] = self.capacity.get(gpu_id, 0) - count
        self.pods[pod["id"]] = pod
        return pod

    def _terminate(self, pod: dict[str, Any]) -> None:
        pod["status"] = "TERMINATED"
        gpu = pod["gpu"]
        self.capacity[gpu["id"]] = self.capacity.get(gpu["id"], 0) + gpu["count"]


def _public(pod: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in pod.items() if k != "bidPerGpu"}


def _problem(
    request: Request, status: int, detail: str, headers: Mapping[str, str] | None = None
) -> Response:
    titles = {400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 409: "Conflict"}
    titles |= {429: "Too Many Requests", 500: "Internal Server Error", 503: "Service Unavailable"}
    body = {
        "type": f"https://api.runpod.io/problems/{status}",
        "title": titles.get(status, "Error"),
        "status": status,
        "detail": detail,
        "instance": request.url.path,
    }
    return Response(json.dumps(body), status, headers=dict(headers or {}), media_type=PROBLEM)


def _graphql_error(message: str) -> Response:
    return JSONResponse({"errors": [{"message": message}], "data": None})


def _invalid_create(body: Any, gpu_types: Mapping[str, Any]) -> str | None:
    if not isinstance(body, dict):
        return "The request body must be a JSON object"
    if unknown := sorted(set(body) - _CREATE_FIELDS):
        return f"Unknown field(s): {', '.join(unknown)}"
    for field in ("name", "image"):
        if not isinstance(body.get(field), str) or not body[field]:
            return f"{field} is required"
    if ("gpu" in body) == ("cpu" in body):
        return "Exactly one of gpu or cpu must be set"
    gpu = body.get("gpu")
    if not isinstance(gpu, dict) or not isinstance(gpu.get("id"), str):
        return "gpu.id is required"
    if gpu["id"] not in gpu_types:
        return f"Unknown GPU type {gpu['id']!r}"
    if not isinstance(gpu.get("count", 1), int) or gpu.get("count", 1) < 1:
        return "gpu.count must be an integer >= 1"
    if body.get("cloud", "SECURE") not in _CLOUDS:
        return f"cloud must be one of {sorted(_CLOUDS)}"
    env = body.get("env", {})
    if not isinstance(env, dict) or not all(isinstance(v, str) for v in env.values()):
        return "env must map names to strings"
    if not isinstance(body.get("args", ""), str):
        return "args must be a string"
    if not isinstance(body.get("disk", 1), int) or body.get("disk", 1) < 1:
        return "disk must be an integer >= 1"
    if not isinstance(body.get("ports", []), list):
        return "ports must be a list"
    return None


def _invalid_spot(spec: Any, gpu_types: Mapping[str, Any]) -> str | None:
    if not isinstance(spec, dict):
        return 'Variable "$input" of required type "PodRentInterruptableInput!" was not provided.'
    for field in ("bidPerGpu", "gpuTypeId", "gpuCount", "cloudType", "name", "imageName"):
        if spec.get(field) in (None, ""):
            return f'Field "{field}" of required type was not provided.'
    if spec["gpuTypeId"] not in gpu_types:
        return f"Unknown GPU type {spec['gpuTypeId']!r}"
    if not isinstance(spec["gpuCount"], int) or spec["gpuCount"] < 1:
        return "gpuCount must be at least 1"
    if spec["cloudType"] not in _CLOUDS | {"ALL"}:
        return f'Value "{spec["cloudType"]}" does not exist in "CloudTypeEnum" enum.'
    if not isinstance(spec["bidPerGpu"], int | float) or spec["bidPerGpu"] <= 0:
        return "bidPerGpu must be positive"
    return None
