"""The prepare stage: build ``data.dataset``'s pairs, the sample manifest's content."""

from __future__ import annotations

from collections.abc import Callable

from pipeline.config import PipelineConfig
from pipeline.datasets.manifest import PreparedDataset


def prepare_dataset(
    cfg: PipelineConfig, progress: Callable[[], None] | None = None
) -> PreparedDataset:
    """Build ``data.dataset``'s pairs (synthetic generates its images; the refer datasets
    read annotations and check images); ``progress()`` is called once per image."""
    if cfg.data.dataset == "synthetic":
        from pipeline.datasets.synthetic import build_synthetic

        return build_synthetic(cfg.data.synthetic, progress=progress)
    from pipeline.datasets.refcoco import build_refcoco

    return build_refcoco(cfg.data, progress=progress)
