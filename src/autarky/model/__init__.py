"""The model stage: Llama in plain PyTorch (one forward pass, shapes on the line) with the open families as its
configuration (Llama 3.x, Mistral, Qwen2/2.5, Qwen3, Qwen3-MoE; mixture-of-experts layers), their HF folder format, the GGUF import, sampling and
detokenization. A leaf: it imports nothing of the other stages, which apply parallelism,
checkpoints, compile and serving kernels from outside.

    from autarky.model import SamplingParams, generate_tokens, load_hf_folder
    model, _ = load_hf_folder(folder)
    logits = model(tokens, logits_at=[tokens.shape[1] - 1])  # (B, V) at the last position only
"""

from autarky.lazy import public

__all__, __getattr__ = public(__name__, {
    "ModelConfig": "config",
    "Llama": "llama",
    "KVCache": "llama",
    "parameter_count": "config",
    "flops_per_token": "config",
    "active_parameter_count": "config",
    "MoE": "moe",
    "update_expert_bias": "moe",
    "load_summary": "moe",
    "aux_loss": "moe",
    "FAMILIES": "config",
    "RopeScaling": "config",
    "PRESETS": "sizes",
    "preset": "sizes",
    "load_hf_folder": "hf",
    "save_hf_folder": "hf",
    "read_model_config": "hf",
    "eos_token_ids": "hf",
    "import_gguf": "gguf_import",
    "CHAT_TEMPLATE": "chat",
    "SPECIAL_TOKENS": "chat",
    "SamplingParams": "sampling",
    "sample_rows": "sampling",
    "StaticKVCache": "generate",
    "generate_tokens": "generate",
    "generate_text": "generate",
    "ChatTemplate": "tokenizer",
    "IncrementalText": "tokenizer",
    "load_hf_folder_tokenizer": "tokenizer",
    "render_chat": "tokenizer",
})
