"""`dvc.yaml` cannot drift from the code: each stage's code deps are exactly the import closure
of the CLI command it runs, and its params cover what that command's results depend on (as
the code's own identities define it: the teacher identity that keys every prior, the run
identity a checkpoint resumes under), without the runtime-only keys that change nothing but
speed, devices or logging (marked in the config dataclasses).

The closure is read from the source (ast), starting at the typer command's function: the CLI
module's top-level imports plus the imports inside that function, then every import (at any
depth: heavy imports sit inside the functions that need them) of every project module reached.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import re
from collections.abc import Iterable
from pathlib import Path

import pytest
import yaml

from l2l_train.checkpoint import flatten, run_identity
from l2l_train.config import TrainerParams
from l2l_train.model.pretrained import RESNET_ARCHITECTURE
from pipeline.config import runtime_only_keys, to_dict
from pipeline.contract import teacher_identity

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "l2l_train")
ENTRY_POINTS = {"l2l-priors": "pipeline.cli", "l2l-train": "l2l_train.cli"}
_COMMAND = re.compile(r"^(l2l-priors|l2l-train)\s+([\w-]+)")


def module_file(name: str, root: Path = REPO) -> Path | None:
    """The source file of project module ``name`` (a package's ``__init__.py``), or None."""
    if name.split(".")[0] not in PACKAGES:
        return None
    base = root.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def imported_modules(node: ast.AST, package: str, root: Path = REPO) -> set[str]:
    """Project modules imported anywhere under ``node``, with their parent packages (importing
    ``a.b.c`` runs ``a/__init__.py`` and ``a/b/__init__.py`` too). ``package``: the importing
    module's package, for relative imports."""
    names: set[str] = set()
    for child in ast.walk(node):
        if isinstance(child, ast.Import):
            names.update(alias.name for alias in child.names)
        elif isinstance(child, ast.ImportFrom):
            base = child.module or ""
            if child.level:
                parent = package.split(".")[: len(package.split(".")) - child.level + 1]
                base = ".".join([*parent, base] if base else parent)
            names.add(base)
            # `from pkg import mod` imports the submodule pkg.mod
            names.update(f"{base}.{alias.name}" for alias in child.names)
    found = set()
    for name in names:
        if module_file(name, root) is None:
            continue
        parts = name.split(".")
        found.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return {name for name in found if module_file(name, root) is not None}


def import_closure(start: Iterable[str], root: Path = REPO) -> set[str]:
    """Every project module reachable from ``start`` through imports at any depth."""
    todo, seen = list(start), set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        path = module_file(name, root)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        todo.extend(imported_modules(ast.parse(path.read_text()), package, root) - seen)
    return seen


def command_modules(cli_module: str, command: str, root: Path = REPO) -> set[str]:
    """Modules the typer ``command`` of ``cli_module`` runs: the CLI module, its top-level
    imports and the imports inside the command's function, and their closure."""
    app = importlib.import_module(cli_module).app
    names = {
        (info.name or info.callback.__name__.replace("_", "-")): info.callback.__name__
        for info in app.registered_commands
    }
    if command not in names:
        raise KeyError(f"{cli_module} has no command {command!r} (it has {sorted(names)})")
    path = module_file(cli_module, root)
    tree = ast.parse(path.read_text())
    package = cli_module.rpartition(".")[0]
    start: set[str] = set()
    for node in tree.body:
        top_level_import = isinstance(node, ast.Import | ast.ImportFrom)
        if top_level_import or (isinstance(node, ast.FunctionDef) and node.name == names[command]):
            start |= imported_modules(node, package, root)
    # The CLI module itself is not followed further: its other commands' imports are theirs.
    return {cli_module} | import_closure(start - {cli_module}, root)


def stage_commands(stage: dict) -> list[tuple[str, str]]:
    """(cli module, command) of each of a stage's ``cmd`` lines."""
    cmds = stage["cmd"] if isinstance(stage["cmd"], list) else [stage["cmd"]]
    found = []
    for cmd in cmds:
        match = _COMMAND.match(cmd.strip())
        assert match, f"cmd {cmd!r} is not an l2l-priors/l2l-train command"
        found.append((ENTRY_POINTS[match.group(1)], match.group(2)))
    return found


def holds_code(path: Path) -> bool:
    """False for a file of nothing but a docstring (a package marker): editing it cannot
    change a result."""
    body = ast.parse(path.read_text()).body
    docstring = (
        bool(body) and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
    )
    return len(body) > int(docstring)


def code_files(modules: Iterable[str], root: Path = REPO) -> set[str]:
    """Repo-relative source files of ``modules`` that hold code."""
    paths = (module_file(name, root) for name in modules)
    return {path.relative_to(root).as_posix() for path in paths if holds_code(path)}


def code_deps(stage: dict) -> list[str]:
    return [d for d in stage.get("deps", []) if d.split("/")[0] in PACKAGES]


def covers(dep: str, file: str) -> bool:
    return file == dep or file.startswith(dep.rstrip("/") + "/")


def dep_drift(stage: dict, root: Path = REPO) -> tuple[list[str], list[str]]:
    """(files the stage's commands import that no dep covers, code deps that cover none)."""
    modules = set().union(*(command_modules(m, c, root) for m, c in stage_commands(stage)))
    needed, deps = code_files(modules, root), code_deps(stage)
    missing = sorted(f for f in needed if not any(covers(d, f) for d in deps))
    unused = sorted(d for d in deps if not any(covers(d, f) for f in needed))
    return missing, unused


def covered(key: str, listed: Iterable[str]) -> bool:
    """Whether a DVC params entry (a key or a whole section) covers dotted ``key``."""
    return any(key == entry or key.startswith(entry + ".") for entry in listed)


def teacher_keys() -> set[str]:
    """The ``priors.*`` keys of the teacher identity, for every kind of teacher."""
    priors = TrainerParams().priors
    keys = set()
    for kind in ("simulated", "qwen-sam2", "imported"):
        identity = teacher_identity(dataclasses.replace(priors, teacher=kind))
        # Not params: the version, and the weights' fingerprint (of mllm.path's and
        # sam2.checkpoint's contents; those keys are params).
        keys |= {
            f"priors.{k}"
            for k in flatten(identity)
            if k != "version" and not k.startswith("weights.")
        }
    return keys


def section_keys(*sections: str) -> set[str]:
    """Every leaf key of ``sections`` of the default params."""
    flat = flatten(to_dict(TrainerParams()))
    return {k for k in flat if k.split(".")[0] in sections}


def result_keys() -> dict[str, set[str]]:
    """Per stage, the params keys its results depend on (runtime-only keys are left out
    below). data and split reach the later stages through the files they write, which are
    those stages' deps."""
    run = {
        k for k in flatten(run_identity(TrainerParams())) if k.split(".")[0] in ("model", "train")
    }
    # What a training run reports and keeps: validation (best.pt), with or without priors.
    validation = {"eval.prior", "eval.val_split", "eval.every_epochs", "eval.threshold"}
    return {
        "prepare": section_keys("data"),
        # The scenes it parses (the synthetic world's settings) and the weight shapes it writes.
        "pretrain": section_keys("pretrain")
        | {k for k in section_keys("data") if k.startswith("data.synthetic.")}
        | {f"model.visual.{name}" for name in ("kind", *RESNET_ARCHITECTURE)},
        "split": section_keys("split"),
        "priors": section_keys("priors"),
        "train": run | teacher_keys() | validation,
        "evaluate": section_keys("eval") | teacher_keys(),
        "figures": section_keys("figures") | {"eval.val_split"} | teacher_keys(),
    }


STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
RUNTIME_ONLY = runtime_only_keys(TrainerParams)


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_code_deps_are_the_import_closure_of_its_commands(name):
    missing, unused = dep_drift(STAGES[name])
    assert not missing, f"stage {name}: add to deps (imported by its command): {missing}"
    assert not unused, f"stage {name}: remove from deps (its command never imports): {unused}"


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_params_cover_its_results_and_no_runtime_only_key(name):
    listed = [p for p in STAGES[name].get("params", []) if not p.startswith("paths.")]
    runtime = sorted(k for k in RUNTIME_ONLY if covered(k, listed))
    assert not runtime, f"stage {name}: runtime-only keys would rerun it: {runtime}"
    needed = result_keys()[name] - RUNTIME_ONLY
    missing = sorted(k for k in needed if not covered(k, listed))
    assert not missing, f"stage {name}: add to params (its results depend on them): {missing}"


def test_stage_params_exist_in_params_yaml():
    params = flatten(yaml.safe_load((REPO / "params.yaml").read_text()))
    for name, stage in STAGES.items():
        absent = [p for p in stage.get("params", []) if not any(covered(k, [p]) for k in params)]
        assert not absent, f"stage {name}: params not in params.yaml: {absent}"


def test_the_drift_check_sees_a_missing_and_an_extra_dep():
    stage = dict(STAGES["split"])
    stage["deps"] = [d for d in stage["deps"] if d != "pipeline/split.py"] + ["pipeline/report.py"]
    missing, unused = dep_drift(stage)
    assert "pipeline/split.py" in missing and unused == ["pipeline/report.py"]


def test_closure_follows_imports_inside_functions(tmp_path):
    """A heavy import inside a function is still a dependency; an unrelated module is not."""
    pkg = tmp_path / "pipeline"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from pipeline import b\n")
    (pkg / "b.py").write_text("from pipeline.c import g\n")
    (pkg / "c.py").write_text("def g():\n    import torch\n")
    (pkg / "d.py").write_text("")
    assert import_closure({"pipeline.a"}, tmp_path) == {
        "pipeline",
        "pipeline.a",
        "pipeline.b",
        "pipeline.c",
    }


def test_train_starts_from_what_the_pretrain_stage_writes():
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    assert params["model"]["visual"]["path"] == params["pretrain"]["out"]
    assert "${pretrain.out}" in STAGES["train"]["deps"]
    assert STAGES["pretrain"]["outs"] == ["${pretrain.out}"]
