"""`autarky finetune` end to end on the tiny model: full and LoRA runs, the manifest, export, bad input."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from autarky.cli import app
from autarky.contracts.rundir import find_checkpoint
from autarky.errors import UserError
from autarky.export.lora_run import load_lora_checkpoint
from autarky.export.source import load_model
from autarky.finetune import finetune
from autarky.model.hf import load_hf_folder
from autarky.train import load_model_from_run, read_metrics
from fixtures.finetune import chat, chats, tiny_finetune_config, write_jsonl

runner = CliRunner()
TOKENS = torch.randint(3, 512, (2, 40), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def full_run(tiny_hf_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("full")
    data = chats(root / "data" / "chats.jsonl", 8)
    out = root / "run"
    finetune(tiny_finetune_config(tiny_hf_model_dir, data, out, **{
        "run.steps": 60, "data.batch_size": 8, "data.val_fraction": 0.0, "checkpoint.every": 0,
        "run.eval_every": 0}))  # fmt: skip
    return out


def test_a_tiny_model_overfits_8_examples(full_run: Path) -> None:
    rows = read_metrics(full_run)
    assert rows[0]["loss"] > 5.0 and rows[-1]["loss"] < 1.0, [r["loss"] for r in rows]


def test_the_manifest_records_the_base_hash_and_every_record(full_run: Path, tiny_hf_model_dir: Path) -> None:
    manifest = json.loads((full_run / "manifest.json").read_text())
    weights = (tiny_hf_model_dir / "model.safetensors").read_bytes()
    assert manifest["base"]["files"] == {"model.safetensors": hashlib.sha256(weights).hexdigest()}
    data = Path(manifest["data"]["path"])
    lines = data.read_bytes().splitlines()
    assert [(r["source"], r["line"], r["sha256"]) for r in manifest["data"]["records"]] == [
        ("chats.jsonl", i + 1, hashlib.sha256(line).hexdigest()) for i, line in enumerate(lines)]
    assert manifest["data"]["files"][0]["sha256"] == hashlib.sha256(data.read_bytes()).hexdigest()
    assert manifest["examples"] | {"train_rows": 0, "train_trained_tokens": 0} == {
        "records": 8, "train": 8, "val": 0, "truncated": 0, "dropped": 0, "train_rows": 0, "val_rows": 0,
        "train_trained_tokens": 0}  # fmt: skip
    assert (full_run / "tokenizer" / "tokenizer.json").is_file() and (full_run / "loss.png").is_file()


def test_a_full_finetune_exports_as_a_plain_hf_folder(full_run: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["model", "export", str(full_run), "--out", str(tmp_path / "hf")])
    assert result.exit_code == 0, result.output
    exported, _ = load_hf_folder(tmp_path / "hf")
    trained, *_ = load_model_from_run(full_run)
    with torch.no_grad():
        assert torch.equal(exported(TOKENS), trained(TOKENS))


def test_resuming_with_other_data_is_refused(full_run: Path, tiny_hf_model_dir: Path, tmp_path: Path) -> None:
    other = chats(tmp_path / "other.jsonl", 8, start=1)
    cfg = tiny_finetune_config(tiny_hf_model_dir, other, full_run, **{"checkpoint.resume": "auto"})
    with pytest.raises(UserError, match="different training data"):
        finetune(cfg)
    with pytest.raises(UserError, match="already holds a run"):
        finetune(tiny_finetune_config(tiny_hf_model_dir, other, full_run))


@pytest.fixture(scope="module")
def lora_run(tiny_hf_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("lora")
    out = root / "run"
    finetune(tiny_finetune_config(tiny_hf_model_dir, chats(root / "chats.jsonl", 8), out, **{
        "model.method": "lora", "run.steps": 8, "optim.lr": 3e-3, "data.val_fraction": 0.25}))  # fmt: skip
    return out


def test_lora_trains_only_the_adapters(lora_run: Path, tiny_hf_model_dir: Path) -> None:
    rows = read_metrics(lora_run)
    assert rows[-1]["loss"] < rows[0]["loss"] and "val_loss" in rows[-1]
    model, cfg, meta = load_lora_checkpoint(find_checkpoint(lora_run))
    assert (cfg.rank, meta["method"]) == (4, "lora")
    base, _ = load_hf_folder(tiny_hf_model_dir)
    adapted = dict(model.named_parameters())
    for name, param in base.named_parameters():  # every base weight as it was, bit for bit
        assert torch.equal(adapted[name], param), name
    assert any(p.abs().sum() > 0 for n, p in adapted.items() if n.endswith("lora_B"))


def test_lora_exports_a_peft_adapter_and_a_merged_folder_with_the_same_logits(
        lora_run: Path, tiny_hf_model_dir: Path, tmp_path: Path) -> None:
    for args in ([], ["--merge"]):
        result = runner.invoke(app, ["model", "export", str(lora_run), "--out", str(tmp_path / f"x{args}"), *args])
        assert result.exit_code == 0, result.output
    adapter, merged_dir = tmp_path / "x[]", tmp_path / "x['--merge']"
    assert sorted(p.name for p in adapter.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    assert all(".lora_" in key for key in load_file(adapter / "adapter_model.safetensors"))
    unmerged, _, _ = load_lora_checkpoint(find_checkpoint(lora_run))
    merged, _ = load_hf_folder(merged_dir)
    served, _ = load_model(lora_run)  # a LoRA run as one model (sample, serve): merged
    peft = pytest.importorskip("peft")
    import transformers

    hf_base = transformers.AutoModelForCausalLM.from_pretrained(tiny_hf_model_dir, dtype=torch.float32)
    theirs = peft.PeftModel.from_pretrained(hf_base, adapter).eval()
    with torch.no_grad():
        want = unmerged(TOKENS)
        assert (merged(TOKENS) - want).abs().max().item() < 1e-4
        assert (served(TOKENS) - want).abs().max().item() < 1e-4
        assert (theirs(TOKENS).logits - want).abs().max().item() < 1e-4
    with pytest.raises(UserError, match="LoRA fine-tune"):
        load_model_from_run(lora_run)  # the base's shape alone would silently drop the adapters


def _refused(args: list[str], out: Path, *fragments: str) -> None:
    result = runner.invoke(app, ["finetune", *args, "--out", str(out), "--steps", "1", "--device", "cpu"])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("Error: "), result.output
    for fragment in fragments:
        assert fragment in lines[0], result.output
    assert not out.exists(), "nothing may be written for a refused run"


def test_bad_input_is_one_error_line_and_no_run_dir(tiny_hf_model_dir: Path, tmp_path: Path) -> None:
    good = chats(tmp_path / "good.jsonl", 4)
    base = ["--base", str(tiny_hf_model_dir)]
    out = tmp_path / "run"
    _refused(["--base", str(tmp_path / "nope"), "--data", str(good)], out, "does not exist")
    _refused([*base, "--data", str(good), "--lora-rank", "0"], out, "lora.rank")
    no_assistant = write_jsonl(tmp_path / "a.jsonl", [chat(0), {"messages": [{"role": "user", "content": "hi"}]}])
    _refused([*base, "--data", str(no_assistant)], out, "a.jsonl:2", "no assistant turn")
    broken = write_jsonl(tmp_path / "b.jsonl", [chat(0), chat(1), '{"messages": ['])
    _refused([*base, "--data", str(broken)], out, "b.jsonl:3", "not valid JSON")
    tools = write_jsonl(tmp_path / "t.jsonl", [{**chat(0), "tools": [{"name": "f"}]}])
    _refused([*base, "--data", str(tools)], out, "t.jsonl:1", "cannot render tools")
    _refused([*base, "--data", str(good), "--seq-len", "20"], out, "longer than seq_len 20")
    _refused([*base, "--data", str(good), "--lora-targets", "wq,nope"], out, "nope")


def test_resuming_a_finished_run_says_it_is_complete(lora_run: Path) -> None:
    before = (lora_run / "metrics.jsonl").read_text()
    result = runner.invoke(app, ["finetune", "--config", str(lora_run / "config.toml"), "--resume", "auto"])
    assert result.exit_code == 0, result.output
    assert "already complete at step 8" in result.output and "tokens/s" not in result.output, result.output
    assert (lora_run / "metrics.jsonl").read_text() == before


def test_lora_mfu_counts_what_a_lora_step_computes(lora_run: Path, tiny_hf_model_dir: Path) -> None:
    from autarky.finetune.trainer import finetune_flops_per_token
    from autarky.model.config import flops_per_token

    _, cfg = load_hf_folder(tiny_hf_model_dir)
    manifest = json.loads((lora_run / "manifest.json").read_text())["examples"]
    from autarky.finetune.config import load_finetune_config

    seq_len = load_finetune_config(lora_run / "config.toml").data.seq_len or 0
    dense = flops_per_token(cfg, seq_len)
    assert finetune_flops_per_token(cfg, seq_len, trained_share=1.0, adapter_params=0, full=True) == dense
    share = manifest["train_trained_tokens"] / (manifest["train_rows"] * seq_len)
    model, _, _ = load_lora_checkpoint(find_checkpoint(lora_run))
    adapters = sum(p.numel() for n, p in model.named_parameters() if ".lora_" in n)
    want = finetune_flops_per_token(cfg, seq_len, trained_share=share, adapter_params=adapters, full=False)
    assert want < 0.75 * dense  # 4 FLOPs per frozen parameter, not 6; the head only on trained tokens
    row = read_metrics(lora_run)[-1]
    assert row["mfu"] * row["peak_flops"] / row["tokens_per_s"] == pytest.approx(want, rel=1e-6)
