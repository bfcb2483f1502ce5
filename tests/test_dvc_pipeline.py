"""`dvc repro` on a temp copy of the repo with the smoke profile: each stage reruns only when
its own code, data or params change, and the store computes only missing priors."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from l2l_train.figures import FIGURES

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def merge(base: dict, overrides: dict) -> dict:
    out = dict(base)
    for key, value in overrides.items():
        out[key] = merge(base.get(key, {}), value) if isinstance(value, dict) else value
    return out


def sh(*args: str, cwd: Path) -> str:
    env = {
        "PATH": f"{BIN}:/usr/bin:/bin",
        "HOME": str(cwd),
        "DVC_NO_ANALYTICS": "1",
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
    }
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(args)}\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


def stages_run(output: str) -> list[str]:
    return re.findall(r"Running stage '([^']+)'", output)


def repro(cwd: Path, *targets: str) -> list[str]:
    """Run `dvc repro` (of ``targets`` and what they need, or of everything); the stages it ran."""
    return stages_run(sh(str(BIN / "dvc"), "repro", *targets, cwd=cwd))


def stale(cwd: Path) -> set[str]:
    """Stages `dvc status` reports as changed."""
    return set(json.loads(sh(str(BIN / "dvc"), "status", "--json", cwd=cwd)))


def assert_reran(ran: list[str], *upstream: str) -> None:
    """``ran`` is ``upstream``, then train, then its two consumers in either order."""
    head = [*upstream, "train"]
    assert ran[: len(head)] == head and sorted(ran[len(head) :]) == ["evaluate", "figures"], ran


def set_param(cwd: Path, dotted: str, value) -> None:
    params = yaml.safe_load((cwd / "params.yaml").read_text())
    node = params
    *parents, leaf = dotted.split(".")
    for key in parents:
        node = node[key]
    node[leaf] = value
    (cwd / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def stored_pairs(cwd: Path) -> int:
    return sum(pq.read_metadata(p).num_rows for p in (cwd / "data/priors").glob("*.index.parquet"))


def eval_pairs(cwd: Path) -> int:
    """Pairs of the val and test splits (the smoke profile's priors cover them too)."""
    splits = pq.read_table(cwd / "data/manifests/samples.parquet", columns=["split"])
    return sum(split in ("val", "test") for split in splits["split"].to_pylist())


def unlabeled_pairs(cwd: Path) -> set[str]:
    part = pq.read_table(cwd / "data/manifests/partition.parquet").to_pylist()
    return {row["sample_id"] for row in part if row["role"] == "unlabeled"}


@pytest.fixture
def workspace(tmp_path) -> Path:
    """The repo's tracked files (as in the working tree) in a fresh git repo."""
    files = subprocess.run(
        ["git", "ls-files", "--cached"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for name in files:
        if (REPO / name).is_file():
            (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, tmp_path / name)
    for stale in ("dvc.lock",):
        (tmp_path / stale).unlink(missing_ok=True)
    params = merge(
        yaml.safe_load((REPO / "params.yaml").read_text()),
        yaml.safe_load((REPO / "profiles/smoke.yaml").read_text()),
    )
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh("git", "init", "-q", cwd=tmp_path)
    sh("git", "add", "-A", cwd=tmp_path)
    sh("git", "commit", "-qm", "workspace", cwd=tmp_path)
    return tmp_path


@pytest.mark.slow
def test_stages_rerun_only_on_their_own_inputs_and_experiments_compare(workspace):
    assert_reran(repro(workspace), "prepare", "split", "priors", "pretrain")
    assert repro(workspace) == []
    alone = json.loads((workspace / "data/metrics/eval.json").read_text())
    handed = json.loads((workspace / "data/metrics/eval_teacher.json").read_text())
    assert (alone["prior"], handed["prior"]) == ("none", "teacher")
    assert handed["splits"]["val"]["prior_coverage"] > 0
    figures = sorted(p.name for p in (workspace / "data/metrics/figures").glob("*.png"))
    assert figures == sorted(FIGURES.values())
    before, evaluated = unlabeled_pairs(workspace), eval_pairs(workspace)
    assert stored_pairs(workspace) == len(before) + evaluated

    # An experiment with another method (a training param) reruns only training and its two
    # consumers, not the teacher, and `dvc exp show` lists both runs' metrics.
    sh("git", "add", "-A", cwd=workspace)
    sh("git", "commit", "-qm", "baseline run", cwd=workspace)
    out = sh(str(BIN / "dvc"), "exp", "run", "-S", "train.method=supervised", cwd=workspace)
    assert_reran(stages_run(out))
    rows = json.loads(sh(str(BIN / "dvc"), "exp", "show", "--json", cwd=workspace))
    runs = [exp for row in rows for exp in [row, *(row.get("experiments") or [])]]
    methods = set()
    for run in runs:
        for revision in run.get("revs", [run]):
            data = revision.get("data") or {}
            params = (data.get("params") or {}).get("params.yaml", {}).get("data", {})
            metrics = (data.get("metrics") or {}).get("data/metrics/eval.json", {}).get("data")
            if params and metrics:
                methods.add(params["train"]["method"])
    assert methods == {"l2l", "supervised"}

    # The store's side, reproduced up to the priors stage only (training again would check
    # nothing new: train's dependence on the store shows as it going stale).
    # Fewer labels: more unlabelled pairs; the store computes only those not yet stored.
    set_param(workspace, "split.labeled_ratio", 0.1)
    assert repro(workspace, "priors") == ["split", "priors"]
    assert "train" in stale(workspace)
    after = unlabeled_pairs(workspace)
    assert len(after - before) > 0
    assert stored_pairs(workspace) == len(before) + len(after - before) + evaluated  # no pair twice

    # A new teacher config: new keys for every pair it covers, beside the old ones.
    set_param(workspace, "priors.simulated.seed", 1)
    assert repro(workspace, "priors") == ["priors"]
    assert stored_pairs(workspace) == len(before | after) + len(after) + 2 * evaluated
