"""`--emit-launch`: the torchrun command and `autarky train` flags for the plan's layout, as a shell script.

The Young/Daly checkpoint interval becomes `--ckpt-every` steps through the step time. `autarky train`'s
`--batch-size` is GLOBAL (sequences per optimizer step over all ranks) and the trainer's data-parallel degree is
GPUs / TP (FSDP2 over the rest), so for layouts with PP/CP the batch is re-rounded to what the trainer can split.
"""

from __future__ import annotations

import math
import shlex
from pathlib import Path

from autarky.errors import UserError
from autarky.plan.planner import PlanResult

UNSUPPORTED = {"pp": "pipeline parallelism", "cp": "context parallelism", "ep": "expert parallelism"}


def launch_script(result: PlanResult, data_dir: str = "data/", run_dir: str = "runs/planned",
                  rdzv_host: str = "$MASTER_ADDR") -> str:
    d = result.to_dict()
    lay, model, hw = d["layout"], d["model"], d["hardware"]
    per_node = min(hw["gpus_per_node"], d["gpus"])
    nodes = max(1, d["gpus"] // per_node)
    planned_batch = d["tokens_per_step"] // model["seq_len"]
    trainer_dp = d["gpus"] // lay["tp"]
    batch = planned_batch if planned_batch % trainer_dp == 0 else trainer_dp * lay["micro_batch"]
    step_time = d["step_time_s"] * batch / planned_batch
    steps = math.ceil(d["tokens"] / (batch * model["seq_len"]))
    ckpt_every = min(steps, max(1, round(d["checkpoint_interval_min"] * 60 / step_time)))
    train = ["autarky", "train", "--preset", model["name"], "--data", data_dir, "--out", run_dir,
             "--steps", str(steps), "--batch-size", str(batch), "--seq-len", str(model["seq_len"]),
             "--ckpt-every", str(ckpt_every), "--tp", str(lay["tp"]), "--resume", "auto"]
    gaps = [f"{UNSUPPORTED[k]} ({k.upper()}{lay[k]})" for k in UNSUPPORTED if lay[k] > 1]
    lines = [
        "#!/usr/bin/env bash",
        f"# autarky plan: {model['name']} on {d['gpus']:,} x {hw['name']} ({lay['label']}, ZeRO-{lay['zero']}, "
        f"recompute {lay['recompute']})",
        f"# {steps:,} steps of {batch:,} sequences x {model['seq_len']:,} tokens (global), ~{step_time:.3g} s/step at "
        f"MFU {d['mfu']:.1%} ({hw['precision']}); checkpoint every {ckpt_every:,} steps "
        f"= {d['checkpoint_interval_min']:.1f} min (Daly, job MTBF {d['job_mtbf_hours']:.2f} h)",
        "# What `autarky train` supports today: FSDP2 (ZeRO-3-like sharding over DP) + tensor parallel (--tp).",
        "# Pipeline, context and expert parallelism are planned but not in the trainer yet.",
    ]
    if gaps:
        lines.append(f"# WARNING: this layout uses {', '.join(gaps)}, which the trainer cannot run; the command "
                     "below keeps TP and shards the rest with FSDP, so memory per GPU will differ from the plan.")
    if batch != planned_batch:
        lines.append(f"# NOTE: the plan's global batch of {planned_batch:,} sequences is not divisible by the trainer's "
                     f"{trainer_dp:,} data-parallel ranks (GPUs / TP); it becomes {batch:,}.")
    if lay["zero"] != 3:
        lines.append(f"# NOTE: the plan assumed ZeRO-{lay['zero']}; the trainer shards with FSDP (ZeRO-3).")
    if model["name"] not in _presets():
        lines.append(f"# NOTE: {model['name']!r} is not an autarky preset; replace --preset with the nearest one.")
    if nodes == 1:
        launcher = ["torchrun", "--standalone", f"--nproc_per_node={per_node}"]
    else:
        launcher = ["torchrun", f"--nnodes={nodes}", f"--nproc_per_node={per_node}", "--rdzv-backend=c10d",
                    f"--rdzv-endpoint={rdzv_host}:29400", "--max-restarts=3"]
    command = " ".join(shlex.quote(a) if not a.startswith("--rdzv-endpoint") else a for a in launcher)
    lines += ["", f"{command} -m {' '.join(shlex.quote(a) for a in train)}", ""]
    return "\n".join(lines)


def _presets() -> set[str]:
    from autarky.model.sizes import PRESETS

    return set(PRESETS)


def write_launch(result: PlanResult, path: Path, **kw: str) -> Path:
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(launch_script(result, **kw))
    except OSError as exc:
        raise UserError(f"--emit-launch {path}: cannot write ({exc.strerror})") from None
    path.chmod(0o755)
    return path
