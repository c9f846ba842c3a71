"""A fake OpenAI-compatible chat-completions server, built from OpenAI's published OpenAPI
document (tests/fixtures/openai/, see SOURCE.md), not from our judge client's assumptions.

It serves `POST /v1/chat/completions` over a real loopback socket (uvicorn in a background
thread, so it keeps its pace whatever the test's own event loop does). Every request body is
checked against `CreateChatCompletionRequest` (and a `json_schema` response format against the
rules of OpenAI's strict mode); one that breaks them is answered 400 as OpenAI does and
recorded in `violations`. Every answer is checked before it is sent: 200 against
`CreateChatCompletionResponse`, 429 against the operation's `TooManyRequests` (its body and an
integer `Retry-After` of at least 1), any other error against `ErrorResponse`. Tests end with
`check()`: no violation on either side.

    with FakeOpenAIChat().serve() as fake:
        fake.script(Reply.rate_limited(1), Reply.score(7))
        endpoint = JudgeEndpoint(fake.base_url, "gpt-4o-mini", fake.api_key, vetted=True)

What it answers: each request takes the next scripted `Reply` (one-shot, in order) or, when
none is left, `default`; every answer waits `latency` seconds plus the reply's own delay.
`refuse_json_schema` / `refuse_json_object` make it a model that lacks those response formats
(400 with OpenAI's message). It records each request (`requests`) and counts those in
progress (`in_flight`, `max_in_flight`).

It is stricter than OpenAI about one thing on purpose: a wrong API key is echoed in full in the
401 message (OpenAI shows four characters), so tests can show that nothing an endpoint answers
carries the key out of the judge client.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.fakes.runpod_schema import OpenApi, Operation

FIXTURE = Path(__file__).parent.parent / "fixtures" / "openai" / "chat-completions.json"
PREFIX = "/v1"  # the document's server is https://api.openai.com/v1
HOLD_SECONDS = 10.0
KEY = "sk-fake-" + "K" * 40
_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")  # json_schema.name, as the document describes it
_NO_JSON_SCHEMA = (
    "Invalid parameter: 'response_format' of type 'json_schema' is not supported with this "
    "model. Learn more about supported models at the Structured Outputs guide: "
    "https://platform.openai.com/docs/guides/structured-outputs"
)
_NO_JSON_OBJECT = (
    "Invalid parameter: 'response_format' of type 'json_object' is not supported with this model."
)


class OpenAiDocument(OpenApi):
    """OpenAI's document, read with the RunPod fake's OpenAPI loader, plus what it needs here:
    3.0-style `nullable: true` read as "or null", paths under the server's /v1, and the
    `ErrorResponse` every error answer carries."""

    def __init__(self, path: Path = FIXTURE) -> None:
        super().__init__(path)
        # In place: the loader's $ref registry resolves into this same document.
        _read_nullable(self.doc)

    def operation(self, method: str, path: str) -> Operation | None:
        return super().operation(method, path.removeprefix(PREFIX))

    def check_error(self, body: Any) -> list[str]:
        return self._errors({"$ref": "#/components/schemas/ErrorResponse"}, body, "$")


def _read_nullable(node: Any) -> None:
    """`{"type": T, "nullable": true}` becomes `{"type": [T, "null"]}` (and null joins an
    enum); a nullable schema with no type (oneOf, $ref ...) becomes anyOf null or itself."""
    if isinstance(node, list):
        for item in node:
            _read_nullable(item)
        return
    if not isinstance(node, dict):
        return
    for value in node.values():
        _read_nullable(value)
    if node.get("nullable") is not True:
        return
    del node["nullable"]
    if isinstance(node.get("type"), str):
        node["type"] = [node["type"], "null"]
        if "enum" in node and None not in node["enum"]:
            node["enum"] = [*node["enum"], None]
        return
    rest = dict(node)
    node.clear()
    node["anyOf"] = [{"type": "null"}, rest]


def strict_schema_problems(name: str, schema: Any) -> list[str]:
    """What OpenAI's Structured Outputs guide says strict mode refuses, in its words: a root
    that is not an object, and an object that allows other keys or leaves a property out of
    `required`."""
    intro = f"Invalid schema for response_format '{name}'"
    if not isinstance(schema, dict) or schema.get("type") != "object":
        return [f"{intro}: schema must be a JSON Schema of 'type: \"object\"'."]
    problems: list[str] = []

    def walk(node: Any, context: str) -> None:
        if not isinstance(node, dict):
            return
        if node.get("type") == "object" or "properties" in node:
            properties = node.get("properties") or {}
            if node.get("additionalProperties") is not False:
                problems.append(
                    f"{intro}: In context=({context}), 'additionalProperties' is required to be "
                    "supplied and to be false."
                )
            missing = [k for k in properties if k not in (node.get("required") or [])]
            if missing:
                problems.append(
                    f"{intro}: In context=({context}), 'required' is required to be supplied and "
                    f"to be an array including every key in properties. Missing '{missing[0]}'."
                )
            for key, child in properties.items():
                walk(child, f"{context}, 'properties', '{key}'".lstrip(", "))
        if "items" in node:
            walk(node["items"], f"{context}, 'items'".lstrip(", "))
        for index, part in enumerate(node.get("anyOf") or []):
            walk(part, f"{context}, 'anyOf', '{index}'".lstrip(", "))

    walk(schema, "")
    return problems


@dataclass(frozen=True)
class Reply:
    """One scripted answer: 200 with `content` as the assistant's message, or an error."""

    content: str = ""
    status: int = 200
    message: str = ""
    """The error's message, for a status other than 200."""
    retry_after: int | None = None
    delay: float = 0.0

    @staticmethod
    def score(score: Any, reasoning: str = "The output follows the rubric.") -> Reply:
        return Reply(json.dumps({"reasoning": reasoning, "score": score}))

    @staticmethod
    def claims(*claims: tuple[str, bool, int | None]) -> Reply:
        """(claim, supported, chunk number from 1 or None) each."""
        items = [
            {"claim": text, "supported": ok, "chunk": chunk, "reason": "checked"}
            for text, ok, chunk in claims
        ]
        return Reply(json.dumps({"claims": items}))

    @staticmethod
    def rate_limited(retry_after: int = 1) -> Reply:
        return Reply(status=429, message="Rate limit reached for requests", retry_after=retry_after)

    @staticmethod
    def server_error(status: int = 500) -> Reply:
        return Reply(
            status=status, message="The server had an error while processing your request."
        )

    def slow(self, seconds: float) -> Reply:
        return replace(self, delay=seconds)


PROSE = Reply("The output is quite good; I would give it a 7 out of 10.")
MALFORMED = Reply('{"reasoning": "fine", "score": 7')


@dataclass(frozen=True)
class RecordedRequest:
    path: str
    json: Any
    authorization: str | None

    @property
    def response_format(self) -> str | None:
        """The type of response_format asked for, None when none was."""
        fmt = self.json.get("response_format") if isinstance(self.json, dict) else None
        return fmt.get("type") if isinstance(fmt, dict) else None


class FakeOpenAIChat:
    document = OpenAiDocument()

    def __init__(
        self,
        api_key: str | None = KEY,
        *,
        latency: float = 0.0,
        default: Reply | None = None,
        snapshot: str = "2026-08-21",
    ) -> None:
        """`api_key` None: no Authorization is asked for (a local model server). Answers name
        the model asked for with `-{snapshot}` added, as OpenAI names a dated snapshot."""
        self.api_key = api_key
        self.latency = latency
        self.default = default or Reply.score(7)
        self.snapshot = snapshot
        self.refuse_json_schema = False
        self.refuse_json_object = False
        self._lock = threading.Lock()
        self._port = 0
        self._app = Starlette(
            routes=[
                Route(f"{PREFIX}/chat/completions", self._chat, methods=["POST"]),
                Route("/{path:path}", self._unknown, methods=["GET", "POST", "PUT", "DELETE"]),
            ]
        )
        self.reset()

    # -- serving ---------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        if not self._port:
            raise RuntimeError("FakeOpenAIChat is not serving: use `with fake.serve():`")
        return f"http://127.0.0.1:{self._port}{PREFIX}"

    @contextmanager
    def serve(self) -> Iterator[FakeOpenAIChat]:
        """Serve on a free loopback port, in a thread of its own, until the block ends."""
        listener = socket.create_server(("127.0.0.1", 0))
        config = uvicorn.Config(
            self._app, log_config=None, access_log=False, lifespan="off", backlog=1024
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(
            target=server.run, kwargs={"sockets": [listener]}, name="fake-openai", daemon=True
        )
        thread.start()
        try:
            give_up = time.monotonic() + 10
            while not server.started and thread.is_alive() and time.monotonic() < give_up:
                time.sleep(0.01)
            if not server.started:
                raise RuntimeError("FakeOpenAIChat did not start")
            self._port = listener.getsockname()[1]
            yield self
        finally:
            self._port = 0
            server.should_exit = True
            thread.join(timeout=5)

    def check(self) -> None:
        """Fail if any request or answer broke OpenAI's published contract."""
        with self._lock:
            found, self.violations[:] = list(self.violations), []
        assert not found, "OpenAI's contract was broken:\n" + "\n".join(found)

    # -- script and records, for tests -------------------------------------------------------

    def reset(self) -> None:
        with self._lock:
            self.requests: list[RecordedRequest] = []
            self.violations: list[str] = []
            self._script: list[Reply] = []
            self.in_flight = 0
            self.max_in_flight = 0
            # A request of an earlier test may still be answering (a slow reply its client gave
            # up on): it must not count down the in-flight figures of the next one.
            self._generation = getattr(self, "_generation", 0) + 1
            self._held_enough = asyncio.Event()  # bound to the server's loop on first wait
            #: Answers wait (up to HOLD_SECONDS) until this many requests have been in flight at
            #: once: a concurrency test then sees its limit reached however slowly the machine
            #: starts the requests, and a limit that lets too many through still shows.
            self.hold_until_in_flight = 0

    def script(self, *replies: Reply) -> None:
        """The next requests' answers, in order (then `default` again)."""
        with self._lock:
            self._script.extend(replies)

    # -- the HTTP side -----------------------------------------------------------------------

    async def _unknown(self, request: Request) -> Response:
        message = f"Invalid URL ({request.method} {request.url.path})"
        return self._error(404, message, "invalid_request_error")

    async def _chat(self, request: Request) -> Response:
        raw = await request.body()
        auth = request.headers.get("authorization")
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        with self._lock:
            self.requests.append(RecordedRequest(request.url.path, body, auth))
            generation = self._generation
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            held_enough = 0 < self.hold_until_in_flight <= self.max_in_flight
        if held_enough:
            self._held_enough.set()
        try:
            return await self._answer(body, auth)
        finally:
            with self._lock:
                if generation == self._generation:
                    self.in_flight -= 1

    async def _answer(self, body: Any, auth: str | None) -> Response:
        if self.api_key is not None and auth != f"Bearer {self.api_key}":
            sent = (auth or "").removeprefix("Bearer ")
            message = (
                f"Incorrect API key provided: {sent}." if sent else "You didn't provide an API key."
            )
            return self._error(401, message, "invalid_request_error", code="invalid_api_key")
        if body is None:
            return self._error(
                400, "We could not parse the JSON body of your request.", "invalid_request_error"
            )
        operation = self.document.operation("POST", f"{PREFIX}/chat/completions")
        assert operation is not None
        problems = self.document.check_request(operation, "", body, True)
        problems = problems or self._format_problems(body)
        if problems:
            with self._lock:
                self.violations.extend(f"request: {p}" for p in problems)
            return self._error(400, problems[0], "invalid_request_error")
        refusal = self._refusal(body)
        if refusal is not None:
            return self._error(400, refusal, "invalid_request_error", param="response_format")
        with self._lock:
            reply = self._script.pop(0) if self._script else self.default
        if self.max_in_flight < self.hold_until_in_flight:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._held_enough.wait(), HOLD_SECONDS)
        await asyncio.sleep(self.latency + reply.delay)
        if reply.status != 200:
            headers = {} if reply.retry_after is None else {"Retry-After": str(reply.retry_after)}
            kind = "requests" if reply.status == 429 else "server_error"
            return self._error(reply.status, reply.message, kind, headers=headers)
        return self._send(operation, 200, self._completion(body, reply.content))

    def _format_problems(self, body: dict[str, Any]) -> list[str]:
        """The response_format rules the schema cannot say (its name, strict mode, JSON mode's
        need for a message that asks for JSON)."""
        fmt = body.get("response_format") or {}
        if fmt.get("type") == "json_object":
            words = json.dumps(body.get("messages")).lower()
            if "json" not in words:
                return [
                    "'messages' must contain the word 'json' in some form, to use "
                    "'response_format' of type 'json_object'."
                ]
        if fmt.get("type") != "json_schema":
            return []
        spec = fmt["json_schema"]
        problems = [] if _NAME.fullmatch(spec["name"]) else [f"Invalid 'name': {spec['name']!r}"]
        if spec.get("strict"):
            problems += strict_schema_problems(spec["name"], spec.get("schema"))
        return problems

    def _refusal(self, body: dict[str, Any]) -> str | None:
        kind = (body.get("response_format") or {}).get("type")
        if kind == "json_schema" and self.refuse_json_schema:
            return _NO_JSON_SCHEMA
        if kind == "json_object" and self.refuse_json_object:
            return _NO_JSON_OBJECT
        return None

    def _completion(self, request: dict[str, Any], content: str) -> dict[str, Any]:
        prompt_tokens = len(json.dumps(request["messages"])) // 4 + 1
        completion_tokens = len(content) // 4 + 1
        return {
            "id": "chatcmpl-" + secrets.token_hex(12),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": f"{request['model']}-{self.snapshot}",
            "choices": [
                {
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": content,
                        "refusal": None,
                        "annotations": [],
                    },
                    "finish_reason": "stop",
                    "logprobs": None,
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
                "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                "completion_tokens_details": {
                    "reasoning_tokens": 0,
                    "audio_tokens": 0,
                    "accepted_prediction_tokens": 0,
                    "rejected_prediction_tokens": 0,
                },
            },
            "service_tier": "default",
        }

    def _error(
        self,
        status: int,
        message: str,
        kind: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> Response:
        body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
        operation = self.document.operation("POST", f"{PREFIX}/chat/completions")
        assert operation is not None
        if status == 429:
            value = (headers or {}).get("Retry-After", "")
            if value and not (value.isdigit() and int(value) >= 1):
                self._note([f"Retry-After {value!r} is not an integer of at least 1"], status)
            return self._send(operation, status, body, headers)
        self._note(self.document.check_error(body), status)
        return JSONResponse(body, status, headers=self._headers(headers))

    def _send(
        self,
        operation: Operation,
        status: int,
        body: dict[str, Any],
        headers: dict[str, str] | None = None,
    ) -> Response:
        """An answer the operation documents, checked against the document first."""
        self._note(
            self.document.check_response(operation, status, "application/json", body), status
        )
        return JSONResponse(body, status, headers=self._headers(headers))

    def _note(self, problems: list[str], status: int) -> None:
        if problems:
            with self._lock:
                self.violations.extend(f"{status} answer: {p}" for p in problems)

    @staticmethod
    def _headers(headers: dict[str, str] | None) -> dict[str, str]:
        return {"x-request-id": "req_" + secrets.token_hex(16), **(headers or {})}
