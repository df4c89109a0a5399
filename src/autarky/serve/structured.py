"""Constrained decoding: a request's grammar (JSON schema, regex, choice, Lark/GBNF grammar) compiled by
llguidance, one matcher per sequence, and the allowed-token masks of a decode step.

Compilation happens once per grammar: `GrammarCompiler` keeps an LRU of compiled matchers keyed by the canonical
grammar text (one compiler per model, so per tokenizer) and hands each sequence a `deep_copy` of one, which is
cheap. Only constrained rows pay for masks; the matcher advances with every accepted token and allows EOS only
where the grammar is complete, so a finished constrained output always parses.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import llguidance
import llguidance.hf
import torch

from autarky.serve.errors import InvalidRequest
from autarky.serve.text import TextCodec

# Compact JSON (no free whitespace): a weak model cannot pad forever, and outputs are what clients expect.
JSON_OPTIONS: dict[str, Any] = {"whitespace_flexible": False}
CACHE_SIZE = 128


@dataclass(frozen=True)
class Grammar:
    """What one request constrains its output to. `kind`: json_schema, regex, choice, grammar (Lark or GBNF) or
    lark (a Lark grammar built here, e.g. for tool calls); `param` names the request field, for errors."""

    kind: str
    text: str
    param: str

    @classmethod
    def json_schema(cls, schema: dict | bool | str, param: str) -> Grammar:
        if isinstance(schema, str):
            try:
                schema = json.loads(schema)
            except json.JSONDecodeError as exc:
                raise InvalidRequest(f"{param} is not valid JSON: {exc}", param=param) from None
        if not isinstance(schema, dict | bool):
            raise InvalidRequest(f"{param} must be a JSON schema object", param=param)
        return cls("json_schema", canonical_json(schema), param)

    def llguidance_grammar(self) -> str:
        if self.kind == "json_schema":
            return llguidance.LLMatcher.grammar_from_json_schema(self.text, overrides=JSON_OPTIONS)
        if self.kind == "regex":
            return llguidance.LLMatcher.grammar_from_regex(self.text)
        if self.kind == "choice":
            return llguidance.grammar_from("choice", self.text)
        if self.kind == "grammar":
            return llguidance.grammar_from("grammar", self.text)
        return llguidance.LLMatcher.grammar_from_lark(self.text)


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


class GrammarCompiler:
    """Compiles grammars for one model's tokenizer, each once (LRU)."""

    def __init__(self, codec: TextCodec, vocab_size: int, cache_size: int = CACHE_SIZE) -> None:
        self.codec = codec
        self.vocab_size = vocab_size
        self.cache_size = cache_size
        self._tokenizer: llguidance.LLTokenizer | None = None
        self._cache: OrderedDict[Grammar, llguidance.LLMatcher] = OrderedDict()
        self._lock = threading.Lock()
        self.compilations = 0  # grammars compiled (not served from the cache): tests and benchmarks read it

    @property
    def tokenizer(self) -> llguidance.LLTokenizer:
        if self._tokenizer is None:  # ~1 s: only models that ever get a constrained request pay it
            n_vocab = max(self.vocab_size, self.codec.vocab_size)
            self._tokenizer = llguidance.hf.from_tokenizer(self.codec.hf, n_vocab=n_vocab,
                                                           eos_token=sorted(self.codec.eos_token_ids))
        return self._tokenizer

    def matcher(self, grammar: Grammar) -> llguidance.LLMatcher:
        """A fresh matcher for one sequence; InvalidRequest (naming grammar.param) if the grammar is invalid."""
        with self._lock:
            compiled = self._cache.get(grammar)
            if compiled is not None:
                self._cache.move_to_end(grammar)
                return compiled.deep_copy()
            try:
                source = grammar.llguidance_grammar()
            except (ValueError, TypeError) as exc:
                raise InvalidRequest(f"invalid {grammar.param}: {exc}", param=grammar.param) from None
            compiled = llguidance.LLMatcher(self.tokenizer, source, log_level=0)
            if compiled.is_error():
                raise InvalidRequest(f"invalid {grammar.param}: {compiled.get_error()}", param=grammar.param)
            self.compilations += 1
            self._cache[grammar] = compiled
            if len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
            return compiled.deep_copy()

    def masks(self, matchers: list[llguidance.LLMatcher | None]) -> dict[int, torch.Tensor]:
        """Row → its packed allowed-token bitmask (int32 words; model.sampling.unpack_mask reads it), for the rows
        with a matcher only."""
        rows = [b for b, m in enumerate(matchers) if m is not None]
        if not rows:
            return {}
        words = (self.tokenizer.vocab_size + 31) // 32
        packed = torch.empty(len(rows), words, dtype=torch.int32)
        for i, b in enumerate(rows):
            matchers[b].unsafe_compute_mask_ptr(packed[i].data_ptr(), words * 4)  # type: ignore[union-attr]
        return dict(zip(rows, packed.unbind(0), strict=True))
