"""`autarky serve`: Llama-architecture HF folders behind an OpenAI-compatible API, with continuous batching.

Layers, each its own module: engine (KV cache slots, scheduler, sampling; its own thread) ← registry (models by
name) ← api (FastAPI routes over protocol's wire types; errors maps failures to the OpenAI envelope; responses
shapes events into objects and SSE chunks) ← server (uvicorn) ← commands (the CLI).

Programmatic use (what the CLI does):

    from autarky.serve.registry import ModelRegistry, ModelSpec
    from autarky.serve.server import Server
    server = Server(ModelRegistry([ModelSpec("smollm2", name="smollm2")]), port=0).start()
    ...  # server.url + "/v1" for the openai SDK
    server.stop()
"""
