"""A part's rows: the batches a teacher hands to the writer, their checks, and the arrays
that hold them (:func:`create_arrays`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pipeline.contract import PriorStatus
from pipeline.store.layout import check_keys


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


def validated_columns(rows: PriorRows, size: int) -> dict[str, np.ndarray]:
    """Check a batch against the part's prior size; return its columns in stored dtypes."""
    keys = check_keys(rows.keys)
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


def create_arrays(group, size: int, shard_rows: int, clevel: int) -> None:
    """The empty arrays of a new part (see :mod:`pipeline.store` for the layout)."""
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
