"""Egress to any OpenAI-compatible server: ours, vLLM, llama.cpp, OpenAI, Azure OpenAI."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing

import orjson

from autarky.gateway.providers.base import (
    Provider,
    UpstreamError,
    post,
    post_json,
    relay_stream,
)
from autarky.gateway.router import Target
from autarky.gateway.translate import START_USAGE, openai_only

_PATHS = {"chat": "/chat/completions", "completions": "/completions"}


class OpenAIProvider(Provider):
    def _request(self, target: Target, body: dict, endpoint: str, stream: bool) -> tuple[str, bytes, dict]:
        p = target.provider_config
        payload = dict(openai_only(body, top_k=p.in_house))
        payload["model"] = target.model_entry.upstream_id or target.model
        if stream:
            payload["stream"] = True
            if p.stream_usage:
                payload["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
                if p.continuous_usage():
                    payload["stream_options"]["continuous_usage_stats"] = True
        headers = {"content-type": "application/json"}
        key = p.api_key()
        if key:
            headers["authorization"] = "Bearer " + key
        return p.base_url.rstrip("/") + _PATHS[endpoint], orjson.dumps(payload), headers

    async def complete(self, target: Target, body: dict, endpoint: str = "chat") -> dict:
        data = await post_json(self.session, target, *self._request(target, body, endpoint, stream=False))
        if "choices" not in data:
            raise UpstreamError(f"{target.provider} sent a body without `choices`", status=502)
        return data

    async def stream(self, target: Target, body: dict, endpoint: str = "chat") -> AsyncIterator[list[dict]]:
        who = target.provider
        resp = await post(self.session, target, *self._request(target, body, endpoint, stream=True))
        # With continuous usage the upstream counts on every chunk; the client asked (at most) for the usage-only
        # chunk at the end, so the first count rides privately (START_USAGE) and the others are dropped.
        continuous = target.provider_config.continuous_usage() and target.provider_config.stream_usage
        asked = bool((body.get("stream_options") or {}).get("continuous_usage_stats"))
        seen = False

        def parse(data: bytes) -> tuple[list[dict], bool]:
            if data == b"[DONE]":
                return [], True
            try:
                chunk = orjson.loads(data)
            except orjson.JSONDecodeError:
                raise UpstreamError(f"{who} sent a malformed stream chunk", status=502) from None
            if "error" in chunk:
                err = chunk["error"]
                msg = err.get("message", "error") if isinstance(err, dict) else err
                raise UpstreamError(f"{who} reported an error mid-stream: {msg}", status=502)
            nonlocal seen
            if continuous and not seen and chunk.get("usage"):
                seen = True
                chunk[START_USAGE] = chunk["usage"]
            if continuous and not asked and chunk.get("choices") and "usage" in chunk:
                del chunk["usage"]
            return [chunk], False

        # aclosing: when the client goes away, the relay closes the upstream connection at once.
        async with aclosing(relay_stream(resp, who, parse, "[DONE]")) as batches:
            async for batch in batches:
                yield batch
