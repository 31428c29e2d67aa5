"""Labels files: this project's ``labels.csv`` and VGGSound's index CSV.

* ``labels.csv``: header ``id,label,split`` (columns in any order), split in train / val / test.
* VGGSound's ``vggsound.csv``: no header, rows ``youtube_id,start_seconds,label,split`` (split train / test);
  a header naming those four columns is accepted too. Clip ids are formed as VGGSound names its files:
  ``{youtube_id}_{start_seconds:06d}``.

A file with unknown or missing columns, a malformed row, an unknown split, a duplicate id or (when
``known_labels`` is given) a label outside the benchmark is refused with a :class:`LabelsFileError` naming
the file and the line.
"""

from __future__ import annotations

import csv
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path

SPLITS = ("train", "val", "test")
LABELS_FILE_NAMES = ("labels.csv", "vggsound.csv")
PROJECT_COLUMNS = ("id", "label", "split")
VGGSOUND_COLUMNS = ("youtube_id", "start_seconds", "label", "split")


@dataclass(frozen=True)
class LabelRow:
    id: str
    label: str
    split: str


class LabelsFileError(ValueError):
    """A labels file that cannot be used; the message starts with ``file:line:``."""

    def __init__(self, path: Path, line: int, problem: str) -> None:
        super().__init__(f"{path}:{line}: {problem}")
        self.path = path
        self.line = line


def vggsound_clip_id(youtube_id: str, start_seconds: int) -> str:
    """VGGSound's file stem for a clip, e.g. ``('---g-f_I2yQ', 1) -> '---g-f_I2yQ_000001'``."""
    return f"{youtube_id}_{start_seconds:06d}"


def find_labels_file(root_or_file: str | Path) -> Path:
    """``root_or_file`` itself when it is a file, else the first of ``labels.csv`` / ``vggsound.csv`` in it."""
    path = Path(root_or_file)
    if path.is_file():
        return path
    if not path.is_dir():
        raise FileNotFoundError(f"labels: {path} is neither a labels file nor a dataset folder")
    for name in LABELS_FILE_NAMES:
        if (path / name).is_file():
            return path / name
    raise FileNotFoundError(f"labels: no {' or '.join(LABELS_FILE_NAMES)} in dataset folder {path}")


def _rows_with_line_numbers(path: Path) -> Iterator[tuple[int, list[str]]]:
    """Non-blank CSV rows, fields stripped, each with the (1-based) line on which it ends."""
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        for row in reader:
            fields = [field.strip() for field in row]
            if any(fields):
                yield reader.line_num, fields


def _is_integer(text: str) -> bool:
    return text.isascii() and text.isdigit()


def _column_order(path: Path, line: int, header: list[str]) -> tuple[str, ...]:
    """Validates a header row; returns the canonical column tuple it is a permutation of."""
    names = [name.lower() for name in header]
    for expected in (PROJECT_COLUMNS, VGGSOUND_COLUMNS):
        if sorted(names) == sorted(expected):
            return tuple(names)
    known = set(PROJECT_COLUMNS) | set(VGGSOUND_COLUMNS)
    unknown = [name for name in names if name not in known]
    if unknown:
        problem = f"unknown column(s) {', '.join(map(repr, unknown))}"
    else:
        problem = f"incomplete or repeated columns {names}"
    raise LabelsFileError(
        path,
        line,
        f"{problem}; expected a header {','.join(PROJECT_COLUMNS)} or VGGSound rows "
        f"{','.join(VGGSOUND_COLUMNS)} (no header)",
    )


def _parse_row(path: Path, line: int, columns: tuple[str, ...], fields: list[str]) -> LabelRow:
    if len(fields) != len(columns):
        raise LabelsFileError(path, line, f"expected {len(columns)} fields ({','.join(columns)}), got {len(fields)}")
    values = dict(zip(columns, fields, strict=True))
    if "youtube_id" in values:
        if not _is_integer(values["start_seconds"]):
            raise LabelsFileError(path, line, f"start_seconds must be a whole number, got {values['start_seconds']!r}")
        if not values["youtube_id"]:
            raise LabelsFileError(path, line, "empty youtube_id")
        clip_id = vggsound_clip_id(values["youtube_id"], int(values["start_seconds"]))
    else:
        clip_id = values["id"]
        if not clip_id:
            raise LabelsFileError(path, line, "empty id")
    if not values["label"]:
        raise LabelsFileError(path, line, "empty label")
    if values["split"] not in SPLITS:
        raise LabelsFileError(path, line, f"split must be one of {', '.join(SPLITS)}, got {values['split']!r}")
    return LabelRow(id=clip_id, label=values["label"], split=values["split"])


def read_labels(root_or_file: str | Path, *, known_labels: Collection[str] | None = None) -> list[LabelRow]:
    """Rows of a dataset's labels file, in file order.

    ``root_or_file``: a dataset folder (holding ``labels.csv`` or ``vggsound.csv``) or the file itself.
    ``known_labels``: when given (e.g. a benchmark's class names), a row whose label is not among them is refused.
    """
    path = find_labels_file(root_or_file)
    known = None if known_labels is None else set(known_labels)
    rows: list[LabelRow] = []
    first_line_of: dict[str, int] = {}
    columns: tuple[str, ...] | None = None
    for line, fields in _rows_with_line_numbers(path):
        if columns is None:
            if len(fields) == len(VGGSOUND_COLUMNS) and _is_integer(fields[1]):
                columns = VGGSOUND_COLUMNS
            else:
                columns = _column_order(path, line, fields)
                continue
        row = _parse_row(path, line, columns, fields)
        if row.id in first_line_of:
            raise LabelsFileError(path, line, f"duplicate id {row.id!r} (first on line {first_line_of[row.id]})")
        if known is not None and row.label not in known:
            raise LabelsFileError(path, line, f"label {row.label!r} is not a class of the benchmark")
        first_line_of[row.id] = line
        rows.append(row)
    if not rows:
        raise ValueError(f"labels: {path} lists no clips")
    return rows
