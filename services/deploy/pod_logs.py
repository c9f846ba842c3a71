"""A run's log: the lines its pod pushes with its job token, sanitized, bounded, streamed to its
owner (and followed while the run goes on).

The pod numbers its lines (report.py `ship_log`), so a batch sent again is stored once and a
lost stretch shows as a gap. Lines are sanitized before they are stored: escape sequences and
control characters go (the log is shown in terminals), then the run's own secrets (its job
token, the provider key its pod was rented with, its owner's Hugging Face token) and every
credential `services.common.redact` recognises (our tokens, such as the dataset link's, provider
key shapes, Authorization header values, private keys) are masked. A run keeps its newest
`max_log_lines` lines; the first time older ones are dropped, its event log says so.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import datetime

from services.common import redact
from services.common.errors import invalid_argument
from services.deploy import convert, reports
from services.deploy.changes import Changes
from services.deploy.keys import KeyRing, KeyRingError
from services.deploy.pod_log_store import LogLine, PodLogStore
from services.deploy.store import Change, Deployment, DeploymentStore
from tunelab.deploy.v1 import deploy_service_pb2 as api
from tunelab.deploy.v1 import deployments_pb2 as pb

MAX_BATCH_LINES = 500
MAX_LINE_CHARS = reports.MAX_LINE_CHARS
MAX_SEQUENCE = 2**31 - 1
# Lines per message of a stream: at most a few hundred kilobytes.
PAGE_LINES = 200
POLL_SECONDS = 1.0
MASK = "[REDACTED]"
HUGGING_FACE = "huggingface"
# Only this much of a line is looked at (it is cut to MAX_LINE_CHARS after masking, so that a
# secret the cut would halve is masked whole first).
_SCAN_CHARS = 4 * MAX_LINE_CHARS
_ESCAPE = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)?|[@-Z\\-_])")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")
_PEM_BODY = re.compile(r"[A-Za-z0-9+/=\s]*|[A-Za-z-]+: .*")

Clock = Callable[[], datetime]


class PodLogs:
    def __init__(
        self,
        deployments: DeploymentStore,
        lines: PodLogStore,
        keyring: KeyRing,
        *,
        max_lines: int,
        follow_seconds: float,
        clock: Clock,
    ) -> None:
        self.deployments = deployments
        self.lines = lines
        self.keyring = keyring
        self.max_lines = max_lines
        self.follow_seconds = follow_seconds
        self.clock = clock
        # Wakes the followers of a run when its pod sent lines (in this process; followers
        # also poll, for lines another replica stored and for the run's end).
        self.arrived = Changes()

    async def append(
        self, request: api.AppendDeploymentLogsRequest
    ) -> api.AppendDeploymentLogsResponse:
        d = await reports.run_of(self.deployments, request.deployment_id, request.job_token)
        if d.state.terminal:
            raise reports.finished(d)
        first, texts = request.batch.first_line, request.batch.lines
        _check(first, len(texts))
        clean = sanitize(texts, await self._secrets(d, request.job_token))
        now = self.clock()
        appended = await self.lines.append(d.id, first, clean, now, self.max_lines)
        if appended is None:  # the run ended meanwhile
            raise reports.finished(await self.deployments.get(d.owner, d.id))
        if appended.dropping_began:
            await self.deployments.mutate(d.id, now, self._note_dropping)
        if appended.stored:
            self.arrived.notify(d.id)
        return api.AppendDeploymentLogsResponse(last_line=appended.last_line)

    def _note_dropping(self, current: Deployment) -> Change:
        change = Change()
        change.log(
            "log_truncated",
            f"the pod's log passed {self.max_lines} lines: from now on only the newest "
            f"{self.max_lines} are kept, older ones are dropped",
        )
        return change

    async def _secrets(self, d: Deployment, job_token: str) -> list[str]:
        return await run_secrets(d, self.deployments, self.keyring, job_token)

    async def stream(
        self, owner: str, request: api.StreamDeploymentLogsRequest
    ) -> AsyncIterator[api.StreamDeploymentLogsResponse]:
        """The lines after `after_sequence`, a page per message (the first message even when
        there are none). With follow: then new ones as they come, until the run is over and
        every line is sent, or `follow_seconds` pass (the client resumes from the last
        sequence it got)."""
        after = request.after_sequence
        if after < 0:
            raise invalid_argument("after_sequence", "after_sequence must not be negative")
        loop = asyncio.get_running_loop()
        ends = loop.time() + self.follow_seconds
        sent_any = False
        while True:
            # The state is read before the lines: no line is stored once a run has ended, so
            # when it had, these lines are all there are.
            d = await self.deployments.get(owner, request.deployment_id)
            found = await self.lines.after(d.id, after, PAGE_LINES)
            if found or not sent_any:
                yield _message(found, after)
                sent_any = True
            if found:
                after = found[-1].sequence
            if len(found) == PAGE_LINES:
                continue
            if not request.follow or d.state.terminal or loop.time() >= ends:
                return
            await self.arrived.wait(d.id, min(POLL_SECONDS, max(ends - loop.time(), 0)))


async def run_secrets(
    d: Deployment, deployments: DeploymentStore, keyring: KeyRing, job_token: str | None = None
) -> list[str]:
    """The run's own secrets, whatever their shape, for masking what its pod printed: its job
    token (`job_token`, else decrypted from the run while it keeps it), the provider key its
    pod was rented with (while the pod lives), its owner's Hugging Face token (pods on a
    provider other than local get it)."""
    ciphertexts = [d.provider_key_ciphertext]
    if job_token is None:
        ciphertexts.append(d.job_token_ciphertext)
    if d.spec.provider != "local":
        ciphertexts.append(await deployments.key_ciphertext(d.owner, HUGGING_FACE))
    found = [job_token] if job_token else []
    for ciphertext in ciphertexts:
        if ciphertext:
            try:
                found.append(keyring.decrypt(ciphertext))
            except KeyRingError:
                continue  # undecryptable: it was never given to the pod in this form
    return found


def _check(first_line: int, count: int) -> None:
    if first_line < 1:
        raise invalid_argument(
            "batch.first_line", "batch.first_line is required: the first line's number, from 1"
        )
    if count > MAX_BATCH_LINES:
        raise invalid_argument(
            "batch.lines", f"a batch holds at most {MAX_BATCH_LINES} lines; send the rest next"
        )
    if first_line + count - 1 > MAX_SEQUENCE:
        raise invalid_argument("batch.first_line", f"line numbers end at {MAX_SEQUENCE}")


def sanitize(lines: Sequence[str], secrets: Sequence[str]) -> list[str]:
    """The lines as they may be shown: escape sequences removed, other control characters
    replaced, `secrets` and every credential `redact` recognises masked, cut to
    MAX_LINE_CHARS. The lines of a private key that follow its BEGIN line in the same batch are
    masked too."""
    secrets = [s for s in secrets if len(s) >= 8]
    clean: list[str] = []
    in_key = False
    for line in lines:
        text = _CONTROL.sub("\ufffd", _ESCAPE.sub("", line[:_SCAN_CHARS]))
        for secret in secrets:
            text = text.replace(secret, MASK)
        if in_key:
            if "-----END" in text:
                text, in_key = MASK, False
            elif _PEM_BODY.fullmatch(text):
                text = MASK
            else:
                in_key = False
        elif "-----BEGIN" in text and "PRIVATE KEY-----" in text and "-----END" not in text:
            in_key = True
        clean.append(redact.redact(text)[:MAX_LINE_CHARS])
    return clean


def _message(lines: list[LogLine], after: int) -> api.StreamDeploymentLogsResponse:
    return api.StreamDeploymentLogsResponse(
        lines=[
            pb.LogLine(
                sequence=line.sequence,
                time=convert.timestamp(line.received_at),
                # Masked again as it leaves: a credential recognised since it was stored.
                text=redact.redact(line.text),
            )
            for line in lines
        ],
        missing=lines[0].sequence - after - 1 if lines else 0,
    )
