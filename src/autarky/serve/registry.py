"""The models one server process serves, each under its name, each with its own engine thread."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from autarky.errors import UserError
from autarky.model.llama import Llama
from autarky.serve.decode_kernels import use_decode_kernels
from autarky.serve.engine import Engine
from autarky.serve.errors import ModelNotFound, NotReady
from autarky.serve.lora import LoraAdapter, LoraManager
from autarky.serve.metrics import MetricFamilies
from autarky.serve.options import DEFAULTS
from autarky.serve.packed import pack_bf16
from autarky.serve.quantize import quantize_int8
from autarky.serve.text import TextCodec

log = logging.getLogger("autarky.serve")

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
QUANTIZE = {"int8": quantize_int8, "bf16": pack_bf16}  # what --quantize does to the loaded model


@dataclass(frozen=True)
class ServedModelSpec:
    """What to serve and how. `source` is anything `resolve_model_source` accepts (HF folder, .gguf, run dir,
    alias); `name` defaults to the alias or the folder's name."""

    source: str
    name: str | None = None
    # Defaults and meanings: autarky.serve.options.ServeOptions (shared with the CLI).
    dtype: str = DEFAULTS.dtype
    quantize: str | None = DEFAULTS.quantize  # None, "int8" or "bf16" (see QUANTIZE)
    max_batch: int = DEFAULTS.max_batch
    max_queue: int = DEFAULTS.max_queue
    max_model_len: int | None = DEFAULTS.max_model_len
    device: str = DEFAULTS.device
    decode_kernels: bool = DEFAULTS.decode_kernels  # CPU: few-row matmuls through autarky.serve.decode_kernels
    kv_cache_gb: float | None = DEFAULTS.kv_cache_gb  # the paged KV cache's memory (None: see ServeOptions)
    enable_prefix_caching: bool = DEFAULTS.enable_prefix_caching
    max_num_batched_tokens: int = DEFAULTS.max_num_batched_tokens  # per step: prompts are prefilled in chunks
    loras: tuple[tuple[str, str], ...] = ()  # (name, PEFT adapter folder) served over this model
    max_loras: int = DEFAULTS.max_loras
    max_lora_rank: int = DEFAULTS.max_lora_rank
    lora_runtime_updates: bool = DEFAULTS.lora_runtime_updates  # POST /v1/load_lora_adapter and .../unload_...

    @property
    def lora_enabled(self) -> bool:
        return bool(self.loras) or self.lora_runtime_updates

    def served_name(self) -> str:
        if self.name:
            return self.name
        path = Path(self.source)
        return path.stem if path.suffix == ".gguf" else (path.name or self.source)

    @staticmethod
    def parse(arg: str, **options: object) -> ServedModelSpec:
        """`MODEL` or `NAME=MODEL` (the second form names each of several models)."""
        name, sep, source = arg.partition("=")
        if sep and name and "/" not in name:
            return ServedModelSpec(source=source, name=name, **options)  # type: ignore[arg-type]
        return ServedModelSpec(source=arg, **options)  # type: ignore[arg-type]


@dataclass
class ServedModel:
    name: str
    engine: Engine
    codec: TextCodec
    source: str
    created: int = field(default_factory=lambda: int(time.time()))
    adapter: LoraAdapter | None = None  # set on an adapter served over its parent's engine
    parent: str | None = None

    @property
    def max_model_len(self) -> int:
        return self.engine.max_model_len


def load_served_model(spec: ServedModelSpec) -> tuple[Llama, TextCodec]:
    """Load weights and tokenizer for one spec (the slow part: runs in the loader thread)."""
    from autarky.export.source import resolve_model_source
    from autarky.model.hf import load_hf_folder

    if spec.dtype not in DTYPES:
        raise UserError(f"unknown dtype {spec.dtype!r}; choose one of {', '.join(DTYPES)}")
    if spec.quantize is not None and spec.quantize not in QUANTIZE:
        raise UserError(f"unknown quantization {spec.quantize!r}; choose one of {', '.join(QUANTIZE)}")
    folder = resolve_model_source(spec.source)
    model, _ = load_hf_folder(folder, dtype=DTYPES[spec.dtype], device=spec.device)
    if spec.quantize is not None:
        QUANTIZE[spec.quantize](model)
    if spec.decode_kernels and torch.device(spec.device).type == "cpu":
        use_decode_kernels(model)
    return model, TextCodec.from_folder(folder)


class ModelRegistry:
    def __init__(self, specs: list[ServedModelSpec] | None = None, metrics: MetricFamilies | None = None) -> None:
        self.specs = list(specs or [])
        names = [s.served_name() for s in self.specs] + [name for s in self.specs for name, _ in s.loras]
        duplicates = {n for n in names if names.count(n) > 1}
        if duplicates:
            raise UserError(f"two models share the name {sorted(duplicates)[0]!r}; name them with NAME=MODEL")
        self.metrics = metrics or MetricFamilies()
        self.models: dict[str, ServedModel] = {}
        self.adapters: dict[str, ServedModel] = {}  # LoRA adapters by name, each over a model of `models`
        self.error: str | None = None
        self.ready = threading.Event()

    def add(self, name: str, model: Llama, codec: TextCodec, source: str = "", **engine_options: object) -> None:
        """Serve an already-loaded model (used by `load` and by tests that build their own)."""
        engine = Engine(model, codec, metrics=self.metrics.for_model(name), name=name, **engine_options)  # type: ignore[arg-type]
        engine.start()
        self.models[name] = ServedModel(name, engine, codec, source or name)

    def load(self) -> None:
        """Load every spec; on failure keep `error` and stay not-ready (health answers 503 with the reason)."""
        try:
            for spec in self.specs:
                started = time.perf_counter()
                model, codec = load_served_model(spec)
                lora = None
                if spec.lora_enabled:
                    lora = LoraManager(model, max_loras=spec.max_loras, max_lora_rank=spec.max_lora_rank,
                                       runtime_updates=spec.lora_runtime_updates)
                self.add(spec.served_name(), model, codec, spec.source, max_batch=spec.max_batch,
                         max_queue=spec.max_queue, max_model_len=spec.max_model_len, lora=lora,
                         kv_cache_gb=spec.kv_cache_gb, enable_prefix_caching=spec.enable_prefix_caching,
                         max_num_batched_tokens=spec.max_num_batched_tokens)
                for adapter_name, path in spec.loras:
                    self.add_adapter(spec.served_name(), adapter_name, path)
                log.info("loaded %s from %s in %.1fs", spec.served_name(), spec.source,
                         time.perf_counter() - started)
        except UserError as exc:
            log.error("loading models failed: %s", exc.message)
            self.error = exc.message
            return
        except Exception as exc:
            log.exception("loading models failed")
            self.error = str(exc)
            return
        self.ready.set()

    def get(self, name: str | None) -> ServedModel:
        if not self.ready.is_set():
            raise NotReady(f"loading failed: {self.error}" if self.error else "The server is loading its models; retry shortly.")
        if name is None:
            return next(iter(self.models.values()))
        served = self.models.get(name) or self.adapters.get(name)
        if served is None:
            raise ModelNotFound(name, [*self.models, *self.adapters])
        return served

    def add_adapter(self, base: str, name: str, path: str) -> ServedModel:
        """Serve the PEFT adapter at `path` as model `name` over the model `base` (whose engine must have LoRA
        enabled). UserError says what is wrong (a clash of names, the adapter's files, rank or shapes)."""
        parent = self.models[base]
        if parent.engine.lora is None:
            raise UserError(f"the model {base!r} is not served with LoRA adapters")
        if name in self.models or name in self.adapters:
            raise UserError(f"the name {name!r} is already served; pick another lora_name")
        adapter = parent.engine.lora.load(name, path)
        served = ServedModel(name, parent.engine, parent.codec, str(path), adapter=adapter, parent=base)
        self.adapters[name] = served
        return served

    def remove_adapter(self, name: str) -> ServedModel:
        """Stop serving the adapter `name` (requests already running finish). KeyError if there is none."""
        served = self.adapters.pop(name)
        assert served.engine.lora is not None
        served.engine.lora.unload(name)
        return served

    def shutdown(self, timeout: float | None = None) -> None:
        """Finish in-flight requests on every engine, then stop their threads."""
        for served in self.models.values():
            served.engine.shutdown(timeout)
