"""Helpers of the fault-injection tests (``tests/reliability``): a small generate workspace,
the CLIs as subprocesses in their own process group, SIGKILL at a chosen moment, and a
snapshot of a prior store that two runs can be compared by.

Subprocesses run ``python -m pipeline.cli`` / ``-m l2l_train.cli`` with this checkout first on
``PYTHONPATH``, so they test the code under test even where the console scripts on ``PATH``
belong to another checkout.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
from trainer_workspace import params_dict, write_params

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent


def cli_env(**extra: str) -> dict[str, str]:
    """The environment of a CLI subprocess: this checkout importable, one thread, no wrapping."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO), str(TESTS), *filter(None, [env.get("PYTHONPATH")])]
    )
    env.setdefault("OMP_NUM_THREADS", "1")
    env["COLUMNS"] = "1000"  # rich would wrap error messages (and the paths in them) at 80
    env.update(extra)
    return env


def run_cli(module: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """``python -m module args...`` from the checkout's root, run to the end, output captured."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=cli_env(),
    )


def priors_cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "pipeline.cli", *args]


def train_cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "l2l_train.cli", *args]


# ----------------------------------------------------------------------------- workspace


def build_generate_workspace(root: Path, train_images: int = 40) -> Path:
    """A prepared and split synthetic dataset whose unlabelled split (~150 pairs) the
    simulated teacher covers in a second or two; small shards and batches, so a run makes
    many flushes a kill can land between. Returns ``root/params.yaml`` (priors under
    ``root/priors``: tests point ``paths.priors`` at their own folder with
    :func:`priors_variant`)."""
    from pipeline.config import load_pipeline_config
    from pipeline.datasets.manifest import read_manifest, write_manifest
    from pipeline.prepare import prepare_dataset
    from pipeline.split import partition, write_partition

    params = {
        "data": {
            "synthetic": {
                "train_images": train_images,
                "val_images": 2,
                "test_images": 2,
                "dir": str(root / "synthetic"),
            }
        },
        "split": {"labeled_ratio": 0.25},
        "priors": {"store": {"shard_rows": 8}, "mllm": {"batch_size": 4}, "splits": ["unlabeled"]},
        "paths": {name: str(root / name) for name in ("manifests", "priors", "models", "metrics")},
    }
    path = write_params(root, params)
    cfg = load_pipeline_config(path)
    prepared = prepare_dataset(cfg)
    write_manifest(prepared.samples, cfg.paths.samples, prepared.image_root)
    write_partition(partition(read_manifest(cfg.paths.samples), cfg.split), cfg.paths.partition)
    return path


def priors_variant(workspace: Path, folder: Path, **sections: dict[str, Any]) -> Path:
    """``folder/params.yaml``: the workspace's params with priors under ``folder/priors``."""
    params = params_dict(workspace)
    params["paths"] = {**params["paths"], "priors": str(folder / "priors")}
    return write_params(folder, params, **sections)


def load_cfg(params: Path):
    from pipeline.config import load_pipeline_config

    return load_pipeline_config(params)


# ----------------------------------------------------------------------------- processes


def start(argv: list[str], log: Path, **env: str) -> subprocess.Popen:
    """``argv`` in its own session (a kill of its group takes any children with it, as a
    node failure would), output to ``log`` (a pipe nobody reads could fill and stall it)."""
    with log.open("ab") as out:
        return subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=cli_env(**env),
            cwd=REPO,
        )


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL ``proc``'s process group and reap it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def run_to_end(argv: list[str], log: Path, timeout: float = 300, **env: str) -> float:
    """Run ``argv`` to completion; returns its wall time. Fails with the log's tail."""
    tick = time.monotonic()
    proc = start(argv, log, **env)
    try:
        proc.wait(timeout)
    finally:
        kill_group(proc)
    assert proc.returncode == 0, tail(log)
    return time.monotonic() - tick


def tail(log: Path, chars: int = 3000) -> str:
    return log.read_text(errors="replace")[-chars:] if log.exists() else ""


def kill_after(
    argv: list[str], delay: float, log: Path, anchor: Path | None = None, **env: str
) -> bool:
    """Start ``argv`` (environment ``env`` added) and SIGKILL its group ``delay`` seconds
    later, counted from when ``anchor`` appears if given (so a slow start on a loaded
    machine does not shift where the kill lands); True if it was still running then
    (False: it had finished, and must have succeeded)."""
    proc = start(argv, log, **env)
    try:
        if anchor is not None:
            while not anchor.exists() and proc.poll() is None:
                time.sleep(0.002)
        proc.wait(delay)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        return True
    assert proc.wait() == 0, tail(log)
    return False


# ----------------------------------------------------------------------------- stores


def store_snapshot(priors_dir: Path) -> dict[str, Any]:
    """Everything a prior store holds, keyed so that two runs compare equal exactly when
    they stored the same priors: per sample id its key, status and the raw bytes of prob,
    box and point (float16/float32, NaN-safe); the index entries; the cues rows."""
    import zarr

    from pipeline.store.layout import list_parts, part_index_path, part_zarr_path

    pairs, entries = {}, []
    for part in list_parts(priors_dir):
        index = pq.read_table(part_index_path(priors_dir, part)).to_pylist()
        group = zarr.open_group(part_zarr_path(priors_dir, part), mode="r")
        arrays = {name: group[name][: len(index)] for name in ("prob", "box", "point", "status")}
        for entry in index:
            row = entry["row"]
            entries.append((entry["sample_id"], entry["key"]))
            pairs[entry["sample_id"]] = (
                entry["key"],
                int(arrays["status"][row]),
                arrays["prob"][row].tobytes(),
                np.asarray(arrays["box"][row]).tobytes(),
                np.asarray(arrays["point"][row]).tobytes(),
            )
    cues_dir = priors_dir / "cues"
    cues = pq.read_table(cues_dir).to_pylist() if cues_dir.is_dir() else []
    return {
        "pairs": pairs,
        "entries": sorted(entries),
        "cues": sorted((c["sample_id"], c["key"], repr(c)) for c in cues),
    }


def leftovers(priors_dir: Path) -> list[str]:
    """Temp files, half-built parts and locks that a finished run must not leave behind."""
    patterns = ("*.tmp", "*.partial", "*.creating", "*.lock")
    return sorted(
        str(p.relative_to(priors_dir)) for pattern in patterns for p in priors_dir.rglob(pattern)
    )


# ----------------------------------------------------------------------------- training


STALLED = "STALLED"  # written beside the checkpoints when the stalled write is under way


def train_with_stalled_checkpoint(params: str, stall_at_step: int) -> None:
    """``l2l-train run --params params`` whose checkpoint of step ``stall_at_step`` writes half
    its bytes to the temp file, fsyncs them, marks ``STALLED`` and hangs there, for a test
    to SIGKILL it mid-write (run it in a subprocess: it patches ``torch.save``)."""
    import io

    import torch

    from l2l_train.cli import app

    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        if isinstance(obj, dict) and obj.get("step") == stall_at_step:
            buffer = io.BytesIO()
            real_save(obj, buffer, *args, **kwargs)
            f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
            f.flush()
            os.fsync(f.fileno())
            (Path(f.name).parent / STALLED).touch()
            time.sleep(3600)
        return real_save(obj, f, *args, **kwargs)

    torch.save = save
    app(["run", "--params", params], standalone_mode=False)


class RecordedLoader:
    """Iterates ``loader`` and appends ``(stream, fingerprint)`` of each batch to ``seen``:
    the fingerprint hashes every tensor's bytes and every string, so two runs drew the same
    samples, in the same order, with the same augmentations exactly when they match."""

    def __init__(self, loader, stream: str, seen: list[tuple[str, str]]):
        self.loader, self.stream, self.seen = loader, stream, seen

    def __iter__(self):
        for batch in self.loader:
            self.seen.append((self.stream, batch_fingerprint(batch)))
            yield batch


def batch_fingerprint(batch: dict) -> str:
    import hashlib

    import torch

    digest = hashlib.sha256()
    for name in sorted(batch):
        value = batch[name]
        digest.update(name.encode())
        if isinstance(value, torch.Tensor):
            digest.update(value.contiguous().numpy().tobytes())
        else:
            digest.update(repr(value).encode())
    return digest.hexdigest()[:16]


def torchrun(nproc: int, *args: str) -> list[str]:
    """``torchrun --standalone --nproc-per-node nproc -m ARGS`` with this interpreter."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        str(nproc),
        *args,
    ]


def check_two_worker_store(workspace: Path, tmp_path: Path, **env: str) -> None:
    """``torchrun`` two generate workers on one store: parts 0 and 1, disjoint, every pair
    once, and the same stored priors and cues as one process's run."""
    from pipeline.datasets.manifest import read_pairs
    from pipeline.generate import generate
    from pipeline.store.layout import list_parts, part_index_path

    params = priors_variant(workspace, tmp_path / "torchrun")
    log = tmp_path / "torchrun.txt"
    run_to_end(torchrun(2, "-m", "pipeline.cli", "generate", "--params", str(params)), log, **env)
    priors = Path(load_cfg(params).paths.priors)
    assert list_parts(priors) == [0, 1]
    ids = [
        pq.read_table(part_index_path(priors, p)).column("sample_id").to_pylist() for p in (0, 1)
    ]
    assert ids[0] and ids[1] and not set(ids[0]) & set(ids[1])
    pairs = read_pairs(load_cfg(params).paths, "unlabeled").column("sample_id").to_pylist()
    assert sorted(ids[0] + ids[1]) == sorted(pairs)  # every pair, once

    single = load_cfg(priors_variant(workspace, tmp_path / "single"))
    generate(single, "unlabeled")
    got, want = store_snapshot(priors), store_snapshot(Path(single.paths.priors))
    assert got == want
    assert leftovers(priors) == []


PLACEMENT_SCRIPT = """
import json, os, sys
import torch
from pipeline.config import resolve_placement
device, dtype = resolve_placement("cuda", "auto")
x = torch.ones(1, device=device)
with open(os.path.join(sys.argv[1], f"rank{os.environ['RANK']}.json"), "w") as fh:
    json.dump({"device": str(x.device), "dtype": dtype, "local_rank": os.environ["LOCAL_RANK"]}, fh)
"""
