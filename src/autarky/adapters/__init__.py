"""Adapters applied to the plain model from outside: LoRA as module swaps, PEFT's file format as the contract.

    from autarky.adapters import LoraConfig, apply_lora, lora_parameters, save_adapter, merge_lora
    apply_lora(model, LoraConfig(rank=16, alpha=32))    # targets become LoraLinear; everything else frozen
    optimizer = torch.optim.AdamW(lora_parameters(model).values(), lr=1e-4)
    save_adapter(model, cfg, out_dir, base_model="HuggingFaceTB/SmolLM2-135M-Instruct")  # PEFT/vLLM load it
"""

from autarky.lazy import public

__all__, __getattr__ = public(__name__, {
    "LoraConfig": "config",
    "LoraLinear": "lora",
    "apply_lora": "lora",
    "lora_parameters": "lora",
    "merge_lora": "lora",
    "fuse_swiglu": "swiglu",
    "save_adapter": "peft_format",
    "load_adapter": "peft_format",
})
