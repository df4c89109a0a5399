"""Training tokens/s: autarky's train step vs the same model as `transformers.LlamaForCausalLM`, side by side.

Like for like: the same shape (ModelConfig → LlamaConfig via autarky.model.hf), the same initial weights (copied,
and the first losses are checked to agree), the same batch, sequence length, dtype, threads, AdamW hyper-
parameters and gradient clipping. What differs is each side's own code path:
  ours      autarky.train.step.train_step: our Llama, SDPA, fp32 loss, fused AdamW;
            compiled: each block and the loss, as `autarky train --compile` does (its default on CUDA)
  baseline  the standard Hugging Face recipe: model(input_ids, labels=...) → .loss, torch.optim.AdamW with
            fused=True (what transformers.Trainer's default "adamw_torch_fused" builds), clip_grad_norm_;
            compiled: the whole model, loss included, as Trainer's torch_compile=True does (off by default)
The two alternate in short rounds so background load hits both alike; each side's best round is reported
(as timeit does: on a shared machine the minimum is the least disturbed measurement). Neither side reads its
loss back between steps (on CUDA that would make the host wait for the device every step).

    .venv/bin/python bench/train_throughput.py                    # nano, CPU
    .venv/bin/python bench/train_throughput.py --compile both     # both sides torch.compile'd
    .venv/bin/python bench/train_throughput.py --compile ours     # each side as it runs out of the box on CUDA
    .venv/bin/python bench/train_throughput.py --bf16             # both sides bf16 autocast on this CPU
    .venv/bin/python bench/train_throughput.py --skip-cpu --gpu-runs small=32x1024  # CUDA: bf16 tokens/s, MFU
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

from autarky.errors import UserError
from autarky.model.config import ModelConfig, flops_per_token
from autarky.model.hf import hf_config_dict, to_hf_name
from autarky.model.llama import Llama
from autarky.model.sizes import preset
from autarky.train.config import OptimSection
from autarky.train.metrics import peak_flops
from autarky.train.step import autocast_for, build_optimizer, train_step, training_loss

OPTIM = OptimSection(lr=1e-3)  # our defaults otherwise (betas, eps, weight decay, clip 1.0)


def build_pair(cfg: ModelConfig, device: torch.device, compile_ours: bool,
               compile_hf: bool) -> tuple[Llama, torch.nn.Module]:  # fmt: skip
    from transformers import LlamaConfig, LlamaForCausalLM

    ours = Llama(cfg)
    ours.init_weights(0)
    hf_cfg = LlamaConfig(**hf_config_dict(cfg, bos_token_id=0, eos_token_id=0, dtype=torch.float32))
    hf_cfg._attn_implementation = "sdpa"
    hf_cfg.use_cache = False  # training: no KV cache (a cache object also makes compiled layers recompile)
    theirs = LlamaForCausalLM(hf_cfg)
    weights = {to_hf_name(k): v for k, v in ours.state_dict().items()}
    missing, unexpected = theirs.load_state_dict(weights, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
    ours.to(device).train()
    theirs.to(device).train()
    if compile_ours:
        for block in ours.layers.values():  # as autarky.train.parallelize does (the loss: training_loss)
            block.compile()
    if compile_hf:
        theirs.compile()  # as transformers.Trainer does with torch_compile=True: the whole model, loss included
    return ours, theirs


def ours_step(model: Llama, device: torch.device, bf16: bool,
              compile_: bool) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:  # fmt: skip
    optimizer = build_optimizer(model, OPTIM)
    autocast = autocast_for(device, bf16)
    loss_fn = training_loss(compile_)

    def step(inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        loss, _ = train_step(model, optimizer, [(inputs, targets)], grad_clip=OPTIM.grad_clip, autocast=autocast,
                             loss_fn=loss_fn)  # fmt: skip
        return loss

    return step


def hf_step(model: torch.nn.Module, bf16: bool) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": OPTIM.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}],
                                  lr=OPTIM.lr, betas=(OPTIM.beta1, OPTIM.beta2), eps=OPTIM.eps,
                                  fused=True)  # fmt: skip
    device_type = next(model.parameters()).device.type

    def step(inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16):
            # shift_labels: HF's loss takes the targets as given, so both sides score the same T tokens.
            loss = model(input_ids=inputs, labels=inputs, shift_labels=targets.contiguous()).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), OPTIM.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    return step


def measure(cfg: ModelConfig, batch: int, seq_len: int, device: torch.device, *, bf16: bool, compile_: str,
            rounds: int, steps: int, warmup: int) -> dict[str, float]:  # fmt: skip
    compile_ours, compile_hf = compile_ in ("both", "ours"), compile_ == "both"
    ours, theirs = build_pair(cfg, device, compile_ours, compile_hf)
    gen = torch.Generator().manual_seed(0)
    windows = torch.randint(0, cfg.vocab_size, (steps + warmup, batch, seq_len + 1), generator=gen).to(device)
    steps_by_name = {"ours": ours_step(ours, device, bf16, compile_ours), "hf": hf_step(theirs, bf16)}
    first = {name: float(fn(windows[0, :, :-1], windows[0, :, 1:])) for name, fn in steps_by_name.items()}
    if abs(first["ours"] - first["hf"]) > (2e-2 if bf16 else 1e-4):
        raise SystemExit(f"not the same model: first losses differ {first}")
    for fn in steps_by_name.values():
        for w in windows[1:warmup]:
            fn(w[:, :-1], w[:, 1:])
    times: dict[str, list[float]] = {name: [] for name in steps_by_name}
    for _ in range(rounds):
        for name, fn in steps_by_name.items():
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            for w in windows[warmup:]:
                fn(w[:, :-1], w[:, 1:])
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times[name].append((time.perf_counter() - start) / steps)
    return {name: batch * seq_len / min(t) for name, t in times.items()}


def report(label: str, cfg: ModelConfig, seq_len: int, tps: dict[str, float], peak: float) -> None:
    fpt = flops_per_token(cfg, seq_len)
    for name, value in tps.items():
        print(f"  {label:<6} {name:<5} {value:>12,.0f} tokens/s   MFU {value * fpt / peak:6.1%}")
    print(f"  {label:<6} ratio ours/hf = {tps['ours'] / tps['hf']:.2f}x")


def gpu_run(text: str) -> tuple[str, int, int]:
    """'small=16x1024' → ("small", 16, 1024)."""
    try:
        name, shape = text.split("=")
        batch, seq_len = (int(n) for n in shape.split("x"))
        preset(name)
    except (ValueError, UserError) as exc:
        message = f"{text!r}: expected PRESET=BATCHxSEQ_LEN, e.g. small=16x1024 ({exc})"
        raise argparse.ArgumentTypeError(message) from None
    return name, batch, seq_len


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="nano")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--steps", type=int, default=2, help="timed steps per round")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--compile", choices=("none", "both", "ours"), default="none",
                        help="torch.compile neither side, both (each its own way), or ours only")  # fmt: skip
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast on both sides on CPU too (avx512_bf16/AMX)")
    parser.add_argument("--gpu-runs", nargs="+", type=gpu_run, metavar="PRESET=BATCHxSEQ_LEN",
                        default=[("small", 16, 1024), ("small", 64, 1024), ("1b", 4, 2048)],
                        help="measured in bf16 when CUDA is present")  # fmt: skip
    parser.add_argument("--skip-cpu", action="store_true", help="only the CUDA presets")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if not args.skip_cpu:
        measure_cpu(args)
    if torch.cuda.is_available():
        measure_cuda(args)


def measure_cpu(args: argparse.Namespace) -> None:
    cpu = torch.device("cpu")
    peak, device_name = peak_flops(cpu)
    cfg = preset(args.preset)
    print(f"{args.preset} ({cfg.dim}d × {cfg.n_layers} layers, vocab {cfg.vocab_size}), batch {args.batch_size} × "
          f"{args.seq_len} tokens, {'bf16 autocast' if args.bf16 else 'fp32'}, compile={args.compile}; "
          f"{device_name}, fp32 peak {peak / 1e9:.0f} GFLOP/s")  # fmt: skip
    tps = measure(cfg, args.batch_size, args.seq_len, cpu, bf16=args.bf16, compile_=args.compile,
                  rounds=args.rounds, steps=args.steps, warmup=args.warmup)  # fmt: skip
    report("cpu", cfg, args.seq_len, tps, peak)


def measure_cuda(args: argparse.Namespace) -> None:
    gpu = torch.device("cuda", 0)
    gpu_peak, gpu_name = peak_flops(gpu)
    for name, batch, seq_len in args.gpu_runs:
        cfg = preset(name)
        print(f"{name} on {gpu_name}: bf16 autocast, batch {batch} × {seq_len}, compile={args.compile}, "
              f"peak {gpu_peak / 1e12:.0f} TFLOP/s")  # fmt: skip
        tps = measure(cfg, batch, seq_len, gpu, bf16=True, compile_=args.compile,
                      rounds=args.rounds, steps=args.steps, warmup=args.warmup)  # fmt: skip
        report(name, cfg, seq_len, tps, gpu_peak)
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
