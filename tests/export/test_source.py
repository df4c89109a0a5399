"""`resolve_model_source`: every form `autarky serve MODEL` accepts, and the error for anything else."""

import os
from pathlib import Path

import pytest
import torch

from autarky.errors import UserError
from autarky.export.source import load_model, resolve_model_source
from autarky.model.gguf_import import smollm2_gguf_path
from autarky.model.hf import load_hf_folder
from autarky.train import load_model_from_run


def test_hf_folder_is_used_as_is(tiny_hf_model_dir: Path) -> None:
    assert resolve_model_source(str(tiny_hf_model_dir)) == tiny_hf_model_dir


def test_gguf_file_and_alias_share_one_import(smollm2_hf_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTARKY_HOME", str(smollm2_hf_dir.parent.parent))  # where the fixture imported it
    assert resolve_model_source("smollm2") == smollm2_hf_dir
    assert resolve_model_source(str(smollm2_gguf_path())) == smollm2_hf_dir


def test_run_dir_is_exported_once_into_autarky_home(tiny_run_dir: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTARKY_HOME", str(tmp_path / "home"))
    folder = resolve_model_source(str(tiny_run_dir))
    assert folder.parent == tmp_path / "home" / "exports" and folder.name.endswith("-step-30")
    stamp = os.stat(folder / "model.safetensors").st_mtime_ns
    assert resolve_model_source(str(tiny_run_dir)) == folder
    assert os.stat(folder / "model.safetensors").st_mtime_ns == stamp
    exported, _ = load_hf_folder(folder)
    trained = load_model_from_run(tiny_run_dir)[0]
    tokens = torch.arange(40).unsqueeze(0)
    with torch.no_grad():
        assert torch.equal(exported(tokens), trained(tokens))


def test_load_model_reads_run_dirs_without_exporting(tiny_run_dir: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTARKY_HOME", str(tmp_path / "home"))
    model, tokenizer_dir = load_model(str(tiny_run_dir))
    assert (tokenizer_dir / "tokenizer.json").is_file()
    assert not (tmp_path / "home" / "exports").exists()
    assert not model.training


@pytest.mark.parametrize("kind", ["empty dir", "text file", "missing"])
def test_anything_else_names_the_accepted_forms(tmp_path: Path, kind: str) -> None:
    target = tmp_path / "thing"
    if kind == "empty dir":
        target.mkdir()
    elif kind == "text file":
        target.write_text("hello")
    with pytest.raises(UserError, match="HF model folder .* .gguf file, a training run dir, or the alias smollm2"):
        resolve_model_source(str(target))
