"""`autarky export` and `autarky sample` on a trained run dir and on HF folders; bad input."""

from pathlib import Path

import pytest
import torch
import transformers
from typer.testing import CliRunner

from autarky.cli import app
from autarky.train import load_model_from_run

runner = CliRunner()


@pytest.fixture(scope="module")
def exported(tiny_run_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("export") / "hf"
    result = runner.invoke(app, ["export", str(tiny_run_dir), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "exported step 30" in result.output
    return out


def test_exported_run_gives_transformers_the_same_logits(tiny_run_dir: Path, exported: Path) -> None:
    ours, cfg, _, step = load_model_from_run(tiny_run_dir)
    assert step == 30
    hf = transformers.AutoModelForCausalLM.from_pretrained(exported).eval()
    tokens = torch.randint(0, cfg.vocab_size, (2, 48), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (ours(tokens) - hf(tokens).logits).abs().max().item() <= 1e-4
    theirs = transformers.AutoTokenizer.from_pretrained(exported)
    assert theirs.decode(theirs("import os\n")["input_ids"]) == "import os\n"


def test_bfloat16_export(tiny_run_dir: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["export", str(tiny_run_dir), "--out", str(tmp_path / "bf16"), "--dtype", "bfloat16"])
    assert result.exit_code == 0, result.output
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "bf16")
    assert hf.dtype == torch.bfloat16


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--step", "7"], "no complete checkpoint for step 7"),
        (["--dtype", "int3"], "unknown dtype"),
    ],
)
def test_export_bad_options(tiny_run_dir: Path, tmp_path: Path, args: list[str], message: str) -> None:
    result = runner.invoke(app, ["export", str(tiny_run_dir), "--out", str(tmp_path / "x"), *args])
    assert result.exit_code == 2
    assert message in " ".join(result.output.split())
    assert not (tmp_path / "x").exists()


def test_export_of_something_that_is_not_a_run(tmp_path: Path, tiny_hf_model_dir: Path) -> None:
    result = runner.invoke(app, ["export", str(tiny_hf_model_dir), "--out", str(tmp_path / "x")])
    assert result.exit_code == 2
    assert "not a training run dir" in " ".join(result.output.split())


def test_export_of_a_run_without_checkpoints(tiny_run_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "empty-run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.toml").write_text((tiny_run_dir / "config.toml").read_text())
    result = runner.invoke(app, ["export", str(run), "--out", str(tmp_path / "x")])
    assert result.exit_code == 2
    assert "no complete checkpoint" in " ".join(result.output.split())


def _sample(*args: str) -> str:
    result = runner.invoke(app, ["sample", *args])
    assert result.exit_code == 0, result.output
    return result.output


def test_sample_is_repeatable_with_a_seed(tiny_run_dir: Path) -> None:
    first = _sample(str(tiny_run_dir), "--prompt", "def ", "--seed", "4", "--max-tokens", "24")
    assert first.startswith("def ")
    assert len(first) > len("def \n")
    assert _sample(str(tiny_run_dir), "--prompt", "def ", "--seed", "4", "--max-tokens", "24") == first


def test_sample_from_an_hf_folder_with_the_chat_template(tiny_hf_model_dir: Path) -> None:
    out = _sample(str(tiny_hf_model_dir), "--prompt", "hello", "--chat", "--temperature", "0", "--max-tokens", "5")
    assert not out.startswith("hello")  # chat mode prints only the answer


@pytest.mark.parametrize(
    ("model", "extra", "message"),
    [
        ("/nonexistent/model", [], "does not exist"),
        ("{hf}", ["--step", "3"], "--step applies to training run dirs only"),
        ("{hf}", ["--top-p", "0"], "top-p"),
    ],
)
def test_sample_bad_input(tiny_hf_model_dir: Path, model: str, extra: list[str], message: str) -> None:
    result = runner.invoke(app, ["sample", model.format(hf=tiny_hf_model_dir), "--prompt", "x", *extra])
    assert result.exit_code == 2
    assert message in " ".join(result.output.split())
