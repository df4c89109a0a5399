"""A real lm-evaluation-harness run against the served tiny model: `local-completions` with the remote tokenizer.

The harness scores multiple-choice answers from echoed prompt logprobs and generates with stop strings; both
are checked against our own computation straight from the model weights.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import torch

from autarky.model.generate import generate_tokens
from autarky.model.hf import load_hf_folder
from autarky.model.sampling import SamplingParams
from autarky.serve.text import TextCodec

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

MC_DOCS = [
    {"question": "def add(a, b):\n    return", "choices": ["a + b", "a - b", "None"], "answer": 0},
    {"question": "import", "choices": ["os", "sys", "json"], "answer": 1},
    {"question": "for i in", "choices": ["range(10):", "items:", "x"], "answer": 0},
    {"question": "class Stack:\n    def", "choices": ["push(self, item):", "pop(self):"], "answer": 1},
]
GEN_DOCS = [
    {"prompt": "def main():\n", "target": "    pass"},
    {"prompt": "x = [1, 2, 3]\nprint(", "target": "x)"},
    {"prompt": "while True:\n", "target": "    break"},
]


def write_tasks(folder: Path) -> None:
    (folder / "mc.jsonl").write_text("".join(json.dumps(d) + "\n" for d in MC_DOCS))
    (folder / "gen.jsonl").write_text("".join(json.dumps(d) + "\n" for d in GEN_DOCS))
    (folder / "autarky_mc.yaml").write_text(textwrap.dedent(f"""\
        task: autarky_mc
        dataset_path: json
        dataset_name: null
        dataset_kwargs:
          data_files: {folder / "mc.jsonl"}
        test_split: train
        output_type: multiple_choice
        doc_to_text: "{{{{question}}}}"
        doc_to_choice: "{{{{choices}}}}"
        doc_to_target: "{{{{answer}}}}"
        metric_list:
          - metric: acc
    """))
    (folder / "autarky_gen.yaml").write_text(textwrap.dedent(f"""\
        task: autarky_gen
        dataset_path: json
        dataset_name: null
        dataset_kwargs:
          data_files: {folder / "gen.jsonl"}
        test_split: train
        output_type: generate_until
        doc_to_text: "{{{{prompt}}}}"
        doc_to_target: "{{{{target}}}}"
        generation_kwargs:
          until: ["\\n\\n", "#"]
          max_gen_toks: 12
          do_sample: false
        metric_list:
          - metric: exact_match
    """))


def loglikelihood(model, codec: TextCodec, context: str, continuation: str) -> tuple[float, bool]:
    """Sum of log p(continuation tokens | context) and whether each was the argmax, tokenized the way the
    harness does (whole, then split at the context's length)."""
    whole = codec.encode(context + continuation, add_special_tokens=False)
    n_ctx = len(codec.encode(context, add_special_tokens=False))
    with torch.inference_mode():
        logprobs = torch.log_softmax(model(torch.tensor([whole]))[0].float(), -1)
    span = range(n_ctx, len(whole))
    score = sum(logprobs[t - 1, whole[t]].item() for t in span)
    return score, all(int(logprobs[t - 1].argmax()) == whole[t] for t in span)


def test_lm_eval_local_completions_remote_tokenizer(served_tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-datasets"))
    import lm_eval
    from lm_eval.tasks import TaskManager

    write_tasks(tmp_path)
    results = lm_eval.simple_evaluate(
        model="local-completions",
        model_args={
            "model": served_tiny_model.model,
            "base_url": f"{served_tiny_model.base_url}/completions",
            "tokenizer_backend": "remote",
            "tokenized_requests": True,
            "max_retries": 1,
            "max_length": 256,
        },
        tasks=["autarky_mc", "autarky_gen"],
        task_manager=TaskManager(include_path=str(tmp_path), include_defaults=False),
        batch_size=4,
        log_samples=True,
    )
    assert "acc,none" in results["results"]["autarky_mc"]
    assert "exact_match,none" in results["results"]["autarky_gen"]

    model, _ = load_hf_folder(served_tiny_model.model_dir)
    codec = TextCodec.from_folder(served_tiny_model.model_dir)
    mc = results["samples"]["autarky_mc"]
    assert sum(len(s["arguments"]) for s in mc) == sum(len(d["choices"]) for d in MC_DOCS)
    for sample in mc:
        for (context, continuation), resp in zip(sample["arguments"], sample["resps"], strict=True):
            score, is_greedy = resp[0]
            our_score, our_greedy = loglikelihood(model, codec, context, continuation)
            assert score == pytest.approx(our_score, abs=2e-3)
            assert is_greedy == our_greedy
    # acc is the share of docs whose best-scoring choice is the answer: recompute it from our own scores.
    ours = [
        max(range(len(d["choices"])), key=lambda i: loglikelihood(model, codec, d["question"], " " + d["choices"][i])[0])
        == d["answer"] for d in MC_DOCS
    ]
    assert results["results"]["autarky_mc"]["acc,none"] == pytest.approx(sum(ours) / len(ours))

    gen = results["samples"]["autarky_gen"]
    assert len(gen) == len(GEN_DOCS)
    assert any(sample["resps"][0][0] for sample in gen), "every generation came back empty"
    for sample in gen:
        prompt = sample["arguments"][0][0]
        ids = codec.encode(prompt, add_special_tokens=False)
        tokens = list(generate_tokens(model, ids, SamplingParams(max_tokens=12, temperature=0.0),
                                      stop_ids=tuple(codec.eos_token_ids)))
        text = codec.decode(tokens)
        for stop in ("\n\n", "#"):
            text = text.split(stop)[0]
        assert sample["resps"][0][0] == text
