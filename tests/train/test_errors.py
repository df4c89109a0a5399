"""Bad input: one `Error:` line, exit status 2, and no run dir written."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from autarky.cli import app
from autarky.train.config import TrainConfig
from fixtures.train import write_config


def _train(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["train", *args])
    return result.exit_code, result.output


def _assert_refused(args: list[str], out: Path, *fragments: str) -> None:
    device = [] if "--device" in args else ["--device", "cpu"]
    code, output = _train(*args, "--out", str(out), "--steps", "2", *device)
    assert code == 2, output
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), output
    for fragment in fragments:
        assert fragment in lines[0], output
    assert not out.exists(), "nothing may be written for a refused run"


def test_unknown_preset(tiny_data_dir: Path, tmp_path: Path) -> None:
    _assert_refused(["--preset", "nope", "--data", str(tiny_data_dir)], tmp_path / "run", "unknown preset 'nope'")


def test_missing_data_dir(tmp_path: Path) -> None:
    _assert_refused(["--data", str(tmp_path / "absent")], tmp_path / "run", "does not exist")


def test_corrupt_data_dir(tiny_data_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(tiny_data_dir, data)
    with (data / "train.bin").open("r+b") as f:
        f.truncate(1000)
    _assert_refused(["--data", str(data)], tmp_path / "run", "train.bin")


def test_explicit_vocab_that_disagrees_with_the_data(tiny_data_dir: Path, tmp_path: Path) -> None:
    cfg = TrainConfig().with_overrides({"model.vocab_size": 4096})
    config = write_config(cfg, tmp_path / "run.toml")
    args = ["--config", str(config), "--data", str(tiny_data_dir)]
    _assert_refused(args, tmp_path / "run", "vocab_size is 4096", "512")


def test_sequence_longer_than_the_data(tiny_data_dir: Path, tmp_path: Path) -> None:
    _assert_refused(["--data", str(tiny_data_dir), "--seq-len", "500000"], tmp_path / "run", "too few", "--seq-len")


def test_batch_beyond_device_memory(tiny_data_dir: Path, tmp_path: Path) -> None:
    args = ["--data", str(tiny_data_dir), "--batch-size", "4000000"]
    _assert_refused(args, tmp_path / "run", "GB per device", "--batch-size")


def test_batch_not_divisible_by_grad_accum(tiny_data_dir: Path, tmp_path: Path) -> None:
    args = ["--data", str(tiny_data_dir), "--batch-size", "8", "--grad-accum", "3"]
    _assert_refused(args, tmp_path / "run", "multiple of 3")


def test_bad_config_value(tiny_data_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "bad.toml").write_text("[optim]\nlr = -1\n")
    _assert_refused(["--config", str(tmp_path / "bad.toml"), "--data", str(tiny_data_dir)], tmp_path / "run", "optim.lr")


@pytest.mark.parametrize("case", ["no-resume", "other-vocab"])
def test_existing_run_is_never_overwritten_or_resumed_on_other_data(
    case: str, tiny_run_dir: Path, tiny_data_dir: Path, tiny_corpus_dir: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    shutil.copytree(tiny_run_dir, run)
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*")}
    if case == "no-resume":
        args, expected = ["--data", str(tiny_data_dir)], "--resume auto"
    else:  # the same corpus tokenised with another vocabulary
        from autarky.data import DataConfig, build_dataset

        other = tmp_path / "data-300"
        build_dataset(DataConfig(out=other, corpus=str(tiny_corpus_dir), vocab_size=300), progress=False)
        args, expected = ["--data", str(other), "--resume", "auto", "--seq-len", "16"], "vocab_size 512"
    code, output = _train(*args, "--out", str(run), "--steps", "40", "--device", "cpu")
    assert code == 2 and output.startswith("Error: ") and expected in output, output
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*")} == before


def test_tensor_parallel_degree_that_does_not_divide_the_world(tiny_data_dir: Path, tmp_path: Path) -> None:
    _assert_refused(["--data", str(tiny_data_dir), "--tp", "2"], tmp_path / "run", "--tp 2", "world size 1")


def test_cuda_asked_for_on_a_machine_without_it(
    tiny_data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the same answer on GPU machines too
    _assert_refused(["--data", str(tiny_data_dir), "--device", "cuda"], tmp_path / "run", "no CUDA device")


@pytest.mark.parametrize(
    ("world", "args", "fragments"),
    [
        ("1", ["--preset", "moe-nano", "--ep", "2"], ["--ep 2", "world size 1"]),
        ("3", ["--preset", "moe-nano", "--ep", "3", "--batch-size", "6"], ["--ep 3", "8 experts"]),
        ("2", ["--preset", "nano", "--ep", "2"], ["--ep 2", "no experts"]),
        ("2", ["--preset", "moe-nano", "--tp", "2"], ["--tp 2", "mixture-of-experts", "--ep"]),
        ("1", ["--preset", "moe-nano", "--ep", "0"], ["parallel.ep"]),
    ],
    ids=["beyond-world", "not-dividing-experts", "dense-model", "tp-without-ep", "zero"],
)
def test_bad_expert_parallel_degree(world: str, args: list[str], fragments: list[str], tiny_data_dir: Path,
                                    tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    # As torchrun would set it: validation happens before any process group is joined.
    monkeypatch.setenv("WORLD_SIZE", world)
    _assert_refused(["--data", str(tiny_data_dir), *args], tmp_path / "run", *fragments)
