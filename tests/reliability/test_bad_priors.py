"""Priors with NaN/inf values (from a teacher, from an import, from damaged bytes) and a store
part with a corrupted shard or a deleted index.

A non-finite prior is never stored as OK and the trainer never reads one; a damaged part is
named by the reader and ``l2l-priors verify``, and a ``generate`` rerun recomputes what it
lost, giving the store an uninterrupted run would have.
"""

import dataclasses
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from fault_injection import build_generate_workspace, run_cli

from pipeline.config import load_pipeline_config
from pipeline.contract import NO_BOX, NO_POINT, PriorStatus, TeacherOutput, teacher_hash
from pipeline.datasets.manifest import read_pairs
from pipeline.generate import generate
from pipeline.importer import import_priors
from pipeline.store.layout import part_index_path, part_zarr_path
from pipeline.store.reader import PriorStore
from pipeline.teachers import build_teacher

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """A prepared and split small synthetic dataset (params.yaml in the returned folder)."""
    return build_generate_workspace(tmp_path_factory.mktemp("priors"), train_images=12).parent


def config(dataset: Path, priors: Path):
    cfg = load_pipeline_config(dataset / "params.yaml")
    return dataclasses.replace(cfg, paths=dataclasses.replace(cfg.paths, priors=str(priors)))


def everything(cfg) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(sample ids, prob, status) of every unlabelled pair in the store."""
    store = PriorStore.open(cfg.paths.priors, teacher_hash=teacher_hash(cfg.priors))
    ids = read_pairs(cfg.paths, "unlabeled")["sample_id"].to_pylist()
    prob, status = store.get(store.lookup_sample(ids))
    return ids, prob, status


class NonFiniteTeacher:
    """The simulated teacher, its priors turned into NaN ones, inf ones (with an inf box) and
    NaN ones under the NON_FINITE status, in turn."""

    def __init__(self, cfg):
        self.inner = build_teacher(cfg)

    def predict(self, pairs, image_root):
        outputs = []
        for i, output in enumerate(self.inner.predict(pairs, image_root)):
            if output.prob is not None:
                prob = output.prob.copy()
                prob[0, 0] = (np.nan, np.inf, np.nan)[i % 3]
                output = dataclasses.replace(output, prob=prob)
                if i % 3 == 1:
                    output = dataclasses.replace(output, box=np.array([1, 2, np.inf, 4], "f4"))
                if i % 3 == 2:
                    output = TeacherOutput(prob, NO_BOX, NO_POINT, PriorStatus.NON_FINITE)
            outputs.append(output)
        return outputs


def test_non_finite_teacher_priors_are_stored_as_non_finite_and_the_run_goes_on(dataset, tmp_path):
    cfg = config(dataset, tmp_path / "priors")
    summary = generate(cfg, "unlabeled", teacher=NonFiniteTeacher(cfg))
    ids, prob, status = everything(cfg)
    assert summary.computed == len(ids)
    assert np.isfinite(prob).all() and not prob.any()
    assert set(status.tolist()) <= {PriorStatus.NON_FINITE, PriorStatus.NO_GROUNDING}
    assert summary.status_counts["non_finite"] == (status == PriorStatus.NON_FINITE).sum() > 0
    assert summary.examples["non_finite"]
    store = PriorStore.open(cfg.paths.priors, teacher_hash=teacher_hash(cfg.priors))
    box, _ = store.read_cues(store.lookup_sample(ids))
    assert not np.isinf(box).any()


def test_imported_nan_maps_get_a_failure_status(dataset, tmp_path):
    cfg = config(dataset, tmp_path / "priors")
    ids = read_pairs(cfg.paths, "unlabeled")["sample_id"].to_pylist()
    maps = tmp_path / "maps"
    maps.mkdir()
    for i, sample_id in enumerate(ids):
        values = np.full((8, 8), 0.5, np.float32)
        if i % 2:
            values[3, 3] = np.nan if i % 4 == 1 else np.inf
        np.save(maps / f"{sample_id.replace('/', '__')}.npy", values)
    summary = import_priors(cfg, maps, "unlabeled")
    assert len(summary.unreadable) == len(ids) // 2
    assert all("NaN or infinite" in why for _, why in summary.unreadable)
    imported = dataclasses.replace(cfg.priors, teacher="imported")
    store = PriorStore.open(cfg.paths.priors, teacher_hash=teacher_hash(imported))
    prob, status = store.get(store.lookup_sample(ids))
    assert np.isfinite(prob).all()
    assert [int(s) for s in status] == [
        PriorStatus.UNREADABLE_IMPORT if i % 2 else PriorStatus.OK for i in range(len(ids))
    ]


def test_trainer_never_reads_a_non_finite_or_failed_prior(dataset, tmp_path, caplog):
    """Rows the writer refused can still come from damaged bytes: written here past it."""
    import zarr

    from l2l_train.pairs import PairSource

    cfg = config(dataset, tmp_path / "priors")
    generate(cfg, "unlabeled")
    rows = read_pairs(cfg.paths, "unlabeled")
    store = PriorStore.open(cfg.paths.priors, teacher_hash=teacher_hash(cfg.priors))
    source = PairSource(rows, tmp_path, image_size=16, tokenizer=None, store=store)
    ok = [i for i in range(len(source)) if source.prior(i)[1]]
    failed = [i for i in range(len(source)) if i not in ok]
    assert len(ok) > 2
    for i in failed:
        assert not source.prior(i)[0].any()

    damaged = ok[0]
    arr = zarr.open_array(part_zarr_path(cfg.paths.priors, 0) / "prob", mode="r+")
    index = pq.read_table(part_index_path(cfg.paths.priors, 0)).to_pylist()
    row = next(e["row"] for e in index if e["key"] == source.prior_key[damaged])
    values = arr[row]
    values[5, 5] = np.nan
    arr[row] = values
    reopened = PriorStore.open(cfg.paths.priors, teacher_hash=teacher_hash(cfg.priors))
    source = PairSource(rows, tmp_path, image_size=16, tokenizer=None, store=reopened)
    prior, present = source.prior(damaged)
    assert not present and not prior.any()
    assert source.sample_id[damaged] in caplog.text and "NaN/inf" in caplog.text
    assert source.prior(ok[1])[1]


# ----------------------------------------------------------------------------- store damage


def test_corrupted_shard_is_named_and_recomputed_by_generate(dataset, tmp_path):
    cfg = config(dataset, tmp_path / "priors")
    reference = config(dataset, tmp_path / "reference")
    generate(reference, "unlabeled")
    generate(cfg, "unlabeled")
    params = tmp_path / "params.yaml"
    raw = yaml.safe_load((dataset / "params.yaml").read_text())
    raw["paths"]["priors"] = cfg.paths.priors
    params.write_text(yaml.safe_dump(raw))

    shard = next(
        p
        for p in (part_zarr_path(cfg.paths.priors, 0) / "prob" / "c" / "1").rglob("*")
        if p.is_file()
    )
    data = bytearray(shard.read_bytes())
    data[len(data) // 3 : len(data) // 3 + 64] = b"\xa5" * 64  # bytes overwritten
    shard.write_bytes(bytes(data))

    store = PriorStore.open(cfg.paths.priors, teacher_hash=teacher_hash(cfg.priors))
    bad = store.verify().bad_rows["part-00000"]
    assert bad and all(8 <= r < 16 for r in bad)  # rows of the damaged shard only
    # The trainer's read (no verify) names the part, the rows and what to run.
    ids = read_pairs(cfg.paths, "unlabeled")["sample_id"].to_pylist()
    with pytest.raises(ValueError) as raised:
        store.get(store.lookup_sample(ids))
    assert f"part-00000 has {len(bad)} unreadable rows, first {bad[:5]}" in str(raised.value)
    assert "l2l-priors verify" in str(raised.value)
    result = run_cli("pipeline.cli", "verify", "--params", str(params))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"part-00000: {len(bad)} bad rows, first {bad[:5]}" in result.stderr

    assert generate(cfg, "unlabeled").computed == len(bad)
    assert run_cli("pipeline.cli", "verify", "--params", str(params)).returncode == 0
    _, prob, status = everything(cfg)
    _, want_prob, want_status = everything(reference)
    np.testing.assert_array_equal(status, want_status)
    np.testing.assert_array_equal(prob, want_prob)


def test_deleted_index_is_named_and_its_pairs_recomputed(dataset, tmp_path, caplog):
    cfg = config(dataset, tmp_path / "priors")
    first = generate(cfg, "unlabeled")
    part_index_path(cfg.paths.priors, 0).unlink()
    store = PriorStore.open(cfg.paths.priors)
    assert "part-00000" in store.skipped and "no index file" in store.skipped["part-00000"]
    assert "part-00000" in caplog.text and len(store) == 0

    params = tmp_path / "params.yaml"
    raw = yaml.safe_load((dataset / "params.yaml").read_text())
    raw["paths"]["priors"] = cfg.paths.priors
    params.write_text(yaml.safe_dump(raw))
    result = run_cli("pipeline.cli", "verify", "--params", str(params))
    assert result.returncode == 1 and "part-00000: unusable (no index file" in result.stderr

    again = generate(cfg, "unlabeled")
    assert again.computed == first.computed
    ids, prob, _ = everything(cfg)
    assert len(ids) == first.computed and np.isfinite(prob).all()
