"""Writing a file so that a reader sees either the old file or the whole new one, never a part.

The content goes to a hidden temporary file beside the target (``.NAME.tmp-PID``), is flushed and
fsynced, and is renamed over the target. A failed write (a full disk, a read-only folder) removes the
temporary file and raises an :class:`OSError` naming the target, so nothing half-written is left
behind to fill the disk or confuse the next run.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def write_atomically(path: Path, *chunks: bytes | memoryview) -> None:
    """Write ``chunks`` to ``path`` atomically (see the module docstring)."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with temporary.open("wb") as handle:
            for chunk in chunks:
                handle.write(chunk)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    except OSError as error:
        with contextlib.suppress(OSError):
            temporary.unlink(missing_ok=True)
        raise OSError(error.errno, f"cannot write {path} ({error.strerror or error})") from error
