"""The sharded, resumable prior store (DESIGN.md section 3, "Prior store").

Layout under a store folder (``data/priors/``), one part per writer process::

    part-00000.zarr/            Zarr v3 group; attributes: teacher config + hash, size, versions
        prob    (N, S, S) float16  soft foreground probability, square-stretched image frame
        box     (N, 4)    float32  grounding box, XYXY original pixels (NaN: no box)
        point   (N, 2)    float32  grounding point, XY original pixels (NaN: no point)
        status  (N,)      int8     :class:`PriorStatus`
        key     (N,)      string   :func:`prior_key` of the pair
    part-00000.index.parquet    key, row, sample_id, status: the rows that are durable

Exactly one :class:`PriorWriter` owns a part: two processes writing one shard lose rows
silently, and concurrent resizes of one array race on its metadata. ``prob`` has chunks of
one row (a random read decodes one prior) inside shards of ``shard_rows`` rows (one file per
shard, not per pair). The small per-row arrays use plain chunks of ``shard_rows`` rows: a
one-row chunk of an int8 would cost more in shard-index bytes than in data.

Durability: the writer buffers rows, writes whole shards, fsyncs them, and only then
atomically replaces the index. A crash loses at most the buffered rows; the index never
names a row whose bytes are not on disk. ``prob`` is filled with NaN, so a row that the
arrays lack reads as non-finite and :meth:`PriorStore.verify` reports it.

Reading: :class:`PriorStore` merges the part indexes into sorted numpy arrays (no per-key
Python objects, so DataLoader workers forked after :meth:`PriorStore.open` share them
copy-on-write without touching refcounts) and opens the Zarr arrays lazily per process.
"""

from __future__ import annotations

import enum
import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
ARRAYS = ("prob", "box", "point", "status", "key")
INDEX_SCHEMA = pa.schema(
    [("key", pa.string()), ("row", pa.int64()), ("sample_id", pa.string()), ("status", pa.int8())]
)
_PART_RE = re.compile(r"^part-(\d{5,})\.index\.parquet$")
_KEY_RE = re.compile(r"^[0-9a-f]{64}$")
_VERSIONED_PACKAGES = ("zarr", "numcodecs", "numpy", "pyarrow", "torch")


class PriorStatus(enum.IntEnum):
    """Outcome of one pair's prior; stored as int8. ``MISSING`` is never stored: readers
    return it for pairs that have no row."""

    OK = 0
    NO_GROUNDING = 1  # the MLLM answered but named no object
    UNPARSABLE = 2  # the MLLM answer held no readable box
    UNREADABLE_IMAGE = 3
    INVALID_BOX = 4  # zero-area or entirely outside the image after clipping
    NON_FINITE = 5  # the segmenter produced NaN/inf logits
    UNREADABLE_IMPORT = 6  # an imported probability map that could not be read or resized
    MISSING = -1


class PartMismatchError(ValueError):
    """An existing part was written with another teacher config or prior size."""


# ----------------------------------------------------------------------------- keys


def prior_key(image_hash: str, expression: str, teacher_hash: str) -> str:
    """Content address of one pair's prior: sha256 hex of the three parts, JSON-encoded so
    no choice of separator can make two different triples collide."""
    blob = json.dumps([image_hash, expression, teacher_hash], ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def image_content_hash(path: str | Path) -> str:
    """sha256 hex of an image file's bytes (read in chunks, never whole into memory)."""
    with Path(path).open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _check_keys(keys: Sequence[str]) -> list[str]:
    keys = list(keys)
    for key in keys:
        if not isinstance(key, str) or not _KEY_RE.match(key):
            raise ValueError(f"not a prior key (64 lowercase hex chars from prior_key): {key!r}")
    return keys


# ----------------------------------------------------------------------------- layout


def part_name(part: int) -> str:
    return f"part-{part:05d}"


def part_zarr_path(store_dir: str | Path, part: int) -> Path:
    return Path(store_dir) / f"{part_name(part)}.zarr"


def part_index_path(store_dir: str | Path, part: int) -> Path:
    return Path(store_dir) / f"{part_name(part)}.index.parquet"


def list_parts(store_dir: str | Path) -> list[int]:
    """Part numbers that have an index file (a part without one holds no durable rows)."""
    store_dir = Path(store_dir)
    if not store_dir.is_dir():
        return []
    found = (_PART_RE.match(p.name) for p in store_dir.iterdir())
    return sorted(int(m.group(1)) for m in found if m)


def package_versions() -> dict[str, str]:
    """Installed versions of the packages that shape the stored bytes (torch if present)."""
    versions = {}
    for name in _VERSIONED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def _fsync(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:  # zarr deletes a chunk that became all fill value
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_index(path: Path) -> pa.Table:
    """A part's index; raises ``ValueError`` naming the file if it is unreadable."""
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as err:
        raise ValueError(f"unreadable prior index {path}: {err}") from err
    missing = set(INDEX_SCHEMA.names) - set(table.column_names)
    if missing:
        raise ValueError(f"prior index {path} lacks columns {sorted(missing)}")
    return table.select(INDEX_SCHEMA.names).cast(INDEX_SCHEMA)


def _write_index_atomic(table: pa.Table, path: Path, fsync: bool) -> None:
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp)
    if fsync:
        _fsync(tmp)
    tmp.replace(path)
    if fsync:
        _fsync(path.parent)


def _read_part_attrs(zarr_path: Path) -> dict[str, Any]:
    """The part's group attributes; ``ValueError`` naming the path if absent or unreadable."""
    import zarr

    try:
        attrs = zarr.open_group(zarr_path, mode="r").attrs.asdict()
    except Exception as err:  # zarr raises several types for missing/corrupt metadata
        raise ValueError(f"unreadable prior part {zarr_path}: {err}") from err
    if attrs.get("l2l_prior_store") != FORMAT_VERSION:
        raise ValueError(
            f"{zarr_path} is not a prior store part of format {FORMAT_VERSION} "
            f"(attribute l2l_prior_store = {attrs.get('l2l_prior_store')!r})"
        )
    return attrs


def _check_part_matches(
    zarr_path: Path, attrs: Mapping[str, Any], size: int, teacher_hash: str
) -> None:
    if attrs["size"] != size or attrs["teacher_hash"] != teacher_hash:
        raise PartMismatchError(
            f"{zarr_path} holds priors of teacher {attrs['teacher_hash']} at size {attrs['size']}; "
            f"this writer has teacher {teacher_hash} at size {size}. One part holds one teacher: "
            "write to another part (see writer_part) or another store folder"
        )


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
            _check_part_matches(zarr_path, _read_part_attrs(zarr_path), size, teacher_hash)
            index_path = part_index_path(store_dir, part)
            if index_path.exists():
                _read_index(index_path)
            return part
        except ValueError as err:
            log.info("not appending to %s: %s", zarr_path.name, err)
        part += world_size


# ----------------------------------------------------------------------------- writing


@dataclass(frozen=True)
class PriorRows:
    """A batch of ``n`` pairs' priors, as a teacher hands them to :meth:`PriorWriter.write`.

    ``prob`` (n, S, S) probabilities in [0, 1] in the square-stretched image frame;
    ``box`` (n, 4) XYXY and ``point`` (n, 2) XY in original image pixels, NaN where the
    teacher found none; ``status`` (n,) :class:`PriorStatus` codes (a failed pair still
    gets a row: its status says why, its ``prob`` is whatever the teacher chose, e.g. 0).
    """

    keys: Sequence[str]
    sample_ids: Sequence[str]
    prob: np.ndarray
    box: np.ndarray
    point: np.ndarray
    status: np.ndarray

    def __len__(self) -> int:
        return len(self.keys)


def _validated(rows: PriorRows, size: int) -> dict[str, np.ndarray]:
    """Check a batch against the part's prior size; return its columns in stored dtypes."""
    keys = _check_keys(rows.keys)
    n = len(keys)
    prob = np.asarray(rows.prob)
    box = np.asarray(rows.box, dtype=np.float32)
    point = np.asarray(rows.point, dtype=np.float32)
    status = np.asarray(rows.status)
    expected = {
        "sample_ids": (n,),
        "prob": (n, size, size),
        "box": (n, 4),
        "point": (n, 2),
        "status": (n,),
    }
    actual = {
        "sample_ids": (len(rows.sample_ids),),
        "prob": prob.shape,
        "box": box.shape,
        "point": point.shape,
        "status": status.shape,
    }
    for name, shape in expected.items():
        if actual[name] != shape:
            raise ValueError(
                f"PriorRows.{name}: expected shape {shape} for {n} keys at prior "
                f"size {size}, got {actual[name]}"
            )
    bad_prob = ~(np.isfinite(prob) & (prob >= 0) & (prob <= 1)).reshape(n, -1).all(axis=1)
    if bad_prob.any():
        i = int(np.argmax(bad_prob))
        raise ValueError(
            f"prob for key {keys[i]} has values outside [0, 1] or non-finite ones; "
            "the teacher must turn them into a status (e.g. NON_FINITE)"
        )
    cues_inf = np.isinf(box).any(axis=1) | np.isinf(point).any(axis=1)
    if cues_inf.any():
        raise ValueError(
            f"box/point for key {keys[int(np.argmax(cues_inf))]} is infinite (use NaN for 'no cue')"
        )
    stored_codes = [int(s) for s in PriorStatus if s != PriorStatus.MISSING]
    bad_status = ~np.isin(status, stored_codes)
    if bad_status.any():
        i = int(np.argmax(bad_status))
        raise ValueError(
            f"status for key {keys[i]}: expected one of {stored_codes}, got {status[i].item()!r}"
        )
    return {
        "prob": prob.astype(np.float16),
        "box": box,
        "point": point,
        "status": status.astype(np.int8),
        "key": np.array(keys, dtype=object),
        "sample_id": np.array([str(s) for s in rows.sample_ids], dtype=object),
    }


class PriorWriter:
    """Appends pairs' priors to one part; the only process that touches that part.

    Creates ``part-NNNNN.zarr`` or reopens it, resuming after its last indexed row (rows a
    crash left beyond the index are overwritten). Reopening a part written with another
    ``teacher_hash`` or ``size`` raises :class:`PartMismatchError`: pick the part with
    :func:`writer_part` instead. Rows are buffered and written a whole shard at a time; the
    index is replaced after every flush. Use as a context manager, or call :meth:`close`.
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
    ):
        import zarr

        if shard_rows < 1:
            raise ValueError(f"shard_rows must be >= 1, got {shard_rows}")
        self.store_dir = Path(store_dir)
        self.part = part
        self.size = size
        self.zarr_path = part_zarr_path(store_dir, part)
        self.index_path = part_index_path(store_dir, part)
        self._fsync = fsync
        self._closed = False
        self._buffer: list[dict[str, np.ndarray]] = []
        if self.zarr_path.exists():
            _check_part_matches(
                self.zarr_path, _read_part_attrs(self.zarr_path), size, teacher_hash
            )
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
        group = zarr.create_group(building, zarr_format=3, attributes=attrs)
        _create_arrays(group, attrs["size"], shard_rows, clevel)
        building.rename(self.zarr_path)

    def _remove_partial_files(self) -> None:
        # zarr writes each file to a temp name and renames it; a kill mid-write leaves the temp.
        for tmp in self.zarr_path.rglob("*.partial"):
            tmp.unlink(missing_ok=True)
        self.index_path.with_name(self.index_path.name + ".tmp").unlink(missing_ok=True)

    def _load_index(self) -> pa.Table:
        if not self.index_path.exists():
            return INDEX_SCHEMA.empty_table()
        index = _read_index(self.index_path)
        rows = index.column("row").to_numpy()
        if not np.array_equal(rows, np.arange(len(rows))):
            raise ValueError(
                f"prior index {self.index_path} does not list rows 0..{len(rows) - 1} "
                "in order; it was not written by PriorWriter"
            )
        return index

    @property
    def pending(self) -> int:
        """Rows buffered in memory, not yet durable."""
        return sum(len(b["key"]) for b in self._buffer)

    def write(self, rows: PriorRows) -> None:
        """Buffer a batch (validated now, so a bad prior fails at its teacher, naming its
        key) and flush every shard it completes."""
        if self._closed:
            raise RuntimeError(f"write to {self.zarr_path.name} after close()")
        if len(rows):
            self._buffer.append(_validated(rows, self.size))
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
        for name, arr in self._arrays.items():
            arr.resize((stop, *arr.shape[1:]))
            arr[start:stop] = columns[name][:count]
        if self._fsync:
            for path in self._written_files(start, stop):
                _fsync(path)
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
        _write_index_atomic(index, self.index_path, self._fsync)
        self._index, self.rows = index, stop
        rest = {name: col[count:] for name, col in columns.items()}
        self._buffer = [rest] if len(rest["key"]) else []

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
        if not self._closed:
            self.flush()
            self._closed = True

    def __enter__(self) -> PriorWriter:
        return self

    def __exit__(self, *exc) -> None:
        # Buffered rows were validated at write(), so they are kept even if the caller failed.
        self.close()


def _create_arrays(group, size: int, shard_rows: int, clevel: int) -> None:
    from zarr.codecs import BloscCodec

    def compressor():
        return BloscCodec(cname="zstd", clevel=clevel, shuffle="bitshuffle")

    # NaN / -1 / "" fill values make a row the arrays lack read as invalid, never as a prior.
    group.create_array(
        "prob",
        shape=(0, size, size),
        dtype="float16",
        chunks=(1, size, size),
        shards=(shard_rows, size, size),
        compressors=compressor(),
        fill_value=np.nan,
    )
    for name, width in (("box", 4), ("point", 2)):
        group.create_array(
            name,
            shape=(0, width),
            dtype="float32",
            chunks=(shard_rows, width),
            compressors=compressor(),
            fill_value=np.nan,
        )
    group.create_array(
        "status",
        shape=(0,),
        dtype="int8",
        chunks=(shard_rows,),
        compressors=compressor(),
        fill_value=int(PriorStatus.MISSING),
    )
    group.create_array(
        "key", shape=(0,), dtype=str, chunks=(shard_rows,), compressors=compressor(), fill_value=""
    )


# ----------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class PartInfo:
    number: int
    name: str
    path: Path  # the part's .zarr folder
    attrs: dict[str, Any]  # teacher, teacher_hash, size, versions
    entries: int  # index entries


@dataclass
class VerifyReport:
    """What :meth:`PriorStore.verify` found. ``bad_rows`` maps a part name to the indexed
    rows that are unreadable, of the wrong shape, non-finite, or whose stored key or status
    disagrees with the index; ``bad_parts`` maps a part name to why none of it is usable."""

    rows_checked: int = 0
    bad_rows: dict[str, list[int]] = field(default_factory=dict)
    bad_parts: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.bad_rows and not self.bad_parts

    def summary(self) -> str:
        if self.ok:
            return f"prior store ok: {self.rows_checked} rows checked"
        lines = [f"prior store: {self.rows_checked} rows checked"]
        lines += [f"  {name}: unusable ({why})" for name, why in sorted(self.bad_parts.items())]
        lines += [
            f"  {name}: {len(rows)} bad rows, first {rows[:5]}"
            for name, rows in sorted(self.bad_rows.items())
        ]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows_checked": self.rows_checked,
            "bad_rows": self.bad_rows,
            "bad_parts": self.bad_parts,
        }


def _as_bytes(strings: Iterable[str]) -> np.ndarray:
    """UTF-8 ``S`` array of ``strings``, for sorted lookups without Python objects."""
    encoded = [s.encode("utf-8") for s in strings]
    return np.array(encoded, dtype=np.bytes_) if encoded else np.array([], dtype="S1")


def _search(sorted_values: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Position of each query in ``sorted_values``, -1 where absent. Queries keep their own
    itemsize, so a query longer than every stored value is never truncated into a match."""
    if len(sorted_values) == 0:
        return np.full(len(queries), -1, dtype=np.int64)
    pos = np.searchsorted(sorted_values, queries)
    hit = pos < len(sorted_values)
    hit[hit] = sorted_values[pos[hit]] == queries[hit]
    return np.where(hit, pos, -1)


class PriorStore:
    """Read-only view of every part in a store folder.

    A key stored in several rows (two workers computed one pair, or a row rewritten after
    ``verify`` excluded a damaged one) is served from the highest (part, row); the copies
    hold the same prior, as the key addresses the pair's content and teacher.
    """

    def __init__(
        self,
        store_dir: Path,
        parts: Mapping[int, PartInfo],
        entries: pa.Table,
        skipped: Mapping[str, str],
    ):
        self.store_dir = store_dir
        self.parts = dict(parts)
        self.skipped = dict(skipped)  # part name -> why open() left it out
        self._entries = entries  # all index entries, with a `part` column
        sizes = {info.attrs["size"] for info in self.parts.values()}
        if len(sizes) > 1:
            by_size = {
                s: [i.name for i in self.parts.values() if i.attrs["size"] == s]
                for s in sorted(sizes)
            }
            raise ValueError(
                f"{store_dir}: parts hold priors of different sizes {by_size}; "
                "open the store with teacher_hash= to read one teacher's"
            )
        self.size: int | None = sizes.pop() if sizes else None
        self._build_lookup(entries)
        self.verify_report: VerifyReport | None = None  # set by open(verify=True)
        self._pid = os.getpid()
        self._arrays: dict[tuple[int, str], Any] = {}

    @classmethod
    def open(
        cls, store_dir: str | Path, *, teacher_hash: str | None = None, verify: bool = False
    ) -> PriorStore:
        """Merge the indexes of every part in ``store_dir`` (an absent folder is an empty
        store). ``teacher_hash`` keeps only that teacher's parts. A part whose index or
        metadata cannot be read is left out and named in ``skipped``, so its pairs count as
        missing and are recomputed. ``verify=True`` also reads every row and leaves out the
        bad ones (slow: it decodes the whole store); the report is ``verify_report``."""
        store_dir = Path(store_dir)
        parts, tables, skipped = {}, [], {}
        for number in list_parts(store_dir):
            name, zarr_path = part_name(number), part_zarr_path(store_dir, number)
            try:
                attrs = _read_part_attrs(zarr_path)
                index = _read_index(part_index_path(store_dir, number))
            except ValueError as err:
                log.warning("prior store: leaving out %s: %s", name, err)
                skipped[name] = str(err)
                continue
            if teacher_hash is not None and attrs["teacher_hash"] != teacher_hash:
                log.info(
                    "prior store: %s holds teacher %s, not %s; ignored",
                    name,
                    attrs["teacher_hash"],
                    teacher_hash,
                )
                continue
            parts[number] = PartInfo(number, name, zarr_path, attrs, index.num_rows)
            tables.append(
                index.append_column("part", pa.array([number] * index.num_rows, type=pa.int32()))
            )
        schema = INDEX_SCHEMA.append(pa.field("part", pa.int32()))
        entries = pa.concat_tables(tables) if tables else schema.empty_table()
        store = cls(store_dir, parts, entries, skipped)
        if verify:
            report = store.verify()
            if not report.ok:
                log.warning(
                    "%s\nleaving the bad rows out; their pairs count as missing", report.summary()
                )
            store = store.excluding(report)
            store.verify_report = report
        return store

    def _build_lookup(self, entries: pa.Table) -> None:
        keys = _as_bytes(entries.column("key").to_pylist())
        part = entries.column("part").to_numpy()
        row = entries.column("row").to_numpy()
        status = entries.column("status").to_numpy()
        # Sorted by (key, part, row): the last entry of each key's run is the one served.
        order = np.lexsort((row, part, keys))
        keys, part, row, status = keys[order], part[order], row[order], status[order]
        last = np.ones(len(keys), dtype=bool)
        last[:-1] = keys[:-1] != keys[1:]
        self._key = keys[last]
        self._key_part = part[last].astype(np.int32)
        self._key_row = row[last].astype(np.int64)
        self._key_status = status[last].astype(np.int8)
        # (sample_id, key) pairs, sorted, for lookup_sample and has_pairs.
        sids = _as_bytes(entries.column("sample_id").to_pylist())
        pair_keys = _as_bytes(entries.column("key").to_pylist())
        order = np.lexsort((pair_keys, sids))
        self._pair_sid, self._pair_key = sids[order], pair_keys[order]

    def excluding(self, report: VerifyReport) -> PriorStore:
        """This store without the parts and rows ``report`` found bad."""
        part = self._entries.column("part").to_numpy()
        row = self._entries.column("row").to_numpy()
        keep = np.ones(len(part), dtype=bool)
        for info in self.parts.values():
            in_part = part == info.number
            if info.name in report.bad_parts:
                keep &= ~in_part
            elif info.name in report.bad_rows:
                keep &= ~(in_part & np.isin(row, report.bad_rows[info.name]))
        parts = {n: p for n, p in self.parts.items() if p.name not in report.bad_parts}
        skipped = {**self.skipped, **report.bad_parts}
        return PriorStore(self.store_dir, parts, self._entries.filter(pa.array(keep)), skipped)

    # --------------------------------------------------------------- lookups

    def __len__(self) -> int:
        """Distinct keys."""
        return len(self._key)

    def keys(self) -> list[str]:
        return [k.decode() for k in self._key]

    def __contains__(self, key: str) -> bool:
        return bool(self.has([key])[0])

    def has(self, keys: Sequence[str]) -> np.ndarray:
        """(n,) bool: whether each key has a row."""
        return _search(self._key, _as_bytes(_check_keys(keys))) >= 0

    def has_pairs(self, keys: Sequence[str], sample_ids: Sequence[str]) -> np.ndarray:
        """(n,) bool: whether the index records pair ``sample_ids[i]`` under ``keys[i]``.

        What generation should skip on: a sample whose key is stored only under another
        sample id (a repeated expression on one image) still needs its own index entry,
        or :meth:`lookup_sample` cannot find it."""
        if len(keys) != len(sample_ids):
            raise ValueError(f"has_pairs: {len(keys)} keys but {len(sample_ids)} sample ids")
        query_keys = _as_bytes(_check_keys(keys))
        query_sids = _as_bytes(sample_ids)
        lo = np.searchsorted(self._pair_sid, query_sids, side="left")
        hi = np.searchsorted(self._pair_sid, query_sids, side="right")
        return np.array(
            [key in self._pair_key[a:b] for key, a, b in zip(query_keys, lo, hi, strict=True)],
            dtype=bool,
        )

    def lookup_sample(self, sample_ids: Sequence[str]) -> list[str]:
        """The key of each sample id. Raises ``KeyError`` naming the first sample id without
        a prior, and ``ValueError`` for one indexed under several keys (its image or
        expression changed since, or several teachers share the store: open it with
        ``teacher_hash=``)."""
        query = _as_bytes(sample_ids)
        lo = np.searchsorted(self._pair_sid, query, side="left")
        hi = np.searchsorted(self._pair_sid, query, side="right")
        # searchsorted compares the query's own bytes, so an empty range means absent.
        absent = lo == hi
        if absent.any():
            raise KeyError(
                f"no prior for sample {sample_ids[int(np.argmax(absent))]!r} in {self.store_dir}"
            )
        ambiguous = self._pair_key[lo] != self._pair_key[hi - 1]
        if ambiguous.any():
            i = int(np.argmax(ambiguous))
            found = sorted({k.decode() for k in self._pair_key[lo[i] : hi[i]]})
            raise ValueError(
                f"sample {sample_ids[i]!r} has priors under {len(found)} keys "
                f"{found}: look it up by key, or open the store with teacher_hash="
            )
        return [k.decode() for k in self._pair_key[lo]]

    # --------------------------------------------------------------- reads

    def get(
        self, keys: Sequence[str], *, missing_ok: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """Priors of ``keys``.

        Returns ``prob`` (n, S, S) float32 in the square-stretched image frame and
        ``status`` (n,) int8. A key without a row raises ``KeyError`` naming it, or with
        ``missing_ok`` reads as zeros with status ``MISSING``.
        """
        keys = _check_keys(keys)
        found_at = _search(self._key, _as_bytes(keys))
        missing = found_at < 0
        if missing.any() and not missing_ok:
            raise KeyError(f"no prior for key {keys[int(np.argmax(missing))]} in {self.store_dir}")
        if self.size is None:
            raise KeyError(f"prior store {self.store_dir} is empty")
        prob = np.zeros((len(keys), self.size, self.size), dtype=np.float32)
        status = np.full(len(keys), PriorStatus.MISSING, dtype=np.int8)
        found = np.flatnonzero(~missing)
        entry = found_at[found]
        status[found] = self._key_status[entry]
        for part in np.unique(self._key_part[entry]):
            in_part = self._key_part[entry] == part
            prob[found[in_part]] = self._read_prob(int(part), self._key_row[entry[in_part]])
        return prob, status

    def get_samples(self, sample_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`get` by sample id (see :meth:`lookup_sample` for what raises)."""
        return self.get(self.lookup_sample(sample_ids))

    def read_cues(self, keys: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Grounding cues of ``keys``: box (n, 4) XYXY and point (n, 2) XY in original
        pixels, NaN where the teacher found none. Raises ``KeyError`` for a missing key."""
        keys = _check_keys(keys)
        found_at = _search(self._key, _as_bytes(keys))
        if (found_at < 0).any():
            raise KeyError(f"no prior for key {keys[int(np.argmax(found_at < 0))]}")
        box = np.empty((len(keys), 4), np.float32)
        point = np.empty((len(keys), 2), np.float32)
        for i, entry in enumerate(found_at):
            part, row = int(self._key_part[entry]), int(self._key_row[entry])
            box[i] = self._array(part, "box")[row]
            point[i] = self._array(part, "point")[row]
        return box, point

    def _array(self, part: int, name: str):
        # zarr handles opened before a fork share the parent's state; each process opens its own.
        if os.getpid() != self._pid:
            self._arrays, self._pid = {}, os.getpid()
        handle = (part, name)
        if handle not in self._arrays:
            import zarr

            self._arrays[handle] = zarr.open_array(self.parts[part].path / name, mode="r")
        return self._arrays[handle]

    def _read_prob(self, part: int, rows: np.ndarray) -> np.ndarray:
        """(len(rows), S, S) float32 of one part; each distinct row decoded once."""
        arr = self._array(part, "prob")
        unique, inverse = np.unique(rows, return_inverse=True)
        if len(unique) == 1:
            block = arr[int(unique[0])][None]
        else:
            block = arr.get_orthogonal_selection((unique, slice(None), slice(None)))
        return block[inverse].astype(np.float32)

    def __getstate__(self) -> dict[str, Any]:
        # Picklable for spawn-started DataLoader workers; they open their own handles.
        return {**self.__dict__, "_arrays": {}}

    # --------------------------------------------------------------- integrity

    def verify(self) -> VerifyReport:
        """Decode every indexed row of every part and check it; never raises for bad data.

        A row is bad if it cannot be read, if ``prob`` is not finite in [0, 1], or if the
        stored key or status differs from the index (a row the arrays never got reads as
        the NaN/""/-1 fill values). Reads a shard at a time; a shard that fails to decode
        is re-read row by row to find which rows are lost.
        """
        report = VerifyReport(bad_parts=dict(self.skipped))
        part_col = self._entries.column("part").to_numpy()
        for info in self.parts.values():
            index = self._entries.filter(pa.array(part_col == info.number))
            rows = index.column("row").to_numpy()
            report.rows_checked += len(rows)
            try:
                arrays = {name: self._array(info.number, name) for name in ARRAYS}
                _check_shapes(arrays, info.attrs["size"], int(rows.max(initial=-1)) + 1)
            except Exception as err:  # corrupt metadata raises many types; report, not crash
                report.bad_parts[info.name] = f"{type(err).__name__}: {err}"
                continue
            bad = _bad_rows(
                arrays, rows, index.column("key").to_pylist(), index.column("status").to_numpy()
            )
            if bad:
                report.bad_rows[info.name] = bad
        return report

    def nbytes_on_disk(self) -> int:
        """Bytes of every included part's files (Zarr data, metadata and index)."""
        total = 0
        for info in self.parts.values():
            total += part_index_path(self.store_dir, info.number).stat().st_size
            total += sum(p.stat().st_size for p in info.path.rglob("*") if p.is_file())
        return total


def _check_shapes(arrays: Mapping[str, Any], size: int, min_rows: int) -> None:
    prob = arrays["prob"]
    if prob.shape[1:] != (size, size) or prob.shape[0] < min_rows:
        raise ValueError(f"prob has shape {prob.shape}, expected (>= {min_rows}, {size}, {size})")
    for name in ("box", "point", "status", "key"):
        if arrays[name].shape[0] < min_rows:
            raise ValueError(f"{name} has {arrays[name].shape[0]} rows, index names {min_rows}")


def _bad_rows(
    arrays: Mapping[str, Any], rows: np.ndarray, keys: list[str], status: np.ndarray
) -> list[int]:
    """Indexed ``rows`` (with their index ``keys`` and ``status``) whose stored data is bad."""
    expected = dict(zip(rows.tolist(), zip(keys, status.tolist(), strict=True), strict=True))
    shard_rows = arrays["prob"].shards[0]
    bad = []
    for shard in np.unique(rows // shard_rows):
        start = int(shard) * shard_rows
        wanted = sorted(r for r in range(start, start + shard_rows) if r in expected)
        try:
            block = {name: arrays[name][start : wanted[-1] + 1] for name in ARRAYS}
            bad += [r for r in wanted if not _row_ok(block, r - start, *expected[r])]
        except Exception:  # a damaged shard: find its readable rows one by one
            for r in wanted:
                try:
                    one = {name: arrays[name][r : r + 1] for name in ARRAYS}
                    ok = _row_ok(one, 0, *expected[r])
                except Exception:
                    ok = False
                if not ok:
                    bad.append(r)
    return bad


def _row_ok(block: Mapping[str, np.ndarray], i: int, key: str, status: int) -> bool:
    prob = block["prob"][i]
    return (
        bool(np.isfinite(prob).all() and (prob >= 0).all() and (prob <= 1).all())
        and str(block["key"][i]) == key
        and int(block["status"][i]) == status
    )
