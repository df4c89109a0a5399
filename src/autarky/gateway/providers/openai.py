"""Egress to any OpenAI-compatible server: ours, vLLM, llama.cpp, OpenAI, Azure OpenAI."""

from __future__ import annotations

from collections.abc import AsyncIterator

import orjson

from autarky.gateway.providers.base import (
    TRANSPORT_ERRORS,
    Provider,
    UpstreamError,
    post,
    read_body,
    sse_lines,
    status_error,
    transport_error,
)
from autarky.gateway.router import Target

_PATHS = {"chat": "/chat/completions", "completions": "/completions"}


class OpenAIProvider(Provider):
    def _request(self, target: Target, body: dict, endpoint: str, stream: bool) -> tuple[str, bytes, dict]:
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
        return p.base_url.rstrip("/") + _PATHS[endpoint], orjson.dumps(payload), headers

    async def complete(self, target: Target, body: dict, endpoint: str = "chat") -> dict:
        who = target.provider
        resp = await post(self.session, target, *self._request(target, body, endpoint, stream=False))
        content = await read_body(resp, who)
        if resp.status >= 400:
            raise status_error(resp, content, who)
        try:
            data = orjson.loads(content)
        except orjson.JSONDecodeError as exc:
            raise UpstreamError(f"{who} sent malformed JSON", status=502) from exc
        if not isinstance(data, dict) or "choices" not in data:
            raise UpstreamError(f"{who} sent a body without `choices`", status=502)
        return data

    async def stream(self, target: Target, body: dict, endpoint: str = "chat") -> AsyncIterator[list[dict]]:
        who = target.provider
        resp = await post(self.session, target, *self._request(target, body, endpoint, stream=True))
        done = False
        try:
            if resp.status >= 400:
                raise status_error(resp, await read_body(resp, who), who)
            async for lines in sse_lines(resp):
                batch: list[dict] = []
                failure: UpstreamError | None = None
                for line in lines:
                    if not line.startswith(b"data:"):
                        continue  # blank separators, comments (keep-alives), `event:` lines
                    data = line[5:].strip()
                    if data == b"[DONE]":
                        done = True
                        break
                    try:
                        chunk = orjson.loads(data)
                    except orjson.JSONDecodeError:
                        failure = UpstreamError(f"{who} sent a malformed stream chunk", status=502)
                        break
                    if "error" in chunk:
                        err = chunk["error"]
                        msg = err.get("message", "error") if isinstance(err, dict) else err
                        failure = UpstreamError(f"{who} reported an error mid-stream: {msg}", status=502)
                        break
                    batch.append(chunk)
                if batch:
                    yield batch  # what arrived before a failure still reaches the client
                if failure is not None:
                    raise failure
                if done:
                    break
            if not done:
                raise UpstreamError(f"{who} ended the stream without [DONE]", status=502)
        except TRANSPORT_ERRORS as exc:
            raise transport_error(exc, who) from exc
        finally:
            # A finished stream returns its connection to the pool; an abandoned one is closed, which is
            # what cancels the generation upstream.
            if done:
                resp.release()
            else:
                resp.close()
