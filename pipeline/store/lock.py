"""One writer per part, enforced: a lock file beside the part naming its owner.

Two processes appending to one part lose rows silently (each resizes the arrays and replaces
the index from its own view), and a run started twice on one shard by mistake is easy on a
cluster. The lock is a file created with ``O_CREAT | O_EXCL`` (atomic, also over NFS v3+)
holding the owner's pid and host. A SIGKILLed writer cannot remove it, so a lock whose owner
is on this host and no longer runs is stale and is taken over with a warning; a lock of
another host cannot be checked and stays an error that says how to clear it.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from pathlib import Path

log = logging.getLogger(__name__)

# A lock file is created empty and filled right after; an empty one older than this belongs
# to a process killed in between.
_EMPTY_LOCK_GRACE_S = 2.0


class PartLockedError(RuntimeError):
    """Another live process is writing the part."""


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` runs on this host (a zombie, killed but not yet reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True  # no procfs: trust kill(0)
    return state not in ("Z", "X")


class PartLock:
    """``<store>/part-NNNNN.lock``, held from :meth:`acquire` to :meth:`release`."""

    def __init__(self, path: Path, part: str):
        self.path, self.part = path, part
        self.owner = {"pid": os.getpid(), "host": socket.gethostname()}
        self.held = False

    def acquire(self) -> None:
        """Take the lock, or raise :class:`PartLockedError` naming the part, the lock file
        and its owner. A stale lock (owner dead, same host) is removed with a warning."""
        while True:
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._clear_stale_or_raise()
                continue
            with os.fdopen(fd, "w") as fh:
                json.dump(self.owner, fh)
                fh.flush()
                os.fsync(fh.fileno())
            self.held = True
            return

    def _clear_stale_or_raise(self) -> None:
        held = self._read()
        if held is None:  # released, being filled right now, or its creator died before filling it
            try:
                age = time.time() - self.path.stat().st_mtime
            except FileNotFoundError:
                return
            if age < _EMPTY_LOCK_GRACE_S:
                time.sleep(0.05)
                return
            log.warning("taking over %s: an empty lock file %.0f s old", self.path, age)
            self.path.unlink(missing_ok=True)
            return
        pid, host = held.get("pid"), held.get("host")
        if host == self.owner["host"] and isinstance(pid, int) and not pid_alive(pid):
            log.warning(
                "taking over %s: its owner, pid %d on %s, is no longer running "
                "(killed mid-run; the part resumes after its last indexed row)",
                self.path,
                pid,
                host,
            )
            self.path.unlink(missing_ok=True)
            return
        raise PartLockedError(
            f"{self.part} is being written by pid {pid} on host {host} (lock file "
            f"{self.path}): two writers on one part would corrupt it. Give this run another "
            f"shard (--shard i/K), or wait for that run; if it is not running any more, "
            f"delete {self.path}"
        )

    def _read(self) -> dict | None:
        try:
            held = json.loads(self.path.read_text())
        except (OSError, ValueError):  # absent (released meanwhile), empty or partial
            return None
        return held if isinstance(held, dict) else None

    def release(self) -> None:
        """Remove the lock file if it is still this process's."""
        if self.held:
            self.held = False
            if self._read() == self.owner:
                self.path.unlink(missing_ok=True)
