"""`autarky plan` through Typer's CliRunner: JSON keys, launch scripts, measured MFU, and every bad input → exit 2."""

import json
import math

import pytest
from typer.testing import CliRunner

from autarky.cli import app

runner = CliRunner(env={"COLUMNS": "400"})  # errors and tables on one line each, unwrapped
LLAMA = ["plan", "--preset", "405b", "--tokens", "15.6e12", "--gpus", "16384"]


def run(*args: str) -> dict:
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def fails(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output  # one clear line, no traceback
    return lines[0]


def write_run(tmp_path, mfus, device="cpu", peak=2.0e11, preset="nano"):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    rows = [{"step": i + 1, "loss": 5.0 - i * 0.1, "tokens_per_s": 1000.0 + i, "mfu": m, "peak_flops": peak,
             "device": device} for i, m in enumerate(mfus)]
    (run_dir / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (run_dir / "config.toml").write_text(f'preset = "{preset}"\nseq_len = 256\n')
    return run_dir


def test_json_has_the_documented_keys():
    d = run(*LLAMA, "--tp", "8", "--pp", "16")
    for key in ("total_flops", "gpu_hours", "days", "energy_mwh", "usd", "memory_per_gpu_gb", "interruptions",
                "checkpoint_interval_min", "mfu", "mfu_source", "tokens_rule", "goodput", "flops_rule"):
        assert isinstance(d[key], int | float | str | dict), key
    assert set(d["power_mw"]) == {"gpu", "server", "facility"}
    assert d["hardware"]["precision"] == "bf16" and d["layout"]["label"] == "TP8/PP16/DP128"
    assert d["mfu_source"].startswith("default")


def test_fp8_divides_by_the_fp8_peak():
    d = run(*LLAMA, "--precision", "fp8")
    assert d["hardware"]["peak_tflops"] == pytest.approx(1978.9) and d["mfu"] == pytest.approx(0.20)


def test_compute_optimal_tokens_and_predicted_loss_are_labelled():
    d = run("plan", "--preset", "8b", "--compute-optimal", "--gpus", "64", "--predict-loss")
    assert d["tokens"] == pytest.approx(20 * d["model"]["params"])
    assert "20·N" in d["tokens_rule"] and "Chinchilla" in d["predicted_loss"]["label"]


def test_days_gives_the_smallest_node_multiple_that_finishes_in_time():
    d = run("plan", "--preset", "70b", "--tokens", "15e12", "--days", "60", "--mfu", "0.4")
    assert d["gpus"] % 8 == 0 and d["days"] <= 60
    fewer = run("plan", "--preset", "70b", "--tokens", "15e12", "--gpus", str(d["gpus"] - 8), "--mfu", "0.4")
    assert fewer["days"] > 60


def test_find_layout_prints_a_ranked_table():
    result = runner.invoke(app, [*LLAMA, "--find-layout"])
    assert result.exit_code == 0, result.output
    assert "Memory per GPU" in result.output and "ranked" in result.output
    d = run(*LLAMA, "--find-layout")
    assert len(d["layouts"]) > 1 and d["layouts"][0]["memory_gb"]["fits"]
    assert d["layout"]["label"] == d["layouts"][0]["label"]


def test_emit_launch_writes_torchrun_and_a_checkpoint_interval_in_steps(tmp_path):
    script = tmp_path / "launch.sh"
    d = run(*LLAMA, "--tp", "8", "--find-layout", "--emit-launch", str(script))
    assert d["layout"]["label"] == "TP8/PP1/DP2048"  # trainer-ready, so the plan's batch is kept
    text = script.read_text()
    assert "torchrun --nnodes=2048 --nproc_per_node=8 --rdzv-backend=c10d" in text
    assert "--max-restarts=3 -m autarky train --preset 405b" in text and "--tp 8" in text
    every = round(d["checkpoint_interval_min"] * 60 / d["step_time_s"])
    assert f"--ckpt-every {every} " in text and every > 1
    assert "--batch-size 2048 --seq-len 8192" in text  # GLOBAL sequences per step: DP 2048 × micro-batch 1
    assert f"--steps {math.ceil(15.6e12 / (2048 * 8192))} " in text


def test_emit_launch_is_honest_about_pipeline_parallelism(tmp_path):
    script = tmp_path / "launch.sh"
    d = run(*LLAMA, "--tp", "8", "--pp", "16", "--emit-launch", str(script))
    text = script.read_text()
    assert "pipeline parallelism (PP16)" in text and "not in the trainer" in text
    # The trainer splits the global batch over GPUs/TP = 2,048 ranks, so the plan's 128 sequences become 2,048,
    # and the checkpoint interval in steps shrinks by the same factor of 16.
    assert "--batch-size 2048 " in text
    every = round(d["checkpoint_interval_min"] * 60 / (d["step_time_s"] * 16))
    assert f"--ckpt-every {every} " in text


def test_mfu_from_a_cpu_run_plans_on_this_machine(tmp_path):
    run_dir = write_run(tmp_path, [0.01, 0.02, 0.05, 0.10, 0.12, 0.11, 0.50])
    d = run("plan", "--mfu-from", str(run_dir), "--tokens", "1e8")
    assert d["mfu"] == pytest.approx(0.115)  # median of steps 4-7, the first three are warm-up
    assert d["hardware"]["name"] == "local" and d["hardware"]["peak_tflops"] == pytest.approx(0.2)
    assert d["model"]["name"] == "nano" and d["gpus"] == 1 and d["model"]["seq_len"] == 256
    assert d["flops_rule"]["name"] == "autarky" and "measured" in d["mfu_source"]
    # Pure compute time is tokens × FLOPs/token ÷ (peak × MFU), as on any GPU.
    assert d["gpu_hours_compute"] == pytest.approx(d["total_flops"] / (2.0e11 * 0.115 * 3600))


def test_mfu_from_applies_to_a_named_gpu_too(tmp_path):
    run_dir = write_run(tmp_path, [0.3] * 5, device="NVIDIA H100 80GB HBM3", peak=989.4e12)
    d = run("plan", "--mfu-from", str(run_dir), "--preset", "8b", "--tokens", "1e12", "--gpus", "64",
            "--gpu", "h100")
    assert d["mfu"] == pytest.approx(0.3) and d["hardware"]["name"] == "h100"


def test_hardware_file_adds_a_gpu(tmp_path):
    path = tmp_path / "hw.toml"
    path.write_text("[x1]\nbf16_tflops = 500\nhbm_gb = 96\ntdp_w = 500\nserver_w_per_gpu = 900\n")
    d = run(*LLAMA, "--hardware-file", str(path), "--gpu", "x1")
    assert d["hardware"]["peak_tflops"] == 500 and d["power_mw"]["gpu"] == pytest.approx(16_384 * 500 / 1e6)


@pytest.mark.parametrize("toml,field", [
    ("[x1]\nbf16_tflops = -1\nhbm_gb = 96\n", "bf16_tflops"),
    ("[x1]\nhbm_gb = 96\n", "bf16_tflops"),
    ("[x1]\nbf16_tflops = 100\nhbm_gb = 96\nwatts = 3\n", "watts"),
])
def test_bad_hardware_file_names_the_field(tmp_path, toml, field):
    path = tmp_path / "hw.toml"
    path.write_text(toml)
    assert field in fails(*LLAMA, "--hardware-file", str(path), "--gpu", "x1")


@pytest.mark.parametrize("args,message", [
    (["--gpu", "z100"], "unknown GPU 'z100'; known: a100-80gb"),
    (["--tp", "3"], "does not divide --gpus 16384"),
    (["--tp", "8", "--pp", "16", "--dp", "64"], "TP×PP×CP×DP = 8192"),
    (["--mfu", "0"], "MFU must be a fraction in (0, 1]"),
    (["--mfu", "1.5"], "MFU must be a fraction in (0, 1]"),
    (["--compute-optimal"], "--tokens and --compute-optimal"),
    (["--days", "30"], "--gpus and --days both pin the answer"),
    (["--mfu", "0.4", "--tflops-per-gpu", "400"], "each set the utilisation"),
    (["--tokens", "-1"], "--tokens must be positive"),
    (["--usd-per-kwh", "-0.1"], "must not be negative"),
    (["--precision", "fp4"], "--precision"),
    (["--zero", "4"], "--zero must be 0, 1, 2 or 3"),
])
def test_bad_flags_exit_2_with_one_clear_line(args, message):
    base = [a for a in LLAMA if not (args[0] == "--tokens" and a in ("--tokens", "15.6e12"))]
    assert message in fails(*base, *args)


@pytest.mark.parametrize("args,message", [
    (["plan", "--preset", "405b", "--gpus", "0"], "--gpus must be positive"),
    (["plan", "--params", "-5", "--gpus", "8"], "--params must be positive"),
    (["plan", "--preset", "405b", "--gpus", "24", "--tp", "3"], "128 attention heads are not divisible by --tp 3"),
    (["plan", "--preset", "nano", "--gpus", "4", "--tp", "4"], "2 key/value heads are not divisible by --tp 4"),
    (["plan", "--preset", "405b"], "give --gpus N"),
    (["plan", "--gpus", "8"], "give a model"),
    (["plan", "--preset", "huge", "--gpus", "8"], "unknown preset"),
    (["plan", "--preset", "8b", "--gpus", "8", "--gpu", "a100", "--precision", "fp8"], "has no FP8 peak"),
    (["plan", "--preset", "8b", "--gpus", "8", "--gpu", "local"], "needs --mfu-from"),
])
def test_bad_inputs_exit_2(args, message):
    assert message in fails(*args)


def test_unreadable_inputs_exit_2(tmp_path):
    assert "does not exist" in fails("plan", "--hf-config", str(tmp_path / "nope.json"), "--gpus", "8")
    bad = tmp_path / "config.json"
    bad.write_text("{not json")
    assert "not readable JSON" in fails("plan", "--hf-config", str(bad), "--gpus", "8")
    assert "cannot read metrics.jsonl" in fails("plan", "--mfu-from", str(tmp_path / "norun"), "--gpus", "8")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "metrics.jsonl").write_text('{"step": 1, "loss": 3.0}\n')
    assert "no rows with 'mfu'" in fails("plan", "--mfu-from", str(empty), "--gpus", "8")
    assert "outside (0, 1]" in fails("plan", "--mfu-from", str(write_run(tmp_path, [40.0] * 5)), "--preset", "nano")
