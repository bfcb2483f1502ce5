"""`l2l-priors import-priors`: PNG / NPY maps by sample id into the store, square frame."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from toy_priors import PAIRS, S, block, to_image, write_toy_dataset
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.config import load_pipeline_config
from pipeline.contract import PriorStatus, resize_prob, teacher_hash
from pipeline.importer import as_probability, import_priors, imported_config, match_files
from pipeline.store.reader import PriorStore


def stored_priors(params) -> dict[str, tuple[np.ndarray, int]]:
    """sample_id -> (prob, status) of the imported priors in the store."""
    cfg = imported_config(load_pipeline_config(params))
    store = PriorStore.open(cfg.paths.priors, teacher_hash=teacher_hash(cfg.priors))
    found = {}
    for sample_id in PAIRS:
        try:
            prob, status = store.get(store.lookup_sample([sample_id]))
        except KeyError:
            continue
        found[sample_id] = (prob[0], int(status[0]))
    return found


@pytest.fixture
def maps(tmp_path):
    """The toy dataset and a folder of maps: ".../1/1" flat PNG at the original size,
    ".../1/2" nested float NPY at half of it, ".../2/3" flat uint8 NPY, ".../2/4" an
    unreadable PNG, ".../3/5" no file."""
    params = write_toy_dataset(tmp_path)
    folder = tmp_path / "maps"
    (folder / "toy" / "val" / "1").mkdir(parents=True)
    gt = {sid: to_image(grid) for sid, (_, _, grid) in PAIRS.items()}
    Image.fromarray(gt["toy/val/1/1"] * 255).save(folder / "toy__val__1__1.png")
    small = np.full((16, 24), 0.25, np.float32)  # (H / 2, W / 2)
    small[:2] = 0.75
    np.save(folder / "toy" / "val" / "1" / "2.npy", small)
    np.save(folder / "toy__val__2__3.npy", (gt["toy/val/2/3"] * 200).astype(np.uint8))
    (folder / "toy__val__2__4.png").write_bytes(b"not a png")
    return params, folder, small


def test_imports_png_and_npy_in_both_name_forms_into_the_square_frame(maps):
    params, folder, small = maps
    summary = import_priors(load_pipeline_config(params), folder, "val")
    assert summary.pairs == len(PAIRS) and summary.skipped == 0
    assert summary.imported == 3
    assert [sid for sid, _ in summary.unreadable] == ["toy/val/2/4"]
    assert summary.missing == ["toy/val/3/5"]

    stored = stored_priors(params)
    assert set(stored) == {"toy/val/1/1", "toy/val/1/2", "toy/val/2/3", "toy/val/2/4"}
    # A 32 x 48 map of grid rows 0:2 shrinks (area-averaged) back onto the 16 x 16 grid:
    # thresholded, exactly the rows; away from the edge, exactly 1 and 0.
    prob, status = stored["toy/val/1/1"]
    assert status == PriorStatus.OK and prob.shape == (S, S)
    np.testing.assert_array_equal(prob >= 0.5, block(0, 2, 0, 16).astype(bool))
    assert prob[0].min() == 1.0 and prob[4:].max() == 0.0
    prob, _ = stored["toy/val/1/2"]
    np.testing.assert_allclose(prob, resize_prob(small, (S, S)), atol=1e-3)  # float16 store
    assert prob[0, 0] == pytest.approx(0.75, abs=1e-3) and prob[-1, -1] == pytest.approx(0.25)
    prob, _ = stored["toy/val/2/3"]  # uint8 200 on a 2-cell-wide bar
    np.testing.assert_allclose(
        prob, resize_prob(to_image(PAIRS["toy/val/2/3"][2]) * 200 / 255, (S, S)), atol=1e-3
    )
    assert 0.5 < prob.max() <= 200 / 255 + 1e-3
    prob, status = stored["toy/val/2/4"]
    assert status == PriorStatus.UNREADABLE_IMPORT and not prob.any()


def test_rerun_skips_stored_pairs_and_imports_new_files(maps):
    params, folder, _ = maps
    cfg = load_pipeline_config(params)
    first = import_priors(cfg, folder, "val")
    np.save(folder / "toy__val__3__5.npy", np.zeros((4, 6), np.float32))
    second = import_priors(cfg, folder, "val")
    assert second.skipped == 4 and second.imported == 1 and second.missing == []
    assert second.part == first.part
    assert set(stored_priors(params)) == set(PAIRS)
    third = import_priors(cfg, folder, "val")
    assert third.skipped == len(PAIRS) and third.imported == 0 and third.part is None


def test_imported_priors_are_keyed_by_the_imported_teacher(maps):
    params, folder, _ = maps
    cfg = load_pipeline_config(params)
    assert cfg.priors.teacher == "simulated"
    summary = import_priors(cfg, folder, "val")
    assert summary.teacher_hash == teacher_hash(imported_config(cfg).priors)
    assert summary.teacher_hash != teacher_hash(cfg.priors)


@pytest.mark.parametrize(
    "arr, message",
    [
        (np.array([[0.5, np.nan]]), "NaN"),
        (np.array([[0.5, 1.5]]), "expected [0, 1]"),
        (np.zeros((2, 2, 3)), "2-D"),
        (np.zeros((2, 2), np.int32), "dtype int32"),
    ],
)
def test_bad_map_contents_are_refused(arr, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        as_probability(arr)


def test_map_values_and_shapes():
    np.testing.assert_allclose(as_probability(np.array([[0, 255]], np.uint8)), [[0, 1]])
    assert as_probability(np.zeros((1, 3, 4), np.float16)).shape == (3, 4)
    np.testing.assert_array_equal(as_probability(np.eye(2, dtype=bool)), np.eye(2))


def test_colour_png_is_unreadable_but_grey_rgb_is_accepted(tmp_path):
    from pipeline.importer import read_prob_map

    grey = np.full((4, 4, 3), 51, np.uint8)
    Image.fromarray(grey).save(tmp_path / "grey.png")
    np.testing.assert_allclose(read_prob_map(tmp_path / "grey.png"), 0.2)
    grey[0, 0] = (255, 0, 0)
    Image.fromarray(grey).save(tmp_path / "colour.png")
    with pytest.raises(ValueError, match="colour PNG"):
        read_prob_map(tmp_path / "colour.png")


def test_two_files_for_one_pair_is_an_error(tmp_path):
    flat, nested = tmp_path / "a__b.png", tmp_path / "a" / "b.npy"
    with pytest.raises(ValueError, match="several map files"):
        match_files({"a__b": [flat], "a/b": [nested]}, ["a/b"])
    assert match_files({"a/b": [nested]}, ["a/b", "a/c"]) == [nested, None]


def test_cli_reports_missing_and_says_how_to_train(maps):
    params, folder, _ = maps
    out = CliRunner().invoke(
        app, ["import-priors", str(folder), "--split", "val", "--params", str(params)]
    )
    assert out.exit_code == 0, out.output
    assert "toy/val/3/5" in out.output and "priors.teacher: imported" in out.output
    missing_dir = CliRunner().invoke(
        app, ["import-priors", str(folder / "nope"), "--split", "val", "--params", str(params)]
    )
    assert missing_dir.exit_code == 1 and "nope" in missing_dir.output
