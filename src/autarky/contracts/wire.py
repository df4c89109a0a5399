"""What every OpenAI-compatible server of ours says on the wire and every client of ours reads back.

Producers: `autarky.serve` and `autarky.gateway` (error bodies, usage). Consumers: `autarky.evals.client` and the
gateway's upstream calls (context overflow from any server, ours by its fields, others by their wording).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

CONTEXT_LENGTH_EXCEEDED = "context_length_exceeded"


def error_envelope(message: str, type: str = "invalid_request_error", param: str | None = None,
                   code: str | int | None = None, **extra: Any) -> dict:
    """The OpenAI error body: `{"error": {"message", "type", "param", "code", ...extra}}`."""
    return {"error": {"message": message, "type": type, "param": param, "code": code, **extra}}


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


# vLLM's and OpenAI's wording, for servers that send only a message: "... maximum context length is 2048 tokens.
# However, you requested 3000 tokens ..." (the second number is the total asked for).
_OTHERS = re.compile(r"maximum context length is (\d+)\D+?(\d+)")


@dataclass(frozen=True)
class ContextOverflow:
    """Prompt plus requested completion do not fit the model's context. Ours travel as fields in the envelope
    (`error.context`), so no client parses a sentence."""

    max_context: int  # tokens the model attends to
    prompt_tokens: int
    max_tokens: int  # tokens asked to generate

    @property
    def requested(self) -> int:
        return self.prompt_tokens + self.max_tokens

    @property
    def message(self) -> str:
        return (f"This model's maximum context length is {self.max_context} tokens; the request asks for "
                f"{self.requested} ({self.prompt_tokens} in the prompt, {self.max_tokens} to generate). "
                "Shorten the prompt or lower max_tokens.")

    def envelope(self, param: str = "messages") -> dict:
        fields = {"max_context": self.max_context, "prompt_tokens": self.prompt_tokens, "max_tokens": self.max_tokens}
        return error_envelope(self.message, param=param, code=CONTEXT_LENGTH_EXCEEDED, context=fields)

    @classmethod
    def from_body(cls, body: Any) -> ContextOverflow | None:
        """The overflow an error body (parsed JSON, or raw text) reports, or None if it reports none. Fields when
        the server is ours; otherwise the numbers in vLLM's or OpenAI's wording (prompt/max split unknown: 0)."""
        error = body.get("error") if isinstance(body, dict) else None
        if isinstance(error, dict) and isinstance(error.get("context"), dict):
            c = error["context"]
            try:
                return cls(int(c["max_context"]), int(c["prompt_tokens"]), int(c["max_tokens"]))
            except (KeyError, TypeError, ValueError):
                pass
        text = str(error.get("message", "")) + str(error.get("code", "")) if isinstance(error, dict) else str(body)
        if CONTEXT_LENGTH_EXCEEDED not in text and "maximum context length" not in text:
            return None
        match = _OTHERS.search(text)
        if match is None:
            return cls(0, 0, 0)
        return cls(int(match.group(1)), int(match.group(2)), 0)
