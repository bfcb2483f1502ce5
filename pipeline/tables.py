"""Parquet files that stages hand to each other: written atomically (durably where asked),
read whole beside a writer, with a hint naming the command that makes them."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq


def fsync_path(path: Path) -> None:
    """Flush a file's or a folder's (its entries') data to the disk."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:  # zarr deletes a chunk that became all fill value
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_table_atomic(
    table: pa.Table, path: str | Path, *, fsync: bool = False, **parquet_options: Any
) -> None:
    """Write ``table`` to a temp file beside ``path`` and rename it over ``path``, so a reader
    (or a crash) never sees half a file. With ``fsync`` the file and then the rename reach
    the disk before it returns. A failed write removes its temp file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        pq.write_table(table, tmp, **parquet_options)
        if fsync:
            fsync_path(tmp)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a half-written temp on a full disk only wastes space
        raise
    tmp.replace(path)
    if fsync:
        fsync_path(path.parent)


def read_parquet(path: str | Path) -> pa.Table:
    """The Parquet file at ``path``, read through one open file.

    ``pq.read_table(path)`` takes the file's size, then opens it again to read: a writer's
    atomic rename in between pairs the old file's size with the new file's bytes ("Page was
    smaller than expected"), which a third of reads hit beside a process rewriting the file
    (``tests/test_pipeline/test_tables.py``). An open file stays the one it opened."""
    with pa.OSFile(str(path)) as source:
        return pq.read_table(source)


def parquet_rows(path: str | Path) -> int:
    """Rows in the Parquet file at ``path``, from its footer, through one open file."""
    with pa.OSFile(str(path)) as source:
        return pq.read_metadata(source).num_rows


def read_table(path: str | Path, what: str, made_by: str) -> pa.Table:
    """Read a stage's Parquet output; a missing file names the command that makes it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path} (run `{made_by}` first)")
    return read_parquet(path)
