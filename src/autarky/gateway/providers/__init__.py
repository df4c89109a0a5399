"""Provider adapters by `kind`: each speaks its wire format and returns OpenAI-shaped results."""

from autarky.gateway.providers.anthropic import AnthropicProvider
from autarky.gateway.providers.base import Provider, UpstreamError
from autarky.gateway.providers.openai import OpenAIProvider

KINDS: dict[str, type[Provider]] = {"openai": OpenAIProvider, "anthropic": AnthropicProvider}

__all__ = ["KINDS", "AnthropicProvider", "OpenAIProvider", "Provider", "UpstreamError"]
