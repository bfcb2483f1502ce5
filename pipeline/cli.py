"""``l2l-priors``: the offline half of L2L (datasets, split, teacher priors).

Each command parses its options, loads ``params.yaml`` and calls one function of the stage's
module, so everything a command does can also be called from Python and tests.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from pipeline.cli_support import (
    ParamsOption,
    command_app,
    console,
    fail,
    load_params,
    setup_logging,
)
from pipeline.config import PipelineConfig, load_pipeline_config

app = command_app(
    "L2L offline pipeline: prepare datasets, split labelled/unlabelled, generate teacher priors."
)
log = logging.getLogger("l2l")

PriorSplitOption = Annotated[
    str | None,
    typer.Option(
        help="labeled / unlabeled / held_out (partition roles), train, an eval split (val, test, "
        "testA, ...) or all (every eval split). Default: every split in priors.splits."
    ),
]


def _load(params: Path) -> PipelineConfig:
    setup_logging()
    return load_params(params, load_pipeline_config)


def _prior_splits(cfg: PipelineConfig, split: str | None) -> Iterator[str]:
    """``--split`` or priors.splits, ``all`` expanded when reached
    (:func:`~pipeline.datasets.manifest.prior_splits`); a missing manifest is one line."""
    from pipeline.datasets.manifest import prior_splits

    try:
        yield from prior_splits(cfg, split)
    except (OSError, ValueError) as err:
        raise fail(err) from None


class RateColumn(ProgressColumn):
    """Items per second, in the task's own unit."""

    def __init__(self, unit: str):
        super().__init__()
        self.unit = unit

    def render(self, task) -> Text:
        return Text(f"{task.speed:.1f} {self.unit}/s" if task.speed else "")


@contextmanager
def progress_bar(description: str, total: int | None = None, unit: str = "items"):
    """A rich progress bar with rate and ETA; yields the Progress and its task id."""
    columns = [
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(unit),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    ]
    with Progress(*columns, console=console) as progress:
        yield progress, progress.add_task(description, total=total)


def _print_table(title: str, header: list[str], rows: list[list]) -> None:
    table = Table(title=title)
    for column in header:
        table.add_column(column, justify="right" if column != header[0] else "left")
    for row in rows:
        table.add_row(*(str(v) for v in row))
    Console().print(table)


@app.command()
def prepare(params: ParamsOption = Path("params.yaml")) -> None:
    """Build the sample manifest (data/manifests/samples.parquet) for ``data.dataset``.

    - synthetic: generates the embedded dataset (images + exact masks + expressions).
    - refcoco / refcoco+ / refcocog: reads the refer-format pickle, instances.json and COCO
      images; unreadable images, empty expressions and empty masks are skipped, each logged
      with its reason.
    """
    from pipeline.datasets.manifest import split_counts, write_manifest, write_prepare_report
    from pipeline.prepare import prepare_dataset

    cfg = _load(params)
    syn = cfg.data.synthetic
    total = (
        syn.train_images + syn.val_images + syn.test_images
        if cfg.data.dataset == "synthetic"
        else None
    )
    with progress_bar(f"preparing {cfg.data.dataset}", total, "images") as (bar, task):
        try:
            prepared = prepare_dataset(cfg, progress=lambda: bar.advance(task))
        except (FileNotFoundError, ValueError) as err:
            raise fail(f"cannot read {cfg.data.dataset}: {err}") from None
    for item, reason in prepared.skipped:
        log.warning("skipped %s: %s", item, reason)
    write_manifest(prepared.samples, cfg.paths.samples, prepared.image_root)
    write_prepare_report(prepared, cfg.data.dataset, Path(cfg.paths.prepared) / "report.json")
    _print_table(
        f"{cfg.data.dataset} -> {cfg.paths.samples}",
        ["split", "images", "pairs"],
        [[split, c["images"], c["pairs"]] for split, c in split_counts(prepared.samples).items()],
    )
    if prepared.skipped:
        console.print(
            f"[yellow]{len(prepared.skipped)} items skipped[/yellow] "
            f"({cfg.paths.prepared}/report.json lists each with its reason):"
        )
        for kind, n, example in skip_summary(prepared.skipped):
            console.print(f"  {n} x {kind}, e.g. {example}", markup=False)


def skip_summary(skipped: list[tuple[str, str]]) -> list[tuple[str, int, str]]:
    """(kind, count, first example) of prepare's skips, by kind of item and reason with its
    details (paths, numbers) blanked, so "image file missing: a/1.jpg" and "image file
    missing: a/2.jpg" count together."""
    import re

    groups: dict[str, list[str]] = {}
    for item, reason in skipped:
        pattern = re.sub(r"\d+", "N", re.sub(r"\S*/\S*", "<path>", reason))
        kind = f"{item.split(' ', 1)[0]}: {pattern}"
        groups.setdefault(kind, []).append(f"{item}: {reason}")
    return [(kind, len(items), items[0]) for kind, items in groups.items()]


@app.command()
def split(params: ParamsOption = Path("params.yaml")) -> None:
    """Partition the train split into labelled/unlabelled images at ``split.labeled_ratio``,
    and held-out ones at ``split.holdout_ratio`` (data/manifests/partition.parquet); prints
    images, refs and pairs per role."""
    from pipeline.datasets.manifest import read_manifest
    from pipeline.split import partition, role_counts, write_partition

    cfg = _load(params)
    manifest = read_manifest(cfg.paths.samples)
    part = partition(manifest, cfg.split)
    write_partition(part, cfg.paths.partition)
    counts = role_counts(manifest, part)
    _print_table(
        f"labeled_ratio={cfg.split.labeled_ratio} holdout_ratio={cfg.split.holdout_ratio} "
        f"seed={cfg.split.seed} -> {cfg.paths.partition}",
        ["role", "images", "refs", "pairs"],
        [[role, c.images, c.refs, c.pairs] for role, c in counts.items()],
    )


@app.command()
def show(
    sample_id: Annotated[str, typer.Argument(help="e.g. synthetic/train/12/34")],
    out: Annotated[Path, typer.Option("--out", "-o", help="PNG to write.")] = Path("sample.png"),
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Draw a pair: the image, its expression, the ground-truth mask and its stored prior.

    The prior panel (heat map and grounding box) appears when the store holds a prior of
    priors.teacher for the pair."""
    from pipeline.visualize import render_sample

    cfg = _load(params)
    try:
        render_sample(cfg, sample_id, out)
    except KeyError as err:
        raise fail(err.args[0]) from None
    console.print(f"wrote {out}")


@app.command()
def generate(
    split: PriorSplitOption = None,
    params: ParamsOption = Path("params.yaml"),
    limit: Annotated[
        int | None, typer.Option(help="Consider only the first N pairs of the split.")
    ] = None,
    shard: Annotated[
        str | None,
        typer.Option(
            help="Worker i of K as 'i/K' (default: torchrun's RANK/WORLD_SIZE, else 0/1). Each worker "
            "takes the images whose hash falls in its shard and writes its own store part."
        ),
    ] = None,
    verify: Annotated[
        bool,
        typer.Option(
            help="Read the split's stored rows first and recompute pairs whose rows are damaged."
        ),
    ] = True,
) -> None:
    """Run the teacher (priors.teacher) over a split's pairs into the prior store.

    Resumable and incremental: pairs already in the store for this teacher config are skipped,
    so a rerun after a crash or a new label ratio computes only what is missing.
    """
    from pipeline.generate import Shard
    from pipeline.generate import generate as run_generate
    from pipeline.store.lock import PartLockedError

    cfg = _load(params)
    try:
        worker = Shard.parse(shard)
    except ValueError as err:
        raise fail(err, 2) from None
    for name in _prior_splits(cfg, split):
        with progress_bar(f"priors {name} [{cfg.priors.teacher}]", None, "pairs") as (bar, task):
            try:
                summary = run_generate(
                    cfg,
                    name,
                    limit=limit,
                    shard=worker,
                    verify=verify,
                    on_total=lambda n: bar.update(task, total=n),
                    on_pairs=lambda k: bar.advance(task, k),
                )
            # OSError: a read-only or full store folder (StoreWriteError names the path);
            # PartLockedError: another live run writes this shard's part.
            except (OSError, ValueError, PartLockedError) as err:
                raise fail(err) from None
        rows = [
            ["pairs in shard", summary.pairs],
            ["already stored", summary.skipped],
            ["computed", summary.computed],
        ]
        rows += [[f"  status {status}", n] for status, n in sorted(summary.status_counts.items())]
        _print_table(
            f"generate --split {name} (shard {worker.index}/{worker.count}) -> {cfg.paths.priors}",
            ["", "count"],
            rows,
        )
        failed = sum(n for status, n in summary.status_counts.items() if status != "ok")
        if failed:
            console.print(
                f"[yellow]{failed} pairs stored without a usable prior[/yellow] "
                "(the trainer reads them as prior-absent; raw answers in "
                f"{cfg.paths.priors}/cues):"
            )
            for status, ids in sorted(summary.examples.items()):
                console.print(
                    f"  {summary.status_counts[status]} x {status}, e.g. {', '.join(ids)}",
                    markup=False,
                )


@app.command()
def report(
    split: PriorSplitOption = None,
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Prior quality of priors.teacher on a split's pairs with ground truth.

    Each stored prior is resized from the square-stretched frame to the image, thresholded at
    0.5 and compared with the ground-truth mask: mean IoU, oIoU, precision@t, an IoU
    histogram, status counts and bytes per pair on disk. Pairs whose status is not ok count
    IoU 0; pairs with no stored prior are counted as missing and left out. Writes
    ``<paths.metrics>/priors/<split>.json``, ``<split>_iou_hist.csv`` and
    ``<split>_iou_hist.png``.
    """
    from pipeline.report import prior_quality, write_report

    cfg = _load(params)
    for name in _prior_splits(cfg, split):
        try:
            result = prior_quality(cfg, name)
        except (FileNotFoundError, ValueError) as err:
            raise fail(err) from None
        paths = write_report(result, cfg.paths.metrics)
        rows = [
            ["pairs with ground truth", result["pairs"]],
            ["evaluated (stored)", result["evaluated"]],
            ["mean IoU", f"{result['mean_iou']:.4f}"],
            ["oIoU", f"{result['oiou']:.4f}"],
        ]
        rows += [[f"  precision@{t}", f"{p:.4f}"] for t, p in result["precision"].items()]
        rows += [[f"  status {status}", n] for status, n in sorted(result["status_counts"].items())]
        rows += [["bytes per pair on disk", f"{result['bytes_per_pair']:,.0f}"]]
        _print_table(
            f"priors of {cfg.priors.teacher} on {name} (status != ok counts IoU 0)",
            ["", "value"],
            rows,
        )
        console.print("wrote " + ", ".join(str(p) for p in paths.values()))


@app.command("import-priors")
def import_priors(
    directory: Annotated[
        Path,
        typer.Argument(
            help="Folder of probability maps, one per pair: DIR/<sample_id with '/' as '__'>.png "
            "(flat, e.g. refcoco__val__12__34.png) or DIR/<sample_id>.png (nested, e.g. "
            "refcoco/val/12/34.png); .npy instead of .png also works."
        ),
    ],
    split: Annotated[
        str,
        typer.Option(
            help="labeled / unlabeled / held_out, train, or an eval split (val, test, ...)."
        ),
    ] = "unlabeled",
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Import probability maps made by another referring segmentor (e.g. CARIS, CGFormer).

    Each map covers the whole image in its original frame at any resolution (it is stretched
    to the store's priors.size square). PNG: 8-bit greyscale, 0-255 (RGB only if grey).
    NPY: 2-D uint8 0-255 or float in [0, 1]. They are stored as teacher 'imported' named
    priors.imported.name, whatever priors.teacher says; train on them with
    priors.teacher: imported. Unreadable or NaN maps get status unreadable_import; pairs
    without a file are listed and not written. Resumable: pairs already stored are skipped.
    """
    from pipeline.importer import import_priors as run_import
    from pipeline.store.lock import PartLockedError

    cfg = _load(params)
    with progress_bar(f"importing {split} from {directory}", None, "pairs") as (bar, task):
        try:
            summary = run_import(
                cfg,
                directory,
                split,
                on_total=lambda n: bar.update(task, total=n),
                on_pairs=lambda k: bar.advance(task, k),
            )
        except (OSError, ValueError, PartLockedError) as err:
            raise fail(err) from None
    _print_table(
        f"import-priors --split {split} -> {cfg.paths.priors} "
        f"(imported/{cfg.priors.imported.name}, {summary.teacher_hash})",
        ["", "count"],
        [
            ["pairs", summary.pairs],
            ["already stored", summary.skipped],
            ["imported", summary.imported],
            ["unreadable (stored as unreadable_import)", len(summary.unreadable)],
            ["without a file (not stored)", len(summary.missing)],
        ],
    )
    for sample_id, reason in summary.unreadable[:5]:
        console.print(f"[yellow]unreadable[/yellow] {sample_id}: {reason}")
    if summary.missing:
        more = f" and {len(summary.missing) - 5} more" if len(summary.missing) > 5 else ""
        console.print(f"[yellow]no map file for[/yellow] {', '.join(summary.missing[:5])}{more}")
    if cfg.priors.teacher != "imported":
        console.print(
            f"to train on these priors set priors.teacher: imported in {params} "
            f"(it is {cfg.priors.teacher!r})"
        )


@app.command()
def verify(params: ParamsOption = Path("params.yaml")) -> None:
    """Decode every row of priors.teacher's priors in the store and report what is damaged:
    parts that cannot be read (metadata, index) and rows that do not decode, are not finite
    in [0, 1] or disagree with the index. Exits 1 if anything is; `l2l-priors generate`
    recomputes exactly those pairs."""
    from pipeline.contract import teacher_hash
    from pipeline.store.reader import PriorStore

    cfg = _load(params)
    try:
        store = PriorStore.open(cfg.paths.priors, teacher_hash=teacher_hash(cfg.priors))
        report = store.verify()
    except (FileNotFoundError, ValueError) as err:
        raise fail(err) from None
    if not report.ok:
        raise fail(report.summary() + "\nrerun `l2l-priors generate` to recompute these pairs")
    console.print(report.summary())


if __name__ == "__main__":  # torchrun -m pipeline.cli generate ...
    app()
