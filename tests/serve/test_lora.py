"""LoRA adapters served over one base: equal to the single-model reference, batch-independent, listed with their
parent, loaded and unloaded at run time behind the flag, and bad input answered with 4xx envelopes."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from autarky.adapters import LoraConfig, LoraLinear, apply_lora, load_adapter, lora_parameters, save_adapter
from autarky.cli import app
from autarky.errors import UserError
from autarky.model.generate import generate_tokens
from autarky.model.hf import load_hf_folder
from autarky.model.sampling import SamplingParams
from autarky.serve import decode_kernels
from autarky.serve.engine import Engine
from autarky.serve.events import ErrorEvent, Request, TokenEvent
from autarky.serve.lora import LoraManager, LoraRows, MultiLoraLinear
from autarky.serve.registry import ModelRegistry, ServedModelSpec, load_served_model

pytestmark = pytest.mark.timeout(180)

PROMPTS = ["def add(a, b):\n    return", "import os\n", "class Stack:\n    def push(self, item):", "x = [1, 2"]
CONFIGS = {"alpha": (LoraConfig(rank=4, alpha=8), 1),
           "beta": (LoraConfig(rank=8, alpha=32, targets=("q_proj", "v_proj", "down_proj")), 2)}


def make_adapter(model_dir: Path, out: Path, cfg: LoraConfig, seed: int) -> Path:
    """A random adapter (B non-zero, so it changes the output) for the model in model_dir, in PEFT format."""
    model, _ = load_hf_folder(model_dir)
    apply_lora(model, cfg, seed=seed)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in lora_parameters(model).items():
            if name.endswith("lora_B"):
                param.copy_(torch.randn(param.shape, generator=generator))
    return save_adapter(model, cfg, out, base_model="tiny")


@pytest.fixture(scope="module")
def adapter_dirs(tiny_hf_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    return {name: make_adapter(tiny_hf_model_dir, root / name, cfg, seed) for name, (cfg, seed) in CONFIGS.items()}


def reference(model_dir: Path, adapter_dir: Path | None, ids: list[int], max_tokens: int) -> list[int]:
    """Greedy tokens of one model with the adapter loaded the training way (ours + load_adapter), no serving."""
    model, _ = load_hf_folder(model_dir)
    if adapter_dir is not None:
        load_adapter(model, adapter_dir)
    with torch.inference_mode():
        return list(generate_tokens(model.eval(), ids, SamplingParams(max_tokens=max_tokens, temperature=0.0)))


@pytest.fixture(scope="module", params=["eager", "decode_kernels"])
def served(tiny_hf_model_dir: Path, adapter_dirs: dict[str, Path], request):
    """An engine over the tiny model with both adapters loaded, as `autarky serve --lora` builds it."""
    spec = ServedModelSpec(str(tiny_hf_model_dir), decode_kernels=request.param == "decode_kernels")
    model, codec = load_served_model(spec)
    manager = LoraManager(model, max_loras=3, max_lora_rank=8)
    adapters = {name: manager.load(name, path) for name, path in adapter_dirs.items()}
    engine = Engine(model, codec, max_batch=8, max_queue=16, name="tiny", lora=manager)
    engine.start()
    yield engine, codec, {None: None, **adapters}
    engine.shutdown(timeout=30)


def run(engine: Engine, jobs: list[tuple[list[int], SamplingParams, object]]) -> list[list[int]]:
    """Submit every (prompt ids, params, adapter) job at once; the generated ids of each."""

    async def collect(sink: asyncio.Queue) -> list[int]:
        ids: list[int] = []
        while True:
            event = await asyncio.wait_for(sink.get(), 60)
            assert not isinstance(event, ErrorEvent), event.message
            assert isinstance(event, TokenEvent)
            if event.finish_reason:
                return ids
            ids.append(event.token_id)

    async def main() -> list[list[int]]:
        loop = asyncio.get_running_loop()
        sinks = [asyncio.Queue() for _ in jobs]
        for (ids, params, adapter), sink in zip(jobs, sinks, strict=True):
            engine.submit(Request(ids, params, sink, loop, adapter=adapter))
        return list(await asyncio.gather(*(collect(s) for s in sinks)))

    return asyncio.run(main())


def greedy(max_tokens: int) -> SamplingParams:
    return SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)


def test_adapter_requests_equal_the_single_model_reference(served, tiny_hf_model_dir, adapter_dirs):
    engine, codec, adapters = served
    ids = codec.encode(PROMPTS[0])
    outputs = {}
    for name in (None, "alpha", "beta"):
        expected = reference(tiny_hf_model_dir, adapter_dirs.get(name), ids, 12)
        outputs[name] = run(engine, [(ids, greedy(12), adapters[name])])[0]
        assert outputs[name] == expected, name
    assert len(set(map(tuple, outputs.values()))) == 3  # each adapter changes the output


def test_a_mixed_batch_equals_each_request_alone(served):
    engine, codec, adapters = served
    names = [None, "alpha", "beta", "alpha", None, "beta"]
    jobs = [(codec.encode(PROMPTS[i % 4]), greedy(6 + 3 * i), adapters[name]) for i, name in enumerate(names)]
    seeded = [(codec.encode(PROMPTS[i]), SamplingParams(max_tokens=10, temperature=0.9, top_p=0.95, seed=i,
                                                        ignore_eos=True), adapters[name])
              for i, name in enumerate([None, "alpha", "beta"])]
    jobs += seeded
    alone = [run(engine, [job])[0] for job in jobs]
    assert run(engine, jobs) == alone


@pytest.mark.parametrize("served", ["decode_kernels"], indirect=True)
def test_the_fused_decode_path_declines_steps_with_adapter_rows(served, monkeypatch):
    engine, codec, adapters = served
    assert any(isinstance(m, decode_kernels.DecodeBlock) for m in engine.model.modules())
    calls = []
    fused = decode_kernels.decode_block
    monkeypatch.setattr(decode_kernels, "decode_block", lambda *a: calls.append(1) or fused(*a))
    ids = codec.encode(PROMPTS[1])
    run(engine, [(ids, greedy(4), adapters["alpha"])])
    assert calls == []
    run(engine, [(ids, greedy(4), None)])
    assert calls  # base rows keep the fused path even with adapters loaded


def test_multi_lora_linear_selects_each_rows_adapter():
    torch.manual_seed(0)
    base = torch.nn.Linear(16, 12, bias=False)
    refs = [LoraLinear(base, rank, alpha) for rank, alpha in ((4, 8.0), (2, 4.0))]
    rows = LoraRows(torch.device("cpu"))
    multi = MultiLoraLinear(base, rows, slots=3, max_rank=4)
    handles = []
    for slot, ref in enumerate(refs, start=1):
        torch.nn.init.normal_(ref.lora_B)
        multi.set_slot(slot, ref.lora_A.detach(), ref.lora_B.detach())
        handles.append(type("H", (), {"slot": slot, "rank": ref.rank, "scaling": ref.scaling})())
    x = torch.randn(5, 3, 16)
    per_row = [handles[0], None, handles[1], handles[0], None]
    rows.set_rows(per_row)
    with torch.no_grad():
        got = multi(x)
        for b, handle in enumerate(per_row):
            want = base(x[b : b + 1]) if handle is None else refs[handle.slot - 1](x[b : b + 1])
            torch.testing.assert_close(got[b : b + 1], want, rtol=0, atol=1e-6)


def test_the_manager_refuses_adapters_it_cannot_serve(tiny_hf_model_dir, adapter_dirs, tmp_path):
    model, _ = load_hf_folder(tiny_hf_model_dir)
    manager = LoraManager(model, max_loras=1, max_lora_rank=4)
    with pytest.raises(UserError, match="rank 8 is above"):
        manager.load("beta", adapter_dirs["beta"])
    with pytest.raises(UserError, match="needs"):
        manager.load("bad", wrong_shape(adapter_dirs["alpha"], tmp_path / "bad"))
    with pytest.raises(UserError, match="not a PEFT adapter"):
        manager.load("none", tmp_path)
    manager.load("alpha", adapter_dirs["alpha"])
    with pytest.raises(UserError, match="too many"):
        manager.load("again", adapter_dirs["alpha"])
    manager.unload("alpha")
    assert manager.load("again", adapter_dirs["alpha"]).slot == 1  # the slot is free once nothing holds it


def test_an_unloaded_adapters_slot_waits_for_its_last_request(tiny_hf_model_dir, adapter_dirs):
    model, _ = load_hf_folder(tiny_hf_model_dir)
    manager = LoraManager(model, max_loras=2, max_lora_rank=8)
    running = manager.load("alpha", adapter_dirs["alpha"])  # a request in flight holds its adapter
    manager.unload("alpha")
    assert manager.load("beta", adapter_dirs["beta"]).slot == 2
    with pytest.raises(UserError, match="still running"):
        manager.load("gamma", adapter_dirs["alpha"])
    del running
    assert manager.load("gamma", adapter_dirs["alpha"]).slot == 1


def wrong_shape(adapter_dir: Path, out: Path) -> Path:
    """A copy of the adapter whose first module's A has a different input size: an adapter for another base."""
    out.mkdir()
    tensors = load_file(str(adapter_dir / "adapter_model.safetensors"))
    key = next(k for k in tensors if k.endswith("lora_A.weight"))
    tensors[key] = torch.zeros(tensors[key].shape[0], tensors[key].shape[1] + 1)
    save_file(tensors, str(out / "adapter_model.safetensors"))
    (out / "adapter_config.json").write_text((adapter_dir / "adapter_config.json").read_text())
    return out


@pytest.fixture(scope="module")
def lora_server(tiny_hf_model_dir, adapter_dirs):
    from fixtures.servers import running_server

    spec = ServedModelSpec(str(tiny_hf_model_dir), name="tiny", max_batch=8, max_loras=3, max_lora_rank=8,
                           loras=tuple((name, str(path)) for name, path in adapter_dirs.items()),
                           lora_runtime_updates=True)
    with running_server(ModelRegistry([spec])) as server:
        yield server.url


def complete(url: str, model: str, prompt: str = PROMPTS[0]) -> httpx.Response:
    payload = {"model": model, "prompt": prompt, "max_tokens": 8, "temperature": 0, "ignore_eos": True}
    return httpx.post(f"{url}/v1/completions", json=payload, timeout=60)


def test_models_lists_adapters_with_their_parent(lora_server, adapter_dirs):
    data = httpx.get(f"{lora_server}/v1/models").json()["data"]
    assert [m["id"] for m in data] == ["tiny", "alpha", "beta"]
    alpha = data[1]
    assert alpha["object"] == "model" and alpha["parent"] == "tiny" and alpha["root"] == str(adapter_dirs["alpha"])


def test_concurrent_http_requests_for_base_and_adapters_equal_each_alone(lora_server):
    models = ["tiny", "alpha", "beta", "alpha"]
    alone = [complete(lora_server, m).json()["choices"][0]["text"] for m in models]

    async def together() -> list[str]:
        async with httpx.AsyncClient(timeout=60) as client:
            payloads = [{"model": m, "prompt": PROMPTS[0], "max_tokens": 8, "temperature": 0, "ignore_eos": True}
                        for m in models]
            answers = await asyncio.gather(*(client.post(f"{lora_server}/v1/completions", json=p)
                                             for p in payloads))
            return [a.json()["choices"][0]["text"] for a in answers]

    assert asyncio.run(together()) == alone
    assert len({alone[0], alone[1], alone[2]}) == 3
    assert complete(lora_server, "alpha").json()["model"] == "alpha"


def assert_envelope(response: httpx.Response, status: int, match: str) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) >= {"message", "type", "param", "code"} and match in error["message"], error


def test_runtime_load_and_unload(lora_server, adapter_dirs, tiny_hf_model_dir, tmp_path):
    load, unload = f"{lora_server}/v1/load_lora_adapter", f"{lora_server}/v1/unload_lora_adapter"
    answer = httpx.post(load, json={"lora_name": "gamma", "lora_path": str(adapter_dirs["alpha"])})
    assert answer.status_code == 200 and "Success" in answer.text
    assert "gamma" in [m["id"] for m in httpx.get(f"{lora_server}/v1/models").json()["data"]]
    assert complete(lora_server, "gamma").json()["choices"][0]["text"] == \
        complete(lora_server, "alpha").json()["choices"][0]["text"]
    assert_envelope(httpx.post(load, json={"lora_name": "delta", "lora_path": str(adapter_dirs["beta"])}), 400,
                    "too many")
    assert_envelope(httpx.post(load, json={"lora_name": "alpha", "lora_path": str(adapter_dirs["beta"])}), 400,
                    "already been loaded")
    assert httpx.post(unload, json={"lora_name": "gamma"}).status_code == 200
    assert_envelope(complete(lora_server, "gamma"), 404, "does not exist")
    assert_envelope(httpx.post(unload, json={"lora_name": "gamma"}), 404, "cannot be found")
    big = make_adapter(tiny_hf_model_dir, tmp_path / "big", LoraConfig(rank=16, alpha=16), 3)
    assert_envelope(httpx.post(load, json={"lora_name": "big", "lora_path": str(big)}), 400, "--max-lora-rank")
    bad = wrong_shape(adapter_dirs["alpha"], tmp_path / "other-base")
    assert_envelope(httpx.post(load, json={"lora_name": "other", "lora_path": str(bad)}), 400, "another base")
    assert_envelope(httpx.post(load, json={"lora_name": "none", "lora_path": str(tmp_path / "nope")}), 400,
                    "not a PEFT adapter")
    assert_envelope(httpx.post(load, json={"lora_name": "x"}), 400, "lora_path")


def test_runtime_updates_are_404_without_the_flag(served_tiny_model):
    answer = httpx.post(f"{served_tiny_model.root_url}/v1/load_lora_adapter",
                        json={"lora_name": "a", "lora_path": "/tmp"})
    assert_envelope(answer, 404, "--enable-lora-runtime-updates")
    assert_envelope(httpx.post(f"{served_tiny_model.root_url}/v1/unload_lora_adapter", json={"lora_name": "a"}),
                    404, "runtime LoRA updates are off")


@pytest.mark.parametrize("arg, message", [("noequals", "NAME=PATH"), ("x=/does/not/exist", "is not a folder")])
def test_a_bad_lora_option_is_one_error_line(tiny_hf_model_dir, arg, message):
    result = CliRunner().invoke(app, ["serve", str(tiny_hf_model_dir), "--lora", arg, "--port", "0"])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], result.output


def test_a_cached_prefix_is_shared_only_within_one_adapter(served, tiny_hf_model_dir, adapter_dirs):
    """Prefix caching is on by default: the base's blocks of a prompt must not serve the same prompt under an
    adapter (its keys and values differ), nor one adapter's another's."""
    engine, codec, adapters = served
    ids = codec.encode(PROMPTS[2] * 8)[:70]  # four full blocks and a partial one
    base = run(engine, [(ids, greedy(6), None)])[0]
    for name in ("alpha", "beta"):
        assert run(engine, [(ids, greedy(6), adapters[name])])[0] == reference(tiny_hf_model_dir, adapter_dirs[name],
                                                                             ids, 6)
    assert run(engine, [(ids, greedy(6), None)])[0] == base == reference(tiny_hf_model_dir, None, ids, 6)
