"""Which CPU backend is faster, as measured: the speed table ``backend="auto"`` consults on CPU tensors.

A fused CPU kernel is not faster than PyTorch just because it is fused (BLAS is hard to beat at some
shapes), so on CPU ``auto`` gives an op to ``cpp`` only where the benchmark measured ``cpp`` faster
than the ``reference`` backend, per op family, mode, dtype and thread count: the speed table. It is
made from a ``cign-fast bench ops`` results file (:func:`speed_table`) and read from
``CIGN_FAST_CPU_SPEED`` (a path: this machine's own calibration, written by ``cign-fast bench ops
--speed-table PATH``) or else from ``cpu_speed.json`` next to this module (committed with the
package). Each entry is the public functions' forward+backward time ratio ``reference / cpp``
(``speedup``), the smallest over the shapes measured, and whether it was measured on a loaded
machine (``bench.common.load_verdict``); entries from unloaded runs win over loaded ones. Where the
table has no entry, ``auto`` keeps its order (``cpp`` first) and says so in ``cign-fast info``.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import TypedDict

import torch

SPEED_VARIABLE = "CIGN_FAST_CPU_SPEED"
DEFAULT_TABLE = Path(__file__).with_name("cpu_speed.json")
MIN_SPEEDUP = 1.0  # cpp is chosen where reference / cpp exceeds this
DTYPE_NAMES = {"fp32": torch.float32, "bf16": torch.bfloat16}


class SpeedEntry(TypedDict):
    """One (op family, mode, dtype, threads) cell of the table."""

    op: str  # op family: assign_attention, token_distill_kl, ...
    mode: str  # assign_attention's mode, "" for the other ops
    dtype: str  # fp32, bf16
    threads: int
    speedup: float  # reference / cpp forward+backward time, the smallest over the shapes measured
    shapes: list[str]
    loaded: bool  # measured on a loaded machine (indicative only)
    source: str  # the results file's date and device


def speed_table(report: dict, backend: str = "cpp", baseline: str = "reference") -> list[SpeedEntry]:
    """The speed table of a ``cign-fast bench ops`` report: per op family, mode, dtype and thread count, the
    smallest ``baseline / backend`` forward+backward time ratio over the shapes measured."""
    env = report.get("environment", {})
    source = f"{env.get('date_utc', '?')} {env.get('device', '?')}"
    cells: dict[tuple[str, str, str, int], SpeedEntry] = {}
    for section in report.values():
        if not isinstance(section, list):
            continue
        times: dict[tuple, dict[str, float]] = {}
        loaded: dict[tuple, bool] = {}
        for row in section:
            if not isinstance(row, dict) or "provider" not in row or not row.get("forward_backward_ms"):
                continue
            key = (row["op"], row.get("mode", ""), row["dtype"], row["threads"], row.get("shape", "?"))
            times.setdefault(key, {})[row["provider"]] = row["forward_backward_ms"]
            loaded[key] = loaded.get(key, False) or bool(row.get("loaded"))
        for key, by_provider in times.items():
            if backend not in by_provider or baseline not in by_provider:
                continue
            op, mode, dtype, threads, shape = key
            ratio = by_provider[baseline] / by_provider[backend]
            cell = cells.get((op, mode, dtype, threads))
            if cell is None:
                cells[(op, mode, dtype, threads)] = SpeedEntry(
                    op=op,
                    mode=mode,
                    dtype=dtype,
                    threads=threads,
                    speedup=ratio,
                    shapes=[shape],
                    loaded=loaded[key],
                    source=source,
                )
            else:
                cell["speedup"] = min(cell["speedup"], ratio)
                cell["shapes"].append(shape)
                cell["loaded"] = cell["loaded"] or loaded[key]
    return sorted(cells.values(), key=lambda e: (e["op"], e["mode"], e["dtype"], e["threads"]))


def table_path() -> Path:
    """The speed table in use: ``CIGN_FAST_CPU_SPEED`` when set, else the committed one."""
    return Path(os.environ[SPEED_VARIABLE]) if os.environ.get(SPEED_VARIABLE) else DEFAULT_TABLE


@functools.cache
def load_table(path: Path) -> tuple[tuple[SpeedEntry, ...], str | None]:
    """The entries of the table at ``path`` and None, or no entries and why it could not be read."""
    try:
        data = json.loads(path.read_text())
        return tuple(data["entries"]), None
    except (OSError, ValueError, KeyError, TypeError) as err:
        return (), f"speed table {path} unreadable ({type(err).__name__}: {err})"


def dtype_name(dtype: torch.dtype) -> str | None:
    return next((name for name, known in DTYPE_NAMES.items() if known == dtype), None)


def cpp_verdict(family: str, mode: str, dtype: torch.dtype, threads: int | None = None) -> tuple[bool | None, str]:
    """Whether the table shows ``cpp`` faster than ``reference`` for ``family``/``mode``/``dtype`` at the thread
    count nearest to ``threads`` (default: torch's), and why: ``(True | False, reason)``, or ``(None, reason)``
    where the table has no entry."""
    threads = torch.get_num_threads() if threads is None else threads
    entries, why = load_table(table_path())
    name = dtype_name(dtype)
    if why is not None:
        return None, why
    cells = [e for e in entries if (e["op"], e["mode"], e["dtype"]) == (family, mode, name)]
    if not cells:
        return None, f"not measured ({family} {mode or '-'} {name}) in {table_path().name}"
    unloaded = [e for e in cells if not e["loaded"]]
    pool = unloaded or cells
    cell = min(pool, key=lambda e: (abs(e["threads"] - threads), e["threads"]))
    faster = cell["speedup"] > MIN_SPEEDUP
    note = "" if unloaded else ", measured on a loaded machine: indicative"
    reason = (
        f"{'faster' if faster else 'slower'} than reference: {cell['speedup']:.2f}x at {cell['threads']} "
        f"thread(s), {', '.join(cell['shapes'])} ({cell['source']}{note})"
    )
    return faster, reason


def write_table(report: dict, path: Path) -> Path:
    """Write the speed table of ``report`` to ``path`` (JSON) and return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "about": "cign_fast.ops.cpu_speed: reference / cpp forward+backward time per op family, mode, dtype, threads",
        "entries": speed_table(report),
    }
    path.write_text(json.dumps(payload, indent=2) + "\n")
    load_table.cache_clear()
    return path
