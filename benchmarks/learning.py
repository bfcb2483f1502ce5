"""Does the segmentor learn the referring? Diagnostics of the supervised student (issue 11).

    .venv/bin/python benchmarks/learning.py [--labels 100] [--steps 1200] [--eval-every 300]
        [--image-size 64] [--prior none|teacher] [--model '{visual: {embed_dim: 48}}']

Trains the embedded default's segmentor, supervised, on the labelled pairs (``--labels 5``: the
default partition's; ``100``: every train pair) with everything held in memory (images decoded
once, the frozen text encoder's features cached), so a CPU-second buys as many steps as it
can, and reports at every ``--eval-every`` steps:

- the learning curve: val oIoU / mIoU, and the predicted/true foreground area ratio (above 1:
  the model over-predicts, e.g. lights up every shape);
- oIoU per expression kind (attribute, spatial, ordinal, relation), and attribute expressions
  split by whether they name a shape ("the hexagon") or only a colour and size;
- ``--per-image 2``: each batch holds pairs of the same image with different referents;
- the text-swap check: on val images with two referred objects, the model is given each
  object's expression in turn. ``moves``: 1 - IoU between the two predictions (0 = the text
  changes nothing); ``own_target``: fraction of predictions closer (IoU) to their own
  expression's object than to the other's.

``--target teacher``: every training pair's mask is replaced by its teacher prior binarised at
0.5 (pairs the teacher missed are dropped): how far the teacher's labels, used as plain
supervision with no SPM, RPLE or weak/strong views, take the same student.

``--prior teacher``: a model handed the teacher prior (labelled pairs with their prior, prior
dropout ``train.prior_dropout``), scored with and without it: the ceiling of the prior path.
``--checkpoint data/models/best.pt``: no training; the same figures for a model ``l2l-train
run`` trained (without and with the teacher prior), beside the teacher prior's own per-kind
oIoU: which kinds of expression the student has not learnt from its teacher. Also, per kind,
where each one's predictions land (``landing``): on the referent, on another of the scene's
shapes (a wrong choice: e.g. a rank counted wrong) or on the background (no shape found).
``--bypass counting`` (or ``context``, repeatable) scores the checkpoint with those trained
blocks knocked out (their tokens pass unchanged): what each kind of expression owes them.

Writes ``benchmarks/results/learning[_<tag>].json``. Data: ``--data`` (a pipeline data folder
with manifests/ and priors/), default a workspace built once under ``--work``. ``--work`` is
left a run folder of the trained model (``params.yaml``, ``models/latest.pt``) that
``fusion_sources.py``, ``--checkpoint`` and ``l2l-train eval`` read.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from common import REPO, RESULTS, describe_machine, merge_nested, synthetic_workspace, write_result

WORK = REPO / "benchmarks" / "work" / "learning"
KINDS = ("attribute", "spatial", "ordinal", "relation")


def load_split(params: Any, selection: str, size: int, store: Any) -> dict[str, Any]:
    """Every pair of a partition role or split, in memory at ``size`` px."""
    import pyarrow.parquet as pq

    from l2l_train.model import build_tokenizer
    from l2l_train.pairs import pair_source

    source = pair_source(params, selection, build_tokenizer(params.model.text), size, store)
    manifest = pq.read_table(Path(params.paths.manifests) / "samples.parquet")
    columns = {c: manifest[c].to_pylist() for c in ("sample_id", "expr_kind", "image_id")}
    kind_of = dict(zip(columns["sample_id"], columns["expr_kind"], strict=True))
    image_of = dict(zip(columns["sample_id"], columns["image_id"], strict=True))
    rows = range(len(source))
    priors = [source.prior(i) for i in rows]
    images: dict[str, torch.Tensor] = {}  # one decode per image, shared by its pairs
    for i in rows:
        if source.image_path[i] not in images:
            images[source.image_path[i]] = source.image(i)
    return {
        "image": torch.stack([images[source.image_path[i]] for i in rows]),
        "mask": torch.stack([source.mask(i) for i in rows]),
        "mask_original": [source.mask_original(i) for i in rows],
        "prior": torch.stack([p for p, _ in priors]),
        "prior_present": torch.tensor([ok for _, ok in priors]),
        "expression": list(source.expression),
        "kind": [kind_of[s] for s in source.sample_id],
        "image_id": [image_of[s] for s in source.sample_id],
        "ref_id": source.ref_id.tolist(),
    }


def predict(model, cache, data, rows, prior: bool, batch: int = 64) -> list[torch.Tensor]:
    """Foreground masks at each pair's original resolution (threshold 0.5)."""
    from l2l_train.evaluate import upsample_logits
    from l2l_train.pairs import normalize_images

    out = []
    model.eval()
    with torch.no_grad():
        for start in range(0, len(rows), batch):
            chunk = rows[start : start + batch]
            words, word_mask = cache.words([data["expression"][i] for i in chunk])
            logits = model(
                normalize_images(data["image"][chunk]),
                None,
                None,
                data["prior"][chunk] if prior else None,
                data["prior_present"][chunk] if prior else None,
                words=words,
                word_mask=word_mask,
            )
            for logit, i in zip(logits, chunk, strict=True):
                size = tuple(data["mask_original"][i].shape)
                out.append(upsample_logits(logit, size)[0] >= 0)
    model.train()
    return out


def oiou_by_kind(inter: np.ndarray, union: np.ndarray, kinds: np.ndarray) -> dict[str, float]:
    """oIoU of each expression kind present. Shapes: inter, union, kinds (N,), per pair."""
    return {
        k: float(inter[kinds == k].sum() / max(1, union[kinds == k].sum()))
        for k in KINDS
        if (kinds == k).any()
    }


LANDINGS = ("referent", "other_object", "background")


def scene_objects(params: Any, image_ids: set[int]) -> dict[int, list[torch.Tensor]]:
    """Every object's mask (original pixels, bool) of the synthetic scenes ``image_ids``,
    from the prepared ``objects.parquet``: what a prediction can land on besides its
    referent."""
    import pyarrow.parquet as pq

    from pipeline.datasets.manifest import decode_mask

    table = pq.read_table(Path(params.data.synthetic.dir) / "objects.parquet")
    masks: dict[int, list[torch.Tensor]] = {}
    for image, rle in zip(table["image_id"].to_pylist(), table["mask"].to_pylist(), strict=True):
        if image in image_ids:
            masks.setdefault(image, []).append(torch.from_numpy(decode_mask(rle)).bool())
    return masks


def landing(pred: torch.Tensor, gt: torch.Tensor, objects: list[torch.Tensor]) -> str:
    """Where a prediction lies: on the ``referent`` (the object holding most of its pixels is
    the one ``gt`` marks), on an ``other_object``, or on ``background`` (no pixel on any object,
    or none predicted). Shapes: pred, gt, objects[i] (H, W) bool."""
    on_object = [int((pred & mask).sum()) for mask in objects]
    if not objects or max(on_object) == 0:
        return "background"
    referent = max(range(len(objects)), key=lambda i: int((objects[i] & gt).sum()))
    return "referent" if int(np.argmax(on_object)) == referent else "other_object"


def landing_by_kind(
    preds: list[torch.Tensor], data: dict[str, Any], objects: dict[int, list[torch.Tensor]]
) -> dict[str, dict[str, float]]:
    """Share of each kind's pairs whose prediction lands on each of :data:`LANDINGS`: a miss on
    another object is a wrong choice among the shapes (a rank counted wrong); one on the
    background, a failure to find a shape at all."""
    found = np.array(
        [
            landing(pred, gt.bool(), objects[image])
            for pred, gt, image in zip(preds, data["mask_original"], data["image_id"], strict=True)
        ]
    )
    kinds = np.array(data["kind"])
    selections = {"all": np.ones(len(kinds), dtype=bool)}
    selections |= {kind: kinds == kind for kind in KINDS if (kinds == kind).any()}
    return {
        name: {where: float((found[sel] == where).mean()) for where in LANDINGS}
        for name, sel in selections.items()
    }


def scores(model, cache, val, prior: bool, objects=None) -> dict[str, Any]:
    """Curve figures, per-kind oIoU and the text-swap check on ``val``; with ``objects``
    (:func:`scene_objects`), also where the predictions land (:func:`landing_by_kind`)."""
    from pipeline.datasets.synthetic_scenes import SHAPES

    rows = list(range(len(val["expression"])))
    preds = predict(model, cache, val, rows, prior)
    gts = [m.bool() for m in val["mask_original"]]
    inter = np.array([(p & g).sum().item() for p, g in zip(preds, gts, strict=True)])
    union = np.array([(p | g).sum().item() for p, g in zip(preds, gts, strict=True)])
    area = sum(p.sum().item() for p in preds) / max(1, sum(g.sum().item() for g in gts))
    kinds = np.array(val["kind"])
    per_kind = oiou_by_kind(inter, union, kinds)
    # Attribute expressions by what decides them: a shape's name ("the circle", "the small
    # hexagon") or colour and size alone ("the red shape"). A student that has not learnt the
    # shape categories fails the first and not the second.
    names_shape = np.array([bool(set(e.split()) & set(SHAPES)) for e in val["expression"]])
    attribute = kinds == "attribute"
    per_attribute = {
        name: float(inter[attribute & sel].sum() / max(1, union[attribute & sel].sum()))
        for name, sel in (("names_shape", names_shape), ("colour_size_only", ~names_shape))
        if (attribute & sel).any()
    }
    # Text swap: the first two refs of each image with two or more, one expression each.
    moves, own = [], []
    for refs in rows_by_image_and_ref(val):
        for a, b in itertools.combinations([rows[0] for rows in refs[:2]], 2):
            pa, pb = preds[a], preds[b]
            moves.append(1 - (pa & pb).sum().item() / max(1, (pa | pb).sum().item()))
            for p, mine, other in ((pa, gts[a], gts[b]), (pb, gts[b], gts[a])):
                iou = [(p & g).sum().item() / max(1, (p | g).sum().item()) for g in (mine, other)]
                own.append(iou[0] > iou[1])
    result = {
        "oIoU": float(inter.sum() / max(1, union.sum())),
        "mIoU": float(np.mean(inter / np.maximum(union, 1))),
        "area_ratio": area,
        "oIoU_per_kind": per_kind,
        "attribute_oIoU": per_attribute,
        "text_swap": {
            "pairs": len(moves),
            "moves": float(np.mean(moves)) if moves else None,
            "own_target": float(np.mean(own)) if own else None,
        },
    }
    if objects is not None:
        result["landing"] = landing_by_kind(preds, val, objects)
    return result


def prior_scores(data: dict[str, Any], objects: dict[int, list[torch.Tensor]]) -> dict[str, Any]:
    """oIoU of the teacher prior itself, as ``l2l-priors report`` scores it (resized to the
    original size, threshold 0.5; a pair without a prior predicts nothing), overall and per
    expression kind, and where it lands (:func:`landing_by_kind`)."""
    from pipeline.contract import resize_prob
    from pipeline.report import prior_intersection_union

    counts = [
        prior_intersection_union(prior[0].numpy() if present else None, gt.numpy())
        for prior, present, gt in zip(
            data["prior"], data["prior_present"], data["mask_original"], strict=True
        )
    ]
    inter, union = (np.array(column) for column in zip(*counts, strict=True))
    kinds = np.array(data["kind"])
    masks = [
        torch.from_numpy(resize_prob(prior[0].numpy(), tuple(gt.shape)) >= 0.5) & bool(present)
        for prior, present, gt in zip(
            data["prior"], data["prior_present"], data["mask_original"], strict=True
        )
    ]
    return {
        "oIoU": float(inter.sum() / max(1, union.sum())),
        "oIoU_per_kind": oiou_by_kind(inter, union, kinds),
        "pairs_per_kind": {k: int((kinds == k).sum()) for k in KINDS},
        "landing": landing_by_kind(masks, data, objects),
    }


class Bypass(torch.nn.Module):
    """A block knocked out of a trained segmentor: tokens (B, N, C) on a grid pass unchanged."""

    def forward(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        return tokens


BYPASSABLE = ("context", "counting")


def bypass_blocks(model: torch.nn.Module, names: Sequence[str]) -> None:
    """Replace every stage's block of each of ``names`` (:data:`BYPASSABLE`: the segmentor's
    ``context`` and ``counting`` module dicts) by :class:`Bypass`, in place."""
    for name in names:
        blocks = getattr(model, name)
        setattr(model, name, torch.nn.ModuleDict({stage: Bypass() for stage in blocks}))


def checkpoint_scores(
    path: Path, params: Any, store: Any, bypass: Sequence[str] = ()
) -> dict[str, Any]:
    """:func:`scores` of a trained checkpoint on the val split, without and with the teacher
    prior, and :func:`prior_scores` of the prior; with ``bypass``, those blocks knocked out
    (:func:`bypass_blocks`)."""
    from l2l_train.checkpoint import load_checkpoint
    from l2l_train.evaluate import model_from_checkpoint
    from l2l_train.model import build_tokenizer
    from l2l_train.text_cache import FrozenTextCache

    model, model_cfg, size = model_from_checkpoint(load_checkpoint(path))
    bypass_blocks(model, bypass)
    val = load_split(params, params.eval.val_split, size, store)
    cache = FrozenTextCache(model.text, build_tokenizer(model_cfg.text), torch.device("cpu"))
    objects = scene_objects(params, set(val["image_id"]))
    return {
        "checkpoint": str(path),
        "bypassed": list(bypass),
        "val_pairs": len(val["expression"]),
        "none": scores(model, cache, val, prior=False, objects=objects),
        "teacher": scores(model, cache, val, prior=True, objects=objects),
        "prior": prior_scores(val, objects),
    }


def teacher_labelled(data: dict[str, Any]) -> dict[str, Any]:
    """``data``'s pairs that have a teacher prior, with the prior binarised at 0.5 as the mask
    (in the input frame; ``mask_original`` is left as it was: training does not read it)."""
    keep = data["prior_present"].nonzero().flatten().tolist()
    out = {k: [v[i] for i in keep] if isinstance(v, list) else v[keep] for k, v in data.items()}
    out["mask"] = (out["prior"][:, 0] >= 0.5).to(out["mask"].dtype)
    return out


def rows_by_image_and_ref(data: dict[str, Any]) -> list[list[list[int]]]:
    """Per image, per referred object, the rows of its expressions."""
    groups: dict[int, dict[int, list[int]]] = {}
    for row, (image, ref) in enumerate(zip(data["image_id"], data["ref_id"], strict=True)):
        groups.setdefault(image, {}).setdefault(ref, []).append(row)
    return [list(refs.values()) for refs in groups.values()]


def same_image_rows(
    by_image: list[list[list[int]]], batch: int, per_image: int, generator: torch.Generator
) -> torch.Tensor:
    """``batch`` rows, ``per_image`` from each of ``batch / per_image`` random images, each
    from a different referred object where the image has enough: the batch then holds the
    same picture under different expressions, which only the text tells apart."""
    rows = []
    images = torch.randint(len(by_image), (batch // per_image,), generator=generator)
    for image in images.tolist():
        refs = by_image[image]
        order = torch.randperm(len(refs), generator=generator).tolist()
        for k in range(per_image):
            pairs = refs[order[k % len(refs)]]
            rows.append(pairs[int(torch.randint(len(pairs), (1,), generator=generator))])
    return torch.tensor(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--labels", type=int, choices=(5, 100), default=100)
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--eval-every", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument(
        "--per-image",
        type=int,
        default=1,
        help="pairs drawn from each image of a batch (1: independent pairs; 2+: the same "
        "image under different referred objects' expressions)",
    )
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--prior", choices=("none", "teacher"), default="none")
    parser.add_argument(
        "--target",
        choices=("gt", "teacher"),
        default="gt",
        help="training masks: ground truth, or the teacher prior binarised at 0.5",
    )
    parser.add_argument("--model", type=yaml.safe_load, default={}, help="model.* overrides")
    parser.add_argument("--train", type=yaml.safe_load, default={}, help="train.* overrides")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--data", type=Path, help="a pipeline data folder's params.yaml")
    parser.add_argument("--work", type=Path, default=WORK)
    parser.add_argument("--tag", default="", help="suffix of the result file")
    parser.add_argument(
        "--checkpoint",
        type=Path,
        help="score this trained checkpoint instead of training (with --data, its data folder)",
    )
    parser.add_argument(
        "--bypass",
        action="append",
        choices=BYPASSABLE,
        default=[],
        help="with --checkpoint: knock out these trained blocks (tokens pass unchanged)",
    )
    parser.add_argument(
        "--out", type=Path, help="result file (default: results/learning[_tag].json)"
    )
    args = parser.parse_args(argv)
    if args.bypass and not args.checkpoint:
        parser.error("--bypass knocks blocks out of a trained model: it needs --checkpoint")
    if args.threads:
        torch.set_num_threads(args.threads)

    from l2l_train.augment import flip_expression
    from l2l_train.config import load_trainer_params
    from l2l_train.losses import supervised_loss
    from l2l_train.model import build_segmentor, build_tokenizer
    from l2l_train.pairs import normalize_images, open_teacher_store
    from l2l_train.step import prior_keep
    from l2l_train.text_cache import FrozenTextCache
    from l2l_train.trainer import lr_factor

    data_params = args.data or args.work / "data" / "params.yaml"
    if not data_params.is_file():
        synthetic_workspace(data_params.parent, {})
    base = yaml.safe_load((REPO / "params.yaml").read_text())
    # The data folder's own dataset, teacher and paths: its priors are stored under its teacher.
    data_folder = yaml.safe_load(data_params.read_text())
    # A supervised run of its own: its model goes under --work, not the data folder's models.
    paths = {**data_folder["paths"], "models": str(args.work / "models")}
    merged = merge_nested(
        base,
        {
            "model": args.model,
            "train": {
                "method": "supervised",
                **args.train,
                "image_size": args.image_size,
                "lr": args.lr,
                "batch_size_x": args.batch_size,
            },
            **{section: data_folder[section] for section in ("data", "priors")},
            "paths": paths,
        },
    )
    params_path = args.work / "params.yaml"
    args.work.mkdir(parents=True, exist_ok=True)
    params_path.write_text(yaml.safe_dump(merged))
    params = load_trainer_params(params_path)
    store = open_teacher_store(params)
    out = args.out or RESULTS / f"learning{'_' + args.tag if args.tag else ''}.json"
    if args.checkpoint:
        result = checkpoint_scores(args.checkpoint, params, store, args.bypass)
        print(json.dumps(result, indent=1))
        write_result(
            out,
            {"benchmark": "learning", "machine": describe_machine(torch.device("cpu")), **result},
        )
        return
    tick = time.perf_counter()
    train = load_split(params, "labeled", args.image_size, store)
    if args.labels == 100:
        unlabeled = load_split(params, "unlabeled", args.image_size, store)
        train = {
            k: v + unlabeled[k] if isinstance(v, list) else torch.cat([v, unlabeled[k]])
            for k, v in train.items()
        }
    if args.target == "teacher":
        train = teacher_labelled(train)
    val = load_split(params, params.eval.val_split, args.image_size, store)
    load_s = time.perf_counter() - tick

    torch.manual_seed(params.train.seed)
    model = build_segmentor(params.model).train()
    cache = FrozenTextCache(model.text, build_tokenizer(params.model.text), torch.device("cpu"))
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=args.lr, weight_decay=params.train.weight_decay)
    poly = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, args.steps, params.train)
    )
    generator = torch.Generator().manual_seed(params.train.seed)
    with_prior = args.prior == "teacher"
    by_image = rows_by_image_and_ref(train)
    curve, n, tick = [], len(train["expression"]), time.perf_counter()
    train_s = 0.0
    for step in range(1, args.steps + 1):
        rows = (
            torch.randint(n, (args.batch_size,), generator=generator)
            if args.per_image == 1
            else same_image_rows(by_image, args.batch_size, args.per_image, generator)
        )
        flip = torch.rand(args.batch_size, generator=generator) < params.train.augment.flip_prob
        images = torch.where(
            flip[:, None, None, None], train["image"][rows].flip(-1), train["image"][rows]
        )
        masks = torch.where(flip[:, None, None], train["mask"][rows].flip(-1), train["mask"][rows])
        priors = torch.where(
            flip[:, None, None, None], train["prior"][rows].flip(-1), train["prior"][rows]
        )
        texts = [
            flip_expression(train["expression"][r]) if f else train["expression"][r]
            for r, f in zip(rows.tolist(), flip.tolist(), strict=True)
        ]
        present = train["prior_present"][rows]
        present &= prior_keep(generator, args.batch_size, 0, params.train)
        words, word_mask = cache.words(texts)
        logits = model(
            normalize_images(images),
            None,
            None,
            priors if with_prior else None,
            present if with_prior else None,
            words=words,
            word_mask=word_mask,
        )
        loss = supervised_loss(logits, masks, params.train.loss)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, params.train.grad_clip)
        optimizer.step()
        poly.step()
        if step % args.eval_every == 0 or step == args.steps:
            train_s += time.perf_counter() - tick
            point = {
                "step": step,
                "samples": step * args.batch_size,
                "train_s": train_s,
                "loss": loss.item(),
            }
            point["none"] = scores(model, cache, val, prior=False)
            if with_prior:
                point["teacher"] = scores(model, cache, val, prior=True)
            curve.append(point)
            print(json.dumps(point), flush=True)
            tick = time.perf_counter()

    result = {
        "benchmark": "learning",
        "machine": describe_machine(torch.device("cpu")),
        "threads": torch.get_num_threads(),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "train_pairs": n,
        "val_pairs": len(val["expression"]),
        "load_s": load_s,
        "samples_per_s": args.steps * args.batch_size / train_s,
        "curve": curve,
    }
    save_run(model, params, args.steps)
    write_result(out, result)


def save_run(model: torch.nn.Module, params: Any, steps: int) -> None:
    """The trained model as ``l2l-train run`` leaves a checkpoint (weights, step, config), at
    ``paths.models/latest.pt``; the run's ``params.yaml`` already lies beside it."""
    from l2l_train.checkpoint import save_checkpoint
    from pipeline.config import to_dict

    state = {"model": model.state_dict(), "step": steps, "config": to_dict(params)}
    save_checkpoint(Path(params.paths.models) / "latest.pt", state)


if __name__ == "__main__":
    main()
