"""The part lock: one owner, a clear error naming the owner, stale locks taken over."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from pipeline.store.lock import PartLock, PartLockedError, pid_alive


def dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


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


def test_stale_lock_of_a_dead_pid_is_taken_over_with_a_warning(tmp_path, caplog):
    path = tmp_path / "part-00000.lock"
    pid = dead_pid()
    assert not pid_alive(pid)
    path.write_text(json.dumps({"pid": pid, "host": socket.gethostname()}))
    lock = PartLock(path, "part-00000")
    lock.acquire()
    assert f"pid {pid}" in caplog.text and "no longer running" in caplog.text
    assert json.loads(path.read_text())["pid"] == os.getpid()
    lock.release()


def test_lock_of_another_host_is_not_taken_over(tmp_path):
    path = tmp_path / "part-00000.lock"
    path.write_text(json.dumps({"pid": dead_pid(), "host": "another-node"}))
    with pytest.raises(PartLockedError, match=r"another-node.*delete"):
        PartLock(path, "part-00000").acquire()
    assert path.exists()


def test_empty_lock_left_by_a_kill_between_create_and_write_expires(tmp_path):
    path = tmp_path / "part-00000.lock"
    path.touch()
    old = time.time() - 60
    os.utime(path, (old, old))
    lock = PartLock(path, "part-00000")
    lock.acquire()
    assert json.loads(path.read_text())["pid"] == os.getpid()
    lock.release()


def test_release_leaves_a_lock_that_is_no_longer_ours(tmp_path):
    path = tmp_path / "part-00000.lock"
    lock = PartLock(path, "part-00000")
    lock.acquire()
    path.write_text(json.dumps({"pid": 1, "host": "elsewhere"}))  # taken over meanwhile
    lock.release()
    assert path.exists()
