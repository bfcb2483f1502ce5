"""``l2l-priors generate``: run the teacher over a split's pairs into the prior store.

Resumable and incremental by construction: each pair's key is
``sha256(image content hash, expression, teacher hash)``, and pairs whose key is already
indexed for that sample are skipped, so a rerun after a crash, a new label ratio or new
images computes only what is missing. Parallel without a scheduler: worker ``i`` of ``K``
(``--shard i/K``, or ``RANK``/``WORLD_SIZE`` under ``torchrun``) takes the pairs whose image
hash falls in its residue, so one image's expressions stay with one worker, and writes its
own store part.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.config import PipelineConfig
from pipeline.contract import (
    PriorStatus,
    TeacherOutput,
    pair_image_hashes,
    pair_keys,
    teacher_hash,
    teacher_identity,
)
from pipeline.datasets.manifest import image_root, read_pairs
from pipeline.store.layout import list_parts, part_index_path
from pipeline.store.reader import PriorStore
from pipeline.store.writer import PriorRows, PriorWriter, writer_part
from pipeline.tables import parquet_rows, write_table_atomic
from pipeline.teachers import Teacher, build_teacher

log = logging.getLogger(__name__)

CUES_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("sample_id", pa.string()),
        ("status", pa.int8()),
        ("box", pa.list_(pa.float32(), 4)),
        ("point", pa.list_(pa.float32(), 2)),
        ("raw_text", pa.string()),
    ]
)


@dataclass(frozen=True)
class Shard:
    index: int = 0
    count: int = 1

    @classmethod
    def parse(cls, text: str | None) -> Shard:
        """``"i/K"``; None falls back to torchrun's ``RANK``/``WORLD_SIZE`` (or 0/1)."""
        if text is None:
            return cls(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)))
        try:
            index, count = (int(v) for v in text.split("/"))
        except ValueError:
            raise ValueError(f"--shard: expected 'i/K' such as 0/2, got {text!r}") from None
        if not 0 <= index < count:
            raise ValueError(f"--shard: expected 0 <= i < K, got {text!r}")
        return cls(index, count)

    def owns(self, image_hashes: list[str]) -> np.ndarray:
        """(n,) bool: which images this shard processes."""
        return np.array([int(h[:15], 16) % self.count == self.index for h in image_hashes])


@dataclass(frozen=True)
class GenerateSummary:
    split: str
    pairs: int  # pairs of the split in this shard
    skipped: int  # already in the store
    computed: int
    status_counts: dict[str, int]
    part: int | None  # the store part written, None when nothing was computed
    # status name -> the first few sample ids stored with it, for every status but ok
    examples: dict[str, list[str]] = dataclasses.field(default_factory=dict)


def _finite_outputs(outputs: list[TeacherOutput], keys: list[str]) -> list[TeacherOutput]:
    """A prior with NaN/inf values is never stored, and never as OK: its row keeps the
    status NON_FINITE and an empty map (infinite cues become NaN, "no cue")."""
    checked = []
    for output, key in zip(outputs, keys, strict=True):
        prob, status = output.prob, output.status
        if prob is not None and not np.isfinite(prob).all():
            log.warning("prior %s holds NaN/inf values: stored as non_finite", key)
            prob = None
            status = PriorStatus.NON_FINITE if status == PriorStatus.OK else status
        box = np.where(np.isinf(output.box), np.nan, output.box).astype(np.float32)
        point = np.where(np.isinf(output.point), np.nan, output.point).astype(np.float32)
        checked.append(dataclasses.replace(output, prob=prob, status=status, box=box, point=point))
    return checked


def _rows_of(pairs: list[dict], keys: list[str], outputs, size: int) -> PriorRows:
    empty = np.zeros((size, size), np.float32)
    return PriorRows(
        keys=keys,
        sample_ids=[p["sample_id"] for p in pairs],
        prob=np.stack([o.prob if o.prob is not None else empty for o in outputs]),
        box=np.stack([o.box for o in outputs]),
        point=np.stack([o.point for o in outputs]),
        status=np.array([int(o.status) for o in outputs], np.int8),
    )


class CuesLog:
    """Grounding cues and raw MLLM text, for inspection (``<store>/cues/part-NNNNN-SSSSS.parquet``,
    readable together as one Parquet dataset).

    Cues are committed with the priors: :class:`PriorWriter` calls :meth:`commit` with the rows
    it is about to index, and the part's current file is rewritten (temp file, rename) with
    them until it holds ``every`` rows, then the next file starts. So a kill never loses the
    cues of an indexed pair (the rerun skips that pair, it would never write them again) and
    never leaves a half-written file. Cues committed just before a kill whose index write
    did not happen belong to pairs the rerun computes again: ``durable`` (the part's index
    entries) drops them when the part is reopened, so no pair is listed twice."""

    def __init__(
        self,
        folder: Path,
        part: int,
        durable: set[tuple[str, str]] = frozenset(),
        every: int = 4096,
        fsync: bool = True,
    ):
        self.folder, self.part, self.every, self.fsync = folder, part, every, fsync
        self.pending: list[dict] = []  # added, their priors not yet indexed
        self.current: list[dict] = []  # the rows of file ``sequence``, as on disk
        files = sorted(folder.glob(f"part-{part:05d}-*.parquet")) if folder.exists() else []
        for tmp in folder.glob(f"part-{part:05d}-*.parquet.tmp") if folder.exists() else []:
            tmp.unlink(missing_ok=True)  # a kill mid-write
        self.sequence = max(len(files) - 1, 0)
        if files:
            # Only the last commit can be ahead of the index, and it went to the last file.
            rows = pq.read_table(files[-1]).to_pylist()
            self.current = [r for r in rows if (r["key"], r["sample_id"]) in durable]
            if len(self.current) != len(rows):
                self._write()
            if len(self.current) >= every:
                self.sequence, self.current = len(files), []

    def add(self, pairs: list[dict], keys: list[str], outputs) -> None:
        self.pending += [
            {
                "key": k,
                "sample_id": p["sample_id"],
                "status": int(o.status),
                "box": o.box.tolist(),
                "point": o.point.tolist(),
                "raw_text": o.raw_text,
            }
            for p, k, o in zip(pairs, keys, outputs, strict=True)
        ]

    def commit(self, count: int) -> None:
        """Make the ``count`` oldest added rows durable (called before the index names them)."""
        self.current += self.pending[:count]
        self.pending = self.pending[count:]
        self._write()
        if len(self.current) >= self.every:
            self.sequence, self.current = self.sequence + 1, []

    def _write(self) -> None:
        path = self.folder / f"part-{self.part:05d}-{self.sequence:05d}.parquet"
        if not self.current:
            path.unlink(missing_ok=True)
            return
        cues = pa.Table.from_pylist(self.current, schema=CUES_SCHEMA)
        write_table_atomic(cues, path, fsync=self.fsync)


def image_batches(pairs: list[dict], max_pairs: int) -> list[list[dict]]:
    """Consecutive pairs cut into batches of whole images of at most ~``max_pairs`` pairs
    (one image's expressions are never split: SAM2 encodes each image once)."""
    batches, current = [], []
    for pair in pairs:
        if (
            current
            and len(current) >= max_pairs
            and pair["image_path"] != current[-1]["image_path"]
        ):
            batches.append(current)
            current = []
        current.append(pair)
    if current:
        batches.append(current)
    return batches


def _indexed_rows(store_dir: str | Path) -> dict[int, int]:
    """Index entries per part, now (an unreadable index counts none)."""
    rows = {}
    for part in list_parts(store_dir):
        try:
            rows[part] = parquet_rows(part_index_path(store_dir, part))
        except (OSError, pa.ArrowException):
            rows[part] = 0
    return rows


def shard_pairs(
    cfg: PipelineConfig, split: str, shard: Shard = Shard(), limit: int | None = None
) -> tuple[list[dict], list[str]]:
    """The pairs of ``split`` this shard owns (the first ``limit``, in image order) and their
    prior keys under ``cfg``'s teacher."""
    table = read_pairs(cfg.paths, split).sort_by(
        [("image_id", "ascending"), ("sample_id", "ascending")]
    )
    pairs = table.to_pylist()
    hashes = pair_image_hashes(pairs, image_root(cfg.paths.samples))
    mine = np.flatnonzero(shard.owns(hashes))[:limit]
    pairs = [pairs[i] for i in mine]
    return pairs, pair_keys(pairs, [hashes[i] for i in mine], teacher_hash(cfg.priors))


def generate(
    cfg: PipelineConfig,
    split: str,
    *,
    limit: int | None = None,
    shard: Shard = Shard(),
    teacher: Teacher | None = None,
    verify: bool = True,
    on_total: Callable[[int], None] | None = None,
    on_pairs: Callable[[int], None] | None = None,
) -> GenerateSummary:
    """Compute the missing priors of ``split`` for this shard into ``cfg.paths.priors``.

    ``limit`` caps the pairs considered (the first ``limit`` of the shard, in image order).
    ``verify`` reads the stored rows of these pairs first and recomputes those that are damaged.
    ``on_total(n)`` is told how many pairs will be computed, ``on_pairs(k)`` after each batch.
    """
    identity, t_hash = teacher_identity(cfg.priors), teacher_hash(cfg.priors)
    pairs, keys = shard_pairs(cfg, split, shard, limit)
    root = image_root(cfg.paths.samples)

    # Opening with this teacher's hash logs the parts of other teacher configs it ignores.
    indexed_at_scan = _indexed_rows(cfg.paths.priors)
    store = PriorStore.open(cfg.paths.priors, teacher_hash=t_hash)
    if verify:  # only this shard's rows: the other splits' are checked when they are generated
        store = store.verified(keys)
    done = store.has_pairs(keys, [p["sample_id"] for p in pairs]) if pairs else np.zeros(0, bool)
    todo = np.flatnonzero(~done)
    if on_total:
        on_total(len(todo))
    counts: dict[str, int] = {}
    examples: dict[str, list[str]] = {}
    part = None
    if len(todo):
        teacher = teacher or build_teacher(cfg)
        # What the run used beyond the config (e.g. the MLLM's pixel budget), kept with the
        # priors in the part's attributes; absent for teachers that have nothing to add.
        runtime = getattr(teacher, "runtime_info", None)
        part = writer_part(
            cfg.paths.priors, shard.index, shard.count, size=cfg.priors.size, teacher_hash=t_hash
        )
        key_of = {pairs[i]["sample_id"]: keys[i] for i in todo}
        cues: CuesLog | None = None
        # The writer takes the part's lock before anything reads or rewrites its cues.
        with PriorWriter(
            cfg.paths.priors,
            part,
            size=cfg.priors.size,
            teacher_config=identity | ({"runtime": runtime} if runtime else {}),
            teacher_hash=t_hash,
            shard_rows=cfg.priors.store.shard_rows,
            clevel=cfg.priors.store.clevel,
            before_index=lambda n: cues.commit(n),
        ) as writer:
            index = writer.index
            durable = set(
                zip(index["key"].to_pylist(), index["sample_id"].to_pylist(), strict=True)
            )
            cues = CuesLog(Path(cfg.paths.priors) / "cues", part, durable)
            # Another run on this shard may have finished the part between our scan and our
            # lock (building a teacher takes minutes): skip what it indexed meanwhile.
            late = index.slice(indexed_at_scan.get(part, 0))
            late = set(zip(late["key"].to_pylist(), late["sample_id"].to_pylist(), strict=True))
            todo = [i for i in todo if (keys[i], pairs[i]["sample_id"]) not in late]
            for batch in image_batches([pairs[i] for i in todo], cfg.priors.mllm.batch_size):
                batch_keys = [key_of[p["sample_id"]] for p in batch]
                outputs = _finite_outputs(teacher.predict(batch, root), batch_keys)
                cues.add(batch, batch_keys, outputs)  # before write(): it may index them
                writer.write(_rows_of(batch, batch_keys, outputs, cfg.priors.size))
                for p, o in zip(batch, outputs, strict=True):
                    name = PriorStatus(o.status).name.lower()
                    counts[name] = counts.get(name, 0) + 1
                    if o.status != PriorStatus.OK and len(examples.setdefault(name, [])) < 3:
                        examples[name].append(p["sample_id"])
                if on_pairs:
                    on_pairs(len(batch))
    return GenerateSummary(
        split, len(pairs), len(pairs) - len(todo), len(todo), counts, part, examples
    )
