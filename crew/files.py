"""Writing crew's own files so that a reader never sees half of one."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def _file_mode() -> int:
    # What open() would give a new file: 0o666 less the umask (mkstemp alone gives 0o600).
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


_MODE = _file_mode()


def write_json(path: Path, data: Any, *, indent: int | None = 2, sort_keys: bool = False) -> None:
    """Write `data` as JSON to `path` atomically: a temporary file beside it, then a rename.

    The temporary file is created exclusively (never opened through a link someone planted at a
    predictable name), and removed if anything fails.
    """
    text = json.dumps(data, indent=indent, sort_keys=sort_keys, default=str)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
            if hasattr(os, "fchmod"):  # not on Windows, where mkstemp's mode is no narrower
                os.fchmod(out.fileno(), _MODE)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
