"""Atomic writes: a file appears under its final name only when it is complete.

Temporary files are named ``.<name>.<pid>.tmp`` beside their target, so a clean-up can tell
whose they are: `remove_stale_temps` deletes only those whose writing process is gone, never a
temporary file that another live process is still writing.
"""
from __future__ import annotations

import json
import math
import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

_TEMP_NAME = re.compile(r"^\..+\.(\d+)\.tmp$")


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block ends without error, rename it into place.

    The temporary name (``.<name>.<pid>.tmp``) never looks like a finished file, and it is removed
    if the block fails; a process killed mid-write leaves only such a name behind.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def strict_json(value: Any) -> Any:
    """``value`` with every non-finite float (NaN, ±Inf, numpy's too) replaced by None, so that
    ``json.dumps(..., allow_nan=False)`` gives standard JSON that any reader accepts."""
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):  # numpy scalars
        try:
            value = value.item()
        except (TypeError, ValueError):
            return value
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def dumps_strict(value: Any, **kwargs: Any) -> str:
    """JSON text of ``value`` with non-finite numbers as ``null`` (never the non-standard ``NaN``)."""
    return json.dumps(strict_json(value), allow_nan=False, **kwargs)


def write_json_atomic(path: str | Path, value: Any, *, indent: int | None = 2) -> Path:
    """Write ``value`` as strict JSON (non-finite numbers as ``null``) to ``path`` atomically."""
    return write_text_atomic(path, dumps_strict(value, indent=indent))


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_stale_temps(folder: str | Path) -> list[Path]:
    """Delete the temporary files in ``folder`` (not recursive) whose writing process no longer
    exists; return what was deleted. A live writer's temporary file is left alone."""
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for path in folder.iterdir():
        match = _TEMP_NAME.match(path.name)
        if match and not _alive(int(match.group(1))):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed
