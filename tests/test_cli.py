"""The `autarky` command tree as a whole: every parameter has help, the moved commands answer under their new
names, the old spellings still work but are hidden, CLI defaults are the config trees' own, and start-up does
not import torch."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from autarky.cli import app
from autarky.data.config import DataConfig
from autarky.plan.planner import PlanRequest
from autarky.serve.options import ServeOptions
from autarky.serve.registry import ServedModelSpec
from autarky.train.config import TrainConfig
from fixtures.cli import run_autarky_reporting_imports

runner = CliRunner()
# old spelling -> new spelling, kept as hidden aliases for one release
MOVED = {("export",): ("model", "export"), ("sample",): ("model", "sample"), ("arena",): ("eval", "arena")}


def commands(command=None, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], object]]:
    """Every command and group of the tree, hidden ones included, as (path, click command)."""
    command = command or typer.main.get_command(app)
    yield path, command
    for name, sub in getattr(command, "commands", {}).items():
        yield from commands(sub, (*path, name))


def find(path: tuple[str, ...]):
    return dict(commands())[path]


def test_every_parameter_has_help():
    missing = [f"autarky {' '.join(path)} {param.name}" for path, command in commands()
               for param in command.params if not getattr(param, "help", None)]
    assert missing == [], "parameters without help text: " + ", ".join(missing)
    assert len(dict(commands())) > 25  # the walk reaches the nested groups and the hidden aliases


def test_every_command_has_a_docstring():
    assert [path for path, command in commands() if path and not command.help] == []


def test_moved_commands_keep_their_old_spelling_hidden():
    top = runner.invoke(app, ["--help"]).stdout
    listed = {line.split()[0] for line in top.split("Commands:")[1].splitlines() if line.strip()}
    for old, new in MOVED.items():
        alias, command = find(old), find(new)
        assert alias.hidden and not command.hidden
        assert [p.opts for p in alias.params] == [p.opts for p in command.params]  # same options
        assert old[0] not in listed
        assert new[-1] in runner.invoke(app, [*new[:-1], "--help"]).stdout
    assert {"model", "eval", "usage"} <= listed
    assert "--gateway-config" not in runner.invoke(app, ["eval", "run", "--help"]).stdout
    assert find(("eval", "run")).params[-1].hidden  # the old --gateway-config, still accepted


def test_new_spellings_run_the_same_commands(tmp_path: Path):
    for args, message in [
        (["model", "export", str(tmp_path), "--out", str(tmp_path / "x")], "not a training run dir"),
        (["export", str(tmp_path), "--out", str(tmp_path / "x")], "not a training run dir"),
        (["model", "sample", str(tmp_path / "nothing-here"), "--prompt", "x"], "Error:"),
        (["eval", "arena"], "no battles"),
        (["arena"], "no battles"),
    ]:
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        assert message in " ".join(result.output.split()), (args, result.output)


def option(path: tuple[str, ...], flag: str):
    return next(p for p in find(path).params if flag in p.opts)


def test_cli_defaults_are_the_config_defaults():
    cfg = TrainConfig()
    # train's flags default to None (a --config file's value wins over a flag nobody gave); the help shows the
    # config's default.
    for flag, value in [("--steps", cfg.run.steps), ("--batch-size", cfg.data.batch_size), ("--lr", cfg.optim.lr),
                        ("--preset", cfg.model.preset), ("--keep", cfg.checkpoint.keep)]:
        param = option(("train",), flag)
        assert param.default is None and param.help.endswith(f"[default: {value}]"), (flag, param.help)
    assert option(("train",), "--ckpt-every").help.startswith(
        TrainConfig.model_fields["checkpoint"].annotation.model_fields["every"].description)
    for flag, name in [("--vocab-size", "vocab_size"), ("--val-fraction", "val_fraction"), ("--glob", "glob"),
                       ("--corpus", "corpus")]:
        assert option(("data", "build"), flag).default == DataConfig.model_fields[name].default
    request = PlanRequest()
    for flag, name in [("--pue", "pue"), ("--experts", "experts"), ("--precision", "precision"),
                       ("--usd-per-gpu-hour", "usd_per_gpu_hour"), ("--recompute", "recompute")]:
        assert option(("plan",), flag).default == getattr(request, name), flag
    served = ServedModelSpec("any")
    for flag, name in [("--max-batch", "max_batch"), ("--max-queue", "max_queue"), ("--dtype", "dtype"),
                       ("--decode-kernels", "decode_kernels"), ("--max-lora-rank", "max_lora_rank")]:
        assert option(("serve",), flag).default == getattr(ServeOptions(), name) == getattr(served, name), flag


def test_store_options_are_the_same_everywhere():
    touching = [path for path, command in commands() if any("--store" in p.opts for p in command.params)]
    assert {("keys", "create"), ("keys", "list"), ("audit", "verify"), ("usage",), ("eval", "leaderboard"),
            ("eval", "run"), ("eval", "arena"), ("gateway",)} <= set(touching)
    helps = {option(path, "--store").help for path in touching}
    assert len(helps) == 1
    for path in touching:
        assert "-c" in option(path, "--config").opts, path


@pytest.mark.parametrize("args", [["--help"], ["data", "build", "--help"], ["train", "--help"],
                                  ["finetune", "--help"], ["serve", "--help"], ["plan", "--help"]])
def test_start_up_does_not_import_torch(args: list[str], tmp_path: Path):
    # torch costs ~200 MB and seconds of start-up; only the commands that run a model may pay for it.
    proc, imported = run_autarky_reporting_imports(args, tmp_path / "modules.json")
    assert proc.returncode == 0 and "Usage: autarky" in proc.stdout, proc.stderr
    assert "torch" not in imported and "autarky" in imported


def test_the_import_report_sees_torch_when_a_command_uses_it(tmp_path: Path):
    # The control for the test above: `model info` builds the model on the meta device, so it must import torch.
    proc, imported = run_autarky_reporting_imports(["model", "info", "nano", "--json"], tmp_path / "modules.json")
    assert proc.returncode == 0 and json.loads(proc.stdout)["preset"] == "nano", proc.stderr
    assert "torch" in imported


def test_import_of_the_cli_does_not_import_torch():
    code = "import sys, autarky.cli; print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stdout + proc.stderr
