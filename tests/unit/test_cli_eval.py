"""`tunelab eval ...` without a service: the flags become requests that the gateway reads into
the eval contract's messages (checked with the gateway's own request builder), and judgments
shaped as the gateway writes them (its own JSON conversion of eval.v1 messages) are printed."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from google.protobuf import message_factory
from google.protobuf.message import Message
from starlette.requests import Request

from gateway.rules import http_rules
from gateway.transcode import build_request, query_fields, to_json
from tunelab.eval.v1 import eval_service_pb2 as api
from tunelab.eval.v1 import judgments_pb2 as pb
from tunelab_cli import evals, listing
from tunelab_cli.api import CliError
from tunelab_cli.main import main, parser

RULES = {rule.method.name: rule for rule in http_rules(api.DESCRIPTOR)}


def args(*argv: str) -> Any:
    return parser().parse_args(["eval", *argv])


async def as_the_gateway_reads(
    method: str, *, params: dict[str, Any] | None = None, body: Any = None
) -> Any:
    """The request message the gateway builds from what httpx sends for `params` and `body`."""
    rule = RULES[method]
    sent = httpx.Request(rule.verb, f"http://gw{rule.path}", params=params, json=body)
    content = sent.read()

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": content, "more_body": False}

    scope = {
        "type": "http",
        "method": rule.verb,
        "path": rule.path,
        "query_string": sent.url.query,
        "headers": [(k.lower(), v) for k, v in sent.headers.raw],
        "path_params": {},
    }
    request_type = message_factory.GetMessageClass(rule.method.input_type)
    return await build_request(Request(scope, receive), rule, request_type, query_fields(rule))


def test_a_validator_is_a_kind_with_json_params() -> None:
    assert evals.parse_validator("is_json") == {"kind": "is_json"}
    assert evals.parse_validator('contains:{"value":"Paris", "case_sensitive": false}') == {
        "kind": "contains",
        "params": {"value": "Paris", "case_sensitive": False},
    }
    # The parameters may hold colons of their own.
    assert evals.parse_validator('regex:{"pattern": "^a:b$"}')["params"] == {"pattern": "^a:b$"}


@pytest.mark.parametrize(
    ("given", "said"),
    [
        (
            'contains:{"value": Paris}',
            """--validator 'contains:{"value": Paris}': the parameters are not valid JSON: """
            "Expecting value at character 11",
        ),
        ("contains:", "--validator 'contains:': nothing after ':'"),
        ('contains:["Paris"]', "the parameters must be a JSON object"),
        ('contains:{"value": NaN}', "not valid JSON: NaN is not a number JSON allows"),
        ("Contains", "--validator 'Contains': give a validator kind"),
        (':{"value": 1}', "give a validator kind"),
        ("", "--validator '': give a validator kind"),
    ],
)
def test_a_bad_validator_says_which_and_why(given: str, said: str) -> None:
    with pytest.raises(CliError) as caught:
        evals.parse_validator(given)
    assert said in str(caught.value)


async def test_eval_run_body_is_an_evaluate_request() -> None:
    body = evals.evaluate_body(
        args(
            "run",
            "trace-1",
            "--span",
            "span-9",
            "--validator",
            "is_json",
            "--validator",
            'contains:{"value": "Paris", "case_sensitive": false}',
            "--judge-model",
            "gpt-4o-mini",
            "--judge-url",
            "https://judge.example/v1",
            "--judge-key",
            "openai",
            "--rubric",
            "Is it right?",
            "--groundedness",
            "offline",
            "--reference",
            "Paris is the capital.",
            "--rerun",
        )
    )
    request = await as_the_gateway_reads("Evaluate", body=body)
    assert (request.trace_id, request.span_id) == ("trace-1", "span-9")
    assert [v.kind for v in request.validators] == ["is_json", "contains"]
    assert dict(request.validators[1].params) == {"value": "Paris", "case_sensitive": False}
    assert not request.validators[0].HasField("params")
    assert request.judge.base_url == "https://judge.example/v1"
    assert (request.judge.model, request.judge.key_name) == ("gpt-4o-mini", "openai")
    assert request.judge.rubric == "Is it right?"
    assert request.groundedness.method == pb.GROUNDEDNESS_METHOD_OFFLINE
    assert request.reference == "Paris is the capital."
    assert request.rerun


async def test_the_least_a_run_sends() -> None:
    body = evals.evaluate_body(args("run", "t", "--validator", "is_json"))
    assert body == {"trace_id": "t", "validators": [{"kind": "is_json"}]}
    request = await as_the_gateway_reads("Evaluate", body=body)
    assert not request.HasField("judge")
    assert not request.HasField("groundedness")
    assert not request.rerun
    # --judge alone: the operator's configured judge, asked for by an empty Judge.
    judged = evals.evaluate_body(args("run", "t", "--judge"))
    assert judged["judge"] == {}
    assert (await as_the_gateway_reads("Evaluate", body=judged)).HasField("judge")
    grounded = evals.evaluate_body(args("run", "t", "--groundedness", "judge"))
    request = await as_the_gateway_reads("Evaluate", body=grounded)
    assert request.groundedness.method == pb.GROUNDEDNESS_METHOD_JUDGE


def test_nothing_to_check_is_refused() -> None:
    with pytest.raises(CliError, match="nothing to check"):
        evals.evaluate_body(args("run", "t"))


def test_a_judge_url_must_be_http() -> None:
    with pytest.raises(CliError, match=r"--judge-url 'judge\.example/v1': give an http"):
        evals.evaluate_body(args("run", "t", "--judge-url", "judge.example/v1"))


async def test_validators_file_adds_names_weights_and_thresholds(tmp_path: Path) -> None:
    listed = tmp_path / "checks.json"
    listed.write_text(
        json.dumps(
            [
                {"kind": "regex", "name": "year", "params": {"pattern": r"\d{4}"}, "weight": 2},
                {"kind": "char_length", "params": {"max": 500}, "threshold": 1},
            ]
        )
    )
    body = evals.evaluate_body(
        args("run", "t", "--validator", "is_json", "--validators-file", str(listed))
    )
    request = await as_the_gateway_reads("Evaluate", body=body)
    assert [(v.kind, v.name) for v in request.validators] == [
        ("is_json", ""),
        ("regex", "year"),
        ("char_length", ""),
    ]
    assert request.validators[1].weight == 2
    assert request.validators[2].threshold == 1
    wrapped = tmp_path / "wrapped.json"
    wrapped.write_text(json.dumps({"validators": [{"kind": "pii"}]}))
    assert evals.read_validators_file(str(wrapped)) == [{"kind": "pii"}]


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ('[{"kind": "is_json"},\n {"kind": }]', "not valid JSON: Expecting value at line 2 column"),
        ('{"kind": "is_json"}', "give a JSON list of validators"),
        ('[{"kind": "is_json"}, {"params": {}}]', 'validator 2 is not an object with a "kind"'),
        ('["is_json"]', 'validator 1 is not an object with a "kind"'),
    ],
)
def test_a_bad_validators_file_says_where(tmp_path: Path, text: str, said: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(CliError) as caught:
        evals.read_validators_file(str(path))
    assert str(caught.value).startswith(f"--validators-file {path}: ")
    assert said in str(caught.value)


def test_a_missing_validators_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(CliError, match="cannot read it"):
        evals.read_validators_file(str(tmp_path / "none.json"))


def test_two_validators_of_one_name_are_refused_before_sending() -> None:
    with pytest.raises(CliError, match="more than one validator named contains"):
        evals.evaluate_body(
            args("run", "t", "--validator", "contains:{}", "--validator", 'contains:{"value": 1}')
        )


async def test_list_filters_are_judgment_filter_fields() -> None:
    given = args(
        "list",
        "--trace",
        "t1",
        "--session",
        "s1",
        "--validator",
        "year",
        "--failed",
        "--min-score",
        "0.25",
        "--max-score",
        "0.75",
        "--status",
        "error",
        "--since",
        "2026-11-28T10:00:00+01:00",
    )
    params = {**evals.judgment_filter(given), "page_size": 20}
    request = await as_the_gateway_reads("ListJudgments", params=params)
    where = request.filter
    assert (where.trace_id, where.session_id, where.validator) == ("t1", "s1", "year")
    assert where.HasField("passed")
    assert not where.passed
    assert (where.min_score, where.max_score) == (0.25, 0.75)
    assert where.status == pb.JUDGMENT_STATUS_ERROR
    assert where.created_from.ToDatetime(tzinfo=UTC) == datetime(2026, 11, 28, 9, 0, tzinfo=UTC)
    assert request.page_size == 20
    passed = await as_the_gateway_reads(
        "ListJudgments", params=evals.judgment_filter(args("list", "--passed"))
    )
    assert passed.filter.passed
    assert not (await as_the_gateway_reads("ListJudgments", params={})).filter.HasField("passed")


async def test_summary_groups_and_filters() -> None:
    params = evals.summary_params(args("summary", "--by", "model", "--model", "gpt-4o"))
    request = await as_the_gateway_reads("GetSummary", params=params)
    assert request.group_by == api.SUMMARY_GROUP_MODEL
    assert request.filter.model == "gpt-4o"
    for group in evals.GROUPS:
        params = evals.summary_params(args("summary", "--by", group))
        assert (await as_the_gateway_reads("GetSummary", params=params)).group_by
    ungrouped = await as_the_gateway_reads(
        "GetSummary", params=evals.summary_params(args("summary"))
    )
    assert ungrouped.group_by == api.SUMMARY_GROUP_UNSPECIFIED


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["--min-score", "1.5"], "--min-score 1.5: scores run from 0 to 1"),
        (["--max-score", "-0.1"], "--max-score -0.1: scores run from 0 to 1"),
        (["--min-score", "0.8", "--max-score", "0.2"], "--min-score 0.8 is above --max-score"),
        (["--since", "last week"], "--since 'last week': give a duration ago"),
    ],
)
def test_bad_filters_are_refused(argv: list[str], said: str) -> None:
    with pytest.raises(CliError) as caught:
        evals.judgment_filter(args("list", *argv))
    assert said in str(caught.value)


def test_failed_and_passed_exclude_each_other(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        args("list", "--failed", "--passed")
    assert "not allowed with argument" in capsys.readouterr().err


def test_times_ago_and_iso() -> None:
    now = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
    assert listing.parse_time("90m", "--since", now) == "2026-11-28T10:30:00Z"
    assert listing.parse_time("2d", "--since", now) == "2026-11-26T12:00:00Z"
    assert listing.parse_time("1w", "--since", now) == "2026-11-21T12:00:00Z"
    assert listing.parse_time("2026-11-01", "--since") == "2026-11-01T00:00:00Z"
    assert listing.parse_time("2026-11-01T08:00:00Z", "--since") == "2026-11-01T08:00:00Z"
    assert listing.parse_time("2026-11-01T08:00:00-02:00", "--x") == "2026-11-01T10:00:00Z"


def judgment(**fields: Any) -> dict[str, Any]:
    """A judgment as the gateway writes it: eval.v1.Judgment through its JSON conversion."""
    message = pb.Judgment(
        id="jdg_01",
        trace_id="trace-1",
        span_id="span-9",
        session_id="s1",
        model="gpt-4o",
        status=pb.JUDGMENT_STATUS_COMPLETE,
        score=1.0,
        passed=True,
        config_key="cfg",
        attempt=1,
        duration_ms=12.5,
    )
    message.created_at.FromDatetime(datetime(2026, 11, 28, 10, 0, 5, tzinfo=UTC))
    for name, value in fields.items():
        if isinstance(value, Message):
            getattr(message, name).CopyFrom(value)
        elif isinstance(value, list):
            getattr(message, name).extend(value)
        else:
            setattr(message, name, value)
    return to_json(message)


def check(name: str, kind: str, passed: bool, score: float, **fields: Any) -> pb.CheckResult:
    return pb.CheckResult(
        name=name, kind=kind, passed=passed, score=score, weight=1, threshold=1, **fields
    )


FAILED = dict(
    status=pb.JUDGMENT_STATUS_ERROR,
    score=0.5,
    passed=False,
    failed=["contains", "judge"],
    results=[
        check("is_json", "is_json", True, 1.0, reason="the output is JSON"),
        check("contains", "contains", False, 0.0, reason="'Paris' is not in the output"),
        check("judge", "judge", False, 0.0, reason="no answer in 30 s", error="timeout"),
        check("groundedness", "groundedness", True, 0.75, reason="3 of 4 claims"),
    ],
    judge=pb.JudgeOutcome(
        model="gpt-4o-mini", scale_min=1, scale_max=10, attempts=3, latency_ms=30000.0
    ),
    groundedness=pb.GroundednessOutcome(
        method=pb.GROUNDEDNESS_METHOD_OFFLINE,
        score=0.75,
        claims=[
            pb.Claim(text="Paris is in France.", supported=True),
            pb.Claim(text="It has 3 people.", supported=False, reason="no match"),
        ],
        unsupported=["It has 3 people."],
    ),
)


def test_the_canned_judgment_is_shaped_as_the_contract_says() -> None:
    shaped = judgment(**FAILED)
    assert shaped["status"] == "error"
    assert shaped["groundedness"]["method"] == "offline"
    assert shaped["created_at"] == "2026-11-28T10:00:05Z"
    assert "raw_score" not in shaped["judge"]  # optional, and the judge gave none


def test_a_failed_judgment_shows_each_check() -> None:
    lines = evals.judgment_lines(judgment(**FAILED))
    assert lines[0] == "FAILED (a check could not be made)  score 0.50  failed: contains, judge"
    assert lines[1] == "trace trace-1  span span-9  model gpt-4o  session s1"
    assert lines[2] == "judgment jdg_01, attempt 1, 2026-11-28 10:00:05 UTC"
    table = lines[lines.index("") + 1 :]
    assert table[0].split() == ["CHECK", "RESULT", "SCORE", "WEIGHT", "REASON"]
    rows = {row.split()[0]: row.split(None, 4) for row in table[1:5]}
    assert rows["is_json"] == ["is_json", "pass", "1.00", "1", "the output is JSON"]
    assert rows["contains"][1:4] == ["FAIL", "0.00", "1"]
    assert rows["contains"][4] == "'Paris' is not in the output"
    assert rows["judge"][1] == "error"
    assert rows["judge"][4] == "timeout: no answer in 30 s"
    assert rows["groundedness"][1:3] == ["pass", "0.75"]
    text = "\n".join(lines)
    assert "judge gpt-4o-mini: no score, 3 attempts, 30.00s" in text
    assert "groundedness (offline): 0.75, 1 of 2 claims supported" in text
    assert "  unsupported: It has 3 people." in text


def test_a_passed_judgment_with_the_judge_s_reasoning() -> None:
    outcome = pb.JudgeOutcome(
        model="gpt-4o-mini",
        raw_score=8,
        scale_min=1,
        scale_max=10,
        attempts=1,
        latency_ms=420,
        reasoning="Correct.\nPolite too.",
        judge_trace_id="judge-trace",
    )
    lines = evals.judgment_lines(
        judgment(score=0.78, judge=outcome, results=[check("judge", "judge", True, 0.78)])
    )
    assert lines[0] == "PASSED  score 0.78"
    text = "\n".join(lines)
    assert "judge gpt-4o-mini: 8 on 1..10, 1 attempt, 420ms (its own trace: judge-trace)" in text
    assert "\n  Correct.\n  Polite too." in text
    assert "groundedness" not in text
    deleted = evals.judgment_lines(judgment(trace_deleted=True))
    assert "(the trace was deleted after it was judged; the judgment is kept)" in deleted


Handler = Callable[[httpx.Request], httpx.Response]


def gateway(monkeypatch: pytest.MonkeyPatch, handler: Handler, module: Any = evals) -> None:
    """The commands talk to `handler` instead of a gateway."""

    def client(_: Any) -> httpx.Client:
        return httpx.Client(transport=httpx.MockTransport(handler), base_url="http://gw")

    monkeypatch.setattr(module, "api_client", client)


def run(*argv: str) -> int:
    with pytest.raises(SystemExit) as done:
        main(["eval", *argv])
    code = done.value.code
    return code if isinstance(code, int) else 1


@pytest.mark.parametrize(("shape", "status"), [({}, 0), (FAILED, 1)])
def test_run_exits_1_when_the_judgment_failed(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    shape: dict[str, Any],
    status: int,
) -> None:
    sent: list[Any] = []

    def answer(request: httpx.Request) -> httpx.Response:
        sent.append((request.method, request.url.path, json.loads(request.content)))
        return httpx.Response(200, json={"judgment": judgment(**shape), "created": True})

    gateway(monkeypatch, answer)
    assert run("run", "trace-1", "--validator", "is_json") == status
    assert sent == [
        ("POST", "/v1/evaluations", {"trace_id": "trace-1", "validators": [{"kind": "is_json"}]})
    ]
    out = capsys.readouterr()
    assert out.out.startswith("PASSED" if status == 0 else "FAILED")
    assert out.err == ""
    assert run("run", "trace-1", "--validator", "is_json", "--json") == status
    assert json.loads(capsys.readouterr().out)["judgment"]["id"] == "jdg_01"


def test_a_judgment_made_before_is_said(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    gateway(
        monkeypatch,
        lambda _: httpx.Response(200, json={"judgment": judgment(), "created": False}),
    )
    assert run("run", "t", "--validator", "is_json") == 0
    assert "judged before with this configuration" in capsys.readouterr().err


def test_the_gateway_s_error_message_is_printed(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    error = {
        "error": {
            "code": 400,
            "status": "INVALID_ARGUMENT",
            "message": "validators[0].params.pattern: not a valid regular expression",
        }
    }
    gateway(monkeypatch, lambda _: httpx.Response(400, json=error))
    assert run("run", "t", "--validator", 'regex:{"pattern": "("}') == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        "tunelab: validators[0].params.pattern: not a valid regular expression "
        "(HTTP 400, INVALID_ARGUMENT)\n"
    )
    assert run("run", "t", "--validator", "contains:{oops}") == 1
    assert "tunelab: --validator 'contains:{oops}': the parameters" in capsys.readouterr().err


def test_list_pages_up_to_the_limit(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    stored = [judgment(id=f"jdg_{i}", score=i / 10, passed=i > 2) for i in range(7)]
    asked: list[dict[str, str]] = []

    def answer(request: httpx.Request) -> httpx.Response:
        params = dict(request.url.params)
        asked.append(params)
        start = int(params.get("page_token") or 0)
        end = start + min(int(params["page_size"]), 2)  # the service's pages are short
        token = str(end) if end < len(stored) else ""
        return httpx.Response(200, json={"judgments": stored[start:end], "next_page_token": token})

    gateway(monkeypatch, answer)
    main(["eval", "list", "--failed", "--limit", "5", "--json"])
    document = json.loads(capsys.readouterr().out)
    assert [j["id"] for j in document["judgments"]] == [f"jdg_{i}" for i in range(5)]
    assert document["next_page_token"] == "5"
    # Each page asks only for what is left, so the token is where the next item is.
    assert [a["page_size"] for a in asked] == ["5", "3", "1"]
    assert all(a["passed"] == "false" for a in asked)

    asked.clear()
    main(["eval", "list", "--all", "--page-token", "5"])
    out = capsys.readouterr()
    table = out.out.splitlines()
    assert table[0].split()[:4] == ["CREATED", "(UTC)", "JUDGMENT", "TRACE"]
    assert [row.split()[2] for row in table[1:]] == ["jdg_5", "jdg_6"]
    assert table[1].split()[-3:] == ["0.50", "pass", "-"]
    assert out.err == ""
    assert [a["page_size"] for a in asked] == [str(listing.PAGE_MAX)]

    main(["eval", "list", "--limit", "2"])
    assert "--page-token 2 for the next" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["eval", "list", "--limit", "0"])
    assert "tunelab: --limit 0: give at least 1" in capsys.readouterr().err


def test_summary_table(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    rows = [
        api.SummaryRow(
            group="2026-11-28T10:00:00Z",
            count=12,
            passed=9,
            pass_rate=0.75,
            mean_score=0.8125,
            score=api.ScorePercentiles(p50=0.9, p90=1.0, p99=1.0),
            errors=1,
        ),
        api.SummaryRow(group="2026-11-28T11:00:00Z", count=3),
    ]
    answer = to_json(api.GetSummaryResponse(rows=rows))
    assert answer["rows"][0]["count"] == "12"  # int64 as a string
    seen: list[str] = []

    def reply(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url.query, "ascii"))
        return httpx.Response(200, json=answer)

    gateway(monkeypatch, reply)
    main(["eval", "summary", "--by", "hour", "--failed"])
    assert seen == ["passed=false&group_by=hour"]
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["GROUP", "COUNT", "PASS", "RATE", "MEAN", "P50", "P90", "ERRORS"]
    assert table[1].split() == [
        "2026-11-28",
        "10:00:00",
        "12",
        "75.0%",
        "0.81",
        "0.90",
        "1.00",
        "1",
    ]
    assert table[2].split() == ["2026-11-28", "11:00:00", "3", "0.0%", "0.00", "-", "-", "0"]
    gateway(monkeypatch, lambda _: httpx.Response(200, json=to_json(api.GetSummaryResponse())))
    main(["eval", "summary"])
    assert capsys.readouterr().err == "no judgments\n"
    overall = to_json(api.GetSummaryResponse(rows=[api.SummaryRow(count=1, pass_rate=1)]))
    gateway(monkeypatch, lambda _: httpx.Response(200, json=overall))
    main(["eval", "summary"])
    assert capsys.readouterr().out.splitlines()[1].split()[:3] == ["(all)", "1", "100.0%"]


def test_validator_kinds(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    kinds = api.ListValidatorKindsResponse(
        kinds=[
            api.ValidatorKind(
                kind="contains",
                description="The output contains a value.",
                params={"value": "string (required)", "case_sensitive": "bool (default true)"},
                default_threshold=1,
            )
        ]
    )
    gateway(monkeypatch, lambda _: httpx.Response(200, json=to_json(kinds)))
    main(["eval", "validators"])
    assert capsys.readouterr().out.splitlines() == [
        "contains (passes at 1): The output contains a value.",
        "    case_sensitive: bool (default true)",
        "    value: string (required)",
    ]
