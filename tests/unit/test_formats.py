"""Format detection, fed the way uploads arrive: in chunks that split lines anywhere."""

from __future__ import annotations

import json

import pytest

from services.datasets.formats import Analysis, Format, FormatDetector

SFT = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
DPO = {"prompt": "2+2?", "chosen": "4", "rejected": "5"}
TEXT = {"text": "plain words"}


def jsonl(*rows: object) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in rows)


def analyse(data: bytes, chunk: int = 7, max_line: int = 1 << 20) -> Analysis:
    detector = FormatDetector(max_line)
    for start in range(0, len(data), chunk):
        detector.feed(data[start : start + chunk])
    return detector.finish()


@pytest.mark.parametrize(
    ("row", "expected"),
    [(SFT, Format.SFT_CHAT), (DPO, Format.DPO_PREFERENCE), (TEXT, Format.TEXT)],
)
def test_detects_each_format(row: object, expected: Format) -> None:
    result = analyse(jsonl(row, row, row))
    assert result == Analysis(expected, 3)


@pytest.mark.parametrize("chunk", [1, 2, 3, 5, 64])
def test_result_does_not_depend_on_chunking(chunk: int) -> None:
    data = jsonl(SFT, SFT) + b"{broken\n" + jsonl(SFT)
    whole = analyse(data, chunk=len(data))
    assert (whole.format, whole.rows, whole.error_line) == (Format.INVALID, 4, 3)
    assert analyse(data, chunk) == whole


def test_broken_line_in_the_middle_names_its_line_number() -> None:
    rows = [SFT] * 500
    data = jsonl(*rows[:250]) + b'{"messages": [}\n' + jsonl(*rows[250:])
    result = analyse(data, chunk=4096)
    assert result.format is Format.INVALID
    assert result.error_line == 251
    assert result.error_reason is not None
    assert result.error_reason.startswith("line 251 is not valid JSON")
    assert result.rows == 501  # counting goes on past the first error


def test_dpo_on_sft_file_says_which_line_and_why() -> None:
    result = analyse(jsonl(SFT, SFT, DPO))
    assert result.format is Format.INVALID
    assert result.error_line == 3
    assert "line 1 made this a SFT chat" in (result.error_reason or "")


def test_dpo_row_missing_fields_lists_them() -> None:
    result = analyse(jsonl({"prompt": "p", "chosen": "c"}))
    assert result.error_line == 1
    assert '"rejected"' in (result.error_reason or "")


def test_sft_row_without_assistant_is_refused() -> None:
    result = analyse(jsonl({"messages": [{"role": "user", "content": "only a question"}]}))
    assert result.format is Format.INVALID
    assert "assistant" in (result.error_reason or "")


@pytest.mark.parametrize(
    ("row", "fragment"),
    [
        ([1, 2], "JSON array, not an object"),
        ({"messages": []}, "non-empty list"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, ".role that is not one of"),
        ({"messages": [{"role": "assistant", "content": 5}]}, ".content that is not a string"),
        ({"text": 3}, '"text" that is a JSON number'),
        ({"prompt": "p", "chosen": "c", "rejected": ["x"]}, "rejected"),
        ({"foo": 1, "bar": 2}, 'its keys are "foo", "bar"'),
    ],
)
def test_bad_rows_are_explained(row: object, fragment: str) -> None:
    result = analyse(jsonl(row))
    assert result.format is Format.INVALID
    assert fragment in (result.error_reason or "")


@pytest.mark.parametrize(
    "row",
    [
        {"messages": [{"role": "sk-secret-value", "content": "x"}]},
        {"text": ["sk-secret-value"]},
        {"prompt": "sk-secret-value", "chosen": "a"},
        {"unknown": "sk-secret-value"},
        "sk-secret-value",
    ],
)
def test_error_messages_never_quote_row_values(row: object) -> None:
    reason = analyse(jsonl(row)).error_reason
    assert reason
    assert "sk-secret-value" not in reason


def test_tool_call_message_may_have_null_content() -> None:
    row = {
        "messages": [
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": None, "tool_calls": [{"id": "1"}]},
            {"role": "tool", "content": "sunny"},
            {"role": "assistant", "content": "It is sunny."},
        ]
    }
    assert analyse(jsonl(row)).format is Format.SFT_CHAT


def test_empty_file_is_invalid_as_a_whole() -> None:
    assert analyse(b"") == Analysis(
        Format.INVALID, 0, 0, "the file has no rows: a dataset needs at least one JSON line"
    )
    assert analyse(b"\n\n  \n").error_line == 0


def test_blank_lines_crlf_bom_and_missing_final_newline() -> None:
    data = b"\xef\xbb\xbf" + jsonl(TEXT).replace(b"\n", b"\r\n") + b"\n   \n" + b'{"text": "end"}'
    assert analyse(data) == Analysis(Format.TEXT, 2)


def test_huge_line_is_refused_without_buffering_it() -> None:
    detector = FormatDetector(max_line_bytes=1000)
    detector.feed(jsonl(TEXT))
    detector.feed(b'{"text": "')
    for _ in range(1000):  # 10 MB of one line, fed in pieces
        detector.feed(b"x" * 10_000)
        assert len(detector._partial) <= 1000
    detector.feed(b'"}\n' + jsonl(TEXT))
    result = detector.finish()
    assert result.format is Format.INVALID
    assert result.error_line == 2
    assert "longer than 1000 bytes" in (result.error_reason or "")
    assert result.rows == 3


def test_huge_line_within_one_chunk() -> None:
    result = analyse(
        jsonl(TEXT) + b'{"text": "' + b"y" * 5000 + b'"}\n', chunk=1 << 20, max_line=100
    )
    assert (result.format, result.error_line) == (Format.INVALID, 2)


def test_invalid_utf8() -> None:
    result = analyse(jsonl(TEXT) + b'{"text": "\xff\xfe"}\n')
    assert result.error_line == 2
    assert "not UTF-8" in (result.error_reason or "")
