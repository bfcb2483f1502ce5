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
