"""Dataset names are display names, held to file-name rules: the hostile ones are refused."""

from __future__ import annotations

import pytest

from services.common.errors import ServiceError
from services.common.filenames import check_name


@pytest.mark.parametrize(
    "name",
    [
        "",
        "../../etc/passwd",
        "/etc/passwd",
        "..",
        ".",
        "a/b.jsonl",
        "C:\\Windows\\win.ini",
        "evil\x00.jsonl",
        "line\nbreak.jsonl",
        "tab\there",
        "bell\x07",
        "x" * 256,
        "é" * 128,  # 256 bytes in UTF-8
        " leading.jsonl",
        "trailing.jsonl ",
        "evil\u202egnp.jsonl",  # right-to-left override
        "\ud800.jsonl",  # lone surrogate
        "a\u200bb.jsonl",  # zero-width space
        "\ufefftrain.jsonl",  # byte-order mark
        "a\u2028b.jsonl",  # line separator
        "rtl\u200f.jsonl",  # right-to-left mark
    ],
)
def test_hostile_names_are_refused_with_a_reason(name: str) -> None:
    with pytest.raises(ServiceError) as caught:
        check_name(name)
    assert caught.value.metadata == {"field": "name"}
    assert "name" in caught.value.message


@pytest.mark.parametrize(
    "name",
    [
        "train.jsonl",
        "données d'été (v2).jsonl",
        "a" * 255,
        "数据集.jsonl",
        "..hidden",
        "$(rm -rf).jsonl",
    ],
)
def test_ordinary_names_are_kept_verbatim(name: str) -> None:
    assert check_name(name) == name
