"""Egress to the Anthropic Messages API, translating OpenAI chat requests and results both ways."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import orjson

from autarky.gateway.errors import bad_request
from autarky.gateway.providers.base import Provider, UpstreamError, status_error, timeout_for, transport_error
from autarky.gateway.router import Target
from autarky.gateway.translate import (
    AnthropicToOpenAIChunks,
    anthropic_response_to_openai,
    openai_request_to_anthropic,
)

API_VERSION = "2023-06-01"


class AnthropicProvider(Provider):
    def _request(self, target: Target, body: dict, endpoint: str) -> httpx.Request:
        if endpoint != "chat":
            raise bad_request(f"model {target.model!r} is served by an Anthropic provider, which has no "
                              "/v1/completions; use /v1/chat/completions")
        p = target.provider_config
        payload = openai_request_to_anthropic(body, target.model_config.upstream_id or target.model,
                                              self.default_max_tokens)
        headers = {"content-type": "application/json", "anthropic-version": API_VERSION}
        key = p.api_key()
        if key:
            headers["x-api-key"] = key
        return self.client.build_request("POST", p.base_url.rstrip("/") + "/v1/messages",
                                         content=orjson.dumps(payload), headers=headers, timeout=timeout_for(target))

    async def complete(self, target: Target, body: dict, endpoint: str = "chat") -> dict:
        request = self._request(target, body, endpoint)
        who = target.provider
        try:
            resp = await self.client.send(request)
        except httpx.HTTPError as exc:
            raise transport_error(exc, who) from exc
        if resp.status_code >= 400:
            raise status_error(resp, resp.content, who)
        try:
            data = orjson.loads(resp.content)
        except orjson.JSONDecodeError as exc:
            raise UpstreamError(f"{who} sent malformed JSON", status=502) from exc
        if not isinstance(data, dict) or data.get("type") != "message":
            raise UpstreamError(f"{who} sent a body that is not a message", status=502)
        return anthropic_response_to_openai(data, target.model)

    async def stream(self, target: Target, body: dict, endpoint: str = "chat") -> AsyncIterator[dict]:
        request = self._request(target, {**body, "stream": True}, endpoint)
        who = target.provider
        try:
            resp = await self.client.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise transport_error(exc, who) from exc
        chunks = AnthropicToOpenAIChunks(target.model)
        try:
            if resp.status_code >= 400:
                raise status_error(resp, await resp.aread(), who)
            stopped = False
            async for line in resp.aiter_lines():
                if not line.startswith("data:"):
                    continue
                try:
                    event = orjson.loads(line[5:].strip())
                except orjson.JSONDecodeError as exc:
                    raise UpstreamError(f"{who} sent a malformed stream event", status=502) from exc
                kind = event.get("type")
                if kind == "error":
                    msg = (event.get("error") or {}).get("message", "error")
                    raise UpstreamError(f"{who} reported an error mid-stream: {msg}", status=502)
                if kind == "message_stop":
                    stopped = True
                    break
                for chunk in chunks.feed(event):
                    yield chunk
            if not stopped:
                raise UpstreamError(f"{who} ended the stream without message_stop", status=502)
        except httpx.HTTPError as exc:
            raise transport_error(exc, who) from exc
        finally:
            await resp.aclose()
