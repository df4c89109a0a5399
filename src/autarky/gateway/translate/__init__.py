"""OpenAI chat <-> Anthropic Messages, both directions, streaming included.

Inside the gateway every request is an OpenAI chat request and every result OpenAI chat chunks/objects;
Anthropic ingress is translated on the way in and out (ingress), Anthropic egress on the way to and from the
provider (egress). Nothing is dropped silently: what one format cannot say is a 400 naming the field.

The internal OpenAI form carries a few Anthropic facts OpenAI has no field for, so that Anthropic ingress to an
Anthropic upstream loses nothing: `cache_control` on content parts, tools and tool calls; `is_error` on tool
messages; `thinking_blocks` on assistant messages; top-level `thinking` and `top_k`. The OpenAI provider strips
them (blocks.openai_only) before a body leaves for an OpenAI-kind upstream.
"""

from autarky.lazy import public

__all__, __getattr__ = public(__name__, {
    "anthropic_request_to_openai": "ingress",
    "openai_response_to_anthropic": "ingress",
    "OpenAIToAnthropicStream": "ingress",
    "openai_request_to_anthropic": "egress",
    "anthropic_response_to_openai": "egress",
    "AnthropicToOpenAIChunks": "egress",
    "json_tool_name": "egress",
    "openai_only": "blocks",
    "START_USAGE": "blocks",
})
