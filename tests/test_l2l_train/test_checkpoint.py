"""Checkpoint writes: atomic, a failed write (full disk) keeps the previous checkpoint and
says so, and temp files of killed writers do not pile up."""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys

import pytest
import torch

from l2l_train.checkpoint import CheckpointWriteError, load_checkpoint, save_checkpoint


class FullDisk:
    """A file that takes ``room`` bytes, then fails as a full disk does."""

    def __init__(self, fh, room: int):
        self.fh, self.room, self.name = fh, room, fh.name

    def write(self, data) -> int:
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(data)
        return self.fh.write(data)

    def __getattr__(self, name):
        return getattr(self.fh, name)


def full_disk_save(monkeypatch, room: int = 1000) -> None:
    """Make torch.save in the checkpoint module run out of disk after ``room`` bytes."""
    real_save = torch.save
    monkeypatch.setattr(torch, "save", lambda obj, f, **kw: real_save(obj, FullDisk(f, room)))


def test_a_full_disk_keeps_the_previous_checkpoint_and_names_the_file(tmp_path, monkeypatch):
    path = tmp_path / "latest.pt"
    save_checkpoint(path, {"step": 1, "w": torch.zeros(10)})
    full_disk_save(monkeypatch)
    with pytest.raises(CheckpointWriteError, match=rf"{path}: No space left on device") as err:
        save_checkpoint(path, {"step": 2, "w": torch.ones(100_000)})
    assert err.value.__cause__ is not None
    assert load_checkpoint(path)["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest.pt"]  # no temp left


def test_temps_of_dead_writers_are_removed_at_the_next_save(tmp_path):
    path = tmp_path / "latest.pt"
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    host = socket.gethostname()
    dead = tmp_path / f".latest.pt.{host}.{proc.pid}.tmp"
    live = tmp_path / f".latest.pt.{host}.{os.getppid()}.tmp"  # a running writer's
    other = tmp_path / f".latest.pt.another-node.{proc.pid}.tmp"  # not ours to judge
    for temp in (dead, live, other):
        temp.write_bytes(b"half a checkpoint")
    save_checkpoint(path, {"step": 3})
    assert not dead.exists() and live.exists() and other.exists()
    assert load_checkpoint(path)["step"] == 3
