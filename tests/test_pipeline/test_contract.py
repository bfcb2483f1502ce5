"""The contract between the halves: one resize, one IoU core, keys that say what they affect,
and an import graph without circles."""

import ast
import dataclasses
from pathlib import Path

import numpy as np
import torch

from l2l_train.config import TrainerParams
from pipeline.config import (
    PARAMS_SECTIONS,
    MLLMConfig,
    PipelineConfig,
    SAM2Config,
    runtime_only_keys,
)
from pipeline.contract import intersection_union, resize_prob

REPO = Path(__file__).resolve().parents[2]


def test_runtime_only_keys_are_marked_once_for_both_halves():
    keys = runtime_only_keys(TrainerParams)
    # Speed, devices and logging (a resumed run may change them; the teacher identity and the
    # DVC stages' params leave them out).
    assert {k for k in keys if not k.startswith("priors.")} == {
        "eval.batch_size",
        "data.workers",
        "data.verify_images",
        "train.num_workers",
        "train.loader_cache_mb",
        "train.log_every",
        "train.checkpoint_every_steps",
        "train.device",
        "train.amp",
        "train.amp_cpu",
        "pretrain.workers",
    }
    # What the teacher identity leaves out.
    assert {k for k in keys if k.startswith("priors.")} == {
        "priors.mllm.batch_size",
        "priors.mllm.attn_implementation",
        "priors.mllm.device",
        "priors.sam2.device",
    }
    assert runtime_only_keys(MLLMConfig) == {"batch_size", "attn_implementation", "device"}
    assert runtime_only_keys(SAM2Config) == {"device"}


def test_params_sections_are_the_roots_fields():
    assert [f.name for f in dataclasses.fields(TrainerParams)] == list(PARAMS_SECTIONS)
    assert [f.name for f in dataclasses.fields(PipelineConfig)] == [
        s for s, owner in PARAMS_SECTIONS.items() if owner == "pipeline"
    ]


def test_intersection_union_numpy_and_torch_agree():
    pred = np.array([[[1, 1], [0, 0]], [[0, 0], [0, 0]]], bool)
    gt = np.array([[[1, 0], [1, 0]], [[0, 0], [0, 0]]], bool)
    inter, union = intersection_union(pred, gt)
    assert inter.tolist() == [1, 0] and union.tolist() == [3, 0]
    t_inter, t_union = intersection_union(torch.from_numpy(pred), torch.from_numpy(gt))
    assert t_inter.dtype == torch.int64
    assert t_inter.tolist() == [1, 0] and t_union.tolist() == [3, 0]


def test_resize_prob_keeps_equal_frames_and_antialiases_only_when_asked():
    prob = np.random.default_rng(0).random((8, 8)).astype(np.float32)
    assert resize_prob(prob, (8, 8)) is prob
    smooth, sampled = resize_prob(prob, (3, 3)), resize_prob(prob, (3, 3), antialias=False)
    assert smooth.shape == sampled.shape == (3, 3) and not np.array_equal(smooth, sampled)
    assert smooth.dtype == np.float32 and smooth.min() >= 0 and smooth.max() <= 1


def _imports(path: Path) -> set[str]:
    """The pipeline modules ``path`` imports, at any depth of its code."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return {m for m in found if m.split(".")[0] in ("pipeline", "l2l_train")}


def _module(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def assert_no_import_circle(graph: dict[str, set[str]]) -> None:
    """Fails naming the circle when a module reaches itself through its imports."""

    def visit(module: str, path: tuple[str, ...]) -> None:
        assert module not in path, " -> ".join((*path, module))
        for dep in graph.get(module, ()):
            visit(dep, (*path, module))

    for module in graph:
        visit(module, ())


def test_pipeline_has_no_import_circle_and_the_contract_is_a_leaf():
    graph = {_module(p): _imports(p) for p in (REPO / "pipeline").rglob("*.py")}
    assert not any(m.startswith("l2l_train") for deps in graph.values() for m in deps)
    assert graph["pipeline.contract"] <= {"pipeline.config"}

    assert_no_import_circle(graph)


def test_the_trainer_imports_only_the_contract_config_store_reader_and_manifest():
    """The trainer reads the pipeline's outputs through the contract (statuses, keys, teacher
    identity, resize, IoU), the config and its loader, the store's reader and the manifest's
    readers; the CLI plumbing is shared. Nothing of generation, teachers or the writer; one
    exception: ``l2l-train pretrain`` draws its own scenes of the synthetic world (a stream
    no split holds), so it renders them with the dataset's scene code."""
    allowed = {
        "pipeline.contract",
        "pipeline.config",
        "pipeline.schema",
        "pipeline.store.reader",
        "pipeline.datasets.manifest",
        "pipeline.cli_support",
    }
    own_scenes = {"l2l_train/pretrain.py": {"pipeline.datasets.synthetic_scenes"}}
    for path in (REPO / "l2l_train").rglob("*.py"):
        name = path.relative_to(REPO).as_posix()
        used = {m for m in _imports(path) if m.startswith("pipeline")}
        extra = used - allowed - own_scenes.get(name, set())
        assert not extra, f"{name} imports {sorted(extra)}"


def test_the_trainer_has_no_import_circle():
    graph = {_module(p): _imports(p) for p in (REPO / "l2l_train").rglob("*.py")}

    assert_no_import_circle(graph)
