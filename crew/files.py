"""Writing crew's own files so that a reader never sees half of one, and no link is followed."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import IO, Any


def _file_mode() -> int:
    # What open() would give a new file: 0o666 less the umask (mkstemp alone gives 0o600).
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


NEW_FILE_MODE = _file_mode()
"""What open() would give a new file here (0o666 less the umask)."""


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically: a temporary file beside it, then a rename.

    The temporary file is created exclusively (never opened through a link someone planted at a
    predictable name), and the rename replaces whatever is at `path`, a link included, without
    following it. The temporary file is removed if anything fails.
    """
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
            if hasattr(os, "fchmod"):  # not on Windows, where mkstemp's mode is no narrower
                os.fchmod(out.fileno(), NEW_FILE_MODE)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_json(path: Path, data: Any, *, indent: int | None = 2, sort_keys: bool = False) -> None:
    """`write_atomic` of `data` as JSON."""
    write_atomic(path, json.dumps(data, indent=indent, sort_keys=sort_keys, default=str).encode())


def open_append(path: Path) -> IO[str]:
    """`path` opened to append text, line-buffered, refusing to follow a link planted there."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
    return os.fdopen(os.open(path, flags, 0o666), "a", buffering=1, encoding="utf-8", errors="replace")
