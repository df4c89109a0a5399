"""LoRA as a module swap: each targeted nn.Linear of the plain model becomes a `LoraLinear` from outside.

    y = x·Wᵀ + b + (dropout(x)·Aᵀ·Bᵀ)·scaling     A (r, in) kaiming-uniform, B (out, r) zeros ⇒ step 0 == base

The base weight and bias keep their parameter names (`layers.0.attention.wq.weight`), so checkpoints and loaders
of the base still line up; the adapters are `…wq.lora_A` / `…wq.lora_B`, held in fp32 whatever the base dtype
(PEFT's default: small tensors, and training them in bf16 loses the update). Requires_grad is off for every base
parameter; FSDP2 allows frozen and trainable parameters in one unit as long as the trainable ones share a dtype.

`quantize_base=True` (LoraConfig.base_int8) stores the frozen base weight as int8 with one fp scale per output
channel (absmax / 127), dequantized in forward: a QLoRA-style memory saving (¼ of fp32) at the cost of one
dequantization per call. The int8 weight and its scales are buffers, so FSDP2 leaves them unsharded.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from autarky.adapters.config import LoraConfig
from autarky.errors import UserError

# Wrapper segments that torch.compile, activation checkpointing and FSDP1 insert into module names.
_WRAPPER_SEGMENTS = ("_orig_mod.", "_checkpoint_wrapped_module.", "_fsdp_wrapped_module.")


def quantize_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-channel int8: weight (out, in) → (int8 (out, in), scale (out,)) in weight's dtype."""
    w32 = weight.detach().float()
    scale = (w32.abs().amax(dim=1) / 127.0).clamp_min(torch.finfo(torch.float32).tiny)  # (out,)
    q = torch.round(w32 / scale[:, None]).clamp_(-127, 127).to(torch.int8)  # (out, in)
    return q, scale.to(weight.dtype)


class LoraLinear(nn.Module):
    """A frozen Linear (fp, or int8 weight-only) plus a trainable low-rank update B·A."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0, *,
                 use_rslora: bool = False, quantize_base: bool = False) -> None:  # fmt: skip
        super().__init__()
        if rank <= 0:
            raise ValueError(f"LoRA rank must be positive, got {rank}")
        self.in_features, self.out_features = base.in_features, base.out_features
        self.rank = rank
        self.scaling = alpha / (math.sqrt(rank) if use_rslora else rank)
        self.dropout = dropout
        weight = base.weight
        if quantize_base:
            q, scale = quantize_int8(weight)
            self.register_parameter("weight", None)
            self.register_buffer("weight_int8", q)  # (out, in) int8
            self.register_buffer("weight_scale", scale)  # (out,)
        else:
            weight.requires_grad_(False)
            self.weight = weight  # the same Parameter object: ties and optimizer-free sharing survive
            self.weight_int8 = self.weight_scale = None
        self.bias = base.bias
        if self.bias is not None:
            self.bias.requires_grad_(False)
        dtype = torch.promote_types(weight.dtype, torch.float32)
        self.lora_A = nn.Parameter(torch.empty(rank, self.in_features, device=weight.device, dtype=dtype))
        self.lora_B = nn.Parameter(torch.empty(self.out_features, rank, device=weight.device, dtype=dtype))
        self.reset_lora_parameters()

    @property
    def quantized(self) -> bool:
        return self.weight_int8 is not None

    def reset_lora_parameters(self, generator: torch.Generator | None = None) -> None:
        """A kaiming-uniform as PEFT initialises it, B zeros: the adapted model starts equal to the base.
        Also the way to initialise after building on the meta device."""
        with torch.no_grad():
            nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5), generator=generator)
            self.lora_B.zero_()

    def base_weight(self, dtype: torch.dtype) -> torch.Tensor:
        """The frozen base weight (out, in) in `dtype` (dequantized when int8)."""
        if self.weight_int8 is not None:
            return self.weight_int8.to(dtype) * self.weight_scale.to(dtype)[:, None]
        return self.weight.to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x, self.base_weight(x.dtype), self.bias)  # (..., out)
        h = F.dropout(x, self.dropout, self.training).to(self.lora_A.dtype)  # (..., in)
        update = F.linear(F.linear(h, self.lora_A), self.lora_B)  # (..., r) → (..., out)
        return out + (update * self.scaling).to(out.dtype)

    def merged(self) -> nn.Linear:
        """A plain Linear with W + B·A·scaling, summed in fp32 and cast back to the base dtype once (a bf16 sum
        loses the small update: peft#1388)."""
        with torch.no_grad():
            dtype = self.weight_scale.dtype if self.weight_int8 is not None else self.weight.dtype
            w32 = self.base_weight(torch.float32) + (self.lora_B.float() @ self.lora_A.float()) * self.scaling
            linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                               device=w32.device, dtype=dtype)
            linear.weight = nn.Parameter(w32.to(dtype), requires_grad=False)
            if self.bias is not None:
                linear.bias = self.bias
        return linear

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}, "
                f"scaling={self.scaling:g}, dropout={self.dropout}, int8_base={self.quantized}")


def clean_name(name: str) -> str:
    """A module/parameter name without compile/checkpoint wrapper segments: the name on the plain model."""
    for segment in _WRAPPER_SEGMENTS:
        name = name.replace(segment, "")
    return name


def lora_modules(model: nn.Module) -> Iterator[tuple[str, LoraLinear]]:
    """(plain-model name, module) of every LoraLinear, e.g. ('layers.0.attention.wq', …)."""
    for name, module in model.named_modules():
        if isinstance(module, LoraLinear):
            yield clean_name(name), module


def target_linears(model: nn.Module, targets: tuple[str, ...]) -> dict[str, tuple[nn.Module, str]]:
    """{plain-model name: (parent, attribute)} of every nn.Linear whose attribute name is one of `targets`
    (the block projections wq … w3; the output head is never a target)."""
    found = {}
    for parent_name, parent in model.named_modules():
        for attr, child in parent.named_children():
            if attr in targets and type(child) is nn.Linear:
                found[clean_name(f"{parent_name}.{attr}" if parent_name else attr)] = (parent, attr)
    return found


def freeze_base(model: nn.Module) -> None:
    """Every parameter frozen except the LoRA adapters (embeddings, norms and biases included, as PEFT does)."""
    for param in model.parameters():
        param.requires_grad_(False)
    for _, module in lora_modules(model):
        module.lora_A.requires_grad_(True)
        module.lora_B.requires_grad_(True)


def wrap_linears(model: nn.Module, cfg: LoraConfig, names: set[str] | None = None,
                 generator: torch.Generator | None = None) -> list[str]:  # fmt: skip
    """Swap the targeted Linears (only those in `names` when given) for LoraLinear; returns the names swapped."""
    swapped = []
    for name, (parent, attr) in target_linears(model, cfg.targets).items():
        if names is not None and name not in names:
            continue
        module = LoraLinear(getattr(parent, attr), cfg.rank, cfg.alpha, cfg.dropout,
                            use_rslora=cfg.use_rslora, quantize_base=cfg.base_int8)
        if generator is not None:
            module.reset_lora_parameters(generator)
        module.train(parent.training)  # a new module is in training mode; dropout must follow the model's
        setattr(parent, attr, module)
        swapped.append(name)
    return swapped


def apply_lora(model: nn.Module, cfg: LoraConfig, *, seed: int | None = None) -> nn.Module:
    """Turn every target projection of `model` into a LoraLinear in place and freeze everything else.
    `seed` makes the A initialisation reproducible (B is zero, so the output equals the base either way)."""
    if any(True for _ in lora_modules(model)):
        raise ValueError("the model already has LoRA adapters (merge_lora it first)")
    generator = None if seed is None else torch.Generator().manual_seed(seed)
    if not wrap_linears(model, cfg, generator=generator):
        raise UserError(f"no module of the model matches the LoRA targets {list(cfg.targets)}")
    freeze_base(model)
    return model


def lora_parameters(model: nn.Module) -> dict[str, torch.Tensor]:
    """The trainable adapter tensors by plain-model name: {'layers.0.attention.wq.lora_A': (r, in), …lora_B: (out, r)}."""
    params = {}
    for name, module in lora_modules(model):
        params[f"{name}.lora_A"] = module.lora_A
        params[f"{name}.lora_B"] = module.lora_B
    return params


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold each adapter into its base weight (in fp32, cast back to the weight dtype) and put plain Linears back,
    in place. An int8 base comes back dequantized in its scales' dtype. Call it on an unsharded model."""
    for parent in list(model.modules()):
        for attr, child in list(parent.named_children()):
            if isinstance(child, LoraLinear):
                setattr(parent, attr, child.merged())
    return model
