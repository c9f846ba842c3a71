"""Curation's pieces that need no service: a span's Value read as plain JSON, a span as a
candidate (and what each kind of span counts as), and the evaluation split's name."""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf import json_format, struct_pb2

from services.eval.conditions import Verdict
from services.eval.curation import candidate_of, eval_name, plain
from tunelab.eval.v1 import curations_pb2 as cpb
from tunelab.tracing.v1 import spans_pb2 as pb


@pytest.mark.parametrize(
    "value",
    [
        "text",
        "",
        0,
        3,
        -2.5,
        1e300,
        True,
        None,
        [],
        {},
        [{"role": "user", "content": "hi", "n": 2, "x": None, "deep": [[[{"a": [1.5]}]]]}],
        {"messages": [{"role": "system", "content": "be brief"}], "temperature": 0.2},
    ],
)
def test_plain_reads_a_value_as_json_format_does(value: Any) -> None:
    message = json_format.ParseDict(value, struct_pb2.Value())
    assert plain(message) == json_format.MessageToDict(message)


def llm(**fields: Any) -> pb.Span:
    return json_format.ParseDict(
        {
            "trace_id": "t1",
            "span_id": "s1",
            "kind": "SPAN_KIND_LLM",
            "input": [{"role": "user", "content": "Capital of France?"}],
            "output": [{"role": "assistant", "content": "Paris."}],
            **fields,
        },
        pb.Span(),
    )


SFT = cpb.CreateCurationRequest(format=cpb.CURATION_FORMAT_SFT)
DPO = cpb.CreateCurationRequest(format=cpb.CURATION_FORMAT_DPO)
MET = Verdict(judged=True, score=0.9, meets=True)


def test_a_span_that_met_the_conditions_is_a_candidate() -> None:
    progress = cpb.CurationProgress()
    found = candidate_of(llm(session={"session_id": "s-1"}), 7, MET, SFT, progress)
    assert found is not None
    assert (found.seq, found.score, found.meets, found.holdout) == (7, 0.9, True, False)
    assert found.session_key == "s:s-1"
    assert found.prompt == '[{"role":"user","content":"Capital of France?"}]'
    assert found.answer == '{"role":"assistant","content":"Paris."}'
    assert (progress.spans_read, progress.spans_matched) == (1, 1)


@pytest.mark.parametrize(
    ("span", "verdict", "request_", "counted"),
    [
        (llm(status="SPAN_STATUS_ERROR"), MET, SFT, "flagged"),
        (llm(flags={"warnings": ["context_truncated"]}), MET, SFT, "flagged"),
        (llm(output=""), MET, SFT, "unusable"),
        (llm(input=[{"role": "user", "content": [{"type": "image_url"}]}]), MET, SFT, "unusable"),
        (llm(), Verdict(judged=False, score=0, meets=False), SFT, "unjudged"),
        (llm(), Verdict(judged=False, score=0, meets=True), DPO, "unjudged"),
    ],
)
def test_a_span_that_cannot_make_a_row_is_counted_by_why(
    span: pb.Span, verdict: Verdict, request_: cpb.CreateCurationRequest, counted: str
) -> None:
    progress = cpb.CurationProgress()
    assert candidate_of(span, 1, verdict, request_, progress) is None
    assert getattr(progress, counted) == 1
    assert progress.spans_read == 1


def test_flagged_spans_are_kept_when_asked() -> None:
    request = cpb.CreateCurationRequest(
        format=cpb.CURATION_FORMAT_SFT, options=cpb.CurationOptions(keep_flagged=True)
    )
    progress = cpb.CurationProgress()
    assert candidate_of(llm(status="SPAN_STATUS_ERROR"), 1, MET, request, progress) is not None
    assert progress.flagged == 0


def test_dpo_keeps_a_judged_answer_that_failed_the_conditions_as_a_rejected_one() -> None:
    progress = cpb.CurationProgress()
    found = candidate_of(llm(), 1, Verdict(judged=True, score=0.1, meets=False), DPO, progress)
    assert found is not None
    assert not found.meets
    assert progress.spans_matched == 0


def test_the_split_of_an_input_is_the_same_every_time() -> None:
    request = cpb.CreateCurationRequest(
        format=cpb.CURATION_FORMAT_SFT, options=cpb.CurationOptions(eval_fraction=0.5)
    )
    splits = set()
    for question in range(40):
        span = llm(input=[{"role": "user", "content": f"Question {question}?"}])
        first = candidate_of(span, 1, MET, request, cpb.CurationProgress())
        again = candidate_of(span, 2, MET, request, cpb.CurationProgress())
        assert first is not None
        assert again is not None
        assert first.holdout == again.holdout
        splits.add(first.holdout)
    assert splits == {True, False}


@pytest.mark.parametrize(
    ("name", "held_out"),
    [
        ("train.jsonl", "train-eval.jsonl"),
        ("curated", "curated-eval"),
        ("v1.2 data", "v1.2 data-eval"),
        (".jsonl", ".jsonl-eval"),
    ],
)
def test_the_evaluation_datasets_name(name: str, held_out: str) -> None:
    assert eval_name(name) == held_out
