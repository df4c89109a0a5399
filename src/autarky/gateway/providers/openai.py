"""Egress to any OpenAI-compatible server: ours, vLLM, llama.cpp, OpenAI, Azure OpenAI."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import orjson

from autarky.gateway.providers.base import Provider, UpstreamError, status_error, timeout_for, transport_error
from autarky.gateway.router import Target

_PATHS = {"chat": "/chat/completions", "completions": "/completions"}


class OpenAIProvider(Provider):
    def _request(self, target: Target, body: dict, endpoint: str, stream: bool) -> httpx.Request:
        p = target.provider_config
        payload = dict(body)
        payload["model"] = target.model_config.upstream_id or target.model
        if stream:
            payload["stream"] = True
            if p.stream_usage:
                payload["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        headers = {"content-type": "application/json"}
        key = p.api_key()
        if key:
            headers["authorization"] = "Bearer " + key
        return self.client.build_request(
            "POST", p.base_url.rstrip("/") + _PATHS[endpoint], content=orjson.dumps(payload), headers=headers,
            timeout=timeout_for(target),
        )

    async def complete(self, target: Target, body: dict, endpoint: str = "chat") -> dict:
        who = target.provider
        try:
            resp = await self.client.send(self._request(target, body, endpoint, stream=False))
        except httpx.HTTPError as exc:
            raise transport_error(exc, who) from exc
        if resp.status_code >= 400:
            raise status_error(resp, resp.content, who)
        try:
            data = orjson.loads(resp.content)
        except orjson.JSONDecodeError as exc:
            raise UpstreamError(f"{who} sent malformed JSON", status=502) from exc
        if not isinstance(data, dict) or "choices" not in data:
            raise UpstreamError(f"{who} sent a body without `choices`", status=502)
        return data

    async def stream(self, target: Target, body: dict, endpoint: str = "chat") -> AsyncIterator[dict]:
        who = target.provider
        try:
            resp = await self.client.send(self._request(target, body, endpoint, stream=True), stream=True)
        except httpx.HTTPError as exc:
            raise transport_error(exc, who) from exc
        try:
            if resp.status_code >= 400:
                raise status_error(resp, await resp.aread(), who)
            done = False
            async for line in resp.aiter_lines():
                if not line.startswith("data:"):
                    continue  # blank separators, comments (keep-alives), `event:` lines
                data = line[5:].strip()
                if data == "[DONE]":
                    done = True
                    break
                try:
                    chunk = orjson.loads(data)
                except orjson.JSONDecodeError as exc:
                    raise UpstreamError(f"{who} sent a malformed stream chunk", status=502) from exc
                if "error" in chunk:
                    msg = (chunk["error"] or {}).get("message", "error") if isinstance(chunk["error"], dict) else chunk
                    raise UpstreamError(f"{who} reported an error mid-stream: {msg}", status=502)
                yield chunk
            if not done:
                raise UpstreamError(f"{who} ended the stream without [DONE]", status=502)
        except httpx.HTTPError as exc:
            raise transport_error(exc, who) from exc
        finally:
            await resp.aclose()
