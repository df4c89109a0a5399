"""What a request needs from its upstream (tools, JSON output, images, thinking, context) and what each
candidate declares it can carry; the router keeps only candidates able to serve the request.

A model entry declares `supports` in gateway.toml; without it the provider decides: Anthropic-kind upstreams
carry all four, OpenAI-kind partners tools, JSON and images, and in-house OpenAI-kind servers tools and JSON (what
`autarky serve` and vLLM carry: function calling and grammar-constrained output; declare `supports = []` for a
server that answers plain chat only)."""

from __future__ import annotations

from typing import Literal

from autarky.gateway.config import ModelEntry, ProviderConfig

Capability = Literal["tools", "json_schema", "images", "thinking"]
ALL: frozenset[str] = frozenset(("tools", "json_schema", "images", "thinking"))
_PARTNER_OPENAI: frozenset[str] = frozenset(("tools", "json_schema", "images"))
_IN_HOUSE: frozenset[str] = frozenset(("tools", "json_schema"))


# The request fields an Anthropic upstream is sent (translate/egress.py), and OpenAI hints it may go without
# (caching, storage and tiering hints with no meaning there). Any other field set to something other than its
# off value (None, False, 0, "") needs an OpenAI-kind upstream: the implicit capability "openai_params".
CARRIED_TO_ANTHROPIC = frozenset((
    "model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k", "stop", "stream",
    "stream_options", "tools", "tool_choice", "parallel_tool_calls", "response_format", "user", "n", "thinking",
    "anthropic_extra", "prompt_cache_key", "store", "metadata", "service_tier", "safety_identifier", "modalities"))
# Anthropic fields the internal form has no place for ride in `anthropic_extra` (translate/ingress.py): only
# Anthropic-kind upstreams can carry them (the implicit capability "anthropic_params").


def supports(entry: ModelEntry, provider: ProviderConfig) -> frozenset[str]:
    implicit = frozenset(("openai_params",) if provider.kind == "openai" else ("anthropic_params",))
    if entry.supports is not None:
        return frozenset(entry.supports) | implicit
    if provider.kind == "anthropic":
        return ALL | implicit
    return (_IN_HOUSE if provider.in_house else _PARTNER_OPENAI) | implicit


def needs(body: dict) -> dict[str, str]:
    """Capability -> the first request field that needs it (named in the 400 when no candidate can carry it)."""
    out: dict[str, str] = {}
    if body.get("tools"):
        out["tools"] = "tools"
    elif body.get("tool_choice") not in (None, "none", "auto"):
        out["tools"] = "tool_choice"
    fmt = body.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") in ("json_object", "json_schema"):
        out["json_schema"] = "response_format"
    if body.get("thinking") is not None:
        out["thinking"] = "thinking"
    if not body.keys() <= CARRIED_TO_ANTHROPIC:
        for name, value in body.items():
            if name not in CARRIED_TO_ANTHROPIC and value not in (None, False, 0, ""):
                out["openai_params"] = name
                break
    if body.get("n") not in (None, 1):
        out.setdefault("openai_params", "n")
    extra = body.get("anthropic_extra")
    if extra:
        out["anthropic_params"] = next(iter(extra))
    for i, m in enumerate(body.get("messages") or ()):
        if type(m) is not dict or (type(m.get("content")) is str and "tool_calls" not in m and m.get("role") != "tool"):
            continue  # the common case: plain text
        if "tools" not in out:
            if m.get("tool_calls"):
                out["tools"] = f"messages.{i}.tool_calls"
            elif m.get("role") == "tool":
                out["tools"] = f"messages.{i}"
        content = m.get("content")
        if "images" not in out and isinstance(content, list):
            for j, part in enumerate(content):
                if isinstance(part, dict) and part.get("type") == "image_url":
                    out["images"] = f"messages.{i}.content.{j}"
                    break
    return out


def prompt_tokens(body: dict) -> int:
    """A rough upper bound of the prompt's tokens (4 bytes each), for context-window preference only."""
    total = 0
    for m in body.get("messages") or ():
        content = m.get("content") if isinstance(m, dict) else None
        if isinstance(content, str):
            total += len(content)
        elif isinstance(content, list):
            total += sum(len(p["text"]) for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return total // 4
