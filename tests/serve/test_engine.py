"""The engine without HTTP: exact batching, seeds, n, logprobs, stops, cancellation, failures, int8, bf16."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch

from autarky.errors import UserError
from autarky.model.generate import generate_tokens
from autarky.model.hf import load_hf_folder
from autarky.model.sampling import SamplingParams
from autarky.serve.decode_kernels import use_decode_kernels
from autarky.serve.engine import Engine
from autarky.serve.events import Request, TokenEvent
from autarky.serve.packed import PackedBF16Linear, bf16_packing_supported
from autarky.serve.quantize import Int8Linear, quantize_int8
from autarky.serve.registry import ServedModelSpec, load_served_model
from autarky.serve.text import TextCodec
from fixtures.engine_runs import collect, greedy, run

pytestmark = pytest.mark.timeout(120)

PROMPTS = ["def add(a, b):\n    return", "import os\n", "class Stack:\n    def push(self, item):", "x = [1, 2"]


@pytest.fixture(scope="module", params=["eager", "decode_kernels"])
def tiny(tiny_hf_model_dir: Path, request):
    """The tiny model as loaded, and with the compiled CPU decode kernels that `autarky serve` uses by default:
    every engine test runs on both."""
    model, _ = load_hf_folder(tiny_hf_model_dir)
    if request.param == "decode_kernels":
        assert use_decode_kernels(model), "the compiled decode kernels did not build on this machine"
    return model, TextCodec.from_folder(tiny_hf_model_dir)


@pytest.fixture
def engine(tiny):
    model, codec = tiny
    eng = Engine(model, codec, max_batch=8, max_queue=16, name="tiny")
    eng.start()
    yield eng
    eng.shutdown(timeout=30)


def test_greedy_decode_matches_the_reference_generator(tiny, engine):
    model, codec = tiny
    for prompt in PROMPTS[:2]:
        ids = codec.encode(prompt)
        expected = list(generate_tokens(model, ids, SamplingParams(max_tokens=12, temperature=0.0)))
        got = run(engine, [(ids, greedy(12))])[0][0]
        assert got["ids"] == expected
        assert got["finish"] == "length"


def test_batched_output_equals_unbatched_at_temperature_zero(tiny, engine):
    _, codec = tiny
    # Different prompt lengths and budgets: rows sit at different positions and leave at different steps, so the
    # masks and the slot compaction are both exercised; the last two join while the first is mid-decode.
    jobs = [(codec.encode(p), greedy(max_tokens)) for p, max_tokens in zip(PROMPTS, (30, 7, 19, 11), strict=True)]
    alone = [run(engine, [job])[0][0] for job in jobs]
    together = [r[0] for r in run(engine, jobs)]
    joined_later = [r[0] for r in run(engine, jobs, stagger_after=5)]
    for a, b, c in zip(alone, together, joined_later, strict=True):
        assert a["ids"] == b["ids"] == c["ids"]
        assert a["text"] == b["text"] == c["text"]
        torch.testing.assert_close(torch.tensor(b["lps"]), torch.tensor(a["lps"]), rtol=0, atol=1e-4)
        torch.testing.assert_close(torch.tensor(c["lps"]), torch.tensor(a["lps"]), rtol=0, atol=1e-4)


def test_same_seed_same_sample_alone_or_batched(tiny, engine):
    _, codec = tiny
    seeded = (codec.encode(PROMPTS[0]), SamplingParams(max_tokens=16, temperature=0.9, top_p=0.95, seed=7,
                                                       ignore_eos=True))
    noise = [(codec.encode(p), SamplingParams(max_tokens=10, temperature=1.0, ignore_eos=True)) for p in PROMPTS[1:]]
    alone = run(engine, [seeded])[0][0]["ids"]
    batched = run(engine, [*noise, seeded])[-1][0]["ids"]
    assert alone == batched
    other_seed = (seeded[0], SamplingParams(max_tokens=16, temperature=0.9, top_p=0.95, seed=8, ignore_eos=True))
    assert run(engine, [other_seed])[0][0]["ids"] != alone


def test_n_choices_are_seeded_independently(tiny, engine):
    _, codec = tiny
    ids = codec.encode(PROMPTS[2])
    params = SamplingParams(max_tokens=10, temperature=1.0, seed=100, n=3, ignore_eos=True)
    result = run(engine, [(ids, params)])[0]
    choices = [result[i]["ids"] for i in range(3)]
    assert len({tuple(c) for c in choices}) > 1
    # Choice j of seed s is the single choice of seed s + j.
    single = SamplingParams(max_tokens=10, temperature=1.0, seed=102, ignore_eos=True)
    assert run(engine, [(ids, single)])[0][0]["ids"] == choices[2]


def test_prompt_logprobs_match_a_direct_forward(tiny, engine):
    model, codec = tiny
    ids = codec.encode(PROMPTS[0])
    result = run(engine, [(ids, SamplingParams(max_tokens=1, temperature=0.0, logprobs=1, prompt_logprobs=1))])[0]
    prompt = result["prompt"]
    with torch.inference_mode():
        logits = model(torch.tensor([ids]))[0].float()
    expected = torch.log_softmax(logits, -1)
    assert prompt.logprobs[0] is None and prompt.top_logprobs[0] is None
    for t in range(1, len(ids)):
        assert prompt.logprobs[t] == pytest.approx(expected[t - 1, ids[t]].item(), abs=1e-4)
        best_id, best_lp = prompt.top_logprobs[t][0]
        assert best_id == int(expected[t - 1].argmax())
        assert best_lp == pytest.approx(expected[t - 1].max().item(), abs=1e-4)
    # The generated token's logprob comes from the last prompt position.
    generated = result[0]["ids"][0]
    assert generated == int(expected[-1].argmax())
    assert result[0]["lps"][0] == pytest.approx(expected[-1].max().item(), abs=1e-4)


def test_stop_string_truncates_and_finishes(tiny, engine):
    _, codec = tiny
    ids = codec.encode(PROMPTS[1])
    free = run(engine, [(ids, greedy(40))])[0][0]["text"]
    stop = free[len(free) // 2 : len(free) // 2 + 3]
    assert stop and stop in free
    stopped = run(engine, [(ids, greedy(40, stop=(stop,)))])[0][0]
    assert stopped["finish"] == "stop"
    assert stopped["text"] == free[: free.index(stop)]


def test_eos_finishes_with_stop(tiny, engine):
    _, codec = tiny
    ids = codec.encode(PROMPTS[0])
    sampled = SamplingParams(max_tokens=20, temperature=1.0, seed=3, ignore_eos=True)
    free = run(engine, [(ids, sampled)])[0][0]["ids"]
    fresh = [i for i in range(1, len(free)) if free[i] not in free[:i]]
    # Declare the first token not generated before an end-of-sequence token: the same seed stops right there.
    k = fresh[0]
    engine.codec = TextCodec(codec.hf, {free[k]})
    try:
        result = run(engine, [(ids, SamplingParams(max_tokens=20, temperature=1.0, seed=3))])[0][0]
    finally:
        engine.codec = codec
    assert result["ids"] == free[: k + 1]
    assert result["finish"] == "stop"


def test_cancelled_request_frees_its_slot(tiny, engine):
    _, codec = tiny

    async def main() -> None:
        loop, sink = asyncio.get_running_loop(), asyncio.Queue()
        request = Request(codec.encode(PROMPTS[0]), greedy(200), sink, loop)
        engine.submit(request)
        while sink.qsize() < 3:
            await asyncio.sleep(0.001)
        request.cancel()
        for _ in range(2000):
            if engine.num_running == 0:
                return
            await asyncio.sleep(0.001)
        raise AssertionError("the cancelled request still holds a slot")

    asyncio.run(main())


@pytest.mark.parametrize("fail_at", [1, 4])  # the prefill, a decode step
def test_a_failing_step_fails_its_requests_not_the_engine(tiny, engine, monkeypatch, fail_at):
    _, codec = tiny
    ids = codec.encode(PROMPTS[0])
    real_forward = engine._forward
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == fail_at:
            raise RuntimeError("simulated device failure")
        return real_forward(*args, **kwargs)

    monkeypatch.setattr(engine, "_forward", flaky)
    failed = run(engine, [(ids, greedy(20))])[0]
    assert "simulated device failure" in failed["error"]
    ok = run(engine, [(ids, greedy(5))])[0]
    assert ok["error"] is None and len(ok[0]["ids"]) == 5


def test_int8_weights_stay_close_and_decode(tiny_hf_model_dir: Path):
    model, _ = load_hf_folder(tiny_hf_model_dir)
    codec = TextCodec.from_folder(tiny_hf_model_dir)
    ids = torch.tensor([codec.encode(PROMPTS[0])])
    with torch.inference_mode():
        reference = model(ids).float()
        quantize_int8(model)
        quantized = model(ids).float()
    assert isinstance(model.layers["0"].attention.wq, Int8Linear)
    assert isinstance(model.output, Int8Linear)
    assert model.tok_embeddings.weight.dtype == torch.float32
    relative = (quantized - reference).norm() / reference.norm()
    assert relative < 0.02
    eng = Engine(model, codec, max_batch=2)
    eng.start()
    try:
        got = run(eng, [(ids[0].tolist(), greedy(8))])[0][0]["ids"]
    finally:
        eng.shutdown(timeout=30)
    assert got == list(generate_tokens(model, ids[0].tolist(), SamplingParams(max_tokens=8, temperature=0.0)))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_bf16_matmuls_stay_close_decode_like_the_reference_and_batch_exactly(tiny_hf_model_dir: Path, tiny, dtype):
    """--quantize bf16: every projection in bf16 on prepacked weights, the rest in the model's dtype."""
    reference_model, codec = tiny
    model, _ = load_served_model(ServedModelSpec(str(tiny_hf_model_dir), dtype=dtype, quantize="bf16"))
    linears = [m for m in model.modules() if isinstance(m, PackedBF16Linear)]
    assert len(linears) == 7 * model.config.n_layers + 1
    assert not any(isinstance(m, torch.nn.Linear) for m in model.modules())
    assert all(m.packed == bf16_packing_supported() for m in linears)
    assert model.tok_embeddings.weight.dtype == getattr(torch, dtype)
    ids = torch.tensor([codec.encode(PROMPTS[0])])
    with torch.inference_mode():
        reference = reference_model(ids).float()
        packed = model(ids).float()
    assert ((packed - reference).norm() / reference.norm()) < 0.02
    eng = Engine(model, codec, max_batch=4)
    eng.start()
    try:
        jobs = [(codec.encode(p), greedy(n)) for p, n in zip(PROMPTS, (16, 5, 11, 8), strict=True)]
        alone = [run(eng, [job])[0][0] for job in jobs]
        together = [r[0] for r in run(eng, jobs, stagger_after=3)]
    finally:
        eng.shutdown(timeout=30)
    assert alone[0]["ids"] == list(generate_tokens(model, jobs[0][0], SamplingParams(max_tokens=16, temperature=0.0)))
    for a, b in zip(alone, together, strict=True):
        assert a["ids"] == b["ids"] and a["text"] == b["text"]
        torch.testing.assert_close(torch.tensor(b["lps"]), torch.tensor(a["lps"]), rtol=0, atol=1e-2)


def test_unknown_quantization_is_a_clear_error(tiny_hf_model_dir: Path):
    with pytest.raises(UserError, match="int8, bf16"):
        load_served_model(ServedModelSpec(str(tiny_hf_model_dir), quantize="int4"))


def test_token_event_fields(tiny, engine):
    _, codec = tiny
    events = []

    async def main() -> None:
        loop, sink = asyncio.get_running_loop(), asyncio.Queue()
        engine.submit(Request(codec.encode("x"), greedy(3), sink, loop, index=5))
        while len(events) < 4:
            events.append(await asyncio.wait_for(sink.get(), 30))

    asyncio.run(main())
    assert all(isinstance(e, TokenEvent) and e.index == 5 for e in events)
    assert [e.finish_reason for e in events] == [None, None, None, "length"]
    assert events[-1].token_id is None


def test_one_batched_prefill_equals_separate_prefills(tiny, engine):
    """Requests admitted in the same step share one padded prefill: mixed lengths, an n=2 request and an
    echo-only request (max_tokens=0, which takes no slot) in the middle must not disturb the others' slots."""
    import threading

    _, codec = tiny
    jobs = [
        (codec.encode(PROMPTS[0]), greedy(9)),
        (codec.encode(PROMPTS[3]), SamplingParams(max_tokens=0, prompt_logprobs=0)),
        (codec.encode(PROMPTS[2]), SamplingParams(max_tokens=8, temperature=1.0, seed=11, n=2, ignore_eos=True)),
        (codec.encode(PROMPTS[1]), greedy(6)),
    ]
    alone = [run(engine, [job])[0] for job in jobs]
    gate, waiting, real_step, real_prefill = threading.Event(), threading.Event(), engine._step, engine._prefill
    prefills = []
    engine._step = lambda: (waiting.set(), gate.wait(30), real_step())
    engine._prefill = lambda requests, out: (prefills.append(len(requests)), real_prefill(requests, out))

    async def main() -> list[dict]:
        loop = asyncio.get_running_loop()
        blocker = asyncio.Queue()
        engine.submit(Request(codec.encode("x"), greedy(1), blocker, loop))
        await asyncio.to_thread(waiting.wait, 30)  # the engine thread now holds in _step with only the blocker
        sinks = [asyncio.Queue() for _ in jobs]
        for (ids, params), sink in zip(jobs, sinks, strict=True):
            engine.submit(Request(ids, params, sink, loop))
        gate.set()
        return list(await asyncio.gather(*[collect(sk, p.n) for sk, (_, p) in zip(sinks, jobs, strict=True)]))

    together = asyncio.run(main())
    assert prefills[:3] == [1, 1, 3]  # the blocker; then the echo alone; then the other three in one forward
    for a, t, (_, params) in zip(alone, together, jobs, strict=True):
        for choice in range(params.n):
            assert t[choice]["ids"] == a[choice]["ids"]
            assert t[choice]["finish"] == a[choice]["finish"]
    assert together[1]["prompt"].logprobs == pytest.approx(alone[1]["prompt"].logprobs)
