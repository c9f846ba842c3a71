"""RunPod, through its REST API v2 and, for what v2 lacks (spot pods, GPU prices), GraphQL.

The API facts this module relies on:

- REST v2 at https://api.runpod.io/v2 (v1 is retired at the end of 2026), GraphQL at
  https://api.runpod.io/graphql (retiring in early 2027). Both take the key as
  `Authorization: Bearer <key>`; it never goes into a URL, because httpx logs URLs.
- `POST /v2/pods` {name, image, gpu: {id, count}, cloud: SECURE|COMMUNITY, env: {}, args, disk}
  answers 201 with the pod; `GET /v2/pods` lists every pod of the account (no documented name
  filter, so we filter here); `GET|DELETE /v2/pods/{id}`: DELETE terminates the pod and stops
  billing. A pod's `status` is PROVISIONING, STARTING, RUNNING, EXITED, ERROR or TERMINATED; its
  price is `costPerHr` (all GPUs together; a number or, as v1 sent it, a string).
- Errors are RFC 9457 problem documents (application/problem+json: type, title, status, detail).
  429 carries `Retry-After` and/or the IETF draft `RateLimit: "default";r=0;t=12` header.
- Spot (interruptible) pods exist only as the GraphQL mutation `podRentInterruptable(input:
  {bidPerGpu, gpuTypeId, gpuCount, cloudType, name, imageName, env: [{key, value}], dockerArgs,
  containerDiskInGb})`; prices come from the GraphQL `gpuTypes` query. GraphQL reports errors as
  HTTP 200 with {"errors": [{"message": ...}]}; no capacity reads "There are no longer any
  instances available with the requested specifications. Please refresh and try again."

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

# A server that asks us to wait longer than this is not waited for: the caller gets QUOTA with
# retry_after and decides (a supervisor tick should not block for an hour).
_MAX_WAIT_S = 60.0
_MAX_BACKOFF_S = 30.0
_MAX_PAGES = 100  # a bound on following list cursors, in case a server loops
_MAX_DETAIL = 300

_STATUSES = {
    "PROVISIONING": PodStatus.PROVISIONING,
    "STARTING": PodStatus.STARTING,
    "RUNNING": PodStatus.RUNNING,
    "EXITED": PodStatus.EXITED,
    "ERROR": PodStatus.FAILED,
    "TERMINATED": PodStatus.TERMINATED,
}

_NO_CAPACITY = re.compile(r"no longer any instances available|no instances available", re.I)
_QUOTA = re.compile(r"balance|insufficient funds|not enough funds|spend limit|quota", re.I)
_KEY = re.compile(r"unauthori[sz]ed|api key|forbidden", re.I)
_TRY_LATER = re.compile(r"something went wrong|try again later", re.I)

_GPU_TYPES_QUERY = """
query GpuTypes {
  gpuTypes {
    id displayName memoryInGb securePrice communityPrice secureSpotPrice communitySpotPrice
  }
}
"""

_RENT_SPOT_MUTATION = """
mutation RentSpot($input: PodRentInterruptableInput!) {
  podRentInterruptable(input: $input) { id name costPerHr desiredStatus }
}
"""


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
        tried: list[str] = []
        for gpu_type in (spec.gpu.type, *spec.gpu.fallback_types):
            tried.append(gpu_type)
            try:
                return await self._create_with_reconcile(spec, gpu_type)
            except ProviderError as error:
                if error.kind is not ProviderErrorKind.NO_CAPACITY:
                    raise
                log.info("RunPod has no capacity for %s (pod %s)", gpu_type, spec.name)
        offer = f"{spec.gpu.cloud} {'spot' if spec.gpu.spot else 'on-demand'}"
        raise ProviderError(
            ProviderErrorKind.NO_CAPACITY,
            f"RunPod has no {offer} capacity for {spec.gpu.count} x {', '.join(tried)} now: "
            "try again later or allow other GPU types",
        )

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
            # RunPod refuses a termination that is already under way: done if the pod is gone.
            pod = await self.get(pod_id)
            if pod is None or pod.status is PodStatus.TERMINATED:
                return
            raise ProviderError(
                ProviderErrorKind.UNAVAILABLE,
                f"RunPod refused to terminate pod {pod_id} while it is {pod.status.value}: "
                "try again shortly",
            )
        raise self._error(response, action)

    async def gpu_types(self) -> list[GpuType]:
        action = "reading GPU prices"
        response = await self._request(
            "POST", self._graphql, action, json={"query": _GPU_TYPES_QUERY}
        )
        data = self._graphql_data(response, action)
        return [
            GpuType(
                id=str(item["id"]),
                display_name=str(item.get("displayName") or item["id"]),
                memory_gb=int(item.get("memoryInGb") or 0),
                secure_usd=_price(item.get("securePrice")),
                community_usd=_price(item.get("communityPrice")),
                secure_spot_usd=_price(item.get("secureSpotPrice")),
                community_spot_usd=_price(item.get("communitySpotPrice")),
            )
            for item in data.get("gpuTypes") or []
        ]

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
        body = {
            "name": spec.name,
            "image": spec.image,
            "gpu": {"id": gpu_type, "count": spec.gpu.count},
            "cloud": spec.gpu.cloud.upper(),
            "env": dict(spec.env),
            "args": shlex.join(spec.command),
            "disk": spec.disk_gb,
        }
        action = f"creating pod {spec.name}"
        response = await self._create_request("POST", f"{self._rest}/pods", body, action)
        if not response.is_success:
            error = self._error(response, action, extra_secrets=spec.env.values())
            if error.kind is ProviderErrorKind.UNAVAILABLE:  # 5xx: made or not, we cannot tell
                raise _Ambiguous(f"HTTP {response.status_code}")
            raise error
        try:
            return self._pod(response.json())
        except (ValueError, ProviderError):
            raise _Ambiguous("an unreadable answer") from None

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
        if spec.gpu.bid_per_gpu_usd is not None:
            return spec.gpu.bid_per_gpu_usd
        for offer in await self.gpu_types():
            if offer.id == gpu_type and (price := offer.price(spec.gpu.cloud, spot=True)):
                return price
        raise ProviderError(
            ProviderErrorKind.NO_CAPACITY, f"RunPod offers no {spec.gpu.cloud} spot {gpu_type}"
        )

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
        """Every pod of the account; follows a cursor if the answer is paginated."""
        pods: list[Pod] = []
        params: dict[str, str] = {}
        for _ in range(_MAX_PAGES):
            response = await self._request(
                "GET", f"{self._rest}/pods", "listing pods", params=params
            )
            body = self._ok_json(response, "listing pods")
            items = body if isinstance(body, list) else _first(body, "data", "items", "pods")
            if not isinstance(items, list):
                raise _unavailable("RunPod answered listing pods with something that is not a list")
            pods.extend(self._pod(item) for item in items)
            cursor = None if isinstance(body, list) else _first(body, "nextCursor", "next")
            if not cursor:
                break
            params = {"cursor": str(cursor)}
        return pods

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
            raise self._error(response, action, extra_secrets)
        body = self._ok_json(response, action)
        errors = body.get("errors") if isinstance(body, dict) else None
        if errors:
            first = errors[0] if isinstance(errors[0], dict) else {}
            message = self._scrub(str(first.get("message") or "unknown error"), extra_secrets)
            raise _classify_message(message, action)
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, dict):
            raise _unavailable(f"RunPod answered {action} without data")
        return data

    def _ok_json(self, response: httpx.Response, action: str) -> Any:
        if not response.is_success:
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
        detail = self._scrub(_problem_detail(response), extra_secrets)
        if status in (401, 403):
            return ProviderError(ProviderErrorKind.UNAUTHENTICATED, KEY_REFUSED)
        if _NO_CAPACITY.search(detail):
            return ProviderError(ProviderErrorKind.NO_CAPACITY, f"RunPod: {detail}")
        if status == 429:
            wait = _retry_hint(response)
            when = f"in {wait:.0f} s" if wait is not None else "later"
            return ProviderError(
                ProviderErrorKind.QUOTA,
                f"RunPod's rate limit was reached while {action}: try again {when}",
                retry_after=wait,
            )
        if status == 402 or _QUOTA.search(detail):
            return ProviderError(
                ProviderErrorKind.QUOTA,
                f"RunPod refused {action} for the account's quota or balance: {detail}",
            )
        if status == 404:
            return ProviderError(ProviderErrorKind.NOT_FOUND, f"RunPod found nothing: {detail}")
        if 400 <= status < 500:
            return ProviderError(ProviderErrorKind.INVALID, f"RunPod refused {action}: {detail}")
        return _unavailable(
            f"RunPod failed {action} (HTTP {status}) after {self._attempts} attempts: "
            "try again later"
        )

    def _scrub(self, text: str, extra_secrets: Iterable[str] = ()) -> str:
        """RunPod may echo what it was sent: keep the key and env values out of messages."""
        for secret in (self._key, *extra_secrets):
            if len(secret) >= 4:  # replacing a one-letter value would mangle the message
                text = text.replace(secret, "***")
        return text[:_MAX_DETAIL]

    def _pod_url(self, pod_id: str) -> str:
        return f"{self._rest}/pods/{quote(pod_id, safe='')}"

    def _pod(self, item: Any) -> Pod:
        if not isinstance(item, dict) or not item.get("id"):
            raise _unavailable("RunPod answered with a pod that has no id")
        pod_id = str(item.get("id", ""))
        raw = str(item.get("status") or item.get("desiredStatus") or "")
        status = _STATUSES.get(raw.upper())
        message = ""
        if status is None:
            log.warning(
                "RunPod pod %s has an unknown status %r; taken as provisioning", pod_id, raw
            )
            status, message = PodStatus.PROVISIONING, f"RunPod status {raw!r}"
        elif status is PodStatus.FAILED:
            message = str(item.get("lastStatusChange") or "RunPod reports an error for the pod")
        raw_gpu = item.get("gpu")
        gpu: Mapping[str, Any] = raw_gpu if isinstance(raw_gpu, dict) else {}
        gpu_type = gpu.get("id") or item.get("gpuTypeId")
        exit_code = item.get("exitCode")
        return Pod(
            id=pod_id,
            name=str(item.get("name") or ""),
            status=status,
            gpu_type=str(gpu_type) if gpu_type else None,
            gpu_count=int(gpu.get("count") or item.get("gpuCount") or 0),
            hourly_usd=_price(item.get("costPerHr")) or 0.0,
            spot=bool(item.get("interruptible", False)),
            exit_code=exit_code if isinstance(exit_code, int) else None,
            message=self._scrub(message),
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
    try:
        body = response.json()
    except ValueError:
        return response.reason_phrase or f"HTTP {response.status_code}"
    if isinstance(body, dict):
        if body.get("detail") or body.get("title"):
            return str(body.get("detail") or body.get("title"))
        if isinstance(body.get("errors"), list) and body["errors"]:
            first = body["errors"][0]
            return str(first.get("message") if isinstance(first, dict) else first)
    return response.reason_phrase or f"HTTP {response.status_code}"


def _classify_message(message: str, action: str) -> ProviderError:
    """A GraphQL error message (HTTP 200) into a ProviderError."""
    if _NO_CAPACITY.search(message):
        return ProviderError(ProviderErrorKind.NO_CAPACITY, f"RunPod: {message}")
    if _KEY.search(message):
        return ProviderError(ProviderErrorKind.UNAUTHENTICATED, KEY_REFUSED)
    if _QUOTA.search(message):
        return ProviderError(ProviderErrorKind.QUOTA, f"RunPod refused {action}: {message}")
    if _TRY_LATER.search(message):
        return _unavailable(f"RunPod failed {action}: {message}")
    return ProviderError(ProviderErrorKind.INVALID, f"RunPod refused {action}: {message}")


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


def _first(body: Any, *keys: str) -> Any:
    if not isinstance(body, dict):
        return None
    return next((body[key] for key in keys if body.get(key) is not None), None)
