"""Reading the store: :class:`PriorStore`, a read-only view of every part in a folder."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline.contract import PriorStatus
from pipeline.store.integrity import VerifyReport, bad_rows, check_shapes
from pipeline.store.layout import (
    ARRAYS,
    INDEX_SCHEMA,
    check_keys,
    list_parts,
    part_index_path,
    part_name,
    part_zarr_path,
    read_index,
    read_part_attrs,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PartInfo:
    number: int
    name: str
    path: Path  # the part's .zarr folder
    attrs: dict[str, Any]  # teacher, teacher_hash, size, versions
    entries: int  # index entries


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


def _parts_without_index(store_dir: Path) -> list[str]:
    """Names of the parts in ``store_dir`` that have a ``.zarr`` folder but no index."""
    if not store_dir.is_dir():
        return []
    indexed = {part_name(n) for n in list_parts(store_dir)}
    names = (p.name.removesuffix(".zarr") for p in store_dir.glob("part-*.zarr"))
    return sorted(n for n in names if n not in indexed)


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
        for name in _parts_without_index(store_dir):
            why = (
                "no index file (deleted, or the part is being written and has not flushed "
                "yet): its rows count as missing, and generate recomputes them"
            )
            log.warning("prior store: leaving out %s: %s", name, why)
            skipped[name] = why
        for number in list_parts(store_dir):
            name, zarr_path = part_name(number), part_zarr_path(store_dir, number)
            try:
                attrs = read_part_attrs(zarr_path)
                index = read_index(part_index_path(store_dir, number))
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
        return store.verified() if verify else store

    def verified(self, keys: Sequence[str] | None = None) -> PriorStore:
        """This store without the bad rows :meth:`verify` finds (of ``keys`` only, when
        given), with its report as ``verify_report``; the bad rows' pairs count as missing."""
        report = self.verify(keys)
        if not report.ok:
            log.warning(
                "%s\nleaving the bad rows out; their pairs count as missing", report.summary()
            )
        store = self.excluding(report)
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

    def __contains__(self, key: str) -> bool:
        return bool(self.has([key])[0])

    def has(self, keys: Sequence[str]) -> np.ndarray:
        """(n,) bool: whether each key has a row."""
        return _search(self._key, _as_bytes(check_keys(keys))) >= 0

    def has_pairs(self, keys: Sequence[str], sample_ids: Sequence[str]) -> np.ndarray:
        """(n,) bool: whether the index records pair ``sample_ids[i]`` under ``keys[i]``.

        What generation should skip on: a sample whose key is stored only under another
        sample id (a repeated expression on one image) still needs its own index entry,
        or :meth:`lookup_sample` cannot find it."""
        if len(keys) != len(sample_ids):
            raise ValueError(f"has_pairs: {len(keys)} keys but {len(sample_ids)} sample ids")
        query_keys = _as_bytes(check_keys(keys))
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
        keys = check_keys(keys)
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

    def read_cues(self, keys: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Grounding cues of ``keys``: box (n, 4) XYXY and point (n, 2) XY in original
        pixels, NaN where the teacher found none. Raises ``KeyError`` for a missing key."""
        keys = check_keys(keys)
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
        """(len(rows), S, S) float32 of one part; each distinct row decoded once. A shard
        that does not decode raises ``ValueError`` naming the part and rows."""
        unique, inverse = np.unique(rows, return_inverse=True)
        try:
            arr = self._array(part, "prob")
            if len(unique) == 1:
                block = arr[int(unique[0])][None]
            else:
                block = arr.get_orthogonal_selection((unique, slice(None), slice(None)))
        except Exception as err:  # zarr and its codecs raise many types for damaged bytes
            bad = []
            for row in unique.tolist():  # the error path only: find the rows that are lost
                try:
                    self._array(part, "prob")[int(row)]
                except Exception:
                    bad.append(int(row))
            raise ValueError(
                f"prior store {self.store_dir}: {self.parts[part].name} has {len(bad)} "
                f"unreadable rows, first {bad[:5]} ({type(err).__name__}: {err}); run "
                "`l2l-priors verify` to list the damage and `l2l-priors generate` to recompute it"
            ) from err
        return block[inverse].astype(np.float32)

    def __getstate__(self) -> dict[str, Any]:
        # Picklable for spawn-started DataLoader workers; they open their own handles.
        return {**self.__dict__, "_arrays": {}}

    # --------------------------------------------------------------- integrity

    def verify(self, keys: Sequence[str] | None = None) -> VerifyReport:
        """Decode every row that reads are served from (the latest of each key's copies), or
        only those of ``keys`` (absent ones are ignored), and check it; never raises for bad
        data.

        A row is bad if it cannot be read, if ``prob`` is not finite in [0, 1], or if the
        stored key or status differs from the index (a row the arrays never got reads as
        the NaN/""/-1 fill values). Reads a shard at a time; a shard that fails to decode
        is re-read row by row to find which rows are lost.
        """
        report = VerifyReport(bad_parts=dict(self.skipped))
        part_col = self._entries.column("part").to_numpy()
        # Rows a later copy of their key supersedes are never read (a damaged row that
        # generate has since recomputed): only the rows reads are served from count.
        served = self._key_part.astype(np.int64) << 40 | self._key_row
        if keys is not None:
            found_at = _search(self._key, _as_bytes(check_keys(keys)))
            served = served[found_at[found_at >= 0]]
        entry_at = part_col.astype(np.int64) << 40 | self._entries.column("row").to_numpy()
        live = np.isin(entry_at, served)
        for info in self.parts.values():
            index = self._entries.filter(pa.array((part_col == info.number) & live))
            rows = index.column("row").to_numpy()
            report.rows_checked += len(rows)
            try:
                arrays = {name: self._array(info.number, name) for name in ARRAYS}
                check_shapes(arrays, info.attrs["size"], int(rows.max(initial=-1)) + 1)
            except Exception as err:  # corrupt metadata raises many types; report, not crash
                report.bad_parts[info.name] = f"{type(err).__name__}: {err}"
                continue
            bad = bad_rows(
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
