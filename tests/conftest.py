"""Shared fixtures and the test tiers.

Tests mirror the packages: ``tests/test_pipeline`` (the offline stages, the store, the
teachers, the datasets), ``tests/test_l2l_train`` (the trainer), ``tests/benchmarks`` (smoke
runs of the benchmark scripts), ``tests/reliability`` (faults injected into whole runs:
SIGKILL, two writers, torchrun workers, full or read-only disks), and at the top the checks
of ``dvc.yaml`` against the code. Helpers shared by several files live beside this one (``trainer_workspace.py``, ``tiny_models.py``, ...;
``pyproject.toml`` puts this folder on ``sys.path``, which is why the mirrored folders are
named ``test_pipeline`` and ``test_l2l_train``: a folder named ``pipeline`` here would shadow
the package as a namespace package).

Tiers: ``slow`` tests take more than a few seconds and still run in CI; ``gpu`` tests
(``tests/gpu``) need CUDA and are skipped without it: run them with ``pytest -m gpu`` on a
machine that has one. ``long`` tests (the 20-kill loops) are deselected by default
(``addopts``); run them with ``pytest -m long``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from fault_injection import build_generate_workspace
from trainer_workspace import build_workspace


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def trainer_workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """params.yaml of a tiny trainer workspace (synthetic data, priors, a one-layer BERT),
    shared read-only: tests write models and metrics under their own folders
    (:func:`trainer_workspace.variant`)."""
    return build_workspace(tmp_path_factory.mktemp("workspace"))


@pytest.fixture(scope="session")
def generate_workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """params.yaml of a prepared and split synthetic dataset for ``generate`` runs (no priors),
    shared read-only: tests put their priors in their own folder
    (:func:`fault_injection.priors_variant`)."""
    return build_generate_workspace(tmp_path_factory.mktemp("generate"))
