"""`generate`: resumable after SIGKILL, sharded without overlap, incremental per teacher config."""

import dataclasses
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from pipeline.config import load_pipeline_config
from pipeline.contract import teacher_hash
from pipeline.datasets.manifest import read_pairs, write_manifest
from pipeline.datasets.synthetic import build_synthetic
from pipeline.generate import Shard, generate
from pipeline.split import partition, write_partition
from pipeline.store.layout import part_index_path
from pipeline.store.reader import PriorStore


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """A prepared and split small synthetic dataset; tests add their own prior folders."""
    root = tmp_path_factory.mktemp("gen")
    params = {
        "data": {
            "synthetic": {
                "train_images": 24,
                "val_images": 2,
                "test_images": 2,
                "dir": str(root / "synthetic"),
            }
        },
        "split": {"labeled_ratio": 0.25},
        "priors": {"store": {"shard_rows": 8}, "mllm": {"batch_size": 4}},
        "paths": {"manifests": str(root / "manifests")},
    }
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    cfg = load_pipeline_config(root / "params.yaml")
    prepared = build_synthetic(cfg.data.synthetic)
    write_manifest(prepared.samples, cfg.paths.samples, prepared.image_root)
    from pipeline.datasets.manifest import read_manifest

    write_partition(partition(read_manifest(cfg.paths.samples), cfg.split), cfg.paths.partition)
    return root


def config_for(dataset: Path, priors_dir: Path, **priors):
    cfg = load_pipeline_config(dataset / "params.yaml")
    cfg = dataclasses.replace(cfg, paths=dataclasses.replace(cfg.paths, priors=str(priors_dir)))
    if priors:
        cfg = dataclasses.replace(cfg, priors=dataclasses.replace(cfg.priors, **priors))
    return cfg


def stored(cfg) -> dict[str, tuple[str, np.ndarray]]:
    """sample_id -> (key, prob) of everything this teacher config has in the store."""
    store = PriorStore.open(cfg.paths.priors, teacher_hash=teacher_hash(cfg.priors))
    ids = sorted(
        {
            row["sample_id"]
            for info in store.parts.values()
            for row in pq.read_table(part_index_path(cfg.paths.priors, info.number)).to_pylist()
        }
    )
    keys = store.lookup_sample(ids)
    prob, _ = store.get(keys)
    return {i: (k, p) for i, k, p in zip(ids, keys, prob, strict=True)}


def index_rows(priors_dir: Path) -> list[dict]:
    rows = []
    for path in sorted(priors_dir.glob("part-*.index.parquet")):
        rows += pq.read_table(path).to_pylist()
    return rows


@pytest.mark.slow
def test_sigkill_then_rerun_equals_uninterrupted_run(dataset, tmp_path):
    reference = config_for(dataset, tmp_path / "reference")
    generate(reference, "unlabeled")

    killed = config_for(dataset, tmp_path / "killed")
    params = yaml.safe_load((dataset / "params.yaml").read_text())
    params["paths"]["priors"] = killed.paths.priors
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    proc = subprocess.Popen(
        [
            Path(sys.executable).parent / "l2l-priors",
            "generate",
            "--params",
            str(tmp_path / "params.yaml"),
            "--split",
            "unlabeled",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    index = part_index_path(killed.paths.priors, 0)
    deadline = time.monotonic() + 60
    while not index.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, proc.stderr.read().decode()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    interrupted = len(index_rows(Path(killed.paths.priors)))
    total = read_pairs(killed.paths, "unlabeled").num_rows
    assert 0 < interrupted < total, "the kill must land part-way through"

    summary = generate(killed, "unlabeled")
    assert summary.skipped == interrupted and summary.computed == total - interrupted

    a, b = stored(reference), stored(killed)
    assert a.keys() == b.keys()
    for sample_id, (key, prob) in a.items():
        assert b[sample_id][0] == key
        np.testing.assert_array_equal(b[sample_id][1], prob)
    rows = index_rows(Path(killed.paths.priors))
    assert len(rows) == total  # no duplicate rows
    assert len({r["sample_id"] for r in rows}) == total


def test_two_shards_are_disjoint_and_cover_every_pair(dataset, tmp_path):
    cfg = config_for(dataset, tmp_path / "priors")
    first = generate(cfg, "unlabeled", shard=Shard(0, 2))
    second = generate(cfg, "unlabeled", shard=Shard(1, 2))
    assert (first.part, second.part) == (0, 1)
    parts = [pq.read_table(part_index_path(cfg.paths.priors, p)).to_pylist() for p in (0, 1)]
    ids = [{r["sample_id"] for r in rows} for rows in parts]
    assert ids[0] and ids[1] and not ids[0] & ids[1]
    pairs = read_pairs(cfg.paths, "unlabeled").to_pylist()
    assert ids[0] | ids[1] == {p["sample_id"] for p in pairs}
    image_of = {p["sample_id"]: p["image_id"] for p in pairs}
    images = [{image_of[i] for i in s} for s in ids]
    assert not images[0] & images[1]  # one image's expressions stay with one worker


def test_new_teacher_config_computes_new_keys_and_runtime_settings_do_not(dataset, tmp_path):
    cfg = config_for(dataset, tmp_path / "priors")
    first = generate(cfg, "unlabeled", limit=10)
    assert first.computed == 10
    bigger_batch = dataclasses.replace(cfg.priors.mllm, batch_size=32)
    assert (
        generate(
            config_for(dataset, tmp_path / "priors", mllm=bigger_batch), "unlabeled", limit=10
        ).computed
        == 0
    )
    reseeded = config_for(
        dataset, tmp_path / "priors", simulated=dataclasses.replace(cfg.priors.simulated, seed=1)
    )
    second = generate(reseeded, "unlabeled", limit=10)
    assert second.computed == 10 and second.part != first.part
    old, new = stored(cfg), stored(reseeded)
    assert {k for k, _ in old.values()}.isdisjoint({k for k, _ in new.values()})


def test_damaged_rows_are_recomputed(dataset, tmp_path):
    cfg = config_for(dataset, tmp_path / "priors")
    total = generate(cfg, "unlabeled").computed
    shard_file = next((Path(cfg.paths.priors) / "part-00000.zarr" / "prob" / "c").rglob("*"))
    while shard_file.is_dir():
        shard_file = next(shard_file.iterdir())
    shard_file.write_bytes(b"\0" * 64)
    rerun = generate(cfg, "unlabeled")
    assert 0 < rerun.computed < total
    store = PriorStore.open(cfg.paths.priors, verify=True)
    assert len(stored(cfg)) == total
    assert store.verify_report.rows_checked >= total


def test_bad_split_and_shard_are_named(dataset, tmp_path):
    cfg = config_for(dataset, tmp_path / "priors")
    with pytest.raises(ValueError, match="no pairs in split 'vla'"):
        generate(cfg, "vla")
    with pytest.raises(ValueError, match="expected 'i/K'"):
        Shard.parse("2")
    with pytest.raises(ValueError, match="0 <= i < K"):
        Shard.parse("2/2")


def test_a_missing_image_does_not_stop_generation(dataset, tmp_path):
    """Its pairs get keys (hex, so any shard can own them) and rows; the others are computed."""
    import shutil

    from pipeline.datasets.manifest import image_root

    cfg = config_for(dataset, tmp_path / "priors")
    pairs = read_pairs(cfg.paths, "unlabeled").to_pylist()
    root = image_root(cfg.paths.samples)
    moved = tmp_path / "moved.png"
    shutil.move(root / pairs[0]["image_path"], moved)
    try:
        summaries = [generate(cfg, "unlabeled", shard=Shard(i, 2)) for i in range(2)]
    finally:
        shutil.move(moved, root / pairs[0]["image_path"])
    assert sum(s.computed for s in summaries) == len(pairs)
    assert sum(n for s in summaries for n in s.status_counts.values()) == len(pairs)
    assert set(stored(cfg)) == {p["sample_id"] for p in pairs}


def test_teacher_dtype_is_part_of_the_identity_and_batch_size_is_not():
    """bf16 and fp32 give different masks: their priors must not share keys."""
    from pipeline.config import PriorsConfig

    base = PriorsConfig(teacher="qwen-sam2")
    as_bf16 = dataclasses.replace(base, mllm=dataclasses.replace(base.mllm, dtype="bfloat16"))
    sam2_fp32 = dataclasses.replace(base, sam2=dataclasses.replace(base.sam2, dtype="float32"))
    batched = dataclasses.replace(base, mllm=dataclasses.replace(base.mllm, batch_size=64))
    hashes = {teacher_hash(c) for c in (base, as_bf16, sam2_fp32)}
    assert len(hashes) == 3
    assert teacher_hash(batched) == teacher_hash(base)
