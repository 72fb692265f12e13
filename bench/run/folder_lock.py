"""One driver at a time per run folder: ``bench run``, ``bench evaluate``, ``bench report`` and ``bench scaling
--out`` hold ``RUN/.lock`` while they write.

Two drivers on one folder would train the same jobs, overwrite each other's outcome files and keep only one
of the two invocations in ``config.json``. So a command takes an exclusive ``flock`` on the lock file and
writes who holds it (host, process, command, start time); a second driver finds the lock held and is refused
with that holder named.

The kernel drops a ``flock`` when its process dies, however it dies, so a lock that can be taken while the
file still names a holder was left by a driver that was killed: it is taken over, with a message. The file
itself is never deleted (only emptied on release): deleting it would let two drivers lock two different
files of the same name. Worker processes do not inherit the descriptor (Python opens files non-inheritable),
so a driver's orphaned workers cannot keep a dead driver's lock.
"""
from __future__ import annotations

import fcntl
import json
import os
import platform
import sys
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

from bench.config.errors import UserError

LOCK_NAME = ".lock"


class FolderLocked(UserError):
    """Another live driver holds the folder."""


def holder_text(holder: dict) -> str:
    return (f"`bench {holder.get('command', '?')}` on host {holder.get('host', '?')}, process {holder.get('pid', '?')}, "
            f"started {holder.get('started', '?')}")


def _read_holder(fd: int) -> dict | None:
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 65536).decode(errors="replace").strip()
    if not text:
        return None
    try:
        holder = json.loads(text)
    except ValueError:
        return {"command": "?", "host": "?", "pid": "?", "started": "?"}
    return holder if isinstance(holder, dict) else None


def _write_holder(fd: int, command: str) -> dict:
    holder = {"command": command, "host": platform.node(), "pid": os.getpid(),
              "started": datetime.now().isoformat(timespec="seconds")}
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, (json.dumps(holder) + "\n").encode())
    os.fsync(fd)
    return holder


@contextmanager
def locked(folder: str | Path, command: str):
    """Hold ``folder``'s lock for the duration (creating the folder); ``FolderLocked`` (exit 2) if another
    live driver holds it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd) or {}
            raise FolderLocked(f"{folder} is in use by another driver: {holder_text(holder)}. Wait for it to "
                               f"finish (or stop it: Ctrl-C or SIGTERM, it checkpoints), or give another --out")
        stale = _read_holder(fd)
        if stale:
            print(f"note: {folder} was locked by {holder_text(stale)}, which ended without releasing it "
                  f"(killed?); taking the lock over", file=sys.stderr, flush=True)
        try:
            yield _write_holder(fd, command)
        finally:
            os.ftruncate(fd, 0)  # released: an empty file names no holder
    finally:
        os.close(fd)  # closing drops the flock
