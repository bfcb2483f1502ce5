"""The prior store: keys, write/read, resume, crash safety, merging parts, verify, workers."""

from __future__ import annotations

import hashlib
import signal
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.contract import PriorStatus, image_content_hash, prior_key
from pipeline.store.layout import PartMismatchError, part_index_path, part_zarr_path
from pipeline.store.reader import PriorStore
from pipeline.store.writer import PriorRows, PriorWriter, writer_part

SIZE = 8
TEACHER = {"teacher": "simulated", "seed": 0}
TEACHER_HASH = "t0"
REPO = Path(__file__).resolve().parents[3]


def key_of(i: int, teacher_hash: str = TEACHER_HASH) -> str:
    return prior_key(f"img{i}", f"expr{i}", teacher_hash)


def make_rows(start: int, n: int, size: int = SIZE, offset: float = 0.0) -> PriorRows:
    """Rows ``start .. start+n-1``: pair i has prob (i % 10) / 10 + offset everywhere except
    a 0.25 pixel at (0, 0), box (i, i, i+1, i+1), point (i, i) and status i % 3."""
    ids = np.arange(start, start + n)
    prob = np.broadcast_to(((ids % 10) / 10 + offset)[:, None, None], (n, size, size)).copy()
    prob[:, 0, 0] = 0.25
    return PriorRows(
        keys=[key_of(i) for i in ids],
        sample_ids=[f"synthetic/train/{i}/0" for i in ids],
        prob=prob,
        box=np.stack([ids, ids, ids + 1, ids + 1], axis=1).astype(np.float32),
        point=np.stack([ids, ids], axis=1).astype(np.float32),
        status=ids % 3,
    )


def writer(store_dir: Path, part: int = 0, **kwargs) -> PriorWriter:
    kwargs = {
        "size": SIZE,
        "teacher_config": TEACHER,
        "teacher_hash": TEACHER_HASH,
        "shard_rows": 4,
        **kwargs,
    }
    return PriorWriter(store_dir, part, **kwargs)


def expected_prob(i: int, offset: float = 0.0) -> np.ndarray:
    prob = np.full((SIZE, SIZE), (i % 10) / 10 + offset, dtype=np.float32)
    prob[0, 0] = 0.25
    return prob


# ----------------------------------------------------------------------------- keys


def test_prior_key_is_stable_and_unambiguous():
    blob = b'["abc", "the man on the left", "t0"]'
    assert prior_key("abc", "the man on the left", "t0") == hashlib.sha256(blob).hexdigest()
    # Pinned: changing the key recipe silently invalidates every stored prior.
    assert prior_key("abc", "the man on the left", "t0") == (
        "ae05ce1c838969aedf6693d67b91aacf89c0cc895b842a7cb3196fe351af6e5c"
    )
    assert prior_key("a b", "c", "t") != prior_key("a", "b c", "t")
    assert prior_key("a", "b", "t1") != prior_key("a", "b", "t2")


def test_image_content_hash_is_sha256_of_bytes(tmp_path):
    path = tmp_path / "img.jpg"
    path.write_bytes(b"abc")
    assert image_content_hash(path) == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )


# ----------------------------------------------------------------------------- write/read


def test_roundtrip_values_status_cues_and_attrs(tmp_path):
    with writer(tmp_path) as w:
        w.write(make_rows(0, 6))
        w.write(make_rows(6, 4))
    store = PriorStore.open(tmp_path)
    assert len(store) == 10 and store.size == SIZE
    keys = [key_of(i) for i in (7, 0, 3, 7)]
    prob, status = store.get(keys)
    assert prob.dtype == np.float32 and prob.shape == (4, SIZE, SIZE)
    for got, i in zip(prob, (7, 0, 3, 7), strict=True):
        np.testing.assert_allclose(got, expected_prob(i), atol=1e-3)  # float16 storage
    np.testing.assert_array_equal(status, [1, 0, 0, 1])
    box, point = store.read_cues([key_of(5)])
    np.testing.assert_array_equal(box, [[5, 5, 6, 6]])
    np.testing.assert_array_equal(point, [[5, 5]])
    assert store.lookup_sample(["synthetic/train/3/0"]) == [key_of(3)]
    attrs = store.parts[0].attrs
    assert attrs["teacher"] == TEACHER and attrs["teacher_hash"] == TEACHER_HASH
    assert attrs["size"] == SIZE and "zarr" in attrs["versions"]
    assert store.nbytes_on_disk() > 0
    index = pq.read_table(part_index_path(tmp_path, 0))
    assert index.column_names == ["key", "row", "sample_id", "status"]
    assert index.column("row").to_pylist() == list(range(10))


def test_missing_keys_and_samples(tmp_path):
    with writer(tmp_path) as w:
        w.write(make_rows(0, 2))
    store = PriorStore.open(tmp_path)
    with pytest.raises(KeyError, match=key_of(9)):
        store.get([key_of(0), key_of(9)])
    prob, status = store.get([key_of(9), key_of(1)], missing_ok=True)
    assert status.tolist() == [PriorStatus.MISSING, 1]
    assert not prob[0].any()
    np.testing.assert_allclose(prob[1], expected_prob(1), atol=1e-3)
    # A query that extends or shortens a stored sample id must not match it.
    with pytest.raises(KeyError, match="synthetic/train/1/00"):
        store.lookup_sample(["synthetic/train/1/00"])
    with pytest.raises(KeyError):
        store.lookup_sample(["synthetic/train/1/"])
    assert store.has([key_of(1), key_of(2)]).tolist() == [True, False]
    with pytest.raises(ValueError, match="not a prior key"):
        store.get(["synthetic/train/1/0"])


def test_empty_or_absent_store(tmp_path):
    store = PriorStore.open(tmp_path / "nothing")
    assert len(store) == 0 and store.verify().ok
    assert not store.has([key_of(0)]).any()


# ----------------------------------------------------------------------------- bad input


def test_rejects_non_finite_and_out_of_range_prob(tmp_path):
    rows = make_rows(0, 3)
    rows.prob[1, 2, 2] = np.nan
    with writer(tmp_path) as w, pytest.raises(ValueError, match=f"key {key_of(1)}.*non-finite"):
        w.write(rows)
    rows = make_rows(0, 3)
    rows.prob[2, 0, 0] = 1.5
    with writer(tmp_path) as w, pytest.raises(ValueError, match=key_of(2)):
        w.write(rows)
    assert len(PriorStore.open(tmp_path)) == 0


def test_rejects_bad_shapes_keys_and_status(tmp_path):
    w = writer(tmp_path)
    with pytest.raises(ValueError, match=r"PriorRows.prob: expected shape \(3, 8, 8\)"):
        w.write(make_rows(0, 3, size=16))
    bad = make_rows(0, 2)
    with pytest.raises(ValueError, match="not a prior key"):
        w.write(replace(bad, keys=["abc", key_of(1)]))
    with pytest.raises(ValueError, match=r"status for key .*got -1"):
        w.write(replace(bad, status=np.array([0, -1])))
    with pytest.raises(ValueError, match=r"box/point for key .* is infinite"):
        w.write(replace(bad, box=np.full((2, 4), np.inf)))
    w.close()
    with pytest.raises(RuntimeError, match="after close"):
        w.write(make_rows(0, 1))


def test_reopening_with_another_teacher_or_size_fails_and_writer_part_skips(tmp_path):
    with writer(tmp_path) as w:
        w.write(make_rows(0, 2))
    with pytest.raises(PartMismatchError, match=r"teacher t0 at size 8.*teacher t1 at size 8"):
        writer(tmp_path, teacher_hash="t1")
    with pytest.raises(PartMismatchError, match="size 16"):
        writer(tmp_path, size=16)
    assert writer_part(tmp_path, 0, 2, size=SIZE, teacher_hash=TEACHER_HASH) == 0
    assert writer_part(tmp_path, 0, 2, size=SIZE, teacher_hash="t1") == 2
    assert writer_part(tmp_path, 1, 2, size=SIZE, teacher_hash="t1") == 1


# ----------------------------------------------------------------------------- resume


def test_resume_appends_after_indexed_rows(tmp_path):
    with writer(tmp_path) as w:
        w.write(make_rows(0, 6))  # one full shard flushed, two rows at close
    store = PriorStore.open(tmp_path)
    todo = [i for i in range(11) if not store.has([key_of(i)])[0]]
    assert todo == list(range(6, 11))
    with writer(tmp_path) as w:
        assert w.rows == 6
        w.write(make_rows(6, 5))
        assert w.rows == 8 and w.pending == 3  # realigned to the shard boundary at row 8
    store = PriorStore.open(tmp_path)
    assert len(store) == 11 and store.verify().ok
    prob, _ = store.get([key_of(i) for i in range(11)])
    for i in range(11):
        np.testing.assert_allclose(prob[i], expected_prob(i), atol=1e-3)
    index = pq.read_table(part_index_path(tmp_path, 0))
    assert index.column("row").to_pylist() == list(range(11))


def _run_and_kill(store_dir: Path, body: str) -> None:
    """Run ``body`` in a fresh interpreter that SIGKILLs itself at its end."""
    script = (
        textwrap.dedent(f"""
        import os, signal, sys
        sys.path[:0] = [{str(REPO)!r}, {str(Path(__file__).parent)!r}]
        import pipeline.store.writer as store
        from test_store import make_rows, writer
        from pathlib import Path
        store_dir = Path({str(store_dir)!r})
    """)
        + textwrap.dedent(body)
        + "\nos.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr


def test_sigkill_between_flushes_loses_only_buffered_rows(tmp_path):
    _run_and_kill(
        tmp_path,
        """
        w = writer(store_dir)
        w.write(make_rows(0, 10))  # shards 0-3 and 4-7 durable, 8-9 buffered
    """,
    )
    store = PriorStore.open(tmp_path)
    assert len(store) == 8 and store.verify().ok
    with writer(tmp_path) as w:
        assert w.rows == 8
        w.write(make_rows(8, 2))
    assert len(PriorStore.open(tmp_path)) == 10


def test_sigkill_after_data_before_index_never_indexes_unwritten_rows(tmp_path):
    # The second flush writes rows 4-7 to the arrays, then dies before replacing the index.
    _run_and_kill(
        tmp_path,
        """
        write_index = store.write_table_atomic
        calls = []
        def dying_write_index(*args, **kwargs):
            calls.append(1)
            if len(calls) == 2:
                os.kill(os.getpid(), signal.SIGKILL)
            write_index(*args, **kwargs)
        store.write_table_atomic = dying_write_index
        w = writer(store_dir)
        w.write(make_rows(0, 8))
    """,
    )
    store = PriorStore.open(tmp_path)
    assert len(store) == 4
    assert store.has([key_of(i) for i in range(8)]).tolist() == [True] * 4 + [False] * 4
    assert store.verify().ok
    with writer(tmp_path) as w:  # rows 4-7 on disk beyond the index get overwritten
        assert w.rows == 4
        w.write(make_rows(4, 4, offset=0.05))
    store = PriorStore.open(tmp_path)
    prob, _ = store.get([key_of(i) for i in range(8)])
    for i in range(8):
        np.testing.assert_allclose(prob[i], expected_prob(i, 0.05 if i >= 4 else 0), atol=1e-3)
    assert pq.read_table(part_index_path(tmp_path, 0)).num_rows == 8


# ----------------------------------------------------------------------------- parts


def test_two_writers_parts_are_merged(tmp_path):
    with writer(tmp_path, 0) as w0, writer(tmp_path, 1) as w1:
        w0.write(make_rows(0, 5))
        w1.write(make_rows(4, 5, offset=0.01))  # key 4 lands in both parts
    store = PriorStore.open(tmp_path)
    assert len(store) == 9 and sorted(store.parts) == [0, 1]
    prob, _ = store.get([key_of(0), key_of(4), key_of(8)])
    np.testing.assert_allclose(prob[0], expected_prob(0), atol=1e-3)
    np.testing.assert_allclose(prob[1], expected_prob(4, 0.01), atol=1e-3)  # highest part wins
    np.testing.assert_allclose(prob[2], expected_prob(8, 0.01), atol=1e-3)


def test_has_pairs_and_ambiguous_samples(tmp_path):
    rows = make_rows(0, 2)
    with writer(tmp_path) as w:
        w.write(rows)
        # The same sample id under a second key (its image changed since it was written).
        w.write(
            PriorRows(
                [key_of(7)],
                ["synthetic/train/0/0"],
                rows.prob[:1],
                rows.box[:1],
                rows.point[:1],
                rows.status[:1],
            )
        )
    store = PriorStore.open(tmp_path)
    got = store.has_pairs(
        [key_of(1), key_of(1), key_of(7)],
        ["synthetic/train/1/0", "synthetic/train/9/0", "synthetic/train/0/0"],
    )
    assert got.tolist() == [True, False, True]
    with pytest.raises(ValueError, match="synthetic/train/0/0' has priors under 2 keys"):
        store.lookup_sample(["synthetic/train/1/0", "synthetic/train/0/0"])


def test_teacher_filter_and_mixed_sizes(tmp_path):
    with writer(tmp_path, 0) as w0, writer(tmp_path, 1, size=16, teacher_hash="t16") as w1:
        w0.write(make_rows(0, 2))
        w1.write(make_rows(0, 3, size=16))
    with pytest.raises(ValueError, match="different sizes"):
        PriorStore.open(tmp_path)
    store = PriorStore.open(tmp_path, teacher_hash="t16")
    assert store.size == 16 and len(store) == 3


# ----------------------------------------------------------------------------- verify


def test_verify_finds_damaged_shards_and_open_excludes_them(tmp_path):
    with writer(tmp_path) as w:
        w.write(make_rows(0, 12))
    prob_dir = part_zarr_path(tmp_path, 0) / "prob" / "c"
    truncated = prob_dir / "1" / "0" / "0"
    truncated.write_bytes(truncated.read_bytes()[:50])
    overwritten = prob_dir / "2" / "0" / "0"
    data = bytearray(overwritten.read_bytes())
    data[40:80] = b"\xff" * 40  # inside the first inner chunk of the shard
    overwritten.write_bytes(bytes(data))

    report = PriorStore.open(tmp_path).verify()
    assert report.rows_checked == 12 and not report.bad_parts
    bad = report.bad_rows["part-00000"]
    assert set(range(4, 8)) <= set(bad) and 8 in bad and not set(bad) & {0, 1, 2, 3}
    assert "part-00000" in report.summary()

    store = PriorStore.open(tmp_path, verify=True)
    assert store.verify_report.bad_rows == report.bad_rows
    assert store.has([key_of(i) for i in range(12)]).tolist() == [i not in bad for i in range(12)]
    good = [i for i in range(12) if i not in bad]
    prob, _ = store.get([key_of(i) for i in good])
    for got, i in zip(prob, good, strict=True):
        np.testing.assert_allclose(got, expected_prob(i), atol=1e-3)


def test_part_with_unreadable_metadata_is_left_out(tmp_path):
    with writer(tmp_path, 0) as w0, writer(tmp_path, 1) as w1:
        w0.write(make_rows(0, 2))
        w1.write(make_rows(2, 2))
    (part_zarr_path(tmp_path, 1) / "zarr.json").write_text("{not json")
    store = PriorStore.open(tmp_path)
    assert "part-00001" in store.skipped and len(store) == 2
    assert "part-00001" in store.verify().bad_parts
    assert writer_part(tmp_path, 1, 2, size=SIZE, teacher_hash=TEACHER_HASH) == 3


def test_verify_finds_rows_missing_from_arrays(tmp_path):
    with writer(tmp_path) as w:
        w.write(make_rows(0, 8))
    (part_zarr_path(tmp_path, 0) / "prob" / "c" / "1" / "0" / "0").unlink()  # reads as NaN
    report = PriorStore.open(tmp_path).verify()
    assert report.bad_rows == {"part-00000": [4, 5, 6, 7]}


def test_verify_of_some_keys_checks_only_their_rows(tmp_path):
    # What generate does for one split: the other splits' rows are neither read nor left out.
    with writer(tmp_path) as w:
        w.write(make_rows(0, 8))
    (part_zarr_path(tmp_path, 0) / "prob" / "c" / "1" / "0" / "0").unlink()  # rows 4-7: NaN
    store = PriorStore.open(tmp_path)
    clean = store.verify([key_of(i) for i in range(4)] + [key_of(99)])  # 99: absent, ignored
    assert clean.ok and clean.rows_checked == 4
    some = store.verified([key_of(1), key_of(5)])
    assert some.verify_report.rows_checked == 2
    assert some.verify_report.bad_rows == {"part-00000": [5]}
    assert some.has([key_of(i) for i in range(8)]).tolist() == [True] * 5 + [False] + [True] * 2


# ----------------------------------------------------------------------------- workers


class _PriorDataset:
    def __init__(self, store: PriorStore, keys: list[str]):
        self.store, self.keys = store, keys

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, i: int):
        prob, status = self.store.get([self.keys[i]])
        return i, prob[0], status[0]


@pytest.mark.slow  # importing torch and forking two workers: ~2.5 s idle, 5+ s loaded
def test_dataloader_workers_read_through_forked_store(tmp_path):
    import torch

    with writer(tmp_path) as w:
        w.write(make_rows(0, 16))
    store = PriorStore.open(tmp_path)
    store.get([key_of(0)])  # the parent holds open handles before the fork
    dataset = _PriorDataset(store, [key_of(i) for i in range(16)])
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=4, num_workers=2, multiprocessing_context="fork"
    )
    seen = set()
    for ids, prob, status in loader:
        for i, p, s in zip(ids.tolist(), prob.numpy(), status.tolist(), strict=True):
            np.testing.assert_allclose(p, expected_prob(i), atol=1e-3)
            assert s == i % 3
            seen.add(i)
    assert seen == set(range(16))


def test_a_second_writer_on_a_part_is_refused_and_failed_opens_release_the_lock(tmp_path):
    from pipeline.store.lock import PartLockedError

    with writer(tmp_path) as w:
        w.write(make_rows(0, 2))
        with pytest.raises(PartLockedError, match=r"part-00000 is being written by pid \d+"):
            writer(tmp_path)
        with writer(tmp_path, 1):  # another part is free
            pass
    with pytest.raises(PartMismatchError):
        writer(tmp_path, size=16)
    with writer(tmp_path) as w:  # the refused opens left no lock behind
        assert w.rows == 2
    assert not list(tmp_path.glob("*.lock"))
