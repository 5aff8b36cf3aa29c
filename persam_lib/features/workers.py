"""Patch-reading worker processes that die with their parent, and a clear error when one is killed.

The DataLoader's reader workers are separate processes. Should the extraction itself be killed
(SIGKILL, the out-of-memory killer), Linux's ``PR_SET_PDEATHSIG`` makes the kernel kill each
worker too, so none is left behind reading slides for nobody. When a *worker* is killed — most
often by the out-of-memory killer — PyTorch raises a RuntimeError; `ReaderKilledError` turns it
into one line saying what to do.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys
from functools import partial
from typing import Callable

PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>

KILLED_MESSAGE = "a patch-reading worker was killed (likely out of memory): rerun with --readers 0 or a smaller --batch-size; finished slides are kept"


class ReaderKilledError(RuntimeError):
    """A patch-reading worker process died (killed by a signal, most often for memory)."""


def die_with_parent(parent_pid: int | None = None) -> bool:
    """Ask the kernel to SIGKILL this process when its parent dies (Linux; elsewhere a no-op).

    Returns True when set. If the parent (``parent_pid``) is already gone, exits at once.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        done = libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False
    if parent_pid is not None and os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)
    return done


def _init_reader(worker_id: int, parent_pid: int) -> None:
    die_with_parent(parent_pid)


def reader_worker_init() -> Callable[[int], None]:
    """A DataLoader ``worker_init_fn`` that makes each worker die with this process."""
    return partial(_init_reader, parent_pid=os.getpid())


def is_worker_killed(err: BaseException) -> bool:
    """True for PyTorch's error when a DataLoader worker died ("DataLoader worker (pid N) is killed
    by signal", "... exited unexpectedly")."""
    return isinstance(err, RuntimeError) and "DataLoader worker" in str(err) and ("killed" in str(err) or "exited unexpectedly" in str(err))


def killed_error(err: BaseException) -> ReaderKilledError:
    """The one-line error for a killed reader worker, with PyTorch's own first line after it."""
    detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return ReaderKilledError(f"{KILLED_MESSAGE} ({detail.rstrip('.')}).")
