"""RunPod, through its REST API v2 and, for spot pods only, its GraphQL API.

Every request and every field read here is held to RunPod's published contracts by the tests
(tests/fixtures/runpod: the v2 OpenAPI document, Frontdoor v2.9.0, and the GraphQL subset; the
fake RunPod validates both sides and records any read of a field the schema lacks):

- REST v2 at https://api.runpod.io/v2, GraphQL at https://api.runpod.io/graphql (retiring in
  early 2027). Both take the key as `Authorization: Bearer <key>`; it never goes into a URL,
  because httpx logs URLs.
- `POST /v2/pods` {name, image, gpu: {id, count, minCudaVersion}, cloud, env, args, disk} answers
  201 with the pod. It places one GPU type and never falls back, so candidates are tried in turn,
  as the operation's description prescribes: 400 (no capacity, or a rule broken) and 403 (the
  account may not use that pool) move on to the next candidate; 402 (insufficient balance) stops
  at once; 422 (the body breaks the contract) is never retried; 429 waits for `Retry-After`;
  5xx retries the same candidate. `GET /v2/pods` answers {"pods": [...]} (no name filter: we
  filter here); `DELETE /v2/pods/{id}` terminates (204).
- A pod's `status` is PROVISIONING, STARTING, RUNNING, EXITED, ERROR or TERMINATED; `cost` is
  what it bills per hour, all GPUs together (0.0 once EXITED or TERMINATED). v2 pods carry no
  exit code, spot flag or status message: those come from our own record and the pod's reports.
- `GET /v2/catalog/gpus?include=AVAILABILITY&product=POD`: prices per GPU and hour, stock and
  the hosts' CUDA versions. `GET /v2/billing/pods?podId=` what a pod was billed.
  `GET /v2/pods/{id}/logs` streams the container's lines as SSE.
- Errors are problem documents (application/problem+json: title, status, detail, errors).
- Spot (interruptible) pods exist only as the GraphQL mutation `podRentInterruptable`; the bid
  floor is `gpuTypes { lowestPrice(input: {gpuCount, secureCloud}) { minimumBidPrice } }`.
  GraphQL reports errors as {"errors": [{"message": ...}]}; no capacity reads "There are no
  longer any instances available with the requested specifications."

A create that made the pod and then answered 500 once left a pod billing with nobody tracking it.
So a create is never retried blindly: the pod is named after the deployment, a create first looks
for a pod of that name, and after an ambiguous failure (5xx, timeout, broken connection) it looks
again and returns what it finds; only when there is none does it try once more.

Nothing here logs a pod's `env` (it carries the run's secrets) or the key, and every message that
quotes RunPod has both scrubbed out.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import secrets
import shlex
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote

import httpx

from services.deploy.providers.base import (
    Cloud,
    GpuType,
    Pod,
    PodSpec,
    PodStatus,
    ProviderError,
    ProviderErrorKind,
)

log = logging.getLogger(__name__)

Sleep = Callable[[float], Awaitable[None]]

KEY_REFUSED = "RunPod refused the API key: set a new one with PUT /v1/provider-keys/runpod"
KEY_NOT_ALLOWED = (
    "RunPod's API key may not {action}: give the key read and write access to pods, or set "
    "another with PUT /v1/provider-keys/runpod"
)
NO_BALANCE = (
    "RunPod refused to rent a pod for insufficient balance: add funds to the RunPod account "
    "(https://www.runpod.io/console/user/billing), then create the run again"
)

# A server that asks us to wait longer than this is not waited for: the caller gets QUOTA with
# retry_after and decides (a supervisor tick should not block for an hour).
_MAX_WAIT_S = 60.0
_MAX_BACKOFF_S = 30.0
_MAX_DETAIL = 300
_MAX_LOG_LINE = 4000

_STATUSES = {
    "PROVISIONING": PodStatus.PROVISIONING,
    "STARTING": PodStatus.STARTING,
    "RUNNING": PodStatus.RUNNING,
    "EXITED": PodStatus.EXITED,
    "ERROR": PodStatus.FAILED,
    "TERMINATED": PodStatus.TERMINATED,
}

_NO_CAPACITY = re.compile(r"no longer any instances available|no instances available", re.I)
_BALANCE = re.compile(r"balance|insufficient funds|not enough funds|spend limit", re.I)
_KEY = re.compile(r"unauthori[sz]ed|api key|forbidden", re.I)
_TRY_LATER = re.compile(r"something went wrong|try again later", re.I)

_SPOT_PRICES_QUERY = """
query SpotPrices { gpuTypes { id secureSpotPrice communitySpotPrice } }
"""

_BID_FLOOR_QUERY = """
query BidFloor($id: String, $price: GpuLowestPriceInput) {
  gpuTypes(input: {id: $id}) { id lowestPrice(input: $price) { minimumBidPrice } }
}
"""

_RENT_SPOT_MUTATION = """
mutation RentSpot($input: PodRentInterruptableInput!) {
  podRentInterruptable(input: $input) { id costPerHr }
}
"""
# How long a read of the pod's log stream waits for its next line: the stream stays open.
_LOG_IDLE_S = 3.0


class _Skip(Exception):
    """A create refused for this GPU type only: the next candidate may still be placed."""

    def __init__(self, error: ProviderError) -> None:
        super().__init__(error.message)
        self.error = error


class _Ambiguous(Exception):
    """A create whose outcome is unknown: the pod may or may not have been made."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class RunPodProvider:
    name = "runpod"

    def __init__(
        self,
        api_key: str,
        *,
        rest_url: str = "https://api.runpod.io/v2",
        graphql_url: str = "https://api.runpod.io/graphql",
        timeout: float = 30.0,
        max_attempts: int = 4,
        backoff_base: float = 0.5,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._key = api_key
        self._rest = rest_url.rstrip("/")
        self._graphql = graphql_url
        self._attempts = max(1, max_attempts)
        self._timeout = timeout
        self._backoff = backoff_base
        self._sleep = sleep
        self._random = secrets.SystemRandom()
        self._client = httpx.AsyncClient(
            timeout=timeout,
            transport=transport,
            headers={"Authorization": f"Bearer {api_key}", "Accept": "application/json"},
        )

    def __repr__(self) -> str:
        return f"RunPodProvider(rest_url={self._rest!r})"

    # -- the Provider protocol -------------------------------------------------------------

    async def create(self, spec: PodSpec) -> Pod:
        if existing := await self._find_by_name(spec.name):
            log.info(
                "RunPod pod %s already exists as %s; not renting another", spec.name, existing.id
            )
            return existing
        skipped: list[tuple[str, ProviderError]] = []
        for gpu_type in (spec.gpu.type, *spec.gpu.fallback_types):
            try:
                return await self._create_with_reconcile(spec, gpu_type)
            except _Skip as skip:
                log.info("RunPod placed no %s for %s: %s", gpu_type, spec.name, skip.error.message)
                skipped.append((gpu_type, skip.error))
        raise _placed_nowhere(spec, skipped)

    async def get(self, pod_id: str) -> Pod | None:
        action = f"reading pod {pod_id}"
        response = await self._request("GET", self._pod_url(pod_id), action)
        if response.status_code == 404:
            return None
        return self._pod(self._ok_json(response, action))

    async def list_pods(self, name_prefix: str) -> list[Pod]:
        return [
            pod
            for pod in await self._all_pods()
            if pod.name.startswith(name_prefix) and pod.status is not PodStatus.TERMINATED
        ]

    async def terminate(self, pod_id: str) -> None:
        action = f"terminating pod {pod_id}"
        response = await self._request("DELETE", self._pod_url(pod_id), action)
        if response.is_success or response.status_code == 404:
            return  # 404: already gone, which is what we wanted
        if response.status_code == 409:
            # Documented for a pod that belongs to a cluster (ours never do): done if it is gone
            # meanwhile; else it keeps billing, which the supervisor must keep saying.
            pod = await self.get(pod_id)
            if pod is None or pod.status is PodStatus.TERMINATED:
                return
            raise ProviderError(
                ProviderErrorKind.UNAVAILABLE,
                f"RunPod refused to terminate pod {pod_id} while it is {pod.status.value} "
                f"({self._scrub(_problem_detail(response))}): terminate it in RunPod's console",
            )
        raise self._error(response, action)

    async def gpu_types(self, count: int = 1, cloud: Cloud = "secure") -> list[GpuType]:
        action = "reading the GPU catalog"
        params = {
            "include": "AVAILABILITY",
            "product": "POD",
            "count": str(max(1, count)),
            "cloud": cloud.upper(),
        }
        response = await self._request("GET", f"{self._rest}/catalog/gpus", action, params=params)
        body = self._ok_json(response, action)
        items = body.get("gpus") if isinstance(body, dict) else None
        if not isinstance(items, list):
            raise _unavailable(f"RunPod answered {action} without a list of GPU types")
        spot = await self._spot_prices()
        return [_gpu_type(item, spot.get(str(item.get("id")), (None, None))) for item in items]

    async def billed_usd(self, pod_id: str, since: datetime) -> float | None:
        action = f"reading the bill of pod {pod_id}"
        start = since.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
        params = {
            "podId": pod_id,
            "bucketSize": "hour",
            "startTime": start.strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        response = await self._request("GET", f"{self._rest}/billing/pods", action, params=params)
        body = self._ok_json(response, action)
        metadata = body.get("metadata") if isinstance(body, dict) else None
        if isinstance(metadata, dict) and metadata.get("recordCount") == 0:
            return None  # no record of the pod yet: bills settle late
        totals = metadata.get("totals") if isinstance(metadata, dict) else None
        total = totals.get("totalAmount") if isinstance(totals, dict) else None
        if not isinstance(total, int | float):
            raise _unavailable(f"RunPod answered {action} without a total")
        return float(total)

    async def log_tail(self, pod_id: str, lines: int) -> list[str]:
        """The last `lines` lines of the container's log. The stream stays open for new lines,
        so reading stops at `lines`, or when none has come for a moment."""
        action = f"reading the log of pod {pod_id}"
        found: list[str] = []
        params = {"source": "container", "tail": str(max(1, min(lines, 5000)))}
        try:
            async with self._client.stream(
                "GET", self._pod_url(pod_id) + "/logs", params=params,
                headers={"Accept": "text/event-stream"},
            ) as response:  # fmt: skip
                if not response.is_success:
                    await response.aread()
                    raise self._error(response, action)
                found = await _sse_lines(response, lines, min(_LOG_IDLE_S, self._timeout / 2))
        except httpx.TransportError as exc:
            raise _unavailable(f"RunPod {_transport_reason(exc)} while {action}") from None
        # Cut as the run's own log lines are (the caller's sanitizer cuts them again).
        return [self._scrub(line, limit=_MAX_LOG_LINE) for line in found]

    async def aclose(self) -> None:
        await self._client.aclose()

    # -- create ----------------------------------------------------------------------------

    async def _create_with_reconcile(self, spec: PodSpec, gpu_type: str) -> Pod:
        """One GPU type: create, and after an ambiguous failure adopt the pod if it was made."""
        rent = self._rent_spot if spec.gpu.spot else self._rent_on_demand
        bid = await self._bid(spec, gpu_type) if spec.gpu.spot else 0.0
        reason = "no answer"
        for attempt in range(1, self._attempts + 1):
            try:
                return await rent(spec, gpu_type, bid)
            except _Ambiguous as ambiguous:
                reason = ambiguous.reason
                log.warning(
                    "RunPod create of %s failed ambiguously (attempt %d/%d): %s",
                    spec.name, attempt, self._attempts, reason,
                )  # fmt: skip
                # Give a slow create time to land before looking for it.
                await self._sleep(self._backoff_delay(attempt))
                if found := await self._find_by_name(spec.name):
                    log.info("RunPod made pod %s (%s) despite the error", spec.name, found.id)
                    return found
        raise _unavailable(
            f"RunPod failed creating pod {spec.name} after {self._attempts} attempts ({reason}), "
            "and made no pod: try again later"
        )

    async def _rent_on_demand(self, spec: PodSpec, gpu_type: str, _bid: float) -> Pod:
        gpu: dict[str, Any] = {"id": gpu_type, "count": spec.gpu.count}
        if spec.min_cuda_version:
            gpu["minCudaVersion"] = spec.min_cuda_version
        body = {
            "name": spec.name,
            "image": spec.image,
            "gpu": gpu,
            "cloud": spec.gpu.cloud.upper(),
            "env": dict(spec.env),
            "args": shlex.join(spec.command),
            "disk": spec.disk_gb,
        }
        action = f"creating pod {spec.name}"
        response = await self._create_request("POST", f"{self._rest}/pods", body, action)
        if not response.is_success:
            raise self._create_refusal(response, gpu_type, action, spec.env.values())
        try:
            return self._pod(response.json())
        except (ValueError, ProviderError):
            raise _Ambiguous("an unreadable answer") from None

    def _create_refusal(
        self, response: httpx.Response, gpu_type: str, action: str, env: Iterable[str]
    ) -> Exception:
        """What a refused create means, per the operation's documented table of statuses."""
        status = response.status_code
        if status >= 500:  # made or not, we cannot tell
            return _Ambiguous(f"HTTP {status}")
        detail = self._scrub(_problem_detail(response), env)
        if status == 403:
            return _Skip(
                ProviderError(
                    ProviderErrorKind.NOT_ALLOWED,
                    f"the RunPod account may not rent {gpu_type} ({detail})",
                )
            )
        if status == 400:
            if _NO_CAPACITY.search(detail):
                return _Skip(ProviderError(ProviderErrorKind.NO_CAPACITY, "no capacity"))
            return _Skip(ProviderError(ProviderErrorKind.INVALID, detail))
        return self._error(response, action, env)

    async def _rent_spot(self, spec: PodSpec, gpu_type: str, bid: float) -> Pod:
        spot_input = {
            "name": spec.name,
            "imageName": spec.image,
            "gpuTypeId": gpu_type,
            "gpuCount": spec.gpu.count,
            "cloudType": spec.gpu.cloud.upper(),
            "bidPerGpu": bid,
            "env": [{"key": key, "value": value} for key, value in spec.env.items()],
            "dockerArgs": shlex.join(spec.command),
            "containerDiskInGb": spec.disk_gb,
            "volumeInGb": 0,
        }
        action = f"creating spot pod {spec.name}"
        payload = {"query": _RENT_SPOT_MUTATION, "variables": {"input": spot_input}}
        response = await self._create_request("POST", self._graphql, payload, action)
        try:
            data = self._graphql_data(response, action, extra_secrets=spec.env.values())
        except ProviderError as error:
            if error.kind is ProviderErrorKind.NO_CAPACITY:
                raise _Skip(ProviderError(ProviderErrorKind.NO_CAPACITY, "no capacity")) from None
            if error.kind is not ProviderErrorKind.UNAVAILABLE:
                raise
            status = response.status_code
            raise _Ambiguous(f"HTTP {status}" if status >= 500 else error.message) from None
        made = data.get("podRentInterruptable")
        if not isinstance(made, dict) or not made.get("id"):
            raise _Ambiguous("an answer without a pod")
        return Pod(
            id=str(made["id"]),
            name=spec.name,
            status=PodStatus.PROVISIONING,
            gpu_type=gpu_type,
            gpu_count=spec.gpu.count,
            hourly_usd=_price(made.get("costPerHr")) or bid * spec.gpu.count,
            spot=True,
        )

    async def _create_request(
        self, method: str, url: str, body: Mapping[str, Any], action: str
    ) -> httpx.Response:
        """Send a create; only a 429 (refused unprocessed) is retried here, after its wait."""
        for attempt in range(1, self._attempts + 1):
            try:
                response = await self._client.request(method, url, json=body)
            except httpx.TransportError as exc:
                raise _Ambiguous(_transport_reason(exc)) from None
            if response.status_code != 429 or attempt == self._attempts:
                return response
            await self._wait_before_retry(response, attempt, action)
        raise AssertionError("unreachable")

    async def _bid(self, spec: PodSpec, gpu_type: str) -> float:
        """The bid per GPU: the user's, else RunPod's current floor for this count and cloud."""
        if spec.gpu.bid_per_gpu_usd is not None:
            return spec.gpu.bid_per_gpu_usd
        action = f"reading the spot price of {gpu_type}"
        variables = {
            "id": gpu_type,
            "price": {"gpuCount": spec.gpu.count, "secureCloud": spec.gpu.cloud == "secure"},
        }
        response = await self._request(
            "POST",
            self._graphql,
            action,
            json={"query": _BID_FLOOR_QUERY, "variables": variables},
        )
        for item in self._graphql_data(response, action).get("gpuTypes") or []:
            lowest = item.get("lowestPrice") if isinstance(item, dict) else None
            if isinstance(lowest, dict) and (floor := _price(lowest.get("minimumBidPrice"))):
                return floor
        raise _Skip(ProviderError(ProviderErrorKind.NO_CAPACITY, f"no {spec.gpu.cloud} spot offer"))

    async def _spot_prices(self) -> dict[str, tuple[float | None, float | None]]:
        """Spot prices per GPU type from GraphQL, the only API that has them; {} when it fails
        (it is being retired), which only hides spot offers."""
        action = "reading spot prices"
        try:
            response = await self._request(
                "POST", self._graphql, action, json={"query": _SPOT_PRICES_QUERY}
            )
            data = self._graphql_data(response, action)
        except ProviderError as exc:
            log.warning("RunPod spot prices unavailable: %s", exc.message)
            return {}
        return {
            str(item.get("id")): (
                _price(item.get("secureSpotPrice")),
                _price(item.get("communitySpotPrice")),
            )
            for item in data.get("gpuTypes") or []
            if isinstance(item, dict)
        }

    async def _find_by_name(self, name: str) -> Pod | None:
        matches = [
            pod
            for pod in await self._all_pods()
            if pod.name == name and pod.status is not PodStatus.TERMINATED
        ]
        if len(matches) > 1:
            ids = ", ".join(pod.id for pod in matches)
            log.warning(
                "RunPod has %d pods named %s (%s); using the first", len(matches), name, ids
            )
        return matches[0] if matches else None

    async def _all_pods(self) -> list[Pod]:
        """Every pod of the account (v2 lists them in one answer)."""
        response = await self._request("GET", f"{self._rest}/pods", "listing pods")
        body = self._ok_json(response, "listing pods")
        items = body.get("pods") if isinstance(body, dict) else None
        if not isinstance(items, list):
            raise _unavailable("RunPod answered listing pods without a list of pods")
        return [self._pod(item) for item in items]

    # -- HTTP, retries and errors ----------------------------------------------------------

    async def _request(
        self,
        method: str,
        url: str,
        action: str,
        *,
        json: Mapping[str, Any] | None = None,
        params: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        """An idempotent request: retried on 429, 5xx and transport errors."""
        for attempt in range(1, self._attempts + 1):
            try:
                response = await self._client.request(method, url, json=json, params=params)
            except httpx.TransportError as exc:
                if attempt == self._attempts:
                    raise _unavailable(
                        f"RunPod {_transport_reason(exc)} while {action}, "
                        f"{self._attempts} attempts: try again later"
                    ) from None
                await self._sleep(self._backoff_delay(attempt))
                continue
            retryable = response.status_code == 429 or response.status_code >= 500
            if not retryable or attempt == self._attempts:
                return response
            await self._wait_before_retry(response, attempt, action)
        raise AssertionError("unreachable")

    async def _wait_before_retry(self, response: httpx.Response, attempt: int, action: str) -> None:
        hint = _retry_hint(response)
        if hint is not None and hint > _MAX_WAIT_S:
            raise self._error(response, action)  # QUOTA with retry_after: too long to wait here
        delay = hint if hint is not None else self._backoff_delay(attempt)
        log.info(
            "RunPod answered %d to %s; retrying in %.1f s", response.status_code, action, delay
        )
        await self._sleep(delay)

    def _backoff_delay(self, attempt: int) -> float:
        """Exponential backoff with jitter, so that many clients do not retry in step."""
        ceiling = min(_MAX_BACKOFF_S, self._backoff * 2.0 ** (attempt - 1))
        return ceiling / 2 + self._random.uniform(0, ceiling / 2)

    def _graphql_data(
        self, response: httpx.Response, action: str, extra_secrets: Iterable[str] = ()
    ) -> dict[str, Any]:
        if not response.is_success:
            if response.status_code in (401, 403):
                raise ProviderError(ProviderErrorKind.UNAUTHENTICATED, KEY_REFUSED)
            if response.status_code == 429 or response.status_code >= 500:
                raise self._error(response, action, extra_secrets)
        body = self._ok_json(response, action, graphql=True)
        errors = body.get("errors") if isinstance(body, dict) else None
        if errors:
            first = errors[0] if isinstance(errors[0], dict) else {}
            message = self._scrub(str(first.get("message") or "unknown error"), extra_secrets)
            raise _classify_message(message, action)
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, dict):
            raise _unavailable(f"RunPod answered {action} without data")
        return data

    def _ok_json(self, response: httpx.Response, action: str, *, graphql: bool = False) -> Any:
        if not response.is_success and not graphql:
            raise self._error(response, action)
        try:
            return response.json()
        except ValueError:
            raise _unavailable(
                f"RunPod answered {action} with something that is not JSON"
            ) from None

    def _error(
        self, response: httpx.Response, action: str, extra_secrets: Iterable[str] = ()
    ) -> ProviderError:
        """Classify a refusal into a user-facing ProviderError."""
        status = response.status_code
        if status == 401:
            return ProviderError(ProviderErrorKind.UNAUTHENTICATED, KEY_REFUSED)
        if status == 403:
            return ProviderError(
                ProviderErrorKind.NOT_ALLOWED, KEY_NOT_ALLOWED.format(action=action)
            )
        if status == 402:
            return ProviderError(ProviderErrorKind.INSUFFICIENT_BALANCE, NO_BALANCE)
        if status == 429:
            wait = _retry_hint(response)
            when = f"in {wait:.0f} s" if wait is not None else "later"
            return ProviderError(
                ProviderErrorKind.QUOTA,
                f"RunPod's rate limit was reached while {action}: try again {when}",
                retry_after=wait,
            )
        if 400 <= status < 500:
            detail = self._scrub(_problem_detail(response), extra_secrets)
            if status == 404:
                return ProviderError(ProviderErrorKind.NOT_FOUND, f"RunPod found nothing: {detail}")
            return ProviderError(ProviderErrorKind.INVALID, f"RunPod refused {action}: {detail}")
        return _unavailable(
            f"RunPod failed {action} (HTTP {status}) after {self._attempts} attempts: "
            "try again later"
        )

    def _scrub(self, text: str, extra_secrets: Iterable[str] = (), limit: int = _MAX_DETAIL) -> str:
        """RunPod may echo what it was sent: keep the key and env values out of messages."""
        for secret in (self._key, *extra_secrets):
            if len(secret) >= 4:  # replacing a one-letter value would mangle the message
                text = text.replace(secret, "***")
        return text[:limit]

    def _pod_url(self, pod_id: str) -> str:
        return f"{self._rest}/pods/{quote(pod_id, safe='')}"

    def _pod(self, item: Any) -> Pod:
        """A v2 pod. It says nothing of spot, exit codes or why it failed: see the module."""
        if not isinstance(item, dict) or not item.get("id"):
            raise _unavailable("RunPod answered with a pod that has no id")
        pod_id = str(item["id"])
        raw = str(item.get("status") or "")
        status = _STATUSES.get(raw)
        message = ""
        if status is None:
            log.warning(
                "RunPod pod %s has an unknown status %r; taken as provisioning", pod_id, raw
            )
            status, message = PodStatus.PROVISIONING, f"RunPod status {raw!r}"
        elif status is PodStatus.FAILED:
            message = "RunPod reports the pod's container in an unrecoverable error state"
        raw_gpu = item.get("gpu")
        gpu: Mapping[str, Any] = raw_gpu if isinstance(raw_gpu, dict) else {}
        cuda = item.get("cudaVersion")
        return Pod(
            id=pod_id,
            name=str(item.get("name") or ""),
            status=status,
            gpu_type=str(gpu["id"]) if gpu.get("id") else None,
            gpu_count=int(gpu.get("count") or 0),
            hourly_usd=_price(item.get("cost")) or 0.0,
            message=message,
            cuda_version=str(cuda) if cuda else None,
        )


def _retry_hint(response: httpx.Response) -> float | None:
    """Seconds the server asks us to wait: Retry-After, or the exhausted RateLimit window's t."""
    hints: list[float] = []
    if value := response.headers.get("Retry-After"):
        try:
            hints.append(float(value))
        except ValueError:
            with contextlib.suppress(TypeError, ValueError):
                hints.append((parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds())
    # e.g. RateLimit: "minute";r=0;t=12, "day";r=950;t=40000 -> the window with r=0 resets in 12
    for item in response.headers.get("RateLimit", "").split(","):
        remaining, reset = re.search(r"\br=(\d+)", item), re.search(r"\bt=(\d+)", item)
        if remaining and reset and int(remaining.group(1)) == 0:
            hints.append(float(reset.group(1)))
    return max(0.0, max(hints)) if hints else None


def _problem_detail(response: httpx.Response) -> str:
    """A problem document's detail, with its validation `errors` when it lists them."""
    try:
        body = response.json()
    except ValueError:
        return response.reason_phrase or f"HTTP {response.status_code}"
    if not isinstance(body, dict):
        return response.reason_phrase or f"HTTP {response.status_code}"
    detail = str(body.get("detail") or body.get("title") or f"HTTP {response.status_code}")
    errors = body.get("errors")
    if isinstance(errors, list) and errors:
        detail += ": " + "; ".join(str(error) for error in errors[:5])
    return detail


def _classify_message(message: str, action: str) -> ProviderError:
    """A GraphQL error message (HTTP 200) into a ProviderError."""
    if _NO_CAPACITY.search(message):
        return ProviderError(ProviderErrorKind.NO_CAPACITY, f"RunPod: {message}")
    if _KEY.search(message):
        return ProviderError(ProviderErrorKind.UNAUTHENTICATED, KEY_REFUSED)
    if _BALANCE.search(message):
        return ProviderError(ProviderErrorKind.INSUFFICIENT_BALANCE, NO_BALANCE)
    if _TRY_LATER.search(message):
        return _unavailable(f"RunPod failed {action}: {message}")
    return ProviderError(ProviderErrorKind.INVALID, f"RunPod refused {action}: {message}")


def _placed_nowhere(spec: PodSpec, skipped: list[tuple[str, ProviderError]]) -> ProviderError:
    """Why no candidate was placed. No capacity anywhere may pass; a pool the account may not
    use will not; and when every candidate broke a rule, RunPod's last detail is about the
    request itself (as its documentation says to read it)."""
    offer = f"{spec.gpu.cloud} {'spot' if spec.gpu.spot else 'on-demand'}"
    kinds = {error.kind for _, error in skipped}
    reasons = "; ".join(f"{gpu_type}: {error.message}" for gpu_type, error in skipped)
    if ProviderErrorKind.NO_CAPACITY in kinds:
        if kinds == {ProviderErrorKind.NO_CAPACITY}:
            tried = ", ".join(gpu_type for gpu_type, _ in skipped)
            return ProviderError(
                ProviderErrorKind.NO_CAPACITY,
                f"RunPod has no {offer} capacity for {spec.gpu.count} x {tried} now: "
                "try again later or allow other GPU types",
            )
        return ProviderError(
            ProviderErrorKind.NO_CAPACITY, f"RunPod placed no {offer} pod ({reasons})"
        )
    if ProviderErrorKind.INVALID in kinds:
        last = next(e for _, e in reversed(skipped) if e.kind is ProviderErrorKind.INVALID)
        return ProviderError(
            ProviderErrorKind.INVALID, f"RunPod refused the pod: {last.message} ({reasons})"
        )
    return ProviderError(
        ProviderErrorKind.NOT_ALLOWED,
        f"the RunPod account may not rent any of the GPU types asked for ({reasons}): allow "
        "other GPU types, or ask RunPod for access",
    )


def _gpu_type(item: Any, spot: tuple[float | None, float | None]) -> GpuType:
    """A v2 catalog entry; prices are per GPU and hour, offered only in the clouds it names."""
    if not isinstance(item, dict) or not item.get("id"):
        raise _unavailable("RunPod answered with a GPU type that has no id")
    raw_price = item.get("price")
    price: Mapping[str, Any] = raw_price if isinstance(raw_price, dict) else {}
    secure, community = bool(item.get("secure")), bool(item.get("community"))
    availability = item.get("availability")
    versions = item.get("cudaVersions") or []
    return GpuType(
        id=str(item["id"]),
        display_name=str(item.get("name") or item["id"]),
        memory_gb=int(item.get("memory") or 0),
        secure_usd=_price(price.get("secure")) if secure else None,
        community_usd=_price(price.get("community")) if community else None,
        secure_spot_usd=spot[0] if secure else None,
        community_spot_usd=spot[1] if community else None,
        available=None if availability is None else availability != "NONE",
        cuda_versions=tuple(
            str(v.get("version")) for v in versions if isinstance(v, dict) and v.get("version")
        ),
    )


async def _sse_lines(response: httpx.Response, limit: int, idle: float) -> list[str]:
    """The `line` of each SSE event until `limit` lines or a pause of `idle` seconds."""
    found: list[str] = []
    lines = aiter(response.aiter_lines())
    while len(found) < limit:
        try:
            text = await asyncio.wait_for(anext(lines), idle)
        except (TimeoutError, StopAsyncIteration, httpx.ReadTimeout):
            break
        if not text.startswith("data:"):
            continue
        with contextlib.suppress(ValueError, TypeError):
            event = json.loads(text[5:].strip())
            if isinstance(event, dict) and isinstance(event.get("line"), str):
                found.append(event["line"])
    return found


def _transport_reason(exc: httpx.TransportError) -> str:
    # The exception's own text is left out: it may quote the request.
    what = "timed out" if isinstance(exc, httpx.TimeoutException) else "could not be reached"
    return f"{what} ({type(exc).__name__})"


def _unavailable(message: str) -> ProviderError:
    return ProviderError(ProviderErrorKind.UNAVAILABLE, message)


def _price(value: Any) -> float | None:
    """A price as RunPod sends it (number, numeric string or null); None for none or zero."""
    try:
        price = float(value)
    except (TypeError, ValueError):
        return None
    return price if price > 0 else None
