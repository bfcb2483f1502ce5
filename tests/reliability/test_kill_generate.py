"""SIGKILL ``l2l-priors generate`` at random moments, rerun it, and get exactly the store of a
run that was never interrupted: same keys, identical arrays and cues, no duplicate entries,
no temp files or locks left behind."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from fault_injection import (
    kill_after,
    leftovers,
    load_cfg,
    priors_cli,
    priors_variant,
    start,
    store_snapshot,
)

from pipeline.datasets.manifest import read_pairs
from pipeline.generate import generate
from pipeline.store.layout import list_parts, part_index_path


def _timed_reference(workspace: Path, folder: Path) -> tuple[dict, float, float]:
    """An uninterrupted CLI run: its store snapshot, when it started writing the store
    (seconds after launch) and how long it took."""
    params = priors_variant(workspace, folder)
    priors = Path(load_cfg(params).paths.priors)
    proc = start(priors_cli("generate", "--params", str(params)), folder / "log.txt")
    launched, first_write = time.monotonic(), None
    while proc.poll() is None:
        if first_write is None and priors.exists():
            first_write = time.monotonic() - launched
        time.sleep(0.005)
    duration = time.monotonic() - launched
    assert proc.returncode == 0, (folder / "log.txt").read_text()[-3000:]
    return store_snapshot(priors), first_write or 0.0, duration


def kill_and_rerun(workspace: Path, tmp_path: Path, kills: int, seed: int) -> list[str]:
    """``kills`` trials, each on a fresh store: the CLI SIGKILLed after a random delay, then
    generate rerun to completion and compared with the uninterrupted run. Delays are drawn
    from a seeded RNG, one per equal slice of the reference run's duration around its
    writing (stratified, so kills spread over the whole run). Returns a line per trial
    saying where the kill landed."""
    reference, first_write, duration = _timed_reference(workspace, tmp_path / "reference")
    total = read_pairs(load_cfg(workspace).paths, "unlabeled").num_rows
    assert len(reference["pairs"]) == total
    # Delays count from the moment the run starts writing the store; a fifth of the window
    # lies before it (the teacher's start, the store scan), counted from launch instead.
    before, writing = 0.25 * first_write, duration - first_write
    edges = np.linspace(-before, writing, kills + 1)
    delays = np.random.default_rng(seed).uniform(edges[:-1], edges[1:])
    landings = []
    for trial, delay in enumerate(delays):
        folder = tmp_path / f"trial{trial}"
        params = priors_variant(workspace, folder)
        cfg = load_cfg(params)
        priors = Path(cfg.paths.priors)
        argv = priors_cli("generate", "--params", str(params))
        if delay < 0:
            killed = kill_after(argv, first_write + delay, folder / "log.txt")
        else:
            killed = kill_after(argv, delay, folder / "log.txt", anchor=priors)
        indexed = sum(
            pq.read_metadata(part_index_path(priors, p)).num_rows for p in list_parts(priors)
        )
        left = leftovers(priors) if priors.exists() else []
        summary = generate(cfg, "unlabeled")  # the rerun, to completion
        assert summary.skipped == indexed and summary.computed == total - indexed
        landings.append(
            f"kill {trial} {delay:+.2f}s from the first write: "
            + (f"{indexed}/{total} pairs indexed, left {left}" if killed else "run had finished")
        )
        got = store_snapshot(priors)
        assert got["entries"] == reference["entries"], landings[-1]  # no duplicates, same keys
        assert got["pairs"] == reference["pairs"], landings[-1]
        assert got["cues"] == reference["cues"], landings[-1]
        assert leftovers(priors) == [], landings[-1]
    print(
        "\n".join(["", f"reference: {duration:.2f}s, writing from {first_write:.2f}s", *landings])
    )
    return landings


@pytest.mark.slow
def test_three_random_kills_then_reruns_equal_an_uninterrupted_run(generate_workspace, tmp_path):
    landings = kill_and_rerun(generate_workspace, tmp_path, kills=3, seed=13)
    assert len(landings) == 3


@pytest.mark.long
def test_twenty_random_kills_then_reruns_equal_an_uninterrupted_run(generate_workspace, tmp_path):
    landings = kill_and_rerun(generate_workspace, tmp_path, kills=20, seed=2013)
    # Most kills land mid-run: the window spans the writing.
    assert sum("pairs indexed" in line for line in landings) >= 10
