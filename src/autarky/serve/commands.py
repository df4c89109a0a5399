"""CLI commands of this stage: thin shells over the package API."""

from __future__ import annotations

import logging

import typer

from autarky.errors import UserError


def register(app: typer.Typer) -> None:
    """Add this stage's commands to the `autarky` app."""

    @app.command()
    def serve(
        models: list[str] = typer.Argument(
            ..., metavar="MODEL...",
            help="HF folder, .gguf file, run dir or `smollm2`; several models as NAME=MODEL each.",
        ),
        name: str | None = typer.Option(None, help="Name to serve a single MODEL under (default: its folder name)."),
        host: str = typer.Option("127.0.0.1", help="Address to listen on."),
        port: int = typer.Option(8000, help="Port (0 = any free port; the URL is printed when ready)."),
        max_batch: int = typer.Option(32, min=1, help="Sequences decoded together per model."),
        max_queue: int = typer.Option(256, min=1, help="Waiting requests per model before answering 429."),
        max_model_len: int | None = typer.Option(None, min=2, help="Context limit (default: the model's)."),
        dtype: str = typer.Option("float32", help="float32 | bfloat16 | float16."),
        quantize: str | None = typer.Option(
            None, help="int8 = weight-only int8 (fastest CPU decode: about 3.6x transformers at batch 1, where the fp32 "
                       "default is 2.1-2.4x; bench/serve_decode.py); bf16 = bf16 matmuls on prepacked weights "
                       "(avx512_bf16/AMX CPUs). Both can change greedy output at near-ties.",
        ),
        device: str = typer.Option("cpu", help="cpu | cuda | cuda:N."),
        decode_kernels: bool = typer.Option(
            True, help="On CPU, decode through compiled matrix-vector kernels (about twice as fast; needs a C++ "
                       "compiler, else falls back by itself).",
        ),
        lora: list[str] = typer.Option(
            [], "--lora", metavar="NAME=PATH",
            help="Serve a PEFT LoRA adapter folder as model NAME over the (single) MODEL; repeat for several. "
                 "Requests for any adapter and the base share one batch.",
        ),
        max_loras: int = typer.Option(4, min=1, help="LoRA adapters loaded at once (startup and runtime)."),
        max_lora_rank: int = typer.Option(16, min=1, help="Largest LoRA rank an adapter may have."),
        enable_lora_runtime_updates: bool = typer.Option(
            False, envvar="VLLM_ALLOW_RUNTIME_LORA_UPDATING",
            help="Allow POST /v1/load_lora_adapter and /v1/unload_lora_adapter (vLLM's routes).",
        ),
        threads: int | None = typer.Option(None, min=1, help="torch intra-op threads (default: torch's choice)."),
        log_level: str = typer.Option("info", help="debug | info | warning | error."),
        api_key: str | None = typer.Option(None, envvar="AUTARKY_SERVE_API_KEY",
                                           help="Require `Authorization: Bearer KEY` on /v1 routes."),
    ) -> None:
        """Serve models behind an OpenAI-compatible API (/v1/completions, /v1/chat/completions, ...)."""
        import torch

        from autarky.serve.lora import parse_lora_arg
        from autarky.serve.registry import ModelRegistry, ServedModelSpec
        from autarky.serve.server import Server

        if name and len(models) > 1:
            raise UserError("--name names a single model; for several, write each as NAME=MODEL")
        if lora and len(models) > 1:
            raise UserError("--lora serves adapters over a single MODEL; serve one base per server")
        loras = tuple(parse_lora_arg(arg, max_lora_rank) for arg in lora)
        if threads:
            torch.set_num_threads(threads)
        logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        options = dict(dtype=dtype, quantize=quantize, max_batch=max_batch, max_queue=max_queue,
                       max_model_len=max_model_len, device=device,
                       decode_kernels=decode_kernels, loras=loras, max_loras=max_loras,
                       max_lora_rank=max_lora_rank, lora_runtime_updates=enable_lora_runtime_updates)
        specs = [ServedModelSpec.parse(m, **options) for m in models]
        if name:
            specs = [ServedModelSpec(**{**specs[0].__dict__, "name": name})]
        registry = ModelRegistry(specs)
        server: Server | None = None

        def announce() -> None:
            assert server is not None
            names = ", ".join(registry.models)
            typer.echo(f"autarky serve: ready at {server.url}/v1 (models: {names})", err=False)

        try:
            server = Server(registry, host, port, on_ready=lambda: announce(), log_level=log_level,
                            exit_on_load_failure=True, api_key=api_key)
        except OSError as exc:
            raise UserError(f"cannot listen on {host}:{port} ({exc}); pick another --port") from None
        server.run()
        if registry.error:
            raise UserError(f"loading failed: {registry.error}")
