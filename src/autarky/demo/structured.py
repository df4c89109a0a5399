"""The in-house model answering a function call and a JSON-schema request through the self-sufficient gateway:
the server constrains decoding with a grammar, so even a 135M model gives a valid call and valid JSON."""

from __future__ import annotations

import json
import os

import openai

from autarky.demo.runner import DemoRunner

WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"},
                                                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
                   "required": ["city", "unit"], "additionalProperties": False}}}
INVOICE_SCHEMA = {"type": "object", "properties": {"customer": {"type": "string"}, "total_eur": {"type": "number"},
                                                    "paid": {"type": "boolean"}},
                  "required": ["customer", "total_eur", "paid"], "additionalProperties": False}


def tools_and_json(runner: DemoRunner, gateway_port: int, key_env: str, model: str = "smollm2") -> dict:
    """One forced tool call and one strict json_schema answer from `model`; returns what came back."""
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{gateway_port}/v1", api_key=os.environ[key_env],
                           max_retries=0, timeout=300)
    call = client.chat.completions.create(
        model=model, temperature=0, max_tokens=60, tools=[WEATHER_TOOL], tool_choice="required", parallel_tool_calls=False,
        messages=[{"role": "user", "content": "What's the weather in Paris, in celsius?"}])
    tool_call = call.choices[0].message.tool_calls[0]
    runner.console.print(f"tool call   → {tool_call.function.name}({tool_call.function.arguments})  "
                         f"finish_reason={call.choices[0].finish_reason}", markup=False, highlight=False)
    answer = client.chat.completions.create(
        model=model, temperature=0, max_tokens=60,
        response_format={"type": "json_schema", "json_schema": {"name": "invoice", "schema": INVOICE_SCHEMA,
                                                                "strict": True}},
        messages=[{"role": "user", "content": "Invoice for ACME GmbH, 1250.50 euros, already paid. As JSON."}])
    content = answer.choices[0].message.content or ""
    runner.console.print(f"json_schema → {content}", markup=False, highlight=False)
    parsed = json.loads(content)
    return {"tool": tool_call.function.name, "arguments": json.loads(tool_call.function.arguments),
            "json_valid": set(parsed) == set(INVOICE_SCHEMA["required"])}
