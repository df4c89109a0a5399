"""The open families served: a tiny random Qwen3 (q/k norm, its own head width, biases) and a Mistral (sliding
window) built by transformers answer a completion request through the openai SDK with transformers' greedy text."""

from __future__ import annotations

from pathlib import Path

import openai
import pytest
import torch

from autarky.model.tokenizer import load_hf_folder_tokenizer
from autarky.serve.registry import ModelRegistry, ServedModelSpec
from fixtures.families import FAMILY_CONFIGS, build_family
from fixtures.servers import running_server

pytestmark = pytest.mark.timeout(300)

PROMPT = [77, 300, 12, 9, 401, 33, 250, 18, 140, 65]


def test_served_families_answer_with_transformers_greedy_text(tmp_path: Path, tiny_data_dir: Path) -> None:
    specs, expected = [], {}
    for family in ("qwen3-bias", "mistral"):
        folder = tmp_path / family
        hf = build_family(FAMILY_CONFIGS[family](), folder, tokenizer_dir=tiny_data_dir)
        with torch.no_grad():
            ids = hf.generate(torch.tensor([PROMPT]), max_new_tokens=16, do_sample=False)[0, len(PROMPT):]
        expected[family] = load_hf_folder_tokenizer(folder).decode(ids.tolist())
        specs.append(ServedModelSpec(source=str(folder), name=family, max_batch=2, max_queue=4))
    with running_server(ModelRegistry(specs)) as server:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
        for family, text in expected.items():
            r = client.completions.create(model=family, prompt=PROMPT, max_tokens=16, temperature=0)
            assert r.choices[0].text == text
            assert r.usage.completion_tokens > 8
