"""Appending priors to one part of the store: :class:`PriorWriter`.

The batches it takes, :class:`~pipeline.store.rows.PriorRows`, are defined (and re-exported
here) in :mod:`pipeline.store.rows`."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline.store.layout import (
    ARRAYS,
    FORMAT_VERSION,
    INDEX_SCHEMA,
    check_part_matches,
    package_versions,
    part_index_path,
    part_lock_path,
    part_name,
    part_zarr_path,
    read_index,
    read_part_attrs,
)
from pipeline.store.lock import PartLock
from pipeline.store.rows import PriorRows, create_arrays, validated_columns
from pipeline.tables import fsync_path, write_table_atomic

__all__ = ["PriorRows", "PriorWriter", "StoreWriteError", "writer_part"]

log = logging.getLogger(__name__)


class StoreWriteError(OSError):
    """The store's files could not be written (read-only folder, full disk, quota); the
    message names the path. What the index names stays intact: a rerun resumes there."""

    def __init__(self, message: str, cause: OSError):
        super().__init__(message)
        self.errno = cause.errno  # only errno: with strerror set, str() would drop the message


def writer_part(
    store_dir: str | Path, rank: int, world_size: int, *, size: int, teacher_hash: str
) -> int:
    """The part a writer of rank ``rank`` out of ``world_size`` should open: the first of
    ``rank, rank + world_size, ...`` that is absent or an intact part of this teacher and
    size. Ranks get disjoint residues, so two writers never share a part; a part of another
    teacher, or one whose metadata or index is unreadable, is passed over (and logged)."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must lie in [0, {world_size}), got {rank}")
    part = rank
    while True:
        zarr_path = part_zarr_path(store_dir, part)
        if not zarr_path.exists():
            return part
        try:
            check_part_matches(zarr_path, read_part_attrs(zarr_path), size, teacher_hash)
            index_path = part_index_path(store_dir, part)
            if index_path.exists():
                read_index(index_path)
            return part
        except ValueError as err:
            log.info("not appending to %s: %s", zarr_path.name, err)
        part += world_size


class PriorWriter:
    """Appends pairs' priors to one part; the only process that touches that part.

    Creates ``part-NNNNN.zarr`` or reopens it, resuming after its last indexed row (rows a
    crash left beyond the index are overwritten). Reopening a part written with another
    ``teacher_hash`` or ``size`` raises :class:`PartMismatchError`: pick the part with
    :func:`writer_part` instead. Rows are buffered and written a whole shard at a time; the
    index is replaced after every flush. Use as a context manager, or call :meth:`close`.

    The part is locked (``part-NNNNN.lock``) from construction to :meth:`close`: a second
    writer raises :class:`~pipeline.store.lock.PartLockedError`. ``before_index(n)`` is called
    once the ``n`` oldest buffered rows are on disk and before the index names them (generate
    commits their cues there, so every indexed pair has its cues). A failed write raises
    :class:`StoreWriteError`; the index keeps naming the rows written before it.
    """

    def __init__(
        self,
        store_dir: str | Path,
        part: int,
        *,
        size: int,
        teacher_config: Mapping[str, Any],
        teacher_hash: str,
        shard_rows: int = 128,
        clevel: int = 5,
        fsync: bool = True,
        before_index: Callable[[int], None] | None = None,
    ):
        if shard_rows < 1:
            raise ValueError(f"shard_rows must be >= 1, got {shard_rows}")
        self.store_dir = Path(store_dir)
        self.part = part
        self.size = size
        self.zarr_path = part_zarr_path(store_dir, part)
        self.index_path = part_index_path(store_dir, part)
        self._fsync = fsync
        self._before_index = before_index
        self._closed = self._failed = False
        self._buffer: list[dict[str, np.ndarray]] = []
        self._lock = PartLock(part_lock_path(store_dir, part), part_name(part))
        try:
            self.store_dir.mkdir(parents=True, exist_ok=True)
            self._lock.acquire()
        except OSError as err:  # a read-only or full store folder: say which, not a traceback
            raise StoreWriteError(
                f"cannot write the prior store {self.store_dir}: {err}", err
            ) from err
        try:
            self._open(size, teacher_config, teacher_hash, shard_rows, clevel)
        except OSError as err:
            self._lock.release()
            raise StoreWriteError(f"cannot open {self.zarr_path} for writing: {err}", err) from err
        except BaseException:
            self._lock.release()
            raise

    def _open(
        self,
        size: int,
        teacher_config: Mapping[str, Any],
        teacher_hash: str,
        shard_rows: int,
        clevel: int,
    ) -> None:
        import zarr

        if self.zarr_path.exists():
            check_part_matches(self.zarr_path, read_part_attrs(self.zarr_path), size, teacher_hash)
            self._remove_partial_files()
        else:
            attrs = {
                "l2l_prior_store": FORMAT_VERSION,
                "size": size,
                "teacher_hash": teacher_hash,
                "teacher": dict(teacher_config),
                "versions": package_versions(),
            }
            self._create_part(attrs, shard_rows, clevel)
        group = zarr.open_group(self.zarr_path, mode="r+")
        self._arrays = {name: group[name] for name in ARRAYS}
        self.shard_rows = self._arrays["prob"].shards[0]
        self._index = self._load_index()
        self.rows = self._index.num_rows  # durable rows; the next flush writes from here
        for arr in self._arrays.values():
            arr.resize((self.rows, *arr.shape[1:]))

    def _create_part(self, attrs: dict[str, Any], shard_rows: int, clevel: int) -> None:
        """Build the empty group beside its final name and rename it into place, so a crash
        mid-creation never leaves a part folder without its arrays."""
        import zarr

        self.store_dir.mkdir(parents=True, exist_ok=True)
        # An index whose part folder was deleted names rows that no longer exist.
        self.index_path.unlink(missing_ok=True)
        building = self.zarr_path.with_name(self.zarr_path.name + ".creating")
        shutil.rmtree(building, ignore_errors=True)
        try:
            group = zarr.create_group(building, zarr_format=3, attributes=attrs)
            create_arrays(group, attrs["size"], shard_rows, clevel)
        except BaseException:
            shutil.rmtree(building, ignore_errors=True)  # on a full disk, give the space back
            raise
        building.rename(self.zarr_path)

    def _remove_partial_files(self) -> None:
        # zarr writes each file to a temp name and renames it; a kill mid-write leaves the temp.
        for tmp in self.zarr_path.rglob("*.partial"):
            tmp.unlink(missing_ok=True)
        self.index_path.with_name(self.index_path.name + ".tmp").unlink(missing_ok=True)

    def _load_index(self) -> pa.Table:
        if not self.index_path.exists():
            return INDEX_SCHEMA.empty_table()
        index = read_index(self.index_path)
        rows = index.column("row").to_numpy()
        if not np.array_equal(rows, np.arange(len(rows))):
            raise ValueError(
                f"prior index {self.index_path} does not list rows 0..{len(rows) - 1} "
                "in order; it was not written by PriorWriter"
            )
        return index

    @property
    def index(self) -> pa.Table:
        """The durable rows' index entries (key, row, sample_id, status)."""
        return self._index

    @property
    def pending(self) -> int:
        """Rows buffered in memory, not yet durable."""
        return sum(len(b["key"]) for b in self._buffer)

    def write(self, rows: PriorRows) -> None:
        """Buffer a batch (validated now, so a bad prior fails at its teacher, naming its
        key) and flush every shard it completes."""
        if self._closed or self._failed:
            raise RuntimeError(f"write to {self.zarr_path.name} after close() or a failed write")
        if len(rows):
            self._buffer.append(validated_columns(rows, self.size))
        while self._buffer and self.pending >= self._room_in_shard():
            self._flush(self._room_in_shard())

    def _room_in_shard(self) -> int:
        # Fill up to the next shard boundary, so a part resumed mid-shard realigns once.
        return self.shard_rows - self.rows % self.shard_rows

    def flush(self) -> None:
        """Make every buffered row durable (a partial shard is rewritten on the next flush)."""
        if self._buffer:
            self._flush(self.pending)

    def _flush(self, count: int) -> None:
        columns = {
            name: np.concatenate([b[name] for b in self._buffer]) for name in self._buffer[0]
        }
        start, stop = self.rows, self.rows + count
        try:
            self._write_rows(columns, start, stop)
        except OSError as err:
            # The index still names only rows [0, start); what reached the arrays beyond it
            # is overwritten by the next writer. No retry at close: the disk is still full.
            self._failed = True
            raise StoreWriteError(
                f"writing rows {start}..{stop - 1} of {self.zarr_path} failed: {err}. "
                f"Its index keeps the {start} rows written before; a rerun computes the rest",
                err,
            ) from err
        rest = {name: col[count:] for name, col in columns.items()}
        self._buffer = [rest] if len(rest["key"]) else []

    def _write_rows(self, columns: dict[str, np.ndarray], start: int, stop: int) -> None:
        count = stop - start
        for name, arr in self._arrays.items():
            arr.resize((stop, *arr.shape[1:]))
            arr[start:stop] = columns[name][:count]
        if self._fsync:
            for path in self._written_files(start, stop):
                fsync_path(path)
        if self._before_index is not None:
            self._before_index(count)
        batch = pa.table(
            {
                "key": columns["key"][:count],
                "row": np.arange(start, stop),
                "sample_id": columns["sample_id"][:count],
                "status": columns["status"][:count],
            },
            schema=INDEX_SCHEMA,
        )
        index = pa.concat_tables([self._index, batch])
        write_table_atomic(index, self.index_path, fsync=self._fsync)
        self._index, self.rows = index, stop

    def _written_files(self, start: int, stop: int) -> list[Path]:
        """The shard/chunk files holding rows [start, stop), their folders and the arrays'
        metadata: what must reach the disk before the index may name those rows."""
        paths = []
        for name, arr in self._arrays.items():
            folder = self.zarr_path / name
            paths.append(folder / "zarr.json")
            for shard in range(start // self.shard_rows, (stop - 1) // self.shard_rows + 1):
                chunk = folder / arr.metadata.encode_chunk_key((shard,) + (0,) * (arr.ndim - 1))
                paths += [chunk, chunk.parent]
        return paths

    def close(self) -> None:
        """Flush what is buffered (unless a write failed) and release the part's lock."""
        if self._closed:
            return
        self._closed = True
        try:
            if not self._failed:
                self.flush()
        finally:
            self._lock.release()

    def __enter__(self) -> PriorWriter:
        return self

    def __exit__(self, *exc) -> None:
        # Buffered rows were validated at write(), so they are kept even if the caller failed.
        self.close()
