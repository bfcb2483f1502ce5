"""Bad params through both command-line tools: one clean line naming the key, no traceback;
and the teacher identity's fingerprint of the weights' contents."""

import dataclasses
from pathlib import Path

import pytest
import yaml
from fault_injection import run_cli

from pipeline.config import PriorsConfig, load_pipeline_config
from pipeline.contract import teacher_hash, teacher_identity, weights_fingerprint

REPO = Path(__file__).resolve().parents[2]


CASES = {
    "unknown key": ("split: {labeld_ratio: 0.1}\n", 2, "split.labeld_ratio: unknown key"),
    "wrong type": (
        "priors: {store: {shard_rows: many}}\n",
        2,
        "priors.store.shard_rows: expected an int",
    ),
    "ratio out of range": (
        "split: {labeled_ratio: 1.5}\n",
        2,
        "split.labeled_ratio: expected a float in (0, 1), got 1.5",
    ),
    "not YAML": ("split: {labeled_ratio: [0.1\n", 2, "not valid YAML at line"),
    "weights path nowhere": (
        "priors: {teacher: qwen-sam2, mllm: {path: /nowhere/qwen}}\n",
        1,
        "priors.mllm.path: /nowhere/qwen not found",
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("module", "command"), [("pipeline.cli", "generate"), ("l2l_train.cli", "run")]
)
@pytest.mark.parametrize("case", CASES)
def test_bad_params_give_one_line_naming_the_key(tmp_path, module, command, case):
    text, code, message = CASES[case]
    params = tmp_path / "params.yaml"
    paths = {n: str(tmp_path / n) for n in ("prepared", "manifests", "priors", "models")}
    params.write_text(text + yaml.safe_dump({"paths": paths}))
    result = run_cli(module, command, "--params", str(params), timeout=300)
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    # A progress bar already on screen stays there (its last frame), the error under it.
    lines = [line for line in result.stderr.splitlines() if line.strip() and "━" not in line]
    assert len(lines) == 1 and message in lines[0], result.stderr


# ----------------------------------------------------------------------------- fingerprint


def test_default_simulated_teacher_keeps_its_hash():
    cfg = load_pipeline_config(REPO / "params.yaml")
    assert teacher_hash(cfg.priors) == "0dc735b1eba8363d"
    assert "weights" not in teacher_identity(cfg.priors)


def _weights(folder: Path) -> Path:
    folder.mkdir()
    (folder / "config.json").write_text('{"hidden_size": 64}')
    (folder / "model.safetensors").write_bytes(bytes(range(256)) * 20000)  # ~5 MB
    (folder / "README.md").write_text("docs")
    (folder / ".cache").mkdir()
    (folder / ".cache" / "download.lock").write_text("x")
    return folder


def _qwen(path: Path, checkpoint: Path | None = None) -> PriorsConfig:
    base = PriorsConfig(teacher="qwen-sam2")
    return dataclasses.replace(
        base,
        mllm=dataclasses.replace(base.mllm, path=str(path)),
        sam2=dataclasses.replace(base.sam2, checkpoint=str(checkpoint) if checkpoint else None),
    )


def test_new_weights_at_the_same_path_change_the_teacher_hash(tmp_path):
    folder = _weights(tmp_path / "qwen")
    sam2 = tmp_path / "sam2.pt"
    sam2.write_bytes(b"\0" * 3_000_000)
    before = teacher_hash(_qwen(folder, sam2))
    # Documentation and hidden files do not count; a rerun of the same files is the same.
    (folder / "README.md").write_text("other docs")
    (folder / ".cache" / "download.lock").write_text("y")
    assert teacher_hash(_qwen(folder, sam2)) == before

    for change in (
        lambda: (folder / "config.json").write_text('{"hidden_size": 65}'),
        lambda: (folder / "model.safetensors").write_bytes(b"\1" + bytes(range(256)) * 20000),
        lambda: (folder / "model-00002.safetensors").write_bytes(b"more"),
        lambda: sam2.write_bytes(b"\0" * 2_999_999 + b"\1"),  # only the last MiB differs
    ):
        change()
        after = teacher_hash(_qwen(folder, sam2))
        assert after != before
        before = after


def test_fingerprint_of_missing_weights_names_the_key(tmp_path):
    assert weights_fingerprint(None, "priors.mllm.path") is None
    with pytest.raises(FileNotFoundError, match=r"priors\.sam2\.checkpoint: .*nope\.pt not found"):
        teacher_identity(_qwen(_weights(tmp_path / "qwen"), tmp_path / "nope.pt"))
