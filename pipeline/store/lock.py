"""One writer per part, enforced: an ``flock`` on a lock file beside the part.

Two processes appending to one part lose rows silently (each resizes the arrays and replaces
the index from its own view), and a run started twice on one shard by mistake is easy on a
cluster. The lock is ``fcntl.flock(fd, LOCK_EX | LOCK_NB)`` on ``part-NNNNN.lock``: the kernel
releases it when its holder exits, SIGKILL included, so there is no stale-lock logic (a pid
check followed by an unlink and a re-create let two reruns after a crash both take over the
same dead lock). The holder writes its pid and host into the file only so that a refused run
can name it.

Caveats: an flock belongs to the open file description, not the process, so a child forked
while the lock is held (``os.fork``, not ``subprocess``: the fd is not inheritable) keeps it
held until it exits too; and it is a local-filesystem lock: NFS emulates it with POSIX locks
on some clients and versions and ignores it on others, so do not share a store folder
between hosts through NFS and count on this lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from pathlib import Path


class PartLockedError(RuntimeError):
    """Another live process is writing the part."""


class PartLock:
    """``<store>/part-NNNNN.lock``, held from :meth:`acquire` to :meth:`release`."""

    def __init__(self, path: Path, part: str):
        self.path, self.part = Path(path), part
        self.owner = {"pid": os.getpid(), "host": socket.gethostname()}
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock, or raise :class:`PartLockedError` naming the part, the lock file
        and its owner."""
        if self.held:
            return
        while True:
            fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise PartLockedError(self._refusal()) from None
            except BaseException:
                os.close(fd)
                raise
            # release() unlinks the file while holding the lock: if that happened between our
            # open and our flock, we hold a lock on a file no longer at ``path`` (someone may
            # have created and locked a new one there meanwhile), so start over.
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # closing drops our flock on the orphaned file
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(self.owner).encode(), 0)
            os.fsync(fd)
        except BaseException:
            self._fd = fd
            self.release()
            raise
        self._fd = fd

    def _refusal(self) -> str:
        held = None
        for _ in range(20):  # its holder writes itself in right after taking the lock
            try:
                held = json.loads(self.path.read_text())
                break
            except (OSError, ValueError):  # gone meanwhile, or empty / partial
                time.sleep(0.05)
        if isinstance(held, dict):
            owner = f"pid {held.get('pid')} on host {held.get('host')}"
        else:
            owner = "another process (owner not recorded yet)"
        return (
            f"{self.part} is being written by {owner} (lock file {self.path}): two writers "
            f"on one part would corrupt it. Give this run another shard (--shard i/K), or wait "
            f"for that run; the lock is freed as soon as it exits"
        )

    def release(self) -> None:
        """Unlink the lock file and drop the lock.

        The file is unlinked while the flock is still held, never after: only the holder
        unlinks, and :meth:`acquire` checks that the file it locked is still the one at
        ``path``, so a taker that opened the file just before the unlink retries instead of
        holding a lock on an orphaned inode. Unlinking after unlocking would let a new holder's
        file be removed. (The file is removed at all so that a finished store folder, a DVC
        output, holds no lock files.)
        """
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            with contextlib.suppress(FileNotFoundError):
                if os.path.samestat(os.fstat(fd), os.stat(self.path)):  # not deleted by hand
                    self.path.unlink()
        finally:
            os.close(fd)  # closes the last reference to the open file: the flock goes with it
