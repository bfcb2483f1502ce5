"""The part lock: one owner, a clear error naming the owner, freed when its owner dies."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap

import pytest

from pipeline.store.lock import PartLock, PartLockedError


def test_second_owner_gets_an_error_naming_part_file_and_pid(tmp_path):
    path = tmp_path / "part-00003.lock"
    first = PartLock(path, "part-00003")
    first.acquire()
    assert json.loads(path.read_text()) == {"pid": os.getpid(), "host": socket.gethostname()}
    with pytest.raises(PartLockedError, match=rf"part-00003 .* pid {os.getpid()} .*{path}"):
        PartLock(path, "part-00003").acquire()
    first.release()
    assert not path.exists()
    second = PartLock(path, "part-00003")
    second.acquire()
    second.release()


def test_a_lock_file_left_by_a_dead_owner_is_simply_taken(tmp_path):
    """The file's content does not matter, only the flock: no pid or host check."""
    path = tmp_path / "part-00000.lock"
    path.write_text(json.dumps({"pid": 1, "host": "another-node"}))
    lock = PartLock(path, "part-00000")
    lock.acquire()
    assert json.loads(path.read_text()) == {"pid": os.getpid(), "host": socket.gethostname()}
    lock.release()
    assert not path.exists()


HOLDER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from pipeline.store.lock import PartLock
    PartLock(Path(sys.argv[1]), "part-00000").acquire()
    print("held", flush=True)
    time.sleep(600)
    """
)


def test_a_live_holder_refuses_others_and_its_sigkill_frees_the_lock(tmp_path):
    path = tmp_path / "part-00000.lock"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        for _ in range(2):  # refused every time, and a refusal leaves the holder's file alone
            with pytest.raises(PartLockedError, match=rf"part-00000 .* pid {holder.pid} "):
                PartLock(path, "part-00000").acquire()
        assert json.loads(path.read_text())["pid"] == holder.pid
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert path.exists()  # a SIGKILLed holder leaves its file, but not its lock
    lock = PartLock(path, "part-00000")
    lock.acquire()
    assert json.loads(path.read_text())["pid"] == os.getpid()
    lock.release()


def test_a_taker_whose_file_was_unlinked_by_the_releasing_owner_retries(tmp_path, monkeypatch):
    """The release/acquire race: B opens the file, A unlinks it and unlocks, B's flock then
    succeeds on the orphaned file; B must notice and lock the file now at the path."""
    import fcntl

    path = tmp_path / "part-00000.lock"
    first = PartLock(path, "part-00000")
    first.acquire()
    real_flock, calls = fcntl.flock, []

    def flock(fd, op):
        if not calls:  # between B's open and its first flock, A releases
            first.release()
        calls.append(fd)
        return real_flock(fd, op)

    monkeypatch.setattr(fcntl, "flock", flock)
    second = PartLock(path, "part-00000")
    second.acquire()
    assert len(calls) == 2  # the first flock was on the orphaned file
    monkeypatch.undo()
    with pytest.raises(PartLockedError):  # and second's lock is on the file at the path
        PartLock(path, "part-00000").acquire()
    second.release()
    assert not path.exists()


def test_release_is_idempotent_and_spares_a_file_replaced_by_hand(tmp_path):
    path = tmp_path / "part-00000.lock"
    lock = PartLock(path, "part-00000")
    lock.acquire()
    path.unlink()
    path.write_text("someone else's")
    lock.release()
    lock.release()
    assert path.read_text() == "someone else's"
