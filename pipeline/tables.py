"""Parquet files that stages hand to each other: written atomically, read with a hint
naming the command that makes them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq


def write_table_atomic(table: pa.Table, path: str | Path, **parquet_options: Any) -> None:
    """Write ``table`` to a temp file beside ``path`` and rename it over ``path``, so a reader
    (or a crash) never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    pq.write_table(table, tmp, **parquet_options)
    tmp.replace(path)


def read_table(path: str | Path, what: str, made_by: str) -> pa.Table:
    """Read a stage's Parquet output; a missing file names the command that makes it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path} (run `{made_by}` first)")
    return pq.read_table(path)
