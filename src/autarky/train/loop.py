"""The training loop: `train(cfg) -> RunSummary`, the same code from one CPU process to torchrun on N nodes.

    autarky train --preset nano --data DIR --out runs/nano
    torchrun --nproc_per_node=8 -m autarky train --preset 1b --data DIR --out runs/1b --tp 2 --resume auto
    # self-healing: a crashed worker restarts the job, which resumes from the newest complete checkpoint
    # (gloo needs TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1, pytorch/pytorch#135712)
    TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 torchrun --nnodes=2 --nproc_per_node=8 --max-restarts=3 \
        --rdzv-backend=c10d --rdzv-endpoint=HOST:29400 -m autarky train ... --resume auto

Multi-node runs need RUN_DIR on a file system every node shares (checkpoints are written by all ranks).
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from autarky.contracts.rundir import CONFIG_FILE, TOKENIZER_DIR, read_meta
from autarky.data import read_manifest
from autarky.data.tokenizer import TOKENIZER_CONFIG_FILE, TOKENIZER_FILE
from autarky.model.config import flops_per_token, parameter_count
from autarky.model.llama import Llama
from autarky.model.moe import load_summary, update_expert_bias
from autarky.train.batches import SequentialCursor, WindowSampler, make_train_sampler
from autarky.train.checkpoint import load_checkpoint, save_checkpoint
from autarky.train.config import TrainConfig, dump_config
from autarky.train.expert_parallel import expert_parallel_degree
from autarky.train.metrics import MetricsLog, peak_flops, plot_losses
from autarky.train.parallelize import (
    all_reduce_mean,
    any_rank,
    barrier,
    dp_group,
    init_expert_mesh,
    init_process_group,
    parallelize,
)
from autarky.train.prepare import RunPlan, prepare
from autarky.train.schedule import lr_at
from autarky.train.step import (
    Batch,
    MicroBatch,
    autocast_for,
    batch_loss,
    build_optimizer,
    train_step,
    training_loss,
)

CRASH_ENV = "AUTARKY_CRASH_AT_STEP"  # test hook: SIGKILL one rank after this step (first attempt only)
CRASH_RANK_ENV = "AUTARKY_CRASH_RANK"
_FULL_INIT_MAX_PARAMS = 2_000_000_000  # above this, a multi-rank run initialises shards on the meta device


@dataclass(frozen=True)
class RunSummary:
    run_dir: Path
    step: int  # the last completed optimizer step
    loss: float | None
    val_loss: float | None
    tokens_per_s: float  # mean over this attempt's training steps after its first (which compiles and warms up)
    mfu: float
    wall_s: float
    checkpoint: Path | None
    stopped_by: int | None = None  # the signal number when SIGTERM/SIGINT cut the run short
    already_complete: bool = False  # resumed at its last step: nothing ran (losses are the checkpoint's)


def train(cfg: TrainConfig) -> RunSummary:
    """Validate, then train (or resume) the run described by `cfg`; writes only into cfg.run.out."""
    return run_trainer(Trainer, prepare(cfg))


class BatchSource(Protocol):
    """Where the loop's batches come from; a pure function of the step, so a resumed run sees the same ones."""

    def step_batches(self, step: int, device: torch.device) -> Sequence[Batch | MicroBatch]:
        """This rank's micro-batches of optimizer step `step`."""
        ...

    def val_batches(self, device: torch.device) -> Sequence[Batch | MicroBatch]:
        """This rank's fixed validation micro-batches (the same at every evaluation; empty: no validation)."""
        ...


def run_trainer(trainer: type[Trainer], plan: Any) -> RunSummary:
    """Join the process group, run `trainer` over the prepared plan, leave the group."""
    mesh = init_process_group(plan.topo)
    try:
        return trainer(plan, mesh).run()
    finally:
        if mesh is not None and dist.is_initialized():
            dist.destroy_process_group()


class _StopFlag:
    """Records SIGTERM/SIGINT so the loop can checkpoint at a step boundary and exit cleanly."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopFlag:
        if _in_main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: object) -> None:
        self.signum = signum

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


class WindowBatches:
    """Pretraining's batch source: windows of the train stream (random, or the sequential mixture cursor that
    `[data] order` asks for) and random windows of the val stream."""

    def __init__(self, train: WindowSampler | SequentialCursor, val: WindowSampler, eval_batches: int) -> None:
        self.train, self.val, self.eval_batches = train, val, eval_batches

    def step_batches(self, step: int, device: torch.device) -> Sequence[Batch]:
        return self.train.step_batches(step, device)

    def val_batches(self, device: torch.device) -> Sequence[Batch]:
        return self.val.val_batches(self.eval_batches, device)


class Trainer:
    """The loop. Pretraining uses it as is; another stage (finetune) subclasses it and overrides the hooks
    `build_model`, `batch_source`, `write_run_dir` and `checkpoint_meta`: the steps, schedule, checkpoints,
    metrics, signals and parallelism stay this one implementation. `plan` needs cfg (with run, optim, schedule,
    data, parallel and checkpoint sections), model_cfg, topo, run_dir and resume_from."""

    def __init__(self, plan: RunPlan, mesh: Any) -> None:
        self.plan, self.cfg, self.topo = plan, plan.cfg, plan.topo
        self.device = self.topo.device
        self.dp_group = dp_group(mesh)
        precision = self.cfg.run.precision
        self.bf16 = precision == "bf16" or (precision == "auto" and self.device.type == "cuda")
        compile_ = self.cfg.parallel.compile
        self.compile = self.device.type == "cuda" if compile_ is None else compile_
        self.console = Console(stderr=True)
        self.restart = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))  # torchrun's attempt number

        if self.topo.is_main:
            self.write_run_dir()
        barrier(self.topo.world)

        torch.manual_seed(self.cfg.run.seed)
        self.expert_mesh = init_expert_mesh(self.topo)
        self.model = self.build_model(mesh)
        self.optimizer = build_optimizer(self.model, self.cfg.optim)
        self.autocast = autocast_for(self.device, self.bf16)
        self.loss_fn = training_loss(self.compile)
        self.fsdp = mesh is not None and mesh["dp"].size() > 1

        d = self.cfg.data
        self.batches = self.batch_source()
        self.tokens_per_step = d.batch_size * d.seq_len
        self.flops_per_token = flops_per_token(plan.model_cfg, d.seq_len)
        self.peak, self.device_name = peak_flops(self.device)
        self.expert_loads: dict[str, list[float]] = {}

    def batch_source(self) -> BatchSource:
        d, plan = self.cfg.data, self.plan
        common = dict(seq_len=d.seq_len, batch_size=d.batch_size, grad_accum=d.grad_accum,
                      dp_size=self.topo.dp_size, dp_rank=self.topo.dp_rank, seed=self.cfg.run.seed)  # fmt: skip
        manifest = read_manifest(d.dir) if d.order == "sequential" else None
        train = make_train_sampler(d.order, plan.train_tokens, manifest, **common)
        return WindowBatches(train, WindowSampler(plan.val_tokens, **common), d.eval_batches)

    def build_model(self, mesh: Any) -> torch.nn.Module:
        cfg, ac = self.plan.model_cfg, self.cfg.parallel.activation_checkpointing

        def parallelized(model: Llama) -> torch.nn.Module:
            return parallelize(model, mesh, compile=self.compile, bf16=self.bf16, activation_checkpointing=ac,
                               expert_mesh=self.expert_mesh)  # fmt: skip

        if mesh is None or parameter_count(cfg) <= _FULL_INIT_MAX_PARAMS:
            model = Llama(cfg)
            model.init_weights(self.cfg.run.seed)  # seeded CPU generator: the same weights for every world size
            model.to(self.device)
            return parallelized(model)
        # Too big to materialise on every rank: shard on the meta device, then allocate and init only the shards.
        with torch.device("meta"):
            model = Llama(cfg)
        model = parallelized(model)
        model.to_empty(device=self.device)
        model.init_weights()  # type: ignore[operator]  # DTensor-aware random init from the seeded global RNG
        return model

    def write_run_dir(self) -> None:
        run_dir = self.plan.run_dir
        (run_dir / TOKENIZER_DIR).mkdir(parents=True, exist_ok=True)
        (run_dir / CONFIG_FILE).write_text(dump_config(self.cfg))
        for name in (TOKENIZER_FILE, TOKENIZER_CONFIG_FILE):  # so the run dir alone can be exported
            shutil.copyfile(self.plan.data_dir / name, run_dir / TOKENIZER_DIR / name)

    def _train_step(self, step: int) -> tuple[torch.Tensor, float]:
        batches = self.batches.step_batches(step, self.device)
        result = train_step(self.model, self.optimizer, batches, grad_clip=self.cfg.optim.grad_clip,
                            autocast=self.autocast, loss_fn=self.loss_fn, fsdp=self.fsdp)  # fmt: skip
        # MoE balancing outside the gradient step, from this step's token counts summed over data-parallel ranks.
        self.expert_loads = update_expert_bias(self.model, self.plan.model_cfg.balance_rate, self._sum_over_dp)
        return result

    def _sum_over_dp(self, counts: torch.Tensor) -> None:
        if self.dp_group is not None and dist.get_world_size(self.dp_group) > 1:
            dist.all_reduce(counts, op=dist.ReduceOp.SUM, group=self.dp_group)

    @torch.no_grad()
    def _evaluate(self) -> float | None:
        batches = self.batches.val_batches(self.device)
        if not batches:
            return None
        self.model.eval()
        losses = [batch_loss(self.model, batch, self.autocast) for batch in batches]
        self.model.train()
        return float(all_reduce_mean(torch.stack(losses).mean(), self.dp_group))

    def _lr(self, step: int) -> float:
        s = self.cfg.schedule
        return lr_at(step, lr=self.cfg.optim.lr, warmup_steps=s.warmup_steps, total_steps=self.cfg.run.steps,
                     min_lr_ratio=s.min_lr_ratio)  # fmt: skip

    def checkpoint_meta(self) -> dict[str, Any]:
        """What meta.json records beyond the step and its losses (the run-dir contract reads "model")."""
        return {"model": self.plan.model_cfg.to_dict(), "preset": self.cfg.model.preset}

    def _save(self, step: int, tokens: int, val_loss: float | None, loss: float | None) -> Path:
        train_state = {"step": step, "tokens": tokens, "data": {"kind": "random-windows", "seed": self.cfg.run.seed,
                                                                 "next_step": step + 1}}  # fmt: skip
        meta = {**self.checkpoint_meta(), "tokens": tokens, "loss": loss, "val_loss": val_loss,
                "world": self.topo.world, "ep": expert_parallel_degree(self.model)}  # fmt: skip
        return save_checkpoint(self.plan.run_dir, step, self.model, self.optimizer, train_state, meta, self.topo,
                               self.cfg.checkpoint.keep)  # fmt: skip

    def run(self) -> RunSummary:
        cfg, topo = self.cfg, self.topo
        start_step, tokens = 0, 0
        if self.plan.resume_from is not None:
            state = load_checkpoint(self.plan.resume_from, self.model, self.optimizer, topo)
            start_step, tokens = int(state["step"]), int(state["tokens"])
            if start_step >= cfg.run.steps:  # a finished run: say so rather than report an empty attempt
                meta = read_meta(self.plan.resume_from)
                return RunSummary(self.plan.run_dir, start_step, meta.get("loss"), meta.get("val_loss"), 0.0, 0.0,
                                  0.0, self.plan.resume_from.path, already_complete=True)  # fmt: skip
        log = MetricsLog(self.plan.run_dir, start_step) if topo.is_main else None
        total = cfg.run.steps
        wall_start = time.perf_counter()
        clock = _StepClock(self.device)
        loss_value = last_val = None
        last_ckpt: Path | None = None
        step = start_step
        progress = _progress(self.console, enabled=topo.is_main)
        with _StopFlag() as stop, progress:
            task = progress.add_task("train", total=total, completed=start_step, loss="")
            for step in range(start_step + 1, total + 1):
                for group in self.optimizer.param_groups:
                    group["lr"] = lr = self._lr(step)
                clock.start()
                local_loss, grad_norm = self._train_step(step)
                clock.steps += 1
                tokens += self.tokens_per_step
                evaluate = step == total or (cfg.run.eval_every and step % cfg.run.eval_every == 0)
                report = evaluate or step % cfg.run.log_every == 0
                if report or step == start_step + 1:
                    clock.stop()
                val_loss = self._evaluate() if evaluate else None
                last_val = val_loss if evaluate else last_val
                if report:
                    loss_value = float(all_reduce_mean(local_loss, self.dp_group))
                    tokens_per_s = clock.take_window() * self.tokens_per_step
                    row = {"step": step, "loss": loss_value, "lr": lr, "grad_norm": float(grad_norm),
                           "tokens": tokens, "tokens_per_s": tokens_per_s, "mfu": self._mfu(tokens_per_s),
                           "peak_flops": self.peak, "device": self.device_name, "world": topo.world,
                           "elapsed_s": time.perf_counter() - wall_start, "restart": self.restart}  # fmt: skip
                    row.update(load_summary(self.expert_loads))  # MoE: per-expert load, imbalance, drops
                    if val_loss is not None:
                        row["val_loss"] = val_loss
                    if log is not None:
                        log.write(row)
                    self._report(progress, task, row)
                progress.update(task, completed=step)
                _maybe_crash(step, topo.rank, topo.world)
                stopping = any_rank(stop.signum is not None, self.device, topo.world)
                every = cfg.checkpoint.every
                if stopping or step == total or (every and step % every == 0):
                    clock.stop()
                    last_ckpt = self._save(step, tokens, last_val, loss_value)
                if stopping:
                    break
        if topo.is_main and step > start_step:
            plot_losses(self.plan.run_dir)
        tokens_per_s = clock.steady_steps_per_s() * self.tokens_per_step
        return RunSummary(self.plan.run_dir, step, loss_value, last_val, tokens_per_s, self._mfu(tokens_per_s),
                          time.perf_counter() - wall_start, last_ckpt, stop.signum)  # fmt: skip

    def _mfu(self, tokens_per_s: float) -> float:
        achieved = tokens_per_s * self.flops_per_token / self.topo.world
        if "measured" in self.device_name and achieved > self.peak:
            # A measured peak is only a lower bound (a busy machine reads low); the best rate seen raises it,
            # so MFU stays a fraction and `autarky plan --mfu-from` can use it.
            self.peak = achieved
        return achieved / self.peak

    def _report(self, progress: Progress, task: Any, row: dict[str, Any]) -> None:
        text = f"loss {row['loss']:.3f}" + (f" val {row['val_loss']:.3f}" if "val_loss" in row else "")
        text += f" {row['tokens_per_s']:,.0f} tok/s mfu {row['mfu']:.1%}"
        progress.update(task, loss=text)
        if self.topo.is_main and not self.console.is_terminal and "val_loss" in row:
            self.console.print(f"step {row['step']}/{self.cfg.run.steps} {text}")


class _StepClock:
    """Training time, read only where the loop leaves its steps (to log, validate or checkpoint) and after the
    first step. On CUDA, steps are queued without waiting for the device in between, so the host prepares the
    next step while the GPU runs this one; reading the clock synchronizes first."""

    def __init__(self, device: torch.device, now: Callable[[], float] = time.perf_counter) -> None:
        self.device, self._now = device, now
        self.steps = 0  # steps run since the window opened
        self._started: float | None = None
        self._window_s = self._total_s = 0.0
        self._total_steps = 0
        self._first_step_s: float | None = None  # run() stops the clock after the first step

    def start(self) -> None:
        if self._started is None:
            self._started = self._now()

    def stop(self) -> None:
        if self._started is None:
            return
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        elapsed = self._now() - self._started
        self._started = None
        self._window_s += elapsed
        self._total_s += elapsed
        if self._first_step_s is None:
            self._first_step_s = elapsed

    def take_window(self) -> float:
        """Steps per second since the last call; the clock must be stopped."""
        rate = self.steps / self._window_s if self._window_s > 0 else 0.0
        self._total_steps += self.steps
        self.steps, self._window_s = 0, 0.0
        return rate

    def steady_steps_per_s(self) -> float:
        """Over the whole attempt, leaving out its first step (on CUDA it compiles every block and the loss)."""
        steps, seconds = self._total_steps + self.steps, self._total_s
        if steps > 1 and self._first_step_s is not None:
            steps, seconds = steps - 1, seconds - self._first_step_s
        return steps / seconds if seconds > 0 else 0.0


def _progress(console: Console, enabled: bool) -> Progress:
    return Progress(
        TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[loss]}"),
        TimeRemainingColumn(elapsed_when_finished=True),
        console=console, disable=not (enabled and console.is_terminal),
    )  # fmt: skip


def _maybe_crash(step: int, rank: int, world: int) -> None:
    """Hidden test hook: kill this rank hard after `step`, only on a job's first attempt."""
    target = os.environ.get(CRASH_ENV)
    if not target or int(target) != step or os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") != "0":
        return
    if rank == int(os.environ.get(CRASH_RANK_ENV, world - 1)):
        os.kill(os.getpid(), signal.SIGKILL)
