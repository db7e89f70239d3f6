"""One process at a time in an output folder.

``with hold_folder(path, what="molora train"):`` takes an exclusive ``fcntl.flock`` on
``path/.molora.lock`` (creating the folder when needed) or raises ``FolderBusyError`` naming the
folder and the process that holds it (its pid, host, command and start time, which the holder
writes into the lock file).

Why ``flock`` and not a pid file: the kernel takes the lock atomically and releases it when the
holder's last file descriptor closes, which includes a process killed with SIGKILL or by the OOM
killer, so a crash never leaves a stale lock behind and nothing has to guess whether a recorded pid
is still alive (a pid can be reused, and a pid from another host cannot be checked at all). The
descriptor is opened close-on-exec, so programs the holder starts do not keep the lock alive.

The lock file stays in the folder after a normal exit (unlinking a lock file others may already
have opened would let two processes hold locks on two different files); a folder this call
created and that holds nothing else when it is released is removed again, so a refused or failed
command leaves nothing behind.
"""
from __future__ import annotations

import fcntl
import json
import os
import shlex
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import RunError

__all__ = ["LOCK_FILE", "FolderBusyError", "hold_folder"]

LOCK_FILE = ".molora.lock"


class FolderBusyError(RunError):
    """The folder is in use by another molora process."""


UNRECORDED = "another process (it has not recorded its pid yet)"
# how long a refused process waits for a holder that has just taken the lock to record who it is
RECORD_WAIT_S = 3.0


def _holder_text(fd: int) -> str:
    try:
        raw = os.pread(fd, 4096, 0).decode("utf-8", "replace")
        info = json.loads(raw)
    except (OSError, ValueError):
        return UNRECORDED
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("started", 0)))
    command = " ".join(str(info.get("command", "")).split())  # one line, whatever the argv held
    return (f"{info.get('what', 'another process')} (pid {info.get('pid', '?')} on {info.get('host', '?')}, "
            f"since {started}: {command})")


def _command() -> str:
    """This process's command line as a user typed it (``python -m molora.cli train ...`` as ``molora train ...``)."""
    argv = sys.argv or ["python"]
    name = Path(argv[0]).name
    return shlex.join(["molora" if name in ("cli.py", "__main__.py") else name, *argv[1:]])


def _open_locked(lock: Path) -> tuple[int, bool]:
    """(a descriptor of ``lock``, whether this process now holds its exclusive lock)."""
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return fd, False  # busy: the caller reads the holder from it, then closes it
        except BaseException:
            os.close(fd)
            raise
        try:  # the file we locked must still be the one at the path (a releasing holder may remove it)
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd, True
        os.close(fd)


@contextmanager
def hold_folder(path: str | os.PathLike, what: str = "molora") -> Iterator[Path]:
    """Hold ``path`` for this process for the duration of the block (see the module docstring)."""
    folder = Path(path)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / LOCK_FILE
    deadline = time.monotonic() + RECORD_WAIT_S
    while True:
        fd, held = _open_locked(lock)
        if held:
            break
        try:
            holder = _holder_text(fd)
        finally:
            os.close(fd)
        # a holder records itself right after it takes the lock, and clears its record just before it
        # lets go: in either window ask again shortly, so the message names the holder (or we get in)
        if holder != UNRECORDED or time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    if not held:
        raise FolderBusyError(f"in use by {holder}; wait for it to finish or stop it, or choose another folder",
                              str(folder))
    try:
        info = {"what": what, "pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
                "command": _command()}
        record = json.dumps(info).encode()
        os.pwrite(fd, record, 0)  # written whole before the old length is cut, never an empty window
        os.ftruncate(fd, len(record))
        yield folder
    finally:
        try:
            os.ftruncate(fd, 0)
            if created and os.listdir(folder) == [LOCK_FILE]:  # nothing but the lock: leave no trace
                os.unlink(lock)
                os.rmdir(folder)
        except OSError:
            pass
        finally:
            os.close(fd)  # releases the lock
