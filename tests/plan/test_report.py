"""The Rich report and the demo's side-by-side plans."""

import json

from rich.console import Console

from autarky.plan.planner import PlanRequest, plan
from autarky.plan.report import render
from autarky.plan.showcase import demo_plans


def test_report_has_every_section():
    console = Console(width=160, record=True)
    console.print(render(plan(PlanRequest(preset="70b", tokens=15e12, gpus=2048, tp=8, find_layout=True))))
    text = console.export_text()
    for section in ("Compute", "Memory per GPU", "Power (nameplate)", "Cost", "Reliability", "GPU only (TDP)",
                    "facility", "goodput", "Young", "Daly"):
        assert section in text, section


def test_demo_plans_show_the_cost_of_slow_checkpoints_at_8x_scale(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    rows = [{"step": s, "loss": 4.0, "tokens_per_s": 900.0, "mfu": 0.07, "peak_flops": 1.0e11, "device": "cpu"}
            for s in range(1, 9)]
    (run_dir / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (run_dir / "config.toml").write_text('preset = "nano"\n')
    (local, here), (_, base), (_, big_slow), (_, big_fast) = demo_plans(run_dir)
    assert here["hardware"]["name"] == "local" and here["mfu"] == 0.07
    assert big_slow["gpus"] == 8 * base["gpus"]
    # Eight times the GPUs but failures eight times as often: with 1-min checkpoints and 10-min restarts the
    # first-order model loses most of the time; fast checkpoint/restart restores Llama-3-like goodput.
    assert big_slow["goodput"] < 0.5 < base["goodput"] < 0.9
    assert big_fast["goodput"] > 0.75 and big_fast["days"] < big_slow["days"]
