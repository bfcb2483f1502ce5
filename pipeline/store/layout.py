"""Where a store's parts live and what each part's metadata and index hold."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import pyarrow as pa

from pipeline.tables import read_parquet

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
ARRAYS = ("prob", "box", "point", "status", "key")
INDEX_SCHEMA = pa.schema(
    [("key", pa.string()), ("row", pa.int64()), ("sample_id", pa.string()), ("status", pa.int8())]
)
_PART_RE = re.compile(r"^part-(\d{5,})\.index\.parquet$")
_KEY_RE = re.compile(r"^[0-9a-f]{64}$")
_VERSIONED_PACKAGES = ("zarr", "numcodecs", "numpy", "pyarrow", "torch")


class PartMismatchError(ValueError):
    """An existing part was written with another teacher config or prior size."""


def check_keys(keys: Sequence[str]) -> list[str]:
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


def part_lock_path(store_dir: str | Path, part: int) -> Path:
    return Path(store_dir) / f"{part_name(part)}.lock"


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


def read_index(path: Path) -> pa.Table:
    """A part's index; raises ``ValueError`` naming the file if it is unreadable."""
    try:
        table = read_parquet(path)
    except (OSError, pa.ArrowException) as err:
        raise ValueError(f"unreadable prior index {path}: {err}") from err
    missing = set(INDEX_SCHEMA.names) - set(table.column_names)
    if missing:
        raise ValueError(f"prior index {path} lacks columns {sorted(missing)}")
    return table.select(INDEX_SCHEMA.names).cast(INDEX_SCHEMA)


def read_part_attrs(zarr_path: Path) -> dict[str, Any]:
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


def check_part_matches(
    zarr_path: Path, attrs: Mapping[str, Any], size: int, teacher_hash: str
) -> None:
    if attrs["size"] != size or attrs["teacher_hash"] != teacher_hash:
        raise PartMismatchError(
            f"{zarr_path} holds priors of teacher {attrs['teacher_hash']} at size {attrs['size']}; "
            f"this writer has teacher {teacher_hash} at size {size}. One part holds one teacher: "
            "write to another part (see writer_part) or another store folder"
        )
