"""OpenAI chat <-> Anthropic Messages, both directions, streaming included.

Inside the gateway every request is an OpenAI chat request and every result OpenAI chat chunks/objects;
Anthropic ingress is translated on the way in and out (ingress), Anthropic egress on the way to and from the
provider (egress). What one format cannot say is a 400 naming the field; only hints are left behind (see
blocks.openai_only).

The internal OpenAI form carries a few Anthropic facts OpenAI has no field for, so that Anthropic ingress to an
Anthropic upstream loses nothing: `cache_control` on content parts, tools, tool calls and tool results; `is_error`
on tool messages; `thinking_blocks` on assistant messages; top-level `thinking` and `top_k`; and `anthropic_extra`,
the Messages fields with no place in the OpenAI form, sent verbatim to Anthropic upstreams. The OpenAI provider
strips them (blocks.openai_only) before a body leaves for an OpenAI-kind upstream; capability routing
(gateway/capabilities.py) sees to it that a request needing `thinking` or `anthropic_extra` never goes there.
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
