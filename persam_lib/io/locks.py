"""One writer per output folder: a lock file that a second process finds held.

`output_lock(folder, "extract")` holds ``folder/.persam.lock`` (the `filelock` package: an OS
lock, released by the kernel when the holder dies, so a crash never leaves it stuck). A second
``persam`` working on the same folder does not wait silently or redo the first one's work: it
stops at once with `FolderBusyError`, which names the folder and the process that holds it.
"""
from __future__ import annotations

import os
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from filelock import FileLock, Timeout

LOCK_NAME = ".persam.lock"
OWNER_NAME = ".persam.lock.owner"


class FolderBusyError(RuntimeError):
    """Another process holds the output folder's lock."""


@contextmanager
def output_lock(folder: str | Path, what: str, timeout: float = 0.0) -> Iterator[Path]:
    """Hold ``folder``'s lock while the block runs (``what`` names the work in messages).

    ``timeout`` seconds are waited for a busy lock (0: fail at once with `FolderBusyError`).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(folder / LOCK_NAME), timeout=timeout)
    owner = folder / OWNER_NAME
    try:
        lock.acquire()
    except Timeout:
        holder = owner.read_text().strip() if owner.is_file() else "another process"
        raise FolderBusyError(f"{folder}: another persam run is working on this folder ({holder}). Wait for it to finish, or use another output folder.") from None
    try:
        owner.write_text(f"persam {what}, pid {os.getpid()} on {socket.gethostname()}\n")
        yield folder
    finally:
        owner.unlink(missing_ok=True)
        lock.release()
