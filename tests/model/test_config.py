"""The model's configuration needs no torch: configs, presets and the shape counts are read without it."""

from __future__ import annotations

import subprocess
import sys

_WITHOUT_TORCH = """
import sys
from autarky.model.config import ModelConfig, flops_per_token, parameter_count
from autarky.model.sizes import preset
import autarky.finetune.config, autarky.plan.planner, autarky.serve.options, autarky.train.config
cfg = preset("8b")
assert isinstance(cfg, ModelConfig) and flops_per_token(cfg) > 6 * parameter_count(cfg, include_embedding=False)
print(parameter_count(cfg), sorted(m for m in sys.modules if m.split(".")[0] == "torch"))
"""


def test_configs_presets_and_counts_import_no_torch() -> None:
    proc = subprocess.run([sys.executable, "-c", _WITHOUT_TORCH], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    # Llama 3 8B: 8,030,261,248 parameters (its published count), computed from the shape alone
    assert proc.stdout.split() == ["8030261248", "[]"]
