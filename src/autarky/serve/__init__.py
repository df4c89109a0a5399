"""`autarky serve`: Llama-architecture HF folders behind an OpenAI-compatible API, with continuous batching.

Layers, each its own module: engine (KV cache slots, scheduler, sampling; its own thread; raises the domain
errors of `errors`) ← registry (models by name) ← api (FastAPI routes over protocol's wire types; http_errors
maps every failure to the OpenAI envelope and its status; responses shapes events into objects and SSE chunks)
← server (uvicorn) ← commands (the CLI). CPU serving swaps the model's modules from outside (decode_kernels,
quantize, packed, and lora: many LoRA adapters over one base, batched together, with vLLM's load/unload routes in
lora_routes); the model's forward stays the one forward pass. Constrained decoding (structured: grammars
compiled once by llguidance, a matcher per sequence) and function calling (tools: prompts, parsing, forced-call
grammars) sit beside the engine and the routes.

Programmatic use (what the CLI does):

    from autarky.serve import ModelRegistry, Server, ServedModelSpec
    server = Server(ModelRegistry([ServedModelSpec("smollm2", name="smollm2")]), port=0).start()
    ...  # server.url + "/v1" for the openai SDK
    server.stop()
"""

from autarky.lazy import public

__all__, __getattr__ = public(__name__, {
    "Server": "server",
    "create_app": "api",
    "ModelRegistry": "registry",
    "ServedModel": "registry",
    "ServedModelSpec": "registry",
    "load_served_model": "registry",
    "Engine": "engine",
    "Request": "events",
    "TokenEvent": "events",
    "PromptEvent": "events",
    "ErrorEvent": "events",
    "TextCodec": "text",
    "Grammar": "structured",
    "GrammarCompiler": "structured",
    "ToolUse": "tools",
    "PagedKVCache": "cache",
    "BlockPool": "blocks",
    "use_decode_kernels": "decode_kernels",
    "LoraManager": "lora",
    "MultiLoraLinear": "lora",
    "quantize_int8": "quantize",
    "pack_bf16": "packed",
    "ServeError": "errors",
    "InvalidRequest": "errors",
    "ContextLengthExceeded": "errors",
    "ModelNotFound": "errors",
    "QueueFull": "errors",
    "NotReady": "errors",
    "GenerationFailed": "errors",
    "error_response": "http_errors",
})
