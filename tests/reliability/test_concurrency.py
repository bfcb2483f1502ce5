"""Several ``generate`` processes on one store: K shards in parallel give disjoint parts that
together hold every pair; a second run on a part that is being written is refused, clearly,
and the store stays intact."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from fault_injection import (
    leftovers,
    load_cfg,
    priors_cli,
    priors_variant,
    run_to_end,
    start,
    store_snapshot,
    tail,
)

from pipeline.contract import teacher_hash, teacher_identity
from pipeline.datasets.manifest import read_pairs
from pipeline.generate import generate
from pipeline.store.layout import list_parts, part_lock_path
from pipeline.store.writer import PriorWriter


def reference_store(workspace: Path, folder: Path) -> dict:
    cfg = load_cfg(priors_variant(workspace, folder))
    generate(cfg, "unlabeled")
    return store_snapshot(Path(cfg.paths.priors))


@pytest.mark.slow
def test_three_shard_processes_write_disjoint_parts_covering_every_pair(
    generate_workspace, tmp_path
):
    params = priors_variant(generate_workspace, tmp_path / "sharded")
    procs = [
        start(
            priors_cli("generate", "--params", str(params), "--shard", f"{i}/3"),
            tmp_path / f"log{i}.txt",
        )
        for i in range(3)
    ]
    for i, proc in enumerate(procs):
        assert proc.wait(300) == 0, tail(tmp_path / f"log{i}.txt")
    priors = Path(load_cfg(params).paths.priors)
    assert list_parts(priors) == [0, 1, 2]
    snapshot = store_snapshot(priors)
    by_part = [store_snapshot_part(priors, p) for p in range(3)]
    assert all(by_part) and not (by_part[0] & by_part[1] or by_part[0] & by_part[2])
    assert not by_part[1] & by_part[2]
    pairs = {p["sample_id"] for p in read_pairs(load_cfg(params).paths, "unlabeled").to_pylist()}
    assert by_part[0] | by_part[1] | by_part[2] == pairs
    reference = reference_store(generate_workspace, tmp_path / "reference")
    assert snapshot["pairs"] == reference["pairs"] and snapshot["entries"] == reference["entries"]
    assert snapshot["cues"] == reference["cues"]
    assert leftovers(priors) == []


def store_snapshot_part(priors: Path, part: int) -> set[str]:
    import pyarrow.parquet as pq

    from pipeline.store.layout import part_index_path

    return set(pq.read_table(part_index_path(priors, part)).column("sample_id").to_pylist())


@pytest.mark.slow
def test_a_second_run_on_a_part_being_written_is_refused_naming_part_lock_and_pid(
    generate_workspace, tmp_path
):
    params = priors_variant(generate_workspace, tmp_path)
    cfg = load_cfg(params)
    priors = Path(cfg.paths.priors)
    # This process writes part 0, as the first of two runs started by mistake would be.
    holder = PriorWriter(
        priors,
        0,
        size=cfg.priors.size,
        teacher_config=teacher_identity(cfg.priors),
        teacher_hash=teacher_hash(cfg.priors),
    )
    log = tmp_path / "second.txt"
    proc = start(priors_cli("generate", "--params", str(params)), log)
    assert proc.wait(300) == 1, tail(log)
    message = tail(log)
    lock = part_lock_path(priors, 0)
    assert "part-00000 is being written by pid" in message
    assert f"pid {os.getpid()}" in message and str(lock) in message
    assert "Traceback" not in message
    holder.close()
    assert not lock.exists()
    # The refused run changed nothing; a run now completes the store.
    run_to_end(priors_cli("generate", "--params", str(params)), tmp_path / "third.txt")
    reference = reference_store(generate_workspace, tmp_path / "reference")
    assert store_snapshot(priors) == reference
    assert leftovers(priors) == []


@pytest.mark.slow
def test_two_runs_started_together_on_one_shard_leave_an_intact_store(generate_workspace, tmp_path):
    """Whichever reaches the part second is refused while the first writes (or, if the first
    has finished by then, finds nothing to do); either way the store is the reference's."""
    params = priors_variant(generate_workspace, tmp_path)
    argv = priors_cli("generate", "--params", str(params))
    procs = [start(argv, tmp_path / f"run{i}.txt") for i in range(2)]
    codes = [proc.wait(300) for proc in procs]
    logs = [tail(tmp_path / f"run{i}.txt") for i in range(2)]
    assert sorted(codes) in ([0, 0], [0, 1]), logs
    for code, log in zip(codes, logs, strict=True):
        if code:
            assert "part-00000 is being written by pid" in log and "Traceback" not in log
    priors = Path(load_cfg(params).paths.priors)
    assert store_snapshot(priors) == reference_store(generate_workspace, tmp_path / "reference")
    assert leftovers(priors) == []


def test_a_part_finished_by_another_run_while_the_teacher_loaded_is_not_recomputed(
    generate_workspace, tmp_path, monkeypatch
):
    """The real teacher takes minutes to build, between the store scan and the part's lock:
    a run that filled the part meanwhile must not have its pairs appended a second time."""
    import pipeline.generate as gen

    cfg = load_cfg(priors_variant(generate_workspace, tmp_path))
    build = gen.build_teacher

    def slow_build(cfg):
        teacher = build(cfg)
        generate(cfg, "unlabeled", teacher=teacher)  # the other run, start to end
        return teacher

    monkeypatch.setattr(gen, "build_teacher", slow_build)
    summary = generate(cfg, "unlabeled")
    assert summary.computed == 0 and summary.skipped == summary.pairs
    snapshot = store_snapshot(Path(cfg.paths.priors))
    assert snapshot == reference_store(generate_workspace, tmp_path / "reference")
