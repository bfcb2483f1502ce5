"""The offline stages in one process: prepare -> split -> priors, as ``dvc repro``'s first
three stages run them, for tests, benchmarks and notebooks that need a ready workspace."""

from __future__ import annotations

from pipeline.config import PipelineConfig
from pipeline.datasets.manifest import prior_splits, read_manifest, write_manifest
from pipeline.generate import generate
from pipeline.prepare import prepare_dataset
from pipeline.split import partition, write_partition


def run_offline_stages(cfg: PipelineConfig) -> None:
    """Manifest, partition and the priors of every split in ``priors.splits``."""
    prepared = prepare_dataset(cfg)
    write_manifest(prepared.samples, cfg.paths.samples, prepared.image_root)
    write_partition(partition(read_manifest(cfg.paths.samples), cfg.split), cfg.paths.partition)
    for split in prior_splits(cfg):
        generate(cfg, split)
