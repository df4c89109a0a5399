"""The plan stage: FLOPs, GPU-hours, memory per GPU per parallel layout, power, cost and reliability of a run.

`plan(PlanRequest(...)) -> PlanResult` (`.to_dict()`/`.to_json()` for programs), `render(result)` and
`render_comparison(results, labels)` for people, `write_launch(result, path)` for the torchrun script, and
`print_demo_plans(run_dir)` for the demo. A measured run (`PlanRequest(mfu_from=RUN_DIR)`) is read through
`autarky.contracts.rundir`.
"""

from autarky.lazy import public

__all__, __getattr__ = public(__name__, {
    "PlanRequest": "planner",
    "PlanResult": "planner",
    "plan": "planner",
    "render": "report",
    "render_comparison": "report",
    "write_launch": "launch",
    "print_demo_plans": "showcase",
})
