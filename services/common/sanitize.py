"""Masks credentials in everything the tracing service is about to store.

Shared (in services/common) because the eval service masks the same credentials again in the
datasets it curates from traces (`services.eval.scrub`).

A trace of an LLM call carries request headers, URLs, prompts, completions and free-form
metadata, and any of them can hold a credential: an `Authorization` header, a `?key=` query
parameter, an API key pasted into a prompt, a `password` field three levels down a tool call.
Nothing with a credential may reach the database, a log line, a list, an export or an error
message, so every value goes through this module *before* it is stored or echoed anywhere; once a
secret is in a row it is in every backup and every export after it.

Two complementary tests decide what is masked:

* by *name*: `sensitive_name` recognises header, query-parameter and JSON-key names that hold
  credentials, and their whole value is replaced by `MASK`, whatever it looks like;
* by *shape*: `sanitize_text` recognises credentials inside free text (provider key prefixes,
  JWTs, PEM private keys, `scheme://user:password@`, `password=...` / `api_key: ...` pairs),
  reusing `services.common.redact` for the published key shapes.

Every pattern is linear-time: the text comes from users and their models, and a pattern that
backtracks would let one trace stall the service.

False-positive choices for names (LLM traces are full of "token" and "key" that are no secret):

* `token` counts only as the last word (`access_token`, `refreshToken`, `x-auth-token`) or
  followed by `value`/`raw`/...; counts and ids of model tokens are kept: `max_tokens`,
  `input_tokens`, `cache_read_input_tokens`, `token_count`, `tokens_per_second`, `token_type`,
  `eos_token`, `pad_token_id`. Pagination cursors (`page_token`, `next_page_token`) are no
  credential and are kept. A plural `tokens` is masked only after a credential word
  (`api_tokens`, `refresh_tokens`).
* `key` counts as the last word (`key` itself, as in Google's `?key=`; `x-goog-api-key`,
  `private_key`, `ssh_key`) unless it names a database, cache or storage key (`primary_key`,
  `sort_key`, `cache_key`, `idempotency_key`, `object_key`...) or a public key (`public_key`).
  `primary_key_column`, `keyboard`, `monkey`, `key_id` are kept.
* `password`, `passwd`, `passphrase`, `secret` (not `secretary`), `credential`, `apikey`,
  `privatekey`, `accesskey` anywhere in the name mask it, even `password_min_length`: such
  values are rarely worth seeing.
* `pass` counts only as the last word (`db_pass`; not `pass_rate`, `pass@1`).
* `sig`/`signature` count as the last word (`X-Amz-Signature`, `x-hub-signature-256`; not
  `signature_version`); `auth`/`authorization`/`jwt`/`cookie` likewise (`basic_auth`; not
  `auth_type`, `authorization_url`).
* `session_id` is kept: in LLM traces it groups the calls of a conversation. Connection strings
  (`dsn`, `database_url`) are not masked by name; the password in them is, by shape.
* In free text, the ambiguous bare names (`key`, `pass`, `sig`, `signature`) count only before
  `=` (`?key=...`), not before `:` ("Key: C major"). `Bearer <word>` / `Basic <word>` in prose is
  masked by `redact` (a token cannot be told from a word): a known, accepted false positive.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote_plus

from services.common.redact import fold, redact
from services.common.remembered import Remembered

MASK = "[REDACTED]"
TRUNCATED = "[TRUNCATED: nested too deep]"
MAX_DEPTH = 64

_EXACT = frozenset(
    {"authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key", "api-key"}
)
# Anywhere in the name, separators removed ("x-goog-api-key" -> "xgoogapikey").
_STRONG = re.compile(
    r"password|passwd|passphrase|secret(?!ar)|credential|apikey|privatekey|accesskey"
)
# Anywhere, as a whole word.
_WORDS = frozenset({"pwd", "creds"})
# As the last word (trailing numbers ignored: "x-hub-signature-256").
_LAST = frozenset(
    {"sig", "signature", "auth", "authorization", "jwt", "bearer", "cookie", "cookies"}
)
# Before "token": a model token or a pagination cursor, not a credential.
_TOKEN_BENIGN = (
    "max", "min", "num", "total", "input", "output", "prompt", "completion", "cached", "reasoning",
    "eos", "bos", "pad", "unk", "sep", "cls", "mask", "special", "stop", "start", "end", "page",
    "next", "prev", "previous", "first", "last", "continuation",
)  # fmt: skip
# After "token": still the token itself.
_TOKEN_TRAILERS = frozenset(
    {"value", "raw", "plain", "plaintext", "string", "str", "b64", "base64"}
)
# Before "tokens": a collection of credentials.
_TOKENS_CREDENTIAL = (
    "access", "refresh", "auth", "api", "session", "id", "bearer", "oauth", "csrf", "personal",
    "security",
)  # fmt: skip
# Before "key": a database, cache, storage or public key.
_KEY_BENIGN = frozenset(
    {
        "primary", "foreign", "sort", "partition", "hash", "range", "cache", "idempotency",
        "object", "routing", "dedup", "dedupe", "group", "shard", "lookup", "unique", "composite",
        "index", "row", "join", "public", "map", "dict", "lock", "ordering", "message", "event",
        "entity", "resource", "config", "setting", "metric", "label", "tag", "column", "field",
        "attribute", "attr", "property", "record", "item", "hot", "short", "translation", "i18n",
    }
)  # fmt: skip
_KEY_SUFFIXES = ("sshkey", "masterkey", "encryptionkey", "hmackey", "authkey", "signingkey")
# Ambiguous in prose: a credential name in free text only before "=".
_TEXT_EQUALS_ONLY = frozenset({"key", "pass", "sig", "signature"})

_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
_SEPARATORS = re.compile(r"[^a-z0-9]+")


def _sensitive(name: str) -> bool:
    if name.strip().lower() in _EXACT:
        return True
    words = [w for w in _SEPARATORS.split(_CAMEL.sub("_", name).lower()) if w]
    if not words:
        return False
    if _STRONG.search("".join(words)) or any(w in _WORDS for w in words):
        return True
    if words[-1] == "pass":
        return True
    meaningful = [w for w in words if not w.isdigit()] or words
    last = meaningful[-1]
    before = meaningful[-2] if len(meaningful) > 1 else ""
    if last in _LAST:
        return True
    if last == "key":
        return before not in _KEY_BENIGN
    if last.endswith(_KEY_SUFFIXES):
        return True
    if last.endswith("tokens"):
        qualifier = last[: -len("tokens")] or before
        return qualifier.endswith(_TOKENS_CREDENTIAL)
    for i, word in enumerate(meaningful):
        if word.endswith("token") and all(w in _TOKEN_TRAILERS for w in meaningful[i + 1 :]):
            qualifier = word[: -len("token")] or (meaningful[i - 1] if i else "")
            return not qualifier.endswith(_TOKEN_BENIGN)
    return False


# Whether a header, query-parameter or JSON-key name holds a credential (the same names come
# back in every span).
sensitive_name = Remembered(_sensitive, 4096)


def sanitize_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """Headers to store: names kept exactly as given, credential values masked.

    Names are not lower-cased, so that two spellings of one name stay two entries (and both are
    masked). URL-valued headers (Referer, Location...) go through `sanitize_url`.
    """
    out: dict[str, str] = {}
    for name, value in headers.items():
        if sensitive_name(name):
            out[name] = MASK
        elif _looks_like_url(value):
            out[name] = sanitize_url(value)
        else:
            out[name] = sanitize_text(value)
    return out


def sanitize_url(url: str) -> str:
    """A URL with its userinfo password, credential query/fragment parameters and key shapes masked.

    Parsed by hand rather than with urllib so that nothing untouched is re-encoded or normalised,
    and so that no malformed URL can raise. The mask is inserted as is (not percent-encoded): the
    result is for reading, not for requesting.
    """
    rest, hash_, fragment = url.partition("#")
    rest, qmark, query = rest.partition("?")
    head = ""
    scheme, sep, after = rest.partition("://")
    if sep and _SCHEME.fullmatch(scheme):
        netloc, slash, path = after.partition("/")
        userinfo, at, host = netloc.rpartition("@")
        if at:
            user, colon, _password = userinfo.partition(":")
            netloc = f"{user}:{MASK}@{host}" if colon else netloc
        head, rest = f"{scheme}://{netloc}{slash}", path
    path = "/".join(_sanitize_segment(segment) for segment in rest.split("/"))
    if qmark:
        query = _sanitize_params(query)
    if hash_ and "=" in fragment:
        fragment = _sanitize_params(fragment)
    elif hash_:
        fragment = _sanitize_segment(fragment)
    return sanitize_text(f"{head}{path}{qmark}{query}{hash_}{fragment}")


def sanitize_text(text: str) -> str:
    """Free text (a prompt, a completion, an error message) with credentials masked by shape."""
    # Texts repeat from span to span (keys, roles, model names, a system prompt, the question
    # every span of a trace carries): answers are remembered, up to a budget of characters.
    # (The process's own secrets are registered at start, before any span arrives, so a
    # remembered answer never misses one.)
    global _remembered_chars
    if len(text) > _REMEMBERED_LENGTH:
        return _sanitize(text)
    try:
        return _remembered[text]
    except KeyError:
        if _remembered_chars > _REMEMBERED_CHARS:
            _remembered.clear()
            _remembered_chars = 0
        found = _remembered[text] = _sanitize(text)
        _remembered_chars += len(text)
        return found


def _sanitize(text: str) -> str:
    text = redact(text)
    # The patterns below cost a Python step per candidate; most text holds none of the words
    # they need, which a plain substring test finds out at C speed.
    folded = fold(text)
    if "authorization" in folded or "cookie" in folded:
        text = _HEADER_LINE.sub(_mask_header_line, text)
    text = _URL_USERINFO.sub(_mask_userinfo, text)
    if _may_name_a_credential(folded):
        text = _mask_key_values(text)
    return text


# A word every sensitive name holds once lower-cased with its separators removed (see
# `_sensitive`: "x-api-key" -> "xapikey", "pass_word" -> "password").
_NAME_WORDS = (
    "pass", "pwd", "secret", "cred", "key", "token", "sig", "auth", "jwt", "bearer", "cookie",
)  # fmt: skip


def _may_name_a_credential(folded: str) -> bool:
    joined = folded.replace("_", "").replace("-", "").replace(".", "")
    for word in _NAME_WORDS:  # noqa: SIM110 (any() over a generator costs more)
        if word in joined:
            return True
    return False


_REMEMBERED_LENGTH = 4096
_REMEMBERED_CHARS = 4 * 1024 * 1024
_remembered: dict[str, str] = {}
_remembered_chars = 0


def sanitize_value(value: Any, *, depth: int = 0) -> Any:
    """A JSON-like structure (as from a protobuf Struct) with its credentials masked.

    Values under sensitive keys become MASK whatever their type; strings (keys too) go through
    `sanitize_text`; anything nested deeper than MAX_DEPTH becomes TRUNCATED. Returns a new
    structure; the input is never modified. A type that is not JSON-like is stored as its
    sanitized `str()`, so nothing unexamined gets through.
    """
    if depth > MAX_DEPTH:
        return TRUNCATED
    kind = type(value)
    # Exact types first: this runs for every value of every span.
    if kind is str:
        return sanitize_text(value)
    if value is None or kind is bool or kind is int or kind is float:
        return value
    nested = depth + 1
    # A string within the depth limit is sanitized here rather than through another call.
    inline = nested <= MAX_DEPTH
    if kind is dict or isinstance(value, Mapping):
        out: dict[Any, Any] = {}
        for key, item in value.items():
            if isinstance(key, str):
                if sensitive_name(key):
                    out[sanitize_text(key)] = MASK
                    continue
                key = sanitize_text(key)
            out[key] = (
                sanitize_text(item)
                if inline and type(item) is str
                else sanitize_value(item, depth=nested)
            )
        return out
    if kind is list or isinstance(value, list | tuple):
        return [
            sanitize_text(item)
            if inline and type(item) is str
            else sanitize_value(item, depth=nested)
            for item in value
        ]
    if isinstance(value, bool | int | float):
        return value
    return sanitize_text(str(value))


_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")


def _looks_like_url(value: str) -> bool:
    return "://" in value[:40] and _SCHEME.fullmatch(value.partition("://")[0]) is not None


def _decoded(raw: str) -> str:
    """Percent-decoded, up to three times (against double encoding)."""
    for _ in range(3):
        decoded = unquote_plus(raw)
        if decoded == raw:
            break
        raw = decoded
    return raw


def _sanitize_segment(segment: str) -> str:
    """An encoded path segment or fragment: masked whole if, decoded, it holds a credential."""
    if "%" not in segment and "+" not in segment:
        return segment
    decoded = _decoded(segment)
    return MASK if sanitize_text(decoded) != decoded else segment


def _sanitize_params(query: str) -> str:
    parts = []
    for part in query.split("&"):
        raw_name, eq, raw_value = part.partition("=")
        name = _decoded(raw_name)
        if sanitize_text(name) != name:
            part = MASK
        elif eq and (sensitive_name(name) or _sanitize_segment(raw_value) != raw_value):
            part = f"{raw_name}={MASK}"
        parts.append(part)
    return "&".join(parts)


# "Authorization: ..." / "Cookie: ..." in text: the value runs to the end of the line (or quote).
_HEADER_LINE = re.compile(
    r"(?i)(?<![A-Za-z0-9_-])(?:proxy-)?authorization[ \t]*:[ \t]*(?P<v>[^\r\n\"']+)"
    r"|(?<![A-Za-z0-9_-])(?:set-)?cookie[ \t]*:[ \t]*(?P<c>[^\r\n\"']+)"
)
# scheme://user:password@ (the password may hold "@"; each part bounded, so linear).
_URL_USERINFO = re.compile(r"://(?P<user>[^\s/?#@:'\"<>]{0,256}+):(?P<pw>[^\s/?#'\"<>]{1,256})@")
# A name and a separator: the value is matched only when the name is sensitive, so that a
# harmless pair ("https:") never swallows the sensitive one after it ("//h/?token=...").
_NAME_SEP = re.compile(
    r"(?<![A-Za-z0-9_.\-])(?P<name>[A-Za-z_\-][A-Za-z0-9_.\-]{0,127}+)"
    r"(?P<sep>\\?[\"']?[ \t]*(?P<op>[:=]=?|=>)[ \t]*)"
)
_VALUE = re.compile(
    r"(?P<q>\\?[\"'])(?P<quoted>(?:[^\"'\\\n]|\\[^\"'\n])*+)"
    r"|(?i:(?:bearer|basic|token|digest)[ \t]+)?"
    r"(?P<bare>[^\s\"'`,;&<>(){}\\][^\s\"'`,;&<>(){}\\]*+)"
)


def _mask_header_line(match: re.Match[str]) -> str:
    group = "v" if match.group("v") is not None else "c"
    start, end = match.span(group)
    offset = match.start()
    whole = match.group(0)
    return whole[: start - offset] + MASK + whole[end - offset :]


def _mask_userinfo(match: re.Match[str]) -> str:
    if match.group("pw") == MASK:
        return match.group(0)
    return f"://{match.group('user')}:{MASK}@"


def _mask_key_values(text: str) -> str:
    pieces: list[str] = []
    cursor = 0
    for match in _NAME_SEP.finditer(text):
        if match.start() < cursor:
            continue  # inside a value already masked
        name = match.group("name")
        if not sensitive_name(name):
            continue
        if name.strip("-_.").lower() in _TEXT_EQUALS_ONLY and "=" not in match.group("op"):
            continue
        value = _VALUE.match(text, match.end())
        if value is None:
            continue
        group = "quoted" if value.group("q") is not None else "bare"
        start, end = value.span(group)
        if start == end or text[start:end] == MASK:
            continue
        pieces.append(text[cursor:start])
        pieces.append(MASK)
        cursor = end
    if not pieces:
        return text
    pieces.append(text[cursor:])
    return "".join(pieces)
