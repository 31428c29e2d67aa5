"""Labels files: project labels.csv, VGGSound's index CSV, and refusals naming the line."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cign_fast.data import LabelRow, LabelsFileError, read_labels, vggsound_clip_id


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_project_labels_file(tmp_path: Path) -> None:
    _write(tmp_path / "labels.csv", "id,label,split\na1,cat,train\n\nb2, dog ,val\nc3,dog,test\n")
    assert read_labels(tmp_path) == [
        LabelRow("a1", "cat", "train"),
        LabelRow("b2", "dog", "val"),
        LabelRow("c3", "dog", "test"),
    ]


def test_columns_in_any_order(tmp_path: Path) -> None:
    path = _write(tmp_path / "mine.csv", "split,id,label\ntrain,a1,cat\n")
    assert read_labels(path) == [LabelRow("a1", "cat", "train")]


def test_vggsound_index_without_header(tmp_path: Path) -> None:
    _write(
        tmp_path / "vggsound.csv",
        "---g-f_I2yQ,1,people marching,test\n--0PQM4-hqg,30,waterfall burbling,train\n"
        '-0Ptqp2PxHs,271,"playing violin, fiddle",train\n',
    )
    rows = read_labels(tmp_path)
    assert rows == [
        LabelRow("---g-f_I2yQ_000001", "people marching", "test"),
        LabelRow("--0PQM4-hqg_000030", "waterfall burbling", "train"),
        LabelRow("-0Ptqp2PxHs_000271", "playing violin, fiddle", "train"),
    ]
    assert vggsound_clip_id("abc", 1234567) == "abc_1234567"


def test_vggsound_index_with_header(tmp_path: Path) -> None:
    path = _write(tmp_path / "index.csv", "youtube_id,start_seconds,label,split\nxyz,5,cat,train\n")
    assert read_labels(path) == [LabelRow("xyz_000005", "cat", "train")]


@pytest.mark.parametrize(
    "text, line, message",
    [
        ("id,label,split,fps\na,cat,train,25\n", 1, "unknown column(s) 'fps'"),
        ("id,label\na,cat\n", 1, "incomplete or repeated columns"),
        ("id,label,split\na,cat,train\nb,dog,train\na,dog,test\n", 4, "duplicate id 'a' (first on line 2)"),
        ("id,label,split\na,cat,train\nb,dog,holdout\n", 3, "split must be one of train, val, test"),
        ("id,label,split\na,cat,train\nb,dog\n", 3, "expected 3 fields"),
        ("id,label,split\na,,train\n", 2, "empty label"),
        ("id,label,split\na,cat,train\n\n\nb,bird,test\n", 5, "label 'bird' is not a class of the benchmark"),
        ("abc,1,cat,train\nabc,one,cat,train\n", 2, "start_seconds must be a whole number"),
        ("abc,1,cat,train\nabc,001,dog,test\n", 2, "duplicate id 'abc_000001' (first on line 1)"),
    ],
)
def test_refused_with_line_number(tmp_path: Path, text: str, line: int, message: str) -> None:
    path = _write(tmp_path / "labels.csv", text)
    with pytest.raises(LabelsFileError, match=f"^{re.escape(str(path))}:{line}: ") as caught:
        read_labels(tmp_path, known_labels=["cat", "dog"])
    assert caught.value.line == line
    assert message in str(caught.value)


def test_missing_or_empty_labels_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="labels.csv or vggsound.csv"):
        read_labels(tmp_path)
    _write(tmp_path / "labels.csv", "id,label,split\n")
    with pytest.raises(ValueError, match="lists no clips"):
        read_labels(tmp_path)
