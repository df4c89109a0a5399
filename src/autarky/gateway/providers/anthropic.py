"""Egress to the Anthropic Messages API, translating OpenAI chat requests and results both ways."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing

import orjson

from autarky.gateway.errors import bad_request
from autarky.gateway.providers.base import (
    Provider,
    UpstreamError,
    post,
    post_json,
    relay_stream,
)
from autarky.gateway.router import Target
from autarky.gateway.translate import (
    AnthropicToOpenAIChunks,
    anthropic_response_to_openai,
    json_tool_name,
    openai_request_to_anthropic,
)

API_VERSION = "2023-06-01"


class AnthropicProvider(Provider):
    def _request(self, target: Target, body: dict, endpoint: str) -> tuple[str, bytes, dict]:
        if endpoint != "chat":
            raise bad_request(f"model {target.model!r} is served by an Anthropic provider, which has no "
                              "/v1/completions; use /v1/chat/completions")
        p = target.provider_config
        payload = openai_request_to_anthropic(body, target.model_entry.upstream_id or target.model,
                                              self.default_max_tokens)
        return p.base_url.rstrip("/") + "/v1/messages", orjson.dumps(payload), _headers(target)

    async def complete(self, target: Target, body: dict, endpoint: str = "chat") -> dict:
        data = await post_json(self.session, target, *self._request(target, body, endpoint))
        if data.get("type") != "message":
            raise UpstreamError(f"{target.provider} sent a body that is not a message", status=502)
        return anthropic_response_to_openai(data, target.model, json_tool_name(body))

    async def count_tokens(self, target: Target, body: dict) -> dict:
        """Forward an Anthropic count_tokens body as it came (only the model renamed)."""
        payload = {**body, "model": target.model_entry.upstream_id or target.model}
        url = target.provider_config.base_url.rstrip("/") + "/v1/messages/count_tokens"
        data = await post_json(self.session, target, url, orjson.dumps(payload), _headers(target))
        if not isinstance(data.get("input_tokens"), int):
            raise UpstreamError(f"{target.provider} sent a count without input_tokens", status=502)
        return data

    async def stream(self, target: Target, body: dict, endpoint: str = "chat") -> AsyncIterator[list[dict]]:
        request = self._request(target, {**body, "stream": True}, endpoint)
        who = target.provider
        resp = await post(self.session, target, *request)
        chunks = AnthropicToOpenAIChunks(target.model, json_tool_name(body))

        def parse(data: bytes) -> tuple[list[dict], bool]:
            try:
                event = orjson.loads(data)
            except orjson.JSONDecodeError:
                raise UpstreamError(f"{who} sent a malformed stream event", status=502) from None
            kind = event.get("type")
            if kind == "error":
                msg = (event.get("error") or {}).get("message", "error")
                raise UpstreamError(f"{who} reported an error mid-stream: {msg}", status=502)
            if kind == "message_stop":
                return [], True
            return chunks.feed(event), False

        # aclosing: when the client goes away, the relay closes the upstream connection at once.
        async with aclosing(relay_stream(resp, who, parse, "message_stop")) as batches:
            async for batch in batches:
                yield batch


def _headers(target: Target) -> dict[str, str]:
    headers = {"content-type": "application/json", "anthropic-version": API_VERSION}
    key = target.provider_config.api_key()
    if key:
        headers["x-api-key"] = key
    return headers
