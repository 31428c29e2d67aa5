"""What the build recorded: ``build_info.json``, written by setup.py next to the extensions."""

from __future__ import annotations

import json
from pathlib import Path

RECORD = Path(__file__).with_name("build_info.json")


def read_build_info() -> dict | None:
    """The record (torch built against, CUDA archs or why CUDA was skipped); ``None`` if setup.py never built here."""
    try:
        return json.loads(RECORD.read_text())
    except FileNotFoundError:
        return None


def cuda_build_line(record: dict | None) -> str:
    """One line: which CUDA architectures the extension was built for, or why it was skipped."""
    if record is None:
        return f"no build record ({RECORD} is missing: the extensions were not built by setup.py)"
    if record["cuda_extension"]:
        return f"CUDA extension built for {record['cuda_archs']} (torch {record['torch']}, CUDA {record['torch_cuda']})"
    return f"CUDA extension skipped: {record['cuda_skipped']}"
