"""MoE training tokens/s: autarky's train step on our MoE vs the same model as `transformers.Qwen3MoeForCausalLM`.

Like for like: one Qwen3-MoE-shaped config (a preset made expressible by Qwen3-MoE: qk-norm attention, a softmax
router over the top k, no shared experts, balancing bias 0 and no auxiliary loss, so both sides compute the same
function), written for transformers by autarky.model.hf / hf_moe; the same initial weights (ours copied across,
the stacked experts into transformers' fused gate_up_proj / down_proj, and the first losses checked to agree); the
same batch, sequence length, dtype, threads, AdamW hyper-parameters (fused) and gradient clipping. Each side's
own code path:
  ours      autarky.train.step.train_step: our Llama with autarky.model.moe (sort by expert once, gate and up in
            one torch._grouped_mm where the device takes it), SDPA, FusedCrossEntropy, fused AdamW. The loop's per-step balancing
            update (update_expert_bias, a no-op at rate 0 but a host read) is left out, as is the loop itself.
  baseline  the standard Hugging Face recipe: model(input_ids, labels=...) → .loss, torch.optim.AdamW(fused=True),
            clip_grad_norm_; transformers' default experts implementation (printed: "grouped_mm" in 5.x)
The two alternate in short rounds in one process so background load hits both alike; each side's best round is
reported (as timeit does). MFU counts active-parameter FLOPs (autarky.model.config.flops_per_token) against the
device's peak (measured on CPU: a fp32 matmul at the bench's thread count). Both sides run the same matmuls, so
the ratio cannot exceed 1 / transformers' MFU (printed as the bound): at ~75% MFU on CPU, ~1.3×.

    .venv/bin/python bench/moe_throughput.py --threads 2                       # moe-nano-shaped, CPU fp32
    .venv/bin/python bench/moe_throughput.py --experts 32 --active-experts 4   # more, narrower experts
    .venv/bin/python bench/moe_throughput.py --device cuda --bf16 --dim 1024 --layers 12 --experts 64 \\
        --active-experts 8 --moe-ffn-dim 512 --batch-size 16 --seq-len 1024    # GPU: bf16 tokens/s and MFU
    .venv/bin/python bench/moe_throughput.py --profile                         # top ops of each side's step
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import replace

import torch

from autarky.model.config import ModelConfig, flops_per_token
from autarky.model.hf import hf_config_dict, hf_state_dict
from autarky.model.llama import Llama
from autarky.model.sizes import preset
from autarky.train.metrics import peak_flops
from autarky.train.step import autocast_for, build_optimizer, train_step
from train_throughput import OPTIM, hf_step  # the same HF step and optimizer settings as the dense bench

Step = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def qwen3_moe_shape(args: argparse.Namespace) -> ModelConfig:
    """The preset with the command line's overrides, made a model Qwen3-MoE expresses exactly."""
    base = preset(args.preset)
    overrides = {"dim": args.dim, "n_layers": args.layers, "n_experts": args.experts,
                 "n_active_experts": args.active_experts, "moe_ffn_dim": args.moe_ffn_dim}  # fmt: skip
    cfg = replace(base, **{k: v for k, v in overrides.items() if v is not None})
    return replace(cfg, family="qwen3_moe", qk_norm=True, n_shared_experts=0, score_func="softmax", route_scale=1.0,
                   route_norm=True, balance_rate=0.0, aux_loss_coef=0.0,
                   max_seq_len=max(cfg.max_seq_len, args.seq_len))  # fmt: skip


def transformers_weights(ours: Llama) -> dict[str, torch.Tensor]:
    """Our weights under transformers 5's Qwen3-MoE names: the per-expert export (what from_pretrained reads)
    restacked into the fused [E, 2H, D] gate_up_proj and [E, D, H] down_proj its module holds."""
    state = {k: v for k, v in hf_state_dict(ours).items() if ".mlp.experts." not in k}
    for name, tensor in ours.state_dict().items():
        if name.endswith(".experts.w1"):
            layer = name.split(".")[1]
            w3 = ours.state_dict()[name[:-1] + "3"]
            state[f"model.layers.{layer}.mlp.experts.gate_up_proj"] = torch.cat([tensor, w3], 1).clone()
        elif name.endswith(".experts.w2"):
            state[f"model.layers.{name.split('.')[1]}.mlp.experts.down_proj"] = tensor.clone()
    return state


def build_pair(cfg: ModelConfig, device: torch.device) -> tuple[Llama, torch.nn.Module]:
    from transformers import AutoConfig, AutoModelForCausalLM

    ours = Llama(cfg)
    ours.init_weights(0)
    hf_cfg = AutoConfig.for_model(**hf_config_dict(cfg, bos_token_id=0, eos_token_id=0, dtype=torch.float32))
    hf_cfg._attn_implementation = "sdpa"
    hf_cfg.use_cache = False  # training: no KV cache
    theirs = AutoModelForCausalLM.from_config(hf_cfg)
    assert type(theirs).__name__ == "Qwen3MoeForCausalLM", type(theirs)
    missing, unexpected = theirs.load_state_dict(transformers_weights(ours), strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
    if cfg.tie_embeddings:
        theirs.tie_weights()
    return ours.to(device).train(), theirs.to(device).train()


def ours_step(model: Llama, device: torch.device, bf16: bool) -> Step:
    optimizer = build_optimizer(model, OPTIM)
    autocast = autocast_for(device, bf16)

    def step(inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return train_step(model, optimizer, [(inputs, targets)], grad_clip=OPTIM.grad_clip, autocast=autocast)[0]

    return step


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(cfg: ModelConfig, args: argparse.Namespace, device: torch.device) -> dict[str, float]:
    ours, theirs = build_pair(cfg, device)
    print(f"  transformers experts implementation: {theirs.config._experts_implementation}")
    gen = torch.Generator().manual_seed(0)
    shape = (args.steps + args.warmup, args.batch_size, args.seq_len + 1)
    windows = torch.randint(0, cfg.vocab_size, shape, generator=gen).to(device)
    steps = {"ours": ours_step(ours, device, args.bf16), "hf": hf_step(theirs, args.bf16)}
    first = {name: float(fn(windows[0, :, :-1], windows[0, :, 1:])) for name, fn in steps.items()}
    if abs(first["ours"] - first["hf"]) > (2e-2 if args.bf16 else 1e-4):
        raise SystemExit(f"not the same model: first losses differ {first}")
    print(f"  first losses agree: {first}")
    for fn in steps.values():
        for w in windows[1 : args.warmup]:
            fn(w[:, :-1], w[:, 1:])
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.rounds):
        for name, fn in steps.items():
            sync(device)
            start = time.perf_counter()
            for w in windows[args.warmup :]:
                fn(w[:, :-1], w[:, 1:])
            sync(device)
            times[name].append((time.perf_counter() - start) / args.steps)
    if args.profile:
        profile(steps, windows[-1], device, args.top)
    return {name: args.batch_size * args.seq_len / min(t) for name, t in times.items()}


def profile(steps: dict[str, Step], window: torch.Tensor, device: torch.device, top: int) -> None:
    """One step of each side under torch.profiler: the ops that take the most self time."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sort_by = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    for name, fn in steps.items():
        with torch_profile(activities=activities) as prof:
            fn(window[:, :-1], window[:, 1:])
            sync(device)
        print(f"\n  {name}: top {top} ops by self time")
        print(prof.key_averages().table(sort_by=sort_by, row_limit=top, max_name_column_width=40))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="moe-nano", help="the shape to start from (made Qwen3-MoE-expressible)")
    parser.add_argument("--dim", type=int, help="override the preset's width")
    parser.add_argument("--layers", type=int, help="override the preset's layer count")
    parser.add_argument("--experts", type=int, help="override the routed experts per sparse layer")
    parser.add_argument("--active-experts", type=int, help="override the top k")
    parser.add_argument("--moe-ffn-dim", type=int, help="override one expert's hidden width")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=2, help="timed steps per round")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast on both sides (fp32 master weights)")
    parser.add_argument("--profile", action="store_true", help="then profile one step of each side")
    parser.add_argument("--top", type=int, default=12, help="ops listed per side with --profile")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device, 0) if args.device == "cuda" else torch.device("cpu")
    cfg = qwen3_moe_shape(args)
    peak, device_name = peak_flops(device)
    unit, scale = ("TFLOP/s", 1e12) if device.type == "cuda" else ("GFLOP/s", 1e9)
    print(f"{args.preset} as Qwen3-MoE ({cfg.dim}d × {cfg.n_layers} layers, {cfg.n_experts} experts top "
          f"{cfg.n_active_experts} of width {cfg.moe_ffn_dim}, first {cfg.first_k_dense} dense, vocab "
          f"{cfg.vocab_size}), batch {args.batch_size} × {args.seq_len}, {'bf16 autocast' if args.bf16 else 'fp32'}; "
          f"{device_name}, peak {peak / scale:.0f} {unit}")  # fmt: skip
    tps = measure(cfg, args, device)
    fpt = flops_per_token(cfg, args.seq_len)
    for name, value in tps.items():
        print(f"  {name:<5} {value:>12,.0f} tokens/s   MFU {value * fpt / peak:6.1%} (active-parameter FLOPs)")
    print(f"  ratio ours/hf = {tps['ours'] / tps['hf']:.2f}x   (bound with the same matmul FLOPs at peak: "
          f"{peak / (tps['hf'] * fpt):.2f}x)")


if __name__ == "__main__":
    main()
