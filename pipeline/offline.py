"""The offline stages in one process: prepare -> split -> priors, as ``dvc repro``'s first
three stages run them, for tests, benchmarks and notebooks that need a ready workspace."""

from __future__ import annotations

from pipeline.config import PipelineConfig
from pipeline.datasets.manifest import PreparedDataset, read_manifest, write_manifest


def prepare_dataset(cfg: PipelineConfig, progress=None) -> PreparedDataset:
    """Build ``data.dataset``'s pairs (synthetic generates its images; the refer datasets
    read annotations and check images); ``progress()`` is called once per image."""
    if cfg.data.dataset == "synthetic":
        from pipeline.datasets.synthetic import build_synthetic

        return build_synthetic(cfg.data.synthetic, progress=progress)
    from pipeline.datasets.refcoco import build_refcoco

    return build_refcoco(cfg.data, progress=progress)


def run_offline_stages(cfg: PipelineConfig) -> None:
    """Manifest, partition and the priors of every split in ``priors.splits``."""
    from pipeline.generate import generate
    from pipeline.split import partition, write_partition

    prepared = prepare_dataset(cfg)
    write_manifest(prepared.samples, cfg.paths.samples, prepared.image_root)
    write_partition(partition(read_manifest(cfg.paths.samples), cfg.split), cfg.paths.partition)
    for split in cfg.priors.splits:
        generate(cfg, split)
