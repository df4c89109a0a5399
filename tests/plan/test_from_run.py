"""Planning from a real `autarky train` run (the shared session fixture `tiny_run_dir`: nano, vocab 512 from the
data, batch 8 × 64 tokens on CPU). The plan on this machine must predict the speed the run measured, which holds
only if the planner's FLOPs per token are the trainer's MFU numerator for the exact shape trained."""

import json
import statistics

import pytest

from autarky.plan.planner import PlanRequest, plan


@pytest.mark.slow  # builds the shared session run `tiny_run_dir` when train tests have not
def test_plan_on_this_machine_predicts_the_measured_speed(tiny_run_dir):
    rows = sorted((json.loads(line) for line in (tiny_run_dir / "metrics.jsonl").read_text().splitlines()
                   if line.strip()), key=lambda r: r["step"])
    d = plan(PlanRequest(mfu_from=tiny_run_dir, tokens=1e7)).to_dict()
    assert d["hardware"]["name"] == "local" and d["gpus"] == 1 and d["flops_rule"]["name"] == "autarky"
    assert d["model"]["seq_len"] == 64 and d["layout"]["micro_batch"] == 8
    median = statistics.median(r["mfu"] for r in rows[3:])  # the first three logged steps are warm-up
    assert d["mfu"] == pytest.approx(median)
    # Each row has mfu / tokens_per_s = FLOPs per token / peak, so the run itself says how long 1e7 tokens take
    # at the median MFU (±0.1%).
    last = rows[-1]
    expected_s = 1e7 * (last["mfu"] / last["tokens_per_s"]) / median
    assert d["gpu_hours_compute"] * 3600 == pytest.approx(expected_s, rel=1e-3)
