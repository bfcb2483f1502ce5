"""``l2l-priors``: the offline half of L2L (datasets, split, teacher priors).

Each command parses its options, loads ``params.yaml`` and calls one function of the stage's
module, so everything a command does can also be called from Python and tests.
"""

from __future__ import annotations

import logging
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from pipeline.config import ConfigError, PipelineConfig, load_pipeline_config

app = typer.Typer(
    help="L2L offline pipeline: prepare datasets, split labelled/unlabelled, generate teacher priors.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)
log = logging.getLogger("l2l")

ParamsOption = Annotated[
    Path, typer.Option("--params", "-p", help="params.yaml to read (every tunable lives there).")
]


def _load(params: Path) -> PipelineConfig:
    logging.basicConfig(
        level=logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False)],
    )
    try:
        return load_pipeline_config(params)
    except ConfigError as err:
        console.print(f"[red]invalid params:[/red] {err}")
        raise typer.Exit(2) from None


@contextmanager
def progress_bar(description: str, total: int | None):
    """A rich progress bar; yields a zero-argument ``advance`` callable."""
    columns = [
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    ]
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(description, total=total)
        yield lambda: progress.advance(task)


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

    synthetic: generates the embedded dataset (images + exact masks + expressions).
    refcoco / refcoco+ / refcocog: reads the refer-format pickle, instances.json and COCO images;
    unreadable images, empty expressions and empty masks are skipped, each logged with its reason.
    """
    from pipeline.datasets.manifest import write_manifest

    cfg = _load(params)
    if cfg.data.dataset == "synthetic":
        from pipeline.datasets.synthetic import build_synthetic

        syn = cfg.data.synthetic
        total = syn.train_images + syn.val_images + syn.test_images
        with progress_bar("generating scenes", total) as advance:
            prepared = build_synthetic(syn, progress=advance)
    else:
        from pipeline.datasets.refcoco import build_refcoco

        with progress_bar(f"reading {cfg.data.dataset}", None) as advance:
            try:
                prepared = build_refcoco(cfg.data, progress=advance)
            except (FileNotFoundError, ValueError) as err:
                console.print(f"[red]cannot read {cfg.data.dataset}:[/red] {err}")
                raise typer.Exit(1) from None
    for item, reason in prepared.skipped:
        log.warning("skipped %s: %s", item, reason)
    write_manifest(prepared.samples, cfg.paths.samples, prepared.image_root)

    per_split = Counter(s.split for s in prepared.samples)
    images = {
        split: len({s.image_id for s in prepared.samples if s.split == split})
        for split in per_split
    }
    _print_table(
        f"{cfg.data.dataset} -> {cfg.paths.samples}",
        ["split", "images", "pairs"],
        [[split, images[split], n] for split, n in sorted(per_split.items())],
    )
    if prepared.skipped:
        console.print(
            f"[yellow]{len(prepared.skipped)} items skipped[/yellow] (reasons logged above)"
        )


@app.command()
def split(params: ParamsOption = Path("params.yaml")) -> None:
    """Partition the train split into labelled/unlabelled images at ``split.labeled_ratio``
    (data/manifests/partition.parquet); prints images, refs and pairs per role."""
    from pipeline.datasets.manifest import read_manifest
    from pipeline.split import partition, role_counts, write_partition

    cfg = _load(params)
    manifest = read_manifest(cfg.paths.samples)
    part = partition(manifest, cfg.split)
    write_partition(part, cfg.paths.partition)
    counts = role_counts(manifest, part)
    _print_table(
        f"labeled_ratio={cfg.split.labeled_ratio} seed={cfg.split.seed} -> {cfg.paths.partition}",
        ["role", "images", "refs", "pairs"],
        [[role, c.images, c.refs, c.pairs] for role, c in counts.items()],
    )


@app.command()
def show(
    sample_id: Annotated[str, typer.Argument(help="e.g. synthetic/train/12/34")],
    out: Annotated[Path, typer.Option("--out", "-o", help="PNG to write.")] = Path("sample.png"),
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Draw a pair: the image, its expression and the ground-truth mask outline."""
    from pipeline.visualize import render_sample

    cfg = _load(params)
    try:
        render_sample(cfg, sample_id, out)
    except KeyError as err:
        console.print(f"[red]{err.args[0]}[/red]")
        raise typer.Exit(1) from None
    console.print(f"wrote {out}")
