"""A read-only or full disk under ``generate`` and ``l2l-train run``: a clear error naming the
path, an index that names only rows that are whole on disk (none for a part that never
finished a flush), no temp files, and a rerun that completes."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
import zarr.storage._local as zarr_local
from fault_injection import leftovers, load_cfg, priors_variant, store_snapshot
from trainer_workspace import variant
from typer.testing import CliRunner

from l2l_train.checkpoint import CheckpointWriteError, load_checkpoint
from l2l_train.config import load_trainer_params
from l2l_train.loop import run_training
from pipeline.cli import app
from pipeline.generate import generate
from pipeline.store.layout import part_index_path
from pipeline.store.reader import PriorStore
from pipeline.store.writer import StoreWriteError


def refuse_writes_under(monkeypatch, folder: Path, code: int = errno.EROFS) -> None:
    """Creating files or folders at or under ``folder`` fails as on a read-only mount (what
    chmod cannot give a root user)."""
    real_open, real_mkdir = os.open, Path.mkdir

    def inside(path) -> bool:
        return Path(path).resolve().is_relative_to(folder.resolve())

    def guarded_open(path, flags, *args, **kwargs):
        if flags & (os.O_CREAT | os.O_WRONLY | os.O_RDWR) and inside(path):
            raise OSError(code, os.strerror(code), str(path))
        return real_open(path, flags, *args, **kwargs)

    def guarded_mkdir(self, *args, **kwargs):
        if inside(self) and not self.exists():
            raise OSError(code, os.strerror(code), str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(os, "open", guarded_open)
    monkeypatch.setattr(Path, "mkdir", guarded_mkdir)


@pytest.mark.parametrize("exists", [True, False], ids=["read-only-priors", "read-only-parent"])
def test_read_only_store_gives_a_clear_error_naming_it(
    generate_workspace, tmp_path, monkeypatch, exists
):
    params = priors_variant(generate_workspace, tmp_path)
    priors = Path(load_cfg(params).paths.priors)
    if exists:
        priors.mkdir()
    refuse_writes_under(monkeypatch, priors)
    result = CliRunner().invoke(app, ["generate", "--params", str(params)])
    output = result.output.replace("\n", "")  # rich wraps at 80 columns
    assert result.exit_code == 1, output
    assert f"cannot write the prior store {priors}" in output
    assert "Read-only file system" in output and "Traceback" not in output
    assert not priors.exists() or list(priors.iterdir()) == []  # no partial part or index


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through chmod")
def test_chmod_read_only_store_gives_a_clear_error(generate_workspace, tmp_path):
    params = priors_variant(generate_workspace, tmp_path)
    priors = Path(load_cfg(params).paths.priors)
    priors.mkdir()
    priors.chmod(0o555)
    try:
        with pytest.raises(StoreWriteError, match=f"cannot write the prior store {priors}"):
            generate(load_cfg(params), "unlabeled")
    finally:
        priors.chmod(0o755)
    assert list(priors.iterdir()) == []


def fill_disk_after(monkeypatch, files: int) -> None:
    """Zarr's file writes fail with ENOSPC after ``files`` succeeded."""
    real_put, written = zarr_local._put, []

    def put(path, value, exclusive=False):
        if len(written) >= files:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        written.append(path)
        return real_put(path, value, exclusive=exclusive)

    monkeypatch.setattr(zarr_local, "_put", put)


@pytest.mark.parametrize("files", [0, 40], ids=["first-flush", "later-flush"])
def test_full_disk_leaves_only_whole_rows_indexed_and_a_rerun_completes(
    generate_workspace, tmp_path, monkeypatch, files
):
    cfg = load_cfg(priors_variant(generate_workspace, tmp_path / "full"))
    priors = Path(cfg.paths.priors)
    with monkeypatch.context() as patch:
        fill_disk_after(patch, files)
        if files == 0:  # the part's creation writes its metadata with zarr too
            with pytest.raises(StoreWriteError, match=r"part-00000\.zarr.*No space left"):
                generate(cfg, "unlabeled")
        else:
            with pytest.raises(StoreWriteError, match=r"writing rows \d+\.\.\d+ of .*part-00000"):
                generate(cfg, "unlabeled")
    index = part_index_path(priors, 0)
    if files == 0:
        assert not index.exists()
    else:
        store = PriorStore.open(priors, verify=True)
        assert 0 < len(store) < 156 and store.verify_report.ok  # the index names whole rows
    assert [p for p in leftovers(priors) if not p.endswith(".partial")] == []
    rerun = generate(cfg, "unlabeled")
    assert rerun.skipped + rerun.computed == rerun.pairs
    reference = load_cfg(priors_variant(generate_workspace, tmp_path / "reference"))
    generate(reference, "unlabeled")
    assert store_snapshot(priors) == store_snapshot(Path(reference.paths.priors))
    assert leftovers(priors) == []


def test_full_disk_during_the_index_write_keeps_the_previous_index(
    generate_workspace, tmp_path, monkeypatch
):
    cfg = load_cfg(priors_variant(generate_workspace, tmp_path))
    priors = Path(cfg.paths.priors)
    # Every atomic table write (the index, the cues) goes through pyarrow.parquet.write_table.
    real_write, calls = pq.write_table, []

    def write_table(table, where, **kwargs):
        if str(where).endswith(".index.parquet.tmp"):
            calls.append(where)
        if len(calls) == 2 and calls[-1] == where:  # half the 2nd index, then the disk is full
            Path(where).write_bytes(b"PAR1 half")
            raise OSError(errno.ENOSPC, "No space left on device", str(where))
        return real_write(table, where, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(pq, "write_table", write_table)
        with pytest.raises(StoreWriteError, match="No space left"):
            generate(cfg, "unlabeled")
    assert PriorStore.open(priors, verify=True).verify_report.ok
    assert len(PriorStore.open(priors)) == 8  # the first flush; the second's index failed
    assert leftovers(priors) == []  # the half-written index temp is gone, the lock released
    assert generate(cfg, "unlabeled").computed == 156 - 8


@pytest.mark.slow
def test_full_disk_at_a_checkpoint_keeps_the_previous_one_and_the_run_resumes(
    trainer_workspace, tmp_path, monkeypatch
):
    params = variant(
        trainer_workspace, tmp_path, train={"steps_per_epoch": 4, "checkpoint_every_steps": 1}
    )
    latest = tmp_path / "models" / "latest.pt"
    real_save = torch.save

    def save(obj, f, **kwargs):
        if obj.get("step") == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(torch, "save", save)
        with pytest.raises(CheckpointWriteError, match=rf"{latest}: No space left.*intact"):
            run_training(load_trainer_params(params))
    assert load_checkpoint(latest)["step"] == 2
    assert sorted(p.name for p in latest.parent.iterdir()) == ["latest.pt"]
    resumed = run_training(load_trainer_params(params))
    assert resumed.resumed_from_step == 2 and resumed.steps == 4
