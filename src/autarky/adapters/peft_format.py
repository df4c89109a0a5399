"""PEFT's adapter format, the contract with PEFT and vLLM: `adapter_config.json` + `adapter_model.safetensors`.

Keys are LlamaForCausalLM module names under PEFT's wrapper, e.g.
`base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight` (r, in) and `….lora_B.weight` (out, r); no base
weight is ever written. Loading reads which modules are adapted from the tensors themselves (so regex
`target_modules` and `layers_to_transform` need no interpretation) and refuses PEFT features our LoraLinear does not
implement, naming the field, instead of producing different logits.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from autarky.adapters.config import HF_TARGETS, LoraConfig
from autarky.adapters.lora import LoraLinear, freeze_base, lora_modules, target_linears, wrap_linears
from autarky.errors import UserError
from autarky.model.hf import from_hf_name, to_hf_name

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
_PREFIX = "base_model.model."

# PEFT LoraConfig fields whose non-default values change the computation in ways LoraLinear does not implement.
_UNSUPPORTED = {
    "use_dora": False, "fan_in_fan_out": False, "bias": "none", "lora_bias": False, "modules_to_save": None,
    "rank_pattern": {}, "alpha_pattern": {}, "layer_replication": None, "trainable_token_indices": None,
    "target_parameters": None, "alora_invocation_tokens": None, "use_qalora": False,
}


def peft_key(module: str, which: str) -> str:
    """('layers.0.attention.wq', 'A') → 'base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight'."""
    hf_module = to_hf_name(f"{module}.weight").removesuffix(".weight")
    return f"{_PREFIX}{hf_module}.lora_{which}.weight"


def _parse_key(key: str) -> tuple[str, str]:
    """The inverse of peft_key: (our module name, 'A' | 'B'); UserError for anything else."""
    for which in ("A", "B"):
        suffix = f".lora_{which}.weight"
        if key.startswith(_PREFIX) and key.endswith(suffix):
            hf_module = key[len(_PREFIX):-len(suffix)]
            return from_hf_name(f"{hf_module}.weight").removesuffix(".weight"), which
    raise UserError(f"unexpected tensor {key!r} in the adapter: only LoRA A/B weights of linear layers are supported")


def peft_config_dict(cfg: LoraConfig, base_model: str) -> dict:
    return {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model,
        "r": cfg.rank, "lora_alpha": cfg.alpha, "lora_dropout": cfg.dropout, "use_rslora": cfg.use_rslora,
        "target_modules": sorted(cfg.hf_targets), "bias": "none", "fan_in_fan_out": False, "use_dora": False,
        "init_lora_weights": True, "inference_mode": True, "modules_to_save": None,
        "layers_to_transform": None, "layers_pattern": None, "rank_pattern": {}, "alpha_pattern": {},
    }


def _full(tensor: torch.Tensor) -> torch.Tensor:
    """A plain CPU tensor, gathering an FSDP2 DTensor (a collective: every rank must call save_adapter)."""
    full = getattr(tensor, "full_tensor", None)
    return (full() if full is not None else tensor).detach().to("cpu").contiguous()


def save_adapter(model: nn.Module, cfg: LoraConfig, out_dir: Path, base_model: str) -> Path:
    """Write the model's adapters in PEFT format to `out_dir` (created; the two files replaced atomically).
    `base_model` is recorded as base_model_name_or_path. Under torch.distributed every rank must call it; rank 0
    writes."""
    state = {}
    for name, module in lora_modules(model):
        state[peft_key(name, "A")] = _full(module.lora_A)
        state[peft_key(name, "B")] = _full(module.lora_B)
    if not state:
        raise UserError("the model has no LoRA adapters to save")
    out_dir = Path(out_dir)
    if torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_rank():
        return out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_atomic(out_dir / WEIGHTS_FILE, lambda path: save_file(state, str(path), metadata={"format": "pt"}))
    text = json.dumps(peft_config_dict(cfg, base_model), indent=2) + "\n"
    _write_atomic(out_dir / CONFIG_FILE, lambda path: path.write_text(text))
    return out_dir


def _write_atomic(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_adapter_config(adapter_dir: Path) -> dict:
    path = Path(adapter_dir) / CONFIG_FILE
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{adapter_dir} is not a PEFT adapter folder (no {CONFIG_FILE})") from None
    except json.JSONDecodeError as bad:
        raise UserError(f"{path} is not valid JSON ({bad})") from None
    if raw.get("peft_type") != "LORA":
        raise UserError(f"{path}: peft_type {raw.get('peft_type')!r} is not supported (only LORA)")
    for field, default in _UNSUPPORTED.items():
        value = raw.get(field, default)
        if value != default and value not in (None, [], {}):
            raise UserError(f"{path}: {field} = {value!r} is not supported by autarky's LoRA")
    return raw


def read_adapter(adapter_dir: Path, *, base_int8: bool = False) -> tuple[LoraConfig, dict[str, dict[str, torch.Tensor]]]:
    """A PEFT LoRA adapter folder as (its LoraConfig, {our module name: {'A': (r, in), 'B': (out, r)}}), CPU
    tensors, with no model involved (serving stacks many adapters over one base). UserError for anything unsafe,
    unsupported or empty."""
    adapter_dir = Path(adapter_dir)
    raw = read_adapter_config(adapter_dir)
    if not (adapter_dir / WEIGHTS_FILE).is_file():
        raise UserError(f"{adapter_dir} has no {WEIGHTS_FILE} (pickled .bin adapters are not loaded for safety)")
    tensors: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in load_file(str(adapter_dir / WEIGHTS_FILE)).items():
        module, which = _parse_key(key)
        tensors.setdefault(module, {})[which] = tensor
    if not tensors:
        raise UserError(f"{adapter_dir / WEIGHTS_FILE} holds no LoRA weights")
    rank = int(raw.get("r", 8))
    leaves = {name.rsplit(".", 1)[-1] for name in tensors}
    try:
        cfg = LoraConfig(rank=rank, alpha=float(raw.get("lora_alpha", 8)), dropout=float(raw.get("lora_dropout", 0.0)),
                         targets=tuple(n for n in HF_TARGETS if n in leaves), use_rslora=bool(raw.get("use_rslora")),
                         base_int8=base_int8)
    except ValueError as bad:
        raise UserError(f"{adapter_dir / CONFIG_FILE}: {bad}") from None
    return cfg, tensors


def load_adapter(model: nn.Module, adapter_dir: Path, *, base_int8: bool = False) -> LoraConfig:
    """Load a PEFT LoRA adapter (ours or PEFT-written) onto `model` in place: modules named in the file become
    LoraLinear (or keep theirs, when the model already has adapters of that rank) and take its weights; everything
    else is frozen. Load onto the plain model, before any fully_shard. Returns the adapter's LoraConfig."""
    adapter_dir = Path(adapter_dir)
    cfg, tensors = read_adapter(adapter_dir, base_int8=base_int8)
    rank = cfg.rank
    existing = dict(lora_modules(model))
    candidates = set(target_linears(model, cfg.targets)) | existing.keys()
    unknown = sorted(tensors.keys() - candidates)
    if unknown:
        raise UserError(f"{adapter_dir}: the adapter adapts {unknown[:3]}, which this model does not have")
    wrap_linears(model, cfg, names=set(tensors) - existing.keys())
    modules = dict(lora_modules(model))
    with torch.no_grad():
        for name, pair in tensors.items():
            module = modules[name]
            _check_pair(adapter_dir, name, pair, module, rank)
            module.lora_A.copy_(pair["A"])
            module.lora_B.copy_(pair["B"])
            module.scaling = cfg.scaling
    freeze_base(model)
    return cfg


def _check_pair(adapter_dir: Path, name: str, pair: dict[str, torch.Tensor], module: LoraLinear, rank: int) -> None:
    if pair.keys() != {"A", "B"}:
        raise UserError(f"{adapter_dir}: {name} has lora_{'A' if 'A' not in pair else 'B'} missing")
    want = {"A": (rank, module.in_features), "B": (module.out_features, rank)}
    for which, shape in want.items():
        if tuple(pair[which].shape) != shape or module.rank != rank:
            raise UserError(f"{adapter_dir}: {name}.lora_{which} has shape {tuple(pair[which].shape)}, expected "
                            f"{shape} (rank {rank} on this model)")
