"""Wire types of the OpenAI-compatible API, kept apart from the engine.

Requests accept unknown fields (vLLM's behaviour): they are logged and ignored. Fields that would change the
output contract and that we cannot honour (OpenAI's or vLLM's, listed in UNSUPPORTED) are rejected by
`unsupported_fields` with a 400 naming them. Structured output arrives in any of vLLM's spellings
(`structured_outputs`, the older `guided_*` fields) or OpenAI's `response_format`; `grammar()` turns whichever
is set into one Grammar.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from autarky.serve.errors import InvalidRequest
from autarky.serve.structured import Grammar

MAX_TOP_LOGPROBS = 20
# Per-request work that one client could make everyone in the batch pay for: each stop string is searched for
# on every decoded token, each logit_bias entry is applied on every step, each tool is rendered and compiled.
MAX_STOPS = 16
MAX_STOP_CHARS = 256
MAX_LOGIT_BIAS = 1024
MAX_TOOLS = 128
MAX_PROMPTS = 64
# Output-changing fields of OpenAI's and vLLM's APIs that this server does not implement, with the value that
# means "off" (None: any value is refused). Present with another value, they are a 400 naming them.
UNSUPPORTED: dict[str, Any] = {
    "min_tokens": 0, "bad_words": None, "allowed_token_ids": None, "stop_token_ids": None,
    "include_stop_str_in_output": False, "length_penalty": 1.0, "use_beam_search": False,
    "skip_special_tokens": True, "spaces_between_special_tokens": True, "truncate_prompt_tokens": None,
    "guided_whitespace_pattern": None, "structural_tag": None, "logits_processors": None, "prediction": None,
    "audio": None, "modalities": None, "web_search_options": None, "prompt_logprobs": None,
    "reasoning_effort": None, "thinking": None, "functions": None, "function_call": None,
}

# vLLM's structured_outputs switches that change nothing here: output JSON is always compact, and there is one
# grammar engine, with no fallback.
HARMLESS_STRUCTURED = {"disable_any_whitespace", "disable_fallback", "backend", "_backend"}


class StructuredOutputs(BaseModel):
    """vLLM's `structured_outputs` (one of json, regex, choice, grammar, json_object)."""

    model_config = ConfigDict(extra="allow")
    json_: dict | str | bool | None = Field(None, alias="json")
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None
    json_object: bool | None = None


class StreamOptions(BaseModel):
    include_usage: bool = False
    continuous_usage_stats: bool = False  # vLLM's: with include_usage, every chunk carries the usage so far


class _Request(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=-1)  # vLLM extension; 0 or -1 = off
    n: int = Field(1, ge=1, le=64)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    ignore_eos: bool = False  # vLLM extension
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    repetition_penalty: float = Field(1.0, gt=0.0)  # vLLM extension
    min_p: float = Field(0.0, ge=0.0, le=1.0)  # vLLM extension
    logit_bias: dict[str, float] | None = None
    user: str | None = None
    structured_outputs: StructuredOutputs | None = None  # vLLM
    guided_json: dict | str | None = None  # vLLM's older spellings
    guided_regex: str | None = None
    guided_choice: list[str] | None = None
    guided_grammar: str | None = None
    guided_decoding_backend: str | None = None  # vLLM's engine choice: there is one here, so it is moot

    @field_validator("stop")
    @classmethod
    def _bounded_stop(cls, stop: str | list[str] | None) -> str | list[str] | None:
        stops = [stop] if isinstance(stop, str) else stop or []
        if len(stops) > MAX_STOPS:
            raise ValueError(f"at most {MAX_STOPS} stop strings, got {len(stops)}")
        if any(len(s) > MAX_STOP_CHARS for s in stops):
            raise ValueError(f"each stop string is at most {MAX_STOP_CHARS} characters")
        return stop

    @field_validator("logit_bias")
    @classmethod
    def _bounded_bias(cls, bias: dict[str, float] | None) -> dict[str, float] | None:
        if bias and len(bias) > MAX_LOGIT_BIAS:
            raise ValueError(f"at most {MAX_LOGIT_BIAS} logit_bias entries, got {len(bias)}")
        return bias

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop)
        return [s for s in stops if s]

    def ignored_fields(self) -> list[str]:
        return sorted(k for k in (self.model_extra or {}) if k not in UNSUPPORTED)

    def unsupported_fields(self) -> list[str]:
        """Fields set to values we cannot honour; answering anyway would silently change the contract."""
        extra = self.model_extra or {}
        return [k for k, off in UNSUPPORTED.items() if k in extra and extra[k] is not None and extra[k] != off]

    def logit_bias_pairs(self, vocab_size: int) -> tuple[tuple[int, float], ...]:
        pairs = []
        for key, bias in (self.logit_bias or {}).items():
            if not key.lstrip("-").isdigit() or not 0 <= int(key) < vocab_size:
                raise InvalidRequest(f"logit_bias key {key!r} is not a token id (0..{vocab_size - 1})",
                                     param="logit_bias")
            if not -100 <= bias <= 100:
                raise InvalidRequest(f"logit_bias values must be in [-100, 100], got {bias}", param="logit_bias")
            pairs.append((int(key), float(bias)))
        return tuple(pairs)

    def grammar(self) -> Grammar | None:
        """The one output constraint this request sets, if any; a 400 if it sets several."""
        found: list[Grammar] = []
        so = self.structured_outputs
        if so is not None:
            if so.json_ is not None:
                found.append(Grammar.json_schema(so.json_, "structured_outputs.json"))
            if so.json_object:
                found.append(Grammar.json_schema({"type": "object"}, "structured_outputs.json_object"))
            if so.regex is not None:
                found.append(Grammar("regex", so.regex, "structured_outputs.regex"))
            if so.choice is not None:
                found.append(_choice(so.choice, "structured_outputs.choice"))
            if so.grammar is not None:
                found.append(Grammar("grammar", so.grammar, "structured_outputs.grammar"))
            for name in sorted(set(so.model_extra or {}) - HARMLESS_STRUCTURED):
                if (so.model_extra or {})[name] not in (None, False):
                    raise InvalidRequest(f"structured_outputs.{name} is not supported",
                                         param=f"structured_outputs.{name}")
        if self.guided_json is not None:
            found.append(Grammar.json_schema(self.guided_json, "guided_json"))
        if self.guided_regex is not None:
            found.append(Grammar("regex", self.guided_regex, "guided_regex"))
        if self.guided_choice is not None:
            found.append(_choice(self.guided_choice, "guided_choice"))
        if self.guided_grammar is not None:
            found.append(Grammar("grammar", self.guided_grammar, "guided_grammar"))
        found += self._own_grammars()
        if len(found) > 1:
            raise InvalidRequest(f"set only one output constraint; got {', '.join(g.param for g in found)}",
                                 param=found[1].param)
        return found[0] if found else None

    def _own_grammars(self) -> list[Grammar]:
        return []


def _choice(options: list[str], param: str) -> Grammar:
    if not options:
        raise InvalidRequest(f"{param} needs at least one option", param=param)
    return Grammar("choice", json.dumps(options), param)


class CompletionRequest(_Request):
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(16, ge=0)
    echo: bool = False
    logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    suffix: str | None = None
    best_of: int | None = None

    @field_validator("prompt")
    @classmethod
    def _bounded_prompts(cls, prompt: str | list) -> str | list:
        if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int) and len(prompt) > MAX_PROMPTS:
            raise ValueError(f"at most {MAX_PROMPTS} prompts in one request, got {len(prompt)}")
        return prompt

    def prompts(self) -> list[str | list[int]]:
        """One entry per prompt: text or token ids."""
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if p and all(isinstance(x, int) for x in p):
            return [list(p)]  # type: ignore[arg-type]
        return list(p)  # type: ignore[arg-type]

    def unsupported_fields(self) -> list[str]:
        bad = super().unsupported_fields()
        if self.suffix:
            bad.append("suffix")
        if self.best_of not in (None, 1, self.n):
            bad.append("best_of")
        return bad


class TextPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None  # an assistant's past calls
    tool_call_id: str | None = None  # a tool result's call

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text or "" for part in self.content)


class ChatCompletionRequest(_Request):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None

    @field_validator("tools")
    @classmethod
    def _bounded_tools(cls, tools: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
        if tools and len(tools) > MAX_TOOLS:
            raise ValueError(f"at most {MAX_TOOLS} tools, got {len(tools)}")
        return tools

    def unsupported_fields(self) -> list[str]:
        bad = super().unsupported_fields()
        if self.tool_choice not in (None, "none", "auto") and not self.tools:
            bad.append("tool_choice")
        return bad

    def _own_grammars(self) -> list[Grammar]:
        rf = self.response_format
        kind = (rf or {}).get("type", "text")
        if rf is None or kind == "text":
            return []
        if kind == "json_object":
            return [Grammar.json_schema({"type": "object"}, "response_format")]
        spec = rf.get("json_schema")
        if kind != "json_schema" or not isinstance(spec, dict):
            raise InvalidRequest("response_format must be text, json_object, or json_schema with a json_schema "
                                 "object", param="response_format")
        # `strict` or not, the schema is enforced (vLLM does the same): a looser promise is kept by a stricter one.
        return [Grammar.json_schema(spec.get("schema", {}), "response_format")]


class TokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_special_tokens: bool = True
    add_generation_prompt: bool = True


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str | None = None
    tokens: list[int]


# Responses are plain dicts built in responses.py: their shape is the contract, and tests assert it key by key.
