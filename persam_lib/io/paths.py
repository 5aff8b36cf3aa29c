"""Ids that become file names, output paths that must stay inside their folder, and input files.

Slide, image and patient ids, cohort, model and sweep names all end up in file names. They are
checked once, at the boundary (manifest, CLI, sweep file), against `SAFE_ID`; and every writer
builds its paths with `inside`, which refuses any path that would resolve outside its output
folder — the second line of defence should an unchecked name ever reach it.
"""
from __future__ import annotations

import errno
import os
import re
import stat
from pathlib import Path

SAFE_ID = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}$")
SAFE_ID_RULE = "letters, digits, '.', '_' and '-', not starting with a dot, at most 128 characters"


class UnsafePathError(ValueError):
    """An output path would land outside its output folder."""


def id_problem(value: str, what: str = "id") -> str | None:
    """Why ``value`` cannot be used as a file name (None when it can)."""
    if SAFE_ID.match(value):
        return None
    shown = value if len(value) <= 60 else value[:57] + "..."
    if not value:
        return f"the {what} is empty"
    if len(value) > 128:
        return f"the {what} {shown!r} is longer than 128 characters"
    return f"the {what} {shown!r} is not a safe file name (it must use {SAFE_ID_RULE})"


def check_id(value: str, what: str = "id", hint: str = "") -> str:
    """``value`` when it is a safe id; else a ValueError saying why and what to do."""
    problem = id_problem(value, what)
    if problem:
        raise ValueError(f"{problem[0].upper()}{problem[1:]}. {hint or 'Rename it.'}")
    return value


def inside(folder: str | Path, *parts: str) -> Path:
    """``folder / parts...``, checked to resolve inside ``folder`` (symbolic links followed).

    Raises `UnsafePathError` for a name such as ``../x`` or ``/etc/x`` that would escape.
    """
    root = Path(folder).resolve()
    target = root.joinpath(*parts).resolve()
    if target != root and root not in target.parents:
        raise UnsafePathError(f"{Path(folder).joinpath(*parts)}: resolves to {target}, outside the output folder {root}; refusing to write there. Use ids made of {SAFE_ID_RULE}.")
    return root.joinpath(*parts)


def input_file_problem(path: str | Path, what: str = "file") -> str | None:
    """Why ``path`` cannot be read as an input ``what`` (None when it can): missing, a directory,
    a device or other special file, or unreadable."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return f"{what} {path} does not exist"
    except PermissionError:
        return f"{what} {path} cannot be reached (permission denied on a folder above it)"
    except OSError as err:
        return f"{what} {path} cannot be examined ({err.strerror})"
    if stat.S_ISDIR(mode):
        return f"{what} {path} is a directory, not a file"
    if not stat.S_ISREG(mode):
        return f"{what} {path} is not a regular file (a device, pipe or socket)"
    try:
        with open(path, "rb") as handle:
            handle.read(1)
    except PermissionError:
        return f"{what} {path} is not readable (permission denied)"
    except OSError as err:
        return f"{what} {path} cannot be read ({err.strerror})"
    return None


def check_writable_folder(folder: str | Path) -> Path:
    """Create ``folder`` if needed and prove it takes a file; an OSError that names the folder and
    the cause (read-only file system, permission, disk full) otherwise."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "is a file, not a folder", str(folder))
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-probe.{os.getpid()}.tmp"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as err:
        raise OSError(err.errno, f"cannot write into this folder ({err.strerror})", str(folder)) from None
    return folder
