"""``l2l-train``: train, evaluate and run the referring segmentor.

Each command parses its options, loads ``params.yaml`` and calls one function
(:func:`~l2l_train.loop.run_training`, :func:`~l2l_train.evaluate.run_eval`,
:class:`~l2l_train.predict.Predictor`), so everything here can also be called from Python.
``l2l-train run`` starts ``train.processes`` DDP ranks itself (under torchrun), and works the
same when a launcher started it as one of K (one rank per process; rank 0 prints and writes).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from l2l_train.config import TrainerParams
from pipeline.cli_support import (
    ParamsOption,
    command_app,
    console,
    fail,
    load_params,
    setup_logging,
)
from pipeline.config import build_params
from pipeline.schema import read_params_file

app = command_app(
    "L2L trainer: semi-supervised referring segmentation with teacher priors (SPM, SESM, RPLE)."
)


def _is_main_rank() -> bool:
    return int(os.environ.get("RANK", 0)) == 0


def _load(params: Path, **overrides: Mapping[str, Any]) -> TrainerParams:
    """``params`` loaded; ``overrides`` (section name -> keys, from a command's options) replace
    the file's values before validation, so they are checked as the file's own are."""
    setup_logging(logging.INFO if _is_main_rank() else logging.WARNING)

    def with_overrides(path: Path) -> TrainerParams:
        raw = dict(read_params_file(path))
        for section, values in overrides.items():
            current = raw.get(section)
            # A section that is not a mapping is the file's own error: left for build_params
            # to reject, naming it, rather than merged into.
            if values and (current is None or isinstance(current, Mapping)):
                raw[section] = {**(current or {}), **values}
        return build_params(raw, TrainerParams)

    return load_params(params, with_overrides)


def _bar_columns(label: str, status: str) -> tuple:
    """A training progress bar's columns: ``label``, bar, steps done, ``status`` (rich
    format strings over the task's fields), elapsed and remaining time."""
    return (
        TextColumn(label),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(status),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )


def _print_table(title: str, rows: list[tuple[str, object]]) -> None:
    table = Table(title=title)
    table.add_column("")
    table.add_column("value", justify="right")
    for name, value in rows:
        table.add_row(name, f"{value:.4f}" if isinstance(value, float) else str(value))
    Console().print(table)


@app.command()
def run(
    params: ParamsOption = Path("params.yaml"),
    restart: Annotated[
        bool,
        typer.Option(
            "--restart",
            help="Ignore paths.models/latest.pt and train from scratch (also when its params differ).",
        ),
    ] = False,
    restart_if_stale: Annotated[
        bool,
        typer.Option(
            "--restart-if-stale",
            help="Train from scratch, instead of stopping, when latest.pt has other params or "
            "is a finished run; an unfinished run with the same params still resumes "
            "(the DVC train stage's mode).",
        ),
    ] = False,
) -> None:
    """Train with train.method (supervised | fixmatch | fixed_fusion | tuned_fusion |
    agreement_filter | catm | l2l).

    Writes checkpoints to paths.models (latest.pt each epoch and every
    train.checkpoint_every_steps, best.pt by validation oIoU) and per-epoch metrics to
    paths.metrics/train (dvclive). Resumes from latest.pt when its params match. With
    train.processes > 1 it runs as that many DDP ranks (torchrun), rank 0 printing.
    """
    from l2l_train.checkpoint import CheckpointWriteError, ConfigMismatchError
    from l2l_train.loop import StepInfo, run_training

    cfg = _load(params)
    if cfg.train.processes > 1 and "WORLD_SIZE" not in os.environ:
        from l2l_train.checkpoint import check_resumable
        from l2l_train.runtime import torchrun_command

        if not (restart or restart_if_stale):
            try:
                check_resumable(Path(cfg.paths.models) / "latest.pt", cfg)
            except ConfigMismatchError as err:
                raise fail(err, 2) from None
        flags = ["--restart"] * restart + ["--restart-if-stale"] * restart_if_stale
        argv, env = torchrun_command(cfg.train.processes, ["run", "--params", str(params), *flags])
        os.execve(argv[0], argv, env)  # this process becomes torchrun: signals reach every rank
    columns = _bar_columns(
        "epoch {task.fields[epoch]}",
        "loss {task.fields[loss]:.4f}  {task.fields[speed]:.1f} samples/s",
    )
    with Progress(*columns, console=console, disable=not _is_main_rank()) as bar:
        task = bar.add_task("train", total=None, epoch=0, loss=float("nan"), speed=0.0)

        def on_step(info: StepInfo) -> None:
            bar.update(
                task,
                total=info.total_steps,
                completed=info.step,
                epoch=info.epoch,
                loss=info.loss,
                speed=info.samples_per_s,
            )

        try:
            summary = run_training(
                cfg, restart=restart, restart_if_stale=restart_if_stale, on_step=on_step
            )
        except ConfigMismatchError as err:
            raise fail(err, 2) from None
        except CheckpointWriteError as err:  # full disk: the previous checkpoint is intact
            raise fail(err) from None
        except (OSError, ValueError) as err:  # a missing or unreadable file, bad data
            raise fail(err) from None
    if not _is_main_rank():
        return
    rows = [
        ("method", summary.method),
        ("steps", summary.steps),
        ("best epoch", summary.best_epoch),
        ("best val oIoU", summary.best_val_oiou),
        *((name, value) for name, value in summary.last_metrics.items() if name.startswith("val/")),
        ("steps/s", summary.steps_per_s),
        ("samples/s", summary.samples_per_s),
    ]
    if summary.resumed_from_step is not None:
        rows.append(("resumed from step", summary.resumed_from_step))
    _print_table(f"l2l-train run -> {cfg.paths.models}", rows)


@app.command()
def pretrain(params: ParamsOption = Path("params.yaml")) -> None:
    """Pretrain the resnet visual encoder on dense shape and colour parsing of synthetic
    scenes that no split holds (the embedded default's stand-in for ImageNet pretraining) and
    write pretrain.out, which model.visual.path loads. Settings: the pretrain section. With
    another model.visual.kind (a Swin loads its own weights) it records that nothing was
    pretrained in pretrain.out, so the DVC stage serves both."""
    from l2l_train.checkpoint import CheckpointWriteError
    from l2l_train.pretrain import record_skipped_pretraining, run_pretraining

    cfg = _load(params)
    if cfg.model.visual.kind != "resnet":
        out = record_skipped_pretraining(cfg)
        console.print(
            f"model.visual.kind is {cfg.model.visual.kind}: nothing to pretrain (it starts from "
            f"model.visual.path); recorded in {out}"
        )
        return
    with Progress(
        *_bar_columns("pretrain", "loss {task.fields[loss]:.4f}"), console=console
    ) as bar:
        task = bar.add_task("pretrain", total=cfg.pretrain.steps, loss=float("nan"))

        def on_step(step: int, total: int, loss: float) -> None:
            bar.update(task, completed=step, loss=loss)

        try:
            summary = run_pretraining(cfg, on_step)
        except (CheckpointWriteError, ValueError) as err:
            raise fail(err) from None
    _print_table(
        f"l2l-train pretrain -> {summary.out}",
        [
            ("steps", summary.steps),
            ("train s", summary.train_s),
            ("held-out shape accuracy", summary.shape_accuracy),
            ("held-out colour accuracy", summary.colour_accuracy),
        ],
    )


@app.command("eval")
def evaluate(
    params: ParamsOption = Path("params.yaml"),
    checkpoint: Annotated[
        Path | None, typer.Option(help="Checkpoint to score (default: paths.models/best.pt).")
    ] = None,
    split: Annotated[
        list[str] | None,
        typer.Option(
            help="Split to score, repeatable; all = every split of the dataset but train "
            "(default: eval.splits)."
        ),
    ] = None,
    prior: Annotated[
        str | None,
        typer.Option(
            help="Model input: none, or teacher priors of the split (default: eval.prior)."
        ),
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Metrics JSON to write (default: paths.metrics/eval.json).")
    ] = None,
    flip: Annotated[
        bool | None,
        typer.Option(
            "--flip/--no-flip",
            help="Average with the mirrored pairs (left/right swapped) (default: eval.flip).",
        ),
    ] = None,
    threshold: Annotated[
        float | None,
        typer.Option(help="On the foreground probability (default: eval.threshold)."),
    ] = None,
    sweep: Annotated[
        list[float] | None,
        typer.Option(
            help="Also score at this threshold on the foreground probability, repeatable, "
            "from the same forwards: to choose eval.threshold on a held-out split "
            "(split.holdout_ratio, --split held_out), not on val or test."
        ),
    ] = None,
) -> None:
    """oIoU, mIoU and prec@0.5-0.9 over every sentence of each split; writes a metrics JSON."""
    from l2l_train.evaluate import run_eval

    options = {"flip": flip, "threshold": threshold}
    cfg = _load(params, eval={key: value for key, value in options.items() if value is not None})
    checkpoint = checkpoint or Path(cfg.paths.models) / "best.pt"
    prior = prior or cfg.eval.prior
    if prior not in ("none", "teacher"):
        raise fail(f"--prior: expected none or teacher, got {prior!r}", 2)
    if not checkpoint.is_file():
        raise fail(f"checkpoint not found: {checkpoint} (run `l2l-train run` first)")
    try:
        result = run_eval(cfg, checkpoint, tuple(split or cfg.eval.splits), prior, sweep or ())
    except (OSError, ValueError) as err:  # a missing or unreadable file, bad data
        raise fail(err) from None
    out = out or Path(cfg.paths.metrics) / "eval.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    flipped = ", test-time flip" if cfg.eval.flip else ""
    table = Table(
        title=f"{checkpoint} (step {result['step']}, prior {prior}{flipped}, "
        f"threshold {cfg.eval.threshold}) -> {out}"
    )
    metrics = ["oIoU", "mIoU", "prec@0.5", "prec@0.7", "prec@0.9", "pairs"]
    for column in ["split", *metrics]:
        table.add_column(column, justify="left" if column == "split" else "right")
    for name, values in result["splits"].items():
        table.add_row(
            name, *(f"{values[m]:.4f}" if m != "pairs" else str(values[m]) for m in metrics)
        )
    Console().print(table)
    if sweep:
        swept = Table(title=f"oIoU by threshold (eval.threshold {cfg.eval.threshold})")
        for column in ["split", *map(str, sweep)]:
            swept.add_column(column, justify="left" if column == "split" else "right")
        for name, values in result["splits"].items():
            swept.add_row(name, *(f"{values['sweep'][str(t)]['oIoU']:.4f}" for t in sweep))
        Console().print(swept)


@app.command()
def figures(
    params: ParamsOption = Path("params.yaml"),
    out: Annotated[
        Path | None,
        typer.Option(help="Folder for the PNGs (default: paths.metrics/figures)."),
    ] = None,
) -> None:
    """Draw a trained run's pictures: figure 1 (teacher vs model confidence per unlabelled
    pair), figure 9 (pseudo supervision per epoch), an example grid (weak view, teacher prior,
    fused prior, pseudo-label, prediction, ground truth) and confidence maps. Settings:
    the figures section of params.yaml."""
    from l2l_train.figures import render_figures

    cfg = _load(params)
    try:
        written = render_figures(cfg, out)
    except (OSError, ValueError) as err:  # a missing or unreadable file, bad data
        raise fail(err) from None
    for path in written:
        console.print(f"wrote {path}")


@app.command()
def predict(
    checkpoint: Annotated[Path, typer.Option(help="A checkpoint written by `l2l-train run`.")],
    image: Annotated[Path, typer.Option(help="Image file.")],
    text: Annotated[str, typer.Option(help="The referring expression.")],
    out: Annotated[Path, typer.Option(help="Mask PNG to write (255 = referred object).")] = Path(
        "mask.png"
    ),
    overlay: Annotated[
        Path | None, typer.Option(help="Also write the image with the mask tinted over it.")
    ] = None,
    threshold: Annotated[
        float | None,
        typer.Option(
            help="On the foreground probability. Default: as the checkpoint's run evaluated "
            "(its eval.threshold)."
        ),
    ] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    flip: Annotated[
        bool | None,
        typer.Option(
            "--flip/--no-flip",
            help="Average with the mirrored image and expression (left/right swapped). "
            "Default: as the checkpoint's run evaluated (its eval.flip).",
        ),
    ] = None,
) -> None:
    """Segment the object an expression refers to in one image (no teacher prior)."""
    from l2l_train.predict import Predictor, mask_image
    from l2l_train.predict import overlay as overlay_image
    from l2l_train.runtime import resolve_device
    from pipeline.datasets.manifest import load_rgb

    setup_logging(logging.WARNING)
    if device not in ("auto", "cpu", "cuda"):
        raise fail(f"--device: expected auto, cpu or cuda, got {device!r}", 2)
    if not checkpoint.is_file():
        raise fail(f"checkpoint not found: {checkpoint} (run `l2l-train run` first)")
    try:
        picture = load_rgb(image)
    except OSError as err:
        raise fail(err) from None
    predictor = Predictor(checkpoint, resolve_device(device), flip)
    mask = predictor.probability(picture, text) >= (
        predictor.threshold if threshold is None else threshold
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    mask_image(mask).save(out)
    console.print(f"wrote {out} ({mask.mean():.1%} of the image)")
    if overlay is not None:
        overlay.parent.mkdir(parents=True, exist_ok=True)
        overlay_image(picture, mask).save(overlay)
        console.print(f"wrote {overlay}")


if __name__ == "__main__":  # torchrun -m l2l_train.cli run ...
    app()
