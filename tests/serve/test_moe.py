"""Serving a mixture of experts: the fused decode blocks decline the MoE layers (dense layers keep them), and the
engine's greedy tokens equal transformers' own Qwen3-MoE, Mixtral (with its sliding window), dots1 and GLM-4.5
(sigmoid routers with a balancing bias, shared experts) and are the same alone or batched."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch

from autarky.model.hf import load_hf_folder
from autarky.model.llama import Block
from autarky.model.moe import MoE
from autarky.model.sampling import SamplingParams
from autarky.serve.decode_kernels import DecodeBlock, use_decode_kernels
from autarky.serve.engine import Engine
from autarky.serve.events import Request, TokenEvent
from autarky.serve.text import TextCodec
from fixtures.families import FAMILY_CONFIGS, build_family

pytestmark = pytest.mark.timeout(300)

PROMPTS = [[77, 300, 12, 9, 401, 33], [5, 6, 7], [250, 18, 140, 65, 1, 2, 3, 4], [99]]


@pytest.fixture(scope="module")
def moe_folder(tiny_data_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("qwen3-moe") / "hf"
    hf = build_family(FAMILY_CONFIGS["qwen3-moe"](), folder, tokenizer_dir=tiny_data_dir)
    return hf, folder


def _greedy_ids(engine: Engine, prompts: list[list[int]], max_tokens: int) -> list[list[int]]:
    async def collect(sink: asyncio.Queue) -> list[int]:
        ids = []
        while True:
            event = await asyncio.wait_for(sink.get(), 120)
            assert isinstance(event, TokenEvent), event
            if event.finish_reason:
                return ids
            ids.append(event.token_id)

    async def main() -> list[list[int]]:
        loop = asyncio.get_running_loop()
        sinks = [asyncio.Queue() for _ in prompts]
        params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
        for ids, sink in zip(prompts, sinks, strict=True):
            engine.submit(Request(ids, params, sink, loop))
        return list(await asyncio.gather(*(collect(s) for s in sinks)))

    return asyncio.run(main())


def test_decode_kernels_decline_moe_blocks(moe_folder) -> None:
    _, folder = moe_folder
    model, _ = load_hf_folder(folder)
    if not use_decode_kernels(model):
        pytest.skip("the compiled decode kernels are unavailable here")
    assert type(model.layers["0"]) is DecodeBlock  # the dense first layer keeps the fused path
    assert all(type(model.layers[i]) is Block and isinstance(model.layers[i].feed_forward, MoE) for i in "12")


@pytest.mark.parametrize("kernels", [False, True], ids=["eager", "decode_kernels"])
def test_moe_serves_transformers_tokens_alone_or_batched(moe_folder, kernels: bool) -> None:
    _serves_transformers_tokens(*moe_folder, kernels)


@pytest.mark.parametrize("family", ["mixtral", "dots1", "glm4-moe"])
def test_other_moe_families_serve_transformers_tokens_alone_or_batched(family: str, tiny_data_dir: Path,
                                                                       tmp_path: Path) -> None:  # fmt: skip
    hf = build_family(FAMILY_CONFIGS[family](), tmp_path / "hf", tokenizer_dir=tiny_data_dir)
    _serves_transformers_tokens(hf, tmp_path / "hf", kernels=True)


def _serves_transformers_tokens(hf: torch.nn.Module, folder: Path, kernels: bool) -> None:
    model, _ = load_hf_folder(folder)
    if kernels and not use_decode_kernels(model):
        pytest.skip("the compiled decode kernels are unavailable here")
    with torch.no_grad():
        expected = [hf.generate(torch.tensor([p]), max_new_tokens=12, do_sample=False, eos_token_id=None,
                                pad_token_id=0)[0, len(p):].tolist() for p in PROMPTS]
    engine = Engine(model, TextCodec.from_folder(folder), max_batch=4, max_queue=8, name="moe")
    engine.start()
    try:
        alone = [_greedy_ids(engine, [p], 12)[0] for p in PROMPTS]
        batched = _greedy_ids(engine, PROMPTS, 12)
    finally:
        engine.shutdown(timeout=30)
    assert alone == batched == expected
