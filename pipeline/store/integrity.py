"""What :meth:`pipeline.store.reader.PriorStore.verify` checks, and its report."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.store.layout import ARRAYS


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


def check_shapes(arrays: Mapping[str, Any], size: int, min_rows: int) -> None:
    prob = arrays["prob"]
    if prob.shape[1:] != (size, size) or prob.shape[0] < min_rows:
        raise ValueError(f"prob has shape {prob.shape}, expected (>= {min_rows}, {size}, {size})")
    for name in ("box", "point", "status", "key"):
        if arrays[name].shape[0] < min_rows:
            raise ValueError(f"{name} has {arrays[name].shape[0]} rows, index names {min_rows}")


def bad_rows(
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
