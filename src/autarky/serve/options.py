"""How a model is served: one pydantic tree whose defaults and descriptions both `ServedModelSpec` and the
`autarky serve` options take, so a default changes in one place. Torch-free: the CLI imports it at start-up."""

from __future__ import annotations

from pydantic import BaseModel, Field

# A request body larger than this is a 413 before anything parses it (a 50 MB prompt once stalled /health).
DEFAULT_MAX_BODY_MB = 8.0


class ServeOptions(BaseModel):
    dtype: str = Field("float32", description="float32 | bfloat16 | float16.")
    quantize: str | None = Field(
        None, description="int8 = weight-only int8 (fastest CPU decode: about 3.6x transformers at batch 1, where "
                          "the fp32 default is 2.1-2.4x; bench/serve_decode.py); bf16 = bf16 matmuls on prepacked "
                          "weights (avx512_bf16/AMX CPUs). Both can change greedy output at near-ties.")
    max_batch: int = Field(32, ge=1, description="Sequences decoded together per model.")
    max_queue: int = Field(256, ge=1, description="Waiting requests per model before answering 429.")
    max_model_len: int | None = Field(None, ge=2, description="Context limit (default: the model's).")
    device: str = Field("cpu", description="cpu | cuda | cuda:N.")
    decode_kernels: bool = Field(True, description="On CPU, decode through compiled matrix-vector kernels (about "
                                                   "twice as fast; needs a C++ compiler, else falls back by itself).")
    max_loras: int = Field(4, ge=1, description="LoRA adapters loaded at once (startup and runtime).")
    max_lora_rank: int = Field(16, ge=1, description="Largest LoRA rank an adapter may have (vLLM's default).")
    kv_cache_gb: float | None = Field(
        None, gt=0, description="Memory for the KV cache in GB (10^9 bytes), allocated in blocks of 16 tokens at "
                                "start-up and never exceeded; requests wait for room. Default: what --max-batch "
                                "sequences of --max-model-len need, at most 1 GB.")
    enable_prefix_caching: bool = Field(
        True, description="Reuse the KV cache of prompt prefixes seen before (whole blocks of 16 tokens, per "
                          "model and adapter): a shared system prompt is computed once.")
    max_num_batched_tokens: int = Field(
        512, ge=1, description="Tokens computed per engine step: long prompts are prefilled in chunks of at most "
                               "this, between the decode steps of running requests.")
    lora_runtime_updates: bool = Field(
        False, description="Allow POST /v1/load_lora_adapter and /v1/unload_lora_adapter (vLLM's routes).")


DEFAULTS = ServeOptions()
