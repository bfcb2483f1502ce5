"""`l2l-priors report` (prior IoU against ground truth) and `show` with a stored prior."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image
from toy_priors import PAIRS, SCALE, block, to_image, write_toy_dataset
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.config import load_pipeline_config
from pipeline.contract import (
    PriorStatus,
    pair_image_hashes,
    pair_keys,
    teacher_hash,
    teacher_identity,
)
from pipeline.datasets.manifest import image_root, read_manifest
from pipeline.report import prior_intersection_union, prior_quality, summarize
from pipeline.store.writer import PriorRows, PriorWriter
from pipeline.visualize import BOX_COLOUR, render_sample

OK, NO_GROUNDING, MISSING = PriorStatus.OK, PriorStatus.NO_GROUNDING, PriorStatus.MISSING


def soft(grid: np.ndarray) -> np.ndarray:
    """A soft prior of a grid mask: 0.9 inside, 0.1 outside."""
    return np.where(grid > 0, 0.9, 0.1).astype(np.float32)


# sample_id -> (stored prior on the 16 x 16 grid, status, box XYXY original pixels).
# Pair ".../1/1" is exact (IoU 1); ".../1/2" covers half of its ground truth (IoU 0.5);
# ".../2/3" has no grounding (counts IoU 0); ".../2/4" is an empty OK prior (IoU 0);
# ".../3/5" has no row (missing, left out).
STORED = {
    "toy/val/1/1": (soft(block(0, 2, 0, 16)), OK, [0, 0, 6, 4]),
    "toy/val/1/2": (soft(block(0, 1, 0, 16)), OK, [0, 0, 48, 2]),
    "toy/val/2/3": (np.zeros((16, 16), np.float32), NO_GROUNDING, [np.nan] * 4),
    "toy/val/2/4": (np.zeros((16, 16), np.float32), OK, [24, 0, 36, 32]),
}
# Ground-truth areas in original pixels: 192, 192, 192, 384.
EXPECTED_MEAN_IOU = (1 + 0.5 + 0 + 0) / 4
EXPECTED_OIOU = (192 + 96 + 0 + 0) / (192 + 192 + 192 + 384)


@pytest.fixture
def toy(tmp_path):
    """The toy dataset with the priors of ``STORED`` written for the default teacher."""
    params = write_toy_dataset(tmp_path)
    cfg = load_pipeline_config(params)
    rows = read_manifest(cfg.paths.samples).to_pylist()
    by_id = {r["sample_id"]: r for r in rows}
    ids = list(STORED)
    t_hash = teacher_hash(cfg.priors)
    with PriorWriter(
        cfg.paths.priors,
        0,
        size=cfg.priors.size,
        teacher_config=teacher_identity(cfg.priors),
        teacher_hash=t_hash,
        shard_rows=2,
    ) as writer:
        writer.write(
            PriorRows(
                keys=pair_keys(
                    [by_id[i] for i in ids],
                    pair_image_hashes([by_id[i] for i in ids], image_root(cfg.paths.samples)),
                    t_hash,
                ),
                sample_ids=ids,
                prob=np.stack([STORED[i][0] for i in ids]),
                box=np.array([STORED[i][2] for i in ids], np.float32),
                point=np.full((len(ids), 2), np.nan, np.float32),
                status=np.array([STORED[i][1] for i in ids], np.int8),
            )
        )
    return params


def test_intersection_union_in_the_original_frame():
    rows = to_image(block(0, 2, 0, 16))  # (32, 48): image rows 0:4
    assert rows.shape == (32, 48) and rows.sum() == 2 * 16 * SCALE[0] * SCALE[1]
    assert prior_intersection_union(soft(block(0, 2, 0, 16)), rows) == (192, 192)
    # Rows 2:6 against rows 0:4 (a factor-2 edge): 2 rows shared of 6.
    assert prior_intersection_union(soft(block(1, 3, 0, 16)), rows) == (96, 288)
    # Columns 0:3 against 0:6 (a factor-3 edge).
    cols = to_image(block(0, 16, 0, 2))
    assert prior_intersection_union(soft(block(0, 16, 0, 1)), cols) == (96, 192)
    assert prior_intersection_union(None, rows) == (0, 192)


def test_summarize_hand_computed():
    inter = np.array([24, 12, 0, 0, 5])
    union = np.array([24, 24, 24, 24, 10])  # the last pair is missing: left out
    status = np.array([OK, OK, NO_GROUNDING, OK, MISSING], np.int8)
    result = summarize(inter, union, status)
    assert result["pairs"] == 5 and result["evaluated"] == 4
    assert result["mean_iou"] == pytest.approx(0.375)
    assert result["oiou"] == pytest.approx(36 / 96)
    assert result["mean_iou_ok"] == pytest.approx(0.5)
    assert result["precision"]["0.5"] == 0.5 and result["precision"]["0.6"] == 0.25
    assert result["histogram"]["counts"] == [2, 0, 0, 0, 0, 1, 0, 0, 0, 1]
    assert result["histogram"]["edges"][0] == 0 and result["histogram"]["edges"][-1] == 1
    assert result["status_counts"] == {"ok": 3, "no_grounding": 1, "missing": 1}


def test_prior_quality_on_known_store(toy):
    result = prior_quality(load_pipeline_config(toy), "val")
    assert result["pairs"] == len(PAIRS) and result["evaluated"] == 4
    assert result["mean_iou"] == pytest.approx(EXPECTED_MEAN_IOU)
    assert result["oiou"] == pytest.approx(EXPECTED_OIOU)
    assert result["status_counts"] == {"ok": 3, "no_grounding": 1, "missing": 1}
    assert result["histogram"]["counts"] == [2, 0, 0, 0, 0, 1, 0, 0, 0, 1]
    assert result["stored_rows"] == 4
    assert result["bytes_per_pair"] == pytest.approx(result["store_bytes"] / 4)


def test_report_command_writes_json_csv_png(toy, tmp_path):
    out = CliRunner().invoke(app, ["report", "--split", "val", "--params", str(toy)])
    assert out.exit_code == 0, out.output
    folder = tmp_path / "metrics" / "priors"
    report = json.loads((folder / "val.json").read_text())
    for key in ("mean_iou", "oiou", "pairs", "status_counts", "bytes_per_pair", "histogram"):
        assert key in report
    assert report["mean_iou"] == pytest.approx(EXPECTED_MEAN_IOU)
    with (folder / "val_iou_hist.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [r["bin"] for r in rows][:2] == ["0.0-0.1", "0.1-0.2"]
    assert [int(r["count"]) for r in rows] == report["histogram"]["counts"]
    with Image.open(folder / "val_iou_hist.png") as png:
        assert png.format == "PNG" and png.width > 100


def test_report_without_priors_fails_clearly(tmp_path):
    params = write_toy_dataset(tmp_path)
    out = CliRunner().invoke(app, ["report", "--split", "val", "--params", str(params)])
    assert out.exit_code == 1 and "l2l-priors generate" in out.output


def test_show_adds_heat_map_and_box_only_with_a_prior(toy, tmp_path):
    cfg = load_pipeline_config(toy)
    with_prior, without = tmp_path / "with.png", tmp_path / "without.png"
    render_sample(cfg, "toy/val/1/1", with_prior)
    render_sample(cfg, "toy/val/3/5", without)
    scale = 384 // 48
    with Image.open(with_prior) as a, Image.open(without) as b:
        assert (a.width, b.width) == (3 * 48 * scale, 2 * 48 * scale)
        picture = np.asarray(a.convert("RGB"))
    heat = picture[: 32 * scale, 2 * 48 * scale :]
    # The box [0, 0, 6, 4] (original pixels) is outlined at x = 0 in the third panel.
    assert tuple(heat[10, 0]) == BOX_COLOUR
    # Inside the prior (p = 0.9) the heat tint is yellow-ish; far outside (p = 0.1) it is faint.
    inside, outside = heat[2 * scale, 3 * scale].astype(int), heat[200, 300].astype(int)
    base = np.asarray(Image.open(tmp_path / "images" / "a.png").convert("RGB"))
    assert inside[0] >= 200 and inside[2] < 60
    assert np.abs(outside - base[200 // scale, 300 // scale]).max() < 0.1 * 255
