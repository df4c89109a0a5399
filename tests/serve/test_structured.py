"""Constrained decoding through the real server and the official SDK: whatever the schema, a random-weights model
(which would otherwise write garbage) returns JSON that parses and validates; vLLM's spellings work unchanged."""

from __future__ import annotations

import asyncio
import json
import re

import httpx
import jsonschema
import openai
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from autarky.serve.structured import Grammar, GrammarCompiler
from autarky.serve.text import TextCodec

pytestmark = pytest.mark.timeout(600)

MESSAGES = [{"role": "user", "content": "Describe a user as JSON."}]
# Shrinking re-runs generation through the server for many minutes; the failing example is reported as is.
NO_SHRINK = [Phase.explicit, Phase.reuse, Phase.generate]
# Bounded formats (a garbage writer must still finish inside max_tokens) on which llguidance and jsonschema's
# checkers agree. Not `date`: llguidance follows RFC 3339, which allows year 0000; Python's date checker does not.
FORMATS = ["uuid", "ipv4", "ipv6"]


def _leaf() -> st.SearchStrategy[dict]:
    return st.one_of(
        st.builds(lambda lo, span: {"type": "integer", "minimum": lo, "maximum": lo + span},
                  st.integers(-50, 50), st.integers(0, 1000)),
        st.integers(0, 8).map(lambda n: {"type": "string", "maxLength": n}),
        st.just({"type": "boolean"}),
        st.just({"type": "null"}),
        st.lists(st.one_of(st.text("abcxyz ", min_size=1, max_size=5), st.integers(-9, 9)), min_size=1,
                 max_size=4, unique=True).map(lambda v: {"enum": v}),
        st.sampled_from(FORMATS).map(lambda f: {"type": "string", "format": f}),
    )


def _object(props: dict[str, dict], required: set[str]) -> dict:
    return {"type": "object", "properties": props, "required": sorted(required), "additionalProperties": False}


def _objects(children: st.SearchStrategy[dict]) -> st.SearchStrategy[dict]:
    names = st.from_regex(r"[a-z][a-z_]{0,7}", fullmatch=True)
    return st.dictionaries(names, children, min_size=1, max_size=4).flatmap(
        lambda props: st.sets(st.sampled_from(sorted(props))).map(lambda req: _object(props, req)))


SCHEMAS = _objects(st.recursive(
    _leaf(),
    lambda children: st.one_of(
        _objects(children),
        st.builds(lambda items, k: {"type": "array", "items": items, "maxItems": k}, children, st.integers(0, 3)),
    ),
    max_leaves=6,
))


def _validate(text: str, schema: dict) -> None:
    jsonschema.validate(json.loads(text), schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)


@pytest.fixture(scope="module")
def client(served_tiny_long) -> openai.OpenAI:
    return openai.OpenAI(base_url=served_tiny_long.base_url, api_key="unused", max_retries=0)


def _schema_format(schema: dict, strict: bool = True) -> dict:
    return {"type": "json_schema", "json_schema": {"name": "out", "schema": schema, "strict": strict}}


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), phases=NO_SHRINK)
@given(schema=SCHEMAS, seed=st.integers(0, 2**31))
def test_every_constrained_output_validates(client, served_tiny_long, schema, seed):
    r = client.chat.completions.create(model=served_tiny_long.model, messages=MESSAGES, n=2, seed=seed,
                                       temperature=1.0, max_tokens=800, response_format=_schema_format(schema))
    for choice in r.choices:
        assert choice.finish_reason == "stop", choice.message.content
        _validate(choice.message.content, schema)


@settings(max_examples=6, deadline=None, suppress_health_check=list(HealthCheck), phases=NO_SHRINK)
@given(schema=SCHEMAS, seed=st.integers(0, 2**31))
def test_streamed_constrained_output_validates(client, served_tiny_long, schema, seed):
    stream = client.chat.completions.create(model=served_tiny_long.model, messages=MESSAGES, n=2, seed=seed,
                                            max_tokens=800, response_format=_schema_format(schema, False),
                                            stream=True)
    texts, finish = {0: "", 1: ""}, {}
    for chunk in stream:
        for c in chunk.choices:
            texts[c.index] += c.delta.content or ""
            if c.finish_reason:
                finish[c.index] = c.finish_reason
    assert finish == {0: "stop", 1: "stop"}
    for text in texts.values():
        _validate(text, schema)


def test_json_object_is_an_object(client, served_tiny_long):
    r = client.chat.completions.create(model=served_tiny_long.model, messages=MESSAGES, max_tokens=1500, seed=3,
                                       temperature=0.7, response_format={"type": "json_object"})
    (choice,) = r.choices
    assert choice.finish_reason == "stop"
    assert isinstance(json.loads(choice.message.content), dict)


SCHEMA = _object({"name": {"type": "string", "maxLength": 6}, "age": {"type": "integer", "minimum": 0,
                                                                        "maximum": 120}}, {"name", "age"})


@pytest.mark.parametrize("extra", [
    {"guided_json": SCHEMA},
    {"guided_json": json.dumps(SCHEMA)},
    {"structured_outputs": {"json": SCHEMA}},
])
def test_vllm_json_spellings(client, served_tiny_long, extra):
    r = client.chat.completions.create(model=served_tiny_long.model, messages=MESSAGES, max_tokens=200, seed=1,
                                       extra_body=extra)
    _validate(r.choices[0].message.content, SCHEMA)


@pytest.mark.parametrize(("extra", "check"), [
    ({"guided_regex": r"[0-9]{3}-[a-z]{2}"}, lambda t: re.fullmatch(r"[0-9]{3}-[a-z]{2}", t)),
    ({"structured_outputs": {"regex": r"(yes|no)!"}}, lambda t: t in ("yes!", "no!")),
    ({"guided_choice": ["red", "green", "blue"]}, lambda t: t in ("red", "green", "blue")),
    ({"structured_outputs": {"choice": ["up", "down"]}}, lambda t: t in ("up", "down")),
    ({"guided_grammar": 'start: "a" ("b" | "c"){2}'}, lambda t: re.fullmatch("a[bc]{2}", t)),
    ({"structured_outputs": {"grammar": 'root ::= "x" [0-9] [0-9]'}}, lambda t: re.fullmatch("x[0-9]{2}", t)),
])
def test_vllm_regex_choice_grammar(client, served_tiny_long, extra, check):
    r = client.chat.completions.create(model=served_tiny_long.model, messages=MESSAGES, max_tokens=50, n=3,
                                       extra_body=extra)
    for choice in r.choices:
        assert choice.finish_reason == "stop" and check(choice.message.content), choice.message.content


def test_completions_take_structured_outputs(client, served_tiny_long):
    r = client.completions.create(model=served_tiny_long.model, prompt="{", max_tokens=200,
                                  extra_body={"guided_json": SCHEMA})
    _validate(r.choices[0].text, SCHEMA)


def test_unconstrained_row_is_unchanged_by_constrained_neighbours(served_tiny_long):
    """A greedy plain request gives the same tokens alone and batched with constrained ones."""
    url = f"{served_tiny_long.base_url}/chat/completions"
    plain = {"model": served_tiny_long.model, "messages": MESSAGES, "max_tokens": 40, "temperature": 0}
    constrained = {**plain, "temperature": 1.0, "max_tokens": 300, "n": 3, "response_format": _schema_format(SCHEMA)}

    async def main() -> tuple[str, list[dict]]:
        async with httpx.AsyncClient(timeout=120) as http:
            alone = (await http.post(url, json=plain)).json()["choices"][0]["message"]["content"]
            together = await asyncio.gather(*(http.post(url, json=b) for b in (constrained, plain, constrained)))
            return alone, [r.json() for r in together]

    alone, (c1, mixed, c2) = asyncio.run(main())
    assert mixed["choices"][0]["message"]["content"] == alone
    for body in (c1, c2):
        for choice in body["choices"]:
            _validate(choice["message"]["content"], SCHEMA)


@pytest.mark.parametrize(("extra", "param"), [
    ({"response_format": _schema_format({"type": "object", "properties": {"a": {"type": "strin"}}})},
     "response_format"),
    ({"response_format": {"type": "yaml"}}, "response_format"),
    ({"guided_regex": "a(b"}, "guided_regex"),
    ({"guided_json": "{not json"}, "guided_json"),
    ({"guided_choice": []}, "guided_choice"),
    ({"guided_regex": "a", "response_format": {"type": "json_object"}}, "response_format"),
    ({"structured_outputs": {"structural_tag": "x"}}, "structured_outputs.structural_tag"),
])
def test_bad_constraints_are_400_naming_the_field(served_tiny_long, extra, param):
    r = httpx.post(f"{served_tiny_long.base_url}/chat/completions", timeout=60,
                   json={"model": served_tiny_long.model, "messages": MESSAGES, "max_tokens": 5, **extra})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


def test_grammar_is_compiled_once_per_schema(tiny_hf_model_dir):
    codec = TextCodec.from_folder(tiny_hf_model_dir)
    compiler = GrammarCompiler(codec, 512, cache_size=2)
    first = Grammar.json_schema(SCHEMA, "response_format")
    same = Grammar.json_schema(json.loads(json.dumps(SCHEMA, sort_keys=True)), "response_format")  # key order
    a, b = compiler.matcher(first), compiler.matcher(same)
    assert compiler.compilations == 1 and a is not b  # one compilation, one matcher state per sequence
    assert a.consume_token(codec.encode("{", add_special_tokens=False)[0]) and not b.is_error()
    for i in range(3):  # LRU: older grammars are evicted, then compiled again
        compiler.matcher(Grammar("regex", f"a{i}", "guided_regex"))
    compiler.matcher(first)
    assert compiler.compilations == 5
