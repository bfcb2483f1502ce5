"""Parquet files replaced atomically while another process reads them (a prior index that a
second ``generate`` scans while the first appends): every read is one whole version."""

from __future__ import annotations

import threading
import time

import numpy as np
import pyarrow as pa
import pytest

from pipeline.tables import parquet_rows, read_parquet, write_table_atomic


def _version(rows: int) -> pa.Table:
    return pa.table({"row": np.arange(rows), "key": [f"{i:064x}" for i in range(rows)]})


def test_a_file_replaced_while_it_is_read_is_read_whole(tmp_path):
    """Before ``read_parquet``, ``pq.read_table(path)`` failed on a third of 3,600 reads
    beside this writer ("Page was smaller than expected"): it took the old file's size and
    read the new file's bytes. A concurrent ``generate`` then passed over the part as
    unreadable and appended its pairs a second time, in a part of its own."""
    path = tmp_path / "part-00000.index.parquet"
    versions = [_version(rows) for rows in range(8, 400, 8)]
    write_table_atomic(versions[0], path)
    done, replaced = threading.Event(), []

    def rewrite() -> None:
        while not done.is_set():
            write_table_atomic(versions[len(replaced) % len(versions)], path)
            replaced.append(1)

    writer = threading.Thread(target=rewrite)
    writer.start()
    reads, deadline = 0, time.monotonic() + 1.0
    try:
        while time.monotonic() < deadline:
            table, rows = read_parquet(path), parquet_rows(path)
            assert table.column("row").to_pylist() == list(range(table.num_rows))
            assert table.num_rows % 8 == 0 and rows % 8 == 0
            reads += 1
    finally:
        done.set()
        writer.join()
    assert reads > 50 and len(replaced) > 50  # the reads did overlap many replacements


def test_missing_file_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_parquet(tmp_path / "absent.parquet")


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    """The prior index, the cue logs and the stage tables share this writer: a write that
    fails (a full disk) must neither touch the file readers see nor leave its temp behind."""
    import pyarrow.parquet as pq

    path = tmp_path / "index.parquet"
    write_table_atomic(_version(8), path)

    def disk_full(table, where, **options):
        where.write_bytes(b"PAR1 half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pq, "write_table", disk_full)
    with pytest.raises(OSError, match="No space"):
        write_table_atomic(_version(16), path, fsync=True)
    assert read_parquet(path).num_rows == 8
    assert [p.name for p in tmp_path.iterdir()] == ["index.parquet"]


def test_a_durable_write_syncs_the_file_then_its_folder(tmp_path, monkeypatch):
    import pipeline.tables as tables

    synced = []
    monkeypatch.setattr(tables, "fsync_path", synced.append)
    path = tmp_path / "sub" / "cues.parquet"
    write_table_atomic(_version(8), path, fsync=True)
    assert synced == [path.with_name("cues.parquet.tmp"), path.parent]
    assert parquet_rows(path) == 8
    synced.clear()
    write_table_atomic(_version(8), path)
    assert synced == []
