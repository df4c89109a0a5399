"""vLLM's LoRA routes: adapters listed in /v1/models with their `parent`, and loaded or unloaded at run time.

    POST /v1/load_lora_adapter   {"lora_name": "sql", "lora_path": "/adapters/sql"}     → 200 "Success: ..."
    POST /v1/unload_lora_adapter {"lora_name": "sql"}                                 → 200 "Success: ..."

As in vLLM, the two routes exist only when runtime updates are on (`--enable-lora-runtime-updates`, or
VLLM_ALLOW_RUNTIME_LORA_UPDATING=true): otherwise they answer 404, in the error envelope, saying how to turn them on.
"""

from __future__ import annotations

import asyncio

from fastapi import FastAPI
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException

from autarky.errors import UserError
from autarky.serve.errors import InvalidRequest
from autarky.serve.registry import ModelRegistry, ServedModel


class LoadLoraAdapterRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    lora_name: str = Field(min_length=1)
    lora_path: str = Field(min_length=1)
    base_model_name: str | None = None  # which served model, when several take adapters


class UnloadLoraAdapterRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    lora_name: str = Field(min_length=1)


def lora_cards(registry: ModelRegistry) -> list[dict]:
    """The /v1/models entries of the adapters, in vLLM's shape (`parent` names the base, `root` the folder)."""
    return [{"id": a.name, "object": "model", "created": a.created, "owned_by": "autarky", "root": a.source,
             "parent": a.parent, "max_model_len": a.max_model_len} for a in registry.adapters.values()]


def _runtime_bases(registry: ModelRegistry) -> list[ServedModel]:
    """The served models that take adapters at run time; 404 when none does (the routes are off)."""
    bases = [m for m in registry.models.values() if m.engine.lora is not None and m.engine.lora.runtime_updates]
    if not bases:
        raise HTTPException(404, "runtime LoRA updates are off; start the server with "
                                 "--enable-lora-runtime-updates (or VLLM_ALLOW_RUNTIME_LORA_UPDATING=true)")
    return bases


def _runtime_base(registry: ModelRegistry, name: str | None) -> ServedModel:
    bases = _runtime_bases(registry)
    if name is not None:
        bases = [m for m in bases if m.name == name]
        if not bases:
            raise InvalidRequest(f"the model {name!r} does not take runtime LoRA updates", param="base_model_name")
    if len(bases) > 1:
        raise InvalidRequest("several models take LoRA adapters; name one with base_model_name",
                             param="base_model_name")
    return bases[0]


def install_lora_routes(app: FastAPI, registry: ModelRegistry) -> None:
    # One lock: a load's checks (is the name free?) and its publication must not interleave with another's.
    lock = asyncio.Lock()

    @app.post("/v1/load_lora_adapter")
    async def load_lora_adapter(body: LoadLoraAdapterRequest) -> PlainTextResponse:
        registry.get(None)  # 503 while loading
        base = _runtime_base(registry, body.base_model_name)
        name = body.lora_name
        async with lock:
            if name in registry.models or name in registry.adapters:
                raise InvalidRequest(f"the LoRA adapter {name!r} has already been loaded", param="lora_name")
            try:
                # Reading and checking the files is slow next to a step: off the event loop.
                await asyncio.to_thread(registry.add_adapter, base.name, name, body.lora_path)
            except UserError as bad:
                raise InvalidRequest(bad.message, param="lora_path") from None
        return PlainTextResponse(f"Success: LoRA adapter '{name}' added successfully.")

    @app.post("/v1/unload_lora_adapter")
    async def unload_lora_adapter(body: UnloadLoraAdapterRequest) -> PlainTextResponse:
        registry.get(None)
        _runtime_bases(registry)
        async with lock:
            served = registry.adapters.get(body.lora_name)
            if served is None:
                loaded = ", ".join(registry.adapters) or "none"
                raise HTTPException(404, f"The lora adapter '{body.lora_name}' cannot be found (loaded: {loaded}).")
            if served.engine.lora is None or not served.engine.lora.runtime_updates:
                raise InvalidRequest(f"{body.lora_name!r} is served over a model without runtime LoRA updates",
                                     param="lora_name")
            registry.remove_adapter(body.lora_name)
        return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' removed successfully.")
