"""CLI commands of this stage: thin shells over the package API."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import typer

from autarky.clikit import field_option
from autarky.errors import UserError
from autarky.serve.options import DEFAULT_MAX_BODY_MB, ServeOptions


def _opt(field: str, *names: str, **kwargs: object) -> typer.models.OptionInfo:
    """An option over ServeOptions' field: its default and help are the config's own."""
    return field_option(ServeOptions, field, *names, **kwargs)


def _with_passive_openmp_threads() -> None:
    """Run this `autarky serve` process again with OMP_WAIT_POLICY=PASSIVE (unless the operator chose a wait policy
    or spin count). libgomp's default has each thread spin for milliseconds after every parallel region, waiting
    for the next; a decode step of many rows is ~200 short regions (one per oneDNN product), and on a machine whose
    cores are shared the spinning threads take the CPU from the threads with work: measured at load ~11-15 on 2
    cores, 8 streams 7.7-10.9 tok/s spinning vs 63-65 passive, 32 streams 10 vs 133; perf showed 87% of the
    server's time in libgomp's spin loop. libgomp reads the policy once, when torch loads it, so only a new
    process can change it: the CLI starts without torch, so setting it first is enough; a process that already
    loaded torch is re-run, and only if it is the `autarky` command itself, never a process that imports it."""
    if "OMP_WAIT_POLICY" in os.environ or "GOMP_SPINCOUNT" in os.environ:
        return
    if "torch" not in sys.modules:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
        return
    argv = sys.orig_argv
    command = argv[1:3] == ["-m", "autarky"] or (len(argv) > 1 and Path(argv[1]).name == "autarky")
    if command and "serve" in argv:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
        sys.stdout.flush(), sys.stderr.flush()
        os.execv(sys.executable, argv)


def _check_device(device: str) -> None:
    import torch

    try:
        where = torch.device(device)
    except RuntimeError:
        raise UserError(f"unknown device {device!r}; use cpu, cuda or cuda:N") from None
    if where.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (where.index or 0) >= count:
            raise UserError(f"device {device!r} is not here ({count} CUDA device(s) visible)")


def _check_model(source: str) -> None:
    """Fail before any port opens: the source resolves to an HF folder with a readable config and weights. (The
    weights themselves load after the server starts, so /health can answer 503 meanwhile.)"""
    from autarky.export.source import resolve_model_source
    from autarky.model.hf import read_model_config

    folder = resolve_model_source(source)
    read_model_config(folder)
    if not ((folder / "model.safetensors").is_file() or (folder / "model.safetensors.index.json").is_file()):
        raise UserError(f"{folder} has no model.safetensors weights")


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
        max_body_mb: float = typer.Option(DEFAULT_MAX_BODY_MB, "--max-body-mb", min=0.001,
                                          help="Largest request body accepted, in MB (larger: 413)."),
        max_batch: int = _opt("max_batch", "--max-batch", min=1),
        max_queue: int = _opt("max_queue", "--max-queue", min=1),
        max_model_len: int | None = _opt("max_model_len", "--max-model-len", min=2),
        dtype: str = _opt("dtype", "--dtype"),
        quantize: str | None = _opt("quantize", "--quantize"),
        device: str = _opt("device", "--device"),
        decode_kernels: bool = _opt("decode_kernels", "--decode-kernels/--no-decode-kernels"),
        kv_cache_gb: float | None = _opt("kv_cache_gb", "--kv-cache-gb", min=0.0001),
        enable_prefix_caching: bool = _opt("enable_prefix_caching",
                                           "--enable-prefix-caching/--no-enable-prefix-caching"),
        max_num_batched_tokens: int = _opt("max_num_batched_tokens", "--max-num-batched-tokens", min=1),
        lora: list[str] = typer.Option(
            [], "--lora", metavar="NAME=PATH",
            help="Serve a PEFT LoRA adapter folder as model NAME over the (single) MODEL; repeat for several. "
                 "Requests for any adapter and the base share one batch.",
        ),
        max_loras: int = _opt("max_loras", "--max-loras", min=1),
        max_lora_rank: int = _opt("max_lora_rank", "--max-lora-rank", min=1),
        enable_lora_runtime_updates: bool = _opt("lora_runtime_updates", "--enable-lora-runtime-updates",
                                                 envvar="VLLM_ALLOW_RUNTIME_LORA_UPDATING"),
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
        if not 0 <= port <= 65535:
            raise UserError(f"--port {port} is not a port (0-65535)")
        loras = tuple(parse_lora_arg(arg, max_lora_rank) for arg in lora)
        _with_passive_openmp_threads()
        _check_device(device)
        if threads:
            torch.set_num_threads(threads)
        logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        options = dict(dtype=dtype, quantize=quantize, max_batch=max_batch, max_queue=max_queue,
                       max_model_len=max_model_len, device=device,
                       decode_kernels=decode_kernels, kv_cache_gb=kv_cache_gb,
                       enable_prefix_caching=enable_prefix_caching, max_num_batched_tokens=max_num_batched_tokens,
                       loras=loras, max_loras=max_loras,
                       max_lora_rank=max_lora_rank, lora_runtime_updates=enable_lora_runtime_updates)
        specs = [ServedModelSpec.parse(m, **options) for m in models]
        if name:
            specs = [ServedModelSpec(**{**specs[0].__dict__, "name": name})]
        for spec in specs:
            typer.echo(f"autarky serve: checking {spec.source} ...", err=True)
            _check_model(spec.source)
        registry = ModelRegistry(specs)
        server: Server | None = None

        def announce() -> None:
            assert server is not None
            names = ", ".join(registry.models)
            typer.echo(f"autarky serve: ready at {server.url}/v1 (models: {names})", err=False)

        try:
            server = Server(registry, host, port, on_ready=lambda: announce(), log_level=log_level,
                            exit_on_load_failure=True, api_key=api_key, max_body_mb=max_body_mb)
        except (OSError, OverflowError) as exc:
            raise UserError(f"cannot listen on {host}:{port} ({exc}); pick another --port") from None
        names = ", ".join(spec.served_name() for spec in specs)
        typer.echo(f"autarky serve: loading {names} (/health answers 503 until ready) ...", err=True)
        server.run()
        if registry.error:
            raise UserError(f"loading failed: {registry.error}")
