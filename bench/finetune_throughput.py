"""LoRA fine-tuning tokens/s and peak memory: `autarky finetune`'s training step vs PEFT + transformers as TRL's
SFTTrainer builds it, side by side on the same data.

Like for like: the same base folder, LoRA rank/alpha/dropout on all linear layers of every block (not the head),
the same rows per step (--batch-size), the same sequence length, intra-op threads, learning rate and gradient
clipping, and the same examples: rendered once with the base's chat template by our renderer, trained on
assistant tokens only. Each side otherwise runs as it does by default:
  ours      autarky.finetune: examples packed best-fit into full rows (no padding; positions reset and attention
            stopped at example borders), the head and the loss only on trained tokens (Llama.forward's
            logits_where), fused with the cross-entropy a block of rows at a time on CPU (model.head_loss: the
            whole (N, V) logits never exist), fused AdamW over the adapters, the SwiGLU gate recomputed in
            backward and shared KV heads (finetune.trainer.lean_activations), glibc's malloc thresholds as
            finetune's run.return_freed_memory says (off by default: finetune.memory); fp32 on CPU, bf16
            autocast and per-block torch.compile on CUDA (the trainer's defaults)
  trl       trl.SFTTrainer(model=FOLDER, peft_config=peft.LoraConfig(target_modules="all-linear")) with SFTConfig's
            defaults (printed at start: packing, padding_free, gradient_checkpointing, completion-only loss,
            optimizer; in TRL 1.16: no packing, padding to the batch's longest example, gradient checkpointing
            on, AdamW fused), given the examples pre-tokenized as {input_ids, assistant_masks}; its own loop
            (trainer.train()), the model loaded in fp32 (TRL's default); its default bf16=True is set to match
            ours (fp32, or bf16 autocast with --bf16) so both sides compute in the same precision
Each side runs in its own process (its own peak RSS / peak CUDA memory); TRL's in its own venv, which the bench
makes on first use (pip; torch==2.13.0 from this disk, never a CUDA build). The two alternate in rounds of
--steps steps, so background load hits both alike; each side's best round is reported (as timeit does).
Tokens are the examples' own tokens (no padding) trained through per second, the same count on both sides.

    .venv/bin/python bench/finetune_throughput.py                              # SmolLM2-135M, CPU
    .venv/bin/python bench/finetune_throughput.py --model DIR --seq-len 128    # a tiny HF folder (with a chat template)
    .venv/bin/python bench/finetune_throughput.py --device cuda --bf16 --batch-size 16 --seq-len 1024
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Any

BASELINE = ["torch==2.13.0", "trl==1.16.0", "peft==0.21.2", "transformers==5.24.0"]
DEFAULT_VENV = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "autarky-bench" / "trl-venv"
WORDS = ("sum revenue column sheet cell range total average quarter region filter lookup formula table row "
         "value budget forecast margin cost invoice date month year pivot chart count unique match index "
         "the of a to in for with by from and or per each when if").split()  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2", help="base: smollm2 or an HF folder")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--alpha", type=float, default=32.0)
    parser.add_argument("--batch-size", type=int, default=4, help="rows per optimizer step, both sides")
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--examples", type=int, default=256, help="synthetic chat examples")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per round")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast on both sides (fp32 master weights)")
    parser.add_argument("--ac", choices=("none", "full", "selective"), help="our activation checkpointing "
                        "(default: autarky finetune's)")
    parser.add_argument("--return-freed-memory", action=argparse.BooleanOptionalAction, default=None,
                        help="our run.return_freed_memory (default: autarky finetune's)")
    parser.add_argument("--venv", type=Path, default=DEFAULT_VENV, help="TRL's venv (made when missing)")
    parser.add_argument("--skip-trl", action="store_true", help="ours only (no baseline venv)")
    parser.add_argument("--worker", choices=("ours", "trl"), help=argparse.SUPPRESS)
    parser.add_argument("--spec", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        spec = json.loads(args.spec.read_text())
        (ours_worker if args.worker == "ours" else trl_worker)(spec)
    else:
        run(args)


def run(args: argparse.Namespace) -> None:
    from autarky.export.source import resolve_model_source

    folder = resolve_model_source(args.model)
    workdir = Path(tempfile.mkdtemp(prefix="autarky-ft-bench-"))
    spec = {**{k: v for k, v in vars(args).items() if k not in ("venv", "spec", "worker", "model")},
            "folder": str(folder.resolve()), "workdir": str(workdir)}  # fmt: skip
    spec["data"] = prepare_data(folder, workdir, args)
    (workdir / "spec.json").write_text(json.dumps(spec))
    python = {"ours": sys.executable}
    if not args.skip_trl:
        python["trl"] = str(baseline_venv(args.venv) / "bin" / "python")
    workers = {name: Worker(name, exe, workdir) for name, exe in python.items()}
    try:
        for w in workers.values():
            print(f"  {w.name:<5} {w.ready['describe']}", file=sys.stderr)
        for _ in range(args.rounds):
            for w in workers.values():
                w.round()
        report(args, spec["data"], {name: w.finish() for name, w in workers.items()})
    finally:
        for w in workers.values():
            w.close()


def prepare_data(folder: Path, workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Synthetic single-turn chats rendered with the base's template (our renderer: both sides get its tokens and
    assistant mask); our packed rows saved for our worker, the examples as JSON for TRL's."""
    import numpy as np

    from autarky.finetune.packing import IGNORE, fit_to_length, pack_rows
    from autarky.finetune.records import read_records
    from autarky.finetune.render import Renderer

    rng = random.Random(0)
    path = workdir / "chats.jsonl"
    with path.open("w") as f:
        for _ in range(args.examples):
            question = " ".join(rng.choices(WORDS, k=rng.randint(8, 80)))
            answer = " ".join(rng.choices(WORDS, k=rng.randint(4, 60)))
            f.write(json.dumps({"messages": [{"role": "user", "content": question},
                                             {"role": "assistant", "content": answer}]}) + "\n")  # fmt: skip
    renderer = Renderer(folder)
    fitted = fit_to_length([renderer.encode(r) for r in read_records(path)], args.seq_len, "truncate")
    examples = fitted.examples
    rows = pack_rows(examples, args.seq_len, True, min(renderer.end_ids))
    # Each row's example tokens: its filled positions plus one final target token per example.
    real = rows.segments != -1
    row_tokens = real.sum(1) + np.array([len(set(s[m].tolist())) for s, m in zip(rows.segments, real, strict=True)])
    np.savez(workdir / "rows.npz", inputs=rows.inputs, targets=rows.targets, positions=rows.positions,
             segments=rows.segments, row_tokens=row_tokens)  # fmt: skip
    (workdir / "examples.json").write_text(json.dumps(
        [{"input_ids": ex.tokens, "assistant_masks": [int(t) for t in ex.trained]} for ex in examples]))
    tokens = sum(len(ex.tokens) for ex in examples)
    return {"examples": len(examples), "tokens": tokens, "rows": len(rows),
            "fill": float(real.mean()), "trained": int((rows.targets != IGNORE).sum())}  # fmt: skip


def baseline_venv(venv: Path) -> Path:
    if not (venv / "bin" / "python").exists() or subprocess.run(
            [str(venv / "bin" / "python"), "-c", "import trl, peft"], capture_output=True).returncode:
        print(f"  installing {' '.join(BASELINE)} into {venv} ...", file=sys.stderr)
        # The machine's Python, not this venv's: a venv made from a venv would see the project's packages.
        subprocess.run(["python3", "-m", "venv", str(venv)], check=True)
        pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
        subprocess.run([*pip, "torch==2.13.0"], check=True)  # first and alone: pip takes the CPU wheel on disk
        subprocess.run([*pip, *BASELINE], check=True)
    return venv


class Worker:
    """One side in its own process: a line of JSON back for each command written to it."""

    def __init__(self, name: str, python: str, workdir: Path) -> None:
        self.name, self.times, self.tokens = name, [], []
        self.log = (workdir / f"{name}.log").open("w")
        cmd = [python, __file__, "--worker", name, "--spec", str(workdir / "spec.json")]
        env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        if name == "trl":
            env.pop("PYTHONPATH", None)  # its own venv only
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True,
                                     env=env)  # fmt: skip
        self.ready = self._read()

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            self.log.flush()
            tail = Path(self.log.name).read_text()[-3000:]
            raise SystemExit(f"the {self.name} worker died:\n{tail}")
        return json.loads(line)

    def _send(self, command: str) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self._read()

    def round(self) -> None:
        r = self._send("go")
        self.times.append(r["seconds"])
        self.tokens.append(r["tokens"])

    def finish(self) -> dict[str, Any]:
        final = self._send("stop")
        best = min(range(len(self.times)), key=lambda i: self.times[i] / self.tokens[i])
        return {**self.ready, **final, "tokens_per_s": self.tokens[best] / self.times[best],
                "mean_tokens_per_s": sum(self.tokens) / sum(self.times)}

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.log.close()


def report(args: argparse.Namespace, data: dict[str, Any], results: dict[str, dict[str, Any]]) -> None:
    memory = "peak CUDA" if args.device == "cuda" else "peak RSS"
    print(f"\nLoRA r={args.rank} alpha={args.alpha:g} all-linear; {args.model}; batch {args.batch_size} rows × "
          f"seq_len {args.seq_len}; {'bf16 autocast' if args.bf16 else 'fp32'} on {args.device}, {args.threads} "
          f"threads; {data['examples']} examples, {data['tokens']} tokens (packed into {data['rows']} rows, "
          f"{data['fill']:.0%} full); best of {args.rounds} rounds × {args.steps} steps; "
          f"load avg {os.getloadavg()[0]:.1f}")  # fmt: skip
    print(f"{'side':<5} {'tokens/s':>10} {'(mean)':>10} {memory:>11} {'first loss':>10}")
    for name, r in results.items():
        print(f"{name:<5} {r['tokens_per_s']:>10,.0f} {r['mean_tokens_per_s']:>10,.0f} {r['peak_mb']:>8,.0f} MB "
              f"{r['first_loss']:>10.3f}")  # fmt: skip
    if "trl" in results:
        ours, trl = results["ours"], results["trl"]
        print(f"ours/trl: {ours['tokens_per_s'] / trl['tokens_per_s']:.2f}x the tokens/s (mean "
              f"{ours['mean_tokens_per_s'] / trl['mean_tokens_per_s']:.2f}x), {ours['peak_mb'] / trl['peak_mb']:.2f}x "
              f"the {memory}")  # fmt: skip


# ----- workers (the trl one runs in the baseline venv: it may import only the standard library and its own) -----


def protocol() -> tuple[IO[str], IO[str]]:
    """(commands in, replies out); everything else the libraries print goes to stderr (the worker's log)."""
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    return sys.stdin, out


def peak_mb(device: str) -> float:
    import torch

    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def ours_worker(spec: dict[str, Any]) -> None:
    import numpy as np
    import torch

    from autarky.adapters import LoraConfig, apply_lora
    from autarky.finetune.config import FinetuneConfig
    from autarky.finetune.memory import return_freed_memory
    from autarky.finetune.packing import PackedBatches, Rows
    from autarky.finetune.trainer import lean_activations
    from autarky.model.hf import load_hf_folder
    from autarky.train.parallelize import parallelize
    from autarky.train.step import autocast_for, build_optimizer, train_step, training_loss

    commands, out = protocol()
    # as autarky.finetune.finetune does with run.return_freed_memory (off by default: it costs CPU tokens/s)
    wanted = spec["return_freed_memory"]
    freed = return_freed_memory() if (FinetuneConfig().run.return_freed_memory if wanted is None else wanted) else False
    torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    compile_ = device.type == "cuda"  # the trainer's default
    optim = FinetuneConfig().optim
    model, _ = load_hf_folder(Path(spec["folder"]), torch.float32, "cpu")
    model.train()
    apply_lora(model, LoraConfig(rank=spec["rank"], alpha=spec["alpha"], targets="all-linear"), seed=0)
    lean_activations(model, device)  # as FinetuneTrainer.build_model does
    ac = spec["ac"] or FinetuneConfig().parallel.activation_checkpointing
    model = parallelize(model.to(device), None, compile=compile_, bf16=spec["bf16"],  # type: ignore[arg-type]
                        activation_checkpointing=ac)
    optimizer = build_optimizer(model, optim)
    autocast, loss_fn = autocast_for(device, spec["bf16"]), training_loss(compile_)
    z = np.load(Path(spec["workdir"]) / "rows.npz")
    rows = Rows(z["inputs"], z["targets"], z["positions"], z["segments"])
    empty = Rows(*(a[:0] for a in (z["inputs"], z["targets"], z["positions"], z["segments"])))
    source = PackedBatches(rows, empty, batch_size=spec["batch_size"], grad_accum=1, dp_size=1, dp_rank=0, seed=0,
                           eval_batches=1)  # fmt: skip
    step = 0

    def steps(n: int) -> tuple[float, int, float]:
        nonlocal step
        tokens, loss = 0, torch.zeros(())
        start = time.perf_counter()
        for _ in range(n):
            step += 1
            tokens += int(z["row_tokens"][source.step_rows(step)].sum())
            batches = source.step_batches(step, device)
            loss, _ = train_step(model, optimizer, batches, grad_clip=optim.grad_clip, autocast=autocast,
                                 loss_fn=loss_fn)  # fmt: skip
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start, tokens, float(loss)

    first = steps(1)[2]
    steps(spec["warmup"] - 1)
    head = "fused with the loss in row blocks" if not compile_ else "whole logits, compiled loss"
    describe = (f"packed rows (no padding), head+loss on trained tokens only ({head}), fused AdamW, "
                f"SwiGLU gate recomputed, shared KV heads on CPU, freed memory returned to the OS={freed}, "
                f"compile={compile_}, activation checkpointing={ac}")  # fmt: skip
    out.write(json.dumps({"describe": describe, "first_loss": first}) + "\n")
    for command in commands:
        if command.strip() != "go":
            break
        seconds, tokens, _ = steps(spec["steps"])
        out.write(json.dumps({"seconds": seconds, "tokens": tokens}) + "\n")
    out.write(json.dumps({"peak_mb": peak_mb(spec["device"])}) + "\n")


def trl_worker(spec: dict[str, Any]) -> None:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    commands, out = protocol()
    torch.set_num_threads(spec["threads"])
    examples = json.loads((Path(spec["workdir"]) / "examples.json").read_text())
    total_steps = spec["warmup"] + spec["rounds"] * spec["steps"] + 1
    config = SFTConfig(output_dir=str(Path(spec["workdir"]) / "trl-out"), per_device_train_batch_size=spec["batch_size"],
                       gradient_accumulation_steps=1, max_length=spec["seq_len"], max_steps=total_steps,
                       learning_rate=2e-4, max_grad_norm=1.0, bf16=spec["bf16"], use_cpu=spec["device"] == "cpu",
                       save_strategy="no", report_to="none", disable_tqdm=True, seed=0)  # fmt: skip
    peft_config = LoraConfig(r=spec["rank"], lora_alpha=spec["alpha"], lora_dropout=0.0,
                             target_modules="all-linear", task_type="CAUSAL_LM")  # fmt: skip
    trainer = SFTTrainer(model=spec["folder"], args=config, train_dataset=Dataset.from_list(examples),
                         peft_config=peft_config)  # fmt: skip
    counted = {"tokens": 0, "first_loss": None}
    training_step = trainer.training_step

    def counting_step(model: Any, inputs: dict[str, Any], *rest: Any, **kw: Any) -> Any:
        mask = inputs.get("attention_mask")
        counted["tokens"] += int(mask.sum()) if mask is not None else int(inputs["input_ids"].numel())
        loss = training_step(model, inputs, *rest, **kw)
        if counted["first_loss"] is None:
            counted["first_loss"] = float(loss)
        return loss

    trainer.training_step = counting_step  # type: ignore[method-assign]
    a = trainer.args
    describe = (f"trl SFTConfig defaults: packing={a.packing} padding_free={a.padding_free} "
                f"gradient_checkpointing={a.gradient_checkpointing} completion_only_loss={a.completion_only_loss} "
                f"optim={a.optim} use_liger_kernel={a.use_liger_kernel} torch_compile={a.torch_compile}")

    class Rounds(TrainerCallback):
        start, tokens = 0.0, 0

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            n = state.global_step - spec["warmup"]
            if n < 0 or n % spec["steps"]:
                return
            if spec["device"] == "cuda":
                torch.cuda.synchronize()
            if n == 0:
                out.write(json.dumps({"describe": describe, "first_loss": counted["first_loss"]}) + "\n")
            else:
                out.write(json.dumps({"seconds": time.perf_counter() - self.start,
                                      "tokens": counted["tokens"] - self.tokens}) + "\n")  # fmt: skip
            if commands.readline().strip() != "go":
                control.should_training_stop = True
            self.start, self.tokens = time.perf_counter(), counted["tokens"]

    trainer.add_callback(Rounds())
    trainer.train()
    out.write(json.dumps({"peak_mb": peak_mb(spec["device"])}) + "\n")


if __name__ == "__main__":
    main()
