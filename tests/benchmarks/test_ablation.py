"""benchmarks/ablation.py: every row's params are valid trainer params with the row's switches."""

from __future__ import annotations

import copy
import json
import os
import shutil
import statistics
from dataclasses import replace
from pathlib import Path

import pyarrow.compute as pc
import pytest
import yaml
from benchmark_scripts import BENCHMARKS, import_benchmark

from l2l_train.config import load_trainer_params


@pytest.fixture(scope="module")
def ablation():
    return import_benchmark("ablation")


ROW_NAMES = ["supervised", "fixmatch", "spm", "spm_sesm", "full", "tuned_fusion", "catm"]
ROW_NAMES += ["agreement_filter", "fusion_a03", "gating_fixed", "xattn_none"]
ROW_NAMES += ["no_cons", "sesm_rple", "spm_no_conflicts", "fixed_no_conflicts"]
ROW_NAMES += ["spm_a40_q40_u60", "spm_q40", "no_dice", "fusion_a00", "actor_delay"]
ROW_NAMES += ["no_warmup", "unsup_weighted", "lambda_u2", "no_strong_views", "no_band"]
ROW_NAMES += ["shown_q_hat", "one_strong_op", "warmup_300", "no_count_block", "count_stage_1"]


def row_params(ablation, tmp_path, name):
    """Row ``name``'s params at seed 23, loaded; the row, its data folder and run folder."""
    data = tmp_path / "data"
    (data / "manifests").mkdir(parents=True)
    row = next(r for r in ablation.ROWS if r.name == name)
    budget = ablation.Budget(
        epochs=2, steps_per_epoch=5, image_size=64, batch_size_x=8, batch_size_u=4, lr=2e-3
    )
    setup = ablation.Setup(
        work=tmp_path / "work",
        data=data,
        budget=budget,
        base=yaml.safe_load((BENCHMARKS.parent / "params.yaml").read_text()),
        teacher_eval=False,
    )
    folder = tmp_path / "work" / name / "seed23"
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(ablation.row_params(setup, row, 23, folder)))
    return load_trainer_params(path), row, data, folder


@pytest.mark.parametrize("name", ROW_NAMES)
def test_row_params_load_with_the_rows_method_budget_and_seed(ablation, tmp_path, name):
    params, row, data, folder = row_params(ablation, tmp_path, name)
    train = params.train
    assert train.method == row.train["method"] and train.seed == 23
    assert (train.epochs, train.steps_per_epoch, train.image_size) == (2, 5, 64)
    assert (train.batch_size_x, train.batch_size_u, train.lr) == (8, 4, 2e-3)
    assert params.model.sesm.enabled == row.sesm
    assert (train.spm, train.rple) == (row.train.get("spm", True), row.train.get("rple", True))
    assert train.ignore_conflicts == row.train.get("ignore_conflicts", False)
    assert params.eval.every_epochs == 1
    assert Path(params.paths.priors) == data / "priors"
    assert Path(params.paths.models) == folder / "models"
    # the 5 % rows read the data folder's partition through a folder of links
    assert (Path(params.paths.manifests) / "partition.parquet").readlink() == (
        data / "manifests" / "partition.parquet"
    )


def test_rows_of_the_other_tables_change_one_nested_key(ablation, tmp_path):
    base = load_trainer_params(BENCHMARKS.parent / "params.yaml")
    gating = row_params(ablation, tmp_path / "a", "gating_fixed")[0]
    assert gating.model.sesm.gating == "fixed" and gating.model.sesm.enabled
    assert gating.model.sesm.cross_attention_stages == base.model.sesm.cross_attention_stages
    assert (
        row_params(ablation, tmp_path / "b", "xattn_none")[0].model.sesm.cross_attention_stages
        == ()
    )
    agent = row_params(ablation, tmp_path / "c", "no_cons")[0].train.agent
    assert agent.lambda_cons == 0.0 and agent.lambda_sep == base.train.agent.lambda_sep
    fusion = row_params(ablation, tmp_path / "d", "fusion_a03")[0].train.fusion
    assert fusion.alpha == 0.3 and fusion.bA == base.train.fusion.bA
    spm = row_params(ablation, tmp_path / "e", "spm_a25_q25_u20")[0].train.fusion
    assert (spm.bA, spm.bq, spm.bu) == (0.25, 0.25, 0.20)
    assert (spm.b0, spm.alpha) == (base.train.fusion.b0, base.train.fusion.alpha)
    spm_q40, row = row_params(ablation, tmp_path / "f", "spm_q40")[:2]
    assert spm_q40.train.fusion.bq == 0.40 and spm_q40.train.fusion.bA == base.train.fusion.bA
    assert not row.sesm and not spm_q40.train.rple
    loss = row_params(ablation, tmp_path / "g", "no_dice")[0].train.loss
    assert loss.lambda_dice == 0.0 and loss.lambda_u == base.train.loss.lambda_u
    teacher_only = row_params(ablation, tmp_path / "h", "fusion_a00")[0].train
    assert teacher_only.method == "fixed_fusion" and teacher_only.fusion.alpha == 0.0
    delayed = row_params(ablation, tmp_path / "i", "actor_delay")[0].train
    assert delayed.agent.actor_delay == 150 and delayed.rple and delayed.method == "l2l"
    assert delayed.agent.lambda_cov == base.train.agent.lambda_cov
    # The default warms SPM up on the teacher's prior alone; no_warmup is the paper's L2L.
    assert base.train.spm_warmup_steps > 0
    paper = row_params(ablation, tmp_path / "j", "no_warmup")[0].train
    assert paper.spm_warmup_steps == 0 and paper.spm and paper.rple and paper.method == "l2l"
    longer = row_params(ablation, tmp_path / "k", "warmup_300")[0].train
    assert longer.spm_warmup_steps == 300 and longer.spm and longer.rple
    assert (longer.method, longer.fusion) == ("l2l", base.train.fusion)
    uncounted = row_params(ablation, tmp_path / "l", "no_count_block")[0]
    assert uncounted.model.count_stages == () and base.model.count_stages
    assert uncounted.model.context_stages == base.model.context_stages
    assert uncounted.train == row_params(ablation, tmp_path / "m", "full")[0].train
    finer = row_params(ablation, tmp_path / "n", "count_stage_1")[0].model
    assert finer.count_stages == (1,) and finer.sesm == base.model.sesm


def test_same_pairs_rows_train_every_pair_of_a_step_on_labels(ablation, tmp_path):
    params = row_params(ablation, tmp_path / "a", "supervised_same_pairs")[0]
    plain = row_params(ablation, tmp_path / "b", "supervised")[0]
    # the budget's 8 labelled + 4 unlabelled pairs, all labelled
    assert (params.train.batch_size_x, plain.train.batch_size_x) == (12, 8)
    assert params.train.method == plain.train.method == "supervised"
    rows = {r.name: r for r in ablation.ROWS}
    for name, reference in [
        ("supervised_same_pairs", "supervised"),
        ("fully_supervised_same_pairs", "fully_supervised"),
    ]:
        row, plain_row = rows[name], rows[reference]
        assert row.every_pair_labelled and not plain_row.every_pair_labelled
        assert (row.train, row.sesm, row.full_labels) == (
            plain_row.train,
            plain_row.sesm,
            plain_row.full_labels,
        )
        assert (name, reference) in ablation.PAIRED


def test_table6_rows_vary_spm_coefficients_around_full_and_pair_with_it(ablation):
    base = load_trainer_params(BENCHMARKS.parent / "params.yaml").train.fusion
    rows = ablation.selected_rows("table6")
    coefficients = [(r.train["fusion"]["bA"], r.train["fusion"]["bq"]) for r in rows]
    assert coefficients == [(0.25, 0.25), (0.40, 0.40), (0.40, 0.40), (0.40, 0.40)]
    assert [r.train["fusion"]["bu"] for r in rows] == [0.20, 0.20, 0.40, 0.60]
    # full is the paper's default setting, so it is the table's reference row
    assert (base.bA, base.bq, base.bu) == (0.40, 0.25, 0.20)
    assert all(r.sesm and r.train["spm"] and r.train["rple"] for r in rows)
    assert all(r.name in ablation.PAPER_VAL_OIOU for r in rows)
    assert {(r.name, "full") for r in rows} <= set(ablation.PAIRED)


def test_rows_select_by_name_and_group(ablation):
    assert [r.name for r in ablation.selected_rows("table7")] == [
        "no_sep",
        "no_cons",
        "no_cov",
        "no_stab",
    ]
    picked = [r.name for r in ablation.selected_rows("catm,table4,full")]
    assert picked == ["full", "catm", "gating_fixed", "gating_semantic", "gating_structural"]
    assert len(ablation.selected_rows("all")) == len(ablation.ROWS)
    assert [r.name for r in ablation.selected_rows("table3")][-1] == "fully_supervised"
    with pytest.raises(SystemExit, match="unknown"):
        ablation.selected_rows("table9")


# ----------------------------------------------------------------------------- label budgets


def linked_data(tmp_path: Path, workspace: Path) -> Path:
    """A data folder whose manifests/ and priors/ link to the shared workspace's (the budget
    partitions are written beside them, not into the workspace)."""
    data = tmp_path / "data"
    data.mkdir()
    for name in ("manifests", "priors"):
        (data / name).symlink_to(workspace.parent / name, target_is_directory=True)
    return data


def labelled_images(folder: Path) -> set[int]:
    from pipeline.datasets.manifest import read_manifest, read_partition

    manifest = read_manifest(folder / "samples.parquet")
    part = read_partition(folder / "partition.parquet")
    labelled = manifest.join(part, "sample_id").filter(pc.equal(pc.field("role"), "labeled"))
    return set(labelled["image_id"].to_pylist())


def test_partition_at_a_budget_is_the_pipelines_draw(ablation, trainer_workspace, tmp_path):
    from pipeline.config import SplitConfig
    from pipeline.contract import labeled_images
    from pipeline.datasets.manifest import read_manifest

    data = linked_data(tmp_path, trainer_workspace)
    manifest = read_manifest(data / "manifests" / "samples.parquet")
    train_ids = manifest.filter(pc.equal(manifest["split"], "train"))["image_id"].to_numpy()
    n_images = len(set(train_ids.tolist()))  # 16
    for labels in (0.1, 10, 50):
        folder = ablation.manifests_folder(data, labels, 22)
        expected = labeled_images(train_ids, SplitConfig(labeled_ratio=labels / 100, seed=22))
        assert labelled_images(folder) == set(expected.tolist())
        assert len(expected) == max(1, round(labels / 100 * n_images))
    counts = ablation.label_counts(ablation.manifests_folder(data, 0.1, 22))
    assert (counts["labeled_images"], counts["train_images"]) == (1, n_images)
    assert counts["labeled_pairs"] + counts["unlabeled_pairs"] == len(train_ids)
    # The workspace's own ratio (split.labeled_ratio 0.25) at the same seed: its own file.
    own = data / "manifests" / "partition.parquet"
    link = ablation.manifests_folder(data, 25, 22) / "partition.parquet"
    assert link.is_symlink() and link.resolve() == own.resolve()
    other_seed = ablation.manifests_folder(data, 25, 23) / "partition.parquet"
    assert not other_seed.is_symlink() and labelled_images(other_seed.parent) != labelled_images(
        own.parent
    )
    assert labelled_images(ablation.manifests_folder(data, 100)) == set(train_ids.tolist())


def test_budget_folders_asked_for_at_once_are_built_once(ablation, trainer_workspace, tmp_path):
    """Invocations side by side may ask for one budget's folder at the same moment: each gets
    the complete folder, built privately and renamed into place; a relative data path still
    gives links that resolve."""
    from concurrent.futures import ThreadPoolExecutor

    data = Path(os.path.relpath(linked_data(tmp_path, trainer_workspace)))
    with ThreadPoolExecutor(4) as pool:
        folders = list(pool.map(lambda _: ablation.manifests_folder(data, 10, 22), range(4)))
    assert len(set(folders)) == 1
    expected = labelled_images(ablation.manifests_folder(data.resolve(), 10, 22))
    assert labelled_images(folders[0]) == expected and len(expected) == 2
    assert (folders[0] / "samples.parquet").resolve().is_file()
    assert not [p for p in data.iterdir() if p.name.startswith(".")]  # no staging left


def roles_by_image(folder: Path) -> dict[str, set[int]]:
    from pipeline.datasets.manifest import read_manifest, read_partition

    joined = read_manifest(folder / "samples.parquet").join(
        read_partition(folder / "partition.parquet"), "sample_id", join_type="inner"
    )
    roles: dict[str, set[int]] = {}
    for row in joined.select(["image_id", "role"]).to_pylist():
        roles.setdefault(row["role"], set()).add(row["image_id"])
    return roles


def test_held_out_partition_keeps_the_labelled_images_and_the_100_row_holds_out_the_same(
    ablation, trainer_workspace, tmp_path
):
    """The workspace's partition labels 25 % of its 16 train images (4); --held-out 25 holds
    out 4 of the other 12, as split.holdout_ratio draws them; the 100 % row labels the other
    12. A held-out config whose labelled draw is not the data folder's is refused."""
    from pipeline.config import SplitConfig
    from pipeline.contract import held_out_images
    from pipeline.datasets.manifest import read_manifest

    data = linked_data(tmp_path, trainer_workspace)
    cfg = SplitConfig(labeled_ratio=0.25, seed=22, holdout_ratio=0.25)
    manifest = read_manifest(data / "manifests" / "samples.parquet")
    train_ids = manifest.filter(pc.equal(manifest["split"], "train"))["image_id"].to_numpy()
    expected = set(held_out_images(train_ids, cfg).tolist())

    five = roles_by_image(ablation.manifests_folder(data, None, 22, cfg))
    assert five["labeled"] == labelled_images(data / "manifests")
    assert five["held_out"] == expected and len(expected) == 4
    assert len(five["unlabeled"]) == 8 and not five["unlabeled"] & expected
    full = roles_by_image(ablation.manifests_folder(data, 100, 22, cfg))
    assert full == {"labeled": set(train_ids.tolist()) - expected, "held_out": expected}
    assert ablation.manifests_folder(data, None, 22, cfg).name == "manifests_5_heldout25"
    counts = ablation.label_counts(ablation.manifests_folder(data, None, 22, cfg))
    assert counts["held_out_pairs"] == sum(int(i in expected) for i in train_ids)
    assert counts["train_images"] == 12

    (tmp_path / "other").mkdir()
    other_data = linked_data(tmp_path / "other", trainer_workspace)
    other = SplitConfig(labeled_ratio=0.5, seed=22, holdout_ratio=0.25)
    with pytest.raises(SystemExit, match=r"is not the partition of split\.labeled_ratio 0\.5"):
        ablation.manifests_folder(other_data, None, 22, other)


def test_held_out_runs_live_apart_and_report_a_held_out_column(ablation, tmp_path):
    from pipeline.config import SplitConfig

    rows = {r.name: r for r in ablation.ROWS}
    cfg = SplitConfig(labeled_ratio=0.05, seed=22, holdout_ratio=0.1)
    folder = ablation.run_folder(tmp_path, rows["full"], 23, held_out=cfg)
    assert folder == tmp_path / "full" / "heldout10" / "seed23"

    def with_held_out(row: str, seed: int, val: float, held: float) -> dict:
        result = fake_result(row, seed, val)
        result["eval"]["none"]["held_out"] = {"oIoU": held, "mIoU": held}
        return result

    summaries = [
        ablation.summarize(rows["fixed_fusion"], [with_held_out("fixed_fusion", 22, 0.5, 0.4)]),
        ablation.summarize(rows["full"], [with_held_out("full", 22, 0.6, 0.45)]),
    ]
    assert summaries[1]["held_out_oIoU_by_seed"] == {"22": 0.45}
    header = ablation.markdown_table(summaries).splitlines()[0]
    assert "| test mIoU | held-out oIoU | val oIoU (teacher prior) |" in header
    pairs = ablation.paired_differences(summaries, "held_out")
    assert [(p["row"], p["differences"]) for p in pairs] == [("full", pytest.approx([0.05]))]
    assert pairs[0]["held_out_oIoU_difference"] == (pytest.approx(0.05), 0.0)
    table = ablation.paired_table(pairs, {s["row"]: s["label"] for s in summaries}, "held_out")
    assert table.splitlines()[0] == "held_out oIoU differences, paired by seed:"
    plain = [ablation.summarize(rows["full"], [fake_result("full", 22, 0.6)])]
    assert "held-out" not in ablation.markdown_table(plain)
    assert ablation.paired_differences(plain, "held_out") == []


def test_held_out_refuses_a_label_budget_sweep_and_a_bad_percentage(ablation, tmp_path, capsys):
    with pytest.raises(SystemExit, match="one at a time"):
        ablation.main(["--held-out", "10", "--label-budgets", "5", "--data", str(tmp_path)])
    with pytest.raises(SystemExit):
        ablation.parse_args(["--held-out", "100"])
    assert "a percentage in (0, 100), got 100" in capsys.readouterr().err


def budget_setup(ablation, workspace: Path, data: Path, labels: float) -> object:
    budget = ablation.Budget(
        epochs=1, steps_per_epoch=2, image_size=64, batch_size_x=2, batch_size_u=2, lr=1e-3
    )
    base = yaml.safe_load(workspace.read_text())
    return ablation.Setup(data.parent / "work", data, budget, base, False, labels=labels)


def test_budget_runs_need_a_prior_for_every_train_pair(ablation, trainer_workspace, tmp_path):
    """The workspace generated priors for its unlabelled pairs only, so its labelled pairs
    (25 % of the images) lack one: a teacher row refuses; once they have one it starts."""
    from pipeline.config import load_pipeline_config
    from pipeline.generate import generate

    data = linked_data(tmp_path, trainer_workspace)
    (data / "priors").unlink()
    shutil.copytree(trainer_workspace.parent / "priors", data / "priors")
    setup = budget_setup(ablation, trainer_workspace, data, 10)
    rows = {r.name: r for r in ablation.ROWS}

    def check(name: str) -> None:
        folder = ablation.run_folder(setup.work, rows[name], 22, setup.labels)
        assert folder == setup.work / name / "budget10" / "seed22"
        folder.mkdir(parents=True)
        params = folder / "params.yaml"
        params.write_text(yaml.safe_dump(ablation.row_params(setup, rows[name], 22, folder)))
        ablation.check_train_priors(params, f"{name} at 10 %")

    own = ablation.label_counts(data / "manifests")
    with pytest.raises(SystemExit, match=f"full at 10 %: {own['labeled_pairs']} of "):
        check("full")
    check("supervised")  # reads no teacher
    cfg = load_pipeline_config(trainer_workspace)
    generate(replace(cfg, paths=replace(cfg.paths, priors=str(data / "priors"))), "labeled")
    check("fixed_fusion")


def test_oracle_teacher_imports_every_train_pairs_mask_into_a_copy_of_the_store(
    ablation, trainer_workspace, tmp_path
):
    """--oracle-teacher: a prior equal to the ground truth for every train pair (the labelled
    ones too, which the workspace's simulated teacher left without one), in a copy of the
    store; built once per data folder."""
    from pipeline.config import load_pipeline_config
    from pipeline.report import prior_quality

    data = linked_data(tmp_path, trainer_workspace)
    store_files = sorted(p.relative_to(data / "priors") for p in (data / "priors").rglob("*"))
    base = yaml.safe_load(trainer_workspace.read_text())
    work = tmp_path / "work"
    folder = ablation.oracle_data(work, data, base)
    assert folder == work / "oracle_data"
    cfg = load_pipeline_config(folder / "params.yaml")
    assert (cfg.priors.teacher, cfg.priors.imported.name) == ("imported", "ground_truth")
    quality = prior_quality(cfg, "train")
    counts = ablation.label_counts(data / "manifests")
    train_pairs = counts["labeled_pairs"] + counts["unlabeled_pairs"]
    assert quality["evaluated"] == train_pairs
    # Exact up to the store's frame: the workspace stores priors at 32 px, its masks are 64 px.
    assert quality["oiou"] > 0.95 and quality["precision"]["0.7"] == 1.0
    after = sorted(p.relative_to(data / "priors") for p in (data / "priors").rglob("*"))
    assert after == store_files  # the data folder's own store is read, not written
    assert not (folder / "ground_truth_maps").exists()

    # A teacher row of the oracle's setup finds a prior for every train pair.
    setup = replace(
        budget_setup(ablation, trainer_workspace, folder, 5),
        base=ablation.merge_nested(base, {"priors": ablation.ORACLE_PRIORS}),
        labels=None,
    )
    full = next(r for r in ablation.ROWS if r.name == "full")
    run = ablation.run_folder(setup.work, full, 22)
    run.mkdir(parents=True)
    (run / "params.yaml").write_text(yaml.safe_dump(ablation.row_params(setup, full, 22, run)))
    ablation.check_train_priors(run / "params.yaml", "full")

    (folder / "import.log").unlink()
    assert ablation.oracle_data(work, data, base) == folder  # built: not imported again
    assert not (folder / "import.log").exists()
    other = tmp_path / "other"
    shutil.copytree(data, other, symlinks=True)
    with pytest.raises(SystemExit, match="built from another data folder"):
        ablation.oracle_data(work, other, base)


def fake_result(row: str, seed: int, val: float) -> dict:
    """A run_row result as a finished run leaves it (no training)."""
    scores = {"oIoU": val, "mIoU": val - 0.01}
    return {
        "row": row,
        "seed": seed,
        "eval": {"none": {"val": scores, "test": scores}},
        "train": {"raw_prior_iou": None, "train_loss": 0.5},
        "val_oIoU_per_epoch": [val],
        "train_s": 10.0,
        "eval_s": 1.0,
        "budget": {},
    }


def finish_run(ablation, setup, row: str, seed: int, val: float) -> Path:
    """A (row, seed) run folder as a finished run leaves it: its params and its result."""
    named = {r.name: r for r in ablation.ROWS}[row]
    folder = ablation.run_folder(setup.work, named, seed, setup.labels, setup.held_out)
    folder.mkdir(parents=True)
    params = ablation.row_params(setup, named, seed, folder)
    (folder / "params.yaml").write_text(yaml.safe_dump(params))
    (folder / "result.json").write_text(json.dumps(fake_result(row, seed, val)))
    return folder


def test_report_only_writes_the_budget_json_table_and_figure(ablation, trainer_workspace, tmp_path):
    """At 25 %, the workspace's own partition, the sweep's points are the rows' own runs
    (<work>/<row>/seed<k>); at 12.5 % (2 of 16 images) they are the budget's runs."""
    data = linked_data(tmp_path, trainer_workspace)
    work, out = tmp_path / "work", tmp_path / "results" / "label_budget.json"
    args = ["--label-budgets", "25,12.5", "--report-only", "--seeds", "2", "--epochs", "2"]
    args += ["--work", str(work), "--data", str(data), "--out", str(out)]
    setup = ablation.build_setup(ablation.parse_args(args))
    vals = {
        ("supervised", 12.5): [0.2, 0.3],
        ("supervised", None): [0.4],
        ("full", None): [0.5, 0.6],
    }
    for (row, labels), by_seed in vals.items():
        for k, val in enumerate(by_seed):
            finish_run(ablation, replace(setup, labels=labels), row, 22 + k, val)
    ablation.main(args)

    payload = json.loads(out.read_text())
    assert payload["label_budgets"] == [12.5, 25] and payload["budget"]["epochs"] == 2
    methods = {m["row"]: m["budgets"] for m in payload["methods"]}
    assert list(methods) == ["supervised", "full"]  # fixmatch, fixed_fusion: nothing finished
    sup_low, sup_own = methods["supervised"]
    assert (sup_low["percent"], sup_low["seeds"]) == (12.5, [22, 23])
    assert sup_low["val_oIoU_none"] == pytest.approx([0.25, statistics.stdev([0.2, 0.3])])
    assert sup_own["val_oIoU_none"] == [0.4, 0.0]
    assert (sup_low["labels"]["labeled_images"], sup_own["labels"]["labeled_images"]) == (2, 4)
    assert sup_own["labels"] == {
        "percent": 25,
        "split_seed": 22,
        **ablation.label_counts(data / "manifests"),
    }
    assert methods["full"][0]["val_oIoU_none"][0] == pytest.approx(0.55)
    table = out.with_suffix(".md").read_text().splitlines()
    assert table[0] == "| row | 12.5 % | 25 % |"
    assert table[2] == "| supervised | 25.0 ± 7.1 | 40.0 |"
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def finished_full_run(ablation, trainer_workspace, tmp_path) -> tuple[list[str], Path, dict]:
    """``--report-only`` args for the full row, its finished seed-22 run folder, its params."""
    data = linked_data(tmp_path, trainer_workspace)
    args = ["--report-only", "--rows", "full", "--work", str(tmp_path / "work")]
    args += ["--data", str(data), "--out", str(tmp_path / "ablation.json")]
    setup = ablation.build_setup(ablation.parse_args(args))
    folder = finish_run(ablation, setup, "full", 22, 0.5)
    return args, folder, yaml.safe_load((folder / "params.yaml").read_text())


def test_keys_added_since_a_run_compare_at_their_defaults(ablation, trainer_workspace, tmp_path):
    """A run trained before a key existed behaved as the key's dataclass default: stale only
    when the row now sets the key to something else."""
    params = finished_full_run(ablation, trainer_workspace, tmp_path)[2]
    current = copy.deepcopy(params)
    del params["train"]["agent"]["actor_delay"]  # 0 in the row, 0 by default: the same
    assert ablation.changed_params(params, current) == []
    current["train"]["spm_warmup_steps"] = 150  # a row that warms up, a run from before
    del params["train"]["spm_warmup_steps"]
    assert ablation.changed_params(params, current) == ["train.spm_warmup_steps: 0 -> 150"]


def test_a_run_trained_with_other_params_stops_the_benchmark(
    ablation, trainer_workspace, tmp_path, monkeypatch
):
    """A finished run whose params differ from its row's now (params.yaml's SPM coefficient
    changed since) is neither tabulated nor skipped as the row's: the benchmark stops and
    names the key."""
    args, folder, params = finished_full_run(ablation, trainer_workspace, tmp_path)
    bq = params["train"]["fusion"]["bq"]
    params["train"]["fusion"]["bq"] = bq + 0.15
    params["paths"]["priors"] = "elsewhere/priors"  # paths may be spelt otherwise: not a change
    (folder / "params.yaml").write_text(yaml.safe_dump(params))
    stale = rf"train\.fusion\.bq: {bq + 0.15} -> {bq}\)"
    with pytest.raises(SystemExit, match=stale):
        ablation.main(args)
    assert not (tmp_path / "ablation.json").exists()

    # Training too stops before any run starts, not when the stale run's row comes
    started = []
    monkeypatch.setattr(ablation, "run_row", lambda setup, row, seed: started.append(row.name))
    args[args.index("full")] = "supervised,full"
    with pytest.raises(SystemExit, match=stale):
        ablation.main(args[1:])  # without --report-only
    assert started == []


def test_curves_table_lists_each_rows_seeds_per_epoch(ablation):
    """Per-epoch tables under the main one: a row appears in a curve's table only when it has
    that curve (supervised has no fused prior), each cell its seeds' values in seed order."""
    rows = {r.name: r for r in ablation.ROWS}
    results = {
        "supervised": [fake_result("supervised", 22, 0.3) | {"val_oIoU_per_epoch": [0.2, 0.3]}],
        "full": [
            fake_result("full", seed, 0.5)
            | {
                "val_oIoU_per_epoch": val,
                "train_per_epoch": {"fused_prior_iou": fused, "raw_prior_iou": [0.6, 0.6]},
            }
            for seed, val, fused in (
                (22, [0.4, 0.5], [0.61, 0.65]),
                (23, [0.45, 0.55], [None, 0.7]),
            )
        ],
    }
    summaries = [ablation.summarize(rows[name], runs) for name, runs in results.items()]
    assert summaries[1]["curves"]["23"]["fused_prior_iou"] == [None, 0.7]

    parts = ablation.curves_tables(summaries).split("\n\n")  # caption, table, caption, ...
    captions, tables = parts[0::2], [part.splitlines() for part in parts[1::2]]
    assert captions == [
        "val oIoU per epoch:",
        "fused prior IoU (figure 9) per epoch:",
        "raw prior IoU on the same pairs per epoch:",
    ]
    val, fused, raw = tables
    assert val[0] == "| row | seeds | 1 | 2 |"
    assert val[2:] == [
        "| supervised (5 %) | 22 | 20.0 | 30.0 |",
        "| full L2L | 22 / 23 | 40.0 / 45.0 | 50.0 / 55.0 |",
    ]
    assert fused[2:] == ["| full L2L | 22 / 23 | 61.0 / – | 65.0 / 70.0 |"]
    assert raw[2:] == ["| full L2L | 22 / 23 | 60.0 / 60.0 | 60.0 / 60.0 |"]


def test_paired_differences_subtract_the_reference_seed_by_seed(ablation):
    """Rows pair on the seeds both have run; a pair whose reference has not run is left out."""
    rows = {r.name: r for r in ablation.ROWS}
    vals = {
        "fixmatch": {22: 0.30},
        "fixed_fusion": {22: 0.47, 23: 0.50, 24: 0.44},
        "spm_sesm": {22: 0.50, 23: 0.49},
        "full": {22: 0.52, 23: 0.45, 24: 0.48},
    }
    summaries = [
        ablation.summarize(rows[name], [fake_result(name, seed, v) for seed, v in by_seed.items()])
        for name, by_seed in vals.items()
    ]
    pairs = ablation.paired_differences(summaries)
    paired = {(p["row"], p["reference"]): p for p in pairs}
    assert list(paired) == [
        ("fixed_fusion", "fixmatch"),
        ("full", "spm_sesm"),
        ("full", "fixed_fusion"),
        ("full", "fixmatch"),
    ]  # spm has not run: nothing against or after it
    full_fixed = paired[("full", "fixed_fusion")]
    assert full_fixed["seeds"] == ["22", "23", "24"]
    assert full_fixed["differences"] == pytest.approx([0.05, -0.05, 0.04])
    mean, std = full_fixed["val_oIoU_difference"]
    assert mean == pytest.approx(0.04 / 3)
    assert std == pytest.approx(statistics.stdev([0.05, -0.05, 0.04]))
    assert paired[("full", "spm_sesm")]["differences"] == pytest.approx([0.02, -0.04])

    labels = {s["row"]: s["label"] for s in summaries}
    table = ablation.paired_table(pairs, labels).splitlines()
    assert table[0] == "val oIoU differences, paired by seed:"
    assert table[4] == "| fixed 0.5 fusion | fixmatch | 22 | +17.0 | +17.0 | 1 of 1 |"
    assert table[6] == (
        "| full L2L | fixed 0.5 fusion | 22 / 23 / 24 | +5.0 / -5.0 / +4.0 | +1.3 ± 5.5 | 2 of 3 |"
    )
    assert ablation.paired_differences(summaries[:1]) == []
    assert ablation.paired_table([], labels) == ""


@pytest.mark.parametrize("text", ["5%", "1;5", "", "1,,5", "one"])
def test_label_budgets_refuse_an_unknown_format(ablation, text, capsys):
    with pytest.raises(SystemExit):
        ablation.parse_args([f"--label-budgets={text}"])
    assert "comma-separated percentages" in capsys.readouterr().err


@pytest.mark.parametrize("text", ["0", "-1,5", "100.5", "nan", "inf"])
def test_label_budgets_refuse_a_budget_outside_0_100(ablation, text, capsys):
    with pytest.raises(SystemExit):
        ablation.parse_args([f"--label-budgets={text}"])
    assert "(0, 100]" in capsys.readouterr().err


def test_label_budgets_parse_and_pick_the_sweeps_rows(ablation, tmp_path):
    args = ablation.parse_args(["--label-budgets", "10, 0.1,5,1,10"])
    assert args.label_budgets == (0.1, 1.0, 5.0, 10.0) and args.rows is None
    assert ablation.parse_args(["--label-budgets", "100"]).label_budgets == (100.0,)
    names = [r.name for r in ablation.selected_rows("budget")]
    assert names == ["supervised", "fixmatch", "fixed_fusion", "full"]
    with pytest.raises(SystemExit, match="fully_supervised"):
        ablation.main(["--label-budgets", "5", "--rows", "table3", "--data", str(tmp_path)])


def test_jobs_run_side_by_side_and_rows_come_in_order(ablation, tmp_path, monkeypatch):
    """Four runs (two rows x two seeds), two at a time: at most two run at once, the second
    row's first run starts before the first row has finished, and each row comes with its
    results in seed order however the runs finish."""
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    lock, running, most, started = threading.Lock(), [0], [0], []

    def fake_run_row(setup, row, seed):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
            started.append((row.name, seed))
        time.sleep(0.05 if seed == 22 else 0.01)  # seed 23 finishes first
        with lock:
            running[0] -= 1
        return fake_result(row.name, seed, 0.5)

    monkeypatch.setattr(ablation, "run_row", fake_run_row)
    rows = [r for r in ablation.ROWS if r.name in ("supervised", "full")]
    setup = ablation.Setup(work=tmp_path, data=tmp_path, budget=None, base={}, teacher_eval=False)
    with ThreadPoolExecutor(max_workers=2) as pool:
        out = list(ablation.row_results(pool, setup, rows, [22, 23], report_only=False))
    assert [(row.name, [r["seed"] for r in results]) for row, results in out] == [
        ("supervised", [22, 23]),
        ("full", [22, 23]),
    ]
    assert most[0] == 2
    assert ("full", 22) in started[:3]


def test_a_failed_run_raises_with_its_row(ablation, tmp_path, monkeypatch):
    finished_runs = []

    def fake_run_row(setup, row, seed):
        if row.name == "supervised" and seed == 23:
            raise RuntimeError("l2l-train run exited 1: see log.txt")
        finished_runs.append((row.name, seed))
        return fake_result(row.name, seed, 0.5)

    monkeypatch.setattr(ablation, "run_row", fake_run_row)
    rows = [r for r in ablation.ROWS if r.name in ("supervised", "full")]
    setup = ablation.Setup(work=tmp_path, data=tmp_path, budget=None, base={}, teacher_eval=False)
    from concurrent.futures import ThreadPoolExecutor

    with pytest.raises(RuntimeError, match="exited 1"), ThreadPoolExecutor(1) as pool:
        for _ in ablation.row_results(pool, setup, rows, [22, 23], report_only=False):
            pass
    # The failed row's other seed finished and kept its result; what ran after the failure
    # depends on when the one worker took its next run.
    assert finished_runs[0] == ("supervised", 22)
    assert ("supervised", 23) not in finished_runs


def test_run_threads_share_the_cores_unless_the_caller_set_them(ablation, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda _: set(range(16)))
    assert ablation.run_threads(1) is None
    assert ablation.run_threads(4) == 4
    assert ablation.run_threads(24) == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert ablation.run_threads(4) is None
