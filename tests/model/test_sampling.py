"""Per-row logit adjustments: logit_bias, the three penalties (vLLM's semantics), min_p, and allowed masks."""

from __future__ import annotations

import torch

from autarky.model.sampling import History, SamplingParams, adjust_logits, sample_rows

V = 8


def _logits() -> torch.Tensor:
    return torch.tensor([[2.0, -1.0, 0.5, 0.0, 1.0, -2.0, 3.0, 0.1]] * 3)


def test_plain_rows_are_untouched_and_the_input_is_not_modified():
    logits, before = _logits(), _logits()
    params = [SamplingParams(temperature=0), SamplingParams(temperature=0, logit_bias=((1, 50.0),)),
              SamplingParams(temperature=0)]
    assert sample_rows(logits, params, [None] * 3) == [6, 1, 6]
    assert torch.equal(logits, before)


def test_penalties_follow_vllm():
    p = SamplingParams(presence_penalty=0.5, frequency_penalty=0.25, repetition_penalty=2.0)
    logits = _logits()
    adjust_logits(logits, [SamplingParams(), p, p], [None, History([0, 5], [6, 6, 1]), History([], [])])
    row = logits[1]
    assert torch.equal(logits[0], _logits()[0]) and torch.equal(logits[2], _logits()[2])
    assert row[0] == 1.0  # prompt token, positive: divided by the repetition penalty, no presence/frequency
    assert row[5] == -4.0  # prompt token, negative: multiplied
    assert row[6] == 3.0 / 2 - 0.25 * 2 - 0.5  # generated twice
    assert row[1] == -2.0 - 0.25 - 0.5  # generated once, negative
    assert row[2] == 0.5  # never seen


def test_min_p_one_is_greedy_and_allowed_masks_bind():
    params = [SamplingParams(temperature=1.5, min_p=1.0, seed=s) for s in range(3)]
    gens = [p.generator(0) for p in params]
    assert sample_rows(_logits(), params, gens) == [6, 6, 6]
    allowed = {1: torch.tensor([False, False, True, True, False, False, False, False])}
    greedy = [SamplingParams(temperature=0)] * 3
    assert sample_rows(_logits(), greedy, [None] * 3, allowed=allowed) == [6, 2, 6]
